//! `from_bridge` (tcx ingress of `vethwe-datapath`, the far end of the bridge's port towards
//! the peers): what the bridge floods or forwards towards the peers (broadcasts, frames for
//! unknown destinations, the host's own frames, heartbeats) is encapsulated, to the peer that
//! has the destination MAC or as one copy per peer of this router's own tree.

use aya_ebpf::{
    helpers::{bpf_get_hash_recalc, bpf_skb_change_head},
    macros::classifier,
    programs::TcContext,
};
use weave_ebpf_common::{
    broadcast_id::write_broadcast_id,
    counters::Reason,
    headers::{
        is_group_mac, source_port_from_hash, write_outer_headers, OuterHeaders, ETH_HLEN, ETH_P_IP,
        IPV4_HLEN, OUTER_HLEN, UDP_HLEN, VXLAN_HLEN,
    },
    heartbeat::{is_heartbeat, read_heartbeat_payload, HEARTBEAT_PAYLOAD_LEN},
    maps::{DatapathConfig, MacKey, PEER_ADMIT},
    vni,
};

use crate::{
    encap::{encapsulate, encapsulate_non_ipv4, next_hop, push_outer_headers, NextHop},
    frame::{ipv4_addresses, mac_at, OFF_UDP, OFF_VXLAN, TC_SHOT},
    isolation::is_service,
    maps::{broadcast_tree, config, count, PEERS, REMOTE_MACS},
    tree::{next_broadcast_id, send_copies},
};

#[classifier]
pub fn from_bridge(ctx: TcContext) -> i32 {
    try_from_bridge(&ctx).unwrap_or_else(|()| {
        count(Reason::BridgeDropped, ctx.len());
        TC_SHOT
    })
}

/// A frame the bridge sent towards the peers: to the peer that has its destination MAC
/// when one does and is reachable, otherwise one copy to each peer of our own tree.
/// Nothing goes back to the bridge.
fn try_from_bridge(ctx: &TcContext) -> Result<i32, ()> {
    let cfg = config().ok_or(())?;
    let len = ctx.len();
    let eth: [u8; ETH_HLEN] = ctx.load(0).map_err(|_| ())?;
    if is_heartbeat(&eth) {
        return Ok(send_heartbeat(ctx, &cfg, len));
    }
    let dst = mac_at(&eth, 0);
    let proto = u16::from_be_bytes([eth[12], eth[13]]);
    // The host's frames from the service address (its DNS server's ARP and answers) are
    // for its own containers only.
    if ipv4_addresses(ctx, proto).is_some_and(|(src, _)| is_service(src)) {
        return Ok(drop_from_bridge(len));
    }
    if !is_group_mac(&dst) {
        let key = MacKey::new(dst);
        if proto == ETH_P_IP {
            // SAFETY: the value is copied out at once.
            let peer = unsafe { REMOTE_MACS.get(key) }.map(|r| r.peer_short_id);
            if let Some((peer_id, hop)) = peer.and_then(|p| next_hop(p).map(|hop| (p, hop))) {
                return Ok(encapsulate(ctx, &cfg, &eth, peer_id, &hop, len));
            }
        } else if let Some(action) = encapsulate_non_ipv4(ctx, &cfg, &key, len) {
            return Ok(action);
        }
    }
    Ok(flood_to_peers(ctx, &cfg, len))
}

/// A heartbeat or probe the router wrote into the bridge port: addressed to the direct peer
/// its payload names, as a copy of a broadcast would be, and sent; dropped when the peer is
/// not a direct one (or its next hop's MAC is not known).
#[inline(always)]
fn send_heartbeat(ctx: &TcContext, cfg: &DatapathConfig, len: u32) -> i32 {
    let Ok(payload) = ctx.load::<[u8; HEARTBEAT_PAYLOAD_LEN]>(ETH_HLEN) else {
        return drop_from_bridge(len);
    };
    let (peer_id, _) = read_heartbeat_payload(&payload);
    // Any directly connected peer, also one the sleeve carries now (admitted only): its
    // heartbeats tell when the fast path works again.
    let Some(peer) = PEERS.get(peer_id as u32) else {
        return drop_from_bridge(len);
    };
    if peer.flags & PEER_ADMIT == 0 || peer.next_hop != peer_id || peer.underlay_mac == [0; 6] {
        return drop_from_bridge(len);
    }
    // SAFETY: reading a field of the context the kernel passed in.
    if unsafe { (*ctx.skb.skb).gso_segs } > 1 || len > 0xffff - OUTER_HLEN as u32 {
        return drop_from_bridge(len);
    }
    let hop = NextHop::of(peer);
    let sent = push_outer_headers(
        ctx,
        cfg,
        &hop,
        vni::pack(cfg.own_short_id, peer_id),
        source_port_from_hash(peer_id as u32),
        len,
    );
    if sent == TC_SHOT {
        return drop_from_bridge(len);
    }
    count(Reason::TxHeartbeat, len);
    sent
}

/// Sends a copy of a frame from the bridge to each reachable direct peer among the
/// children of our own broadcast tree, all stamped with one new broadcast ID, then drops
/// the original.
#[inline(always)]
fn flood_to_peers(ctx: &TcContext, cfg: &DatapathConfig, len: u32) -> i32 {
    let Some(tree) = broadcast_tree(cfg.own_short_id) else {
        return drop_from_bridge(len);
    };
    // SAFETY: reading a field of the context the kernel passed in.
    let gso = unsafe { (*ctx.skb.skb).gso_segs } > 1;
    if tree.count == 0 || gso || len > 0xffff - OUTER_HLEN as u32 {
        return drop_from_bridge(len);
    }
    // SAFETY: the helper only reads the skb the program was given.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    // SAFETY: a helper call on the program's own skb; it reallocates the head if needed.
    if unsafe { bpf_skb_change_head(ctx.skb.skb, OUTER_HLEN as u32, 0) } != 0 {
        return drop_from_bridge(len);
    }
    // Outer headers built once with a zero destination and VNI; each copy gets its peer's
    // MAC, address, checksum and VNI.
    let mut outer = [0u8; OUTER_HLEN];
    write_outer_headers(
        &mut outer,
        &OuterHeaders {
            src_ipv4: cfg.underlay_ipv4,
            dst_ipv4: [0; 4],
            src_port: source_port_from_hash(hash),
            vni: 0,
            inner_len: len as u16,
        },
    );
    outer[6..12].copy_from_slice(&cfg.underlay_mac);
    write_broadcast_id(&mut outer[OFF_VXLAN..], next_broadcast_id());
    let (mut hdr, mut udp_vxlan) = ([0u8; ETH_HLEN + IPV4_HLEN], [0u8; UDP_HLEN + VXLAN_HLEN]);
    hdr.copy_from_slice(&outer[..OFF_UDP]);
    udp_vxlan.copy_from_slice(&outer[OFF_UDP..]);
    if ctx.store(OFF_UDP, &udp_vxlan, 0).is_err() {
        return drop_from_bridge(len);
    }
    let copies = send_copies(
        ctx,
        cfg,
        tree,
        cfg.own_short_id,
        &hdr,
        [0; 4],
        Reason::TxEncapsulated,
        len,
    );
    if !copies.sent {
        return drop_from_bridge(len);
    }
    count(Reason::BridgeFlooded, len);
    TC_SHOT
}

#[inline(always)]
fn drop_from_bridge(len: u32) -> i32 {
    count(Reason::BridgeDropped, len);
    TC_SHOT
}
