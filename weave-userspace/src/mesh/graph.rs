//! The topology as a graph over indices, for the searches routes and trust checks make
//! over and over while a large mesh forms: peers in name order, each one's neighbours over
//! connections both ends publish as established, as a row of bits.
//!
//! A breadth-first search visits a node's neighbours in name order and takes, for each
//! node, the first node in the queue that reaches it as its parent: every peer that runs
//! it over the same records gets the same trees. With rows of bits, expanding a node costs
//! a word per 64 peers, not a look-up per connection.

use std::collections::{BTreeMap, VecDeque};

use super::peer_name::PeerName;
use super::topology::{ConnectionSummary, Topology};

/// The indices in `names` (sorted) of the remotes that `connections` (sorted by remote)
/// list, established ones only when `established_only`, in that order, into `out`; remotes
/// not in `names` are left out. A few connections are searched for, many found in one walk
/// along the names.
pub fn listed_indices(
    names: &[PeerName],
    connections: &[ConnectionSummary],
    established_only: bool,
    out: &mut Vec<usize>,
) {
    out.clear();
    let listed = connections
        .iter()
        .filter(|c| c.established || !established_only);
    if connections.len() * 8 < names.len() {
        out.extend(listed.filter_map(|c| names.binary_search(&c.remote).ok()));
        return;
    }
    let mut k = 0;
    for c in listed {
        while k < names.len() && names[k] < c.remote {
            k += 1;
        }
        if k < names.len() && names[k] == c.remote {
            out.push(k);
        }
    }
}

/// Marks a node without a parent in a breadth-first tree.
pub const NO_PARENT: usize = usize::MAX;

/// One bit per ordered pair of `n` nodes, a row of whole words per node.
struct BitMatrix {
    row_words: usize,
    words: Vec<u64>,
}

impl BitMatrix {
    fn new(n: usize) -> Self {
        let row_words = n.div_ceil(64);
        Self {
            row_words,
            words: vec![0; n * row_words],
        }
    }

    fn set(&mut self, row: usize, column: usize) {
        self.words[row * self.row_words + column / 64] |= 1 << (column % 64);
    }

    fn get(&self, row: usize, column: usize) -> bool {
        self.words[row * self.row_words + column / 64] & (1 << (column % 64)) != 0
    }

    fn row(&self, row: usize) -> &[u64] {
        &self.words[row * self.row_words..(row + 1) * self.row_words]
    }
}

/// The peers of a topology and the connections both ends publish as established.
pub struct Graph {
    names: Vec<PeerName>,
    adjacency: BitMatrix,
}

/// Reusable buffers of [`Graph::bfs_parents`].
#[derive(Default)]
pub struct Search {
    queue: VecDeque<usize>,
    unvisited: Vec<u64>,
}

impl Graph {
    pub fn new(topology: &Topology) -> Self {
        let names: Vec<PeerName> = topology.peers().map(|p| p.name).collect();
        let n = names.len();
        // Connection lists are sorted by remote, and so are the names: one merge walk per
        // record finds the indices, and a bit per (peer, remote) answers whether the other
        // end lists the connection too, without a search per connection.
        let mut listed = BitMatrix::new(n);
        let published: Vec<Vec<usize>> = topology
            .peers()
            .enumerate()
            .map(|(i, p)| {
                let mut remotes = Vec::with_capacity(p.connections.len());
                listed_indices(&names, &p.connections, true, &mut remotes);
                remotes.retain(|&k| k != i);
                for &k in &remotes {
                    listed.set(i, k);
                }
                remotes
            })
            .collect();
        let mut adjacency = BitMatrix::new(n);
        for (i, remotes) in published.iter().enumerate() {
            for &j in remotes.iter().filter(|&&j| listed.get(j, i)) {
                adjacency.set(i, j);
            }
        }
        Self { names, adjacency }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, index: usize) -> PeerName {
        self.names[index]
    }

    pub fn index(&self, name: &PeerName) -> Option<usize> {
        self.names.binary_search(name).ok()
    }

