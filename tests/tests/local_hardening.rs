//! What a local user or a web page on the host can do to a router, and what the host's own
//! trouble (a corrupt state file, a full disk) does to it: with real curl, real users
//! (setpriv), a real tmpfs.

use std::time::Duration;

use weave_tests::{require_root, require_tools, router, LaunchOpts, Output, TestBed};

/// The API's unix socket inside a host (abstract: no leading `@` for curl).
const SOCKET: &str = "weave-router/127.0.0.1:6784";
const NOBODY: &str = "65534";

/// `argv` run inside host `i`'s namespace as user nobody.
fn as_nobody(bed: &TestBed, i: usize, argv: &[&str]) -> Output {
    let mut v = vec![
        "setpriv",
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
    ];
    v.extend_from_slice(argv);
    bed.host(i).ns.run(&v).expect("runs")
}

/// curl inside host `i` (as root unless `nobody`): (status code, body).
fn curl(bed: &TestBed, i: usize, nobody: bool, args: &[&str]) -> (u16, String) {
    let mut v = vec!["curl", "-s", "-w", "\n%{http_code}", "--max-time", "10"];
    v.extend_from_slice(args);
    let out = if nobody {
        as_nobody(bed, i, &v)
    } else {
        bed.host(i).ns.run(&v).expect("curl runs")
    };
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn daemon_pid(bed: &TestBed, i: usize) -> i32 {
    let pids = router::router_pids(bed.router(i).netns());
    assert_eq!(pids.len(), 1, "one router process: {pids:?}");
    pids[0]
}

#[test]
fn api_changes_need_the_routers_user_and_refuse_web_pages() {
    if !require_root("api_changes_need_the_routers_user_and_refuse_web_pages") {
        return;
    }
    require_tools(&["curl", "setpriv"]);
    let mut bed = TestBed::new("lapi", 1).expect("test bed");
    bed.launch(1, &Default::default()).expect("router");
    let c = bed.add_container(1, "c1").expect("container");
    let cpath = bed.container(c).ns.path().to_string_lossy().into_owned();
    let pid = daemon_pid(&bed, 1);
    let bin = router::binary().to_string_lossy().into_owned();

    // Another user: the CLI is refused in one line, naming the uid.
    let o = as_nobody(&bed, 1, &[&bin, "stop"]);
    assert!(!o.success(), "stop as nobody succeeded: {}", o.stdout);
    assert_eq!(
        o.stderr.trim(),
        "weave-router: refused: POST /stop needs the privilege of the router's user (uid 0) or root; this request came from uid 65534"
    );
    let o = as_nobody(&bed, 1, &[&bin, "attach", "10.2.1.9/24", "--netns", &cpath]);
    assert!(!o.success() && o.stderr.contains("refused"), "{}", o.stderr);
    // Straight at the socket, as curl.
    let socket_args = |path: &'static str, body: &'static str| {
        vec![
            "--abstract-unix-socket",
            SOCKET,
            "-X",
            "POST",
            "-d",
            body,
            path,
        ]
    };
    for (path, body) in [
        ("http://localhost/stop", ""),
        (
            "http://localhost/attach",
            r#"{"netns":"/proc/1/ns/net","addresses":["10.2.1.9/24"]}"#,
        ),
        ("http://localhost/connect", r#"{"peers":["192.0.2.1"]}"#),
        ("http://localhost/ip/nobody-owner", ""),
    ] {
        let (code, text) = curl(&bed, 1, true, &socket_args(path, body));
        assert_eq!(code, 403, "{path} as nobody: {text}");
        assert!(text.contains("uid 65534"), "{text}");
    }
    // Reading stays open to anyone, on the socket and on TCP.
    let o = as_nobody(&bed, 1, &[&bin, "status"]);
    assert!(o.success(), "status as nobody: {}", o.stderr);
    for path in [
        "http://127.0.0.1:6784/status",
        "http://127.0.0.1:6784/metrics",
    ] {
        let (code, text) = curl(&bed, 1, true, &[path]);
        assert_eq!(code, 200, "{path}: {text}");
    }

    // A web page in a browser on the host: a simple cross-origin POST (no preflight).
    let (code, text) = curl(
        &bed,
        1,
        false,
        &[
            "-X",
            "POST",
            "-H",
            "Origin: http://evil.example",
            "-H",
            "Content-Type: text/plain",
            "-d",
            "{}",
            "http://127.0.0.1:6784/stop",
        ],
    );
    assert_eq!(code, 403, "{text}");
    assert_eq!(
        text,
        "refused: a request from the web page \"http://evil.example\" (cross-origin requests are not served)\n"
    );
    // DNS rebinding: evil.example resolving to 127.0.0.1, the browser sends its name.
    let (code, text) = curl(
        &bed,
        1,
        false,
        &[
            "-H",
            "Host: evil.example:6784",
            "http://127.0.0.1:6784/status",
        ],
    );
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("DNS-rebinding"), "{text}");
    // No change is served on TCP at all, even to root.
    let (code, text) = curl(
        &bed,
        1,
        false,
        &[
            "-X",
            "POST",
            "-d",
            r#"{"peers":["192.0.2.1"]}"#,
            "http://127.0.0.1:6784/connect",
        ],
    );
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("@weave-router/127.0.0.1:6784"), "{text}");

    // Nothing changed: the same process runs, nothing attached, no target added.
    assert_eq!(daemon_pid(&bed, 1), pid);
    let r = bed.router(1);
    assert_eq!(r.check(&["ps"]).expect("ps"), "");
    assert!(
        !r.check(&["status", "targets"])
            .expect("targets")
            .contains("192.0.2.1"),
        "a refused connect added a target"
    );

    // The CLI as root does all of it.
    r.check(&["connect", "192.0.2.1"]).expect("connect");
    assert!(r
        .check(&["status", "targets"])
        .unwrap()
        .contains("192.0.2.1"));
    r.check(&["forget", "192.0.2.1"]).expect("forget");
    r.attach("10.2.1.9/24", std::path::Path::new(&cpath))
        .expect("attach");
    assert!(r.check(&["ps"]).unwrap().contains("10.2.1.9/24"));
    r.detach(std::path::Path::new(&cpath)).expect("detach");
    // And root's curl on the socket (README's allocation by owner ID).
    let (code, text) = curl(
        &bed,
        1,
        false,
        &[
            "--abstract-unix-socket",
            SOCKET,
            "-X",
            "POST",
            "http://localhost/ip/c0ffee",
        ],
    );
    assert_eq!(code, 200, "{text}");
    bed.router_mut(1).stop().expect("stop as root");
}

