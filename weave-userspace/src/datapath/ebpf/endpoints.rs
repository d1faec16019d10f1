//! Container interfaces: a veth pair per network namespace, its host end a port of the
//! bridge with TX and the egress check attached, its container end `ethwe` in the
//! namespace (or left in the host for Docker to move: the hand-over), announced with a
//! gratuitous ARP.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use weave_ebpf_common::maps::MAX_ENDPOINT_ADDRESSES;

use super::maps::endpoint_record;
use super::service::MAIN_TABLE;
use super::EbpfDatapath;
use crate::datapath::netlink::{self, LinkChange, LinkInfo};
use crate::datapath::{garp, AttachRequest, DatapathError, Endpoint};

/// Name of the container end of a veth, inside its namespace.
pub const CONTAINER_IFNAME: &str = "ethwe";
/// Prefix of the host end of container veths.
pub const HOST_VETH_PREFIX: &str = "vethwe";
/// Prefix of the container end of a veth left in the host for Docker to move.
pub const HANDOVER_VETH_PREFIX: &str = "vethwp";
/// Prefix of the container end of a veth while it is still in the host (before it is
/// moved and renamed [`CONTAINER_IFNAME`]).
const TEMP_VETH_PREFIX: &str = "vethwc";

/// The name of the container end inside the namespace: the one asked for, else
/// [`CONTAINER_IFNAME`].
fn container_ifname(request: &AttachRequest) -> &str {
    request.ifname.as_deref().unwrap_or(CONTAINER_IFNAME)
}

/// The name of the container end of a handed-over veth, from its host end's.
pub fn handover_name(host_ifname: &str) -> String {
    let suffix = host_ifname
        .strip_prefix(HOST_VETH_PREFIX)
        .unwrap_or(host_ifname);
    format!("{HANDOVER_VETH_PREFIX}{suffix}")
}

/// The names of a new veth pair with `suffix`: (host end, container end while in the host).
fn veth_names(suffix: &str) -> (String, String) {
    (
        format!("{HOST_VETH_PREFIX}{suffix}"),
        format!("{TEMP_VETH_PREFIX}{suffix}"),
    )
}

fn random_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// The addresses a gratuitous ARP announces for an endpoint.
fn announced(endpoint: &Endpoint) -> Vec<Ipv4Addr> {
    endpoint.addresses.iter().map(|a| a.addr).collect()
}

fn up() -> LinkChange {
    LinkChange {
        up: true,
        ..Default::default()
    }
}

impl EbpfDatapath {
    /// The host end of a container veth as a port of the weave bridge: MTU, enslaved, up.
    async fn make_bridge_port(&self, index: u32) -> Result<(), DatapathError> {
        let change = LinkChange {
            mtu: Some(self.mtu_now()),
            controller: Some(self.bridge_index),
            up: true,
            ..Default::default()
        };
        self.nl.set_link(index, change).await
    }

