//! `/metrics` in the Prometheus text format (0.0.4, prometheus-client's own encoder), pure:
//! [`render`] reads a [`MetricsInput`] snapshot and does no I/O.
//!
//! Two groups of families:
//! - Weave 2.8.1's, with its names, labels and meanings ([`weave_compatible`]), so
//!   dashboards and alerts written for Weave Net work unchanged;
//! - ours, for what Weave did not count: the mesh ([`mesh`]), the control connections
//!   ([`control`]), the eBPF data path by reason and per peer ([`datapath`]), the sleeve
//!   ([`sleeve`]) and the build ([`build_info`]).
//!
//! Label names mean one thing everywhere: `direction` is `sent` or `received`, `reason` a
//! drop or delivery reason, `peer` a peer name (`0a:00:…`), `nickname` its nickname.
//! A new family goes into the section it belongs to (or a new section called from
//! [`render`]); the helpers register it and hand back the family to fill.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::datapath::DatapathCounters;
use crate::dns::DnsInfo;
use crate::ipam::service::IpamReport;
use crate::router::MeshStatus;

/// The content type of [`render`]'s output (the classic Prometheus text format).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Label names and values of one series.
type Labels = Vec<(&'static str, String)>;

/// Connection states as Weave names them, in its order, and `held` (a peer whose
/// connection went, kept in the data path while its fast path answers).
const CONNECTION_STATES: [&str; 6] = [
    "established",
    "pending",
    "retrying",
    "failed",
    "connecting",
    "held",
];

/// What `/metrics` is made of: snapshots taken by the handler.
#[derive(Clone, Debug)]
pub struct MetricsInput<'a> {
    pub status: &'a MeshStatus,
    /// The eBPF data path's counters; `None` when they could not be read.
    pub counters: Option<&'a DatapathCounters>,
    /// IP allocation, when on.
    pub ipam: Option<&'a IpamReport>,
    /// weaveDNS, when on.
    pub dns: Option<&'a DnsInfo>,
    /// Control-connection traffic: (message kind, frames, bytes) sent and received.
    pub control: ControlTraffic,
    /// The sleeve's counters, when it carries or carried anything.
    pub sleeve: Option<SleeveTraffic>,
}

