//! How the range is first split: `--ipalloc-init consensus[=N] | seed=PEER,... | observer`,
//! the agreement on the initial peers, and the IPAM status line.
//!
//! # Consensus
//!
//! Without seeds, the peers must agree on one set of peers to split the range among;
//! splitting is deterministic ([`super::ring::Ring::claim_for_peers`]), so agreeing on the
//! set is enough. This is single-decree Paxos carried by gossip, as Weave does it: every
//! peer is an acceptor, any peer may propose, and the quorum is `N/2 + 1` of the expected
//! peer count `N` ([`quorum`]).
//!
//! Each peer publishes only its own [`Claims`] (the highest proposal it promised, and the
//! proposal and value it accepted); gossip carries everyone's, and a merge keeps per peer
//! the later claims (both fields only grow). On every change each peer [`Consensus::think`]s:
//!
//! - *prepare*: a proposer picks a round above any seen and promises its own proposal;
//! - *promise*: a peer that sees a proposal above its promise promises it;
//! - *accept request*: when a quorum's claims show the proposer's proposal as their promise,
//!   the proposer accepts its own proposal with the value of the highest accepted proposal
//!   among that quorum, or, if none, the set of peers it has heard (at least a quorum);
//! - *accept*: a peer that sees a proposal accepted (with its value) that is at least its
//!   promise accepts it too;
//! - *decided*: a quorum shows the same accepted proposal; its value is the result.
//!
//! Safety is Paxos's: a proposal's value is fixed once, by its proposer, and only after a
//! quorum promised not to accept anything lower, choosing the value any lower proposal might
//! have had decided; two quorums intersect. So every peer that decides, in any delivery
//! order, decides the same set. Liveness needs one proposer to run undisturbed for a round
//! trip: the caller re-proposes on a randomised timer while undecided.
//!
//! Claims are keyed by peer name, so a router that restarts during the vote must keep its
//! claims (persisted), or learn them back from gossip: claims about ourselves newer than
//! ours are adopted, which keeps our promises.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ring::{PeerList, Ring, RingError, RingState};
use crate::mesh::peer_name::PeerName;

/// Most peers a consensus gossip may carry.
pub const MAX_CONSENSUS_PEERS: usize = 4096;

/// The quorum for `n` expected peers: `n/2 + 1`.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// `--ipalloc-init`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitMode {
    /// Agree with the other peers; `Some(n)` overrides the expected peer count
    /// (`consensus=N`, `--init-peer-count N`), else it is the number of initial peers.
    Consensus(Option<usize>),
    /// These peers split the range, without a vote (sorted, no duplicates).
    Seed(Vec<PeerName>),
    /// Never proposes nor owns space at first; waits for the ring.
    Observer,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InitModeError {
    #[error("--ipalloc-init {0:?}: expected consensus, consensus=N, seed=PEER,... or observer")]
    Unknown(String),
    #[error("--ipalloc-init {0:?}: N must be a whole number of at least 1")]
    BadCount(String),
    #[error("--ipalloc-init {given:?}: {peer:?} is not a peer name (like 0a:00:00:00:00:01)")]
    BadSeed { given: String, peer: String },
    #[error("--ipalloc-init {0:?}: seed lists a peer twice")]
    DuplicateSeed(String),
}

impl FromStr for InitMode {
    type Err = InitModeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "consensus" {
            return Ok(Self::Consensus(None));
        }
        if s == "observer" {
            return Ok(Self::Observer);
        }
        if let Some(n) = s.strip_prefix("consensus=") {
            let digits = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
            return match n.parse::<usize>() {
                Ok(count) if digits && count >= 1 => Ok(Self::Consensus(Some(count))),
                _ => Err(InitModeError::BadCount(s.to_string())),
            };
        }
        if let Some(list) = s.strip_prefix("seed=") {
            let mut peers = Vec::new();
            for p in list.split(',') {
                let name = p.parse::<PeerName>().map_err(|_| InitModeError::BadSeed {
                    given: s.to_string(),
                    peer: p.to_string(),
                })?;
                peers.push(name);
            }
            let n = peers.len();
            peers.sort();
            peers.dedup();
            if peers.len() != n {
                return Err(InitModeError::DuplicateSeed(s.to_string()));
            }
            return Ok(Self::Seed(peers));
        }
        Err(InitModeError::Unknown(s.to_string()))
    }
}

