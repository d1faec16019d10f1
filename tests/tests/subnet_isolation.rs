//! Subnet isolation, enforced by the data path: two hosts, two subnets of one range on the
//! same weave network. a1 (host 1) and a2 (host 2) are in 10.2.1.0/24, b1 (host 1) and b2
//! (host 2) in 10.2.2.0/24. Containers of one subnet reach each other; across subnets
//! nothing gets through, not after a container adds a route (and a neighbour entry) to the
//! other subnet, not after it takes an address of the other subnet, and not by broadcast.

use std::time::Duration;

use weave_tests::{probe, require_root, Container, TestBed};

const A1: &str = "10.2.1.1";
const A2: &str = "10.2.1.2";
const B1: &str = "10.2.2.1";
const B2: &str = "10.2.2.2";

/// Packets dropped on host `i` for `reason` (from /metrics).
fn drops(bed: &TestBed, i: usize, reason: &str) -> f64 {
    let m = bed.router(i).metrics().expect("GET /metrics");
    let label = format!("reason=\"{reason}\"");
    probe::metric_sum(&m, |s| {
        s.name.starts_with("weave_datapath_drops") && s.labels.contains(&label)
    })
}

fn pings(c: &Container, addr: &str) -> bool {
    c.ping(addr, 2).expect("ping runs").success()
}

fn assert_isolated(bed: &TestBed, from: usize, to: &[&str], when: &str) {
    let c = bed.container(from);
    for addr in to {
        let out = c.ping(addr, 2).expect("ping runs");
        assert!(
            !out.success(),
            "{} reached {addr} {when}:\n{}",
            c.ns.name(),
            out.stdout
        );
    }
}

/// A UDP listener on port 9999 inside `c` that prints what it receives, or `timeout`.
fn listen(c: &Container) -> weave_tests::Background {
    c.ns.spawn(&[
        "python3",
        "-c",
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.settimeout(4)\n\
         s.bind(('0.0.0.0',9999))\ntry:\n  print(s.recvfrom(100)[0].decode())\n\
         except socket.timeout:\n  print('timeout')\n",
    ])
    .expect("listener starts")
}

#[test]
fn containers_in_different_subnets_cannot_exchange_frames() {
    if !require_root("containers_in_different_subnets_cannot_exchange_frames") {
        return;
    }
    let mut bed = TestBed::new("wiso", 2).expect("test bed");
    bed.launch_mesh(&[]).expect("routers connect");
    let a1 = bed
        .attach_container(1, "a1", &format!("{A1}/24"))
        .expect("a1");
    let b1 = bed
        .attach_container(1, "b1", &format!("{B1}/24"))
        .expect("b1");
    let a2 = bed
        .attach_container(2, "a2", &format!("{A2}/24"))
        .expect("a2");
    let b2 = bed
        .attach_container(2, "b2", &format!("{B2}/24"))
        .expect("b2");

    // Same subnet: across the hosts, both ways.
    bed.container(a1)
        .wait_ping(A2, Duration::from_secs(10))
        .expect("a1 reaches a2");
    bed.container(b1)
        .wait_ping(B2, Duration::from_secs(10))
        .expect("b1 reaches b2");
    assert!(pings(bed.container(a2), A1), "a2 → a1");
    assert!(pings(bed.container(b2), B1), "b2 → b1");

    // Across subnets, with a route to the other subnet (and, for a1, a neighbour entry
    // with the real MAC of b2, so that not only ARP is in the way).
    let b2_mac = probe::link_mac(&bed.container(b2).ns, "ethwe").expect("MAC of b2");
    let b1_mac = probe::link_mac(&bed.container(b1).ns, "ethwe").expect("MAC of b1");
    let ca1 = bed.container(a1);
    ca1.ns
        .ip("route add 10.2.2.0/24 dev ethwe")
        .expect("route in a1");
    ca1.ns
        .ip(&format!("neigh replace {B2} lladdr {b2_mac} dev ethwe"))
        .expect("neighbour b2 in a1");
    ca1.ns
        .ip(&format!("neigh replace {B1} lladdr {b1_mac} dev ethwe"))
        .expect("neighbour b1 in a1");
    bed.container(b2)
        .ns
        .ip("route add 10.2.1.0/24 dev ethwe")
        .expect("route in b2");
    let outside = drops(&bed, 1, "tx_drop_outside_subnet");
    assert_isolated(&bed, a1, &[B1, B2], "with a route and neighbour entries");
    assert_isolated(&bed, b2, &[A1, A2], "with a route");
    assert_isolated(&bed, b1, &[A1, A2], "without a route");
    assert!(
        drops(&bed, 1, "tx_drop_outside_subnet") > outside,
        "host 1 counted the frames to the other subnet"
    );

    // a1 takes an address of the other subnet.
    let ca1 = bed.container(a1);
    ca1.ns
        .ip(&format!("addr del {A1}/24 dev ethwe"))
        .expect("address off a1");
    ca1.ns
        .ip("addr add 10.2.2.99/24 dev ethwe")
        .expect("spoofed address on a1");
    let spoofed = drops(&bed, 1, "tx_drop_spoofed_source");
    assert_isolated(&bed, a1, &[B1, B2, A2], "with a spoofed address");
    assert!(
        drops(&bed, 1, "tx_drop_spoofed_source") > spoofed,
        "host 1 counted the spoofed frames"
    );
    // Its own address back: a1 reaches a2 again (the drops above were the rules, not a
    // broken container).
    let ca1 = bed.container(a1);
    ca1.ns
        .ip("addr del 10.2.2.99/24 dev ethwe")
        .expect("spoofed address off");
    ca1.ns
        .ip(&format!("addr add {A1}/24 dev ethwe"))
        .expect("address back on a1");
    ca1.ns
        .ip("route replace 10.2.2.0/24 dev ethwe")
        .expect("route in a1 again");
    bed.container(a1)
        .wait_ping(A2, Duration::from_secs(10))
        .expect("a1 reaches a2 with its own address");
    assert_isolated(&bed, a1, &[B1, B2], "after its address came back");

    // A broadcast from a1 reaches a2 and neither b1 nor b2.
    let mut listeners: Vec<_> = [a2, b1, b2]
        .iter()
        .map(|c| listen(bed.container(*c)))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let egress = drops(&bed, 1, "egress_drop_isolated") + drops(&bed, 2, "egress_drop_isolated");
    for _ in 0..3 {
        bed.container(a1)
            .ns
            .check(&[
                "python3",
                "-c",
                "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                 s.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\n\
                 s.setsockopt(socket.SOL_SOCKET,socket.SO_BINDTODEVICE,b'ethwe')\n\
                 s.sendto(b'from-a1',('255.255.255.255',9999))\n",
            ])
            .expect("broadcast from a1");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(4));
    let heard: Vec<String> = listeners.iter_mut().map(|l| l.stop().stdout).collect();
    assert!(
        heard[0].contains("from-a1"),
        "a2 got the broadcast: {heard:?}"
    );
    assert!(
        !heard[1].contains("from-a1"),
        "b1 got the broadcast: {heard:?}"
    );
    assert!(
        !heard[2].contains("from-a1"),
        "b2 got the broadcast: {heard:?}"
    );
    assert!(
        drops(&bed, 1, "egress_drop_isolated") + drops(&bed, 2, "egress_drop_isolated") > egress,
        "the bridges' deliveries to b1 and b2 were dropped and counted"
    );
}
