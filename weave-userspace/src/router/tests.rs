//! Routers in one process over loopback TCP, each with a [`FakeDatapath`].

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::*;
use crate::crypto::PresharedKey;
use crate::datapath::fake::{FakeCall, FakeDatapath};
use crate::mesh::connection::{handshake, read_message, write_message};
use crate::mesh::peer_name::ShortId;
use crate::mesh::protocol::{Message, Versions, MAX_VERSION};

fn timings() -> Timings {
    Timings {
        handshake_timeout: Duration::from_secs(2),
        heartbeat_interval: Duration::from_millis(100),
        dead_after: Duration::from_millis(600),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
    }
}

fn hello(n: u8) -> Hello {
    Hello {
        name: PeerName::from_bytes([0x0a, 0, 0, 0, 0, n]),
        nickname: format!("host{n}"),
        short_id: ShortId::new(n as u16).unwrap(),
        uid: rand::random(),
        underlay: Ipv4Addr::new(127, 0, 0, 1),
        data_port: 6784,
        trusted_subnets: Vec::new(),
    }
}

struct Node {
    router: Router<FakeDatapath>,
    datapath: Arc<FakeDatapath>,
}

impl Node {
    async fn start(n: u8, targets: &[SocketAddr]) -> Node {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        Self::start_on(n, listener, targets)
    }

    fn start_on(n: u8, listener: TcpListener, targets: &[SocketAddr]) -> Node {
        Self::start_with(n, listener, targets, false)
    }

    fn start_with(n: u8, listener: TcpListener, targets: &[SocketAddr], discovery: bool) -> Node {
        Self::start_full(n, listener, targets, discovery, None, DEFAULT_CONN_LIMIT)
    }

    /// Router `n` with short ID `short_id` (another's, for clashes), dialling `target`.
    async fn start_with_short_id(n: u8, short_id: u16, target: SocketAddr) -> Node {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let datapath = Arc::new(FakeDatapath::new());
        let config = RouterConfig {
            local: Hello {
                short_id: ShortId::new(short_id).unwrap(),
                ..hello(n)
            },
            targets: vec![target.to_string().parse().unwrap()],
            timings: timings(),
            discovery: false,
            conn_limit: DEFAULT_CONN_LIMIT,
            password: None,
            sleeve: None,
            sleeve_use: Default::default(),
            ipam: None,
        };
        Node {
            router: Router::start(config, listener, datapath.clone(), None),
            datapath,
        }
    }

    async fn start_with_password(n: u8, targets: &[SocketAddr], password: Option<u8>) -> Node {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let key = password.map(|b| Arc::new(PresharedKey::from_bytes([b; 32])));
        Self::start_full(n, listener, targets, false, key, DEFAULT_CONN_LIMIT)
    }

