//! The real data path: the aya programs of `weave-ebpf` (embedded in the binary), their
//! pinned maps and links, the `weave` bridge, its port towards the peers and container veths.
//!
//! [`EbpfDatapath`] holds the pieces and carries out the [`Datapath`] calls by concern:
//! - `loader`: whether BPF may be used, bpffs, loading, attaching and pinning, adopting
//!   the pins of an earlier run (`adoption` decides, `bpf_sys` swaps programs in links);
//! - `maps`: the typed maps, the only place that writes them, and the pure decisions of
//!   which entries a peer, a broadcast tree or an endpoint needs;
//! - `peers`: peers routed, admitted or cleared, next hops kept current, heartbeats;
//! - `endpoints`: container veths and their namespaces;
//! - `bridge`: the bridge's port towards the peers and the container MTU;
//! - `service`: the service address and exposed addresses (with masquerading);
//! - `counters`: the per-CPU counters summed.
//!
//! Every method must run on a thread in the router's network namespace (normally the whole
//! process lives there): interface names are resolved in the caller's namespace. Work
//! inside container namespaces runs on dedicated threads (see [`super::netlink::in_netns`]).

mod adoption;
mod bpf_sys;
mod bridge;
mod counters;
mod endpoints;
mod loader;
mod maps;
mod peers;
mod service;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use weave_ebpf_common::counters::Reason;
use weave_ebpf_common::maps::PeerEntry;

pub use bridge::{
    BRIDGE_NAME, BRIDGE_PORT_NAME, DATAPATH_PORT_NAME, HEADROOM_PORT_NAME, MIN_CONTAINER_MTU,
    VXLAN_PREFIX,
};
pub use counters::peer_traffic;
pub use endpoints::{handover_name, CONTAINER_IFNAME, HANDOVER_VETH_PREFIX, HOST_VETH_PREFIX};
pub use loader::{
    ensure_bpffs, probe_bpf, BPFFS, EBPF_OBJECT, EGRESS_PROGRAM, FROM_BRIDGE_PROGRAM, RX_PROGRAM,
    TX_PROGRAM, XDP_PROGRAM,
};
pub use service::{SERVICE_RULE_PRIORITY, SERVICE_TABLE};

use super::netlink::{LinkInfo, Netlink};
use super::next_hop_watch::NextHopWatch;
use super::packet_socket::PacketSocket;
use super::{
    AttachRequest, Datapath, DatapathCounters, DatapathError, DatapathPeer, DatapathSettings,
    Endpoint, Heartbeat, Ipv4Cidr, PeerTraffic,
};
use crate::mesh::peer_name::ShortId;
use loader::Programs;
use peers::PeerBook;

/// What changes while the data path runs, behind one lock.
struct State {
    /// `None` when started without them ([`DatapathSettings::programs`]).
    programs: Option<Programs>,
    endpoints: Vec<Endpoint>,
    peers: PeerBook,
    /// Host addresses on the bridge given by `expose`.
    exposed: Vec<Ipv4Cidr>,
    /// What was adopted from an earlier run and waits to be claimed again (`None` when
    /// started afresh or once reconciled).
    adoption: Option<adoption::Adoption>,
}

impl State {
    /// The kernel programs, or an error saying they are not loaded.
    fn programs(&mut self) -> Result<&mut Programs, DatapathError> {
        self.programs
            .as_mut()
            .ok_or(DatapathError::ProgramsNotLoaded)
    }
}

