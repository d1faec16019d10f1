//! `cargo xtask scale [N...]`: N routers in a random partial mesh, each in its own network
//! namespace on one underlay bridge. Measures how long until every router agrees on the
//! mesh (after the start, after one more router joins, after one leaves), the control
//! traffic, and the memory of an idle router; writes a "Scale" section into BENCHMARKS.md.
//!
//! A benchmark, not a test: it reports what it measured and never fails on the numbers, but
//! it removes everything it made.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use weave_tests::mesh::MeshSummary;
use weave_tests::{host_addr, LaunchOpts, Netns, TestBed};

use crate::run::{self, sh, step};

/// Marks around the section this task owns in BENCHMARKS.md.
const BEGIN: &str = "<!-- scale:begin (written by `cargo xtask scale`) -->";
const END: &str = "<!-- scale:end -->";
/// The test bed prefix (namespaces `wsc-u`, `wsc-h1`, ...).
const PREFIX: &str = "wsc";

#[derive(clap::Args)]
pub struct Args {
    /// Numbers of routers to measure.
    #[arg(value_name = "N", default_values_t = [25usize, 50, 100])]
    sizes: Vec<usize>,
    /// Control plane only: launch the routers with the in-memory data path (no eBPF).
    #[arg(long)]
    fake_datapath: bool,
    /// Seconds of idle control traffic to count.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Seed of the random mesh (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Where to write the section (relative to the workspace root).
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: String,
    /// Print the table only.
    #[arg(long)]
    no_write: bool,
    /// Skip `setup` and `build`.
    #[arg(long)]
    no_build: bool,
    /// Most seconds to spend launching the routers of one size; past it that size is
    /// reported as not started.
    #[arg(long, default_value_t = 150)]
    launch_limit: u64,
    /// Most seconds to wait for one agreement (after start, join or leave).
    #[arg(long, default_value_t = 60)]
    agree_limit: u64,
    /// More `weave-router launch` arguments for every router, e.g. "--no-discovery"
    /// (the defaults are what the figures are about).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    router_args: Option<String>,
    /// After each size, measure it once more with `--no-discovery` (each router keeps only
    /// the 2-3 connections it dialled and the ones dialled to it).
    #[arg(long)]
    also_no_discovery: bool,
    /// After each size, measure it once more with the in-memory data path (the control
    /// plane alone, without the kernel programs, bridges and fast-path heartbeats).
    #[arg(long, conflicts_with = "fake_datapath")]
    also_fake_datapath: bool,
    /// Launch every router of a size at the same time (each dialling 2-3 random others
    /// with a lower number), and measure the start from the first launch.
    #[arg(long)]
    all_at_once: bool,
    /// After each size, measure it once more launched all at once.
    #[arg(long, conflicts_with = "all_at_once")]
    also_all_at_once: bool,
    /// Only remove what an interrupted run left behind.
    #[arg(long)]
    down: bool,
    /// Before each size's routers are removed, copy their logs into DIR/<N>-routers/
    /// (`hostK.log`): what each router said while a large mesh formed.
    #[arg(long, value_name = "DIR")]
    keep_logs: Option<std::path::PathBuf>,
}

/// Where [`teardown`] copies the routers' logs (`--keep-logs`), when asked to.
static KEEP_LOGS: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Set by SIGINT/SIGTERM: the run stops at the next step and removes what it made.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Kernel limits sized for one host that all the simulated hosts share, raised for the run
/// and put back at the end:
/// - the ARP table, one for all network namespaces, 1024 entries at most by default: N
///   hosts in a full mesh need about N² underlay entries, past that ARP fails ("neighbor
///   table overflow") and routers cannot reach each other;
/// - the per-CPU backlog of packets received from veths (`netdev_max_backlog`, 1000): here
///   every host's heartbeats and path-MTU probes queue on the machine's two CPUs, where
///   each real host would have its own; past it they are dropped and paths look broken.
struct KernelLimits {
    old: Vec<(String, String)>,
}

impl KernelLimits {
    const KEYS: [(&'static str, u64); 4] = [
        ("/proc/sys/net/ipv4/neigh/default/gc_thresh1", 4096),
        ("/proc/sys/net/ipv4/neigh/default/gc_thresh2", 32768),
        ("/proc/sys/net/ipv4/neigh/default/gc_thresh3", 65536),
        ("/proc/sys/net/core/netdev_max_backlog", 100_000),
    ];

    fn raise() -> Result<Self> {
        let mut old = Vec::new();
        // thresh3 first (the kernel wants thresh1 <= thresh2 <= thresh3 only loosely, but
        // raising the top first keeps every step sensible).
        for (path, want) in Self::KEYS.iter().rev() {
            let cur = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
            let cur = cur.trim().to_string();
            if cur.parse::<u64>().unwrap_or(0) < *want {
                std::fs::write(path, want.to_string()).with_context(|| format!("write {path}"))?;
                old.push((path.to_string(), cur));
            }
        }
        Ok(Self { old })
    }
}

impl Drop for KernelLimits {
    fn drop(&mut self) {
        for (path, v) in self.old.iter().rev() {
            let _ = std::fs::write(path, v);
        }
    }
}

/// splitmix64: enough randomness for picking peers, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// 2 or 3 distinct hosts among `1..=upto` (fewer when there are fewer).
    fn targets(&mut self, upto: usize) -> Vec<usize> {
        let want = (2 + self.below(2)).min(upto);
        let mut pool: Vec<usize> = (1..=upto).collect();
        let mut out = Vec::new();
        for _ in 0..want {
            out.push(pool.swap_remove(self.below(pool.len())));
        }
        out.sort_unstable();
        out
    }
}

