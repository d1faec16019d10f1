//! A test bed: simulated hosts on a shared underlay, containers on the hosts.
//!
//! With prefix `p`, a bed of N hosts is made of the namespaces
//!
//! * `p-u`: the underlay, a bridge `br0` whose ports `h1`..`hN` are veth peers of the hosts;
//! * `p-h1`..`p-hN`: the hosts, each with `eth0` = 198.18.0.<i>/24 (a benchmarking range, used
//!   only inside these namespaces);
//! * `p-h<i><name>`: containers, e.g. `p-h1c1`;
//! * `p-<name>`: other nodes on the underlay (e.g. an intruder sending stray VXLAN).
//!
//! That is the flat underlay of [`TestBed::new`]; [`crate::underlay`] builds the others
//! (routed subnets, two routers, 1:1 NAT) out of the same pieces: segments (bridges in `p-u`),
//! hosts plugged into them, and nodes (`p-<name>`) that route between them.
//!
//! Everything is removed when the bed is dropped, also during a panic, and leftovers of an
//! earlier run with the same prefix are removed before a new bed is made. The underlay bridge
//! lives in its own namespace, so the root namespace (its firewall, br_netfilter) never sees
//! host-to-host traffic.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cmd::{self, Output};
use crate::error::{Error, Result};
use crate::netns::{self, Netns};
use crate::router::{self, LaunchOpts, Router};

/// The underlay address of host `i` (1-based) on the flat underlay.
pub fn host_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, i as u8)
}

/// Prefix length of the underlay.
pub const UNDERLAY_PREFIX_LEN: u8 = 24;

/// The bridge of the flat underlay, in the underlay namespace.
pub const FLAT_BRIDGE: &str = "br0";

/// The underlay interface of every host.
pub const HOST_IFACE: &str = "eth0";

/// One simulated host.
#[derive(Debug)]
pub struct Host {
    pub index: usize,
    /// Its own underlay address (on `eth0`).
    pub addr: Ipv4Addr,
    /// The address other hosts dial to reach it: [`Host::addr`], or the public address of a
    /// NAT in front of it.
    pub dial_addr: Ipv4Addr,
    /// What its router is launched with as `--iface` ([`HOST_IFACE`]); `None` leaves the
    /// choice to the router.
    pub iface: Option<String>,
    pub router: Option<Router>,
    pub ns: Netns,
}

impl Host {
    /// The router of this host; panics if none was launched.
    pub fn router(&self) -> &Router {
        self.router
            .as_ref()
            .expect("no router launched on this host")
    }

    pub fn nickname(&self) -> String {
        format!("host{}", self.index)
    }
}

/// One container: a namespace on a host.
#[derive(Debug)]
pub struct Container {
    /// Short name, e.g. `c1`.
    pub name: String,
    /// Index of its host (1-based).
    pub host: usize,
    /// Its address with prefix length, once attached.
    pub cidr: Option<String>,
    pub ns: Netns,
}

impl Container {
    /// Its address without the prefix length, once attached.
    pub fn ip(&self) -> Option<&str> {
        self.cidr
            .as_deref()
            .map(|c| c.split('/').next().unwrap_or(c))
    }

    /// `ping -c <count> -W 1 <addr>` inside; a failed ping is not an error.
    pub fn ping(&self, addr: &str, count: u32) -> Result<Output> {
        self.ns.run_timeout(
            &[
                "ping",
                "-n",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                addr,
            ],
            Duration::from_secs(10 + count as u64),
        )
    }

    /// Pings `addr` once a second until a reply comes, at most `timeout`.
    pub fn wait_ping(&self, addr: &str, timeout: Duration) -> Result<()> {
        cmd::wait_for(
            &format!("{} to reach {addr}", self.ns.name()),
            timeout,
            || self.ping(addr, 1).ok().filter(|o| o.success()).map(|_| ()),
        )
    }
}

/// Hosts, underlay and containers of one test; see the module docs.
#[derive(Debug)]
pub struct TestBed {
    prefix: String,
    keep: bool,
    pub hosts: Vec<Host>,
    pub containers: Vec<Container>,
    nodes: Vec<Netns>,
    underlay: Option<Netns>,
    /// Names of the nodes that route between the hosts' subnets, the hosts' gateway first.
    pub(crate) routers: Vec<String>,
}

impl TestBed {
    /// The flat underlay (one bridge) and `n` hosts on it, after removing leftovers of the
    /// same prefix. The prefix is put behind [`PREFIX_ENV`] when that is set.
    pub fn new(prefix: &str, n: usize) -> Result<TestBed> {
        let mut bed = TestBed::bare(prefix)?;
        bed.add_segment(FLAT_BRIDGE)?;
        for i in 1..=n {
            bed.add_host(host_addr(i), FLAT_BRIDGE, None)?;
        }
        Ok(bed)
    }