/// The eBPF data path of one router.
pub struct EbpfDatapath {
    settings: DatapathSettings,
    /// Our short ID now (it changes after a clash; `settings` keeps the one we started with).
    own_short_id: AtomicU16,
    pin_dir: PathBuf,
    /// The MTU containers get now: at most `max_container_mtu`, lowered to what the paths
    /// to the peers carry ([`Datapath::set_container_mtu`]).
    container_mtu: AtomicU32,
    /// The MTU given (`--mtu`) or the underlay's less the VXLAN overhead; the bridge's port
    /// towards the peers keeps it (heartbeats and probes of every size go through it).
    max_container_mtu: u32,
    /// Writes heartbeats and probes into the bridge's port towards the peers.
    heartbeat_port: Option<PacketSocket>,
    underlay: LinkInfo,
    bridge_index: u32,
    xdp_attached: bool,
    nl: Netlink,
    /// The kernel's neighbour and route changes, for the next hops towards the peers.
    next_hops: NextHopWatch,
    state: Mutex<State>,
    /// The local service address on the bridge (the DNS server's) and the bridge's MAC.
    service: OnceLock<(Ipv4Addr, [u8; 6])>,
    /// The short ID [`Datapath::refresh_next_hops`] goes on from.
    refresh_cursor: AtomicU16,
    /// Set by [`Datapath::keep_as_is`]: changes are no longer carried out.
    kept_as_is: AtomicBool,
}

/// Starts the data path: bpffs, the bridge, the programs and maps (pinned under
/// `<pin_root>/<peer name>/`), RX (and XDP, per the mode) on the underlay. What an earlier
/// run with the same peer name left running is adopted when its maps fit (maps and bridge
/// port kept, programs swapped into the pinned links; entries nobody claims again within
/// [`adoption::ADOPTION_BOUND`] removed), else removed first (pins, VXLAN devices).
pub async fn start(settings: DatapathSettings) -> Result<EbpfDatapath, DatapathError> {
    EbpfDatapath::start(settings).await
}

