//! The IP allocation part of the HTTP API: address specs of `attach`, Weave's `/ip/<owner>`
//! endpoints (allocate, claim, release by owner ID — what Docker and CNI integrations use),
//! `status ipam`, `rmpeer`.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{bad_request, parse_json, ApiError, ApiState, AppState};
use crate::ipam::service::{IpamReport, IpamService, IpamServiceError};
use crate::mesh::peer_name::PeerName;
use crate::net::Ipv4Cidr;
use crate::net::Ipv4Net;

impl From<IpamServiceError> for ApiError {
    fn from(e: IpamServiceError) -> Self {
        use crate::ipam::allocator::AllocError;
        use crate::ipam::node::IpamError;
        let code = match &e {
            e if e.is_bad_request() => StatusCode::BAD_REQUEST,
            IpamServiceError::Ipam(IpamError::Alloc(AllocError::SubnetExhausted(_))) => {
                StatusCode::CONFLICT
            }
            IpamServiceError::Ipam(IpamError::Observer(_)) => StatusCode::CONFLICT,
            IpamServiceError::Timeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

fn ipam_of(s: &ApiState) -> Result<Arc<IpamService>, ApiError> {
    s.ready()?.ipam().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "IP allocation is off in this router".into(),
        )
    })
}

fn addresses_text(addresses: &[Ipv4Cidr]) -> String {
    addresses.iter().map(|a| format!("{a}\n")).collect()
}

fn subnet(addr: &str, len: &str) -> Result<Ipv4Net, ApiError> {
    format!("{addr}/{len}")
        .parse::<Ipv4Net>()
        .map_err(|e| bad_request(e.to_string()))
}

/// `GET /ip/{owner}`: the owner's addresses, one per line.
pub async fn get_owner(State(s): AppState, Path(owner): Path<String>) -> Result<String, ApiError> {
    Ok(addresses_text(&ipam_of(&s)?.addresses_of(&owner)))
}

/// `POST /ip/{owner}`: an address in the default subnet.
pub async fn allocate_default(
    State(s): AppState,
    Path(owner): Path<String>,
) -> Result<String, ApiError> {
    let a = ipam_of(&s)?.allocate(&owner, None).await?;
    Ok(format!("{a}\n"))
}

/// `POST /ip/{owner}/{addr}/{len}`: an address in that subnet.
pub async fn allocate_in(
    State(s): AppState,
    Path((owner, addr, len)): Path<(String, String, String)>,
) -> Result<String, ApiError> {
    let net = subnet(&addr, &len)?;
    let a = ipam_of(&s)?.allocate(&owner, Some(net)).await?;
    Ok(format!("{a}\n"))
}

