//! Routes computed from the topology: shortest-path next hops for unicast and, per
//! source, the neighbours a broadcast is passed on to.
//!
//! Every peer runs the same deterministic breadth-first search (neighbours in name order,
//! over connections both ends publish as established), so every peer computes the same
//! trees: unicast never loops and each broadcast reaches each peer exactly once.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::graph::{listed_indices, Graph, Search, NO_PARENT};
use super::peer_name::PeerName;
use super::topology::{PeerInfo, Topology};

/// Routes as seen from one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Routes {
    /// Destination → the neighbour to hand frames for it to (the destination itself when
    /// directly connected). Unreachable peers are absent; we are absent.
    pub unicast: BTreeMap<PeerName, PeerName>,
    /// Source of a broadcast (ourselves included) → the neighbours we pass it on to.
    pub broadcast: BTreeMap<PeerName, Vec<PeerName>>,
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
    // Over indices (peers in name order): a flag per peer seen, no map per connection.
    let infos: Vec<&PeerInfo> = topology.peers().collect();
    let names: Vec<PeerName> = infos.iter().map(|p| p.name).collect();
    let (Ok(start), Ok(us)) = (names.binary_search(&origin), names.binary_search(&me)) else {
        return Vec::new();
    };
    let mut seen = vec![false; names.len()];
    seen[start] = true;
    let mut unseen = names.len() - 1;
    let mut queue = VecDeque::from([start]);
    let mut children = Vec::new();
    let mut remotes = Vec::new();
    while let Some(node) = queue.pop_front() {
        if unseen == 0 {
            break;
        }
        // Connection lists are sorted by remote: every peer visits in the same order.
        listed_indices(&names, &infos[node].connections, false, &mut remotes);
        for &next in &remotes {
            if !seen[next] {
                seen[next] = true;
                unseen -= 1;
                if node == us {
                    children.push(names[next]);
                }
                queue.push_back(next);
            }
        }
        if node == us {
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
    let (mut parents, mut search) = (Vec::new(), Search::default());
    graph.bfs_parents(me, None, &mut parents, None, &mut search);
    let ours = parents.clone();
    let mut unicast = BTreeMap::new();
    let mut broadcast = BTreeMap::new();
    broadcast.insert(graph.name(me), graph.children(&ours, me));
    for dst in 0..graph.len() {
        if ours[dst] == NO_PARENT {
            continue;
        }
        let mut hop = dst;
        while ours[hop] != me {
            hop = ours[hop];
        }
        unicast.insert(graph.name(dst), graph.name(hop));
        // Only our children in its tree are wanted: the search stops once they are found.
        graph.bfs_parents(dst, Some(me), &mut parents, None, &mut search);
        broadcast.insert(graph.name(dst), graph.children(&parents, me));
    }
    Routes { unicast, broadcast }
}
