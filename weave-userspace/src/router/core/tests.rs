//! The core driven with events: no sockets, no sleeps, no clock but the `Instant`s handed in.

use std::time::Duration;

use super::*;
use crate::mesh::protocol::{HEARTBEAT_DUTY_VERSION, MAX_VERSION};

fn hello(n: u8) -> Hello {
    Hello {
        name: PeerName::from_bytes([0x0a, 0, 0, 0, 0, n]),
        nickname: format!("host{n}"),
        short_id: ShortId::new(u16::from(n)).unwrap(),
        uid: u64::from(n) * 1000,
        underlay: Ipv4Addr::new(10, 0, 0, n),
        data_port: 6784,
        trusted_subnets: Vec::new(),
    }
}

fn config(has_sleeve: bool, sleeve_use: SleeveUse) -> CoreConfig {
    CoreConfig {
        conn_limit: 10,
        has_sleeve,
        sleeve_use,
        path_mtu_ceiling: 1500,
    }
}

fn with_short_id(mut hello: Hello, short_id: ShortId) -> Hello {
    hello.short_id = short_id;
    hello
}

fn handshaken(id: ConnId, outbound: bool, hello: &Hello) -> Event {
    Event::Handshaken(Handshake {
        id,
        version: MAX_VERSION,
        outbound,
        remote: SocketAddr::from((hello.underlay, 6783)),
        hello: hello.clone(),
        ipam: IpamPair::default(),
        encrypted: false,
    })
}

fn with_ipam(event: Event, ours: &str, theirs: &str) -> Event {
    let identity = |s: &str| {
        let (range, seed) = s.split_once(' ').unwrap_or((s, ""));
        Some(crate::ipam::identity::IpamIdentity {
            range: range.parse().unwrap(),
            seeds: seed.parse().into_iter().collect(),
        })
    };
    let Event::Handshaken(mut h) = event else {
        unreachable!()
    };
    h.ipam = IpamPair {
        ours: identity(ours),
        theirs: identity(theirs),
    };
    Event::Handshaken(h)
}

/// The effects' kinds, for assertions that read like the sequence they check.
fn kinds(effects: &[Effect]) -> Vec<&'static str> {
    effects
        .iter()
        .map(|e| match e {
            Effect::Answer { result: Ok(()), .. } => "accept",
            Effect::Answer { result: Err(_), .. } => "refuse",
            Effect::Close { .. } => "close",
            Effect::TakeNewShortId => "take-new-short-id",
            Effect::Place { .. } => "place",
            Effect::Remove(_) => "remove",
            Effect::Unroute(_) => "unroute",
            Effect::SendReady { .. } => "send-ready",
            Effect::Send { .. } => "send",
            Effect::StartGossip { .. } => "start-gossip",
            Effect::ConnectionsChanged => "connections-changed",
            Effect::Switch { .. } => "switch",
            Effect::Heartbeats(_) => "heartbeats",
            Effect::SleeveProbe { .. } => "sleeve-probe",
            Effect::SleevePathMtu { .. } => "sleeve-path-mtu",
        })
        .collect()
}

/// A core for `us` holding an established connection `id` with `peer`.
fn established(
    us: &Hello,
    id: ConnId,
    outbound: bool,
    peer: &Hello,
    config: CoreConfig,
) -> MeshCore {
    let mut core = MeshCore::new(us.clone(), config);
    core.on_event(handshaken(id, outbound, peer));
    core.on_event(Event::Placed { id, error: None });
    core.on_event(Event::RemoteReady { id });
    assert!(core.connection(id).unwrap().established());
    core
}

#[test]
fn a_hello_is_accepted_placed_and_established_when_both_ends_are_ready() {
    let mut core = MeshCore::new(hello(1), config(false, SleeveUse::Fallback));
    let peer = hello(2);
    let effects = core.on_event(handshaken(7, true, &peer));
    assert_eq!(kinds(&effects), ["accept", "place"]);
    let Effect::Place { placement, .. } = &effects[1] else {
        unreachable!()
    };
    assert_eq!(placement.name, peer.name);
    assert_eq!(placement.overlay, Overlay::Fastdp);
    assert_eq!(placement.peer.next_hop, peer.short_id);
    // Data goes to the address the connection was dialled at.
    assert_eq!(placement.peer.underlay, Ipv4Addr::new(10, 0, 0, 2));

    let effects = core.on_event(Event::Placed { id: 7, error: None });
    assert_eq!(
        kinds(&effects),
        ["send-ready", "start-gossip", "connections-changed"]
    );
    // The dialler starts the digest exchange.
    assert!(matches!(
        effects[1],
        Effect::StartGossip { digest: true, .. }
    ));
    assert!(!core.connection(7).unwrap().established());

    let effects = core.on_event(Event::RemoteReady { id: 7 });
    assert_eq!(kinds(&effects), ["connections-changed"]);
    assert!(core.connection(7).unwrap().established());
    assert_eq!(core.summaries().len(), 1);
    assert!(core.summaries()[0].established);
}

