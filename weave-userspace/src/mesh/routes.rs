//! Routes computed from the topology: shortest-path next hops for unicast and, per
//! source, the neighbours a broadcast is passed on to.
//!
//! Every peer runs the same deterministic breadth-first search (neighbours in name order,
//! over connections both ends publish as established), so every peer computes the same
//! trees: unicast never loops and each broadcast reaches each peer exactly once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

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

/// The topology as a graph over indices: peers in name order, each one's neighbours over
/// connections both ends publish as established, in name order.
struct Graph {
    names: Vec<PeerName>,
    adjacency: Vec<Vec<usize>>,
}

/// One bit per ordered pair of `n` nodes.
struct BitMatrix {
    n: usize,
    words: Vec<u64>,
}

impl BitMatrix {
    fn new(n: usize) -> Self {
        Self {
            n,
            words: vec![0; (n * n).div_ceil(64)],
        }
    }

    fn set(&mut self, row: usize, column: usize) {
        let bit = row * self.n + column;
        self.words[bit / 64] |= 1 << (bit % 64);
    }

    fn get(&self, row: usize, column: usize) -> bool {
        let bit = row * self.n + column;
        self.words[bit / 64] & (1 << (bit % 64)) != 0
    }
}

/// Marks a node without a parent in a breadth-first tree.
const NO_PARENT: usize = usize::MAX;

impl Graph {
    fn new(topology: &Topology) -> Self {
        let names: Vec<PeerName> = topology.peers().map(|p| p.name).collect();
        let n = names.len();
        // Each peer's established connections as indices, in name order. Connection lists
        // are sorted by remote, and so are the names: one merge walk per record finds the
        // indices, and a bit per (peer, remote) answers whether the other end lists the
        // connection too, without a search per connection (routes are computed over and
        // over while a large mesh forms: with 250 peers, searches took 1.5 ms a time).
        let mut listed = BitMatrix::new(n);
        let published: Vec<Vec<usize>> = topology
            .peers()
            .enumerate()
            .map(|(i, p)| {
                let mut k = 0;
                let mut remotes = Vec::with_capacity(p.connections.len());
                for c in p.connections.iter().filter(|c| c.established) {
                    while k < n && names[k] < c.remote {
                        k += 1;
                    }
                    if k < n && names[k] == c.remote && k != i {
                        remotes.push(k);
                        listed.set(i, k);
                    }
                }
                remotes
            })
            .collect();
        let adjacency = published
            .into_iter()
            .enumerate()
            .map(|(i, mut remotes)| {
                remotes.retain(|&j| listed.get(j, i));
                remotes
            })
            .collect();
        Self { names, adjacency }
    }

    fn index(&self, name: &PeerName) -> Option<usize> {
        self.names.binary_search(name).ok()
    }

    /// The breadth-first tree rooted at `root`: each node's parent (`NO_PARENT` for the
    /// root and for nodes it does not reach). Neighbours are visited in name order.
    /// Stops as soon as every node has a parent: in a dense mesh (everyone connected to
    /// everyone) that is after the root's own neighbours, so a tree costs O(n), not O(edges).
    /// With `until`, also once that node's neighbours are visited: its children in the tree
    /// are all found then (the rest of the tree is left unfinished).
    fn bfs_parents(
        &self,
        root: usize,
        until: Option<usize>,
        parents: &mut Vec<usize>,
        queue: &mut VecDeque<usize>,
    ) {
        parents.clear();
        parents.resize(self.names.len(), NO_PARENT);
        queue.clear();
        queue.push_back(root);
        let mut missing = self.names.len().saturating_sub(1);
        while let Some(node) = queue.pop_front() {
            if missing == 0 {
                break;
            }
            for &next in &self.adjacency[node] {
                if next != root && parents[next] == NO_PARENT {
                    parents[next] = node;
                    queue.push_back(next);
                    missing -= 1;
                }
            }
            if until == Some(node) {
                break;
            }
        }
    }

