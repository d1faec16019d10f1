//! Per-packet cost of each kernel program path, measured with BPF_PROG_TEST_RUN.
//!
//! `cargo bench -p weave-userspace --bench programs` (as root), or `cargo xtask bench
//! --programs`, which writes its output to BENCHMARKS.md. Loads the embedded object (nothing
//! attached, no pins), configures it as router 1 with peers 2 (direct) and 3 (direct, for
//! relaying), one local container on the loopback device (where the kernel runs tc test
//! programs) and one learned remote container, then runs each path on a representative
//! frame many times and prints a Markdown table: nanoseconds per packet (the kernel's own
//! measurement of the program run), and per program the verifier's instruction count and the
//! translated and JIT-compiled sizes.
//!
//! Each run is one BPF_PROG_TEST_RUN with `repeat` 1: most paths rewrite the frame
//! (encapsulate, decapsulate, readdress), and the kernel repeats a run on the same,
//! already rewritten skb, so only a fresh frame per run measures the path itself. The
//! kernel's figure for one run includes one clock read (tens of ns): the "not VXLAN" row,
//! a program that returns after two loads, shows that floor.
//!
//! Options: `--iterations N` (runs per path, default 20000); `--only TEXT` (the paths whose
//! name contains TEXT: for a profiler, e.g. `perf record -e cpu-clock -g`).

use std::time::Duration;

use aya::maps::{Array, HashMap, MapData};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya::Ebpf;
use weave_ebpf_common::headers::{write_outer_headers, OuterHeaders, OUTER_HLEN};
use weave_ebpf_common::maps::{
    BroadcastTree, DatapathConfig, EndpointAddress, EndpointAddresses, IfindexKey, Ipv4Key,
    LocalEndpoint, MacKey, PeerEntry, RemoteMac, CONFIG_READY, PEER_ADMIT, PEER_REACHABLE,
};
use weave_ebpf_common::vni;
use weave_router::datapath::ebpf::{
    EBPF_OBJECT, EGRESS_PROGRAM, FROM_BRIDGE_PROGRAM, RX_PROGRAM, TX_PROGRAM, XDP_PROGRAM,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_PASS: u32 = 2;

const OWN_ID: u16 = 0x001;
const PEER_ID: u16 = 0x002;
const FAR_ID: u16 = 0x003;
const OWN_UNDERLAY: [u8; 4] = [192, 168, 50, 1];
const PEER_UNDERLAY: [u8; 4] = [192, 168, 50, 2];
const FAR_UNDERLAY: [u8; 4] = [192, 168, 50, 3];
const OWN_UNDERLAY_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
const PEER_UNDERLAY_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x02];
const FAR_UNDERLAY_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x03];
const LOCAL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const REMOTE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const OTHER_LOCAL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const LOCAL_IP: [u8; 4] = [10, 2, 0, 1];
const REMOTE_IP: [u8; 4] = [10, 2, 0, 2];
const OTHER_LOCAL_IP: [u8; 4] = [10, 2, 0, 3];
/// ifindex of the loopback device, where BPF_PROG_TEST_RUN runs tc programs: the local
/// container's host end, and the underlay (broadcast copies are cloned out of it).
const LO_IFINDEX: u32 = 1;
/// Bytes of UDP payload in the container frames: the size of the UDP 64 B benchmark.
const PAYLOAD: usize = 64;

/// One path: a program and the frame that takes it, with the verdict it must give.
struct Path {
    name: &'static str,
    program: &'static str,
    frame: Vec<u8>,
    verdict: u32,
}

