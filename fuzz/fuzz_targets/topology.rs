//! The topology as gossip from hostile peers changes it: a sequence of operations from the
//! input (merges of records, record changes, our own changes, garbage collection) on our
//! view, with a replica (another router) kept up to date from it by the digest exchange.
//!
//! Invariants after every operation: nothing panics; we are present with our UID and a
//! version peers accept (at most the version limit); every record held is one peers accept
//! (sorted connections, none to itself, a 12-bit short ID, a version in range); a refused
//! merge or change leaves the view as it was; records only move forward (version, UID) while
//! held; every improved record is held or superseded. After a sync the replica holds every
//! record of ours at least as new, and the very record when the versions are equal (the
//! changes kept for neighbours a few versions behind rebuild exactly the record).
#![no_main]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weave_router::mesh::peer_name::{PeerName, ShortId};
use weave_router::mesh::topology::{
    ConnectionSummary, DeltaOutcome, PeerInfo, RecordDelta, RecordVersion, Topology,
};
use weave_router::mesh::VERSION_LIMIT;
use weave_router_fuzz::{addr, peer, wire_short_id, WireVersion};

/// Us and the replica; gossip names peers 1..=8 (us included), never the replica.
const ME: u8 = 1;
const ME_UID: u64 = 1;
const REPLICA: u8 = 100;

#[derive(Arbitrary, Debug)]
struct Conn {
    remote: u8,
    outbound: bool,
    established: bool,
}

#[derive(Arbitrary, Debug)]
struct Record {
    name: u8,
    uid: u8,
    version: WireVersion,
    short_id: u16,
    nickname_len: u8,
    underlay: u8,
    connections: Vec<Conn>,
    /// Leave the connections as given (maybe unsorted or duplicated) instead of sorted.
    raw: bool,
}

#[derive(Arbitrary, Debug)]
struct Delta {
    name: u8,
    uid: u8,
    from: WireVersion,
    to: WireVersion,
    short_id: u16,
    nickname_len: u8,
    upserted: Vec<Conn>,
    removed: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Merge(Vec<Record>),
    Delta(Delta),
    /// A change of a record we hold, as its owner would send it (made from our record).
    HonestDelta {
        name: u8,
        version_step: u8,
        connections: Vec<Conn>,
    },
    SetOurConnections(Vec<Conn>),
    SetOurShortId(u16),
    GarbageCollect,
    Sync,
    Compare(Vec<(u8, WireVersion, u8)>),
}

fn name(n: u8) -> PeerName {
    peer(1 + n % 8)
}

fn sid(v: u16) -> ShortId {
    // Mostly in range; one in eight anything (refused on receipt when beyond 12 bits).
    if v & 0xe000 == 0xe000 {
        wire_short_id(v)
    } else {
        wire_short_id(v & 0x0fff)
    }
}

fn conns(list: &[Conn], raw: bool) -> Vec<ConnectionSummary> {
    let mut out: Vec<ConnectionSummary> = list
        .iter()
        .map(|c| ConnectionSummary {
            remote: name(c.remote),
            address: SocketAddr::from((addr(c.remote), 6783)),
            outbound: c.outbound,
            established: c.established,
        })
        .collect();
    if !raw {
        out.sort();
        out.dedup_by(|a, b| a.remote == b.remote);
    }
    out
}

fn record(r: &Record) -> PeerInfo {
    let mut info = PeerInfo::new(
        name(r.name),
        "n".repeat(usize::from(r.nickname_len % 80)),
        u64::from(r.uid % 3),
        sid(r.short_id),
    )
    .with_address(addr(r.underlay), 6783);
    info.version = r.version.get();
    info.connections = conns(&r.connections, r.raw);
    // An owner never lists itself: mostly drop such entries (the rest tests the refusal).
    if !r.raw {
        info.connections.retain(|c| c.remote != info.name);
    }
    info
}

/// What every peer checks of a record it receives.
fn acceptable(p: &PeerInfo) -> bool {
    (1..=VERSION_LIMIT).contains(&p.version)
        && p.short_id.in_range()
        && p.connections.iter().all(|c| c.remote != p.name)
        && p.connections.windows(2).all(|w| w[0].remote < w[1].remote)
}

fn check(t: &Topology, before: &Topology, gc: bool) {
    let me = t.ourself();
    assert_eq!((me.name, me.uid), (peer(ME), ME_UID));
    for p in t.peers() {
        assert!(acceptable(p), "a record peers would refuse is held: {p:?}");
        if let Some(old) = before.peer(&p.name) {
            assert!(
                (p.version, p.uid) >= (old.version, old.uid),
                "record of {} went back from {}/{} to {}/{}",
                p.name,
                old.version,
                old.uid,
                p.version,
                p.uid
            );
        }
    }
    if !gc {
        for p in before.peers() {
            assert!(
                t.peer(&p.name).is_some(),
                "{} lost without a garbage collection",
                p.name
            );
        }
    }
}