    fn start_full(
        n: u8,
        listener: TcpListener,
        targets: &[SocketAddr],
        discovery: bool,
        password: Option<Arc<PresharedKey>>,
        conn_limit: usize,
    ) -> Node {
        let datapath = Arc::new(FakeDatapath::new());
        let config = RouterConfig {
            local: Hello {
                underlay: match listener.local_addr().unwrap().ip() {
                    std::net::IpAddr::V4(ip) => ip,
                    std::net::IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
                },
                ..hello(n)
            },
            targets: targets
                .iter()
                .map(|a| a.to_string().parse().unwrap())
                .collect(),
            timings: timings(),
            discovery,
            conn_limit,
            password,
            sleeve: None,
            sleeve_use: Default::default(),
            ipam: None,
        };
        Node {
            router: Router::start(config, listener, datapath.clone(), None),
            datapath,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.router.listen_addr()
    }

    fn peer_ids(&self) -> Vec<u16> {
        self.datapath
            .peers()
            .iter()
            .map(|p| p.short_id.get())
            .collect()
    }

    fn states(&self) -> Vec<String> {
        self.router
            .status()
            .connections
            .iter()
            .map(|c| c.state.clone())
            .collect()
    }
}

/// A listener on 127.0.0.`last`, so that routers on distinct loopback addresses are
/// distinct targets.
async fn loopback_listener(last: u8) -> TcpListener {
    bind(SocketAddr::from(([127, 0, 0, last], 0)))
        .await
        .unwrap()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_routers_connect_and_install_each_other() {
    let a = Node::start(1, &[]).await;
    let b = Node::start(2, &[a.addr()]).await;
    wait_until("both established", || {
        a.states() == ["established"] && b.states() == ["established"]
    })
    .await;
    assert_eq!(a.peer_ids(), [2]);
    assert_eq!(b.peer_ids(), [1]);
    let p = a.datapath.peers()[0];
    assert_eq!((p.underlay, p.next_hop.get()), (Ipv4Addr::LOCALHOST, 2));
    let conn = &b.router.status().connections[0];
    assert!(conn.outbound);
    assert_eq!(conn.address, a.addr().to_string());
    assert_eq!(conn.peer.as_ref().unwrap().nick_name, "host1");
    assert!(!a.router.status().connections[0].outbound);
    a.router.stop().await;
    b.router.stop().await;
}

#[tokio::test]
async fn routers_with_the_same_password_connect_encrypted() {
    let a = Node::start_with_password(1, &[], Some(7)).await;
    let b = Node::start_with_password(2, &[a.addr()], Some(7)).await;
    wait_until("both established", || {
        a.states() == ["established"] && b.states() == ["established"]
    })
    .await;
    for n in [&a, &b] {
        let status = n.router.status();
        assert!(status.encryption);
        assert!(status.connections[0].encrypted);
    }
    // Gossip flows over the sealed connection: each knows the other's record.
    wait_until("both peers known", || {
        a.router.status().mesh.peers.len() == 2 && b.router.status().mesh.peers.len() == 2
    })
    .await;
    a.router.stop().await;
    b.router.stop().await;
}

/// The reason each side shows for a refused connection: the dialler's target, the
/// acceptor's refused inbound connection.
async fn refusal_reasons(a: &Node, b: &Node) -> (String, String) {
    wait_until("both sides refused", || {
        let sa = a.router.status();
        let sb = b.router.status();
        sb.connections
            .iter()
            .any(|c| c.state == "failed" && !c.info.is_empty())
            && sa
                .connections
                .iter()
                .any(|c| c.state == "failed" && !c.outbound)
    })
    .await;
    let sa = a.router.status();
    let sb = b.router.status();
    assert!(a.datapath.peers().is_empty() && b.datapath.peers().is_empty());
    (
        sa.connections[0].info.clone(),
        sb.connections[0].info.clone(),
    )
}

#[tokio::test]
async fn another_password_is_refused_and_both_sides_show_why() {
    let a = Node::start_with_password(1, &[], Some(7)).await;
    let b = Node::start_with_password(2, &[a.addr()], Some(8)).await;
    let (inbound, outbound) = refusal_reasons(&a, &b).await;
    assert!(
        inbound.starts_with("password mismatch: the remote end has another password, at "),
        "{inbound}"
    );
    assert!(
        outbound.starts_with("password mismatch: the remote end has another password, retry: "),
        "{outbound}"
    );
    a.router.stop().await;
    b.router.stop().await;
}

#[tokio::test]
async fn a_password_on_one_side_only_is_refused_and_both_sides_show_why() {
    let a = Node::start_with_password(1, &[], Some(7)).await;
    let b = Node::start_with_password(2, &[a.addr()], None).await;
    let (inbound, outbound) = refusal_reasons(&a, &b).await;
    assert!(
        inbound.starts_with("encryption mismatch: we have a password and the remote end has none"),
        "{inbound}"
    );
    assert!(
        outbound.starts_with("encryption mismatch: the remote end has a password and we have none"),
        "{outbound}"
    );
    assert!(a.router.status().encryption && !b.router.status().encryption);
    a.router.stop().await;
    b.router.stop().await;
}

#[tokio::test]
async fn three_routers_dialling_each_other_keep_one_connection_per_pair() {
    // Every router names every other one, so each pair dials twice; the tie-break keeps one.
    let listeners: Vec<TcpListener> = futures_join(vec![
        bind("127.0.0.1:0".parse().unwrap()),
        bind("127.0.0.1:0".parse().unwrap()),
        bind("127.0.0.1:0".parse().unwrap()),
    ])
    .await;
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let others: Vec<SocketAddr> = addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| *a)
            .collect();
        nodes.push(Node::start_on(i as u8 + 1, l, &others));
    }
    wait_until("a full mesh of established connections", || {
        nodes.iter().all(|n| {
            n.states().iter().filter(|s| *s == "established").count() == 2
                && n.peer_ids().len() == 2
        })
    })
    .await;
    // Settled: the redundant dials end up hidden behind the connection kept.
    wait_until("one connection per pair", || {
        nodes.iter().all(|n| {
            let status = n.router.status();
            status.connections.len() == 2 && status.count("established") == 2
        })
    })
    .await;
    assert_eq!(nodes[0].peer_ids(), [2, 3]);
    assert_eq!(nodes[1].peer_ids(), [1, 3]);
    assert_eq!(nodes[2].peer_ids(), [1, 2]);
    // The connection kept between 1 and 2 is the one dialled by 2 (the higher name).
    let c12 = nodes[0]
        .router
        .status()
        .connections
        .into_iter()
        .find(|c| c.peer.as_ref().is_some_and(|p| p.short_id == 2))
        .unwrap();
    assert!(!c12.outbound);

