//! The ring: who owns which part of the allocation range, as a CRDT gossiped between peers.
//!
//! The range (default `10.32.0.0/12`) is cut by *tokens*: a token at address `a` says that
//! its owner holds every address from `a` up to the next token (or the end of the range).
//! Once claimed, a ring always has a token at the start of the range, so every address is
//! owned by exactly one peer. Tokens are never removed.
//!
//! Only a token's owner changes it (hands it to another peer, or reports its free count),
//! and every change raises the token's version. Merging two rings keeps, per token, the
//! higher version ([`RingState::join`]): commutative, associative and idempotent, so any
//! delivery order of any set of owner-made changes converges. Two rings that cannot both
//! be right (another range, other seeds, one version with two contents) are refused whole.
//!
//! [`Ring::merge`] adds the checks only the receiving peer can make: nobody else may change
//! a token we own or insert a token into a range we own. So the space a peer owns in its
//! own view only ever changes by its own doing or by another peer giving it space; as each
//! peer allocates only from space it owns in its own view, no address is handed out twice.
//! The exception is `rmpeer` of a peer that is in fact alive: that peer then refuses the
//! rings that moved its tokens, and the operator sees the error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::cidr::{AddrRange, Cidr};
use crate::mesh::peer_name::PeerName;

/// Most tokens a ring from gossip may carry.
pub const MAX_TOKENS: usize = 65536;

/// What a token says about the segment it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub owner: PeerName,
    /// Raised by the owner on every change.
    pub version: u64,
    /// Free addresses in the segment as the owner last reported.
    pub free: u64,
}

/// One token as carried in gossip and persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub start: Ipv4Addr,
    pub owner: PeerName,
    pub version: u64,
    pub free: u64,
}

/// One owned segment, for status displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub range: AddrRange,
    pub owner: PeerName,
    pub version: u64,
    pub free: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    #[error("malformed ring refused: {0}")]
    Malformed(String),
    #[error("ring for range {theirs} refused: our allocation range is {ours}")]
    WrongRange { ours: Cidr, theirs: Cidr },
    #[error("IP allocation was seeded by different peers (ours: {ours}, theirs: {theirs})")]
    SeededByDifferentPeers { ours: PeerList, theirs: PeerList },
    #[error("ring refused: token at {at} has version {version} with two different contents")]
    Inconsistent { at: Ipv4Addr, version: u64 },
    #[error("ring refused: our token at {at} was changed by another peer (was 'rmpeer' run on us while we were alive?)")]
    OurTokenChanged { at: Ipv4Addr },
    #[error("ring refused: another peer put a token at {at}, inside a range we own")]
    InsertedIntoOurRange { at: Ipv4Addr },
    #[error("the ring is already claimed")]
    AlreadyClaimed,
    #[error("cannot split the range among {0} peers")]
    BadPeerCount(usize),
    #[error("{range} is not wholly owned by us")]
    NotOurs { range: AddrRange },
    #[error("{0} is ourselves")]
    Ourselves(PeerName),
    #[error("{0} owns no range")]
    OwnsNothing(PeerName),
}

/// A sorted list of peer names, printed comma-separated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerList(pub Vec<PeerName>);

impl fmt::Display for PeerList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(|p| p.to_string()).collect();
        write!(f, "{}", names.join(","))
    }
}

/// The ring as gossiped and persisted. Always valid: deserialising checks it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRing", into = "RawRing")]
pub struct RingState {
    range: Cidr,
    /// The peers the range was first split among, sorted; empty while unclaimed.
    seeds: Vec<PeerName>,
    tokens: BTreeMap<u32, TokenInfo>,
}

#[derive(Serialize, Deserialize)]
struct RawRing {
    range: Cidr,
    seeds: Vec<PeerName>,
    tokens: Vec<Token>,
}

impl TryFrom<RawRing> for RingState {
    type Error = RingError;
    fn try_from(raw: RawRing) -> Result<Self, RingError> {
        let bad = |m: String| Err(RingError::Malformed(m));
        if raw.tokens.len() > MAX_TOKENS {
            return bad(format!("{} tokens, more than {MAX_TOKENS}", raw.tokens.len()));
        }
        if raw.seeds.windows(2).any(|w| w[0] >= w[1]) {
            return bad("seeds not sorted or duplicated".into());
        }
        if raw.tokens.is_empty() != raw.seeds.is_empty() {
            return bad("seeds without tokens or tokens without seeds".into());
        }
        let r = raw.range.range();
        let mut tokens = BTreeMap::new();
        let mut prev: Option<u32> = None;
        for t in &raw.tokens {
            let at = u32::from(t.start);
            if !r.contains(at) {
                return bad(format!("token at {} outside {}", t.start, raw.range));
            }
            if prev.is_some_and(|p| p >= at) {
                return bad(format!("tokens not sorted or duplicated at {}", t.start));
            }
            prev = Some(at);
            tokens.insert(at, TokenInfo { owner: t.owner, version: t.version, free: t.free });
        }
        if !tokens.is_empty() && !tokens.contains_key(&r.first) {
            return bad(format!("no token at the start of {}", raw.range));
        }
        let state = RingState { range: raw.range, seeds: raw.seeds, tokens };
        for seg in state.segments() {
            if seg.free > seg.range.len() {
                return bad(format!("free count {} of {} larger than the segment", seg.free, seg.range));
            }
        }
        Ok(state)
    }
}

