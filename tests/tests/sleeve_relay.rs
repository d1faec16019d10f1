//! Encrypted traffic across partially connected networks: the sleeve relays.
//!
//! With `--password` (or `--datapath sleeve`) container traffic travels in the sleeve, and a
//! peer that is not a direct neighbour on the underlay is reached hop by hop, each hop
//! sealing again for the next, so that a relay never puts plain text on the wire.
//!
//! * a line host1–host2–host3 with host1↔host3 cut, a password on all three: pings both ways
//!   and an iperf3 transfer through host2; a capture of host2's underlay holds sealed
//!   datagrams host1→host2 and host2→host3 and never the pings' marker; a broadcast from
//!   host1 reaches host2's and host3's containers exactly once;
//! * the same line with `--datapath sleeve` and no password, and without either (relayed by
//!   the kernel in VXLAN: the control that shows the capture does see the marker when it is
//!   on the wire);
//! * a ring host1–host2–host3–host4–host1 (the diagonals cut) with a password: a broadcast
//!   reaches every host once, and pings from host1 to host3 recover within a bounded time
//!   when the link in use is cut and again when it is healed;
//! * a line where host1 and host2 trust each other (`--trusted-subnets`: VXLAN between them)
//!   but host2 and host3 do not (sealed): traffic host1↔host3 gets through both ways with no
//!   plain text towards host3 (the relayed frames cross the trusted hop sealed in the sleeve
//!   too; host1–host2's own traffic stays on the fast path);
//! * a line without a password where UDP 6784 is blocked on one hop (host1–host2, or
//!   host2–host3) after the ends have talked: that hop falls back to the sleeve, the other
//!   keeps the fast path, and the ends still reach each other both ways (host2's kernel
//!   hands the far end's VXLAN for the near end to its sleeve) and see each other's
//!   broadcasts once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weave_tests::mesh::{self, has_marker, PcapCapture, Report, MARKER_HEX};
use weave_tests::partial_mesh::{
    assert_once_each, broadcast_counts, container_on_each, dump, line, partial_mesh_each, ring,
};
use weave_tests::{cmd, host_addr, probe, require_root, require_tools, TestBed};

const PASSWORD: &[&str] = &["--password", "relay secret"];

/// The sleeve's UDP port (and the control connections' TCP port).
const SLEEVE_PORT: u16 = 6783;
/// VXLAN's UDP port.
const VXLAN_PORT: u16 = 6784;

/// The ICMP payload of the marker pings: their datagrams are the only ones this large.
const MARKER_PING_SIZE: usize = 1000;

/// A UDP datagram on the underlay between the bed's hosts, as these tests look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Datagram {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    /// UDP payload bytes.
    len: usize,
    /// Whether the frame holds [`MARKER_HEX`] anywhere.
    marker: bool,
}

impl Datagram {
    /// An IPv4 UDP datagram in an Ethernet frame.
    fn of(frame: &[u8]) -> Option<Datagram> {
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
            return None;
        }
        let ihl = (frame[14] & 0x0f) as usize * 4;
        let u = 14 + ihl;
        let port = |at: usize| Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
        Some(Datagram {
            src: Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]),
            dst: Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]),
            sport: port(u)?,
            dport: port(u + 2)?,
            len: frame.len().saturating_sub(u + 8),
            marker: has_marker(frame),
        })
    }

    fn on_port(&self, port: u16) -> bool {
        self.sport == port || self.dport == port
    }
}

/// The bed host index of an underlay address, else 0.
fn host_of(a: Ipv4Addr) -> usize {
    (1..=8).find(|&i| host_addr(i) == a).unwrap_or(0)
}

/// (from host, to host) → datagrams on `port` large enough to carry a marker ping.
fn large_legs(dgrams: &[Datagram], port: u16) -> BTreeMap<(usize, usize), usize> {
    let mut m = BTreeMap::new();
    for d in dgrams
        .iter()
        .filter(|d| d.on_port(port) && d.len >= MARKER_PING_SIZE)
    {
        *m.entry((host_of(d.src), host_of(d.dst))).or_insert(0) += 1;
    }
    m
}

/// A one-line-per-flow account of a capture, for messages: (from, to, port) → datagrams,
/// large ones, and those holding the marker.
fn capture_text(dgrams: &[Datagram]) -> String {
    let mut m: BTreeMap<(usize, usize, u16), (usize, usize, usize)> = BTreeMap::new();
    for d in dgrams {
        let port = if d.on_port(VXLAN_PORT) {
            VXLAN_PORT
        } else if d.on_port(SLEEVE_PORT) {
            SLEEVE_PORT
        } else {
            d.dport
        };
        let e = m.entry((host_of(d.src), host_of(d.dst), port)).or_default();
        e.0 += 1;
        e.1 += usize::from(d.len >= MARKER_PING_SIZE);
        e.2 += usize::from(d.marker);
    }
    let mut out = String::from(
        "capture (from host -> to host, UDP port): datagrams, large, with the marker\n",
    );
    for ((s, d, p), (n, large, marked)) in m {
        let _ = writeln!(out, "  host{s} -> host{d} :{p}: {n}, {large}, {marked}");
    }
    out
}

