//! The data path: everything the router puts in the kernel (the `weave` bridge, container
//! veths, per-peer VXLAN devices for broadcast, the aya programs and their maps).
//!
//! The controller speaks to it only through the [`Datapath`] trait: the mesh decides
//! (which peers, which endpoints), the data path carries it out. It never decides routes.

pub mod fake;

pub mod dyn_datapath;
pub mod ebpf;
mod error;
pub mod frag_needed;
pub mod garp;
pub mod nat;
pub mod netlink;
pub mod next_hop_watch;
pub mod overlay;
pub mod packet_socket;

pub use error::{DatapathError, NetnsProblem};

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::net::Ipv4Cidr;
use weave_ebpf_common::counters::Reason;

use crate::mesh::peer_name::ShortId;

/// A peer as the data path needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathPeer {
    pub short_id: ShortId,
    /// Where VXLAN for this peer is sent, and the only address VXLAN from it is admitted from.
    pub underlay: Ipv4Addr,
    /// The peer frames for this one are handed to (itself when directly connected).
    pub next_hop: ShortId,
}

/// A request to give a network namespace an `ethwe` interface on the weave bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// Path of the network namespace (e.g. `/run/netns/c1` or `/proc/<pid>/ns/net`).
    pub netns: PathBuf,
    /// Addresses with prefix length, e.g. `10.2.1.1/24`.
    pub addresses: Vec<Ipv4Cidr>,
    /// Who the addresses and names belong to (a Docker container ID); the namespace path
    /// when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Leave the container end of the veth in the host's namespace, down, without
    /// addresses, named [`ebpf::handover_name`] of the host end, for someone else (Docker,
    /// through the network plugin) to move into the container; `netns` is then only a key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hand_over: bool,
    /// The name of the interface in the namespace: [`ebpf::CONTAINER_IFNAME`] (`ethwe`)
    /// when `None`; a CNI runtime chooses it (`CNI_IFNAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
}

/// A container interface the data path has set up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub netns: PathBuf,
    /// Name of the host end of the veth (a port of the weave bridge).
    pub host_ifname: String,
    /// MAC address of `ethwe` inside the namespace.
    pub mac: [u8; 6],
    pub addresses: Vec<Ipv4Cidr>,
    /// Who the addresses and names belong to (a Docker container ID); the namespace path
    /// when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl Endpoint {
    /// The owner of its addresses (IPAM) and names (DNS).
    pub fn owner(&self) -> String {
        self.owner
            .clone()
            .unwrap_or_else(|| self.netns.display().to_string())
    }
}

/// A MAC address as `ip link` prints it.
pub fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatapathCounters {
    /// (reason, packets, bytes) for every [`Reason`].
    pub by_reason: Vec<(Reason, u64, u64)>,
    /// Per peer short ID with any traffic.
    pub by_peer: Vec<PeerTraffic>,
    /// MACs learned behind peers (`REMOTE_MACS`): the frames' destinations the kernel
    /// forwards to without user space, what Weave called its fast-path flows.
    pub learned_macs: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    pub short_id: u16,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Fast-path heartbeats and probes received from the peer.
    pub rx_heartbeats: u64,
    /// Echoes of our heartbeats the peer's kernel answered.
    pub rx_heartbeat_echoes: u64,
    /// The newest path-MTU probe round received from the peer and its largest probe (outer
    /// IPv4 length), over all CPUs.
    pub probe: Option<ProbeSeen>,
}

/// The largest path-MTU probe of the newest round a peer sent that arrived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeSeen {
    pub round: u32,
    /// Outer IPv4 packet length.
    pub largest: u32,
}

impl ProbeSeen {
    /// Merges per-CPU `(round, largest)` pairs: the newest round, its largest probe.
    pub fn merge(per_cpu: impl IntoIterator<Item = (u32, u32)>) -> Option<ProbeSeen> {
        let mut best: Option<ProbeSeen> = None;
        for (round, largest) in per_cpu {
            if round == 0 {
                continue;
            }
            best = Some(match best {
                Some(b) if b.round == round => ProbeSeen {
                    round,
                    largest: b.largest.max(largest),
                },
                Some(b) if !weave_ebpf_common::heartbeat::newer_round(round, b.round) => b,
                _ => ProbeSeen { round, largest },
            });
        }
        best
    }
}

/// A fast-path heartbeat to write into the bridge's port towards the peers: `round` 0 is a
/// plain heartbeat, any other a path-MTU probe whose outer IPv4 packet is `outer_len` long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub peer: u16,
    pub round: u32,
    pub outer_len: u16,
}

