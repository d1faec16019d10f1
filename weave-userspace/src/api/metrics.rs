//! `/metrics` in the Prometheus text format, from a mesh snapshot and the data-path counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::datapath::DatapathCounters;
use crate::router::MeshStatus;

/// The content type of [`render`]'s output (the classic Prometheus text format).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverlayLabels {
    overlay: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwitchLabels {
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrafficLabels {
    direction: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    short_id: String,
    direction: String,
}

/// Renders every metric; the data-path families are left out when its counters could not be read.
pub fn render(status: &MeshStatus, counters: Option<&DatapathCounters>) -> String {
    let mut registry = Registry::default();

    let connections = Family::<StateLabels, Gauge>::default();
    registry.register(
        "weave_connections",
        "Connections by state",
        connections.clone(),
    );
    for state in ["established", "pending", "connecting", "retrying", "failed"] {
        connections
            .get_or_create(&StateLabels {
                state: state.into(),
            })
            .set(status.count(state) as i64);
    }

    let overlays = Family::<OverlayLabels, Gauge>::default();
    registry.register(
        "weave_connection_overlays",
        "Established connections by the data path carrying the peer's frames",
        overlays.clone(),
    );
    for overlay in ["fastdp", "sleeve"] {
        let n = status
            .connections
            .iter()
            .filter(|c| c.state == "established" && c.overlay == overlay)
            .count();
        overlays
            .get_or_create(&OverlayLabels {
                overlay: overlay.into(),
            })
            .set(n as i64);
    }
    let switches = Family::<SwitchLabels, Counter>::default();
    registry.register(
        "weave_overlay_switches",
        "Connections moved to the sleeve (their fast path blocked) and back to fastdp",
        switches.clone(),
    );
    for (to, n) in [
        ("sleeve", status.overlay_switches.to_sleeve),
        ("fastdp", status.overlay_switches.to_fastdp),
    ] {
        switches
            .get_or_create(&SwitchLabels { to: to.into() })
            .inc_by(n);
    }

    let frag_needed = Family::<VerdictLabels, Counter>::default();
    registry.register(
        "weave_icmp_frag_needed",
        "ICMP fragmentation-needed messages from the underlay: honoured (about our own VXLAN) or ignored",
        frag_needed.clone(),
    );
    for (verdict, n) in [
        ("honoured", status.frag_needed.honoured),
        ("ignored", status.frag_needed.ignored),
    ] {
        frag_needed
            .get_or_create(&VerdictLabels {
                verdict: verdict.into(),
            })
            .inc_by(n);
    }

    let refused = Family::<ReasonLabels, Counter>::default();
    registry.register(
        "weave_gossip_refused",
        "Gossip refused because of who sent it (a record a peer may not speak for, a unicast off its route or out of hops, a made-up space requester, a short-ID claim held off) or malformed",
        refused.clone(),
    );
    for (reason, n) in crate::mesh::gossip_refusal::REFUSED.snapshot() {
        refused
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc_by(n);
    }

    let peers = Gauge::<i64>::default();
    peers.set(
        1 + status
            .connections
            .iter()
            .filter(|c| c.peer.is_some())
            .count() as i64,
    );
    registry.register("weave_peers", "Peers known, this one included", peers);

    let frames = Family::<TrafficLabels, Counter>::default();
    let bytes = Family::<TrafficLabels, Counter>::default();
    registry.register(
        "weave_control_frames",
        "Control-connection frames by direction and message kind",
        frames.clone(),
    );
    registry.register_with_unit(
        "weave_control",
        "Control-connection bytes (frames with their headers) by direction and message kind",
        Unit::Bytes,
        bytes.clone(),
    );
    for (direction, traffic) in [
        ("sent", &crate::mesh::protocol::SENT),
        ("received", &crate::mesh::protocol::RECEIVED),
    ] {
        for (kind, n, b) in traffic.snapshot() {
            let labels = TrafficLabels {
                direction: direction.into(),
                kind: kind.into(),
            };
            frames.get_or_create(&labels).inc_by(n);
            bytes.get_or_create(&labels).inc_by(b);
        }
    }

    let refusals = Family::<ReasonLabels, Counter>::default();
    registry.register(
        "weave_control_refusals",
        "Control connections refused or closed for their transport, by reason (handshake_limit, handshake_failed, oversize_frame, slow_peer, write_stalled)",
        refusals.clone(),
    );
    for (reason, n) in crate::mesh::control_refusal::COUNTERS.snapshot() {
        refusals
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc_by(n);
    }

    if let Some(c) = counters {
        let packets = Family::<ReasonLabels, Counter>::default();
        let bytes = Family::<ReasonLabels, Counter>::default();
        let drops = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "weave_datapath_packets",
            "Packets handled by the data path, by reason",
            packets.clone(),
        );
        registry.register_with_unit(
            "weave_datapath",
            "Bytes handled by the data path, by reason",
            Unit::Bytes,
            bytes.clone(),
        );
        registry.register(
            "weave_datapath_drops",
            "Packets dropped by the data path, by reason",
            drops.clone(),
        );
        for (reason, p, b) in &c.by_reason {
            let labels = ReasonLabels {
                reason: reason.name().into(),
            };
            packets.get_or_create(&labels).inc_by(*p);
            bytes.get_or_create(&labels).inc_by(*b);
            if reason.is_drop() {
                drops.get_or_create(&labels).inc_by(*p);
            }
        }

        let peer_packets = Family::<PeerLabels, Counter>::default();
        let peer_bytes = Family::<PeerLabels, Counter>::default();
        registry.register(
            "weave_peer_packets",
            "Packets to (tx) and from (rx) each peer",
            peer_packets.clone(),
        );
        registry.register_with_unit(
            "weave_peer",
            "Bytes to (tx) and from (rx) each peer",
            Unit::Bytes,
            peer_bytes.clone(),
        );
        for t in &c.by_peer {
            let name = status
                .connections
                .iter()
                .filter_map(|c| c.peer.as_ref())
                .find(|p| p.short_id == t.short_id)
                .map(|p| format!("{}({})", p.name, p.nick_name))
                .unwrap_or_default();
            let labels = |direction: &str| PeerLabels {
                peer: name.clone(),
                short_id: format!("{:03x}", t.short_id),
                direction: direction.into(),
            };
            peer_packets
                .get_or_create(&labels("tx"))
                .inc_by(t.tx_packets);
            peer_packets
                .get_or_create(&labels("rx"))
                .inc_by(t.rx_packets);
            peer_bytes.get_or_create(&labels("tx")).inc_by(t.tx_bytes);
            peer_bytes.get_or_create(&labels("rx")).inc_by(t.rx_bytes);
        }
    }

    if status.connections.iter().any(|c| c.overlay == "sleeve") || sleeve_active() {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &crate::sleeve::COUNTERS;
        let datagrams = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "weave_sleeve_datagrams",
            "Datagrams sent (tx) and received (rx) by the sleeve data path, on UDP 6783",
            datagrams.clone(),
        );
        let bytes = Family::<DirectionLabels, Counter>::default();
        registry.register_with_unit(
            "weave_sleeve",
            "Bytes sent (tx) and received (rx) by the sleeve data path",
            Unit::Bytes,
            bytes.clone(),
        );
        let dir = |d: &str| DirectionLabels {
            direction: d.into(),
        };
        datagrams
            .get_or_create(&dir("tx"))
            .inc_by(s.tx_packets.load(Relaxed));
        datagrams
            .get_or_create(&dir("rx"))
            .inc_by(s.rx_packets.load(Relaxed));
        bytes
            .get_or_create(&dir("tx"))
            .inc_by(s.tx_bytes.load(Relaxed));
        bytes
            .get_or_create(&dir("rx"))
            .inc_by(s.rx_bytes.load(Relaxed));
        let drops = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "weave_sleeve_drops",
            "Sleeve datagrams dropped, by reason (forged, replayed, plaintext, malformed, unknown_peer, unpaired, no_route, loop, bad_vnet_header)",
            drops.clone(),
        );
        for (reason, n) in s.drops() {
            drops
                .get_or_create(&ReasonLabels {
                    reason: reason.into(),
                })
                .inc_by(n);
        }
        let not_learned = Counter::<u64>::default();
        not_learned.inc_by(s.macs_not_learned.load(Relaxed));
        registry.register(
            "weave_sleeve_macs_not_learned",
            "Source MACs the sleeve did not learn because its table was full",
            not_learned,
        );
    }

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    openmetrics_to_prometheus(&out)
}

