//! The router's decisions about its connections, without I/O: which handshaken connection
//! to keep (one per peer, short-ID clashes), when a peer goes into or out of the data path,
//! when a connection is established, and what the once-a-second path check sends and
//! changes (fast-path heartbeats, path-MTU probes, reports to the peer, switches between the
//! fast path and the sleeve).
//!
//! [`MeshCore::on_event`] takes what happened and returns what to do as [`Effect`]s; the
//! driver in [`super`] runs them against sockets, the data path and the sleeve, and feeds
//! back what they answer ([`Event::Placed`]). Nothing here waits, reads a clock or touches
//! a socket, so the tests drive it with events and assert effects.
//!
//! A direct peer whose connection goes while we hear its fast path is *held*
//! ([`super::hold`]): its entries stay, our heartbeats keep going to it, and each path
//! check decides from its heartbeats and the echoes of ours whether to go on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use super::hold::{HeldPeer, HoldVerdict};
use super::SleeveUse;
use crate::datapath::overlay::heartbeat_duty::HeartbeatDuty;
use crate::datapath::overlay::path_mtu::{self, FloorEchoes, PathMtuSearch};
use crate::datapath::overlay::{Overlay, OverlayChoice, Placement};
use crate::datapath::{DatapathPeer, Heartbeat, ProbeSeen};
use crate::mesh::connection::{ConnId, ConnectionError, IpamPair};
use crate::mesh::peer_name::{PeerName, ShortId};
use crate::mesh::protocol::{
    Hello, Message, FASTDP_STATUS_VERSION, HEARTBEAT_DUTY_VERSION, PATH_MTU_VERSION,
    SLEEVE_BUNDLE_VERSION, SLEEVE_RELAY_VERSION,
};
use crate::mesh::topology::ConnectionSummary;
use crate::sleeve::SleeveFeatures;

/// What the core is configured with.
#[derive(Clone, Copy, Debug)]
pub struct CoreConfig {
    /// Most connections kept at once.
    pub conn_limit: usize,
    /// Whether there is a sleeve to carry peers (there is none with the in-memory data path).
    pub has_sleeve: bool,
    /// Which peers the sleeve carries.
    pub sleeve_use: SleeveUse,
    /// The largest outer packet a path-MTU probe may be.
    pub path_mtu_ceiling: u16,
}

/// An accepted connection.
#[derive(Debug)]
pub struct Conn {
    /// The protocol version spoken on it.
    pub version: u8,
    pub outbound: bool,
    pub remote: SocketAddr,
    pub hello: Hello,
    /// Where the peer's data goes and comes from: the address its connection comes from
    /// (or was dialled at), not the one it claims ([`data_address`]).
    pub underlay: Ipv4Addr,
    /// The connection is encrypted.
    pub encrypted: bool,
    /// Both ends trust each other's subnet (`--trusted-subnets`): data skips encryption
    /// and goes through the kernel fast path.
    pub trusted: bool,
    pub local_ready: bool,
    pub remote_ready: bool,
    /// The data path carrying the peer's frames now.
    pub overlay: Overlay,
    /// The choice between the two paths, for a peer that may fall back to the sleeve (we
    /// have one, the fast path is allowed, the peer speaks version 3); else the path never
    /// changes.
    pub choice: Option<OverlayChoice>,
    /// The path MTU to the peer, probed (the peer speaks version 4, and a path that can
    /// carry it is there: the fast path, or a sleeve).
    pub path_mtu: Option<PathMtuSearch>,
    /// What we last told the peer of its probes that reached us.
    pub probes_reported: Option<ProbeSeen>,
    /// Plain heartbeats of the floor's size while the path MTU is searched, and their
    /// echoes.
    pub floor_echoes: FloorEchoes,
    /// Whether our plain heartbeats go at every check or only while the peer's do not
    /// arrive.
    pub heartbeat_duty: HeartbeatDuty,
}

impl Conn {
    pub fn established(&self) -> bool {
        self.local_ready && self.remote_ready
    }

    /// The MTU containers may use towards the peer over the fast path: the verified path
    /// MTU less the VXLAN overhead, when verified.
    pub fn verified_container_mtu(&self) -> Option<u32> {
        let limit = self.path_mtu.as_ref()?.limit()?;
        Some(u32::from(limit).saturating_sub(weave_ebpf_common::VXLAN_OVERHEAD))
    }

