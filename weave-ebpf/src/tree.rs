//! Broadcast-tree copies: one copy of a frame per reachable direct child in a tree, the
//! outer headers addressed to each. `rx_from_underlay` passes broadcasts on along their
//! origin's tree, `from_bridge` floods along ours, each of ours stamped with a broadcast ID
//! (`weave_ebpf_common::broadcast_id`) by which a receiver knows one come round again.

use aya_ebpf::{
    bindings::__sk_buff,
    cty::c_void,
    helpers::{
        bpf_get_prandom_u32, bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns, generated::bpf_loop,
    },
    programs::TcContext,
};
use weave_ebpf_common::{
    broadcast_id::{broadcast_id, is_duplicate, read_broadcast_id, BroadcastKey},
    counters::Reason,
    headers::{ipv4_checksum_with_dst, ETH_HLEN, IPV4_HLEN, VXLAN_HLEN},
    maps::{BroadcastTree, DatapathConfig, PeerEntry, MAX_BROADCAST_CHILDREN, PEER_REACHABLE},
    vni,
};

use crate::{
    frame::OFF_VXLAN,
    maps::{count, count_peer, BROADCAST_COUNT, PEERS, SEEN_BROADCASTS},
};

/// The ID of the next broadcast this CPU floods (zero, no ID, only if the counter cannot
/// be read).
#[inline(always)]
pub(crate) fn next_broadcast_id() -> u32 {
    let Some(counter) = BROADCAST_COUNT.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a per-CPU slot of a preallocated array, which nothing else writes while the
    // program runs on this CPU (as in `maps::count`); the helpers take no arguments.
    unsafe {
        if *counter == 0 {
            *counter = bpf_get_prandom_u32();
        }
        let n = *counter;
        *counter = n.wrapping_add(1);
        broadcast_id(bpf_get_smp_processor_id(), n)
    }
}

/// Whether the broadcast from `origin` with the ID in `vxlan` was received here moments ago:
/// the same broadcast come round a loop, to be dropped. Otherwise records it as seen now.
/// A frame without an ID is never a duplicate.
#[inline(always)]
pub(crate) fn seen_before(origin: u16, vxlan: &[u8; VXLAN_HLEN]) -> bool {
    let id = read_broadcast_id(vxlan);
    if id == 0 {
        return false;
    }
    let key = BroadcastKey::new(origin, id);
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: the value is copied out at once.
    if unsafe { SEEN_BROADCASTS.get(key) }.is_some_and(|seen_at| is_duplicate(*seen_at, now)) {
        return true;
    }
    let _ = SEEN_BROADCASTS.insert(key, now, 0);
    false
}

/// A reachable, directly connected peer whose underlay MAC is known: one a copy of a
/// broadcast can be addressed to.
#[inline(always)]
fn direct_peer(short_id: u16) -> Option<&'static PeerEntry> {
    let peer = PEERS.get(short_id as u32)?;
    (peer.flags & PEER_REACHABLE != 0 && peer.next_hop == short_id && peer.underlay_mac != [0; 6])
        .then_some(peer)
}

/// Addresses a copy's outer Ethernet + IPv4 header (built with a zero destination whose
/// checksum is `checksum_zero_dst`) to a direct peer: its MAC, its address, the checksum.
#[inline(always)]
fn address_copy(hdr: &mut [u8; ETH_HLEN + IPV4_HLEN], peer: &PeerEntry, checksum_zero_dst: u16) {
    hdr[0..6].copy_from_slice(&peer.underlay_mac);
    hdr[ETH_HLEN + 16..ETH_HLEN + 20].copy_from_slice(&peer.underlay_ipv4);
    let checksum = ipv4_checksum_with_dst(checksum_zero_dst, peer.underlay_ipv4);
    hdr[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&checksum.to_be_bytes());
}

/// What [`send_copies`] did.
pub(crate) struct Copies {
    /// A copy was addressed to at least one child: the frame's headers were rewritten.
    pub(crate) addressed: bool,
    /// At least one copy went out of the underlay.
    pub(crate) sent: bool,
}

