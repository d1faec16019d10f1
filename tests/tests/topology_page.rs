//! Observability over three real routers with a password, trusted subnets, the sleeve and
//! IP allocation in use: `/metrics` passes `promtool check metrics` and carries Weave's
//! families; the topology page (`GET /`), loaded by a real headless Chromium inside a host's
//! namespace, shows the peers (a nickname with markup in it as text), the connections with
//! their path, encryption and MTU, the traffic and the containers with their names, and marks
//! a router that stops as gone. Text with markup in it (a container known by a namespace path
//! with `<b>x</b>` in it) is shown as text. (A nickname with markup cannot be given to a
//! router of ours — `--nickname` refuses it — but peers' nicknames are not checked, and the
//! page writes every text from the report the same way.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weave_tests::{host_addr, probe, require_root, skip, LaunchOpts, TestBed};

/// Text a careless page would turn into markup.
const MARKUP: &str = "<b>x</b>";

/// A second path of a container's namespace, with markup in it; unmounted when dropped.
struct MarkupPath(PathBuf);

impl MarkupPath {
    fn bind(prefix: &str, netns: &Path) -> Self {
        let path = PathBuf::from(format!("/run/{prefix}-{MARKUP}"));
        std::fs::create_dir_all(path.parent().unwrap()).expect("directory of the path");
        std::fs::write(&path, b"").expect("mount point");
        let out = std::process::Command::new("mount")
            .arg("--bind")
            .arg(netns)
            .arg(&path)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mount --bind: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(path)
    }
}

impl Drop for MarkupPath {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).output();
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// host1 and host2 trust each other (VXLAN in the clear); host3 is reached over the
/// encrypted sleeve. Addresses come from IPAM.
fn launch(bed: &mut TestBed) {
    let trusted = format!("{}/32,{}/32", host_addr(1), host_addr(2));
    let common = [
        "--password",
        "page secret",
        "--trusted-subnets",
        &trusted,
        "--ipalloc-range",
        "10.2.0.0/16",
        "--ipalloc-default-subnet",
        "10.2.1.0/24",
        "--xdp",
        "off",
    ];
    for i in 1..=3 {
        let opts = LaunchOpts {
            peers: (1..i).map(|j| host_addr(j).to_string()).collect(),
            extra: common.iter().map(|s| s.to_string()).collect(),
        };
        bed.launch(i, &opts)
            .unwrap_or_else(|e| panic!("launch host{i}: {e}"));
    }
    for i in 1..=3 {
        bed.router(i)
            .wait_established(2, Duration::from_secs(40))
            .unwrap_or_else(|e| panic!("host{i}: {e}"));
    }
}

/// A container on `host` with an address from IPAM and the DNS name `name`.
fn attach(bed: &mut TestBed, host: usize, name: &str) -> usize {
    let c = bed.add_container(host, name).expect("container");
    let path = bed.container(c).ns.path();
    attach_existing(bed, host, c, name, &path);
    c
}

/// Attaches container `c` through its namespace's `path`, with an address from IPAM and the
/// DNS name `name`.
fn attach_existing(bed: &mut TestBed, host: usize, c: usize, name: &str, path: &Path) {
    let out = bed
        .router(host)
        .check(&[
            "attach",
            "net:default",
            "--netns",
            &path.to_string_lossy(),
            "--hostname",
            name,
        ])
        .unwrap_or_else(|e| panic!("attach {name} on host{host}: {e}"));
    let addr = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no address in {out:?}"));
    bed.set_container_cidr(c, addr);
}

/// Where the browser's profile and the screenshots go.
fn artefacts() -> PathBuf {
    let dir = weave_tests::router::workspace_root()
        .join("target")
        .join("topology-page");
    std::fs::create_dir_all(&dir).expect("target/topology-page");
    dir
}

