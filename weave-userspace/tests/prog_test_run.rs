//! The kernel programs run on crafted frames with BPF_PROG_TEST_RUN (aya `TestRun`):
//! exact bytes of encapsulation, decapsulation and ARP replies; drops and their counters.
//!
//! Needs root (CAP_BPF, CAP_NET_ADMIN); skipped otherwise.
//! `cargo test -p weave-userspace --test prog_test_run`

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya::Ebpf;
use weave_ebpf_common::broadcast_id::{read_broadcast_id, write_broadcast_id};
use weave_ebpf_common::counters::Reason;
use weave_ebpf_common::headers::{
    source_port_from_hash, write_outer_headers, OuterHeaders, OUTER_HLEN, SOURCE_PORT_MIN,
    VXLAN_HLEN,
};
use weave_ebpf_common::heartbeat::{
    write_echo_payload, write_heartbeat_frame, HEARTBEAT_ECHO, HEARTBEAT_FLAGS_OFFSET,
    HEARTBEAT_FRAME_LEN, OUTER_IP_OVERHEAD,
};
use weave_ebpf_common::maps::{
    BroadcastTree, Counter, DatapathConfig, EndpointAddress, EndpointAddresses, IfindexKey,
    Ipv4Key, LocalEndpoint, MacKey, NeighbourPeer, PeerCounter, PeerEntry, RemoteMac, CONFIG_READY,
    MAX_BROADCAST_CHILDREN, PEER_ADMIT, PEER_REACHABLE, PEER_VIA_SLEEVE,
};
use weave_ebpf_common::vni;
use weave_router::datapath::ebpf::{
    peer_traffic, EBPF_OBJECT, EGRESS_PROGRAM, FROM_BRIDGE_PROGRAM, RX_PROGRAM, TX_PROGRAM,
    XDP_PROGRAM,
};
use weave_router::datapath::PeerTraffic;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const OWN_ID: u16 = 0x001;
const PEER_ID: u16 = 0x002;
const OWN_UNDERLAY: [u8; 4] = [192, 168, 50, 1];
const PEER_UNDERLAY: [u8; 4] = [192, 168, 50, 2];
const LOCAL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const REMOTE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const LOCAL_IP: [u8; 4] = [10, 2, 0, 1];
const REMOTE_IP: [u8; 4] = [10, 2, 0, 2];
const OTHER_LOCAL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const OWN_UNDERLAY_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
const PEER_UNDERLAY_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x02];
/// ifindex of the loopback device, where BPF_PROG_TEST_RUN runs tc programs.
const LO_IFINDEX: u32 = 1;
/// ifindex written as the bridge's port towards the peers (any value: test runs do not
/// deliver redirects).
const BRIDGE_PORT_IFINDEX: u32 = 42;
/// A third peer, reached through PEER_ID.
const FAR_ID: u16 = 0x003;
const FAR_UNDERLAY: [u8; 4] = [192, 168, 60, 3];
/// A fourth peer, directly connected like PEER_ID.
const SECOND_ID: u16 = 0x004;
const SECOND_UNDERLAY: [u8; 4] = [192, 168, 50, 4];
const SECOND_UNDERLAY_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x04];
/// Most instructions the verifier may go through for one program.
const VERIFIED_INSTRUCTIONS_BUDGET: u32 = 20_000;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Returns from the test unless root, reporting it skipped with the line `cargo xtask test`
/// counts (`weave_tests::skip`, written past libtest's capture).
macro_rules! require_root {
    () => {
        if !is_root() {
            use std::io::Write as _;
            let test = std::thread::current().name().unwrap_or("?").to_string();
            let _ = std::io::stderr().write_all(
                format!("\n!!!!! SKIPPED {test}: needs root for BPF_PROG_TEST_RUN !!!!!\n")
                    .as_bytes(),
            );
            return;
        }
    };
}

struct Bed {
    ebpf: Ebpf,
}

impl Bed {
    /// Loads the embedded object (no pins, nothing attached) and configures it as router
    /// OWN_ID with one admitted, reachable peer PEER_ID.
    fn new() -> Self {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).expect("load the object");
        for name in [TX_PROGRAM, RX_PROGRAM, EGRESS_PROGRAM, FROM_BRIDGE_PROGRAM] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load()
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e}"));
        }
        let x: &mut Xdp = ebpf.program_mut(XDP_PROGRAM).unwrap().try_into().unwrap();
        x.load().expect("verifier rejected xdp_admit");
        let mut bed = Self { ebpf };
        bed.config()
            .set(
                0,
                DatapathConfig {
                    underlay_ipv4: OWN_UNDERLAY,
                    underlay_ifindex: 1,
                    own_short_id: OWN_ID,
                    flags: CONFIG_READY,
                    underlay_mac: OWN_UNDERLAY_MAC,
                    _pad: [0; 2],
                    service_ipv4: [0; 4],
                    bridge_port_ifindex: BRIDGE_PORT_IFINDEX,
                    sleeve_port_ifindex: 0,
                },
                0,
            )
            .unwrap();
        bed.peers()
            .set(
                PEER_ID as u32,
                PeerEntry {
                    underlay_ipv4: PEER_UNDERLAY,
                    flags: PEER_ADMIT | PEER_REACHABLE,
                    next_hop: PEER_ID,
                    underlay_mac: PEER_UNDERLAY_MAC,
                },
                0,
            )
            .unwrap();
        // BPF_PROG_TEST_RUN runs tc programs on the loopback device (ifindex 1): the
        // container the TX tests send from, and the one `add_endpoint` delivers to.
        bed.set_addresses(LO_IFINDEX, LOCAL_MAC, &[(LOCAL_IP, 24)]);
        bed
    }

    /// Records the addresses of the container behind host ifindex `ifindex`.
    fn set_addresses(&mut self, ifindex: u32, mac: [u8; 6], addrs: &[([u8; 4], u8)]) {
        let mut e = EndpointAddresses {
            mac,
            ..Default::default()
        };
        for (slot, (a, p)) in e.addrs.iter_mut().zip(addrs) {
            *slot = EndpointAddress::new(*a, *p);
            e.count += 1;
        }
        let mut m: HashMap<&mut MapData, IfindexKey, EndpointAddresses> =
            HashMap::try_from(self.ebpf.map_mut("ENDPOINT_ADDRESSES").unwrap()).unwrap();
        m.insert(IfindexKey { ifindex }, e, 0).unwrap();
    }

    fn config(&mut self) -> Array<&mut MapData, DatapathConfig> {
        Array::try_from(self.ebpf.map_mut("CONFIG").unwrap()).unwrap()
    }
    fn peers(&mut self) -> Array<&mut MapData, PeerEntry> {
        Array::try_from(self.ebpf.map_mut("PEERS").unwrap()).unwrap()
    }
    /// A direct peer admitted without a route (the sleeve carries it), with the MAC of the
    /// next hop towards it.
    fn admit_only(&mut self, id: u16, underlay: [u8; 4], next_hop_mac: [u8; 6]) {
        let entry = PeerEntry {
            underlay_ipv4: underlay,
            flags: PEER_ADMIT | PEER_VIA_SLEEVE,
            next_hop: id,
            underlay_mac: next_hop_mac,
        };
        self.peers().set(id as u32, entry, 0).unwrap();
    }
    fn endpoints(&mut self) -> HashMap<&mut MapData, MacKey, LocalEndpoint> {
        HashMap::try_from(self.ebpf.map_mut("ENDPOINTS").unwrap()).unwrap()
    }
    fn set_broadcast_tree(&mut self, source: u16, children: &[u16]) {
        let mut tree = BroadcastTree::default();
        for (slot, c) in tree.children.iter_mut().zip(children) {
            *slot = *c;
            tree.count += 1;
        }
        let mut m: HashMap<&mut MapData, u32, BroadcastTree> =
            HashMap::try_from(self.ebpf.map_mut("BROADCAST_TREES").unwrap()).unwrap();
        m.insert(source as u32, tree, 0).unwrap();
    }
    fn remote_macs(&mut self) -> HashMap<&mut MapData, MacKey, RemoteMac> {
        HashMap::try_from(self.ebpf.map_mut("REMOTE_MACS").unwrap()).unwrap()
    }
    fn neighbours(&mut self) -> HashMap<&mut MapData, Ipv4Key, MacKey> {
        HashMap::try_from(self.ebpf.map_mut("NEIGHBOURS").unwrap()).unwrap()
    }
    /// A local container with `mac` behind host ifindex 1.
    fn add_endpoint(&mut self, mac: [u8; 6]) {
        self.endpoints()
            .insert(
                MacKey::new(mac),
                LocalEndpoint {
                    host_ifindex: 1,
                    flags: 0,
                },
                0,
            )
            .unwrap();
    }

    fn neighbour_peers(&mut self) -> HashMap<&mut MapData, Ipv4Key, NeighbourPeer> {
        HashMap::try_from(self.ebpf.map_mut("NEIGHBOUR_PEERS").unwrap()).unwrap()
    }

    /// Adds FAR_ID, reached through PEER_ID, and records PEER_ID as a direct neighbour.
    /// A second direct peer, SECOND_ID, at SECOND_UNDERLAY with its MAC known.
    fn add_second_direct_peer(&mut self) {
        self.peers()
            .set(
                SECOND_ID as u32,
                PeerEntry {
                    underlay_ipv4: SECOND_UNDERLAY,
                    flags: PEER_ADMIT | PEER_REACHABLE,
                    next_hop: SECOND_ID,
                    underlay_mac: SECOND_UNDERLAY_MAC,
                },
                0,
            )
            .unwrap();
    }

    fn add_far_peer(&mut self) {
        self.peers()
            .set(
                FAR_ID as u32,
                PeerEntry {
                    underlay_ipv4: FAR_UNDERLAY,
                    flags: PEER_ADMIT | PEER_REACHABLE,
                    next_hop: PEER_ID,
                    underlay_mac: [0; 6],
                },
                0,
            )
            .unwrap();
        self.neighbour_peers()
            .insert(
                Ipv4Key {
                    addr: PEER_UNDERLAY,
                },
                NeighbourPeer {
                    short_id: PEER_ID,
                    _pad: [0; 2],
                },
                0,
            )
            .unwrap();
    }

    fn counter(&self, reason: Reason) -> u64 {
        let m: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.ebpf.map("COUNTERS").unwrap()).unwrap();
        m.get(&(reason as u32), 0)
            .unwrap()
            .iter()
            .map(|c| c.packets)
            .sum()
    }

    /// The traffic with peer `id` as the router reads it: summed over CPUs, the newest
    /// probe round merged.
    fn peer_counter(&self, id: u16) -> PeerTraffic {
        let m: PerCpuArray<&MapData, PeerCounter> =
            PerCpuArray::try_from(self.ebpf.map("PEER_COUNTERS").unwrap()).unwrap();
        let per_cpu = m.get(&(id as u32), 0).unwrap();
        peer_traffic(id, &per_cpu)
    }

    /// Runs a classifier on `frame`; (return value, frame afterwards).
    fn run_tc(&mut self, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let p: &mut SchedClassifier = self.ebpf.program_mut(name).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = p
            .test_run(opts)
            .unwrap_or_else(|e| panic!("test run of {name}: {e}"));
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn run_xdp(&mut self, frame: &[u8]) -> u32 {
        let p: &mut Xdp = self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        p.test_run(opts)
            .expect("test run of xdp_admit")
            .return_value
    }
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

/// An Ethernet frame carrying IPv4/UDP with `payload_len` bytes of payload.
fn ipv4_udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload_len: usize,
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload_len) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..payload_len).map(|i| (i * 7 + 3) as u8));
    f
}

