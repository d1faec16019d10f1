//! Gossip channels: other subsystems (IPAM, DNS) share state over the control connections.
//!
//! Modelled on weaveworks/mesh's `Gossiper`: a subsystem implements [`GossipChannel`] (merge
//! what arrives, say what was news, hand out its whole state) and sends through a
//! [`Gossiper`]. The router carries three kinds of [`ChannelMessage`]:
//! - a *broadcast* travels along its origin's broadcast tree; each router merges it and
//!   passes on only the news;
//! - a *sync* (the whole state, to a new neighbour and periodically to a few) is merged by
//!   its receiver, which broadcasts the news from itself;
//! - a *unicast* goes hop by hop along the unicast routes to one router.

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
    /// To one router, along unicast routes.
    Unicast(PeerName),
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
