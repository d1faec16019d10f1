//! One peer's allocations inside the space it owns in the ring.
//!
//! Addresses are handed out only from ranges this peer owns in its own ring, so two peers
//! never hand out the same address (see [`super::ring`]). Every change to the allocations
//! reports the free counts of our tokens to the ring, which gossips them: a peer that has
//! no free address in a subnet asks a peer reporting free space there for a donation
//! ([`Allocator::donate`] on the donor, then [`Allocator::merge`] of the donor's ring on the
//! requester, then the allocation again).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::ring::{Ring, RingError, RingState};
use crate::mesh::peer_name::PeerName;
use crate::net::Ipv4Cidr;
use crate::net::{AddrRange, Ipv4Net};

/// Longest owner ID accepted (container IDs are 64 characters, netns paths longer).
pub const MAX_OWNER_LEN: usize = 1024;

/// An address given to an owner (a container ID or a netns path).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub owner: String,
    pub address: Ipv4Cidr,
}

/// Everything to persist: the ring and our allocations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocatorState {
    pub ring: RingState,
    pub allocations: Vec<Allocation>,
}

/// The result of an allocation that did not fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allocate {
    Address(Ipv4Cidr),
    /// We own no free address in the subnet; these peers may have some (with an estimate). Ask one for a donation, merge its ring, try again.
    NeedSpace {
        subnet: Ipv4Net,
        donors: Vec<(PeerName, u64)>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("IP allocation is not initialised yet (no peer owns any part of the range)")]
    NotReady,
    #[error("{what} is outside the allocation range {range}")]
    OutsideRange { what: String, range: Ipv4Net },
    #[error("no free address left in {0}: the subnet is exhausted")]
    SubnetExhausted(Ipv4Net),
    #[error("address {addr} is owned by peer {peer}")]
    OwnedByOther { addr: Ipv4Addr, peer: PeerName },
    #[error("address {addr} is already allocated to {owner}")]
    InUse { addr: Ipv4Addr, owner: String },
    #[error("{addr} is the network or broadcast address of {subnet}")]
    Reserved { addr: Ipv4Addr, subnet: Ipv4Net },
    #[error("address {addr} is not allocated to {owner}")]
    NotAllocated { addr: Ipv4Addr, owner: String },
    #[error("owner ID {0:?} refused: it must be 1..=1024 characters without control characters")]
    BadOwner(String),
    #[error("stored allocations refused: {0}")]
    BadState(String),
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// Our ring plus the addresses we have handed out (keyed by address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocator {
    ring: Ring,
    allocations: BTreeMap<u32, Allocation>,
}

fn check_owner(owner: &str) -> Result<(), AllocError> {
    if owner.is_empty() || owner.len() > MAX_OWNER_LEN || owner.chars().any(char::is_control) {
        return Err(AllocError::BadOwner(owner.chars().take(80).collect()));
    }
    Ok(())
}

impl Allocator {
    pub fn new(ourself: PeerName, range: Ipv4Net) -> Self {
        Self {
            ring: Ring::new(ourself, range),
            allocations: BTreeMap::new(),
        }
    }

    /// Restores persisted state: every allocation must lie in space we own, once.
    pub fn restore(ourself: PeerName, state: AllocatorState) -> Result<Self, AllocError> {
        let mut a = Self {
            ring: Ring::from_state(ourself, state.ring),
            allocations: BTreeMap::new(),
        };
        for al in state.allocations {
            check_owner(&al.owner)?;
            let at = u32::from(al.address.addr);
            if !a.ring.owns(al.address.addr) {
                return Err(AllocError::BadState(format!(
                    "{} is not in space we own",
                    al.address.addr
                )));
            }
            if al.address.prefix_len > 32 {
                return Err(AllocError::BadState(format!(
                    "{} has a prefix over 32",
                    al.address.addr
                )));
            }
            if a.allocations.insert(at, al).is_some() {
                return Err(AllocError::BadState(format!(
                    "{} is allocated twice",
                    Ipv4Addr::from(at)
                )));
            }
        }
        a.sync_free();
        Ok(a)
    }

