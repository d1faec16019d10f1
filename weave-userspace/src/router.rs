//! The router: the driver of the mesh. It runs the event loop (connection events, the
//! burst-end publication of our record and route computation, the once-a-second path
//! check), hands what happens to the [`MeshCore`](core) and carries out the effects it
//! returns: answers and commands to the connections' tasks, peers put into, moved between
//! and taken out of the [overlays](crate::datapath::overlay), gossip ([`gossip`],
//! [`channels`]), routes ([`route_plan`]). It also accepts connections, keeps the
//! connection makers dialling the targets, and reports status.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use self::core::OverlaySwitches;
use self::core::{CoreConfig, Effect, Event, Handshake, MeshCore, PathSample};
use crate::crypto::{PresharedKey, SessionKeys};
use crate::datapath::overlay::{self, Overlays, Placement};
use crate::datapath::{Datapath, DatapathError, ProbeSeen};
use crate::ipam::identity::IpamIdentity;
use crate::mesh::command_queue::{CommandQueue, Refused};
use crate::mesh::connection::{
    self, ConnCommand, ConnEvent, ConnId, ConnectionError, EventSender, Timings,
};
use crate::mesh::connection_maker::{Maker, MakerHost, Target, TargetState};
use crate::mesh::control_refusal::{self, Refusal};
use crate::mesh::peer_name::{PeerName, ShortId};
use crate::mesh::protocol::Hello;
use crate::state::StateDir;

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
    /// Our IP allocation as peers see it in the handshake (none without IPAM).
    pub ipam: Option<IpamIdentitySource>,
}

/// Tells our IP allocation (range and seeds) when a connection starts: peers whose
/// allocation disagrees are refused ([`crate::ipam::identity`]).
#[derive(Clone)]
pub struct IpamIdentitySource(pub Arc<dyn Fn() -> IpamIdentity + Send + Sync>);

impl std::fmt::Debug for IpamIdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IpamIdentitySource({:?})", (self.0)())
    }
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

impl SleeveUse {
    /// Whether the kernel fast path carries the peers reached through a neighbour: without
    /// a sleeve, or when the sleeve is only a fallback; otherwise the sleeve relays them.
    pub fn fast_path_relays(self, has_sleeve: bool) -> bool {
        !has_sleeve || self == SleeveUse::Fallback
    }
}

/// Longest run of events the event loop handles before it publishes our record and
/// computes routes (each still at most as often as their intervals allow).
const MAX_BURST: Duration = Duration::from_millis(50);

/// Weave's default connection limit.
pub const DEFAULT_CONN_LIMIT: usize = 200;

/// Most inbound handshakes under way at once; a connection beyond them is closed at once
/// (a peer's maker dials again after its backoff). Each lasts at most the handshake timeout.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// Binds the control port (done early, so that a port in use fails before anything else).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, RouterError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| RouterError::Listen { addr, error })
}

/// The driver's side of one connection: how to talk to its task.
#[derive(Debug)]
struct Link {
    commands: CommandQueue,
    /// The keys of an encrypted connection (the sleeve uses them too).
    session: Option<Arc<SessionKeys>>,
    /// The answer to the handshake, until it is given.
    reply: Option<tokio::sync::oneshot::Sender<Result<(), ConnectionError>>>,
}

/// The mesh as this router sees it: the connections and their decisions ([`MeshCore`]),
/// how to reach each connection's task, and the targets dialled.
#[derive(Debug)]
struct Mesh {
    core: MeshCore,
    links: HashMap<ConnId, Link>,
    targets: BTreeMap<Target, TargetState>,
    /// Targets dialled because gossip named them (forgotten when the peer leaves gossip).
    discovered: std::collections::BTreeSet<Target>,
    /// Peers gossip named that we leave to dial us (their name is higher), since when.
    discovery_waits: BTreeMap<PeerName, tokio::time::Instant>,
    /// Discovered targets let go after a refusal for a connection limit, until when
    /// ([`gossip::DISCOVERY_FULL_HOLD`]).
    discovery_full: BTreeMap<Target, tokio::time::Instant>,
    /// When gossip was last looked through for peers to dial ([`gossip::DISCOVERY_CHECK`]).
    discovery_checked_at: Option<tokio::time::Instant>,
    /// Inbound connections refused for want of the right password or for an IP allocation
    /// that disagrees with ours, by remote address: why and when (shown in status for
    /// [`REFUSAL_SHOWN_FOR`]).
    refused_inbound: BTreeMap<std::net::IpAddr, (SocketAddr, String, SystemTime)>,
}

