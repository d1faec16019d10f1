//! The weave-router kernel programs.
//!
//! - `tx_from_container` (tcx ingress of each container veth's host end): answers ARP from
//!   `NEIGHBOURS`, hands frames for local containers straight to them, encapsulates IPv4
//!   frames for MACs learned behind a peer, leaves the rest to the bridge.
//! - `rx_from_underlay` (tcx ingress of the underlay): admits VXLAN only from known peers,
//!   learns, decapsulates IPv4 for local containers straight into them, passes broadcasts on
//!   along the source's tree, decapsulates the rest into the bridge (through its port
//!   `vethwe-bridge`).
//! - `from_bridge` (tcx ingress of `vethwe-datapath`, the far end of the bridge's port
//!   towards the peers): what the bridge floods or forwards towards the peers (broadcasts,
//!   frames for unknown destinations, the host's own frames) is encapsulated, to the peer
//!   that has the destination MAC or as one copy per peer of this router's own tree.
//! - `to_container` (tcx egress of each container veth's host end): frames the bridge
//!   hands to a container (floods, the kernel VXLAN slow path, answered ARP) pass only
//!   when their source lies in one of the container's subnets.
//! - `xdp_admit` (XDP on the underlay): the same admission check before any skb exists.
//!
//! Subnet isolation (`ENDPOINT_ADDRESSES`, by the host veth's ifindex): a container may
//! send only IPv4 and ARP, only from its own addresses, and unicast only to addresses in
//! its own subnets; every path that hands a frame to a container (local redirect, decap
//! and redirect, bridge egress) checks that the source lies in one of its subnets. Other
//! protocols (IPv6 included) are dropped both ways: they would bypass the subnet rules.
//!
//! Every type crossing to userspace comes from `weave-ebpf-common`, and so does the
//! admission decision (`weave_ebpf_common::admission`), a pure function tested on the host.
//!
//! Layout: one module per hook (`tx`, `rx`, `from_bridge`, `to_container`, `xdp`), each a
//! thin entry point over a `try_*` body, and the pieces they share: `maps` (every map,
//! declared once, and the counters), `frame` (offsets and address parsing), `isolation`
//! (subnet rules), `encap` (next hop, outer headers, redirect) and `tree` (broadcast-tree
//! copies).
#![no_std]
#![no_main]

<<<<<<< HEAD
mod encap;
mod frame;
mod from_bridge;
mod isolation;
mod maps;
mod rx;
mod to_container;
mod tree;
mod tx;
mod xdp;
=======
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        xdp_action::{XDP_DROP, XDP_PASS},
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_INGRESS, BPF_F_NO_PREALLOC,
    },
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    helpers::{
        bpf_get_hash_recalc, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer,
        bpf_skb_change_head,
    },
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use weave_ebpf_common::{
    counters::Reason,
    headers::{
        ipv4_checksum, ipv4_checksum_with_dst, is_group_mac, read_vxlan_vni, source_port_from_hash, write_outer_headers,
        OuterHeaders,
        ARP_OP_REPLY, ARP_OP_REQUEST, ETH_HLEN, ETH_P_ARP, ETH_P_IP, IPPROTO_UDP,
        IPV4_FRAGMENT_MASK, IPV4_HLEN, OUTER_HLEN, UDP_HLEN, VXLAN_HLEN,
    },
    heartbeat::{is_heartbeat, read_heartbeat_payload, record_probe, HEARTBEAT_PAYLOAD_LEN},
    maps::{
        is_group_ipv4, BroadcastTree, Counter, BROADCAST_TREES_MAX_ENTRIES, DatapathConfig, EndpointAddresses, IfindexKey,
        Ipv4Key, LocalEndpoint, MacKey, NeighbourPeer, PeerCounter, PeerEntry, RemoteMac,
        CONFIG_READY, ENDPOINTS_MAX_ENTRIES,
        MAX_BROADCAST_CHILDREN, NEIGHBOURS_MAX_ENTRIES, NEIGHBOUR_PEERS_MAX_ENTRIES,
        PEERS_MAX_ENTRIES, PEER_ADMIT, PEER_REACHABLE, REMOTE_MACS_MAX_ENTRIES,
    },
    vni, VXLAN_PORT,
};

