//! The real data path: the aya programs of `weave-ebpf` (embedded in the binary), their
//! pinned maps and links, the `weave` bridge, its port towards the peers and container veths.
//!
//! Every method must run on a thread in the router's network namespace (normally the whole
//! process lives there): interface names are resolved in the caller's namespace. Work
//! inside container namespaces runs on dedicated threads (see [`netlink::in_netns`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{SchedClassifier, TcAttachType, Xdp};
use aya::{Ebpf, EbpfLoader};
use weave_ebpf_common::counters::Reason;
use weave_ebpf_common::maps::{
    BroadcastTree, Counter, DatapathConfig, EndpointAddress, EndpointAddresses, IfindexKey,
    Ipv4Key, LocalEndpoint, MacKey, NeighbourPeer, PeerCounter, PeerEntry, RemoteMac, ALL_MAPS,
    BROADCAST_TREES_MAP, CONFIG_MAP, CONFIG_READY, COUNTERS_MAP, ENDPOINTS_MAP,
    ENDPOINT_ADDRESSES_MAP, MAX_BROADCAST_CHILDREN, MAX_ENDPOINT_ADDRESSES, NEIGHBOURS_MAP,
    NEIGHBOUR_PEERS_MAP, PEERS_MAP, PEER_ADMIT, PEER_COUNTERS_MAP, PEER_REACHABLE, REMOTE_MACS_MAP,
};
use weave_ebpf_common::VXLAN_OVERHEAD;

use super::netlink::{self, LinkChange, LinkInfo, Netlink};
use super::{
    AttachRequest, Datapath, DatapathCounters, DatapathError, DatapathPeer, DatapathSettings,
    Endpoint, Ipv4Cidr, PeerTraffic, XdpMode,
};
use crate::mesh::peer_name::ShortId;

/// The compiled kernel programs (`weave-ebpf`), built by `build.rs`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weave-ebpf.o"));

/// Program names in [`EBPF_OBJECT`].
pub const TX_PROGRAM: &str = "tx_from_container";
/// tcx ingress of [`DATAPATH_PORT_NAME`]: what the bridge sends towards the peers.
pub const FROM_BRIDGE_PROGRAM: &str = "from_bridge";
pub const RX_PROGRAM: &str = "rx_from_underlay";
pub const XDP_PROGRAM: &str = "xdp_admit";
/// tcx egress of container veths: subnet isolation of what the bridge delivers.
pub const EGRESS_PROGRAM: &str = "to_container";

/// Name of the bridge the containers and the VXLAN devices are ports of.
pub const BRIDGE_NAME: &str = "weave";
/// Name of the container end of a veth, inside its namespace.
pub const CONTAINER_IFNAME: &str = "ethwe";
/// Prefix of the host end of container veths.
pub const HOST_VETH_PREFIX: &str = "vethwe";
/// Prefix of the container end of a veth left in the host for Docker to move.
pub const HANDOVER_VETH_PREFIX: &str = "vethwp";

/// The name of the container end of a handed-over veth, from its host end's.
pub fn handover_name(host_ifname: &str) -> String {
    let suffix = host_ifname
        .strip_prefix(HOST_VETH_PREFIX)
        .unwrap_or(host_ifname);
    format!("{HANDOVER_VETH_PREFIX}{suffix}")
}
/// Prefix of the per-peer VXLAN devices of earlier versions (removed at start).
pub const VXLAN_PREFIX: &str = "vxw-";
/// The bridge's port towards the peers: one end of a veth pair, an isolated port without
/// learning. What the programs leave to the bridge from the underlay enters here.
pub const BRIDGE_PORT_NAME: &str = "vethwe-bridge";
/// The other end of that pair, outside the bridge: what the bridge floods or forwards
/// towards the peers arrives here, where [`FROM_BRIDGE_PROGRAM`] encapsulates it.
pub const DATAPATH_PORT_NAME: &str = "vethwe-datapath";
/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn bpf_err(what: impl std::fmt::Display) -> impl FnOnce(String) -> DatapathError {
    move |e| DatapathError::Bpf(format!("{what}: {}", e.lines().next().unwrap_or("").trim()))
}

/// One line from aya's errors (verifier logs are long; the first line says what failed).
fn one_line(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    let first = s.lines().next().unwrap_or("").trim().to_string();
    // A verifier rejection ends in the reason: keep the last meaningful line too.
    match s.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(last) if s.lines().count() > 1 => format!("{first} … {}", last.trim()),
        _ => first,
    }
}

/// Checks that this process may use BPF at all: creates (and closes) a one-entry array map,
/// the least the programs need. The error (EPERM without the privilege) says why not.
pub fn probe_bpf() -> std::io::Result<()> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // The head of `union bpf_attr` for BPF_MAP_CREATE (type, key size, value size, entries),
    // the rest zero.
    let mut attr = [0u32; 16];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_ARRAY, 4, 4, 1]);
    // SAFETY: bpf(2) reads `size` bytes of `attr`, which lives for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the call just returned, closed once.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf unless it is mounted there already.
