//! The launch configuration: parsed by clap, validated once into [`Config`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use crate::datapath::XdpMode;
use crate::mesh::connection_maker::{Target, DEFAULT_PORT};
use crate::mesh::peer_name::PeerName;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/weave-router";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:6784";
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/weave-router";
/// Environment variable naming the HTTP API address, for every command.
pub const HTTP_ADDR_ENV: &str = "WEAVE_HTTP_ADDR";
/// Environment variable giving the password, as Weave's.
pub const PASSWORD_ENV: &str = "WEAVE_PASSWORD";

/// `weave-router launch` as typed on the command line.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct LaunchArgs {
    /// Peers to connect to: host or host:port (port 6783 when left out).
    #[arg(value_name = "PEER")]
    pub peer: Vec<String>,
    /// More peers, comma-separated.
    #[arg(long = "peers", value_name = "A,B", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Dial the peers the last run stored in the state directory (those given and those
    /// learned through gossip) instead of peers on the command line, as Weave's
    /// `launch --resume`. A plain `launch` dials only the peers it is given.
    #[arg(long)]
    pub resume: bool,
    /// Peer name, six hex bytes like 0a:00:00:00:00:01 (default: the stored one, else
    /// Weave's name for this machine from /etc/machine-id and the product UUID, else random).
    #[arg(long, value_name = "MAC")]
    pub name: Option<String>,
    /// Nickname shown beside the peer name (default: the host name).
    #[arg(long, value_name = "N")]
    pub nickname: Option<String>,
    /// Underlay interface (default: the device of the default route, else the only
    /// interface other than lo that is up).
    #[arg(long, value_name = "DEV")]
    pub iface: Option<String>,
    /// Underlay IPv4 address: peers send VXLAN here and the control port binds on it
    /// (default: the first IPv4 address of the interface).
    #[arg(long, value_name = "ADDR")]
    pub host: Option<String>,
    /// TCP control port.
    #[arg(long, env = "WEAVE_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Container MTU (default: underlay MTU − 50).
    #[arg(long, value_name = "N", env = "WEAVE_MTU")]
    pub mtu: Option<u32>,
    /// State directory (peer name, endpoints, daemon log); locked while the router runs.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, value_name = "ADDR", env = HTTP_ADDR_ENV, default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: String,
    /// XDP admission filter on the underlay.
    #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
    pub xdp: XdpMode,
    /// Log the kernel programs' rare events (refused VXLAN, relays without a route or out
    /// of hops) in the router's log.
    #[arg(long)]
    pub log_kernel: bool,
    /// Do not dial peers learned through gossip.
    #[arg(long)]
    pub no_discovery: bool,
    /// Most connections kept at once; 0 means no limit (as in Weave).
    #[arg(long, value_name = "N", env = "CONN_LIMIT", default_value_t = crate::router::DEFAULT_CONN_LIMIT)]
    pub conn_limit: usize,
    /// Number of peers expected at start (the quorum of IP allocation consensus).
    #[arg(long, value_name = "N")]
    pub init_peer_count: Option<u32>,
    /// The range every container address is allocated from.
    #[arg(long, value_name = "CIDR", env = "IPALLOC_RANGE", default_value = crate::ipam::DEFAULT_RANGE)]
    pub ipalloc_range: String,
    /// The subnet `net:default` allocates in (default: the whole range).
    #[arg(long, value_name = "CIDR")]
    pub ipalloc_default_subnet: Option<String>,
    /// How the range is first split: consensus[=N], seed=PEER,... or observer.
    #[arg(long, value_name = "MODE", env = "IPALLOC_INIT")]
    pub ipalloc_init: Option<String>,
    /// Encrypt every connection with a key derived from this password; peers need the same
    /// one, and peers with another or none are refused.
    #[arg(long, value_name = "PASSWORD", env = PASSWORD_ENV, hide_env_values = true)]
    pub password: Option<String>,
    /// Read the password from a file (a trailing newline is not part of it); takes precedence
    /// over --password and WEAVE_PASSWORD.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Underlay subnets whose peers are trusted (comma-separated CIDRs): with a password,
    /// data to a peer in them goes unencrypted through the kernel fast path, when that peer
    /// trusts our address too (the control connection stays encrypted).
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub trusted_subnets: Vec<crate::net::Ipv4Cidr>,
    /// The data path between hosts: fastdp (kernel VXLAN, falling back to the sleeve for a
    /// peer whose UDP 6784 is blocked) or sleeve (user space, UDP 6783, for every peer). A
    /// password always uses the sleeve: nothing leaves as plain VXLAN.
    #[arg(long, value_enum, default_value_t = DatapathMode::Fastdp)]
    pub datapath: DatapathMode,
    /// Weave's spelling of `--datapath sleeve` (also WEAVE_NO_FASTDP set to anything but
    /// an empty, 0, false, no or off).
    #[arg(
        long,
        env = "WEAVE_NO_FASTDP",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub no_fastdp: bool,
    /// What the router logs: debug, info, warning or error (RUST_LOG, when set and this
    /// is not given, says it in full).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Run in the foreground, logging to stderr.
    #[arg(long)]
    pub foreground: bool,
    /// Do not run the DNS server (weaveDNS).
    #[arg(long)]
    pub no_dns: bool,
    /// Domain answered from the gossiped names.
    #[arg(long, value_name = "DOMAIN", default_value = crate::dns::DEFAULT_DOMAIN)]
    pub dns_domain: String,
    /// Where the DNS server listens, IP or IP:PORT (default: 169.254.53.53:53, put on the
    /// weave bridge, with a route to it in every attached container).
    #[arg(long, value_name = "IP[:PORT]", default_value = crate::dns::DEFAULT_LISTEN)]
    pub dns_listen_address: String,
    /// TTL of the DNS answers for names in the domain, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::dns::DEFAULT_TTL)]
    pub dns_ttl: u32,
    /// File naming the upstream DNS servers (other names are forwarded to them).
    #[arg(long, value_name = "FILE", default_value = crate::dns::DEFAULT_RESOLV_CONF)]
    pub resolv_conf: PathBuf,
    /// The Docker daemon whose containers join the network (unix://PATH).
    #[arg(long, value_name = "URL", env = "DOCKER_HOST", default_value = crate::docker::DEFAULT_DOCKER_HOST)]
    pub docker_host: String,
    /// No Docker integration (no event watcher, no proxy).
    #[arg(long)]
    pub no_docker: bool,
    /// Where the Docker API proxy listens (`eval $(weave-router env)` points docker at it).
    #[arg(long, value_name = "PATH", default_value = crate::docker::DEFAULT_PROXY_SOCKET)]
    pub proxy_socket: PathBuf,
    /// No Docker API proxy.
    #[arg(long)]
    pub no_proxy: bool,
    /// Serve the Docker network and IPAM plugin `weave` on this socket (dockerd looks in
    /// /run/docker/plugins/weave.sock); off when not given.
    #[arg(long, value_name = "PATH")]
    pub plugin_socket: Option<PathBuf>,
    /// Use an in-memory data path (control plane only, no privileges needed).
    #[arg(long, hide = true)]
    pub fake_datapath: bool,
    /// Root of the BPF pin directories.
    #[arg(long, hide = true, value_name = "DIR", default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
}

