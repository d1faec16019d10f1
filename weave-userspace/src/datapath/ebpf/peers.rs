//! Peers in the fast path: routed, admitted only (the sleeve carries them), cleared; the
//! next hop towards each directly connected one kept current; broadcast trees; heartbeats.
//! What is remembered between calls is a [`PeerBook`]; what goes into the maps is decided
//! by [`super::maps::peer_entries`] and written by [`super::maps::DatapathMaps`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;

use weave_ebpf_common::heartbeat::{write_heartbeat_frame, HEARTBEAT_FRAME_LEN, OUTER_IP_OVERHEAD};
use weave_ebpf_common::maps::MAX_BROADCAST_CHILDREN;

use super::maps::{is_direct, peer_entries, PeerUse};
use super::{EbpfDatapath, State};
use crate::datapath::{format_mac, DatapathError, DatapathPeer, Heartbeat};
use crate::mesh::peer_name::ShortId;

/// How many direct peers' next hops one refresh looks up while the kernel's neighbour and
/// route changes are heard ([`NextHopWatch`]): a sweep in turn, in case notifications were
/// lost without the kernel saying so. Changes heard are taken at once.
const NEXT_HOPS_SWEPT_PER_REFRESH: usize = 1;
/// How many direct peers' next hops one refresh looks up when nothing is heard of the
/// kernel's changes (the listener could not start or ended): two netlink requests each,
/// and a full mesh of hundreds of routers on one machine must not spend its CPU on them.
const NEXT_HOPS_PER_REFRESH: usize = 16;

/// A directly connected peer: its underlay address, the address on the underlay whose
/// neighbour entry gives the next hop's MAC (the peer's own on a shared subnet, else a
/// gateway's; `None` until looked up), and the MAC of the next hop towards it now in
/// `PEERS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DirectPeer {
    pub underlay: Ipv4Addr,
    pub next_hop: Option<Ipv4Addr>,
    pub next_hop_mac: [u8; 6],
}

/// What the data path remembers of peers between calls (the maps hold the rest).
#[derive(Debug, Default)]
pub(super) struct PeerBook {
    /// Short IDs ever added in this run (counters are reported for them).
    seen: BTreeSet<u16>,
    /// Directly connected peers (carried by the fast path, or admitted only while the
    /// sleeve carries them), kept current by the next-hop refresh.
    direct: BTreeMap<u16, DirectPeer>,
    /// Direct peers the host has no route to through the underlay now (said once).
    no_route: BTreeSet<u16>,
}

/// A change of whether the host has a route to a direct peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RouteChange {
    Lost,
    Back,
}