pub fn ensure_bpffs() -> Result<(), DatapathError> {
    let path = CString::new(BPFFS).expect("no NUL");
    // SAFETY: statfs writes into a zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let _ = std::fs::create_dir_all(BPFFS);
    let fstype = CString::new("bpf").expect("no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DatapathError::Bpf(format!(
            "bpffs is not mounted at {BPFFS} and mounting it failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

struct Maps {
    config: Array<MapData, DatapathConfig>,
    peers: Array<MapData, PeerEntry>,
    endpoints: HashMap<MapData, MacKey, LocalEndpoint>,
    remote_macs: HashMap<MapData, MacKey, RemoteMac>,
    neighbours: HashMap<MapData, Ipv4Key, MacKey>,
    counters: PerCpuArray<MapData, Counter>,
    peer_counters: PerCpuArray<MapData, PeerCounter>,
    neighbour_peers: HashMap<MapData, Ipv4Key, NeighbourPeer>,
    broadcast_trees: HashMap<MapData, u32, BroadcastTree>,
    endpoint_addresses: HashMap<MapData, IfindexKey, EndpointAddresses>,
}

/// The kernel programs, their maps and their links.
struct Programs {
    ebpf: Ebpf,
    maps: Maps,
    /// Pinned links by pin file name (`rx-<dev>`, `xdp-<dev>`, `tx-<host veth>`).
    links: BTreeMap<String, PinnedLink>,
}

struct State {
    /// `None` when started without them ([`DatapathSettings::programs`]).
    programs: Option<Programs>,
    endpoints: Vec<Endpoint>,
    /// Short IDs ever added in this run (counters are reported for them).
    peers_seen: BTreeSet<u16>,
    /// Directly connected peers (carried by the fast path, or admitted only while the
    /// sleeve carries them): their underlay address and the MAC
    /// of the next hop towards it now in `PEERS` (kept current by
    /// [`Datapath::refresh_next_hops`]).
    direct: BTreeMap<u16, (Ipv4Addr, [u8; 6])>,
    /// Direct peers the host has no route to through the underlay now (said once).
    no_route: BTreeSet<u16>,
    /// Host addresses on the bridge given by `expose`.
    exposed: Vec<super::Ipv4Cidr>,
}

impl State {
    /// The kernel programs, or an error saying they are not loaded.
    fn programs(&mut self) -> Result<&mut Programs, DatapathError> {
        self.programs
            .as_mut()
            .ok_or_else(|| DatapathError::Bpf("the kernel programs are not loaded".into()))
    }
}

/// The main routing table.
const MAIN_TABLE: u32 = 254;

/// Routing table holding the way back from the service address to the containers (over
/// the bridge), and the priority of the rule that selects it for that source address.
pub const SERVICE_TABLE: u32 = 6783;
pub const SERVICE_RULE_PRIORITY: u32 = 6783;

/// The subnets of exposed addresses, without repeats.
fn exposed_subnets(exposed: &[super::Ipv4Cidr]) -> Vec<crate::ipam::cidr::Cidr> {
    let mut subnets: Vec<crate::ipam::cidr::Cidr> = exposed
        .iter()
        .map(|a| crate::ipam::cidr::Cidr::of(*a))
        .collect();
    subnets.sort();
    subnets.dedup();
    subnets
}

/// The eBPF data path of one router.
pub struct EbpfDatapath {
    settings: DatapathSettings,
    /// Our short ID now (it changes after a clash; `settings` keeps the one we started with).
    own_short_id: std::sync::atomic::AtomicU16,
    pin_dir: PathBuf,
    /// The MTU containers get now: at most `max_container_mtu`, lowered to what the paths
    /// to the peers carry ([`Datapath::set_container_mtu`]).
    container_mtu: std::sync::atomic::AtomicU32,
    /// The MTU given (`--mtu`) or the underlay's less the VXLAN overhead; the bridge's port
    /// towards the peers keeps it (heartbeats and probes of every size go through it).
    max_container_mtu: u32,
    /// Writes heartbeats and probes into the bridge's port towards the peers.
    heartbeat_port: Option<super::packet_socket::PacketSocket>,
    underlay: LinkInfo,
    bridge_index: u32,
    xdp_attached: bool,
    nl: Netlink,
    state: Mutex<State>,
    /// The local service address on the bridge (the DNS server's) and the bridge's MAC.
    service: std::sync::OnceLock<(Ipv4Addr, [u8; 6])>,
    /// The short ID [`Datapath::refresh_next_hops`] goes on from.
    refresh_cursor: std::sync::atomic::AtomicU16,
}

/// The smallest MTU containers are given, whatever the paths carry (IPv4's minimum).
pub const MIN_CONTAINER_MTU: u32 = 576;

/// How many direct peers' next hops one [`Datapath::refresh_next_hops`] looks up.
const NEXT_HOPS_PER_REFRESH: usize = 16;

/// Starts the data path: bpffs, the bridge, the programs and maps (pinned under
/// `<pin_root>/<peer name>/`), RX (and XDP, per the mode) on the underlay. Leftovers of an
/// earlier run with the same peer name (links, pins, VXLAN devices) are removed first.
pub async fn start(settings: DatapathSettings) -> Result<EbpfDatapath, DatapathError> {
    EbpfDatapath::start(settings).await
}

impl EbpfDatapath {
    fn mtu_now(&self) -> u32 {
        self.container_mtu.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The host end of a container veth as a port of the weave bridge: MTU, enslaved, up.
    async fn make_bridge_port(&self, index: u32) -> Result<(), DatapathError> {
        let change = LinkChange {
            mtu: Some(self.mtu_now()),
            controller: Some(self.bridge_index),
            up: true,
            ..Default::default()
        };
        self.nl.set_link(index, change).await
    }

    pub async fn start(settings: DatapathSettings) -> Result<Self, DatapathError> {
        let pin_dir = settings.pin_root.join(settings.peer_name.to_string());
        if settings.programs {
            ensure_bpffs()?;
            remove_pins(&pin_dir);
            std::fs::create_dir_all(pin_dir.join("links")).map_err(|e| {
                DatapathError::Bpf(format!(
                    "cannot create pin directory {}: {e}",
                    pin_dir.display()
                ))
            })?;
        }

        let nl = Netlink::connect_on_own_thread()?;
        let underlay = nl
            .link_by_name(&settings.underlay_iface)
            .await?
            .ok_or_else(|| DatapathError::NoSuchInterface(settings.underlay_iface.clone()))?;
        let container_mtu = match settings.mtu {
            Some(m) => m,
            None => underlay
                .mtu
                .checked_sub(VXLAN_OVERHEAD)
                .filter(|m| *m >= 576)
                .ok_or_else(|| {
                    DatapathError::Netlink(format!(
                        "underlay {} has MTU {}, too small for VXLAN",
                        underlay.name, underlay.mtu
                    ))
                })?,
        };
        for link in nl.links().await? {
            if link.name.starts_with(VXLAN_PREFIX) {
                nl.del_link(link.index).await?;
            }
        }
        let bridge = nl.ensure_bridge(BRIDGE_NAME, container_mtu).await?;

        let (programs, xdp_attached, heartbeat_port) = if settings.programs {
            let bridge_port = create_bridge_port(&nl, bridge.index, container_mtu).await?;
            let heartbeat_port = super::packet_socket::PacketSocket::open(
                bridge_port,
                weave_ebpf_common::heartbeat::HEARTBEAT_ETHERTYPE,
            )
            .map_err(|e| {
                tracing::warn!("no fast-path heartbeats or path-MTU probes: cannot open a packet socket on {BRIDGE_PORT_NAME}: {e}");
            })
            .ok();
            match Self::load(&settings, &pin_dir, &underlay, bridge_port) {
                Ok((programs, xdp)) => (Some(programs), xdp, heartbeat_port),
                Err(e) => {
                    remove_pins(&pin_dir);
                    return Err(e);
                }
            }
        } else {
            (None, false, None)
        };
        let state = State {
            programs,
            endpoints: Vec::new(),
            peers_seen: BTreeSet::new(),
            direct: BTreeMap::new(),
            no_route: BTreeSet::new(),
            exposed: Vec::new(),
        };
        Ok(Self {
            own_short_id: std::sync::atomic::AtomicU16::new(settings.own_short_id.get()),
            settings,
            pin_dir,
            container_mtu: std::sync::atomic::AtomicU32::new(container_mtu),
            max_container_mtu: container_mtu,
            heartbeat_port,
            underlay,
            bridge_index: bridge.index,
            xdp_attached,
            nl,
            state: Mutex::new(state),
            service: std::sync::OnceLock::new(),
            refresh_cursor: std::sync::atomic::AtomicU16::new(0),
        })
    }

    fn load(
        settings: &DatapathSettings,
        pin_dir: &Path,
        underlay: &LinkInfo,
        bridge_port: u32,
    ) -> Result<(Programs, bool), DatapathError> {
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = ALL_MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| DatapathError::Bpf(format!("loading the programs: {}", one_line(&e))))?;

        let mut maps = take_maps(&mut ebpf)?;
        maps.config
            .set(
                0,
                DatapathConfig {
                    underlay_ipv4: settings.underlay_addr.octets(),
                    underlay_ifindex: underlay.index,
                    own_short_id: settings.own_short_id.get(),
                    flags: CONFIG_READY,
                    underlay_mac: underlay.mac,
                    _pad: [0; 2],
                    service_ipv4: [0; 4],
                    bridge_port_ifindex: bridge_port,
                },
                0,
            )
            .map_err(|e| bpf_err("writing CONFIG")(e.to_string()))?;

        for name in [TX_PROGRAM, RX_PROGRAM, EGRESS_PROGRAM, FROM_BRIDGE_PROGRAM] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|e| DatapathError::Bpf(format!("loading {name}: {}", one_line(&e))))?;
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or_else(|| DatapathError::Bpf(format!("program {XDP_PROGRAM} missing")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| bpf_err(XDP_PROGRAM)(e.to_string()))?;
        xdp.load()
            .map_err(|e| DatapathError::Bpf(format!("loading {XDP_PROGRAM}: {}", one_line(&e))))?;

        let mut state = Programs {
            ebpf,
            maps,
            links: BTreeMap::new(),
        };
        let links_dir = pin_dir.join("links");
        let rx_pin = format!("rx-{}", underlay.name);
        let link = attach_tc(
            &mut state.ebpf,
            RX_PROGRAM,
            &underlay.name,
            TcAttachType::Ingress,
            &links_dir.join(&rx_pin),
        )?;
        state.links.insert(rx_pin, link);
        let from_bridge_pin = format!("from-bridge-{DATAPATH_PORT_NAME}");
        let link = attach_tc(
            &mut state.ebpf,
            FROM_BRIDGE_PROGRAM,
            DATAPATH_PORT_NAME,
            TcAttachType::Ingress,
            &links_dir.join(&from_bridge_pin),
        )?;
        state.links.insert(from_bridge_pin, link);

        let want_xdp = match settings.xdp {
            XdpMode::On => true,
            XdpMode::Off => false,
            // A physical NIC has a bus device behind it (what /sys/class/net/<dev>/device
            // links to); asked over netlink because /sys may show another namespace.
            XdpMode::Auto => underlay.parent_dev.is_some(),
        };
        if want_xdp {
            let xdp_pin = format!("xdp-{}", underlay.name);
            let prog: &mut Xdp = state
                .ebpf
                .program_mut(XDP_PROGRAM)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| DatapathError::Bpf(format!("program {XDP_PROGRAM} missing")))?;
            let id = prog
                .attach_to_if_index(underlay.index, aya::programs::XdpMode::Default)
                .map_err(|e| {
                    DatapathError::Bpf(format!(
                        "attaching XDP to {}: {}",
                        underlay.name,
                        one_line(&e)
                    ))
                })?;
            let link = prog
                .take_link(id)
                .map_err(|e| bpf_err("XDP link")(e.to_string()))?;
            let fd: FdLink = link
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| {
                    bpf_err(format!("XDP on {} is not a bpf link", underlay.name))(e.to_string())
                })?;
            let pinned = fd
                .pin(links_dir.join(&xdp_pin))
                .map_err(|e| bpf_err("pinning the XDP link")(e.to_string()))?;
            state.links.insert(xdp_pin, pinned);
        }
        Ok((state, want_xdp))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Directory holding this router's pinned maps and links.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Whether the XDP admission filter is attached to the underlay.
    pub fn xdp_attached(&self) -> bool {
        self.xdp_attached
    }

    /// ifindex of the `weave` bridge.
    pub fn bridge_index(&self) -> u32 {
        self.bridge_index
    }

    /// The settings the data path was started with.
    pub fn settings(&self) -> &DatapathSettings {
        &self.settings
    }

    /// MACs learned behind peers (`REMOTE_MACS`): (MAC, peer short ID).
    pub fn remote_macs(&self) -> Vec<([u8; 6], u16)> {
        let mut guard = self.lock();
        let Some(st) = guard.programs.as_mut() else {
            return Vec::new();
        };
        st.maps
            .remote_macs
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k.addr, v.peer_short_id))
            .collect()
    }

    /// IPv4 → MAC entries of `NEIGHBOURS`.
    pub fn neighbours(&self) -> Vec<(Ipv4Addr, [u8; 6])> {
        let mut guard = self.lock();
        let Some(st) = guard.programs.as_mut() else {
            return Vec::new();
        };
        st.maps
            .neighbours
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (Ipv4Addr::from(k.addr), v.addr))
            .collect()
    }

    /// The `PEERS` entry of a short ID (all zero when absent).
    pub fn peer_entry(&self, short_id: ShortId) -> Result<PeerEntry, DatapathError> {
        let mut guard = self.lock();
        let st = guard.programs()?;
        st.maps
            .peers
            .get(&(short_id.get() as u32), 0)
            .map_err(|e| bpf_err("reading PEERS")(e.to_string()))
    }

    /// Packets counted for one reason, summed over CPUs.
    pub fn counter(&self, reason: Reason) -> Result<u64, DatapathError> {
        let mut guard = self.lock();
        let st = guard.programs()?;
        let v = st
            .maps
            .counters
            .get(&(reason as u32), 0)
            .map_err(|e| bpf_err("reading COUNTERS")(e.to_string()))?;
        Ok(v.iter().map(|c| c.packets).sum())
    }

    async fn attach_inner(
        &self,
        request: &AttachRequest,
        suffix: &str,
    ) -> Result<Endpoint, DatapathError> {
        let host_name = format!("{HOST_VETH_PREFIX}{suffix}");
        let temp_name = format!("vethwc{suffix}");
        self.nl.add_veth(&host_name, &temp_name).await?;
        let host = self
            .nl
            .link_by_name(&host_name)
            .await?
            .ok_or_else(|| DatapathError::Netlink(format!("veth {host_name} vanished")))?;
        let result: Result<Endpoint, DatapathError> = async {
            let temp = self
                .nl
                .link_by_name(&temp_name)
                .await?
                .ok_or_else(|| DatapathError::Netlink(format!("veth {temp_name} vanished")))?;
            if request.hand_over {
                return self.hand_over(request, &host, &temp_name).await;
            }
            let ns = netlink::open_netns(&request.netns)?;
            self.nl.move_to_netns(temp.index, ns.as_raw_fd()).await?;
            drop(ns);
            let mtu = self.mtu_now();
            let addresses = request.addresses.clone();
            let service = self.service.get().map(|s| s.0);
            let mac = netlink::in_netns(&request.netns, move |nl| async move {
                let link = nl.link_by_name(&temp_name).await?.ok_or_else(|| {
                    DatapathError::Netlink(format!("{temp_name} did not arrive in the namespace"))
                })?;
                nl.set_link(
                    link.index,
                    LinkChange {
                        name: Some(CONTAINER_IFNAME.into()),
                        mtu: Some(mtu),
                        ..Default::default()
                    },
                )
                .await?;
                for a in addresses {
                    nl.add_address(link.index, a).await?;
                }
                nl.set_link(
                    link.index,
                    LinkChange {
                        up: true,
                        ..Default::default()
                    },
                )
                .await?;
                if let Some(service) = service {
                    nl.replace_device_route(service, 32, link.index, MAIN_TABLE)
                        .await?;
                }
                if let Some(lo) = nl.link_by_name("lo").await? {
                    nl.set_link(
                        lo.index,
                        LinkChange {
                            up: true,
                            ..Default::default()
                        },
                    )
                    .await?;
                }
                Ok(link.mac)
            })
            .await?;
            self.make_bridge_port(host.index).await?;
            let endpoint = Endpoint {
                netns: request.netns.clone(),
                host_ifname: host_name.clone(),
                mac,
                addresses: request.addresses.clone(),
                owner: request.owner.clone(),
            };
            self.take_up(&endpoint, host.index)?;
            self.service_neighbours(&endpoint, true).await?;
            let addrs: Vec<Ipv4Addr> = endpoint.addresses.iter().map(|a| a.addr).collect();
            let garp = netlink::in_netns(&request.netns, move |nl| async move {
                if let Some(l) = nl.link_by_name(CONTAINER_IFNAME).await? {
                    super::garp::send(l.index, mac, &addrs)?;
                }
                Ok(())
            })
            .await;
            if let Err(e) = garp {
                tracing::warn!("gratuitous ARP from {}: {e}", request.netns.display());
            }
            Ok(endpoint)
        }
        .await;
        if result.is_err() {
            let _ = self.nl.del_link(host.index).await;
        }
        result
    }

    /// The rest of an attach whose container end stays in the host for Docker to move:
    /// renamed, MTU set, announced with a gratuitous ARP, then left down.
    async fn hand_over(
        &self,
        request: &AttachRequest,
        host: &LinkInfo,
        temp_name: &str,
    ) -> Result<Endpoint, DatapathError> {
        let name = handover_name(&host.name);
        let temp = self
            .nl
            .link_by_name(temp_name)
            .await?
            .ok_or_else(|| DatapathError::Netlink(format!("veth {temp_name} vanished")))?;
        self.nl
            .set_link(
                temp.index,
                LinkChange {
                    name: Some(name.clone()),
                    mtu: Some(self.mtu_now()),
                    ..Default::default()
                },
            )
            .await?;
        self.make_bridge_port(host.index).await?;
        let endpoint = Endpoint {
            netns: request.netns.clone(),
            host_ifname: host.name.clone(),
            mac: temp.mac,
            addresses: request.addresses.clone(),
            owner: request.owner.clone(),
        };
        self.take_up(&endpoint, host.index)?;
        self.service_neighbours(&endpoint, true).await?;
        // Up for the gratuitous ARP only: Docker takes it down when it moves it.
        let up = LinkChange {
            up: true,
            ..Default::default()
        };
        let addrs: Vec<Ipv4Addr> = endpoint.addresses.iter().map(|a| a.addr).collect();
        let sent = match self.nl.set_link(temp.index, up).await {
            Ok(()) => super::garp::send(temp.index, temp.mac, &addrs).map_err(DatapathError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::warn!("gratuitous ARP from {name}: {e}");
        }
        Ok(endpoint)
    }

    /// Records an endpoint's addresses (`ENDPOINT_ADDRESSES`), attaches TX and the egress
    /// check to its host veth, and fills `ENDPOINTS` and `NEIGHBOURS`.
    fn take_up(&self, endpoint: &Endpoint, host_index: u32) -> Result<(), DatapathError> {
        let addresses = endpoint_addresses(endpoint)?;
        let mut guard = self.lock();
        if let Some(st) = guard.programs.as_mut() {
            // The addresses go in before the programs are attached: they drop what comes from
            // or goes to an interface without a record.
            remove_where(&mut st.maps.endpoint_addresses, |v| v.mac == endpoint.mac);
            st.maps
                .endpoint_addresses
                .insert(
                    IfindexKey {
                        ifindex: host_index,
                    },
                    addresses,
                    0,
                )
                .map_err(|e| bpf_err("writing ENDPOINT_ADDRESSES")(e.to_string()))?;
            for (prefix, program, hook) in [
                ("tx", TX_PROGRAM, TcAttachType::Ingress),
                ("egress", EGRESS_PROGRAM, TcAttachType::Egress),
            ] {
                let pin = format!("{prefix}-{}", endpoint.host_ifname);
                if let Some(old) = st.links.remove(&pin) {
                    let _ = old.unpin();
                }
                let _ = std::fs::remove_file(self.pin_dir.join("links").join(&pin));
                let link = attach_tc(
                    &mut st.ebpf,
                    program,
                    &endpoint.host_ifname,
                    hook,
                    &self.pin_dir.join("links").join(&pin),
                )?;
                st.links.insert(pin, link);
            }
            st.maps
                .endpoints
                .insert(
                    MacKey::new(endpoint.mac),
                    LocalEndpoint {
                        host_ifindex: host_index,
                        flags: 0,
                    },
                    0,
                )
                .map_err(|e| bpf_err("writing ENDPOINTS")(e.to_string()))?;
            for a in &endpoint.addresses {
                st.maps
                    .neighbours
                    .insert(
                        Ipv4Key {
                            addr: a.addr.octets(),
                        },
                        MacKey::new(endpoint.mac),
                        0,
                    )
                    .map_err(|e| bpf_err("writing NEIGHBOURS")(e.to_string()))?;
            }
        }
        guard.endpoints.retain(|e| e.netns != endpoint.netns);
        guard.endpoints.push(endpoint.clone());
        Ok(())
    }

    /// Adds (or removes) permanent neighbour entries on the bridge for an endpoint's
    /// addresses, so answers from the service address never ARP (an ARP from the bridge
    /// would flood to every peer, and teach them our bridge's MAC for the service address).
    async fn service_neighbours(
        &self,
        endpoint: &Endpoint,
        add: bool,
    ) -> Result<(), DatapathError> {
        if self.service.get().is_none() {
            return Ok(());
        }
        for a in &endpoint.addresses {
            if add {
                self.nl
                    .replace_neighbour(self.bridge_index, a.addr, endpoint.mac)
                    .await?;
            } else {
                self.nl.del_neighbour(self.bridge_index, a.addr).await?;
            }
        }
        Ok(())
    }

    /// Forgets an endpoint in the maps and unpins its TX link.
    fn let_go(&self, endpoint: &Endpoint) {
        let mut guard = self.lock();
        if let Some(st) = guard.programs.as_mut() {
            let _ = st.maps.endpoints.remove(&MacKey::new(endpoint.mac));
            for a in &endpoint.addresses {
                let key = Ipv4Key {
                    addr: a.addr.octets(),
                };
                if st.maps.neighbours.get(&key, 0).ok().map(|m| m.addr) == Some(endpoint.mac) {
                    let _ = st.maps.neighbours.remove(&key);
                }
            }
            for prefix in ["tx", "egress"] {
                if let Some(link) = st
                    .links
                    .remove(&format!("{prefix}-{}", endpoint.host_ifname))
                {
                    let _ = link.unpin();
                }
            }
            remove_where(&mut st.maps.endpoint_addresses, |v| v.mac == endpoint.mac);
        }
        guard.endpoints.retain(|e| e.netns != endpoint.netns);
    }
}

