//! Fallback to the sleeve: when UDP 6784 is blocked between two hosts while their control
//! connection works, their containers' traffic moves to the sleeve (UDP 6783) within
//! seconds, and back to the fast path once VXLAN gets through again; a router that may not
//! load BPF programs carries every peer through the sleeve.

use std::time::{Duration, Instant};

use weave_ebpf_common::headers::{ETH_HLEN, VXLAN_HLEN};
use weave_ebpf_common::heartbeat::{
    read_heartbeat_payload, HEARTBEAT_ECHO, HEARTBEAT_FLAGS_OFFSET, HEARTBEAT_PAYLOAD_LEN,
};
use weave_tests::bed::{host_addr, FLAT_BRIDGE};
use weave_tests::mesh::{self, has_marker, udp, PcapCapture, MARKER_HEX};
use weave_tests::router::BPFFS_ROOT;
use weave_tests::{cmd, probe, require_root, Background, LaunchOpts, TestBed};

/// Interval of [`SteadyPing`], in seconds.
const STEADY_INTERVAL: f64 = 0.1;

/// A ping from host 1's container to host 2's every [`STEADY_INTERVAL`], in the
/// background, to see how long a switch interrupts traffic.
struct SteadyPing(Background);

impl SteadyPing {
    fn start(bed: &TestBed) -> SteadyPing {
        let interval = STEADY_INTERVAL.to_string();
        let bg = bed
            .container(0)
            .ns
            .spawn(&["ping", "-n", "-i", &interval, "-W", "1", "10.2.1.2"]);
        SteadyPing(bg.expect("ping runs"))
    }

    /// Stops it: (replies, the longest gap between two replies in seconds).
    fn stop(mut self) -> (usize, f64) {
        let out = self.0.stop();
        let seqs: Vec<u64> = out
            .stdout
            .lines()
            .filter_map(|l| l.split("icmp_seq=").nth(1)?.split(' ').next()?.parse().ok())
            .collect();
        let gap = seqs.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        (seqs.len(), gap as f64 * STEADY_INTERVAL)
    }
}

/// Both routers list their connection on `overlay`, within `timeout`; how long it took.
fn wait_overlay(bed: &TestBed, overlay: &str, timeout: Duration) -> Duration {
    let t = Instant::now();
    for i in 1..=2 {
        let r = bed.router(i);
        cmd::wait_for(
            &format!("host{i}'s connection on {overlay}"),
            timeout.saturating_sub(t.elapsed()),
            || {
                let c = r.connections().ok()?;
                c.lines()
                    .any(|l| l.contains("established") && l.contains(&format!(" {overlay} ")))
                    .then_some(())
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nhost{i}:\n{}\nlog:\n{}\nunderlay:\n{}",
                r.connections().unwrap_or_default(),
                r.log_tail(30),
                mesh::underlay_rules(bed)
            )
        });
    }
    t.elapsed()
}

/// Whether a UDP 6784 payload is a fast-path heartbeat or probe: VXLAN, then an inner
/// Ethernet header with a zero destination and ethertype 0x88b5.
fn is_heartbeat(vxlan: &[u8]) -> bool {
    vxlan.len() >= 8 + 14 && vxlan[8..14] == [0; 6] && vxlan[20..22] == [0x88, 0xb5]
}

/// UDP frames (source, destination port, payload) leaving host 1 while its container pings
/// host 2's with the marker in the payload (the pings must all be answered).
fn marker_ping(bed: &TestBed, capture: &str) -> Vec<(std::net::Ipv4Addr, u16, Vec<u8>)> {
    let cap = PcapCapture::start(&bed.host(1).ns, "eth0", capture);
    let out = bed.container(0).ns.run(&[
        "ping", "-c", "8", "-i", "0.2", "-W", "2", "-s", "1000", "-p", MARKER_HEX, "10.2.1.2",
    ]);
    let frames = cap.stop();
    let out = out.expect("ping runs");
    assert!(out.success(), "ping with the marker:\n{}", out.stdout);
    frames
        .iter()
        .filter_map(|f| udp(f).map(|(src, port, p)| (src, port, p.to_vec())))
        .filter(|(src, _, _)| *src == bed.host(1).addr)
        .collect()
}

