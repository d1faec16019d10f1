//! Every map the programs share, declared once (with BTF), and the small accessors over
//! them: the configuration, the counters, the peer lookups admission makes.
//!
//! The map names are the ones the controller opens and pins: keep them.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use weave_ebpf_common::{
    admission::PeerLookup,
    broadcast_id::BroadcastKey,
    counters::Reason,
    maps::{
        BroadcastTree, Counter, DatapathConfig, EndpointAddresses, IfindexKey, Ipv4Key,
        LocalEndpoint, MacKey, NeighbourPeer, PeerCounter, PeerEntry, RemoteMac,
        BROADCAST_TREES_MAX_ENTRIES, CONFIG_READY, ENDPOINTS_MAX_ENTRIES, NEIGHBOURS_MAX_ENTRIES,
        NEIGHBOUR_PEERS_MAX_ENTRIES, PEERS_MAX_ENTRIES, REMOTE_MACS_MAX_ENTRIES,
    },
};

#[btf_map]
pub(crate) static CONFIG: Array<DatapathConfig, 1> = Array::new();
#[btf_map]
pub(crate) static PEERS: Array<PeerEntry, { PEERS_MAX_ENTRIES as usize }> = Array::new();
#[btf_map]
pub(crate) static ENDPOINTS: HashMap<MacKey, LocalEndpoint, { ENDPOINTS_MAX_ENTRIES as usize }> =
    HashMap::new();
#[btf_map]
pub(crate) static ENDPOINT_ADDRESSES: HashMap<
    IfindexKey,
    EndpointAddresses,
    { ENDPOINTS_MAX_ENTRIES as usize },
> = HashMap::new();
#[btf_map]
pub(crate) static REMOTE_MACS: LruHashMap<MacKey, RemoteMac, { REMOTE_MACS_MAX_ENTRIES as usize }> =
    LruHashMap::new();
#[btf_map]
pub(crate) static NEIGHBOURS: LruHashMap<Ipv4Key, MacKey, { NEIGHBOURS_MAX_ENTRIES as usize }> =
    LruHashMap::new();
#[btf_map]
pub(crate) static NEIGHBOUR_PEERS: HashMap<
    Ipv4Key,
    NeighbourPeer,
    { NEIGHBOUR_PEERS_MAX_ENTRIES as usize },
> = HashMap::new();
/// By source short ID. Not preallocated: a tree is large and most short IDs have none.
#[btf_map]
pub(crate) static BROADCAST_TREES: HashMap<
    u32,
    BroadcastTree,
    { BROADCAST_TREES_MAX_ENTRIES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();
#[btf_map]
pub(crate) static COUNTERS: PerCpuArray<Counter, { Reason::COUNT as usize }> = PerCpuArray::new();
#[btf_map]
pub(crate) static PEER_COUNTERS: PerCpuArray<PeerCounter, { PEERS_MAX_ENTRIES as usize }> =
    PerCpuArray::new();

/// Slots of [`LEARNED`] per CPU (a power of two).
pub(crate) const LEARNED_SLOTS: u32 = 64;

/// What `rx_from_underlay` last learned from one source MAC on this CPU: the MAC behind
/// `peer`, sending from `addr`, written to `REMOTE_MACS` and `NEIGHBOURS` (or found there)
/// at coarse time `at_ns`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Learned {
    pub(crate) mac: [u8; 6],
    pub(crate) peer: u16,
    pub(crate) addr: [u8; 4],
    pub(crate) _pad: [u8; 4],
    pub(crate) at_ns: u64,
}

/// A per-CPU record of recent learning, by the source MAC's last byte: a frame whose source
/// MAC, peer and address match its slot's record of less than a second ago is not looked up
/// in `REMOTE_MACS` and `NEIGHBOURS` again. Not pinned: a cache, empty after a restart.
#[btf_map]
pub(crate) static LEARNED: PerCpuArray<Learned, { LEARNED_SLOTS as usize }> = PerCpuArray::new();

/// This CPU's count of the broadcasts it stamped (`weave_ebpf_common::broadcast_id`),
/// started at a random value by the first. Not pinned: a new start takes a new random one.
#[btf_map]
pub(crate) static BROADCAST_COUNT: PerCpuArray<u32, 1> = PerCpuArray::new();

/// Slots of [`SEEN_BROADCASTS`]: broadcasts from all origins over the last moments; a slot
/// is needed only until a loop brings its broadcast round again (milliseconds).
pub(crate) const SEEN_BROADCASTS_SLOTS: u32 = 4096;

/// The broadcasts this router received, by origin and ID, with the coarse time each was
/// first seen: the same one again within the window is dropped. Not pinned: a cache, empty
/// after a restart.
#[btf_map]
pub(crate) static SEEN_BROADCASTS: LruHashMap<
    BroadcastKey,
    u64,
    { SEEN_BROADCASTS_SLOTS as usize },
> = LruHashMap::new();

#[inline(always)]
pub(crate) fn count(reason: Reason, bytes: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: the slot belongs to this CPU and the program is not preempted on it while
        // running, so nothing else writes it concurrently; the pointer comes from a successful
        // lookup in a preallocated array.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}

#[inline(always)]
pub(crate) fn count_peer(short_id: u16, tx: bool, bytes: u32) {
    if let Some(c) = PEER_COUNTERS.get_ptr_mut(short_id as u32) {
        // SAFETY: as in `count`: a per-CPU slot of a preallocated array.
        unsafe {
            if tx {
                (*c).tx_packets += 1;
                (*c).tx_bytes += bytes as u64;
            } else {
                (*c).rx_packets += 1;
                (*c).rx_bytes += bytes as u64;
            }
        }
    }
}

/// The configuration, once the controller has written it.
#[inline(always)]
pub(crate) fn config() -> Option<DatapathConfig> {
    let c = CONFIG.get(0)?;
    if c.flags & CONFIG_READY == 0 {
        return None;
    }
    Some(*c)
}

/// The broadcast tree of the origin with `short_id`: our children in it.
#[inline(always)]
pub(crate) fn broadcast_tree(short_id: u16) -> Option<&'static BroadcastTree> {
    // SAFETY: a map value stays valid while the program runs (RCU); the controller replaces
    // a tree with one update, and a frame racing with it sees either children list or a
    // mix of both (plain integers): at worst one copy too many or too few.
    unsafe { BROADCAST_TREES.get(&(short_id as u32)) }
}

/// `PEERS` and `NEIGHBOUR_PEERS`, as the admission decision reads them.
pub(crate) struct PeerMaps;

impl PeerLookup for PeerMaps {
    #[inline(always)]
    fn peer(&self, short_id: u16) -> Option<&PeerEntry> {
        PEERS.get(short_id as u32)
    }

    #[inline(always)]
    fn is_neighbour(&self, underlay_ipv4: [u8; 4]) -> bool {
        // SAFETY: the value is only tested for presence.
        unsafe {
            NEIGHBOUR_PEERS.get(&Ipv4Key {
                addr: underlay_ipv4,
            })
        }
        .is_some()
    }
}
