//! The record store of weaveDNS (pure, no I/O): entries `(name, origin peer, container,
//! address)` with a version only their origin increments and tombstones for removals,
//! merged by version as gossip delivers them in any order; lookups by name (A) and by
//! address (PTR) from a read-mostly index rebuilt on every change.
//!
//! The store is also the DNS gossip channel: it hands out its whole state, merges what
//! arrives and says what was news.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};

use crate::mesh::gossip_channel::{ChannelId, GossipChannel, GossipChannelError};
use crate::mesh::peer_name::PeerName;

/// How long a tombstone is kept (Weave's 30 minutes): long enough for every peer to hear
/// of the removal.
pub const TOMBSTONE_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// How long gossip about a peer that left the mesh is ignored (unless it comes back).
pub const DEPARTED_MEMORY: Duration = Duration::from_secs(10 * 60);
/// Most entries one gossip payload may carry.
pub const MAX_ENTRIES_PER_PAYLOAD: usize = 100_000;

/// One name → address binding, as gossiped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Who registered it (a container's network namespace, or a user-given ID).
    pub container_id: String,
    /// The router that owns it: only it changes the entry.
    pub origin: PeerName,
    pub addr: Ipv4Addr,
    /// Fully qualified, lower case, with the trailing dot (`w1.weave.local.`).
    pub hostname: String,
    pub version: u64,
    pub tombstone: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("{0:?} is not a valid host name (labels of 1 to 63 letters, digits, '-' or '_', 253 characters at most)")]
    BadName(String),
    #[error("{name:?} is not in the domain {domain}")]
    NotInDomain { name: String, domain: String },
    #[error("{0:?} is not an IPv4 address")]
    BadAddress(String),
    #[error("container ID {0:?} is empty or too long (1 to 255 characters)")]
    BadContainerId(String),
}

type Key = (String, PeerName, String, Ipv4Addr);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Value {
    version: u64,
    tombstone: bool,
    /// When it became a tombstone here (for garbage collection).
    tombstoned_at: Option<Instant>,
}

fn key_of(e: &Entry) -> Key {
    (e.hostname.clone(), e.origin, e.container_id.clone(), e.addr)
}

fn entry_of(k: &Key, v: &Value) -> Entry {
    Entry {
        hostname: k.0.clone(),
        origin: k.1,
        container_id: k.2.clone(),
        addr: k.3,
        version: v.version,
        tombstone: v.tombstone,
    }
}

/// What lookups read: live bindings by name and by address.
#[derive(Debug, Default)]
pub struct Index {
    by_name: HashMap<Name, Arc<[Ipv4Addr]>>,
    by_addr: HashMap<Ipv4Addr, Arc<[Name]>>,
    /// The same addresses by the name in lower-case wire format (`\x02w1\x05weave\x05local\x00`),
    /// for the server's fast path.
    by_wire: HashMap<Box<[u8]>, Arc<[Ipv4Addr]>>,
}

impl Index {
    /// Addresses of `name` (case-insensitive), in address order.
    pub fn addresses(&self, name: &Name) -> Option<&Arc<[Ipv4Addr]>> {
        self.by_name.get(name)
    }

    /// Addresses of a name given in lower-case wire format.
    pub fn addresses_wire(&self, wire: &[u8]) -> Option<&Arc<[Ipv4Addr]>> {
        self.by_wire.get(wire)
    }

    /// Names bound to `addr`, in name order.
    pub fn names(&self, addr: Ipv4Addr) -> Option<&Arc<[Name]>> {
        self.by_addr.get(&addr)
    }
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<Key, Value>,
    /// Peers that left the mesh, and when we noticed: their gossip is ignored for a while.
    departed: HashMap<PeerName, Instant>,
}

/// The record store of one router.
#[derive(Debug)]
pub struct Records {
    me: PeerName,
    state: RwLock<State>,
    index: RwLock<Arc<Index>>,
}

/// A name in lower-case wire format (length-prefixed labels, then the root's 0).
pub fn wire_lower(name: &Name) -> Box<[u8]> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out.into()
}

/// Checks and normalises a fully qualified name: lower case, trailing dot.
pub fn normalise_name(name: &str) -> Result<String, RecordError> {
    let bad = || RecordError::BadName(name.to_string());
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(bad());
    }
    for label in trimmed.split('.') {
        if label.is_empty()
            || label.len() > 63
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad());
        }
    }
    Ok(format!("{}.", trimmed.to_ascii_lowercase()))
}

/// A name as given by a user, made fully qualified in `domain` (`w1` → `w1.weave.local.`);
/// a name with a dot must already lie in the domain.
pub fn qualify(name: &str, domain: &str) -> Result<String, RecordError> {
    let domain = normalise_name(domain)?;
    if !name.trim_end_matches('.').contains('.') {
        return normalise_name(&format!("{}.{domain}", name.trim_end_matches('.')));
    }
    let n = normalise_name(name)?;
    if n == domain || !n.ends_with(&format!(".{domain}")) {
        return Err(RecordError::NotInDomain {
            name: name.to_string(),
            domain,
        });
    }
    Ok(n)
}