    /// The peer as the fast path knows it: directly connected.
    pub fn datapath_peer(&self) -> DatapathPeer {
        DatapathPeer {
            short_id: self.hello.short_id,
            underlay: self.underlay,
            next_hop: self.hello.short_id,
        }
    }

    /// Where the peer sits in the data paths.
    pub fn placement(&self) -> Placement {
        Placement {
            name: self.hello.name,
            peer: self.datapath_peer(),
            overlay: self.overlay,
            watched: self.choice.is_some(),
            sleeve: SleeveFeatures {
                relays: self.version >= SLEEVE_RELAY_VERSION,
                bundles: self.version >= SLEEVE_BUNDLE_VERSION,
            },
        }
    }

    /// `to name(nickname)` or `from name(nickname)`, for logs.
    pub fn describe(&self) -> String {
        format!(
            "{} {}({})",
            arrow(self.outbound),
            self.hello.name,
            self.hello.nickname
        )
    }
}

/// A connection that finished its handshake.
#[derive(Debug)]
pub struct Handshake {
    pub id: ConnId,
    /// The protocol version both ends speak.
    pub version: u8,
    pub outbound: bool,
    pub remote: SocketAddr,
    pub hello: Hello,
    /// Our IP allocation and the peer's, as the handshake carried them.
    pub ipam: IpamPair,
    /// The connection is encrypted (it has session keys).
    pub encrypted: bool,
}

/// What happened, as the core learns it.
#[derive(Debug)]
pub enum Event {
    /// A connection finished its handshake: keep it or not ([`Effect::Answer`]).
    Handshaken(Handshake),
    /// The data paths took the peer of connection `id` in ([`Effect::Place`]), or failed to.
    Placed { id: ConnId, error: Option<String> },
    /// The remote end put us in its data path.
    RemoteReady { id: ConnId },
    /// The connection is gone.
    Closed { id: ConnId, error: String },
    /// A peer refused us: another router has our short ID.
    ShortIdTaken { short_id: ShortId },
    /// The peer says whether it hears our fast-path heartbeats.
    FastdpStatus { id: ConnId, heard: bool },
    /// The peer says which of our path-MTU probes reached it.
    PathMtuSeen {
        id: ConnId,
        round: u32,
        largest: u16,
    },
    /// The underlay says packets to `addr` must not exceed `mtu` bytes.
    FragNeeded { addr: Ipv4Addr, mtu: u16 },
    /// The once-a-second check of the paths to the peers: what arrived from each peer
    /// since the start (by short ID), and a fresh probe round number.
    PathCheck {
        now: Instant,
        probe_round: u32,
        received: HashMap<u16, PathSample>,
    },
}

/// What arrived from a peer, as the path check reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathSample {
    /// Fast-path heartbeats (and probes) received so far.
    pub rx_heartbeats: u64,
    /// Echoes of our heartbeats the peer's kernel answered so far.
    pub rx_echoes: u64,
    /// The newest probe round received, through either path, and its largest probe.
    pub probe: Option<ProbeSeen>,
}

/// What the driver is to do.
#[derive(Debug)]
pub enum Effect {
    /// Answer a handshaken connection: go on, or close with this error.
    Answer {
        id: ConnId,
        result: Result<(), ConnectionError>,
    },
    /// Close a connection.
    Close { id: ConnId, error: ConnectionError },
    /// Our short ID is contested: take another one ([`MeshCore::set_short_id`]).
    TakeNewShortId,
    /// Put the peer of connection `id` into the data paths, then report [`Event::Placed`].
    Place {
        id: ConnId,
        placement: Placement,
        /// Logged: the peer's data goes through the fast path although a password is set.
        trusted_in_the_clear: bool,
    },
    /// Take the peer of a replaced connection out of the data paths.
    Remove(Placement),
    /// Take the peer of a lost connection out of the data paths as a direct peer (the
    /// routes may still reach it through a neighbour).
    Unroute(Placement),
    /// Tell the peer it is in our data path.
    SendReady { id: ConnId },
    /// Send a message on a connection.
    Send { id: ConnId, message: Message },
    /// A connection is ready: start gossip on it (our digest when `digest`, the gossip
    /// channels' state).
    StartGossip { id: ConnId, digest: bool },
    /// Our connections changed: publish them, recompute routes.
    ConnectionsChanged,
    /// Move a peer to another data path.
    Switch {
        placement: Placement,
        to: Overlay,
        who: String,
    },
    /// Send fast-path heartbeats and probes.
    Heartbeats(Vec<Heartbeat>),
    /// Send a path-MTU probe through the sleeve.
    SleeveProbe {
        peer: u16,
        round: u32,
        outer_len: u16,
    },
    /// Cut the sleeve's datagrams to a peer to this path MTU.
    SleevePathMtu { peer: u16, mtu: u16 },
}

