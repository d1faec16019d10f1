//! The HTTP API the CLI talks to (on 127.0.0.1:6784 by default, inside the router's netns).
//!
//! - `GET /`: the live topology page (`page.rs`), which polls `/report`.
//! - `GET /status`, `/status/connections`, `/status/peers`, `/status/targets`: text.
//! - `GET /report`: JSON (`report.rs`).
//! - `GET /metrics`: Prometheus text.
//! - `POST /attach {"netns": PATH, "addresses": ["10.2.1.1/24", ...]}` → the endpoint as JSON.
//! - `POST /detach {"netns": PATH}` → the endpoint taken away, as JSON.
//! - `POST /stop` → `{"Pid": N}`; the router then shuts down (with `?keep-datapath=true`
//!   its process only: the kernel data path keeps running for the next launch to adopt).
//! - weaveDNS: `GET /dns` (JSON: domain, listen address, upstreams, TTL, entries),
//!   `GET /status/dns` (text), `POST /dns/add {"container", "addresses", "hostname"}`,
//!   `POST /dns/remove {"container", "addresses", "hostname"}`, `GET /dns/lookup/NAME`
//!   (addresses, one a line). `POST /attach` takes `"hostname"` too.
//! - `POST /cni/add`, `/cni/del`, `/cni/check`: the `weave-net` CNI plugin's calls ([`cni`]).
//!
//! Errors answer with a fitting status code and one line of text.
//!
//! Served on TCP for reading and on a unix socket for everything ([`access`]).

pub mod access;
pub mod cni;
pub mod docker;
pub mod ipam;
pub mod metrics;
pub mod page;
pub mod report;
pub mod text;

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::datapath::{DatapathError, Endpoint};
use crate::mesh::connection_maker::Target;
use crate::node::containers::Containers;
use crate::node::endpoints::{AddressError, AttachOrder, EndpointsError};
use crate::node::Node;
use text::DaemonInfo;

/// What the handlers share. The API answers from the start; until the router is up
/// (its data path loaded) everything but `POST /stop` says 503.
pub struct ApiState {
    node: std::sync::RwLock<Option<Arc<Node>>>,
    /// The DNS service, when it runs.
    dns: std::sync::RwLock<Option<Arc<crate::dns::Dns>>>,
    /// The Docker integration, when on.
    docker: std::sync::RwLock<Option<Arc<dyn Containers>>>,
    /// Set to true by `POST /stop`.
    stop: watch::Sender<bool>,
    /// The stop asked for leaves the kernel data path running (`POST /stop?keep-datapath=true`,
    /// SIGTERM).
    keep_datapath: std::sync::atomic::AtomicBool,
}

impl ApiState {
    pub fn new(stop: watch::Sender<bool>) -> Self {
        Self {
            node: std::sync::RwLock::new(None),
            dns: std::sync::RwLock::new(None),
            docker: std::sync::RwLock::new(None),
            stop,
            keep_datapath: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The router is up: answer for it.
    pub fn set_ready(&self, node: Arc<Node>) {
        *self.node.write().unwrap_or_else(|e| e.into_inner()) = Some(node);
    }

    /// The DNS service the API answers for.
    pub fn set_dns(&self, dns: Option<Arc<crate::dns::Dns>>) {
        *self.dns.write().unwrap_or_else(|e| e.into_inner()) = dns;
    }

    /// The Docker integration the API answers for.
    pub fn set_docker(&self, docker: Option<Arc<dyn Containers>>) {
        *self.docker.write().unwrap_or_else(|e| e.into_inner()) = docker;
    }

    fn docker_on(&self) -> Result<Arc<dyn Containers>, ApiError> {
        self.docker
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                ApiError(
                    StatusCode::NOT_FOUND,
                    "Docker integration is off in this router (launched with --no-docker)".into(),
                )
            })
    }

    fn dns(&self) -> Option<Arc<crate::dns::Dns>> {
        self.dns.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn dns_on(&self) -> Result<Arc<crate::dns::Dns>, ApiError> {
        self.dns().ok_or_else(|| EndpointsError::NoDns.into())
    }

    /// Asks the daemon to stop (as `POST /stop` does).
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Asks the daemon to stop its process only: the kernel data path (programs, maps, links,
    /// bridge) keeps carrying traffic until a router with the same name adopts it.
    pub fn request_stop_keeping_datapath(&self) {
        self.keep_datapath
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.request_stop();
    }

    /// Whether the stop asked for leaves the kernel data path running.
    pub fn keeps_datapath(&self) -> bool {
        self.keep_datapath
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn ready(&self) -> Result<Arc<Node>, ApiError> {
        self.node
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the router is still starting (setting up its data path)".into(),
                )
            })
    }
}

