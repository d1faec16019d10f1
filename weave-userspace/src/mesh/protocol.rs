//! The control protocol between routers, as pure functions over bytes.
//!
//! A connection starts with a preamble from each side: an 8-byte magic and the lowest and
//! highest protocol version the sender speaks. Both sides pick the highest version they have
//! in common. After it every message travels as a frame: a big-endian `u32` length and that
//! many bytes of a postcard-encoded [`Message`]. The first frame each way is a [`Hello`].
//!
//! Between the preamble and the first frame each side sends one byte saying whether it has a
//! password ([`ENCRYPTION_OFF`] or [`ENCRYPTION_ON`]); a mix refuses the connection on both
//! sides. With passwords the dialler then runs the handshake of [`crate::crypto::handshake`]:
//! request, a status byte ([`HANDSHAKE_ACCEPTED`] or [`HANDSHAKE_REFUSED`]) and the response,
//! then the confirmation. From then on every frame body is sealed: the header gives the sealed
//! length and is the associated data, the counter is implicit (one per frame each way).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::peer_name::{PeerName, ShortId};

/// Opens every control connection.
pub const MAGIC: [u8; 8] = *b"weavertr";
/// Versions this build speaks. Version 2 added the encryption flag after the preamble;
/// version 3 added fast-path heartbeats, [`Message::FastdpStatus`] and
/// [`Message::ShortIdTaken`]; version 4 path-MTU probes and [`Message::PathMtuSeen`]; version 5 routed sleeve datagrams; version 6
/// gossip-channel unicasts that count their hops ([`Delivery::Routed`](super::gossip_channel::Delivery::Routed))
/// and [`Message::IpamIdentity`] right after the hello; version 7 sleeve bundles (several small
/// frames in one datagram), the control connection as in version 6; version 8 shares the
/// fast-path heartbeats between the two ends, the control connection as in version 7. A
/// version 2 peer
/// takes a message kind it does not know for a malformed frame and closes the connection,
/// so nothing of version 3 is sent on a version 2 connection.
pub const MIN_VERSION: u8 = 2;
pub const MAX_VERSION: u8 = 8;
/// The first version with fast-path heartbeats and [`Message::FastdpStatus`].
pub const FASTDP_STATUS_VERSION: u8 = 3;
/// The first version with [`Message::ShortIdTaken`].
pub const SHORT_ID_TAKEN_VERSION: u8 = 3;
/// The first version with path-MTU probes and [`Message::PathMtuSeen`].
pub const PATH_MTU_VERSION: u8 = 4;
/// The first version whose sleeve takes routed datagrams (frames of others, relayed); the
/// control connection itself is as in version 4.
pub const SLEEVE_RELAY_VERSION: u8 = 5;
/// The first version whose gossip-channel unicasts carry the hops they may still take.
pub const CHANNEL_HOPS_VERSION: u8 = 6;
/// The first version whose handshake carries [`Message::IpamIdentity`] after the hello: a
/// peer whose IP allocation disagrees with ours is refused before either side puts the
/// other in its data path (older peers are refused when their ring arrives).
pub const IPAM_IDENTITY_VERSION: u8 = 6;
/// The first version whose sleeve takes bundles of frames (kinds 5 and 6); the control
/// connection itself is as in version 6.
pub const SLEEVE_BUNDLE_VERSION: u8 = 7;
/// The first version whose router counts the kernel's echoes of its plain fast-path
/// heartbeats as hearing the peer, and whose kernel echoes the peer's: of two such routers
/// only the one with the lower name sends them while the other's arrive
/// ([`crate::datapath::overlay::heartbeat_duty`]); the control connection as in version 7.
pub const HEARTBEAT_DUTY_VERSION: u8 = 8;
/// Length of the preamble: magic, min version, max version.
pub const PREAMBLE_LEN: usize = MAGIC.len() + 2;
/// Length of a frame header.
pub const FRAME_HEADER_LEN: usize = 4;
/// Largest frame body accepted or sent (control messages are small).
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;
/// Longest nickname accepted in a [`Hello`].
pub const MAX_NICKNAME_LEN: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("the remote end is not a weave-router (bad protocol magic)")]
    BadMagic,
    #[error("preamble has an empty version range {min}..{max}")]
    BadVersionRange { min: u8, max: u8 },
    #[error("incompatible protocol versions: we speak {our_min}..{our_max}, the remote end {their_min}..{their_max}")]
    IncompatibleVersion {
        our_min: u8,
        our_max: u8,
        their_min: u8,
        their_max: u8,
    },
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME_LEN}")]
    FrameTooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("expected {expected}, received {received}")]
    Unexpected {
        expected: &'static str,
        received: &'static str,
    },
    #[error("cannot connect to ourself")]
    SelfConnection,
    #[error("peer {name} claims short ID {id}, which does not fit in 12 bits")]
    BadShortId { name: PeerName, id: u16 },
    #[error("peer {name} has the same short ID {id} as we do")]
    ShortIdClash { name: PeerName, id: ShortId },
    #[error("nickname of {0} bytes is longer than {MAX_NICKNAME_LEN}")]
    NicknameTooLong(usize),
    #[error("encryption mismatch: we have a password and the remote end has none")]
    RemoteHasNoPassword,
    #[error("encryption mismatch: the remote end has a password and we have none")]
    WeHaveNoPassword,
    #[error("bad encryption flag {0} in the preamble")]
    BadEncryptionFlag(u8),
    #[error("password mismatch: the remote end has another password")]
    PasswordMismatch,
    #[error("encrypted handshake failed: {0}")]
    Handshake(String),
    #[error("a sealed control frame does not verify (tampered, replayed or not from the peer)")]
    Forged,
}

