//! A router whose process dies is held by its peers while its kernel data path answers
//! their heartbeats (echoes from its receive program): traffic between the containers goes
//! on; a host that is really gone is removed within the bound (`router/hold.rs`).

use std::time::{Duration, Instant};

use weave_tests::{cmd, probe, require_root, require_tools, Netns, TestBed};

/// Removal of a silent held peer: `HOLD_SILENCE` (6 s) after its last heartbeat or echo,
/// plus up to two path checks (one a second).
const REMOVAL_BOUND: Duration = Duration::from_secs(8);

/// Two hosts, one container each, pinging each other; returns the bed and both containers.
fn two_hosts(prefix: &str) -> (TestBed, usize, usize) {
    let mut bed = TestBed::new(prefix, 2).expect("test bed");
    bed.launch_mesh(&[]).expect("routers connect");
    let a = bed
        .attach_container(1, "c1", "10.2.1.1/24")
        .expect("attach on host1");
    let b = bed
        .attach_container(2, "c1", "10.2.1.2/24")
        .expect("attach on host2");
    bed.container(a)
        .wait_ping("10.2.1.2", Duration::from_secs(10))
        .expect("host1/c1 reaches host2/c1");
    bed.container(b)
        .wait_ping("10.2.1.1", Duration::from_secs(10))
        .expect("host2/c1 reaches host1/c1");
    // A few path checks, so that router 2 has heard router 1's fast path.
    std::thread::sleep(Duration::from_secs(3));
    (bed, a, b)
}

/// Router `i`'s `status connections` line for a held peer, if any.
fn held_line(bed: &TestBed, i: usize) -> Option<String> {
    let c = bed.router(i).connections().ok()?;
    c.lines().find(|l| l.contains(" held ")).map(str::to_string)
}

/// (transmitted, received) from ping's summary.
fn ping_counts(stdout: &str) -> (u32, u32) {
    let line = stdout
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary:\n{stdout}"));
    let n: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    (n[0], n[1])
}

#[test]
fn a_killed_router_is_held_by_its_peer_and_traffic_goes_on() {
    if !require_root("a_killed_router_is_held_by_its_peer_and_traffic_goes_on") {
        return;
    }
    require_tools(&["iperf3", "ping"]);
    let (mut bed, a, b) = two_hosts("pgk");
    let (ca, cb) = (
        Netns::borrow(bed.container(a).ns.name()),
        Netns::borrow(bed.container(b).ns.name()),
    );
    // 16 s of pings every 50 ms both ways and a TCP stream; router 1 dies after 2 s and
    // stays down 10 s.
    let count = "320";
    let ping = |ns: &Netns, to: &str| {
        ns.spawn(&["ping", "-n", "-q", "-i", "0.05", "-W", "1", "-c", count, to])
            .expect("ping starts")
    };
    let mut ping_ab = ping(&ca, "10.2.1.2");
    let mut ping_ba = ping(&cb, "10.2.1.1");
    let _server = probe::iperf3_server(&cb).expect("iperf3 server");
    let mut stream = ca
        .spawn(&["iperf3", "-c", "10.2.1.2", "-t", "16", "-i", "1", "-J"])
        .expect("iperf3 client");
    std::thread::sleep(Duration::from_secs(2));
    bed.router_mut(1).kill();
    let killed = Instant::now();
    let line = cmd::wait_for("router 2 to hold router 1", Duration::from_secs(5), || {
        held_line(&bed, 2)
    })
    .expect("held");
    assert!(
        line.contains("fast path answering") && line.contains("host1"),
        "router 2's line for router 1: {line}"
    );
    // Past the silence limit, still held: router 1's kernel answers.
    std::thread::sleep(Duration::from_secs(8));
    let line = held_line(&bed, 2).unwrap_or_else(|| {
        panic!(
            "router 1 no longer held {:?} after its kill:\n{}",
            killed.elapsed(),
            bed.router(2).log_tail(30)
        )
    });
    assert!(line.contains("fast path answering"), "{line}");
    assert!(
        weave_tests::router::router_pids(bed.router(1).netns()).is_empty(),
        "router 1 stays down"
    );
    let metrics = bed.router(2).metrics().expect("metrics");
    let held = probe::metric_sum(&metrics, |s| {
        s.name == "weave_connections" && s.labels.contains("state=\"held\"")
    });
    assert_eq!(held, 1.0, "held peers in /metrics");
    let echoed = probe::metric_sum(&metrics, |s| {
        s.name == "weave_datapath_packets_total"
            && s.labels.contains("reason=\"rx_heartbeat_echoed\"")
    });
    assert!(
        echoed > 0.0,
        "router 2's kernel answers router 1's heartbeats too"
    );

    let done = |bg: &mut cmd::Background| {
        cmd::wait_for("it to finish", Duration::from_secs(20), || {
            (!bg.running()).then_some(())
        })
        .expect("finished");
        bg.output().0
    };
    for (what, bg) in [
        ("host1 -> host2", &mut ping_ab),
        ("host2 -> host1", &mut ping_ba),
    ] {
        let out = done(bg);
        let (sent, received) = ping_counts(&out);
        eprintln!("{what}: {sent} sent, {received} received");
        assert!(
            sent - received <= 2,
            "{what}: {} of {sent} pings lost while router 1 was down:\n{out}",
            sent - received
        );
    }
    let out = done(&mut stream);
    let transfer = probe::parse_iperf3(&out).expect("the TCP stream finished");
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    let per_second: Vec<u64> = v["intervals"]
        .as_array()
        .expect("intervals")
        .iter()
        .map(|i| i["sum"]["bytes"].as_u64().unwrap_or(0))
        .collect();
    eprintln!(
        "TCP: {} bytes, {:.0} Mbit/s, per second: {per_second:?}",
        transfer.bytes,
        transfer.bits_per_second / 1e6
    );
    assert!(
        per_second.iter().all(|b| *b > 0),
        "a second without TCP progress while router 1 was down: {per_second:?}"
    );
}

#[test]
fn a_host_whose_router_dies_and_whose_link_goes_is_removed_within_the_bound() {
    if !require_root("a_host_whose_router_dies_and_whose_link_goes_is_removed_within_the_bound") {
        return;
    }
    let (mut bed, _, _) = two_hosts("pgd");
    bed.router_mut(1).kill();
    cmd::wait_for("router 2 to hold router 1", Duration::from_secs(5), || {
        held_line(&bed, 2)
    })
    .expect("held");
    bed.host(1).ns.ip("link set eth0 down").expect("link down");
    let cut = Instant::now();
    cmd::wait_for(
        "router 2 to remove router 1",
        REMOVAL_BOUND + Duration::from_secs(5),
        || held_line(&bed, 2).is_none().then_some(()),
    )
    .expect("removed");
    let after = cut.elapsed();
    eprintln!("router 1 removed {after:?} after its host's link went down");
    let log = bed.router(2).log_tail(40);
    assert!(
        log.contains("removed from the data path: no heartbeat or echo"),
        "{log}"
    );
    assert!(
        after <= REMOVAL_BOUND,
        "removed {after:?} after the cut (bound {REMOVAL_BOUND:?})"
    );
    assert!(
        after >= Duration::from_secs(4),
        "removed {after:?} after the cut: before the silence limit"
    );
}