#[test]
fn the_dialled_side_waits_for_the_diallers_digest() {
    let mut core = MeshCore::new(hello(1), config(false, SleeveUse::Fallback));
    core.on_event(handshaken(3, false, &hello(2)));
    let effects = core.on_event(Event::Placed { id: 3, error: None });
    assert!(matches!(
        effects[1],
        Effect::StartGossip { digest: false, .. }
    ));
}

#[test]
fn a_data_path_failure_closes_the_connection_and_it_is_never_established() {
    let mut core = MeshCore::new(hello(1), config(false, SleeveUse::Fallback));
    core.on_event(handshaken(3, true, &hello(2)));
    let effects = core.on_event(Event::Placed {
        id: 3,
        error: Some("no room".into()),
    });
    assert_eq!(kinds(&effects), ["close"]);
    assert!(core.on_event(Event::RemoteReady { id: 3 }).is_empty());
    assert!(!core.connection(3).unwrap().established());
}

#[test]
fn admission_keeps_the_connection_dialled_by_the_higher_name() {
    let low = hello(1);
    let high = hello(2);
    // We are `low`, holding an outbound connection to `high`; `high` dials us: its wins,
    // ours closes, and the peer (same short ID) stays in the data path.
    let mut core = established(&low, 1, true, &high, config(false, SleeveUse::Fallback));
    let effects = core.on_event(handshaken(2, false, &high));
    assert_eq!(kinds(&effects), ["close", "accept", "place"]);
    assert!(matches!(effects[0], Effect::Close { id: 1, .. }));
    assert!(core.connection(1).is_none());
    // The old connection's close changes nothing more, and is no termination.
    assert!(core
        .on_event(Event::Closed {
            id: 1,
            error: "duplicate".into()
        })
        .is_empty());
    assert_eq!(core.terminations(), 0);
    // A second dial of ours loses.
    let effects = core.on_event(handshaken(3, true, &high));
    assert!(matches!(
        &effects[..],
        [Effect::Answer {
            id: 3,
            result: Err(ConnectionError::Duplicate(_))
        }]
    ));

    // We are `high` holding an inbound connection from `low`: our own dial wins.
    let mut core = established(&high, 1, false, &low, config(false, SleeveUse::Fallback));
    assert_eq!(
        core.admit(true, &low),
        Admission::Accept { replace: Some(1) }
    );
    // Another run of a connected name (new UID) is refused while the connection lives.
    let mut again = low.clone();
    again.uid ^= 1;
    assert!(matches!(
        core.admit(false, &again),
        Admission::Reject(reason) if reason.contains("already connected")
    ));
    // Another peer with a short ID already taken is refused, and told to take another.
    let mut clash = hello(3);
    clash.short_id = low.short_id;
    let effects = core.on_event(handshaken(9, false, &clash));
    assert!(matches!(
        &effects[..],
        [Effect::Answer { result: Err(ConnectionError::ShortIdTaken { id, by }), .. }]
            if *id == low.short_id && *by == low.name
    ));
    assert!(core.connection(9).is_none());
}

#[test]
fn a_short_id_clash_makes_the_higher_name_take_another() {
    let mut peer = hello(2);
    peer.short_id = hello(1).short_id;
    // We have the higher name: we yield.
    let mut core = MeshCore::new(
        with_short_id(hello(3), hello(1).short_id),
        config(false, SleeveUse::Fallback),
    );
    let effects = core.on_event(handshaken(1, true, &peer));
    assert_eq!(kinds(&effects), ["refuse", "take-new-short-id"]);
    // The lower name keeps its ID and only refuses.
    let mut core = MeshCore::new(hello(1), config(false, SleeveUse::Fallback));
    let effects = core.on_event(handshaken(
        1,
        true,
        &with_short_id(hello(9), hello(1).short_id),
    ));
    assert_eq!(kinds(&effects), ["refuse"]);
    // A peer refusing us for our short ID makes us take another; for another ID, nothing.
    assert_eq!(
        kinds(&core.on_event(Event::ShortIdTaken {
            short_id: hello(1).short_id
        })),
        ["take-new-short-id"]
    );
    assert!(core
        .on_event(Event::ShortIdTaken {
            short_id: hello(5).short_id
        })
        .is_empty());
}

#[test]
fn a_new_short_id_closes_every_connection() {
    let mut core = established(
        &hello(1),
        4,
        true,
        &hello(2),
        config(false, SleeveUse::Fallback),
    );
    let effects = core.set_short_id(hello(1).short_id);
    assert!(effects.is_empty(), "the same ID changes nothing");
    let effects = core.set_short_id(ShortId::new(99).unwrap());
    assert_eq!(kinds(&effects), ["close"]);
    assert_eq!(core.local().short_id.get(), 99);
}

