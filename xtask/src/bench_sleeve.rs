//! Sleeve figures: TCP single stream (iperf3) through the encrypted sleeve (`--password`)
//! and the plain sleeve (`--datapath sleeve`), against kernel VXLAN in the same run, with
//! the routers' CPU time per Gbit/s; the encrypted sleeve relayed (a line host1–host2–host3
//! whose underlay blocks host1↔host3, host1's container to host3's, sealed again at host2);
//! and a user-space WireGuard (boringtun-cli, when installed: `cargo install boringtun-cli`;
//! `wg` from wireguard-tools) between two hosts, and between a container behind each (routed
//! by the hosts through the tunnel). Written to the Sleeve section of BENCHMARKS.md.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use weave_tests::mesh::Report;
use weave_tests::partial_mesh;
use weave_tests::{pair, Background, Mode, Netns, Pair, TestBed};

use crate::run::{self, step};

const BEGIN: &str = "<!-- sleeve:begin (written by `cargo xtask bench`) -->";
const END: &str = "<!-- sleeve:end -->";

/// The password of the encrypted subjects.
const PASSWORD: &str = "bench password";

/// Relayed encrypted throughput must reach this share of the direct encrypted one.
const RELAYED_TARGET: f64 = 0.5;
/// Encrypted sleeve / boringtun targets: TCP one stream, UDP 64 B packets/s.
const TCP_VS_BORINGTUN: f64 = 10.0;
const UDP64_VS_BORINGTUN: f64 = 1.5;

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
    /// A line of three routers; `client` and `server` are container indices in `bed`.
    Line {
        bed: TestBed,
        client: usize,
        server: usize,
    },
    /// With `containers`, a container behind each host (routed through its WireGuard
    /// device) is the client and the server; else the hosts themselves.
    Boringtun {
        bed: TestBed,
        daemons: Vec<Background>,
        containers: bool,
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
            Carrier::Line { bed, .. } => bed
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
            Carrier::Line { bed, client, .. } => &bed.container(*client).ns,
            Carrier::Boringtun {
                bed,
                containers: true,
                ..
            } => &bed.container(0).ns,
            Carrier::Boringtun { bed, .. } => &bed.host(1).ns,
        }
    }

    fn server(&self) -> &Netns {
        match self {
            Carrier::Routers(p) => &p.server().ns,
            Carrier::Line { bed, server, .. } => &bed.container(*server).ns,
            Carrier::Boringtun {
                bed,
                containers: true,
                ..
            } => &bed.container(1).ns,
            Carrier::Boringtun { bed, .. } => &bed.host(2).ns,
        }
    }

    fn server_ip(&self) -> String {
        match self {
            Carrier::Routers(p) => p.server_ip(),
            Carrier::Line { .. } => "10.2.1.3".into(),
            Carrier::Boringtun {
                containers: true, ..
            } => "10.98.2.2".into(),
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

/// Two hosts joined by boringtun (WireGuard in user space), 10.99.0.1 and 10.99.0.2; with
/// `containers`, behind each host a container, 10.98.1.2 and 10.98.2.2, on a veth the host
/// routes through its WireGuard device (what a hand-made WireGuard mesh gives containers),
/// MTU `mtu`.
fn boringtun_pair(cli: &str, containers: bool, mtu: u32) -> Result<Carrier> {
    let prefix = if containers { "cxbc" } else { "cxbw" };
    let mut bed = TestBed::new(prefix, 2)?;
    let mut daemons = Vec::new();
    let mut keys = Vec::new();
    for i in 1..=2 {
        let ns = &bed.host(i).ns;
        let dev = format!("{prefix}wg{i}");
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
        let dev = format!("{prefix}wg{i}");
        let key_file = format!("/tmp/{dev}.key");
        ns.sh(&format!(
            "wg set {dev} private-key {key_file} listen-port 51820 peer {} endpoint {}:51820 allowed-ips 10.99.0.{j}/32,10.98.{j}.0/24",
            keys[j - 1].1,
            weave_tests::host_addr(j)
        ))?;
        let _ = std::fs::remove_file(&key_file);
        ns.ip(&format!("addr add 10.99.0.{i}/24 dev {dev}"))?;
        ns.ip(&format!("link set {dev} up"))?;
        if containers {
            ns.ip(&format!("route add 10.98.{j}.0/24 dev {dev}"))?;
            bed.add_routed_container(i, "vc", &format!("10.98.{i}"), mtu)?;
        }
    }
    let carrier = Carrier::Boringtun {
        bed,
        daemons,
        containers,
    };
    let (client, server) = (carrier.client(), carrier.server_ip());
    weave_tests::cmd::wait_for("boringtun to carry a ping", Duration::from_secs(15), || {
        client
            .run(&["ping", "-c", "1", "-W", "1", &server])
            .ok()
            .filter(|o| o.success())
            .map(|_| ())
    })?;
    Ok(carrier)
}

/// The encrypted line host1–host2–host3 with host1↔host3 cut on the underlay (see
/// [`partial_mesh::line`]), container MTU `mtu`, a container on host1 (the client) and one
/// on host3 (the server, 10.2.1.3); returns once host1 routes to host3 through host2 and
/// the client reaches the server.
fn relayed_line(prefix: &str, mtu: u32) -> Result<Carrier> {
    let mtu = mtu.to_string();
    let extra = ["--mtu", mtu.as_str(), "--password", PASSWORD];
    // `line` panics when gossip does not converge; that fails this subject, not the bench.
    let mut bed = std::panic::catch_unwind(|| partial_mesh::line(prefix, &extra)).map_err(|p| {
        let why = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("panic");
        anyhow!("the line did not come up: {why}")
    })?;
    let client = bed.attach_container(1, "c", "10.2.1.1/24")?;
    let server = bed.attach_container(3, "c", "10.2.1.3/24")?;
    let via = Report::of(bed.router(1))?.next_hop(&bed.peer_name(3));
    if via.as_deref() != Some(bed.peer_name(2).as_str()) {
        anyhow::bail!(
            "host1 routes to host3 via {via:?}, not host2\n{}",
            partial_mesh::dump(&bed)
        );
    }
    bed.container(client)
        .wait_ping("10.2.1.3", Duration::from_secs(20))
        .with_context(|| partial_mesh::dump(&bed))?;
    Ok(Carrier::Line {
        bed,
        client,
        server,
    })
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

/// One iperf3 UDP run of 64-byte datagrams at full speed: thousands of packets per second
/// received (sent minus lost).
fn udp64_kpps(p: &Carrier, seconds: u32) -> Result<f64> {
    let dst = p.server_ip();
    let secs = seconds.to_string();
    let out = p.client().run_timeout(
        &[
            "iperf3", "-c", &dst, "-t", &secs, "-J", "-u", "-b", "0", "-l", "64",
        ],
        Duration::from_secs(seconds as u64 + 30),
    )?;
    let v = crate::bench::iperf_json(&out.stdout, &out.stderr)?;
    crate::bench::udp_received_kpps(&v, seconds)
}

/// Average round trip of [`crate::bench::PINGS_PER_RUN`] pings 20 ms apart, in milliseconds.
fn ping_ms(p: &Carrier) -> Result<f64> {
    let out = p.client().run_timeout(
        &crate::bench::ping_command(&p.server_ip()),
        Duration::from_secs(30),
    )?;
    crate::bench::ping_avg_from(&out.stdout)
}

/// The median, or `None` without samples.
fn median(v: &mut [f64]) -> Option<f64> {
    (!v.is_empty()).then(|| crate::stats::median(v))
}

fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "—".into())
}

/// How a subject is set up, and what it is compared with under the table.
#[derive(Clone)]
enum Subject {
    KernelVxlan,
    Plain,
    Encrypted,
    /// The encrypted sleeve from host1 to host3 through host2.
    Relayed,
    Boringtun(String),
    /// boringtun between two hosts, a container behind each.
    BoringtunContainers(String),
}

impl Subject {
    fn label(&self) -> &'static str {
        match self {
            Subject::KernelVxlan => "kernel VXLAN (no encryption)",
            Subject::Plain => "weave-router sleeve, unencrypted (`--datapath sleeve`)",
            Subject::Encrypted => "weave-router sleeve, encrypted (`--password`)",
            Subject::Relayed => {
                "weave-router sleeve, encrypted, relayed host1→host3 through host2 (`--password`)"
            }
            Subject::Boringtun(_) => "boringtun-cli (WireGuard in user space), host to host",
            Subject::BoringtunContainers(_) => {
                "boringtun-cli (WireGuard in user space), container to container (routed by the hosts)"
            }
        }
    }

    /// Whether UDP 64 B packets/s and ping are measured too (the encrypted small-packet
    /// comparison).
    fn small_packets(&self) -> bool {
        matches!(
            self,
            Subject::Encrypted | Subject::Boringtun(_) | Subject::BoringtunContainers(_)
        )
    }

    fn set_up(&self, mtu: u32) -> Result<Carrier> {
        let weave = |prefix: &str, extra: &[&str]| -> Result<Carrier> {
            let extra = extra.iter().map(|s| s.to_string()).collect();
            Ok(Carrier::Routers(pair(prefix, Mode::Weave { extra }, mtu)?))
        };
        match self {
            Subject::KernelVxlan => Ok(Carrier::Routers(pair("cxbv", Mode::KernelVxlan, mtu)?)),
            Subject::Plain => weave("cxbp", &["--datapath", "sleeve"]),
            Subject::Encrypted => weave("cxbe", &["--password", PASSWORD]),
            Subject::Relayed => relayed_line("cxbr", mtu),
            Subject::Boringtun(cli) => boringtun_pair(cli, false, mtu),
            Subject::BoringtunContainers(cli) => boringtun_pair(cli, true, mtu),
        }
    }
}

