//! `--log-kernel`: the kernel programs' rare events reach the router's log. VXLAN from an
//! address that is not a peer is refused by both routers; only the one launched with
//! `--log-kernel` logs it (through aya-log), the other stays quiet.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use weave_tests::{host_addr, probe, require_root, LaunchOpts, TestBed};

#[test]
fn with_log_kernel_a_refused_frame_shows_in_the_router_log() {
    if !require_root("with_log_kernel_a_refused_frame_shows_in_the_router_log") {
        return;
    }
    let mut bed = TestBed::new("kl", 2).expect("test bed");
    for i in 1..=2 {
        let mut extra = vec!["--xdp".to_string(), "off".to_string()];
        if i == 1 {
            extra.push("--log-kernel".into());
        }
        let opts = LaunchOpts {
            peers: (1..i).map(|j| host_addr(j).to_string()).collect(),
            extra,
        };
        bed.launch(i, &opts)
            .unwrap_or_else(|e| panic!("launch host{i}: {e}"));
    }
    for i in 1..=2 {
        bed.router(i)
            .wait_established(1, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("host{i}: {e}"));
    }
    let intruder_addr = std::net::Ipv4Addr::new(198, 18, 0, 99);
    bed.add_node("x", intruder_addr)
        .expect("intruder on the underlay");
    let intruder = weave_tests::Netns::borrow(&format!("{}-x", bed.prefix()));
    // From a short ID nobody uses (4095 | 1 << 12 would be ours only by chance: refused
    // either way, as unknown or as not for this router).
    let p = probe::vxlan_payload(4095 | 1 << 12, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 0x99]);
    let wanted = "refused VXLAN from 198.18.0.99";
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for i in 1..=2 {
            probe::send_udp(&intruder, SocketAddrV4::new(host_addr(i), 6784), &p, 3).expect("send");
        }
        std::thread::sleep(Duration::from_millis(500));
        if bed.router(1).log_tail(400).contains(wanted) || Instant::now() > deadline {
            break;
        }
    }
    let log1 = bed.router(1).log_tail(400);
    assert!(
        log1.contains(wanted),
        "host1 (--log-kernel) did not log the refused frame:\n{log1}"
    );
    assert!(log1.contains("kernel log on"), "{log1}");
    if let Some(line) = log1.lines().find(|l| l.contains(wanted)) {
        println!("host1 logged: {line}");
    }
    // Counted all the same, on both.
    for i in 1..=2 {
        let m = bed.router(i).metrics().expect("metrics");
        let refused = probe::metric_sum(&m, |s| {
            s.name == "weave_datapath_drops_total" && s.labels.contains("rx_drop_")
        });
        assert!(refused >= 3.0, "host{i} counted {refused} drops:\n{m}");
    }
    let log2 = bed.router(2).log_tail(400);
    assert!(
        !log2.contains("refused VXLAN"),
        "host2 (no --log-kernel) logged kernel events:\n{log2}"
    );
}
