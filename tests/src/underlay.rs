//! Underlays beyond the flat one, and what tests do to them.
//!
//! Every shape is a [`TestBed`]: its L2 segments are bridges in the underlay namespace
//! `p-u`, its hosts `p-h<i>` have `eth0` on one of them (the host's port there is `h<i>`),
//! and the namespaces between the segments are nodes `p-<name>`:
//!
//! * routed ([`TestBed::routed`]): host `i` alone in its subnet 198.18.i.0/24 (bridge
//!   `br<i>`) with address 198.18.i.1 and a default route via the router `p-r` (198.18.i.254
//!   on its `eth<i>`, port `r<i>`), which forwards between every subnet;
//! * routed by several routers ([`TestBed::routed_by`]): the same with every router on every
//!   subnet, router `k` (0-based) at 198.18.i.(254 − k); the hosts' default routes go
//!   through the first one, [`TestBed::route_via`] moves them;
//! * 1:1 NAT ([`TestBed::nat`]): host 1 at 198.18.0.1/24 on `br0`; the NAT `p-n` has the
//!   public address [`NAT_PUBLIC_ADDR`] on the same segment (`eth0`) and 10.77.0.1/24 on
//!   `br1` (`eth1`), where host 2 is [`NAT_INNER_ADDR`] with a default route via the NAT.
//!   Every packet to the public address goes to host 2, and host 2's packets leave with it.
//!
//! The helpers change a running bed: forwarding cut between two hosts, a smaller MTU on the
//! way (one that answers "fragmentation needed", one that drops silently, in any shape),
//! routes moved to another router, a router cut off.

use std::net::Ipv4Addr;

use crate::bed::{TestBed, FLAT_BRIDGE, UNDERLAY_PREFIX_LEN};
use crate::error::{Error, Result};
use crate::mesh;
use crate::netns::Netns;

/// The public address of host 2 in the NAT shape: the NAT's address on the flat segment.
pub const NAT_PUBLIC_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Host 2's own address in the NAT shape, behind the NAT.
pub const NAT_INNER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// The NAT's address on host 2's segment (host 2's gateway).
pub const NAT_INNER_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// The nftables table of the NAT node.
pub const NAT_TABLE: &str = "weave_test_nat";

/// The name of the NAT node in the NAT shape.
pub const NAT_NODE: &str = "n";

/// The name of the router node in the routed shape.
pub const ROUTER_NODE: &str = "r";

/// First routing table of [`TestBed::limit_routed_mtu`] (one per host: this plus its index).
const MTU_TABLE_BASE: u32 = 100;

/// The address with last byte `last` in host `i`'s subnet of the routed shapes.
pub fn routed_addr(i: usize, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, i as u8, last)
}

/// Host `i`'s own address in the routed shapes.
pub fn routed_host_addr(i: usize) -> Ipv4Addr {
    routed_addr(i, 1)
}

/// The bridge of host `i`'s subnet in the routed shapes.
fn subnet_bridge(i: usize) -> String {
    format!("br{i}")
}

impl TestBed {
    /// `n` hosts, each in a subnet of its own, and the router `p-r` between them.
    pub fn routed(prefix: &str, n: usize) -> Result<TestBed> {
        TestBed::routed_by(prefix, n, &[ROUTER_NODE])
    }

    /// `n` hosts, each in a subnet of its own, and the router nodes `routers` (short names,
    /// e.g. `ra`, `rb`), each on every subnet and forwarding between them. The hosts'
    /// default routes go through the first router.
    pub fn routed_by(prefix: &str, n: usize, routers: &[&str]) -> Result<TestBed> {
        if routers.is_empty() {
            return Err(Error::Other("a routed bed needs a router".into()));
        }
        let mut bed = TestBed::bare(prefix)?;
        for i in 1..=n {
            bed.add_segment(&subnet_bridge(i))?;
        }
        for (k, name) in routers.iter().enumerate() {
            let ns = Netns::create(&format!("{}-{name}", bed.prefix()))?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            for i in 1..=n {
                let addr = routed_addr(i, 254 - k as u8);
                bed.wire(
                    &ns,
                    &format!("eth{i}"),
                    &format!("{name}{i}"),
                    &subnet_bridge(i),
                    &format!("{addr}/{UNDERLAY_PREFIX_LEN}"),
                )?;
            }
            bed.push_node(ns);
            bed.routers.push(name.to_string());
        }
        for i in 1..=n {
            bed.add_host(
                routed_host_addr(i),
                &subnet_bridge(i),
                Some(routed_addr(i, 254)),
            )?;
        }
        Ok(bed)
    }

