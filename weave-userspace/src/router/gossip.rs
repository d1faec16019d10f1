//! Topology gossip and routes: the router publishes its connections as a versioned
//! record, merges the records its neighbours pass on, forwards what improved its view,
//! and installs routes to peers it reaches only through others.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;

use super::answer_pace::AnswerPace;
use super::route_plan::{self, Installed};
use super::{Inner, Mesh};
use crate::datapath::Datapath;
use crate::mesh::connection::{ConnCommand, ConnId, ConnectionError};
use crate::mesh::connection_maker::{Target, TargetState};
use crate::mesh::gossip_refusal::{log_refused, Refusal, REFUSED};
use crate::mesh::peer_name::PeerName;
use crate::mesh::protocol::{self, GossipDigest, GossipUpdate, Message};
use crate::mesh::routes::{self, Routes};
use crate::mesh::topology::{DeltaOutcome, GossipSource, PeerInfo, RecordDelta, Topology};

/// How often each router sends a digest of its view to a few neighbours, so that anything
/// lost on the way is repaired.
pub const ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest time between two route computations: a stream of topology changes (a join
/// in a large full mesh) is folded into a few.
pub const ROUTES_INTERVAL: Duration = Duration::from_millis(100);
/// Route computation may take at most 1/ROUTES_DUTY of the time: after a computation that
/// took `d`, the next waits at least `ROUTES_DUTY · d` (when that is above ROUTES_INTERVAL),
/// so that a large mesh under churn does not spend a router's whole CPU on routes.
const ROUTES_DUTY: u32 = 20;
/// The longest wait between two route computations, whatever the last one cost.
const ROUTES_INTERVAL_MAX: Duration = Duration::from_secs(1);
/// Shortest time between two publications of our own record: a burst of connection
/// changes (a join in a full mesh) goes out as one record.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);
/// What each neighbour adds to the time between two publications ([`publish_interval`]).
const PUBLISH_INTERVAL_PER_NEIGHBOUR: Duration = Duration::from_millis(5);
/// The longest time between two publications.
const PUBLISH_INTERVAL_MAX: Duration = Duration::from_millis(500);

/// Shortest time between two publications of our record with `neighbours` connections:
/// [`PUBLISH_INTERVAL`], longer with more neighbours (each publication goes to every one of
/// them, and while a full mesh forms every router's record changes with every connection
/// made: 100 routers publishing every 100 ms to 99 neighbours each is 10⁵ messages a
/// second), at most [`PUBLISH_INTERVAL_MAX`]. The first change after a quiet spell still
/// goes at once.
pub(super) fn publish_interval(neighbours: usize) -> Duration {
    (PUBLISH_INTERVAL_PER_NEIGHBOUR * neighbours as u32)
        .clamp(PUBLISH_INTERVAL, PUBLISH_INTERVAL_MAX)
}

/// How long a change we could not apply (we hold an older version than it applies to)
/// waits before we ask for what we lack: while a mesh forms the missing versions are
/// mostly on their way (the answer to the digest of a new connection follows the owner's
/// first change on it), and asking for each at once doubled the gossip.
pub const GAP_WAIT: Duration = Duration::from_millis(500);

/// How long a gap waits before it is asked for ([`GAP_WAIT`]), by who sent the change: a
/// direct peer's own change is asked for at once. Its record is taken from it only, so
/// nothing else can fill the gap, and nothing fills it by itself either (its changes go out
/// from its last publication, older than the record its answer to our digest carried);
/// a connection that dies meanwhile would leave the gap open until anti-entropy, and its
/// peer unreachable here once the loss is noticed.
pub(super) fn gap_wait(from_owner: bool) -> Duration {
    if from_owner {
        Duration::ZERO
    } else {
        GAP_WAIT
    }
}

/// Records we hold behind a change that reached us, each with the neighbour that sent it
/// (which holds the version it leads to) and when to ask it for what we lack unless that
/// arrived by then ([`GAP_WAIT`]).
#[derive(Debug, Default)]
pub(super) struct GapAsks {
    waiting: BTreeMap<PeerName, GapAsk>,
}

#[derive(Debug, Clone, Copy)]
struct GapAsk {
    from: ConnId,
    /// The version (and run) of the change that did not apply.
    wanted: (u64, u64),
    due: tokio::time::Instant,
}

impl GapAsks {
    /// A change of `name` leading to `wanted` (version, UID) came from connection `from` at
    /// `now` and did not apply; it is asked for after `wait` ([`gap_wait`]). A later one
    /// replaces the earlier's version and sender, and its time only if sooner.
    pub fn note(
        &mut self,
        name: PeerName,
        from: ConnId,
        wanted: (u64, u64),
        now: tokio::time::Instant,
        wait: Duration,
    ) {
        let due = now + wait;
        let ask = self
            .waiting
            .entry(name)
            .or_insert(GapAsk { from, wanted, due });
        if wanted > ask.wanted {
            ask.wanted = wanted;
            ask.from = from;
        }
        ask.due = ask.due.min(due);
    }

    /// The asks due at `now`, by the connection to ask, of records we still hold older than
    /// wanted (`held`: the version and UID we hold of a peer); the others that are no longer
    /// behind are dropped. Also when the next one is due.
    pub fn due(
        &mut self,
        now: tokio::time::Instant,
        held: impl Fn(PeerName) -> (u64, u64),
    ) -> (
        BTreeMap<ConnId, Vec<PeerName>>,
        Option<tokio::time::Instant>,
    ) {
        self.waiting.retain(|name, ask| held(*name) < ask.wanted);
        let mut asks: BTreeMap<ConnId, Vec<PeerName>> = BTreeMap::new();
        self.waiting.retain(|name, ask| {
            if ask.due <= now {
                asks.entry(ask.from).or_default().push(*name);
                false
            } else {
                true
            }
        });
        (asks, self.waiting.values().map(|a| a.due).min())
    }
}

/// How long an unreachable peer's record is kept after it last changed here
/// ([`Topology::garbage_collect_but`]).
pub const FORGET_AFTER: Duration = Duration::from_secs(2);

/// Anti-entropy ticks skipped at most in a row while our view keeps changing
/// ([`Inner::anti_entropy`]).
const ANTI_ENTROPY_SKIPS_MAX: u32 = 3;
/// A view changed within this long counts as changing for anti-entropy.
const ANTI_ENTROPY_QUIET: Duration = Duration::from_secs(2);

/// Whether a periodic digest is sent now: not while our view changes (a mesh forming: every
/// answer would be about records in flight anyway, and missed changes are asked for as they
/// are found), unless [`ANTI_ENTROPY_SKIPS_MAX`] ticks were skipped in a row already.
pub(super) fn anti_entropy_now(changed_for: Option<Duration>, skipped: u32) -> bool {
    skipped >= ANTI_ENTROPY_SKIPS_MAX || changed_for.is_none_or(|d| d >= ANTI_ENTROPY_QUIET)
}

/// How long a router leaves the dialling of a peer gossip named to that peer, when the
/// peer's name is higher: of two connections between the same two routers the one dialled
/// by the higher name is kept ([`MeshCore::admit`](super::core::MeshCore::admit)), so the
/// lower one's dial would only be refused or replace a connection just made. After this
/// wait it dials all the same (the peer may be at its connection limit or unable to reach
/// us).
pub const DISCOVERY_DEFER: Duration = Duration::from_secs(5);

/// What a look through gossip for peers to dial found ([`Inner::discovery_targets`]).
#[derive(Debug, Default)]
pub(super) struct Discovery {
    /// Peers to dial now (already made targets).
    pub dial: Vec<Target>,
    /// Targets were added or forgotten: they are to be stored.
    pub targets_changed: bool,
    /// When to look again.
    pub look_again: Option<tokio::time::Instant>,
}

/// Gossip is looked through for peers to dial at most this often: after every burst of
/// events it would be done hundreds of times a second while a large mesh forms (a map of
/// every peer's address each time), for dials that may as well wait this long.
pub const DISCOVERY_CHECK: Duration = Duration::from_millis(100);

/// How long a peer that gossip named is not dialled again after it, or we, refused its
/// connection for a connection limit. In a mesh larger than the limit every router holds
/// as many connections as it may and reaches the rest through them; dialling those again
/// every few seconds would only be refused, each time a TCP connection and a handshake on
/// both ends. Weave's makers wait up to 6 minutes between attempts.
pub const DISCOVERY_FULL_HOLD: Duration = Duration::from_secs(300);

/// When to dial a peer that gossip named at `named_at` and that no connection reaches yet:
/// at once when our name is the higher (our connection is the one kept), else after
/// [`DISCOVERY_DEFER`], unless it has dialled us by then.
pub(super) fn discovery_dial_at(
    ours: PeerName,
    theirs: PeerName,
    named_at: tokio::time::Instant,
) -> tokio::time::Instant {
    if ours > theirs {
        named_at
    } else {
        named_at + DISCOVERY_DEFER
    }
}

/// Topology, routes and what of them is installed in the data path.
#[derive(Debug)]
pub(super) struct MeshView {
    pub topology: Topology,
    pub routes: Routes,
    /// What of the routes the data path holds.
    pub installed: Installed,
    /// The topology changed since routes were last computed.
    pub routes_stale: bool,
    /// When routes were last computed.
    pub routes_at: Option<tokio::time::Instant>,
    /// The CPU time the last computation took (not its installation in the data path,
    /// which waits on the kernel; not the time the thread was preempted, which on a busy
    /// machine would throttle the next computation for nothing).
    pub routes_cost: Duration,
    /// Our record changed since it was last sent to our neighbours.
    pub publish_pending: bool,
    /// When our record was last sent.
    pub published_at: Option<tokio::time::Instant>,
    /// Our record as last sent: the next publication is the change from it.
    pub published: Option<PeerInfo>,
    /// The peers known and routed to, as of the last route computation, and when that
    /// last changed (what `GET /status/mesh` reports as `ChangedAt`).
    pub summary: (Vec<PeerName>, Vec<PeerName>),
    pub summary_changed_at: std::time::SystemTime,
    /// The nickname of every peer seen since the start (`rmpeer` takes nicknames, also of
    /// peers gone from the topology).
    pub nicknames: BTreeMap<PeerName, String>,
    /// Records to ask a neighbour for, found behind by changes that did not apply.
    pub gap_asks: GapAsks,
    /// Other runs' records of direct peers passed to those peers, paced per peer.
    pub owner_pace: AnswerPace,
    /// Asks to our next hop for the records of peers whose gossip came the wrong way,
    /// paced per peer.
    pub ask_pace: AnswerPace,
    /// When the topology last changed (a record taken, our connections), and the
    /// anti-entropy ticks skipped in a row since one was sent.
    pub changed_at: Option<tokio::time::Instant>,
    pub anti_entropy_skipped: u32,
    /// When each peer's record last changed here, for the peers whose record changed
    /// within [`FORGET_AFTER`]: an unreachable one is not forgotten yet.
    pub record_changed_at: BTreeMap<PeerName, tokio::time::Instant>,
}

impl MeshView {
    pub fn new(ourself: PeerInfo) -> Self {
        Self {
            topology: Topology::new(ourself),
            routes: Routes::default(),
            installed: Installed::default(),
            routes_stale: false,
            routes_at: None,
            routes_cost: Duration::ZERO,
            publish_pending: false,
            published_at: None,
            published: None,
            summary: (Vec::new(), Vec::new()),
            summary_changed_at: std::time::SystemTime::now(),
            nicknames: BTreeMap::new(),
            gap_asks: GapAsks::default(),
            owner_pace: AnswerPace::default(),
            ask_pace: AnswerPace::default(),
            changed_at: None,
            anti_entropy_skipped: 0,
            record_changed_at: BTreeMap::new(),
        }
    }
}

/// The CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is, and reads nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Number of neighbours a periodic full gossip goes to: 2·log2(n), at least 1.
fn fanout(neighbours: usize) -> usize {
    let log = usize::BITS - neighbours.max(1).leading_zeros();
    (2 * log as usize).clamp(1, neighbours.max(1))
}

fn encode(records: Vec<PeerInfo>) -> Option<Arc<[u8]>> {
    encode_message(&Message::Gossip(GossipUpdate { records }))
}

/// Sends `frame` on the connections to `to` (every connection when `None`) but `except`.
pub(super) fn send_frame_to(
    mesh: &Mesh,
    frame: &Arc<[u8]>,
    to: Option<&[PeerName]>,
    except: Option<ConnId>,
) {
    for (id, conn) in mesh.core.connections() {
        let wanted = to.is_none_or(|names| names.contains(&conn.hello.name));
        if wanted && Some(*id) != except {
            mesh.send(*id, ConnCommand::SendFrame(frame.clone()));
        }
    }
}

pub(super) fn encode_message(message: &Message) -> Option<Arc<[u8]>> {
    match protocol::encode_frame(message) {
        Ok(frame) => Some(frame.into()),
        Err(e) => {
            tracing::error!("cannot encode {}: {e}", message.kind());
            None
        }
    }
}

impl<D: Datapath> Inner<D> {
    pub(super) fn view(&self) -> std::sync::MutexGuard<'_, MeshView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `records` on the connections to `to` (every accepted connection when `None`)
    /// but `except`.
    fn gossip_to(
        &self,
        mesh: &Mesh,
        records: Vec<PeerInfo>,
        to: Option<&[PeerName]>,
        except: Option<ConnId>,
    ) {
        if records.is_empty() {
            return;
        }
        if let Some(frame) = encode(records) {
            send_frame_to(mesh, &frame, to, except);
        }
    }

    /// The neighbours gossip from `origin` goes on to (see [`routes::relay_children`]).
    pub(super) fn tree_children(&self, origin: PeerName) -> Vec<PeerName> {
        routes::relay_children(&self.view().topology, origin)
    }

    /// Sends the versions of our records on one connection: the neighbour answers with
    /// what it holds newer (and a digest of its own when we hold newer).
    pub(super) fn send_digest(&self, id: ConnId, reply: bool) {
        let entries = self.view().topology.digest();
        self.send_to(
            id,
            &Message::Digest(GossipDigest {
                entries,
                reply,
                only_listed: false,
            }),
        );
    }

    /// Sends `message` on one connection.
    pub(super) fn send_to(&self, id: ConnId, message: &Message) {
        if let Some(frame) = encode_message(message) {
            self.mesh().send(id, ConnCommand::SendFrame(frame));
        }
    }

    /// Sends a digest to a random few neighbours (not while our view changes:
    /// [`anti_entropy_now`]).
    pub(super) fn anti_entropy(&self) {
        {
            let mut view = self.view();
            let changed_for = view.changed_at.map(|t| t.elapsed());
            if !anti_entropy_now(changed_for, view.anti_entropy_skipped) {
                view.anti_entropy_skipped += 1;
                return;
            }
            view.anti_entropy_skipped = 0;
        }
        let mut ids: Vec<ConnId> = self.mesh().core.connections().map(|(id, _)| *id).collect();
        ids.shuffle(&mut rand::thread_rng());
        ids.truncate(fanout(ids.len()));
        for id in ids {
            self.send_digest(id, false);
            self.sync_channels(id);
        }
    }

    /// Answers a neighbour's digest: the records we hold newer, and our digest when it
    /// holds newer records (unless its digest was itself an answer).
    pub(super) fn on_digest(&self, id: ConnId, digest: GossipDigest) {
        if digest.only_listed {
            let (records, changes) = self.view().topology.catch_up_listed(&digest.entries);
            if !records.is_empty() {
                self.send_to(id, &Message::Gossip(GossipUpdate { records }));
            }
            for change in changes {
                self.send_to(id, &Message::Delta(change));
            }
            return;
        }
        let Some(neighbour) = self.mesh().core.connection(id).map(|c| c.hello.name) else {
            return;
        };
        let comparison = self.view().topology.compare(neighbour, &digest.entries);
        if !comparison.ours_newer.is_empty() {
            self.send_to(
                id,
                &Message::Gossip(GossipUpdate {
                    records: comparison.ours_newer,
                }),
            );
        }
        for change in comparison.our_changes {
            self.send_to(id, &Message::Delta(change));
        }
        if comparison.theirs_newer && !digest.reply {
            self.send_digest(id, true);
        }
    }

    /// Sends our record to every neighbour if it changed and the last publication is at
    /// least [`publish_interval`] ago. Returns when to try again if it had to wait.
    pub(super) fn publish_if_pending(&self) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let interval = publish_interval(self.mesh().core.peer_count());
        let (ourself, change) = {
            let mut view = self.view();
            if !view.publish_pending {
                return None;
            }
            if let Some(due) = view
                .published_at
                .map(|t| t + interval)
                .filter(|due| *due > now)
            {
                return Some(due);
            }
            view.publish_pending = false;
            view.published_at = Some(now);
            let ourself = view.topology.ourself().clone();
            let change = match &view.published {
                Some(old) if old.uid == ourself.uid && old.version < ourself.version => {
                    Some(ourself.delta_from(old))
                }
                _ => None,
            };
            view.published = Some(ourself.clone());
            (ourself, change)
        };
        let mesh = self.mesh();
        match change {
            Some(delta) => {
                if let Some(frame) = encode_message(&Message::Delta(delta)) {
                    send_frame_to(&mesh, &frame, None, None);
                }
            }
            None => self.gossip_to(&mesh, vec![ourself], None, None),
        }
        None
    }

    /// Asks the neighbours for the records still behind changes they sent once
    /// [`GAP_WAIT`] has passed ([`GapAsks`]). Returns when to come back, if waiting.
    pub(super) fn ask_for_gaps_if_due(&self) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let (asks, next) = {
            let mut view = self.view();
            let view = &mut *view;
            let topology = &view.topology;
            let (asks, next) = view.gap_asks.due(now, |name| {
                let held = topology.record_version(name);
                (held.version, held.uid)
            });
            let asks: Vec<(ConnId, GossipDigest)> = asks
                .into_iter()
                .map(|(id, names)| {
                    let entries = names
                        .into_iter()
                        .map(|n| topology.record_version(n))
                        .collect();
                    let ask = GossipDigest {
                        entries,
                        reply: true,
                        only_listed: true,
                    };
                    (id, ask)
                })
                .collect();
            (asks, next)
        };
        for (id, ask) in asks {
            self.send_to(id, &Message::Digest(ask));
        }
        next
    }

    /// Our connections changed: publish them and recompute routes.
    pub(super) async fn connections_changed(&self) {
        {
            let summaries = self.mesh().core.summaries();
            let mut view = self.view();
            if view.topology.set_our_connections(summaries) {
                view.publish_pending = true;
                view.changed_at = Some(tokio::time::Instant::now());
            }
        }
        self.routes_stale();
    }

    /// Marks the routes for recomputation; the event loop does it once a burst of events
    /// has been handled (recomputation is coalesced).
    pub(super) fn routes_stale(&self) {
        let mut view = self.view();
        view.routes_stale = true;
    }

    /// Recomputes and installs routes if anything changed since the last time and the
    /// last computation is at least [`ROUTES_INTERVAL`] ago. Returns when to try again if
    /// it had to wait.
    pub(super) async fn apply_routes_if_due(&self) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        {
            let mut view = self.view();
            if !view.routes_stale {
                return None;
            }
            let pause =
                (view.routes_cost * ROUTES_DUTY).clamp(ROUTES_INTERVAL, ROUTES_INTERVAL_MAX);
            if let Some(due) = view.routes_at.map(|t| t + pause).filter(|due| *due > now) {
                return Some(due);
            }
            view.routes_stale = false;
            view.routes_at = Some(now);
        }
        self.apply_routes().await;
        // Unreachable peers spared from forgetting are looked at again.
        let view = self.view();
        view.routes_stale.then(|| now + ROUTES_INTERVAL_MAX)
    }

    /// Merges gossip from connection `id`; malformed gossip closes that connection and
    /// changes nothing else.
    /// A record change travels on along its origin's broadcast tree (in a full mesh: no
    /// further at all). News from an answer to a digest start a new broadcast from us.
    pub(super) async fn on_gossip(&self, id: ConnId, message: Message) {
        match message {
            Message::Gossip(update) => self.on_update(id, update).await,
            Message::Digest(digest) => self.on_digest(id, digest),
            Message::Delta(delta) => self.on_delta(id, delta).await,
            Message::Channel(message) => self.on_channel(id, message),
            other => tracing::debug!("not gossip: {}", other.kind()),
        }
    }

    /// A peer's record change: applied and passed on along the peer's tree, or, when we do
    /// not hold the version it applies to, answered with a digest so that the sender sends
    /// the whole record.
    async fn on_delta(&self, id: ConnId, delta: RecordDelta) {
        let Some((from, direct)) = self.gossip_sender(id) else {
            return;
        };
        let source = GossipSource {
            from,
            direct: &direct,
        };
        let outcome = self.view().topology.apply_delta_from(&delta, source);
        match outcome {
            Err(e) => self.refuse_gossip(id, &e.to_string()),
            Ok(DeltaOutcome::Refused(reason)) => {
                self.records_refused(id, "change", &[(delta.name, reason)]);
            }
            Ok(DeltaOutcome::Applied) => {
                let now = tokio::time::Instant::now();
                self.view().record_changed_at.insert(delta.name, now);
                let children = self.tree_children(delta.name);
                if let Some(frame) = encode_message(&Message::Delta(delta)) {
                    send_frame_to(&self.mesh(), &frame, Some(&children), Some(id));
                }
                self.topology_changed().await;
            }
            Ok(DeltaOutcome::OurselfBumped) => {
                self.view().publish_pending = true;
            }
            Ok(DeltaOutcome::Stale) => {}
            Ok(DeltaOutcome::Gap) => {
                // Ask the sender for that record (it holds it: it applied the change),
                // unless it arrives meanwhile ([`gap_wait`]).
                let now = tokio::time::Instant::now();
                let wanted = (delta.version, delta.uid);
                let wait = gap_wait(from == delta.name);
                self.view().gap_asks.note(delta.name, id, wanted, now, wait);
            }
        }
    }

    /// Closes connection `id` over gossip we refuse.
    pub(super) fn refuse_gossip(&self, id: ConnId, reason: &str) {
        REFUSED.count(Refusal::Malformed);
        let mesh = self.mesh();
        if let Some(conn) = mesh.core.connection(id) {
            tracing::warn!(
                "connection with {}({}) closed: {reason}",
                conn.hello.name,
                conn.hello.nickname
            );
            mesh.send(
                id,
                ConnCommand::Close(ConnectionError::Refused(reason.to_string())),
            );
        }
    }

    /// The peer at the other end of connection `id` and our direct peers with their runs:
    /// whom gossip on it may speak for. `None` once the connection is gone.
    pub(super) fn gossip_sender(&self, id: ConnId) -> Option<(PeerName, BTreeMap<PeerName, u64>)> {
        let mesh = self.mesh();
        let from = mesh.core.connection(id)?.hello.name;
        Some((from, mesh.core.direct_runs()))
    }

    /// Records (or changes, `what`) from connection `id` left out because of who sent
    /// them: one log line per message, each counted; for a peer the sender is not on the
    /// way to, our own next hop towards that peer is asked for its record instead (an
    /// honest change that took another path arrives that way).
    fn records_refused(&self, id: ConnId, what: &str, refused: &[(PeerName, Refusal)]) {
        if refused.is_empty() {
            return;
        }
        for (_, reason) in refused {
            REFUSED.count(*reason);
        }
        let sender = self
            .mesh()
            .core
            .connection(id)
            .map_or_else(|| "a closed connection".to_string(), |c| c.describe());
        let (name, reason) = refused[0];
        let more = match refused.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        log_refused(format_args!(
            "gossip {what} about {name}{more} {sender} refused: {}",
            reason.describe()
        ));
        let mut asks: BTreeMap<PeerName, Vec<crate::mesh::topology::RecordVersion>> =
            BTreeMap::new();
        {
            let mut view = self.view();
            let now = tokio::time::Instant::now();
            for (name, _) in refused.iter().filter(|(_, r)| *r == Refusal::NotAlongRoute) {
                let Some(hop) = view.routes.unicast.get(name).copied() else {
                    continue;
                };
                if view.ask_pace.allow(*name, now) {
                    asks.entry(hop)
                        .or_default()
                        .push(view.topology.record_version(*name));
                }
            }
        }
        for (hop, entries) in asks {
            let ask = Message::Digest(GossipDigest {
                entries,
                reply: true,
                only_listed: true,
            });
            let conn = self
                .mesh()
                .core
                .connections()
                .find_map(|(id, c)| (c.hello.name == hop).then_some(*id));
            if let Some(conn) = conn.filter(|c| *c != id) {
                self.send_to(conn, &ask);
            }
        }
    }

    /// After the topology improved: take a new short ID if ours is contested, recompute
    /// routes with the burst.
    async fn topology_changed(&self) {
        self.view().changed_at = Some(tokio::time::Instant::now());
        let lost_to = self.view().topology.short_id_lost_to();
        if let Some(winner) = lost_to {
            tracing::warn!("peer {winner} has our short ID and the lower name");
            self.take_new_short_id().await;
        }
        self.routes_stale();
    }

    async fn on_update(&self, id: ConnId, update: GossipUpdate) {
        let Some((from, direct)) = self.gossip_sender(id) else {
            return;
        };
        let source = GossipSource {
            from,
            direct: &direct,
        };
        let merged = self.view().topology.merge_from(&update.records, source);
        if let Ok(outcome) = &merged {
            self.records_refused(id, "record", &outcome.refused);
            let now = tokio::time::Instant::now();
            for record in &outcome.for_owner {
                // Another run's record of a direct peer: that peer outbids it (once a
                // second at most, however often it comes).
                if !self.view().owner_pace.allow(record.name, now) {
                    continue;
                }
                let owner = self
                    .mesh()
                    .core
                    .connections()
                    .find_map(|(id, c)| (c.hello.name == record.name).then_some(*id));
                if let Some(owner) = owner {
                    self.send_to(
                        owner,
                        &Message::Gossip(GossipUpdate {
                            records: vec![record.clone()],
                        }),
                    );
                }
            }
        }
        match merged {
            Err(e) => self.refuse_gossip(id, &e.to_string()),
            Ok(outcome) if !outcome.improved.is_empty() => {
                if outcome.ourself_bumped {
                    // A record of an earlier run of ours was about: everyone hears the new one.
                    self.view().publish_pending = true;
                }
                // Each record goes on along its owner's broadcast tree (in a full mesh:
                // nowhere, since the owner reaches everyone itself): as the change from the
                // version we held when there was one, else whole.
                let me = {
                    let mut view = self.view();
                    let now = tokio::time::Instant::now();
                    for record in &outcome.improved {
                        view.record_changed_at.insert(record.name, now);
                    }
                    view.topology.ourself().name
                };
                let mut changes = outcome.changes;
                let mut by_children: BTreeMap<Vec<PeerName>, Vec<PeerInfo>> = BTreeMap::new();
                let mut changes_to: Vec<(Vec<PeerName>, RecordDelta)> = Vec::new();
                for record in outcome.improved.into_iter().filter(|r| r.name != me) {
                    let children = self.tree_children(record.name);
                    if children.is_empty() {
                        continue;
                    }
                    match changes.remove(&record.name) {
                        Some(change) => changes_to.push((children, change)),
                        None => by_children.entry(children).or_default().push(record),
                    }
                }
                {
                    let mesh = self.mesh();
                    for (children, records) in by_children {
                        self.gossip_to(&mesh, records, Some(&children), Some(id));
                    }
                    for (children, change) in changes_to {
                        if let Some(frame) = encode_message(&Message::Delta(change)) {
                            send_frame_to(&mesh, &frame, Some(&children), Some(id));
                        }
                    }
                }
                self.topology_changed().await;
            }
            Ok(_) => {}
        }
    }

    /// Peers known through gossip that we neither reach directly nor dial yet, as targets
    /// (empty unless discovery is on, and while the connection limit is reached), and when
    /// to look again for the ones left to dial us ([`discovery_dial_at`]).
    /// Also stops dialling discovered targets whose peer gossip no longer knows.
    /// Runs after bursts of events, at most every [`DISCOVERY_CHECK`] (else it returns when
    /// to come back): it compares addresses, and makes a target (a string) only of a peer
    /// it would dial.
    pub(super) fn discovery_targets(&self) -> Discovery {
        if !self.discovery {
            return Discovery::default();
        }
        let mut mesh = self.mesh();
        let now = tokio::time::Instant::now();
        if let Some(due) = mesh
            .discovery_checked_at
            .map(|at| at + DISCOVERY_CHECK)
            .filter(|due| *due > now)
        {
            return Discovery {
                look_again: Some(due),
                ..Discovery::default()
            };
        }
        mesh.discovery_checked_at = Some(now);
        let view = self.view();
        let me = view.topology.ourself().name;
        let known: BTreeMap<(std::net::Ipv4Addr, u16), PeerName> = view
            .topology
            .peers()
            .filter(|p| p.name != me && !p.underlay.is_unspecified())
            .map(|p| ((p.underlay, p.control_port), p.name))
            .collect();
        let vanished: Vec<Target> = mesh
            .discovered
            .iter()
            .filter(|t| {
                t.host
                    .parse()
                    .map_or(true, |ip| !known.contains_key(&(ip, t.port)))
            })
            .cloned()
            .collect();
        let forgot = !vanished.is_empty();
        for t in vanished {
            tracing::info!("no longer dialling {t}: its peer left the mesh");
            mesh.discovered.remove(&t);
            mesh.targets.remove(&t);
        }
        mesh.discovery_full.retain(|_, until| *until > now);
        // Discovered targets still being dialled will take room too when they connect.
        let dialling = mesh
            .discovered
            .iter()
            .filter(|t| !matches!(mesh.targets.get(*t), Some(TargetState::Connected(_))))
            .count();
        let Some(room) = self
            .conn_limit
            .checked_sub(mesh.core.peer_count() + dialling)
        else {
            mesh.discovery_waits.clear();
            return Discovery {
                targets_changed: forgot,
                ..Discovery::default()
            };
        };
        let undialled: Vec<(Target, PeerName)> = known
            .iter()
            .filter(|(_, name)| !mesh.core.is_direct(name))
            .map(|((ip, port), name)| {
                let target = Target {
                    host: ip.to_string(),
                    port: *port,
                };
                (target, *name)
            })
            .filter(|(t, _)| !mesh.targets.contains_key(t) && !mesh.discovery_full.contains_key(t))
            .collect();
        // A peer connected (it dialled us) or gone is no longer waited for.
        let waited: BTreeSet<PeerName> = undialled.iter().map(|(_, name)| *name).collect();
        mesh.discovery_waits.retain(|name, _| waited.contains(name));
        let mut new = Vec::new();
        let mut look_again: Option<tokio::time::Instant> = None;
        for (target, name) in undialled {
            if new.len() >= room {
                break;
            }
            let named_at = *mesh.discovery_waits.entry(name).or_insert(now);
            let due = discovery_dial_at(me, name, named_at);
            if due <= now {
                mesh.discovery_waits.remove(&name);
                new.push(target);
            } else {
                look_again = Some(look_again.map_or(due, |t| t.min(due)));
            }
        }
        mesh.discovered.extend(new.iter().cloned());
        Discovery {
            targets_changed: forgot || !new.is_empty(),
            dial: new,
            look_again,
        }
    }

    /// Recomputes routes and brings the peers reached through neighbours in the data path
    /// up to date ([`route_plan`]). Directly connected peers are installed by their
    /// connections.
    pub(super) async fn apply_routes(&self) {
        let plan = {
            let (direct, held, ourself, on_sleeve): (_, _, _, BTreeSet<PeerName>) = {
                let mesh = self.mesh();
                let local = mesh.core.local();
                (
                    mesh.core.direct_short_ids(),
                    mesh.core.held_short_ids(),
                    (local.name, local.short_id),
                    mesh.core.sleeve_peers().copied().collect(),
                )
            };
            let mut view = self.view();
            let started = thread_cpu_time();
            let view = &mut *view;
            for p in view.topology.peers() {
                if view.nicknames.get(&p.name) != Some(&p.nickname) {
                    view.nicknames.insert(p.name, p.nickname.clone());
                }
            }
            let now = tokio::time::Instant::now();
            view.record_changed_at
                .retain(|_, at| now.saturating_duration_since(*at) < FORGET_AFTER);
            let view = &mut *view;
            let recent = &view.record_changed_at;
            let (gone, spared) = view
                .topology
                .garbage_collect_but(|name| recent.contains_key(&name));
            if !gone.is_empty() {
                tracing::info!("peers no longer reachable, forgotten: {gone:?}");
            }
            if !spared.is_empty() {
                // Looked at again once their records are older (`apply_routes_if_due`).
                view.routes_stale = true;
            }
            view.routes = routes::compute(&view.topology);
            view.routes_cost = thread_cpu_time().saturating_sub(started);
            let summary = (
                view.topology.peers().map(|p| p.name).collect(),
                view.routes.unicast.keys().copied().collect(),
            );
            if summary != view.summary {
                view.summary = summary;
                view.summary_changed_at = std::time::SystemTime::now();
            }
            let view = &mut *view;
            let topology = &view.topology;
            let lookup = |name: &PeerName| topology.peer(name).map(|p| (p.short_id, p.underlay));
            if let Some(sleeve) = self.overlays.sleeve() {
                // Unless there is no fast path at all, routes may mix fast-path and sleeve
                // hops: trusted neighbours with a password, fallen-back ones without.
                let mixed = self.sleeve_use != super::SleeveUse::All;
                sleeve.set_routing(route_plan::sleeve_routing(
                    &view.routes,
                    lookup,
                    ourself,
                    &direct,
                    mixed,
                ));
            }
            // Held peers stay as their connections left them (`super::hold`).
            let routes = route_plan::with_held(&view.routes, ourself.0, &held);
            let mut direct = direct;
            direct.extend(held);
            route_plan::plan(
                &routes,
                lookup,
                ourself,
                &direct,
                &on_sleeve,
                &mut view.installed,
            )
        };
        let plan = plan.for_fast_path(self.overlays.sleeve().is_some(), self.sleeve_use);
        for peer in plan.orphans {
            if let Err(e) = self.datapath.remove_peer(peer.short_id).await {
                tracing::error!(
                    "cannot remove peer {} from the data path: {e}",
                    peer.short_id
                );
            }
        }
        for peer in plan.remove {
            if let Err(e) = self.datapath.remove_peer(peer.short_id).await {
                tracing::error!(
                    "cannot remove relayed peer {} from the data path: {e}",
                    peer.short_id
                );
            }
        }
        for peer in plan.to_sleeve {
            // Its next hop fell back to the sleeve: no more relaying by the kernel (VXLAN
            // for it from others goes to the sleeve), what it learned behind the peer kept
            // for when the fast path carries it again.
            if let Err(e) = self.datapath.leave_to_sleeve(peer).await {
                tracing::error!(
                    "cannot leave relayed peer {} to the sleeve: {e}",
                    peer.short_id
                );
            }
        }
        for peer in plan.add {
            if let Err(e) = self.datapath.add_peer(peer).await {
                tracing::error!(
                    "cannot route to peer {} through {}: {e}",
                    peer.short_id,
                    peer.next_hop
                );
            }
        }
        for (source, children) in plan.trees {
            if let Err(e) = self.datapath.set_broadcast_tree(source, children).await {
                tracing::error!("cannot set the broadcast tree of {source}: {e}");
            }
        }
    }
}