/// The container frame used by the TX and RX tests: REMOTE → LOCAL (or the reverse).
fn inner_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    ipv4_udp_frame(dst_mac, src_mac, src, dst, 40000, 5001, 56)
}

/// `inner` encapsulated as a peer would send it (outer Ethernet addresses arbitrary).
fn encapsulated(inner: &[u8], outer_src: [u8; 4], outer_dst: [u8; 4], id: u32) -> Vec<u8> {
    let mut outer = [0u8; OUTER_HLEN];
    write_outer_headers(
        &mut outer,
        &OuterHeaders {
            src_ipv4: outer_src,
            dst_ipv4: outer_dst,
            src_port: 50123,
            vni: id,
            inner_len: inner.len() as u16,
        },
    );
    outer[0..6].copy_from_slice(&[0x02, 0xaa, 0, 0, 0, 1]);
    outer[6..12].copy_from_slice(&[0x02, 0xaa, 0, 0, 0, 2]);
    let mut f = outer.to_vec();
    f.extend_from_slice(inner);
    f
}

fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f
}

#[test]
fn tx_encapsulates_for_a_learned_remote_mac() {
    require_root!();
    let mut bed = Bed::new();
    bed.learn_remote(REMOTE_MAC);
    let inner = inner_frame(REMOTE_MAC, LOCAL_MAC, LOCAL_IP, REMOTE_IP);
    let (rc, out) = bed.run_tc(TX_PROGRAM, &inner);
    assert_eq!(rc, TC_ACT_REDIRECT, "redirected to the underlay");
    assert_eq!(out.len(), inner.len() + OUTER_HLEN);
    // The source port comes from the flow hash; everything else is fixed.
    let sport = u16::from_be_bytes([out[34], out[35]]);
    assert!(sport >= SOURCE_PORT_MIN);
    assert_eq!(
        sport,
        source_port_from_hash(sport as u32),
        "port within the dynamic range mask"
    );
    let mut expected = [0u8; OUTER_HLEN];
    write_outer_headers(
        &mut expected,
        &OuterHeaders {
            src_ipv4: OWN_UNDERLAY,
            dst_ipv4: PEER_UNDERLAY,
            src_port: sport,
            vni: vni::pack(OWN_ID, PEER_ID),
            inner_len: inner.len() as u16,
        },
    );
    // Addressed by the program to the next hop's MAC: no route lookup per packet.
    expected[0..6].copy_from_slice(&PEER_UNDERLAY_MAC);
    expected[6..12].copy_from_slice(&OWN_UNDERLAY_MAC);
    assert_eq!(
        &out[..OUTER_HLEN],
        &expected[..],
        "outer Ethernet/IPv4/UDP/VXLAN"
    );
    // VNI: source (us) in the low 12 bits, destination in the high ones.
    assert_eq!(&out[46..49], &[0x00, 0x20, 0x01]);
    assert_eq!(&out[OUTER_HLEN..], &inner[..], "inner frame intact");
    assert_eq!(bed.counter(Reason::TxEncapsulated), 1);
    let pc = bed.peer_counter(PEER_ID);
    assert_eq!((pc.tx_packets, pc.tx_bytes), (1, inner.len() as u64));
}

#[test]
fn tx_leaves_the_outer_addresses_to_the_kernel_while_the_next_hops_mac_is_unknown() {
    require_root!();
    let mut bed = Bed::new();
    bed.learn_remote(REMOTE_MAC);
    bed.forget_next_hop_mac(PEER_ID);
    let inner = inner_frame(REMOTE_MAC, LOCAL_MAC, LOCAL_IP, REMOTE_IP);
    let (rc, out) = bed.run_tc(TX_PROGRAM, &inner);
    // Redirected through the kernel's neighbour lookup, which writes both addresses.
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &[0; 6], "no destination MAC of our own");
    assert_eq!(&out[30..34], &PEER_UNDERLAY, "outer destination");
    assert_eq!(&out[OUTER_HLEN..], &inner[..], "inner frame intact");
    assert_eq!(bed.counter(Reason::TxEncapsulated), 1);
}

#[test]
fn tx_leaves_frames_for_unreachable_or_unknown_macs_to_the_bridge() {
    require_root!();
    let mut bed = Bed::new();
    let inner = inner_frame(REMOTE_MAC, LOCAL_MAC, LOCAL_IP, REMOTE_IP);
    let (rc, out) = bed.run_tc(TX_PROGRAM, &inner);
    assert_eq!(
        (rc, out.as_slice()),
        (TC_ACT_OK, inner.as_slice()),
        "unknown MAC"
    );

    // Learned behind a peer that is no longer reachable.
    bed.remote_macs()
        .insert(
            MacKey::new(REMOTE_MAC),
            RemoteMac {
                peer_short_id: 0x007,
                _pad: [0; 6],
            },
            0,
        )
        .unwrap();
    let (rc, out) = bed.run_tc(TX_PROGRAM, &inner);
    assert_eq!(
        (rc, out.as_slice()),
        (TC_ACT_OK, inner.as_slice()),
        "unreachable peer"
    );

    let mut bcast = inner.clone();
    bcast[..6].copy_from_slice(&[0xff; 6]);
    let (rc, out) = bed.run_tc(TX_PROGRAM, &bcast);
    assert_eq!(
        (rc, out.as_slice()),
        (TC_ACT_OK, bcast.as_slice()),
        "broadcast"
    );
    assert_eq!(bed.counter(Reason::TxToBridge), 3);
    assert_eq!(bed.counter(Reason::TxEncapsulated), 0);
}

#[test]
fn tx_hands_frames_for_local_containers_straight_over() {
    require_root!();
    let mut bed = Bed::new();
    bed.add_endpoint(OTHER_LOCAL_MAC);
    let frame = inner_frame(OTHER_LOCAL_MAC, LOCAL_MAC, LOCAL_IP, [10, 2, 0, 3]);
    let (rc, out) = bed.run_tc(TX_PROGRAM, &frame);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out, frame);
    assert_eq!(bed.counter(Reason::TxLocalDelivered), 1);
}

#[test]
fn tx_answers_arp_from_neighbours() {
    require_root!();
    let mut bed = Bed::new();
    bed.neighbours()
        .insert(Ipv4Key { addr: REMOTE_IP }, MacKey::new(REMOTE_MAC), 0)
        .unwrap();
    let req = arp_request(LOCAL_MAC, LOCAL_IP, REMOTE_IP);
    let (rc, out) = bed.run_tc(TX_PROGRAM, &req);
    assert_eq!(rc, TC_ACT_REDIRECT, "sent back to the container");
    let mut want = Vec::new();
    want.extend_from_slice(&LOCAL_MAC); // to the asker
    want.extend_from_slice(&REMOTE_MAC); // from the owner of the address
    want.extend_from_slice(&[0x08, 0x06]);
    want.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]); // Ethernet/IPv4, reply
    want.extend_from_slice(&REMOTE_MAC);
    want.extend_from_slice(&REMOTE_IP);
    want.extend_from_slice(&LOCAL_MAC);
    want.extend_from_slice(&LOCAL_IP);
    assert_eq!(out, want);
    assert_eq!(bed.counter(Reason::TxArpAnswered), 1);

    // Unknown address, and a gratuitous ARP: left to the bridge untouched.
    for req in [
        arp_request(LOCAL_MAC, LOCAL_IP, [10, 2, 0, 99]),
        arp_request(LOCAL_MAC, LOCAL_IP, LOCAL_IP),
    ] {
        let (rc, out) = bed.run_tc(TX_PROGRAM, &req);
        assert_eq!((rc, out), (TC_ACT_OK, req));
    }
    assert_eq!(bed.counter(Reason::TxArpAnswered), 1);
    assert_eq!(bed.counter(Reason::TxToBridge), 2);
}

#[test]
fn rx_decapsulates_into_a_local_container_and_learns() {
    require_root!();
    let mut bed = Bed::new();
    bed.add_endpoint(LOCAL_MAC);
    let inner = inner_frame(LOCAL_MAC, REMOTE_MAC, REMOTE_IP, LOCAL_IP);
    let frame = from_peer(&inner);
    let (rc, out) = bed.run_tc(RX_PROGRAM, &frame);
    assert_eq!(rc, TC_ACT_REDIRECT, "into the container");
    assert_eq!(out, inner, "decapsulated bytes are exactly the inner frame");
    assert_eq!(bed.counter(Reason::RxDelivered), 1);
    let pc = bed.peer_counter(PEER_ID);
    assert_eq!((pc.rx_packets, pc.rx_bytes), (1, frame.len() as u64));
    assert_eq!(
        bed.remote_macs()
            .get(&MacKey::new(REMOTE_MAC), 0)
            .unwrap()
            .peer_short_id,
        PEER_ID
    );
    assert_eq!(
        bed.neighbours()
            .get(&Ipv4Key { addr: REMOTE_IP }, 0)
            .unwrap()
            .addr,
        REMOTE_MAC
    );
}

