//! One peer's IPAM as a state machine: requests and messages in, effects out.
//!
//! This is the surface the router wires up. It owns the [`Allocator`] and the vote, starts
//! initialisation lazily (on the first allocation or claim, as Weave does), asks other
//! peers for space, and answers their requests. It performs no I/O: every call returns the
//! [`Effect`]s to carry out, in order: [`Effect::Persist`] (write [`Ipam::state`]
//! crash-safely) always comes before any message, so a peer never tells others about a
//! state it could lose in a crash.
//!
//! A request that cannot finish yet ([`Step::Pending`]: awaiting consensus, the ring, or
//! a donation) is kept by the caller and retried after the next message that changed
//! something ([`Handled::changed`]) or after a timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::allocator::{AllocError, Allocate, Allocator, AllocatorState};
use super::consensus::{quorum, status, Claims, Consensus, ConsensusError, InitMode, IpamStatus};
#[cfg(test)]
use super::ring::Ring;
use super::ring::{RingError, RingState};
use crate::mesh::peer_name::PeerName;
use crate::net::Ipv4Cidr;
use crate::net::{AddrRange, Ipv4Net};

/// What IPAM peers say to each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// The whole ring (gossip: broadcast on change and periodically).
    Ring(RingState),
    /// Everyone's consensus claims (gossip while the vote runs).
    Votes(Vec<(PeerName, Claims)>),
    /// Unicast: please give me space in this subnet.
    SpaceRequest { subnet: Ipv4Net },
    /// Unicast answer to a space request: the donor's ring after donating, and whether it
    /// gave anything.
    SpaceReply { ring: RingState, donated: bool },
}

/// What the caller must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Write [`Ipam::state`] crash-safely before sending anything.
    Persist,
    Broadcast(Message),
    Send(PeerName, Message),
}

/// How far a request got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step<T> {
    Done(T),
    /// Waiting for consensus, the ring or a donation: retry later.
    Pending,
}

/// The result of handling a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handled {
    /// Our state changed: pending requests may now succeed.
    pub changed: bool,
    pub effects: Vec<Effect>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    #[error("default subnet {subnet} is not inside the allocation range {range}")]
    DefaultSubnetOutsideRange { subnet: Ipv4Net, range: Ipv4Net },
    #[error("stored IPAM state is for range {stored}, but the allocation range is {range}")]
    StoredRangeDiffers { stored: Ipv4Net, range: Ipv4Net },
    #[error("no reachable peer has free space in {0}")]
    NoReachableDonor(Ipv4Net),
    #[error("observers own no space and cannot {0}")]
    Observer(&'static str),
    #[error("space request from {0}, a peer we do not reach: nothing donated")]
    UnknownRequester(PeerName),
}

/// One peer's IPAM.
#[derive(Clone, Debug)]
pub struct Ipam {
    alloc: Allocator,
    mode: InitMode,
    quorum: usize,
    default_subnet: Ipv4Net,
    vote: Option<Consensus>,
    /// Space requests in flight, per subnet: one at a time, until the reply or a tick.
    asked: BTreeMap<Ipv4Net, PeerName>,
    /// Peers that had nothing to give in a subnet; not asked again until a tick.
    refused: BTreeMap<Ipv4Net, BTreeSet<PeerName>>,
}

impl Ipam {
    /// `expected_peers` is the peer count for consensus when the mode does not give one
    /// (Weave uses the number of initial peers given to `launch`, plus one).
    pub fn new(
        ourself: PeerName,
        range: Ipv4Net,
        default_subnet: Ipv4Net,
        mode: InitMode,
        expected_peers: usize,
    ) -> Result<Self, IpamError> {
        if !range.contains_cidr(default_subnet) {
            return Err(IpamError::DefaultSubnetOutsideRange {
                subnet: default_subnet,
                range,
            });
        }
        let n = match mode {
            InitMode::Consensus(Some(n)) => n,
            _ => expected_peers.max(1),
        };
        Ok(Self {
            alloc: Allocator::new(ourself, range),
            mode,
            quorum: quorum(n),
            default_subnet,
            vote: None,
            asked: BTreeMap::new(),
            refused: BTreeMap::new(),
        })
    }

