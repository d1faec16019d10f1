//! IP allocation over real routers: the walkthrough's subnets, many concurrent attaches,
//! a restart, an exhausted subnet, a partition.

use std::collections::BTreeSet;
use std::time::Duration;

use weave_tests::{host_addr, mesh, probe, require_root, LaunchOpts, TestBed};

const RANGE: [&str; 6] = [
    "--ipalloc-range",
    "10.2.0.0/16",
    "--ipalloc-default-subnet",
    "10.2.1.0/24",
    "--xdp",
    "off",
];

/// Whether the router's nftables table on host `ns` masquerades what `subnet` sends out.
fn masquerades(ns: &weave_tests::Netns, subnet: &str) -> bool {
    let nat = ns
        .run(&["nft", "list", "table", "ip", "weave-router"])
        .expect("nft");
    println!("{}", nat.stdout);
    nat.stdout.contains(&format!("ip saddr {subnet}")) && nat.stdout.contains("masquerade")
}

fn ip_of(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

#[test]
fn walkthrough_subnets_on_two_hosts() {
    if !require_root("walkthrough_subnets_on_two_hosts") {
        return;
    }
    let mut bed = TestBed::new("wip2", 2).expect("test bed");
    let mut extra = RANGE.to_vec();
    extra.extend(["--init-peer-count", "2"]);
    bed.launch_mesh(&extra).expect("routers connect");
    let a1 = bed.add_container(1, "a1").unwrap();
    let b1 = bed.add_container(1, "b1").unwrap();
    let a2 = bed.add_container(2, "a2").unwrap();
    let b2 = bed.add_container(2, "b2").unwrap();
    let addr_a1 = bed
        .attach_specs(1, a1, &[])
        .expect("a1 in the default subnet");
    let addr_a2 = bed
        .attach_specs(2, a2, &[])
        .expect("a2 in the default subnet");
    let addr_b1 = bed
        .attach_specs(1, b1, &["net:10.2.2.0/24"])
        .expect("b1 in net:10.2.2.0/24");
    let addr_b2 = bed
        .attach_specs(2, b2, &["net:10.2.2.0/24"])
        .expect("b2 in net:10.2.2.0/24");
    for (name, a, prefix) in [
        ("a1", &addr_a1, "10.2.1."),
        ("a2", &addr_a2, "10.2.1."),
        ("b1", &addr_b1, "10.2.2."),
        ("b2", &addr_b2, "10.2.2."),
    ] {
        assert_eq!(a.len(), 1, "{name}: {a:?}");
        assert!(
            a[0].starts_with(prefix) && a[0].ends_with("/24"),
            "{name} got {a:?}"
        );
    }
    let all: BTreeSet<&String> = [&addr_a1[0], &addr_a2[0], &addr_b1[0], &addr_b2[0]]
        .into_iter()
        .collect();
    assert_eq!(all.len(), 4, "duplicate addresses: {all:?}");

    let (ca1, ca2, cb1, cb2) = (
        bed.container(a1),
        bed.container(a2),
        bed.container(b1),
        bed.container(b2),
    );
    ca1.wait_ping(ip_of(&addr_a2[0]), Duration::from_secs(10))
        .expect("a1 reaches a2");
    cb1.wait_ping(ip_of(&addr_b2[0]), Duration::from_secs(10))
        .expect("b1 reaches b2");
    assert!(
        !ca1.ping(ip_of(&addr_b2[0]), 2).unwrap().success(),
        "a1 must not reach b2"
    );
    assert!(
        !cb1.ping(ip_of(&addr_a2[0]), 2).unwrap().success(),
        "b1 must not reach a2"
    );
    ca2.wait_ping(ip_of(&addr_a1[0]), Duration::from_secs(10))
        .expect("a2 reaches a1");
    assert!(
        !cb2.ping(ip_of(&addr_a1[0]), 2).unwrap().success(),
        "b2 must not reach a1"
    );

    // Both routers agree on the ring; the summary shows IPAM ready.
    for i in 1..=2 {
        let s = bed.router(i).check(&["status"]).unwrap();
        assert!(
            s.contains("Status: ready") && s.contains("Range: 10.2.0.0/16"),
            "host{i}:\n{s}"
        );
        let ipam = bed.router(i).check(&["status", "ipam"]).unwrap();
        assert_eq!(ipam.lines().count(), 2, "host{i} status ipam:\n{ipam}");
    }

    // expose: host 1 gets an address in the default subnet on its bridge, reachable from
    // both hosts' containers, with its traffic to the outside masqueraded; hide undoes it.
    let exposed = bed.router(1).check(&["expose"]).expect("expose");
    let host_ip = ip_of(exposed.trim()).to_string();
    assert!(host_ip.starts_with("10.2.1."), "exposed {exposed:?}");
    let h1 = &bed.host(1).ns;
    let addrs = h1
        .ip("-4 -o addr show dev weave")
        .expect("weave bridge addresses");
    assert!(addrs.contains(&format!("{host_ip}/24")), "{addrs}");
    ca1.wait_ping(&host_ip, Duration::from_secs(10))
        .expect("a1 reaches the exposed host");
    ca2.wait_ping(&host_ip, Duration::from_secs(10))
        .expect("a2 on host 2 reaches the exposed host");
    assert!(masquerades(h1, "10.2.1.0/24"));
    assert_eq!(
        bed.router(1).check(&["hide"]).unwrap().trim(),
        exposed.trim()
    );
    assert!(!h1
        .ip("-4 -o addr show dev weave")
        .unwrap()
        .contains(&host_ip));
    assert!(
        !ca1.ping(&host_ip, 1).unwrap().success(),
        "hidden address still answers"
    );

    // Detach releases: a new container on host 1 gets a1's address again.
    bed.router(1).detach(&ca1.ns.path()).expect("detach a1");
    let c3 = bed.add_container(1, "c3").unwrap();
    assert_eq!(
        bed.attach_specs(1, c3, &[]).unwrap(),
        addr_a1,
        "a1's address is free again"
    );

    // An exposed address outlives its router: with the address and the masquerading gone
    // from the host while the router is down (as after a reboot), the next launch puts
    // both back, and `hide` still knows it.
    let exposed = bed.router(1).check(&["expose"]).expect("expose");
    let host_ip = ip_of(exposed.trim()).to_string();
    bed.router_mut(1).stop().expect("router 1 stops");
    bed.host(1)
        .ns
        .ip(&format!("addr del {} dev weave", exposed.trim()))
        .expect("address removed by hand");
    bed.host(1)
        .ns
        .run(&["nft", "delete", "table", "ip", "weave-router"])
        .expect("masquerading removed by hand");
    let opts = LaunchOpts {
        peers: Vec::new(),
        extra: extra.iter().map(|s| s.to_string()).collect(),
    };
    bed.relaunch(1, &opts).expect("router 1 starts again");
    let addrs = bed.host(1).ns.ip("-4 -o addr show dev weave").unwrap();
    assert!(
        addrs.contains(&format!("{host_ip}/24")),
        "exposed address back on the bridge: {addrs}"
    );
    assert!(
        masquerades(&bed.host(1).ns, "10.2.1.0/24"),
        "masquerading back"
    );
    bed.router(1)
        .wait_established(1, Duration::from_secs(30))
        .expect("router 2 connects again");
    bed.container(a2)
        .wait_ping(&host_ip, Duration::from_secs(10))
        .expect("a2 on host 2 reaches the exposed host after the restart");
    assert_eq!(
        bed.router(1).check(&["hide"]).unwrap().trim(),
        exposed.trim()
    );
}

#[test]
fn sixty_concurrent_attaches_on_three_routers_get_distinct_addresses() {
    if !require_root("sixty_concurrent_attaches_on_three_routers_get_distinct_addresses") {
        return;
    }
    let mut bed = TestBed::new("wip3", 3).expect("test bed");
    let mut extra = RANGE.to_vec();
    extra.extend(["--init-peer-count", "3"]);
    bed.launch_mesh(&extra).expect("routers connect");
    let containers: Vec<(usize, usize)> = (0..60)
        .map(|k| {
            (
                1 + k % 3,
                bed.add_container(1 + k % 3, &format!("c{k}")).unwrap(),
            )
        })
        .collect();
    let started = std::time::Instant::now();
    let got: Vec<Vec<String>> = std::thread::scope(|s| {
        let bed = &bed;
        let handles: Vec<_> = containers
            .iter()
            .map(|&(host, c)| s.spawn(move || bed.attach_specs(host, c, &[])))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().expect("attach"))
            .collect()
    });
    let took = started.elapsed();
    let addresses: BTreeSet<String> = got.iter().flatten().cloned().collect();
    assert_eq!(
        addresses.len(),
        60,
        "60 distinct addresses, got {addresses:?}"
    );
    assert!(
        addresses
            .iter()
            .all(|a| a.starts_with("10.2.1.") && a.ends_with("/24")),
        "{addresses:?}"
    );
    println!("60 concurrent attaches on 3 routers: {took:?}");

    // Router 3 dies: rmpeer on router 1 takes over its space (refused while it is alive).
    let third = bed.peer_name(3);
    let alive = bed.router(1).cli(&["rmpeer", &third]).unwrap();
    assert!(
        !alive.success() && alive.stderr.contains("is reachable"),
        "{}",
        alive.stderr
    );
    bed.router_mut(3).kill();
    weave_tests::cmd::wait_for("router 1 to lose router 3", Duration::from_secs(20), || {
        let m = weave_tests::mesh::MeshSummary::of(bed.router(1)).ok()?;
        (!m.routed.contains(&third)).then_some(())
    })
    .expect("router 3 gone");
    let said = bed.router(1).check(&["rmpeer", &third]).expect("rmpeer");
    assert!(said.contains("IPs taken over from"), "{said}");
    let ipam = bed.router(1).check(&["status", "ipam"]).unwrap();
    assert!(
        !ipam.contains(&third) && ipam.lines().count() == 2,
        "{ipam}"
    );
}

