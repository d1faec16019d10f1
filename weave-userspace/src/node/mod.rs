//! One router's use cases, as its adapters (the HTTP API, the Docker integration, a CNI
//! plugin) call them: [`Node`] over the mesh, the data path, IP allocation and DNS.
//!
//! - [`endpoints`]: attach and detach (IPAM → data path → DNS → state, with rollback).
//! - [`containers`]: the port through which the HTTP API reaches the container engine.
//! - [`daemon`]: the composition root, which starts everything and wires it together.
//!
//! The adapters depend on the node and not on each other; the node depends on the router
//! (as [`MeshControl`]) and the data path (as [`DynDatapath`]), neither of them generic.

pub mod containers;
pub mod daemon;
pub mod endpoints;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::datapath::dyn_datapath::DynDatapath;
use crate::datapath::{AttachRequest, Datapath, DatapathCounters, DatapathError, Endpoint};
use crate::dns::Dns;
use crate::ipam::service::IpamService;
use crate::ipam::spec::AddressSpec;
use crate::mesh::connection_maker::Target;
use crate::net::Ipv4Cidr;
use crate::router::gossip::MeshSummary;
use crate::router::{MeshStatus, Router};
use endpoints::{AddressError, AttachOrder, Endpoints, EndpointsError, Interfaces};

/// The IPAM owner of the host's exposed addresses.
pub const EXPOSE_OWNER: &str = "weave:expose";

/// What the node asks of the mesh: what it shows and which peers it dials.
pub trait MeshControl: Send + Sync + 'static {
    /// A snapshot of connections and targets.
    fn status(&self) -> MeshStatus;
    /// Peers known and peers routed to.
    fn mesh_summary(&self) -> MeshSummary;
    /// Keeps a connection to `target`.
    fn connect(&self, target: Target);
    /// Stops dialling `targets`; returns those that were targets.
    fn forget(&self, targets: &[Target]) -> Vec<Target>;
    /// Replaces every target with `targets`.
    fn replace_targets(&self, targets: Vec<Target>);
    /// The peer a name or nickname (of a peer seen since the start) names.
    fn peer_named(&self, text: &str) -> Result<crate::mesh::peer_name::PeerName, String>;
}

impl<D: Datapath> MeshControl for Router<D> {
    fn status(&self) -> MeshStatus {
        Router::status(self)
    }

    fn mesh_summary(&self) -> MeshSummary {
        Router::mesh_summary(self)
    }

    fn connect(&self, target: Target) {
        Router::connect(self, target)
    }

    fn forget(&self, targets: &[Target]) -> Vec<Target> {
        Router::forget(self, targets)
    }

    fn replace_targets(&self, targets: Vec<Target>) {
        Router::replace_targets(self, targets)
    }

    fn peer_named(&self, text: &str) -> Result<crate::mesh::peer_name::PeerName, String> {
        Router::peer_named(self, text)
    }
}

/// What the data path's part of the status shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathShown {
    /// The underlay interface.
    pub iface: String,
    /// Whether the XDP filter is attached (`on` / `off`).
    pub xdp: String,
}

/// A running router as its adapters see it.
pub struct Node {
    mesh: Arc<dyn MeshControl>,
    endpoints: Endpoints,
    ipam: Option<Arc<IpamService>>,
    dns: Option<Arc<Dns>>,
    shown: DatapathShown,
}

impl Node {
    pub fn new(
        mesh: Arc<dyn MeshControl>,
        interfaces: Interfaces,
        ipam: Option<Arc<IpamService>>,
        dns: Option<Arc<Dns>>,
        shown: DatapathShown,
    ) -> Self {
        let names = dns.clone().map(|d| d as Arc<dyn endpoints::Names>);
        Self {
            mesh,
            endpoints: Endpoints::new(interfaces, ipam.clone(), names),
            ipam,
            dns,
            shown,
        }
    }

    fn datapath(&self) -> &Arc<dyn DynDatapath> {
        self.endpoints.interfaces().datapath()
    }

    pub fn status(&self) -> MeshStatus {
        self.mesh.status()
    }

    pub fn mesh_summary(&self) -> MeshSummary {
        self.mesh.mesh_summary()
    }

    /// The peer a peer name or nickname names.
    pub fn peer_named(&self, text: &str) -> Result<crate::mesh::peer_name::PeerName, String> {
        self.mesh.peer_named(text)
    }

    /// Adds targets to dial (or, with `replace`, makes them the only targets).
    pub fn connect(&self, targets: Vec<Target>, replace: bool) {
        if replace {
            self.mesh.replace_targets(targets);
        } else {
            for t in targets {
                self.mesh.connect(t);
            }
        }
    }

    /// Stops dialling targets; returns those that were targets.
    pub fn forget(&self, targets: Vec<Target>) -> Vec<Target> {
        self.mesh.forget(&targets)
    }

    /// IP allocation, when on.
    pub fn ipam(&self) -> Option<Arc<IpamService>> {
        self.ipam.clone()
    }

    /// The DNS service, when it runs.
    pub fn dns(&self) -> Option<Arc<Dns>> {
        self.dns.clone()
    }

    pub fn datapath_shown(&self) -> &DatapathShown {
        &self.shown
    }

    /// The MTU given to container interfaces.
    pub fn container_mtu(&self) -> u32 {
        self.datapath().container_mtu()
    }

