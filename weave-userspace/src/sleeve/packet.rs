//! The sleeve's datagrams on UDP 6783, as pure functions over bytes.
//!
//! ```text
//! 0      1      2           4                  8                         16
//! | 'W'  | kind | sender ID | part, reserved   | counter (big endian)    | payload [| tag]
//! ```
//!
//! The payload is a virtio-net header (the TAP's offload metadata, so a 64 KiB GSO frame
//! travels whole) and the Ethernet frame. A frame too large for one datagram goes in two
//! parts with consecutive counters. With a password the payload is sealed with the data
//! key of the peers' control connection ([`crate::crypto::NonceDomain::Data`]), the 16-byte
//! header is the associated data and the counter the nonce; each counter opens once
//! (replay window). Without a password the counter is only a sequence number.

use crate::crypto::{CryptoError, DatagramOpener, Sealer, TAG_LEN};

pub const MAGIC: u8 = b'W';
pub const KIND_PLAIN: u8 = 1;
pub const KIND_SEALED: u8 = 2;
pub const HEADER_LEN: usize = 16;
/// Largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
/// Largest payload one datagram carries (room left for the tag either way).
pub const MAX_PART: usize = MAX_DATAGRAM - HEADER_LEN - TAG_LEN;
/// A frame is never larger than two parts.
pub const MAX_PAYLOAD: usize = 2 * MAX_PART;

/// Which part of a payload a datagram holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Whole = 0,
    First = 1,
    Second = 2,
}

/// Why a datagram was dropped (each counted in /metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    #[error("malformed")]
    Malformed,
    #[error("from an unknown peer")]
    UnknownPeer,
    #[error("unencrypted while a password is set")]
    Plaintext,
    #[error("does not authenticate")]
    Forged,
    #[error("replayed or too old")]
    Replayed,
    #[error("part without its other half")]
    Unpaired,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::Malformed,
        DropReason::UnknownPeer,
        DropReason::Plaintext,
        DropReason::Forged,
        DropReason::Replayed,
        DropReason::Unpaired,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::Plaintext => "plaintext",
            DropReason::Forged => "forged",
            DropReason::Replayed => "replayed",
            DropReason::Unpaired => "unpaired",
        }
    }
}

/// A parsed datagram header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub sealed: bool,
    pub sender: u16,
    pub part: Part,
    pub counter: u64,
}

impl Header {
    pub fn write(&self, out: &mut [u8]) {
        out[0] = MAGIC;
        out[1] = if self.sealed { KIND_SEALED } else { KIND_PLAIN };
        out[2..4].copy_from_slice(&self.sender.to_be_bytes());
        out[4] = self.part as u8;
        out[5..8].fill(0);
        out[8..16].copy_from_slice(&self.counter.to_be_bytes());
    }

    pub fn parse(d: &[u8]) -> Result<Header, DropReason> {
        if d.len() < HEADER_LEN || d[0] != MAGIC || d[5..8] != [0, 0, 0] {
            return Err(DropReason::Malformed);
        }
        let sealed = match d[1] {
            KIND_PLAIN => false,
            KIND_SEALED => true,
            _ => return Err(DropReason::Malformed),
        };
        let part = match d[4] {
            0 => Part::Whole,
            1 => Part::First,
            2 => Part::Second,
            _ => return Err(DropReason::Malformed),
        };
        Ok(Header {
            sealed,
            sender: u16::from_be_bytes([d[2], d[3]]),
            part,
            counter: u64::from_be_bytes(d[8..16].try_into().expect("eight bytes")),
        })
    }
}

/// Turns payloads into datagrams for one peer.
pub struct Encoder {
    local: u16,
    sealer: Option<Sealer>,
    /// Sequence number of plain datagrams.
    next_plain: u64,
}

impl Encoder {
    pub fn new(local: u16, sealer: Option<Sealer>) -> Self {
        Self {
            local,
            sealer,
            next_plain: 0,
        }
    }

    /// Encodes `payload` into one or two datagrams, handed to `emit` in order.
    pub fn encode(
        &mut self,
        payload: &[u8],
        buf: &mut Vec<u8>,
        mut emit: impl FnMut(&[u8]),
    ) -> Result<(), CryptoError> {
        if payload.len() <= MAX_PART {
            self.one(Part::Whole, payload, buf)?;
            emit(buf);
        } else {
            let half = payload.len().div_ceil(2);
            self.one(Part::First, &payload[..half], buf)?;
            emit(buf);
            self.one(Part::Second, &payload[half..], buf)?;
            emit(buf);
        }
        Ok(())
    }

