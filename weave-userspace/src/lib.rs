//! weave-router: a Weave Net compatible overlay router with an eBPF data path.
pub mod api;
pub mod cli;
pub mod cni;
pub mod config;
pub mod crypto;
pub mod datapath;
pub mod dns;
pub mod docker;
pub mod ipam;
pub mod memory;
pub mod mesh;
pub mod net;
pub mod node;
pub mod router;
pub mod service_manager;
pub mod sleeve;
pub mod state;