impl ProtocolError {
    /// Whether the error is about passwords (shown on both sides, also for refused inbound
    /// connections).
    pub fn is_about_encryption(&self) -> bool {
        matches!(
            self,
            ProtocolError::RemoteHasNoPassword
                | ProtocolError::WeHaveNoPassword
                | ProtocolError::PasswordMismatch
                | ProtocolError::Handshake(_)
                | ProtocolError::BadEncryptionFlag(_)
        )
    }
}

/// The byte after the preamble: whether the sender has a password.
pub const ENCRYPTION_OFF: u8 = 0;
pub const ENCRYPTION_ON: u8 = 1;
/// The responder's answer to a handshake request.
pub const HANDSHAKE_ACCEPTED: u8 = 0;
pub const HANDSHAKE_REFUSED: u8 = 1;

/// The encryption flag we send.
pub fn encryption_flag(password: bool) -> u8 {
    if password {
        ENCRYPTION_ON
    } else {
        ENCRYPTION_OFF
    }
}

/// Whether the connection is encrypted, given our password and the remote end's flag.
pub fn agree_on_encryption(password: bool, theirs: u8) -> Result<bool, ProtocolError> {
    match (password, theirs) {
        (true, ENCRYPTION_ON) => Ok(true),
        (false, ENCRYPTION_OFF) => Ok(false),
        (true, ENCRYPTION_OFF) => Err(ProtocolError::RemoteHasNoPassword),
        (false, ENCRYPTION_ON) => Err(ProtocolError::WeHaveNoPassword),
        (_, other) => Err(ProtocolError::BadEncryptionFlag(other)),
    }
}

/// Seals a plain frame (header and body) into a sealed one.
pub fn seal_frame(
    sealer: &mut crate::crypto::Sealer,
    plain: &[u8],
) -> Result<Vec<u8>, ProtocolError> {
    let body = &plain[FRAME_HEADER_LEN.min(plain.len())..];
    let sealed_len = body.len() + crate::crypto::TAG_LEN;
    if sealed_len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge(sealed_len));
    }
    let header = (sealed_len as u32).to_be_bytes();
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + sealed_len);
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    let (_, tag) = sealer
        .seal_detached(&header, &mut out[FRAME_HEADER_LEN..])
        .map_err(|e| ProtocolError::Handshake(e.to_string()))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// A message as one sealed frame.