    /// Encodes a payload that already sits in `buf` after [`HEADER_LEN`] bytes of room, as
    /// one datagram in place (no copy); `false` when it needs two parts ([`Self::encode`]).
    pub fn encode_in_place(&mut self, buf: &mut Vec<u8>) -> Result<bool, CryptoError> {
        if buf.len() < HEADER_LEN || buf.len() - HEADER_LEN > MAX_PART {
            return Ok(false);
        }
        self.seal_prepared(Part::Whole, buf)?;
        Ok(true)
    }

    fn one(&mut self, part: Part, payload: &[u8], buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        buf.clear();
        buf.resize(HEADER_LEN, 0);
        buf.extend_from_slice(payload);
        self.seal_prepared(part, buf)
    }

    /// Writes the header over the first [`HEADER_LEN`] bytes and seals the rest.
    fn seal_prepared(&mut self, part: Part, buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        match &mut self.sealer {
            None => {
                let counter = self.next_plain;
                self.next_plain += 1;
                Header {
                    sealed: false,
                    sender: self.local,
                    part,
                    counter,
                }
                .write(&mut buf[..HEADER_LEN]);
            }
            Some(sealer) => {
                let header = Header {
                    sealed: true,
                    sender: self.local,
                    part,
                    counter: sealer.next_counter(),
                };
                header.write(&mut buf[..HEADER_LEN]);
                let (head, body) = buf.split_at_mut(HEADER_LEN);
                let (counter, tag) = sealer.seal_detached(head, body)?;
                debug_assert_eq!(counter, header.counter);
                buf.extend_from_slice(&tag);
            }
        }
        Ok(())
    }
}

/// Turns one peer's datagrams back into payloads.
pub struct Decoder {
    opener: Option<DatagramOpener>,
    /// The first part of a payload and its counter, waiting for the second.
    pending: Option<(u64, Vec<u8>)>,
}

impl Decoder {
    pub fn new(opener: Option<DatagramOpener>) -> Self {
        Self {
            opener,
            pending: None,
        }
    }

    /// Verifies and opens a datagram whose header is `header`; returns the payload when it
    /// is complete (`Ok(None)` after a first part).
    pub fn decode<'a>(
        &mut self,
        header: Header,
        datagram: &'a mut [u8],
    ) -> Result<Option<Payload<'a>>, DropReason> {
        let body = &mut datagram[HEADER_LEN..];
        let len = match (&mut self.opener, header.sealed) {
            (Some(_), false) => return Err(DropReason::Plaintext),
            (None, true) => return Err(DropReason::Malformed),
            (None, false) => body.len(),
            (Some(opener), true) => {
                let mut head = [0u8; HEADER_LEN];
                header.write(&mut head);
                opener
                    .open_in_place(header.counter, &head, body)
                    .map_err(|e| match e {
                        CryptoError::Replay(_) | CryptoError::Exhausted => DropReason::Replayed,
                        _ => DropReason::Forged,
                    })?
            }
        };
        let body = &body[..len];
        match header.part {
            Part::Whole => {
                self.pending = None;
                Ok(Some(Payload::Borrowed(body)))
            }
            Part::First => {
                self.pending = Some((header.counter, body.to_vec()));
                Ok(None)
            }
            Part::Second => match self.pending.take() {
                Some((c, mut first)) if c.wrapping_add(1) == header.counter => {
                    first.extend_from_slice(body);
                    Ok(Some(Payload::Owned(first)))
                }
                _ => Err(DropReason::Unpaired),
            },
        }
    }
}