    /// [`Ipam::new`] continuing from persisted state.
    pub fn restore(
        ourself: PeerName,
        default_subnet: Ipv4Net,
        mode: InitMode,
        expected_peers: usize,
        range: Ipv4Net,
        state: AllocatorState,
    ) -> Result<Self, IpamError> {
        if state.ring.range() != range {
            return Err(IpamError::StoredRangeDiffers {
                stored: state.ring.range(),
                range,
            });
        }
        let mut me = Self::new(ourself, range, default_subnet, mode, expected_peers)?;
        me.alloc = Allocator::restore(ourself, state)?;
        Ok(me)
    }

    /// What to persist.
    pub fn state(&self) -> AllocatorState {
        self.alloc.state()
    }

    pub fn allocator(&self) -> &Allocator {
        &self.alloc
    }

    pub fn default_subnet(&self) -> Ipv4Net {
        self.default_subnet
    }

    /// What peers compare before they connect: our range and the peers that split it
    /// first (the ring's, else the configured seeds, else none known yet).
    pub fn identity(&self) -> super::identity::IpamIdentity {
        let ring = self.alloc.ring();
        let seeds = match &self.mode {
            _ if !ring.is_empty() => ring.state().seeds().to_vec(),
            InitMode::Seed(seeds) => seeds.clone(),
            _ => Vec::new(),
        };
        super::identity::IpamIdentity {
            range: ring.range(),
            seeds,
        }
    }

    pub fn status(&self, reachable: impl Fn(PeerName) -> bool) -> IpamStatus {
        status(self.alloc.ring(), &self.mode, self.vote.as_ref(), reachable)
    }

    /// What to gossip periodically.
    pub fn gossip(&self) -> Vec<Message> {
        let mut out = Vec::new();
        if !self.alloc.ring().is_empty() {
            out.push(Message::Ring(self.alloc.ring().state().clone()));
        } else if let Some(v) = &self.vote {
            out.push(Message::Votes(v.gossip()));
        }
        out
    }

    fn ring_msg(&self) -> Message {
        Message::Ring(self.alloc.ring().state().clone())
    }

    /// Claims the range for `peers` and announces it.
    fn claim(&mut self, peers: &[PeerName], effects: &mut Vec<Effect>) -> Result<(), IpamError> {
        self.alloc.claim_for_peers(peers)?;
        self.vote = None;
        effects.push(Effect::Persist);
        effects.push(Effect::Broadcast(self.ring_msg()));
        Ok(())
    }

    /// If the vote has decided, claims for its result.
    fn settle_vote(&mut self, effects: &mut Vec<Effect>) -> Result<(), IpamError> {
        if let Some(decided) = self.vote.as_ref().and_then(Consensus::decision) {
            if self.alloc.ring().is_empty() {
                self.claim(&decided, effects)?;
            } else {
                self.vote = None;
            }
        }
        Ok(())
    }

    /// Lazy initialisation: claim as a seed, or join the vote and propose.
    fn start(&mut self, effects: &mut Vec<Effect>) -> Result<(), IpamError> {
        if !self.alloc.ring().is_empty() {
            return Ok(());
        }
        if let Some(seeds) = self.mode.initial_claim(self.alloc.ourself()) {
            return self.claim(&seeds, effects);
        }
        if self.mode.votes() && self.vote.is_none() {
            let mut v = Consensus::new(self.alloc.ourself(), self.quorum);
            v.propose();
            effects.push(Effect::Broadcast(Message::Votes(v.gossip())));
            self.vote = Some(v);
            self.settle_vote(effects)?;
        }
        Ok(())
    }

