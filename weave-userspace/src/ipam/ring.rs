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
//! rings that moved its tokens, and the operator sees the error. For the same reason a
//! peer must persist its ring before it sends it anywhere: after a restart from an older
//! copy it would refuse its own earlier donations.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::mesh::peer_name::PeerName;
use crate::net::{AddrRange, Ipv4Net};

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
    WrongRange { ours: Ipv4Net, theirs: Ipv4Net },
    #[error("IP allocation was seeded by different peers (ours: {ours}, theirs: {theirs})")]
    SeededByDifferentPeers { ours: PeerList, theirs: PeerList },
    #[error("ring refused: token at {at} has version {version} with two different contents")]
    Inconsistent { at: Ipv4Addr, version: u64 },
    #[error("ring refused: our token at {at} was changed by another peer (was 'rmpeer' run on us while we were alive?)")]
    OurTokenChanged { at: Ipv4Addr },
    #[error(
        "ring refused: it gives us the token at {at} with a version too high to go on counting"
    )]
    OurTokenOutOfRange { at: Ipv4Addr },
    #[error("cannot take over the token at {at}: its version is at the limit peers accept")]
    TokenVersionAtLimit { at: Ipv4Addr },
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
    range: Ipv4Net,
    /// The peers the range was first split among, sorted; empty while unclaimed.
    seeds: Vec<PeerName>,
    tokens: BTreeMap<u32, TokenInfo>,
}

#[derive(Serialize, Deserialize)]
struct RawRing {
    range: Ipv4Net,
    seeds: Vec<PeerName>,
    tokens: Vec<Token>,
}

impl TryFrom<RawRing> for RingState {
    type Error = RingError;
    fn try_from(raw: RawRing) -> Result<Self, RingError> {
        let bad = |m: String| Err(RingError::Malformed(m));
        if raw.tokens.len() > MAX_TOKENS {
            return bad(format!(
                "{} tokens, more than {MAX_TOKENS}",
                raw.tokens.len()
            ));
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
            if t.version > crate::mesh::VERSION_LIMIT {
                return bad(format!(
                    "token at {} has version {} out of range",
                    t.start, t.version
                ));
            }
            tokens.insert(
                at,
                TokenInfo {
                    owner: t.owner,
                    version: t.version,
                    free: t.free,
                },
            );
        }
        if !tokens.is_empty() && !tokens.contains_key(&r.first) {
            return bad(format!("no token at the start of {}", raw.range));
        }
        let state = RingState {
            range: raw.range,
            seeds: raw.seeds,
            tokens,
        };
        for seg in state.segments() {
            if seg.free > seg.range.len() {
                return bad(format!(
                    "free count {} of {} larger than the segment",
                    seg.free, seg.range
                ));
            }
        }
        Ok(state)
    }
}

impl From<RingState> for RawRing {
    fn from(s: RingState) -> Self {
        let tokens = s.tokens().collect();
        RawRing {
            range: s.range,
            seeds: s.seeds,
            tokens,
        }
    }
}

impl RingState {
    /// An unclaimed ring over `range`.
    pub fn new(range: Ipv4Net) -> Self {
        Self {
            range,
            seeds: Vec::new(),
            tokens: BTreeMap::new(),
        }
    }

    pub fn range(&self) -> Ipv4Net {
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
        self.tokens.iter().map(|(&a, t)| Token {
            start: Ipv4Addr::from(a),
            owner: t.owner,
            version: t.version,
            free: t.free,
        })
    }

