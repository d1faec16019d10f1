//! Weave-style status text, from a [`MeshStatus`] snapshot (pure).

use std::fmt::Write;

use crate::router::{ConnectionInfo, MeshStatus};

/// What the summary shows besides the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonInfo {
    pub version: String,
    pub iface: String,
    pub xdp: String,
    pub container_mtu: u32,
    pub endpoints: usize,
    pub pid: u32,
}

const STATES: [&str; 6] = [
    "established",
    "pending",
    "held",
    "retrying",
    "failed",
    "connecting",
];

fn line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{label:>15}: {value}");
}

/// `weave-router status`.
pub fn summary(s: &MeshStatus, d: &DaemonInfo) -> String {
    let mut out = String::new();
    line(&mut out, "Version", &d.version);
    out.push('\n');
    line(&mut out, "Service", "router");
    line(
        &mut out,
        "Protocol",
        format!(
            "weave-router {}..{}",
            s.protocol_min_version, s.protocol_max_version
        ),
    );
    line(
        &mut out,
        "Name",
        format!("{}({})", s.local.name, s.local.nick_name),
    );
    line(
        &mut out,
        "Encryption",
        if s.encryption { "enabled" } else { "disabled" },
    );
    line(
        &mut out,
        "PeerDiscovery",
        if s.discovery { "enabled" } else { "disabled" },
    );
    line(&mut out, "Targets", s.targets.len());
    let counts: Vec<String> = STATES
        .iter()
        .map(|st| (s.count(st), st))
        .filter(|(n, _)| *n > 0)
        .map(|(n, st)| format!("{n} {st}"))
        .collect();
    if counts.is_empty() {
        line(&mut out, "Connections", 0);
    } else {
        line(
            &mut out,
            "Connections",
            format!("{} ({})", s.connections.len(), counts.join(", ")),
        );
    }
    let peers = s.mesh.peers.len();
    let all = s.mesh.peers.iter().flat_map(|p| p.connections.iter());
    let (est, pend) = all.fold((0, 0), |(e, p), c| {
        if c.established {
            (e + 1, p)
        } else {
            (e, p + 1)
        }
    });
    let with = match (est, pend) {
        (0, 0) => String::new(),
        (e, 0) => format!(" (with {e} established connections)"),
        (0, p) => format!(" (with {p} pending connections)"),
        (e, p) => format!(" (with {e} established, {p} pending connections)"),
    };
    line(&mut out, "Peers", format!("{peers}{with}"));
    if s.trusted_subnets.is_empty() {
        line(&mut out, "TrustedSubnets", "none");
    } else {
        line(&mut out, "TrustedSubnets", s.trusted_subnets.join(", "));
    }
    out.push('\n');
    line(&mut out, "Service", "datapath");
    line(
        &mut out,
        "Interface",
        format!("{} ({})", d.iface, s.local.underlay),
    );
    line(&mut out, "Listen", s.listen);
    line(&mut out, "XDP", &d.xdp);
    line(&mut out, "MTU", d.container_mtu);
    line(&mut out, "Endpoints", d.endpoints);
    out
}

/// `weave-router status`: the router and data path ([`summary`]), then IP allocation and
/// weaveDNS when they are on.
pub fn status(
    s: &MeshStatus,
    d: &DaemonInfo,
    ipam: Option<&crate::ipam::service::IpamReport>,
    dns: Option<&crate::dns::DnsInfo>,
) -> String {
    let mut out = summary(s, d);
    if let Some(i) = ipam {
        out.push('\n');
        for (k, v) in super::ipam::summary_lines(i) {
            line(&mut out, k, v);
        }
    }
    if let Some(dns) = dns {
        out.push_str(&dns_summary(dns));
    }
    out
}

/// The DNS block of `weave-router status`.
pub fn dns_summary(info: &crate::dns::DnsInfo) -> String {
    let mut out = String::new();
    out.push('\n');
    line(&mut out, "Service", "dns");
    line(&mut out, "Domain", &info.domain);
    line(&mut out, "Listen", &info.listen);
    let upstream = if info.upstream.is_empty() {
        "none".to_string()
    } else {
        info.upstream.join(", ")
    };
    line(&mut out, "Upstream", upstream);
    line(&mut out, "TTL", info.ttl);
    line(&mut out, "Entries", info.entries.len());
    out
}

