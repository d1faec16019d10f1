//! Mesh scenarios: cutting underlay links with nftables, capturing VXLAN on a host, and
//! reading a router's view of the mesh (`/report`).
//!
//! A link between two hosts is cut in two places:
//!
//! * in each host's own namespace, a `netdev` table on `eth0` (egress and ingress): it stops
//!   the control connections and whatever takes the kernel's ordinary paths;
//! * on the underlay bridge, a `bridge` table in the underlay namespace: it stops the rest.
//!   Frames the router's tc programs send with `bpf_redirect_neigh` / `bpf_redirect`, or take
//!   in on tcx ingress, pass no netfilter hook of the host (tcx ingress runs before the
//!   `netdev` ingress hook, and redirected frames skip the `netdev` egress hook: VXLAN between
//!   two hosts whose host-level rules dropped each other was still seen on the wire), just as
//!   a host firewall would not stop them; a firewall between hosts sits on the network.
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;

use crate::bed::TestBed;
use crate::cmd::{self, Background};
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::router::Router;

/// The nftables table that holds cut links: in a host, the underlay or a router namespace.
pub const BLOCK_TABLE: &str = "weave_test_block";

/// `nft <line>` inside `ns`, the line split on whitespace; its stdout.
pub(crate) fn nft(ns: &Netns, line: &str) -> Result<String> {
    let mut argv: Vec<String> = vec!["nft".into()];
    argv.extend(line.split_whitespace().map(str::to_string));
    ns.check(&argv)
}

/// Drops every IPv4 packet between this host's `eth0` and `peer`, both ways (see the module
/// docs). May be called again for more peers.
pub fn block(ns: &Netns, peer: Ipv4Addr) -> Result<()> {
    if nft(ns, &format!("list set netdev {BLOCK_TABLE} peers")).is_err() {
        for line in [
            format!("add table netdev {BLOCK_TABLE}"),
            format!("add set netdev {BLOCK_TABLE} peers {{ type ipv4_addr ; }}"),
            format!("add chain netdev {BLOCK_TABLE} out {{ type filter hook egress device eth0 priority -500 ; }}"),
            format!("add chain netdev {BLOCK_TABLE} in {{ type filter hook ingress device eth0 priority -500 ; }}"),
            format!("add rule netdev {BLOCK_TABLE} out ip daddr @peers counter drop"),
            format!("add rule netdev {BLOCK_TABLE} in ip saddr @peers counter drop"),
        ] {
            nft(ns, &line)?;
        }
    }
    nft(
        ns,
        &format!("add element netdev {BLOCK_TABLE} peers {{ {peer} }}"),
    )?;
    Ok(())
}

/// Lets traffic between this host and `peer` through again.
pub fn unblock(ns: &Netns, peer: Ipv4Addr) -> Result<()> {
    nft(
        ns,
        &format!("delete element netdev {BLOCK_TABLE} peers {{ {peer} }}"),
    )
    .map(|_| ())
}

/// Drops IPv4 packets between `a` and `b`, both ways, in the `forward` hook of `family`
/// inside `ns`: `bridge` for the frames the underlay's bridges pass on, `ip` for the packets
/// a router namespace forwards. May be called again for more pairs.
pub(crate) fn block_pair(ns: &Netns, family: &str, a: Ipv4Addr, b: Ipv4Addr) -> Result<()> {
    if nft(ns, &format!("list set {family} {BLOCK_TABLE} pairs")).is_err() {
        for line in [
            format!("add table {family} {BLOCK_TABLE}"),
            format!("add set {family} {BLOCK_TABLE} pairs {{ type ipv4_addr . ipv4_addr ; }}"),
            format!(
                "add chain {family} {BLOCK_TABLE} cut {{ type filter hook forward priority -500 ; }}"
            ),
            format!("add rule {family} {BLOCK_TABLE} cut ip saddr . ip daddr @pairs counter drop"),
        ] {
            nft(ns, &line)?;
        }
    }
    nft(ns, &pair_element("add", family, a, b)).map(|_| ())
}

