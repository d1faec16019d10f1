//! The attach use case: an endpoint's addresses (IPAM), its interface (the data path), its
//! name (weaveDNS) and the record of it (the state directory), in that order; when a later
//! step fails, what the earlier ones did is undone. The HTTP API, the Docker integration
//! (and a CNI plugin) attach and detach through [`Endpoints`] and nowhere else.
//!
//! [`Interfaces`] is the layer below: an interface in the data path, recorded in the state
//! directory, without addresses to allocate or names to register (the Docker network
//! plugin's endpoints, whose addresses Docker asked for beforehand).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::datapath::dyn_datapath::DynDatapath;
use crate::datapath::{AttachRequest, DatapathError, Endpoint};
use crate::dns::DnsError;
use crate::ipam::service::{IpamService, IpamServiceError};
use crate::ipam::spec::AddressSpec;
use crate::net::Ipv4Cidr;
use crate::state::{StateDir, StateError};

/// Why address specs could not be turned into addresses.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("{0}: IP allocation is off in this router; give addresses")]
    NoIpam(AddressSpec),
    #[error(transparent)]
    Ipam(#[from] IpamServiceError),
}

/// Why an endpoint was not attached (nothing of it is left) or not detached.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    /// A name was asked for and this router runs no DNS.
    #[error("DNS is not running on this router (launched with --no-dns?)")]
    NoDns,
    /// The name asked for cannot be one in the DNS domain.
    #[error(transparent)]
    BadName(DnsError),
    #[error(transparent)]
    Addresses(#[from] AddressError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// The name could not be registered.
    #[error(transparent)]
    Register(DnsError),
    /// The endpoints could not be recorded in the state directory.
    #[error("cannot save endpoints: {0}")]
    Save(StateError),
    /// The endpoint's name could not be stored in the state directory.
    #[error("cannot store the DNS registrations: {0}")]
    StoreNames(StateError),
    /// `hide ADDR` of an address `expose` did not give.
    #[error("{0} is not exposed")]
    NotExposed(std::net::Ipv4Addr),
}

/// What [`Endpoints::attach`] is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachOrder {
    pub netns: PathBuf,
    pub specs: Vec<AddressSpec>,
    /// A name to register in the DNS domain for the addresses (removed on detach).
    pub hostname: Option<String>,
    /// Whose addresses and names they are (a container ID); the namespace path when `None`.
    pub owner: Option<String>,
    /// The interface's name in the namespace (`ethwe` when `None`).
    pub ifname: Option<String>,
}

/// Where endpoints get their names: weaveDNS ([`crate::dns::Dns`]).
pub trait Names: Send + Sync + 'static {
    /// `name` made fully qualified in the domain, or why it cannot be.
    fn qualify(&self, name: &str) -> Result<String, DnsError>;
    /// Binds `fqdn` to each address for `owner`.
    fn add(&self, owner: &str, addrs: &[Ipv4Addr], fqdn: &str) -> Result<usize, DnsError>;
    /// Removes every name of `owner`.
    fn remove_all(&self, owner: &str);
    /// Waits until the names added and removed so far are stored for the next run.
    fn stored(&self) -> Stored;
}

/// What [`Names::stored`] waits on.
pub type Stored =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StateError>> + Send>>;

impl Names for crate::dns::Dns {
    fn qualify(&self, name: &str) -> Result<String, DnsError> {
        crate::dns::Dns::qualify(self, name)
    }

    fn add(&self, owner: &str, addrs: &[Ipv4Addr], fqdn: &str) -> Result<usize, DnsError> {
        crate::dns::Dns::add(self, owner, addrs, fqdn)
    }

    fn remove_all(&self, owner: &str) {
        let _ = crate::dns::Dns::remove(self, owner, &[], None);
    }

    fn stored(&self) -> Stored {
        Box::pin(self.registrations_stored())
    }
}

/// Turns address specs into addresses for `owner`: allocations and claims in the range go
/// through IPAM; addresses outside it are used as given. On any error, what this call
/// allocated is released again and nothing is left allocated.
pub async fn resolve_addresses(
    ipam: Option<&IpamService>,
    owner: &str,
    specs: &[AddressSpec],
) -> Result<Vec<Ipv4Cidr>, AddressError> {
    let mut out = Vec::new();
    for spec in specs {
        let result = match (spec, ipam) {
            (AddressSpec::Ip(a), Some(i)) if i.range().contains(a.addr) => {
                i.claim(owner, *a).await.map(|()| *a)
            }
            (AddressSpec::Ip(a), _) => Ok(*a),
            (AddressSpec::Default, Some(i)) => i.allocate(owner, None).await,
            (AddressSpec::Net(c), Some(i)) => i.allocate(owner, Some(*c)).await,
            (_, None) => return Err(AddressError::NoIpam(*spec)),
        };
        match result {
            Ok(a) => out.push(a),
            Err(e) => {
                if let Some(i) = ipam {
                    let _ = i.release(owner);
                }
                return Err(e.into());
            }
        }
    }
    Ok(out)
}

