//! `weave-router launch --foreground`: the router process itself (logging, privileges, the
//! async runtime); [`crate::node::daemon`] starts and wires its parts.

use anyhow::{bail, Context};

use crate::config::Config;

/// Logs to stderr with `tracing`; `log` records (from aya) are bridged in. `level`
/// (`--log-level`) wins over RUST_LOG; without either, info.
pub fn init_logging(level: Option<&str>) {
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let _ = tracing_log::LogTracer::init();
}

/// Whether this process may set up the data path (root, or CAP_NET_ADMIN with CAP_BPF or
/// CAP_SYS_ADMIN).
pub fn check_privileges() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    if has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        return Ok(());
    }
    bail!("weave-router needs root (or CAP_NET_ADMIN and CAP_BPF) to set up its data path");
}

/// Runs the router until SIGTERM, SIGINT or `POST /stop`.
pub fn run_foreground(config: Config) -> anyhow::Result<()> {
    init_logging(config.log_level.as_deref());
    if !config.fake_datapath {
        check_privileges()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(crate::node::daemon::run(config))?)
}
