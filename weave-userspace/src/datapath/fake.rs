//! An in-memory data path that records what the controller asks of it, for tests of the
//! controller (and for running the control plane without privileges).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::{
    AttachRequest, Datapath, DatapathCounters, DatapathError, DatapathPeer, Endpoint, NetnsProblem,
    PeerTraffic,
};
use crate::mesh::peer_name::ShortId;
use crate::net::Ipv4Cidr;
use weave_ebpf_common::counters::Reason;

/// One call made on the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeCall {
    AddPeer(DatapathPeer),
    AdmitPeer(DatapathPeer),
    RemovePeer(ShortId),
    ForgetBridgeMacs(Vec<[u8; 6]>),
    BroadcastTree(ShortId, Vec<ShortId>),
    OwnShortId(ShortId),
    Attach(PathBuf),
    Detach(PathBuf),
    Restore(PathBuf),
    Shutdown,
}

#[derive(Debug, Default)]
struct FakeState {
    peers: BTreeMap<ShortId, DatapathPeer>,
    /// Peers admitted without a route ([`Datapath::admit_peer`]).
    admitted: BTreeMap<ShortId, DatapathPeer>,
    /// Packets received from each peer, as tests set them.
    rx_packets: BTreeMap<u16, u64>,
    broadcast_trees: BTreeMap<ShortId, Vec<ShortId>>,
    endpoints: BTreeMap<PathBuf, Endpoint>,
    calls: Vec<FakeCall>,
    fail_add_peer: Option<String>,
    shut_down: bool,
    next_mac: u8,
    exposed: Vec<Ipv4Cidr>,
}

/// Keeps peers and endpoints in memory.
#[derive(Debug, Default)]
pub struct FakeDatapath {
    state: Mutex<FakeState>,
    mtu: u32,
}

