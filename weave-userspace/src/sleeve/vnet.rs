//! The virtio-net header in front of every frame the sleeve carries, checked before a
//! received frame goes into the TAP: the kernel acts on it (checksum offsets, segmentation),
//! so a peer must not choose offsets outside its frame or offloads the TAP was not set up for.
//!
//! ```text
//! 0       1          2         4          6            8             10
//! | flags | gso_type | hdr_len | gso_size | csum_start | csum_offset |   (little endian)
//! ```

use super::tap::VNET_HDR_LEN;

/// The frame's checksum is left to finish from `csum_start`, stored at `csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// The checksum was verified.
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_ECN: u8 = 0x80;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Why a frame's virtio-net header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VnetError {
    #[error("shorter than a virtio-net and an Ethernet header")]
    Short,
    #[error("unknown flags {0:#x}")]
    Flags(u8),
    #[error("segmentation type {0:#x} the TAP does not offload")]
    GsoType(u8),
    #[error("segmentation of {gso_type:#x} over ethertype {ethertype:#06x}")]
    GsoProtocol { gso_type: u8, ethertype: u16 },
    #[error("segmentation without a checksum to finish")]
    GsoWithoutChecksum,
    #[error("segment size {0} with segmentation type {1:#x}")]
    GsoSize(u16, u8),
    #[error("header length {hdr_len} beyond the frame's {frame_len} bytes")]
    HeaderLength { hdr_len: u16, frame_len: usize },
    #[error("checksum at {start}+{offset} outside the frame's {frame_len} bytes")]
    Checksum {
        start: u16,
        offset: u16,
        frame_len: usize,
    },
}