#[test]
fn rx_decapsulates_broadcast_into_the_bridge() {
    require_root!();
    let mut bed = Bed::new();
    let inner = arp_request(REMOTE_MAC, REMOTE_IP, LOCAL_IP);
    let frame = from_peer(&inner);
    let (rc, out) = bed.run_tc(RX_PROGRAM, &frame);
    assert_eq!(
        rc, TC_ACT_REDIRECT,
        "into the bridge's port towards the peers"
    );
    assert_eq!(out, inner, "decapsulated bytes are exactly the inner frame");
    assert_eq!(bed.counter(Reason::RxToBridge), 1);
    // Learned from the ARP sender fields.
    assert_eq!(
        bed.neighbours()
            .get(&Ipv4Key { addr: REMOTE_IP }, 0)
            .unwrap()
            .addr,
        REMOTE_MAC
    );
}

#[test]
fn from_bridge_sends_a_broadcast_to_each_direct_peer_of_its_own_tree() {
    require_root!();
    let mut bed = Bed::new();
    bed.add_far_peer();
    // FAR_ID is reached through PEER_ID, not directly: it gets no copy from us.
    bed.set_broadcast_tree(OWN_ID, &[PEER_ID, FAR_ID]);
    let inner = arp_request(LOCAL_MAC, LOCAL_IP, REMOTE_IP);
    let (rc, out) = bed.run_tc(FROM_BRIDGE_PROGRAM, &inner);
    assert_eq!(
        rc, TC_ACT_SHOT,
        "copies were sent; the original goes nowhere"
    );
    assert_eq!(bed.counter(Reason::BridgeFlooded), 1);
    assert_eq!(bed.counter(Reason::TxEncapsulated), 1, "one copy");
    assert_eq!(bed.peer_counter(PEER_ID).tx_packets, 1);
    assert_eq!(bed.peer_counter(FAR_ID).tx_packets, 0);
    // The last copy's bytes: outer headers to PEER_ID, then the frame unchanged.
    assert_ne!(assert_addressed_to_peer(&out, &inner), 0, "a broadcast ID");
}

#[test]
fn broadcast_copies_reach_every_slot_of_a_full_tree() {
    require_root!();
    let mut bed = Bed::new();
    bed.add_far_peer();
    bed.add_second_direct_peer();
    // Every slot taken: a direct peer in the first and in the last, between them peers
    // reached through another (no copy from us) and ids we know nothing of.
    let mut children: Vec<u16> = (0..MAX_BROADCAST_CHILDREN as u16)
        .map(|i| if i % 2 == 0 { FAR_ID } else { 0x100 + i })
        .collect();
    children[0] = SECOND_ID;
    children[MAX_BROADCAST_CHILDREN - 1] = PEER_ID;
    bed.set_broadcast_tree(OWN_ID, &children);
    let inner = arp_request(LOCAL_MAC, LOCAL_IP, REMOTE_IP);
    let (rc, out) = bed.run_tc(FROM_BRIDGE_PROGRAM, &inner);
    assert_eq!(rc, TC_ACT_SHOT, "copies sent, the original dropped");
    assert_eq!(
        bed.counter(Reason::TxEncapsulated),
        2,
        "one copy per direct child"
    );
    assert_eq!(
        bed.peer_counter(SECOND_ID).tx_packets,
        1,
        "the first slot's"
    );
    assert_eq!(bed.peer_counter(PEER_ID).tx_packets, 1, "the last slot's");
    assert_eq!(bed.peer_counter(FAR_ID).tx_packets, 0);
    // The frame is left as the last copy was sent: to the child in the last slot.
    assert_ne!(assert_addressed_to_peer(&out, &inner), 0, "a broadcast ID");

    // Passing on a peer's broadcast walks its origin's tree the same way.
    children[0] = FAR_ID;
    children[MAX_BROADCAST_CHILDREN - 1] = SECOND_ID;
    bed.set_broadcast_tree(PEER_ID, &children);
    let frame = from_peer(&inner);
    let (rc, out) = bed.run_tc(RX_PROGRAM, &frame);
    assert_eq!(rc, TC_ACT_REDIRECT, "into the bridge after the copies");
    assert_eq!(out, inner, "decapsulated for local delivery");
    assert_eq!(
        bed.counter(Reason::RxRelayed),
        1,
        "one copy on, to the last slot's child"
    );
    assert_eq!(bed.peer_counter(SECOND_ID).tx_packets, 2);
}

/// While a mesh forms, routers' views of an origin's broadcast tree can disagree: ours may
/// list the peer a broadcast just came from (here the origin itself) as our child. No copy
/// goes back to it, or the frame would bounce between the two, copied each time, until its
/// TTL ran out.
#[test]
fn a_broadcast_never_goes_back_to_where_it_came_from() {
    require_root!();
    let mut bed = Bed::new();
    bed.add_second_direct_peer();
    bed.set_broadcast_tree(PEER_ID, &[PEER_ID, SECOND_ID]);
    let inner = arp_request(REMOTE_MAC, REMOTE_IP, LOCAL_IP);
    let (rc, out) = bed.run_tc(RX_PROGRAM, &from_peer(&inner));
    assert_eq!(rc, TC_ACT_REDIRECT, "into the bridge after the copies");
    assert_eq!(out, inner);
    assert_eq!(bed.counter(Reason::RxRelayed), 1, "one copy on");
    assert_eq!(bed.peer_counter(SECOND_ID).tx_packets, 1);
    assert_eq!(
        bed.peer_counter(PEER_ID).tx_packets,
        0,
        "none back to where it came from"
    );
}

/// The kernel checks every program when it is loaded, once per router start; walking a
/// broadcast tree slot by slot made that a third of a second. The verifier's work stays
/// within a budget that a per-slot unrolled walk would exceed many times over.
#[test]
fn programs_load_with_little_verifier_work() {
    require_root!();
    let bed = Bed::new();
    for name in [
        TX_PROGRAM,
        RX_PROGRAM,
        EGRESS_PROGRAM,
        FROM_BRIDGE_PROGRAM,
        XDP_PROGRAM,
    ] {
        let info = bed.ebpf.program(name).unwrap().info().unwrap();
        let verified = info.verified_instruction_count().unwrap();
        assert!(
            verified < VERIFIED_INSTRUCTIONS_BUDGET,
            "{name}: the verifier went through {verified} instructions"
        );
    }
}

/// Asserts that `out` is `inner` behind outer headers from us to PEER_ID (through the next
/// hop's MAC in `PEERS`), as a broadcast copy or heartbeat is sent; any source port and
/// broadcast ID. Returns the broadcast ID (zero: none).
fn assert_addressed_to_peer(out: &[u8], inner: &[u8]) -> u32 {
    let sport = u16::from_be_bytes([out[34], out[35]]);
    let id = broadcast_id_of(out);
    let mut expected = [0u8; OUTER_HLEN];
    write_outer_headers(
        &mut expected,
        &OuterHeaders {
            src_ipv4: OWN_UNDERLAY,
            dst_ipv4: PEER_UNDERLAY,
            src_port: sport,
            vni: vni::pack(OWN_ID, PEER_ID),
            inner_len: inner.len() as u16,
        },
    );
    expected[0..6].copy_from_slice(&PEER_UNDERLAY_MAC);
    expected[6..12].copy_from_slice(&OWN_UNDERLAY_MAC);
    write_broadcast_id(&mut expected[OFF_VXLAN..], id);
    assert_eq!(&out[..OUTER_HLEN], &expected[..]);
    assert_eq!(&out[OUTER_HLEN..], inner);
    id
}

/// Offset of the VXLAN header in an encapsulated frame.
const OFF_VXLAN: usize = OUTER_HLEN - VXLAN_HLEN;

/// The broadcast ID in the VXLAN header of an encapsulated frame.
fn broadcast_id_of(frame: &[u8]) -> u32 {
    read_broadcast_id(frame[OFF_VXLAN..OUTER_HLEN].try_into().unwrap())
}

/// `inner` as PEER_ID floods it, stamped with broadcast ID `id`.
fn broadcast_from_peer(inner: &[u8], id: u32) -> Vec<u8> {
    let mut frame = from_peer(inner);
    write_broadcast_id(&mut frame[OFF_VXLAN..], id);
    frame
}

/// Each broadcast a router floods carries an ID of its own, the same in every copy, so
/// that a router it comes round to again knows it.
#[test]
fn from_bridge_stamps_each_broadcast_with_an_id_of_its_own() {
    require_root!();
    let mut bed = Bed::new();
    bed.set_broadcast_tree(OWN_ID, &[PEER_ID]);
    let inner = arp_request(LOCAL_MAC, LOCAL_IP, REMOTE_IP);
    let ids: Vec<u32> = (0..3)
        .map(|_| {
            let (rc, out) = bed.run_tc(FROM_BRIDGE_PROGRAM, &inner);
            assert_eq!(rc, TC_ACT_SHOT, "copies sent, the original dropped");
            assert_addressed_to_peer(&out, &inner)
        })
        .collect();
    assert!(ids.iter().all(|id| *id != 0), "{ids:x?}");
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:x?}"
    );
}

/// While a mesh forms, a broadcast can come round a loop of three or more routers whose
/// views of its origin's tree differ, and no check of where it just came from sees that.
/// The same (origin, ID) received again is dropped: neither delivered nor passed on a second
/// time. Another ID is a new broadcast, and a frame without an ID (from a router that stamps
/// none) is never taken for a duplicate.
#[test]
fn a_broadcast_that_comes_round_again_is_dropped() {
    require_root!();
    let mut bed = Bed::new();
    bed.add_second_direct_peer();
    bed.set_broadcast_tree(PEER_ID, &[SECOND_ID]);
    let inner = arp_request(REMOTE_MAC, REMOTE_IP, LOCAL_IP);

    let first = broadcast_from_peer(&inner, 0x12_3456);
    let (rc, out) = bed.run_tc(RX_PROGRAM, &first);
    assert_eq!(rc, TC_ACT_REDIRECT, "into the bridge after the copy");
    assert_eq!(out, inner);
    assert_eq!(bed.peer_counter(SECOND_ID).tx_packets, 1, "passed on once");

    let (rc, _) = bed.run_tc(RX_PROGRAM, &first);
    assert_eq!(rc, TC_ACT_SHOT, "the same broadcast again is dropped");
    assert_eq!(bed.counter(Reason::RxDropDuplicateBroadcast), 1);
    assert_eq!(bed.counter(Reason::RxToBridge), 1, "delivered once");
    assert_eq!(bed.counter(Reason::RxRelayed), 1, "passed on once");

    let (rc, _) = bed.run_tc(RX_PROGRAM, &broadcast_from_peer(&inner, 0x12_3457));
    assert_eq!(rc, TC_ACT_REDIRECT, "another ID is another broadcast");
    assert_eq!(bed.counter(Reason::RxRelayed), 2);

    for _ in 0..2 {
        let (rc, _) = bed.run_tc(RX_PROGRAM, &from_peer(&inner));
        assert_eq!(rc, TC_ACT_REDIRECT, "no ID: never a duplicate");
    }
    assert_eq!(bed.counter(Reason::RxRelayed), 4);
    assert_eq!(bed.counter(Reason::RxDropDuplicateBroadcast), 1);
}