impl FakeDatapath {
    pub fn new() -> Self {
        Self {
            state: Mutex::default(),
            mtu: 1450,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Peers installed now.
    pub fn peers(&self) -> Vec<DatapathPeer> {
        self.lock().peers.values().copied().collect()
    }

    /// Peers admitted without a route ([`Datapath::admit_peer`]).
    pub fn admitted(&self) -> Vec<DatapathPeer> {
        self.lock().admitted.values().copied().collect()
    }

    /// Sets the packets counted as received from peer `short_id` (its fast-path heartbeats).
    pub fn set_rx_packets(&self, short_id: u16, packets: u64) {
        self.lock().rx_packets.insert(short_id, packets);
    }

    /// Broadcast trees installed: source → children.
    pub fn broadcast_trees(&self) -> BTreeMap<ShortId, Vec<ShortId>> {
        self.lock().broadcast_trees.clone()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    pub fn is_shut_down(&self) -> bool {
        self.lock().shut_down
    }

    /// Makes every later `add_peer` fail with this message (`None` heals it).
    pub fn fail_add_peer(&self, message: Option<&str>) {
        self.lock().fail_add_peer = message.map(str::to_string);
    }
}

impl Datapath for FakeDatapath {
    async fn add_peer(&self, peer: DatapathPeer) -> Result<(), DatapathError> {
        let mut s = self.lock();
        s.calls.push(FakeCall::AddPeer(peer));
        if let Some(m) = &s.fail_add_peer {
            return Err(DatapathError::Bpf(m.clone()));
        }
        s.admitted.remove(&peer.short_id);
        s.peers.insert(peer.short_id, peer);
        Ok(())
    }

    async fn admit_peer(&self, peer: DatapathPeer) -> Result<(), DatapathError> {
        let mut s = self.lock();
        s.calls.push(FakeCall::AdmitPeer(peer));
        s.peers.remove(&peer.short_id);
        s.admitted.insert(peer.short_id, peer);
        Ok(())
    }

    async fn forget_bridge_macs(&self, macs: Vec<[u8; 6]>) -> Result<(), DatapathError> {
        self.lock().calls.push(FakeCall::ForgetBridgeMacs(macs));
        Ok(())
    }

    async fn remove_peer(&self, short_id: ShortId) -> Result<(), DatapathError> {
        let mut s = self.lock();
        s.calls.push(FakeCall::RemovePeer(short_id));
        s.peers.remove(&short_id);
        s.admitted.remove(&short_id);
        s.broadcast_trees.remove(&short_id);
        Ok(())
    }

    async fn set_own_short_id(&self, short_id: ShortId) -> Result<(), DatapathError> {
        let mut s = self.lock();
        s.calls.push(FakeCall::OwnShortId(short_id));
        Ok(())
    }

    async fn set_broadcast_tree(
        &self,
        source: ShortId,
        children: Vec<ShortId>,
    ) -> Result<(), DatapathError> {
        let mut s = self.lock();
        s.calls
            .push(FakeCall::BroadcastTree(source, children.clone()));
        if children.is_empty() {
            s.broadcast_trees.remove(&source);
        } else {
            s.broadcast_trees.insert(source, children);
        }
        Ok(())
    }

    async fn attach(&self, request: AttachRequest) -> Result<Endpoint, DatapathError> {
        let mut s = self.lock();
        s.calls.push(FakeCall::Attach(request.netns.clone()));
        if !request.hand_over && !request.netns.exists() {
            return Err(DatapathError::Netns {
                path: request.netns,
                reason: NetnsProblem::Open(std::io::ErrorKind::NotFound.into()),
            });
        }
        if s.endpoints.contains_key(&request.netns) {
            return Err(DatapathError::AlreadyAttached(request.netns));
        }
        s.next_mac = s.next_mac.wrapping_add(1);
        let n = s.next_mac;
        let endpoint = Endpoint {
            netns: request.netns.clone(),
            host_ifname: format!("vethwe{n}"),
            mac: [0x02, 0, 0, 0, 0, n],
            addresses: request.addresses,
            owner: request.owner,
        };
        s.endpoints.insert(request.netns, endpoint.clone());
        Ok(endpoint)
    }

    async fn detach(&self, netns: PathBuf) -> Result<Endpoint, DatapathError> {
        let mut s = self.lock();
        s.calls.push(FakeCall::Detach(netns.clone()));
        s.endpoints
            .remove(&netns)
            .ok_or(DatapathError::NoSuchEndpoint(netns))
    }

    async fn restore_endpoint(&self, endpoint: Endpoint) -> Result<(), DatapathError> {
        let mut s = self.lock();
        s.calls.push(FakeCall::Restore(endpoint.netns.clone()));
        if !endpoint.netns.exists() {
            return Err(DatapathError::NoSuchEndpoint(endpoint.netns));
        }
        s.endpoints.insert(endpoint.netns.clone(), endpoint);
        Ok(())
    }

    async fn expose(&self, address: Ipv4Cidr) -> Result<(), DatapathError> {
        self.lock().exposed.push(address);
        Ok(())
    }

    async fn hide(&self, address: Ipv4Cidr) -> Result<(), DatapathError> {
        self.lock().exposed.retain(|a| *a != address);
        Ok(())
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        self.lock().endpoints.values().cloned().collect()
    }

    fn counters(&self) -> Result<DatapathCounters, DatapathError> {
        let s = self.lock();
        Ok(DatapathCounters {
            by_reason: Reason::ALL.iter().map(|r| (*r, 0, 0)).collect(),
            by_peer: s
                .peers
                .keys()
                .chain(s.admitted.keys())
                .map(|id| PeerTraffic {
                    short_id: id.get(),
                    rx_packets: s.rx_packets.get(&id.get()).copied().unwrap_or(0),
                    ..Default::default()
                })
                .collect(),
            learned_macs: 0,
        })
    }

    fn container_mtu(&self) -> u32 {
        self.mtu
    }

    async fn shutdown(&self) -> Result<(), DatapathError> {
        let mut s = self.lock();
        s.calls.push(FakeCall::Shutdown);
        s.shut_down = true;
        Ok(())
    }
}