/// `weave-router status dns`: one line per entry, in Weave's layout
/// (`name address container origin`).
pub fn dns_entries(info: &crate::dns::DnsInfo) -> String {
    info.entries
        .iter()
        .map(|e| {
            let name = e.hostname.trim_end_matches('.');
            format!(
                "{name:<12} {:<15} {:<12} {}\n",
                e.addr, e.container_id, e.origin
            )
        })
        .collect()
}

fn name_nick(c: &ConnectionInfo) -> String {
    c.peer
        .as_ref()
        .map(|p| format!("{}({})", p.name, p.nick_name))
        .unwrap_or_default()
}

/// One line of `weave-router status connections`, in Weave's layout.
pub fn connection_line(c: &ConnectionInfo) -> String {
    let arrow = if c.outbound { "->" } else { "<-" };
    let info = match c.state.as_str() {
        "established" | "pending" => {
            let crypto = if c.encrypted {
                "encrypted"
            } else {
                "unencrypted"
            };
            let unverified = if c.overlay == "fastdp" && !c.mtu_verified && c.state == "established"
            {
                " (unverified)"
            } else {
                ""
            };
            format!(
                "{crypto:<11} {:<6} {} mtu={}{unverified}",
                c.overlay,
                name_nick(c),
                c.mtu
            )
        }
        // `held`: the connection went, the peer's fast path still answers.
        "held" => format!("{:<6} {} {}", c.overlay, name_nick(c), c.info),
        _ => c.info.clone(),
    };
    format!("{arrow} {:<21} {:<11} {info}", c.address, c.state)
        .trim_end()
        .to_string()
}

/// `weave-router status connections`: the connections in Weave's layout, then every peer
/// reached through a neighbour (`relayed`, the path from here, the peer, `via` the neighbour).
pub fn connections(s: &MeshStatus) -> String {
    let mut out: String = s
        .connections
        .iter()
        .map(|c| connection_line(c) + "\n")
        .collect();
    for r in &s.relayed {
        let crypto = if s.encryption && r.overlay == "sleeve" {
            "encrypted"
        } else {
            "unencrypted"
        };
        let _ = writeln!(
            out,
            "   {:<21} {:<11} {crypto:<11} {:<6} {} via {}",
            "", "relayed", r.overlay, r.peer, r.via
        );
    }
    out
}

/// `weave-router status peers`: every peer known and its connections, as gossip tells them.
pub fn peers(s: &MeshStatus) -> String {
    let nick = |name: &crate::mesh::peer_name::PeerName| {
        let n = s
            .mesh
            .peers
            .iter()
            .find(|p| p.name == *name)
            .map(|p| p.nickname.as_str())
            .unwrap_or("");
        format!("{name}({n})")
    };
    let mut out = String::new();
    for p in &s.mesh.peers {
        let _ = writeln!(out, "{}", nick(&p.name));
        for c in &p.connections {
            let arrow = if c.outbound { "->" } else { "<-" };
            let state = if c.established {
                "established"
            } else {
                "pending"
            };
            let _ = writeln!(
                out,
                "   {arrow} {:<21} {:<37} {state}",
                c.address.to_string(),
                nick(&c.remote)
            );
        }
    }
    out
}

