//! The HTTP API the CLI talks to (on 127.0.0.1:6784 by default, inside the router's netns).
//!
//! - `GET /status`, `/status/connections`, `/status/peers`, `/status/targets`: text.
//! - `GET /report`: JSON.
//! - `GET /metrics`: Prometheus text.
//! - `POST /attach {"netns": PATH, "addresses": ["10.2.1.1/24", ...]}` → the endpoint as JSON.
//! - `POST /detach {"netns": PATH}` → the endpoint taken away, as JSON.
//! - `POST /stop` → `{"Pid": N}`; the router then shuts down.
//!
//! Errors answer with a fitting status code and one line of text.

pub mod metrics;
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

use crate::datapath::{AttachRequest, Datapath, DatapathError, Endpoint, Ipv4Cidr};
use crate::router::{MeshStatus, PeerInfo, Router};
use text::DaemonInfo;

/// What the handlers share.
pub struct ApiState<D: Datapath> {
    pub router: Arc<Router<D>>,
    pub iface: String,
    pub xdp: String,
    /// Set to true by `POST /stop`.
    pub stop: watch::Sender<bool>,
}

impl<D: Datapath> ApiState<D> {
    fn daemon_info(&self) -> DaemonInfo {
        let dp = self.router.datapath();
        DaemonInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            iface: self.iface.clone(),
            xdp: self.xdp.clone(),
            container_mtu: dp.container_mtu(),
            endpoints: dp.endpoints().len(),
            pid: std::process::id(),
        }
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
            DatapathError::Netns { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
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
            mac: format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]),
            addresses: e.addresses.iter().map(ToString::to_string).collect(),
        }
    }
}

/// `GET /report`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Report {
    pub version: String,
    pub pid: u32,
    pub router: RouterReport,
    pub datapath: DatapathReport,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouterReport {
    pub protocol: String,
    pub protocol_min_version: u8,
    pub protocol_max_version: u8,
    pub encryption: bool,
    pub peer_discovery: bool,
    pub name: String,
    pub nick_name: String,
    #[serde(rename = "ShortID")]
    pub short_id: u16,
    pub listen: String,
    pub targets: Vec<String>,
    pub connections: Vec<crate::router::ConnectionInfo>,
    pub peers: Vec<PeerInfo>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DatapathReport {
    pub interface: String,
    pub underlay: std::net::Ipv4Addr,
    #[serde(rename = "XDP")]
    pub xdp: String,
    #[serde(rename = "ContainerMTU")]
    pub container_mtu: u32,
    pub endpoints: Vec<EndpointView>,
}

fn report(s: &MeshStatus, d: &DaemonInfo, endpoints: &[Endpoint]) -> Report {
    let mut peers = vec![s.local.clone()];
    peers.extend(s.connections.iter().filter_map(|c| c.peer.clone()));
    Report {
        version: d.version.clone(),
        pid: d.pid,
        router: RouterReport {
            protocol: "weave-router".into(),
            protocol_min_version: s.protocol_min_version,
            protocol_max_version: s.protocol_max_version,
            encryption: false,
            peer_discovery: false,
            name: s.local.name.clone(),
            nick_name: s.local.nick_name.clone(),
            short_id: s.local.short_id,
            listen: s.listen.to_string(),
            targets: s.targets.clone(),
            connections: s.connections.clone(),
            peers,
        },
        datapath: DatapathReport {
            interface: d.iface.clone(),
            underlay: s.local.underlay,
            xdp: d.xdp.clone(),
            container_mtu: d.container_mtu,
            endpoints: endpoints.iter().map(EndpointView::from).collect(),
        },
    }
}

type AppState<D> = State<Arc<ApiState<D>>>;

/// The HTTP routes.
pub fn app<D: Datapath>(state: Arc<ApiState<D>>) -> axum::Router {
    axum::Router::new()
        .route("/status", get(status::<D>))
        .route("/status/connections", get(status_connections::<D>))
        .route("/status/peers", get(status_peers::<D>))
        .route("/status/targets", get(status_targets::<D>))
        .route("/report", get(get_report::<D>))
        .route("/metrics", get(get_metrics::<D>))
        .route("/attach", post(attach::<D>))
        .route("/detach", post(detach::<D>))
        .route("/stop", post(stop::<D>))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such API endpoint".into()) })
        .with_state(state)
}

async fn status<D: Datapath>(State(s): AppState<D>) -> String {
    text::summary(&s.router.status(), &s.daemon_info())
}

async fn status_connections<D: Datapath>(State(s): AppState<D>) -> String {
    text::connections(&s.router.status())
}

async fn status_peers<D: Datapath>(State(s): AppState<D>) -> String {
    text::peers(&s.router.status())
}

async fn status_targets<D: Datapath>(State(s): AppState<D>) -> String {
    text::targets(&s.router.status())
}

async fn get_report<D: Datapath>(State(s): AppState<D>) -> Response {
    let r = report(&s.router.status(), &s.daemon_info(), &s.router.datapath().endpoints());
    let mut body = serde_json::to_string_pretty(&r).expect("serialisable");
    body.push('\n');
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn get_metrics<D: Datapath>(State(s): AppState<D>) -> Response {
    let counters = match s.router.datapath().counters() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("cannot read the data-path counters: {e}");
            None
        }
    };
    let body = metrics::render(&s.router.status(), counters.as_ref());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("bad request body: {e}")))
}

fn check_netns(netns: &std::path::Path) -> Result<(), ApiError> {
    if !netns.is_absolute() {
        return Err(bad_request(format!("network namespace path {} is not absolute", netns.display())));
    }
    if !netns.exists() {
        return Err(bad_request(format!("network namespace {} does not exist", netns.display())));
    }
    Ok(())
}

async fn attach<D: Datapath>(State(s): AppState<D>, body: Bytes) -> Result<Response, ApiError> {
    let body: AttachBody = parse_json(&body)?;
    check_netns(&body.netns)?;
    let addresses = body
        .addresses
        .iter()
        .map(|a| a.parse::<Ipv4Cidr>().map_err(|e| bad_request(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let endpoint = s.router.attach(AttachRequest { netns: body.netns, addresses }).await?;
    tracing::info!("attached {} as {}", endpoint.netns.display(), endpoint.host_ifname);
    Ok(axum::Json(EndpointView::from(&endpoint)).into_response())
}

async fn detach<D: Datapath>(State(s): AppState<D>, body: Bytes) -> Result<Response, ApiError> {
    let body: DetachBody = parse_json(&body)?;
    if !body.netns.is_absolute() {
        return Err(bad_request(format!("network namespace path {} is not absolute", body.netns.display())));
    }
    let endpoint = s.router.detach(body.netns).await?;
    tracing::info!("detached {} ({})", endpoint.netns.display(), endpoint.host_ifname);
    Ok(axum::Json(EndpointView::from(&endpoint)).into_response())
}

async fn stop<D: Datapath>(State(s): AppState<D>) -> Response {
    tracing::info!("stop requested through the API");
    let _ = s.stop.send(true);
    axum::Json(serde_json::json!({ "Pid": std::process::id() })).into_response()
}

#[cfg(test)]
mod tests;
