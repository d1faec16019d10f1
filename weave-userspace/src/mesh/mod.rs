//! The mesh of routers: peer identity, control connections and their protocol.
pub mod connection;
pub mod connection_maker;
pub mod gossip_channel;
pub mod peer_name;
pub mod protocol;
pub mod routes;
pub mod topology;

/// The highest version (of a topology record, a DNS entry) or Paxos round accepted from a
/// peer. Counters start at 1 and go up by one per change, so no honest peer comes near it;
/// a record bumped past a forged one still has 2^62 changes of room before its counter
/// would wrap.
pub const VERSION_LIMIT: u64 = 1 << 62;

/// The highest version of a record naming this router that it raises its own version past
/// (a record of an earlier run); a higher one is refused. Raising ours past anything up to
/// [`VERSION_LIMIT`] could take it beyond what peers accept, and they would refuse every
/// record of ours from then on; half the limit leaves 2^61 changes of room.
pub const OWN_VERSION_LIMIT: u64 = VERSION_LIMIT / 2;
