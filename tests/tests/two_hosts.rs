//! Two hosts, one container each: what a user would notice first.

use std::time::Duration;

use weave_tests::{probe, require_root, TestBed};

#[test]
fn two_hosts_ping_arp_status_metrics_detach() {
    if !require_root("two_hosts_ping_arp_status_metrics_detach") {
        return;
    }
    let mut bed = TestBed::new("wt2h", 2).expect("test bed");
    bed.launch_mesh(&[]).expect("routers connect");
    let a = bed
        .attach_container(1, "c1", "10.2.1.1/24")
        .expect("attach on host1");
    let b = bed
        .attach_container(2, "c1", "10.2.1.2/24")
        .expect("attach on host2");
    let (ca, cb) = (bed.container(a), bed.container(b));

    // ethwe is there, with the underlay MTU minus the VXLAN overhead.
    assert_eq!(probe::link_mtu(&ca.ns, "ethwe").expect("ethwe in c1"), 1450);

    // Containers reach each other, both ways.
    ca.wait_ping("10.2.1.2", Duration::from_secs(10))
        .expect("host1/c1 reaches host2/c1");
    let out = ca.ping("10.2.1.2", 3).expect("ping runs");
    assert!(out.success(), "ping host1/c1 -> host2/c1:\n{}", out.stdout);
    let out = cb.ping("10.2.1.1", 3).expect("ping runs");
    assert!(out.success(), "ping host2/c1 -> host1/c1:\n{}", out.stdout);

    // ARP resolved to the peer container's MAC.
    let mac_b = probe::link_mac(&cb.ns, "ethwe").expect("MAC of host2/c1");
    let n = probe::neighbour(&ca.ns, "10.2.1.2")
        .expect("ip neigh")
        .expect("host1/c1 has a neighbour entry for 10.2.1.2");
    assert!(
        n.contains(&mac_b),
        "neighbour entry {n:?} should carry {mac_b}"
    );

    // Each router lists the other as established.
    for (i, other) in [(1, "host2"), (2, "host1")] {
        let c = bed.router(i).connections().expect("status connections");
        let line = c
            .lines()
            .find(|l| l.contains(other))
            .unwrap_or_else(|| panic!("host{i} does not list {other}:\n{c}"));
        assert!(line.contains("established"), "host{i}: {line}");
    }

    // Metrics: valid Prometheus text, and traffic was counted.
    let m = bed.router(1).metrics().expect("GET /metrics");
    assert!(
        !probe::parse_metrics(&m).is_empty(),
        "no samples in /metrics:\n{m}"
    );
    if let Err(said) = probe::promtool_check_metrics(&m) {
        panic!("promtool check metrics:\n{said}\n{m}");
    }

    // Detach: ethwe goes away and the other side no longer gets through.
    bed.router(2).detach(&cb.ns.path()).expect("detach");
    assert!(
        !probe::links(&cb.ns)
            .expect("links")
            .iter()
            .any(|l| l == "ethwe"),
        "ethwe still in host2/c1 after detach"
    );
    let out = ca.ping("10.2.1.2", 2).expect("ping runs");
    assert!(
        !out.success(),
        "ping still answered after detach:\n{}",
        out.stdout
    );
}