    /// The underlay namespace without segments or hosts, after removing leftovers of the
    /// same prefix.
    pub(crate) fn bare(prefix: &str) -> Result<TestBed> {
        let prefix = &full_prefix(prefix);
        if prefix.is_empty() || prefix.contains('/') || prefix.len() > 12 {
            return Err(Error::Other(format!("bad test bed prefix {prefix:?}")));
        }
        sweep(prefix);
        let underlay = Netns::create(&format!("{prefix}-u"))?;
        Ok(TestBed {
            prefix: prefix.to_string(),
            keep: false,
            hosts: Vec::new(),
            containers: Vec::new(),
            nodes: Vec::new(),
            underlay: Some(underlay),
            routers: Vec::new(),
        })
    }

    /// An L2 segment: a bridge `bridge` in the underlay namespace, up.
    pub(crate) fn add_segment(&self, bridge: &str) -> Result<()> {
        let u = self.underlay_netns();
        u.ip(&format!("link add {bridge} type bridge"))?;
        u.ip(&format!("link set {bridge} up"))?;
        Ok(())
    }

    /// The next host, `i`: `eth0` = `addr`/24 on segment `bridge` (its port there is
    /// `h<i>`), and a default route via `gateway` if given. Returns `i`.
    pub(crate) fn add_host(
        &mut self,
        addr: Ipv4Addr,
        bridge: &str,
        gateway: Option<Ipv4Addr>,
    ) -> Result<usize> {
        let i = self.hosts.len() + 1;
        let ns = Netns::create(&format!("{}-h{i}", self.prefix))?;
        self.wire(
            &ns,
            HOST_IFACE,
            &format!("h{i}"),
            bridge,
            &format!("{addr}/{UNDERLAY_PREFIX_LEN}"),
        )?;
        if let Some(gw) = gateway {
            ns.ip(&format!("route add default via {gw}"))?;
        }
        self.hosts.push(Host {
            index: i,
            addr,
            dial_addr: addr,
            iface: Some(HOST_IFACE.to_string()),
            router: None,
            ns,
        });
        Ok(i)
    }

    /// Plugs `ns` into segment `bridge`: a veth pair with `dev` inside `ns`, holding `cidr`,
    /// and `port` in the underlay namespace on the bridge; both up.
    pub(crate) fn wire(
        &self,
        ns: &Netns,
        dev: &str,
        port: &str,
        bridge: &str,
        cidr: &str,
    ) -> Result<()> {
        let u = self.underlay_netns();
        ns.ip(&format!(
            "link add {dev} type veth peer name {port} netns {}",
            u.name()
        ))?;
        u.ip(&format!("link set {port} master {bridge} up"))?;
        ns.ip(&format!("addr add {cidr} dev {dev}"))?;
        ns.ip(&format!("link set {dev} up"))?;
        Ok(())
    }

    fn underlay_netns(&self) -> &Netns {
        self.underlay
            .as_ref()
            .expect("underlay exists while the bed lives")
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Host `i` (1-based).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }

    /// The router of host `i`; panics if none was launched.
    pub fn router(&self, i: usize) -> &Router {
        self.host(i).router()
    }

    /// The router of host `i`, mutable; panics if none was launched.
    pub fn router_mut(&mut self, i: usize) -> &mut Router {
        self.hosts[i - 1]
            .router
            .as_mut()
            .expect("no router launched on this host")
    }

    /// The underlay namespace (`<prefix>-u`, holding the bridges of every segment: `br0`
    /// of the flat underlay), borrowed.
    pub fn underlay(&self) -> Netns {
        Netns::borrow(&format!("{}-u", self.prefix))
    }

    /// Another node on the flat underlay (not a host), e.g. to send stray packets from:
    /// `eth0` with `addr`, its port on `br0` named `name`.
    pub fn add_node(&mut self, name: &str, addr: Ipv4Addr) -> Result<&Netns> {
        let ns = Netns::create(&format!("{}-{name}", self.prefix))?;
        self.wire(
            &ns,
            HOST_IFACE,
            name,
            FLAT_BRIDGE,
            &format!("{addr}/{UNDERLAY_PREFIX_LEN}"),
        )?;
        Ok(self.push_node(ns))
    }

    /// Hands `ns` to the bed, which removes it with the rest.
    pub(crate) fn push_node(&mut self, ns: Netns) -> &Netns {
        self.nodes.push(ns);
        self.nodes.last().expect("just pushed")
    }

