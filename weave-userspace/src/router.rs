//! The router: owns the mesh state (connections, targets) and a [`Datapath`], and turns
//! connection events into data-path calls. An accepted connection puts the peer into the data
//! path and tells the peer we are ready; when both sides are ready it is established. A lost
//! connection takes the peer out again. A peer's frames go through the kernel fast path or
//! the sleeve ([`overlay`]): a password without mutual trust or `--datapath sleeve` choose
//! the sleeve, and a connection whose fast path is blocked falls back to it (fast-path
//! heartbeats and the peer's reports decide).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::crypto::{PresharedKey, SessionKeys};
use crate::datapath::{Datapath, DatapathError, DatapathPeer};
use crate::mesh::connection::{self, ConnCommand, ConnEvent, ConnId, ConnectionError, Timings};
use crate::mesh::connection_maker::{Maker, MakerHost, Target, TargetState};
use crate::mesh::peer_name::{PeerName, ShortId};
use crate::datapath::{Heartbeat, ProbeSeen};
use crate::mesh::protocol::{
    Hello, Message, FASTDP_STATUS_VERSION, MAX_VERSION, MIN_VERSION, PATH_MTU_VERSION,
};
use crate::state::StateDir;
use overlay::{Overlay, OverlayChoice};
use path_mtu::PathMtuSearch;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// What a router runs with.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Who we are, as sent to peers.
    pub local: Hello,
    pub targets: Vec<Target>,
    pub timings: Timings,
    /// Dial peers learned through gossip.
    pub discovery: bool,
    /// Most connections kept at once; more are refused and not dialled.
    pub conn_limit: usize,
    /// The key from `--password`: every connection is then encrypted, and peers without
    /// it are refused.
    pub password: Option<Arc<PresharedKey>>,
    /// The user-space data path (none with the in-memory data path): it carries the peers
    /// the fast path must not carry, and those whose fast path is blocked.
    pub sleeve: Option<Arc<crate::sleeve::Sleeve>>,
    /// Which peers the sleeve carries.
    pub sleeve_use: SleeveUse,
}

/// Which peers the sleeve carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SleeveUse {
    /// Those whose fast path is blocked.
    #[default]
    Fallback,
    /// Every peer not trusted both ways (a password, or `--datapath sleeve`).
    Untrusted,
    /// Every peer: there is no fast path (the kernel programs are not loaded).
    All,
}

/// Longest run of events the event loop handles before it publishes our record and
/// computes routes (each still at most as often as their intervals allow).
const MAX_BURST: Duration = Duration::from_millis(50);

/// Weave's default connection limit.
pub const DEFAULT_CONN_LIMIT: usize = 200;

/// Binds the control port (done early, so that a port in use fails before anything else).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, RouterError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| RouterError::Listen { addr, error })
}

/// An accepted connection.
#[derive(Debug)]
struct Conn {
    /// The protocol version spoken on it.
    version: u8,
    outbound: bool,
    remote: SocketAddr,
    hello: Hello,
    /// Where the peer's data goes and comes from: the address its connection comes from
    /// (or was dialled at), not the one it claims ([`data_address`]).
    underlay: Ipv4Addr,
    /// The keys of an encrypted connection.
    session: Option<Arc<SessionKeys>>,
    /// Both ends trust each other's subnet (`--trusted-subnets`): data skips encryption
    /// and goes through the kernel fast path.
    trusted: bool,
    local_ready: bool,
    remote_ready: bool,
    commands: mpsc::UnboundedSender<ConnCommand>,
    /// The data path carrying the peer's frames now.
    overlay: Overlay,
    /// The choice between the two paths, for a peer that may fall back to the sleeve (we
    /// have one, the fast path is allowed, the peer speaks version 3); else the path never
    /// changes.
    choice: Option<OverlayChoice>,
    /// The path MTU of the fast path to the peer, probed (the fast path is allowed and the
    /// peer speaks version 4).
    path_mtu: Option<PathMtuSearch>,
    /// What we last told the peer of its probes that reached us.
    probes_reported: Option<ProbeSeen>,
}

impl Conn {
    fn established(&self) -> bool {
        self.local_ready && self.remote_ready
    }

    /// The MTU containers may use towards the peer over the fast path: the verified path
    /// MTU less the VXLAN overhead, when verified.
    fn verified_container_mtu(&self) -> Option<u32> {
        let limit = self.path_mtu.as_ref()?.limit()?;
        Some(u32::from(limit).saturating_sub(weave_ebpf_common::VXLAN_OVERHEAD))
    }

    /// The peer as the fast path knows it: directly connected.
    fn datapath_peer(&self) -> DatapathPeer {
        DatapathPeer {
            short_id: self.hello.short_id,
            underlay: self.underlay,
            next_hop: self.hello.short_id,
        }
    }
}

/// The mesh as this router sees it.
#[derive(Debug, Default)]
struct Mesh {
    connections: BTreeMap<ConnId, Conn>,
    /// The one connection kept per peer.
    by_peer: HashMap<PeerName, ConnId>,
    targets: BTreeMap<Target, TargetState>,
    /// Targets dialled because gossip named them (forgotten when the peer leaves gossip).
    discovered: std::collections::BTreeSet<Target>,
    /// Inbound connections refused for want of the right password, by remote address: why
    /// and when (shown in status for [`REFUSAL_SHOWN_FOR`]).
    refused_inbound: BTreeMap<std::net::IpAddr, (SocketAddr, String, SystemTime)>,
}

/// How long a refused inbound connection stays in status.
pub const REFUSAL_SHOWN_FOR: Duration = Duration::from_secs(120);

