//! Docker integration with a real dockerd per simulated host: `docker run` through the
//! router's proxy (`eval $(weave-router env)`), names in weaveDNS, `WEAVE_CIDR` subnets, stop,
//! router restart, a daemon that dies.

use std::path::PathBuf;
use std::time::Duration;

use weave_tests::cmd::wait_for;
use weave_tests::docker::{self, DockerHost, IMAGE};
use weave_tests::{host_addr, require_root, LaunchOpts, TestBed};

/// A test bed whose hosts each run a dockerd and a router connected to it.
struct DockerBed {
    bed: TestBed,
    daemons: Vec<DockerHost>,
    /// Router launch arguments beyond the Docker ones.
    extra: Vec<String>,
}

impl DockerBed {
    fn new(prefix: &str, n: usize, extra: &[&str]) -> Option<DockerBed> {
        if let Err(why) = docker::available() {
            weave_tests::skip(&format!("{why} (cargo xtask setup installs it)"));
            return None;
        }
        let bed = TestBed::new(prefix, n).expect("test bed");
        let daemons = DockerHost::start_per_host(&bed, n).expect("dockerd starts with the image");
        let mut b = DockerBed {
            bed,
            daemons,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 1..=n {
            let opts = b.opts(i);
            b.bed.launch(i, &opts).expect("router launches");
        }
        for i in 1..=n {
            b.bed
                .router(i)
                .wait_established(n - 1, Duration::from_secs(30))
                .expect("routers connect");
        }
        Some(b)
    }

    fn opts(&self, i: usize) -> LaunchOpts {
        let mut extra = self.extra.clone();
        extra.extend([
            "--docker-host".to_string(),
            self.daemons[i - 1].docker_host(),
            "--proxy-socket".to_string(),
            self.proxy_socket(i).to_string_lossy().to_string(),
        ]);
        LaunchOpts {
            peers: (1..i).map(|j| host_addr(j).to_string()).collect(),
            extra,
        }
    }

    fn proxy_socket(&self, i: usize) -> PathBuf {
        self.daemons[i - 1].dir().join("weave.sock")
    }

    fn daemon(&self, i: usize) -> &DockerHost {
        &self.daemons[i - 1]
    }

    /// `DOCKER_HOST` as `eval $(weave-router env)` sets it on host `i`.
    fn env(&self, i: usize) -> String {
        let out = self
            .bed
            .router(i)
            .check(&["env"])
            .expect("weave-router env");
        out.trim()
            .strip_prefix("export DOCKER_HOST=")
            .unwrap_or_else(|| panic!("env printed {out:?}"))
            .to_string()
    }

    /// `docker run -d --net=none --name NAME [-e WEAVE_CIDR=...] IMAGE sleep` through the
    /// proxy of host `i`.
    fn run(&self, i: usize, name: &str, cidr: Option<&str>) -> weave_tests::Output {
        let env = cidr.map(|c| format!("WEAVE_CIDR={c}"));
        let mut args = vec!["run", "-d", "--net=none", "--name", name];
        if let Some(e) = &env {
            args.extend(["-e", e.as_str()]);
        }
        args.extend([IMAGE, "sleep", "3600"]);
        self.daemon(i)
            .docker_at(&self.env(i), &args)
            .expect("docker runs")
    }

    fn run_ok(&self, i: usize, name: &str, cidr: Option<&str>) -> String {
        let out = self.run(i, name, cidr);
        assert!(out.success(), "docker run {name}: {}", out.stderr);
        out.stdout.trim().to_string()
    }

    /// `docker exec NAME ARGS` on host `i` (straight to the daemon).
    fn exec(&self, i: usize, name: &str, args: &[&str]) -> weave_tests::Output {
        let mut argv = vec!["exec", name];
        argv.extend_from_slice(args);
        self.daemon(i).docker(&argv).expect("docker exec runs")
    }

    /// The IPv4 address of `ethwe` in container NAME (without prefix length).
    fn address(&self, i: usize, name: &str) -> Option<String> {
        let out = self.exec(i, name, &["ip", "-4", "-o", "addr", "show", "ethwe"]);
        out.stdout
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .map(|a| a.split('/').next().unwrap_or(a).to_string())
    }

    fn pings(&self, i: usize, name: &str, target: &str, count: u32) -> bool {
        self.exec(
            i,
            name,
            &["ping", "-c", &count.to_string(), "-W", "1", target],
        )
        .success()
    }

    fn wait_ping(&self, i: usize, name: &str, target: &str) {
        wait_for(
            &format!("{name} to reach {target}"),
            Duration::from_secs(20),
            || self.pings(i, name, target, 1).then_some(()),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n--- router log ---\n{}",
                self.bed.router(i).log_tail(30)
            )
        });
    }

    fn ps(&self, i: usize) -> String {
        self.bed.router(i).check(&["ps"]).expect("ps")
    }

    /// The addresses IPAM of host `i` holds for an owner.
    fn ip_of(&self, i: usize, owner: &str) -> String {
        self.bed
            .router(i)
            .http_get(&format!("/ip/{owner}"))
            .unwrap_or_default()
    }

    fn resolves(&self, i: usize, name: &str) -> bool {
        self.bed
            .router(i)
            .cli(&["dns-lookup", name])
            .is_ok_and(|o| o.success() && !o.stdout.trim().is_empty())
    }

    fn host_veths(&self, i: usize) -> usize {
        self.bed
            .host(i)
            .ns
            .ip("-o link show")
            .unwrap_or_default()
            .lines()
            // Container veths are vethwe<hex>; the router's own links are vethwe-<what>.
            .filter(|l| l.contains(": vethwe") && !l.contains(": vethwe-"))
            .count()
    }
}