/// What the wire between the hosts must show while marker pings are relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// Sealed in the sleeve: datagrams on 6783, no VXLAN, the marker nowhere.
    Sealed,
    /// In the sleeve without a password: datagrams on 6783, no VXLAN; the marker may show.
    Sleeve,
    /// Relayed by the kernel in VXLAN: datagrams on 6784 carrying the marker in plain text.
    Vxlan,
}

/// Containers c1 on host1, host2 and host3 of a line (10.2.1.1-3); their indices once
/// host1's reaches host3's.
fn three_containers(bed: &mut TestBed) -> (usize, usize, usize) {
    let mut c = Vec::new();
    for h in 1..=3 {
        c.push(
            bed.attach_container(h, "c1", &format!("10.2.1.{h}/24"))
                .expect("attach"),
        );
    }
    let cap = PcapCapture::start(&bed.host(2).ns, "eth0", "first-reach");
    let reached = bed
        .container(c[0])
        .wait_ping("10.2.1.3", Duration::from_secs(20));
    let seen: Vec<Datagram> = cap.stop().iter().filter_map(|f| Datagram::of(f)).collect();
    reached.unwrap_or_else(|e| {
        panic!(
            "host1's container never reached host3's through host2: {e}\n\
             meanwhile on host2's eth0: {}{}",
            capture_text(&seen),
            dump(bed)
        )
    });
    (c[0], c[1], c[2])
}

/// The control plane of a line: host1 and host3 route to each other via host2 and have no
/// direct connection.
fn assert_routes_via_the_middle(bed: &TestBed) {
    let (a, b, c) = (bed.peer_name(1), bed.peer_name(2), bed.peer_name(3));
    for (from, to) in [(1, &c), (3, &a)] {
        let rep = Report::of(bed.router(from)).expect("report");
        assert_eq!(
            rep.next_hop(to).as_deref(),
            Some(b.as_str()),
            "host{from}'s route to {to} should be via host2: {}\n{}",
            rep.routes_text(),
            dump(bed)
        );
    }
    let conns = bed.router(1).connections().expect("connections");
    assert!(
        !conns
            .lines()
            .any(|l| l.contains("established") && l.contains(&c)),
        "host1 has a direct connection to host3 although the link is cut:\n{conns}"
    );
}

/// `status connections` on host1 and host3 shows the other end as relayed via host2, over
/// the path `how` says (e.g. `encrypted   sleeve`).
fn assert_shown_relayed(bed: &TestBed, how: &str) {
    let b = bed.peer_name(2);
    for (from, to) in [(1, 3), (3, 1)] {
        let other = bed.peer_name(to);
        let shown = |conns: &str| {
            conns.lines().any(|l| {
                l.contains("relayed")
                    && l.contains(how)
                    && l.contains(&format!("{other}("))
                    && l.contains(&format!("via {b}("))
            })
        };
        let r = bed.router(from);
        cmd::wait_for("the relayed peer in `status connections`", Duration::from_secs(10), || {
            shown(&r.connections().ok()?).then_some(())
        })
        .unwrap_or_else(|e| {
            let conns = r.connections().unwrap_or_default();
            panic!("host{from}'s `status connections` should show host{to} relayed via host2 ({how}): {e}\n{conns}")
        });
    }
}