/// The mesh as gossip made it known here: every peer's record and our routes.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MeshReport {
    pub peers: Vec<PeerInfo>,
    pub routes: Routes,
}

/// Who is in the mesh and whom we route to: small enough to poll often (to see when
/// routers agree), unlike the whole report.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MeshSummary {
    /// Every peer known, ourselves included, in name order.
    pub peers: Vec<PeerName>,
    /// Peers we have a route to, in name order.
    pub routed: Vec<PeerName>,
    /// When the peers known or routed to last changed, in milliseconds since the Unix
    /// epoch (as of the last route computation): tells when a router reached its view,
    /// however late it is asked.
    pub changed_at: u64,
}

/// The peer `text` names: a peer name, or the nickname of exactly one peer of `nicknames`.
pub fn peer_named(text: &str, nicknames: &BTreeMap<PeerName, String>) -> Result<PeerName, String> {
    if let Ok(name) = text.parse::<PeerName>() {
        return Ok(name);
    }
    let matching: Vec<PeerName> = nicknames
        .iter()
        .filter(|(_, nick)| nick.as_str() == text)
        .map(|(name, _)| *name)
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "{text:?} is neither a peer name (like 0a:00:00:00:00:01) nor the nickname of a peer seen by this router"
        )),
        many => {
            let names: Vec<String> = many.iter().map(ToString::to_string).collect();
            Err(format!(
                "nickname {text:?} is ambiguous: peers {} have it; give the peer name",
                names.join(", ")
            ))
        }
    }
}

