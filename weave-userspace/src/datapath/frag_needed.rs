//! ICMP "fragmentation needed" from the underlay about our own VXLAN packets.
//!
//! The programs send VXLAN with DF set from no socket, so the kernel has nobody to give a
//! router's "fragmentation needed" to: a raw ICMP socket in the router's namespace reads
//! them, and those that quote one of our outer packets (source our underlay address, UDP to
//! the VXLAN port or the sleeve's) become hints for the path-MTU search of the peer it was sent to. Anything
//! else (another host's packets, other protocols, a forged quote of someone else's
//! traffic, a nonsense MTU) is counted and ignored.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use weave_ebpf_common::VXLAN_PORT;

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;

/// A "fragmentation needed" about one of our outer packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragNeeded {
    /// Where the packet was going: a peer's underlay address.
    pub peer: Ipv4Addr,
    /// The MTU of the hop that could not forward it.
    pub next_hop_mtu: u16,
}

/// Why an ICMP packet was not taken as a hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// Not a "fragmentation needed", or too short to hold one.
    NotFragNeeded,
    /// It quotes a packet that is not one of our VXLAN packets.
    NotOurs,
    /// No MTU in it (an old router's zero).
    NoMtu,
}

/// Reads a received ICMP packet (with its IPv4 header, as a raw socket gives it).
pub fn parse(packet: &[u8], our_address: Ipv4Addr) -> Result<FragNeeded, Ignored> {
    let ihl = usize::from(packet.first().ok_or(Ignored::NotFragNeeded)? & 0x0f) * 4;
    let icmp = packet.get(ihl..).ok_or(Ignored::NotFragNeeded)?;
    if icmp.len() < 8 || icmp[0] != ICMP_DEST_UNREACH || icmp[1] != ICMP_FRAG_NEEDED {
        return Err(Ignored::NotFragNeeded);
    }
    let next_hop_mtu = u16::from_be_bytes([icmp[6], icmp[7]]);
    let quoted = &icmp[8..];
    // The quoted IPv4 header and the first 8 bytes of its payload (the UDP header).
    let quoted_ihl = usize::from(quoted.first().ok_or(Ignored::NotOurs)? & 0x0f) * 4;
    if quoted[0] >> 4 != 4 || quoted_ihl < 20 || quoted.len() < quoted_ihl + 8 {
        return Err(Ignored::NotOurs);
    }
    let source = Ipv4Addr::new(quoted[12], quoted[13], quoted[14], quoted[15]);
    let peer = Ipv4Addr::new(quoted[16], quoted[17], quoted[18], quoted[19]);
    let dport = u16::from_be_bytes([quoted[quoted_ihl + 2], quoted[quoted_ihl + 3]]);
    let ours = dport == VXLAN_PORT || dport == crate::sleeve::SLEEVE_PORT;
    if quoted[9] != libc::IPPROTO_UDP as u8 || source != our_address || !ours {
        return Err(Ignored::NotOurs);
    }
    if next_hop_mtu == 0 {
        return Err(Ignored::NoMtu);
    }
    Ok(FragNeeded { peer, next_hop_mtu })
}

/// Hints gathered by [`listen`] for the router, and what was ignored.
#[derive(Debug, Default)]
pub struct FragNeededHints {
    hints: Mutex<Vec<FragNeeded>>,
    /// About our own VXLAN, passed on as hints.
    pub honoured: AtomicU64,
    /// About anything else (counted, logged at debug level).
    pub ignored: AtomicU64,
}