    /// Host 1 on a flat segment, host 2 behind a 1:1 NAT on that segment: see the module
    /// docs. Host 2's [`crate::Host::dial_addr`] is the public address.
    pub fn nat(prefix: &str) -> Result<TestBed> {
        let mut bed = TestBed::bare(prefix)?;
        bed.add_segment(FLAT_BRIDGE)?;
        let inner = "br1";
        bed.add_segment(inner)?;
        bed.add_host(crate::bed::host_addr(1), FLAT_BRIDGE, None)?;
        let nat = Netns::create(&format!("{}-{NAT_NODE}", bed.prefix()))?;
        nat.sysctl("net.ipv4.ip_forward", "1")?;
        bed.wire(
            &nat,
            "eth0",
            &format!("{NAT_NODE}0"),
            FLAT_BRIDGE,
            &format!("{NAT_PUBLIC_ADDR}/{UNDERLAY_PREFIX_LEN}"),
        )?;
        bed.wire(
            &nat,
            "eth1",
            &format!("{NAT_NODE}1"),
            inner,
            &format!("{NAT_INNER_GATEWAY}/{UNDERLAY_PREFIX_LEN}"),
        )?;
        for line in [
            format!("add table ip {NAT_TABLE}"),
            format!(
                "add chain ip {NAT_TABLE} pre {{ type nat hook prerouting priority -100 ; }}"
            ),
            format!(
                "add chain ip {NAT_TABLE} post {{ type nat hook postrouting priority 100 ; }}"
            ),
            format!(
                "add rule ip {NAT_TABLE} pre iifname eth0 ip daddr {NAT_PUBLIC_ADDR} dnat to {NAT_INNER_ADDR}"
            ),
            format!(
                "add rule ip {NAT_TABLE} post oifname eth0 ip saddr {NAT_INNER_ADDR} snat to {NAT_PUBLIC_ADDR}"
            ),
        ] {
            mesh::nft(&nat, &line)?;
        }
        bed.push_node(nat);
        let h2 = bed.add_host(NAT_INNER_ADDR, inner, Some(NAT_INNER_GATEWAY))?;
        bed.hosts[h2 - 1].dial_addr = NAT_PUBLIC_ADDR;
        Ok(bed)
    }

    /// The router nodes of a routed bed, the hosts' first gateway first (empty otherwise).
    pub fn routers(&self) -> &[String] {
        &self.routers
    }

    /// The address of router `router` in host `i`'s subnet.
    pub fn gateway(&self, router: &str, i: usize) -> Ipv4Addr {
        let k = self
            .routers
            .iter()
            .position(|r| r == router)
            .unwrap_or_else(|| panic!("no router {router} in this bed"));
        routed_addr(i, 254 - k as u8)
    }

    /// Points every host's default route at `router`.
    pub fn route_via(&self, router: &str) -> Result<()> {
        for h in &self.hosts {
            h.ns.ip(&format!(
                "route replace default via {}",
                self.gateway(router, h.index)
            ))?;
        }
        Ok(())
    }

    /// Cuts `router` off every subnet: its ports on the segments go down, so frames sent to
    /// it are lost.
    pub fn cut_router(&self, router: &str) -> Result<()> {
        if !self.routers.iter().any(|r| r == router) {
            return Err(Error::Other(format!("no router {router} in this bed")));
        }
        let u = self.underlay();
        for h in &self.hosts {
            u.ip(&format!("link set {router}{} down", h.index))?;
        }
        Ok(())
    }