/// Which data path carries traffic between hosts.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DatapathMode {
    #[default]
    Fastdp,
    Sleeve,
}

/// A validated launch configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub name: Option<PeerName>,
    pub nickname: String,
    pub iface: String,
    pub host: Ipv4Addr,
    pub port: u16,
    pub mtu: Option<u32>,
    pub state_dir: PathBuf,
    pub http_addr: SocketAddr,
    pub xdp: XdpMode,
    /// `--log-kernel`.
    pub log_kernel: bool,
    pub targets: Vec<Target>,
    /// `--resume`: dial the peers stored in the state dir (`targets` is then empty).
    pub resume: bool,
    pub discovery: bool,
    /// Most connections kept at once (`usize::MAX` for `--conn-limit 0`).
    pub conn_limit: usize,
    /// `--log-level` as a tracing filter (`None`: RUST_LOG, else info).
    pub log_level: Option<String>,
    pub init_peer_count: Option<u32>,
    pub ipam: IpamConfig,
    pub foreground: bool,
    pub fake_datapath: bool,
    pub pin_root: PathBuf,
    /// `None` with `--no-dns`.
    pub dns: Option<crate::dns::DnsConfig>,
    /// From `--password`, `WEAVE_PASSWORD` or `--password-file`.
    pub password: Option<crate::crypto::password::Password>,
    /// Every peer's traffic through the sleeve (`--datapath sleeve`, or a password); else
    /// the sleeve only takes peers whose fast path is blocked.
    pub sleeve: bool,
    /// `--trusted-subnets`.
    pub trusted_subnets: Vec<crate::net::Ipv4Cidr>,
    /// `None` with `--no-docker`.
    pub docker: Option<crate::docker::DockerSettings>,
}

/// IP allocation settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamConfig {
    pub range: crate::net::Ipv4Net,
    pub default_subnet: crate::net::Ipv4Net,
    pub init: crate::ipam::consensus::InitMode,
    /// Peers expected when no count is given: the initial peers plus this one (as Weave).
    pub expected_peers: usize,
}