#[test]
fn from_bridge_drops_what_has_no_peer_to_go_to() {
    require_root!();
    let mut bed = Bed::new();
    let inner = arp_request(LOCAL_MAC, LOCAL_IP, REMOTE_IP);
    let (rc, _) = bed.run_tc(FROM_BRIDGE_PROGRAM, &inner);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(
        bed.counter(Reason::BridgeDropped),
        1,
        "no tree of our own yet"
    );
    bed.set_broadcast_tree(OWN_ID, &[FAR_ID]);
    let (rc, _) = bed.run_tc(FROM_BRIDGE_PROGRAM, &inner);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(
        bed.counter(Reason::BridgeDropped),
        2,
        "no reachable direct peer"
    );
    assert_eq!(bed.counter(Reason::TxEncapsulated), 0);
}

#[test]
fn from_bridge_encapsulates_unicast_for_a_learned_mac() {
    require_root!();
    let mut bed = Bed::new();
    bed.learn_remote(REMOTE_MAC);
    // The host's own frame (an exposed address on the bridge) to a remote container.
    let inner = inner_frame(REMOTE_MAC, OTHER_LOCAL_MAC, [10, 2, 0, 254], REMOTE_IP);
    let (rc, out) = bed.run_tc(FROM_BRIDGE_PROGRAM, &inner);
    assert_eq!(rc, TC_ACT_REDIRECT, "to the underlay");
    assert_eq!(&out[30..34], &PEER_UNDERLAY);
    let vni_bytes = [0, out[46], out[47], out[48]];
    assert_eq!(u32::from_be_bytes(vni_bytes), vni::pack(OWN_ID, PEER_ID));
    assert_eq!(&out[OUTER_HLEN..], &inner[..]);
    assert_eq!(bed.counter(Reason::TxEncapsulated), 1);
    assert_eq!(bed.counter(Reason::BridgeFlooded), 0);
}

/// A heartbeat's inner frame for `receiver` (`round` 0) or a probe of round `round` whose
/// outer IPv4 packet is `outer_len` bytes.
fn heartbeat(receiver: u16, round: u32, outer_len: usize) -> Vec<u8> {
    let mut frame = vec![
        0u8;
        outer_len
            .saturating_sub(OUTER_IP_OVERHEAD)
            .max(HEARTBEAT_FRAME_LEN)
    ];
    write_heartbeat_frame(&mut frame, receiver, round);
    frame
}

/// A plain heartbeat for `receiver` that asks for no echo (as an older build's).
fn heartbeat_without_echo(receiver: u16) -> Vec<u8> {
    let mut frame = heartbeat(receiver, 0, 0);
    frame[HEARTBEAT_FLAGS_OFFSET] = 0;
    frame
}

#[test]
fn rx_counts_a_fast_path_heartbeat_for_its_peer_and_drops_it() {
    require_root!();
    let mut bed = Bed::new();
    // A peer admitted without a route (its frames travel the sleeve) is heard as well.
    bed.admit_only(FAR_ID, FAR_UNDERLAY, [0; 6]);
    for (n, (id, underlay)) in [(PEER_ID, PEER_UNDERLAY), (FAR_ID, FAR_UNDERLAY)]
        .into_iter()
        .enumerate()
    {
        let frame = encapsulated(
            &heartbeat_without_echo(OWN_ID),
            underlay,
            OWN_UNDERLAY,
            vni::pack(id, OWN_ID),
        );
        assert_eq!(bed.run_xdp(&frame), XDP_PASS, "admitted by XDP");
        let (rc, _) = bed.run_tc(RX_PROGRAM, &frame);
        assert_eq!(rc, TC_ACT_SHOT, "peer {id}: dropped once counted");
        assert_eq!(bed.counter(Reason::RxHeartbeat), n as u64 + 1);
        let pc = bed.peer_counter(id);
        assert_eq!(
            (pc.rx_packets, pc.rx_bytes, pc.rx_heartbeats),
            (1, frame.len() as u64, 1)
        );
        assert_eq!(pc.probe, None, "a plain heartbeat is no probe");
    }
    // An older build's heartbeat (no payload) still counts.
    let mut bare = heartbeat(OWN_ID, 0, 0);
    bare.truncate(14);
    let frame = from_peer(&bare);
    let (rc, _) = bed.run_tc(RX_PROGRAM, &frame);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(bed.peer_counter(PEER_ID).rx_heartbeats, 2);
    assert_eq!(bed.remote_macs().keys().count(), 0, "nothing learned");
    assert_eq!(bed.neighbours().keys().count(), 0, "nothing learned");
    // From a peer that is not admitted: an ordinary drop.
    let stranger = 0x005;
    let frame = encapsulated(
        &heartbeat(OWN_ID, 0, 0),
        [192, 168, 50, 5],
        OWN_UNDERLAY,
        vni::pack(stranger, OWN_ID),
    );
    let (rc, _) = bed.run_tc(RX_PROGRAM, &frame);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(bed.counter(Reason::RxDropUnknownPeer), 1);
    assert_eq!(bed.counter(Reason::RxHeartbeat), 3);
    assert_eq!(bed.peer_counter(stranger).rx_packets, 0);
}

#[test]
fn rx_answers_an_admitted_peers_heartbeat_with_an_echo_of_the_same_size() {
    require_root!();
    let mut bed = Bed::new();
    // Padded like a probe would be: the echo is exactly as long as the request.
    let mut request = heartbeat(OWN_ID, 0, 0);
    request.extend_from_slice(&[0x5a; 10]);
    request[6..12].copy_from_slice(&[0x02, 0xbb, 0, 0, 0, 2]);
    let frame = from_peer(&request);
    assert_eq!(bed.run_xdp(&frame), XDP_PASS);
    let (rc, out) = bed.run_tc(RX_PROGRAM, &frame);
    assert_eq!(rc, TC_ACT_REDIRECT, "turned round, out of the underlay");
    // Exact bytes: from us to the peer's next hop and address, VNI self | peer << 12, the
    // inner Ethernet header as it came, the payload naming the peer and flagged an echo,
    // the padding as it came.
    let mut expected = [0u8; OUTER_HLEN].to_vec();
    write_outer_headers(
        (&mut expected[..]).try_into().unwrap(),
        &OuterHeaders {
            src_ipv4: OWN_UNDERLAY,
            dst_ipv4: PEER_UNDERLAY,
            src_port: source_port_from_hash(PEER_ID as u32),
            vni: vni::pack(OWN_ID, PEER_ID),
            inner_len: request.len() as u16,
        },
    );
    expected[0..6].copy_from_slice(&PEER_UNDERLAY_MAC);
    expected[6..12].copy_from_slice(&OWN_UNDERLAY_MAC);
    expected.extend_from_slice(&request[..14]);
    expected.extend_from_slice(&write_echo_payload(PEER_ID));
    expected.extend_from_slice(&[0x5a; 10]);
    assert_eq!(out, expected);
    assert_eq!(out.len(), frame.len(), "never larger than the request");
    assert_eq!(bed.counter(Reason::RxHeartbeatEchoed), 1);
    assert_eq!(bed.counter(Reason::RxHeartbeat), 1);
    let pc = bed.peer_counter(PEER_ID);
    assert_eq!(
        (pc.rx_heartbeats, pc.rx_heartbeat_echoes),
        (1, 0),
        "its heartbeat counted"
    );

    // The peer's echo of one of ours: counted as an echo, dropped, never answered.
    let mut echo = heartbeat(OWN_ID, 0, 0);
    echo[14..22].copy_from_slice(&write_echo_payload(OWN_ID));
    assert_eq!(echo[HEARTBEAT_FLAGS_OFFSET], HEARTBEAT_ECHO);
    let frame = from_peer(&echo);
    let (rc, _) = bed.run_tc(RX_PROGRAM, &frame);
    assert_eq!(rc, TC_ACT_SHOT, "an echo is not echoed");
    assert_eq!(bed.counter(Reason::RxHeartbeatEchoed), 1);
    let pc = bed.peer_counter(PEER_ID);
    assert_eq!((pc.rx_heartbeats, pc.rx_heartbeat_echoes), (1, 1));
}

#[test]
fn rx_answers_no_heartbeat_but_a_direct_admitted_peers_plain_one_naming_us() {
    require_root!();
    let mut bed = Bed::new();
    bed.admit_only(FAR_ID, FAR_UNDERLAY, [0; 6]);
    let unanswered = [
        // Not admitted: dropped before anything else.
        (
            heartbeat(OWN_ID, 0, 0),
            [192, 168, 50, 5],
            0x005,
            "a stranger",
        ),
        // Admitted, but no next-hop MAC to answer with.
        (
            heartbeat(OWN_ID, 0, 0),
            FAR_UNDERLAY,
            FAR_ID,
            "a peer without a next hop",
        ),
        (
            heartbeat(PEER_ID, 0, 0),
            PEER_UNDERLAY,
            PEER_ID,
            "one for another receiver",
        ),
        (
            heartbeat(OWN_ID, 1234, 1400),
            PEER_UNDERLAY,
            PEER_ID,
            "a probe",
        ),
        (
            heartbeat_without_echo(OWN_ID),
            PEER_UNDERLAY,
            PEER_ID,
            "one asking for none",
        ),
        (
            heartbeat(OWN_ID, 0, 0)[..20].to_vec(),
            PEER_UNDERLAY,
            PEER_ID,
            "an older build's",
        ),
    ];
    for (inner, from, id, what) in unanswered {
        let frame = encapsulated(&inner, from, OWN_UNDERLAY, vni::pack(id, OWN_ID));
        let (rc, _) = bed.run_tc(RX_PROGRAM, &frame);
        assert_eq!(rc, TC_ACT_SHOT, "{what}: dropped");
        assert_eq!(
            bed.counter(Reason::RxHeartbeatEchoed),
            0,
            "{what}: not answered"
        );
    }
    assert_eq!(bed.counter(Reason::RxDropUnknownPeer), 1);
    assert_eq!(bed.counter(Reason::RxHeartbeat), 5);
    // Relayed by a neighbour (PEER_ID) for FAR_ID: admitted, never answered (an echo goes
    // to the sender's own address only).
    bed.add_far_peer();
    let frame = encapsulated(
        &heartbeat(OWN_ID, 0, 0),
        PEER_UNDERLAY,
        OWN_UNDERLAY,
        vni::pack(FAR_ID, OWN_ID),
    );
    let (rc, _) = bed.run_tc(RX_PROGRAM, &frame);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(
        bed.counter(Reason::RxHeartbeatEchoed),
        0,
        "relayed: not answered"
    );
    assert_eq!(bed.counter(Reason::RxHeartbeat), 6, "but counted");
    // A direct peer, from its own address, it is (one the sleeve carries too).
    bed.admit_only(FAR_ID, FAR_UNDERLAY, PEER_UNDERLAY_MAC);
    let frame = encapsulated(
        &heartbeat(OWN_ID, 0, 0),
        FAR_UNDERLAY,
        OWN_UNDERLAY,
        vni::pack(FAR_ID, OWN_ID),
    );
    let (rc, out) = bed.run_tc(RX_PROGRAM, &frame);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(&out[30..34], &FAR_UNDERLAY);
    assert_eq!(bed.counter(Reason::RxHeartbeatEchoed), 1);
}

