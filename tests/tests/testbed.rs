//! The test bed itself: the baseline topologies carry traffic and leave nothing behind.

use std::time::Instant;

use weave_tests::{netns, pair, require_root, Mode, TestBed};

fn leftovers(prefix: &str) -> Vec<String> {
    netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect()
}

#[test]
fn baselines_carry_traffic_and_teardown_is_complete() {
    if !require_root("baselines_carry_traffic_and_teardown_is_complete") {
        return;
    }
    for (mode, prefix) in [(Mode::Routed, "wttr"), (Mode::KernelVxlan, "wttv")] {
        let t = Instant::now();
        let p = pair(prefix, mode.clone(), 1450).expect("baseline pair");
        let built = t.elapsed();
        let out = p.client().ping(&p.server_ip(), 2).expect("ping runs");
        assert!(out.success(), "{mode}: ping failed: {}", out.stdout);
        assert_eq!(
            leftovers(prefix).len(),
            5,
            "{mode}: underlay, 2 hosts, 2 containers"
        );
        let t2 = Instant::now();
        drop(p);
        eprintln!("{mode}: built in {built:?}, removed in {:?}", t2.elapsed());
        assert!(
            leftovers(prefix).is_empty(),
            "{mode}: left {:?}",
            leftovers(prefix)
        );
    }
}

#[test]
fn teardown_happens_on_panic() {
    if !require_root("teardown_happens_on_panic") {
        return;
    }
    let r = std::panic::catch_unwind(|| {
        let mut bed = TestBed::new("wttp", 2).expect("bed");
        bed.add_container(1, "c1").expect("container");
        assert_eq!(leftovers("wttp").len(), 4);
        panic!("on purpose");
    });
    assert!(r.is_err());
    assert!(leftovers("wttp").is_empty(), "left {:?}", leftovers("wttp"));
}