/// "`a` / `b` in this run: N×" and, with a `target`, whether N reaches it.
fn ratio_line(what: &str, a: Option<f64>, b: Option<f64>, target: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => {
            let r = a / b;
            // Against a target, one digit more, so that a miss never rounds up to it.
            let (shown, verdict) = match target {
                Some(t) => {
                    let met = if r >= t { "met" } else { "missed" };
                    (format!("{r:.3}"), format!(" (target ≥ {t}×: {met})"))
                }
                None => (format!("{r:.2}"), String::new()),
            };
            format!("- {what} in this run: {shown}×{verdict}.\n")
        }
        _ => format!("- {what}: not measured in this run.\n"),
    }
}

/// Runs the sleeve figures and writes their section.
pub fn run(runs: usize, seconds: u32, mtu: u32, output: &std::path::Path) -> Result<()> {
    let mut subjects = vec![
        Subject::KernelVxlan,
        Subject::Plain,
        Subject::Encrypted,
        Subject::Relayed,
    ];
    if let Some(cli) = boringtun_cli() {
        subjects.push(Subject::Boringtun(cli.clone()));
        subjects.push(Subject::BoringtunContainers(cli));
    }
    let load_before = crate::bench::loadavg();
    let mut pairs = Vec::new();
    for subject in &subjects {
        let label = subject.label();
        step(&format!("sleeve bench: setting up {label}"));
        let p = subject
            .set_up(mtu)
            .with_context(|| format!("set up {label}"))?;
        let server = p.server().spawn(&["iperf3", "-s"])?;
        pairs.push((p, server));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut gbits: Vec<Vec<f64>> = vec![Vec::new(); subjects.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); subjects.len()];
    let mut errors: Vec<String> = Vec::new();
    // Relayed / direct encrypted within each run: the two are measured one after the other,
    // so the machine's other load changes less between them than across runs.
    let mut paired: Vec<f64> = Vec::new();
    let mut kpps: Vec<Vec<f64>> = vec![Vec::new(); subjects.len()];
    let mut ping: Vec<Vec<f64>> = vec![Vec::new(); subjects.len()];
    for r in 1..=runs {
        let (mut direct, mut relayed) = (None, None);
        for (i, subject) in subjects.iter().enumerate() {
            let label = subject.label();
            step(&format!("sleeve bench run {r}/{runs}: {label}"));
            match tcp1(&pairs[i].0, seconds) {
                Ok((g, c)) => {
                    println!("    TCP {g:.2} Gbit/s, routers' CPU {c:.2} s per Gbit");
                    gbits[i].push(g);
                    cpu[i].push(c);
                    match subject {
                        Subject::Encrypted => direct = Some(g),
                        Subject::Relayed => relayed = Some(g),
                        _ => {}
                    }
                }
                Err(e) => {
                    println!("    failed: {e}");
                    errors.push(format!("{label}: {e}"));
                }
            }
            if !subject.small_packets() {
                continue;
            }
            match udp64_kpps(&pairs[i].0, seconds) {
                Ok(k) => {
                    println!("    UDP 64 B {k:.1} kpps");
                    kpps[i].push(k);
                }
                Err(e) => errors.push(format!("{label} UDP 64 B: {e}")),
            }
            match ping_ms(&pairs[i].0) {
                Ok(ms) => {
                    println!("    ping {ms:.3} ms");
                    ping[i].push(ms);
                }
                Err(e) => errors.push(format!("{label} ping: {e}")),
            }
        }
        if let (Some(d), Some(r)) = (direct, relayed) {
            if d > 0.0 {
                paired.push(r / d);
            }
        }
    }
    drop(pairs);
    let medians: Vec<Option<f64>> = gbits.iter_mut().map(|v| median(v)).collect();
    let median_of =
        |want: fn(&Subject) -> bool| subjects.iter().position(want).and_then(|i| medians[i]);
    let kernel = median_of(|s| matches!(s, Subject::KernelVxlan));
    let encrypted = median_of(|s| matches!(s, Subject::Encrypted));
    let relayed = median_of(|s| matches!(s, Subject::Relayed));
    let wg = median_of(|s| matches!(s, Subject::Boringtun(_)));
    let mut table = String::from(
        "| data path | TCP single stream (Gbit/s) | routers' CPU (s per Gbit) | vs kernel VXLAN |\n|---|---:|---:|---:|\n",
    );
    for (i, subject) in subjects.iter().enumerate() {
        let ratio = match (medians[i], kernel) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.0} %", 100.0 * a / b),
            _ => "—".into(),
        };
        let cpu_cell = if matches!(subject, Subject::KernelVxlan) {
            "— (kernel)".to_string()
        } else {
            fmt(median(&mut cpu[i]), 2)
        };
        table.push_str(&format!(
            "| {} | {} | {cpu_cell} | {ratio} |\n",
            subject.label(),
            fmt(medians[i], 2)
        ));
    }
    let mut comparisons = ratio_line(
        "Relayed / direct encrypted sleeve",
        relayed,
        encrypted,
        Some(RELAYED_TARGET),
    );
    if let Some(m) = median(&mut paired) {
        comparisons += &format!(
            "- Relayed / direct encrypted run by run (measured one after the other): median \
             {m:.2}× of {} runs.\n",
            paired.len()
        );
    }
    let mut small =
        String::from("| data path | UDP 64 B (kpps received) | ping avg (ms) |\n|---|---:|---:|\n");
    for (i, subject) in subjects.iter().enumerate() {
        if subject.small_packets() {
            small.push_str(&format!(
                "| {} | {} | {} |\n",
                subject.label(),
                fmt(median(&mut kpps[i]), 1),
                fmt(median(&mut ping[i]), 3)
            ));
        }
    }
    let small_median = |want: fn(&Subject) -> bool, of: &mut Vec<Vec<f64>>| {
        subjects
            .iter()
            .position(want)
            .and_then(|i| median(&mut of[i]))
    };
    let (enc_kpps, wg_kpps) = (
        small_median(|s| matches!(s, Subject::Encrypted), &mut kpps),
        small_median(|s| matches!(s, Subject::Boringtun(_)), &mut kpps),
    );
    let (enc_ping, wg_ping) = (
        small_median(|s| matches!(s, Subject::Encrypted), &mut ping),
        small_median(|s| matches!(s, Subject::Boringtun(_)), &mut ping),
    );
    let (wgc_kpps, wgc_ping) = (
        small_median(|s| matches!(s, Subject::BoringtunContainers(_)), &mut kpps),
        small_median(|s| matches!(s, Subject::BoringtunContainers(_)), &mut ping),
    );
    if wg.is_some() {
        comparisons += &ratio_line(
            "Encrypted sleeve / boringtun, TCP",
            encrypted,
            wg,
            Some(TCP_VS_BORINGTUN),
        );
        comparisons += &ratio_line(
            "Encrypted sleeve / boringtun, UDP 64 B packets/s",
            enc_kpps,
            wg_kpps,
            Some(UDP64_VS_BORINGTUN),
        );
        // Lower is better: boringtun's round trip over ours, so ≥ 1 meets it.
        comparisons += &ratio_line(
            "boringtun / encrypted sleeve, ping round trip (≥ 1: ours no slower)",
            wg_ping,
            enc_ping,
            Some(1.0),
        );
        comparisons += &ratio_line(
            "Encrypted sleeve / boringtun container to container, UDP 64 B packets/s",
            enc_kpps,
            wgc_kpps,
            Some(UDP64_VS_BORINGTUN),
        );
        comparisons += &ratio_line(
            "boringtun container to container / encrypted sleeve, ping round trip (≥ 1: ours no slower)",
            wgc_ping,
            enc_ping,
            Some(1.0),
        );
        comparisons += &ratio_line(
            "Relayed encrypted sleeve / boringtun (direct)",
            relayed,
            wg,
            None,
        );
    } else {
        comparisons += "- boringtun was not measured (install it: `cargo install boringtun-cli`; \
                        needs `wg` from wireguard-tools).\n";
    }
    let errors = if errors.is_empty() {
        String::new()
    } else {
        format!("\nFailed runs: {}\n", errors.join("; "))
    };
    let pings = crate::bench::PINGS_PER_RUN;
    let section = format!(
        "## Sleeve (user-space data path)\n\n\
         Written by `cargo xtask bench --sleeve-only` on {} (commit {}); 2 vCPU, two hosts in \
         network namespaces on a veth underlay (for the relayed row three, a line \
         host1–host2–host3 whose underlay drops host1↔host3, so host2 opens each frame and \
         seals it again for host3; its three routers share the same two CPUs), container MTU {mtu}, iperf3 TCP one stream, \
         {seconds} s per run, median of {runs} runs taken in turns. Load average: {load_before} \
         before, {} after. CPU: user + system time of both routers (relayed: all three; \
         boringtun: both boringtun daemons) during the run, divided by the gigabits carried (the \
         kernel's own share, softirq included, is not in it).\n\n\
         {table}\n\
         Small packets, same run (encrypted only): iperf3 UDP with 64-byte datagrams at full \
         speed, {seconds} s (packets received per second, sent minus lost), and the average of \
         {pings} pings 20 ms apart; medians of {runs} runs.\n\n\
         {small}\n{comparisons}\n\
         Targets (encryption issue): plain sleeve ≥ 1.5 Gbit/s; encrypted ≥ 5× a user-space \
         WireGuard (boringtun); performance round 2: encrypted TCP ≥ {TCP_VS_BORINGTUN}×, UDP \
         64 B ≥ {UDP64_VS_BORINGTUN}× boringtun, ping no slower than boringtun. Target (relaying): relayed encrypted ≥ {RELAYED_TARGET}× direct \
         encrypted. boringtun runs host to host (its tunnel between the two host \
         namespaces, MTU 1420), and container to container (a container behind each host on a \
         veth of MTU {mtu}, which the host routes through its tunnel, as a hand-made WireGuard \
         mesh carries containers); the others container to container.\n{errors}",
        run::utc_now(),
        run::git_head(),
        crate::bench::loadavg(),
    );
    println!("{section}");
    run::write_marked_section(output, BEGIN, END, &section)
}
