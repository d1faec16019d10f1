//! The programs' maps as typed tables: [`DatapathMaps`] is the only place that writes them,
//! so the entries one change needs (a peer's `PEERS` entry with its `NEIGHBOUR_PEERS`, a
//! peer's learned MACs with their `NEIGHBOURS`, an endpoint's records) are written in one
//! sequence whoever asks. Which entries a change needs is decided by the pure functions
//! here ([`peer_entries`], [`broadcast_tree`], [`endpoint_record`]).

use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::Ebpf;
use weave_ebpf_common::counters::Reason;
use weave_ebpf_common::maps::{
    BroadcastTree, Counter, DatapathConfig, EndpointAddress, EndpointAddresses, IfindexKey,
    Ipv4Key, LocalEndpoint, MacKey, NeighbourPeer, PeerCounter, PeerEntry, RemoteMac,
    BROADCAST_TREES_MAP, CONFIG_MAP, CONFIG_READY, COUNTERS_MAP, ENDPOINTS_MAP,
    ENDPOINT_ADDRESSES_MAP, MAX_ENDPOINT_ADDRESSES, NEIGHBOURS_MAP, NEIGHBOUR_PEERS_MAP, PEERS_MAP,
    PEER_ADMIT, PEER_COUNTERS_MAP, PEER_REACHABLE, PEER_VIA_SLEEVE, REMOTE_MACS_MAP,
};

use crate::datapath::{DatapathError, DatapathPeer, Endpoint};
use crate::mesh::peer_name::ShortId;

/// What `CONFIG[0]` holds at start.
pub(super) struct StartConfig {
    pub underlay_addr: Ipv4Addr,
    pub underlay_ifindex: u32,
    pub underlay_mac: [u8; 6],
    pub own_short_id: u16,
    pub bridge_port_ifindex: u32,
}

impl StartConfig {
    /// The configuration record, marked ready, without a service address yet.
    pub(super) fn config(&self) -> DatapathConfig {
        DatapathConfig {
            underlay_ipv4: self.underlay_addr.octets(),
            underlay_ifindex: self.underlay_ifindex,
            own_short_id: self.own_short_id,
            flags: CONFIG_READY,
            underlay_mac: self.underlay_mac,
            _pad: [0; 2],
            service_ipv4: [0; 4],
            bridge_port_ifindex: self.bridge_port_ifindex,
            sleeve_port_ifindex: 0,
        }
    }
}

/// How the fast path treats a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PeerUse {
    /// Frames for it go out through its next hop ([`crate::datapath::Datapath::add_peer`]).
    Routed,
    /// A directly connected peer whose frames the sleeve carries: its VXLAN is admitted (its
    /// heartbeats counted), nothing is routed to it, and frames relayed to it over the fast
    /// path are handed to the sleeve ([`crate::datapath::Datapath::admit_peer`]).
    AdmittedOnly,
    /// A peer reached through a neighbour whose frames the sleeve carries: not admitted as
    /// an origin, nothing routed to it, frames relayed to it over the fast path handed to
    /// the sleeve ([`crate::datapath::Datapath::leave_to_sleeve`]).
    RelayedBySleeve,
}

/// Whether frames for `peer` go to it directly (it is its own next hop).
pub(super) fn is_direct(peer: &DatapathPeer) -> bool {
    peer.next_hop == peer.short_id
}

/// What becomes of the `NEIGHBOUR_PEERS` entries naming a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NeighbourPeerChange {
    /// Its underlay address names it: VXLAN from there is its own.
    Claim(Ipv4Key),
    /// Its underlay address names it no more (if it did; another peer's claim stays).
    Release(Ipv4Key),
    /// No address names it.
    ReleaseAll,
}

/// The entries a peer needs: its `PEERS` entry and its `NEIGHBOUR_PEERS` change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PeerEntries {
    pub entry: PeerEntry,
    pub neighbour: NeighbourPeerChange,
}

