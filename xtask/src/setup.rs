//! `cargo xtask setup`: everything building and testing need, installed only where missing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::run::{self, cmd, output_ok, status, step};

/// Debian packages the project uses, with the command each provides.
const PACKAGES: &[(&str, &str)] = &[
    (
        "iproute2",
        "ip, bridge: namespaces, veth, bridges, VXLAN baseline",
    ),
    ("iputils-ping", "ping: tests, demo, bench"),
    ("iperf3", "iperf3: bench"),
    (
        "util-linux",
        "nsenter: running inside a host's network namespace",
    ),
    ("bpftool", "bpftool: inspecting pinned maps"),
    ("tcpdump", "tcpdump: looking at the underlay"),
    ("prometheus", "promtool: checking /metrics"),
    (
        "nftables",
        "nft: cutting links between simulated hosts in the mesh tests",
    ),
    ("procps", "sysctl"),
    (
        "systemd",
        "systemd-analyze: checking the unit (no systemd runs as PID 1 here)",
    ),
    (
        "libc6-dev",
        "libc.a: the static weave-router of the image (and its test)",
    ),
    ("dnsutils", "dig: DNS tests"),
    (
        "curl",
        "curl: the API tests (a web page's requests, the unix socket)",
    ),
    (
        "dnsmasq-base",
        "dnsmasq: the upstream DNS server of the DNS tests (no system service)",
    ),
    ("dnsperf", "dnsperf: DNS bench"),
    (
        "docker.io",
        "dockerd, docker: one daemon per simulated host in the Docker tests",
    ),
    (
        "busybox-static",
        "busybox: the Docker tests' image, built offline",
    ),
    (
        "podman",
        "podman: the CNI plugin's tests run containers with its CNI backend",
    ),
    (
        "containernetworking-plugins",
        "portmap: chained after weave-net in the CNI tests",
    ),
    (
        "iptables",
        "iptables: what portmap programs published ports with",
    ),
    (
        "wireguard-tools",
        "wg: configuring boringtun, the user-space WireGuard the sleeve bench compares against",
    ),
    (
        "chromium",
        "chromium: the topology page's test loads it in a real (headless) browser",
    ),
];

