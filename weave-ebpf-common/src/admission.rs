//! Whether a VXLAN frame from the underlay is admitted: the decision both receive programs
//! (`rx_from_underlay` and `xdp_admit`) make, apart from the maps it reads.
//!
//! The kernel passes in what it read from the frame (the outer source address and the VXLAN
//! header) and a [`PeerLookup`] over its maps. The decision asks for a lookup only when it
//! needs one, in the order the programs always made them: whether the outer source is a
//! directly connected peer is a hash lookup that a frame sent by its origin never needs.

use crate::{
    counters::Reason,
    headers::{read_vxlan_vni, VXLAN_HLEN},
    maps::{PeerEntry, PEER_ADMIT, PEER_REACHABLE, PEER_VIA_SLEEVE},
    vni,
};

/// The maps the admission decision reads.
pub trait PeerLookup {
    /// What the data path knows of the peer with `short_id` (`PEERS[short_id]`).
    fn peer(&self, short_id: u16) -> Option<&PeerEntry>;
    /// Whether `underlay_ipv4` is the address of a directly connected peer
    /// (`NEIGHBOUR_PEERS`): one that may relay frames of others.
    fn is_neighbour(&self, underlay_ipv4: [u8; 4]) -> bool;
}

/// What becomes of a VXLAN frame from the underlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// For us, from the origin with this short ID (sent by it or relayed by a neighbour).
    Admit { src: u16 },
    /// From an admitted neighbour, for another peer we route to: to be passed on.
    Relay { dst: u16 },
    /// From an admitted neighbour, for a peer the sleeve carries (its fast path fell
    /// back): handed to the sleeve, which routes it on ([`crate::handover`]).
    ToSleeve { src: u16, dst: u16 },
    /// Not admitted: dropped and counted for this reason.
    Drop(AdmissionDrop),
}

/// Why a VXLAN frame was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmissionDrop {
    /// The source short ID is not a peer with an established connection (or is our own).
    UnknownPeer,
    /// The outer source is neither the source peer's address nor a directly connected peer's.
    SpoofedSource,
    /// For another peer that we have no route to.
    NotForUs,
    /// The VXLAN header carries no VNI.
    Malformed,
}

impl AdmissionDrop {
    /// The counter of `rx_from_underlay` (tc) for this drop.
    #[inline(always)]
    pub const fn rx_reason(self) -> Reason {
        match self {
            AdmissionDrop::UnknownPeer => Reason::RxDropUnknownPeer,
            AdmissionDrop::SpoofedSource => Reason::RxDropSpoofedSource,
            AdmissionDrop::NotForUs => Reason::RxDropNotForUs,
            AdmissionDrop::Malformed => Reason::RxDropMalformed,
        }
    }

    /// The counter of `xdp_admit` for this drop.
    #[inline(always)]
    pub const fn xdp_reason(self) -> Reason {
        match self {
            AdmissionDrop::UnknownPeer => Reason::XdpDropUnknownPeer,
            AdmissionDrop::SpoofedSource => Reason::XdpDropSpoofedSource,
            AdmissionDrop::NotForUs => Reason::XdpDropNotForUs,
            AdmissionDrop::Malformed => Reason::XdpDropMalformed,
        }
    }
}

/// Checks a VXLAN header against the peers: the source short ID must be a peer with an
/// established connection other than us, the outer source must be that peer's address or
/// the address of a directly connected peer (one that relays), and the destination must be
/// us (`own_short_id`), a peer we route to, or one the sleeve carries.
#[inline(always)]
pub fn admit(
    own_short_id: u16,
    outer_src: [u8; 4],
    vxlan: &[u8; VXLAN_HLEN],
    peers: &impl PeerLookup,
) -> Admission {
    let Some(id) = read_vxlan_vni(vxlan) else {
        return Admission::Drop(AdmissionDrop::Malformed);
    };
    let (src, dst) = vni::unpack(id);
    let Some(peer) = peers.peer(src) else {
        return Admission::Drop(AdmissionDrop::UnknownPeer);
    };
    if peer.flags & PEER_ADMIT == 0 || src == own_short_id {
        return Admission::Drop(AdmissionDrop::UnknownPeer);
    }
    // Sent by the origin itself, or relayed by a directly connected peer.
    if peer.underlay_ipv4 != outer_src && !peers.is_neighbour(outer_src) {
        return Admission::Drop(AdmissionDrop::SpoofedSource);
    }
    if dst != own_short_id {
        return match peers.peer(dst) {
            Some(p) if p.flags & PEER_REACHABLE != 0 => Admission::Relay { dst },
            Some(p) if p.flags & PEER_VIA_SLEEVE != 0 => Admission::ToSleeve { src, dst },
            _ => Admission::Drop(AdmissionDrop::NotForUs),
        };
    }
    Admission::Admit { src }
}

