//! Where the sleeve sends a frame, as pure functions: a frame from the TAP (ours) to the
//! peer its destination MAC was learned behind — directly when the sleeve carries that peer,
//! else to the next hop of the unicast route — or, for broadcast and unknown destinations,
//! to every neighbour it carries; a routed frame received from a neighbour to the TAP, along
//! the route towards its destination, or on along its origin's broadcast tree.
//!
//! Neighbours that speak protocol version 5 (`relays`) get routed datagrams
//! ([`RouteHeader`]); older ones only frames of our own, unrouted, as before.

use std::collections::HashMap;

use super::packet::{DropReason, RouteHeader};

/// The routes the sleeve follows, in short IDs: destination → neighbour to hand frames
/// to, and broadcast source → our children in its tree (from the router's routes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routing {
    pub next_hop: HashMap<u16, u16>,
    pub children: HashMap<u16, Vec<u16>>,
}

/// What the sleeve knows of a neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// The sleeve carries its frames (else the fast path does, and it gets none here).
    pub carried: bool,
    /// It takes routed datagrams (protocol version 5).
    pub relays: bool,
}

/// One datagram to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Send {
    /// The frame as ours, to this neighbour.
    Direct(u16),
    /// The frame with a route header, to this neighbour.
    Routed(u16, RouteHeader),
}

/// Where a frame from the TAP goes. `owner`: the peer its destination MAC was learned
/// behind (`None` for broadcast, multicast and unknown MACs); `carried`: the neighbours the
/// sleeve carries, in a stable order.
pub fn from_tap(
    local: u16,
    owner: Option<u16>,
    neighbour: impl Fn(u16) -> Option<Neighbour>,
    carried: &[u16],
    routing: &Routing,
) -> Vec<Send> {
    if let Some(peer) = owner {
        if neighbour(peer).is_some_and(|n| n.carried) {
            return vec![Send::Direct(peer)];
        }
        if let Some(&hop) = routing.next_hop.get(&peer) {
            if hop != peer && neighbour(hop).is_some_and(|n| n.carried && n.relays) {
                let route = RouteHeader {
                    origin: local,
                    destination: peer,
                    hops_left: RouteHeader::MAX_HOPS,
                };
                return vec![Send::Routed(hop, route)];
            }
        }
    }
    // Our own broadcast: our neighbours are our children in our tree, each passes it on
    // along that tree.
    let broadcast = RouteHeader {
        origin: local,
        destination: local,
        hops_left: RouteHeader::MAX_HOPS,
    };
    carried
        .iter()
        .filter_map(|&peer| match neighbour(peer)? {
            n if !n.carried => None,
            n if n.relays => Some(Send::Routed(peer, broadcast)),
            _ => Some(Send::Direct(peer)),
        })
        .collect()
}

/// What to do with a routed frame received from neighbour `from`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Write it to the TAP (it is for us, or a broadcast).
    pub deliver: bool,
    /// Pass it on.
    pub forward: Vec<Send>,
    /// Why it went nowhere (counted).
    pub dropped: Option<DropReason>,
}

