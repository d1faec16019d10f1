//! The host's IPv4 routing table as the kernel prints it in `/proc/net/route`: one parser
//! for every reader (the underlay interface choice, the IP range check).

use std::net::Ipv4Addr;

pub mod cidr;

pub use cidr::{AddrRange, CidrError, Ipv4Cidr, Ipv4Net};

/// One route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    pub device: String,
    pub destination: Ipv4Cidr,
}

/// The routes of a `/proc/net/route` text (its header line and malformed lines skipped).
/// The kernel prints addresses and masks as little-endian hex.
pub fn parse_route_table(table: &str) -> Vec<KernelRoute> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (device, dest, mask) = (f.first()?, f.get(1)?, f.get(7)?);
            let destination = Ipv4Addr::from(u32::from_str_radix(dest, 16).ok()?.swap_bytes());
            let mask = u32::from_str_radix(mask, 16).ok()?.swap_bytes();
            // A mask is a run of ones from the top: anything else is not a route.
            if mask.leading_ones() != mask.count_ones() {
                return None;
            }
            Some(KernelRoute {
                device: device.to_string(),
                destination: Ipv4Cidr {
                    addr: destination,
                    prefix_len: mask.count_ones() as u8,
                },
            })
        })
        .collect()
}

/// The device of the most specific route to `dst` in a `/proc/net/route` text.
pub fn route_iface(table: &str, dst: Ipv4Addr) -> Option<String> {
    parse_route_table(table)
        .into_iter()
        .filter(|r| r.destination.contains(dst))
        .max_by_key(|r| r.destination.prefix_len)
        .map(|r| r.device)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth1\t000A12C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
weave\t0000200A\t00000000\t0001\t0\t0\t0\t0000F0FF\t0\t0\t0
bad\tzz\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn the_table_is_parsed_with_little_endian_addresses() {
        let routes = parse_route_table(TABLE);
        assert_eq!(routes.len(), 4, "the malformed line is skipped");
        assert_eq!(
            routes[2],
            KernelRoute {
                device: "eth1".into(),
                destination: "192.18.10.0/24".parse().unwrap(),
            }
        );
        assert_eq!(routes[3].destination.to_string(), "10.32.0.0/12");
    }

    #[test]
    fn the_most_specific_route_wins() {
        assert_eq!(
            route_iface(TABLE, Ipv4Addr::new(192, 18, 10, 7)).as_deref(),
            Some("eth1")
        );
        assert_eq!(
            route_iface(TABLE, Ipv4Addr::new(172, 17, 3, 1)).as_deref(),
            Some("eth0")
        );
        assert_eq!(
            route_iface(TABLE, Ipv4Addr::new(8, 8, 8, 8)).as_deref(),
            Some("eth0")
        );
        assert_eq!(
            route_iface(TABLE, Ipv4Addr::UNSPECIFIED).as_deref(),
            Some("eth0")
        );
        let no_default: String = TABLE
            .lines()
            .filter(|l| !l.contains("\t00000000\t010011AC"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(route_iface(&no_default, Ipv4Addr::new(8, 8, 8, 8)), None);
    }
}
