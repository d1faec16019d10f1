//! The mesh of routers: peer identity, control connections and their protocol.
pub mod command_queue;
pub mod connection;
pub mod connection_maker;
pub mod control_refusal;
pub mod gossip_channel;
pub mod gossip_refusal;
pub mod graph;
pub mod log_budget;
pub mod peer_name;
pub mod protocol;
pub mod routes;
pub mod topology;

/// The highest version (of a topology record, a DNS entry) or Paxos round accepted from a
/// peer. Counters start at 1 and go up by one per change, so no honest peer comes near it;
/// a record bumped past a forged one still has 2^62 changes of room before its counter
/// would wrap.
pub const VERSION_LIMIT: u64 = 1 << 62;

/// A record of this router from another run raises its own version past it (and a ring
/// token of ours is taken) only below this: no honest run counts that far, and raising ours
/// past anything up to [`VERSION_LIMIT`] could take it beyond what peers accept (they would
/// refuse every record of ours from then on); half the limit leaves 2^61 changes of room.
/// A record of ours above it is not outbid.
pub const OWN_VERSION_LIMIT: u64 = VERSION_LIMIT / 2;
