//! ChaCha20-Poly1305 with 64-bit counter nonces.
//!
//! The 96-bit nonce is a 32-bit domain (control stream, data datagrams, key confirmation:
//! one key serves all three without ever reusing a nonce) and the 64-bit counter, both little
//! endian, as WireGuard lays them out. A sender never reuses a counter and stops before it
//! wraps; a receiver accepts each counter once: in order on a stream, through a
//! [`ReplayWindow`] for datagrams, and only after the tag has verified.
//!
//! The cipher is `ring`'s (BoringSSL's assembly): on the x86-64 machines measured it seals a
//! 100-byte frame in about a ninth of the time of the RustCrypto crate, whose AVX2 Poly1305
//! pays a set-up of over a microsecond per message, and bulk at about twice the rate. The
//! sleeve seals every frame on its own, so small frames live or die by that set-up.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

use super::replay::{ReplayError, ReplayWindow};

/// Length of the Poly1305 tag appended to every sealed message.
pub const TAG_LEN: usize = 16;
/// A sender stops here (WireGuard's limit): a new handshake is needed.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// What a key seals, kept apart in the nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceDomain {
    /// Frames of the control connection (TCP, in order).
    Control,
    /// Datagrams of the sleeve data path (UDP, any order).
    Data,
    /// The one key confirmation of a handshake.
    Confirmation,
    /// Any value (known-answer tests).
    Raw(u32),
}

impl NonceDomain {
    fn value(self) -> u32 {
        match self {
            NonceDomain::Control => 0,
            NonceDomain::Data => 1,
            NonceDomain::Confirmation => 2,
            NonceDomain::Raw(v) => v,
        }
    }
}

/// The nonce of message `counter` in `domain`.
pub fn nonce(domain: NonceDomain, counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&domain.value().to_le_bytes());
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("the message counter is exhausted: a new handshake is needed")]
    Exhausted,
    #[error("authentication failed (forged or corrupted, or sealed with another key)")]
    Forged,
    #[error("sealed message of {0} bytes is shorter than its tag")]
    TooShort(usize),
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// Seals messages in one direction.
pub struct Sealer {
    cipher: LessSafeKey,
    domain: NonceDomain,
    next: u64,
}

/// The cipher of a 32-byte key.
fn cipher(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, key).expect("ChaCha20-Poly1305 takes 32-byte keys"),
    )
}

impl Sealer {
    pub fn new(key: &[u8; 32], domain: NonceDomain) -> Self {
        Self::starting_at(key, domain, 0)
    }

    /// A sealer whose next counter is `next` (known-answer tests, exhaustion tests).
    pub fn starting_at(key: &[u8; 32], domain: NonceDomain, next: u64) -> Self {
        Self {
            cipher: cipher(key),
            domain,
            next,
        }
    }

    /// The counter the next message gets.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Encrypts `buf` in place; returns the counter used and the tag.
    pub fn seal_detached(
        &mut self,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<(u64, [u8; TAG_LEN]), CryptoError> {
        let counter = self.next;
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(CryptoError::Exhausted);
        }
        let nonce = Nonce::assume_unique_for_key(nonce(self.domain, counter));
        let tag = self
            .cipher
            .seal_in_place_separate_tag(nonce, Aad::from(aad), buf)
            .map_err(|_| CryptoError::Exhausted)?;
        self.next += 1;
        let tag: [u8; TAG_LEN] = tag.as_ref().try_into().expect("a 16-byte tag");
        Ok((counter, tag))
    }

    /// Encrypts `buf` in place and appends the tag; returns the counter used.
    pub fn seal(&mut self, aad: &[u8], buf: &mut Vec<u8>) -> Result<u64, CryptoError> {
        let (counter, tag) = self.seal_detached(aad, buf)?;
        buf.extend_from_slice(&tag);
        Ok(counter)
    }
}

/// Decrypts `sealed` (ciphertext then tag) in place; the plaintext length on success.
fn open_at(
    cipher: &LessSafeKey,
    domain: NonceDomain,
    counter: u64,
    aad: &[u8],
    sealed: &mut [u8],
) -> Result<usize, CryptoError> {
    if sealed.len() < TAG_LEN {
        return Err(CryptoError::TooShort(sealed.len()));
    }
    let nonce = Nonce::assume_unique_for_key(nonce(domain, counter));
    let plain = cipher
        .open_in_place(nonce, Aad::from(aad), sealed)
        .map_err(|_| CryptoError::Forged)?;
    Ok(plain.len())
}

/// Opens the messages of an ordered stream: the counter is implicit, one more each time.
pub struct StreamOpener {
    cipher: LessSafeKey,
    domain: NonceDomain,
    next: u64,
}

impl StreamOpener {
    pub fn new(key: &[u8; 32], domain: NonceDomain) -> Self {
        Self {
            cipher: cipher(key),
            domain,
            next: 0,
        }
    }

