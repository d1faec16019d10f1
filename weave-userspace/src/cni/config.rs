//! What a runtime hands the plugin, checked (pure): the `CNI_*` environment, the network
//! configuration on stdin (with its optional `ipam` section) and the `CNI_ARGS` pairs, turned
//! into one [`Invocation`] or a [`CniError`] with the spec's code.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{CniError, ErrorCode, SUPPORTED_VERSIONS};
use crate::ipam::spec::AddressSpec;
use crate::net::cidr::parse_address;
use crate::net::Ipv4Net;

/// The operation asked for (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

impl Command {
    fn parse(s: &str) -> Result<Self, CniError> {
        match s {
            "ADD" => Ok(Self::Add),
            "DEL" => Ok(Self::Del),
            "CHECK" => Ok(Self::Check),
            "VERSION" => Ok(Self::Version),
            "" => Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                "CNI_COMMAND is not set (ADD, DEL, CHECK or VERSION)",
            )),
            other => Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!(
                    "CNI_COMMAND {other:?} is not one this plugin knows (ADD, DEL, CHECK, VERSION)"
                ),
            )),
        }
    }
}

/// The network configuration on stdin: the fields this plugin reads. Fields it does not
/// know (`dns`, `runtimeConfig`, other plugins' settings) are ignored, as the spec asks.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub plugin_type: String,
    #[serde(default)]
    pub ipam: Option<IpamConf>,
    /// The router's API address (`--http-addr`), when it is not the default.
    #[serde(default)]
    pub api_addr: Option<String>,
    /// The result of the plugins before this one in a chain.
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
}

/// The optional `ipam` section: Weave's `net:` (`subnet`) or `ip:` (`ip`), not both.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IpamConf {
    /// `weave-ipam` or left out: the router's own IP allocation.
    #[serde(default, rename = "type")]
    pub ipam_type: Option<String>,
    /// Allocate in this subnet (`net:CIDR`).
    #[serde(default)]
    pub subnet: Option<String>,
    /// This address with its prefix length (`ip:CIDR`).
    #[serde(default)]
    pub ip: Option<String>,
}

/// The `CNI_*` variables, as read from the environment (empty when unset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniEnv {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

impl CniEnv {
    /// Reads them from this process's environment.
    pub fn from_process() -> Self {
        let var = |k| std::env::var(k).unwrap_or_default();
        Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
        }
    }
}

/// What the address of a new attachment is to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// An address spec the router resolves as `attach` does.
    Spec(AddressSpec),
    /// This address, with the prefix length of the router's default subnet (`IP=` without
    /// one and no subnet in the configuration).
    InDefaultSubnet(Ipv4Addr),
}

/// One call of the plugin, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation {
    Version {
        cni_version: String,
    },
    Add(Attachment),
    Check(Attachment),
    Del {
        cni_version: String,
        container_id: String,
        ifname: String,
        api_addr: Option<String>,
    },
}

/// ADD and CHECK: the container, its namespace and interface, the address wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub cni_version: String,
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub addressing: Addressing,
    pub api_addr: Option<String>,
    pub prev_result: Option<serde_json::Value>,
}

/// Parses the environment and stdin of one call. Nothing here touches the system.
pub fn parse(env: &CniEnv, stdin: &[u8]) -> Result<Invocation, CniError> {
    let command = Command::parse(&env.command)?;
    if command == Command::Version {
        // The runtime sends `{"cniVersion": ...}`; an empty or odd stdin still gets the list.
        let cni_version = serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
            .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| super::CNI_VERSION.to_string());
        return Ok(Invocation::Version { cni_version });
    }
    let conf = parse_conf(stdin)?;
    let container_id = container_id(&env.container_id)?;
    let ifname = ifname(&env.ifname)?;
    if command == Command::Del {
        return Ok(Invocation::Del {
            cni_version: conf.cni_version,
            container_id,
            ifname,
            api_addr: conf.api_addr,
        });
    }
    if command == Command::Check && matches!(conf.cni_version.as_str(), "0.3.0" | "0.3.1") {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "CHECK needs cniVersion 0.4.0 or later; the configuration says {}",
                conf.cni_version
            ),
        ));
    }
    if env.netns.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            "CNI_NETNS is not set: the container's network namespace is needed",
        ));
    }
    let netns = PathBuf::from(&env.netns);
    if !netns.is_absolute() {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS {:?} is not an absolute path", env.netns),
        ));
    }
    let runtime_ip = runtime_ip(&env.args)?;
    let addressing = addressing(conf.ipam.as_ref(), runtime_ip)?;
    let attachment = Attachment {
        cni_version: conf.cni_version,
        container_id,
        netns,
        ifname,
        addressing,
        api_addr: conf.api_addr,
        prev_result: conf.prev_result,
    };
    Ok(match command {
        Command::Check => Invocation::Check(attachment),
        _ => Invocation::Add(attachment),
    })
}