    // One stops: the others take it out of their data paths.
    nodes[2].router.stop().await;
    wait_until("3 removed from 1 and 2", || {
        nodes[0].peer_ids() == [2] && nodes[1].peer_ids() == [1]
    })
    .await;
    assert!(nodes[0]
        .datapath
        .calls()
        .contains(&FakeCall::RemovePeer(ShortId::new(3).unwrap())));
    // 1 and 2 keep redialling it.
    wait_until("3 shown as failed or retrying", || {
        nodes[0].router.status().connections.iter().any(|c| {
            c.address == addrs[2].to_string() && (c.state == "failed" || c.state == "retrying")
        })
    })
    .await;
    nodes[0].router.stop().await;
    nodes[1].router.stop().await;
}

async fn futures_join<T>(
    fs: Vec<impl std::future::Future<Output = Result<T, RouterError>>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for f in fs {
        out.push(f.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_restarted_router_is_installed_again() {
    let a = Node::start(1, &[]).await;
    let b = Node::start(2, &[a.addr()]).await;
    wait_until("established", || a.states() == ["established"]).await;
    b.router.stop().await;
    wait_until("2 removed", || a.peer_ids().is_empty()).await;
    let b = Node::start(2, &[a.addr()]).await;
    wait_until("established again", || {
        a.states() == ["established"] && a.peer_ids() == [2]
    })
    .await;
    a.router.stop().await;
    b.router.stop().await;
}

#[tokio::test]
async fn connecting_to_ourself_is_refused_and_changes_nothing() {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let own = listener.local_addr().unwrap();
    let a = Node::start_on(1, listener, &[own]);
    wait_until("target failed", || a.states() == ["failed"]).await;
    let c = &a.router.status().connections[0];
    assert_eq!(c.info, "cannot connect to ourself");
    // It is not redialled.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(a.states(), ["failed"]);
    assert!(a.datapath.calls().is_empty());
    a.router.stop().await;
}

#[tokio::test]
async fn a_peer_with_another_protocol_version_is_refused_and_changes_nothing() {
    let a = Node::start(1, &[]).await;
    let mut s = TcpStream::connect(a.addr()).await.unwrap();
    s.write_all(&Versions { min: 7, max: 9 }.encode())
        .await
        .unwrap();
    let mut preamble = [0u8; crate::mesh::protocol::PREAMBLE_LEN];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut preamble)
        .await
        .unwrap();
    assert_eq!(Versions::decode(&preamble).unwrap(), Versions::OURS);
    // The router's encryption flag follows its preamble; then it hangs up.
    let mut rest = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut rest).await;
    assert_eq!(rest, [crate::mesh::protocol::ENCRYPTION_OFF]);
    assert!(a.router.status().connections.is_empty());
    assert!(a.datapath.calls().is_empty());
    a.router.stop().await;
}

#[tokio::test]
async fn dialling_a_peer_with_another_version_shows_the_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s
                .write_all(
                    &Versions {
                        min: MAX_VERSION + 1,
                        max: MAX_VERSION + 2,
                    }
                    .encode(),
                )
                .await;
        }
    });
    let a = Node::start(1, &[addr]).await;
    wait_until("an incompatible-version error", || {
        a.router
            .status()
            .connections
            .iter()
            .any(|c| c.info.contains("incompatible protocol versions"))
    })
    .await;
    assert!(a.datapath.calls().is_empty());
    a.router.stop().await;
}

