//! The sleeve: a data path in user space, for peers the kernel fast path must not carry
//! (with a password nothing leaves in plain VXLAN), when `--datapath sleeve` says so, or
//! whose fast path is blocked (the router moves a peer here and back, [`Sleeve::carry`]).
//!
//! A TAP device on the weave bridge takes the frames the bridge sends it (everything for
//! MACs not local: the fast path has no entry for sleeve peers, so the programs hand such
//! frames to the bridge); one thread reads them, picks the peer by the learned destination
//! MAC (every sleeve peer for broadcast and unknown MACs), seals them ([`packet`]) and sends
//! them on UDP 6783. Another thread receives, drops what does not verify (counted by
//! reason), learns the sender's MAC and writes the frame into the TAP; the answers that
//! write made at once it sends itself ([`TapReader`]).
//!
//! Frames also cross peers that are not neighbours ([`forwarding`]): a frame for a MAC
//! learned behind a peer the sleeve does not carry goes to the next hop of the unicast
//! route, with a route header inside the seal; a relay opens it with its neighbour's keys,
//! seals it again with the next hop's and sends it on (plaintext never leaves a router);
//! broadcasts follow their origin's broadcast tree; a hop count stops loops while routes
//! disagree. The router hands the routes over ([`Sleeve::set_routing`]). A frame relayed
//! to us over the fast path for a peer whose fast path fell back comes out of the TAP
//! tagged with its origin and destination (`weave_ebpf_common::handover`) and is routed on
//! the same way.
//!
//! Small frames to one peer that speaks protocol version 7 leave together: the frames of one
//! batch read from the TAP go into one [`bundle`] per peer, sealed once.

pub mod batch;
pub mod bridge_port;
pub mod bundle;
pub mod forwarding;
pub mod macs;
pub mod packet;
pub mod recv_batch;
pub mod tap;
pub mod vnet;

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::crypto::{NonceDomain, SessionKeys, TAG_LEN};
use batch::{Group, GroupLimits, SendPlan};
use bundle::{Bundle, Contents};
use forwarding::{Neighbour, Routing, Send};
use packet::{Decoder, DropReason, Encoder, Header, RouteHeader};
use recv_batch::RecvBatch;
use tap::{Tap, VNET_HDR_LEN};

/// The sleeve's UDP port (Weave's).
pub const SLEEVE_PORT: u16 = 6783;
/// Name of the TAP device on the weave bridge.
pub const TAP_NAME: &str = "vethwe-sleeve";

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Most bytes handed to one UDP GSO send.
const GSO_MAX_BYTES: usize = 60_000;

/// Datagrams and bytes through the sleeve, and drops by reason, for /metrics.
pub struct SleeveCounters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Source MACs not learned because the table was full ([`macs::MAX_LEARNED_MACS`]).
    pub macs_not_learned: AtomicU64,
    /// Frames sent and received inside bundles (each bundle is one datagram above).
    pub tx_bundled_frames: AtomicU64,
    pub rx_bundled_frames: AtomicU64,
    /// Frames the receive thread read from the TAP and sent right after delivering (see
    /// [`TapReader`]), counted in `tx_packets` too once sent.
    pub tx_answered_at_once: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);

pub static COUNTERS: SleeveCounters = SleeveCounters {
    tx_packets: ZERO,
    tx_bytes: ZERO,
    rx_packets: ZERO,
    rx_bytes: ZERO,
    macs_not_learned: ZERO,
    tx_bundled_frames: ZERO,
    rx_bundled_frames: ZERO,
    tx_answered_at_once: ZERO,
    drops: [ZERO; DropReason::ALL.len()],
};

impl SleeveCounters {
    pub fn drop(&self, reason: DropReason) {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.drops[i].fetch_add(1, Relaxed);
    }

    /// (reason label, count) for every reason.
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .zip(&self.drops)
            .map(|(r, c)| (r.label(), c.load(Relaxed)))
            .collect()
    }
}

struct Peer {
    addr: SocketAddrV4,
    /// Whether the sleeve carries the peer's frames now; when not (the fast path does), its
    /// keys and counters wait here, and its datagrams are dropped as from an unknown peer.
    carried: AtomicBool,
    /// What its sleeve takes besides one frame per datagram.
    features: SleeveFeatures,
    /// Payload bytes per datagram to this peer: 0 for the shared size (the underlay's
    /// MTU), else what the path to it verified ([`Sleeve::set_path_mtu`]).
    segment: std::sync::atomic::AtomicUsize,
    /// The newest path-MTU probe round received from the peer and its largest probe
    /// (outer IPv4 length), as `(round, largest)`; (0, 0) before any.
    probe_seen: Mutex<(u32, u32)>,
    encoder: Mutex<Encoder>,
    decoder: Mutex<Decoder>,
}

/// What a peer's sleeve takes besides one frame of its neighbour's per datagram (by the
/// protocol version of the connection).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SleeveFeatures {
    /// Routed datagrams (protocol version 5): it relays frames of others, and gets them.
    pub relays: bool,
    /// Bundles of small frames in one datagram (protocol version 7).
    pub bundles: bool,
}

struct Shared {
    /// Payload bytes per datagram (one underlay packet each).
    segment: usize,
    /// Whether UDP GSO works (turned off at its first failure).
    gso: AtomicBool,
    local: u16,
    encrypted: bool,
    peers: RwLock<BTreeMap<u16, Arc<Peer>>>,
    /// Where each remote MAC lives (the frame's origin), learned from received frames.
    macs: RwLock<macs::MacTable>,
    /// The routes to peers that are not neighbours, and the broadcast trees.
    routing: RwLock<Routing>,
    stop: AtomicBool,
}

