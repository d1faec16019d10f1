//! The sleeve: a data path in user space, for peers the kernel fast path must not carry
//! (with a password nothing leaves in plain VXLAN) or when `--datapath sleeve` says so.
//!
//! A TAP device on the weave bridge takes the frames the bridge sends it (everything for
//! MACs not local: the fast path has no entry for sleeve peers, so the programs hand such
//! frames to the bridge); one thread reads them, picks the peer by the learned destination
//! MAC (every sleeve peer for broadcast and unknown MACs), seals them ([`packet`]) and sends
//! them on UDP 6783. Another thread receives, drops what does not verify (counted by
//! reason), learns the sender's MAC and writes the frame into the TAP. Peers are direct
//! connections only.

pub mod packet;
pub mod tap;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::crypto::{NonceDomain, SessionKeys};
use packet::{Decoder, DropReason, Encoder, Header};
use tap::{Tap, VNET_HDR_LEN};

/// The sleeve's UDP port (Weave's).
pub const SLEEVE_PORT: u16 = 6783;
/// Name of the TAP device on the weave bridge.
pub const TAP_NAME: &str = "vethwe-sleeve";

/// Datagrams and bytes through the sleeve, and drops by reason, for /metrics.
pub struct SleeveCounters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);

pub static COUNTERS: SleeveCounters = SleeveCounters {
    tx_packets: ZERO,
    tx_bytes: ZERO,
    rx_packets: ZERO,
    rx_bytes: ZERO,
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
    encoder: Mutex<Encoder>,
    decoder: Mutex<Decoder>,
}

struct Shared {
    local: u16,
    encrypted: bool,
    peers: RwLock<HashMap<u16, Arc<Peer>>>,
    /// Where each remote MAC lives, learned from received frames.
    macs: RwLock<HashMap<[u8; 6], u16>>,
    stop: AtomicBool,
}

/// A running sleeve.
pub struct Sleeve {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Sleeve {
    /// Binds UDP `underlay:port` and starts moving frames between `tap` and peers.
    /// `encrypted`: every peer must come with session keys (a password is set).
    pub fn start(
        local_short_id: u16,
        underlay: Ipv4Addr,
        port: u16,
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
        let socket = Arc::new(socket);
        let tap = Arc::new(tap);
        let shared = Arc::new(Shared {
            local: local_short_id,
            encrypted,
            peers: RwLock::default(),
            macs: RwLock::default(),
            stop: AtomicBool::new(false),
        });
        let tx = {
            let (shared, socket, tap) = (shared.clone(), socket.clone(), tap.clone());
            std::thread::Builder::new()
                .name("sleeve-tx".into())
                .spawn(move || send_loop(&shared, &socket, &tap))?
        };
        let rx = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("sleeve-rx".into())
                .spawn(move || receive_loop(&shared, &socket, &tap))?
        };
        Ok(Sleeve {
            shared,
            threads: Mutex::new(vec![tx, rx]),
        })
    }

    pub fn encrypted(&self) -> bool {
        self.shared.encrypted
    }

    /// Carries frames to and from a directly connected peer, with the keys of its control
    /// connection (needed when encrypted).
    pub fn add_peer(
        &self,
        short_id: u16,
        underlay: Ipv4Addr,
        session: Option<&SessionKeys>,
    ) -> Result<(), String> {
        let keys = match (self.shared.encrypted, session) {
            (true, None) => return Err("no session keys for an encrypted sleeve".into()),
            (true, Some(k)) => Some(k),
            (false, _) => None,
        };
        let peer = Peer {
            addr: SocketAddrV4::new(underlay, SLEEVE_PORT),
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

    pub fn remove_peer(&self, short_id: u16) {
        write(&self.shared.peers).remove(&short_id);
        write(&self.shared.macs).retain(|_, p| *p != short_id);
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

/// TAP → peers. The frame is read into the datagram buffer after room for the header, so
/// a frame for one peer is sealed and sent without a copy.
fn send_loop(shared: &Shared, socket: &UdpSocket, tap: &Tap) {
    let mut buf: Vec<u8> = Vec::with_capacity(packet::HEADER_LEN + packet::MAX_PAYLOAD + 64);
    let mut out = Vec::with_capacity(packet::MAX_DATAGRAM);
    let send = |d: &[u8], to: SocketAddrV4| {
        if socket.send_to(d, to).is_ok() {
            COUNTERS.tx_packets.fetch_add(1, Relaxed);
            COUNTERS.tx_bytes.fetch_add(d.len() as u64, Relaxed);
        }
    };
    while !shared.stop.load(Relaxed) {
        buf.clear();
        buf.resize(packet::HEADER_LEN + packet::MAX_PAYLOAD, 0);
        let n = match tap.read(&mut buf[packet::HEADER_LEN..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = tap.wait_readable(200) {
                    tracing::error!("sleeve: polling {}: {e}", tap.name());
                    return;
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("sleeve: reading {}: {e}", tap.name());
                return;
            }
        };
        buf.truncate(packet::HEADER_LEN + n);
        let payload_at = packet::HEADER_LEN;
        let Some(dst) = mac_at(&buf, payload_at + VNET_HDR_LEN) else {
            continue;
        };
        let target = if dst[0] & 1 == 0 {
            read(&shared.macs).get(&dst).copied()
        } else {
            None
        };
        let peers: Vec<Arc<Peer>> = {
            let peers = read(&shared.peers);
            match target.and_then(|t| peers.get(&t)) {
                Some(p) => vec![p.clone()],
                None => peers.values().cloned().collect(),
            }
        };
        if let [peer] = peers.as_slice() {
            match lock(&peer.encoder).encode_in_place(&mut buf) {
                Ok(true) => {
                    send(&buf, peer.addr);
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("sleeve: cannot seal for {}: {e}", peer.addr);
                    continue;
                }
            }
        }
        for peer in peers {
            let result =
                lock(&peer.encoder).encode(&buf[payload_at..], &mut out, |d| send(d, peer.addr));
            if let Err(e) = result {
                tracing::warn!("sleeve: cannot seal for {}: {e}", peer.addr);
            }
        }
    }
}

/// Peers → TAP.
fn receive_loop(shared: &Shared, socket: &UdpSocket, tap: &Tap) {
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Relaxed) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
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
        COUNTERS.rx_packets.fetch_add(1, Relaxed);
        COUNTERS.rx_bytes.fetch_add(n as u64, Relaxed);
        let datagram = &mut buf[..n];
        let header = match Header::parse(datagram) {
            Ok(h) => h,
            Err(r) => {
                COUNTERS.drop(r);
                continue;
            }
        };
        let peer = read(&shared.peers).get(&header.sender).cloned();
        let Some(peer) = peer.filter(|p| SocketAddr::V4(p.addr).ip() == from.ip()) else {
            COUNTERS.drop(DropReason::UnknownPeer);
            continue;
        };
        let mut decoder = lock(&peer.decoder);
        match decoder.decode(header, datagram) {
            Ok(None) => {}
            Ok(Some(payload)) => {
                if let Some(src) = mac_at(&payload, VNET_HDR_LEN + 6) {
                    if src[0] & 1 == 0 && read(&shared.macs).get(&src) != Some(&header.sender) {
                        write(&shared.macs).insert(src, header.sender);
                    }
                }
                if let Err(e) = tap.write(&payload) {
                    tracing::debug!("sleeve: writing {}: {e}", tap.name());
                }
            }
            Err(r) => COUNTERS.drop(r),
        }
    }
}