/// Pings 10.2.1.3 from host1's container and 10.2.1.1 from host3's, five times each with
/// the marker in a payload of [`MARKER_PING_SIZE`], while capturing host2's underlay; checks
/// that the pings went through host2 as `wire` says.
fn assert_marker_pings_relayed(bed: &TestBed, ca: usize, cc: usize, wire: Wire, name: &str) {
    let cap = PcapCapture::start(&bed.host(2).ns, "eth0", name);
    let size = MARKER_PING_SIZE.to_string();
    let ping = |c: usize, dst: &str| {
        bed.container(c)
            .ns
            .run_timeout(
                &[
                    "ping", "-n", "-c", "5", "-i", "0.2", "-W", "1", "-s", &size, "-p", MARKER_HEX,
                    dst,
                ],
                Duration::from_secs(15),
            )
            .expect("ping runs")
    };
    let fwd = ping(ca, "10.2.1.3");
    let back = ping(cc, "10.2.1.1");
    let frames = cap.stop();
    // Any frame at all: UDP or not (TCP, a fragment, ...).
    let frames_with_marker = frames.iter().filter(|f| has_marker(f)).count();
    let dgrams: Vec<Datagram> = frames.iter().filter_map(|f| Datagram::of(f)).collect();
    let port = match wire {
        Wire::Sealed | Wire::Sleeve => SLEEVE_PORT,
        Wire::Vxlan => VXLAN_PORT,
    };
    let legs = large_legs(&dgrams, port);
    let summary = format!(
        "{wire:?}: large datagrams on UDP {port} on host2's eth0 (from, to) -> n: {legs:?}\n\
         {} frames captured, {frames_with_marker} with the marker\n{}{}",
        frames.len(),
        capture_text(&dgrams),
        dump(bed)
    );
    assert!(
        fwd.success(),
        "ping host1 -> host3 with the marker failed:\n{}\n{summary}",
        fwd.stdout
    );
    assert!(
        back.success(),
        "ping host3 -> host1 with the marker failed:\n{}\n{summary}",
        back.stdout
    );
    // Each leg: five requests of one run and five replies to the other's.
    for (s, d) in [(1, 2), (2, 3), (3, 2), (2, 1)] {
        let n = legs.get(&(s, d)).copied().unwrap_or(0);
        assert!(
            n >= 10,
            "expected at least 10 large datagrams host{s} -> host{d} on UDP {port} through host2, saw {n}\n{summary}"
        );
    }
    let vxlan = dgrams.iter().filter(|d| d.on_port(VXLAN_PORT)).count();
    let marked: Vec<&Datagram> = dgrams.iter().filter(|d| d.marker).collect();
    match wire {
        Wire::Sealed => {
            assert!(
                marked.is_empty() && frames_with_marker == 0,
                "the marker is on the wire in plain text: {marked:?}\n{summary}"
            );
            assert_eq!(vxlan, 0, "VXLAN on the wire with a password\n{summary}");
        }
        Wire::Sleeve => {
            assert_eq!(
                vxlan, 0,
                "VXLAN on the wire with --datapath sleeve\n{summary}"
            );
        }
        Wire::Vxlan => {
            // The control: the capture does see the marker when it is on the wire.
            for (s, d) in [(1, 2), (2, 3)] {
                assert!(
                    marked
                        .iter()
                        .any(|m| host_of(m.src) == s && host_of(m.dst) == d),
                    "plain VXLAN host{s} -> host{d} should show the marker\n{summary}"
                );
            }
        }
    }
}

/// An iperf3 TCP transfer of a few seconds from container `from` to `to_ip` in `to`; it
/// must move at least a megabyte.
fn assert_transfer(bed: &TestBed, from: usize, to: usize, to_ip: &str) {
    let t = probe::iperf3_tcp(
        &bed.container(from).ns,
        &bed.container(to).ns,
        to_ip,
        3,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("iperf3 to {to_ip}: {e}\n{}", dump(bed)));
    eprintln!(
        "iperf3 to {to_ip}: {} bytes, {:.1} Mbit/s",
        t.bytes,
        t.bits_per_second / 1e6
    );
    assert!(
        t.bytes >= 1_000_000,
        "iperf3 to {to_ip} moved only {} bytes\n{}",
        t.bytes,
        dump(bed)
    );
}

/// A broadcast from host1's container reaches host2's and host3's exactly once.
fn assert_broadcast_once(bed: &TestBed, from: usize, to: &[usize]) {
    let (counts, out) = broadcast_counts(bed, from, to, 3);
    assert_once_each(bed, &counts, 3, &out);
}

/// Every established connection of host `i` says `encryption` (`encrypted`,
/// `unencrypted`) and `overlay` (`sleeve`, `fastdp`) in `status connections`.
fn assert_connections(bed: &TestBed, i: usize, encryption: &str, overlay: &str) {
    let c = bed.router(i).connections().expect("connections");
    let est: Vec<Vec<&str>> = c
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.contains(&"established"))
        .collect();
    assert!(
        !est.is_empty()
            && est
                .iter()
                .all(|w| w.contains(&encryption) && w.contains(&overlay)),
        "host{i}: every connection should be {encryption}, {overlay}:\n{c}"
    );
}

#[test]
fn line_with_a_password_relays_encrypted_traffic_through_the_middle() {
    if !require_root("line_with_a_password_relays_encrypted_traffic_through_the_middle") {
        return;
    }
    require_tools(&["tcpdump", "iperf3", "nft"]);
    let mut bed = line("srl", PASSWORD);
    for i in 1..=3 {
        assert_connections(&bed, i, "encrypted", "sleeve");
    }
    assert_routes_via_the_middle(&bed);
    assert_shown_relayed(&bed, "encrypted   sleeve");
    let (ca, cb, cc) = three_containers(&mut bed);
    assert_marker_pings_relayed(&bed, ca, cc, Wire::Sealed, "srl-h2");
    assert_transfer(&bed, ca, cc, "10.2.1.3");
    assert_broadcast_once(&bed, ca, &[cb, cc]);
}