    /// Every router drops what it would forward between hosts `a` and `b`, both ways.
    pub fn block_forwarding(&self, a: usize, b: usize) -> Result<()> {
        let (aa, ba) = (self.host(a).addr, self.host(b).addr);
        for r in &self.routers {
            mesh::block_pair(self.node(r), "ip", aa, ba)?;
        }
        Ok(())
    }

    /// Undoes [`TestBed::block_forwarding`].
    pub fn unblock_forwarding(&self, a: usize, b: usize) -> Result<()> {
        let (aa, ba) = (self.host(a).addr, self.host(b).addr);
        for r in &self.routers {
            mesh::unblock_pair(self.node(r), "ip", aa, ba)?;
        }
        Ok(())
    }

    /// The routers forward at most `mtu` bytes per packet to and from host `i`'s subnet and
    /// answer a bigger packet that may not be fragmented with ICMP "fragmentation needed",
    /// as a hop of that MTU between them and host `i` would. Both ways are route MTUs (the
    /// links stay at 1500): towards host `i` on the route to its subnet, from host `i` in a
    /// routing table of its own for what comes in on the router's link to it.
    pub fn limit_routed_mtu(&self, i: usize, mtu: u32) -> Result<()> {
        if self.routers.is_empty() {
            return Err(Error::Other(
                "limit_routed_mtu: this bed has no routers".into(),
            ));
        }
        let table = MTU_TABLE_BASE + i as u32;
        for r in &self.routers {
            let ns = self.node(r);
            let src = self.gateway(r, i);
            ns.ip(&format!(
                "route replace {}/{UNDERLAY_PREFIX_LEN} dev eth{i} proto kernel scope link src {src} mtu lock {mtu}",
                routed_addr(i, 0)
            ))?;
            for h in self.hosts.iter().filter(|h| h.index != i) {
                ns.ip(&format!(
                    "route replace {}/{UNDERLAY_PREFIX_LEN} dev eth{} table {table} mtu lock {mtu}",
                    routed_addr(h.index, 0),
                    h.index
                ))?;
            }
            ns.ip(&format!(
                "rule add iif eth{i} lookup {table} priority {table}"
            ))?;
        }
        Ok(())
    }

    /// Puts an L2 hop of `mtu` between host `i` and the rest of its segment: the host's port
    /// moves to a bridge `hop<i>` of its own, joined to the segment by a veth pair
    /// (`hop<i>a`, `hop<i>b`) of that MTU. Bigger frames to or from the host are dropped
    /// there without a word, as on an L2 path with a smaller MTU (the host's own link, and
    /// so its sends, stay at 1500). The pair takes no GSO batch whole (`gso_max_segs 1`): a
    /// veth lets a batch of any segment size through, so a batch is cut into its packets
    /// first and those that are too big are dropped like any other.
    pub fn limit_segment_mtu(&self, i: usize, mtu: u32) -> Result<()> {
        let u = self.underlay();
        let port = format!("h{i}");
        let shown = u.ip(&format!("-o link show {port}"))?;
        let segment = shown
            .split_whitespace()
            .skip_while(|w| *w != "master")
            .nth(1)
            .ok_or_else(|| Error::Other(format!("{port} is on no bridge: {shown}")))?
            .to_string();
        let hop = format!("hop{i}");
        u.ip(&format!("link add {hop} type bridge"))?;
        u.ip(&format!("link set {hop} up"))?;
        u.ip(&format!(
            "link add {hop}a mtu {mtu} gso_max_segs 1 type veth peer name {hop}b mtu {mtu} gso_max_segs 1"
        ))?;
        u.ip(&format!("link set {hop}a master {segment} up"))?;
        u.ip(&format!("link set {hop}b master {hop} up"))?;
        u.ip(&format!("link set {port} master {hop}"))?;
        Ok(())
    }
}
