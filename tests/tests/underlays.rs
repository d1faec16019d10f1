//! Real networks under the overlay: hosts in different subnets behind routers, a smaller MTU
//! on the way (answered with ICMP, or dropped silently), a host behind 1:1 NAT, routes that
//! move to another router mid-transfer, and a relaunch on a host without a default route.
//!
//! Each test first checks that its underlay carries the hosts' own traffic, so a failure
//! after that is the router's.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weave_tests::mesh::Report;
use weave_tests::underlay::NAT_PUBLIC_ADDR;
use weave_tests::{probe, require_root, require_tools, Container, LaunchOpts, TestBed};

/// What the tests run besides the router.
const TOOLS: &[&str] = &["ip", "ss", "nft", "ping", "iperf3", "nsenter"];

/// The MTU path tests put on the way, and the container MTU that leaves room for VXLAN.
const PATH_MTU: u32 = 1400;
const OVERLAY_MTU: u32 = PATH_MTU - 50;

/// How long after the connection is established a transfer over a smaller path MTU must
/// have completed.
const MTU_DEADLINE: Duration = Duration::from_secs(20);

/// The bytes of that transfer, and the port it goes to.
const MTU_TRANSFER: u64 = 5_000_000;
const TRANSFER_PORT: u16 = 7000;

/// Root and the tools, or no test: false when not root (a loud notice), a panic when a
/// tool is missing.
fn ready(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    require_tools(TOOLS);
    true
}

/// Every router's `status connections` and log tail, for messages.
fn report(bed: &TestBed) -> String {
    let mut out = String::new();
    for h in &bed.hosts {
        let Some(r) = h.router.as_ref() else { continue };
        let _ = writeln!(
            out,
            "--- host{} ({}) status connections:\n{}--- host{} log:\n{}",
            h.index,
            h.addr,
            r.connections().unwrap_or_else(|e| format!("({e})\n")),
            h.index,
            r.log_tail(30)
        );
    }
    out
}

/// Panics unless host `from` reaches host `to` on the underlay (at its dial address): the
/// test bed's own check, before any router runs.
fn assert_underlay_carries(bed: &TestBed, from: usize, to: usize) {
    let to_addr = bed.host(to).dial_addr.to_string();
    let out = bed
        .host(from)
        .ns
        .run(&["ping", "-n", "-c", "2", "-i", "0.3", "-W", "1", &to_addr])
        .expect("ping runs");
    assert!(
        out.success(),
        "test bed broken: host{from} does not reach host{to} ({to_addr}) on the underlay:\n{}",
        out.stdout
    );
}

/// Attaches container `c1` = 10.2.1.1/24 on host 1 and `c2` = 10.2.1.2/24 on host 2;
/// returns their indices.
fn attach_pair(bed: &mut TestBed) -> (usize, usize) {
    let a = bed
        .attach_container(1, "c1", "10.2.1.1/24")
        .unwrap_or_else(|e| panic!("attach on host1: {e}\n{}", report(bed)));
    let b = bed
        .attach_container(2, "c2", "10.2.1.2/24")
        .unwrap_or_else(|e| panic!("attach on host2: {e}\n{}", report(bed)));
    (a, b)
}

/// Container `from` pings `to`'s address until answered, within `timeout`.
fn assert_reaches(bed: &TestBed, from: usize, to: usize, timeout: Duration) {
    let (src, dst) = (bed.container(from), bed.container(to));
    let ip = dst.ip().expect("attached");
    src.wait_ping(ip, timeout).unwrap_or_else(|e| {
        panic!(
            "{e}\nlast ping:\n{}\n{}",
            src.ping(ip, 1).map(|o| o.stdout).unwrap_or_default(),
            report(bed)
        )
    });
}

/// Waits until every router lists an established connection on `overlay`.
fn assert_overlay(bed: &TestBed, overlay: &str) {
    for h in &bed.hosts {
        h.router()
            .wait_connection_with(&format!(" {overlay} "), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}\n{}", report(bed)));
    }
}

