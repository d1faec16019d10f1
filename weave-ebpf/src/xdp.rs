//! `xdp_admit` (XDP on the underlay): the admission check of `rx_from_underlay`
//! (`weave_ebpf_common::admission`) before any skb exists.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use weave_ebpf_common::{
    admission::{self, Admission},
    counters::Reason,
    headers::{
        ETH_HLEN, ETH_P_IP, IPPROTO_UDP, IPV4_FRAGMENT_MASK, IPV4_HLEN, UDP_HLEN, VXLAN_HLEN,
    },
    VXLAN_PORT,
};

use crate::{
    frame::{ipv4_at, MIN_VXLAN_FRAME, OFF_IP, OFF_VXLAN},
    maps::{config, count, PeerMaps},
};

#[xdp]
pub fn xdp_admit(ctx: XdpContext) -> u32 {
    try_xdp_admit(&ctx).unwrap_or(XDP_PASS)
}

/// A pointer to `N` bytes at `off` of the frame, if the frame holds them.
#[inline(always)]
fn xdp_bytes<const N: usize>(ctx: &XdpContext, off: usize) -> Option<*const [u8; N]> {
    let start = ctx.data();
    if start + off + N > ctx.data_end() {
        return None;
    }
    Some((start + off) as *const [u8; N])
}

fn try_xdp_admit(ctx: &XdpContext) -> Option<u32> {
    let cfg = config()?;
    let len = (ctx.data_end() - ctx.data()) as u32;
    // SAFETY: `xdp_bytes` checked that the bytes lie inside the frame.
    let eth = unsafe { *xdp_bytes::<ETH_HLEN>(ctx, 0)? };
    if u16::from_be_bytes([eth[12], eth[13]]) != ETH_P_IP {
        return Some(XDP_PASS);
    }
    // SAFETY: bounds checked by `xdp_bytes`.
    let ip = unsafe { *xdp_bytes::<IPV4_HLEN>(ctx, OFF_IP)? };
    if ip[9] != IPPROTO_UDP || ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
        return Some(XDP_PASS);
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x1fff != 0 {
        return Some(XDP_PASS);
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    // SAFETY: bounds checked by `xdp_bytes`.
    let udp = unsafe { *xdp_bytes::<UDP_HLEN>(ctx, ETH_HLEN + (ihl & 0x3c))? };
    if u16::from_be_bytes([udp[2], udp[3]]) != VXLAN_PORT {
        return Some(XDP_PASS);
    }
    if ihl != IPV4_HLEN || frag & IPV4_FRAGMENT_MASK != 0 || (len as usize) < MIN_VXLAN_FRAME {
        count(Reason::XdpDropMalformed, len);
        return Some(XDP_DROP);
    }
    // SAFETY: bounds checked by `xdp_bytes`.
    let Some(vx) = xdp_bytes::<VXLAN_HLEN>(ctx, OFF_VXLAN).map(|p| unsafe { *p }) else {
        count(Reason::XdpDropMalformed, len);
        return Some(XDP_DROP);
    };
    let reason = match admission::admit(cfg.own_short_id, ipv4_at(&ip, 12), &vx, &PeerMaps) {
        Admission::Admit { .. } | Admission::Relay { .. } | Admission::ToSleeve { .. } => {
            return Some(XDP_PASS)
        }
        Admission::Drop(why) => why.xdp_reason(),
    };
    count(reason, len);
    Some(XDP_DROP)
}
