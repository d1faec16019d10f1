//! `cargo xtask bench`: the same two-host topology carried three ways, measured in one run.
//!
//! A benchmark, not a test: it reports what it measured and never fails on the numbers.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use weave_tests::{pair_on, Background, Mode, Pair, Underlay};

use crate::run::{self, sh, step};

#[derive(clap::Args)]
pub struct Args {
    /// Runs per measurement (the table shows medians).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Container MTU in every mode.
    #[arg(long, default_value_t = 1450)]
    mtu: u32,
    /// Leave out the `--xdp on` variant of weave-router.
    #[arg(long)]
    no_xdp: bool,
    /// Only the baselines (routed, kernel VXLAN).
    #[arg(long)]
    baselines_only: bool,
    /// Where to write the report (relative to the workspace root).
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: String,
    /// Skip `setup` and `build`.
    #[arg(long)]
    no_build: bool,
    /// Only the DNS part (dnsperf against the router's DNS server).
    #[arg(long)]
    dns_only: bool,
    /// Leave out the DNS part.
    #[arg(long, conflicts_with = "dns_only")]
    no_dns: bool,
    /// Seconds per dnsperf run.
    #[arg(long, default_value_t = 10)]
    dns_seconds: u32,
    /// Only the IP allocation figures (consensus time, local allocation latency).
    #[arg(long)]
    ipam_only: bool,
    /// Only the sleeve figures (encrypted and plain sleeve against kernel VXLAN).
    #[arg(long)]
    sleeve_only: bool,
    /// Leave out the sleeve figures.
    #[arg(long, conflicts_with = "sleeve_only")]
    no_sleeve: bool,
    /// Only the Docker figure (docker run until reachable and resolvable, median of 20).
    #[arg(long)]
    docker_only: bool,
    /// Only the restart figures (pings lost across an upgrade and a kill -9, median of 5).
    #[arg(long)]
    restart: bool,
    /// Only the CNI figure (podman run until reachable, median of 20).
    #[arg(long)]
    podman_only: bool,
    /// Only the per-packet cost of each kernel program path (BPF_PROG_TEST_RUN), with the
    /// programs' instruction counts.
    #[arg(long)]
    programs: bool,
    /// Only the throughput and latency table (none of the parts after it).
    #[arg(long)]
    throughput_only: bool,
    /// Test runs per path for `--programs`.
    #[arg(long, default_value_t = 20_000)]
    program_runs: usize,
}

/// Samples of one mode.
#[derive(Default)]
struct Samples {
    tcp1: Vec<f64>,
    tcp4: Vec<f64>,
    udp_kpps: Vec<f64>,
    ping_ms: Vec<f64>,
    errors: Vec<String>,
}

struct Subject {
    mode: Mode,
    underlay: Underlay,
    prefix: &'static str,
    pair: Option<Pair>,
    server: Option<Background>,
    samples: Samples,
    setup_error: Option<String>,
}

impl Subject {
    /// The mode, and the underlay when it is not the flat one.
    fn label(&self) -> String {
        match self.underlay {
            Underlay::Flat => self.mode.to_string(),
            Underlay::Routed => format!("{}, across a router", self.mode),
        }
    }
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn iperf(p: &Pair, args: &[&str], seconds: u32) -> Result<Value> {
    let dst = p.server_ip();
    let secs = seconds.to_string();
    let mut argv = vec!["iperf3", "-c", &dst, "-t", &secs, "-J"];
    argv.extend_from_slice(args);
    let out = p
        .client()
        .ns
        .run_timeout(&argv, Duration::from_secs(seconds as u64 + 30))?;
    iperf_json(&out.stdout, &out.stderr)
}

/// A section with one timed figure (median, p90 and count of `times`, in ms): its
/// `heading`, the run's date, commit and load, the `setup`, the figure's row and what its
/// time `includes`.
pub(crate) fn timed_figure_section(
    heading: &str,
    setup: &str,
    figure: &str,
    includes: &str,
    times: &mut [f64],
) -> String {
    format!(
        "## {heading}\n\n\
         Written by `cargo xtask bench` on {} (commit {}); 2 vCPU, load average {} at the end; \
         {setup}\n\n\
         | figure | median | p90 | runs |\n|---|---:|---:|---:|\n\
         | {figure} | {:.0} | {:.0} | {} |\n\n\
         {includes}\n",
        run::utc_now(),
        run::git_head(),
        loadavg(),
        crate::stats::median(times),
        crate::stats::percentile(times, 0.9),
        times.len(),
    )
}

/// iperf3's `-J` report, or its own error.
pub(crate) fn iperf_json(stdout: &str, stderr: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(stdout)
        .with_context(|| format!("iperf3 output: {}", stderr.trim()))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3: {e}");
    }
    Ok(v)
}

