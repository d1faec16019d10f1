//! The Docker network plugin with a real dockerd per simulated host: the network `weave`
//! each router creates, `docker run --net=weave`, names in weaveDNS, addresses released on `docker rm`,
//! a reused address reachable at once (gratuitous ARP), a subnet outside the range refused.

use std::time::{Duration, Instant};

use weave_tests::cmd::wait_for;
use weave_tests::docker::{self, DockerHost, IMAGE};
use weave_tests::{host_addr, require_root, LaunchOpts, TestBed};

const DNS: &str = "169.254.53.53";

/// Hosts that each run a dockerd and a router serving the plugin where that dockerd looks.
struct PluginBed {
    bed: TestBed,
    daemons: Vec<DockerHost>,
}

impl PluginBed {
    fn new(prefix: &str, n: usize) -> Option<PluginBed> {
        if let Err(why) = docker::available() {
            weave_tests::skip(&format!("{why} (cargo xtask setup installs it)"));
            return None;
        }
        let bed = TestBed::new(prefix, n).expect("test bed");
        let daemons = DockerHost::start_per_host(&bed, n).expect("dockerd starts with the image");
        let mut b = PluginBed { bed, daemons };
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
        let d = &self.daemons[i - 1];
        LaunchOpts {
            peers: (1..i).map(|j| host_addr(j).to_string()).collect(),
            extra: vec![
                "--docker-host".into(),
                d.docker_host(),
                "--no-proxy".into(),
                "--plugin-socket".into(),
                d.plugins_dir()
                    .join("weave.sock")
                    .to_string_lossy()
                    .to_string(),
            ],
        }
    }

    fn daemon(&self, i: usize) -> &DockerHost {
        &self.daemons[i - 1]
    }

    fn docker(&self, i: usize, args: &[&str]) -> weave_tests::Output {
        self.daemon(i).docker(args).expect("docker runs")
    }

    fn docker_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.docker(i, args);
        assert!(
            out.success(),
            "docker {args:?} on host {i}: {}\n--- router log ---\n{}\n--- dockerd log ---\n{}",
            out.stderr,
            self.bed.router(i).log_tail(30),
            self.daemon(i).log_tail(20)
        );
        out.stdout.trim().to_string()
    }

    /// `docker run -d --net=weave --name NAME` with weaveDNS as resolver, on host `i`.
    fn run(&self, i: usize, name: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "run",
            "-d",
            "--net=weave",
            "--name",
            name,
            "--dns",
            DNS,
            "--dns-search",
            "weave.local",
        ];
        args.extend_from_slice(extra);
        args.extend([IMAGE, "sleep", "3600"]);
        self.docker_ok(i, &args)
    }

    fn pings(&self, i: usize, name: &str, target: &str, count: u32, wait: u32) -> bool {
        self.docker(
            i,
            &[
                "exec",
                name,
                "ping",
                "-c",
                &count.to_string(),
                "-W",
                &wait.to_string(),
                target,
            ],
        )
        .success()
    }

    /// The IPv4 address of the weave interface of container NAME.
    fn address(&self, i: usize, name: &str) -> String {
        let out = self.docker_ok(i, &["exec", name, "ip", "-4", "-o", "addr", "show"]);
        out.lines()
            .filter(|l| l.contains("ethwe"))
            .flat_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
            .map(|a| a.split('/').next().unwrap_or(a).to_string())
            .next()
            .unwrap_or_else(|| panic!("{name} has no address on ethwe: {out}"))
    }

    fn allocations(&self, i: usize) -> String {
        self.bed.router(i).http_get("/report").unwrap_or_default()
    }

    fn resolves(&self, i: usize, name: &str) -> bool {
        self.bed
            .router(i)
            .cli(&["dns-lookup", name])
            .is_ok_and(|o| o.success() && !o.stdout.trim().is_empty())
    }
}