impl FragNeededHints {
    /// The hints since the last call.
    pub fn take(&self) -> Vec<FragNeeded> {
        std::mem::take(&mut *self.hints.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn push(&self, hint: FragNeeded) {
        self.honoured.fetch_add(1, Ordering::Relaxed);
        let mut hints = self.hints.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: a flood of them keeps only the latest few.
        if hints.len() >= 256 {
            hints.remove(0);
        }
        hints.push(hint);
    }
}

/// Reads ICMP in the calling thread's network namespace on a thread of its own, until
/// `hints` is dropped. Without a raw socket (no CAP_NET_RAW) it says so once and returns.
pub fn listen(our_address: Ipv4Addr, hints: &Arc<FragNeededHints>) {
    let socket = match socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::ICMPV4),
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "path MTU: cannot read ICMP from the underlay ({e}); probes alone find it"
            );
            return;
        }
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(1)));
    let hints: Weak<FragNeededHints> = Arc::downgrade(hints);
    let spawned = std::thread::Builder::new()
        .name("icmp".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 1500];
            loop {
                let n = match (&socket).read(&mut buf) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        0
                    }
                    Err(e) => {
                        tracing::warn!("path MTU: reading ICMP: {e}");
                        return;
                    }
                };
                let Some(hints) = hints.upgrade() else {
                    return;
                };
                if n == 0 {
                    continue;
                }
                match parse(&buf[..n], our_address) {
                    Ok(hint) => hints.push(hint),
                    Err(Ignored::NotFragNeeded) => {}
                    Err(why) => {
                        hints.ignored.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("ICMP fragmentation needed ignored: {why:?}");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("path MTU: cannot start the ICMP reader: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Ipv4Addr = Ipv4Addr::new(192, 168, 11, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 12, 1);

    /// An ICMP "fragmentation needed" from a router quoting a UDP packet.
    fn icmp(mtu: u16, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 192, 168, 12, 254];
        p.extend_from_slice(&US.octets());
        p.extend_from_slice(&[3, 4, 0, 0, 0, 0]);
        p.extend_from_slice(&mtu.to_be_bytes());
        let mut quoted = vec![0x45, 0, 0x05, 0xdc, 0, 0, 0x40, 0, 63, proto, 0, 0];
        quoted.extend_from_slice(&src.octets());
        quoted.extend_from_slice(&dst.octets());
        quoted.extend_from_slice(&[0xc3, 0x50]);
        quoted.extend_from_slice(&dport.to_be_bytes());
        quoted.extend_from_slice(&[0x05, 0xc8, 0, 0]);
        p.extend_from_slice(&quoted);
        p
    }

    #[test]
    fn a_router_saying_our_vxlan_is_too_big_is_a_hint() {
        let p = icmp(1400, US, PEER, 17, 6784);
        assert_eq!(
            parse(&p, US),
            Ok(FragNeeded {
                peer: PEER,
                next_hop_mtu: 1400
            })
        );
    }

    #[test]
    fn anything_but_our_own_vxlan_is_ignored() {
        let other_host = Ipv4Addr::new(192, 168, 11, 9);
        assert_eq!(
            parse(&icmp(1400, other_host, PEER, 17, 6784), US),
            Err(Ignored::NotOurs)
        );
        assert_eq!(
            parse(&icmp(1400, US, PEER, 6, 6784), US),
            Err(Ignored::NotOurs),
            "TCP"
        );
        assert_eq!(
            parse(&icmp(1400, US, PEER, 17, 53), US),
            Err(Ignored::NotOurs),
            "DNS"
        );
        assert!(
            parse(&icmp(1400, US, PEER, 17, 6783), US).is_ok(),
            "the sleeve's datagrams are ours too"
        );
        assert_eq!(parse(&icmp(0, US, PEER, 17, 6784), US), Err(Ignored::NoMtu));
        let mut echo = icmp(1400, US, PEER, 17, 6784);
        echo[20] = 0;
        assert_eq!(parse(&echo, US), Err(Ignored::NotFragNeeded));
        let short = &icmp(1400, US, PEER, 17, 6784)[..40];
        assert_eq!(parse(short, US), Err(Ignored::NotOurs));
        assert_eq!(parse(&[], US), Err(Ignored::NotFragNeeded));
        assert_eq!(parse(&[0x4f; 10], US), Err(Ignored::NotFragNeeded));
    }
}
