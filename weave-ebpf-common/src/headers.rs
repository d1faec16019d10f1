//! Header layouts of the VXLAN encapsulation and a pure builder for the outer headers,
//! shared by the TX program (which writes them) and the tests (which check them).
//!
//! On the wire an encapsulated frame is
//! `outer Ethernet (14) | outer IPv4 (20) | UDP (8) | VXLAN (8) | inner Ethernet frame`.

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const VXLAN_HLEN: usize = 8;
/// Everything in front of the inner Ethernet frame.
pub const OUTER_HLEN: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN + VXLAN_HLEN;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_TCP: u8 = 6;

/// VXLAN flags byte: the "VNI is valid" bit.
pub const VXLAN_FLAG_VNI: u8 = 0x08;
/// IPv4 "don't fragment", in the flags/fragment-offset field (host order).
pub const IPV4_DONT_FRAGMENT: u16 = 0x4000;
/// IPv4 "more fragments" and the fragment offset, in the same field (host order).
pub const IPV4_FRAGMENT_MASK: u16 = 0x3fff;
/// TTL of the outer IPv4 header.
pub const OUTER_TTL: u8 = 64;
/// Outer UDP source ports are drawn from this range (RFC 7348), for flow entropy.
pub const SOURCE_PORT_MIN: u16 = 49152;

pub const ARP_OP_REQUEST: u16 = 1;
pub const ARP_OP_REPLY: u16 = 2;
/// Length of an Ethernet/IPv4 ARP packet after the Ethernet header.
pub const ARP_IPV4_LEN: usize = 28;

/// What the outer headers of one encapsulated frame say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OuterHeaders {
    pub src_ipv4: [u8; 4],
    pub dst_ipv4: [u8; 4],
    pub src_port: u16,
    pub vni: u32,
    /// Length of the inner Ethernet frame.
    pub inner_len: u16,
}

/// A source port in `SOURCE_PORT_MIN..=65535` from a flow hash.
#[inline(always)]
pub const fn source_port_from_hash(hash: u32) -> u16 {
    SOURCE_PORT_MIN | (hash as u16 & 0x3fff)
}

/// Bytes of an IPv4 packet [`ipv4_flow_hash`] reads: the header without options and the
/// four bytes after it (the ports of TCP and UDP).
pub const FLOW_BYTES: usize = IPV4_HLEN + 4;

/// A hash of the flow of an IPv4 packet (`packet`: its first [`FLOW_BYTES`]), for the
/// outer source port of a frame the kernel gave no hash (ICMP, a socket without one): the
/// addresses and protocol, and the ports of TCP and UDP. A fragment, or a header with
/// options, is hashed without ports, so every fragment of a datagram takes one port. All
/// bits are mixed: the port takes the low ones.
#[inline(always)]
pub fn ipv4_flow_hash(packet: &[u8; FLOW_BYTES]) -> u32 {
    let addr = |at: usize| {
        u32::from_be_bytes([packet[at], packet[at + 1], packet[at + 2], packet[at + 3]]) as u64
    };
    let proto = packet[9];
    let whole = u16::from_be_bytes([packet[6], packet[7]]) & IPV4_FRAGMENT_MASK == 0;
    let plain_header = packet[0] & 0x0f == (IPV4_HLEN / 4) as u8;
    let ports = if whole && plain_header && (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
        addr(IPV4_HLEN)
    } else {
        0
    };
    let mut h = (addr(12) << 32 | addr(16))
        ^ (ports << 8 | proto as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // The finaliser of MurmurHash3 (64 bits).
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h as u32
}

/// The Internet checksum of an IPv4 header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_checksum(header: &[u8; IPV4_HLEN]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < IPV4_HLEN {
        sum += u16::from_be_bytes([header[i], header[i + 1]]) as u32;
        i += 2;
    }
    // Ten 16-bit words sum to at most 0x9_fff6: two folds always suffice. A fixed number
    // of folds (rather than a loop until the carry is gone) keeps the BPF verifier happy.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The checksum of an IPv4 header once `dst` is written into it, from its checksum with a
