//! Fast-path heartbeats: small VXLAN datagrams a router sends once a second to each
//! directly connected peer on UDP 6784, from an ordinary socket, to learn whether VXLAN gets
//! through between them. The peer's receive program admits one like any frame (so the
//! per-peer receive counter of the sender moves), recognises it by its inner Ethernet
//! header and drops it.

use crate::headers::{write_vxlan_header, ETH_HLEN, VXLAN_HLEN};

/// Destination MAC of a heartbeat's inner frame: all zero, which no interface has.
pub const HEARTBEAT_DST_MAC: [u8; 6] = [0; 6];
/// Ethertype of a heartbeat's inner frame (IEEE 802 local experimental ethertype 1).
pub const HEARTBEAT_ETHERTYPE: u16 = 0x88b5;
/// Length of a heartbeat's UDP payload: the VXLAN header and the inner Ethernet header.
pub const HEARTBEAT_LEN: usize = VXLAN_HLEN + ETH_HLEN;

/// The UDP payload of a heartbeat with VNI `vni` (`vni::pack(sender, receiver)`, as for
/// any frame from the sender to the receiver).
pub fn heartbeat_datagram(vni: u32) -> [u8; HEARTBEAT_LEN] {
    let mut out = [0u8; HEARTBEAT_LEN];
    write_vxlan_header(&mut out[..VXLAN_HLEN], vni);
    let eth = &mut out[VXLAN_HLEN..];
    eth[..6].copy_from_slice(&HEARTBEAT_DST_MAC);
    eth[12..14].copy_from_slice(&HEARTBEAT_ETHERTYPE.to_be_bytes());
    out
}

/// Whether an inner Ethernet header is a heartbeat's (byte by byte: no `memcmp` in BPF).
#[inline(always)]
pub fn is_heartbeat(inner_eth: &[u8; ETH_HLEN]) -> bool {
    let [hi, lo] = HEARTBEAT_ETHERTYPE.to_be_bytes();
    inner_eth[0] | inner_eth[1] | inner_eth[2] | inner_eth[3] | inner_eth[4] | inner_eth[5] == 0
        && inner_eth[12] == hi
        && inner_eth[13] == lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::read_vxlan_vni;

    #[test]
    fn a_heartbeat_carries_the_vni_and_is_recognised() {
        let id = crate::vni::pack(0x123, 0x456);
        let d = heartbeat_datagram(id);
        let vx: [u8; VXLAN_HLEN] = d[..VXLAN_HLEN].try_into().unwrap();
        assert_eq!(read_vxlan_vni(&vx), Some(id));
        let eth: [u8; ETH_HLEN] = d[VXLAN_HLEN..].try_into().unwrap();
        assert!(is_heartbeat(&eth));
    }

    #[test]
    fn ordinary_frames_are_not_heartbeats() {
        let mut eth = [0u8; ETH_HLEN];
        eth[12..14].copy_from_slice(&crate::headers::ETH_P_IP.to_be_bytes());
        assert!(!is_heartbeat(&eth), "an IPv4 frame to a zero MAC");
        eth[12..14].copy_from_slice(&HEARTBEAT_ETHERTYPE.to_be_bytes());
        eth[5] = 1;
        assert!(!is_heartbeat(&eth), "the ethertype to a real MAC");
        eth[5] = 0;
        assert!(is_heartbeat(&eth));
    }
}
