//! The Docker Engine API as the router uses it (bollard over the daemon's unix socket):
//! what a container is and wants, the running containers, the event stream.

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::query_parameters::{
    EventsOptions, InspectContainerOptions, KillContainerOptions, ListContainersOptions,
};
use futures_util::Stream;

use super::cidr::{WeaveCidr, WeaveCidrError};

/// The label the proxy puts on the containers it creates: their `WEAVE_CIDR`, checked.
pub const CIDR_LABEL: &str = "works.weave-router.cidr";

/// Seconds a request to the daemon may take (the event stream is not bounded).
const TIMEOUT_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("DOCKER_HOST {0:?}: only unix:// sockets are supported")]
    Scheme(String),
    #[error("Docker at {host}: {error}")]
    Api {
        host: String,
        error: bollard::errors::Error,
    },
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error("container {0} is not running")]
    NotRunning(String),
}

/// A connection to one Docker daemon (API version negotiated).
#[derive(Clone, Debug)]
pub struct DockerClient {
    host: String,
    docker: bollard::Docker,
}

/// What the router needs to know of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerFacts {
    /// The full ID.
    pub id: String,
    /// The name, without Docker's leading `/`.
    pub name: String,
    /// Its first process, while it runs.
    pub pid: Option<u32>,
    /// Whether it asked to be on the weave network: through the proxy's label, else through
    /// `WEAVE_CIDR` in its environment; `None` when neither.
    pub wants: Option<Result<WeaveCidr, WeaveCidrError>>,
    /// The IDs of its endpoints on Docker networks (some may be the network plugin's).
    pub endpoint_ids: Vec<String>,
}

impl ContainerFacts {
    /// Its network namespace, while it runs.
    pub fn netns(&self) -> Option<PathBuf> {
        self.pid.map(|p| PathBuf::from(format!("/proc/{p}/ns/net")))
    }

    /// From `docker inspect`.
    pub fn from_inspect(c: bollard::models::ContainerInspectResponse) -> Self {
        let state = c.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let pid = state
            .pid
            .filter(|p| running && *p > 0)
            .and_then(|p| u32::try_from(p).ok());
        let endpoint_ids = c
            .network_settings
            .and_then(|n| n.networks)
            .map(|n| n.into_values().filter_map(|e| e.endpoint_id).collect())
            .unwrap_or_default();
        let config = c.config.unwrap_or_default();
        let labels: HashMap<String, String> = config.labels.unwrap_or_default();
        let env = config.env.unwrap_or_default();
        let wants = match labels.get(CIDR_LABEL) {
            Some(text) => Some(WeaveCidr::parse(Some(text))),
            None => super::cidr::env_value(&env).map(|v| WeaveCidr::parse(Some(v))),
        };
        Self {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            pid,
            wants,
            endpoint_ids,
        }
    }
}

/// A Docker container ID: 64 lower-case hex digits.
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The socket path of a `unix://` DOCKER_HOST (or a plain path).
pub fn socket_path(host: &str) -> Result<PathBuf, DockerError> {
    if let Some(p) = host.strip_prefix("unix://") {
        return Ok(PathBuf::from(p));
    }
    if host.starts_with('/') {
        return Ok(PathBuf::from(host));
    }
    Err(DockerError::Scheme(host.to_string()))
}

