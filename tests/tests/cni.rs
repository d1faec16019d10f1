//! The `weave-net` CNI plugin: driven directly as the spec says a runtime drives it (the
//! edge cases), and by a real runtime, podman with its CNI backend, on two simulated hosts.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use weave_tests::podman::Podman;
use weave_tests::{cmd, require_root, require_tools, Netns, Output, TestBed};

const CONF: &str = r#"{"cniVersion":"1.0.0","name":"weave","type":"weave-net"}"#;

/// Runs the installed plugin inside `host` with the `CNI_*` variables and `stdin`.
fn plugin(host: &Netns, bin: &Path, env: &[(&str, &str)], stdin: &str) -> Output {
    let conf = std::env::temp_dir().join(format!("weave-cni-conf-{}", std::process::id()));
    std::fs::write(&conf, stdin).unwrap();
    let mut argv: Vec<String> = vec![
        "env".into(),
        "-i".into(),
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
    ];
    argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.extend([
        "sh".into(),
        "-c".into(),
        format!("exec {}/weave-net < {}", bin.display(), conf.display()),
    ]);
    host.run_timeout(&argv, Duration::from_secs(60))
        .expect("the plugin runs")
}

fn json(out: &Output) -> Value {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\n{}", out.stdout, out.stderr))
}

/// An error per the spec: non-zero exit, `code` and a `msg` containing `text` on stdout.
fn assert_error(out: &Output, code: u64, text: &str) {
    assert!(!out.success(), "succeeded:\n{}", out.stdout);
    let e = json(out);
    assert_eq!(e["code"].as_u64(), Some(code), "{e}");
    assert_eq!(e["cniVersion"], "1.0.0", "{e}");
    assert!(
        e["msg"].as_str().unwrap_or_default().contains(text),
        "wanted {text:?} in {e}"
    );
}

fn env<'a>(command: &'a str, id: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
}

