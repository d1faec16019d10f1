//! `cargo xtask fuzz [SECS]`: every fuzz target of `fuzz/` (cargo-fuzz, libFuzzer, nightly)
//! for SECS seconds each, one after another on one core, from the corpus kept in the repo
//! (`fuzz/corpus/<target>/`). Inputs that find new paths go to `fuzz/target/corpus/<target>/`
//! (`--merge` adds the ones that widen coverage to the repo's corpus); a crash leaves its input
//! in `fuzz/artifacts/<target>/` and fails the run. `cargo xtask test` runs each target
//! briefly the same way.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::run::{self, cmd, status, step};

/// The targets, in the order they run (ARCHITECTURE.md says what each checks).
pub const TARGETS: &[&str] = &[
    "control_frame",
    "handshake",
    "topology",
    "routes",
    "sleeve_decoder",
    "dns_answer",
    "ipam_message",
    "docker_create",
    "cidr_spec",
];

/// Seconds per target of `cargo xtask fuzz` without an argument.
pub const DEFAULT_SECS: u64 = 60;
/// Seconds per target in `cargo xtask test`.
pub const TEST_SECS: u64 = 5;

/// What one target's run reported.
#[derive(Debug, Default)]
pub struct TargetRun {
    pub name: &'static str,
    /// Inputs run, and per second.
    pub runs: u64,
    pub execs_per_sec: u64,
    /// Inputs that found new paths.
    pub new_inputs: u64,
    pub peak_rss_mb: u64,
    /// The input that crashed it, when one did.
    pub crash: Option<PathBuf>,
    /// Why it failed, when it did (a crash, a timeout, no start).
    pub failure: Option<String>,
    pub elapsed: Duration,
}

fn fuzz_dir() -> PathBuf {
    run::root().join("fuzz")
}

fn nightly_cargo() -> std::process::Command {
    let mut c = cmd("cargo");
    c.env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("CARGO_MANIFEST_DIR")
        .arg("+nightly");
    c
}

/// Builds every target: optimised, with debug assertions and overflow checks (an overflow
/// is a finding), AddressSanitizer for the unsafe code below.
pub fn build() -> Result<Duration> {
    let t = Instant::now();
    status(nightly_cargo().current_dir(fuzz_dir()).args([
        "fuzz",
        "build",
        "-O",
        "--debug-assertions",
    ]))
    .context("building the fuzz targets (is cargo-fuzz installed? `cargo xtask setup`)")?;
    Ok(t.elapsed())
}

fn binary(target: &str) -> PathBuf {
    fuzz_dir()
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(target)
}

/// Runs one target for `secs` seconds; `merge`: afterwards adds the new inputs that widen
/// coverage to the repo's corpus.
pub fn run_target(name: &'static str, secs: u64, merge: bool) -> Result<TargetRun> {
    let dir = fuzz_dir();
    let corpus = dir.join("corpus").join(name);
    let found = dir.join("target/corpus").join(name);
    let artifacts = dir.join("artifacts").join(name);
    for d in [&corpus, &found, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let t = Instant::now();
    // New inputs go to the first directory: the scratch one, never the repo's corpus.
    let mut child = cmd(binary(name))
        .arg(&found)
        .arg(&corpus)
        .arg(format!("-max_total_time={secs}"))
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", binary(name).display()))?;
    let mut r = TargetRun {
        name,
        ..Default::default()
    };
    let mut tail: Vec<String> = Vec::new();
    let stderr = child.stderr.take().context("stderr")?;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap_or_default();
        r.line(&line);
        tail.push(line);
        if tail.len() > 60 {
            tail.remove(0);
        }
    }
    let st = child.wait()?;
    r.elapsed = t.elapsed();
    if !st.success() || r.crash.is_some() {
        for l in &tail {
            println!("    | {l}");
        }
        r.failure = Some(match &r.crash {
            Some(p) => format!("crashed; input: {}", p.display()),
            None => format!("exited with {st}"),
        });
    }
    if merge && r.failure.is_none() {
        let mut c = cmd(binary(name));
        c.arg("-merge=1")
            .arg(&corpus)
            .arg(&found)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        status(&mut c)?;
    }
    Ok(r)
}

