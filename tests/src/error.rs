//! Errors of the test bed.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building or driving a test bed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("`{cmd}` did not finish within {timeout:?}")]
    Timeout { cmd: String, timeout: Duration },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "weave-router binary not found at {0} (run `cargo xtask build` or set WEAVE_ROUTER_BIN)"
    )]
    NoBinary(PathBuf),
    #[error("timed out after {timeout:?} waiting for {what}")]
    WaitTimeout { what: String, timeout: Duration },
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