/// What the status shows about the daemon.
fn daemon_info(node: &Node) -> DaemonInfo {
    let shown = node.datapath_shown();
    DaemonInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        iface: shown.iface.clone(),
        xdp: shown.xdp.clone(),
        container_mtu: node.container_mtu(),
        endpoints: node.endpoints().len(),
        pid: std::process::id(),
    }
}

/// An error answer: status code and one line.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut line = self.1.replace('\n', " ");
        line.push('\n');
        (self.0, line).into_response()
    }
}

impl From<DatapathError> for ApiError {
    fn from(e: DatapathError) -> Self {
        let code = match &e {
            DatapathError::NoSuchEndpoint(_) => StatusCode::NOT_FOUND,
            DatapathError::AlreadyAttached(_) => StatusCode::CONFLICT,
            DatapathError::Netns { .. } | DatapathError::TooManyAddresses { .. } => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

impl From<EndpointsError> for ApiError {
    fn from(e: EndpointsError) -> Self {
        match e {
            EndpointsError::Datapath(e) => e.into(),
            EndpointsError::Addresses(AddressError::Ipam(e)) => e.into(),
            EndpointsError::NoDns => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            EndpointsError::Save(_) | EndpointsError::StoreNames(_) => {
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
            EndpointsError::Addresses(AddressError::NoIpam(_))
            | EndpointsError::BadName(_)
            | EndpointsError::NotExposed(_)
            | EndpointsError::Register(_) => bad_request(e.to_string()),
        }
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// The body of `POST /attach`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachBody {
    pub netns: PathBuf,
    #[serde(default)]
    pub addresses: Vec<String>,
    /// A name to register in the DNS domain for the addresses (removed on detach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// The body of `POST /dns/add` and `POST /dns/remove`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsBody {
    /// Whose names (default: `weave:extern`).
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub hostname: Option<String>,
}

/// The body of `POST /connect` and `POST /forget`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeersBody {
    /// host or host:port
    pub peers: Vec<String>,
    #[serde(default)]
    pub replace: bool,
}

impl PeersBody {
    fn targets(&self) -> Result<Vec<Target>, ApiError> {
        self.peers
            .iter()
            .map(|p| p.parse::<Target>().map_err(|e| bad_request(e.to_string())))
            .collect()
    }
}

/// The body of `POST /detach`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DetachBody {
    pub netns: PathBuf,
}

/// An endpoint as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointView {
    pub netns: PathBuf,
    pub host_ifname: String,
    pub mac: String,
    pub addresses: Vec<String>,
}

impl From<&Endpoint> for EndpointView {
    fn from(e: &Endpoint) -> Self {
        let m = e.mac;
        Self {
            netns: e.netns.clone(),
            host_ifname: e.host_ifname.clone(),
            mac: crate::datapath::format_mac(&m),
            addresses: e.addresses.iter().map(ToString::to_string).collect(),
        }
    }
}

type AppState = State<Arc<ApiState>>;

/// The HTTP routes.
pub fn app(state: Arc<ApiState>) -> axum::Router {
    axum::Router::new()
        .route("/", get(page::index))
        .route("/topology.js", get(page::script))
        .route("/topology.css", get(page::style))
        .route("/status", get(status))
        .route("/status/connections", get(status_connections))
        .route("/status/peers", get(status_peers))
        .route("/status/targets", get(status_targets))
        .route("/status/mesh", get(status_mesh))
        .route("/status/ipam", get(ipam::status))
        .route(
            "/ip/{owner}",
            get(ipam::get_owner)
                .post(ipam::allocate_default)
                .delete(ipam::release),
        )
        .route(
            "/ip/{owner}/{addr}/{len}",
            post(ipam::allocate_in).put(ipam::claim),
        )
        .route("/rmpeer", post(ipam::rmpeer))
        .route("/ps", get(ps))
        .route("/reset", post(ipam::reset))
        .route("/expose", post(ipam::expose))
        .route("/hide", post(ipam::hide))
        .route("/report", get(get_report))
        .route("/metrics", get(get_metrics))
        .route("/attach", post(attach))
        .route("/detach", post(detach))
        .route("/connect", post(connect))
        .route("/forget", post(forget))
        .route("/stop", post(stop))
        .route("/status/dns", get(status_dns))
        .route("/dns", get(dns_info))
        .route("/dns/add", post(dns_add))
        .route("/dns/remove", post(dns_remove))
        .route("/dns/lookup/{name}", get(dns_lookup))
        .route("/docker", get(docker::info))
        .route("/docker/attach", post(docker::attach))
        .route("/docker/detach", post(docker::detach))
        .route("/cni/add", post(cni::add))
        .route("/cni/del", post(cni::del))
        .route("/cni/check", post(cni::check))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such API endpoint".into()) })
        .with_state(state)
}

async fn status(State(s): AppState) -> Result<String, ApiError> {
    let c = s.ready()?;
    let ipam = c.ipam().map(|i| i.report());
    let dns = s.dns().map(|d| d.info());
    Ok(text::status(
        &c.status(),
        &daemon_info(&c),
        ipam.as_ref(),
        dns.as_ref(),
    ))
}

async fn status_connections(State(s): AppState) -> Result<String, ApiError> {
    Ok(text::connections(&s.ready()?.status()))
}

async fn status_peers(State(s): AppState) -> Result<String, ApiError> {
    Ok(text::peers(&s.ready()?.status()))
}

async fn status_targets(State(s): AppState) -> Result<String, ApiError> {
    Ok(text::targets(&s.ready()?.status()))
}

/// `weave-router ps`: one line per attached namespace: path, MAC, addresses.
async fn ps(State(s): AppState) -> Result<String, ApiError> {
    let mut out = String::new();
    for e in s.ready()?.endpoints() {
        let v = EndpointView::from(&e);
        let who = match &e.owner {
            Some(o) => crate::node::containers::short_id(o).to_string(),
            None => v.netns.display().to_string(),
        };
        out.push_str(&format!("{} {} {}\n", who, v.mac, v.addresses.join(" ")));
    }
    Ok(out)
}

/// Peers known and peers routed to, as JSON (cheap to poll).
async fn status_mesh(State(s): AppState) -> Result<Response, ApiError> {
    let summary = s.ready()?.mesh_summary();
    let body = serde_json::to_string(&summary).expect("serialisable");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The data path's counters, or `None` (logged) when they cannot be read.
fn counters_of(node: &Node) -> Option<crate::datapath::DatapathCounters> {
    node.counters()
        .inspect_err(|e| tracing::warn!("cannot read the data-path counters: {e}"))
        .ok()
}

async fn get_report(State(s): AppState) -> Result<Response, ApiError> {
    let c = s.ready()?;
    let counters = counters_of(&c);
    let ipam = c.ipam().map(|i| i.report());
    let dns = s.dns().map(|d| d.info());
    let r = report::report(report::ReportInput {
        status: &c.status(),
        daemon: &daemon_info(&c),
        endpoints: &c.endpoints(),
        counters: counters.as_ref(),
        ipam: ipam.as_ref(),
        dns: dns.as_ref(),
    });
    let mut body = serde_json::to_string_pretty(&r).expect("serialisable");
    body.push('\n');
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn get_metrics(State(s): AppState) -> Result<Response, ApiError> {
    let c = s.ready()?;
    let status = c.status();
    let counters = counters_of(&c);
    let ipam = c.ipam().map(|i| i.report());
    let dns = s.dns().map(|d| d.info());
    let body = metrics::render(&metrics::MetricsInput {
        status: &status,
        counters: counters.as_ref(),
        ipam: ipam.as_ref(),
        dns: dns.as_ref(),
        control: metrics::ControlTraffic::now(),
        sleeve: metrics::SleeveTraffic::now(&status),
    });
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response())
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("bad request body: {e}")))
}

fn check_netns(netns: &std::path::Path) -> Result<(), ApiError> {
    if !netns.is_absolute() {
        return Err(bad_request(format!(
            "network namespace path {} is not absolute",
            netns.display()
        )));
    }
    if !netns.exists() {
        return Err(bad_request(format!(
            "network namespace {} does not exist",
            netns.display()
        )));
    }
    Ok(())
}

async fn attach(State(s): AppState, body: Bytes) -> Result<Response, ApiError> {
    let node = s.ready()?;
    let body: AttachBody = parse_json(&body)?;
    check_netns(&body.netns)?;
    let specs =
        crate::ipam::spec::parse_all(&body.addresses).map_err(|e| bad_request(e.to_string()))?;
    let endpoint = node
        .attach(AttachOrder {
            netns: body.netns,
            specs,
            hostname: body.hostname,
            owner: None,
            ifname: None,
        })
        .await?;
    Ok(axum::Json(EndpointView::from(&endpoint)).into_response())
}

async fn detach(State(s): AppState, body: Bytes) -> Result<Response, ApiError> {
    let node = s.ready()?;
    let body: DetachBody = parse_json(&body)?;
    if !body.netns.is_absolute() {
        return Err(bad_request(format!(
            "network namespace path {} is not absolute",
            body.netns.display()
        )));
    }
    let endpoint = node.detach(body.netns).await?;
    Ok(axum::Json(EndpointView::from(&endpoint)).into_response())
}

async fn connect(State(s): AppState, body: Bytes) -> Result<Response, ApiError> {
    let c = s.ready()?;
    let body: PeersBody = parse_json(&body)?;
    let targets = body.targets()?;
    tracing::info!("connect requested: {}", body.peers.join(" "));
    c.connect(targets, body.replace);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn forget(State(s): AppState, body: Bytes) -> Result<Response, ApiError> {
    let c = s.ready()?;
    let body: PeersBody = parse_json(&body)?;
    let forgotten = c.forget(body.targets()?);
    tracing::info!("forgot {} of {} targets", forgotten.len(), body.peers.len());
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn status_dns(State(s): AppState) -> Result<String, ApiError> {
    Ok(text::dns_entries(&s.dns_on()?.info()))
}

async fn dns_info(State(s): AppState) -> Result<Response, ApiError> {
    Ok(axum::Json(s.dns_on()?.info()).into_response())
}

fn dns_addresses(addresses: &[String]) -> Result<Vec<std::net::Ipv4Addr>, ApiError> {
    addresses
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|_| bad_request(format!("{a:?} is not an IPv4 address")))
        })
        .collect()
}