pub fn encode_sealed_frame(
    sealer: &mut crate::crypto::Sealer,
    message: &Message,
) -> Result<Vec<u8>, ProtocolError> {
    seal_frame(sealer, &encode_frame(message)?)
}

/// Decodes the first sealed frame of `buf` like [`decode_frame`]; the message, the number of
/// bytes taken and the plain frame's length (for counting).
pub fn decode_sealed_frame(
    opener: &mut crate::crypto::StreamOpener,
    buf: &[u8],
) -> Result<Option<(Message, usize)>, ProtocolError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let header: [u8; FRAME_HEADER_LEN] = buf[..FRAME_HEADER_LEN].try_into().expect("four bytes");
    let len = frame_len(header)?;
    if buf.len() < FRAME_HEADER_LEN + len {
        return Ok(None);
    }
    let mut body = buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len].to_vec();
    opener
        .open(&header, &mut body)
        .map_err(|_| ProtocolError::Forged)?;
    let message = decode_body(&body)?;
    Ok(Some((message, FRAME_HEADER_LEN + len)))
}

/// A range of protocol versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versions {
    pub min: u8,
    pub max: u8,
}

impl Versions {
    pub const OURS: Versions = Versions {
        min: MIN_VERSION,
        max: MAX_VERSION,
    };

    pub fn encode(self) -> [u8; PREAMBLE_LEN] {
        let mut b = [0u8; PREAMBLE_LEN];
        b[..MAGIC.len()].copy_from_slice(&MAGIC);
        b[MAGIC.len()] = self.min;
        b[MAGIC.len() + 1] = self.max;
        b
    }

    pub fn decode(b: &[u8]) -> Result<Versions, ProtocolError> {
        if b.len() < MAGIC.len() || b[..MAGIC.len()] != MAGIC {
            return Err(ProtocolError::BadMagic);
        }
        if b.len() != PREAMBLE_LEN {
            return Err(ProtocolError::Malformed(format!(
                "preamble of {} bytes",
                b.len()
            )));
        }
        let v = Versions {
            min: b[MAGIC.len()],
            max: b[MAGIC.len() + 1],
        };
        if v.min > v.max || v.min == 0 {
            return Err(ProtocolError::BadVersionRange {
                min: v.min,
                max: v.max,
            });
        }
        Ok(v)
    }
}

/// The highest version both sides speak.
pub fn negotiate(ours: Versions, theirs: Versions) -> Result<u8, ProtocolError> {
    let high = ours.max.min(theirs.max);
    let low = ours.min.max(theirs.min);
    if high < low {
        return Err(ProtocolError::IncompatibleVersion {
            our_min: ours.min,
            our_max: ours.max,
            their_min: theirs.min,
            their_max: theirs.max,
        });
    }
    Ok(high)
}

/// Who a router is: the first message each side sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub name: PeerName,
    pub nickname: String,
    pub short_id: ShortId,
    /// Random per run of the router: tells a restarted peer from the old one.
    pub uid: u64,
    /// Where VXLAN for this peer goes.
    pub underlay: Ipv4Addr,
    /// UDP port of its data path.
    pub data_port: u16,
    /// Underlay subnets whose peers this router trusts (`--trusted-subnets`): data to a
    /// peer both ends trust skips encryption.
    pub trusted_subnets: Vec<crate::net::Ipv4Cidr>,
}

impl Hello {
    /// Whether this router trusts `other`'s underlay address.
    pub fn trusts(&self, other: &Hello) -> bool {
        self.trusted_subnets
            .iter()
            .any(|s| s.contains(other.underlay))
    }

    /// Whether data between the two may skip encryption: each trusts the other.
    pub fn trusted_both_ways(&self, other: &Hello) -> bool {
        self.trusts(other) && other.trusts(self)
    }
}

/// Topology records on their way through the mesh: each goes on along its owner's
/// broadcast tree from every router it improved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipUpdate {
    pub records: Vec<crate::mesh::topology::PeerInfo>,
}

