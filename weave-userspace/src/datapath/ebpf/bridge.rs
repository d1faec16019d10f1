//! The `weave` bridge's side of the data path: its port towards the peers (a veth pair
//! whose far end the programs listen on), the MTU containers get, and the VXLAN devices of
//! earlier versions.

use weave_ebpf_common::VXLAN_OVERHEAD;

use crate::datapath::netlink::{LinkChange, LinkInfo, Netlink};
use crate::datapath::DatapathError;

/// Name of the bridge the containers and the VXLAN devices are ports of.
pub const BRIDGE_NAME: &str = "weave";
/// Prefix of the per-peer VXLAN devices of earlier versions (removed at start).
pub const VXLAN_PREFIX: &str = "vxw-";
/// The bridge's port towards the peers: one end of a veth pair, an isolated port without
/// learning. What the programs leave to the bridge from the underlay enters here.
pub const BRIDGE_PORT_NAME: &str = "vethwe-bridge";
/// The other end of that pair, outside the bridge: what the bridge floods or forwards
/// towards the peers arrives here, where [`super::FROM_BRIDGE_PROGRAM`] encapsulates it.
pub const DATAPATH_PORT_NAME: &str = "vethwe-datapath";

/// A port that lends the bridge its headroom: a VXLAN device that is never set up, so the
/// bridge carries nothing to it. The kernel gives every port of a bridge (and the bridge)
/// the largest headroom any port needs; a veth port passes it on to its container end, so
/// the containers' stacks leave room in front of each frame for the outer headers the
/// programs push. Without it, encapsulating a frame of a UDP or ICMP socket (whose stack
/// leaves only an Ethernet header's room) reallocates and copies the frame's head, once
/// per packet.
pub const HEADROOM_PORT_NAME: &str = "vethwe-headroom";
/// The headroom port's VNI: the largest, unlikely to clash with a user's own VXLAN device
/// (the kernel refuses two devices with one VNI and port).
const HEADROOM_PORT_VNI: u32 = 0xff_ffff;

/// The smallest MTU containers are given, whatever the paths carry (IPv4's minimum).
pub const MIN_CONTAINER_MTU: u32 = 576;

/// The container MTU when none is given: the underlay's less the VXLAN overhead, if that
/// leaves at least [`MIN_CONTAINER_MTU`].
pub(super) fn default_container_mtu(underlay_mtu: u32) -> Option<u32> {
    underlay_mtu
        .checked_sub(VXLAN_OVERHEAD)
        .filter(|m| *m >= MIN_CONTAINER_MTU)
}

/// The container MTU to start with: `given`, or the underlay's less the VXLAN overhead.
pub(super) fn container_mtu(given: Option<u32>, underlay: &LinkInfo) -> Result<u32, DatapathError> {
    match given {
        Some(m) => Ok(m),
        None => default_container_mtu(underlay.mtu).ok_or_else(|| {
            DatapathError::Netlink(format!(
                "underlay {} has MTU {}, too small for VXLAN",
                underlay.name, underlay.mtu
            ))
        }),
    }
}

/// Makes sure the bridge has its [`HEADROOM_PORT_NAME`] port (kept down), made anew when
/// missing, put back on the bridge when an earlier run left it elsewhere.
pub(super) async fn ensure_headroom_port(
    nl: &Netlink,
    bridge_index: u32,
    mtu: u32,
) -> Result<(), DatapathError> {
    match nl.link_by_name(HEADROOM_PORT_NAME).await? {
        Some(link) => {
            nl.set_link(
                link.index,
                LinkChange {
                    controller: Some(bridge_index),
                    ..Default::default()
                },
            )
            .await
        }
        None => {
            nl.add_vxlan_port_down(
                HEADROOM_PORT_NAME,
                HEADROOM_PORT_VNI,
                weave_ebpf_common::VXLAN_PORT,
                mtu,
                bridge_index,
            )
            .await
        }
    }
}

/// Whether a link is one the data path removes when it stops: the port towards the peers
/// (its pair goes with it) and the VXLAN devices of earlier versions.
pub(super) fn removed_at_shutdown(name: &str) -> bool {
    name.starts_with(VXLAN_PREFIX) || name == DATAPATH_PORT_NAME
}