    /// The node `<prefix>-<name>` (made by [`TestBed::add_node`] or an underlay shape, e.g.
    /// a router); panics if there is none.
    pub fn node(&self, name: &str) -> &Netns {
        let full = format!("{}-{name}", self.prefix);
        self.nodes
            .iter()
            .find(|n| n.name() == full)
            .unwrap_or_else(|| panic!("no node {full} in this bed"))
    }

    /// The state dir of host `i`'s router.
    pub fn state_dir(&self, i: usize) -> PathBuf {
        state_base(&self.prefix).join(format!("h{i}"))
    }

    /// The peer name the bed gives host `i`'s router.
    pub fn peer_name(&self, i: usize) -> String {
        router::peer_name(&self.prefix, i as u16)
    }

    /// Launches a router on host `i` (with an empty state dir).
    pub fn launch(&mut self, i: usize, opts: &LaunchOpts) -> Result<&Router> {
        let _ = std::fs::remove_dir_all(self.state_dir(i));
        self.start_router(i, opts)
    }

    /// Stops host `i`'s router (if running) and launches it again over the state that run
    /// left.
    pub fn relaunch(&mut self, i: usize, opts: &LaunchOpts) -> Result<&Router> {
        if let Some(mut old) = self.hosts[i - 1].router.take() {
            old.stop()?;
            // Dropped without touching the state dir the next run continues from.
            old.keep();
        }
        self.start_router(i, opts)
    }

    fn start_router(&mut self, i: usize, opts: &LaunchOpts) -> Result<&Router> {
        let r = Router::launch_keeping_state(
            &format!("{}-h{i}", self.prefix),
            &self.peer_name(i),
            &self.host(i).nickname(),
            &self.state_dir(i),
            self.host(i).iface.as_deref(),
            opts,
        )?;
        let h = &mut self.hosts[i - 1];
        h.router = Some(r);
        Ok(h.router())
    }

