//! The state directory of one router: locked while it runs; holds the peer name and short ID,
//! the endpoints attached (taken up again after a restart), the peers dialled (for
//! `launch --resume`) and the background daemon's log.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::datapath::Endpoint;
use crate::mesh::peer_name::{PeerName, ShortId};

const LOCK_FILE: &str = "lock";
const IDENTITY_FILE: &str = "peer.json";
const ENDPOINTS_FILE: &str = "endpoints.json";
const IPAM_FILE: &str = "ipam.json";
const TARGETS_FILE: &str = "targets.json";
/// The background daemon's log, in the state directory.
pub const LOG_FILE: &str = "weave-router.log";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("state directory {path} is in use by another weave-router{holder}")]
    Locked { path: PathBuf, holder: String },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} is corrupt ({reason}); kept as {kept}")]
    SetAside {
        path: PathBuf,
        reason: String,
        kept: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |error| StateError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Peer name and short ID as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub name: PeerName,
    pub short_id: ShortId,
}

#[derive(Serialize, Deserialize)]
struct StoredIdentity {
    name: String,
    short_id: u16,
}

/// The peers a router dials, as stored for `launch --resume`: those given (on the command
/// line, by `connect`) and those learned through gossip, as `host:port`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTargets {
    #[serde(default)]
    pub given: Vec<String>,
    #[serde(default)]
    pub learned: Vec<String>,
}

impl StoredTargets {
    /// The targets to dial on `--resume`, given ones first, each once; and one line for
    /// each stored entry that is not a peer.
    pub fn to_dial(&self) -> (Vec<crate::mesh::connection_maker::Target>, Vec<String>) {
        let mut targets = Vec::new();
        let mut bad = Vec::new();
        for t in self.given.iter().chain(&self.learned) {
            match t.parse() {
                Ok(target) if !targets.contains(&target) => targets.push(target),
                Ok(_) => {}
                Err(e) => bad.push(format!("stored peer skipped: {e}")),
            }
        }
        (targets, bad)
    }
}

/// An open, locked state directory. The lock lasts as long as this value (and the process).
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    _lock: File,
}

/// Path of the daemon log in a state directory.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG_FILE)
}