impl From<RingState> for RawRing {
    fn from(s: RingState) -> Self {
        let tokens = s.tokens().collect();
        RawRing { range: s.range, seeds: s.seeds, tokens }
    }
}

impl RingState {
    /// An unclaimed ring over `range`.
    pub fn new(range: Cidr) -> Self {
        Self { range, seeds: Vec::new(), tokens: BTreeMap::new() }
    }

    pub fn range(&self) -> Cidr {
        self.range
    }

    pub fn seeds(&self) -> &[PeerName] {
        &self.seeds
    }

    /// No peer owns anything yet.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn tokens(&self) -> impl Iterator<Item = Token> + '_ {
        self.tokens.iter().map(|(&a, t)| Token { start: Ipv4Addr::from(a), owner: t.owner, version: t.version, free: t.free })
    }

    /// Every segment in address order (adjacent segments of one owner are not coalesced).
    pub fn segments(&self) -> impl Iterator<Item = Segment> + '_ {
        let end = self.range.range().last;
        let mut it = self.tokens.iter().peekable();
        std::iter::from_fn(move || {
            let (&start, info) = it.next()?;
            let last = it.peek().map(|(&next, _)| next - 1).unwrap_or(end);
            Some(Segment { range: AddrRange { first: start, last }, owner: info.owner, version: info.version, free: info.free })
        })
    }

    /// The segment holding `addr`, if the ring is claimed and `addr` is in the range.
    pub fn segment_of(&self, addr: Ipv4Addr) -> Option<Segment> {
        let a = u32::from(addr);
        if !self.range.range().contains(a) {
            return None;
        }
        let (&start, info) = self.tokens.range(..=a).next_back()?;
        let last = self.tokens.range(a + 1..).next().map(|(&n, _)| n - 1).unwrap_or(self.range.range().last);
        Some(Segment { range: AddrRange { first: start, last }, owner: info.owner, version: info.version, free: info.free })
    }

    pub fn owner_of(&self, addr: Ipv4Addr) -> Option<PeerName> {
        self.segment_of(addr).map(|s| s.owner)
    }

    /// The ranges `peer` owns, adjacent segments coalesced, in address order.
    pub fn ranges_of(&self, peer: PeerName) -> Vec<AddrRange> {
        let mut out: Vec<AddrRange> = Vec::new();
        for seg in self.segments().filter(|s| s.owner == peer) {
            match out.last_mut() {
                Some(prev) if u64::from(prev.last) + 1 == u64::from(seg.range.first) => prev.last = seg.range.last,
                _ => out.push(seg.range),
            }
        }
        out
    }

    /// Every peer that owns something.
    pub fn owners(&self) -> BTreeSet<PeerName> {
        self.tokens.values().map(|t| t.owner).collect()
    }

    /// Addresses owned and reported free, per owner.
    pub fn space_by_owner(&self) -> BTreeMap<PeerName, (u64, u64)> {
        let mut out: BTreeMap<PeerName, (u64, u64)> = BTreeMap::new();
        for seg in self.segments() {
            let e = out.entry(seg.owner).or_default();
            e.0 += seg.range.len();
            e.1 += seg.free;
        }
        out
    }

    /// Checks the invariants a ring always holds: tokens sorted and inside the range, one at
    /// the start of the range when claimed (so every address has exactly one owner), seeds
    /// exactly when claimed, free counts within their segments.
    pub fn check(&self) -> Result<(), RingError> {
        RingState::try_from(RawRing::from(self.clone())).map(|_| ())
    }

    /// The CRDT join: per token the higher version. Refused if the rings cover different
    /// ranges, were seeded by different peers, or hold one version of a token with two
    /// contents.
    pub fn join(&self, other: &RingState) -> Result<RingState, RingError> {
        if self.range != other.range {
            return Err(RingError::WrongRange { ours: self.range, theirs: other.range });
        }
        if !self.seeds.is_empty() && !other.seeds.is_empty() && self.seeds != other.seeds {
            return Err(RingError::SeededByDifferentPeers {
                ours: PeerList(self.seeds.clone()),
                theirs: PeerList(other.seeds.clone()),
            });
        }
        let mut out = self.clone();
        if out.seeds.is_empty() {
            out.seeds = other.seeds.clone();
        }
        for (&at, theirs) in &other.tokens {
            match out.tokens.get(&at) {
                Some(ours) if ours.version == theirs.version && ours != theirs => {
                    return Err(RingError::Inconsistent { at: Ipv4Addr::from(at), version: ours.version });
                }
                Some(ours) if ours.version >= theirs.version => {}
                _ => {
                    out.tokens.insert(at, *theirs);
                }
            }
        }
        out.check()?;
        Ok(out)
    }
}

