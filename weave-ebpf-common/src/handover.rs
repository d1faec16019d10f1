//! A frame the fast path hands to the sleeve: relayed to us over VXLAN for a peer whose
//! frames the sleeve carries (its fast path fell back), so the kernel cannot pass it on.
//!
//! `rx_from_underlay` decapsulates it, tags it with the VXLAN header's two short IDs as two
//! VLAN tags (`bpf_skb_vlan_push`: first the destination, which the second push moves into
//! the frame, then the origin, which the TAP writes in front of it from the skb's
//! metadata), and sends it out of the sleeve's TAP, where the sleeve reads it:
//!
//! ```text
//! | dst MAC | src MAC | 0x88a8 | origin | 0x8100 | destination | ethertype | payload
//! ```
//!
//! The sleeve takes the tags off and routes the frame on as the origin's
//! ([`read_handover`]). Nothing else reaches the TAP with these two tags in front: the
//! bridge forwards it what containers send, and the TX program lets out only IPv4 and ARP
//! (a container's own VLAN tag would put 0x8100 where the TX program reads the ethertype).

use crate::headers::ETH_HLEN;

/// Tag protocol of the outer tag (802.1ad), whose VLAN ID is the origin.
pub const HANDOVER_ORIGIN_TPID: u16 = 0x88a8;
/// Tag protocol of the inner tag (802.1Q), whose VLAN ID is the destination.
pub const HANDOVER_DESTINATION_TPID: u16 = 0x8100;
/// Bytes the two tags add after the MAC addresses.
pub const HANDOVER_TAGS_LEN: usize = 8;

/// The origin and destination short IDs of a handed-over frame (an Ethernet frame, the
/// two tags after its MAC addresses), or `None` when `frame` is not one: other tag
/// protocols, priority bits set, or origin and destination the same (no unicast route).
pub fn read_handover(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.len() < ETH_HLEN + HANDOVER_TAGS_LEN {
        return None;
    }
    let word = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    if word(12) != HANDOVER_ORIGIN_TPID || word(16) != HANDOVER_DESTINATION_TPID {
        return None;
    }
    let (origin, destination) = (word(14), word(18));
    // The TCIs hold 12-bit short IDs and nothing else.
    if origin >> 12 != 0 || destination >> 12 != 0 || origin == destination {
        return None;
    }
    Some((origin, destination))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(origin: u16, destination: u16) -> [u8; 24] {
        let mut f = [0u8; 24];
        f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&HANDOVER_ORIGIN_TPID.to_be_bytes());
        f[14..16].copy_from_slice(&origin.to_be_bytes());
        f[16..18].copy_from_slice(&HANDOVER_DESTINATION_TPID.to_be_bytes());
        f[18..20].copy_from_slice(&destination.to_be_bytes());
        f[20..22].copy_from_slice(&0x0800u16.to_be_bytes());
        f
    }

    #[test]
    fn a_handed_over_frame_names_its_origin_and_destination() {
        assert_eq!(read_handover(&tagged(0x123, 0xabc)), Some((0x123, 0xabc)));
    }

    #[test]
    fn anything_else_is_not_a_handover() {
        // An untagged IPv4 frame, one 802.1Q tag, the tags the other way round.
        let mut plain = tagged(1, 2);
        plain[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(read_handover(&plain), None);
        let mut single = tagged(1, 2);
        single[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        single[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(read_handover(&single), None);
        let mut swapped = tagged(1, 2);
        swapped[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        swapped[16..18].copy_from_slice(&0x88a8u16.to_be_bytes());
        assert_eq!(read_handover(&swapped), None);
        // Priority bits, the same peer at both ends, too short.
        assert_eq!(read_handover(&tagged(0x2001, 2)), None);
        assert_eq!(read_handover(&tagged(5, 5)), None);
        assert_eq!(read_handover(&tagged(1, 2)[..20]), None);
    }
}