fn tcp_gbits(p: &Pair, streams: u32, seconds: u32) -> Result<f64> {
    let n = streams.to_string();
    let v = iperf(p, &["-P", &n], seconds)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("iperf3 JSON has no end.sum_received.bits_per_second")
}

fn udp_kpps(p: &Pair, seconds: u32) -> Result<f64> {
    let v = iperf(p, &["-u", "-b", "0", "-l", "64"], seconds)?;
    udp_received_kpps(&v, seconds)
}

/// Thousands of datagrams per second received (sent minus lost) in an iperf3 UDP report
/// of a `seconds`-long run.
pub(crate) fn udp_received_kpps(v: &Value, seconds: u32) -> Result<f64> {
    let sum = &v["end"]["sum"];
    let packets = sum["packets"]
        .as_f64()
        .context("iperf3 JSON has no end.sum.packets")?;
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .unwrap_or(seconds as f64);
    Ok((packets - lost) / secs / 1e3)
}

/// Pings per latency sample, 20 ms apart (the averages of 50 moved by a fifth from run to
/// run on this VM, more than the differences measured).
pub(crate) const PINGS_PER_RUN: u32 = 200;

/// The ping command of one latency sample towards `dst`.
pub(crate) fn ping_command(dst: &str) -> [String; 8] {
    [
        "ping",
        "-n",
        "-q",
        "-c",
        &PINGS_PER_RUN.to_string(),
        "-i",
        "0.02",
        dst,
    ]
    .map(String::from)
}

fn ping_avg_ms(p: &Pair) -> Result<f64> {
    let out = p
        .client()
        .ns
        .run_timeout(&ping_command(&p.server_ip()), Duration::from_secs(30))?;
    ping_avg_from(&out.stdout)
}

/// The average round trip in ping's summary (`rtt min/avg/max/mdev = …`), in milliseconds.
pub(crate) fn ping_avg_from(stdout: &str) -> Result<f64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("rtt") || l.starts_with("round-trip"))
        .with_context(|| format!("no rtt line from ping: {}", stdout.trim()))?;
    let nums = line.split('=').nth(1).context("rtt line")?.trim();
    let avg = nums.split('/').nth(1).context("rtt avg")?;
    avg.trim().parse().context("rtt avg number")
}

fn record(errors: &mut Vec<String>, what: &str, r: Result<f64>, into: &mut Vec<f64>) {
    match r {
        Ok(v) => into.push(v),
        Err(e) => errors.push(format!("{what}: {e:#}")),
    }
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "—".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}

/// Medians of one mode: TCP 1 stream, TCP -P 4, UDP 64 B kpps, ping ms.
type Medians = (Option<f64>, Option<f64>, Option<f64>, Option<f64>);

