//! IPAM as a running service: the pure [`Ipam`] state machine behind a lock, its state
//! persisted crash-safely before any peer hears of it, its messages carried by the mesh's
//! IPAM gossip channel, and requests that wait (bounded) for consensus or a donation.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use super::allocator::AllocError;
use super::consensus::IpamStatus;
use super::identity::{IpamIdentity, IpamMismatch};
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
/// How long an allocation that needs space waits for a peer to give it: a peer that just
/// connected is reachable only once its topology record arrives, a moment after the
/// connection is up (an attach right after `launch` would otherwise fail).
pub const DONOR_WAIT: Duration = Duration::from_secs(10);
/// How often a waiting request tries again when nothing in IPAM changed (reachability
/// changes outside it).
const RETRY_EVERY: Duration = Duration::from_millis(250);

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
    /// A store failed (a full disk, say): the state is only in memory until a store works;
    /// every tick tries again.
    unsaved: std::sync::atomic::AtomicBool,
    /// Peers' messages, decoded, for the IPAM thread: handling one may sync the state to
    /// disk, which must not hold up the router's event loop. `None` if the thread could not
    /// be started (then they are handled where they arrive).
    inbox: Option<std::sync::mpsc::SyncSender<(PeerName, Message)>>,
    /// Our allocation (range, seeds) as of the last change, so that a peer's ring is
    /// checked where it arrives without waiting for the IPAM thread.
    identity: Mutex<IpamIdentity>,
    /// Allocations and claims waiting for the state to change.
    pending_allocates: AtomicU64,
    pending_claims: AtomicU64,
}

/// Counts one waiting request for as long as it lives.
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Peers' messages waiting for the IPAM thread at most; more are dropped (IPAM gossip is
/// repeated: the next digest exchange brings the state again).
const INBOX_LEN: usize = 1024;

