//! `cargo xtask build-ebpf` and `cargo xtask build`.

use std::time::Instant;

use anyhow::{bail, Result};

use crate::run::{self, cmd, status, step};

/// Variables of the outer cargo that must not leak into a build for another target.
const OUTER_ENV: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO",
];

/// Builds the kernel programs: weave-ebpf for bpfel-unknown-none with the nightly toolchain.
pub fn build_ebpf() -> Result<()> {
    step("build-ebpf");
    let dir = run::root().join("weave-ebpf");
    if !dir.join("Cargo.toml").is_file() {
        bail!("{} has no Cargo.toml yet", dir.display());
    }
    let t = Instant::now();
    // The same target dir as weave-userspace/build.rs, so the two builds share their work.
    let target_dir = run::root().join("target/ebpf");
    let mut c = cmd("rustup");
    c.current_dir(&dir)
        .args(["run", "nightly", "cargo", "build", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir);
    for v in OUTER_ENV {
        c.env_remove(v);
    }
    status(&mut c)?;
    println!(
        "    eBPF object built in {:.1}s under {}",
        t.elapsed().as_secs_f64(),
        target_dir
            .join("bpfel-unknown-none/release/weave-ebpf")
            .display()
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