#[test]
fn rx_keeps_the_largest_probe_of_the_newest_round() {
    require_root!();
    let mut bed = Bed::new();
    let probe = |bed: &mut Bed, round: u32, outer: usize| {
        let frame = encapsulated(
            &heartbeat(OWN_ID, round, outer),
            PEER_UNDERLAY,
            OWN_UNDERLAY,
            vni::pack(PEER_ID, OWN_ID),
        );
        assert_eq!(
            frame.len(),
            outer + 14,
            "outer IPv4 packet of {outer} bytes"
        );
        let (rc, _) = bed.run_tc(RX_PROGRAM, &frame);
        assert_eq!(rc, TC_ACT_SHOT);
        let probe = bed.peer_counter(PEER_ID).probe.unwrap_or_default();
        (probe.round, probe.largest)
    };
    assert_eq!(probe(&mut bed, 1000, 1400), (1000, 1400));
    assert_eq!(
        probe(&mut bed, 1000, 1200),
        (1000, 1400),
        "a smaller one of the same round"
    );
    assert_eq!(probe(&mut bed, 1000, 1450), (1000, 1450));
    assert_eq!(
        probe(&mut bed, 999, 1500),
        (1000, 1450),
        "a late one of an older round"
    );
    assert_eq!(
        probe(&mut bed, 1001, 600),
        (1001, 600),
        "a newer round starts over"
    );
    assert_eq!(bed.peer_counter(PEER_ID).rx_heartbeats, 5);
}

#[test]
fn from_bridge_addresses_a_heartbeat_to_the_peer_it_names_like_a_broadcast_copy() {
    require_root!();
    let mut bed = Bed::new();
    let inner = heartbeat(PEER_ID, 77, 1400);
    let (rc, out) = bed.run_tc(FROM_BRIDGE_PROGRAM, &inner);
    assert_eq!(rc, TC_ACT_REDIRECT, "to the underlay");
    // The next hop's MAC from PEERS (a router's, on a routed underlay), DF set.
    assert_eq!(assert_addressed_to_peer(&out, &inner), 0, "no broadcast ID");
    assert_eq!(
        out.len() - 14,
        1400,
        "the probe's outer packet has the size asked for"
    );
    assert_eq!(bed.counter(Reason::TxHeartbeat), 1);
    assert_eq!(bed.counter(Reason::BridgeFlooded), 0);
    // A peer the sleeve carries now (admitted only) still gets its heartbeats.
    bed.admit_only(FAR_ID, FAR_UNDERLAY, PEER_UNDERLAY_MAC);
    let (rc, out) = bed.run_tc(FROM_BRIDGE_PROGRAM, &heartbeat(FAR_ID, 0, 0));
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(&out[30..34], &FAR_UNDERLAY);
    // Unknown peers, and peers whose next hop's MAC is not known, get nothing.
    bed.forget_next_hop_mac(FAR_ID);
    for peer in [FAR_ID, 0x0777] {
        let (rc, _) = bed.run_tc(FROM_BRIDGE_PROGRAM, &heartbeat(peer, 0, 0));
        assert_eq!(rc, TC_ACT_SHOT, "peer {peer}");
    }
    assert_eq!(bed.counter(Reason::TxHeartbeat), 2);
    assert_eq!(bed.counter(Reason::BridgeDropped), 2);
}

#[test]
fn rx_drops_what_is_not_admitted_and_counts_why() {
    require_root!();
    let mut bed = Bed::new();
    bed.add_endpoint(LOCAL_MAC);
    let inner = inner_frame(LOCAL_MAC, REMOTE_MAC, REMOTE_IP, LOCAL_IP);
    let cases = [
        (
            encapsulated(
                &inner,
                [192, 168, 50, 3],
                OWN_UNDERLAY,
                vni::pack(0x003, OWN_ID),
            ),
            Reason::RxDropUnknownPeer,
            Reason::XdpDropUnknownPeer,
        ),
        (
            encapsulated(
                &inner,
                [192, 168, 50, 99],
                OWN_UNDERLAY,
                vni::pack(PEER_ID, OWN_ID),
            ),
            Reason::RxDropSpoofedSource,
            Reason::XdpDropSpoofedSource,
        ),
        (
            encapsulated(
                &inner,
                PEER_UNDERLAY,
                OWN_UNDERLAY,
                vni::pack(PEER_ID, 0x005),
            ),
            Reason::RxDropNotForUs,
            Reason::XdpDropNotForUs,
        ),
        // Truncated: the VXLAN header but no inner Ethernet header.
        (
            from_peer(&inner)[..OUTER_HLEN + 6].to_vec(),
            Reason::RxDropMalformed,
            Reason::XdpDropMalformed,
        ),
    ];
    for (frame, reason, xdp_reason) in &cases {
        let (rc, _) = bed.run_tc(RX_PROGRAM, frame);
        assert_eq!(rc, TC_ACT_SHOT, "{}", reason.name());
        assert_eq!(bed.counter(*reason), 1, "{}", reason.name());
        assert_eq!(bed.run_xdp(frame), XDP_DROP, "{}", xdp_reason.name());
        assert_eq!(bed.counter(*xdp_reason), 1, "{}", xdp_reason.name());
    }
    // A VXLAN header without the VNI flag is malformed too.
    let mut noflag = from_peer(&inner);
    noflag[42] = 0;
    assert_eq!(bed.run_tc(RX_PROGRAM, &noflag).0, TC_ACT_SHOT);
    assert_eq!(bed.counter(Reason::RxDropMalformed), 2);
    // Nothing was delivered or learned.
    assert_eq!(bed.counter(Reason::RxDelivered), 0);
    assert!(bed.remote_macs().get(&MacKey::new(REMOTE_MAC), 0).is_err());
    // The peer's own traffic passes XDP.
    let good = from_peer(&inner);
    assert_eq!(bed.run_xdp(&good), XDP_PASS);
}

#[test]
fn rx_ignores_traffic_that_is_not_vxlan() {
    require_root!();
    let mut bed = Bed::new();
    let dns = ipv4_udp_frame(
        [0x02, 0xaa, 0, 0, 0, 1],
        [0x02, 0xaa, 0, 0, 0, 2],
        PEER_UNDERLAY,
        OWN_UNDERLAY,
        5353,
        53,
        40,
    );
    let (rc, out) = bed.run_tc(RX_PROGRAM, &dns);
    assert_eq!((rc, out.as_slice()), (TC_ACT_OK, dns.as_slice()));
    assert_eq!(bed.run_xdp(&dns), XDP_PASS);
    // Short frames that are not IPv4/UDP at all pass too.
    let arp = arp_request(REMOTE_MAC, REMOTE_IP, LOCAL_IP);
    assert_eq!(bed.run_tc(RX_PROGRAM, &arp).0, TC_ACT_OK);
    for r in Reason::ALL {
        assert_eq!(bed.counter(r), 0, "{}", r.name());
    }
}

#[test]
fn rx_relays_a_frame_for_another_peer_with_new_outer_addresses() {
    require_root!();
    let mut bed = Bed::new();
    // Seen from PEER_ID: it reaches FAR_ID through us. Here: FAR_ID is our direct neighbour
    // too, so make it one and send a frame from PEER_ID to FAR_ID.
    bed.peers()
        .set(
            FAR_ID as u32,
            PeerEntry {
                underlay_ipv4: FAR_UNDERLAY,
                flags: PEER_ADMIT | PEER_REACHABLE,
                next_hop: FAR_ID,
                underlay_mac: [0x02, 0xaa, 0, 0, 0, 3],
            },
            0,
        )
        .unwrap();
    let inner = inner_frame(LOCAL_MAC, REMOTE_MAC, REMOTE_IP, LOCAL_IP);
    let frame = encapsulated(
        &inner,
        PEER_UNDERLAY,
        OWN_UNDERLAY,
        vni::pack(PEER_ID, FAR_ID),
    );
    let (rc, out) = bed.run_tc(RX_PROGRAM, &frame);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out.len(), frame.len());
    let ip = &out[14..34];
    assert_eq!(&ip[12..16], &OWN_UNDERLAY, "outer source is now us");
    assert_eq!(
        &ip[16..20],
        &FAR_UNDERLAY,
        "outer destination is the next hop"
    );
    assert_eq!(ip[8], 63, "one hop less");
    assert_eq!(ipv4_checksum(ip), 0, "outer IPv4 checksum valid");
    assert_eq!(
        (&out[0..6], &out[6..12]),
        (&[0x02, 0xaa, 0, 0, 0, 3][..], &OWN_UNDERLAY_MAC[..]),
        "addressed from our underlay MAC to the next hop's"
    );
    assert_eq!(&out[40..42], &[0, 0], "UDP checksum zero");
    assert_eq!(
        &out[42..50],
        &frame[42..50],
        "VXLAN header (and VNI) unchanged"
    );
    assert_eq!(&out[50..], &inner[..], "inner frame unchanged");
    assert_eq!(bed.counter(Reason::RxRelayed), 1);
    assert_eq!(bed.peer_counter(FAR_ID).tx_packets, 1);
}

/// ifindex written as the sleeve's TAP (any value, as for the bridge's port).
const SLEEVE_PORT_IFINDEX: u32 = 43;

