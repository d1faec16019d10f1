//! What a Weave operator types and expects: peers whose IP allocations disagree are refused
//! (no address handed out twice on one network), `launch --resume` rejoins the stored
//! peers, Weave's spellings of flags and commands work, and an attach right after a launch
//! succeeds every time.

use std::time::{Duration, Instant};

use weave_tests::{cmd, host_addr, require_root, LaunchOpts, TestBed};

const RANGE: [&str; 6] = [
    "--ipalloc-range",
    "10.2.0.0/16",
    "--ipalloc-default-subnet",
    "10.2.1.0/24",
    "--xdp",
    "off",
];

/// The peers in host `i`'s pinned PEERS map (an array by short ID: entries not all zero).
fn fast_path_peers(bed: &TestBed, i: usize) -> usize {
    fn zero(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Number(n) => n.as_u64() == Some(0),
            serde_json::Value::String(s) => {
                u64::from_str_radix(s.trim_start_matches("0x"), 16).ok() == Some(0)
            }
            serde_json::Value::Array(a) => a.iter().all(zero),
            serde_json::Value::Object(o) => o.values().all(zero),
            _ => true,
        }
    }
    let pin = format!("/sys/fs/bpf/weave-router/{}/PEERS", bed.peer_name(i));
    let out = cmd::check(&["bpftool", "-j", "map", "dump", "pinned", &pin]).expect("bpftool");
    let v: serde_json::Value = serde_json::from_str(&out).expect("bpftool JSON");
    v.as_array().map_or(0, |entries| {
        entries
            .iter()
            .filter(|e| {
                let value = e
                    .get("formatted")
                    .and_then(|f| f.get("value"))
                    .or_else(|| e.get("value"));
                value.is_some_and(|v| !zero(v))
            })
            .count()
    })
}

/// Waits until a line of host `i`'s `status connections` has every one of `words`.
fn wait_connection_line(bed: &TestBed, i: usize, words: &[&str], timeout: Duration) -> String {
    cmd::wait_for(
        &format!("host{i}: a connection with {words:?}"),
        timeout,
        || {
            let s = bed.router(i).connections().ok()?;
            s.lines()
                .find(|l| words.iter().all(|w| l.contains(w)))
                .map(str::to_string)
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n--- log ---\n{}",
            bed.router(i).connections().unwrap_or_default(),
            bed.router(i).log_tail(20)
        )
    })
}