/// Each target of the plain data path, met or missed, from weave-router's medians (TCP 1
/// stream, UDP kpps, ping) and those of kernel VXLAN and routed: TCP ≥ 1.3× VXLAN and ≥ 1.05×
/// routed, UDP 64 B ≥ 1.8× VXLAN, ping ≤ routed.
fn plain_targets(
    (tcp, udp, ping): (Option<f64>, Option<f64>, Option<f64>),
    vxlan: Option<Medians>,
    routed: Option<Medians>,
) -> String {
    let (vxlan, routed) = (vxlan.unwrap_or_default(), routed.unwrap_or_default());
    let check = |name: &str, ours: Option<f64>, base: Option<f64>, want: f64, higher: bool| {
        let (Some(a), Some(b)) = (ours, base.filter(|b| *b > 0.0)) else {
            return format!("{name}: not measured");
        };
        let r = a / b;
        let (met, sign) = if higher {
            (r >= want, "≥")
        } else {
            (r <= want, "≤")
        };
        let verdict = if met { "met" } else { "missed" };
        format!("{name} {sign} {want}×: **{verdict}** ({r:.2}×)")
    };
    [
        check("TCP / kernel VXLAN", tcp, vxlan.0, 1.3, true),
        check("TCP / routed", tcp, routed.0, 1.05, true),
        check("UDP 64 B / kernel VXLAN", udp, vxlan.2, 1.8, true),
        check("ping / routed", ping, routed.3, 1.0, false),
    ]
    .join("; ")
}

pub fn bench(a: Args) -> Result<()> {
    if !run::is_root() {
        anyhow::bail!("the benchmark creates network namespaces: run it as root");
    }
    if !a.no_build {
        crate::setup::setup()?;
        if !a.baselines_only {
            crate::build::build()?;
        }
    }
    let output = run::root().join(&a.output);
    if a.dns_only {
        return dns_part(&a, &output);
    }
    if a.docker_only {
        return crate::bench_docker::run(a.runs.max(20), &output);
    }
    if a.podman_only {
        return crate::bench_podman::run(a.runs.max(20), &output);
    }
    if a.ipam_only {
        return crate::bench_ipam::run(a.runs.max(5), &output);
    }
    if a.restart {
        return crate::bench_restart::run(a.runs.max(5), &output);
    }
    if a.sleeve_only {
        return crate::bench_sleeve::run(a.runs, a.seconds, a.mtu, &output);
    }
    if a.programs {
        return crate::bench_programs::run(a.program_runs, &output);
    }
    let load_before = loadavg();
    let mut subjects = vec![
        (Mode::Routed, Underlay::Flat, "wtbr"),
        (Mode::KernelVxlan, Underlay::Flat, "wtbv"),
        (Mode::KernelVxlan, Underlay::Routed, "wtbrv"),
    ];
    if !a.baselines_only {
        subjects.push((Mode::Weave { extra: vec![] }, Underlay::Flat, "wtbw"));
        subjects.push((Mode::Weave { extra: vec![] }, Underlay::Routed, "wtbrw"));
        if !a.no_xdp {
            subjects.push((
                Mode::Weave {
                    extra: vec!["--xdp".into(), "on".into()],
                },
                Underlay::Flat,
                "wtbx",
            ));
        }
    }
    let mut subjects: Vec<Subject> = subjects
        .into_iter()
        .map(|(mode, underlay, prefix)| Subject {
            mode,
            underlay,
            prefix,
            pair: None,
            server: None,
            samples: Samples::default(),
            setup_error: None,
        })
        .collect();

    for s in &mut subjects {
        step(&format!("setting up: {}", s.label()));
        match pair_on(s.prefix, s.underlay, s.mode.clone(), a.mtu) {
            Ok(p) => {
                match p.server().ns.spawn(&["iperf3", "-s"]) {
                    Ok(bg) => s.server = Some(bg),
                    Err(e) => s.setup_error = Some(format!("iperf3 server: {e}")),
                }
                s.pair = Some(p);
            }
            Err(e) => {
                println!("    not measured: {e}");
                s.setup_error = Some(e.to_string());
            }
        }
    }
    // Let the iperf3 servers start listening.
    std::thread::sleep(Duration::from_millis(500));

    // Modes take turns run by run, so a slow spell of the machine hits them alike.
    for run in 1..=a.runs {
        for s in &mut subjects {
            let (Some(p), None) = (s.pair.as_ref(), s.setup_error.as_ref()) else {
                continue;
            };
            step(&format!("run {run}/{}: {}", a.runs, s.label()));
            let sm = &mut s.samples;
            record(
                &mut sm.errors,
                "tcp1",
                tcp_gbits(p, 1, a.seconds),
                &mut sm.tcp1,
            );
            record(
                &mut sm.errors,
                "tcp4",
                tcp_gbits(p, 4, a.seconds),
                &mut sm.tcp4,
            );
            record(
                &mut sm.errors,
                "udp64",
                udp_kpps(p, a.seconds),
                &mut sm.udp_kpps,
            );
            record(&mut sm.errors, "ping", ping_avg_ms(p), &mut sm.ping_ms);
            println!(
                "    TCP {} Gbit/s, TCP -P4 {} Gbit/s, UDP 64 B {} kpps, ping {} ms",
                fmt_opt(sm.tcp1.last().copied(), 2),
                fmt_opt(sm.tcp4.last().copied(), 2),
                fmt_opt(sm.udp_kpps.last().copied(), 0),
                fmt_opt(sm.ping_ms.last().copied(), 3)
            );
        }
    }
    step("tearing down");
    for s in &mut subjects {
        s.server.take();
        s.pair.take();
    }

    let load = format!("{load_before} before, {} after", loadavg());
    let report = render(&a, &subjects, &load);
    write_section(&output, &report)?;
    println!("{report}");
    step(&format!("wrote {}", output.display()));
    if a.throughput_only {
        return Ok(());
    }
    crate::bench_ipam::run(a.runs.max(5), &output)?;
    if !a.no_sleeve && !a.baselines_only {
        crate::bench_sleeve::run(a.runs, a.seconds, a.mtu, &output)?;
    }
    if !a.no_dns && !a.baselines_only {
        dns_part(&a, &output)?;
    }
    if !a.baselines_only {
        crate::bench_docker::run(a.runs.max(20), &output)?;
        crate::bench_podman::run(a.runs.max(20), &output)?;
    }
    Ok(())
}