/// The bpf-linker release the eBPF build uses.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> Result<()> {
    let t = Instant::now();
    step("setup");
    apt_packages()?;
    nightly()?;
    bpf_linker()?;
    cargo_fuzz()?;
    bpffs()?;
    println!("    setup done in {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}

fn installed(pkg: &str) -> bool {
    output_ok(cmd("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.trim() == "install ok installed")
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        println!("    apt packages: all present");
        return Ok(());
    }
    if !run::is_root() {
        bail!(
            "missing packages {} and not root: run `sudo cargo xtask setup` (or install them)",
            missing.join(" ")
        );
    }
    println!("    apt packages missing: {}", missing.join(" "));
    status(
        cmd("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    status(
        cmd("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still: Vec<&str> = missing.iter().copied().filter(|p| !installed(p)).collect();
    if !still.is_empty() {
        bail!("apt-get did not install {}", still.join(" "));
    }
    Ok(())
}

/// cargo-fuzz, for the fuzz targets (`cargo xtask fuzz`, and briefly `cargo xtask test`).
fn cargo_fuzz() -> Result<()> {
    if crate::fuzz::cargo_fuzz_installed() {
        println!("    cargo-fuzz: present");
        return Ok(());
    }
    println!("    installing cargo-fuzz");
    status(cmd("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

fn rustup() -> std::process::Command {
    let mut c = cmd("rustup");
    c.env_remove("RUSTUP_TOOLCHAIN");
    c
}

fn nightly() -> Result<()> {
    let list = output_ok(rustup().args(["toolchain", "list"]))
        .context("rustup is needed (https://rustup.rs)")?;
    if !list.lines().any(|l| l.starts_with("nightly")) {
        println!("    installing the nightly toolchain");
        status(rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let comps =
        output_ok(rustup().args(["component", "list", "--installed", "--toolchain", "nightly"]))
            .unwrap_or_default();
    if comps.lines().any(|l| l.trim() == "rust-src") {
        println!("    nightly rust-src: present");
    } else {
        println!("    adding rust-src to nightly");
        status(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    Ok(())
}

/// `bpf-linker --version` if it runs (a bpf-linker whose libLLVM went away does not).
fn bpf_linker_version() -> Option<String> {
    output_ok(cmd("bpf-linker").arg("--version")).map(|s| s.trim().to_string())
}

/// The nightly's `rustc -vV`.
fn nightly_rustc_vv() -> Result<String> {
    output_ok(rustup().args(["run", "nightly", "rustc", "-vV"]))
        .context("cannot run the nightly rustc")
}

fn llvm_major(vv: &str) -> Result<String> {
    let v = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .context("the nightly rustc does not say its LLVM version")?;
    Ok(v.trim().split('.').next().unwrap_or_default().to_string())
}

/// The nightly's own libLLVM shared object.
fn nightly_libllvm() -> Result<PathBuf> {
    let sysroot = output_ok(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context("cannot ask the nightly rustc for its sysroot")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let mut best: Option<(u64, PathBuf)> = None;
    for e in std::fs::read_dir(&lib).with_context(|| format!("read {}", lib.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("libLLVM") || !name.contains(".so") {
            continue;
        }
        let len = e.metadata()?.len();
        // The real library, not the small linker script beside it.
        if best.as_ref().is_none_or(|(l, _)| len > *l) {
            best = Some((len, e.path()));
        }
    }
    best.map(|(_, p)| p)
        .with_context(|| format!("no libLLVM shared object in {}", lib.display()))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| run::home().join(".cache"))
        .join("weave-router")
}

fn symlink_fresh(target: &Path, link: &Path) -> Result<()> {
    if std::fs::read_link(link).ok().as_deref() == Some(target) {
        return Ok(());
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).with_context(|| format!("symlink {}", link.display()))
}

fn bpf_linker() -> Result<()> {
    if let Some(v) = bpf_linker_version() {
        if v.contains(BPF_LINKER_VERSION) {
            println!("    {v}: present");
            return Ok(());
        }
        println!("    found {v}, want {BPF_LINKER_VERSION}: rebuilding");
    }
    let major = llvm_major(&nightly_rustc_vv()?)?;
    let lib = nightly_libllvm()?;
    // A lasting prefix: bpf-linker keeps it as its RUNPATH.
    let prefix = cache_dir().join(format!("llvm-{major}-nightly"));
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir).with_context(|| format!("create {}", libdir.display()))?;
    let soname = lib.file_name().context("libLLVM path has no file name")?;
    symlink_fresh(&lib, &libdir.join("libLLVM.so"))?;
    symlink_fresh(&lib, &libdir.join(soname))?;
    println!(
        "    building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} ({}); takes a few minutes",
        lib.display()
    );
    let t = Instant::now();
    status(
        crate::run::cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                &format!("={BPF_LINKER_VERSION}"),
            ])
            .args([
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    let v = bpf_linker_version().context("bpf-linker was installed but does not run")?;
    println!("    {v} built in {:.0}s", t.elapsed().as_secs_f64());
    Ok(())
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let mut f = l.split_whitespace();
            let (_, mnt, fs) = (f.next(), f.next(), f.next());
            mnt == Some("/sys/fs/bpf") && fs == Some("bpf")
        })
}

fn bpffs() -> Result<()> {
    if bpffs_mounted() {
        println!("    bpffs: mounted at /sys/fs/bpf");
        return Ok(());
    }
    if !run::is_root() {
        println!("    bpffs: not mounted (needs root; the tests that need it will say so)");
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    status(cmd("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    println!("    bpffs: mounted at /sys/fs/bpf");
    Ok(())
}