    /// Allocates an address in `subnet` (default subnet if `None`) for `owner`.
    /// `reachable` tells which peers we can ask for space; `random` picks among them.
    pub fn allocate(
        &mut self,
        owner: &str,
        subnet: Option<Ipv4Net>,
        reachable: impl Fn(PeerName) -> bool,
        random: u64,
    ) -> Result<(Step<Ipv4Cidr>, Vec<Effect>), IpamError> {
        let subnet = subnet.unwrap_or(self.default_subnet);
        let mut effects = Vec::new();
        self.start(&mut effects)?;
        if self.alloc.ring().is_empty() {
            return Ok((Step::Pending, effects));
        }
        match self.alloc.allocate(owner, subnet)? {
            Allocate::Address(a) => {
                effects.push(Effect::Persist);
                Ok((Step::Done(a), effects))
            }
            Allocate::NeedSpace { subnet, .. } => {
                if self.asked.contains_key(&subnet) {
                    return Ok((Step::Pending, effects));
                }
                let refused = self.refused.get(&subnet);
                let candidate =
                    |p: PeerName| reachable(p) && !refused.is_some_and(|r| r.contains(&p));
                match self
                    .alloc
                    .ring()
                    .pick_donor(subnet.usable(), candidate, random)
                {
                    None if refused.is_some_and(|r| !r.is_empty()) => {
                        Err(AllocError::SubnetExhausted(subnet).into())
                    }
                    Some(donor) => {
                        self.asked.insert(subnet, donor);
                        effects.push(Effect::Send(donor, Message::SpaceRequest { subnet }));
                        Ok((Step::Pending, effects))
                    }
                    None => Err(IpamError::NoReachableDonor(subnet)),
                }
            }
        }
    }

    /// Claims a given address for `owner` (after a restart, or `ip:CIDR`).
    pub fn claim_address(
        &mut self,
        owner: &str,
        address: Ipv4Cidr,
    ) -> Result<(Step<()>, Vec<Effect>), IpamError> {
        let mut effects = Vec::new();
        self.start(&mut effects)?;
        if self.alloc.ring().is_empty() {
            return Ok((Step::Pending, effects));
        }
        self.alloc.claim(owner, address)?;
        effects.push(Effect::Persist);
        Ok((Step::Done(()), effects))
    }

    /// Releases every address of `owner`.
    pub fn release(&mut self, owner: &str) -> (Vec<Ipv4Cidr>, Vec<Effect>) {
        let gone = self.alloc.release(owner);
        let effects = if gone.is_empty() {
            Vec::new()
        } else {
            vec![Effect::Persist]
        };
        (gone, effects)
    }

    /// Releases one address of `owner`.
    pub fn release_address(
        &mut self,
        owner: &str,
        addr: Ipv4Addr,
    ) -> Result<Vec<Effect>, IpamError> {
        self.alloc.release_address(owner, addr)?;
        Ok(vec![Effect::Persist])
    }

    /// Handles a message from `from` as [`Ipam::handle`] does, but gives space only to a
    /// peer we reach (`reachable`): a space request naming anyone else (a made-up peer) is
    /// refused and changes nothing.
    pub fn handle_from(
        &mut self,
        from: PeerName,
        msg: Message,
        reachable: impl Fn(PeerName) -> bool,
    ) -> Result<Handled, IpamError> {
        if matches!(msg, Message::SpaceRequest { .. }) && !reachable(from) {
            return Err(IpamError::UnknownRequester(from));
        }
        self.handle(from, msg)
    }