/// Addresses that answered a ping from `from` run with `args` (e.g. `-b` to a broadcast
/// address): the ping's output and the repliers.
fn repliers(from: &Container, args: &[&str]) -> (String, BTreeSet<String>) {
    let mut argv = vec!["ping", "-n", "-c", "4", "-i", "0.3", "-W", "1"];
    argv.extend(args);
    let out = from
        .ns
        .run_timeout(&argv, Duration::from_secs(20))
        .expect("ping runs");
    let who = probe::answered_by(&out.stdout);
    (format!("{}{}", out.stdout, out.stderr), who)
}

/// Lets container `c` answer pings to broadcast and multicast addresses.
fn answer_broadcasts(bed: &TestBed, c: usize) {
    bed.container(c)
        .ns
        .sysctl("net.ipv4.icmp_echo_ignore_broadcasts", "0")
        .expect("sysctl");
}

/// Asserts that a broadcast ping from container `from` is answered by every container in
/// `to`.
fn assert_broadcast_reaches(bed: &TestBed, from: usize, to: &[usize]) {
    for &c in to {
        answer_broadcasts(bed, c);
    }
    let (out, who) = repliers(bed.container(from), &["-b", "10.2.1.255"]);
    for &c in to {
        let want = bed.container(c).ip().expect("attached");
        assert!(
            who.contains(want),
            "broadcast from {} not answered by {want}; answered by {who:?}:\n{out}\n{}",
            bed.container(from).ns.name(),
            report(bed)
        );
    }
}

/// An iperf3 TCP transfer of `secs` seconds from container `from` to container `to`, to be
/// done within `timeout`: what it moved, or why that is not at least `min_bytes`.
fn tcp_transfer(
    bed: &TestBed,
    from: usize,
    to: usize,
    secs: u32,
    timeout: Duration,
    min_bytes: u64,
) -> Result<probe::Transfer, String> {
    let dst = bed.container(to);
    let t = Instant::now();
    let transfer = probe::iperf3_tcp(
        &bed.container(from).ns,
        &dst.ns,
        dst.ip().expect("attached"),
        secs,
        timeout,
    )
    .map_err(|e| {
        format!(
            "TCP transfer to {} did not complete in {timeout:?}: {e}",
            dst.ns.name()
        )
    })?;
    eprintln!(
        "TCP transfer: {} bytes, {:.0} Mbit/s, {:.1?}",
        transfer.bytes,
        transfer.bits_per_second / 1e6,
        t.elapsed()
    );
    if transfer.bytes < min_bytes || transfer.bits_per_second <= 0.0 {
        return Err(format!(
            "TCP transfer to {} moved {} bytes ({:.0} bit/s), want at least {min_bytes}",
            dst.ns.name(),
            transfer.bytes,
            transfer.bits_per_second
        ));
    }
    Ok(transfer)
}

#[test]
fn routed_pair_carries_unicast_arp_broadcast_multicast_and_tcp() {
    if !ready("routed_pair_carries_unicast_arp_broadcast_multicast_and_tcp") {
        return;
    }
    let mut bed = TestBed::routed("wtup", 2).expect("routed bed");
    assert_underlay_carries(&bed, 1, 2);
    bed.launch_mesh(&[])
        .unwrap_or_else(|e| panic!("{e}\n{}", report(&bed)));
    let (a, b) = attach_pair(&mut bed);
    assert_reaches(&bed, a, b, Duration::from_secs(20));
    assert_reaches(&bed, b, a, Duration::from_secs(10));

    // ARP: host1's container resolved host2's to its MAC.
    let mac = probe::link_mac(&bed.container(b).ns, "ethwe").expect("MAC of c2");
    let neigh = probe::neighbour(&bed.container(a).ns, "10.2.1.2").expect("ip neigh");
    assert!(
        neigh.as_deref().is_some_and(|n| n.contains(&mac)),
        "c1's neighbour entry for 10.2.1.2 is {neigh:?}, not c2's MAC {mac}\n{}",
        report(&bed)
    );

    assert_broadcast_reaches(&bed, a, &[b]);

    // Multicast: the all-hosts group, which every interface joins.
    answer_broadcasts(&bed, b);
    let (out, who) = repliers(bed.container(a), &["-I", "ethwe", "224.0.0.1"]);
    assert!(
        who.contains("10.2.1.2"),
        "ping to 224.0.0.1 from c1 not answered by 10.2.1.2; answered by {who:?}:\n{out}\n{}",
        report(&bed)
    );

    assert_overlay(&bed, "fastdp");
    tcp_transfer(&bed, a, b, 3, Duration::from_secs(20), 1)
        .unwrap_or_else(|e| panic!("{e}\n{}", report(&bed)));
}

