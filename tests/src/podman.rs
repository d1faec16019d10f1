//! podman with its CNI backend, run inside a simulated host: its configuration, storage and
//! state in a directory of the test's own (never the machine's), the `weave` network from
//! `weave-router setup-cni` in it, and a busybox root filesystem instead of an image (no
//! registry, nothing to load).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd::{self, Output};
use crate::error::{Error, Result};
use crate::netns::Netns;

/// Where Debian's containernetworking-plugins keep `portmap` and the others.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

/// The busybox applets the root filesystem links.
const APPLETS: &[&str] = &[
    "sh", "ping", "httpd", "ip", "sleep", "cat", "wget", "true", "echo", "nc", "hostname",
];

/// One podman set-up: configuration, storage, state, the plugin directory, a root filesystem.
#[derive(Debug)]
pub struct Podman {
    pub dir: PathBuf,
}

impl Podman {
    /// Everything under `dir` (removed first), with `weave-router setup-cni` run by `bin`.
    pub fn new(dir: &Path, router_bin: &Path) -> Result<Podman> {
        let _ = std::fs::remove_dir_all(dir);
        let io = |what: &str, e| Error::io(format!("{what} in {}", dir.display()), e);
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).map_err(|e| io("rootfs", e))?;
        std::fs::create_dir_all(rootfs.join("www")).map_err(|e| io("rootfs", e))?;
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .map_err(|e| io("copy /bin/busybox (apt-get install busybox-static)", e))?;
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a))
                .map_err(|e| io("busybox applet link", e))?;
        }
        std::fs::write(rootfs.join("www/index.html"), "served through weave\n")
            .map_err(|e| io("index.html", e))?;
        let podman = Podman {
            dir: dir.to_path_buf(),
        };
        let conf = format!(
            "[containers]\n\
             # runc here refuses podman's default rlimits\n\
             default_ulimits = []\n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"none\"\n\
             runtime = \"runc\"\n\
             [network]\n\
             network_backend = \"cni\"\n\
             network_config_dir = \"{}\"\n\
             cni_plugin_dirs = [\"{}\", \"{SYSTEM_CNI_DIR}\"]\n",
            podman.conf_dir().display(),
            podman.bin_dir().display(),
        );
        std::fs::write(dir.join("containers.conf"), conf).map_err(|e| io("containers.conf", e))?;
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            dir.join("storage").display(),
            dir.join("run").display()
        );
        std::fs::write(dir.join("storage.conf"), storage).map_err(|e| io("storage.conf", e))?;
        cmd::check(&[
            router_bin.as_os_str(),
            "setup-cni".as_ref(),
            "--bin-dir".as_ref(),
            podman.bin_dir().as_os_str(),
            "--conf-dir".as_ref(),
            podman.conf_dir().as_os_str(),
        ])?;
        Ok(podman)
    }

    /// Where `setup-cni` put the plugin.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("cni-bin")
    }

    /// Where `setup-cni` put the `weave` network.
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }

    /// The busybox root filesystem (`podman run --rootfs`).
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The state of the podman of host `host` (each simulated host has its own).
    fn state(&self, host: &Netns) -> PathBuf {
        self.dir.join("state").join(host.name())
    }

    /// `podman <args>` inside `host`, with this set-up's configuration, storage and state.
    pub fn run(&self, host: &Netns, args: &[&str], timeout: Duration) -> Result<Output> {
        let state = self.state(host);
        let conf = self.dir.join("containers.conf");
        let storage = self.dir.join("storage.conf");
        let mut argv: Vec<String> = vec![
            "env".into(),
            format!("CONTAINERS_CONF={}", conf.display()),
            format!("CONTAINERS_STORAGE_CONF={}", storage.display()),
            "podman".into(),
            "--root".into(),
            state.join("storage").display().to_string(),
            "--runroot".into(),
            state.join("run").display().to_string(),
            "--tmpdir".into(),
            state.join("tmp").display().to_string(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        host.run_timeout(&argv, timeout)
    }

    /// Removes every container podman knows in `host` (a test's last step, also after a
    /// failure).
    pub fn remove_all(&self, host: &Netns) {
        let _ = self.run(
            host,
            &["rm", "-a", "-f", "-t", "0"],
            Duration::from_secs(60),
        );
    }
}