/// The `ENDPOINT_ADDRESSES` record of an endpoint: its MAC and its addresses with their
/// subnets. At most [`MAX_ENDPOINT_ADDRESSES`].
fn endpoint_addresses(endpoint: &Endpoint) -> Result<EndpointAddresses, DatapathError> {
    if endpoint.addresses.len() > MAX_ENDPOINT_ADDRESSES {
        return Err(DatapathError::TooManyAddresses {
            count: endpoint.addresses.len(),
            max: MAX_ENDPOINT_ADDRESSES,
        });
    }
    let mut record = EndpointAddresses {
        mac: endpoint.mac,
        ..Default::default()
    };
    for (slot, a) in record.addrs.iter_mut().zip(&endpoint.addresses) {
        *slot = EndpointAddress::new(a.addr.octets(), a.prefix_len);
        record.count += 1;
    }
    Ok(record)
}

/// Creates the bridge's port towards the peers anew: the veth pair [`BRIDGE_PORT_NAME`] (on
/// the bridge, isolated, no learning) and [`DATAPATH_PORT_NAME`] (off the bridge), both up,
/// without IPv6 (nothing of the host's own should reach the peers from them). Returns the
/// ifindex of the bridge's end.
async fn create_bridge_port(
    nl: &Netlink,
    bridge_index: u32,
    mtu: u32,
) -> Result<u32, DatapathError> {
    for name in [DATAPATH_PORT_NAME, BRIDGE_PORT_NAME] {
        if let Some(old) = nl.link_by_name(name).await? {
            nl.del_link(old.index).await?;
        }
    }
    nl.add_veth(BRIDGE_PORT_NAME, DATAPATH_PORT_NAME).await?;
    let mut indexes = [0u32; 2];
    for (slot, name) in indexes
        .iter_mut()
        .zip([BRIDGE_PORT_NAME, DATAPATH_PORT_NAME])
    {
        // No IPv6 on either end (best effort: the host may have IPv6 off altogether).
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        *slot = nl
            .link_by_name(name)
            .await?
            .ok_or_else(|| DatapathError::Netlink(format!("veth {name} vanished")))?
            .index;
    }
    let [bridge_port, datapath_port] = indexes;
    nl.set_link(
        bridge_port,
        LinkChange {
            mtu: Some(mtu),
            controller: Some(bridge_index),
            ..Default::default()
        },
    )
    .await?;
    nl.set_isolated(bridge_port, BRIDGE_PORT_NAME, false)
        .await?;
    for index in [datapath_port, bridge_port] {
        nl.set_link(
            index,
            LinkChange {
                mtu: Some(mtu),
                up: true,
                ..Default::default()
            },
        )
        .await?;
    }
    Ok(bridge_port)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or_else(|| DatapathError::Bpf(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| bpf_err(name)(e.to_string()))
}

/// Attaches a classifier at tcx ingress or egress of `ifname` and pins the link at `pin`.
fn attach_tc(
    ebpf: &mut Ebpf,
    name: &str,
    ifname: &str,
    hook: TcAttachType,
    pin: &Path,
) -> Result<PinnedLink, DatapathError> {
    let prog = program(ebpf, name)?;
    let id = prog.attach(ifname, hook).map_err(|e| {
        DatapathError::Bpf(format!("attaching {name} to {ifname}: {}", one_line(&e)))
    })?;
    let link = prog
        .take_link(id)
        .map_err(|e| bpf_err(name)(e.to_string()))?;
    let fd: FdLink = link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| {
            bpf_err(format!("{name} on {ifname} is not a tcx link"))(e.to_string())
        })?;
    let _ = std::fs::remove_file(pin);
    fd.pin(pin)
        .map_err(|e| bpf_err(format!("pinning the link of {name} on {ifname}"))(e.to_string()))
}

