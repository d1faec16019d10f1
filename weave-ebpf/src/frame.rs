//! Frame layout: tc verdicts, offsets in an encapsulated frame, and reading addresses out
//! of frames.

use aya_ebpf::programs::TcContext;
use weave_ebpf_common::headers::{
    ARP_OP_REQUEST, ETH_HLEN, ETH_P_ARP, ETH_P_IP, IPV4_HLEN, OUTER_HLEN, UDP_HLEN,
};

/// tc verdicts (`TC_ACT_OK`, `TC_ACT_SHOT`) as the classifier returns them.
pub(crate) const TC_OK: i32 = 0;
pub(crate) const TC_SHOT: i32 = 2;

/// Offsets in an encapsulated frame.
pub(crate) const OFF_IP: usize = ETH_HLEN;
pub(crate) const OFF_UDP: usize = ETH_HLEN + IPV4_HLEN;
pub(crate) const OFF_VXLAN: usize = OFF_UDP + UDP_HLEN;
pub(crate) const OFF_INNER: usize = OUTER_HLEN;
/// Shortest frame that carries a whole inner Ethernet header.
pub(crate) const MIN_VXLAN_FRAME: usize = OUTER_HLEN + ETH_HLEN;
/// Length of an Ethernet + IPv4 ARP frame.
pub(crate) const ARP_FRAME_LEN: usize = ETH_HLEN + 28;
/// Fixed part of an Ethernet/IPv4 ARP request: htype 1, ptype 0x0800, hlen 6, plen 4, op 1.
pub(crate) const ARP_REQUEST_FIXED: [u8; 8] = [0, 1, 0x08, 0x00, 6, 4, 0, ARP_OP_REQUEST as u8];

#[inline(always)]
pub(crate) fn mac_at(b: &[u8], off: usize) -> [u8; 6] {
    [
        b[off],
        b[off + 1],
        b[off + 2],
        b[off + 3],
        b[off + 4],
        b[off + 5],
    ]
}

#[inline(always)]
pub(crate) fn ipv4_at(b: &[u8], off: usize) -> [u8; 4] {
    [b[off], b[off + 1], b[off + 2], b[off + 3]]
}

/// ifindex of the interface the program runs on (the container veth's host end).
#[inline(always)]
pub(crate) fn own_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the context the kernel passed in.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Source and destination of an IPv4 frame (IPv4 source and destination) or of an
/// Ethernet/IPv4 ARP frame (sender and target protocol addresses); `None` for other
/// protocols and for frames too short to carry them.
#[inline(always)]
pub(crate) fn ipv4_addresses(ctx: &TcContext, proto: u16) -> Option<([u8; 4], [u8; 4])> {
    if proto == ETH_P_IP {
        let a: [u8; 8] = ctx.load(ETH_HLEN + 12).ok()?;
        Some((ipv4_at(&a, 0), ipv4_at(&a, 4)))
    } else if proto == ETH_P_ARP {
        let arp: [u8; 28] = ctx.load(ETH_HLEN).ok()?;
        if arp[0..6] != ARP_REQUEST_FIXED[0..6] {
            return None;
        }
        Some((ipv4_at(&arp, 14), ipv4_at(&arp, 24)))
    } else {
        None
    }
}
