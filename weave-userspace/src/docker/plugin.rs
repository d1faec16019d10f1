//! The Docker network plugin: a remote network driver and IPAM driver named `weave`, on a
//! unix socket where dockerd looks for plugins (`/run/docker/plugins/weave.sock`).
//!
//! `docker network create -d weave --ipam-driver weave weave`, then
//! `docker run --net=weave ...`: the IPAM driver allocates the container's address from the
//! router's IPAM, the network driver creates the veth at `Join` (the host end a port of the
//! weave bridge with the data path's programs, the container end left in the host for
//! Docker to move in as `ethwe0` before the entrypoint runs). The container's name goes
//! into weaveDNS when Docker reports it started (see [`super::DockerService`]).
//!
//! Pools are named by their subnet, endpoints are keyed in the data path by
//! [`endpoint_key`], and addresses belong to IPAM owners `plugin:...`: nothing of the plugin
//! lives only in memory but the address an endpoint was created with (between
//! `CreateEndpoint` and `Join`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::DockerService;
use crate::datapath::AttachRequest;
use crate::net::Ipv4Cidr;
use crate::net::Ipv4Net;

/// The plugin's name: the socket's file name without `.sock`, and the driver names.
pub const PLUGIN_NAME: &str = "weave";
/// The prefix of the name Docker gives the container's interface (`ethwe0`).
pub const DST_PREFIX: &str = "ethwe";
/// Prefix of the IPAM owners of addresses handed out through the plugin.
pub const OWNER_PREFIX: &str = "plugin:";
const GATEWAY_REQUEST: &str = "com.docker.network.gateway";

/// The data path's key of a plugin endpoint (not a path of a namespace: Docker moves the
/// interface into a namespace of its own).
pub fn endpoint_key(endpoint_id: &str) -> PathBuf {
    PathBuf::from(format!("docker-endpoint:{endpoint_id}"))
}