impl Mesh {
    /// Sends a command to connection `id`'s task, if it is still there. Never waits: when
    /// the connection's queue is full its peer does not read, and the connection closes as
    /// a slow peer (logged when it is lost, counted in `/metrics`).
    fn send(&self, id: ConnId, command: ConnCommand) {
        if let Some(link) = self.links.get(&id) {
            if let Err(Refused::Overrun { first: true }) = link.commands.send(command) {
                let peer = self.core.connection(id).map(|c| c.describe());
                tracing::debug!(
                    "connection {} does not keep up: its queue is full, closing it",
                    peer.unwrap_or_else(|| id.to_string())
                );
            }
        }
    }
}

struct Inner<D> {
    timings: Timings,
    datapath: Arc<D>,
    mesh: Mutex<Mesh>,
    events: Mutex<Option<EventSender>>,
    shutdown: watch::Sender<bool>,
    next_id: AtomicU64,
    listen: SocketAddr,
    state: Option<Arc<StateDir>>,
    view: Mutex<gossip::MeshView>,
    discovery: bool,
    conn_limit: usize,
    password: Option<Arc<PresharedKey>>,
    /// The fast path and the sleeve, as one peer's frames see them.
    overlays: Overlays<D>,
    sleeve_use: SleeveUse,
    /// The last path-MTU probe round sent ([`Inner::next_probe_round`]).
    probe_round: std::sync::atomic::AtomicU32,
    /// ICMP "fragmentation needed" about our outer packets, for the path-MTU searches.
    frag_needed: Arc<crate::datapath::frag_needed::FragNeededHints>,
    /// Gossip channels of other subsystems (IPAM, DNS).
    channels: std::sync::RwLock<crate::mesh::gossip_channel::Channels>,
    /// Our IP allocation, sent in every handshake.
    ipam: Option<IpamIdentitySource>,
    /// The targets as last stored in the state dir (for `launch --resume`).
    stored_targets: Mutex<Option<crate::state::StoredTargets>>,
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

    /// Hands a connection's event to the core (gossip to the gossip code) and runs what
    /// it decides.
    async fn handle(&self, event: ConnEvent) {
        let event = match event {
            ConnEvent::Handshaken {
                id,
                version,
                outbound,
                remote,
                hello,
                ipam,
                session,
                commands,
                reply,
            } => {
                let encrypted = session.is_some();
                self.mesh().links.insert(
                    id,
                    Link {
                        commands,
                        session,
                        reply: Some(reply),
                    },
                );
                Event::Handshaken(Handshake {
                    id,
                    version,
                    outbound,
                    remote,
                    hello,
                    ipam,
                    encrypted,
                })
            }
            ConnEvent::ShortIdTaken { short_id } => Event::ShortIdTaken { short_id },
            ConnEvent::FastdpStatus { id, heard } => Event::FastdpStatus { id, heard },
            ConnEvent::PathMtuSeen { id, round, largest } => {
                Event::PathMtuSeen { id, round, largest }
            }
            ConnEvent::RemoteReady { id } => Event::RemoteReady { id },
            ConnEvent::Gossip { id, message } => return self.on_gossip(id, message).await,
            ConnEvent::Closed { id, error } => {
                self.mesh().links.remove(&id);
                Event::Closed {
                    id,
                    error: error.to_string(),
                }
            }
        };
        self.run(event).await;
    }

    /// Gives the core an event and runs the effects it returns, and those that follow.
    async fn run(&self, event: Event) {
        let mut effects: std::collections::VecDeque<Effect> =
            self.mesh().core.on_event(event).into();
        while let Some(effect) = effects.pop_front() {
            effects.extend(self.execute(effect).await);
        }
    }

