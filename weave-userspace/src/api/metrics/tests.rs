use super::*;
use crate::api::sample;

fn input<'a>(
    status: &'a MeshStatus,
    counters: &'a DatapathCounters,
    ipam: &'a IpamReport,
    dns: &'a DnsInfo,
) -> MetricsInput<'a> {
    MetricsInput {
        status,
        counters: Some(counters),
        ipam: Some(ipam),
        dns: Some(dns),
        control: ControlTraffic {
            sent: vec![("heartbeat", 3, 60)],
            received: vec![("heartbeat", 2, 40)],
            refusals: vec![("slow_peer", 2), ("oversize_frame", 0)],
            gossip_refused: vec![("hop_limit", 4), ("not_along_route", 0)],
        },
        sleeve: Some(SleeveTraffic {
            sent_datagrams: 7,
            sent_bytes: 7000,
            received_datagrams: 8,
            received_bytes: 8000,
            drops: vec![("forged", 1), ("replayed", 0)],
            macs_not_learned: 5,
            sent_bundled_frames: 40,
            received_bundled_frames: 30,
            answered_at_once: 12,
        }),
    }
}

fn rendered() -> String {
    let (status, counters, ipam, dns) = (
        sample::status(),
        sample::counters(),
        sample::ipam(),
        sample::dns(),
    );
    render(&input(&status, &counters, &ipam, &dns))
}

/// Weave 2.8.1's families, with its label names and values.
#[test]
fn weave_families_have_weaves_names_labels_and_meanings() {
    let text = rendered();
    for want in [
        "# TYPE weave_connections gauge",
        "weave_connections{state=\"established\",type=\"fastdp\",encryption=\"yes\"} 1",
        "weave_connections{state=\"established\",type=\"sleeve\",encryption=\"yes\"} 1",
        "weave_connections{state=\"established\",type=\"fastdp\",encryption=\"\"} 0",
        "weave_connections{state=\"retrying\",type=\"unknown\",encryption=\"\"} 1",
        "weave_connections{state=\"failed\",type=\"fastdp\",encryption=\"yes\"} 0",
        "# TYPE weave_connection_terminations_total counter",
        "weave_connection_terminations_total 4",
        "weave_ips{state=\"local-used\"} 2",
        "weave_max_ips 1048576",
        // host4 owns a quarter of the range and is unreachable.
        "weave_ipam_unreachable_count 1",
        "weave_ipam_unreachable_percentage 25.0",
        "weave_ipam_pending_allocates 1",
        "weave_ipam_pending_claims 0",
        // Ours, not tombstones, not host2's.
        "weave_dns_entries 2",
        "weave_flows 4",
    ] {
        assert!(
            text.contains(&format!("{want}\n")),
            "missing {want} in\n{text}"
        );
    }
}

#[test]
fn our_families_use_one_vocabulary_for_labels() {
    let text = rendered();
    for want in [
        // Peers known through gossip, not direct connections.
        "weave_peers 4",
        "weave_overlay_switches_total{to=\"sleeve\"} 3",
        "weave_overlay_switches_total{to=\"fastdp\"} 2",
        "weave_icmp_frag_needed_total{verdict=\"honoured\"} 1",
        "weave_icmp_frag_needed_total{verdict=\"ignored\"} 6",
        "weave_control_frames_total{direction=\"sent\",kind=\"heartbeat\"} 3",
        "weave_control_bytes_total{direction=\"received\",kind=\"heartbeat\"} 40",
        "weave_datapath_drops_total{reason=\"rx_drop_spoofed_source\"} 8",
        "weave_datapath_packets_total{reason=\"tx_encapsulated\"} 0",
        "weave_datapath_bytes_total{reason=\"rx_delivered\"} 500",
        "weave_peer_packets_total{peer=\"0a:00:00:00:00:02\",nickname=\"host2\",short_id=\"002\",direction=\"received\"} 6",
        "weave_peer_bytes_total{peer=\"0a:00:00:00:00:02\",nickname=\"host2\",short_id=\"002\",direction=\"sent\"} 500",
        "weave_sleeve_datagrams_total{direction=\"sent\"} 7",
        "weave_sleeve_bytes_total{direction=\"received\"} 8000",
        "weave_sleeve_drops_total{reason=\"forged\"} 1",
        "# TYPE weave_build_info gauge",
        concat!("weave_build_info{version=\"", env!("CARGO_PKG_VERSION"), "\"} 1"),
    ] {
        assert!(text.contains(&format!("{want}\n")), "missing {want} in\n{text}");
    }
    assert!(!text.contains("weave_datapath_drops_total{reason=\"rx_delivered\"}"));
    for old in [
        "direction=\"tx\"",
        "direction=\"rx\"",
        "(host2)",
        "# EOF",
        "# UNIT",
    ] {
        assert!(!text.contains(old), "{old} in\n{text}");
    }
}

