//! The handshake: Noise `NNpsk0_25519_ChaChaPoly_BLAKE2s`, then a key confirmation.
//!
//! Why this pattern: a Weave mesh has one secret, the password, and peers have no long-term
//! keys to check (a peer's name is only a claim). `NN` gives each run fresh ephemeral
//! Curve25519 keys, so recorded traffic stays secret even if the password leaks later;
//! `psk0` mixes the password's key in before the first message, so the responder rejects a
//! wrong password at the first message and nobody without it learns anything. The patterns
//! with static keys (`XXpsk3`, `IKpsk2`) would add a round trip or key distribution and
//! authenticate nothing more here.
//!
//! The two Noise messages alone cannot stop a replayed first message: the responder answers
//! it like any other. So the initiator then sends a confirmation sealed with the new keys;
//! the responder hands out keys only once it opens, and a replayer, lacking the ephemeral
//! private key, cannot produce it.
//!
//! ```text
//! initiator -> responder   request       e, payload tag      (48 bytes)
//! responder -> initiator   response      e, ee, payload tag  (48 bytes)
//! initiator -> responder   confirmation  sealed label        (45 bytes)
//! ```

use super::aead::{DatagramOpener, NonceDomain, Sealer, StreamOpener, TAG_LEN};
use super::password::{wipe, PresharedKey};

pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake hash: a handshake of another protocol or version never completes.
pub const PROLOGUE: &[u8] = b"weave-router handshake v1";
const CONFIRMATION_LABEL: &[u8] = b"weave-router key confirmation";

pub const REQUEST_LEN: usize = 32 + TAG_LEN;
pub const RESPONSE_LEN: usize = 32 + TAG_LEN;
pub const CONFIRMATION_LEN: usize = CONFIRMATION_LABEL.len() + TAG_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("the remote end's handshake does not verify: it has another password")]
    WrongPassword,
    #[error("{what} of {len} bytes, expected {expected}")]
    Malformed {
        what: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("the key confirmation does not verify (a replayed handshake, or another password)")]
    Unconfirmed,
    #[error("handshake: {0}")]
    Noise(String),
}

fn noise(e: snow::Error) -> HandshakeError {
    HandshakeError::Noise(e.to_string())
}

fn check_len(what: &'static str, msg: &[u8], expected: usize) -> Result<(), HandshakeError> {
    if msg.len() == expected {
        Ok(())
    } else {
        Err(HandshakeError::Malformed {
            what,
            len: msg.len(),
            expected,
        })
    }
}

fn builder(psk: &PresharedKey) -> Result<snow::Builder<'_>, HandshakeError> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().map_err(noise)?;
    snow::Builder::new(params)
        .psk(0, psk.bytes())
        .map_err(noise)?
        .prologue(PROLOGUE)
        .map_err(noise)
}

/// One key per direction, from a completed handshake.
pub struct SessionKeys {
    send: [u8; 32],
    receive: [u8; 32],
}

impl SessionKeys {
    fn split(hs: &mut snow::HandshakeState) -> Self {
        let (i2r, r2i) = hs.dangerously_get_raw_split();
        if hs.is_initiator() {
            Self {
                send: i2r,
                receive: r2i,
            }
        } else {
            Self {
                send: r2i,
                receive: i2r,
            }
        }
    }

    pub fn sealer(&self, domain: NonceDomain) -> Sealer {
        Sealer::new(&self.send, domain)
    }

    pub fn stream_opener(&self, domain: NonceDomain) -> StreamOpener {
        StreamOpener::new(&self.receive, domain)
    }

    pub fn datagram_opener(&self, domain: NonceDomain) -> DatagramOpener {
        DatagramOpener::new(&self.receive, domain)
    }
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        wipe(&mut self.send);
        wipe(&mut self.receive);
    }
}

/// The side that dials.
pub struct Initiator {
    hs: snow::HandshakeState,
}

