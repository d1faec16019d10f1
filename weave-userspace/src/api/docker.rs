//! The Docker part of the HTTP API: `GET /docker` (where the daemon and the proxy are),
//! `POST /docker/attach {"container", "addresses"}`, `POST /docker/detach {"container"}`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{bad_request, parse_json, ApiError, AppState, EndpointView};
use crate::docker::client::DockerError;
use crate::docker::AttachError;

/// The body of `POST /docker/attach` and `POST /docker/detach`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ContainerBody {
    /// Name or ID.
    pub container: String,
    /// Address specs (none: what the container asks for, else `net:default`).
    #[serde(default)]
    pub addresses: Vec<String>,
}

impl From<AttachError> for ApiError {
    fn from(e: AttachError) -> Self {
        let code = match &e {
            AttachError::Docker(DockerError::NoSuchContainer(_)) => StatusCode::NOT_FOUND,
            AttachError::Docker(DockerError::NotRunning(_)) => StatusCode::CONFLICT,
            AttachError::Docker(_) => StatusCode::SERVICE_UNAVAILABLE,
            AttachError::Cidr(_) => StatusCode::BAD_REQUEST,
            AttachError::Router(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

fn unavailable(e: DockerError) -> ApiError {
    let code = match e {
        DockerError::NoSuchContainer(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError(code, e.to_string())
}

/// `GET /docker`.
pub async fn info(State(s): AppState) -> Result<Response, ApiError> {
    Ok(axum::Json(s.docker_on()?.info()).into_response())
}

/// `POST /docker/attach`: attaches a running container (by name or ID).
pub async fn attach(State(s): AppState, body: Bytes) -> Result<Response, ApiError> {
    s.ready()?;
    let body: ContainerBody = parse_json(&body)?;
    let specs = if body.addresses.is_empty() {
        None
    } else {
        Some(
            crate::ipam::spec::parse_all(&body.addresses)
                .map_err(|e| bad_request(e.to_string()))?,
        )
    };
    let docker = s.docker_on()?;
    let client = docker.connected().await.map_err(unavailable)?;
    let facts = client.inspect(&body.container).await.map_err(unavailable)?;
    let specs = specs.or_else(|| match &facts.wants {
        Some(Ok(crate::docker::cidr::WeaveCidr::Attached(s))) => Some(s.clone()),
        _ => Some(vec![crate::ipam::spec::AddressSpec::Default]),
    });
    let endpoint = docker
        .attach(&facts, specs)
        .await?
        .ok_or_else(|| bad_request(format!("{} is not attached", body.container)))?;
    Ok(axum::Json(EndpointView::from(&endpoint)).into_response())
}

/// `POST /docker/detach`: detaches a container (by name or ID).
pub async fn detach(State(s): AppState, body: Bytes) -> Result<Response, ApiError> {
    s.ready()?;
    let body: ContainerBody = parse_json(&body)?;
    let docker = s.docker_on()?;
    let id = if crate::docker::client::is_container_id(&body.container) {
        body.container.clone()
    } else {
        let client = docker.connected().await.map_err(unavailable)?;
        client.inspect(&body.container).await.map_err(unavailable)?.id
    };
    match docker.detach(&id).await? {
        Some(e) => Ok(axum::Json(EndpointView::from(&e)).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{} is not attached", body.container),
        )),
    }
}