#[tokio::test]
async fn garbage_on_the_control_port_changes_nothing() {
    let a = Node::start(1, &[]).await;
    let mut s = TcpStream::connect(a.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut rest).await;
    assert!(a.router.status().connections.is_empty());
    assert!(a.datapath.calls().is_empty());
    a.router.stop().await;
}

#[tokio::test]
async fn a_silent_peer_is_removed_after_the_dead_interval() {
    let a = Node::start(1, &[]).await;
    let mut s = TcpStream::connect(a.addr()).await.unwrap();
    let me = hello(5);
    handshake(&mut s, &me, Duration::from_secs(2))
        .await
        .unwrap();
    write_message(&mut s, &Message::Ready).await.unwrap();
    wait_until("established with the silent peer", || {
        a.states() == ["established"] && a.peer_ids() == [5]
    })
    .await;
    // Our heartbeats arrive; we send none and keep the socket open.
    loop {
        match read_message(&mut s).await.unwrap() {
            Message::Heartbeat => continue,
            m => {
                assert_eq!(m, Message::Ready);
                break;
            }
        }
    }
    let started = tokio::time::Instant::now();
    wait_until("the silent peer removed", || a.peer_ids().is_empty()).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(a.router.status().connections.is_empty());
    drop(s);
    a.router.stop().await;
}

#[tokio::test]
async fn a_data_path_failure_keeps_the_connection_from_being_established() {
    let a = Node::start(1, &[]).await;
    a.datapath.fail_add_peer(Some("no room"));
    let b = Node::start(2, &[a.addr()]).await;
    wait_until("b sees the refusal", || {
        b.router
            .status()
            .connections
            .iter()
            .any(|c| c.info.contains("data path: BPF: no room"))
    })
    .await;
    assert!(a
        .router
        .status()
        .connections
        .iter()
        .all(|c| c.state != "established"));
    a.datapath.fail_add_peer(None);
    wait_until("established after healing", || {
        a.states() == ["established"] && b.states() == ["established"]
    })
    .await;
    a.router.stop().await;
    b.router.stop().await;
}

