//! `WEAVE_CIDR`: which addresses a Docker container asks for.
//!
//! A space-separated list of address specs as `attach` takes them (`net:default`,
//! `net:CIDR`, `ip:CIDR`, `CIDR`), or `none` (not attached). Absent or empty means
//! `net:default`.

use crate::ipam::spec::{self, AddressSpec};

/// The environment variable.
pub const ENV: &str = "WEAVE_CIDR";

/// What a container asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeaveCidr {
    /// `WEAVE_CIDR=none`: stays off the weave network.
    Detached,
    /// These addresses (`net:default` when none were given).
    Attached(Vec<AddressSpec>),
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid WEAVE_CIDR {value:?}: {reason} (use net:default, net:CIDR, ip:CIDR, CIDR or none)")]
pub struct WeaveCidrError {
    pub value: String,
    pub reason: String,
}

impl WeaveCidr {
    /// Parses the value of `WEAVE_CIDR` (`None`: the variable is not set).
    pub fn parse(value: Option<&str>) -> Result<WeaveCidr, WeaveCidrError> {
        let Some(value) = value else {
            return Ok(WeaveCidr::Attached(vec![AddressSpec::Default]));
        };
        let words: Vec<String> = value.split_whitespace().map(str::to_string).collect();
        if words.iter().any(|w| w == "none") {
            if words.len() > 1 {
                return Err(WeaveCidrError {
                    value: value.into(),
                    reason: "none cannot go with addresses".into(),
                });
            }
            return Ok(WeaveCidr::Detached);
        }
        if words.is_empty() {
            return Ok(WeaveCidr::Attached(vec![AddressSpec::Default]));
        }
        spec::parse_all(&words)
            .map(WeaveCidr::Attached)
            .map_err(|e| WeaveCidrError {
                value: value.into(),
                reason: e.to_string(),
            })
    }

    /// The value of `WEAVE_CIDR` in a container's environment (`KEY=VALUE` strings).
    pub fn from_env(env: &[String]) -> Result<WeaveCidr, WeaveCidrError> {
        Self::parse(env_value(env))
    }

    /// The specs as text, as `parse` reads them back.
    pub fn to_text(&self) -> String {
        match self {
            WeaveCidr::Detached => "none".into(),
            WeaveCidr::Attached(specs) => specs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// The value of `WEAVE_CIDR` among `KEY=VALUE` strings (the last one wins, as in Docker).
pub fn env_value(env: &[String]) -> Option<&str> {
    env.iter()
        .rev()
        .find_map(|kv| kv.strip_prefix(ENV)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_or_empty_means_the_default_subnet() {
        assert_eq!(
            WeaveCidr::parse(None).unwrap(),
            WeaveCidr::Attached(vec![AddressSpec::Default])
        );
        assert_eq!(
            WeaveCidr::parse(Some(" ")).unwrap(),
            WeaveCidr::Attached(vec![AddressSpec::Default])
        );
    }

    #[test]
    fn none_and_specs_parse() {
        assert_eq!(WeaveCidr::parse(Some("none")).unwrap(), WeaveCidr::Detached);
        let w = WeaveCidr::parse(Some("net:10.2.2.0/24 ip:10.2.1.7/24")).unwrap();
        assert_eq!(w.to_text(), "net:10.2.2.0/24 ip:10.2.1.7/24");
        assert_eq!(WeaveCidr::parse(Some(&w.to_text())).unwrap(), w);
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let e = WeaveCidr::parse(Some("net:10.2.2.0/33")).unwrap_err();
        assert!(e.to_string().starts_with("invalid WEAVE_CIDR \"net:10.2.2.0/33\": "), "{e}");
        assert!(WeaveCidr::parse(Some("none 10.2.1.1/24")).is_err());
        assert!(WeaveCidr::parse(Some("bogus")).is_err());
    }

    #[test]
    fn the_last_setting_in_the_environment_wins() {
        let env = vec![
            "PATH=/bin".to_string(),
            "WEAVE_CIDR=none".into(),
            "WEAVE_CIDRX=1".into(),
            "WEAVE_CIDR=net:default".into(),
        ];
        assert_eq!(env_value(&env), Some("net:default"));
        assert_eq!(env_value(&env[..1]), None);
    }
}