/// A running sleeve.
pub struct Sleeve {
    shared: Arc<Shared>,
    /// The socket the threads use, for path-MTU probes sent from the router's side.
    socket: Arc<UdpSocket>,
    /// ifindex of the TAP once it is a port of the bridge (0 until then).
    port_ifindex: u32,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Sleeve {
    /// Binds UDP `underlay:port` and starts moving frames between `tap` and peers.
    /// `encrypted`: every peer must come with session keys (a password is set).
    pub fn start(
        local_short_id: u16,
        underlay: Ipv4Addr,
        port: u16,
        underlay_mtu: u32,
        tap: Tap,
        encrypted: bool,
    ) -> io::Result<Sleeve> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        let _ = socket.set_recv_buffer_size(8 << 20);
        let _ = socket.set_send_buffer_size(8 << 20);
        socket.bind(&SocketAddr::from((underlay, port)).into())?;
        let socket: UdpSocket = socket.into();
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one int from a valid pointer; failure leaves GRO off.
        let gro = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                SOL_UDP,
                UDP_GRO,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if !gro {
            tracing::warn!(
                "sleeve: UDP GRO unavailable: {}",
                io::Error::last_os_error()
            );
        }
        // Segments are cut to fit the path: the kernel must never fragment them (nor a
        // probe, whose size is the question), whatever path MTU it believes.
        let probe_mode: libc::c_int = libc::IP_PMTUDISC_PROBE;
        // SAFETY: setsockopt reads one int from a valid pointer; failure leaves the default.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&probe_mode as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let socket = Arc::new(socket);
        let probe_socket = socket.clone();
        let tap = Arc::new(tap);
        let shared = Arc::new(Shared {
            segment: packet::segment_payload(underlay_mtu),
            gso: AtomicBool::new(true),
            local: local_short_id,
            encrypted,
            peers: RwLock::default(),
            macs: RwLock::default(),
            routing: RwLock::default(),
            stop: AtomicBool::new(false),
        });
        let reader = Arc::new(Mutex::new(TapReader::default()));
        let tx = {
            let (shared, socket, tap, reader) =
                (shared.clone(), socket.clone(), tap.clone(), reader.clone());
            std::thread::Builder::new()
                .name("sleeve-tx".into())
                .spawn(move || send_loop(&shared, &socket, &tap, &reader))?
        };
        let rx = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("sleeve-rx".into())
                .spawn(move || receive_loop(&shared, &socket, &tap, &reader))?
        };
        Ok(Sleeve {
            shared,
            socket: probe_socket,
            port_ifindex: 0,
            threads: Mutex::new(vec![tx, rx]),
        })
    }

    pub fn encrypted(&self) -> bool {
        self.shared.encrypted
    }

    /// ifindex of the TAP: frames the fast path hands over come out of it
    /// (`weave_ebpf_common::handover`).
    pub fn port_ifindex(&self) -> u32 {
        self.port_ifindex
    }

    /// Sends peer `short_id` a path-MTU probe of round `round` whose IPv4 packet is
    /// `outer_len` bytes: one datagram holding a heartbeat frame padded to that size, sealed
    /// like any frame when encrypted (so only the peer's real probes count), DF set. The
    /// peer keeps the largest of each round ([`Sleeve::probe_seen`]) instead of writing it
    /// to its TAP.
    pub fn send_probe(&self, short_id: u16, round: u32, outer_len: u16) -> io::Result<()> {
        let Some(peer) = read(&self.shared.peers).get(&short_id).cloned() else {
            return Ok(());
        };
        let tag = if self.shared.encrypted {
            crate::crypto::TAG_LEN
        } else {
            0
        };
        let frame_len = usize::from(outer_len)
            .saturating_sub(20 + 8 + packet::HEADER_LEN + tag + VNET_HDR_LEN)
            .max(weave_ebpf_common::heartbeat::HEARTBEAT_FRAME_LEN);
        let mut payload = vec![0u8; VNET_HDR_LEN + frame_len];
        weave_ebpf_common::heartbeat::write_heartbeat_frame(
            &mut payload[VNET_HDR_LEN..],
            short_id,
            round,
        );
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        lock(&peer.encoder)
            .encode(&payload, usize::MAX, &mut out, &mut scratch)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.socket.send_to(&out, peer.addr).map(|_| ())
    }

    /// The newest probe round peer `short_id` sent through the sleeve and its largest probe
    /// that arrived (outer IPv4 length).
    pub fn probe_seen(&self, short_id: u16) -> Option<(u32, u32)> {
        let peer = read(&self.shared.peers).get(&short_id).cloned()?;
        let seen = *lock(&peer.probe_seen);
        (seen.0 != 0).then_some(seen)
    }

    /// The largest IPv4 packet the path to peer `short_id` carries, as its fast-path
    /// probes verified it: the peer's datagrams are cut to fit (no effect on an unknown peer).
    pub fn set_path_mtu(&self, short_id: u16, path_mtu: u16) {
        if let Some(peer) = read(&self.shared.peers).get(&short_id) {
            peer.segment
                .store(packet::segment_payload(u32::from(path_mtu)), Relaxed);
        }
    }

    /// Takes a directly connected peer, with the keys of its control connection (needed
    /// when encrypted), and carries its frames when `carry` (else see [`Sleeve::carry`]).
    pub fn add_peer(
        &self,
        short_id: u16,
        underlay: Ipv4Addr,
        session: Option<&SessionKeys>,
        carry: bool,
        features: SleeveFeatures,
    ) -> Result<(), String> {
        let keys = match (self.shared.encrypted, session) {
            (true, None) => return Err("no session keys for an encrypted sleeve".into()),
            (true, Some(k)) => Some(k),
            (false, _) => None,
        };
        let peer = Peer {
            addr: SocketAddrV4::new(underlay, SLEEVE_PORT),
            carried: AtomicBool::new(carry),
            features,
            segment: std::sync::atomic::AtomicUsize::new(0),
            probe_seen: Mutex::new((0, 0)),
            encoder: Mutex::new(Encoder::new(
                self.shared.local,
                keys.map(|k| k.sealer(NonceDomain::Data)),
            )),
            decoder: Mutex::new(Decoder::new(
                keys.map(|k| k.datagram_opener(NonceDomain::Data)),
            )),
        };
        write(&self.shared.peers).insert(short_id, Arc::new(peer));
        Ok(())
    }

    pub fn remove_peer(&self, short_id: u16) -> Vec<[u8; 6]> {
        let gone = self.carry(short_id, false);
        write(&self.shared.peers).remove(&short_id);
        gone
    }

    /// Starts or stops carrying the frames of a peer taken with [`Sleeve::add_peer`] (the
    /// fast path gives them back or takes them over). Its keys and counters stay, so no
    /// nonce is ever used twice. Stopping forgets the MACs learned behind the peer and
    /// returns them (the bridge learned them on the TAP too).
    pub fn carry(&self, short_id: u16, carry: bool) -> Vec<[u8; 6]> {
        if let Some(p) = read(&self.shared.peers).get(&short_id) {
            p.carried.store(carry, Relaxed);
        }
        if carry {
            return Vec::new();
        }
        write(&self.shared.macs).forget_peer(short_id)
    }

    /// Takes the routes to follow for frames of peers that are not neighbours (and for
    /// broadcasts).
    pub fn set_routing(&self, routing: Routing) {
        *write(&self.shared.routing) = routing;
    }

    /// Whether the sleeve carries the frames of peer `short_id` now.
    pub fn carries(&self, short_id: u16) -> bool {
        read(&self.shared.peers)
            .get(&short_id)
            .is_some_and(|p| p.carried.load(Relaxed))
    }

    /// Stops both threads (within a fraction of a second).
    pub fn stop(&self) {
        self.shared.stop.store(true, Relaxed);
        let threads: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Sleeve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleeve")
            .field("encrypted", &self.shared.encrypted)
            .field("peers", &read(&self.shared.peers).len())
            .finish()
    }
}