/// The network configuration: JSON, a supported `cniVersion`, a name, our type.
pub fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            ErrorCode::DecodingFailure,
            "the network configuration on stdin is not valid JSON for this plugin",
        )
        .details(e.to_string())
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "cniVersion {:?} is not supported (supported: {})",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    if conf.name.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "the network configuration has no name",
        ));
    }
    if conf.plugin_type != super::PLUGIN_NAME {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            format!(
                "the network configuration's type is {:?}, not {:?}",
                conf.plugin_type,
                super::PLUGIN_NAME
            ),
        ));
    }
    if let Some(a) = &conf.api_addr {
        a.parse::<std::net::SocketAddr>().map_err(|_| {
            CniError::new(
                ErrorCode::InvalidNetworkConfig,
                format!("apiAddr {a:?} is not an address with a port (like 127.0.0.1:6784)"),
            )
        })?;
    }
    Ok(conf)
}

/// `CNI_CONTAINERID`: not empty, letters, digits, `_`, `.`, `-` (the spec's rule).
fn container_id(id: &str) -> Result<String, CniError> {
    let fine = !id.is_empty()
        && id.len() <= 256
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !fine {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            if id.is_empty() {
                "CNI_CONTAINERID is not set".to_string()
            } else {
                format!("CNI_CONTAINERID {id:?} is not a container ID (letters, digits, _ . -)")
            },
        ));
    }
    Ok(id.to_string())
}

/// `CNI_IFNAME`: a Linux interface name (1–15 bytes, no `/`, `:` or white space, not `.`
/// or `..`).
fn ifname(name: &str) -> Result<String, CniError> {
    let fine = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if !fine {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            if name.is_empty() {
                "CNI_IFNAME is not set".to_string()
            } else {
                format!(
                    "CNI_IFNAME {name:?} is not an interface name (1-15 bytes, no / : or spaces)"
                )
            },
        ));
    }
    Ok(name.to_string())
}

/// The `IP` of `CNI_ARGS` (`K=V;K=V`), when given: an address, with or without a prefix
/// length. Other keys are the runtime's business (podman and Kubernetes send theirs, with
/// `IgnoreUnknown=1`); a pair without `=` is malformed.
fn runtime_ip(args: &str) -> Result<Option<String>, CniError> {
    let mut pairs = BTreeMap::new();
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
            ));
        };
        pairs.insert(k, v);
    }
    Ok(pairs.get("IP").map(|v| v.to_string()))
}

fn config_error(message: String) -> CniError {
    CniError::new(ErrorCode::InvalidNetworkConfig, message)
}