#[test]
fn rx_hands_a_frame_for_a_peer_on_the_sleeve_to_the_sleeve_tagged_with_both_ends() {
    require_root!();
    let mut bed = Bed::new();
    // FAR_ID: a direct peer whose fast path fell back; PEER_ID relays it a frame through us.
    bed.admit_only(FAR_ID, FAR_UNDERLAY, [0x02, 0xaa, 0, 0, 0, 3]);
    let inner = inner_frame(OTHER_LOCAL_MAC, REMOTE_MAC, REMOTE_IP, LOCAL_IP);
    let frame = encapsulated(
        &inner,
        PEER_UNDERLAY,
        OWN_UNDERLAY,
        vni::pack(PEER_ID, FAR_ID),
    );
    // No sleeve to hand it to: not for us, as before.
    assert_eq!(bed.run_tc(RX_PROGRAM, &frame).0, TC_ACT_SHOT);
    assert_eq!(bed.counter(Reason::RxDropNotForUs), 1);

    let mut config = bed.config().get(&0, 0).unwrap();
    config.sleeve_port_ifindex = SLEEVE_PORT_IFINDEX;
    bed.config().set(0, config, 0).unwrap();
    let (rc, out) = bed.run_tc(RX_PROGRAM, &frame);
    assert_eq!(rc, TC_ACT_REDIRECT);
    // The inner frame with the destination's tag after its MACs; the origin's (802.1ad)
    // is in the skb's metadata, which a test run does not hand back: the TAP writes it in
    // front of the destination's.
    let mut expected = inner[..12].to_vec();
    expected.extend_from_slice(&[0x81, 0x00]);
    expected.extend_from_slice(&FAR_ID.to_be_bytes());
    expected.extend_from_slice(&inner[12..]);
    assert_eq!(out, expected);
    let mut as_read = out[..12].to_vec();
    as_read.extend_from_slice(&[0x88, 0xa8]);
    as_read.extend_from_slice(&PEER_ID.to_be_bytes());
    as_read.extend_from_slice(&out[12..]);
    assert_eq!(
        weave_ebpf_common::handover::read_handover(&as_read),
        Some((PEER_ID, FAR_ID)),
        "the sleeve reads both ends back"
    );
    assert_eq!(bed.counter(Reason::RxToSleeve), 1);
    assert_eq!(bed.counter(Reason::RxDropNotForUs), 1);
    assert_eq!(bed.counter(Reason::RxRelayed), 0);
    // Nothing learned from a frame that only passes through.
    assert!(bed.remote_macs().get(&MacKey::new(REMOTE_MAC), 0).is_err());
    // XDP lets it through to the tc program.
    assert_eq!(bed.run_xdp(&frame), XDP_PASS);
    // A stranger's frame for it is still spoofed, not handed over.
    let spoofed = encapsulated(
        &inner,
        [192, 168, 70, 9],
        OWN_UNDERLAY,
        vni::pack(PEER_ID, FAR_ID),
    );
    assert_eq!(bed.run_tc(RX_PROGRAM, &spoofed).0, TC_ACT_SHOT);
    assert_eq!(bed.counter(Reason::RxDropSpoofedSource), 1);
    assert_eq!(bed.counter(Reason::RxToSleeve), 1);
}

#[test]
fn rx_drops_a_relayed_frame_whose_ttl_ran_out() {
    require_root!();
    let mut bed = Bed::new();
    bed.add_far_peer();
    let inner = inner_frame(LOCAL_MAC, REMOTE_MAC, REMOTE_IP, LOCAL_IP);
    // Naming FAR_ID as origin, from an address that is neither FAR_ID's nor a neighbour's:
    // spoofed.
    let frame = encapsulated(
        &inner,
        [192, 168, 70, 9],
        OWN_UNDERLAY,
        vni::pack(FAR_ID, PEER_ID),
    );
    assert_eq!(bed.run_tc(RX_PROGRAM, &frame).0, TC_ACT_SHOT);
    assert_eq!(bed.counter(Reason::RxDropSpoofedSource), 1);
    // From our neighbour PEER_ID, origin FAR_ID, for PEER_ID itself: relayed back, but TTL 1.
    let mut frame = encapsulated(
        &inner,
        PEER_UNDERLAY,
        OWN_UNDERLAY,
        vni::pack(FAR_ID, PEER_ID),
    );
    frame[22] = 1;
    frame[24] = 0;
    frame[25] = 0;
    let c = ipv4_checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(bed.run_tc(RX_PROGRAM, &frame).0, TC_ACT_SHOT);
    assert_eq!(bed.counter(Reason::RxDropTtlExpired), 1);
}

#[test]
fn rx_admits_a_frame_relayed_by_a_neighbour_and_delivers_it() {
    require_root!();
    let mut bed = Bed::new();
    bed.add_far_peer();
    bed.add_endpoint(LOCAL_MAC);
    let inner = inner_frame(LOCAL_MAC, REMOTE_MAC, REMOTE_IP, LOCAL_IP);
    // Origin FAR_ID, relayed by PEER_ID: the outer source is PEER_ID's address.
    let frame = encapsulated(
        &inner,
        PEER_UNDERLAY,
        OWN_UNDERLAY,
        vni::pack(FAR_ID, OWN_ID),
    );
    let (rc, out) = bed.run_tc(RX_PROGRAM, &frame);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out, inner, "decapsulated to the inner frame");
    assert_eq!(bed.counter(Reason::RxDelivered), 1);
    assert_eq!(
        bed.remote_macs()
            .get(&MacKey::new(REMOTE_MAC), 0)
            .unwrap()
            .peer_short_id,
        FAR_ID,
        "the sender's MAC is learned behind its origin, not the relay"
    );
    // Without PEER_ID recorded as a neighbour, the same frame is a spoof.
    bed.neighbour_peers()
        .remove(&Ipv4Key {
            addr: PEER_UNDERLAY,
        })
        .unwrap();
    assert_eq!(bed.run_tc(RX_PROGRAM, &frame).0, TC_ACT_SHOT);
    assert_eq!(bed.counter(Reason::RxDropSpoofedSource), 1);
}

#[test]
fn tx_encapsulates_a_non_ipv4_frame_for_a_peer_behind_a_relay() {
    require_root!();
    let mut bed = Bed::new();
    bed.add_far_peer();
    bed.remote_macs()
        .insert(
            MacKey::new(REMOTE_MAC),
            RemoteMac {
                peer_short_id: FAR_ID,
                _pad: [0; 6],
            },
            0,
        )
        .unwrap();
    // An ARP reply from a local container to a container behind FAR_ID.
    let mut reply = REMOTE_MAC.to_vec();
    reply.extend_from_slice(&LOCAL_MAC);
    reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    reply.extend_from_slice(&LOCAL_MAC);
    reply.extend_from_slice(&LOCAL_IP);
    reply.extend_from_slice(&REMOTE_MAC);
    reply.extend_from_slice(&REMOTE_IP);
    let (rc, out) = bed.run_tc(TX_PROGRAM, &reply);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out.len(), OUTER_HLEN + reply.len());
    assert_eq!(
        &out[0..6],
        &PEER_UNDERLAY_MAC,
        "outer destination: the next hop's MAC"
    );
    assert_eq!(&out[6..12], &OWN_UNDERLAY_MAC);
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    assert_eq!(&out[26..30], &OWN_UNDERLAY);
    assert_eq!(&out[30..34], &PEER_UNDERLAY, "sent to the relay");
    assert_eq!(ipv4_checksum(&out[14..34]), 0);
    assert_eq!(
        u16::from_be_bytes([out[16], out[17]]) as usize,
        36 + reply.len()
    );
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 6784);
    let vni_bytes = [0, out[46], out[47], out[48]];
    assert_eq!(
        u32::from_be_bytes(vni_bytes),
        vni::pack(OWN_ID, FAR_ID),
        "addressed to the far peer"
    );
    assert_eq!(&out[OUTER_HLEN..], &reply[..], "inner frame intact");
    assert_eq!(bed.counter(Reason::TxEncapsulated), 1);
}

// ---------------------------------------------------------------------------------------
// Subnet isolation
// ---------------------------------------------------------------------------------------

/// An address outside LOCAL_IP's /24: another subnet of the same range.
const OTHER_SUBNET_IP: [u8; 4] = [10, 2, 2, 7];

impl Bed {
    /// A local container with `mac` behind host ifindex `ifindex`.
    fn add_endpoint_at(&mut self, mac: [u8; 6], ifindex: u32) {
        self.endpoints()
            .insert(
                MacKey::new(mac),
                LocalEndpoint {
                    host_ifindex: ifindex,
                    flags: 0,
                },
                0,
            )
            .unwrap();
    }

    fn remove_addresses(&mut self, ifindex: u32) {
        let mut m: HashMap<&mut MapData, IfindexKey, EndpointAddresses> =
            HashMap::try_from(self.ebpf.map_mut("ENDPOINT_ADDRESSES").unwrap()).unwrap();
        m.remove(&IfindexKey { ifindex }).unwrap();
    }

    /// Clears the next hop's MAC in `id`'s `PEERS` entry, as before the controller knows it.
    fn forget_next_hop_mac(&mut self, id: u16) {
        let entry = self.peers().get(&(id as u32), 0).unwrap();
        self.peers()
            .set(
                id as u32,
                PeerEntry {
                    underlay_mac: [0; 6],
                    ..entry
                },
                0,
            )
            .unwrap();
    }

    fn learn_remote(&mut self, mac: [u8; 6]) {
        self.remote_macs()
            .insert(
                MacKey::new(mac),
                RemoteMac {
                    peer_short_id: PEER_ID,
                    _pad: [0; 6],
                },
                0,
            )
            .unwrap();
    }
}

/// A frame of another protocol (IPv6 here: 0x86dd and 40 bytes of header) from `src_mac`.
fn ipv6_frame(dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
    f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend_from_slice(&[0; 8]);
    f
}

