//! `weave-router setup-cni`: puts this binary in the runtime's plugin directory as
//! `weave-net` and writes the `weave` network (`10-weave.conflist`: `weave-net`, then
//! `portmap` for published ports), as weave-kube's `setup` did. Both written whole
//! (a temporary file, then renamed), so a runtime never runs or reads half a file.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::PLUGIN_NAME;

/// Where runtimes look for plugins by default.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// Where runtimes look for network configurations by default.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// The network's name (`podman run --network weave`).
pub const NETWORK_NAME: &str = "weave";
/// The configuration's file name (first in the directory's order, as weave-kube's).
pub const CONFLIST_NAME: &str = "10-weave.conflist";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot find this program's own file: {0}")]
    OwnExe(#[source] std::io::Error),
    #[error("cannot write {path}: {error}")]
    Write {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
}

/// The `weave` network: `weave-net` (with the router's API address when it is not the
/// default), then `portmap`.
pub fn conflist(api_addr: Option<&str>) -> Value {
    let mut weave = json!({ "name": NETWORK_NAME, "type": PLUGIN_NAME });
    if let Some(a) = api_addr {
        weave["apiAddr"] = json!(a);
    }
    json!({
        "cniVersion": super::CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [
            weave,
            { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true },
        ],
    })
}

/// Writes `contents` to `path` through a temporary file beside it, with `mode`.
fn write_whole(path: &Path, contents: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |error| InstallError::Write {
        path: path.to_path_buf(),
        error,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::write(&tmp, contents)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

/// Installs the plugin and the network; returns the two paths written.
pub fn install(
    bin_dir: &Path,
    conf_dir: &Path,
    api_addr: Option<&str>,
) -> Result<(PathBuf, PathBuf), InstallError> {
    let exe = std::env::current_exe().map_err(InstallError::OwnExe)?;
    let program = std::fs::read(&exe).map_err(InstallError::OwnExe)?;
    let plugin = bin_dir.join(PLUGIN_NAME);
    write_whole(&plugin, &program, 0o755)?;
    let conf = conf_dir.join(CONFLIST_NAME);
    let mut text = serde_json::to_string_pretty(&conflist(api_addr)).expect("serialisable");
    text.push('\n');
    write_whole(&conf, text.as_bytes(), 0o644)?;
    Ok((plugin, conf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_is_weave_net_then_portmap() {
        let c = conflist(None);
        assert_eq!(c["name"], "weave");
        assert_eq!(
            c["plugins"][0],
            json!({"name": "weave", "type": "weave-net"})
        );
        assert_eq!(c["plugins"][1]["type"], "portmap");
        assert_eq!(c["plugins"][1]["capabilities"]["portMappings"], true);
        assert_eq!(
            conflist(Some("127.0.0.1:7784"))["plugins"][0]["apiAddr"],
            "127.0.0.1:7784"
        );
        // What it holds for weave-net is a configuration the plugin accepts.
        let mut plugin = c["plugins"][0].clone();
        plugin["cniVersion"] = c["cniVersion"].clone();
        super::super::config::parse_conf(plugin.to_string().as_bytes()).unwrap();
    }

    #[test]
    fn files_are_written_whole_with_their_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("weave-cni-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (plugin, conf) = install(&dir.join("bin"), &dir.join("net.d"), None).unwrap();
        assert_eq!(plugin, dir.join("bin/weave-net"));
        let mode = std::fs::metadata(&plugin).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let written: Value = serde_json::from_slice(&std::fs::read(&conf).unwrap()).unwrap();
        assert_eq!(written, conflist(None));
        assert_eq!(
            std::fs::read_dir(dir.join("bin")).unwrap().count(),
            1,
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
