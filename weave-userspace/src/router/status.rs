//! What `status`, `report` and `/metrics` show of the mesh: a snapshot of the connections
//! (with the core's view of each), the refused inbound ones, the targets being dialled,
//! and the gossip view.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{gossip, OverlaySwitches, Router};
use crate::datapath::overlay::Overlay;
use crate::datapath::Datapath;
use crate::mesh::connection_maker::{Target, TargetState};
use crate::mesh::protocol::{Hello, MAX_VERSION, MIN_VERSION};

/// How long a refused inbound connection stays in status.
pub const REFUSAL_SHOWN_FOR: Duration = Duration::from_secs(120);

/// A peer as shown in status and report.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct PeerInfo {
    pub name: String,
    pub nick_name: String,
    #[serde(rename = "ShortID")]
    pub short_id: u16,
    #[serde(rename = "UID")]
    pub uid: u64,
    pub underlay: Ipv4Addr,
    pub data_port: u16,
}

impl From<&Hello> for PeerInfo {
    fn from(h: &Hello) -> Self {
        Self {
            name: h.name.to_string(),
            nick_name: h.nickname.clone(),
            short_id: h.short_id.get(),
            uid: h.uid,
            underlay: h.underlay,
            data_port: h.data_port,
        }
    }
}

/// A connection or a target being dialled, as Weave lists them.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ConnectionInfo {
    pub outbound: bool,
    pub address: String,
    /// connecting, pending, established, retrying or failed.
    pub state: String,
    /// The error of a retrying or failed target.
    pub info: String,
    /// Whether the connection is encrypted (false until it is up).
    pub encrypted: bool,
    /// fastdp or sleeve: which data path carries the peer's traffic.
    pub overlay: String,
    /// The MTU containers get towards the peer (0 until the connection is up): over the
    /// fast path, what its probes verified once they have.
    pub mtu: u32,
    /// Whether `mtu` was verified by probing the path.
    pub mtu_verified: bool,
    pub peer: Option<PeerInfo>,
}

/// A snapshot of the mesh.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MeshStatus {
    pub protocol_min_version: u8,
    pub protocol_max_version: u8,
    pub local: PeerInfo,
    pub listen: SocketAddr,
    pub targets: Vec<String>,
    pub connections: Vec<ConnectionInfo>,
    /// Every peer known through gossip, and our routes.
    pub mesh: gossip::MeshReport,
    /// Whether peers learned through gossip are dialled.
    pub discovery: bool,
    /// Whether a password is set (every connection encrypted).
    pub encryption: bool,
    /// Connections moved from one data path to the other since the start.
    pub overlay_switches: OverlaySwitches,
    /// Kept connections lost since the start (Weave's `TerminationCount`).
    #[serde(default)]
    pub terminations: u64,
    /// ICMP "fragmentation needed" from the underlay since the start.
    #[serde(default)]
    pub frag_needed: FragNeededCounts,
    /// Peers reached through a neighbour, and how.
    #[serde(default)]
    pub relayed: Vec<RelayedPeer>,
    /// The underlay subnets this router trusts (`--trusted-subnets`).
    #[serde(default)]
    pub trusted_subnets: Vec<String>,
}

/// A peer we have no connection with, reached through a neighbour.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct RelayedPeer {
    /// `name(nickname)`.
    pub peer: String,
    /// The neighbour its frames are handed to, `name(nickname)`.
    pub via: String,
    /// The path that carries them from here: fastdp (the kernel relays) or sleeve.
    pub overlay: String,
}

/// ICMP "fragmentation needed" messages read from the underlay, by what became of them.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct FragNeededCounts {
    /// About our own VXLAN: a hint for the path-MTU search.
    pub honoured: u64,
    /// About anything else, or with no MTU in it.
    pub ignored: u64,
}

impl<D: Datapath> Router<D> {
    /// Every peer routed through a neighbour, with the path that carries it from here: the
    /// fast path when it holds the peer, else the sleeve.
    fn relayed_peers(&self) -> Vec<RelayedPeer> {
        let fast_path_relays = self
            .inner
            .sleeve_use
            .fast_path_relays(self.inner.overlays.sleeve().is_some());
        let view = self.inner.view();
        let named = |name: &crate::mesh::peer_name::PeerName| {
            let nick = view.topology.peer(name).map_or("", |p| p.nickname.as_str());
            format!("{name}({nick})")
        };
        view.routes
            .unicast
            .iter()
            .filter(|(dst, hop)| dst != hop)
            .map(|(dst, hop)| RelayedPeer {
                peer: named(dst),
                via: named(hop),
                overlay: if fast_path_relays && view.installed.relayed.contains_key(dst) {
                    "fastdp"
                } else {
                    "sleeve"
                }
                .into(),
            })
            .collect()
    }
}