#[test]
fn tx_drops_a_spoofed_source_and_counts_it() {
    require_root!();
    let mut bed = Bed::new();
    bed.learn_remote(REMOTE_MAC);
    bed.neighbours()
        .insert(Ipv4Key { addr: REMOTE_IP }, MacKey::new(REMOTE_MAC), 0)
        .unwrap();
    // An address of the container's own subnet that is not its own, and one of another
    // subnet (a container that changed its address).
    for spoofed in [[10, 2, 0, 99], OTHER_SUBNET_IP] {
        let frame = inner_frame(REMOTE_MAC, LOCAL_MAC, spoofed, REMOTE_IP);
        assert_eq!(bed.run_tc(TX_PROGRAM, &frame).0, TC_ACT_SHOT, "{spoofed:?}");
        let arp = arp_request(LOCAL_MAC, spoofed, REMOTE_IP);
        assert_eq!(
            bed.run_tc(TX_PROGRAM, &arp).0,
            TC_ACT_SHOT,
            "ARP from {spoofed:?}"
        );
    }
    assert_eq!(bed.counter(Reason::TxDropSpoofedSource), 4);
    assert_eq!(bed.counter(Reason::TxEncapsulated), 0);
    assert_eq!(bed.counter(Reason::TxArpAnswered), 0);
    // The real address still goes out, exactly as before.
    let frame = inner_frame(REMOTE_MAC, LOCAL_MAC, LOCAL_IP, REMOTE_IP);
    let (rc, out) = bed.run_tc(TX_PROGRAM, &frame);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(&out[OUTER_HLEN..], &frame[..]);
    assert_eq!(bed.counter(Reason::TxEncapsulated), 1);
    // An interface with no addresses on record sends nothing.
    bed.remove_addresses(LO_IFINDEX);
    assert_eq!(bed.run_tc(TX_PROGRAM, &frame).0, TC_ACT_SHOT);
    assert_eq!(bed.counter(Reason::TxDropSpoofedSource), 5);
}

#[test]
fn tx_drops_unicast_outside_its_subnets_but_lets_broadcast_out() {
    require_root!();
    let mut bed = Bed::new();
    bed.learn_remote(REMOTE_MAC);
    bed.neighbours()
        .insert(
            Ipv4Key {
                addr: OTHER_SUBNET_IP,
            },
            MacKey::new(REMOTE_MAC),
            0,
        )
        .unwrap();
    // A container that added a route to the other subnet: IPv4 to it, and ARP for it
    // (known in NEIGHBOURS, yet not answered).
    let frame = inner_frame(REMOTE_MAC, LOCAL_MAC, LOCAL_IP, OTHER_SUBNET_IP);
    assert_eq!(bed.run_tc(TX_PROGRAM, &frame).0, TC_ACT_SHOT);
    let arp = arp_request(LOCAL_MAC, LOCAL_IP, OTHER_SUBNET_IP);
    assert_eq!(bed.run_tc(TX_PROGRAM, &arp).0, TC_ACT_SHOT);
    assert_eq!(bed.counter(Reason::TxDropOutsideSubnet), 2);
    assert_eq!(bed.counter(Reason::TxArpAnswered), 0);
    assert_eq!(bed.counter(Reason::TxEncapsulated), 0);
    // Broadcast and multicast go to the bridge untouched: receivers check the source.
    for (mac, dst) in [
        ([0xff; 6], [255, 255, 255, 255]),
        ([0xff; 6], [10, 2, 0, 255]),
        ([0x01, 0x00, 0x5e, 0, 0, 0xfb], [224, 0, 0, 251]),
    ] {
        let f = inner_frame(mac, LOCAL_MAC, LOCAL_IP, dst);
        let (rc, out) = bed.run_tc(TX_PROGRAM, &f);
        assert_eq!((rc, out), (TC_ACT_OK, f), "to {dst:?}");
    }
    assert_eq!(bed.counter(Reason::TxToBridge), 3);
}

#[test]
fn tx_drops_ipv6_and_other_protocols() {
    require_root!();
    let mut bed = Bed::new();
    let v6 = ipv6_frame([0x33, 0x33, 0, 0, 0, 1], LOCAL_MAC);
    assert_eq!(bed.run_tc(TX_PROGRAM, &v6).0, TC_ACT_SHOT, "IPv6 multicast");
    let unicast_v6 = ipv6_frame(REMOTE_MAC, LOCAL_MAC);
    assert_eq!(
        bed.run_tc(TX_PROGRAM, &unicast_v6).0,
        TC_ACT_SHOT,
        "IPv6 unicast"
    );
    // A VLAN tag in front of IPv4.
    let mut tagged = inner_frame(REMOTE_MAC, LOCAL_MAC, LOCAL_IP, REMOTE_IP);
    tagged[12..14].copy_from_slice(&[0x81, 0x00]);
    assert_eq!(bed.run_tc(TX_PROGRAM, &tagged).0, TC_ACT_SHOT, "802.1Q");
    assert_eq!(bed.counter(Reason::TxDropProtocol), 3);
}

#[test]
fn tx_local_delivery_checks_the_receivers_subnets() {
    require_root!();
    let mut bed = Bed::new();
    // The sender has a /16 and so may address the receiver; the receiver only has a /24
    // that does not hold the sender.
    bed.set_addresses(LO_IFINDEX, LOCAL_MAC, &[(LOCAL_IP, 16)]);
    bed.add_endpoint_at(OTHER_LOCAL_MAC, 2);
    bed.set_addresses(2, OTHER_LOCAL_MAC, &[([10, 2, 9, 3], 24)]);
    let frame = inner_frame(OTHER_LOCAL_MAC, LOCAL_MAC, LOCAL_IP, [10, 2, 9, 3]);
    assert_eq!(bed.run_tc(TX_PROGRAM, &frame).0, TC_ACT_SHOT);
    assert_eq!(bed.counter(Reason::TxDropIsolated), 1);
    assert_eq!(bed.counter(Reason::TxLocalDelivered), 0);
    // A second address of the receiver, in the sender's subnet: delivered, bytes unchanged.
    bed.set_addresses(
        2,
        OTHER_LOCAL_MAC,
        &[([10, 2, 9, 3], 24), ([10, 2, 0, 3], 24)],
    );
    let (rc, out) = bed.run_tc(TX_PROGRAM, &frame);
    assert_eq!((rc, out), (TC_ACT_REDIRECT, frame.clone()));
    assert_eq!(bed.counter(Reason::TxLocalDelivered), 1);
    // A local endpoint with no record receives nothing.
    bed.remove_addresses(2);
    assert_eq!(bed.run_tc(TX_PROGRAM, &frame).0, TC_ACT_SHOT);
    assert_eq!(bed.counter(Reason::TxDropIsolated), 2);
}

#[test]
fn rx_drops_a_decapsulated_frame_from_another_subnet() {
    require_root!();
    let mut bed = Bed::new();
    bed.add_endpoint(LOCAL_MAC);
    let inner = inner_frame(LOCAL_MAC, REMOTE_MAC, OTHER_SUBNET_IP, LOCAL_IP);
    let frame = from_peer(&inner);
    assert_eq!(bed.run_tc(RX_PROGRAM, &frame).0, TC_ACT_SHOT);
    assert_eq!(bed.counter(Reason::RxDropIsolated), 1);
    assert_eq!(bed.counter(Reason::RxDelivered), 0);
    // From the container's own subnet: delivered.
    let inner = inner_frame(LOCAL_MAC, REMOTE_MAC, REMOTE_IP, LOCAL_IP);
    let frame = from_peer(&inner);
    let (rc, out) = bed.run_tc(RX_PROGRAM, &frame);
    assert_eq!((rc, out), (TC_ACT_REDIRECT, inner));
    // To a local endpoint with no record: dropped.
    bed.add_endpoint_at(OTHER_LOCAL_MAC, 3);
    let inner = inner_frame(OTHER_LOCAL_MAC, REMOTE_MAC, REMOTE_IP, [10, 2, 0, 3]);
    let frame = from_peer(&inner);
    assert_eq!(bed.run_tc(RX_PROGRAM, &frame).0, TC_ACT_SHOT);
    assert_eq!(bed.counter(Reason::RxDropIsolated), 2);
    assert_eq!(bed.counter(Reason::RxDelivered), 1);
}

#[test]
fn egress_hands_a_container_only_frames_from_its_subnets() {
    require_root!();
    let mut bed = Bed::new();
    // What the bridge floods to the container behind ifindex 1 (10.2.0.1/24).
    let ok = [
        arp_request(REMOTE_MAC, REMOTE_IP, LOCAL_IP),
        inner_frame([0xff; 6], REMOTE_MAC, REMOTE_IP, [255, 255, 255, 255]),
        inner_frame(LOCAL_MAC, REMOTE_MAC, REMOTE_IP, LOCAL_IP),
    ];
    for f in &ok {
        let (rc, out) = bed.run_tc(EGRESS_PROGRAM, f);
        assert_eq!((rc, &out), (TC_ACT_OK, f));
    }
    let refused = [
        arp_request(REMOTE_MAC, OTHER_SUBNET_IP, LOCAL_IP),
        inner_frame([0xff; 6], REMOTE_MAC, OTHER_SUBNET_IP, [255, 255, 255, 255]),
        inner_frame(LOCAL_MAC, REMOTE_MAC, OTHER_SUBNET_IP, LOCAL_IP),
        ipv6_frame([0x33, 0x33, 0, 0, 0, 1], REMOTE_MAC),
    ];
    for f in &refused {
        assert_eq!(bed.run_tc(EGRESS_PROGRAM, f).0, TC_ACT_SHOT);
    }
    assert_eq!(bed.counter(Reason::EgressDropIsolated), 4);
    // No record for the interface: nothing is handed over.
    bed.remove_addresses(LO_IFINDEX);
    assert_eq!(bed.run_tc(EGRESS_PROGRAM, &ok[0]).0, TC_ACT_SHOT);
    assert_eq!(bed.counter(Reason::EgressDropIsolated), 5);
}

#[test]
fn the_service_address_stays_on_its_host_both_ways() {
    require_root!();
    let mut bed = Bed::new();
    let service = [169, 254, 53, 53];
    let mut config = bed.config().get(&0, 0).unwrap();
    config.service_ipv4 = service;
    bed.config().set(0, config, 0).unwrap();
    bed.set_broadcast_tree(OWN_ID, &[PEER_ID]);
    // From the bridge: the host's ARP from the service address goes to no peer.
    let (rc, _) = bed.run_tc(
        FROM_BRIDGE_PROGRAM,
        &arp_request(OTHER_LOCAL_MAC, service, LOCAL_IP),
    );
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(bed.counter(Reason::BridgeDropped), 1);
    assert_eq!(bed.counter(Reason::TxEncapsulated), 0);
    // From a peer: its bridge's MAC for the service address is not learned (it would take
    // the place of ours in the ARP answers to our containers).
    let arp_from_peer = |sender| {
        encapsulated(
            &arp_request(REMOTE_MAC, sender, LOCAL_IP),
            PEER_UNDERLAY,
            OWN_UNDERLAY,
            vni::pack(PEER_ID, OWN_ID),
        )
    };
    bed.run_tc(RX_PROGRAM, &arp_from_peer(service));
    assert!(bed.neighbours().get(&Ipv4Key { addr: service }, 0).is_err());
    // Other senders are learned as before.
    bed.run_tc(RX_PROGRAM, &arp_from_peer(REMOTE_IP));
    assert_eq!(
        bed.neighbours()
            .get(&Ipv4Key { addr: REMOTE_IP }, 0)
            .unwrap()
            .addr,
        REMOTE_MAC
    );
}