#[test]
fn docker_run_containers_reach_each_other_by_name_and_go_away_on_stop() {
    if !require_root("docker_run_containers_reach_each_other_by_name_and_go_away_on_stop") {
        return;
    }
    let Some(b) = DockerBed::new("dkrun", 2, &[]) else {
        return;
    };
    let w1 = b.run_ok(1, "w1", None);
    let w2 = b.run_ok(2, "w2", None);
    // The proxy answered the start only once the container was attached: no polling.
    let a1 = b
        .address(1, "w1")
        .expect("w1 has ethwe as soon as docker run returns");
    let a2 = b
        .address(2, "w2")
        .expect("w2 has ethwe as soon as docker run returns");
    assert_ne!(a1, a2);
    // Its resolver is weaveDNS.
    let resolv = b.exec(1, "w1", &["cat", "/etc/resolv.conf"]).stdout;
    assert!(resolv.contains("169.254.53.53"), "{resolv}");

    b.wait_ping(1, "w1", "w2");
    assert!(b.pings(1, "w1", "w2", 3), "docker exec w1 ping -c 3 w2");
    assert!(b.pings(2, "w2", "w1", 3), "docker exec w2 ping -c 3 w1");

    let ps = b.ps(1);
    assert!(ps.contains(&w1[..12]) && ps.contains(&a1), "{ps}");
    assert_eq!(b.ip_of(2, &w2).trim().split('/').next(), Some(a2.as_str()));
    let a2_cidr = b.ip_of(2, &w2).trim().to_string();

    // docker stop: the address is released and the name goes, on every host.
    let out = b.daemon(2).docker(&["stop", "-t", "1", "w2"]).unwrap();
    assert!(out.success(), "{}", out.stderr);
    wait_for(
        "w2's name to go on both hosts",
        Duration::from_secs(15),
        || (!b.resolves(1, "w2") && !b.resolves(2, "w2")).then_some(()),
    )
    .unwrap();
    wait_for("w2 to be detached", Duration::from_secs(10), || {
        (b.ip_of(2, &w2).trim().is_empty() && !b.ps(2).contains(&w2[..12])).then_some(())
    })
    .unwrap();
    assert_eq!(b.host_veths(2), 0, "w2's veth is gone");
    assert!(b.resolves(1, "w1"), "w1 stays");

    // The released address for a new container (another MAC): w1, whose neighbour entry
    // still has w2's MAC, reaches it at once (the attach sent a gratuitous ARP).
    b.run_ok(2, "w2b", Some(&format!("ip:{a2_cidr}")));
    assert_eq!(b.address(2, "w2b").as_deref(), Some(a2.as_str()));
    let reused = b.exec(1, "w1", &["ping", "-c", "1", "-W", "2", &a2]);
    assert!(
        reused.success(),
        "w1 did not reach the reused {a2} within 2 s"
    );
    let out = b.daemon(2).docker(&["rm", "-f", "w2b"]).unwrap();
    assert!(out.success(), "{}", out.stderr);
    wait_for("w2b to be detached", Duration::from_secs(10), || {
        (b.host_veths(2) == 0).then_some(())
    })
    .unwrap();

    // attach / detach by container name, for a container started without the proxy.
    let out = b
        .daemon(2)
        .docker(&[
            "run",
            "-d",
            "--net=none",
            "--name",
            "w3",
            IMAGE,
            "sleep",
            "3600",
        ])
        .unwrap();
    assert!(out.success(), "{}", out.stderr);
    assert!(
        b.address(2, "w3").is_none(),
        "not attached without the proxy"
    );
    let said = b.bed.router(2).check(&["attach", "w3"]).expect("attach w3");
    let a3 = b.address(2, "w3").expect("attached");
    assert!(said.contains(&a3), "{said} vs {a3}");
    wait_for("w3 to resolve on host 1", Duration::from_secs(10), || {
        b.resolves(1, "w3").then_some(())
    })
    .unwrap();
    b.bed.router(2).check(&["detach", "w3"]).expect("detach w3");
    assert!(b.address(2, "w3").is_none(), "detached");
    assert!(!b.resolves(2, "w3"));
}