impl Drop for Sleeve {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Logs a frame refused for its virtio-net header: one line per peer and second at most (a
/// flood is counted in full in `/metrics`).
fn refused_frame(origin: u16, error: &vnet::VnetError) {
    static LAST: Mutex<Option<(u16, std::time::Instant)>> = Mutex::new(None);
    let now = std::time::Instant::now();
    let mut last = lock(&LAST);
    if last.is_some_and(|(o, at)| o == origin && now.duration_since(at) < Duration::from_secs(1)) {
        return;
    }
    *last = Some((origin, now));
    tracing::warn!("sleeve: frame from peer {origin:03x} dropped: virtio-net header {error}");
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn mac_at(b: &[u8], at: usize) -> Option<[u8; 6]> {
    b.get(at..at + 6).map(|m| m.try_into().expect("six bytes"))
}

fn sockaddr(to: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Most messages handed to one `sendmmsg`.
const MAX_MESSAGES: usize = 64;

/// Sends `groups` (datagrams in `data`) in one `sendmmsg`, each group one message cut by UDP
/// GSO when it holds more than one datagram; returns how many groups the kernel took (at
/// least one), or the error of the first.
fn send_groups(
    socket: &UdpSocket,
    data: &[u8],
    groups: &[Group<SocketAddrV4>],
) -> io::Result<usize> {
    let n = groups.len().min(MAX_MESSAGES);
    let mut addrs = [sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); MAX_MESSAGES];
    let mut iovs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_MESSAGES];
    let mut controls = [[0u64; 4]; MAX_MESSAGES];
    // SAFETY: an all-zero mmsghdr is valid.
    let mut msgs: [libc::mmsghdr; MAX_MESSAGES] = unsafe { std::mem::zeroed() };
    for (i, g) in groups[..n].iter().enumerate() {
        let bytes = &data[g.start..g.start + g.len];
        addrs[i] = sockaddr(g.to);
        iovs[i] = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let msg = &mut msgs[i].msg_hdr;
        msg.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iovs[i];
        msg.msg_iovlen = 1;
        if g.count > 1 {
            msg.msg_control = controls[i].as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is pure arithmetic.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
            // SAFETY: the control buffer holds CMSG_SPACE(2) bytes (32 >= 24), aligned for
            // cmsghdr; CMSG_FIRSTHDR points into it and CMSG_DATA has room for a u16.
            unsafe {
                let cm = libc::CMSG_FIRSTHDR(msg);
                (*cm).cmsg_level = SOL_UDP;
                (*cm).cmsg_type = UDP_SEGMENT;
                (*cm).cmsg_len = libc::CMSG_LEN(2) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), g.stride as u16);
            }
        }
    }
    // SAFETY: the first `n` messages and everything they point to (addresses, iovecs,
    // control buffers on this stack frame, `data`) are valid for the call.
    let sent = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((sent as usize).max(1))
}

/// Group `g` as one send per datagram (UDP GSO refused).
fn one_by_one(g: &Group<SocketAddrV4>) -> impl Iterator<Item = Group<SocketAddrV4>> + '_ {
    (0..g.count).map(move |i| {
        let start = g.start + i * g.stride;
        let len = g.stride.min(g.start + g.len - start);
        Group {
            to: g.to,
            start,
            len,
            stride: len,
            count: 1,
        }
    })
}