impl Initiator {
    /// Starts a handshake: the request to send.
    pub fn start(psk: &PresharedKey) -> Result<(Self, Vec<u8>), HandshakeError> {
        let mut hs = builder(psk)?.build_initiator().map_err(noise)?;
        let mut request = vec![0u8; REQUEST_LEN];
        let n = hs.write_message(&[], &mut request).map_err(noise)?;
        request.truncate(n);
        Ok((Self { hs }, request))
    }

    /// Takes the response: the session keys and the confirmation to send.
    pub fn finish(mut self, response: &[u8]) -> Result<(SessionKeys, Vec<u8>), HandshakeError> {
        check_len("handshake response", response, RESPONSE_LEN)?;
        let mut payload = [0u8; RESPONSE_LEN];
        self.hs
            .read_message(response, &mut payload)
            .map_err(|_| HandshakeError::WrongPassword)?;
        let keys = SessionKeys::split(&mut self.hs);
        let mut confirmation = CONFIRMATION_LABEL.to_vec();
        keys.sealer(NonceDomain::Confirmation)
            .seal(&[], &mut confirmation)
            .map_err(|e| HandshakeError::Noise(e.to_string()))?;
        Ok((keys, confirmation))
    }
}

/// The side that accepts.
pub struct Responder;

impl Responder {
    /// Takes a request: the response to send, and the keys once confirmed.
    pub fn respond(
        psk: &PresharedKey,
        request: &[u8],
    ) -> Result<(AwaitingConfirmation, Vec<u8>), HandshakeError> {
        check_len("handshake request", request, REQUEST_LEN)?;
        let mut hs = builder(psk)?.build_responder().map_err(noise)?;
        let mut payload = [0u8; REQUEST_LEN];
        hs.read_message(request, &mut payload)
            .map_err(|_| HandshakeError::WrongPassword)?;
        let mut response = vec![0u8; RESPONSE_LEN];
        let n = hs.write_message(&[], &mut response).map_err(noise)?;
        response.truncate(n);
        let keys = SessionKeys::split(&mut hs);
        Ok((AwaitingConfirmation { keys }, response))
    }
}

/// A responder that has answered and waits for proof that the initiator holds the keys.
pub struct AwaitingConfirmation {
    keys: SessionKeys,
}