    /// Opens the next message in place; returns the plaintext length. A message dropped,
    /// repeated, reordered or altered fails (the stream is then unusable).
    pub fn open_in_place(&mut self, aad: &[u8], sealed: &mut [u8]) -> Result<usize, CryptoError> {
        if self.next >= REJECT_AFTER_MESSAGES {
            return Err(CryptoError::Exhausted);
        }
        let len = open_at(&self.cipher, self.domain, self.next, aad, sealed)?;
        self.next += 1;
        Ok(len)
    }

    /// Opens the next message and drops its tag from `buf`.
    pub fn open(&mut self, aad: &[u8], buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        let len = self.open_in_place(aad, buf)?;
        buf.truncate(len);
        Ok(())
    }
}

/// Opens datagrams that carry their counter, in any order, each once.
pub struct DatagramOpener {
    cipher: LessSafeKey,
    domain: NonceDomain,
    window: ReplayWindow,
}

impl DatagramOpener {
    pub fn new(key: &[u8; 32], domain: NonceDomain) -> Self {
        Self {
            cipher: cipher(key),
            domain,
            window: ReplayWindow::new(),
        }
    }

    /// Opens datagram `counter` in place; returns the plaintext length. Replays and counters
    /// behind the window are refused before any decryption; the window only moves for an
    /// authentic datagram.
    pub fn open_in_place(
        &mut self,
        counter: u64,
        aad: &[u8],
        sealed: &mut [u8],
    ) -> Result<usize, CryptoError> {
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(CryptoError::Exhausted);
        }
        self.window.check(counter)?;
        let len = open_at(&self.cipher, self.domain, counter, aad, sealed)?;
        self.window.accept(counter)?;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const RFC8439_PLAINTEXT: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    const RFC8439_CIPHERTEXT: &str = "
        d31a8d34648e60db7b86afbc53ef7ec2 a4aded51296e08fea9e2b5a736ee62d6
        3dbea45e8ca9671282fafb69da92728b 1a71de0a9e060b2905d6a5b67ecd3b36
        92ddbd7f2d778b8c9803aee328091b58 fab324e4fad675945585808b4831d7bc
        3ff4def08e4b7a9de576d26586cec64b 6116";
    const RFC8439_TAG: &str = "1ae10b594f09e26a7e902ecbd0600691";

    fn rfc8439_key() -> [u8; 32] {
        std::array::from_fn(|i| 0x80 + i as u8)
    }

    /// RFC 8439 §2.8.2's nonce 07000000 4041424344454647 is domain 7, counter
    /// 0x4746454443424140 in our layout.
    const RFC8439_DOMAIN: NonceDomain = NonceDomain::Raw(7);
    const RFC8439_COUNTER: u64 = 0x4746_4544_4342_4140;

    #[test]
    fn the_nonce_layout_is_domain_then_counter_little_endian() {
        assert_eq!(
            nonce(RFC8439_DOMAIN, RFC8439_COUNTER).to_vec(),
            unhex("070000004041424344454647")
        );
        assert_eq!(
            nonce(NonceDomain::Data, 1).to_vec(),
            unhex("01000000 0100000000000000")
        );
    }

    #[test]
    fn sealing_matches_the_rfc_8439_aead_vector() {
        let aad = unhex("50515253c0c1c2c3c4c5c6c7");
        let mut sealer = Sealer::starting_at(&rfc8439_key(), RFC8439_DOMAIN, RFC8439_COUNTER);
        let mut buf = RFC8439_PLAINTEXT.to_vec();
        let counter = sealer.seal(&aad, &mut buf).unwrap();
        assert_eq!(counter, RFC8439_COUNTER);
        let mut expected = unhex(RFC8439_CIPHERTEXT);
        expected.extend(unhex(RFC8439_TAG));
        assert_eq!(buf, expected);
        assert_eq!(sealer.next_counter(), RFC8439_COUNTER + 1);
    }

    #[test]
    fn opening_the_rfc_8439_vector_gives_the_plaintext() {
        let aad = unhex("50515253c0c1c2c3c4c5c6c7");
        let mut sealed = unhex(RFC8439_CIPHERTEXT);
        sealed.extend(unhex(RFC8439_TAG));
        let mut opener = DatagramOpener::new(&rfc8439_key(), RFC8439_DOMAIN);
        let len = opener
            .open_in_place(RFC8439_COUNTER, &aad, &mut sealed)
            .unwrap();
        assert_eq!(&sealed[..len], RFC8439_PLAINTEXT);
        // The same datagram again is a replay.
        let mut again = unhex(RFC8439_CIPHERTEXT);
        again.extend(unhex(RFC8439_TAG));
        assert_eq!(
            opener.open_in_place(RFC8439_COUNTER, &aad, &mut again),
            Err(CryptoError::Replay(ReplayError::Duplicate(RFC8439_COUNTER)))
        );
    }

    fn pair(domain: NonceDomain) -> (Sealer, DatagramOpener) {
        let key = [0x42; 32];
        (Sealer::new(&key, domain), DatagramOpener::new(&key, domain))
    }