/// Sends the batch queued in `b` (in as few `sendmmsg` calls as it takes, each group one UDP
/// GSO message while the kernel takes them, else datagram by datagram) and empties it.
fn flush(shared: &Shared, socket: &UdpSocket, b: &mut Buffers) {
    close_bundles(shared, b);
    if b.plan.is_empty() {
        b.out.clear();
        b.frames = 0;
        return;
    }
    let gso = shared.gso.load(Relaxed);
    b.sends.clear();
    for g in b.plan.groups() {
        if gso || g.count == 1 {
            b.sends.push(*g);
        } else {
            b.sends.extend(one_by_one(g));
        }
    }
    let mut i = 0;
    while i < b.sends.len() {
        match send_groups(socket, &b.out, &b.sends[i..]) {
            Ok(sent) => {
                for g in &b.sends[i..i + sent] {
                    COUNTERS.tx_packets.fetch_add(g.count as u64, Relaxed);
                    COUNTERS.tx_bytes.fetch_add(g.len as u64, Relaxed);
                }
                i += sent;
            }
            Err(e)
                if b.sends[i].count > 1
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
                    ) =>
            {
                tracing::warn!("sleeve: UDP GSO refused ({e}); sending datagrams one by one");
                shared.gso.store(false, Relaxed);
                let rest: Vec<_> = b.sends[i..].iter().flat_map(one_by_one).collect();
                b.sends.truncate(i);
                b.sends.extend(rest);
            }
            // Dropped like a datagram lost on the way (no buffer space, no route).
            Err(_) => i += 1,
        }
    }
    b.out.clear();
    b.plan.clear();
    b.frames = 0;
}

/// The reading side of the TAP: whoever holds it reads frames, seals them and sends them
/// before letting go, so frames leave in the order the TAP gave them. The send thread holds
/// it while the TAP has frames; the receive thread takes it when free, right after writing
/// frames into the TAP, for the frames those answered at once (an echo reply, a TCP
/// acknowledgement: the kernel made them while the write delivered), which thus leave
/// without waking the send thread.
struct TapReader {
    frame: Vec<u8>,
    buffers: Buffers,
}

impl Default for TapReader {
    fn default() -> Self {
        Self {
            frame: vec![0u8; packet::MAX_PAYLOAD],
            buffers: Buffers::default(),
        }
    }
}

/// What [`read_tap`] did: the frames it read (and sent), and whether it stopped because
/// the TAP held no more (else one batch was sent and the TAP may hold more).
struct TapRead {
    frames: u64,
    emptied: bool,
}

/// Reads the frames the TAP holds, without waiting for more, and sends them: until the TAP
/// is empty, or, with `one_batch`, after one batch (the receive thread must not be kept
/// from its socket).
fn read_tap(
    shared: &Shared,
    socket: &UdpSocket,
    tap: &Tap,
    reader: &mut TapReader,
    one_batch: bool,
) -> io::Result<TapRead> {
    let TapReader { frame, buffers } = reader;
    let mut frames = 0;
    loop {
        // A batch leaves once the TAP holds no more frames, or at its limits.
        if buffers.frames >= batch::MAX_BATCH_FRAMES
            || buffers.out.len() >= batch::MAX_BATCH_BYTES
            || (buffers.frames > 0 && buffers.started.elapsed() >= batch::BATCH_BUDGET)
        {
            flush(shared, socket, buffers);
            if one_batch {
                return Ok(TapRead {
                    frames,
                    emptied: false,
                });
            }
        }
        let n = match tap.read(frame) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                flush(shared, socket, buffers);
                return Ok(TapRead {
                    frames,
                    emptied: true,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                flush(shared, socket, buffers);
                return Err(e);
            }
        };
        if buffers.frames == 0 {
            buffers.started = std::time::Instant::now();
        }
        buffers.frames += 1;
        frames += 1;
        send_frame(shared, &mut frame[..n], buffers);
    }
}

/// TAP → peers.
fn send_loop(shared: &Shared, socket: &UdpSocket, tap: &Tap, reader: &Mutex<TapReader>) {
    while !shared.stop.load(Relaxed) {
        let read = read_tap(shared, socket, tap, &mut lock(reader), false);
        match read {
            Ok(TapRead { emptied: false, .. }) => {}
            Ok(TapRead { emptied: true, .. }) => {
                if let Err(e) = tap.wait_readable(200) {
                    tracing::error!("sleeve: polling {}: {e}", tap.name());
                    return;
                }
            }
            Err(e) => {
                tracing::error!("sleeve: reading {}: {e}", tap.name());
                return;
            }
        }
    }
}

/// One frame read from the TAP (`payload`: the vnet header and the frame): to the peers
/// that get it, into the batch.
fn send_frame(shared: &Shared, payload: &mut [u8], buffers: &mut Buffers) {
    if let Some((origin, destination, start)) = take_handover(payload) {
        let outcome = {
            let peers = read(&shared.peers);
            let routing = read(&shared.routing);
            // Only a router with a fast path hands frames over.
            routing.beside_fast_path.then(|| {
                forwarding::handed_over(
                    shared.local,
                    origin,
                    destination,
                    |id| neighbour(&peers, id),
                    &routing,
                )
            })
        };
        match outcome {
            Some(outcome) => {
                if let Some(reason) = outcome.dropped {
                    COUNTERS.drop(reason);
                }
                for send in outcome.forward {
                    send_one(shared, send, &payload[start..], buffers);
                }
            }
            None => COUNTERS.drop(DropReason::Malformed),
        }
        return;
    }
    let payload = &*payload;
    let Some(dst) = mac_at(payload, VNET_HDR_LEN) else {
        return;
    };
    let owner = if dst[0] & 1 == 0 {
        read(&shared.macs).get(&dst)
    } else {
        None
    };
    let sends = {
        let peers = read(&shared.peers);
        let routing = read(&shared.routing);
        forwarding::from_tap(
            shared.local,
            owner,
            |id| neighbour(&peers, id),
            peers.keys().copied(),
            &routing,
        )
    };
    for send in sends {
        send_one(shared, send, payload, buffers);
    }
}

