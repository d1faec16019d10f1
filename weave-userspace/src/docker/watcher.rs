//! Follows the Docker daemon: attaches containers that start, detaches those that die,
//! re-syncs after every (re)connect, and keeps trying while the daemon is away.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::client::DockerClient;
use super::{short, DockerService};

/// Pause between attempts to reach the daemon.
const RETRY: Duration = Duration::from_secs(1);

/// Runs until the task is aborted.
pub async fn run(service: Arc<DockerService>) {
    let host = service.settings().host.clone();
    let mut said_absent = false;
    loop {
        let client = match DockerClient::connect(&host).await {
            Ok(c) => c,
            Err(e) => {
                if !said_absent {
                    tracing::warn!("{e}; running without Docker features until the daemon answers");
                    said_absent = true;
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        said_absent = false;
        tracing::info!("Docker at {host}: connected (API {})", client.api_version());
        // Events from before the re-sync are replayed: nothing falls between the two.
        let since = unix_now() - 1;
        if let Err(e) = service.resync(&client).await {
            tracing::warn!("Docker re-sync failed: {e}; trying again");
            tokio::time::sleep(RETRY).await;
            continue;
        }
        service.set_client(Some(client.clone()));
        let network = service
            .settings()
            .plugin_socket
            .is_some()
            .then(|| tokio::spawn(ensure_network(service.clone(), client.clone())));
        follow(&service, &client, since).await;
        if let Some(t) = network {
            t.abort();
        }
        service.set_client(None);
        tokio::time::sleep(RETRY).await;
    }
}

/// With the network plugin on: the network `weave` on it, in the default subnet, unless the
/// daemon has a network of that name already. Tried again for a minute while it fails (IPAM
/// may have no space yet right after the router joined the mesh).
async fn ensure_network(service: Arc<DockerService>, client: DockerClient) {
    let name = super::plugin::PLUGIN_NAME;
    let Some(ipam) = service.node.ipam() else {
        return;
    };
    let subnet = ipam.default_subnet().to_string();
    let mut last = None;
    for _ in 0..30 {
        match client.ensure_plugin_network(name, &subnet).await {
            Ok(true) => {
                tracing::info!("Docker network {name} created (subnet {subnet})");
                return;
            }
            Ok(false) => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if let Some(e) = last {
        tracing::warn!(
            "Docker network {name} not created: {e} (docker network create -d {name} \
             --ipam-driver {name} {name})"
        );
    }
}

/// Handles events until the stream ends (the daemon went away).
async fn follow(service: &Arc<DockerService>, client: &DockerClient, since: i64) {
    let mut events = Box::pin(client.container_events(since));
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("Docker event stream ended: {e}; reconnecting");
                return;
            }
        };
        let Some(id) = event.actor.and_then(|a| a.id) else {
            continue;
        };
        match event.action.as_deref() {
            Some("start") => {
                let facts = match client.inspect(&id).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!("Docker container {}: {e}", short(&id));
                        continue;
                    }
                };
                if facts.pid.is_none() {
                    continue;
                }
                if let Err(e) = service.attach(&facts, None).await {
                    tracing::warn!("Docker container {}: not attached: {e}", facts.name);
                }
            }
            Some("die") | Some("destroy") => {
                if let Err(e) = service.detach(&id).await {
                    tracing::warn!("Docker container {}: {e}", short(&id));
                }
            }
            _ => {}
        }
    }
    tracing::warn!("Docker event stream ended; reconnecting");
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
