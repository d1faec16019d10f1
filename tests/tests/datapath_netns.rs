//! The eBPF data path end to end, driven in process: two hosts of a [`TestBed`] (the flat
//! underlay), an `EbpfDatapath` in each (no router binary, no control plane: the test adds
//! the peers), one container namespace per host.
//!
//! Needs root; skipped otherwise. The namespaces are a test bed's (`<prefix>-h1`, ...,
//! behind `WEAVE_TEST_PREFIX`), the pins live under `/sys/fs/bpf/<prefix>`; both are removed
//! at the end, also on failure.
//! `cargo test -p weave-tests --test datapath_netns -- --test-threads=1`
//!
//! Throughput against the kernel's VXLAN and routing is measured by `cargo xtask bench`.

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TcAttachType};
use weave_ebpf_common::counters::Reason;
use weave_ebpf_common::vni;
use weave_router::datapath::ebpf::{self, EbpfDatapath};
use weave_router::datapath::{AttachRequest, Datapath, DatapathPeer, DatapathSettings, XdpMode};
use weave_router::mesh::peer_name::{PeerName, ShortId};
use weave_tests::cmd::{self, wait_for, Background, Output};
use weave_tests::{host_addr, require_root, Netns, TestBed};

/// Runs `args` inside `ns`; a non-zero exit is not an error.
fn exec(ns: &Netns, args: &[&str]) -> Output {
    ns.run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `args` inside `ns` and returns its stdout; panics if it fails.
fn sh(ns: &Netns, args: &[&str]) -> String {
    ns.check(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A directory under /sys/fs/bpf, removed when dropped.
struct PinRoot(PathBuf);

impl PinRoot {
    /// `/sys/fs/bpf/<name>`, empty (a leftover of an earlier run removed).
    fn new(name: &str) -> Self {
        ebpf::ensure_bpffs().unwrap();
        let dir = PathBuf::from(format!("/sys/fs/bpf/{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Job = Box<dyn FnOnce(Arc<EbpfDatapath>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// An `EbpfDatapath` running on its own thread inside a host namespace.
struct Router {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// Set to end the thread without `shutdown` (like a killed router).
    abandon: Arc<std::sync::atomic::AtomicBool>,
}

impl Router {
    fn start(host: &Netns, settings: DatapathSettings) -> Result<Self, String> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let path = host.path();
        let abandon = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let abandoned = abandon.clone();
        let thread = std::thread::spawn(move || {
            let f = File::open(&path).unwrap();
            // SAFETY: changes the network namespace of this thread only.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(format!("setns: {}", std::io::Error::last_os_error())));
                return;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let dp = match rt.block_on(ebpf::start(settings)) {
                Ok(dp) => Arc::new(dp),
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            while let Ok(job) = job_rx.recv() {
                rt.block_on(job(dp.clone()));
            }
            if abandoned.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            if let Err(e) = rt.block_on(dp.shutdown()) {
                eprintln!("shutdown: {e}");
            }
        });
        ready_rx
            .recv()
            .map_err(|_| "router thread died".to_string())??;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
            abandon,
        })
    }

    fn call<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Arc<EbpfDatapath>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |dp| {
            Box::pin(async move {
                let _ = tx.send(f(dp).await);
            })
        });
        self.jobs.as_ref().unwrap().send(job).unwrap();
        rx.recv().expect("router thread died")
    }

    /// Ends the router without shutting the data path down.
    fn abandon(self) {
        self.abandon
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn counter(&self, reason: Reason) -> u64 {
        self.call(move |dp| async move { dp.counter(reason).unwrap() })
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The underlay address of host `i` (0-based): the test bed's `eth0`.
fn underlay(i: usize) -> Ipv4Addr {
    host_addr(i + 1)
}

const CONTAINER: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 2, 1, 1), Ipv4Addr::new(10, 2, 1, 2)];
/// A second address on host 2's underlay, no peer's.
const STRAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);

fn short(i: usize) -> ShortId {
    ShortId::new(i as u16 + 1).unwrap()
}

/// Two hosts, each with a router and one attached container. Fields drop in order:
/// routers first, then the namespaces, then the pin directory.
struct Bed {
    routers: Vec<Router>,
    settings: Vec<DatapathSettings>,
    bed: TestBed,
    _pins: PinRoot,
}

/// Two hosts on the flat underlay (`eth0` = 198.18.0.<i>/24), and a pin directory
/// named after the bed.
fn hosts(prefix: &str) -> (TestBed, PinRoot) {
    let bed = TestBed::new(prefix, 2).expect("test bed");
    let pins = PinRoot::new(bed.prefix());
    (bed, pins)
}

impl Bed {
    /// Host `i` (0-based).
    fn host(&self, i: usize) -> &Netns {
        &self.bed.host(i + 1).ns
    }

    /// The container on host `i` (0-based).
    fn container(&self, i: usize) -> &Netns {
        &self.bed.container(i).ns
    }

    fn new(prefix: &str) -> Self {
        Self::with_xdp(prefix, XdpMode::Auto)
    }

    // Host i, container i and router i go together: indexing reads best.
    #[allow(clippy::needless_range_loop)]
    fn with_xdp(prefix: &str, xdp: XdpMode) -> Self {
        let (mut hosts, pins) = hosts(prefix);
        for i in 1..=2 {
            // Container i - 1 (0-based), on host i.
            hosts.add_container(i, "c").expect("container namespace");
        }
        let mut bed = Bed {
            routers: Vec::new(),
            settings: Vec::new(),
            bed: hosts,
            _pins: pins,
        };
        for i in 0..2 {
            let settings = DatapathSettings {
                peer_name: PeerName::from_bytes([0x0a, 0x77, 0, 0, 0, i as u8 + 1]),
                own_short_id: short(i),
                underlay_iface: "eth0".into(),
                underlay_addr: underlay(i),
                mtu: None,
                xdp,
                pin_root: bed._pins.0.clone(),
                programs: true,
                log_kernel: false,
            };
            bed.routers
                .push(Router::start(bed.host(i), settings.clone()).expect("start the data path"));
            bed.settings.push(settings);
        }
        for i in 0..2 {
            let other = 1 - i;
            // The router adds a peer once their control connection is up, and so its
            // underlay address resolved: the data path takes the peer's MAC from there.
            assert!(ping(bed.host(i), underlay(other)));
            let peer = DatapathPeer {
                short_id: short(other),
                underlay: underlay(other),
                next_hop: short(other),
            };
            bed.routers[i]
                .call(move |dp| async move { dp.add_peer(peer).await })
                .expect("add_peer");
            let own = short(i);
            bed.routers[i]
                .call(move |dp| async move { dp.set_broadcast_tree(own, vec![short(other)]).await })
                .expect("set_broadcast_tree");
            let request = AttachRequest {
                netns: bed.container(i).path(),
                addresses: vec![format!("{}/24", CONTAINER[i]).parse().unwrap()],
                owner: None,
                hand_over: false,
                ifname: None,
            };
            bed.routers[i]
                .call(move |dp| async move { dp.attach(request).await })
                .expect("attach");
        }
        bed
    }
}

fn ping(from: &Netns, to: Ipv4Addr) -> bool {
    exec(
        from,
        &["ping", "-c", "2", "-i", "0.2", "-W", "1", &to.to_string()],
    )
    .success()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends one UDP datagram with `python3` from inside a namespace.
fn send_udp(
    ns: &Netns,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    payload_hex: &str,
    broadcast: bool,
) {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,{b})\ns.bind(('{src}',0))\n\
         s.sendto(bytes.fromhex('{payload_hex}'),('{dst}',{port}))\n",
        b = broadcast as u8
    );
    sh(ns, &["python3", "-c", &script]);
}

/// From a second address on host 2's underlay: VXLAN claiming to be peer 2 (spoofed) and
/// VXLAN naming an unknown peer, both for peer 1.
fn send_strays(h2: &Netns) {
    let _ = exec(
        h2,
        &["ip", "addr", "add", &format!("{STRAY}/24"), "dev", "eth0"],
    );
    let mut inner = vec![0xff; 6];
    inner.extend_from_slice(&[0x02, 0x66, 0, 0, 0, 1, 0x08, 0x06]);
    inner.extend_from_slice(&[0; 28]);
    let vxlan = |id: u32| {
        let mut v = vec![
            0x08,
            0,
            0,
            0,
            (id >> 16) as u8,
            (id >> 8) as u8,
            id as u8,
            0,
        ];
        v.extend_from_slice(&inner);
        hex(&v)
    };
    send_udp(h2, STRAY, underlay(0), 6784, &vxlan(vni::pack(2, 1)), false);
    send_udp(
        h2,
        STRAY,
        underlay(0),
        6784,
        &vxlan(vni::pack(0x123, 1)),
        false,
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn two_hosts_end_to_end() {
    if !require_root("two_hosts_end_to_end") {
        return;
    }
    let bed = Bed::new("dp");
    let (h1, h2) = (bed.host(0), bed.host(1));
    let (c1, c2) = (bed.container(0), bed.container(1));
    let (r1, r2) = (&bed.routers[0], &bed.routers[1]);

    // Devices as designed: one port of the bridge towards the peers, whatever their number.
    let port = sh(h1, &["ip", "-d", "link", "show", ebpf::BRIDGE_PORT_NAME]);
    assert!(
        port.contains("master weave")
            && port.contains("isolated on")
            && port.contains("learning off"),
        "{port}"
    );
    let datapath_port = sh(h1, &["ip", "-d", "link", "show", ebpf::DATAPATH_PORT_NAME]);
    assert!(
        datapath_port.contains("state UP") && !datapath_port.contains("master"),
        "{datapath_port}"
    );
    assert!(!sh(h1, &["ip", "link", "show"]).contains("vxw-"));
    let ethwe = sh(c1, &["ip", "-d", "link", "show", "ethwe"]);
    assert!(
        ethwe.contains("mtu 1450") && ethwe.contains("state UP"),
        "{ethwe}"
    );
    assert!(sh(c1, &["ip", "addr", "show", "ethwe"]).contains("10.2.1.1/24"));
    assert!(sh(h1, &["ip", "link", "show", "weave"]).contains("mtu 1450"));
    // The bridge lends its ports room for the outer headers: a VXLAN port kept down, whose
    // headroom the kernel gives every port and passes on to the containers' ends.
    let headroom_port = sh(h1, &["ip", "-d", "link", "show", ebpf::HEADROOM_PORT_NAME]);
    assert!(
        headroom_port.contains("master weave")
            && headroom_port.contains("state DOWN")
            && headroom_port.contains("vxlan id 16777215"),
        "{headroom_port}"
    );
    let room = link_headroom(c1, "ethwe");
    assert!(
        room >= weave_ebpf_common::VXLAN_OVERHEAD as u16,
        "the container's stack leaves {room} bytes in front of its frames"
    );

    // Containers reach each other across the hosts; ARP resolves.
    assert!(ping(c1, CONTAINER[1]), "c1 → c2");
    assert!(ping(c2, CONTAINER[0]), "c2 → c1");
    let c2_mac = r2.call(|dp| async move { dp.endpoints()[0].mac });
    let neigh = sh(c1, &["ip", "neigh", "show", &CONTAINER[1].to_string()]);
    let mac_str = c2_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(
        neigh.contains(&mac_str),
        "c1 resolved c2 to {mac_str}: {neigh}"
    );
    // Unicast took the eBPF path both ways.
    assert!(r1.counter(Reason::TxEncapsulated) > 0);
    assert!(r2.counter(Reason::RxDelivered) > 0);
    assert!(r1
        .call(|dp| async move { dp.remote_macs() })
        .contains(&(c2_mac, 2)));

    // Once learned, ARP is answered on the host without crossing the underlay.
    sh(c1, &["ip", "neigh", "flush", "dev", "ethwe"]);
    let answered = r1.counter(Reason::TxArpAnswered);
    assert!(ping(c1, CONTAINER[1]), "c1 → c2 after a neighbour flush");
    assert!(
        r1.counter(Reason::TxArpAnswered) > answered,
        "ARP answered from NEIGHBOURS"
    );

    // A broadcast reaches the container on the other host.
    let mut rx = Background::spawn(&c2.wrap(&[
        "python3",
        "-c",
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(5)\n\
         s.bind(('0.0.0.0',9999))\nprint(s.recvfrom(100)[0].decode())\n",
    ]))
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        send_udp(
            c1,
            CONTAINER[0],
            Ipv4Addr::new(10, 2, 1, 255),
            9999,
            &hex(b"weave-broadcast"),
            true,
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for("the receiver to exit", Duration::from_secs(10), || {
        (!rx.running()).then_some(())
    })
    .unwrap();
    let out = rx.stop();
    assert!(
        out.stdout.contains("weave-broadcast"),
        "broadcast received: {out:?}"
    );
    assert!(r2.counter(Reason::RxToBridge) > 0);

    // Stray VXLAN on 6784 from an address that is no peer's: dropped and counted.
    let (spoofed, unknown) = (
        r1.counter(Reason::RxDropSpoofedSource),
        r1.counter(Reason::RxDropUnknownPeer),
    );
    send_strays(h2);
    wait_until("stray VXLAN counted", || {
        r1.counter(Reason::RxDropSpoofedSource) > spoofed
            && r1.counter(Reason::RxDropUnknownPeer) > unknown
    });
    assert!(
        !r1.call(|dp| async move { dp.remote_macs() })
            .iter()
            .any(|(m, _)| m[1] == 0x66),
        "nothing learned from strays"
    );

    // The maps carry BTF: bpftool shows field names.
    if Path::new("/usr/sbin/bpftool").exists() {
        let pin = r1.call(|dp| async move { dp.pin_dir().join("PEERS") });
        let out = cmd::check(&[
            "bpftool",
            "map",
            "lookup",
            "pinned",
            pin.to_str().unwrap(),
            "key",
            "2",
            "0",
            "0",
            "0",
        ])
        .unwrap();
        assert!(
            out.contains("\"underlay_ipv4\"") && out.contains("\"next_hop\": 2"),
            "{out}"
        );
    }

    // remove_peer forgets the peer: PEERS entry, learned MACs.
    r1.call(|dp| async move { dp.remove_peer(ShortId::new(2).unwrap()).await })
        .expect("remove_peer");
    let entry = r1.call(|dp| async move { dp.peer_entry(ShortId::new(2).unwrap()).unwrap() });
    assert_eq!(entry.flags, 0);
    assert!(!r1
        .call(|dp| async move { dp.remote_macs() })
        .iter()
        .any(|(_, p)| *p == 2));
    assert!(
        !ping(c2, CONTAINER[0]),
        "traffic from a removed peer is dropped"
    );
    assert!(r1.counter(Reason::RxDropUnknownPeer) > unknown + 1);

    // Detach takes the interface back.
    let ep = r1.call({
        let p = c1.path();
        move |dp| async move { dp.detach(p).await }
    });
    let ep = ep.expect("detach");
    assert!(!exec(c1, &["ip", "link", "show", "ethwe"]).success());
    assert!(!exec(h1, &["ip", "link", "show", &ep.host_ifname]).success());
    assert!(r1.call(|dp| async move { dp.endpoints() }).is_empty());
}

#[test]
fn a_restarted_router_takes_its_endpoints_back() {
    if !require_root("a_restarted_router_takes_its_endpoints_back") {
        return;
    }
    let mut bed = Bed::new("dprs");
    assert!(ping(bed.container(0), CONTAINER[1]));
    let endpoints = bed.routers[0].call(|dp| async move { dp.endpoints() });
    let endpoints_names: Vec<String> = endpoints.iter().map(|e| e.host_ifname.clone()).collect();
    // Stop router 1 without shutting down (as a crash would): its pinned links keep the
    // programs attached, its pinned maps stay.
    bed.routers.remove(0).abandon();
    let old_pin = bed
        ._pins
        .0
        .join(bed.settings[0].peer_name.to_string())
        .join("links/rx-eth0");
    assert!(old_pin.exists(), "{}", old_pin.display());
    let router = Router::start(bed.host(0), bed.settings[0].clone()).expect("restart");
    let peer = DatapathPeer {
        short_id: short(1),
        underlay: underlay(1),
        next_hop: short(1),
    };
    router
        .call(move |dp| async move { dp.add_peer(peer).await })
        .expect("add_peer");
    router
        .call(move |dp| async move { dp.set_broadcast_tree(short(0), vec![short(1)]).await })
        .expect("set_broadcast_tree");
    for ep in endpoints {
        router
            .call(move |dp| async move { dp.restore_endpoint(ep).await })
            .expect("restore");
    }
    assert!(
        ping(bed.container(0), CONTAINER[1]),
        "c1 → c2 after the restart"
    );
    assert!(
        router.counter(Reason::TxEncapsulated) > 0,
        "the new TX program carries it"
    );
    // One program per attachment point: the old links went with their pins.
    let host_if = endpoints_names.clone();
    let attached = router.call(move |_| async move {
        let count = |dev: &str, hook: TcAttachType| {
            SchedClassifier::query_tcx(dev, hook)
                .map(|(_, progs)| progs.len())
                .unwrap_or(99)
        };
        (
            count("eth0", TcAttachType::Ingress),
            host_if
                .iter()
                .map(|n| count(n, TcAttachType::Ingress))
                .collect::<Vec<_>>(),
            host_if
                .iter()
                .map(|n| count(n, TcAttachType::Egress))
                .collect::<Vec<_>>(),
        )
    });
    assert_eq!(
        attached,
        (1, vec![1], vec![1]),
        "TX and the egress check, once each"
    );
    // A gone interface is reported as such.
    let gone = weave_router::datapath::Endpoint {
        netns: bed.container(1).path(),
        host_ifname: "vethwe-gone".into(),
        mac: [2, 0, 0, 0, 0, 9],
        addresses: vec![],
        owner: None,
    };
    let err = router.call(move |dp| async move { dp.restore_endpoint(gone).await });
    assert!(matches!(
        err,
        Err(weave_router::datapath::DatapathError::NoSuchEndpoint(_))
    ));
    bed.routers.insert(0, router);
}

#[test]
fn a_stopped_router_carries_nothing() {
    if !require_root("a_stopped_router_carries_nothing") {
        return;
    }
    let mut bed = Bed::new("dpst");
    assert!(ping(bed.container(0), CONTAINER[1]));
    assert!(ping(bed.container(1), CONTAINER[0]));
    // Router 2 shuts down; router 1 forgets it.
    drop(bed.routers.remove(1));
    let links = sh(bed.host(1), &["ip", "-d", "link", "show"]);
    assert!(!links.contains(ebpf::DATAPATH_PORT_NAME), "{links}");
    assert!(
        links.contains("ethwe") || links.contains("vethwe"),
        "the container interface stays"
    );
    bed.routers[0]
        .call(|dp| async move { dp.remove_peer(ShortId::new(2).unwrap()).await })
        .expect("remove_peer");
    assert!(
        !ping(bed.container(0), CONTAINER[1]),
        "c1 → c2 with router 2 stopped"
    );
    assert!(
        !ping(bed.container(1), CONTAINER[0]),
        "c2 → c1 with router 2 stopped"
    );
}

/// The room the kernel leaves in front of the frames sent through `dev` in `ns`.
fn link_headroom(ns: &Netns, dev: &'static str) -> u16 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let link = runtime
        .block_on(weave_router::datapath::netlink::in_netns(
            &ns.path(),
            move |nl| async move { nl.link_by_name(dev).await },
        ))
        .expect("netlink")
        .expect("the link");
    link.headroom.expect("the kernel tells the headroom")
}

/// The MAC of `dev` in `ns`.
fn mac_of(ns: &Netns, dev: &str) -> [u8; 6] {
    let text = weave_tests::probe::link_mac(ns, dev).expect("link MAC");
    weave_tests::probe::parse_mac(&text).expect("six hex bytes")
}

/// The MAC the PEERS entry of `short_id` sends to (the next hop's on the underlay).
fn next_hop_mac(router: &Router, short_id: u16) -> [u8; 6] {
    router.call(move |dp| async move {
        dp.peer_entry(ShortId::new(short_id).unwrap())
            .expect("PEERS entry")
            .underlay_mac
    })
}

#[test]
fn next_hops_follow_the_neighbour_table_and_routes_as_the_kernel_announces_them() {
    if !require_root("next_hops_follow_the_neighbour_table_and_routes_as_the_kernel_announces_them")
    {
        return;
    }
    let bed = Bed::new("dpnh");
    let (h1, r1) = (bed.host(0), &bed.routers[0]);
    let h2_mac = mac_of(bed.host(1), "eth0");
    // Two more direct peers in another subnet, routed through host 2 as their gateway.
    sh(
        h1,
        &[
            "ip",
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            &underlay(1).to_string(),
        ],
    );
    for id in [3u16, 4] {
        let peer = DatapathPeer {
            short_id: ShortId::new(id).unwrap(),
            underlay: Ipv4Addr::new(203, 0, 113, id as u8),
            next_hop: ShortId::new(id).unwrap(),
        };
        r1.call(move |dp| async move { dp.add_peer(peer).await })
            .expect("add_peer behind the gateway");
    }
    for id in [2, 3, 4] {
        assert_eq!(next_hop_mac(r1, id), h2_mac, "peer {id} at first");
    }
    // What one refresh does: with nothing announced, a sweep looks up fewer peers than
    // these three, so only what the kernel announced moves them all at once.
    let settle_and_refresh = || {
        std::thread::sleep(Duration::from_millis(500));
        r1.call(|dp| async move { dp.refresh_next_hops().await });
    };

    // The gateway's address moves to another box (a failover): the neighbour table takes
    // its new MAC, and every peer behind it follows.
    let moved = "02:00:5e:00:01:99";
    let moved_bytes = [0x02, 0x00, 0x5e, 0x00, 0x01, 0x99];
    let gateway = underlay(1).to_string();
    sh(
        h1,
        &[
            "ip",
            "neigh",
            "replace",
            &gateway,
            "lladdr",
            moved,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    settle_and_refresh();
    for id in [2, 3, 4] {
        assert_eq!(
            next_hop_mac(r1, id),
            moved_bytes,
            "peer {id} after the neighbour moved"
        );
    }

    // The route to the other subnet now goes through another gateway: the peers behind
    // it follow; host 2 itself stays where it is.
    let other = "198.18.0.50";
    let other_mac = "02:00:5e:00:01:50";
    sh(
        h1,
        &[
            "ip",
            "neigh",
            "replace",
            other,
            "lladdr",
            other_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    sh(
        h1,
        &["ip", "route", "replace", "203.0.113.0/24", "via", other],
    );
    settle_and_refresh();
    assert_eq!(
        next_hop_mac(r1, 2),
        moved_bytes,
        "host 2 keeps its next hop"
    );
    for id in [3, 4] {
        assert_eq!(
            next_hop_mac(r1, id),
            [0x02, 0x00, 0x5e, 0x00, 0x01, 0x50],
            "peer {id} after the route changed"
        );
    }
}

#[test]
fn xdp_on_drops_strays_before_tc() {
    if !require_root("xdp_on_drops_strays_before_tc") {
        return;
    }
    let bed = Bed::with_xdp("dpxdp", XdpMode::On);
    let r1 = &bed.routers[0];
    assert!(r1.call(|dp| async move { dp.xdp_attached() }));
    assert!(sh(bed.host(0), &["ip", "link", "show", "eth0"]).contains("xdp"));
    assert!(
        ping(bed.container(0), CONTAINER[1]),
        "traffic still flows with XDP"
    );
    send_strays(bed.host(1));
    wait_until("strays dropped by XDP", || {
        r1.counter(Reason::XdpDropSpoofedSource) == 1 && r1.counter(Reason::XdpDropUnknownPeer) == 1
    });
    assert_eq!(
        r1.counter(Reason::RxDropSpoofedSource) + r1.counter(Reason::RxDropUnknownPeer),
        0
    );
}

#[test]
fn bad_requests_fail_cleanly() {
    if !require_root("bad_requests_fail_cleanly") {
        return;
    }
    let (bed, pins) = hosts("dpbad");
    let h1 = &bed.host(1).ns;
    let mut settings = DatapathSettings {
        peer_name: PeerName::from_bytes([0x0a, 0x78, 0, 0, 0, 1]),
        own_short_id: short(0),
        underlay_iface: "nonexistent0".into(),
        underlay_addr: underlay(0),
        mtu: None,
        xdp: XdpMode::Off,
        pin_root: pins.0.clone(),
        programs: true,
        log_kernel: false,
    };
    let err = Router::start(h1, settings.clone())
        .err()
        .expect("unknown underlay fails");
    assert_eq!(err, "interface nonexistent0 not found");
    settings.underlay_iface = "eth0".into();
    let r = Router::start(h1, settings.clone()).expect("start");
    for (netns, says) in [
        (
            "/nonexistent/netns",
            "network namespace /nonexistent/netns:",
        ),
        ("/etc/hostname", "not a network namespace"),
    ] {
        let err = r
            .call(move |dp| async move {
                dp.attach(AttachRequest {
                    netns: netns.into(),
                    addresses: vec![],
                    owner: None,
                    hand_over: false,
                    ifname: None,
                })
                .await
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{err}");
    }
    let links = sh(h1, &["ip", "-o", "link", "show"]);
    let container_veths: Vec<&str> = links
        .lines()
        .filter(|l| l.contains("vethw"))
        .filter(|l| {
            ![
                ebpf::BRIDGE_PORT_NAME,
                ebpf::DATAPATH_PORT_NAME,
                ebpf::HEADROOM_PORT_NAME,
            ]
            .iter()
            .any(|own| l.contains(own))
        })
        .collect();
    assert!(
        container_veths.is_empty(),
        "nothing left behind: {container_veths:?}"
    );
    // A second start with the same name replaces the first one's pins and links.
    drop(r);
    let r = Router::start(h1, settings).expect("restart");
    let pin_dir = r.call(|dp| async move { dp.pin_dir().to_path_buf() });
    assert!(pin_dir.join("links").join("rx-eth0").exists());
    assert!(Path::new(&pin_dir).join("PEERS").exists());
    drop(r);
    assert!(!pin_dir.exists(), "shutdown removes the pins");
    drop(bed);
}
