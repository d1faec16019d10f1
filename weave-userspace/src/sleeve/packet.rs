//! The sleeve's datagrams on UDP 6783, as pure functions over bytes.
//!
//! ```text
//! 0      1      2           4        5        6         8                         16
//! | 'W'  | kind | sender ID | index  | count  | reserved | counter (big endian)    | payload [| tag]
//! ```
//!
//! The payload is a virtio-net header (the TAP's offload metadata, so a 64 KiB GSO frame
//! travels whole) and the Ethernet frame. With a password the whole payload is sealed once
//! with the data key of the peers' control connection ([`crate::crypto::NonceDomain::Data`]):
//! the frame's counter is the nonce, the header with index 0 the associated data, and each
//! counter opens once (replay window). The sealed payload (or the plain one, whose counter is
//! only a sequence number) is then cut into `count` segments that each fit one underlay
//! packet (no IP fragmentation); every segment carries the header with its index. All
//! segments but the last have the same size, so the I/O shell sends them in one UDP GSO call
//! and receives them coalesced by UDP GRO. One seal per frame rather than per segment: the
//! AEAD's set-up per message costs more than a 1.4 KB segment's encryption.
//!
//! A *routed* datagram (kinds 3 and 4, to peers speaking protocol version 5) carries a frame
//! that is not only between the two neighbours: its payload starts with a [`RouteHeader`]
//! (origin, destination, hops left), inside the seal, so relays and the destination know
//! whose frame it is and where it goes while the wire shows only the neighbours. The
//! header's sender is always the neighbour that sent the datagram, whose keys open it.
//!
//! A *bundle* (kinds 5 and 6, to peers speaking protocol version 7) carries several small
//! frames of the sender's in one datagram under one seal and counter ([`super::bundle`]).

use crate::crypto::{CryptoError, DatagramOpener, Sealer, TAG_LEN};

pub const MAGIC: u8 = b'W';
pub const KIND_PLAIN: u8 = 1;
pub const KIND_SEALED: u8 = 2;
pub const KIND_PLAIN_ROUTED: u8 = 3;
pub const KIND_SEALED_ROUTED: u8 = 4;
pub const KIND_PLAIN_BUNDLE: u8 = 5;
pub const KIND_SEALED_BUNDLE: u8 = 6;
pub const HEADER_LEN: usize = 16;
/// Bytes a segment adds to its share of the payload (header and tag).
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
/// Most segments of one frame (the kernel's UDP GSO limit).
pub const MAX_SEGMENTS: usize = 64;
/// Largest frame (vnet header included) accepted from the TAP.
pub const MAX_PAYLOAD: usize = 65_550 + 64;

/// The payload bytes per segment for an underlay MTU (IPv4 and UDP headers left out).
pub fn segment_payload(underlay_mtu: u32) -> usize {
    (underlay_mtu as usize)
        .saturating_sub(20 + 8 + OVERHEAD)
        .max(MAX_PAYLOAD.div_ceil(MAX_SEGMENTS))
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
    #[error("segment out of sequence")]
    Unpaired,
    #[error("relayed frame with no route onwards")]
    NoRoute,
    #[error("relayed frame looping (our own, or out of hops)")]
    Loop,
    #[error("virtio-net header does not fit the frame")]
    BadVnetHeader,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::Malformed,
        DropReason::UnknownPeer,
        DropReason::Plaintext,
        DropReason::Forged,
        DropReason::Replayed,
        DropReason::Unpaired,
        DropReason::NoRoute,
        DropReason::Loop,
        DropReason::BadVnetHeader,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::Plaintext => "plaintext",
            DropReason::Forged => "forged",
            DropReason::Replayed => "replayed",
            DropReason::Unpaired => "unpaired",
            DropReason::NoRoute => "no_route",
            DropReason::Loop => "loop",
            DropReason::BadVnetHeader => "bad_vnet_header",
        }
    }
}

