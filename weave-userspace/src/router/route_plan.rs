//! What the data path must change for new routes, without I/O: the peers reached through a
//! neighbour wanted now against those installed, direct peers whose connection went, and
//! the broadcast trees. Directly connected peers are installed by their connections and
//! are left alone here. A peer whose next hop the sleeve carries (a neighbour whose fast
//! path fell back) is not the fast path's to relay: the sleeve routes its frames, and the
//! fast path keeps what it learned behind the peer for when it comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::SleeveUse;
use crate::datapath::DatapathPeer;
use crate::mesh::peer_name::{PeerName, ShortId};
use crate::mesh::routes::Routes;
use crate::sleeve::forwarding::Routing;

/// What of the routes the data path holds.
#[derive(Debug, Default)]
pub struct Installed {
    /// Peers reached through a neighbour over the fast path.
    pub relayed: BTreeMap<PeerName, DatapathPeer>,
    /// Peers reached through a neighbour the sleeve carries: not in the fast path, but what
    /// it learned behind them is kept (they may come back to it).
    pub left_to_sleeve: BTreeMap<PeerName, DatapathPeer>,
    /// Direct peers whose connection went, taken out of the data path with what was learned
    /// behind them kept, until the next plan says whether a neighbour still reaches them.
    pub unrouted: BTreeMap<PeerName, DatapathPeer>,
    /// Broadcast trees: source → our children in its tree.
    pub trees: BTreeMap<ShortId, Vec<ShortId>>,
}

impl Installed {
    /// Forgets `peer` as a relayed one: it is a direct peer now (its connection installs
    /// it), or its connection went (the next plan decides).
    pub fn forget(&mut self, peer: &PeerName) {
        self.relayed.remove(peer);
        self.left_to_sleeve.remove(peer);
    }
}

/// The data-path operations that bring [`Installed`] to the routes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// Relayed peers to install or re-point (a new next hop or address).
    pub add: Vec<DatapathPeer>,
    /// Relayed peers no longer reached.
    pub remove: Vec<DatapathPeer>,
    /// Relayed peers whose next hop the sleeve carries, new or changed: the fast path sends
    /// them nothing itself (what it learned behind them kept) and hands VXLAN relayed to
    /// them to the sleeve.
    pub to_sleeve: Vec<DatapathPeer>,
    /// Direct peers whose connection went and that no neighbour reaches over the fast path:
    /// gone from it for good.
    pub orphans: Vec<DatapathPeer>,
    /// Broadcast trees that changed (an empty list: the tree is gone).
    pub trees: Vec<(ShortId, Vec<ShortId>)>,
}

/// A peer's short ID and underlay address, from its topology record.
pub type PeerAddress = (ShortId, Ipv4Addr);

/// Each name's short ID as the data path and the sleeve know it. A short ID belongs to
/// whoever holds it first: ours and a direct peer's (from its handshake: its connection
/// installed it) are never given to another name, however a relayed record claims them; of
/// several relayed names claiming one short ID, the lowest name has it (as a clash is
/// settled). A name whose claim loses has none, so no record from gossip redirects,
/// black-holes or wipes another peer's entry.
fn short_ids(
    routes: &Routes,
    lookup: impl Fn(&PeerName) -> Option<PeerAddress>,
    ourself: (PeerName, ShortId),
    direct: &BTreeMap<PeerName, ShortId>,
) -> BTreeMap<PeerName, ShortId> {
    let mut ids = direct.clone();
    ids.insert(ourself.0, ourself.1);
    let mut taken: BTreeSet<ShortId> = ids.values().copied().collect();
    let named: BTreeSet<&PeerName> = routes.unicast.iter().flat_map(|(d, h)| [d, h]).collect();
    for name in named {
        if ids.contains_key(name) {
            continue;
        }
        if let Some((id, _)) = lookup(name) {
            if taken.insert(id) {
                ids.insert(*name, id);
            }
        }
    }
    ids
}

