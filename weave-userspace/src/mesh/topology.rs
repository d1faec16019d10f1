//! The mesh topology: what every peer knows of every other peer and its connections.
//!
//! Pure data, no I/O. Each peer publishes one [`PeerInfo`] (its connections, with a
//! version it alone increments); gossip carries these records and [`Topology::merge`]
//! keeps, per peer, the record with the highest `(version, uid)`. That makes merging
//! commutative, associative and idempotent, so every delivery order converges.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::gossip_refusal::Refusal;
use super::peer_name::{PeerName, ShortId};

/// Longest nickname accepted in gossip.
pub const MAX_NICKNAME_LEN: usize = 64;
/// Most connections one peer may list in gossip (well above the connection limit).
pub const MAX_CONNECTIONS_PER_PEER: usize = 4096;
/// Most peers one gossip update may carry (the short-ID space).
pub const MAX_PEERS_PER_UPDATE: usize = 4096;
/// Most peers a topology holds, ourselves included: records of further new peers are
/// refused. A quarter of the short-ID space, so that forged records cannot take every
/// short ID, and a clash always finds a free one at once.
pub const MAX_PEERS: usize = 1024;

/// One connection as its owner publishes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConnectionSummary {
    pub remote: PeerName,
    /// The remote's address as the owner sees it (`ip:port`).
    pub address: std::net::SocketAddr,
    /// The owner dialled it.
    pub outbound: bool,
    /// The connection is established (not merely connecting or pending).
    pub established: bool,
}

/// What one peer publishes about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub name: PeerName,
    pub nickname: String,
    /// Random per run of the router: tells incarnations of one name apart.
    pub uid: u64,
    /// Incremented by the owner on every change.
    pub version: u64,
    pub short_id: ShortId,
    /// Where the peer takes VXLAN and control connections.
    pub underlay: Ipv4Addr,
    /// Its control (TCP) port.
    pub control_port: u16,
    /// Sorted by remote name, at most one per remote.
    pub connections: Vec<ConnectionSummary>,
}

impl PeerInfo {
    pub fn new(name: PeerName, nickname: String, uid: u64, short_id: ShortId) -> Self {
        Self {
            name,
            nickname,
            uid,
            version: 1,
            short_id,
            underlay: Ipv4Addr::UNSPECIFIED,
            control_port: weave_ebpf_common::CONTROL_PORT,
            connections: Vec::new(),
        }
    }

    /// The same record with the address peers reach it at.
    pub fn with_address(mut self, underlay: Ipv4Addr, control_port: u16) -> Self {
        self.underlay = underlay;
        self.control_port = control_port;
        self
    }

    /// Whether `self` supersedes `other` (same name): higher version, then higher UID.
    fn supersedes(&self, other: &PeerInfo) -> bool {
        (self.version, self.uid) > (other.version, other.uid)
    }

    fn validate(&self) -> Result<(), TopologyError> {
        if self.nickname.len() > MAX_NICKNAME_LEN {
            return Err(TopologyError::Invalid(self.name, "nickname too long"));
        }
        if self.connections.len() > MAX_CONNECTIONS_PER_PEER {
            return Err(TopologyError::Invalid(self.name, "too many connections"));
        }
        if self.connections.iter().any(|c| c.remote == self.name) {
            return Err(TopologyError::Invalid(self.name, "a connection to itself"));
        }
        if self
            .connections
            .windows(2)
            .any(|w| w[0].remote >= w[1].remote)
        {
            return Err(TopologyError::Invalid(
                self.name,
                "connections not sorted or duplicated",
            ));
        }
        if self.version == 0 {
            return Err(TopologyError::Invalid(self.name, "version 0"));
        }
        if self.version > super::VERSION_LIMIT {
            return Err(TopologyError::Invalid(self.name, "version out of range"));
        }
        if !self.short_id.in_range() {
            return Err(TopologyError::Invalid(self.name, "short ID out of range"));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    #[error("gossip about peer {0} refused: {1}")]
    Invalid(PeerName, &'static str),
    #[error("gossip update of {0} peers refused: more than {max}", max = MAX_PEERS_PER_UPDATE)]
    TooLarge(usize),
}

/// Which record of a peer someone holds, without its contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordVersion {
    pub name: PeerName,
    pub version: u64,
    pub uid: u64,
}

/// A neighbour's digest compared with what we hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestComparison {
    /// Our records the neighbour lacks or holds too old for the changes we keep.
    pub ours_newer: Vec<PeerInfo>,
    /// The changes that bring the neighbour's older records up to ours, in order per peer
    /// (sent instead of the whole records).
    pub our_changes: Vec<RecordDelta>,
    /// The neighbour holds a record we lack or hold older.
    pub theirs_newer: bool,
}

/// The change of one peer's record between two of its versions: the fields in full and
/// only the connections that changed. Its owner sends it instead of the whole record, so a
/// new connection in a full mesh costs every peer one entry, not a peer's whole list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordDelta {
    pub name: PeerName,
    pub uid: u64,
    /// The version the change applies to.
    pub from_version: u64,
    pub version: u64,
    pub nickname: String,
    pub short_id: ShortId,
    pub underlay: Ipv4Addr,
    pub control_port: u16,
    /// Connections added or changed, in remote order.
    pub upserted: Vec<ConnectionSummary>,
    /// Connections gone, in order.
    pub removed: Vec<PeerName>,
}

impl PeerInfo {
    /// The change from `old` (an earlier version of this record) to `self`.
    pub fn delta_from(&self, old: &PeerInfo) -> RecordDelta {
        let before: BTreeMap<PeerName, &ConnectionSummary> =
            old.connections.iter().map(|c| (c.remote, c)).collect();
        let after: BTreeSet<PeerName> = self.connections.iter().map(|c| c.remote).collect();
        RecordDelta {
            name: self.name,
            uid: self.uid,
            from_version: old.version,
            version: self.version,
            nickname: self.nickname.clone(),
            short_id: self.short_id,
            underlay: self.underlay,
            control_port: self.control_port,
            upserted: self
                .connections
                .iter()
                .filter(|c| before.get(&c.remote) != Some(c))
                .cloned()
                .collect(),
            removed: old
                .connections
                .iter()
                .map(|c| c.remote)
                .filter(|r| !after.contains(r))
                .collect(),
        }
    }

    /// This record with `delta` applied (the caller checked the versions).
    fn apply(&self, delta: &RecordDelta) -> PeerInfo {
        let mut connections: BTreeMap<PeerName, ConnectionSummary> = self
            .connections
            .iter()
            .map(|c| (c.remote, c.clone()))
            .collect();
        for r in &delta.removed {
            connections.remove(r);
        }
        for c in &delta.upserted {
            connections.insert(c.remote, c.clone());
        }
        PeerInfo {
            name: self.name,
            nickname: delta.nickname.clone(),
            uid: self.uid,
            version: delta.version,
            short_id: delta.short_id,
            underlay: delta.underlay,
            control_port: delta.control_port,
            connections: connections.into_values().collect(),
        }
    }
}

