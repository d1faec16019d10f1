//! The router's side of gossip channels (IPAM, DNS): carries their broadcasts along
//! broadcast trees, their unicasts along routes, and their whole state to new neighbours.

use std::sync::Arc;

use super::gossip::{encode_message, send_frame_to};
use super::{Inner, Router};
use crate::datapath::Datapath;
use crate::mesh::connection::ConnId;
use crate::mesh::gossip_channel::{
    ChannelId, ChannelMessage, Delivery, GossipChannel, GossipSink, Gossiper, UnicastStep,
    UNICAST_HOP_LIMIT,
};
use crate::mesh::peer_name::PeerName;
use crate::mesh::protocol::{Message, CHANNEL_HOPS_VERSION};
use crate::mesh::gossip_refusal::{Refusal, REFUSED};

impl<D: Datapath> Inner<D> {
    fn channel(&self, id: ChannelId) -> Option<Arc<dyn GossipChannel>> {
        self.channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Sends `message` to our children in its origin's broadcast tree, but not back on `except`.
    fn broadcast_channel(&self, message: &ChannelMessage, except: Option<ConnId>) {
        let children = self.tree_children(message.origin);
        if let Some(frame) = encode_message(&Message::Channel(message.clone())) {
            send_frame_to(&self.mesh(), &frame, Some(&children), except);
        }
    }

    /// Hands `message` to the next hop towards `to`, with `hops_left` (on a connection
    /// that speaks protocol version 6; an older peer gets it without the count).
    fn forward_unicast(&self, mut message: ChannelMessage, to: PeerName, hops_left: u8) {
        let route = self.view().routes.unicast.get(&to).copied();
        // A neighbour whose topology record has not arrived yet has no route, but its
        // connection reaches it (an IPAM reply to a peer that just joined).
        let direct = route.is_none() && self.mesh().core.is_direct(&to);
        let Some(hop) = route.or(direct.then_some(to)) else {
            tracing::debug!("{:?} message for {to} dropped: no route", message.channel);
            return;
        };
        let conn = self
            .mesh()
            .core
            .connections()
            .find(|(_, c)| c.hello.name == hop)
            .map(|(id, c)| (*id, c.version));
        let Some((id, version)) = conn else {
            return;
        };
        message.delivery = if version >= CHANNEL_HOPS_VERSION {
            Delivery::Routed { to, hops_left }
        } else {
            Delivery::Unicast(to)
        };
        self.send_to(id, &Message::Channel(message));
    }

    /// Refuses a channel unicast from connection `id`: one log line, counted, dropped.
    fn refuse_unicast(&self, id: ConnId, message: &ChannelMessage, reason: Refusal) {
        REFUSED.count(reason);
        let sender = self
            .mesh()
            .core
            .connection(id)
            .map_or_else(|| "a closed connection".to_string(), |c| c.describe());
        let to = message
            .delivery
            .destination()
            .map_or_else(String::new, |to| format!(" for {to}"));
        tracing::warn!(
            "{:?} unicast from {}{to} {sender} dropped: {}",
            message.channel,
            message.origin,
            reason.describe()
        );
    }

    /// The whole state of every channel, to one neighbour.
    pub(super) fn sync_channels(&self, id: ConnId) {
        let me = self.hello().name;
        let channels: Vec<(ChannelId, Arc<dyn GossipChannel>)> = self
            .channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (channel, handler) in channels {
            let Some(payload) = handler.full_state() else {
                continue;
            };
            let message = ChannelMessage {
                channel,
                origin: me,
                delivery: Delivery::Sync,
                payload,
            };
            self.send_to(id, &Message::Channel(message));
        }
    }

    /// The whole state of every channel, to every neighbour.
    fn sync_channels_everywhere(&self) {
        let ids: Vec<ConnId> = self.mesh().core.connections().map(|(id, _)| *id).collect();
        for id in ids {
            self.sync_channels(id);
        }
    }

    /// A channel message from connection `id`. Malformed data closes that connection and
    /// changes nothing else.
    pub(super) fn on_channel(&self, id: ConnId, message: ChannelMessage) {
        let me = self.hello().name;
        if let Some(step) = message.delivery.unicast_step(me) {
            // A unicast comes along a route from its origin, within its hops.
            let Some(from) = self.mesh().core.connection(id).map(|c| c.hello.name) else {
                return;
            };
            let along = self
                .view()
                .topology
                .arrives_along_route(message.origin, from);
            if !along {
                return self.refuse_unicast(id, &message, Refusal::NotAlongRoute);
            }
            match step {
                UnicastStep::Deliver => {}
                UnicastStep::Forward { to, hops_left } => {
                    return self.forward_unicast(message, to, hops_left)
                }
                UnicastStep::OutOfHops { .. } => {
                    return self.refuse_unicast(id, &message, Refusal::HopLimit)
                }
            }
        }
        let Some(handler) = self.channel(message.channel) else {
            tracing::debug!("{:?} gossip ignored: no such channel here", message.channel);
            return;
        };
        let result = match message.delivery {
            Delivery::Unicast(_) | Delivery::Routed { .. } => handler
                .on_unicast(message.origin, &message.payload)
                .map(|()| None),
            Delivery::Broadcast | Delivery::Sync => {
                handler.on_gossip(message.origin, &message.payload)
            }
        };
        match result {
            Err(e) => self.refuse_gossip(id, &e.to_string()),
            Ok(Some(news)) => {
                // News of a sync start a new broadcast from us; a broadcast goes on along its tree.
                let origin = if message.delivery == Delivery::Sync {
                    me
                } else {
                    message.origin
                };
                let onward = ChannelMessage {
                    channel: message.channel,
                    origin,
                    delivery: Delivery::Broadcast,
                    payload: news,
                };
                self.broadcast_channel(&onward, Some(id));
            }
            Ok(None) => {}
        }
    }
}

impl<D: Datapath> GossipSink for Inner<D> {
    fn send_channel(&self, channel: ChannelId, delivery: Delivery, payload: Vec<u8>) {
        let message = ChannelMessage {
            channel,
            origin: self.hello().name,
            delivery,
            payload,
        };
        match delivery {
            Delivery::Broadcast => self.broadcast_channel(&message, None),
            Delivery::Unicast(to) | Delivery::Routed { to, .. } => {
                self.forward_unicast(message, to, UNICAST_HOP_LIMIT)
            }
            Delivery::Sync => self.sync_channels_everywhere(),
        }
    }
}

impl<D: Datapath> Router<D> {
    /// Registers a subsystem's gossip channel and returns its sending end. Its whole state
    /// goes to every neighbour at once, and to every new neighbour from then on.
    pub fn register_channel(&self, id: ChannelId, channel: Arc<dyn GossipChannel>) -> Gossiper {
        self.inner
            .channels
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, channel);
        self.inner.sync_channels_everywhere();
        let sink: Arc<dyn GossipSink> = self.inner.clone();
        Gossiper::new(id, Arc::downgrade(&sink))
    }
}
