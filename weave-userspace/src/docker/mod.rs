//! Docker integration: containers started with `docker run` join the weave network.
//!
//! - [`client`]: the Docker Engine API (bollard), what a container is and asks for.
//! - [`cidr`]: `WEAVE_CIDR`, the addresses a container asks for.
//! - [`watcher`]: follows the daemon's events (attach on start, detach on die), re-syncs
//!   with the running containers after a (re)connect, and reconnects when the daemon goes.
//! - [`proxy`]: the Docker API on a unix socket of our own (`eval $(weave-router env)`),
//!   which checks `WEAVE_CIDR` at create and attaches at start, before it answers.
//!
//! A container's addresses and names belong to its container ID (as in Weave): IPAM owner
//! and DNS container ID alike, so they outlive a router restart and go when it stops.

pub mod cidr;
pub mod client;
pub mod plugin;
pub mod proxy;
pub mod watcher;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::datapath::dyn_datapath::BoxFuture;
use crate::datapath::Endpoint;
use crate::ipam::spec::AddressSpec;
pub use crate::node::containers::{short_id as short, DockerInfo};
use crate::node::containers::{ContainerError, Containers};
use crate::node::endpoints::{AttachOrder, EndpointsError};
use crate::node::Node;
use cidr::WeaveCidr;
use client::{is_container_id, ContainerFacts, DockerClient, DockerError};

/// The default Docker daemon.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// Where the proxy listens by default.
pub const DEFAULT_PROXY_SOCKET: &str = "/run/weave-router/weave.sock";