    pub(super) async fn attach_endpoint(
        &self,
        request: AttachRequest,
    ) -> Result<Endpoint, DatapathError> {
        if self
            .lock()
            .endpoints
            .iter()
            .any(|e| e.netns == request.netns)
        {
            return Err(DatapathError::AlreadyAttached(request.netns));
        }
        if request.addresses.len() > MAX_ENDPOINT_ADDRESSES {
            return Err(DatapathError::TooManyAddresses {
                count: request.addresses.len(),
                max: MAX_ENDPOINT_ADDRESSES,
            });
        }
        // Fail early, before creating anything, on a path that is not a network namespace
        // or one that has an ethwe (or the interface asked for) already.
        let ifname = container_ifname(&request).to_string();
        let has_ethwe = !request.hand_over
            && netlink::in_netns(&request.netns, |nl| async move {
                Ok(nl.link_by_name(&ifname).await?.is_some())
            })
            .await?;
        if has_ethwe {
            return Err(DatapathError::AlreadyAttached(request.netns));
        }
        let mut last = None;
        for _ in 0..3 {
            let suffix = random_suffix();
            let (host_name, temp_name) = veth_names(&suffix);
            if self.nl.link_by_name(&host_name).await?.is_some() {
                continue;
            }
            match self.attach_veth(&request, &host_name, temp_name).await {
                Ok(ep) => return Ok(ep),
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        Err(last.unwrap_or_else(|| DatapathError::Netlink("no free veth name".into())))
    }

    /// Creates the veth pair `host_name`/`temp_name` and makes it the endpoint of
    /// `request`; removes it again on failure.
    async fn attach_veth(
        &self,
        request: &AttachRequest,
        host_name: &str,
        temp_name: String,
    ) -> Result<Endpoint, DatapathError> {
        self.nl.add_veth(host_name, &temp_name).await?;
        let host = self
            .nl
            .link_by_name(host_name)
            .await?
            .ok_or_else(|| DatapathError::Netlink(format!("veth {host_name} vanished")))?;
        let result = if request.hand_over {
            self.hand_over(request, &host, &temp_name).await
        } else {
            self.move_into_netns(request, &host, temp_name).await
        };
        if result.is_err() {
            let _ = self.nl.del_link(host.index).await;
        }
        result
    }

    /// The rest of an attach whose container end goes into the namespace: moved, named
    /// [`CONTAINER_IFNAME`] (or as asked), addressed, up (with `lo`), a route to the service address;
    /// then announced with a gratuitous ARP.
    async fn move_into_netns(
        &self,
        request: &AttachRequest,
        host: &LinkInfo,
        temp_name: String,
    ) -> Result<Endpoint, DatapathError> {
        let temp = self
            .nl
            .link_by_name(&temp_name)
            .await?
            .ok_or_else(|| DatapathError::Netlink(format!("veth {temp_name} vanished")))?;
        let ns = netlink::open_netns(&request.netns)?;
        self.nl.move_to_netns(temp.index, ns.as_raw_fd()).await?;
        drop(ns);
        let mtu = self.mtu_now();
        let addresses = request.addresses.clone();
        let service = self.service_address();
        let ifname = container_ifname(request).to_string();
        let garp_ifname = ifname.clone();
        let mac = netlink::in_netns(&request.netns, move |nl| async move {
            let link = nl.link_by_name(&temp_name).await?.ok_or_else(|| {
                DatapathError::Netlink(format!("{temp_name} did not arrive in the namespace"))
            })?;
            nl.set_link(
                link.index,
                LinkChange {
                    name: Some(ifname),
                    mtu: Some(mtu),
                    ..Default::default()
                },
            )
            .await?;
            for a in addresses {
                nl.add_address(link.index, a).await?;
            }
            nl.set_link(link.index, up()).await?;
            if let Some(service) = service {
                nl.replace_device_route(service, 32, link.index, MAIN_TABLE)
                    .await?;
            }
            if let Some(lo) = nl.link_by_name("lo").await? {
                nl.set_link(lo.index, up()).await?;
            }
            Ok(link.mac)
        })
        .await?;
        self.make_bridge_port(host.index).await?;
        let endpoint = Endpoint {
            netns: request.netns.clone(),
            host_ifname: host.name.clone(),
            mac,
            addresses: request.addresses.clone(),
            owner: request.owner.clone(),
        };
        self.take_up(&endpoint, host.index)?;
        self.service_neighbours(&endpoint, true).await?;
        let addrs = announced(&endpoint);
        let garp = netlink::in_netns(&request.netns, move |nl| async move {
            if let Some(l) = nl.link_by_name(&garp_ifname).await? {
                garp::send(l.index, mac, &addrs)?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = garp {
            tracing::warn!("gratuitous ARP from {}: {e}", request.netns.display());
        }
        Ok(endpoint)
    }

    /// The rest of an attach whose container end stays in the host for Docker to move:
    /// renamed, MTU set, announced with a gratuitous ARP, then left down.
    async fn hand_over(
        &self,
        request: &AttachRequest,
        host: &LinkInfo,
        temp_name: &str,
    ) -> Result<Endpoint, DatapathError> {
        let name = handover_name(&host.name);
        let temp = self
            .nl
            .link_by_name(temp_name)
            .await?
            .ok_or_else(|| DatapathError::Netlink(format!("veth {temp_name} vanished")))?;
        self.nl
            .set_link(
                temp.index,
                LinkChange {
                    name: Some(name.clone()),
                    mtu: Some(self.mtu_now()),
                    ..Default::default()
                },
            )
            .await?;
        self.make_bridge_port(host.index).await?;
        let endpoint = Endpoint {
            netns: request.netns.clone(),
            host_ifname: host.name.clone(),
            mac: temp.mac,
            addresses: request.addresses.clone(),
            owner: request.owner.clone(),
        };
        self.take_up(&endpoint, host.index)?;
        self.service_neighbours(&endpoint, true).await?;
        // Up for the gratuitous ARP only: Docker takes it down when it moves it.
        let addrs = announced(&endpoint);
        let sent = match self.nl.set_link(temp.index, up()).await {
            Ok(()) => garp::send(temp.index, temp.mac, &addrs).map_err(DatapathError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::warn!("gratuitous ARP from {name}: {e}");
        }
        Ok(endpoint)
    }

    /// Records an endpoint's addresses (`ENDPOINT_ADDRESSES`), attaches TX and the egress
    /// check to its host veth, and fills `ENDPOINTS` and `NEIGHBOURS`.
    fn take_up(&self, endpoint: &Endpoint, host_index: u32) -> Result<(), DatapathError> {
        let record = endpoint_record(endpoint)?;
        let mut guard = self.lock();
        if let Some(programs) = guard.programs.as_mut() {
            // The addresses go in before the programs are attached: they drop what comes from
            // or goes to an interface without a record.
            programs
                .maps
                .record_endpoint_addresses(host_index, record)?;
            programs.attach_to_endpoint(&endpoint.host_ifname)?;
            programs.maps.add_endpoint(endpoint, host_index)?;
        }
        guard.endpoints.retain(|e| e.netns != endpoint.netns);
        guard.endpoints.push(endpoint.clone());
        Ok(())
    }

    /// Forgets an endpoint in the maps and unpins its links.
    fn let_go(&self, endpoint: &Endpoint) {
        let mut guard = self.lock();
        if let Some(programs) = guard.programs.as_mut() {
            programs.maps.forget_endpoint(endpoint);
            programs.detach_from_endpoint(&endpoint.host_ifname);
            programs.maps.forget_endpoint_addresses(endpoint.mac);
        }
        guard.endpoints.retain(|e| e.netns != endpoint.netns);
    }

    pub(super) async fn detach_endpoint(&self, netns: PathBuf) -> Result<Endpoint, DatapathError> {
        let endpoint = self
            .lock()
            .endpoints
            .iter()
            .find(|e| e.netns == netns)
            .cloned()
            .ok_or_else(|| DatapathError::NoSuchEndpoint(netns.clone()))?;
        self.let_go(&endpoint);
        if let Err(e) = self.service_neighbours(&endpoint, false).await {
            tracing::warn!("{e}");
        }
        if let Some(link) = self.nl.link_by_name(&endpoint.host_ifname).await? {
            self.nl.del_link(link.index).await?;
        }
        Ok(endpoint)
    }

    /// Takes up an endpoint of an earlier run whose host veth is still there; over an
    /// adopted data path its links get the new programs in place and its entries are
    /// rewritten as they were. One whose veth is gone (its namespace deleted while the
    /// router was down) has what the earlier run left of it removed: entries and links.
    pub(super) async fn restore(&self, endpoint: Endpoint) -> Result<(), DatapathError> {
        let Some(host) = self.nl.link_by_name(&endpoint.host_ifname).await? else {
            self.let_go(&endpoint);
            if let Some(programs) = self.lock().programs.as_mut() {
                programs.maps.forget_endpoint_mac(endpoint.mac);
            }
            return Err(DatapathError::NoSuchEndpoint(endpoint.netns.clone()));
        };
        self.make_bridge_port(host.index).await?;
        self.take_up(&endpoint, host.index)?;
        self.service_neighbours(&endpoint, true).await
    }

    /// Gives the bridge and both ends of every container veth MTU `mtu`.
    pub(super) async fn apply_container_mtu(&self, mtu: u32) -> Result<(), DatapathError> {
        let change = LinkChange {
            mtu: Some(mtu),
            ..Default::default()
        };
        self.nl.set_link(self.bridge_index, change.clone()).await?;
        let endpoints = self.lock().endpoints.clone();
        for e in endpoints {
            if let Some(host) = self.nl.link_by_name(&e.host_ifname).await? {
                self.nl.set_link(host.index, change.clone()).await?;
            }
            // The container's end, found by its MAC (Docker names it itself). A namespace
            // that is gone has nothing left to change.
            let change = change.clone();
            let result = netlink::in_netns(&e.netns, move |nl| async move {
                for link in nl.links().await? {
                    if link.mac == e.mac {
                        nl.set_link(link.index, change).await?;
                        break;
                    }
                }
                Ok(())
            })
            .await;
            if let Err(err) = result {
                tracing::warn!(
                    "cannot set the MTU of {} in {}: {err}",
                    e.host_ifname,
                    e.netns.display()
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handed_over_veth_is_named_after_its_host_end() {
        assert_eq!(handover_name("vethwe0a1b2c3d"), "vethwp0a1b2c3d");
        assert_eq!(handover_name("other"), "vethwpother");
    }

    #[test]
    fn veth_names_share_a_suffix_and_fit_an_interface_name() {
        let (host, temp) = veth_names(&random_suffix());
        assert!(host.starts_with(HOST_VETH_PREFIX) && temp.starts_with(TEMP_VETH_PREFIX));
        assert_eq!(
            host[HOST_VETH_PREFIX.len()..],
            temp[TEMP_VETH_PREFIX.len()..]
        );
        for name in [&host, &temp, &handover_name(&host)] {
            assert!(name.len() <= 15, "{name} is longer than IFNAMSIZ allows");
        }
    }
}