/// A decoded payload: in the datagram's buffer, or joined from two parts.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Payload<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Borrowed(b) => b,
            Payload::Owned(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::NonceDomain;

    fn sealed_pair() -> (Encoder, Decoder) {
        let key = [5u8; 32];
        (
            Encoder::new(7, Some(Sealer::new(&key, NonceDomain::Data))),
            Decoder::new(Some(DatagramOpener::new(&key, NonceDomain::Data))),
        )
    }

    fn datagrams(enc: &mut Encoder, payload: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        enc.encode(payload, &mut buf, |d| out.push(d.to_vec()))
            .unwrap();
        out
    }

    fn decode(dec: &mut Decoder, d: &[u8]) -> Result<Option<Vec<u8>>, DropReason> {
        let mut d = d.to_vec();
        let h = Header::parse(&d)?;
        dec.decode(h, &mut d).map(|p| p.map(|p| p.to_vec()))
    }

    #[test]
    fn a_sealed_frame_round_trips_and_hides_its_content() {
        let (mut enc, mut dec) = sealed_pair();
        let frame = b"MARKER-MARKER-MARKER plaintext frame".to_vec();
        let ds = datagrams(&mut enc, &frame);
        assert_eq!(ds.len(), 1);
        assert_eq!(ds[0].len(), HEADER_LEN + frame.len() + TAG_LEN);
        assert!(!ds[0].windows(6).any(|w| w == b"MARKER"));
        let h = Header::parse(&ds[0]).unwrap();
        assert_eq!(
            (h.sealed, h.sender, h.part, h.counter),
            (true, 7, Part::Whole, 0)
        );
        assert_eq!(decode(&mut dec, &ds[0]), Ok(Some(frame)));
    }

    #[test]
    fn replayed_and_tampered_datagrams_are_dropped() {
        let (mut enc, mut dec) = sealed_pair();
        let a = datagrams(&mut enc, b"first").remove(0);
        let b = datagrams(&mut enc, b"second").remove(0);
        // Out of order is fine, each once.
        assert_eq!(decode(&mut dec, &b), Ok(Some(b"second".to_vec())));
        assert_eq!(decode(&mut dec, &a), Ok(Some(b"first".to_vec())));
        assert_eq!(decode(&mut dec, &a), Err(DropReason::Replayed));
        let c = datagrams(&mut enc, b"third").remove(0);
        for i in 0..c.len() {
            let mut bad = c.clone();
            bad[i] ^= 0x10;
            let r = decode(&mut dec, &bad);
            assert!(
                matches!(
                    r,
                    Err(DropReason::Forged | DropReason::Malformed | DropReason::Replayed)
                ),
                "byte {i}: {r:?}"
            );
        }
        assert_eq!(decode(&mut dec, &c), Ok(Some(b"third".to_vec())));
    }

    #[test]
    fn plain_datagrams_are_refused_when_encrypted_and_garbage_is_malformed() {
        let (_, mut dec) = sealed_pair();
        let mut plain = Encoder::new(7, None);
        let d = datagrams(&mut plain, b"in clear").remove(0);
        assert_eq!(decode(&mut dec, &d), Err(DropReason::Plaintext));
        for garbage in [&b""[..], b"W", b"GET / HTTP/1.1\r\n\r\n", &[b'W'; 40]] {
            assert!(decode(&mut dec, garbage).is_err());
        }
        let mut plain_dec = Decoder::new(None);
        assert_eq!(decode(&mut plain_dec, &d), Ok(Some(b"in clear".to_vec())));
    }

    #[test]
    fn in_place_encoding_gives_the_same_datagram_format() {
        let (mut enc, mut dec) = sealed_pair();
        let mut buf = vec![0u8; HEADER_LEN];
        buf.extend_from_slice(b"frame in place");
        assert!(enc.encode_in_place(&mut buf).unwrap());
        assert_eq!(decode(&mut dec, &buf), Ok(Some(b"frame in place".to_vec())));
        let mut big = vec![0u8; HEADER_LEN + MAX_PART + 1];
        assert!(!enc.encode_in_place(&mut big).unwrap());
    }

    #[test]
    fn a_large_frame_travels_in_two_parts() {
        for (mut enc, mut dec) in [sealed_pair(), (Encoder::new(1, None), Decoder::new(None))] {
            let frame: Vec<u8> = (0..MAX_PART + 5000).map(|i| i as u8).collect();
            let ds = datagrams(&mut enc, &frame);
            assert_eq!(ds.len(), 2);
            assert!(ds.iter().all(|d| d.len() <= MAX_DATAGRAM));
            assert_eq!(decode(&mut dec, &ds[0]), Ok(None));
            assert_eq!(decode(&mut dec, &ds[1]), Ok(Some(frame.clone())));
            // A second part alone is dropped.
            let ds = datagrams(&mut enc, &frame);
            assert_eq!(decode(&mut dec, &ds[1]), Err(DropReason::Unpaired));
        }
    }
}