/// What one size measured.
#[derive(Default)]
struct Row {
    n: usize,
    datapath: &'static str,
    /// Launch arguments beyond the defaults.
    args: String,
    /// Every router launched at the same time (start counted from the first launch).
    at_once: bool,
    launch_all: Option<Duration>,
    start: Option<Agreement>,
    join: Option<Agreement>,
    join_kib: Option<f64>,
    /// KiB/s of control traffic in each second after the join's agreement.
    after_join_kibps: Vec<String>,
    /// Control traffic from the first launch until the start agreement.
    start_kib: Option<f64>,
    leave: Option<Agreement>,
    idle_bps: Option<f64>,
    /// CPU time of every router over the idle period, per second of it.
    idle_cpu_per_s: Option<Duration>,
    /// CPU time of the routers already there, from the join until 5 s after its agreement.
    join_cpu: Option<Duration>,
    /// Control traffic from the join until 5 s after its agreement.
    join_settled_kib: Option<f64>,
    rss_median_kib: Option<u64>,
    rss_max_kib: Option<u64>,
    notes: Vec<String>,
}

/// Control traffic across the underlay bridge: an nftables counter of TCP 6783 in a
/// `bridge` table of the underlay namespace (every segment counted once, on its way from
/// one host's port to another's; IP bytes, headers included).
struct ControlCounter<'a> {
    ns: &'a Netns,
}

impl<'a> ControlCounter<'a> {
    fn install(ns: &'a Netns) -> Result<Self> {
        for line in [
            "add table bridge weave_scale",
            "add counter bridge weave_scale control",
            "add chain bridge weave_scale ctl { type filter hook forward priority 0 ; }",
            "add rule bridge weave_scale ctl tcp dport 6783 counter name control",
            "add rule bridge weave_scale ctl tcp sport 6783 counter name control",
        ] {
            let mut argv = vec!["nft".to_string()];
            argv.extend(line.split_whitespace().map(str::to_string));
            ns.check(&argv).with_context(|| format!("nft {line}"))?;
        }
        Ok(Self { ns })
    }

    fn bytes(&self) -> Result<u64> {
        let out = self
            .ns
            .check(&["nft", "list", "counter", "bridge", "weave_scale", "control"])?;
        out.split_whitespace()
            .skip_while(|w| *w != "bytes")
            .nth(1)
            .and_then(|b| b.parse().ok())
            .ok_or_else(|| anyhow!("no byte count in: {out}"))
    }
}

/// When the routers agreed, as the time from the event.
#[derive(Clone, Copy, Debug)]
struct Agreement {
    /// The last router's own record of when its view reached the agreed one (`ChangedAt`
    /// of `GET /status/mesh`; every router runs on this machine's clock).
    reached: Duration,
    /// When polling first saw the last router agree: later than `reached` by however long
    /// polling took to come round to it and the router to answer.
    seen: Duration,
}

/// Waits until every router in `hosts` reports exactly the peers of `hosts` and a route to
/// each. Several threads poll, each router until it agrees; a last pass checks that none
/// has changed its mind since.
fn wait_agreement(
    bed: &TestBed,
    hosts: &[usize],
    since: Instant,
    limit: Duration,
) -> Result<Agreement> {
    let since_wall = std::time::SystemTime::now() - since.elapsed();
    let want: BTreeSet<String> = hosts.iter().map(|&i| bed.peer_name(i)).collect();
    // The time the router says it reached agreement, when it agrees.
    let agrees = |i: usize| -> Option<Duration> {
        let m = MeshSummary::of(bed.router(i)).ok()?;
        m.agrees(&bed.peer_name(i), &want).then(|| {
            m.changed_at
                .and_then(|at| at.duration_since(since_wall).ok())
                .unwrap_or_default()
        })
    };
    // Per router: (reached, seen).
    let done: Mutex<Vec<Option<(Duration, Duration)>>> = Mutex::new(vec![None; hosts.len()]);
    loop {
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| loop {
                    let pending: Vec<usize> = {
                        let d = done.lock().unwrap_or_else(|e| e.into_inner());
                        (0..hosts.len()).filter(|&k| d[k].is_none()).collect()
                    };
                    if pending.is_empty() || since.elapsed() > limit || stopping() {
                        return;
                    }
                    let k = pending[next.fetch_add(1, Ordering::Relaxed) % pending.len()];
                    if let Some(reached) = agrees(hosts[k]) {
                        let seen = since.elapsed();
                        let mut d = done.lock().unwrap_or_else(|e| e.into_inner());
                        d[k].get_or_insert((reached, seen));
                    } else {
                        // Agreement times come from the routers themselves: polling
                        // gently leaves the CPU to the routers being measured.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                });
            }
        });
        if stopping() {
            bail!("interrupted");
        }
        let mut d = done.lock().unwrap_or_else(|e| e.into_inner());
        let missing: Vec<usize> = (0..hosts.len())
            .filter(|&k| d[k].is_none())
            .map(|k| hosts[k])
            .collect();
        if !missing.is_empty() {
            let example = missing[0];
            let host_of = |name: &String| {
                hosts
                    .iter()
                    .find(|&&i| bed.peer_name(i) == *name)
                    .map(|&i| {
                        let state = if bed.router(i).is_running() {
                            "running"
                        } else {
                            "not running"
                        };
                        format!("host{i} ({state})")
                    })
                    .unwrap_or_else(|| name.clone())
            };
            let seen = match MeshSummary::of(bed.router(example)) {
                Ok(m) => {
                    let unknown: Vec<String> = want.difference(&m.peers).map(host_of).collect();
                    let extra: Vec<&String> = m.peers.difference(&want).collect();
                    let unrouted: Vec<String> = want
                        .iter()
                        .filter(|p| **p != bed.peer_name(example) && !m.routed.contains(*p))
                        .map(host_of)
                        .collect();
                    format!(
                        "it knows {} peers and routes to {}; unknown: {unknown:?}, not routed: {unrouted:?}, extra: {extra:?}",
                        m.peers.len(),
                        m.routed.len()
                    )
                }
                Err(e) => format!("no report: {e}"),
            };
            // The log of one peer it does not know, if any: often the one that is stuck.
            let unknown_log = MeshSummary::of(bed.router(example))
                .ok()
                .and_then(|m| {
                    hosts
                        .iter()
                        .find(|&&i| !m.peers.contains(&bed.peer_name(i)))
                        .map(|&i| {
                            format!(
                                "\nlog tail of host{i}, unknown to it:\n{}",
                                bed.router(i).log_tail(12)
                            )
                        })
                })
                .unwrap_or_default();
            bail!(
                "{} of {} routers did not agree within {limit:?} (e.g. host{example}: {seen}; log tail:\n{}{unknown_log})",
                missing.len(),
                hosts.len(),
                bed.router(example).log_tail(8)
            );
        }
        // Final pass: anyone who no longer agrees is polled again.
        let mut changed = false;
        for (k, &i) in hosts.iter().enumerate() {
            if agrees(i).is_none() {
                d[k] = None;
                changed = true;
            }
        }
        if !changed {
            let mut times: Vec<(Duration, usize)> = d
                .iter()
                .zip(hosts)
                .filter_map(|(t, &i)| t.map(|(reached, _)| (reached, i)))
                .collect();
            times.sort_unstable();
            print_spread(&times);
            return Ok(Agreement {
                reached: times.last().map(|(t, _)| *t).unwrap_or_default(),
                seen: d
                    .iter()
                    .flatten()
                    .map(|(_, s)| *s)
                    .max()
                    .unwrap_or_default(),
            });
        }
    }
}