#[test]
fn peers_whose_ip_allocations_disagree_are_refused_on_both_sides() {
    if !require_root("peers_whose_ip_allocations_disagree_are_refused_on_both_sides") {
        return;
    }
    weave_tests::require_tools(&["bpftool"]);
    let mut bed = TestBed::new("ohm", 3).expect("test bed");
    let seed = |i: usize| format!("seed={}", bed.peer_name(i));
    let (seed1, seed2) = (seed(1), seed(2));
    let with = |init: &str| -> Vec<String> {
        let mut v: Vec<String> = RANGE.iter().map(|s| s.to_string()).collect();
        v.extend(["--ipalloc-init".to_string(), init.to_string()]);
        v
    };
    let extra1 = with(&seed1);
    let extra2 = with(&seed2);
    bed.launch(
        1,
        &LaunchOpts::dialling(&[], &extra1.iter().map(String::as_str).collect::<Vec<_>>()),
    )
    .expect("host1");
    bed.launch(
        2,
        &LaunchOpts::dialling(&[1], &extra2.iter().map(String::as_str).collect::<Vec<_>>()),
    )
    .expect("host2");
    let reason = "IP allocation was seeded by different peers";
    // The dialler shows its target failed (retried with backoff), the dialled side the
    // refused connection; both with Weave's reason.
    let line = wait_connection_line(
        &bed,
        2,
        &["failed", reason, "retry:"],
        Duration::from_secs(20),
    );
    println!("host2: {line}");
    let line = wait_connection_line(&bed, 1, &["<-", "failed", reason], Duration::from_secs(20));
    println!("host1: {line}");
    // Both hand out addresses of their own: the two never carry each other's traffic.
    let c1 = bed.add_container(1, "c1").unwrap();
    let c2 = bed.add_container(2, "c2").unwrap();
    let a1 = bed.attach_specs(1, c1, &[]).expect("c1 attached");
    let a2 = bed.attach_specs(2, c2, &[]).expect("c2 attached");
    println!("c1 {a1:?}, c2 {a2:?}");
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        for i in [1, 2] {
            let c = bed.router(i).connections().unwrap();
            assert!(
                !c.contains("established") && !c.contains("pending"),
                "host{i}:\n{c}"
            );
            assert_eq!(
                fast_path_peers(&bed, i),
                0,
                "host{i} put the other in its fast path"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log2 = bed.router(2).log_tail(200);
    assert!(
        log2.matches(&format!("failed: {reason}")).count() >= 2,
        "refused again on retry:\n{log2}"
    );

    // A consensus that decided without host1 disagrees with its seeds too.
    let extra3 = with("consensus=1");
    bed.launch(
        3,
        &LaunchOpts::dialling(&[], &extra3.iter().map(String::as_str).collect::<Vec<_>>()),
    )
    .expect("host3");
    let c3 = bed.add_container(3, "c3").unwrap();
    bed.attach_specs(3, c3, &[])
        .expect("c3 attached: the consensus of one decided");
    bed.router(3)
        .check(&["connect", &host_addr(1).to_string()])
        .expect("connect");
    wait_connection_line(&bed, 3, &["failed", reason], Duration::from_secs(20));

    // Another range is refused whatever the seeds.
    let mut other_range = vec!["--ipalloc-range", "10.3.0.0/16", "--xdp", "off"];
    other_range.extend(["--ipalloc-init", "consensus=1"]);
    bed.router_mut(3).stop().unwrap();
    std::fs::remove_dir_all(bed.state_dir(3)).unwrap();
    bed.relaunch(3, &LaunchOpts::dialling(&[1], &other_range))
        .expect("host3 again");
    let line = wait_connection_line(
        &bed,
        3,
        &[
            "failed",
            "IP allocation ranges differ (ours: 10.3.0.0/16, theirs: 10.2.0.0/16)",
        ],
        Duration::from_secs(20),
    );
    println!("host3: {line}");
    assert_eq!(fast_path_peers(&bed, 3), 0);
    assert_eq!(fast_path_peers(&bed, 1), 0);
}

#[test]
fn launch_resume_rejoins_the_stored_peers() {
    if !require_root("launch_resume_rejoins_the_stored_peers") {
        return;
    }
    let mut bed = TestBed::new("ohr", 2).expect("test bed");
    bed.launch(1, &LaunchOpts::dialling(&[], &["--xdp", "off"]))
        .expect("host1");
    bed.launch(2, &LaunchOpts::dialling(&[1], &["--xdp", "off"]))
        .expect("host2");
    bed.router(2)
        .wait_established(1, Duration::from_secs(30))
        .expect("connected");
    let stored = std::fs::read_to_string(bed.state_dir(2).join("targets.json")).expect("stored");
    assert!(stored.contains("198.18.0.1:6783"), "{stored}");

    // Peers and --resume together: one line, nothing launched.
    let out = bed
        .router(2)
        .cli(&[
            "launch",
            "--resume",
            "198.18.0.1",
            "--state-dir",
            "/nonexistent",
        ])
        .unwrap();
    assert!(!out.success());
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("--resume dials the peers stored"),
        "{}",
        out.stderr
    );

    // A plain launch dials nobody, and says how to dial the stored peers.
    bed.relaunch(2, &LaunchOpts::dialling(&[], &["--xdp", "off"]))
        .expect("plain");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!bed.router(2).connections().unwrap().contains("198.18.0.1"));
    assert!(bed.router(2).log_tail(50).contains("launch --resume"));

    // --resume: back without typing the peer.
    let started = Instant::now();
    bed.relaunch(2, &LaunchOpts::dialling(&[], &["--xdp", "off", "--resume"]))
        .expect("resume");
    bed.router(2)
        .wait_established(1, Duration::from_secs(30))
        .expect("rejoined");
    bed.router(1)
        .wait_established(1, Duration::from_secs(30))
        .expect("host1 sees it back");
    println!("rejoined {:?} after launch --resume", started.elapsed());

    // A stored list with a bad entry and an unreachable peer: one line for the bad entry,
    // the good peer connects, the unreachable one is retried like any target.
    bed.router_mut(2).stop().unwrap();
    std::fs::write(
        bed.state_dir(2).join("targets.json"),
        r#"{"given": ["198.18.0.1:6783", "not a peer"], "learned": ["198.18.0.99:6783"]}"#,
    )
    .unwrap();
    bed.relaunch(2, &LaunchOpts::dialling(&[], &["--xdp", "off", "--resume"]))
        .expect("resume");
    bed.router(2)
        .wait_established(1, Duration::from_secs(30))
        .expect("the good one");
    let log = bed.router(2).log_tail(80);
    assert_eq!(log.matches("stored peer skipped").count(), 1, "{log}");
    wait_connection_line(&bed, 2, &["198.18.0.99", "failed"], Duration::from_secs(20));

    // A corrupt list: one line, the launch goes on (alone).
    bed.router_mut(2).stop().unwrap();
    std::fs::write(bed.state_dir(2).join("targets.json"), "{\"given\": [1").unwrap();
    bed.relaunch(2, &LaunchOpts::dialling(&[], &["--xdp", "off", "--resume"]))
        .expect("resume despite a corrupt list");
    let log = bed.router(2).log_tail(40);
    assert_eq!(log.matches("is corrupt").count(), 1, "{log}");
    assert!(log.contains("resuming with no stored peers"), "{log}");
}

