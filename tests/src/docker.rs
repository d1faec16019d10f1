//! One real `dockerd` per simulated host, and a busybox image built offline.
//!
//! The daemon of host `<prefix>-h<i>` runs in that host's network namespace (entered with
//! `nsenter --net`, not `ip netns exec`, which remounts /sys and hides the cgroup tree runc
//! needs), in a private mount namespace with fresh tmpfs on /run/containerd and /run/docker
//! (else it adopts a system containerd through /run/containerd/containerd.sock, and plugin
//! sockets would be shared), with `--bridge=none --iptables=false`: containers run with
//! `--net=none` and get their only interface from weave-router. Its /run/docker/plugins is
//! [`DockerHost::plugins_dir`], where the router of that host puts its network plugin. Its
//! state lives in `/tmp/<prefix>-dk<i>/` (unix socket paths must stay short) and its
//! containers in cgroup `/<prefix>-dk<i>`. Everything goes when the [`DockerHost`] is dropped.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{self, Output};
use crate::error::{Error, Result};
use crate::netns;

/// The test image every daemon gets: busybox and its applets, nothing else.
pub const IMAGE: &str = "weave-test-busybox:latest";

/// Where `docker` and `dockerd` are, or why they cannot be used.
pub fn available() -> std::result::Result<(), String> {
    for (bin, pkg) in [
        ("dockerd", "docker.io"),
        ("docker", "docker.io"),
        ("containerd", "containerd"),
        ("runc", "runc"),
    ] {
        if cmd::which(bin).is_none() {
            return Err(format!("{bin} not found (apt-get install {pkg})"));
        }
    }
    if !Path::new(BUSYBOX).is_file() {
        return Err(format!(
            "{BUSYBOX} not found (apt-get install busybox-static)"
        ));
    }
    Ok(())
}

const BUSYBOX: &str = "/bin/busybox";

/// A `dockerd` in a host's network namespace.
#[derive(Debug)]
pub struct DockerHost {
    host_ns: String,
    dir: PathBuf,
    cgroup: String,
    /// The daemon itself (setsid, nsenter, unshare and sh all exec into it).
    child: Option<std::process::Child>,
}

impl DockerHost {
    /// Starts a daemon in network namespace `host_ns`, state under `/tmp/<tag>/`, and waits
    /// until it answers; leftovers of an earlier run with the same tag are removed first.
    pub fn start(host_ns: &str, tag: &str) -> Result<DockerHost> {
        available().map_err(Error::Other)?;
        let dir = PathBuf::from("/tmp").join(tag);
        let mut d = DockerHost {
            host_ns: host_ns.to_string(),
            dir,
            cgroup: tag.to_string(),
            child: None,
        };
        d.clean_up();
        d.launch()?;
        Ok(d)
    }

    /// One daemon for each of hosts 1..=n of `bed` (network namespace `<prefix>-h<i>`, tag
    /// `<prefix>-dk<i>`), each with the offline busybox image loaded.
    pub fn start_per_host(bed: &crate::TestBed, n: usize) -> Result<Vec<DockerHost>> {
        let image_dir = bed.state_dir(0).with_file_name("image");
        std::fs::create_dir_all(&image_dir)
            .map_err(|e| Error::io(format!("create {}", image_dir.display()), e))?;
        let prefix = bed.prefix();
        (1..=n)
            .map(|i| {
                let d = DockerHost::start(&format!("{prefix}-h{i}"), &format!("{prefix}-dk{i}"))?;
                d.load_image(&image_dir)?;
                Ok(d)
            })
            .collect()
    }