/// Whether some of `frames` to `port` carry the marker.
fn marker_on(frames: &[(std::net::Ipv4Addr, u16, Vec<u8>)], port: u16) -> bool {
    frames.iter().any(|(_, p, d)| *p == port && has_marker(d))
}

fn switches(bed: &TestBed, i: usize, to: &str) -> f64 {
    let m = bed.router(i).metrics().expect("metrics");
    probe::metric_sum(&m, |s| {
        s.name == "weave_overlay_switches_total" && s.labels.contains(&format!("to=\"{to}\""))
    })
}

/// Two hosts launched with `extra`, a container on each; VXLAN blocked, then let through.
/// `sealed`: the sleeve encrypts (the marker must not show on it).
fn falls_back_and_recovers(prefix: &str, extra: &[&str], sealed: bool) {
    let mut bed = TestBed::new(prefix, 2).expect("test bed");
    bed.launch_mesh(extra).expect("routers connect");
    let a = bed
        .attach_container(1, "c1", "10.2.1.1/24")
        .expect("attach");
    bed.attach_container(2, "c1", "10.2.1.2/24")
        .expect("attach");
    bed.container(a)
        .wait_ping("10.2.1.2", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\nhost1 log:\n{}", bed.router(1).log_tail(30)));
    wait_overlay(&bed, "fastdp", Duration::from_secs(5));
    let frames = marker_ping(&bed, "fb-fast");
    assert!(marker_on(&frames, 6784), "the marker travels in VXLAN");
    assert!(!marker_on(&frames, 6783), "nothing on the sleeve yet");

    // VXLAN blocked, the control connection untouched.
    let ping = SteadyPing::start(&bed);
    std::thread::sleep(Duration::from_secs(1));
    mesh::block_udp_port(&bed, 1, 2, 6784).expect("block UDP 6784");
    let took = wait_overlay(&bed, "sleeve", Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(2));
    let (replies, gap) = ping.stop();
    eprintln!(
        "fast path blocked: both on the sleeve after {took:.1?}; pings answered: {replies}, longest gap {gap:.1}s"
    );
    for i in 1..=2 {
        let c = bed.router(i).connections().unwrap();
        assert!(c.contains("established"), "host{i}: {c}");
        assert!(
            bed.router(i)
                .log_tail(50)
                .contains("fast path blocked, using sleeve"),
            "host{i} logs the switch:\n{}",
            bed.router(i).log_tail(20)
        );
        assert!(switches(&bed, i, "sleeve") >= 1.0);
    }
    bed.container(a)
        .wait_ping("10.2.1.2", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\nhost1 log:\n{}", bed.router(1).log_tail(30)));
    let frames = marker_ping(&bed, "fb-sleeve");
    assert!(
        frames.iter().filter(|(_, p, _)| *p == 6783).count() >= 5,
        "sleeve datagrams on UDP 6783"
    );
    assert_eq!(
        marker_on(&frames, 6783),
        !sealed,
        "the marker on the sleeve (sealed: {sealed})"
    );
    assert!(
        !marker_on(&frames, 6784),
        "container frames still sent as VXLAN"
    );
    assert!(
        frames.iter().any(|(_, p, d)| *p == 6784 && is_heartbeat(d)),
        "heartbeats keep trying the fast path"
    );

    // VXLAN gets through again.
    let ping = SteadyPing::start(&bed);
    std::thread::sleep(Duration::from_secs(1));
    mesh::unblock_udp_port(&bed, 1, 2, 6784).expect("unblock UDP 6784");
    let took = wait_overlay(&bed, "fastdp", Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(2));
    let (replies, gap) = ping.stop();
    eprintln!(
        "fast path back: both on fastdp after {took:.1?}; pings answered: {replies}, longest gap {gap:.1}s"
    );
    for i in 1..=2 {
        assert!(
            bed.router(i).log_tail(50).contains("fast path works again"),
            "host{i} logs the switch back:\n{}",
            bed.router(i).log_tail(20)
        );
        assert!(switches(&bed, i, "fastdp") >= 1.0);
    }
    bed.container(a)
        .wait_ping("10.2.1.2", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\nhost1 log:\n{}", bed.router(1).log_tail(30)));
    let frames = marker_ping(&bed, "fb-back");
    assert!(marker_on(&frames, 6784), "VXLAN carries the marker again");
    assert!(
        !frames.iter().any(|(_, p, _)| *p == 6783),
        "nothing on the sleeve any more"
    );
}

#[test]
fn blocked_vxlan_falls_back_to_the_sleeve_and_recovers() {
    if !require_root("blocked_vxlan_falls_back_to_the_sleeve_and_recovers") {
        return;
    }
    falls_back_and_recovers("fall", &[], false);
}

#[test]
fn trusted_peers_fall_back_to_the_sealed_sleeve() {
    if !require_root("trusted_peers_fall_back_to_the_sealed_sleeve") {
        return;
    }
    falls_back_and_recovers(
        "fallt",
        &[
            "--password",
            "fallback secret",
            "--trusted-subnets",
            "198.18.0.0/24",
        ],
        true,
    );
}

#[test]
fn a_router_without_bpf_carries_every_peer_through_the_sleeve() {
    if !require_root("a_router_without_bpf_carries_every_peer_through_the_sleeve") {
        return;
    }
    let mut bed = TestBed::new("fallb", 2).expect("test bed");
    // Host 1's router is started where bpf() fails with EPERM (a seccomp filter the
    // launch, and the daemon it starts, inherit).
    weave_tests::sandbox::without_bpf(|| bed.launch(1, &LaunchOpts::default()).map(|_| ()))
        .expect("seccomp filter")
        .expect("host1 launches without BPF");
    let opts = LaunchOpts {
        peers: vec![host_addr(1).to_string()],
        extra: vec![],
    };
    bed.launch(2, &opts).expect("host2 launches");
    for i in 1..=2 {
        bed.router(i)
            .wait_established(1, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}\nhost{i} log:\n{}", bed.router(i).log_tail(30)));
    }
    let log = bed.router(1).log_tail(100);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot use BPF"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning line:\n{log}");
    assert!(
        warnings[0].contains("Operation not permitted")
            && warnings[0].contains("every peer goes through the sleeve"),
        "{}",
        warnings[0]
    );
    assert!(
        !std::path::Path::new(BPFFS_ROOT)
            .join(bed.peer_name(1))
            .exists(),
        "host1 pinned nothing"
    );
    // Host 1 puts host 2 on the sleeve and says so; host 2 follows at once.
    wait_overlay(&bed, "sleeve", Duration::from_secs(10));

    let a = bed
        .attach_container(1, "c1", "10.2.1.1/24")
        .expect("attach without BPF");
    let b = bed
        .attach_container(2, "c1", "10.2.1.2/24")
        .expect("attach");
    assert_eq!(
        probe::link_mtu(&bed.container(a).ns, "ethwe").expect("ethwe"),
        1400,
        "the sleeve's MTU where it is the only path"
    );
    bed.container(a)
        .wait_ping("10.2.1.2", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\nhost1 log:\n{}", bed.router(1).log_tail(30)));
    let out = bed.container(b).ping("10.2.1.1", 3).expect("ping runs");
    assert!(out.success(), "host2 -> host1:\n{}", out.stdout);
    let frames = marker_ping(&bed, "fb-nobpf");
    assert!(marker_on(&frames, 6783), "the marker on the sleeve");
    assert!(
        !frames.iter().any(|(_, p, _)| *p == 6784),
        "no VXLAN at all"
    );
}

/// Plain fast-path heartbeats (round 0) and their kernel echoes leaving each host on the
/// underlay within `frames`: (plain heartbeats from host 1, from host 2, echoes from host
/// 1, from host 2).
fn heartbeat_streams(bed: &TestBed, frames: &[Vec<u8>]) -> [usize; 4] {
    let mut counts = [0; 4];
    for (src, _, vxlan) in frames.iter().filter_map(|f| udp(f)) {
        let Some(inner) = vxlan.get(VXLAN_HLEN..) else {
            continue;
        };
        let (Some(payload), Some(&flags)) = (
            inner.get(ETH_HLEN..ETH_HLEN + HEARTBEAT_PAYLOAD_LEN),
            inner.get(HEARTBEAT_FLAGS_OFFSET),
        ) else {
            continue;
        };
        let (_, round) = read_heartbeat_payload(payload.try_into().unwrap());
        if !is_heartbeat(vxlan) || round != 0 {
            continue;
        }
        let from = if src == bed.host(1).addr { 0 } else { 1 };
        counts[if flags & HEARTBEAT_ECHO != 0 {
            2 + from
        } else {
            from
        }] += 1;
    }
    counts
}

/// Two idle routers: once the path MTU is found, one of them (the lower name) sends a plain
/// heartbeat a second and the other's kernel echoes it; the other sends none of its own,
/// and both stay on the fast path. When the heartbeats stop arriving (VXLAN blocked) the
/// other sends its own again, and both still fall back to the sleeve.
#[test]
fn an_idle_pair_shares_one_stream_of_heartbeats() {
    if !require_root("an_idle_pair_shares_one_stream_of_heartbeats") {
        return;
    }
    let mut bed = TestBed::new("fallh", 2).expect("test bed");
    bed.launch_mesh(&[]).expect("routers connect");
    wait_overlay(&bed, "fastdp", Duration::from_secs(10));
    // The first probe rounds take a few seconds: heartbeats are floor-sized meanwhile, and
    // both ends send them.
    std::thread::sleep(Duration::from_secs(6));
    let cap = PcapCapture::start(&bed.underlay(), FLAT_BRIDGE, "fallh-idle");
    std::thread::sleep(Duration::from_secs(6));
    let [plain1, plain2, echoes1, echoes2] = heartbeat_streams(&bed, &cap.stop());
    eprintln!("in 6 s: plain heartbeats {plain1} and {plain2}, echoes {echoes1} and {echoes2}");
    let (sender_plain, other_plain, other_echoes) = if plain1 > plain2 {
        (plain1, plain2, echoes2)
    } else {
        (plain2, plain1, echoes1)
    };
    assert!(
        (5..=8).contains(&sender_plain),
        "one heartbeat a second from one end: {plain1}, {plain2}"
    );
    assert!(
        other_plain <= 1,
        "the other end leaves them to it: {plain1}, {plain2}"
    );
    assert!(
        other_echoes + 1 >= sender_plain,
        "each echoed: {echoes1}, {echoes2}"
    );
    for i in 1..=2 {
        let c = bed.router(i).connections().unwrap();
        assert!(
            c.contains(" fastdp "),
            "host{i} stays on the fast path: {c}"
        );
        assert_eq!(switches(&bed, i, "sleeve"), 0.0, "host{i} never switched");
    }
    // Nothing crosses the fast path any more: both ends send, both fall back.
    mesh::block_udp_port(&bed, 1, 2, 6784).expect("block UDP 6784");
    std::thread::sleep(Duration::from_secs(2));
    let cap = PcapCapture::start(&bed.underlay(), FLAT_BRIDGE, "fallh-blocked");
    std::thread::sleep(Duration::from_secs(4));
    let [plain1, plain2, _, _] = heartbeat_streams(&bed, &cap.stop());
    eprintln!("VXLAN blocked, in 4 s: plain heartbeats {plain1} and {plain2}");
    assert!(
        plain1 >= 3 && plain2 >= 3,
        "both ends send: {plain1}, {plain2}"
    );
    wait_overlay(&bed, "sleeve", Duration::from_secs(15));
}
