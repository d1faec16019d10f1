//! For tests: one router's state with something in every field, as the golden tests of
//! `status`, `/report` and `/metrics` read it. host1 (us) is connected to host2 over the
//! fast path, encrypted with a verified MTU, and to host3 over the sleeve; host4 went away
//! and still owns address space; one target is retrying.

use std::collections::BTreeMap;

use crate::datapath::{DatapathCounters, Endpoint, PeerTraffic};
use crate::dns::records::Entry;
use crate::dns::DnsInfo;
use crate::ipam::service::{IpamReport, OwnerShare};
use crate::mesh::peer_name::{PeerName, ShortId};
use crate::mesh::topology::{ConnectionSummary, PeerInfo as Record};
use crate::router::{
    ConnectionInfo, FragNeededCounts, MeshStatus, OverlaySwitches, PeerInfo, RelayedPeer,
};

use super::text::DaemonInfo;

pub fn name(n: u8) -> PeerName {
    PeerName::from_bytes([0x0a, 0, 0, 0, 0, n])
}

fn peer(n: u8) -> PeerInfo {
    PeerInfo {
        name: name(n).to_string(),
        nick_name: format!("host{n}"),
        short_id: n as u16,
        uid: 100 + n as u64,
        underlay: [10, 0, 0, n].into(),
        data_port: 6784,
    }
}

fn connection(n: u8, overlay: &str, encrypted: bool, mtu_verified: bool) -> ConnectionInfo {
    ConnectionInfo {
        outbound: true,
        address: format!("10.0.0.{n}:6783"),
        state: "established".into(),
        info: String::new(),
        encrypted,
        overlay: overlay.into(),
        mtu: if mtu_verified { 1410 } else { 1376 },
        mtu_verified,
        peer: Some(peer(n)),
    }
}

fn record(n: u8, version: u64, links: &[u8]) -> Record {
    let mut r = Record::new(
        name(n),
        format!("host{n}"),
        100 + n as u64,
        ShortId::new(n as u16).unwrap(),
    );
    r.version = version;
    r.underlay = [10, 0, 0, n].into();
    r.connections = links
        .iter()
        .map(|&m| ConnectionSummary {
            remote: name(m),
            address: format!("10.0.0.{m}:6783").parse().unwrap(),
            outbound: n < m,
            established: true,
        })
        .collect();
    r
}

pub fn status() -> MeshStatus {
    let mut unicast = BTreeMap::new();
    unicast.insert(name(2), name(2));
    unicast.insert(name(3), name(3));
    unicast.insert(name(5), name(2));
    let mut broadcast = BTreeMap::new();
    broadcast.insert(name(1), vec![name(2), name(3)]);
    broadcast.insert(name(2), vec![name(3)]);
    MeshStatus {
        protocol_min_version: 1,
        protocol_max_version: 5,
        local: peer(1),
        listen: "10.0.0.1:6783".parse().unwrap(),
        targets: vec![
            "10.0.0.2:6783".into(),
            "10.0.0.3:6783".into(),
            "10.0.0.9:6783".into(),
        ],
        connections: vec![
            connection(2, "fastdp", true, true),
            ConnectionInfo {
                info: "fast path silent for 3s".into(),
                ..connection(3, "sleeve", true, false)
            },
            ConnectionInfo {
                outbound: true,
                address: "10.0.0.9:6783".into(),
                state: "retrying".into(),
                info: "Connection refused (os error 111)".into(),
                encrypted: false,
                overlay: String::new(),
                mtu: 0,
                mtu_verified: false,
                peer: None,
            },
        ],
        mesh: crate::router::gossip::MeshReport {
            peers: vec![
                record(1, 7, &[2, 3]),
                record(2, 5, &[1, 3, 5]),
                record(3, 4, &[1, 2]),
                record(5, 2, &[2]),
            ],
            routes: crate::mesh::routes::Routes { unicast, broadcast },
        },
        discovery: true,
        encryption: true,
        overlay_switches: OverlaySwitches {
            to_sleeve: 3,
            to_fastdp: 2,
        },
        terminations: 4,
        frag_needed: FragNeededCounts {
            honoured: 1,
            ignored: 6,
        },
        relayed: vec![RelayedPeer {
            peer: "0a:00:00:00:00:05(host5)".into(),
            via: "0a:00:00:00:00:02(host2)".into(),
            overlay: "fastdp".into(),
        }],
        trusted_subnets: vec!["10.0.0.0/24".into(), "192.168.7.0/24".into()],
    }
}

