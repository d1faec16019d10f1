use super::*;

fn peer(n: u8) -> PeerName {
    PeerName::from_bytes([0x0a, 0, 0, 0, 0, n])
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn addrs(r: &Records, n: &str) -> Vec<Ipv4Addr> {
    r.index()
        .addresses(&name(n))
        .map(|a| a.to_vec())
        .unwrap_or_default()
}

#[test]
fn names_are_checked_and_qualified() {
    assert_eq!(qualify("W1", "weave.local.").unwrap(), "w1.weave.local.");
    assert_eq!(
        qualify("db.weave.local", "weave.local").unwrap(),
        "db.weave.local."
    );
    assert_eq!(
        qualify("a.example.com", "weave.local.")
            .unwrap_err()
            .to_string(),
        "\"a.example.com\" is not in the domain weave.local."
    );
    assert!(qualify("weave.local.", "weave.local.").is_err());
    for bad in [
        "",
        ".",
        "a..b",
        "a b",
        "a/b",
        "ä.weave.local",
        &"x".repeat(64),
    ] {
        assert!(normalise_name(bad).is_err(), "{bad:?}");
    }
    assert_eq!(normalise_name("A-b_c.d.").unwrap(), "a-b_c.d.");
}

#[test]
fn added_names_resolve_both_ways_case_insensitively() {
    let r = Records::new(peer(1));
    let e = r
        .add("c1", ip("10.2.1.1"), "w1.weave.local.")
        .unwrap()
        .unwrap();
    assert_eq!((e.origin, e.tombstone), (peer(1), false));
    r.add("c2", ip("10.2.1.2"), "w1.weave.local.").unwrap();
    assert_eq!(
        addrs(&r, "W1.Weave.Local."),
        [ip("10.2.1.1"), ip("10.2.1.2")]
    );
    let names = r.index().names(ip("10.2.1.2")).unwrap().to_vec();
    assert_eq!(names, [name("w1.weave.local.")]);
    // Adding the same binding again is no change.
    assert_eq!(
        r.add("c1", ip("10.2.1.1"), "w1.weave.local.").unwrap(),
        None
    );
    assert!(addrs(&r, "nope.weave.local.").is_empty());
}

#[test]
fn removal_leaves_a_newer_tombstone_and_readding_beats_it() {
    let r = Records::new(peer(1));
    let added = r
        .add("c1", ip("10.2.1.1"), "w1.weave.local.")
        .unwrap()
        .unwrap();
    let gone = r.remove("c1", None, None).unwrap();
    assert_eq!(gone.len(), 1);
    assert!(gone[0].tombstone && gone[0].version > added.version);
    assert!(addrs(&r, "w1.weave.local.").is_empty());
    assert!(r.index().names(ip("10.2.1.1")).is_none());
    assert!(r.remove("c1", None, None).unwrap().is_empty());
    let again = r
        .add("c1", ip("10.2.1.1"), "w1.weave.local.")
        .unwrap()
        .unwrap();
    assert!(again.version > gone[0].version && !again.tombstone);
}

#[test]
fn remove_by_address_or_name_only_touches_those() {
    let r = Records::new(peer(1));
    r.add("c1", ip("10.2.1.1"), "a.weave.local.").unwrap();
    r.add("c1", ip("10.2.1.2"), "a.weave.local.").unwrap();
    r.add("c1", ip("10.2.1.1"), "b.weave.local.").unwrap();
    assert_eq!(r.remove("c1", Some(ip("10.2.1.2")), None).unwrap().len(), 1);
    assert_eq!(addrs(&r, "a.weave.local."), [ip("10.2.1.1")]);
    assert_eq!(
        r.remove("c1", None, Some("b.weave.local")).unwrap().len(),
        1
    );
    assert_eq!(addrs(&r, "a.weave.local."), [ip("10.2.1.1")]);
    assert!(addrs(&r, "b.weave.local.").is_empty());
}

#[test]
fn merge_keeps_the_highest_version_in_any_order() {
    let a = Records::new(peer(1));
    let v1 = a
        .add("c1", ip("10.2.1.1"), "w1.weave.local.")
        .unwrap()
        .unwrap();
    let v2 = a.remove("c1", None, None).unwrap().remove(0);
    let v3 = a
        .add("c1", ip("10.2.1.1"), "w1.weave.local.")
        .unwrap()
        .unwrap();
    let orders = [
        vec![v1.clone(), v2.clone(), v3.clone()],
        vec![v3.clone(), v1.clone(), v2.clone()],
        vec![v2.clone(), v3.clone(), v1.clone()],
    ];
    for order in orders {
        let b = Records::new(peer(2));
        for e in order {
            b.merge(vec![e]);
        }
        assert_eq!(b.entries(), vec![v3.clone()]);
        assert_eq!(addrs(&b, "w1.weave.local."), [ip("10.2.1.1")]);
    }
    // News is only what changed.
    let b = Records::new(peer(2));
    assert_eq!(b.merge(vec![v2.clone()]), vec![v2.clone()]);
    assert!(b.merge(vec![v1.clone(), v2.clone()]).is_empty());
    assert!(addrs(&b, "w1.weave.local.").is_empty());
}

#[test]
fn our_entries_from_an_earlier_run_come_back_as_tombstones() {
    let old_run = Records::new(peer(1));
    let stale = old_run
        .add("c9", ip("10.2.1.9"), "old.weave.local.")
        .unwrap()
        .unwrap();
    let me = Records::new(peer(1));
    let news = me.merge(vec![stale.clone()]);
    assert_eq!(news.len(), 1);
    assert!(news[0].tombstone && news[0].version > stale.version);
    assert!(addrs(&me, "old.weave.local.").is_empty());
}

/// theirs.weave.local. -> 10.2.2.1, registered by peer 2.
fn peer2_entry() -> Entry {
    Entry {
        container_id: "c2".into(),
        origin: peer(2),
        addr: ip("10.2.2.1"),
        hostname: "theirs.weave.local.".into(),
        version: 5,
        tombstone: false,
    }
}

#[test]
fn entries_of_departed_peers_disappear_and_stay_away_until_they_return() {
    let r = Records::new(peer(1));
    r.add("c1", ip("10.2.1.1"), "mine.weave.local.").unwrap();
    let theirs = peer2_entry();
    r.merge(vec![theirs.clone()]);
    assert_eq!(addrs(&r, "theirs.weave.local."), [ip("10.2.2.1")]);
    let now = Instant::now();
    let only_me: HashSet<PeerName> = [peer(1)].into();
    assert_eq!(r.prune(&only_me, now), 1);
    assert!(addrs(&r, "theirs.weave.local.").is_empty());
    assert_eq!(addrs(&r, "mine.weave.local."), [ip("10.2.1.1")]);
    // A late copy from a third router does not bring it back…
    assert!(r.merge(vec![theirs.clone()]).is_empty());
    assert!(addrs(&r, "theirs.weave.local.").is_empty());
    // …until the peer is in the mesh again.
    let both: HashSet<PeerName> = [peer(1), peer(2)].into();
    r.prune(&both, now);
    assert_eq!(r.merge(vec![theirs]).len(), 1);
    assert_eq!(addrs(&r, "theirs.weave.local."), [ip("10.2.2.1")]);
}

#[test]
fn a_departed_peer_that_speaks_again_is_heard_at_once() {
    let r = Records::new(peer(1));
    let theirs = peer2_entry();
    r.merge(vec![theirs.clone()]);
    let only_me: HashSet<PeerName> = [peer(1)].into();
    assert_eq!(r.prune(&only_me, Instant::now()), 1);
    let payload = encode(std::slice::from_ref(&theirs));
    // Relayed by a third router: still ignored.
    assert_eq!(r.on_gossip(peer(3), &payload), Ok(None));
    assert!(addrs(&r, "theirs.weave.local.").is_empty());
    // From the peer itself (it restarted before the next prune saw it live): taken.
    assert!(r.on_gossip(peer(2), &payload).unwrap().is_some());
    assert_eq!(addrs(&r, "theirs.weave.local."), [ip("10.2.2.1")]);
}

#[test]
fn old_tombstones_are_forgotten() {
    let r = Records::new(peer(1));
    r.add("c1", ip("10.2.1.1"), "w1.weave.local.").unwrap();
    r.remove("c1", None, None).unwrap();
    let live: HashSet<PeerName> = [peer(1)].into();
    let now = Instant::now();
    assert_eq!(r.prune(&live, now), 0);
    assert_eq!(r.entries().len(), 1);
    assert_eq!(r.prune(&live, now + TOMBSTONE_LIFETIME), 1);
    assert!(r.entries().is_empty());
}

#[test]
fn payloads_round_trip_and_bad_ones_change_nothing() {
    let a = Records::new(peer(1));
    a.add("c1", ip("10.2.1.1"), "w1.weave.local.").unwrap();
    a.add("c2", ip("10.2.1.2"), "w2.weave.local.").unwrap();
    a.remove("c2", None, None).unwrap();
    let full = a.full_state().unwrap();
    assert_eq!(decode(&full).unwrap(), a.entries());

    let b = Records::new(peer(2));
    assert!(b.full_state().is_none());
    let news = b.on_gossip(peer(1), &full).unwrap().unwrap();
    assert_eq!(decode(&news).unwrap(), a.entries());
    assert_eq!(b.on_gossip(peer(1), &full).unwrap(), None);
    assert_eq!(addrs(&b, "w1.weave.local."), [ip("10.2.1.1")]);

    let c = Records::new(peer(3));
    assert!(c.on_gossip(peer(1), b"\xff\xff garbage").is_err());
    let mut odd = a.entries();
    odd[0].hostname = "Bad Name.".into();
    assert!(c.on_gossip(peer(1), &encode(&odd)).is_err());
    assert!(c.entries().is_empty());
    // An entry of c's own with a version that would wrap when c answers it with a newer one.
    let mut wrapping = a.entries();
    wrapping[0].origin = peer(3);
    wrapping[0].version = u64::MAX;
    assert!(c.on_gossip(peer(1), &encode(&wrapping)).is_err());
    assert!(c.entries().is_empty());
}

/// An entry of ours from gossip at half the version limit or above (forged: no run counts
/// that far) is not outbid: ours would go past what peers accept and be refused by all.
#[test]
fn a_forged_entry_of_ours_near_the_limit_is_not_outbid() {
    let me = Records::new(peer(1));
    let mine = me
        .add("c1", ip("10.2.1.1"), "w1.weave.local.")
        .unwrap()
        .unwrap();
    for version in [crate::mesh::OWN_VERSION_LIMIT, crate::mesh::VERSION_LIMIT] {
        let forged = Entry {
            version,
            tombstone: true,
            ..mine.clone()
        };
        assert!(me.merge(vec![forged]).is_empty(), "{version}");
        assert_eq!(me.entries(), vec![mine.clone()]);
    }
    // Below it an entry of an earlier run is outbid, and peers take the answer.
    let earlier = Entry {
        version: mine.version + 10,
        ..mine.clone()
    };
    let news = me.merge(vec![earlier]);
    assert_eq!(news.len(), 1);
    assert_eq!(news[0].version, mine.version + 11);
    let other = Records::new(peer(2));
    assert_eq!(other.merge(news.clone()), news);
}