impl InitMode {
    /// The peers to split the range among at once, without a vote: the seeds, if we are one.
    pub fn initial_claim(&self, ourself: PeerName) -> Option<Vec<PeerName>> {
        match self {
            Self::Seed(seeds) if seeds.contains(&ourself) => Some(seeds.clone()),
            _ => None,
        }
    }

    /// Whether this peer ever starts a vote (observers and seeded peers never do).
    pub fn votes(&self) -> bool {
        matches!(self, Self::Consensus(_))
    }

    /// Checks a ring from gossip against our configured seeds: a ring seeded by other peers
    /// is refused whole ("IP allocation was seeded by different peers").
    pub fn check_ring(&self, ring: &RingState) -> Result<(), RingError> {
        match self {
            Self::Seed(seeds) if !ring.seeds().is_empty() && ring.seeds() != seeds.as_slice() => {
                Err(RingError::SeededByDifferentPeers {
                    ours: PeerList(seeds.clone()),
                    theirs: PeerList(ring.seeds().to_vec()),
                })
            }
            _ => Ok(()),
        }
    }
}

/// A Paxos proposal number: round, then proposer. `Proposal::default()` is "none".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Proposal {
    pub round: u64,
    pub proposer: Option<PeerName>,
}

impl Proposal {
    fn is_none(&self) -> bool {
        self.proposer.is_none()
    }
}

/// What one peer has promised and accepted. Only that peer changes it; both proposals
/// only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub promise: Proposal,
    pub accepted: Proposal,
    /// The value of `accepted` (sorted peer names); empty when nothing was accepted.
    pub value: Vec<PeerName>,
}

impl Claims {
    fn key(&self) -> (Proposal, Proposal) {
        (self.promise, self.accepted)
    }

