//! `weave-router launch` without `--foreground`: starts the router as a background daemon
//! (a new session, output to `<state-dir>/weave-router.log`), waits until its API answers and
//! prints the peer name. On failure it prints the reason and the tail of the log, and makes sure
//! the daemon is gone.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::client;
use crate::config::Config;
use crate::state::log_path;

/// How long the daemon has to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long it may take while its API says it is still setting up its data path (loading
/// the programs takes long on a busy machine: the verifier).
pub const STARTING_TIMEOUT: Duration = Duration::from_secs(45);
/// Lines of the log shown when the launch fails.
const TAIL_LINES: usize = 20;

pub fn launch_background(config: &Config) -> anyhow::Result<()> {
    if client::request(
        config.http_addr,
        "GET",
        "/status",
        None,
        Duration::from_secs(2),
    )
    .is_ok()
    {
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

    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--foreground")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the daemon")?;

    let started = Instant::now();
    let failure = loop {
        if let Some(status) = child.try_wait()? {
            break format!("the daemon exited ({status})");
        }
        let mut starting = false;
        if let Ok(r) = client::request(
            config.http_addr,
            "GET",
            "/report",
            None,
            Duration::from_secs(2),
        ) {
            starting = r.status == 503;
            if r.ok() {
                let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
                if v["Pid"].as_u64() == Some(child.id() as u64) {
                    println!("{}", v["Router"]["Name"].as_str().unwrap_or_default());
                    return Ok(());
                }
            }
        }
        let limit = if starting {
            STARTING_TIMEOUT
        } else {
            READY_TIMEOUT
        };
        if started.elapsed() > limit {
            break format!("the daemon was not ready within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
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

/// SIGTERM (the daemon finishes setting up, then takes everything down), then SIGKILL if it
/// lingers; reaps the child.
fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SAFETY: sends a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
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

fn read_from(path: &std::path::Path, offset: u64) -> String {
    let mut out = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut out);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