#[test]
fn our_short_id_changes_at_most_once_per_hold() {
    let mut core = MeshCore::new(hello(1), config(false, SleeveUse::Fallback));
    let start = Instant::now();
    assert_eq!(core.short_id_change(start), ShortIdChange::Allowed);
    // Claims keep coming (forged records, handshakes): held, logged once.
    let soon = start + SHORT_ID_HOLD / 2;
    assert_eq!(
        core.short_id_change(soon),
        ShortIdChange::Held { first: true }
    );
    assert_eq!(
        core.short_id_change(soon),
        ShortIdChange::Held { first: false }
    );
    // After the hold, a real clash may move us again.
    let later = start + SHORT_ID_HOLD;
    assert_eq!(core.short_id_change(later), ShortIdChange::Allowed);
    assert_eq!(
        core.short_id_change(later + SHORT_ID_HOLD / 3),
        ShortIdChange::Held { first: true }
    );
}

#[test]
fn direct_peers_are_listed_with_their_runs_and_short_ids() {
    let core = established(
        &hello(1),
        4,
        true,
        &hello(2),
        config(false, SleeveUse::Fallback),
    );
    let runs = core.direct_runs();
    assert_eq!(runs.get(&hello(2).name), Some(&hello(2).uid));
    assert_eq!(
        core.direct_short_ids().get(&hello(2).name),
        Some(&hello(2).short_id)
    );
}

#[test]
fn a_peer_whose_ip_allocation_disagrees_is_refused_before_it_is_placed() {
    let mut core = MeshCore::new(hello(1), config(false, SleeveUse::Fallback));
    let seeds = |ours, theirs| with_ipam(handshaken(1, true, &hello(2)), ours, theirs);
    let effects = core.on_event(seeds(
        "10.2.0.0/16 0a:00:00:00:00:01",
        "10.2.0.0/16 0a:00:00:00:00:02",
    ));
    assert!(
        matches!(
            &effects[..],
            [Effect::Answer { result: Err(e @ ConnectionError::IpamMismatch(_)), .. }]
                if e.to_string().starts_with("IP allocation was seeded by different peers")
        ),
        "{effects:?}"
    );
    assert_eq!(core.peer_count(), 0);
    let effects = core.on_event(with_ipam(
        handshaken(2, false, &hello(2)),
        "10.2.0.0/16",
        "10.3.0.0/16",
    ));
    assert_eq!(kinds(&effects), ["refuse"]);
    // Seeds not known yet on one side (a consensus to come), or no IPAM: accepted.
    let effects = core.on_event(seeds("10.2.0.0/16", "10.2.0.0/16 0a:00:00:00:00:02"));
    assert_eq!(kinds(&effects), ["accept", "place"]);
    let mut core = MeshCore::new(hello(1), config(false, SleeveUse::Fallback));
    let effects = core.on_event(handshaken(3, true, &hello(2)));
    assert_eq!(kinds(&effects), ["accept", "place"]);
}

#[test]
fn the_connection_limit_refuses_newcomers_but_not_known_peers() {
    let mut cfg = config(false, SleeveUse::Fallback);
    cfg.conn_limit = 1;
    let mut core = established(&hello(1), 1, true, &hello(2), cfg);
    let effects = core.on_event(handshaken(2, true, &hello(3)));
    assert!(matches!(
        &effects[..],
        [Effect::Answer { result: Err(ConnectionError::Refused(r)), .. }] if r.contains("limit of 1")
    ));
}

#[test]
fn a_lost_connection_unroutes_its_peer_once() {
    let mut core = established(
        &hello(1),
        1,
        true,
        &hello(2),
        config(false, SleeveUse::Fallback),
    );
    let effects = core.on_event(Event::Closed {
        id: 1,
        error: "gone".into(),
    });
    assert_eq!(kinds(&effects), ["unroute", "connections-changed"]);
    assert!(!core.is_direct(&hello(2).name));
    assert_eq!(core.terminations(), 1);
    assert!(core
        .on_event(Event::Closed {
            id: 1,
            error: "gone".into()
        })
        .is_empty());
    assert_eq!(core.terminations(), 1, "a second close is not counted");
}

