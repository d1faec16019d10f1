//! Encapsulation: the next hop towards a peer, outer headers pushed in front of a frame
//! and the frame sent out of the underlay, and the outer IPv4 header of a frame passed on.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L2_ETH,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    helpers::{bpf_get_hash_recalc, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_head},
    programs::TcContext,
};
use weave_ebpf_common::{
    counters::Reason,
    headers::{
        ipv4_checksum, ipv4_flow_hash, source_port_from_hash, write_outer_headers, OuterHeaders,
        ETH_HLEN, FLOW_BYTES, IPV4_HLEN, OUTER_HLEN,
    },
    maps::{DatapathConfig, MacKey, PeerEntry, PEER_REACHABLE},
    vni,
};

use crate::{
    frame::TC_SHOT,
    maps::{count, count_peer, PEERS, REMOTE_MACS},
};

/// `ENCAP_L2(len)` of `bpf_skb_adjust_room`: the length of the inner L2 header.
const fn adj_room_encap_l2(len: u64) -> u64 {
    (len & 0xff) << 56
}

pub(crate) const ENCAP_FLAGS: u64 = BPF_F_ADJ_ROOM_FIXED_GSO as u64
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
    | adj_room_encap_l2(ETH_HLEN as u64);

/// The outer IPv4 header of a frame this router passes on: from us to `to`, one hop less.
#[inline(always)]
pub(crate) fn forwarded_ipv4(ip: &[u8; IPV4_HLEN], from: [u8; 4], to: [u8; 4]) -> [u8; IPV4_HLEN] {
    let mut hdr = *ip;
    hdr[8] = ip[8].saturating_sub(1);
    hdr[10] = 0;
    hdr[11] = 0;
    hdr[12..16].copy_from_slice(&from);
    hdr[16..20].copy_from_slice(&to);
    let csum = ipv4_checksum(&hdr);
    hdr[10..12].copy_from_slice(&csum.to_be_bytes());
    hdr
}

/// Where frames for a peer go on the underlay: the address of the peer or of the neighbour
/// that relays to it, and the MAC address of the next hop towards that address (the
/// address's own, or a gateway's), zero when the controller has not learned it.
#[derive(Clone, Copy)]
pub(crate) struct NextHop {
    pub ipv4: [u8; 4],
    pub mac: [u8; 6],
}

impl NextHop {
    /// The underlay address and next-hop MAC of a peer's own entry.
    #[inline(always)]
    pub(crate) fn of(peer: &PeerEntry) -> Self {
        Self {
            ipv4: peer.underlay_ipv4,
            mac: peer.underlay_mac,
        }
    }
}

/// Where to send frames for `peer_id`, if it is reachable.
#[inline(always)]
pub(crate) fn next_hop(peer_id: u16) -> Option<NextHop> {
    let peer = PEERS.get(peer_id as u32)?;
    if peer.flags & PEER_REACHABLE == 0 {
        return None;
    }
    let hop = if peer.next_hop == peer_id {
        peer
    } else {
        PEERS.get(peer.next_hop as u32)?
    };
    if hop.flags & PEER_REACHABLE == 0 {
        return None;
    }
    Some(NextHop::of(hop))
}

/// Sends an encapsulated frame whose outer Ethernet header is at offset 0 out of the
/// underlay towards `hop`, addressing it first when the next hop's MAC is known
/// ([`send_addressed`]). `TC_SHOT` when the addresses cannot be written.
#[inline(always)]
pub(crate) fn send_to_next_hop(ctx: &TcContext, cfg: &DatapathConfig, hop: &NextHop) -> i32 {
    if hop.mac != [0; 6] {
        let mut macs = [0u8; 12];
        macs[0..6].copy_from_slice(&hop.mac);
        macs[6..12].copy_from_slice(&cfg.underlay_mac);
        if ctx.store(0, &macs, 0).is_err() {
            return TC_SHOT;
        }
    }
    send_addressed(cfg, hop)
}

/// Sends an encapsulated frame out of the underlay towards `hop`. With the next hop's MAC
/// known (and written as the outer destination), the frame goes to the underlay device as
/// it is: no route or neighbour lookup per packet. The controller follows the kernel's
/// neighbour table and routes for that MAC, and the fast path's heartbeats, addressed the
/// same way, show that it still reaches the peer. Otherwise the kernel looks the next hop
/// up (`bpf_redirect_neigh`) and writes the addresses.
#[inline(always)]
fn send_addressed(cfg: &DatapathConfig, hop: &NextHop) -> i32 {
    if hop.mac == [0; 6] {
        // SAFETY: a helper call; no neighbour parameters are passed (null, 0), so the
        // kernel looks the next hop up in its FIB.
        return unsafe {
            bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) as i32
        };
    }
    // SAFETY: a helper call with plain integer arguments.
    unsafe { bpf_redirect(cfg.underlay_ifindex, 0) as i32 }
}