#[test]
fn times_format_as_utc() {
    assert_eq!(format_time(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00");
    assert_eq!(
        format_time(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
        "2027-01-15 08:00:00"
    );
}

#[tokio::test]
async fn a_line_of_three_routes_the_ends_through_the_middle() {
    let b = Node::start(2, &[]).await;
    let a = Node::start(1, &[b.addr()]).await;
    let c = Node::start(3, &[b.addr()]).await;
    let route = |n: &Node, id: u16| {
        n.datapath
            .peers()
            .into_iter()
            .find(|p| p.short_id.get() == id)
            .map(|p| p.next_hop.get())
    };
    wait_until("the ends route to each other through the middle", || {
        route(&a, 3) == Some(2) && route(&c, 1) == Some(2) && route(&a, 2) == Some(2)
    })
    .await;
    // B passes broadcasts from A on to C and from C on to A, and sends its own to both;
    // the ends pass nothing on and send their own to B.
    let id = |n: u16| ShortId::new(n).unwrap();
    wait_until("the middle holds the three broadcast trees", || {
        b.datapath.broadcast_trees()
            == std::collections::BTreeMap::from([
                (id(1), vec![id(3)]),
                (id(2), vec![id(1), id(3)]),
                (id(3), vec![id(1)]),
            ])
    })
    .await;
    assert_eq!(
        a.datapath.broadcast_trees(),
        std::collections::BTreeMap::from([(id(1), vec![id(2)])])
    );
    let report = a.router.mesh_report();
    assert_eq!(report.peers.len(), 3);
    assert_eq!(report.routes.unicast.len(), 2);
    c.router.stop().await;
    wait_until("the stopped end is forgotten", || route(&a, 3).is_none()).await;
    a.router.stop().await;
    b.router.stop().await;
}

#[tokio::test]
async fn a_short_id_refusal_after_the_connection_is_up_changes_nothing() {
    let a = Node::start(1, &[]).await;
    let mut s = TcpStream::connect(a.addr()).await.unwrap();
    handshake(&mut s, &hello(9), Duration::from_secs(2))
        .await
        .unwrap();
    write_message(&mut s, &Message::Ready).await.unwrap();
    wait_until("the forger's connection established", || {
        a.states() == ["established"]
    })
    .await;
    // Once up, a peer may not tell us our short ID is taken: the connection closes and our
    // identity stays.
    let ours = a.router.local().short_id;
    write_message(
        &mut s,
        &Message::ShortIdTaken {
            id: ours,
            by: hello(7).name,
        },
    )
    .await
    .unwrap();
    wait_until("the forger's connection closed", || a.states().is_empty()).await;
    assert_eq!(a.router.local().short_id, ours);
    a.router.stop().await;
}

#[tokio::test]
async fn malformed_gossip_closes_only_that_connection() {
    let a = Node::start(1, &[]).await;
    let b = Node::start(2, &[a.addr()]).await;
    wait_until("a and b established", || a.states() == ["established"]).await;
    let mut s = TcpStream::connect(a.addr()).await.unwrap();
    handshake(&mut s, &hello(9), Duration::from_secs(2))
        .await
        .unwrap();
    let mut bogus = crate::mesh::topology::PeerInfo::new(
        hello(7).name,
        "x".into(),
        1,
        ShortId::new(7).unwrap(),
    );
    bogus.connections = vec![crate::mesh::topology::ConnectionSummary {
        remote: hello(7).name,
        address: "127.0.0.1:9".parse().unwrap(),
        outbound: true,
        established: true,
    }];
    let update = crate::mesh::protocol::GossipUpdate {
        records: vec![bogus],
    };
    write_message(&mut s, &Message::Gossip(update))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), read_message(&mut s))
            .await
            .unwrap()
        {
            Ok(Message::Goodbye(reason)) => {
                assert!(reason.contains("a connection to itself"), "{reason}");
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("no goodbye: {e}"),
        }
    }
    assert!(a
        .router
        .mesh_report()
        .peers
        .iter()
        .all(|p| p.name != hello(7).name));
    assert_eq!(a.peer_ids(), [2]);
    a.router.stop().await;
    b.router.stop().await;
}

#[tokio::test]
async fn discovery_dials_the_peers_gossip_names() {
    // Three routers on distinct loopback addresses, so each is a distinct target.
    let b = Node::start_with(2, loopback_listener(2).await, &[], true);
    let a = Node::start_with(1, loopback_listener(1).await, &[b.addr()], true);
    let c = Node::start_with(3, loopback_listener(3).await, &[b.addr()], true);
    wait_until("a and c connect to each other directly", || {
        a.router
            .status()
            .connections
            .iter()
            .filter(|c| c.state == "established")
            .count()
            == 2
            && c.router
                .status()
                .connections
                .iter()
                .filter(|c| c.state == "established")
                .count()
                == 2
    })
    .await;
    // Of a and c, c has the higher name: it dialled, a left it to (its connection would
    // have been the one refused).
    let dialled_c = format!("127.0.0.3:{}", c.addr().port());
    assert!(
        a.router
            .status()
            .targets
            .iter()
            .all(|t| t.to_string() != dialled_c),
        "a dialled c too: {:?}",
        a.router.status().targets
    );
    for n in [&a, &b, &c] {
        n.router.stop().await;
    }
}

#[tokio::test]
async fn a_peer_refused_for_a_connection_limit_is_not_dialled_again_for_a_while() {
    // `full` may hold one connection, to the hub. The newcomer has the highest name, so it
    // dials what gossip names at once; `full`, at its limit, dials nobody.
    let hub = Node::start_with(2, loopback_listener(2).await, &[], true);
    let full = Node::start_full(1, loopback_listener(1).await, &[hub.addr()], true, None, 1);
    wait_until("full is connected to the hub", || {
        full.states() == ["established"]
    })
    .await;
    let newcomer = Node::start_with(3, loopback_listener(3).await, &[hub.addr()], true);
    let full_target: Target = format!("127.0.0.1:{}", full.addr().port()).parse().unwrap();
    wait_until(
        "the newcomer was refused by the full router and let it go",
        || {
            newcomer
                .router
                .inner
                .mesh()
                .discovery_full
                .contains_key(&full_target)
        },
    )
    .await;
    // Not dialled again, over many backoff intervals (100-400 ms here).
    for _ in 0..20 {
        let status = newcomer.router.status();
        assert!(
            !status.targets.contains(&full_target.to_string()),
            "{:?}",
            status.targets
        );
        assert!(
            status
                .connections
                .iter()
                .all(|c| c.state != "failed" && c.state != "retrying"),
            "{:?}",
            newcomer.states()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        full.states(),
        ["established"],
        "full keeps its one connection"
    );
    assert_eq!(
        full.router.status().targets,
        vec![hub.addr().to_string()],
        "full dials nobody more at its limit"
    );
    for n in [&hub, &full, &newcomer] {
        n.router.stop().await;
    }
}

#[tokio::test]
async fn forget_stops_dialling() {
    let a = Node::start(1, &[]).await;
    let target: Target = "127.0.0.1:1".parse().unwrap();
    a.router.connect(target.clone());
    wait_until("the target is dialled and fails", || {
        a.states().iter().any(|s| s == "failed" || s == "retrying")
    })
    .await;
    assert_eq!(
        a.router.forget(std::slice::from_ref(&target)),
        vec![target.clone()]
    );
    assert!(a.router.status().targets.is_empty());
    assert!(a.router.forget(&[target]).is_empty());
    a.router.stop().await;
}

#[tokio::test]
async fn a_short_id_clash_is_settled_by_the_higher_name_taking_another() {
    let a = Node::start(1, &[]).await;
    let b = Node::start_with_short_id(2, 1, a.addr()).await;
    wait_until("both established after the clash", || {
        a.states() == ["established"] && b.states() == ["established"]
    })
    .await;
    let b_id = b.router.local().short_id;
    assert_ne!(b_id.get(), 1, "the higher name (b) took another short ID");
    assert_eq!(
        a.router.local().short_id.get(),
        1,
        "the lower name kept its short ID"
    );
    assert!(b.datapath.calls().contains(&FakeCall::OwnShortId(b_id)));
    assert_eq!(a.peer_ids(), [b_id.get()]);
    a.router.stop().await;
    b.router.stop().await;
}

#[tokio::test]
async fn a_newcomer_refused_for_a_third_peers_short_id_takes_another() {
    let a = Node::start(1, &[]).await;
    let b = Node::start(2, &[a.addr()]).await;
    wait_until("a and b established", || a.states() == ["established"]).await;
    // c has b's short ID and dials only a, which knows b: c never hears of b through
    // gossip while it is refused, so the refusal itself must make it move.
    let c = Node::start_with_short_id(3, 2, a.addr()).await;
    wait_until("c connected to a with another short ID", || {
        c.states() == ["established"] && a.states() == ["established", "established"]
    })
    .await;
    let c_id = c.router.local().short_id.get();
    assert!(c_id != 2 && c_id != 1, "c took a free short ID: {c_id}");
    assert_eq!(
        b.router.local().short_id.get(),
        2,
        "b, already in the mesh, kept its own"
    );
    a.router.stop().await;
    b.router.stop().await;
    c.router.stop().await;
}

#[tokio::test]
async fn a_peer_claiming_a_connected_peers_name_is_refused() {
    let a = Node::start(1, &[]).await;
    let b = Node::start(2, &[a.addr()]).await;
    wait_until("a and b established", || a.states() == ["established"]).await;
    let mut s = TcpStream::connect(a.addr()).await.unwrap();
    let impostor = Hello {
        short_id: ShortId::new(9).unwrap(),
        ..hello(2)
    };
    handshake(&mut s, &impostor, Duration::from_secs(2))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), read_message(&mut s))
        .await
        .unwrap()
    {
        Ok(Message::Goodbye(reason)) => assert!(reason.contains("already connected"), "{reason}"),
        other => panic!("expected a goodbye, got {other:?}"),
    }
    assert_eq!(a.peer_ids(), [2], "the real peer stays");
    assert_eq!(a.states(), ["established"]);
    a.router.stop().await;
    b.router.stop().await;
}

