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
    /// As libtest counts them: skipped tests among them.
    passed: u32,
    failed: u32,
    ignored: u32,
    /// Tests that reported themselves skipped (`weave_tests::skip`): name, then why.
    skipped: Vec<(String, String)>,
    done: bool,
}

impl TargetResult {
    /// Passed and not skipped: libtest counts a skipped test as passed.
    fn really_passed(&self) -> u32 {
        self.passed.saturating_sub(self.skipped.len() as u32)
    }
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
    let mut output = TestOutput::default();
    for line in BufReader::new(reader).lines() {
        let line = line.unwrap_or_default();
        println!("{line}");
        output.line(&line);
    }
    let TestOutput {
        targets,
        mut failures,
    } = output;
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

/// The results `cargo test` reports, read a line at a time.
#[derive(Debug, Default)]
struct TestOutput {
    /// One per test binary, in the order they ran.
    targets: Vec<TargetResult>,
    /// `<target>: <test>` of each failed test.
    failures: Vec<String>,
}

impl TestOutput {
    fn line(&mut self, line: &str) {
        let l = line.trim();
        if let Some(r) = l.strip_prefix("Running ") {
            self.targets.push(TargetResult {
                name: target_name(r),
                ..Default::default()
            });
        } else if let Some(d) = l.strip_prefix("Doc-tests ") {
            self.targets.push(TargetResult {
                name: format!("{d}: doc-tests"),
                ..Default::default()
            });
        } else if let Some(r) = l.strip_prefix("test result: ") {
            let Some(t) = self.targets.last_mut() else {
                return;
            };
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
        } else if l.starts_with("test ") && l.ends_with("FAILED") {
            let name = l
                .trim_start_matches("test ")
                .trim_end_matches("FAILED")
                .trim_end()
                .trim_end_matches("...")
                .trim();
            let target = self.targets.last().map(|t| t.name.as_str()).unwrap_or("?");
            self.failures.push(format!("{target}: {name}"));
        } else if let Some(skip) = parse_skip(l) {
            if let Some(t) = self.targets.last_mut() {
                t.skipped.push(skip);
            }
        }
    }
}

/// Test name and reason of a skip line ([`weave_tests::skip`]).
fn parse_skip(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix(weave_tests::skip::SKIP_MARKER)?;
    let rest = rest.trim_end().trim_end_matches('!').trim_end();
    let (name, why) = rest.split_once(": ").unwrap_or((rest, ""));
    // Test names hold no spaces: anything else is not a skip line.
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    Some((name.to_string(), why.trim().to_string()))
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

/// Runs the tests: unless `no_build`, `cargo xtask setup` and the builds first; unless
/// `e2e_only`, the workspace's own tests; then the end-to-end tests (those whose name
/// contains `e2e_filter`, if given).
///
/// A test that reports itself skipped fails the run: here setup has installed everything and
/// the tests run as root, so a skip means a missing install step, and a test that did not run
/// must not count as passed.
pub fn test(no_build: bool, e2e_only: bool, e2e_filter: Option<&str>) -> Result<()> {
    let total = Instant::now();
    if !run::is_root() {
        bail!("`cargo xtask test` runs BPF and network-namespace tests: run it as root");
    }
    if !no_build {
        crate::setup::setup()?;
        crate::build::build()?;
        crate::build::build_static()?;
    }
    let mut phases = Vec::new();
    if !e2e_only {
        phases.push(cargo_test(
            "unit, integration and BPF_PROG_TEST_RUN tests",
            &["--workspace", "--exclude", "weave-tests"],
            Duration::from_secs(30 * 60),
        )?);
    }
    if !e2e_only {
        phases.push(fuzz_phase()?);
    }
    let mut e2e: Vec<&str> = vec!["-p", "weave-tests", "--", "--test-threads=1"];
    if let Some(f) = e2e_filter {
        e2e.push(f);
    }
    let bin = run::root().join("target/release/weave-router");
    std::env::set_var("WEAVE_ROUTER_BIN", &bin);
    // The image test (docker_plugin.rs) runs the static build; left unset (and so the test
    // skipped, failing the run) only when --no-build finds none.
    let static_bin = crate::build::static_binary();
    if static_bin.is_file() {
        std::env::set_var("WEAVE_ROUTER_STATIC_BIN", &static_bin);
        // The package test (packaging.rs) installs the .deb made of it.
        let deb = crate::deb::package(&static_bin)?;
        std::env::set_var("WEAVE_DEB", &deb);
    }
    phases.push(cargo_test(
        "end-to-end tests over network namespaces (root)",
        &e2e,
        Duration::from_secs(25 * 60),
    )?);
    if e2e_filter.is_none() {
        phases.push(scale_smoke_phase());
    }

    let (lines, ok) = summary(&phases, total.elapsed());
    println!();
    for l in lines {
        println!("{l}");
    }
    if !ok {
        bail!("some tests failed or were skipped (see the summary above)");
    }
    Ok(())
}

/// A short run of the scale benchmark (`cargo xtask scale`): a few routers with the
/// in-memory data path launched at once, a join and a leave, each agreed in time.
fn scale_smoke_phase() -> Phase {
    let title = "scale smoke: routers launched at once, a join, a leave";
    step(title);
    let t = Instant::now();
    let result = crate::scale::smoke();
    let ok = result.is_ok();
    Phase {
        title,
        ok,
        elapsed: t.elapsed(),
        targets: vec![TargetResult {
            name: format!("scale smoke, {} routers", crate::scale::SMOKE_ROUTERS),
            passed: u32::from(ok),
            failed: u32::from(!ok),
            done: true,
            ..Default::default()
        }],
        failures: result
            .err()
            .map(|e| format!("scale smoke: {e:#}"))
            .into_iter()
            .collect(),
    }
}

/// Every fuzz target for a few seconds (`cargo xtask fuzz` runs them longer): a regression
/// that panics on an input of the kept corpus, or soon after, shows here.
fn fuzz_phase() -> Result<Phase> {
    let title = "fuzz targets, a few seconds each";
    step(title);
    let t = Instant::now();
    let mut failures = Vec::new();
    let mut targets = Vec::new();
    match crate::fuzz::run_all(crate::fuzz::TEST_SECS, false, None) {
        Err(e) => failures.push(format!("{e:#}")),
        Ok(runs) => {
            for r in runs {
                println!("    {}", r.summary());
                let ok = r.failure.is_none();
                if let Some(f) = &r.failure {
                    failures.push(format!("fuzz {}: {f}", r.name));
                }
                targets.push(TargetResult {
                    name: format!("fuzz {}: {} runs", r.name, r.runs),
                    passed: u32::from(ok),
                    failed: u32::from(!ok),
                    done: true,
                    ..Default::default()
                });
            }
        }
    }
    Ok(Phase {
        title,
        ok: failures.is_empty(),
        elapsed: t.elapsed(),
        targets,
        failures,
    })
}

/// The summary of a run: a line per phase and per test binary, each failed and each skipped
/// test by name, the totals; and whether the run passed (nothing failed, nothing skipped).
fn summary(phases: &[Phase], elapsed: Duration) -> (Vec<String>, bool) {
    let mut out = vec!["==================== summary ====================".to_string()];
    let (mut passed, mut failed, mut ignored, mut skipped) = (0, 0, 0, 0);
    let mut all_ok = true;
    for p in phases {
        let phase_skips: usize = p.targets.iter().map(|t| t.skipped.len()).sum();
        let ok = p.ok && phase_skips == 0;
        all_ok &= ok;
        out.push(format!(
            "{} {} ({:.0}s)",
            if ok { "PASS" } else { "FAIL" },
            p.title,
            p.elapsed.as_secs_f64()
        ));
        for t in &p.targets {
            if t.passed + t.failed + t.ignored == 0 && t.done {
                continue;
            }
            let mut extra = String::new();
            if t.ignored > 0 {
                extra.push_str(&format!(", {} ignored", t.ignored));
            }
            if !t.skipped.is_empty() {
                extra.push_str(&format!(", {} SKIPPED", t.skipped.len()));
            }
            out.push(format!(
                "     {:>4} passed, {} failed{extra}  {}",
                t.really_passed(),
                t.failed,
                t.name
            ));
            passed += t.really_passed();
            failed += t.failed;
            ignored += t.ignored;
            skipped += t.skipped.len();
        }
        for t in &p.targets {
            for (test, why) in &t.skipped {
                out.push(format!("     SKIPPED: {}: {test} ({why})", t.name));
            }
        }
        for f in &p.failures {
            out.push(format!("     FAILED: {f}"));
        }
    }
    out.push(format!(
        "{}: {passed} passed, {failed} failed, {ignored} ignored, {skipped} skipped; {:.0}s in all",
        if all_ok {
            "ALL TESTS PASSED"
        } else {
            "TESTS FAILED"
        },
        elapsed.as_secs_f64()
    ));
    if skipped > 0 {
        out.push(
            "     a skipped test fails `cargo xtask test`: setup installs everything the tests \
             need, so a skip is a missing install step (or --no-build without one)"
                .to_string(),
        );
    }
    (out, all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `cargo test -p weave-tests -- --test-threads=1` printed as non-root (two tests
    /// skipped), after a binary with a failure.
    const TRANSCRIPT: &str = "\
     Running tests/bad_input.rs (target/debug/deps/bad_input-0123abcd)

running 2 tests
test rejects_garbage ... ok
test rejects_more ... FAILED

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

     Running tests/docker_plugin.rs (target/debug/deps/docker_plugin-f80cfe21376c8b70)

running 3 tests
test docker_network_plugin_runs_containers_on_the_weave_network ... 
!!!!! SKIPPED docker_network_plugin_runs_containers_on_the_weave_network: needs root (network namespaces, BPF); run `cargo xtask test` !!!!!
ok
test the_static_router_image_launches_a_router ... 
!!!!! SKIPPED the_static_router_image_launches_a_router: WEAVE_ROUTER_STATIC_BIN is not set (a static build) !!!!!
ok
test plain ... ok
test unrelated ... ok, it said: skipped nothing

test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s
";

    fn parse(text: &str) -> TestOutput {
        let mut o = TestOutput::default();
        for l in text.lines() {
            o.line(l);
        }
        o
    }

    #[test]
    fn skips_are_counted_by_name_and_not_as_passes() {
        let o = parse(TRANSCRIPT);
        assert_eq!(o.targets.len(), 2);
        let t = &o.targets[1];
        assert_eq!(t.name, "docker_plugin: tests/docker_plugin.rs");
        assert!(t.done);
        assert_eq!((t.passed, t.really_passed(), t.ignored), (3, 1, 1));
        assert_eq!(
            t.skipped,
            vec![
                (
                    "docker_network_plugin_runs_containers_on_the_weave_network".to_string(),
                    "needs root (network namespaces, BPF); run `cargo xtask test`".to_string()
                ),
                (
                    "the_static_router_image_launches_a_router".to_string(),
                    "WEAVE_ROUTER_STATIC_BIN is not set (a static build)".to_string()
                ),
            ]
        );
        assert_eq!(
            o.failures,
            vec!["bad_input: tests/bad_input.rs: rejects_more"]
        );
        assert!(o.targets[0].skipped.is_empty());
    }

    #[test]
    fn a_skip_fails_the_run_and_is_named_in_the_summary() {
        let o = parse(TRANSCRIPT);
        let mut targets = o.targets;
        targets.remove(0);
        let phase = Phase {
            title: "end-to-end",
            ok: true,
            elapsed: Duration::from_secs(3),
            targets,
            failures: Vec::new(),
        };
        let (lines, ok) = summary(&[phase], Duration::from_secs(5));
        assert!(!ok);
        let text = lines.join("\n");
        assert!(text.contains("FAIL end-to-end (3s)"), "{text}");
        assert!(
            text.contains("        1 passed, 0 failed, 1 ignored, 2 SKIPPED  docker_plugin: tests/docker_plugin.rs"),
            "{text}"
        );
        assert!(
            text.contains(
                "SKIPPED: docker_plugin: tests/docker_plugin.rs: the_static_router_image_launches_a_router (WEAVE_ROUTER_STATIC_BIN is not set (a static build))"
            ),
            "{text}"
        );
        assert!(
            text.contains("TESTS FAILED: 1 passed, 0 failed, 1 ignored, 2 skipped; 5s in all"),
            "{text}"
        );
    }

    #[test]
    fn skip_lines_are_recognised_only_with_the_marker() {
        assert_eq!(
            parse_skip(&weave_tests::skip::skip_line("m::t", "why: because")),
            Some(("m::t".to_string(), "why: because".to_string()))
        );
        assert_eq!(parse_skip("test x ... skipped"), None);
        assert_eq!(parse_skip("!!!!! SKIPPED two words: x !!!!!"), None);
    }
}