#[test]
fn with_a_password_untrusted_peers_go_through_the_sleeve_and_are_told_not_to_try_the_fast_path() {
    let mut core = MeshCore::new(hello(1), config(true, SleeveUse::Untrusted));
    let effects = core.on_event(handshaken(1, true, &hello(2)));
    let Effect::Place {
        placement,
        trusted_in_the_clear,
        ..
    } = &effects[1]
    else {
        panic!("{effects:?}")
    };
    assert_eq!(placement.overlay, Overlay::Sleeve);
    assert!(!placement.watched && !trusted_in_the_clear);
    let effects = core.on_event(Event::Placed { id: 1, error: None });
    assert!(matches!(
        &effects[1],
        Effect::Send {
            message: Message::FastdpStatus { heard: false },
            ..
        }
    ));

    // Both ends trusting each other's subnet: the fast path, watched, logged as clear.
    let subnet = "10.0.0.0/24".parse().unwrap();
    let mut us = hello(1);
    us.trusted_subnets = vec![subnet];
    let mut peer = hello(2);
    peer.trusted_subnets = vec![subnet];
    let mut core = MeshCore::new(us, config(true, SleeveUse::Untrusted));
    let effects = core.on_event(handshaken(1, true, &peer));
    assert!(matches!(
        &effects[1],
        Effect::Place {
            placement: Placement {
                overlay: Overlay::Fastdp,
                watched: true,
                ..
            },
            trusted_in_the_clear: true,
            ..
        }
    ));
}

#[test]
fn a_peer_that_no_longer_hears_our_fast_path_moves_to_the_sleeve_and_back() {
    let mut core = established(
        &hello(1),
        1,
        true,
        &hello(2),
        config(true, SleeveUse::Fallback),
    );
    let effects = core.on_event(Event::FastdpStatus {
        id: 1,
        heard: false,
    });
    assert!(matches!(
        &effects[..],
        [Effect::Switch {
            to: Overlay::Sleeve,
            placement: Placement { watched: true, .. },
            ..
        }]
    ));
    assert_eq!(core.connection(1).unwrap().overlay, Overlay::Sleeve);
    // Said again: no second switch.
    assert!(core
        .on_event(Event::FastdpStatus {
            id: 1,
            heard: false
        })
        .is_empty());
    assert_eq!(core.switches().to_sleeve, 1);
    let effects = core.on_event(Event::FastdpStatus { id: 1, heard: true });
    assert_eq!(kinds(&effects), ["switch"]);
    assert_eq!(
        core.switches(),
        OverlaySwitches {
            to_sleeve: 1,
            to_fastdp: 1
        }
    );
}

#[test]
fn the_path_check_sends_heartbeats_and_probes_and_falls_back_when_the_peer_goes_silent() {
    let mut core = established(
        &hello(1),
        1,
        true,
        &hello(2),
        config(true, SleeveUse::Fallback),
    );
    assert!(core.checks_paths());
    let start = Instant::now();
    let peer = hello(2).short_id.get();
    let sample = |rx_heartbeats| {
        HashMap::from([(
            peer,
            PathSample {
                rx_heartbeats,
                ..Default::default()
            },
        )])
    };
    let effects = core.on_event(Event::PathCheck {
        now: start,
        probe_round: 10,
        received: sample(1),
    });
    let Some(Effect::Heartbeats(beats)) = effects.first() else {
        panic!("{effects:?}")
    };
    // One plain heartbeat and a round of probes, all to the peer.
    assert!(beats.iter().all(|b| b.peer == peer));
    assert!(beats.iter().any(|b| b.round == 0));
    assert!(beats.iter().filter(|b| b.round == 10).count() > 1);
    // The peer hears us; then our counter of its heartbeats stops moving: after LOST_AFTER
    // it is not heard, we say so and move it to the sleeve.
    assert!(core
        .on_event(Event::FastdpStatus { id: 1, heard: true })
        .is_empty());
    let mut switched = false;
    for s in 1..=5 {
        let effects = core.on_event(Event::PathCheck {
            now: start + Duration::from_secs(s),
            probe_round: 10 + s as u32,
            received: sample(1),
        });
        switched |= effects.iter().any(|e| {
            matches!(
                e,
                Effect::Switch {
                    to: Overlay::Sleeve,
                    ..
                }
            )
        });
        if switched {
            assert!(effects.iter().any(|e| matches!(
                e,
                Effect::Send {
                    message: Message::FastdpStatus { heard: false },
                    ..
                }
            )));
            break;
        }
    }
    assert!(switched);
    // On the sleeve, probes go through the sleeve's socket.
    let effects = core.on_event(Event::PathCheck {
        now: start + Duration::from_secs(30),
        probe_round: 99,
        received: sample(1),
    });
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::SleeveProbe { round: 99, .. })));
}

#[test]
fn the_peers_probes_are_reported_once_per_change() {
    let mut core = established(
        &hello(1),
        1,
        true,
        &hello(2),
        config(false, SleeveUse::Fallback),
    );
    let peer = hello(2).short_id.get();
    let seen = PathSample {
        rx_heartbeats: 0,
        rx_echoes: 0,
        probe: Some(ProbeSeen {
            round: 5,
            largest: 1400,
        }),
    };
    let now = Instant::now();
    let reports = |effects: &[Effect]| {
        effects
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::Send {
                        message: Message::PathMtuSeen {
                            round: 5,
                            largest: 1400
                        },
                        ..
                    }
                )
            })
            .count()
    };
    let received = HashMap::from([(peer, seen)]);
    let first = core.on_event(Event::PathCheck {
        now,
        probe_round: 1,
        received: received.clone(),
    });
    assert_eq!(reports(&first), 1);
    let again = core.on_event(Event::PathCheck {
        now,
        probe_round: 2,
        received,
    });
    assert_eq!(reports(&again), 0);
}

