//! Packaging: the systemd unit (checked by `systemd-analyze verify`; no systemd runs as PID 1
//! here, so the unit is never started by one), the router's sd_notify readiness as a
//! `Type=notify` unit would see it, the .deb (`dpkg-deb --info/--contents`, unpacked into a
//! scratch root and run from there), shell completions sourced by bash, and `expose`'s
//! masquerading done without an `nft` binary anywhere on the router's PATH.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weave_tests::router::{binary, cli_in, workspace_root};
use weave_tests::{cmd, host_addr, require_root, require_tools, skip, TestBed};

/// The unit as shipped, checked with its `ExecStart` pointing at `bin` (verify insists that
/// the program exists). Warnings count as failures: verify reports a misspelt value
/// (`Type=notyfy`) only as a warning.
fn verify_unit(unit_text: &str, bin: &Path, dir: &Path) -> cmd::Output {
    let text = unit_text.replace("/usr/bin/weave-router", &bin.to_string_lossy());
    let unit = dir.join("weave-router.service");
    std::fs::write(&unit, text).unwrap();
    let unit = unit.to_string_lossy().to_string();
    cmd::run(&["systemd-analyze", "verify", "--man=no", &unit]).expect("systemd-analyze")
}

#[test]
fn the_unit_verifies_and_a_broken_one_does_not() {
    require_tools(&["systemd-analyze"]);
    let dir = scratch("unit");
    let text =
        std::fs::read_to_string(workspace_root().join("contrib/systemd/weave-router.service"))
            .unwrap();
    let out = verify_unit(&text, &binary(), &dir);
    assert!(
        out.success() && out.stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{}",
        out.status,
        out.stderr
    );
    for needed in [
        "Type=notify",
        "--foreground",
        "Restart=on-failure",
        "StateDirectory=weave-router",
        "EnvironmentFile=-/etc/default/weave-router",
        "CAP_BPF",
    ] {
        assert!(text.contains(needed), "the unit lacks {needed}");
    }
    // The check can fail: a misspelt service type is reported.
    let broken = verify_unit(&text.replace("Type=notify", "Type=notyfy"), &binary(), &dir);
    assert!(
        broken.stderr.contains("notyfy"),
        "verify did not notice: {}",
        broken.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completions_are_sourced_by_bash_and_the_man_page_renders() {
    let bin = binary();
    let b = bin.to_string_lossy();
    let out = cmd::run(&[
        "bash",
        "-c",
        &format!("source <({b} completions bash) && complete -p weave-router"),
    ])
    .unwrap();
    assert!(
        out.success() && out.stdout.contains("weave-router"),
        "bash: {}\n{}",
        out.stdout,
        out.stderr
    );
    // The function completes subcommands from the CLI definition.
    let words = cmd::run(&[
        "bash",
        "-c",
        &format!(
            "source <({b} completions bash); COMP_WORDS=(weave-router exp); COMP_CWORD=1; \
             COMP_LINE='weave-router exp'; COMP_POINT=${{#COMP_LINE}}; \
             f=$(complete -p weave-router | sed -E 's/.*-F ([^ ]+).*/\\1/'); \
             $f weave-router exp weave-router; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        ),
    ])
    .unwrap();
    assert!(
        words.stdout.lines().any(|l| l == "expose"),
        "completing `exp`: {:?} {}",
        words.stdout,
        words.stderr
    );
    for shell in ["zsh", "fish"] {
        let out = cmd::run(&[b.as_ref(), "completions", shell]).unwrap();
        assert!(out.success() && out.stdout.contains("launch"), "{shell}");
    }
    let bad = cmd::run(&[b.as_ref(), "completions", "tcsh"]).unwrap();
    assert!(
        !bad.success() && bad.stderr.lines().count() == 1,
        "{}",
        bad.stderr
    );
    let man = cmd::run(&[b.as_ref(), "man"]).unwrap();
    assert!(
        man.success() && man.stdout.contains(".TH weave-router") && man.stdout.contains("expose"),
        "{}",
        &man.stdout[..man.stdout.len().min(300)]
    );
}

#[test]
fn the_deb_holds_the_router_and_runs_from_a_scratch_root() {
    let Some(deb) = std::env::var_os("WEAVE_DEB").map(PathBuf::from) else {
        skip("WEAVE_DEB is not set (`cargo xtask deb` makes one; `cargo xtask test` sets it)");
        return;
    };
    let deb_s = deb.to_string_lossy().to_string();
    let info = cmd::check(&["dpkg-deb", "--info", &deb_s]).expect("dpkg-deb --info");
    for field in [
        "Package: weave-router",
        "Architecture: ",
        "Description: ",
        "conffiles",
        "postinst",
    ] {
        assert!(info.contains(field), "{field} missing:\n{info}");
    }
    let contents = cmd::check(&["dpkg-deb", "--contents", &deb_s]).expect("dpkg-deb --contents");
    for path in [
        "./usr/bin/weave-router",
        "./lib/systemd/system/weave-router.service",
        "./etc/default/weave-router",
        "./usr/share/bash-completion/completions/weave-router",
        "./usr/share/zsh/vendor-completions/_weave-router",
        "./usr/share/fish/vendor_completions.d/weave-router.fish",
        "./usr/share/man/man1/weave-router.1.gz",
        "./usr/share/doc/weave-router/README.md",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} missing:\n{contents}"
        );
    }
    // Owned by root, the options file (it may hold the password) readable by root only.
    assert!(contents.lines().any(
        |l| l.starts_with("-rw------- root/root") && l.ends_with("./etc/default/weave-router")
    ));

    let root = scratch("deb");
    let root_s = root.to_string_lossy().to_string();
    cmd::check(&["dpkg", "-x", &deb_s, &root_s]).expect("dpkg -x");
    let bin = root.join("usr/bin/weave-router");
    let version = cmd::check(&[bin.to_string_lossy().as_ref(), "--version"]).expect("--version");
    assert!(version.starts_with("weave-router "), "{version}");
    // A static binary: it needs nothing from the host's libraries.
    let file = cmd::run(&["ldd", bin.to_string_lossy().as_ref()]).unwrap();
    assert!(
        !file.stdout.contains("=>"),
        "dynamic libraries needed: {}",
        file.stdout
    );
    // The installed completion file works, and the installed unit verifies.
    let comp = root.join("usr/share/bash-completion/completions/weave-router");
    let out = cmd::run(&[
        "bash",
        "-c",
        &format!("source {} && complete -p weave-router", comp.display()),
    ])
    .unwrap();
    assert!(out.success(), "{}", out.stderr);
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/weave-router.service")).unwrap();
    let check = verify_unit(&unit, &bin, &root);
    assert!(
        check.success() && check.stderr.trim().is_empty(),
        "{}",
        check.stderr
    );
    for script in ["postinst", "prerm", "postrm"] {
        let ctl = scratch(&format!("ctl-{script}"));
        cmd::check(&["dpkg-deb", "-e", &deb_s, ctl.to_string_lossy().as_ref()]).unwrap();
        let path = ctl.join(script);
        cmd::check(&["sh", "-n", path.to_string_lossy().as_ref()])
            .unwrap_or_else(|e| panic!("{script}: {e}"));
        let _ = std::fs::remove_dir_all(&ctl);
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// The next datagram on `socket`, if one comes within `timeout`.
fn next_message(socket: &UnixDatagram, timeout: Duration) -> Option<String> {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn readiness_is_notified_once_the_api_answers_and_stopping_at_the_end() {
    if !require_root("readiness_is_notified_once_the_api_answers_and_stopping_at_the_end") {
        return;
    }
    let bed = TestBed::new("sd", 1).expect("test bed");
    let netns = format!("{}-h1", bed.prefix());
    let dir = scratch("notify");
    // A socket file: an abstract socket would belong to the test's network namespace, not
    // the router's (the unit tests cover abstract names).
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let bin = binary();
    let state = bed.state_dir(1);
    let started = Instant::now();
    let mut router = bed
        .host(1)
        .ns
        .spawn(&[
            "env".to_string(),
            format!("NOTIFY_SOCKET={}", path.display()),
            "WATCHDOG_USEC=600000".to_string(),
            bin.to_string_lossy().to_string(),
            "launch".into(),
            "--foreground".into(),
            "--state-dir".into(),
            state.to_string_lossy().to_string(),
            "--name".into(),
            bed.peer_name(1),
            "--iface".into(),
            "eth0".into(),
            "--no-docker".into(),
            "--xdp".into(),
            "off".into(),
        ])
        .expect("router starts");
    let ready = next_message(&socket, Duration::from_secs(90)).unwrap_or_else(|| {
        panic!("no READY=1 within 90 s; log:\n{}", router.output().1);
    });
    let waited = started.elapsed();
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(ready.contains("STATUS="), "{ready:?}");
    // At that moment the API answers as ready and the data path is in place.
    let status = cli_in(&netns, &["status"]).expect("status");
    assert!(
        status.success() && !status.stdout.contains("still starting"),
        "status right after READY=1: {}{}",
        status.stdout,
        status.stderr
    );
    let links = bed.host(1).ns.ip("-o link show").unwrap();
    assert!(
        links.contains(" weave:") && links.contains("vethwe-bridge"),
        "{links}"
    );
    // WatchdogSec=: kept alive at half the interval.
    let beat = next_message(&socket, Duration::from_secs(2)).expect("a watchdog message");
    assert_eq!(beat, "WATCHDOG=1\n");
    assert!(cli_in(&netns, &["stop"]).unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stopping = false;
    while let Some(m) = next_message(&socket, deadline.saturating_duration_since(Instant::now())) {
        if m.starts_with("STOPPING=1\n") {
            stopping = true;
            break;
        }
        assert_eq!(m, "WATCHDOG=1\n", "unexpected message");
    }
    assert!(stopping, "no STOPPING=1; log:\n{}", router.output().1);
    while router.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !router.running(),
        "the router did not exit after STOPPING=1"
    );
    println!("READY=1 after {:.1}s", waited.as_secs_f64());
    drop(bed);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn expose_masquerades_without_an_nft_binary() {
    if !require_root("expose_masquerades_without_an_nft_binary") {
        return;
    }
    require_tools(&["nft", "ping"]);
    let bed = TestBed::new("nx", 2).expect("test bed");
    // The router (and the CLI that starts it) see a PATH with no nft on it.
    let bin = binary();
    let empty = scratch("nopath");
    let path_env = format!("PATH={}", empty.display());
    let launch = bed
        .host(1)
        .ns
        .run_timeout(
            &[
                "env".to_string(),
                path_env.clone(),
                bin.to_string_lossy().to_string(),
                "launch".into(),
                "--state-dir".into(),
                bed.state_dir(1).to_string_lossy().to_string(),
                "--name".into(),
                bed.peer_name(1),
                "--iface".into(),
                "eth0".into(),
                "--no-docker".into(),
                "--xdp".into(),
                "off".into(),
                "--ipalloc-range".into(),
                "10.2.0.0/16".into(),
                "--ipalloc-default-subnet".into(),
                "10.2.1.0/24".into(),
            ],
            Duration::from_secs(90),
        )
        .expect("launch");
    let netns = format!("{}-h1", bed.prefix());
    let _router = StopOnDrop(netns.clone());
    assert!(launch.success(), "launch: {}", launch.stderr);
    let exposed = cli_in(&netns, &["expose"]).expect("expose");
    assert!(exposed.success(), "expose: {}", exposed.stderr);
    let host_ip = exposed.stdout.trim().split('/').next().unwrap().to_string();
    let h1 = &bed.host(1).ns;
    let table = h1
        .check(&["nft", "list", "table", "ip", "weave-router"])
        .expect("the table exists");
    assert!(
        table.contains(
            "ip saddr 10.2.1.0/24 ip daddr != 10.2.1.0/24 oifname != \"weave\" masquerade"
        ) && table.contains("type nat hook postrouting priority srcnat; policy accept;"),
        "{table}"
    );
    // Host 2 has no route back to 10.2.1.0/24: a ping from the exposed address comes back
    // only because it left masqueraded as host 1.
    let host2 = host_addr(2).to_string();
    let ping = |count: &str| {
        h1.run(&["ping", "-c", count, "-W", "1", "-I", &host_ip, &host2])
            .unwrap()
    };
    assert!(ping("2").success(), "masqueraded ping fails");
    h1.check(&["nft", "delete", "table", "ip", "weave-router"])
        .unwrap();
    assert!(
        !ping("1").success(),
        "the ping works without the rule: the test proves nothing"
    );
    // Hide writes the (empty) table again; a new expose puts the rule back.
    assert!(cli_in(&netns, &["hide"]).unwrap().success());
    let table = h1
        .check(&["nft", "list", "table", "ip", "weave-router"])
        .expect("hide writes the table");
    assert!(!table.contains("masquerade"), "{table}");
    let again = cli_in(&netns, &["expose"]).unwrap();
    assert!(again.success(), "{}", again.stderr);
    let host_ip = again.stdout.trim().split('/').next().unwrap().to_string();
    let back = h1
        .run(&["ping", "-c", "2", "-W", "1", "-I", &host_ip, &host2])
        .unwrap();
    assert!(back.success(), "masquerading not back after expose");
    let log =
        std::fs::read_to_string(bed.state_dir(1).join("weave-router.log")).unwrap_or_default();
    assert!(!log.contains("nft"), "the router mentions nft:\n{log}");
    drop(_router);
    let _ = std::fs::remove_dir_all(&empty);
}

/// Stops the router of a namespace (launched outside the bed's own helpers) when dropped,
/// also when the test fails.
struct StopOnDrop(String);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = cli_in(&self.0, &["stop"]);
        weave_tests::router::kill_routers(&self.0);
    }
}

/// An empty directory of this test's own.
fn scratch(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "weave-pkg-{}-{what}-{}",
        std::env::var("WEAVE_TEST_PREFIX").unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
