//! `cargo xtask build-ebpf` and `cargo xtask build`.

use std::time::Instant;

use anyhow::{bail, Result};
use weave_ebpf_build::EbpfBuild;

use crate::run::{self, status, step};

/// Builds the kernel programs: weave-ebpf for bpfel-unknown-none with the nightly toolchain,
/// the same build as weave-userspace's build script runs (and into the same target dir, so
/// the two share their work).
pub fn build_ebpf() -> Result<()> {
    step("build-ebpf");
    let t = Instant::now();
    let object = EbpfBuild::new(run::root()).build()?;
    println!(
        "    eBPF object built in {:.1}s under {}",
        t.elapsed().as_secs_f64(),
        object.display()
    );
    Ok(())
}

/// Builds target/release/weave-router (its build script embeds the eBPF object).
pub fn build() -> Result<()> {
    step("build (release)");
    let t = Instant::now();
    status(crate::run::cargo().current_dir(run::root()).args([
        "build",
        "--release",
        "-p",
        "weave-userspace",
    ]))?;
    let bin = run::root().join("target/release/weave-router");
    let Ok(meta) = std::fs::metadata(&bin) else {
        bail!("the build did not leave {}", bin.display());
    };
    println!(
        "    {} ({:.1} MB) built in {:.1}s",
        bin.display(),
        meta.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