#[test]
fn a_killed_router_keeps_its_addresses_and_an_exhausted_subnet_is_a_clear_error() {
    if !require_root("a_killed_router_keeps_its_addresses_and_an_exhausted_subnet_is_a_clear_error")
    {
        return;
    }
    let mut bed = TestBed::new("wipr", 1).expect("test bed");
    let mut extra = RANGE.to_vec();
    extra.extend(["--init-peer-count", "1"]);
    let opts = LaunchOpts {
        peers: vec![],
        extra: extra.iter().map(|s| s.to_string()).collect(),
    };
    bed.launch(1, &opts).expect("router");
    let c1 = bed.add_container(1, "c1").unwrap();
    let first = bed.attach_specs(1, c1, &[]).expect("c1");
    let small = ["net:10.2.9.0/30"];
    let s1 = bed.add_container(1, "s1").unwrap();
    let s2 = bed.add_container(1, "s2").unwrap();
    let s3 = bed.add_container(1, "s3").unwrap();
    bed.attach_specs(1, s1, &small)
        .expect("first address of a /30");
    bed.attach_specs(1, s2, &small)
        .expect("second address of a /30");
    let e = bed
        .attach_specs(1, s3, &small)
        .expect_err("a /30 holds two addresses");
    assert!(
        e.to_string()
            .contains("no free address left in 10.2.9.0/30"),
        "{e}"
    );
    assert!(
        !probe::links(&bed.container(s3).ns)
            .unwrap()
            .iter()
            .any(|l| l == "ethwe"),
        "s3 half attached"
    );

    // Bad specs: one line, nothing attached.
    for bad in ["net:10.3.0.0/24", "net:10.2.1.5/24", "ip:300.1.1.1/24"] {
        let e = bed.attach_specs(1, s3, &[bad]).expect_err(bad).to_string();
        assert!(
            e.contains(bad.trim_start_matches("net:").trim_start_matches("ip:")) || e.contains(bad),
            "{bad}: {e}"
        );
    }

    // A crash (SIGKILL) and a restart keep the addresses in use: c1 keeps its address, a new
    // container gets another.
    bed.router_mut(1).kill();
    let ns = bed.router(1).netns().to_string();
    weave_tests::cmd::wait_for(
        "the killed router to be gone",
        Duration::from_secs(10),
        || {
            weave_tests::router::router_pids(&ns)
                .is_empty()
                .then_some(())
        },
    )
    .expect("killed");
    bed.relaunch(1, &opts).expect("relaunch");
    let ps = bed.router(1).check(&["ps"]).unwrap();
    assert!(ps.contains(&first[0]), "ps after restart:\n{ps}");
    let c2 = bed.add_container(1, "c2").unwrap();
    let second = bed.attach_specs(1, c2, &[]).expect("c2");
    assert_ne!(
        first, second,
        "an address in use before the restart was handed out again"
    );
    bed.container(c2)
        .wait_ping(ip_of(&first[0]), Duration::from_secs(10))
        .expect("c2 reaches c1 after the restart");
}

