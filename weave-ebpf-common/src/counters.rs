//! Why a packet was counted: the index of `COUNTERS`.

/// Every outcome the programs count, by index into the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// TX: a container frame was encapsulated and sent to a peer.
    TxEncapsulated = 0,
    /// TX: a container frame was handed straight to another local container.
    TxLocalDelivered = 1,
    /// TX: an ARP request was answered from `NEIGHBOURS` without leaving the host.
    TxArpAnswered = 2,
    /// TX: a frame left to the bridge (broadcast, multicast, unknown or non-IPv4 destination).
    TxToBridge = 3,
    /// TX: encapsulation failed (no headroom, helper error); the frame was dropped.
    TxEncapFailed = 4,
    /// RX: a VXLAN frame was decapsulated and delivered into a container.
    RxDelivered = 5,
    /// RX: an admitted VXLAN frame was decapsulated and handed to the bridge through its
    /// port towards the peers (broadcast, non-IPv4 or unknown destination): the bridge
    /// floods or forwards it.
    RxToBridge = 6,
    /// RX: dropped, the VNI names a source short ID with no established connection.
    RxDropUnknownPeer = 7,
    /// RX: dropped, the outer source address is not the one of the peer the VNI names.
    RxDropSpoofedSource = 8,
    /// RX: dropped, the VNI names another destination.
    RxDropNotForUs = 9,
    /// RX: dropped, a truncated or malformed frame on the VXLAN port.
    RxDropMalformed = 10,
    /// RX: decapsulation failed in a helper; the frame was dropped.
    RxDecapFailed = 11,
    /// XDP: dropped before an skb existed, unknown peer.
    XdpDropUnknownPeer = 12,
    /// XDP: dropped before an skb existed, spoofed outer source.
    XdpDropSpoofedSource = 13,
    /// XDP: dropped before an skb existed, not addressed to us.
    XdpDropNotForUs = 14,
    /// XDP: dropped before an skb existed, malformed.
    XdpDropMalformed = 15,
    /// RX: a frame for another peer was forwarded towards it, or a copy of a broadcast
    /// was passed on along the source's tree (relay).
    RxRelayed = 16,
    /// RX: dropped, a frame to relay whose outer TTL ran out (a transient routing loop).
    RxDropTtlExpired = 17,
    /// TX: dropped, the IPv4 source or ARP sender address is not one of the sending
    /// container's own addresses (or the interface has no addresses on record).
    TxDropSpoofedSource = 18,
    /// TX: dropped, a unicast IPv4 destination or ARP target outside the sending
    /// container's subnets.
    TxDropOutsideSubnet = 19,
    /// TX: dropped, neither IPv4 nor ARP (IPv6 and other protocols would bypass the
    /// subnet rules).
    TxDropProtocol = 20,
    /// TX: dropped, a frame for another local container whose subnets do not hold its source.
    TxDropIsolated = 21,
    /// RX: dropped, a decapsulated frame for a local container whose subnets do not hold
    /// its source.
    RxDropIsolated = 22,
    /// Egress of a container veth (frames the bridge floods or forwards): dropped, the
    /// source is outside the container's subnets or the frame is neither IPv4 nor ARP.
    EgressDropIsolated = 23,
    /// From the bridge (broadcast, multicast or unknown destination): a copy was sent to each
    /// of the peers this router's own broadcasts go to.
    BridgeFlooded = 24,
    /// From the bridge: dropped, no peer to send it to (no reachable peer in this router's
    /// tree, no headroom, or a GSO frame to an unknown destination).
    BridgeDropped = 25,
    /// RX: a fast-path heartbeat from an admitted peer (counted for the peer too), dropped
    /// once counted: it only tells the peer's router that VXLAN gets through.
    RxHeartbeat = 26,
    /// From the bridge port: a fast-path heartbeat or path-MTU probe the router wrote was
    /// addressed to its peer (the way broadcast copies are) and sent.
    TxHeartbeat = 27,
    /// TX: dropped, the Ethernet source is not the sending container's own MAC (it would
    /// teach the bridge and the peers that another container's MAC lives here).
    TxDropSpoofedMac = 28,
    /// RX: dropped, a peer's frame whose inner source MAC is a local container's (it would
    /// teach `REMOTE_MACS` that a local container lives behind that peer).
    RxDropLocalMac = 29,
    /// RX: an admitted frame for a peer the sleeve carries (its fast path fell back) was
    /// decapsulated, tagged with its origin and destination and handed to the sleeve's TAP,
    /// which routes it on.
    RxToSleeve = 30,
    /// RX: a peer's plain heartbeat asking for an echo was answered in the kernel: turned
    /// round to the peer, same length (`crate::heartbeat`).
    RxHeartbeatEchoed = 31,
    /// RX: dropped, a broadcast from an origin with an ID (`crate::broadcast_id`) this
    /// router received less than a second before: the same broadcast come round a loop of
    /// routers whose views of the origin's tree differ (while a mesh forms).
    RxDropDuplicateBroadcast = 32,
}