#[test]
fn docker_network_plugin_runs_containers_on_the_weave_network() {
    if !require_root("docker_network_plugin_runs_containers_on_the_weave_network") {
        return;
    }
    let Some(mut b) = PluginBed::new("dpplug", 2) else {
        return;
    };
    // Each router creates the network `weave` on its daemon, in the default subnet.
    for i in 1..=2 {
        wait_for(
            "the router to create network weave",
            Duration::from_secs(20),
            || {
                let out = b.docker(i, &["network", "inspect", "-f", "{{.Driver}}", "weave"]);
                (out.success() && out.stdout.trim() == "weave").then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n--- router log ---\n{}", b.bed.router(i).log_tail(30)));
    }

    // A subnet outside the allocation range: one clear line, no network.
    let out = b.docker(
        1,
        &[
            "network",
            "create",
            "-d",
            "weave",
            "--ipam-driver",
            "weave",
            "--subnet",
            "192.168.77.0/24",
            "dpbad",
        ],
    );
    assert!(!out.success(), "created: {}", out.stdout);
    let err = out.stderr.trim();
    assert!(err.contains("outside the weave allocation range"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // The entrypoint finds its interface up and addressed.
    let first = b.docker_ok(
        1,
        &[
            "run",
            "--rm",
            "--net=weave",
            IMAGE,
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
        ],
    );
    assert!(
        first
            .lines()
            .any(|l| l.contains("ethwe") && l.contains("inet 10.")),
        "{first}"
    );

    b.run(1, "w1", &[]);
    b.run(2, "w2", &[]);
    let a2 = b.address(2, "w2");
    wait_for("w1 to reach w2 by name", Duration::from_secs(20), || {
        b.pings(1, "w1", "w2", 1, 1).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n--- router 1 log ---\n{}",
            b.bed.router(1).log_tail(30)
        )
    });
    assert!(b.pings(1, "w1", "w2", 3, 1), "docker exec w1 ping -c 3 w2");
    assert!(b.pings(2, "w2", "w1", 3, 1), "docker exec w2 ping -c 3 w1");
    assert!(
        b.allocations(2).contains(&format!("{a2}/")),
        "{}",
        b.allocations(2)
    );

    // A router restart keeps w1's interface, address and name.
    let a1 = b.address(1, "w1");
    let opts = b.opts(1);
    b.bed.relaunch(1, &opts).expect("router 1 restarts");
    b.bed
        .router(1)
        .wait_established(1, Duration::from_secs(30))
        .expect("router 1 reconnects");
    wait_for(
        "w1 to reach w2 after the restart",
        Duration::from_secs(20),
        || b.pings(1, "w1", "w2", 1, 1).then_some(()),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n--- router 1 log ---\n{}",
            b.bed.router(1).log_tail(30)
        )
    });
    assert!(
        b.pings(2, "w2", "w1", 1, 1),
        "w2 -> w1 by name after the restart"
    );
    assert_eq!(b.address(1, "w1"), a1);
    assert!(
        b.allocations(1).contains(&format!("{a1}/")),
        "{}",
        b.allocations(1)
    );

    // docker rm -f: the address is released and the name goes, on every host.
    b.docker_ok(2, &["rm", "-f", "w2"]);
    wait_for(
        "w2's address and name to go",
        Duration::from_secs(15),
        || {
            (!b.allocations(2).contains(&format!("{a2}/"))
                && !b.resolves(1, "w2")
                && !b.resolves(2, "w2"))
            .then_some(())
        },
    )
    .unwrap();

    // The address again, for a container with another MAC: w1 reaches it at once (its
    // neighbour entry for the address is updated by the gratuitous ARP).
    b.run(2, "w3", &["--ip", &a2]);
    assert_eq!(b.address(2, "w3"), a2);
    let t = Instant::now();
    let ok = b.pings(1, "w1", &a2, 1, 2);
    assert!(ok, "w1 did not reach the reused address {a2} within 2 s");
    eprintln!("reused address reached in {:?}", t.elapsed());
    b.docker_ok(2, &["rm", "-f", "w3"]);
    b.docker_ok(1, &["rm", "-f", "w1"]);
    for i in 1..=2 {
        b.docker_ok(i, &["network", "rm", "weave"]);
    }
    for i in 1..=2 {
        let left = b.allocations(i);
        assert!(
            !left.contains("plugin:"),
            "host {i} keeps plugin addresses: {left}"
        );
    }
}

/// The image of `cargo xtask docker-image` (the static binary named by
/// `WEAVE_ROUTER_STATIC_BIN`, `FROM scratch`) runs the router as the README shows it:
/// `--net=host --pid=host` and (nearly) `--privileged` on a host's daemon: it comes up, sees
/// the daemon, and stops cleanly.
#[test]
fn the_static_router_image_launches_a_router() {
    if !require_root("the_static_router_image_launches_a_router") {
        return;
    }
    let Some(bin) = std::env::var_os("WEAVE_ROUTER_STATIC_BIN") else {
        weave_tests::skip(
            "WEAVE_ROUTER_STATIC_BIN is not set (a static build; `cargo xtask test` makes one)",
        );
        return;
    };
    if let Err(why) = docker::available() {
        weave_tests::skip(&format!("{why} (cargo xtask setup installs it)"));
        return;
    }
    // Holds the host namespace the daemon runs in.
    let bed = TestBed::new("dpimg", 1).expect("test bed");
    let d = DockerHost::start(bed.host(1).ns.name(), &format!("{}-dk1", bed.prefix()))
        .expect("dockerd starts");
    let out = d
        .build_router_image(std::path::Path::new(&bin), "weave-router:test")
        .unwrap();
    assert!(out.success(), "docker build: {}", out.stderr);
    let state = d.dir().join("state");
    let run = d.dir().join("wrrun");
    for p in [&state, &run] {
        std::fs::create_dir_all(p).unwrap();
    }
    let vol = |a: &std::path::Path, b: &str| format!("{}:{b}", a.display());
    let sock = vol(&d.socket(), "/var/run/docker.sock");
    let state_v = vol(&state, "/var/lib/weave-router");
    let run_v = vol(&run, "/run/weave-router");
    let out = d
        .docker(&[
            "run",
            "-d",
            "--name",
            "weave-router",
            "--net=host",
            "--pid=host",
            // --privileged, short of what this machine's bounding set lacks (runc fails to
            // apply a capability it does not have).
            "--cap-add",
            "ALL",
            "--cap-drop",
            "SYS_RESOURCE",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "-v",
            "/sys/fs/bpf:/sys/fs/bpf",
            "-v",
            &sock,
            "-v",
            &state_v,
            "-v",
            &run_v,
            "weave-router:test",
            "launch",
            "--foreground",
            "--iface",
            "eth0",
        ])
        .unwrap();
    assert!(out.success(), "docker run weave-router: {}", out.stderr);
    // Stopped (`weave-router stop`: it takes its programs and pins away) even when a check fails.
    let _stop = StopOnDrop(&d);
    let ready = wait_for(
        "the router in the image to answer",
        Duration::from_secs(30),
        || {
            let o = d
                .docker(&["exec", "weave-router", "/weave-router", "status"])
                .ok()?;
            o.success().then_some(o.stdout)
        },
    );
    let logs = || {
        d.docker(&["logs", "weave-router"])
            .map(|o| o.stderr)
            .unwrap_or_default()
    };
    let status = ready.unwrap_or_else(|e| panic!("{e}\n--- logs ---\n{}", logs()));
    assert!(status.contains("DefaultSubnet"), "{status}");
    wait_for(
        "the router to reach the daemon",
        Duration::from_secs(15),
        || {
            logs()
                .contains("Docker at unix:///var/run/docker.sock: connected")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n--- logs ---\n{}", logs()));
    // `expose` from the image, which has no nft: the masquerading goes over netlink.
    let exposed = d
        .docker(&["exec", "weave-router", "/weave-router", "expose"])
        .unwrap();
    assert!(exposed.success(), "expose in the image: {}", exposed.stderr);
    let table = bed
        .host(1)
        .ns
        .check(&["nft", "list", "table", "ip", "weave-router"])
        .expect("the masquerading table");
    assert!(table.contains("masquerade"), "{table}");
    let out = d.docker(&["stop", "-t", "10", "weave-router"]).unwrap();
    assert!(out.success(), "{}", out.stderr);
    let logs = logs();
    assert!(logs.contains("stopping"), "{logs}");
}

struct StopOnDrop<'a>(&'a DockerHost);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        // A full stop first: `docker stop` (SIGTERM) would leave the data path pinned.
        let _ = self
            .0
            .docker(&["exec", "weave-router", "/weave-router", "stop"]);
        let _ = self.0.docker(&["stop", "-t", "10", "weave-router"]);
    }
}
