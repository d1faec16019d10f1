//! Fast-path heartbeats and path-MTU probes.
//!
//! Once a second a router writes, for each directly connected peer (of two routers that
//! share the duty, only one sends while the other's arrive), a heartbeat frame into
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
//! 0 for a plain heartbeat), a flags byte and a reserved byte, then padding up to the
//! probe's size.
//!
//! Echoes. A plain heartbeat whose flags ask for one ([`HEARTBEAT_ECHO_REQUEST`]) is
//! answered by the receiving *kernel*: its receive program turns the frame round in place
//! (same length: never larger than the request), addressed to the sender as its own
//! heartbeats would be, with the payload naming the sender and flagged
//! [`HEARTBEAT_ECHO`], and counts it. The sender's receive program counts an echo for the
//! peer (`PEER_COUNTERS.rx_heartbeat_echoes`) and never answers one. So a peer whose
//! router process is gone (killed, being upgraded) while its programs still run keeps
//! proving its data path ([`echo_action`] is the decision). Only an admitted peer's
//! heartbeat that came straight from its own address and names us is answered, one echo
//! per request: no reflection towards another address, no amplification.
//!
//! Versions: a build before echoes sends 6-byte payloads (no flags: never answered) and
//! reads only the first 6 bytes of ours (the flags are ignored); it never asks for echoes,
//! so it never receives one. Unknown flag bits are ignored.

use crate::headers::{ETH_HLEN, IPV4_HLEN, UDP_HLEN, VXLAN_HLEN};

/// Destination MAC of a heartbeat's inner frame: all zero, which no interface has.
pub const HEARTBEAT_DST_MAC: [u8; 6] = [0; 6];
/// Ethertype of a heartbeat's inner frame (IEEE 802 local experimental ethertype 1).
pub const HEARTBEAT_ETHERTYPE: u16 = 0x88b5;
/// Length of a heartbeat's payload every build reads: the receiver's short ID and the probe
/// round.
pub const HEARTBEAT_PAYLOAD_LEN: usize = 6;
/// Offset of the flags byte in the inner frame (after the payload every build reads).
pub const HEARTBEAT_FLAGS_OFFSET: usize = ETH_HLEN + HEARTBEAT_PAYLOAD_LEN;
/// Length of a plain heartbeat's inner frame: the payload, the flags and a reserved byte.
pub const HEARTBEAT_FRAME_LEN: usize = HEARTBEAT_FLAGS_OFFSET + 2;
/// Flag: the sender asks the receiving kernel to answer this plain heartbeat.
pub const HEARTBEAT_ECHO_REQUEST: u8 = 0x01;
/// Flag: this frame is an echo of a heartbeat of the receiver's (never answered).
pub const HEARTBEAT_ECHO: u8 = 0x02;
/// What VXLAN adds to an inner frame in the outer IPv4 packet: IPv4, UDP and VXLAN headers.
pub const OUTER_IP_OVERHEAD: usize = IPV4_HLEN + UDP_HLEN + VXLAN_HLEN;

/// Writes a heartbeat's inner Ethernet header and payload to the start of `frame` (at
/// least [`HEARTBEAT_FRAME_LEN`] bytes; the rest is padding, left as it is). `round` 0 is a
/// plain heartbeat, which asks for an echo; a probe does not.
pub fn write_heartbeat_frame(frame: &mut [u8], receiver: u16, round: u32) {
    frame[..6].copy_from_slice(&HEARTBEAT_DST_MAC);
    frame[12..14].copy_from_slice(&HEARTBEAT_ETHERTYPE.to_be_bytes());
    frame[ETH_HLEN..ETH_HLEN + 2].copy_from_slice(&receiver.to_be_bytes());
    frame[ETH_HLEN + 2..ETH_HLEN + 6].copy_from_slice(&round.to_be_bytes());
    frame[HEARTBEAT_FLAGS_OFFSET] = if round == 0 { HEARTBEAT_ECHO_REQUEST } else { 0 };
    frame[HEARTBEAT_FLAGS_OFFSET + 1] = 0;
}

/// What the receive program does with an admitted heartbeat, beyond counting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoAction {
    /// Nothing: a probe, an older build's heartbeat, one for another receiver, or one that
    /// did not come straight from its sender.
    None,
    /// Answer it: turn it round to its sender, payload rewritten by [`write_echo_payload`].
    Answer,
    /// It is an echo of one of ours: count it for the peer, answer nothing.
    Echoed,
}

/// The decision for a heartbeat from admitted peer `src` (payload and, when the frame has
/// them, the flags), received by `own` short ID; `direct` when the outer source is the
/// peer's own address and the peer is a direct one (an echo goes there and nowhere else).
#[inline(always)]
pub fn echo_action(
    payload: &[u8; HEARTBEAT_PAYLOAD_LEN],
    flags: Option<u8>,
    own: u16,
    direct: bool,
) -> EchoAction {
    let Some(flags) = flags else {
        return EchoAction::None;
    };
    let (receiver, round) = read_heartbeat_payload(payload);
    if receiver != own || round != 0 {
        return EchoAction::None;
    }
    if flags & HEARTBEAT_ECHO != 0 {
        EchoAction::Echoed
    } else if flags & HEARTBEAT_ECHO_REQUEST != 0 && direct {
        EchoAction::Answer
    } else {
        EchoAction::None
    }
}