/// A parsed datagram header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub sealed: bool,
    /// The payload starts with a [`RouteHeader`].
    pub routed: bool,
    /// The payload is a [`super::bundle`] of frames (never routed, always one datagram).
    pub bundle: bool,
    pub sender: u16,
    /// Which segment of the frame, of how many.
    pub index: u8,
    pub count: u8,
    pub counter: u64,
}

impl Header {
    pub fn write(&self, out: &mut [u8]) {
        out[0] = MAGIC;
        out[1] = match (self.sealed, self.routed, self.bundle) {
            (false, _, true) => KIND_PLAIN_BUNDLE,
            (true, _, true) => KIND_SEALED_BUNDLE,
            (false, false, false) => KIND_PLAIN,
            (true, false, false) => KIND_SEALED,
            (false, true, false) => KIND_PLAIN_ROUTED,
            (true, true, false) => KIND_SEALED_ROUTED,
        };
        out[2..4].copy_from_slice(&self.sender.to_be_bytes());
        out[4] = self.index;
        out[5] = self.count;
        out[6..8].fill(0);
        out[8..16].copy_from_slice(&self.counter.to_be_bytes());
    }

    pub fn parse(d: &[u8]) -> Result<Header, DropReason> {
        if d.len() < HEADER_LEN || d[0] != MAGIC || d[6..8] != [0, 0] {
            return Err(DropReason::Malformed);
        }
        let (sealed, routed, bundle) = match d[1] {
            KIND_PLAIN => (false, false, false),
            KIND_SEALED => (true, false, false),
            KIND_PLAIN_ROUTED => (false, true, false),
            KIND_SEALED_ROUTED => (true, true, false),
            KIND_PLAIN_BUNDLE => (false, false, true),
            KIND_SEALED_BUNDLE => (true, false, true),
            _ => return Err(DropReason::Malformed),
        };
        let (index, count) = (d[4], d[5]);
        if count == 0 || index >= count || count as usize > MAX_SEGMENTS || (bundle && count != 1) {
            return Err(DropReason::Malformed);
        }
        Ok(Header {
            sealed,
            routed,
            bundle,
            sender: u16::from_be_bytes([d[2], d[3]]),
            index,
            count,
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

    /// Seals `payload` (when encrypted) and cuts it into segments of at most `segment`
    /// bytes, their datagrams one after another appended to `out`; returns the size of
    /// every datagram but the last (the UDP GSO segment size).
    pub fn encode(
        &mut self,
        payload: &[u8],
        segment: usize,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Result<usize, CryptoError> {
        self.encode_kind(payload, false, segment, out, scratch)
    }

    /// As [`Encoder::encode`]; a `routed` payload starts with a [`RouteHeader`].
    pub fn encode_kind(
        &mut self,
        payload: &[u8],
        routed: bool,
        segment: usize,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Result<usize, CryptoError> {
        let segment = segment.max(1);
        let tag = if self.sealer.is_some() { TAG_LEN } else { 0 };
        let total = payload.len() + tag;
        let count = total.div_ceil(segment).max(1);
        if count > MAX_SEGMENTS {
            return Err(CryptoError::TooShort(payload.len()));
        }
        let mut header = Header {
            sealed: self.sealer.is_some(),
            routed,
            bundle: false,
            sender: self.local,
            index: 0,
            count: count as u8,
            counter: 0,
        };
        if count == 1 {
            // One datagram (every small frame): sealed where it is sent from.
            return self.one_datagram(header, payload, out);
        }
        let body: &[u8] = match &mut self.sealer {
            None => {
                header.counter = self.take_plain_counter();
                payload
            }
            Some(sealer) => {
                header.counter = sealer.next_counter();
                let mut aad = [0u8; HEADER_LEN];
                header.write(&mut aad);
                scratch.clear();
                scratch.extend_from_slice(payload);
                let (_, t) = sealer.seal_detached(&aad, scratch)?;
                scratch.extend_from_slice(&t);
                scratch
            }
        };
        out.reserve(body.len() + count * HEADER_LEN);
        for (index, chunk) in body.chunks(segment).enumerate() {
            let at = out.len();
            out.resize(at + HEADER_LEN, 0);
            Header {
                index: index as u8,
                ..header
            }
            .write(&mut out[at..]);
            out.extend_from_slice(chunk);
        }
        Ok(HEADER_LEN + segment)
    }
}

impl Encoder {
    /// Appends one bundle datagram carrying `body` (frames behind their lengths, see
    /// [`super::bundle`]) to `out`, sealed under one counter when encrypted; returns its
    /// size. The caller keeps `body` with its tag within one underlay packet.
    pub fn encode_bundle(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<usize, CryptoError> {
        let header = Header {
            sealed: self.sealer.is_some(),
            routed: false,
            bundle: true,
            sender: self.local,
            index: 0,
            count: 1,
            counter: 0,
        };
        self.one_datagram(header, body, out)
    }

    /// The sequence number of the next plain datagram.
    fn take_plain_counter(&mut self) -> u64 {
        self.next_plain += 1;
        self.next_plain - 1
    }

    /// Appends one whole datagram, `header` (with the next counter) and `body`, sealed in
    /// place when encrypted; returns its size.
    fn one_datagram(
        &mut self,
        mut header: Header,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, CryptoError> {
        let start = out.len();
        header.counter = match &self.sealer {
            Some(sealer) => sealer.next_counter(),
            None => self.take_plain_counter(),
        };
        out.resize(start + HEADER_LEN, 0);
        header.write(&mut out[start..]);
        out.extend_from_slice(body);
        if let Some(sealer) = &mut self.sealer {
            let aad: [u8; HEADER_LEN] =
                out[start..start + HEADER_LEN].try_into().expect("a header");
            match sealer.seal_detached(&aad, &mut out[start + HEADER_LEN..]) {
                Ok((_, t)) => out.extend_from_slice(&t),
                Err(e) => {
                    out.truncate(start);
                    return Err(e);
                }
            }
        }
        Ok(out.len() - start)
    }
}

/// Where a routed frame comes from and goes to: the first [`RouteHeader::LEN`] bytes of a
/// routed payload. A destination equal to the origin marks a broadcast (it travels the
/// origin's broadcast tree); `hops_left` goes down by one at every relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteHeader {
    pub origin: u16,
    pub destination: u16,
    pub hops_left: u8,
    /// A broadcast the kernel fast path also carried to the receiver: pass it on to the
    /// peers only the sleeve reaches, do not deliver it again.
    pub beside_fast_path: bool,
}

impl RouteHeader {
    pub const LEN: usize = 4;
    /// Hops a frame may take (what four bits hold).
    pub const MAX_HOPS: u8 = 15;

    pub fn is_broadcast(&self) -> bool {
        self.origin == self.destination
    }

    /// The flag beside the fast path (1 bit), 3 zero bits and the origin (12 bits), then
    /// hops left (4 bits) and destination (12 bits), big endian.
    pub fn write(&self, out: &mut [u8; Self::LEN]) {
        let first = (u16::from(self.beside_fast_path) << 15) | (self.origin & 0x0fff);
        out[..2].copy_from_slice(&first.to_be_bytes());
        let second =
            (u16::from(self.hops_left.min(Self::MAX_HOPS)) << 12) | (self.destination & 0x0fff);
        out[2..].copy_from_slice(&second.to_be_bytes());
    }

    /// The header at the start of a routed payload, and the rest.
    pub fn parse(payload: &[u8]) -> Result<(RouteHeader, &[u8]), DropReason> {
        let (head, rest) = payload
            .split_first_chunk::<{ Self::LEN }>()
            .ok_or(DropReason::Malformed)?;
        let first = u16::from_be_bytes([head[0], head[1]]);
        let second = u16::from_be_bytes([head[2], head[3]]);
        if first & 0x7000 != 0 {
            return Err(DropReason::Malformed);
        }
        let header = RouteHeader {
            origin: first & 0x0fff,
            destination: second & 0x0fff,
            hops_left: (second >> 12) as u8,
            beside_fast_path: first & 0x8000 != 0,
        };
        Ok((header, rest))
    }
}

/// Frames of one peer being put back together at once. A segment joins only the frame of
/// its counter, in order: a segment that fits none is dropped and disturbs nothing, so one
/// spoofed datagram (segments are only authenticated with their whole frame) cannot reset a
/// frame on its way. A new frame beyond this many pushes out the oldest one.
pub const MAX_PENDING_FRAMES: usize = 4;

/// Most bytes of one frame's segments together: the largest payload, its route header and tag.
pub const MAX_FRAME_BODY: usize = MAX_PAYLOAD + RouteHeader::LEN + TAG_LEN;

/// A frame being put back together.
#[derive(Debug)]
struct Reassembly {
    first_counter: u64,
    count: u8,
    next: u8,
    data: Vec<u8>,
}

/// Turns one peer's datagrams back into payloads.
pub struct Decoder {
    opener: Option<DatagramOpener>,
    /// Oldest first, at most [`MAX_PENDING_FRAMES`].
    pending: Vec<Reassembly>,
}

impl Decoder {
    pub fn new(opener: Option<DatagramOpener>) -> Self {
        Self {
            opener,
            pending: Vec::new(),
        }
    }

    /// Takes a datagram whose header is `header`; returns the payload once its frame is
    /// complete and, when encrypted, authentic (`Ok(None)` while segments are missing).
    pub fn decode<'a>(
        &mut self,
        header: Header,
        datagram: &'a mut [u8],
    ) -> Result<Option<Payload<'a>>, DropReason> {
        match (&self.opener, header.sealed) {
            (Some(_), false) => return Err(DropReason::Plaintext),
            (None, true) => return Err(DropReason::Malformed),
            _ => {}
        }
        if header.count == 1 {
            let body = &mut datagram[HEADER_LEN..];
            let len = self.open(header, body)?;
            return Ok(Some(Payload::Borrowed(&body[..len])));
        }
        let body = &datagram[HEADER_LEN..];
        if header.index == 0 {
            if self
                .pending
                .iter()
                .any(|r| r.first_counter == header.counter)
            {
                // A second start of a frame under way (replayed or spoofed): the first stays.
                return Err(DropReason::Unpaired);
            }
            if body.len() > MAX_FRAME_BODY {
                return Err(DropReason::Malformed);
            }
            if self.pending.len() >= MAX_PENDING_FRAMES {
                self.pending.remove(0);
            }
            let expected = (body.len() * header.count as usize).min(MAX_FRAME_BODY);
            let mut data = Vec::with_capacity(expected);
            data.extend_from_slice(body);
            self.pending.push(Reassembly {
                first_counter: header.counter,
                count: header.count,
                next: 1,
                data,
            });
            return Ok(None);
        }
        let Some(at) = self.pending.iter().position(|r| {
            r.count == header.count && r.next == header.index && r.first_counter == header.counter
        }) else {
            return Err(DropReason::Unpaired);
        };
        let r = &mut self.pending[at];
        if r.data.len() + body.len() > MAX_FRAME_BODY {
            self.pending.remove(at);
            return Err(DropReason::Malformed);
        }
        r.data.extend_from_slice(body);
        r.next += 1;
        if r.next < r.count {
            return Ok(None);
        }
        let mut r = self.pending.remove(at);
        let len = self.open(Header { index: 0, ..header }, &mut r.data)?;
        r.data.truncate(len);
        Ok(Some(Payload::Owned(r.data)))
    }

    /// Opens a whole frame's body in place when encrypted; its plaintext length.
    fn open(&mut self, header: Header, body: &mut [u8]) -> Result<usize, DropReason> {
        let Some(opener) = &mut self.opener else {
            return Ok(body.len());
        };
        let mut aad = [0u8; HEADER_LEN];
        Header { index: 0, ..header }.write(&mut aad);
        opener
            .open_in_place(header.counter, &aad, body)
            .map_err(|e| match e {
                CryptoError::Replay(_) | CryptoError::Exhausted => DropReason::Replayed,
                _ => DropReason::Forged,
            })
    }
}

/// A decoded payload: in the datagram's buffer, or joined from segments.
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

/// The datagrams in a buffer of back-to-back segments of `stride` bytes (the last shorter).
pub fn segments(buf: &[u8], stride: usize) -> impl Iterator<Item = &[u8]> {
    buf.chunks(stride.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::NonceDomain;

    const SEG: usize = 1424;

    fn sealed_pair() -> (Encoder, Decoder) {
        let key = [5u8; 32];
        (
            Encoder::new(7, Some(Sealer::new(&key, NonceDomain::Data))),
            Decoder::new(Some(DatagramOpener::new(&key, NonceDomain::Data))),
        )
    }

    fn datagrams(enc: &mut Encoder, payload: &[u8]) -> Vec<Vec<u8>> {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let stride = enc.encode(payload, SEG, &mut out, &mut scratch).unwrap();
        segments(&out, stride).map(<[u8]>::to_vec).collect()
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
            (h.sealed, h.sender, h.index, h.count, h.counter),
            (true, 7, 0, 1, 0)
        );
        assert_eq!(decode(&mut dec, &ds[0]), Ok(Some(frame)));
    }

    #[test]
    fn a_bundle_is_one_datagram_under_one_counter_opened_once_or_not_at_all() {
        let (mut enc, mut dec) = sealed_pair();
        let before = datagrams(&mut enc, b"single").remove(0);
        let body = [&[0u8, 3][..], b"one", &[0, 3], b"two"].concat();
        let mut out = Vec::new();
        let len = enc.encode_bundle(&body, &mut out).unwrap();
        assert_eq!(len, out.len());
        assert_eq!(len, HEADER_LEN + body.len() + TAG_LEN);
        let after = datagrams(&mut enc, b"after").remove(0);
        let h = Header::parse(&out).unwrap();
        assert_eq!(
            (h.sealed, h.routed, h.bundle, h.count, h.counter),
            (true, false, true, 1, 1)
        );
        assert!(!out.windows(3).any(|w| w == b"two"), "sealed");
        // In any order with the ordinary datagrams around it, each once.
        assert_eq!(decode(&mut dec, &after), Ok(Some(b"after".to_vec())));
        assert_eq!(decode(&mut dec, &out), Ok(Some(body.clone())));
        assert_eq!(decode(&mut dec, &before), Ok(Some(b"single".to_vec())));
        assert_eq!(decode(&mut dec, &out), Err(DropReason::Replayed));
        let (mut enc2, mut dec2) = sealed_pair();
        let mut fresh = Vec::new();
        enc2.encode_bundle(&body, &mut fresh).unwrap();
        fresh[HEADER_LEN + 2] ^= 1;
        assert_eq!(decode(&mut dec2, &fresh), Err(DropReason::Forged));
        // A bundle is never cut into segments.
        let mut cut = out.clone();
        cut[5] = 2;
        assert_eq!(decode(&mut dec, &cut), Err(DropReason::Malformed));
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
            // Never delivered: refused, or (a count altered) waiting for segments that
            // never come.
            assert!(
                matches!(
                    r,
                    Err(DropReason::Forged | DropReason::Malformed | DropReason::Replayed)
                        | Ok(None)
                ),
                "byte {i}: {r:?}"
            );
        }
        assert_eq!(decode(&mut dec, &c), Ok(Some(b"third".to_vec())));
    }

    /// Frames sealed one after another into one buffer and grouped as the send thread does
    /// ([`super::super::batch`]); returns the datagrams as the receiver reads them (each
    /// group in one GRO read, cut every stride), in order.
    fn batch(enc: &mut Encoder, frames: &[Vec<u8>], segment: usize) -> Vec<Vec<u8>> {
        use super::super::batch::{GroupLimits, SendPlan};
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let mut plan = SendPlan::new(GroupLimits {
            max_bytes: 60_000,
            max_segments: MAX_SEGMENTS,
        });
        for f in frames {
            let start = out.len();
            let stride = enc.encode(f, segment, &mut out, &mut scratch).unwrap();
            let mut at = start;
            while at < out.len() {
                let len = stride.min(out.len() - at);
                plan.push(0u8, at, len);
                at += len;
            }
        }
        let mut received = Vec::new();
        for g in plan.groups() {
            assert!(g.stride <= HEADER_LEN + segment, "a datagram over the MTU");
            let read = &out[g.start..g.start + g.len];
            let cut: Vec<_> = read.chunks(g.stride).collect();
            assert_eq!(cut.len(), g.count);
            received.extend(cut.into_iter().map(<[u8]>::to_vec));
        }
        received
    }

    fn decode_all(dec: &mut Decoder, ds: &[Vec<u8>]) -> Vec<Result<Option<Vec<u8>>, DropReason>> {
        ds.iter().map(|d| decode(dec, d)).collect()
    }

    #[test]
    fn a_batch_of_small_frames_arrives_in_order_and_each_frame_opens_once() {
        let (mut enc, mut dec) = sealed_pair();
        let frames: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 60]).collect();
        let ds = batch(&mut enc, &frames, SEG);
        assert_eq!(ds.len(), frames.len(), "one datagram per small frame");
        let got = decode_all(&mut dec, &ds);
        let want: Vec<_> = frames.iter().map(|f| Ok(Some(f.clone()))).collect();
        assert_eq!(got, want, "every frame, in order");
        // The batch replayed whole, and one frame of it alone: refused.
        assert!(decode_all(&mut dec, &ds)
            .iter()
            .all(|r| *r == Err(DropReason::Replayed)));
        assert_eq!(decode(&mut dec, &ds[17]), Err(DropReason::Replayed));
        // A frame altered inside a new batch is refused; its neighbours still open.
        let mut next = batch(&mut enc, &frames[..3], SEG);
        next[1][HEADER_LEN + 5] ^= 1;
        assert_eq!(
            decode_all(&mut dec, &next),
            vec![
                Ok(Some(frames[0].clone())),
                Err(DropReason::Forged),
                Ok(Some(frames[2].clone()))
            ]
        );
    }

    #[test]
    fn a_batch_is_cut_by_the_mtu_and_a_large_frame_inside_it_reassembles() {
        let (mut enc, mut dec) = sealed_pair();
        let large: Vec<u8> = (0..10_000).map(|i| i as u8).collect();
        let frames = vec![
            vec![1; 80],
            vec![2; 80],
            large.clone(),
            vec![3; 80],
            vec![4; 200],
        ];
        let ds = batch(&mut enc, &frames, SEG);
        assert!(ds.iter().all(|d| d.len() <= HEADER_LEN + SEG));
        let delivered: Vec<Vec<u8>> = decode_all(&mut dec, &ds)
            .into_iter()
            .filter_map(|r| r.unwrap())
            .collect();
        assert_eq!(delivered, frames);
    }

    #[test]
    fn batched_datagrams_are_the_ones_a_previous_version_reads() {
        // Batching changes how datagrams leave, not what they are: each small frame is the
        // header, then the frame sealed with that header as associated data and its counter
        // as nonce, then the tag — as before batching, so a peer of any protocol version
        // opens them.
        let key = [4u8; 32];
        let mut enc = Encoder::new(7, Some(Sealer::new(&key, NonceDomain::Data)));
        let frames: Vec<Vec<u8>> = vec![vec![5; 64], vec![6; 64], vec![7; 100]];
        let ds = batch(&mut enc, &frames, SEG);
        let mut sealer = Sealer::new(&key, NonceDomain::Data);
        let expected: Vec<Vec<u8>> = frames
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut head = [0u8; HEADER_LEN];
                Header {
                    sealed: true,
                    routed: false,
                    bundle: false,
                    sender: 7,
                    index: 0,
                    count: 1,
                    counter: i as u64,
                }
                .write(&mut head);
                let mut body = f.clone();
                sealer.seal(&head, &mut body).unwrap();
                [&head[..], &body].concat()
            })
            .collect();
        assert_eq!(ds, expected);
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
    fn a_gso_frame_travels_in_segments_of_one_size() {
        for (mut enc, mut dec) in [sealed_pair(), (Encoder::new(1, None), Decoder::new(None))] {
            let frame: Vec<u8> = (0..65_000).map(|i| i as u8).collect();
            let ds = datagrams(&mut enc, &frame);
            assert_eq!(ds.len(), 65_000usize.div_ceil(SEG));
            let stride = ds[0].len();
            assert!(ds[..ds.len() - 1].iter().all(|d| d.len() == stride));
            assert!(ds.last().unwrap().len() <= stride);
            for d in &ds[..ds.len() - 1] {
                assert_eq!(decode(&mut dec, d), Ok(None));
            }
            assert_eq!(
                decode(&mut dec, ds.last().unwrap()),
                Ok(Some(frame.clone()))
            );
            // A segment altered: the whole frame fails.
            let mut ds = datagrams(&mut enc, &frame);
            if enc.sealer.is_some() {
                ds[5][100] ^= 1;
                for d in &ds[..ds.len() - 1] {
                    assert_eq!(decode(&mut dec, d), Ok(None));
                }
                assert_eq!(
                    decode(&mut dec, ds.last().unwrap()),
                    Err(DropReason::Forged)
                );
            }
            // A segment missing: the frame is dropped, the next one comes through.
            let ds = datagrams(&mut enc, &frame);
            assert_eq!(decode(&mut dec, &ds[0]), Ok(None));
            assert_eq!(decode(&mut dec, &ds[2]), Err(DropReason::Unpaired));
            assert_eq!(decode(&mut dec, &ds[3]), Err(DropReason::Unpaired));
            let ds = datagrams(&mut enc, &frame);
            let mut last = None;
            for d in &ds {
                last = decode(&mut dec, d).unwrap();
            }
            assert_eq!(last, Some(frame.clone()));
        }
    }

