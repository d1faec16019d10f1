//! `cargo xtask <command>`: set-up, build, demo, tests and benchmarks of weave-router.

mod bench;
mod bench_dns;
mod bench_docker;
mod bench_ipam;
mod bench_restart;
mod bench_podman;
mod bench_programs;
mod bench_sleeve;
mod build;
mod deb;
mod demo;
mod docker_image;
mod fuzz;
mod run;
mod scale;
mod setup;
mod stats;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Set-up, build, demo, tests and benchmarks of weave-router"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (apt packages, rust-src, bpf-linker, bpffs).
    /// Quick when nothing is missing.
    Setup,
    /// Build the eBPF object (nightly, bpfel-unknown-none).
    BuildEbpf,
    /// Build target/release/weave-router (eBPF object embedded).
    Build {
        /// Skip `setup`.
        #[arg(long)]
        no_setup: bool,
    },
    /// Set up, build, and run every test: unit, BPF_PROG_TEST_RUN, netns end to end. A test
    /// that skips itself fails the run (setup should have installed what it needs).
    Test {
        /// Skip `setup` and `build`.
        #[arg(long)]
        no_build: bool,
        /// Only run the end-to-end tests whose name contains this.
        #[arg(long)]
        e2e_filter: Option<String>,
        /// Only run the end-to-end tests (not the workspace's unit, integration and
        /// BPF_PROG_TEST_RUN tests).
        #[arg(long)]
        e2e_only: bool,
    },
    /// Fuzz every target of fuzz/ (cargo-fuzz, nightly) for SECS seconds each, one at a
    /// time; reports runs and execs per target and fails on a crash (its input is kept in
    /// fuzz/artifacts/<target>/).
    Fuzz {
        /// Seconds per target.
        #[arg(default_value_t = fuzz::DEFAULT_SECS)]
        secs: u64,
        /// Add the new inputs that widen coverage to the corpus in the repo.
        #[arg(long)]
        merge: bool,
        /// Only the targets whose name contains this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Three simulated hosts, each with a router and two containers; pings across.
    Demo {
        /// Leave it running and say how to step inside.
        #[arg(long, conflicts_with = "down")]
        keep: bool,
        /// Remove a demo left by `--keep`.
        #[arg(long)]
        down: bool,
        /// Skip `setup` and `build`.
        #[arg(long)]
        no_build: bool,
    },
    /// The router's container image (docker/Dockerfile): FROM scratch with a static binary.
    DockerImage {
        /// The daemon to build with (default: DOCKER_HOST or the default socket).
        #[arg(long, value_name = "URL")]
        docker_host: Option<String>,
    },
    /// The Debian package (target/deb/weave-router_<version>_<arch>.deb): the static binary,
    /// the systemd unit, completions, the manual page, the docs.
    Deb {
        /// Skip `setup` and the builds: package the static binary there is.
        #[arg(long)]
        no_build: bool,
    },
    /// Routed vs kernel VXLAN vs weave-router throughput and latency; writes BENCHMARKS.md.
    Bench(bench::Args),
    /// N routers in a random partial mesh: agreement after start, join and leave, control
    /// traffic, memory; writes the Scale section of BENCHMARKS.md.
    Scale(scale::Args),
}

fn main() {
    let cli = Cli::parse();
    let r: Result<()> = match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::BuildEbpf => build::build_ebpf(),
        Cmd::Build { no_setup } => (|| {
            if !no_setup {
                setup::setup()?;
            }
            build::build()
        })(),
        Cmd::Test {
            no_build,
            e2e_filter,
            e2e_only,
        } => test::test(no_build, e2e_only, e2e_filter.as_deref()),
        Cmd::Fuzz { secs, merge, only } => fuzz::fuzz(secs, merge, only.as_deref()),
        Cmd::Demo {
            keep,
            down,
            no_build,
        } => {
            if down {
                demo::down()
            } else {
                demo::demo(keep, no_build)
            }
        }
        Cmd::DockerImage { docker_host } => docker_image::build(docker_host.as_deref()),
        Cmd::Deb { no_build } => (|| {
            if !no_build {
                setup::setup()?;
                build::build()?;
                build::build_static()?;
            }
            deb::package(&build::static_binary()).map(|_| ())
        })(),
        Cmd::Bench(args) => bench::bench(args),
        Cmd::Scale(args) => scale::scale(args),
    };
    if let Err(e) = r {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