#[test]
fn cni_plugin_answers_per_spec() {
    if !require_root("cni_plugin_answers_per_spec") {
        return;
    }
    let t = Instant::now();
    let mut bed = TestBed::new("cni", 1).expect("test bed");
    bed.launch_mesh(&[]).expect("router up");
    let host = Netns::borrow(bed.host(1).ns.name());
    let dir = weave_tests::bed::state_base(bed.prefix()).join("cni");
    let bin = dir.join("bin");
    let router_bin = weave_tests::router::require_binary().unwrap();
    cmd::check(&[
        router_bin.to_str().unwrap(),
        "setup-cni",
        "--bin-dir",
        bin.to_str().unwrap(),
        "--conf-dir",
        dir.join("net.d").to_str().unwrap(),
    ])
    .expect("setup-cni");
    let c1 = Netns::create(&format!("{}-c1", bed.prefix())).expect("netns");
    let c1_path = c1.path().display().to_string();
    let ps = || bed.router(1).check(&["ps"]).unwrap();
    let owns = |id: &str| bed.router(1).http_get(&format!("/ip/{id}")).unwrap();

    // VERSION.
    let out = plugin(
        &host,
        &bin,
        &[("CNI_COMMAND", "VERSION")],
        r#"{"cniVersion":"1.0.0"}"#,
    );
    assert!(out.success(), "{}", out.stderr);
    assert!(json(&out)["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&"1.0.0".into()));

    // Bad input: nothing allocated, nothing attached.
    let out = plugin(&host, &bin, &env("ADD", "c1", &c1_path), "{not json");
    assert_error(&out, 6, "not valid JSON");
    let out = plugin(
        &host,
        &bin,
        &env("ADD", "c1", "/run/netns/no-such-ns"),
        CONF,
    );
    assert_error(&out, 4, "CNI_NETNS /run/netns/no-such-ns does not exist");
    let mut outside = env("ADD", "c1", &c1_path);
    outside.push(("CNI_ARGS", "IgnoreUnknown=1;IP=10.9.9.9/24"));
    let out = plugin(&host, &bin, &outside, CONF);
    assert_error(&out, 7, "outside the allocation range 10.32.0.0/12");
    let bad_ipam =
        r#"{"cniVersion":"1.0.0","name":"weave","type":"weave-net","ipam":{"type":"host-local"}}"#;
    assert_error(
        &plugin(&host, &bin, &env("ADD", "c1", &c1_path), bad_ipam),
        7,
        "host-local",
    );
    assert_eq!(ps(), "", "a refused ADD attached something");
    assert_eq!(owns("c1"), "", "a refused ADD allocated something");

    // ADD: eth0 in the namespace with the address of the result, weaveDNS as resolver.
    let out = plugin(&host, &bin, &env("ADD", "c1", &c1_path), CONF);
    assert!(out.success(), "ADD: {}\n{}", out.stdout, out.stderr);
    let result = json(&out);
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][0]["name"], "eth0");
    assert_eq!(result["interfaces"][0]["sandbox"], c1_path.as_str());
    let address = result["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(address.starts_with("10.32."), "{result}");
    assert_eq!(result["dns"]["search"][0], "weave.local", "{result}");
    assert_eq!(result["dns"]["nameservers"][0], "169.254.53.53", "{result}");
    assert!(c1.ip("-4 addr show dev eth0").unwrap().contains(&address));
    assert!(owns("c1").contains(&address), "{}", owns("c1"));

    // ADD twice: refused, the first attachment stays.
    let out = plugin(&host, &bin, &env("ADD", "c1", &c1_path), CONF);
    assert_error(&out, 100, "attached already");
    assert_eq!(ps().lines().count(), 1, "{}", ps());

    // CHECK against the result, then after the address was taken away by hand.
    let with_prev = |prev: &Value| {
        let mut c: Value = serde_json::from_str(CONF).unwrap();
        c["prevResult"] = prev.clone();
        c.to_string()
    };
    let out = plugin(
        &host,
        &bin,
        &env("CHECK", "c1", &c1_path),
        &with_prev(&result),
    );
    assert!(out.success(), "CHECK: {}\n{}", out.stdout, out.stderr);
    c1.ip(&format!("addr del {address} dev eth0")).unwrap();
    let out = plugin(
        &host,
        &bin,
        &env("CHECK", "c1", &c1_path),
        &with_prev(&result),
    );
    assert_error(&out, 101, &format!("lacks its address {address}"));
    let out = plugin(
        &host,
        &bin,
        &env("CHECK", "nobody", &c1_path),
        &with_prev(&result),
    );
    assert_error(&out, 3, "container nobody is not attached");

    // DEL: gone and released; again, and for a container never seen: success.
    for id in ["c1", "c1", "never-seen"] {
        let out = plugin(&host, &bin, &env("DEL", id, ""), CONF);
        assert!(
            out.success() && out.stdout.trim().is_empty(),
            "DEL {id}: {}\n{}",
            out.stdout,
            out.stderr
        );
    }
    assert_eq!(ps(), "");
    assert_eq!(owns("c1"), "");
    assert!(c1.ip("link show eth0").is_err(), "eth0 left after DEL");

    // The router down: try again later, nothing made.
    bed.router_mut(1).stop().unwrap();
    let out = plugin(&host, &bin, &env("ADD", "c1", &c1_path), CONF);
    assert_error(&out, 11, "weave-router is not running on this host");
    assert!(c1.ip("link show eth0").is_err());
    eprintln!(
        "cni_plugin_answers_per_spec: {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

/// `podman run --network weave` on two hosts: ping across, a published port through the
/// portmap chain answering from the other host and this one, `podman rm` releases the
/// address, the router down is a clear error.
#[test]
fn podman_runs_containers_on_weave() {
    if !require_root("podman_runs_containers_on_weave") {
        return;
    }
    require_tools(&["podman", "runc", "iptables", "busybox", "curl"]);
    assert!(
        Path::new(weave_tests::podman::SYSTEM_CNI_DIR)
            .join("portmap")
            .exists(),
        "no portmap: run `cargo xtask setup` (containernetworking-plugins)"
    );
    let t = Instant::now();
    let mut bed = TestBed::new("pod", 2).expect("test bed");
    bed.launch_mesh(&[]).expect("routers connect");
    let router_bin = weave_tests::router::require_binary().unwrap();
    let podman = Podman::new(
        &weave_tests::bed::state_base(bed.prefix()).join("podman"),
        &router_bin,
    )
    .expect("podman set-up");
    let (h1, h2) = (
        Netns::borrow(bed.host(1).ns.name()),
        Netns::borrow(bed.host(2).ns.name()),
    );
    let rootfs = podman.rootfs().display().to_string();
    let minute = Duration::from_secs(60);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // A web server on host1, its port 80 published as 8080.
        let out = podman
            .run(
                &h1,
                &[
                    "run",
                    "-d",
                    "--name",
                    "web",
                    "--network",
                    "weave",
                    "-p",
                    "8080:80",
                    "--rootfs",
                    &rootfs,
                    "/bin/httpd",
                    "-f",
                    "-p",
                    "80",
                    "-h",
                    "/www",
                ],
                minute,
            )
            .unwrap();
        assert!(out.success(), "podman run on host1: {}", out.stderr);
        let id = out.stdout.trim().to_string();
        let ps = bed.router(1).check(&["ps"]).unwrap();
        let line = ps
            .lines()
            .find(|l| id.starts_with(l.split_whitespace().next().unwrap_or("-")))
            .unwrap_or_else(|| panic!("web not in ps:\n{ps}"));
        let web_cidr = line.split_whitespace().nth(2).unwrap().to_string();
        let web_ip = web_cidr.split('/').next().unwrap().to_string();

        // From a container on host2: ping and HTTP across the mesh.
        let out = podman
            .run(
                &h2,
                &[
                    "run",
                    "--rm",
                    "--network",
                    "weave",
                    // busybox ping needs a raw socket; podman leaves NET_RAW out by default.
                    "--cap-add",
                    "NET_RAW",
                    "--rootfs",
                    &rootfs,
                    "/bin/sh",
                    "-c",
                    &format!(
                        "n=0; until ping -c 1 -W 1 {web_ip}; do n=$((n+1)); [ $n -ge 10 ] && exit 1; done; wget -q -O - http://{web_ip}/"
                    ),
                ],
                minute,
            )
            .unwrap();
        assert!(
            out.success() && out.stdout.contains("served through weave"),
            "host2 -> web: {}\n{}",
            out.stdout,
            out.stderr
        );
        // That container's address went with `--rm`.
        assert_eq!(
            bed.router(2).check(&["ps"]).unwrap(),
            "",
            "host2 keeps an endpoint"
        );

        // portmap ran after weave-net on its result: its DNAT to the container's address
        // is in host1's nat table.
        let nat = h1
            .run_timeout(&["iptables", "-t", "nat", "-S"], minute)
            .unwrap();
        assert!(
            nat.stdout
                .contains(&format!("--to-destination {web_ip}:80")),
            "no DNAT of portmap for {web_ip}:\n{}",
            nat.stdout
        );
        // The published port answers once host1 has an address in web's subnet (`expose`):
        // from host2's underlay address and from host1 itself, both to host1's underlay
        // address. The subnet isolation lets a container receive from its own subnet only,
        // so what the host routes in enters masqueraded to the bridge's address.
        let published = format!("http://{}:8080/", bed.host(1).addr);
        let get = |from: &Netns| {
            from.run_timeout(
                &["curl", "-s", "--max-time", "5", "--retry", "2", &published],
                minute,
            )
            .unwrap()
        };
        let exposed = bed.router(1).check(&["expose"]).expect("expose");
        for (from, ns) in [("host2", &h2), ("host1", &h1)] {
            let out = get(ns);
            assert!(
                out.success() && out.stdout.contains("served through weave"),
                "{from} -> {published}: {}\n{}\n(exposed {exposed})",
                out.stdout,
                out.stderr
            );
        }

        // podman rm: the endpoint goes and the address is released.
        let out = podman
            .run(&h1, &["rm", "-f", "-t", "0", "web"], minute)
            .unwrap();
        assert!(out.success(), "podman rm: {}", out.stderr);
        assert_eq!(bed.router(1).check(&["ps"]).unwrap(), "");
        assert_eq!(bed.router(1).http_get(&format!("/ip/{id}")).unwrap(), "");

        // The router of host2 down: podman says why, nothing is left half made.
        bed.router_mut(2).stop().unwrap();
        let out = podman
            .run(
                &h2,
                &[
                    "run",
                    "--rm",
                    "--network",
                    "weave",
                    "--rootfs",
                    &rootfs,
                    "/bin/true",
                ],
                minute,
            )
            .unwrap();
        assert!(!out.success(), "podman run without a router succeeded");
        assert!(
            out.stderr
                .contains("weave-router is not running on this host"),
            "{}",
            out.stderr
        );
        let links = h2.ip("-o link show").unwrap();
        let container_veths = links
            .lines()
            .filter(|l| l.contains(": vethwe") && !l.contains(": vethwe-"))
            .count();
        assert_eq!(container_veths, 0, "a container veth is left:\n{links}");
        let out = podman.run(&h2, &["ps", "-a", "-q"], minute).unwrap();
        assert_eq!(out.stdout.trim(), "", "podman keeps a container");
    }));
    podman.remove_all(&h1);
    podman.remove_all(&h2);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    eprintln!(
        "podman_runs_containers_on_weave: {:.1}s",
        t.elapsed().as_secs_f64()
    );
}
