//! A rogue host on the underlay throws garbage at the routers — TCP 6783 (random bytes,
//! half-open handshakes, oversize length headers, many connections at once), UDP 6783 (the
//! sleeve: random bytes, valid-looking headers) and UDP 6784 (VXLAN with forged VNIs) — and
//! nothing gives: the routers stay up with their connections established, the containers
//! keep pinging, none of them receives a rogue frame, and the drops are counted in /metrics.
//! And a peer that completes the handshake, then asks for gossip without ever reading it,
//! is closed as a slow peer while the router's memory stays bounded.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use weave_router::mesh::peer_name::{PeerName, ShortId};
use weave_router::mesh::protocol::{
    encode_frame, GossipDigest, Hello, Message, Versions, ENCRYPTION_OFF, MAX_FRAME_LEN,
};
use weave_router::mesh::topology::RecordVersion;
use weave_tests::{host_addr, probe, require_root, Netns, TestBed};

const CONTROL_PORT: u16 = 6783;
const VXLAN_PORT: u16 = 6784;
const ROGUE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);
/// The first four bytes of every inner source MAC the rogue uses.
const ROGUE_MAC: [u8; 4] = [0x02, 0x66, 0x66, 0x66];
const STORM: Duration = Duration::from_secs(15);

/// A small PRNG (xorshift64*): garbage needs no better.
struct Garbage(u64);

impl Garbage {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn connect(to: SocketAddrV4) -> Option<TcpStream> {
    TcpStream::connect_timeout(&to.into(), Duration::from_millis(500)).ok()
}

/// The preamble and encryption flag of a weave-router without a password.
fn opening() -> Vec<u8> {
    let mut o = Versions::OURS.encode().to_vec();
    o.push(ENCRYPTION_OFF);
    o
}

/// An inner Ethernet frame from a rogue MAC to `dst`: IPv4 from an address of the
/// containers' subnet (so only admission stands in its way), marked in its payload.
fn rogue_frame(g: &mut Garbage, dst: [u8; 6]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&ROGUE_MAC);
    f.extend_from_slice(&(g.next() as u16).to_be_bytes());
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[
        0x45, 0, 0, 36, 0, 1, 0x40, 0, 64, 1, 0, 0, 10, 2, 1, 99, 10, 2, 1, 1,
    ]);
    f.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
    f.extend_from_slice(b"ROGUEROG");
    f
}

/// Floods TCP 6783 of `targets` until `stop`: connections that send random bytes, half-open
/// handshakes left hanging, an honest preamble followed by a 4 MiB length header, and bursts
/// of connections opened at once. Returns the connections made.
fn flood_tcp(targets: &[SocketAddrV4], stop: &AtomicBool, seed: u64) -> u64 {
    let mut g = Garbage(seed);
    let mut held: Vec<TcpStream> = Vec::new();
    let mut made = 0u64;
    while !stop.load(Relaxed) {
        let to = targets[g.below(targets.len() as u64) as usize];
        let kind = g.below(4);
        let Some(mut s) = connect(to) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        made += 1;
        let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
        match kind {
            0 => {
                let n = 1 + g.below(2000) as usize;
                let _ = s.write_all(&g.bytes(n));
            }
            1 => {
                // Half a preamble, then nothing.
                let o = opening();
                let _ = s.write_all(&o[..1 + g.below(o.len() as u64 - 1) as usize]);
                held.push(s);
            }
            2 => {
                let mut o = opening();
                o.extend_from_slice(&(MAX_FRAME_LEN as u32).to_be_bytes());
                o.extend_from_slice(&g.bytes(100));
                let _ = s.write_all(&o);
                held.push(s);
            }
            _ => {
                // Many at once, saying nothing.
                held.push(s);
                for _ in 0..20 {
                    if let Some(s) = connect(to) {
                        made += 1;
                        held.push(s);
                    }
                }
            }
        }
        if held.len() > 100 {
            held.drain(..50);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    made
}

/// Floods UDP `port` of `targets` until `stop` with what `datagram` makes, in bursts;
/// returns the datagrams sent.
fn flood_udp(
    targets: &[SocketAddrV4],
    stop: &AtomicBool,
    seed: u64,
    mut datagram: impl FnMut(&mut Garbage) -> Vec<u8>,
) -> u64 {
    let mut g = Garbage(seed);
    let s = UdpSocket::bind("0.0.0.0:0").expect("UDP socket");
    let mut sent = 0;
    while !stop.load(Relaxed) {
        for _ in 0..40 {
            let to = targets[g.below(targets.len() as u64) as usize];
            if s.send_to(&datagram(&mut g), to).is_ok() {
                sent += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(4));
    }
    sent
}

/// Counts, until `stop`, the frames arriving on `ethwe` of a container whose source MAC is
/// one of the rogue's (an AF_PACKET socket inside the container's namespace).
fn count_rogue_frames(stop: &AtomicBool, seen: &AtomicU64, ready: &AtomicBool) {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        )
    };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a socket we just opened and own; UdpSocket only reads and closes it.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    ready.store(true, Relaxed);
    let mut buf = [0u8; 2048];
    while !stop.load(Relaxed) {
        // SAFETY: recv(2) into a buffer we own, of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 12 && buf[6..10] == ROGUE_MAC {
            seen.fetch_add(1, Relaxed);
        }
    }
}

