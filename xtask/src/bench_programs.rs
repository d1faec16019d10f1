//! `cargo xtask bench --programs`: the per-packet cost of each kernel program path, measured
//! with BPF_PROG_TEST_RUN by the `programs` bench of weave-userspace
//! (`weave-userspace/benches/programs.rs`), and the programs' instruction counts. Written to
//! the Programs section of BENCHMARKS.md.

use anyhow::{bail, Context, Result};

use crate::run::{self, step};

const BEGIN: &str = "<!-- programs:begin (written by `cargo xtask bench --programs`) -->";
const END: &str = "<!-- programs:end -->";

/// Builds and runs the bench (`runs` test runs per path) and writes its section.
pub fn run(runs: usize, output: &std::path::Path) -> Result<()> {
    let load_before = crate::bench::loadavg();
    step("per-packet cost of each program path (BPF_PROG_TEST_RUN)");
    let mut cargo = run::cargo();
    // The package variables `cargo xtask` set for xtask itself would count as a changed
    // environment for build scripts that watch them, and rebuild those crates.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CARGO_PKG_") || k == "CARGO_MANIFEST_PATH" {
            cargo.env_remove(k);
        }
    }
    let out = cargo
        .args([
            "bench",
            "-p",
            "weave-userspace",
            "--bench",
            "programs",
            "--",
            "--iterations",
            &runs.to_string(),
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run `cargo bench --bench programs`")?;
    if !out.status.success() {
        bail!("`cargo bench --bench programs` failed ({})", out.status);
    }
    let tables = String::from_utf8_lossy(&out.stdout);
    let section = format!(
        "## Kernel programs: cost per packet\n\n\
         Written by `cargo xtask bench --programs` on {} (commit {}); kernel {}, 2 vCPU. Load \
         average: {load_before} before, {} after.\n\n\
         Each path runs its program on a representative frame (a container's UDP datagram with \
         64 bytes of payload, as the UDP 64 B figure sends; encapsulated as a peer sends it for \
         the RX paths) with BPF_PROG_TEST_RUN, {runs} times, the maps set up as a router with \
         two direct peers, a local container and a learned remote one (steady state: nothing \
         left to learn). The figure is the kernel's own time for one run of the program, one \
         clock read included (the \"not VXLAN\" row, which returns after its first loads, is \
         that floor). Test runs start from an skb without a flow hash, as a ping's frames do: \
         the encapsulating paths hash the inner IPv4 header themselves (a container socket's \
         frames carry their socket's hash, taken as it is). Broadcast copies are cloned out of the loopback device.\n\n\
         {tables}\n\
         Reproduce: `cargo xtask bench --programs` (as root; seconds once built). To see where a \
         path's time goes: `perf record -e cpu-clock -g target/release/deps/programs-* --only \
         \"RX to a local\" --iterations 300000`, then the samples under the program's symbol.\n",
        run::utc_now(),
        run::git_head(),
        run::sh("uname -r"),
        crate::bench::loadavg(),
    );
    run::write_marked_section(output, BEGIN, END, &section)?;
    println!("{section}");
    Ok(())
}
