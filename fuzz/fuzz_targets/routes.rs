//! Routes computed from a topology: a graph from the input (up to 8 peers, each listing
//! connections, established or not, maybe one-sided), seen by every peer alike.
//!
//! Invariants: nothing panics; a unicast next hop is a neighbour over a connection both ends
//! publish as established; following next hops from peer to peer reaches the destination
//! without a loop, through peers that all route it; a broadcast from any source passed on
//! along every peer's broadcast children reaches every peer the source reaches, each exactly
//! once; so does gossip relayed along `relay_children` (over every published connection,
//! the source sending its own on every connection it has, published by either end).
#![no_main]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use weave_router::mesh::peer_name::PeerName;
use weave_router::mesh::routes::{compute, relay_children, Routes};
use weave_router::mesh::topology::{ConnectionSummary, PeerInfo, Topology};
use weave_router_fuzz::{addr, peer, wire_short_id};

const MAX_PEERS: u8 = 8;

fuzz_target!(|data: &[u8]| {
    let Some((&count, edges)) = data.split_first() else {
        return;
    };
    let n = 1 + count % MAX_PEERS;
    let names: Vec<PeerName> = (1..=n).map(peer).collect();
    // Each pair of bytes: a connection from one peer to another, bit 7 of the first: established.
    let mut lists: BTreeMap<PeerName, BTreeMap<PeerName, bool>> =
        names.iter().map(|p| (*p, BTreeMap::new())).collect();
    for pair in edges.chunks_exact(2).take(64) {
        let (from, to) = (
            names[usize::from(pair[0] & 0x7f) % names.len()],
            names[usize::from(pair[1]) % names.len()],
        );
        if from != to {
            lists
                .get_mut(&from)
                .expect("a peer")
                .insert(to, pair[0] & 0x80 != 0);
        }
    }
    let records: Vec<PeerInfo> = names
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut info = PeerInfo::new(*p, format!("p{i}"), 1, wire_short_id(i as u16))
                .with_address(addr(i as u8 + 1), 6783);
            info.connections = lists[p]
                .iter()
                .map(|(remote, established)| ConnectionSummary {
                    remote: *remote,
                    address: SocketAddr::from((addr(1), 6783)),
                    outbound: true,
                    established: *established,
                })
                .collect();
            info
        })
        .collect();
    // Every peer's view: its own record and everyone else's, the same records everywhere.
    let views: BTreeMap<PeerName, Topology> = records
        .iter()
        .map(|me| {
            let mut t = Topology::new(me.clone());
            let others: Vec<PeerInfo> = records
                .iter()
                .filter(|r| r.name != me.name)
                .cloned()
                .collect();
            t.merge(&others).expect("valid records");
            (me.name, t)
        })
        .collect();
    let routes: BTreeMap<PeerName, Routes> = views.iter().map(|(p, t)| (*p, compute(t))).collect();
    let symmetric = |a: PeerName, b: PeerName| {
        lists[&a].get(&b) == Some(&true) && lists[&b].get(&a) == Some(&true)
    };
    // Who reaches whom over symmetric established connections.
    let reach = |from: PeerName, edge: &dyn Fn(PeerName, PeerName) -> bool| {
        let mut seen = BTreeSet::from([from]);
        let mut queue = VecDeque::from([from]);
        while let Some(x) = queue.pop_front() {
            for y in &names {
                if edge(x, *y) && seen.insert(*y) {
                    queue.push_back(*y);
                }
            }
        }
        seen
    };
    for (me, r) in &routes {
        let reachable = reach(*me, &symmetric);
        assert!(!r.unicast.contains_key(me));
        for dst in &names {
            assert_eq!(
                r.unicast.contains_key(dst),
                dst != me && reachable.contains(dst)
            );
        }
        for (dst, hop) in &r.unicast {
            assert!(
                symmetric(*me, *hop),
                "{me} routes {dst} via {hop}, not a neighbour"
            );
            // Hop by hop to the destination, without a loop.
            let mut at = *hop;
            let mut steps = 1;
            while at != *dst {
                at = routes[&at].unicast[dst];
                steps += 1;
                assert!(steps <= names.len(), "unicast from {me} to {dst} loops");
            }
        }
    }
    // Broadcasts along the trees, and gossip along relay children.
    for source in &names {
        let reachable = reach(*source, &symmetric);
        let mut got = BTreeMap::from([(*source, 1)]);
        let mut queue = VecDeque::from([*source]);
        while let Some(x) = queue.pop_front() {
            for child in routes[&x].broadcast.get(source).into_iter().flatten() {
                assert!(
                    symmetric(x, *child),
                    "{x} passes {source}'s broadcast to a non-neighbour"
                );
                *got.entry(*child).or_insert(0) += 1;
                if got[child] == 1 {
                    queue.push_back(*child);
                }
            }
        }
        assert!(
            got.values().all(|&c| c == 1),
            "a broadcast from {source} arrived twice: {got:?}"
        );
        assert_eq!(got.keys().copied().collect::<BTreeSet<_>>(), reachable);

        let published = |a: PeerName, b: PeerName| lists[&a].contains_key(&b);
        let reachable = reach(*source, &published);
        let mut got = BTreeMap::from([(*source, 1)]);
        let mut queue = VecDeque::from([*source]);
        while let Some(x) = queue.pop_front() {
            // The source publishes its own records on every connection it has: those its
            // record lists, and those whose record lists it (a connection it has not
            // published yet). A peer with a connection to the source takes the source's
            // records from the source only, so the others leave it out.
            let mut sends = relay_children(&views[&x], *source);
            if x == *source {
                for p in &names {
                    if *p != x && published(*p, x) && !sends.contains(p) {
                        sends.push(*p);
                    }
                }
            }
            for child in sends {
                assert!(
                    published(x, child) || (x == *source && published(child, x)),
                    "{x} relays to {child} it has no connection to"
                );
                *got.entry(child).or_insert(0) += 1;
                if got[&child] == 1 {
                    queue.push_back(child);
                }
            }
        }
        assert!(
            got.values().all(|&c| c == 1),
            "gossip from {source} arrived twice: {got:?}"
        );
        // Everyone the source reaches over published connections hears it (and a peer
        // connected to the source that the source has not published yet may too).
        let heard: BTreeSet<PeerName> = got.keys().copied().collect();
        assert!(
            heard.is_superset(&reachable),
            "gossip from {source} missed {:?}",
            reachable.difference(&heard).collect::<Vec<_>>()
        );
    }
});