pub fn daemon() -> DaemonInfo {
    DaemonInfo {
        version: "0.1.0".into(),
        iface: "eth0".into(),
        xdp: "off".into(),
        container_mtu: 1376,
        endpoints: 2,
        pid: 4242,
    }
}

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            netns: "/run/netns/c1".into(),
            host_ifname: "vethwepl1".into(),
            mac: [0x0a, 0x58, 0, 0, 0, 1],
            addresses: vec!["10.32.0.1/12".parse().unwrap()],
            owner: None,
        },
        Endpoint {
            netns: "/proc/77/ns/net".into(),
            host_ifname: "vethwepl2".into(),
            mac: [0x0a, 0x58, 0, 0, 0, 2],
            addresses: vec![
                "10.32.0.2/12".parse().unwrap(),
                "10.2.1.9/24".parse().unwrap(),
            ],
            owner: Some("4f1c2b3a9d8e7f6a5b4c".into()),
        },
    ]
}

pub fn counters() -> DatapathCounters {
    use weave_ebpf_common::counters::Reason;
    DatapathCounters {
        by_reason: Reason::ALL
            .iter()
            .enumerate()
            .map(|(i, r)| (*r, i as u64, 100 * i as u64))
            .collect(),
        by_peer: vec![PeerTraffic {
            short_id: 2,
            tx_packets: 5,
            tx_bytes: 500,
            rx_packets: 6,
            rx_bytes: 600,
            ..Default::default()
        }],
        learned_macs: 4,
    }
}

pub fn ipam() -> IpamReport {
    IpamReport {
        range: "10.32.0.0/12".into(),
        range_num_ips: 1 << 20,
        default_subnet: "10.32.0.0/12".into(),
        status: "ready".into(),
        owners: vec![
            OwnerShare {
                peer: name(1),
                size: 1 << 19,
                free: (1 << 19) - 2,
                reachable: true,
            },
            OwnerShare {
                peer: name(2),
                size: 1 << 18,
                free: 1 << 18,
                reachable: true,
            },
            OwnerShare {
                peer: name(4),
                size: 1 << 18,
                free: 1 << 18,
                reachable: false,
            },
        ],
        allocations: vec![
            ("/run/netns/c1".into(), "10.32.0.1/12".into()),
            ("4f1c2b3a9d8e7f6a5b4c".into(), "10.32.0.2/12".into()),
        ],
        pending_allocates: 1,
        pending_claims: 0,
    }
}

pub fn dns() -> DnsInfo {
    let entry = |container: &str, origin: u8, addr: [u8; 4], host: &str, tombstone: bool| Entry {
        container_id: container.into(),
        origin: name(origin),
        addr: addr.into(),
        hostname: host.into(),
        version: if tombstone { 2 } else { 1 },
        tombstone,
    };
    DnsInfo {
        domain: "weave.local.".into(),
        listen: "169.254.53.53:53".into(),
        upstream: vec!["10.0.0.254:53".into()],
        ttl: 1,
        entries: vec![
            entry(
                "/run/netns/c1",
                1,
                [10, 32, 0, 1],
                "web.weave.local.",
                false,
            ),
            entry(
                "4f1c2b3a9d8e7f6a5b4c",
                1,
                [10, 32, 0, 2],
                "db.weave.local.",
                false,
            ),
            entry("/run/netns/c0", 1, [10, 32, 0, 7], "old.weave.local.", true),
            entry(
                "/run/netns/x",
                2,
                [10, 32, 64, 1],
                "api.weave.local.",
                false,
            ),
        ],
    }
}
