//! Listening to the host's neighbour table and routes (route netlink notifications), so
//! that the next hop towards each direct peer is kept current by what the kernel announces
//! rather than by asking it about every peer every second.
//!
//! The kernel says when a neighbour's link-layer address changes (a gateway replaced, a
//! failover address moved to another box) and when a route or rule changes. What it said
//! since the last look is gathered in [`NextHopNews`]; the data path's refresh reads it once
//! a second ([`NextHopWatch::take`]) and asks about single peers only when routes changed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use netlink_sys::AsyncSocket;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::MulticastGroup;

use super::netlink::on_own_thread;
use super::DatapathError;

/// The socket's receive buffer: a burst of neighbour changes (hundreds of peers on one
/// host's subnet) fits; when it does not, the kernel drops notifications and says so
/// ([`NextHopNews::note_overrun`]).
const RECEIVE_BUFFER: usize = 1 << 20;

/// What the kernel announced since the last look.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NextHopNews {
    /// Link-layer addresses the neighbour table took, by link and IPv4 address: the latest
    /// of each.
    pub neighbours: BTreeMap<(u32, Ipv4Addr), [u8; 6]>,
    /// A route or rule changed, or notifications were lost: every next hop may be another
    /// now, and each is to be looked up again.
    pub routes_changed: bool,
    /// The watch ended: nothing more will be heard, so next hops are to be looked up as
    /// if nothing were watched.
    pub deaf: bool,
}

impl NextHopNews {
    /// Takes one notification in.
    pub fn note(&mut self, message: &RouteNetlinkMessage) {
        match message {
            RouteNetlinkMessage::NewNeighbour(n) => {
                if let Some((key, mac)) = neighbour_address(n) {
                    self.neighbours.insert(key, mac);
                }
            }
            // An entry that goes leaves the next hop as it was: the programs keep sending
            // to the last address known, as they would before the entry resolves again.
            RouteNetlinkMessage::DelNeighbour(_) => {}
            RouteNetlinkMessage::NewRoute(_)
            | RouteNetlinkMessage::DelRoute(_)
            | RouteNetlinkMessage::NewRule(_)
            | RouteNetlinkMessage::DelRule(_) => self.routes_changed = true,
            _ => {}
        }
    }

    /// The kernel dropped notifications (the socket's buffer was full): what they said is
    /// not known, so everything is looked up again.
    pub fn note_overrun(&mut self) {
        self.routes_changed = true;
    }

    /// The MAC the neighbour table took for `addr` on link `index`, if it said so.
    pub fn neighbour(&self, index: u32, addr: Ipv4Addr) -> Option<[u8; 6]> {
        self.neighbours.get(&(index, addr)).copied()
    }
}

/// The link and IPv4 address of a neighbour entry with a link-layer address, and that
/// address. Entries without one (still resolving, failed) say nothing of the next hop.
fn neighbour_address(n: &NeighbourMessage) -> Option<((u32, Ipv4Addr), [u8; 6])> {
    if n.header.family != AddressFamily::Inet {
        return None;
    }
    let mut addr = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => addr = Some(*ip),
            NeighbourAttribute::LinkLayerAddress(l) => {
                mac = <[u8; 6]>::try_from(l.as_slice()).ok();
            }
            _ => {}
        }
    }
    let mac = mac.filter(|m| *m != [0; 6])?;
    Some(((n.header.ifindex, addr?), mac))
}

/// Route netlink notifications of neighbour, IPv4 route and IPv4 rule changes in the
/// network namespace the watch was started in, gathered until taken.
#[derive(Clone, Debug)]
pub struct NextHopWatch {
    news: Arc<Mutex<NextHopNews>>,
}

