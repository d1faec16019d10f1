//! Running commands with captured output and a deadline.
//!
//! Output goes to files rather than pipes: a command that leaves a daemon behind
//! (`weave-router launch`) must not keep the caller waiting for an end of file that only
//! comes when the daemon exits.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a command may run unless the caller says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The result of a finished command.
#[derive(Debug, Clone)]
pub struct Output {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The output if the command succeeded, else an error carrying its stderr.
    pub fn checked(self) -> Result<Output> {
        if self.success() {
            Ok(self)
        } else {
            let mut stderr = self.stderr.trim().to_string();
            if stderr.is_empty() {
                stderr = self.stdout.trim().to_string();
            }
            Err(Error::Failed {
                cmd: self.cmdline,
                status: self.status.to_string(),
                stderr,
            })
        }
    }

    /// Exit code, or -1 when killed by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

/// A printable command line.
pub fn cmdline<S: AsRef<OsStr>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| {
            let s = a.as_ref().to_string_lossy();
            if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                format!("'{}'", s.replace('\'', "'\\''"))
            } else {
                s.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A pair of files that receive a child's stdout and stderr; removed on drop.
pub(crate) struct CaptureFiles {
    pub out: PathBuf,
    pub err: PathBuf,
}

impl CaptureFiles {
    pub(crate) fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join("weave-tests-io");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let base = format!("{}-{}-{}", std::process::id(), n, tag);
        Ok(CaptureFiles {
            out: dir.join(format!("{base}.out")),
            err: dir.join(format!("{base}.err")),
        })
    }

    pub(crate) fn open(&self) -> Result<(File, File)> {
        let o = File::create(&self.out)
            .map_err(|e| Error::io(format!("create {}", self.out.display()), e))?;
        let e = File::create(&self.err)
            .map_err(|e| Error::io(format!("create {}", self.err.display()), e))?;
        Ok((o, e))
    }

    pub(crate) fn read(&self) -> (String, String) {
        let r = |p: &PathBuf| {
            std::fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        (r(&self.out), r(&self.err))
    }
}

impl Drop for CaptureFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.err);
    }
}

fn build<S: AsRef<OsStr>>(argv: &[S]) -> Result<Command> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| Error::Other("empty command line".into()))?;
    let mut c = Command::new(prog);
    c.args(args).stdin(Stdio::null());
    Ok(c)
}

/// Runs `argv`, waiting at most `timeout`; a command still running then is killed.
/// A non-zero exit is not an error here: see [`Output::checked`].
pub fn run_timeout<S: AsRef<OsStr>>(argv: &[S], timeout: Duration) -> Result<Output> {
    let line = cmdline(argv);
    let files = CaptureFiles::new("cmd")?;
    let (o, e) = files.open()?;
    let mut c = build(argv)?;
    c.stdout(o).stderr(e);
    let mut child = c.spawn().map_err(|source| Error::Spawn {
        cmd: line.clone(),
        source,
    })?;
    let status = wait_deadline(&mut child, timeout)
        .map_err(|e| Error::io(format!("wait for `{line}`"), e))?;
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::Timeout { cmd: line, timeout });
    };
    let (stdout, stderr) = files.read();
    Ok(Output {
        cmdline: line,
        status,
        stdout,
        stderr,
    })
}

/// [`run_timeout`] with [`DEFAULT_TIMEOUT`].
pub fn run<S: AsRef<OsStr>>(argv: &[S]) -> Result<Output> {
    run_timeout(argv, DEFAULT_TIMEOUT)
}

/// Runs `argv` and returns its stdout; a non-zero exit is an error.
pub fn check<S: AsRef<OsStr>>(argv: &[S]) -> Result<String> {
    Ok(run(argv)?.checked()?.stdout)
}

/// Where `bin` is on the `PATH`, if it is.
pub fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|f| f.is_file())
    })
}

/// Splits a command written as one string on whitespace (no quoting).
pub fn words(s: &str) -> Vec<OsString> {
    s.split_whitespace().map(OsString::from).collect()
}

/// Waits for `child` until `timeout`; `None` if it is still running.
pub(crate) fn wait_deadline(
    child: &mut Child,
    timeout: Duration,
) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// A command running in the background, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Background {
    cmdline: String,
    child: Option<Child>,
    files: CaptureFiles,
}

impl Background {
    pub fn spawn<S: AsRef<OsStr>>(argv: &[S]) -> Result<Background> {
        let line = cmdline(argv);
        let files = CaptureFiles::new("bg")?;
        let (o, e) = files.open()?;
        let mut c = build(argv)?;
        c.stdout(o).stderr(e);
        let child = c.spawn().map_err(|source| Error::Spawn {
            cmd: line.clone(),
            source,
        })?;
        Ok(Background {
            cmdline: line,
            child: Some(child),
            files,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// What it wrote so far (stdout, stderr).
    pub fn output(&self) -> (String, String) {
        self.files.read()
    }

    /// Stops it and returns what it wrote.
    pub fn stop(&mut self) -> Output {
        let status = match self.child.take() {
            Some(mut c) => terminate(&mut c),
            None => None,
        };
        let (stdout, stderr) = self.files.read();
        Output {
            cmdline: self.cmdline.clone(),
            status: status.unwrap_or_else(|| std::os::unix::process::ExitStatusExt::from_raw(0)),
            stdout,
            stderr,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
    }
}

fn terminate(c: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(s)) = c.try_wait() {
        return Some(s);
    }
    // SAFETY: plain kill(2) on the pid of a child we own and have not reaped.
    unsafe {
        libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
    }
    if let Ok(Some(s)) = wait_deadline(c, Duration::from_secs(3)) {
        return Some(s);
    }
    let _ = c.kill();
    c.wait().ok()
}

/// Polls `f` until it returns `Some`, at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(Error::WaitTimeout {
                what: what.to_string(),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