fn take_maps(ebpf: &mut Ebpf) -> Result<Maps, DatapathError> {
    fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, DatapathError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = ebpf
            .take_map(name)
            .ok_or_else(|| DatapathError::Bpf(format!("map {name} missing from the object")))?;
        T::try_from(map).map_err(|e| DatapathError::Bpf(format!("map {name}: {e}")))
    }
    Ok(Maps {
        config: take(ebpf, CONFIG_MAP)?,
        peers: take(ebpf, PEERS_MAP)?,
        endpoints: take(ebpf, ENDPOINTS_MAP)?,
        remote_macs: take(ebpf, REMOTE_MACS_MAP)?,
        neighbours: take(ebpf, NEIGHBOURS_MAP)?,
        counters: take(ebpf, COUNTERS_MAP)?,
        peer_counters: take(ebpf, PEER_COUNTERS_MAP)?,
        neighbour_peers: take(ebpf, NEIGHBOUR_PEERS_MAP)?,
        broadcast_trees: take(ebpf, BROADCAST_TREES_MAP)?,
        endpoint_addresses: take(ebpf, ENDPOINT_ADDRESSES_MAP)?,
    })
}

/// Removes every entry of `map` whose value matches; returns the keys removed.
fn remove_where<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    matches: impl Fn(&V) -> bool,
) -> Vec<K> {
    let keys: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| matches(v))
        .map(|(k, _)| k)
        .collect();
    for k in &keys {
        let _ = map.remove(k);
    }
    keys
}

