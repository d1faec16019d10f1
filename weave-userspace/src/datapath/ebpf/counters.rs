//! The programs' per-CPU counters summed into what the router reports.

use weave_ebpf_common::counters::Reason;
use weave_ebpf_common::maps::{Counter, PeerCounter};

use super::maps::DatapathMaps;
use crate::datapath::{DatapathCounters, DatapathError, PeerTraffic, ProbeSeen};

/// Packets and bytes of one reason, summed over CPUs.
pub(super) fn sum_reason(per_cpu: &[Counter]) -> (u64, u64) {
    per_cpu
        .iter()
        .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes))
}

/// The traffic with peer `short_id`, summed over CPUs (the newest probe round merged).
pub fn peer_traffic(short_id: u16, per_cpu: &[PeerCounter]) -> PeerTraffic {
    let mut t = PeerTraffic {
        short_id,
        ..Default::default()
    };
    for c in per_cpu {
        t.tx_packets += c.tx_packets;
        t.tx_bytes += c.tx_bytes;
        t.rx_packets += c.rx_packets;
        t.rx_bytes += c.rx_bytes;
        t.rx_heartbeats += c.rx_heartbeats;
        t.rx_heartbeat_echoes += c.rx_heartbeat_echoes;
    }
    t.probe = ProbeSeen::merge(per_cpu.iter().map(|c| (c.probe_round, c.probe_len)));
    t
}

/// Whether a peer's traffic is worth reporting: any packet either way.
pub(super) fn has_traffic(t: &PeerTraffic) -> bool {
    t.tx_packets + t.rx_packets > 0
}

/// Every reason's counters and the traffic of each of `peers` that had any.
pub(super) fn read(
    maps: &DatapathMaps,
    peers: impl IntoIterator<Item = u16>,
) -> Result<DatapathCounters, DatapathError> {
    let mut out = DatapathCounters::default();
    for reason in Reason::ALL {
        let (packets, bytes) = sum_reason(&maps.reason_counters(reason)?);
        out.by_reason.push((reason, packets, bytes));
    }
    out.by_peer = read_peers(maps, peers)?;
    out.learned_macs = maps.remote_mac_count();
    Ok(out)
}

/// The traffic of each of `peers` that had any.
pub(super) fn read_peers(
    maps: &DatapathMaps,
    peers: impl IntoIterator<Item = u16>,
) -> Result<Vec<PeerTraffic>, DatapathError> {
    let mut out = Vec::new();
    for id in peers {
        let t = peer_traffic(id, &maps.peer_counters(id)?);
        if has_traffic(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

/// Packets counted for one reason, summed over CPUs.
pub(super) fn packets(maps: &DatapathMaps, reason: Reason) -> Result<u64, DatapathError> {
    Ok(sum_reason(&maps.reason_counters(reason)?).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_counters_add_up_over_cpus() {
        let per_cpu = [
            Counter {
                packets: 2,
                bytes: 200,
            },
            Counter::default(),
            Counter {
                packets: 1,
                bytes: 60,
            },
        ];
        assert_eq!(sum_reason(&per_cpu), (3, 260));
        assert_eq!(sum_reason(&[]), (0, 0));
    }

    #[test]
    fn peer_traffic_adds_up_over_cpus_with_the_newest_probe_round() {
        let per_cpu = [
            PeerCounter {
                tx_packets: 3,
                tx_bytes: 300,
                rx_packets: 1,
                rx_bytes: 100,
                rx_heartbeats: 4,
                probe_round: 6,
                probe_len: 1400,
                rx_heartbeat_echoes: 3,
            },
            PeerCounter {
                tx_packets: 1,
                tx_bytes: 50,
                rx_heartbeats: 2,
                probe_round: 7,
                probe_len: 1200,
                ..Default::default()
            },
        ];
        let t = peer_traffic(9, &per_cpu);
        assert_eq!(
            t,
            PeerTraffic {
                short_id: 9,
                tx_packets: 4,
                tx_bytes: 350,
                rx_packets: 1,
                rx_bytes: 100,
                rx_heartbeats: 6,
                rx_heartbeat_echoes: 3,
                probe: Some(ProbeSeen {
                    round: 7,
                    largest: 1200
                }),
            }
        );
        assert!(has_traffic(&t));
    }

    #[test]
    fn a_peer_that_only_sent_heartbeats_has_no_traffic_to_report() {
        let t = peer_traffic(
            9,
            &[PeerCounter {
                rx_heartbeats: 5,
                ..Default::default()
            }],
        );
        assert!(!has_traffic(&t));
    }
}
