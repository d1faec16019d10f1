//! The API served over loopback and its unix socket for routers with a [`FakeDatapath`]:
//! [`call`] goes through the socket, as the CLI does; [`call_tcp`] through TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::cli::client::{self, Response};
use crate::datapath::fake::FakeDatapath;
use crate::mesh::connection::Timings;
use crate::mesh::peer_name::{PeerName, ShortId};
use crate::mesh::protocol::Hello;
use crate::router::{bind, Router, RouterConfig};

struct Served {
    router: Arc<Router<FakeDatapath>>,
    http: SocketAddr,
    stop: watch::Receiver<bool>,
}

async fn serve(n: u8, targets: &[SocketAddr]) -> Served {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let local = Hello {
        name: PeerName::from_bytes([0x0a, 0, 0, 0, 0, n]),
        nickname: format!("host{n}"),
        short_id: ShortId::new(n as u16).unwrap(),
        uid: rand::random(),
        underlay: [127, 0, 0, 1].into(),
        data_port: 6784,
        trusted_subnets: Vec::new(),
    };
    let timings = Timings {
        heartbeat_interval: Duration::from_millis(100),
        backoff_initial: Duration::from_millis(100),
        ..Timings::default()
    };
    let config = RouterConfig {
        local,
        targets: targets
            .iter()
            .map(|a| a.to_string().parse().unwrap())
            .collect(),
        timings,
        discovery: false,
        conn_limit: crate::router::DEFAULT_CONN_LIMIT,
        password: None,
        sleeve: None,
        sleeve_use: Default::default(),
        ipam: None,
    };
    let router = Arc::new(Router::start(
        config,
        listener,
        Arc::new(FakeDatapath::new()),
        None,
    ));
    let (stop_tx, stop) = watch::channel(false);
    let state = Arc::new(ApiState::new(stop_tx));
    // IP allocation in 10.2.0.0/16 (default subnet 10.2.1.0/24), this router the only seed.
    let me = PeerName::from_bytes([0x0a, 0, 0, 0, 0, n]);
    let ipam = crate::ipam::service::IpamService::alone(me);
    state.set_ready(Arc::new(crate::node::Node::new(
        router.clone(),
        crate::node::endpoints::Interfaces::new(router.datapath().clone(), None),
        Some(ipam),
        None,
        crate::node::DatapathShown {
            iface: "lo".into(),
            xdp: "off".into(),
        },
    )));
    let http = serve_both(state).await;
    Served { router, http, stop }
}

/// Serves the API on a loopback port (read-only) and on that port's unix socket, as the
/// daemon does; returns the TCP address.
async fn serve_both(state: Arc<ApiState>) -> SocketAddr {
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = http_listener.local_addr().unwrap();
    let socket = access::bind_socket(&access::socket_name(http)).unwrap();
    let tcp_app = access::tcp_app(app(state.clone()), http);
    let socket_app =
        access::socket_app(app(state)).into_make_service_with_connect_info::<access::PeerUid>();
    tokio::spawn(async move { axum::serve(http_listener, tcp_app).await.unwrap() });
    tokio::spawn(async move { axum::serve(socket, socket_app).await.unwrap() });
    http
}

/// A call on the unix socket of the API whose TCP address is `addr`, as the CLI makes it.
async fn call(
    addr: SocketAddr,
    method: &'static str,
    path: &'static str,
    body: Option<String>,
) -> Response {
    let socket = client::ApiAddr::socket_of(addr);
    tokio::task::spawn_blocking(move || {
        client::request(
            socket,
            method,
            path,
            body.as_deref(),
            Duration::from_secs(5),
        )
        .unwrap()
    })
    .await
    .unwrap()
}

/// A call on TCP.
async fn call_tcp(
    addr: SocketAddr,
    method: &'static str,
    path: &'static str,
    body: Option<String>,
) -> Response {
    tokio::task::spawn_blocking(move || {
        client::request(addr, method, path, body.as_deref(), Duration::from_secs(5)).unwrap()
    })
    .await
    .unwrap()
}

