//! What a peer's IP allocation is, as two routers compare it before they connect: the
//! allocation range and, once known, the peers that split it first (the seeds of
//! `--ipalloc-init seed=`, or the peers a consensus settled on).
//!
//! Two peers whose allocations disagree would each hand out the same addresses: Weave
//! refuses their connection ("IP allocation was seeded by different peers"), and so does
//! the router, from the hello on (protocol version 6), before either puts the other in its
//! data path. A peer that does not know its seeds yet (a consensus not decided, an
//! observer) agrees with any seeds: it takes the ring it is given.

use serde::{Deserialize, Serialize};

use super::ring::PeerList;
use crate::mesh::peer_name::PeerName;
use crate::net::Ipv4Net;

/// One peer's IP allocation as sent in the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamIdentity {
    /// `--ipalloc-range`.
    pub range: Ipv4Net,
    /// The peers that split the range first (sorted); empty while not known.
    pub seeds: Vec<PeerName>,
}

/// Why two peers' IP allocations cannot share a network.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamMismatch {
    #[error("IP allocation ranges differ (ours: {ours}, theirs: {theirs})")]
    Range { ours: Ipv4Net, theirs: Ipv4Net },
    #[error("IP allocation was seeded by different peers (ours: {ours}, theirs: {theirs})")]
    Seeds { ours: PeerList, theirs: PeerList },
}

impl IpamIdentity {
    /// Whether `theirs` may join our network: the same range, and the same seeds when both
    /// know theirs.
    pub fn check(&self, theirs: &IpamIdentity) -> Result<(), IpamMismatch> {
        if self.range != theirs.range {
            return Err(IpamMismatch::Range {
                ours: self.range,
                theirs: theirs.range,
            });
        }
        if !self.seeds.is_empty() && !theirs.seeds.is_empty() && self.seeds != theirs.seeds {
            return Err(IpamMismatch::Seeds {
                ours: PeerList(self.seeds.clone()),
                theirs: PeerList(theirs.seeds.clone()),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerName {
        PeerName::from_bytes([0x0a, 0, 0, 0, 0, n])
    }

    fn id(range: &str, seeds: &[u8]) -> IpamIdentity {
        IpamIdentity {
            range: range.parse().unwrap(),
            seeds: seeds.iter().map(|&n| peer(n)).collect(),
        }
    }

    #[test]
    fn the_same_range_and_seeds_agree() {
        assert_eq!(
            id("10.2.0.0/16", &[1, 2]).check(&id("10.2.0.0/16", &[1, 2])),
            Ok(())
        );
    }

    #[test]
    fn unknown_seeds_agree_with_any() {
        // A consensus not decided yet, or an observer: it adopts the ring it is given.
        assert_eq!(
            id("10.2.0.0/16", &[]).check(&id("10.2.0.0/16", &[1])),
            Ok(())
        );
        assert_eq!(
            id("10.2.0.0/16", &[2]).check(&id("10.2.0.0/16", &[])),
            Ok(())
        );
        assert_eq!(
            id("10.2.0.0/16", &[]).check(&id("10.2.0.0/16", &[])),
            Ok(())
        );
    }

    #[test]
    fn different_seeds_are_refused_both_ways_with_weaves_words() {
        let (a, b) = (id("10.2.0.0/16", &[1]), id("10.2.0.0/16", &[2]));
        let e = a.check(&b).unwrap_err();
        assert_eq!(
            e.to_string(),
            "IP allocation was seeded by different peers (ours: 0a:00:00:00:00:01, theirs: 0a:00:00:00:00:02)"
        );
        assert!(b.check(&a).is_err());
        // A consensus of two against a seed of one of them.
        assert!(id("10.2.0.0/16", &[1, 2])
            .check(&id("10.2.0.0/16", &[1]))
            .is_err());
    }

    #[test]
    fn different_ranges_are_refused_even_without_seeds() {
        let e = id("10.2.0.0/16", &[])
            .check(&id("10.2.0.0/24", &[]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "IP allocation ranges differ (ours: 10.2.0.0/16, theirs: 10.2.0.0/24)"
        );
    }

    #[test]
    fn it_crosses_the_wire() {
        let a = id("10.32.0.0/12", &[3, 1]);
        let bytes = postcard::to_stdvec(&a).unwrap();
        assert_eq!(postcard::from_bytes::<IpamIdentity>(&bytes).unwrap(), a);
    }
}