/// Interfaces in the data path, recorded in the state directory (so that a restarted
/// router takes them up again).
pub struct Interfaces {
    datapath: Arc<dyn DynDatapath>,
    /// `endpoints.json`, written off the async threads.
    store: Option<crate::state::OffThreadWriter>,
    /// One snapshot at a time: the newest snapshot is the last one handed to the writer.
    saving: std::sync::Mutex<()>,
}

impl Interfaces {
    pub fn new(datapath: Arc<dyn DynDatapath>, store: Option<Arc<StateDir>>) -> Self {
        Self {
            datapath,
            store: store
                .map(|s| crate::state::OffThreadWriter::new(s.endpoints_path(), "the endpoints")),
            saving: std::sync::Mutex::new(()),
        }
    }

    pub fn datapath(&self) -> &Arc<dyn DynDatapath> {
        &self.datapath
    }

    /// Endpoints attached now.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.datapath.endpoints()
    }

    /// Gives a namespace an interface and records it in the state directory.
    pub async fn attach(&self, request: AttachRequest) -> Result<Endpoint, DatapathError> {
        let endpoint = self.datapath.attach_endpoint(request).await?;
        self.save_logged().await;
        Ok(endpoint)
    }

    /// Takes the interface of a namespace away and records that.
    pub async fn detach(&self, netns: PathBuf) -> Result<Endpoint, DatapathError> {
        let endpoint = self.datapath.detach_endpoint(netns).await?;
        self.save_logged().await;
        Ok(endpoint)
    }

    /// Takes up endpoints of an earlier run; those whose interface is gone are forgotten.
    pub async fn restore(&self, endpoints: Vec<Endpoint>) {
        for e in endpoints {
            let netns = e.netns.clone();
            match self.datapath.restore_endpoint(e).await {
                Ok(()) => tracing::info!("endpoint in {} taken up again", netns.display()),
                Err(err) => tracing::warn!("endpoint in {} forgotten: {err}", netns.display()),
            }
        }
        self.save_logged().await;
    }

    /// Writes the endpoints to the state directory (off the async threads); a failure is
    /// logged.
    pub fn save(&self) {
        let Some(store) = &self.store else {
            return;
        };
        let _one_at_a_time = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        store.write(self.snapshot());
    }

    /// Writes the endpoints (off the async threads) and waits; a failure is logged.
    async fn save_logged(&self) {
        if let Err(e) = self.try_save().await {
            tracing::error!("cannot save endpoints: {e}");
        }
    }

    /// Writes the endpoints (off the async threads) and tells whether that worked.
    async fn try_save(&self) -> Result<(), StateError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let written = {
            let _one_at_a_time = self.saving.lock().unwrap_or_else(|e| e.into_inner());
            store.write_then(self.snapshot())
        };
        written.await
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.datapath.endpoints()).expect("serialisable")
    }
}

/// The attach and detach use case over the interfaces, IP allocation (when on) and names
/// (when DNS runs).
pub struct Endpoints {
    interfaces: Interfaces,
    ipam: Option<Arc<IpamService>>,
    names: Option<Arc<dyn Names>>,
}

impl Endpoints {
    pub fn new(
        interfaces: Interfaces,
        ipam: Option<Arc<IpamService>>,
        names: Option<Arc<dyn Names>>,
    ) -> Self {
        Self {
            interfaces,
            ipam,
            names,
        }
    }

    pub fn interfaces(&self) -> &Interfaces {
        &self.interfaces
    }