/// Whether to take a freshly handshaken connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
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

/// Switches of connections between the two data paths, by the path switched to.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct OverlaySwitches {
    pub to_sleeve: u64,
    pub to_fastdp: u64,
}

/// The connections of one router and the decisions about them.
#[derive(Debug)]
pub struct MeshCore {
    /// Who we are; only the short ID ever changes (after a clash).
    local: Hello,
    config: CoreConfig,
    connections: BTreeMap<ConnId, Conn>,
    /// The one connection kept per peer.
    by_peer: HashMap<PeerName, ConnId>,
    switches: OverlaySwitches,
    /// When we last gave up our short ID, and whether a claim was held off since.
    short_id_changed: Option<(Instant, bool)>,
    /// Kept connections lost since the start (Weave's `TerminationCount`).
    terminations: u64,
    /// Direct peers whose connection went while their fast path answers, by name: still
    /// in the data path ([`super::hold`]).
    held: BTreeMap<PeerName, HeldPeer>,
}

/// Shortest time between two changes of our short ID: whoever keeps claiming ours (forged
/// records, handshakes) cannot make us close every connection more often than this.
pub const SHORT_ID_HOLD: std::time::Duration = std::time::Duration::from_secs(300);

/// Whether we may give up our short ID now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShortIdChange {
    Allowed,
    /// Changed less than [`SHORT_ID_HOLD`] ago; `first` for the first claim held off since.
    Held {
        first: bool,
    },
}

impl MeshCore {
    pub fn new(local: Hello, config: CoreConfig) -> Self {
        Self {
            local,
            config,
            connections: BTreeMap::new(),
            by_peer: HashMap::new(),
            switches: OverlaySwitches::default(),
            short_id_changed: None,
            terminations: 0,
            held: BTreeMap::new(),
        }
    }

    /// Who we are now.
    pub fn local(&self) -> &Hello {
        &self.local
    }

    pub fn connections(&self) -> impl Iterator<Item = (&ConnId, &Conn)> {
        self.connections.iter()
    }

    pub fn connection(&self, id: ConnId) -> Option<&Conn> {
        self.connections.get(&id)
    }

    /// The peers we keep a connection with.
    pub fn direct_peers(&self) -> impl Iterator<Item = &PeerName> {
        self.by_peer.keys()
    }

    /// The peers we keep a connection with, each with the UID of its run (its hello's).
    pub fn direct_runs(&self) -> BTreeMap<PeerName, u64> {
        self.by_peer
            .iter()
            .map(|(name, id)| (*name, self.connections[id].hello.uid))
            .collect()
    }

    /// The peers we keep a connection with, each with the short ID of its hello (the one
    /// its connection put in the data path).
    pub fn direct_short_ids(&self) -> BTreeMap<PeerName, ShortId> {
        self.by_peer
            .iter()
            .map(|(name, id)| (*name, self.connections[id].hello.short_id))
            .collect()
    }

    /// Direct peers held in the data path after their connection went.
    pub fn held(&self) -> impl Iterator<Item = &HeldPeer> {
        self.held.values()
    }

    /// The held peers, each with the short ID its lost connection put in the data path:
    /// the route plan leaves them alone as it does direct peers, and our broadcasts still
    /// go to them.
    pub fn held_short_ids(&self) -> BTreeMap<PeerName, ShortId> {
        self.held
            .iter()
            .map(|(name, h)| (*name, h.placement.peer.short_id))
            .collect()
    }

