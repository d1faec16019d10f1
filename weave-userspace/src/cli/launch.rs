//! `weave-router launch` without `--foreground`: starts the router as a background daemon
//! (a new session, output to `<state-dir>/weave-router.log`), waits until it says it is
//! ready (a datagram on a socket named in `$WEAVE_LAUNCHER_SOCKET`) and prints the peer
//! name. On failure it prints the reason and the tail of the log, and makes sure the daemon
//! is gone.
//!
//! A password never reaches the daemon's argv or environment: `--password` is taken off its
//! command line and `WEAVE_PASSWORD` out of its environment, and the password is handed over
//! through a pipe the daemon reads as `--password-file /dev/fd/N`. `--password` on the
//! launching command line is warned about and overwritten in this process's own
//! `/proc/self/cmdline` once parsed ([`scrub_password_from_cmdline`]).

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::client;
use crate::config::Config;
use crate::service_manager::{peer_of_launcher_message, LAUNCHER_SOCKET_ENV};
use crate::state::log_path;

/// How long the daemon has to become ready: its API up, its data path set up (on a busy
/// machine loading the programs and creating the devices take tens of seconds).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of the log shown when the launch fails.
const TAIL_LINES: usize = 20;

/// `password`: the password from `--password` or `WEAVE_PASSWORD` when no `--password-file`
/// was given (handed to the daemon through a pipe).
pub fn launch_background(config: &Config, password: Option<&str>) -> anyhow::Result<()> {
    let api = client::ApiAddr::socket_of(config.http_addr);
    if client::request(api, "GET", "/status", None, Duration::from_secs(2)).is_ok() {
        bail!("a weave-router already answers on {}", config.http_addr);
    }
    if !config.fake_datapath {
        super::daemon::check_privileges()?;
    }
    std::fs::create_dir_all(&config.state_dir).with_context(|| {
        format!(
            "cannot create the state directory {}",
            config.state_dir.display()
        )
    })?;
    let log = log_path(&config.state_dir);
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open the log {}", log.display()))?;
    let log_start = log_file.metadata().map(|m| m.len()).unwrap_or(0);

    let readiness = Readiness::bind().context("cannot open the socket the daemon reports to")?;
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut cmd = Command::new(exe);
    cmd.args(without_password(std::env::args_os().skip(1)))
        .arg("--foreground")
        .env_remove(crate::config::PASSWORD_ENV)
        .env(LAUNCHER_SOCKET_ENV, readiness.env_value())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let password_pipe = match password {
        Some(p) => {
            let read_end = password_pipe(p).context("cannot hand the password to the daemon")?;
            cmd.arg("--password-file")
                .arg(format!("/dev/fd/{}", read_end.as_raw_fd()));
            Some(read_end)
        }
        None => None,
    };
    let inherited = password_pipe.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: setsid and fcntl are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The password pipe's read end stays open across exec (it was made close-on-exec).
            if let Some(fd) = inherited {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn().context("cannot start the daemon");
    drop(password_pipe);
    let mut child = spawned?;

    let started = Instant::now();
    let failure = loop {
        if let Some(status) = child.try_wait()? {
            break format!("the daemon exited ({status})");
        }
        if let Some(peer) = readiness.wait(Duration::from_millis(200)) {
            println!("{peer}");
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            break format!(
                "the daemon was not ready within {} s",
                READY_TIMEOUT.as_secs()
            );
        }
    };

    terminate(&mut child);
    let new_log = read_from(&log, log_start);
    let reason = new_log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("weave-router: "))
        .map(str::to_string)
        .unwrap_or(failure);
    eprintln!("weave-router: launch failed: {reason}");
    let lines: Vec<&str> = new_log.lines().collect();
    if !lines.is_empty() {
        eprintln!("--- last lines of {} ---", log.display());
        for l in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
            eprintln!("{l}");
        }
    }
    // The reason was printed above; exit non-zero without repeating it.
    std::process::exit(1);
}

/// The socket the daemon says it is ready on (an abstract unix datagram socket named for
/// this process): no polling of an API that a busy daemon answers late.
struct Readiness {
    socket: UnixDatagram,
    name: String,
}

impl Readiness {
    fn bind() -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!("weave-router-launch-{}-{nanos}", std::process::id());
        let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
        Ok(Self { socket, name })
    }

    /// `$WEAVE_LAUNCHER_SOCKET` for the daemon.
    fn env_value(&self) -> String {
        format!("@{}", self.name)
    }

    /// The peer name of the daemon, once it says it is ready within `timeout`.
    fn wait(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).ok()?;
        let mut buf = [0u8; 512];
        let n = self.socket.recv(&mut buf).ok()?;
        let message = std::str::from_utf8(&buf[..n]).ok()?;
        peer_of_launcher_message(message).map(str::to_string)
    }
}