#[test]
fn rx_drops_a_peer_frame_claiming_a_local_containers_mac() {
    require_root!();
    let mut bed = Bed::new();
    bed.add_endpoint(LOCAL_MAC);
    bed.add_endpoint(OTHER_LOCAL_MAC);
    // A peer sends "from" our local container: a broadcast ARP (which the bridge and the
    // neighbours would learn from), and unicast to the other local container.
    let frames = [
        arp_request(LOCAL_MAC, REMOTE_IP, LOCAL_IP),
        inner_frame(OTHER_LOCAL_MAC, LOCAL_MAC, REMOTE_IP, LOCAL_IP),
        inner_frame([0xff; 6], LOCAL_MAC, REMOTE_IP, [10, 2, 0, 255]),
    ];
    for inner in &frames {
        let frame = encapsulated(
            inner,
            PEER_UNDERLAY,
            OWN_UNDERLAY,
            vni::pack(PEER_ID, OWN_ID),
        );
        assert_eq!(bed.run_tc(RX_PROGRAM, &frame).0, TC_ACT_SHOT);
    }
    assert_eq!(bed.counter(Reason::RxDropLocalMac), 3);
    assert_eq!(bed.counter(Reason::RxDelivered), 0);
    assert_eq!(bed.counter(Reason::RxToBridge), 0);
    assert!(
        bed.remote_macs().get(&MacKey::new(LOCAL_MAC), 0).is_err(),
        "a local MAC must not be learned behind a peer"
    );
    assert!(
        bed.neighbours()
            .get(&Ipv4Key { addr: REMOTE_IP }, 0)
            .is_err(),
        "nor its claimed address"
    );
    // The local container's own frames still go where they should: a peer's MAC for it
    // would have turned this into an encapsulation towards the peer.
    let frame = inner_frame(OTHER_LOCAL_MAC, LOCAL_MAC, LOCAL_IP, [10, 2, 0, 3]);
    let (rc, _) = bed.run_tc(TX_PROGRAM, &frame);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(bed.counter(Reason::TxLocalDelivered), 1);
    assert_eq!(bed.counter(Reason::TxEncapsulated), 0);
    // The peer's real containers are learned as before.
    let inner = inner_frame(LOCAL_MAC, REMOTE_MAC, REMOTE_IP, LOCAL_IP);
    let frame = from_peer(&inner);
    assert_eq!(bed.run_tc(RX_PROGRAM, &frame).0, TC_ACT_REDIRECT);
    assert_eq!(
        bed.remote_macs()
            .get(&MacKey::new(REMOTE_MAC), 0)
            .unwrap()
            .peer_short_id,
        PEER_ID
    );
}

#[test]
fn tx_drops_a_frame_with_another_containers_source_mac() {
    require_root!();
    let mut bed = Bed::new();
    bed.learn_remote(REMOTE_MAC);
    bed.add_endpoint(OTHER_LOCAL_MAC);
    // The container behind LO_IFINDEX (LOCAL_MAC, LOCAL_IP) sends as another container
    // (local or remote) from its own address: unicast, broadcast ARP, to the bridge.
    for spoofed in [OTHER_LOCAL_MAC, REMOTE_MAC, [0x02, 0x42, 0, 0, 0, 9]] {
        let frame = inner_frame(REMOTE_MAC, spoofed, LOCAL_IP, REMOTE_IP);
        assert_eq!(bed.run_tc(TX_PROGRAM, &frame).0, TC_ACT_SHOT, "{spoofed:?}");
        let mut arp = arp_request(LOCAL_MAC, LOCAL_IP, REMOTE_IP);
        arp[6..12].copy_from_slice(&spoofed);
        assert_eq!(
            bed.run_tc(TX_PROGRAM, &arp).0,
            TC_ACT_SHOT,
            "ARP {spoofed:?}"
        );
    }
    assert_eq!(bed.counter(Reason::TxDropSpoofedMac), 6);
    assert_eq!(bed.counter(Reason::TxEncapsulated), 0);
    assert_eq!(bed.counter(Reason::TxToBridge), 0);
    // Its own MAC goes out as before.
    let frame = inner_frame(REMOTE_MAC, LOCAL_MAC, LOCAL_IP, REMOTE_IP);
    let (rc, out) = bed.run_tc(TX_PROGRAM, &frame);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(&out[OUTER_HLEN..], &frame[..]);
}

/// Logging of rare events (`--log-kernel`, aya-log): both ways the verifier accepts every
/// program; off (the level global 0 in the read-only data, as the router loads it without
/// the flag) the verifier drops the log statements, so the RX program is no bigger than the
/// programs without any logging would be and its hot path does no more.
#[test]
fn kernel_logging_loads_either_way_and_off_is_compiled_out() {
    require_root!();
    let rx_size = |level: u8| {
        let mut ebpf = aya::EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, true)
            .load(EBPF_OBJECT)
            .expect("load the object");
        for name in [TX_PROGRAM, RX_PROGRAM, EGRESS_PROGRAM, FROM_BRIDGE_PROGRAM] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load()
                .unwrap_or_else(|e| panic!("verifier rejected {name} (log level {level}): {e}"));
        }
        let x: &mut Xdp = ebpf.program_mut(XDP_PROGRAM).unwrap().try_into().unwrap();
        x.load().expect("verifier rejected xdp_admit");
        let rx: &mut SchedClassifier = ebpf.program_mut(RX_PROGRAM).unwrap().try_into().unwrap();
        rx.info().unwrap().size_translated().unwrap()
    };
    let off = rx_size(0);
    let on = rx_size(aya_log::Level::Trace as u8);
    println!("rx_from_underlay, translated: {off} bytes with logging off, {on} bytes on");
    assert!(
        off < on,
        "logging off should be compiled out: {off} vs {on} bytes"
    );
}

/// Pins the calling thread to CPU 0: the learning record is per CPU, and a test run executes
/// on the CPU of its caller.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity(0, …) applies to
    // the calling thread and reads only the set passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin to CPU 0"
        );
    }
}

/// A container frame from REMOTE (behind `peer` at `underlay`) to the local container.
/// `inner` as PEER_ID sends it to us: from its underlay address, VNI PEER_ID → OWN_ID.
fn from_peer(inner: &[u8]) -> Vec<u8> {
    encapsulated(
        inner,
        PEER_UNDERLAY,
        OWN_UNDERLAY,
        vni::pack(PEER_ID, OWN_ID),
    )
}

fn from_remote(peer: u16, underlay: [u8; 4]) -> Vec<u8> {
    let inner = inner_frame(LOCAL_MAC, REMOTE_MAC, REMOTE_IP, LOCAL_IP);
    encapsulated(&inner, underlay, OWN_UNDERLAY, vni::pack(peer, OWN_ID))
}

/// Learning writes nothing when the maps already hold what a frame would teach: entries
/// written with marks in their padding keep the marks (a rewrite would zero them).
#[test]
fn rx_learning_writes_nothing_when_nothing_changed() {
    require_root!();
    let mut bed = Bed::new();
    bed.add_endpoint(LOCAL_MAC);
    let marked = RemoteMac {
        peer_short_id: PEER_ID,
        _pad: [0xaa; 6],
    };
    bed.remote_macs()
        .insert(MacKey::new(REMOTE_MAC), marked, 0)
        .unwrap();
    let mac = MacKey {
        addr: REMOTE_MAC,
        _pad: [0xbb; 2],
    };
    bed.neighbours()
        .insert(Ipv4Key { addr: REMOTE_IP }, mac, 0)
        .unwrap();
    for _ in 0..3 {
        let (rc, _) = bed.run_tc(RX_PROGRAM, &from_remote(PEER_ID, PEER_UNDERLAY));
        assert_eq!(rc, TC_ACT_REDIRECT);
    }
    let key = MacKey::new(REMOTE_MAC);
    assert_eq!(bed.remote_macs().get(&key, 0).unwrap(), marked);
    let addr = Ipv4Key { addr: REMOTE_IP };
    assert_eq!(bed.neighbours().get(&addr, 0).unwrap(), mac);
}

/// A flow is learned once, not per packet: within a second of learning a source, this CPU
/// does not look it up again (an entry removed meanwhile stays away), after that it does; a
/// source that moved to another peer is learned at once.
#[test]
fn rx_learns_a_flow_once_a_second_and_a_move_at_once() {
    require_root!();
    pin_to_one_cpu();
    let mut bed = Bed::new();
    bed.add_endpoint(LOCAL_MAC);
    let key = MacKey::new(REMOTE_MAC);
    let learned_behind =
        |bed: &mut Bed| bed.remote_macs().get(&key, 0).ok().map(|r| r.peer_short_id);
    bed.run_tc(RX_PROGRAM, &from_remote(PEER_ID, PEER_UNDERLAY));
    assert_eq!(learned_behind(&mut bed), Some(PEER_ID));

    // The controller forgets it (as when the peer is lost): the flow's next frames within
    // the second are not looked up.
    bed.remote_macs().remove(&key).unwrap();
    bed.run_tc(RX_PROGRAM, &from_remote(PEER_ID, PEER_UNDERLAY));
    assert_eq!(
        learned_behind(&mut bed),
        None,
        "learned less than a second ago"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    bed.run_tc(RX_PROGRAM, &from_remote(PEER_ID, PEER_UNDERLAY));
    assert_eq!(
        learned_behind(&mut bed),
        Some(PEER_ID),
        "learned again after a second"
    );

    // The same source, now behind another peer: learned with its first frame.
    bed.peers()
        .set(
            FAR_ID as u32,
            PeerEntry {
                underlay_ipv4: FAR_UNDERLAY,
                flags: PEER_ADMIT | PEER_REACHABLE,
                next_hop: FAR_ID,
                underlay_mac: [0x02, 0xaa, 0, 0, 0, 3],
            },
            0,
        )
        .unwrap();
    let (rc, _) = bed.run_tc(RX_PROGRAM, &from_remote(FAR_ID, FAR_UNDERLAY));
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(
        learned_behind(&mut bed),
        Some(FAR_ID),
        "a move is learned at once"
    );
}