/// Runs the DNS part and writes its section.
fn dns_part(a: &Args, output: &std::path::Path) -> Result<()> {
    let section = crate::bench_dns::run(a.dns_seconds)?;
    crate::bench_dns::write_section(output, &section)?;
    println!("{section}");
    step(&format!("wrote {}", output.display()));
    Ok(())
}

/// Marks around the section this task owns in BENCHMARKS.md (other tasks own other sections).
const BEGIN: &str = "<!-- bench:begin (written by `cargo xtask bench`) -->";
const END: &str = "<!-- bench:end -->";

/// Puts `section` between this task's markers in `path`, keeping the other sections. Without
/// markers yet, the section goes right below the title, before any other marked section.
fn write_section(path: &std::path::Path, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    std::fs::write(path, splice(&old, section)).with_context(|| format!("write {}", path.display()))
}

fn splice(old: &str, section: &str) -> String {
    let block = format!("{BEGIN}\n{section}{END}\n");
    match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!(
                "{}{block}{}",
                &old[..b],
                &old[e + END.len()..].trim_start_matches('\n')
            )
        }
        _ => {
            let others = old.find("<!-- ").map(|i| &old[i..]).unwrap_or("");
            let mut s = format!("# Benchmarks\n\n{block}");
            if !others.is_empty() {
                s.push('\n');
                s.push_str(others);
            }
            s
        }
    }
}

/// The 1-minute load average (other work on the machine skews the figures).
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