#[test]
fn the_password_stays_out_of_the_daemons_command_line_and_environment() {
    if !require_root("the_password_stays_out_of_the_daemons_command_line_and_environment") {
        return;
    }
    const SECRET: &str = "hl-s3cret-in-argv";
    let mut bed = TestBed::new("lpw", 2).expect("test bed");
    let file = bed.state_dir(2).with_file_name("password");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    bed.launch(
        1,
        &LaunchOpts {
            extra: vec!["--password".into(), SECRET.into()],
            ..Default::default()
        },
    )
    .expect("router with --password");
    let pid = daemon_pid(&bed, 1);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let has = |hay: &[u8]| hay.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
    println!("{}", String::from_utf8_lossy(&cmdline).replace('\0', " "));
    assert!(!has(&cmdline), "the password is in the daemon's cmdline");
    assert!(
        !has(&environ),
        "the password is in the daemon's environment"
    );
    // The daemon did get it: a peer with the same password (from a file) connects, encrypted.
    let dial = bed.host(1).dial_addr.to_string();
    bed.launch(
        2,
        &LaunchOpts {
            peers: vec![dial],
            extra: vec![
                "--password-file".into(),
                file.to_string_lossy().into_owned(),
            ],
        },
    )
    .expect("router with --password-file");
    let conns = bed
        .router(2)
        .wait_established(1, Duration::from_secs(30))
        .expect("the two connect");
    assert!(conns.contains(" encrypted "), "{conns}");
}