#[test]
fn routed_pair_sleeve_carries_ping() {
    if !ready("routed_pair_sleeve_carries_ping") {
        return;
    }
    let mut bed = TestBed::routed("wtuq", 2).expect("routed bed");
    assert_underlay_carries(&bed, 1, 2);
    bed.launch_mesh(&["--datapath", "sleeve"])
        .unwrap_or_else(|e| panic!("{e}\n{}", report(&bed)));
    let (a, b) = attach_pair(&mut bed);
    assert_reaches(&bed, a, b, Duration::from_secs(20));
    assert_reaches(&bed, b, a, Duration::from_secs(10));
    assert_overlay(&bed, "sleeve");
}

/// How long after host1 routes to host3 through host2 their containers must reach each
/// other: what was learned behind host3 stays, so traffic moves to the relay at once (it
/// took 25-50 s, until the containers' ARP entries expired, when it was flushed).
const RELAY_WITHIN: Duration = Duration::from_secs(8);

#[test]
fn routed_triangle_relays_across_subnets() {
    if !ready("routed_triangle_relays_across_subnets") {
        return;
    }
    let mut bed = TestBed::routed("wtut", 3).expect("routed bed");
    assert_underlay_carries(&bed, 1, 3);
    bed.launch_mesh(&[])
        .unwrap_or_else(|e| panic!("{e}\n{}", report(&bed)));
    let mut c = Vec::new();
    for i in 1..=3 {
        c.push(
            bed.attach_container(i, &format!("c{i}"), &format!("10.2.1.{i}/24"))
                .unwrap_or_else(|e| panic!("attach on host{i}: {e}\n{}", report(&bed))),
        );
    }
    assert_reaches(&bed, c[0], c[2], Duration::from_secs(20));

    // The routers stop forwarding between host1's and host3's subnets.
    bed.block_forwarding(1, 3).expect("block 1-3");
    let r1 = bed.router(1);
    weave_tests::cmd::wait_for(
        "host1 to drop its connection to host3",
        Duration::from_secs(60),
        || {
            let s = r1.connections().ok()?;
            (!s.lines()
                .any(|l| l.contains("established") && l.contains("(host3)")))
            .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", report(&bed)));
    let (peer2, peer3) = (bed.peer_name(2), bed.peer_name(3));
    weave_tests::cmd::wait_for(
        "host1 to route to host3 through host2",
        Duration::from_secs(30),
        || {
            let rep = Report::of(r1).ok()?;
            (rep.next_hop(&peer3).as_deref() == Some(peer2.as_str())).then_some(())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nroutes: {}\n{}",
            Report::of(r1).map(|r| r.routes_text()).unwrap_or_default(),
            report(&bed)
        )
    });

    let t = Instant::now();
    assert_reaches(&bed, c[0], c[2], RELAY_WITHIN);
    eprintln!(
        "host1's container reaches host3's through host2 after {:.1?}",
        t.elapsed()
    );
    assert_reaches(&bed, c[2], c[0], Duration::from_secs(10));
    assert_broadcast_reaches(&bed, c[0], &[c[1], c[2]]);
}

/// What carries the containers' traffic in a small-path-MTU test, and so what is checked.
#[derive(Clone, Copy)]
enum Carrier {
    /// The kernel fast path: both routers show the verified MTU ([`OVERLAY_MTU`] for
    /// containers) and the containers' MTU fits it.
    Fastdp,
    /// The user-space data path (UDP 6783), sealed with a password or plain: its datagrams
    /// are cut to what the path carries, and the container MTU stays the sleeve's default.
    Sleeve { encrypted: bool },
}

/// The password of the encrypted sleeve tests.
const SLEEVE_PASSWORD: &str = "small path secret";

impl Carrier {
    fn launch_args(self) -> &'static [&'static str] {
        match self {
            Carrier::Fastdp => &[],
            Carrier::Sleeve { encrypted: true } => &["--password", SLEEVE_PASSWORD],
            Carrier::Sleeve { encrypted: false } => &["--datapath", "sleeve"],
        }
    }

    /// How long after the connection is established the transfers must be done.
    fn deadline(self) -> Duration {
        match self {
            Carrier::Fastdp => MTU_DEADLINE,
            Carrier::Sleeve { .. } => SLEEVE_MTU_DEADLINE,
        }
    }
}

