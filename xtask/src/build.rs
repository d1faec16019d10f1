//! `cargo xtask build-ebpf` and `cargo xtask build`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
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

/// Where [`build_static`] leaves the static weave-router.
pub fn static_binary() -> PathBuf {
    run::root().join("target/release/weave-router-static")
}

/// Builds a static weave-router (glibc, `+crt-static`, no loader needed: what the
/// `FROM scratch` image runs) at [`static_binary`], and leaves target/release/weave-router
/// dynamic as [`build`] makes it.
///
/// Only the binary's own crate is compiled with `+crt-static` (`cargo rustc`); the library
/// and the dependencies are those of the release build, so this costs a relink, not a second
/// build of the dependency tree. Nothing beyond glibc's static libraries (libc6-dev, there
/// with any Rust toolchain) is needed.
pub fn build_static() -> Result<PathBuf> {
    step("build (release, static)");
    let t = Instant::now();
    let root = run::root();
    let bin = root.join("target/release/weave-router");
    status(crate::run::cargo().current_dir(&root).args([
        "rustc",
        "--release",
        "-p",
        "weave-userspace",
        "--bin",
        "weave-router",
        "--",
        "-C",
        "target-feature=+crt-static",
    ]))?;
    let out = static_binary();
    // A copy, not a rename or a hard link: the next link of the dynamic binary may rewrite
    // the file in place.
    std::fs::copy(&bin, &out)
        .with_context(|| format!("copy {} to {}", bin.display(), out.display()))?;
    let elf = std::fs::read(&out).with_context(|| format!("read {}", out.display()))?;
    if needs_loader(&elf)? {
        bail!("{} asks for a dynamic loader: not static", out.display());
    }
    // The dynamic binary again (the binary's crate alone is recompiled and relinked).
    relink_dynamic(&root)?;
    println!(
        "    {} built in {:.1}s",
        out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(out)
}

fn relink_dynamic(root: &Path) -> Result<()> {
    status(crate::run::cargo().current_dir(root).args([
        "build",
        "--release",
        "-p",
        "weave-userspace",
        "--bin",
        "weave-router",
    ]))
}

/// True when the ELF64 executable `elf` has a `PT_INTERP` program header, i.e. needs
/// ld.so to start (a static or static-pie binary has none).
fn needs_loader(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    // Magic, ELFCLASS64, little endian.
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        bail!("not a little-endian ELF64 file");
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("truncated ELF header");
    };
    for i in 0..phnum as usize {
        let at = phoff as usize + i * phentsize as usize;
        match u32_at(at) {
            Some(PT_INTERP) => return Ok(true),
            Some(_) => {}
            None => bail!("truncated ELF program headers"),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::needs_loader;

    /// An ELF64 header with `types` as its program headers (56 bytes each, after the
    /// 64-byte header).
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 * types.len()];
        b[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            b[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        b
    }

    #[test]
    fn an_interpreter_header_means_dynamic() {
        // PT_PHDR, PT_INTERP, PT_LOAD
        assert!(needs_loader(&elf(&[6, 3, 1])).unwrap());
        // static-pie: PT_LOAD, PT_DYNAMIC, no PT_INTERP
        assert!(!needs_loader(&elf(&[1, 2])).unwrap());
        assert!(needs_loader(b"#!/bin/sh\n").is_err());
        let mut cut = elf(&[1, 3]);
        cut.truncate(100);
        assert!(needs_loader(&cut).is_err());
    }
}