/// One peer's ring: the shared state plus who "we" are, which decides what we may change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    ourself: PeerName,
    state: RingState,
}

impl Ring {
    pub fn new(ourself: PeerName, range: Cidr) -> Self {
        Self { ourself, state: RingState::new(range) }
    }

    /// A ring restored from persistence (or adopted whole).
    pub fn from_state(ourself: PeerName, state: RingState) -> Self {
        Self { ourself, state }
    }

    pub fn ourself(&self) -> PeerName {
        self.ourself
    }

    pub fn state(&self) -> &RingState {
        &self.state
    }

    pub fn range(&self) -> Cidr {
        self.state.range
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// Our own ranges, coalesced.
    pub fn our_ranges(&self) -> Vec<AddrRange> {
        self.state.ranges_of(self.ourself)
    }

    /// Our tokens' segments (not coalesced), in address order.
    pub fn our_segments(&self) -> Vec<Segment> {
        self.state.segments().filter(|s| s.owner == self.ourself).collect()
    }

    pub fn owns(&self, addr: Ipv4Addr) -> bool {
        self.state.owner_of(addr) == Some(self.ourself)
    }

    /// Merges a ring from gossip. The whole ring is checked first; a refused one changes
    /// nothing. Returns whether ours changed.
    pub fn merge(&mut self, theirs: &RingState) -> Result<bool, RingError> {
        theirs.check()?;
        if !self.state.is_empty() {
            for (&at, t) in &theirs.tokens {
                match self.state.tokens.get(&at) {
                    Some(ours) if ours.owner == self.ourself && t.version > ours.version => {
                        return Err(RingError::OurTokenChanged { at: Ipv4Addr::from(at) });
                    }
                    Some(_) => {}
                    None if self.owns(Ipv4Addr::from(at)) => {
                        return Err(RingError::InsertedIntoOurRange { at: Ipv4Addr::from(at) });
                    }
                    None => {}
                }
            }
        }
        let joined = self.state.join(theirs)?;
        let changed = joined != self.state;
        self.state = joined;
        Ok(changed)
    }

    /// Splits the whole (unclaimed) range equally among `peers` (the seeds or the consensus
    /// result). Deterministic: every peer that claims for the same set builds the same ring.
    pub fn claim_for_peers(&mut self, peers: &[PeerName]) -> Result<(), RingError> {
        if !self.state.is_empty() {
            return Err(RingError::AlreadyClaimed);
        }
        let mut peers = peers.to_vec();
        peers.sort();
        peers.dedup();
        let r = self.state.range.range();
        let n = peers.len() as u64;
        if n == 0 || n > r.len() {
            return Err(RingError::BadPeerCount(peers.len()));
        }
        let starts: Vec<u32> = (0..n).map(|i| r.first + (i * r.len() / n) as u32).collect();
        for (i, peer) in peers.iter().enumerate() {
            let end = starts.get(i + 1).map(|&s| u64::from(s)).unwrap_or(u64::from(r.last) + 1);
            let free = end - u64::from(starts[i]);
            self.state.tokens.insert(starts[i], TokenInfo { owner: *peer, version: 1, free });
        }
        self.state.seeds = peers;
        Ok(())
    }

    /// Gives `range` (all of it owned by us, all of it free) to `to`.
    pub fn give(&mut self, range: AddrRange, to: PeerName) -> Result<(), RingError> {
        if to == self.ourself {
            return Err(RingError::Ourselves(to));
        }
        let ring = self.state.range.range();
        let ours = self.our_ranges();
        if !ours.iter().any(|o| o.first <= range.first && range.last <= o.last) {
            return Err(RingError::NotOurs { range });
        }
        if range.last < ring.last {
            let after = range.last + 1;
            if !self.state.tokens.contains_key(&after) {
                // We own `after` (it continues our segment); it keeps its owner.
                self.state.tokens.insert(after, TokenInfo { owner: self.ourself, version: 1, free: 0 });
            }
        }
        if !self.state.tokens.contains_key(&range.first) {
            self.state.tokens.insert(range.first, TokenInfo { owner: self.ourself, version: 0, free: 0 });
        }
        for (_, t) in self.state.tokens.range_mut(range.first..=range.last) {
            t.owner = to;
            t.version += 1;
        }
        self.clamp_our_free();
        self.refresh_free_of(to, range);
        Ok(())
    }

    /// Sets the free counts of the tokens inside `range` (just moved to `owner`) to their
    /// segment sizes: moved space is all free.
    fn refresh_free_of(&mut self, owner: PeerName, range: AddrRange) {
        let segs: Vec<Segment> = self.state.segments().filter(|s| s.owner == owner && range.contains(s.range.first)).collect();
        for s in segs {
            if let Some(t) = self.state.tokens.get_mut(&s.range.first) {
                t.free = s.range.len();
            }
        }
    }

    /// Keeps our free counts within our (possibly shrunk) segments.
    fn clamp_our_free(&mut self) {
        let segs = self.our_segments();
        for s in segs {
            if s.free > s.range.len() {
                if let Some(t) = self.state.tokens.get_mut(&s.range.first) {
                    t.free = s.range.len();
                    t.version += 1;
                }
            }
        }
    }

    /// Sets the free count of our token starting at `start`; raises its version if it
    /// changed. Returns whether it changed.
    pub fn set_free(&mut self, start: Ipv4Addr, free: u64) -> Result<bool, RingError> {
        let seg = self.state.segment_of(start).filter(|s| s.owner == self.ourself && s.range.first == u32::from(start));
        let Some(seg) = seg else {
            return Err(RingError::NotOurs { range: AddrRange { first: u32::from(start), last: u32::from(start) } });
        };
        let free = free.min(seg.range.len());
        let t = self.state.tokens.get_mut(&u32::from(start)).ok_or(RingError::NotOurs { range: seg.range })?;
        if t.free == free {
            return Ok(false);
        }
        t.free = free;
        t.version += 1;
        Ok(true)
    }

    /// `rmpeer`: takes over every range of `dead` (whose containers are gone, so all free).
    /// Returns the ranges taken.
    pub fn take_over(&mut self, dead: PeerName) -> Result<Vec<AddrRange>, RingError> {
        if dead == self.ourself {
            return Err(RingError::Ourselves(dead));
        }
        let ranges = self.state.ranges_of(dead);
        if ranges.is_empty() {
            return Err(RingError::OwnsNothing(dead));
        }
        for t in self.state.tokens.values_mut().filter(|t| t.owner == dead) {
            t.owner = self.ourself;
            t.version += 1;
        }
        for r in &ranges {
            self.refresh_free_of(self.ourself, *r);
        }
        Ok(ranges)
    }

    /// `reset`/leave: hands every range of ours to `heir`, treating all of it as free.
    /// Returns the ranges handed over.
    pub fn hand_over_all(&mut self, heir: PeerName) -> Result<Vec<AddrRange>, RingError> {
        if heir == self.ourself {
            return Err(RingError::Ourselves(heir));
        }
        let ranges = self.our_ranges();
        for t in self.state.tokens.values_mut().filter(|t| t.owner == self.ourself) {
            t.owner = heir;
            t.version += 1;
        }
        for r in &ranges {
            self.refresh_free_of(heir, *r);
        }
        Ok(ranges)
    }

    /// Peers other than us that report free space overlapping `within`, with that free
    /// count (a segment's free count may lie partly outside `within`).
    pub fn donors(&self, within: AddrRange) -> Vec<(PeerName, u64)> {
        let mut by: BTreeMap<PeerName, u64> = BTreeMap::new();
        for s in self.state.segments() {
            if s.owner != self.ourself && s.free > 0 && s.range.overlaps(within) {
                *by.entry(s.owner).or_default() += s.free;
            }
        }
        by.into_iter().collect()
    }

    /// A donor for `within` among the reachable ones, chosen at random weighted by free
    /// space; `random` is any random number from the caller.
    pub fn pick_donor(&self, within: AddrRange, reachable: impl Fn(PeerName) -> bool, random: u64) -> Option<PeerName> {
        let donors: Vec<(PeerName, u64)> = self.donors(within).into_iter().filter(|(p, _)| reachable(*p)).collect();
        let total: u64 = donors.iter().map(|(_, f)| f).sum();
        if total == 0 {
            return None;
        }
        let mut x = random % total;
        for (p, f) in donors {
            if x < f {
                return Some(p);
            }
            x -= f;
        }
        None
    }
}
