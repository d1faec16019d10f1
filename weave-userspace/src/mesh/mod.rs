//! The mesh of routers: peer identity, control connections and their protocol.
pub mod command_queue;
pub mod connection;
pub mod connection_maker;
pub mod gossip_channel;
pub mod peer_name;
pub mod protocol;
pub mod control_refusal;
pub mod gossip_refusal;
pub mod routes;
pub mod topology;

/// The highest version (of a topology record, a DNS entry) or Paxos round accepted from a
/// peer. Counters start at 1 and go up by one per change, so no honest peer comes near it;
/// a record bumped past a forged one still has 2^62 changes of room before its counter
/// would wrap.
pub const VERSION_LIMIT: u64 = 1 << 62;
