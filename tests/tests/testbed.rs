//! The test bed itself: the baseline topologies and the underlay shapes carry traffic and
//! leave nothing behind.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use weave_tests::underlay::{NAT_INNER_ADDR, NAT_PUBLIC_ADDR};
use weave_tests::{netns, pair, probe, require_root, Mode, TestBed};

/// The namespaces of the bed `prefix` (behind [`weave_tests::bed::PREFIX_ENV`], if set).
fn leftovers(prefix: &str) -> Vec<String> {
    let prefix = weave_tests::bed::full_prefix(prefix);
    netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect()
}

#[test]
fn baselines_carry_traffic_and_teardown_is_complete() {
    if !require_root("baselines_carry_traffic_and_teardown_is_complete") {
        return;
    }
    for (mode, prefix) in [(Mode::Routed, "wttr"), (Mode::KernelVxlan, "wttv")] {
        let t = Instant::now();
        let p = pair(prefix, mode.clone(), 1450).expect("baseline pair");
        let built = t.elapsed();
        let out = p.client().ping(&p.server_ip(), 2).expect("ping runs");
        assert!(out.success(), "{mode}: ping failed: {}", out.stdout);
        assert_eq!(
            leftovers(prefix).len(),
            5,
            "{mode}: underlay, 2 hosts, 2 containers"
        );
        let t2 = Instant::now();
        drop(p);
        eprintln!("{mode}: built in {built:?}, removed in {:?}", t2.elapsed());
        assert!(
            leftovers(prefix).is_empty(),
            "{mode}: left {:?}",
            leftovers(prefix)
        );
    }
}

#[test]
fn teardown_happens_on_panic() {
    if !require_root("teardown_happens_on_panic") {
        return;
    }
    let r = std::panic::catch_unwind(|| {
        let mut bed = TestBed::new("wttp", 2).expect("bed");
        bed.add_container(1, "c1").expect("container");
        assert_eq!(leftovers("wttp").len(), 4);
        panic!("on purpose");
    });
    assert!(r.is_err());
    assert!(leftovers("wttp").is_empty(), "left {:?}", leftovers("wttp"));
}

/// Whether host `from` of `bed` gets answers from `to` (two pings).
fn host_pings(bed: &TestBed, from: usize, to: Ipv4Addr) -> bool {
    bed.host(from)
        .ns
        .run(&[
            "ping",
            "-n",
            "-c",
            "2",
            "-i",
            "0.3",
            "-W",
            "1",
            &to.to_string(),
        ])
        .expect("ping runs")
        .success()
}

/// Asserts that a path carries packets of 1400 bytes but not 1401, and how it refuses them:
/// with ICMP "fragmentation needed" (`answers`) or silently.
fn assert_path_mtu_1400(bed: &TestBed, from: usize, to: Ipv4Addr, answers: bool) {
    let ns = &bed.host(from).ns;
    let fits = probe::ping_unfragmented(ns, &to.to_string(), 1372).expect("ping runs");
    assert!(
        fits.success(),
        "1400 bytes from host{from} to {to}:\n{}",
        fits.stdout
    );
    let big = probe::ping_unfragmented(ns, &to.to_string(), 1373).expect("ping runs");
    let text = format!("{}{}", big.stdout, big.stderr);
    assert!(
        !big.success(),
        "1401 bytes from host{from} to {to} got through:\n{text}"
    );
    let refused = text.contains("mtu = 1400") || text.contains("mtu=1400");
    assert_eq!(
        refused, answers,
        "1401 bytes from host{from} to {to}: refused with ICMP: {refused}, want {answers}:\n{text}"
    );
}