/// Brings the replica up to date from `t` the way neighbours do: it sends its digest, we
/// answer with newer records and the changes it lacks.
fn sync(t: &Topology, replica: &mut Topology, collected: &BTreeSet<PeerName>) {
    let comparison = t.compare(peer(REPLICA), &replica.digest());
    replica
        .merge(&comparison.ours_newer)
        .expect("the replica takes our records");
    for change in &comparison.our_changes {
        let outcome = replica
            .apply_delta(change)
            .expect("the replica takes our changes");
        assert!(
            matches!(outcome, DeltaOutcome::Applied | DeltaOutcome::Stale),
            "a change we kept did not apply: {outcome:?} for {change:?}"
        );
    }
    for p in t.peers() {
        let held = replica
            .peer(&p.name)
            .expect("the replica holds every record");
        assert!((held.version, held.uid) >= (p.version, p.uid));
        // A record dropped and received again may reuse a version with other contents.
        if (held.version, held.uid) == (p.version, p.uid) && !collected.contains(&p.name) {
            assert_eq!(held, p, "the replica rebuilt a different record");
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let ourself =
        PeerInfo::new(peer(ME), "me".into(), ME_UID, wire_short_id(1)).with_address(addr(ME), 6783);
    let mut t = Topology::new(ourself);
    let mut replica = Topology::new(PeerInfo::new(
        peer(REPLICA),
        "replica".into(),
        7,
        wire_short_id(2),
    ));
    let mut collected = BTreeSet::new();
    for op in ops.iter().take(64) {
        let before = t.clone();
        let mut gc = false;
        match op {
            Op::Merge(records) => {
                let update: Vec<PeerInfo> = records.iter().take(16).map(record).collect();
                match t.merge(&update) {
                    Err(e) => {
                        assert_eq!(t, before, "a refused merge changed the view");
                        assert!(!e.to_string().contains('\n'));
                    }
                    Ok(outcome) => {
                        for p in &outcome.improved {
                            let held = t.peer(&p.name).expect("improved records are held");
                            assert!((held.version, held.uid) >= (p.version, p.uid));
                        }
                        if outcome.ourself_bumped {
                            assert!(t.ourself().version > before.ourself().version);
                        }
                    }
                }
            }
            Op::Delta(d) => {
                let delta = RecordDelta {
                    name: name(d.name),
                    uid: u64::from(d.uid % 3),
                    from_version: d.from.get(),
                    version: d.to.get(),
                    nickname: "d".repeat(usize::from(d.nickname_len % 80)),
                    short_id: sid(d.short_id),
                    underlay: Ipv4Addr::new(10, 0, 0, d.name),
                    control_port: 6783,
                    upserted: conns(&d.upserted, true),
                    removed: d.removed.iter().map(|&r| name(r)).collect(),
                };
                if t.apply_delta(&delta).is_err() {
                    assert_eq!(t, before, "a refused change changed the view");
                }
            }
            Op::HonestDelta {
                name: n,
                version_step,
                connections,
            } => {
                let Some(held) = t.peer(&name(*n)).cloned() else {
                    continue;
                };
                if held.name == peer(ME) {
                    continue;
                }
                let mut next = held.clone();
                next.version = held.version + 1 + u64::from(version_step % 4);
                next.connections = conns(connections, false);
                next.connections.retain(|c| c.remote != next.name);
                if next.version <= VERSION_LIMIT {
                    let outcome = t.apply_delta(&next.delta_from(&held)).expect("accepted");
                    assert_eq!(outcome, DeltaOutcome::Applied);
                    assert_eq!(t.peer(&held.name), Some(&next), "a change applied wrongly");
                }
            }
            Op::SetOurConnections(list) => {
                let mut list = conns(list, true);
                list.retain(|c| c.remote != peer(ME));
                t.set_our_connections(list);
            }
            Op::SetOurShortId(v) => t.set_our_short_id(wire_short_id(v & 0x0fff)),
            Op::GarbageCollect => {
                collected.extend(t.garbage_collect());
                gc = true;
            }
            Op::Sync => sync(&t, &mut replica, &collected),
            Op::Compare(digest) => {
                let digest: Vec<RecordVersion> = digest
                    .iter()
                    .take(16)
                    .map(|(n, v, uid)| RecordVersion {
                        name: name(*n),
                        version: v.get(),
                        uid: u64::from(uid % 3),
                    })
                    .collect();
                let c = t.compare(peer(REPLICA), &digest);
                for p in &c.ours_newer {
                    assert_eq!(t.peer(&p.name), Some(p));
                }
                let _ = t.newer_than_listed(&digest);
            }
        }
        check(&t, &before, gc);
        let _ = t.short_id_lost_to();
        let _ = weave_router::mesh::routes::compute(&t);
    }
    sync(&t, &mut replica, &collected);
});