/// What applying a [`RecordDelta`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaOutcome {
    /// The record moved to the delta's version: pass the delta on.
    Applied,
    /// We hold that version or a newer one.
    Stale,
    /// We hold no record it applies to: fetch the whole record.
    Gap,
    /// It is about ourselves, from an earlier run: our version was raised past it.
    OurselfBumped,
    /// The sender may not make this change ([`GossipSource`]).
    Refused(Refusal),
}

/// What a merge changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Records that were new or newer than ours: the delta to pass on.
    pub improved: Vec<PeerInfo>,
    /// Of the improved records that replaced an earlier version of the same run, the change
    /// from that version: what is passed on instead of the record (the neighbours it goes
    /// to held that version too, as a rule; one that did not asks for what it lacks).
    pub changes: BTreeMap<PeerName, RecordDelta>,
    /// Someone holds a record of our own name newer than ours (an earlier run of this
    /// router); our version was raised past it.
    pub ourself_bumped: bool,
    /// Records not taken because of who sent them ([`GossipSource`]).
    pub refused: Vec<(PeerName, Refusal)>,
    /// Records of a direct peer from another run of it, newer than what we hold: not taken
    /// from a third party (also listed as refused), but handed to the peer, which raises its
    /// version past them.
    pub for_owner: Vec<PeerInfo>,
}

/// Who handed us a piece of gossip, and whom we keep connections with: what decides
/// whether a record may replace the one held (see ARCHITECTURE.md, "Whom gossip is taken
/// from").
#[derive(Clone, Copy, Debug)]
pub struct GossipSource<'a> {
    /// The peer at the other end of the connection it came on.
    pub from: PeerName,
    /// Our direct peers, each with the UID of its run (from its handshake).
    pub direct: &'a BTreeMap<PeerName, u64>,
}

/// Where a record may come from, as the topology held before an update tells.
struct Trust<'a> {
    source: GossipSource<'a>,
    /// Hops from us to each peer we reach, over connections both ends publish.
    ours: BTreeMap<PeerName, u32>,
    /// The same from the sender.
    senders: BTreeMap<PeerName, u32>,
    /// Peers the sender is a neighbour of (over connections both ends publish) and we are
    /// not: the sender is one hop from them, we more, so it is on a shortest path (decided
    /// without counting hops, which costs a search of the whole mesh per message).
    beside_sender: BTreeSet<PeerName>,
}

/// What to do with a record or change of a peer other than us.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Take,
    Refuse(Refusal),
    /// Another run's record of a direct peer: for that peer to outbid.
    ForOwner,
}

impl Trust<'_> {
    /// What decides about records of the peers `names` from `source`. Hops are counted only
    /// when one of them needs it (a held peer neither the sender nor a direct peer): a
    /// direct peer's own changes, the common case, cost no search.
    fn new<'a>(
        topology: &Topology,
        source: GossipSource<'a>,
        names: impl Iterator<Item = PeerName>,
    ) -> Trust<'a> {
        let mut needs_hops = false;
        let mut beside_sender = BTreeSet::new();
        for name in names {
            if name == topology.ourself
                || name == source.from
                || source.direct.contains_key(&name)
                || !topology.peers.contains_key(&name)
            {
                continue;
            }
            if topology.adjacent(source.from, name) && !topology.adjacent(topology.ourself, name) {
                beside_sender.insert(name);
            } else {
                needs_hops = true;
            }
        }
        let graph = needs_hops.then(|| super::graph::Graph::new(topology));
        let hops = |from| {
            graph
                .as_ref()
                .map_or_else(BTreeMap::new, |g| g.hops_from(from))
        };
        Trust {
            source,
            ours: hops(topology.ourself),
            senders: hops(source.from),
            beside_sender,
        }
    }

    /// Whether a record (or change) of `name` carrying `uid`, newer than what we hold
    /// (`held`: whether we hold one), may replace it.
    fn verdict(&self, name: PeerName, uid: u64, held: bool) -> Verdict {
        let from = self.source.from;
        if let Some(&run) = self.source.direct.get(&name) {
            // A direct peer speaks for itself, over its own connection, in its own run.
            return match (from == name, uid == run) {
                (true, true) => Verdict::Take,
                (true, false) => Verdict::Refuse(Refusal::OtherRun),
                (false, true) => Verdict::Refuse(Refusal::NotFromOwner),
                (false, false) => Verdict::ForOwner,
            };
        }
        if !held || from == name || self.beside_sender.contains(&name) {
            return Verdict::Take;
        }
        match (self.ours.get(&name), self.senders.get(&name)) {
            // A peer we reach: only from a neighbour on a shortest path towards it.
            (Some(ours), Some(theirs)) if theirs < ours => Verdict::Take,
            (Some(_), _) => Verdict::Refuse(Refusal::NotAlongRoute),
            // A peer we do not reach (garbage-collected soon): from anyone.
            (None, _) => Verdict::Take,
        }
    }
}

/// How many of each record's latest changes are kept. While a full mesh forms, a record
/// changes every publication interval for seconds on end: a neighbour that fell a few dozen
/// versions behind still gets the changes, which are smaller than the record (see
/// [`change_cheaper`]).
pub const CHANGES_KEPT: usize = 32;

/// Consecutive changes of one record (same run, each from the version the one before led
/// to) as one change from the first one's base to the last one's version: each connection
/// as it ended up (upserted or removed), once. A neighbour far behind gets one message of
/// what changed in between, never longer than the record with the removals.
fn composed<'a>(changes: impl IntoIterator<Item = &'a RecordDelta>) -> Option<RecordDelta> {
    let mut changes = changes.into_iter().peekable();
    let first = *changes.peek()?;
    let mut last = first;
    let mut net: BTreeMap<PeerName, Option<&ConnectionSummary>> = BTreeMap::new();
    for change in changes {
        last = change;
        for r in &change.removed {
            net.insert(*r, None);
        }
        for c in &change.upserted {
            net.insert(c.remote, Some(c));
        }
    }
    Some(RecordDelta {
        from_version: first.from_version,
        upserted: net.values().filter_map(|c| c.cloned()).collect(),
        removed: net
            .iter()
            .filter(|(_, c)| c.is_none())
            .map(|(r, _)| *r)
            .collect(),
        ..last.clone()
    })
}

/// Whether `change` is sent rather than the whole `record` it leads to: when it costs
/// less on the wire (both carry the record's header; the change its own entries, the
/// record every connection).
fn change_cheaper(change: &RecordDelta, record: &PeerInfo) -> bool {
    change.upserted.len() + change.removed.len() <= record.connections.len()
}

/// Every peer's latest record, as known here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    ourself: PeerName,
    peers: BTreeMap<PeerName, PeerInfo>,
    /// Per peer, the last changes of its record up to the version held, consecutive: a
    /// neighbour one or a few versions behind gets these instead of the whole record (in a
    /// full mesh that is one entry against a hundred).
    changes: BTreeMap<PeerName, VecDeque<RecordDelta>>,
}

