//! The benchmark topology: two hosts, one container each, in one of three ways of carrying
//! container traffic between the hosts.

use std::fmt;
use std::time::Duration;

use crate::bed::{host_addr, TestBed};
use crate::error::Result;

/// How containers on different hosts reach each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No overlay: each container has its own subnet, the hosts route between them.
    Routed,
    /// A kernel VXLAN device and a bridge per host.
    KernelVxlan,
    /// `weave-router` on each host, with extra launch arguments (e.g. `--xdp on`).
    Weave { extra: Vec<String> },
}

impl Mode {
    /// A short label for tables.
    pub fn label(&self) -> String {
        match self {
            Mode::Routed => "routed, no overlay".into(),
            Mode::KernelVxlan => "kernel VXLAN".into(),
            Mode::Weave { extra } if extra.is_empty() => "weave-router".into(),
            Mode::Weave { extra } => format!("weave-router {}", extra.join(" ")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// What joins the two hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underlay {
    /// One L2 segment (a bridge).
    Flat,
    /// Each host in a subnet of its own, joined by a router namespace.
    Routed,
}

/// Two hosts with one container each; container 0 is the client, container 1 the server.
#[derive(Debug)]
pub struct Pair {
    pub mode: Mode,
    pub bed: TestBed,
}

impl Pair {
    /// The server container's address.
    pub fn server_ip(&self) -> String {
        self.bed
            .container(1)
            .ip()
            .expect("server has an address")
            .to_string()
    }

    pub fn client(&self) -> &crate::bed::Container {
        self.bed.container(0)
    }

    pub fn server(&self) -> &crate::bed::Container {
        self.bed.container(1)
    }
}

/// Builds the pair for `mode` with container MTU `mtu` on a flat underlay; returns once the
/// client reaches the server.
pub fn pair(prefix: &str, mode: Mode, mtu: u32) -> Result<Pair> {
    pair_on(prefix, Underlay::Flat, mode, mtu)
}

/// Builds the pair for `mode` with container MTU `mtu` on `underlay`; returns once the
/// client reaches the server. The routed mode needs the flat underlay (the hosts route the
/// containers' subnets to each other directly).
pub fn pair_on(prefix: &str, underlay: Underlay, mode: Mode, mtu: u32) -> Result<Pair> {
    let mut bed = match underlay {
        Underlay::Flat => TestBed::new(prefix, 2)?,
        Underlay::Routed if mode == Mode::Routed => {
            return Err(crate::error::Error::Other(
                "the routed mode needs a flat underlay".into(),
            ))
        }
        Underlay::Routed => TestBed::routed(prefix, 2)?,
    };
    match &mode {
        Mode::Routed => {
            for h in 1..=2usize {
                bed.add_routed_container(h, "vc", &format!("10.10.{h}"), mtu)?;
                let other = 3 - h;
                bed.host(h).ns.ip(&format!(
                    "route add 10.10.{other}.0/24 via {}",
                    host_addr(other)
                ))?;
            }
        }
        Mode::KernelVxlan => {
            for h in 1..=2usize {
                let other = 3 - h;
                let host = &bed.host(h).ns;
                host.ip("link add br0 type bridge")?;
                host.ip(&format!(
                    "link add vx0 mtu {mtu} type vxlan id 42 dstport 4789 local {} dev eth0",
                    bed.host(h).addr
                ))?;
                host.check(&[
                    "bridge",
                    "fdb",
                    "append",
                    "00:00:00:00:00:00",
                    "dev",
                    "vx0",
                    "dst",
                    &bed.host(other).addr.to_string(),
                ])?;
                host.ip("link set vx0 master br0 up")?;
                host.ip("link set br0 up")?;
                let c = bed.add_container(h, "c")?;
                bed.veth_to_container(c, "vc", mtu)?;
                let host = &bed.host(h).ns;
                host.ip("link set vc master br0 up")?;
                bed.container(c)
                    .ns
                    .ip(&format!("addr add 10.2.1.{h}/24 dev eth0"))?;
                bed.set_container_cidr(c, &format!("10.2.1.{h}/24"));
            }
        }
        Mode::Weave { extra } => {
            let mut args: Vec<&str> = vec!["--mtu", ""];
            let mtu_s = mtu.to_string();
            args[1] = &mtu_s;
            args.extend(extra.iter().map(|s| s.as_str()));
            bed.launch_mesh(&args)?;
            for h in 1..=2usize {
                bed.attach_container(h, "c", &format!("10.2.1.{h}/24"))?;
            }
        }
    }
    let pair = Pair { mode, bed };
    let dst = pair.server_ip();
    pair.client().wait_ping(&dst, Duration::from_secs(20))?;
    Ok(pair)
}
