//! Where the sleeve sends a frame, as pure functions: a frame from the TAP (ours) to the
//! peer its destination MAC was learned behind — directly when the sleeve carries that peer,
//! else to the next hop of the unicast route — or, for broadcast and unknown destinations,
//! to every neighbour it carries; a routed frame received from a neighbour to the TAP, along
//! the route towards its destination, or on along its origin's broadcast tree.
//!
//! Neighbours that speak protocol version 5 (`relays`) get routed datagrams
//! ([`RouteHeader`]); older ones only frames of our own, unrouted, as before. Routed
//! datagrams go to any neighbour the sleeve holds keys for, whether the sleeve or the fast
//! path carries its own frames: a route may have fast-path hops and sleeve hops. A broadcast
//! reaches a fast-path neighbour through the kernel, whose relay stops at a hop the sleeve
//! carries; when routes may mix the two
//! ([`Routing::beside_fast_path`]) the sleeve also sends it a copy marked
//! [`RouteHeader::beside_fast_path`], which that neighbour does not deliver again but passes
//! on to the children it reaches only through the sleeve.

use std::collections::HashMap;

use super::packet::{DropReason, RouteHeader};

/// The routes the sleeve follows, in short IDs: destination → neighbour to hand frames
/// to, and broadcast source → our children in its tree (from the router's routes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routing {
    pub next_hop: HashMap<u16, u16>,
    pub children: HashMap<u16, Vec<u16>>,
    /// Routes may cross fast-path and sleeve hops (a password with trusted subnets, or a
    /// neighbour whose fast path fell back): our broadcasts also go, marked, to the
    /// neighbours the fast path carries that are the next hop towards some other peer
    /// ([`Routing::leads_on`]), which pass them on to the children only their sleeve reaches.
    pub beside_fast_path: bool,
}

impl Routing {
    /// Whether `neighbour` is the next hop towards another peer: it has children in our
    /// broadcast tree (unicast routes follow that tree).
    pub fn leads_on(&self, neighbour: u16) -> bool {
        self.next_hop
            .iter()
            .any(|(&dst, &hop)| hop == neighbour && dst != neighbour)
    }
}

/// What the sleeve knows of a neighbour (one it holds keys for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// The sleeve carries its frames (else the fast path does).
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

fn route(origin: u16, destination: u16, hops_left: u8, beside_fast_path: bool) -> RouteHeader {
    RouteHeader {
        origin,
        destination,
        hops_left,
        beside_fast_path,
    }
}