impl MeshStatus {
    /// Connections in a given state.
    pub fn count(&self, state: &str) -> usize {
        self.connections.iter().filter(|c| c.state == state).count()
    }
}

impl<D: Datapath> Router<D> {
    /// A snapshot of connections and targets.
    pub fn status(&self) -> MeshStatus {
        let mesh = self.inner.mesh();
        let mut connections = Vec::new();
        for (_, c) in mesh.core.connections() {
            connections.push(ConnectionInfo {
                outbound: c.outbound,
                address: c.remote.to_string(),
                state: if c.established() {
                    "established"
                } else {
                    "pending"
                }
                .into(),
                info: match &c.choice {
                    Some(choice) if c.overlay == Overlay::Sleeve => choice.why_sleeve().into(),
                    _ => String::new(),
                },
                // A trusted peer's data goes in the clear.
                encrypted: c.encrypted && !c.trusted,
                overlay: c.overlay.name().into(),
                mtu: match c.verified_container_mtu() {
                    Some(m) if c.overlay == Overlay::Fastdp => m,
                    _ => self.inner.datapath.container_mtu(),
                },
                mtu_verified: c.overlay == Overlay::Fastdp && c.verified_container_mtu().is_some(),
                peer: Some(PeerInfo {
                    underlay: c.underlay,
                    ..PeerInfo::from(&c.hello)
                }),
            });
        }
        // Held peers: their connection went, their fast path still answers (`super::hold`).
        let instant = std::time::Instant::now();
        for held in mesh.core.held() {
            connections.push(ConnectionInfo {
                outbound: held.outbound,
                address: held.remote.to_string(),
                state: "held".into(),
                info: held.describe(instant),
                encrypted: false,
                overlay: held.placement.overlay.name().into(),
                mtu: 0,
                mtu_verified: false,
                peer: Some(PeerInfo {
                    underlay: held.placement.peer.underlay,
                    ..PeerInfo::from(&held.hello)
                }),
            });
        }
        let now = SystemTime::now();
        for (addr, reason, at) in mesh.refused_inbound.values() {
            if now.duration_since(*at).unwrap_or_default() < REFUSAL_SHOWN_FOR {
                connections.push(ConnectionInfo {
                    outbound: false,
                    address: addr.to_string(),
                    state: "failed".into(),
                    info: format!("{reason}, at {}", format_time(*at)),
                    encrypted: false,
                    overlay: String::new(),
                    mtu: 0,
                    mtu_verified: false,
                    peer: None,
                });
            }
        }
        for (target, state) in &mesh.targets {
            let (state, info) = match state {
                TargetState::Connected(Some(id)) if mesh.core.connection(*id).is_none() => {
                    ("connecting", String::new())
                }
                TargetState::Connected(_) => continue,
                TargetState::Connecting => ("connecting", String::new()),
                TargetState::Retrying(e) => ("retrying", e.clone()),
                TargetState::Failed { error, retry_at } => (
                    "failed",
                    match retry_at {
                        Some(at) => format!("{error}, retry: {}", format_time(*at)),
                        None => error.clone(),
                    },
                ),
            };
            connections.push(ConnectionInfo {
                outbound: true,
                address: target.to_string(),
                state: state.into(),
                info,
                encrypted: false,
                overlay: String::new(),
                mtu: 0,
                mtu_verified: false,
                peer: None,
            });
        }
        MeshStatus {
            protocol_min_version: MIN_VERSION,
            protocol_max_version: MAX_VERSION,
            local: PeerInfo::from(mesh.core.local()),
            listen: self.inner.listen,
            targets: mesh.targets.keys().map(Target::to_string).collect(),
            connections,
            mesh: self.mesh_report(),
            relayed: self.relayed_peers(),
            trusted_subnets: mesh
                .core
                .local()
                .trusted_subnets
                .iter()
                .map(ToString::to_string)
                .collect(),
            discovery: self.inner.discovery,
            encryption: self.inner.password.is_some(),
            overlay_switches: mesh.core.switches(),
            terminations: mesh.core.terminations(),
            frag_needed: FragNeededCounts {
                honoured: self.inner.frag_needed.honoured.load(Ordering::Relaxed),
                ignored: self.inner.frag_needed.ignored.load(Ordering::Relaxed),
            },
        }
    }
}

/// A wall-clock time as `YYYY-MM-DD hh:mm:ss` UTC.
pub fn format_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