fn render(a: &Args, subjects: &[Subject], load: &str) -> String {
    let date = sh("date -u +%Y-%m-%d_%H:%M_UTC").replace('_', " ");
    let kernel = sh("uname -r");
    let commit = sh("git -C . rev-parse --short HEAD");
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();

    let med = |s: &Subject| {
        (
            median(&s.samples.tcp1),
            median(&s.samples.tcp4),
            median(&s.samples.udp_kpps),
            median(&s.samples.ping_ms),
        )
    };
    let find_on = |m: &Mode, u: Underlay| {
        subjects
            .iter()
            .find(|s| &s.mode == m && s.underlay == u)
            .map(med)
    };
    let find = |m: &Mode| find_on(m, Underlay::Flat);

    let mut o = String::new();
    let _ = writeln!(o, "## Throughput and latency\n");
    let _ = writeln!(
        o,
        "Written by `cargo xtask bench` on {date} (commit {commit}); kernel {kernel}, {cpus} vCPU ({cpu_model})."
    );
    let _ = writeln!(
        o,
        "\nTwo simulated hosts (network namespaces) on a veth + bridge underlay (MTU 1500), one container \
         (namespace) on each, container MTU {}. iperf3 {} s per run: TCP single stream, TCP `-P 4`, UDP \
         64-byte datagrams at full speed (packets/s received); ping average over {PINGS_PER_RUN} pings at 20 ms. Medians of \
         {} runs; the modes take turns run by run. The machine is shared, so single figures are noisy \
         (±20 %): compare figures of one run only. Load average: {load}.\n",
        a.mtu, a.seconds, a.runs
    );
    let _ = writeln!(
        o,
        "| mode | TCP 1 stream Gbit/s | TCP -P 4 Gbit/s | UDP 64 B kpps | ping avg ms |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|");
    for s in subjects {
        let (t1, t4, u, p) = med(s);
        if let Some(e) = &s.setup_error {
            let _ = writeln!(
                o,
                "| {} | not measured: {} | | | |",
                s.label(),
                e.lines().next().unwrap_or_default()
            );
            continue;
        }
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            s.label(),
            fmt_opt(t1, 2),
            fmt_opt(t4, 2),
            fmt_opt(u, 0),
            fmt_opt(p, 3)
        );
    }

    let weave = find(&Mode::Weave { extra: vec![] });
    if let Some((wt1, wt4, wu, wp)) = weave {
        let _ = writeln!(
            o,
            "\n| ratio | TCP 1 stream | TCP -P 4 | UDP 64 B pps | ping avg (lower is better) |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|");
        for (label, m) in [
            ("weave-router / kernel VXLAN", Mode::KernelVxlan),
            ("weave-router / routed", Mode::Routed),
        ] {
            if let Some((t1, t4, u, p)) = find(&m) {
                let _ = writeln!(
                    o,
                    "| {label} | {} | {} | {} | {} |",
                    ratio(wt1, t1),
                    ratio(wt4, t4),
                    ratio(wu, u),
                    ratio(wp, p)
                );
            }
        }
        let weave_routed = find_on(&Mode::Weave { extra: vec![] }, Underlay::Routed);
        if let Some((rt1, rt4, ru, rp)) = weave_routed {
            for (label, base) in [
                (
                    "weave-router across a router / weave-router flat (target ≥ 0.9×)",
                    Some((wt1, wt4, wu, wp)),
                ),
                (
                    "weave-router across a router / kernel VXLAN across a router",
                    find_on(&Mode::KernelVxlan, Underlay::Routed),
                ),
            ] {
                if let Some((t1, t4, u, p)) = base {
                    let _ = writeln!(
                        o,
                        "| {label} | {} | {} | {} | {} |",
                        ratio(rt1, t1),
                        ratio(rt4, t4),
                        ratio(ru, u),
                        ratio(rp, p)
                    );
                }
            }
            if let (Some(routed), Some(flat)) = (rt1, wt1) {
                let r = routed / flat;
                let _ = writeln!(
                    o,
                    "\nTarget, routed underlay ≥ 0.9× the flat one (TCP 1 stream): **{}** ({r:.2}×).",
                    if r >= 0.9 { "met" } else { "missed" }
                );
            }
        }
        let _ = writeln!(
            o,
            "\nTargets, plain data path (performance round 2): {}.",
            plain_targets((wt1, wu, wp), find(&Mode::KernelVxlan), find(&Mode::Routed))
        );
    }

    let _ = writeln!(o, "\nModes:\n");
    let _ = writeln!(
        o,
        "- **routed, no overlay**: each container in its own /24 behind a veth; the hosts forward and route \
         the other host's container subnet via its underlay address."
    );
    let _ = writeln!(
        o,
        "- **kernel VXLAN**: per host a bridge with the container's veth and a `vxlan` device (VNI 42, UDP \
         4789, flooding to the other host, MAC learning)."
    );
    let _ = writeln!(
        o,
        "- **weave-router**: `weave-router launch` on each host (`--xdp auto`, which leaves XDP off on a veth \
         underlay), the containers attached with `weave-router attach`."
    );
    if subjects
        .iter()
        .any(|s| matches!(&s.mode, Mode::Weave { extra } if !extra.is_empty()))
    {
        let _ = writeln!(
            o,
            "- **weave-router --xdp on**: the same with the XDP admission program on the underlay. On a veth \
             underlay attaching XDP clears GSO on the sending veth, so the sender segments in software; this \
             row is why `auto` keeps XDP off on veth."
        );
    }

    let _ = writeln!(
        o,
        "- **…, across a router**: the same, but each host in a subnet of its own (198.18.1.1/24, \
         198.18.2.1/24) behind a router namespace that forwards between them (default routes through \
         it): every underlay packet takes one more routed hop, and frames the programs address \
         themselves go to the router's MAC."
    );

    let _ = writeln!(o, "\nEvery run:\n");
    for s in subjects {
        let sm = &s.samples;
        let list = |v: &[f64], p: usize| {
            v.iter()
                .map(|x| format!("{x:.p$}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            o,
            "- {}: TCP [{}], TCP -P4 [{}], UDP kpps [{}], ping ms [{}]",
            s.label(),
            list(&sm.tcp1, 2),
            list(&sm.tcp4, 2),
            list(&sm.udp_kpps, 0),
            list(&sm.ping_ms, 3)
        );
        for e in &sm.errors {
            let _ = writeln!(o, "  - error: {e}");
        }
    }
    let _ = writeln!(
        o,
        "\nReproduce: `cargo xtask bench` (as root; about 6 minutes)."
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_targets_say_met_or_missed_with_the_ratio() {
        let vxlan = Some((Some(10.0), None, Some(100.0), Some(0.1)));
        let routed = Some((Some(12.0), None, Some(200.0), Some(0.08)));
        let line = plain_targets((Some(13.0), Some(150.0), Some(0.08)), vxlan, routed);
        assert_eq!(
            line,
            "TCP / kernel VXLAN ≥ 1.3×: **met** (1.30×); TCP / routed ≥ 1.05×: **met** (1.08×); \
             UDP 64 B / kernel VXLAN ≥ 1.8×: **missed** (1.50×); ping / routed ≤ 1×: **met** (1.00×)"
        );
        let none = plain_targets((None, Some(1.0), Some(1.0)), None, routed);
        assert!(none.starts_with("TCP / kernel VXLAN: not measured; TCP / routed: not measured"));
    }

    #[test]
    fn keeps_other_sections() {
        let scale = "<!-- scale:begin -->\n## Scale\n<!-- scale:end -->\n";
        let first = splice(
            &format!("# Benchmarks\n\nold unmarked table\n\n{scale}"),
            "## T\none\n",
        );
        assert!(first.starts_with("# Benchmarks\n\n<!-- bench:begin"));
        assert!(!first.contains("old unmarked"));
        assert!(first.contains("one") && first.contains(scale));
        let second = splice(&first, "## T\ntwo\n");
        assert!(second.contains("two") && !second.contains("one") && second.contains(scale));
        assert_eq!(
            splice("", "## T\nx\n"),
            format!("# Benchmarks\n\n{BEGIN}\n## T\nx\n{END}\n")
        );
    }
}
