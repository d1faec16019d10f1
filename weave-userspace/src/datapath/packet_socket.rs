//! A raw packet socket (AF_PACKET) that writes whole Ethernet frames out of one interface
//! of the calling thread's network namespace: gratuitous ARP, and the heartbeats and path-MTU
//! probes written into the bridge's port towards the peers.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Sends frames out of one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
    /// Ethertype the socket was opened for (network byte order), the frames' own.
    protocol: u16,
}

impl PacketSocket {
    /// A socket sending frames of `ethertype` out of `ifindex`. It receives nothing: it is
    /// bound to no protocol for input.
    pub fn open(ifindex: u32, ethertype: u16) -> std::io::Result<PacketSocket> {
        // SAFETY: plain socket(2); protocol 0 means the socket receives no frames.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PacketSocket {
            fd,
            ifindex,
            protocol: ethertype.to_be(),
        })
    }

    /// Sends one whole Ethernet frame (headers included).
    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = self.protocol;
        sll.sll_ifindex = self.ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6.min(frame.len())]);
        // SAFETY: frame and sll outlive the call; the lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