/// `PUT /ip/{owner}/{addr}/{len}`: claims that address.
pub async fn claim(
    State(s): AppState,
    Path((owner, addr, len)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let a: Ipv4Cidr = format!("{addr}/{len}")
        .parse()
        .map_err(|e: crate::net::CidrError| bad_request(e.to_string()))?;
    ipam_of(&s)?.claim(&owner, a).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /ip/{owner}`: releases every address of the owner.
pub async fn release(State(s): AppState, Path(owner): Path<String>) -> Result<String, ApiError> {
    Ok(addresses_text(&ipam_of(&s)?.release(&owner)?))
}

/// `GET /status/ipam`: ownership of the range, as Weave shows it.
pub async fn status(State(s): AppState) -> Result<String, ApiError> {
    let c = s.ready()?;
    let ipam = ipam_of(&s)?;
    let nicknames: std::collections::BTreeMap<PeerName, String> = c
        .status()
        .mesh
        .peers
        .into_iter()
        .map(|p| (p.name, p.nickname))
        .collect();
    Ok(ipam_text(&ipam.report(), &nicknames))
}

/// The body of `POST /rmpeer`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RmpeerBody {
    /// A peer name, or the nickname of a peer this router has seen.
    pub peer: String,
}

/// `POST /rmpeer`: takes over a dead peer's space.
pub async fn rmpeer(State(s): AppState, body: Bytes) -> Result<String, ApiError> {
    let body: RmpeerBody = parse_json(&body)?;
    let c = s.ready()?;
    let peer: PeerName = c.peer_named(&body.peer).map_err(bad_request)?;
    if c.mesh_summary().routed.contains(&peer) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("peer {peer} is reachable; rmpeer is for dead peers"),
        ));
    }
    let taken = ipam_of(&s)?.remove_peer(peer)?;
    let total: u64 = taken.iter().map(|r| r.len()).sum();
    Ok(format!("{total} IPs taken over from {peer}\n"))
}

/// The body of `POST /expose`: address specs (none: `net:default`), and a name for the
/// host (`expose -h FQDN`).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ExposeBody {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// The body of `POST /hide`: the addresses to take away (none: all).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct HideBody {
    #[serde(default)]
    pub addresses: Vec<std::net::Ipv4Addr>,
}

/// The body of `POST /reset`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ResetBody {
    /// A step that fails (a detach, the hand-over) is logged and passed over.
    #[serde(default)]
    pub force: bool,
}

/// `POST /expose`: gives the host an address on the weave network (allocated like a
/// container's) and masquerades that subnet's traffic to the outside.
pub async fn expose(State(s): AppState, body: Bytes) -> Result<String, ApiError> {
    let body: ExposeBody = if body.is_empty() {
        ExposeBody::default()
    } else {
        parse_json(&body)?
    };
    let specs =
        crate::ipam::spec::parse_all(&body.addresses).map_err(|e| bad_request(e.to_string()))?;
    let addresses = s.ready()?.expose(&specs, body.hostname.as_deref()).await?;
    Ok(addresses_text(&addresses))
}

/// `POST /hide`: takes the exposed addresses away (those given, or all) and releases them.
pub async fn hide(State(s): AppState, body: Bytes) -> Result<String, ApiError> {
    let body: HideBody = if body.is_empty() {
        HideBody::default()
    } else {
        parse_json(&body)?
    };
    let node = s.ready()?;
    ipam_of(&s)?;
    Ok(addresses_text(&node.hide(&body.addresses).await?))
}

/// `POST /reset`: detaches every endpoint, hands our IP space to a reachable peer, forgets
/// the stored IP allocation state and stops the router.
pub async fn reset(State(s): AppState, body: Bytes) -> Result<String, ApiError> {
    let body: ResetBody = if body.is_empty() {
        ResetBody::default()
    } else {
        parse_json(&body)?
    };
    let c = s.ready()?;
    let mut said = String::new();
    // With --force a failed step is said and passed over.
    let mut step = |result: Result<String, ApiError>| -> Result<(), ApiError> {
        match result {
            Ok(line) => {
                said.push_str(&line);
                Ok(())
            }
            Err(e) if body.force => {
                let _ = writeln!(said, "passed over: {}", e.1);
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    for e in c.endpoints() {
        let owner = e.netns.display().to_string();
        let detached = async {
            c.detach_interface(e.netns.clone()).await?;
            if let Some(i) = c.ipam() {
                i.release(&owner)?;
            }
            Ok::<_, ApiError>(format!("detached {owner}\n"))
        };
        step(detached.await)?;
    }
    if let Some(i) = c.ipam() {
        let handed = match c.mesh_summary().routed.first().copied() {
            Some(heir) => i
                .leave(heir)
                .map(|r| {
                    let given: u64 = r.iter().map(|r| r.len()).sum();
                    format!("{given} IPs handed over to {heir}\n")
                })
                .map_err(ApiError::from),
            None => Ok("no peer reachable: this router's IP space is dropped\n".into()),
        };
        step(handed)?;
        step(
            i.forget_stored()
                .map(|()| String::new())
                .map_err(ApiError::from),
        )?;
        // Let the hand-over leave before the connections close.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    tracing::info!("reset: {}", said.trim().replace('\n', "; "));
    s.request_stop();
    Ok(said)
}

/// Weave's `status ipam`: each owner's share of the range and how much of it is used.
pub fn ipam_text(
    r: &IpamReport,
    nicknames: &std::collections::BTreeMap<PeerName, String>,
) -> String {
    let total: u64 = r.owners.iter().map(|o| o.size).sum::<u64>().max(1);
    let mut out = String::new();
    for o in &r.owners {
        let nick = nicknames.get(&o.peer).map(String::as_str).unwrap_or("");
        let who = format!("{}({nick})", o.peer);
        let pct = 100.0 * o.size as f64 / total as f64;
        let used = o.size - o.free;
        let _ = write!(
            out,
            "{who:<40} {:>8} IPs ({pct:05.1}% of total) ({used} active)",
            o.size
        );
        if !o.reachable {
            out.push_str(" - unreachable!");
        }
        out.push('\n');
    }
    if r.owners.is_empty() {
        let _ = writeln!(
            out,
            "no peer owns any part of {} yet: {}",
            r.range, r.status
        );
    }
    out
}

/// The IPAM lines of the `status` summary.
pub fn summary_lines(r: &IpamReport) -> Vec<(&'static str, String)> {
    vec![
        ("Service", "ipam".into()),
        ("Status", r.status.clone()),
        ("Range", r.range.clone()),
        ("DefaultSubnet", r.default_subnet.clone()),
    ]
}