/// A frame the fast path handed over (`payload`: the vnet header and the tagged frame, as
/// read from the TAP): its origin and destination, and where the vnet header of the frame
/// without the tags starts in `payload` (the tags are cut out in place and the vnet
/// header's offsets, which counted them, made right). `None` for any other frame.
fn take_handover(payload: &mut [u8]) -> Option<(u16, u16, usize)> {
    use weave_ebpf_common::handover::{read_handover, HANDOVER_TAGS_LEN};
    let (origin, destination) = read_handover(payload.get(VNET_HDR_LEN..)?)?;
    // vnet header + MAC addresses move up over the tags.
    payload.copy_within(..VNET_HDR_LEN + 12, HANDOVER_TAGS_LEN);
    let vnet = &mut payload[HANDOVER_TAGS_LEN..HANDOVER_TAGS_LEN + VNET_HDR_LEN];
    let field = |v: &[u8], at: usize| u16::from_le_bytes([v[at], v[at + 1]]);
    let tags = HANDOVER_TAGS_LEN as u16;
    let hdr_len = field(vnet, 2);
    if hdr_len != 0 {
        vnet[2..4].copy_from_slice(&hdr_len.saturating_sub(tags).to_le_bytes());
    }
    if vnet[0] & tap::VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        let csum_start = field(vnet, 6).checked_sub(tags)?;
        vnet[6..8].copy_from_slice(&csum_start.to_le_bytes());
    }
    Some((origin, destination, HANDOVER_TAGS_LEN))
}

/// What forwarding needs to know of a peer.
fn neighbour(peers: &BTreeMap<u16, Arc<Peer>>, id: u16) -> Option<Neighbour> {
    peers.get(&id).map(|p| Neighbour {
        carried: p.carried.load(Relaxed),
        relays: p.features.relays,
    })
}

/// Buffers a thread reuses for every datagram it builds, and the batch being built.
struct Buffers {
    /// The batch's datagrams, back to back.
    out: Vec<u8>,
    /// How they leave: groups of one UDP GSO send each.
    plan: SendPlan<SocketAddrV4>,
    /// The sends of a flush (the plan's groups, or their datagrams one by one).
    sends: Vec<Group<SocketAddrV4>>,
    /// Frames in the batch, and when its first was read.
    frames: usize,
    started: std::time::Instant,
    scratch: Vec<u8>,
    /// A routed payload: the route header, then the frame.
    routed: Vec<u8>,
    /// Small frames waiting for one datagram per peer, until the batch leaves.
    bundles: Vec<PendingBundle>,
}

/// A peer's bundle under way in a batch (a slot with no peer waits for the next one, its
/// buffer kept).
struct PendingBundle {
    to: Option<(u16, Arc<Peer>)>,
    bundle: Bundle,
}

impl Default for Buffers {
    fn default() -> Self {
        Self {
            out: Vec::with_capacity(batch::MAX_BATCH_BYTES + packet::MAX_DATAGRAM * 2),
            plan: SendPlan::new(GroupLimits {
                max_bytes: GSO_MAX_BYTES,
                max_segments: packet::MAX_SEGMENTS,
            }),
            sends: Vec::new(),
            frames: 0,
            started: std::time::Instant::now(),
            scratch: Vec::new(),
            routed: Vec::new(),
            bundles: Vec::new(),
        }
    }
}

/// Payload bytes per datagram to `peer`.
fn segment_for(shared: &Shared, peer: &Peer) -> usize {
    match peer.segment.load(Relaxed) {
        0 => shared.segment,
        s => s.min(shared.segment),
    }
}

/// Seals (when encrypted) `payload` for one neighbour, as ours or routed, and queues its
/// datagrams in the batch ([`flush`] sends them). A small frame of ours to a peer that takes
/// bundles waits in the peer's bundle instead.
fn send_one(shared: &Shared, send: Send, payload: &[u8], b: &mut Buffers) {
    let (to, route) = match send {
        Send::Direct(to) => (to, None),
        Send::Routed(to, route) => (to, Some(route)),
    };
    let Some(peer) = read(&shared.peers).get(&to).cloned() else {
        return;
    };
    let segment = segment_for(shared, &peer);
    if route.is_none() && peer.features.bundles {
        let capacity = segment.saturating_sub(if shared.encrypted { TAG_LEN } else { 0 });
        if Bundle::takes(payload.len(), capacity) {
            add_to_bundle(shared, to, &peer, payload, capacity, b);
            return;
        }
    }
    // Its small frames before it keep their place.
    if let Some(slot) = bundle_slot(b, to) {
        close_bundle(shared, slot, b);
    }
    let body = match route {
        None => payload,
        Some(route) => {
            let mut head = [0u8; RouteHeader::LEN];
            route.write(&mut head);
            b.routed.clear();
            b.routed.extend_from_slice(&head);
            b.routed.extend_from_slice(payload);
            &b.routed
        }
    };
    let start = b.out.len();
    let encoded =
        lock(&peer.encoder).encode_kind(body, route.is_some(), segment, &mut b.out, &mut b.scratch);
    queue(&peer, start, encoded, b);
}