    #[test]
    fn spoofed_segments_do_not_reset_a_frame_on_its_way() {
        for (mut enc, mut dec) in [sealed_pair(), (Encoder::new(1, None), Decoder::new(None))] {
            let frame: Vec<u8> = (0..4000).map(|i| i as u8).collect();
            let ds = datagrams(&mut enc, &frame);
            assert_eq!(ds.len(), 3);
            assert_eq!(decode(&mut dec, &ds[0]), Ok(None));
            // A stranger's guesses: the start of another frame, a segment of a frame that
            // does not exist, the real start again, a real segment out of its turn.
            let mut spoofed_start = ds[0].clone();
            spoofed_start[8..16].copy_from_slice(&999u64.to_be_bytes());
            assert_eq!(decode(&mut dec, &spoofed_start), Ok(None));
            let mut stray = ds[1].clone();
            stray[8..16].copy_from_slice(&12345u64.to_be_bytes());
            assert_eq!(decode(&mut dec, &stray), Err(DropReason::Unpaired));
            assert_eq!(decode(&mut dec, &ds[0]), Err(DropReason::Unpaired));
            assert_eq!(decode(&mut dec, &ds[2]), Err(DropReason::Unpaired));
            // The real frame is whole all the same.
            assert_eq!(decode(&mut dec, &ds[1]), Ok(None));
            assert_eq!(decode(&mut dec, &ds[2]), Ok(Some(frame.clone())));
        }
    }

