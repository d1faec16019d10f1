//! The CNI figure: time from `podman run --network weave` (podman's CNI backend, the
//! `weave-net` plugin) until the container is reachable from a container of another host.
//! Written beside the Docker figure in BENCHMARKS.md.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weave_tests::podman::Podman;
use weave_tests::{Netns, TestBed};

use crate::run::{self, step};

const BEGIN: &str = "<!-- podman:begin (written by `cargo xtask bench`) -->";
const END: &str = "<!-- podman:end -->";
const PREFIX: &str = "pdb";

/// Two hosts with connected routers, podman on each; `w2` running on host 2.
struct Bed {
    bed: TestBed,
    podman: Podman,
    rootfs: String,
}

impl Bed {
    fn new() -> Result<Bed> {
        let mut bed = TestBed::new(PREFIX, 2).context("test bed")?;
        bed.launch_mesh(&["--xdp", "off"]).context("routers")?;
        let bin = weave_tests::router::require_binary()?;
        let podman = Podman::new(
            &weave_tests::bed::state_base(bed.prefix()).join("podman"),
            &bin,
        )
        .context("podman set-up")?;
        let rootfs = podman.rootfs().display().to_string();
        Ok(Bed {
            bed,
            podman,
            rootfs,
        })
    }

    fn host(&self, i: usize) -> Netns {
        Netns::borrow(self.bed.host(i).ns.name())
    }

    fn podman(&self, i: usize, args: &[&str]) -> Result<weave_tests::Output> {
        Ok(self
            .podman
            .run(&self.host(i), args, Duration::from_secs(60))?)
    }

    /// `podman run -d --network weave NAME sleep`, on host `i`.
    fn run(&self, i: usize, name: &str) -> Result<()> {
        let out = self.podman(
            i,
            &[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "weave",
                // busybox ping needs a raw socket; podman leaves NET_RAW out by default.
                "--cap-add",
                "NET_RAW",
                "--rootfs",
                &self.rootfs,
                "/bin/sleep",
                "3600",
            ],
        )?;
        if !out.success() {
            bail!("podman run {name}: {}", out.stderr.trim());
        }
        Ok(())
    }

    fn pings(&self, i: usize, name: &str, target: &str) -> bool {
        self.podman(i, &["exec", name, "ping", "-c", "1", "-W", "1", target])
            .is_ok_and(|o| o.success())
    }

    /// The address podman's result gave container `name` on host `i`.
    fn address(&self, i: usize, name: &str) -> Result<String> {
        let out = self.podman(
            i,
            &[
                "inspect",
                "-f",
                "{{.NetworkSettings.Networks.weave.IPAddress}}",
                name,
            ],
        )?;
        let a = out.stdout.trim().to_string();
        if !out.success() || a.is_empty() {
            bail!("no address for {name}: {}", out.stderr.trim());
        }
        Ok(a)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for i in 1..=2 {
            self.podman.remove_all(&self.host(i));
        }
    }
}

/// Milliseconds from `podman run` on host 1 until the new container pings `w2` on host 2.
fn once(b: &Bed, k: usize, w2: &str) -> Result<f64> {
    let name = format!("b{k}");
    let t = Instant::now();
    b.run(1, &name)?;
    let deadline = t + Duration::from_secs(30);
    while !b.pings(1, &name, w2) {
        if Instant::now() > deadline {
            bail!("{name} does not reach w2 ({w2}) within 30 s");
        }
    }
    // Kept running, as the Docker figure's: every run gets a fresh address.
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Runs the podman figure and writes its section.
pub fn run(runs: usize, output: &std::path::Path) -> Result<()> {
    if !run::is_root() {
        bail!("the podman benchmark runs podman in network namespaces: run it as root");
    }
    step(&format!(
        "podman (CNI): podman run until reachable, {runs} runs"
    ));
    let b = Bed::new()?;
    b.run(2, "w2")?;
    let w2 = b.address(2, "w2")?;
    let mut times = Vec::new();
    for k in 0..runs {
        times.push(once(&b, k, &w2)?);
    }
    drop(b);
    let section = crate::bench::timed_figure_section(
        "podman (CNI)",
        "one router and podman 4.3 (CNI backend, `weave-net` then `portmap`) per simulated host.",
        "`podman run -d --network weave` on host 1 until the container pings a container of \
         host 2 (ms)",
        "The time includes `podman run` itself (create, the CNI ADD, start) and one \
         `podman exec ping` per poll, each a podman process of its own (podman has no daemon); \
         the containers of earlier runs keep running, so every run gets a fresh address.",
        &mut times,
    );
    println!("{section}");
    run::write_marked_section(output, BEGIN, END, &section)
}