#[test]
fn walkthrough_subnets_through_env_and_bad_weave_cidr() {
    if !require_root("walkthrough_subnets_through_env_and_bad_weave_cidr") {
        return;
    }
    let Some(b) = DockerBed::new(
        "dksub",
        2,
        &[
            "--ipalloc-range",
            "10.2.0.0/16",
            "--ipalloc-default-subnet",
            "10.2.1.0/24",
        ],
    ) else {
        return;
    };
    b.run_ok(1, "a1", None);
    b.run_ok(2, "a2", None);
    b.run_ok(1, "b1", Some("net:10.2.2.0/24"));
    b.run_ok(2, "b2", Some("net:10.2.2.0/24"));
    let addr = |i, n| b.address(i, n).unwrap_or_else(|| panic!("{n} attached"));
    let (a1, a2, b1, b2) = (addr(1, "a1"), addr(2, "a2"), addr(1, "b1"), addr(2, "b2"));
    assert!(
        a1.starts_with("10.2.1.") && a2.starts_with("10.2.1."),
        "{a1} {a2}"
    );
    assert!(
        b1.starts_with("10.2.2.") && b2.starts_with("10.2.2."),
        "{b1} {b2}"
    );
    b.wait_ping(1, "a1", &a2);
    b.wait_ping(1, "b1", &b2);
    assert!(b.pings(1, "a1", "a2", 3), "a1 -> a2 by name");
    assert!(b.pings(2, "b2", "b1", 3), "b2 -> b1 by name");
    assert!(!b.pings(1, "a1", &b2, 2), "a1 -> b2 must be blocked");
    assert!(!b.pings(2, "b2", &a1, 2), "b2 -> a1 must be blocked");

    // WEAVE_CIDR=none: not attached.
    b.run_ok(1, "n1", Some("none"));
    assert!(b.address(1, "n1").is_none());

    // An invalid WEAVE_CIDR: create fails with one clear line, nothing is created.
    let before = b.ps(1);
    let out = b.run(1, "bad1", Some("net:10.2.2.0/33"));
    assert!(!out.success());
    assert!(
        out.stderr
            .contains("invalid WEAVE_CIDR \"net:10.2.2.0/33\""),
        "{}",
        out.stderr
    );
    let all = b
        .daemon(1)
        .check(&["ps", "-a", "--format", "{{.Names}}"])
        .unwrap();
    assert!(!all.lines().any(|n| n == "bad1"), "{all}");
    assert_eq!(b.ps(1), before, "nothing attached");
    // A valid spec the router cannot honour (outside the range): the start fails, the
    // container is killed, nothing is half-attached.
    let out = b.run(1, "bad2", Some("net:192.168.7.0/24"));
    assert!(!out.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains("could not attach bad2"),
        "{}",
        out.stderr
    );
    wait_for("bad2 to stop", Duration::from_secs(10), || {
        let running = b
            .daemon(1)
            .check(&["inspect", "-f", "{{.State.Running}}", "bad2"])
            .unwrap_or_default();
        (running == "false").then_some(())
    })
    .unwrap();
    assert_eq!(b.ps(1), before, "nothing attached");
    assert_eq!(b.host_veths(1), 2, "a1 and b1 only");
}