impl Topology {
    pub fn new(ourself: PeerInfo) -> Self {
        let name = ourself.name;
        Self {
            ourself: name,
            peers: BTreeMap::from([(name, ourself)]),
            changes: BTreeMap::new(),
        }
    }

    /// Keeps `change` (the held record moved to its version) as the newest of its peer's.
    fn keep_change(&mut self, change: RecordDelta) {
        let kept = self.changes.entry(change.name).or_default();
        if kept
            .back()
            .is_some_and(|last| last.uid != change.uid || last.version != change.from_version)
        {
            kept.clear();
        }
        if kept.len() == CHANGES_KEPT {
            kept.pop_front();
        }
        kept.push_back(change);
    }

    /// Keeps the change from `old` to `new` of one peer's record and returns it, or forgets
    /// its changes when `new` is not a later version of `old` (a new run of that peer).
    fn record_replaced(&mut self, old: Option<&PeerInfo>, new: &PeerInfo) -> Option<RecordDelta> {
        match old {
            Some(old) if old.uid == new.uid && old.version < new.version => {
                let change = new.delta_from(old);
                self.keep_change(change.clone());
                Some(change)
            }
            _ => {
                self.changes.remove(&new.name);
                None
            }
        }
    }

    /// Changes our own record with `change` (which raises its version) and keeps the change.
    fn change_ourself(&mut self, change: impl FnOnce(&mut PeerInfo)) {
        let me = self
            .peers
            .get_mut(&self.ourself)
            .expect("ourself is always present");
        let old = me.clone();
        change(me);
        let new = me.clone();
        let _ = self.record_replaced(Some(&old), &new);
    }

    /// Our changes of `name`'s record from version `from` on, as one change, if we keep
    /// all of them and it costs less than the record.
    fn change_since(&self, name: &PeerName, uid: u64, from: u64) -> Option<RecordDelta> {
        let kept = self.changes.get(name)?;
        let start = kept
            .iter()
            .position(|c| c.uid == uid && c.from_version == from)?;
        let change = composed(kept.range(start..))?;
        change_cheaper(&change, self.peers.get(name)?).then_some(change)
    }

    pub fn ourself(&self) -> &PeerInfo {
        &self.peers[&self.ourself]
    }

    pub fn peer(&self, name: &PeerName) -> Option<&PeerInfo> {
        self.peers.get(name)
    }