#[test]
fn families_of_parts_that_are_off_are_left_out() {
    let status = sample::status();
    let text = render(&MetricsInput {
        status: &status,
        counters: None,
        ipam: None,
        dns: None,
        control: ControlTraffic::default(),
        sleeve: None,
    });
    assert!(text
        .contains("weave_connections{state=\"established\",type=\"fastdp\",encryption=\"yes\"} 1"));
    for gone in [
        "weave_datapath",
        "weave_flows",
        "weave_ips",
        "weave_ipam_",
        "weave_dns_",
        "weave_sleeve_",
    ] {
        assert!(!text.contains(gone), "{gone} in\n{text}");
    }
}

/// A peer's nickname is a label value like any other: quotes and backslashes escaped.
#[test]
fn nicknames_are_escaped_in_label_values() {
    let mut status = sample::status();
    status.mesh.peers[1].nickname = "<b>\"x\"\\</b>".into();
    let (counters, ipam, dns) = (sample::counters(), sample::ipam(), sample::dns());
    let text = render(&input(&status, &counters, &ipam, &dns));
    assert!(text.contains("nickname=\"<b>\\\"x\\\"\\\\</b>\""), "{text}");
    promtool_accepts(&text);
}

/// `promtool check metrics` accepts the output (skipped where promtool is missing; `cargo
/// xtask setup` installs it).
#[test]
fn promtool_accepts_the_output() {
    promtool_accepts(&rendered());
}

fn promtool_accepts(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool not found; skipped");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit 3 is lint problems only; the one allowed is Weave's own name for a gauge.
    let only_weaves_name = out.status.code() == Some(3)
        && said.lines().all(|l| {
            l.starts_with("weave_ipam_unreachable_count ") && l.contains("\"_count\" suffix")
        });
    assert!(
        out.status.success() || only_weaves_name,
        "promtool: {said}\n{text}"
    );
}

/// `contrib/monitoring/`, the Grafana dashboard and the Prometheus alert rules shipped with
/// the project.
fn monitoring(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib/monitoring")
        .join(file)
}

/// Metric names (`weave_…`) an expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("weave_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.push(name);
    }
    names
}

/// Every series name `/metrics` can carry (the sample has every part on).
fn exported_names() -> std::collections::BTreeSet<String> {
    rendered()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The alert rules are valid (`promtool check rules`), fire as their test says
/// (`promtool test rules`) and only use metrics we export.
#[test]
fn the_alert_rules_pass_promtool_and_use_our_metrics() {
    let rules = monitoring("weave-router.rules.yml");
    let text = std::fs::read_to_string(&rules).unwrap();
    let exported = exported_names();
    for line in text.lines().filter(|l| l.trim_start().starts_with("expr:")) {
        for name in metric_names(line) {
            assert!(
                exported.contains(&name),
                "{name} in the rules is not exported: {line}"
            );
        }
    }
    for args in [
        ["check", "rules", "weave-router.rules.yml"],
        ["test", "rules", "weave-router.rules.test.yml"],
    ] {
        let Ok(out) = std::process::Command::new("promtool")
            .args(args)
            .current_dir(monitoring(""))
            .output()
        else {
            eprintln!("promtool not found; skipped");
            return;
        };
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every query of the Grafana dashboard parses (`promtool check rules` over them as
/// recording rules, Grafana's variables replaced) and only uses metrics we export.
#[test]
fn the_dashboard_queries_pass_promtool_and_use_our_metrics() {
    let text = std::fs::read_to_string(monitoring("grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");
    let exported = exported_names();
    let mut used = std::collections::BTreeSet::new();
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                exported.contains(&name),
                "{name} in the dashboard is not exported: {expr}"
            );
            used.insert(name);
        }
    }
    // Weave's families all have a panel.
    for weave in [
        "weave_connections",
        "weave_connection_terminations_total",
        "weave_ips",
        "weave_max_ips",
        "weave_dns_entries",
        "weave_flows",
        "weave_ipam_unreachable_count",
        "weave_ipam_unreachable_percentage",
        "weave_ipam_pending_allocates",
        "weave_ipam_pending_claims",
    ] {
        assert!(used.contains(weave), "no panel shows {weave}");
    }
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let promql = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&promql).unwrap()
        ));
    }
    let path =
        std::env::temp_dir().join(format!("weave-router-dashboard-{}.yml", std::process::id()));
    std::fs::write(&path, rules).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output();
    let _ = std::fs::remove_file(&path);
    let Ok(out) = out else {
        eprintln!("promtool not found; skipped");
        return;
    };
    assert!(
        out.status.success(),
        "promtool check rules (dashboard queries): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Refusals of the control plane and of the sleeve's MAC table, by reason, zeros included.
#[test]
fn refusals_are_counted_by_reason() {
    let text = rendered();
    for line in [
        "weave_control_refusals_total{reason=\"slow_peer\"} 2",
        "weave_control_refusals_total{reason=\"oversize_frame\"} 0",
        "weave_gossip_refused_total{reason=\"hop_limit\"} 4",
        "weave_gossip_refused_total{reason=\"not_along_route\"} 0",
        "weave_sleeve_macs_not_learned_total 5",
        "weave_sleeve_bundled_frames_total{direction=\"sent\"} 40",
        "weave_sleeve_bundled_frames_total{direction=\"received\"} 30",
        "weave_sleeve_answered_at_once_total 12",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
    }
}
