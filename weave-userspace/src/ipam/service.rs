//! IPAM as a running service: the pure [`Ipam`] state machine behind a lock, its state
//! persisted crash-safely before any peer hears of it, its messages carried by the mesh's
//! IPAM gossip channel, and requests that wait (bounded) for consensus or a donation.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use super::allocator::AllocError;
use super::consensus::IpamStatus;
use super::node::{Effect, Handled, Ipam, IpamError, Message, Step};
use crate::mesh::gossip_channel::{ChannelId, GossipChannel, GossipChannelError, Gossiper};
use crate::mesh::peer_name::PeerName;
use crate::net::Ipv4Cidr;
use crate::net::{AddrRange, Ipv4Net};
use crate::state::{StateDir, StateError};

/// Longest an allocation waits for consensus, the ring or a donation.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often unanswered requests are forgotten and votes re-proposed.
pub const TICK_INTERVAL: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum IpamServiceError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("cannot store the IP allocation state: {0}")]
    Store(#[from] StateError),
    #[error("IP allocation did not finish within {}s: {status}", REQUEST_TIMEOUT.as_secs())]
    Timeout { status: String },
}

impl IpamServiceError {
    /// Whether the request itself was wrong (as opposed to the service not being able to
    /// serve it now).
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            Self::Ipam(IpamError::Alloc(
                AllocError::OutsideRange { .. }
                    | AllocError::InUse { .. }
                    | AllocError::Reserved { .. }
                    | AllocError::NotAllocated { .. }
                    | AllocError::BadOwner(_)
                    | AllocError::OwnedByOther { .. }
            ))
        )
    }
}

/// Which peers we can reach now (asked for donations; their space counts as usable).
pub type Reachable = Box<dyn Fn(PeerName) -> bool + Send + Sync>;

/// One router's IPAM.
pub struct IpamService {
    ipam: Mutex<Ipam>,
    store: Option<Arc<StateDir>>,
    gossiper: OnceLock<Gossiper>,
    reachable: OnceLock<Reachable>,
    /// Woken whenever the state changed: waiting requests try again.
    changed: tokio::sync::Notify,
    /// Set by `reset`: the stored state is gone and is not written again.
    forgotten: std::sync::atomic::AtomicBool,
}

/// What `status ipam` shows.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamReport {
    pub range: String,
    pub default_subnet: String,
    pub status: String,
    /// Each owner's share of the range: (peer, addresses owned, of them free).
    pub owners: Vec<OwnerShare>,
    /// Our allocations: owner ID → address.
    pub allocations: Vec<(String, String)>,
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct OwnerShare {
    pub peer: PeerName,
    pub size: u64,
    pub free: u64,
    pub reachable: bool,
}

fn encode(message: &Message) -> Vec<u8> {
    postcard::to_stdvec(message).expect("IPAM messages serialise")
}

/// Decodes an IPAM gossip payload; every byte must belong to the message.
pub fn decode(payload: &[u8]) -> Result<Message, GossipChannelError> {
    let (message, rest) =
        postcard::take_from_bytes::<Message>(payload).map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(message)
}

fn malformed(reason: String) -> GossipChannelError {
    GossipChannelError::Malformed {
        channel: ChannelId::Ipam,
        reason,
    }
}

impl IpamService {
    /// For tests: 10.2.0.0/16 (default subnet 10.2.1.0/24), `me` its only seed, in memory.
    #[cfg(test)]
    pub(crate) fn alone(me: PeerName) -> Arc<Self> {
        let ipam = Ipam::new(
            me,
            "10.2.0.0/16".parse().expect("a network"),
            "10.2.1.0/24".parse().expect("a network"),
            crate::ipam::consensus::InitMode::Seed(vec![me]),
            1,
        )
        .expect("a seed IPAM");
        Self::new(ipam, None)
    }