/// A grow-only set of strings as a gossip channel: enough to watch messages travel.
#[derive(Default)]
struct StringSet {
    items: std::sync::Mutex<std::collections::BTreeSet<String>>,
    unicasts: std::sync::Mutex<Vec<(PeerName, String)>>,
    merges: std::sync::atomic::AtomicUsize,
}

impl StringSet {
    fn has(&self, item: &str) -> bool {
        self.items.lock().unwrap().contains(item)
    }
    fn add(&self, item: &str) -> Vec<u8> {
        self.items.lock().unwrap().insert(item.to_string());
        item.as_bytes().to_vec()
    }
}

impl crate::mesh::gossip_channel::GossipChannel for StringSet {
    fn full_state(&self) -> Option<Vec<u8>> {
        let items = self.items.lock().unwrap();
        (!items.is_empty()).then(|| {
            items
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes()
        })
    }
    fn on_gossip(
        &self,
        _: PeerName,
        payload: &[u8],
    ) -> Result<Option<Vec<u8>>, crate::mesh::gossip_channel::GossipChannelError> {
        self.merges
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let text = std::str::from_utf8(payload).map_err(|e| {
            crate::mesh::gossip_channel::GossipChannelError::Malformed {
                channel: crate::mesh::gossip_channel::ChannelId::Dns,
                reason: e.to_string(),
            }
        })?;
        let mut items = self.items.lock().unwrap();
        let news: Vec<&str> = text
            .lines()
            .filter(|l| items.insert(l.to_string()))
            .collect();
        Ok((!news.is_empty()).then(|| news.join("\n").into_bytes()))
    }
    fn on_unicast(
        &self,
        origin: PeerName,
        payload: &[u8],
    ) -> Result<(), crate::mesh::gossip_channel::GossipChannelError> {
        self.unicasts
            .lock()
            .unwrap()
            .push((origin, String::from_utf8_lossy(payload).into_owned()));
        Ok(())
    }
}