/// The endpoint ID of a data path key made by [`endpoint_key`].
pub fn endpoint_id(key: &std::path::Path) -> Option<&str> {
    key.to_str()?.strip_prefix("docker-endpoint:")
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("Docker plugin socket {path}: {error}")]
    Bind {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// The plugin's state: the service it attaches through, and the addresses endpoints were
/// created with.
pub struct Plugin {
    service: Arc<DockerService>,
    addresses: Mutex<HashMap<String, Ipv4Cidr>>,
}

type Failure = String;

impl Plugin {
    pub fn new(service: Arc<DockerService>) -> Arc<Self> {
        Arc::new(Self {
            service,
            addresses: Mutex::new(HashMap::new()),
        })
    }

    fn ipam(&self) -> Result<Arc<crate::ipam::service::IpamService>, Failure> {
        self.service
            .node
            .ipam()
            .ok_or_else(|| "IP allocation is off on this router (or it is not ready)".to_string())
    }

    /// Answers one call: `path` is the method (`/NetworkDriver.Join`), `body` its JSON.
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        let s = |k: &str| {
            body.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        match path.trim_start_matches('/') {
            "Plugin.Activate" => Ok(json!({ "Implements": ["NetworkDriver", "IpamDriver"] })),
            "NetworkDriver.GetCapabilities" => {
                Ok(json!({ "Scope": "local", "ConnectivityScope": "local" }))
            }
            "NetworkDriver.CreateNetwork" => self.create_network(body),
            "NetworkDriver.DeleteNetwork"
            | "NetworkDriver.DiscoverNew"
            | "NetworkDriver.DiscoverDelete"
            | "NetworkDriver.ProgramExternalConnectivity"
            | "NetworkDriver.RevokeExternalConnectivity"
            | "NetworkDriver.AllocateNetwork"
            | "NetworkDriver.FreeNetwork" => Ok(json!({})),
            "NetworkDriver.CreateEndpoint" => self.create_endpoint(&s("EndpointID"), body),
            "NetworkDriver.EndpointOperInfo" => Ok(json!({ "Value": {} })),
            "NetworkDriver.DeleteEndpoint" => {
                let id = s("EndpointID");
                self.leave(&id).await?;
                self.lock().remove(&id);
                Ok(json!({}))
            }
            "NetworkDriver.Join" => self.join(&s("EndpointID")).await,
            "NetworkDriver.Leave" => {
                self.leave(&s("EndpointID")).await?;
                Ok(json!({}))
            }
            "IpamDriver.GetCapabilities" => Ok(json!({ "RequiresMACAddress": false })),
            "IpamDriver.GetDefaultAddressSpaces" => Ok(json!({
                "LocalDefaultAddressSpace": "weavelocal",
                "GlobalDefaultAddressSpace": "weaveglobal",
            })),
            "IpamDriver.RequestPool" => self.request_pool(body),
            "IpamDriver.ReleasePool" => Ok(json!({})),
            "IpamDriver.RequestAddress" => self.request_address(body).await,
            "IpamDriver.ReleaseAddress" => self.release_address(&s("Address")),
            other => Err(format!("weave plugin: unknown call {other}")),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ipv4Cidr>> {
        self.addresses.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn create_network(&self, body: &Value) -> Result<Value, Failure> {
        if body["IPv6Data"].as_array().is_some_and(|a| !a.is_empty()) {
            return Err("the weave network has no IPv6".into());
        }
        let range = self.ipam()?.range();
        for d in body["IPv4Data"].as_array().into_iter().flatten() {
            let pool = d["Pool"].as_str().unwrap_or("");
            match pool.parse::<Ipv4Net>() {
                Ok(p) if range.contains_cidr(p) => {}
                _ => {
                    return Err(format!(
                        "subnet {pool} is not inside the weave allocation range {range} \
                         (create the network with --ipam-driver weave)"
                    ))
                }
            }
        }
        Ok(json!({}))
    }

    fn create_endpoint(&self, id: &str, body: &Value) -> Result<Value, Failure> {
        let address = body["Interface"]["Address"].as_str().unwrap_or("");
        if address.is_empty() {
            return Err(
                "no IPv4 address for the endpoint (create the network with --ipam-driver weave)"
                    .into(),
            );
        }
        let cidr: Ipv4Cidr = address.parse().map_err(|e| format!("{e}"))?;
        self.lock().insert(id.to_string(), cidr);
        // Docker chose the address (through our IPAM driver); the MAC is the veth's.
        Ok(json!({}))
    }

    async fn join(&self, id: &str) -> Result<Value, Failure> {
        let address = self
            .lock()
            .get(id)
            .copied()
            .ok_or_else(|| format!("endpoint {id} unknown to the weave plugin"))?;
        let node = &self.service.node;
        let key = endpoint_key(id);
        if let Some(old) = node.endpoints().into_iter().find(|e| e.netns == key) {
            let _ = node.detach_interface(old.netns).await;
        }
        let owner = self.ipam().ok().and_then(|i| owner_of(&i, address.addr));
        let endpoint = node
            .attach_interface(AttachRequest {
                netns: key,
                addresses: vec![address],
                owner,
                hand_over: true,
                ifname: None,
            })
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            "Docker endpoint {} joined: {} on {}",
            super::short(id),
            address,
            endpoint.host_ifname
        );
        let routes: Vec<Value> = node
            .dns()
            .and_then(|d| match d.config().listen.ip() {
                std::net::IpAddr::V4(a) if !a.is_loopback() && !a.is_unspecified() => Some(a),
                _ => None,
            })
            .map(|a| json!({ "Destination": format!("{a}/32"), "RouteType": 1 }))
            .into_iter()
            .collect();
        Ok(json!({
            "InterfaceName": {
                "SrcName": node.handover_name(&endpoint.host_ifname),
                "DstPrefix": DST_PREFIX,
            },
            "StaticRoutes": routes,
            "DisableGatewayService": true,
        }))
    }

    /// Takes the endpoint's veth away (Docker moved it back, or it is gone with the
    /// namespace); its address stays until `ReleaseAddress`.
    async fn leave(&self, id: &str) -> Result<(), Failure> {
        let node = &self.service.node;
        let key = endpoint_key(id);
        if node.endpoints().iter().any(|e| e.netns == key) {
            node.detach_interface(key)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn request_pool(&self, body: &Value) -> Result<Value, Failure> {
        if body["V6"].as_bool() == Some(true) {
            return Err("the weave network has no IPv6".into());
        }
        let ipam = self.ipam()?;
        let range = ipam.range();
        let pool = match body["Pool"].as_str().unwrap_or("") {
            "" => ipam.default_subnet(),
            p => {
                let c: Ipv4Net = p.parse().map_err(|e| format!("subnet {p}: {e}"))?;
                if !range.contains_cidr(c) {
                    return Err(format!(
                        "subnet {p} is outside the weave allocation range {range}"
                    ));
                }
                c
            }
        };
        if let Some(sub) = body["SubPool"].as_str().filter(|s| !s.is_empty()) {
            if sub.parse::<Ipv4Net>().ok() != Some(pool) {
                return Err("--ip-range is not supported by the weave IPAM driver".into());
            }
        }
        Ok(json!({ "PoolID": pool.to_string(), "Pool": pool.to_string(), "Data": {} }))
    }

    async fn request_address(&self, body: &Value) -> Result<Value, Failure> {
        let pool_id = body["PoolID"].as_str().unwrap_or("");
        let pool: Ipv4Net = pool_id
            .parse()
            .map_err(|_| format!("unknown pool {pool_id:?}"))?;
        let ipam = self.ipam()?;
        let gateway = body["Options"]["RequestAddressType"].as_str() == Some(GATEWAY_REQUEST);
        let owner = if gateway {
            format!("{OWNER_PREFIX}gateway:{pool}")
        } else {
            format!("{OWNER_PREFIX}{:016x}", rand::random::<u64>())
        };
        let wanted = body["Address"].as_str().unwrap_or("");
        let got = if wanted.is_empty() {
            ipam.allocate(&owner, Some(pool))
                .await
                .map_err(|e| e.to_string())?
        } else {
            let addr: Ipv4Addr = wanted
                .parse()
                .map_err(|_| format!("{wanted:?} is not an IPv4 address"))?;
            if !pool.contains(addr) {
                return Err(format!("{addr} is not in subnet {pool}"));
            }
            let a = Ipv4Cidr {
                addr,
                prefix_len: pool.prefix_len(),
            };
            if gateway && owner_of(&ipam, addr).is_some() {
                a
            } else {
                ipam.claim(&owner, a).await.map_err(|e| e.to_string())?;
                a
            }
        };
        let got = Ipv4Cidr {
            addr: got.addr,
            prefix_len: pool.prefix_len(),
        };
        Ok(json!({ "Address": got.to_string(), "Data": {} }))
    }

    fn release_address(&self, address: &str) -> Result<Value, Failure> {
        let addr: Ipv4Addr = address
            .split('/')
            .next()
            .unwrap_or("")
            .parse()
            .map_err(|_| format!("{address:?} is not an IPv4 address"))?;
        let ipam = self.ipam()?;
        if let Some(owner) = owner_of(&ipam, addr) {
            ipam.release_address(&owner, addr)
                .map_err(|e| e.to_string())?;
        }
        Ok(json!({}))
    }
}

/// The plugin owner of an allocated address.
fn owner_of(ipam: &crate::ipam::service::IpamService, addr: Ipv4Addr) -> Option<String> {
    ipam.owners()
        .into_iter()
        .filter(|o| o.starts_with(OWNER_PREFIX))
        .find(|o| ipam.addresses_of(o).iter().any(|a| a.addr == addr))
}

/// Listens on `path` (replacing a stale socket) and serves until the task is aborted.
pub async fn serve(plugin: Arc<Plugin>, path: PathBuf) -> Result<(), PluginError> {
    let bind = |error| PluginError::Bind {
        path: path.clone(),
        error,
    };
    let listener = super::bind_unix_socket(&path).map_err(bind)?;
    tracing::info!("Docker network plugin on unix://{}", path.display());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("Docker plugin: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let plugin = plugin.clone();
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |req| handle(plugin.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), handler);
            if let Err(e) = conn.await {
                tracing::debug!("Docker plugin connection: {e}");
            }
        });
    }
}

async fn handle(
    plugin: Arc<Plugin>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = if bytes.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&bytes).unwrap_or(json!({}))
    };
    let answer = match plugin.call(&path, &body).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("Docker plugin {path}: {e}");
            // The network driver API reads `Err`, the IPAM API `Error`.
            json!({ "Err": e, "Error": e })
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(answer.to_string())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/vnd.docker.plugins.v1.2+json"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::datapath::fake::FakeDatapath;
    use crate::datapath::Datapath;
    use crate::mesh::connection::Timings;
    use crate::mesh::peer_name::{PeerName, ShortId};
    use crate::mesh::protocol::Hello;
    use crate::node::endpoints::Interfaces;
    use crate::node::{DatapathShown, Node};
    use crate::router::{bind, Router, RouterConfig};

    /// A plugin over a router with the in-memory data path and IPAM in 10.2.0.0/16
    /// (default subnet 10.2.1.0/24).
    async fn plugin() -> (Arc<Plugin>, Arc<Router<FakeDatapath>>) {
        let me = PeerName::from_bytes([0x0a, 0, 0, 0, 0, 1]);
        let local = Hello {
            name: me,
            nickname: "host1".into(),
            short_id: ShortId::new(1).unwrap(),
            uid: rand::random(),
            underlay: [127, 0, 0, 1].into(),
            data_port: 6784,
            trusted_subnets: Vec::new(),
        };
        let config = RouterConfig {
            local,
            targets: vec![],
            timings: Timings::default(),
            discovery: false,
            conn_limit: crate::router::DEFAULT_CONN_LIMIT,
            password: None,
            sleeve: None,
            sleeve_use: Default::default(),
            ipam: None,
        };
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let router = Arc::new(Router::start(
            config,
            listener,
            Arc::new(FakeDatapath::new()),
            None,
        ));
        let node = Arc::new(Node::new(
            router.clone(),
            Interfaces::new(router.datapath().clone(), None),
            Some(crate::ipam::service::IpamService::alone(me)),
            None,
            DatapathShown {
                iface: "lo".into(),
                xdp: "off".into(),
            },
        ));
        let service = DockerService::new(
            node,
            super::super::DockerSettings {
                host: "unix:///nonexistent".into(),
                proxy_socket: None,
                plugin_socket: None,
            },
        );
        (Plugin::new(service), router)
    }

    async fn ok(p: &Plugin, method: &str, body: Value) -> Value {
        tokio::time::timeout(Duration::from_secs(10), p.call(method, &body))
            .await
            .expect("answers in time")
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_container_goes_through_ipam_create_join_leave_and_release() {
        let (p, router) = plugin().await;
        let a = ok(&p, "/Plugin.Activate", json!({})).await;
        assert_eq!(a["Implements"], json!(["NetworkDriver", "IpamDriver"]));
        let pool = ok(&p, "/IpamDriver.RequestPool", json!({ "Pool": "" })).await;
        assert_eq!(pool["Pool"], "10.2.1.0/24");
        let pool_id = pool["PoolID"].as_str().unwrap().to_string();
        let gw = ok(
            &p,
            "/IpamDriver.RequestAddress",
            json!({ "PoolID": pool_id, "Options": { "RequestAddressType": GATEWAY_REQUEST } }),
        )
        .await;
        assert_eq!(gw["Address"], "10.2.1.1/24");
        ok(
            &p,
            "/NetworkDriver.CreateNetwork",
            json!({ "NetworkID": "n1", "IPv4Data": [{ "Pool": "10.2.1.0/24" }] }),
        )
        .await;
        let addr = ok(
            &p,
            "/IpamDriver.RequestAddress",
            json!({ "PoolID": pool_id }),
        )
        .await;
        assert_eq!(addr["Address"], "10.2.1.2/24");
        ok(
            &p,
            "/NetworkDriver.CreateEndpoint",
            json!({ "NetworkID": "n1", "EndpointID": "e1", "Interface": { "Address": "10.2.1.2/24" } }),
        )
        .await;
        let j = ok(
            &p,
            "/NetworkDriver.Join",
            json!({ "NetworkID": "n1", "EndpointID": "e1", "SandboxKey": "/x" }),
        )
        .await;
        assert_eq!(j["InterfaceName"]["DstPrefix"], "ethwe");
        assert!(j["InterfaceName"]["SrcName"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
        assert_eq!(j["DisableGatewayService"], true);
        let eps = router.datapath().endpoints();
        assert_eq!(eps.len(), 1);
        assert_eq!(endpoint_id(&eps[0].netns), Some("e1"));
        assert_eq!(eps[0].addresses[0].to_string(), "10.2.1.2/24");
        ok(
            &p,
            "/NetworkDriver.Leave",
            json!({ "NetworkID": "n1", "EndpointID": "e1" }),
        )
        .await;
        ok(
            &p,
            "/NetworkDriver.DeleteEndpoint",
            json!({ "NetworkID": "n1", "EndpointID": "e1" }),
        )
        .await;
        assert!(router.datapath().endpoints().is_empty());
        for a in ["10.2.1.2", "10.2.1.1"] {
            ok(
                &p,
                "/IpamDriver.ReleaseAddress",
                json!({ "PoolID": pool_id, "Address": a }),
            )
            .await;
        }
        let ipam = p.ipam().unwrap();
        assert!(
            ipam.owners().iter().all(|o| !o.starts_with(OWNER_PREFIX)),
            "{:?}",
            ipam.owners()
        );
        router.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_requests_get_one_line() {
        let (p, router) = plugin().await;
        let call = |m: &'static str, b: Value| {
            let p = p.clone();
            async move { p.call(m, &b).await.unwrap_err() }
        };
        let e = call(
            "/IpamDriver.RequestPool",
            json!({ "Pool": "192.168.7.0/24" }),
        )
        .await;
        assert_eq!(
            e,
            "subnet 192.168.7.0/24 is outside the weave allocation range 10.2.0.0/16"
        );
        let e = call("/IpamDriver.RequestPool", json!({ "V6": true })).await;
        assert_eq!(e, "the weave network has no IPv6");
        let e = call("/NetworkDriver.Join", json!({ "EndpointID": "nope" })).await;
        assert_eq!(e, "endpoint nope unknown to the weave plugin");
        let e = call(
            "/NetworkDriver.CreateEndpoint",
            json!({ "EndpointID": "e", "Interface": {} }),
        )
        .await;
        assert!(e.contains("--ipam-driver weave"), "{e}");
        let e = call("/Nonsense.Call", json!({})).await;
        assert_eq!(e, "weave plugin: unknown call Nonsense.Call");
        router.stop().await;
    }
}
