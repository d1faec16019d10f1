//! weave-router: a Weave Net compatible overlay router with an eBPF data path.
pub mod datapath;
pub mod mesh;