    /// `store` keeps the state across restarts (`None`: in memory only).
    pub fn new(ipam: Ipam, store: Option<Arc<StateDir>>) -> Arc<Self> {
        Arc::new(Self {
            ipam: Mutex::new(ipam),
            store,
            gossiper: OnceLock::new(),
            reachable: OnceLock::new(),
            changed: tokio::sync::Notify::new(),
            forgotten: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Connects the service to the mesh: how to send, and whom we reach.
    pub fn connect(&self, gossiper: Gossiper, reachable: Reachable) {
        let _ = self.gossiper.set(gossiper);
        let _ = self.reachable.set(reachable);
    }

    fn lock(&self) -> MutexGuard<'_, Ipam> {
        self.ipam.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reachable(&self, peer: PeerName) -> bool {
        self.reachable.get().is_some_and(|r| r(peer))
    }

    /// Carries out `effects` in order: the state is persisted (under the lock, so stores
    /// happen in the order of changes) before any message leaves.
    fn carry_out(&self, ipam: &Ipam, effects: Vec<Effect>) -> Result<Vec<Effect>, StateError> {
        let mut outgoing = Vec::new();
        for effect in effects {
            match effect {
                Effect::Persist => {
                    if self.forgotten.load(std::sync::atomic::Ordering::Relaxed) {
                        continue;
                    }
                    if let Some(store) = &self.store {
                        store.save_ipam(&ipam.state())?;
                    }
                }
                other => outgoing.push(other),
            }
        }
        Ok(outgoing)
    }

    /// Sends messages (after the lock is released).
    fn send(&self, outgoing: Vec<Effect>) {
        let Some(gossiper) = self.gossiper.get() else {
            return;
        };
        for effect in outgoing {
            match effect {
                Effect::Broadcast(m) => gossiper.broadcast(encode(&m)),
                Effect::Send(to, m) => gossiper.unicast(to, encode(&m)),
                Effect::Persist => {}
            }
        }
    }

    /// Runs one step on the state machine, persists, sends; wakes waiters if asked.
    fn step<T>(
        &self,
        f: impl FnOnce(&mut Ipam, &dyn Fn(PeerName) -> bool) -> Result<(T, Vec<Effect>), IpamError>,
    ) -> Result<T, IpamServiceError> {
        let (value, outgoing) = {
            let mut ipam = self.lock();
            let reachable = |p: PeerName| self.reachable(p);
            let (value, effects) = f(&mut ipam, &reachable)?;
            let outgoing = self.carry_out(&ipam, effects)?;
            (value, outgoing)
        };
        self.send(outgoing);
        Ok(value)
    }

    /// Retries `attempt` whenever the state changes until it is done, up to
    /// [`REQUEST_TIMEOUT`].
    async fn until_done<T>(
        &self,
        mut attempt: impl FnMut() -> Result<Step<T>, IpamServiceError>,
    ) -> Result<T, IpamServiceError> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Step::Done(v) = attempt()? {
                return Ok(v);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(IpamServiceError::Timeout {
                    status: self.status_line(),
                });
            }
        }
    }

    /// Allocates an address for `owner` in `subnet` (the default subnet when `None`),
    /// waiting for initialisation or a donation when needed. Asking again for the same
    /// owner and subnet returns the same address.
    pub async fn allocate(
        &self,
        owner: &str,
        subnet: Option<Ipv4Net>,
    ) -> Result<Ipv4Cidr, IpamServiceError> {
        self.until_done(|| {
            self.step(|ipam, reachable| ipam.allocate(owner, subnet, reachable, rand::random()))
        })
        .await
    }

    /// Claims a given address for `owner` (`ip:CIDR`, or an address in use before a restart).
    pub async fn claim(&self, owner: &str, address: Ipv4Cidr) -> Result<(), IpamServiceError> {
        self.until_done(|| self.step(|ipam, _| ipam.claim_address(owner, address)))
            .await
    }

    /// Releases every address of `owner`; returns them.
    pub fn release(&self, owner: &str) -> Result<Vec<Ipv4Cidr>, IpamServiceError> {
        self.step(|ipam, _| Ok(ipam.release(owner)))
    }

    /// Releases one address of `owner`.
    pub fn release_address(&self, owner: &str, addr: Ipv4Addr) -> Result<(), IpamServiceError> {
        self.step(|ipam, _| ipam.release_address(owner, addr).map(|e| ((), e)))
    }

    /// Everyone with an address here.
    pub fn owners(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .lock()
            .allocator()
            .allocations()
            .map(|a| a.owner.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The addresses allocated to `owner`.
    pub fn addresses_of(&self, owner: &str) -> Vec<Ipv4Cidr> {
        self.lock().allocator().addresses_of(owner)
    }

    /// `rmpeer`: takes over a dead peer's space; returns what was taken.
    pub fn remove_peer(&self, dead: PeerName) -> Result<Vec<AddrRange>, IpamServiceError> {
        let taken = self.step(|ipam, _| ipam.remove_peer(dead))?;
        self.changed.notify_waiters();
        Ok(taken)
    }

    /// `reset`: hands all our space to `heir` (a reachable peer) and drops allocations.
    pub fn leave(&self, heir: PeerName) -> Result<Vec<AddrRange>, IpamServiceError> {
        self.step(|ipam, _| ipam.leave(heir))
    }

    /// `reset`: removes the stored state and stops storing (the router is about to stop).
    pub fn forget_stored(&self) -> Result<(), IpamServiceError> {
        let _ipam = self.lock();
        self.forgotten
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(store) = &self.store {
            store.remove_ipam()?;
        }
        Ok(())
    }

    pub fn default_subnet(&self) -> Ipv4Net {
        self.lock().default_subnet()
    }

    pub fn range(&self) -> Ipv4Net {
        self.lock().allocator().ring().range()
    }

    pub fn status(&self) -> IpamStatus {
        let ipam = self.lock();
        ipam.status(|p| self.reachable(p))
    }

    fn status_line(&self) -> String {
        self.status().to_string()
    }

    /// Everything `status ipam` shows.
    pub fn report(&self) -> IpamReport {
        let ipam = self.lock();
        let ring = ipam.allocator().ring();
        let me = ring.ourself();
        IpamReport {
            range: ring.range().to_string(),
            default_subnet: ipam.default_subnet().to_string(),
            status: ipam.status(|p| self.reachable(p)).to_string(),
            owners: ring
                .state()
                .space_by_owner()
                .into_iter()
                .map(|(peer, (size, free))| OwnerShare {
                    peer,
                    size,
                    free,
                    reachable: peer == me || self.reachable(peer),
                })
                .collect(),
            allocations: ipam
                .allocator()
                .allocations()
                .map(|a| {
                    (
                        a.owner.clone(),
                        format!("{}/{}", a.address.addr, a.address.prefix_len),
                    )
                })
                .collect(),
        }
    }

    /// The periodic tick: forgets unanswered requests, re-proposes a stuck vote.
    pub fn tick(&self) {
        match self.step(|ipam, _| ipam.tick().map(|e| ((), e))) {
            Ok(()) => self.changed.notify_waiters(),
            Err(e) => tracing::warn!("IPAM tick: {e}"),
        }
    }

    /// Ticks every [`TICK_INTERVAL`] (with jitter) until the service is dropped.
    pub fn spawn_ticker(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let jitter = Duration::from_millis(rand::random::<u64>() % 1000);
                tokio::time::sleep(TICK_INTERVAL + jitter).await;
                let Some(service) = weak.upgrade() else {
                    return;
                };
                service.tick();
            }
        })
    }

