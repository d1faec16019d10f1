//! The `weave-router` command line: `launch` runs the router, every other command talks to a
//! running one through its HTTP API, on the API's unix socket (`@weave-router/<http-addr>`,
//! see [`crate::api::access`]).

pub mod client;
pub mod daemon;
pub mod launch;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::api::{AttachBody, DetachBody, EndpointView};
use crate::config::{LaunchArgs, RealHost, DEFAULT_HTTP_ADDR, HTTP_ADDR_ENV};

#[derive(Parser, Debug)]
#[command(
    name = "weave-router",
    version,
    about = "A Weave Net compatible overlay router with an eBPF data path"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where a client command finds the router.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// Address of the router's HTTP API (the CLI talks to its unix socket,
    /// @weave-router/ADDR, in the same network namespace).
    #[arg(long, value_name = "ADDR", env = HTTP_ADDR_ENV, default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: String,
}

impl ApiArgs {
    fn addr(&self) -> anyhow::Result<client::ApiAddr> {
        let tcp = self.http_addr.parse().map_err(|_| {
            anyhow::anyhow!(
                "--http-addr {:?} is not an address with a port (like 127.0.0.1:6784)",
                self.http_addr
            )
        })?;
        Ok(client::ApiAddr::socket_of(tcp))
    }
}