impl StateDir {
    /// Creates the directory if needed and takes its lock; fails at once when another router
    /// holds it.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(path).map_err(io_err(path))?;
        let lock_path = path.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = std::fs::read_to_string(&lock_path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .map(|pid| format!(" (pid {pid})"))
                    .unwrap_or_default();
                return Err(StateError::Locked {
                    path: path.to_path_buf(),
                    holder,
                });
            }
            return Err(StateError::Io {
                path: lock_path,
                error: err,
            });
        }
        lock.set_len(0).map_err(io_err(&lock_path))?;
        writeln!(lock, "{}", std::process::id()).map_err(io_err(&lock_path))?;
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored identity, with `requested` taking precedence for the name; whatever is
    /// missing is made up (random) and everything is stored back.
    pub fn identity(&self, requested: Option<PeerName>) -> Result<Identity, StateError> {
        let path = self.path.join(IDENTITY_FILE);
        let stored = match std::fs::read(&path) {
            Ok(bytes) => {
                let corrupt = |reason: String| StateError::Corrupt {
                    path: path.clone(),
                    reason,
                };
                let s: StoredIdentity =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                let name: PeerName = s
                    .name
                    .parse()
                    .map_err(|e: crate::mesh::peer_name::PeerNameError| corrupt(e.to_string()))?;
                let short_id = ShortId::new(s.short_id).map_err(|e| corrupt(e.to_string()))?;
                Some(Identity { name, short_id })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&path)(e)),
        };
        let identity = Identity {
            name: requested
                .or(stored.map(|s| s.name))
                .or_else(machine_peer_name)
                .unwrap_or_else(PeerName::random),
            short_id: stored.map(|s| s.short_id).unwrap_or_else(ShortId::random),
        };
        if stored != Some(identity) {
            let s = StoredIdentity {
                name: identity.name.to_string(),
                short_id: identity.short_id.get(),
            };
            write_atomic(&path, &serde_json::to_vec_pretty(&s).expect("serialisable"))?;
        }
        Ok(identity)
    }

    /// Stores a new short ID (taken after a clash) beside the peer name.
    pub fn save_identity(&self, identity: Identity) -> Result<(), StateError> {
        let path = self.path.join(IDENTITY_FILE);
        let s = StoredIdentity {
            name: identity.name.to_string(),
            short_id: identity.short_id.get(),
        };
        write_atomic(&path, &serde_json::to_vec_pretty(&s).expect("serialisable"))
    }

    /// Endpoints attached by an earlier run. A corrupt file is renamed aside
    /// ([`set_aside`]) and reported as [`StateError::SetAside`]: the caller goes on without
    /// it, and the next save does not overwrite it.
    pub fn load_endpoints(&self) -> Result<Vec<Endpoint>, StateError> {
        let path = self.path.join(ENDPOINTS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| set_aside(&path, e.to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The IPAM state of an earlier run (ring and allocations), if any.
    pub fn load_ipam(&self) -> Result<Option<crate::ipam::allocator::AllocatorState>, StateError> {
        self.load_json(IPAM_FILE)
    }

    /// The JSON file `name` of the state dir (`None` when there is none); a file that does
    /// not parse is an error naming it.
    fn load_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StateError> {
        let path = self.path.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StateError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Stores the IPAM state crash-safely (before anyone hears of it).
    pub fn save_ipam(
        &self,
        state: &crate::ipam::allocator::AllocatorState,
    ) -> Result<(), StateError> {
        write_atomic(
            &self.path.join(IPAM_FILE),
            &serde_json::to_vec(state).expect("serialisable"),
        )
    }

    /// Forgets the IPAM state (`reset`).
    pub fn remove_ipam(&self) -> Result<(), StateError> {
        let path = self.path.join(IPAM_FILE);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Where the endpoints are kept.
    pub fn endpoints_path(&self) -> PathBuf {
        self.path.join(ENDPOINTS_FILE)
    }

    /// The peers an earlier run dialled (`None` when it stored none).
    pub fn load_targets(&self) -> Result<Option<StoredTargets>, StateError> {
        self.load_json(TARGETS_FILE)
    }

    /// Stores the peers dialled now (atomically: a crash leaves the old list or the new).
    pub fn save_targets(&self, targets: &StoredTargets) -> Result<(), StateError> {
        write_atomic(
            &self.path.join(TARGETS_FILE),
            &serde_json::to_vec_pretty(targets).expect("serialisable"),
        )
    }

    pub fn save_endpoints(&self, endpoints: &[Endpoint]) -> Result<(), StateError> {
        let path = self.path.join(ENDPOINTS_FILE);
        write_atomic(
            &path,
            &serde_json::to_vec_pretty(endpoints).expect("serialisable"),
        )
    }
}

/// Renames a corrupt state file to `<name>.corrupt-<unix seconds>` beside it, so that it is
/// kept for a look and not overwritten; the error says where it went (or, if the rename
/// failed, only what is wrong).
pub fn set_aside(path: &Path, reason: String) -> StateError {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut kept = path.as_os_str().to_os_string();
    kept.push(format!(".corrupt-{secs}"));
    let kept = PathBuf::from(kept);
    match std::fs::rename(path, &kept) {
        Ok(()) => StateError::SetAside {
            path: path.to_path_buf(),
            reason,
            kept,
        },
        Err(_) => StateError::Corrupt {
            path: path.to_path_buf(),
            reason,
        },
    }
}

/// A state file written off the async runtime's threads (on its blocking pool), the newest
/// content winning: async code never waits on an fsync in its own thread. Outside a runtime
/// [`OffThreadWriter::write`] writes in place.
#[derive(Clone)]
pub struct OffThreadWriter {
    inner: std::sync::Arc<OffThreadFile>,
}

struct OffThreadFile {
    path: PathBuf,
    /// What the file holds, for the log line of a failure.
    what: &'static str,
    /// The newest content not yet taken by a write.
    pending: std::sync::Mutex<Option<Vec<u8>>>,
    /// Held from taking `pending` to the end of its write, so an older content is never
    /// written after a newer one; holds the error of the last write, if it failed.
    writing: std::sync::Mutex<Option<String>>,
}

impl OffThreadWriter {
    pub fn new(path: PathBuf, what: &'static str) -> Self {
        Self {
            inner: std::sync::Arc::new(OffThreadFile {
                path,
                what,
                pending: std::sync::Mutex::new(None),
                writing: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Stores `bytes` soon; a failure is logged in one line.
    pub fn write(&self, bytes: Vec<u8>) {
        self.inner.set_pending(bytes);
        let file = self.inner.clone();
        let job = move || {
            if let Err(e) = file.flush() {
                tracing::error!("cannot store {}: {e}", file.what);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(job)),
            Err(_) => job(),
        }
    }

    /// Stores `bytes` on the blocking pool (await inside a runtime): whether they, or a newer
    /// content taken in the same write, reached the disk.
    pub fn write_then(
        &self,
        bytes: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), StateError>> + Send + 'static {
        self.inner.set_pending(bytes);
        self.written()
    }

    /// Waits on the blocking pool (await inside a runtime) until every content given so far
    /// has reached the disk: whether the last write worked.
    pub fn written(
        &self,
    ) -> impl std::future::Future<Output = Result<(), StateError>> + Send + 'static {
        let file = self.inner.clone();
        async move {
            let path = file.path.clone();
            tokio::task::spawn_blocking(move || file.flush())
                .await
                .unwrap_or_else(|e| {
                    Err(StateError::Io {
                        path,
                        error: std::io::Error::other(e.to_string()),
                    })
                })
        }
    }
}

impl OffThreadFile {
    fn set_pending(&self, bytes: Vec<u8>) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
    }

    /// Writes the pending content; with none (a write that started later took it, and has
    /// ended since, as it held `writing`), the result of that write.
    fn flush(&self) -> Result<(), StateError> {
        let mut last_error = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let taken = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match taken {
            Some(bytes) => {
                let written = write_atomic(&self.path, &bytes);
                *last_error = written.as_ref().err().map(ToString::to_string);
                written
            }
            None => match &*last_error {
                None => Ok(()),
                Some(e) => Err(StateError::Io {
                    path: self.path.clone(),
                    error: std::io::Error::other(e.clone()),
                }),
            },
        }
    }
}

/// One writer at a time in this process (two saves of one file must not interleave).
static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Makes every temporary name unique.
static TEMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `reset --force` of a router that does not answer: removes the stored IP allocation,
/// endpoints, DNS entries and peers of the state directory `dir` (not the peer name);
/// returns the files removed. Fails while a router holds the directory.
pub fn remove_stored_state(dir: &Path) -> Result<Vec<String>, StateError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let _locked = StateDir::open(dir)?;
    let mut removed = Vec::new();
    for file in [IPAM_FILE, ENDPOINTS_FILE, TARGETS_FILE, "dns.json"] {
        let path = dir.join(file);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(file.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Ok(removed)
}

/// The inode of the first network namespace (`init_net`): the same on every boot.
const HOST_NETNS_INODE: u64 = 0xEFFF_FFF9;

/// The peer name of this machine as Weave derives it ([`PeerName::from_machine_ids`]: the
/// machine ID, then the product UUID), when it has either. A router in a network namespace
/// other than the host's (several routers on one machine, as in tests) mixes in that
/// namespace's inode, so that each gets a name of its own.
fn machine_peer_name() -> Option<PeerName> {
    let read = |first: &str, second: &str| match std::fs::read(first) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::read(second).ok(),
        other => other.ok(),
    };
    let mut ids = read("/etc/machine-id", "/var/lib/dbus/machine-id").unwrap_or_default();
    ids.extend(read("/sys/class/dmi/id/product_uuid", "/sys/hypervisor/uuid").unwrap_or_default());
    if ids.is_empty() {
        return None;
    }
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()) {
        Ok(ino) if ino != HOST_NETNS_INODE => ids.extend(format!("netns:{ino}").bytes()),
        _ => {}
    }
    PeerName::from_machine_ids(&ids)
}

/// Writes a file so that readers see the old or the new content, never a mix, and the
/// new content survives a crash once this returns (file and directory synced). Writers are
/// serialised and each writes its own temporary file (`.<name>.<pid>.<n>.tmp`), removed
/// again on failure.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let _one_at_a_time = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    let n = TEMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Ipv4Cidr;

    fn tempdir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "weave-router-state-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn a_second_open_fails_while_the_first_holds_the_lock() {
        let dir = tempdir("lock");
        let first = StateDir::open(&dir).unwrap();
        let err = StateDir::open(&dir).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("in use by another weave-router"), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        StateDir::open(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn identity_persists_across_opens() {
        let dir = tempdir("identity");
        let a = StateDir::open(&dir).unwrap().identity(None).unwrap();
        let b = StateDir::open(&dir).unwrap().identity(None).unwrap();
        assert_eq!(a, b);
        let name: PeerName = "0a:00:00:00:00:09".parse().unwrap();
        let c = StateDir::open(&dir).unwrap().identity(Some(name)).unwrap();
        assert_eq!(
            c,
            Identity {
                name,
                short_id: a.short_id
            }
        );
        assert_eq!(StateDir::open(&dir).unwrap().identity(None).unwrap(), c);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_identity_is_reported() {
        let dir = tempdir("corrupt");
        let s = StateDir::open(&dir).unwrap();
        std::fs::write(dir.join(IDENTITY_FILE), b"{\"name\":\"zz\",\"short_id\":1}").unwrap();
        assert!(matches!(s.identity(None), Err(StateError::Corrupt { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn targets_round_trip_and_bad_entries_are_named() {
        let dir = tempdir("targets");
        let s = StateDir::open(&dir).unwrap();
        assert_eq!(s.load_targets().unwrap(), None);
        let t = StoredTargets {
            given: vec!["10.0.0.2:6783".into(), "host 3".into()],
            learned: vec!["10.0.0.4:6783".into(), "10.0.0.2:6783".into()],
        };
        s.save_targets(&t).unwrap();
        let back = s.load_targets().unwrap().unwrap();
        assert_eq!(back, t);
        let (dial, bad) = back.to_dial();
        let dial: Vec<String> = dial.iter().map(ToString::to_string).collect();
        assert_eq!(dial, ["10.0.0.2:6783", "10.0.0.4:6783"]);
        assert_eq!(
            bad,
            ["stored peer skipped: peer \"host 3\" is not a host or host:port (like 10.0.0.2 or host2:6783)"]
        );
        std::fs::write(dir.join(TARGETS_FILE), b"{\"given\": [1").unwrap();
        assert!(matches!(s.load_targets(), Err(StateError::Corrupt { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_stored_name_the_machine_gives_one() {
        // Stable across state dirs (what Weave does), when the machine has an ID.
        let (d1, d2) = (tempdir("machine1"), tempdir("machine2"));
        let a = StateDir::open(&d1).unwrap().identity(None).unwrap();
        let b = StateDir::open(&d2).unwrap().identity(None).unwrap();
        if machine_peer_name().is_some() {
            assert_eq!(a.name, b.name);
        }
        std::fs::remove_dir_all(&d1).unwrap();
        std::fs::remove_dir_all(&d2).unwrap();
    }

    #[test]
    fn endpoints_round_trip() {
        let dir = tempdir("endpoints");
        let s = StateDir::open(&dir).unwrap();
        assert_eq!(s.load_endpoints().unwrap(), vec![]);
        let e = Endpoint {
            netns: "/run/netns/c1".into(),
            host_ifname: "vethwe1".into(),
            mac: [2, 0, 0, 0, 0, 1],
            addresses: vec!["10.2.1.1/24".parse::<Ipv4Cidr>().unwrap()],
            owner: None,
        };
        s.save_endpoints(std::slice::from_ref(&e)).unwrap();
        assert_eq!(s.load_endpoints().unwrap(), vec![e]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_endpoints_are_set_aside_not_forgotten() {
        let dir = tempdir("corrupt-endpoints");
        let s = StateDir::open(&dir).unwrap();
        std::fs::write(dir.join(ENDPOINTS_FILE), b"[{\"netns\": tru").unwrap();
        let e = s.load_endpoints().unwrap_err();
        let StateError::SetAside { kept, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(std::fs::read(kept).unwrap(), b"[{\"netns\": tru");
        assert!(kept
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("endpoints.json.corrupt-"));
        assert!(e.to_string().contains("endpoints.json is corrupt ("), "{e}");
        // The next start sees none; a save does not touch the one kept.
        assert_eq!(s.load_endpoints().unwrap(), vec![]);
        s.save_endpoints(&[]).unwrap();
        assert!(kept.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_writers_each_land_whole_and_leave_no_temporary_file() {
        let dir = tempdir("writers");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.json");
        std::thread::scope(|scope| {
            for t in 0..8u8 {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(path, &vec![b'a' + t; 4096]).unwrap();
                    }
                });
            }
        });
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.iter().all(|b| *b == bytes[0]));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.json")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn off_thread_writes_report_failures_to_the_waiting_caller() {
        let dir = tempdir("off-thread-fail");
        let w = OffThreadWriter::new(dir.join("f.json"), "a test file");
        // No directory: the write fails, and says so.
        assert!(w.write_then(b"1".to_vec()).await.is_err());
        std::fs::create_dir_all(&dir).unwrap();
        w.write_then(b"2".to_vec()).await.unwrap();
        assert_eq!(std::fs::read(dir.join("f.json")).unwrap(), b"2");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn written_waits_for_every_content_given_before() {
        let dir = tempdir("off-thread-written");
        std::fs::create_dir_all(&dir).unwrap();
        let w = OffThreadWriter::new(dir.join("f.json"), "a test file");
        for round in 0..20u32 {
            for n in 0..10u32 {
                w.write(format!("{round}.{n}").into_bytes());
            }
            w.written().await.unwrap();
            assert_eq!(
                std::fs::read_to_string(dir.join("f.json")).unwrap(),
                format!("{round}.9")
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn off_thread_writes_end_with_the_newest_content() {
        let dir = tempdir("off-thread");
        std::fs::create_dir_all(&dir).unwrap();
        let w = OffThreadWriter::new(dir.join("f.json"), "a test file");
        for n in 0..200u32 {
            w.write(n.to_string().into_bytes());
        }
        let path = dir.join("f.json");
        for _ in 0..200 {
            if std::fs::read_to_string(&path).ok().as_deref() == Some("199") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Let any write still running finish: it cannot bring back an older content.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "199");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = tempdir("failed-write");
        std::fs::create_dir_all(dir.join("f.json")).unwrap();
        // A directory in the way: the rename fails.
        assert!(write_atomic(&dir.join("f.json"), b"x").is_err());
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