    fn validate(&self) -> Result<(), &'static str> {
        if self.accepted > self.promise {
            return Err("accepted a proposal above its promise");
        }
        if self.accepted.is_none() != self.value.is_empty() {
            return Err("an accepted proposal without a value, or a value without one");
        }
        if self.promise.is_none() && self.promise.round != 0
            || self.accepted.is_none() && self.accepted.round != 0
        {
            return Err("a round without a proposer");
        }
        if self.promise.round > crate::mesh::VERSION_LIMIT {
            return Err("a round out of range");
        }
        if self.value.windows(2).any(|w| w[0] >= w[1]) {
            return Err("value not sorted or duplicated");
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConsensusError {
    #[error("consensus gossip about peer {0} refused: {1}")]
    Invalid(PeerName, &'static str),
    #[error("consensus gossip refused: claims of peer {0} differ at the same proposal")]
    Conflict(PeerName),
    #[error("consensus gossip of {0} peers refused: more than {max}", max = MAX_CONSENSUS_PEERS)]
    TooLarge(usize),
}

/// One peer's view of the vote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consensus {
    ourself: PeerName,
    quorum: usize,
    knows: BTreeMap<PeerName, Claims>,
}

impl Consensus {
    /// Joins the vote (a peer counts as heard from once it takes part).
    pub fn new(ourself: PeerName, quorum: usize) -> Self {
        Self {
            ourself,
            quorum: quorum.max(1),
            knows: BTreeMap::from([(ourself, Claims::default())]),
        }
    }

    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// Peers heard from (including us).
    pub fn known(&self) -> usize {
        self.knows.len()
    }

    /// Everyone's claims, for gossip.
    pub fn gossip(&self) -> Vec<(PeerName, Claims)> {
        self.knows.iter().map(|(p, c)| (*p, c.clone())).collect()
    }

    /// Merges claims from gossip (whole update checked first), then thinks. Returns
    /// whether anything changed (so gossip on).
    pub fn merge(&mut self, update: &[(PeerName, Claims)]) -> Result<bool, ConsensusError> {
        if update.len() > MAX_CONSENSUS_PEERS {
            return Err(ConsensusError::TooLarge(update.len()));
        }
        for (p, c) in update {
            c.validate().map_err(|m| ConsensusError::Invalid(*p, m))?;
            if let Some(ours) = self.knows.get(p) {
                if ours.key() == c.key() && ours != c {
                    return Err(ConsensusError::Conflict(*p));
                }
            }
        }
        let mut changed = false;
        for (p, c) in update {
            let newer = self.knows.get(p).is_none_or(|ours| c.key() > ours.key());
            if newer {
                self.knows.insert(*p, c.clone());
                changed = true;
            }
        }
        Ok(self.think() || changed)
    }

    /// Starts a new proposal above any seen. Returns it (gossip afterwards). Rounds stay
    /// within what peers accept ([`crate::mesh::VERSION_LIMIT`]): past a forged round at
    /// the limit no proposal can win, but none makes peers refuse our claims.
    pub fn propose(&mut self) -> Proposal {
        let round = self
            .knows
            .values()
            .map(|c| c.promise.round.max(c.accepted.round))
            .max()
            .unwrap_or(0)
            .saturating_add(1)
            .min(crate::mesh::VERSION_LIMIT);
        let p = Proposal {
            round,
            proposer: Some(self.ourself),
        };
        self.mine().promise = p;
        self.think();
        p
    }

    fn mine(&mut self) -> &mut Claims {
        self.knows.entry(self.ourself).or_default()
    }

    fn my_claims(&self) -> Claims {
        self.knows.get(&self.ourself).cloned().unwrap_or_default()
    }

    /// Runs our acceptor and proposer steps until nothing changes. Returns whether we did.
    pub fn think(&mut self) -> bool {
        let mut changed = false;
        loop {
            let me = self.my_claims();
            // Promise: the highest proposal anyone shows.
            let highest = self
                .knows
                .values()
                .map(|c| c.promise)
                .max()
                .unwrap_or_default();
            if highest > me.promise {
                self.mine().promise = highest;
                changed = true;
                continue;
            }
            // Accept: the highest accepted proposal anyone shows, if not below our promise.
            if let Some(acc) = self
                .knows
                .values()
                .filter(|c| !c.accepted.is_none())
                .max_by_key(|c| c.accepted)
                .cloned()
            {
                if acc.accepted >= me.promise && acc.accepted > me.accepted {
                    let mine = self.mine();
                    mine.promise = acc.accepted;
                    mine.accepted = acc.accepted;
                    mine.value = acc.value;
                    changed = true;
                    continue;
                }
            }
            // Accept request: our own proposal promised by a quorum.
            if me.promise.proposer == Some(self.ourself) && me.accepted < me.promise {
                let promised: Vec<&Claims> = self
                    .knows
                    .values()
                    .filter(|c| c.promise == me.promise)
                    .collect();
                if promised.len() >= self.quorum {
                    let value = match promised
                        .iter()
                        .filter(|c| !c.accepted.is_none())
                        .max_by_key(|c| c.accepted)
                    {
                        Some(c) => c.value.clone(),
                        None => self.knows.keys().copied().collect(),
                    };
                    let mine = self.mine();
                    mine.accepted = mine.promise;
                    mine.value = value;
                    changed = true;
                    continue;
                }
            }
            return changed;
        }
    }

    /// The decided set of peers, once a quorum shows one accepted proposal.
    pub fn decision(&self) -> Option<Vec<PeerName>> {
        let mut count: BTreeMap<Proposal, (usize, &Vec<PeerName>)> = BTreeMap::new();
        for c in self.knows.values().filter(|c| !c.accepted.is_none()) {
            let e = count.entry(c.accepted).or_insert((0, &c.value));
            e.0 += 1;
            if e.0 >= self.quorum {
                return Some(e.1.clone());
            }
        }
        None
    }
}

/// The IPAM status line, as Weave shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpamStatus {
    /// Nothing asked for an address yet (initialisation is lazy).
    Idle,
    AwaitingConsensus {
        quorum: usize,
        known: usize,
    },
    /// An observer (or a non-seed peer) waiting for the ring from others.
    Priming,
    Ready,
    AllRangesUnreachable,
}

impl fmt::Display for IpamStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Idle => write!(f, "idle"),
            Self::AwaitingConsensus { quorum, known } => {
                write!(f, "awaiting consensus (quorum: {quorum}, known: {known})")
            }
            Self::Priming => write!(f, "priming"),
            Self::Ready => write!(f, "ready"),
            Self::AllRangesUnreachable => {
                write!(
                    f,
                    "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead"
                )
            }
        }
    }
}