fn check_container_id(id: &str) -> Result<(), RecordError> {
    if id.is_empty() || id.len() > 255 {
        return Err(RecordError::BadContainerId(id.to_string()));
    }
    Ok(())
}

/// A version newer than `old` that also beats versions of an earlier run of this router:
/// milliseconds since the epoch when that is larger.
fn next_version(old: Option<u64>) -> u64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now.max(old.map_or(1, |v| v + 1))
}

impl Records {
    pub fn new(me: PeerName) -> Self {
        Self {
            me,
            state: RwLock::default(),
            index: RwLock::default(),
        }
    }

    pub fn me(&self) -> PeerName {
        self.me
    }

    fn state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The index lookups read (cheap: one reference count).
    pub fn index(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn reindex(&self, state: &State) {
        let mut by_name: HashMap<Name, Vec<Ipv4Addr>> = HashMap::new();
        let mut by_addr: HashMap<Ipv4Addr, Vec<Name>> = HashMap::new();
        for (k, v) in &state.entries {
            if v.tombstone {
                continue;
            }
            let Ok(name) = Name::from_ascii(&k.0) else {
                continue;
            };
            let addrs = by_name.entry(name.clone()).or_default();
            if !addrs.contains(&k.3) {
                addrs.push(k.3);
            }
            let names = by_addr.entry(k.3).or_default();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let by_name: HashMap<Name, Arc<[Ipv4Addr]>> = by_name
            .into_iter()
            .map(|(n, mut a)| {
                a.sort();
                (n, a.into())
            })
            .collect();
        let by_wire = by_name
            .iter()
            .map(|(n, a)| (wire_lower(n), a.clone()))
            .collect();
        let index = Index {
            by_name,
            by_wire,
            by_addr: by_addr.into_iter().map(|(a, n)| (a, n.into())).collect(),
        };
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(index);
    }

    /// Binds `hostname` (fully qualified) to `addr` for `container_id`, owned by us.
    /// Returns the change to gossip, `None` when it was there already.
    pub fn add(
        &self,
        container_id: &str,
        addr: Ipv4Addr,
        hostname: &str,
    ) -> Result<Option<Entry>, RecordError> {
        check_container_id(container_id)?;
        let hostname = normalise_name(hostname)?;
        let key = (hostname, self.me, container_id.to_string(), addr);
        let mut st = self.state();
        let old = st.entries.get(&key).cloned();
        if old.as_ref().is_some_and(|v| !v.tombstone) {
            return Ok(None);
        }
        let value = Value {
            version: next_version(old.map(|v| v.version)),
            tombstone: false,
            tombstoned_at: None,
        };
        let entry = entry_of(&key, &value);
        st.entries.insert(key, value);
        self.reindex(&st);
        Ok(Some(entry))
    }

    /// Removes our entries of `container_id`, only those of `addr` and/or `hostname` when
    /// given. Returns the tombstones to gossip.
    pub fn remove(
        &self,
        container_id: &str,
        addr: Option<Ipv4Addr>,
        hostname: Option<&str>,
    ) -> Result<Vec<Entry>, RecordError> {
        let hostname = hostname.map(normalise_name).transpose()?;
        let mut st = self.state();
        let now = Instant::now();
        let mut changed = Vec::new();
        for (k, v) in st.entries.iter_mut() {
            if k.1 != self.me
                || k.2 != container_id
                || v.tombstone
                || addr.is_some_and(|a| a != k.3)
                || hostname.as_ref().is_some_and(|h| *h != k.0)
            {
                continue;
            }
            v.version = next_version(Some(v.version));
            v.tombstone = true;
            v.tombstoned_at = Some(now);
            changed.push(entry_of(k, v));
        }
        if !changed.is_empty() {
            self.reindex(&st);
        }
        Ok(changed)
    }

    /// Gossip sent by `peer` itself: it is in the mesh again, so its entries count again
    /// (without waiting for the next prune to see it live).
    pub fn heard_from(&self, peer: PeerName) {
        self.state().departed.remove(&peer);
    }

    /// Merges entries from gossip. Returns those that were news (to pass on). Entries of
    /// ours that come back newer than we know (from an earlier run) are answered with a
    /// newer version of what we hold, which is news too.
    pub fn merge(&self, incoming: Vec<Entry>) -> Vec<Entry> {
        let mut st = self.state();
        let now = Instant::now();
        let mut news = Vec::new();
        for e in incoming {
            if e.origin != self.me && st.departed.contains_key(&e.origin) {
                continue;
            }
            let key = key_of(&e);
            let old = st.entries.get(&key).cloned();
            if e.origin == self.me {
                // An entry of ours from an earlier run is outbid only below half the limit
                // peers accept: a forged one higher must not take ours past it.
                if e.version >= crate::mesh::OWN_VERSION_LIMIT {
                    continue;
                }
                match old {
                    Some(v) if v.version >= e.version => {}
                    Some(mut v) => {
                        v.version = e.version + 1;
                        news.push(entry_of(&key, &v));
                        st.entries.insert(key, v);
                    }
                    None => {
                        // Not ours any more: whatever it says, it is gone.
                        let v = Value {
                            version: e.version + u64::from(!e.tombstone),
                            tombstone: true,
                            tombstoned_at: Some(now),
                        };
                        if !e.tombstone {
                            news.push(entry_of(&key, &v));
                        }
                        st.entries.insert(key, v);
                    }
                }
                continue;
            }
            if old.as_ref().is_some_and(|v| v.version >= e.version) {
                continue;
            }
            let v = Value {
                version: e.version,
                tombstone: e.tombstone,
                tombstoned_at: e.tombstone.then_some(now),
            };
            st.entries.insert(key, v);
            news.push(e);
        }
        if !news.is_empty() {
            self.reindex(&st);
        }
        news
    }

    /// Drops the entries of peers not in `live` (they left the mesh) and ignores their
    /// gossip for a while; forgets old tombstones. Returns the number of entries dropped.
    pub fn prune(&self, live: &HashSet<PeerName>, now: Instant) -> usize {
        let mut st = self.state();
        let before = st.entries.len();
        let me = self.me;
        let mut gone = Vec::new();
        st.entries.retain(|k, v| {
            if k.1 != me && !live.contains(&k.1) {
                gone.push(k.1);
                return false;
            }
            v.tombstoned_at
                .is_none_or(|t| now.saturating_duration_since(t) < TOMBSTONE_LIFETIME)
        });
        for p in gone {
            st.departed.entry(p).or_insert(now);
        }
        st.departed.retain(|p, since| {
            !live.contains(p) && now.saturating_duration_since(*since) < DEPARTED_MEMORY
        });
        let dropped = before - st.entries.len();
        if dropped > 0 {
            self.reindex(&st);
        }
        dropped
    }

    /// Every entry, tombstones included, in (name, origin, container, address) order.
    pub fn entries(&self) -> Vec<Entry> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.entries.iter().map(|(k, v)| entry_of(k, v)).collect()
    }

    /// Live entries only.
    pub fn live(&self) -> Vec<Entry> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.entries
            .iter()
            .filter(|(_, v)| !v.tombstone)
            .map(|(k, v)| entry_of(k, v))
            .collect()
    }

