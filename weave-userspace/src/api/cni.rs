//! The CNI part of the HTTP API, for the `weave-net` plugin ([`crate::cni`]); mutating, so on
//! the unix socket only:
//!
//! - `POST /cni/add {"container_id", "netns", "ifname", "addresses", "ip_in_default_subnet"}`
//!   → [`CniAttached`]: the attach of `POST /attach`, owned by the container ID, with the
//!   interface named as the runtime asks; addresses only inside the allocation range.
//! - `POST /cni/del {"container_id"}` → `{"detached": bool}`: its interface taken away and its
//!   addresses released; a container not attached (or half made) is fine (DEL is idempotent).
//! - `POST /cni/check {"container_id", "netns", "ifname"}` → [`CniAttached`]: the interface is
//!   still in the namespace with the MAC and the addresses it was given.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{bad_request, check_netns, parse_json, ApiError, AppState};
use crate::datapath::Endpoint;
use crate::ipam::spec::AddressSpec;
use crate::net::{Ipv4Cidr, Ipv4Net};
use crate::node::endpoints::AttachOrder;

/// The body of `POST /cni/add`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniAddBody {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// Address specs (`net:default`, `net:CIDR`, `ip:CIDR`); none means `net:default`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// This address with the default subnet's prefix length (`IP=` without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_in_default_subnet: Option<Ipv4Addr>,
}

/// The body of `POST /cni/del`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniDelBody {
    pub container_id: String,
}

/// The body of `POST /cni/check`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniCheckBody {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
}

/// What the plugin's result is made of.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniAttached {
    pub netns: PathBuf,
    pub ifname: String,
    pub mac: String,
    pub addresses: Vec<String>,
    /// Routes the attach added in the namespace (the weaveDNS service address).
    pub routes: Vec<String>,
    /// weaveDNS, when it runs.
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
}

/// The endpoint of a container, by the container ID that owns it.
fn endpoint_of(endpoints: Vec<Endpoint>, container_id: &str) -> Option<Endpoint> {
    endpoints
        .into_iter()
        .find(|e| e.owner.as_deref() == Some(container_id))
}

/// Refuses an address outside the allocation range: a CNI network is the router's range.
pub fn check_in_range(specs: &[AddressSpec], range: Ipv4Net) -> Result<(), String> {
    for s in specs {
        let inside = match s {
            AddressSpec::Default => true,
            AddressSpec::Net(n) => range.contains_cidr(*n),
            AddressSpec::Ip(a) => range.contains(a.addr),
        };
        if !inside {
            return Err(format!(
                "{s} is outside the allocation range {range} (--ipalloc-range)"
            ));
        }
    }
    Ok(())
}

/// Where the interface's MAC and addresses differ from the endpoint's, if they do.
pub fn interface_differs(
    endpoint: &Endpoint,
    ifname: &str,
    found: Option<([u8; 6], Vec<Ipv4Cidr>)>,
) -> Option<String> {
    let Some((mac, addresses)) = found else {
        return Some(format!(
            "{} has no interface {ifname}",
            endpoint.netns.display()
        ));
    };
    if mac != endpoint.mac {
        return Some(format!(
            "{ifname} has MAC {}, attached as {}",
            crate::datapath::format_mac(&mac),
            crate::datapath::format_mac(&endpoint.mac)
        ));
    }
    endpoint
        .addresses
        .iter()
        .find(|a| !addresses.contains(a))
        .map(|a| {
            format!(
                "{ifname} in {} lacks its address {a}",
                endpoint.netns.display()
            )
        })
}

fn attached(s: &super::ApiState, endpoint: &Endpoint, ifname: &str) -> CniAttached {
    let dns = s.dns().map(|d| d.info());
    let service = dns
        .as_ref()
        .and_then(|d| crate::dns::parse_listen(&d.listen))
        .and_then(|a| match a.ip() {
            std::net::IpAddr::V4(v4) if !v4.is_unspecified() && !v4.is_loopback() => Some(v4),
            _ => None,
        });
    CniAttached {
        netns: endpoint.netns.clone(),
        ifname: ifname.to_string(),
        mac: crate::datapath::format_mac(&endpoint.mac),
        addresses: endpoint.addresses.iter().map(ToString::to_string).collect(),
        routes: service.iter().map(|a| format!("{a}/32")).collect(),
        nameservers: service.iter().map(ToString::to_string).collect(),
        search: dns
            .iter()
            .map(|d| d.domain.trim_end_matches('.').to_string())
            .collect(),
    }
}

