//! Broadcast IDs: the mark that lets a router pass each broadcast on at most once.
//!
//! A broadcast is passed on along its origin's tree, as each router computes that tree.
//! While a mesh forms, routers' views differ, and a broadcast can come round a loop of
//! routers again and again, copied at every turn. So the origin stamps each broadcast it
//! floods with an ID in the VXLAN header's first reserved field (bytes 1–3, RFC 7348), the
//! routers that pass it on leave the field as it is, and a router that receives the same
//! (origin, ID) again within [`DUPLICATE_WINDOW_NS`] drops it: neither delivered again nor
//! passed on. An ID of zero is no ID (frames of routers that stamp none are never taken for
//! duplicates).
//!
//! An ID is 24 bits: the sending CPU's count of broadcasts (20 bits, from a random start)
//! above the CPU's number (4 bits), so two CPUs never stamp the same ID at the same count.

use crate::headers::VXLAN_HLEN;

/// Where the ID sits in the VXLAN header: the three reserved bytes after the flags.
pub const BROADCAST_ID_OFFSET: usize = 1;
/// Bits of an ID taken by the CPU number.
const CPU_BITS: u32 = 4;
/// Distinct non-zero counts an ID carries per CPU.
const COUNTS: u32 = (1 << (24 - CPU_BITS)) - 1;
/// How long a seen (origin, ID) marks the same pair as a duplicate: far longer than any
/// loop takes to come round, far shorter than a CPU takes to use up its counts (a million
/// broadcasts).
pub const DUPLICATE_WINDOW_NS: u64 = 1_000_000_000;

/// The ID of the `count`-th broadcast sent by CPU `cpu`: never zero, and the counts of one
/// CPU take a million turns to repeat.
#[inline(always)]
pub const fn broadcast_id(cpu: u32, count: u32) -> u32 {
    ((count % COUNTS + 1) << CPU_BITS) | (cpu & ((1 << CPU_BITS) - 1))
}

/// The broadcast ID of an 8-byte VXLAN header (zero: none).
#[inline(always)]
pub fn read_broadcast_id(vxlan: &[u8; VXLAN_HLEN]) -> u32 {
    u32::from_be_bytes([0, vxlan[1], vxlan[2], vxlan[3]])
}

/// Writes `id`'s low 24 bits into an 8-byte VXLAN header, leaving the flags and VNI alone.
#[inline(always)]
pub fn write_broadcast_id(vxlan: &mut [u8], id: u32) {
    let b = id.to_be_bytes();
    vxlan[BROADCAST_ID_OFFSET] = b[1];
    vxlan[BROADCAST_ID_OFFSET + 1] = b[2];
    vxlan[BROADCAST_ID_OFFSET + 2] = b[3];
}

/// A broadcast as the record of those seen is keyed: its origin and its ID.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BroadcastKey {
    pub origin: u16,
    pub _pad: u16,
    pub id: u32,
}

impl BroadcastKey {
    #[inline(always)]
    pub const fn new(origin: u16, id: u32) -> Self {
        Self {
            origin,
            _pad: 0,
            id,
        }
    }
}

/// Whether a broadcast first seen at `seen_at_ns` (coarse monotonic time) and received again
/// at `now_ns` is the same broadcast come round again, not a new one that happens to carry
/// the same ID.
#[inline(always)]
pub const fn is_duplicate(seen_at_ns: u64, now_ns: u64) -> bool {
    now_ns.saturating_sub(seen_at_ns) < DUPLICATE_WINDOW_NS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::{read_vxlan_vni, write_vxlan_header};

    #[test]
    fn an_id_is_never_zero_and_fits_the_reserved_field() {
        for cpu in [0, 1, 15, 16, 255] {
            for count in [0, 1, COUNTS - 1, COUNTS, COUNTS + 1, u32::MAX] {
                let id = broadcast_id(cpu, count);
                assert_ne!(id, 0, "cpu {cpu} count {count}");
                assert!(id < 1 << 24, "cpu {cpu} count {count}: {id:#x}");
            }
        }
    }

    #[test]
    fn two_cpus_at_the_same_count_stamp_different_ids() {
        for count in [0, 7, COUNTS - 1] {
            assert_ne!(broadcast_id(0, count), broadcast_id(1, count));
        }
    }

    #[test]
    fn one_cpu_repeats_an_id_only_after_a_million_broadcasts() {
        let first = broadcast_id(3, 1000);
        for n in 1..COUNTS {
            assert_ne!(broadcast_id(3, 1000 + n), first, "after {n}");
        }
        assert_eq!(broadcast_id(3, 1000 + COUNTS), first);
        assert!(COUNTS > 1_000_000);
    }

    #[test]
    fn the_id_round_trips_without_touching_flags_or_vni() {
        let mut h = [0u8; VXLAN_HLEN];
        write_vxlan_header(&mut h, 0xabc123);
        assert_eq!(read_broadcast_id(&h), 0, "a plain header carries none");
        write_broadcast_id(&mut h, 0x00fe_dcba);
        assert_eq!(read_broadcast_id(&h), 0xfe_dcba);
        assert_eq!(read_vxlan_vni(&h), Some(0xabc123));
        assert_eq!(h[7], 0);
    }

    #[test]
    fn the_same_broadcast_within_the_window_is_a_duplicate_and_later_a_new_one() {
        let seen = 5_000_000_000;
        assert!(is_duplicate(seen, seen));
        assert!(is_duplicate(seen, seen + DUPLICATE_WINDOW_NS - 1));
        assert!(!is_duplicate(seen, seen + DUPLICATE_WINDOW_NS));
        // A record stamped by another CPU's slightly later coarse clock.
        assert!(is_duplicate(seen + 1_000, seen));
    }

    #[test]
    fn a_key_has_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<BroadcastKey>(), 8);
    }
}