    /// Our live entries of `container_id`.
    pub fn of_container(&self, container_id: &str) -> Vec<Entry> {
        self.live()
            .into_iter()
            .filter(|e| e.origin == self.me && e.container_id == container_id)
            .collect()
    }
}

/// Encodes entries as a gossip payload (postcard).
pub fn encode(entries: &[Entry]) -> Vec<u8> {
    postcard::to_allocvec(entries).unwrap_or_default()
}

/// Decodes and checks a gossip payload: any malformed entry refuses the whole payload.
pub fn decode(payload: &[u8]) -> Result<Vec<Entry>, GossipChannelError> {
    let malformed = |reason: String| GossipChannelError::Malformed {
        channel: ChannelId::Dns,
        reason,
    };
    let entries: Vec<Entry> =
        postcard::from_bytes(payload).map_err(|e| malformed(e.to_string()))?;
    if entries.len() > MAX_ENTRIES_PER_PAYLOAD {
        return Err(malformed(format!("{} entries", entries.len())));
    }
    for e in &entries {
        match normalise_name(&e.hostname) {
            Ok(n) if n == e.hostname => {}
            _ => return Err(malformed(format!("bad host name {:?}", e.hostname))),
        }
        check_container_id(&e.container_id).map_err(|err| malformed(err.to_string()))?;
        if e.version > crate::mesh::VERSION_LIMIT {
            return Err(malformed(format!("version {} out of range", e.version)));
        }
    }
    Ok(entries)
}

impl GossipChannel for Records {
    fn full_state(&self) -> Option<Vec<u8>> {
        let entries = self.entries();
        (!entries.is_empty()).then(|| encode(&entries))
    }

    fn on_gossip(
        &self,
        origin: PeerName,
        payload: &[u8],
    ) -> Result<Option<Vec<u8>>, GossipChannelError> {
        let entries = decode(payload)?;
        self.heard_from(origin);
        let news = self.merge(entries);
        Ok((!news.is_empty()).then(|| encode(&news)))
    }

    fn on_unicast(&self, _origin: PeerName, _payload: &[u8]) -> Result<(), GossipChannelError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