fn main() {
    let mut iterations: usize = 20_000;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--iterations" {
            iterations = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--iterations takes a number");
        } else if a == "--only" {
            only = args.next();
        }
        // cargo bench passes `--bench`; anything else is ignored as well.
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("programs bench: needs root (BPF_PROG_TEST_RUN)");
        std::process::exit(1);
    }
    let mut ebpf = load();
    configure(&mut ebpf);
    let mut paths = paths();
    if let Some(only) = &only {
        paths.retain(|p| p.name.contains(only.as_str()));
    }
    println!("| path | program | verdict | ns/packet median | p10 | p90 |");
    println!("|---|---|---|---:|---:|---:|");
    for p in &paths {
        let ns = measure(&mut ebpf, p, iterations);
        println!(
            "| {} | `{}` | {} | {:.0} | {:.0} | {:.0} |",
            p.name,
            p.program,
            verdict_name(p),
            percentile(&ns, 0.5),
            percentile(&ns, 0.1),
            percentile(&ns, 0.9)
        );
    }
    println!();
    println!("| program | verified instructions | xlated bytes | JIT bytes |");
    println!("|---|---:|---:|---:|");
    for name in [
        TX_PROGRAM,
        RX_PROGRAM,
        FROM_BRIDGE_PROGRAM,
        EGRESS_PROGRAM,
        XDP_PROGRAM,
    ] {
        let info = ebpf.program(name).expect("program").info().expect("info");
        println!(
            "| `{name}` | {} | {} | {} |",
            info.verified_instruction_count()
                .map_or("—".into(), |n| n.to_string()),
            info.size_translated().map_or("—".into(), |n| n.to_string()),
            info.size_jitted()
        );
    }
    println!();
    println!("{iterations} runs per path.");
}

fn verdict_name(p: &Path) -> &'static str {
    match (p.program == XDP_PROGRAM, p.verdict) {
        (true, XDP_PASS) => "pass",
        (false, TC_ACT_OK) => "ok",
        (false, TC_ACT_SHOT) => "shot",
        (false, TC_ACT_REDIRECT) => "redirect",
        _ => "?",
    }
}

fn load() -> Ebpf {
    let mut ebpf = Ebpf::load(EBPF_OBJECT).expect("load the object");
    for name in [TX_PROGRAM, RX_PROGRAM, EGRESS_PROGRAM, FROM_BRIDGE_PROGRAM] {
        let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load()
            .unwrap_or_else(|e| panic!("verifier rejected {name}: {e}"));
    }
    let x: &mut Xdp = ebpf.program_mut(XDP_PROGRAM).unwrap().try_into().unwrap();
    x.load().expect("verifier rejected xdp_admit");
    ebpf
}

