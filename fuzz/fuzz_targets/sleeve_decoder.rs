//! The sleeve's receive path for one peer: datagram headers, reassembly and opening
//! (plain or sealed), then the route header and where a routed frame goes. A sequence of
//! datagrams from the input: made up ones, frames our own encoder cut into segments,
//! delivered whole, in part or again, and bundles of small frames.
//!
//! Invariants: nothing panics; a header that parses writes back to the same bytes; a frame
//! whose segments arrive in order and uninterrupted comes out exactly as it went in, once,
//! at its last segment; with a key, every frame that comes out is one we sealed and none
//! comes out twice (replays and made-up datagrams never do); a route header reads back as
//! written; a routed frame is never passed back to the neighbour it came from nor to its
//! origin, never past its hop limit, and always with one hop less; a bundle of ours gives
//! back its frames, in order, once; any bundle's payload splits without panicking.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weave_router::crypto::{DatagramOpener, NonceDomain, Sealer};
use weave_router::sleeve::bundle::{self, Bundle, Contents};
use weave_router::sleeve::forwarding::{received, Neighbour, Routing, Send};
use weave_router::sleeve::packet::{segments, Decoder, Encoder, Header, RouteHeader, HEADER_LEN};

const KEY: [u8; 32] = [9; 32];
const PEER: u16 = 2;
const LOCAL: u16 = 1;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A datagram made up by anyone.
    Raw(Vec<u8>),
    /// A frame of ours: its payload, segment size, and which segments to drop (a bit each).
    Frame {
        payload: Vec<u8>,
        segment: u16,
        drop_mask: u64,
    },
    /// Every datagram of an earlier frame again.
    Replay(u8),
    /// Small frames of ours in one bundle (as many as fit a datagram of `capacity` bytes).
    Bundle { frames: Vec<Vec<u8>>, capacity: u16 },
}

fn check_route(payload: &[u8], routing: &Routing) {
    let Ok((header, _rest)) = RouteHeader::parse(payload) else {
        return;
    };
    let mut out = [0u8; RouteHeader::LEN];
    header.write(&mut out);
    assert_eq!(RouteHeader::parse(&out).map(|(h, _)| h), Ok(header));
    let neighbour = |p: u16| {
        (p < 8).then_some(Neighbour {
            carried: p % 2 == 0,
            relays: p % 3 != 0,
        })
    };
    let r = received(LOCAL, PEER, header, neighbour, routing);
    for send in &r.forward {
        let Send::Routed(to, onward) = send else {
            panic!("a relayed frame goes out without its route header");
        };
        assert!(
            *to != PEER && *to != header.origin,
            "passed back: {header:?} to {to}"
        );
        assert!(header.hops_left > 0, "passed on past its hop limit");
        assert_eq!(onward.hops_left, header.hops_left - 1);
        assert_eq!(
            (onward.origin, onward.destination),
            (header.origin, header.destination)
        );
    }
    if header.origin == LOCAL {
        assert!(
            !r.deliver && r.forward.is_empty(),
            "our own frame came back and was taken"
        );
    }
}

