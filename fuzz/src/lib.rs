//! Helpers shared by the fuzz targets: small name spaces (so records of one peer meet
//! again), and values built from the fuzzer's bytes.

use std::net::Ipv4Addr;

use weave_router::mesh::peer_name::{PeerName, ShortId};

/// Peer `n` of a small set (1-based names: `00:00:00:00:00:0n`).
pub fn peer(n: u8) -> PeerName {
    PeerName::from_bytes([0, 0, 0, 0, 0, n])
}

/// A short ID from any 16 bits: mostly in range, some beyond 12 bits (refused on receipt).
pub fn short_id(v: u16) -> ShortId {
    ShortId::new(v & 0x0fff).expect("twelve bits")
}

/// An address in 10.0.0.0/24.
pub fn addr(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

/// A short ID as it comes off the wire: any 16 bits (deserialisation does not range-check).
pub fn wire_short_id(v: u16) -> ShortId {
    let bytes = postcard::to_stdvec(&v).expect("a u16 serialises");
    postcard::from_bytes(&bytes).expect("a u16 deserialises")
}

/// A version or counter from a peer: mostly small, some at the edges of what is accepted
/// ([`weave_router::mesh::VERSION_LIMIT`]) and of `u64`, some anything.
#[derive(Clone, Copy, Debug, arbitrary::Arbitrary)]
pub enum WireVersion {
    Small(u8),
    NearLimit(i8),
    NearMax(u8),
    Any(u64),
}

impl WireVersion {
    pub fn get(self) -> u64 {
        match self {
            WireVersion::Small(v) => u64::from(v),
            WireVersion::NearLimit(d) => {
                weave_router::mesh::VERSION_LIMIT.wrapping_add_signed(i64::from(d))
            }
            WireVersion::NearMax(d) => u64::MAX - u64::from(d),
            WireVersion::Any(v) => v,
        }
    }
}
