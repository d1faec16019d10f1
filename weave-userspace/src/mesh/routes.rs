//! Routes computed from the topology: shortest-path next hops for unicast and, per
//! source, the neighbours a broadcast is passed on to.
//!
//! Every peer runs the same deterministic breadth-first search (neighbours in name order,
//! over connections both ends publish as established), so every peer computes the same
//! trees: unicast never loops and each broadcast reaches each peer exactly once.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::peer_name::PeerName;
use super::topology::Topology;

/// Routes as seen from one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Routes {
    /// Destination → the neighbour to hand frames for it to (the destination itself when
    /// directly connected). Unreachable peers are absent; we are absent.
    pub unicast: BTreeMap<PeerName, PeerName>,
    /// Source of a broadcast (ourselves included) → the neighbours we pass it on to.
    pub broadcast: BTreeMap<PeerName, Vec<PeerName>>,
}

/// Neighbours over connections both ends publish as established, each list in name order.
fn adjacency(topology: &Topology) -> BTreeMap<PeerName, Vec<PeerName>> {
    topology
        .peers()
        .map(|p| (p.name, topology.symmetric_neighbours(&p.name)))
        .collect()
}

/// The breadth-first tree rooted at `root`: node → parent (root absent).
fn bfs_parents(
    adjacency: &BTreeMap<PeerName, Vec<PeerName>>,
    root: PeerName,
) -> BTreeMap<PeerName, PeerName> {
    let mut parents = BTreeMap::new();
    let mut queue = VecDeque::from([root]);
    while let Some(node) = queue.pop_front() {
        for &next in adjacency.get(&node).map(Vec::as_slice).unwrap_or_default() {
            if next != root && !parents.contains_key(&next) {
                parents.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    parents
}

/// Our children in the broadcast tree of `source`, computed afresh from the topology (for
/// a source that the last computed routes do not know yet).
pub fn children_in_tree(topology: &Topology, source: PeerName) -> Vec<PeerName> {
    let me = topology.ourself().name;
    bfs_parents(&adjacency(topology), source)
        .into_iter()
        .filter(|(_, parent)| *parent == me)
        .map(|(child, _)| child)
        .collect()
}

/// Computes our routes from the topology.
pub fn compute(topology: &Topology) -> Routes {
    let me = topology.ourself().name;
    let adjacency = adjacency(topology);
    let parents = bfs_parents(&adjacency, me);
    let mut unicast = BTreeMap::new();
    for &dst in parents.keys() {
        let mut hop = dst;
        while parents[&hop] != me {
            hop = parents[&hop];
        }
        unicast.insert(dst, hop);
    }

    let mut broadcast = BTreeMap::new();
    let mut sources: Vec<PeerName> = vec![me];
    sources.extend(parents.keys().copied());
    for source in sources {
        let tree = if source == me {
            parents.clone()
        } else {
            bfs_parents(&adjacency, source)
        };
        let children: Vec<PeerName> = tree
            .iter()
            .filter(|(_, parent)| **parent == me)
            .map(|(child, _)| *child)
            .collect();
        broadcast.insert(source, children);
    }
    Routes { unicast, broadcast }
}