#[cfg(test)]
mod tests {
    use core::cell::Cell;

    use super::*;
    use crate::headers::VXLAN_FLAG_VNI;

    const US: u16 = 1;
    const ORIGIN: u16 = 2;
    const RELAY: u16 = 3;
    const FAR: u16 = 4;
    const UNROUTED: u16 = 5;
    const CONNECTING: u16 = 6;
    const FALLEN_BACK: u16 = 7;
    const ORIGIN_ADDR: [u8; 4] = [192, 0, 2, 2];
    const RELAY_ADDR: [u8; 4] = [192, 0, 2, 3];
    const STRANGER_ADDR: [u8; 4] = [203, 0, 113, 9];

    fn entry(addr_last: u8, flags: u32, next_hop: u16) -> PeerEntry {
        PeerEntry {
            underlay_ipv4: [192, 0, 2, addr_last],
            flags,
            next_hop,
            underlay_mac: [0; 6],
        }
    }

    /// Our own entry, an origin and a relay with connections, a far peer reached through
    /// the relay, a peer with a connection but no route, one still connecting.
    struct Table {
        peers: [(u16, PeerEntry); 7],
        neighbours: [[u8; 4]; 2],
        neighbour_lookups: Cell<u32>,
    }

    impl Table {
        fn new() -> Self {
            Self {
                peers: [
                    (US, entry(1, PEER_ADMIT | PEER_REACHABLE, US)),
                    (ORIGIN, entry(2, PEER_ADMIT | PEER_REACHABLE, ORIGIN)),
                    (RELAY, entry(3, PEER_ADMIT | PEER_REACHABLE, RELAY)),
                    (FAR, entry(4, PEER_ADMIT | PEER_REACHABLE, RELAY)),
                    (UNROUTED, entry(5, PEER_ADMIT, UNROUTED)),
                    (CONNECTING, entry(6, PEER_REACHABLE, CONNECTING)),
                    (
                        FALLEN_BACK,
                        entry(7, PEER_ADMIT | PEER_VIA_SLEEVE, FALLEN_BACK),
                    ),
                ],
                neighbours: [ORIGIN_ADDR, RELAY_ADDR],
                neighbour_lookups: Cell::new(0),
            }
        }
    }

    impl PeerLookup for Table {
        fn peer(&self, short_id: u16) -> Option<&PeerEntry> {
            self.peers
                .iter()
                .find(|(id, _)| *id == short_id)
                .map(|(_, p)| p)
        }
        fn is_neighbour(&self, underlay_ipv4: [u8; 4]) -> bool {
            self.neighbour_lookups.set(self.neighbour_lookups.get() + 1);
            self.neighbours.contains(&underlay_ipv4)
        }
    }

    fn vxlan(src: u16, dst: u16) -> [u8; VXLAN_HLEN] {
        let id = vni::pack(src, dst);
        [
            VXLAN_FLAG_VNI,
            0,
            0,
            0,
            (id >> 16) as u8,
            (id >> 8) as u8,
            id as u8,
            0,
        ]
    }

    fn decide(table: &Table, outer_src: [u8; 4], src: u16, dst: u16) -> Admission {
        admit(US, outer_src, &vxlan(src, dst), table)
    }

    #[test]
    fn a_frame_sent_by_its_origin_is_admitted_without_asking_for_neighbours() {
        let table = Table::new();
        assert_eq!(
            decide(&table, ORIGIN_ADDR, ORIGIN, US),
            Admission::Admit { src: ORIGIN }
        );
        assert_eq!(table.neighbour_lookups.get(), 0);
    }

