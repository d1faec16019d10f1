//! IPv4 addressing in CIDR notation, with one parser and one error: [`Ipv4Cidr`], an address
//! with its prefix length where the host bits may be set (a container's `10.2.1.5/24`, a
//! trusted subnet as the user wrote it), and [`Ipv4Net`], a network (a CIDR block with its
//! host bits clear: an allocation range, a subnet); [`Ipv4Net::of`] gives an address's
//! network. Also inclusive address ranges ([`AddrRange`]).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 address with a prefix length (host bits allowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    /// Whether `addr` lies in this address's subnet.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix_len.min(32))
            == u32::from(self.addr) & mask(self.prefix_len.min(32))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;
    /// Reads `10.2.1.5/24` (host bits allowed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix_len) = split(s).map_err(|e| match e {
            CidrError::Malformed(given) => CidrError::MalformedAddress(given),
            other => other,
        })?;
        Ok(Ipv4Cidr { addr, prefix_len })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An IPv4 network: start address with the host bits clear, and a prefix length 0..=32.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    start: u32,
    prefix_len: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("{0:?} is not an IPv4 CIDR (like 10.32.0.0/12)")]
    Malformed(String),
    #[error("{0:?} is not an IPv4 address with a prefix length (like 10.2.1.5/24)")]
    MalformedAddress(String),
    #[error("{given:?}: the prefix length must be 0..=32")]
    PrefixOutOfRange { given: String },
    #[error("{given:?} has host bits set: the network is {network}")]
    HostBitsSet { given: String, network: Ipv4Net },
}

fn mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len))
    }
}

/// Splits `a.b.c.d/len` into its parts, with the error for each way it can be wrong.
fn split(s: &str) -> Result<(Ipv4Addr, u8), CidrError> {
    let malformed = || CidrError::Malformed(s.to_string());
    let (a, p) = s.trim().split_once('/').ok_or_else(malformed)?;
    let addr: Ipv4Addr = a.parse().map_err(|_| malformed())?;
    if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let len: u32 = p.parse().map_err(|_| malformed())?;
    if len > 32 {
        return Err(CidrError::PrefixOutOfRange {
            given: s.to_string(),
        });
    }
    Ok((addr, len as u8))
}

/// Reads an address with a prefix length (`10.2.1.5/24`, host bits allowed).
pub fn parse_address(s: &str) -> Result<Ipv4Cidr, CidrError> {
    s.parse()
}

impl Ipv4Net {
    /// The network `addr/prefix_len`; refused if the prefix is over 32 or host bits are set.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, CidrError> {
        let given = format!("{addr}/{prefix_len}");
        if prefix_len > 32 {
            return Err(CidrError::PrefixOutOfRange { given });
        }
        let network = Self::containing(addr, prefix_len);
        if network.start != u32::from(addr) {
            return Err(CidrError::HostBitsSet { given, network });
        }
        Ok(network)
    }

    /// The network of `prefix_len` bits that contains `addr` (prefix clamped to 32).
    pub fn containing(addr: Ipv4Addr, prefix_len: u8) -> Self {
        let prefix_len = prefix_len.min(32);
        Self {
            start: u32::from(addr) & mask(prefix_len),
            prefix_len,
        }
    }

    /// The network of an address with prefix (`10.2.1.5/24` → `10.2.1.0/24`).
    pub fn of(addr: Ipv4Cidr) -> Self {
        Self::containing(addr.addr, addr.prefix_len)
    }

    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(self.start)
    }

    pub fn prefix_len(self) -> u8 {
        self.prefix_len
    }

    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(self.range().last)
    }

    /// Number of addresses (2^(32-prefix)).
    pub fn size(self) -> u64 {
        1u64 << (32 - u32::from(self.prefix_len))
    }

    /// Every address of the network.
    pub fn range(self) -> AddrRange {
        AddrRange {
            first: self.start,
            last: self.start | !mask(self.prefix_len),
        }
    }

    /// The addresses that may be given to hosts: all but the network and broadcast
    /// addresses, except in /31 and /32 where every address is usable.
    pub fn usable(self) -> AddrRange {
        let r = self.range();
        if self.prefix_len >= 31 {
            r
        } else {
            AddrRange {
                first: r.first + 1,
                last: r.last - 1,
            }
        }
    }

    pub fn contains(self, addr: Ipv4Addr) -> bool {
        self.range().contains(u32::from(addr))
    }

    /// Whether `other` lies wholly inside this network.
    pub fn contains_cidr(self, other: Ipv4Net) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.network())
    }

    pub fn overlaps(self, other: Ipv4Net) -> bool {
        self.contains_cidr(other) || other.contains_cidr(self)
    }

    /// The networks of `prefix_len` bits inside this one, in order (none if `prefix_len` is
    /// shorter than ours or over 32).
    pub fn subnets(self, prefix_len: u8) -> impl Iterator<Item = Ipv4Net> {
        let ok = prefix_len >= self.prefix_len && prefix_len <= 32;
        let count: u64 = if ok {
            1u64 << (prefix_len - self.prefix_len)
        } else {
            0
        };
        let step: u64 = if ok {
            1u64 << (32 - u32::from(prefix_len))
        } else {
            0
        };
        let start = u64::from(self.start);
        (0..count).map(move |i| Ipv4Net {
            start: (start + i * step) as u32,
            prefix_len,
        })
    }

    /// `addr` with this network's prefix length, as a container is given it.
    pub fn with_host(self, addr: Ipv4Addr) -> Ipv4Cidr {
        Ipv4Cidr {
            addr,
            prefix_len: self.prefix_len,
        }
    }
}