impl TargetRun {
    /// Reads one line of libFuzzer's output.
    fn line(&mut self, line: &str) {
        let stat = |key: &str| -> Option<u64> { line.strip_prefix(key)?.trim().parse().ok() };
        if let Some(n) = stat("stat::number_of_executed_units:") {
            self.runs = n;
        } else if let Some(n) = stat("stat::average_exec_per_sec:") {
            self.execs_per_sec = n;
        } else if let Some(n) = stat("stat::new_units_added:") {
            self.new_inputs = n;
        } else if let Some(n) = stat("stat::peak_rss_mb:") {
            self.peak_rss_mb = n;
        } else if let Some(rest) = line.split_once("Test unit written to ").map(|(_, r)| r) {
            self.crash = Some(PathBuf::from(rest.trim()));
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{:<15} {:>10} runs {:>8}/s {:>5} new {:>5} MB  {:.0}s{}",
            self.name,
            self.runs,
            self.execs_per_sec,
            self.new_inputs,
            self.peak_rss_mb,
            self.elapsed.as_secs_f64(),
            self.failure
                .as_ref()
                .map(|f| format!("  FAILED: {f}"))
                .unwrap_or_default()
        )
    }
}

/// Builds and runs every target (those whose name contains `filter`, if given).
pub fn run_all(secs: u64, merge: bool, filter: Option<&str>) -> Result<Vec<TargetRun>> {
    let built = build()?;
    println!("    fuzz targets built in {:.0}s", built.as_secs_f64());
    let mut runs = Vec::new();
    for name in TARGETS
        .iter()
        .filter(|t| filter.is_none_or(|f| t.contains(f)))
    {
        println!("    {name}: {secs}s");
        let r = run_target(name, secs, merge)?;
        println!("    {}", r.summary());
        runs.push(r);
    }
    Ok(runs)
}

/// `cargo xtask fuzz`.
pub fn fuzz(secs: u64, merge: bool, filter: Option<&str>) -> Result<()> {
    step(&format!("fuzz: every target for {secs}s"));
    let t = Instant::now();
    let runs = run_all(secs, merge, filter)?;
    println!();
    println!("==================== fuzz ====================");
    for r in &runs {
        println!("{}", r.summary());
    }
    let failed: Vec<&TargetRun> = runs.iter().filter(|r| r.failure.is_some()).collect();
    println!(
        "{} targets, {} runs, {} failed; {:.0}s in all",
        runs.len(),
        runs.iter().map(|r| r.runs).sum::<u64>(),
        failed.len(),
        t.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!(
            "fuzzing found a crash in {} (reproduce: cargo +nightly fuzz run -O -a <target> <input> in fuzz/)",
            failed.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// Whether cargo-fuzz is installed.
pub fn cargo_fuzz_installed() -> bool {
    Path::new(&run::cargo_home().join("bin/cargo-fuzz")).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_stats_and_crashes_are_read() {
        let mut r = TargetRun::default();
        for l in [
            "#1024\tpulse  cov: 10 ft: 12 corp: 3/30b exec/s: 512 rss: 40Mb",
            "==123== ERROR: libFuzzer: deadly signal",
            "artifact_prefix='fuzz/artifacts/topology/'; Test unit written to fuzz/artifacts/topology/crash-abc",
            "stat::number_of_executed_units: 20480",
            "stat::average_exec_per_sec:     4096",
            "stat::new_units_added:          7",
            "stat::peak_rss_mb:              55",
        ] {
            r.line(l);
        }
        assert_eq!(
            (r.runs, r.execs_per_sec, r.new_inputs, r.peak_rss_mb),
            (20480, 4096, 7, 55)
        );
        assert_eq!(
            r.crash,
            Some(PathBuf::from("fuzz/artifacts/topology/crash-abc"))
        );
    }
}