fuzz_target!(|input: (bool, Vec<Op>)| {
    let (sealed, ops) = input;
    let (mut encoder, mut decoder) = if sealed {
        (
            Encoder::new(PEER, Some(Sealer::new(&KEY, NonceDomain::Data))),
            Decoder::new(Some(DatagramOpener::new(&KEY, NonceDomain::Data))),
        )
    } else {
        (Encoder::new(PEER, None), Decoder::new(None))
    };
    let routing = Routing {
        next_hop: HashMap::from([(3, 4), (5, 2), (6, 6), (7, 4)]),
        children: HashMap::from([(3, vec![2, 4, 6]), (5, vec![1, 3]), (7, vec![4, 5, 7])]),
        beside_fast_path: sealed,
    };
    // Frames we encoded: their payload and datagrams; with a key, those not out yet.
    let mut sent: Vec<(Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
    let mut not_out: Vec<Vec<u8>> = Vec::new();
    // With a key only frames we sealed come out, each once.
    let authentic = |not_out: &mut Vec<Vec<u8>>, p: &[u8]| {
        let at = not_out.iter().position(|q| q == p);
        assert!(at.is_some(), "a made-up or replayed frame opened: {p:?}");
        not_out.remove(at.expect("checked"));
    };
    let (mut out, mut scratch) = (Vec::new(), Vec::new());
    let feed = |decoder: &mut Decoder, datagram: &[u8]| -> Option<Vec<u8>> {
        let header = Header::parse(datagram).ok()?;
        let mut again = [0u8; HEADER_LEN];
        header.write(&mut again);
        assert_eq!(
            again,
            datagram[..HEADER_LEN],
            "a header did not write back as read"
        );
        let mut d = datagram.to_vec();
        let payload = decoder.decode(header, &mut d).ok()??.to_vec();
        if header.routed {
            check_route(&payload, &routing);
        }
        if header.bundle {
            // Whatever it holds splits; a malformed length ends it with one error.
            let split: Vec<_> = bundle::frames(&payload).collect();
            assert!(split.iter().filter(|f| f.is_err()).count() <= 1);
            assert!(split.iter().rev().skip(1).all(|f| f.is_ok()));
        }
        Some(payload)
    };
    for op in ops.iter().take(32) {
        match op {
            Op::Raw(bytes) => {
                if let Some(p) = feed(&mut decoder, bytes) {
                    if sealed {
                        authentic(&mut not_out, &p);
                    }
                }
            }
            Op::Frame {
                payload,
                segment,
                drop_mask,
            } => {
                let segment = usize::from(*segment % 2048).max(8);
                // The encoder appends: one frame's datagrams at a time.
                out.clear();
                if encoder
                    .encode(payload, segment, &mut out, &mut scratch)
                    .is_err()
                {
                    continue;
                }
                let stride = HEADER_LEN + segment;
                let datagrams: Vec<Vec<u8>> = segments(&out, stride).map(<[u8]>::to_vec).collect();
                if sealed {
                    not_out.push(payload.clone());
                }
                let mut whole = true;
                for (i, d) in datagrams.iter().enumerate() {
                    if drop_mask & (1 << (i % 64)) != 0 && datagrams.len() > 1 {
                        whole = false;
                        continue;
                    }
                    let got = feed(&mut decoder, d);
                    let last = i + 1 == datagrams.len();
                    match got {
                        Some(p) => {
                            assert!(last, "a frame came out before its last segment");
                            // Without a key a frame missing segments may come out of
                            // made-up ones; with one only what we sealed does.
                            if whole {
                                assert!(p == *payload, "a frame came out changed");
                            }
                            if sealed {
                                authentic(&mut not_out, &p);
                            }
                        }
                        None => assert!(!(last && whole), "a whole frame did not come out"),
                    }
                }
                sent.push((payload.clone(), datagrams));
            }
            Op::Bundle { frames, capacity } => {
                let capacity = usize::from(*capacity % 2048).max(64);
                let mut b = Bundle::default();
                let mut put = Vec::new();
                for f in frames.iter().take(64) {
                    if !Bundle::takes(f.len(), capacity) || !b.has_room(f.len(), capacity) {
                        break;
                    }
                    b.push(f);
                    put.push(f.clone());
                }
                if b.is_empty() {
                    continue;
                }
                out.clear();
                let (is_bundle, encoded) = match b.contents() {
                    Contents::Single(f) => (false, encoder.encode(f, 4096, &mut out, &mut scratch)),
                    Contents::Bundle(body) => (true, encoder.encode_bundle(body, &mut out)),
                };
                if encoded.is_err() {
                    continue;
                }
                assert_eq!(is_bundle, put.len() > 1);
                let payload = match b.contents() {
                    Contents::Single(f) | Contents::Bundle(f) => f.to_vec(),
                };
                if sealed {
                    not_out.push(payload.clone());
                }
                let datagrams = vec![out.clone()];
                let got = feed(&mut decoder, &out).expect("a bundle of ours did not come out");
                assert!(got == payload, "a bundle came out changed");
                if is_bundle {
                    let split: Vec<Vec<u8>> = bundle::frames(&got)
                        .map(|f| f.expect("a frame of ours is well formed").to_vec())
                        .collect();
                    assert_eq!(split, put, "a bundle's frames came out changed or reordered");
                }
                if sealed {
                    authentic(&mut not_out, &got);
                }
                sent.push((payload, datagrams));
            }
            Op::Replay(k) => {
                let Some((_, datagrams)) = sent.get(usize::from(*k) % sent.len().max(1)) else {
                    continue;
                };
                for d in datagrams.clone() {
                    if let Some(p) = feed(&mut decoder, &d) {
                        if sealed {
                            authentic(&mut not_out, &p);
                        }
                    }
                }
            }
        }
    }
});