/// How the routers' agreement times spread: the first, the median, the 90th percentile and
/// the last three (with their hosts), to tell one slow router from a slow mesh.
fn print_spread(times: &[(Duration, usize)]) {
    let Some(first) = times.first() else { return };
    let at = |q: usize| times[(times.len() - 1) * q / 100].0.as_secs_f64();
    let last: Vec<String> = times
        .iter()
        .rev()
        .take(3)
        .map(|(t, i)| format!("host{i} {:.2}", t.as_secs_f64()))
        .collect();
    println!(
        "      routers agreed: first {:.2} s, median {:.2} s, p90 {:.2} s, last: {}",
        first.0.as_secs_f64(),
        at(50),
        at(90),
        last.join(", ")
    );
}

/// Control bytes sent by the routers of `hosts` so far, by message kind (their
/// `weave_control_bytes_total{direction="sent"}`).
fn sent_by_kind(bed: &TestBed, hosts: &[usize]) -> std::collections::BTreeMap<String, u64> {
    let mut total = std::collections::BTreeMap::new();
    for &i in hosts {
        let Ok(text) = bed.router(i).metrics() else {
            continue;
        };
        let sent = weave_tests::probe::parse_metrics(&text)
            .into_iter()
            .filter(|m| m.name == "weave_control_bytes_total")
            .filter(|m| m.labels.contains("direction=\"sent\""));
        for m in sent {
            let kind = m
                .labels
                .split("kind=\"")
                .nth(1)
                .and_then(|k| k.split('"').next())
                .unwrap_or("?");
            *total.entry(kind.to_string()).or_insert(0) += m.value as u64;
        }
    }
    total
}

/// Prints what was sent between two [`sent_by_kind`] counts, in KiB per kind.
fn print_sent_between(
    what: &str,
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) {
    let parts: Vec<String> = after
        .iter()
        .map(|(k, v)| (k, v.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|(_, d)| *d > 0)
        .map(|(k, d)| format!("{k} {:.0}", d as f64 / 1024.0))
        .collect();
    println!("      sent {what}, KiB by kind: {}", parts.join(", "));
}

/// VmRSS of every router of `hosts`, in KiB.
fn rss_kib(bed: &TestBed, hosts: &[usize]) -> Vec<u64> {
    let mut each: Vec<(u64, usize, String)> = hosts
        .iter()
        .flat_map(|&i| {
            weave_tests::router::router_pids(bed.host(i).ns.name())
                .into_iter()
                .map(move |pid| (i, pid))
        })
        .filter_map(|(i, pid)| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let field = |name: &str| -> Option<u64> {
                s.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            };
            let split = format!(
                "anon {} KiB, file {} KiB",
                field("RssAnon:").unwrap_or(0),
                field("RssFile:").unwrap_or(0)
            );
            Some((field("VmRSS:")?, i, split))
        })
        .collect();
    each.sort_unstable();
    let largest: Vec<String> = each
        .iter()
        .rev()
        .take(3)
        .map(|(kib, i, split)| format!("host{i} {kib} KiB ({split})"))
        .collect();
    if !largest.is_empty() {
        println!("      largest RSS: {}", largest.join("; "));
    }
    each.into_iter().map(|(kib, _, _)| kib).collect()
}