/// Whether this process has a sleeve that moved anything.
fn sleeve_active() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &crate::sleeve::COUNTERS;
    s.tx_packets.load(Relaxed) + s.rx_packets.load(Relaxed) > 0
}

/// Turns OpenMetrics text into the classic Prometheus text format, which every scraper and
/// `promtool check metrics` read: a counter family is named with its `_total` suffix, and the
/// `# UNIT` and `# EOF` lines go.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for l in text.lines() {
        if l.starts_with("# UNIT ") || l == "# EOF" {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = l.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(l));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::PeerTraffic;
    use crate::router::{ConnectionInfo, PeerInfo};
    use weave_ebpf_common::counters::Reason;

    pub(crate) fn sample() -> (MeshStatus, DatapathCounters) {
        let peer = PeerInfo {
            name: "0a:00:00:00:00:02".into(),
            nick_name: "host2".into(),
            short_id: 2,
            uid: 1,
            underlay: [10, 0, 0, 2].into(),
            data_port: 6784,
        };
        let status = MeshStatus {
            protocol_min_version: 1,
            protocol_max_version: 1,
            local: PeerInfo {
                name: "0a:00:00:00:00:01".into(),
                short_id: 1,
                ..peer.clone()
            },
            listen: "10.0.0.1:6783".parse().unwrap(),
            targets: vec![],
            connections: vec![ConnectionInfo {
                outbound: true,
                address: "10.0.0.2:6783".parse().unwrap(),
                state: "established".into(),
                info: String::new(),
                encrypted: false,
                overlay: "fastdp".into(),
                mtu: 1450,
                mtu_verified: true,
                peer: Some(peer),
            }],
            mesh: Default::default(),
            discovery: false,
            encryption: false,
            overlay_switches: crate::router::OverlaySwitches {
                to_sleeve: 3,
                to_fastdp: 2,
            },
            frag_needed: crate::router::FragNeededCounts {
                honoured: 1,
                ignored: 4,
            },
            relayed: Vec::new(),
            trusted_subnets: Vec::new(),
        };
        let counters = DatapathCounters {
            by_reason: Reason::ALL
                .iter()
                .enumerate()
                .map(|(i, r)| (*r, i as u64, 100 * i as u64))
                .collect(),
            by_peer: vec![PeerTraffic {
                short_id: 2,
                tx_packets: 5,
                tx_bytes: 500,
                rx_packets: 6,
                rx_bytes: 600,
                ..Default::default()
            }],
        };
        (status, counters)
    }

    #[test]
    fn metrics_carry_connections_drops_and_peer_traffic() {
        let (status, counters) = sample();
        crate::mesh::gossip_refusal::REFUSED.count(crate::mesh::gossip_refusal::Refusal::HopLimit);
        let text = render(&status, Some(&counters));
        assert!(
            text.lines().any(|l| l
                .starts_with("weave_gossip_refused_total{reason=\"hop_limit\"} ")
                && !l.ends_with(" 0")),
            "{text}"
        );
        assert!(text.contains("weave_gossip_refused_total{reason=\"not_along_route\"}"));
        for want in [
            "weave_connections{state=\"established\"} 1",
            "weave_connections{state=\"failed\"} 0",
            "weave_peers 2",
            "weave_connection_overlays{overlay=\"fastdp\"} 1",
            "weave_connection_overlays{overlay=\"sleeve\"} 0",
            "weave_overlay_switches_total{to=\"sleeve\"} 3",
            "weave_overlay_switches_total{to=\"fastdp\"} 2",
            "weave_icmp_frag_needed_total{verdict=\"honoured\"} 1",
            "weave_icmp_frag_needed_total{verdict=\"ignored\"} 4",
            "weave_datapath_drops_total{reason=\"rx_drop_spoofed_source\"} 8",
            "weave_datapath_packets_total{reason=\"tx_encapsulated\"} 0",
            "weave_datapath_bytes_total{reason=\"rx_delivered\"} 500",
            "weave_peer_packets_total{peer=\"0a:00:00:00:00:02(host2)\",short_id=\"002\",direction=\"rx\"} 6",
            "weave_peer_bytes_total{peer=\"0a:00:00:00:00:02(host2)\",short_id=\"002\",direction=\"tx\"} 500",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        assert!(!text.contains("weave_datapath_drops_total{reason=\"rx_delivered\"}"));
    }

    #[test]
    fn counter_families_are_named_with_their_suffix() {
        let om = "# HELP a_bytes A.\n# TYPE a_bytes counter\n# UNIT a_bytes bytes\na_bytes_total 1\n# HELP g G.\n# TYPE g gauge\ng 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(om),
            "# HELP a_bytes_total A.\n# TYPE a_bytes_total counter\na_bytes_total 1\n# HELP g G.\n# TYPE g gauge\ng 2\n"
        );
    }

    #[test]
    fn without_counters_the_mesh_metrics_remain() {
        let (status, _) = sample();
        let text = render(&status, None);
        assert!(text.contains("weave_connections{state=\"established\"} 1"));
        assert!(!text.contains("weave_datapath"));
    }

    /// `promtool check metrics` accepts the output (skipped where promtool is missing).
    #[test]
    fn promtool_accepts_the_output() {
        use std::io::Write;
        let (status, counters) = sample();
        let text = render(&status, Some(&counters));
        let child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("promtool not found; skipped");
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