    pub fn peers(&self) -> impl Iterator<Item = &PeerInfo> {
        self.peers.values()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Replaces our own connection list (sorted here) and bumps our version if it changed.
    /// Returns whether it changed.
    pub fn set_our_connections(&mut self, mut connections: Vec<ConnectionSummary>) -> bool {
        connections.sort();
        connections.dedup_by(|a, b| a.remote == b.remote);
        let me = self
            .peers
            .get_mut(&self.ourself)
            .expect("ourself is always present");
        if me.connections == connections {
            return false;
        }
        self.change_ourself(|me| {
            me.connections = connections;
            me.version += 1;
        });
        true
    }

    /// Takes a new short ID for ourselves (after a collision), bumping our version.
    pub fn set_our_short_id(&mut self, short_id: ShortId) {
        self.change_ourself(|me| {
            me.short_id = short_id;
            me.version += 1;
        });
    }

    /// Merges records received by gossip from `source`. The whole update is validated
    /// first: a malformed one changes nothing. Records `source` may not speak for are left
    /// out and listed in [`MergeOutcome::refused`].
    pub fn merge_from(
        &mut self,
        update: &[PeerInfo],
        source: GossipSource<'_>,
    ) -> Result<MergeOutcome, TopologyError> {
        self.merge_with(update, Some(source))
    }

    /// Merges records whoever sent them: the merge alone, for tests of its properties (the
    /// router merges with [`Topology::merge_from`]).
    pub fn merge(&mut self, update: &[PeerInfo]) -> Result<MergeOutcome, TopologyError> {
        self.merge_with(update, None)
    }

    fn merge_with(
        &mut self,
        update: &[PeerInfo],
        source: Option<GossipSource<'_>>,
    ) -> Result<MergeOutcome, TopologyError> {
        if update.len() > MAX_PEERS_PER_UPDATE {
            return Err(TopologyError::TooLarge(update.len()));
        }
        for info in update {
            info.validate()?;
        }
        let trust = source.map(|s| Trust::new(self, s, update.iter().map(|i| i.name)));
        let mut outcome = MergeOutcome::default();
        for info in update {
            if info.name == self.ourself {
                let me = self.ourself();
                if info.supersedes(me)
                    && info.uid != me.uid
                    && info.version < super::OWN_VERSION_LIMIT
                {
                    self.change_ourself(|me| me.version = info.version + 1);
                    outcome.ourself_bumped = true;
                }
                continue;
            }
            let held = self.peers.get(&info.name);
            if held.is_some_and(|existing| !info.supersedes(existing)) {
                continue;
            }
            let verdict = trust.as_ref().map_or(Verdict::Take, |t| {
                t.verdict(info.name, info.uid, held.is_some())
            });
            match verdict {
                Verdict::Take if held.is_none() && self.peers.len() >= MAX_PEERS => {
                    outcome.refused.push((info.name, Refusal::TooManyPeers));
                }
                Verdict::Take => {
                    let old = self.peers.insert(info.name, info.clone());
                    if let Some(change) = self.record_replaced(old.as_ref(), info) {
                        outcome.changes.insert(info.name, change);
                    }
                    outcome.improved.push(info.clone());
                }
                Verdict::Refuse(reason) => outcome.refused.push((info.name, reason)),
                Verdict::ForOwner => {
                    outcome.refused.push((info.name, Refusal::NotFromOwner));
                    outcome.for_owner.push(info.clone());
                }
            }
        }
        if outcome.ourself_bumped {
            outcome.improved.push(self.ourself().clone());
        }
        Ok(outcome)
    }

    /// Applies a peer's change to the record we hold of it. A malformed delta changes
    /// nothing; a change `source` may not make is refused ([`DeltaOutcome::Refused`]).
    pub fn apply_delta_from(
        &mut self,
        delta: &RecordDelta,
        source: GossipSource<'_>,
    ) -> Result<DeltaOutcome, TopologyError> {
        self.apply_delta_with(delta, Some(source))
    }

    /// Applies a change whoever sent it: for tests of deltas themselves (the router uses
    /// [`Topology::apply_delta_from`]).
    pub fn apply_delta(&mut self, delta: &RecordDelta) -> Result<DeltaOutcome, TopologyError> {
        self.apply_delta_with(delta, None)
    }

    fn apply_delta_with(
        &mut self,
        delta: &RecordDelta,
        source: Option<GossipSource<'_>>,
    ) -> Result<DeltaOutcome, TopologyError> {
        if delta.upserted.len() + delta.removed.len() > MAX_CONNECTIONS_PER_PEER
            || delta.version <= delta.from_version
            || delta.version > super::VERSION_LIMIT
            || !delta.short_id.in_range()
        {
            return Err(TopologyError::Invalid(delta.name, "malformed change"));
        }
        if delta.name == self.ourself {
            let me = self.ourself();
            if delta.uid != me.uid
                && (delta.version, delta.uid) > (me.version, me.uid)
                && delta.version < super::OWN_VERSION_LIMIT
            {
                self.change_ourself(|me| me.version = delta.version + 1);
                return Ok(DeltaOutcome::OurselfBumped);
            }
            return Ok(DeltaOutcome::Stale);
        }
        let Some(held) = self.peers.get(&delta.name) else {
            return Ok(DeltaOutcome::Gap);
        };
        if (held.version, held.uid) >= (delta.version, delta.uid) {
            return Ok(DeltaOutcome::Stale);
        }
        if let Some(source) = source {
            let trust = Trust::new(self, source, std::iter::once(delta.name));
            match trust.verdict(delta.name, delta.uid, true) {
                Verdict::Take => {}
                Verdict::Refuse(reason) => return Ok(DeltaOutcome::Refused(reason)),
                // A change of another run: only its owner's whole record counts here.
                Verdict::ForOwner => return Ok(DeltaOutcome::Refused(Refusal::NotFromOwner)),
            }
        }
        if held.uid != delta.uid || held.version != delta.from_version {
            return Ok(DeltaOutcome::Gap);
        }
        let updated = held.apply(delta);
        updated.validate()?;
        self.peers.insert(delta.name, updated);
        self.keep_change(delta.clone());
        Ok(DeltaOutcome::Applied)
    }

    /// The version of every record we hold.
    pub fn digest(&self) -> Vec<RecordVersion> {
        self.peers
            .values()
            .map(|p| RecordVersion {
                name: p.name,
                version: p.version,
                uid: p.uid,
            })
            .collect()
    }

    /// Our records of the listed peers that are newer than the listed versions.
    pub fn newer_than_listed(&self, listed: &[RecordVersion]) -> Vec<PeerInfo> {
        listed
            .iter()
            .filter_map(|d| {
                self.peers
                    .get(&d.name)
                    .filter(|p| (p.version, p.uid) > (d.version, d.uid))
            })
            .cloned()
            .collect()
    }

    /// What brings the listed versions up to ours: for each listed peer we hold newer, the
    /// change from the listed version when we keep every change since and their sum costs
    /// less than the record ([`change_cheaper`]), else the record. A neighbour that missed
    /// one change (it came another way, or out of order) gets what changed, not the record
    /// again.
    pub fn catch_up_listed(&self, listed: &[RecordVersion]) -> (Vec<PeerInfo>, Vec<RecordDelta>) {
        let (mut records, mut changes) = (Vec::new(), Vec::new());
        for d in listed {
            let Some(p) = self.peers.get(&d.name) else {
                continue;
            };
            if (p.version, p.uid) <= (d.version, d.uid) {
                continue;
            }
            match self.change_since(&d.name, d.uid, d.version) {
                Some(change) => changes.push(change),
                None => records.push(p.clone()),
            }
        }
        (records, changes)
    }

    /// What we hold of `name`, as a digest entry (version 0 when nothing).
    pub fn record_version(&self, name: PeerName) -> RecordVersion {
        match self.peers.get(&name) {
            Some(p) => RecordVersion {
                name,
                version: p.version,
                uid: p.uid,
            },
            None => RecordVersion {
                name,
                version: 0,
                uid: 0,
            },
        }
    }

    /// The connection to `remote` that `peer`'s record lists (as held here). Connection
    /// lists are sorted by remote (validated on merge, sorted for ourselves).
    fn listed_connection(&self, peer: PeerName, remote: PeerName) -> Option<&ConnectionSummary> {
        let p = self.peers.get(&peer)?;
        let i = p
            .connections
            .binary_search_by(|c| c.remote.cmp(&remote))
            .ok()?;
        Some(&p.connections[i])
    }

    /// Whether `peer`'s record lists an established connection to `remote`.
    fn lists_established(&self, peer: PeerName, remote: PeerName) -> bool {
        self.listed_connection(peer, remote)
            .is_some_and(|c| c.established)
    }

    /// Whether `a` and `b` are neighbours over an established connection both publish.
    fn adjacent(&self, a: PeerName, b: PeerName) -> bool {
        self.lists_established(a, b) && self.lists_established(b, a)
    }

    /// Whether `peer`'s record lists a connection to `remote` (as held here).
    pub fn lists_connection(&self, peer: PeerName, remote: PeerName) -> bool {
        self.listed_connection(peer, remote).is_some()
    }

    /// Whether the change that led to the record of `peer` held here took out its
    /// connection to `remote`: a connection that just broke, as `peer` tells it (`remote`'s
    /// own record, as held here, may still list it).
    pub fn just_dropped(&self, peer: PeerName, remote: PeerName) -> bool {
        let (Some(held), Some(last)) = (
            self.peers.get(&peer),
            self.changes.get(&peer).and_then(|kept| kept.back()),
        ) else {
            return false;
        };
        (last.version, last.uid) == (held.version, held.uid) && last.removed.contains(&remote)
    }

    /// Compares the digest of `neighbour` with what we hold. A direct peer's record is
    /// taken from that peer only (see [`GossipSource`]), so the records of the peers the
    /// neighbour's record lists connections to are left out of what we send it (it would
    /// refuse them: while a full mesh forms, that is most of every answer), and the records
    /// of our own direct peers that it holds newer do not count (we would refuse them).
    pub fn compare(&self, neighbour: PeerName, digest: &[RecordVersion]) -> DigestComparison {
        let theirs: BTreeMap<PeerName, (u64, u64)> = digest
            .iter()
            .map(|d| (d.name, (d.version, d.uid)))
            .collect();
        let (mut ours_newer, mut our_changes) = (Vec::new(), Vec::new());
        for p in self.peers.values() {
            if p.name != self.ourself && self.lists_connection(neighbour, p.name) {
                continue;
            }
            match theirs.get(&p.name) {
                Some(v) if (p.version, p.uid) <= *v => {}
                Some(&(version, uid)) => match self.change_since(&p.name, uid, version) {
                    Some(change) => our_changes.push(change),
                    None => ours_newer.push(p.clone()),
                },
                None => ours_newer.push(p.clone()),
            }
        }
        let theirs_newer = digest.iter().any(|d| {
            (d.name == neighbour || !self.lists_connection(self.ourself, d.name))
                && self
                    .peers
                    .get(&d.name)
                    .is_none_or(|p| (d.version, d.uid) > (p.version, p.uid))
        });
        DigestComparison {
            ours_newer,
            our_changes,
            theirs_newer,
        }
    }

    /// Everything we know, for a full gossip.
    pub fn full_state(&self) -> Vec<PeerInfo> {
        self.peers.values().cloned().collect()
    }

    /// Removes peers that cannot be reached from us over any published connection.
    /// Returns the removed names.
    pub fn garbage_collect(&mut self) -> Vec<PeerName> {
        self.garbage_collect_but(|_| false).0
    }

    /// [`Topology::garbage_collect`], but the unreachable peers `spared` names are kept (and
    /// returned second): a record that just arrived is often of a peer whose connections
    /// the records of the peers on the way to it do not list yet (their changes are on the
    /// way); forgetting it would only have it sent whole again.
    pub fn garbage_collect_but(
        &mut self,
        spared: impl Fn(PeerName) -> bool,
    ) -> (Vec<PeerName>, Vec<PeerName>) {
        let mut reachable = BTreeSet::from([self.ourself]);
        let mut queue = VecDeque::from([self.ourself]);
        while let Some(name) = queue.pop_front() {
            if reachable.len() == self.peers.len() {
                // Everyone is reached (in a full mesh: once our own connections are seen).
                break;
            }
            if let Some(info) = self.peers.get(&name) {
                for c in &info.connections {
                    if self.peers.contains_key(&c.remote) && reachable.insert(c.remote) {
                        queue.push_back(c.remote);
                    }
                }
            }
        }
        let (kept, gone): (Vec<PeerName>, Vec<PeerName>) = self
            .peers
            .keys()
            .filter(|n| !reachable.contains(n))
            .copied()
            .partition(|n| spared(*n));
        for name in &gone {
            self.peers.remove(name);
            self.changes.remove(name);
        }
        (gone, kept)
    }

    /// Hops from `origin` to every peer it reaches over connections both ends publish as
    /// established (itself at 0).
    pub fn hops_from(&self, origin: PeerName) -> BTreeMap<PeerName, u32> {
        super::graph::Graph::new(self).hops_from(origin)
    }

    /// Whether a message from `origin` handed to us by neighbour `from` came along a route
    /// from it: `from` is `origin`, or nearer to it than we are. False when we do not reach
    /// `origin` at all.
    pub fn arrives_along_route(&self, origin: PeerName, from: PeerName) -> bool {
        if origin == from {
            return true;
        }
        let graph = super::graph::Graph::new(self);
        let ours = graph.hops_from(self.ourself);
        let theirs = graph.hops_from(from);
        match (ours.get(&origin), theirs.get(&origin)) {
            (Some(ours), Some(theirs)) => theirs < ours,
            _ => false,
        }
    }

    /// A peer claiming our short ID whose claim wins over ours: the peer with the lower name
    /// keeps a contested short ID. Only a peer we reach over connections both ends publish
    /// counts (a record nobody connects to is no clash).
    ///
    /// Called after every change of the topology: the search for who we reach runs only
    /// when a record claims our short ID at all.
    pub fn short_id_lost_to(&self) -> Option<PeerName> {
        let me = self.ourself();
        let mut claims = self
            .peers
            .values()
            .filter(|p| p.name != me.name && p.short_id == me.short_id && p.name < me.name)
            .map(|p| p.name)
            .peekable();
        claims.peek()?;
        let reached = self.hops_from(me.name);
        claims.find(|name| reached.contains_key(name))
    }

    /// Short IDs in use by any known peer.
    pub fn short_ids_in_use(&self) -> BTreeSet<ShortId> {
        self.peers.values().map(|p| p.short_id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u64, version: u64, uid: u64) -> PeerInfo {
        let mut p = PeerInfo::new(
            PeerName::from_bytes([0, 0, 0, 0, 0, n as u8]),
            format!("h{n}"),
            uid,
            ShortId::new(n as u16).unwrap(),
        );
        p.version = version;
        p
    }

    #[test]
    fn versions_beyond_the_limit_are_refused_and_change_nothing() {
        let mut view = Topology::new(peer(1, 3, 1));
        view.merge(&[peer(2, 5, 1)]).unwrap();
        let before = view.digest();
        // A record naming us, and one of a third peer, with a version that would wrap.
        for forged in [
            peer(1, u64::MAX, 9),
            peer(2, u64::MAX, 1),
            peer(3, super::super::VERSION_LIMIT + 1, 1),
        ] {
            assert!(
                matches!(
                    view.merge(&[forged]),
                    Err(TopologyError::Invalid(_, "version out of range"))
                ),
                "accepted"
            );
        }
        assert_eq!(view.digest(), before, "nothing changed");
        // A forged record of ours near the limit is not outbid (our record would go past
        // what peers accept); one below the ceiling is, with room to go on counting.
        let outcome = view
            .merge(&[peer(1, super::super::VERSION_LIMIT, 9)])
            .unwrap();
        assert!(!outcome.ourself_bumped);
        assert_eq!(view.ourself().version, 3);
        let outcome = view
            .merge(&[peer(1, super::super::OWN_VERSION_LIMIT - 1, 9)])
            .unwrap();
        assert!(outcome.ourself_bumped);
        assert_eq!(view.ourself().version, super::super::OWN_VERSION_LIMIT);
        let delta = RecordDelta {
            version: u64::MAX,
            ..view.ourself().delta_from(&peer(1, 3, 1))
        };
        assert!(view.apply_delta(&delta).is_err());
    }

    #[test]
    fn a_record_of_ours_is_outbid_only_where_peers_still_take_ours() {
        use super::super::{OWN_VERSION_LIMIT, VERSION_LIMIT};
        // A forged record naming us at the limit peers accept: bumping past it would give us
        // a version every peer refuses (and with it every update carrying our record). It is
        // not outbid, and nothing changes.
        for version in [VERSION_LIMIT, OWN_VERSION_LIMIT + 1] {
            let mut view = Topology::new(peer(1, 3, 1));
            let outcome = view.merge(&[peer(1, version, 9)]).unwrap();
            assert!(!outcome.ourself_bumped);
            let forged = RecordDelta {
                uid: 9,
                from_version: version - 1,
                version,
                ..view.ourself().delta_from(&peer(1, 3, 1))
            };
            assert!(!matches!(
                view.apply_delta(&forged),
                Ok(DeltaOutcome::OurselfBumped)
            ));
            assert_eq!(view.ourself().version, 3, "nothing changed");
        }
        // Below half the limit a record of an earlier run is outbid, and peers take ours.
        let mut view = Topology::new(peer(1, 3, 1));
        let outcome = view.merge(&[peer(1, OWN_VERSION_LIMIT - 1, 9)]).unwrap();
        assert!(outcome.ourself_bumped);
        assert_eq!(view.ourself().version, OWN_VERSION_LIMIT);
        let mut theirs = Topology::new(peer(2, 1, 1));
        theirs.merge(&[view.ourself().clone()]).unwrap();
    }

    #[test]
    fn a_short_id_beyond_12_bits_in_gossip_is_refused() {
        let mut view = Topology::new(peer(1, 1, 1));
        let mut alias = peer(2, 1, 1);
        // Forged on the wire: deserialisation does not range-check.
        alias.short_id =
            postcard::from_bytes(&postcard::to_stdvec(&(4096u16 + 2)).unwrap()).unwrap();
        assert!(matches!(
            view.merge(&[alias]),
            Err(TopologyError::Invalid(_, "short ID out of range"))
        ));
        assert!(view.peer(&peer(2, 1, 1).name).is_none());
    }

    #[test]
    fn a_digest_compared_yields_our_newer_records_and_whether_theirs_are_newer() {
        let mut ours = Topology::new(peer(1, 1, 1));
        ours.merge(&[peer(2, 5, 1), peer(3, 2, 1)]).unwrap();
        let mut theirs = Topology::new(peer(4, 1, 1));
        theirs.merge(&[peer(2, 5, 1), peer(3, 3, 1)]).unwrap();

        let c = ours.compare(pname(4), &theirs.digest());
        let names: Vec<u64> = c.ours_newer.iter().map(|p| p.name.as_u64()).collect();
        assert_eq!(
            names,
            vec![1],
            "they lack our own record; peer 2 is equal; peer 3 is newer there"
        );
        assert!(c.theirs_newer, "they hold peer 3 newer and peer 4 we lack");

        let back = theirs.compare(pname(1), &ours.digest());
        let mut names: Vec<u64> = back.ours_newer.iter().map(|p| p.name.as_u64()).collect();
        names.sort();
        assert_eq!(names, vec![3, 4]);
        assert!(back.theirs_newer);

        // After exchanging both answers the views agree and digests match.
        ours.merge(&back.ours_newer).unwrap();
        theirs.merge(&c.ours_newer).unwrap();
        assert_eq!(ours.digest(), theirs.digest());
        assert_eq!(
            ours.compare(pname(4), &theirs.digest()),
            DigestComparison::default()
        );
    }

    #[test]
    fn a_delta_moves_a_record_from_its_base_version_only() {
        let conn = link_as;
        let mut old = peer(2, 3, 9);
        old.connections = vec![conn(1, true), conn(3, false), conn(4, true)];
        let mut new = old.clone();
        new.version = 5;
        new.connections = vec![conn(1, true), conn(3, true), conn(5, false)];
        let delta = new.delta_from(&old);
        assert_eq!(delta.upserted, vec![conn(3, true), conn(5, false)]);
        assert_eq!(
            delta.removed,
            vec![PeerName::from_bytes([0, 0, 0, 0, 0, 4])]
        );

        let mut t = Topology::new(peer(1, 1, 1));
        assert_eq!(
            t.apply_delta(&delta),
            Ok(DeltaOutcome::Gap),
            "no record held"
        );
        t.merge(&[old.clone()]).unwrap();
        assert_eq!(t.apply_delta(&delta), Ok(DeltaOutcome::Applied));
        assert_eq!(t.peer(&new.name), Some(&new));
        assert_eq!(
            t.apply_delta(&delta),
            Ok(DeltaOutcome::Stale),
            "applied twice"
        );

        let mut other_base = old.clone();
        other_base.version = 4;
        let mut t = Topology::new(peer(1, 1, 1));
        t.merge(&[other_base]).unwrap();
        assert_eq!(
            t.apply_delta(&delta),
            Ok(DeltaOutcome::Gap),
            "held version is not the base"
        );

        let mut bad = delta.clone();
        bad.upserted.push(conn(2, true));
        let mut t = Topology::new(peer(1, 1, 1));
        t.merge(&[old.clone()]).unwrap();
        assert!(t.apply_delta(&bad).is_err(), "a connection to itself");
        assert_eq!(t.peer(&old.name), Some(&old), "nothing changed");
    }

    #[test]
    fn a_neighbour_a_few_versions_behind_gets_the_changes_not_the_record() {
        let conn = |n: u8| ConnectionSummary {
            remote: PeerName::from_bytes([0, 0, 0, 0, 0, n]),
            address: format!("10.0.0.{n}:6783").parse().unwrap(),
            outbound: false,
            established: true,
        };
        // Peer 1 gains connections one by one; peer 2 saw only its first version.
        let mut ours = Topology::new(peer(1, 1, 7));
        let mut behind = Topology::new(peer(2, 1, 8));
        behind.merge(&[ours.ourself().clone()]).unwrap();
        let mut connections = Vec::new();
        for n in 3..6 {
            connections.push(conn(n));
            assert!(ours.set_our_connections(connections.clone()));
        }
        let c = ours.compare(pname(2), &behind.digest());
        assert!(
            c.ours_newer.is_empty(),
            "no whole record: {:?}",
            c.ours_newer
        );
        assert_eq!(c.our_changes.len(), 1, "the three changes as one");
        for change in &c.our_changes {
            assert_eq!(change.upserted.len(), 3, "the three new connections");
            assert_eq!(behind.apply_delta(change), Ok(DeltaOutcome::Applied));
        }
        assert_eq!(behind.peer(&ours.ourself().name), Some(ours.ourself()));

        // Changes received from others are kept and handed on the same way.
        let mut relay = Topology::new(peer(4, 1, 10));
        relay.merge(&[peer(1, 1, 7)]).unwrap();
        for change in &c.our_changes {
            assert_eq!(relay.apply_delta(change), Ok(DeltaOutcome::Applied));
        }
        let mut first_version = Topology::new(peer(5, 1, 11));
        first_version.merge(&[peer(1, 1, 7)]).unwrap();
        let passed_on = relay.compare(pname(5), &first_version.digest());
        assert_eq!(passed_on.ours_newer.len(), 1, "relay's own record only");
        assert_eq!(passed_on.our_changes, c.our_changes);

        // Farther behind than the changes kept, or another run of the peer: the record.
        let mut far = Topology::new(peer(3, 1, 9));
        far.merge(&[ours.ourself().clone()]).unwrap();
        for n in 6..(7 + CHANGES_KEPT as u8) {
            connections.push(conn(n));
            assert!(ours.set_our_connections(connections.clone()));
        }
        let c = ours.compare(pname(3), &far.digest());
        assert_eq!(c.ours_newer.len(), 1);
        assert!(c.our_changes.is_empty());
        let mut other_run = far.digest();
        other_run.iter_mut().for_each(|d| d.uid += 1);
        let c = ours.compare(pname(3), &[other_run[0]]);
        assert!(c.our_changes.is_empty());
    }

    #[test]
    fn a_neighbour_asking_for_one_record_gets_the_changes_it_missed() {
        let conn = |n: u8| ConnectionSummary {
            remote: PeerName::from_bytes([0, 0, 0, 0, 0, n]),
            address: format!("10.0.0.{n}:6783").parse().unwrap(),
            outbound: false,
            established: true,
        };
        let mut ours = Topology::new(peer(1, 1, 7));
        let mut asker = Topology::new(peer(2, 1, 8));
        let mut connections: Vec<ConnectionSummary> = (3..20).map(conn).collect();
        assert!(ours.set_our_connections(connections.clone()));
        asker.merge(&[ours.ourself().clone()]).unwrap();
        for n in 20..22 {
            connections.push(conn(n));
            assert!(ours.set_our_connections(connections.clone()));
        }
        let held = asker.record_version(ours.ourself().name);
        let (records, changes) = ours.catch_up_listed(&[held]);
        assert!(records.is_empty(), "{records:?}");
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].upserted.len(), 2);
        for change in &changes {
            assert_eq!(asker.apply_delta(change), Ok(DeltaOutcome::Applied));
        }
        assert_eq!(asker.peer(&ours.ourself().name), Some(ours.ourself()));
        // Nothing held, or already up to date: the record, or nothing.
        let unknown = Topology::new(peer(5, 1, 9)).record_version(ours.ourself().name);
        assert_eq!(
            ours.catch_up_listed(&[unknown]).0,
            vec![ours.ourself().clone()]
        );
        let current = asker.record_version(ours.ourself().name);
        assert_eq!(ours.catch_up_listed(&[current]), (Vec::new(), Vec::new()));
    }