#[test]
fn line_with_the_sleeve_datapath_relays() {
    if !require_root("line_with_the_sleeve_datapath_relays") {
        return;
    }
    require_tools(&["tcpdump", "nft"]);
    let mut bed = line("srs", &["--datapath", "sleeve"]);
    for i in 1..=3 {
        assert_connections(&bed, i, "unencrypted", "sleeve");
    }
    assert_routes_via_the_middle(&bed);
    assert_shown_relayed(&bed, "unencrypted sleeve");
    let (ca, cb, cc) = three_containers(&mut bed);
    assert_marker_pings_relayed(&bed, ca, cc, Wire::Sleeve, "srs-h2");
    assert_broadcast_once(&bed, ca, &[cb, cc]);
}

/// The control of the two tests above: without a password the kernel relays in VXLAN, and
/// the same checks see the marker on the wire (so their "never on the wire" means something),
/// and move data with iperf3.
#[test]
fn line_without_a_password_relays_through_the_kernel() {
    if !require_root("line_without_a_password_relays_through_the_kernel") {
        return;
    }
    require_tools(&["tcpdump", "iperf3", "nft"]);
    let mut bed = line("srk", &[]);
    assert_routes_via_the_middle(&bed);
    let (ca, cb, cc) = three_containers(&mut bed);
    assert_marker_pings_relayed(&bed, ca, cc, Wire::Vxlan, "srk-h2");
    assert_transfer(&bed, ca, cc, "10.2.1.3");
    assert_broadcast_once(&bed, ca, &[cb, cc]);
}

/// One reply of a `ping -D` run: when it came (Unix seconds) and its sequence number.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reply {
    at: f64,
    seq: u32,
}

/// The replies in `ping -D` output, and how many were duplicates.
fn parse_ping_d(stdout: &str) -> (Vec<Reply>, usize) {
    let mut replies = Vec::new();
    let mut dups = 0;
    for l in stdout.lines().filter(|l| l.contains("bytes from")) {
        let at = l
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .and_then(|(t, _)| t.parse::<f64>().ok());
        let seq = l
            .split_once("icmp_seq=")
            .and_then(|(_, r)| r.split_whitespace().next())
            .and_then(|s| s.parse::<u32>().ok());
        if let (Some(at), Some(seq)) = (at, seq) {
            if l.contains("DUP!") {
                dups += 1;
            } else {
                replies.push(Reply { at, seq });
            }
        }
    }
    (replies, dups)
}

/// After a change at `from` (Unix seconds), how long until the replies flowed steadily (no
/// gap over a second) up to `to`: 0 when they never stopped, `None` when they had not come
/// back by `to`.
fn recovery(replies: &[Reply], from: f64, to: f64) -> Option<f64> {
    let mut last = from;
    let mut back = 0.0;
    for r in replies.iter().filter(|r| r.at > from && r.at <= to) {
        if r.at - last > 1.0 {
            back = r.at - from;
        }
        last = r.at;
    }
    (to - last <= 1.0).then_some(back)
}

