//! Broadcast-tree copies: one copy of a frame per reachable direct child in a tree, the
//! outer headers addressed to each. `rx_from_underlay` passes broadcasts on along their
//! origin's tree, `from_bridge` floods along ours.

use aya_ebpf::programs::TcContext;
use weave_ebpf_common::{
    counters::Reason,
    headers::{ipv4_checksum_with_dst, ETH_HLEN, IPV4_HLEN},
    maps::{BroadcastTree, DatapathConfig, PeerEntry, MAX_BROADCAST_CHILDREN, PEER_REACHABLE},
    vni,
};

use crate::{
    frame::OFF_VXLAN,
    maps::{count, count_peer, PEERS},
};

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

/// Sends one copy of the frame to each reachable direct peer among the children of `tree`:
/// `hdr` (the outer Ethernet + IPv4 header from us, built with a zero destination) addressed
/// to the child, and the VNI `origin → child`, written over the frame's outer headers and
/// cloned out of the underlay. The frame's UDP and VXLAN headers must already be in place.
/// Each copy sent is counted under `reason` and for its child. Stops at the first store that
/// fails.
#[inline(always)]
pub(crate) fn send_copies(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    tree: &BroadcastTree,
    origin: u16,
    hdr: &mut [u8; ETH_HLEN + IPV4_HLEN],
    reason: Reason,
    len: u32,
) -> Copies {
    let checksum_zero_dst = u16::from_be_bytes([hdr[ETH_HLEN + 10], hdr[ETH_HLEN + 11]]);
    let count_children = tree.count as usize;
    let mut copies = Copies {
        addressed: false,
        sent: false,
    };
    for i in 0..MAX_BROADCAST_CHILDREN {
        if i >= count_children {
            break;
        }
        let child = tree.children[i];
        let Some(peer) = direct_peer(child) else {
            continue;
        };
        address_copy(hdr, peer, checksum_zero_dst);
        let id = vni::pack(origin, child);
        let vni_bytes: [u8; 3] = [(id >> 16) as u8, (id >> 8) as u8, id as u8];
        copies.addressed = true;
        if ctx.store(0, hdr, 0).is_err() || ctx.store(OFF_VXLAN + 4, &vni_bytes, 0).is_err() {
            break;
        }
        if ctx.clone_redirect(cfg.underlay_ifindex, 0).is_ok() {
            copies.sent = true;
            count(reason, len);
            count_peer(child, true, len);
        }
    }
    copies
}