/// [`MTU_DEADLINE`] for the sleeve, which has no fast path to fall back from.
const SLEEVE_MTU_DEADLINE: Duration = Duration::from_secs(30);

/// Two hosts whose path has an MTU of [`PATH_MTU`] (already set on `bed`), their routers
/// on `carrier`: once their connection is established, TCP transfers of [`MTU_TRANSFER`]
/// bytes between their containers, one each way, complete within the carrier's deadline;
/// on the fast path both routers also show the verified MTU, and the containers' MTU fits it.
fn small_path_mtu_is_found(mut bed: TestBed, carrier: Carrier) {
    bed.launch_mesh(carrier.launch_args())
        .unwrap_or_else(|e| panic!("{e}\n{}", report(&bed)));
    let established = Instant::now();
    let deadline = carrier.deadline();
    if let Carrier::Sleeve { encrypted } = carrier {
        let want = if encrypted {
            " encrypted "
        } else {
            " unencrypted "
        };
        for h in &bed.hosts {
            let line = h
                .router()
                .wait_connection_with(" sleeve", Duration::from_secs(5))
                .ok()
                .and_then(|c| {
                    c.lines()
                        .find(|l| l.contains("established") && l.contains(" sleeve"))
                        .map(str::to_string)
                });
            assert!(
                line.as_deref().is_some_and(|l| l.contains(want)),
                "host{}: no established{want}sleeve connection: {line:?}\n{}",
                h.index,
                report(&bed)
            );
        }
    }
    let (a, b) = attach_pair(&mut bed);
    assert_reaches(&bed, a, b, Duration::from_secs(10));
    // One transfer each way, at the same time: each has what is left of the deadline.
    let left = deadline.saturating_sub(established.elapsed());
    let transfer = |from: usize, to: usize| {
        let (client, server) = (&bed.container(from).ns, &bed.container(to).ns);
        let server_ip = bed
            .container(to)
            .ip()
            .expect("attached")
            .parse()
            .expect("IPv4");
        match probe::tcp_send(client, server, server_ip, TRANSFER_PORT, MTU_TRANSFER, left) {
            Ok(took) => {
                eprintln!(
                    "{MTU_TRANSFER} bytes over TCP from {} in {took:.1?}",
                    client.name()
                );
                None
            }
            Err(e) => Some(format!("TCP transfer from {}: {e}", client.name())),
        }
    };
    let mut wrong: Vec<String> = std::thread::scope(|s| {
        let there = s.spawn(|| transfer(a, b));
        let back = transfer(b, a);
        [there.join().expect("transfer thread"), back]
    })
    .into_iter()
    .flatten()
    .collect();
    if let Carrier::Fastdp = carrier {
        let want = format!("mtu={OVERLAY_MTU}");
        for h in &bed.hosts {
            let left = deadline.saturating_sub(established.elapsed());
            if let Err(e) = h.router().wait_connection_with(&want, left) {
                wrong.push(format!("host{}: {e}", h.index));
            }
        }
        for c in [a, b] {
            let ns = &bed.container(c).ns;
            let left = deadline.saturating_sub(established.elapsed());
            let fits =
                weave_tests::cmd::wait_for("the container MTU to fit the path", left, || {
                    probe::link_mtu(ns, "ethwe")
                        .ok()
                        .filter(|m| *m <= OVERLAY_MTU)
                });
            if fits.is_err() {
                wrong.push(format!(
                    "{}: ethwe MTU {:?}, want <= {OVERLAY_MTU}",
                    ns.name(),
                    probe::link_mtu(ns, "ethwe")
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "path MTU {PATH_MTU} not found within {deadline:?}:\n{}\n{}",
        wrong.join("\n"),
        report(&bed)
    );
}

#[test]
fn silent_small_mtu_hop_is_found_and_used() {
    if !ready("silent_small_mtu_hop_is_found_and_used") {
        return;
    }
    let bed = TestBed::new("wtum", 2).expect("flat bed");
    bed.limit_segment_mtu(2, PATH_MTU).expect("small-MTU hop");
    assert_underlay_carries(&bed, 1, 2);
    small_path_mtu_is_found(bed, Carrier::Fastdp);
}

#[test]
fn icmp_small_mtu_hop_is_found_and_used() {
    if !ready("icmp_small_mtu_hop_is_found_and_used") {
        return;
    }
    let bed = TestBed::routed("wtui", 2).expect("routed bed");
    bed.limit_routed_mtu(2, PATH_MTU)
        .expect("small MTU towards host2");
    assert_underlay_carries(&bed, 1, 2);
    small_path_mtu_is_found(bed, Carrier::Fastdp);
}

#[test]
fn encrypted_sleeve_over_a_silent_small_mtu_hop() {
    if !ready("encrypted_sleeve_over_a_silent_small_mtu_hop") {
        return;
    }
    let bed = TestBed::new("wtue", 2).expect("flat bed");
    bed.limit_segment_mtu(2, PATH_MTU).expect("small-MTU hop");
    assert_underlay_carries(&bed, 1, 2);
    small_path_mtu_is_found(bed, Carrier::Sleeve { encrypted: true });
}

#[test]
fn plain_sleeve_over_an_icmp_small_mtu_hop() {
    if !ready("plain_sleeve_over_an_icmp_small_mtu_hop") {
        return;
    }
    let bed = TestBed::routed("wtuo", 2).expect("routed bed");
    bed.limit_routed_mtu(2, PATH_MTU)
        .expect("small MTU towards host2");
    assert_underlay_carries(&bed, 1, 2);
    small_path_mtu_is_found(bed, Carrier::Sleeve { encrypted: false });
}

/// Host 1 dials host 2 at the public address of its 1:1 NAT, both routers launched with
/// `extra`; their containers ping each other and the connection is on `overlay`.
fn nat_carries_ping(prefix: &str, extra: &[&str], overlay: &str) {
    let mut bed = TestBed::nat(prefix).expect("NAT bed");
    assert_underlay_carries(&bed, 1, 2);
    assert_underlay_carries(&bed, 2, 1);
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let dial = LaunchOpts {
        peers: vec![NAT_PUBLIC_ADDR.to_string()],
        extra: extra.clone(),
    };
    bed.launch(1, &dial)
        .unwrap_or_else(|e| panic!("launch host1: {e}"));
    let accept = LaunchOpts {
        peers: Vec::new(),
        extra,
    };
    if let Err(e) = bed.launch(2, &accept).map(|_| ()) {
        panic!("launch host2: {e}\n{}", report(&bed));
    }
    for i in 1..=2 {
        bed.router(i)
            .wait_established(1, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}\n{}", report(&bed)));
    }
    let (a, b) = attach_pair(&mut bed);
    assert_reaches(&bed, a, b, Duration::from_secs(20));
    assert_reaches(&bed, b, a, Duration::from_secs(10));
    assert_overlay(&bed, overlay);
}

#[test]
fn nat_one_to_one_fastdp_carries_ping() {
    if !ready("nat_one_to_one_fastdp_carries_ping") {
        return;
    }
    nat_carries_ping("wtunf", &[], "fastdp");
}

#[test]
fn nat_one_to_one_sleeve_carries_ping() {
    if !ready("nat_one_to_one_sleeve_carries_ping") {
        return;
    }
    nat_carries_ping("wtuns", &["--datapath", "sleeve"], "sleeve");
}

/// Interval of the steady ping in [`route_change_mid_transfer_keeps_traffic`], in seconds.
const STEADY_INTERVAL: &str = "0.2";

/// The times (seconds since the epoch) of the replies in `ping -D` output.
fn reply_times(ping_output: &str) -> Vec<f64> {
    ping_output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

#[test]
fn route_change_mid_transfer_keeps_traffic() {
    if !ready("route_change_mid_transfer_keeps_traffic") {
        return;
    }
    let mut bed = TestBed::routed_by("wtuc", 2, &["ra", "rb"]).expect("bed with two routers");
    assert_underlay_carries(&bed, 1, 2);
    bed.launch_mesh(&[])
        .unwrap_or_else(|e| panic!("{e}\n{}", report(&bed)));
    let (a, b) = attach_pair(&mut bed);
    assert_reaches(&bed, a, b, Duration::from_secs(20));

    let _server = probe::iperf3_server(&bed.container(b).ns).expect("iperf3 server");
    let mut client = bed
        .container(a)
        .ns
        .spawn(&probe::iperf3_client_argv("10.2.1.2", 12))
        .expect("iperf3 client");
    let mut ping = bed
        .container(a)
        .ns
        .spawn(&[
            "ping",
            "-D",
            "-n",
            "-i",
            STEADY_INTERVAL,
            "-W",
            "1",
            "10.2.1.2",
        ])
        .expect("steady ping");
    std::thread::sleep(Duration::from_secs(3));

    // Both hosts move to rb, then ra goes away.
    bed.route_via("rb").expect("routes via rb");
    std::thread::sleep(Duration::from_millis(500));
    bed.cut_router("ra").expect("cut ra");
    let cut = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();

    let finished = weave_tests::cmd::wait_for(
        "the iperf3 client to finish",
        Duration::from_secs(40),
        || (!client.running()).then_some(()),
    );
    let out = client.stop();
    let pings = ping.stop();
    let after: Vec<f64> = reply_times(&pings.stdout)
        .into_iter()
        .filter(|t| *t > cut)
        .collect();
    let gap = reply_times(&pings.stdout)
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max);
    eprintln!(
        "after the route change: {} ping replies, longest gap between replies {gap:.1}s",
        after.len()
    );
    assert!(
        finished.is_ok(),
        "iperf3 still running 40 s after the route change:\n{}\n{}",
        out.stdout.chars().take(2000).collect::<String>(),
        report(&bed)
    );
    let transfer = probe::parse_iperf3(&out.stdout)
        .unwrap_or_else(|e| panic!("iperf3 across the route change: {e}\n{}", report(&bed)));
    eprintln!(
        "TCP transfer across the route change: {} bytes, {:.0} Mbit/s",
        transfer.bytes,
        transfer.bits_per_second / 1e6
    );
    assert!(
        transfer.bytes > 0,
        "no bytes across the route change\n{}",
        report(&bed)
    );
    assert!(
        after.len() >= 5,
        "{} ping replies after ra was cut:\n{}\n{}",
        after.len(),
        pings
            .stdout
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n"),
        report(&bed)
    );
    assert_reaches(&bed, b, a, Duration::from_secs(5));
}

#[test]
fn relaunch_without_default_route_or_iface() {
    if !ready("relaunch_without_default_route_or_iface") {
        return;
    }
    let mut bed = TestBed::new("wtul", 2).expect("flat bed");
    for h in &mut bed.hosts {
        h.iface = None;
    }
    let routes = bed.host(1).ns.ip("route show default").expect("ip route");
    assert!(
        routes.trim().is_empty(),
        "host1 has a default route: {routes}"
    );
    bed.launch_mesh(&[])
        .unwrap_or_else(|e| panic!("{e}\n{}", report(&bed)));
    let (a, b) = attach_pair(&mut bed);
    assert_reaches(&bed, a, b, Duration::from_secs(20));

    // Host 1 dials nobody: only its interfaces tell the underlay, and now the router's own
    // devices are among them.
    if let Err(e) = bed.relaunch(1, &LaunchOpts::default()).map(|_| ()) {
        panic!("relaunch on host1: {e}\n{}", report(&bed));
    }
    for i in 1..=2 {
        bed.router(i)
            .wait_established(1, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}\n{}", report(&bed)));
    }
    assert_reaches(&bed, a, b, Duration::from_secs(20));
}
