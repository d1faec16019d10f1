//! Netlink plumbing of the data path (rtnetlink): the bridge, veths, VXLAN devices,
//! addresses; and running netlink work inside another network namespace.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use rtnetlink::packet_core::Nla;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteMessage, RouteScope};
use rtnetlink::packet_route::rule::{RuleAction, RuleMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

use super::{DatapathError, NetnsProblem};
use crate::net::Ipv4Cidr;

/// What the data path needs to know of a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: [u8; 6],
    /// ifindex of the bridge (or other controller) the link is enslaved to.
    pub controller: Option<u32>,
    /// The bus device behind the link (set for NICs, not for veth, bridges, VXLAN…).
    pub parent_dev: Option<String>,
    /// The room the kernel leaves in front of the frames the host's stack sends through
    /// the link (`IFLA_HEADROOM`; not told by kernels before 6.6).
    pub headroom: Option<u16>,
}

/// `IFLA_HEADROOM`, which the netlink crate does not name.
const IFLA_HEADROOM: u16 = 68;

fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        mac: [0; 6],
        controller: None,
        parent_dev: None,
        headroom: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Mtu(m) => info.mtu = *m,
            LinkAttribute::Address(a) if a.len() == 6 => info.mac.copy_from_slice(a),
            LinkAttribute::Controller(c) => info.controller = Some(*c),
            LinkAttribute::ParentDevName(p) => info.parent_dev = Some(p.clone()),
            LinkAttribute::Other(nla) if nla.kind() == IFLA_HEADROOM => {
                let mut value = [0u8; 2];
                if nla.value_len() == value.len() {
                    nla.emit_value(&mut value);
                    info.headroom = Some(u16::from_ne_bytes(value));
                }
            }
            _ => {}
        }
    }
    info
}

/// The errno of a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn nl(what: impl std::fmt::Display) -> impl FnOnce(rtnetlink::Error) -> DatapathError {
    move |e| DatapathError::netlink(what, e)
}

/// A netlink connection in one network namespace (the one of the thread that opened it).
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

/// Where the kernel sends a packet for some address: the next hop's address on the link
/// (a gateway, or the address itself) and the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub address: Ipv4Addr,
    pub ifindex: u32,
}

