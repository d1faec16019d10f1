//! Driving `weave-router` inside a simulated host.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd::{self, Output};
use crate::error::{Error, Result};
use crate::netns;

/// Where routers pin their maps and links.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/weave-router";
/// The router's HTTP API inside its namespace.
pub const HTTP_ADDR: &str = "127.0.0.1:6784";

/// The router binary: `$WEAVE_ROUTER_BIN`, else `<workspace>/target/release/weave-router`.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WEAVE_ROUTER_BIN") {
        return PathBuf::from(p);
    }
    workspace_root().join("target/release/weave-router")
}

/// The workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The binary, or an error saying how to get one.
pub fn require_binary() -> Result<PathBuf> {
    let b = binary();
    if b.is_file() {
        Ok(b)
    } else {
        Err(Error::NoBinary(b))
    }
}

/// Options of `weave-router launch` beyond what the test bed fills in.
#[derive(Debug, Clone, Default)]
pub struct LaunchOpts {
    /// Underlay addresses of the peers to dial.
    pub peers: Vec<String>,
    /// Further arguments, e.g. `--xdp on`.
    pub extra: Vec<String>,
}

impl LaunchOpts {
    /// Dialling the hosts `peers` (by number), with `extra` arguments.
    pub fn dialling(peers: &[usize], extra: &[&str]) -> Self {
        Self {
            peers: peers
                .iter()
                .map(|&i| crate::bed::host_addr(i).to_string())
                .collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// A router started by the test bed in the namespace of a host; stopped when dropped.
#[derive(Debug)]
pub struct Router {
    netns: String,
    bin: PathBuf,
    state_dir: PathBuf,
    name: String,
    nickname: String,
    running: bool,
    keep: bool,
}

impl Router {
    /// `weave-router launch` in `netns` (daemonized; returns once it is ready), with an
    /// empty state dir; `iface` is given as `--iface` (`None`: the router chooses).
    pub fn launch(
        netns: &str,
        name: &str,
        nickname: &str,
        state_dir: &Path,
        iface: Option<&str>,
        opts: &LaunchOpts,
    ) -> Result<Router> {
        let _ = std::fs::remove_dir_all(state_dir);
        Self::launch_keeping_state(netns, name, nickname, state_dir, iface, opts)
    }

    /// `weave-router launch` over the state an earlier run left in `state_dir`.
    pub fn launch_keeping_state(
        netns: &str,
        name: &str,
        nickname: &str,
        state_dir: &Path,
        iface: Option<&str>,
        opts: &LaunchOpts,
    ) -> Result<Router> {
        let bin = require_binary()?;
        std::fs::create_dir_all(state_dir)
            .map_err(|e| Error::io(format!("create {}", state_dir.display()), e))?;
        let router = Router {
            netns: netns.to_string(),
            bin,
            state_dir: state_dir.to_path_buf(),
            name: name.to_string(),
            nickname: nickname.to_string(),
            running: true,
            keep: false,
        };
        let mut args: Vec<String> = vec!["launch".into()];
        args.extend(opts.peers.iter().cloned());
        args.extend(
            [
                "--state-dir",
                &state_dir.to_string_lossy(),
                "--name",
                name,
                "--nickname",
                nickname,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        if let Some(iface) = iface {
            args.extend(["--iface".to_string(), iface.to_string()]);
        }
        args.extend(opts.extra.iter().cloned());
        // Many routers share this machine: Docker only for those given a daemon of their own.
        if !opts.extra.iter().any(|a| a == "--docker-host") {
            args.push("--no-docker".into());
        }
        let out = router.cli_timeout(&args, Duration::from_secs(60))?;
        if !out.success() {
            // The CLI prints the log tail itself; add it only if it did not.
            let log = if out.stderr.contains(".log") {
                String::new()
            } else {
                router.log_tail(20)
            };
            // Whatever it left behind goes with `router` being dropped.
            return Err(Error::Failed {
                cmd: out.cmdline,
                status: out.status.to_string(),
                stderr: format!(
                    "{}{}{}",
                    out.stderr.trim(),
                    if log.is_empty() {
                        ""
                    } else {
                        "\n--- log ---\n"
                    },
                    log
                ),
            });
        }
        Ok(router)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn nickname(&self) -> &str {
        &self.nickname
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Leaves the router running when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// `weave-router <args>` inside the host; a non-zero exit is not an error.
    pub fn cli<S: AsRef<str>>(&self, args: &[S]) -> Result<Output> {
        self.cli_timeout(args, cmd::DEFAULT_TIMEOUT)
    }

    fn cli_timeout<S: AsRef<str>>(&self, args: &[S], timeout: Duration) -> Result<Output> {
        let argv = cli_argv(&self.netns, &self.bin, args);
        cmd::run_timeout(&argv, timeout)
    }

    /// `weave-router <args>` inside the host; stdout, or an error on a non-zero exit.
    pub fn check<S: AsRef<str>>(&self, args: &[S]) -> Result<String> {
        Ok(self.cli(args)?.checked()?.stdout)
    }

    /// `weave-router status connections`.
    pub fn connections(&self) -> Result<String> {
        self.check(&["status", "connections"])
    }

    /// Waits until `status connections` lists `n` established connections.
    pub fn wait_established(&self, n: usize, timeout: Duration) -> Result<String> {
        cmd::wait_for(
            &format!("{n} established connection(s) on {}", self.nickname),
            timeout,
            || {
                let s = self.connections().ok()?;
                (s.lines().filter(|l| l.contains("established")).count() >= n).then_some(s)
            },
        )
    }

    /// Waits until an established connection in `status connections` mentions `text`
    /// (e.g. ` fastdp `, `mtu=1350`); returns the listing.
    pub fn wait_connection_with(&self, text: &str, timeout: Duration) -> Result<String> {
        cmd::wait_for(
            &format!(
                "an established connection with {text:?} on {}",
                self.nickname
            ),
            timeout,
            || {
                let s = self.connections().ok()?;
                s.lines()
                    .any(|l| l.contains("established") && l.contains(text))
                    .then_some(s)
            },
        )
    }

    /// `weave-router attach <cidr> --netns <path>`.
    pub fn attach(&self, cidr: &str, container_netns: &Path) -> Result<String> {
        self.check(&[
            "attach",
            cidr,
            "--netns",
            &container_netns.to_string_lossy(),
        ])
    }

    /// `weave-router detach --netns <path>`.
    pub fn detach(&self, container_netns: &Path) -> Result<String> {
        self.check(&["detach", "--netns", &container_netns.to_string_lossy()])
    }

    /// GET `path` from the router's HTTP API; the body of a 2xx answer.
    pub fn http_get(&self, path: &str) -> Result<String> {
        let ns = PathBuf::from(netns::NETNS_DIR).join(&self.netns);
        http_get_in(&ns, HTTP_ADDR, path)
    }

    /// The Prometheus text from `/metrics`.
    pub fn metrics(&self) -> Result<String> {
        self.http_get("/metrics")
    }

    /// The daemon's log files in the state dir (`*.log`).
    pub fn log_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.state_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last `n` lines of the daemon's log in the state dir, if there is one.
    pub fn log_tail(&self, n: usize) -> String {
        let mut out = String::new();
        for p in self.log_files() {
            if let Ok(t) = std::fs::read_to_string(&p) {
                let lines: Vec<&str> = t.lines().collect();
                let from = lines.len().saturating_sub(n);
                out.push_str(&lines[from..].join("\n"));
                out.push('\n');
            }
        }
        out
    }

    /// `weave-router stop`, then waits until its process is gone.
    pub fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.stop_with(&["stop"])
    }

    /// `weave-router stop --keep-datapath` (an upgrade's first half), then waits until its
    /// process is gone; the kernel data path stays.
    pub fn stop_keeping_datapath(&mut self) -> Result<()> {
        self.stop_with(&["stop", "--keep-datapath"])
    }

    /// Runs a stop command, then waits until the router's process is gone.
    fn stop_with(&mut self, args: &[&str]) -> Result<()> {
        let out = self.cli_timeout(args, Duration::from_secs(30))?;
        self.running = false;
        let gone = cmd::wait_for(
            "the router process to exit",
            Duration::from_secs(15),
            || router_pids(&self.netns).is_empty().then_some(()),
        );
        out.checked()?;
        gone
    }

    /// Ends the router without asking (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        for p in router_pids(&self.netns) {
            // SAFETY: kill(2) on the router process this test bed started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        self.running = false;
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if self.running && self.stop().is_err() {
            kill_routers(&self.netns);
        }
        remove_pins(&self.name);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn cli_argv<S: AsRef<str>>(netns: &str, bin: &Path, args: &[S]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "nsenter".into(),
        format!("--net={}/{}", netns::NETNS_DIR, netns).into(),
        bin.as_os_str().to_os_string(),
    ];
    v.extend(args.iter().map(|a| OsString::from(a.as_ref())));
    v
}

/// Runs `weave-router <args>` in the namespace `netns` without a `Router` handle.
pub fn cli_in(netns: &str, args: &[&str]) -> Result<Output> {
    cmd::run(&cli_argv(netns, &binary(), args))
}

/// Runs `weave-router <args>` in this process's own namespace.
pub fn cli_here(args: &[&str]) -> Result<Output> {
    let mut v: Vec<OsString> = vec![binary().into_os_string()];
    v.extend(args.iter().map(OsString::from));
    cmd::run(&v)
}

/// Pids of router processes in `netns` (by the names of [`router_process_names`]).
pub fn router_pids(netns: &str) -> Vec<i32> {
    let names = router_process_names();
    netns::pids(netns)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| names.iter().any(|n| n == c.trim_end()))
                .unwrap_or(false)
        })
        .collect()
}

/// The names a router process runs under, as the kernel keeps them (the first 15 bytes of
/// the file name): `weave-router`, and the binary in use when `$WEAVE_ROUTER_BIN` names a
/// copy under another name (a router found by neither would be neither measured nor
/// stopped).
fn router_process_names() -> Vec<String> {
    const COMM_LEN: usize = 15;
    let mut names = vec!["weave-router".to_string()];
    if let Some(file) = binary().file_name() {
        let file = file.to_string_lossy();
        let comm: String = file.bytes().take(COMM_LEN).map(char::from).collect();
        if !names.contains(&comm) {
            names.push(comm);
        }
    }
    names
}

/// SIGTERM, then SIGKILL, to every `weave-router` in `netns`.
pub fn kill_routers(netns: &str) {
    let pids = router_pids(netns);
    if pids.is_empty() {
        return;
    }
    for p in &pids {
        // SAFETY: kill(2) on a router inside a namespace this test bed made.
        unsafe { libc::kill(*p, libc::SIGTERM) };
    }
    let _ = cmd::wait_for("routers to exit", Duration::from_secs(5), || {
        router_pids(netns).is_empty().then_some(())
    });
    for p in router_pids(netns) {
        // SAFETY: as above.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

fn hex_only(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Removes what a router named `name` left pinned (after a crash or a kill).
pub fn remove_pins(name: &str) {
    let want = hex_only(name);
    if want.is_empty() {
        return;
    }
    if let Ok(d) = std::fs::read_dir(BPFFS_ROOT) {
        for e in d.filter_map(|e| e.ok()) {
            if hex_only(&e.file_name().to_string_lossy()) == want {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A locally administered peer name made of `seed` and `index`, e.g. `02:5a:1c:e3:00:01`.
pub fn peer_name(seed: &str, index: u16) -> String {
    // FNV-1a: a stable spread of the seed over three bytes.
    let mut h: u32 = 0x811c_9dc5;
    for b in seed.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    let [a, b, c, _] = h.to_be_bytes();
    let [i0, i1] = index.to_be_bytes();
    format!("02:{a:02x}:{b:02x}:{c:02x}:{i0:02x}:{i1:02x}")
}

/// GET `path` from `addr` as seen from inside the namespace at `netns_path`.
pub fn http_get_in(netns_path: &Path, addr: &str, path: &str) -> Result<String> {
    let name = netns_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ns = netns::Netns::borrow(&name);
    let raw = ns.enter(|| -> std::io::Result<Vec<u8>> {
        let sock: std::net::SocketAddr = addr.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}"))
        })?;
        let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(buf)
    })?;
    let raw = raw.map_err(|e| Error::io(format!("GET {path} in {name}"), e))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::Other(format!("GET {path} in {name}: no HTTP header in answer")))?;
    let status_line = head.lines().next().unwrap_or_default();
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if !(200..300).contains(&code) {
        return Err(Error::Other(format!("GET {path} in {name}: {status_line}")));
    }
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    Ok(if chunked {
        dechunk(body)
    } else {
        body.to_string()
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n =
            usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
