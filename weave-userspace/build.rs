//! Builds the kernel programs (`weave-ebpf`, nightly, `bpfel-unknown-none`) and leaves the
//! object in OUT_DIR, where `datapath::ebpf` embeds it: `weave-router` is one binary.
//!
//! The programs are built into `<workspace>/target/ebpf` with
//! `cargo +nightly build --release --target bpfel-unknown-none -Z build-std=core`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const SETUP_HINT: &str = "run `cargo xtask setup`";

fn fail(msg: &str) -> ! {
    // cargo prints a build script's stderr when it fails; keep it to one line.
    eprintln!("error: {msg}; {SETUP_HINT}");
    exit(1);
}

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("workspace root").to_path_buf();
    let ebpf_dir = root.join("weave-ebpf");
    let common_dir = root.join("weave-ebpf-common");
    for p in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        ebpf_dir.join(".cargo/config.toml"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-env-changed=WEAVE_EBPF_OBJECT");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("weave-ebpf.o");

    // A prebuilt object (e.g. from `cargo xtask build-ebpf`) may be handed in instead.
    if let Some(prebuilt) = env::var_os("WEAVE_EBPF_OBJECT") {
        println!("cargo:rerun-if-changed={}", Path::new(&prebuilt).display());
        if let Err(e) = std::fs::copy(&prebuilt, &out) {
            fail(&format!(
                "cannot copy WEAVE_EBPF_OBJECT {}: {e}",
                Path::new(&prebuilt).display()
            ));
        }
        return;
    }

    let home = env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let cargo_bin = home.join(".cargo/bin");
    let path = match env::var_os("PATH") {
        Some(p) => {
            let mut dirs = vec![cargo_bin.clone()];
            dirs.extend(env::split_paths(&p));
            env::join_paths(dirs).expect("PATH")
        }
        None => cargo_bin.clone().into_os_string(),
    };
    if !env::split_paths(&path).any(|d| d.join("bpf-linker").is_file()) {
        fail("bpf-linker is not installed (needed to build the eBPF programs)");
    }

    let target_dir = root.join("target").join("ebpf");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        .env("PATH", &path);
    // The outer cargo's settings are for the host build; none of them may leak into this one.
    for (k, _) in env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        let host_only = (k.starts_with("CARGO") && k != "CARGO_HOME")
            || k.starts_with("RUSTC")
            || k.starts_with("RUSTDOC")
            || k == "RUSTFLAGS"
            || k == "RUSTUP_TOOLCHAIN"
            || k == "TARGET"
            || k == "HOST"
            || k == "OUT_DIR"
            || k == "PROFILE"
            || k == "OPT_LEVEL"
            || k == "DEBUG";
        if host_only {
            cmd.env_remove(k);
        }
    }
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => fail(&format!(
            "cannot run rustup to build the eBPF programs with nightly: {e}"
        )),
    };
    if !status.success() {
        // Tell a missing toolchain apart from a compile error in the programs.
        let nightly_ok = Command::new("rustup")
            .args(["run", "nightly", "rustc", "--print", "sysroot"])
            .env_remove("RUSTUP_TOOLCHAIN")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|sysroot| sysroot.join("lib/rustlib/src/rust/library/core").is_dir());
        if nightly_ok.is_none() {
            fail("the nightly toolchain with rust-src is missing (needed to build the eBPF programs)");
        }
        eprintln!(
            "error: building the eBPF programs in {} failed (see above)",
            ebpf_dir.display()
        );
        exit(1);
    }
    let built = target_dir.join("bpfel-unknown-none/release/weave-ebpf");
    if let Err(e) = std::fs::copy(&built, &out) {
        fail(&format!(
            "eBPF object {} missing after the build: {e}",
            built.display()
        ));
    }
}