/// Lets packets between `a` and `b` through [`block_pair`]'s table again.
pub(crate) fn unblock_pair(ns: &Netns, family: &str, a: Ipv4Addr, b: Ipv4Addr) -> Result<()> {
    nft(ns, &pair_element("delete", family, a, b)).map(|_| ())
}

fn pair_element(verb: &str, family: &str, a: Ipv4Addr, b: Ipv4Addr) -> String {
    format!("{verb} element {family} {BLOCK_TABLE} pairs {{ {a} . {b}, {b} . {a} }}")
}

/// Cuts the underlay link between hosts `a` and `b` of `bed`: on both hosts and on the
/// underlay bridge (see the module docs).
pub fn cut(bed: &TestBed, a: usize, b: usize) -> Result<()> {
    let (aa, ba) = (bed.host(a).addr, bed.host(b).addr);
    block(&bed.host(a).ns, ba)?;
    block(&bed.host(b).ns, aa)?;
    block_pair(&bed.underlay(), "bridge", aa, ba)
}

/// Undoes [`cut`]: hosts `a` and `b` reach each other on the underlay again.
pub fn heal(bed: &TestBed, a: usize, b: usize) -> Result<()> {
    let (aa, ba) = (bed.host(a).addr, bed.host(b).addr);
    unblock(&bed.host(a).ns, ba)?;
    unblock(&bed.host(b).ns, aa)?;
    unblock_pair(&bed.underlay(), "bridge", aa, ba)
}

/// Drops UDP to `port` between hosts `a` and `b` on the underlay bridge, both ways; the rest
/// of their traffic (the control connection on TCP 6783, say) passes. May be called again
/// for more pairs or ports.
pub fn block_udp_port(bed: &TestBed, a: usize, b: usize, port: u16) -> Result<()> {
    let underlay = bed.underlay();
    if nft(
        &underlay,
        &format!("list set bridge {BLOCK_TABLE} udp_pairs"),
    )
    .is_err()
    {
        for line in [
            format!("add table bridge {BLOCK_TABLE}"),
            format!(
                "add set bridge {BLOCK_TABLE} udp_pairs {{ type ipv4_addr . ipv4_addr . inet_service ; }}"
            ),
            format!(
                "add chain bridge {BLOCK_TABLE} cut {{ type filter hook forward priority -500 ; }}"
            ),
            format!(
                "add rule bridge {BLOCK_TABLE} cut ip saddr . ip daddr . udp dport @udp_pairs counter drop"
            ),
        ] {
            nft(&underlay, &line)?;
        }
    }
    nft(&underlay, &udp_pair_element("add", bed, a, b, port)).map(|_| ())
}

/// Lets UDP to `port` between hosts `a` and `b` through again.
pub fn unblock_udp_port(bed: &TestBed, a: usize, b: usize, port: u16) -> Result<()> {
    nft(
        &bed.underlay(),
        &udp_pair_element("delete", bed, a, b, port),
    )
    .map(|_| ())
}

fn udp_pair_element(verb: &str, bed: &TestBed, a: usize, b: usize, port: u16) -> String {
    let (a, b) = (bed.host(a).addr, bed.host(b).addr);
    format!("{verb} element bridge {BLOCK_TABLE} udp_pairs {{ {a} . {b} . {port}, {b} . {a} . {port} }}")
}

/// The underlay's cut pairs with the drop counter, for messages.
pub fn underlay_rules(bed: &TestBed) -> String {
    nft(&bed.underlay(), &format!("list table bridge {BLOCK_TABLE}"))
        .unwrap_or_else(|e| format!("({e})"))
}

/// The block table as `nft list table` shows it (rules with their counters), for messages.
pub fn block_rules(ns: &Netns) -> String {
    nft(ns, &format!("list table netdev {BLOCK_TABLE}")).unwrap_or_else(|e| format!("({e})"))
}

/// The marker tests' pings carry in every payload (`ping -p`), to look for on the wire.
pub const MARKER_HEX: &str = "5e1ec7ab1ec0ffee5e1ec7ab1ec0ffee";

/// [`MARKER_HEX`] as bytes.
pub fn marker() -> Vec<u8> {
    (0..MARKER_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&MARKER_HEX[i..i + 2], 16).unwrap_or(0))
        .collect()
}