impl PeerBook {
    /// Short IDs ever added in this run.
    pub(super) fn seen(&self) -> impl Iterator<Item = u16> + '_ {
        self.seen.iter().copied()
    }

    fn note_seen(&mut self, id: u16) {
        self.seen.insert(id);
    }

    fn set_direct(
        &mut self,
        id: u16,
        underlay: Ipv4Addr,
        next_hop: Option<Ipv4Addr>,
        next_hop_mac: [u8; 6],
    ) {
        self.direct.insert(
            id,
            DirectPeer {
                underlay,
                next_hop,
                next_hop_mac,
            },
        );
    }

    /// The direct peers whose next hop's neighbour entry took another MAC than theirs, by
    /// `announced` (the MAC the kernel announced for an address on the underlay, if it
    /// did), each with its new MAC.
    fn announced_next_hops(
        &self,
        announced: impl Fn(Ipv4Addr) -> Option<[u8; 6]>,
    ) -> Vec<(u16, DirectPeer, [u8; 6])> {
        self.direct
            .iter()
            .filter_map(|(id, d)| {
                let mac = announced(d.next_hop?)?;
                (mac != d.next_hop_mac).then_some((*id, *d, mac))
            })
            .collect()
    }

    fn set_indirect(&mut self, id: u16) {
        self.direct.remove(&id);
    }

    /// Forgets that `id` is direct (and any missing route to it); it stays seen.
    fn forget(&mut self, id: u16) {
        self.direct.remove(&id);
        self.no_route.remove(&id);
    }

    /// Whether `id` is direct at `underlay` (not moved or gone meanwhile).
    fn is_direct_at(&self, id: u16, underlay: Ipv4Addr) -> bool {
        self.direct.get(&id).map(|d| d.underlay) == Some(underlay)
    }

    /// The next at most `max` direct peers from short ID `start` on, round the end to the
    /// beginning, and the short ID the refresh after goes on from.
    fn refresh_batch(&self, start: u16, max: usize) -> (Vec<(u16, DirectPeer)>, u16) {
        let batch: Vec<(u16, DirectPeer)> = self
            .direct
            .range(start..)
            .chain(self.direct.range(..start))
            .take(max)
            .map(|(id, d)| (*id, *d))
            .collect();
        let next = batch.last().map_or(0, |(id, _)| id.wrapping_add(1));
        (batch, next)
    }

    /// Records whether there is a route to `id` now; says when that changed.
    fn note_route(&mut self, id: u16, has_route: bool) -> Option<RouteChange> {
        match (has_route, self.no_route.contains(&id)) {
            (false, false) => {
                self.no_route.insert(id);
                Some(RouteChange::Lost)
            }
            (true, true) => {
                self.no_route.remove(&id);
                Some(RouteChange::Back)
            }
            _ => None,
        }
    }
}

/// How long the heartbeat frame for a probe of outer IPv4 length `outer_len` is: the outer
/// headers the programs add come off, at least a bare heartbeat, at most `buffer_len`.
fn heartbeat_frame_len(outer_len: u16, buffer_len: usize) -> usize {
    (outer_len as usize)
        .saturating_sub(OUTER_IP_OVERHEAD)
        .clamp(HEARTBEAT_FRAME_LEN, buffer_len)
}

/// Takes peer `id` out of the maps (what was learned behind it stays) and the book;
/// returns the state for more.
fn clear_peer(state: &mut State, id: u16) -> Result<&mut super::loader::Programs, DatapathError> {
    state.peers.forget(id);
    let programs = state.programs()?;
    programs.maps.clear_peer(id)?;
    Ok(programs)
}

impl EbpfDatapath {
    pub(super) async fn route_peer(&self, peer: DatapathPeer) -> Result<(), DatapathError> {
        let id = peer.short_id.get();
        let direct = is_direct(&peer);
        // The outer destination MAC of frames the programs address themselves (broadcast
        // copies, non-IPv4 frames, heartbeats): the next hop's on the underlay, which is
        // the peer's own only when it shares our subnet (else a router's). The control
        // connection to a direct peer has just resolved it in the neighbour table.
        let (next_hop, underlay_mac) = if direct {
            self.next_hop_towards(peer.underlay).await?
        } else {
            (None, [0; 6])
        };
        if direct && underlay_mac == [0; 6] {
            tracing::warn!(
                "no neighbour entry for the next hop towards peer {} at {}: broadcasts and non-IPv4 frames cannot be sent to it yet",
                peer.short_id,
                peer.underlay
            );
        }
        let mut guard = self.lock();
        guard.peers.note_seen(id);
        guard
            .programs()?
            .maps
            .write_peer(id, peer_entries(&peer, PeerUse::Routed, underlay_mac))?;
        if direct {
            guard
                .peers
                .set_direct(id, peer.underlay, next_hop, underlay_mac);
        } else {
            guard.peers.set_indirect(id);
        }
        Ok(())
    }