/// The entries for `peer` used as `usage`; `underlay_mac` is the MAC of the next hop
/// towards it on the underlay (zero when unknown or not direct).
pub(super) fn peer_entries(
    peer: &DatapathPeer,
    usage: PeerUse,
    underlay_mac: [u8; 6],
) -> PeerEntries {
    let key = Ipv4Key {
        addr: peer.underlay.octets(),
    };
    match usage {
        PeerUse::Routed => PeerEntries {
            entry: PeerEntry {
                underlay_ipv4: peer.underlay.octets(),
                flags: PEER_ADMIT | PEER_REACHABLE,
                next_hop: peer.next_hop.get(),
                underlay_mac,
            },
            neighbour: if is_direct(peer) {
                NeighbourPeerChange::Claim(key)
            } else {
                NeighbourPeerChange::Release(key)
            },
        },
        PeerUse::AdmittedOnly => PeerEntries {
            entry: PeerEntry {
                underlay_ipv4: peer.underlay.octets(),
                flags: PEER_ADMIT | PEER_VIA_SLEEVE,
                next_hop: peer.short_id.get(),
                underlay_mac,
            },
            neighbour: NeighbourPeerChange::ReleaseAll,
        },
        PeerUse::RelayedBySleeve => PeerEntries {
            entry: PeerEntry {
                underlay_ipv4: peer.underlay.octets(),
                flags: PEER_VIA_SLEEVE,
                next_hop: peer.next_hop.get(),
                underlay_mac: [0; 6],
            },
            neighbour: NeighbourPeerChange::Release(key),
        },
    }
}

/// The `BROADCAST_TREES` entry for `children` (the first
/// [`weave_ebpf_common::maps::MAX_BROADCAST_CHILDREN`] of
/// them); `None` when there are none (the entry goes).
pub(super) fn broadcast_tree(children: &[ShortId]) -> Option<BroadcastTree> {
    if children.is_empty() {
        return None;
    }
    let mut tree = BroadcastTree::default();
    for (slot, child) in tree.children.iter_mut().zip(children) {
        *slot = child.get();
        tree.count += 1;
    }
    Some(tree)
}

