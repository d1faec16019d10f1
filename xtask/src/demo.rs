//! `cargo xtask demo`: three hosts, a router and two containers on each, pings across.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use weave_tests::{router, TestBed};

use crate::run::step;

/// The demo's namespaces are `wtdemo-*`.
const PREFIX: &str = "wtdemo";
const HOSTS: usize = 3;
const PER_HOST: usize = 2;

fn cidr(host: usize, c: usize) -> String {
    format!("10.2.1.{}/24", host * 10 + c)
}

fn show(cmdline: &str, out: &str) {
    println!("  $ {cmdline}");
    for l in out.lines() {
        println!("    {l}");
    }
}

pub fn demo(keep: bool, no_build: bool) -> Result<()> {
    if !crate::run::is_root() {
        bail!("the demo creates network namespaces and loads BPF programs: run it as root");
    }
    if !no_build {
        crate::setup::setup()?;
        crate::build::build()?;
    }
    let bin = router::require_binary()?;
    step(&format!(
        "{HOSTS} hosts (namespaces {PREFIX}-h1..h{HOSTS}) on an underlay bridge, 198.18.0.0/24"
    ));
    let mut bed = TestBed::new(PREFIX, HOSTS)?;

    step("a router on each host (host i dials hosts 1..i-1)");
    for i in 1..=HOSTS {
        let peers: Vec<String> = (1..i)
            .map(|j| weave_tests::host_addr(j).to_string())
            .collect();
        let r = bed
            .launch(
                i,
                &weave_tests::LaunchOpts {
                    peers: peers.clone(),
                    extra: vec![],
                },
            )
            .with_context(|| format!("launching the router of host {i}"))?;
        println!(
            "  host{i}: nsenter --net=/run/netns/{PREFIX}-h{i} {} launch {}--iface eth0 ... -> peer {}",
            bin.display(),
            peers.iter().map(|p| format!("{p} ")).collect::<String>(),
            r.name()
        );
    }
    for i in 1..=HOSTS {
        bed.router(i)
            .wait_established(HOSTS - 1, Duration::from_secs(30))?;
    }

    step(&format!(
        "{PER_HOST} containers per host, attached with `weave-router attach`"
    ));
    for h in 1..=HOSTS {
        for c in 1..=PER_HOST {
            let ci = bed.attach_container(h, &format!("c{c}"), &cidr(h, c))?;
            println!(
                "  {:<14} {:<14} weave-router attach {} --netns /run/netns/{}",
                bed.container(ci).ns.name(),
                cidr(h, c),
                cidr(h, c),
                bed.container(ci).ns.name()
            );
        }
    }

    step("status connections on every host");
    for h in 1..=HOSTS {
        let out = bed.router(h).connections()?;
        show(
            &format!("nsenter --net=/run/netns/{PREFIX}-h{h} weave-router status connections"),
            &out,
        );
    }

    step("pings between containers on different hosts");
    let mut failed = Vec::new();
    for from in 0..bed.containers.len() {
        for to in 0..bed.containers.len() {
            let (a, b) = (bed.container(from), bed.container(to));
            if a.host == b.host || a.name != "c1" {
                continue;
            }
            let dst = b.ip().unwrap_or_default().to_string();
            // The first packet may wait for ARP; allow a moment.
            let _ = a.wait_ping(&dst, Duration::from_secs(5));
            let out = a.ping(&dst, 3)?;
            let summary = out
                .stdout
                .lines()
                .filter(|l| l.contains("packets transmitted") || l.starts_with("rtt"))
                .collect::<Vec<_>>()
                .join("; ");
            println!("  {} -> {} ({dst}): {summary}", a.ns.name(), b.ns.name());
            if !out.success() {
                failed.push(format!("{} -> {dst}", a.ns.name()));
            }
        }
    }

    step("what host1's router reports");
    let out = bed.router(1).check(&["status"])?;
    show(
        &format!("nsenter --net=/run/netns/{PREFIX}-h1 weave-router status"),
        &out,
    );

    if !failed.is_empty() {
        step("tearing down");
        drop(bed);
        bail!("pings failed: {}", failed.join(", "));
    }
    if keep {
        bed.keep();
        println!();
        println!("The demo is left running.");
        println!(
            "  hosts:      {}",
            (1..=HOSTS)
                .map(|h| format!("{PREFIX}-h{h} "))
                .collect::<String>()
        );
        println!(
            "  containers: {}",
            bed.containers
                .iter()
                .map(|c| format!("{} {}", c.ns.name(), c.ip().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("Step inside a container or a host:");
        println!("  nsenter --net=/run/netns/{PREFIX}-h1c1 ping 10.2.1.21");
        println!("  nsenter --net=/run/netns/{PREFIX}-h2c1 bash");
        println!(
            "  nsenter --net=/run/netns/{PREFIX}-h1 {} status connections",
            bin.display()
        );
        println!(
            "  nsenter --net=/run/netns/{PREFIX}-h1 {} status peers",
            bin.display()
        );
        println!("  bpftool map list; ls /sys/fs/bpf/weave-router/");
        println!("Remove it with:");
        println!("  cargo xtask demo --down");
        return Ok(());
    }
    step("tearing down (routers stopped, namespaces removed)");
    drop(bed);
    println!("    done");
    Ok(())
}

pub fn down() -> Result<()> {
    step(&format!("removing the demo ({PREFIX}-*)"));
    let removed = weave_tests::sweep(PREFIX);
    if removed.is_empty() {
        println!("    nothing to remove");
    } else {
        println!("    removed {} namespaces", removed.len());
    }
    Ok(())
}