/// Plans the changes for `routes` and records them in `installed`. `lookup` gives a peer's
/// record; `ourself` our name and short ID; `direct` the peers we keep connections with,
/// each with the short ID of its handshake; `on_sleeve` those of them whose frames the
/// sleeve carries: the fast path cannot hand a relayed frame to them, so a peer behind one
/// is left to the sleeve (not installed, or unrouted). Short IDs are taken as
/// [`short_ids`] gives them.
pub fn plan(
    routes: &Routes,
    lookup: impl Fn(&PeerName) -> Option<PeerAddress>,
    ourself: (PeerName, ShortId),
    direct: &BTreeMap<PeerName, ShortId>,
    on_sleeve: &BTreeSet<PeerName>,
    installed: &mut Installed,
) -> RoutePlan {
    let ids = short_ids(routes, &lookup, ourself, direct);
    let mut wanted = BTreeMap::new();
    let mut sleeve = BTreeMap::new();
    for (dst, hop) in &routes.unicast {
        if dst == hop || direct.contains_key(dst) {
            continue;
        }
        let (Some(&short_id), Some(&next_hop), Some((_, underlay))) =
            (ids.get(dst), ids.get(hop), lookup(dst))
        else {
            continue;
        };
        let peer = DatapathPeer {
            short_id,
            underlay,
            next_hop,
        };
        if on_sleeve.contains(hop) {
            sleeve.insert(*dst, peer);
        } else {
            wanted.insert(*dst, peer);
        }
    }
    let reached = |name: &PeerName| {
        wanted.contains_key(name) || sleeve.contains_key(name) || direct.contains_key(name)
    };
    // An entry whose short ID another name has now is that name's: forgotten here, not
    // taken out of the data path.
    let holds_its_id = |name: &PeerName, p: &DatapathPeer| {
        ids.get(name) == Some(&p.short_id) || !ids.values().any(|id| *id == p.short_id)
    };
    let remove = installed
        .relayed
        .iter()
        .chain(&installed.left_to_sleeve)
        .filter(|(name, p)| !reached(name) && holds_its_id(name, p))
        .map(|(_, p)| *p)
        .collect();
    let to_sleeve = sleeve
        .iter()
        .filter(|(name, p)| installed.left_to_sleeve.get(name) != Some(p))
        .map(|(_, p)| *p)
        .collect();
    let add = wanted
        .iter()
        .filter(|(name, p)| installed.relayed.get(name) != Some(p))
        .map(|(_, p)| *p)
        .collect();
    let orphans = std::mem::take(&mut installed.unrouted)
        .into_iter()
        .filter(|(name, p)| !reached(name) && holds_its_id(name, p))
        .map(|(_, p)| p)
        .collect();
    installed.relayed = wanted;
    installed.left_to_sleeve = sleeve;

    let short = |name: &PeerName| ids.get(name).copied();
    // Our own tree too: the peers our own broadcasts go to.
    let trees: BTreeMap<ShortId, Vec<ShortId>> = routes
        .broadcast
        .iter()
        .filter(|(_, children)| !children.is_empty())
        .filter_map(|(source, children)| {
            Some((short(source)?, children.iter().filter_map(short).collect()))
        })
        .collect();
    let mut tree_changes: Vec<(ShortId, Vec<ShortId>)> = trees
        .iter()
        .filter(|(s, c)| installed.trees.get(s) != Some(c))
        .map(|(s, c)| (*s, c.clone()))
        .collect();
    tree_changes.extend(
        installed
            .trees
            .keys()
            .filter(|s| !trees.contains_key(s))
            .map(|s| (*s, Vec::new())),
    );
    installed.trees = trees;
    RoutePlan {
        add,
        remove,
        to_sleeve,
        orphans,
        trees: tree_changes,
    }
}

/// The routes as the sleeve follows them, in short IDs: every destination's next hop, and
/// every broadcast source's children here.
pub fn sleeve_routing(
    routes: &Routes,
    lookup: impl Fn(&PeerName) -> Option<PeerAddress>,
    ourself: (PeerName, ShortId),
    direct: &BTreeMap<PeerName, ShortId>,
    beside_fast_path: bool,
) -> Routing {
    let ids = short_ids(routes, lookup, ourself, direct);
    let short = |name: &PeerName| ids.get(name).map(|id| id.get());
    Routing {
        next_hop: routes
            .unicast
            .iter()
            .filter_map(|(dst, hop)| Some((short(dst)?, short(hop)?)))
            .collect(),
        children: routes
            .broadcast
            .iter()
            .filter(|(_, children)| !children.is_empty())
            .filter_map(|(source, children)| {
                Some((short(source)?, children.iter().filter_map(short).collect()))
            })
            .collect(),
        beside_fast_path,
    }
}