/// Router OWN_ID; direct peers PEER_ID and FAR_ID; the local container (LOCAL_MAC, on the
/// loopback device) and another one; REMOTE_MAC learned behind PEER_ID (and its address
/// in NEIGHBOURS, as learning leaves it); our broadcast tree and PEER_ID's reach PEER_ID
/// and FAR_ID.
fn configure(ebpf: &mut Ebpf) {
    let mut config: Array<&mut MapData, DatapathConfig> =
        Array::try_from(ebpf.map_mut("CONFIG").unwrap()).unwrap();
    config
        .set(
            0,
            DatapathConfig {
                underlay_ipv4: OWN_UNDERLAY,
                underlay_ifindex: LO_IFINDEX,
                own_short_id: OWN_ID,
                flags: CONFIG_READY,
                underlay_mac: OWN_UNDERLAY_MAC,
                _pad: [0; 2],
                service_ipv4: [169, 254, 53, 53],
                bridge_port_ifindex: 42,
                sleeve_port_ifindex: 0,
            },
            0,
        )
        .unwrap();
    let mut peers: Array<&mut MapData, PeerEntry> =
        Array::try_from(ebpf.map_mut("PEERS").unwrap()).unwrap();
    for (id, underlay, mac) in [
        (PEER_ID, PEER_UNDERLAY, PEER_UNDERLAY_MAC),
        (FAR_ID, FAR_UNDERLAY, FAR_UNDERLAY_MAC),
    ] {
        peers
            .set(
                id as u32,
                PeerEntry {
                    underlay_ipv4: underlay,
                    flags: PEER_ADMIT | PEER_REACHABLE,
                    next_hop: id,
                    underlay_mac: mac,
                },
                0,
            )
            .unwrap();
    }
    let mut addresses: HashMap<&mut MapData, IfindexKey, EndpointAddresses> =
        HashMap::try_from(ebpf.map_mut("ENDPOINT_ADDRESSES").unwrap()).unwrap();
    let mut me = EndpointAddresses {
        mac: LOCAL_MAC,
        count: 1,
        ..Default::default()
    };
    me.addrs[0] = EndpointAddress::new(LOCAL_IP, 24);
    addresses
        .insert(
            IfindexKey {
                ifindex: LO_IFINDEX,
            },
            me,
            0,
        )
        .unwrap();
    let mut endpoints: HashMap<&mut MapData, MacKey, LocalEndpoint> =
        HashMap::try_from(ebpf.map_mut("ENDPOINTS").unwrap()).unwrap();
    for mac in [LOCAL_MAC, OTHER_LOCAL_MAC] {
        let ep = LocalEndpoint {
            host_ifindex: LO_IFINDEX,
            flags: 0,
        };
        endpoints.insert(MacKey::new(mac), ep, 0).unwrap();
    }
    let mut remote: HashMap<&mut MapData, MacKey, RemoteMac> =
        HashMap::try_from(ebpf.map_mut("REMOTE_MACS").unwrap()).unwrap();
    let learned = RemoteMac {
        peer_short_id: PEER_ID,
        _pad: [0; 6],
    };
    remote.insert(MacKey::new(REMOTE_MAC), learned, 0).unwrap();
    let mut neighbours: HashMap<&mut MapData, Ipv4Key, MacKey> =
        HashMap::try_from(ebpf.map_mut("NEIGHBOURS").unwrap()).unwrap();
    neighbours
        .insert(Ipv4Key { addr: REMOTE_IP }, MacKey::new(REMOTE_MAC), 0)
        .unwrap();
    let mut trees: HashMap<&mut MapData, u32, BroadcastTree> =
        HashMap::try_from(ebpf.map_mut("BROADCAST_TREES").unwrap()).unwrap();
    let mut ours = BroadcastTree::default();
    ours.children[0] = PEER_ID;
    ours.count = 1;
    trees.insert(OWN_ID as u32, ours, 0).unwrap();
    let mut peers_tree = BroadcastTree::default();
    peers_tree.children[0] = FAR_ID;
    peers_tree.count = 1;
    trees.insert(PEER_ID as u32, peers_tree, 0).unwrap();
}

