//! The password handshake from both sides, against a hostile peer.
//!
//! The input is a transcript (request, response, confirmation; each a length byte and that
//! many bytes, the rest for the last) and a set of byte flips applied to an honest run.
//!
//! Invariants: nothing panics; a responder never completes on bytes that are not an honest
//! initiator's (without the password the confirmation cannot be made); an initiator never
//! accepts a response made up without the password; an honest run whose messages were
//! changed in any byte yields no keys on the side that read the changed message, and an
//! unchanged run yields keys that talk both ways.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weave_router::crypto::{Initiator, NonceDomain, PresharedKey, Responder, SessionKeys};

fn psk() -> PresharedKey {
    PresharedKey::from_bytes([0x42; 32])
}

/// Splits the input into three messages: a length byte before each of the first two.
fn split(data: &[u8]) -> [&[u8]; 3] {
    let mut rest = data;
    let mut take = || {
        let Some((&n, tail)) = rest.split_first() else {
            return &[][..];
        };
        let n = (n as usize).min(tail.len());
        let (head, tail) = tail.split_at(n);
        rest = tail;
        head
    };
    let (a, b) = (take(), take());
    [a, b, rest]
}

fn talk(from: &SessionKeys, to: &SessionKeys) -> bool {
    let mut buf = b"a control frame".to_vec();
    from.sealer(NonceDomain::Control)
        .seal(&[], &mut buf)
        .expect("seals");
    to.stream_opener(NonceDomain::Control)
        .open(&[], &mut buf)
        .is_ok()
        && buf == b"a control frame"
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let [request, response, confirmation] = split(data);
    match mode % 3 {
        // A hostile initiator: its own request and confirmation.
        0 => {
            if let Ok((waiting, _response)) = Responder::respond(&psk(), request) {
                assert!(
                    waiting.confirm(confirmation).is_err(),
                    "a confirmation made without the keys was accepted"
                );
            }
        }
        // A hostile responder: any response to our request.
        1 => {
            let (initiator, _request) = Initiator::start(&psk()).expect("starts");
            assert!(
                initiator.finish(response).is_err(),
                "a response made without the password was accepted"
            );
        }
        // A man in the middle flipping bytes of an honest run.
        _ => {
            // Pairs of (position, xor mask).
            let flip = |msg: &mut Vec<u8>, with: &[u8]| {
                for pair in with.chunks_exact(2) {
                    let at = pair[0] as usize % msg.len().max(1);
                    if let Some(b) = msg.get_mut(at) {
                        *b ^= pair[1];
                    }
                }
            };
            let (initiator, mut req) = Initiator::start(&psk()).expect("starts");
            let original_req = req.clone();
            flip(&mut req, request);
            let responded = Responder::respond(&psk(), &req);
            if req != original_req {
                assert!(responded.is_err(), "a changed request was answered");
                return;
            }
            let (waiting, mut resp) = responded.expect("an honest request is answered");
            let original_resp = resp.clone();
            flip(&mut resp, response);
            let finished = initiator.finish(&resp);
            if resp != original_resp {
                assert!(
                    finished.is_err(),
                    "a changed handshake gave the initiator keys"
                );
                return;
            }
            let (ikeys, mut conf) = finished.expect("an honest run finishes");
            let original_conf = conf.clone();
            flip(&mut conf, confirmation);
            let confirmed = waiting.confirm(&conf);
            if conf != original_conf {
                assert!(confirmed.is_err(), "a changed confirmation was accepted");
                return;
            }
            let rkeys = confirmed.expect("an honest run confirms");
            assert!(talk(&ikeys, &rkeys) && talk(&rkeys, &ikeys));
        }
    }
});
