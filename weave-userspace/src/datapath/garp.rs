//! Gratuitous ARP: an ARP request from a freshly attached interface for its own address,
//! to broadcast, so that peers whose neighbour entry still holds the MAC of an earlier
//! owner of the address update it at once (a Linux host takes a gratuitous request as an
//! override of an existing entry).

use std::net::Ipv4Addr;

/// The Ethernet frame of a gratuitous ARP request: sender and target are `addr`, sent by
/// `mac` to the broadcast address.
pub fn frame(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
    f[14..22].copy_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&addr.octets());
    // Target hardware address stays zero.
    f[38..42].copy_from_slice(&addr.octets());
    f
}

/// Sends a gratuitous ARP for each of `addrs` out of interface `ifindex` (of the calling
/// thread's network namespace), from `mac`.
pub fn send(ifindex: u32, mac: [u8; 6], addrs: &[Ipv4Addr]) -> std::io::Result<()> {
    let socket = super::packet_socket::PacketSocket::open(ifindex, libc::ETH_P_ARP as u16)?;
    for addr in addrs {
        socket.send(&frame(mac, *addr))?;
    }
    Ok(())
}

/// Sends, inside network namespace `netns`, a gratuitous ARP from each interface whose MAC is
/// one of `announced` for that interface's addresses: for interfaces someone else moved into
/// a container (the Docker network plugin's), once they are up there.
pub async fn announce_in_netns(
    netns: &std::path::Path,
    announced: Vec<([u8; 6], Vec<Ipv4Addr>)>,
) -> Result<(), super::DatapathError> {
    super::netlink::in_netns(netns, move |nl| async move {
        for link in nl.links().await? {
            if let Some((mac, addrs)) = announced.iter().find(|(m, _)| *m == link.mac) {
                send(link.index, *mac, addrs)?;
            }
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_a_gratuitous_request() {
        let mac = [0x02, 0, 0, 0, 0, 7];
        let f = frame(mac, Ipv4Addr::new(10, 32, 0, 9));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[10, 32, 0, 9]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 32, 0, 9]);
    }
}
