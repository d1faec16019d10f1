//! Sleeve figures: TCP single stream (iperf3) through the encrypted sleeve (`--password`)
//! and the plain sleeve (`--datapath sleeve`), against kernel VXLAN in the same run, with
//! the routers' CPU time per Gbit/s. Written to the Sleeve section of BENCHMARKS.md.

use std::time::Duration;

use anyhow::{Context, Result};
use weave_tests::{pair, Mode, Pair};

use crate::run::{self, step};

const BEGIN: &str = "<!-- sleeve:begin (written by `cargo xtask bench`) -->";
const END: &str = "<!-- sleeve:end -->";

/// CPU seconds (user + system) used so far by every weave-router in the pair's hosts.
fn routers_cpu_seconds(p: &Pair) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0.0;
    for h in &p.bed.hosts {
        for pid in weave_tests::router::router_pids(h.ns.name()) {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the command name: utime and stime are the 12th and 13th.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            total += (t(11) + t(12)) / ticks;
        }
    }
    total
}

/// One iperf3 TCP single-stream run: Gbit/s and the routers' CPU seconds per Gbit.
fn tcp1(p: &Pair, seconds: u32) -> Result<(f64, f64)> {
    let dst = p.server_ip();
    let secs = seconds.to_string();
    let cpu0 = routers_cpu_seconds(p);
    let out = p.client().ns.run_timeout(
        &["iperf3", "-c", &dst, "-t", &secs, "-J"],
        Duration::from_secs(seconds as u64 + 30),
    )?;
    let cpu = routers_cpu_seconds(p) - cpu0;
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", out.stderr.trim()))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3: {e}");
    }
    let gbits = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second")?
        / 1e9;
    let gbit_total = gbits * seconds as f64;
    Ok((
        gbits,
        if gbit_total > 0.0 {
            cpu / gbit_total
        } else {
            0.0
        },
    ))
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "—".into())
}

/// Runs the sleeve figures and writes their section.
pub fn run(runs: usize, seconds: u32, mtu: u32, output: &std::path::Path) -> Result<()> {
    let subjects: Vec<(&str, Mode, &str)> = vec![
        ("kernel VXLAN (no encryption)", Mode::KernelVxlan, "cxbv"),
        (
            "weave-router sleeve, unencrypted (`--datapath sleeve`)",
            Mode::Weave {
                extra: vec!["--datapath".into(), "sleeve".into()],
            },
            "cxbp",
        ),
        (
            "weave-router sleeve, encrypted (`--password`)",
            Mode::Weave {
                extra: vec!["--password".into(), "bench password".into()],
            },
            "cxbe",
        ),
    ];
    let load_before = crate::bench::loadavg();
    let mut pairs = Vec::new();
    for (label, mode, prefix) in &subjects {
        step(&format!("sleeve bench: setting up {label}"));
        let p = pair(prefix, mode.clone(), mtu).with_context(|| format!("set up {label}"))?;
        let server = p.server().ns.spawn(&["iperf3", "-s"])?;
        pairs.push((p, server));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut gbits: Vec<Vec<f64>> = vec![Vec::new(); subjects.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); subjects.len()];
    let mut errors: Vec<String> = Vec::new();
    for r in 1..=runs {
        for (i, (label, _, _)) in subjects.iter().enumerate() {
            step(&format!("sleeve bench run {r}/{runs}: {label}"));
            match tcp1(&pairs[i].0, seconds) {
                Ok((g, c)) => {
                    println!("    TCP {g:.2} Gbit/s, routers' CPU {c:.2} s per Gbit");
                    gbits[i].push(g);
                    cpu[i].push(c);
                }
                Err(e) => {
                    println!("    failed: {e}");
                    errors.push(format!("{label}: {e}"));
                }
            }
        }
    }
    drop(pairs);
    let medians: Vec<Option<f64>> = gbits.iter_mut().map(|v| median(v)).collect();
    let mut table = String::from(
        "| data path | TCP single stream (Gbit/s) | routers' CPU (s per Gbit) | vs kernel VXLAN |\n|---|---:|---:|---:|\n",
    );
    for (i, (label, _, _)) in subjects.iter().enumerate() {
        let ratio = match (medians[i], medians[0]) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.0} %", 100.0 * a / b),
            _ => "—".into(),
        };
        let cpu_cell = if i == 0 {
            "— (kernel)".to_string()
        } else {
            fmt(median(&mut cpu[i]), 2)
        };
        table.push_str(&format!(
            "| {label} | {} | {cpu_cell} | {ratio} |\n",
            fmt(medians[i], 2)
        ));
    }
    let errors = if errors.is_empty() {
        String::new()
    } else {
        format!("\nFailed runs: {}\n", errors.join("; "))
    };
    let section = format!(
        "## Sleeve (user-space data path)\n\n\
         Written by `cargo xtask bench --sleeve-only` on {} (commit {}); 2 vCPU, two hosts in \
         network namespaces on a veth underlay, container MTU {mtu}, iperf3 TCP one stream, \
         {seconds} s per run, median of {runs} runs taken in turns. Load average: {load_before} \
         before, {} after. CPU: user + system time of both routers during the run, divided by \
         the gigabits carried (the kernel's own share, softirq included, is not in it).\n\n\
         {table}\n\
         Targets (encryption issue): plain sleeve ≥ 1.5 Gbit/s; encrypted ≥ 5× a user-space \
         WireGuard (boringtun, ≈ 0.3–0.5 Gbit/s here by the issue's figure; boringtun was not \
         run by this benchmark).\n{errors}",
        run::utc_now(),
        run::git_head(),
        crate::bench::loadavg(),
    );
    println!("{section}");
    run::write_marked_section(output, BEGIN, END, &section)
}