/// The version of every record the sender holds. The receiver answers with the records it
/// holds newer (anti-entropy without sending whole views), and, when the sender holds
/// newer ones and this is not already a reply, with its own digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipDigest {
    pub entries: Vec<crate::mesh::topology::RecordVersion>,
    /// An answer to a digest: never answered with another digest.
    pub reply: bool,
    /// Asks about the listed records only (a gap in a peer's record changes): the answer
    /// holds no others, and no digest.
    pub only_listed: bool,
}

/// Everything sent after the preamble.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    /// Keeps the connection alive; silence means the peer is gone.
    Heartbeat,
    /// The sender has installed the receiver in its data path.
    Ready,
    /// The sender closes the connection, and why.
    Goodbye(String),
    /// Topology records (the sender's own and those it passes on).
    Gossip(GossipUpdate),
    /// Versions of the sender's topology records.
    Digest(GossipDigest),
    /// A change of one peer's record, along that peer's broadcast tree.
    Delta(crate::mesh::topology::RecordDelta),
    /// Data of a gossip channel (IPAM, DNS).
    Channel(super::gossip_channel::ChannelMessage),
    /// Whether the sender hears the receiver's fast-path heartbeats (VXLAN gets through
    /// from the receiver to the sender) and so would carry their frames on the fast path;
    /// sent on change and periodically (protocol version 3 and up).
    FastdpStatus {
        heard: bool,
    },
    /// A refusal: the sender is connected to `by`, which has the receiver's short ID; the
    /// receiver (the newcomer) takes another one and dials again (protocol version 3 and up;
    /// older peers get a goodbye saying the same).
    ShortIdTaken {
        id: ShortId,
        by: PeerName,
    },
    /// The largest of the receiver's path-MTU probes of round `round` that reached the
    /// sender over the fast path (outer IPv4 packet length); sent when it changes
    /// (protocol version 4 and up).
    PathMtuSeen {
        round: u32,
        largest: u16,
    },
    /// The sender's IP allocation (range and seeds), `None` when it runs without;
    /// the second frame each way of the handshake (protocol version 6 and up).
    IpamIdentity(Option<crate::ipam::identity::IpamIdentity>),
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Heartbeat => "heartbeat",
            Message::Ready => "ready",
            Message::Goodbye(_) => "goodbye",
            Message::Gossip(_) => "gossip",
            Message::Digest(_) => "digest",
            Message::Delta(_) => "record change",
            Message::Channel(_) => "channel gossip",
            Message::FastdpStatus { .. } => "fastdp status",
            Message::ShortIdTaken { .. } => "short ID taken",
            Message::PathMtuSeen { .. } => "path MTU seen",
            Message::IpamIdentity(_) => "IPAM identity",
        }
    }
}

/// Names of the message kinds, in the order of [`Message`]'s variants (a frame's first
/// body byte is that index).
pub const MESSAGE_KINDS: [&str; 12] = [
    "hello",
    "heartbeat",
    "ready",
    "goodbye",
    "gossip",
    "digest",
    "record change",
    "channel gossip",
    "fastdp status",
    "short ID taken",
    "path MTU seen",
    "IPAM identity",
];

/// Frames and bytes of control traffic by message kind, counted by this process.
pub struct ControlTraffic {
    frames: [std::sync::atomic::AtomicU64; MESSAGE_KINDS.len()],
    bytes: [std::sync::atomic::AtomicU64; MESSAGE_KINDS.len()],
}

/// Control traffic sent and received by this process.
pub static SENT: ControlTraffic = ControlTraffic::new();
pub static RECEIVED: ControlTraffic = ControlTraffic::new();