async fn wait_for(addr: SocketAddr, path: &'static str, needle: &str) -> String {
    for _ in 0..200 {
        let r = call(addr, "GET", path, None).await;
        if r.body.contains(needle) {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never showed {needle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_texts_show_the_connection() {
    let a = serve(1, &[]).await;
    let b = serve(2, &[a.router.listen_addr()]).await;
    let text = wait_for(b.http, "/status/connections", "established").await;
    let expected = format!(
        "-> {:<21} established unencrypted fastdp 0a:00:00:00:00:01(host1) mtu=1450 (unverified)\n",
        a.router.listen_addr().to_string()
    );
    assert_eq!(text, expected);
    let summary = call(b.http, "GET", "/status", None).await;
    assert_eq!(summary.status, 200);
    assert!(
        summary
            .body
            .contains("           Name: 0a:00:00:00:00:02(host2)\n"),
        "{}",
        summary.body
    );
    assert!(
        summary
            .body
            .contains("    Connections: 1 (1 established)\n"),
        "{}",
        summary.body
    );
    // Gossip brings the other side's record a moment after the connection is up.
    wait_for(
        b.http,
        "/status",
        "          Peers: 2 (with 2 established connections)\n",
    )
    .await;
    let inbound = call(a.http, "GET", "/status/connections", None).await.body;
    assert!(inbound.starts_with("<- 127.0.0.1:"), "{inbound}");
    let peers = call(a.http, "GET", "/status/peers", None).await.body;
    assert!(
        peers.starts_with("0a:00:00:00:00:01(host1)\n   <- 127.0.0.1:"),
        "{peers}"
    );
    let targets = call(b.http, "GET", "/status/targets", None).await.body;
    assert_eq!(targets, format!("{}\n", a.router.listen_addr()));
    a.router.stop().await;
    b.router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_and_metrics() {
    let a = serve(1, &[]).await;
    let report = call(a.http, "GET", "/report", None).await;
    assert_eq!(report.status, 200);
    let v: serde_json::Value = serde_json::from_str(&report.body).unwrap();
    assert_eq!(v["Router"]["Name"], "0a:00:00:00:00:01");
    assert_eq!(v["Router"]["NickName"], "host1");
    assert_eq!(v["Pid"], std::process::id());
    assert_eq!(v["Datapath"]["ContainerMTU"], 1450);
    let metrics = call(a.http, "GET", "/metrics", None).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .contains("weave_connections{state=\"established\",type=\"fastdp\",encryption=\"\"} 0"),
        "{}",
        metrics.body
    );
    // IP allocation is on in this router: its families and its report section are there.
    assert!(
        metrics.body.contains("weave_max_ips 65536\n"),
        "{}",
        metrics.body
    );
    assert_eq!(v["IPAM"]["RangeNumIPs"], 65536);
    assert!(v["DNS"].is_null(), "{v}");
    // The topology page and what it loads.
    for (path, needle) in [
        ("/", "<script src=\"topology.js\">"),
        ("/topology.js", "fetch(\"report\""),
        ("/topology.css", "tr.gone"),
    ] {
        let r = call(a.http, "GET", path, None).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.body.contains(needle), "{path}: {}", r.body);
    }
    assert!(
        metrics
            .body
            .contains("weave_datapath_drops_total{reason=\"rx_drop_unknown_peer\"} 0"),
        "{}",
        metrics.body
    );
    a.router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_and_detach() {
    let a = serve(1, &[]).await;
    let netns = std::env::temp_dir().join(format!("weave-router-api-ns-{}", std::process::id()));
    std::fs::write(&netns, b"").unwrap();
    let body = serde_json::json!({ "netns": netns, "addresses": ["10.2.1.1/24"] }).to_string();
    let r = call(a.http, "POST", "/attach", Some(body.clone())).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let e: EndpointView = serde_json::from_str(&r.body).unwrap();
    assert_eq!(e.addresses, ["10.2.1.1/24"]);
    assert_eq!(e.mac, "02:00:00:00:00:01");
    let again = call(a.http, "POST", "/attach", Some(body)).await;
    assert_eq!(again.status, 409);
    assert_eq!(
        again.body,
        format!(
            "network namespace {} is attached already\n",
            netns.display()
        )
    );
    let d = call(
        a.http,
        "POST",
        "/detach",
        Some(serde_json::json!({ "netns": netns }).to_string()),
    )
    .await;
    assert_eq!(d.status, 200, "{}", d.body);
    let d = call(
        a.http,
        "POST",
        "/detach",
        Some(serde_json::json!({ "netns": netns }).to_string()),
    )
    .await;
    assert_eq!(d.status, 404);
    std::fs::remove_file(&netns).unwrap();
    a.router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_allocates_from_ipam_and_detach_releases() {
    let a = serve(1, &[]).await;
    let netns = std::env::temp_dir().join(format!("weave-router-api-ipam-{}", std::process::id()));
    std::fs::write(&netns, b"").unwrap();
    let body =
        serde_json::json!({ "netns": netns, "addresses": ["net:default", "net:10.2.2.0/24"] })
            .to_string();
    let r = call(a.http, "POST", "/attach", Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let e: EndpointView = serde_json::from_str(&r.body).unwrap();
    assert_eq!(e.addresses, ["10.2.1.1/24", "10.2.2.1/24"]);
    let owner = netns.display().to_string();
    let status = call(a.http, "GET", "/status/ipam", None).await;
    assert!(status.body.contains("(2 active)"), "{}", status.body);
    let d = call(
        a.http,
        "POST",
        "/detach",
        Some(serde_json::json!({ "netns": netns }).to_string()),
    )
    .await;
    assert_eq!(d.status, 200, "{}", d.body);
    let ipam = a.router.clone();
    drop(ipam);
    // Released: the next owner gets the same first address.
    let r = call(a.http, "POST", "/ip/c0ffee", None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "10.2.1.1/24\n"),
        "{owner} released"
    );
    let r = call(a.http, "POST", "/ip/c0ffee/10.2.3.0/24", None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "10.2.3.1/24\n"));
    let r = call(a.http, "PUT", "/ip/other/10.2.3.1/24", None).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body, "address 10.2.3.1 is already allocated to c0ffee\n");
    let r = call(a.http, "GET", "/ip/c0ffee", None).await;
    assert_eq!(r.body, "10.2.1.1/24\n10.2.3.1/24\n");
    let r = call(a.http, "DELETE", "/ip/c0ffee", None).await;
    assert_eq!(r.status, 200);
    let r = call(a.http, "GET", "/ip/c0ffee", None).await;
    assert_eq!(r.body, "");
    std::fs::remove_file(&netns).unwrap();
    a.router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_one_line_and_a_4xx() {
    let a = serve(1, &[]).await;
    let cases = [
        (
            r#"{"netns":"/nonexistent/ns","addresses":[]}"#,
            "network namespace /nonexistent/ns does not exist\n",
        ),
        (
            r#"{"netns":"relative","addresses":[]}"#,
            "network namespace path relative is not absolute\n",
        ),
        (
            r#"{"netns":"/proc/self/ns/net","addresses":["10.0.0.1"]}"#,
            "\"10.0.0.1\" is not net:default, net:CIDR, ip:CIDR or an address with a prefix length (like 10.2.1.5/24)\n",
        ),
        (
            r#"{"netns":"/proc/self/ns/net","addresses":["net:10.3.0.0/24"]}"#,
            "10.3.0.0/24 is outside the allocation range 10.2.0.0/16\n",
        ),
    ];
    for (body, message) in cases {
        let r = call(a.http, "POST", "/attach", Some(body.into())).await;
        assert_eq!((r.status, r.body.as_str()), (400, message));
    }
    let r = call(a.http, "POST", "/attach", Some("{".into())).await;
    assert_eq!(r.status, 400);
    assert!(
        r.body.starts_with("bad request body: ") && r.body.lines().count() == 1,
        "{}",
        r.body
    );
    let r = call(a.http, "GET", "/nope", None).await;
    assert_eq!((r.status, r.body.as_str()), (404, "no such API endpoint\n"));
    a.router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_is_signalled() {
    let mut a = serve(1, &[]).await;
    let r = call(a.http, "POST", "/stop", None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains(&format!("\"Pid\":{}", std::process::id())),
        "{}",
        r.body
    );
    tokio::time::timeout(Duration::from_secs(1), a.stop.wait_for(|s| *s))
        .await
        .unwrap()
        .unwrap();
    a.router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_ready_the_api_says_503_but_can_be_stopped() {
    let (stop_tx, mut stop) = watch::channel(false);
    let state = Arc::new(ApiState::new(stop_tx));
    let http = serve_both(state).await;
    for path in ["/status", "/status/connections", "/report", "/metrics"] {
        let r = call(http, "GET", path, None).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (
                503,
                "the router is still starting (setting up its data path)\n"
            ),
            "{path}"
        );
    }
    assert_eq!(call(http, "POST", "/stop", None).await.status, 200);
    assert!(*stop.borrow_and_update());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_serves_reads_and_refuses_every_change() {
    let mut a = serve(1, &[]).await;
    for path in ["/status", "/report", "/metrics", "/status/ipam"] {
        assert_eq!(
            call_tcp(a.http, "GET", path, None).await.status,
            200,
            "{path}"
        );
    }
    for (method, path) in [
        ("POST", "/stop"),
        ("POST", "/ip/c0ffee"),
        ("DELETE", "/ip/c0ffee"),
        ("POST", "/connect"),
    ] {
        let r = call_tcp(a.http, method, path, Some("{}".into())).await;
        assert_eq!(r.status, 403, "{method} {path}");
        assert!(
            r.body.contains(&format!(
                "served only on its unix socket @weave-router/{}",
                a.http
            )),
            "{}",
            r.body
        );
    }
    // Nothing happened: not stopped, nothing allocated.
    assert!(!*a.stop.borrow_and_update());
    assert_eq!(call(a.http, "GET", "/ip/c0ffee", None).await.body, "");
    a.router.stop().await;
}

#[test]
fn a_stop_keeps_the_data_path_only_when_asked() {
    assert!(super::keeps_datapath(Some("keep-datapath=true")));
    assert!(super::keeps_datapath(Some("x=1&keep-datapath")));
    assert!(!super::keeps_datapath(Some("keep-datapath=false")));
    assert!(!super::keeps_datapath(None));
}