    /// The nodes whose parent is `me` in a tree.
    fn children(&self, parents: &[usize], me: usize) -> Vec<PeerName> {
        parents
            .iter()
            .enumerate()
            .filter(|(_, p)| **p == me)
            .map(|(i, _)| self.names[i])
            .collect()
    }
}

/// The neighbours we pass gossip from `origin` on to (its records and record changes, the
/// broadcasts of other subsystems): our children in `origin`'s breadth-first tree over
/// every connection peers publish, established or not, acknowledged by the other end or
/// not (Weave mesh's "broadcast all" routes). Unlike the data path's trees, which wait for
/// both ends to publish a connection as established, this tree takes a new peer's record
/// on at once, before the routes it makes possible are known everywhere. Forwarding only
/// what improved a view keeps it from looping while views differ.
pub fn relay_children(topology: &Topology, origin: PeerName) -> Vec<PeerName> {
    let me = topology.ourself().name;
    if topology.peer(&origin).is_none() {
        return Vec::new();
    }
    // A neighbour with a connection to the origin, as either of them publishes it, takes
    // the origin's gossip from the origin only (its records: `Topology::merge_from`): it is
    // no child of ours. The common case in a full mesh, also while it forms (when the
    // origin's record does not list every new connection yet): none of our neighbours is
    // left, no search. But the neighbour's record may be the stale one: when the origin's
    // latest change took out its connection to the neighbour, that connection broke, and
    // the neighbour gets the change from us (its own record saying otherwise is merely
    // older news: until it hears of the break it routes over a dead link).
    let beside_origin = |remote: PeerName| {
        remote == origin
            || topology.lists_connection(origin, remote)
            || (topology.lists_connection(remote, origin) && !topology.just_dropped(origin, remote))
    };
    if origin != me
        && topology
            .ourself()
            .connections
            .iter()
            .all(|c| beside_origin(c.remote))
    {
        return Vec::new();
    }
    let mut seen = BTreeSet::from([origin]);
    let mut queue = VecDeque::from([origin]);
    let mut children = Vec::new();
    while let Some(node) = queue.pop_front() {
        if seen.len() == topology.len() {
            break;
        }
        let Some(info) = topology.peer(&node) else {
            continue;
        };
        // Connection lists are sorted by remote: every peer visits in the same order.
        for c in &info.connections {
            if topology.peer(&c.remote).is_some() && seen.insert(c.remote) {
                if node == me {
                    children.push(c.remote);
                }
                queue.push_back(c.remote);
            }
        }
        if node == me {
            // Our children are those we found: the rest of the tree is not ours to send to.
            break;
        }
    }
    if origin != me {
        children.retain(|c| !beside_origin(*c));
    }
    children
}

/// Computes our routes from the topology.
pub fn compute(topology: &Topology) -> Routes {
    let graph = Graph::new(topology);
    let Some(me) = graph.index(&topology.ourself().name) else {
        return Routes::default();
    };
    let (mut parents, mut queue) = (Vec::new(), VecDeque::new());
    graph.bfs_parents(me, None, &mut parents, &mut queue);
    let ours = parents.clone();
    let mut unicast = BTreeMap::new();
    let mut broadcast = BTreeMap::new();
    broadcast.insert(graph.names[me], graph.children(&ours, me));
    for dst in 0..graph.names.len() {
        if ours[dst] == NO_PARENT {
            continue;
        }
        let mut hop = dst;
        while ours[hop] != me {
            hop = ours[hop];
        }
        unicast.insert(graph.names[dst], graph.names[hop]);
        // Only our children in its tree are wanted: the search stops once they are found.
        graph.bfs_parents(dst, Some(me), &mut parents, &mut queue);
        broadcast.insert(graph.names[dst], graph.children(&parents, me));
    }
    Routes { unicast, broadcast }
}
