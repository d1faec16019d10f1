//! Docker figures: time from `docker run` (through the router's proxy) until the container
//! is reachable from another host and its name resolves there. Written to the Docker
//! section of BENCHMARKS.md.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weave_tests::docker::{self, DockerHost, IMAGE};
use weave_tests::{host_addr, LaunchOpts, TestBed};

use crate::run::{self, step};

const BEGIN: &str = "<!-- docker:begin (written by `cargo xtask bench`) -->";
const END: &str = "<!-- docker:end -->";
const PREFIX: &str = "dkb";

/// Two hosts, each with a dockerd and a router connected to it; `w2` running on host 2.
struct Bed {
    bed: TestBed,
    daemons: Vec<DockerHost>,
}

impl Bed {
    fn new() -> Result<Bed> {
        docker::available().map_err(anyhow::Error::msg)?;
        let mut bed = TestBed::new(PREFIX, 2).context("test bed")?;
        let daemons = DockerHost::start_per_host(&bed, 2).context("dockerd")?;
        for (i, d) in (1..=2).zip(&daemons) {
            let opts = LaunchOpts {
                peers: (1..i).map(|j| host_addr(j).to_string()).collect(),
                extra: vec![
                    "--xdp".into(),
                    "off".into(),
                    "--docker-host".into(),
                    d.docker_host(),
                    "--proxy-socket".into(),
                    d.dir().join("weave.sock").to_string_lossy().to_string(),
                ],
            };
            bed.launch(i, &opts).context("router")?;
        }
        for i in 1..=2 {
            bed.router(i).wait_established(1, Duration::from_secs(30))?;
        }
        Ok(Bed { bed, daemons })
    }

    fn proxy(&self, i: usize) -> String {
        format!(
            "unix://{}",
            self.daemons[i - 1].dir().join("weave.sock").display()
        )
    }

    fn run(&self, i: usize, name: &str) -> Result<()> {
        let out = self.daemons[i - 1].docker_at(
            &self.proxy(i),
            &[
                "run",
                "-d",
                "--net=none",
                "--name",
                name,
                IMAGE,
                "sleep",
                "3600",
            ],
        )?;
        if !out.success() {
            bail!("docker run {name}: {}", out.stderr.trim());
        }
        Ok(())
    }

    fn pings(&self, i: usize, name: &str, target: &str) -> bool {
        self.daemons[i - 1]
            .docker(&["exec", name, "ping", "-c", "1", "-W", "1", target])
            .is_ok_and(|o| o.success())
    }

    fn resolves_on(&self, i: usize, name: &str) -> bool {
        self.bed
            .router(i)
            .http_get(&format!("/dns/lookup/{name}"))
            .is_ok_and(|a| !a.trim().is_empty())
    }
}

/// Milliseconds from `docker run` on host 1 until the new container pings `w2` on host 2
/// by name and its own name resolves on host 2.
fn once(b: &Bed, k: usize) -> Result<f64> {
    let name = format!("b{k}");
    let t = Instant::now();
    b.run(1, &name)?;
    let deadline = t + Duration::from_secs(30);
    let (mut reached, mut resolved) = (false, false);
    while !(reached && resolved) {
        if Instant::now() > deadline {
            let addr = b.daemons[0]
                .docker(&["exec", &name, "ip", "-4", "-o", "addr"])
                .map(|o| o.stdout)
                .unwrap_or_default();
            let neigh = b.daemons[1]
                .docker(&["exec", "w2", "ip", "neigh"])
                .map(|o| o.stdout)
                .unwrap_or_default();
            bail!(
                "{name} not reachable ({reached}) and resolvable ({resolved}) within 30 s; \
                 its addresses: {addr}; w2's neighbours: {neigh}"
            );
        }
        reached = reached || b.pings(1, &name, "w2");
        resolved = resolved || b.resolves_on(2, &name);
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    // Kept running: a removed container's address would be handed to the next one, and
    // w2 would keep the old MAC for it until its neighbour entry goes stale (see README,
    // Limitations).
    Ok(ms)
}

/// Runs the Docker figure and writes its section.
pub fn run(runs: usize, output: &std::path::Path) -> Result<()> {
    if !run::is_root() {
        bail!("the Docker benchmark runs dockerd in network namespaces: run it as root");
    }
    step(&format!(
        "Docker: docker run until reachable and resolvable, {runs} runs"
    ));
    let b = Bed::new()?;
    b.run(2, "w2")?;
    let mut warm = 0;
    while !b.resolves_on(1, "w2") {
        warm += 1;
        if warm > 100 {
            bail!("w2 does not resolve on host 1");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut times = Vec::new();
    for k in 0..runs {
        times.push(once(&b, k)?);
    }
    drop(b);
    let section = crate::bench::timed_figure_section(
        "Docker",
        "one dockerd and one router per simulated host (network namespaces).",
        "`docker run -d` through the proxy on host 1 until the container pings a container of \
         host 2 by name and its own name resolves on host 2 (ms)",
        "The time includes `docker run` itself (create, start; the proxy answers the start once \
         the container is attached) and one `docker exec ping` per poll; the containers of \
         earlier runs keep running, so every run gets a fresh address.",
        &mut times,
    );
    println!("{section}");
    run::write_marked_section(output, BEGIN, END, &section)
}
