//! Properties of the pure mesh logic: gossip delivered in any order converges to the same
//! topology everywhere, and the routes computed from it are identical in meaning on
//! every peer, loop-free, and deliver each broadcast exactly once.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use weave_router::mesh::peer_name::{PeerName, ShortId};
use weave_router::mesh::routes::{self, Routes};
use weave_router::mesh::topology::{ConnectionSummary, PeerInfo, Topology};

fn name(i: usize) -> PeerName {
    PeerName::from_bytes([0x02, 0, 0, 0, 0, i as u8 + 1])
}

/// Records of `n` peers whose final connection lists follow `edges`, plus older versions
/// of each record (fewer connections) that gossip may still deliver late.
fn records(n: usize, edges: &BTreeSet<(usize, usize)>) -> Vec<PeerInfo> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut conns: Vec<ConnectionSummary> = edges
            .iter()
            .filter_map(|&(a, b)| {
                if a == i {
                    Some(b)
                } else if b == i {
                    Some(a)
                } else {
                    None
                }
            })
            .map(|j| ConnectionSummary {
                remote: name(j),
                address: format!("10.0.0.{}:6783", j + 1).parse().unwrap(),
                outbound: i < j,
                established: true,
            })
            .collect();
        conns.sort();
        let mut info = PeerInfo::new(
            name(i),
            format!("host{i}"),
            7 + i as u64,
            ShortId::new(i as u16).unwrap(),
        );
        // Older versions: a growing prefix of the final list.
        for k in 0..conns.len() {
            info.connections = conns[..k].to_vec();
            out.push(info.clone());
            info.version += 1;
        }
        info.connections = conns;
        out.push(info);
    }
    out
}

/// One established connection to `remote`, as its dialler publishes it.
fn connection_to(remote: usize, address: &str) -> Vec<ConnectionSummary> {
    vec![ConnectionSummary {
        remote: name(remote),
        address: address.parse().unwrap(),
        outbound: true,
        established: true,
    }]
}

fn replica(me: usize, all: &[PeerInfo], order: &[usize], chunk: usize) -> Topology {
    let mine = all
        .iter()
        .filter(|p| p.name == name(me))
        .max_by_key(|p| p.version)
        .unwrap()
        .clone();
    let mut t = Topology::new(mine);
    let shuffled: Vec<PeerInfo> = order
        .iter()
        .map(|&k| all[k % all.len()].clone())
        .chain(all.iter().cloned())
        .collect();
    for batch in shuffled.chunks(chunk.max(1)) {
        t.merge(batch).unwrap();
    }
    t
}

fn graph() -> impl Strategy<Value = (usize, BTreeSet<(usize, usize)>)> {
    (2usize..10).prop_flat_map(|n| {
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
            .collect();
        let len = pairs.len();
        (
            Just(n),
            proptest::sample::subsequence(pairs, 0..=len).prop_map(|v| v.into_iter().collect()),
        )
    })
}

