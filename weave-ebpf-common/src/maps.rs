//! Keys and values of the BPF maps, and the maps' names and sizes.
//!
//! | map (name)        | type              | key → value                         | written by |
//! |-------------------|-------------------|-------------------------------------|------------|
//! | `CONFIG`          | Array\[1\]        | 0 → [`DatapathConfig`]              | controller |
//! | `PEERS`           | Array\[4096\]     | short ID → [`PeerEntry`]            | controller |
//! | `ENDPOINTS`       | HashMap           | [`MacKey`] → [`LocalEndpoint`]      | controller |
//! | `REMOTE_MACS`     | LruHashMap        | [`MacKey`] → [`RemoteMac`]          | RX program (learning), controller (flush) |
//! | `NEIGHBOURS`      | LruHashMap        | [`Ipv4Key`] → [`MacKey`]            | controller (local), RX program (learning) |
//! | `COUNTERS`        | PerCpuArray       | [`crate::counters::Reason`] → [`Counter`] | programs |
//! | `PEER_COUNTERS`   | PerCpuArray\[4096\] | short ID → [`PeerCounter`]        | programs |
//! | `NEIGHBOUR_PEERS` | HashMap           | [`Ipv4Key`] → [`NeighbourPeer`]     | controller |
//! | `BROADCAST_TREES` | Array\[4096\]     | source short ID → [`BroadcastTree`] | controller |
//! | `ENDPOINT_ADDRESSES` | HashMap        | [`IfindexKey`] → [`EndpointAddresses`] | controller |

use crate::vni::MAX_SHORT_IDS;

pub const CONFIG_MAP: &str = "CONFIG";
pub const PEERS_MAP: &str = "PEERS";
pub const ENDPOINTS_MAP: &str = "ENDPOINTS";
pub const REMOTE_MACS_MAP: &str = "REMOTE_MACS";
pub const NEIGHBOURS_MAP: &str = "NEIGHBOURS";
pub const COUNTERS_MAP: &str = "COUNTERS";
pub const PEER_COUNTERS_MAP: &str = "PEER_COUNTERS";
pub const NEIGHBOUR_PEERS_MAP: &str = "NEIGHBOUR_PEERS";
pub const BROADCAST_TREES_MAP: &str = "BROADCAST_TREES";
pub const ENDPOINT_ADDRESSES_MAP: &str = "ENDPOINT_ADDRESSES";

/// Every map the programs declare, in one list (pinning and clean-up walk it).
pub const ALL_MAPS: [&str; 10] = [
    CONFIG_MAP,
    PEERS_MAP,
    ENDPOINTS_MAP,
    REMOTE_MACS_MAP,
    NEIGHBOURS_MAP,
    COUNTERS_MAP,
    PEER_COUNTERS_MAP,
    NEIGHBOUR_PEERS_MAP,
    BROADCAST_TREES_MAP,
    ENDPOINT_ADDRESSES_MAP,
];

pub const PEERS_MAX_ENTRIES: u32 = MAX_SHORT_IDS;
pub const ENDPOINTS_MAX_ENTRIES: u32 = 4096;
pub const REMOTE_MACS_MAX_ENTRIES: u32 = 65536;
pub const NEIGHBOURS_MAX_ENTRIES: u32 = 65536;
pub const NEIGHBOUR_PEERS_MAX_ENTRIES: u32 = MAX_SHORT_IDS;
/// Most neighbours one router passes one source's broadcasts on to (its own broadcasts
/// go to all its direct peers: a full mesh of this many + 1 routers).
pub const MAX_BROADCAST_CHILDREN: usize = 255;
/// Most sources with a broadcast tree here (one per known peer).
pub const BROADCAST_TREES_MAX_ENTRIES: u32 = MAX_SHORT_IDS;

/// An Ethernet address as a map key (6 bytes plus 2 bytes of zero padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MacKey {
    pub addr: [u8; 6],
    pub _pad: [u8; 2],
}

impl MacKey {
    #[inline(always)]
    pub const fn new(addr: [u8; 6]) -> Self {
        Self { addr, _pad: [0; 2] }
    }
}