    #[test]
    fn a_frame_relayed_by_a_neighbour_is_admitted_for_its_origin() {
        let table = Table::new();
        assert_eq!(
            decide(&table, RELAY_ADDR, FAR, US),
            Admission::Admit { src: FAR }
        );
        assert_eq!(table.neighbour_lookups.get(), 1);
    }

    #[test]
    fn a_frame_for_a_peer_we_route_to_is_relayed() {
        let table = Table::new();
        assert_eq!(
            decide(&table, ORIGIN_ADDR, ORIGIN, FAR),
            Admission::Relay { dst: FAR }
        );
    }

    #[test]
    fn a_frame_for_a_peer_without_a_route_is_not_for_us() {
        let table = Table::new();
        let not_for_us = Admission::Drop(AdmissionDrop::NotForUs);
        assert_eq!(decide(&table, ORIGIN_ADDR, ORIGIN, UNROUTED), not_for_us);
        assert_eq!(decide(&table, ORIGIN_ADDR, ORIGIN, 0x777), not_for_us);
    }

    #[test]
    fn a_frame_for_a_peer_the_sleeve_carries_goes_to_the_sleeve_with_both_ends() {
        let table = Table::new();
        assert_eq!(
            decide(&table, ORIGIN_ADDR, ORIGIN, FALLEN_BACK),
            Admission::ToSleeve {
                src: ORIGIN,
                dst: FALLEN_BACK
            }
        );
        // Relayed by a neighbour for a far origin: the same.
        assert_eq!(
            decide(&table, RELAY_ADDR, FAR, FALLEN_BACK),
            Admission::ToSleeve {
                src: FAR,
                dst: FALLEN_BACK
            }
        );
        // Admission comes first: a stranger's frame for it is not handed over.
        assert_eq!(
            decide(&table, STRANGER_ADDR, ORIGIN, FALLEN_BACK),
            Admission::Drop(AdmissionDrop::SpoofedSource)
        );
        // The fallen-back peer's own frames for us are admitted as ever (its heartbeats).
        assert_eq!(
            decide(&table, [192, 0, 2, 7], FALLEN_BACK, US),
            Admission::Admit { src: FALLEN_BACK }
        );
    }

    #[test]
    fn unknown_unconnected_and_own_short_ids_are_unknown_peers() {
        let table = Table::new();
        let unknown = Admission::Drop(AdmissionDrop::UnknownPeer);
        assert_eq!(decide(&table, ORIGIN_ADDR, 0x777, US), unknown);
        assert_eq!(decide(&table, [192, 0, 2, 6], CONNECTING, US), unknown);
        assert_eq!(decide(&table, [192, 0, 2, 1], US, US), unknown);
    }

    #[test]
    fn a_frame_from_an_address_that_is_neither_origin_nor_neighbour_is_spoofed() {
        let table = Table::new();
        let spoofed = Admission::Drop(AdmissionDrop::SpoofedSource);
        assert_eq!(decide(&table, STRANGER_ADDR, ORIGIN, US), spoofed);
        // The source check comes before the destination: a spoofed relay is not passed on.
        assert_eq!(decide(&table, STRANGER_ADDR, ORIGIN, FAR), spoofed);
    }

    #[test]
    fn a_header_without_the_vni_flag_is_malformed() {
        let table = Table::new();
        let mut header = vxlan(ORIGIN, US);
        header[0] = 0;
        assert_eq!(
            admit(US, ORIGIN_ADDR, &header, &table),
            Admission::Drop(AdmissionDrop::Malformed)
        );
    }

    #[test]
    fn each_drop_has_its_own_rx_and_xdp_counter() {
        let drops = [
            AdmissionDrop::UnknownPeer,
            AdmissionDrop::SpoofedSource,
            AdmissionDrop::NotForUs,
            AdmissionDrop::Malformed,
        ];
        for (i, a) in drops.iter().enumerate() {
            assert!(a.rx_reason().is_drop() && a.xdp_reason().is_drop());
            for b in &drops[i + 1..] {
                assert_ne!(a.rx_reason(), b.rx_reason());
                assert_ne!(a.xdp_reason(), b.xdp_reason());
            }
        }
        assert_eq!(
            AdmissionDrop::Malformed.rx_reason(),
            Reason::RxDropMalformed
        );
        assert_eq!(
            AdmissionDrop::Malformed.xdp_reason(),
            Reason::XdpDropMalformed
        );
    }
}
