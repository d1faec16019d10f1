//! Builds the kernel programs (`weave-ebpf`) and leaves the object in OUT_DIR, where
//! `datapath::ebpf` embeds it: `weave-router` is one binary.
//!
//! The build itself is `weave_ebpf_build::EbpfBuild::build`, the same one
//! `cargo xtask build-ebpf` runs (nightly, `bpfel-unknown-none`, into `<workspace>/target/ebpf`).
//! `WEAVE_EBPF_OBJECT=<path>` hands in a prebuilt object instead.

use std::env;
use std::path::{Path, PathBuf};
use std::process::exit;

use weave_ebpf_build::{EbpfBuild, SETUP_HINT};

fn fail(msg: &str) -> ! {
    // cargo prints a build script's stderr when it fails; keep it to one line.
    eprintln!("error: {msg}");
    exit(1);
}

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("workspace root");
    let ebpf = EbpfBuild::new(root);
    for p in ebpf.inputs() {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-env-changed=WEAVE_EBPF_OBJECT");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("weave-ebpf.o");

    // A prebuilt object (e.g. from `cargo xtask build-ebpf`) may be handed in instead.
    if let Some(prebuilt) = env::var_os("WEAVE_EBPF_OBJECT") {
        println!("cargo:rerun-if-changed={}", Path::new(&prebuilt).display());
        if let Err(e) = std::fs::copy(&prebuilt, &out) {
            fail(&format!(
                "cannot copy WEAVE_EBPF_OBJECT {}: {e}; {SETUP_HINT}",
                Path::new(&prebuilt).display()
            ));
        }
        return;
    }

    let built = ebpf.build().unwrap_or_else(|e| fail(&e.to_string()));
    if let Err(e) = std::fs::copy(&built, &out) {
        fail(&format!(
            "cannot copy the eBPF object {} to {}: {e}",
            built.display(),
            out.display()
        ));
    }
}