/// Control-connection traffic by message kind: (kind, frames, bytes); and what the control
/// plane refused, by reason: (reason, count).
#[derive(Clone, Debug, Default)]
pub struct ControlTraffic {
    pub sent: Vec<(&'static str, u64, u64)>,
    pub received: Vec<(&'static str, u64, u64)>,
    /// Connections refused or closed for their transport (`mesh::control_refusal`).
    pub refusals: Vec<(&'static str, u64)>,
    /// Gossip refused because of who sent it, or malformed (`mesh::gossip_refusal`).
    pub gossip_refused: Vec<(&'static str, u64)>,
}

impl ControlTraffic {
    /// This process's counts.
    pub fn now() -> Self {
        Self {
            sent: crate::mesh::protocol::SENT.snapshot(),
            received: crate::mesh::protocol::RECEIVED.snapshot(),
            refusals: crate::mesh::control_refusal::COUNTERS.snapshot(),
            gossip_refused: crate::mesh::gossip_refusal::REFUSED.snapshot(),
        }
    }
}

/// The sleeve's datagrams, bytes and drops.
#[derive(Clone, Debug, Default)]
pub struct SleeveTraffic {
    pub sent_datagrams: u64,
    pub sent_bytes: u64,
    pub received_datagrams: u64,
    pub received_bytes: u64,
    /// (reason, datagrams) for every reason.
    pub drops: Vec<(&'static str, u64)>,
    /// Source MACs not learned because the table was full.
    pub macs_not_learned: u64,
    /// Frames sent and received inside bundles.
    pub sent_bundled_frames: u64,
    pub received_bundled_frames: u64,
    /// Frames the receive thread sent right after delivering the frames they answered.
    pub answered_at_once: u64,
}

impl SleeveTraffic {
    /// This process's sleeve counters, when a connection uses the sleeve or it moved anything.
    pub fn now(status: &MeshStatus) -> Option<Self> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &crate::sleeve::COUNTERS;
        let t = Self {
            sent_datagrams: s.tx_packets.load(Relaxed),
            sent_bytes: s.tx_bytes.load(Relaxed),
            received_datagrams: s.rx_packets.load(Relaxed),
            received_bytes: s.rx_bytes.load(Relaxed),
            drops: s.drops(),
            macs_not_learned: s.macs_not_learned.load(Relaxed),
            sent_bundled_frames: s.tx_bundled_frames.load(Relaxed),
            received_bundled_frames: s.rx_bundled_frames.load(Relaxed),
            answered_at_once: s.tx_answered_at_once.load(Relaxed),
        };
        let used = status.connections.iter().any(|c| c.overlay == "sleeve");
        (used || t.sent_datagrams + t.received_datagrams > 0).then_some(t)
    }
}

/// Renders every family; those of a part that is off or unreadable are left out.
pub fn render(input: &MetricsInput<'_>) -> String {
    let mut registry = Registry::default();
    weave_compatible(&mut registry, input);
    mesh(&mut registry, input.status);
    control(&mut registry, &input.control);
    if let Some(counters) = input.counters {
        datapath(&mut registry, input.status, counters);
    }
    if let Some(sleeve_traffic) = &input.sleeve {
        sleeve(&mut registry, sleeve_traffic);
    }
    build_info(&mut registry);
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

fn gauges(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

/// A counter family; `name` without `_total` (the encoder adds it).
fn counters(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

/// A counter family of bytes; `name` without `_bytes_total`.
fn byte_counters(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register_with_unit(name, help, Unit::Bytes, family.clone());
    family
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// Weave 2.8.1's families (`prog/weaver/metrics.go`), same names, labels and values.
fn weave_compatible(registry: &mut Registry, input: &MetricsInput<'_>) {
    let s = input.status;
    // Every state × type × encryption, zeros included, so that no query finds nothing.
    // Weave's type is the overlay of the connection (`unknown` before there is one), its
    // encryption `yes` or empty.
    let connections = gauges(
        registry,
        "weave_connections",
        "Number of peer-to-peer connections.",
    );
    for state in CONNECTION_STATES {
        for kind in ["fastdp", "sleeve", "unknown"] {
            for encryption in ["yes", ""] {
                let n = s
                    .connections
                    .iter()
                    .filter(|c| c.state == state)
                    .filter(|c| connection_type(&c.overlay) == kind)
                    .filter(|c| c.encrypted == (encryption == "yes"))
                    .count();
                connections
                    .get_or_create(&labels([
                        ("state", state),
                        ("type", kind),
                        ("encryption", encryption),
                    ]))
                    .set(n as i64);
            }
        }
    }
    counters(
        registry,
        "weave_connection_terminations",
        "Number of peer-to-peer connections terminated.",
    )
    .get_or_create(&Labels::new())
    .inc_by(s.terminations);

    if let Some(ipam) = input.ipam {
        gauges(registry, "weave_ips", "Number of IP addresses.")
            .get_or_create(&labels([("state", "local-used")]))
            .set(ipam.allocations.len() as i64);
        gauge(
            registry,
            "weave_max_ips",
            "Size of IP address space used by allocator.",
            ipam.range_num_ips,
        );
        let unreachable: Vec<_> = ipam.owners.iter().filter(|o| !o.reachable).collect();
        gauge(
            registry,
            "weave_ipam_unreachable_count",
            "Number of unreachable peers.",
            unreachable.len() as u64,
        );
        let owned: u64 = unreachable.iter().map(|o| o.size).sum();
        let percentage = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        percentage.set(if ipam.range_num_ips == 0 {
            0.0
        } else {
            owned as f64 * 100.0 / ipam.range_num_ips as f64
        });
        registry.register(
            "weave_ipam_unreachable_percentage",
            "Percentage of IP addresses owned by unreachable peers.",
            percentage,
        );
        gauge(
            registry,
            "weave_ipam_pending_allocates",
            "Number of pending allocates.",
            ipam.pending_allocates,
        );
        gauge(
            registry,
            "weave_ipam_pending_claims",
            "Number of pending claims.",
            ipam.pending_claims,
        );
    }
    if let Some(dns) = input.dns {
        let ours = dns
            .entries
            .iter()
            .filter(|e| !e.tombstone && e.origin.to_string() == s.local.name)
            .count();
        gauge(
            registry,
            "weave_dns_entries",
            "Number of DNS entries (registered by this peer, as Weave counts them).",
            ours as u64,
        );
    }
    if let Some(c) = input.counters {
        gauge(
            registry,
            "weave_flows",
            "Number of FastDP flows: MACs the kernel has learned behind peers (REMOTE_MACS), each forwarded without user space.",
            c.learned_macs,
        );
    }
}

/// Weave's connection type for an overlay name.
fn connection_type(overlay: &str) -> &str {
    match overlay {
        "fastdp" | "sleeve" => overlay,
        _ => "unknown",
    }
}

/// The mesh beyond Weave's families: peers known, switches between the data paths, ICMP.
fn mesh(registry: &mut Registry, s: &MeshStatus) {
    gauge(
        registry,
        "weave_peers",
        "Peers known through gossip, this one included",
        s.mesh.peers.len().max(1) as u64,
    );
    let switches = counters(
        registry,
        "weave_overlay_switches",
        "Connections moved to the sleeve (their fast path blocked) and back to fastdp",
    );
    for (to, n) in [
        ("sleeve", s.overlay_switches.to_sleeve),
        ("fastdp", s.overlay_switches.to_fastdp),
    ] {
        switches.get_or_create(&labels([("to", to)])).inc_by(n);
    }
    let frag_needed = counters(
        registry,
        "weave_icmp_frag_needed",
        "ICMP fragmentation-needed messages from the underlay: honoured (about our own VXLAN) or ignored",
    );
    for (verdict, n) in [
        ("honoured", s.frag_needed.honoured),
        ("ignored", s.frag_needed.ignored),
    ] {
        frag_needed
            .get_or_create(&labels([("verdict", verdict)]))
            .inc_by(n);
    }
}

/// Control-connection frames and bytes by direction and message kind, and refusals by reason.
fn control(registry: &mut Registry, traffic: &ControlTraffic) {
    let frames = counters(
        registry,
        "weave_control_frames",
        "Control-connection frames by direction and message kind",
    );
    let bytes = byte_counters(
        registry,
        "weave_control",
        "Control-connection bytes (frames with their headers) by direction and message kind",
    );
    for (direction, kinds) in [("sent", &traffic.sent), ("received", &traffic.received)] {
        for (kind, n, b) in kinds {
            let l = labels([("direction", direction), ("kind", kind)]);
            frames.get_or_create(&l).inc_by(*n);
            bytes.get_or_create(&l).inc_by(*b);
        }
    }
    for (name, help, by_reason) in [
        (
            "weave_control_refusals",
            "Control connections refused or closed for their transport, by reason (handshake_limit, handshake_failed, oversize_frame, slow_peer, write_stalled)",
            &traffic.refusals,
        ),
        (
            "weave_gossip_refused",
            "Gossip refused because of who sent it (a record a peer may not speak for, a unicast off its route or out of hops, a made-up space requester, a short-ID claim held off) or malformed",
            &traffic.gossip_refused,
        ),
    ] {
        let family = counters(registry, name, help);
        for (reason, n) in by_reason {
            family
                .get_or_create(&labels([("reason", reason)]))
                .inc_by(*n);
        }
    }
}

/// The eBPF data path: packets and bytes by reason, drops by reason, traffic per peer.
fn datapath(registry: &mut Registry, s: &MeshStatus, c: &DatapathCounters) {
    let packets = counters(
        registry,
        "weave_datapath_packets",
        "Packets handled by the data path, by reason",
    );
    let bytes = byte_counters(
        registry,
        "weave_datapath",
        "Bytes handled by the data path, by reason",
    );
    let drops = counters(
        registry,
        "weave_datapath_drops",
        "Packets dropped by the data path, by reason",
    );
    for (reason, p, b) in &c.by_reason {
        let l = labels([("reason", reason.name())]);
        packets.get_or_create(&l).inc_by(*p);
        bytes.get_or_create(&l).inc_by(*b);
        if reason.is_drop() {
            drops.get_or_create(&l).inc_by(*p);
        }
    }

    let peer_packets = counters(
        registry,
        "weave_peer_packets",
        "Packets sent to and received from each peer over the fast path",
    );
    let peer_bytes = byte_counters(
        registry,
        "weave_peer",
        "Bytes sent to and received from each peer over the fast path",
    );
    for t in &c.by_peer {
        let known = s.mesh.peers.iter().find(|p| p.short_id.get() == t.short_id);
        let name = known.map(|p| p.name.to_string()).unwrap_or_default();
        let nickname = known.map(|p| p.nickname.as_str()).unwrap_or_default();
        let short_id = format!("{:03x}", t.short_id);
        for (direction, p, b) in [
            ("sent", t.tx_packets, t.tx_bytes),
            ("received", t.rx_packets, t.rx_bytes),
        ] {
            let l = labels([
                ("peer", &name),
                ("nickname", nickname),
                ("short_id", &short_id),
                ("direction", direction),
            ]);
            peer_packets.get_or_create(&l).inc_by(p);
            peer_bytes.get_or_create(&l).inc_by(b);
        }
    }
}

/// The sleeve (user-space data path on UDP 6783).
fn sleeve(registry: &mut Registry, t: &SleeveTraffic) {
    let datagrams = counters(
        registry,
        "weave_sleeve_datagrams",
        "Datagrams sent and received by the sleeve data path, on UDP 6783",
    );
    let bytes = byte_counters(
        registry,
        "weave_sleeve",
        "Bytes sent and received by the sleeve data path",
    );
    let bundled = counters(
        registry,
        "weave_sleeve_bundled_frames",
        "Frames sent and received inside sleeve bundles (several small frames in one datagram, counted once above)",
    );
    for (direction, n, b, f) in [
        (
            "sent",
            t.sent_datagrams,
            t.sent_bytes,
            t.sent_bundled_frames,
        ),
        (
            "received",
            t.received_datagrams,
            t.received_bytes,
            t.received_bundled_frames,
        ),
    ] {
        let l = labels([("direction", direction)]);
        datagrams.get_or_create(&l).inc_by(n);
        bytes.get_or_create(&l).inc_by(b);
        bundled.get_or_create(&l).inc_by(f);
    }
    let drops = counters(
        registry,
        "weave_sleeve_drops",
        "Sleeve datagrams dropped, by reason (forged, replayed, plaintext, malformed, unknown_peer, unpaired, no_route, loop, bad_vnet_header…)",
    );
    for (reason, n) in &t.drops {
        drops
            .get_or_create(&labels([("reason", reason)]))
            .inc_by(*n);
    }
    let not_learned = counters(
        registry,
        "weave_sleeve_macs_not_learned",
        "Source MACs the sleeve did not learn because its table was full",
    );
    not_learned
        .get_or_create(&Labels::new())
        .inc_by(t.macs_not_learned);
    let answered = counters(
        registry,
        "weave_sleeve_answered_at_once",
        "Frames the sleeve's receive thread sent right after delivering the frames they answered (echo replies, acknowledgements), without waking its send thread",
    );
    answered
        .get_or_create(&Labels::new())
        .inc_by(t.answered_at_once);
}

/// `weave_build_info{version}` 1.
fn build_info(registry: &mut Registry) {
    registry.register(
        "weave_build",
        "The weave-router build: its version",
        Info::new(labels([("version", env!("CARGO_PKG_VERSION"))])),
    );
}

#[cfg(test)]
mod tests;