impl DockerClient {
    /// Connects and agrees on the API version with the daemon (20.10 speaks 1.41).
    pub async fn connect(host: &str) -> Result<DockerClient, DockerError> {
        let path = socket_path(host)?;
        let api = |error| DockerError::Api {
            host: host.to_string(),
            error,
        };
        let docker = bollard::Docker::connect_with_unix(
            &path.to_string_lossy(),
            TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(api)?;
        let docker = docker.negotiate_version().await.map_err(api)?;
        docker.ping().await.map_err(api)?;
        Ok(DockerClient {
            host: host.to_string(),
            docker,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The API version agreed on.
    pub fn api_version(&self) -> String {
        let v = self.docker.client_version();
        format!("{}.{}", v.major_version, v.minor_version)
    }

    fn api(&self, error: bollard::errors::Error) -> DockerError {
        DockerError::Api {
            host: self.host.clone(),
            error,
        }
    }

    /// `docker inspect` of a container by name or ID.
    pub async fn inspect(&self, container: &str) -> Result<ContainerFacts, DockerError> {
        match self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(ContainerFacts::from_inspect(c)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(DockerError::NoSuchContainer(container.to_string())),
            Err(e) => Err(self.api(e)),
        }
    }

    /// The running containers.
    pub async fn running(&self) -> Result<Vec<ContainerFacts>, DockerError> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: false,
                ..Default::default()
            }))
            .await
            .map_err(|e| self.api(e))?;
        let mut out = Vec::new();
        for c in list {
            let Some(id) = c.id else { continue };
            match self.inspect(&id).await {
                Ok(f) if f.pid.is_some() => out.push(f),
                Ok(_) | Err(DockerError::NoSuchContainer(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Creates network `name` on the network plugin's drivers, with `subnet` as its
    /// configured subnet (so `docker run --ip` works on it), unless a network of that name
    /// exists. `Ok(true)`: created.
    pub async fn ensure_plugin_network(
        &self,
        name: &str,
        subnet: &str,
    ) -> Result<bool, DockerError> {
        match self.docker.inspect_network(name, None).await {
            Ok(_) => return Ok(false),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(self.api(e)),
        }
        let plugin = super::plugin::PLUGIN_NAME.to_string();
        let request = bollard::models::NetworkCreateRequest {
            name: name.to_string(),
            driver: Some(plugin.clone()),
            ipam: Some(bollard::models::Ipam {
                driver: Some(plugin),
                config: Some(vec![bollard::models::IpamConfig {
                    subnet: Some(subnet.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map_err(|e| self.api(e))?;
        Ok(true)
    }

    /// Kills a container (one the proxy could not attach).
    pub async fn kill(&self, container: &str) -> Result<(), DockerError> {
        self.docker
            .kill_container(container, None::<KillContainerOptions>)
            .await
            .map_err(|e| self.api(e))
    }

    /// Container start, die and destroy events from `since` (unix seconds) on.
    pub fn container_events(
        &self,
        since: i64,
    ) -> impl Stream<Item = Result<bollard::models::EventMessage, bollard::errors::Error>> {
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        filters.insert(
            "event".to_string(),
            vec!["start".into(), "die".into(), "destroy".into()],
        );
        self.docker.events(Some(EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(filters),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unix_sockets_are_docker_hosts() {
        assert_eq!(
            socket_path("unix:///var/run/docker.sock").unwrap(),
            PathBuf::from("/var/run/docker.sock")
        );
        assert!(socket_path("tcp://1.2.3.4:2375").is_err());
    }

    #[test]
    fn container_ids_are_64_hex_digits() {
        assert!(is_container_id(&"ab".repeat(32)));
        assert!(!is_container_id("/run/netns/c1"));
        assert!(!is_container_id(&"AB".repeat(32)));
    }

    #[test]
    fn the_label_wins_over_the_environment() {
        let mut c = bollard::models::ContainerInspectResponse {
            id: Some("x".into()),
            name: Some("/w1".into()),
            ..Default::default()
        };
        c.state = Some(bollard::models::ContainerState {
            running: Some(true),
            pid: Some(42),
            ..Default::default()
        });
        c.config = Some(bollard::models::ContainerConfig {
            env: Some(vec!["WEAVE_CIDR=none".into()]),
            labels: Some(HashMap::from([(
                CIDR_LABEL.to_string(),
                "net:10.2.2.0/24".to_string(),
            )])),
            ..Default::default()
        });
        let f = ContainerFacts::from_inspect(c.clone());
        assert_eq!(f.name, "w1");
        assert_eq!(f.netns(), Some(PathBuf::from("/proc/42/ns/net")));
        assert_eq!(
            f.wants.unwrap().unwrap().to_text(),
            "net:10.2.2.0/24".to_string()
        );
        c.config.as_mut().unwrap().labels = None;
        let f = ContainerFacts::from_inspect(c.clone());
        assert_eq!(f.wants, Some(Ok(WeaveCidr::Detached)));
        c.config.as_mut().unwrap().env = None;
        assert_eq!(ContainerFacts::from_inspect(c).wants, None);
    }
}