/// What the controller asks of the kernel. Implemented by [`ebpf::EbpfDatapath`] (aya
/// programs, maps and netlink) and, for tests of the controller, `fake::FakeDatapath`.
pub trait Datapath: Send + Sync + 'static {
    /// Admits VXLAN from `peer` and sends frames for it through `peer.next_hop`.
    /// Calling it again for the same short ID updates the entry.
    fn add_peer(
        &self,
        peer: DatapathPeer,
    ) -> impl std::future::Future<Output = Result<(), DatapathError>> + Send;
    /// Forgets a peer: no more admission, no more frames to it, its learned MACs flushed.
    fn remove_peer(
        &self,
        short_id: ShortId,
    ) -> impl std::future::Future<Output = Result<(), DatapathError>> + Send;
    /// Admits VXLAN from a directly connected peer whose frames travel another way (the
    /// sleeve), so that its fast-path heartbeats are counted; the fast path sends it nothing
    /// (no route to it, no copy of what the bridge floods, the MACs learned behind it
    /// forgotten).
    /// [`Datapath::add_peer`] makes it an ordinary peer again.
    fn admit_peer(
        &self,
        peer: DatapathPeer,
    ) -> impl std::future::Future<Output = Result<(), DatapathError>> + Send;
    /// Stops sending to `short_id` as a directly connected peer (its control connection is
    /// gone) but keeps what was learned behind it (MACs, ARP answers): the routes may still
    /// reach it through a neighbour, and then [`Datapath::add_peer`] follows at once and
    /// traffic goes on; otherwise [`Datapath::remove_peer`] does. The default removes it.
    fn unroute_peer(
        &self,
        short_id: ShortId,
    ) -> impl std::future::Future<Output = Result<(), DatapathError>> + Send {
        self.remove_peer(short_id)
    }

    /// A peer reached through a neighbour the sleeve carries (its fast path fell back): the
    /// fast path sends it nothing itself, keeps what it learned behind it, and VXLAN relayed
    /// to it by other peers is handed to the sleeve, which routes it on. The default stops
    /// sending to it as [`Datapath::unroute_peer`] does.
    fn leave_to_sleeve(
        &self,
        peer: DatapathPeer,
    ) -> impl std::future::Future<Output = Result<(), DatapathError>> + Send {
        self.unroute_peer(peer.short_id)
    }

    /// Brings the next hop towards each directly connected peer up to date with the
    /// host's routes and neighbour table (called about once a second): a route change
    /// moves the frames the programs address themselves without a restart.
    fn refresh_next_hops(&self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }

    /// Makes the bridge forget the ports it learned `macs` on: they now live behind another
    /// path, and frames for them should reach the data path again. The default does nothing.
    fn forget_bridge_macs(
        &self,
        macs: Vec<[u8; 6]>,
    ) -> impl std::future::Future<Output = Result<(), DatapathError>> + Send {
        let _ = macs;
        async { Ok(()) }
    }
    /// Takes a new short ID for this router (after a clash): VXLAN to and from peers uses it.
    fn set_own_short_id(
        &self,
        short_id: ShortId,
    ) -> impl std::future::Future<Output = Result<(), DatapathError>> + Send;
    /// Sets the neighbours a broadcast from `source` is passed on to (our children in the
    /// source's broadcast tree); an empty list passes nothing on.
    fn set_broadcast_tree(
        &self,
        source: ShortId,
        children: Vec<ShortId>,
    ) -> impl std::future::Future<Output = Result<(), DatapathError>> + Send;
    /// Gives a network namespace an `ethwe` interface on the bridge.
    fn attach(
        &self,
        request: AttachRequest,
    ) -> impl std::future::Future<Output = Result<Endpoint, DatapathError>> + Send;
    /// Takes back the interface of a namespace attached before.
    fn detach(
        &self,
        netns: PathBuf,
    ) -> impl std::future::Future<Output = Result<Endpoint, DatapathError>> + Send;
    /// Takes up an endpoint that a previous run of the router attached (after a restart).
    /// Fails with [`DatapathError::NoSuchEndpoint`] when its interface is gone.
    fn restore_endpoint(
        &self,
        endpoint: Endpoint,
    ) -> impl std::future::Future<Output = Result<(), DatapathError>> + Send;
    /// Endpoints attached now.
    fn endpoints(&self) -> Vec<Endpoint>;
    /// Gives the host an address on the weave bridge, and masquerades what the weave
    /// network sends from that subnet to the outside (`expose`).
    fn expose(
        &self,
        address: Ipv4Cidr,
    ) -> impl std::future::Future<Output = Result<(), DatapathError>> + Send;
    /// Takes an address given by [`Datapath::expose`] away again (`hide`).
    fn hide(
        &self,
        address: Ipv4Cidr,
    ) -> impl std::future::Future<Output = Result<(), DatapathError>> + Send;
    /// Counters summed over CPUs.
    fn counters(&self) -> Result<DatapathCounters, DatapathError>;
    /// The traffic of each peer that had any, summed over CPUs: what the path check reads
    /// every second ([`Datapath::counters`] without the counts by reason and the learned
    /// addresses, which cost a read each).
    fn peer_traffic(&self) -> Result<Vec<PeerTraffic>, DatapathError> {
        Ok(self.counters()?.by_peer)
    }
    /// The MTU given to container interfaces.
    fn container_mtu(&self) -> u32;
    /// The MTU containers get when every path carries it (`--mtu`, or the underlay's less
    /// the VXLAN overhead).
    fn max_container_mtu(&self) -> u32 {
        self.container_mtu()
    }
    /// Gives the bridge and every container interface (both ends) MTU `mtu`, and new ones
    /// too: what the paths to the peers carry, less the VXLAN overhead. The default does
    /// nothing.
    fn set_container_mtu(
        &self,
        mtu: u32,
    ) -> impl std::future::Future<Output = Result<(), DatapathError>> + Send {
        let _ = mtu;
        async { Ok(()) }
    }
    /// Writes heartbeats and probes into the bridge's port towards the peers, where the
    /// programs address them to their peers like copies of a broadcast. The default sends
    /// nothing (no kernel fast path).
    fn send_heartbeats(&self, heartbeats: &[Heartbeat]) -> Result<(), DatapathError> {
        let _ = heartbeats;
        Ok(())
    }
    /// Hands frames relayed to us over the fast path for a peer the sleeve carries (see
    /// [`Datapath::admit_peer`]) to the sleeve, out of its TAP with ifindex `port_ifindex`
    /// (`weave_ebpf_common::handover`); without this they are dropped. The default does
    /// nothing.
    fn hand_relays_to_sleeve(&self, port_ifindex: u32) -> Result<(), DatapathError> {
        let _ = port_ifindex;
        Ok(())
    }
    /// Puts `addr` on the bridge as a local service every attached container reaches (the
    /// DNS server): a route to it in each container, ARP for it answered by the TX program,
    /// answers routed back over the bridge. The default does nothing.
    fn add_service_address(
        &self,
        addr: Ipv4Addr,
    ) -> impl std::future::Future<Output = Result<(), DatapathError>> + Send {
        let _ = addr;
        async { Ok(()) }
    }
    /// Leaves the kernel data path as it is from now on: the process stops and the data
    /// path stays for the next launch to adopt, so what the stop itself would change
    /// (connections closing remove their peers) is not carried out. The default does nothing.
    fn keep_as_is(&self) {}
    /// Removes what the router put in the kernel except the bridge and the container
    /// interfaces: programs, links, pins and VXLAN devices.
    fn shutdown(&self) -> impl std::future::Future<Output = Result<(), DatapathError>> + Send;
}