#[btf_map]
static CONFIG: Array<DatapathConfig, 1> = Array::new();
#[btf_map]
static PEERS: Array<PeerEntry, { PEERS_MAX_ENTRIES as usize }> = Array::new();
#[btf_map]
static ENDPOINTS: HashMap<MacKey, LocalEndpoint, { ENDPOINTS_MAX_ENTRIES as usize }> =
    HashMap::new();
#[btf_map]
static ENDPOINT_ADDRESSES: HashMap<
    IfindexKey,
    EndpointAddresses,
    { ENDPOINTS_MAX_ENTRIES as usize },
> = HashMap::new();
#[btf_map]
static REMOTE_MACS: LruHashMap<MacKey, RemoteMac, { REMOTE_MACS_MAX_ENTRIES as usize }> =
    LruHashMap::new();
#[btf_map]
static NEIGHBOURS: LruHashMap<Ipv4Key, MacKey, { NEIGHBOURS_MAX_ENTRIES as usize }> =
    LruHashMap::new();
#[btf_map]
static NEIGHBOUR_PEERS: HashMap<Ipv4Key, NeighbourPeer, { NEIGHBOUR_PEERS_MAX_ENTRIES as usize }> =
    HashMap::new();
/// By source short ID. Not preallocated: a tree is large and most short IDs have none.
#[btf_map]
static BROADCAST_TREES: HashMap<
    u32,
    BroadcastTree,
    { BROADCAST_TREES_MAX_ENTRIES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();
#[btf_map]
static COUNTERS: PerCpuArray<Counter, { Reason::COUNT as usize }> = PerCpuArray::new();
#[btf_map]
static PEER_COUNTERS: PerCpuArray<PeerCounter, { PEERS_MAX_ENTRIES as usize }> = PerCpuArray::new();

/// tc verdicts (`TC_ACT_OK`, `TC_ACT_SHOT`) as the classifier returns them.
const TC_OK: i32 = 0;
const TC_SHOT: i32 = 2;

/// `ENCAP_L2(len)` of `bpf_skb_adjust_room`: the length of the inner L2 header.
const fn adj_room_encap_l2(len: u64) -> u64 {
    (len & 0xff) << 56
}

const ENCAP_FLAGS: u64 = BPF_F_ADJ_ROOM_FIXED_GSO as u64
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
    | adj_room_encap_l2(ETH_HLEN as u64);
const DECAP_FLAGS: u64 = BPF_F_ADJ_ROOM_FIXED_GSO as u64 | BPF_F_ADJ_ROOM_DECAP_L3_IPV4 as u64;

/// Offsets in an encapsulated frame.
const OFF_IP: usize = ETH_HLEN;
const OFF_UDP: usize = ETH_HLEN + IPV4_HLEN;
const OFF_VXLAN: usize = OFF_UDP + UDP_HLEN;
const OFF_INNER: usize = OUTER_HLEN;
/// Shortest frame that carries a whole inner Ethernet header.
const MIN_VXLAN_FRAME: usize = OUTER_HLEN + ETH_HLEN;
/// Length of an Ethernet + IPv4 ARP frame.
const ARP_FRAME_LEN: usize = ETH_HLEN + 28;
/// Fixed part of an Ethernet/IPv4 ARP request: htype 1, ptype 0x0800, hlen 6, plen 4, op 1.
const ARP_REQUEST_FIXED: [u8; 8] = [0, 1, 0x08, 0x00, 6, 4, 0, ARP_OP_REQUEST as u8];

#[inline(always)]
fn count(reason: Reason, bytes: u32) {
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
fn count_peer(short_id: u16, tx: bool, bytes: u32) {
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
fn config() -> Option<DatapathConfig> {
    let c = CONFIG.get(0)?;
    if c.flags & CONFIG_READY == 0 {
        return None;
    }
    Some(*c)
}

#[inline(always)]
fn mac_at(b: &[u8], off: usize) -> [u8; 6] {
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
fn ipv4_at(b: &[u8], off: usize) -> [u8; 4] {
    [b[off], b[off + 1], b[off + 2], b[off + 3]]
}

// ---------------------------------------------------------------------------------------
// Admission (shared by the TC and XDP receive programs)
// ---------------------------------------------------------------------------------------

enum Admission {
    /// For us, from the origin with this short ID (sent by it or relayed by a neighbour).
    Admit { src: u16 },
    /// From an admitted neighbour, for another peer: to be passed on.
    Relay { dst: u16 },
    UnknownPeer,
    SpoofedSource,
    NotForUs,
    Malformed,
}

/// Checks a VXLAN header against `PEERS`: the source short ID must be a known peer, the
/// outer source must be that peer's address or the address of a directly connected peer
/// (one that relays), and the destination must be us or a peer we route to.
#[inline(always)]
fn admit(cfg: &DatapathConfig, outer_src: [u8; 4], vxlan: &[u8; VXLAN_HLEN]) -> Admission {
    let Some(id) = read_vxlan_vni(vxlan) else {
        return Admission::Malformed;
    };
    let (src, dst) = vni::unpack(id);
    let Some(peer) = PEERS.get(src as u32) else {
        return Admission::UnknownPeer;
    };
    if peer.flags & PEER_ADMIT == 0 || src == cfg.own_short_id {
        return Admission::UnknownPeer;
    }
    // Sent by the origin itself, or relayed by a directly connected peer.
    if peer.underlay_ipv4 != outer_src
        // SAFETY: the value is only tested for presence.
        && unsafe { NEIGHBOUR_PEERS.get(&Ipv4Key { addr: outer_src }) }.is_none()
    {
        return Admission::SpoofedSource;
    }
    if dst != cfg.own_short_id {
        return match PEERS.get(dst as u32) {
            Some(p) if p.flags & PEER_REACHABLE != 0 => Admission::Relay { dst },
            _ => Admission::NotForUs,
        };
    }
    Admission::Admit { src }
}

/// The outer IPv4 header of a frame this router passes on: from us to `to`, one hop less.
#[inline(always)]
fn forwarded_ipv4(ip: &[u8; IPV4_HLEN], from: [u8; 4], to: [u8; 4]) -> [u8; IPV4_HLEN] {
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

// ---------------------------------------------------------------------------------------
// TX: tcx ingress of a container veth's host end
// ---------------------------------------------------------------------------------------

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

    let src_ip = match check_sender(ctx, proto) {
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
    let Some(remote) = next_hop_address(peer_id) else {
        count(Reason::TxToBridge, len);
        return Ok(TC_OK);
    };
    Ok(encapsulate(ctx, &cfg, &eth, peer_id, remote, len))
}

/// ifindex of the interface the program runs on (the container veth's host end).
#[inline(always)]
fn own_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the context the kernel passed in.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The addresses on record for the container behind host veth `ifindex`.
#[inline(always)]
fn endpoint_addresses(ifindex: u32) -> Option<&'static EndpointAddresses> {
    // SAFETY: a map value stays valid while the program runs (RCU). The controller writes a
    // record only while its interface is being attached, restored or detached, so a frame
    // racing with that write may see a mix of old and new addresses of that one interface;
    // the fields are plain integers, any value is sound.
    unsafe { ENDPOINT_ADDRESSES.get(IfindexKey { ifindex }) }
}

/// Whether a frame from `src` may be handed to the container behind host veth `ifindex`:
/// the source must lie in one of its subnets. No record, no delivery.
#[inline(always)]
fn may_deliver(ifindex: u32, src: [u8; 4]) -> bool {
    if is_service(src) {
        return true;
    }
    match endpoint_addresses(ifindex) {
        Some(to) => to.in_subnets(src),
        None => false,
    }
}

/// Whether `addr` is the local service address (the DNS server on the bridge), which every
/// container reaches whatever its subnets.
#[inline(always)]
fn is_service(addr: [u8; 4]) -> bool {
    addr != [0; 4] && config().is_some_and(|c| c.service_ipv4 == addr)
}

/// Source and destination of an IPv4 frame (IPv4 source and destination) or of an
/// Ethernet/IPv4 ARP frame (sender and target protocol addresses); `None` for other
/// protocols and for frames too short to carry them.
#[inline(always)]
fn ipv4_addresses(ctx: &TcContext, proto: u16) -> Option<([u8; 4], [u8; 4])> {
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

/// The sending container's isolation rules: only IPv4 and ARP; the IPv4 source or ARP
/// sender must be one of its own addresses; a unicast IPv4 destination or an ARP target
/// must lie in one of its subnets (broadcast and multicast go out: receivers check the
/// source). Returns the source address.
#[inline(always)]
fn check_sender(ctx: &TcContext, proto: u16) -> Result<[u8; 4], Reason> {
    let Some((src, dst)) = ipv4_addresses(ctx, proto) else {
        return Err(Reason::TxDropProtocol);
    };
    let Some(me) = endpoint_addresses(own_ifindex(ctx)) else {
        return Err(Reason::TxDropSpoofedSource);
    };
    if !me.owns(src) {
        return Err(Reason::TxDropSpoofedSource);
    }
    if proto == ETH_P_IP && is_group_ipv4(dst) {
        return Ok(src);
    }
    if !me.in_subnets(dst) && !is_service(dst) {
        return Err(Reason::TxDropOutsideSubnet);
    }
    Ok(src)
}

/// The underlay address to send frames for `peer_id` to, if it is reachable.
#[inline(always)]
fn next_hop_address(peer_id: u16) -> Option<[u8; 4]> {
    let peer = PEERS.get(peer_id as u32)?;
    if peer.flags & PEER_REACHABLE == 0 {
        return None;
    }
    if peer.next_hop == peer_id {
        return Some(peer.underlay_ipv4);
    }
    let hop = PEERS.get(peer.next_hop as u32)?;
    if hop.flags & PEER_REACHABLE == 0 {
        return None;
    }
    Some(hop.underlay_ipv4)
}

#[inline(always)]
fn encapsulate(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    eth: &[u8; ETH_HLEN],
    peer_id: u16,
    remote: [u8; 4],
    len: u32,
) -> i32 {
    // SAFETY: the helper only reads the skb the program was given.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
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
            dst_ipv4: remote,
            src_port: source_port_from_hash(hash),
            vni: vni::pack(cfg.own_short_id, peer_id),
            inner_len,
        },
    );
    inner.copy_from_slice(eth);
    if ctx.store(0, &hdr, 0).is_err() {
        count(Reason::TxEncapFailed, len);
        return TC_SHOT;
    }
    count(Reason::TxEncapsulated, len);
    count_peer(peer_id, true, len);
    // SAFETY: a helper call; no neighbour parameters are passed (null, 0), so the kernel
    // looks the next hop up in its FIB.
    unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// Encapsulates a small non-IPv4 frame (an ARP reply, say) for a MAC learned behind a
/// peer. `bpf_skb_adjust_room` refuses non-IP frames, so room is made in front of the frame
/// (`bpf_skb_change_head`) and the outer Ethernet addresses are written here, from the
/// next hop's underlay MAC. `None` leaves the frame to the bridge (unknown MAC, next hop's
/// MAC not known, GSO frame).
#[inline(always)]
fn encapsulate_non_ipv4(ctx: &TcContext, cfg: &DatapathConfig, key: &MacKey, len: u32) -> Option<i32> {
    // SAFETY: the value is copied out at once.
    let peer_id = unsafe { REMOTE_MACS.get(key) }?.peer_short_id;
    let peer = PEERS.get(peer_id as u32)?;
    if peer.flags & PEER_REACHABLE == 0 {
        return None;
    }
    let hop = if peer.next_hop == peer_id { *peer } else { *PEERS.get(peer.next_hop as u32)? };
    if hop.flags & PEER_REACHABLE == 0 || hop.underlay_mac == [0; 6] || len > 0xffff - OUTER_HLEN as u32 {
        return None;
    }
    // SAFETY: reading a field of the context the kernel passed in.
    if unsafe { (*ctx.skb.skb).gso_segs } > 1 {
        return None;
    }
    // SAFETY: the helper only reads the skb the program was given.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let sent = push_outer_headers(ctx, cfg, &hop, vni::pack(cfg.own_short_id, peer_id), source_port_from_hash(hash), len);
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
fn push_outer_headers(ctx: &TcContext, cfg: &DatapathConfig, hop: &PeerEntry, vni: u32, src_port: u16, len: u32) -> i32 {
    // SAFETY: a helper call on the program's own skb; it reallocates the head if needed.
    if unsafe { bpf_skb_change_head(ctx.skb.skb, OUTER_HLEN as u32, 0) } != 0 {
        return TC_SHOT;
    }
    let mut outer = [0u8; OUTER_HLEN];
    write_outer_headers(
        &mut outer,
        &OuterHeaders {
            src_ipv4: cfg.underlay_ipv4,
            dst_ipv4: hop.underlay_ipv4,
            src_port,
            vni,
            inner_len: len as u16,
        },
    );
    outer[0..6].copy_from_slice(&hop.underlay_mac);
    outer[6..12].copy_from_slice(&cfg.underlay_mac);
    if ctx.store(0, &outer, 0).is_err() {
        return TC_SHOT;
    }
    // SAFETY: a helper call with plain integer arguments.
    unsafe { bpf_redirect(cfg.underlay_ifindex, 0) as i32 }
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

// ---------------------------------------------------------------------------------------
// RX: tcx ingress of the underlay
// ---------------------------------------------------------------------------------------

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
    let src = match admit(&cfg, ipv4_at(&ip, 12), &vx) {
        Admission::Admit { src } => src,
        Admission::Relay { dst } => return Ok(relay(ctx, &cfg, &ip, dst, len)),
        Admission::UnknownPeer => return Ok(drop_rx(Reason::RxDropUnknownPeer, len)),
        Admission::SpoofedSource => return Ok(drop_rx(Reason::RxDropSpoofedSource, len)),
        Admission::NotForUs => return Ok(drop_rx(Reason::RxDropNotForUs, len)),
        Admission::Malformed => return Ok(drop_rx(Reason::RxDropMalformed, len)),
    };
    count_peer(src, false, len);
    if let Some(verdict) = take_heartbeat(ctx, &tail, src, len) {
        return Ok(verdict);
    }

    let mut inner_eth = [0u8; ETH_HLEN];
    inner_eth.copy_from_slice(&tail[VXLAN_HLEN..]);
    let inner_dst = mac_at(&inner_eth, 0);
    let inner_src = mac_at(&inner_eth, 6);
    let inner_proto = u16::from_be_bytes([inner_eth[12], inner_eth[13]]);
    learn(ctx, src, inner_src, inner_proto);
    if is_group_mac(&inner_dst) {
        relay_broadcast(ctx, &cfg, &eth, &ip, src, len);
    }

    if inner_proto == ETH_P_IP && !is_group_mac(&inner_dst) {
        if let Some(ifindex) =
            // SAFETY: the value is copied out at once.
            unsafe { ENDPOINTS.get(MacKey::new(inner_dst)) }.map(|e| e.host_ifindex)
        {
            let src = ctx.load::<[u8; 4]>(OFF_INNER + ETH_HLEN + 12);
            if !src.is_ok_and(|src| may_deliver(ifindex, src)) {
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

/// A fast-path heartbeat or probe (`weave_ebpf_common::heartbeat`), given the VXLAN header
/// and inner Ethernet header of an admitted frame from `src`: counted for the peer (a
/// probe's round and outer length too), then dropped. `None` for any other frame.
#[inline(always)]
fn take_heartbeat(ctx: &TcContext, tail: &[u8; VXLAN_HLEN + ETH_HLEN], src: u16, len: u32) -> Option<i32> {
    let mut inner_eth = [0u8; ETH_HLEN];
    inner_eth.copy_from_slice(&tail[VXLAN_HLEN..]);
    if !is_heartbeat(&inner_eth) {
        return None;
    }
    count(Reason::RxHeartbeat, len);
    // A heartbeat of an older build has no payload: counted all the same.
    let round = ctx
        .load::<[u8; HEARTBEAT_PAYLOAD_LEN]>(OFF_INNER + ETH_HLEN)
        .map_or(0, |p| read_heartbeat_payload(&p).1);
    if let Some(c) = PEER_COUNTERS.get_ptr_mut(src as u32) {
        // SAFETY: as in `count`: a per-CPU slot of a preallocated array.
        unsafe {
            (*c).rx_heartbeats += 1;
            if round != 0 {
                record_probe(&mut (*c).probe_round, &mut (*c).probe_len, round, len - ETH_HLEN as u32);
            }
        }
    }
    Some(TC_SHOT)
}

/// Passes a frame for another peer on towards it: new outer addresses, one hop less,
/// out of the underlay again.
#[inline(always)]
fn relay(ctx: &TcContext, cfg: &DatapathConfig, ip: &[u8; IPV4_HLEN], dst: u16, len: u32) -> i32 {
    let Some(next) = next_hop_address(dst) else {
        return drop_rx(Reason::RxDropNotForUs, len);
    };
    if ip[8] <= 1 {
        return drop_rx(Reason::RxDropTtlExpired, len);
    }
    let hdr = forwarded_ipv4(ip, cfg.underlay_ipv4, next);
    if ctx.store(OFF_IP, &hdr, 0).is_err() || ctx.store(OFF_UDP + 6, &[0u8; 2], 0).is_err() {
        return drop_rx(Reason::RxDecapFailed, len);
    }
    count(Reason::RxRelayed, len);
    count_peer(dst, true, len);
    // SAFETY: a helper call; no neighbour parameters, the kernel looks the next hop up.
    unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) as i32 }
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
    // SAFETY: a map value stays valid while the program runs (RCU); the controller replaces
    // a tree with one update, and a frame racing with it sees either children list or a
    // mix of both (plain integers): at worst one copy too many or too few.
    let Some(tree) = (unsafe { BROADCAST_TREES.get(&(src as u32)) }) else {
        return;
    };
    if tree.count == 0 || ip[8] <= 1 {
        return;
    }
    let count_children = tree.count as usize;
    // The outer header every copy shares (from us, one hop less), addressed per child below.
    let mut hdr = [0u8; ETH_HLEN + IPV4_HLEN];
    hdr[6..12].copy_from_slice(&cfg.underlay_mac);
    hdr[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    hdr[ETH_HLEN..].copy_from_slice(&forwarded_ipv4(ip, cfg.underlay_ipv4, [0; 4]));
    let checksum_zero_dst = u16::from_be_bytes([hdr[ETH_HLEN + 10], hdr[ETH_HLEN + 11]]);
    if ctx.store(OFF_UDP + 6, &[0u8; 2], 0).is_err() {
        return;
    }
    let mut touched = false;
    for i in 0..MAX_BROADCAST_CHILDREN {
        if i >= count_children {
            break;
        }
        let child = tree.children[i];
        let Some(peer) = direct_peer(child) else {
            continue;
        };
        address_copy(&mut hdr, peer, checksum_zero_dst);
        let id = vni::pack(src, child);
        let vni_bytes: [u8; 3] = [(id >> 16) as u8, (id >> 8) as u8, id as u8];
        touched = true;
        if ctx.store(0, &hdr, 0).is_err() || ctx.store(OFF_VXLAN + 4, &vni_bytes, 0).is_err() {
            break;
        }
        if ctx.clone_redirect(cfg.underlay_ifindex, 0).is_ok() {
            count(Reason::RxRelayed, len);
            count_peer(child, true, len);
        }
    }
    if touched {
        let mut orig = [0u8; ETH_HLEN + IPV4_HLEN];
        orig[..ETH_HLEN].copy_from_slice(eth);
        orig[ETH_HLEN..].copy_from_slice(ip);
        let _ = ctx.store(0, &orig, 0);
    }
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

#[inline(always)]
fn drop_rx(reason: Reason, len: u32) -> i32 {
    count(reason, len);
    TC_SHOT
}

/// Learns the inner source MAC → source peer and the inner source IPv4 → MAC, writing
/// only entries that differ.
#[inline(always)]
fn learn(ctx: &TcContext, src_peer: u16, src_mac: [u8; 6], proto: u16) {
    if is_group_mac(&src_mac) {
        return;
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
        match ctx.load::<[u8; 4]>(OFF_INNER + ETH_HLEN + 12) {
            Ok(a) => a,
            Err(_) => return,
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
    if addr == [0; 4] || is_service(addr) {
        return;
    }
    let ip_key = Ipv4Key { addr };
    // SAFETY: the value is copied out at once.
    let known = unsafe { NEIGHBOURS.get(ip_key) }.map(|m| m.addr);
    if known != Some(src_mac) {
        let _ = NEIGHBOURS.insert(ip_key, key, 0);
    }
}

// ---------------------------------------------------------------------------------------
// From the bridge towards the peers: tcx ingress of `vethwe-datapath`
// ---------------------------------------------------------------------------------------

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
            if let Some((peer_id, remote)) =
                peer.and_then(|p| next_hop_address(p).map(|remote| (p, remote)))
            {
                return Ok(encapsulate(ctx, &cfg, &eth, peer_id, remote, len));
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
    let hop = *peer;
    let sent = push_outer_headers(ctx, cfg, &hop, vni::pack(cfg.own_short_id, peer_id), source_port_from_hash(peer_id as u32), len);
    if sent == TC_SHOT {
        return drop_from_bridge(len);
    }
    count(Reason::TxHeartbeat, len);
    sent
}

/// Sends a copy of a frame from the bridge to each reachable direct peer among the
/// children of our own broadcast tree, then drops the original.
#[inline(always)]
fn flood_to_peers(ctx: &TcContext, cfg: &DatapathConfig, len: u32) -> i32 {
    let own = cfg.own_short_id as u32;
    // SAFETY: as in `relay_broadcast`: a map value read in place, plain integers.
    let Some(tree) = (unsafe { BROADCAST_TREES.get(&own) }) else {
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
    // Outer headers built once with a zero destination; each copy gets its peer's MAC,
    // address, checksum and VNI.
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
    let (mut hdr, mut udp_vxlan) = ([0u8; ETH_HLEN + IPV4_HLEN], [0u8; UDP_HLEN + VXLAN_HLEN]);
    hdr.copy_from_slice(&outer[..OFF_UDP]);
    udp_vxlan.copy_from_slice(&outer[OFF_UDP..]);
    let checksum_zero_dst = u16::from_be_bytes([hdr[ETH_HLEN + 10], hdr[ETH_HLEN + 11]]);
    let count_children = tree.count as usize;
    let mut sent = false;
    for i in 0..MAX_BROADCAST_CHILDREN {
        if i >= count_children {
            break;
        }
        let child = tree.children[i];
        let Some(peer) = direct_peer(child) else {
            continue;
        };
        address_copy(&mut hdr, peer, checksum_zero_dst);
        let id = vni::pack(cfg.own_short_id, child);
        udp_vxlan[UDP_HLEN + 4..UDP_HLEN + 7].copy_from_slice(&[(id >> 16) as u8, (id >> 8) as u8, id as u8]);
        if ctx.store(0, &hdr, 0).is_err() || ctx.store(OFF_UDP, &udp_vxlan, 0).is_err() {
            break;
        }
        if ctx.clone_redirect(cfg.underlay_ifindex, 0).is_ok() {
            sent = true;
            count(Reason::TxEncapsulated, len);
            count_peer(child, true, len);
        }
    }
    if !sent {
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

// ---------------------------------------------------------------------------------------
// Delivery through the bridge: tcx egress of a container veth's host end
// ---------------------------------------------------------------------------------------

#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    if config().is_none() {
        return TC_OK;
    }
    let len = ctx.len();
    let allowed = ctx
        .load::<[u8; ETH_HLEN]>(0)
        .ok()
        .and_then(|eth| ipv4_addresses(&ctx, u16::from_be_bytes([eth[12], eth[13]])))
        .is_some_and(|(src, _)| may_deliver(own_ifindex(&ctx), src));
    if allowed {
        TC_OK
    } else {
        count(Reason::EgressDropIsolated, len);
        TC_SHOT
    }
}

// ---------------------------------------------------------------------------------------
// XDP: admission on the underlay before any skb exists
// ---------------------------------------------------------------------------------------

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
    let reason = match admit(&cfg, ipv4_at(&ip, 12), &vx) {
        Admission::Admit { .. } | Admission::Relay { .. } => return Some(XDP_PASS),
        Admission::UnknownPeer => Reason::XdpDropUnknownPeer,
        Admission::SpoofedSource => Reason::XdpDropSpoofedSource,
        Admission::NotForUs => Reason::XdpDropNotForUs,
        Admission::Malformed => Reason::XdpDropMalformed,
    };
    count(reason, len);
    Some(XDP_DROP)
}
>>>>>>> wt-tests

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
