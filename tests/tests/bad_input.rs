//! Bad input gets one clear line and a non-zero exit, and a failed launch leaves nothing.

use weave_tests::{probe, require_root, router, Output, TestBed};

/// The lines of stderr that say something (clap's usage hints aside).
fn said(o: &Output) -> Vec<String> {
    o.stderr
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .map(str::to_string)
        .collect()
}

fn assert_one_line_error(what: &str, o: &Output) {
    assert!(
        !o.success(),
        "{what}: exit 0\nstdout: {}\nstderr: {}",
        o.stdout,
        o.stderr
    );
    assert!(
        !o.stderr.contains("panicked"),
        "{what}: panicked:\n{}",
        o.stderr
    );
    let lines = said(o);
    assert_eq!(
        lines.len(),
        1,
        "{what}: want one line on stderr, got:\n{}",
        o.stderr
    );
}

#[test]
fn bad_input_gets_one_line_and_non_zero_exit() {
    if !require_root("bad_input_gets_one_line_and_non_zero_exit") {
        return;
    }
    let mut bed = TestBed::new("wtbi", 2).expect("test bed");
    bed.launch(1, &Default::default()).expect("router on host1");
    let c = bed.add_container(1, "c1").expect("container");
    let cpath = bed.container(c).ns.path().to_string_lossy().into_owned();
    let r = bed.router(1);

    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "address out of range",
            vec!["attach", "10.2.1.300/24", "--netns", &cpath],
        ),
        (
            "prefix too long",
            vec!["attach", "10.2.1.1/33", "--netns", &cpath],
        ),
        ("not an address", vec!["attach", "bogus", "--netns", &cpath]),
        (
            "missing netns",
            vec![
                "attach",
                "10.2.1.1/24",
                "--netns",
                "/run/netns/wtbi-does-not-exist",
            ],
        ),
        (
            "detach of a missing netns",
            vec!["detach", "--netns", "/run/netns/wtbi-does-not-exist"],
        ),
    ];
    for (what, args) in &cases {
        let o = r.cli(args).expect("runs");
        assert_one_line_error(what, &o);
    }
    // Nothing was attached by the failed attempts.
    assert!(
        !probe::links(&bed.container(c).ns)
            .expect("links")
            .iter()
            .any(|l| l == "ethwe"),
        "a failed attach left ethwe behind"
    );

    let o = router::cli_in(bed.host(1).ns.name(), &["frobnicate"]).expect("runs");
    assert!(!o.success(), "unknown subcommand: exit 0");
    assert!(
        said(&o).first().is_some_and(|l| l.contains("frobnicate")),
        "unknown subcommand should be named on the first line:\n{}",
        o.stderr
    );

    // The router on host1 is still fine.
    r.connections().expect("status connections after bad input");

    // Host2 has no router: client commands say so, bad launches leave nothing behind.
    let h2 = bed.host(2).ns.name().to_string();
    let o = router::cli_in(&h2, &["status"]).expect("runs");
    assert_one_line_error("status without a router", &o);

    let sd = bed.state_dir(2);
    let sd = sd.to_string_lossy();
    let launches: Vec<(&str, Vec<&str>)> = vec![
        (
            "bad peer name",
            vec![
                "launch",
                "--name",
                "not-a-mac",
                "--state-dir",
                &sd,
                "--iface",
                "eth0",
            ],
        ),
        (
            "missing underlay device",
            vec!["launch", "--state-dir", &sd, "--iface", "nosuchdev0"],
        ),
        (
            "bad peer address",
            vec!["launch", "300.1.2.3", "--state-dir", &sd, "--iface", "eth0"],
        ),
        (
            "bad trusted subnet",
            vec![
                "launch",
                "--trusted-subnets",
                "198.18.0.0/24,10.0.0.0/33",
                "--state-dir",
                &sd,
                "--iface",
                "eth0",
            ],
        ),
    ];
    for (what, args) in &launches {
        let before = probe::links(&bed.host(2).ns).expect("links");
        let o = router::cli_in(&h2, args).expect("runs");
        assert_one_line_error(what, &o);
        assert!(
            router::router_pids(&h2).is_empty(),
            "{what}: a router process is left"
        );
        let after = probe::links(&bed.host(2).ns).expect("links");
        assert_eq!(before, after, "{what}: links left behind");
    }

    // A second router in a namespace that has one fails and leaves the first working.
    let sd1b = bed.state_dir(1).with_extension("second");
    let o = router::cli_in(
        bed.host(1).ns.name(),
        &[
            "launch",
            "--state-dir",
            &sd1b.to_string_lossy(),
            "--iface",
            "eth0",
        ],
    )
    .expect("runs");
    let _ = std::fs::remove_dir_all(&sd1b);
    assert_one_line_error("second router in one namespace", &o);
    bed.router(1)
        .connections()
        .expect("the first router still answers");
}