    fn sealed(sealer: &mut Sealer, text: &[u8]) -> (u64, Vec<u8>) {
        let mut buf = text.to_vec();
        let c = sealer.seal(b"hdr", &mut buf).unwrap();
        (c, buf)
    }

    #[test]
    fn datagrams_open_out_of_order_but_once() {
        let (mut s, mut o) = pair(NonceDomain::Data);
        let msgs: Vec<_> = (0..10).map(|i| sealed(&mut s, &[i; 100])).collect();
        for i in [3usize, 0, 9, 1, 2, 8, 4, 5, 7, 6] {
            let (c, mut m) = msgs[i].clone();
            let len = o.open_in_place(c, b"hdr", &mut m).unwrap();
            assert_eq!(&m[..len], &[i as u8; 100]);
        }
        for (c, m) in &msgs {
            let mut m = m.clone();
            assert_eq!(
                o.open_in_place(*c, b"hdr", &mut m),
                Err(CryptoError::Replay(ReplayError::Duplicate(*c)))
            );
        }
    }

    #[test]
    fn datagrams_behind_the_window_are_refused() {
        let (mut s, mut o) = pair(NonceDomain::Data);
        let first = sealed(&mut s, b"first");
        let mut last = None;
        for _ in 0..crate::crypto::replay::WINDOW + 1 {
            last = Some(sealed(&mut s, b"x"));
        }
        let (c, mut m) = last.unwrap();
        o.open_in_place(c, b"hdr", &mut m).unwrap();
        let (c, mut m) = first;
        assert!(matches!(
            o.open_in_place(c, b"hdr", &mut m),
            Err(CryptoError::Replay(ReplayError::TooOld { .. }))
        ));
    }

    #[test]
    fn tampering_anywhere_is_refused_and_does_not_move_the_window() {
        let (mut s, mut o) = pair(NonceDomain::Data);
        let (c, m) = sealed(&mut s, b"some frame bytes");
        for i in 0..m.len() {
            let mut bad = m.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                o.open_in_place(c, b"hdr", &mut bad),
                Err(CryptoError::Forged),
                "byte {i}"
            );
        }
        // Another counter, other associated data, a truncated message.
        let mut bad = m.clone();
        assert_eq!(
            o.open_in_place(c + 1, b"hdr", &mut bad),
            Err(CryptoError::Forged)
        );
        let mut bad = m.clone();
        assert_eq!(
            o.open_in_place(c, b"hdR", &mut bad),
            Err(CryptoError::Forged)
        );
        let mut short = m[..TAG_LEN - 1].to_vec();
        assert_eq!(
            o.open_in_place(c, b"hdr", &mut short),
            Err(CryptoError::TooShort(TAG_LEN - 1))
        );
        // The genuine one still opens: forgeries did not burn its counter.
        let mut good = m.clone();
        assert!(o.open_in_place(c, b"hdr", &mut good).is_ok());
    }

    #[test]
    fn domains_do_not_open_each_other() {
        let key = [9; 32];
        let mut s = Sealer::new(&key, NonceDomain::Control);
        let mut buf = b"hello".to_vec();
        let c = s.seal(b"", &mut buf).unwrap();
        let mut o = DatagramOpener::new(&key, NonceDomain::Data);
        assert_eq!(o.open_in_place(c, b"", &mut buf), Err(CryptoError::Forged));
    }

    #[test]
    fn a_stream_opens_in_order_only() {
        let key = [1; 32];
        let mut s = Sealer::new(&key, NonceDomain::Control);
        let mut o = StreamOpener::new(&key, NonceDomain::Control);
        let mut a = b"a".to_vec();
        let mut b = b"b".to_vec();
        s.seal(b"", &mut a).unwrap();
        s.seal(b"", &mut b).unwrap();
        // b before a: refused.
        assert_eq!(o.open(b"", &mut b.clone()), Err(CryptoError::Forged));
        let mut a2 = a.clone();
        o.open(b"", &mut a2).unwrap();
        assert_eq!(a2, b"a");
        // a again (a replay): refused.
        assert_eq!(o.open(b"", &mut a.clone()), Err(CryptoError::Forged));
        o.open(b"", &mut b).unwrap();
        assert_eq!(b, b"b");
    }

    #[test]
    fn a_sender_stops_before_its_counter_wraps() {
        let mut s = Sealer::starting_at(&[3; 32], NonceDomain::Data, REJECT_AFTER_MESSAGES - 1);
        let mut buf = vec![0u8; 4];
        s.seal(b"", &mut buf).unwrap();
        let mut buf = vec![0u8; 4];
        assert_eq!(s.seal(b"", &mut buf), Err(CryptoError::Exhausted));
        assert_eq!(buf, vec![0u8; 4], "nothing sealed");
        let mut o = DatagramOpener::new(&[3; 32], NonceDomain::Data);
        assert_eq!(
            o.open_in_place(u64::MAX, b"", &mut [0u8; 32]),
            Err(CryptoError::Exhausted)
        );
    }
}
