//! Masquerading for `expose`: what the weave network sends from an exposed subnet to the
//! outside leaves with the host's address. One nftables table, `ip weave-router`, rewritten
//! whole (atomically, by `nft -f`) whenever the set of exposed subnets changes.

use std::io::Write;
use std::process::{Command, Stdio};

use super::DatapathError;
use crate::net::Ipv4Net;

/// The nftables table holding the router's NAT rules.
pub const NAT_TABLE: &str = "weave-router";

/// The ruleset for `subnets` (an empty table when none).
pub fn ruleset(subnets: &[Ipv4Net], bridge: &str) -> String {
    let mut rules = String::new();
    for s in subnets {
        rules.push_str(&format!(
            "        ip saddr {s} ip daddr != {s} oifname != \"{bridge}\" masquerade\n"
        ));
    }
    format!(
        "table ip {NAT_TABLE}\ndelete table ip {NAT_TABLE}\ntable ip {NAT_TABLE} {{\n    chain postrouting {{\n        type nat hook postrouting priority srcnat; policy accept;\n{rules}    }}\n}}\n"
    )
}

/// Installs the rules for `subnets` and lets the host forward.
pub fn apply(subnets: &[Ipv4Net], bridge: &str) -> Result<(), DatapathError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DatapathError::system("cannot run nft for masquerading", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(ruleset(subnets, bridge).as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| DatapathError::system("nft", e))?;
    if !out.status.success() {
        return Err(DatapathError::NatRefused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    if !subnets.is_empty() {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| DatapathError::system("cannot enable IPv4 forwarding", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_masquerade_rule_per_exposed_subnet() {
        let r = ruleset(&["10.2.1.0/24".parse().unwrap()], "weave");
        assert!(
            r.contains(
                "ip saddr 10.2.1.0/24 ip daddr != 10.2.1.0/24 oifname != \"weave\" masquerade"
            ),
            "{r}"
        );
        assert!(r.starts_with("table ip weave-router\ndelete table ip weave-router\n"));
        assert!(!ruleset(&[], "weave").contains("masquerade"));
    }
}
