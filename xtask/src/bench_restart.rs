//! Restart figures: pings lost and the longest gap while router 1 of two hosts restarts,
//! for an upgrade (`stop --keep-datapath`, then `launch`) and for a crash (`kill -9`, 10 s
//! down, `launch`), on three paths: host 1 to host 2, host 2 to host 1, and between two
//! containers of host 1 (the local data path alone). Median of `runs` restarts each, written
//! to the restart section of BENCHMARKS.md.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use weave_tests::restart::{PingLoss, PingRun, MAX_LOST};
use weave_tests::{LaunchOpts, TestBed};

use crate::run::{self, step};
use crate::stats::median;

const BEGIN: &str = "<!-- restart:begin (written by `cargo xtask bench --restart`) -->";
const END: &str = "<!-- restart:end -->";
const PREFIX: &str = "wrs";
const INTERVAL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Restart {
    Upgrade,
    Kill,
}

impl Restart {
    fn label(self) -> &'static str {
        match self {
            Restart::Upgrade => "upgrade: `stop --keep-datapath`, then `launch`",
            Restart::Kill => "crash: `kill -9`, 10 s down, then `launch`",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Restart::Upgrade => "upgrade",
            Restart::Kill => "kill",
        }
    }
}

/// The paths measured, as (label, container index into the bed's containers, address).
const PATHS: [&str; 3] = [
    "host 1 → host 2",
    "host 2 → host 1",
    "host 1 → host 1 (local)",
];

/// `runs` restarts of one kind over one bed: the losses per path, per run.
fn measure(kind: Restart, runs: usize) -> Result<Vec<[PingLoss; 3]>> {
    let mut bed = TestBed::new(PREFIX, 2).context("test bed")?;
    bed.launch_mesh(&[]).context("two routers")?;
    let a = bed.attach_container(1, "a", "10.2.1.1/24")?;
    let _local = bed.attach_container(1, "l", "10.2.1.3/24")?;
    let b = bed.attach_container(2, "b", "10.2.1.2/24")?;
    for (from, to) in [(a, "10.2.1.2"), (b, "10.2.1.1"), (a, "10.2.1.3")] {
        bed.container(from)
            .wait_ping(to, Duration::from_secs(10))
            .context("containers reach each other")?;
    }
    let down = match kind {
        Restart::Upgrade => Duration::ZERO,
        Restart::Kill => Duration::from_secs(10),
    };
    let lasting = down + Duration::from_secs(12);
    let mut out = Vec::new();
    for k in 0..runs {
        step(&format!("restart: {} run {}/{runs}", kind.label(), k + 1));
        // Back to a settled mesh between runs.
        bed.router(2)
            .wait_established(1, Duration::from_secs(60))
            .context("mesh back")?;
        bed.container(b)
            .wait_ping("10.2.1.1", Duration::from_secs(30))
            .context("host 2 reaches host 1 again")?;
        let pings = [
            PingRun::start(&bed.container(a).ns, "10.2.1.2", INTERVAL, lasting)?,
            PingRun::start(&bed.container(b).ns, "10.2.1.1", INTERVAL, lasting)?,
            PingRun::start(&bed.container(a).ns, "10.2.1.3", INTERVAL, lasting)?,
        ];
        std::thread::sleep(Duration::from_secs(2));
        match kind {
            Restart::Upgrade => bed.router_mut(1).stop_keeping_datapath()?,
            Restart::Kill => bed.router_mut(1).kill(),
        }
        std::thread::sleep(down);
        bed.relaunch(1, &LaunchOpts::default())
            .context("launch again")?;
        let [p0, p1, p2] = pings;
        let losses = [p0.finish()?, p1.finish()?, p2.finish()?];
        for (path, loss) in PATHS.iter().zip(&losses) {
            println!("  {path}: {loss}");
        }
        if losses.iter().any(|l| l.lost() > MAX_LOST) {
            keep_logs(&bed, kind, k + 1);
        }
        out.push(losses);
    }
    Ok(out)
}

/// Copies both routers' logs of a run that missed the target to `target/bench-restart/`
/// (each bed starts them afresh), and says where they are.
fn keep_logs(bed: &TestBed, kind: Restart, run: usize) {
    let dir = weave_tests::router::workspace_root().join("target/bench-restart");
    let _ = std::fs::create_dir_all(&dir);
    for host in 1..=2 {
        for from in bed.router(host).log_files() {
            let file = from.file_name().unwrap_or_default().to_string_lossy();
            let kept = dir.join(format!("{}-run{run}-host{host}-{file}", kind.tag()));
            match std::fs::copy(&from, &kept) {
                Ok(_) => println!("  log of router {host} kept in {}", kept.display()),
                Err(e) => println!("  log of router {host} not kept ({}: {e})", from.display()),
            }
        }
    }
}

/// Runs the restart figures and writes their section.
pub fn run(runs: usize, output: &std::path::Path) -> Result<()> {
    if !run::is_root() {
        bail!("the restart benchmark creates network namespaces: run it as root");
    }
    let load_before = crate::bench::loadavg();
    let mut rows = String::new();
    for kind in [Restart::Upgrade, Restart::Kill] {
        let results = measure(kind, runs)?;
        for (i, path) in PATHS.iter().enumerate() {
            let mut lost: Vec<f64> = results.iter().map(|r| r[i].lost() as f64).collect();
            let mut gap: Vec<f64> = results
                .iter()
                .map(|r| r[i].longest_gap.as_millis() as f64)
                .collect();
            let worst = results.iter().map(|r| r[i].lost()).max().unwrap_or(0);
            rows.push_str(&format!(
                "| {} | {path} | {:.0} | {worst} | {:.0} | {} |\n",
                kind.label(),
                median(&mut lost),
                median(&mut gap),
                results.len()
            ));
        }
    }
    let section = format!(
        "## Restarts\n\n\
         Written by `cargo xtask bench --restart` on {} (commit {}); 2 vCPU, load {} before, {} after; \
         routers in network namespaces, pings every {} ms between containers.\n\n\
         | restart of router 1 | path | pings lost (median) | worst | longest gap, ms (median) | runs |\n\
         |---|---|---:|---:|---:|---:|\n{rows}\n\
         Target (hitless restarts): at most 2 pings lost. The local path needs only the pinned data \
         path adopted by the next launch; the paths across hosts also need router 2 to keep router 1's \
         entries while its control connection is down (in a run where it drops them at once, those \
         paths lose what the control connection's absence lasts).\n",
        run::utc_now(),
        run::git_head(),
        load_before,
        crate::bench::loadavg(),
        INTERVAL.as_millis(),
    );
    println!("{section}");
    run::write_marked_section(output, BEGIN, END, &section)
}