    /// Handles a message from `from`. A refused message changes nothing.
    pub fn handle(&mut self, from: PeerName, msg: Message) -> Result<Handled, IpamError> {
        let mut out = Handled::default();
        // A reply from a donor not initialised yet (empty ring) is no refusal.
        let reply = match &msg {
            Message::SpaceReply { donated, ring } => Some(*donated || ring.is_empty()),
            _ => None,
        };
        match msg {
            Message::Ring(theirs) | Message::SpaceReply { ring: theirs, .. } => {
                self.mode.check_ring(&theirs)?;
                let merged = self.alloc.merge(&theirs)?;
                if let Some(donated_or_not_ready) = reply {
                    let answered: Vec<Ipv4Net> = self
                        .asked
                        .iter()
                        .filter(|(_, d)| **d == from)
                        .map(|(c, _)| *c)
                        .collect();
                    for subnet in answered {
                        self.asked.remove(&subnet);
                        if !donated_or_not_ready {
                            self.refused.entry(subnet).or_default().insert(from);
                        }
                        out.changed = true;
                    }
                }
                if merged {
                    out.changed = true;
                    self.vote = None;
                    out.effects.push(Effect::Persist);
                    out.effects.push(Effect::Broadcast(self.ring_msg()));
                }
            }
            Message::Votes(claims) => {
                if !self.alloc.ring().is_empty() {
                    // The vote is over here: tell the late peer the result.
                    out.effects.push(Effect::Send(from, self.ring_msg()));
                } else if self.mode.votes() {
                    // Join the vote on first hearing of it; a refused update changes nothing.
                    let mut v = self
                        .vote
                        .clone()
                        .unwrap_or_else(|| Consensus::new(self.alloc.ourself(), self.quorum));
                    if v.merge(&claims)? {
                        out.changed = true;
                        out.effects
                            .push(Effect::Broadcast(Message::Votes(v.gossip())));
                    }
                    self.vote = Some(v);
                    self.settle_vote(&mut out.effects)?;
                }
            }
            Message::SpaceRequest { subnet } => {
                // A seed that has not claimed its share yet (initialisation is lazy) does
                // so now: the requester's own claim may not have reached it.
                self.start(&mut out.effects)?;
                if self.alloc.ring().is_empty() {
                    // Not initialised here yet: an empty reply lets the requester ask again.
                    let ring = self.alloc.ring().state().clone();
                    out.effects.push(Effect::Send(
                        from,
                        Message::SpaceReply {
                            ring,
                            donated: false,
                        },
                    ));
                    return Ok(out);
                }
                let given = self.alloc.donate(from, subnet)?;
                if given.is_some() {
                    out.changed = true;
                    out.effects.push(Effect::Persist);
                }
                let ring = self.alloc.ring().state().clone();
                out.effects.push(Effect::Send(
                    from,
                    Message::SpaceReply {
                        ring,
                        donated: given.is_some(),
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Call on a randomised timer (a few seconds): re-proposes while a started vote has not
    /// decided, and forgets space requests left unanswered (so they are asked again).
    pub fn tick(&mut self) -> Result<Vec<Effect>, IpamError> {
        self.asked.clear();
        self.refused.clear();
        let mut effects = Vec::new();
        if self.alloc.ring().is_empty() {
            if let Some(v) = &mut self.vote {
                if v.decision().is_none() {
                    v.propose();
                    effects.push(Effect::Broadcast(Message::Votes(v.gossip())));
                }
            }
            // A decision reached by our own proposal alone (quorum 1).
            self.settle_vote(&mut effects)?;
        }
        Ok(effects)
    }

    /// `rmpeer`: takes over a dead peer's space.
    pub fn remove_peer(
        &mut self,
        dead: PeerName,
    ) -> Result<(Vec<AddrRange>, Vec<Effect>), IpamError> {
        let taken = self.alloc.remove_peer(dead)?;
        Ok((
            taken,
            vec![Effect::Persist, Effect::Broadcast(self.ring_msg())],
        ))
    }

    /// `reset`: drops all allocations and hands our space to `heir`.
    pub fn leave(&mut self, heir: PeerName) -> Result<(Vec<AddrRange>, Vec<Effect>), IpamError> {
        if matches!(self.mode, InitMode::Observer) && self.alloc.ring().our_ranges().is_empty() {
            return Err(IpamError::Observer("hand over space"));
        }
        let given = self.alloc.leave(heir)?;
        Ok((
            given,
            vec![Effect::Persist, Effect::Broadcast(self.ring_msg())],
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::ipam::ring::tests::name;
    use crate::net::cidr::parse_address;
    use proptest::prelude::*;

    fn cidr(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// Peers and the messages between them; effects applied as the router would.
    struct Net {
        nodes: Vec<Ipam>,
        queue: Vec<(usize, usize, Message)>,
        persisted: Vec<Option<AllocatorState>>,
    }

    impl Net {
        fn new(n: usize, mode: &str, range: &str, subnet: &str) -> Self {
            let nodes = (0..n)
                .map(|i| {
                    Ipam::new(name(i), cidr(range), cidr(subnet), mode.parse().unwrap(), n).unwrap()
                })
                .collect();
            Self {
                nodes,
                queue: Vec::new(),
                persisted: vec![None; n],
            }
        }

        fn index(&self, p: PeerName) -> usize {
            (0..self.nodes.len()).find(|&k| name(k) == p).unwrap()
        }

        fn apply(&mut self, at: usize, effects: Vec<Effect>) {
            for e in effects {
                match e {
                    Effect::Persist => self.persisted[at] = Some(self.nodes[at].state()),
                    Effect::Broadcast(m) => {
                        for t in (0..self.nodes.len()).filter(|&t| t != at) {
                            self.queue.push((at, t, m.clone()));
                        }
                    }
                    Effect::Send(p, m) => {
                        let t = self.index(p);
                        self.queue.push((at, t, m));
                    }
                }
            }
        }

        fn deliver(&mut self, k: usize) -> bool {
            if self.queue.is_empty() {
                return false;
            }
            let (from, to, m) = self.queue.remove(k % self.queue.len());
            let h = self.nodes[to].handle(name(from), m).unwrap();
            self.apply(to, h.effects);
            true
        }

        fn allocate(&mut self, at: usize, owner: &str, random: u64) -> Option<Ipv4Cidr> {
            let (step, effects) = self.nodes[at]
                .allocate(owner, None, |_| true, random)
                .unwrap();
            self.apply(at, effects);
            match step {
                Step::Done(a) => Some(a),
                Step::Pending => None,
            }
        }

        /// Periodic gossip from everyone, delivered in order.
        fn gossip_round(&mut self) {
            for at in 0..self.nodes.len() {
                let msgs = self.nodes[at].gossip();
                self.apply(at, msgs.into_iter().map(Effect::Broadcast).collect());
            }
            while self.deliver(0) {}
        }

        fn tick(&mut self, at: usize) {
            let effects = self.nodes[at].tick().unwrap();
            self.apply(at, effects);
        }
    }

    #[test]
    fn walkthrough_two_peers_by_init_peer_count() {
        let mut net = Net::new(2, "consensus=2", "10.2.0.0/16", "10.2.1.0/24");
        assert_eq!(net.nodes[0].status(|_| true).to_string(), "idle");
        assert_eq!(net.allocate(0, "a1", 0), None);
        assert_eq!(
            net.nodes[0].status(|_| true).to_string(),
            "awaiting consensus (quorum: 2, known: 1)"
        );
        let mut got = BTreeMap::new();
        let mut pending = vec![(0, "a1"), (1, "a2"), (1, "b1")];
        for _ in 0..100 {
            pending.retain(|&(at, owner)| match net.allocate(at, owner, 7) {
                Some(a) => {
                    got.insert(owner, a);
                    false
                }
                None => true,
            });
            if !net.deliver(0) && pending.is_empty() {
                break;
            }
        }
        assert!(pending.is_empty(), "{pending:?}");
        assert_eq!(got["a1"].to_string(), "10.2.1.1/24");
        assert_eq!(got["a2"].to_string(), "10.2.1.129/24");
        assert_eq!(got["b1"].to_string(), "10.2.1.130/24");
        net.gossip_round();
        assert_eq!(net.nodes[0].state().ring, net.nodes[1].state().ring);
        assert_eq!(net.nodes[1].status(|_| true).to_string(), "ready");
        assert!(net.persisted.iter().all(Option::is_some));
        // ip: claims, and a restart from the persisted state keeps them.
        let (step, fx) = net.nodes[0]
            .claim_address("b2", parse_address("10.2.2.7/24").unwrap())
            .unwrap();
        assert_eq!(step, Step::Done(()));
        net.apply(0, fx);
        let stored = net.persisted[0].clone().unwrap();
        let back = Ipam::restore(
            name(0),
            cidr("10.2.1.0/24"),
            "consensus=2".parse().unwrap(),
            2,
            cidr("10.2.0.0/16"),
            stored.clone(),
        )
        .unwrap();
        assert_eq!(back.state(), net.nodes[0].state());
        assert!(matches!(
            Ipam::restore(
                name(0),
                cidr("10.2.1.0/24"),
                "consensus=2".parse().unwrap(),
                2,
                cidr("10.3.0.0/16"),
                stored
            ),
            Err(IpamError::StoredRangeDiffers { .. })
        ));
    }

    #[test]
    fn seeds_claim_without_a_vote_and_observers_wait() {
        let seeds = format!("seed={},{}", name(0), name(1));
        let mut net = Net::new(3, &seeds, "10.32.0.0/12", "10.32.0.0/12");
        net.nodes[2] = Ipam::new(
            name(2),
            cidr("10.32.0.0/12"),
            cidr("10.32.0.0/12"),
            InitMode::Observer,
            3,
        )
        .unwrap();
        assert_eq!(
            net.allocate(0, "c1", 0).unwrap().to_string(),
            "10.32.0.1/12"
        );
        assert_eq!(net.allocate(2, "c2", 0), None);
        assert_eq!(net.nodes[2].status(|_| true).to_string(), "priming");
        net.gossip_round();
        assert_eq!(net.nodes[2].status(|_| true).to_string(), "ready");
        assert_eq!(net.nodes[1].state().ring, net.nodes[0].state().ring);
        // A ring seeded by others is refused.
        let mut other = Ring::new(name(3), cidr("10.32.0.0/12"));
        other.claim_for_peers(&[name(3)]).unwrap();
        let e = net.nodes[0]
            .handle(name(3), Message::Ring(other.state().clone()))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("IP allocation was seeded by different peers"),
            "{e}"
        );
        assert!(matches!(
            Ipam::new(
                name(0),
                cidr("10.32.0.0/12"),
                cidr("10.2.0.0/16"),
                InitMode::Observer,
                1
            ),
            Err(IpamError::DefaultSubnetOutsideRange { .. })
        ));
    }

    #[test]
    fn space_goes_only_to_a_peer_we_reach() {
        let seeds = format!("seed={}", name(0));
        let mut net = Net::new(2, &seeds, "10.32.0.0/12", "10.32.0.0/12");
        net.allocate(0, "c1", 0).unwrap();
        let before = net.nodes[0].state();
        let request = Message::SpaceRequest {
            subnet: cidr("10.32.0.0/12"),
        };
        // Peer 7 is made up: nobody reaches it.
        let reached = |p: PeerName| p == name(1);
        assert_eq!(
            net.nodes[0].handle_from(name(7), request.clone(), reached),
            Err(IpamError::UnknownRequester(name(7)))
        );
        assert_eq!(net.nodes[0].state(), before, "nothing donated");
        let h = net.nodes[0].handle_from(name(1), request, reached).unwrap();
        assert!(
            matches!(&h.effects[..], [Effect::Persist, Effect::Send(p, Message::SpaceReply { donated: true, .. })] if *p == name(1)),
            "{:?}",
            h.effects
        );
    }

    #[test]
    fn the_identity_names_the_seeds_once_known() {
        // Seeds are known from the configuration, before the ring is claimed.
        let seeded = Net::new(
            2,
            &format!("seed={}", name(0)),
            "10.2.0.0/16",
            "10.2.1.0/24",
        );
        let id = seeded.nodes[1].identity();
        assert_eq!((id.range, id.seeds), (cidr("10.2.0.0/16"), vec![name(0)]));
        // A consensus knows them once decided: from the ring.
        let mut net = Net::new(2, "consensus", "10.2.0.0/16", "10.2.1.0/24");
        assert!(net.nodes[0].identity().seeds.is_empty());
        assert!(net.nodes[1].identity().seeds.is_empty());
        net.allocate(0, "c1", 0);
        net.allocate(1, "c2", 0);
        while net.deliver(0) {}
        assert_eq!(net.nodes[0].identity().seeds, vec![name(0), name(1)]);
        assert_eq!(net.nodes[0].identity(), net.nodes[1].identity());
        assert!(net.nodes[0]
            .identity()
            .check(&seeded.nodes[1].identity())
            .is_err());
    }

    #[test]
    fn a_seed_asked_for_space_before_its_first_allocation_claims_and_gives() {
        let mut net = Net::new(
            2,
            &format!("seed={},{}", name(0), name(1)),
            "10.2.0.0/16",
            "10.2.1.0/24",
        );
        // Peer 1's first allocation: the default subnet is in peer 0's half, and peer 0
        // has not claimed yet (its claim to come was lost, say).
        assert_eq!(net.allocate(1, "c1", 0), None);
        net.queue
            .retain(|(_, _, m)| matches!(m, Message::SpaceRequest { .. }));
        while net.deliver(0) {}
        let got = net
            .allocate(1, "c1", 0)
            .expect("an address after the donation");
        assert!(cidr("10.2.1.0/24").contains(got.addr), "{got}");
    }

    #[test]
    fn rmpeer_and_unreachable_owners() {
        let seeds = format!("seed={},{}", name(0), name(1));
        let mut net = Net::new(2, &seeds, "10.32.0.0/12", "10.32.0.0/12");
        net.allocate(0, "c1", 0).unwrap();
        net.allocate(1, "c2", 0).unwrap();
        while net.deliver(0) {}
        assert_eq!(net.nodes[0].status(|p| p != name(1)).to_string(), "ready");
        let (taken, fx) = net.nodes[0].remove_peer(name(1)).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(fx[0], Effect::Persist);
        let (given, _) = net.nodes[0].leave(name(1)).unwrap();
        assert_eq!(given.len(), 1);
        assert_eq!(
            net.nodes[0].status(|p| p != name(1)).to_string(),
            "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead"
        );
        assert_eq!(
            net.nodes[0]
                .allocate("c3", None, |p| p != name(1), 0)
                .unwrap_err(),
            IpamError::NoReachableDonor(cidr("10.32.0.0/12"))
        );
    }

    #[derive(Clone, Debug)]
    enum Ev {
        Deliver(usize),
        Retry,
        Tick(usize),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            8 => any::<usize>().prop_map(Ev::Deliver),
            3 => Just(Ev::Retry),
            1 => any::<usize>().prop_map(Ev::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Three fresh peers (consensus of 3), 60 attaches spread over them, messages in any
        /// order: 60 distinct addresses in the default subnet, one ring everywhere.
        #[test]
        fn sixty_attaches_on_three_peers_get_distinct_addresses(
            spread in proptest::collection::vec(0usize..3, 60),
            evs in proptest::collection::vec(ev(), 0..400),
            random in any::<u64>(),
        ) {
            let mut net = Net::new(3, "consensus", "10.2.0.0/16", "10.2.1.0/24");
            let mut pending: Vec<(usize, String)> = spread.iter().enumerate().map(|(k, &at)| (at, format!("c{k}"))).collect();
            let mut got: BTreeMap<String, Ipv4Cidr> = BTreeMap::new();
            let retry = |net: &mut Net, pending: &mut Vec<(usize, String)>, got: &mut BTreeMap<String, Ipv4Cidr>| {
                pending.retain(|(at, owner)| match net.allocate(*at, owner, random) {
                    Some(a) => {
                        got.insert(owner.clone(), a);
                        false
                    }
                    None => true,
                });
            };
            for e in evs {
                match e {
                    Ev::Deliver(k) => {
                        net.deliver(k);
                    }
                    Ev::Retry => retry(&mut net, &mut pending, &mut got),
                    Ev::Tick(i) => net.tick(i % 3),
                }
            }
            // Then the network settles: in order, with retries, and one tick per round.
            for round in 0..200 {
                retry(&mut net, &mut pending, &mut got);
                if pending.is_empty() && net.queue.is_empty() {
                    break;
                }
                for _ in 0..50 {
                    if !net.deliver(0) {
                        break;
                    }
                }
                if round % 10 == 9 {
                    for i in 0..3 {
                        net.tick(i);
                    }
                }
            }
            prop_assert!(pending.is_empty(), "still pending: {pending:?}");
            net.gossip_round();
            let distinct: BTreeSet<Ipv4Addr> = got.values().map(|a| a.addr).collect();
            prop_assert_eq!(distinct.len(), 60);
            prop_assert!(got.values().all(|a| cidr("10.2.1.0/24").usable().contains_addr(a.addr) && a.prefix_len == 24));
            for n in &net.nodes {
                prop_assert_eq!(&n.state().ring, &net.nodes[0].state().ring);
            }
        }
    }
}
