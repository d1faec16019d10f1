//! Hitless restarts: a router stopped for an upgrade (`stop --keep-datapath`) or killed
//! (`kill -9`) leaves its kernel data path running, and the next launch over the same state
//! dir adopts it (maps kept, programs swapped into the pinned links), removing only what went
//! stale while it was down. Bad pins are re-created, a second router on one state dir
//! refused; names and allocated addresses survive.

use std::path::Path;
use std::time::{Duration, Instant};

use weave_tests::cmd;
use weave_tests::restart::{
    pin_dir, pinned_links, pinned_map_keys, pinned_map_shape, PingRun, MAX_LOST,
};
use weave_tests::{probe, require_root, LaunchOpts, TestBed};

fn mac_key(mac: &str) -> String {
    mac.to_ascii_lowercase()
}

/// Links the router of host `i` has pinned, with their programs.
fn links_of(bed: &TestBed, i: usize) -> Vec<weave_tests::restart::PinnedLink> {
    let dir = pin_dir(&bed.peer_name(i)).expect("pin dir of the router");
    pinned_links(&dir).expect("bpftool link show")
}

/// Stop for an upgrade and launch again, under a 20 ms ping between containers of two hosts
/// both ways and between two containers of the restarted host: the link IDs stay, the
/// programs in them are new and changed ones (the relaunch switches the kernel log on), at
/// most two pings are lost on each path.
#[test]
fn an_upgrade_restart_swaps_programs_in_place_without_losing_traffic() {
    if !require_root("an_upgrade_restart_swaps_programs_in_place_without_losing_traffic") {
        return;
    }
    let mut bed = TestBed::new("rsup", 2).expect("test bed");
    // XDP on too (on a veth it is off unless asked for): its link is adopted like the others.
    bed.launch_mesh(&["--xdp", "on"]).expect("routers connect");
    let a = bed.attach_container(1, "a", "10.2.1.1/24").expect("a");
    let _l = bed.attach_container(1, "l", "10.2.1.3/24").expect("l");
    let b = bed.attach_container(2, "b", "10.2.1.2/24").expect("b");
    for (from, to) in [(a, "10.2.1.2"), (b, "10.2.1.1"), (a, "10.2.1.3")] {
        bed.container(from)
            .wait_ping(to, Duration::from_secs(10))
            .expect("containers reach each other");
    }
    let before = links_of(&bed, 1);
    assert!(
        before.iter().any(|l| l.pin.starts_with("rx-"))
            && before.iter().any(|l| l.pin.starts_with("xdp-"))
            && before.iter().filter(|l| l.pin.starts_with("tx-")).count() == 2,
        "pinned links before: {before:?}"
    );

    let interval = Duration::from_millis(20);
    let lasting = Duration::from_secs(12);
    let runs = [
        (
            "host1/a -> host2/b",
            PingRun::start(&bed.container(a).ns, "10.2.1.2", interval, lasting),
        ),
        (
            "host2/b -> host1/a",
            PingRun::start(&bed.container(b).ns, "10.2.1.1", interval, lasting),
        ),
        (
            "host1/a -> host1/l",
            PingRun::start(&bed.container(a).ns, "10.2.1.3", interval, lasting),
        ),
    ];
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    bed.router_mut(1)
        .stop_keeping_datapath()
        .expect("stop --keep-datapath");
    let stopped = t.elapsed();
    // The new launch loads changed programs: the same object with its kernel log switched
    // on, which the verifier keeps instead of dropping as dead code.
    bed.relaunch(1, &LaunchOpts::dialling(&[], &["--xdp", "on", "--log-kernel"]))
        .expect("launch again");
    let relaunched = t.elapsed();
    let log = bed.router(1).log_tail(200);
    assert!(
        log.contains("adopting the data path pinned under"),
        "the launch did not adopt the pins:\n{log}"
    );

    let mut losses = Vec::new();
    for (what, run) in runs {
        let loss = run.expect("ping starts").finish().expect("ping ends");
        eprintln!("{what}: {loss} (process down after {stopped:?}, up again after {relaunched:?})");
        losses.push((what, loss));
    }
    let after = links_of(&bed, 1);
    assert_eq!(
        before
            .iter()
            .map(|l| (&l.pin, l.link_id))
            .collect::<Vec<_>>(),
        after
            .iter()
            .map(|l| (&l.pin, l.link_id))
            .collect::<Vec<_>>(),
        "the links (pins and IDs) stayed"
    );
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(
            old.prog_id, new.prog_id,
            "{}: the program in the link was replaced",
            old.pin
        );
    }
    let changed: Vec<&str> = before
        .iter()
        .zip(&after)
        .filter(|(old, new)| old.prog_xlated != new.prog_xlated)
        .map(|(old, _)| old.pin.as_str())
        .collect();
    // The receive program logs (its drops and relays); the verifier keeps that code now.
    assert!(
        changed.iter().any(|p| p.starts_with("rx-")),
        "the receive program was swapped for a changed one: changed {changed:?}, before {before:?}, after {after:?}"
    );
    for (what, loss) in losses {
        assert!(loss.lost() <= MAX_LOST, "{what}: {loss}");
    }
    // The relaunched router's path-MTU probes are taken by the peer (their rounds continue
    // above the earlier run's): the path is verified again and stays on the fast path.
    let verified = cmd::wait_for(
        "host1's connection verified on the fast path",
        Duration::from_secs(10),
        || {
            let conns = bed.router(1).connections().ok()?;
            conns
                .lines()
                .any(|l| {
                    l.contains("established")
                        && l.contains("fastdp")
                        && l.contains("mtu=")
                        && !l.contains("unverified")
                })
                .then_some(conns)
        },
    );
    assert!(
        verified.is_ok(),
        "path MTU not verified again after the relaunch: {:?}\n{}",
        bed.router(1).connections(),
        bed.router(1).log_tail(20)
    );
}

