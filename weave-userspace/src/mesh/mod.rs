//! The mesh of routers: peer identity, control connections and their protocol.
pub mod peer_name;