#[test]
fn an_icmp_hint_about_a_peers_address_lowers_its_search_and_the_sleeves_datagrams() {
    let mut core = established(
        &hello(1),
        1,
        true,
        &hello(2),
        config(true, SleeveUse::Fallback),
    );
    let effects = core.on_event(Event::FragNeeded {
        addr: Ipv4Addr::new(10, 0, 0, 2),
        mtu: 1400,
    });
    assert!(matches!(
        &effects[..],
        [Effect::SleevePathMtu { mtu: 1400, .. }]
    ));
    // About another address: nothing.
    assert!(core
        .on_event(Event::FragNeeded {
            addr: Ipv4Addr::new(10, 0, 0, 9),
            mtu: 1400
        })
        .is_empty());
}

#[test]
fn data_goes_to_the_address_a_peer_is_seen_at_not_the_one_it_claims() {
    let mut behind_nat = hello(2);
    behind_nat.underlay = Ipv4Addr::new(10, 77, 0, 2);
    let public: std::net::SocketAddr = "198.18.0.2:6783".parse().unwrap();
    assert_eq!(
        data_address(public, &behind_nat),
        Ipv4Addr::new(198, 18, 0, 2)
    );
    let mapped: std::net::SocketAddr = "[::ffff:198.18.0.2]:40000".parse().unwrap();
    assert_eq!(
        data_address(mapped, &behind_nat),
        Ipv4Addr::new(198, 18, 0, 2)
    );
    // Routers sharing one host: loopback says nothing about where the peer's data goes.
    let local: std::net::SocketAddr = "127.0.0.1:6783".parse().unwrap();
    assert_eq!(data_address(local, &behind_nat), behind_nat.underlay);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// What may happen to a router with up to four peers, each of which may restart (a new
    /// UID) and dial or be dialled at any time.
    #[derive(Clone, Debug)]
    enum Op {
        Hello { peer: u8, run: u8, outbound: bool },
        Placed { conn: usize, ok: bool },
        RemoteReady { conn: usize },
        Closed { conn: usize },
        FastdpStatus { conn: usize, heard: bool },
        PathCheck { secs: u8, heartbeats: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (2u8..6, 0u8..2, any::<bool>()).prop_map(|(peer, run, outbound)| Op::Hello { peer, run, outbound }),
            3 => (any::<usize>(), prop::bool::weighted(0.9)).prop_map(|(conn, ok)| Op::Placed { conn, ok }),
            3 => any::<usize>().prop_map(|conn| Op::RemoteReady { conn }),
            2 => any::<usize>().prop_map(|conn| Op::Closed { conn }),
            1 => (any::<usize>(), any::<bool>()).prop_map(|(conn, heard)| Op::FastdpStatus { conn, heard }),
            1 => (0u8..4, 0u64..4).prop_map(|(secs, heartbeats)| Op::PathCheck { secs, heartbeats }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Whatever the order of hellos, placements, readiness, losses and reports: one
        /// connection per peer, every handshake answered once, a peer placed only for a
        /// connection the core keeps, a peer unrouted only when no connection to it is left,
        /// and nothing with our own short ID.
        #[test]
        fn the_core_keeps_one_consistent_connection_per_peer(
            sleeve in any::<bool>(),
            ops in prop::collection::vec(op(), 0..80),
        ) {
            let us = hello(1);
            let mut core = MeshCore::new(us.clone(), config(sleeve, SleeveUse::Fallback));
            let mut ids: Vec<ConnId> = Vec::new();
            let mut now = Instant::now();
            for op in ops {
                let pick = |i: usize| (!ids.is_empty()).then(|| ids[i % ids.len()]);
                let event = match op {
                    Op::Hello { peer, run, outbound } => {
                        let id = ids.len() as ConnId + 1;
                        ids.push(id);
                        let mut h = hello(peer);
                        h.uid += u64::from(run);
                        handshaken(id, outbound, &h)
                    }
                    Op::Placed { conn, ok } => match pick(conn) {
                        Some(id) => Event::Placed { id, error: (!ok).then(|| "refused".into()) },
                        None => continue,
                    },
                    Op::RemoteReady { conn } => match pick(conn) {
                        Some(id) => Event::RemoteReady { id },
                        None => continue,
                    },
                    Op::Closed { conn } => match pick(conn) {
                        Some(id) => Event::Closed { id, error: "gone".into() },
                        None => continue,
                    },
                    Op::FastdpStatus { conn, heard } => match pick(conn) {
                        Some(id) => Event::FastdpStatus { id, heard },
                        None => continue,
                    },
                    Op::PathCheck { secs, heartbeats } => {
                        now += Duration::from_secs(u64::from(secs));
                        let received = (2u16..6)
                            .map(|p| (p, PathSample { rx_heartbeats: heartbeats, ..Default::default() }))
                            .collect();
                        Event::PathCheck { now, probe_round: 1, received }
                    }
                };
                let handshake = match &event {
                    Event::Handshaken(h) => Some(h.id),
                    _ => None,
                };
                let effects = core.on_event(event);
                if let Some(id) = handshake {
                    let answers = effects.iter().filter(|e| matches!(e, Effect::Answer { id: a, .. } if *a == id)).count();
                    prop_assert_eq!(answers, 1, "one answer per handshake: {:?}", effects);
                }
                for e in &effects {
                    match e {
                        Effect::Place { id, placement, .. } => {
                            let c = core.connection(*id);
                            prop_assert!(c.is_some_and(|c| c.hello.name == placement.name));
                        }
                        Effect::Unroute(p) => prop_assert!(!core.is_direct(&p.name)),
                        Effect::Switch { placement, .. } => {
                            prop_assert!(sleeve && placement.watched);
                        }
                        _ => {}
                    }
                }
                // One connection per peer, and by_peer says which.
                let mut names = std::collections::BTreeMap::new();
                for (id, c) in core.connections() {
                    prop_assert!(names.insert(c.hello.name, *id).is_none(), "two connections to {}", c.hello.name);
                    prop_assert_ne!(c.hello.short_id, us.short_id);
                    prop_assert!(c.established() == (c.local_ready && c.remote_ready));
                }
                prop_assert_eq!(names.len(), core.peer_count());
                for (name, id) in &names {
                    prop_assert!(core.is_direct(name));
                    prop_assert!(!core.is_connected(*name, *id));
                }
            }
        }
    }
}

/// A core for us (1) with peer 2 on the fast path, heard at `start` and a second later.
fn heard_peer(start: Instant) -> MeshCore {
    let mut core = established(&hello(1), 1, true, &hello(2), config(true, SleeveUse::Fallback));
    for (s, count) in [(0, 1), (1, 2)] {
        core.on_event(Event::PathCheck {
            now: start + Duration::from_secs(s),
            probe_round: 10 + s as u32,
            received: received_from(2, count, 0),
        });
    }
    core
}

fn received_from(peer: u8, heartbeats: u64, echoes: u64) -> HashMap<u16, PathSample> {
    HashMap::from([(
        u16::from(peer),
        PathSample {
            rx_heartbeats: heartbeats,
            rx_echoes: echoes,
            probe: None,
        },
    )])
}

/// The peers of the plain heartbeats among `effects`.
fn heartbeat_peers(effects: &[Effect]) -> Vec<u16> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Heartbeats(beats) => Some(beats.iter().filter(|b| b.round == 0).map(|b| b.peer)),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Whether `effects` move a peer to the sleeve.
fn to_sleeve(effects: &[Effect]) -> bool {
    effects.iter().any(|e| {
        matches!(
            e,
            Effect::Switch {
                to: Overlay::Sleeve,
                ..
            }
        )
    })
}

#[test]
fn a_busy_peer_whose_kernel_echoes_our_heartbeats_stays_on_the_fast_path() {
    let start = Instant::now();
    let mut core = heard_peer(start);
    assert!(core
        .on_event(Event::FastdpStatus { id: 1, heard: true })
        .is_empty());
    // Its own heartbeats stop (a process starved of CPU), the echoes of ours go on (and
    // the probes cross: the path's MTU is not in question here).
    for s in 2..=12u32 {
        let effects = core.on_event(Event::PathCheck {
            now: start + Duration::from_secs(s.into()),
            probe_round: 10 + s,
            received: received_from(2, 2, u64::from(s)),
        });
        assert!(!to_sleeve(&effects), "second {s}: {effects:?}");
        core.on_event(Event::PathMtuSeen {
            id: 1,
            round: 10 + s,
            largest: 1500,
        });
    }
    // Echoes stop too: nothing comes through the fast path from the peer any more.
    let switched = (13..=17u32).any(|s| {
        to_sleeve(&core.on_event(Event::PathCheck {
            now: start + Duration::from_secs(s.into()),
            probe_round: 10 + s,
            received: received_from(2, 2, 12),
        }))
    });
    assert!(switched, "silent fast path, still not on the sleeve");
}

/// Of two routers speaking version 8, the one with the higher name sends plain heartbeats
/// only while the peer's do not arrive (the peer's kernel echoes the peer's own, which show
/// it the path both ways) or its search wants a floor-sized echo, and stays on the fast
/// path meanwhile; with a version 7 peer it sends at every check.
#[test]
fn the_higher_name_leaves_the_heartbeats_to_the_peer_while_the_peers_arrive() {
    for version in [MAX_VERSION, HEARTBEAT_DUTY_VERSION - 1] {
        let start = Instant::now();
        let us = hello(3);
        let peer = hello(2);
        let mut core = MeshCore::new(us.clone(), config(true, SleeveUse::Fallback));
        let Event::Handshaken(mut h) = handshaken(1, false, &peer) else {
            unreachable!()
        };
        h.version = version;
        core.on_event(Event::Handshaken(h));
        core.on_event(Event::Placed { id: 1, error: None });
        core.on_event(Event::RemoteReady { id: 1 });
        core.on_event(Event::FastdpStatus { id: 1, heard: true });
        // The peer's heartbeats arrive every second, every probe round crosses whole.
        let mut sent = Vec::new();
        for s in 0..=20u32 {
            let effects = core.on_event(Event::PathCheck {
                now: start + Duration::from_secs(s.into()),
                probe_round: 10 + s,
                received: received_from(2, u64::from(s) + 1, 0),
            });
            assert!(!to_sleeve(&effects), "v{version}, second {s}: {effects:?}");
            sent.push(heartbeat_lens(&effects, 2));
            core.on_event(Event::PathMtuSeen {
                id: 1,
                round: 10 + s,
                largest: 1500,
            });
        }
        let settled = &sent[10..];
        if version >= HEARTBEAT_DUTY_VERSION {
            // Floor-sized while the search runs, then none.
            assert_eq!(sent[0], [path_mtu::FLOOR], "{sent:?}");
            assert!(settled.iter().all(Vec::is_empty), "{sent:?}");
        } else {
            assert!(settled.iter().all(|l| l == &[0]), "{sent:?}");
        }
        // The peer's heartbeats stop (its process starved of CPU), its kernel still echoes
        // ours: ours go again at the next check and the echoes keep the fast path.
        for s in 21..=30u32 {
            let echoes = u64::from(s - 20);
            let effects = core.on_event(Event::PathCheck {
                now: start + Duration::from_secs(s.into()),
                probe_round: 10 + s,
                received: received_from(2, 21, echoes),
            });
            assert!(!to_sleeve(&effects), "v{version}, second {s}: {effects:?}");
            if s > 21 {
                assert_eq!(heartbeat_lens(&effects, 2), [0], "v{version}, second {s}");
            }
            core.on_event(Event::PathMtuSeen {
                id: 1,
                round: 10 + s,
                largest: 1500,
            });
        }
    }
}

/// The outer lengths of the plain heartbeats to `peer` among `effects`.
fn heartbeat_lens(effects: &[Effect], peer: u16) -> Vec<u16> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Heartbeats(beats) => Some(beats.iter().filter(|b| b.round == 0 && b.peer == peer).map(|b| b.outer_len)),
            _ => None,
        })
        .flatten()
        .collect()
}

