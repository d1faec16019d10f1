//! Subnet isolation (`ENDPOINT_ADDRESSES`, by the host veth's ifindex): what a container may
//! send, and what may be handed to it.

use aya_ebpf::programs::TcContext;
use weave_ebpf_common::{
    counters::Reason,
    headers::ETH_P_IP,
    maps::{is_group_ipv4, EndpointAddresses, IfindexKey},
};

use crate::{
    frame::{ipv4_addresses, own_ifindex},
    maps::{config, ENDPOINT_ADDRESSES},
};

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
pub(crate) fn may_deliver(ifindex: u32, src: [u8; 4]) -> bool {
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
pub(crate) fn is_service(addr: [u8; 4]) -> bool {
    addr != [0; 4] && config().is_some_and(|c| c.service_ipv4 == addr)
}

/// The sending container's isolation rules: only IPv4 and ARP; the Ethernet source must
/// be its own MAC; the IPv4 source or ARP sender must be one of its own addresses; a
/// unicast IPv4 destination or an ARP target must lie in one of its subnets (broadcast and
/// multicast go out: receivers check the source). Returns the source address.
#[inline(always)]
pub(crate) fn check_sender(
    ctx: &TcContext,
    proto: u16,
    src_mac: &[u8; 6],
) -> Result<[u8; 4], Reason> {
    let Some((src, dst)) = ipv4_addresses(ctx, proto) else {
        return Err(Reason::TxDropProtocol);
    };
    let Some(me) = endpoint_addresses(own_ifindex(ctx)) else {
        return Err(Reason::TxDropSpoofedSource);
    };
    if me.mac != *src_mac {
        return Err(Reason::TxDropSpoofedMac);
    }
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