/// The payload and flags of the echo of a heartbeat from `sender`: the sender named as
/// the receiver, round 0, flagged an echo.
#[inline(always)]
pub fn write_echo_payload(sender: u16) -> [u8; HEARTBEAT_PAYLOAD_LEN + 2] {
    let [hi, lo] = sender.to_be_bytes();
    [hi, lo, 0, 0, 0, 0, HEARTBEAT_ECHO, 0]
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

/// The probe round to send after `prev` (0: none sent yet by this process) when the
/// sender's clock reads `clock` (its wall clock in 10 ms steps, wrapped to 32 bits): the
/// clock when it is newer, else one more than `prev`. The first round of a process is its
/// clock whatever `prev` would say, so that a restarted sender continues above the rounds
/// of its earlier run, which the peer's receive program still holds; never 0 (no round).
pub const fn next_round(clock: u32, prev: u32) -> u32 {
    let next = if prev == 0 || newer_round(clock, prev) {
        clock
    } else {
        prev.wrapping_add(1)
    };
    if next == 0 {
        1
    } else {
        next
    }
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
            frame[ETH_HLEN..HEARTBEAT_FLAGS_OFFSET].try_into().unwrap();
        assert_eq!(read_heartbeat_payload(&payload), (0x456, 77));
        assert_eq!(frame[HEARTBEAT_FRAME_LEN], 0xaa, "padding is left alone");
    }

    #[test]
    fn a_plain_heartbeat_asks_for_an_echo_and_a_probe_does_not() {
        let mut frame = [0u8; 64];
        write_heartbeat_frame(&mut frame, 3, 0);
        assert_eq!(frame[HEARTBEAT_FLAGS_OFFSET], HEARTBEAT_ECHO_REQUEST);
        write_heartbeat_frame(&mut frame, 3, 9);
        assert_eq!(frame[HEARTBEAT_FLAGS_OFFSET], 0);
    }

    #[test]
    fn only_a_direct_request_naming_us_is_answered_and_an_echo_never() {
        let payload = |receiver: u16, round: u32| {
            let mut frame = [0u8; HEARTBEAT_FRAME_LEN];
            write_heartbeat_frame(&mut frame, receiver, round);
            frame[ETH_HLEN..HEARTBEAT_FLAGS_OFFSET].try_into().unwrap()
        };
        let req = Some(HEARTBEAT_ECHO_REQUEST);
        assert_eq!(echo_action(&payload(5, 0), req, 5, true), EchoAction::Answer);
        assert_eq!(echo_action(&payload(5, 0), req, 5, false), EchoAction::None, "relayed");
        assert_eq!(echo_action(&payload(6, 0), req, 5, true), EchoAction::None, "not ours");
        assert_eq!(echo_action(&payload(5, 7), req, 5, true), EchoAction::None, "a probe");
        assert_eq!(echo_action(&payload(5, 0), None, 5, true), EchoAction::None, "old build");
        assert_eq!(echo_action(&payload(5, 0), Some(0), 5, true), EchoAction::None);
        let echo = write_echo_payload(5);
        let (p, flags) = (echo[..6].try_into().unwrap(), Some(echo[6]));
        assert_eq!(echo_action(&p, flags, 5, true), EchoAction::Echoed);
        assert_eq!(
            echo_action(&p, Some(HEARTBEAT_ECHO | HEARTBEAT_ECHO_REQUEST), 5, true),
            EchoAction::Echoed,
            "an echo is never answered, whatever else it asks"
        );
        assert_eq!(read_heartbeat_payload(&p), (5, 0));
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
    fn a_restarted_sender_starts_above_its_earlier_rounds_whatever_the_clock_reads() {
        // A clock in the upper half of the 32-bit range is "older" than 0: the first round
        // must still be the clock, not 1 (the peer holds the earlier run's rounds).
        for clock in [3_563_240_864u32, 17, u32::MAX, 1 << 31] {
            let earlier_run_last = next_round(clock.wrapping_sub(1500), 0).wrapping_add(40);
            let first = next_round(clock, 0);
            assert_eq!(first, clock.max(1));
            assert!(
                newer_round(first, earlier_run_last),
                "clock {clock}: {first} after {earlier_run_last}"
            );
        }
        assert_eq!(next_round(0, 0), 1, "never 0");
        assert_eq!(next_round(500, 400), 500, "the clock when it moved on");
        assert_eq!(next_round(500, 500), 501, "one more within the same 10 ms");
        assert_eq!(next_round(500, 507), 508, "one more when rounds ran ahead");
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