    pub fn state(&self) -> AllocatorState {
        AllocatorState {
            ring: self.ring.state().clone(),
            allocations: self.allocations.values().cloned().collect(),
        }
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    pub fn ourself(&self) -> PeerName {
        self.ring.ourself()
    }

    /// Claims the whole range for `peers` (seeds, or the consensus result).
    pub fn claim_for_peers(&mut self, peers: &[PeerName]) -> Result<(), AllocError> {
        self.ring.claim_for_peers(peers)?;
        self.sync_free();
        Ok(())
    }

    /// Merges a ring from gossip (or a donor's reply); refused whole on any conflict.
    pub fn merge(&mut self, theirs: &RingState) -> Result<bool, AllocError> {
        let changed = self.ring.merge(theirs)?;
        if changed {
            self.sync_free();
        }
        Ok(changed)
    }

    /// Every allocation, in address order.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    /// The addresses of `owner`, in address order.
    pub fn addresses_of(&self, owner: &str) -> Vec<Ipv4Cidr> {
        self.allocations
            .values()
            .filter(|a| a.owner == owner)
            .map(|a| a.address)
            .collect()
    }

    fn check_subnet(&self, subnet: Ipv4Net) -> Result<(), AllocError> {
        if self.ring.is_empty() {
            return Err(AllocError::NotReady);
        }
        if !self.ring.range().contains_cidr(subnet) {
            return Err(AllocError::OutsideRange {
                what: subnet.to_string(),
                range: self.ring.range(),
            });
        }
        Ok(())
    }

    /// The lowest free usable address we own in `subnet`.
    fn lowest_free(&self, subnet: Ipv4Net) -> Option<u32> {
        let usable = subnet.usable();
        for r in self.ring.our_ranges() {
            let Some(r) = r.intersect(usable) else {
                continue;
            };
            let mut cand = u64::from(r.first);
            for &a in self.allocations.range(r.first..=r.last).map(|(a, _)| a) {
                if u64::from(a) > cand {
                    break;
                }
                cand = u64::from(a) + 1;
            }
            if cand <= u64::from(r.last) {
                return Some(cand as u32);
            }
        }
        None
    }

    /// Allocates the lowest free address in `subnet` for `owner`; the address it already
    /// has there if any (idempotent).
    pub fn allocate(&mut self, owner: &str, subnet: Ipv4Net) -> Result<Allocate, AllocError> {
        check_owner(owner)?;
        self.check_subnet(subnet)?;
        if let Some(a) = self
            .allocations
            .range(subnet.range().first..=subnet.range().last)
            .map(|(_, a)| a)
            .find(|a| a.owner == owner && a.address.prefix_len == subnet.prefix_len())
        {
            return Ok(Allocate::Address(a.address));
        }
        if let Some(at) = self.lowest_free(subnet) {
            let address = subnet.with_host(Ipv4Addr::from(at));
            self.allocations.insert(
                at,
                Allocation {
                    owner: owner.to_string(),
                    address,
                },
            );
            self.sync_free();
            return Ok(Allocate::Address(address));
        }
        let donors = self.ring.donors(subnet.usable());
        if donors.is_empty() {
            return Err(AllocError::SubnetExhausted(subnet));
        }
        Ok(Allocate::NeedSpace { subnet, donors })
    }

    /// Whether we own no free usable address in `subnet` (so must ask for a donation).
    pub fn needs_space(&self, subnet: Ipv4Net) -> bool {
        self.lowest_free(subnet).is_none()
    }

    /// Claims a given address (`ip:10.2.1.5/24`) for `owner`. Idempotent for the same owner.
    pub fn claim(&mut self, owner: &str, address: Ipv4Cidr) -> Result<(), AllocError> {
        check_owner(owner)?;
        if self.ring.is_empty() {
            return Err(AllocError::NotReady);
        }
        let addr = address.addr;
        if !self.ring.range().contains(addr) {
            return Err(AllocError::OutsideRange {
                what: addr.to_string(),
                range: self.ring.range(),
            });
        }
        let subnet = Ipv4Net::of(address);
        if !subnet.usable().contains_addr(addr) {
            return Err(AllocError::Reserved { addr, subnet });
        }
        match self.ring.state().owner_of(addr) {
            Some(p) if p == self.ourself() => {}
            Some(peer) => return Err(AllocError::OwnedByOther { addr, peer }),
            None => return Err(AllocError::NotReady),
        }
        match self.allocations.get(&u32::from(addr)) {
            Some(a) if a.owner == owner => Ok(()),
            Some(a) => Err(AllocError::InUse {
                addr,
                owner: a.owner.clone(),
            }),
            None => {
                self.allocations.insert(
                    u32::from(addr),
                    Allocation {
                        owner: owner.to_string(),
                        address,
                    },
                );
                self.sync_free();
                Ok(())
            }
        }
    }

    /// Releases every address of `owner`; returns them.
    pub fn release(&mut self, owner: &str) -> Vec<Ipv4Cidr> {
        let gone: Vec<u32> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.owner == owner)
            .map(|(&k, _)| k)
            .collect();
        let out = gone
            .iter()
            .filter_map(|k| self.allocations.remove(k))
            .map(|a| a.address)
            .collect();
        if !gone.is_empty() {
            self.sync_free();
        }
        out
    }

