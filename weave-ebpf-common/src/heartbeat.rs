//! Fast-path heartbeats and path-MTU probes.
//!
//! Once a second a router writes, for each directly connected peer, a heartbeat frame into
//! its bridge port towards the peers (`vethwe-bridge`); `from_bridge` addresses it to the
//! peer named in its payload exactly as it addresses a copy of a broadcast (the next hop's
//! MAC on the underlay, the peer's address, VNI `self | peer << 12`) and sends it. So a
//! heartbeat that arrives proves the path broadcasts, ARP and relayed copies take, not only
//! that the host's own stack can reach the peer. A probe is a heartbeat padded to a given
//! size with a round number: the largest probe of a round that arrives is the path MTU.
//!
//! The peer's receive program admits one like any frame, recognises it by its inner
//! Ethernet header (all-zero destination, ethertype [`HEARTBEAT_ETHERTYPE`]), counts it for
//! the sender (`PEER_COUNTERS`: heartbeats, and the newest probe round with its largest
//! packet) and drops it.
//!
//! Inner frame: Ethernet header (zero destination, any source, the ethertype), then the
//! payload: the receiver's short ID (big endian u16), the probe round (big endian u32;
//! 0 for a plain heartbeat), then padding up to the probe's size.

use crate::headers::{ETH_HLEN, IPV4_HLEN, UDP_HLEN, VXLAN_HLEN};

/// Destination MAC of a heartbeat's inner frame: all zero, which no interface has.
pub const HEARTBEAT_DST_MAC: [u8; 6] = [0; 6];
/// Ethertype of a heartbeat's inner frame (IEEE 802 local experimental ethertype 1).
pub const HEARTBEAT_ETHERTYPE: u16 = 0x88b5;
/// Length of a heartbeat's payload: the receiver's short ID and the probe round.
pub const HEARTBEAT_PAYLOAD_LEN: usize = 6;
/// Length of a plain heartbeat's inner frame.
pub const HEARTBEAT_FRAME_LEN: usize = ETH_HLEN + HEARTBEAT_PAYLOAD_LEN;
/// What VXLAN adds to an inner frame in the outer IPv4 packet: IPv4, UDP and VXLAN headers.
pub const OUTER_IP_OVERHEAD: usize = IPV4_HLEN + UDP_HLEN + VXLAN_HLEN;

/// Writes a heartbeat's inner Ethernet header and payload to the start of `frame` (at
/// least [`HEARTBEAT_FRAME_LEN`] bytes; the rest is padding, left as it is). `round` 0 is a
/// plain heartbeat.
pub fn write_heartbeat_frame(frame: &mut [u8], receiver: u16, round: u32) {
    frame[..6].copy_from_slice(&HEARTBEAT_DST_MAC);
    frame[12..14].copy_from_slice(&HEARTBEAT_ETHERTYPE.to_be_bytes());
    frame[ETH_HLEN..ETH_HLEN + 2].copy_from_slice(&receiver.to_be_bytes());
    frame[ETH_HLEN + 2..ETH_HLEN + 6].copy_from_slice(&round.to_be_bytes());
}

/// The (receiver short ID, probe round) of a heartbeat's payload.
#[inline(always)]
pub fn read_heartbeat_payload(payload: &[u8; HEARTBEAT_PAYLOAD_LEN]) -> (u16, u32) {
    (
        u16::from_be_bytes([payload[0], payload[1]]),
        u32::from_be_bytes([payload[2], payload[3], payload[4], payload[5]]),
    )
}

/// Whether an inner Ethernet header is a heartbeat's (byte by byte: no `memcmp` in BPF).
#[inline(always)]
pub fn is_heartbeat(inner_eth: &[u8; ETH_HLEN]) -> bool {
    let [hi, lo] = HEARTBEAT_ETHERTYPE.to_be_bytes();
    inner_eth[0] | inner_eth[1] | inner_eth[2] | inner_eth[3] | inner_eth[4] | inner_eth[5] == 0
        && inner_eth[12] == hi
        && inner_eth[13] == lo
}

/// Whether probe round `a` is newer than `b`. Rounds grow with the sender's clock (so a
/// restarted sender continues above its old rounds) and wrap: the comparison is modulo 2^32.
#[inline(always)]
pub const fn newer_round(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Records probe `round` of outer length `len` in a per-CPU (round, largest) pair: a newer
/// round replaces it, a probe of the same round keeps the larger length.
#[inline(always)]
pub fn record_probe(round: &mut u32, largest: &mut u32, probe_round: u32, len: u32) {
    if *round == 0 || newer_round(probe_round, *round) {
        *round = probe_round;
        *largest = len;
    } else if probe_round == *round && len > *largest {
        *largest = len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_names_its_receiver_and_round_and_is_recognised() {
        let mut frame = [0xaau8; 100];
        write_heartbeat_frame(&mut frame, 0x456, 77);
        let eth: [u8; ETH_HLEN] = frame[..ETH_HLEN].try_into().unwrap();
        assert!(is_heartbeat(&eth));
        let payload: [u8; HEARTBEAT_PAYLOAD_LEN] =
            frame[ETH_HLEN..HEARTBEAT_FRAME_LEN].try_into().unwrap();
        assert_eq!(read_heartbeat_payload(&payload), (0x456, 77));
        assert_eq!(frame[HEARTBEAT_FRAME_LEN], 0xaa, "padding is left alone");
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

    #[test]
    fn rounds_compare_across_the_wrap() {
        assert!(newer_round(2, 1));
        assert!(!newer_round(1, 2));
        assert!(!newer_round(5, 5));
        assert!(newer_round(3, u32::MAX - 2), "just past the wrap");
        assert!(!newer_round(u32::MAX - 2, 3));
    }

    #[test]
    fn a_round_keeps_its_largest_probe_and_a_newer_round_starts_over() {
        let (mut round, mut largest) = (0, 0);
        record_probe(&mut round, &mut largest, 10, 1400);
        record_probe(&mut round, &mut largest, 10, 1500);
        record_probe(&mut round, &mut largest, 10, 600);
        assert_eq!((round, largest), (10, 1500));
        record_probe(&mut round, &mut largest, 9, 9000);
        assert_eq!((round, largest), (10, 1500), "a late probe of an older round");
        record_probe(&mut round, &mut largest, 11, 800);
        assert_eq!((round, largest), (11, 800));
    }
}