/// Launches router `i` with `dials[i - 1]` as its peers, every one at the same time (a
/// thread each); fails when any launch fails.
fn launch_at_once(
    bed: &mut TestBed,
    dials: &[Vec<usize>],
    fake: bool,
    more: &[String],
) -> Result<()> {
    let jobs: Vec<(
        usize,
        String,
        String,
        String,
        std::path::PathBuf,
        Option<String>,
    )> = (1..=dials.len())
        .map(|i| {
            let h = bed.host(i);
            (
                i,
                h.ns.name().to_string(),
                bed.peer_name(i),
                h.nickname(),
                bed.state_dir(i),
                h.iface.clone(),
            )
        })
        .collect();
    let launched: Vec<(usize, Result<weave_tests::Router>)> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(i, ns, name, nick, dir, iface)| {
                let opts = launch_opts(&dials[i - 1], fake, more);
                s.spawn(move || {
                    let _ = std::fs::remove_dir_all(dir);
                    let r = weave_tests::Router::launch_keeping_state(
                        ns,
                        name,
                        nick,
                        dir,
                        iface.as_deref(),
                        &opts,
                    )
                    .map_err(|e| anyhow!("launch router {i}: {e}"));
                    (*i, r)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (0, Err(anyhow!("a launch thread panicked"))))
            })
            .collect()
    });
    let mut first_error = None;
    for (i, r) in launched {
        match r {
            Ok(r) => bed.hosts[i - 1].router = Some(r),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The process IDs of the routers of `hosts`.
fn pids_of(bed: &TestBed, hosts: &[usize]) -> Vec<i32> {
    hosts
        .iter()
        .flat_map(|&i| weave_tests::router::router_pids(bed.host(i).ns.name()))
        .collect()
}

/// The CPU time (user and system, all threads) the processes `pids` have used so far, from
/// /proc/<pid>/stat; a process gone counts nothing.
fn cpu_time(pids: &[i32]) -> Duration {
    // SAFETY: sysconf only reads a system constant.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command (which may hold spaces) end with ')'; utime and
            // stime are fields 14 and 15, i.e. the 12th and 13th after it.
            let rest = stat.rsplit_once(')')?.1;
            let mut f = rest.split_whitespace().skip(11);
            let utime: u64 = f.next()?.parse().ok()?;
            let stime: u64 = f.next()?.parse().ok()?;
            Some(utime + stime)
        })
        .sum();
    Duration::from_secs_f64(ticks as f64 / ticks_per_s)
}

fn launch_opts(targets: &[usize], fake: bool, more: &[String]) -> LaunchOpts {
    let mut extra: Vec<String> = if fake {
        vec!["--fake-datapath".into()]
    } else {
        Vec::new()
    };
    extra.extend(more.iter().cloned());
    LaunchOpts {
        peers: targets.iter().map(|&j| host_addr(j).to_string()).collect(),
        extra,
    }
}

/// One size, start to end; the bed (and every router) goes when this returns.
/// Time limits of one size.
#[derive(Clone, Copy)]
struct Limits {
    launch: Duration,
    agree: Duration,
}

/// How the routers of one measurement are launched.
#[derive(Clone, Debug)]
struct Variant {
    /// `weave-router launch` arguments beyond the defaults.
    more: Vec<String>,
    /// The in-memory data path.
    fake: bool,
    /// Every router at the same time.
    at_once: bool,
}