impl FromStr for Ipv4Net {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix_len) = split(s)?;
        Self::new(addr, prefix_len).map_err(|e| match e {
            CidrError::HostBitsSet { network, .. } => CidrError::HostBitsSet {
                given: s.to_string(),
                network,
            },
            other => other,
        })
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix_len)
    }
}

impl fmt::Debug for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Text in human-readable formats (`"10.32.0.0/12"`), `(u32, u8)` in compact ones; both
/// validated when read.
impl Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            (self.start, self.prefix_len).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            let (start, prefix_len) = <(u32, u8)>::deserialize(d)?;
            Self::new(Ipv4Addr::from(start), prefix_len).map_err(serde::de::Error::custom)
        }
    }
}

/// An inclusive range of addresses `first..=last` (never empty), as numbers.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange {
    pub(crate) first: u32,
    pub(crate) last: u32,
}

impl AddrRange {
    /// `None` if `last < first`.
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Option<Self> {
        Self::from_u32(u32::from(first), u32::from(last))
    }

    pub(crate) fn from_u32(first: u32, last: u32) -> Option<Self> {
        (first <= last).then_some(Self { first, last })
    }

    pub fn first(self) -> Ipv4Addr {
        Ipv4Addr::from(self.first)
    }

    pub fn last(self) -> Ipv4Addr {
        Ipv4Addr::from(self.last)
    }

    /// Number of addresses (1..=2^32).
    pub fn len(self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    /// Always false: a range holds at least one address.
    pub fn is_empty(self) -> bool {
        false
    }

    pub(crate) fn contains(self, a: u32) -> bool {
        self.first <= a && a <= self.last
    }

    pub fn contains_addr(self, a: Ipv4Addr) -> bool {
        self.contains(u32::from(a))
    }

    pub fn intersect(self, other: AddrRange) -> Option<AddrRange> {
        Self::from_u32(self.first.max(other.first), self.last.min(other.last))
    }

    pub fn overlaps(self, other: AddrRange) -> bool {
        self.intersect(other).is_some()
    }

    /// Every address in order.
    pub fn addresses(self) -> impl Iterator<Item = Ipv4Addr> {
        (self.first..=self.last).map(Ipv4Addr::from)
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first(), self.last())
    }
}

