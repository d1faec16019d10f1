//! IP allocation figures: how long a fresh 3-peer consensus takes (from the first request
//! to its address), and the latency of allocations when the space is local (HTTP request
//! to answer, the state persisted before the answer). Written to the IPAM section of
//! BENCHMARKS.md.

use std::io::{Read, Write};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use weave_tests::{Netns, TestBed};

use crate::run::{self, step};
use crate::stats::{median, percentile};

const BEGIN: &str = "<!-- ipam:begin (written by `cargo xtask bench`) -->";
const END: &str = "<!-- ipam:end -->";
const PREFIX: &str = "wib";
const LAUNCH: [&str; 6] = [
    "--ipalloc-range",
    "10.2.0.0/16",
    "--init-peer-count",
    "3",
    "--xdp",
    "off",
];

/// Milliseconds from the first allocation request on a fresh 3-router mesh until its answer
/// (the consensus on who owns the range runs in between).
fn consensus_once() -> Result<f64> {
    let mut bed = TestBed::new(PREFIX, 3).context("test bed")?;
    bed.launch_mesh(&LAUNCH).context("three routers")?;
    let c = bed.add_container(1, "c")?;
    let path = bed.container(c).ns.path();
    let t = Instant::now();
    bed.router(1)
        .attach("net:default", &path)
        .context("first attach")?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Sends `n` `POST /ip/<owner>` to the router in `ns` over one connection each, on the API's
/// unix socket (mutating calls are not served on TCP); the latency of each in milliseconds.
fn local_allocations(ns: &Netns, n: usize) -> Result<Vec<f64>> {
    let times = ns.enter(|| -> std::io::Result<Vec<f64>> {
        let mut out = Vec::with_capacity(n);
        for k in 0..n {
            let t = Instant::now();
            let mut s = std::os::unix::net::UnixStream::connect_addr(&api_socket()?)?;
            write!(
                s,
                "POST /ip/bench-{k} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
            )?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            out.push(t.elapsed().as_secs_f64() * 1000.0);
            if !answer.starts_with("HTTP/1.0 200") && !answer.starts_with("HTTP/1.1 200") {
                return Err(std::io::Error::other(answer));
            }
        }
        Ok(out)
    })?;
    Ok(times?)
}

/// The router's API socket, `@weave-router/127.0.0.1:6784` (abstract, per network namespace).
fn api_socket() -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(b"weave-router/127.0.0.1:6784")
}

/// Runs the IPAM figures and writes their section.
pub fn run(runs: usize, output: &std::path::Path) -> Result<()> {
    if !run::is_root() {
        bail!("the IPAM benchmark creates network namespaces: run it as root");
    }
    step(&format!("IPAM: fresh 3-peer consensus, {runs} runs"));
    let mut consensus = Vec::new();
    for _ in 0..runs {
        consensus.push(consensus_once()?);
    }
    step("IPAM: 500 allocations with the space local");
    let mut bed = TestBed::new(PREFIX, 3).context("test bed")?;
    bed.launch_mesh(&LAUNCH).context("three routers")?;
    let c = bed.add_container(1, "warm")?;
    let path = bed.container(c).ns.path();
    bed.router(1)
        .attach("net:default", &path)
        .context("first attach")?;
    let mut local = local_allocations(&bed.host(1).ns, 500)?;
    drop(bed);

    let section = format!(
        "## IP allocation\n\n\
         Written by `cargo xtask bench` on {} (commit {}); 2 vCPU, routers in network namespaces.\n\n\
         | figure | median | p99 | runs |\n|---|---:|---:|---:|\n\
         | fresh 3-peer consensus: first `attach net:default` until its address (ms) | {:.1} | — | {} |\n\
         | allocation with the space local: `POST /ip/<owner>` to answer, state fsynced first (ms) | {:.2} | {:.2} | {} |\n\n\
         Target (IPAM issue): allocation < 1 ms when the space is local.\n",
        run::utc_now(),
        run::git_head(),
        median(&mut consensus),
        consensus.len(),
        median(&mut local),
        percentile(&mut local, 0.99),
        local.len(),
    );
    println!("{section}");
    run::write_marked_section(output, BEGIN, END, &section)
}