/// Runs `work` on a new thread named `name`, on a tokio runtime of its own (I/O only); the
/// thread starts in the network namespace of the calling thread. Returns what `work` sends
/// through `started` once it is under way.
pub(super) fn on_own_thread<T, F, Fut>(name: &str, work: F) -> Result<T, DatapathError>
where
    T: Send + 'static,
    F: FnOnce(std::sync::mpsc::Sender<Result<T, DatapathError>>) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (started, started_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(runtime) => runtime.block_on(work(started)),
                Err(e) => {
                    let _ = started.send(Err(DatapathError::system(
                        "cannot start a runtime on its own thread",
                        e,
                    )));
                }
            }
        })
        .map_err(|e| DatapathError::system(format!("cannot start the {name} thread"), e))?;
    started_rx.recv().map_err(|_| {
        DatapathError::Netlink(format!("the {name} thread ended before it was under way"))
    })?
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace; its driver runs on
    /// the current tokio runtime.
    pub fn connect() -> Result<Self, DatapathError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| DatapathError::system("cannot open a netlink socket", e))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Opens a connection in the calling thread's network namespace whose driver runs on a
    /// thread of its own. The kernel handles a route netlink request inside the sender's
    /// `sendmsg`, under the global rtnl lock: while other processes hold that lock (many
    /// devices created at once), the sending thread sleeps. On its own thread that stalls
    /// only data-path changes, not the control connections on the router's runtime.
    pub fn connect_on_own_thread() -> Result<Self, DatapathError> {
        let handle = on_own_thread("netlink", |started| async move {
            match rtnetlink::new_connection() {
                Ok((conn, handle, _)) => {
                    let _ = started.send(Ok(handle));
                    // Ends when every handle is dropped.
                    conn.await;
                }
                Err(e) => {
                    let _ = started.send(Err(DatapathError::system(
                        "cannot open a netlink socket",
                        e,
                    )));
                }
            }
        })?;
        Ok(Self { handle })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, DatapathError> {
        let mut req = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match req.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_info(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl(format!("looking up {name}"))(e)),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, DatapathError> {
        let mut req = self.handle.link().get().match_index(index).execute();
        match req.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_info(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl(format!("looking up link {index}"))(e)),
        }
    }

    /// The link-layer address the neighbour table holds for `addr` on link `index`: one
    /// RTM_GETNEIGH for that address, not a dump (the kernel walks its neighbour table,
    /// shared by every namespace, for a dump).
    pub async fn neighbour_mac(
        &self,
        index: u32,
        addr: Ipv4Addr,
    ) -> Result<Option<[u8; 6]>, DatapathError> {
        use futures_util::StreamExt;
        use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
        use rtnetlink::packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourMessage,
        };
        use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.ifindex = index;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                addr,
            )));
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(message));
        request.header.flags = NLM_F_REQUEST;
        let mut responses = self
            .handle
            .clone()
            .request(request)
            .map_err(nl("asking for a neighbour"))?;
        while let Some(response) = responses.next().await {
            match response.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(msg)) => {
                    let mac = msg.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::LinkLayerAddress(a) if a.len() == 6 => {
                            let mut mac = [0u8; 6];
                            mac.copy_from_slice(a);
                            Some(mac)
                        }
                        _ => None,
                    });
                    return Ok(mac.filter(|m| *m != [0; 6]));
                }
                // No entry (ENOENT) or any other refusal: nothing known.
                NetlinkPayload::Error(_) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    /// The next hop towards `dst` as the kernel would route a packet to it now (`ip route
    /// get`): the gateway of the route (or `dst` itself on a directly connected subnet) and
    /// the device. `None` when there is no route.
    pub async fn route_to(&self, dst: Ipv4Addr) -> Result<Option<NextHop>, DatapathError> {
        use futures_util::StreamExt;
        use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
        use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
        use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.destination_prefix_length = 32;
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(message));
        request.header.flags = NLM_F_REQUEST;
        let mut responses = self
            .handle
            .clone()
            .request(request)
            .map_err(nl("asking for a route"))?;
        while let Some(response) = responses.next().await {
            match response.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(msg)) => {
                    let mut hop = NextHop {
                        address: dst,
                        ifindex: 0,
                    };
                    for a in &msg.attributes {
                        match a {
                            RouteAttribute::Gateway(RouteAddress::Inet(gw)) => hop.address = *gw,
                            RouteAttribute::Oif(index) => hop.ifindex = *index,
                            _ => {}
                        }
                    }
                    return Ok((hop.ifindex != 0).then_some(hop));
                }
                // No route (ENETUNREACH and the like).
                NetlinkPayload::Error(_) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    /// The next hop towards `dst` on the underlay and its link-layer address: the
    /// gateway's when the kernel routes `dst` through one, `dst`'s own on a shared subnet.
    /// `None` when the route leaves through another device (or there is none); no MAC while
    /// the neighbour is not resolved.
    pub async fn next_hop_neighbour(
        &self,
        underlay_index: u32,
        dst: Ipv4Addr,
    ) -> Result<Option<(Ipv4Addr, Option<[u8; 6]>)>, DatapathError> {
        match self.route_to(dst).await? {
            Some(hop) if hop.ifindex == underlay_index => {
                let mac = self.neighbour_mac(underlay_index, hop.address).await?;
                Ok(Some((hop.address, mac)))
            }
            _ => Ok(None),
        }
    }

    /// Deletes what bridge `bridge` learned of `macs` (`bridge fdb del MAC dev PORT master`
    /// for each port it learned one on); static entries (the ports' own addresses) stay.
    /// Returns how many entries went.
    pub async fn forget_fdb_entries(
        &self,
        bridge: u32,
        macs: &[[u8; 6]],
    ) -> Result<usize, DatapathError> {
        use rtnetlink::packet_route::neighbour::{
            NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        };
        use rtnetlink::packet_route::AddressFamily;
        if macs.is_empty() {
            return Ok(0);
        }
        let mut learned = Vec::new();
        let mut dump = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(nl("listing the bridge's forwarding entries"))?
        {
            let mut controller = None;
            let mut mac = None;
            for a in &msg.attributes {
                match a {
                    NeighbourAttribute::Controller(c) => controller = Some(*c),
                    NeighbourAttribute::LinkLayerAddress(a) if a.len() == 6 => {
                        mac = <[u8; 6]>::try_from(a.as_slice()).ok()
                    }
                    _ => {}
                }
            }
            let fixed = matches!(
                msg.header.state,
                NeighbourState::Permanent | NeighbourState::Noarp
            );
            if let Some(mac) = mac.filter(|m| controller == Some(bridge) && macs.contains(m)) {
                if !fixed {
                    learned.push((msg.header.ifindex, mac));
                }
            }
        }
        let mut forgotten = 0;
        for (port, mac) in learned {
            let mut msg = NeighbourMessage::default();
            msg.header.family = AddressFamily::Bridge;
            msg.header.ifindex = port;
            msg.header.flags = NeighbourFlags::Controller;
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
            match self.handle.neighbours().del(msg).execute().await {
                Ok(()) => forgotten += 1,
                Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::ENODEV)) => {}
                Err(e) => return Err(nl("removing a bridge forwarding entry")(e)),
            }
        }
        Ok(forgotten)
    }

    pub async fn links(&self) -> Result<Vec<LinkInfo>, DatapathError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing links"))?;
        Ok(msgs.iter().map(link_info).collect())
    }

    /// Makes sure a bridge `name` exists with this MTU and is up.
    pub async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<LinkInfo, DatapathError> {
        if self.link_by_name(name).await?.is_none() {
            let msg = LinkBridge::new(name).mtu(mtu).build();
            match self.handle.link().add(msg).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(nl(format!("creating bridge {name}"))(e)),
            }
        }
        let link = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| DatapathError::Netlink(format!("bridge {name} vanished")))?;
        self.set_link(
            link.index,
            LinkChange {
                mtu: Some(mtu),
                up: true,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| DatapathError::Netlink(format!("bridge {name}: {e}")))?;
        Ok(link)
    }

    /// Sets a link down.
    pub async fn set_link_down(&self, index: u32) -> Result<(), DatapathError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).down().build())
            .execute()
            .await
            .map_err(nl("setting a link down"))
    }

    /// `bridge link set dev X isolated on [learning off]`: the bridge forwards nothing from
    /// this port to another isolated port (frames from peers never go back to peers), and
    /// without learning it floods unicast frames it has no entry for to this port as well.
    pub async fn set_isolated(
        &self,
        index: u32,
        name: &str,
        learning: bool,
    ) -> Result<(), DatapathError> {
        let msg = LinkBridgePort::new(index)
            .isolated(true)
            .learning(learning)
            .build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(nl(format!("isolating bridge port {name}")))
    }

    pub async fn del_link(&self, index: u32) -> Result<(), DatapathError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(nl(format!("deleting link {index}"))(e)),
        }
    }

    pub async fn add_veth(&self, name: &str, peer: &str) -> Result<(), DatapathError> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .map_err(nl(format!("creating veth {name}")))
    }

    /// Creates a VXLAN device `name` (VNI `vni`, UDP port `port`, no remote, no learning)
    /// as a port of the bridge `controller`, and leaves it down.
    pub async fn add_vxlan_port_down(
        &self,
        name: &str,
        vni: u32,
        port: u16,
        mtu: u32,
        controller: u32,
    ) -> Result<(), DatapathError> {
        let msg = LinkVxlan::new(name, vni)
            .port(port)
            .learning(false)
            .mtu(mtu)
            .controller(controller)
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("creating VXLAN device {name}")))
    }

    /// Moves a link into the network namespace open at `netns_fd`.
    pub async fn move_to_netns(&self, index: u32, netns_fd: RawFd) -> Result<(), DatapathError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .setns_by_fd(netns_fd)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("moving the container end into its namespace"))
    }

    pub async fn set_link(&self, index: u32, change: LinkChange) -> Result<(), DatapathError> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(name) = change.name {
            b = b.name(name);
        }
        if let Some(mtu) = change.mtu {
            b = b.mtu(mtu);
        }
        if let Some(c) = change.controller {
            b = b.controller(c);
        }
        if change.up {
            b = b.up();
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(nl(format!("configuring link {index}")))
    }

    /// Removes an IPv4 address from a link (no error when it is not there).
    pub async fn del_address(&self, index: u32, cidr: Ipv4Cidr) -> Result<(), DatapathError> {
        use futures_util::TryStreamExt;
        let mut addresses = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = addresses
            .try_next()
            .await
            .map_err(nl("listing addresses"))?
        {
            let matches = msg.header.prefix_len == cidr.prefix_len
                && msg.attributes.iter().any(|a| {
                    matches!(a, rtnetlink::packet_route::address::AddressAttribute::Local(IpAddr::V4(ip)) if *ip == cidr.addr)
                });
            if matches {
                return self
                    .handle
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(nl(format!("removing address {cidr}")));
            }
        }
        Ok(())
    }

    /// The IPv4 addresses of a link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<Ipv4Cidr>, DatapathError> {
        use rtnetlink::packet_route::address::AddressAttribute;
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .flat_map(|m| {
                m.attributes.iter().filter_map(move |a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(Ipv4Cidr {
                        addr: *ip,
                        prefix_len: m.header.prefix_len,
                    }),
                    _ => None,
                })
            })
            .collect())
    }

    pub async fn add_address(&self, index: u32, cidr: Ipv4Cidr) -> Result<(), DatapathError> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(cidr.addr), cidr.prefix_len)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(nl(format!("adding address {cidr}"))(e)),
        }
    }
}

