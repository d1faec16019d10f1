//! The plugin's shell: reads the environment and stdin, calls the router's API
//! (`/cni/add`, `/cni/del`, `/cni/check` on its unix socket), prints the result or the
//! spec's error JSON on stdout and exits 0 or 1. It keeps no state: the router holds the
//! endpoint (owned by the container ID) and its addresses.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use super::config::{self, Addressing, Attachment, CniEnv, Invocation};
use super::{result, CniError, ErrorCode, CNI_VERSION};
use crate::api::cni::{CniAddBody, CniAttached, CniCheckBody, CniDelBody};
use crate::cli::client::{self, ApiAddr, ClientError};
use crate::config::DEFAULT_HTTP_ADDR;

/// How long an ADD may wait for the router (an allocation may wait on consensus).
const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs one plugin call with the process's environment, stdin and stdout.
pub fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let env = CniEnv::from_process();
    let version = config::parse_conf(&stdin)
        .map(|c| c.cni_version)
        .unwrap_or_else(|_| CNI_VERSION.to_string());
    let outcome = match read {
        Ok(_) => run(&env, &stdin),
        Err(e) => Err(CniError::new(
            ErrorCode::IoFailure,
            "cannot read the network configuration from stdin",
        )
        .details(e.to_string())),
    };
    let (out, code) = match outcome {
        Ok(Some(v)) => (Some(v), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => {
            eprintln!(
                "weave-net: {}{}",
                e.msg,
                e.details
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            );
            (Some(e.to_json(&version)), ExitCode::FAILURE)
        }
    };
    if let Some(v) = out {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{v}");
        let _ = stdout.flush();
    }
    code
}

/// One call: what to print on success (DEL prints nothing), or the error.
pub fn run(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    match config::parse(env, stdin)? {
        Invocation::Version { cni_version } => Ok(Some(result::version_result(&cni_version))),
        Invocation::Add(a) => add(&a).map(Some),
        Invocation::Check(a) => check(&a).map(|()| None),
        Invocation::Del {
            container_id,
            api_addr,
            ..
        } => {
            let body = CniDelBody { container_id };
            call(api_addr.as_deref(), "/cni/del", &body)?;
            Ok(None)
        }
    }
}

fn add(a: &Attachment) -> Result<Value, CniError> {
    check_netns(a)?;
    let (addresses, ip_in_default_subnet) = match &a.addressing {
        Addressing::Spec(s) => (vec![s.to_string()], None),
        Addressing::InDefaultSubnet(ip) => (Vec::new(), Some(*ip)),
    };
    let body = CniAddBody {
        container_id: a.container_id.clone(),
        netns: a.netns.clone(),
        ifname: a.ifname.clone(),
        addresses,
        ip_in_default_subnet,
    };
    let attached: CniAttached = decode(&call(a.api_addr.as_deref(), "/cni/add", &body)?)?;
    Ok(result::add_result(
        &a.cni_version,
        a.prev_result.as_ref(),
        &attached,
    ))
}

fn check(a: &Attachment) -> Result<(), CniError> {
    check_netns(a)?;
    let body = CniCheckBody {
        container_id: a.container_id.clone(),
        netns: a.netns.clone(),
        ifname: a.ifname.clone(),
    };
    let attached: CniAttached = decode(&call(a.api_addr.as_deref(), "/cni/check", &body)?)?;
    if let Some(prev) = &a.prev_result {
        result::matches_prev_result(prev, &attached)
            .map_err(|m| CniError::new(ErrorCode::CheckFailed, m))?;
    }
    Ok(())
}

/// A namespace that is not there is the runtime's mistake; nothing is asked of the router.
fn check_netns(a: &Attachment) -> Result<(), CniError> {
    if !a.netns.exists() {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS {} does not exist", a.netns.display()),
        ));
    }
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, CniError> {
    serde_json::from_str(body).map_err(|e| {
        CniError::new(ErrorCode::RouterFailed, "the router's answer is not what this plugin expects (plugin and router from different builds?)").details(e.to_string())
    })
}

/// The API's unix socket for `api_addr` (the configuration's `apiAddr`, else the default).
fn api(api_addr: Option<&str>) -> Result<ApiAddr, CniError> {
    let text = api_addr.unwrap_or(DEFAULT_HTTP_ADDR);
    let tcp: SocketAddr = text.parse().map_err(|_| {
        CniError::new(
            ErrorCode::InvalidNetworkConfig,
            format!("apiAddr {text:?} is not an address with a port"),
        )
    })?;
    Ok(ApiAddr::socket_of(tcp))
}

/// POSTs `body` and returns the answer's body, or the error for the runtime.
fn call(
    api_addr: Option<&str>,
    path: &str,
    body: &impl serde::Serialize,
) -> Result<String, CniError> {
    let addr = api(api_addr)?;
    let body = serde_json::to_string(body).expect("serialisable");
    let r = client::request(addr, "POST", path, Some(&body), TIMEOUT).map_err(|e| match e {
        ClientError::Unreachable { .. } => CniError::new(
            ErrorCode::TryAgainLater,
            format!("weave-router is not running on this host ({e})"),
        ),
        other => CniError::new(ErrorCode::IoFailure, other.to_string()),
    })?;
    if r.ok() {
        return Ok(r.body);
    }
    Err(answer_error(r.status, r.body.trim()))
}

/// The spec's error for an API error answer.
pub fn answer_error(status: u16, message: &str) -> CniError {
    let code = match status {
        400 => ErrorCode::InvalidNetworkConfig,
        404 => ErrorCode::UnknownContainer,
        409 => ErrorCode::AlreadyAttached,
        412 => ErrorCode::CheckFailed,
        503 => ErrorCode::TryAgainLater,
        _ => ErrorCode::RouterFailed,
    };
    CniError::new(code, format!("weave-router: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_answers_map_to_the_specs_codes() {
        assert_eq!(answer_error(404, "x").code, ErrorCode::UnknownContainer);
        assert_eq!(answer_error(409, "x").code, ErrorCode::AlreadyAttached);
        assert_eq!(answer_error(503, "x").code, ErrorCode::TryAgainLater);
        assert_eq!(answer_error(400, "bad").msg, "weave-router: bad");
        assert_eq!(answer_error(500, "x").code, ErrorCode::RouterFailed);
    }

    #[test]
    fn a_router_that_is_not_there_means_try_again_later() {
        let env = CniEnv {
            command: "DEL".into(),
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
            ..Default::default()
        };
        // A port nobody's API socket is named after.
        let conf =
            br#"{"cniVersion":"1.0.0","name":"weave","type":"weave-net","apiAddr":"127.0.0.1:1"}"#;
        let e = run(&env, conf).unwrap_err();
        assert_eq!(e.code, ErrorCode::TryAgainLater);
        assert!(
            e.msg.contains("weave-router is not running on this host"),
            "{}",
            e.msg
        );
    }
}
