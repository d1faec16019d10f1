//! `rx_from_underlay` (tcx ingress of the underlay): admits VXLAN only from known peers
//! (`weave_ebpf_common::admission`), learns, passes frames for other peers on (to the
//! sleeve those for a peer whose fast path fell back), copies broadcasts along the source's
//! tree (each once: one come round again is dropped), decapsulates IPv4 for local
//! containers straight into them and the rest into the bridge (through its port
//! `vethwe-bridge`).

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_DECAP_L3_IPV4,
        BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_INGRESS,
    },
    helpers::{bpf_ktime_get_coarse_ns, bpf_redirect, bpf_redirect_peer, bpf_skb_vlan_push},
    macros::classifier,
    programs::TcContext,
};
use weave_ebpf_common::{
    admission::{self, Admission},
    counters::Reason,
    handover::{HANDOVER_DESTINATION_TPID, HANDOVER_ORIGIN_TPID},
    headers::{
        is_group_mac, ETH_HLEN, ETH_P_ARP, ETH_P_IP, IPPROTO_UDP, IPV4_FRAGMENT_MASK, IPV4_HLEN,
        OUTER_HLEN, UDP_HLEN, VXLAN_HLEN,
    },
    headers::{source_port_from_hash, write_outer_headers, OuterHeaders},
    heartbeat::{
        echo_action, is_heartbeat, read_heartbeat_payload, record_probe, write_echo_payload,
        EchoAction, HEARTBEAT_FLAGS_OFFSET, HEARTBEAT_PAYLOAD_LEN,
    },
    maps::{DatapathConfig, Ipv4Key, MacKey, PeerEntry, RemoteMac},
    vni, VXLAN_PORT,
};

use crate::{
    encap::{forwarded_ipv4, next_hop, send_to_next_hop},
    frame::{
        ipv4_at, mac_at, ARP_REQUEST_FIXED, MIN_VXLAN_FRAME, OFF_INNER, OFF_IP, OFF_UDP, OFF_VXLAN,
        TC_OK, TC_SHOT,
    },
    isolation::{is_service, may_deliver},
    maps::{
        broadcast_tree, config, count, count_peer, Learned, PeerMaps, ENDPOINTS, LEARNED,
        LEARNED_SLOTS, NEIGHBOURS, PEERS, PEER_COUNTERS, REMOTE_MACS,
    },
    tree::{seen_before, send_copies},
};

const DECAP_FLAGS: u64 = BPF_F_ADJ_ROOM_FIXED_GSO as u64 | BPF_F_ADJ_ROOM_DECAP_L3_IPV4 as u64;

#[classifier]
pub fn rx_from_underlay(ctx: TcContext) -> i32 {
    try_rx_from_underlay(&ctx).unwrap_or(TC_OK)
}