    /// `unix://` address of its API.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The directory the daemon sees as /run/docker/plugins (a plugin's socket goes here).
    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.join("plugins")
    }

    /// Its state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Builds the router image `tag` from the project's docker/Dockerfile with `binary` as
    /// the router (no registry involved); the build's output.
    pub fn build_router_image(&self, binary: &Path, tag: &str) -> Result<Output> {
        let context = self.dir.join("image-context");
        let copy = |from: &Path, to: &str| {
            std::fs::copy(from, context.join(to)).map_err(|e| {
                Error::io(format!("copy {} into the build context", from.display()), e)
            })
        };
        std::fs::create_dir_all(&context)
            .map_err(|e| Error::io(format!("create {}", context.display()), e))?;
        copy(
            &crate::router::workspace_root().join("docker/Dockerfile"),
            "Dockerfile",
        )?;
        copy(binary, "weave-router")?;
        cmd::run_timeout(
            &[
                "env",
                &format!("DOCKER_HOST={}", self.docker_host()),
                "DOCKER_BUILDKIT=0",
                "docker",
                "build",
                "-q",
                "-t",
                tag,
                &context.to_string_lossy(),
            ],
            Duration::from_secs(120),
        )
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn launch(&mut self) -> Result<()> {
        let d = &self.dir;
        for sub in ["data", "plugins"] {
            std::fs::create_dir_all(d.join(sub))
                .map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        }
        let _ = std::fs::remove_file(self.socket());
        let _ = std::fs::remove_file(d.join("docker.pid"));
        let config = serde_json::json!({
            "data-root": d.join("data"),
            "exec-root": d.join("run"),
            "pidfile": d.join("docker.pid"),
            "hosts": [self.docker_host()],
            "cgroup-parent": format!("/{}", self.cgroup),
            "shutdown-timeout": 2,
            "userland-proxy": false,
            "deprecated-key-path": d.join("key.json"),
            "bridge": "none",
            "iptables": false,
            "ip-masq": false,
            "ip-forward": false,
            "log-level": "info",
        });
        let conf = d.join("daemon.json");
        std::fs::write(&conf, config.to_string())
            .map_err(|e| Error::io(format!("write {}", conf.display()), e))?;
        for m in ["/run/containerd", "/run/docker"] {
            let _ = std::fs::create_dir_all(m);
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(d.join("dockerd.log"))
            .map_err(|e| Error::io("open dockerd.log", e))?;
        let script = format!(
            "hostname {tag} && mount -t tmpfs -o mode=0711,size=64m dkrun /run/containerd && \
             mount -t tmpfs -o mode=0711,size=64m dkrun /run/docker && \
             mkdir -p /run/docker/plugins && mount --bind '{plugins}' /run/docker/plugins && \
             exec dockerd --config-file '{conf}'",
            tag = self.cgroup,
            conf = conf.display(),
            plugins = self.plugins_dir().display()
        );
        let mut c = Command::new("setsid");
        c.arg("nsenter")
            .arg(format!(
                "--net={}",
                netns::Netns::borrow(&self.host_ns).path().display()
            ))
            .args([
                "--",
                "unshare",
                "--mount",
                "--propagation",
                "slave",
                "--uts",
                "--",
            ])
            .args(["/bin/sh", "-c", &script])
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| Error::io("dup log", e))?)
            .stderr(log);
        let child = c.spawn().map_err(|source| Error::Spawn {
            cmd: "setsid nsenter ... dockerd".into(),
            source,
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.answers() {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if Instant::now() > deadline || exited {
                return Err(Error::Other(format!(
                    "dockerd in {} did not come up: {}",
                    self.host_ns,
                    self.log_tail(15)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Whether `docker version` gets an answer from the daemon.
    pub fn answers(&self) -> bool {
        cmd::run_timeout(
            &[
                "docker",
                "-H",
                &self.docker_host(),
                "version",
                "--format",
                "{{.Server.Version}}",
            ],
            Duration::from_secs(5),
        )
        .is_ok_and(|o| o.success())
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `docker ARGS` against this daemon.
    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        self.docker_at(&self.docker_host(), args)
    }

    /// `docker ARGS` with `DOCKER_HOST=docker_host` (e.g. the weave-router proxy).
    pub fn docker_at(&self, docker_host: &str, args: &[&str]) -> Result<Output> {
        let mut argv: Vec<OsString> =
            vec!["env".into(), format!("DOCKER_HOST={docker_host}").into()];
        argv.push("docker".into());
        argv.extend(args.iter().map(OsString::from));
        cmd::run_timeout(&argv, Duration::from_secs(60))
    }

    /// `docker ARGS`, stdout trimmed, an error unless it succeeded.
    pub fn check(&self, args: &[&str]) -> Result<String> {
        Ok(self.docker(args)?.checked()?.stdout.trim().to_string())
    }

    /// Loads the busybox test image (built once per `image_dir`).
    pub fn load_image(&self, image_dir: &Path) -> Result<()> {
        let tar = busybox_image(image_dir)?;
        self.check(&["load", "-q", "-i", &tar.to_string_lossy()])?;
        Ok(())
    }

    /// The pid of a running container's first process.
    pub fn container_pid(&self, name: &str) -> Result<i32> {
        let pid = self.check(&["inspect", "-f", "{{.State.Pid}}", name])?;
        pid.parse()
            .map_err(|_| Error::Other(format!("{name} has no pid ({pid:?})")))
    }

    /// Kills the daemon with SIGKILL (its containers die with their shims when it is
    /// started again, or are killed by [`DockerHost::stop`]).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again over its state.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch()
    }

    /// Removes every container, stops the daemon and removes its state.
    pub fn stop(&mut self) {
        if self.pid().is_some_and(alive) {
            if let Ok(ids) = self.check(&["ps", "-aq"]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    let _ = self.docker(&args);
                }
            }
            if let Some(p) = self.pid() {
                // SAFETY: kill(2) on the daemon we started and have not reaped.
                unsafe {
                    libc::kill(p, libc::SIGTERM);
                }
                wait_gone(p, Duration::from_secs(15));
            }
        }
        self.kill();
        self.clean_up();
    }

    /// Ends whatever an earlier daemon with this tag left: shims and containers (by
    /// cgroup and by the state dir in their command line), cgroups, the state dir.
    fn clean_up(&mut self) {
        for _ in 0..50 {
            let pids = self.leftover_pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) on processes of this daemon (its cgroup or its state dir).
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for _ in 0..5 {
            let dirs = cgroup_dirs(&self.cgroup);
            if dirs.is_empty() {
                break;
            }
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn leftover_pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for d in cgroup_dirs(&self.cgroup) {
            if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        let marker = self.dir.to_string_lossy().to_string();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let line = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let line = String::from_utf8_lossy(&line).replace('\0', " ");
                if line.contains(&marker)
                    && (line.contains("dockerd") || line.contains("containerd"))
                {
                    out.push(pid);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out.retain(|p| *p != std::process::id() as i32);
        out
    }
}

impl Drop for DockerHost {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every cgroup directory named `tag` (v1: one per hierarchy; v2: one), deepest first.
fn cgroup_dirs(tag: &str) -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup").join(tag)];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(rd.flatten().map(|e| e.path().join(tag)));
    }
    let mut out = Vec::new();
    for r in roots.into_iter().filter(|r| r.is_dir()) {
        collect_dirs(&r, &mut out);
    }
    out.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    out.dedup();
    out
}

fn collect_dirs(d: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
    out.push(d.to_path_buf());
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Builds `<dir>/image.tar`, a `docker save` archive of busybox with its applet links, made
/// without a registry or a daemon. Deterministic (fixed times, owners, order): the image ID
/// is the same on every host, as if they had all pulled it. Kept when already there.
pub fn busybox_image(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("image.tar");
    if out.is_file() {
        return Ok(out);
    }
    let io = |what: &str| {
        let what = what.to_string();
        move |e| Error::io(what, e)
    };
    let work = dir.join("build");
    let _ = std::fs::remove_dir_all(&work);
    let root = work.join("rootfs");
    let archive = work.join("archive");
    for sub in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "etc", "tmp", "root", "var",
    ] {
        std::fs::create_dir_all(root.join(sub)).map_err(io("mkdir rootfs"))?;
    }
    std::fs::create_dir_all(&archive).map_err(io("mkdir archive"))?;
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).map_err(io("copy busybox"))?;
    let root_s = root.to_string_lossy().to_string();
    cmd::check(&["chroot", &root_s, "/bin/busybox", "--install", "-s"])?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .map_err(io("passwd"))?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n").map_err(io("group"))?;
    cmd::check(&["chmod", "1777", &format!("{root_s}/tmp")])?;
    let layer_tar = archive.join("layer.tar");
    cmd::check(&[
        "tar",
        "-C",
        &root_s,
        "--sort=name",
        "--mtime=2000-01-01 00:00:00Z",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "-cf",
        &layer_tar.to_string_lossy(),
        ".",
    ])?;
    let layer = sha256(&layer_tar)?;
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","created":"2000-01-01T00:00:00Z","config":{{"Cmd":["/bin/sh"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{layer}"]}}}}"#
    );
    let config_path = archive.join("config.json");
    std::fs::write(&config_path, &config).map_err(io("config"))?;
    let cfg = sha256(&config_path)?;
    std::fs::rename(&config_path, archive.join(format!("{cfg}.json"))).map_err(io("mv config"))?;
    std::fs::create_dir_all(archive.join(&layer)).map_err(io("mkdir layer"))?;
    std::fs::rename(&layer_tar, archive.join(&layer).join("layer.tar")).map_err(io("mv layer"))?;
    std::fs::write(
        archive.join("manifest.json"),
        format!(
            r#"[{{"Config":"{cfg}.json","RepoTags":["{IMAGE}"],"Layers":["{layer}/layer.tar"]}}]"#
        ),
    )
    .map_err(io("manifest"))?;
    let tmp = dir.join("image.tar.tmp");
    cmd::check(&[
        "tar",
        "-C",
        &archive.to_string_lossy(),
        "-cf",
        &tmp.to_string_lossy(),
        ".",
    ])?;
    std::fs::rename(&tmp, &out).map_err(io("mv image"))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(out)
}

fn sha256(file: &Path) -> Result<String> {
    let out = cmd::check(&["sha256sum", &file.to_string_lossy()])?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| Error::Other(format!("sha256sum {}: no output", file.display())))
}
