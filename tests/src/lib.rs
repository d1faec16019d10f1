//! The netns test bed shared by the end-to-end tests, `cargo xtask demo` and
//! `cargo xtask bench`.
//!
//! A *host* is a network namespace whose `eth0` sits on an underlay bridge (itself in a
//! namespace of its own); a *container* is another namespace, attached to its host by
//! `weave-router attach` or, for the baselines, by a plain veth pair. Routers and client
//! commands run with `nsenter --net=/run/netns/<host>`, so they share the machine's
//! /sys/fs/bpf. Everything a [`TestBed`] makes is removed when it is dropped. The underlay is
//! flat (one bridge) unless a bed is built by one of the shapes of [`underlay`]: routed
//! subnets, two routers, 1:1 NAT.

pub mod bed;
pub mod cmd;
pub mod docker;
pub mod error;
pub mod mesh;
pub mod netns;
pub mod partial_mesh;
pub mod podman;
pub mod probe;
pub mod restart;
pub mod router;
pub mod sandbox;
pub mod skip;
pub mod topology;
pub mod underlay;

pub use bed::{host_addr, is_root, require_root, require_tools, sweep, Container, Host, TestBed};
pub use cmd::{Background, Output};
pub use error::{Error, Result};
pub use netns as ns;
pub use netns::Netns;
pub use router::{LaunchOpts, Router};
pub use skip::skip;
pub use topology::{pair, pair_on, Mode, Pair, Underlay};