    pub(super) async fn admit_only(&self, peer: DatapathPeer) -> Result<(), DatapathError> {
        let id = peer.short_id.get();
        // Heartbeats still go to it over the fast path (they tell when it works again).
        let (next_hop, underlay_mac) = self.next_hop_towards(peer.underlay).await?;
        let mut guard = self.lock();
        guard.peers.note_seen(id);
        guard
            .peers
            .set_direct(id, peer.underlay, next_hop, underlay_mac);
        // What was learned behind it stays: while the peer is not reachable its frames
        // fall to the bridge (and the sleeve) anyway, and they are right again when it
        // comes back or a neighbour relays to it.
        guard
            .programs()?
            .maps
            .write_peer(id, peer_entries(&peer, PeerUse::AdmittedOnly, underlay_mac))
    }

    /// Leaves a peer behind a fallen-back neighbour to the sleeve, keeping what was learned
    /// behind it.
    pub(super) fn hand_to_sleeve(&self, peer: DatapathPeer) -> Result<(), DatapathError> {
        let id = peer.short_id.get();
        let mut guard = self.lock();
        guard.peers.note_seen(id);
        guard
            .programs()?
            .maps
            .write_peer(id, peer_entries(&peer, PeerUse::RelayedBySleeve, [0; 6]))?;
        guard.peers.set_indirect(id);
        Ok(())
    }

    /// Forgets a peer, and what was learned behind it.
    pub(super) fn forget_peer(&self, short_id: ShortId) -> Result<(), DatapathError> {
        let id = short_id.get();
        let mut guard = self.lock();
        clear_peer(&mut guard, id)?.maps.forget_learned_behind(id);
        Ok(())
    }

    /// Stops sending to a peer, keeping what was learned behind it.
    pub(super) fn unroute(&self, short_id: ShortId) -> Result<(), DatapathError> {
        clear_peer(&mut self.lock(), short_id.get()).map(|_| ())
    }

    /// The next hop towards a direct peer at `underlay` and its MAC as the kernel has them
    /// now (no address while there is no route through the underlay, all zeros while the
    /// neighbour is not resolved).
    async fn next_hop_towards(
        &self,
        underlay: Ipv4Addr,
    ) -> Result<(Option<Ipv4Addr>, [u8; 6]), DatapathError> {
        Ok(
            match self
                .nl
                .next_hop_neighbour(self.underlay.index, underlay)
                .await?
            {
                Some((hop, mac)) => (Some(hop), mac.unwrap_or_default()),
                None => (None, [0; 6]),
            },
        )
    }

