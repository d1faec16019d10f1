//! The mesh of routers: peer identity, control connections and their protocol.
pub mod connection;
pub mod connection_maker;
pub mod gossip_channel;
pub mod peer_name;
pub mod protocol;
pub mod routes;
pub mod topology;