fn paths() -> Vec<Path> {
    let to_remote = udp_frame(REMOTE_MAC, LOCAL_MAC, LOCAL_IP, REMOTE_IP);
    let to_local = udp_frame(LOCAL_MAC, REMOTE_MAC, REMOTE_IP, LOCAL_IP);
    let from_peer =
        |inner: &[u8], dst: u16| encapsulated(inner, PEER_UNDERLAY, vni::pack(PEER_ID, dst));
    let mut broadcast = udp_frame([0xff; 6], LOCAL_MAC, LOCAL_IP, [10, 2, 0, 255]);
    broadcast[30..34].copy_from_slice(&[10, 2, 0, 255]);
    let remote_broadcast = udp_frame([0xff; 6], REMOTE_MAC, REMOTE_IP, [10, 2, 0, 255]);
    let mut not_vxlan = to_remote.clone();
    not_vxlan[23] = 6; // TCP
    vec![
        Path {
            name: "TX unicast to a known peer (encapsulate)",
            program: TX_PROGRAM,
            frame: to_remote.clone(),
            verdict: TC_ACT_REDIRECT,
        },
        Path {
            name: "TX to a local container (redirect_peer)",
            program: TX_PROGRAM,
            frame: udp_frame(OTHER_LOCAL_MAC, LOCAL_MAC, LOCAL_IP, OTHER_LOCAL_IP),
            verdict: TC_ACT_REDIRECT,
        },
        Path {
            name: "TX broadcast (to the bridge)",
            program: TX_PROGRAM,
            frame: broadcast.clone(),
            verdict: TC_ACT_OK,
        },
        Path {
            name: "from_bridge broadcast (one copy per peer of our tree: 1)",
            program: FROM_BRIDGE_PROGRAM,
            frame: broadcast,
            verdict: TC_ACT_SHOT,
        },
        Path {
            name: "from_bridge unicast to a known peer",
            program: FROM_BRIDGE_PROGRAM,
            frame: to_remote,
            verdict: TC_ACT_REDIRECT,
        },
        Path {
            name: "RX to a local container (decapsulate, redirect_peer)",
            program: RX_PROGRAM,
            frame: from_peer(&to_local, OWN_ID),
            verdict: TC_ACT_REDIRECT,
        },
        Path {
            name: "RX relay to another peer",
            program: RX_PROGRAM,
            frame: from_peer(&to_local, FAR_ID),
            verdict: TC_ACT_REDIRECT,
        },
        Path {
            name: "RX broadcast (one copy on along the tree, into the bridge)",
            program: RX_PROGRAM,
            frame: from_peer(&remote_broadcast, OWN_ID),
            verdict: TC_ACT_REDIRECT,
        },
        Path {
            name: "RX not VXLAN (passes at once: the floor)",
            program: RX_PROGRAM,
            frame: not_vxlan,
            verdict: TC_ACT_OK,
        },
        Path {
            name: "to_container egress check",
            program: EGRESS_PROGRAM,
            frame: to_local.clone(),
            verdict: TC_ACT_OK,
        },
        Path {
            name: "XDP admit (admitted VXLAN)",
            program: XDP_PROGRAM,
            frame: from_peer(&to_local, OWN_ID),
            verdict: XDP_PASS,
        },
    ]
}

/// Runs `p` `iterations` times (after a warm-up); the kernel's nanoseconds for each run.
fn measure(ebpf: &mut Ebpf, p: &Path, iterations: usize) -> Vec<f64> {
    let mut out = vec![0u8; p.frame.len() + 256];
    let mut ns = Vec::with_capacity(iterations);
    for i in 0..iterations + iterations / 10 {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&p.frame);
        opts.data_out = Some(&mut out);
        let r = if p.program == XDP_PROGRAM {
            let x: &mut Xdp = ebpf.program_mut(p.program).unwrap().try_into().unwrap();
            x.test_run(opts)
        } else {
            let c: &mut SchedClassifier = ebpf.program_mut(p.program).unwrap().try_into().unwrap();
            c.test_run(opts)
        }
        .unwrap_or_else(|e| panic!("test run of {}: {e}", p.program));
        assert_eq!(
            r.return_value, p.verdict,
            "{}: unexpected verdict (the bench's set-up no longer matches the programs)",
            p.name
        );
        if i >= iterations / 10 {
            ns.push(nanos(r.duration));
        }
    }
    ns
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * q).round() as usize]
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in h.chunks(2) {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying IPv4/UDP with PAYLOAD bytes.
fn udp_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + PAYLOAD) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&5201u16.to_be_bytes());
    f.extend_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..PAYLOAD).map(|i| (i * 7 + 3) as u8));
    f
}

/// `inner` encapsulated as a peer at `outer_src` sends it to us.
fn encapsulated(inner: &[u8], outer_src: [u8; 4], id: u32) -> Vec<u8> {
    let mut outer = [0u8; OUTER_HLEN];
    write_outer_headers(
        &mut outer,
        &OuterHeaders {
            src_ipv4: outer_src,
            dst_ipv4: OWN_UNDERLAY,
            src_port: 50123,
            vni: id,
            inner_len: inner.len() as u16,
        },
    );
    outer[0..6].copy_from_slice(&OWN_UNDERLAY_MAC);
    outer[6..12].copy_from_slice(&PEER_UNDERLAY_MAC);
    let mut f = outer.to_vec();
    f.extend_from_slice(inner);
    f
}
