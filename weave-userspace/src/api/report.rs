//! `GET /report`: the whole state of one router as JSON, shaped like Weave's report where
//! Weave had the thing (`Router` with `UnicastRoutes`/`BroadcastRoutes`, `IPAM`, `DNS`), and
//! built by [`report`] from snapshots (pure). The topology page (`GET /`) reads it too.

use serde::Serialize;

use super::text::DaemonInfo;
use super::EndpointView;
use crate::datapath::{format_mac, DatapathCounters, Endpoint};
use crate::dns::DnsInfo;
use crate::ipam::service::IpamReport;
use crate::mesh::peer_name::PeerName;
use crate::router::MeshStatus;

/// What the report is made of: snapshots taken by the handler.
#[derive(Clone, Copy, Debug)]
pub struct ReportInput<'a> {
    pub status: &'a MeshStatus,
    pub daemon: &'a DaemonInfo,
    pub endpoints: &'a [Endpoint],
    /// The data path's counters, when they could be read.
    pub counters: Option<&'a DatapathCounters>,
    pub ipam: Option<&'a IpamReport>,
    pub dns: Option<&'a DnsInfo>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Report {
    pub version: String,
    pub pid: u32,
    pub router: RouterReport,
    pub datapath: DatapathReport,
    /// IP allocation; null when off.
    #[serde(rename = "IPAM")]
    pub ipam: Option<IpamSection>,
    /// weaveDNS; null when off.
    #[serde(rename = "DNS")]
    pub dns: Option<DnsSection>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouterReport {
    pub protocol: String,
    pub protocol_min_version: u8,
    pub protocol_max_version: u8,
    pub encryption: bool,
    pub peer_discovery: bool,
    pub name: String,
    pub nick_name: String,
    #[serde(rename = "ShortID")]
    pub short_id: u16,
    pub listen: String,
    pub targets: Vec<String>,
    pub connections: Vec<crate::router::ConnectionInfo>,
    /// Kept connections lost since the start.
    pub termination_count: u64,
    /// Every peer known through gossip, with its published connections.
    pub peers: Vec<crate::mesh::topology::PeerInfo>,
    /// Unicast next hops and, per broadcast source, the neighbours we pass it on to.
    pub routes: crate::mesh::routes::Routes,
    /// The unicast routes as Weave lists them: destination and the neighbour towards it.
    pub unicast_routes: Vec<UnicastRoute>,
    /// The broadcast routes as Weave lists them: source and the neighbours we pass on to.
    pub broadcast_routes: Vec<BroadcastRoute>,
    /// Peers reached through a neighbour, and the path that carries them from here.
    pub relayed: Vec<crate::router::RelayedPeer>,
    /// The underlay subnets this router trusts (`--trusted-subnets`).
    pub trusted_subnets: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct UnicastRoute {
    pub dest: String,
    pub via: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct BroadcastRoute {
    pub dest: String,
    pub via: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DatapathReport {
    pub interface: String,
    pub underlay: std::net::Ipv4Addr,
    #[serde(rename = "XDP")]
    pub xdp: String,
    #[serde(rename = "ContainerMTU")]
    pub container_mtu: u32,
    pub endpoints: Vec<EndpointView>,
    /// The attached containers with the names weaveDNS holds for them.
    pub containers: Vec<ContainerReport>,
    /// Fast-path traffic with each peer that had any.
    pub traffic: Vec<PeerTrafficReport>,
    /// MACs the kernel learned behind peers (`weave_flows`); null when unreadable.
    #[serde(rename = "LearnedMACs")]
    pub learned_macs: Option<u64>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerReport {
    /// The owner of its addresses and names: a Docker container ID (12 characters) or the
    /// network namespace's path.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its weaveDNS names, without the trailing dot.
    pub names: Vec<String>,
    #[serde(rename = "MAC")]
    pub mac: String,
    pub addresses: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct PeerTrafficReport {
    pub peer: String,
    pub nick_name: String,
    #[serde(rename = "ShortID")]
    pub short_id: u16,
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub received_packets: u64,
    pub received_bytes: u64,
}

/// IP allocation, with Weave's field names where it had the field.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct IpamSection {
    pub range: String,
    #[serde(rename = "RangeNumIPs")]
    pub range_num_ips: u64,
    /// Addresses allocated by this peer.
    #[serde(rename = "ActiveIPs")]
    pub active_ips: u64,
    pub default_subnet: String,
    /// Ready, or what it waits for.
    pub status: String,
    /// Each owner's share of the range.
    pub entries: Vec<IpamEntry>,
    /// This peer's allocations.
    pub allocations: Vec<IpamAllocation>,
    /// Allocations waiting (a count, where Weave listed them).
    pub pending_allocates: u64,
    /// Claims waiting.
    pub pending_claims: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct IpamEntry {
    pub peer: String,
    pub nickname: String,
    pub size: u64,
    pub free: u64,
    /// Whether the owner is reachable (ourselves included).
    pub is_known_peer: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct IpamAllocation {
    pub owner: String,
    pub address: String,
}

/// weaveDNS, with Weave's field names.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct DnsSection {
    pub domain: String,
    pub upstream: Vec<String>,
    /// Where it listens.
    pub address: String,
    #[serde(rename = "TTL")]
    pub ttl: u32,
    pub entries: Vec<DnsEntry>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct DnsEntry {
    pub hostname: String,
    pub origin: String,
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    pub address: String,
    pub version: u64,
    pub tombstone: bool,
}

/// The report of one router.
pub fn report(input: ReportInput<'_>) -> Report {
    let s = input.status;
    let d = input.daemon;
    let nickname = |name: &PeerName| {
        s.mesh
            .peers
            .iter()
            .find(|p| p.name == *name)
            .map(|p| p.nickname.clone())
            .unwrap_or_default()
    };
    Report {
        version: d.version.clone(),
        pid: d.pid,
        router: RouterReport {
            protocol: "weave-router".into(),
            protocol_min_version: s.protocol_min_version,
            protocol_max_version: s.protocol_max_version,
            encryption: s.encryption,
            peer_discovery: s.discovery,
            name: s.local.name.clone(),
            nick_name: s.local.nick_name.clone(),
            short_id: s.local.short_id,
            listen: s.listen.to_string(),
            targets: s.targets.clone(),
            connections: s.connections.clone(),
            termination_count: s.terminations,
            peers: s.mesh.peers.clone(),
            routes: s.mesh.routes.clone(),
            unicast_routes: s
                .mesh
                .routes
                .unicast
                .iter()
                .map(|(dest, via)| UnicastRoute {
                    dest: dest.to_string(),
                    via: via.to_string(),
                })
                .collect(),
            broadcast_routes: s
                .mesh
                .routes
                .broadcast
                .iter()
                .map(|(dest, via)| BroadcastRoute {
                    dest: dest.to_string(),
                    via: via.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            relayed: s.relayed.clone(),
            trusted_subnets: s.trusted_subnets.clone(),
        },
        datapath: DatapathReport {
            interface: d.iface.clone(),
            underlay: s.local.underlay,
            xdp: d.xdp.clone(),
            container_mtu: d.container_mtu,
            endpoints: input.endpoints.iter().map(EndpointView::from).collect(),
            containers: input
                .endpoints
                .iter()
                .map(|e| container(e, input.dns))
                .collect(),
            traffic: input
                .counters
                .map(|c| {
                    c.by_peer
                        .iter()
                        .map(|t| {
                            let known =
                                s.mesh.peers.iter().find(|p| p.short_id.get() == t.short_id);
                            PeerTrafficReport {
                                peer: known.map(|p| p.name.to_string()).unwrap_or_default(),
                                nick_name: known.map(|p| p.nickname.clone()).unwrap_or_default(),
                                short_id: t.short_id,
                                sent_packets: t.tx_packets,
                                sent_bytes: t.tx_bytes,
                                received_packets: t.rx_packets,
                                received_bytes: t.rx_bytes,
                            }
                        })
                        .collect()
                })
                .unwrap_or_default(),
            learned_macs: input.counters.map(|c| c.learned_macs),
        },
        ipam: input.ipam.map(|i| IpamSection {
            range: i.range.clone(),
            range_num_ips: i.range_num_ips,
            active_ips: i.allocations.len() as u64,
            default_subnet: i.default_subnet.clone(),
            status: i.status.clone(),
            entries: i
                .owners
                .iter()
                .map(|o| IpamEntry {
                    peer: o.peer.to_string(),
                    nickname: nickname(&o.peer),
                    size: o.size,
                    free: o.free,
                    is_known_peer: o.reachable,
                })
                .collect(),
            allocations: i
                .allocations
                .iter()
                .map(|(owner, address)| IpamAllocation {
                    owner: owner.clone(),
                    address: address.clone(),
                })
                .collect(),
            pending_allocates: i.pending_allocates,
            pending_claims: i.pending_claims,
        }),
        dns: input.dns.map(|dns| DnsSection {
            domain: dns.domain.clone(),
            upstream: dns.upstream.clone(),
            address: dns.listen.clone(),
            ttl: dns.ttl,
            entries: dns
                .entries
                .iter()
                .map(|e| DnsEntry {
                    hostname: e.hostname.clone(),
                    origin: e.origin.to_string(),
                    container_id: e.container_id.clone(),
                    address: e.addr.to_string(),
                    version: e.version,
                    tombstone: e.tombstone,
                })
                .collect(),
        }),
    }
}

/// An attached container with its live DNS names.
fn container(e: &Endpoint, dns: Option<&DnsInfo>) -> ContainerReport {
    let owner = e.owner();
    let mut names: Vec<String> = dns
        .map(|d| {
            d.entries
                .iter()
                .filter(|n| !n.tombstone && n.container_id == owner)
                .map(|n| n.hostname.trim_end_matches('.').to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    ContainerReport {
        id: match &e.owner {
            Some(o) => crate::node::containers::short_id(o).to_string(),
            None => e.netns.display().to_string(),
        },
        names,
        mac: format_mac(&e.mac),
        addresses: e.addresses.iter().map(ToString::to_string).collect(),
    }
}

#[cfg(test)]
mod tests;
