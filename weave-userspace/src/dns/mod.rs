//! weaveDNS: containers find each other by name across hosts.
//!
//! - [`records`]: the record store, merged by version, gossiped on the mesh's DNS channel.
//! - [`server`]: the DNS server (hickory-proto), UDP and TCP, answering the weave domain
//!   and forwarding everything else upstream.
//!
//! The server listens by default on [`DEFAULT_LISTEN`], a link-local address the data path
//! puts on the `weave` bridge; every attached container gets a route to it over `ethwe`.

pub mod records;
pub mod server;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};

use crate::mesh::gossip_channel::Gossiper;
use crate::mesh::peer_name::PeerName;
use records::{Entry, RecordError, Records};
use server::{DnsServer, Resolver, ServerError, Upstreams};

/// Where the DNS server listens unless told otherwise: on the `weave` bridge, reachable
/// from every attached container.
pub const DEFAULT_LISTEN_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 53, 53);
pub const DEFAULT_LISTEN: &str = "169.254.53.53:53";
pub const DEFAULT_DOMAIN: &str = "weave.local.";
pub const DEFAULT_TTL: u32 = 1;
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";
/// How long one upstream server has to answer a forwarded query.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How often entries of peers that left the mesh are looked for.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(1);
/// Container ID of names added with `dns-add` without one (Weave's).
pub const EXTERN_CONTAINER: &str = "weave:extern";

/// The DNS part of the launch configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    pub listen: SocketAddr,
    /// Lower case, with the trailing dot.
    pub domain: String,
    pub ttl: u32,
    pub resolv_conf: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("no address given")]
    NoAddress,
}

/// Parses `IP` or `IP:PORT` (port 53 when left out).
pub fn parse_listen(s: &str) -> Option<SocketAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>().ok().filter(|a| a.port() != 0)
}

/// What `status dns` and `dns-args` show.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct DnsInfo {
    pub domain: String,
    pub listen: String,
    pub upstream: Vec<String>,
    #[serde(rename = "TTL")]
    pub ttl: u32,
    pub entries: Vec<Entry>,
}

/// The running DNS service of one router.
pub struct Dns {
    config: DnsConfig,
    records: Arc<Records>,
    gossiper: Gossiper,
    upstreams: Vec<SocketAddr>,
    server: std::sync::Mutex<Option<DnsServer>>,
    pruner: tokio::task::JoinHandle<()>,
    /// Where our own registrations are kept across restarts, and them.
    store: std::sync::Mutex<Option<Registrations>>,
}

/// This router's registrations (container, address, FQDN), stored in the state dir so a
/// restarted router answers for its containers again.
struct Registrations {
    /// `dns.json`, written off the async threads.
    file: crate::state::OffThreadWriter,
    entries: std::collections::BTreeSet<(String, Ipv4Addr, String)>,
}

impl Registrations {
    fn save(&self) {
        let list: Vec<&(String, Ipv4Addr, String)> = self.entries.iter().collect();
        self.file
            .write(serde_json::to_vec(&list).expect("serialisable"));
    }
}

