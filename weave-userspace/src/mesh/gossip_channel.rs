//! Gossip channels: other subsystems (IPAM, DNS) share state over the control connections.
//!
//! Modelled on weaveworks/mesh's `Gossiper`: a subsystem implements [`GossipChannel`] (merge
//! what arrives, say what was news, hand out its whole state) and sends through a
//! [`Gossiper`]. The router carries three kinds of [`ChannelMessage`]:
//! - a *broadcast* travels along its origin's broadcast tree; each router merges it and
//!   passes on only the news;
//! - a *sync* (the whole state, to a new neighbour and periodically to a few) is merged by
//!   its receiver, which broadcasts the news from itself;
//! - a *unicast* goes hop by hop along the unicast routes to one router, taking one of
//!   its [`UNICAST_HOP_LIMIT`] hops at each.

use std::sync::{Arc, Weak};

use serde::{Deserialize, Serialize};

use super::peer_name::PeerName;

/// Which subsystem a channel message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ChannelId {
    Ipam,
    Dns,
}

/// How a channel message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// To everyone, along the origin's broadcast tree.
    Broadcast,
    /// The whole state of the origin, to one neighbour.
    Sync,
    /// To one router, along unicast routes, without a hop count (as peers before protocol
    /// version 6 send it; taken as [`UNICAST_HOP_LIMIT`] hops left).
    Unicast(PeerName),
    /// To one router, along unicast routes, with the hops it may still take (protocol
    /// version 6 on).
    Routed { to: PeerName, hops_left: u8 },
}

/// Hops a gossip-channel unicast may take: each router it passes takes one, and one that
/// arrives with none left (routes that loop while views differ, or a forged message) is
/// dropped and counted.
pub const UNICAST_HOP_LIMIT: u8 = 64;

/// What a router does with a unicast channel message that reached it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnicastStep {
    /// It is for us.
    Deliver,
    /// It goes on to `to`'s next hop with `hops_left`.
    Forward { to: PeerName, hops_left: u8 },
    /// It is for someone else and may take no further hop: dropped.
    OutOfHops { to: PeerName },
}

impl Delivery {
    /// The router it is for, if one.
    pub fn destination(self) -> Option<PeerName> {
        match self {
            Delivery::Unicast(to) | Delivery::Routed { to, .. } => Some(to),
            Delivery::Broadcast | Delivery::Sync => None,
        }
    }

    /// What `me` does with a unicast that reached it (`None` for other deliveries).
    pub fn unicast_step(self, me: PeerName) -> Option<UnicastStep> {
        let (to, hops_left) = match self {
            Delivery::Unicast(to) => (to, UNICAST_HOP_LIMIT),
            Delivery::Routed { to, hops_left } => (to, hops_left),
            Delivery::Broadcast | Delivery::Sync => return None,
        };
        Some(if to == me {
            UnicastStep::Deliver
        } else if hops_left == 0 {
            UnicastStep::OutOfHops { to }
        } else {
            UnicastStep::Forward {
                to,
                hops_left: hops_left - 1,
            }
        })
    }
}

/// Data of one gossip channel on its way through the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelMessage {
    pub channel: ChannelId,
    /// The router that sent it first.
    pub origin: PeerName,
    pub delivery: Delivery,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GossipChannelError {
    #[error("malformed {channel:?} gossip: {reason}")]
    Malformed { channel: ChannelId, reason: String },
    #[error("{0}")]
    Refused(String),
}

/// A subsystem's side of a gossip channel. Called from the router's event loop: keep it
/// quick and never call back into the [`Gossiper`] synchronously from these methods.
pub trait GossipChannel: Send + Sync + 'static {
    /// The whole state (sent to new neighbours and periodically), `None` when empty.
    fn full_state(&self) -> Option<Vec<u8>>;
    /// Merges a broadcast or sync payload from `origin`. Returns the news to pass on,
    /// `None` when nothing was new. An error changes nothing.
    fn on_gossip(
        &self,
        origin: PeerName,
        payload: &[u8],
    ) -> Result<Option<Vec<u8>>, GossipChannelError>;
    /// A payload addressed to us.
    fn on_unicast(&self, origin: PeerName, payload: &[u8]) -> Result<(), GossipChannelError>;
}

/// What a [`Gossiper`] sends through: the router.
pub trait GossipSink: Send + Sync + 'static {
    fn send_channel(&self, channel: ChannelId, delivery: Delivery, payload: Vec<u8>);
}

/// The sending end of one channel. Sends are dropped once the router is gone.
#[derive(Clone)]
pub struct Gossiper {
    channel: ChannelId,
    sink: Weak<dyn GossipSink>,
}

impl Gossiper {
    pub fn new(channel: ChannelId, sink: Weak<dyn GossipSink>) -> Self {
        Self { channel, sink }
    }

    /// A gossiper that sends nowhere (a subsystem running without a mesh).
    pub fn detached(channel: ChannelId) -> Self {
        Self {
            channel,
            sink: Weak::<NoSink>::new(),
        }
    }

    /// Sends `payload` to every router.
    pub fn broadcast(&self, payload: Vec<u8>) {
        if let Some(sink) = self.sink.upgrade() {
            sink.send_channel(self.channel, Delivery::Broadcast, payload);
        }
    }

    /// Sends `payload` to one router.
    pub fn unicast(&self, to: PeerName, payload: Vec<u8>) {
        if let Some(sink) = self.sink.upgrade() {
            sink.send_channel(self.channel, Delivery::Unicast(to), payload);
        }
    }
}

impl std::fmt::Debug for Gossiper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gossiper({:?})", self.channel)
    }
}

struct NoSink;
impl GossipSink for NoSink {
    fn send_channel(&self, _: ChannelId, _: Delivery, _: Vec<u8>) {}
}

/// Registered channels by ID.
pub type Channels = std::collections::BTreeMap<ChannelId, Arc<dyn GossipChannel>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: u8) -> PeerName {
        PeerName::from_bytes([0, 0, 0, 0, 0, n])
    }

    #[test]
    fn a_unicast_takes_one_hop_at_each_router_and_stops_when_none_is_left() {
        let me = name(1);
        assert_eq!(
            Delivery::Routed {
                to: me,
                hops_left: 0
            }
            .unicast_step(me),
            Some(UnicastStep::Deliver)
        );
        assert_eq!(
            Delivery::Routed {
                to: name(2),
                hops_left: 3
            }
            .unicast_step(me),
            Some(UnicastStep::Forward {
                to: name(2),
                hops_left: 2
            })
        );
        assert_eq!(
            Delivery::Routed {
                to: name(2),
                hops_left: 0
            }
            .unicast_step(me),
            Some(UnicastStep::OutOfHops { to: name(2) })
        );
        // Without a count (an older peer's): the whole budget from here.
        assert_eq!(
            Delivery::Unicast(name(2)).unicast_step(me),
            Some(UnicastStep::Forward {
                to: name(2),
                hops_left: UNICAST_HOP_LIMIT - 1
            })
        );
        assert_eq!(Delivery::Broadcast.unicast_step(me), None);
        // A message passed round a loop of routers dies after the limit.
        let mut delivery = Delivery::Unicast(name(9));
        let mut hops = 0;
        while let Some(UnicastStep::Forward { to, hops_left }) = delivery.unicast_step(me) {
            delivery = Delivery::Routed { to, hops_left };
            hops += 1;
        }
        assert_eq!(hops, UNICAST_HOP_LIMIT);
    }
}
