use super::*;
use crate::mesh::peer_name::PeerName;
use hickory_proto::op::Query;

fn resolver() -> Resolver {
    let records = Arc::new(Records::new(PeerName::from_bytes([0x0a, 0, 0, 0, 0, 1])));
    let r = &records;
    r.add("c1", "10.2.1.1".parse().unwrap(), "w1.weave.local.")
        .unwrap();
    r.add("c2", "10.2.1.2".parse().unwrap(), "pair.weave.local.")
        .unwrap();
    r.add("c3", "10.2.1.3".parse().unwrap(), "pair.weave.local.")
        .unwrap();
    for i in 0..200u8 {
        r.add("many", Ipv4Addr::new(10, 3, 0, i), "big.weave.local.")
            .unwrap();
    }
    Resolver::new(records, Name::from_ascii("weave.local.").unwrap(), 7)
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

fn reply(o: Outcome) -> Message {
    match o {
        Outcome::Reply(b) => Message::from_vec(&b).unwrap(),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[test]
fn a_names_in_the_domain_are_answered_with_the_ttl() {
    let q = query("W1.weave.local.", RecordType::A);
    let m = reply(resolver().answer(&q, Transport::Udp));
    assert_eq!(m.metadata.id, Message::from_vec(&q).unwrap().metadata.id);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative && m.metadata.recursion_desired);
    assert_eq!(a_records(&m), ["10.2.1.1".parse::<Ipv4Addr>().unwrap()]);
    assert_eq!(m.answers[0].ttl, 7);
    assert_eq!(m.queries.len(), 1);
}

#[test]
fn several_addresses_come_in_shuffled_order() {
    let r = resolver();
    let q = query("pair.weave.local.", RecordType::A);
    let mut firsts = std::collections::HashSet::new();
    for _ in 0..64 {
        let m = reply(r.answer(&q, Transport::Udp));
        let mut got = a_records(&m);
        firsts.insert(got[0]);
        got.sort();
        assert_eq!(got.len(), 2);
    }
    assert_eq!(
        firsts.len(),
        2,
        "64 answers all started with the same address"
    );
}

#[test]
fn unknown_names_in_the_domain_are_nxdomain_and_other_types_are_empty() {
    let r = resolver();
    let m = reply(r.answer(&query("nope.weave.local.", RecordType::A), Transport::Udp));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty() && m.metadata.authoritative);
    let m = reply(r.answer(&query("w1.weave.local.", RecordType::AAAA), Transport::Udp));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[test]
fn ptr_answers_attached_addresses_and_forwards_the_rest() {
    let r = resolver();
    let m = reply(r.answer(
        &query("1.1.2.10.in-addr.arpa.", RecordType::PTR),
        Transport::Udp,
    ));
    match &m.answers[0].data {
        RData::PTR(p) => assert_eq!(p.0, Name::from_ascii("w1.weave.local.").unwrap()),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        r.answer(
            &query("9.9.9.10.in-addr.arpa.", RecordType::PTR),
            Transport::Udp
        ),
        Outcome::Forward
    );
    assert_eq!(
        arpa_v4(&Name::from_ascii("1.2.3.in-addr.arpa.").unwrap()),
        None
    );
    assert_eq!(
        arpa_v4(&Name::from_ascii("a.2.3.4.in-addr.arpa.").unwrap()),
        None
    );
}

#[test]
fn names_outside_the_domain_are_forwarded() {
    let r = resolver();
    for n in ["example.com.", "weave.local.example.", "local."] {
        assert_eq!(
            r.answer(&query(n, RecordType::A), Transport::Udp),
            Outcome::Forward,
            "{n}"
        );
    }
}

#[test]
fn malformed_queries_get_formerr_or_nothing() {
    let r = resolver();
    // Too short for a header: nothing.
    assert_eq!(r.answer(b"\x12\x34\x01", Transport::Udp), Outcome::Drop);
    // A header claiming a question that is not there: FORMERR with our ID.
    let junk = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff";
    match r.answer(junk, Transport::Udp) {
        Outcome::Reply(b) => {
            assert_eq!(&b[..2], b"\x12\x34");
            assert_eq!(b[3] & 0x0f, 1, "FORMERR");
            assert_ne!(b[2] & 0x80, 0, "a response");
        }
        other => panic!("{other:?}"),
    }
    // Responses are never answered (no loops).
    let mut resp = Message::from_vec(&query("w1.weave.local.", RecordType::A)).unwrap();
    resp.metadata.message_type = MessageType::Response;
    assert_eq!(
        r.answer(&resp.to_vec().unwrap(), Transport::Udp),
        Outcome::Drop
    );
    // Two questions: FORMERR.
    let mut two = Message::query();
    two.add_query(Query::query(
        Name::from_ascii("a.weave.local.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("b.weave.local.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        reply(r.answer(&two.to_vec().unwrap(), Transport::Udp))
            .metadata
            .response_code,
        ResponseCode::FormErr
    );
    // Another opcode: NOTIMP.
    let mut status = Message::from_vec(&query("w1.weave.local.", RecordType::A)).unwrap();
    status.metadata.op_code = OpCode::Status;
    assert_eq!(
        reply(r.answer(&status.to_vec().unwrap(), Transport::Udp))
            .metadata
            .response_code,
        ResponseCode::NotImp
    );
    // Random bytes never panic.
    let mut seed = 0x1234_5678u32;
    for len in 0..600 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        let _ = r.answer(&bytes, Transport::Udp);
    }
}

#[test]
fn odd_names_are_not_found_rather_than_refused() {
    let r = resolver();
    let name = Name::from_labels(vec![
        b"we ird\x00\xff".to_vec(),
        b"weave".to_vec(),
        b"local".to_vec(),
    ])
    .unwrap();
    let mut m = Message::query();
    m.add_query(Query::query(name, RecordType::A));
    let out = reply(r.answer(&m.to_vec().unwrap(), Transport::Udp));
    assert_eq!(out.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn large_answers_are_truncated_over_udp_only() {
    let r = resolver();
    let q = query("big.weave.local.", RecordType::A);
    let m = reply(r.answer(&q, Transport::Udp));
    assert!(m.metadata.truncation && m.answers.is_empty());
    let m = reply(r.answer(&q, Transport::Tcp));
    assert!(!m.metadata.truncation);
    assert_eq!(a_records(&m).len(), 200);
}

#[test]
fn resolv_conf_upstreams_never_include_ourselves() {
    let text = "# comment\nnameserver 10.0.0.53\nnameserver 169.254.53.53\nsearch x\nnameserver fe80::1%eth0\nnameserver bogus\n";
    let u = Upstreams::from_resolv_conf(text, "169.254.53.53:53".parse().unwrap(), UPSTREAM);
    assert_eq!(
        u.servers,
        vec![
            "10.0.0.53:53".parse::<SocketAddr>().unwrap(),
            "[fe80::1]:53".parse().unwrap()
        ]
    );
}

const UPSTREAM: Duration = Duration::from_millis(300);

/// A free local UDP port (bound and let go).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_over_udp_and_tcp_and_fails_slow_upstreams() {
    // An upstream that never answers: forwarded queries get SERVFAIL after the timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstreams = Upstreams {
        servers: vec![silent.local_addr().unwrap()],
        timeout: UPSTREAM,
    };
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let server = DnsServer::start(listen, resolver(), upstreams).unwrap();

    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client
        .send_to(&query("w1.weave.local.", RecordType::A), listen)
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a_records(&Message::from_vec(&buf[..n]).unwrap()).len(), 1);

    let q = query("example.com.", RecordType::A);
    client.send_to(&q, listen).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.metadata.id, Message::from_vec(&q).unwrap().metadata.id);

    let mut tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
    let q = query("big.weave.local.", RecordType::A);
    tcp.write_all(&(q.len() as u16).to_be_bytes())
        .await
        .unwrap();
    tcp.write_all(&q).await.unwrap();
    let len = tcp.read_u16().await.unwrap() as usize;
    let mut b = vec![0u8; len];
    tcp.read_exact(&mut b).await.unwrap();
    assert_eq!(a_records(&Message::from_vec(&b).unwrap()).len(), 200);
    assert!(server.counters.answered.load(Ordering::Relaxed) >= 2);
    assert_eq!(server.counters.failed.load(Ordering::Relaxed), 1);
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
}

#[test]
fn the_fast_path_answers_like_the_parsed_one() {
    let r = resolver();
    let with_edns = |name: &str, payload: u16| {
        let mut m = Message::from_vec(&query(name, RecordType::A)).unwrap();
        let mut e = Edns::new();
        e.set_max_payload(payload);
        m.set_edns(e);
        m.to_vec().unwrap()
    };
    let cases = [
        query("w1.weave.local.", RecordType::A),
        query("W1.WEAVE.local.", RecordType::A),
        query("pair.weave.local.", RecordType::A),
        with_edns("pair.weave.local.", 1232),
        with_edns("w1.weave.local.", 100),
    ];
    // With compressed names 200 addresses fit in 4096 bytes (the parsed path truncates).
    let big = r
        .fast_answer(&with_edns("big.weave.local.", 4096), Transport::Udp)
        .unwrap();
    let big = Message::from_vec(&big).unwrap();
    assert!(!big.metadata.truncation && big.answers.len() == 200);
    for q in &cases {
        let fast = r
            .fast_answer(q, Transport::Udp)
            .expect("fast path takes it");
        let slow = reply(r.answer_parsed(q, Transport::Udp));
        let fast = Message::from_vec(&fast).unwrap();
        assert_eq!(fast.metadata, slow.metadata);
        assert_eq!(fast.queries, slow.queries);
        let (mut a, mut b) = (a_records(&fast), a_records(&slow));
        a.sort();
        b.sort();
        assert_eq!(a, b);
        assert!(fast
            .answers
            .iter()
            .all(|x| x.ttl == 7 && x.name == slow.queries[0].name().clone()));
        assert_eq!(fast.edns.is_some(), slow.edns.is_some());
    }
    // Everything else is left to the parsed path.
    for q in [
        query("nope.weave.local.", RecordType::A),
        query("w1.weave.local.", RecordType::AAAA),
        query("example.com.", RecordType::A),
        query("big.weave.local.", RecordType::A),
        query("1.1.2.10.in-addr.arpa.", RecordType::PTR),
    ] {
        assert_eq!(r.fast_answer(&q, Transport::Udp), None);
    }
    let mut bytes = query("w1.weave.local.", RecordType::A);
    bytes.push(0);
    assert_eq!(r.fast_answer(&bytes, Transport::Udp), None);
    assert_eq!(
        r.fast_answer(&bytes[..bytes.len() - 3], Transport::Udp),
        None
    );
}