/// Whether `bytes` hold the marker.
pub fn has_marker(bytes: &[u8]) -> bool {
    let m = marker();
    bytes.windows(m.len()).any(|w| w == m)
}

/// tcpdump writing every packet on a device, whole, to a file: the raw frames.
pub struct PcapCapture {
    bg: Background,
    path: std::path::PathBuf,
}

impl PcapCapture {
    /// Starts tcpdump on `dev` in `ns` (`name` names the file); returns once it listens.
    pub fn start(ns: &Netns, dev: &str, name: &str) -> PcapCapture {
        let path =
            std::env::temp_dir().join(format!("{name}-{}-{}.pcap", ns.name(), std::process::id()));
        let _ = std::fs::remove_file(&path);
        let p = path.to_string_lossy().into_owned();
        let mut bg = ns
            .spawn(&[
                "tcpdump",
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-i",
                dev,
                "-w",
                &p,
            ])
            .expect("tcpdump");
        cmd::wait_for("tcpdump to listen", Duration::from_secs(10), || {
            (!bg.running() || bg.output().1.contains("listening on")).then_some(())
        })
        .expect("tcpdump listens");
        PcapCapture { bg, path }
    }

    /// Stops and returns every packet (Ethernet frames).
    pub fn stop(mut self) -> Vec<Vec<u8>> {
        std::thread::sleep(Duration::from_millis(300));
        self.bg.stop();
        let data = std::fs::read(&self.path).unwrap_or_default();
        let _ = std::fs::remove_file(&self.path);
        let mut out = Vec::new();
        let mut at = 24;
        while at + 16 <= data.len() {
            let caplen =
                u32::from_le_bytes([data[at + 8], data[at + 9], data[at + 10], data[at + 11]])
                    as usize;
            at += 16;
            if at + caplen > data.len() {
                break;
            }
            out.push(data[at..at + caplen].to_vec());
            at += caplen;
        }
        out
    }
}

/// (source, destination port, UDP payload) of an IPv4 UDP frame.
pub fn udp(frame: &[u8]) -> Option<(Ipv4Addr, u16, &[u8])> {
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
        return None;
    }
    let ihl = (frame[14] & 0x0f) as usize * 4;
    let src = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    let u = 14 + ihl;
    let dport = u16::from_be_bytes([*frame.get(u + 2)?, *frame.get(u + 3)?]);
    Some((src, dport, frame.get(u + 8..)?))
}

/// One packet seen by a [`Capture`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The rest of tcpdump's line after the addresses.
    pub what: String,
    /// The encapsulated packet as tcpdump shows it (`-T vxlan`), else empty.
    pub inner: String,
}

/// `tcpdump -n -l` running in a namespace; stop it to get the packets.
///
/// For VXLAN on the underlay use [`Capture::vxlan`]: it decodes UDP 6784 as VXLAN, so each
/// packet also tells what it carries ([`Packet::inner`]).
pub struct Capture {
    bg: Background,
    ns: String,
}

impl Capture {
    /// Starts tcpdump on `dev` in `ns` with the pcap `filter`; returns once it listens.
    pub fn start(ns: &Netns, dev: &str, filter: &str) -> Result<Capture> {
        Self::start_with(ns, dev, &[], filter)
    }

    /// VXLAN on UDP 6784 on `dev`, decoded.
    pub fn vxlan(ns: &Netns, dev: &str) -> Result<Capture> {
        Self::start_with(ns, dev, &["-T", "vxlan"], "udp port 6784")
    }

    fn start_with(ns: &Netns, dev: &str, opts: &[&str], filter: &str) -> Result<Capture> {
        let mut argv: Vec<String> = ["tcpdump", "-n", "-l", "-U", "-i", dev]
            .iter()
            .map(|s| s.to_string())
            .collect();
        argv.extend(opts.iter().map(|s| s.to_string()));
        argv.extend(filter.split_whitespace().map(str::to_string));
        let mut bg = ns.spawn(&argv)?;
        cmd::wait_for(
            &format!("tcpdump to listen on {dev} in {}", ns.name()),
            Duration::from_secs(10),
            || {
                if !bg.running() {
                    return Some(());
                }
                bg.output().1.contains("listening on").then_some(())
            },
        )?;
        if !bg.running() {
            let o = bg.stop();
            return Err(Error::Other(format!(
                "tcpdump in {} exited: {}",
                ns.name(),
                o.stderr.trim()
            )));
        }
        Ok(Capture {
            bg,
            ns: ns.name().to_string(),
        })
    }

