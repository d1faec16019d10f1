//! The composition root: `weave-router launch --foreground` starts the HTTP API, the data
//! path, the sleeve, the router, DNS, IP allocation and the Docker integration, wires them
//! into a [`Node`] and runs until SIGTERM, SIGINT or `POST /stop`, then takes it all down
//! (after SIGTERM or `POST /stop?keep-datapath=true` all but the kernel data path).
//! The only part of the node that knows the adapters (it starts them).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::endpoints::Interfaces;
use super::{DatapathShown, Node};
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::datapath::fake::FakeDatapath;
use crate::datapath::{Datapath, DatapathError, DatapathSettings};
use crate::ipam::node::{Ipam, IpamError};
use crate::ipam::service::IpamService;
use crate::mesh::connection::Timings;
use crate::mesh::gossip_channel::ChannelId;
use crate::mesh::peer_name::PeerName;
use crate::mesh::protocol::Hello;
use crate::router::{self, Router, RouterConfig, RouterError, SleeveUse};
use crate::sleeve::bridge_port::SleeveStartError;
use crate::state::{StateDir, StateError};

/// UDP port of the data path (VXLAN).
pub const DATA_PORT: u16 = 6784;

/// Why the router did not start (or stopped on an error). The CLI prints the chain.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Signals(std::io::Error),
    #[error("cannot derive a key from the password")]
    Password(#[source] crate::crypto::password::PasswordError),
    #[error(
        "--ipalloc-range {range} overlaps the host route {route} on {dev}; choose another range"
    )]
    RangeOverlaps {
        range: crate::net::Ipv4Net,
        route: String,
        dev: String,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Listen(#[from] RouterError),
    #[error("cannot serve the HTTP API on {addr}")]
    HttpApi {
        addr: std::net::SocketAddr,
        #[source]
        error: std::io::Error,
    },
    #[error("cannot serve the HTTP API on the unix socket @{name} (another router in this network namespace?)")]
    ApiSocket {
        name: String,
        #[source]
        error: std::io::Error,
    },
    #[error("cannot start the data path")]
    Datapath(#[source] DatapathError),
    #[error("cannot put the DNS address on the weave bridge")]
    ServiceAddress(#[source] DatapathError),
    #[error("cannot start the sleeve data path")]
    Sleeve(#[source] SleeveStartError),
    #[error("cannot start DNS")]
    Dns(#[source] crate::dns::DnsError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

/// The address to put on the bridge for the DNS server: the listen address, unless it is
/// unspecified or on an interface already.
fn service_address(ip: std::net::IpAddr) -> Option<std::net::Ipv4Addr> {
    use crate::config::HostInfo;
    let std::net::IpAddr::V4(v4) = ip else {
        return None;
    };
    if v4.is_unspecified() || v4.is_loopback() {
        return None;
    }
    let local = crate::config::RealHost
        .interfaces()
        .iter()
        .any(|i| i.ipv4.contains(&v4) && i.name != crate::datapath::ebpf::BRIDGE_NAME);
    (!local).then_some(v4)
}

/// Runs the router until SIGTERM, SIGINT or `POST /stop` (inside a tokio runtime).
pub async fn run(config: Config) -> Result<(), DaemonError> {
    // Signals are caught from the start: one that arrives while the data path is being set up
    // stops the router as soon as it is up, cleanly.
    let (stop_tx, stop_rx) = watch::channel(false);
    let api_state = Arc::new(ApiState::new(stop_tx));
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    {
        let api_state = api_state.clone();
        // SIGTERM is what a supervisor sends to restart or upgrade the router: the process
        // goes, the kernel data path stays for the next launch to adopt. SIGINT (Ctrl-C at a
        // terminal, and a launch that gives up) is a full stop, as `weave-router stop`.
        tokio::spawn(async move {
            tokio::select! {
                _ = sigterm.recv() => {
                    tracing::info!("SIGTERM: stopping the process, keeping the data path");
                    api_state.request_stop_keeping_datapath();
                }
                _ = sigint.recv() => {
                    tracing::info!("SIGINT");
                    api_state.request_stop();
                }
            }
        });
    }

    let password = match &config.password {
        Some(p) => Some(Arc::new(p.derive_key().map_err(DaemonError::Password)?)),
        None => None,
    };
    tracing::info!(
        "encryption {}",
        if password.is_some() {
            "enabled: connections run a Noise handshake keyed by the password"
        } else {
            "disabled (no password)"
        }
    );
    if let Some((route, dev)) = routes_overlapping(config.ipam.range).into_iter().next() {
        return Err(DaemonError::RangeOverlaps {
            range: config.ipam.range,
            route,
            dev,
        });
    }
    let state = Arc::new(StateDir::open(&config.state_dir)?);
    let identity = state.identity(config.name)?;
    let targets = targets_to_dial(&config, &state);
    let listener = router::bind(config.listen_addr()).await?;
    let http = TcpListener::bind(config.http_addr)
        .await
        .map_err(|error| DaemonError::HttpApi {
            addr: config.http_addr,
            error,
        })?;
    let socket_name = api::access::socket_name(config.http_addr);
    let socket =
        api::access::bind_socket(&socket_name).map_err(|error| DaemonError::ApiSocket {
            name: socket_name.clone(),
            error,
        })?;
    tracing::info!(
        "weave-router {} starting: peer {}({}), short ID {}, underlay {} on {}, control port {}, API on http://{} (read-only) and @{socket_name}",
        env!("CARGO_PKG_VERSION"),
        identity.name,
        config.nickname,
        identity.short_id,
        config.host,
        config.iface,
        config.listen_addr(),
        config.http_addr
    );
    let (server_stop_tx, mut server_stop_rx) = watch::channel(false);
    let server = {
        let tcp_app = api::access::tcp_app(api::app(api_state.clone()), config.http_addr);
        let socket_app = api::access::socket_app(api::app(api_state.clone()))
            .into_make_service_with_connect_info::<api::access::PeerUid>();
        let api_state = api_state.clone();
        let mut socket_stop_rx = server_stop_rx.clone();
        tokio::spawn(async move {
            let tcp = axum::serve(http, tcp_app).with_graceful_shutdown(async move {
                let _ = server_stop_rx.wait_for(|s| *s).await;
            });
            let unix = axum::serve(socket, socket_app).with_graceful_shutdown(async move {
                let _ = socket_stop_rx.wait_for(|s| *s).await;
            });
            let (tcp, unix) = tokio::join!(tcp, unix);
            if let Err(e) = tcp.and(unix) {
                tracing::error!("HTTP API failed: {e}");
                api_state.request_stop();
            }
        })
    };

    let local = Hello {
        name: identity.name,
        nickname: config.nickname.clone(),
        short_id: identity.short_id,
        uid: rand::random(),
        underlay: config.host,
        data_port: DATA_PORT,
        trusted_subnets: config.trusted_subnets.clone(),
    };
    let up = Up {
        config: &config,
        targets,
        state,
        local,
        listener,
        api_state,
        stop: stop_rx,
        password,
    };
    let result = if config.fake_datapath {
        tracing::warn!("running with an in-memory data path: no traffic is carried");
        let sleeve_use = up.sleeve_use(true);
        up.run(Arc::new(FakeDatapath::new()), "off".into(), sleeve_use)
            .await
    } else {
        // Without the privilege to load BPF the router still runs: the sleeve carries every
        // peer.
        let programs = match crate::datapath::ebpf::probe_bpf() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "cannot use BPF ({e}): no kernel fast path, every peer goes through the sleeve, and containers of different subnets are not kept apart"
                );
                false
            }
        };
        let sleeve_use = up.sleeve_use(programs);
        let settings = DatapathSettings {
            peer_name: identity.name,
            own_short_id: identity.short_id,
            underlay_iface: config.iface.clone(),
            underlay_addr: config.host,
            mtu: match config.mtu {
                Some(m) => Some(m),
                None if sleeve_use != SleeveUse::Fallback => {
                    crate::sleeve::bridge_port::default_container_mtu(&config.iface).await
                }
                None => None,
            },
            xdp: config.xdp,
            pin_root: config.pin_root.clone(),
            programs,
            log_kernel: config.log_kernel,
        };
        match crate::datapath::ebpf::EbpfDatapath::start(settings).await {
            Ok(datapath) => {
                let xdp = if datapath.xdp_attached() { "on" } else { "off" };
                up.run(Arc::new(datapath), xdp.into(), sleeve_use).await
            }
            Err(e) => Err(DaemonError::Datapath(e)),
        }
    };
    let _ = server_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), server).await;
    if result.is_ok() {
        tracing::info!("stopped");
    }
    result
}

/// IP allocation: continued from the state dir or new; made before the router, whose
/// handshakes carry its identity ([`join_ipam`] then joins it to the mesh).
fn open_ipam(
    config: &Config,
    state: &Arc<StateDir>,
    ourself: PeerName,
) -> Result<Arc<IpamService>, DaemonError> {
    let c = &config.ipam;
    let ipam = match state.load_ipam()? {
        Some(stored) => Ipam::restore(
            ourself,
            c.default_subnet,
            c.init.clone(),
            c.expected_peers,
            c.range,
            stored,
        )?,
        None => Ipam::new(
            ourself,
            c.range,
            c.default_subnet,
            c.init.clone(),
            c.expected_peers,
        )?,
    };
    Ok(IpamService::new(ipam, Some(state.clone())))
}

/// Joins IP allocation to the mesh's IPAM channel.
fn join_ipam<D: Datapath>(service: &Arc<IpamService>, router: &Arc<Router<D>>) {
    let gossiper = router.register_channel(ChannelId::Ipam, service.clone());
    let weak = Arc::downgrade(router);
    service.connect(
        gossiper,
        Box::new(move |peer| weak.upgrade().is_some_and(|r| r.reaches(peer))),
    );
}

/// The host's IPv4 routes (from /proc/net/route) that overlap `range`, other than the
/// default route and routes on the weave bridge: `(destination, device)`.
pub fn routes_overlapping(range: crate::net::Ipv4Net) -> Vec<(String, String)> {
    let Ok(table) = std::fs::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    crate::net::parse_route_table(&table)
        .into_iter()
        .filter_map(|r| {
            let len = r.destination.prefix_len;
            let net = crate::net::Ipv4Net::new(r.destination.addr, len).ok()?;
            (len > 0 && r.device != crate::datapath::ebpf::BRIDGE_NAME && net.overlaps(range))
                .then(|| (net.to_string(), r.device))
        })
        .collect()
}

/// The Docker event watcher and, unless turned off, the Docker API proxy and network plugin.
fn start_docker(
    node: &Arc<Node>,
    api_state: &ApiState,
    settings: &crate::docker::DockerSettings,
) -> Vec<tokio::task::JoinHandle<()>> {
    let service = crate::docker::DockerService::new(node.clone(), settings.clone());
    api_state.set_docker(Some(service.clone()));
    let mut tasks = vec![tokio::spawn(crate::docker::watcher::run(service.clone()))];
    if let Some(path) = settings.plugin_socket.clone() {
        let plugin = crate::docker::plugin::Plugin::new(service.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::docker::plugin::serve(plugin, path).await {
                tracing::error!("{e}; running without the Docker network plugin");
            }
        }));
    }
    if let Some(path) = settings.proxy_socket.clone() {
        tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::docker::proxy::serve(service, path).await {
                tracing::error!("{e}; running without the Docker proxy");
            }
        }));
    }
    tasks
}