#[test]
fn weaves_spellings_of_flags_and_commands_work() {
    if !require_root("weaves_spellings_of_flags_and_commands_work") {
        return;
    }
    let mut bed = TestBed::new("ohc", 2).expect("test bed");
    let mut extra1: Vec<&str> = RANGE.to_vec();
    extra1.extend([
        "--conn-limit",
        "0",
        "--log-level",
        "warning",
        "--init-peer-count",
        "2",
    ]);
    bed.launch(1, &LaunchOpts::dialling(&[], &extra1))
        .expect("--conn-limit 0 is no limit");
    // WEAVE_NO_FASTDP, as Weave reads it: the sleeve carries the peer.
    std::env::set_var("WEAVE_NO_FASTDP", "1");
    let mut extra2: Vec<&str> = RANGE.to_vec();
    extra2.extend(["--init-peer-count", "2"]);
    let launched = bed
        .launch(2, &LaunchOpts::dialling(&[1], &extra2))
        .map(|_| ());
    std::env::remove_var("WEAVE_NO_FASTDP");
    launched.expect("host2");
    bed.router(2)
        .wait_connection_with(" sleeve ", Duration::from_secs(30))
        .expect("WEAVE_NO_FASTDP means the sleeve");
    bed.router(1)
        .wait_established(1, Duration::from_secs(30))
        .expect("host1");
    let log1 = bed.router(1).log_tail(100);
    assert!(!log1.contains(" INFO "), "--log-level warning:\n{log1}");

    // ps CONTAINER...: only those.
    let c1 = bed.add_container(1, "c1").unwrap();
    let c2 = bed.add_container(1, "c2").unwrap();
    bed.attach_specs(1, c1, &[]).expect("c1");
    bed.attach_specs(1, c2, &[]).expect("c2");
    let p1 = bed.container(c1).ns.path().to_string_lossy().into_owned();
    let ps = bed.router(1).check(&["ps", &p1]).unwrap();
    assert_eq!(ps.lines().count(), 1, "{ps}");
    assert!(ps.starts_with(&p1), "{ps}");
    assert_eq!(bed.router(1).check(&["ps"]).unwrap().lines().count(), 2);

    // expose -h FQDN names the host; hide ADDR takes only that address away.
    let exposed = bed
        .router(1)
        .check(&[
            "expose",
            "net:10.2.5.0/24",
            "net:10.2.6.0/24",
            "-h",
            "host1.weave.local",
        ])
        .expect("expose -h");
    let addrs: Vec<&str> = exposed.lines().collect();
    assert_eq!(addrs.len(), 2, "{exposed}");
    let looked_up = bed
        .router(1)
        .check(&["dns-lookup", "host1"])
        .expect("named");
    for a in &addrs {
        assert!(
            looked_up.contains(a.split('/').next().unwrap()),
            "{looked_up}"
        );
    }
    let first = addrs[0].split('/').next().unwrap();
    let second = addrs[1].split('/').next().unwrap();
    bed.router(1).check(&["hide", first]).expect("hide ADDR");
    let bridge = bed.host(1).ns.ip("-4 addr show dev weave").unwrap();
    assert!(
        !bridge.contains(&format!("{first}/")) && bridge.contains(&format!("{second}/")),
        "{bridge}"
    );
    let out = bed.router(1).cli(&["hide", "10.2.99.1"]).unwrap();
    assert!(
        !out.success() && out.stderr.contains("10.2.99.1 is not exposed"),
        "{}",
        out.stderr
    );

    // dns-add IP... CONTAINER -h NAME (the container as the last word) and dns-remove.
    bed.router(1)
        .check(&["dns-add", "10.2.1.77", "c0ffee", "-h", "db"])
        .expect("dns-add with the container");
    assert!(bed
        .router(1)
        .check(&["dns-lookup", "db"])
        .unwrap()
        .contains("10.2.1.77"));
    bed.router(1)
        .check(&["dns-remove", "10.2.1.77", "c0ffee"])
        .expect("dns-remove");
    assert!(!bed.router(1).cli(&["dns-lookup", "db"]).unwrap().success());

    // launch-router is gone, as in Weave 2.
    let out = bed.router(1).cli(&["launch-router", "198.18.0.2"]).unwrap();
    assert!(
        !out.success() && out.stderr.contains("removed in Weave 2.0"),
        "{}",
        out.stderr
    );

    // rmpeer takes a nickname: host2 stopped, host1 takes its space.
    bed.router_mut(2).stop().unwrap();
    let taken = cmd::wait_for(
        "host2 unreachable from host1",
        Duration::from_secs(30),
        || {
            let out = bed.router(1).cli(&["rmpeer", "host2"]).ok()?;
            out.success().then_some(out.stdout)
        },
    )
    .expect("rmpeer host2");
    assert!(taken.contains(&bed.peer_name(2)), "{taken}");

    // reset --force: the router goes, its IP allocation with it.
    let said = bed
        .router(1)
        .check(&["reset", "--force"])
        .expect("reset --force");
    println!("{said}");
    cmd::wait_for("host1 to stop", Duration::from_secs(20), || {
        weave_tests::router::router_pids(bed.router(1).netns())
            .is_empty()
            .then_some(())
    })
    .expect("stopped");
    assert!(!bed.state_dir(1).join("ipam.json").exists());
    // With no router answering, --force clears what is stored.
    std::fs::write(bed.state_dir(1).join("targets.json"), "{}").unwrap();
    let dir = bed.state_dir(1).to_string_lossy().into_owned();
    let out = bed
        .router(1)
        .check(&["reset", "--force", "--state-dir", &dir])
        .expect("reset --force without a router");
    assert!(out.contains("targets.json"), "{out}");
    assert!(!bed.state_dir(1).join("targets.json").exists());
}