/// SIGINT (the daemon finishes setting up, then takes everything down, its data path too),
/// then SIGKILL if it lingers; reaps the child.
fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SAFETY: sends a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The launch arguments less `--password VALUE` and `--password=VALUE`.
pub fn without_password(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_next = false;
    for a in args {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        if a == OsStr::new("--password") {
            skip_next = true;
            continue;
        }
        if a.as_encoded_bytes().starts_with(b"--password=") {
            continue;
        }
        out.push(a);
    }
    out
}

/// Whether `--password` is on a command line.
pub fn password_on_command_line(args: impl IntoIterator<Item = OsString>) -> bool {
    args.into_iter()
        .any(|a| a == OsStr::new("--password") || a.as_encoded_bytes().starts_with(b"--password="))
}

/// A pipe holding `password` (and a newline, which the reader drops), its write end closed:
/// the read end, close-on-exec.
fn password_pipe(password: &str) -> std::io::Result<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just opened both descriptors; each is owned once, here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // At most 4 KiB (MAX_PASSWORD_LEN): fits in the pipe's buffer without a reader.
    let mut w = std::fs::File::from(write_end);
    w.write_all(password.as_bytes())?;
    w.write_all(b"\n")?;
    Ok(read_end)
}

/// Overwrites the value of `--password` in this process's command line as `ps` and
/// `/proc/self/cmdline` show it (the memory the kernel reads them from: `arg_start` to
/// `arg_end` of `/proc/self/stat`). Call once the arguments are parsed.
pub fn scrub_password_from_cmdline() {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after "(comm) " start at field 3; arg_start and arg_end are fields 48 and 49.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (Some(start), Some(end)) = (
        fields.get(45).and_then(|f| f.parse::<usize>().ok()),
        fields.get(46).and_then(|f| f.parse::<usize>().ok()),
    ) else {
        return;
    };
    if start == 0 || end <= start {
        return;
    }
    // SAFETY: arg_start..arg_end is this process's argument block on its initial stack,
    // mapped readable and writable for the life of the process; nothing in Rust borrows it
    // (std reads the arguments through raw pointers when asked), and only bytes inside it
    // are written.
    let block = unsafe {
        std::slice::from_raw_parts_mut(
            std::ptr::with_exposed_provenance_mut::<u8>(start),
            end - start,
        )
    };
    scrub_password(block);
}

/// Overwrites with `*` the value of `--password` in a NUL-separated argument block.
pub fn scrub_password(block: &mut [u8]) {
    let mut hide_next = false;
    for arg in block.split_mut(|b| *b == 0) {
        if std::mem::take(&mut hide_next) {
            arg.fill(b'*');
            continue;
        }
        if arg == b"--password" {
            hide_next = true;
        } else if let Some(value) = arg.strip_prefix(b"--password=") {
            let n = value.len();
            let len = arg.len();
            arg[len - n..].fill(b'*');
        }
    }
}

fn read_from(path: &std::path::Path, offset: u64) -> String {
    let mut out = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut out);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_password_is_taken_off_the_daemons_arguments() {
        let args = os(&[
            "launch",
            "--password",
            "s3cret",
            "10.0.0.2",
            "--password=other",
            "--name",
            "x",
        ]);
        assert_eq!(
            without_password(args.clone()),
            os(&["launch", "10.0.0.2", "--name", "x"])
        );
        assert!(password_on_command_line(args));
        assert!(!password_on_command_line(os(&[
            "launch",
            "--password-file",
            "/p"
        ])));
        assert_eq!(
            without_password(os(&["launch", "--password-file", "/p"])),
            os(&["launch", "--password-file", "/p"])
        );
    }

    #[test]
    fn the_password_is_scrubbed_from_an_argument_block() {
        let mut block =
            b"weave-router\0launch\0--password\0s3cret\0--password=abc\0--name\0x\0".to_vec();
        scrub_password(&mut block);
        assert_eq!(
            block,
            b"weave-router\0launch\0--password\0******\0--password=***\0--name\0x\0".to_vec()
        );
    }

    #[test]
    fn the_password_pipe_holds_the_password_for_the_file_reader() {
        let r = password_pipe("pa ss").unwrap();
        let mut text = Vec::new();
        std::fs::File::from(r).read_to_end(&mut text).unwrap();
        let p = crate::crypto::password::Password::from_file_content(text).unwrap();
        assert_eq!(
            p,
            crate::crypto::password::Password::new(b"pa ss".to_vec()).unwrap()
        );
    }
}