/// Puts the datagrams just encoded at `start` of the batch into its send plan.
fn queue(
    peer: &Peer,
    start: usize,
    encoded: Result<usize, crate::crypto::CryptoError>,
    b: &mut Buffers,
) {
    match encoded {
        Ok(stride) => {
            let end = b.out.len();
            let mut at = start;
            while at < end {
                let len = stride.min(end - at);
                b.plan.push(peer.addr, at, len);
                at += len;
            }
        }
        Err(e) => tracing::warn!("sleeve: cannot seal for {}: {e}", peer.addr),
    }
}

/// The slot of the bundle under way to peer `to`, if any.
fn bundle_slot(b: &Buffers, to: u16) -> Option<usize> {
    b.bundles
        .iter()
        .position(|p| p.to.as_ref().is_some_and(|(id, _)| *id == to))
}

/// Adds a small frame to the peer's bundle, sending the bundle first when the frame would
/// not fit it.
fn add_to_bundle(
    shared: &Shared,
    to: u16,
    peer: &Arc<Peer>,
    frame: &[u8],
    capacity: usize,
    b: &mut Buffers,
) {
    let slot = match bundle_slot(b, to) {
        Some(i) => i,
        None => {
            let i = match b.bundles.iter().position(|p| p.to.is_none()) {
                Some(i) => i,
                None => {
                    b.bundles.push(PendingBundle {
                        to: None,
                        bundle: Bundle::default(),
                    });
                    b.bundles.len() - 1
                }
            };
            b.bundles[i].to = Some((to, peer.clone()));
            i
        }
    };
    if !b.bundles[slot].bundle.has_room(frame.len(), capacity) {
        close_bundle(shared, slot, b);
        b.bundles[slot].to = Some((to, peer.clone()));
    }
    b.bundles[slot].bundle.push(frame);
}

/// Seals the bundle of `slot` into the batch (a bundle of one frame as an ordinary
/// datagram) and frees the slot.
fn close_bundle(shared: &Shared, slot: usize, b: &mut Buffers) {
    let Buffers {
        out,
        scratch,
        bundles,
        ..
    } = b;
    let pending = &mut bundles[slot];
    let Some((_, peer)) = pending.to.take() else {
        return;
    };
    if pending.bundle.is_empty() {
        return;
    }
    let start = out.len();
    let encoded = match pending.bundle.contents() {
        Contents::Single(frame) => {
            let segment = segment_for(shared, &peer);
            lock(&peer.encoder).encode_kind(frame, false, segment, out, scratch)
        }
        Contents::Bundle(body) => {
            COUNTERS
                .tx_bundled_frames
                .fetch_add(pending.bundle.frames() as u64, Relaxed);
            lock(&peer.encoder).encode_bundle(body, out)
        }
    };
    pending.bundle.clear();
    queue(&peer, start, encoded, b);
}

/// Seals every bundle under way (the batch is leaving).
fn close_bundles(shared: &Shared, b: &mut Buffers) {
    for slot in 0..b.bundles.len() {
        close_bundle(shared, slot, b);
    }
}

/// Peers → TAP.
fn receive_loop(shared: &Shared, socket: &UdpSocket, tap: &Tap, reader: &Mutex<TapReader>) {
    let mut batch = RecvBatch::default();
    let mut buffers = Buffers::default();
    while !shared.stop.load(Relaxed) {
        let messages = match batch.recv(socket) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::error!("sleeve: receiving: {e}");
                return;
            }
        };
        let mut delivered = 0;
        for i in 0..messages {
            let (r, bytes) = batch.message(i);
            for datagram in bytes.chunks_mut(r.segment.max(1)) {
                delivered += receive_one(shared, tap, datagram, r.from, &mut buffers);
            }
        }
        // Frames relayed on.
        flush(shared, socket, &mut buffers);
        // What the delivered frames answered at once, unless the send thread is at it.
        if delivered > 0 {
            if let Ok(mut reader) = reader.try_lock() {
                match read_tap(shared, socket, tap, &mut reader, true) {
                    Ok(read) => {
                        COUNTERS.tx_answered_at_once.fetch_add(read.frames, Relaxed);
                    }
                    Err(e) => tracing::debug!("sleeve: reading {}: {e}", tap.name()),
                }
            }
        }
    }
}

/// The round of a path-MTU probe (a heartbeat frame behind the vnet header), if `payload`
/// is one.
fn probe_round(payload: &[u8]) -> Option<u32> {
    use weave_ebpf_common::heartbeat::{
        is_heartbeat, read_heartbeat_payload, HEARTBEAT_PAYLOAD_LEN,
    };
    let eth: &[u8; 14] = payload
        .get(VNET_HDR_LEN..VNET_HDR_LEN + 14)?
        .try_into()
        .ok()?;
    if !is_heartbeat(eth) {
        return None;
    }
    let p: &[u8; HEARTBEAT_PAYLOAD_LEN] = payload
        .get(VNET_HDR_LEN + 14..VNET_HDR_LEN + 14 + HEARTBEAT_PAYLOAD_LEN)?
        .try_into()
        .ok()?;
    let (_, round) = read_heartbeat_payload(p);
    (round != 0).then_some(round)
}

