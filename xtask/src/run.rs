//! Small helpers for running commands.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// `$CARGO_HOME`, else `~/.cargo`.
pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"))
}

pub fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// `$PATH` with `$CARGO_HOME/bin` in front (where `cargo install` puts bpf-linker).
pub fn path_env() -> OsString {
    let mut parts = vec![cargo_home().join("bin")];
    if let Some(p) = std::env::var_os("PATH") {
        parts.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(parts).unwrap_or_default()
}

/// A command with `$CARGO_HOME/bin` on its `PATH`.
pub fn cmd(prog: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(prog);
    c.env("PATH", path_env());
    c
}

/// The cargo that runs xtask (same toolchain as the workspace build).
pub fn cargo() -> Command {
    let mut c = cmd(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Set for xtask itself; a build script that watches it (ring's) would otherwise see a
    // change between `cargo xtask build` and a plain `cargo build`, and rebuild.
    c.env_remove("CARGO_MANIFEST_DIR");
    c
}

fn show(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `c` with the terminal attached; a non-zero exit is an error.
pub fn status(c: &mut Command) -> Result<()> {
    let line = show(c);
    let st = c
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !st.success() {
        bail!("`{line}` failed ({st})");
    }
    Ok(())
}

/// Runs `c` and returns its stdout if it succeeded, `None` otherwise (or if it cannot start).
pub fn output_ok(c: &mut Command) -> Option<String> {
    let o = c.stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Prints a step header.
pub fn step(msg: &str) {
    println!("==> {msg}");
}

/// True when running as root.
pub fn is_root() -> bool {
    weave_tests::is_root()
}

/// Puts `section` between the markers `begin` and `end` in `path`, keeping the rest; appends
/// it (with its markers) when they are not there yet.
pub fn write_marked_section(
    path: &std::path::Path,
    begin: &str,
    end: &str,
    section: &str,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{begin}\n{section}{end}\n");
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if e > b => {
            format!(
                "{}{block}{}",
                &old[..b],
                old[e + end.len()..].trim_start_matches('\n')
            )
        }
        _ => {
            let mut s = old.trim_end().to_string();
            if !s.is_empty() {
                s.push_str("\n\n");
            }
            s + &block
        }
    };
    std::fs::write(path, new).with_context(|| format!("write {}", path.display()))
}

/// The trimmed output of a command line split on whitespace; empty when it fails.
pub fn sh(line: &str) -> String {
    let mut w = line.split_whitespace();
    let prog = w.next().unwrap_or("true");
    output_ok(cmd(prog).args(w))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Now, as `2026-01-01 12:00 UTC`.
pub fn utc_now() -> String {
    sh("date -u +%Y-%m-%d_%H:%M_UTC").replace('_', " ")
}

/// The abbreviated commit checked out.
pub fn git_head() -> String {
    sh("git rev-parse --short HEAD")
}