    #[test]
    fn reassembly_holds_a_bounded_number_of_bounded_frames() {
        let mut enc = Encoder::new(1, None);
        let mut dec = Decoder::new(None);
        let frame = vec![7u8; 4000];
        // Many spoofed starts: only the newest MAX_PENDING_FRAMES are kept.
        for counter in 100..200u64 {
            let mut d = datagrams(&mut enc, &frame).remove(0);
            d[8..16].copy_from_slice(&counter.to_be_bytes());
            let _ = decode(&mut dec, &d);
        }
        assert_eq!(dec.pending.len(), MAX_PENDING_FRAMES);
        // A start announcing 64 segments of 60 KB each does not reserve 4 MB, and its
        // frame cannot grow past the largest payload.
        let body = vec![0u8; 60_000];
        let mut d = vec![0u8; HEADER_LEN];
        let h = Header {
            sealed: false,
            routed: false,
            bundle: false,
            sender: 1,
            index: 0,
            count: 64,
            counter: 5000,
        };
        h.write(&mut d);
        d.extend_from_slice(&body);
        assert_eq!(decode(&mut dec, &d), Ok(None));
        let r = dec.pending.last().unwrap();
        assert!(r.data.capacity() <= MAX_FRAME_BODY);
        let mut next = vec![0u8; HEADER_LEN];
        Header { index: 1, ..h }.write(&mut next);
        next.extend_from_slice(&body);
        assert_eq!(decode(&mut dec, &next), Err(DropReason::Malformed));
        assert!(dec.pending.iter().all(|r| r.first_counter != 5000));
    }

