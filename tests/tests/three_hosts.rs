//! Three hosts: every container reaches every other, broadcasts reach every host, and a
//! router that stops is forgotten by the others.

use std::collections::BTreeSet;
use std::time::Duration;

use weave_tests::{require_root, router, TestBed};

fn three_hosts(prefix: &str) -> TestBed {
    let mut bed = TestBed::new(prefix, 3).expect("test bed");
    bed.launch_mesh(&[]).expect("routers connect");
    bed
}

#[test]
fn three_hosts_full_ping_matrix_and_broadcast() {
    if !require_root("three_hosts_full_ping_matrix_and_broadcast") {
        return;
    }
    let mut bed = three_hosts("wt3h");
    bed.attach_container(1, "c1", "10.2.1.11/24")
        .expect("attach");
    bed.attach_container(1, "c2", "10.2.1.12/24")
        .expect("attach");
    bed.attach_container(2, "c1", "10.2.1.21/24")
        .expect("attach");
    bed.attach_container(3, "c1", "10.2.1.31/24")
        .expect("attach");

    let mut failed = Vec::new();
    for from in &bed.containers {
        for to in &bed.containers {
            if std::ptr::eq(from, to) {
                continue;
            }
            let dst = to.ip().expect("address");
            if from.wait_ping(dst, Duration::from_secs(8)).is_err() {
                failed.push(format!("{} -> {} ({dst})", from.ns.name(), to.ns.name()));
            }
        }
    }
    assert!(failed.is_empty(), "no answer: {failed:?}");

    // A broadcast from host1 reaches the containers on every other host (and the local one).
    for c in &bed.containers {
        c.ns.sysctl("net.ipv4.icmp_echo_ignore_broadcasts", "0")
            .expect("sysctl");
    }
    let sender = bed.container(0);
    let out = sender
        .ns
        .run_timeout(
            &["ping", "-n", "-b", "-c", "4", "-i", "0.3", "10.2.1.255"],
            Duration::from_secs(20),
        )
        .expect("ping -b runs");
    let from: BTreeSet<String> = weave_tests::probe::answered_by(&out.stdout);
    for want in ["10.2.1.12", "10.2.1.21", "10.2.1.31"] {
        assert!(
            from.contains(want),
            "broadcast answered by {from:?}, not by {want}:\n{}",
            out.stdout
        );
    }
}

#[test]
fn stopped_router_is_removed_by_the_others() {
    if !require_root("stopped_router_is_removed_by_the_others") {
        return;
    }
    let mut bed = three_hosts("wt3s");
    let c1 = bed
        .attach_container(1, "c1", "10.2.1.11/24")
        .expect("attach");
    bed.attach_container(2, "c1", "10.2.1.21/24")
        .expect("attach");
    bed.attach_container(3, "c1", "10.2.1.31/24")
        .expect("attach");
    let ca = bed.container(c1);
    ca.wait_ping("10.2.1.31", Duration::from_secs(10))
        .expect("host1 reaches host3");
    ca.wait_ping("10.2.1.21", Duration::from_secs(10))
        .expect("host1 reaches host2");
    assert_eq!(
        peer_side_links(&bed, 1),
        ["vethwe-bridge", "vethwe-datapath"],
        "host1 has one port towards its peers, no device per peer"
    );

    let name3 = bed.router(3).name().to_string();
    bed.router_mut(3)
        .stop()
        .expect("weave-router stop on host3");
    assert!(
        router::router_pids(bed.host(3).ns.name()).is_empty(),
        "router 3 still running"
    );
    assert!(
        !pinned(&name3),
        "router 3 left its pins under {}",
        router::BPFFS_ROOT
    );

    for i in [1, 2] {
        let r = bed.router(i);
        weave_tests::cmd::wait_for(
            &format!("host{i} to drop its connection to host3"),
            Duration::from_secs(15),
            || {
                let c = r.connections().ok()?;
                (!established_with(&c, 3)).then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}:\n{}", r.connections().unwrap_or_default()));
    }

    let ca = bed.container(c1);
    let out = ca.ping("10.2.1.31", 2).expect("ping runs");
    assert!(
        !out.success(),
        "host3's container still answers with its router stopped:\n{}",
        out.stdout
    );
    let out = ca.ping("10.2.1.21", 2).expect("ping runs");
    assert!(
        out.success(),
        "host1 lost host2 when host3 stopped:\n{}",
        out.stdout
    );
}

/// True if `status connections` shows an established connection with host `i`. (A peer that
/// went away may stay listed as a target being redialled: `failed`, `retrying`.)
fn established_with(connections: &str, i: usize) -> bool {
    let addr = format!("{} ", weave_tests::host_addr(i)).replace(' ', ":");
    let nick = format!("(host{i})");
    connections
        .lines()
        .any(|l| (l.contains(&addr) || l.contains(&nick)) && l.contains("established"))
}

/// The links of a host that carry frames between its bridge and its peers (VXLAN devices
/// and the bridge's port towards the peers), sorted, up or not.
fn peer_side_links(bed: &TestBed, host: usize) -> Vec<String> {
    let out = bed.host(host).ns.ip("-o link show").expect("ip link");
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?.split('@').next()?;
            (name.starts_with("vxw") || name == "vethwe-bridge" || name == "vethwe-datapath")
                .then(|| name.to_string())
        })
        .collect();
    names.sort();
    names
}