fn measure(
    n: usize,
    variant: &Variant,
    idle: Duration,
    limits: Limits,
    rng: &mut Rng,
) -> Result<Row> {
    let (launch_limit, agree_limit) = (limits.launch, limits.agree);
    let (fake, more, at_once) = (variant.fake, &variant.more[..], variant.at_once);
    let mut row = Row {
        n,
        at_once,
        datapath: if fake {
            "fake (control plane only)"
        } else {
            "eBPF"
        },
        args: more.join(" "),
        ..Default::default()
    };
    step(&format!(
        "{n} routers ({}): making {} hosts",
        row.datapath,
        n + 1
    ));
    let mut bed = TestBed::new(PREFIX, n + 1).context("test bed")?;
    let underlay = Netns::borrow(&format!("{PREFIX}-u"));
    // The underlay bridge also carries ARP and VXLAN; only TCP 6783 is counted.
    let counter = ControlCounter::install(&underlay)?;

    let s0 = counter.bytes()?;
    let t_launch = Instant::now();
    let mut last_launch_started = t_launch;
    // Each router dials 2-3 random ones with a lower number (the first dials none).
    let dials: Vec<Vec<usize>> = (1..=n)
        .map(|i| {
            if i == 1 {
                Vec::new()
            } else {
                rng.targets(i - 1)
            }
        })
        .collect();
    if at_once {
        step(&format!(
            "{n} routers: launching all at once, each dialling 2-3 random ones with a lower number"
        ));
        launch_at_once(&mut bed, &dials, fake, more)?;
    } else {
        step(&format!(
            "{n} routers: launching, each dialling 2-3 random earlier ones"
        ));
    }
    for i in (1..=n).filter(|_| !at_once) {
        let targets = &dials[i - 1];
        last_launch_started = Instant::now();
        bed.launch(i, &launch_opts(targets, fake, more))
            .with_context(|| format!("launch router {i} of {n}"))?;
        if stopping() {
            bail!("interrupted");
        }
        if t_launch.elapsed() > launch_limit {
            row.notes.push(format!(
                "only {i} of {n} routers launched within {launch_limit:?} (the machine was saturated); nothing else measured"
            ));
            let mut rss = rss_kib(&bed, &(1..=i).collect::<Vec<_>>());
            rss.sort_unstable();
            row.rss_median_kib = rss.get(rss.len() / 2).copied();
            row.rss_max_kib = rss.last().copied();
            println!(
                "    {}",
                row.notes.last().map(String::as_str).unwrap_or_default()
            );
            teardown(n, bed);
            return Ok(row);
        }
        if i % 10 == 0 {
            println!(
                "    {i} launched ({:.1} s)",
                t_launch.elapsed().as_secs_f64()
            );
        }
    }
    row.launch_all = Some(t_launch.elapsed());
    let initial: Vec<usize> = (1..=n).collect();
    let start_from = if at_once {
        t_launch
    } else {
        last_launch_started
    };
    match wait_agreement(&bed, &initial, start_from, agree_limit) {
        Ok(t) => {
            row.start = Some(t);
            row.start_kib = Some(counter.bytes()?.saturating_sub(s0) as f64 / 1024.0);
        }
        Err(e) => row.notes.push(format!("start: {e}")),
    }
    println!(
        "    agreement after start: {} ({:.0} KiB of control traffic since the first launch)",
        secs(row.start),
        row.start_kib.unwrap_or(0.0)
    );
    print_sent_between(
        "from the first launch until then",
        &Default::default(),
        &sent_by_kind(&bed, &initial),
    );

    // Idle: heartbeats and periodic gossip only.
    std::thread::sleep(Duration::from_secs(3));
    let pids = pids_of(&bed, &initial);
    let c0 = cpu_time(&pids);
    let b0 = counter.bytes()?;
    let t0 = Instant::now();
    std::thread::sleep(idle);
    let b1 = counter.bytes()?;
    let idle_took = t0.elapsed();
    row.idle_bps = Some((b1 - b0) as f64 / idle_took.as_secs_f64());
    row.idle_cpu_per_s = Some(
        cpu_time(&pids)
            .saturating_sub(c0)
            .div_f64(idle_took.as_secs_f64()),
    );
    let mut rss = rss_kib(&bed, &initial);
    rss.sort_unstable();
    if rss.len() != n {
        row.notes
            .push(format!("RSS read for {} of {n} routers", rss.len()));
    }
    row.rss_median_kib = rss.get(rss.len() / 2).copied();
    row.rss_max_kib = rss.last().copied();
    println!(
        "    idle control traffic {:.0} B/s, CPU {:.0} ms/s (all routers); RSS median {} KiB, max {} KiB",
        row.idle_bps.unwrap_or(0.0),
        row.idle_cpu_per_s.unwrap_or_default().as_secs_f64() * 1e3,
        row.rss_median_kib.unwrap_or(0),
        row.rss_max_kib.unwrap_or(0)
    );

    // Join: one more router, dialling 2-3 random ones.
    let joiner = n + 1;
    let targets = rng.targets(n);
    let sent_before = sent_by_kind(&bed, &initial);
    // A system-wide profile of the join with call graphs, when asked for
    // (WEAVE_SCALE_PERF=<file>; `perf report --no-children -g caller` reads it).
    let profile = std::env::var("WEAVE_SCALE_PERF").ok().and_then(|out| {
        std::process::Command::new("perf")
            .args(["record", "-a", "-F", "97", "--call-graph", "dwarf,16384"])
            .args(["-o", &out, "--", "sleep", "5"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()
    });
    let j0 = counter.bytes()?;
    let jc0 = cpu_time(&pids);
    let joined = Instant::now();
    bed.launch(joiner, &launch_opts(&targets, fake, more))
        .context("launch the joining router")?;
    let all: Vec<usize> = (1..=joiner).collect();
    match wait_agreement(&bed, &all, joined, agree_limit) {
        Ok(t) => {
            row.join = Some(t);
            row.join_kib = Some((counter.bytes()?.saturating_sub(j0)) as f64 / 1024.0);
        }
        Err(e) => row.notes.push(format!("join: {e}")),
    }
    println!(
        "    agreement after a join: {} ({:.0} KiB of control traffic until then)",
        secs(row.join),
        row.join_kib.unwrap_or(0.0)
    );
    // How the control traffic calms down after the join, second by second.
    let mut trace = Vec::new();
    let mut prev = counter.bytes()?;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        let now = counter.bytes()?;
        trace.push(format!("{:.0}", (now - prev) as f64 / 1024.0));
        prev = now;
    }
    println!(
        "    control traffic in the 5 s after agreement, KiB/s: [{}]",
        trace.join(", ")
    );
    row.after_join_kibps = trace;
    if row.join.is_some() {
        row.join_cpu = Some(cpu_time(&pids).saturating_sub(jc0));
        row.join_settled_kib = Some(prev.saturating_sub(j0) as f64 / 1024.0);
        println!(
            "    from the join until 5 s after its agreement: {:.0} KiB, CPU {:.2} s of the {n} routers already there",
            row.join_settled_kib.unwrap_or(0.0),
            row.join_cpu.unwrap_or_default().as_secs_f64()
        );
    }
    if let Some(mut p) = profile {
        let _ = p.wait();
    }
    print_sent_between(
        "from before the join until 5 s after its agreement",
        &sent_before,
        &sent_by_kind(&bed, &all),
    );

    // Leave: one of the first routers stops (`weave-router stop`).
    let leaver = 2 + rng.below(n - 1);
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != leaver).collect();
    let left = Instant::now();
    match bed.router_mut(leaver).stop() {
        Ok(()) => match wait_agreement(&bed, &rest, left, agree_limit) {
            Ok(t) => row.leave = Some(t),
            Err(e) => row.notes.push(format!("leave: {e}")),
        },
        Err(e) => {
            bed.router_mut(leaver).kill();
            row.notes.push(format!(
                "leave not measured: `weave-router stop` of router {leaver} failed: {e}"
            ));
        }
    }
    println!("    agreement after a leave: {}", secs(row.leave));

    teardown(n, bed);
    Ok(row)
}