impl AwaitingConfirmation {
    pub fn confirm(self, confirmation: &[u8]) -> Result<SessionKeys, HandshakeError> {
        check_len("key confirmation", confirmation, CONFIRMATION_LEN)?;
        let mut buf = confirmation.to_vec();
        self.keys
            .stream_opener(NonceDomain::Confirmation)
            .open(&[], &mut buf)
            .map_err(|_| HandshakeError::Unconfirmed)?;
        if buf != CONFIRMATION_LABEL {
            return Err(HandshakeError::Unconfirmed);
        }
        Ok(self.keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psk(b: u8) -> PresharedKey {
        PresharedKey::from_bytes([b; 32])
    }

    struct Transcript {
        request: Vec<u8>,
        response: Vec<u8>,
        confirmation: Vec<u8>,
    }

    fn run(i_psk: &PresharedKey, r_psk: &PresharedKey) -> (SessionKeys, SessionKeys, Transcript) {
        let (init, request) = Initiator::start(i_psk).unwrap();
        let (waiting, response) = Responder::respond(r_psk, &request).unwrap();
        let (ik, confirmation) = init.finish(&response).unwrap();
        let rk = waiting.confirm(&confirmation).unwrap();
        (
            ik,
            rk,
            Transcript {
                request,
                response,
                confirmation,
            },
        )
    }

    fn talk(from: &SessionKeys, to: &SessionKeys) -> bool {
        let mut buf = b"a control frame".to_vec();
        from.sealer(NonceDomain::Control)
            .seal(&[], &mut buf)
            .unwrap();
        to.stream_opener(NonceDomain::Control)
            .open(&[], &mut buf)
            .is_ok()
            && buf == b"a control frame"
    }

    #[test]
    fn the_same_password_gives_keys_that_work_both_ways() {
        let (ik, rk, t) = run(&psk(1), &psk(1));
        assert_eq!(t.request.len(), REQUEST_LEN);
        assert_eq!(t.response.len(), RESPONSE_LEN);
        assert_eq!(t.confirmation.len(), CONFIRMATION_LEN);
        assert!(talk(&ik, &rk));
        assert!(talk(&rk, &ik));
        // Directions have their own keys: our own messages do not open with our receive key.
        assert!(!talk(&ik, &ik));
        // Datagrams too.
        let mut dgram = b"frame".to_vec();
        let c = ik.sealer(NonceDomain::Data).seal(&[], &mut dgram).unwrap();
        let n = rk
            .datagram_opener(NonceDomain::Data)
            .open_in_place(c, &[], &mut dgram)
            .unwrap();
        assert_eq!(&dgram[..n], b"frame");
    }

    #[test]
    fn every_handshake_gives_new_keys() {
        let (a, _, t1) = run(&psk(1), &psk(1));
        let (b, _, t2) = run(&psk(1), &psk(1));
        assert_ne!(t1.request, t2.request);
        assert_ne!(a.send, b.send);
    }

    #[test]
    fn a_wrong_password_fails_on_both_sides() {
        // The responder refuses the request outright.
        let (init, request) = Initiator::start(&psk(1)).unwrap();
        assert_eq!(
            Responder::respond(&psk(2), &request).err(),
            Some(HandshakeError::WrongPassword)
        );
        // A response made with another password does not verify at the initiator.
        let (_, other_request) = Initiator::start(&psk(2)).unwrap();
        let (_, response) = Responder::respond(&psk(2), &other_request).unwrap();
        assert_eq!(
            init.finish(&response).err(),
            Some(HandshakeError::WrongPassword)
        );
    }

    #[test]
    fn a_replayed_request_never_yields_keys() {
        let (_, _, recorded) = run(&psk(1), &psk(1));
        // The responder answers a replayed request (it cannot tell)...
        let (waiting, _) = Responder::respond(&psk(1), &recorded.request).unwrap();
        // ...but the recorded confirmation belongs to other keys.
        assert_eq!(
            waiting.confirm(&recorded.confirmation).err(),
            Some(HandshakeError::Unconfirmed)
        );
        let (waiting, _) = Responder::respond(&psk(1), &recorded.request).unwrap();
        assert_eq!(
            waiting.confirm(&[0u8; CONFIRMATION_LEN]).err(),
            Some(HandshakeError::Unconfirmed)
        );
    }

    #[test]
    fn a_replayed_response_is_refused() {
        let (_, _, recorded) = run(&psk(1), &psk(1));
        let (init, _) = Initiator::start(&psk(1)).unwrap();
        assert_eq!(
            init.finish(&recorded.response).err(),
            Some(HandshakeError::WrongPassword)
        );
    }

    #[test]
    fn tampered_and_malformed_messages_are_refused() {
        let (_, request) = Initiator::start(&psk(1)).unwrap();
        for i in [0, 31, 32, REQUEST_LEN - 1] {
            let mut bad = request.clone();
            bad[i] ^= 0x80;
            assert_eq!(
                Responder::respond(&psk(1), &bad).err(),
                Some(HandshakeError::WrongPassword),
                "byte {i}"
            );
        }
        assert!(matches!(
            Responder::respond(&psk(1), &request[..10]).err(),
            Some(HandshakeError::Malformed { len: 10, .. })
        ));
        assert!(matches!(
            Responder::respond(&psk(1), b"").err(),
            Some(HandshakeError::Malformed { len: 0, .. })
        ));
        let (init, request) = Initiator::start(&psk(1)).unwrap();
        let (waiting, mut response) = Responder::respond(&psk(1), &request).unwrap();
        response[40] ^= 1;
        assert_eq!(
            init.finish(&response).err(),
            Some(HandshakeError::WrongPassword)
        );
        assert!(matches!(
            waiting.confirm(&[1, 2, 3]).err(),
            Some(HandshakeError::Malformed { len: 3, .. })
        ));
    }

    #[test]
    fn keys_are_not_printed() {
        let (ik, _, _) = run(&psk(1), &psk(1));
        assert_eq!(format!("{ik:?}"), "SessionKeys(..)");
    }
}
