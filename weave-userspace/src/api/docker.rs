//! The Docker part of the HTTP API: `GET /docker` (where the daemon and the proxy are),
//! `POST /docker/attach {"container", "addresses"}`, `POST /docker/detach {"container"}`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{bad_request, parse_json, ApiError, AppState, EndpointView};
use crate::node::containers::ContainerError;

/// The body of `POST /docker/attach` and `POST /docker/detach`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ContainerBody {
    /// Name or ID.
    pub container: String,
    /// Address specs (none: what the container asks for, else `net:default`).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// `attach --without-dns`: the container's name is not registered.
    #[serde(default)]
    pub without_dns: bool,
}

impl From<ContainerError> for ApiError {
    fn from(e: ContainerError) -> Self {
        let code = match &e {
            ContainerError::NotFound(_) => StatusCode::NOT_FOUND,
            ContainerError::Conflict(_) => StatusCode::CONFLICT,
            ContainerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ContainerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ContainerError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
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
    let endpoint = docker
        .attach_container(&body.container, specs, !body.without_dns)
        .await?;
    Ok(axum::Json(EndpointView::from(&endpoint)).into_response())
}

/// `POST /docker/detach`: detaches a container (by name or ID).
pub async fn detach(State(s): AppState, body: Bytes) -> Result<Response, ApiError> {
    s.ready()?;
    let body: ContainerBody = parse_json(&body)?;
    let docker = s.docker_on()?;
    let endpoint = docker.detach_container(&body.container).await?;
    Ok(axum::Json(EndpointView::from(&endpoint)).into_response())
}
