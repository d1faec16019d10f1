//! Partially connected beds: hosts where only some pairs reach each other on the underlay
//! (the others cut with nftables, see [`crate::mesh`]), so that traffic between the rest
//! must be relayed. Building them (a line, a ring), waiting until gossip has given every
//! router a route to every peer, counting what captures and broadcast pings saw, and
//! [`dump`]: everything that tells what went wrong, for failure messages.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::time::Duration;

use crate::bed::{host_addr, TestBed};
use crate::cmd;
use crate::mesh::{self, Capture, MeshSummary, Report};
use crate::router::LaunchOpts;

/// How long gossip may take to give every router a route to every peer.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// A bed of `n` hosts where only the pairs in `links` reach each other on the underlay;
/// host `i` dials the hosts `dial[i-1]`, every router launched with `extra` arguments.
/// Returns once every router has a route to every peer.
pub fn partial_mesh(
    prefix: &str,
    n: usize,
    links: &[(usize, usize)],
    dial: &[&[usize]],
    extra: &[&str],
) -> TestBed {
    partial_mesh_each(prefix, n, links, dial, |_| {
        extra.iter().map(|s| s.to_string()).collect()
    })
}

/// [`partial_mesh`] where host `i`'s router gets the arguments `extra_of(i)`.
pub fn partial_mesh_each(
    prefix: &str,
    n: usize,
    links: &[(usize, usize)],
    dial: &[&[usize]],
    extra_of: impl Fn(usize) -> Vec<String>,
) -> TestBed {
    let mut bed = TestBed::new(prefix, n).expect("test bed");
    let linked = |a: usize, b: usize| {
        links
            .iter()
            .any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b))
    };
    for a in 1..=n {
        for b in a + 1..=n {
            if !linked(a, b) {
                mesh::cut(&bed, a, b).expect("nft: cut the link");
            }
        }
    }
    for i in 1..=n {
        let opts = LaunchOpts {
            peers: dial[i - 1]
                .iter()
                .map(|&j| host_addr(j).to_string())
                .collect(),
            extra: extra_of(i),
        };
        bed.launch(i, &opts).expect("launch");
    }
    wait_converged(&bed, n);
    bed
}

/// host1–host2–host3 with host1↔host3 cut; host3 dials host2, host2 dials host1.
pub fn line(prefix: &str, extra: &[&str]) -> TestBed {
    partial_mesh(prefix, 3, &[(1, 2), (2, 3)], &[&[], &[1], &[2]], extra)
}

/// host1–host2–host3–host4–host1 with the diagonals 1–3 and 2–4 cut.
pub fn ring(prefix: &str, extra: &[&str]) -> TestBed {
    partial_mesh(
        prefix,
        4,
        &[(1, 2), (2, 3), (3, 4), (4, 1)],
        &[&[], &[1], &[2], &[3, 1]],
        extra,
    )
}

/// Waits until every router's report lists every peer and has a route to each.
/// A container `c1` at 10.2.1.<i>/24 on every host `i` of an `n`-host bed: host1's, and the
/// others' in host order.
pub fn container_on_each(bed: &mut TestBed, n: usize) -> (usize, Vec<usize>) {
    let first = bed
        .attach_container(1, "c1", "10.2.1.1/24")
        .expect("attach");
    let others = (2..=n)
        .map(|h| {
            bed.attach_container(h, "c1", &format!("10.2.1.{h}/24"))
                .expect("attach")
        })
        .collect();
    (first, others)
}