/// kill -9 of router 1, 10 s down, launched again: 50 ms pings both ways and an iperf3 TCP
/// stream keep going (the local half — host 1's own containers — needs only the pinned data
/// path; the remote half needs router 2 to keep router 1's entries while its control
/// connection is down).
#[test]
fn a_killed_router_relaunched_after_ten_seconds_loses_no_traffic() {
    if !require_root("a_killed_router_relaunched_after_ten_seconds_loses_no_traffic") {
        return;
    }
    let mut bed = TestBed::new("rskl", 2).expect("test bed");
    bed.launch_mesh(&[]).expect("routers connect");
    let a = bed.attach_container(1, "a", "10.2.1.1/24").expect("a");
    let l = bed.attach_container(1, "l", "10.2.1.3/24").expect("l");
    let b = bed.attach_container(2, "b", "10.2.1.2/24").expect("b");
    for (from, to) in [(a, "10.2.1.2"), (b, "10.2.1.1"), (l, "10.2.1.1")] {
        bed.container(from)
            .wait_ping(to, Duration::from_secs(10))
            .expect("containers reach each other");
    }
    let server = probe::iperf3_server(&bed.container(b).ns).expect("iperf3 server");
    let client = bed
        .container(a)
        .ns
        .spawn(&probe::iperf3_client_argv("10.2.1.2", 18))
        .expect("iperf3 client");
    let interval = Duration::from_millis(50);
    let lasting = Duration::from_secs(18);
    let runs = [
        (
            "host1/a -> host2/b",
            PingRun::start(&bed.container(a).ns, "10.2.1.2", interval, lasting),
        ),
        (
            "host2/b -> host1/a",
            PingRun::start(&bed.container(b).ns, "10.2.1.1", interval, lasting),
        ),
        (
            "host1/l -> host1/a",
            PingRun::start(&bed.container(l).ns, "10.2.1.1", interval, lasting),
        ),
    ];
    std::thread::sleep(Duration::from_secs(2));
    bed.router_mut(1).kill();
    std::thread::sleep(Duration::from_secs(10));
    bed.relaunch(1, &LaunchOpts::default())
        .expect("launch again");

    let mut losses = Vec::new();
    for (what, run) in runs {
        let loss = run.expect("ping starts").finish().expect("ping ends");
        eprintln!("{what}: {loss}");
        losses.push((what, loss));
    }
    let mut client = client;
    let _ = cmd::wait_for("iperf3 to end", Duration::from_secs(30), || {
        (!client.running()).then_some(())
    });
    let out = client.stop();
    drop(server);
    let transfer = probe::parse_iperf3(&out.stdout);
    eprintln!("iperf3 across the restart: {transfer:?}");
    // The local half first: it needs nothing of the peer.
    let (what, local) = losses[2];
    assert!(local.lost() <= MAX_LOST, "{what}: {local}");
    for (what, loss) in &losses[..2] {
        assert!(loss.lost() <= MAX_LOST, "{what}: {loss}");
    }
    let transfer = transfer.expect("the TCP stream went on to its end");
    assert!(transfer.bytes > 0);
}

