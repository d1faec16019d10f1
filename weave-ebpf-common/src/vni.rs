//! VXLAN network identifiers as Weave's fast datapath packs them: the 24-bit VNI carries
//! the sender's 12-bit short ID in its low bits and the receiver's in its high bits, so a
//! receiver learns which peer a frame came from without trusting the outer address.

/// Number of bits in a peer short ID.
pub const SHORT_ID_BITS: u32 = 12;
/// Number of distinct short IDs, and so the size of per-peer maps.
pub const MAX_SHORT_IDS: u32 = 1 << SHORT_ID_BITS;
/// Mask of the bits of a short ID.
pub const SHORT_ID_MASK: u16 = (MAX_SHORT_IDS - 1) as u16;

/// Packs a (source, destination) pair of short IDs into a VNI.
/// Bits above the 12 of each short ID are ignored.
#[inline(always)]
pub const fn pack(src_short_id: u16, dst_short_id: u16) -> u32 {
    (src_short_id & SHORT_ID_MASK) as u32
        | (((dst_short_id & SHORT_ID_MASK) as u32) << SHORT_ID_BITS)
}

/// Splits a VNI into (source, destination) short IDs.
#[inline(always)]
pub const fn unpack(vni: u32) -> (u16, u16) {
    (
        (vni & SHORT_ID_MASK as u32) as u16,
        ((vni >> SHORT_ID_BITS) & SHORT_ID_MASK as u32) as u16,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_places_source_low_and_destination_high() {
        assert_eq!(pack(0x001, 0x002), 0x002_001);
        assert_eq!(pack(0xfff, 0x000), 0x000_fff);
        assert_eq!(pack(0x000, 0xfff), 0xfff_000);
    }

    #[test]
    fn unpack_reverses_pack_for_every_pair_sampled() {
        for src in (0..MAX_SHORT_IDS as u16).step_by(37) {
            for dst in (0..MAX_SHORT_IDS as u16).step_by(41) {
                assert_eq!(unpack(pack(src, dst)), (src, dst));
            }
        }
    }

    #[test]
    fn pack_ignores_bits_above_twelve() {
        assert_eq!(pack(0x1001, 0xf002), pack(0x001, 0x002));
        assert!(pack(0xffff, 0xffff) < (1 << 24));
    }
}