    /// Keeps the next hop towards each direct peer current: takes the MACs the kernel
    /// announced for next hops since the last call, and looks next hops up again (two
    /// netlink requests per peer) for all direct peers when a route or rule changed, else
    /// for a few in turn.
    pub(super) async fn refresh_next_hop_macs(&self) {
        let news = self.next_hops.take();
        let announced = self
            .lock()
            .peers
            .announced_next_hops(|hop| news.neighbour(self.underlay.index, hop));
        for (id, peer, mac) in announced {
            self.take_next_hop(id, peer.underlay, peer.next_hop, mac);
        }
        let per_refresh = if news.routes_changed {
            usize::MAX
        } else if news.deaf {
            NEXT_HOPS_PER_REFRESH
        } else {
            NEXT_HOPS_SWEPT_PER_REFRESH
        };
        let batch = {
            let guard = self.lock();
            let start = self.refresh_cursor.load(Ordering::Relaxed);
            let (batch, next) = guard.peers.refresh_batch(start, per_refresh);
            self.refresh_cursor.store(next, Ordering::Relaxed);
            batch
        };
        for (id, known) in batch {
            let addr = known.underlay;
            let found = match self.nl.next_hop_neighbour(self.underlay.index, addr).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::debug!("next hop towards {addr}: {e}");
                    continue;
                }
            };
            // Said once when the route goes (or leaves through another device), once when
            // it is back; the entry stays as it is meanwhile.
            match self.lock().peers.note_route(id, found.is_some()) {
                Some(RouteChange::Lost) => tracing::warn!(
                    "no route to peer {id} at {addr} through {}: frames for it cannot be sent",
                    self.underlay.name
                ),
                Some(RouteChange::Back) => tracing::info!("route to peer {id} at {addr} is back"),
                None => {}
            }
            match found {
                None => {}
                // Not resolved (yet): the old next hop may still be right; traffic to the
                // peer resolves the new one, and the neighbour table announces it.
                Some((hop, None)) => self.note_next_hop_address(id, addr, hop),
                Some((hop, Some(mac)))
                    if mac != known.next_hop_mac || Some(hop) != known.next_hop =>
                {
                    self.take_next_hop(id, addr, Some(hop), mac)
                }
                Some(_) => {}
            }
        }
    }

    /// Remembers which address's neighbour entry gives the next hop towards peer `id` at
    /// `underlay`, keeping the MAC in use until that entry resolves.
    fn note_next_hop_address(&self, id: u16, underlay: Ipv4Addr, hop: Ipv4Addr) {
        let mut guard = self.lock();
        if let Some(known) = guard.peers.direct.get(&id).copied() {
            if known.underlay == underlay && known.next_hop != Some(hop) {
                guard
                    .peers
                    .set_direct(id, underlay, Some(hop), known.next_hop_mac);
            }
        }
    }

    /// Sends frames for direct peer `id` at `underlay` to next hop `hop` at `mac` from now
    /// on, unless the peer moved or went meanwhile.
    fn take_next_hop(&self, id: u16, underlay: Ipv4Addr, hop: Option<Ipv4Addr>, mac: [u8; 6]) {
        let mut guard = self.lock();
        if !guard.peers.is_direct_at(id, underlay) {
            return;
        }
        let Some(programs) = guard.programs.as_mut() else {
            return;
        };
        if let Err(e) = programs.maps.set_next_hop_mac(id, mac) {
            tracing::warn!("cannot update the next hop towards peer {id}: {e}");
            return;
        }
        let before = guard.peers.direct.get(&id).map(|d| d.next_hop_mac);
        guard.peers.set_direct(id, underlay, hop, mac);
        if before != Some(mac) {
            tracing::info!(
                "next hop towards peer {id} at {underlay} is now {}",
                format_mac(&mac)
            );
        }
    }

    pub(super) fn set_tree(
        &self,
        source: ShortId,
        children: &[ShortId],
    ) -> Result<(), DatapathError> {
        if children.len() > MAX_BROADCAST_CHILDREN {
            tracing::warn!(
                "broadcasts from {source} go to {} neighbours here; only the first {MAX_BROADCAST_CHILDREN} get them",
                children.len()
            );
        }
        self.lock()
            .programs()?
            .maps
            .set_broadcast_tree(source.get(), children)
    }

    pub(super) fn set_short_id(&self, short_id: ShortId) -> Result<(), DatapathError> {
        if let Some(programs) = self.lock().programs.as_mut() {
            programs
                .maps
                .update_config(|config| config.own_short_id = short_id.get())?;
        }
        self.own_short_id.store(short_id.get(), Ordering::Relaxed);
        Ok(())
    }

    /// Writes heartbeats and probes into the bridge's port towards the peers.
    pub(super) fn write_heartbeats(&self, heartbeats: &[Heartbeat]) {
        let Some(port) = &self.heartbeat_port else {
            return;
        };
        let mut frame =
            vec![0u8; self.max_container_mtu as usize + weave_ebpf_common::headers::ETH_HLEN];
        for h in heartbeats {
            let len = heartbeat_frame_len(h.outer_len, frame.len());
            write_heartbeat_frame(&mut frame, h.peer, h.round);
            if let Err(e) = port.send(&frame[..len]) {
                tracing::debug!("heartbeat to peer {}: {e}", h.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 0, last)
    }

    fn book_with_direct(ids: &[u16]) -> PeerBook {
        let mut book = PeerBook::default();
        for id in ids {
            book.set_direct(*id, addr(*id as u8), Some(addr(*id as u8)), [0; 6]);
        }
        book
    }

    fn ids(batch: &[(u16, DirectPeer)]) -> Vec<u16> {
        batch.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn next_hops_are_refreshed_a_few_peers_at_a_time_in_turn() {
        let book = book_with_direct(&[2, 5, 9, 12]);
        let (batch, next) = book.refresh_batch(0, 3);
        assert_eq!((ids(&batch), next), (vec![2, 5, 9], 10));
        let (batch, next) = book.refresh_batch(next, 3);
        assert_eq!((ids(&batch), next), (vec![12, 2, 5], 6), "round the end");
        let (batch, _) = book.refresh_batch(6, 16);
        assert_eq!(ids(&batch), vec![9, 12, 2, 5], "each once when all fit");
    }

    #[test]
    fn a_refresh_with_no_direct_peers_starts_over() {
        let (batch, next) = PeerBook::default().refresh_batch(40, 16);
        assert!(batch.is_empty());
        assert_eq!(next, 0);
        let book = book_with_direct(&[u16::MAX]);
        assert_eq!(book.refresh_batch(7, 16).1, 0, "the cursor wraps");
    }

    #[test]
    fn a_lost_route_is_said_once_and_so_is_its_return() {
        let mut book = book_with_direct(&[3]);
        assert_eq!(book.note_route(3, true), None);
        assert_eq!(book.note_route(3, false), Some(RouteChange::Lost));
        assert_eq!(book.note_route(3, false), None);
        assert_eq!(book.note_route(3, true), Some(RouteChange::Back));
        assert_eq!(book.note_route(3, true), None);
    }

    #[test]
    fn a_forgotten_peer_is_no_longer_direct_nor_missing_a_route_but_stays_seen() {
        let mut book = book_with_direct(&[3]);
        book.note_seen(3);
        book.note_route(3, false);
        book.forget(3);
        assert!(!book.is_direct_at(3, addr(3)));
        assert_eq!(
            book.note_route(3, false),
            Some(RouteChange::Lost),
            "said again"
        );
        assert_eq!(book.seen().collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn a_next_hop_found_for_an_old_address_is_not_taken() {
        let mut book = book_with_direct(&[3]);
        assert!(book.is_direct_at(3, addr(3)));
        book.set_direct(3, addr(30), Some(addr(30)), [1; 6]);
        assert!(!book.is_direct_at(3, addr(3)));
        book.set_indirect(3);
        assert!(!book.is_direct_at(3, addr(30)));
    }

    #[test]
    fn an_announced_mac_moves_every_peer_behind_that_next_hop_and_no_other() {
        let gateway = Ipv4Addr::new(192, 168, 0, 254);
        let mut book = book_with_direct(&[3]);
        // Peers 4 and 5 behind the gateway, 6 not looked up yet.
        book.set_direct(4, Ipv4Addr::new(10, 0, 0, 4), Some(gateway), [4; 6]);
        book.set_direct(5, Ipv4Addr::new(10, 0, 0, 5), Some(gateway), [7; 6]);
        book.set_direct(6, Ipv4Addr::new(10, 0, 0, 6), None, [4; 6]);
        let announced = |hop: Ipv4Addr| (hop == gateway).then_some([7; 6]);
        let moved: Vec<(u16, [u8; 6])> = book
            .announced_next_hops(announced)
            .into_iter()
            .map(|(id, _, mac)| (id, mac))
            .collect();
        assert_eq!(
            moved,
            vec![(4, [7; 6])],
            "5 has it already; 3 and 6 are not behind it"
        );
        assert!(book.announced_next_hops(|_| None).is_empty());
    }

    #[test]
    fn a_probe_frame_is_its_outer_length_less_the_outer_headers_within_bounds() {
        let buffer = 1450 + 14;
        assert_eq!(
            heartbeat_frame_len(0, buffer),
            HEARTBEAT_FRAME_LEN,
            "a plain heartbeat"
        );
        assert_eq!(heartbeat_frame_len(1000, buffer), 1000 - OUTER_IP_OVERHEAD);
        assert_eq!(heartbeat_frame_len(u16::MAX, buffer), buffer);
    }
}
