//! `--password`: routers with the same password connect over encrypted control connections;
//! another password, or a password on one side only, is refused and both sides say why;
//! an empty or unreadable password file stops the launch with one line and starts nothing.

use std::time::Duration;

use weave_tests::bed::host_addr;
use weave_tests::router::{self, LaunchOpts};
use weave_tests::{cmd, require_root, TestBed};

/// Waits until host `i`'s `status connections` has a failed line with `reason`; the line.
fn wait_refusal(bed: &TestBed, i: usize, arrow: &str, reason: &str) -> String {
    let r = bed.router(i);
    cmd::wait_for(
        &format!("host{i} to show a refused connection ({reason})"),
        Duration::from_secs(20),
        || {
            let c = r.connections().ok()?;
            c.lines()
                .find(|l| l.starts_with(arrow) && l.contains("failed") && l.contains(reason))
                .map(str::to_string)
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nstatus connections:\n{}\nlog:\n{}",
            r.connections().unwrap_or_default(),
            r.log_tail(30)
        )
    })
}

#[test]
fn encryption_same_password_connects_another_is_refused_on_both_sides() {
    if !require_root("encryption_same_password_connects_another_is_refused_on_both_sides") {
        return;
    }
    let mut bed = TestBed::new("cxe", 3).expect("test bed");
    // Host 2 reads the same password from a file (with a trailing newline).
    let file = std::env::temp_dir().join("cxe-password");
    std::fs::write(&file, "s3cret phrase\n").expect("password file");
    let file_arg = file.to_string_lossy().into_owned();
    bed.launch(
        1,
        &LaunchOpts::dialling(&[], &["--password", "s3cret phrase"]),
    )
    .expect("host1");
    bed.launch(
        2,
        &LaunchOpts::dialling(&[1], &["--password-file", &file_arg]),
    )
    .expect("host2");
    for i in 1..=2 {
        let r = bed.router(i);
        let c = r
            .wait_established(1, Duration::from_secs(30))
            .expect("established");
        let line = c.lines().find(|l| l.contains("established")).unwrap();
        assert!(line.contains(" encrypted "), "host{i}: {line}");
        let status = r.check(&["status"]).expect("status");
        assert!(
            status.contains("     Encryption: enabled\n"),
            "host{i} status:\n{status}"
        );
    }
    // Gossip flows over the sealed connection: each knows the other.
    let r1 = bed.router(1);
    cmd::wait_for(
        "host1 to list host2 in status peers",
        Duration::from_secs(10),
        || {
            r1.check(&["status", "peers"])
                .ok()
                .filter(|p| p.contains("(host2)") || p.contains(&bed.peer_name(2)))
        },
    )
    .expect("peers");

    // Another password: refused, and both ends say why.
    bed.launch(
        3,
        &LaunchOpts::dialling(&[1], &["--password", "not the same"]),
    )
    .expect("host3");
    let out = wait_refusal(
        &bed,
        3,
        "->",
        "password mismatch: the remote end has another password",
    );
    assert!(out.contains(&host_addr(1).to_string()), "{out}");
    let inn = wait_refusal(
        &bed,
        1,
        "<-",
        "password mismatch: the remote end has another password",
    );
    assert!(inn.contains(&host_addr(3).to_string()), "{inn}");
    for i in [1, 3] {
        let log = bed.router(i).log_tail(200);
        assert!(
            log.contains("password mismatch: the remote end has another password"),
            "host{i} log does not say why:\n{log}"
        );
    }
    assert!(
        !bed.router(3).connections().unwrap().contains("established"),
        "host3 must not connect with another password"
    );
    // Host 1 and 2 are still connected.
    bed.router(1)
        .wait_established(1, Duration::from_secs(5))
        .expect("host1-host2 still up");

    // No password at all on host 3: refused, both ends say why.
    bed.relaunch(3, &LaunchOpts::dialling(&[1], &[]))
        .expect("host3 without password");
    wait_refusal(
        &bed,
        3,
        "->",
        "encryption mismatch: the remote end has a password and we have none",
    );
    wait_refusal(
        &bed,
        1,
        "<-",
        "encryption mismatch: we have a password and the remote end has none",
    );
    let status = bed.router(3).check(&["status"]).expect("status");
    assert!(status.contains("     Encryption: disabled\n"), "{status}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn encryption_bad_password_files_get_one_line_and_start_nothing() {
    if !require_root("encryption_bad_password_files_get_one_line_and_start_nothing") {
        return;
    }
    let bed = TestBed::new("cxp", 1).expect("test bed");
    let empty = std::env::temp_dir().join("cxp-empty-password");
    std::fs::write(&empty, "\n").expect("empty file");
    let missing = std::env::temp_dir().join("cxp-no-such-password-file");
    let _ = std::fs::remove_file(&missing);
    let ns = bed.host(1).ns.name().to_string();
    let sd = bed.state_dir(1);
    let sd = sd.to_string_lossy();
    let cases = [
        (
            "empty password file",
            vec!["--password-file", empty.to_str().unwrap()],
            "is empty",
        ),
        (
            "missing password file",
            vec!["--password-file", missing.to_str().unwrap()],
            "cannot read it",
        ),
        ("empty password", vec!["--password", ""], "is empty"),
    ];
    for (what, extra, needle) in cases {
        let mut args = vec!["launch", "--state-dir", &sd, "--iface", "eth0"];
        args.extend(extra.iter().copied());
        let o = router::cli_in(&ns, &args).expect("runs");
        assert!(!o.success(), "{what}: exit 0");
        let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{what}: want one line, got:\n{}", o.stderr);
        assert!(lines[0].contains(needle), "{what}: {}", lines[0]);
        assert!(!o.stderr.contains("panicked"), "{what}: {}", o.stderr);
        assert!(
            router::router_pids(&ns).is_empty(),
            "{what}: a router process is left"
        );
        assert!(
            router::cli_in(&ns, &["status"])
                .map(|o| !o.success())
                .unwrap_or(true),
            "{what}: something answers status"
        );
    }
    let _ = std::fs::remove_file(&empty);
}