fn receive_one(
    shared: &Shared,
    tap: &Tap,
    datagram: &mut [u8],
    from: SocketAddr,
    buffers: &mut Buffers,
) -> usize {
    let datagram_len = datagram.len();
    COUNTERS.rx_packets.fetch_add(1, Relaxed);
    COUNTERS.rx_bytes.fetch_add(datagram.len() as u64, Relaxed);
    let header = match Header::parse(datagram) {
        Ok(h) => h,
        Err(r) => {
            COUNTERS.drop(r);
            return 0;
        }
    };
    let peer = read(&shared.peers).get(&header.sender).cloned();
    // Routed datagrams come from any neighbour we hold keys for (a route may cross a hop the
    // fast path carries); the others only from those the sleeve carries.
    let accepted = |p: &Arc<Peer>| {
        SocketAddr::V4(p.addr).ip() == from.ip()
            && (p.carried.load(Relaxed) || (header.routed && p.features.relays))
    };
    let Some(peer) = peer.filter(accepted) else {
        COUNTERS.drop(DropReason::UnknownPeer);
        return 0;
    };
    let decoded = lock(&peer.decoder).decode(header, datagram);
    let payload = match decoded {
        Ok(Some(payload)) => payload,
        Ok(None) => return 0,
        Err(r) => {
            COUNTERS.drop(r);
            return 0;
        }
    };
    if !header.routed {
        if header.bundle {
            let mut delivered = 0;
            for frame in bundle::frames(&payload) {
                match frame {
                    Ok(frame) => {
                        COUNTERS.rx_bundled_frames.fetch_add(1, Relaxed);
                        delivered += usize::from(deliver(shared, tap, header.sender, frame));
                    }
                    Err(r) => COUNTERS.drop(r),
                }
            }
            return delivered;
        }
        if let Some(round) = probe_round(&payload) {
            // Authentic (when sealed) and whole: how big it was is all it says.
            let (r, largest) = &mut *lock(&peer.probe_seen);
            let outer = (datagram_len + 20 + 8) as u32;
            weave_ebpf_common::heartbeat::record_probe(r, largest, round, outer);
            return 0;
        }
        return usize::from(deliver(shared, tap, header.sender, &payload));
    }
    if !peer.features.relays {
        COUNTERS.drop(DropReason::Malformed);
        return 0;
    }
    let (route, frame) = match RouteHeader::parse(&payload) {
        Ok(parsed) => parsed,
        Err(r) => {
            COUNTERS.drop(r);
            return 0;
        }
    };
    let outcome = {
        let peers = read(&shared.peers);
        let routing = read(&shared.routing);
        forwarding::received(
            shared.local,
            header.sender,
            route,
            |id| neighbour(&peers, id),
            &routing,
        )
    };
    if let Some(reason) = outcome.dropped {
        COUNTERS.drop(reason);
    }
    for send in outcome.forward {
        send_one(shared, send, frame, buffers);
    }
    usize::from(outcome.deliver && deliver(shared, tap, route.origin, frame))
}