/// Sequence numbers with no reply, each with an estimate of when it was sent (the last
/// reply before it plus the interval per number).
fn lost(replies: &[Reply], interval: f64) -> Vec<(u32, f64)> {
    let got: BTreeMap<u32, f64> = replies.iter().map(|r| (r.seq, r.at)).collect();
    let Some(&max) = got.keys().next_back() else {
        return Vec::new();
    };
    (1..max)
        .filter(|s| !got.contains_key(s))
        .filter_map(|s| {
            let (&s0, &t0) = got.range(..s).next_back()?;
            Some((s, t0 + f64::from(s - s0) * interval))
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The longest the pings may take to flow again after a link is cut or healed.
const RECOVER: f64 = 15.0;

#[test]
fn ring_of_four_with_a_password_survives_a_cut_and_a_heal() {
    if !require_root("ring_of_four_with_a_password_survives_a_cut_and_a_heal") {
        return;
    }
    require_tools(&["tcpdump", "nft"]);
    let bed = ring("srr", PASSWORD);
    for i in 1..=4 {
        assert_connections(&bed, i, "encrypted", "sleeve");
    }
    broadcast_once_and_pings_survive_a_cut_and_a_heal(bed);
}

/// In a ring (see [`ring`]): a broadcast from host1's container reaches the three others
/// once; pings from host1's container to host3's flow again within [`RECOVER`] when the link
/// host1 uses is cut, and again when it is healed.
fn broadcast_once_and_pings_survive_a_cut_and_a_heal(mut bed: TestBed) {
    let (ca, to) = container_on_each(&mut bed, 4);
    bed.container(ca)
        .wait_ping("10.2.1.3", Duration::from_secs(20))
        .unwrap_or_else(|e| {
            panic!(
                "host1 never reached host3 around the ring: {e}\n{}",
                dump(&bed)
            )
        });
    assert_broadcast_once(&bed, ca, &to);

    let c = bed.peer_name(3);
    let rep = Report::of(bed.router(1)).expect("report");
    let hop = rep
        .next_hop(&c)
        .unwrap_or_else(|| panic!("no route to host3: {}\n{}", rep.routes_text(), dump(&bed)));
    let via = if hop == bed.peer_name(2) {
        2
    } else if hop == bed.peer_name(4) {
        4
    } else {
        panic!(
            "host1 routes to host3 via {hop}, neither host2 nor host4: {}",
            rep.routes_text()
        )
    };

    // Pings every 0.2 s for the whole scenario, with the time of each reply.
    let interval = 0.2;
    let mut pinger = bed
        .container(ca)
        .ns
        .spawn(&["ping", "-n", "-D", "-i", "0.2", "-W", "1", "10.2.1.3"])
        .expect("ping");
    std::thread::sleep(Duration::from_secs(2));

    let cut_at = unix_now();
    mesh::cut(&bed, 1, via).expect("cut");
    let after_cut = bed
        .container(ca)
        .wait_ping("10.2.1.3", Duration::from_secs(RECOVER as u64 + 10));
    let cut_diag = dump(&bed);
    let hop_after_cut = Report::of(bed.router(1)).ok().and_then(|r| r.next_hop(&c));
    std::thread::sleep(Duration::from_secs(3));

    let heal_at = unix_now();
    mesh::heal(&bed, 1, via).expect("heal");
    // The healed link carries a connection again, and routes may move back to it.
    let via_name = bed.peer_name(via);
    let reconnected = cmd::wait_for(
        &format!("host1 to connect to host{via} again"),
        Duration::from_secs(30),
        || {
            let c = bed.router(1).connections().ok()?;
            c.lines()
                .any(|l| l.contains("established") && l.contains(&via_name))
                .then_some(unix_now() - heal_at)
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    let end = unix_now();

    if let Some(pid) = pinger.pid() {
        let _ = cmd::run(&["kill", "-INT", &pid.to_string()]);
    }
    let _ = cmd::wait_for("ping to finish", Duration::from_secs(5), || {
        (!pinger.running()).then_some(())
    });
    let out = pinger.stop();
    let (replies, dups) = parse_ping_d(&out.stdout);
    let lost = lost(&replies, interval);
    let lost_in = |a: f64, b: f64| lost.iter().filter(|(_, t)| *t >= a && *t < b).count();
    let cut_rec = recovery(&replies, cut_at, heal_at);
    let heal_rec = recovery(&replies, heal_at, end);
    let report = format!(
        "via host{via}: after the cut the pings flowed again after {cut_rec:?} s, losing {} \
         (and before the cut {}); after the heal after {heal_rec:?} s, losing {}; host1 \
         connected to host{via} again {:?} s after the heal; {} replies, {dups} duplicates; \
         ping: {}",
        lost_in(cut_at, heal_at),
        lost_in(0.0, cut_at),
        lost_in(heal_at, f64::MAX),
        reconnected.as_ref().ok(),
        replies.len(),
        out.stdout.lines().rev().nth(1).unwrap_or_default()
    );
    eprintln!("{report}");
    let rep = Report::of(bed.router(1)).map(|r| r.routes_text());
    after_cut.unwrap_or_else(|e| {
        panic!("no way around the ring after cutting host1–host{via}: {e}\n{report}\n{cut_diag}")
    });
    let other = 6 - via;
    assert_eq!(
        hop_after_cut.as_deref(),
        Some(bed.peer_name(other).as_str()),
        "after cutting host1–host{via}, host1 should route to host3 via host{other}\n{report}\n\
         at the cut:\n{cut_diag}"
    );
    assert!(
        cut_rec.is_some_and(|s| s <= RECOVER),
        "pings did not flow again within {RECOVER} s of cutting host1–host{via}\n{report}\n\
         at the cut:\n{cut_diag}"
    );
    assert!(
        heal_rec.is_some_and(|s| s <= RECOVER),
        "pings did not flow within {RECOVER} s of healing host1–host{via}\n{report}\n\
         host1 routes: {rep:?}\n{}",
        dump(&bed)
    );
    reconnected.unwrap_or_else(|e| panic!("{e}\n{report}\n{}", dump(&bed)));
}

#[test]
fn mixed_hops_trusted_first_hop_then_sealed() {
    if !require_root("mixed_hops_trusted_first_hop_then_sealed") {
        return;
    }
    require_tools(&["tcpdump", "nft"]);
    // host1 and host2 trust each other, host3 trusts no one and no one trusts host3.
    let mut bed = partial_mesh_each("srm", 3, &[(1, 2), (2, 3)], &[&[], &[1], &[2]], |i| {
        let mut a: Vec<String> = PASSWORD.iter().map(|s| s.to_string()).collect();
        let trusted = match i {
            1 => Some(host_addr(2)),
            2 => Some(host_addr(1)),
            _ => None,
        };
        if let Some(t) = trusted {
            a.extend(["--trusted-subnets".to_string(), format!("{t}/32")]);
        }
        a
    });
    assert_connections(&bed, 1, "unencrypted", "fastdp");
    assert_connections(&bed, 3, "encrypted", "sleeve");
    assert_routes_via_the_middle(&bed);
    let (ca, _cb, cc) = three_containers(&mut bed);

    let cap = PcapCapture::start(&bed.host(2).ns, "eth0", "srm-h2");
    let size = MARKER_PING_SIZE.to_string();
    let mut outs = Vec::new();
    for (c, dst) in [(ca, "10.2.1.3"), (cc, "10.2.1.1")] {
        outs.push(
            bed.container(c)
                .ns
                .run_timeout(
                    &[
                        "ping", "-n", "-c", "5", "-i", "0.2", "-W", "1", "-s", &size, "-p",
                        MARKER_HEX, dst,
                    ],
                    Duration::from_secs(15),
                )
                .expect("ping runs"),
        );
    }
    let frames = cap.stop();
    let dgrams: Vec<Datagram> = frames.iter().filter_map(|f| Datagram::of(f)).collect();
    let marked_not_udp = frames
        .iter()
        .filter(|f| Datagram::of(f).is_none() && has_marker(f))
        .count();
    let vx = large_legs(&dgrams, VXLAN_PORT);
    let sl = large_legs(&dgrams, SLEEVE_PORT);
    let summary = format!(
        "large datagrams on host2's eth0: VXLAN {vx:?}, sleeve {sl:?}\n{}{}",
        capture_text(&dgrams),
        dump(&bed)
    );
    for (o, what) in outs.iter().zip(["host1 -> host3", "host3 -> host1"]) {
        assert!(o.success(), "ping {what} failed:\n{}\n{summary}", o.stdout);
    }
    let leaked: Vec<&Datagram> = dgrams
        .iter()
        .filter(|d| d.marker && (host_of(d.src) == 3 || host_of(d.dst) == 3))
        .collect();
    assert!(
        leaked.is_empty() && marked_not_udp == 0,
        "the marker is in plain text between host2 and host3: {leaked:?}, and in \
         {marked_not_udp} frames that are not UDP\n{summary}"
    );
    // Relayed frames cross the trusted hop sealed through the sleeve too (the route's
    // relay, host2, hands them on with its sleeve): either port counts on that leg.
    for (s, d) in [(1, 2), (2, 1)] {
        let n = vx.get(&(s, d)).copied().unwrap_or(0) + sl.get(&(s, d)).copied().unwrap_or(0);
        assert!(
            n >= 10,
            "expected at least 10 large datagrams host{s} -> host{d}, saw {n}\n{summary}"
        );
    }
    for (s, d) in [(2, 3), (3, 2)] {
        let n = sl.get(&(s, d)).copied().unwrap_or(0);
        assert!(
            n >= 10,
            "expected at least 10 large datagrams host{s} -> host{d} on UDP {SLEEVE_PORT}, saw {n}\n{summary}"
        );
    }
}

/// Host `i`'s connection to host `j` is on `overlay` (`sleeve`, `fastdp`) in `status
/// connections`, within `timeout`.
fn wait_connection_on(bed: &TestBed, i: usize, j: usize, overlay: &str, timeout: Duration) {
    let name = bed.peer_name(j);
    let r = bed.router(i);
    cmd::wait_for(
        &format!("host{i}'s connection to host{j} on {overlay}"),
        timeout,
        || {
            let c = r.connections().ok()?;
            c.lines()
                .any(|l| {
                    l.contains("established")
                        && l.contains(&name)
                        && l.contains(&format!(" {overlay} "))
                })
                .then_some(())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nhost{i}:\n{}\nunderlay:\n{}\n{}",
            r.connections().unwrap_or_default(),
            mesh::underlay_rules(bed),
            dump(bed)
        )
    });
}

/// `ping -c 5` from container `from` to `dst`: every request answered.
fn assert_pings_all_answered(bed: &TestBed, from: usize, dst: &str, what: &str) {
    let out = bed
        .container(from)
        .ns
        .run_timeout(
            &["ping", "-n", "-c", "5", "-i", "0.2", "-W", "1", dst],
            Duration::from_secs(15),
        )
        .expect("ping runs");
    assert!(
        out.stdout.contains(" 0% packet loss"),
        "ping {what} lost replies:\n{}\n{}",
        out.stdout,
        dump(bed)
    );
}

/// A datapath or sleeve counter of host `i`, by reason.
fn counter(bed: &TestBed, i: usize, family: &str, reason: &str) -> f64 {
    let m = bed.router(i).metrics().expect("metrics");
    probe::metric_sum(&m, |s| {
        s.name == family && s.labels.contains(&format!("reason=\"{reason}\""))
    })
}

/// The line host1–host2–host3 (host1↔host3 cut) without a password, containers pinging
/// each other end to end through the kernel first (so each end's kernel has learned the
/// other's MACs); then UDP 6784 is blocked on one hop (`fallen`: host1–host2 or
/// host2–host3), which falls back to the sleeve while the other stays on the fast path.
/// Traffic between the ends goes on both ways: the end behind the fallen hop hands its
/// frames to its sleeve, which routes them through host2 on to the far end; host2's kernel
/// hands the frames the far end's kernel still relays through it to host2's sleeve
/// (`rx_to_sleeve`), full-size TCP included. A broadcast from either end reaches the two
/// other hosts once each.
fn relays_across_a_hop_fallen_back_to_the_sleeve(prefix: &str, fallen: (usize, usize)) {
    let mut bed = line(prefix, &[]);
    assert_routes_via_the_middle(&bed);
    let (ca, cb, cc) = three_containers(&mut bed);
    bed.container(cc)
        .wait_ping("10.2.1.1", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("host3 -> host1 before the block: {e}\n{}", dump(&bed)));

    let (x, y) = fallen;
    // The hop that keeps the fast path.
    let (s1, s2) = if x == 1 { (2, 3) } else { (1, 2) };
    mesh::block_udp_port(&bed, x, y, VXLAN_PORT).expect("block UDP 6784");
    wait_connection_on(&bed, x, y, "sleeve", Duration::from_secs(15));
    wait_connection_on(&bed, y, x, "sleeve", Duration::from_secs(5));
    wait_connection_on(&bed, s1, s2, "fastdp", Duration::from_secs(1));

    // The end behind the fallen hop shows the far end relayed through the sleeve.
    let (near, far) = if x == 1 { (1, 3) } else { (3, 1) };
    let far_name = bed.peer_name(far);
    let via = bed.peer_name(2);
    let r = bed.router(near);
    cmd::wait_for(
        "the far end relayed through the sleeve in `status connections`",
        Duration::from_secs(10),
        || {
            r.connections()
                .ok()?
                .lines()
                .any(|l| {
                    l.contains("relayed")
                        && l.contains(" sleeve ")
                        && l.contains(&format!("{far_name}("))
                        && l.contains(&format!("via {via}("))
                })
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nhost{near}:\n{}", r.connections().unwrap_or_default()));

    let handed_before = counter(&bed, 2, "weave_datapath_packets_total", "rx_to_sleeve");
    // The far end first: its kernel still knows the near end's MACs from before the block.
    let (c_near, c_far) = if near == 1 { (ca, cc) } else { (cc, ca) };
    let ip = |h: usize| format!("10.2.1.{h}");
    assert_pings_all_answered(
        &bed,
        c_far,
        &ip(near),
        &format!("host{far} -> host{near} across the fallen-back hop"),
    );
    assert_pings_all_answered(
        &bed,
        c_near,
        &ip(far),
        &format!("host{near} -> host{far} across the fallen-back hop"),
    );
    // Full-size TCP (GSO frames) the same way.
    assert_transfer(&bed, c_far, c_near, &ip(near));
    let handed = counter(&bed, 2, "weave_datapath_packets_total", "rx_to_sleeve") - handed_before;
    eprintln!("host2 handed {handed} frames from its fast path to its sleeve");
    assert!(
        handed >= 5.0,
        "host2's kernel should have handed host{far}'s pings for host{near} to its sleeve \
         (rx_to_sleeve grew by {handed})\n{}",
        dump(&bed)
    );
    assert_broadcast_once(&bed, ca, &[cb, cc]);
    assert_broadcast_once(&bed, cc, &[ca, cb]);
    let drops: Vec<(String, f64)> = ["loop", "no_route", "malformed"]
        .iter()
        .map(|r| {
            (
                r.to_string(),
                counter(&bed, 2, "weave_sleeve_drops_total", r),
            )
        })
        .collect();
    eprintln!("host2's sleeve drops: {drops:?}");
}

#[test]
fn line_relays_across_a_first_hop_fallen_back_to_the_sleeve() {
    if !require_root("line_relays_across_a_first_hop_fallen_back_to_the_sleeve") {
        return;
    }
    require_tools(&["tcpdump", "iperf3", "nft"]);
    relays_across_a_hop_fallen_back_to_the_sleeve("srf", (1, 2));
}

#[test]
fn line_relays_across_a_second_hop_fallen_back_to_the_sleeve() {
    if !require_root("line_relays_across_a_second_hop_fallen_back_to_the_sleeve") {
        return;
    }
    require_tools(&["tcpdump", "iperf3", "nft"]);
    relays_across_a_hop_fallen_back_to_the_sleeve("srg", (2, 3));
}

/// The line host1–host2–host3–host4 without a password, the ends pinging each other
/// through the kernel first (host4's kernel has learned host1's MACs behind host3, host1's
/// host4's behind host2); then the middle hop host2–host3 falls back to the sleeve. Both
/// ends' kernels still relay through their fast-path neighbour, which hands the frames to
/// its sleeve (the far end's entry there says the sleeve carries it): pings go on both ways.
#[test]
fn longer_line_relays_through_a_middle_hop_fallen_back_to_the_sleeve() {
    if !require_root("longer_line_relays_through_a_middle_hop_fallen_back_to_the_sleeve") {
        return;
    }
    require_tools(&["nft"]);
    let mut bed = weave_tests::partial_mesh::partial_mesh(
        "srw",
        4,
        &[(1, 2), (2, 3), (3, 4)],
        &[&[], &[1], &[2], &[3]],
        &[],
    );
    let (c1, others) = container_on_each(&mut bed, 4);
    let c4 = others[2];
    for (from, to) in [(c1, "10.2.1.4"), (c4, "10.2.1.1")] {
        bed.container(from)
            .wait_ping(to, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{to} before the block: {e}\n{}", dump(&bed)));
    }
    mesh::block_udp_port(&bed, 2, 3, VXLAN_PORT).expect("block UDP 6784");
    wait_connection_on(&bed, 2, 3, "sleeve", Duration::from_secs(15));
    wait_connection_on(&bed, 3, 2, "sleeve", Duration::from_secs(5));
    let handed_before: f64 = [2, 3]
        .iter()
        .map(|&h| counter(&bed, h, "weave_datapath_packets_total", "rx_to_sleeve"))
        .sum();
    assert_pings_all_answered(&bed, c4, "10.2.1.1", "host4 -> host1 across the fallen middle");
    assert_pings_all_answered(&bed, c1, "10.2.1.4", "host1 -> host4 across the fallen middle");
    let handed = [2, 3]
        .iter()
        .map(|&h| counter(&bed, h, "weave_datapath_packets_total", "rx_to_sleeve"))
        .sum::<f64>()
        - handed_before;
    assert!(
        handed >= 5.0,
        "the middle hosts' kernels should hand the ends' relayed frames to their sleeves \
         (rx_to_sleeve grew by {handed})\n{}",
        dump(&bed)
    );
}

/// The helpers' parsing, without a bed.
#[test]
fn ping_timing_parsing() {
    let out = "PING 10.2.1.3 (10.2.1.3) 56(84) bytes of data.\n\
               [100.0] 64 bytes from 10.2.1.3: icmp_seq=1 ttl=64 time=0.5 ms\n\
               [100.2] 64 bytes from 10.2.1.3: icmp_seq=2 ttl=64 time=0.5 ms\n\
               [100.2] 64 bytes from 10.2.1.3: icmp_seq=2 ttl=64 time=0.6 ms (DUP!)\n\
               [103.0] 64 bytes from 10.2.1.3: icmp_seq=16 ttl=64 time=0.5 ms\n\
               [103.2] 64 bytes from 10.2.1.3: icmp_seq=17 ttl=64 time=0.5 ms\n";
    let (r, dups) = parse_ping_d(out);
    assert_eq!(dups, 1);
    assert_eq!(r.len(), 4);
    assert_eq!(r[2], Reply { at: 103.0, seq: 16 });
    let l = lost(&r, 0.2);
    assert_eq!(l.len(), 13);
    assert!((l[0].1 - 100.4).abs() < 1e-9);
    // A change at 100.5: replies stopped, back at 103.0.
    assert_eq!(recovery(&r, 100.5, 103.5), Some(2.5));
    // Never stopped after 103.0.
    assert_eq!(recovery(&r, 103.0, 103.5), Some(0.0));
    // Still silent at the end.
    assert_eq!(recovery(&r, 100.5, 110.0), None);
    let set: BTreeSet<usize> = [host_of(host_addr(2)), host_of(Ipv4Addr::LOCALHOST)].into();
    assert_eq!(set, [0, 2].into());
}