/// Where a routed frame from neighbour `from` goes.
pub fn received(
    local: u16,
    from: u16,
    route: RouteHeader,
    neighbour: impl Fn(u16) -> Option<Neighbour>,
    routing: &Routing,
) -> Received {
    let dropped = |reason| Received {
        dropped: Some(reason),
        ..Received::default()
    };
    if route.origin == local {
        return dropped(DropReason::Loop);
    }
    let onward = RouteHeader {
        hops_left: route.hops_left.saturating_sub(1),
        ..route
    };
    let relaying = |peer: u16| neighbour(peer).filter(|n| n.carried);
    if route.is_broadcast() {
        let children = routing
            .children
            .get(&route.origin)
            .map_or(&[][..], |c| &c[..]);
        let forward = if route.hops_left == 0 {
            Vec::new()
        } else {
            children
                .iter()
                .filter(|&&c| c != from && c != route.origin && c != local)
                .filter_map(|&c| match relaying(c)? {
                    n if n.relays => Some(Send::Routed(c, onward)),
                    _ => None,
                })
                .collect()
        };
        return Received {
            deliver: true,
            forward,
            dropped: None,
        };
    }
    if route.destination == local {
        return Received {
            deliver: true,
            ..Received::default()
        };
    }
    if route.hops_left == 0 {
        return dropped(DropReason::Loop);
    }
    let hop = match routing.next_hop.get(&route.destination) {
        Some(&hop) if hop != from => hop,
        _ => return dropped(DropReason::NoRoute),
    };
    // A neighbour on an older version cannot be told whose frame it is: not a next hop.
    match relaying(hop) {
        Some(n) if n.relays => Received {
            forward: vec![Send::Routed(hop, onward)],
            ..Received::default()
        },
        _ => dropped(DropReason::NoRoute),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u16 = 1;
    const B: u16 = 2;
    const C: u16 = 3;
    const D: u16 = 4;

    fn all_relay(peer: u16) -> Option<Neighbour> {
        (peer != 0).then_some(Neighbour {
            carried: true,
            relays: true,
        })
    }

    /// Routes at B in the line A–B–C.
    fn at_b() -> Routing {
        Routing {
            next_hop: HashMap::from([(A, A), (C, C)]),
            children: HashMap::from([(A, vec![C]), (C, vec![A]), (B, vec![A, C])]),
        }
    }

    /// Routes at A in the line A–B–C.
    fn at_a() -> Routing {
        Routing {
            next_hop: HashMap::from([(B, B), (C, B)]),
            children: HashMap::from([(A, vec![B])]),
        }
    }

    #[test]
    fn a_frame_for_a_peer_behind_a_neighbour_goes_to_that_neighbour_with_a_route() {
        let sends = from_tap(
            A,
            Some(C),
            |p| all_relay(p).filter(|_| p == B),
            &[B],
            &at_a(),
        );
        assert_eq!(
            sends,
            [Send::Routed(
                B,
                RouteHeader {
                    origin: A,
                    destination: C,
                    hops_left: RouteHeader::MAX_HOPS
                }
            )]
        );
        // A direct, carried peer gets it as ours.
        assert_eq!(
            from_tap(A, Some(B), all_relay, &[B], &at_a()),
            [Send::Direct(B)]
        );
    }

    #[test]
    fn our_broadcast_goes_to_each_carried_neighbour_routed_or_plain_as_it_speaks() {
        let old_c = |p| {
            Some(Neighbour {
                carried: p != D,
                relays: p != C,
            })
        };
        let sends = from_tap(A, None, old_c, &[B, C, D], &Routing::default());
        assert_eq!(
            sends,
            [
                Send::Routed(
                    B,
                    RouteHeader {
                        origin: A,
                        destination: A,
                        hops_left: RouteHeader::MAX_HOPS
                    }
                ),
                Send::Direct(C)
            ]
        );
    }

    #[test]
    fn a_relay_forwards_unicast_along_the_route_with_one_hop_less() {
        let route = RouteHeader {
            origin: A,
            destination: C,
            hops_left: 5,
        };
        let r = received(B, A, route, all_relay, &at_b());
        assert!(!r.deliver);
        assert_eq!(
            r.forward,
            [Send::Routed(
                C,
                RouteHeader {
                    hops_left: 4,
                    ..route
                }
            )]
        );
        // At the destination: delivered, not forwarded.
        let r = received(C, B, route, all_relay, &Routing::default());
        assert!(r.deliver && r.forward.is_empty());
    }

    #[test]
    fn a_broadcast_is_delivered_and_passed_to_the_origins_children_only() {
        let route = RouteHeader {
            origin: A,
            destination: A,
            hops_left: 3,
        };
        let r = received(B, A, route, all_relay, &at_b());
        assert!(r.deliver);
        assert_eq!(
            r.forward,
            [Send::Routed(
                C,
                RouteHeader {
                    hops_left: 2,
                    ..route
                }
            )]
        );
        // A leaf of A's tree delivers and stops.
        let r = received(C, B, route, all_relay, &Routing::default());
        assert!(r.deliver && r.forward.is_empty());
    }

    #[test]
    fn loops_and_dead_ends_are_dropped_and_counted() {
        let ours = RouteHeader {
            origin: B,
            destination: C,
            hops_left: 9,
        };
        assert_eq!(
            received(B, A, ours, all_relay, &at_b()).dropped,
            Some(DropReason::Loop)
        );
        let spent = RouteHeader {
            origin: A,
            destination: C,
            hops_left: 0,
        };
        assert_eq!(
            received(B, A, spent, all_relay, &at_b()).dropped,
            Some(DropReason::Loop)
        );
        let nowhere = RouteHeader {
            origin: A,
            destination: D,
            hops_left: 9,
        };
        assert_eq!(
            received(B, A, nowhere, all_relay, &at_b()).dropped,
            Some(DropReason::NoRoute)
        );
        // Routes that disagree point back where the frame came from: dropped, not bounced.
        let mut back = at_b();
        back.next_hop.insert(C, A);
        let to_c = RouteHeader {
            origin: A,
            destination: C,
            hops_left: 9,
        };
        assert_eq!(
            received(B, A, to_c, all_relay, &back).dropped,
            Some(DropReason::NoRoute)
        );
        // A next hop the sleeve does not carry, or that cannot take routed frames.
        let not_carried = |p| {
            Some(Neighbour {
                carried: p != C,
                relays: true,
            })
        };
        assert_eq!(
            received(B, A, to_c, not_carried, &at_b()).dropped,
            Some(DropReason::NoRoute)
        );
        let old = |p| {
            Some(Neighbour {
                carried: true,
                relays: p != C,
            })
        };
        assert_eq!(
            received(B, A, to_c, old, &at_b()).dropped,
            Some(DropReason::NoRoute)
        );
    }

    #[test]
    fn a_spent_broadcast_is_delivered_but_goes_no_further() {
        let route = RouteHeader {
            origin: A,
            destination: A,
            hops_left: 0,
        };
        let r = received(B, A, route, all_relay, &at_b());
        assert!(r.deliver && r.forward.is_empty());
    }
}
