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

use super::cidr::{AddrRange, Cidr};
use super::ring::{Ring, RingError, RingState};
use crate::datapath::Ipv4Cidr;
use crate::mesh::peer_name::PeerName;

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
    /// We own no free address in the subnet; these peers report free space overlapping it
    /// (with their free counts). Ask one for a donation, merge its ring, try again.
    NeedSpace { subnet: Cidr, donors: Vec<(PeerName, u64)> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("IP allocation is not initialised yet (no peer owns any part of the range)")]
    NotReady,
    #[error("{what} is outside the allocation range {range}")]
    OutsideRange { what: String, range: Cidr },
    #[error("no free address left in {0}: the subnet is exhausted")]
    SubnetExhausted(Cidr),
    #[error("address {addr} is owned by peer {peer}")]
    OwnedByOther { addr: Ipv4Addr, peer: PeerName },
    #[error("address {addr} is already allocated to {owner}")]
    InUse { addr: Ipv4Addr, owner: String },
    #[error("{addr} is the network or broadcast address of {subnet}")]
    Reserved { addr: Ipv4Addr, subnet: Cidr },
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
    pub fn new(ourself: PeerName, range: Cidr) -> Self {
        Self { ring: Ring::new(ourself, range), allocations: BTreeMap::new() }
    }

    /// Restores persisted state: every allocation must lie in space we own, once.
    pub fn restore(ourself: PeerName, state: AllocatorState) -> Result<Self, AllocError> {
        let mut a = Self { ring: Ring::from_state(ourself, state.ring), allocations: BTreeMap::new() };
        for al in state.allocations {
            check_owner(&al.owner)?;
            let at = u32::from(al.address.addr);
            if !a.ring.owns(al.address.addr) {
                return Err(AllocError::BadState(format!("{} is not in space we own", al.address.addr)));
            }
            if al.address.prefix_len > 32 {
                return Err(AllocError::BadState(format!("{} has a prefix over 32", al.address.addr)));
            }
            if a.allocations.insert(at, al).is_some() {
                return Err(AllocError::BadState(format!("{} is allocated twice", Ipv4Addr::from(at))));
            }
        }
        a.sync_free();
        Ok(a)
    }

    pub fn state(&self) -> AllocatorState {
        AllocatorState { ring: self.ring.state().clone(), allocations: self.allocations.values().cloned().collect() }
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
        self.allocations.values().filter(|a| a.owner == owner).map(|a| a.address).collect()
    }

    fn check_subnet(&self, subnet: Cidr) -> Result<(), AllocError> {
        if self.ring.is_empty() {
            return Err(AllocError::NotReady);
        }
        if !self.ring.range().contains_cidr(subnet) {
            return Err(AllocError::OutsideRange { what: subnet.to_string(), range: self.ring.range() });
        }
        Ok(())
    }

    /// The lowest free usable address we own in `subnet`.
    fn lowest_free(&self, subnet: Cidr) -> Option<u32> {
        let usable = subnet.usable();
        for r in self.ring.our_ranges() {
            let Some(r) = r.intersect(usable) else { continue };
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
    pub fn allocate(&mut self, owner: &str, subnet: Cidr) -> Result<Allocate, AllocError> {
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
            self.allocations.insert(at, Allocation { owner: owner.to_string(), address });
            self.sync_free();
            return Ok(Allocate::Address(address));
        }
        let donors = self.ring.donors(subnet.range());
        if donors.is_empty() {
            return Err(AllocError::SubnetExhausted(subnet));
        }
        Ok(Allocate::NeedSpace { subnet, donors })
    }

    /// Whether we own no free usable address in `subnet` (so must ask for a donation).
    pub fn needs_space(&self, subnet: Cidr) -> bool {
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
            return Err(AllocError::OutsideRange { what: addr.to_string(), range: self.ring.range() });
        }
        let subnet = Cidr::of(address);
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
            Some(a) => Err(AllocError::InUse { addr, owner: a.owner.clone() }),
            None => {
                self.allocations.insert(u32::from(addr), Allocation { owner: owner.to_string(), address });
                self.sync_free();
                Ok(())
            }
        }
    }

    /// Releases every address of `owner`; returns them.
    pub fn release(&mut self, owner: &str) -> Vec<Ipv4Cidr> {
        let gone: Vec<u32> = self.allocations.iter().filter(|(_, a)| a.owner == owner).map(|(&k, _)| k).collect();
        let out = gone.iter().filter_map(|k| self.allocations.remove(k)).map(|a| a.address).collect();
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
            _ => Err(AllocError::NotAllocated { addr, owner: owner.to_string() }),
        }
    }

    /// Free runs of addresses we own within `within`, in address order.
    fn free_runs(&self, within: AddrRange) -> Vec<AddrRange> {
        let mut out = Vec::new();
        for r in self.ring.our_ranges() {
            let Some(r) = r.intersect(within) else { continue };
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
    pub fn free_in(&self, subnet: Cidr) -> u64 {
        self.free_runs(subnet.range()).iter().map(|r| r.len()).sum()
    }

    /// Answers a request for space in `subnet` from `to`: gives the top of our largest free
    /// run there, at most half our free space there (at least one address). Returns the
    /// range given, or `None` if we have nothing free there. Send our ring back afterwards.
    pub fn donate(&mut self, to: PeerName, subnet: Cidr) -> Result<Option<AddrRange>, AllocError> {
        self.check_subnet(subnet)?;
        let runs = self.free_runs(subnet.range());
        let total: u64 = runs.iter().map(|r| r.len()).sum();
        let Some(best) = runs.iter().copied().max_by_key(|r| (r.len(), std::cmp::Reverse(r.first))) else {
            return Ok(None);
        };
        let take = best.len().min((total / 2).max(1));
        let range = AddrRange { first: best.last - (take - 1) as u32, last: best.last };
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
            let used = self.allocations.range(seg.range.first..=seg.range.last).count() as u64;
            // Our own token: cannot fail.
            let _ = self.ring.set_free(seg.range.first(), seg.range.len() - used);
        }
    }
}