#[test]
fn underlay_shapes_carry_host_traffic() {
    if !require_root("underlay_shapes_carry_host_traffic") {
        return;
    }
    // Routed: three subnets, one router hop (TTL 63), forwarding cut and restored, a hop
    // with a smaller MTU that answers, both ways.
    let bed = TestBed::routed("wttu", 3).expect("routed bed");
    for (a, b) in [(1, 2), (1, 3), (2, 3), (3, 1)] {
        assert!(
            host_pings(&bed, a, bed.host(b).addr),
            "routed: host{a} -> host{b}"
        );
    }
    let out = bed.host(1).ns.sh("ping -n -c 1 198.18.3.1").expect("ping");
    assert!(out.contains("ttl=63"), "one router on the way:\n{out}");
    bed.block_forwarding(1, 3).expect("block 1-3");
    assert!(!host_pings(&bed, 1, bed.host(3).addr), "1-3 blocked");
    assert!(!host_pings(&bed, 3, bed.host(1).addr), "3-1 blocked");
    assert!(host_pings(&bed, 1, bed.host(2).addr), "1-2 still open");
    bed.unblock_forwarding(1, 3).expect("unblock 1-3");
    assert!(host_pings(&bed, 1, bed.host(3).addr), "1-3 open again");
    bed.limit_routed_mtu(2, 1400)
        .expect("limit the MTU towards host2");
    assert_path_mtu_1400(&bed, 1, bed.host(2).addr, true);
    assert_path_mtu_1400(&bed, 2, bed.host(1).addr, true);
    let full = probe::ping_unfragmented(&bed.host(1).ns, "198.18.3.1", 1472).expect("ping");
    assert!(
        full.success(),
        "host1 -> host3 keeps 1500:\n{}",
        full.stdout
    );
    drop(bed);
    assert!(leftovers("wttu").is_empty(), "left {:?}", leftovers("wttu"));

    // Two routers: routes moved from the first to the second, the first cut off.
    let bed = TestBed::routed_by("wttc", 2, &["ra", "rb"]).expect("bed with two routers");
    assert!(host_pings(&bed, 1, bed.host(2).addr), "via ra");
    bed.route_via("rb").expect("routes via rb");
    bed.cut_router("ra").expect("cut ra");
    assert!(host_pings(&bed, 1, bed.host(2).addr), "via rb, ra cut");
    assert!(host_pings(&bed, 2, bed.host(1).addr), "back via rb, ra cut");
    bed.route_via("ra").expect("routes via ra");
    assert!(!host_pings(&bed, 1, bed.host(2).addr), "ra is cut");
    drop(bed);

    // Flat with a silent small-MTU hop towards host 2.
    let bed = TestBed::new("wttm", 2).expect("flat bed");
    bed.limit_segment_mtu(2, 1400).expect("small-MTU hop");
    assert_path_mtu_1400(&bed, 1, bed.host(2).addr, false);
    assert_path_mtu_1400(&bed, 2, bed.host(1).addr, false);
    drop(bed);

    // 1:1 NAT: host 1 reaches host 2 at its public address, and sees host 2's packets come
    // from it; host 2 sees host 1 as it is.
    let bed = TestBed::nat("wttn").expect("NAT bed");
    assert_eq!(bed.host(2).addr, NAT_INNER_ADDR);
    assert_eq!(bed.host(2).dial_addr, NAT_PUBLIC_ADDR);
    assert!(
        host_pings(&bed, 1, NAT_PUBLIC_ADDR),
        "host1 -> public address"
    );
    assert!(host_pings(&bed, 2, bed.host(1).addr), "host2 -> host1");
    assert!(
        !host_pings(&bed, 1, NAT_INNER_ADDR),
        "host2's own address is private"
    );
    let seen_by_2 = udp_source(&bed, 1, 2, NAT_PUBLIC_ADDR);
    assert_eq!(
        seen_by_2,
        bed.host(1).addr,
        "host2 sees host1's own address"
    );
    let seen_by_1 = udp_source(&bed, 2, 1, bed.host(1).addr);
    assert_eq!(
        seen_by_1, NAT_PUBLIC_ADDR,
        "host1 sees host2 as the public address"
    );
    drop(bed);
    for p in ["wttc", "wttm", "wttn"] {
        assert!(leftovers(p).is_empty(), "left {:?}", leftovers(p));
    }
}

/// The source address of a UDP datagram host `from` sends to `to`:6784, as host `at`
/// receives it.
fn udp_source(bed: &TestBed, from: usize, at: usize, to: Ipv4Addr) -> Ipv4Addr {
    let sock = bed
        .host(at)
        .ns
        .enter(|| UdpSocket::bind("0.0.0.0:6784"))
        .expect("enter")
        .expect("bind UDP 6784");
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    probe::send_udp(&bed.host(from).ns, SocketAddrV4::new(to, 6784), b"hello", 3).expect("send");
    let mut buf = [0u8; 64];
    let (_, src) = sock.recv_from(&mut buf).expect("a datagram arrives");
    match src.ip() {
        std::net::IpAddr::V4(a) => a,
        other => panic!("not IPv4: {other}"),
    }
}