impl<D: Datapath> super::Router<D> {
    /// The peer `text` names: a peer name, or the nickname of a peer seen since the start.
    pub fn peer_named(&self, text: &str) -> Result<PeerName, String> {
        peer_named(text, &self.inner.view().nicknames)
    }

    /// Whether we have a route to `peer`.
    pub fn reaches(&self, peer: PeerName) -> bool {
        self.inner.view().routes.unicast.contains_key(&peer)
    }

    pub fn mesh_summary(&self) -> MeshSummary {
        let view = self.inner.view();
        MeshSummary {
            peers: view.topology.peers().map(|p| p.name).collect(),
            routed: view.routes.unicast.keys().copied().collect(),
            changed_at: view
                .summary_changed_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// Every known peer and our routes, for `status peers` and `report`.
    pub fn mesh_report(&self) -> MeshReport {
        let view = self.inner.view();
        MeshReport {
            peers: view.topology.full_state(),
            routes: view.routes.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fanout;
    use super::{discovery_dial_at, DISCOVERY_DEFER};
    use super::{peer_named, BTreeMap, PeerName};

    #[test]
    fn of_two_routers_that_discover_each_other_the_higher_name_dials_first() {
        let p = |n: u8| PeerName::from_bytes([0x0a, 0, 0, 0, 0, n]);
        let t = tokio::time::Instant::now();
        // The higher name dials at once: its connection is the one both ends keep.
        assert_eq!(discovery_dial_at(p(2), p(1), t), t);
        // The lower one leaves it the time to, then dials all the same.
        assert_eq!(discovery_dial_at(p(1), p(2), t), t + DISCOVERY_DEFER);
        assert!(DISCOVERY_DEFER >= std::time::Duration::from_secs(2));
    }

    #[test]
    fn a_peer_is_named_by_its_name_or_its_one_nickname() {
        let p = |n: u8| PeerName::from_bytes([0x0a, 0, 0, 0, 0, n]);
        let nicks: BTreeMap<PeerName, String> = [(p(1), "host1"), (p(2), "host2"), (p(3), "host2")]
            .into_iter()
            .map(|(n, s)| (n, s.to_string()))
            .collect();
        assert_eq!(peer_named("0a:00:00:00:00:09", &nicks), Ok(p(9)));
        assert_eq!(peer_named("host1", &nicks), Ok(p(1)));
        assert!(peer_named("host2", &nicks)
            .unwrap_err()
            .contains("ambiguous"));
        assert!(peer_named("host9", &nicks)
            .unwrap_err()
            .contains("nor the nickname of a peer seen by this router"));
    }

    #[test]
    fn publications_are_spaced_more_with_more_neighbours_up_to_a_limit() {
        use super::{publish_interval, PUBLISH_INTERVAL, PUBLISH_INTERVAL_MAX};
        use std::time::Duration;
        assert_eq!(publish_interval(0), PUBLISH_INTERVAL);
        assert_eq!(publish_interval(16), PUBLISH_INTERVAL);
        assert_eq!(publish_interval(50), Duration::from_millis(250));
        assert_eq!(publish_interval(100), PUBLISH_INTERVAL_MAX);
        assert_eq!(publish_interval(1000), PUBLISH_INTERVAL_MAX);
    }

    #[test]
    fn a_record_found_behind_is_asked_for_after_a_wait_unless_it_arrived() {
        use super::{GapAsks, GAP_WAIT};
        let p = |n: u8| PeerName::from_bytes([0x0a, 0, 0, 0, 0, n]);
        let (c1, c2) = (1, 2);
        let t = tokio::time::Instant::now();
        let mut gaps = GapAsks::default();
        gaps.note(p(1), c1, (5, 1), t, GAP_WAIT);
        gaps.note(p(2), c1, (3, 1), t, GAP_WAIT);
        // A later change of 1, from another neighbour: asked of that one, still at t + wait.
        gaps.note(p(1), c2, (7, 1), t + GAP_WAIT / 2, GAP_WAIT);
        let held = |name: PeerName| if name == p(2) { (3, 1) } else { (4, 1) };
        let (asks, next) = gaps.due(t + GAP_WAIT / 4, held);
        assert!(asks.is_empty());
        assert_eq!(
            next,
            Some(t + GAP_WAIT),
            "2 arrived meanwhile: only 1 waits"
        );
        let (asks, next) = gaps.due(t + GAP_WAIT, held);
        assert_eq!(asks, BTreeMap::from([(c2, vec![p(1)])]));
        assert_eq!(next, None);
        let (asks, _) = gaps.due(t + GAP_WAIT * 2, held);
        assert!(asks.is_empty(), "asked once");
    }

    #[test]
    fn a_gap_in_a_direct_peers_own_change_is_asked_for_at_once() {
        use super::{gap_wait, GapAsks, GAP_WAIT};
        let p = |n: u8| PeerName::from_bytes([0x0a, 0, 0, 0, 0, n]);
        let held = |_: PeerName| (2, 1);
        let t = tokio::time::Instant::now();
        let mut gaps = GapAsks::default();
        gaps.note(p(1), 1, (5, 1), t, gap_wait(true));
        let (asks, next) = gaps.due(t, held);
        assert_eq!(asks, BTreeMap::from([(1, vec![p(1)])]));
        assert_eq!(next, None);
        // A relayed change waits; the owner's own change of the same record then brings
        // the ask forward.
        gaps.note(p(2), 2, (5, 1), t, gap_wait(false));
        assert!(gaps.due(t, held).0.is_empty());
        gaps.note(p(2), 3, (6, 1), t + GAP_WAIT / 4, gap_wait(true));
        let (asks, _) = gaps.due(t + GAP_WAIT / 4, held);
        assert_eq!(asks, BTreeMap::from([(3, vec![p(2)])]));
    }

    #[test]
    fn anti_entropy_waits_while_the_view_changes_but_not_for_ever() {
        use super::{anti_entropy_now, ANTI_ENTROPY_QUIET, ANTI_ENTROPY_SKIPS_MAX};
        use std::time::Duration;
        assert!(anti_entropy_now(None, 0));
        assert!(anti_entropy_now(Some(ANTI_ENTROPY_QUIET), 0));
        assert!(!anti_entropy_now(Some(Duration::from_millis(10)), 0));
        assert!(anti_entropy_now(
            Some(Duration::from_millis(10)),
            ANTI_ENTROPY_SKIPS_MAX
        ));
    }

    #[test]
    fn fanout_grows_with_the_log_of_the_neighbours() {
        assert_eq!(fanout(0), 1);
        assert_eq!(fanout(1), 1);
        assert_eq!(fanout(2), 2);
        assert_eq!(fanout(8), 8);
        assert_eq!(fanout(100), 14);
    }
}