    /// Every segment in address order (adjacent segments of one owner are not coalesced).
    pub fn segments(&self) -> impl Iterator<Item = Segment> + '_ {
        let end = self.range.range().last;
        let mut it = self.tokens.iter().peekable();
        std::iter::from_fn(move || {
            let (&start, info) = it.next()?;
            let last = it.peek().map(|(&next, _)| next - 1).unwrap_or(end);
            Some(Segment {
                range: AddrRange { first: start, last },
                owner: info.owner,
                version: info.version,
                free: info.free,
            })
        })
    }

    /// The segment holding `addr`, if the ring is claimed and `addr` is in the range.
    pub fn segment_of(&self, addr: Ipv4Addr) -> Option<Segment> {
        let a = u32::from(addr);
        if !self.range.range().contains(a) {
            return None;
        }
        let (&start, info) = self.tokens.range(..=a).next_back()?;
        let last = self
            .tokens
            .range(a + 1..)
            .next()
            .map(|(&n, _)| n - 1)
            .unwrap_or(self.range.range().last);
        Some(Segment {
            range: AddrRange { first: start, last },
            owner: info.owner,
            version: info.version,
            free: info.free,
        })
    }

    pub fn owner_of(&self, addr: Ipv4Addr) -> Option<PeerName> {
        self.segment_of(addr).map(|s| s.owner)
    }

    /// The ranges `peer` owns, adjacent segments coalesced, in address order.
    pub fn ranges_of(&self, peer: PeerName) -> Vec<AddrRange> {
        let mut out: Vec<AddrRange> = Vec::new();
        for seg in self.segments().filter(|s| s.owner == peer) {
            match out.last_mut() {
                Some(prev) if u64::from(prev.last) + 1 == u64::from(seg.range.first) => {
                    prev.last = seg.range.last
                }
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
            return Err(RingError::WrongRange {
                ours: self.range,
                theirs: other.range,
            });
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
                    return Err(RingError::Inconsistent {
                        at: Ipv4Addr::from(at),
                        version: ours.version,
                    });
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
    pub fn new(ourself: PeerName, range: Ipv4Net) -> Self {
        Self {
            ourself,
            state: RingState::new(range),
        }
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

    pub fn range(&self) -> Ipv4Net {
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
        self.state
            .segments()
            .filter(|s| s.owner == self.ourself)
            .collect()
    }

    pub fn owns(&self, addr: Ipv4Addr) -> bool {
        self.state.owner_of(addr) == Some(self.ourself)
    }

    /// Merges a ring from gossip. The whole ring is checked first; a refused one changes
    /// nothing. Returns whether ours changed.
    pub fn merge(&mut self, theirs: &RingState) -> Result<bool, RingError> {
        theirs.check()?;
        // A token of ours we would take at a version we could not raise without going past
        // what peers accept (and so having every ring of ours refused from then on).
        if let Some((&at, _)) = theirs
            .tokens
            .iter()
            .find(|(_, t)| t.owner == self.ourself && t.version > crate::mesh::OWN_VERSION_LIMIT)
        {
            return Err(RingError::OurTokenOutOfRange {
                at: Ipv4Addr::from(at),
            });
        }
        if !self.state.is_empty() {
            for (&at, t) in &theirs.tokens {
                match self.state.tokens.get(&at) {
                    // A newer version of our token that we still own is our own report
                    // from before a restart: harmless, and adopted.
                    Some(ours)
                        if ours.owner == self.ourself
                            && t.version > ours.version
                            && t.owner != self.ourself =>
                    {
                        return Err(RingError::OurTokenChanged {
                            at: Ipv4Addr::from(at),
                        });
                    }
                    Some(_) => {}
                    None if self.owns(Ipv4Addr::from(at)) => {
                        return Err(RingError::InsertedIntoOurRange {
                            at: Ipv4Addr::from(at),
                        });
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
            let end = starts
                .get(i + 1)
                .map(|&s| u64::from(s))
                .unwrap_or(u64::from(r.last) + 1);
            let free = end - u64::from(starts[i]);
            self.state.tokens.insert(
                starts[i],
                TokenInfo {
                    owner: *peer,
                    version: 1,
                    free,
                },
            );
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
        if !ours
            .iter()
            .any(|o| o.first <= range.first && range.last <= o.last)
        {
            return Err(RingError::NotOurs { range });
        }
        if range.last < ring.last {
            let after = range.last + 1;
            if !self.state.tokens.contains_key(&after) {
                // We own `after` (it continues our segment); it keeps its owner.
                self.state.tokens.insert(
                    after,
                    TokenInfo {
                        owner: self.ourself,
                        version: 1,
                        free: 0,
                    },
                );
            }
        }
        if !self.state.tokens.contains_key(&range.first) {
            self.state.tokens.insert(
                range.first,
                TokenInfo {
                    owner: self.ourself,
                    version: 0,
                    free: 0,
                },
            );
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
        let segs: Vec<Segment> = self
            .state
            .segments()
            .filter(|s| s.owner == owner && range.contains(s.range.first))
            .collect();
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
        let seg = self
            .state
            .segment_of(start)
            .filter(|s| s.owner == self.ourself && s.range.first == u32::from(start));
        let Some(seg) = seg else {
            return Err(RingError::NotOurs {
                range: AddrRange {
                    first: u32::from(start),
                    last: u32::from(start),
                },
            });
        };
        let free = free.min(seg.range.len());
        let t = self
            .state
            .tokens
            .get_mut(&u32::from(start))
            .ok_or(RingError::NotOurs { range: seg.range })?;
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
        // Its tokens come from gossip, up to the limit peers accept: one at the limit
        // cannot be outbid (ours would be refused everywhere), so nothing is taken.
        if let Some((&at, _)) = self
            .state
            .tokens
            .iter()
            .find(|(_, t)| t.owner == dead && t.version >= crate::mesh::VERSION_LIMIT)
        {
            return Err(RingError::TokenVersionAtLimit {
                at: Ipv4Addr::from(at),
            });
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
        for t in self
            .state
            .tokens
            .values_mut()
            .filter(|t| t.owner == self.ourself)
        {
            t.owner = heir;
            t.version += 1;
        }
        for r in &ranges {
            self.refresh_free_of(heir, *r);
        }
        Ok(ranges)
    }

    /// Peers other than us that may have free space in `within`, with an estimate of it:
    /// per segment, its reported free count capped at its overlap with `within` (the free
    /// addresses may still all lie outside; the donor then gives nothing).
    pub fn donors(&self, within: AddrRange) -> Vec<(PeerName, u64)> {
        let mut by: BTreeMap<PeerName, u64> = BTreeMap::new();
        for s in self.state.segments() {
            if s.owner == self.ourself || s.free == 0 {
                continue;
            }
            if let Some(overlap) = s.range.intersect(within) {
                *by.entry(s.owner).or_default() += s.free.min(overlap.len());
            }
        }
        by.into_iter().collect()
    }

    /// A donor for `within` among the reachable ones, chosen at random weighted by free
    /// space; `random` is any random number from the caller.
    pub fn pick_donor(
        &self,
        within: AddrRange,
        reachable: impl Fn(PeerName) -> bool,
        random: u64,
    ) -> Option<PeerName> {
        let donors: Vec<(PeerName, u64)> = self
            .donors(within)
            .into_iter()
            .filter(|(p, _)| reachable(*p))
            .collect();
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn name(i: usize) -> PeerName {
        PeerName::from_bytes([0x02, 0, 0, 0, 0, i as u8 + 1])
    }

    fn cidr(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn range(a: &str, b: &str) -> AddrRange {
        AddrRange::new(a.parse().unwrap(), b.parse().unwrap()).unwrap()
    }

    fn claimed(me: usize, n: usize, r: &str) -> Ring {
        let mut ring = Ring::new(name(me), cidr(r));
        let peers: Vec<PeerName> = (0..n).map(name).collect();
        ring.claim_for_peers(&peers).unwrap();
        ring
    }

    #[test]
    fn claim_splits_equally_and_deterministically() {
        let a = claimed(0, 3, "10.32.0.0/12");
        let b = claimed(2, 3, "10.32.0.0/12");
        assert_eq!(a.state(), b.state());
        let segs: Vec<Segment> = a.state().segments().collect();
        assert_eq!(segs.len(), 3);
        assert_eq!(
            segs[0].range.first(),
            "10.32.0.0".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            segs[2].range.last(),
            "10.47.255.255".parse::<Ipv4Addr>().unwrap()
        );
        let sizes: Vec<u64> = segs.iter().map(|s| s.range.len()).collect();
        assert_eq!(sizes.iter().sum::<u64>(), 1 << 20);
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        assert!(segs.iter().all(|s| s.free == s.range.len()));
        assert_eq!(a.state().seeds(), &[name(0), name(1), name(2)]);
        let mut c = a.clone();
        assert_eq!(
            c.claim_for_peers(&[name(0)]),
            Err(RingError::AlreadyClaimed)
        );
        assert_eq!(
            Ring::new(name(0), cidr("10.0.0.0/31")).claim_for_peers(&[name(0), name(1), name(2)]),
            Err(RingError::BadPeerCount(3))
        );
        assert_eq!(
            Ring::new(name(0), cidr("10.0.0.0/31")).claim_for_peers(&[]),
            Err(RingError::BadPeerCount(0))
        );
        a.state().check().unwrap();
    }

    #[test]
    fn token_versions_peers_could_not_go_on_from_are_refused() {
        use crate::mesh::{OWN_VERSION_LIMIT, VERSION_LIMIT};
        let mut ours = claimed(0, 2, "10.0.0.0/24");
        let before = ours.clone();
        let theirs = claimed(1, 2, "10.0.0.0/24");
        let with_version = |owner: usize, version: u64| {
            let mut raw = RawRing::from(theirs.state().clone());
            let t = raw
                .tokens
                .iter_mut()
                .find(|t| t.owner == name(owner))
                .unwrap();
            t.version = version;
            raw
        };
        // Beyond the limit nobody takes a ring (a forged u64::MAX used to overflow our
        // next change of that token).
        for owner in [0, 1] {
            assert!(RingState::try_from(with_version(owner, VERSION_LIMIT + 1)).is_err());
        }
        // A token of ours at a version we could not raise without peers refusing ours.
        let forged = RingState::try_from(with_version(0, OWN_VERSION_LIMIT + 1)).unwrap();
        assert!(matches!(
            ours.merge(&forged),
            Err(RingError::OurTokenOutOfRange { .. })
        ));
        assert_eq!(ours, before, "nothing changed");
        // Another peer's token up to the limit is theirs to count.
        let high = RingState::try_from(with_version(1, VERSION_LIMIT)).unwrap();
        assert_eq!(ours.merge(&high), Ok(true));
        // ...and not ours to take over: a version past the limit would be refused by all.
        let taken_before = ours.clone();
        assert!(matches!(
            ours.take_over(name(1)),
            Err(RingError::TokenVersionAtLimit { .. })
        ));
        assert_eq!(ours, taken_before, "nothing taken");
    }

    #[test]
    fn give_moves_exactly_the_range() {
        let mut a = claimed(0, 2, "10.0.0.0/24");
        a.give(range("10.0.0.16", "10.0.0.31"), name(1)).unwrap();
        assert_eq!(
            a.our_ranges(),
            vec![
                range("10.0.0.0", "10.0.0.15"),
                range("10.0.0.32", "10.0.0.127")
            ]
        );
        assert_eq!(
            a.state().ranges_of(name(1)),
            vec![
                range("10.0.0.16", "10.0.0.31"),
                range("10.0.0.128", "10.0.0.255")
            ]
        );
        assert_eq!(
            a.state()
                .segment_of("10.0.0.20".parse().unwrap())
                .unwrap()
                .free,
            16
        );
        a.state().check().unwrap();
        assert_eq!(
            a.give(range("10.0.0.10", "10.0.0.20"), name(1)),
            Err(RingError::NotOurs {
                range: range("10.0.0.10", "10.0.0.20")
            })
        );
        assert_eq!(
            a.give(range("10.0.0.0", "10.0.0.1"), name(0)),
            Err(RingError::Ourselves(name(0)))
        );
        // The receiver accepts it.
        let mut b = claimed(1, 2, "10.0.0.0/24");
        assert_eq!(b.merge(a.state()), Ok(true));
        assert!(b.owns("10.0.0.16".parse().unwrap()));
        assert_eq!(b.state(), a.state());
        // Giving the whole of our last range up to the end of the ring.
        a.give(range("10.0.0.32", "10.0.0.127"), name(1)).unwrap();
        assert_eq!(a.our_ranges(), vec![range("10.0.0.0", "10.0.0.15")]);
        a.state().check().unwrap();
    }

    #[test]
    fn refused_rings_change_nothing() {
        let mut a = claimed(0, 2, "10.0.0.0/24");
        let before = a.clone();

        let other = claimed(0, 2, "10.0.1.0/24");
        assert!(matches!(
            a.merge(other.state()),
            Err(RingError::WrongRange { .. })
        ));

        let mut seeded = Ring::new(name(1), cidr("10.0.0.0/24"));
        seeded.claim_for_peers(&[name(1), name(2)]).unwrap();
        let e = a.merge(seeded.state()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("IP allocation was seeded by different peers"),
            "{e}"
        );

        // A non-owner moved our token (rmpeer of a live peer).
        let mut b = claimed(1, 2, "10.0.0.0/24");
        b.take_over(name(0)).unwrap();
        assert_eq!(
            a.merge(b.state()),
            Err(RingError::OurTokenChanged {
                at: "10.0.0.0".parse().unwrap()
            })
        );

        // Someone inserted a token inside our range.
        let mut forged = claimed(0, 2, "10.0.0.0/24");
        forged
            .give(range("10.0.0.64", "10.0.0.127"), name(1))
            .unwrap();
        let mut forged_state = forged.state().clone();
        forged_state
            .tokens
            .get_mut(&u32::from(Ipv4Addr::new(10, 0, 0, 0)))
            .unwrap()
            .version = 1;
        assert_eq!(
            a.merge(&forged_state),
            Err(RingError::InsertedIntoOurRange {
                at: "10.0.0.64".parse().unwrap()
            })
        );

        // One version, two contents.
        let mut c1 = claimed(1, 2, "10.0.0.0/24");
        let mut c2 = claimed(1, 2, "10.0.0.0/24");
        c1.set_free("10.0.0.128".parse().unwrap(), 5).unwrap();
        c2.set_free("10.0.0.128".parse().unwrap(), 6).unwrap();
        a.merge(c1.state()).unwrap();
        let after_c1 = a.clone();
        assert_eq!(
            a.merge(c2.state()),
            Err(RingError::Inconsistent {
                at: "10.0.0.128".parse().unwrap(),
                version: 2
            })
        );
        assert_eq!(a, after_c1);
        assert_ne!(after_c1, before);
    }

    #[test]
    fn our_own_newer_report_is_adopted() {
        let mut a = claimed(0, 2, "10.0.0.0/24");
        let mut earlier_run = a.clone();
        earlier_run
            .set_free("10.0.0.0".parse().unwrap(), 3)
            .unwrap();
        assert_eq!(a.merge(earlier_run.state()), Ok(true));
        assert_eq!(a.state(), earlier_run.state());
    }

    #[test]
    fn malformed_rings_are_refused_when_read() {
        let good = claimed(0, 2, "10.0.0.0/24");
        let json = serde_json::to_string(good.state()).unwrap();
        assert_eq!(
            serde_json::from_str::<RingState>(&json).unwrap(),
            *good.state()
        );
        let wire = postcard::to_stdvec(good.state()).unwrap();
        assert_eq!(
            postcard::from_bytes::<RingState>(&wire).unwrap(),
            *good.state()
        );

        let p0 = "02:00:00:00:00:01";
        let cases = [
            (
                format!(
                    r#"{{"range":"10.0.0.0/24","seeds":["{p0}"],"tokens":[{{"start":"10.0.1.0","owner":"{p0}","version":1,"free":1}}]}}"#
                ),
                "outside",
            ),
            (
                format!(
                    r#"{{"range":"10.0.0.0/24","seeds":["{p0}"],"tokens":[{{"start":"10.0.0.5","owner":"{p0}","version":1,"free":1}}]}}"#
                ),
                "no token at the start",
            ),
            (
                format!(
                    r#"{{"range":"10.0.0.0/24","seeds":["{p0}"],"tokens":[{{"start":"10.0.0.0","owner":"{p0}","version":1,"free":1}},{{"start":"10.0.0.0","owner":"{p0}","version":1,"free":1}}]}}"#
                ),
                "not sorted",
            ),
            (
                format!(
                    r#"{{"range":"10.0.0.0/24","seeds":[],"tokens":[{{"start":"10.0.0.0","owner":"{p0}","version":1,"free":1}}]}}"#
                ),
                "seeds",
            ),
            (
                format!(
                    r#"{{"range":"10.0.0.0/24","seeds":["{p0}"],"tokens":[{{"start":"10.0.0.0","owner":"{p0}","version":1,"free":999}}]}}"#
                ),
                "free count",
            ),
            (
                r#"{"range":"10.0.0.1/24","seeds":[],"tokens":[]}"#.to_string(),
                "host bits",
            ),
        ];
        for (text, why) in cases {
            let e = serde_json::from_str::<RingState>(&text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn rmpeer_and_leave() {
        let mut a = claimed(0, 3, "10.0.0.0/24");
        let taken = a.take_over(name(1)).unwrap();
        assert_eq!(taken.len(), 1);
        assert!(a.owns(taken[0].first()));
        assert_eq!(a.take_over(name(1)), Err(RingError::OwnsNothing(name(1))));
        assert_eq!(a.take_over(name(0)), Err(RingError::Ourselves(name(0))));
        let mut c = claimed(2, 3, "10.0.0.0/24");
        assert_eq!(c.merge(a.state()), Ok(true));
        let given = a.hand_over_all(name(2)).unwrap();
        assert_eq!(given, vec![range("10.0.0.0", "10.0.0.169")]);
        assert!(a.our_ranges().is_empty());
        c.merge(a.state()).unwrap();
        assert_eq!(c.our_ranges(), vec![range("10.0.0.0", "10.0.0.255")]);
        c.state().check().unwrap();
    }

    #[test]
    fn donors_are_weighted_by_free_space() {
        let mut a = claimed(0, 3, "10.0.0.0/24");
        let mut b = claimed(1, 3, "10.0.0.0/24");
        b.set_free("10.0.0.85".parse().unwrap(), 0).unwrap();
        a.merge(b.state()).unwrap();
        let all = a.state().range().range();
        assert_eq!(a.donors(all), vec![(name(2), 86)]);
        assert_eq!(a.pick_donor(all, |_| true, 12345), Some(name(2)));
        assert_eq!(a.pick_donor(all, |p| p != name(2), 1), None);
        let c = claimed(0, 3, "10.0.0.0/24");
        let picks: BTreeSet<PeerName> = (0..200)
            .map(|r| c.pick_donor(all, |_| true, r).unwrap())
            .collect();
        assert_eq!(picks, BTreeSet::from([name(1), name(2)]));
    }

    /// A random history of owner-made changes on `n` peers sharing a small range; returns
    /// every ring state any peer held.
    pub(crate) fn history(n: usize, ops: &[(u8, u8, u8, u8)]) -> Vec<RingState> {
        let mut rings: Vec<Ring> = (0..n).map(|i| claimed(i, n, "10.0.0.0/26")).collect();
        let mut seen = vec![rings[0].state().clone()];
        let mut dead = BTreeSet::new();
        for &(kind, i, j, x) in ops {
            let (i, j) = (i as usize % n, j as usize % n);
            if dead.contains(&i) {
                continue;
            }
            match kind % 5 {
                0 | 1 => {
                    // Gossip: i merges a state j held (maybe an old one).
                    let pick = &seen[(x as usize) % seen.len()];
                    rings[i]
                        .merge(pick)
                        .expect("rings of a valid history merge");
                    if !dead.contains(&j) {
                        let s = rings[j].state().clone();
                        rings[i].merge(&s).expect("rings of a valid history merge");
                    }
                }
                2 if i != j => {
                    // Donation of part of one of i's ranges.
                    let ours = rings[i].our_ranges();
                    if let Some(r) = ours.get(x as usize % ours.len().max(1)) {
                        let len = (r.len() / 2).max(1) as u32;
                        let part = AddrRange {
                            first: r.last - (len - 1),
                            last: r.last,
                        };
                        rings[i].give(part, name(j)).unwrap();
                    }
                }
                3 => {
                    if let Some(seg) = rings[i].our_segments().first() {
                        rings[i]
                            .set_free(seg.range.first(), u64::from(x) % (seg.range.len() + 1))
                            .unwrap();
                    }
                }
                _ if i != j && !dead.contains(&j) && dead.len() + 2 <= n => {
                    // j dies; i takes over its space once it has heard of all of it.
                    dead.insert(j);
                    let latest = rings[j].state().clone();
                    rings[i].merge(&latest).unwrap();
                    if !rings[i].state().ranges_of(name(j)).is_empty() {
                        rings[i].take_over(name(j)).unwrap();
                    }
                }
                _ => {}
            }
            seen.push(rings[i].state().clone());
            // Safety at every step: live peers' own views never claim one address twice.
            let mut owned: Vec<AddrRange> = (0..n)
                .filter(|k| !dead.contains(k))
                .flat_map(|k| rings[k].our_ranges())
                .collect();
            owned.sort();
            assert!(
                owned.windows(2).all(|w| !w[0].overlaps(w[1])),
                "overlapping ownership: {owned:?}"
            );
        }
        seen
    }

    fn ops() -> impl Strategy<Value = Vec<(u8, u8, u8, u8)>> {
        proptest::collection::vec(any::<(u8, u8, u8, u8)>(), 0..60)
    }

    proptest! {
        #[test]
        fn merges_are_a_semilattice(n in 1usize..5, ops in ops(), picks in proptest::collection::vec(any::<(usize, usize, usize)>(), 1..20)) {
            let seen = history(n, &ops);
            for (a, b, c) in picks {
                let (a, b, c) = (&seen[a % seen.len()], &seen[b % seen.len()], &seen[c % seen.len()]);
                let ab = a.join(b).unwrap();
                prop_assert_eq!(&ab, &b.join(a).unwrap());
                prop_assert_eq!(&a.join(a).unwrap(), a);
                prop_assert_eq!(ab.join(c).unwrap(), a.join(&b.join(c).unwrap()).unwrap());
                ab.check().unwrap();
            }
        }

        #[test]
        fn any_delivery_order_converges(n in 1usize..5, ops in ops(), order in proptest::collection::vec(any::<usize>(), 0..80)) {
            let seen = history(n, &ops);
            // Every peer joins every state, each in its own order, with repeats.
            let mut finals = Vec::new();
            for me in 0..n {
                let mut all: Vec<RingState> = order.iter().map(|&k| seen[(k + me * 7) % seen.len()].clone()).collect();
                all.extend(seen.iter().rev().cloned());
                let mut folded = seen[0].clone();
                for s in &all {
                    folded = folded.join(s).unwrap();
                }
                finals.push(folded);
            }
            for f in &finals {
                prop_assert_eq!(f, &finals[0]);
                f.check().unwrap();
            }
        }
    }
}