    /// Runs one effect; returns the effects that follow from its outcome.
    async fn execute(&self, effect: Effect) -> Vec<Effect> {
        match effect {
            Effect::Answer { id, result } => {
                let mut mesh = self.mesh();
                let refused = result.is_err();
                if let Some(reply) = mesh.links.get_mut(&id).and_then(|l| l.reply.take()) {
                    let _ = reply.send(result);
                }
                if refused {
                    mesh.links.remove(&id);
                } else if let Some(remote) = mesh.core.connection(id).filter(|c| !c.outbound) {
                    let ip = remote.remote.ip();
                    mesh.refused_inbound.remove(&ip);
                }
            }
            Effect::Close { id, error } => self.mesh().send(id, ConnCommand::Close(error)),
            Effect::TakeNewShortId => self.take_new_short_id().await,
            Effect::Place {
                id,
                placement,
                trusted_in_the_clear,
            } => {
                let Some(session) = self.mesh().links.get(&id).map(|l| l.session.clone()) else {
                    return Vec::new();
                };
                if trusted_in_the_clear {
                    if let Some(c) = self.mesh().core.connection(id) {
                        tracing::info!(
                            "{}({}) at {} is in a trusted subnet both ways: its data goes unencrypted through the fast path",
                            c.hello.name,
                            c.hello.nickname,
                            c.underlay
                        );
                    }
                }
                let result = self.overlays.place(placement, session.as_deref()).await;
                self.view().installed.forget(&placement.name);
                let error = result.err().map(|e| e.to_string());
                return self.mesh().core.on_event(Event::Placed { id, error });
            }
            Effect::Remove(placement) => {
                if let Err(e) = self.overlays.remove(placement).await {
                    tracing::warn!(
                        "cannot remove peer {} from the data path: {e}",
                        placement.name
                    );
                }
            }
            Effect::Unroute(placement) => {
                if let Err(e) = self.unroute_peer(placement).await {
                    tracing::error!(
                        "cannot remove peer {} from the data path: {e}",
                        placement.name
                    );
                }
                self.view().installed.forget(&placement.name);
            }
            Effect::SendReady { id } => self.mesh().send(id, ConnCommand::SendReady),
            Effect::Send { id, message } => self.send_to(id, &message),
            Effect::StartGossip { id, digest } => {
                if digest {
                    self.send_digest(id, false);
                }
                self.sync_channels(id);
            }
            Effect::ConnectionsChanged => self.connections_changed().await,
            Effect::Switch { placement, to, who } => {
                self.overlays.switch(placement, to, &who).await;
                // The peers relayed through it change hands between the kernel and the
                // sleeve (`route_plan::plan`).
                self.routes_stale();
            }
            Effect::Heartbeats(heartbeats) => {
                if let Err(e) = self.datapath.send_heartbeats(&heartbeats) {
                    tracing::debug!("fast-path heartbeats: {e}");
                }
            }
            Effect::SleeveProbe {
                peer,
                round,
                outer_len,
            } => {
                if let Some(sleeve) = self.overlays.sleeve() {
                    if let Err(e) = sleeve.send_probe(peer, round, outer_len) {
                        tracing::debug!("sleeve probe of {outer_len} bytes to peer {peer}: {e}");
                    }
                }
            }
            Effect::SleevePathMtu { peer, mtu } => {
                if let Some(sleeve) = self.overlays.sleeve() {
                    sleeve.set_path_mtu(peer, mtu);
                }
            }
        }
        Vec::new()
    }
}

impl<D: Datapath> Inner<D> {
    fn hello(&self) -> Hello {
        self.mesh().core.local().clone()
    }

    /// Takes the peer of a lost connection out of the overlays as a direct peer; the next
    /// route plan says whether a neighbour still reaches it
    /// ([`Installed::unrouted`](route_plan::Installed)): relayed, its traffic goes on at
    /// once; unreachable, it is removed then.
    async fn unroute_peer(&self, placement: Placement) -> Result<(), DatapathError> {
        if self.overlays.unroute(placement).await? {
            self.view()
                .installed
                .unrouted
                .insert(placement.name, placement.peer);
        }
        Ok(())
    }