    /// Stops tcpdump (after a moment for the last packets) and parses what it printed.
    pub fn stop(mut self) -> Vec<Packet> {
        std::thread::sleep(Duration::from_millis(300));
        let out = self.bg.stop();
        parse_tcpdump(&out.stdout)
    }

    pub fn netns(&self) -> &str {
        &self.ns
    }
}

/// Parses `tcpdump -n` lines: `12:00:00.000 IP 1.2.3.4.5 > 6.7.8.9.10: rest` (the port, if
/// any, is dropped). A line without a timestamp (`-T vxlan`: the encapsulated packet) goes
/// to the packet before it as its `inner`.
pub fn parse_tcpdump(text: &str) -> Vec<Packet> {
    let addr = |s: &str| -> Option<Ipv4Addr> {
        let s = s.trim_end_matches(':');
        let parts: Vec<&str> = s.split('.').collect();
        let ip = if parts.len() >= 4 {
            parts[..4].join(".")
        } else {
            s.to_string()
        };
        ip.parse().ok()
    };
    let mut out: Vec<Packet> = Vec::new();
    for l in text.lines() {
        let stamped = l.chars().next().is_some_and(|c| c.is_ascii_digit());
        if !stamped {
            if let Some(p) = out.last_mut() {
                if p.inner.is_empty() && !l.trim().is_empty() {
                    p.inner = l.trim().to_string();
                }
            }
            continue;
        }
        let Some(rest) = l.split_once(" IP ").map(|x| x.1) else {
            continue;
        };
        let Some((from, rest)) = rest.split_once(" > ") else {
            continue;
        };
        let (to, what) = rest.split_once(": ").unwrap_or((rest, ""));
        if let (Some(src), Some(dst)) = (addr(from), addr(to)) {
            out.push(Packet {
                src,
                dst,
                what: what.to_string(),
                inner: String::new(),
            });
        }
    }
    out
}

/// A peer name as the report writes it (a number, a numeric string, or `aa:bb:..`) in the
/// `aa:bb:cc:dd:ee:ff` form.
pub fn name_of(v: &Value) -> Option<String> {
    let n = match v {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) if s.contains(':') => return Some(s.to_ascii_lowercase()),
        Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    let b = n.to_be_bytes();
    Some(format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[2], b[3], b[4], b[5], b[6], b[7]
    ))
}

fn key_name(k: &str) -> Option<String> {
    name_of(&Value::String(k.to_string()))
}

/// A router's `/report`, parsed.
#[derive(Debug, Clone)]
pub struct Report(pub Value);

impl Report {
    /// GET /report from `router`.
    pub fn of(router: &Router) -> Result<Report> {
        Self::parse(&router.http_get("/report")?)
    }

    pub fn parse(text: &str) -> Result<Report> {
        serde_json::from_str(text).map(Report).map_err(|e| {
            Error::Other(format!(
                "report is not JSON ({e}): {}",
                text.chars().take(200).collect::<String>()
            ))
        })
    }

