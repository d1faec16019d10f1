//! The DNS part of `cargo xtask bench` (alone: `cargo xtask bench --dns-only`): dnsperf in a
//! container, against the router's DNS server, for names the store holds.
//!
//! A benchmark, not a test: it reports what it measured and never fails on the numbers.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use weave_tests::{LaunchOpts, TestBed};

use crate::run::step;

/// Marks around the section this part owns in BENCHMARKS.md.
const BEGIN: &str = "<!-- dns-bench:begin (written by `cargo xtask bench --dns-only`) -->";
const END: &str = "<!-- dns-bench:end -->";

/// Names registered for the run (plus the container's own).
const NAMES: u32 = 100;
const CLIENTS: u32 = 8;
const OUTSTANDING: u32 = 200;
/// The load of the latency run, in queries per second.
const LATENCY_QPS: u32 = 20_000;

/// What one dnsperf run reported.
#[derive(Debug, Default)]
struct Run {
    qps: Option<f64>,
    avg_ms: Option<f64>,
    lost: Option<String>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

fn field<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(str::trim)
}

/// Queries per second, average latency and lost queries from dnsperf's summary.
fn parse_summary(text: &str) -> Run {
    Run {
        qps: field(text, "Queries per second:").and_then(|v| v.parse().ok()),
        avg_ms: field(text, "Average Latency (s):")
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|s| s * 1e3),
        lost: field(text, "Queries lost:").map(str::to_string),
        ..Run::default()
    }
}