    /// Endpoints attached now.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.datapath().endpoints()
    }

    /// Counters of the data path, summed over CPUs.
    pub fn counters(&self) -> Result<DatapathCounters, DatapathError> {
        self.datapath().counters()
    }

    /// Attaches a namespace with addresses and a name (see [`Endpoints::attach`]).
    pub async fn attach(&self, order: AttachOrder) -> Result<Endpoint, EndpointsError> {
        self.endpoints.attach(order).await
    }

    /// Detaches a namespace, its names and addresses (see [`Endpoints::detach`]).
    pub async fn detach(&self, netns: PathBuf) -> Result<Endpoint, EndpointsError> {
        self.endpoints.detach(netns).await
    }

    /// Gives a namespace an interface with addresses allocated already; nothing else.
    pub async fn attach_interface(
        &self,
        request: AttachRequest,
    ) -> Result<Endpoint, DatapathError> {
        self.endpoints.interfaces().attach(request).await
    }

    /// Takes an interface away; its addresses and names stay.
    pub async fn detach_interface(&self, netns: PathBuf) -> Result<Endpoint, DatapathError> {
        self.endpoints.interfaces().detach(netns).await
    }

    /// Writes the endpoints to the state directory.
    pub fn save_endpoints(&self) {
        self.endpoints.interfaces().save();
    }

    /// Gives the host addresses on the weave network (allocated like a container's, owner
    /// [`EXPOSE_OWNER`]) and masquerades their subnets' traffic to the outside. On an error
    /// the addresses are released.
    pub async fn expose(
        &self,
        specs: &[AddressSpec],
        hostname: Option<&str>,
    ) -> Result<Vec<Ipv4Cidr>, EndpointsError> {
        if let Some(name) = hostname {
            let dns = self.dns.as_ref().ok_or(EndpointsError::NoDns)?;
            dns.qualify(name).map_err(EndpointsError::BadName)?;
        }
        let ipam = self.ipam.as_deref();
        let addresses = endpoints::resolve_addresses(ipam, EXPOSE_OWNER, specs).await?;
        for a in &addresses {
            if let Err(e) = self.datapath().expose(*a).await {
                if let Some(i) = ipam {
                    let _ = i.release(EXPOSE_OWNER);
                }
                return Err(e.into());
            }
        }
        // `expose -h FQDN`: the host's name, for its exposed addresses (as Weave).
        if let (Some(name), Some(dns)) = (hostname, &self.dns) {
            let addrs: Vec<std::net::Ipv4Addr> = addresses.iter().map(|a| a.addr).collect();
            dns.add(EXPOSE_OWNER, &addrs, name)
                .map_err(EndpointsError::Register)?;
        }
        Ok(addresses)
    }

    /// Takes the exposed addresses away (only those in `only` when it is not empty),
    /// releases them and removes the names registered for them.
    pub async fn hide(&self, only: &[std::net::Ipv4Addr]) -> Result<Vec<Ipv4Cidr>, EndpointsError> {
        let Some(ipam) = &self.ipam else {
            return Ok(Vec::new());
        };
        let exposed = ipam.addresses_of(EXPOSE_OWNER);
        if let Some(missing) = only.iter().find(|a| !exposed.iter().any(|e| e.addr == **a)) {
            return Err(EndpointsError::NotExposed(*missing));
        }
        let addresses: Vec<Ipv4Cidr> = exposed
            .into_iter()
            .filter(|e| only.is_empty() || only.contains(&e.addr))
            .collect();
        for a in &addresses {
            self.datapath().hide(*a).await?;
            ipam.release_address(EXPOSE_OWNER, a.addr)
                .map_err(AddressError::from)?;
        }
        if let Some(dns) = &self.dns {
            let addrs: Vec<std::net::Ipv4Addr> = addresses.iter().map(|a| a.addr).collect();
            if !addrs.is_empty() {
                let _ = dns.remove(EXPOSE_OWNER, &addrs, None);
            }
        }
        Ok(addresses)
    }

    /// Addresses `expose` gave the host in an earlier run stay allocated to it (the IP
    /// allocation is stored): they go back on the bridge, with their masquerading.
    pub async fn expose_again(&self) {
        let Some(ipam) = &self.ipam else { return };
        for address in ipam.addresses_of(EXPOSE_OWNER) {
            match self.datapath().expose(address).await {
                Ok(()) => tracing::info!("{address} exposed again, as in the earlier run"),
                Err(e) => tracing::error!("cannot expose {address} again: {e}"),
            }
        }
    }

    /// Sends a gratuitous ARP from each of `endpoints`' interfaces found in `netns` (moved
    /// there by someone else), for its addresses.
    pub async fn announce(
        &self,
        netns: &Path,
        endpoints: &[Endpoint],
    ) -> Result<(), DatapathError> {
        let announced = endpoints
            .iter()
            .map(|e| (e.mac, e.addresses.iter().map(|a| a.addr).collect()))
            .collect();
        crate::datapath::garp::announce_in_netns(netns, announced).await
    }

    /// The name of the container end of a handed-over interface
    /// ([`AttachRequest::hand_over`]), from its host end's.
    pub fn handover_name(&self, host_ifname: &str) -> String {
        crate::datapath::ebpf::handover_name(host_ifname)
    }
}