    /// The largest outer packet a probe may be: the underlay's MTU (or `--mtu` plus the
    /// VXLAN overhead).
    fn path_mtu_ceiling(datapath: &D) -> u16 {
        let max = datapath.max_container_mtu() + weave_ebpf_common::VXLAN_OVERHEAD;
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
            let next = weave_ebpf_common::heartbeat::next_round(clock, prev);
            match self.probe_round.compare_exchange(
                prev,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// Every [`overlay::CHECK_EVERY`]: the underlay's ICMP hints, then what arrived from
    /// each peer, to the core ([`Event::PathCheck`]: heartbeats, probes, reports, switches),
    /// then the container MTU.
    async fn check_paths(&self) {
        for (addr, mtu) in self.take_frag_needed() {
            self.run(Event::FragNeeded { addr, mtu }).await;
        }
        if self.mesh().core.checks_paths() {
            match self.path_samples() {
                Ok(received) => {
                    let event = Event::PathCheck {
                        now: Instant::now(),
                        probe_round: self.next_probe_round(),
                        received,
                    };
                    self.run(event).await;
                }
                Err(e) => tracing::warn!("cannot read the data path's counters: {e}"),
            }
        }
        // Also after an ICMP hint, or a connection that went or moved to the sleeve.
        self.apply_container_mtu().await;
    }

    /// What arrived from each peer: fast-path heartbeats, and the newest probe round
    /// through either path.
    fn path_samples(&self) -> Result<HashMap<u16, PathSample>, DatapathError> {
        let by_peer = self.datapath.peer_traffic()?;
        let mut received: HashMap<u16, PathSample> = by_peer
            .into_iter()
            .map(|t| {
                let sample = PathSample {
                    rx_heartbeats: t.rx_heartbeats,
                    rx_echoes: t.rx_heartbeat_echoes,
                    probe: t.probe,
                };
                (t.short_id, sample)
            })
            .collect();
        if let Some(sleeve) = self.overlays.sleeve() {
            let peers = self.mesh().core.peer_short_ids();
            for peer in peers.into_iter().map(ShortId::get) {
                let sample = received.entry(peer).or_default();
                sample.probe = ProbeSeen::merge(
                    sample
                        .probe
                        .map(|p| (p.round, p.largest))
                        .into_iter()
                        .chain(sleeve.probe_seen(peer)),
                );
            }
        }
        Ok(received)
    }

    /// Gives containers the smallest MTU the fast paths to the peers verified (the
    /// configured one while none is smaller).
    async fn apply_container_mtu(&self) {
        let verified = self.mesh().core.verified_container_mtu();
        let wanted = verified
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
        let change = self.mesh().core.short_id_change(std::time::Instant::now());
        if let self::core::ShortIdChange::Held { first } = change {
            crate::mesh::gossip_refusal::REFUSED
                .count(crate::mesh::gossip_refusal::Refusal::ShortIdClaim);
            if first {
                tracing::warn!(
                    "short ID {} contested again within {} s of our last change: keeping it (further claims until then are counted, not logged)",
                    self.hello().short_id,
                    self::core::SHORT_ID_HOLD.as_secs()
                );
            }
            return;
        }
        let mut in_use = self.view().topology.short_ids_in_use();
        in_use.extend(self.mesh().core.peer_short_ids());
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
        let old = self.hello().short_id;
        if old == new {
            return;
        }
        // Connections made from now on carry the new ID; those up now close at the end.
        let closes = self.mesh().core.set_short_id(new);
        tracing::warn!("short ID {old} clashes with another peer's; taking {new}");
        if let Some(state) = &self.state {
            let identity = crate::state::Identity {
                name: self.hello().name,
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
        for effect in closes {
            if let Effect::Close { id, error } = effect {
                mesh.send(id, ConnCommand::Close(error));
            }
        }
    }

    /// After a burst of events: publishes our record and recomputes routes (each at most
    /// every 100 ms) and dials newly learned peers. Returns when to come back, if waiting.
    async fn after_events(self: &Arc<Self>) -> Option<tokio::time::Instant> {
        let publish_at = self.publish_if_pending();
        let asks_at = self.ask_for_gaps_if_due();
        let routes_at = self.apply_routes_if_due().await;
        let discovery = self.discovery_targets();
        for target in discovery.dial {
            tracing::info!("dialling {target}, learned from gossip");
            self.dial(target);
        }
        if discovery.targets_changed {
            self.store_targets();
        }
        publish_at
            .into_iter()
            .chain(asks_at)
            .chain(routes_at)
            .chain(discovery.look_again)
            .min()
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(tokio::spawn(f));
    }

    /// Stores the targets in the state dir when they changed (given and learned apart),
    /// for `launch --resume`; not while stopping (peers leaving gossip then are no news).
    fn store_targets(&self) {
        let Some(state) = &self.state else {
            return;
        };
        if *self.shutdown.borrow() {
            return;
        }
        let now = {
            let mesh = self.mesh();
            let (learned, given): (Vec<&Target>, Vec<&Target>) = mesh
                .targets
                .keys()
                .partition(|t| mesh.discovered.contains(t));
            crate::state::StoredTargets {
                given: given.iter().map(ToString::to_string).collect(),
                learned: learned.iter().map(ToString::to_string).collect(),
            }
        };
        let mut stored = self
            .stored_targets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // A run that never had a target leaves the last run's list for a later --resume.
        let nothing_yet = stored.is_none() && now == crate::state::StoredTargets::default();
        if nothing_yet || stored.as_ref() == Some(&now) {
            return;
        }
        match state.save_targets(&now) {
            Ok(()) => *stored = Some(now),
            Err(e) => tracing::error!("cannot store the peers dialled: {e}"),
        }
    }

    /// Keeps a connection to `target` (no-op when it is a target already or when stopping),
    /// and stores the targets.
    fn connect(self: &Arc<Self>, target: Target) {
        self.dial(target);
        self.store_targets();
    }

    /// Keeps a connection to `target` (no-op when it is a target already or when stopping);
    /// the caller stores the targets (`store_targets` syncs a file to disk: once for the
    /// whole burst of peers a join makes known, not once per peer).
    fn dial(self: &Arc<Self>, target: Target) {
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

    fn let_go_when_full(&self, target: &Target) -> bool {
        {
            let mut mesh = self.mesh();
            if !mesh.discovered.remove(target) {
                return false;
            }
            mesh.targets.remove(target);
            let until = tokio::time::Instant::now() + gossip::DISCOVERY_FULL_HOLD;
            mesh.discovery_full.insert(target.clone(), until);
        }
        self.store_targets();
        true
    }

    fn is_connected(&self, peer: PeerName, except: ConnId) -> bool {
        self.mesh().core.is_connected(peer, except)
    }

    fn next_conn_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn local_hello(&self) -> Hello {
        self.hello()
    }

    fn local_ipam(&self) -> Option<IpamIdentity> {
        self.ipam.as_ref().map(|source| (source.0)())
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
        let (events_tx, events_rx) = mpsc::channel(connection::EVENT_QUEUE);
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
        let core = MeshCore::new(
            config.local,
            CoreConfig {
                conn_limit: config.conn_limit,
                has_sleeve: config.sleeve.is_some(),
                sleeve_use: config.sleeve_use,
                path_mtu_ceiling: Inner::path_mtu_ceiling(&*datapath),
            },
        );
        let inner = Arc::new(Inner {
            view: Mutex::new(gossip::MeshView::new(ourself)),
            timings: config.timings,
            datapath: datapath.clone(),
            mesh: Mutex::new(Mesh {
                core,
                links: HashMap::new(),
                targets: BTreeMap::new(),
                discovered: Default::default(),
                discovery_waits: BTreeMap::new(),
                discovery_full: BTreeMap::new(),
                discovery_checked_at: None,
                refused_inbound: BTreeMap::new(),
            }),
            events: Mutex::new(Some(events_tx.clone())),
            shutdown,
            next_id: AtomicU64::new(1),
            listen,
            state,
            discovery: config.discovery,
            conn_limit: config.conn_limit,
            password: config.password,
            overlays: Overlays::new(datapath.clone(), config.sleeve),
            sleeve_use: config.sleeve_use,
            probe_round: std::sync::atomic::AtomicU32::new(0),
            frag_needed,
            channels: Default::default(),
            ipam: config.ipam,
            stored_targets: Mutex::default(),
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
                            // A switch makes the routes stale: plan them now.
                            let due = inner.after_events().await;
                            wake_at = wake_at.into_iter().chain(due).min();
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
        let forgotten: Vec<Target> = {
            let mut mesh = self.inner.mesh();
            targets
                .iter()
                .filter(|t| mesh.targets.remove(t).is_some())
                .cloned()
                .collect()
        };
        self.inner.store_targets();
        forgotten
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
    events: EventSender,
) {
    let mut shutdown = inner.shutdown.subscribe();
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                        control_refusal::refuse(
                            Refusal::HandshakeLimit,
                            format_args!(
                                "connection from {addr} refused: {MAX_PENDING_HANDSHAKES} handshakes are under way already"
                            ),
                        );
                        drop(stream);
                        continue;
                    };
                    let id = inner.next_conn_id();
                    let local = inner.hello();
                    let local_ipam = inner.local_ipam();
                    let timings = inner.timings;
                    let events = events.clone();
                    let shutdown = inner.shutdown.subscribe();
                    let password = inner.password.clone();
                    let inner = inner.clone();
                    tokio::spawn(async move {
                        let outcome = connection::run(stream, id, false, local, local_ipam, password, timings, events, shutdown, Some(permit)).await;
                        // A duplicate (both ends dialled each other) is routine and logged
                        // by the router already.
                        if !outcome.accepted
                            && !matches!(
                                outcome.error,
                                ConnectionError::Shutdown | ConnectionError::Duplicate(_)
                            )
                        {
                            let reason = outcome.error.refusal().unwrap_or(Refusal::Handshake);
                            control_refusal::refuse(reason, format_args!("connection from {addr} refused: {}", outcome.error));
                            let shown = match &outcome.error {
                                ConnectionError::Protocol(e) => e.is_about_encryption(),
                                ConnectionError::IpamMismatch(_) => true,
                                _ => false,
                            };
                            if shown {
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

mod channels;
pub mod core;
pub mod hold;
mod status;
pub use status::{
    format_time, ConnectionInfo, FragNeededCounts, MeshStatus, PeerInfo, RelayedPeer,
    REFUSAL_SHOWN_FOR,
};
pub mod answer_pace;
pub mod gossip;
pub mod route_plan;
#[cfg(test)]
mod tests;