impl ControlTraffic {
    #[allow(clippy::declare_interior_mutable_const)]
    const fn new() -> Self {
        const ZERO: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            frames: [ZERO; MESSAGE_KINDS.len()],
            bytes: [ZERO; MESSAGE_KINDS.len()],
        }
    }

    /// Counts one whole frame (header and body).
    pub fn count(&self, frame: &[u8]) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(&kind) = frame
            .get(FRAME_HEADER_LEN)
            .filter(|k| (**k as usize) < MESSAGE_KINDS.len())
        {
            self.frames[kind as usize].fetch_add(1, Relaxed);
            self.bytes[kind as usize].fetch_add(frame.len() as u64, Relaxed);
        }
    }

    /// Counts one frame of a message kind and its length on the wire.
    pub fn count_kind(&self, kind: &str, len: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(i) = MESSAGE_KINDS.iter().position(|k| *k == kind) {
            self.frames[i].fetch_add(1, Relaxed);
            self.bytes[i].fetch_add(len as u64, Relaxed);
        }
    }

    /// (kind, frames, bytes) for every kind.
    pub fn snapshot(&self) -> Vec<(&'static str, u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        MESSAGE_KINDS
            .iter()
            .enumerate()
            .map(|(i, k)| {
                (
                    *k,
                    self.frames[i].load(Relaxed),
                    self.bytes[i].load(Relaxed),
                )
            })
            .collect()
    }
}

/// A message as one frame: length prefix and body.
pub fn encode_frame(message: &Message) -> Result<Vec<u8>, ProtocolError> {
    let body = postcard::to_stdvec(message).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The body length announced by a frame header, refused when over the maximum.
pub fn frame_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, ProtocolError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge(len));
    }
    Ok(len)
}

/// Decodes one frame body; every byte must belong to the message.
pub fn decode_body(body: &[u8]) -> Result<Message, ProtocolError> {
    let (message, rest) = postcard::take_from_bytes::<Message>(body)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(message)
}

/// Decodes the first frame of `buf`: `Ok(None)` while it is incomplete, else the message
/// and the number of bytes it took.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Message, usize)>, ProtocolError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let len = frame_len(buf[..FRAME_HEADER_LEN].try_into().expect("four bytes"))?;
    if buf.len() < FRAME_HEADER_LEN + len {
        return Ok(None);
    }
    let message = decode_body(&buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len])?;
    Ok(Some((message, FRAME_HEADER_LEN + len)))
}