    #[test]
    fn a_record_that_went_back_and_forth_goes_whole_when_its_changes_cost_more() {
        let conn = ConnectionSummary {
            remote: PeerName::from_bytes([0, 0, 0, 0, 0, 3]),
            address: "10.0.0.3:6783".parse().unwrap(),
            outbound: false,
            established: true,
        };
        let mut ours = Topology::new(peer(1, 1, 7));
        let mut behind = Topology::new(peer(2, 1, 8));
        behind.merge(&[ours.ourself().clone()]).unwrap();
        // One connection coming and going: ten changes to a record of one connection.
        for i in 0..10 {
            let now = if i % 2 == 0 {
                vec![conn.clone()]
            } else {
                Vec::new()
            };
            assert!(ours.set_our_connections(now));
        }
        let c = ours.compare(pname(2), &behind.digest());
        assert_eq!(c.ours_newer, vec![ours.ourself().clone()]);
        assert!(c.our_changes.is_empty());
        // One version behind: the change.
        let mut one_behind = Topology::new(peer(2, 1, 8));
        one_behind.merge(&[ours.ourself().clone()]).unwrap();
        assert!(ours.set_our_connections(vec![conn.clone()]));
        let c = ours.compare(pname(2), &one_behind.digest());
        assert!(c.ours_newer.is_empty());
        assert_eq!(c.our_changes.len(), 1);
    }