#[test]
fn a_partition_with_allocations_on_both_sides_gives_no_duplicates() {
    if !require_root("a_partition_with_allocations_on_both_sides_gives_no_duplicates") {
        return;
    }
    let mut bed = TestBed::new("wipp", 2).expect("test bed");
    let mut extra = RANGE.to_vec();
    extra.extend(["--init-peer-count", "2"]);
    bed.launch_mesh(&extra).expect("routers connect");
    // One allocation each while connected: the ring is split between the two.
    let warm1 = bed.add_container(1, "w").unwrap();
    let warm2 = bed.add_container(2, "w").unwrap();
    bed.attach_specs(1, warm1, &[]).unwrap();
    bed.attach_specs(2, warm2, &[]).unwrap();

    let during: Vec<(usize, usize)> = (0..5)
        .flat_map(|k| [1, 2].map(|host| (host, k)))
        .map(|(host, k)| (host, bed.add_container(host, &format!("p{k}")).unwrap()))
        .collect();
    let (h1, h2) = (&bed.host(1).ns, &bed.host(2).ns);
    mesh::block(h1, host_addr(2)).expect("cut 1-2");
    mesh::block(h2, host_addr(1)).expect("cut 2-1");
    let mut all = BTreeSet::new();
    for &(host, c) in &during {
        for a in bed
            .attach_specs(host, c, &[])
            .expect("attach during the partition")
        {
            assert!(all.insert(a.clone()), "{a} handed out twice");
        }
    }
    mesh::unblock(h1, host_addr(2)).expect("heal 1-2");
    mesh::unblock(h2, host_addr(1)).expect("heal 2-1");
    bed.router(1)
        .wait_established(1, Duration::from_secs(30))
        .expect("healed");
    let c = bed.add_container(1, "after").unwrap();
    for a in bed.attach_specs(1, c, &[]).unwrap() {
        assert!(all.insert(a.clone()), "{a} handed out twice after the heal");
    }

    // `reset` on host 2: its containers are detached, its space goes to host 1, it stops.
    let said = bed.router(2).check(&["reset"]).expect("reset");
    assert!(said.contains("IPs handed over to"), "{said}");
    let ipam = weave_tests::cmd::wait_for(
        "host 1 to own the whole range",
        Duration::from_secs(10),
        || {
            let text = bed.router(1).check(&["status", "ipam"]).ok()?;
            (text.lines().count() == 1 && text.contains("100.0% of total")).then_some(text)
        },
    )
    .expect("space handed over");
    assert!(ipam.contains(&bed.peer_name(1)), "{ipam}");
    weave_tests::cmd::wait_for("host 2's router to stop", Duration::from_secs(10), || {
        weave_tests::router::router_pids(bed.router(2).netns())
            .is_empty()
            .then_some(())
    })
    .expect("stopped after reset");
    assert!(
        !bed.state_dir(2).join("ipam.json").exists(),
        "IPAM state kept after reset"
    );
}