/// The packet loss `ping` reports, in percent.
fn loss(ping_stdout: &str) -> f64 {
    ping_stdout
        .split(',')
        .find(|p| p.contains("packet loss"))
        .and_then(|p| p.trim().split('%').next()?.parse().ok())
        .unwrap_or(100.0)
}

fn metric(metrics: &str, name: &str, label: &str) -> f64 {
    probe::metric_sum(metrics, |s| s.name == name && s.labels.contains(label))
}

/// Resident memory of the router in `netns`, in KiB.
fn router_rss_kib(netns: &str) -> u64 {
    let pid = weave_tests::router::router_pids(netns)
        .first()
        .copied()
        .expect("a router process");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_garbage_storm_from_a_rogue_host_harms_nothing() {
    if !require_root("a_garbage_storm_from_a_rogue_host_harms_nothing") {
        return;
    }
    let mut bed = TestBed::new("gs", 3).expect("test bed");
    bed.launch_mesh(&[]).expect("routers connect");
    let cidrs = ["10.2.1.1/24", "10.2.1.2/24", "10.2.1.3/24"];
    let cs: Vec<usize> = (1..=3)
        .map(|h| bed.attach_container(h, "c", cidrs[h - 1]).expect("attach"))
        .collect();
    for (from, to) in [(0, "10.2.1.2"), (1, "10.2.1.3"), (2, "10.2.1.1")] {
        bed.container(cs[from])
            .wait_ping(to, Duration::from_secs(15))
            .expect("overlay works");
    }
    let macs: Vec<[u8; 6]> = cs
        .iter()
        .map(|c| {
            probe::parse_mac(&probe::link_mac(&bed.container(*c).ns, "ethwe").expect("mac"))
                .expect("mac")
        })
        .collect();
    let ids: Vec<u16> = (1..=3)
        .map(|h| probe::stored_short_id(&bed.state_dir(h)).expect("short ID"))
        .collect();
    bed.add_node("x", ROGUE_ADDR)
        .expect("rogue on the underlay");
    let rogue = Netns::borrow(&format!("{}-x", bed.prefix()));
    let before: Vec<String> = (1..=3)
        .map(|h| bed.router(h).metrics().expect("metrics"))
        .collect();
    let log_lines_before: Vec<usize> = (1..=3)
        .map(|h| bed.router(h).log_tail(usize::MAX).lines().count())
        .collect();
    let control: Vec<SocketAddrV4> = (1..=3)
        .map(|h| SocketAddrV4::new(host_addr(h), CONTROL_PORT))
        .collect();
    let sleeve = control.clone();
    let vxlan: Vec<SocketAddrV4> = (1..=3)
        .map(|h| SocketAddrV4::new(host_addr(h), VXLAN_PORT))
        .collect();

    let stop = AtomicBool::new(false);
    let rogue_seen: Vec<AtomicU64> = cs.iter().map(|_| AtomicU64::new(0)).collect();
    let listening: Vec<AtomicBool> = cs.iter().map(|_| AtomicBool::new(false)).collect();
    let started = Instant::now();
    let (tcp_made, udp_sent, pings) = std::thread::scope(|s| {
        for (i, c) in cs.iter().enumerate() {
            let ns = &bed.container(*c).ns;
            let (stop, seen, ready) = (&stop, &rogue_seen[i], &listening[i]);
            s.spawn(move || ns.enter(|| count_rogue_frames(stop, seen, ready)));
        }
        while !listening.iter().all(|l| l.load(Relaxed)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let tcp: Vec<_> = (0..3)
            .map(|k| {
                let (rogue, control, stop) = (&rogue, &control, &stop);
                s.spawn(move || {
                    rogue
                        .enter(|| flood_tcp(control, stop, 0x1234 + k))
                        .unwrap_or(0)
                })
            })
            .collect();
        let (ids, macs) = (&ids, &macs);
        let udp = [
            // UDP 6784: random bytes.
            s.spawn(|| {
                rogue
                    .enter(|| {
                        flood_udp(&vxlan, &stop, 1, |g| {
                            let n = 1 + g.below(1400) as usize;
                            g.bytes(n)
                        })
                    })
                    .unwrap_or(0)
            }),
            // UDP 6784: VXLAN with forged VNIs, real peers' IDs among them, to real MACs.
            s.spawn(|| {
                rogue
                    .enter(|| {
                        flood_udp(&vxlan, &stop, 2, |g| {
                            let pick = |g: &mut Garbage| ids[g.below(3) as usize] as u32;
                            let src = if g.below(2) == 0 {
                                pick(g)
                            } else {
                                g.below(4096) as u32
                            };
                            let dst = if g.below(2) == 0 {
                                pick(g)
                            } else {
                                g.below(4096) as u32
                            };
                            let mut p = vec![0x08, 0, 0, 0];
                            p.extend_from_slice(&((src | dst << 12) << 8).to_be_bytes());
                            let to = if g.below(3) == 0 {
                                [0xff; 6]
                            } else {
                                macs[g.below(3) as usize]
                            };
                            p.extend_from_slice(&rogue_frame(g, to));
                            p
                        })
                    })
                    .unwrap_or(0)
            }),
            // UDP 6783: random bytes, and sleeve headers claiming to come from real peers
            // (single frames and the starts and middles of segmented ones).
            s.spawn(|| {
                rogue
                    .enter(|| {
                        flood_udp(&sleeve, &stop, 3, |g| {
                            if g.below(3) == 0 {
                                let n = 1 + g.below(1400) as usize;
                                return g.bytes(n);
                            }
                            let count = 1 + g.below(4) as u8;
                            let mut p = vec![b'W', 1 + g.below(4) as u8];
                            p.extend_from_slice(&ids[g.below(3) as usize].to_be_bytes());
                            p.extend_from_slice(&[g.below(count as u64) as u8, count, 0, 0]);
                            p.extend_from_slice(&g.next().to_be_bytes());
                            p.extend_from_slice(&[0u8; 10]);
                            let to = macs[g.below(3) as usize];
                            p.extend_from_slice(&rogue_frame(g, to));
                            p
                        })
                    })
                    .unwrap_or(0)
            }),
        ];
        // The containers ping each other through the storm.
        let pings: Vec<_> = [(0, "10.2.1.2"), (1, "10.2.1.3"), (2, "10.2.1.1")]
            .into_iter()
            .map(|(from, to)| {
                let c = bed.container(cs[from]);
                s.spawn(move || {
                    let n = (STORM.as_millis() / 200) as u32;
                    let out = c.ping(to, n).expect("ping runs");
                    (format!("{} -> {to}", c.ns.name()), out.stdout)
                })
            })
            .collect();
        std::thread::sleep(STORM);
        stop.store(true, Relaxed);
        let tcp_made: u64 = tcp
            .into_iter()
            .map(|t| t.join().expect("tcp flooder"))
            .sum();
        let udp_sent: Vec<u64> = udp
            .into_iter()
            .map(|t| t.join().expect("udp flooder"))
            .collect();
        let pings: Vec<(String, String)> =
            pings.into_iter().map(|t| t.join().expect("ping")).collect();
        (tcp_made, udp_sent, pings)
    });
    eprintln!(
        "storm of {:?}: {tcp_made} TCP connections, {} random VXLAN, {} forged VXLAN, {} sleeve datagrams",
        started.elapsed(),
        udp_sent[0],
        udp_sent[1],
        udp_sent[2]
    );
    assert!(
        tcp_made > 100 && udp_sent.iter().all(|n| *n > 1000),
        "the storm was no storm"
    );

    // The routers are up, and none of their connections was lost.
    for h in 1..=3 {
        let r = bed.router(h);
        assert!(r.is_running(), "router {h} died:\n{}", r.log_tail(30));
        let conns = r
            .wait_established(2, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("router {h} lost a connection: {e}\n{}", r.log_tail(30)));
        let log: Vec<String> = r
            .log_tail(usize::MAX)
            .lines()
            .skip(log_lines_before[h - 1])
            .map(str::to_string)
            .collect();
        let lost: Vec<&String> = log.iter().filter(|l| l.contains(" lost: ")).collect();
        assert!(
            lost.is_empty(),
            "router {h} lost connections in the storm:\n{lost:?}\n{conns}"
        );
        assert!(
            !log.iter().any(|l| l.contains("panicked")),
            "router {h} panicked:\n{}",
            log.join("\n")
        );
        let refusal_lines = log.iter().filter(|l| l.contains("refused")).count();
        eprintln!("router {h}: {refusal_lines} refusal lines logged in the storm");
    }
    // The containers kept talking.
    for (what, out) in &pings {
        let l = loss(out);
        eprintln!("{what}: {l}% loss");
        assert!(
            l <= 20.0,
            "{what} lost {l}% of its pings in the storm:\n{out}"
        );
    }
    // Not one rogue frame reached a container.
    for (i, seen) in rogue_seen.iter().enumerate() {
        assert_eq!(
            seen.load(Relaxed),
            0,
            "container {} received rogue frames",
            i + 1
        );
    }
    // And each router counted what it dropped.
    for h in 1..=3 {
        let after = bed.router(h).metrics().expect("metrics");
        let grew = |name: &str, label: &str| {
            metric(&after, name, label) - metric(&before[h - 1], name, label)
        };
        let vxlan_drops = grew("weave_datapath_drops_total", "rx_drop_")
            + grew("weave_datapath_drops_total", "xdp_drop_");
        let sleeve_drops = grew("weave_sleeve_drops_total", "reason=");
        let refusals = grew("weave_control_refusals_total", "reason=");
        eprintln!(
            "router {h}: {vxlan_drops} VXLAN drops, {sleeve_drops} sleeve drops, {refusals} control refusals ({} handshake_limit, {} oversize_frame)",
            grew("weave_control_refusals_total", "handshake_limit"),
            grew("weave_control_refusals_total", "oversize_frame")
        );
        assert!(
            vxlan_drops > 100.0,
            "router {h}: VXLAN drops not counted:\n{after}"
        );
        assert!(
            sleeve_drops > 100.0,
            "router {h}: sleeve drops not counted:\n{after}"
        );
        assert!(
            refusals > 10.0,
            "router {h}: refused connections not counted:\n{after}"
        );
        assert!(
            grew("weave_control_refusals_total", "oversize_frame") >= 1.0,
            "router {h}: a 4 MiB length header before the handshake was not refused:\n{after}"
        );
    }
}

/// Connects to `to` as a weave-router named `name` and completes the handshake; the socket
/// takes at most a few KiB (a tiny receive buffer) and is never read.
fn rogue_peer(to: SocketAddrV4, name: PeerName, short_id: u16) -> TcpStream {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    let small: libc::c_int = 4096;
    // SAFETY: setsockopt reads one int from a valid pointer.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    // SAFETY: `fd` is a socket we just opened and own.
    let s = unsafe { TcpStream::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connect(2) with a valid sockaddr_in of its size.
    let rc = unsafe {
        libc::connect(
            s.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
    let mut s = s;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let hello = Hello {
        name,
        nickname: "rogue".into(),
        short_id: ShortId::new(short_id).unwrap(),
        uid: 42,
        underlay: ROGUE_ADDR,
        data_port: VXLAN_PORT,
        trusted_subnets: Vec::new(),
    };
    let mut o = opening();
    o.extend_from_slice(&encode_frame(&Message::Hello(hello)).unwrap());
    // Protocol version 6: the IP allocation after the hello (none: no IPAM to compare).
    o.extend_from_slice(&encode_frame(&Message::IpamIdentity(None)).unwrap());
    s.write_all(&o).unwrap();
    // Their preamble, flag and hello: read once, and never again.
    let mut preamble = [0u8; 11];
    s.read_exact(&mut preamble).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut hello = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut hello).unwrap();
    s.write_all(&encode_frame(&Message::Ready).unwrap())
        .unwrap();
    s
}

#[test]
fn a_peer_that_never_reads_is_closed_and_memory_stays_bounded() {
    if !require_root("a_peer_that_never_reads_is_closed_and_memory_stays_bounded") {
        return;
    }
    let mut bed = TestBed::new("gsr", 1).expect("test bed");
    bed.launch(1, &Default::default()).expect("router");
    bed.add_node("x", ROGUE_ADDR)
        .expect("rogue on the underlay");
    let rogue = Netns::borrow(&format!("{}-x", bed.prefix()));
    let r1 = bed.router(1);
    let target: PeerName = bed.peer_name(1).parse().expect("peer name");
    let to = SocketAddrV4::new(host_addr(1), CONTROL_PORT);
    let rss_before = router_rss_kib(r1.netns());
    let free_id = (probe::stored_short_id(&bed.state_dir(1)).expect("short ID") + 1) % 4096;
    let before = r1.metrics().expect("metrics");

    // Each digest names the router's own record at version 0: it answers each with the
    // record. The rogue asks a million times (about 40 MB of answers) and reads none.
    let digest = encode_frame(&Message::Digest(GossipDigest {
        entries: vec![RecordVersion {
            name: target,
            version: 0,
            uid: 0,
        }],
        reply: true,
        only_listed: true,
    }))
    .unwrap();
    let heartbeat = encode_frame(&Message::Heartbeat).unwrap();
    let started = Instant::now();
    let (closed_after, sent) = rogue
        .enter(|| {
            let mut s = rogue_peer(to, "0a:66:66:66:66:01".parse().unwrap(), free_id);
            s.set_write_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut batch = Vec::new();
            for _ in 0..1000 {
                batch.extend_from_slice(&digest);
            }
            batch.extend_from_slice(&heartbeat);
            let mut sent = 0u64;
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && sent < 1_000_000 {
                match s.write_all(&batch) {
                    Ok(()) => sent += 1000,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        // The router stopped reading us: keep the connection alive.
                        let _ = s.write_all(&heartbeat);
                    }
                    Err(_) => return (Some(started.elapsed()), sent),
                }
            }
            (None, sent)
        })
        .expect("rogue runs");
    let rss_after = router_rss_kib(r1.netns());
    let after = r1.metrics().expect("metrics");
    let grew = |label: &str| {
        metric(&after, "weave_control_refusals_total", label)
            - metric(&before, "weave_control_refusals_total", label)
    };
    eprintln!(
        "rogue sent {sent} digests; closed after {closed_after:?}; router RSS {rss_before} KiB -> {rss_after} KiB; slow_peer +{}, write_stalled +{}",
        grew("slow_peer"),
        grew("write_stalled")
    );
    let closed_after = closed_after.unwrap_or_else(|| {
        panic!(
            "the router kept a peer that reads nothing for 60 s (RSS {rss_before} -> {rss_after} KiB):\n{}",
            r1.log_tail(20)
        )
    });
    assert!(
        closed_after < Duration::from_secs(30),
        "closed only after {closed_after:?}"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "router RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        grew("slow_peer") + grew("write_stalled") >= 1.0,
        "the slow peer was not counted:\n{after}"
    );
    let log = r1.log_tail(200);
    assert!(
        log.lines()
            .any(|l| l.contains("rogue") && l.contains("slow peer")),
        "no log line names the rogue and says why:\n{log}"
    );
    r1.connections().expect("the router still answers");
    // A simply silent connection (no handshake) is closed by the handshake timeout.
    let silent_closed = rogue
        .enter(|| {
            let mut s = TcpStream::connect(SocketAddr::V4(to)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let t = Instant::now();
            let mut buf = [0u8; 64];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return t.elapsed(),
                    Ok(_) => {}
                }
            }
        })
        .expect("rogue runs");
    assert!(
        silent_closed < Duration::from_secs(10),
        "a connection that says nothing was kept {silent_closed:?}"
    );
}
