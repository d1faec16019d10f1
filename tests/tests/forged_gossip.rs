//! A rogue peer that completes the handshake and lies in its gossip: a record of a third
//! router (a version near the limit, no connections: it would cut that router off), and a
//! made-up peer with a lower name claiming our short ID (it would make us give ours up and
//! close every connection). The routers keep their identities, nobody loses the third
//! router, containers still ping, and the refusals are logged and counted. The same lie
//! repeated thousands of times is counted each time, but takes only a few log lines.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use weave_router::mesh::connection::{handshake, read_message, write_message};
use weave_router::mesh::peer_name::{PeerName, ShortId};
use weave_router::mesh::protocol::{GossipUpdate, Hello, Message};
use weave_router::mesh::topology::PeerInfo;
use weave_tests::mesh::MeshSummary;
use weave_tests::{host_addr, probe, require_root, TestBed};

const ROGUE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 66);
/// How many times the rogue repeats its lie in the flood.
const FLOOD: usize = 3000;

/// Dials `router` from the current namespace, completes the handshake, sends `forged`
/// `times` times and keeps the connection a few seconds. Returns whether the router took
/// the hello.
fn speak_as_rogue(router: Ipv4Addr, forged: Vec<PeerInfo>, times: usize) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut stream = tokio::net::TcpStream::connect(SocketAddr::from((router, 6783)))
            .await
            .map_err(|e| format!("dial: {e}"))?;
        let hello = Hello {
            name: PeerName::from_bytes([0x0e, 0x66, 0, 0, 0, 0x66]),
            nickname: "rogue".into(),
            short_id: ShortId::new(4000).expect("in range"),
            uid: 0x6666,
            underlay: ROGUE_ADDR,
            data_port: 6784,
            trusted_subnets: Vec::new(),
        };
        handshake(&mut stream, &hello, Duration::from_secs(10))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        write_message(&mut stream, &Message::Ready)
            .await
            .map_err(|e| format!("ready: {e}"))?;
        let gossip = Message::Gossip(GossipUpdate { records: forged });
        for _ in 0..times {
            write_message(&mut stream, &gossip)
                .await
                .map_err(|e| format!("gossip: {e}"))?;
        }
        // Keep the connection (reading what the router sends) while the router digests it.
        let _ = tokio::time::timeout(Duration::from_secs(4), async {
            while read_message(&mut stream).await.is_ok() {}
        })
        .await;
        Ok(())
    })
}

#[test]
fn a_rogue_peer_cannot_speak_for_others_nor_take_our_short_id() {
    if !require_root("a_rogue_peer_cannot_speak_for_others_nor_take_our_short_id") {
        return;
    }
    let mut bed = TestBed::new("wfg", 3).expect("test bed");
    bed.launch_mesh(&[]).expect("routers connect");
    let c1 = bed
        .attach_container(1, "c1", "10.2.1.11/24")
        .expect("attach");
    bed.attach_container(3, "c1", "10.2.1.31/24")
        .expect("attach");
    bed.container(c1)
        .wait_ping("10.2.1.31", Duration::from_secs(10))
        .expect("host1 reaches host3");
    let short_id_1 = probe::stored_short_id(&bed.state_dir(1)).expect("host1's short ID");
    let host3: PeerName = bed.router(3).name().parse().expect("host3's name");
    let short_id_3 = probe::stored_short_id(&bed.state_dir(3)).expect("host3's short ID");

    // Host3 with no connections and a version near the limit; a made-up peer with the
    // lowest name there is, claiming host1's short ID.
    let mut forged_3 = PeerInfo::new(
        host3,
        "host3".into(),
        0xbad,
        ShortId::new(short_id_3).expect("in range"),
    )
    .with_address(Ipv4Addr::new(203, 0, 113, 3), 6783);
    forged_3.version = weave_router::mesh::VERSION_LIMIT - 1;
    let squatter = PeerInfo::new(
        PeerName::from_bytes([0, 0, 0, 0, 0, 1]),
        "squatter".into(),
        1,
        ShortId::new(short_id_1).expect("in range"),
    );
    let rogue = bed.add_node("rogue", ROGUE_ADDR).expect("rogue node");
    rogue
        .enter(|| speak_as_rogue(host_addr(1), vec![forged_3.clone(), squatter], 1))
        .expect("inside the rogue's namespace")
        .expect("the rogue speaks the protocol");

    // Nobody lost host3, host1 kept its short ID, containers still ping.
    std::thread::sleep(Duration::from_secs(1));
    let name3 = bed.router(3).name().to_ascii_lowercase();
    for i in 1..=2 {
        let summary = MeshSummary::of(bed.router(i)).expect("mesh summary");
        assert!(
            summary.routed.contains(&name3),
            "host{i} no longer routes to host3: {summary:?}\n{}",
            bed.router(i).log_tail(30)
        );
    }
    assert_eq!(
        probe::stored_short_id(&bed.state_dir(1)),
        Some(short_id_1),
        "host1 gave up its short ID:\n{}",
        bed.router(1).log_tail(30)
    );
    assert!(
        bed.router(1)
            .log_tail(200)
            .contains("a direct peer's record is taken from that peer only"),
        "no refusal logged:\n{}",
        bed.router(1).log_tail(40)
    );
    let metrics = bed.router(1).metrics().expect("metrics");
    let refused = probe::metric_sum(&metrics, |s| {
        s.name == "weave_gossip_refused_total" && s.labels.contains("reason=\"not_from_owner\"")
    });
    assert!(refused >= 1.0, "not counted:\n{metrics}");

    // The same lie 3,000 times: each counted, the log takes a burst a second (the next
    // line logged, after the flood, says how many it left out), and host3 is told once a
    // second at most (passing each copy on filled its connection's queue).
    bed.node("rogue")
        .enter(|| speak_as_rogue(host_addr(1), vec![forged_3.clone()], FLOOD))
        .expect("inside the rogue's namespace")
        .expect("the rogue floods");
    bed.node("rogue")
        .enter(|| speak_as_rogue(host_addr(1), vec![forged_3], 1))
        .expect("inside the rogue's namespace")
        .expect("the rogue lies once more");
    let metrics = bed.router(1).metrics().expect("metrics");
    let after = probe::metric_sum(&metrics, |s| {
        s.name == "weave_gossip_refused_total" && s.labels.contains("reason=\"not_from_owner\"")
    });
    assert!(
        after >= refused + FLOOD as f64,
        "{after} refusals counted after {FLOOD} more than {refused}\n{}",
        bed.router(1).log_tail(30)
    );
    let log = bed.router(1).log_tail(FLOOD);
    let logged = log
        .lines()
        .filter(|l| l.contains("a direct peer's record is taken from that peer only"))
        .count();
    assert!(
        (1..=200).contains(&logged),
        "{logged} lines logged for {FLOOD} refusals"
    );
    assert!(
        !log.contains("slow peer"),
        "a connection was closed as a slow peer:\n{}",
        bed.router(1).log_tail(40)
    );
    assert!(
        log.contains("more refusals not logged in the last second"),
        "the log does not say what it left out:\n{}",
        bed.router(1).log_tail(40)
    );
    bed.container(c1)
        .wait_ping("10.2.1.31", Duration::from_secs(5))
        .expect("host1 still reaches host3");
    let established = bed
        .router(1)
        .wait_established(2, Duration::from_secs(5))
        .expect("host1 keeps its connections");
    assert!(!established.is_empty());
}