impl Dns {
    /// Starts serving. `records` is registered as the DNS gossip channel already (its
    /// `gossiper` sends our changes); `live_peers` tells which peers are in the mesh.
    pub fn start(
        config: DnsConfig,
        records: Arc<Records>,
        gossiper: Gossiper,
        live_peers: impl Fn() -> Vec<PeerName> + Send + Sync + 'static,
    ) -> Result<Self, DnsError> {
        let resolv = std::fs::read_to_string(&config.resolv_conf).unwrap_or_else(|e| {
            tracing::warn!(
                "cannot read {}: {e}; names outside {} will not resolve",
                config.resolv_conf.display(),
                config.domain
            );
            String::new()
        });
        let upstreams = Upstreams::from_resolv_conf(&resolv, config.listen, UPSTREAM_TIMEOUT);
        let domain = Name::from_ascii(&config.domain)
            .map_err(|_| RecordError::BadName(config.domain.clone()))?;
        let resolver = Resolver::new(records.clone(), domain, config.ttl);
        let servers = upstreams.servers.clone();
        let server = DnsServer::start(config.listen, resolver, upstreams)?;
        tracing::info!(
            "DNS for {} on {} (UDP and TCP), upstream {}",
            config.domain,
            config.listen,
            if servers.is_empty() {
                "none".to_string()
            } else {
                servers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let pruner = {
            let records = records.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PRUNE_INTERVAL);
                loop {
                    tick.tick().await;
                    let live: HashSet<PeerName> = live_peers().into_iter().collect();
                    let dropped = records.prune(&live, Instant::now());
                    if dropped > 0 {
                        tracing::info!("DNS: {dropped} entries of peers that left dropped");
                    }
                }
            })
        };
        Ok(Self {
            config,
            records,
            gossiper,
            upstreams: servers,
            server: std::sync::Mutex::new(Some(server)),
            pruner,
            store: std::sync::Mutex::new(None),
        })
    }

    /// Keeps our registrations in `path` from now on, and registers again what an earlier
    /// run stored there. Returns how many were restored.
    pub fn restore_from(&self, path: std::path::PathBuf) -> usize {
        let stored: Vec<(String, Ipv4Addr, String)> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                let e = crate::state::set_aside(&path, e.to_string());
                tracing::warn!("{e}; DNS registrations of an earlier run not restored");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(Registrations {
            file: crate::state::OffThreadWriter::new(path, "the DNS registrations"),
            entries: Default::default(),
        });
        let mut restored = 0;
        for (container, addr, name) in stored {
            match self.add(&container, &[addr], &name) {
                Ok(_) => restored += 1,
                Err(e) => tracing::warn!("DNS registration {name} -> {addr} not restored: {e}"),
            }
        }
        restored
    }

    /// Records what changed in our registrations and stores them.
    fn remember(&self, changes: &[Entry]) {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let Some(store) = store.as_mut() else { return };
        for e in changes {
            let key = (e.container_id.clone(), e.addr, e.hostname.clone());
            if e.tombstone {
                store.entries.remove(&key);
            } else {
                store.entries.insert(key);
            }
        }
        if !changes.is_empty() {
            store.save();
        }
    }

    /// Waits until our registrations, as they are now, are stored (at once when they are
    /// not kept): whether that worked.
    pub fn registrations_stored(
        &self,
    ) -> impl std::future::Future<Output = Result<(), crate::state::StateError>> + Send + 'static
    {
        let file = self
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|store| store.file.clone());
        async move {
            match file {
                Some(file) => file.written().await,
                None => Ok(()),
            }
        }
    }

    pub fn config(&self) -> &DnsConfig {
        &self.config
    }

    pub fn records(&self) -> &Arc<Records> {
        &self.records
    }

    /// `name` made fully qualified in our domain, or why it cannot be.
    pub fn qualify(&self, name: &str) -> Result<String, DnsError> {
        Ok(records::qualify(name, &self.config.domain)?)
    }

    fn gossip(&self, changes: Vec<Entry>) {
        if !changes.is_empty() {
            self.gossiper.broadcast(records::encode(&changes));
        }
    }

    /// Binds `name` (qualified in our domain) to each address for `container_id`.
    /// Returns how many bindings are new.
    pub fn add(
        &self,
        container_id: &str,
        addrs: &[Ipv4Addr],
        name: &str,
    ) -> Result<usize, DnsError> {
        if addrs.is_empty() {
            return Err(DnsError::NoAddress);
        }
        let fqdn = self.qualify(name)?;
        let mut changes = Vec::new();
        for a in addrs {
            if let Some(e) = self.records.add(container_id, *a, &fqdn)? {
                tracing::info!("DNS: {fqdn} -> {a} added for {container_id}");
                changes.push(e);
            }
        }
        let n = changes.len();
        self.remember(&changes);
        self.gossip(changes);
        Ok(n)
    }

    /// Removes bindings of `container_id` (only those of `addrs` / `name` when given).
    /// Returns how many were removed.
    pub fn remove(
        &self,
        container_id: &str,
        addrs: &[Ipv4Addr],
        name: Option<&str>,
    ) -> Result<usize, DnsError> {
        let fqdn = name.map(|n| self.qualify(n)).transpose()?;
        let mut changes = Vec::new();
        if addrs.is_empty() {
            changes = self.records.remove(container_id, None, fqdn.as_deref())?;
        } else {
            for a in addrs {
                changes.extend(
                    self.records
                        .remove(container_id, Some(*a), fqdn.as_deref())?,
                );
            }
        }
        for e in &changes {
            tracing::info!(
                "DNS: {} -> {} removed for {container_id}",
                e.hostname,
                e.addr
            );
        }
        let n = changes.len();
        self.remember(&changes);
        self.gossip(changes);
        Ok(n)
    }

    /// Addresses of `name` (qualified in our domain), in address order.
    pub fn lookup(&self, name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        let fqdn = self.qualify(name)?;
        let name = Name::from_ascii(&fqdn).map_err(|_| RecordError::BadName(name.to_string()))?;
        Ok(self
            .records
            .index()
            .addresses(&name)
            .map(|a| a.to_vec())
            .unwrap_or_default())
    }

    /// The peer whose names this service registers.
    pub fn peer_name(&self) -> crate::mesh::peer_name::PeerName {
        self.records.me()
    }

    pub fn info(&self) -> DnsInfo {
        DnsInfo {
            domain: self.config.domain.clone(),
            listen: self.config.listen.to_string(),
            upstream: self.upstreams.iter().map(|s| s.ip().to_string()).collect(),
            ttl: self.config.ttl,
            entries: self.records.live(),
        }
    }

    /// Stops serving.
    pub fn stop(&self) {
        self.pruner.abort();
        if let Some(s) = self.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            s.stop();
        }
    }
}

/// `weave-router dns-args`: what a container needs to use weaveDNS.
pub fn dns_args(info: &DnsInfo) -> String {
    let ip = info
        .listen
        .parse::<SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| info.listen.clone());
    format!("--dns={ip} --dns-search={}", info.domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_with_or_without_port() {
        assert_eq!(
            parse_listen("169.254.53.53"),
            Some("169.254.53.53:53".parse().unwrap())
        );
        assert_eq!(
            parse_listen("10.0.0.1:5353"),
            Some("10.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(parse_listen("10.0.0.1:0"), None);
        assert_eq!(parse_listen("dns.example"), None);
        assert_eq!(
            DEFAULT_LISTEN.parse::<SocketAddr>().unwrap().ip(),
            IpAddr::V4(DEFAULT_LISTEN_IP)
        );
    }

    #[test]
    fn dns_args_name_the_server_and_the_search_domain() {
        let info = DnsInfo {
            domain: "weave.local.".into(),
            listen: "169.254.53.53:53".into(),
            upstream: vec![],
            ttl: 1,
            entries: vec![],
        };
        assert_eq!(
            dns_args(&info),
            "--dns=169.254.53.53 --dns-search=weave.local."
        );
    }
}