/// A peer whose router never reports our path-MTU probes (a process starved of CPU while a
/// large mesh forms) but whose kernel echoes our heartbeats: while the floor is in question
/// the heartbeats are of its size, their echoes show it crossing, and the peer stays on the
/// fast path. Without the echoes it goes to the sleeve.
#[test]
fn echoes_of_floor_sized_heartbeats_keep_a_peer_that_reports_late_on_the_fast_path() {
    for echoing in [true, false] {
        let start = Instant::now();
        let mut core = heard_peer(start);
        core.on_event(Event::FastdpStatus { id: 1, heard: true });
        let mut lens = Vec::new();
        let mut switched = false;
        for s in 2..=40u32 {
            let effects = core.on_event(Event::PathCheck {
                now: start + Duration::from_secs(s.into()),
                probe_round: 10 + s,
                received: received_from(2, u64::from(s), if echoing { u64::from(s) } else { 0 }),
            });
            lens.extend(heartbeat_lens(&effects, 2));
            switched |= to_sleeve(&effects);
        }
        if echoing {
            assert!(!switched, "echoed, yet moved to the sleeve");
            assert_eq!(lens[0], path_mtu::FLOOR, "{lens:?}");
        } else {
            assert!(switched, "no report and no echo, still on the fast path");
        }
    }
}