impl Reason {
    /// Number of reasons, and so the size of the `COUNTERS` map.
    pub const COUNT: u32 = 33;

    /// Every reason in index order.
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::TxEncapsulated,
        Reason::TxLocalDelivered,
        Reason::TxArpAnswered,
        Reason::TxToBridge,
        Reason::TxEncapFailed,
        Reason::RxDelivered,
        Reason::RxToBridge,
        Reason::RxDropUnknownPeer,
        Reason::RxDropSpoofedSource,
        Reason::RxDropNotForUs,
        Reason::RxDropMalformed,
        Reason::RxDecapFailed,
        Reason::XdpDropUnknownPeer,
        Reason::XdpDropSpoofedSource,
        Reason::XdpDropNotForUs,
        Reason::XdpDropMalformed,
        Reason::RxRelayed,
        Reason::RxDropTtlExpired,
        Reason::TxDropSpoofedSource,
        Reason::TxDropOutsideSubnet,
        Reason::TxDropProtocol,
        Reason::TxDropIsolated,
        Reason::RxDropIsolated,
        Reason::EgressDropIsolated,
        Reason::BridgeFlooded,
        Reason::BridgeDropped,
        Reason::RxHeartbeat,
        Reason::TxHeartbeat,
        Reason::TxDropSpoofedMac,
        Reason::RxDropLocalMac,
        Reason::RxToSleeve,
        Reason::RxHeartbeatEchoed,
        Reason::RxDropDuplicateBroadcast,
    ];

    /// A label for metrics and status output.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::TxEncapsulated => "tx_encapsulated",
            Reason::TxLocalDelivered => "tx_local_delivered",
            Reason::TxArpAnswered => "tx_arp_answered",
            Reason::TxToBridge => "tx_to_bridge",
            Reason::TxEncapFailed => "tx_encap_failed",
            Reason::RxDelivered => "rx_delivered",
            Reason::RxToBridge => "rx_to_bridge",
            Reason::RxDropUnknownPeer => "rx_drop_unknown_peer",
            Reason::RxDropSpoofedSource => "rx_drop_spoofed_source",
            Reason::RxDropNotForUs => "rx_drop_not_for_us",
            Reason::RxDropMalformed => "rx_drop_malformed",
            Reason::RxDecapFailed => "rx_decap_failed",
            Reason::XdpDropUnknownPeer => "xdp_drop_unknown_peer",
            Reason::XdpDropSpoofedSource => "xdp_drop_spoofed_source",
            Reason::XdpDropNotForUs => "xdp_drop_not_for_us",
            Reason::XdpDropMalformed => "xdp_drop_malformed",
            Reason::RxRelayed => "rx_relayed",
            Reason::RxDropTtlExpired => "rx_drop_ttl_expired",
            Reason::TxDropSpoofedSource => "tx_drop_spoofed_source",
            Reason::TxDropOutsideSubnet => "tx_drop_outside_subnet",
            Reason::TxDropProtocol => "tx_drop_protocol",
            Reason::TxDropIsolated => "tx_drop_isolated",
            Reason::RxDropIsolated => "rx_drop_isolated",
            Reason::EgressDropIsolated => "egress_drop_isolated",
            Reason::BridgeFlooded => "bridge_flooded",
            Reason::BridgeDropped => "bridge_dropped",
            Reason::RxHeartbeat => "rx_heartbeat",
            Reason::TxHeartbeat => "tx_heartbeat",
            Reason::TxDropSpoofedMac => "tx_drop_spoofed_mac",
            Reason::RxDropLocalMac => "rx_drop_local_mac",
            Reason::RxToSleeve => "rx_to_sleeve",
            Reason::RxHeartbeatEchoed => "rx_heartbeat_echoed",
            Reason::RxDropDuplicateBroadcast => "rx_drop_duplicate_broadcast",
        }
    }

    /// Whether this reason counts a dropped packet.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::TxEncapFailed
                | Reason::RxDropUnknownPeer
                | Reason::RxDropSpoofedSource
                | Reason::RxDropNotForUs
                | Reason::RxDropMalformed
                | Reason::RxDecapFailed
                | Reason::XdpDropUnknownPeer
                | Reason::XdpDropSpoofedSource
                | Reason::XdpDropNotForUs
                | Reason::XdpDropMalformed
                | Reason::RxDropTtlExpired
                | Reason::TxDropSpoofedSource
                | Reason::TxDropOutsideSubnet
                | Reason::TxDropProtocol
                | Reason::TxDropIsolated
                | Reason::RxDropIsolated
                | Reason::EgressDropIsolated
                | Reason::BridgeDropped
                | Reason::TxDropSpoofedMac
                | Reason::RxDropLocalMac
                | Reason::RxDropDuplicateBroadcast
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_at_its_own_index() {
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{}", reason.name());
        }
    }

    #[test]
    fn names_are_distinct() {
        for a in Reason::ALL {
            for b in Reason::ALL {
                if a != b {
                    assert_ne!(a.name(), b.name());
                }
            }
        }
    }
}