impl NextHopWatch {
    /// Starts listening in the calling thread's network namespace, on a thread of its own
    /// (the kernel queues notifications for the socket; the thread only reads them).
    pub fn start() -> Result<Self, DatapathError> {
        let news = Arc::new(Mutex::new(NextHopNews::default()));
        let gathered = news.clone();
        on_own_thread("next-hop-watch", |started| async move {
            let groups = [
                MulticastGroup::Neigh,
                MulticastGroup::Ipv4Route,
                MulticastGroup::Ipv4Rule,
            ];
            let (mut conn, handle, mut messages) =
                match rtnetlink::new_multicast_connection(&groups) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = started.send(Err(DatapathError::system(
                            "cannot listen to neighbour and route changes",
                            e,
                        )));
                        return;
                    }
                };
            if let Err(e) = conn.socket_mut().socket_mut().set_rx_buf_sz(RECEIVE_BUFFER) {
                tracing::debug!("receive buffer of the next-hop listener: {e}");
            }
            tokio::spawn(conn);
            let _ = started.send(Ok(()));
            // The handle keeps the connection open while we listen.
            let _handle = handle;
            while let Some((message, _)) = messages.next().await {
                let mut news = lock(&gathered);
                match message.payload {
                    NetlinkPayload::InnerMessage(m) => news.note(&m),
                    NetlinkPayload::Overrun(_) => news.note_overrun(),
                    _ => {}
                }
            }
            tracing::warn!(
                "neighbour and route changes no longer heard: next hops are looked up in turn"
            );
            lock(&gathered).deaf = true;
        })?;
        Ok(Self { news })
    }

    /// A watch that hears nothing and says so: next hops are looked up as if none ran.
    pub fn deaf() -> Self {
        Self {
            news: Arc::new(Mutex::new(NextHopNews {
                deaf: true,
                ..NextHopNews::default()
            })),
        }
    }

    /// What was heard since the last call; whether the watch still hears stays.
    pub fn take(&self) -> NextHopNews {
        let mut news = lock(&self.news);
        let deaf = news.deaf;
        let taken = std::mem::take(&mut *news);
        news.deaf = deaf;
        taken
    }
}

fn lock(news: &Mutex<NextHopNews>) -> std::sync::MutexGuard<'_, NextHopNews> {
    news.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteMessage;
    use rtnetlink::packet_route::rule::RuleMessage;

    fn neighbour(index: u32, addr: Option<Ipv4Addr>, mac: Option<[u8; 6]>) -> NeighbourMessage {
        let mut n = NeighbourMessage::default();
        n.header.family = AddressFamily::Inet;
        n.header.ifindex = index;
        if let Some(a) = addr {
            n.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(a)));
        }
        if let Some(m) = mac {
            n.attributes
                .push(NeighbourAttribute::LinkLayerAddress(m.to_vec()));
        }
        n
    }

    const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);

    #[test]
    fn a_neighbour_that_takes_an_address_is_heard_the_latest_kept() {
        let mut news = NextHopNews::default();
        news.note(&RouteNetlinkMessage::NewNeighbour(neighbour(
            2,
            Some(GW),
            Some([2, 0, 0, 0, 0, 1]),
        )));
        news.note(&RouteNetlinkMessage::NewNeighbour(neighbour(
            2,
            Some(GW),
            Some([2, 0, 0, 0, 0, 2]),
        )));
        assert_eq!(news.neighbour(2, GW), Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(news.neighbour(3, GW), None, "another link");
        assert!(!news.routes_changed);
    }

    #[test]
    fn neighbours_without_an_address_or_of_another_family_say_nothing() {
        let mut news = NextHopNews::default();
        // Still resolving (no link-layer address), all zeros, and gone.
        news.note(&RouteNetlinkMessage::NewNeighbour(neighbour(
            2,
            Some(GW),
            None,
        )));
        news.note(&RouteNetlinkMessage::NewNeighbour(neighbour(
            2,
            Some(GW),
            Some([0; 6]),
        )));
        news.note(&RouteNetlinkMessage::DelNeighbour(neighbour(
            2,
            Some(GW),
            Some([2, 0, 0, 0, 0, 1]),
        )));
        // A bridge's forwarding entry (a MAC, no IPv4 address).
        let mut fdb = neighbour(2, None, Some([2, 0, 0, 0, 0, 1]));
        fdb.header.family = AddressFamily::Bridge;
        news.note(&RouteNetlinkMessage::NewNeighbour(fdb));
        assert_eq!(news, NextHopNews::default());
    }

    #[test]
    fn route_and_rule_changes_and_lost_notifications_ask_for_every_next_hop() {
        for message in [
            RouteNetlinkMessage::NewRoute(RouteMessage::default()),
            RouteNetlinkMessage::DelRoute(RouteMessage::default()),
            RouteNetlinkMessage::NewRule(RuleMessage::default()),
            RouteNetlinkMessage::DelRule(RuleMessage::default()),
        ] {
            let mut news = NextHopNews::default();
            news.note(&message);
            assert!(news.routes_changed, "{message:?}");
        }
        let mut news = NextHopNews::default();
        news.note_overrun();
        assert!(news.routes_changed);
    }

    #[test]
    fn taking_the_news_empties_it_but_a_deaf_watch_stays_deaf() {
        let watch = NextHopWatch::deaf();
        lock(&watch.news).routes_changed = true;
        let first = watch.take();
        assert!(first.deaf && first.routes_changed);
        let second = watch.take();
        assert!(second.deaf && !second.routes_changed);
    }
}
