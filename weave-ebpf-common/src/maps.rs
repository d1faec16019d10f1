//! Keys and values of the BPF maps, and the maps' names and sizes.
//!
//! | map (name)        | type              | key → value                         | written by |
//! |-------------------|-------------------|-------------------------------------|------------|
//! | `CONFIG`          | Array\[1\]        | 0 → [`DatapathConfig`]              | controller |
//! | `PEERS`           | Array\[4096\]     | short ID → [`PeerEntry`]            | controller |
//! | `ENDPOINTS`       | HashMap           | [`MacKey`] → [`LocalEndpoint`]      | controller |
//! | `REMOTE_MACS`     | LruHashMap        | [`MacKey`] → [`RemoteMac`]          | RX program (learning), controller (flush) |
//! | `NEIGHBOURS`      | LruHashMap        | [`Ipv4Key`] → [`MacKey`]            | controller (local), RX program (learning) |
//! | `COUNTERS`        | PerCpuArray       | [`crate::counters::Reason`] → [`Counter`] | programs |
//! | `PEER_COUNTERS`   | PerCpuArray\[4096\] | short ID → [`PeerCounter`]        | programs |
//! | `NEIGHBOUR_PEERS` | HashMap           | [`Ipv4Key`] → [`NeighbourPeer`]     | controller |
//! | `BROADCAST_TREES` | Array\[4096\]     | source short ID → [`BroadcastTree`] | controller |

use crate::vni::MAX_SHORT_IDS;

pub const CONFIG_MAP: &str = "CONFIG";
pub const PEERS_MAP: &str = "PEERS";
pub const ENDPOINTS_MAP: &str = "ENDPOINTS";
pub const REMOTE_MACS_MAP: &str = "REMOTE_MACS";
pub const NEIGHBOURS_MAP: &str = "NEIGHBOURS";
pub const COUNTERS_MAP: &str = "COUNTERS";
pub const PEER_COUNTERS_MAP: &str = "PEER_COUNTERS";
pub const NEIGHBOUR_PEERS_MAP: &str = "NEIGHBOUR_PEERS";
pub const BROADCAST_TREES_MAP: &str = "BROADCAST_TREES";

/// Every map the programs declare, in one list (pinning and clean-up walk it).
pub const ALL_MAPS: [&str; 9] = [
    CONFIG_MAP,
    PEERS_MAP,
    ENDPOINTS_MAP,
    REMOTE_MACS_MAP,
    NEIGHBOURS_MAP,
    COUNTERS_MAP,
    PEER_COUNTERS_MAP,
    NEIGHBOUR_PEERS_MAP,
    BROADCAST_TREES_MAP,
];

pub const PEERS_MAX_ENTRIES: u32 = MAX_SHORT_IDS;
pub const ENDPOINTS_MAX_ENTRIES: u32 = 4096;
pub const REMOTE_MACS_MAX_ENTRIES: u32 = 65536;
pub const NEIGHBOURS_MAX_ENTRIES: u32 = 65536;
pub const NEIGHBOUR_PEERS_MAX_ENTRIES: u32 = MAX_SHORT_IDS;
/// Most neighbours one router passes one source's broadcasts on to.
pub const MAX_BROADCAST_CHILDREN: usize = 15;

/// An Ethernet address as a map key (6 bytes plus 2 bytes of zero padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MacKey {
    pub addr: [u8; 6],
    pub _pad: [u8; 2],
}

impl MacKey {
    #[inline(always)]
    pub const fn new(addr: [u8; 6]) -> Self {
        Self { addr, _pad: [0; 2] }
    }
}

/// An IPv4 address as a map key, in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ipv4Key {
    pub addr: [u8; 4],
}

/// Static configuration of one router's data path (`CONFIG[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// This router's underlay IPv4 address, network byte order: outer source of encapsulated frames.
    pub underlay_ipv4: [u8; 4],
    /// ifindex of the underlay interface; encapsulated frames are redirected there.
    pub underlay_ifindex: u32,
    /// This router's short ID; frames whose VNI names another destination are not ours.
    pub own_short_id: u16,
    /// `CONFIG_*` bits.
    pub flags: u16,
    /// MAC address of the underlay interface: outer source of frames the programs address
    /// themselves (broadcast copies, non-IPv4 frames).
    pub underlay_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// `DatapathConfig::flags`: the controller has written the configuration (programs pass
/// everything through untouched until it has).
pub const CONFIG_READY: u16 = 1;

/// What the data path knows of one peer (`PEERS[short_id]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeerEntry {
    /// The peer's underlay IPv4 address, network byte order. VXLAN from this peer must come from it.
    pub underlay_ipv4: [u8; 4],
    /// `PEER_*` bits.
    pub flags: u32,
    /// Short ID of the peer to hand frames for this one to (itself when directly connected).
    pub next_hop: u16,
    /// The peer's underlay MAC address (directly connected peers on the underlay's segment;
    /// zero when unknown): outer destination of frames the programs address themselves.
    pub underlay_mac: [u8; 6],
}

/// `PeerEntry::flags`: the peer has an established connection; VXLAN from it is admitted.
pub const PEER_ADMIT: u32 = 1;
/// `PeerEntry::flags`: frames for this peer may be sent (a route to it exists).
pub const PEER_REACHABLE: u32 = 1 << 1;

/// A container interface on this host (`ENDPOINTS[mac]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LocalEndpoint {
    /// ifindex of the host end of the container's veth (a bridge port). Frames for the
    /// container are handed to it with `bpf_redirect_peer`.
    pub host_ifindex: u32,
    pub flags: u32,
}

/// A MAC address behind another peer (`REMOTE_MACS[mac]`), learned from decapsulated frames.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RemoteMac {
    pub peer_short_id: u16,
    pub _pad: [u8; 6],
}

/// A directly connected peer, by its underlay address (`NEIGHBOUR_PEERS[addr]`): VXLAN
/// relayed by a neighbour comes from the neighbour's address, not the origin's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NeighbourPeer {
    pub short_id: u16,
    pub _pad: [u8; 2],
}

/// The neighbours a broadcast from one source is passed on to (`BROADCAST_TREES[source]`):
/// this router's children in the source's broadcast tree.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BroadcastTree {
    pub count: u16,
    pub children: [u16; MAX_BROADCAST_CHILDREN],
}

/// Packets and bytes counted for one reason on one CPU (`COUNTERS[reason]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Traffic exchanged with one peer on one CPU (`PEER_COUNTERS[short_id]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeerCounter {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

const _: () = {
    assert!(core::mem::size_of::<MacKey>() == 8);
    assert!(core::mem::size_of::<Ipv4Key>() == 4);
    assert!(core::mem::size_of::<DatapathConfig>() == 20);
    assert!(core::mem::size_of::<NeighbourPeer>() == 4);
    assert!(core::mem::size_of::<BroadcastTree>() == 32);
    assert!(core::mem::size_of::<PeerEntry>() == 16);
    assert!(core::mem::size_of::<LocalEndpoint>() == 8);
    assert!(core::mem::size_of::<RemoteMac>() == 8);
    assert!(core::mem::size_of::<Counter>() == 16);
    assert!(core::mem::size_of::<PeerCounter>() == 32);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type below is #[repr(C)], Copy, made only of integers and byte arrays
    // with explicit padding fields, so any bit pattern is a valid value.
    unsafe impl aya::Pod for MacKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Ipv4Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DatapathConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PeerEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LocalEndpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RemoteMac {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NeighbourPeer {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BroadcastTree {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PeerCounter {}
}