/// `POST /cni/add`.
pub async fn add(State(s): AppState, body: Bytes) -> Result<Response, ApiError> {
    let node = s.ready()?;
    let body: CniAddBody = parse_json(&body)?;
    check_netns(&body.netns)?;
    if let Some(e) = endpoint_of(node.endpoints(), &body.container_id) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "container {} is attached already ({} in {}): DEL it first",
                body.container_id,
                e.host_ifname,
                e.netns.display()
            ),
        ));
    }
    let mut specs =
        crate::ipam::spec::parse_all(&body.addresses).map_err(|e| bad_request(e.to_string()))?;
    let ipam = node.ipam().ok_or_else(|| {
        bad_request("IP allocation is off in this router: a CNI network needs it")
    })?;
    if let Some(ip) = body.ip_in_default_subnet {
        specs = vec![AddressSpec::Ip(ipam.default_subnet().with_host(ip))];
    }
    check_in_range(&specs, ipam.range()).map_err(bad_request)?;
    let endpoint = node
        .attach(AttachOrder {
            netns: body.netns,
            specs,
            hostname: None,
            owner: Some(body.container_id.clone()),
            ifname: Some(body.ifname.clone()),
        })
        .await?;
    tracing::info!(
        "CNI: container {} attached as {} ({})",
        body.container_id,
        body.ifname,
        endpoint.host_ifname
    );
    Ok(axum::Json(attached(&s, &endpoint, &body.ifname)).into_response())
}

/// `POST /cni/del`.
pub async fn del(State(s): AppState, body: Bytes) -> Result<Response, ApiError> {
    let node = s.ready()?;
    let body: CniDelBody = parse_json(&body)?;
    let detached = match endpoint_of(node.endpoints(), &body.container_id) {
        Some(e) => {
            node.detach(e.netns).await?;
            true
        }
        None => {
            // Nothing attached; an allocation left by an ADD cut short goes too.
            if let Some(ipam) = node.ipam() {
                if let Err(e) = ipam.release(&body.container_id) {
                    tracing::error!(
                        "CNI: cannot release the addresses of {}: {e}",
                        body.container_id
                    );
                }
            }
            false
        }
    };
    Ok(axum::Json(serde_json::json!({ "detached": detached })).into_response())
}

/// `POST /cni/check`.
pub async fn check(State(s): AppState, body: Bytes) -> Result<Response, ApiError> {
    let node = s.ready()?;
    let body: CniCheckBody = parse_json(&body)?;
    let Some(endpoint) = endpoint_of(node.endpoints(), &body.container_id) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("container {} is not attached", body.container_id),
        ));
    };
    if endpoint.netns != body.netns {
        return Err(bad_request(format!(
            "container {} is attached in {}, not {}",
            body.container_id,
            endpoint.netns.display(),
            body.netns.display()
        )));
    }
    let ifname = body.ifname.clone();
    let found = crate::datapath::netlink::in_netns(&body.netns, move |nl| async move {
        match nl.link_by_name(&ifname).await? {
            Some(link) => Ok(Some((link.mac, nl.addresses(link.index).await?))),
            None => Ok(None),
        }
    })
    .await
    .map_err(|e| bad_request(e.to_string()))?;
    if let Some(problem) = interface_differs(&endpoint, &body.ifname, found) {
        return Err(ApiError(StatusCode::PRECONDITION_FAILED, problem));
    }
    Ok(axum::Json(attached(&s, &endpoint, &body.ifname)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint {
            netns: "/run/netns/c1".into(),
            host_ifname: "vethwe1".into(),
            mac: [2, 0, 0, 0, 0, 1],
            addresses: vec!["10.2.1.5/24".parse().unwrap()],
            owner: Some("c0ffee".into()),
        }
    }

    #[test]
    fn addresses_outside_the_range_are_refused() {
        let range: Ipv4Net = "10.2.0.0/16".parse().unwrap();
        let ok = [
            AddressSpec::Default,
            AddressSpec::Net("10.2.5.0/24".parse().unwrap()),
            AddressSpec::Ip("10.2.1.9/24".parse().unwrap()),
        ];
        assert_eq!(check_in_range(&ok, range), Ok(()));
        let e =
            check_in_range(&[AddressSpec::Ip("10.9.9.9/24".parse().unwrap())], range).unwrap_err();
        assert!(
            e.contains("ip:10.9.9.9/24 is outside the allocation range 10.2.0.0/16"),
            "{e}"
        );
        assert!(check_in_range(&[AddressSpec::Net("10.0.0.0/8".parse().unwrap())], range).is_err());
    }

    #[test]
    fn check_names_what_changed() {
        let e = endpoint();
        let addrs = e.addresses.clone();
        assert_eq!(
            interface_differs(&e, "eth0", Some((e.mac, addrs.clone()))),
            None
        );
        assert!(interface_differs(&e, "eth0", None)
            .unwrap()
            .contains("/run/netns/c1 has no interface eth0"));
        assert!(interface_differs(&e, "eth0", Some((e.mac, vec![])))
            .unwrap()
            .contains("lacks its address 10.2.1.5/24"));
        assert!(
            interface_differs(&e, "eth0", Some(([2, 0, 0, 0, 0, 9], addrs)))
                .unwrap()
                .contains("has MAC 02:00:00:00:00:09")
        );
    }

    #[test]
    fn endpoints_are_found_by_their_container() {
        assert!(endpoint_of(vec![endpoint()], "c0ffee").is_some());
        assert!(endpoint_of(vec![endpoint()], "other").is_none());
    }
}