async fn dns_add(State(s): AppState, body: Bytes) -> Result<Response, ApiError> {
    let dns = s.dns_on()?;
    let body: DnsBody = parse_json(&body)?;
    let addrs = dns_addresses(&body.addresses)?;
    let Some(name) = body.hostname.as_deref() else {
        return Err(bad_request("a host name is needed (-h NAME)"));
    };
    let container = body
        .container
        .as_deref()
        .unwrap_or(crate::dns::EXTERN_CONTAINER);
    let added = dns
        .add(container, &addrs, name)
        .map_err(|e| bad_request(e.to_string()))?;
    registrations_stored(&dns).await?;
    Ok(axum::Json(serde_json::json!({ "Added": added })).into_response())
}

async fn dns_remove(State(s): AppState, body: Bytes) -> Result<Response, ApiError> {
    let dns = s.dns_on()?;
    let body: DnsBody = parse_json(&body)?;
    let addrs = dns_addresses(&body.addresses)?;
    let container = body
        .container
        .as_deref()
        .unwrap_or(crate::dns::EXTERN_CONTAINER);
    let removed = dns
        .remove(container, &addrs, body.hostname.as_deref())
        .map_err(|e| bad_request(e.to_string()))?;
    registrations_stored(&dns).await?;
    Ok(axum::Json(serde_json::json!({ "Removed": removed })).into_response())
}