fn pinned(name: &str) -> bool {
    let want: String = name
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_lowercase();
    std::fs::read_dir(router::BPFFS_ROOT)
        .map(|d| {
            d.filter_map(|e| e.ok()).any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .chars()
                    .filter(|c| c.is_ascii_hexdigit())
                    .collect::<String>()
                    .to_lowercase()
                    == want
            })
        })
        .unwrap_or(false)
}

#[test]
fn crashed_or_unreachable_routers_are_removed_by_the_others() {
    if !require_root("crashed_or_unreachable_routers_are_removed_by_the_others") {
        return;
    }
    let mut bed = three_hosts("wt3c");
    let c1 = bed
        .attach_container(1, "c1", "10.2.1.11/24")
        .expect("attach");
    bed.attach_container(2, "c1", "10.2.1.21/24")
        .expect("attach");
    bed.attach_container(3, "c1", "10.2.1.31/24")
        .expect("attach");
    bed.container(c1)
        .wait_ping("10.2.1.21", Duration::from_secs(10))
        .expect("host1 reaches host2");
    bed.container(c1)
        .wait_ping("10.2.1.31", Duration::from_secs(10))
        .expect("host1 reaches host3");

    // Host2's router dies without a word; host3 drops off the underlay (no FIN, no RST:
    // only the missing heartbeats tell).
    bed.router_mut(2).kill();
    let underlay = weave_tests::Netns::borrow(&format!("{}-u", bed.prefix()));
    underlay.ip("link set h3 down").expect("cut host3 off");

    let r = bed.router(1);
    weave_tests::cmd::wait_for(
        "host1 to drop its connections to host2 and host3",
        Duration::from_secs(20),
        || {
            let c = r.connections().ok()?;
            (!established_with(&c, 2) && !established_with(&c, 3)).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}:\n{}", r.connections().unwrap_or_default()));
    // Host2 is alive, only its router died: its kernel data path still carries traffic and
    // answers our heartbeats, so host1 holds it (hitless restarts) when its fast path was
    // heard before the loss (a connection checked at least once); else it is removed at
    // once. Either way the status and the data path agree. Host3 is gone: removed.
    let c = r.connections().unwrap_or_default();
    let held = c
        .lines()
        .any(|l| l.contains("(host2)") && l.contains("held"));
    let out = bed.container(c1).ping("10.2.1.21", 1).expect("ping runs");
    assert_eq!(
        out.success(),
        held,
        "host2 held: {held}, its container answers: {}\n{c}\n{}",
        out.success(),
        out.stdout
    );
    let out = bed.container(c1).ping("10.2.1.31", 1).expect("ping runs");
    assert!(!out.success(), "10.2.1.31 still answers:\n{}", out.stdout);
}