pub fn wait_converged(bed: &TestBed, n: usize) {
    let all: BTreeSet<String> = (1..=n).map(|i| bed.peer_name(i)).collect();
    for i in 1..=n {
        let me = bed.peer_name(i);
        let r = bed.router(i);
        cmd::wait_for(
            &format!("host{i} to know and route to every peer"),
            CONVERGE,
            || {
                let summary = MeshSummary::of(r).ok()?;
                summary.agrees(&me, &all).then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", dump(bed)));
    }
}

/// Everything that tells what went wrong: routes, peers, non-zero counters, cut links.
pub fn dump(bed: &TestBed) -> String {
    let mut out = String::new();
    for h in &bed.hosts {
        let Some(r) = h.router.as_ref() else { continue };
        let _ = writeln!(out, "--- host{} ({}) {}", h.index, h.addr, r.name());
        match Report::of(r) {
            Ok(rep) => {
                let _ = writeln!(out, "routes: {}", rep.routes_text());
            }
            Err(e) => {
                let _ = writeln!(out, "report: {e}");
            }
        }
        let _ = writeln!(
            out,
            "status peers:\n{}",
            r.check(&["status", "peers"])
                .unwrap_or_else(|e| e.to_string())
        );
        let _ = writeln!(
            out,
            "status connections:\n{}",
            r.connections().unwrap_or_else(|e| e.to_string())
        );
        if let Ok(m) = r.metrics() {
            let nonzero: Vec<&str> = m
                .lines()
                .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
                .filter(|l| {
                    l.contains("datapath") || l.contains("weave_peer_") || l.contains("sleeve")
                })
                .collect();
            let _ = writeln!(out, "metrics (non-zero data path):\n{}", nonzero.join("\n"));
        }
        let _ = writeln!(out, "nft:\n{}", mesh::block_rules(&h.ns));
    }
    let _ = writeln!(out, "--- underlay nft:\n{}", mesh::underlay_rules(bed));
    out
}

/// Packets per (source, destination) underlay address pair whose inner packet contains
/// `inner` (all packets with "").
pub fn flows(pkts: &[mesh::Packet], inner: &str) -> BTreeMap<(String, String), usize> {
    let mut m = BTreeMap::new();
    for p in pkts.iter().filter(|p| p.inner.contains(inner)) {
        *m.entry((p.src.to_string(), p.dst.to_string())).or_insert(0) += 1;
    }
    m
}

/// How many packets `f` counts from host `src` to host `dst`.
pub fn count(f: &BTreeMap<(String, String), usize>, src: usize, dst: usize) -> usize {
    f.get(&(host_addr(src).to_string(), host_addr(dst).to_string()))
        .copied()
        .unwrap_or(0)
}

/// Sends `count` broadcast pings (to 10.2.1.255) from container `from` and returns, for
/// each receiving container, how often it saw each sequence number (from a capture on its
/// `ethwe`), and what ping printed.
pub fn broadcast_counts(
    bed: &TestBed,
    from: usize,
    to: &[usize],
    count: u32,
) -> (BTreeMap<String, BTreeMap<u32, usize>>, String) {
    for &c in to {
        bed.container(c)
            .ns
            .sysctl("net.ipv4.icmp_echo_ignore_broadcasts", "0")
            .expect("sysctl");
    }
    let caps: Vec<(String, Capture)> = to
        .iter()
        .map(|&c| {
            let ct = bed.container(c);
            (
                ct.ns.name().to_string(),
                Capture::start(&ct.ns, "ethwe", "icmp and dst host 10.2.1.255").expect("tcpdump"),
            )
        })
        .collect();
    let out = bed
        .container(from)
        .ns
        .run_timeout(
            &[
                "ping",
                "-n",
                "-b",
                "-c",
                &count.to_string(),
                "-i",
                "0.5",
                "-W",
                "1",
                "10.2.1.255",
            ],
            Duration::from_secs(20),
        )
        .expect("ping -b runs");
    std::thread::sleep(Duration::from_millis(500));
    let mut m = BTreeMap::new();
    for (name, cap) in caps {
        let mut seqs: BTreeMap<u32, usize> = BTreeMap::new();
        for p in cap.stop() {
            if let Some(seq) = p
                .what
                .split(", ")
                .find_map(|w| w.strip_prefix("seq "))
                .and_then(|s| s.parse().ok())
            {
                *seqs.entry(seq).or_insert(0) += 1;
            }
        }
        m.insert(name, seqs);
    }
    (m, out.stdout)
}

/// Panics (with [`dump`]) unless every container in `counts` saw each of the `count`
/// broadcasts exactly once.
pub fn assert_once_each(
    bed: &TestBed,
    counts: &BTreeMap<String, BTreeMap<u32, usize>>,
    count: u32,
    ping_out: &str,
) {
    let want: BTreeMap<u32, usize> = (1..=count).map(|s| (s, 1)).collect();
    let bad: Vec<String> = counts
        .iter()
        .filter(|(_, seqs)| **seqs != want)
        .map(|(n, seqs)| format!("{n}: seq -> copies {seqs:?}"))
        .collect();
    assert!(
        bad.is_empty(),
        "each broadcast should arrive exactly once (want {want:?}):\n{}\nping -b:\n{ping_out}\n{}",
        bad.join("\n"),
        dump(bed)
    );
}