/// Answers only once a DNS change is stored, so a router killed after the answer keeps it.
async fn registrations_stored(dns: &crate::dns::Dns) -> Result<(), ApiError> {
    dns.registrations_stored().await.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store the DNS registrations: {e}"),
        )
    })
}

async fn dns_lookup(
    State(s): AppState,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<String, ApiError> {
    let dns = s.dns_on()?;
    let addrs = dns.lookup(&name).map_err(|e| bad_request(e.to_string()))?;
    if addrs.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{} is not registered", dns.qualify(&name).unwrap_or(name)),
        ));
    }
    Ok(addrs.iter().map(|a| format!("{a}\n")).collect())
}

/// Whether a `POST /stop` query asks to keep the data path (`keep-datapath=true`).
fn keeps_datapath(query: Option<&str>) -> bool {
    query
        .unwrap_or_default()
        .split('&')
        .any(|kv| kv == "keep-datapath=true" || kv == "keep-datapath")
}

async fn stop(State(s): AppState, uri: axum::http::Uri) -> Response {
    if keeps_datapath(uri.query()) {
        tracing::info!("stop requested through the API, keeping the data path");
        s.request_stop_keeping_datapath();
    } else {
        tracing::info!("stop requested through the API");
        s.request_stop();
    }
    axum::Json(serde_json::json!({ "Pid": std::process::id() })).into_response()
}

#[cfg(test)]
mod sample;
#[cfg(test)]
mod tests;