    /// Names of every peer in `Router.Peers` (ourselves included).
    pub fn peers(&self) -> BTreeSet<String> {
        self.0["Router"]["Peers"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| name_of(&p["name"])).collect())
            .unwrap_or_default()
    }

    /// `Router.Routes.unicast`: destination → next hop.
    pub fn unicast(&self) -> Vec<(String, String)> {
        self.0["Router"]["Routes"]["unicast"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((key_name(k)?, name_of(v)?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The next hop towards `dst`, if there is a route.
    pub fn next_hop(&self, dst: &str) -> Option<String> {
        self.unicast()
            .into_iter()
            .find(|(d, _)| d == dst)
            .map(|(_, h)| h)
    }

    /// `Router.Routes.broadcast`: source → the neighbours this router passes it on to.
    pub fn broadcast(&self) -> Vec<(String, Vec<String>)> {
        self.0["Router"]["Routes"]["broadcast"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let to = v.as_array()?.iter().filter_map(name_of).collect();
                        Some((key_name(k)?, to))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `Router.Routes` as compact JSON, for messages.
    pub fn routes_text(&self) -> String {
        self.0["Router"]["Routes"].to_string()
    }
}

/// `GET /status/mesh`: the peers a router knows and those it routes to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MeshSummary {
    pub peers: BTreeSet<String>,
    pub routed: BTreeSet<String>,
    /// When the router's peers or routes last changed, by its own clock (`ChangedAt`).
    pub changed_at: Option<std::time::SystemTime>,
}

impl MeshSummary {
    pub fn of(router: &Router) -> Result<MeshSummary> {
        let text = router.http_get("/status/mesh")?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Other(format!("/status/mesh is not JSON ({e}): {text}")))?;
        let names = |key: &str| -> BTreeSet<String> {
            v[key]
                .as_array()
                .map(|a| a.iter().filter_map(name_of).collect())
                .unwrap_or_default()
        };
        Ok(MeshSummary {
            peers: names("Peers"),
            routed: names("Routed"),
            changed_at: v["ChangedAt"]
                .as_u64()
                .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms)),
        })
    }

    /// True once it knows exactly the peers `want` and has a route to each of them but `me`.
    pub fn agrees(&self, me: &str, want: &BTreeSet<String>) -> bool {
        self.peers == *want
            && want
                .iter()
                .filter(|p| p.as_str() != me)
                .all(|p| self.routed.contains(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcpdump_lines() {
        let t = "tcpdump: verbose output suppressed\n\
                 09:00:00.000001 IP 198.18.0.1.40000 > 198.18.0.2.6784: UDP, length 106\n\
                 09:00:00.000002 IP 10.2.1.11 > 10.2.1.255: ICMP echo request, id 1, seq 1, length 64\n";
        let p = parse_tcpdump(t);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].src, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(p[0].dst, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(p[1].dst, Ipv4Addr::new(10, 2, 1, 255));
        assert!(p[1].what.starts_with("ICMP echo request"));

        let t =
            "09:00:00.1 IP 198.18.0.1.40000 > 198.18.0.2.6784: VXLAN, flags [I] (0x08), vni 1\n\
                 IP 10.2.1.1 > 10.2.1.3: ICMP echo request, id 7, seq 1, length 64\n\
                 09:00:00.2 IP 198.18.0.2.40000 > 198.18.0.3.6784: VXLAN, flags [I] (0x08), vni 2\n\
                 ARP, Request who-has 10.2.1.3 tell 10.2.1.1, length 28\n";
        let p = parse_tcpdump(t);
        assert_eq!(p.len(), 2);
        assert!(p[0]
            .inner
            .starts_with("IP 10.2.1.1 > 10.2.1.3: ICMP echo request"));
        assert!(p[1].inner.starts_with("ARP"));
    }

    #[test]
    fn reads_peer_names_in_any_form() {
        let mac = "02:5a:1c:e3:00:01";
        let n = 0x025a_1ce3_0001_u64;
        assert_eq!(name_of(&Value::from(n)).as_deref(), Some(mac));
        assert_eq!(name_of(&Value::from(n.to_string())).as_deref(), Some(mac));
        assert_eq!(
            name_of(&Value::from(mac.to_uppercase())).as_deref(),
            Some(mac)
        );
        let r = Report::parse(&format!(
            r#"{{"Router":{{"Peers":[{{"name":{n}}}],"Routes":{{"unicast":{{"{n}":"{mac}"}},"broadcast":{{"{n}":[{n}]}}}}}}}}"#
        ))
        .unwrap();
        assert_eq!(
            r.peers().into_iter().collect::<Vec<_>>(),
            vec![mac.to_string()]
        );
        assert_eq!(r.next_hop(mac).as_deref(), Some(mac));
        assert_eq!(
            r.broadcast(),
            vec![(mac.to_string(), vec![mac.to_string()])]
        );
    }
}