/// Ends every router at once (SIGKILL: a router busy with gossip may take long to stop),
/// then removes the bed (pins, namespaces, state).
fn teardown(n: usize, mut bed: TestBed) {
    step(&format!("{n} routers: tearing down"));
    for h in &mut bed.hosts {
        if let Some(r) = h.router.as_mut() {
            r.kill();
        }
    }
    if let Some(dir) = KEEP_LOGS.get() {
        keep_logs(&bed, &dir.join(format!("{n}-routers")));
    }
    drop(bed);
}

/// SIGKILLs every router in a namespace of this benchmark; how many there were.
fn kill_all_routers() -> usize {
    let pids: Vec<i32> = weave_tests::ns::list()
        .iter()
        .filter(|n| n.starts_with(&format!("{PREFIX}-")))
        .flat_map(|n| weave_tests::router::router_pids(n))
        .collect();
    for p in &pids {
        // SAFETY: kill(2) on a router in one of this benchmark's namespaces.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    pids.len()
}

/// Copies each router's log files into `dir` as `hostK.log` (`hostK-2.log`, ... for more).
fn keep_logs(bed: &TestBed, dir: &std::path::Path) {
    if let Err(e) = std::fs::create_dir_all(dir) {
        println!("    cannot keep the logs in {}: {e}", dir.display());
        return;
    }
    let mut copied = 0;
    for h in &bed.hosts {
        let Some(r) = h.router.as_ref() else {
            continue;
        };
        for (k, file) in r.log_files().iter().enumerate() {
            let name = match k {
                0 => format!("host{}.log", h.index),
                _ => format!("host{}-{}.log", h.index, k + 1),
            };
            match std::fs::copy(file, dir.join(name)) {
                Ok(_) => copied += 1,
                Err(e) => println!("    cannot keep {}: {e}", file.display()),
            }
        }
    }
    println!("    {copied} router logs kept in {}", dir.display());
}

impl Agreement {
    /// "reached (seen)", each with `unit`, the second after `seen_as`.
    fn text(&self, unit: &str, seen_as: &str) -> String {
        format!(
            "{:.2}{unit} ({seen_as}{:.2}{unit})",
            self.reached.as_secs_f64(),
            self.seen.as_secs_f64()
        )
    }
}

fn secs(a: Option<Agreement>) -> String {
    a.map(|a| a.text(" s", "polling saw it at "))
        .unwrap_or_else(|| "not reached".into())
}

fn mib(k: Option<u64>) -> String {
    k.map(|k| format!("{:.1}", k as f64 / 1024.0))
        .unwrap_or_else(|| "—".into())
}

fn render(a: &Args, rows: &[Row], seed: u64, cmdline: &str) -> String {
    let date = sh("date -u +%Y-%m-%d_%H:%M_UTC").replace('_', " ");
    let commit = sh("git rev-parse --short HEAD");
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut o = String::new();
    let _ = writeln!(o, "## Scale\n");
    let _ = writeln!(
        o,
        "Written by `{cmdline}` on {date} (commit {commit}, seed {seed}); {cpus} vCPU, every router on this one machine."
    );
    let _ = writeln!(
        o,
        "\nN routers, each in its own network namespace on one underlay bridge, started one after another \
         (*launched* \"one by one\") or all at the same time (\"at once\", a thread per `weave-router launch`), \
         each dialling 2–3 random ones with a lower number (discovery on, default connection limit). \
         *Start*: one by one, from the last `weave-router launch` (its start: the router loads its programs and connects before the command returns); \
         at once, from the first launch; until every router's `GET /status/mesh` lists all N peers and a route to each. \
         *Join*: one more router (dialling 2–3 random ones), from its `weave-router launch` until all N+1 agree. \
         *Leave*: from `weave-router stop` of one router until the others agree without it. \
         Each time is when the last router's view reached the agreed one, by that router's own record \
         (`ChangedAt` of `GET /status/mesh`, stamped at the route computation that made it; all routers share this machine's clock); \
         in brackets, when polling (4 threads, 50 ms apart per thread while a router disagrees) first saw the last router agree, which adds however long the polls took to come round \
         to it and a busy router to answer. \
         *Idle control*: TCP 6783 across the underlay bridge over {} s, counted by an nftables counter in a \
         `bridge` table of the underlay namespace (IP bytes, every segment once; heartbeats included). \
         *Start traffic*: the same counter from the first launch until agreement; *join traffic*: from the join until agreement; \
         *after join*: KiB/s in each of the 5 s after that agreement. \
         *CPU*: user and system time of the routers (all their threads, /proc/<pid>/stat); \
         idle: over the idle period, per second; join: of the N routers already there (not the joining one), from the join until 5 s after its agreement. \
         *RSS*: VmRSS of each idle router from /proc/<pid>/status. \
         *eBPF* rows: every router loads and verifies the kernel programs, sets up its bridge, the bridge's port towards the peers \
         and the sleeve, and sends fast-path heartbeats to each direct peer (no device per peer); \
         *fake* rows: the in-memory data path, the control plane alone. \
         The kernel's ARP table, shared by all namespaces, is raised for the run (gc_thresh3 65536): N hosts in a full mesh need ~N² entries; \
         so is the per-CPU backlog of packets from veths (netdev_max_backlog 100000), which all hosts share here. \
         Limits: {} s to launch one size, {} s per agreement (\"—\" = not reached, see the notes).\n",
        a.idle_secs, a.launch_limit, a.agree_limit
    );
    let _ = writeln!(
        o,
        "| routers | data path, options | launched | launch all (s) | start (s) | join (s) | leave (s) | idle control B/s (per router) | idle CPU ms/s (per router) | start traffic KiB | join traffic KiB | join CPU s | after join KiB/s | RSS median MiB | RSS max MiB |"
    );
    let _ = writeln!(
        o,
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
    );
    let s = |d: Option<Duration>| {
        d.map(|d| format!("{:.2}", d.as_secs_f64()))
            .unwrap_or_else(|| "—".into())
    };
    let agreed = |a: Option<Agreement>| a.map(|a| a.text("", "")).unwrap_or_else(|| "—".into());
    for r in rows {
        let bps = r
            .idle_bps
            .map(|b| format!("{:.0} ({:.0})", b, b / r.n as f64))
            .unwrap_or_else(|| "—".into());
        let cpu = r
            .idle_cpu_per_s
            .map(|c| {
                let ms = c.as_secs_f64() * 1e3;
                format!("{:.0} ({:.1})", ms, ms / r.n as f64)
            })
            .unwrap_or_else(|| "—".into());
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.n,
            if r.args.is_empty() {
                r.datapath.to_string()
            } else {
                format!("{}, `{}`", r.datapath, r.args)
            },
            if r.at_once { "at once" } else { "one by one" },
            s(r.launch_all),
            agreed(r.start),
            agreed(r.join),
            agreed(r.leave),
            bps,
            cpu,
            r.start_kib
                .map(|k| format!("{k:.0}"))
                .unwrap_or_else(|| "—".into()),
            r.join_kib
                .map(|k| format!("{k:.0}"))
                .unwrap_or_else(|| "—".into()),
            r.join_cpu
                .map(|c| format!("{:.2}", c.as_secs_f64()))
                .unwrap_or_else(|| "—".into()),
            r.after_join_kibps.join(" "),
            mib(r.rss_median_kib),
            mib(r.rss_max_kib)
        );
    }
    let _ = writeln!(o, "\n{}", growth_table(rows));
    let notes: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            let what = if r.args.is_empty() {
                format!("{} routers", r.n)
            } else {
                format!("{} routers `{}`", r.n, r.args)
            };
            r.notes.iter().map(move |n| format!("- {what}: {n}"))
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(o, "\n{}", notes.join("\n"));
    }
    let _ = writeln!(
        o,
        "\nTargets: 100 routers launched at once agree within 20 s of the first launch; \
         100 routers agree < 2 s after a join; 250 with the in-memory data path < 5 s after a join; \
         < 25 MiB RSS per idle router."
    );
    o
}