/// What one broadcast's copies share, on the stack of [`send_copies`]: handed to
/// [`copy_to_child`] for each child by `bpf_loop`.
#[repr(C)]
struct CopyLoop {
    skb: *mut __sk_buff,
    tree: *const BroadcastTree,
    underlay_ifindex: u32,
    len: u32,
    reason: Reason,
    origin: u16,
    checksum_zero_dst: u16,
    hdr: [u8; ETH_HLEN + IPV4_HLEN],
    /// The underlay address the frame came from (zero for our own broadcasts).
    previous_hop: [u8; 4],
    addressed: bool,
    sent: bool,
}

/// Sends one copy of the frame to each reachable direct peer among the children of `tree`:
/// `hdr` (the outer Ethernet + IPv4 header from us, built with a zero destination) addressed
/// to the child, and the VNI `origin → child`, written over the frame's outer headers and
/// cloned out of the underlay. The frame's UDP and VXLAN headers must already be in place.
/// Each copy sent is counted under `reason` and for its child. Stops at the first store that
/// fails.
///
/// No copy goes back to the origin or to `previous_hop` (the underlay address the frame
/// came from): in a tree all routers agree on, neither is ever a child, but while a mesh
/// forms, two routers can each take the other for its child in an origin's tree, and such
/// a frame would go back and forth, copied at every turn, until its TTL ran out (a storm
/// of tens of millions of packets with a hundred routers forming at once).
///
/// The children are walked with `bpf_loop`, so the verifier checks one turn of the walk
/// instead of every one of the `MAX_BROADCAST_CHILDREN` (which made loading these
/// programs take a third of a second).
#[inline(always)]
pub(crate) fn send_copies(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    tree: &BroadcastTree,
    origin: u16,
    hdr: &[u8; ETH_HLEN + IPV4_HLEN],
    previous_hop: [u8; 4],
    reason: Reason,
    len: u32,
) -> Copies {
    let children = (tree.count as u32).min(MAX_BROADCAST_CHILDREN as u32);
    let mut state = CopyLoop {
        skb: ctx.skb.skb,
        tree,
        underlay_ifindex: cfg.underlay_ifindex,
        len,
        reason,
        origin,
        checksum_zero_dst: u16::from_be_bytes([hdr[ETH_HLEN + 10], hdr[ETH_HLEN + 11]]),
        hdr: *hdr,
        previous_hop,
        addressed: false,
        sent: false,
    };
    // SAFETY: `copy_to_child` takes the state pointer given here, which lives on this
    // stack frame until `bpf_loop` returns; the helper calls it at most `children` times.
    unsafe {
        bpf_loop(
            children,
            copy_to_child as *mut c_void,
            &mut state as *mut CopyLoop as *mut c_void,
            0,
        );
    }
    Copies {
        addressed: state.addressed,
        sent: state.sent,
    }
}

/// One turn of [`send_copies`]: the copy for child `index`. Returns 0 to go on, 1 to stop.
unsafe extern "C" fn copy_to_child(index: u64, state: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` hands back the pointer `send_copies` gave it, a `CopyLoop` on its
    // stack that nothing else touches while the loop runs.
    let state = unsafe { &mut *(state as *mut CopyLoop) };
    let i = index as usize;
    if i >= MAX_BROADCAST_CHILDREN {
        return 1;
    }
    // SAFETY: `tree` is a map value, valid while the program runs (RCU).
    let child = unsafe { (*state.tree).children[i] };
    let Some(peer) = direct_peer(child) else {
        return 0;
    };
    if child == state.origin || peer.underlay_ipv4 == state.previous_hop {
        return 0;
    }
    address_copy(&mut state.hdr, peer, state.checksum_zero_dst);
    let id = vni::pack(state.origin, child);
    let vni_bytes: [u8; 3] = [(id >> 16) as u8, (id >> 8) as u8, id as u8];
    state.addressed = true;
    let ctx = TcContext::new(state.skb);
    if ctx.store(0, &state.hdr, 0).is_err() || ctx.store(OFF_VXLAN + 4, &vni_bytes, 0).is_err() {
        return 1;
    }
    if ctx.clone_redirect(state.underlay_ifindex, 0).is_ok() {
        state.sent = true;
        count(state.reason, state.len);
        count_peer(child, true, state.len);
    }
    0
}
