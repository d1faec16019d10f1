use super::*;
use crate::api::sample;

fn sample_report() -> Report {
    let (status, daemon, endpoints) = (sample::status(), sample::daemon(), sample::endpoints());
    let (counters, ipam, dns) = (sample::counters(), sample::ipam(), sample::dns());
    report(ReportInput {
        status: &status,
        daemon: &daemon,
        endpoints: &endpoints,
        counters: Some(&counters),
        ipam: Some(&ipam),
        dns: Some(&dns),
    })
}

/// Every field of `/report` against `golden.json` (`UPDATE_GOLDEN=1` rewrites it; read the
/// diff before committing).
#[test]
fn the_report_matches_its_golden_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/report/golden.json");
    let mut text = serde_json::to_string_pretty(&sample_report()).unwrap();
    text.push('\n');
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let golden = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        text, golden,
        "the report changed: UPDATE_GOLDEN=1 and read the diff"
    );
}

/// The fields the two old bugs and Weave's users look at, by name.
#[test]
fn the_fields_tell_the_truth() {
    let r = serde_json::to_value(sample_report()).unwrap();
    let router = &r["Router"];
    assert_eq!(router["Encryption"], true);
    assert_eq!(router["PeerDiscovery"], true);
    assert_eq!(
        router["TrustedSubnets"],
        serde_json::json!(["10.0.0.0/24", "192.168.7.0/24"])
    );
    assert_eq!(router["TerminationCount"], 4);
    assert_eq!(
        router["UnicastRoutes"][2],
        serde_json::json!({"Dest": "0a:00:00:00:00:05", "Via": "0a:00:00:00:00:02"})
    );
    assert_eq!(
        router["BroadcastRoutes"][0],
        serde_json::json!({"Dest": "0a:00:00:00:00:01", "Via": ["0a:00:00:00:00:02", "0a:00:00:00:00:03"]})
    );
    let ipam = &r["IPAM"];
    assert_eq!(ipam["RangeNumIPs"], 1 << 20);
    assert_eq!(ipam["ActiveIPs"], 2);
    assert_eq!(ipam["PendingAllocates"], 1);
    assert_eq!(ipam["Entries"][2]["IsKnownPeer"], false);
    assert_eq!(ipam["Entries"][1]["Nickname"], "host2");
    let dns = &r["DNS"];
    assert_eq!(dns["Domain"], "weave.local.");
    assert_eq!(dns["Address"], "169.254.53.53:53");
    assert_eq!(dns["Entries"][2]["Tombstone"], true);
    let datapath = &r["Datapath"];
    assert_eq!(datapath["LearnedMACs"], 4);
    assert_eq!(datapath["Traffic"][0]["NickName"], "host2");
    assert_eq!(datapath["Traffic"][0]["ReceivedBytes"], 600);
    // Names of live entries only; a Docker container by its short ID.
    assert_eq!(
        datapath["Containers"][0]["Names"],
        serde_json::json!(["web.weave.local"])
    );
    assert_eq!(datapath["Containers"][1]["ID"], "4f1c2b3a9d8e");
    assert_eq!(
        datapath["Containers"][1]["Names"],
        serde_json::json!(["db.weave.local"])
    );
}

#[test]
fn parts_that_are_off_are_null() {
    let (status, daemon) = (sample::status(), sample::daemon());
    let r = serde_json::to_value(report(ReportInput {
        status: &status,
        daemon: &daemon,
        endpoints: &[],
        counters: None,
        ipam: None,
        dns: None,
    }))
    .unwrap();
    assert!(r["IPAM"].is_null() && r["DNS"].is_null(), "{r}");
    assert!(r["Datapath"]["LearnedMACs"].is_null());
    assert_eq!(r["Datapath"]["Traffic"], serde_json::json!([]));
}
