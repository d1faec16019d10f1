//! The sleeve's port on the weave bridge: its TAP device, made a port of the bridge with
//! the container MTU (isolated, so that frames from sleeve peers never go back out to
//! peers), and the sleeve's threads behind it.

use std::net::Ipv4Addr;

use crate::datapath::netlink::{LinkChange, Netlink};
use crate::datapath::DatapathError;

/// Why the sleeve did not start. Each message says its cause (no source chain).
#[derive(Debug, thiserror::Error)]
pub enum SleeveStartError {
    #[error("cannot create the TAP device {name}: {error}")]
    Tap { name: String, error: std::io::Error },
    #[error(transparent)]
    Netlink(#[from] DatapathError),
    #[error("the weave bridge is missing")]
    NoBridge,
    #[error("the TAP device vanished")]
    TapVanished,
    #[error("cannot bind UDP {underlay}:{port}: {error}", port = super::SLEEVE_PORT)]
    Bind {
        underlay: Ipv4Addr,
        error: std::io::Error,
    },
}

/// Container MTU under the sleeve when none is given: the underlay's less 100, so that a
/// full-size frame (with the vnet header, the sleeve header and the tag) fits one underlay
/// packet.
pub async fn default_container_mtu(iface: &str) -> Option<u32> {
    let nl = Netlink::connect().ok()?;
    let underlay = nl.link_by_name(iface).await.ok()??.mtu;
    Some(underlay.saturating_sub(100).max(576))
}

/// Creates the TAP device on the weave bridge (`bridge`) and starts the sleeve's threads
/// behind it, on UDP [`super::SLEEVE_PORT`] of `underlay` (whose interface is `iface`).
pub async fn start_on_bridge(
    bridge: &str,
    short_id: u16,
    underlay: Ipv4Addr,
    iface: &str,
    mtu: u32,
    encrypted: bool,
) -> Result<super::Sleeve, SleeveStartError> {
    let tap = super::tap::Tap::create(super::TAP_NAME).map_err(|error| SleeveStartError::Tap {
        name: super::TAP_NAME.to_string(),
        error,
    })?;
    let nl = Netlink::connect()?;
    let bridge = nl
        .link_by_name(bridge)
        .await?
        .ok_or(SleeveStartError::NoBridge)?;
    let underlay_mtu = nl.link_by_name(iface).await?.map(|l| l.mtu).unwrap_or(1500);
    let link = nl
        .link_by_name(tap.name())
        .await?
        .ok_or(SleeveStartError::TapVanished)?;
    nl.set_link(
        link.index,
        LinkChange {
            mtu: Some(mtu),
            controller: Some(bridge.index),
            up: true,
            ..Default::default()
        },
    )
    .await?;
    // Frames from sleeve peers never go back out to peers (relaying is not the bridge's job).
    nl.set_isolated(link.index, tap.name(), true).await?;
    let mut sleeve = super::Sleeve::start(
        short_id,
        underlay,
        super::SLEEVE_PORT,
        underlay_mtu,
        tap,
        encrypted,
    )
    .map_err(|error| SleeveStartError::Bind { underlay, error })?;
    sleeve.port_ifindex = link.index;
    tracing::info!(
        "sleeve data path on UDP {underlay}:{} through {} ({})",
        super::SLEEVE_PORT,
        super::TAP_NAME,
        if encrypted {
            "encrypted"
        } else {
            "unencrypted"
        }
    );
    Ok(sleeve)
}