    #[test]
    fn changes_kept_go_as_one_change_of_each_connection_as_it_ended() {
        let conn = link_as;
        let mut ours = Topology::new(peer(1, 1, 7));
        let mut behind = Topology::new(peer(2, 1, 8));
        let mut connections: Vec<ConnectionSummary> = (3..40).map(|n| conn(n, true)).collect();
        assert!(ours.set_our_connections(connections.clone()));
        behind.merge(&[ours.ourself().clone()]).unwrap();
        // 41 comes, 4 goes, 41 goes and 42 comes pending, 42 is established: four versions.
        connections.push(conn(41, false));
        assert!(ours.set_our_connections(connections.clone()));
        connections.retain(|c| c.remote != conn(4, true).remote);
        assert!(ours.set_our_connections(connections.clone()));
        connections.pop();
        connections.push(conn(42, false));
        assert!(ours.set_our_connections(connections.clone()));
        connections.pop();
        connections.push(conn(42, true));
        assert!(ours.set_our_connections(connections.clone()));

        let (records, changes) = ours.catch_up_listed(&[behind.record_version(pname(1))]);
        assert!(records.is_empty());
        let [change] = changes.as_slice() else {
            panic!("one change: {changes:?}");
        };
        assert_eq!((change.from_version, change.version), (2, 6));
        assert_eq!(change.upserted, vec![conn(42, true)], "42 as it ended");
        assert_eq!(change.removed, vec![pname(4), pname(41)]);
        assert_eq!(behind.apply_delta(change), Ok(DeltaOutcome::Applied));
        assert_eq!(behind.peer(&pname(1)), Some(ours.ourself()));
        // The receiver keeps it as one change, and hands it on as it got it.
        let mut first = Topology::new(peer(5, 1, 9));
        let mut v2 = ours.ourself().clone();
        v2.version = 2;
        v2.connections = (3..40).map(|n| conn(n, true)).collect();
        first.merge(&[v2]).unwrap();
        let (_, passed_on) = behind.catch_up_listed(&[first.record_version(pname(1))]);
        assert_eq!(passed_on, changes);
    }

