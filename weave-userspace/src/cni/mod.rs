//! The CNI plugin `weave-net` (CNI spec 1.0.0: ADD, DEL, CHECK, VERSION), as weave-kube had
//! it: the `weave-router` binary run under the name `weave-net` (`setup-cni` installs it so),
//! a thin client of the local router. It reads what the runtime hands it
//! ([`config`], pure), asks the router's API on its unix socket to attach the container's
//! namespace (`POST /cni/add`, the same attach as `weave-router attach`: IPAM, data path,
//! state file, rolled back on failure), and prints the result ([`result`], pure) or the
//! spec's error JSON. [`install`] is `weave-router setup-cni`.
//!
//! One binary rather than a second one: the plugin and the router it talks to always come
//! from the same build (the API's bodies cannot drift apart), and the client, the address
//! parsers and the netns checks are already in it.

pub mod config;
pub mod install;
pub mod plugin;
pub mod result;

use serde::Serialize;

/// The name the runtime runs the plugin by (the `type` of its network configuration).
pub const PLUGIN_NAME: &str = "weave-net";

/// The version this plugin answers in when nothing says otherwise.
pub const CNI_VERSION: &str = "1.0.0";

/// The configuration versions understood (results are written in the asked one).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The spec's error codes, and this plugin's own (100 and up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion,
    UnsupportedField,
    UnknownContainer,
    InvalidEnvironment,
    IoFailure,
    DecodingFailure,
    InvalidNetworkConfig,
    TryAgainLater,
    /// ADD for a container that is attached already (no DEL in between).
    AlreadyAttached,
    /// CHECK found the container's interface other than it was attached.
    CheckFailed,
    /// The router could not do what it was asked.
    RouterFailed,
}

impl ErrorCode {
    pub fn number(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::UnsupportedField => 2,
            Self::UnknownContainer => 3,
            Self::InvalidEnvironment => 4,
            Self::IoFailure => 5,
            Self::DecodingFailure => 6,
            Self::InvalidNetworkConfig => 7,
            Self::TryAgainLater => 11,
            Self::AlreadyAttached => 100,
            Self::CheckFailed => 101,
            Self::RouterFailed => 102,
        }
    }
}

/// What a failed call prints: the spec's error (code, msg, details).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: Option<String>,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// The error as the spec writes it, in `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<&'a str>,
        }
        serde_json::to_value(Wire {
            cni_version,
            code: self.code.number(),
            msg: &self.msg,
            details: self.details.as_deref(),
        })
        .expect("serialisable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_written_as_the_spec_has_them() {
        let e = CniError::new(ErrorCode::TryAgainLater, "the router is down").details("refused");
        assert_eq!(
            e.to_json("1.0.0"),
            serde_json::json!({"cniVersion": "1.0.0", "code": 11, "msg": "the router is down", "details": "refused"})
        );
        let e = CniError::new(ErrorCode::UnknownContainer, "who?");
        assert_eq!(
            e.to_json("0.4.0"),
            serde_json::json!({"cniVersion": "0.4.0", "code": 3, "msg": "who?"})
        );
    }
}