/// Removes pinned links (detaching them) and maps of an earlier run.
fn remove_pins(pin_dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(pin_dir.join("links")) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    for m in ALL_MAPS {
        let _ = std::fs::remove_file(pin_dir.join(m));
    }
}

/// Takes peer `id` out of `PEERS`, `BROADCAST_TREES` and `NEIGHBOUR_PEERS` (what was
/// learned behind it stays); returns the programs for more.
fn clear_peer_entry(state: &mut State, id: u16) -> Result<&mut Programs, DatapathError> {
    state.direct.remove(&id);
    state.no_route.remove(&id);
    let st = state.programs()?;
    st.maps
        .peers
        .set(id as u32, PeerEntry::default(), 0)
        .map_err(|e| bpf_err("clearing PEERS")(e.to_string()))?;
    let _ = st.maps.broadcast_trees.remove(&(id as u32));
    remove_where(&mut st.maps.neighbour_peers, |n| n.short_id == id);
    Ok(st)
}

fn random_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

impl Datapath for EbpfDatapath {
    async fn add_peer(&self, peer: DatapathPeer) -> Result<(), DatapathError> {
        let id = peer.short_id.get();
        let direct = peer.next_hop == peer.short_id;
        // The outer destination MAC of frames the programs address themselves (broadcast
        // copies, non-IPv4 frames, heartbeats): the next hop's on the underlay, which is
        // the peer's own only when it shares our subnet (else a router's). The control
        // connection to a direct peer has just resolved it in the neighbour table.
        let underlay_mac = if direct {
            self.nl
                .next_hop_mac(self.underlay.index, peer.underlay)
                .await?
                .unwrap_or_default()
        } else {
            [0; 6]
        };
        if direct && underlay_mac == [0; 6] {
            tracing::warn!(
                "no neighbour entry for the next hop towards peer {} at {}: broadcasts and non-IPv4 frames cannot be sent to it yet",
                peer.short_id,
                peer.underlay
            );
        }
        {
            let mut guard = self.lock();
            guard.peers_seen.insert(id);
            let st = guard.programs()?;
            st.maps
                .peers
                .set(
                    id as u32,
                    PeerEntry {
                        underlay_ipv4: peer.underlay.octets(),
                        flags: PEER_ADMIT | PEER_REACHABLE,
                        next_hop: peer.next_hop.get(),
                        underlay_mac,
                    },
                    0,
                )
                .map_err(|e| bpf_err("writing PEERS")(e.to_string()))?;
            let key = Ipv4Key {
                addr: peer.underlay.octets(),
            };
            if direct {
                guard.direct.insert(id, (peer.underlay, underlay_mac));
            } else {
                guard.direct.remove(&id);
            }
            let st = guard.programs()?;
            if direct {
                st.maps
                    .neighbour_peers
                    .insert(
                        key,
                        NeighbourPeer {
                            short_id: id,
                            _pad: [0; 2],
                        },
                        0,
                    )
                    .map_err(|e| bpf_err("writing NEIGHBOUR_PEERS")(e.to_string()))?;
            } else if st
                .maps
                .neighbour_peers
                .get(&key, 0)
                .is_ok_and(|n| n.short_id == id)
            {
                let _ = st.maps.neighbour_peers.remove(&key);
            }
        }
        Ok(())
    }

