//! What `attach` asks for, per address: Weave's `net:default`, `net:CIDR`, `ip:CIDR`.

use std::fmt;
use std::str::FromStr;

use crate::net::cidr::parse_address;
use crate::net::Ipv4Cidr;
use crate::net::Ipv4Net;

/// One address request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSpec {
    /// An address allocated in the default subnet (`net:default`, and what no spec means).
    Default,
    /// An address allocated in this subnet (`net:10.2.2.0/24`).
    Net(Ipv4Net),
    /// This very address (`ip:10.2.1.7/24` or plain `10.2.1.7/24`): claimed from IPAM when
    /// inside the allocation range, used as given otherwise.
    Ip(Ipv4Cidr),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{0:?} is not net:default, net:CIDR, ip:CIDR or an address with a prefix length (like 10.2.1.5/24)")]
    Unknown(String),
    #[error("{given:?}: {reason}")]
    BadSubnet { given: String, reason: String },
}

impl FromStr for AddressSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "net:default" {
            return Ok(Self::Default);
        }
        if let Some(net) = s.strip_prefix("net:") {
            return net
                .parse::<Ipv4Net>()
                .map(Self::Net)
                .map_err(|e| SpecError::BadSubnet {
                    given: s.to_string(),
                    reason: e.to_string(),
                });
        }
        let addr = s.strip_prefix("ip:").unwrap_or(s);
        parse_address(addr)
            .map(Self::Ip)
            .map_err(|_| SpecError::Unknown(s.to_string()))
    }
}

impl fmt::Display for AddressSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => write!(f, "net:default"),
            Self::Net(c) => write!(f, "net:{c}"),
            Self::Ip(a) => write!(f, "ip:{}/{}", a.addr, a.prefix_len),
        }
    }
}

/// Parses every spec; none means `net:default`.
pub fn parse_all(specs: &[String]) -> Result<Vec<AddressSpec>, SpecError> {
    if specs.is_empty() {
        return Ok(vec![AddressSpec::Default]);
    }
    specs.iter().map(|s| s.parse()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weave_address_specs_parse() {
        assert_eq!("net:default".parse(), Ok(AddressSpec::Default));
        assert_eq!(
            "net:10.2.2.0/24"
                .parse::<AddressSpec>()
                .unwrap()
                .to_string(),
            "net:10.2.2.0/24"
        );
        assert_eq!(
            "ip:10.2.1.7/24".parse::<AddressSpec>().unwrap().to_string(),
            "ip:10.2.1.7/24"
        );
        assert_eq!(
            "10.2.1.7/24".parse::<AddressSpec>().unwrap().to_string(),
            "ip:10.2.1.7/24"
        );
        assert_eq!(parse_all(&[]).unwrap(), vec![AddressSpec::Default]);
    }

    #[test]
    fn bad_specs_are_one_line_errors() {
        for bad in [
            "net:",
            "net:10.2.2.0/33",
            "ip:10.2.1.7",
            "10.2.1/24",
            "dhcp",
            "net:10.2.2.1/24x",
        ] {
            let e = bad.parse::<AddressSpec>().unwrap_err().to_string();
            assert!(e.starts_with(&format!("{bad:?}")), "{e}");
            assert!(!e.contains('\n'));
        }
    }
}