    /// Releases one address of `owner`.
    pub fn release_address(&mut self, owner: &str, addr: Ipv4Addr) -> Result<(), AllocError> {
        match self.allocations.get(&u32::from(addr)) {
            Some(a) if a.owner == owner => {
                self.allocations.remove(&u32::from(addr));
                self.sync_free();
                Ok(())
            }
            _ => Err(AllocError::NotAllocated {
                addr,
                owner: owner.to_string(),
            }),
        }
    }

    /// Free runs of addresses we own within `within`, in address order.
    fn free_runs(&self, within: AddrRange) -> Vec<AddrRange> {
        let mut out = Vec::new();
        for r in self.ring.our_ranges() {
            let Some(r) = r.intersect(within) else {
                continue;
            };
            let mut next = u64::from(r.first);
            for &a in self.allocations.range(r.first..=r.last).map(|(a, _)| a) {
                if u64::from(a) > next {
                    out.extend(AddrRange::from_u32(next as u32, a - 1));
                }
                next = u64::from(a) + 1;
            }
            if next <= u64::from(r.last) {
                out.extend(AddrRange::from_u32(next as u32, r.last));
            }
        }
        out
    }

    /// Free addresses we own within `subnet`.
    pub fn free_in(&self, subnet: Ipv4Net) -> u64 {
        self.free_runs(subnet.range()).iter().map(|r| r.len()).sum()
    }

    /// Answers a request for space in `subnet` from `to`: gives the top of our largest run of
    /// free usable addresses there, at most half our free usable space there (at least one
    /// address). Returns the range given, or `None` if we have nothing free there. Send our
    /// ring back afterwards.
    pub fn donate(
        &mut self,
        to: PeerName,
        subnet: Ipv4Net,
    ) -> Result<Option<AddrRange>, AllocError> {
        self.check_subnet(subnet)?;
        let runs = self.free_runs(subnet.usable());
        let total: u64 = runs.iter().map(|r| r.len()).sum();
        let Some(best) = runs
            .iter()
            .copied()
            .max_by_key(|r| (r.len(), std::cmp::Reverse(r.first)))
        else {
            return Ok(None);
        };
        let take = best.len().min((total / 2).max(1));
        let range = AddrRange {
            first: best.last - (take - 1) as u32,
            last: best.last,
        };
        self.ring.give(range, to)?;
        self.sync_free();
        Ok(Some(range))
    }

    /// `rmpeer`: takes over every range of a dead peer.
    pub fn remove_peer(&mut self, dead: PeerName) -> Result<Vec<AddrRange>, AllocError> {
        let taken = self.ring.take_over(dead)?;
        self.sync_free();
        Ok(taken)
    }

    /// `reset`: drops every allocation and hands all our space to `heir`.
    pub fn leave(&mut self, heir: PeerName) -> Result<Vec<AddrRange>, AllocError> {
        let given = self.ring.hand_over_all(heir)?;
        self.allocations.clear();
        Ok(given)
    }

