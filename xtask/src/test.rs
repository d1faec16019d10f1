//! `cargo xtask test`: set-up, build, then every test, and a summary.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::run::{self, step};

/// What one test binary reported.
#[derive(Debug, Default)]
struct TargetResult {
    name: String,
    passed: u32,
    failed: u32,
    ignored: u32,
    skipped: u32,
    done: bool,
}

/// One `cargo test` invocation.
#[derive(Debug)]
struct Phase {
    title: &'static str,
    ok: bool,
    elapsed: Duration,
    targets: Vec<TargetResult>,
    failures: Vec<String>,
}

fn target_name(running: &str) -> String {
    // "unittests src/lib.rs (target/debug/deps/weave_router-0123)" or "tests/e2e.rs (...)"
    let (what, path) = running.split_once(" (").unwrap_or((running, ""));
    let krate = path
        .trim_end_matches(')')
        .rsplit('/')
        .next()
        .and_then(|f| f.rsplit_once('-').map(|(n, _)| n.to_string()))
        .unwrap_or_default();
    let what = what.trim_start_matches("unittests ");
    if krate.is_empty() {
        what.to_string()
    } else {
        format!("{krate}: {what}")
    }
}

/// Runs `cargo test <args>`, echoing its output, and collects the per-binary results.
fn cargo_test(title: &'static str, args: &[&str], limit: Duration) -> Result<Phase> {
    step(title);
    println!("    cargo test {}", args.join(" "));
    let t = Instant::now();
    let (reader, writer) = std::io::pipe().context("pipe")?;
    let mut child = run::cargo()
        .current_dir(run::root())
        .args(["test", "--no-fail-fast"])
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .spawn()
        .context("cannot run cargo test")?;
    // A hung test must not hang the whole run: past `limit`, cargo and its children go.
    let cargo_pid = child.id() as i32;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            println!("xtask: {title} ran longer than {limit:?}; stopping it");
            for sig in [libc::SIGTERM, libc::SIGKILL] {
                let mut pids = descendants(cargo_pid);
                pids.push(cargo_pid);
                for p in pids {
                    // SAFETY: kill(2) on the cargo we started and the processes it started.
                    unsafe {
                        libc::kill(p, sig);
                    }
                }
                std::thread::sleep(Duration::from_secs(5));
            }
            return true;
        }
        false
    });
    let mut targets: Vec<TargetResult> = Vec::new();
    let mut failures = Vec::new();
    for line in BufReader::new(reader).lines() {
        let line = line.unwrap_or_default();
        println!("{line}");
        let l = line.trim();
        if let Some(r) = l.strip_prefix("Running ") {
            targets.push(TargetResult {
                name: target_name(r),
                ..Default::default()
            });
        } else if let Some(d) = l.strip_prefix("Doc-tests ") {
            targets.push(TargetResult {
                name: format!("{d}: doc-tests"),
                ..Default::default()
            });
        } else if let Some(r) = l.strip_prefix("test result: ") {
            if let Some(t) = targets.last_mut() {
                t.done = true;
                for part in r.split(['.', ';']) {
                    let mut w = part.split_whitespace();
                    if let (Some(n), Some(k)) = (w.next(), w.next()) {
                        let n: u32 = n.parse().unwrap_or(0);
                        match k {
                            "passed" => t.passed = n,
                            "failed" => t.failed = n,
                            "ignored" => t.ignored = n,
                            _ => {}
                        }
                    }
                }
            }
        } else if l.starts_with("test ") && l.ends_with("FAILED") {
            let name = l
                .trim_start_matches("test ")
                .trim_end_matches("FAILED")
                .trim_end()
                .trim_end_matches("...")
                .trim();
            let target = targets.last().map(|t| t.name.as_str()).unwrap_or("?");
            failures.push(format!("{target}: {name}"));
        } else if l.to_ascii_lowercase().contains("skipped") {
            if let Some(t) = targets.last_mut() {
                t.skipped += 1;
            }
        }
    }
    let st = child.wait()?;
    let _ = done_tx.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    let mut ok = st.success() && !timed_out;
    if timed_out {
        failures.push(format!("stopped after {limit:?} (a test hung?)"));
    }
    // A binary that started but never reported (crash, abort) is a failure too.
    for t in &targets {
        if !t.done {
            ok = false;
            failures.push(format!("{}: did not finish", t.name));
        }
    }
    if !st.success() && failures.is_empty() {
        failures.push(format!(
            "cargo test {} exited with {st} (build failure?)",
            args.join(" ")
        ));
    }
    Ok(Phase {
        title,
        ok,
        elapsed: t.elapsed(),
        targets,
        failures,
    })
}

/// Every process below `root` in the process tree.
fn descendants(root: i32) -> Vec<i32> {
    let mut parent = Vec::new();
    if let Ok(d) = std::fs::read_dir("/proc") {
        for e in d.filter_map(|e| e.ok()) {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parent.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (c, pp) in &parent {
            if *pp == p && !out.contains(c) {
                out.push(*c);
                frontier.push(*c);
            }
        }
    }
    out
}

pub fn test(no_build: bool, e2e_filter: Option<&str>) -> Result<()> {
    let total = Instant::now();
    if !run::is_root() {
        bail!("`cargo xtask test` runs BPF and network-namespace tests: run it as root");
    }
    if !no_build {
        crate::setup::setup()?;
        crate::build::build()?;
    }
    let mut phases = Vec::new();
    phases.push(cargo_test(
        "unit, integration and BPF_PROG_TEST_RUN tests",
        &["--workspace", "--exclude", "weave-tests"],
        Duration::from_secs(30 * 60),
    )?);
    let mut e2e: Vec<&str> = vec!["-p", "weave-tests", "--", "--test-threads=1"];
    if let Some(f) = e2e_filter {
        e2e.push(f);
    }
    let bin = run::root().join("target/release/weave-router");
    std::env::set_var("WEAVE_ROUTER_BIN", &bin);
    phases.push(cargo_test(
        "end-to-end tests over network namespaces (root)",
        &e2e,
        Duration::from_secs(25 * 60),
    )?);

    println!();
    println!("==================== summary ====================");
    let (mut passed, mut failed, mut ignored, mut skipped) = (0, 0, 0, 0);
    for p in &phases {
        println!(
            "{} {} ({:.0}s)",
            if p.ok { "PASS" } else { "FAIL" },
            p.title,
            p.elapsed.as_secs_f64()
        );
        for t in &p.targets {
            if t.passed + t.failed + t.ignored == 0 && t.done {
                continue;
            }
            let mut extra = String::new();
            if t.ignored > 0 {
                extra.push_str(&format!(", {} ignored", t.ignored));
            }
            if t.skipped > 0 {
                extra.push_str(&format!(", {} SKIPPED", t.skipped));
            }
            println!(
                "     {:>4} passed, {} failed{extra}  {}",
                t.passed, t.failed, t.name
            );
            passed += t.passed;
            failed += t.failed;
            ignored += t.ignored;
            skipped += t.skipped;
        }
        for f in &p.failures {
            println!("     FAILED: {f}");
        }
    }
    let ok = phases.iter().all(|p| p.ok);
    println!(
        "{}: {passed} passed, {failed} failed, {ignored} ignored, {skipped} skipped; {:.0}s in all",
        if ok {
            "ALL TESTS PASSED"
        } else {
            "TESTS FAILED"
        },
        total.elapsed().as_secs_f64()
    );
    if !ok {
        bail!("some tests failed (see the summary above)");
    }
    Ok(())
}