/// Headless Chromium in host `i`'s namespace on the router's page, with `args` (after the
/// page has run its script for a few seconds of virtual time): what it printed.
fn chromium(bed: &TestBed, i: usize, profile: &Path, args: &[&str]) -> String {
    let profile = format!("--user-data-dir={}", profile.display());
    let mut argv = vec![
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        &profile,
        "--virtual-time-budget=6000",
        "--window-size=1280,1100",
    ];
    argv.extend_from_slice(args);
    argv.push("http://127.0.0.1:6784/");
    let out = bed
        .host(i)
        .ns
        .run_timeout(&argv, Duration::from_secs(90))
        .expect("chromium runs");
    assert!(
        out.success(),
        "chromium failed: {}\n{}",
        out.stderr,
        out.stdout
    );
    out.stdout
}

/// The rendered DOM (after the script ran).
fn dom(bed: &TestBed, i: usize, profile: &Path) -> String {
    let dom = chromium(bed, i, profile, &["--dump-dom"]);
    assert!(
        dom.contains("data-state=\"live\""),
        "the page did not come alive:\n{dom}"
    );
    dom
}

/// Screenshot of the page into `path`; checks it is a PNG of some size.
fn screenshot(bed: &TestBed, i: usize, profile: &Path, path: &Path) {
    let _ = std::fs::remove_file(path);
    let arg = format!("--screenshot={}", path.display());
    chromium(bed, i, profile, &[&arg]);
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} is not a PNG of the page ({} bytes)",
        path.display(),
        png.len()
    );
    println!("screenshot: {} ({} bytes)", path.display(), png.len());
}

/// The `<tr>` element of the page's table row for `peer` in the table of class `class`.
fn row<'a>(dom: &'a str, class: &str, peer: &str) -> Option<&'a str> {
    let start = dom.find(&format!("<tr class=\"{class}\" data-peer=\"{peer}\""))?;
    let end = dom[start..].find("</tr>")? + start;
    Some(&dom[start..end])
}

