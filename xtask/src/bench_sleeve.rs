//! Sleeve figures: TCP single stream (iperf3) through the encrypted sleeve (`--password`)
//! and the plain sleeve (`--datapath sleeve`), against kernel VXLAN in the same run, with
//! the routers' CPU time per Gbit/s, and a user-space WireGuard (boringtun-cli, when
//! installed: `cargo install boringtun-cli`; `wg` from wireguard-tools) between the same
//! two hosts. Written to the Sleeve section of BENCHMARKS.md.

use std::time::Duration;

use anyhow::{Context, Result};
use weave_tests::{pair, Background, Mode, Netns, Pair, TestBed};

use crate::run::{self, step};

const BEGIN: &str = "<!-- sleeve:begin (written by `cargo xtask bench`) -->";
const END: &str = "<!-- sleeve:end -->";

/// CPU seconds (user + system) used so far by the processes `pids`.
fn cpu_seconds(pids: impl IntoIterator<Item = i32>) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0.0;
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name: utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total += (t(11) + t(12)) / ticks;
    }
    total
}

/// The data-path processes of a subject: weave-routers, or boringtun.
enum Carrier {
    Routers(Pair),
    Boringtun {
        bed: TestBed,
        daemons: Vec<Background>,
    },
}

impl Carrier {
    fn pids(&self) -> Vec<i32> {
        match self {
            Carrier::Routers(p) => p
                .bed
                .hosts
                .iter()
                .flat_map(|h| weave_tests::router::router_pids(h.ns.name()))
                .collect(),
            Carrier::Boringtun { daemons, .. } => daemons
                .iter()
                .filter_map(|d| d.pid())
                .map(|p| p as i32)
                .collect(),
        }
    }

    fn client(&self) -> &Netns {
        match self {
            Carrier::Routers(p) => &p.client().ns,
            Carrier::Boringtun { bed, .. } => &bed.host(1).ns,
        }
    }

    fn server(&self) -> &Netns {
        match self {
            Carrier::Routers(p) => &p.server().ns,
            Carrier::Boringtun { bed, .. } => &bed.host(2).ns,
        }
    }

    fn server_ip(&self) -> String {
        match self {
            Carrier::Routers(p) => p.server_ip(),
            Carrier::Boringtun { .. } => "10.99.0.2".into(),
        }
    }
}

/// boringtun-cli: `$BORINGTUN_CLI`, else on PATH (`$CARGO_HOME/bin` included), else
/// installed from crates.io (`cargo install boringtun-cli`); `None` when that fails.
fn boringtun_cli() -> Option<String> {
    if let Ok(p) = std::env::var("BORINGTUN_CLI") {
        return Some(p);
    }
    let find = || {
        let out = run::cmd("sh")
            .args(["-c", "command -v boringtun-cli"])
            .output()
            .ok()?;
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!p.is_empty()).then_some(p)
    };
    if let Some(p) = find() {
        return Some(p);
    }
    step("sleeve bench: installing boringtun-cli from crates.io");
    if let Err(e) = run::status(run::cargo().args(["install", "--locked", "boringtun-cli"])) {
        println!("    boringtun-cli not installed ({e:#}); it is left out");
        return None;
    }
    find()
}

