//! Multi-hop: hosts that cannot reach each other on the underlay (nftables drops everything
//! between them) still carry their containers' traffic through the hosts in between.
//!
//! * a line host1–host2–host3 with host1↔host3 cut: unicast relayed by host2 (seen in a
//!   capture on host2's underlay), and a broadcast from host1 delivered exactly once to each
//!   other host;
//! * a ring host1–host2–host3–host4–host1 (the diagonals cut): a broadcast reaches every host
//!   exactly once (no loop around the ring), and when the link in use towards host3 is cut,
//!   traffic moves to the other side of the ring.

use std::fmt::Write;
use std::time::{Duration, Instant};

use weave_tests::mesh::{self, Capture, Report};
use weave_tests::partial_mesh::{
    assert_once_each, broadcast_counts, container_on_each, count, dump, flows, line, ring,
};
use weave_tests::{require_root, TestBed};

#[test]
fn mesh_line_relays_unicast_through_the_middle_host() {
    if !require_root("mesh_line_relays_unicast_through_the_middle_host") {
        return;
    }
    let mut bed = line("wml", &[]);
    let (a, b, c) = (bed.peer_name(1), bed.peer_name(2), bed.peer_name(3));

    // The control plane: host1 knows host3 only through gossip, and routes to it via host2.
    let peers = bed
        .router(1)
        .check(&["status", "peers"])
        .expect("status peers");
    assert!(
        peers.contains(&c),
        "`status peers` on host1 does not list host3 ({c}):\n{peers}"
    );
    let rep = Report::of(bed.router(1)).expect("report");
    assert_eq!(
        rep.next_hop(&c).as_deref(),
        Some(b.as_str()),
        "host1's route to host3: {}",
        rep.routes_text()
    );
    let rep3 = Report::of(bed.router(3)).expect("report");
    assert_eq!(
        rep3.next_hop(&a).as_deref(),
        Some(b.as_str()),
        "host3's route to host1: {}",
        rep3.routes_text()
    );
    let conns = bed.router(1).connections().expect("connections");
    assert!(
        !conns
            .lines()
            .any(|l| l.contains("established") && l.contains(&c)),
        "host1 has a direct connection to host3 although the link is cut:\n{conns}"
    );

    let ca = bed
        .attach_container(1, "c1", "10.2.1.1/24")
        .expect("attach");
    bed.attach_container(2, "c1", "10.2.1.2/24")
        .expect("attach");
    let cc = bed
        .attach_container(3, "c1", "10.2.1.3/24")
        .expect("attach");

    let cap = Capture::vxlan(&bed.host(2).ns, "eth0").expect("tcpdump on host2");
    let reached = bed
        .container(ca)
        .wait_ping("10.2.1.3", Duration::from_secs(20));
    let back = bed.container(cc).ping("10.2.1.1", 5).expect("ping runs");
    let fwd = bed.container(ca).ping("10.2.1.3", 5).expect("ping runs");
    let pkts = cap.stop();
    let f = flows(&pkts, "ICMP echo");
    let summary = format!(
        "ICMP in VXLAN on host2's eth0 (src, dst) -> packets: {f:?}\nall VXLAN: {:?}\n{}",
        flows(&pkts, ""),
        dump(&bed)
    );
    reached.unwrap_or_else(|e| panic!("host1's container never reached host3's: {e}\n{summary}"));
    assert!(
        fwd.success(),
        "ping host1 -> host3 failed:\n{}\n{summary}",
        fwd.stdout
    );
    assert!(
        back.success(),
        "ping host3 -> host1 failed:\n{}\n{summary}",
        back.stdout
    );

    // Each direction: the five echo requests of one ping run and the five replies to the
    // other's, in at host2 from one end and out again to the other.
    for (s, d) in [(1, 2), (2, 3), (3, 2), (2, 1)] {
        let n = count(&f, s, d);
        assert!(
            n >= 10,
            "expected at least 10 ICMP frames host{s} -> host{d} through host2, saw {n}\n{summary}"
        );
    }
    assert_eq!(
        count(&f, 1, 3) + count(&f, 3, 1),
        0,
        "frames between host1 and host3 on host2's eth0?\n{summary}"
    );
}