    /// The peers whose frames the sleeve carries now (a password, `--datapath sleeve`, a
    /// fallback): the fast path cannot hand them frames of others.
    pub fn sleeve_peers(&self) -> impl Iterator<Item = &PeerName> {
        self.connections
            .values()
            .filter(|c| c.overlay == Overlay::Sleeve)
            .map(|c| &c.hello.name)
    }

    pub fn is_direct(&self, peer: &PeerName) -> bool {
        self.by_peer.contains_key(peer)
    }

    /// Whether a connection other than `except` is kept with `peer`.
    pub fn is_connected(&self, peer: PeerName, except: ConnId) -> bool {
        self.by_peer.get(&peer).is_some_and(|id| *id != except)
    }

    /// Peers we keep connections with.
    pub fn peer_count(&self) -> usize {
        self.by_peer.len()
    }

    pub fn switches(&self) -> OverlaySwitches {
        self.switches
    }

    /// Kept connections lost since the start; one replaced by a better one is not counted.
    pub fn terminations(&self) -> u64 {
        self.terminations
    }

    /// Short IDs of our connections' peers.
    pub fn peer_short_ids(&self) -> HashSet<ShortId> {
        self.connections
            .values()
            .map(|c| c.hello.short_id)
            .collect()
    }

    /// Our connections as our topology record lists them.
    pub fn summaries(&self) -> Vec<ConnectionSummary> {
        self.connections
            .values()
            .map(|c| ConnectionSummary {
                remote: c.hello.name,
                address: c.remote,
                outbound: c.outbound,
                established: c.established(),
            })
            .collect()
    }

    /// Whether the path check has anything to do: an established connection whose paths
    /// are watched or probed.
    pub fn checks_paths(&self) -> bool {
        !self.held.is_empty()
            || self
                .connections
                .values()
                .any(|c| c.established() && (c.choice.is_some() || c.path_mtu.is_some()))
    }

    /// The MTU the fast paths to the peers verified for containers, the smallest of them.
    pub fn verified_container_mtu(&self) -> Option<u32> {
        self.connections
            .values()
            .filter(|c| c.overlay == Overlay::Fastdp)
            .filter_map(Conn::verified_container_mtu)
            .min()
    }

    /// Whether our short ID may change at `now` (at most once per [`SHORT_ID_HOLD`]); an
    /// [`ShortIdChange::Allowed`] counts as the change.
    pub fn short_id_change(&mut self, now: Instant) -> ShortIdChange {
        match &mut self.short_id_changed {
            Some((at, held)) if now.saturating_duration_since(*at) < SHORT_ID_HOLD => {
                let first = !*held;
                *held = true;
                ShortIdChange::Held { first }
            }
            _ => {
                self.short_id_changed = Some((now, false));
                ShortIdChange::Allowed
            }
        }
    }

    /// Takes `new` as our short ID; every connection closes so that peers learn it.
    pub fn set_short_id(&mut self, new: ShortId) -> Vec<Effect> {
        let old = std::mem::replace(&mut self.local.short_id, new);
        if old == new {
            return Vec::new();
        }
        self.connections
            .keys()
            .map(|&id| Effect::Close {
                id,
                error: ConnectionError::Refused(format!("short ID changed from {old} to {new}")),
            })
            .collect()
    }