/// Removes the per-peer VXLAN devices of earlier versions.
pub(super) async fn remove_vxlan_devices(nl: &Netlink) -> Result<(), DatapathError> {
    for link in nl.links().await? {
        if link.name.starts_with(VXLAN_PREFIX) {
            nl.del_link(link.index).await?;
        }
    }
    Ok(())
}

/// Removes what [`removed_at_shutdown`] names.
pub(super) async fn remove_at_shutdown(nl: &Netlink) -> Result<(), DatapathError> {
    for link in nl.links().await? {
        if removed_at_shutdown(&link.name) {
            nl.del_link(link.index).await?;
        }
    }
    Ok(())
}

/// The ifindex of the bridge's port towards the peers an earlier run left (adopted with its
/// links), when both ends are still there.
pub(super) async fn existing_bridge_port(nl: &Netlink) -> Result<Option<u32>, DatapathError> {
    let datapath_end = nl.link_by_name(DATAPATH_PORT_NAME).await?;
    let bridge_end = nl.link_by_name(BRIDGE_PORT_NAME).await?;
    Ok(datapath_end.and(bridge_end).map(|l| l.index))
}

/// Creates the bridge's port towards the peers anew: the veth pair [`BRIDGE_PORT_NAME`] (on
/// the bridge, isolated, no learning) and [`DATAPATH_PORT_NAME`] (off the bridge), both up,
/// without IPv6 (nothing of the host's own should reach the peers from them). Returns the
/// ifindex of the bridge's end.
pub(super) async fn create_bridge_port(
    nl: &Netlink,
    bridge_index: u32,
    mtu: u32,
) -> Result<u32, DatapathError> {
    for name in [DATAPATH_PORT_NAME, BRIDGE_PORT_NAME] {
        if let Some(old) = nl.link_by_name(name).await? {
            nl.del_link(old.index).await?;
        }
    }
    nl.add_veth(BRIDGE_PORT_NAME, DATAPATH_PORT_NAME).await?;
    let mut indexes = [0u32; 2];
    for (slot, name) in indexes
        .iter_mut()
        .zip([BRIDGE_PORT_NAME, DATAPATH_PORT_NAME])
    {
        // No IPv6 on either end (best effort: the host may have IPv6 off altogether).
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        *slot = nl
            .link_by_name(name)
            .await?
            .ok_or_else(|| DatapathError::Netlink(format!("veth {name} vanished")))?
            .index;
    }
    let [bridge_port, datapath_port] = indexes;
    nl.set_link(
        bridge_port,
        LinkChange {
            mtu: Some(mtu),
            controller: Some(bridge_index),
            ..Default::default()
        },
    )
    .await?;
    nl.set_isolated(bridge_port, BRIDGE_PORT_NAME, false)
        .await?;
    for index in [datapath_port, bridge_port] {
        nl.set_link(
            index,
            LinkChange {
                mtu: Some(mtu),
                up: true,
                ..Default::default()
            },
        )
        .await?;
    }
    Ok(bridge_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_get_the_underlay_mtu_less_the_vxlan_overhead() {
        assert_eq!(default_container_mtu(1500), Some(1450));
        assert_eq!(default_container_mtu(9000), Some(8950));
    }

    #[test]
    fn an_underlay_too_small_for_vxlan_gives_no_container_mtu() {
        assert_eq!(
            default_container_mtu(MIN_CONTAINER_MTU + VXLAN_OVERHEAD),
            Some(MIN_CONTAINER_MTU)
        );
        assert_eq!(
            default_container_mtu(MIN_CONTAINER_MTU + VXLAN_OVERHEAD - 1),
            None
        );
        assert_eq!(default_container_mtu(20), None);
    }

    #[test]
    fn shutdown_removes_the_port_towards_the_peers_and_old_vxlan_devices_only() {
        assert!(removed_at_shutdown(DATAPATH_PORT_NAME));
        assert!(removed_at_shutdown("vxw-0a01"));
        assert!(!removed_at_shutdown(BRIDGE_NAME));
        assert!(!removed_at_shutdown(BRIDGE_PORT_NAME), "goes with its pair");
        assert!(!removed_at_shutdown("vethwe1234abcd"));
    }
}
