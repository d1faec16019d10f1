//! Peer identity: the 48-bit MAC-style peer name and the 12-bit short ID.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use weave_ebpf_common::vni::{MAX_SHORT_IDS, SHORT_ID_MASK};

/// A peer's name: 48 bits written like a MAC address (`0a:1b:2c:3d:4e:5f`), as Weave names peers.
/// Human-readable formats (the JSON report) carry that text; compact ones (the wire
/// protocol) the number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerName(u64);

impl Serialize for PeerName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for PeerName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            let v = u64::deserialize(d)?;
            if v >> 48 != 0 {
                return Err(serde::de::Error::custom(format!(
                    "peer name {v:#x} has more than 48 bits"
                )));
            }
            Ok(Self(v))
        }
    }
}

/// What Weave puts before the machine's identifiers when it derives a peer name from them.
const WEAVE_NAME_SALT: &[u8] = b"9oBJ0Jmip-";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerNameError {
    #[error("peer name {0:?} is not six colon-separated hex bytes (like 0a:00:00:00:00:01)")]
    Malformed(String),
    #[error("peer name {0:?} is all zeros")]
    Zero(String),
}

impl PeerName {
    /// A random name with the locally-administered bit set and the group bit clear.
    pub fn random() -> Self {
        let mut bytes: [u8; 6] = rand::random();
        bytes[0] = (bytes[0] | 0x02) & !0x01;
        Self::from_bytes(bytes)
    }

    /// The name Weave derives for a machine from its identifiers (the bytes of
    /// `/etc/machine-id` followed by those of the product UUID, as read): SHA-256 of
    /// Weave's salt and them, the first six bytes, locally administered and unicast. The
    /// same machine gets the same name however often its state is wiped, and the name
    /// Weave gave it. `None` when there are no identifiers.
    pub fn from_machine_ids(ids: &[u8]) -> Option<Self> {
        use sha2::Digest;
        if ids.is_empty() {
            return None;
        }
        let mut hash = sha2::Sha256::new();
        hash.update(WEAVE_NAME_SALT);
        hash.update(ids);
        let sum = hash.finalize();
        let mut bytes = [0u8; 6];
        bytes.copy_from_slice(&sum[..6]);
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        Some(Self::from_bytes(bytes))
    }

    pub fn from_bytes(b: [u8; 6]) -> Self {
        let mut v = [0u8; 8];
        v[2..].copy_from_slice(&b);
        Self(u64::from_be_bytes(v))
    }

    pub fn bytes(self) -> [u8; 6] {
        let v = self.0.to_be_bytes();
        [v[2], v[3], v[4], v[5], v[6], v[7]]
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl FromStr for PeerName {
    type Err = PeerNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(PeerNameError::Malformed(s.to_string()));
        }
        let mut b = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(PeerNameError::Malformed(s.to_string()));
            }
            b[i] =
                u8::from_str_radix(p, 16).map_err(|_| PeerNameError::Malformed(s.to_string()))?;
        }
        if b == [0; 6] {
            return Err(PeerNameError::Zero(s.to_string()));
        }
        Ok(Self::from_bytes(b))
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bytes();
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A peer's 12-bit short ID: its half of the VXLAN VNI and its index in the `PEERS` map.
/// Deserialisation does not range-check: what comes from the wire is checked where it is
/// received ([`ShortId::in_range`]), with an error that names the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShortId(u16);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("short ID {0} does not fit in 12 bits (0..={max})", max = MAX_SHORT_IDS - 1)]
pub struct ShortIdError(pub u32);

impl ShortId {
    pub fn new(v: u16) -> Result<Self, ShortIdError> {
        if (v as u32) < MAX_SHORT_IDS {
            Ok(Self(v))
        } else {
            Err(ShortIdError(v as u32))
        }
    }

    pub fn random() -> Self {
        Self(rand::random::<u16>() & SHORT_ID_MASK)
    }

    /// Whether it fits in 12 bits (one read from the wire may not).
    pub fn in_range(self) -> bool {
        u32::from(self.0) < MAX_SHORT_IDS
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text() {
        let n: PeerName = "0a:1b:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(n.to_string(), "0a:1b:2c:3d:4e:5f");
        assert_eq!(n.bytes(), [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]);
    }

    #[test]
    fn a_machine_gets_weaves_name_from_its_identifiers() {
        // SHA-256("9oBJ0Jmip-" ‖ ids), first six bytes, local and unicast.
        let ids = b"3d1219c7c4c5404aaa1f6d2a48adfda4\n";
        let name = PeerName::from_machine_ids(ids).unwrap();
        assert_eq!(name.to_string(), "0e:1d:12:1a:1a:88");
        assert_eq!(name.bytes()[0] & 0x03, 0x02, "local, unicast");
        assert_eq!(PeerName::from_machine_ids(ids), Some(name), "stable");
        assert_ne!(PeerName::from_machine_ids(b"other\n"), Some(name));
        assert_eq!(PeerName::from_machine_ids(b""), None);
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in [
            "",
            "0a:1b:2c:3d:4e",
            "0a:1b:2c:3d:4e:5f:00",
            "0g:1b:2c:3d:4e:5f",
            "a:1b:2c:3d:4e:5f",
            "00:00:00:00:00:00",
        ] {
            assert!(bad.parse::<PeerName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn random_names_are_local_unicast() {
        for _ in 0..100 {
            let b = PeerName::random().bytes();
            assert_eq!(b[0] & 0x03, 0x02);
        }
    }

    #[test]
    fn json_carries_the_text_and_the_wire_the_number() {
        let n: PeerName = "0a:1b:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"0a:1b:2c:3d:4e:5f\"");
        assert_eq!(
            serde_json::from_str::<PeerName>("\"0a:1b:2c:3d:4e:5f\"").unwrap(),
            n
        );
        let wire = postcard::to_stdvec(&n).unwrap();
        assert_eq!(postcard::from_bytes::<PeerName>(&wire).unwrap(), n);
        assert!(
            postcard::from_bytes::<PeerName>(&postcard::to_stdvec(&u64::MAX).unwrap()).is_err()
        );
    }

    #[test]
    fn short_ids_must_fit_twelve_bits() {
        assert!(ShortId::new(4095).is_ok());
        assert_eq!(ShortId::new(4096), Err(ShortIdError(4096)));
        assert!(ShortId::random().get() < 4096);
    }
}