    async fn remove_peer(&self, short_id: ShortId) -> Result<(), DatapathError> {
        let id = short_id.get();
        let mut guard = self.lock();
        let st = clear_peer_entry(&mut guard, id)?;
        let gone = remove_where(&mut st.maps.remote_macs, |v| v.peer_short_id == id);
        remove_where(&mut st.maps.neighbours, |mac| gone.contains(mac));
        Ok(())
    }

    async fn unroute_peer(&self, short_id: ShortId) -> Result<(), DatapathError> {
        clear_peer_entry(&mut self.lock(), short_id.get()).map(|_| ())
    }

    async fn admit_peer(&self, peer: DatapathPeer) -> Result<(), DatapathError> {
        let id = peer.short_id.get();
        // Heartbeats still go to it over the fast path (they tell when it works again).
        let underlay_mac = self
            .nl
            .next_hop_mac(self.underlay.index, peer.underlay)
            .await?
            .unwrap_or_default();
        {
            let mut guard = self.lock();
            guard.peers_seen.insert(id);
            guard.direct.insert(id, (peer.underlay, underlay_mac));
            let st = guard.programs()?;
            st.maps
                .peers
                .set(
                    id as u32,
                    PeerEntry {
                        underlay_ipv4: peer.underlay.octets(),
                        flags: PEER_ADMIT,
                        next_hop: id,
                        underlay_mac,
                    },
                    0,
                )
                .map_err(|e| bpf_err("writing PEERS")(e.to_string()))?;
            remove_where(&mut st.maps.neighbour_peers, |n| n.short_id == id);
            // What was learned behind it stays: while the peer is not reachable its frames
            // fall to the bridge (and the sleeve) anyway, and they are right again when it
            // comes back or a neighbour relays to it.
        }
        Ok(())
    }