/// How the router reaches Docker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerSettings {
    /// The daemon (`unix://PATH`).
    pub host: String,
    /// Where the proxy listens; `None`: no proxy.
    pub proxy_socket: Option<PathBuf>,
    /// Where the network plugin listens; `None`: no plugin.
    pub plugin_socket: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Cidr(#[from] cidr::WeaveCidrError),
    #[error(transparent)]
    Endpoints(#[from] EndpointsError),
}

impl From<AttachError> for ContainerError {
    fn from(e: AttachError) -> Self {
        let message = e.to_string();
        match e {
            AttachError::Docker(DockerError::NoSuchContainer(_)) => Self::NotFound(message),
            AttachError::Docker(DockerError::NotRunning(_)) => Self::Conflict(message),
            AttachError::Docker(_) => Self::Unavailable(message),
            AttachError::Cidr(_) => Self::BadRequest(message),
            AttachError::Endpoints(_) => Self::Failed(message),
        }
    }
}

/// The daemon cannot be asked (or has no such container).
fn unavailable(e: DockerError) -> ContainerError {
    let message = e.to_string();
    match e {
        DockerError::NoSuchContainer(_) => ContainerError::NotFound(message),
        _ => ContainerError::Unavailable(message),
    }
}

/// The Docker side of a router: the current connection to the daemon and the one place
/// containers are attached and detached (the watcher and the proxy both go through it).
pub struct DockerService {
    pub(crate) node: Arc<Node>,
    settings: DockerSettings,
    client: Mutex<Option<DockerClient>>,
    /// Serialises attach, detach and re-sync: a container is attached once, whoever sees
    /// it start first.
    busy: tokio::sync::Mutex<()>,
}

impl DockerService {
    pub fn new(node: Arc<Node>, settings: DockerSettings) -> Arc<Self> {
        Arc::new(Self {
            node,
            settings,
            client: Mutex::new(None),
            busy: tokio::sync::Mutex::new(()),
        })
    }

    pub fn settings(&self) -> &DockerSettings {
        &self.settings
    }

    pub fn info(&self) -> DockerInfo {
        DockerInfo {
            docker_host: self.settings.host.clone(),
            proxy: self
                .settings
                .proxy_socket
                .as_ref()
                .map(|p| format!("unix://{}", p.display())),
            api_version: self.client().map(|c| c.api_version()),
        }
    }

    /// The connection to the daemon, while there is one.
    pub fn client(&self) -> Option<DockerClient> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_client(&self, c: Option<DockerClient>) {
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }

    /// A connection: the current one, else a new one.
    pub async fn connected(&self) -> Result<DockerClient, DockerError> {
        if let Some(c) = self.client() {
            return Ok(c);
        }
        DockerClient::connect(&self.settings.host).await
    }

    /// The endpoint of a container, if attached.
    fn endpoint_of(&self, id: &str) -> Option<Endpoint> {
        self.node
            .endpoints()
            .into_iter()
            .find(|e| e.owner.as_deref() == Some(id))
    }

    /// Attaches a running container as it asks (`specs` overrides what it asks for), unless
    /// it is attached already in its current namespace. `Ok(None)`: it does not ask to be.
    pub async fn attach(
        &self,
        facts: &ContainerFacts,
        specs: Option<Vec<AddressSpec>>,
    ) -> Result<Option<Endpoint>, AttachError> {
        self.attach_named(facts, specs, true).await
    }

    /// [`DockerService::attach`]; `with_dns` false registers no name (`attach
    /// --without-dns`).
    pub async fn attach_named(
        &self,
        facts: &ContainerFacts,
        specs: Option<Vec<AddressSpec>>,
        with_dns: bool,
    ) -> Result<Option<Endpoint>, AttachError> {
        let _busy = self.busy.lock().await;
        self.attach_locked(facts, specs, with_dns).await
    }

    async fn attach_locked(
        &self,
        facts: &ContainerFacts,
        specs: Option<Vec<AddressSpec>>,
        with_dns: bool,
    ) -> Result<Option<Endpoint>, AttachError> {
        self.announce_plugin_endpoints(facts).await;
        let specs = match specs {
            Some(s) => s,
            None => match &facts.wants {
                None | Some(Ok(WeaveCidr::Detached)) => return Ok(None),
                Some(Ok(WeaveCidr::Attached(s))) => s.clone(),
                Some(Err(e)) => return Err(e.clone().into()),
            },
        };
        let netns = facts
            .netns()
            .ok_or_else(|| DockerError::NotRunning(facts.name.clone()))?;
        if let Some(e) = self.endpoint_of(&facts.id) {
            if e.netns == netns {
                return Ok(Some(e));
            }
            // Restarted: its earlier namespace is gone.
            self.node.detach(e.netns).await?;
        }
        let hostname = self
            .node
            .dns()
            .filter(|d| with_dns && d.qualify(&facts.name).is_ok())
            .map(|_| facts.name.clone());
        let endpoint = self
            .node
            .attach(AttachOrder {
                netns,
                specs,
                hostname,
                owner: Some(facts.id.clone()),
                ifname: None,
            })
            .await?;
        tracing::info!(
            "Docker container {} ({}) attached: {}",
            facts.name,
            short(&facts.id),
            endpoint
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        );
        Ok(Some(endpoint))
    }

    /// For a container on the network plugin's network: puts its name in weaveDNS with the
    /// addresses of its plugin endpoints (Docker gives the plugin no names), and sends a
    /// gratuitous ARP from each of those interfaces, now that they are up in the container
    /// (the one sent at `Join` may go out before the link can carry it).
    async fn announce_plugin_endpoints(&self, facts: &ContainerFacts) {
        let endpoints: Vec<Endpoint> = self
            .node
            .endpoints()
            .into_iter()
            .filter(|e| {
                plugin::endpoint_id(&e.netns)
                    .is_some_and(|id| facts.endpoint_ids.iter().any(|x| x == id))
            })
            .collect();
        if endpoints.is_empty() {
            return;
        }
        if let Some(netns) = facts.netns() {
            if let Err(e) = self.node.announce(&netns, &endpoints).await {
                tracing::warn!("Docker container {}: gratuitous ARP: {e}", facts.name);
            }
        }
        let Some(dns) = self.node.dns() else {
            return;
        };
        let Ok(fqdn) = dns.qualify(&facts.name) else {
            return;
        };
        let addrs: Vec<std::net::Ipv4Addr> = endpoints
            .into_iter()
            .flat_map(|e| e.addresses.into_iter().map(|a| a.addr))
            .collect();
        match dns.add(&facts.id, &addrs, &fqdn) {
            Ok(_) => tracing::info!("Docker container {} named {fqdn}", facts.name),
            Err(e) => tracing::warn!("Docker container {}: {e}", facts.name),
        }
    }

    /// Detaches a container (it stopped): its interface, addresses and names go.
    /// `Ok(None)`: it had nothing.
    pub async fn detach(&self, id: &str) -> Result<Option<Endpoint>, AttachError> {
        let _busy = self.busy.lock().await;
        self.detach_locked(id).await
    }

    async fn detach_locked(&self, id: &str) -> Result<Option<Endpoint>, AttachError> {
        let endpoint = match self.endpoint_of(id) {
            Some(e) => Some(self.node.detach(e.netns).await?),
            None => None,
        };
        // Whatever is left of it (say, it stopped while the router was down).
        let mut released = Vec::new();
        if let Some(i) = self.node.ipam() {
            released = i.release(id).unwrap_or_default();
        }
        if let Some(d) = self.node.dns() {
            let _ = d.remove(id, &[], None);
        }
        if endpoint.is_some() || !released.is_empty() {
            tracing::info!("Docker container {} detached", short(id));
        }
        Ok(endpoint)
    }

    /// Brings the router in line with the running containers: attaches those that ask to
    /// be and are not, detaches (and releases, and unnames) those that are gone.
    pub async fn resync(&self, client: &DockerClient) -> Result<(), DockerError> {
        let _busy = self.busy.lock().await;
        let running = client.running().await?;
        let alive: BTreeSet<&str> = running.iter().map(|c| c.id.as_str()).collect();
        for c in &running {
            if let Err(e) = self.attach_locked(c, None, true).await {
                tracing::warn!("Docker container {}: {e}", c.name);
            }
        }
        let mut gone = BTreeSet::new();
        for e in self.node.endpoints() {
            if let Some(o) = e.owner.filter(|o| is_container_id(o)) {
                gone.insert(o);
            }
        }
        if let Some(i) = self.node.ipam() {
            gone.extend(i.owners().into_iter().filter(|o| is_container_id(o)));
        }
        if let Some(d) = self.node.dns() {
            let me = d.peer_name();
            gone.extend(
                d.info()
                    .entries
                    .into_iter()
                    .filter(|e| e.origin == me && !e.tombstone && is_container_id(&e.container_id))
                    .map(|e| e.container_id),
            );
        }
        gone.retain(|id| !alive.contains(id.as_str()));
        for id in gone {
            if let Err(e) = self.detach_locked(&id).await {
                tracing::warn!("Docker container {}: {e}", short(&id));
            }
        }
        Ok(())
    }
}

/// The HTTP API's way to the containers: by name or ID, through the daemon.
impl Containers for DockerService {
    fn info(&self) -> DockerInfo {
        DockerService::info(self)
    }

    fn attach_container<'a>(
        &'a self,
        container: &'a str,
        specs: Option<Vec<AddressSpec>>,
        with_dns: bool,
    ) -> BoxFuture<'a, Result<Endpoint, ContainerError>> {
        Box::pin(async move {
            let client = self.connected().await.map_err(unavailable)?;
            let facts = client.inspect(container).await.map_err(unavailable)?;
            let specs = specs.or_else(|| match &facts.wants {
                Some(Ok(WeaveCidr::Attached(s))) => Some(s.clone()),
                _ => Some(vec![AddressSpec::Default]),
            });
            self.attach_named(&facts, specs, with_dns)
                .await?
                .ok_or_else(|| ContainerError::BadRequest(format!("{container} is not attached")))
        })
    }

    fn detach_container<'a>(
        &'a self,
        container: &'a str,
    ) -> BoxFuture<'a, Result<Endpoint, ContainerError>> {
        Box::pin(async move {
            let id = if is_container_id(container) {
                container.to_string()
            } else {
                let client = self.connected().await.map_err(unavailable)?;
                client.inspect(container).await.map_err(unavailable)?.id
            };
            self.detach(&id)
                .await?
                .ok_or_else(|| ContainerError::NotFound(format!("{container} is not attached")))
        })
    }
}