/// Writes a received frame into the TAP, learning its source MAC as `origin`'s; a frame
/// whose virtio-net header does not fit it is dropped (the kernel would act on it). Whether
/// it was written.
fn deliver(shared: &Shared, tap: &Tap, origin: u16, frame: &[u8]) -> bool {
    if let Err(e) = vnet::check(frame) {
        COUNTERS.drop(DropReason::BadVnetHeader);
        refused_frame(origin, &e);
        return false;
    }
    if let Some(src) = mac_at(frame, VNET_HDR_LEN + 6) {
        let verdict = read(&shared.macs).would_learn(src, origin);
        let learned = match verdict {
            macs::Learned::Stored => write(&shared.macs).learn(src, origin),
            other => other,
        };
        if learned == macs::Learned::Refused {
            COUNTERS.macs_not_learned.fetch_add(1, Relaxed);
        }
    }
    match tap.write(frame) {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!("sleeve: writing {}: {e}", tap.name());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handed_over_frame_loses_its_tags_and_its_offsets_follow() {
        // vnet header: needs a checksum, TCPv4 GSO, headers 8 + 14 + 20 + 20 long, segments
        // of 1448, the TCP checksum at 8 + 34 + 16.
        let mut vnet = [0u8; VNET_HDR_LEN];
        vnet[0] = tap::VIRTIO_NET_HDR_F_NEEDS_CSUM;
        vnet[1] = 1;
        vnet[2..4].copy_from_slice(&62u16.to_le_bytes());
        vnet[4..6].copy_from_slice(&1448u16.to_le_bytes());
        vnet[6..8].copy_from_slice(&42u16.to_le_bytes());
        vnet[8..10].copy_from_slice(&16u16.to_le_bytes());
        let macs = [0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        let tags = [0x88, 0xa8, 0x00, 0x07, 0x81, 0x00, 0x00, 0x09];
        let rest = [0x08, 0x00, 0x45, 0xaa];
        let mut payload: Vec<u8> = [&vnet[..], &macs, &tags, &rest].concat();
        let (origin, destination, start) = take_handover(&mut payload).expect("a handover");
        assert_eq!((origin, destination), (7, 9));
        let out = &payload[start..];
        assert_eq!(out.len(), VNET_HDR_LEN + 12 + rest.len());
        assert_eq!(&out[VNET_HDR_LEN..VNET_HDR_LEN + 12], &macs);
        assert_eq!(&out[VNET_HDR_LEN + 12..], &rest);
        assert_eq!((out[0], out[1]), (vnet[0], vnet[1]));
        assert_eq!(u16::from_le_bytes([out[2], out[3]]), 54, "header length");
        assert_eq!(u16::from_le_bytes([out[4], out[5]]), 1448, "segment size");
        assert_eq!(u16::from_le_bytes([out[6], out[7]]), 34, "checksum start");
        assert_eq!(u16::from_le_bytes([out[8], out[9]]), 16, "checksum offset");
        // An ordinary frame is left as it is.
        let mut plain: Vec<u8> = [&vnet[..], &macs, &rest].concat();
        let before = plain.clone();
        assert_eq!(take_handover(&mut plain), None);
        assert_eq!(plain, before);
    }

    const KEY: [u8; 32] = [9; 32];
    const PEER: u16 = 2;

    /// A sleeve's shared state with one encrypted neighbour (`bundles` as given) whose
    /// datagrams carry `segment` payload bytes.
    fn shared_with_peer(segment: usize, bundles: bool) -> Shared {
        let peer = Peer {
            addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), SLEEVE_PORT),
            carried: AtomicBool::new(true),
            features: SleeveFeatures {
                relays: true,
                bundles,
            },
            segment: std::sync::atomic::AtomicUsize::new(0),
            probe_seen: Mutex::new((0, 0)),
            encoder: Mutex::new(Encoder::new(
                1,
                Some(crate::crypto::Sealer::new(&KEY, NonceDomain::Data)),
            )),
            decoder: Mutex::new(Decoder::new(None)),
        };
        Shared {
            segment,
            gso: AtomicBool::new(true),
            local: 1,
            encrypted: true,
            peers: RwLock::new(BTreeMap::from([(PEER, Arc::new(peer))])),
            macs: RwLock::new(macs::MacTable::default()),
            routing: RwLock::new(Routing::default()),
            stop: AtomicBool::new(false),
        }
    }

    /// The datagrams a batch would send, in order, and the frames the peer gets from them.
    fn sent(b: &Buffers) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut decoder = Decoder::new(Some(crate::crypto::DatagramOpener::new(
            &KEY,
            NonceDomain::Data,
        )));
        let mut datagrams = Vec::new();
        let mut frames = Vec::new();
        for g in b.plan.groups() {
            for d in b.out[g.start..g.start + g.len].chunks(g.stride) {
                datagrams.push(d.to_vec());
                let mut d = d.to_vec();
                let header = Header::parse(&d).unwrap();
                let Some(payload) = decoder.decode(header, &mut d).unwrap() else {
                    continue; // a segment of a frame under way
                };
                let payload = payload.to_vec();
                if header.bundle {
                    frames.extend(bundle::frames(&payload).map(|f| f.unwrap().to_vec()));
                } else {
                    frames.push(payload);
                }
            }
        }
        (datagrams, frames)
    }

    fn frame(i: usize, len: usize) -> Vec<u8> {
        let mut f = vec![(i % 251) as u8; len];
        f[..8].copy_from_slice(&(i as u64).to_be_bytes());
        f
    }

    #[test]
    fn small_frames_of_a_batch_leave_in_bundles_cut_to_the_path_in_their_order() {
        let segment = 600;
        let shared = shared_with_peer(segment, true);
        let mut b = Buffers::default();
        // 30 frames of 100 bytes, then one too big for a bundle, then 3 more small ones.
        let mut frames: Vec<Vec<u8>> = (0..30).map(|i| frame(i, 100)).collect();
        frames.push(frame(30, 2000));
        frames.extend((31..34).map(|i| frame(i, 100)));
        for f in &frames {
            send_one(&shared, Send::Direct(PEER), f, &mut b);
        }
        close_bundles(&shared, &mut b);
        let (datagrams, got) = sent(&b);
        assert_eq!(got, frames, "every frame once, in order");
        // Five frames (102 bytes each with their length) fit 600 bytes with the tag: six
        // bundles for the first 30, the big frame in 4 segments, one bundle for the rest.
        let kinds: Vec<(bool, usize)> = datagrams
            .iter()
            .map(|d| (Header::parse(d).unwrap().bundle, d.len()))
            .collect();
        assert_eq!(kinds.iter().filter(|k| k.0).count(), 7, "{kinds:?}");
        for d in &datagrams {
            assert!(d.len() <= packet::HEADER_LEN + segment, "{} bytes", d.len());
        }
        assert_eq!(
            kinds[..6].iter().map(|k| k.1).collect::<Vec<_>>(),
            vec![packet::HEADER_LEN + 5 * 102 + TAG_LEN; 6]
        );
        // One counter per datagram: a bundle takes one slot of the replay window.
        let counters: Vec<u64> = datagrams
            .iter()
            .map(|d| Header::parse(d).unwrap().counter)
            .collect();
        let mut distinct = counters.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 6 + 1 + 1, "{counters:?}");
    }

    #[test]
    fn a_lone_frame_and_a_peer_without_bundles_get_ordinary_datagrams() {
        let shared = shared_with_peer(1400, true);
        let mut b = Buffers::default();
        send_one(&shared, Send::Direct(PEER), &frame(1, 64), &mut b);
        close_bundles(&shared, &mut b);
        let (datagrams, got) = sent(&b);
        assert_eq!(got, vec![frame(1, 64)]);
        assert!(!Header::parse(&datagrams[0]).unwrap().bundle);

        let shared = shared_with_peer(1400, false);
        let mut b = Buffers::default();
        for i in 0..5 {
            send_one(&shared, Send::Direct(PEER), &frame(i, 64), &mut b);
        }
        close_bundles(&shared, &mut b);
        let (datagrams, got) = sent(&b);
        assert_eq!(got.len(), 5);
        assert_eq!(datagrams.len(), 5);
        assert!(datagrams.iter().all(|d| !Header::parse(d).unwrap().bundle));
    }

    #[test]
    fn a_probe_is_told_from_a_frame_by_its_header_and_round() {
        let mut payload = vec![0u8; VNET_HDR_LEN + 300];
        weave_ebpf_common::heartbeat::write_heartbeat_frame(&mut payload[VNET_HDR_LEN..], 7, 42);
        assert_eq!(probe_round(&payload), Some(42));
        weave_ebpf_common::heartbeat::write_heartbeat_frame(&mut payload[VNET_HDR_LEN..], 7, 0);
        assert_eq!(probe_round(&payload), None, "a plain heartbeat is no probe");
        payload[VNET_HDR_LEN + 5] = 1;
        assert_eq!(probe_round(&payload), None, "a frame to a real MAC");
        assert_eq!(
            probe_round(&payload[..VNET_HDR_LEN + 16]),
            None,
            "too short"
        );
    }
}