/// The status from the ring, the vote (once started) and which peers are reachable.
pub fn status(
    ring: &Ring,
    mode: &InitMode,
    vote: Option<&Consensus>,
    reachable: impl Fn(PeerName) -> bool,
) -> IpamStatus {
    if !ring.is_empty() {
        let owners: BTreeSet<PeerName> = ring.state().owners();
        return if owners.iter().any(|&p| p == ring.ourself() || reachable(p)) {
            IpamStatus::Ready
        } else {
            IpamStatus::AllRangesUnreachable
        };
    }
    match (mode, vote) {
        (InitMode::Observer, _) | (InitMode::Seed(_), _) => IpamStatus::Priming,
        (InitMode::Consensus(_), None) => IpamStatus::Idle,
        (InitMode::Consensus(_), Some(v)) => IpamStatus::AwaitingConsensus {
            quorum: v.quorum(),
            known: v.known(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::ring::tests::name;
    use crate::net::Ipv4Net;
    use proptest::prelude::*;

    #[test]
    fn init_modes_parse() {
        assert_eq!("consensus".parse(), Ok(InitMode::Consensus(None)));
        assert_eq!("consensus=3".parse(), Ok(InitMode::Consensus(Some(3))));
        assert_eq!("observer".parse(), Ok(InitMode::Observer));
        assert_eq!(
            "seed=02:00:00:00:00:02,02:00:00:00:00:01".parse(),
            Ok(InitMode::Seed(vec![name(0), name(1)]))
        );
        for (bad, why) in [
            ("consensus=0", "at least 1"),
            ("consensus=+2", "at least 1"),
            ("consensus=", "at least 1"),
            ("seed=", "not a peer name"),
            ("seed=02:00:00:00:00:01,xx", "\"xx\" is not a peer name"),
            ("seed=02:00:00:00:00:01,02:00:00:00:00:01", "twice"),
            ("paxos", "expected consensus"),
        ] {
            let e = bad.parse::<InitMode>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let seeds = InitMode::Seed(vec![name(0), name(1)]);
        assert_eq!(seeds.initial_claim(name(1)), Some(vec![name(0), name(1)]));
        assert_eq!(seeds.initial_claim(name(2)), None);
        assert!(!seeds.votes() && !InitMode::Observer.votes() && InitMode::Consensus(None).votes());
        let mut other = Ring::new(name(2), "10.32.0.0/12".parse().unwrap());
        assert_eq!(seeds.check_ring(other.state()), Ok(()));
        other.claim_for_peers(&[name(2), name(3)]).unwrap();
        assert!(seeds
            .check_ring(other.state())
            .unwrap_err()
            .to_string()
            .starts_with("IP allocation was seeded by different peers"));
        assert_eq!(InitMode::Observer.check_ring(other.state()), Ok(()));
        assert_eq!(
            (quorum(1), quorum(2), quorum(3), quorum(4), quorum(5)),
            (1, 2, 2, 3, 3)
        );
    }

    #[test]
    fn a_round_beyond_the_limit_is_refused() {
        let claims = Claims {
            promise: Proposal {
                round: u64::MAX,
                proposer: Some(PeerName::from_bytes([0x0a, 0, 0, 0, 0, 1])),
            },
            ..Claims::default()
        };
        assert_eq!(claims.validate(), Err("a round out of range"));
    }

    /// A forged promise at the limit peers accept: our next proposal stays within it (one
    /// above would be refused by every peer, and our claims with it).
    #[test]
    fn a_proposal_never_goes_past_the_round_limit() {
        let mut p = Consensus::new(name(0), 2);
        let forged = Claims {
            promise: Proposal {
                round: crate::mesh::VERSION_LIMIT,
                proposer: Some(name(5)),
            },
            ..Claims::default()
        };
        p.merge(&[(name(5), forged)]).unwrap();
        let mine = p.propose();
        assert_eq!(mine.round, crate::mesh::VERSION_LIMIT);
        let mut peer = Consensus::new(name(1), 2);
        assert!(peer.merge(&p.gossip()).is_ok(), "peers still take our claims");
    }

    #[test]
    fn three_peers_agree() {
        let mut ps: Vec<Consensus> = (0..3).map(|i| Consensus::new(name(i), quorum(3))).collect();
        let mut rounds = 0;
        ps[1].propose();
        while ps.iter().any(|p| p.decision().is_none()) {
            for f in 0..3 {
                for t in 0..3 {
                    let g = ps[f].gossip();
                    ps[t].merge(&g).unwrap();
                }
            }
            rounds += 1;
            assert!(rounds < 10);
        }
        let d = ps[0].decision().unwrap();
        assert!(d.len() >= 2);
        assert!(ps.iter().all(|p| p.decision() == Some(d.clone())));
    }

    #[test]
    fn a_lone_peer_with_quorum_one_decides_itself() {
        let mut p = Consensus::new(name(0), quorum(1));
        assert_eq!(p.decision(), None);
        p.propose();
        assert_eq!(p.decision(), Some(vec![name(0)]));
    }

    #[test]
    fn bad_gossip_is_refused_whole() {
        let mut p = Consensus::new(name(0), 2);
        let before = p.clone();
        let promise = Proposal {
            round: 1,
            proposer: Some(name(1)),
        };
        let bad = Claims {
            promise: Proposal::default(),
            accepted: promise,
            value: vec![name(1)],
        };
        let good = Claims {
            promise,
            ..Claims::default()
        };
        assert_eq!(
            p.merge(&[(name(1), good.clone()), (name(2), bad)]),
            Err(ConsensusError::Invalid(
                name(2),
                "accepted a proposal above its promise"
            ))
        );
        assert_eq!(p, before);
        let no_value = Claims {
            promise,
            accepted: promise,
            value: vec![],
        };
        assert!(p.merge(&[(name(1), no_value)]).is_err());
        p.merge(&[(name(1), good.clone())]).unwrap();
        let forked = Claims {
            promise,
            accepted: Proposal::default(),
            value: vec![],
        };
        assert_eq!(p.merge(&[(name(1), forked)]), Ok(false));
        // Same (promise, accepted), two values.
        let acc1 = Claims {
            promise,
            accepted: promise,
            value: vec![name(1)],
        };
        let acc2 = Claims {
            promise,
            accepted: promise,
            value: vec![name(1), name(2)],
        };
        p.merge(&[(name(1), acc1)]).unwrap();
        assert_eq!(
            p.merge(&[(name(1), acc2)]),
            Err(ConsensusError::Conflict(name(1)))
        );
    }

    #[test]
    fn status_lines() {
        let range: Ipv4Net = "10.32.0.0/12".parse().unwrap();
        let mut ring = Ring::new(name(0), range);
        let mode = InitMode::Consensus(Some(3));
        assert_eq!(status(&ring, &mode, None, |_| true).to_string(), "idle");
        let mut vote = Consensus::new(name(0), quorum(3));
        vote.merge(&[(name(1), Claims::default())]).unwrap();
        assert_eq!(
            status(&ring, &mode, Some(&vote), |_| true).to_string(),
            "awaiting consensus (quorum: 2, known: 2)"
        );
        assert_eq!(
            status(&ring, &InitMode::Observer, None, |_| true).to_string(),
            "priming"
        );
        let mut theirs = Ring::new(name(1), range);
        theirs.claim_for_peers(&[name(1), name(2)]).unwrap();
        ring.merge(theirs.state()).unwrap();
        assert_eq!(
            status(&ring, &mode, Some(&vote), |_| true).to_string(),
            "ready"
        );
        assert_eq!(
            status(&ring, &mode, Some(&vote), |_| false).to_string(),
            "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead"
        );
    }

    #[derive(Clone, Debug)]
    enum Ev {
        Propose(usize),
        /// Peer `from` gossips its current claims; they arrive later.
        Send {
            from: usize,
            to: usize,
        },
        /// A message in flight arrives (any of them, in any order, maybe twice).
        Deliver(usize),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            2 => any::<usize>().prop_map(Ev::Propose),
            4 => (any::<usize>(), any::<usize>()).prop_map(|(from, to)| Ev::Send { from, to }),
            4 => any::<usize>().prop_map(Ev::Deliver),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Duelling proposers, reordered, delayed and repeated messages: every peer that
        /// decides, at any moment, decides the same set, of at least a quorum of peers; once
        /// one proposer runs undisturbed, everyone decides.
        #[test]
        fn every_peer_decides_the_same_set(n in 1usize..7, evs in proptest::collection::vec(ev(), 0..150)) {
            let q = quorum(n);
            let mut ps: Vec<Consensus> = (0..n).map(|i| Consensus::new(name(i), q)).collect();
            let mut flight: Vec<(usize, Vec<(PeerName, Claims)>)> = Vec::new();
            let mut decided: Option<Vec<PeerName>> = None;
            let mut check = |ps: &[Consensus]| -> Result<(), TestCaseError> {
                for p in ps {
                    if let Some(d) = p.decision() {
                        prop_assert!(d.len() >= q, "decided {d:?} with quorum {q}");
                        match &decided {
                            Some(prev) => prop_assert_eq!(prev, &d),
                            None => decided = Some(d),
                        }
                    }
                }
                Ok(())
            };
            for e in evs {
                match e {
                    Ev::Propose(i) => {
                        ps[i % n].propose();
                    }
                    Ev::Send { from, to } => flight.push((to % n, ps[from % n].gossip())),
                    Ev::Deliver(k) if !flight.is_empty() => {
                        let (to, g) = flight[k % flight.len()].clone();
                        ps[to].merge(&g).unwrap();
                    }
                    Ev::Deliver(_) => {}
                }
                check(&ps)?;
            }
            // Old messages still arrive, then one proposer runs undisturbed.
            for (to, g) in flight.clone() {
                ps[to].merge(&g).unwrap();
            }
            check(&ps)?;
            if ps.iter().all(|p| p.decision().is_none()) {
                ps[0].propose();
            }
            for _ in 0..6 {
                for f in 0..n {
                    for t in 0..n {
                        let g = ps[f].gossip();
                        ps[t].merge(&g).unwrap();
                    }
                }
                check(&ps)?;
            }
            for p in &ps {
                prop_assert!(p.decision().is_some(), "undecided after a quiet round");
            }
        }
    }
}