    /// Launches a router on every host, host `i` dialling hosts `1..i` (at their
    /// [`Host::dial_addr`]), plus `extra` arguments, and waits until every router has
    /// established connections to all others.
    pub fn launch_mesh(&mut self, extra: &[&str]) -> Result<()> {
        let n = self.hosts.len();
        for i in 1..=n {
            let opts = LaunchOpts {
                peers: (1..i).map(|j| self.host(j).dial_addr.to_string()).collect(),
                extra: extra.iter().map(|s| s.to_string()).collect(),
            };
            self.launch(i, &opts)?;
        }
        for i in 1..=n {
            self.router(i)
                .wait_established(n - 1, Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// A container namespace `<prefix>-h<host><name>`; returns its index.
    pub fn add_container(&mut self, host: usize, name: &str) -> Result<usize> {
        let ns = Netns::create(&format!("{}-h{host}{name}", self.prefix))?;
        self.containers.push(Container {
            name: name.to_string(),
            host,
            cidr: None,
            ns,
        });
        Ok(self.containers.len() - 1)
    }

    /// Container number `c` (as returned by [`TestBed::add_container`]).
    pub fn container(&self, c: usize) -> &Container {
        &self.containers[c]
    }

    /// Adds a container on `host` and attaches it with `cidr` through that host's router.
    pub fn attach_container(&mut self, host: usize, name: &str, cidr: &str) -> Result<usize> {
        let c = self.add_container(host, name)?;
        let path = self.containers[c].ns.path();
        self.router(host).attach(cidr, &path)?;
        self.containers[c].cidr = Some(cidr.to_string());
        Ok(c)
    }

    /// `weave-router attach SPEC... --netns <container c>` on `host`: the addresses it
    /// printed (its output is "<mac> <addr>...").
    pub fn attach_specs(&self, host: usize, c: usize, specs: &[&str]) -> Result<Vec<String>> {
        let path = self.containers[c].ns.path();
        let mut args = vec!["attach".to_string()];
        args.extend(specs.iter().map(|s| s.to_string()));
        args.extend(["--netns".to_string(), path.to_string_lossy().into_owned()]);
        let out = self.router(host).check(&args)?;
        Ok(out.split_whitespace().skip(1).map(str::to_string).collect())
    }

    /// Joins container `c` to its host with a plain veth pair (no router): `eth0` in the
    /// container, `host_if` in the host, both with `mtu` and up. Addresses are the caller's.
    pub fn veth_to_container(&mut self, c: usize, host_if: &str, mtu: u32) -> Result<()> {
        let ct = &self.containers[c];
        let host = &self.hosts[ct.host - 1].ns;
        host.ip(&format!(
            "link add {host_if} mtu {mtu} type veth peer name eth0 netns {}",
            ct.ns.name()
        ))?;
        ct.ns.ip(&format!("link set eth0 mtu {mtu} up"))?;
        host.ip(&format!("link set {host_if} up"))?;
        Ok(())
    }

    /// A container on `host` that its host routes for: a veth of `mtu` (`host_if` on the
    /// host side), the host `<subnet>.1/24` on it and forwarding, the container
    /// `<subnet>.2/24` with the host as its default route (`subnet`: three octets, e.g.
    /// "10.10.1"). Routes towards it from elsewhere are the caller's. Returns its index.
    pub fn add_routed_container(
        &mut self,
        host: usize,
        host_if: &str,
        subnet: &str,
        mtu: u32,
    ) -> Result<usize> {
        let c = self.add_container(host, "c")?;
        self.veth_to_container(c, host_if, mtu)?;
        let host_ns = &self.hosts[host - 1].ns;
        host_ns.ip(&format!("addr add {subnet}.1/24 dev {host_if}"))?;
        host_ns.sysctl("net.ipv4.ip_forward", "1")?;
        let ct = &self.containers[c].ns;
        ct.ip(&format!("addr add {subnet}.2/24 dev eth0"))?;
        ct.ip(&format!("route add default via {subnet}.1"))?;
        self.set_container_cidr(c, &format!("{subnet}.2/24"));
        Ok(c)
    }

    /// Records the address a caller gave container `c` by hand.
    pub fn set_container_cidr(&mut self, c: usize, cidr: &str) {
        self.containers[c].cidr = Some(cidr.to_string());
    }

    /// Leaves everything in place when dropped (routers keep running).
    pub fn keep(&mut self) {
        self.keep = true;
        for h in &mut self.hosts {
            if let Some(r) = h.router.as_mut() {
                r.keep();
            }
            h.ns.keep();
        }
        for c in &mut self.containers {
            c.ns.keep();
        }
        for n in &mut self.nodes {
            n.keep();
        }
        if let Some(u) = self.underlay.as_mut() {
            u.keep();
        }
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // Routers first (they clean up their own devices and pins), then the namespaces.
        for h in &mut self.hosts {
            drop(h.router.take());
        }
        self.containers.clear();
        self.nodes.clear();
        self.hosts.clear();
        self.underlay.take();
        let _ = std::fs::remove_dir_all(state_base(&self.prefix));
    }
}

/// Environment variable whose value goes in front of every test bed prefix, so that two
/// runs of the tests on one machine (two checkouts, say) never touch each other's
/// namespaces.
pub const PREFIX_ENV: &str = "WEAVE_TEST_PREFIX";

/// `prefix` behind the value of [`PREFIX_ENV`], if set.
pub fn full_prefix(prefix: &str) -> String {
    match std::env::var(PREFIX_ENV) {
        Ok(p) => format!("{p}{prefix}"),
        Err(_) => prefix.to_string(),
    }
}

/// Where the routers of the bed `prefix` keep their state.
pub fn state_base(prefix: &str) -> PathBuf {
    std::env::temp_dir().join("weave-tests").join(prefix)
}

/// Removes everything a bed with `prefix` may have left: routers (asked to stop, then
/// ended), namespaces, state dirs, pins. Safe to call at any time.
pub fn sweep(prefix: &str) -> Vec<String> {
    let mine: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    // Routers first, while their namespaces and devices still exist.
    for n in &mine {
        if !router::router_pids(n).is_empty() {
            let _ = cmd::run_timeout(
                &netns::Netns::borrow(n).wrap(&[router::binary().as_os_str(), "stop".as_ref()]),
                Duration::from_secs(20),
            );
            router::kill_routers(n);
        }
    }
    // Containers before hosts, the underlay last.
    let rank = |n: &str| -> u8 {
        let rest = &n[prefix.len() + 1..];
        if rest == "u" {
            2
        } else if rest.starts_with('h') && rest[1..].chars().all(|c| c.is_ascii_digit()) {
            1
        } else {
            0
        }
    };
    let mut order = mine.clone();
    order.sort_by_key(|n| rank(n));
    for n in &order {
        netns::remove(n);
    }
    for i in 1..=254 {
        router::remove_pins(&router::peer_name(prefix, i));
    }
    let _ = std::fs::remove_dir_all(state_base(prefix));
    mine
}

/// True when running as root (the netns scenarios need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For tests: reports `test` skipped ([`crate::skip`]) and returns false when not root.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    crate::skip::skip_named(
        test,
        "needs root (network namespaces, BPF); run `cargo xtask test`",
    );
    false
}

/// For tests: panics unless every command in `tools` is on the `PATH` (a test that cannot
/// run must not pass). `cargo xtask setup` installs them.
pub fn require_tools(tools: &[&str]) {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| cmd::which(t).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "missing {}: run `cargo xtask setup` (it installs them)",
        missing.join(", ")
    );
}