/// When to attach the XDP admission filter on the underlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum XdpMode {
    /// Only on physical NICs (where it measures faster); never on veth.
    #[default]
    Auto,
    On,
    Off,
}

/// What the data path is started with (from the validated launch configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathSettings {
    /// This router's peer name: names the pin directory `<pin_root>/<peer name>/`.
    pub peer_name: crate::mesh::peer_name::PeerName,
    pub own_short_id: ShortId,
    /// Underlay interface (VXLAN goes out and comes in here).
    pub underlay_iface: String,
    /// This router's underlay IPv4 address (outer source of VXLAN).
    pub underlay_addr: Ipv4Addr,
    /// Container MTU; `None` = underlay MTU − 50.
    pub mtu: Option<u32>,
    pub xdp: XdpMode,
    /// Root of the pin directories, normally `/sys/fs/bpf/weave-router`.
    pub pin_root: PathBuf,
    /// Load the kernel programs. Without them (no privilege to load BPF) the data path is
    /// the bridge and the container interfaces only: no fast path, no subnet isolation,
    /// and frames between hosts go through the sleeve.
    pub programs: bool,
    /// Copy the kernel programs' rare events (refused frames, relays without a route) into
    /// the log (`--log-kernel`); off, the programs are loaded with logging compiled out.
    pub log_kernel: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_probe_records_merge_to_the_newest_round_and_its_largest_probe() {
        assert_eq!(ProbeSeen::merge([(0, 0), (0, 0)]), None);
        let merged = ProbeSeen::merge([(7, 1400), (0, 0), (8, 600), (8, 1200), (7, 1500)]);
        assert_eq!(
            merged,
            Some(ProbeSeen {
                round: 8,
                largest: 1200
            })
        );
        let wrapped = ProbeSeen::merge([(u32::MAX, 1500), (2, 900)]);
        assert_eq!(
            wrapped,
            Some(ProbeSeen {
                round: 2,
                largest: 900
            }),
            "across the wrap"
        );
    }
}
