//! The text parsers of addresses: `Ipv4Cidr` (`10.2.1.5/24`), `Ipv4Net` (`10.32.0.0/12`),
//! attach's address specs (`net:default`, `net:CIDR`, `ip:CIDR`) and `WEAVE_CIDR`.
//!
//! Invariants: nothing panics; what parses prints back to text that parses to the same
//! value; a prefix is at most 32 bits; a network has no host bits set and contains its own
//! range; errors are one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weave_router::docker::cidr::WeaveCidr;
use weave_router::ipam::spec::{parse_all, AddressSpec};
use weave_router::net::{Ipv4Cidr, Ipv4Net};

fn one_line(e: impl std::fmt::Display) {
    assert!(!e.to_string().contains('\n'), "a two-line error: {e}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<Ipv4Cidr>() {
        Ok(c) => {
            assert!(c.prefix_len <= 32);
            assert!(c.contains(c.addr));
            assert_eq!(c.to_string().parse::<Ipv4Cidr>(), Ok(c));
            let net = Ipv4Net::of(c);
            assert!(net.contains(c.addr));
            assert_eq!(net.prefix_len(), c.prefix_len);
        }
        Err(e) => one_line(e),
    }
    match text.parse::<Ipv4Net>() {
        Ok(n) => {
            assert!(n.prefix_len() <= 32);
            assert_eq!(n.to_string().parse::<Ipv4Net>(), Ok(n));
            assert_eq!(Ipv4Net::new(n.network(), n.prefix_len()), Ok(n));
            assert!(n.contains(n.network()) && n.contains(n.broadcast()));
            assert_eq!(n.range().len(), n.size());
            assert!(n.contains_cidr(n));
            let usable = n.usable();
            assert!(n.contains(usable.first()) && n.contains(usable.last()));
            // A few subnets one and two bits longer: inside, in order, disjoint.
            for extra in 1..=2u8 {
                let subs: Vec<Ipv4Net> = n.subnets(n.prefix_len() + extra).take(8).collect();
                if n.prefix_len() + extra > 32 {
                    assert!(subs.is_empty());
                }
                for w in subs.windows(2) {
                    assert!(w[0] < w[1] && !w[0].overlaps(w[1]));
                }
                assert!(subs.iter().all(|s| n.contains_cidr(*s)));
            }
        }
        Err(e) => one_line(e),
    }
    match text.parse::<AddressSpec>() {
        Ok(spec) => assert_eq!(spec.to_string().parse::<AddressSpec>(), Ok(spec)),
        Err(e) => one_line(e),
    }
    let words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    match parse_all(&words) {
        Ok(specs) => assert_eq!(specs.len(), words.len().max(1)),
        Err(e) => one_line(e),
    }
    match WeaveCidr::parse(Some(text)) {
        Ok(w) => assert_eq!(WeaveCidr::parse(Some(&w.to_text())), Ok(w)),
        Err(e) => one_line(e),
    }
});