/// Routers of the smoke run of `cargo xtask test`.
pub const SMOKE_ROUTERS: usize = 16;

/// The smoke run of `cargo xtask test`: [`SMOKE_ROUTERS`] routers with the in-memory data
/// path launched at once, a join and a leave; fails unless each is agreed within 30 s.
pub fn smoke() -> Result<()> {
    let limits = KernelLimits::raise()?;
    let variant = Variant {
        more: Vec::new(),
        fake: true,
        at_once: true,
    };
    let limit = Limits {
        launch: Duration::from_secs(60),
        agree: Duration::from_secs(30),
    };
    let row = measure(
        SMOKE_ROUTERS,
        &variant,
        Duration::from_secs(1),
        limit,
        &mut Rng(1),
    );
    weave_tests::sweep(PREFIX);
    drop(limits);
    let row = row?;
    if !row.notes.is_empty() {
        bail!("{}", row.notes.join("; "));
    }
    for (what, agreed) in [
        ("start", row.start),
        ("join", row.join),
        ("leave", row.leave),
    ] {
        let a = agreed.ok_or_else(|| anyhow!("no agreement after the {what}"))?;
        println!(
            "    {what}: agreed after {}",
            a.text(" s", "polling saw it at ")
        );
    }
    Ok(())
}

/// How the cost grows with the number of routers: per join (until 5 s after its agreement)
/// and per idle second, in bytes and CPU.
fn growth_table(rows: &[Row]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "How the cost grows (a join until 5 s after its agreement, CPU of the routers already there; idle: the whole mesh, and per router):\n"
    );
    let _ = writeln!(
        o,
        "| routers | data path, options | launched | join KiB | join CPU s | join KiB per router | join CPU ms per router | idle KiB/s | idle CPU ms/s | idle B/s per router | idle CPU ms/s per router |"
    );
    let _ = writeln!(o, "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let f = |v: Option<f64>, digits: usize| {
        v.map(|v| format!("{v:.digits$}"))
            .unwrap_or_else(|| "—".into())
    };
    for r in rows {
        let n = r.n as f64;
        let join_cpu = r.join_cpu.map(|c| c.as_secs_f64());
        let idle_cpu_ms = r.idle_cpu_per_s.map(|c| c.as_secs_f64() * 1e3);
        let what = if r.args.is_empty() {
            r.datapath.to_string()
        } else {
            format!("{}, `{}`", r.datapath, r.args)
        };
        let _ = writeln!(
            o,
            "| {} | {what} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.n,
            if r.at_once { "at once" } else { "one by one" },
            f(r.join_settled_kib, 0),
            f(join_cpu, 2),
            f(r.join_settled_kib.map(|k| k / n), 1),
            f(join_cpu.map(|c| c * 1e3 / n), 1),
            f(r.idle_bps.map(|b| b / 1024.0), 1),
            f(idle_cpu_ms, 0),
            f(r.idle_bps.map(|b| b / n), 0),
            f(idle_cpu_ms.map(|c| c / n), 2),
        );
    }
    o
}

