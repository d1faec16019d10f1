//! IPAM gossip from hostile peers: payloads as the IPAM channel decodes them, and rings,
//! votes and space requests changed field by field from an honest peer's, handled by our
//! IPAM among our own allocations, releases, ticks and honest exchanges with that peer.
//!
//! Invariants after every step: nothing panics; a refused message changes nothing; a
//! message never takes away an allocation of ours; every allocation lies in space we own,
//! once (the state restores); the ring keeps its invariants; state is persisted before any
//! message is sent.
#![no_main]

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use weave_router::ipam::allocator::Allocator;
use weave_router::ipam::consensus::{Claims, InitMode, Proposal};
use weave_router::ipam::node::{Effect, Ipam, Message};
use weave_router::ipam::ring::RingState;
use weave_router::ipam::service::decode;
use weave_router::mesh::peer_name::PeerName;
use weave_router::net::{Ipv4Cidr, Ipv4Net};
use weave_router_fuzz::{peer, WireVersion};

const RANGE: &str = "10.0.0.0/24";

#[derive(Arbitrary, Debug)]
enum RingChange {
    Owner { token: u8, to: u8 },
    Version { token: u8, to: WireVersion },
    Free { token: u8, to: u16 },
    Start { token: u8, to: u8 },
    DropToken(u8),
    Seeds(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A payload from a peer, decoded as the channel does.
    Payload {
        from: u8,
        bytes: Vec<u8>,
    },
    /// The other peer's ring, changed.
    Ring {
        from: u8,
        changes: Vec<RingChange>,
        reply: Option<bool>,
    },
    Votes {
        from: u8,
        claims: Vec<(u8, WireVersion, u8, WireVersion, u8, Vec<u8>)>,
    },
    SpaceRequest {
        from: u8,
        start: u8,
        prefix: u8,
    },
    Allocate {
        owner: u8,
        small_subnet: Option<u8>,
    },
    Claim {
        owner: u8,
        host: u8,
    },
    Release(u8),
    ReleaseAddress {
        owner: u8,
        host: u8,
    },
    /// Both peers gossip to each other and answer each other's messages.
    Exchange,
    Tick,
}

fn name(n: u8) -> PeerName {
    peer(1 + n % 4)
}

fn range() -> Ipv4Net {
    RANGE.parse().expect("a network")
}

fn owner(n: u8) -> String {
    format!("container-{}", n % 8)
}

fn subnet(n: u8) -> Ipv4Net {
    Ipv4Net::containing(std::net::Ipv4Addr::new(10, 0, 0, n), 28)
}

/// Every Persist comes before every message.
fn check_effects(effects: &[Effect]) {
    let first_message = effects.iter().position(|e| !matches!(e, Effect::Persist));
    let last_persist = effects.iter().rposition(|e| matches!(e, Effect::Persist));
    if let (Some(m), Some(p)) = (first_message, last_persist) {
        assert!(
            p < m,
            "a message before the state was persisted: {effects:?}"
        );
    }
}

fn allocations(ipam: &Ipam) -> BTreeSet<(String, std::net::Ipv4Addr, u8)> {
    ipam.allocator()
        .allocations()
        .map(|a| (a.owner.clone(), a.address.addr, a.address.prefix_len))
        .collect()
}

fn check(ipam: &Ipam) {
    let state = ipam.state();
    state.ring.check().expect("the ring keeps its invariants");
    Allocator::restore(ipam.allocator().ourself(), state).expect("the state restores");
}

fn changed_ring(base: &RingState, changes: &[RingChange]) -> Option<RingState> {
    let mut raw = serde_json::to_value(base).expect("a ring serialises");
    let mut seeds_now = None;
    let tokens = raw["tokens"].as_array_mut()?;
    for c in changes.iter().take(8) {
        let n = tokens.len().max(1);
        match c {
            RingChange::Owner { token, to } => {
                if let Some(t) = tokens.get_mut(usize::from(*token) % n) {
                    t["owner"] = serde_json::to_value(name(*to)).ok()?;
                }
            }
            RingChange::Version { token, to } => {
                if let Some(t) = tokens.get_mut(usize::from(*token) % n) {
                    t["version"] = Value::from(to.get());
                }
            }
            RingChange::Free { token, to } => {
                if let Some(t) = tokens.get_mut(usize::from(*token) % n) {
                    t["free"] = Value::from(*to);
                }
            }
            RingChange::Start { token, to } => {
                if let Some(t) = tokens.get_mut(usize::from(*token) % n) {
                    t["start"] = Value::from(format!("10.0.0.{to}"));
                }
            }
            RingChange::DropToken(token) => {
                if !tokens.is_empty() {
                    tokens.remove(usize::from(*token) % n);
                }
            }
            RingChange::Seeds(seeds) => {
                let seeds: Vec<Value> = seeds
                    .iter()
                    .take(4)
                    .filter_map(|s| serde_json::to_value(name(*s)).ok())
                    .collect();
                seeds_now = Some(Value::from(seeds));
            }
        }
    }
    if let Some(seeds) = seeds_now {
        raw["seeds"] = seeds;
    }
    serde_json::from_value(raw).ok()
}

fn proposal(round: WireVersion, proposer: u8) -> Proposal {
    Proposal {
        round: round.get(),
        proposer: (proposer % 5 != 0).then(|| name(proposer)),
    }
}

/// Hands every message in `effects` from `from` to `to`; their answers are dropped.
fn deliver(effects: Vec<Effect>, from: PeerName, to: &mut Ipam) {
    for e in effects {
        let msg = match e {
            Effect::Persist => continue,
            Effect::Broadcast(m) => m,
            Effect::Send(dst, m) if dst == to.allocator().ourself() => m,
            Effect::Send(..) => continue,
        };
        if let Ok(h) = to.handle(from, msg) {
            check_effects(&h.effects);
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let (us, them) = (peer(1), peer(2));
    let seeds = InitMode::Seed(vec![us, them]);
    let mut ipam = Ipam::new(us, range(), range(), seeds.clone(), 2).expect("valid");
    let mut other = Ipam::new(them, range(), range(), seeds, 2).expect("valid");
    let reachable = |_| true;
    // Both claim the ring as seeds.
    ipam.allocate("init", None, reachable, 0)
        .expect("allocates");
    other
        .allocate("init", None, reachable, 0)
        .expect("allocates");
    for op in ops.iter().take(48) {
        let before = ipam.state();
        let held = allocations(&ipam);
        let mut released = false;
        let handled = |ipam: &mut Ipam, from: PeerName, msg: Message| match ipam.handle(from, msg) {
            Ok(h) => check_effects(&h.effects),
            Err(e) => {
                assert_eq!(ipam.state(), before, "a refused message changed the state");
                assert!(!e.to_string().contains('\n'));
            }
        };
        match op {
            Op::Payload { from, bytes } => {
                if let Ok(msg) = decode(bytes) {
                    handled(&mut ipam, name(*from), msg);
                }
            }
            Op::Ring {
                from,
                changes,
                reply,
            } => {
                let Some(ring) = changed_ring(other.allocator().ring().state(), changes) else {
                    continue;
                };
                let msg = match reply {
                    None => Message::Ring(ring),
                    Some(donated) => Message::SpaceReply {
                        ring,
                        donated: *donated,
                    },
                };
                handled(&mut ipam, name(*from), msg);
            }
            Op::Votes { from, claims } => {
                let claims: Vec<(PeerName, Claims)> = claims
                    .iter()
                    .take(4)
                    .map(|(who, pr, pp, ar, ap, value)| {
                        let mut value: Vec<PeerName> =
                            value.iter().take(4).map(|v| name(*v)).collect();
                        value.sort();
                        value.dedup();
                        (
                            name(*who),
                            Claims {
                                promise: proposal(*pr, *pp),
                                accepted: proposal(*ar, *ap),
                                value,
                            },
                        )
                    })
                    .collect();
                handled(&mut ipam, name(*from), Message::Votes(claims));
            }
            Op::SpaceRequest {
                from,
                start,
                prefix,
            } => {
                let subnet =
                    Ipv4Net::containing(std::net::Ipv4Addr::new(10, 0, *start, 0), *prefix);
                handled(&mut ipam, name(*from), Message::SpaceRequest { subnet });
            }
            Op::Allocate {
                owner: o,
                small_subnet,
            } => {
                if let Ok((_, effects)) =
                    ipam.allocate(&owner(*o), small_subnet.map(subnet), reachable, 7)
                {
                    check_effects(&effects);
                }
            }
            Op::Claim { owner: o, host } => {
                let address = Ipv4Cidr {
                    addr: std::net::Ipv4Addr::new(10, 0, 0, *host),
                    prefix_len: 24,
                };
                if let Ok((_, effects)) = ipam.claim_address(&owner(*o), address) {
                    check_effects(&effects);
                }
            }
            Op::Release(o) => {
                let (_, effects) = ipam.release(&owner(*o));
                check_effects(&effects);
                released = true;
            }
            Op::ReleaseAddress { owner: o, host } => {
                let _ = ipam.release_address(&owner(*o), std::net::Ipv4Addr::new(10, 0, 0, *host));
                released = true;
            }
            Op::Exchange => {
                let ours: Vec<Effect> = ipam.gossip().into_iter().map(Effect::Broadcast).collect();
                deliver(ours, us, &mut other);
                let theirs: Vec<Effect> =
                    other.gossip().into_iter().map(Effect::Broadcast).collect();
                deliver(theirs, them, &mut ipam);
                // The other peer asks us for space now and then, as a real one would.
                if let Ok((_, effects)) = other.allocate("theirs", Some(subnet(0)), reachable, 1) {
                    deliver(effects, them, &mut ipam);
                }
            }
            Op::Tick => {
                if let Ok(effects) = ipam.tick() {
                    check_effects(&effects);
                }
            }
        }
        check(&ipam);
        if !released {
            let now = allocations(&ipam);
            assert!(held.is_subset(&now), "an allocation of ours was lost");
        }
    }
});