#[test]
fn corrupt_state_files_are_kept_aside_and_logged() {
    if !require_root("corrupt_state_files_are_kept_aside_and_logged") {
        return;
    }
    let mut bed = TestBed::new("lst", 1).expect("test bed");
    bed.launch(1, &Default::default()).expect("router");
    let c = bed.add_container(1, "c1").expect("container");
    let cpath = bed.container(c).ns.path().to_string_lossy().into_owned();
    bed.router(1)
        .check(&[
            "attach",
            "10.2.1.5/24",
            "--netns",
            &cpath,
            "--hostname",
            "c1",
        ])
        .expect("attach with a name");
    let dir = bed.state_dir(1);
    for f in ["endpoints.json", "dns.json"] {
        assert!(dir.join(f).exists(), "{f} written");
    }
    bed.router_mut(1).stop().expect("stop");
    std::fs::write(dir.join("endpoints.json"), b"[{\"netns\": tru").unwrap();
    std::fs::write(dir.join("dns.json"), b"not json").unwrap();
    let log_before = std::fs::read_to_string(dir.join("weave-router.log")).unwrap_or_default();
    bed.relaunch(1, &Default::default())
        .expect("relaunch over corrupt files");
    let log = std::fs::read_to_string(dir.join("weave-router.log")).unwrap();
    let new = &log[log_before.len().min(log.len())..];
    for (f, garbage) in [
        ("endpoints.json", &b"[{\"netns\": tru"[..]),
        ("dns.json", &b"not json"[..]),
    ] {
        let lines: Vec<&str> = new
            .lines()
            .filter(|l| l.contains(&format!("{f} is corrupt (")))
            .collect();
        assert_eq!(lines.len(), 1, "one line for {f}:\n{new}");
        assert!(
            lines[0].contains(&format!("kept as {}.corrupt-", dir.join(f).display())),
            "{}",
            lines[0]
        );
        let kept: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{f}.corrupt-"))
            })
            .collect();
        assert_eq!(kept.len(), 1, "{f} kept aside");
        assert_eq!(std::fs::read(kept[0].path()).unwrap(), garbage);
    }
    // The router runs without the lost endpoint (c1's interface stays where it was, unknown
    // to it) and attaches others.
    assert_eq!(bed.router(1).check(&["ps"]).expect("ps"), "");
    let c2 = bed.add_container(1, "c2").expect("container");
    let c2path = bed.container(c2).ns.path();
    bed.router(1)
        .attach("10.2.1.6/24", &c2path)
        .expect("attach another");
}

/// Unmounts a tmpfs when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let o = weave_tests::cmd::run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            &dir.to_string_lossy(),
        ])
        .expect("mount");
        assert!(o.success(), "mount tmpfs: {}", o.stderr);
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = weave_tests::cmd::run(&["umount", "-l", &self.0.to_string_lossy()]);
    }
}

#[test]
fn a_full_disk_during_an_ipam_store_keeps_the_neighbours_connection() {
    if !require_root("a_full_disk_during_an_ipam_store_keeps_the_neighbours_connection") {
        return;
    }
    let mut bed = TestBed::new("ldisk", 2).expect("test bed");
    // Host 1 keeps its state on a tiny tmpfs (dropped before the bed: declared after it).
    let disk = Tmpfs::mount(&bed.state_dir(1), "64k");
    bed.launch_mesh(&[
        "--ipalloc-range",
        "10.2.0.0/16",
        "--ipalloc-default-subnet",
        "10.2.1.0/24",
        "--init-peer-count",
        "2",
    ])
    .expect("routers connect");
    // Fill it.
    let fill = disk.0.join("fill");
    let _ = weave_tests::cmd::run(&[
        "dd",
        "if=/dev/zero",
        &format!("of={}", fill.display()),
        "bs=4k",
    ]);
    let stored = std::fs::read(disk.0.join("ipam.json")).ok();
    // Host 2 allocates: the consensus makes host 1 store its ring, and the store fails.
    let c = bed.add_container(2, "c2").expect("container");
    let path = bed.container(c).ns.path();
    bed.router(2)
        .check(&["attach", "net:default", "--netns", &path.to_string_lossy()])
        .expect("attach on host 2 while host 1's disk is full");
    let log2 = std::fs::read_to_string(bed.state_dir(2).join("weave-router.log")).unwrap();
    assert!(
        !log2.lines().any(|l| l.contains(" lost: ")),
        "host 2 lost its connection:\n{log2}"
    );
    bed.router(1)
        .wait_established(1, Duration::from_secs(5))
        .expect("host 1 still connected");
    assert_eq!(
        std::fs::read(disk.0.join("ipam.json")).ok(),
        stored,
        "nothing stored on a full disk"
    );
    // Room again: the tick stores the state kept in memory.
    std::fs::remove_file(&fill).unwrap();
    let again =
        weave_tests::cmd::wait_for("IPAM state stored again", Duration::from_secs(15), || {
            let log = std::fs::read_to_string(disk.0.join("weave-router.log")).ok()?;
            log.contains("IPAM state stored again").then_some(())
        });
    again.expect("stored once there is room");
    assert_ne!(std::fs::read(disk.0.join("ipam.json")).ok(), stored);
    let log2 = std::fs::read_to_string(bed.state_dir(2).join("weave-router.log")).unwrap();
    assert!(!log2.lines().any(|l| l.contains(" lost: ")), "{log2}");
    drop(bed);
    drop(disk);
}