/// An IPv4 address as a map key, in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ipv4Key {
    pub addr: [u8; 4],
}

/// Static configuration of one router's data path (`CONFIG[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// This router's underlay IPv4 address, network byte order: outer source of encapsulated frames.
    pub underlay_ipv4: [u8; 4],
    /// ifindex of the underlay interface; encapsulated frames are redirected there.
    pub underlay_ifindex: u32,
    /// This router's short ID; frames whose VNI names another destination are not ours.
    pub own_short_id: u16,
    /// `CONFIG_*` bits.
    pub flags: u16,
    /// MAC address of the underlay interface: outer source of frames the programs address
    /// themselves (broadcast copies, non-IPv4 frames).
    pub underlay_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// A local service address on the bridge (the DNS server's), network byte order, or
    /// zeros: every container may send to it and receive from it, whatever its subnets.
    pub service_ipv4: [u8; 4],
    /// ifindex of the bridge's port towards the peers (`vethwe-bridge`): what the programs
    /// leave to the bridge from the underlay enters the bridge there.
    pub bridge_port_ifindex: u32,
    /// ifindex of the sleeve's TAP (`vethwe-sleeve`), or 0 without a sleeve: a frame for a
    /// peer marked [`PEER_VIA_SLEEVE`] is handed to the sleeve through it
    /// ([`crate::handover`]).
    pub sleeve_port_ifindex: u32,
}

/// `DatapathConfig::flags`: the controller has written the configuration (programs pass
/// everything through untouched until it has).
pub const CONFIG_READY: u16 = 1;

/// What the data path knows of one peer (`PEERS[short_id]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeerEntry {
    /// The peer's underlay IPv4 address, network byte order. VXLAN from this peer must come from it.
    pub underlay_ipv4: [u8; 4],
    /// `PEER_*` bits.
    pub flags: u32,
    /// Short ID of the peer to hand frames for this one to (itself when directly connected).
    pub next_hop: u16,
    /// The peer's underlay MAC address (directly connected peers on the underlay's segment;
    /// zero when unknown): outer destination of frames the programs address themselves.
    pub underlay_mac: [u8; 6],
}

/// `PeerEntry::flags`: the peer has an established connection; VXLAN from it is admitted.
pub const PEER_ADMIT: u32 = 1;
/// `PeerEntry::flags`: frames for this peer may be sent (a route to it exists).
pub const PEER_REACHABLE: u32 = 1 << 1;
/// `PeerEntry::flags`: the sleeve carries this peer's frames (a direct peer whose fast path
/// fell back): a frame relayed to it over the fast path is handed to the sleeve, which
/// routes it on.
pub const PEER_VIA_SLEEVE: u32 = 1 << 2;

/// A container interface on this host (`ENDPOINTS[mac]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LocalEndpoint {
    /// ifindex of the host end of the container's veth (a bridge port). Frames for the
    /// container are handed to it with `bpf_redirect_peer`.
    pub host_ifindex: u32,
    pub flags: u32,
}

/// Most IPv4 addresses one endpoint (container interface) may have; further ones are
/// refused at attach time.
pub const MAX_ENDPOINT_ADDRESSES: usize = 8;

/// An interface index as a map key (`ENDPOINT_ADDRESSES`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct IfindexKey {
    pub ifindex: u32,
}

/// One address of an endpoint and the subnet it lies in, both in network byte order.
/// Aligned to 4 so that the programs compare each field with one 32-bit load.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointAddress {
    pub addr: [u8; 4],
    /// Netmask of the subnet (`255.255.255.0` for a /24).
    pub mask: [u8; 4],
}

impl EndpointAddress {
    /// `addr` with a prefix length (longer prefixes count as /32).
    pub const fn new(addr: [u8; 4], prefix_len: u8) -> Self {
        let mask = if prefix_len == 0 {
            0u32
        } else if prefix_len >= 32 {
            u32::MAX
        } else {
            u32::MAX << (32 - prefix_len as u32)
        };
        Self {
            addr,
            mask: mask.to_be_bytes(),
        }
    }

