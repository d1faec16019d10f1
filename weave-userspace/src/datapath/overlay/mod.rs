//! The two overlays a peer's frames can take, under one interface: the kernel fast path
//! ([`Datapath`]) and the user-space sleeve. [`Overlays`] puts a directly connected peer
//! into the path that carries it (and, for a peer that may fall back, admits it on the
//! other one, ready for a switch), moves it between them, and takes it out; [`choice`]
//! decides when a peer switches, [`path_mtu`] how large a frame its path carries,
//! [`heartbeat_duty`] which end sends the heartbeats both judge the fast path by.

use std::sync::Arc;

use super::{Datapath, DatapathError, DatapathPeer};
use crate::crypto::SessionKeys;
use crate::mesh::peer_name::PeerName;
use crate::sleeve::{Sleeve, SleeveFeatures};

pub mod choice;
pub mod heartbeat_duty;
pub mod path_mtu;

pub use choice::{Overlay, OverlayChoice, CHECK_EVERY};

/// Where the peer of a connection sits in the overlays: what putting it in, moving it or
/// taking it out needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub name: PeerName,
    pub peer: DatapathPeer,
    /// The overlay carrying its frames.
    pub overlay: Overlay,
    /// It may fall back (or return) to the other overlay: both hold it.
    pub watched: bool,
    /// What its sleeve takes besides one frame per datagram (routed datagrams, bundles).
    pub sleeve: SleeveFeatures,
}

impl Placement {
    /// The fast path holds the peer (carrying its frames, or admitting them for a switch).
    pub fn in_fast_path(&self) -> bool {
        self.overlay == Overlay::Fastdp || self.watched
    }
}

/// The fast path and, when there is one, the sleeve.
pub struct Overlays<D> {
    datapath: Arc<D>,
    sleeve: Option<Arc<Sleeve>>,
}

impl<D: Datapath> Overlays<D> {
    pub fn new(datapath: Arc<D>, sleeve: Option<Arc<Sleeve>>) -> Self {
        Self { datapath, sleeve }
    }

    pub fn sleeve(&self) -> Option<&Arc<Sleeve>> {
        self.sleeve.as_ref()
    }

    /// Puts the peer of a new connection into the overlay that carries it. A `watched` peer
    /// (one that may fall back) is taken by both: the other one admits it without carrying
    /// its frames, ready for a switch.
    pub async fn place(
        &self,
        placement: Placement,
        session: Option<&SessionKeys>,
    ) -> Result<(), DatapathError> {
        let peer = placement.peer;
        let Some(sleeve) = &self.sleeve else {
            return self.datapath.add_peer(peer).await;
        };
        let short_id = peer.short_id.get();
        let sleeve_error = |e: String| DatapathError::Netlink(format!("sleeve: {e}"));
        match placement.overlay {
            Overlay::Sleeve => {
                // The fast path never routes to the peer: its frames go to the bridge, and
                // from there through the sleeve.
                sleeve
                    .add_peer(short_id, peer.underlay, session, true, placement.sleeve)
                    .map_err(sleeve_error)?;
                if placement.watched {
                    self.datapath.admit_peer(peer).await?;
                }
                Ok(())
            }
            Overlay::Fastdp => {
                let mut stale = Vec::new();
                if placement.watched {
                    sleeve
                        .add_peer(short_id, peer.underlay, session, false, placement.sleeve)
                        .map_err(sleeve_error)?;
                    // A connection it replaces may have had it on the sleeve.
                    stale = sleeve.carry(short_id, false);
                }
                self.datapath.add_peer(peer).await?;
                self.datapath.forget_bridge_macs(stale).await
            }
        }
    }

    /// Takes a peer of a replaced connection out of the overlays holding it.
    pub async fn remove(&self, placement: Placement) -> Result<(), DatapathError> {
        let short_id = placement.peer.short_id;
        let Some(sleeve) = &self.sleeve else {
            return self.datapath.remove_peer(short_id).await;
        };
        self.forget_sleeve_peer(sleeve, placement).await;
        if placement.in_fast_path() {
            self.datapath.remove_peer(short_id).await
        } else {
            Ok(())
        }
    }

    /// Takes the peer of a lost connection out of the overlays as a direct peer. The fast
    /// path keeps what it learned behind the peer (until the routes say whether a
    /// neighbour still reaches it); returns whether it held the peer.
    pub async fn unroute(&self, placement: Placement) -> Result<bool, DatapathError> {
        if let Some(sleeve) = &self.sleeve {
            self.forget_sleeve_peer(sleeve, placement).await;
            if !placement.in_fast_path() {
                return Ok(false);
            }
        }
        self.datapath.unroute_peer(placement.peer.short_id).await?;
        Ok(true)
    }

    /// Takes a peer out of the sleeve, and the MACs learned behind it out of the bridge
    /// (it learned them on the TAP: frames for them would go nowhere until they aged out).
    async fn forget_sleeve_peer(&self, sleeve: &Sleeve, placement: Placement) {
        let macs = sleeve.remove_peer(placement.peer.short_id.get());
        if let Err(e) = self.datapath.forget_bridge_macs(macs).await {
            tracing::warn!(
                "cannot forget the bridge's entries for {}: {e}",
                placement.name
            );
        }
    }

    /// Moves a peer to the overlay `to` (its choice switched); `who` names its connection
    /// in logs.
    pub async fn switch(&self, placement: Placement, to: Overlay, who: &str) {
        let Some(sleeve) = &self.sleeve else {
            return;
        };
        let peer = placement.peer;
        let short_id = peer.short_id.get();
        let result = match to {
            Overlay::Sleeve => {
                tracing::info!("connection {who}: fast path blocked, using sleeve");
                let admitted = self.datapath.admit_peer(peer).await;
                sleeve.carry(short_id, true);
                admitted
            }
            Overlay::Fastdp => {
                tracing::info!("connection {who}: fast path works again");
                // The bridge learned the peer's MACs on the sleeve's TAP: it must forget
                // them, or frames for them would still go there.
                let macs = sleeve.carry(short_id, false);
                match self.datapath.add_peer(peer).await {
                    Ok(()) => self.datapath.forget_bridge_macs(macs).await,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = result {
            tracing::error!(
                "connection {who}: cannot move the peer to the {}: {e}",
                to.name()
            );
        }
    }
}