#[test]
fn metrics_pass_promtool_and_the_topology_page_shows_the_mesh_in_a_browser() {
    if !require_root("metrics_pass_promtool_and_the_topology_page_shows_the_mesh_in_a_browser") {
        return;
    }
    if weave_tests::cmd::which("chromium").is_none() {
        skip("chromium is not installed (cargo xtask setup installs it)");
        return;
    }
    let mut bed = TestBed::new("tp", 3).expect("test bed");
    launch(&mut bed);
    let names: Vec<String> = (1..=3).map(|i| bed.peer_name(i)).collect();
    // host1's container is attached through a path with markup in it.
    let c1 = bed.add_container(1, "web1").expect("container");
    let markup_path = MarkupPath::bind(bed.prefix(), &bed.container(c1).ns.path());
    attach_existing(&mut bed, 1, c1, "web1", &markup_path.0);
    let c2 = attach(&mut bed, 2, "web2");
    let c3 = attach(&mut bed, 3, "web3");
    // Traffic over the fast path (host1 ↔ host2) and the sleeve (host1 ↔ host3).
    for to in [c2, c3] {
        let dst = bed.container(to).ip().expect("address").to_string();
        bed.container(c1)
            .wait_ping(&dst, Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("ping {dst}: {e}"));
    }

    // /metrics with a password, trusted subnets, the sleeve and IPAM in use.
    let m = bed.router(1).metrics().expect("GET /metrics");
    if let Err(said) = probe::promtool_check_metrics(&m) {
        panic!("promtool check metrics:\n{said}\n{m}");
    }
    let value = |series: &str| {
        m.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {series} in\n{m}"))
    };
    assert_eq!(
        value("weave_connections{state=\"established\",type=\"fastdp\",encryption=\"\"}"),
        1.0
    );
    assert_eq!(
        value("weave_connections{state=\"established\",type=\"sleeve\",encryption=\"yes\"}"),
        1.0
    );
    assert_eq!(value("weave_peers"), 3.0);
    assert_eq!(value("weave_ips{state=\"local-used\"}"), 1.0);
    assert_eq!(value("weave_max_ips"), 65536.0);
    assert_eq!(value("weave_ipam_unreachable_count"), 0.0);
    assert_eq!(value("weave_dns_entries"), 1.0);
    assert!(value("weave_flows") >= 1.0, "{m}");
    assert!(
        probe::metric_sum(&m, |s| s.name == "weave_sleeve_datagrams_total") > 0.0,
        "{m}"
    );
    assert!(
        probe::metric_sum(&m, |s| {
            s.name == "weave_peer_packets_total"
                && s.labels.contains(&format!("peer=\"{}\"", names[1]))
                && s.labels.contains("nickname=\"host2\"")
                && s.labels.contains("direction=\"sent\"")
        }) > 0.0,
        "{m}"
    );

    // The page, in a real browser.
    let dir = artefacts();
    let profile = dir.join(format!("{}-profile", bed.prefix()));
    let _ = std::fs::remove_dir_all(&profile);
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        let page = dom(&bed, 1, &profile);
        let complete = names.iter().all(|n| row(&page, "peer", n).is_some())
            && page.matches("<tr class=\"container\"").count() == 1;
        if complete || Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    for (i, name) in names.iter().enumerate() {
        let r =
            row(&page, "peer", name).unwrap_or_else(|| panic!("host{} missing:\n{page}", i + 1));
        assert!(r.contains("state-up"), "{r}");
        assert!(
            page.contains(&format!("<g class=\"peer\" data-peer=\"{name}\"")),
            "no drawing of host{}:\n{page}",
            i + 1
        );
    }
    // The container's path is text, not markup.
    assert!(page.contains("-&lt;b&gt;x&lt;/b&gt;</td>"), "{page}");
    assert!(!page.contains(MARKUP), "markup from the report:\n{page}");
    // Connections: host2 over the fast path in the clear (trusted), with traffic and a
    // verified MTU or the one containers get; host3 over the encrypted sleeve.
    let to2 = row(&page, "connection", &names[1]).unwrap_or_else(|| panic!("{page}"));
    for want in ["established", "fastdp", "unencrypted", " pkts"] {
        assert!(to2.contains(want), "host2's connection lacks {want}: {to2}");
    }
    let to3 = row(&page, "connection", &names[2]).unwrap_or_else(|| panic!("{page}"));
    for want in ["established", "sleeve", ">encrypted<", "(host3)"] {
        assert!(to3.contains(want), "host3's connection lacks {want}: {to3}");
    }
    let mtu = regex_free_number_after(to2, "unencrypted</td><td>");
    assert!((1000..=1500).contains(&mtu), "MTU {mtu} in {to2}");
    // The container with its name and address.
    let c1_addr = bed.container(c1).ip().expect("address").to_string();
    assert!(page.contains("web1.weave.local"), "{page}");
    assert!(page.contains(&c1_addr), "{page}");
    screenshot(&bed, 1, &profile, &dir.join("three-routers.png"));

    // host3's router stops: the page marks it gone, and keeps working.
    bed.router_mut(3).stop().expect("stop host3");
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        let page = dom(&bed, 1, &profile);
        if row(&page, "peer gone", &names[2]).is_some() || Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let gone = row(&page, "peer gone", &names[2])
        .unwrap_or_else(|| panic!("host3 not shown as gone:\n{page}"));
    assert!(gone.contains("state-gone"), "{gone}");
    assert!(page.contains(">host3 (gone)</text>"), "{page}");
    assert!(row(&page, "peer", &names[1]).is_some_and(|r| r.contains("state-up")));
    assert!(row(&page, "connection", &names[2]).is_none(), "{page}");
    screenshot(&bed, 1, &profile, &dir.join("one-router-gone.png"));
}

/// The decimal number at the start of what follows `after` in `text`.
fn regex_free_number_after(text: &str, after: &str) -> u32 {
    let rest = text
        .split_once(after)
        .unwrap_or_else(|| panic!("no {after:?} in {text}"))
        .1;
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number after {after:?} in {text}"))
}