/// The flow hash of an IPv4 frame, for its outer source port: the one its socket gave it,
/// else [`ipv4_flow_hash`] of its header. The kernel's own (`bpf_get_hash_recalc`) runs
/// the flow dissector for a frame without one (a ping, say): a quarter of the TX program's
/// time.
#[inline(always)]
fn ipv4_flow_hash_of(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the context the kernel passed in.
    let given = unsafe { (*ctx.skb.skb).hash };
    if given != 0 {
        return given;
    }
    match ctx.load::<[u8; FLOW_BYTES]>(ETH_HLEN) {
        Ok(packet) => ipv4_flow_hash(&packet),
        // Too short for the ports: the kernel's, from what there is.
        // SAFETY: the helper only reads the skb the program was given.
        Err(_) => unsafe { bpf_get_hash_recalc(ctx.skb.skb) },
    }
}

#[inline(always)]
pub(crate) fn encapsulate(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    eth: &[u8; ETH_HLEN],
    peer_id: u16,
    hop: &NextHop,
    len: u32,
) -> i32 {
    let hash = ipv4_flow_hash_of(ctx);
    if ctx
        .adjust_room(OUTER_HLEN as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
        .is_err()
    {
        count(Reason::TxEncapFailed, len);
        return TC_SHOT;
    }
    // adjust_room inserted the room after the first 14 bytes: write the outer headers and
    // the original Ethernet header behind them in one go.
    let mut hdr = [0u8; OUTER_HLEN + ETH_HLEN];
    let inner_len = if len > 0xffff - (OUTER_HLEN - ETH_HLEN) as u32 {
        // A GSO skb: the kernel rewrites the lengths of every segment.
        (0xffff - (OUTER_HLEN - ETH_HLEN)) as u16
    } else {
        len as u16
    };
    let (outer, inner) = hdr.split_at_mut(OUTER_HLEN);
    let Ok(outer) = <&mut [u8; OUTER_HLEN]>::try_from(outer) else {
        return TC_SHOT;
    };
    write_outer_headers(
        outer,
        &OuterHeaders {
            src_ipv4: cfg.underlay_ipv4,
            dst_ipv4: hop.ipv4,
            src_port: source_port_from_hash(hash),
            vni: vni::pack(cfg.own_short_id, peer_id),
            inner_len,
        },
    );
    outer[0..6].copy_from_slice(&hop.mac);
    outer[6..12].copy_from_slice(&cfg.underlay_mac);
    inner.copy_from_slice(eth);
    if ctx.store(0, &hdr, 0).is_err() {
        count(Reason::TxEncapFailed, len);
        return TC_SHOT;
    }
    count(Reason::TxEncapsulated, len);
    count_peer(peer_id, true, len);
    send_addressed(cfg, hop)
}

/// Encapsulates a small non-IPv4 frame (an ARP reply, say) for a MAC learned behind a
/// peer. `bpf_skb_adjust_room` refuses non-IP frames, so room is made in front of the frame
/// (`bpf_skb_change_head`) and the outer Ethernet addresses are written here, from the
/// next hop's underlay MAC. `None` leaves the frame to the bridge (unknown MAC, next hop's
/// MAC not known, GSO frame).
#[inline(always)]
pub(crate) fn encapsulate_non_ipv4(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    key: &MacKey,
    len: u32,
) -> Option<i32> {
    // SAFETY: the value is copied out at once.
    let peer_id = unsafe { REMOTE_MACS.get(key) }?.peer_short_id;
    let hop = next_hop(peer_id)?;
    if hop.mac == [0; 6] || len > 0xffff - OUTER_HLEN as u32 {
        return None;
    }
    // SAFETY: reading a field of the context the kernel passed in.
    if unsafe { (*ctx.skb.skb).gso_segs } > 1 {
        return None;
    }
    // SAFETY: the helper only reads the skb the program was given.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let sent = push_outer_headers(
        ctx,
        cfg,
        &hop,
        vni::pack(cfg.own_short_id, peer_id),
        source_port_from_hash(hash),
        len,
    );
    if sent == TC_SHOT {
        count(Reason::TxEncapFailed, len);
    } else {
        count(Reason::TxEncapsulated, len);
        count_peer(peer_id, true, len);
    }
    Some(sent)
}

/// Puts outer headers for `hop` (a direct peer or the next hop towards one, whose underlay
/// MAC is known) in front of a frame of `len` bytes that is not a GSO skb, and sends it out
/// of the underlay: `TC_SHOT` when the room cannot be made. For frames
/// `bpf_skb_adjust_room` refuses (non-IPv4) and heartbeats.
#[inline(always)]
pub(crate) fn push_outer_headers(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    hop: &NextHop,
    vni: u32,
    src_port: u16,
    len: u32,
) -> i32 {
    // SAFETY: a helper call on the program's own skb; it reallocates the head if needed.
    if unsafe { bpf_skb_change_head(ctx.skb.skb, OUTER_HLEN as u32, 0) } != 0 {
        return TC_SHOT;
    }
    let mut outer = [0u8; OUTER_HLEN];
    write_outer_headers(
        &mut outer,
        &OuterHeaders {
            src_ipv4: cfg.underlay_ipv4,
            dst_ipv4: hop.ipv4,
            src_port,
            vni,
            inner_len: len as u16,
        },
    );
    outer[0..6].copy_from_slice(&hop.mac);
    outer[6..12].copy_from_slice(&cfg.underlay_mac);
    if ctx.store(0, &outer, 0).is_err() {
        return TC_SHOT;
    }
    send_addressed(cfg, hop)
}