/// Whether to take a freshly handshaken connection.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    Accept {
        replace: Option<ConnId>,
    },
    Reject(String),
    /// A peer we are connected to has the newcomer's short ID: the newcomer takes another
    /// (whatever the names: the peer already in the mesh keeps its ID).
    ShortIdTaken {
        id: ShortId,
        by: PeerName,
    },
    /// The peer has our short ID; `we_yield` when our name is the higher one.
    ShortIdClash {
        we_yield: bool,
    },
}

impl Mesh {
    /// One connection per peer: when two exist, keep the one dialled by the peer with the
    /// higher name (both ends decide alike), and prefer a new run of the peer over an old one.
    fn admit(&self, ours: &Hello, outbound: bool, hello: &Hello, conn_limit: usize) -> Admission {
        let local = ours.name;
        if hello.short_id == ours.short_id {
            return Admission::ShortIdClash {
                we_yield: ours.name > hello.name,
            };
        }
        if !self.by_peer.contains_key(&hello.name) && self.by_peer.len() >= conn_limit {
            return Admission::Reject(format!("connection limit of {conn_limit} reached"));
        }
        for (name, id) in &self.by_peer {
            let other = &self.connections[id].hello;
            if *name != hello.name && other.short_id == hello.short_id {
                return Admission::ShortIdTaken {
                    id: hello.short_id,
                    by: *name,
                };
            }
        }
        let Some(&existing) = self.by_peer.get(&hello.name) else {
            return Admission::Accept { replace: None };
        };
        let old = &self.connections[&existing];
        if old.hello.uid != hello.uid {
            // Another run of that name while its connection is alive: an impostor, or a
            // restart the heartbeats have not noticed yet (it is dialled again shortly).
            return Admission::Reject(format!(
                "peer name {} is already connected from {} (another run of it, or another router claiming its name)",
                hello.name, old.remote
            ));
        }
        let dialler = |outbound: bool| if outbound { local } else { hello.name };
        if old.outbound != outbound && dialler(outbound) > dialler(old.outbound) {
            Admission::Accept {
                replace: Some(existing),
            }
        } else {
            Admission::Reject(ConnectionError::Duplicate(hello.name).to_string())
        }
    }
}

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
    /// ICMP "fragmentation needed" from the underlay since the start.
    #[serde(default)]
    pub frag_needed: FragNeededCounts,
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

/// Switches of connections between the two data paths, by the path switched to.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct OverlaySwitches {
    pub to_sleeve: u64,
    pub to_fastdp: u64,
}

impl MeshStatus {
    /// Connections in a given state.
    pub fn count(&self, state: &str) -> usize {
        self.connections.iter().filter(|c| c.state == state).count()
    }
}