proptest! {
    #[test]
    fn any_delivery_order_converges(
        (n, edges) in graph(),
        order_a in proptest::collection::vec(0usize..1000, 0..60),
        order_b in proptest::collection::vec(0usize..1000, 0..60),
        chunk in 1usize..5,
    ) {
        let all = records(n, &edges);
        for me in 0..n {
            let a = replica(me, &all, &order_a, chunk);
            let b = replica(me, &all, &order_b, chunk + 1);
            prop_assert_eq!(a.full_state(), b.full_state());
        }
        // Every replica holds the same record for every peer.
        let reference = replica(0, &all, &order_a, chunk).full_state();
        for me in 1..n {
            prop_assert_eq!(&replica(me, &all, &order_b, chunk).full_state(), &reference);
        }
    }

    #[test]
    fn routes_are_loop_free_and_broadcast_reaches_each_peer_once(
        (n, edges) in graph(),
        order in proptest::collection::vec(0usize..1000, 0..40),
    ) {
        let all = records(n, &edges);
        let routes: BTreeMap<PeerName, Routes> =
            (0..n).map(|me| (name(me), routes::compute(&replica(me, &all, &order, 3)))).collect();
        for src in 0..n {
            for dst in 0..n {
                if src == dst { continue; }
                let (s, d) = (name(src), name(dst));
                if !routes[&s].unicast.contains_key(&d) { continue; }
                let mut at = s;
                let mut hops = 0;
                while at != d {
                    at = *routes[&at].unicast.get(&d).expect("every hop on a path has a route onwards");
                    hops += 1;
                    prop_assert!(hops < n, "loop from {} to {}", s, d);
                }
            }
            // Broadcast from src: follow the per-source tree from every peer.
            let s = name(src);
            let mut received: BTreeMap<PeerName, usize> = BTreeMap::new();
            let mut frontier = vec![s];
            while let Some(at) = frontier.pop() {
                for next in routes[&at].broadcast.get(&s).cloned().unwrap_or_default() {
                    *received.entry(next).or_default() += 1;
                    frontier.push(next);
                    prop_assert!(received.values().sum::<usize>() <= n, "broadcast storm");
                }
            }
            for (peer, count) in &received {
                prop_assert_eq!(*count, 1, "{} got the broadcast from {} {} times", peer, s, count);
            }
            let reachable: BTreeSet<PeerName> = routes[&s].unicast.keys().copied().collect();
            let got: BTreeSet<PeerName> = received.keys().copied().collect();
            prop_assert_eq!(got, reachable);
        }
    }

    #[test]
    fn gossip_relayed_along_the_relay_trees_reaches_each_peer_once(
        (n, edges) in graph(),
        order in proptest::collection::vec(0usize..1000, 0..40),
    ) {
        let all = records(n, &edges);
        let views: Vec<Topology> = (0..n).map(|me| replica(me, &all, &order, 3)).collect();
        for src in 0..n {
            let s = name(src);
            let mut received: BTreeMap<PeerName, usize> = BTreeMap::new();
            let mut frontier = vec![src];
            while let Some(at) = frontier.pop() {
                for next in routes::relay_children(&views[at], s) {
                    *received.entry(next).or_default() += 1;
                    frontier.push((0..n).find(|&i| name(i) == next).expect("a known peer"));
                    prop_assert!(received.values().sum::<usize>() <= n, "relay storm");
                }
            }
            for (peer, count) in &received {
                prop_assert_eq!(*count, 1, "{} got {}'s gossip {} times", peer, s, count);
            }
            // Everyone connected to the source hears it (all connections are symmetric here).
            let reachable: BTreeSet<PeerName> =
                routes::compute(&views[src]).unicast.keys().copied().collect();
            let got: BTreeSet<PeerName> = received.keys().copied().collect();
            prop_assert_eq!(got, reachable);
        }
    }
}

#[test]
fn a_line_routes_through_the_middle() {
    let edges = BTreeSet::from([(0, 1), (1, 2)]);
    let all = records(3, &edges);
    let a = routes::compute(&replica(0, &all, &[], 1));
    let b = routes::compute(&replica(1, &all, &[], 1));
    assert_eq!(a.unicast[&name(2)], name(1));
    assert_eq!(a.unicast[&name(1)], name(1));
    assert_eq!(a.broadcast[&name(0)], vec![name(1)]);
    assert_eq!(b.broadcast[&name(0)], vec![name(2)]);
    assert_eq!(b.broadcast[&name(2)], vec![name(0)]);
}

#[test]
fn one_sided_connections_carry_no_routes() {
    let mut a = PeerInfo::new(name(0), "a".into(), 1, ShortId::new(1).unwrap());
    a.connections = connection_to(1, "127.0.0.1:9");
    let b = PeerInfo::new(name(1), "b".into(), 2, ShortId::new(2).unwrap());
    let mut t = Topology::new(a);
    t.merge(&[b]).unwrap();
    assert!(routes::compute(&t).unicast.is_empty());
}

#[test]
fn a_new_peers_record_is_relayed_before_its_connection_is_acknowledged() {
    // A line 0-1-2; peer 3 has just connected to 0: its record lists 0, but the copy of 0's
    // record that 1 and 2 hold does not list 3 yet (that change is still on its way).
    let edges = BTreeSet::from([(0, 1), (1, 2)]);
    let mut all = records(3, &edges);
    let mut newcomer = PeerInfo::new(name(3), "host3".into(), 99, ShortId::new(3).unwrap());
    newcomer.connections = connection_to(0, "10.0.0.1:6783");
    all.push(newcomer);
    let at = |me: usize| replica(me, &all, &[], 1);
    // No route to 3 yet (one-sided), so the data path's trees cannot carry its record on...
    assert!(!routes::compute(&at(1)).unicast.contains_key(&name(3)));
    // ... but gossip's relay tree does: 1 passes it to 2, 2 (the end of the line) to nobody.
    assert_eq!(routes::relay_children(&at(1), name(3)), vec![name(2)]);
    assert!(routes::relay_children(&at(2), name(3)).is_empty());
    // A peer we hold no record of has no tree.
    assert!(routes::relay_children(&at(1), name(7)).is_empty());
}