    fn handle(&self, origin: PeerName, payload: &[u8]) -> Result<(), GossipChannelError> {
        let message = decode(payload)?;
        let handled: Result<Handled, IpamServiceError> = (|| {
            let (handled, outgoing) = {
                let mut ipam = self.lock();
                let handled = ipam.handle(origin, message)?;
                let outgoing = self.carry_out(&ipam, handled.effects.clone())?;
                (handled, outgoing)
            };
            self.send(outgoing);
            Ok(handled)
        })();
        match handled {
            Ok(h) => {
                if h.changed {
                    self.changed.notify_waiters();
                }
                Ok(())
            }
            // A refused ring (another range, a conflicting seed) changes nothing; the
            // connection stays (the peer is not malformed, it disagrees).
            Err(IpamServiceError::Ipam(e)) => {
                tracing::warn!("IPAM message from {origin} refused: {e}");
                Ok(())
            }
            Err(e) => Err(GossipChannelError::Refused(e.to_string())),
        }
    }
}

impl GossipChannel for IpamService {
    fn full_state(&self) -> Option<Vec<u8>> {
        // Only the ring or the vote; several messages would need several payloads, and the
        // state machine gossips at most one at a time.
        self.lock().gossip().first().map(encode)
    }

    fn on_gossip(
        &self,
        origin: PeerName,
        payload: &[u8],
    ) -> Result<Option<Vec<u8>>, GossipChannelError> {
        // Rings and votes are merged and re-broadcast by the state machine itself when they
        // changed something; nothing is passed on as is.
        self.handle(origin, payload).map(|()| None)
    }

    fn on_unicast(&self, origin: PeerName, payload: &[u8]) -> Result<(), GossipChannelError> {
        self.handle(origin, payload)
    }
}
