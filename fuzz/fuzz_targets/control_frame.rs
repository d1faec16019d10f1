//! Control connection bytes from a peer: the preamble, plain frames back to back, a sealed
//! frame, and the hello check.
//!
//! Invariants: nothing panics; a negotiated version is one both sides speak; a frame that
//! decodes takes no more bytes than it has, re-encodes and decodes to the same message, and
//! seals and opens to it; a sealed frame not sealed with our key is refused; a hello that
//! passes the check has a name other than ours, a 12-bit short ID, prefixes of at most 32
//! bits and a bounded nickname.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use weave_router::crypto::{NonceDomain, Sealer, StreamOpener};
use weave_router::mesh::protocol::*;
use weave_router_fuzz::{peer, short_id};

const KEY: [u8; 32] = [7; 32];

fn ours() -> Hello {
    Hello {
        name: peer(1),
        nickname: "us".into(),
        short_id: short_id(1),
        uid: 1,
        underlay: Ipv4Addr::new(192, 168, 0, 1),
        data_port: 6784,
        trusted_subnets: vec!["192.168.0.0/16".parse().expect("a CIDR")],
    }
}

fn check_hello_invariants(theirs: &Hello) {
    let ours = ours();
    // Trust is computed for every hello, checked or not: it must not panic.
    let _ = ours.trusted_both_ways(theirs);
    if check_hello(&ours, theirs).is_ok() {
        assert_ne!(theirs.name, ours.name);
        assert!(theirs.short_id.in_range());
        assert!(theirs.trusted_subnets.iter().all(|s| s.prefix_len <= 32));
        assert!(theirs.nickname.len() <= MAX_NICKNAME_LEN);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(theirs) = Versions::decode(&data[..data.len().min(PREAMBLE_LEN)]) {
        assert!(theirs.min >= 1 && theirs.min <= theirs.max);
        if let Ok(v) = negotiate(Versions::OURS, theirs) {
            assert!((MIN_VERSION..=MAX_VERSION).contains(&v));
            assert!((theirs.min..=theirs.max).contains(&v));
        }
    }
    if let Some(&flag) = data.first() {
        let _ = agree_on_encryption(true, flag);
        let _ = agree_on_encryption(false, flag);
    }

    // A sealed connection: bytes nobody sealed with our key never open.
    let mut opener = StreamOpener::new(&KEY, NonceDomain::Control);
    if let Ok(Some(_)) = decode_sealed_frame(&mut opener, data) {
        panic!("a frame not sealed by us opened");
    }

    let mut buf = data;
    while let Ok(Some((message, used))) = decode_frame(buf) {
        assert!(used >= FRAME_HEADER_LEN && used <= buf.len());
        let frame = encode_frame(&message).expect("a decoded message encodes");
        let (again, n) = decode_frame(&frame)
            .expect("an encoded frame decodes")
            .expect("whole");
        assert_eq!(n, frame.len());
        assert_eq!(again, message);
        let mut sealer = Sealer::new(&KEY, NonceDomain::Control);
        let mut opener = StreamOpener::new(&KEY, NonceDomain::Control);
        let sealed = seal_frame(&mut sealer, &frame).expect("seals");
        let (opened, n) = decode_sealed_frame(&mut opener, &sealed)
            .expect("opens")
            .expect("whole");
        assert_eq!((opened, n), (message.clone(), sealed.len()));
        if let Message::Hello(hello) = &message {
            check_hello_invariants(hello);
        }
        buf = &buf[used..];
    }
});