/// Where a frame from the TAP goes. `owner`: the peer its destination MAC was learned
/// behind (`None` for broadcast, multicast and unknown MACs); `neighbours`: those the
/// sleeve holds keys for, in a stable order (only walked for a broadcast).
pub fn from_tap(
    local: u16,
    owner: Option<u16>,
    neighbour: impl Fn(u16) -> Option<Neighbour>,
    neighbours: impl IntoIterator<Item = u16>,
    routing: &Routing,
) -> Vec<Send> {
    if let Some(peer) = owner {
        if neighbour(peer).is_some_and(|n| n.carried) {
            return vec![Send::Direct(peer)];
        }
        match routing.next_hop.get(&peer) {
            Some(&hop) if hop != peer && neighbour(hop).is_some_and(|n| n.relays) => {
                let unicast = route(local, peer, RouteHeader::MAX_HOPS, false);
                return vec![Send::Routed(hop, unicast)];
            }
            // A neighbour the fast path carries: not the sleeve's to send.
            _ if neighbour(peer).is_some() => return Vec::new(),
            _ => {}
        }
    }
    // Our own broadcast: our neighbours are our children in our tree, each passes it on
    // along that tree.
    neighbours
        .into_iter()
        .filter_map(|peer| {
            let n = neighbour(peer)?;
            let ours =
                |beside| Send::Routed(peer, route(local, local, RouteHeader::MAX_HOPS, beside));
            match (n.carried, n.relays) {
                (true, true) => Some(ours(false)),
                (true, false) => Some(Send::Direct(peer)),
                (false, true) if routing.beside_fast_path && routing.leads_on(peer) => {
                    Some(ours(true))
                }
                (false, _) => None,
            }
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
    header: RouteHeader,
    neighbour: impl Fn(u16) -> Option<Neighbour>,
    routing: &Routing,
) -> Received {
    let dropped = |reason| Received {
        dropped: Some(reason),
        ..Received::default()
    };
    if header.origin == local {
        return dropped(DropReason::Loop);
    }
    let onward = RouteHeader {
        hops_left: header.hops_left.saturating_sub(1),
        beside_fast_path: false,
        ..header
    };
    if header.is_broadcast() {
        let children = routing
            .children
            .get(&header.origin)
            .map_or(&[][..], |c| &c[..]);
        let forward = if header.hops_left == 0 {
            Vec::new()
        } else {
            children
                .iter()
                .filter(|&&c| c != from && c != header.origin && c != local)
                .filter(|&&c| {
                    neighbour(c).is_some_and(|n| {
                        // Beside the fast path, the kernel passes it on to the children it
                        // carries; the sleeve to the others.
                        n.relays && (n.carried || !header.beside_fast_path)
                    })
                })
                .map(|&c| Send::Routed(c, onward))
                .collect()
        };
        return Received {
            deliver: !header.beside_fast_path,
            forward,
            dropped: None,
        };
    }
    if header.destination == local {
        return Received {
            deliver: true,
            ..Received::default()
        };
    }
    if header.hops_left == 0 {
        return dropped(DropReason::Loop);
    }
    let hop = match routing.next_hop.get(&header.destination) {
        Some(&hop) if hop != from => hop,
        _ => return dropped(DropReason::NoRoute),
    };
    // A neighbour on an older version cannot be told whose frame it is: not a next hop.
    if neighbour(hop).is_some_and(|n| n.relays) {
        Received {
            forward: vec![Send::Routed(hop, onward)],
            ..Received::default()
        }
    } else {
        dropped(DropReason::NoRoute)
    }
}

/// Where a frame the fast path handed over goes: relayed to us over VXLAN from `origin`
/// for `destination`, a peer the kernel does not reach from here (the sleeve carries it, or
/// the next hop towards it). On along the route, routed, as if received from the origin
/// (one hop spent); never delivered here (the kernel would have).
pub fn handed_over(
    local: u16,
    origin: u16,
    destination: u16,
    neighbour: impl Fn(u16) -> Option<Neighbour>,
    routing: &Routing,
) -> Received {
    if origin == destination || destination == local {
        return Received {
            dropped: Some(DropReason::Malformed),
            ..Received::default()
        };
    }
    let header = route(origin, destination, RouteHeader::MAX_HOPS, false);
    received(local, origin, header, neighbour, routing)
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
            beside_fast_path: false,
        }
    }

    /// Routes at A in the line A–B–C.
    fn at_a() -> Routing {
        Routing {
            next_hop: HashMap::from([(B, B), (C, B)]),
            children: HashMap::from([(A, vec![B])]),
            beside_fast_path: false,
        }
    }

    #[test]
    fn a_frame_for_a_peer_behind_a_neighbour_goes_to_that_neighbour_with_a_route() {
        let sends = from_tap(
            A,
            Some(C),
            |p| all_relay(p).filter(|_| p == B),
            [B],
            &at_a(),
        );
        assert_eq!(
            sends,
            [Send::Routed(
                B,
                RouteHeader {
                    origin: A,
                    destination: C,
                    hops_left: RouteHeader::MAX_HOPS,
                    beside_fast_path: false,
                }
            )]
        );
        // A direct, carried peer gets it as ours.
        assert_eq!(
            from_tap(A, Some(B), all_relay, [B], &at_a()),
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
        let sends = from_tap(A, None, old_c, [B, C, D], &Routing::default());
        assert_eq!(
            sends,
            [
                Send::Routed(
                    B,
                    RouteHeader {
                        origin: A,
                        destination: A,
                        hops_left: RouteHeader::MAX_HOPS,
                        beside_fast_path: false,
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
            beside_fast_path: false,
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
            beside_fast_path: false,
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
            beside_fast_path: false,
        };
        assert_eq!(
            received(B, A, ours, all_relay, &at_b()).dropped,
            Some(DropReason::Loop)
        );
        let spent = RouteHeader {
            origin: A,
            destination: C,
            hops_left: 0,
            beside_fast_path: false,
        };
        assert_eq!(
            received(B, A, spent, all_relay, &at_b()).dropped,
            Some(DropReason::Loop)
        );
        let nowhere = RouteHeader {
            origin: A,
            destination: D,
            hops_left: 9,
            beside_fast_path: false,
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
            beside_fast_path: false,
        };
        assert_eq!(
            received(B, A, to_c, all_relay, &back).dropped,
            Some(DropReason::NoRoute)
        );
        // A next hop the sleeve holds no keys for, or that cannot take routed frames.
        let unknown = |p| {
            (p != C).then_some(Neighbour {
                carried: true,
                relays: true,
            })
        };
        assert_eq!(
            received(B, A, to_c, unknown, &at_b()).dropped,
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

    /// The line A–B–C where the fast path carries B–C and the sleeve A–B (fallen back).
    fn sleeve_then_fast(at: u16) -> impl Fn(u16) -> Option<Neighbour> {
        move |p| match (at, p) {
            (A, B) | (B, A) => Some(Neighbour {
                carried: true,
                relays: true,
            }),
            (B, C) | (C, B) => Some(Neighbour {
                carried: false,
                relays: true,
            }),
            _ => None,
        }
    }

    #[test]
    fn a_frame_the_fast_path_hands_over_goes_on_through_the_sleeve_as_the_origins() {
        // C's kernel sent B a frame for A over VXLAN; A is on B's sleeve.
        let r = handed_over(B, C, A, sleeve_then_fast(B), &at_b());
        assert!(!r.deliver && r.dropped.is_none());
        assert_eq!(
            r.forward,
            [Send::Routed(
                A,
                route(C, A, RouteHeader::MAX_HOPS - 1, false)
            )]
        );
        // A destination nobody routes to, one whose route points back at the origin, the
        // origin as destination, ourselves: dropped and counted, never delivered.
        let r = handed_over(B, C, D, sleeve_then_fast(B), &at_b());
        assert_eq!((r.deliver, r.dropped), (false, Some(DropReason::NoRoute)));
        let mut back = at_b();
        back.next_hop.insert(A, C);
        let r = handed_over(B, C, A, sleeve_then_fast(B), &back);
        assert_eq!(r.dropped, Some(DropReason::NoRoute));
        assert!(r.forward.is_empty());
        assert_eq!(
            handed_over(B, C, C, sleeve_then_fast(B), &at_b()).dropped,
            Some(DropReason::Malformed)
        );
        assert_eq!(
            handed_over(B, C, B, sleeve_then_fast(B), &at_b()).dropped,
            Some(DropReason::Malformed)
        );
        // Our own frame come back: a loop.
        assert_eq!(
            handed_over(B, B, A, sleeve_then_fast(B), &at_b()).dropped,
            Some(DropReason::Loop)
        );
    }

    #[test]
    fn a_broadcast_beside_a_fast_path_reaches_a_fallen_back_neighbour_once() {
        // C's own broadcast: the kernel takes it to B, whose kernel stops at A (on B's
        // sleeve); C's sleeve sends B a marked copy, which B passes to A only.
        let at_c = Routing {
            next_hop: HashMap::from([(B, B), (A, B)]),
            children: HashMap::from([(C, vec![B])]),
            beside_fast_path: true,
        };
        let sends = from_tap(C, None, sleeve_then_fast(C), [B], &at_c);
        assert_eq!(
            sends,
            [Send::Routed(B, route(C, C, RouteHeader::MAX_HOPS, true))]
        );
        let r = received(B, C, route(C, C, 15, true), sleeve_then_fast(B), &at_b());
        assert!(!r.deliver, "B's kernel delivered it already");
        assert_eq!(r.forward, [Send::Routed(A, route(C, C, 14, false))]);
        // A's own broadcast goes to B through the sleeve; B delivers it and passes it to C
        // through the sleeve too (B's kernel never saw it).
        let at_a_sleeve = Routing {
            beside_fast_path: true,
            ..at_a()
        };
        let sends = from_tap(A, None, sleeve_then_fast(A), [B], &at_a_sleeve);
        assert_eq!(
            sends,
            [Send::Routed(B, route(A, A, RouteHeader::MAX_HOPS, false))]
        );
        let r = received(B, A, route(A, A, 15, false), sleeve_then_fast(B), &at_b());
        assert!(r.deliver);
        assert_eq!(r.forward, [Send::Routed(C, route(A, A, 14, false))]);
    }

    #[test]
    fn a_spent_broadcast_is_delivered_but_goes_no_further() {
        let route = RouteHeader {
            origin: A,
            destination: A,
            hops_left: 0,
            beside_fast_path: false,
        };
        let r = received(B, A, route, all_relay, &at_b());
        assert!(r.deliver && r.forward.is_empty());
    }

    /// The line A–B–C where the fast path carries A–B (trusted) and the sleeve B–C.
    fn fast_then_sleeve(at: u16) -> impl Fn(u16) -> Option<Neighbour> {
        move |p| match (at, p) {
            (A, B) | (B, A) => Some(Neighbour {
                carried: false,
                relays: true,
            }),
            (B, C) | (C, B) => Some(Neighbour {
                carried: true,
                relays: true,
            }),
            _ => None,
        }
    }

    #[test]
    fn mixed_hops_unicast_takes_the_sleeve_to_a_fast_path_neighbour() {
        let sends = from_tap(A, Some(C), fast_then_sleeve(A), [B], &at_a());
        assert!(matches!(
            sends[..],
            [Send::Routed(B, RouteHeader { destination: C, .. })]
        ));
        // And back: B hands C's frame for A to A through the sleeve.
        let back = route(C, A, 9, false);
        assert_eq!(
            received(B, C, back, fast_then_sleeve(B), &at_b()).forward,
            [Send::Routed(A, route(C, A, 8, false))]
        );
    }

    #[test]
    fn a_broadcast_beside_the_fast_path_is_not_delivered_twice_and_crosses_the_sleeve_hop() {
        let mixed = Routing {
            beside_fast_path: true,
            ..at_a()
        };
        // A's own broadcast: the kernel takes it to B; the sleeve sends B a marked copy.
        let sends = from_tap(A, None, fast_then_sleeve(A), [B], &mixed);
        assert_eq!(
            sends,
            [Send::Routed(B, route(A, A, RouteHeader::MAX_HOPS, true))]
        );
        // Without mixed routes, none; nor to a fast-path neighbour that leads nowhere.
        assert!(from_tap(A, None, fast_then_sleeve(A), [B], &at_a()).is_empty());
        let mut leaf = mixed.clone();
        leaf.next_hop.remove(&C);
        assert!(from_tap(A, None, fast_then_sleeve(A), [B], &leaf).is_empty());
        // B does not deliver it again, and passes it to C (the sleeve's), unmarked.
        let r = received(B, A, route(A, A, 15, true), fast_then_sleeve(B), &at_b());
        assert!(!r.deliver);
        assert_eq!(r.forward, [Send::Routed(C, route(A, A, 14, false))]);
        // C's broadcast reaches B through the sleeve: B delivers it and passes it to A
        // through the sleeve too (the kernel never saw it).
        let r = received(B, C, route(C, C, 15, false), fast_then_sleeve(B), &at_b());
        assert!(r.deliver);
        assert_eq!(r.forward, [Send::Routed(A, route(C, C, 14, false))]);
    }
}
