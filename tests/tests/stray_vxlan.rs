//! VXLAN from an address that is not a peer is dropped and counted, and harms nothing.

use std::net::SocketAddrV4;
use std::time::Duration;

use weave_tests::{host_addr, probe, require_root, TestBed};

/// `weave_datapath_drops_total` for one reason (summed over the TC and XDP programs).
fn drops(metrics: &str, reason: &str) -> f64 {
    probe::metric_sum(metrics, |s| {
        s.name == "weave_datapath_drops_total"
            && (s.labels.contains(&format!("\"rx_drop_{reason}\""))
                || s.labels.contains(&format!("\"xdp_drop_{reason}\"")))
    })
}

fn rx_packets(ns: &weave_tests::Netns, dev: &str) -> u64 {
    let out = ns
        .ip(&format!("-s -o link show dev {dev}"))
        .unwrap_or_default();
    // "... RX: bytes packets errors ... \    123 4 0 ..." in one line with -o
    let after = out.split("RX:").nth(1).unwrap_or_default();
    let nums: Vec<u64> = after
        .split(|c: char| c.is_whitespace() || c == '\\')
        .filter_map(|w| w.parse().ok())
        .collect();
    nums.get(1).copied().unwrap_or(0)
}

#[test]
fn stray_vxlan_from_non_peer_is_dropped_and_counted() {
    if !require_root("stray_vxlan_from_non_peer_is_dropped_and_counted") {
        return;
    }
    let mut bed = TestBed::new("wtsv", 2).expect("test bed");
    bed.launch_mesh(&[]).expect("routers connect");
    let a = bed
        .attach_container(1, "c1", "10.2.1.1/24")
        .expect("attach");
    bed.attach_container(2, "c1", "10.2.1.2/24")
        .expect("attach");
    bed.container(a)
        .wait_ping("10.2.1.2", Duration::from_secs(10))
        .expect("overlay works");

    let target_mac =
        probe::parse_mac(&probe::link_mac(&bed.container(a).ns, "ethwe").expect("mac"))
            .expect("mac");
    let s1 = probe::stored_short_id(&bed.state_dir(1)).expect("host1's short ID in its state dir");
    let s2 = probe::stored_short_id(&bed.state_dir(2)).expect("host2's short ID in its state dir");
    let intruder_addr = std::net::Ipv4Addr::new(198, 18, 0, 99);
    bed.add_node("x", intruder_addr)
        .expect("intruder on the underlay");

    let before = bed.router(1).metrics().expect("metrics");
    let rx_before = rx_packets(&bed.container(a).ns, "ethwe");
    let to = SocketAddrV4::new(host_addr(1), 6784);
    let intruder = weave_tests::Netns::borrow(&format!("{}-x", bed.prefix()));
    const N: usize = 10;
    let sent = 2 * N;
    // From a short ID nobody uses, to host1.
    let unknown_src = (1..4096u32)
        .rev()
        .find(|id| *id != s1 as u32 && *id != s2 as u32)
        .expect("a free ID");
    let p = probe::vxlan_payload(
        unknown_src | (s1 as u32) << 12,
        target_mac,
        [2, 0, 0, 0, 0, 0x99],
    );
    probe::send_udp(&intruder, to, &p, N).expect("send");
    // Claiming to be host2, from the wrong address.
    let p = probe::vxlan_payload(
        s2 as u32 | (s1 as u32) << 12,
        target_mac,
        [2, 0, 0, 0, 0, 0x98],
    );
    probe::send_udp(&intruder, to, &p, N).expect("send");

    let r1 = bed.router(1);
    let grew = |m: &str, reason: &str| drops(m, reason) - drops(&before, reason);
    weave_tests::cmd::wait_for("the drops to be counted", Duration::from_secs(5), || {
        let m = r1.metrics().ok()?;
        (grew(&m, "unknown_peer") >= N as f64 && grew(&m, "spoofed_source") >= N as f64).then_some(())
    })
    .unwrap_or_else(|_| {
        let m = r1.metrics().unwrap_or_default();
        panic!(
            "sent {N} packets from an unknown peer and {N} claiming to be host2; drops grew by {} and {}:\n{m}",
            grew(&m, "unknown_peer"),
            grew(&m, "spoofed_source")
        )
    });

    let rx_after = rx_packets(&bed.container(a).ns, "ethwe");
    assert!(
        rx_after.saturating_sub(rx_before) < sent as u64 / 2,
        "the container received {} packets while {sent} stray ones were sent",
        rx_after - rx_before
    );
    // The real peer is unaffected.
    let out = bed.container(a).ping("10.2.1.2", 2).expect("ping runs");
    assert!(
        out.success(),
        "overlay broken after stray packets:\n{}",
        out.stdout
    );
}