    /// Allocates or claims the addresses, gives the namespace its interface, registers the
    /// name and records the endpoint. On any error nothing is left: no interface, no
    /// allocation, no name.
    pub async fn attach(&self, order: AttachOrder) -> Result<Endpoint, EndpointsError> {
        let named = match &order.hostname {
            Some(h) => {
                let names = self.names.as_ref().ok_or(EndpointsError::NoDns)?;
                let fqdn = names.qualify(h).map_err(EndpointsError::BadName)?;
                Some((names, fqdn))
            }
            None => None,
        };
        if self
            .interfaces
            .endpoints()
            .iter()
            .any(|e| e.netns == order.netns)
        {
            return Err(DatapathError::AlreadyAttached(order.netns).into());
        }
        let owner = order
            .owner
            .clone()
            .unwrap_or_else(|| order.netns.display().to_string());
        let addresses = resolve_addresses(self.ipam.as_deref(), &owner, &order.specs).await?;
        let attached = self
            .interfaces
            .datapath
            .attach_endpoint(AttachRequest {
                netns: order.netns,
                addresses,
                owner: order.owner,
                hand_over: false,
                ifname: order.ifname,
            })
            .await;
        let endpoint = match attached {
            Ok(e) => e,
            Err(e) => {
                if let Some(i) = &self.ipam {
                    let _ = i.release(&owner);
                }
                return Err(e.into());
            }
        };
        tracing::info!(
            "attached {} as {}",
            endpoint.netns.display(),
            endpoint.host_ifname
        );
        if let Some((names, fqdn)) = named {
            let addrs: Vec<Ipv4Addr> = endpoint.addresses.iter().map(|a| a.addr).collect();
            if !addrs.is_empty() {
                if let Err(e) = names.add(&owner, &addrs, &fqdn) {
                    let _ = self.detach(endpoint.netns.clone()).await;
                    return Err(EndpointsError::Register(e));
                }
            }
        }
        if let Err(e) = self.interfaces.try_save().await {
            let _ = self.detach(endpoint.netns.clone()).await;
            return Err(EndpointsError::Save(e));
        }
        if let Some(names) = &self.names {
            if let Err(e) = names.stored().await {
                let _ = self.detach(endpoint.netns.clone()).await;
                return Err(EndpointsError::StoreNames(e));
            }
        }
        Ok(endpoint)
    }

    /// Takes the namespace's interface away, removes its names and releases its addresses.
    pub async fn detach(&self, netns: PathBuf) -> Result<Endpoint, EndpointsError> {
        let endpoint = self.interfaces.detach(netns).await?;
        let owner = endpoint.owner();
        if let Some(names) = &self.names {
            names.remove_all(&owner);
            // Stored before the answer, so a router killed right after a detach does not
            // bring the name back when it starts again.
            if let Err(e) = names.stored().await {
                tracing::error!("cannot store the DNS registrations without {owner}'s: {e}");
            }
        }
        if let Some(i) = &self.ipam {
            if let Err(e) = i.release(&owner) {
                tracing::error!("cannot release the addresses of {owner}: {e}");
            }
        }
        tracing::info!(
            "detached {} ({})",
            endpoint.netns.display(),
            endpoint.host_ifname
        );
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use super::*;
    use crate::datapath::fake::{FakeCall, FakeDatapath};
    use crate::dns::records::RecordError;
    use crate::mesh::peer_name::PeerName;

    /// Names in memory, in the domain `weave.local.`; `add` fails while `fail` is set,
    /// storing while `store_fails` is.
    #[derive(Default)]
    struct FakeNames {
        names: Mutex<BTreeSet<(String, Ipv4Addr, String)>>,
        /// The names as they were when last asked to be stored.
        stored: Mutex<BTreeSet<(String, Ipv4Addr, String)>>,
        fail: std::sync::atomic::AtomicBool,
        store_fails: std::sync::atomic::AtomicBool,
    }

    impl FakeNames {
        fn all(&self) -> Vec<(String, Ipv4Addr, String)> {
            self.names.lock().unwrap().iter().cloned().collect()
        }

        fn all_stored(&self) -> Vec<(String, Ipv4Addr, String)> {
            self.stored.lock().unwrap().iter().cloned().collect()
        }
    }

    impl Names for FakeNames {
        fn qualify(&self, name: &str) -> Result<String, DnsError> {
            crate::dns::records::qualify(name, "weave.local.").map_err(DnsError::from)
        }

        fn add(&self, owner: &str, addrs: &[Ipv4Addr], fqdn: &str) -> Result<usize, DnsError> {
            if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(RecordError::BadName(fqdn.to_string()).into());
            }
            let mut names = self.names.lock().unwrap();
            for a in addrs {
                names.insert((owner.to_string(), *a, fqdn.to_string()));
            }
            Ok(addrs.len())
        }

        fn remove_all(&self, owner: &str) {
            self.names.lock().unwrap().retain(|(o, _, _)| o != owner);
        }

        fn stored(&self) -> Stored {
            let fails = self.store_fails.load(std::sync::atomic::Ordering::Relaxed);
            if !fails {
                *self.stored.lock().unwrap() = self.names.lock().unwrap().clone();
            }
            Box::pin(async move {
                match fails {
                    false => Ok(()),
                    true => Err(StateError::Io {
                        path: "dns.json".into(),
                        error: std::io::Error::other("disk full"),
                    }),
                }
            })
        }
    }