/// Machine-derived names: without --name, a router's name survives a wiped state dir.
#[test]
fn without_a_name_the_machine_names_the_peer_stably() {
    if !require_root("without_a_name_the_machine_names_the_peer_stably") {
        return;
    }
    let bed = TestBed::new("ohn", 1).expect("test bed");
    let ns = format!("{}-h1", bed.prefix());
    let dir = weave_tests::bed::state_base(bed.prefix()).join("noname");
    let d = dir.to_string_lossy().into_owned();
    let mut names = Vec::new();
    for _ in 0..2 {
        let _ = std::fs::remove_dir_all(&dir);
        let out = weave_tests::router::cli_in(
            &ns,
            &[
                "launch",
                "--state-dir",
                &d,
                "--no-docker",
                "--xdp",
                "off",
                "--iface",
                "eth0",
            ],
        )
        .unwrap();
        assert!(out.success(), "{}", out.stderr);
        names.push(out.stdout.trim().to_string());
        weave_tests::router::cli_in(&ns, &["stop"]).unwrap();
        weave_tests::router::remove_pins(names.last().unwrap());
    }
    assert_eq!(names[0], names[1], "the same machine, the same name");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The second host's first attach right after its launch, many times over.
#[test]
fn an_attach_right_after_launch_succeeds_every_time() {
    if !require_root("an_attach_right_after_launch_succeeds_every_time") {
        return;
    }
    const CYCLES: usize = 50;
    let mut bed = TestBed::new("ohs", 2).expect("test bed");
    // Seeds: host1 (the lower name) owns the default subnet, so host2's first address
    // needs space from host1, which it can ask for only once host1 is reachable.
    let seeds = format!("seed={},{}", bed.peer_name(1), bed.peer_name(2));
    let mut extra: Vec<&str> = RANGE.to_vec();
    extra.extend(["--ipalloc-init", &seeds]);
    bed.launch(1, &LaunchOpts::dialling(&[], &extra))
        .expect("host1");
    let c = bed.add_container(2, "c1").unwrap();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut times = Vec::new();
    for cycle in 1..=CYCLES {
        // A fresh host2 each time: its own seed claim, then the ring and a donation.
        let _ = std::fs::remove_dir_all(bed.state_dir(2));
        bed.relaunch(2, &LaunchOpts::dialling(&[1], &extra))
            .unwrap_or_else(|e| panic!("cycle {cycle}: launch: {e}"));
        let t = Instant::now();
        let got = bed.attach_specs(2, c, &[]);
        let took = t.elapsed();
        slowest = slowest.max(took);
        times.push(took);
        if took > Duration::from_secs(2) {
            println!(
                "cycle {cycle}: attach took {took:?}\n--- host2 log ---\n{}--- host1 log ---\n{}",
                bed.router(2).log_tail(25),
                bed.router(1).log_tail(10)
            );
        }
        let got = got.unwrap_or_else(|e| {
            panic!(
                "cycle {cycle}: attach right after launch: {e}\n--- log ---\n{}",
                bed.router(2).log_tail(30)
            )
        });
        assert!(
            got.len() == 1 && got[0].starts_with("10.2.1."),
            "cycle {cycle}: {got:?}"
        );
        bed.router(2)
            .detach(&bed.container(c).ns.path())
            .unwrap_or_else(|e| panic!("cycle {cycle}: detach: {e}"));
        bed.router_mut(2).stop().unwrap();
    }
    times.sort();
    println!(
        "{CYCLES} launch+attach cycles in {:?}; attach median {:?}, slowest {slowest:?}",
        started.elapsed(),
        times[times.len() / 2]
    );
}
