//! Named network namespaces (`/run/netns/<name>`), deleted when dropped.
//!
//! Commands run inside with `nsenter --net=/run/netns/<name>`, which changes the network
//! namespace only. (`ip netns exec` also gives the command a private mount namespace and
//! remounts /sys, which hides /sys/fs/bpf: pins made under it are invisible to the rest of
//! the machine.)

use std::ffi::{OsStr, OsString};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use crate::cmd::{self, Background, Output};
use crate::error::{Error, Result};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A network namespace this process created.
#[derive(Debug)]
pub struct Netns {
    name: String,
    keep: bool,
}

impl Netns {
    /// Creates `name` (removing a leftover of the same name first) with `lo` up.
    pub fn create(name: &str) -> Result<Netns> {
        if exists(name) {
            remove(name);
        }
        cmd::check(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
            keep: false,
        };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    /// A handle on an existing namespace that is left alone when dropped.
    pub fn borrow(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            keep: true,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Leaves the namespace in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// `argv` prefixed with `nsenter --net=<path>`.
    pub fn wrap<S: AsRef<OsStr>>(&self, argv: &[S]) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            "nsenter".into(),
            format!("--net={}", self.path().display()).into(),
        ];
        v.extend(argv.iter().map(|a| a.as_ref().to_os_string()));
        v
    }

    /// Runs `argv` inside; a non-zero exit is not an error.
    pub fn run<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Output> {
        cmd::run(&self.wrap(argv))
    }

    /// Runs `argv` inside with a deadline; a non-zero exit is not an error.
    pub fn run_timeout<S: AsRef<OsStr>>(&self, argv: &[S], timeout: Duration) -> Result<Output> {
        cmd::run_timeout(&self.wrap(argv), timeout)
    }

    /// Runs `argv` inside and returns its stdout; a non-zero exit is an error.
    pub fn check<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<String> {
        Ok(self.run(argv)?.checked()?.stdout)
    }

    /// Runs a whitespace-separated command line inside (no quoting).
    pub fn sh(&self, line: &str) -> Result<String> {
        self.check(&cmd::words(line))
    }

    /// `ip -n <name> <args>`, args split on whitespace.
    pub fn ip(&self, args: &str) -> Result<String> {
        let mut v: Vec<OsString> = vec!["ip".into(), "-n".into(), self.name.clone().into()];
        v.extend(cmd::words(args));
        cmd::check(&v)
    }

    /// Starts `argv` inside in the background.
    pub fn spawn<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Background> {
        Background::spawn(&self.wrap(argv))
    }

    /// Sets a sysctl of this namespace, e.g. `net.ipv4.ip_forward`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))?
            .map_err(|e| Error::io(format!("write {path} in netns {}", self.name), e))
    }

    /// Runs `f` on a thread that has joined this namespace (the rest of the process stays
    /// where it is). Sockets `f` opens live in the namespace.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || -> Result<R> {
                let file = std::fs::File::open(&path)
                    .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
                // SAFETY: setns(2) on a valid descriptor; it affects this thread only.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(Error::io(
                        format!("setns {}", path.display()),
                        std::io::Error::last_os_error(),
                    ));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| Error::Other(format!("thread inside netns {} panicked", self.name)))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.keep {
            remove(&self.name);
        }
    }
}

/// True if `/run/netns/<name>` exists.
pub fn exists(name: &str) -> bool {
    PathBuf::from(NETNS_DIR).join(name).exists()
}

/// Names of all named namespaces.
pub fn list() -> Vec<String> {
    match std::fs::read_dir(NETNS_DIR) {
        Ok(d) => d
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Pids of the processes whose network namespace is `name`.
pub fn pids(name: &str) -> Vec<i32> {
    match cmd::run(&["ip", "netns", "pids", name]) {
        Ok(o) if o.success() => o
            .stdout
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// Ends the processes left inside `name` (SIGTERM, then SIGKILL) and deletes it.
pub fn remove(name: &str) {
    let mut left = pids(name);
    if !left.is_empty() {
        for p in &left {
            // SAFETY: kill(2) on a pid found inside a namespace this test bed made.
            unsafe { libc::kill(*p, libc::SIGTERM) };
        }
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(100));
            left = pids(name);
            if left.is_empty() {
                break;
            }
        }
        for p in &left {
            // SAFETY: as above.
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
    }
    let _ = cmd::run(&["ip", "netns", "del", name]);
}
