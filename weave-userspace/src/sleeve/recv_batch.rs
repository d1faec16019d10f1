//! Datagrams received in batches: one `recvmmsg` takes what the socket holds, up to
//! [`MAX_MESSAGES`] messages, each of them one datagram or several back-to-back ones of one
//! size coalesced by UDP GRO (their size in a control message).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

/// Most messages one call takes.
pub const MAX_MESSAGES: usize = 16;
/// Room for one message: UDP GRO coalesces at most 64 KiB.
const MESSAGE_ROOM: usize = 1 << 16;
/// Control bytes per message (one `UDP_GRO` int fits several times over).
const CONTROL_WORDS: usize = 8;

use super::{SOL_UDP, UDP_GRO};

/// One message of a batch: the sender, and the size of each datagram in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub from: SocketAddr,
    pub len: usize,
    /// Bytes per datagram (the last may be shorter); `len` for a lone datagram.
    pub segment: usize,
}

/// The buffers of [`recv`](RecvBatch::recv), kept from call to call.
pub struct RecvBatch {
    buf: Vec<u8>,
    received: Vec<Received>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self {
            // Zeroed pages cost no memory until a burst first fills them.
            buf: vec![0u8; MAX_MESSAGES * MESSAGE_ROOM],
            received: Vec::with_capacity(MAX_MESSAGES),
        }
    }
}

impl RecvBatch {
    /// Waits for the first message (as long as the socket's receive timeout allows), then
    /// takes whatever else the socket holds at once; returns how many messages it took.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.received.clear();
        // SAFETY: an all-zero sockaddr_in is valid.
        let mut addrs: [libc::sockaddr_in; MAX_MESSAGES] = unsafe { std::mem::zeroed() };
        let mut controls = [[0u64; CONTROL_WORDS]; MAX_MESSAGES];
        let mut iovs: [libc::iovec; MAX_MESSAGES] = std::array::from_fn(|i| libc::iovec {
            // SAFETY: `i * MESSAGE_ROOM` is inside `buf`, which holds MAX_MESSAGES rooms.
            iov_base: unsafe { self.buf.as_mut_ptr().add(i * MESSAGE_ROOM) }.cast(),
            iov_len: MESSAGE_ROOM,
        });
        // SAFETY: an all-zero mmsghdr is valid.
        let mut msgs: [libc::mmsghdr; MAX_MESSAGES] = unsafe { std::mem::zeroed() };
        for (i, m) in msgs.iter_mut().enumerate() {
            let h = &mut m.msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = controls[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of_val(&controls[i]);
        }
        // SAFETY: every message and what it points to (addresses, iovecs into `buf`, control
        // buffers on this stack frame) is valid for the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                MAX_MESSAGES as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for (m, addr) in msgs.iter().zip(&addrs).take(n as usize) {
            let len = (m.msg_len as usize).min(MESSAGE_ROOM);
            self.received.push(Received {
                from: SocketAddr::from((
                    Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
                    u16::from_be(addr.sin_port),
                )),
                len,
                segment: gro_segment(&m.msg_hdr).unwrap_or(len),
            });
        }
        Ok(self.received.len())
    }

    /// Message `i` of the last batch: what it says of itself, and its bytes.
    pub fn message(&mut self, i: usize) -> (Received, &mut [u8]) {
        let r = self.received[i];
        let at = i * MESSAGE_ROOM;
        (r, &mut self.buf[at..at + r.len])
    }
}

/// The datagram size UDP GRO reported for a message, if it coalesced any.
fn gro_segment(msg: &libc::msghdr) -> Option<usize> {
    let mut segment = None;
    // SAFETY: the kernel filled the message's control buffer up to msg_controllen; the CMSG
    // macros walk it and stop at its end.
    unsafe {
        let mut cm = libc::CMSG_FIRSTHDR(msg);
        while !cm.is_null() {
            if (*cm).cmsg_level == SOL_UDP && (*cm).cmsg_type == UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cm).cast::<libc::c_int>());
                if size > 0 {
                    segment = Some(size as usize);
                }
            }
            cm = libc::CMSG_NXTHDR(msg, cm);
        }
    }
    segment
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_call_takes_every_datagram_waiting_with_its_sender_and_size() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        a.send_to(&[1; 100], to).unwrap();
        b.send_to(&[2; 30], to).unwrap();
        a.send_to(&[3; 1400], to).unwrap();
        let mut batch = RecvBatch::default();
        assert_eq!(batch.recv(&rx).unwrap(), 3);
        let want = [
            (a.local_addr().unwrap(), 1u8, 100usize),
            (b.local_addr().unwrap(), 2, 30),
            (a.local_addr().unwrap(), 3, 1400),
        ];
        for (i, (from, byte, len)) in want.into_iter().enumerate() {
            let (r, bytes) = batch.message(i);
            assert_eq!((r.from, r.len, r.segment), (from, len, len));
            assert!(bytes.iter().all(|b| *b == byte));
        }
    }

    #[test]
    fn more_than_a_batch_waits_for_the_next_call_and_an_empty_socket_times_out() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        for i in 0..MAX_MESSAGES + 3 {
            tx.send_to(&[i as u8; 8], to).unwrap();
        }
        let mut batch = RecvBatch::default();
        assert_eq!(batch.recv(&rx).unwrap(), MAX_MESSAGES);
        assert_eq!(
            batch.message(MAX_MESSAGES - 1).1[0],
            (MAX_MESSAGES - 1) as u8
        );
        assert_eq!(batch.recv(&rx).unwrap(), 3);
        assert_eq!(batch.message(0).1[0], MAX_MESSAGES as u8);
        let e = batch.recv(&rx).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e}"
        );
    }
}