impl EbpfDatapath {
    /// See [`start`].
    pub async fn start(settings: DatapathSettings) -> Result<Self, DatapathError> {
        let pin_dir = settings.pin_root.join(settings.peer_name.to_string());
        let adopt = settings.programs && loader::open_pin_dir(&pin_dir)?;

        let nl = Netlink::connect_on_own_thread()?;
        let next_hops = NextHopWatch::start().unwrap_or_else(|e| {
            tracing::warn!("{e}: next hops towards peers are looked up in turn");
            NextHopWatch::deaf()
        });
        let underlay = nl
            .link_by_name(&settings.underlay_iface)
            .await?
            .ok_or_else(|| DatapathError::NoSuchInterface(settings.underlay_iface.clone()))?;
        let container_mtu = bridge::container_mtu(settings.mtu, &underlay)?;
        bridge::remove_vxlan_devices(&nl).await?;
        let bridge = nl.ensure_bridge(BRIDGE_NAME, container_mtu).await?;

        let (programs, xdp_attached, heartbeat_port) = if settings.programs {
            // An adopted port keeps its pinned link (from_bridge): not re-created.
            let bridge_port = if adopt {
                bridge::existing_bridge_port(&nl).await?
            } else {
                None
            };
            let bridge_port = match bridge_port {
                Some(index) => index,
                None => bridge::create_bridge_port(&nl, bridge.index, container_mtu).await?,
            };
            if let Err(e) = bridge::ensure_headroom_port(&nl, bridge.index, container_mtu).await {
                tracing::warn!("the bridge reserves no room for outer headers, so each frame encapsulated from a container's UDP or ICMP socket is copied once: {e}");
            }
            let heartbeat_port = PacketSocket::open(
                bridge_port,
                weave_ebpf_common::heartbeat::HEARTBEAT_ETHERTYPE,
            )
            .map_err(|e| {
                tracing::warn!("no fast-path heartbeats or path-MTU probes: cannot open a packet socket on {BRIDGE_PORT_NAME}: {e}");
            })
            .ok();
            match loader::load(&settings, &pin_dir, &underlay, bridge_port, adopt) {
                Ok((programs, xdp)) => (Some(programs), xdp, heartbeat_port),
                Err(e) => {
                    loader::remove_pins(&pin_dir);
                    return Err(e);
                }
            }
        } else {
            (None, false, None)
        };
        let adoption = programs
            .as_ref()
            .filter(|_| adopt)
            .map(|p| adoption::Adoption::new(p.maps.peer_ids(), std::time::Instant::now()));
        let state = State {
            programs,
            endpoints: Vec::new(),
            peers: PeerBook::default(),
            exposed: Vec::new(),
            adoption,
        };
        Ok(Self {
            own_short_id: AtomicU16::new(settings.own_short_id.get()),
            settings,
            pin_dir,
            container_mtu: AtomicU32::new(container_mtu),
            max_container_mtu: container_mtu,
            heartbeat_port,
            underlay,
            bridge_index: bridge.index,
            xdp_attached,
            nl,
            next_hops,
            state: Mutex::new(state),
            service: OnceLock::new(),
            refresh_cursor: AtomicU16::new(0),
            kept_as_is: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the data path is left as it is for the next launch ([`Datapath::keep_as_is`]).
    fn kept(&self) -> bool {
        self.kept_as_is.load(Ordering::Relaxed)
    }

    fn mtu_now(&self) -> u32 {
        self.container_mtu.load(Ordering::Relaxed)
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
        self.lock()
            .programs
            .as_ref()
            .map(|p| p.maps.remote_macs())
            .unwrap_or_default()
    }

    /// IPv4 → MAC entries of `NEIGHBOURS`.
    pub fn neighbours(&self) -> Vec<(Ipv4Addr, [u8; 6])> {
        self.lock()
            .programs
            .as_ref()
            .map(|p| p.maps.neighbours())
            .unwrap_or_default()
    }

    /// The `PEERS` entry of a short ID (all zero when absent).
    pub fn peer_entry(&self, short_id: ShortId) -> Result<PeerEntry, DatapathError> {
        self.lock().programs()?.maps.peer(short_id.get())
    }

    /// Once [`adoption::ADOPTION_BOUND`] has passed since an adoption: removes the adopted
    /// peers the mesh did not place again, the adopted links no endpoint claimed, and the
    /// endpoint entries of containers not restored.
    fn finish_adoption(&self) {
        let mut guard = self.lock();
        let placed: std::collections::BTreeSet<u16> = guard.peers.seen().collect();
        let Some(stale) = guard
            .adoption
            .as_mut()
            .and_then(|a| a.stale(std::time::Instant::now(), &placed))
        else {
            return;
        };
        guard.adoption = None;
        let kept: Vec<[u8; 6]> = guard.endpoints.iter().map(|e| e.mac).collect();
        let Some(programs) = guard.programs.as_mut() else {
            return;
        };
        for &id in &stale.peers {
            if let Err(e) = programs.maps.clear_peer(id) {
                tracing::warn!("cannot remove adopted peer {id}: {e}");
            }
            programs.maps.forget_learned_behind(id);
        }
        let links = programs.unclaimed_adopted();
        for pin in &links {
            programs.remove_adopted(pin);
        }
        let macs = adoption::unclaimed_macs(&programs.maps.endpoint_macs(), &kept);
        for mac in &macs {
            programs.maps.forget_endpoint_mac(*mac);
        }
        tracing::info!(
            "adoption reconciled after {} s: {} adopted peers not back in the mesh removed {:?}, {} unclaimed links and {} endpoint entries removed",
            adoption::ADOPTION_BOUND.as_secs(),
            stale.peers.len(),
            stale.peers,
            links.len(),
            macs.len()
        );
    }

    /// Packets counted for one reason, summed over CPUs.
    pub fn counter(&self, reason: Reason) -> Result<u64, DatapathError> {
        counters::packets(&self.lock().programs()?.maps, reason)
    }
}

impl Datapath for EbpfDatapath {
    async fn add_peer(&self, peer: DatapathPeer) -> Result<(), DatapathError> {
        if self.kept() {
            return Ok(());
        }
        self.route_peer(peer).await
    }

    async fn remove_peer(&self, short_id: ShortId) -> Result<(), DatapathError> {
        if self.kept() {
            return Ok(());
        }
        self.forget_peer(short_id)
    }

    async fn unroute_peer(&self, short_id: ShortId) -> Result<(), DatapathError> {
        if self.kept() {
            return Ok(());
        }
        self.unroute(short_id)
    }

    async fn leave_to_sleeve(&self, peer: DatapathPeer) -> Result<(), DatapathError> {
        if self.kept() {
            return Ok(());
        }
        self.hand_to_sleeve(peer)
    }

    async fn admit_peer(&self, peer: DatapathPeer) -> Result<(), DatapathError> {
        if self.kept() {
            return Ok(());
        }
        self.admit_only(peer).await
    }

    async fn refresh_next_hops(&self) {
        if self.kept() {
            return;
        }
        // Called every second: also the clock of an adoption's reconciliation.
        self.finish_adoption();
        self.refresh_next_hop_macs().await
    }

    async fn forget_bridge_macs(&self, macs: Vec<[u8; 6]>) -> Result<(), DatapathError> {
        if self.kept() {
            return Ok(());
        }
        self.nl
            .forget_fdb_entries(self.bridge_index, &macs)
            .await
            .map(|_| ())
    }

    async fn set_own_short_id(&self, short_id: ShortId) -> Result<(), DatapathError> {
        if self.kept() {
            return Ok(());
        }
        self.set_short_id(short_id)
    }

    async fn set_broadcast_tree(
        &self,
        source: ShortId,
        children: Vec<ShortId>,
    ) -> Result<(), DatapathError> {
        if self.kept() {
            return Ok(());
        }
        self.set_tree(source, &children)
    }

    async fn attach(&self, request: AttachRequest) -> Result<Endpoint, DatapathError> {
        self.attach_endpoint(request).await
    }

    async fn detach(&self, netns: PathBuf) -> Result<Endpoint, DatapathError> {
        self.detach_endpoint(netns).await
    }

    async fn restore_endpoint(&self, endpoint: Endpoint) -> Result<(), DatapathError> {
        self.restore(endpoint).await
    }

    async fn expose(&self, address: Ipv4Cidr) -> Result<(), DatapathError> {
        self.expose_address(address).await
    }

    async fn hide(&self, address: Ipv4Cidr) -> Result<(), DatapathError> {
        self.hide_address(address).await
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        self.lock().endpoints.clone()
    }

    fn counters(&self) -> Result<DatapathCounters, DatapathError> {
        let mut guard = self.lock();
        let seen: Vec<u16> = guard.peers.seen().collect();
        counters::read(&guard.programs()?.maps, seen)
    }

    fn peer_traffic(&self) -> Result<Vec<PeerTraffic>, DatapathError> {
        let mut guard = self.lock();
        let seen: Vec<u16> = guard.peers.seen().collect();
        counters::read_peers(&guard.programs()?.maps, seen)
    }

    fn container_mtu(&self) -> u32 {
        self.mtu_now()
    }

    fn max_container_mtu(&self) -> u32 {
        self.max_container_mtu
    }

    async fn set_container_mtu(&self, mtu: u32) -> Result<(), DatapathError> {
        let mtu = mtu.clamp(MIN_CONTAINER_MTU, self.max_container_mtu);
        let old = self.container_mtu.swap(mtu, Ordering::Relaxed);
        if old == mtu {
            return Ok(());
        }
        tracing::info!("container MTU {old} -> {mtu} (what the paths to the peers carry)");
        self.apply_container_mtu(mtu).await
    }

    fn send_heartbeats(&self, heartbeats: &[Heartbeat]) -> Result<(), DatapathError> {
        self.write_heartbeats(heartbeats);
        Ok(())
    }

    fn hand_relays_to_sleeve(&self, port_ifindex: u32) -> Result<(), DatapathError> {
        if self.kept() {
            return Ok(());
        }
        match self.lock().programs.as_mut() {
            Some(programs) => programs
                .maps
                .update_config(|config| config.sleeve_port_ifindex = port_ifindex),
            None => Ok(()),
        }
    }

    async fn add_service_address(&self, addr: Ipv4Addr) -> Result<(), DatapathError> {
        self.set_service_address(addr).await
    }

    fn keep_as_is(&self) {
        self.kept_as_is.store(true, Ordering::Relaxed);
    }

    async fn shutdown(&self) -> Result<(), DatapathError> {
        self.remove_service_address().await;
        if let Some(programs) = self.lock().programs.as_mut() {
            programs.detach_all();
        }
        loader::remove_pin_dir(&self.pin_dir);
        bridge::remove_at_shutdown(&self.nl).await
    }
}