    /// An IPAM of 10.2.0.0/16 (default subnet 10.2.1.0/24) that is all ours.
    fn ipam() -> Arc<IpamService> {
        IpamService::alone(PeerName::from_bytes([0x0a, 0, 0, 0, 0, 1]))
    }

    struct Bed {
        datapath: Arc<FakeDatapath>,
        ipam: Arc<IpamService>,
        names: Arc<FakeNames>,
        state_dir: PathBuf,
        endpoints: Endpoints,
    }

    fn bed(tag: &str) -> Bed {
        let state_dir =
            std::env::temp_dir().join(format!("weave-node-endpoints-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        let store = Arc::new(StateDir::open(&state_dir).unwrap());
        let datapath = Arc::new(FakeDatapath::new());
        let ipam = ipam();
        let names = Arc::new(FakeNames::default());
        let endpoints = Endpoints::new(
            Interfaces::new(datapath.clone(), Some(store)),
            Some(ipam.clone()),
            Some(names.clone()),
        );
        Bed {
            datapath,
            ipam,
            names,
            state_dir,
            endpoints,
        }
    }

    impl Bed {
        fn saved(&self) -> Vec<Endpoint> {
            std::fs::read(self.state_dir.join("endpoints.json"))
                .map(|b| serde_json::from_slice(&b).unwrap())
                .unwrap_or_default()
        }

        /// Nothing is left of an attach: no interface, no allocation, no name.
        fn assert_nothing_left(&self, owner: &str) {
            assert!(crate::datapath::Datapath::endpoints(&*self.datapath).is_empty());
            assert!(
                self.ipam.addresses_of(owner).is_empty(),
                "{owner} keeps addresses"
            );
            assert!(self.names.all().is_empty(), "{:?}", self.names.all());
        }
    }

    impl Drop for Bed {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }

    const NETNS: &str = "/proc/self/ns/net";

    fn order(specs: &[&str], hostname: Option<&str>) -> AttachOrder {
        AttachOrder {
            netns: NETNS.into(),
            specs: specs.iter().map(|s| s.parse().unwrap()).collect(),
            hostname: hostname.map(str::to_string),
            owner: Some("c1".into()),
            ifname: None,
        }
    }

    #[tokio::test]
    async fn attach_allocates_plugs_names_and_records_and_detach_undoes_it_all() {
        let b = bed("ok");
        let e = b
            .endpoints
            .attach(order(&["net:default"], Some("web")))
            .await
            .unwrap();
        assert_eq!(e.addresses, vec!["10.2.1.1/24".parse().unwrap()]);
        assert_eq!(b.ipam.addresses_of("c1"), e.addresses);
        assert_eq!(
            b.names.all(),
            vec![(
                "c1".into(),
                "10.2.1.1".parse().unwrap(),
                "web.weave.local.".into()
            )]
        );
        assert_eq!(b.saved(), vec![e.clone()]);
        assert_eq!(
            b.names.all_stored(),
            b.names.all(),
            "stored before the answer"
        );

        let again = b.endpoints.attach(order(&["net:default"], None)).await;
        assert!(
            matches!(
                again,
                Err(EndpointsError::Datapath(DatapathError::AlreadyAttached(_)))
            ),
            "{again:?}"
        );
        assert_eq!(b.ipam.addresses_of("c1"), e.addresses, "the first stays");

        let gone = b.endpoints.detach(NETNS.into()).await.unwrap();
        assert_eq!(gone, e);
        b.assert_nothing_left("c1");
        assert_eq!(b.saved(), vec![]);
        assert_eq!(
            b.names.all_stored(),
            vec![],
            "the name's removal stored too"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_attaches_are_all_recorded() {
        let b = Arc::new(bed("concurrent"));
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move {
                    // The fake data path only asks that the namespace path exists.
                    let netns = b.state_dir.join(format!("ns{i}"));
                    std::fs::write(&netns, b"").unwrap();
                    let mut o = order(&["net:default"], None);
                    o.netns = netns;
                    o.owner = Some(format!("c{i}"));
                    b.endpoints.attach(o).await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(b.saved().len(), 20);
    }

    #[tokio::test]
    async fn an_ipam_failure_releases_what_was_allocated_and_plugs_nothing() {
        let b = bed("ipam");
        // The first address is allocated, the second subnet is outside the range.
        let r = b
            .endpoints
            .attach(order(&["net:default", "net:10.3.0.0/24"], None))
            .await;
        assert!(
            matches!(r, Err(EndpointsError::Addresses(AddressError::Ipam(_)))),
            "{r:?}"
        );
        b.assert_nothing_left("c1");
        assert!(!b
            .datapath
            .calls()
            .iter()
            .any(|c| matches!(c, FakeCall::Attach(_))));
    }

    #[tokio::test]
    async fn without_ipam_only_given_addresses_are_taken() {
        let datapath = Arc::new(FakeDatapath::new());
        let endpoints = Endpoints::new(Interfaces::new(datapath, None), None, None);
        let r = endpoints.attach(order(&["net:default"], None)).await;
        assert_eq!(
            r.unwrap_err().to_string(),
            "net:default: IP allocation is off in this router; give addresses"
        );
        let r = endpoints.attach(order(&["10.9.0.1/24"], Some("web"))).await;
        assert!(matches!(r, Err(EndpointsError::NoDns)), "{r:?}");
        let e = endpoints
            .attach(order(&["10.9.0.1/24"], None))
            .await
            .unwrap();
        assert_eq!(e.addresses, vec!["10.9.0.1/24".parse().unwrap()]);
    }

    #[tokio::test]
    async fn a_datapath_failure_releases_the_addresses() {
        let b = bed("datapath");
        let mut o = order(&["net:default", "10.2.7.7/24"], Some("web"));
        o.netns = "/nonexistent/ns".into();
        let r = b.endpoints.attach(o).await;
        assert!(
            matches!(
                r,
                Err(EndpointsError::Datapath(DatapathError::Netns { .. }))
            ),
            "{r:?}"
        );
        b.assert_nothing_left("c1");
        assert_eq!(b.saved(), vec![]);
    }

    #[tokio::test]
    async fn a_bad_name_is_refused_before_anything_is_done() {
        let b = bed("badname");
        let r = b
            .endpoints
            .attach(order(&["net:default"], Some("a..b")))
            .await;
        assert!(matches!(r, Err(EndpointsError::BadName(_))), "{r:?}");
        b.assert_nothing_left("c1");
        assert!(b.datapath.calls().is_empty());
    }

    #[tokio::test]
    async fn a_dns_failure_unplugs_the_interface_and_releases_the_addresses() {
        let b = bed("dns");
        b.names
            .fail
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let r = b
            .endpoints
            .attach(order(&["net:default"], Some("web")))
            .await;
        assert!(matches!(r, Err(EndpointsError::Register(_))), "{r:?}");
        b.assert_nothing_left("c1");
        assert!(b
            .datapath
            .calls()
            .iter()
            .any(|c| matches!(c, FakeCall::Detach(_))));
        assert_eq!(b.saved(), vec![]);
    }

    #[tokio::test]
    async fn a_state_failure_undoes_interface_name_and_addresses() {
        let b = bed("state");
        // The state directory vanishes under the router: nothing can be recorded.
        std::fs::remove_dir_all(&b.state_dir).unwrap();
        let r = b
            .endpoints
            .attach(order(&["net:default"], Some("web")))
            .await;
        assert!(matches!(r, Err(EndpointsError::Save(_))), "{r:?}");
        assert!(r
            .unwrap_err()
            .to_string()
            .starts_with("cannot save endpoints: "));
        b.assert_nothing_left("c1");
    }

    #[tokio::test]
    async fn a_name_that_cannot_be_stored_undoes_the_attach() {
        let b = bed("names-unstored");
        b.names
            .store_fails
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let r = b
            .endpoints
            .attach(order(&["net:default"], Some("web")))
            .await;
        assert!(matches!(r, Err(EndpointsError::StoreNames(_))), "{r:?}");
        assert_eq!(
            r.unwrap_err().to_string(),
            "cannot store the DNS registrations: state directory dns.json: disk full"
        );
        b.assert_nothing_left("c1");
        assert_eq!(b.saved(), vec![]);
    }
}