#[test]
fn mesh_line_broadcast_reaches_each_host_once() {
    if !require_root("mesh_line_broadcast_reaches_each_host_once") {
        return;
    }
    let mut bed = line("wmb", &[]);
    let ca = bed
        .attach_container(1, "c1", "10.2.1.1/24")
        .expect("attach");
    let cb = bed
        .attach_container(2, "c1", "10.2.1.2/24")
        .expect("attach");
    let cc = bed
        .attach_container(3, "c1", "10.2.1.3/24")
        .expect("attach");
    // Unicast first, so a failure here is told apart from one of the broadcast tree.
    bed.container(ca)
        .wait_ping("10.2.1.2", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", dump(&bed)));
    let (counts, out) = broadcast_counts(&bed, ca, &[cb, cc], 3);
    assert_once_each(&bed, &counts, 3, &out);
}

#[test]
fn mesh_ring_broadcast_reaches_each_host_once() {
    if !require_root("mesh_ring_broadcast_reaches_each_host_once") {
        return;
    }
    let mut bed = ring("wmrb", &[]);
    let (ca, to) = container_on_each(&mut bed, 4);
    bed.container(ca)
        .wait_ping("10.2.1.2", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", dump(&bed)));
    let (counts, out) = broadcast_counts(&bed, ca, &to, 3);
    assert_once_each(&bed, &counts, 3, &out);
}

#[test]
fn mesh_ring_reroutes_when_a_link_is_cut() {
    if !require_root("mesh_ring_reroutes_when_a_link_is_cut") {
        return;
    }
    let mut bed = ring("wmr", &[]);
    let ca = bed
        .attach_container(1, "c1", "10.2.1.1/24")
        .expect("attach");
    bed.attach_container(3, "c1", "10.2.1.3/24")
        .expect("attach");
    bed.container(ca)
        .wait_ping("10.2.1.3", Duration::from_secs(20))
        .unwrap_or_else(|e| {
            panic!(
                "host1 never reached host3 around the ring: {e}\n{}",
                dump(&bed)
            )
        });

    let c = bed.peer_name(3);
    let rep = Report::of(bed.router(1)).expect("report");
    let hop = rep
        .next_hop(&c)
        .unwrap_or_else(|| panic!("no route to host3: {}", rep.routes_text()));
    let (via, other) = if hop == bed.peer_name(2) {
        (2, 4)
    } else if hop == bed.peer_name(4) {
        (4, 2)
    } else {
        panic!(
            "host1 routes to host3 via {hop}, neither host2 nor host4: {}",
            rep.routes_text()
        )
    };

    // The path in use, as captures on host2's and host4's underlay show it, must be the one
    // the report names.
    let used = requests_through(&bed, ca, &[2, 4]);
    assert_eq!(
        used.0,
        vec![via],
        "host1's report routes to host3 via host{via}, but the echo requests went through {:?}:\n{}{}",
        used.0,
        used.1,
        dump(&bed)
    );

    // Cut host1–host<via>: host1 and host<via> notice by missing heartbeats.
    mesh::cut(&bed, 1, via).expect("cut");
    let t0 = Instant::now();
    let rerouted = bed
        .container(ca)
        .wait_ping("10.2.1.3", Duration::from_secs(30));
    let took = t0.elapsed();
    let diag = dump(&bed);
    rerouted.unwrap_or_else(|e| {
        panic!("no way around the ring after cutting host1–host{via}: {e}\n{diag}")
    });
    eprintln!(
        "host1 -> host3 again {:.1} s after cutting host1–host{via}",
        took.as_secs_f64()
    );
    let rep = Report::of(bed.router(1)).expect("report");
    assert_eq!(
        rep.next_hop(&c).as_deref(),
        Some(bed.peer_name(other).as_str()),
        "host1's route to host3 after the cut: {}",
        rep.routes_text()
    );
    // Heartbeats time out after about 5 s; a few seconds more for routes and ARP.
    assert!(
        took <= Duration::from_secs(12),
        "took {took:?} to reach host3 again after cutting host1–host{via}\n{diag}"
    );
    let used = requests_through(&bed, ca, &[2, 4]);
    assert_eq!(
        used.0,
        vec![other],
        "after the cut the echo requests should go through host{other}, went through {:?}:\n{}{}",
        used.0,
        used.1,
        dump(&bed)
    );
}

/// Pings host3's container (10.2.1.3) 5 times from container `from` on host1 while
/// capturing on the underlay of `relays`; which of them carried the echo requests from
/// host1 on to host3, and what each saw.
fn requests_through(bed: &TestBed, from: usize, relays: &[usize]) -> (Vec<usize>, String) {
    let caps: Vec<(usize, Capture)> = relays
        .iter()
        .map(|&h| (h, Capture::vxlan(&bed.host(h).ns, "eth0").expect("tcpdump")))
        .collect();
    let out = bed.container(from).ping("10.2.1.3", 5).expect("ping runs");
    let mut carried = Vec::new();
    let mut seen = format!("ping: {}\n", out.stdout.lines().last().unwrap_or_default());
    for (h, cap) in caps {
        let f = flows(&cap.stop(), "10.2.1.1 > 10.2.1.3: ICMP echo request");
        if count(&f, 1, h) >= 5 && count(&f, h, 3) >= 5 {
            carried.push(h);
        }
        let _ = writeln!(seen, "echo requests on host{h}'s eth0: {f:?}");
    }
    assert!(
        out.success(),
        "ping host1 -> host3 failed:\n{}\n{seen}{}",
        out.stdout,
        dump(bed)
    );
    (carried, seen)
}