    pub fn on_event(&mut self, event: Event) -> Vec<Effect> {
        let mut effects = Vec::new();
        match event {
            Event::Handshaken(handshake) => self.handshaken(handshake, &mut effects),
            Event::Placed { id, error } => self.placed(id, error, &mut effects),
            Event::RemoteReady { id } => {
                if let Some(c) = self.connections.get_mut(&id) {
                    c.remote_ready = true;
                    if c.established() {
                        tracing::info!("connection {} {} established", c.describe(), c.remote);
                        effects.push(Effect::ConnectionsChanged);
                    }
                }
            }
            Event::Closed { id, error } => {
                let Some(c) = self.connections.remove(&id) else {
                    return effects;
                };
                if self.by_peer.get(&c.hello.name) != Some(&id) {
                    return effects;
                }
                self.by_peer.remove(&c.hello.name);
                self.terminations += 1;
                tracing::info!("connection {} {} lost: {error}", c.describe(), c.remote);
                match Self::hold_on_loss(&c) {
                    Some(held) => {
                        tracing::info!(
                            "peer {}({}): its fast path answers; keeping it in the data path while it does",
                            c.hello.name,
                            c.hello.nickname
                        );
                        self.held.insert(c.hello.name, held);
                    }
                    None => effects.push(Effect::Unroute(c.placement())),
                }
                effects.push(Effect::ConnectionsChanged);
            }
            Event::ShortIdTaken { short_id } => {
                // Refused by a peer that knows another router with our short ID (a gossip
                // of it never reaches us while we are refused): take another one.
                if short_id == self.local.short_id {
                    effects.push(Effect::TakeNewShortId);
                }
            }
            Event::FastdpStatus { id, heard } => {
                let switch = self
                    .connections
                    .get_mut(&id)
                    .and_then(|c| c.choice.as_mut())
                    .and_then(|choice| choice.remote_report(heard).switch);
                if let Some(to) = switch {
                    self.switch(id, to, &mut effects);
                }
            }
            Event::PathMtuSeen { id, round, largest } => {
                if let Some(search) = self
                    .connections
                    .get_mut(&id)
                    .and_then(|c| c.path_mtu.as_mut())
                {
                    search.seen(round, largest);
                }
            }
            Event::FragNeeded { addr, mtu } => {
                for c in self.connections.values_mut().filter(|c| c.underlay == addr) {
                    let Some(search) = c.path_mtu.as_mut() else {
                        continue;
                    };
                    if search.frag_needed(mtu) {
                        if self.config.has_sleeve {
                            effects.push(Effect::SleevePathMtu {
                                peer: c.hello.short_id.get(),
                                mtu,
                            });
                        }
                        tracing::info!(
                            "connection {}: the underlay says packets to {addr} must not exceed {mtu} bytes; probing below that",
                            c.describe()
                        );
                    }
                }
            }
            Event::PathCheck {
                now,
                probe_round,
                received,
            } => self.check_paths(now, probe_round, &received, &mut effects),
        }
        effects
    }