    #[test]
    fn a_digest_is_answered_without_the_records_of_the_neighbours_own_direct_peers() {
        // We (1) know 3 and 4; the neighbour (2) is connected to 3 and to us, and holds
        // old versions of everything.
        let mut ours = Topology::new(peer(1, 1, 1));
        ours.set_our_connections(vec![link(2), link(3)]);
        ours.merge(&[
            connected(2, 5, 2, &[1, 3]),
            connected(3, 5, 3, &[1, 2]),
            connected(4, 5, 4, &[3]),
        ])
        .unwrap();
        let mut theirs = Topology::new(connected(2, 5, 2, &[1, 3]));
        theirs
            .merge(&[
                connected(1, 1, 1, &[]),
                connected(3, 1, 3, &[]),
                connected(4, 1, 4, &[]),
            ])
            .unwrap();
        let c = ours.compare(pname(2), &theirs.digest());
        let mut sent: Vec<PeerName> = c.ours_newer.iter().map(|p| p.name).collect();
        sent.extend(c.our_changes.iter().map(|d| d.name));
        sent.sort();
        assert_eq!(
            sent,
            vec![pname(1), pname(4)],
            "not 3: the neighbour takes 3's record from 3 only"
        );
        assert!(!c.theirs_newer);

        // A newer record of our direct peer 3 held by the neighbour is not asked for (we
        // take it from 3 only); a newer record of 4 or of the neighbour itself is.
        let mut digest = ours.digest();
        digest
            .iter_mut()
            .filter(|d| d.name == pname(3))
            .for_each(|d| d.version = 9);
        assert!(!ours.compare(pname(2), &digest).theirs_newer);
        for newer in [pname(4), pname(2)] {
            let mut digest = ours.digest();
            digest
                .iter_mut()
                .filter(|d| d.name == newer)
                .for_each(|d| d.version = 9);
            assert!(ours.compare(pname(2), &digest).theirs_newer, "{newer}");
        }
    }

    #[test]
    fn a_record_improved_by_a_merge_is_passed_on_as_the_change_from_the_version_held() {
        let mut t = Topology::new(peer(1, 1, 1));
        let outcome = t.merge(&[connected(3, 2, 3, &[4])]).unwrap();
        assert!(
            outcome.changes.is_empty(),
            "nothing held: the record goes on"
        );
        let outcome = t.merge(&[connected(3, 5, 3, &[4, 5])]).unwrap();
        let change = &outcome.changes[&pname(3)];
        assert_eq!((change.from_version, change.version), (2, 5));
        assert_eq!(change.upserted, vec![link(5)]);
        // Another run of 3: the record.
        let outcome = t.merge(&[connected(3, 6, 33, &[4])]).unwrap();
        assert!(outcome.changes.is_empty());
        assert_eq!(outcome.improved.len(), 1);
    }