/// The address wanted: the `IP` runtime argument first (in the configuration's subnet when
/// it has one), else the `ipam` section's `ip` or `subnet`, else the default subnet.
pub fn addressing(
    ipam: Option<&IpamConf>,
    runtime_ip: Option<String>,
) -> Result<Addressing, CniError> {
    let ipam = ipam.cloned().unwrap_or_default();
    if let Some(t) = ipam.ipam_type.as_deref() {
        if t != "weave-ipam" {
            return Err(config_error(format!(
                "ipam type {t:?} is not supported: leave it out (or say \"weave-ipam\") to use the router's IP allocation"
            )));
        }
    }
    if ipam.subnet.is_some() && ipam.ip.is_some() {
        return Err(config_error(
            "ipam: give subnet or ip, not both".to_string(),
        ));
    }
    let subnet = ipam
        .subnet
        .as_deref()
        .map(|s| {
            s.parse::<Ipv4Net>()
                .map_err(|e| config_error(format!("ipam subnet {s:?}: {e}")))
        })
        .transpose()?;
    if let Some(ip) = runtime_ip {
        let bad_arg = |reason: String| {
            CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_ARGS IP={ip}: {reason}"),
            )
        };
        if ip.contains('/') {
            let cidr = parse_address(&ip).map_err(|e| bad_arg(e.to_string()))?;
            if let Some(net) = subnet {
                if net != Ipv4Net::of(cidr) {
                    return Err(bad_arg(format!("not in the configured subnet {net}")));
                }
            }
            return Ok(Addressing::Spec(AddressSpec::Ip(cidr)));
        }
        let addr: Ipv4Addr = ip
            .parse()
            .map_err(|_| bad_arg("not an IPv4 address".to_string()))?;
        return match subnet {
            Some(net) if net.contains(addr) => {
                Ok(Addressing::Spec(AddressSpec::Ip(net.with_host(addr))))
            }
            Some(net) => Err(bad_arg(format!("not in the configured subnet {net}"))),
            None => Ok(Addressing::InDefaultSubnet(addr)),
        };
    }
    if let Some(ip) = ipam.ip.as_deref() {
        let cidr = parse_address(ip).map_err(|e| {
            config_error(format!(
                "ipam ip {ip:?}: {e} (give it with a prefix length, like 10.2.1.5/24)"
            ))
        })?;
        return Ok(Addressing::Spec(AddressSpec::Ip(cidr)));
    }
    Ok(Addressing::Spec(match subnet {
        Some(net) => AddressSpec::Net(net),
        None => AddressSpec::Default,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str) -> CniEnv {
        CniEnv {
            command: command.into(),
            container_id: "c0ffee".into(),
            netns: "/run/netns/c1".into(),
            ifname: "eth0".into(),
            args: "IgnoreUnknown=1;K8S_POD_NAME=web".into(),
        }
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"weave","type":"weave-net"}"#;

    fn add(conf: &str, env: &CniEnv) -> Result<Attachment, CniError> {
        match parse(env, conf.as_bytes())? {
            Invocation::Add(a) => Ok(a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_add_without_ipam_takes_the_default_subnet() {
        let a = add(CONF, &env("ADD")).unwrap();
        assert_eq!(a.container_id, "c0ffee");
        assert_eq!(a.netns, PathBuf::from("/run/netns/c1"));
        assert_eq!(a.ifname, "eth0");
        assert_eq!(a.addressing, Addressing::Spec(AddressSpec::Default));
        assert_eq!(a.prev_result, None);
    }

    #[test]
    fn the_ipam_section_gives_a_subnet_or_an_address() {
        let conf = r#"{"cniVersion":"0.4.0","name":"weave","type":"weave-net","ipam":{"subnet":"10.2.5.0/24"}}"#;
        assert_eq!(
            add(conf, &env("ADD")).unwrap().addressing,
            Addressing::Spec(AddressSpec::Net("10.2.5.0/24".parse().unwrap()))
        );
        let conf = r#"{"cniVersion":"1.0.0","name":"weave","type":"weave-net","ipam":{"type":"weave-ipam","ip":"10.2.1.9/24"}}"#;
        assert_eq!(
            add(conf, &env("ADD")).unwrap().addressing,
            Addressing::Spec(AddressSpec::Ip("10.2.1.9/24".parse().unwrap()))
        );
    }

    #[test]
    fn the_ip_runtime_argument_wins_and_takes_the_subnets_length() {
        let mut e = env("ADD");
        e.args = "IgnoreUnknown=1;IP=10.2.1.7".into();
        assert_eq!(
            add(CONF, &e).unwrap().addressing,
            Addressing::InDefaultSubnet(Ipv4Addr::new(10, 2, 1, 7))
        );
        let conf = r#"{"cniVersion":"1.0.0","name":"weave","type":"weave-net","ipam":{"subnet":"10.2.5.0/24"}}"#;
        e.args = "IP=10.2.5.7".into();
        assert_eq!(
            add(conf, &e).unwrap().addressing,
            Addressing::Spec(AddressSpec::Ip("10.2.5.7/24".parse().unwrap()))
        );
        e.args = "IP=10.2.6.7".into();
        let err = add(conf, &e).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidEnvironment);
        assert!(
            err.msg.contains("not in the configured subnet 10.2.5.0/24"),
            "{}",
            err.msg
        );
        e.args = "IP=10.2.1.7/16".into();
        assert_eq!(
            add(CONF, &e).unwrap().addressing,
            Addressing::Spec(AddressSpec::Ip("10.2.1.7/16".parse().unwrap()))
        );
        e.args = "IP=nonsense".into();
        assert!(add(CONF, &e).unwrap_err().msg.contains("IP=nonsense"));
        e.args = "IP".into();
        assert!(add(CONF, &e).unwrap_err().msg.contains("is not KEY=VALUE"));
    }

    #[test]
    fn bad_configurations_get_the_specs_codes() {
        let cases: &[(&str, ErrorCode, &str)] = &[
            ("not json", ErrorCode::DecodingFailure, "not valid JSON"),
            (
                r#"{"cniVersion":"9.9.9","name":"w","type":"weave-net"}"#,
                ErrorCode::IncompatibleVersion,
                "\"9.9.9\" is not supported",
            ),
            (
                r#"{"cniVersion":"1.0.0","type":"weave-net"}"#,
                ErrorCode::InvalidNetworkConfig,
                "has no name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"w","type":"bridge"}"#,
                ErrorCode::InvalidNetworkConfig,
                "type is \"bridge\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"w","type":"weave-net","ipam":{"type":"host-local"}}"#,
                ErrorCode::InvalidNetworkConfig,
                "host-local",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"w","type":"weave-net","ipam":{"subnet":"10.2.5.0/33"}}"#,
                ErrorCode::InvalidNetworkConfig,
                "ipam subnet",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"w","type":"weave-net","ipam":{"ip":"10.2.1.5"}}"#,
                ErrorCode::InvalidNetworkConfig,
                "prefix length",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"w","type":"weave-net","ipam":{"ip":"10.2.1.5/24","subnet":"10.2.1.0/24"}}"#,
                ErrorCode::InvalidNetworkConfig,
                "not both",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"w","type":"weave-net","ipam":{"ranges":[]}}"#,
                ErrorCode::DecodingFailure,
                "ranges",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"w","type":"weave-net","apiAddr":"here"}"#,
                ErrorCode::InvalidNetworkConfig,
                "apiAddr",
            ),
        ];
        for (conf, code, text) in cases {
            let e = parse(&env("ADD"), conf.as_bytes()).unwrap_err();
            assert_eq!(e.code, *code, "{conf}: {e:?}");
            assert!(
                e.msg.contains(text) || e.details.as_deref().unwrap_or("").contains(text),
                "{conf}: {e:?}"
            );
        }
    }

    #[test]
    fn bad_environments_get_the_specs_codes() {
        let mut e = env("ADD");
        e.netns = String::new();
        assert!(parse(&e, CONF.as_bytes())
            .unwrap_err()
            .msg
            .contains("CNI_NETNS is not set"));
        e.netns = "run/netns/x".into();
        assert!(parse(&e, CONF.as_bytes())
            .unwrap_err()
            .msg
            .contains("not an absolute path"));
        let mut e = env("ADD");
        e.container_id = "../etc".into();
        assert_eq!(
            parse(&e, CONF.as_bytes()).unwrap_err().code,
            ErrorCode::InvalidEnvironment
        );
        let mut e = env("ADD");
        e.ifname = "a/b".into();
        assert!(parse(&e, CONF.as_bytes())
            .unwrap_err()
            .msg
            .contains("CNI_IFNAME"));
        e.ifname = "sixteen-chars-xx".into();
        assert!(parse(&e, CONF.as_bytes()).is_err());
        let e = env("FROB");
        assert!(parse(&e, CONF.as_bytes())
            .unwrap_err()
            .msg
            .contains("\"FROB\""));
        let e = env("");
        assert!(parse(&e, CONF.as_bytes())
            .unwrap_err()
            .msg
            .contains("CNI_COMMAND is not set"));
    }

    #[test]
    fn del_needs_no_namespace_and_check_needs_a_recent_version() {
        let mut e = env("DEL");
        e.netns = String::new();
        assert!(matches!(
            parse(&e, CONF.as_bytes()).unwrap(),
            Invocation::Del { .. }
        ));
        let old = r#"{"cniVersion":"0.3.1","name":"weave","type":"weave-net"}"#;
        assert_eq!(
            parse(&env("CHECK"), old.as_bytes()).unwrap_err().code,
            ErrorCode::IncompatibleVersion
        );
        assert!(matches!(
            parse(&env("CHECK"), CONF.as_bytes()).unwrap(),
            Invocation::Check(_)
        ));
    }

    #[test]
    fn version_answers_whatever_stdin_holds() {
        assert_eq!(
            parse(&env("VERSION"), b"").unwrap(),
            Invocation::Version {
                cni_version: "1.0.0".into()
            }
        );
        assert_eq!(
            parse(&env("VERSION"), br#"{"cniVersion":"0.4.0"}"#).unwrap(),
            Invocation::Version {
                cni_version: "0.4.0".into()
            }
        );
    }

    #[test]
    fn a_chained_call_keeps_the_previous_result() {
        let conf = r#"{"cniVersion":"1.0.0","name":"weave","type":"weave-net","prevResult":{"cniVersion":"1.0.0","interfaces":[]}}"#;
        let a = match parse(&env("CHECK"), conf.as_bytes()).unwrap() {
            Invocation::Check(a) => a,
            other => panic!("{other:?}"),
        };
        assert!(a.prev_result.is_some());
    }
}