/// The routes as the fast path follows them while peers are held after their connection
/// went ([`super::hold`]): the topology no longer has the connections, so the held peers
/// are added to our own broadcast tree (our broadcasts, ARP included, still reach them).
/// The plan is given them as direct peers, so their entries stay as their connections
/// left them. Peers behind a held peer are not held: the topology routes them another
/// way, or they go.
pub fn with_held(routes: &Routes, ourself: PeerName, held: &BTreeMap<PeerName, ShortId>) -> Routes {
    let mut routes = routes.clone();
    if held.is_empty() {
        return routes;
    }
    let children = routes.broadcast.entry(ourself).or_default();
    for name in held.keys() {
        if !children.contains(name) {
            children.push(*name);
        }
    }
    routes
}

impl RoutePlan {
    /// The part of the plan the fast path carries out, given which peers the sleeve
    /// carries. Without a fast path at all, only orphans go. With a sleeve for untrusted
    /// peers (it relays them itself) no relayed peer goes into the fast path; the
    /// trees still take broadcasts to the trusted neighbours on it.
    pub fn for_fast_path(mut self, has_sleeve: bool, sleeve_use: SleeveUse) -> Self {
        if !sleeve_use.fast_path_relays(has_sleeve) {
            self.add.clear();
            self.remove.clear();
            self.to_sleeve.clear();
            if sleeve_use == SleeveUse::All {
                self.trees.clear();
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: u8) -> PeerName {
        PeerName::from_bytes([0x0a, 0, 0, 0, 0, n])
    }

    fn lookup(name: &PeerName) -> Option<PeerAddress> {
        let n = name.to_string().rsplit(':').next()?.parse::<u8>().ok()?;
        Some((
            ShortId::new(u16::from(n)).unwrap(),
            Ipv4Addr::new(10, 0, 0, n),
        ))
    }

    fn peer(n: u8, via: u8) -> DatapathPeer {
        DatapathPeer {
            short_id: ShortId::new(u16::from(n)).unwrap(),
            underlay: Ipv4Addr::new(10, 0, 0, n),
            next_hop: ShortId::new(u16::from(via)).unwrap(),
        }
    }

    /// Routes of peer 1 in the line 1–2–3 (or with 1–3 direct too).
    fn line(three_via: u8) -> Routes {
        let mut routes = Routes::default();
        routes.unicast.insert(name(2), name(2));
        routes.unicast.insert(name(3), name(three_via));
        routes.broadcast.insert(name(1), vec![name(2)]);
        routes.broadcast.insert(name(3), Vec::new());
        routes
    }

    fn direct(peers: &[u8]) -> BTreeMap<PeerName, ShortId> {
        peers
            .iter()
            .map(|&n| (name(n), ShortId::new(u16::from(n)).unwrap()))
            .collect()
    }

    /// We are peer 1.
    fn me() -> (PeerName, ShortId) {
        (name(1), ShortId::new(1).unwrap())
    }

    /// No neighbour on the sleeve.
    fn none() -> BTreeSet<PeerName> {
        BTreeSet::new()
    }

    #[test]
    fn a_held_peer_keeps_its_entry_and_our_broadcasts() {
        // 1–2 direct, 1–3 direct until 3's connection went: 3 is held. The topology routes
        // nothing to 3 now.
        let mut installed = Installed::default();
        let mut routes = Routes::default();
        routes.unicast.insert(name(2), name(2));
        routes.unicast.insert(name(3), name(3));
        routes.broadcast.insert(name(1), vec![name(2), name(3)]);
        plan(&routes, lookup, me(), &direct(&[2, 3]), &none(), &mut installed);
        let mut after = Routes::default();
        after.unicast.insert(name(2), name(2));
        after.broadcast.insert(name(1), vec![name(2)]);
        let held = direct(&[3]);
        let routes = with_held(&after, name(1), &held);
        let mut direct_and_held = direct(&[2]);
        direct_and_held.extend(held.clone());
        let p = plan(&routes, lookup, me(), &direct_and_held, &none(), &mut installed);
        assert_eq!(p, RoutePlan::default(), "nothing removed, our tree unchanged");
        assert_eq!(
            installed.trees[&ShortId::new(1).unwrap()],
            [ShortId::new(2).unwrap(), ShortId::new(3).unwrap()]
        );
        // Released: the next plan takes it out of our tree.
        let p = plan(&after, lookup, me(), &direct(&[2]), &none(), &mut installed);
        assert_eq!(p.trees, [(ShortId::new(1).unwrap(), vec![ShortId::new(2).unwrap()])]);
        assert_eq!(with_held(&after, name(1), &BTreeMap::new()), after);
    }

    #[test]
    fn a_peer_behind_a_neighbour_is_installed_once_with_that_next_hop() {
        assert_eq!(
            lookup(&name(3)).unwrap().0.get(),
            3,
            "names end in their number"
        );
        let mut installed = Installed::default();
        let first = plan(&line(2), lookup, me(), &direct(&[2]), &none(), &mut installed);
        assert_eq!(first.add, [peer(3, 2)]);
        assert!(first.remove.is_empty() && first.orphans.is_empty());
        assert_eq!(
            first.trees,
            [(ShortId::new(1).unwrap(), vec![ShortId::new(2).unwrap()])]
        );
        // The same routes again: nothing to do.
        assert_eq!(
            plan(&line(2), lookup, me(), &direct(&[2]), &none(), &mut installed),
            RoutePlan::default()
        );
    }

    #[test]
    fn a_relayed_peer_that_becomes_direct_is_left_to_its_connection() {
        let mut installed = Installed::default();
        plan(&line(2), lookup, me(), &direct(&[2]), &none(), &mut installed);
        let now_direct = plan(&line(3), lookup, me(), &direct(&[2, 3]), &none(), &mut installed);
        // Not removed: the connection's installation owns the entry now.
        assert!(now_direct.add.is_empty() && now_direct.remove.is_empty());
        assert!(installed.relayed.is_empty());
    }

    #[test]
    fn an_unreachable_relayed_peer_is_removed_and_its_tree_emptied() {
        let mut installed = Installed::default();
        let mut routes = line(2);
        routes.broadcast.insert(name(3), vec![name(2)]);
        plan(&routes, lookup, me(), &direct(&[2]), &none(), &mut installed);
        let mut cut = Routes::default();
        cut.unicast.insert(name(2), name(2));
        cut.broadcast.insert(name(1), vec![name(2)]);
        let p = plan(&cut, lookup, me(), &direct(&[2]), &none(), &mut installed);
        assert_eq!(p.remove, [peer(3, 2)]);
        assert_eq!(p.trees, [(ShortId::new(3).unwrap(), Vec::new())]);
    }

    #[test]
    fn a_lost_direct_peer_is_an_orphan_only_when_no_neighbour_reaches_it() {
        // 1–3 went; 2 still reaches 3: not an orphan, relayed through 2 instead.
        let mut installed = Installed::default();
        installed.unrouted.insert(name(3), peer(3, 3));
        let p = plan(&line(2), lookup, me(), &direct(&[2]), &none(), &mut installed);
        assert!(p.orphans.is_empty());
        assert_eq!(p.add, [peer(3, 2)]);
        // Nobody reaches it: it goes for good.
        let mut installed = Installed::default();
        installed.unrouted.insert(name(3), peer(3, 3));
        let mut alone = Routes::default();
        alone.unicast.insert(name(2), name(2));
        let p = plan(&alone, lookup, me(), &direct(&[2]), &none(), &mut installed);
        assert_eq!(p.orphans, [peer(3, 3)]);
        assert!(installed.unrouted.is_empty());
    }

    #[test]
    fn a_peer_behind_a_neighbour_on_the_sleeve_is_left_to_the_sleeve_until_the_fast_path_returns() {
        let mut installed = Installed::default();
        plan(&line(2), lookup, me(), &direct(&[2]), &none(), &mut installed);
        // 1–2 fell back to the sleeve: the kernel must not relay 3 through 2 any more, but
        // keeps what it learned behind 3 (not removed).
        let on_sleeve: BTreeSet<PeerName> = [name(2)].into();
        let fell_back = plan(&line(2), lookup, me(), &direct(&[2]), &on_sleeve, &mut installed);
        assert_eq!(fell_back.to_sleeve, [peer(3, 2)]);
        assert!(fell_back.add.is_empty() && fell_back.remove.is_empty());
        assert!(installed.relayed.is_empty());
        // Nor is it installed while 2 stays on the sleeve; a direct 3 whose connection went
        // is no orphan either (the sleeve reaches it through 2).
        installed.unrouted.insert(name(3), peer(3, 3));
        let again = plan(&line(2), lookup, me(), &direct(&[2]), &on_sleeve, &mut installed);
        assert_eq!(again, RoutePlan::default());
        // The fast path works again: 3 goes back in through 2.
        let back = plan(&line(2), lookup, me(), &direct(&[2]), &none(), &mut installed);
        assert_eq!(back.add, [peer(3, 2)]);
        assert!(back.remove.is_empty() && back.to_sleeve.is_empty());
        // Left to the sleeve, then out of reach: removed for good.
        plan(&line(2), lookup, me(), &direct(&[2]), &on_sleeve, &mut installed);
        let mut alone = Routes::default();
        alone.unicast.insert(name(2), name(2));
        let gone = plan(&alone, lookup, me(), &direct(&[2]), &on_sleeve, &mut installed);
        assert_eq!(gone.remove, [peer(3, 2)]);
        assert!(installed.left_to_sleeve.is_empty());
    }

    /// A peer first reached through a neighbour already on the sleeve is handed to the
    /// sleeve too: VXLAN relayed to it by others must not be dropped here.
    #[test]
    fn a_peer_first_seen_behind_a_neighbour_on_the_sleeve_is_handed_to_the_sleeve() {
        let mut installed = Installed::default();
        let on_sleeve: BTreeSet<PeerName> = [name(2)].into();
        let p = plan(&line(2), lookup, me(), &direct(&[2]), &on_sleeve, &mut installed);
        assert_eq!(p.to_sleeve, [peer(3, 2)]);
        assert!(p.add.is_empty() && p.remove.is_empty());
        // Its next hop changes (a longer way round, still behind the sleeve): handed again.
        let mut routes = line(2);
        routes.unicast.insert(name(4), name(4));
        routes.unicast.insert(name(3), name(4));
        let on_sleeve: BTreeSet<PeerName> = [name(2), name(4)].into();
        let p = plan(&routes, lookup, me(), &direct(&[2, 4]), &on_sleeve, &mut installed);
        assert_eq!(p.to_sleeve, [peer(3, 4)]);
    }

    #[test]
    fn the_sleeve_gets_every_route_and_tree_in_short_ids() {
        let mut routes = line(2);
        routes.broadcast.insert(name(3), vec![name(2)]);
        let r = sleeve_routing(&routes, lookup, me(), &direct(&[2]), true);
        assert!(r.beside_fast_path);
        assert_eq!(r.next_hop.get(&3), Some(&2));
        assert_eq!(r.next_hop.get(&2), Some(&2));
        assert_eq!(r.children.get(&1), Some(&vec![2]));
        assert_eq!(r.children.get(&3), Some(&vec![2]));
    }

    #[test]
    fn without_a_fast_path_for_relays_only_trees_and_orphans_remain() {
        let mut installed = Installed::default();
        installed.unrouted.insert(name(4), peer(4, 4));
        let p = plan(&line(2), lookup, me(), &direct(&[2]), &none(), &mut installed);
        let untrusted = p.for_fast_path(true, SleeveUse::Untrusted);
        assert!(untrusted.add.is_empty());
        assert_eq!(untrusted.orphans, [peer(4, 4)]);
        assert!(!untrusted.trees.is_empty());
        let mut installed = Installed::default();
        installed.unrouted.insert(name(4), peer(4, 4));
        let p = plan(&line(2), lookup, me(), &direct(&[2]), &none(), &mut installed);
        let sleeve_only = p.for_fast_path(true, SleeveUse::All);
        assert_eq!(
            sleeve_only,
            RoutePlan {
                orphans: vec![peer(4, 4)],
                ..RoutePlan::default()
            }
        );
        let p = plan(
            &line(2),
            lookup,
            me(),
            &direct(&[2]),
            &none(),
            &mut Installed::default(),
        );
        assert_eq!(p.for_fast_path(false, SleeveUse::All).add, [peer(3, 2)]);
    }

    /// Peer 1's routes with a relayed record (peer 9, through 2) claiming the short ID of
    /// the direct peer 2, or of peer 3.
    fn forged(claims: u16) -> (Routes, impl Fn(&PeerName) -> Option<PeerAddress>) {
        let mut routes = line(2);
        routes.unicast.insert(name(9), name(2));
        routes.broadcast.insert(name(9), vec![name(2)]);
        let lookup = move |n: &PeerName| {
            let (id, addr) = lookup(n)?;
            Some(if id.get() == 9 {
                (ShortId::new(claims).unwrap(), addr)
            } else {
                (id, addr)
            })
        };
        (routes, lookup)
    }

    #[test]
    fn a_relayed_record_with_a_direct_peers_short_id_never_touches_its_entry() {
        let mut installed = Installed::default();
        let (routes, claims_2) = forged(2);
        let p = plan(&routes, &claims_2, me(), &direct(&[2]), &none(), &mut installed);
        // Only peer 3 through 2; nothing for short ID 2, and 9's tree is not 2's.
        assert_eq!(p.add, [peer(3, 2)]);
        assert!(p.remove.is_empty() && p.orphans.is_empty());
        assert!(p.trees.iter().all(|(s, _)| s.get() != 2), "{:?}", p.trees);
        let r = sleeve_routing(&routes, &claims_2, me(), &direct(&[2]), false);
        assert_eq!(r.next_hop.get(&2), Some(&2), "2 is still reached directly");

        // Peer 9 first relayed under its own ID 9, then claiming 3's while 3 is relayed,
        // then 3 connects directly: 3's entry is never removed nor re-pointed for 9.
        let mut installed = Installed::default();
        let mut routes = line(2);
        routes.unicast.insert(name(9), name(2));
        let p = plan(&routes, lookup, me(), &direct(&[2]), &none(), &mut installed);
        assert_eq!(p.add, [peer(3, 2), peer(9, 2)]);
        let (_, claims_3) = forged(3);
        let p = plan(&routes, &claims_3, me(), &direct(&[2]), &none(), &mut installed);
        assert_eq!(p.remove, [peer(9, 2)], "9's own entry goes");
        assert!(p.add.is_empty(), "3 keeps its entry: {:?}", p.add);
        let mut routes = line(3);
        routes.unicast.insert(name(9), name(2));
        let p = plan(&routes, &claims_3, me(), &direct(&[2, 3]), &none(), &mut installed);
        assert!(p.add.is_empty() && p.remove.is_empty(), "{p:?}");
        assert!(installed.relayed.is_empty());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Routes of peer 1 among peers 2..=7: each destination reached directly or through
        /// another peer, each source's broadcast passed on to a few of them.
        fn routes() -> impl Strategy<Value = (Routes, BTreeMap<PeerName, ShortId>, BTreeSet<PeerName>)> {
            (
                prop::collection::btree_map(2u8..8, 2u8..8, 0..6),
                prop::collection::btree_map(1u8..8, prop::collection::vec(2u8..8, 0..3), 0..4),
                prop::collection::btree_set(2u8..8, 0..3),
            )
                .prop_map(|(unicast, broadcast, sleeve)| {
                    let mut routes = Routes::default();
                    let mut direct = BTreeMap::new();
                    for (dst, hop) in unicast {
                        routes.unicast.insert(name(dst), name(hop));
                        if dst == hop {
                            direct.insert(name(dst), ShortId::new(u16::from(dst)).unwrap());
                        }
                    }
                    for (source, children) in broadcast {
                        routes
                            .broadcast
                            .insert(name(source), children.into_iter().map(name).collect());
                    }
                    let on_sleeve = sleeve
                        .into_iter()
                        .map(name)
                        .filter(|n| direct.contains_key(n))
                        .collect();
                    (routes, direct, on_sleeve)
                })
        }

        proptest! {
            /// Through any sequence of routes and fallbacks: what is installed afterwards is
            /// exactly the relayed peers the routes want (never a direct one, nor one behind
            /// a neighbour on the sleeve), nothing is both added and removed, and planning
            /// the same routes again changes nothing.
            #[test]
            fn the_installed_state_follows_the_routes(steps in prop::collection::vec(routes(), 1..6)) {
                let mut installed = Installed::default();
                for (routes, direct, on_sleeve) in steps {
                    let p = plan(&routes, lookup, me(), &direct, &on_sleeve, &mut installed);
                    for (dst, hop) in &routes.unicast {
                        let relayed = dst != hop && !direct.contains_key(dst);
                        let fast = relayed && !on_sleeve.contains(hop);
                        prop_assert_eq!(installed.relayed.contains_key(dst), fast);
                        prop_assert_eq!(installed.left_to_sleeve.contains_key(dst), relayed && !fast);
                    }
                    prop_assert!(p.to_sleeve.iter().all(|a| !p.add.contains(a) && !p.remove.contains(a)));
                    prop_assert!(installed.relayed.keys().all(|n| routes.unicast.contains_key(n)));
                    prop_assert!(p.add.iter().all(|a| !p.remove.contains(a)));
                    prop_assert!(p.add.iter().all(|a| a.next_hop != a.short_id));
                    let again = plan(&routes, lookup, me(), &direct, &on_sleeve, &mut installed);
                    prop_assert_eq!(again, RoutePlan::default());
                }
            }
        }
    }
}