/// A listening unix socket at `path`: its directory made, a stale socket replaced, its mode
/// set whatever the umask ([`socket_access`]). It is bound under a temporary name, given its
/// mode and owner, then renamed into place, so it is never reachable with looser rights.
pub(crate) fn bind_unix_socket(
    path: &std::path::Path,
) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut temp = path.as_os_str().to_os_string();
    temp.push(format!(".binding-{}", std::process::id()));
    let temp = std::path::PathBuf::from(temp);
    let _ = std::fs::remove_file(&temp);
    let listener = tokio::net::UnixListener::bind(&temp)?;
    let (mode, group) = socket_access(docker_group());
    let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::os::unix::fs::chown(&temp, None, group))
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(listener)
}

/// The mode and group of the proxy's and the plugin's sockets: 0660 with the `docker` group
/// when there is one (its members may use Docker anyway), else 0600 (root only).
pub(crate) fn socket_access(docker_gid: Option<u32>) -> (u32, Option<u32>) {
    match docker_gid {
        Some(gid) => (0o660, Some(gid)),
        None => (0o600, None),
    }
}

/// The gid of the `docker` group, if the host has one.
fn docker_group() -> Option<u32> {
    // SAFETY: `libc::group` is plain data (integers and pointers), for which all-zero bytes
    // are a valid value.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: the name is NUL-terminated; `group`, `buf` and `found` are valid for writes and
    // `buf.len()` is the buffer's size; the result is read only when `found` is set.
    let rc = unsafe {
        libc::getgrnam_r(
            c"docker".as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(group.gr_gid)
}

#[cfg(test)]
mod socket_tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn sockets_are_0660_docker_or_0600_whatever_the_umask() {
        assert_eq!(super::socket_access(Some(999)), (0o660, Some(999)));
        assert_eq!(super::socket_access(None), (0o600, None));
        let dir = std::env::temp_dir().join(format!("weave-sock-{}", std::process::id()));
        let path = dir.join("weave.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let _l = super::bind_unix_socket(&path).unwrap();
        // Again over the first (a stale socket is replaced).
        let _l = super::bind_unix_socket(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let (mode, group) = super::socket_access(super::docker_group());
        assert_eq!(meta.permissions().mode() & 0o777, mode);
        if let Some(gid) = group {
            assert_eq!(meta.gid(), gid);
        }
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