/// Checks the virtio-net header at the start of `payload` against the Ethernet frame after it.
pub fn check(payload: &[u8]) -> Result<(), VnetError> {
    if payload.len() < VNET_HDR_LEN + ETH_HLEN {
        return Err(VnetError::Short);
    }
    let (h, frame) = payload.split_at(VNET_HDR_LEN);
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let (flags, gso_type) = (h[0], h[1]);
    let (hdr_len, gso_size, csum_start, csum_offset) = (u16_at(2), u16_at(4), u16_at(6), u16_at(8));
    if flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
        return Err(VnetError::Flags(flags));
    }
    if flags & F_NEEDS_CSUM != 0 {
        let end = usize::from(csum_start) + usize::from(csum_offset) + 2;
        if usize::from(csum_start) < ETH_HLEN || end > frame.len() {
            return Err(VnetError::Checksum {
                start: csum_start,
                offset: csum_offset,
                frame_len: frame.len(),
            });
        }
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    match gso_type & !GSO_ECN {
        GSO_NONE if gso_type == GSO_NONE => {
            if gso_size != 0 {
                return Err(VnetError::GsoSize(gso_size, gso_type));
            }
        }
        t @ (GSO_TCPV4 | GSO_TCPV6) => {
            let expected = if t == GSO_TCPV4 { ETH_P_IP } else { ETH_P_IPV6 };
            if ethertype != expected {
                return Err(VnetError::GsoProtocol {
                    gso_type,
                    ethertype,
                });
            }
            if flags & F_NEEDS_CSUM == 0 {
                return Err(VnetError::GsoWithoutChecksum);
            }
            if gso_size == 0 {
                return Err(VnetError::GsoSize(gso_size, gso_type));
            }
        }
        _ => return Err(VnetError::GsoType(gso_type)),
    }
    if usize::from(hdr_len) > frame.len() {
        return Err(VnetError::HeaderLength {
            hdr_len,
            frame_len: frame.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header and a frame of `len` bytes with `ethertype`.
    fn payload(header: [u8; VNET_HDR_LEN], ethertype: u16, len: usize) -> Vec<u8> {
        let mut p = header.to_vec();
        let mut frame = vec![0u8; len];
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        p.extend_from_slice(&frame);
        p
    }

    fn header(
        flags: u8,
        gso: u8,
        hdr_len: u16,
        gso_size: u16,
        start: u16,
        offset: u16,
    ) -> [u8; 10] {
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = flags;
        h[1] = gso;
        h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
        h[4..6].copy_from_slice(&gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&start.to_le_bytes());
        h[8..10].copy_from_slice(&offset.to_le_bytes());
        h
    }

    #[test]
    fn what_a_tap_hands_out_passes() {
        // A plain frame, a frame with its TCP checksum to finish, a 64 KiB TSO frame (ECN too).
        assert_eq!(check(&payload([0; 10], ETH_P_IP, 60)), Ok(()));
        assert_eq!(
            check(&payload(
                header(F_NEEDS_CSUM, 0, 0, 0, 34, 16),
                ETH_P_IP,
                1514
            )),
            Ok(())
        );
        assert_eq!(
            check(&payload(
                header(F_DATA_VALID, 0, 0, 0, 0, 0),
                ETH_P_IP,
                1514
            )),
            Ok(())
        );
        for gso in [GSO_TCPV4, GSO_TCPV4 | GSO_ECN] {
            assert_eq!(
                check(&payload(
                    header(F_NEEDS_CSUM, gso, 66, 1448, 34, 16),
                    ETH_P_IP,
                    65_000
                )),
                Ok(())
            );
        }
        assert_eq!(
            check(&payload(
                header(F_NEEDS_CSUM, GSO_TCPV6, 86, 1428, 54, 16),
                ETH_P_IPV6,
                9000
            )),
            Ok(())
        );
    }

    #[test]
    fn offsets_outside_the_frame_and_offloads_not_set_up_are_refused() {
        let mut short = payload([0; 10], ETH_P_IP, 14);
        short.pop();
        assert_eq!(check(&short), Err(VnetError::Short));
        assert_eq!(
            check(&payload(header(0x84, 0, 0, 0, 0, 0), ETH_P_IP, 60)),
            Err(VnetError::Flags(0x84))
        );
        // The checksum's place beyond the frame's end, or inside the Ethernet header.
        for (start, offset) in [(50, 16), (60, 0), (u16::MAX, u16::MAX), (0, 16)] {
            assert!(matches!(
                check(&payload(
                    header(F_NEEDS_CSUM, 0, 0, 0, start, offset),
                    ETH_P_IP,
                    60
                )),
                Err(VnetError::Checksum { .. })
            ));
        }
        // UDP fragmentation offload, UDP segmentation, ECN alone: not what the TAP was set up for.
        for gso in [3, 5, GSO_ECN, 0x42] {
            assert!(matches!(
                check(&payload(
                    header(F_NEEDS_CSUM, gso, 0, 1400, 34, 6),
                    ETH_P_IP,
                    2000
                )),
                Err(VnetError::GsoType(_))
            ));
        }
        // TCP segmentation of something that is not IPv4, without a checksum, of size zero.
        assert!(matches!(
            check(&payload(
                header(F_NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, 16),
                0x0806,
                3000
            )),
            Err(VnetError::GsoProtocol { .. })
        ));
        assert_eq!(
            check(&payload(
                header(0, GSO_TCPV4, 66, 1448, 0, 0),
                ETH_P_IP,
                3000
            )),
            Err(VnetError::GsoWithoutChecksum)
        );
        assert!(matches!(
            check(&payload(
                header(F_NEEDS_CSUM, GSO_TCPV4, 66, 0, 34, 16),
                ETH_P_IP,
                3000
            )),
            Err(VnetError::GsoSize(0, _))
        ));
        assert!(matches!(
            check(&payload(header(0, 0, 0, 1448, 0, 0), ETH_P_IP, 3000)),
            Err(VnetError::GsoSize(1448, 0))
        ));
        assert!(matches!(
            check(&payload(
                header(F_NEEDS_CSUM, GSO_TCPV4, 4000, 1448, 34, 16),
                ETH_P_IP,
                3000
            )),
            Err(VnetError::HeaderLength { .. })
        ));
    }
}