    /// One connection per peer: when two exist, keep the one dialled by the peer with the
    /// higher name (both ends decide alike), and prefer a new run of the peer over an old one.
    pub(crate) fn admit(&self, outbound: bool, hello: &Hello) -> Admission {
        let ours = &self.local;
        let conn_limit = self.config.conn_limit;
        if hello.short_id == ours.short_id {
            return Admission::ShortIdClash {
                we_yield: ours.name > hello.name,
            };
        }
        if !self.by_peer.contains_key(&hello.name) && self.by_peer.len() >= conn_limit {
            return Admission::Reject(format!(
                "{} {conn_limit} reached",
                crate::mesh::connection::CONNECTION_LIMIT_REFUSAL
            ));
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
        for (name, held) in &self.held {
            if *name != hello.name && held.placement.peer.short_id == hello.short_id {
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
        let dialler = |outbound: bool| if outbound { ours.name } else { hello.name };
        if old.outbound != outbound && dialler(outbound) > dialler(old.outbound) {
            Admission::Accept {
                replace: Some(existing),
            }
        } else {
            Admission::Reject(ConnectionError::Duplicate(hello.name).to_string())
        }
    }

    /// The data path a new connection starts on: the sleeve when the peer must not or
    /// cannot use the fast path, else the fast path.
    fn initial_overlay(&self, trusted: bool) -> Overlay {
        match self.config.sleeve_use {
            _ if !self.config.has_sleeve => Overlay::Fastdp,
            SleeveUse::All => Overlay::Sleeve,
            SleeveUse::Untrusted if !trusted => Overlay::Sleeve,
            SleeveUse::Untrusted | SleeveUse::Fallback => Overlay::Fastdp,
        }
    }

    fn handshaken(&mut self, handshake: Handshake, effects: &mut Vec<Effect>) {
        let Handshake {
            id,
            version,
            outbound,
            remote,
            hello,
            ipam,
            encrypted,
        } = handshake;
        let who = format!(
            "connection {} {}({}) at {remote}",
            arrow(outbound),
            hello.name,
            hello.nickname
        );
        let refused = |reason: &dyn std::fmt::Display| tracing::info!("{who} refused: {reason}");
        // Two IP allocations that disagree would hand out the same addresses: refused
        // before the peer goes anywhere near the data path (both ends decide alike).
        if let (Some(ours), Some(theirs)) = (&ipam.ours, &ipam.theirs) {
            if let Err(mismatch) = ours.check(theirs) {
                tracing::warn!("{who} refused: {mismatch}");
                effects.push(Effect::Answer {
                    id,
                    result: Err(ConnectionError::IpamMismatch(mismatch)),
                });
                return;
            }
        }
        let replace = match self.admit(outbound, &hello) {
            Admission::ShortIdClash { we_yield } => {
                let (who, yields) = if we_yield {
                    (hello.name, "this router")
                } else {
                    (self.local.name, "that router")
                };
                let reason = format!(
                    "short ID {} is also {who}'s; {yields} takes another",
                    hello.short_id
                );
                tracing::warn!("{who} refused: {reason}");
                effects.push(Effect::Answer {
                    id,
                    result: Err(ConnectionError::Refused(reason)),
                });
                if we_yield {
                    effects.push(Effect::TakeNewShortId);
                }
                return;
            }
            Admission::Reject(reason) => {
                refused(&reason);
                let error = if reason.starts_with("duplicate") {
                    ConnectionError::Duplicate(hello.name)
                } else {
                    ConnectionError::Refused(reason)
                };
                effects.push(Effect::Answer {
                    id,
                    result: Err(error),
                });
                return;
            }
            Admission::ShortIdTaken { id: short_id, by } => {
                let error = ConnectionError::ShortIdTaken { id: short_id, by };
                refused(&error);
                effects.push(Effect::Answer {
                    id,
                    result: Err(error),
                });
                return;
            }
            Admission::Accept { replace } => replace,
        };
        if let Some(old) = replace.and_then(|old| self.connections.remove(&old).map(|c| (old, c))) {
            effects.push(Effect::Close {
                id: old.0,
                error: ConnectionError::Duplicate(hello.name),
            });
            if old.1.hello.short_id != hello.short_id {
                effects.push(Effect::Remove(old.1.placement()));
            }
        }
        let trusted = self.local.trusted_both_ways(&hello);
        let overlay = self.initial_overlay(trusted);
        if let Some(held) = self.held.remove(&hello.name) {
            // Back: its entries were never taken out; a placement like the last one writes
            // them over in place. Another short ID is another entry, and a placement on the
            // sleeve must not find the fast path still routing to it (the peer may no longer
            // take our VXLAN, e.g. it no longer trusts us): both take the old entry out first.
            tracing::info!(
                "peer {}({}) is back after its connection was lost; it was held in the data path",
                hello.name,
                hello.nickname
            );
            if held.placement.peer.short_id != hello.short_id || overlay != Overlay::Fastdp {
                effects.push(Effect::Remove(held.placement));
            }
        }
        let watched = self.config.has_sleeve
            && overlay == Overlay::Fastdp
            && version >= FASTDP_STATUS_VERSION;
        // Probed through whichever path carries the peer: the fast path's programs or the
        // sleeve's socket (both UDP over the same route).
        let probed =
            version >= PATH_MTU_VERSION && (self.config.has_sleeve || overlay == Overlay::Fastdp);
        let heartbeat_duty = HeartbeatDuty::between(
            &self.local.name,
            &hello.name,
            version >= HEARTBEAT_DUTY_VERSION,
        );
        let conn = Conn {
            version,
            outbound,
            remote,
            underlay: data_address(remote, &hello),
            hello,
            encrypted,
            trusted,
            local_ready: false,
            remote_ready: false,
            overlay,
            choice: watched.then(OverlayChoice::default),
            path_mtu: probed.then(|| PathMtuSearch::new(self.config.path_mtu_ceiling)),
            probes_reported: None,
            floor_echoes: FloorEchoes::default(),
            heartbeat_duty,
        };
        tracing::info!("connection {} at {remote} pending", conn.describe());
        effects.push(Effect::Answer { id, result: Ok(()) });
        effects.push(Effect::Place {
            id,
            placement: conn.placement(),
            trusted_in_the_clear: overlay == Overlay::Fastdp
                && self.config.has_sleeve
                && self.config.sleeve_use == SleeveUse::Untrusted,
        });
        self.by_peer.insert(conn.hello.name, id);
        self.connections.insert(id, conn);
    }

    fn placed(&mut self, id: ConnId, error: Option<String>, effects: &mut Vec<Effect>) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        if let Some(e) = error {
            tracing::error!("cannot add peer {} to the data path: {e}", conn.hello.name);
            effects.push(Effect::Close {
                id,
                error: ConnectionError::Refused(format!("data path: {e}")),
            });
            return;
        }
        conn.local_ready = true;
        effects.push(Effect::SendReady { id });
        if conn.version >= FASTDP_STATUS_VERSION
            && conn.overlay == Overlay::Sleeve
            && conn.choice.is_none()
        {
            // The peer would try the fast path with us: it must not.
            effects.push(Effect::Send {
                id,
                message: Message::FastdpStatus { heard: false },
            });
        }
        if conn.established() {
            tracing::info!("connection {} {} established", conn.describe(), conn.remote);
        }
        // One digest makes a two-way exchange (the answer brings a digest back when the
        // dialled side holds newer records): the dialler starts it, so that records cross
        // a new connection once, not twice.
        effects.push(Effect::StartGossip {
            id,
            digest: conn.outbound,
        });
        effects.push(Effect::ConnectionsChanged);
    }

    /// What a lost connection leaves held: a fast-path peer we still heard (its heartbeats
    /// growing within the fast-path choice's silence limit, sampled at least once); `None`
    /// takes it out at once.
    fn hold_on_loss(c: &Conn) -> Option<HeldPeer> {
        let choice = c.choice.as_ref()?;
        let last_heard = choice.last_heard()?;
        if !c.established() || c.overlay != Overlay::Fastdp || !choice.heard() {
            return None;
        }
        Some(HeldPeer::new(
            c.placement(),
            c.hello.clone(),
            Some(last_heard),
            c.remote,
            c.outbound,
        ))
    }

    /// Moves the peer of connection `id` to the data path `to` (its choice switched).
    fn switch(&mut self, id: ConnId, to: Overlay, effects: &mut Vec<Effect>) {
        if !self.config.has_sleeve {
            return;
        }
        let Some(c) = self.connections.get_mut(&id).filter(|c| c.overlay != to) else {
            return;
        };
        c.overlay = to;
        match to {
            Overlay::Sleeve => self.switches.to_sleeve += 1,
            Overlay::Fastdp => self.switches.to_fastdp += 1,
        }
        effects.push(Effect::Switch {
            placement: c.placement(),
            to,
            who: c.describe(),
        });
    }

    /// Heartbeats to every peer that may fall back, path-MTU probes to every peer probed,
    /// and what arrived from each peer: reports to it, verified path MTUs, switches.
    fn check_paths(
        &mut self,
        now: Instant,
        probe_round: u32,
        received: &HashMap<u16, PathSample>,
        effects: &mut Vec<Effect>,
    ) {
        let mut heartbeats = Vec::new();
        for c in self.connections.values_mut().filter(|c| c.established()) {
            let peer = c.hello.short_id.get();
            if c.choice.is_some() {
                let sample = received.get(&peer).copied().unwrap_or_default();
                let fast = c.overlay == Overlay::Fastdp;
                let (floor_echoed, outer_len) =
                    c.floor_echoes
                        .check(sample.rx_echoes, c.path_mtu.as_ref(), fast);
                if let Some(search) = c.path_mtu.as_mut().filter(|_| floor_echoed) {
                    search.floor_echoed();
                }
                if c.heartbeat_duty
                    .send_now(sample.rx_heartbeats, outer_len != 0)
                {
                    heartbeats.push(Heartbeat {
                        peer,
                        round: 0,
                        outer_len,
                    });
                }
            }
            let Some(search) = c.path_mtu.as_mut() else {
                continue;
            };
            let sizes = search.probes(now, probe_round);
            if self.config.has_sleeve && c.overlay == Overlay::Sleeve {
                effects.extend(sizes.into_iter().map(|outer_len| Effect::SleeveProbe {
                    peer,
                    round: probe_round,
                    outer_len,
                }));
            } else {
                heartbeats.extend(sizes.into_iter().map(|outer_len| Heartbeat {
                    peer,
                    round: probe_round,
                    outer_len,
                }));
            }
        }
        // Held peers: heartbeats still (their kernel answers them), and the verdict.
        let mut released = Vec::new();
        for (name, held) in &mut self.held {
            let peer = held.placement.peer.short_id.get();
            heartbeats.push(Heartbeat {
                peer,
                round: 0,
                outer_len: 0,
            });
            let sample = received.get(&peer).copied().unwrap_or_default();
            let verdict = held.check(now, sample.rx_heartbeats + sample.rx_echoes);
            let why = match verdict {
                HoldVerdict::Hold => continue,
                HoldVerdict::Silent(silent) => format!(
                    "no heartbeat or echo from its fast path for {} s",
                    silent.as_secs()
                ),
                HoldVerdict::TooLong => format!(
                    "held for {} s without its connection coming back",
                    super::hold::HOLD_LIMIT.as_secs()
                ),
            };
            tracing::info!(
                "peer {name}({}) removed from the data path: {why}",
                held.hello.nickname
            );
            released.push(*name);
        }
        for name in released {
            if let Some(held) = self.held.remove(&name) {
                effects.push(Effect::Unroute(held.placement));
                effects.push(Effect::ConnectionsChanged);
            }
        }
        if !heartbeats.is_empty() {
            effects.push(Effect::Heartbeats(heartbeats));
        }
        let mut switches = Vec::new();
        for (&id, conn) in self.connections.iter_mut().filter(|(_, c)| c.established()) {
            let peer = conn.hello.short_id.get();
            let sample = received.get(&peer).copied().unwrap_or_default();
            // What of the peer's probes reached us, when that changed.
            if conn.version >= PATH_MTU_VERSION {
                if let Some(seen) = sample
                    .probe
                    .filter(|_| sample.probe != conn.probes_reported)
                {
                    effects.push(Effect::Send {
                        id,
                        message: Message::PathMtuSeen {
                            round: seen.round,
                            largest: u16::try_from(seen.largest).unwrap_or(u16::MAX),
                        },
                    });
                    conn.probes_reported = sample.probe;
                }
            }
            let mut only_small = None;
            if let Some(search) = conn.path_mtu.as_mut() {
                if let Some(limit) = search.tick(now).verified_changed {
                    only_small = Some(search.only_small_frames());
                    if let (Some(l), true) = (limit, self.config.has_sleeve) {
                        // Should the peer fall back to the sleeve, its datagrams fit too.
                        effects.push(Effect::SleevePathMtu { peer, mtu: l });
                    }
                    match limit {
                        Some(l) => tracing::info!(
                            "connection {}: path MTU {l} verified ({})",
                            conn.describe(),
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
                            conn.describe(),
                            path_mtu::FLOOR
                        ),
                    }
                }
            }
            let Some(choice) = conn.choice.as_mut() else {
                continue;
            };
            // Its heartbeats and the echoes of ours both came through the fast path from
            // the peer; the echoes, answered by its kernel, keep coming while a busy peer
            // sends its own heartbeats late.
            let mut change = choice.sample(now, sample.rx_heartbeats + sample.rx_echoes);
            if let Some(small) = only_small {
                change.switch = choice.set_only_small_frames(small).switch.or(change.switch);
            }
            if let Some(heard) = change.report {
                effects.push(Effect::Send {
                    id,
                    message: Message::FastdpStatus { heard },
                });
            }
            if let Some(to) = change.switch {
                switches.push((id, to));
            }
        }
        for (id, to) in switches {
            self.switch(id, to, effects);
        }
    }
}

/// The address a peer's data is sent to and must come from: the one its control connection
/// comes from (inbound) or was dialled at (outbound), as Weave does. A peer behind a NAT
/// (a cloud VM's public address, a forwarded port) claims the private address it sees on
/// its own interface, which nobody else can reach; the claim is logged when it differs and
/// never used for sending. A connection over loopback (routers sharing one host) is the
/// exception: there the claim is the address to use.
pub fn data_address(remote: SocketAddr, hello: &Hello) -> Ipv4Addr {
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

pub fn arrow(outbound: bool) -> &'static str {
    if outbound {
        "to"
    } else {
        "from"
    }
}

#[cfg(test)]
mod tests;
