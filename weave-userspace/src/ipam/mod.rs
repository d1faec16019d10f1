//! IP address management: the pure core (no I/O).
//!
//! - [`cidr`]: IPv4 networks and address ranges.
//! - [`ring`]: who owns which part of the allocation range; a CRDT gossiped between peers.
//! - [`allocator`]: one peer's allocations inside the space it owns; donation of space.
//! - [`consensus`]: agreeing on the peers that split the range first; `--ipalloc-init` modes
//!   and the status line.
//! - [`identity`]: what two peers compare before they connect (range and seeds).
//! - [`node`]: one peer's IPAM as a state machine (requests and messages in, effects out):
//!   what the router wires to gossip, the attach path and persistence.
pub mod allocator;
pub mod consensus;
pub mod identity;
pub mod node;
pub mod ring;
pub mod service;
pub mod spec;

/// The allocation range when none is given.
pub const DEFAULT_RANGE: &str = "10.32.0.0/12";