    /// The breadth-first tree rooted at `root`: each node's parent (`NO_PARENT` for the
    /// root and for nodes it does not reach), and, in `hops` when given, each node's
    /// distance from the root (`u32::MAX` where not reached). Stops as soon as every node
    /// has a parent: in a dense mesh (everyone connected to everyone) that is after the
    /// root's own neighbours. With `until`, also once that node's neighbours are visited:
    /// its children in the tree are all found then (the rest of the tree is left
    /// unfinished).
    pub fn bfs_parents(
        &self,
        root: usize,
        until: Option<usize>,
        parents: &mut Vec<usize>,
        mut hops: Option<&mut Vec<u32>>,
        search: &mut Search,
    ) {
        let n = self.names.len();
        parents.clear();
        parents.resize(n, NO_PARENT);
        if let Some(hops) = hops.as_deref_mut() {
            hops.clear();
            hops.resize(n, u32::MAX);
            hops[root] = 0;
        }
        let unvisited = &mut search.unvisited;
        unvisited.clear();
        unvisited.resize(self.adjacency.row_words, !0);
        if !n.is_multiple_of(64) {
            if let Some(last) = unvisited.last_mut() {
                *last = (1 << (n % 64)) - 1;
            }
        }
        unvisited[root / 64] &= !(1 << (root % 64));
        let queue = &mut search.queue;
        queue.clear();
        queue.push_back(root);
        let mut missing = n.saturating_sub(1);
        while let Some(node) = queue.pop_front() {
            if missing == 0 {
                break;
            }
            let next_hop = hops.as_deref().map_or(0, |h| h[node] + 1);
            for (w, (&row, free)) in self
                .adjacency
                .row(node)
                .iter()
                .zip(unvisited.iter_mut())
                .enumerate()
            {
                let mut found = row & *free;
                *free &= !found;
                while found != 0 {
                    let next = w * 64 + found.trailing_zeros() as usize;
                    found &= found - 1;
                    parents[next] = node;
                    if let Some(hops) = hops.as_deref_mut() {
                        hops[next] = next_hop;
                    }
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
    pub fn children(&self, parents: &[usize], me: usize) -> Vec<PeerName> {
        parents
            .iter()
            .enumerate()
            .filter(|(_, p)| **p == me)
            .map(|(i, _)| self.names[i])
            .collect()
    }

    /// Hops from `origin` to every peer it reaches (itself at 0).
    pub fn hops_from(&self, origin: PeerName) -> BTreeMap<PeerName, u32> {
        let Some(root) = self.index(&origin) else {
            return BTreeMap::new();
        };
        let (mut parents, mut hops) = (Vec::new(), Vec::new());
        self.bfs_parents(
            root,
            None,
            &mut parents,
            Some(&mut hops),
            &mut Search::default(),
        );
        hops.iter()
            .enumerate()
            .filter(|(_, h)| **h != u32::MAX)
            .map(|(i, h)| (self.names[i], *h))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::peer_name::ShortId;
    use crate::mesh::topology::{ConnectionSummary, PeerInfo};

    fn name(i: usize) -> PeerName {
        PeerName::from_bytes([0x02, 0, 0, 0, (i >> 8) as u8, i as u8])
    }

    /// A topology of `n` peers (seen from peer 0) whose records list `edges`, both ends
    /// (an edge listed by one end only, `one_sided`, is no connection of the graph).
    fn topology(n: usize, edges: &[(usize, usize)], one_sided: &[(usize, usize)]) -> Topology {
        let infos: Vec<PeerInfo> = (0..n)
            .map(|i| {
                let listed = edges
                    .iter()
                    .flat_map(|&(a, b)| [(a, b), (b, a)])
                    .chain(one_sided.iter().copied())
                    .filter(|&(a, _)| a == i)
                    .map(|(_, b)| b);
                let mut connections: Vec<ConnectionSummary> = listed
                    .map(|j| ConnectionSummary {
                        remote: name(j),
                        address: "10.0.0.1:6783".parse().unwrap(),
                        outbound: i < j,
                        established: true,
                    })
                    .collect();
                connections.sort();
                connections.dedup();
                let mut info = PeerInfo::new(
                    name(i),
                    format!("h{i}"),
                    1,
                    ShortId::new(i as u16 + 1).unwrap(),
                );
                info.connections = connections;
                info
            })
            .collect();
        let mut t = Topology::new(infos[0].clone());
        t.merge(&infos).unwrap();
        t
    }

    /// The breadth-first search as plain adjacency lists walk it (the specification).
    fn reference_parents(n: usize, edges: &[(usize, usize)], root: usize) -> Vec<usize> {
        let mut adjacency = vec![Vec::new(); n];
        for &(a, b) in edges {
            adjacency[a].push(b);
            adjacency[b].push(a);
        }
        for list in &mut adjacency {
            list.sort_unstable();
            list.dedup();
        }
        let mut parents = vec![NO_PARENT; n];
        let mut queue = VecDeque::from([root]);
        while let Some(node) = queue.pop_front() {
            for &next in &adjacency[node] {
                if next != root && parents[next] == NO_PARENT {
                    parents[next] = node;
                    queue.push_back(next);
                }
            }
        }
        parents
    }

    #[test]
    fn bit_rows_give_the_trees_of_a_plain_search() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        // Sizes below, at and across word boundaries; sparse and dense.
        for &(n, edge_count) in &[(5, 6), (64, 200), (65, 90), (130, 400), (130, 4000)] {
            let edges: Vec<(usize, usize)> = (0..edge_count)
                .map(|_| (random(n), random(n)))
                .filter(|(a, b)| a != b)
                .collect();
            let graph = Graph::new(&topology(n, &edges, &[]));
            let (mut parents, mut hops, mut search) = (Vec::new(), Vec::new(), Search::default());
            for root in [0, n / 2, n - 1] {
                graph.bfs_parents(root, None, &mut parents, Some(&mut hops), &mut search);
                assert_eq!(
                    parents,
                    reference_parents(n, &edges, root),
                    "n={n} root={root}"
                );
                // Hops follow the parents.
                for (i, &p) in parents.iter().enumerate() {
                    if p != NO_PARENT {
                        assert_eq!(hops[i], hops[p] + 1);
                    } else if i != root {
                        assert_eq!(hops[i], u32::MAX);
                    }
                }
            }
        }
    }

    #[test]
    fn a_connection_one_end_lists_is_no_edge_and_hops_count_the_rest() {
        // A line 0-1-2-3, and 0 claiming a connection to 3 that 3 does not list.
        let t = topology(4, &[(0, 1), (1, 2), (2, 3)], &[(0, 3)]);
        let hops = Graph::new(&t).hops_from(name(0));
        let expected: BTreeMap<PeerName, u32> = (0..4).map(|i| (name(i), i as u32)).collect();
        assert_eq!(hops, expected);
        assert_eq!(t.hops_from(name(3)).get(&name(0)), Some(&3));
        assert!(Graph::new(&t).hops_from(name(9)).is_empty());
    }

    #[test]
    fn a_search_until_a_node_stops_once_its_children_are_found() {
        // 0 - 1 - 2 - 3 - 4: from 0 until 2, node 3 (2's child) has its parent, 4 not yet.
        let t = topology(5, &[(0, 1), (1, 2), (2, 3), (3, 4)], &[]);
        let graph = Graph::new(&t);
        let mut parents = Vec::new();
        graph.bfs_parents(0, Some(2), &mut parents, None, &mut Search::default());
        assert_eq!(parents[3], 2);
        assert_eq!(parents[4], NO_PARENT);
        assert_eq!(graph.children(&parents, 2), vec![name(3)]);
    }

    #[test]
    fn listed_remotes_are_found_by_search_and_by_walk_alike() {
        // The even peers 0, 2, ..., 98.
        let names: Vec<PeerName> = (0..50).map(|i| name(2 * i)).collect();
        let listing = |remotes: &[usize]| -> Vec<ConnectionSummary> {
            remotes
                .iter()
                .map(|&r| ConnectionSummary {
                    remote: name(r),
                    address: "10.0.0.1:6783".parse().unwrap(),
                    outbound: true,
                    established: r % 4 == 0,
                })
                .collect()
        };
        let mut out = Vec::new();
        // Few connections (searched for): odd remotes have no record.
        listed_indices(&names, &listing(&[3, 4, 98]), false, &mut out);
        assert_eq!(out, [2, 49]);
        // Many (one walk): every remote from 0 to 99.
        let all: Vec<usize> = (0..100).collect();
        listed_indices(&names, &listing(&all), false, &mut out);
        assert_eq!(out, (0..50).collect::<Vec<usize>>());
        // Established ones only: the multiples of 4.
        listed_indices(&names, &listing(&all), true, &mut out);
        assert_eq!(out, (0..50).step_by(2).collect::<Vec<usize>>());
    }
}