    #[test]
    fn a_newer_uid_at_the_same_version_counts_as_newer() {
        let ours = Topology::new(peer(1, 1, 1));
        let digest = [RecordVersion {
            name: PeerName::from_bytes([0, 0, 0, 0, 0, 2]),
            version: 3,
            uid: 7,
        }];
        assert!(ours.compare(pname(9), &digest).theirs_newer);
        let mut with_old = Topology::new(peer(1, 1, 1));
        with_old.merge(&[peer(2, 3, 5)]).unwrap();
        assert!(with_old.compare(pname(9), &digest).theirs_newer);
        let newer = [RecordVersion {
            name: PeerName::from_bytes([0, 0, 0, 0, 0, 2]),
            version: 3,
            uid: 4,
        }];
        assert!(!with_old.compare(pname(9), &newer).theirs_newer);
    }

    fn link(n: u8) -> ConnectionSummary {
        link_as(n, true)
    }

    /// A dialled connection to peer `n`, established or not.
    fn link_as(n: u8, established: bool) -> ConnectionSummary {
        ConnectionSummary {
            remote: PeerName::from_bytes([0, 0, 0, 0, 0, n]),
            address: format!("10.0.0.{n}:6783").parse().unwrap(),
            outbound: true,
            established,
        }
    }

    fn connected(n: u64, version: u64, uid: u64, to: &[u8]) -> PeerInfo {
        PeerInfo {
            connections: to.iter().map(|&r| link(r)).collect(),
            ..peer(n, version, uid)
        }
    }

    fn pname(n: u8) -> PeerName {
        PeerName::from_bytes([0, 0, 0, 0, 0, n])
    }

    /// Peer 1's view: connected to 2 and 3, 3 to 4 (line 1–3–4, and 2 beside).
    fn view_of_1() -> (Topology, BTreeMap<PeerName, u64>) {
        let mut t = Topology::new(peer(1, 1, 1));
        t.set_our_connections(vec![link(2), link(3)]);
        t.merge(&[
            connected(2, 1, 20, &[1]),
            connected(3, 1, 30, &[1, 4]),
            connected(4, 1, 40, &[3]),
        ])
        .unwrap();
        let direct = BTreeMap::from([(pname(2), 20), (pname(3), 30)]);
        (t, direct)
    }

    #[test]
    fn a_forged_record_of_a_third_peer_is_refused() {
        let (mut t, direct) = view_of_1();
        let before = t.digest();
        let from_2 = GossipSource {
            from: pname(2),
            direct: &direct,
        };
        let limit = super::super::VERSION_LIMIT;
        // Peer 2 speaks for 3 (our neighbour) and for 4 (behind 3, not behind 2), with
        // the right UIDs and the highest version there is.
        let outcome = t
            .merge_from(
                &[connected(3, limit, 30, &[]), connected(4, limit, 40, &[])],
                from_2,
            )
            .unwrap();
        assert!(outcome.improved.is_empty());
        assert_eq!(
            outcome.refused,
            [
                (pname(3), Refusal::NotFromOwner),
                (pname(4), Refusal::NotAlongRoute)
            ]
        );
        // Another run of 3, newer: not taken from 2, handed to 3 to outbid.
        let outcome = t
            .merge_from(&[connected(3, limit, 31, &[])], from_2)
            .unwrap();
        assert!(outcome.improved.is_empty());
        assert_eq!(outcome.refused, [(pname(3), Refusal::NotFromOwner)]);
        assert_eq!(outcome.for_owner.len(), 1);
        // The same as changes.
        let mut change = connected(4, 2, 40, &[]).delta_from(&connected(4, 1, 40, &[3]));
        assert_eq!(
            t.apply_delta_from(&change, from_2),
            Ok(DeltaOutcome::Refused(Refusal::NotAlongRoute))
        );
        change.name = pname(3);
        change.uid = 30;
        assert_eq!(
            t.apply_delta_from(&change, from_2),
            Ok(DeltaOutcome::Refused(Refusal::NotFromOwner))
        );
        assert_eq!(t.digest(), before, "nothing changed");

        // 3 speaks for itself in its own run only, and for 4 (it is on the way to 4).
        let from_3 = GossipSource {
            from: pname(3),
            direct: &direct,
        };
        let outcome = t
            .merge_from(&[connected(3, 2, 99, &[1, 4])], from_3)
            .unwrap();
        assert_eq!(outcome.refused, [(pname(3), Refusal::OtherRun)]);
        let outcome = t
            .merge_from(
                &[connected(3, 2, 30, &[1, 4]), connected(4, 2, 40, &[3])],
                from_3,
            )
            .unwrap();
        assert_eq!(outcome.improved.len(), 2);
        assert!(outcome.refused.is_empty());
        let change = connected(4, 3, 40, &[3, 5]).delta_from(&connected(4, 2, 40, &[3]));
        assert_eq!(
            t.apply_delta_from(&change, from_3),
            Ok(DeltaOutcome::Applied)
        );
        // A new peer comes from anyone (up to the peer limit); so does one we do not reach.
        let outcome = t.merge_from(&[connected(6, 1, 60, &[2])], from_2).unwrap();
        assert_eq!(outcome.improved.len(), 1);
        let outcome = t.merge_from(&[connected(6, 2, 60, &[2])], from_2).unwrap();
        assert_eq!(
            outcome.improved.len(),
            1,
            "6 is not reached: 2 does not list it"
        );
    }

    #[test]
    fn new_peers_beyond_the_limit_are_refused() {
        let (mut t, direct) = view_of_1();
        let from_2 = GossipSource {
            from: pname(2),
            direct: &direct,
        };
        let flood: Vec<PeerInfo> = (0..MAX_PEERS as u64)
            .map(|i| PeerInfo {
                name: PeerName::from_bytes([0, 0, 0, 1, (i >> 8) as u8, i as u8]),
                short_id: ShortId::new((i % 4096) as u16).unwrap(),
                ..peer(9, 1, 9)
            })
            .collect();
        let outcome = t.merge_from(&flood, from_2).unwrap();
        assert_eq!(t.len(), MAX_PEERS);
        assert_eq!(outcome.improved.len(), MAX_PEERS - 4);
        assert_eq!(outcome.refused.len(), 4);
        assert!(outcome
            .refused
            .iter()
            .all(|(_, r)| *r == Refusal::TooManyPeers));
        // Known peers still change.
        let from_3 = GossipSource {
            from: pname(3),
            direct: &direct,
        };
        let outcome = t.merge_from(&[connected(4, 2, 40, &[3])], from_3).unwrap();
        assert_eq!(outcome.improved.len(), 1);
    }

    #[test]
    fn only_a_reachable_peer_takes_our_short_id_from_us() {
        let (mut t, _) = view_of_1();
        // Peer 0 (a lower name) claims our short ID 1 but nobody connects to it.
        let claim = PeerInfo {
            short_id: ShortId::new(1).unwrap(),
            ..connected(0, 1, 5, &[2])
        };
        t.merge(&[claim.clone()]).unwrap();
        assert_eq!(t.short_id_lost_to(), None, "2 does not list 0: no clash");
        // Once both ends publish the connection, it is a clash 0 wins.
        t.merge(&[connected(2, 2, 20, &[0, 1])]).unwrap();
        assert_eq!(t.short_id_lost_to(), Some(pname(0)));
    }
}