/// Two hosts joined by boringtun (WireGuard in user space), 10.99.0.1 and 10.99.0.2.
fn boringtun_pair(cli: &str) -> Result<Carrier> {
    let bed = TestBed::new("cxbw", 2)?;
    let mut daemons = Vec::new();
    let mut keys = Vec::new();
    for i in 1..=2 {
        let ns = &bed.host(i).ns;
        let dev = format!("cxwg{i}");
        daemons.push(ns.spawn(&[
            cli,
            &dev,
            "--foreground",
            "--disable-drop-privileges",
            "--log",
            &format!("/tmp/{dev}.log"),
        ])?);
        weave_tests::cmd::wait_for(&format!("{dev} to appear"), Duration::from_secs(10), || {
            ns.ip(&format!("link show {dev}")).ok().map(|_| ())
        })?;
        let key_file = format!("/tmp/{dev}.key");
        let private = ns.check(&["wg", "genkey"])?.trim().to_string();
        std::fs::write(&key_file, &private)?;
        let public = ns
            .check(&["sh", "-c", &format!("wg pubkey < {key_file}")])?
            .trim()
            .to_string();
        keys.push((private, public));
    }
    for i in 1..=2usize {
        let ns = &bed.host(i).ns;
        let j = 3 - i;
        let dev = format!("cxwg{i}");
        let key_file = format!("/tmp/{dev}.key");
        ns.sh(&format!(
            "wg set {dev} private-key {key_file} listen-port 51820 peer {} endpoint {}:51820 allowed-ips 10.99.0.{j}/32",
            keys[j - 1].1,
            weave_tests::host_addr(j)
        ))?;
        let _ = std::fs::remove_file(&key_file);
        ns.ip(&format!("addr add 10.99.0.{i}/24 dev {dev}"))?;
        ns.ip(&format!("link set {dev} up"))?;
    }
    let client = &bed.host(1).ns;
    weave_tests::cmd::wait_for("boringtun to carry a ping", Duration::from_secs(15), || {
        client
            .run(&["ping", "-c", "1", "-W", "1", "10.99.0.2"])
            .ok()
            .filter(|o| o.success())
            .map(|_| ())
    })?;
    Ok(Carrier::Boringtun { bed, daemons })
}

/// One iperf3 TCP single-stream run: Gbit/s and the carriers' CPU seconds per Gbit.
fn tcp1(p: &Carrier, seconds: u32) -> Result<(f64, f64)> {
    let dst = p.server_ip();
    let secs = seconds.to_string();
    let cpu0 = cpu_seconds(p.pids());
    let out = p.client().run_timeout(
        &["iperf3", "-c", &dst, "-t", &secs, "-J"],
        Duration::from_secs(seconds as u64 + 30),
    )?;
    let cpu = cpu_seconds(p.pids()) - cpu0;
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

/// The median, or `None` without samples.
fn median(v: &mut [f64]) -> Option<f64> {
    (!v.is_empty()).then(|| crate::stats::median(v))
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
    let mut subjects: Vec<(String, Option<Mode>, &str)> = subjects
        .into_iter()
        .map(|(l, m, p)| (l.to_string(), Some(m), p))
        .collect();
    let boringtun = boringtun_cli();
    if boringtun.is_some() {
        subjects.push((
            "boringtun-cli (WireGuard in user space), host to host".into(),
            None,
            "cxbw",
        ));
    }
    let load_before = crate::bench::loadavg();
    let mut pairs = Vec::new();
    for (label, mode, prefix) in &subjects {
        step(&format!("sleeve bench: setting up {label}"));
        let p = match mode {
            Some(mode) => Carrier::Routers(
                pair(prefix, mode.clone(), mtu).with_context(|| format!("set up {label}"))?,
            ),
            None => boringtun_pair(boringtun.as_deref().unwrap_or("boringtun-cli"))
                .with_context(|| format!("set up {label}"))?,
        };
        let server = p.server().spawn(&["iperf3", "-s"])?;
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
    let wg = medians.get(3).copied().flatten();
    let versus_wg = match (wg, medians[2]) {
        (Some(w), Some(e)) if w > 0.0 => {
            format!("Encrypted sleeve / boringtun in this run: {:.1}×.\n", e / w)
        }
        _ => "boringtun was not measured (install it: `cargo install boringtun-cli`; needs `wg` \
              from wireguard-tools).\n"
            .into(),
    };
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
         before, {} after. CPU: user + system time of both routers (for boringtun: both \
         boringtun daemons) during the run, divided by the gigabits carried (the kernel's own share, softirq included, is not in it).\n\n\
         {table}\n{versus_wg}\n\
         Targets (encryption issue): plain sleeve ≥ 1.5 Gbit/s; encrypted ≥ 5× a user-space \
         WireGuard (boringtun). boringtun runs host to host (its tunnel between the two host \
         namespaces, MTU 1420), the others container to container.\n{errors}",
        run::utc_now(),
        run::git_head(),
        crate::bench::loadavg(),
    );
    println!("{section}");
    run::write_marked_section(output, BEGIN, END, &section)
}
