//! Everything that crosses the kernel/user boundary of weave-router, defined once.
//!
//! `no_std`: the kernel programs (`weave-ebpf`) and the controller (`weave-userspace`)
//! both build on these definitions. Map values are `#[repr(C)]` with explicit padding
//! and no `bool`, so their layout is the same on both sides; `aya::Pod` impls are behind
//! the `user` feature.
#![no_std]

pub mod admission;
pub mod broadcast_id;
pub mod counters;
pub mod handover;
pub mod headers;
pub mod heartbeat;
pub mod maps;
pub mod vni;

/// TCP port of the control connections between routers.
pub const CONTROL_PORT: u16 = 6783;
/// UDP port of the VXLAN data path (Weave's fast datapath: control port + 1).
pub const VXLAN_PORT: u16 = 6784;
/// Bytes VXLAN adds in front of an inner Ethernet frame: outer Ethernet (14),
/// IPv4 (20), UDP (8) and VXLAN (8). Container MTU = underlay MTU − this.
pub const VXLAN_OVERHEAD: u32 = 50;
