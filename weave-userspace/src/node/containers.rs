//! The container engine as the HTTP API reaches it (`GET /docker`, `POST /docker/attach`,
//! `POST /docker/detach`): a port the Docker integration implements, so that the API and
//! the integration need not know each other.

use crate::datapath::dyn_datapath::BoxFuture;
use crate::datapath::Endpoint;
use crate::ipam::spec::AddressSpec;

/// What `GET /docker` shows.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct DockerInfo {
    pub docker_host: String,
    /// `unix://` address of the proxy, when it runs.
    pub proxy: Option<String>,
    /// The negotiated API version while connected.
    pub api_version: Option<String>,
}

/// Why a container was not attached or detached, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// No such container, or it has nothing attached.
    #[error("{0}")]
    NotFound(String),
    /// The container is not running.
    #[error("{0}")]
    Conflict(String),
    /// The engine cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// What the container asks for cannot be.
    #[error("{0}")]
    BadRequest(String),
    /// Attaching or detaching failed in the router.
    #[error("{0}")]
    Failed(String),
}

/// Containers of the engine, attached and detached by name or ID.
pub trait Containers: Send + Sync + 'static {
    fn info(&self) -> DockerInfo;
    /// Attaches a running container with `specs`, or (`None`) as it asks, else in the
    /// default subnet; its name is registered in DNS when `with_dns`.
    fn attach_container<'a>(
        &'a self,
        container: &'a str,
        specs: Option<Vec<AddressSpec>>,
        with_dns: bool,
    ) -> BoxFuture<'a, Result<Endpoint, ContainerError>>;
    /// Detaches a container: its interface, addresses and names go.
    fn detach_container<'a>(
        &'a self,
        container: &'a str,
    ) -> BoxFuture<'a, Result<Endpoint, ContainerError>>;
}

/// The first 12 digits of a container ID, as Docker shows them (the first 12 characters of
/// anything else: a name or ID from a request may hold any UTF-8).
pub fn short_id(id: &str) -> &str {
    match id.char_indices().nth(12) {
        Some((end, _)) => &id[..end],
        None => id,
    }
}

#[cfg(test)]
mod tests {
    use super::short_id;

    #[test]
    fn short_ids_cut_at_a_character_boundary() {
        assert_eq!(short_id("0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id(""), "");
        // 11 ASCII bytes then a 3-byte character across byte 12.
        assert_eq!(short_id("0123456789a€bcd"), "0123456789a€");
        assert_eq!(short_id("ééééééééééééé"), "éééééééééééé");
    }
}