/// The peers to dial: those on the command line, or with `--resume` those the last run
/// stored (a corrupt list or a bad entry is one line each, and the launch goes on).
fn targets_to_dial(
    config: &Config,
    state: &StateDir,
) -> Vec<crate::mesh::connection_maker::Target> {
    let stored = match state.load_targets() {
        Ok(s) => s,
        Err(e) => {
            if config.resume {
                tracing::warn!("{e}; resuming with no stored peers");
            }
            return config.targets.clone();
        }
    };
    if !config.resume {
        if let Some(s) = stored.filter(|s| config.targets.is_empty() && !s.given.is_empty()) {
            tracing::info!(
                "{} peers stored by the last run are not dialled: `launch --resume` dials them",
                s.given.len() + s.learned.len()
            );
        }
        return config.targets.clone();
    }
    let Some(stored) = stored else {
        tracing::warn!("--resume: the state directory holds no stored peers; starting with none");
        return Vec::new();
    };
    let (targets, bad) = stored.to_dial();
    for line in bad {
        tracing::warn!("{line}");
    }
    let shown: Vec<String> = targets.iter().map(ToString::to_string).collect();
    tracing::info!("resuming: dialling the stored peers {}", shown.join(", "));
    targets
}

/// Everything ready but the data path.
struct Up<'a> {
    config: &'a Config,
    /// The peers to dial (given, or stored with `--resume`).
    targets: Vec<crate::mesh::connection_maker::Target>,
    state: Arc<StateDir>,
    local: Hello,
    listener: TcpListener,
    api_state: Arc<ApiState>,
    stop: watch::Receiver<bool>,
    password: Option<Arc<crate::crypto::PresharedKey>>,
}