    #[inline(always)]
    fn contains(&self, ip: [u8; 4]) -> bool {
        let m = u32::from_ne_bytes(self.mask);
        u32::from_ne_bytes(ip) & m == u32::from_ne_bytes(self.addr) & m
    }
}

/// The addresses of a local endpoint, by the ifindex of the host end of its veth
/// (`ENDPOINT_ADDRESSES[ifindex]`): the isolation rules of the programs.
///
/// - A frame the container sends must come from one of its own addresses (IPv4 source,
///   ARP sender) and, when unicast, go to an address inside one of its subnets.
/// - A frame handed to the container must come from an address inside one of its subnets.
///
/// An endpoint with no addresses (`count == 0`) can neither send nor receive IPv4 or ARP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointAddresses {
    /// MAC address of the container's interface.
    pub mac: [u8; 6],
    /// Number of entries of `addrs` in use (at most [`MAX_ENDPOINT_ADDRESSES`]).
    pub count: u8,
    pub _pad: u8,
    pub addrs: [EndpointAddress; MAX_ENDPOINT_ADDRESSES],
}

impl EndpointAddresses {
    /// Whether `ip` is one of the endpoint's own addresses.
    #[inline(always)]
    pub fn owns(&self, ip: [u8; 4]) -> bool {
        let ip = u32::from_ne_bytes(ip);
        for i in 0..MAX_ENDPOINT_ADDRESSES {
            if i >= self.count as usize {
                break;
            }
            if u32::from_ne_bytes(self.addrs[i].addr) == ip {
                return true;
            }
        }
        false
    }

    /// Whether `ip` lies inside one of the endpoint's subnets.
    #[inline(always)]
    pub fn in_subnets(&self, ip: [u8; 4]) -> bool {
        for i in 0..MAX_ENDPOINT_ADDRESSES {
            if i >= self.count as usize {
                break;
            }
            if self.addrs[i].contains(ip) {
                return true;
            }
        }
        false
    }
}

/// Whether an IPv4 destination is a group address (limited broadcast or multicast): allowed
/// out of any endpoint, since every receiver checks the source.
#[inline(always)]
pub const fn is_group_ipv4(ip: [u8; 4]) -> bool {
    ip[0] >= 224
}

/// A MAC address behind another peer (`REMOTE_MACS[mac]`), learned from decapsulated frames.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RemoteMac {
    pub peer_short_id: u16,
    pub _pad: [u8; 6],
}

/// A directly connected peer, by its underlay address (`NEIGHBOUR_PEERS[addr]`): VXLAN
/// relayed by a neighbour comes from the neighbour's address, not the origin's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NeighbourPeer {
    pub short_id: u16,
    pub _pad: [u8; 2],
}

/// The neighbours a broadcast from one source is passed on to (`BROADCAST_TREES[source]`):
/// this router's children in the source's broadcast tree. For this router's own short ID:
/// the peers its own broadcasts (and frames for unknown destinations) are sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BroadcastTree {
    pub count: u16,
    pub children: [u16; MAX_BROADCAST_CHILDREN],
}

impl Default for BroadcastTree {
    fn default() -> Self {
        Self {
            count: 0,
            children: [0; MAX_BROADCAST_CHILDREN],
        }
    }
}

/// Packets and bytes counted for one reason on one CPU (`COUNTERS[reason]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Traffic exchanged with one peer on one CPU (`PEER_COUNTERS[short_id]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeerCounter {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Fast-path heartbeats and probes received from the peer.
    pub rx_heartbeats: u64,
    /// The newest path-MTU probe round seen from the peer on this CPU
    /// ([`crate::heartbeat::newer_round`]), and the largest probe of that round: its outer
    /// IPv4 packet length.
    pub probe_round: u32,
    pub probe_len: u32,
    /// Echoes of our heartbeats the peer's kernel answered (`crate::heartbeat`): its data
    /// path lives, whether or not its router process does.
    pub rx_heartbeat_echoes: u64,
}