/// Checks the remote side's hello against our own.
pub fn check_hello(ours: &Hello, theirs: &Hello) -> Result<(), ProtocolError> {
    if theirs.name == ours.name {
        return Err(ProtocolError::SelfConnection);
    }
    if !theirs.short_id.in_range() {
        return Err(ProtocolError::BadShortId {
            name: theirs.name,
            id: theirs.short_id.get(),
        });
    }
    if let Some(bad) = theirs.trusted_subnets.iter().find(|s| s.prefix_len > 32) {
        return Err(ProtocolError::Malformed(format!(
            "peer {} trusts {}/{}: a prefix over 32",
            theirs.name, bad.addr, bad.prefix_len
        )));
    }
    if theirs.nickname.len() > MAX_NICKNAME_LEN {
        return Err(ProtocolError::NicknameTooLong(theirs.nickname.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_needs_both_ends() {
        let cidr = |s: &str| s.parse::<crate::net::Ipv4Cidr>().unwrap();
        let mut a = hello("0a:00:00:00:00:01", 1);
        let mut b = hello("0a:00:00:00:00:02", 2);
        a.underlay = [192, 168, 1, 1].into();
        b.underlay = [10, 9, 0, 2].into();
        assert!(!a.trusted_both_ways(&b), "nobody trusts anybody by default");
        a.trusted_subnets = vec![cidr("10.9.0.0/16")];
        assert!(a.trusts(&b) && !b.trusts(&a));
        assert!(!a.trusted_both_ways(&b) && !b.trusted_both_ways(&a));
        b.trusted_subnets = vec![cidr("192.168.0.0/24")];
        assert!(
            !a.trusted_both_ways(&b),
            "192.168.1.1 is outside 192.168.0.0/24"
        );
        b.trusted_subnets.push(cidr("192.168.1.1/32"));
        assert!(a.trusted_both_ways(&b) && b.trusted_both_ways(&a));
        b.trusted_subnets = vec![cidr("0.0.0.0/0")];
        assert!(b.trusts(&a), "/0 holds every address");
    }

    fn hello(name: &str, short_id: u16) -> Hello {
        Hello {
            name: name.parse().unwrap(),
            nickname: "host1".into(),
            short_id: ShortId::new(short_id).unwrap(),
            uid: 0x1234_5678_9abc_def0,
            underlay: Ipv4Addr::new(10, 0, 0, 1),
            data_port: 6784,
            trusted_subnets: Vec::new(),
        }
    }

    #[test]
    fn message_kinds_follow_the_variant_order() {
        let messages = [
            Message::Heartbeat,
            Message::Ready,
            Message::Goodbye("x".into()),
            Message::Gossip(GossipUpdate { records: vec![] }),
            Message::Digest(GossipDigest {
                entries: vec![],
                reply: false,
                only_listed: false,
            }),
            Message::FastdpStatus { heard: true },
            Message::PathMtuSeen {
                round: 7,
                largest: 1400,
            },
            Message::IpamIdentity(None),
        ];
        for m in messages {
            let frame = encode_frame(&m).unwrap();
            assert_eq!(MESSAGE_KINDS[frame[FRAME_HEADER_LEN] as usize], m.kind());
        }
    }

    #[test]
    fn preamble_round_trips() {
        let v = Versions { min: 1, max: 3 };
        assert_eq!(Versions::decode(&v.encode()), Ok(v));
    }

    #[test]
    fn preamble_with_other_magic_is_refused() {
        let mut b = Versions::OURS.encode();
        b[0] = b'W';
        assert_eq!(Versions::decode(&b), Err(ProtocolError::BadMagic));
        assert_eq!(
            Versions::decode(b"GET / HTTP"),
            Err(ProtocolError::BadMagic)
        );
        assert_eq!(Versions::decode(b"wea"), Err(ProtocolError::BadMagic));
    }

    #[test]
    fn empty_version_ranges_are_refused() {
        let b = Versions { min: 3, max: 2 }.encode();
        assert_eq!(
            Versions::decode(&b),
            Err(ProtocolError::BadVersionRange { min: 3, max: 2 })
        );
    }

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        assert_eq!(
            negotiate(Versions { min: 1, max: 3 }, Versions { min: 2, max: 5 }),
            Ok(3)
        );
        assert_eq!(negotiate(Versions::OURS, Versions::OURS), Ok(MAX_VERSION));
    }

    #[test]
    fn a_version_2_peer_gets_a_version_2_connection_without_fastdp_status() {
        let old = Versions { min: 2, max: 2 };
        let v = negotiate(Versions::OURS, old).unwrap();
        assert_eq!(v, 2);
        assert!(v < FASTDP_STATUS_VERSION);
        // Such a peer's decoder knows 8 kinds: the new one would be garbage to it.
        let frame = encode_frame(&Message::FastdpStatus { heard: true }).unwrap();
        assert_eq!(frame[FRAME_HEADER_LEN] as usize, 8);
    }

    #[test]
    fn incompatible_versions_give_a_clear_error() {
        let err = negotiate(Versions { min: 1, max: 1 }, Versions { min: 2, max: 4 }).unwrap_err();
        assert_eq!(
            err.to_string(),
            "incompatible protocol versions: we speak 1..1, the remote end 2..4"
        );
    }

    #[test]
    fn messages_round_trip_through_frames() {
        for m in [
            Message::Hello(hello("0a:00:00:00:00:01", 1)),
            Message::Heartbeat,
            Message::Ready,
            Message::Goodbye("shutting down".into()),
            Message::FastdpStatus { heard: false },
        ] {
            let frame = encode_frame(&m).unwrap();
            assert_eq!(
                frame_len(frame[..4].try_into().unwrap()).unwrap(),
                frame.len() - 4
            );
            assert_eq!(decode_frame(&frame).unwrap(), Some((m, frame.len())));
        }
    }

    #[test]
    fn several_frames_decode_one_after_another() {
        let mut buf = encode_frame(&Message::Heartbeat).unwrap();
        buf.extend(encode_frame(&Message::Ready).unwrap());
        let (a, n) = decode_frame(&buf).unwrap().unwrap();
        let (b, m) = decode_frame(&buf[n..]).unwrap().unwrap();
        assert_eq!((a, b), (Message::Heartbeat, Message::Ready));
        assert_eq!(n + m, buf.len());
    }

    #[test]
    fn truncated_frames_wait_for_more() {
        let frame = encode_frame(&Message::Hello(hello("0a:00:00:00:00:01", 1))).unwrap();
        for cut in 0..frame.len() {
            assert_eq!(decode_frame(&frame[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn truncated_bodies_are_malformed() {
        let frame = encode_frame(&Message::Hello(hello("0a:00:00:00:00:01", 1))).unwrap();
        let body = &frame[4..];
        for cut in 0..body.len() {
            assert!(
                matches!(decode_body(&body[..cut]), Err(ProtocolError::Malformed(_))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header() {
        let header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert_eq!(
            frame_len(header),
            Err(ProtocolError::FrameTooLarge(MAX_FRAME_LEN + 1))
        );
        assert_eq!(
            decode_frame(&u32::MAX.to_be_bytes()),
            Err(ProtocolError::FrameTooLarge(u32::MAX as usize))
        );
        let huge = Message::Goodbye("x".repeat(MAX_FRAME_LEN + 1));
        assert!(matches!(
            encode_frame(&huge),
            Err(ProtocolError::FrameTooLarge(_))
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        for body in [
            &[0xffu8, 0xff, 0xff][..],
            &[42],
            &[1, 2, 3, 4, 5, 6, 7, 8, 9],
        ] {
            assert!(
                matches!(decode_body(body), Err(ProtocolError::Malformed(_))),
                "{body:?}"
            );
        }
        // A valid message followed by junk.
        let mut body = encode_frame(&Message::Ready).unwrap()[4..].to_vec();
        body.push(0);
        assert!(matches!(
            decode_body(&body),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn a_peer_claiming_our_name_is_refused() {
        let ours = hello("0a:00:00:00:00:01", 1);
        let theirs = hello("0a:00:00:00:00:01", 2);
        assert_eq!(
            check_hello(&ours, &theirs),
            Err(ProtocolError::SelfConnection)
        );
    }

    #[test]
    fn a_peer_with_our_short_id_passes_the_handshake_for_the_router_to_settle() {
        let ours = hello("0a:00:00:00:00:01", 7);
        let theirs = hello("0a:00:00:00:00:02", 7);
        assert!(check_hello(&ours, &theirs).is_ok());
    }

    #[test]
    fn out_of_range_short_ids_are_refused() {
        let ours = hello("0a:00:00:00:00:01", 1);
        let mut theirs = hello("0a:00:00:00:00:02", 2);
        // Forged on the wire: deserialisation does not range-check.
        let mut body = postcard::to_stdvec(&Message::Hello(theirs.clone())).unwrap();
        let good = decode_body(&body).unwrap();
        assert_eq!(good, Message::Hello(theirs.clone()));
        theirs.short_id = postcard::from_bytes(&postcard::to_stdvec(&5000u16).unwrap()).unwrap();
        body = postcard::to_stdvec(&Message::Hello(theirs)).unwrap();
        let Message::Hello(forged) = decode_body(&body).unwrap() else {
            panic!()
        };
        assert!(matches!(
            check_hello(&ours, &forged),
            Err(ProtocolError::BadShortId { id: 5000, .. })
        ));
    }

    #[test]
    fn a_trusted_subnet_with_a_prefix_over_32_is_refused() {
        let ours = hello("0a:00:00:00:00:01", 1);
        let mut theirs = hello("0a:00:00:00:00:02", 2);
        theirs.trusted_subnets = vec![crate::net::Ipv4Cidr {
            addr: std::net::Ipv4Addr::new(10, 0, 0, 0),
            prefix_len: 33,
        }];
        let err = check_hello(&ours, &theirs).unwrap_err().to_string();
        assert!(err.contains("10.0.0.0/33: a prefix over 32"), "{err}");
    }

    #[test]
    fn a_good_peer_passes() {
        let ours = hello("0a:00:00:00:00:01", 1);
        let theirs = hello("0a:00:00:00:00:02", 2);
        assert_eq!(check_hello(&ours, &theirs), Ok(()));
    }
}
