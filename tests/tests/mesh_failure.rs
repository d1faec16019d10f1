//! A host that vanishes without a word (its router killed with SIGKILL, its link cut)
//! disappears from every other router's view of the mesh within about ten seconds: no
//! connection to it, no peer of that name in gossip. (A router killed on a host that stays up
//! keeps answering in the kernel and is held by its peers: `peer_grace.rs`.)

use std::time::{Duration, Instant};

use weave_tests::mesh::Report;
use weave_tests::{cmd, require_root, TestBed};

#[test]
fn mesh_killed_router_is_dropped_by_all_others() {
    if !require_root("mesh_killed_router_is_dropped_by_all_others") {
        return;
    }
    let mut bed = TestBed::new("wmk", 4).expect("test bed");
    bed.launch_mesh(&[]).expect("routers connect");
    let dead = bed.peer_name(4);
    for i in 1..=3 {
        let r = bed.router(i);
        cmd::wait_for(
            &format!("host{i} to know host4"),
            Duration::from_secs(20),
            || Report::of(r).ok()?.peers().contains(&dead).then_some(()),
        )
        .expect("gossip");
    }

    bed.router_mut(4).kill();
    let t0 = Instant::now();
    bed.host(4).ns.ip("link set eth0 down").expect("host4's link down");
    // First the mesh view: gossip, routes and live connections.
    let mut took = Vec::new();
    for i in 1..=3 {
        let r = bed.router(i);
        let gone = cmd::wait_for(
            &format!("host{i} to drop host4 from gossip"),
            Duration::from_secs(15),
            || {
                let peers = r.check(&["status", "peers"]).ok()?;
                let conns = r.connections().ok()?;
                let rep = Report::of(r).ok()?;
                let live = conns.lines().any(|l| {
                    (l.contains("established") || l.contains("pending")) && l.contains(&dead)
                });
                let listed = peers.contains(&dead) || peers.contains("host4");
                (!live && !listed && !rep.peers().contains(&dead) && rep.next_hop(&dead).is_none())
                    .then_some(())
            },
        );
        gone.unwrap_or_else(|e| {
            panic!(
                "{e}\nstatus peers:\n{}\nstatus connections:\n{}",
                r.check(&["status", "peers"]).unwrap_or_default(),
                r.connections().unwrap_or_default()
            )
        });
        took.push(t0.elapsed());
    }
    eprintln!("host4 dropped from gossip by hosts 1..3 after {took:?}");
    let last = *took.iter().max().expect("three hosts");
    assert!(
        last <= Duration::from_secs(10),
        "host4 was dropped only after {last:?}"
    );
    for i in 1..=3 {
        let peers = Report::of(bed.router(i)).expect("report").peers();
        assert_eq!(peers.len(), 3, "host{i} knows {peers:?}");
    }

    // Then `status connections`: nobody keeps dialling a peer it only learned through gossip
    // once that peer has left (host4 dialled the others; none of them was told about it).
    for i in 1..=3 {
        let r = bed.router(i);
        let left = Duration::from_secs(12)
            .saturating_sub(t0.elapsed())
            .max(Duration::from_secs(1));
        cmd::wait_for(&format!("host{i} to stop listing host4"), left, || {
            let c = r.connections().ok()?;
            (!c.contains("198.18.0.4") && !c.contains(&dead) && !c.contains("host4")).then_some(())
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}: host4 has left gossip, yet host{i} still lists it in `status connections` \
                 (a target found by discovery, still redialled):\n{}",
                r.connections().unwrap_or_default()
            )
        });
    }
}