#[test]
fn a_neighbour_that_lists_a_connection_to_the_origin_is_not_relayed_to() {
    // A line 0-1-2, and 2 has just connected to 0 too: its record lists 0, the copy of 0's
    // record everyone holds does not list 2 yet. 2 takes 0's gossip from 0 only: 1 does not
    // pass it on to 2 (2 would refuse it).
    let edges = BTreeSet::from([(0, 1), (1, 2)]);
    let mut all = records(3, &edges);
    let two = all.iter_mut().rev().find(|p| p.name == name(2)).unwrap();
    two.connections.extend(connection_to(0, "10.0.0.1:6783"));
    two.connections.sort();
    let at = |me: usize| replica(me, &all, &[], 1);
    assert!(routes::relay_children(&at(1), name(0)).is_empty());
    // Nor 2's to 0 (2's record lists 0); 1's own gossip still goes to both.
    assert!(routes::relay_children(&at(1), name(2)).is_empty());
    assert_eq!(routes::relay_children(&at(1), name(1)).len(), 2);
}

#[test]
fn a_broken_connection_is_relayed_to_its_far_end_whose_stale_record_still_lists_it() {
    // A triangle 0, 1, 2 whose link 0-2 breaks: 0 notices first and publishes its record
    // without 2. 1 still holds 2's record listing 0 (2 has not noticed yet, or its change
    // is on the way), yet 2 must hear 0's change from 1: until it does it routes to 0 over
    // the dead link.
    let edges = BTreeSet::from([(0, 1), (0, 2), (1, 2)]);
    let all = records(3, &edges);
    let mut at_one = replica(1, &all, &[], 1);
    assert!(
        routes::relay_children(&at_one, name(0)).is_empty(),
        "0 reaches 2 itself"
    );
    let mut without_two = at_one.peer(&name(0)).unwrap().clone();
    without_two.version += 1;
    without_two.connections.retain(|c| c.remote != name(2));
    at_one.merge(&[without_two.clone()]).unwrap();
    assert!(
        at_one.lists_connection(name(2), name(0)),
        "2's record is the stale one"
    );
    assert_eq!(routes::relay_children(&at_one, name(0)), vec![name(2)]);
    // The same when the change came as a change, not as the record.
    let mut by_change = replica(1, &all, &[], 1);
    let change = without_two.delta_from(by_change.peer(&name(0)).unwrap());
    by_change.apply_delta(&change).unwrap();
    assert_eq!(routes::relay_children(&by_change, name(0)), vec![name(2)]);
    // 0's next change says nothing about 2: 2's record counts again (2 heard of the break).
    let mut later = without_two;
    later.version += 1;
    later.nickname = "renamed".into();
    at_one.merge(&[later]).unwrap();
    assert!(routes::relay_children(&at_one, name(0)).is_empty());
}

#[test]
fn in_a_full_mesh_only_the_origin_relays() {
    let edges: BTreeSet<(usize, usize)> = (0..5)
        .flat_map(|a| ((a + 1)..5).map(move |b| (a, b)))
        .collect();
    let all = records(5, &edges);
    for me in 0..5 {
        let t = replica(me, &all, &[], 1);
        for origin in 0..5 {
            let children = routes::relay_children(&t, name(origin));
            if origin == me {
                assert_eq!(children.len(), 4, "the origin sends to every neighbour");
            } else {
                assert!(
                    children.is_empty(),
                    "{me} relays {origin}'s gossip: {children:?}"
                );
            }
        }
    }
}

#[test]
fn malformed_gossip_changes_nothing() {
    let me = PeerInfo::new(name(0), "a".into(), 1, ShortId::new(1).unwrap());
    let mut t = Topology::new(me);
    let good = PeerInfo::new(name(1), "b".into(), 2, ShortId::new(2).unwrap());
    let mut bad = PeerInfo::new(name(2), "c".into(), 3, ShortId::new(3).unwrap());
    bad.connections = connection_to(2, "127.0.0.1:9");
    let before = t.clone();
    assert!(t.merge(&[good, bad]).is_err());
    assert_eq!(t, before);
}

#[test]
fn a_restarted_peer_raises_its_version_past_its_earlier_run() {
    let mut old = PeerInfo::new(name(0), "a".into(), 1, ShortId::new(1).unwrap());
    old.version = 50;
    let fresh = PeerInfo::new(name(0), "a".into(), 2, ShortId::new(1).unwrap());
    let mut t = Topology::new(fresh);
    let out = t.merge(&[old]).unwrap();
    assert!(out.ourself_bumped);
    assert_eq!(t.ourself().version, 51);
    assert_eq!(t.ourself().uid, 2);
}

#[test]
fn unreachable_peers_are_collected() {
    let edges = BTreeSet::from([(0, 1)]);
    let mut all = records(2, &edges);
    all.push(PeerInfo::new(
        name(5),
        "lonely".into(),
        9,
        ShortId::new(5).unwrap(),
    ));
    let mut t = replica(0, &all, &[], 2);
    assert_eq!(t.len(), 3);
    assert_eq!(t.garbage_collect(), vec![name(5)]);
    assert_eq!(t.len(), 2);
}