#[test]
fn a_fast_path_peer_whose_connection_goes_is_held_while_its_echoes_arrive() {
    let start = Instant::now();
    let mut core = heard_peer(start);
    let effects = core.on_event(Event::Closed { id: 1, error: "reset".into() });
    assert_eq!(kinds(&effects), ["connections-changed"], "no unroute");
    assert_eq!(core.held_short_ids().values().map(|s| s.get()).collect::<Vec<_>>(), [2]);
    assert!(core.checks_paths());
    assert_eq!(core.terminations(), 1);
    // Only echoes from now on (its router process is gone, its kernel answers): held, and
    // heartbeats still go to it.
    for s in 2..40 {
        let effects = core.on_event(Event::PathCheck {
            now: start + Duration::from_secs(s),
            probe_round: 100 + s as u32,
            received: received_from(2, 2, s),
        });
        assert_eq!(heartbeat_peers(&effects), [2], "{s} s");
        assert!(!kinds(&effects).contains(&"unroute"), "{s} s");
    }
    let held = core.held().next().unwrap();
    assert_eq!(
        held.describe(start + Duration::from_secs(40)),
        "control connection lost 38s ago, fast path answering"
    );
    // Then silence: removed HOLD_SILENCE after the last echo, within two checks.
    let last = start + Duration::from_secs(39);
    let mut removed_at = None;
    for s in 40..60 {
        let now = start + Duration::from_secs(s);
        let effects = core.on_event(Event::PathCheck { now, probe_round: 200 + s as u32, received: received_from(2, 2, 39) });
        if kinds(&effects).contains(&"unroute") {
            assert!(kinds(&effects).contains(&"connections-changed"));
            removed_at = Some(now);
            break;
        }
    }
    let removed_at = removed_at.expect("removed");
    let after = removed_at - last;
    assert!(after >= super::super::hold::HOLD_SILENCE && after <= super::super::hold::HOLD_SILENCE + Duration::from_secs(2), "{after:?}");
    assert_eq!(core.held().count(), 0);
    assert!(!core.checks_paths());
}

