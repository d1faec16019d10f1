//! weaveDNS over two hosts, with real clients: `dig` in the containers, `dnsmasq` as the
//! upstream server.

use std::collections::BTreeSet;
use std::time::Duration;

use weave_tests::cmd::{wait_for, Background};
use weave_tests::netns::Netns;
use weave_tests::{require_root, TestBed};

/// Where the routers listen by default.
const DNS: &str = "169.254.53.53";
const UPSTREAM: &str = "198.18.0.53";

/// `dig` from a container: (status line word like NOERROR, answers of +short style).
fn dig(ns: &Netns, args: &[&str]) -> (String, Vec<String>) {
    let mut argv = vec![
        "dig",
        "@169.254.53.53",
        "+time=2",
        "+tries=1",
        "+noall",
        "+comments",
        "+answer",
    ];
    argv.extend_from_slice(args);
    let out = ns.run(&argv).expect("dig runs");
    let status = out
        .stdout
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("NO ANSWER")
        .to_string();
    let answers = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    (status, answers)
}

fn wait_answer(ns: &Netns, args: &[&str], want: &[&str], what: &str) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    wait_for(what, Duration::from_secs(15), || {
        let (_, mut got) = dig(ns, args);
        got.sort();
        (got == want).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: last answer {:?}", dig(ns, args)));
}

fn wait_status(ns: &Netns, args: &[&str], want: &str, what: &str) {
    wait_for(what, Duration::from_secs(15), || {
        (dig(ns, args).0 == want).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: last answer {:?}", dig(ns, args)));
}

#[test]
fn names_resolve_across_hosts_and_go_away_with_their_container_or_peer() {
    if !require_root("names_resolve_across_hosts_and_go_away_with_their_container_or_peer") {
        return;
    }
    let mut bed = TestBed::new("wdns", 2).expect("test bed");

    // The upstream: dnsmasq on the underlay, serving a zone of its own.
    let up = bed
        .add_node("upstream", UPSTREAM.parse().unwrap())
        .expect("upstream node")
        .name()
        .to_string();
    let up = Netns::borrow(&up);
    let _dnsmasq = Background::spawn(&up.wrap(&[
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        "--user=root",
        "--bind-interfaces",
        &format!("--listen-address={UPSTREAM}"),
        "--local=/upstream.test/",
        "--address=/www.upstream.test/192.0.2.7",
        "--ptr-record=9.2.0.192.in-addr.arpa,gw.upstream.test",
    ]))
    .expect("dnsmasq starts");
    let resolv = bed.state_dir(0).with_file_name("resolv.conf");
    std::fs::create_dir_all(resolv.parent().unwrap()).unwrap();
    std::fs::write(
        &resolv,
        format!("nameserver {DNS}\nnameserver {UPSTREAM}\n"),
    )
    .unwrap();
    let resolv = resolv.to_string_lossy().to_string();

    bed.launch_mesh(&["--resolv-conf", &resolv])
        .expect("routers connect");
    let attach = |bed: &mut TestBed, host: usize, name: &str, cidr: &str, hostname: &str| {
        let c = bed.add_container(host, name).expect("container");
        let path = bed.container(c).ns.path();
        bed.router(host)
            .check(&[
                "attach",
                cidr,
                "--netns",
                &path.to_string_lossy(),
                "--hostname",
                hostname,
            ])
            .expect("attach --hostname");
        c
    };
    let c1 = attach(&mut bed, 1, "c1", "10.2.1.1/24", "w1");
    let c2 = attach(&mut bed, 2, "c2", "10.2.1.2/24", "w2");
    let _c3 = attach(&mut bed, 2, "c3", "10.2.1.3/24", "pair");
    let _c4 = attach(&mut bed, 1, "c4", "10.2.1.4/24", "pair");
    let (n1, n2) = (bed.container(c1).ns.path(), bed.container(c2).ns.path());
    let (n1, n2) = (
        Netns::borrow(n1.file_name().unwrap().to_str().unwrap()),
        Netns::borrow(n2.file_name().unwrap().to_str().unwrap()),
    );

    // The only way out of the container is ethwe: the route attach added.
    let route = n1.ip("route get 169.254.53.53").expect("route");
    assert!(route.contains("dev ethwe"), "{route}");

    // A name attached on host 2 resolves in a container of host 1, and its PTR too.
    wait_answer(
        &n1,
        &["w2.weave.local"],
        &["10.2.1.2"],
        "w2 resolves on host 1",
    );
    let (status, ptr) = dig(&n1, &["-x", "10.2.1.2"]);
    assert_eq!(
        (status.as_str(), ptr),
        ("NOERROR", vec!["w2.weave.local.".to_string()])
    );
    // Over TCP as well, and case does not matter.
    let (_, a) = dig(&n1, &["+tcp", "W2.Weave.Local"]);
    assert_eq!(a, ["10.2.1.2"]);

    // Two addresses for one name (one per host), both returned, in turn first.
    wait_answer(
        &n1,
        &["pair.weave.local"],
        &["10.2.1.3", "10.2.1.4"],
        "pair has both",
    );
    let firsts: BTreeSet<String> = (0..20)
        .map(|_| dig(&n1, &["pair.weave.local"]).1[0].clone())
        .collect();
    assert_eq!(firsts.len(), 2, "round robin: first answers {firsts:?}");

    // Unknown names in the domain: NXDOMAIN, odd characters too.
    assert_eq!(dig(&n1, &["nope.weave.local"]).0, "NXDOMAIN");
    assert_eq!(dig(&n1, &["we$i\\rd.weave.local"]).0, "NXDOMAIN");

    // Everything else goes to the upstream (never to ourselves, listed first).
    assert_eq!(
        dig(&n1, &["www.upstream.test"]),
        ("NOERROR".to_string(), vec!["192.0.2.7".to_string()])
    );
    assert_eq!(dig(&n2, &["+tcp", "www.upstream.test"]).1, ["192.0.2.7"]);
    assert_eq!(dig(&n1, &["-x", "192.0.2.9"]).1, ["gw.upstream.test."]);
    assert_eq!(dig(&n1, &["missing.upstream.test"]).0, "NXDOMAIN");

    // Garbage to the server is answered or dropped; it goes on answering.
    n1.sh("printf 'garbage' > /dev/udp/169.254.53.53/53; head -c 3000 /dev/zero > /dev/udp/169.254.53.53/53")
        .expect("send garbage");
    assert_eq!(dig(&n1, &["w1.weave.local"]).1, ["10.2.1.1"]);

    // The CLI: status, lookup, args, add/remove, bad input.
    let r1 = bed.router(1);
    let st = r1.check(&["status", "dns"]).expect("status dns");
    assert!(
        st.lines()
            .any(|l| l.starts_with("w2.weave.local") && l.contains("10.2.1.2")),
        "{st}"
    );
    assert_eq!(r1.check(&["dns-lookup", "w2"]).unwrap().trim(), "10.2.1.2");
    assert_eq!(
        r1.check(&["dns-args"]).unwrap().trim(),
        "--dns=169.254.53.53 --dns-search=weave.local."
    );
    let summary = r1.check(&["status"]).expect("status");
    assert!(
        summary.contains("Service: dns") && summary.contains(UPSTREAM),
        "{summary}"
    );
    assert!(!summary.contains(&format!("Upstream: {DNS}")), "{summary}");
    let bad = r1.cli(&["dns-add", "10.2.1.300", "-h", "x"]).unwrap();
    assert!(
        !bad.success() && bad.stderr.contains("\"10.2.1.300\" is not an IPv4 address"),
        "{bad:?}"
    );
    let bad = r1
        .cli(&["dns-add", "10.2.1.9", "-h", "x.example.com"])
        .unwrap();
    assert!(
        !bad.success() && bad.stderr.contains("is not in the domain weave.local."),
        "{bad:?}"
    );
    r1.check(&["dns-add", "10.9.9.9", "-h", "ext"])
        .expect("dns-add");
    wait_answer(
        &n2,
        &["ext.weave.local"],
        &["10.9.9.9"],
        "ext resolves on host 2",
    );
    r1.check(&["dns-remove", "10.9.9.9"]).expect("dns-remove");
    wait_status(&n2, &["ext.weave.local"], "NXDOMAIN", "ext gone on host 2");

    // Detach on host 2: the name is gone on every host.
    bed.router(2)
        .detach(&bed.container(c2).ns.path())
        .expect("detach");
    wait_status(&n1, &["w2.weave.local"], "NXDOMAIN", "w2 gone on host 1");
    let (s, _) = dig(&bed.container(_c3).ns, &["w2.weave.local"]);
    assert_eq!(s, "NXDOMAIN", "w2 gone on host 2");

    // Host 2's router restarts: its containers' names are answered again everywhere.
    let opts = weave_tests::LaunchOpts {
        peers: vec![weave_tests::host_addr(1).to_string()],
        extra: vec!["--resolv-conf".into(), resolv.clone()],
    };
    let stored =
        std::fs::read_to_string(bed.state_dir(2).join("dns.json")).expect("registrations stored");
    assert!(
        stored.contains("pair.weave.local.") && !stored.contains("w2.weave.local."),
        "{stored}"
    );
    bed.relaunch(2, &opts).expect("relaunch router 2");
    let log = bed.router(2).log_tail(400);
    assert!(
        log.contains("DNS: 1 registrations of an earlier run restored"),
        "{log}"
    );
    bed.router(2)
        .wait_established(1, std::time::Duration::from_secs(30))
        .expect("router 2 back");
    wait_answer(
        &n1,
        &["pair.weave.local"],
        &["10.2.1.3", "10.2.1.4"],
        "pair has both after host 2's restart",
    );
    wait_answer(
        &bed.container(_c3).ns,
        &["pair.weave.local"],
        &["10.2.1.3", "10.2.1.4"],
        "host 2 answers after its restart",
    );

    // Host 2's router stops: its entries disappear from host 1.
    bed.router_mut(2).stop().expect("stop router 2");
    wait_answer(
        &n1,
        &["pair.weave.local"],
        &["10.2.1.4"],
        "host 2's pair entry gone",
    );
    assert_eq!(dig(&n1, &["w1.weave.local"]).1, ["10.2.1.1"]);
}
