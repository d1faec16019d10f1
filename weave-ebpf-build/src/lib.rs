//! The one build path of the kernel programs.
//!
//! `weave-ebpf` is not part of the host workspace: it builds with the nightly toolchain for
//! `bpfel-unknown-none` and links with bpf-linker, as
//! `rustup run nightly cargo build --release --target bpfel-unknown-none -Z build-std=core`,
//! into `<workspace>/target/ebpf`. `weave-userspace`'s build script (which embeds the object
//! in `weave-router`) and `cargo xtask build-ebpf` both call [`EbpfBuild::build`], so they
//! run the same command in the same environment and share the same target directory.

use std::env;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// What to do when the tools are missing.
pub const SETUP_HINT: &str = "run `cargo xtask setup`";

/// The target the kernel programs are built for.
const TARGET: &str = "bpfel-unknown-none";

/// Why the kernel programs could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("bpf-linker is not installed (needed to build the eBPF programs); {SETUP_HINT}")]
    LinkerMissing,
    #[error("cannot run rustup to build the eBPF programs with nightly: {0}; {SETUP_HINT}")]
    Rustup(io::Error),
    #[error(
        "the nightly toolchain with rust-src is missing (needed to build the eBPF programs); \
         {SETUP_HINT}"
    )]
    NightlyMissing,
    #[error("building the eBPF programs in {} failed (see above)", dir.display())]
    Compile { dir: PathBuf },
    #[error("eBPF object {} missing after the build: {source}; {SETUP_HINT}", path.display())]
    ObjectMissing { path: PathBuf, source: io::Error },
}

/// The kernel programs of one workspace: where their sources are and where the object lands.
#[derive(Clone, Debug)]
pub struct EbpfBuild {
    root: PathBuf,
}

impl EbpfBuild {
    /// The kernel programs of the workspace at `workspace_root`.
    pub fn new(workspace_root: impl Into<PathBuf>) -> Self {
        Self {
            root: workspace_root.into(),
        }
    }

    /// The `weave-ebpf` crate.
    pub fn crate_dir(&self) -> PathBuf {
        self.root.join("weave-ebpf")
    }

    /// The files and directories the object is built from (for `cargo:rerun-if-changed`).
    pub fn inputs(&self) -> Vec<PathBuf> {
        let ebpf = self.crate_dir();
        let common = self.root.join("weave-ebpf-common");
        vec![
            ebpf.join("src"),
            ebpf.join("Cargo.toml"),
            ebpf.join("Cargo.lock"),
            ebpf.join(".cargo/config.toml"),
            common.join("src"),
            common.join("Cargo.toml"),
        ]
    }

    /// The target directory of the eBPF build.
    pub fn target_dir(&self) -> PathBuf {
        self.root.join("target").join("ebpf")
    }

    /// Where the built object is.
    pub fn object(&self) -> PathBuf {
        self.target_dir()
            .join(TARGET)
            .join("release")
            .join("weave-ebpf")
    }

    /// Builds the kernel programs and returns the object's path. Cargo's own output goes to
    /// stderr; a compile error in the programs is printed there before this returns.
    pub fn build(&self) -> Result<PathBuf, BuildError> {
        let path = path_with_cargo_bin();
        if !env::split_paths(&path).any(|d| d.join("bpf-linker").is_file()) {
            return Err(BuildError::LinkerMissing);
        }
        let dir = self.crate_dir();
        let mut cmd = Command::new("rustup");
        cmd.args(["run", "nightly", "cargo", "build", "--release"])
            .args(["--target", TARGET, "-Z", "build-std=core"])
            .arg("--target-dir")
            .arg(self.target_dir())
            .current_dir(&dir)
            .env("PATH", &path)
            .stdin(Stdio::null());
        for (name, _) in env::vars_os() {
            if name.to_str().is_some_and(is_outer_cargo_setting) {
                cmd.env_remove(name);
            }
        }
        let status = cmd.status().map_err(BuildError::Rustup)?;
        if !status.success() {
            // Tell a missing toolchain apart from a compile error in the programs.
            if !nightly_has_rust_src() {
                return Err(BuildError::NightlyMissing);
            }
            return Err(BuildError::Compile { dir });
        }
        let object = self.object();
        if let Err(source) = std::fs::metadata(&object) {
            return Err(BuildError::ObjectMissing {
                path: object,
                source,
            });
        }
        Ok(object)
    }
}

/// Whether an environment variable belongs to the cargo (or rustc) that runs the caller: its
/// settings are for the host build, and none may leak into the build for another target with
/// another toolchain. `CARGO_HOME` stays: it says where the registry and bpf-linker are.
pub fn is_outer_cargo_setting(name: &str) -> bool {
    (name.starts_with("CARGO") && name != "CARGO_HOME")
        || name.starts_with("RUSTC")
        || name.starts_with("RUSTDOC")
        || matches!(
            name,
            "RUSTFLAGS"
                | "RUSTUP_TOOLCHAIN"
                | "TARGET"
                | "HOST"
                | "OUT_DIR"
                | "PROFILE"
                | "OPT_LEVEL"
                | "DEBUG"
        )
}

/// `$PATH` with `$CARGO_HOME/bin` (else `~/.cargo/bin`) in front: where `cargo xtask setup`
/// installs bpf-linker.
fn path_with_cargo_bin() -> OsString {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"));
    let mut dirs = vec![cargo_home.join("bin")];
    if let Some(p) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&p));
    }
    env::join_paths(dirs).unwrap_or_else(|_| cargo_home.join("bin").into_os_string())
}

fn home() -> PathBuf {
    env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// Whether the nightly toolchain is installed with the `rust-src` component
/// (`-Z build-std=core` needs it).
fn nightly_has_rust_src() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(OsStr::new(String::from_utf8_lossy(&o.stdout).trim())))
        .is_some_and(|sysroot| sysroot.join("lib/rustlib/src/rust/library/core").is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outer_cargos_settings_are_removed_but_cargo_home_stays() {
        for name in [
            "CARGO",
            "CARGO_MANIFEST_DIR",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "RUSTC",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "RUSTDOC",
            "RUSTFLAGS",
            "RUSTUP_TOOLCHAIN",
            "TARGET",
            "OUT_DIR",
            "PROFILE",
        ] {
            assert!(is_outer_cargo_setting(name), "{name}");
        }
        for name in [
            "CARGO_HOME",
            "PATH",
            "HOME",
            "RUSTUP_HOME",
            "RUST_BACKTRACE",
        ] {
            assert!(!is_outer_cargo_setting(name), "{name}");
        }
    }

    #[test]
    fn the_object_lands_under_target_ebpf() {
        let build = EbpfBuild::new("/w");
        assert_eq!(build.target_dir(), std::path::Path::new("/w/target/ebpf"));
        assert_eq!(
            build.object(),
            std::path::Path::new("/w/target/ebpf/bpfel-unknown-none/release/weave-ebpf")
        );
        assert!(build.inputs().contains(&PathBuf::from("/w/weave-ebpf/src")));
    }
}