impl Config {
    /// Where the control port listens.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host.into(), self.port)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--name: {0}")]
    Name(crate::mesh::peer_name::PeerNameError),
    #[error(transparent)]
    Peer(#[from] crate::mesh::connection_maker::TargetError),
    #[error("--nickname {0:?}: use 1 to 63 letters, digits, '.', '-' or '_'")]
    Nickname(String),
    #[error("--host {0:?} is not an IPv4 address")]
    Host(String),
    #[error("--http-addr {0:?} is not an address with a port (like 127.0.0.1:6784)")]
    HttpAddr(String),
    #[error("--resume dials the peers stored in the state directory: give no peers with it (or leave --resume out)")]
    ResumeWithPeers,
    #[error("--log-level {0:?}: use debug, info, warning or error")]
    LogLevel(String),
    #[error("--init-peer-count 0: at least one peer (this one) is needed")]
    InitPeerCount,
    #[error("--ipalloc-range {0}")]
    IpallocRange(crate::net::CidrError),
    #[error("--ipalloc-default-subnet {0}")]
    IpallocDefaultSubnet(crate::net::CidrError),
    #[error("--ipalloc-default-subnet {subnet} is not inside --ipalloc-range {range}")]
    DefaultSubnetOutsideRange { subnet: String, range: String },
    #[error(transparent)]
    IpallocInit(#[from] crate::ipam::consensus::InitModeError),
    #[error("--init-peer-count {count} contradicts --ipalloc-init {init}")]
    InitConflict { count: u32, init: String },
    #[error("--port 0 is not a port")]
    Port,
    #[error("--mtu {0} is out of range (576..=65485)")]
    Mtu(u32),
    #[error("network interface {0:?} does not exist")]
    NoSuchIface(String),
    #[error("cannot tell the underlay interface ({0}); name it with --iface")]
    NoIface(String),
    #[error("interface {0} has no IPv4 address; give one with --host")]
    NoAddress(String),
    #[error("--dns-domain {0:?} is not a domain name (like weave.local.)")]
    DnsDomain(String),
    #[error("--dns-listen-address {0:?} is not an IPv4 address, optionally with a port (like 169.254.53.53 or 10.0.0.1:53)")]
    DnsListen(String),
    #[error("--password-file {path}: cannot read it: {error}")]
    PasswordFile { path: String, error: String },
    #[error("--password-file {0}: {1}")]
    PasswordFileContent(String, crate::crypto::PasswordError),
    #[error("--password (or WEAVE_PASSWORD): {0}")]
    Password(crate::crypto::PasswordError),
    #[error("--docker-host {0:?}: only unix:// sockets are supported (like unix:///var/run/docker.sock)")]
    DockerHost(String),
}

/// What the configuration needs to know about the machine (a trait so tests can fake it).
pub trait HostInfo {
    fn hostname(&self) -> Option<String>;
    /// Interfaces of this network namespace: name, up, IPv4 addresses.
    fn interfaces(&self) -> Vec<Interface>;
    /// Device of the IPv4 route the kernel would take to `dst` (longest prefix match over
    /// the main table; `0.0.0.0` gives the default route's).
    fn route_iface(&self, dst: Ipv4Addr) -> Option<String>;
}

/// Whether an interface is one the router makes itself (the bridge, its ports, the
/// sleeve's TAP): never the underlay, even when a stopped router left it behind.
pub fn is_router_device(name: &str) -> bool {
    name == crate::datapath::ebpf::BRIDGE_NAME
        || name.starts_with(crate::datapath::ebpf::HOST_VETH_PREFIX)
}

/// The underlay interface when `--iface` is not given: the one of the route to the first
/// peer given by address, else the default route's, else the only interface that is up
/// with an IPv4 address (the router's own devices are never candidates).
fn choose_underlay_iface(
    sys: &dyn HostInfo,
    interfaces: &[Interface],
    targets: &[Target],
) -> Result<String, ConfigError> {
    let usable = |name: &str| !is_router_device(name) && interfaces.iter().any(|i| i.name == name);
    let first_peer = targets.iter().find_map(|t| t.host.parse::<Ipv4Addr>().ok());
    if let Some(i) = first_peer
        .and_then(|addr| sys.route_iface(addr))
        .filter(|i| usable(i))
    {
        return Ok(i);
    }
    if let Some(i) = sys.route_iface(Ipv4Addr::UNSPECIFIED).filter(|i| usable(i)) {
        return Ok(i);
    }
    let up: Vec<&Interface> = interfaces
        .iter()
        .filter(|i| i.up && !i.loopback && !i.ipv4.is_empty() && !is_router_device(&i.name))
        .collect();
    match up.as_slice() {
        [only] => Ok(only.name.clone()),
        [] => Err(ConfigError::NoIface(
            "no default route and no interface other than lo is up with an IPv4 address".into(),
        )),
        many => {
            let names: Vec<&str> = many.iter().map(|i| i.name.as_str()).collect();
            Err(ConfigError::NoIface(format!(
                "no default route and several interfaces are up: {}",
                names.join(", ")
            )))
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub up: bool,
    pub loopback: bool,
    pub ipv4: Vec<Ipv4Addr>,
}

fn valid_nickname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

impl LaunchArgs {
    /// Checks everything and fills the defaults.
    pub fn validate(&self, sys: &dyn HostInfo) -> Result<Config, ConfigError> {
        let name = self
            .name
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(ConfigError::Name)?;
        let targets = self
            .peer
            .iter()
            .chain(self.peers.iter())
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<Target>())
            .collect::<Result<Vec<_>, _>>()?;
        let mut unique = Vec::new();
        for t in targets {
            if !unique.contains(&t) {
                unique.push(t);
            }
        }
        let nickname = match &self.nickname {
            Some(n) if valid_nickname(n) => n.clone(),
            Some(n) => return Err(ConfigError::Nickname(n.clone())),
            None => sys
                .hostname()
                .map(|h| h.split('.').next().unwrap_or_default().to_string())
                .filter(|h| valid_nickname(h))
                .unwrap_or_else(|| "weave-router".into()),
        };
        let http_addr: SocketAddr = self
            .http_addr
            .parse()
            .map_err(|_| ConfigError::HttpAddr(self.http_addr.clone()))?;
        if self.port == 0 {
            return Err(ConfigError::Port);
        }
        if let Some(m) = self.mtu {
            if !(576..=65485).contains(&m) {
                return Err(ConfigError::Mtu(m));
            }
        }
        let host = self
            .host
            .as_deref()
            .map(|h| {
                h.parse::<Ipv4Addr>()
                    .map_err(|_| ConfigError::Host(h.to_string()))
            })
            .transpose()?;
        let interfaces = sys.interfaces();
        let iface = match &self.iface {
            Some(i) => {
                if !interfaces.iter().any(|x| &x.name == i) {
                    return Err(ConfigError::NoSuchIface(i.clone()));
                }
                i.clone()
            }
            None => choose_underlay_iface(sys, &interfaces, &unique)?,
        };
        let host = match host {
            Some(h) => h,
            None => interfaces
                .iter()
                .find(|i| i.name == iface)
                .and_then(|i| i.ipv4.first().copied())
                .ok_or_else(|| ConfigError::NoAddress(iface.clone()))?,
        };
        if self.resume && !unique.is_empty() {
            return Err(ConfigError::ResumeWithPeers);
        }
        let log_level = self
            .log_level
            .as_deref()
            .map(|l| match l.to_ascii_lowercase().as_str() {
                "debug" => Ok("debug"),
                "info" => Ok("info"),
                "warning" | "warn" => Ok("warn"),
                "error" => Ok("error"),
                _ => Err(ConfigError::LogLevel(l.to_string())),
            })
            .transpose()?
            .map(str::to_string);
        if self.init_peer_count == Some(0) {
            return Err(ConfigError::InitPeerCount);
        }
        let dns = if self.no_dns {
            None
        } else {
            let domain = crate::dns::records::normalise_name(&self.dns_domain)
                .map_err(|_| ConfigError::DnsDomain(self.dns_domain.clone()))?;
            let listen = crate::dns::parse_listen(&self.dns_listen_address)
                .filter(|a| a.is_ipv4())
                .ok_or_else(|| ConfigError::DnsListen(self.dns_listen_address.clone()))?;
            Some(crate::dns::DnsConfig {
                listen,
                domain,
                ttl: self.dns_ttl,
                resolv_conf: self.resolv_conf.clone(),
            })
        };
        let docker = if self.no_docker {
            None
        } else {
            let path = crate::docker::client::socket_path(&self.docker_host)
                .map_err(|_| ConfigError::DockerHost(self.docker_host.clone()))?;
            Some(crate::docker::DockerSettings {
                host: format!("unix://{}", path.display()),
                proxy_socket: (!self.no_proxy).then(|| {
                    std::path::absolute(&self.proxy_socket)
                        .unwrap_or_else(|_| self.proxy_socket.clone())
                }),
                plugin_socket: self
                    .plugin_socket
                    .as_ref()
                    .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
            })
        };
        let ipam = self.ipam_config(unique.len())?;
        let password = self.password()?;
        Ok(Config {
            name,
            nickname,
            iface,
            host,
            port: self.port,
            mtu: self.mtu,
            // Absolute, so the daemon and the command that launched it agree on it.
            state_dir: std::path::absolute(&self.state_dir)
                .unwrap_or_else(|_| self.state_dir.clone()),
            http_addr,
            xdp: self.xdp,
            log_kernel: self.log_kernel,
            targets: unique,
            resume: self.resume,
            discovery: !self.no_discovery,
            conn_limit: match self.conn_limit {
                0 => usize::MAX,
                n => n,
            },
            log_level,
            init_peer_count: self.init_peer_count,
            ipam,
            foreground: self.foreground,
            fake_datapath: self.fake_datapath,
            pin_root: self.pin_root.clone(),
            dns,
            sleeve: password.is_some() || self.datapath == DatapathMode::Sleeve || self.no_fastdp,
            trusted_subnets: self.trusted_subnets.clone(),
            password,
            docker,
        })
    }

    /// The password, from the file when one is named, else from the flag or environment.
    fn password(&self) -> Result<Option<crate::crypto::password::Password>, ConfigError> {
        use crate::crypto::password::Password;
        if let Some(path) = &self.password_file {
            let shown = path.display().to_string();
            let bytes = std::fs::read(path).map_err(|e| ConfigError::PasswordFile {
                path: shown.clone(),
                error: e.to_string(),
            })?;
            return Password::from_file_content(bytes)
                .map(Some)
                .map_err(|e| ConfigError::PasswordFileContent(shown, e));
        }
        self.password
            .as_ref()
            .map(|p| Password::new(p.as_bytes().to_vec()).map_err(ConfigError::Password))
            .transpose()
    }
}

impl LaunchArgs {
    fn ipam_config(&self, targets: usize) -> Result<IpamConfig, ConfigError> {
        use crate::ipam::consensus::InitMode;
        use crate::net::Ipv4Net;
        let range: Ipv4Net = self
            .ipalloc_range
            .parse()
            .map_err(ConfigError::IpallocRange)?;
        let default_subnet = match &self.ipalloc_default_subnet {
            Some(s) => s
                .parse::<Ipv4Net>()
                .map_err(ConfigError::IpallocDefaultSubnet)?,
            None => range,
        };
        if !range.contains_cidr(default_subnet) {
            return Err(ConfigError::DefaultSubnetOutsideRange {
                subnet: default_subnet.to_string(),
                range: range.to_string(),
            });
        }
        let init = match (&self.ipalloc_init, self.init_peer_count) {
            (None, None) => InitMode::Consensus(None),
            (None, Some(n)) => InitMode::Consensus(Some(n as usize)),
            (Some(s), count) => {
                let mode: InitMode = s.parse()?;
                match (&mode, count) {
                    (_, None) => {}
                    (InitMode::Consensus(None), Some(n)) => {
                        return Ok(self.ipam_with(
                            range,
                            default_subnet,
                            InitMode::Consensus(Some(n as usize)),
                            targets,
                        ))
                    }
                    (InitMode::Consensus(Some(m)), Some(n)) if *m == n as usize => {}
                    (_, Some(n)) => {
                        return Err(ConfigError::InitConflict {
                            count: n,
                            init: s.clone(),
                        })
                    }
                }
                mode
            }
        };
        Ok(self.ipam_with(range, default_subnet, init, targets))
    }

    fn ipam_with(
        &self,
        range: crate::net::Ipv4Net,
        default_subnet: crate::net::Ipv4Net,
        init: crate::ipam::consensus::InitMode,
        targets: usize,
    ) -> IpamConfig {
        IpamConfig {
            range,
            default_subnet,
            init,
            expected_peers: targets + 1,
        }
    }
}

/// The machine this runs on, in the current network namespace.
pub struct RealHost;

impl HostInfo for RealHost {
    fn hostname(&self) -> Option<String> {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn interfaces(&self) -> Vec<Interface> {
        let mut out: Vec<Interface> = Vec::new();
        let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `ifap` with a list we free below with freeifaddrs.
        if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
            return out;
        }
        let mut cur = ifap;
        while !cur.is_null() {
            // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
            let ifa = unsafe { &*cur };
            cur = ifa.ifa_next;
            if ifa.ifa_name.is_null() {
                continue;
            }
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned();
            let flags = ifa.ifa_flags;
            let entry = match out.iter_mut().position(|i| i.name == name) {
                Some(p) => &mut out[p],
                None => {
                    out.push(Interface {
                        name,
                        up: flags & libc::IFF_UP as u32 != 0,
                        loopback: flags & libc::IFF_LOOPBACK as u32 != 0,
                        ipv4: Vec::new(),
                    });
                    out.last_mut().expect("just pushed")
                }
            };
            let is_inet = !ifa.ifa_addr.is_null()
                // SAFETY: when non-null, ifa_addr points to a sockaddr whose family tells its type.
                && unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_INET;
            if is_inet {
                // SAFETY: the family is AF_INET, so it is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                entry
                    .ipv4
                    .push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
        }
        // SAFETY: frees the list getifaddrs allocated; no reference into it outlives this.
        unsafe { libc::freeifaddrs(ifap) };
        out
    }

    fn route_iface(&self, dst: Ipv4Addr) -> Option<String> {
        let table = std::fs::read_to_string("/proc/net/route").ok()?;
        crate::net::route_iface(&table, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    struct FakeHost {
        default: Option<&'static str>,
        /// A route more specific than the default one: (an address it covers, device).
        route: Option<(Ipv4Addr, &'static str)>,
        interfaces: Vec<Interface>,
    }

    impl HostInfo for FakeHost {
        fn hostname(&self) -> Option<String> {
            Some("host1.example.com".into())
        }
        fn interfaces(&self) -> Vec<Interface> {
            self.interfaces.clone()
        }
        fn route_iface(&self, dst: Ipv4Addr) -> Option<String> {
            match self.route {
                Some((addr, dev)) if addr == dst => Some(dev.to_string()),
                _ => self.default.map(str::to_string),
            }
        }
    }

    fn iface(name: &str, up: bool, addr: Option<[u8; 4]>) -> Interface {
        Interface {
            name: name.into(),
            up,
            loopback: name == "lo",
            ipv4: addr.map(Ipv4Addr::from).into_iter().collect(),
        }
    }

    fn host() -> FakeHost {
        FakeHost {
            default: Some("eth0"),
            route: None,
            interfaces: vec![
                iface("lo", true, Some([127, 0, 0, 1])),
                iface("eth0", true, Some([10, 0, 0, 1])),
                iface("eth1", true, None),
            ],
        }
    }

    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        launch: LaunchArgs,
    }

    fn parse(args: &[&str]) -> LaunchArgs {
        Cmd::try_parse_from(std::iter::once("launch").chain(args.iter().copied()))
            .unwrap()
            .launch
    }

    #[test]
    fn a_password_comes_from_the_flag_or_a_file_and_brings_the_sleeve() {
        use crate::crypto::password::Password;
        let c = parse(&["--datapath", "sleeve"]).validate(&host()).unwrap();
        assert!(c.sleeve && c.password.is_none());
        let c = parse(&["--password", "pw"]).validate(&host()).unwrap();
        assert_eq!(c.password, Some(Password::new(b"pw".to_vec()).unwrap()));
        assert!(c.sleeve);
        let dir = std::env::temp_dir().join(format!("cx-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "from file\n").unwrap();
        let f = file.to_str().unwrap();
        // The file wins over the flag.
        let c = parse(&["--password", "pw", "--password-file", f])
            .validate(&host())
            .unwrap();
        assert_eq!(
            c.password,
            Some(Password::new(b"from file".to_vec()).unwrap())
        );
        std::fs::write(&file, "\n").unwrap();
        let e = parse(&["--password-file", f])
            .validate(&host())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("--password-file {f}: the password is empty")
        );
        let missing = dir.join("missing");
        let m = missing.to_str().unwrap();
        let e = parse(&["--password-file", m])
            .validate(&host())
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("--password-file {m}: cannot read it: ")),
            "{e}"
        );
        let e = parse(&["--password", ""]).validate(&host()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--password (or WEAVE_PASSWORD): the password is empty"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn defaults_come_from_the_machine() {
        let c = parse(&[]).validate(&host()).unwrap();
        assert_eq!(c.iface, "eth0");
        assert_eq!(c.host, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(c.nickname, "host1");
        assert_eq!(c.port, 6783);
        assert_eq!(c.http_addr, "127.0.0.1:6784".parse().unwrap());
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/weave-router"));
        let rel = parse(&["--state-dir", "some/dir"])
            .validate(&host())
            .unwrap();
        assert_eq!(
            rel.state_dir,
            std::env::current_dir().unwrap().join("some/dir")
        );
        assert_eq!(c.listen_addr(), "10.0.0.1:6783".parse().unwrap());
        assert_eq!(c.xdp, XdpMode::Auto);
        assert!(c.targets.is_empty() && c.name.is_none() && !c.foreground);
        let dns = c.dns.expect("DNS on by default");
        assert_eq!(dns.listen, "169.254.53.53:53".parse().unwrap());
        assert_eq!((dns.domain.as_str(), dns.ttl), ("weave.local.", 1));
        assert_eq!(dns.resolv_conf, PathBuf::from("/etc/resolv.conf"));
        assert!(parse(&["--no-dns"])
            .validate(&host())
            .unwrap()
            .dns
            .is_none());
        let d = parse(&[
            "--dns-domain",
            "Corp.Example",
            "--dns-listen-address",
            "10.0.0.1",
        ])
        .validate(&host())
        .unwrap()
        .dns
        .unwrap();
        assert_eq!(
            (d.domain.as_str(), d.listen),
            ("corp.example.", "10.0.0.1:53".parse().unwrap())
        );
    }

    #[test]
    fn peers_come_from_arguments_and_the_list() {
        let c = parse(&[
            "10.0.0.2",
            "host3:7000",
            "--peers",
            "10.0.0.4,10.0.0.2:6783",
        ])
        .validate(&host())
        .unwrap();
        let t: Vec<String> = c.targets.iter().map(ToString::to_string).collect();
        assert_eq!(t, ["10.0.0.2:6783", "host3:7000", "10.0.0.4:6783"]);
    }

    #[test]
    fn everything_can_be_given() {
        let c = parse(&[
            "--name",
            "0a:00:00:00:00:01",
            "--nickname",
            "n1",
            "--iface",
            "eth1",
            "--host",
            "192.168.1.1",
            "--port",
            "7000",
            "--mtu",
            "1400",
            "--state-dir",
            "/tmp/s",
            "--http-addr",
            "127.0.0.1:7001",
            "--xdp",
            "off",
            "--foreground",
        ])
        .validate(&host())
        .unwrap();
        assert_eq!(c.name, Some("0a:00:00:00:00:01".parse().unwrap()));
        assert_eq!(
            (c.iface.as_str(), c.host, c.port, c.mtu),
            ("eth1", Ipv4Addr::new(192, 168, 1, 1), 7000, Some(1400))
        );
        assert_eq!(c.xdp, XdpMode::Off);
        assert!(c.foreground);
    }

    #[test]
    fn ip_allocation_flags() {
        use crate::ipam::consensus::InitMode;
        let c = parse(&["10.0.0.2", "10.0.0.3"]).validate(&host()).unwrap();
        assert_eq!(c.ipam.range.to_string(), "10.32.0.0/12");
        assert_eq!(c.ipam.default_subnet, c.ipam.range);
        assert_eq!(
            (c.ipam.init.clone(), c.ipam.expected_peers),
            (InitMode::Consensus(None), 3)
        );
        let c = parse(&[
            "--ipalloc-range",
            "10.2.0.0/16",
            "--ipalloc-default-subnet",
            "10.2.1.0/24",
            "--init-peer-count",
            "2",
        ])
        .validate(&host())
        .unwrap();
        assert_eq!(c.ipam.default_subnet.to_string(), "10.2.1.0/24");
        assert_eq!(c.ipam.init, InitMode::Consensus(Some(2)));
        let c = parse(&["--ipalloc-init", "observer"])
            .validate(&host())
            .unwrap();
        assert_eq!(c.ipam.init, InitMode::Observer);
        let c = parse(&["--ipalloc-init", "consensus", "--init-peer-count", "5"])
            .validate(&host())
            .unwrap();
        assert_eq!(c.ipam.init, InitMode::Consensus(Some(5)));
    }

    #[test]
    fn without_default_route_the_only_up_interface_is_taken() {
        let mut h = host();
        h.default = None;
        h.interfaces.retain(|i| i.name != "eth1");
        assert_eq!(parse(&[]).validate(&h).unwrap().iface, "eth0");
        h.interfaces.push(iface("eth2", true, Some([10, 1, 0, 1])));
        let e = parse(&[]).validate(&h).unwrap_err();
        assert_eq!(e.to_string(), "cannot tell the underlay interface (no default route and several interfaces are up: eth0, eth2); name it with --iface");
    }

    #[test]
    fn the_routers_own_devices_and_interfaces_without_address_are_never_the_underlay() {
        let mut h = host();
        h.default = None;
        h.interfaces.retain(|i| i.name != "eth1");
        // What a stopped router leaves behind, and an interface with no IPv4 address.
        for name in [
            "weave",
            "vethwe-bridge",
            "vethwe-datapath",
            "vethwe-sleeve",
            "vethwepl123",
        ] {
            h.interfaces.push(iface(name, true, None));
        }
        h.interfaces
            .push(iface("vethwe-exposed", true, Some([10, 32, 0, 1])));
        h.interfaces.push(iface("eth2", true, None));
        assert_eq!(parse(&[]).validate(&h).unwrap().iface, "eth0");
        // A default route through the bridge (an exposed address) is not the underlay's.
        h.default = Some("weave");
        assert_eq!(parse(&[]).validate(&h).unwrap().iface, "eth0");
    }

    #[test]
    fn the_route_to_the_first_peer_names_the_underlay() {
        let mut h = host();
        h.interfaces
            .push(iface("eth2", true, Some([192, 168, 12, 1])));
        h.route = Some((Ipv4Addr::new(192, 168, 11, 1), "eth2"));
        assert_eq!(parse(&["192.168.11.1"]).validate(&h).unwrap().iface, "eth2");
        assert_eq!(
            parse(&["192.168.11.1"]).validate(&h).unwrap().host,
            Ipv4Addr::new(192, 168, 12, 1)
        );
        assert_eq!(
            parse(&["10.9.9.9"]).validate(&h).unwrap().iface,
            "eth0",
            "the default route's"
        );
        assert_eq!(
            parse(&["peer.example"]).validate(&h).unwrap().iface,
            "eth0",
            "a name is not looked up"
        );
    }

    #[test]
    fn bad_input_gives_one_clear_line() {
        let cases: &[(&[&str], &str)] = &[
            (&["--name", "0a:00"], "--name: peer name \"0a:00\" is not six colon-separated hex bytes (like 0a:00:00:00:00:01)"),
            (&["host:99999"], "peer \"host:99999\" is not a host or host:port (like 10.0.0.2 or host2:6783)"),
            (&["--host", "10.0.0"], "--host \"10.0.0\" is not an IPv4 address"),
            (&["--iface", "nope0"], "network interface \"nope0\" does not exist"),
            (&["--iface", "eth1"], "interface eth1 has no IPv4 address; give one with --host"),
            (&["--mtu", "100"], "--mtu 100 is out of range (576..=65485)"),
            (&["--http-addr", "localhost"], "--http-addr \"localhost\" is not an address with a port (like 127.0.0.1:6784)"),
            (&["--nickname", "a b"], "--nickname \"a b\": use 1 to 63 letters, digits, '.', '-' or '_'"),
            (&["--port", "0"], "--port 0 is not a port"),
            (&["--dns-domain", "a..b"], "--dns-domain \"a..b\" is not a domain name (like weave.local.)"),
            (&["--dns-listen-address", "::1"], "--dns-listen-address \"::1\" is not an IPv4 address, optionally with a port (like 169.254.53.53 or 10.0.0.1:53)"),
            (&["--ipalloc-range", "10.2.0.0/33"], "--ipalloc-range \"10.2.0.0/33\": the prefix length must be 0..=32"),
            (&["--ipalloc-range", "10.2.0.0/16", "--ipalloc-default-subnet", "10.3.0.0/24"], "--ipalloc-default-subnet 10.3.0.0/24 is not inside --ipalloc-range 10.2.0.0/16"),
            (&["--ipalloc-init", "consensus=0"], "--ipalloc-init \"consensus=0\": N must be a whole number of at least 1"),
            (&["--ipalloc-init", "consensus=3", "--init-peer-count", "2"], "--init-peer-count 2 contradicts --ipalloc-init consensus=3"),
            (&["--resume", "10.0.0.2"], "--resume dials the peers stored in the state directory: give no peers with it (or leave --resume out)"),
            (&["--log-level", "loud"], "--log-level \"loud\": use debug, info, warning or error"),
        ];
        for (args, message) in cases {
            let e = parse(args).validate(&host()).unwrap_err();
            assert_eq!(e.to_string(), *message, "{args:?}");
        }
    }

    #[test]
    fn weaves_spellings_are_understood() {
        let c = parse(&["--conn-limit", "0"]).validate(&host()).unwrap();
        assert_eq!(c.conn_limit, usize::MAX, "0 is no limit");
        assert_eq!(parse(&[]).validate(&host()).unwrap().conn_limit, 200);
        let c = parse(&["--no-fastdp"]).validate(&host()).unwrap();
        assert!(c.sleeve && c.password.is_none());
        assert!(!parse(&[]).validate(&host()).unwrap().sleeve);
        for (given, filter) in [("debug", "debug"), ("warning", "warn"), ("ERROR", "error")] {
            let c = parse(&["--log-level", given]).validate(&host()).unwrap();
            assert_eq!(c.log_level.as_deref(), Some(filter));
        }
        let c = parse(&["--resume"]).validate(&host()).unwrap();
        assert!(c.resume && c.targets.is_empty());
    }

    #[test]
    fn the_real_machine_has_a_loopback() {
        let ifs = RealHost.interfaces();
        let lo = ifs.iter().find(|i| i.loopback).expect("lo");
        assert!(lo.ipv4.contains(&Ipv4Addr::LOCALHOST));
    }
}