#[tokio::test]
async fn channel_gossip_crosses_a_line_and_reaches_late_joiners() {
    use crate::mesh::gossip_channel::ChannelId;
    let b = Node::start(2, &[]).await;
    let a = Node::start(1, &[b.addr()]).await;
    let (sa, sb, sc) = (
        Arc::new(StringSet::default()),
        Arc::new(StringSet::default()),
        Arc::new(StringSet::default()),
    );
    let ga = a.router.register_channel(ChannelId::Dns, sa.clone());
    let _gb = b.router.register_channel(ChannelId::Dns, sb.clone());
    wait_until("a and b connected", || {
        a.router.status().count("established") == 1
    })
    .await;
    ga.broadcast(sa.add("from-a"));
    wait_until("b has a's item", || sb.has("from-a")).await;

    // C joins later: it gets the state by sync from B, and its own item travels to A via B.
    let c = Node::start(3, &[b.addr()]).await;
    let gc = c.router.register_channel(ChannelId::Dns, sc.clone());
    gc.broadcast(sc.add("from-c"));
    wait_until("c has a's item", || sc.has("from-a")).await;
    wait_until("a has c's item", || sa.has("from-c")).await;

    // A unicast from A to C goes through B and reaches C only.
    wait_until("a routes to c", || {
        a.router
            .mesh_report()
            .routes
            .unicast
            .contains_key(&hello(3).name)
    })
    .await;
    ga.unicast(hello(3).name, b"hello c".to_vec());
    wait_until("c got the unicast", || {
        !sc.unicasts.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        sc.unicasts.lock().unwrap()[0],
        (hello(1).name, "hello c".to_string())
    );
    assert!(sb.unicasts.lock().unwrap().is_empty());

    for n in [&a, &b, &c] {
        n.router.stop().await;
    }
}