/// A container whose namespace is deleted while its router is down: on relaunch its links
/// and entries go, the other container's stay and it still gets through.
#[test]
fn a_container_gone_while_the_router_was_down_is_cleaned_up_on_relaunch() {
    if !require_root("a_container_gone_while_the_router_was_down_is_cleaned_up_on_relaunch") {
        return;
    }
    let mut bed = TestBed::new("rsst", 1).expect("test bed");
    bed.launch(1, &LaunchOpts::default()).expect("router");
    let keep = bed.attach_container(1, "k", "10.2.1.1/24").expect("k");
    let gone = bed.attach_container(1, "g", "10.2.1.2/24").expect("g");
    let other = bed.attach_container(1, "o", "10.2.1.3/24").expect("o");
    bed.container(keep)
        .wait_ping("10.2.1.3", Duration::from_secs(10))
        .expect("k reaches o");
    let gone_mac = mac_key(&probe::link_mac(&bed.container(gone).ns, "ethwe").expect("g's MAC"));
    let dir = pin_dir(&bed.peer_name(1)).expect("pin dir");
    let host_veths = |dir: &Path| -> Vec<String> {
        pinned_links(dir)
            .expect("links")
            .into_iter()
            .filter_map(|l| l.pin.strip_prefix("tx-").map(str::to_string))
            .collect()
    };
    let before = host_veths(&dir);
    assert_eq!(before.len(), 3, "{before:?}");
    let macs = |dir: &Path| pinned_map_keys(&dir.join("ENDPOINTS")).expect("ENDPOINTS");
    assert!(
        macs(&dir).iter().any(|k| k.starts_with(&gone_mac)),
        "{gone_mac} not in ENDPOINTS before: {:?}",
        macs(&dir)
    );

    bed.router_mut(1).kill();
    bed.container(gone)
        .ns
        .ip("link del ethwe")
        .expect("the container's interface goes with it");
    bed.relaunch(1, &LaunchOpts::default())
        .expect("launch again");

    let after = host_veths(&dir);
    assert_eq!(
        after.len(),
        2,
        "the gone container's links stayed: {after:?}"
    );
    assert!(after.iter().all(|v| before.contains(v)));
    assert!(
        !macs(&dir).iter().any(|k| k.starts_with(&gone_mac)),
        "{gone_mac} still in ENDPOINTS after relaunch: {:?}",
        macs(&dir)
    );
    let ps = bed.router(1).check(&["status"]).unwrap_or_default();
    let out = bed.container(keep).ping("10.2.1.3", 3).expect("ping runs");
    assert!(
        out.success(),
        "k -> o after relaunch:\n{}\n{ps}",
        out.stdout
    );
    let out = bed.container(other).ping("10.2.1.2", 1).expect("ping runs");
    assert!(!out.success(), "the gone container still answers");
}

