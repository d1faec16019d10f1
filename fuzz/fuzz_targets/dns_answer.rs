//! The DNS resolver's answer to any query, over UDP and TCP, from a fixed record store
//! (names with one, several and many addresses).
//!
//! Invariants: nothing panics; the fast path (a plain A question for a name we hold) and
//! the parsed path give the same answer: both the same outcome, and replies that parse to
//! the same header, question, EDNS and set of answers (their order is shuffled on purpose);
//! every reply carries the query's ID; a UDP reply fits the query's limit.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use weave_router::dns::records::Records;
use weave_router::dns::server::{Outcome, Resolver, Transport, MAX_UDP_PAYLOAD};
use weave_router_fuzz::peer;

fn resolver() -> &'static Resolver {
    static RESOLVER: OnceLock<Resolver> = OnceLock::new();
    RESOLVER.get_or_init(|| {
        let records = Records::new(peer(1));
        let add = |name: &str, addrs: &[[u8; 4]]| {
            for (i, a) in addrs.iter().enumerate() {
                records
                    .add(&format!("c{i}-{name}"), Ipv4Addr::from(*a), name)
                    .expect("a valid record");
            }
        };
        add("a.weave.local.", &[[10, 32, 0, 1]]);
        add("two.weave.local.", &[[10, 32, 0, 2], [10, 32, 0, 3]]);
        add("Mixed-Case.weave.local.", &[[10, 32, 0, 4]]);
        add("x.y.weave.local.", &[[10, 32, 0, 5]]);
        let many: Vec<[u8; 4]> = (0..40).map(|i| [10, 32, 1, i]).collect();
        add("many.weave.local.", &many);
        let domain = "weave.local.".parse().expect("a name");
        Resolver::new(Arc::new(records), domain, 30)
    })
}

/// A reply in a form that does not depend on the order of the answers.
fn normalised(reply: &[u8]) -> String {
    let m = Message::from_vec(reply).expect("our reply parses");
    let mut answers: Vec<String> = m
        .answers
        .iter()
        .map(|r| format!("{} {} {} {:?}", r.name, r.ttl, r.record_type(), r.data))
        .collect();
    answers.sort();
    let queries: Vec<String> = m
        .queries
        .iter()
        .map(|q| format!("{} {:?}", q.name(), q))
        .collect();
    format!(
        "{:?}\n{queries:?}\n{answers:?}\n{:?}\n{}/{}",
        m.metadata,
        m.edns.as_ref().map(|e| e.max_payload()),
        m.authorities.len(),
        m.additionals.len()
    )
}

fuzz_target!(|query: &[u8]| {
    let r = resolver();
    for transport in [Transport::Udp, Transport::Tcp] {
        let answer = r.answer(query, transport);
        let parsed = r.answer_parsed(query, transport);
        match (&answer, &parsed) {
            (Outcome::Reply(a), Outcome::Reply(p)) => {
                assert_eq!(a[..2], query[..2], "a reply with another ID");
                if a != p {
                    assert_eq!(
                        normalised(a),
                        normalised(p),
                        "fast and parsed paths disagree"
                    );
                }
                if transport == Transport::Udp {
                    let limit = Message::from_vec(query)
                        .ok()
                        .and_then(|q| q.edns.map(|e| e.max_payload().clamp(512, MAX_UDP_PAYLOAD)))
                        .unwrap_or(512);
                    assert!(
                        a.len() <= usize::from(limit),
                        "a UDP reply over {limit} bytes"
                    );
                }
            }
            _ => assert_eq!(answer, parsed, "fast and parsed paths disagree"),
        }
    }
});
