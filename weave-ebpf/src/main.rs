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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