fn try_rx_from_underlay(ctx: &TcContext) -> Result<i32, ()> {
    let Some(cfg) = config() else {
        return Ok(TC_OK);
    };
    let len = ctx.len();
    let eth: [u8; ETH_HLEN] = ctx.load(0).map_err(|_| ())?;
    if u16::from_be_bytes([eth[12], eth[13]]) != ETH_P_IP {
        return Ok(TC_OK);
    }
    let ip: [u8; IPV4_HLEN] = ctx.load(OFF_IP).map_err(|_| ())?;
    if ip[9] != IPPROTO_UDP || ip[0] >> 4 != 4 {
        return Ok(TC_OK);
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if ihl < IPV4_HLEN {
        return Ok(TC_OK);
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x1fff != 0 {
        // A later fragment: no UDP header to look at; without its first fragment the
        // kernel cannot reassemble it.
        return Ok(TC_OK);
    }
    let udp: [u8; UDP_HLEN] = match ctx.load(ETH_HLEN + ihl) {
        Ok(u) => u,
        Err(_) => return Ok(TC_OK),
    };
    if u16::from_be_bytes([udp[2], udp[3]]) != VXLAN_PORT {
        return Ok(TC_OK);
    }
    // VXLAN from here on: whatever is not admitted is dropped.
    if ihl != IPV4_HLEN || frag & IPV4_FRAGMENT_MASK != 0 || (len as usize) < MIN_VXLAN_FRAME {
        count(Reason::RxDropMalformed, len);
        return Ok(TC_SHOT);
    }
    let Ok(tail) = ctx.load::<[u8; VXLAN_HLEN + ETH_HLEN]>(OFF_VXLAN) else {
        count(Reason::RxDropMalformed, len);
        return Ok(TC_SHOT);
    };
    let mut vx = [0u8; VXLAN_HLEN];
    vx.copy_from_slice(&tail[..VXLAN_HLEN]);
    let src = match admission::admit(cfg.own_short_id, ipv4_at(&ip, 12), &vx, &PeerMaps) {
        Admission::Admit { src } => src,
        Admission::Relay { dst } => return Ok(relay(ctx, &cfg, &ip, dst, len)),
        Admission::ToSleeve { src, dst } => return Ok(to_sleeve(ctx, &cfg, &tail, src, dst, len)),
        Admission::Drop(why) => {
            let src_ip = ipv4_at(&ip, 12);
            aya_log_ebpf::warn!(
                ctx,
                "rx: refused VXLAN from {:i} (vni {:x}): counter {}",
                u32::from_be_bytes(src_ip),
                u32::from_be_bytes([0, vx[4], vx[5], vx[6]]),
                why.rx_reason() as u32
            );
            return Ok(drop_rx(why.rx_reason(), len));
        }
    };
    count_peer(src, false, len);
    if let Some(verdict) = take_heartbeat(ctx, &cfg, &ip, &tail, src, len) {
        return Ok(verdict);
    }

    let mut inner_eth = [0u8; ETH_HLEN];
    inner_eth.copy_from_slice(&tail[VXLAN_HLEN..]);
    let inner_dst = mac_at(&inner_eth, 0);
    let inner_src = mac_at(&inner_eth, 6);
    let inner_proto = u16::from_be_bytes([inner_eth[12], inner_eth[13]]);
    // A peer speaks for its own containers only: a frame "from" one of ours is a lie (or a
    // MAC clash), and learning it would send our frames for that container to the peer.
    // SAFETY: only whether the key exists is used.
    if unsafe { ENDPOINTS.get(MacKey::new(inner_src)) }.is_some() {
        return Ok(drop_rx(Reason::RxDropLocalMac, len));
    }
    // The inner IPv4 source, read once for learning and for the receiver's subnet check.
    let inner_ipv4_src = if inner_proto == ETH_P_IP {
        ctx.load::<[u8; 4]>(OFF_INNER + ETH_HLEN + 12).ok()
    } else {
        None
    };
    let group = is_group_mac(&inner_dst);
    if group && seen_before(src, &vx) {
        return Ok(drop_rx(Reason::RxDropDuplicateBroadcast, len));
    }
    learn(ctx, src, inner_src, inner_proto, inner_ipv4_src);
    if group {
        relay_broadcast(ctx, &cfg, &eth, &ip, src, len);
    }

    if inner_proto == ETH_P_IP && !group {
        if let Some(ifindex) =
            // SAFETY: the value is copied out at once.
            unsafe { ENDPOINTS.get(MacKey::new(inner_dst)) }.map(|e| e.host_ifindex)
        {
            if !inner_ipv4_src.is_some_and(|src| may_deliver(ifindex, src)) {
                return Ok(drop_rx(Reason::RxDropIsolated, len));
            }
            if ctx
                .adjust_room(-(OUTER_HLEN as i32), BPF_ADJ_ROOM_MAC, DECAP_FLAGS)
                .is_err()
            {
                return Ok(drop_rx(Reason::RxDecapFailed, len));
            }
            // The first 14 bytes left are the outer Ethernet header: put the inner one there.
            if ctx.store(0, &inner_eth, 0).is_err() {
                return Ok(drop_rx(Reason::RxDecapFailed, len));
            }
            count(Reason::RxDelivered, len);
            // SAFETY: a helper call with plain integer arguments.
            return Ok(unsafe { bpf_redirect_peer(ifindex, 0) } as i32);
        }
    }

    // Everything else (broadcast, multicast, non-IPv4, unknown destination) goes to the
    // bridge, decapsulated, through its port towards the peers: the bridge floods or
    // forwards it (to containers through their egress check, to the host, to the sleeve).
    if ctx
        .adjust_room(-(OUTER_HLEN as i32), BPF_ADJ_ROOM_MAC, DECAP_FLAGS)
        .is_err()
        || ctx.store(0, &inner_eth, 0).is_err()
    {
        return Ok(drop_rx(Reason::RxDecapFailed, len));
    }
    count(Reason::RxToBridge, len);
    // SAFETY: a helper call with plain integer arguments; the kernel re-reads the Ethernet
    // header when the frame enters the port.
    Ok(unsafe { bpf_redirect(cfg.bridge_port_ifindex, BPF_F_INGRESS as u64) } as i32)
}

/// A fast-path heartbeat or probe (`weave_ebpf_common::heartbeat`), given the outer IPv4
/// header, the VXLAN header and inner Ethernet header of an admitted frame from `src`:
/// counted for the peer (a probe's round and outer length, an echo of ours as an echo),
/// then dropped, or, for a plain heartbeat asking for it, answered with an echo. `None`
/// for any other frame.
#[inline(always)]
fn take_heartbeat(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    ip: &[u8; IPV4_HLEN],
    tail: &[u8; VXLAN_HLEN + ETH_HLEN],
    src: u16,
    len: u32,
) -> Option<i32> {
    let mut inner_eth = [0u8; ETH_HLEN];
    inner_eth.copy_from_slice(&tail[VXLAN_HLEN..]);
    if !is_heartbeat(&inner_eth) {
        return None;
    }
    count(Reason::RxHeartbeat, len);
    // A heartbeat of an older build has no payload (counted all the same) or no flags.
    let payload = ctx
        .load::<[u8; HEARTBEAT_PAYLOAD_LEN]>(OFF_INNER + ETH_HLEN)
        .ok();
    let round = payload.map_or(0, |p| read_heartbeat_payload(&p).1);
    let flags = ctx
        .load::<[u8; 2]>(OFF_INNER + HEARTBEAT_FLAGS_OFFSET)
        .ok()
        .map(|f| f[0]);
    // An echo goes to the peer's own address, and only for a heartbeat from there.
    let peer = PEERS.get(src as u32).copied();
    let direct = peer.is_some_and(|p| {
        p.next_hop == src && p.underlay_ipv4 == ipv4_at(ip, 12) && p.underlay_mac != [0; 6]
    });
    let action = payload.map_or(EchoAction::None, |p| {
        echo_action(&p, flags, cfg.own_short_id, direct)
    });
    if let Some(c) = PEER_COUNTERS.get_ptr_mut(src as u32) {
        // SAFETY: as in `count`: a per-CPU slot of a preallocated array.
        unsafe {
            if action == EchoAction::Echoed {
                (*c).rx_heartbeat_echoes += 1;
            } else {
                (*c).rx_heartbeats += 1;
            }
            if round != 0 {
                record_probe(
                    &mut (*c).probe_round,
                    &mut (*c).probe_len,
                    round,
                    len - ETH_HLEN as u32,
                );
            }
        }
    }
    match (action, peer) {
        (EchoAction::Answer, Some(peer)) => Some(echo(ctx, cfg, &peer, src, len)),
        _ => Some(TC_SHOT),
    }
}

/// Turns a heartbeat from direct peer `src` round into its echo, in place and of the same
/// length: outer headers from us to the peer (its next-hop MAC, as its heartbeats from us
/// are addressed), the payload naming it and flagged an echo; out of the underlay.
#[inline(always)]
fn echo(ctx: &TcContext, cfg: &DatapathConfig, peer: &PeerEntry, src: u16, len: u32) -> i32 {
    let mut outer = [0u8; OUTER_HLEN];
    write_outer_headers(
        &mut outer,
        &OuterHeaders {
            src_ipv4: cfg.underlay_ipv4,
            dst_ipv4: peer.underlay_ipv4,
            src_port: source_port_from_hash(src as u32),
            vni: vni::pack(cfg.own_short_id, src),
            inner_len: (len as usize).saturating_sub(OUTER_HLEN) as u16,
        },
    );
    outer[0..6].copy_from_slice(&peer.underlay_mac);
    outer[6..12].copy_from_slice(&cfg.underlay_mac);
    if ctx.store(0, &outer, 0).is_err()
        || ctx
            .store(OFF_INNER + ETH_HLEN, &write_echo_payload(src), 0)
            .is_err()
    {
        return TC_SHOT;
    }
    count(Reason::RxHeartbeatEchoed, len);
    // SAFETY: a helper call with plain integer arguments: out of the underlay it came in by.
    unsafe { bpf_redirect(cfg.underlay_ifindex, 0) as i32 }
}

/// Passes a frame for another peer on towards it: new outer addresses, one hop less,
/// out of the underlay again.
#[inline(always)]
fn relay(ctx: &TcContext, cfg: &DatapathConfig, ip: &[u8; IPV4_HLEN], dst: u16, len: u32) -> i32 {
    let Some(hop) = next_hop(dst) else {
        aya_log_ebpf::warn!(ctx, "rx: no route to peer {:x}, relay dropped", dst);
        return drop_rx(Reason::RxDropNotForUs, len);
    };
    if ip[8] <= 1 {
        aya_log_ebpf::warn!(ctx, "rx: TTL ran out relaying to peer {:x} (a loop?)", dst);
        return drop_rx(Reason::RxDropTtlExpired, len);
    }
    let hdr = forwarded_ipv4(ip, cfg.underlay_ipv4, hop.ipv4);
    if ctx.store(OFF_IP, &hdr, 0).is_err() || ctx.store(OFF_UDP + 6, &[0u8; 2], 0).is_err() {
        return drop_rx(Reason::RxDecapFailed, len);
    }
    count(Reason::RxRelayed, len);
    count_peer(dst, true, len);
    send_to_next_hop(ctx, cfg, &hop)
}

/// Hands a frame from `src` for `dst`, a peer the sleeve carries, to the sleeve:
/// decapsulated, tagged with both short IDs (`weave_ebpf_common::handover`), out of the
/// sleeve's TAP.
#[inline(always)]
fn to_sleeve(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    tail: &[u8; VXLAN_HLEN + ETH_HLEN],
    src: u16,
    dst: u16,
    len: u32,
) -> i32 {
    if cfg.sleeve_port_ifindex == 0 {
        return drop_rx(Reason::RxDropNotForUs, len);
    }
    let mut inner_eth = [0u8; ETH_HLEN];
    inner_eth.copy_from_slice(&tail[VXLAN_HLEN..]);
    if ctx
        .adjust_room(-(OUTER_HLEN as i32), BPF_ADJ_ROOM_MAC, DECAP_FLAGS)
        .is_err()
        || ctx.store(0, &inner_eth, 0).is_err()
    {
        return drop_rx(Reason::RxDecapFailed, len);
    }
    // Pushed with the kernel's VLAN helper, so that the skb's headers stay consistent (a
    // GSO frame may be segmented on its way out of the TAP): the destination's tag first,
    // which the second push moves into the frame; the origin's stays in the skb's metadata
    // until the TAP writes it in front of the other.
    // SAFETY: helper calls on the skb the program was given, with plain integer arguments.
    let tagged = unsafe {
        bpf_skb_vlan_push(ctx.skb.skb, HANDOVER_DESTINATION_TPID.to_be(), dst) == 0
            && bpf_skb_vlan_push(ctx.skb.skb, HANDOVER_ORIGIN_TPID.to_be(), src) == 0
    };
    if !tagged {
        return drop_rx(Reason::RxDecapFailed, len);
    }
    count(Reason::RxToSleeve, len);
    // SAFETY: a helper call with plain integer arguments: out of the TAP, to its reader.
    unsafe { bpf_redirect(cfg.sleeve_port_ifindex, 0) as i32 }
}

/// Sends a copy of a broadcast from `src` to each of our children in `src`'s broadcast
/// tree, then puts the outer headers back for local delivery.
#[inline(always)]
fn relay_broadcast(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    eth: &[u8; ETH_HLEN],
    ip: &[u8; IPV4_HLEN],
    src: u16,
    len: u32,
) {
    let Some(tree) = broadcast_tree(src) else {
        return;
    };
    if tree.count == 0 || ip[8] <= 1 {
        return;
    }
    // The outer header every copy shares (from us, one hop less), addressed per child.
    let mut hdr = [0u8; ETH_HLEN + IPV4_HLEN];
    hdr[6..12].copy_from_slice(&cfg.underlay_mac);
    hdr[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    hdr[ETH_HLEN..].copy_from_slice(&forwarded_ipv4(ip, cfg.underlay_ipv4, [0; 4]));
    if ctx.store(OFF_UDP + 6, &[0u8; 2], 0).is_err() {
        return;
    }
    let previous_hop = ipv4_at(ip, 12);
    let copies = send_copies(
        ctx,
        cfg,
        tree,
        src,
        &hdr,
        previous_hop,
        Reason::RxRelayed,
        len,
    );
    if copies.addressed {
        let mut orig = [0u8; ETH_HLEN + IPV4_HLEN];
        orig[..ETH_HLEN].copy_from_slice(eth);
        orig[ETH_HLEN..].copy_from_slice(ip);
        let _ = ctx.store(0, &orig, 0);
    }
}

#[inline(always)]
fn drop_rx(reason: Reason, len: u32) -> i32 {
    count(reason, len);
    TC_SHOT
}

/// How long a [`LEARNED`] record spares the lookups: the maps' entries can be removed
/// meanwhile (the controller forgets what was learned behind a lost peer), and a source is
/// learned again within this time.
const LEARNED_FOR_NS: u64 = 1_000_000_000;

/// Learns the inner source MAC → source peer and the inner source IPv4 (`inner_ipv4_src`,
/// or an ARP frame's sender) → MAC, writing only entries that differ. An IPv4 frame whose
/// source, peer and address this CPU learned less than [`LEARNED_FOR_NS`] ago is not looked
/// up again: a flow is learned once, not per packet.
#[inline(always)]
fn learn(
    ctx: &TcContext,
    src_peer: u16,
    src_mac: [u8; 6],
    proto: u16,
    inner_ipv4_src: Option<[u8; 4]>,
) {
    if is_group_mac(&src_mac) {
        return;
    }
    let recent = if proto == ETH_P_IP {
        LEARNED.get_ptr_mut(src_mac[5] as u32 & (LEARNED_SLOTS - 1))
    } else {
        None
    };
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let (Some(slot), Some(addr)) = (recent, inner_ipv4_src) {
        // SAFETY: a per-CPU slot of a preallocated array, as in `count`.
        let r = unsafe { *slot };
        if r.mac == src_mac
            && r.peer == src_peer
            && r.addr == addr
            && now.wrapping_sub(r.at_ns) < LEARNED_FOR_NS
        {
            return;
        }
    }
    let key = MacKey::new(src_mac);
    // SAFETY: the value is copied out at once.
    let known = unsafe { REMOTE_MACS.get(key) }.map(|r| r.peer_short_id);
    if known != Some(src_peer) {
        let _ = REMOTE_MACS.insert(
            key,
            RemoteMac {
                peer_short_id: src_peer,
                _pad: [0; 6],
            },
            0,
        );
    }
    let addr = if proto == ETH_P_IP {
        match inner_ipv4_src {
            Some(a) => a,
            None => return,
        }
    } else if proto == ETH_P_ARP {
        // Sender hardware and protocol addresses of an Ethernet/IPv4 ARP packet.
        let Ok(arp) = ctx.load::<[u8; 18]>(OFF_INNER + ETH_HLEN) else {
            return;
        };
        if arp[0..6] != ARP_REQUEST_FIXED[0..6] || mac_at(&arp, 8) != src_mac {
            return;
        }
        ipv4_at(&arp, 14)
    } else {
        return;
    };
    // The service address is every host's own (its DNS server on its bridge): another
    // host's bridge MAC for it must not take the place of ours.
    if addr != [0; 4] && !is_service(addr) {
        let ip_key = Ipv4Key { addr };
        // SAFETY: the value is copied out at once.
        let known = unsafe { NEIGHBOURS.get(ip_key) }.map(|m| m.addr);
        if known != Some(src_mac) {
            let _ = NEIGHBOURS.insert(ip_key, key, 0);
        }
    }
    if let Some(slot) = recent {
        // SAFETY: a per-CPU slot of a preallocated array, as in `count`.
        unsafe {
            *slot = Learned {
                mac: src_mac,
                peer: src_peer,
                addr,
                _pad: [0; 4],
                at_ns: now,
            };
        }
    }
}