/// The `ENDPOINT_ADDRESSES` record of an endpoint: its MAC and its addresses with their
/// subnets. At most [`MAX_ENDPOINT_ADDRESSES`].
pub(super) fn endpoint_record(endpoint: &Endpoint) -> Result<EndpointAddresses, DatapathError> {
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

/// The programs' maps, typed.
pub(super) struct DatapathMaps {
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

impl DatapathMaps {
    /// Takes the maps out of the loaded object.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, DatapathError>
        where
            T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
        {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| DatapathError::NotInObject {
                    kind: "map",
                    name: name.to_string(),
                })?;
            T::try_from(map).map_err(|e| DatapathError::map(format!("map {name}"), e))
        }
        Ok(Self {
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

    // ---- CONFIG ----

    pub(super) fn write_config(&mut self, config: DatapathConfig) -> Result<(), DatapathError> {
        self.config
            .set(0, config, 0)
            .map_err(|e| DatapathError::map("writing CONFIG", e))
    }

    /// Changes one part of `CONFIG[0]`.
    pub(super) fn update_config(
        &mut self,
        change: impl FnOnce(&mut DatapathConfig),
    ) -> Result<(), DatapathError> {
        let mut config = self
            .config
            .get(&0, 0)
            .map_err(|e| DatapathError::map("reading CONFIG", e))?;
        change(&mut config);
        self.write_config(config)
    }

    // ---- peers: PEERS, NEIGHBOUR_PEERS, BROADCAST_TREES, REMOTE_MACS ----

    /// Writes a peer's `PEERS` entry and its `NEIGHBOUR_PEERS` change.
    pub(super) fn write_peer(
        &mut self,
        id: u16,
        entries: PeerEntries,
    ) -> Result<(), DatapathError> {
        self.peers
            .set(id as u32, entries.entry, 0)
            .map_err(|e| DatapathError::map("writing PEERS", e))?;
        match entries.neighbour {
            NeighbourPeerChange::Claim(key) => self
                .neighbour_peers
                .insert(
                    key,
                    NeighbourPeer {
                        short_id: id,
                        _pad: [0; 2],
                    },
                    0,
                )
                .map_err(|e| DatapathError::map("writing NEIGHBOUR_PEERS", e))?,
            NeighbourPeerChange::Release(key) => {
                if self
                    .neighbour_peers
                    .get(&key, 0)
                    .is_ok_and(|n| n.short_id == id)
                {
                    let _ = self.neighbour_peers.remove(&key);
                }
            }
            NeighbourPeerChange::ReleaseAll => {
                remove_where(&mut self.neighbour_peers, |n| n.short_id == id);
            }
        }
        Ok(())
    }

    /// Takes peer `id` out of `PEERS`, `BROADCAST_TREES` and `NEIGHBOUR_PEERS`; what was
    /// learned behind it stays.
    pub(super) fn clear_peer(&mut self, id: u16) -> Result<(), DatapathError> {
        self.peers
            .set(id as u32, PeerEntry::default(), 0)
            .map_err(|e| DatapathError::map("clearing PEERS", e))?;
        let _ = self.broadcast_trees.remove(&(id as u32));
        remove_where(&mut self.neighbour_peers, |n| n.short_id == id);
        Ok(())
    }

    /// Forgets the MACs learned behind peer `id` (`REMOTE_MACS`) and the ARP answers
    /// (`NEIGHBOURS`) that named them.
    pub(super) fn forget_learned_behind(&mut self, id: u16) {
        let gone = remove_where(&mut self.remote_macs, |v| v.peer_short_id == id);
        remove_where(&mut self.neighbours, |mac| gone.contains(mac));
    }

    /// Points the `PEERS` entry of `id` at a new next-hop MAC on the underlay.
    pub(super) fn set_next_hop_mac(&mut self, id: u16, mac: [u8; 6]) -> Result<(), DatapathError> {
        let mut entry = self.peer(id)?;
        entry.underlay_mac = mac;
        self.peers
            .set(id as u32, entry, 0)
            .map_err(|e| DatapathError::map("writing PEERS", e))
    }

    /// Sets (or, without children, removes) the broadcast tree of `source`.
    pub(super) fn set_broadcast_tree(
        &mut self,
        source: u16,
        children: &[ShortId],
    ) -> Result<(), DatapathError> {
        let key = source as u32;
        match broadcast_tree(children) {
            None => {
                let _ = self.broadcast_trees.remove(&key);
                Ok(())
            }
            Some(tree) => self
                .broadcast_trees
                .insert(key, tree, 0)
                .map_err(|e| DatapathError::map("writing BROADCAST_TREES", e)),
        }
    }

    /// The `PEERS` entry of `id` (all zero when absent).
    pub(super) fn peer(&self, id: u16) -> Result<PeerEntry, DatapathError> {
        self.peers
            .get(&(id as u32), 0)
            .map_err(|e| DatapathError::map("reading PEERS", e))
    }

    /// Short IDs with an entry in `PEERS`.
    pub(super) fn peer_ids(&self) -> Vec<u16> {
        (0..self.peers.len())
            .filter(|&id| {
                self.peers
                    .get(&id, 0)
                    .is_ok_and(|e| e.flags != 0 || e.underlay_ipv4 != [0; 4])
            })
            .map(|id| id as u16)
            .collect()
    }

    /// MACs learned behind peers: (MAC, peer short ID).
    pub(super) fn remote_macs(&self) -> Vec<([u8; 6], u16)> {
        self.remote_macs
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k.addr, v.peer_short_id))
            .collect()
    }

    /// How many MACs are learned behind peers.
    pub(super) fn remote_mac_count(&self) -> u64 {
        self.remote_macs.keys().filter(Result::is_ok).count() as u64
    }

    // ---- endpoints: ENDPOINT_ADDRESSES, ENDPOINTS, NEIGHBOURS ----

    /// Records the addresses of the endpoint whose host end is `host_index` (replacing any
    /// record of the same MAC). They go in before the programs are attached: those drop
    /// what comes from or goes to an interface without a record.
    pub(super) fn record_endpoint_addresses(
        &mut self,
        host_index: u32,
        record: EndpointAddresses,
    ) -> Result<(), DatapathError> {
        self.forget_endpoint_addresses(record.mac);
        self.endpoint_addresses
            .insert(
                IfindexKey {
                    ifindex: host_index,
                },
                record,
                0,
            )
            .map_err(|e| DatapathError::map("writing ENDPOINT_ADDRESSES", e))
    }

    /// Removes the address record of the endpoint with `mac`.
    pub(super) fn forget_endpoint_addresses(&mut self, mac: [u8; 6]) {
        remove_where(&mut self.endpoint_addresses, |v| v.mac == mac);
    }

    /// Makes an endpoint known: frames for its MAC go to `host_index`, ARP for its
    /// addresses is answered with its MAC.
    pub(super) fn add_endpoint(
        &mut self,
        endpoint: &Endpoint,
        host_index: u32,
    ) -> Result<(), DatapathError> {
        self.endpoints
            .insert(
                MacKey::new(endpoint.mac),
                LocalEndpoint {
                    host_ifindex: host_index,
                    flags: 0,
                },
                0,
            )
            .map_err(|e| DatapathError::map("writing ENDPOINTS", e))?;
        for a in &endpoint.addresses {
            self.add_neighbour(a.addr, endpoint.mac)?;
        }
        Ok(())
    }

    /// MACs in `ENDPOINTS` and in `ENDPOINT_ADDRESSES`.
    pub(super) fn endpoint_macs(&self) -> Vec<[u8; 6]> {
        let mut macs: Vec<[u8; 6]> = self
            .endpoints
            .keys()
            .filter_map(Result::ok)
            .map(|k| k.addr)
            .chain(
                self.endpoint_addresses
                    .iter()
                    .filter_map(Result::ok)
                    .map(|(_, v)| v.mac),
            )
            .collect();
        macs.sort_unstable();
        macs.dedup();
        macs
    }

    /// Forgets every entry naming the endpoint MAC `mac`: `ENDPOINTS`, its address record and
    /// the ARP answers.
    pub(super) fn forget_endpoint_mac(&mut self, mac: [u8; 6]) {
        let _ = self.endpoints.remove(&MacKey::new(mac));
        self.forget_endpoint_addresses(mac);
        remove_where(&mut self.neighbours, |m| m.addr == mac);
    }

    /// Forgets an endpoint's MAC and the ARP answers that still name it.
    pub(super) fn forget_endpoint(&mut self, endpoint: &Endpoint) {
        let _ = self.endpoints.remove(&MacKey::new(endpoint.mac));
        for a in &endpoint.addresses {
            let key = Ipv4Key {
                addr: a.addr.octets(),
            };
            if self.neighbours.get(&key, 0).ok().map(|m| m.addr) == Some(endpoint.mac) {
                let _ = self.neighbours.remove(&key);
            }
        }
    }

    /// ARP for `addr` is answered with `mac`.
    pub(super) fn add_neighbour(
        &mut self,
        addr: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), DatapathError> {
        self.neighbours
            .insert(
                Ipv4Key {
                    addr: addr.octets(),
                },
                MacKey::new(mac),
                0,
            )
            .map_err(|e| DatapathError::map("writing NEIGHBOURS", e))
    }

    /// IPv4 → MAC entries of `NEIGHBOURS`.
    pub(super) fn neighbours(&self) -> Vec<(Ipv4Addr, [u8; 6])> {
        self.neighbours
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (Ipv4Addr::from(k.addr), v.addr))
            .collect()
    }

    // ---- COUNTERS, PEER_COUNTERS ----

    /// The per-CPU counters of one reason.
    pub(super) fn reason_counters(&self, reason: Reason) -> Result<Vec<Counter>, DatapathError> {
        let v = self
            .counters
            .get(&(reason as u32), 0)
            .map_err(|e| DatapathError::map("reading COUNTERS", e))?;
        Ok(v.iter().copied().collect())
    }

    /// The per-CPU traffic counters of peer `id`.
    pub(super) fn peer_counters(&self, id: u16) -> Result<Vec<PeerCounter>, DatapathError> {
        let v = self
            .peer_counters
            .get(&(id as u32), 0)
            .map_err(|e| DatapathError::map("reading PEER_COUNTERS", e))?;
        Ok(v.iter().copied().collect())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Ipv4Cidr;
    use weave_ebpf_common::maps::MAX_BROADCAST_CHILDREN;

    fn id(v: u16) -> ShortId {
        ShortId::new(v).unwrap()
    }

    fn peer(short_id: u16, next_hop: u16) -> DatapathPeer {
        DatapathPeer {
            short_id: id(short_id),
            underlay: Ipv4Addr::new(192, 168, 0, short_id as u8),
            next_hop: id(next_hop),
        }
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

    #[test]
    fn a_direct_peer_is_admitted_reachable_and_claims_its_underlay_address() {
        let e = peer_entries(&peer(5, 5), PeerUse::Routed, MAC);
        assert_eq!(
            e.entry,
            PeerEntry {
                underlay_ipv4: [192, 168, 0, 5],
                flags: PEER_ADMIT | PEER_REACHABLE,
                next_hop: 5,
                underlay_mac: MAC,
            }
        );
        assert_eq!(
            e.neighbour,
            NeighbourPeerChange::Claim(Ipv4Key {
                addr: [192, 168, 0, 5]
            })
        );
    }

    #[test]
    fn a_peer_behind_a_neighbour_goes_through_it_and_claims_no_address() {
        let e = peer_entries(&peer(7, 5), PeerUse::Routed, [0; 6]);
        assert_eq!(e.entry.next_hop, 5);
        assert_eq!(e.entry.flags, PEER_ADMIT | PEER_REACHABLE);
        assert_eq!(
            e.neighbour,
            NeighbourPeerChange::Release(Ipv4Key {
                addr: [192, 168, 0, 7]
            })
        );
    }

    #[test]
    fn a_peer_on_the_sleeve_is_admitted_not_reachable_and_its_relays_go_to_the_sleeve() {
        // Whatever next hop the routes give, it is its own: only its heartbeats matter.
        let e = peer_entries(&peer(7, 5), PeerUse::AdmittedOnly, MAC);
        assert_eq!(
            e.entry,
            PeerEntry {
                underlay_ipv4: [192, 168, 0, 7],
                flags: PEER_ADMIT | PEER_VIA_SLEEVE,
                next_hop: 7,
                underlay_mac: MAC,
            }
        );
        assert_eq!(e.neighbour, NeighbourPeerChange::ReleaseAll);
    }

    #[test]
    fn a_peer_behind_a_neighbour_on_the_sleeve_is_only_handed_to_the_sleeve() {
        let e = peer_entries(&peer(7, 5), PeerUse::RelayedBySleeve, MAC);
        assert_eq!(
            e.entry,
            PeerEntry {
                underlay_ipv4: [192, 168, 0, 7],
                flags: PEER_VIA_SLEEVE,
                next_hop: 5,
                underlay_mac: [0; 6],
            }
        );
        assert_eq!(
            e.neighbour,
            NeighbourPeerChange::Release(Ipv4Key {
                addr: [192, 168, 0, 7]
            })
        );
    }

    #[test]
    fn a_broadcast_tree_lists_its_children_and_none_means_no_entry() {
        assert_eq!(broadcast_tree(&[]), None);
        let tree = broadcast_tree(&[id(3), id(9)]).unwrap();
        assert_eq!(tree.count, 2);
        assert_eq!(&tree.children[..3], &[3, 9, 0]);
    }

    #[test]
    fn a_broadcast_tree_keeps_only_as_many_children_as_fit() {
        let many: Vec<ShortId> = (1..=MAX_BROADCAST_CHILDREN as u16 + 10).map(id).collect();
        let tree = broadcast_tree(&many).unwrap();
        assert_eq!(tree.count as usize, MAX_BROADCAST_CHILDREN);
        assert_eq!(
            tree.children[MAX_BROADCAST_CHILDREN - 1],
            MAX_BROADCAST_CHILDREN as u16
        );
    }

    fn endpoint(addresses: &[&str]) -> Endpoint {
        Endpoint {
            netns: "/run/netns/c1".into(),
            host_ifname: "vethwe00000001".into(),
            mac: MAC,
            addresses: addresses
                .iter()
                .map(|a| a.parse::<Ipv4Cidr>().unwrap())
                .collect(),
            owner: None,
        }
    }

    #[test]
    fn an_endpoint_record_holds_its_mac_and_every_address_with_its_subnet() {
        let record = endpoint_record(&endpoint(&["10.2.1.5/24", "10.3.0.1/16"])).unwrap();
        assert_eq!(record.mac, MAC);
        assert_eq!(record.count, 2);
        assert_eq!(record.addrs[0], EndpointAddress::new([10, 2, 1, 5], 24));
        assert_eq!(record.addrs[1], EndpointAddress::new([10, 3, 0, 1], 16));
    }

    #[test]
    fn an_endpoint_with_more_addresses_than_fit_is_refused() {
        let many: Vec<String> = (0..=MAX_ENDPOINT_ADDRESSES)
            .map(|i| format!("10.2.1.{i}/24"))
            .collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(matches!(
            endpoint_record(&endpoint(&refs)),
            Err(DatapathError::TooManyAddresses { count, max }) if count == MAX_ENDPOINT_ADDRESSES + 1 && max == MAX_ENDPOINT_ADDRESSES
        ));
    }

    #[test]
    fn the_start_configuration_is_ready_and_has_no_service_address() {
        let config = StartConfig {
            underlay_addr: Ipv4Addr::new(192, 168, 0, 1),
            underlay_ifindex: 2,
            underlay_mac: MAC,
            own_short_id: 17,
            bridge_port_ifindex: 9,
        }
        .config();
        assert_eq!(config.flags, CONFIG_READY);
        assert_eq!(config.underlay_ipv4, [192, 168, 0, 1]);
        assert_eq!(config.service_ipv4, [0; 4]);
        assert_eq!(
            config.sleeve_port_ifindex, 0,
            "no sleeve to hand frames to yet"
        );
        assert_eq!((config.own_short_id, config.bridge_port_ifindex), (17, 9));
    }
}
