//! `tx_from_container` (tcx ingress of each container veth's host end): checks the sender's
//! isolation rules, answers ARP from `NEIGHBOURS`, hands frames for local containers straight
//! to them, encapsulates frames for MACs learned behind a peer, leaves the rest to the bridge.

use aya_ebpf::{
    helpers::{bpf_redirect, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};
use weave_ebpf_common::{
    counters::Reason,
    headers::{is_group_mac, ARP_OP_REPLY, ETH_HLEN, ETH_P_ARP, ETH_P_IP},
    maps::{Ipv4Key, MacKey},
};

use crate::{
    encap::{encapsulate, encapsulate_non_ipv4, next_hop},
    frame::{ipv4_at, mac_at, ARP_FRAME_LEN, ARP_REQUEST_FIXED, TC_OK, TC_SHOT},
    isolation::{check_sender, may_deliver},
    maps::{config, count, ENDPOINTS, NEIGHBOURS, REMOTE_MACS},
};

#[classifier]
pub fn tx_from_container(ctx: TcContext) -> i32 {
    try_tx_from_container(&ctx).unwrap_or(TC_OK)
}

fn try_tx_from_container(ctx: &TcContext) -> Result<i32, ()> {
    let Some(cfg) = config() else {
        return Ok(TC_OK);
    };
    let eth: [u8; ETH_HLEN] = ctx.load(0).map_err(|_| ())?;
    let dst = mac_at(&eth, 0);
    let proto = u16::from_be_bytes([eth[12], eth[13]]);
    let len = ctx.len();

    let src_ip = match check_sender(ctx, proto, &mac_at(&eth, 6)) {
        Ok(ip) => ip,
        Err(reason) => {
            count(reason, len);
            return Ok(TC_SHOT);
        }
    };
    if proto == ETH_P_ARP {
        if let Some(action) = answer_arp(ctx) {
            count(Reason::TxArpAnswered, len);
            return Ok(action);
        }
    }
    if is_group_mac(&dst) {
        count(Reason::TxToBridge, len);
        return Ok(TC_OK);
    }
    let key = MacKey::new(dst);
    // SAFETY: the value is copied out at once, before any update of the map.
    if let Some(ep) = unsafe { ENDPOINTS.get(key) } {
        let ifindex = ep.host_ifindex;
        if !may_deliver(ifindex, src_ip) {
            count(Reason::TxDropIsolated, len);
            return Ok(TC_SHOT);
        }
        count(Reason::TxLocalDelivered, len);
        // SAFETY: a helper call with plain integer arguments.
        return Ok(unsafe { bpf_redirect_peer(ifindex, 0) } as i32);
    }
    if proto != ETH_P_IP {
        if let Some(action) = encapsulate_non_ipv4(ctx, &cfg, &key, len) {
            return Ok(action);
        }
        count(Reason::TxToBridge, len);
        return Ok(TC_OK);
    }
    // SAFETY: the value is copied out at once; an LRU entry may be reused later.
    let Some(peer_id) = (unsafe { REMOTE_MACS.get(key) }).map(|r| r.peer_short_id) else {
        count(Reason::TxToBridge, len);
        return Ok(TC_OK);
    };
    let Some(hop) = next_hop(peer_id) else {
        count(Reason::TxToBridge, len);
        return Ok(TC_OK);
    };
    Ok(encapsulate(ctx, &cfg, &eth, peer_id, &hop, len))
}

/// Answers an ARP request for an address in `NEIGHBOURS` by turning the frame into the
/// reply and sending it back out of the interface it came in on (to the container).
#[inline(always)]
fn answer_arp(ctx: &TcContext) -> Option<i32> {
    let req: [u8; ARP_FRAME_LEN] = ctx.load(0).ok()?;
    let a = ETH_HLEN;
    if req[a..a + 8] != ARP_REQUEST_FIXED {
        return None;
    }
    let sha = mac_at(&req, a + 8);
    let spa = ipv4_at(&req, a + 14);
    let tpa = ipv4_at(&req, a + 24);
    if tpa == spa {
        // Gratuitous ARP or duplicate address detection: not ours to answer.
        return None;
    }
    // SAFETY: the value is copied out at once.
    let mac = unsafe { NEIGHBOURS.get(Ipv4Key { addr: tpa }) }?.addr;
    if mac == sha {
        return None;
    }
    let mut rep = [0u8; ARP_FRAME_LEN];
    rep[0..6].copy_from_slice(&sha);
    rep[6..12].copy_from_slice(&mac);
    rep[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    rep[a..a + 6].copy_from_slice(&ARP_REQUEST_FIXED[..6]);
    rep[a + 6..a + 8].copy_from_slice(&ARP_OP_REPLY.to_be_bytes());
    rep[a + 8..a + 14].copy_from_slice(&mac);
    rep[a + 14..a + 18].copy_from_slice(&tpa);
    rep[a + 18..a + 24].copy_from_slice(&sha);
    rep[a + 24..a + 28].copy_from_slice(&spa);
    ctx.store(0, &rep, 0).ok()?;
    // SAFETY: reading a field of the context the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a helper call with plain integer arguments.
    Some(unsafe { bpf_redirect(ifindex, 0) } as i32)
}