/// Puts `section` between the markers in `path`, keeping the rest; appends it when the
/// markers are not there yet.
fn write_section(path: &std::path::Path, section: &str) -> Result<()> {
    run::write_marked_section(path, BEGIN, END, section)
}

pub fn scale(a: Args) -> Result<()> {
    if !run::is_root() {
        bail!("the scale benchmark creates network namespaces and loads BPF: run it as root");
    }
    if a.sizes.iter().any(|&n| !(2..=250).contains(&n)) {
        bail!("router counts must be within 2..=250 (one /24 underlay, one more host joins)");
    }
    if let Some(dir) = &a.keep_logs {
        let _ = KEEP_LOGS.set(dir.clone());
    }
    if a.down {
        step(&format!(
            "removing what a run left behind (namespaces {PREFIX}-*)"
        ));
        // Every router ends at once first: asked to stop one by one while hundreds still
        // run and keep both CPUs busy, they took minutes.
        let killed = kill_all_routers();
        let gone = weave_tests::sweep(PREFIX);
        println!(
            "    killed {killed} routers, removed {} namespaces",
            gone.len()
        );
        return Ok(());
    }
    if !a.no_build {
        crate::setup::setup()?;
        crate::build::build()?;
    }
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let limits = KernelLimits::raise()?;
    if std::env::var_os("WEAVE_ROUTER_BIN").is_none() {
        std::env::set_var(
            "WEAVE_ROUTER_BIN",
            run::root().join("target/release/weave-router"),
        );
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut rng = Rng(seed);
    let more: Vec<String> = a
        .router_args
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut rows = Vec::new();
    let limit = Limits {
        launch: Duration::from_secs(a.launch_limit),
        agree: Duration::from_secs(a.agree_limit),
    };
    let idle = Duration::from_secs(a.idle_secs);
    // Each measurement of one size.
    let base = Variant {
        more: more.clone(),
        fake: a.fake_datapath,
        at_once: a.all_at_once,
    };
    let mut variants = vec![base.clone()];
    if a.also_no_discovery && !more.iter().any(|m| m == "--no-discovery") {
        let mut v = base.clone();
        v.more.push("--no-discovery".into());
        variants.push(v);
    }
    if a.also_fake_datapath {
        variants.push(Variant {
            fake: true,
            ..base.clone()
        });
    }
    if a.also_all_at_once {
        variants.push(Variant {
            at_once: true,
            ..base.clone()
        });
    }
    'sizes: for &n in &a.sizes {
        for v in &variants {
            match measure(n, v, idle, limit, &mut rng) {
                Ok(r) => rows.push(r),
                // Only a router that cannot start is blamed on the data path.
                Err(e) if !v.fake && !stopping() && format!("{e:#}").contains("launch") => {
                    println!("    {n} routers with the eBPF data path failed: {e:#}");
                    println!("    measuring the control plane alone instead (--fake-datapath)");
                    weave_tests::sweep(PREFIX);
                    let fake = Variant {
                        fake: true,
                        ..v.clone()
                    };
                    let mut r = measure(n, &fake, idle, limit, &mut rng)
                        .with_context(|| format!("{n} routers, fake data path"))?;
                    r.notes.push(format!("the eBPF data path failed at this size ({e:#}); measured with --fake-datapath"));
                    rows.push(r);
                }
                Err(e) => {
                    weave_tests::sweep(PREFIX);
                    if stopping() {
                        break 'sizes;
                    }
                    return Err(e.context(format!("{n} routers")));
                }
            }
        }
    }
    // Nothing of ours may stay behind, whatever happened above.
    weave_tests::sweep(PREFIX);
    drop(limits);
    if stopping() {
        bail!("interrupted; everything it made is removed");
    }

    let mut cmdline = String::from("cargo xtask scale");
    for n in &a.sizes {
        let _ = write!(cmdline, " {n}");
    }
    if a.fake_datapath {
        cmdline.push_str(" --fake-datapath");
    }
    if !more.is_empty() {
        let _ = write!(cmdline, " --router-args '{}'", more.join(" "));
    }
    if a.also_no_discovery {
        cmdline.push_str(" --also-no-discovery");
    }
    if a.also_fake_datapath {
        cmdline.push_str(" --also-fake-datapath");
    }
    if a.all_at_once {
        cmdline.push_str(" --all-at-once");
    }
    if a.also_all_at_once {
        cmdline.push_str(" --also-all-at-once");
    }
    let section = render(&a, &rows, seed, &cmdline);
    println!("\n{section}");
    if !a.no_write {
        let path = run::root().join(&a.output);
        write_section(&path, &section)?;
        step(&format!("wrote the Scale section of {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_replaced_between_markers_only() {
        let dir = std::env::temp_dir().join(format!("xtask-scale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("B.md");
        std::fs::write(&p, "# Benchmarks\n\ntable\n").unwrap();
        write_section(&p, "## Scale\n\none\n").unwrap();
        write_section(&p, "## Scale\n\ntwo\n").unwrap();
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(t.starts_with("# Benchmarks\n\ntable\n\n"));
        assert!(t.contains("two") && !t.contains("one"));
        assert_eq!(t.matches(BEGIN).count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn targets_are_distinct_earlier_hosts() {
        let mut r = Rng(7);
        for upto in 1..20 {
            let t = r.targets(upto);
            assert!(!t.is_empty() && t.len() <= 3 && t.iter().all(|&x| (1..=upto).contains(&x)));
            let d: BTreeSet<_> = t.iter().collect();
            assert_eq!(d.len(), t.len());
        }
    }
}