impl Netlink {
    /// Sets a link's MAC address (a bridge then keeps it whatever its ports).
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), DatapathError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("setting the MAC of link {index}")))
    }

    fn device_route(dst: Ipv4Addr, prefix_len: u8, index: u32, table: u32) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix_len)
            .output_interface(index)
            .scope(RouteScope::Link)
            .table_id(table)
            .build()
    }

    /// `ip route replace DST/LEN dev INDEX scope link table TABLE`.
    pub async fn replace_device_route(
        &self,
        dst: Ipv4Addr,
        prefix_len: u8,
        index: u32,
        table: u32,
    ) -> Result<(), DatapathError> {
        self.handle
            .route()
            .add(Self::device_route(dst, prefix_len, index, table))
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding a route to {dst}/{prefix_len}")))
    }

    pub async fn del_device_route(
        &self,
        dst: Ipv4Addr,
        prefix_len: u8,
        index: u32,
        table: u32,
    ) -> Result<(), DatapathError> {
        match self
            .handle
            .route()
            .del(Self::device_route(dst, prefix_len, index, table))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENODEV)) => Ok(()),
            Err(e) => Err(nl(format!("removing the route to {dst}/{prefix_len}"))(e)),
        }
    }

    fn source_rule(&self, src: Ipv4Addr, table: u32, priority: u32) -> RuleMessage {
        let mut req = self
            .handle
            .rule()
            .add()
            .v4()
            .source_prefix(src, 32)
            .table_id(table)
            .priority(priority)
            .action(RuleAction::ToTable);
        req.message_mut().clone()
    }

    /// `ip rule add from SRC lookup TABLE priority PRIORITY` (kept if there already).
    pub async fn add_source_rule(
        &self,
        src: Ipv4Addr,
        table: u32,
        priority: u32,
    ) -> Result<(), DatapathError> {
        match self
            .handle
            .rule()
            .add()
            .v4()
            .source_prefix(src, 32)
            .table_id(table)
            .priority(priority)
            .action(RuleAction::ToTable)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(nl(format!("adding a rule for {src}"))(e)),
        }
    }

    pub async fn del_source_rule(
        &self,
        src: Ipv4Addr,
        table: u32,
        priority: u32,
    ) -> Result<(), DatapathError> {
        let msg = self.source_rule(src, table, priority);
        match self.handle.rule().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(nl(format!("removing the rule for {src}"))(e)),
        }
    }

    /// `ip neigh replace ADDR lladdr MAC dev INDEX nud permanent`.
    pub async fn replace_neighbour(
        &self,
        index: u32,
        addr: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), DatapathError> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(addr))
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding a neighbour entry for {addr}")))
    }

    pub async fn del_neighbour(&self, index: u32, addr: Ipv4Addr) -> Result<(), DatapathError> {
        let mut req = self.handle.neighbours().add(index, IpAddr::V4(addr));
        let msg = req.message_mut().clone();
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::ENODEV)) => Ok(()),
            Err(e) => Err(nl(format!("removing the neighbour entry for {addr}"))(e)),
        }
    }
}