/// zero destination (RFC 1624: adding words to the ones' complement sum). Lets a program
/// that sends one frame to many peers build the header once and only patch it per peer.
#[inline(always)]
pub fn ipv4_checksum_with_dst(checksum_zero_dst: u16, dst: [u8; 4]) -> u16 {
    let mut sum = (!checksum_zero_dst) as u32
        + u16::from_be_bytes([dst[0], dst[1]]) as u32
        + u16::from_be_bytes([dst[2], dst[3]]) as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Writes the outer Ethernet, IPv4, UDP and VXLAN headers. The outer Ethernet addresses
/// are left zero: the neighbour subsystem fills them when the frame is redirected
/// (`bpf_redirect_neigh`). DF is set, the UDP checksum is zero (allowed for IPv4 and what
/// Weave sends), the IPv4 checksum is computed.
#[inline(always)]
pub fn write_outer_headers(out: &mut [u8; OUTER_HLEN], h: &OuterHeaders) {
    let ip_total = (IPV4_HLEN + UDP_HLEN + VXLAN_HLEN) as u16 + h.inner_len;
    let udp_len = (UDP_HLEN + VXLAN_HLEN) as u16 + h.inner_len;
    let mut i = 0;
    while i < ETH_HLEN - 2 {
        out[i] = 0;
        i += 1;
    }
    out[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());

    let mut ip = [0u8; IPV4_HLEN];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
    ip[4..6].copy_from_slice(&[0, 0]);
    ip[6..8].copy_from_slice(&IPV4_DONT_FRAGMENT.to_be_bytes());
    ip[8] = OUTER_TTL;
    ip[9] = IPPROTO_UDP;
    ip[12..16].copy_from_slice(&h.src_ipv4);
    ip[16..20].copy_from_slice(&h.dst_ipv4);
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    out[ETH_HLEN..ETH_HLEN + IPV4_HLEN].copy_from_slice(&ip);

    let udp = ETH_HLEN + IPV4_HLEN;
    out[udp..udp + 2].copy_from_slice(&h.src_port.to_be_bytes());
    out[udp + 2..udp + 4].copy_from_slice(&crate::VXLAN_PORT.to_be_bytes());
    out[udp + 4..udp + 6].copy_from_slice(&udp_len.to_be_bytes());
    out[udp + 6..udp + 8].copy_from_slice(&[0, 0]);

    let vx = udp + UDP_HLEN;
    write_vxlan_header(&mut out[vx..vx + VXLAN_HLEN], h.vni);
}

/// Writes an 8-byte VXLAN header carrying `vni`.
#[inline(always)]
pub fn write_vxlan_header(out: &mut [u8], vni: u32) {
    out[0] = VXLAN_FLAG_VNI;
    out[1] = 0;
    out[2] = 0;
    out[3] = 0;
    out[4] = (vni >> 16) as u8;
    out[5] = (vni >> 8) as u8;
    out[6] = vni as u8;
    out[7] = 0;
}

/// The VNI of an 8-byte VXLAN header, or `None` when the VNI flag is not set.
#[inline(always)]
pub fn read_vxlan_vni(header: &[u8; VXLAN_HLEN]) -> Option<u32> {
    if header[0] & VXLAN_FLAG_VNI == 0 {
        return None;
    }
    Some(((header[4] as u32) << 16) | ((header[5] as u32) << 8) | header[6] as u32)
}

/// Whether an Ethernet address is a group (broadcast or multicast) address.
#[inline(always)]
pub const fn is_group_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

#[cfg(test)]
mod tests {

    fn packet(src: [u8; 4], dst: [u8; 4], proto: u8, ports: [u8; 4]) -> [u8; FLOW_BYTES] {
        let mut p = [0u8; FLOW_BYTES];
        p[0] = 0x45;
        p[6] = 0x40;
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..24].copy_from_slice(&ports);
        p
    }

    /// A UDP datagram from 10.2.1.1:40000 to 10.2.1.2:5001.
    fn udp_flow() -> [u8; FLOW_BYTES] {
        packet(
            [10, 2, 1, 1],
            [10, 2, 1, 2],
            IPPROTO_UDP,
            [0x9c, 0x40, 0x13, 0x89],
        )
    }

    #[test]
    fn a_flow_hash_tells_flows_apart_by_addresses_protocol_and_ports() {
        let a = udp_flow();
        let h = ipv4_flow_hash(&a);
        assert_eq!(h, ipv4_flow_hash(&a), "one flow, one hash");
        let mut other_port = a;
        other_port[21] ^= 1;
        let mut other_dst = a;
        other_dst[19] ^= 1;
        let mut tcp = a;
        tcp[9] = IPPROTO_TCP;
        for (what, p) in [
            ("port", other_port),
            ("destination", other_dst),
            ("protocol", tcp),
        ] {
            assert_ne!(
                source_port_from_hash(ipv4_flow_hash(&p)),
                source_port_from_hash(h),
                "another {what}"
            );
        }
        // Fields outside the flow do not change it.
        let mut later = a;
        later[2..6].copy_from_slice(&[0x05, 0xdc, 0x12, 0x34]);
        later[8] = 3;
        assert_eq!(
            ipv4_flow_hash(&later),
            h,
            "length, ID and TTL are not the flow"
        );
    }

    #[test]
    fn fragments_and_packets_without_ports_hash_by_addresses_and_protocol_alone() {
        let first = udp_flow();
        let mut more = first;
        more[6] = 0x20; // more fragments, offset 0: the first fragment
        let mut middle = first;
        middle[6..8].copy_from_slice(&0x20b9u16.to_be_bytes());
        middle[20..24].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]); // payload, not ports
        assert_eq!(ipv4_flow_hash(&more), ipv4_flow_hash(&middle));
        assert_ne!(ipv4_flow_hash(&more), ipv4_flow_hash(&first));
        let mut icmp = first;
        icmp[9] = 1;
        let mut icmp_other_id = icmp;
        icmp_other_id[20..24].copy_from_slice(&[8, 0, 0x12, 0x34]);
        assert_eq!(ipv4_flow_hash(&icmp), ipv4_flow_hash(&icmp_other_id));
        let mut options = first;
        options[0] = 0x46;
        options[20..24].copy_from_slice(&[1, 1, 1, 1]);
        let mut options_other = options;
        options_other[20..24].copy_from_slice(&[2, 2, 2, 2]);
        assert_eq!(ipv4_flow_hash(&options), ipv4_flow_hash(&options_other));
    }

    #[test]
    fn flow_hashes_spread_over_the_source_ports() {
        // 4096 flows of one host pair, by client port: the ports drawn should cover most of
        // the 16384 and no port should take more than a few.
        let mut drawn = [0u8; 1 << 14];
        for port in 0..4096u16 {
            let mut ports = [0u8; 4];
            ports[0..2].copy_from_slice(&(32768 + port).to_be_bytes());
            ports[2..4].copy_from_slice(&5201u16.to_be_bytes());
            let p = packet([10, 2, 1, 1], [10, 2, 1, 2], IPPROTO_TCP, ports);
            drawn[(source_port_from_hash(ipv4_flow_hash(&p)) - SOURCE_PORT_MIN) as usize] += 1;
        }
        let distinct = drawn.iter().filter(|n| **n > 0).count();
        assert!(distinct > 3500, "{distinct} distinct ports");
        assert!(drawn.iter().all(|n| *n <= 4), "{:?}", drawn.iter().max());
    }

    #[test]
    fn a_destination_patched_in_gives_the_checksum_of_the_whole_header() {
        let mut header = [0u8; IPV4_HLEN];
        header[0] = 0x45;
        header[2..4].copy_from_slice(&1234u16.to_be_bytes());
        header[6] = 0x40;
        header[8] = 64;
        header[9] = IPPROTO_UDP;
        header[12..16].copy_from_slice(&[192, 168, 50, 1]);
        let zero_dst = ipv4_checksum(&header);
        for dst in [
            [192, 168, 50, 2],
            [255, 255, 255, 255],
            [0, 0, 0, 1],
            [10, 0, 0, 0],
        ] {
            let mut full = header;
            full[16..20].copy_from_slice(&dst);
            assert_eq!(
                ipv4_checksum_with_dst(zero_dst, dst),
                ipv4_checksum(&full),
                "{dst:?}"
            );
        }
    }

    use super::*;

    fn sample() -> OuterHeaders {
        OuterHeaders {
            src_ipv4: [192, 168, 1, 1],
            dst_ipv4: [192, 168, 1, 2],
            src_port: 50000,
            vni: crate::vni::pack(1, 2),
            inner_len: 98,
        }
    }

    #[test]
    fn outer_headers_have_the_expected_bytes() {
        let mut out = [0xffu8; OUTER_HLEN];
        write_outer_headers(&mut out, &sample());
        assert_eq!(&out[..12], &[0; 12]);
        assert_eq!(&out[12..14], &[0x08, 0x00]);
        let ip = &out[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 20 + 8 + 8 + 98);
        assert_eq!(u16::from_be_bytes([ip[6], ip[7]]), IPV4_DONT_FRAGMENT);
        assert_eq!(ip[8], 64);
        assert_eq!(ip[9], 17);
        assert_eq!(&ip[12..16], &[192, 168, 1, 1]);
        assert_eq!(&ip[16..20], &[192, 168, 1, 2]);
        let udp = &out[34..42];
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 50000);
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 6784);
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]), 8 + 8 + 98);
        assert_eq!(&udp[6..8], &[0, 0]);
        assert_eq!(&out[42..50], &[0x08, 0, 0, 0, 0x00, 0x20, 0x01, 0]);
    }

    #[test]
    fn ipv4_checksum_verifies_to_zero() {
        let mut out = [0u8; OUTER_HLEN];
        write_outer_headers(&mut out, &sample());
        let mut ip = [0u8; IPV4_HLEN];
        ip.copy_from_slice(&out[14..34]);
        // Summing a header that includes its checksum gives 0xffff, whose complement is 0.
        assert_eq!(ipv4_checksum(&ip), 0);
    }

    #[test]
    fn ipv4_checksum_matches_a_known_header() {
        // A header from RFC 1071 style worked examples (checksum field zeroed): 0xb861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&header), 0xb861);
    }

    #[test]
    fn vxlan_vni_round_trips_and_requires_the_flag() {
        let mut h = [0u8; VXLAN_HLEN];
        write_vxlan_header(&mut h, 0xabcdef);
        assert_eq!(read_vxlan_vni(&h), Some(0xabcdef));
        h[0] = 0;
        assert_eq!(read_vxlan_vni(&h), None);
    }

    #[test]
    fn source_ports_stay_in_the_dynamic_range() {
        for hash in [0u32, 1, 0x3fff, 0xffff, 0xdead_beef, u32::MAX] {
            assert!(source_port_from_hash(hash) >= SOURCE_PORT_MIN);
        }
        assert_ne!(source_port_from_hash(1), source_port_from_hash(2));
    }

    #[test]
    fn group_addresses_are_recognised() {
        assert!(is_group_mac(&[0xff; 6]));
        assert!(is_group_mac(&[0x01, 0x00, 0x5e, 0, 0, 1]));
        assert!(!is_group_mac(&[0x02, 0, 0, 0, 0, 1]));
    }
}