struct Inner<D> {
    /// Who we are; only the short ID ever changes (after a clash).
    local: std::sync::RwLock<Hello>,
    timings: Timings,
    datapath: Arc<D>,
    mesh: Mutex<Mesh>,
    events: Mutex<Option<mpsc::UnboundedSender<ConnEvent>>>,
    shutdown: watch::Sender<bool>,
    next_id: AtomicU64,
    listen: SocketAddr,
    state: Option<Arc<StateDir>>,
    view: Mutex<gossip::MeshView>,
    discovery: bool,
    conn_limit: usize,
    password: Option<Arc<PresharedKey>>,
    pub(crate) sleeve: Option<Arc<crate::sleeve::Sleeve>>,
    sleeve_use: SleeveUse,
    /// The last path-MTU probe round sent ([`Inner::next_probe_round`]).
    probe_round: std::sync::atomic::AtomicU32,
    /// ICMP "fragmentation needed" about our outer packets, for the path-MTU searches.
    frag_needed: Arc<crate::datapath::frag_needed::FragNeededHints>,
    /// Switches to the sleeve and back to the fast path so far.
    switches_to_sleeve: AtomicU64,
    switches_to_fastdp: AtomicU64,
    /// Gossip channels of other subsystems (IPAM, DNS).
    channels: std::sync::RwLock<crate::mesh::gossip_channel::Channels>,
    /// Connection makers and other tasks, awaited on stop.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A running router.
pub struct Router<D: Datapath> {
    inner: Arc<Inner<D>>,
    event_loop: Mutex<Option<JoinHandle<()>>>,
}

impl<D: Datapath> Inner<D> {
    fn mesh(&self) -> MutexGuard<'_, Mesh> {
        self.mesh.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn handle(&self, event: ConnEvent) {
        match event {
            ConnEvent::Handshaken {
                id,
                version,
                outbound,
                remote,
                hello,
                session,
                commands,
                reply,
            } => {
                self.handshaken(
                    id, version, outbound, remote, hello, session, commands, reply,
                )
                .await
            }
            ConnEvent::ShortIdTaken { short_id } => {
                // Refused by a peer that knows another router with our short ID (a gossip
                // of it never reaches us while we are refused): take another one.
                if short_id == self.hello().short_id {
                    self.take_new_short_id().await;
                }
            }
            ConnEvent::FastdpStatus { id, heard } => {
                let switch = self
                    .mesh()
                    .connections
                    .get_mut(&id)
                    .and_then(|c| c.choice.as_mut())
                    .and_then(|choice| choice.remote_report(heard).switch);
                if let Some(to) = switch {
                    self.switch_overlay(id, to).await;
                }
            }
            ConnEvent::PathMtuSeen { id, round, largest } => {
                if let Some(search) = self
                    .mesh()
                    .connections
                    .get_mut(&id)
                    .and_then(|c| c.path_mtu.as_mut())
                {
                    search.seen(round, largest);
                }
            }
            ConnEvent::RemoteReady { id } => {
                let established = {
                    let mut mesh = self.mesh();
                    match mesh.connections.get_mut(&id) {
                        Some(c) => {
                            c.remote_ready = true;
                            if c.established() {
                                tracing::info!(
                                    "connection {} {} established",
                                    describe(c),
                                    c.remote
                                );
                            }
                            c.established()
                        }
                        None => false,
                    }
                };
                if established {
                    self.connections_changed().await;
                }
            }
            ConnEvent::Gossip { id, message } => self.on_gossip(id, message).await,
            ConnEvent::Closed { id, error } => {
                let lost = {
                    let mut mesh = self.mesh();
                    let conn = mesh.connections.remove(&id);
                    match conn {
                        Some(c) if mesh.by_peer.get(&c.hello.name) == Some(&id) => {
                            mesh.by_peer.remove(&c.hello.name);
                            Some(c)
                        }
                        _ => None,
                    }
                };
                if let Some(c) = lost {
                    tracing::info!("connection {} {} lost: {error}", describe(&c), c.remote);
                    if let Err(e) = self.unroute_peer(&c).await {
                        tracing::error!(
                            "cannot remove peer {} from the data path: {e}",
                            c.hello.name
                        );
                    }
                    self.view().relayed.remove(&c.hello.name);
                    self.connections_changed().await;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn handshaken(
        &self,
        id: ConnId,
        version: u8,
        outbound: bool,
        remote: SocketAddr,
        hello: Hello,
        session: Option<Arc<SessionKeys>>,
        commands: mpsc::UnboundedSender<ConnCommand>,
        reply: tokio::sync::oneshot::Sender<Result<(), ConnectionError>>,
    ) {
        let replaced = {
            let mut mesh = self.mesh();
            match mesh.admit(&self.hello(), outbound, &hello, self.conn_limit) {
                Admission::ShortIdClash { we_yield } => {
                    let reason = if we_yield {
                        format!(
                            "short ID {} is also {}'s; this router takes another",
                            hello.short_id, hello.name
                        )
                    } else {
                        format!(
                            "short ID {} is also {}'s; that router takes another",
                            hello.short_id,
                            self.hello().name
                        )
                    };
                    tracing::warn!(
                        "connection {} {}({}) at {remote} refused: {reason}",
                        arrow(outbound),
                        hello.name,
                        hello.nickname
                    );
                    let _ = reply.send(Err(ConnectionError::Refused(reason)));
                    Err(we_yield)
                }
                Admission::Reject(reason) => {
                    tracing::info!(
                        "connection {} {}({}) at {remote} refused: {reason}",
                        arrow(outbound),
                        hello.name,
                        hello.nickname
                    );
                    let err = if reason.starts_with("duplicate") {
                        ConnectionError::Duplicate(hello.name)
                    } else {
                        ConnectionError::Refused(reason)
                    };
                    let _ = reply.send(Err(err));
                    return;
                }
                Admission::ShortIdTaken { id, by } => {
                    let err = ConnectionError::ShortIdTaken { id, by };
                    tracing::info!(
                        "connection {} {}({}) at {remote} refused: {err}",
                        arrow(outbound),
                        hello.name,
                        hello.nickname
                    );
                    let _ = reply.send(Err(err));
                    return;
                }
                Admission::Accept { replace } => {
                    let replaced = replace.and_then(|old| mesh.connections.remove(&old));
                    if let Some(old) = &replaced {
                        let _ = old
                            .commands
                            .send(ConnCommand::Close(ConnectionError::Duplicate(hello.name)));
                    }
                    if !outbound {
                        mesh.refused_inbound.remove(&remote.ip());
                    }
                    let underlay = data_address(remote, &hello);
                    let trusted = self.hello().trusted_both_ways(&hello);
                    let overlay = self.initial_overlay(trusted);
                    let watched = self.sleeve.is_some()
                        && overlay == Overlay::Fastdp
                        && version >= FASTDP_STATUS_VERSION;
                    // Probed through whichever path carries the peer: the fast path's
                    // programs or the sleeve's socket (both UDP over the same route).
                    let probed = version >= PATH_MTU_VERSION
                        && (self.sleeve.is_some() || overlay == Overlay::Fastdp);
                    let conn = Conn {
                        version,
                        outbound,
                        remote,
                        hello: hello.clone(),
                        underlay,
                        session,
                        trusted,
                        local_ready: false,
                        remote_ready: false,
                        commands,
                        overlay,
                        choice: watched.then(OverlayChoice::default),
                        path_mtu: probed.then(|| PathMtuSearch::new(self.path_mtu_ceiling())),
                        probes_reported: None,
                    };
                    mesh.connections.insert(id, conn);
                    mesh.by_peer.insert(hello.name, id);
                    let _ = reply.send(Ok(()));
                    Ok(replaced)
                }
            }
        };
        let replaced = match replaced {
            Ok(replaced) => replaced,
            Err(we_yield) => {
                if we_yield {
                    self.take_new_short_id().await;
                }
                return;
            }
        };
        if let Some(old) = replaced {
            if old.hello.short_id != hello.short_id {
                let _ = self.remove_peer(&old).await;
            }
        }
        tracing::info!(
            "connection {} {}({}) at {remote} pending",
            arrow(outbound),
            hello.name,
            hello.nickname
        );
        let placed = self.mesh().connections.get(&id).map(|c| {
            (
                c.datapath_peer(),
                c.overlay,
                c.choice.is_some(),
                c.session.clone(),
            )
        });
        let Some((peer, overlay, watched, session)) = placed else {
            return;
        };
        let result = self
            .place_peer(&hello, peer, overlay, watched, session.as_deref())
            .await;
        self.view().relayed.remove(&hello.name);
        let ready = {
            let mut mesh = self.mesh();
            let Some(conn) = mesh.connections.get_mut(&id) else {
                return;
            };
            match result {
                Ok(()) => {
                    conn.local_ready = true;
                    let _ = conn.commands.send(ConnCommand::SendReady);
                    if conn.version >= FASTDP_STATUS_VERSION
                        && conn.overlay == Overlay::Sleeve
                        && conn.choice.is_none()
                    {
                        // The peer would try the fast path with us: it must not.
                        if let Some(frame) =
                            gossip::encode_message(&Message::FastdpStatus { heard: false })
                        {
                            let _ = conn.commands.send(ConnCommand::SendFrame(frame));
                        }
                    }
                    if conn.established() {
                        tracing::info!("connection {} {} established", describe(conn), conn.remote);
                    }
                    Some(conn.outbound)
                }
                Err(e) => {
                    tracing::error!("cannot add peer {} to the data path: {e}", hello.name);
                    let _ = conn
                        .commands
                        .send(ConnCommand::Close(ConnectionError::Refused(format!(
                            "data path: {e}"
                        ))));
                    None
                }
            }
        };
        if let Some(outbound) = ready {
            // One digest makes a two-way exchange (the answer brings a digest back when the
            // dialled side holds newer records): the dialler starts it, so that records
            // cross a new connection once, not twice.
            if outbound {
                self.send_digest(id, false);
            }
            self.sync_channels(id);
            self.connections_changed().await;
        }
    }
}

/// The address a peer's data is sent to and must come from: the one its control connection
/// comes from (inbound) or was dialled at (outbound), as Weave does. A peer behind a NAT
/// (a cloud VM's public address, a forwarded port) claims the private address it sees on
/// its own interface, which nobody else can reach; the claim is logged when it differs and
/// never used for sending. A connection over loopback (routers sharing one host) is the
/// exception: there the claim is the address to use.
fn data_address(remote: SocketAddr, hello: &Hello) -> Ipv4Addr {
    match remote.ip() {
        std::net::IpAddr::V4(seen) if !seen.is_loopback() && !seen.is_unspecified() => {
            if seen != hello.underlay {
                tracing::info!(
                    "{}({}) claims underlay address {} but is seen at {seen}: sending its data to {seen}",
                    hello.name,
                    hello.nickname,
                    hello.underlay
                );
            }
            seen
        }
        std::net::IpAddr::V6(seen) => match seen.to_ipv4_mapped() {
            Some(v4) if !v4.is_loopback() => v4,
            _ => hello.underlay,
        },
        _ => hello.underlay,
    }
}

fn arrow(outbound: bool) -> &'static str {
    if outbound {
        "to"
    } else {
        "from"
    }
}

fn describe(c: &Conn) -> String {
    format!(
        "{} {}({})",
        arrow(c.outbound),
        c.hello.name,
        c.hello.nickname
    )
}

impl<D: Datapath> Inner<D> {
    fn hello(&self) -> Hello {
        self.local.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The data path a new connection starts on: the sleeve when the peer must not or
    /// cannot use the fast path, else the fast path.
    fn initial_overlay(&self, trusted: bool) -> Overlay {
        match self.sleeve_use {
            _ if self.sleeve.is_none() => Overlay::Fastdp,
            SleeveUse::All => Overlay::Sleeve,
            SleeveUse::Untrusted if !trusted => Overlay::Sleeve,
            SleeveUse::Untrusted | SleeveUse::Fallback => Overlay::Fastdp,
        }
    }

    /// Puts the peer of a new connection into the data path that carries it. A `watched`
    /// peer (one that may fall back) is taken by both: the other one admits it without
    /// carrying its frames, ready for a switch.
    async fn place_peer(
        &self,
        hello: &Hello,
        peer: DatapathPeer,
        overlay: Overlay,
        watched: bool,
        session: Option<&SessionKeys>,
    ) -> Result<(), DatapathError> {
        let Some(sleeve) = &self.sleeve else {
            return self.datapath.add_peer(peer).await;
        };
        let short_id = peer.short_id.get();
        let sleeve_error = |e: String| DatapathError::Netlink(format!("sleeve: {e}"));
        match overlay {
            Overlay::Sleeve => {
                // The fast path never routes to the peer: its frames go to the bridge, and
                // from there through the sleeve.
                sleeve
                    .add_peer(short_id, peer.underlay, session, true)
                    .map_err(sleeve_error)?;
                if watched {
                    self.datapath.admit_peer(peer).await?;
                }
                Ok(())
            }
            Overlay::Fastdp => {
                if self.sleeve_use == SleeveUse::Untrusted {
                    tracing::info!(
                        "{}({}) at {} is in a trusted subnet both ways: its data goes unencrypted through the fast path",
                        hello.name,
                        hello.nickname,
                        peer.underlay
                    );
                }
                let mut stale = Vec::new();
                if watched {
                    sleeve
                        .add_peer(short_id, peer.underlay, session, false)
                        .map_err(sleeve_error)?;
                    // A connection it replaces may have had it on the sleeve.
                    stale = sleeve.carry(short_id, false);
                }
                self.datapath.add_peer(peer).await?;
                self.datapath.forget_bridge_macs(stale).await
            }
        }
    }

    /// Takes a peer of a lost or replaced connection out of the data paths holding it.
    async fn remove_peer(&self, conn: &Conn) -> Result<(), DatapathError> {
        let Some(sleeve) = &self.sleeve else {
            return self.datapath.remove_peer(conn.hello.short_id).await;
        };
        self.forget_sleeve_peer(sleeve, conn).await;
        if conn.overlay == Overlay::Fastdp || conn.choice.is_some() {
            self.datapath.remove_peer(conn.hello.short_id).await
        } else {
            Ok(())
        }
    }

    /// Takes a peer out of the sleeve, and the MACs learned behind it out of the bridge
    /// (it learned them on the TAP: frames for them would go nowhere until they aged out).
    async fn forget_sleeve_peer(&self, sleeve: &crate::sleeve::Sleeve, conn: &Conn) {
        let macs = sleeve.remove_peer(conn.hello.short_id.get());
        if let Err(e) = self.datapath.forget_bridge_macs(macs).await {
            tracing::warn!("cannot forget the bridge's entries for {}: {e}", conn.hello.name);
        }
    }

    /// Takes the peer of a lost connection out of the data paths as a direct peer, keeping
    /// what the fast path learned behind it until the routes say whether a neighbour still
    /// reaches it ([`MeshView::unrouted`](gossip::MeshView)): relayed, its traffic goes on
    /// at once; unreachable, it is removed then.
    async fn unroute_peer(&self, conn: &Conn) -> Result<(), DatapathError> {
        let in_fast_path = conn.overlay == Overlay::Fastdp || conn.choice.is_some();
        if let Some(sleeve) = &self.sleeve {
            self.forget_sleeve_peer(sleeve, conn).await;
            if !in_fast_path {
                return Ok(());
            }
        }
        self.datapath.unroute_peer(conn.hello.short_id).await?;
        self.view()
            .unrouted
            .insert(conn.hello.name, conn.datapath_peer());
        Ok(())
    }

    /// Moves the peer of connection `id` to the data path `to` (its choice switched).
    async fn switch_overlay(&self, id: ConnId, to: Overlay) {
        let Some(sleeve) = &self.sleeve else {
            return;
        };
        let moving = {
            let mut mesh = self.mesh();
            mesh.connections
                .get_mut(&id)
                .filter(|c| c.overlay != to)
                .map(|c| {
                    c.overlay = to;
                    (c.datapath_peer(), describe(c))
                })
        };
        let Some((peer, who)) = moving else {
            return;
        };
        let short_id = peer.short_id.get();
        let result = match to {
            Overlay::Sleeve => {
                self.switches_to_sleeve.fetch_add(1, Ordering::Relaxed);
                tracing::info!("connection {who}: fast path blocked, using sleeve");
                let admitted = self.datapath.admit_peer(peer).await;
                sleeve.carry(short_id, true);
                admitted
            }
            Overlay::Fastdp => {
                self.switches_to_fastdp.fetch_add(1, Ordering::Relaxed);
                tracing::info!("connection {who}: fast path works again");
                // The bridge learned the peer's MACs on the sleeve's TAP: it must forget
                // them, or frames for them would still go there.
                let macs = sleeve.carry(short_id, false);
                match self.datapath.add_peer(peer).await {
                    Ok(()) => self.datapath.forget_bridge_macs(macs).await,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = result {
            tracing::error!(
                "connection {who}: cannot move the peer to the {}: {e}",
                to.name()
            );
        }
    }

    /// The largest outer packet a probe may be: the underlay's MTU (or `--mtu` plus the
    /// VXLAN overhead).
    fn path_mtu_ceiling(&self) -> u16 {
        let max = self.datapath.max_container_mtu() + weave_ebpf_common::VXLAN_OVERHEAD;
        u16::try_from(max).unwrap_or(u16::MAX)
    }

    /// A probe round number newer than any this process or an earlier run of it used: the
    /// peer's receive program keeps the newest round it saw, across our restarts.
    fn next_probe_round(&self) -> u32 {
        let clock = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| (d.as_millis() / 10) as u32);
        let mut prev = self.probe_round.load(Ordering::Relaxed);
        loop {
            let next = if weave_ebpf_common::heartbeat::newer_round(clock, prev) {
                clock
            } else {
                prev.wrapping_add(1)
            }
            .max(1);
            match self.probe_round.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// Every [`overlay::CHECK_EVERY`]: fast-path heartbeats to every peer that may fall
    /// back, path-MTU probes to every peer the fast path may carry, a sample of what
    /// arrived from each, and what that changes (reports to the peers, switches, the
    /// container MTU).
    async fn check_paths(&self) {
        let now = Instant::now();
        for (addr, mtu) in self.take_frag_needed() {
            let mut mesh = self.mesh();
            for c in mesh.connections.values_mut().filter(|c| c.underlay == addr) {
                if let Some(search) = c.path_mtu.as_mut() {
                    if search.frag_needed(mtu) {
                        if let Some(sleeve) = &self.sleeve {
                            sleeve.set_path_mtu(c.hello.short_id.get(), mtu);
                        }
                        tracing::info!(
                            "connection {}: the underlay says packets to {addr} must not exceed {mtu} bytes; probing below that",
                            describe(c)
                        );
                    }
                }
            }
        }
        let mut heartbeats = Vec::new();
        let any_probed = {
            let mut mesh = self.mesh();
            let mut any_probed = false;
            for c in mesh.connections.values_mut().filter(|c| c.established()) {
                let peer = c.hello.short_id.get();
                if c.choice.is_some() {
                    heartbeats.push(Heartbeat {
                        peer,
                        round: 0,
                        outer_len: 0,
                    });
                }
                if let Some(search) = c.path_mtu.as_mut() {
                    any_probed = true;
                    let round = self.next_probe_round();
                    let sizes = search.probes(now, round);
                    match (&self.sleeve, c.overlay) {
                        (Some(sleeve), Overlay::Sleeve) => {
                            for outer_len in sizes {
                                if let Err(e) = sleeve.send_probe(peer, round, outer_len) {
                                    tracing::debug!("sleeve probe of {outer_len} bytes to peer {peer}: {e}");
                                }
                            }
                        }
                        _ => heartbeats.extend(sizes.into_iter().map(|outer_len| Heartbeat {
                            peer,
                            round,
                            outer_len,
                        })),
                    }
                }
            }
            any_probed
        };
        if heartbeats.is_empty() && !any_probed {
            self.apply_container_mtu().await;
            return;
        }
        if let Err(e) = self.datapath.send_heartbeats(&heartbeats) {
            tracing::debug!("fast-path heartbeats: {e}");
        }
        let received: HashMap<u16, crate::datapath::PeerTraffic> = match self.datapath.counters() {
            Ok(c) => c.by_peer.into_iter().map(|t| (t.short_id, t)).collect(),
            Err(e) => {
                tracing::warn!("cannot read the data path's counters: {e}");
                return;
            }
        };
        let mut switches = Vec::new();
        {
            let mut mesh = self.mesh();
            for (id, conn) in mesh.connections.iter_mut().filter(|(_, c)| c.established()) {
                let peer = conn.hello.short_id.get();
                let traffic = received.get(&peer).copied().unwrap_or_default();
                let send = |message: Message| {
                    if let Some(frame) = gossip::encode_message(&message) {
                        let _ = conn.commands.send(ConnCommand::SendFrame(frame));
                    }
                };
                // What of the peer's probes reached us (through either path), when that
                // changed.
                let through_sleeve = self.sleeve.as_ref().and_then(|s| s.probe_seen(peer));
                let probe = ProbeSeen::merge(
                    traffic
                        .probe
                        .map(|p| (p.round, p.largest))
                        .into_iter()
                        .chain(through_sleeve),
                );
                if conn.version >= PATH_MTU_VERSION && probe.is_some() && probe != conn.probes_reported {
                    let seen = probe.expect("checked");
                    send(Message::PathMtuSeen {
                        round: seen.round,
                        largest: u16::try_from(seen.largest).unwrap_or(u16::MAX),
                    });
                    conn.probes_reported = probe;
                }
                let mut only_small = None;
                if let Some(search) = conn.path_mtu.as_mut() {
                    if let Some(limit) = search.tick(now).verified_changed {
                        only_small = Some(search.only_small_frames());
                        if let (Some(l), Some(sleeve)) = (limit, &self.sleeve) {
                            // Should the peer fall back to the sleeve, its datagrams fit too.
                            sleeve.set_path_mtu(peer, l);
                        }
                        match limit {
                            Some(l) => tracing::info!(
                                "connection {}: path MTU {l} verified ({})",
                                describe(conn),
                                match conn.overlay {
                                    Overlay::Fastdp => format!(
                                        "containers {}",
                                        u32::from(l).saturating_sub(weave_ebpf_common::VXLAN_OVERHEAD)
                                    ),
                                    Overlay::Sleeve => "sleeve datagrams cut to fit".into(),
                                }
                            ),
                            None => tracing::warn!(
                                "connection {}: no probe of {} bytes crosses the fast path",
                                describe(conn),
                                path_mtu::FLOOR
                            ),
                        }
                    }
                }
                let Some(choice) = conn.choice.as_mut() else {
                    continue;
                };
                let mut change = choice.sample(now, traffic.rx_heartbeats);
                if let Some(small) = only_small {
                    change.switch = choice.set_only_small_frames(small).switch.or(change.switch);
                }
                if let Some(heard) = change.report {
                    send(Message::FastdpStatus { heard });
                }
                if let Some(to) = change.switch {
                    switches.push((*id, to));
                }
            }
        }
        for (id, to) in switches {
            self.switch_overlay(id, to).await;
        }
        // Also after an ICMP hint, or a connection that went or moved to the sleeve.
        self.apply_container_mtu().await;
    }

    /// Gives containers the smallest MTU the fast paths to the peers verified (the
    /// configured one while none is smaller).
    async fn apply_container_mtu(&self) {
        let wanted = self
            .mesh()
            .connections
            .values()
            .filter(|c| c.overlay == Overlay::Fastdp)
            .filter_map(Conn::verified_container_mtu)
            .min()
            .unwrap_or(u32::MAX)
            .min(self.datapath.max_container_mtu());
        if wanted != self.datapath.container_mtu() {
            if let Err(e) = self.datapath.set_container_mtu(wanted).await {
                tracing::error!("cannot set the container MTU to {wanted}: {e}");
            }
        }
    }

    /// The ICMP "fragmentation needed" hints about our outer packets gathered since the
    /// last check: (peer address, next hop's MTU).
    fn take_frag_needed(&self) -> Vec<(Ipv4Addr, u16)> {
        self.frag_needed
            .take()
            .into_iter()
            .map(|h| (h.peer, h.next_hop_mtu))
            .collect()
    }

    /// Takes a short ID no known peer uses (ours clashed with a peer of lower name), tells
    /// the data path and the mesh, and closes every connection so that peers learn it.
    async fn take_new_short_id(&self) {
        let mut in_use = self.view().topology.short_ids_in_use();
        in_use.extend(self.mesh().connections.values().map(|c| c.hello.short_id));
        if in_use.len() >= weave_ebpf_common::vni::MAX_SHORT_IDS as usize {
            tracing::error!("every short ID is in use; keeping ours despite the clash");
            return;
        }
        let new = loop {
            let candidate = ShortId::random();
            if !in_use.contains(&candidate) {
                break candidate;
            }
        };
        let old = {
            let mut local = self.local.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut local.short_id, new)
        };
        if old == new {
            return;
        }
        tracing::warn!("short ID {old} clashes with another peer's; taking {new}");
        if let Some(state) = &self.state {
            let hello = self.hello();
            let identity = crate::state::Identity {
                name: hello.name,
                short_id: new,
            };
            if let Err(e) = state.save_identity(identity) {
                tracing::error!("cannot store the new short ID: {e}");
            }
        }
        if let Err(e) = self.datapath.set_own_short_id(new).await {
            tracing::error!("cannot give the data path the new short ID {new}: {e}");
        }
        self.view().topology.set_our_short_id(new);
        let mesh = self.mesh();
        for conn in mesh.connections.values() {
            let _ = conn
                .commands
                .send(ConnCommand::Close(ConnectionError::Refused(format!(
                    "short ID changed from {old} to {new}"
                ))));
        }
    }

    /// After a burst of events: publishes our record and recomputes routes (each at most
    /// every 100 ms) and dials newly learned peers. Returns when to come back, if waiting.
    async fn after_events(self: &Arc<Self>) -> Option<tokio::time::Instant> {
        let publish_at = self.publish_if_pending();
        let routes_at = self.apply_routes_if_due().await;
        for target in self.discovery_targets() {
            tracing::info!("dialling {target}, learned from gossip");
            self.connect(target);
        }
        publish_at.into_iter().chain(routes_at).min()
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(tokio::spawn(f));
    }

    /// Keeps a connection to `target` (no-op when it is a target already or when stopping).
    fn connect(self: &Arc<Self>, target: Target) {
        let Some(events) = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return;
        };
        {
            let mut mesh = self.mesh();
            if mesh.targets.contains_key(&target) {
                return;
            }
            mesh.targets.insert(target.clone(), TargetState::Connecting);
        }
        let maker = Maker {
            host: self.clone(),
            target,
            timings: self.timings,
            events,
            shutdown: self.shutdown.subscribe(),
        };
        self.spawn(maker.run());
    }
}

impl<D: Datapath> MakerHost for Inner<D> {
    fn set_target_state(&self, target: &Target, state: TargetState) {
        if let Some(s) = self.mesh().targets.get_mut(target) {
            *s = state;
        }
    }

    fn wants(&self, target: &Target) -> bool {
        self.mesh().targets.contains_key(target)
    }

    fn is_connected(&self, peer: PeerName, except: ConnId) -> bool {
        self.mesh()
            .by_peer
            .get(&peer)
            .is_some_and(|id| *id != except)
    }

    fn next_conn_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn local_hello(&self) -> Hello {
        self.hello()
    }

    fn password(&self) -> Option<Arc<PresharedKey>> {
        self.password.clone()
    }
}

impl<D: Datapath> Router<D> {
    /// Starts accepting on `listener` and dialling the targets.
    pub fn start(
        config: RouterConfig,
        listener: TcpListener,
        datapath: Arc<D>,
        state: Option<Arc<StateDir>>,
    ) -> Self {
        let listen = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        let ourself = crate::mesh::topology::PeerInfo::new(
            config.local.name,
            config.local.nickname.clone(),
            config.local.uid,
            config.local.short_id,
        )
        .with_address(config.local.underlay, listen.port());
        let frag_needed = Arc::new(crate::datapath::frag_needed::FragNeededHints::default());
        if config.sleeve.is_some() {
            // A kernel data path (the in-memory one has no sleeve either).
            crate::datapath::frag_needed::listen(config.local.underlay, &frag_needed);
        }
        let inner = Arc::new(Inner {
            view: Mutex::new(gossip::MeshView::new(ourself)),
            local: std::sync::RwLock::new(config.local),
            timings: config.timings,
            datapath,
            mesh: Mutex::default(),
            events: Mutex::new(Some(events_tx.clone())),
            shutdown,
            next_id: AtomicU64::new(1),
            listen,
            state,
            discovery: config.discovery,
            conn_limit: config.conn_limit,
            password: config.password,
            sleeve: config.sleeve,
            sleeve_use: config.sleeve_use,
            probe_round: std::sync::atomic::AtomicU32::new(0),
            frag_needed,
            switches_to_sleeve: AtomicU64::new(0),
            switches_to_fastdp: AtomicU64::new(0),
            channels: Default::default(),
            tasks: Mutex::default(),
        });
        let event_loop = {
            let inner = inner.clone();
            let mut rx = events_rx;
            tokio::spawn(async move {
                // When our record is to be published or routes computed next, if waiting.
                let mut wake_at: Option<tokio::time::Instant> = None;
                // Next hops on the underlay, and fast-path checks with a sleeve to fall
                // back to.
                let mut check = tokio::time::interval(overlay::CHECK_EVERY);
                check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    let wake = wake_at.unwrap_or_else(tokio::time::Instant::now);
                    let event = tokio::select! {
                        event = rx.recv() => event,
                        _ = tokio::time::sleep_until(wake), if wake_at.is_some() => {
                            wake_at = inner.after_events().await;
                            continue;
                        }
                        _ = check.tick() => {
                            inner.datapath.refresh_next_hops().await;
                            inner.check_paths().await;
                            continue;
                        }
                    };
                    let Some(event) = event else { break };
                    inner.handle(event).await;
                    // Handle a burst, then publish our record and compute routes once. The
                    // burst is bounded: under a steady stream of events (a large mesh
                    // joining) routes must still be computed.
                    let burst_end = tokio::time::Instant::now() + MAX_BURST;
                    while tokio::time::Instant::now() < burst_end {
                        let Ok(event) = rx.try_recv() else { break };
                        inner.handle(event).await;
                    }
                    wake_at = inner.after_events().await;
                }
            })
        };
        let router = Router {
            inner: inner.clone(),
            event_loop: Mutex::new(Some(event_loop)),
        };
        router.spawn(accept_loop(inner.clone(), listener, events_tx));
        router.spawn(periodic_gossip(inner.clone()));
        for target in config.targets {
            router.connect(target);
        }
        router
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.inner.spawn(f);
    }

    /// Keeps a connection to `target` (no-op when it is a target already or when stopping).
    pub fn connect(&self, target: Target) {
        self.inner.connect(target);
    }

    /// Stops dialling `targets` (connections already up stay up). Returns those that were
    /// targets.
    pub fn forget(&self, targets: &[Target]) -> Vec<Target> {
        let mut mesh = self.inner.mesh();
        targets
            .iter()
            .filter(|t| mesh.targets.remove(t).is_some())
            .cloned()
            .collect()
    }

    /// Replaces every target with `targets`.
    pub fn replace_targets(&self, targets: Vec<Target>) {
        let old: Vec<Target> = self.inner.mesh().targets.keys().cloned().collect();
        let drop: Vec<Target> = old.into_iter().filter(|t| !targets.contains(t)).collect();
        self.forget(&drop);
        for t in targets {
            self.connect(t);
        }
    }

    /// The address the control port listens on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.listen
    }

    /// Who we are now.
    pub fn local(&self) -> Hello {
        self.inner.hello()
    }

    pub fn datapath(&self) -> &Arc<D> {
        &self.inner.datapath
    }

    /// A snapshot of connections and targets.
    pub fn status(&self) -> MeshStatus {
        let mesh = self.inner.mesh();
        let mut connections = Vec::new();
        for c in mesh.connections.values() {
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
                encrypted: c.session.is_some() && !c.trusted,
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
                TargetState::Connected(Some(id)) if !mesh.connections.contains_key(id) => {
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
            local: PeerInfo::from(&self.inner.hello()),
            listen: self.inner.listen,
            targets: mesh.targets.keys().map(Target::to_string).collect(),
            connections,
            mesh: self.mesh_report(),
            discovery: self.inner.discovery,
            encryption: self.inner.password.is_some(),
            overlay_switches: OverlaySwitches {
                to_sleeve: self.inner.switches_to_sleeve.load(Ordering::Relaxed),
                to_fastdp: self.inner.switches_to_fastdp.load(Ordering::Relaxed),
            },
            frag_needed: FragNeededCounts {
                honoured: self.inner.frag_needed.honoured.load(Ordering::Relaxed),
                ignored: self.inner.frag_needed.ignored.load(Ordering::Relaxed),
            },
        }
    }

    /// Says goodbye on every connection, stops dialling and waits (bounded) for every task.
    pub async fn stop(&self) {
        let _ = self.inner.shutdown.send(true);
        self.inner
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let tasks: Vec<_> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        let event_loop = self
            .event_loop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let wait = async {
            for t in tasks {
                let _ = t.await;
            }
            if let Some(l) = event_loop {
                let _ = l.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within 5 s");
        }
    }
}

/// Sends a digest to a few neighbours every [`gossip::ANTI_ENTROPY_INTERVAL`].
async fn periodic_gossip<D: Datapath>(inner: Arc<Inner<D>>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut tick = tokio::time::interval(gossip::ANTI_ENTROPY_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => inner.anti_entropy(),
            _ = connection::stopped(&mut shutdown) => return,
        }
    }
}

async fn accept_loop<D: Datapath>(
    inner: Arc<Inner<D>>,
    listener: TcpListener,
    events: mpsc::UnboundedSender<ConnEvent>,
) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let id = inner.next_conn_id();
                    let local = inner.hello();
                    let timings = inner.timings;
                    let events = events.clone();
                    let shutdown = inner.shutdown.subscribe();
                    let password = inner.password.clone();
                    let inner = inner.clone();
                    tokio::spawn(async move {
                        let outcome = connection::run(stream, id, false, local, password, timings, events, shutdown).await;
                        // A duplicate (both ends dialled each other) is routine and logged
                        // by the router already.
                        if !outcome.accepted
                            && !matches!(
                                outcome.error,
                                ConnectionError::Shutdown | ConnectionError::Duplicate(_)
                            )
                        {
                            tracing::warn!("connection from {addr} refused: {}", outcome.error);
                            if matches!(&outcome.error, ConnectionError::Protocol(e) if e.is_about_encryption()) {
                                let mut mesh = inner.mesh();
                                let now = SystemTime::now();
                                mesh.refused_inbound.retain(|_, (_, _, at)| {
                                    now.duration_since(*at).unwrap_or_default() < REFUSAL_SHOWN_FOR
                                });
                                mesh.refused_inbound.insert(addr.ip(), (addr, outcome.error.to_string(), now));
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept on {}: {e}", inner.listen);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = connection::stopped(&mut shutdown) => return,
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

mod channels;
pub mod gossip;
pub mod overlay;
pub mod path_mtu;
#[cfg(test)]
mod tests;
