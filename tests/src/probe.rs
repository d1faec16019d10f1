//! What tests look at and poke with: metrics, neighbour tables, stray packets.

use std::net::{SocketAddrV4, UdpSocket};
use std::path::Path;

use crate::error::{Error, Result};
use crate::netns::Netns;

/// One sample of Prometheus text: name, labels (as written, without braces), value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: String,
    pub value: f64,
}

/// The samples in Prometheus text format (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, rest) = match l.find('}') {
                Some(i) => (&l[..=i], &l[i + 1..]),
                None => l.split_once(' ')?,
            };
            let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((n, lab)) => (n.to_string(), lab.trim_end_matches('}').to_string()),
                None => (series.to_string(), String::new()),
            };
            Some(Sample {
                name,
                labels,
                value,
            })
        })
        .collect()
}

/// Sum of the samples for which `pick` is true.
pub fn metric_sum(text: &str, pick: impl Fn(&Sample) -> bool) -> f64 {
    parse_metrics(text)
        .iter()
        .filter(|s| pick(s))
        .map(|s| s.value)
        .sum()
}

/// A VXLAN packet (UDP payload): the 8-byte header with VNI `vni`, then an Ethernet frame
/// from `src` to `dst` carrying an IPv4 ICMP echo-like body (not meant to be valid).
pub fn vxlan_payload(vni: u32, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0];
    p.extend_from_slice(&(vni << 8).to_be_bytes());
    p.extend_from_slice(&dst);
    p.extend_from_slice(&src);
    p.extend_from_slice(&[0x08, 0x00]);
    // IPv4: version/IHL, TOS, length 28, id, flags, TTL 64, ICMP, checksum 0, 10.2.1.99 -> 10.2.1.1
    p.extend_from_slice(&[
        0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 1, 0, 0, 10, 2, 1, 99, 10, 2, 1, 1,
    ]);
    p.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
    p
}

/// Sends `payload` `count` times from a UDP socket inside `ns` to `to`.
pub fn send_udp(ns: &Netns, to: SocketAddrV4, payload: &[u8], count: usize) -> Result<()> {
    ns.enter(|| -> std::io::Result<()> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..count {
            s.send_to(payload, to)?;
        }
        Ok(())
    })?
    .map_err(|e| Error::io(format!("send UDP to {to} from {}", ns.name()), e))
}

/// The MAC address of `dev` inside `ns`.
pub fn link_mac(ns: &Netns, dev: &str) -> Result<String> {
    let out = ns.ip(&format!("-o link show dev {dev}"))?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| Error::Other(format!("no MAC for {dev} in {}: {out}", ns.name())))
}

/// The MTU of `dev` inside `ns`.
pub fn link_mtu(ns: &Netns, dev: &str) -> Result<u32> {
    let out = ns.ip(&format!("-o link show dev {dev}"))?;
    out.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| Error::Other(format!("no MTU for {dev} in {}: {out}", ns.name())))
}

/// Names of the links inside `ns`.
pub fn links(ns: &Netns) -> Result<Vec<String>> {
    Ok(ns
        .ip("-o link show")?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect())
}

/// The neighbour entry for `addr` inside `ns` (`ip neigh show <addr>`), if any.
pub fn neighbour(ns: &Netns, addr: &str) -> Result<Option<String>> {
    let out = ns.ip(&format!("neigh show {addr}"))?;
    Ok(out
        .lines()
        .next()
        .map(str::to_string)
        .filter(|l| !l.is_empty()))
}

/// The short ID a router stored in its state dir (`peer.json`), if readable.
pub fn stored_short_id(state_dir: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(state_dir.join("peer.json")).ok()?;
    let i = text.find("\"short_id\"")?;
    let rest = text[i + "\"short_id\"".len()..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let t = "# HELP x y\n# TYPE a counter\na 1\nb{reason=\"bad peer\",x=\"1\"} 2.5\nc{} 3 1700000000\n";
        let s = parse_metrics(t);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].name, "b");
        assert_eq!(s[1].labels, "reason=\"bad peer\",x=\"1\"");
        assert_eq!(s[1].value, 2.5);
        assert_eq!(metric_sum(t, |s| s.name != "a"), 5.5);
    }

    #[test]
    fn builds_vxlan_header() {
        let p = vxlan_payload(0x123456, [0xff; 6], [2, 0, 0, 0, 0, 1]);
        assert_eq!(&p[..8], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(&p[20..22], &[0x08, 0x00]);
    }

    #[test]
    fn reads_macs() {
        assert_eq!(parse_mac("02:0a:ff:00:01:02"), Some([2, 10, 255, 0, 1, 2]));
        assert_eq!(parse_mac("02:0a"), None);
    }
}