/// Changes to one link in one request.
#[derive(Clone, Debug, Default)]
pub struct LinkChange {
    pub name: Option<String>,
    pub mtu: Option<u32>,
    pub controller: Option<u32>,
    pub up: bool,
}

/// Runs `f` with a netlink connection inside the network namespace at `netns`, on a
/// dedicated thread (joined to that namespace, with its own current-thread runtime), so the
/// caller's threads never change namespace.
pub async fn in_netns<T, F, Fut>(netns: &Path, f: F) -> Result<T, DatapathError>
where
    T: Send + 'static,
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, DatapathError>> + 'static,
{
    let path: PathBuf = netns.to_path_buf();
    let ns_err = {
        let path = path.clone();
        move |reason: NetnsProblem| DatapathError::Netns {
            path: path.clone(),
            reason,
        }
    };
    let file = std::fs::File::open(&path).map_err(|e| ns_err(NetnsProblem::Open(e)))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_err = ns_err.clone();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let run = || -> Result<T, DatapathError> {
                // SAFETY: setns only changes the network namespace of this thread, which
                // exists for this work alone and ends with it; the fd is open and owned.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let e = std::io::Error::last_os_error();
                    let reason = if e.raw_os_error() == Some(libc::EINVAL) {
                        NetnsProblem::NotANetworkNamespace
                    } else {
                        NetnsProblem::Enter(e)
                    };
                    return Err(thread_err(reason));
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        DatapathError::system("cannot start a runtime in the namespace", e)
                    })?;
                rt.block_on(async move {
                    let nl = Netlink::connect()?;
                    f(nl).await
                })
            };
            let _ = tx.send(run());
        })
        .map_err(|e| DatapathError::system("cannot start a namespace worker thread", e))?;
    rx.await.map_err(|_| ns_err(NetnsProblem::WorkerDied))?
}

/// An open network namespace file (kept open while a link is moved into it).
pub fn open_netns(netns: &Path) -> Result<std::fs::File, DatapathError> {
    std::fs::File::open(netns).map_err(|e| DatapathError::Netns {
        path: netns.to_path_buf(),
        reason: NetnsProblem::Open(e),
    })
}