impl fmt::Debug for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_print() {
        let n = c("10.32.0.0/12");
        assert_eq!(n.to_string(), "10.32.0.0/12");
        assert_eq!(n.size(), 1 << 20);
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 47, 255, 255));
        assert_eq!(c("0.0.0.0/0").size(), 1 << 32);
        assert_eq!(c("0.0.0.0/0").range().len(), 1 << 32);
        assert_eq!(c("10.1.2.3/32").size(), 1);
    }

    #[test]
    fn bad_networks_get_one_line_errors() {
        assert_eq!(
            "10.2.1.5/24".parse::<Ipv4Net>(),
            Err(CidrError::HostBitsSet {
                given: "10.2.1.5/24".into(),
                network: c("10.2.1.0/24")
            })
        );
        assert_eq!(
            "10.2.1.0/33".parse::<Ipv4Net>(),
            Err(CidrError::PrefixOutOfRange {
                given: "10.2.1.0/33".into()
            })
        );
        for bad in [
            "",
            "10.2.1.0",
            "10.2.1/24",
            "10.2.1.0/",
            "10.2.1.0/+4",
            "10.2.1.0/-1",
            "x/8",
            "10.2.1.0/24/1",
            "10.2.1.0/0024",
        ] {
            let e = bad.parse::<Ipv4Net>().unwrap_err();
            assert!(matches!(e, CidrError::Malformed(_)), "{bad}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
        assert_eq!(
            "10.2.1.5/24".parse::<Ipv4Net>().unwrap_err().to_string(),
            "\"10.2.1.5/24\" has host bits set: the network is 10.2.1.0/24"
        );
        assert!(matches!(
            Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 40),
            Err(CidrError::PrefixOutOfRange { .. })
        ));
    }

    #[test]
    fn an_address_with_prefix_keeps_its_host_bits_and_shares_the_parser() {
        let a = parse_address("10.2.1.5/24").unwrap();
        assert_eq!(
            a,
            Ipv4Cidr {
                addr: Ipv4Addr::new(10, 2, 1, 5),
                prefix_len: 24
            }
        );
        assert_eq!(Ipv4Net::of(a), c("10.2.1.0/24"));
        assert!(matches!(
            parse_address("10.2.1.5/99"),
            Err(CidrError::PrefixOutOfRange { .. })
        ));
        assert_eq!(
            parse_address("10.2.1.5").unwrap_err().to_string(),
            "\"10.2.1.5\" is not an IPv4 address with a prefix length (like 10.2.1.5/24)"
        );
        assert!(parse_address("10.2.1.5/+4").is_err());
        // Its subnet, whatever the host bits.
        assert!(a.contains(Ipv4Addr::new(10, 2, 1, 200)));
        assert!(!a.contains(Ipv4Addr::new(10, 2, 2, 1)));
        // A prefix over 32 (built without the parser) matches only itself, never everything.
        let odd = Ipv4Cidr {
            addr: Ipv4Addr::new(10, 2, 1, 5),
            prefix_len: 40,
        };
        assert!(odd.contains(Ipv4Addr::new(10, 2, 1, 5)));
        assert!(!odd.contains(Ipv4Addr::new(10, 2, 1, 6)));
        assert_eq!(a.to_string(), "10.2.1.5/24");
    }

    #[test]
    fn containment_and_overlap() {
        let big = c("10.2.0.0/16");
        assert!(big.contains_cidr(c("10.2.1.0/24")));
        assert!(!c("10.2.1.0/24").contains_cidr(big));
        assert!(big.overlaps(c("10.2.1.0/24")) && c("10.2.1.0/24").overlaps(big));
        assert!(!c("10.2.1.0/24").overlaps(c("10.2.2.0/24")));
        assert!(big.contains(Ipv4Addr::new(10, 2, 255, 255)));
        assert!(!big.contains(Ipv4Addr::new(10, 3, 0, 0)));
        assert!(c("0.0.0.0/0").contains_cidr(big));
        let subs: Vec<Ipv4Net> = c("10.2.0.0/22").subnets(24).collect();
        assert_eq!(
            subs,
            vec![
                c("10.2.0.0/24"),
                c("10.2.1.0/24"),
                c("10.2.2.0/24"),
                c("10.2.3.0/24")
            ]
        );
        assert_eq!(c("10.2.0.0/24").subnets(16).count(), 0);
        assert_eq!(c("0.0.0.0/0").subnets(1).last(), Some(c("128.0.0.0/1")));
    }

    #[test]
    fn usable_skips_network_and_broadcast() {
        let u = c("10.2.1.0/24").usable();
        assert_eq!(
            (u.first(), u.last(), u.len()),
            (
                Ipv4Addr::new(10, 2, 1, 1),
                Ipv4Addr::new(10, 2, 1, 254),
                254
            )
        );
        assert_eq!(c("10.2.1.0/31").usable().len(), 2);
        assert_eq!(c("10.2.1.0/32").usable().len(), 1);
        assert_eq!(
            c("10.2.1.0/30").usable().addresses().collect::<Vec<_>>(),
            vec![Ipv4Addr::new(10, 2, 1, 1), Ipv4Addr::new(10, 2, 1, 2)]
        );
    }

    #[test]
    fn ranges_intersect() {
        let a = AddrRange::new(Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(10, 0, 0, 9)).unwrap();
        let b = AddrRange::new(Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::new(10, 0, 0, 20)).unwrap();
        assert_eq!(a.intersect(b).unwrap().to_string(), "10.0.0.5-10.0.0.9");
        assert!(AddrRange::new(Ipv4Addr::new(10, 0, 0, 9), Ipv4Addr::new(10, 0, 0, 1)).is_none());
        assert!(!a.overlaps(
            AddrRange::new(Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 10)).unwrap()
        ));
    }

    #[test]
    fn serde_text_and_compact() {
        let n = c("10.32.0.0/12");
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"10.32.0.0/12\"");
        assert_eq!(
            serde_json::from_str::<Ipv4Net>("\"10.32.0.0/12\"").unwrap(),
            n
        );
        assert!(serde_json::from_str::<Ipv4Net>("\"10.32.0.1/12\"").is_err());
        let wire = postcard::to_stdvec(&n).unwrap();
        assert_eq!(postcard::from_bytes::<Ipv4Net>(&wire).unwrap(), n);
        assert!(
            postcard::from_bytes::<Ipv4Net>(&postcard::to_stdvec(&(1u32, 12u8)).unwrap()).is_err()
        );
    }
}