const _: () = {
    assert!(core::mem::size_of::<MacKey>() == 8);
    assert!(core::mem::size_of::<Ipv4Key>() == 4);
    assert!(core::mem::size_of::<DatapathConfig>() == 32);
    assert!(core::mem::size_of::<NeighbourPeer>() == 4);
    assert!(core::mem::size_of::<BroadcastTree>() == 512);
    assert!(core::mem::size_of::<PeerEntry>() == 16);
    assert!(core::mem::size_of::<LocalEndpoint>() == 8);
    assert!(core::mem::size_of::<RemoteMac>() == 8);
    assert!(core::mem::size_of::<Counter>() == 16);
    assert!(core::mem::size_of::<PeerCounter>() == 56);
    assert!(core::mem::size_of::<IfindexKey>() == 4);
    assert!(core::mem::size_of::<EndpointAddress>() == 8);
    assert!(core::mem::size_of::<EndpointAddresses>() == 8 + 8 * MAX_ENDPOINT_ADDRESSES);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type below is #[repr(C)], Copy, made only of integers and byte arrays
    // with explicit padding fields, so any bit pattern is a valid value.
    unsafe impl aya::Pod for MacKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Ipv4Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DatapathConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PeerEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LocalEndpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RemoteMac {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NeighbourPeer {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BroadcastTree {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PeerCounter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IfindexKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointAddresses {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(addrs: &[([u8; 4], u8)]) -> EndpointAddresses {
        let mut e = EndpointAddresses::default();
        for (slot, (a, p)) in e.addrs.iter_mut().zip(addrs) {
            *slot = EndpointAddress::new(*a, *p);
            e.count += 1;
        }
        e
    }

    #[test]
    fn own_addresses_and_subnets() {
        let e = endpoint(&[([10, 2, 1, 1], 24), ([10, 9, 0, 5], 16)]);
        assert!(e.owns([10, 2, 1, 1]));
        assert!(e.owns([10, 9, 0, 5]));
        assert!(!e.owns([10, 2, 1, 2]));
        assert!(e.in_subnets([10, 2, 1, 200]));
        assert!(e.in_subnets([10, 9, 255, 1]));
        assert!(!e.in_subnets([10, 2, 2, 1]));
        assert!(!e.in_subnets([10, 10, 0, 1]));
    }

    #[test]
    fn masks_by_prefix_length() {
        assert_eq!(
            EndpointAddress::new([1, 2, 3, 4], 24).mask,
            [255, 255, 255, 0]
        );
        assert_eq!(
            EndpointAddress::new([1, 2, 3, 4], 17).mask,
            [255, 255, 128, 0]
        );
        assert_eq!(EndpointAddress::new([1, 2, 3, 4], 32).mask, [255; 4]);
        assert_eq!(EndpointAddress::new([1, 2, 3, 4], 0).mask, [0; 4]);
        let all = endpoint(&[([10, 2, 1, 1], 0)]);
        assert!(all.in_subnets([192, 168, 0, 1]));
        let host = endpoint(&[([10, 2, 1, 1], 32)]);
        assert!(host.in_subnets([10, 2, 1, 1]) && !host.in_subnets([10, 2, 1, 2]));
    }

    #[test]
    fn no_addresses_no_subnets() {
        let e = endpoint(&[]);
        assert!(!e.owns([0, 0, 0, 0]));
        assert!(!e.in_subnets([10, 2, 1, 1]));
    }

    #[test]
    fn entries_past_count_are_ignored() {
        let mut e = endpoint(&[([10, 2, 1, 1], 24)]);
        e.addrs[1] = EndpointAddress::new([10, 2, 2, 1], 24);
        assert!(!e.owns([10, 2, 2, 1]));
        assert!(!e.in_subnets([10, 2, 2, 7]));
    }

    #[test]
    fn group_destinations() {
        assert!(is_group_ipv4([255, 255, 255, 255]));
        assert!(is_group_ipv4([224, 0, 0, 1]));
        assert!(!is_group_ipv4([10, 2, 1, 255]));
    }
}