/// What `status ipam` shows.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamReport {
    pub range: String,
    /// Addresses in the range.
    #[serde(rename = "RangeNumIPs")]
    pub range_num_ips: u64,
    pub default_subnet: String,
    pub status: String,
    /// Each owner's share of the range: (peer, addresses owned, of them free).
    pub owners: Vec<OwnerShare>,
    /// Our allocations: owner ID → address.
    pub allocations: Vec<(String, String)>,
    /// Requests for an address waiting (for consensus, or space from another peer).
    pub pending_allocates: u64,
    /// Claims of a given address waiting.
    pub pending_claims: u64,
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
        let (inbox, messages) = std::sync::mpsc::sync_channel::<(PeerName, Message)>(INBOX_LEN);
        let identity = Mutex::new(ipam.identity());
        let service = Arc::new(Self {
            ipam: Mutex::new(ipam),
            identity,
            store,
            gossiper: OnceLock::new(),
            reachable: OnceLock::new(),
            changed: tokio::sync::Notify::new(),
            forgotten: std::sync::atomic::AtomicBool::new(false),
            unsaved: std::sync::atomic::AtomicBool::new(false),
            inbox: Some(inbox),
            pending_allocates: AtomicU64::new(0),
            pending_claims: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&service);
        let thread = std::thread::Builder::new()
            .name("ipam".into())
            .spawn(move || {
                // Ends when the service is dropped (and with it the sending end).
                while let Ok((origin, message)) = messages.recv() {
                    let Some(service) = weak.upgrade() else {
                        return;
                    };
                    service.handle_message(origin, message);
                }
            });
        match thread {
            Ok(_) => service,
            Err(e) => {
                tracing::warn!("cannot start the IPAM thread ({e}): peers' messages are handled on the event loop");
                let mut service = service;
                if let Some(s) = Arc::get_mut(&mut service) {
                    s.inbox = None;
                }
                service
            }
        }
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
    fn carry_out(&self, ipam: &Ipam, effects: Vec<Effect>) -> Vec<Effect> {
        let mut outgoing = Vec::new();
        for effect in effects {
            match effect {
                Effect::Persist => self.persist(ipam),
                other => outgoing.push(other),
            }
        }
        outgoing
    }

    /// Stores the state. A local disk error is the local host's problem, not the peer's
    /// whose message caused the change, nor the request's: it is logged once, the state
    /// stays in memory, and every tick stores it again until that works.
    fn persist(&self, ipam: &Ipam) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.forgotten.load(Relaxed) {
            return;
        }
        let Some(store) = &self.store else {
            return;
        };
        match store.save_ipam(&ipam.state()) {
            Ok(()) => {
                if self.unsaved.swap(false, Relaxed) {
                    tracing::info!("IPAM state stored again in {}", store.path().display());
                }
            }
            Err(e) => {
                if !self.unsaved.swap(true, Relaxed) {
                    tracing::error!(
                        "cannot store the IP allocation state: {e}; it stays in memory and is stored again every {} s",
                        TICK_INTERVAL.as_secs()
                    );
                }
            }
        }
    }

    /// Whether the state in memory is newer than the one stored (a store failed).
    pub fn unsaved(&self) -> bool {
        self.unsaved.load(std::sync::atomic::Ordering::Relaxed)
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
            self.note_identity(&ipam);
            let outgoing = self.carry_out(&ipam, effects);
            (value, outgoing)
        };
        self.send(outgoing);
        Ok(value)
    }

    /// Retries `attempt` whenever the state changes until it is done, up to
    /// [`REQUEST_TIMEOUT`]; counted in `waiting` while it waits.
    async fn until_done<T>(
        &self,
        waiting: &AtomicU64,
        mut attempt: impl FnMut() -> Result<Step<T>, IpamServiceError>,
    ) -> Result<T, IpamServiceError> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let mut counted = None;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Step::Done(v) = attempt()? {
                return Ok(v);
            }
            counted.get_or_insert_with(|| Waiting::new(waiting));
            let retry_at = (tokio::time::Instant::now() + RETRY_EVERY).min(deadline);
            if tokio::time::timeout_at(retry_at, changed).await.is_err() && retry_at >= deadline {
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
        let started = tokio::time::Instant::now();
        self.until_done(&self.pending_allocates, || {
            let step = self
                .step(|ipam, reachable| ipam.allocate(owner, subnet, reachable, rand::random()));
            match step {
                // No donor reachable yet: a peer may be joining (its record comes a moment
                // after its connection); wait for one a while, as Weave waits.
                Err(IpamServiceError::Ipam(IpamError::NoReachableDonor(_)))
                    if started.elapsed() < DONOR_WAIT =>
                {
                    Ok(Step::Pending)
                }
                other => other,
            }
        })
        .await
    }

    /// Claims a given address for `owner` (`ip:CIDR`, or an address in use before a restart).
    pub async fn claim(&self, owner: &str, address: Ipv4Cidr) -> Result<(), IpamServiceError> {
        self.until_done(&self.pending_claims, || {
            self.step(|ipam, _| ipam.claim_address(owner, address))
        })
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

    /// What peers compare before they connect ([`IpamIdentity`]).
    pub fn identity(&self) -> IpamIdentity {
        self.identity.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn note_identity(&self, ipam: &Ipam) {
        *self.identity.lock().unwrap_or_else(|e| e.into_inner()) = ipam.identity();
    }

    /// How a ring in `message` disagrees with our allocation (another range, other seeds),
    /// if it does.
    fn foreign_ring(&self, message: &Message) -> Option<IpamMismatch> {
        let (Message::Ring(ring) | Message::SpaceReply { ring, .. }) = message else {
            return None;
        };
        let theirs = IpamIdentity {
            range: ring.range(),
            seeds: ring.seeds().to_vec(),
        };
        self.identity().check(&theirs).err()
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
            range_num_ips: ring.range().size(),
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
            pending_allocates: self.pending_allocates.load(Ordering::Relaxed),
            pending_claims: self.pending_claims.load(Ordering::Relaxed),
        }
    }

    /// The periodic tick: forgets unanswered requests, re-proposes a stuck vote.
    pub fn tick(&self) {
        if self.unsaved() {
            self.persist(&self.lock());
        }
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

    /// A message from a peer: decoded here (malformed data closes the connection it came on),
    /// handled on the IPAM thread.
    fn handle(&self, origin: PeerName, payload: &[u8]) -> Result<(), GossipChannelError> {
        let message = decode(payload)?;
        // A ring of another allocation closes the connection it came on, as Weave does: the
        // two would hand out the same addresses (peers of protocol version 6 are refused at
        // the handshake already).
        if let Some(mismatch) = self.foreign_ring(&message) {
            tracing::warn!("IPAM message from {origin} refused: {mismatch}");
            return Err(GossipChannelError::Refused(mismatch.to_string()));
        }
        let Some(inbox) = &self.inbox else {
            self.handle_message(origin, message);
            return Ok(());
        };
        if let Err(std::sync::mpsc::TrySendError::Full(_)) = inbox.try_send((origin, message)) {
            tracing::warn!("IPAM: {INBOX_LEN} messages waiting; one from {origin} dropped");
        }
        Ok(())
    }

    /// Handles a decoded message: a refusal or a failed store is logged, never the peer's
    /// fault.
    fn handle_message(&self, origin: PeerName, message: Message) {
        let handled: Result<Handled, IpamServiceError> = (|| {
            let (handled, outgoing) = {
                let mut ipam = self.lock();
                let handled = ipam.handle_from(origin, message, |p| self.reachable(p))?;
                self.note_identity(&ipam);
                let outgoing = self.carry_out(&ipam, handled.effects.clone());
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
            }
            // Any refused message changes nothing; the connection stays (the peer is not
            // malformed, it disagrees). A ring of another allocation was refused before it
            // got here ([`IpamService::handle`]).
            Err(e) => {
                if matches!(e, IpamServiceError::Ipam(IpamError::UnknownRequester(_))) {
                    use crate::mesh::gossip_refusal::{Refusal, REFUSED};
                    REFUSED.count(Refusal::UnknownRequester);
                }
                tracing::warn!("IPAM message from {origin} refused: {e}");
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::consensus::InitMode;
    use std::sync::atomic::AtomicBool;

    #[tokio::test]
    async fn a_failing_store_never_fails_a_step_and_is_retried_by_the_tick() {
        let dir = std::env::temp_dir().join(format!(
            "weave-ipam-store-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let store = Arc::new(StateDir::open(&dir).unwrap());
        let me = PeerName::from_bytes([0x0a, 0, 0, 0, 0, 1]);
        let ipam = Ipam::new(
            me,
            "10.2.0.0/16".parse().unwrap(),
            "10.2.1.0/24".parse().unwrap(),
            crate::ipam::consensus::InitMode::Seed(vec![me]),
            1,
        )
        .unwrap();
        let service = IpamService::new(ipam, Some(store));
        // The disk goes away under the router.
        std::fs::remove_dir_all(&dir).unwrap();
        let a = service.allocate("c1", None).await.unwrap();
        assert!(service.unsaved());
        // It comes back: the next tick stores what is in memory.
        std::fs::create_dir_all(&dir).unwrap();
        service.tick();
        assert!(!service.unsaved());
        let stored = std::fs::read_to_string(dir.join("ipam.json")).unwrap();
        assert!(stored.contains("c1"), "{stored}");
        assert_eq!(service.allocate("c1", None).await.unwrap(), a);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An observer owns nothing and waits for the ring: its allocation is counted as
    /// pending while it waits, and no more once it gives up.
    #[tokio::test]
    async fn a_waiting_allocation_is_counted_as_pending() {
        let me = PeerName::from_bytes([0x0a, 0, 0, 0, 0, 1]);
        let ipam = Ipam::new(
            me,
            "10.2.0.0/16".parse().expect("a network"),
            "10.2.1.0/24".parse().expect("a network"),
            crate::ipam::consensus::InitMode::Observer,
            1,
        )
        .expect("an observer IPAM");
        let service = IpamService::new(ipam, None);
        assert_eq!(service.report().pending_allocates, 0);
        let waiting = tokio::spawn({
            let service = service.clone();
            async move { service.allocate("c1", None).await }
        });
        for _ in 0..100 {
            if service.report().pending_allocates == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let report = service.report();
        assert_eq!((report.pending_allocates, report.pending_claims), (1, 0));
        assert_eq!(report.range_num_ips, 65536);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(service.report().pending_allocates, 0);
    }

    fn peer(n: u8) -> PeerName {
        PeerName::from_bytes([0x0a, 0, 0, 0, 0, n])
    }

    fn seeded(me: PeerName) -> Ipam {
        Ipam::new(
            me,
            "10.2.0.0/16".parse().unwrap(),
            "10.2.1.0/24".parse().unwrap(),
            InitMode::Seed(vec![peer(1), peer(2)]),
            2,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn an_allocation_waits_for_a_donor_that_becomes_reachable() {
        // Peer 2 owns the upper half; the default subnet is in peer 1's. Peer 1 is not
        // reachable yet (its record has not arrived), as right after a launch.
        let service = IpamService::new(seeded(peer(2)), None);
        let reachable = Arc::new(AtomicBool::new(false));
        let flag = reachable.clone();
        service.connect(
            Gossiper::detached(ChannelId::Ipam),
            Box::new(move |p| p == peer(1) && flag.load(Ordering::Relaxed)),
        );
        let waiting = {
            let service = service.clone();
            tokio::spawn(async move { service.allocate("c1", None).await })
        };
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!waiting.is_finished(), "failed at once: no donor reachable");
        reachable.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Peer 1 answers the space request sent once it was reachable.
        let mut donor = seeded(peer(1));
        let _ = donor.allocate("x", None, |_| true, 0).unwrap();
        let handled = donor
            .handle(
                peer(2),
                Message::SpaceRequest {
                    subnet: "10.2.1.0/24".parse().unwrap(),
                },
            )
            .unwrap();
        let reply = handled
            .effects
            .into_iter()
            .find_map(|e| match e {
                Effect::Send(to, m) if to == peer(2) => Some(m),
                _ => None,
            })
            .expect("a reply");
        service.on_unicast(peer(1), &encode(&reply)).unwrap();
        let address = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("answered")
            .unwrap()
            .expect("an address");
        assert!(
            "10.2.1.0/24"
                .parse::<Ipv4Net>()
                .unwrap()
                .contains(address.addr),
            "{address}"
        );
    }

    /// A ring seeded by other peers (a peer older than protocol version 6 is not refused at
    /// the handshake) is refused where it arrives, so the router closes its connection;
    /// the state is unchanged.
    #[test]
    fn a_ring_of_another_allocation_is_refused_on_arrival() {
        let service = IpamService::new(seeded(peer(1)), None);
        let mut other = Ipam::new(
            peer(3),
            "10.2.0.0/16".parse().unwrap(),
            "10.2.1.0/24".parse().unwrap(),
            InitMode::Seed(vec![peer(3)]),
            1,
        )
        .unwrap();
        let _ = other.allocate("x", None, |_| true, 0).unwrap();
        let ring = other.gossip().into_iter().next().expect("a ring");
        let before = service.identity();
        let refused = service.on_gossip(peer(3), &encode(&ring));
        assert!(
            matches!(&refused, Err(GossipChannelError::Refused(r)) if r.starts_with("IP allocation was seeded by different peers")),
            "{refused:?}"
        );
        assert_eq!(service.identity(), before);
        // Our own allocation's ring passes.
        let mut same = seeded(peer(2));
        let _ = same.allocate("y", None, |_| true, 0).unwrap();
        let ring = same.gossip().into_iter().next().expect("a ring");
        assert!(service.on_gossip(peer(2), &encode(&ring)).is_ok());
    }
}