    /// Reports the free count of each of our tokens to the ring.
    fn sync_free(&mut self) {
        for seg in self.ring.our_segments() {
            let used = self
                .allocations
                .range(seg.range.first..=seg.range.last)
                .count() as u64;
            // Our own token: cannot fail.
            let _ = self
                .ring
                .set_free(seg.range.first(), seg.range.len() - used);
        }
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

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn peers(n: usize, range: &str) -> Vec<Allocator> {
        let names: Vec<PeerName> = (0..n).map(name).collect();
        (0..n)
            .map(|i| {
                let mut a = Allocator::new(name(i), cidr(range));
                a.claim_for_peers(&names).unwrap();
                a
            })
            .collect()
    }

    fn addr(out: Allocate) -> Ipv4Cidr {
        match out {
            Allocate::Address(a) => a,
            other => panic!("no address: {other:?}"),
        }
    }

    #[test]
    fn lowest_free_skipping_network_idempotent_per_owner_and_subnet() {
        let mut a = peers(1, "10.2.0.0/16").remove(0);
        let s = cidr("10.2.1.0/24");
        assert_eq!(
            addr(a.allocate("c1", s).unwrap()).to_string(),
            "10.2.1.1/24"
        );
        assert_eq!(
            addr(a.allocate("c2", s).unwrap()).to_string(),
            "10.2.1.2/24"
        );
        assert_eq!(
            addr(a.allocate("c1", s).unwrap()).to_string(),
            "10.2.1.1/24"
        );
        assert_eq!(
            addr(a.allocate("c1", cidr("10.2.2.0/24")).unwrap()).to_string(),
            "10.2.2.1/24"
        );
        assert_eq!(a.addresses_of("c1").len(), 2);
        assert_eq!(a.release("c1").len(), 2);
        assert_eq!(
            addr(a.allocate("c3", s).unwrap()).to_string(),
            "10.2.1.1/24"
        );
        assert!(a.release("nobody").is_empty());
        assert_eq!(
            a.release_address("c2", ip("10.2.1.9")),
            Err(AllocError::NotAllocated {
                addr: ip("10.2.1.9"),
                owner: "c2".into()
            })
        );
        a.release_address("c2", ip("10.2.1.2")).unwrap();
        let free = a.ring().state().space_by_owner()[&name(0)].1;
        assert_eq!(free, (1 << 16) - 1);
    }

    #[test]
    fn exhausted_subnet_and_bad_requests_are_clear_errors() {
        let mut a = peers(1, "10.2.0.0/16").remove(0);
        let s = cidr("10.2.1.0/30");
        addr(a.allocate("c1", s).unwrap());
        addr(a.allocate("c2", s).unwrap());
        let e = a.allocate("c3", s).unwrap_err();
        assert_eq!(e, AllocError::SubnetExhausted(s));
        assert_eq!(
            e.to_string(),
            "no free address left in 10.2.1.0/30: the subnet is exhausted"
        );
        assert_eq!(
            a.allocate("c3", cidr("10.3.0.0/24"))
                .unwrap_err()
                .to_string(),
            "10.3.0.0/24 is outside the allocation range 10.2.0.0/16"
        );
        assert!(matches!(a.allocate("", s), Err(AllocError::BadOwner(_))));
        assert!(matches!(
            a.allocate("a\nb", s),
            Err(AllocError::BadOwner(_))
        ));
        assert!(matches!(
            a.allocate(&"x".repeat(2000), s),
            Err(AllocError::BadOwner(_))
        ));
        let mut fresh = Allocator::new(name(0), cidr("10.2.0.0/16"));
        assert_eq!(fresh.allocate("c1", s), Err(AllocError::NotReady));
        assert_eq!(
            fresh.claim("c1", parse_address("10.2.1.5/24").unwrap()),
            Err(AllocError::NotReady)
        );
    }

    #[test]
    fn claims() {
        let mut ps = peers(2, "10.2.0.0/16");
        let a = &mut ps[0];
        let want = parse_address("10.2.1.5/24").unwrap();
        a.claim("c1", want).unwrap();
        a.claim("c1", want).unwrap();
        assert_eq!(
            a.claim("c2", want),
            Err(AllocError::InUse {
                addr: ip("10.2.1.5"),
                owner: "c1".into()
            })
        );
        assert_eq!(
            a.claim("c2", parse_address("10.2.1.0/24").unwrap()),
            Err(AllocError::Reserved {
                addr: ip("10.2.1.0"),
                subnet: cidr("10.2.1.0/24")
            })
        );
        assert_eq!(
            a.claim("c2", parse_address("10.2.1.255/24").unwrap()),
            Err(AllocError::Reserved {
                addr: ip("10.2.1.255"),
                subnet: cidr("10.2.1.0/24")
            })
        );
        assert_eq!(
            a.claim("c2", parse_address("10.2.200.1/24").unwrap())
                .unwrap_err()
                .to_string(),
            format!("address 10.2.200.1 is owned by peer {}", name(1))
        );
        assert!(matches!(
            a.claim("c2", parse_address("10.9.0.1/24").unwrap()),
            Err(AllocError::OutsideRange { .. })
        ));
        // Allocation skips the claimed address.
        for k in 1..=5 {
            let got = addr(a.allocate(&format!("n{k}"), cidr("10.2.1.0/24")).unwrap());
            assert_ne!(got.addr, ip("10.2.1.5"));
        }
    }

    #[test]
    fn walkthrough_two_peers_share_a_subnet_through_donation() {
        let mut ps = peers(2, "10.2.0.0/16");
        let s = cidr("10.2.1.0/24");
        assert_eq!(
            addr(ps[0].allocate("a1", s).unwrap()).to_string(),
            "10.2.1.1/24"
        );
        let Allocate::NeedSpace { subnet, donors } = ps[1].allocate("a2", s).unwrap() else {
            panic!("peer 1 owns nothing there")
        };
        assert_eq!(subnet, s);
        assert_eq!(donors, vec![(name(0), 254)]);
        assert!(ps[1].needs_space(s));
        // Peer 0's free count is known to peer 1 by gossip; the donation answers the request.
        let given = ps[0].donate(name(1), s).unwrap().unwrap();
        assert_eq!(given.to_string(), "10.2.1.129-10.2.1.254");
        let reply = ps[0].ring().state().clone();
        assert_eq!(ps[1].merge(&reply), Ok(true));
        assert_eq!(
            addr(ps[1].allocate("a2", s).unwrap()).to_string(),
            "10.2.1.129/24"
        );
        assert_eq!(
            ps[1].ring().our_ranges()[0].to_string(),
            "10.2.1.129-10.2.1.254"
        );
        let back = ps[1].ring().state().clone();
        assert_eq!(ps[0].merge(&back), Ok(true));
        assert_eq!(ps[0].ring().state(), ps[1].ring().state());
        // Donations never give away allocated addresses, and stop when nothing is free.
        let mut tiny = peers(2, "10.0.0.0/29");
        let t = cidr("10.0.0.0/29");
        for k in 0..2 {
            addr(tiny[0].allocate(&format!("c{k}"), t).unwrap());
        }
        let got = tiny[0].donate(name(1), t).unwrap().unwrap();
        assert_eq!(got.to_string(), "10.0.0.3-10.0.0.3");
        assert_eq!(tiny[0].donate(name(1), t), Ok(None));
        assert_eq!(tiny[0].addresses_of("c0")[0].addr, ip("10.0.0.1"));
    }

    #[test]
    fn state_round_trips_and_bad_state_is_refused() {
        let mut a = peers(2, "10.2.0.0/16").remove(0);
        addr(a.allocate("c1", cidr("10.2.1.0/24")).unwrap());
        a.claim("c2", parse_address("10.2.3.4/24").unwrap())
            .unwrap();
        let json = serde_json::to_string(&a.state()).unwrap();
        let back: AllocatorState = serde_json::from_str(&json).unwrap();
        assert_eq!(Allocator::restore(name(0), back.clone()).unwrap(), a);
        assert!(matches!(
            Allocator::restore(name(1), back.clone()),
            Err(AllocError::BadState(_))
        ));
        let mut twice = back.clone();
        twice.allocations.push(twice.allocations[0].clone());
        assert!(Allocator::restore(name(0), twice)
            .unwrap_err()
            .to_string()
            .contains("allocated twice"));
    }

    #[test]
    fn rmpeer_and_reset() {
        let mut ps = peers(3, "10.0.0.0/24");
        addr(ps[0].allocate("c1", cidr("10.0.0.0/24")).unwrap());
        let taken = ps[0].remove_peer(name(1)).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(ps[0].free_in(cidr("10.0.0.0/24")), 170 - 1);
        let given = ps[0].leave(name(2)).unwrap();
        assert_eq!(
            given,
            vec!["10.0.0.0/24"
                .parse::<Ipv4Net>()
                .unwrap()
                .range()
                .intersect(given[0])
                .unwrap()]
        );
        assert_eq!(ps[0].allocations().count(), 0);
        let s = ps[0].ring().state().clone();
        ps[2].merge(&s).unwrap();
        assert_eq!(ps[2].free_in(cidr("10.0.0.0/24")), 256);
        assert!(matches!(
            ps[0].remove_peer(name(0)),
            Err(AllocError::Ring(RingError::Ourselves(_)))
        ));
    }

    /// Every address handed out by any peer, checked unique and inside the holder's space.
    fn check_unique(ps: &[Allocator]) -> Result<(), TestCaseError> {
        let mut seen = BTreeSet::new();
        for p in ps {
            for a in p.allocations() {
                prop_assert!(
                    seen.insert(a.address.addr),
                    "{} handed out twice",
                    a.address.addr
                );
                prop_assert!(
                    p.ring().owns(a.address.addr),
                    "{} allocated outside owned space",
                    a.address.addr
                );
            }
        }
        Ok(())
    }

    #[derive(Clone, Debug)]
    enum Op {
        Allocate {
            peer: usize,
            owner: u8,
            subnet: usize,
            donor: usize,
        },
        Release {
            peer: usize,
            owner: u8,
        },
        Gossip {
            from: usize,
            to: usize,
        },
        Partition(u8),
        Heal,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<usize>(), 0u8..12, any::<usize>(), any::<usize>()).prop_map(|(peer, owner, subnet, donor)| Op::Allocate { peer, owner, subnet, donor }),
            1 => (any::<usize>(), 0u8..12).prop_map(|(peer, owner)| Op::Release { peer, owner }),
            3 => (any::<usize>(), any::<usize>()).prop_map(|(from, to)| Op::Gossip { from, to }),
            1 => any::<u8>().prop_map(Op::Partition),
            1 => Just(Op::Heal),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Peers allocate, release, ask for and donate space and gossip, across partitions
        /// that heal: no address is ever handed out twice, and all rings converge.
        #[test]
        fn no_duplicates_across_donation_merges_and_partitions(n in 2usize..5, ops in proptest::collection::vec(op(), 0..120)) {
            let subnets = [cidr("10.0.0.0/26"), cidr("10.0.0.0/28"), cidr("10.0.0.16/28"), cidr("10.0.0.48/29")];
            let mut ps = peers(n, "10.0.0.0/26");
            let mut side = vec![0u8; n];
            for op in ops {
                match op {
                    Op::Allocate { peer, owner, subnet, donor } => {
                        let (i, s) = (peer % n, subnets[subnet % subnets.len()]);
                        let owner = format!("p{i}-c{owner}");
                        match ps[i].allocate(&owner, s) {
                            Ok(Allocate::NeedSpace { donors, .. }) => {
                                let reachable: Vec<PeerName> = donors.iter().map(|d| d.0).filter(|d| (0..n).any(|k| name(k) == *d && side[k] == side[i])).collect();
                                if let Some(&d) = reachable.get(donor % reachable.len().max(1)) {
                                    let k = (0..n).find(|&k| name(k) == d).unwrap();
                                    if ps[k].donate(name(i), s).unwrap().is_some() {
                                        let reply = ps[k].ring().state().clone();
                                        ps[i].merge(&reply).unwrap();
                                        let _ = ps[i].allocate(&owner, s).unwrap();
                                    }
                                }
                            }
                            Ok(Allocate::Address(_)) | Err(AllocError::SubnetExhausted(_)) => {}
                            Err(e) => prop_assert!(false, "{e}"),
                        }
                    }
                    Op::Release { peer, owner } => {
                        let i = peer % n;
                        ps[i].release(&format!("p{i}-c{owner}"));
                    }
                    Op::Gossip { from, to } => {
                        let (f, t) = (from % n, to % n);
                        if side[f] == side[t] {
                            let s = ps[f].ring().state().clone();
                            ps[t].merge(&s).unwrap();
                        }
                    }
                    Op::Partition(mask) => side = (0..n).map(|k| (mask >> k) & 1).collect(),
                    Op::Heal => side = vec![0; n],
                }
                check_unique(&ps)?;
            }
            // Heal and gossip until quiet: one ring everywhere, still no duplicates.
            for _ in 0..2 * n + 2 {
                for f in 0..n {
                    for t in 0..n {
                        let s = ps[f].ring().state().clone();
                        ps[t].merge(&s).unwrap();
                    }
                }
            }
            for p in &ps {
                prop_assert_eq!(p.ring().state(), ps[0].ring().state());
                p.ring().state().check().unwrap();
            }
            check_unique(&ps)?;
            // The gossiped free counts match what each owner holds.
            let by = ps[0].ring().state().space_by_owner();
            for p in &ps {
                if let Some(&(size, free)) = by.get(&p.ourself()) {
                    prop_assert_eq!(size - free, p.allocations().count() as u64);
                }
            }
        }
    }
}