    async fn refresh_next_hops(&self) {
        // A few peers per call, in turn: two netlink requests each, and a full mesh of
        // hundreds of routers on one machine must not spend its CPU on them.
        let direct: Vec<(u16, Ipv4Addr, [u8; 6])> = {
            let guard = self.lock();
            let start = self.refresh_cursor.load(std::sync::atomic::Ordering::Relaxed);
            let batch: Vec<(u16, Ipv4Addr, [u8; 6])> = guard
                .direct
                .range(start..)
                .chain(guard.direct.range(..start))
                .take(NEXT_HOPS_PER_REFRESH)
                .map(|(id, (addr, mac))| (*id, *addr, *mac))
                .collect();
            let next = batch.last().map_or(0, |(id, _, _)| id.wrapping_add(1));
            self.refresh_cursor
                .store(next, std::sync::atomic::Ordering::Relaxed);
            batch
        };
        for (id, addr, known) in direct {
            let hop = match self.nl.route_to(addr).await {
                Ok(hop) => hop.filter(|h| h.ifindex == self.underlay.index),
                Err(e) => {
                    tracing::debug!("route towards {addr}: {e}");
                    continue;
                }
            };
            // Said once when the route goes (or leaves through another device), once when
            // it is back; the entry stays as it is meanwhile.
            let lost = hop.is_none();
            if lost != self.lock().no_route.contains(&id) {
                let mut guard = self.lock();
                if lost {
                    guard.no_route.insert(id);
                    tracing::warn!(
                        "no route to peer {id} at {addr} through {}: frames for it cannot be sent",
                        self.underlay.name
                    );
                } else {
                    guard.no_route.remove(&id);
                    tracing::info!("route to peer {id} at {addr} is back");
                }
            }
            let Some(hop) = hop else {
                continue;
            };
            let mac = match self.nl.neighbour_mac(self.underlay.index, hop.address).await {
                Ok(Some(mac)) => mac,
                // Not resolved (yet): the old next hop may still be right; traffic to the
                // peer resolves the new one.
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!("next hop towards {addr}: {e}");
                    continue;
                }
            };
            if mac == known {
                continue;
            }
            let mut guard = self.lock();
            if guard.direct.get(&id).map(|(a, _)| *a) != Some(addr) {
                continue;
            }
            let Some(programs) = guard.programs.as_mut() else {
                return;
            };
            let Ok(mut entry) = programs.maps.peers.get(&(id as u32), 0) else {
                continue;
            };
            entry.underlay_mac = mac;
            if let Err(e) = programs.maps.peers.set(id as u32, entry, 0) {
                tracing::warn!("cannot update the next hop towards peer {id}: {e}");
                continue;
            }
            guard.direct.insert(id, (addr, mac));
            tracing::info!(
                "next hop towards peer {id} at {addr} is now {}",
                super::format_mac(&mac)
            );
        }
    }

    async fn forget_bridge_macs(&self, macs: Vec<[u8; 6]>) -> Result<(), DatapathError> {
        self.nl
            .forget_fdb_entries(self.bridge_index, &macs)
            .await
            .map(|_| ())
    }

    async fn set_own_short_id(&self, short_id: ShortId) -> Result<(), DatapathError> {
        if let Some(programs) = self.lock().programs.as_mut() {
            let mut config = programs
                .maps
                .config
                .get(&0, 0)
                .map_err(|e| bpf_err("reading CONFIG")(e.to_string()))?;
            config.own_short_id = short_id.get();
            programs
                .maps
                .config
                .set(0, config, 0)
                .map_err(|e| bpf_err("writing CONFIG")(e.to_string()))?;
        }
        self.own_short_id
            .store(short_id.get(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn set_broadcast_tree(
        &self,
        source: ShortId,
        children: Vec<ShortId>,
    ) -> Result<(), DatapathError> {
        if children.len() > MAX_BROADCAST_CHILDREN {
            tracing::warn!(
                "broadcasts from {source} go to {} neighbours here; only the first {MAX_BROADCAST_CHILDREN} get them",
                children.len()
            );
        }
        let key = source.get() as u32;
        let mut guard = self.lock();
        let st = guard.programs()?;
        if children.is_empty() {
            let _ = st.maps.broadcast_trees.remove(&key);
            return Ok(());
        }
        let mut tree = BroadcastTree::default();
        for (slot, child) in tree.children.iter_mut().zip(&children) {
            *slot = child.get();
            tree.count += 1;
        }
        st.maps
            .broadcast_trees
            .insert(key, tree, 0)
            .map_err(|e| bpf_err("writing BROADCAST_TREES")(e.to_string()))
    }

    async fn attach(&self, request: AttachRequest) -> Result<Endpoint, DatapathError> {
        if self
            .lock()
            .endpoints
            .iter()
            .any(|e| e.netns == request.netns)
        {
            return Err(DatapathError::AlreadyAttached(request.netns));
        }
        if request.addresses.len() > MAX_ENDPOINT_ADDRESSES {
            return Err(DatapathError::TooManyAddresses {
                count: request.addresses.len(),
                max: MAX_ENDPOINT_ADDRESSES,
            });
        }
        // Fail early, before creating anything, on a path that is not a network namespace
        // or one that has an ethwe already.
        let has_ethwe = !request.hand_over
            && netlink::in_netns(&request.netns, |nl| async move {
                Ok(nl.link_by_name(CONTAINER_IFNAME).await?.is_some())
            })
            .await?;
        if has_ethwe {
            return Err(DatapathError::AlreadyAttached(request.netns));
        }
        let mut last = None;
        for _ in 0..3 {
            let suffix = random_suffix();
            if self
                .nl
                .link_by_name(&format!("{HOST_VETH_PREFIX}{suffix}"))
                .await?
                .is_some()
            {
                continue;
            }
            match self.attach_inner(&request, &suffix).await {
                Ok(ep) => return Ok(ep),
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        Err(last.unwrap_or_else(|| DatapathError::Netlink("no free veth name".into())))
    }

    async fn detach(&self, netns: PathBuf) -> Result<Endpoint, DatapathError> {
        let endpoint = self
            .lock()
            .endpoints
            .iter()
            .find(|e| e.netns == netns)
            .cloned()
            .ok_or_else(|| DatapathError::NoSuchEndpoint(netns.clone()))?;
        self.let_go(&endpoint);
        if let Err(e) = self.service_neighbours(&endpoint, false).await {
            tracing::warn!("{e}");
        }
        if let Some(link) = self.nl.link_by_name(&endpoint.host_ifname).await? {
            self.nl.del_link(link.index).await?;
        }
        Ok(endpoint)
    }

    async fn restore_endpoint(&self, endpoint: Endpoint) -> Result<(), DatapathError> {
        let host = self
            .nl
            .link_by_name(&endpoint.host_ifname)
            .await?
            .ok_or_else(|| DatapathError::NoSuchEndpoint(endpoint.netns.clone()))?;
        self.make_bridge_port(host.index).await?;
        self.take_up(&endpoint, host.index)?;
        self.service_neighbours(&endpoint, true).await
    }

    async fn expose(&self, address: super::Ipv4Cidr) -> Result<(), DatapathError> {
        self.nl.add_address(self.bridge_index, address).await?;
        let subnets = {
            let mut st = self.lock();
            if !st.exposed.contains(&address) {
                st.exposed.push(address);
            }
            exposed_subnets(&st.exposed)
        };
        super::nat::apply(&subnets, BRIDGE_NAME)
    }

    async fn hide(&self, address: super::Ipv4Cidr) -> Result<(), DatapathError> {
        self.nl.del_address(self.bridge_index, address).await?;
        let subnets = {
            let mut st = self.lock();
            st.exposed.retain(|a| *a != address);
            exposed_subnets(&st.exposed)
        };
        super::nat::apply(&subnets, BRIDGE_NAME)
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        self.lock().endpoints.clone()
    }

    fn counters(&self) -> Result<DatapathCounters, DatapathError> {
        let mut guard = self.lock();
        let peers_seen = guard.peers_seen.clone();
        let st = guard.programs()?;
        let mut out = DatapathCounters::default();
        for reason in Reason::ALL {
            let v = st
                .maps
                .counters
                .get(&(reason as u32), 0)
                .map_err(|e| bpf_err("reading COUNTERS")(e.to_string()))?;
            let (p, b) = v
                .iter()
                .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            out.by_reason.push((reason, p, b));
        }
        for id in &peers_seen {
            let v = st
                .maps
                .peer_counters
                .get(&(*id as u32), 0)
                .map_err(|e| bpf_err("reading PEER_COUNTERS")(e.to_string()))?;
            let mut t = PeerTraffic {
                short_id: *id,
                ..Default::default()
            };
            for c in v.iter() {
                t.tx_packets += c.tx_packets;
                t.tx_bytes += c.tx_bytes;
                t.rx_packets += c.rx_packets;
                t.rx_bytes += c.rx_bytes;
                t.rx_heartbeats += c.rx_heartbeats;
            }
            t.probe = super::ProbeSeen::merge(v.iter().map(|c| (c.probe_round, c.probe_len)));
            if t.tx_packets + t.rx_packets > 0 {
                out.by_peer.push(t);
            }
        }
        Ok(out)
    }

    fn container_mtu(&self) -> u32 {
        self.mtu_now()
    }

    fn max_container_mtu(&self) -> u32 {
        self.max_container_mtu
    }

    async fn set_container_mtu(&self, mtu: u32) -> Result<(), DatapathError> {
        let mtu = mtu.clamp(MIN_CONTAINER_MTU, self.max_container_mtu);
        let old = self
            .container_mtu
            .swap(mtu, std::sync::atomic::Ordering::Relaxed);
        if old == mtu {
            return Ok(());
        }
        tracing::info!("container MTU {old} -> {mtu} (what the paths to the peers carry)");
        let change = LinkChange {
            mtu: Some(mtu),
            ..Default::default()
        };
        self.nl.set_link(self.bridge_index, change.clone()).await?;
        let endpoints = self.lock().endpoints.clone();
        for e in endpoints {
            if let Some(host) = self.nl.link_by_name(&e.host_ifname).await? {
                self.nl.set_link(host.index, change.clone()).await?;
            }
            // The container's end, found by its MAC (Docker names it itself). A namespace
            // that is gone has nothing left to change.
            let change = change.clone();
            let result = netlink::in_netns(&e.netns, move |nl| async move {
                for link in nl.links().await? {
                    if link.mac == e.mac {
                        nl.set_link(link.index, change).await?;
                        break;
                    }
                }
                Ok(())
            })
            .await;
            if let Err(err) = result {
                tracing::warn!("cannot set the MTU of {} in {}: {err}", e.host_ifname, e.netns.display());
            }
        }
        Ok(())
    }

    fn send_heartbeats(&self, heartbeats: &[super::Heartbeat]) -> Result<(), DatapathError> {
        use weave_ebpf_common::heartbeat::{write_heartbeat_frame, HEARTBEAT_FRAME_LEN, OUTER_IP_OVERHEAD};
        let Some(port) = &self.heartbeat_port else {
            return Ok(());
        };
        let mut frame = vec![0u8; self.max_container_mtu as usize + weave_ebpf_common::headers::ETH_HLEN];
        for h in heartbeats {
            let len = (h.outer_len as usize)
                .saturating_sub(OUTER_IP_OVERHEAD)
                .clamp(HEARTBEAT_FRAME_LEN, frame.len());
            write_heartbeat_frame(&mut frame, h.peer, h.round);
            if let Err(e) = port.send(&frame[..len]) {
                tracing::debug!("heartbeat to peer {}: {e}", h.peer);
            }
        }
        Ok(())
    }

    async fn add_service_address(&self, addr: Ipv4Addr) -> Result<(), DatapathError> {
        if let Some((old, _)) = self.service.get() {
            return if *old == addr {
                Ok(())
            } else {
                Err(DatapathError::Netlink(format!(
                    "the service address is {old} already"
                )))
            };
        }
        // A MAC of our own for the bridge (locally administered, from the peer name): set
        // once, the bridge keeps it whatever ports come and go, so the ARP answer stays true.
        let mut mac = self.settings.peer_name.bytes();
        mac[0] = (mac[0] & 0xfe) | 0x02;
        self.nl.set_mac(self.bridge_index, mac).await?;
        self.nl
            .add_address(
                self.bridge_index,
                Ipv4Cidr {
                    addr,
                    prefix_len: 32,
                },
            )
            .await?;
        // Answers from the service address go back over the bridge, whatever the main table
        // says about container addresses.
        self.nl
            .replace_device_route(Ipv4Addr::UNSPECIFIED, 0, self.bridge_index, SERVICE_TABLE)
            .await?;
        self.nl
            .add_source_rule(addr, SERVICE_TABLE, SERVICE_RULE_PRIORITY)
            .await?;
        // Containers' ARP for it is answered by the TX program and never floods to peers
        // (whose bridges carry the same address).
        if let Some(st) = self.lock().programs.as_mut() {
            st.maps
                .neighbours
                .insert(
                    Ipv4Key {
                        addr: addr.octets(),
                    },
                    MacKey::new(mac),
                    0,
                )
                .map_err(|e| bpf_err("writing NEIGHBOURS")(e.to_string()))?;
            // Subnet isolation lets every container reach it.
            let mut config = st
                .maps
                .config
                .get(&0, 0)
                .map_err(|e| bpf_err("reading CONFIG")(e.to_string()))?;
            config.service_ipv4 = addr.octets();
            st.maps
                .config
                .set(0, config, 0)
                .map_err(|e| bpf_err("writing CONFIG")(e.to_string()))?;
        }
        let _ = self.service.set((addr, mac));
        let endpoints = self.lock().endpoints.clone();
        for e in &endpoints {
            self.service_neighbours(e, true).await?;
        }
        tracing::info!("service address {addr} on bridge {BRIDGE_NAME}");
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), DatapathError> {
        if let Some((addr, _)) = self.service.get().copied() {
            let _ = self
                .nl
                .del_source_rule(addr, SERVICE_TABLE, SERVICE_RULE_PRIORITY)
                .await;
            let _ = self
                .nl
                .del_device_route(Ipv4Addr::UNSPECIFIED, 0, self.bridge_index, SERVICE_TABLE)
                .await;
            let _ = self
                .nl
                .del_address(
                    self.bridge_index,
                    Ipv4Cidr {
                        addr,
                        prefix_len: 32,
                    },
                )
                .await;
        }
        {
            if let Some(programs) = self.lock().programs.as_mut() {
                for (_, link) in std::mem::take(&mut programs.links) {
                    let _ = link.unpin();
                }
            }
        }
        remove_pins(&self.pin_dir);
        let _ = std::fs::remove_dir(self.pin_dir.join("links"));
        let _ = std::fs::remove_dir(&self.pin_dir);
        for link in self.nl.links().await? {
            if link.name.starts_with(VXLAN_PREFIX) || link.name == DATAPATH_PORT_NAME {
                self.nl.del_link(link.index).await?;
            }
        }
        Ok(())
    }
}