#[derive(Subcommand, Debug)]
// Parsed once per run: the size of the launch arguments does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Start the router (in the background unless --foreground).
    Launch(LaunchArgs),
    /// Stop the running router and remove its data path (with --keep-datapath: stop the
    /// process only, leaving the kernel data path carrying traffic for the next launch).
    Stop {
        /// Stop the process only (an upgrade): programs, maps, links and the bridge stay,
        /// and the next `launch` with the same state dir adopts them without a gap.
        #[arg(long)]
        keep_datapath: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show the router's status, its connections, peers or targets.
    Status {
        #[arg(value_enum)]
        what: Option<StatusPart>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the router's state as JSON.
    Report(ApiArgs),
    /// Give a network namespace (--netns) or a running Docker container an `ethwe` interface
    /// on the weave bridge: attach [ADDR...] CONTAINER, or attach [ADDR...] --netns PATH.
    Attach {
        /// Addresses: net:default (what none means), net:CIDR (allocated in that subnet),
        /// ip:CIDR or CIDR (that address, like 10.2.1.1/24); then the container (name or
        /// ID) unless --netns is given.
        #[arg(value_name = "ADDR")]
        addresses: Vec<String>,
        /// The network namespace (like /run/netns/c1 or /proc/<pid>/ns/net).
        #[arg(long, value_name = "PATH")]
        netns: Option<PathBuf>,
        /// Register NAME in the DNS domain (NAME.weave.local.) for the addresses.
        #[arg(long, value_name = "NAME")]
        hostname: Option<String>,
        /// Register no name in the DNS domain (a container's name is registered otherwise).
        #[arg(long, conflicts_with = "hostname")]
        without_dns: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Dial more peers (host or host:port); with --replace they become the only targets.
    Connect {
        #[arg(long)]
        replace: bool,
        #[arg(value_name = "PEER")]
        peers: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop dialling peers (connections already up stay up).
    Forget {
        #[arg(value_name = "PEER", required = true)]
        peers: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Take over the IP space of dead peers, named by peer name or nickname.
    Rmpeer {
        #[arg(value_name = "PEER", required = true)]
        peers: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the attached network namespaces (Docker containers by short ID) with their MAC
    /// and addresses; only those named (container ID or prefix, or namespace path) when
    /// some are.
    Ps {
        #[arg(value_name = "CONTAINER")]
        containers: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Give this host an address on the weave network (net:default when none is given) and
    /// masquerade that subnet's traffic to the outside; -h registers the host's name.
    #[command(disable_help_flag = true)]
    Expose {
        #[arg(value_name = "ADDR")]
        addresses: Vec<String>,
        /// Register this name (FQDN or NAME) in the DNS domain for the exposed addresses.
        #[arg(short = 'h', long = "hostname", value_name = "FQDN")]
        hostname: Option<String>,
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Take the addresses `expose` gave this host away (only those given, when some are).
    Hide {
        #[arg(value_name = "ADDR")]
        addresses: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Detach everything, hand this router's IP space to a reachable peer, forget the IP
    /// allocation state and stop. With --force, a step that fails does not stop the reset,
    /// and a router that does not answer has its stored state removed from --state-dir.
    Reset {
        #[arg(long)]
        force: bool,
        /// The state directory to clear when the router does not answer (with --force).
        #[arg(long, value_name = "DIR", default_value = crate::config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Take the `ethwe` interface of a Docker container (by name or ID) or of a network
    /// namespace (--netns) away, with its addresses and names.
    Detach {
        #[arg(
            value_name = "CONTAINER",
            required_unless_present = "netns",
            conflicts_with = "netns"
        )]
        container: Option<String>,
        #[arg(long, value_name = "PATH")]
        netns: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Register a name in the DNS domain for addresses: dns-add ADDR... [CONTAINER] -h NAME.
    #[command(name = "dns-add", disable_help_flag = true)]
    DnsAdd {
        /// The addresses, then whose name it is (a container ID, default weave:extern).
        #[arg(value_name = "ADDR", required = true)]
        addresses: Vec<String>,
        /// The name (NAME or NAME.weave.local.).
        #[arg(short = 'h', long = "hostname", value_name = "FQDN")]
        hostname: String,
        /// Whose name it is (default: weave:extern).
        #[arg(long, value_name = "ID")]
        container: Option<String>,
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove names: of these addresses, of this name (-h), of a container (the last word
    /// or --container).
    #[command(name = "dns-remove", disable_help_flag = true)]
    DnsRemove {
        #[arg(value_name = "ADDR")]
        addresses: Vec<String>,
        #[arg(short = 'h', long = "hostname", value_name = "FQDN")]
        hostname: Option<String>,
        #[arg(long, value_name = "ID")]
        container: Option<String>,
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the addresses registered for a name.
    #[command(name = "dns-lookup")]
    DnsLookup {
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the resolver settings a container needs (--dns=IP --dns-search=DOMAIN).
    #[command(name = "dns-args")]
    DnsArgs(ApiArgs),
    /// Print the shell commands that point the docker CLI at the router's Docker proxy:
    /// eval $(weave-router env); with --restore, back at the daemon.
    Env {
        #[arg(long)]
        restore: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the docker CLI option that goes through the router's Docker proxy
    /// (docker $(weave-router config) run ...).
    Config(ApiArgs),
    /// Install the CNI plugin (this program, as weave-net) and the `weave` network
    /// configuration (weave-net, then portmap) for container runtimes.
    #[command(name = "setup-cni")]
    SetupCni {
        #[arg(long, value_name = "DIR", default_value = crate::cni::install::DEFAULT_BIN_DIR)]
        bin_dir: PathBuf,
        #[arg(long, value_name = "DIR", default_value = crate::cni::install::DEFAULT_CONF_DIR)]
        conf_dir: PathBuf,
        /// The router's API address the plugin is to use (written in the configuration
        /// when it is not the default).
        #[arg(long, value_name = "ADDR", env = HTTP_ADDR_ENV, default_value = DEFAULT_HTTP_ADDR)]
        http_addr: String,
    },
    /// Print the version.
    Version,
    /// Print the shell completion script for SHELL (bash: source <(weave-router completions
    /// bash)).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff: weave-router man | man -l -).
    Man,
    /// Removed in Weave 2.0: `launch` starts the router, the proxy and the plugin.
    #[command(name = "launch-router", hide = true, disable_help_flag = true)]
    LaunchRouter {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Removed in Weave 2.0: `launch` starts the router, the proxy and the plugin.
    #[command(name = "launch-proxy", hide = true, disable_help_flag = true)]
    LaunchProxy {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Removed in Weave 2.0: `launch` starts the router, the proxy and the plugin.
    #[command(name = "launch-plugin", hide = true, disable_help_flag = true)]
    LaunchPlugin {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusPart {
    Connections,
    Peers,
    Targets,
    Dns,
    Ipam,
}

/// Parses the command line and runs the command. Errors are one line for the caller to print.
pub fn run() -> anyhow::Result<()> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            let text = e.render().to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("bad command line")
                .trim_start_matches("error: ")
                .to_string();
            bail!("{first} (see weave-router --help)");
        }
    };
    match cli.command {
        Command::Launch(args) => {
            let config = args.validate(&RealHost)?;
            if launch::password_on_command_line(std::env::args_os()) {
                eprintln!("weave-router: warning: --password on the command line is visible to every user of this host (ps); use --password-file FILE or WEAVE_PASSWORD");
            }
            // Only the password from the flag or the environment goes through the pipe; a
            // --password-file is read by the daemon itself.
            let piped = args
                .password
                .clone()
                .filter(|_| args.password_file.is_none());
            launch::scrub_password_from_cmdline();
            if config.foreground {
                daemon::run_foreground(config)
            } else {
                launch::launch_background(&config, piped.as_deref())
            }
        }
        Command::Stop { api, keep_datapath } => stop(api.addr()?, keep_datapath),
        Command::Status { what, api } => {
            let path = match what {
                None => "/status",
                Some(StatusPart::Connections) => "/status/connections",
                Some(StatusPart::Peers) => "/status/peers",
                Some(StatusPart::Targets) => "/status/targets",
                Some(StatusPart::Dns) => "/status/dns",
                Some(StatusPart::Ipam) => "/status/ipam",
            };
            print!("{}", get(api.addr()?, path)?);
            Ok(())
        }
        Command::Report(api) => {
            print!("{}", get(api.addr()?, "/report")?);
            Ok(())
        }
        Command::Attach {
            mut addresses,
            netns,
            hostname,
            without_dns,
            api,
        } => {
            let Some(netns) = netns else {
                let container = attach_container(&mut addresses)?;
                crate::ipam::spec::parse_all(&addresses)?;
                let body = serde_json::to_string(&crate::api::docker::ContainerBody {
                    container,
                    addresses,
                    without_dns,
                })?;
                let e: EndpointView =
                    serde_json::from_str(&post(api.addr()?, "/docker/attach", &body)?)
                        .context("unexpected answer")?;
                println!("{} {}", e.mac, e.addresses.join(" "));
                return Ok(());
            };
            crate::ipam::spec::parse_all(&addresses)?;
            if let Some(h) = &hostname {
                crate::dns::records::normalise_name(h)?;
            }
            let netns = netns_path(&netns)?;
            let body = serde_json::to_string(&AttachBody {
                netns,
                addresses,
                hostname,
            })?;
            let e: EndpointView = serde_json::from_str(&post(api.addr()?, "/attach", &body)?)
                .context("unexpected answer")?;
            println!("{} {}", e.mac, e.addresses.join(" "));
            Ok(())
        }
        Command::Rmpeer { peers, api } => {
            for peer in peers {
                let body = serde_json::to_string(&crate::api::ipam::RmpeerBody { peer })?;
                print!("{}", post(api.addr()?, "/rmpeer", &body)?);
            }
            Ok(())
        }
        Command::Expose {
            addresses,
            hostname,
            api,
            ..
        } => {
            crate::ipam::spec::parse_all(&addresses)?;
            if let Some(h) = &hostname {
                crate::dns::records::normalise_name(h)?;
            }
            let body = serde_json::to_string(&crate::api::ipam::ExposeBody {
                addresses,
                hostname,
            })?;
            print!("{}", post(api.addr()?, "/expose", &body)?);
            Ok(())
        }
        Command::Hide { addresses, api } => {
            let addresses = addresses
                .iter()
                .map(|a| hide_address(a))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let body = serde_json::to_string(&crate::api::ipam::HideBody { addresses })?;
            print!("{}", post(api.addr()?, "/hide", &body)?);
            Ok(())
        }
        Command::Reset {
            force,
            state_dir,
            api,
        } => reset(api.addr()?, force, &state_dir),
        Command::Ps { containers, api } => {
            let listing = get(api.addr()?, "/ps")?;
            let wanted: Vec<String> = containers
                .iter()
                .map(|c| {
                    if c.contains('/') {
                        std::path::absolute(c)
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|_| c.clone())
                    } else {
                        c.clone()
                    }
                })
                .collect();
            print!("{}", ps_lines(&listing, &wanted));
            Ok(())
        }
        Command::LaunchRouter { .. }
        | Command::LaunchProxy { .. }
        | Command::LaunchPlugin { .. } => {
            bail!("this command was removed in Weave 2.0: `weave-router launch` starts the router with its proxy and plugin")
        }
        Command::Detach {
            container,
            netns,
            api,
        } => {
            let Some(netns) = netns else {
                let body = serde_json::to_string(&crate::api::docker::ContainerBody {
                    container: container.unwrap_or_default(),
                    addresses: Vec::new(),
                    without_dns: false,
                })?;
                post(api.addr()?, "/docker/detach", &body)?;
                return Ok(());
            };
            let netns = netns_path(&netns)?;
            let body = serde_json::to_string(&DetachBody { netns })?;
            post(api.addr()?, "/detach", &body)?;
            Ok(())
        }
        Command::Connect {
            replace,
            peers,
            api,
        } => {
            check_targets(&peers)?;
            let body = serde_json::to_string(&crate::api::PeersBody { peers, replace })?;
            post(api.addr()?, "/connect", &body)?;
            Ok(())
        }
        Command::Forget { peers, api } => {
            check_targets(&peers)?;
            let body = serde_json::to_string(&crate::api::PeersBody {
                peers,
                replace: false,
            })?;
            post(api.addr()?, "/forget", &body)?;
            Ok(())
        }
        Command::DnsAdd {
            mut addresses,
            hostname,
            container,
            api,
            ..
        } => {
            let container = dns_container(&mut addresses, container)?;
            if addresses.is_empty() {
                bail!("give the addresses to register: dns-add ADDR... [CONTAINER] -h NAME");
            }
            check_ipv4(&addresses)?;
            crate::dns::records::normalise_name(&hostname)?;
            let body = serde_json::to_string(&crate::api::DnsBody {
                container,
                addresses,
                hostname: Some(hostname),
            })?;
            post(api.addr()?, "/dns/add", &body)?;
            Ok(())
        }
        Command::DnsRemove {
            mut addresses,
            hostname,
            container,
            api,
            ..
        } => {
            let container = dns_container(&mut addresses, container)?;
            check_ipv4(&addresses)?;
            if addresses.is_empty() && hostname.is_none() && container.is_none() {
                bail!("say what to remove: addresses, -h NAME or --container ID");
            }
            let body = serde_json::to_string(&crate::api::DnsBody {
                container,
                addresses,
                hostname,
            })?;
            post(api.addr()?, "/dns/remove", &body)?;
            Ok(())
        }
        Command::DnsLookup { name, api } => {
            crate::dns::records::normalise_name(&name)?;
            print!("{}", get(api.addr()?, &format!("/dns/lookup/{name}"))?);
            Ok(())
        }
        Command::DnsArgs(api) => {
            let info: crate::dns::DnsInfo =
                serde_json::from_str(&get(api.addr()?, "/dns")?).context("unexpected answer")?;
            println!("{}", crate::dns::dns_args(&info));
            Ok(())
        }
        Command::Env { restore, api } => {
            let info = docker_info(&api)?;
            if restore {
                println!("export DOCKER_HOST={}", info.docker_host);
                return Ok(());
            }
            let proxy = info
                .proxy
                .ok_or_else(|| anyhow::anyhow!("the router runs no Docker proxy (--no-proxy)"))?;
            println!("export DOCKER_HOST={proxy}");
            Ok(())
        }
        Command::Config(api) => {
            let proxy = docker_info(&api)?
                .proxy
                .ok_or_else(|| anyhow::anyhow!("the router runs no Docker proxy (--no-proxy)"))?;
            println!("-H={proxy}");
            Ok(())
        }
        Command::SetupCni {
            bin_dir,
            conf_dir,
            http_addr,
        } => {
            http_addr.parse::<std::net::SocketAddr>().map_err(|_| {
                anyhow::anyhow!(
                    "--http-addr {http_addr:?} is not an address with a port (like 127.0.0.1:6784)"
                )
            })?;
            let api = (http_addr != DEFAULT_HTTP_ADDR).then_some(http_addr.as_str());
            let (plugin, conf) = crate::cni::install::install(&bin_dir, &conf_dir, api)?;
            println!("{}\n{}", plugin.display(), conf.display());
            Ok(())
        }
        Command::Version => {
            println!("weave-router {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "weave-router", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("cannot write the manual page")
        }
    }
}

/// The container of `dns-add`/`dns-remove`: the last word when it is not an address
/// (Weave's `dns-add IP... CONTAINER`), or `--container`, not both. A word of digits and
/// dots is meant as an address (a mistyped one is reported as such, not taken for a
/// container).
fn dns_container(words: &mut Vec<String>, flag: Option<String>) -> anyhow::Result<Option<String>> {
    let meant_as_address =
        |w: &str| w.contains('.') && w.chars().all(|c| c.is_ascii_digit() || c == '.');
    let positional = match words.last() {
        Some(w) if !meant_as_address(w) => words.pop(),
        _ => None,
    };
    match (positional, flag) {
        (Some(p), Some(f)) => bail!("the container is given twice ({p} and --container {f})"),
        (p, f) => Ok(p.or(f)),
    }
}

/// An address of `hide`: an IPv4 address or CIDR (the prefix length is not needed).
fn hide_address(a: &str) -> anyhow::Result<std::net::Ipv4Addr> {
    let ip = a.split_once('/').map_or(a, |(ip, _)| ip);
    ip.parse()
        .map_err(|_| anyhow::anyhow!("{a:?} is not an IPv4 address (like 10.2.1.5 or 10.2.1.5/24)"))
}

/// The lines of `ps` whose first column (a container's short ID or a namespace path) one
/// of `wanted` names: the same, or a prefix of the ID either way. All when none is wanted.
fn ps_lines(listing: &str, wanted: &[String]) -> String {
    listing
        .lines()
        .filter(|l| {
            let who = l.split_whitespace().next().unwrap_or_default();
            wanted.is_empty()
                || wanted.iter().any(|w| {
                    who == w
                        || (!w.contains('/') && (who.starts_with(w.as_str()) || w.starts_with(who)))
                })
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `reset`: the router resets itself; with `force`, failed steps are passed over, and a
/// router that does not answer has the stored state in `state_dir` removed instead.
fn reset(addr: client::ApiAddr, force: bool, state_dir: &Path) -> anyhow::Result<()> {
    let body = serde_json::to_string(&crate::api::ipam::ResetBody { force })?;
    match client::request(addr, "POST", "/reset", Some(&body), Duration::from_secs(60)) {
        Ok(r) if r.ok() => {
            print!("{}", r.body);
            Ok(())
        }
        Ok(r) => bail!("{}", r.body.trim()),
        Err(e @ client::ClientError::Unreachable { .. }) if force => {
            let removed = crate::state::remove_stored_state(state_dir)
                .with_context(|| format!("{e}; and cannot clear {}", state_dir.display()))?;
            println!(
                "the router does not answer: removed {} from {}",
                if removed.is_empty() {
                    "nothing".to_string()
                } else {
                    removed.join(", ")
                },
                state_dir.display()
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Takes the container (the last word) off the words of `attach` without --netns.
fn attach_container(words: &mut Vec<String>) -> anyhow::Result<String> {
    match words.pop() {
        Some(c) if c.parse::<crate::ipam::spec::AddressSpec>().is_err() => Ok(c),
        _ => bail!("say which container to attach (or give --netns PATH)"),
    }
}

fn docker_info(api: &ApiArgs) -> anyhow::Result<crate::docker::DockerInfo> {
    serde_json::from_str(&get(api.addr()?, "/docker")?).context("unexpected answer")
}

/// A namespace path made absolute (the daemon runs elsewhere) and checked to exist.
/// Refuses a malformed peer before anything is sent.
fn check_targets(peers: &[String]) -> anyhow::Result<()> {
    for p in peers {
        p.parse::<crate::mesh::connection_maker::Target>()?;
    }
    Ok(())
}

/// Refuses anything but IPv4 addresses before anything is sent.
fn check_ipv4(addresses: &[String]) -> anyhow::Result<()> {
    for a in addresses {
        if a.parse::<std::net::Ipv4Addr>().is_err() {
            bail!("{a:?} is not an IPv4 address");
        }
    }
    Ok(())
}

fn netns_path(p: &Path) -> anyhow::Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    if !abs.exists() {
        bail!("network namespace {} does not exist", p.display());
    }
    Ok(abs)
}

fn call(
    addr: client::ApiAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<String> {
    let r = client::request(addr, method, path, body, Duration::from_secs(60))?;
    if !r.ok() {
        bail!("{}", r.body.trim());
    }
    Ok(r.body)
}

fn get(addr: client::ApiAddr, path: &str) -> anyhow::Result<String> {
    call(addr, "GET", path, None)
}

fn post(addr: client::ApiAddr, path: &str, body: &str) -> anyhow::Result<String> {
    call(addr, "POST", path, Some(body))
}

/// Asks the router to stop and waits (bounded) until its process is gone.
fn stop(addr: client::ApiAddr, keep_datapath: bool) -> anyhow::Result<()> {
    let path = if keep_datapath {
        "/stop?keep-datapath=true"
    } else {
        "/stop"
    };
    let answer = post(addr.clone(), path, "")?;
    let pid = serde_json::from_str::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| v["Pid"].as_u64())
        .map(|p| p as i32);
    // The API goes away last, then the process exits (and releases the state directory).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut unreachable_since: Option<Instant> = None;
    while Instant::now() < deadline {
        if client::request(addr.clone(), "GET", "/status", None, Duration::from_secs(1)).is_err() {
            let since = *unreachable_since.get_or_insert_with(Instant::now);
            // A pid from another PID namespace cannot be watched: give it a moment instead.
            if !pid.is_some_and(process_alive) || since.elapsed() > Duration::from_secs(2) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the router at {addr} did not stop within 20 s");
}

/// Whether a process exists and is not a zombie.
pub(crate) fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("weave-router").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn commands_parse_as_documented() {
        let Command::Launch(l) = parse(&[
            "launch",
            "10.0.0.2",
            "host3:7000",
            "--peers",
            "a,b",
            "--foreground",
            "--xdp",
            "off",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!((l.peer.len(), l.peers.len(), l.foreground), (2, 2, true));
        let Command::Status { what, .. } = parse(&["status", "connections"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!(what, Some(StatusPart::Connections));
        let Command::Status { what, api } = parse(&["status", "--http-addr", "127.0.0.1:9"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!((what, api.http_addr.as_str()), (None, "127.0.0.1:9"));
        let Command::Attach {
            addresses, netns, ..
        } = parse(&[
            "attach",
            "10.2.1.1/24",
            "10.2.1.2/24",
            "--netns",
            "/run/netns/c1",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(
            (addresses.len(), netns),
            (2, Some(PathBuf::from("/run/netns/c1")))
        );
        let Command::Attach {
            mut addresses,
            netns,
            ..
        } = parse(&["attach", "net:10.2.2.0/24", "w1"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!(netns, None);
        assert_eq!(attach_container(&mut addresses).unwrap(), "w1");
        assert_eq!(addresses, vec!["net:10.2.2.0/24".to_string()]);
        assert!(attach_container(&mut vec!["10.2.1.1/24".into()]).is_err());
        assert!(attach_container(&mut vec![]).is_err());
        assert!(matches!(
            parse(&["detach", "w1"]).unwrap().command,
            Command::Detach {
                container: Some(_),
                netns: None,
                ..
            }
        ));
        assert!(parse(&["detach"]).is_err());
        assert!(matches!(
            parse(&["env", "--restore"]).unwrap().command,
            Command::Env { restore: true, .. }
        ));
        assert!(matches!(
            parse(&["detach", "--netns", "/x"]).unwrap().command,
            Command::Detach { .. }
        ));
        assert!(matches!(
            parse(&["stop"]).unwrap().command,
            Command::Stop {
                keep_datapath: false,
                ..
            }
        ));
        assert!(matches!(
            parse(&["stop", "--keep-datapath"]).unwrap().command,
            Command::Stop {
                keep_datapath: true,
                ..
            }
        ));
        assert!(matches!(
            parse(&["report"]).unwrap().command,
            Command::Report(_)
        ));
        assert!(matches!(
            parse(&["version"]).unwrap().command,
            Command::Version
        ));
        assert!(matches!(
            parse(&["completions", "zsh"]).unwrap().command,
            Command::Completions {
                shell: clap_complete::Shell::Zsh
            }
        ));
        assert!(parse(&["completions", "tcsh"]).is_err());
        assert!(matches!(parse(&["man"]).unwrap().command, Command::Man));
        let Command::DnsAdd {
            addresses,
            hostname,
            ..
        } = parse(&["dns-add", "10.2.1.1", "10.2.1.2", "-h", "db"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!((addresses.len(), hostname.as_str()), (2, "db"));
        assert!(parse(&["dns-add", "10.2.1.1"]).is_err());
        assert!(matches!(
            parse(&["dns-remove", "-h", "db"]).unwrap().command,
            Command::DnsRemove { .. }
        ));
        assert!(matches!(
            parse(&["status", "dns"]).unwrap().command,
            Command::Status {
                what: Some(StatusPart::Dns),
                ..
            }
        ));
        let Command::Attach { hostname, .. } =
            parse(&["attach", "10.2.1.1/24", "--netns", "/x", "--hostname", "w1"])
                .unwrap()
                .command
        else {
            panic!()
        };
        assert_eq!(hostname.as_deref(), Some("w1"));
    }

    #[test]
    fn weaves_spellings_parse() {
        let Command::Rmpeer { peers, .. } = parse(&["rmpeer", "host2", "0a:00:00:00:00:03"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(peers, ["host2", "0a:00:00:00:00:03"]);
        assert!(parse(&["rmpeer"]).is_err());
        assert!(matches!(
            parse(&["reset", "--force"]).unwrap().command,
            Command::Reset { force: true, .. }
        ));
        let Command::Ps { containers, .. } = parse(&["ps", "abc", "def"]).unwrap().command else {
            panic!()
        };
        assert_eq!(containers, ["abc", "def"]);
        let Command::Hide { addresses, .. } = parse(&["hide", "10.2.1.5"]).unwrap().command else {
            panic!()
        };
        assert_eq!(addresses, ["10.2.1.5"]);
        let Command::Expose {
            addresses,
            hostname,
            ..
        } = parse(&["expose", "net:10.2.5.0/24", "-h", "host1.weave.local"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(
            (addresses.len(), hostname.as_deref()),
            (1, Some("host1.weave.local"))
        );
        let Command::Attach { without_dns, .. } =
            parse(&["attach", "--without-dns", "w1"]).unwrap().command
        else {
            panic!()
        };
        assert!(without_dns);
        let Command::DnsAdd {
            mut addresses,
            container,
            ..
        } = parse(&["dns-add", "10.2.1.1", "10.2.1.2", "c0ffee", "-h", "db"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(
            dns_container(&mut addresses, container).unwrap().as_deref(),
            Some("c0ffee")
        );
        assert_eq!(addresses, ["10.2.1.1", "10.2.1.2"]);
        let mut only_ips = vec!["10.2.1.1".to_string()];
        assert_eq!(
            dns_container(&mut only_ips, Some("x".into()))
                .unwrap()
                .as_deref(),
            Some("x")
        );
        assert!(dns_container(&mut vec!["10.2.1.1".into(), "c".into()], Some("x".into())).is_err());
        // A mistyped address stays an address (and is refused as one).
        let mut typo = vec!["10.2.1.300".to_string()];
        assert_eq!(dns_container(&mut typo, None).unwrap(), None);
        assert_eq!(typo, ["10.2.1.300"]);
        assert!(check_ipv4(&typo)
            .unwrap_err()
            .to_string()
            .contains("\"10.2.1.300\" is not an IPv4 address"));
        for removed in ["launch-router", "launch-proxy", "launch-plugin"] {
            assert!(parse(&[removed, "--ipalloc-range", "10.2.0.0/16", "peer"]).is_ok());
        }
    }

    #[test]
    fn ps_shows_only_the_containers_named() {
        let listing = "0123456789ab 02:00:00:00:00:01 10.2.1.1/24\n/run/netns/c2 02:00:00:00:00:02 10.2.1.2/24\n";
        assert_eq!(ps_lines(listing, &[]), listing);
        assert_eq!(
            ps_lines(listing, &["0123".into()]),
            "0123456789ab 02:00:00:00:00:01 10.2.1.1/24\n"
        );
        assert_eq!(
            ps_lines(listing, &["0123456789abcdef0123".into()]),
            "0123456789ab 02:00:00:00:00:01 10.2.1.1/24\n",
            "a full ID names its short one"
        );
        assert_eq!(
            ps_lines(listing, &["/run/netns/c2".into()]),
            "/run/netns/c2 02:00:00:00:00:02 10.2.1.2/24\n"
        );
        assert_eq!(
            ps_lines(listing, &["/run/netns/c".into(), "ffff".into()]),
            ""
        );
        assert_eq!(
            hide_address("10.2.1.5/24").unwrap(),
            std::net::Ipv4Addr::new(10, 2, 1, 5)
        );
        assert!(hide_address("net:default").is_err());
    }

    #[test]
    fn unknown_and_incomplete_commands_are_refused() {
        assert!(parse(&["frobnicate"]).is_err());
        assert!(parse(&["status", "bogus"]).is_err());
    }

    #[test]
    fn zombies_and_missing_processes_are_not_alive() {
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(i32::MAX));
    }
}