/// Per-query latencies (seconds) from dnsperf -v lines (`> NOERROR name A 0.000123`).
fn parse_latencies(text: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// Sets up one host with a router and a container, runs dnsperf twice (full speed for
/// throughput, then at [`LATENCY_QPS`] with per-query latencies) and returns the section.
pub fn run(seconds: u32) -> Result<String> {
    let load_before = crate::bench::loadavg();
    step("DNS: setting up one host, a router and a container");
    let mut bed = TestBed::new("wdnsb", 1).context("test bed")?;
    bed.launch(1, &LaunchOpts::default()).context("launch")?;
    let c = bed.add_container(1, "c1")?;
    let path = bed.container(c).ns.path();
    let r = bed.router(1);
    r.check(&[
        "attach",
        "10.2.1.1/24",
        "--netns",
        &path.to_string_lossy(),
        "--hostname",
        "w1",
    ])?;
    let mut queries = String::from("w1.weave.local A\n");
    for i in 1..=NAMES {
        let addr = format!("10.3.{}.{}", i / 250, i % 250 + 1);
        r.check(&["dns-add", &addr, "-h", &format!("n{i}")])?;
        let _ = writeln!(queries, "n{i}.weave.local A");
    }
    let file = std::env::temp_dir().join("wdnsb-queries.txt");
    std::fs::write(&file, &queries)?;
    let file = file.to_string_lossy().to_string();
    let ns = &bed.container(c).ns;
    let dig = ns.run(&["dig", "@169.254.53.53", "+short", "n1.weave.local"])?;
    anyhow::ensure!(
        dig.stdout.trim() == "10.3.0.2",
        "the container does not get answers: {dig:?}"
    );

    let secs = seconds.to_string();
    let (clients, outstanding) = (CLIENTS.to_string(), OUTSTANDING.to_string());
    let base = [
        "dnsperf",
        "-s",
        "169.254.53.53",
        "-d",
        &file,
        "-l",
        &secs,
        "-c",
        &clients,
        "-q",
        &outstanding,
        "-t",
        "2",
    ];
    step(&format!("DNS: dnsperf, {seconds} s at full speed"));
    let timeout = Duration::from_secs(u64::from(seconds) + 60);
    let out = ns.run_timeout(&base, timeout)?;
    let mut full = parse_summary(&out.stdout);
    println!(
        "    {} queries/s, average {} ms, lost {}",
        full.qps.map_or("?".into(), |v| format!("{v:.0}")),
        full.avg_ms.map_or("?".into(), |v| format!("{v:.3}")),
        full.lost.as_deref().unwrap_or("?")
    );
    anyhow::ensure!(full.qps.is_some(), "no result from dnsperf: {out:?}");

    step(&format!(
        "DNS: dnsperf -v, {seconds} s at {LATENCY_QPS} queries/s"
    ));
    let qps = LATENCY_QPS.to_string();
    let mut argv: Vec<&str> = base.to_vec();
    argv.extend(["-Q", &qps, "-v"]);
    let out = ns.run_timeout(&argv, timeout)?;
    let mut lat = parse_latencies(&out.stdout);
    lat.sort_by(f64::total_cmp);
    let paced = parse_summary(&out.stdout);
    full.p50_ms = percentile(&lat, 0.50).map(|s| s * 1e3);
    full.p99_ms = percentile(&lat, 0.99).map(|s| s * 1e3);
    println!(
        "    p50 {} ms, p99 {} ms over {} queries",
        full.p50_ms.map_or("?".into(), |v| format!("{v:.3}")),
        full.p99_ms.map_or("?".into(), |v| format!("{v:.3}")),
        lat.len()
    );
    drop(bed);
    let load = format!("{load_before} before, {} after", crate::bench::loadavg());
    Ok(render(seconds, &full, &paced, lat.len(), &load))
}

fn render(seconds: u32, full: &Run, paced: &Run, samples: usize, load: &str) -> String {
    let f = |v: Option<f64>, p: usize| v.map_or("–".into(), |v| format!("{v:.p$}"));
    let date = crate::run::sh("date -u +%Y-%m-%d_%H:%M_UTC").replace('_', " ");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut s = String::new();
    let _ = writeln!(s, "## DNS\n");
    let _ = writeln!(
        s,
        "`cargo xtask bench --dns-only`, {date}, {cpus} CPUs, load average {load}. dnsperf in a \
         container (over `ethwe`, the TX program and the `weave` bridge) against the router's \
         DNS server at 169.254.53.53, UDP, {} names in the store, {CLIENTS} clients, at most \
         {OUTSTANDING} queries outstanding, {seconds} s per run; dnsperf and the router share \
         the machine.\n",
        NAMES + 1
    );
    let _ = writeln!(
        s,
        "| run | queries/s | average latency | p50 | p99 | lost |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|");
    let _ = writeln!(
        s,
        "| full speed | {} | {} ms | | | {} |",
        f(full.qps, 0),
        f(full.avg_ms, 3),
        full.lost.as_deref().unwrap_or("–")
    );
    let _ = writeln!(
        s,
        "| paced at {LATENCY_QPS}/s | {} | {} ms | {} ms | {} ms | {} |",
        f(paced.qps, 0),
        f(paced.avg_ms, 3),
        f(full.p50_ms, 3),
        f(full.p99_ms, 3),
        paced.lost.as_deref().unwrap_or("–")
    );
    let _ = writeln!(
        s,
        "\nPercentiles from the per-query latencies dnsperf -v reports ({samples} queries)."
    );
    s
}

/// Puts `section` between this part's markers in `path` (appended when they are not there
/// yet), keeping everything else.
pub fn write_section(path: &std::path::Path, section: &str) -> Result<()> {
    crate::run::write_marked_section(path, BEGIN, END, section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsperf_output_parses() {
        let text = "Statistics:\n\n  Queries sent:         100\n  Queries completed:    99 (99.00%)\n  Queries lost:         1 (1.00%)\n\n  Queries per second:   51234.567\n\n  Average Latency (s):  0.000321 (min 0.000010, max 0.004000)\n";
        let r = parse_summary(text);
        assert_eq!(r.qps, Some(51234.567));
        assert!((r.avg_ms.unwrap() - 0.321).abs() < 1e-9);
        assert_eq!(r.lost.as_deref(), Some("1 (1.00%)"));
        let lat = parse_latencies(
            "> NOERROR n1.weave.local A 0.000100\n> NOERROR n2.weave.local A 0.000300\nnoise\n",
        );
        assert_eq!(lat, [0.0001, 0.0003]);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.99), Some(3.0));
    }
}