/// A map of the wrong shape pinned under a map's name before launch: one log line, a clean
/// re-create; and a second router on the same state dir refuses with one line.
#[test]
fn wrong_pins_are_recreated_and_a_second_router_on_one_state_dir_refuses() {
    if !require_root("wrong_pins_are_recreated_and_a_second_router_on_one_state_dir_refuses") {
        return;
    }
    let mut bed = TestBed::new("rsbd", 1).expect("test bed");
    bed.launch(1, &LaunchOpts::default()).expect("router");
    let dir = pin_dir(&bed.peer_name(1)).expect("pin dir");
    let peers = dir.join("PEERS");
    let right = pinned_map_shape(&peers).expect("PEERS");
    bed.router_mut(1).kill();
    std::fs::remove_file(&peers).expect("unpin PEERS");
    cmd::check(&[
        "bpftool",
        "map",
        "create",
        &peers.to_string_lossy(),
        "type",
        "hash",
        "key",
        "4",
        "value",
        "4",
        "entries",
        "16",
        "name",
        "PEERS",
    ])
    .expect("pin a wrong-shaped PEERS");
    bed.relaunch(1, &LaunchOpts::default())
        .expect("launch over wrong pins");
    let log = bed.router(1).log_tail(300);
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("not adopting the pins"))
        .collect();
    assert_eq!(said.len(), 1, "one line about the bad pins:\n{log}");
    assert!(said[0].contains("PEERS"), "{}", said[0]);
    assert_eq!(
        pinned_map_shape(&peers).expect("PEERS"),
        right,
        "re-created"
    );
    assert!(bed.router(1).connections().is_ok(), "the router runs");

    // A second router on the same state dir (in the same host) refuses at once.
    let state = bed.state_dir(1);
    let second = bed
        .router(1)
        .cli(&[
            "launch",
            "--foreground",
            "--state-dir",
            &state.to_string_lossy(),
            "--http-addr",
            "127.0.0.1:6799",
            "--no-docker",
        ])
        .expect("second launch runs");
    assert!(
        !second.success(),
        "a second router started on one state dir"
    );
    let err = second.stderr.trim();
    assert!(err.contains("in use by another weave-router"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("in use")).count(),
        1,
        "{err}"
    );
    assert!(bed.router(1).connections().is_ok(), "the first still runs");
}

/// Addresses from IPAM and names in DNS survive a restart of either kind: unchanged, still
/// resolving, the container still attached and reachable.
#[test]
fn allocations_names_and_attachments_survive_restarts() {
    if !require_root("allocations_names_and_attachments_survive_restarts") {
        return;
    }
    let mut bed = TestBed::new("rsdn", 1).expect("test bed");
    bed.launch(1, &LaunchOpts::default()).expect("router");
    let mut addrs = Vec::new();
    let mut containers = Vec::new();
    for (name, hostname) in [("x", "one"), ("y", "two")] {
        let c = bed.add_container(1, name).expect("container");
        let path = bed.container(c).ns.path();
        let out = bed
            .router(1)
            .check(&[
                "attach",
                "--netns",
                &path.to_string_lossy(),
                "--hostname",
                hostname,
            ])
            .expect("attach with an allocated address and a name");
        let addr = out
            .split_whitespace()
            .nth(1)
            .expect("attach prints its address")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        addrs.push(addr);
        containers.push(c);
    }
    let (x, y) = (containers[0], containers[1]);
    let resolve = |bed: &TestBed, name: &str| -> Vec<String> {
        let out = bed
            .container(x)
            .ns
            .run(&[
                "dig",
                "@169.254.53.53",
                "+short",
                "+time=2",
                "+tries=1",
                name,
            ])
            .expect("dig");
        out.stdout.lines().map(str::to_string).collect()
    };
    let want = |i: usize| vec![addrs[i].clone()];
    cmd::wait_for("one to resolve", Duration::from_secs(10), || {
        (resolve(&bed, "one.weave.local") == want(0)).then_some(())
    })
    .expect("names resolve");

    for restart in ["upgrade", "kill -9"] {
        // Traffic runs across the restart.
        let run = PingRun::start(
            &bed.container(x).ns,
            &addrs[1],
            Duration::from_millis(50),
            Duration::from_secs(6),
        )
        .expect("ping");
        if restart == "upgrade" {
            bed.router_mut(1).stop_keeping_datapath().expect("stop");
        } else {
            bed.router_mut(1).kill();
        }
        bed.relaunch(1, &LaunchOpts::default())
            .expect("launch again");
        let loss = run.finish().expect("ping ends");
        eprintln!("{restart}: {loss}");
        assert!(loss.lost() <= MAX_LOST, "{restart}: {loss}");
        for (i, name) in ["one.weave.local", "two.weave.local"].iter().enumerate() {
            cmd::wait_for(
                &format!("{name} after {restart}"),
                Duration::from_secs(10),
                || (resolve(&bed, name) == want(i)).then_some(()),
            )
            .unwrap_or_else(|e| panic!("{e}: {:?}", resolve(&bed, name)));
        }
        let ps = bed.router(1).check(&["ps"]).expect("ps");
        for a in &addrs {
            assert!(
                ps.contains(a.as_str()),
                "{a} not attached after {restart}:\n{ps}"
            );
        }
        let out = bed.container(y).ping(&addrs[0], 2).expect("ping");
        assert!(out.success(), "y -> x after {restart}:\n{}", out.stdout);
    }
}