#[test]
fn a_peer_not_heard_or_never_checked_is_unrouted_at_once() {
    // Never sampled: nothing says its fast path works.
    let mut core = established(&hello(1), 1, true, &hello(2), config(true, SleeveUse::Fallback));
    let effects = core.on_event(Event::Closed { id: 1, error: "reset".into() });
    assert_eq!(kinds(&effects), ["unroute", "connections-changed"]);
    // Silent for LOST_AFTER before the connection went (a host that is gone).
    let start = Instant::now();
    let mut core = heard_peer(start);
    for s in 2..6 {
        core.on_event(Event::PathCheck { now: start + Duration::from_secs(s), probe_round: 50 + s as u32, received: received_from(2, 2, 0) });
    }
    let effects = core.on_event(Event::Closed { id: 1, error: "timed out".into() });
    assert_eq!(kinds(&effects), ["unroute", "connections-changed"]);
    // No sleeve, so no heartbeats: never held.
    let mut core = established(&hello(1), 1, true, &hello(2), config(false, SleeveUse::Fallback));
    let effects = core.on_event(Event::Closed { id: 1, error: "reset".into() });
    assert_eq!(kinds(&effects), ["unroute", "connections-changed"]);
}

#[test]
fn a_held_peer_that_comes_back_is_placed_over_its_entries_without_a_removal() {
    let start = Instant::now();
    let mut core = heard_peer(start);
    core.on_event(Event::Closed { id: 1, error: "reset".into() });
    // Its relaunch: a new run, same short ID.
    let mut again = hello(2);
    again.uid += 1;
    let effects = core.on_event(handshaken(2, false, &again));
    assert_eq!(kinds(&effects), ["accept", "place"], "nothing removed first");
    assert_eq!(core.held().count(), 0);
    // Back with another short ID: the old entry goes, the new one is placed.
    let mut core = heard_peer(start);
    core.on_event(Event::Closed { id: 1, error: "reset".into() });
    let other = with_short_id(again, ShortId::new(9).unwrap());
    let effects = core.on_event(handshaken(2, false, &other));
    assert_eq!(kinds(&effects), ["remove", "accept", "place"]);
    let Effect::Remove(old) = &effects[0] else { unreachable!() };
    assert_eq!(old.peer.short_id.get(), 2);
}

#[test]
fn a_held_peers_short_id_is_not_given_to_another_name() {
    let start = Instant::now();
    let mut core = heard_peer(start);
    core.on_event(Event::Closed { id: 1, error: "reset".into() });
    let impostor = with_short_id(hello(3), ShortId::new(2).unwrap());
    let effects = core.on_event(handshaken(3, false, &impostor));
    assert_eq!(kinds(&effects), ["refuse"]);
}

#[test]
fn a_peers_sleeve_takes_relays_and_bundles_by_the_version_it_speaks() {
    let features = |version: u8| {
        let mut core = MeshCore::new(hello(1), config(true, SleeveUse::All));
        let Event::Handshaken(mut h) = handshaken(7, true, &hello(2)) else {
            unreachable!()
        };
        h.version = version;
        let effects = core.on_event(Event::Handshaken(h));
        let Some(Effect::Place { placement, .. }) = effects.get(1) else {
            panic!("not placed: {effects:?}")
        };
        (placement.sleeve.relays, placement.sleeve.bundles)
    };
    assert_eq!(features(4), (false, false));
    assert_eq!(features(6), (true, false), "a version 6 peer gets no bundles");
    assert_eq!(features(MAX_VERSION), (true, true));
}