    #[test]
    fn segment_sizes_follow_the_underlay_mtu() {
        assert_eq!(segment_payload(1500), 1500 - 28 - OVERHEAD);
        // A tiny MTU still cuts the largest frame into at most MAX_SEGMENTS.
        assert!(MAX_PAYLOAD.div_ceil(segment_payload(576)) <= MAX_SEGMENTS);
    }

    #[test]
    fn a_route_header_reads_back_as_written_and_short_ones_are_malformed() {
        let route = RouteHeader {
            origin: 0x0abc,
            destination: 0x0123,
            hops_left: 7,
            beside_fast_path: true,
        };
        let mut bytes = [0u8; RouteHeader::LEN];
        route.write(&mut bytes);
        let mut payload = bytes.to_vec();
        payload.extend_from_slice(b"frame");
        assert_eq!(RouteHeader::parse(&payload), Ok((route, &b"frame"[..])));
        assert!(!route.is_broadcast());
        // More hops than four bits hold are clamped, not wrapped.
        let far = RouteHeader {
            hops_left: 200,
            ..route
        };
        far.write(&mut bytes);
        assert_eq!(
            RouteHeader::parse(&bytes).unwrap().0.hops_left,
            RouteHeader::MAX_HOPS
        );
        assert_eq!(RouteHeader::parse(&bytes[..3]), Err(DropReason::Malformed));
        assert_eq!(
            RouteHeader::parse(&[0x70, 0, 0, 1]),
            Err(DropReason::Malformed),
            "an origin beyond 12 bits"
        );
        assert!(
            !RouteHeader::parse(&[0x0a, 0xbc, 0, 1])
                .unwrap()
                .0
                .beside_fast_path
        );
    }

    #[test]
    fn a_routed_datagram_says_so_and_the_kind_is_sealed_with_it() {
        let (mut enc, mut dec) = sealed_pair();
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let payload = vec![9u8; 300];
        enc.encode_kind(&payload, true, SEG, &mut out, &mut scratch)
            .unwrap();
        let header = Header::parse(&out).unwrap();
        assert!(header.routed && header.sealed);
        assert_eq!(out[1], KIND_SEALED_ROUTED);
        // Turned into an unrouted datagram on the way: it no longer authenticates.
        let mut forged = out.clone();
        forged[1] = KIND_SEALED;
        assert_eq!(decode(&mut dec, &forged), Err(DropReason::Forged));
        assert_eq!(decode(&mut dec, &out), Ok(Some(payload)));
    }
}