#[test]
fn a_router_restart_keeps_docker_containers_and_their_addresses() {
    if !require_root("a_router_restart_keeps_docker_containers_and_their_addresses") {
        return;
    }
    let Some(mut b) = DockerBed::new("dkrst", 2, &[]) else {
        return;
    };
    let w1 = b.run_ok(1, "w1", None);
    b.run_ok(2, "w2", None);
    let a1 = b.address(1, "w1").expect("w1 attached");
    b.wait_ping(1, "w1", "w2");
    let opts = b.opts(1);
    b.bed.relaunch(1, &opts).expect("router 1 restarts");
    b.bed
        .router(1)
        .wait_established(1, Duration::from_secs(30))
        .expect("reconnects");
    assert_eq!(
        b.address(1, "w1").as_deref(),
        Some(a1.as_str()),
        "same address"
    );
    // One endpoint, one allocation, one name: nothing duplicated by the re-sync.
    let ps = b.ps(1);
    assert_eq!(ps.lines().count(), 1, "{ps}");
    assert!(ps.contains(&w1[..12]) && ps.contains(&a1), "{ps}");
    assert_eq!(b.ip_of(1, &w1).trim().split('/').next(), Some(a1.as_str()));
    assert_eq!(b.host_veths(1), 1);
    // Host 2 dropped host 1's names while it was away; they come back with it.
    wait_for(
        "w1 to resolve on host 2 again",
        Duration::from_secs(15),
        || {
            let looked = b.bed.router(2).cli(&["dns-lookup", "w1"]).ok()?;
            (looked.stdout.trim() == a1).then_some(())
        },
    )
    .unwrap();
    assert!(b.pings(1, "w1", "w2", 3), "w1 -> w2 after the restart");
    assert!(b.pings(2, "w2", "w1", 3), "w2 -> w1 after the restart");

    // A container that stops while the router is down is cleaned up when it comes back.
    let w1b = b.run_ok(1, "w1b", None);
    b.bed.router_mut(1).stop().expect("router 1 stops");
    b.daemon(1).check(&["rm", "-f", "w1b"]).unwrap();
    let opts = b.opts(1);
    b.bed.relaunch(1, &opts).expect("router 1 restarts");
    wait_for(
        "w1b's address to be released",
        Duration::from_secs(15),
        || b.ip_of(1, &w1b).trim().is_empty().then_some(()),
    )
    .unwrap();
    assert!(!b.resolves(1, "w1b"));
    assert_eq!(b.ps(1).lines().count(), 1);
    assert_eq!(b.host_veths(1), 1);
}

#[test]
fn the_watcher_survives_dockerd_dying_and_nothing_leaks() {
    if !require_root("the_watcher_survives_dockerd_dying_and_nothing_leaks") {
        return;
    }
    let Some(mut b) = DockerBed::new("dkdie", 1, &[]) else {
        return;
    };
    let w1 = b.run_ok(1, "w1", None);
    assert!(b.address(1, "w1").is_some());
    b.daemons[0].kill();
    // Without its daemon the router runs on, and says so once.
    std::thread::sleep(Duration::from_secs(4));
    let status = b
        .bed
        .router(1)
        .check(&["status"])
        .expect("status without Docker");
    assert!(!status.is_empty());
    let log = b.bed.router(1).log_tail(200);
    assert_eq!(
        log.matches("running without Docker features").count(),
        1,
        "{log}"
    );
    b.daemons[0].restart().expect("dockerd starts again");
    // The daemon lost its containers (no live restore): the router follows.
    wait_for("w1 to be detached", Duration::from_secs(30), || {
        (b.ps(1).trim().is_empty() && b.ip_of(1, &w1).trim().is_empty()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", b.bed.router(1).log_tail(30)));
    assert!(!b.resolves(1, "w1"));
    assert_eq!(b.host_veths(1), 0);
    // And it follows the new daemon's events.
    let out = b.daemon(1).docker_at(&b.env(1), &["start", "w1"]).unwrap();
    assert!(out.success(), "{}", out.stderr);
    assert!(b.address(1, "w1").is_some(), "attached again");
    assert_eq!(b.ps(1).lines().count(), 1);
    assert!(b.resolves(1, "w1"));
}

#[test]
fn the_router_image_builds_without_a_registry() {
    if !require_root("the_router_image_builds_without_a_registry") {
        return;
    }
    if let Err(why) = docker::available() {
        weave_tests::skip(&format!("{why} (cargo xtask setup installs it)"));
        return;
    }
    // Holds the host namespace the daemon runs in.
    let bed = TestBed::new("dkimg", 1).expect("test bed");
    let d = DockerHost::start(bed.host(1).ns.name(), &format!("{}-dk1", bed.prefix()))
        .expect("dockerd starts");
    let out = d
        .build_router_image(&weave_tests::router::binary(), "weave-router:test")
        .unwrap();
    assert!(out.success(), "docker build: {}", out.stderr);
    let entry = d
        .check(&[
            "image",
            "inspect",
            "-f",
            "{{json .Config.Entrypoint}}",
            "weave-router:test",
        ])
        .unwrap();
    assert_eq!(entry, r#"["/weave-router"]"#);
}