/// `weave-router status targets`.
pub fn targets(s: &MeshStatus) -> String {
    s.targets.iter().map(|t| format!("{t}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::PeerInfo;

    fn peer(n: u8, nick: &str) -> PeerInfo {
        PeerInfo {
            name: format!("0a:00:00:00:00:{n:02x}"),
            nick_name: nick.into(),
            short_id: n as u16,
            uid: 1,
            underlay: [10, 0, 0, n].into(),
            data_port: 6784,
        }
    }

    fn conn(
        outbound: bool,
        address: &str,
        state: &str,
        info: &str,
        peer: Option<PeerInfo>,
    ) -> ConnectionInfo {
        ConnectionInfo {
            outbound,
            address: address.into(),
            state: state.into(),
            info: info.into(),
            encrypted: address.ends_with(":6783"),
            overlay: "fastdp".into(),
            mtu: 1450,
            mtu_verified: true,
            peer,
        }
    }

    fn status() -> MeshStatus {
        MeshStatus {
            protocol_min_version: 1,
            protocol_max_version: 1,
            local: peer(1, "host1"),
            listen: "10.0.0.1:6783".parse().unwrap(),
            targets: vec![
                "10.0.0.2:6783".into(),
                "10.0.0.4:6783".into(),
                "10.0.0.5:6783".into(),
            ],
            connections: vec![
                conn(
                    true,
                    "10.0.0.2:6783",
                    "established",
                    "",
                    Some(peer(2, "host2")),
                ),
                conn(
                    false,
                    "10.0.0.3:41234",
                    "pending",
                    "",
                    Some(peer(3, "host3")),
                ),
                conn(
                    true,
                    "10.0.0.4:6783",
                    "retrying",
                    "Connection refused (os error 111)",
                    None,
                ),
                conn(
                    true,
                    "10.0.0.5:6783",
                    "failed",
                    "connect timed out after 5s, retry: 2026-11-28 09:00:00",
                    None,
                ),
            ],
            mesh: mesh(),
            discovery: false,
            encryption: false,
            overlay_switches: Default::default(),
            terminations: 0,
            frag_needed: Default::default(),
            relayed: Vec::new(),
            trusted_subnets: Vec::new(),
        }
    }

    /// Gossip as host1 would know it: host1 with host2 (established) and host3 (pending),
    /// host2 with host1.
    fn mesh() -> crate::router::gossip::MeshReport {
        use crate::mesh::peer_name::{PeerName, ShortId};
        use crate::mesh::topology::{ConnectionSummary, PeerInfo as Record};
        let name = |n: u8| PeerName::from_bytes([0x0a, 0, 0, 0, 0, n]);
        let link = |n: u8, address: &str, outbound: bool, established: bool| ConnectionSummary {
            remote: name(n),
            address: address.parse().unwrap(),
            outbound,
            established,
        };
        let mut h1 = Record::new(name(1), "host1".into(), 1, ShortId::new(1).unwrap());
        h1.connections = vec![
            link(2, "10.0.0.2:6783", true, true),
            link(3, "10.0.0.3:41234", false, false),
        ];
        let mut h2 = Record::new(name(2), "host2".into(), 2, ShortId::new(2).unwrap());
        h2.connections = vec![link(1, "10.0.0.1:45678", false, true)];
        let h3 = Record::new(name(3), "host3".into(), 3, ShortId::new(3).unwrap());
        crate::router::gossip::MeshReport {
            peers: vec![h1, h2, h3],
            routes: Default::default(),
        }
    }

    fn daemon() -> DaemonInfo {
        DaemonInfo {
            version: "0.1.0".into(),
            iface: "eth0".into(),
            xdp: "off".into(),
            container_mtu: 1450,
            endpoints: 2,
            pid: 7,
        }
    }

    #[test]
    fn summary_reads_like_weave() {
        let text = summary(&status(), &daemon());
        let expected = "        Version: 0.1.0

        Service: router
       Protocol: weave-router 1..1
           Name: 0a:00:00:00:00:01(host1)
     Encryption: disabled
  PeerDiscovery: disabled
        Targets: 3
    Connections: 4 (1 established, 1 pending, 1 retrying, 1 failed)
          Peers: 3 (with 2 established, 1 pending connections)
 TrustedSubnets: none

        Service: datapath
      Interface: eth0 (10.0.0.1)
         Listen: 10.0.0.1:6783
            XDP: off
            MTU: 1450
      Endpoints: 2
";
        assert_eq!(text, expected);
    }

    #[test]
    fn summary_of_a_lonely_router() {
        let mut s = status();
        s.connections.clear();
        s.targets.clear();
        s.mesh.peers.truncate(1);
        s.mesh.peers[0].connections.clear();
        let text = summary(&s, &daemon());
        assert!(text.contains("    Connections: 0\n"), "{text}");
        assert!(text.contains("          Peers: 1\n"), "{text}");
    }

    #[test]
    fn the_trusted_subnets_are_listed() {
        let mut s = status();
        s.trusted_subnets = vec!["10.0.0.0/8".into(), "192.168.1.0/24".into()];
        let text = summary(&s, &daemon());
        assert!(
            text.contains(" TrustedSubnets: 10.0.0.0/8, 192.168.1.0/24\n"),
            "{text}"
        );
    }

    #[test]
    fn connection_lines_read_like_weave() {
        assert_eq!(
            connections(&status()),
            "-> 10.0.0.2:6783         established encrypted   fastdp 0a:00:00:00:00:02(host2) mtu=1450
<- 10.0.0.3:41234        pending     unencrypted fastdp 0a:00:00:00:00:03(host3) mtu=1450
-> 10.0.0.4:6783         retrying    Connection refused (os error 111)
-> 10.0.0.5:6783         failed      connect timed out after 5s, retry: 2026-11-28 09:00:00
"
        );
    }

    #[test]
    fn peers_reached_through_a_neighbour_follow_the_connections() {
        let mut s = status();
        s.encryption = true;
        s.connections.truncate(1);
        s.relayed = vec![crate::router::RelayedPeer {
            peer: "0a:00:00:00:00:07(host7)".into(),
            via: "0a:00:00:00:00:02(host2)".into(),
            overlay: "sleeve".into(),
        }];
        assert_eq!(
            connections(&s),
            "-> 10.0.0.2:6783         established encrypted   fastdp 0a:00:00:00:00:02(host2) mtu=1450
                         relayed     encrypted   sleeve 0a:00:00:00:00:07(host7) via 0a:00:00:00:00:02(host2)
"
        );
    }

    #[test]
    fn peers_list_us_and_each_connected_peer() {
        let text = peers(&status());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "0a:00:00:00:00:01(host1)");
        assert!(
            lines[1].starts_with("   -> 10.0.0.2:6783 ") && lines[1].ends_with(" established"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("   <- 10.0.0.3:41234 ") && lines[2].ends_with(" pending"),
            "{text}"
        );
        assert_eq!(lines[3], "0a:00:00:00:00:02(host2)");
        assert!(lines[4].contains("0a:00:00:00:00:01(host1)"), "{text}");
        assert_eq!(lines[5], "0a:00:00:00:00:03(host3)");
        assert_eq!(lines.len(), 6, "{text}");
    }
}

/// Every field of `status` and `status connections` for one router with something in each
/// (`api/sample.rs`): encryption, discovery, trusted subnets, IPAM, DNS, both data paths.
#[cfg(test)]
mod golden {
    use super::*;
    use crate::api::sample;

    #[test]
    fn status_shows_every_field() {
        let (ipam, dns) = (sample::ipam(), sample::dns());
        let text = status(
            &sample::status(),
            &sample::daemon(),
            Some(&ipam),
            Some(&dns),
        );
        let expected = "        Version: 0.1.0

        Service: router
       Protocol: weave-router 1..5
           Name: 0a:00:00:00:00:01(host1)
     Encryption: enabled
  PeerDiscovery: enabled
        Targets: 3
    Connections: 3 (2 established, 1 retrying)
          Peers: 4 (with 8 established connections)
 TrustedSubnets: 10.0.0.0/24, 192.168.7.0/24

        Service: datapath
      Interface: eth0 (10.0.0.1)
         Listen: 10.0.0.1:6783
            XDP: off
            MTU: 1376
      Endpoints: 2

        Service: ipam
         Status: ready
          Range: 10.32.0.0/12
  DefaultSubnet: 10.32.0.0/12

        Service: dns
         Domain: weave.local.
         Listen: 169.254.53.53:53
       Upstream: 10.0.0.254:53
            TTL: 1
        Entries: 4
";
        assert_eq!(text, expected);
    }

    #[test]
    fn connections_show_every_field() {
        assert_eq!(
            connections(&sample::status()),
            "-> 10.0.0.2:6783         established encrypted   fastdp 0a:00:00:00:00:02(host2) mtu=1410
-> 10.0.0.3:6783         established encrypted   sleeve 0a:00:00:00:00:03(host3) mtu=1376
-> 10.0.0.9:6783         retrying    Connection refused (os error 111)
                         relayed     unencrypted fastdp 0a:00:00:00:00:05(host5) via 0a:00:00:00:00:02(host2)
"
        );
    }

    #[test]
    fn without_ipam_and_dns_their_blocks_are_left_out() {
        let text = status(&sample::status(), &sample::daemon(), None, None);
        assert!(
            !text.contains("ipam") && !text.contains("Service: dns"),
            "{text}"
        );
        assert!(text.ends_with("      Endpoints: 2\n"), "{text}");
    }
}