impl Up<'_> {
    /// Which peers the sleeve carries, given whether the kernel programs can be loaded.
    fn sleeve_use(&self, programs: bool) -> SleeveUse {
        if !programs {
            SleeveUse::All
        } else if self.config.sleeve {
            SleeveUse::Untrusted
        } else {
            SleeveUse::Fallback
        }
    }

    /// Runs the router over `datapath` until asked to stop, then takes it all down.
    async fn run<D: Datapath>(
        mut self,
        datapath: Arc<D>,
        xdp: String,
        sleeve_use: SleeveUse,
    ) -> Result<(), DaemonError> {
        let endpoints = match self.state.load_endpoints() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("{e}; starting without earlier endpoints");
                Vec::new()
            }
        };
        let me = self.local.name;
        let ourself = me;
        if let Some(dns) = &self.config.dns {
            if let Some(service) = service_address(dns.listen.ip()) {
                datapath
                    .add_service_address(service)
                    .await
                    .map_err(DaemonError::ServiceAddress)?;
            }
        }
        // The sleeve carries every peer when asked to, and otherwise those whose fast path
        // is blocked.
        let sleeve = if self.config.fake_datapath {
            None
        } else {
            let started = crate::sleeve::bridge_port::start_on_bridge(
                crate::datapath::ebpf::BRIDGE_NAME,
                self.local.short_id.get(),
                self.config.host,
                &self.config.iface,
                datapath.container_mtu(),
                self.password.is_some(),
            )
            .await;
            match started {
                Ok(s) => {
                    // Frames relayed to us over the fast path for a peer whose fast path
                    // fell back go on through the sleeve.
                    if let Err(e) = datapath.hand_relays_to_sleeve(s.port_ifindex()) {
                        tracing::warn!(
                            "frames relayed to peers on the sleeve will be dropped: {e}"
                        );
                    }
                    Some(Arc::new(s))
                }
                Err(e) if sleeve_use == SleeveUse::Fallback => {
                    tracing::warn!(
                        "no sleeve data path ({e}): peers whose UDP 6784 is blocked stay unreachable"
                    );
                    None
                }
                Err(e) => return Err(DaemonError::Sleeve(e)),
            }
        };
        let ipam = open_ipam(self.config, &self.state, ourself)?;
        let ipam_identity = {
            // IPAM holds the router weakly (its gossiper), so no cycle.
            let ipam = ipam.clone();
            router::IpamIdentitySource(Arc::new(move || ipam.identity()))
        };
        let router_config = RouterConfig {
            local: self.local,
            targets: std::mem::take(&mut self.targets),
            timings: Timings::default(),
            discovery: self.config.discovery,
            conn_limit: self.config.conn_limit,
            password: self.password.clone(),
            sleeve: sleeve.clone(),
            sleeve_use,
            ipam: Some(ipam_identity),
        };
        let router = Arc::new(Router::start(
            router_config,
            self.listener,
            datapath.clone(),
            Some(self.state.clone()),
        ));
        let interfaces = Interfaces::new(datapath.clone(), Some(self.state.clone()));
        interfaces.restore(endpoints).await;
        let dns = match self.config.dns.clone() {
            Some(dns_config) => {
                let records = Arc::new(crate::dns::records::Records::new(me));
                let gossiper = router.register_channel(ChannelId::Dns, records.clone());
                let peers = router.clone();
                match crate::dns::Dns::start(dns_config, records, gossiper, move || {
                    peers.mesh_summary().peers
                }) {
                    Ok(d) => {
                        let restored = d.restore_from(self.state.path().join("dns.json"));
                        if restored > 0 {
                            tracing::info!(
                                "DNS: {restored} registrations of an earlier run restored"
                            );
                        }
                        Some(Arc::new(d))
                    }
                    Err(e) if self.config.fake_datapath => {
                        tracing::warn!("DNS not started: {e}");
                        None
                    }
                    Err(e) => {
                        router.stop().await;
                        if let Some(s) = &sleeve {
                            s.stop();
                        }
                        let _ = datapath.shutdown().await;
                        return Err(DaemonError::Dns(e));
                    }
                }
            }
            None => None,
        };
        self.api_state.set_dns(dns.clone());
        join_ipam(&ipam, &router);
        let _ticker = ipam.spawn_ticker();
        let node = Arc::new(Node::new(
            router.clone(),
            interfaces,
            Some(ipam),
            dns.clone(),
            DatapathShown {
                iface: self.config.iface.clone(),
                xdp,
            },
        ));
        node.expose_again().await;
        self.api_state.set_ready(node.clone());
        let docker_tasks = match &self.config.docker {
            Some(settings) => start_docker(&node, &self.api_state, settings),
            None => Vec::new(),
        };
        tracing::info!("ready");
        // A service manager (systemd `Type=notify`) hears of it now: API answering, data
        // path up.
        let notifier = crate::service_manager::Notifier::from_env();
        notifier.send(
            crate::service_manager::State::Ready,
            &format!("peer {} ready", self.config.nickname),
        );
        crate::service_manager::tell_launcher(&me.to_string());
        let _watchdog = notifier.spawn_watchdog(self.stop.clone());
        tokio::spawn(crate::memory::trim_periodically(self.stop.clone()));

        let _ = self.stop.wait_for(|s| *s).await;
        tracing::info!("stopping");
        if self.api_state.keeps_datapath() {
            // Connections closing must not take their peers out of the maps the next
            // launch adopts.
            datapath.keep_as_is();
        }
        notifier.send(crate::service_manager::State::Stopping, "stopping");
        for t in docker_tasks {
            t.abort();
        }
        if let Some(d) = self.config.docker.as_ref() {
            for p in d.proxy_socket.iter().chain(&d.plugin_socket) {
                let _ = std::fs::remove_file(p);
            }
        }
        if let Some(dns) = dns {
            let _ = tokio::task::spawn_blocking(move || dns.stop()).await;
        }
        router.stop().await;
        node.save_endpoints();
        if self.api_state.keeps_datapath() {
            tracing::info!(
                "the kernel data path keeps carrying traffic; the next launch with this state dir adopts it"
            );
        } else if let Err(e) = datapath.shutdown().await {
            tracing::error!("data path shutdown: {e}");
        }
        Ok(())
    }
}
