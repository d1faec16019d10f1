//! The Kubernetes manifest (`contrib/kubernetes/weave-router.yaml`), checked offline: there
//! is no cluster here. It parses as YAML; the DaemonSet runs on the host's network,
//! privileged, with its state on the node and `setup-cni` in an init container; the peers
//! come from the ConfigMap; and both containers' arguments are a command line this build
//! accepts.

use clap::Parser;
use serde_norway::Value;

fn documents() -> Vec<Value> {
    let path = weave_tests::router::workspace_root().join("contrib/kubernetes/weave-router.yaml");
    let text = std::fs::read_to_string(&path).expect("the manifest");
    serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML"))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in the manifest"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .expect("a list")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// `$(NAME)` replaced as the kubelet does, from `values`.
fn expand(args: &[String], values: &[(&str, &str)]) -> Vec<String> {
    args.iter()
        .map(|a| {
            values
                .iter()
                .fold(a.clone(), |a, (k, v)| a.replace(&format!("$({k})"), v))
        })
        .collect()
}

fn parses(args: &[String]) {
    let argv = std::iter::once("weave-router".to_string()).chain(args.iter().cloned());
    if let Err(e) = weave_router::cli::Cli::try_parse_from(argv) {
        panic!("weave-router {}: {e}", args.join(" "));
    }
}

#[test]
fn the_daemonset_is_what_weave_kube_was() {
    let docs = documents();
    let config = kind(&docs, "ConfigMap");
    let peers = config["data"]["peers"]
        .as_str()
        .expect("peers in the ConfigMap");
    let ds = kind(&docs, "DaemonSet");
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    assert_eq!(ds["metadata"]["namespace"], config["metadata"]["namespace"]);
    let selector = &ds["spec"]["selector"]["matchLabels"];
    let pod = &ds["spec"]["template"];
    assert_eq!(
        &pod["metadata"]["labels"], selector,
        "the selector picks the pods"
    );
    let spec = &pod["spec"];
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));

    // setup-cni in an init container, into the node's CNI directories.
    let init = &spec["initContainers"][0];
    let init_args = strings(&init["args"]);
    assert_eq!(init_args[0], "setup-cni");
    parses(&init_args);
    let mounts = |c: &Value| -> Vec<(String, String)> {
        c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().into(),
                    m["mountPath"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let host_path = |volume: &str| -> String {
        spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(volume))
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap_or_else(|| panic!("volume {volume} is not a host path"))
            .to_string()
    };
    for (flag, node_dir) in [
        ("--bin-dir", "/opt/cni/bin"),
        ("--conf-dir", "/etc/cni/net.d"),
    ] {
        let at = init_args.iter().position(|a| a == flag).expect(flag);
        let (volume, _) = mounts(init)
            .into_iter()
            .find(|(_, path)| *path == init_args[at + 1])
            .unwrap_or_else(|| panic!("{flag} {} is not mounted", init_args[at + 1]));
        assert_eq!(host_path(&volume), node_dir);
    }

    // The router: privileged, foreground, its state on the node, peers from the ConfigMap.
    let router = &spec["containers"][0];
    assert_eq!(
        router["securityContext"]["privileged"].as_bool(),
        Some(true)
    );
    let args = strings(&router["args"]);
    assert_eq!(&args[..2], ["launch", "--foreground"]);
    assert!(
        args.contains(&"--peers=$(WEAVE_PEERS)".to_string()),
        "{args:?}"
    );
    let env = router["env"].as_sequence().unwrap();
    let from_config = env
        .iter()
        .find(|e| e["name"].as_str() == Some("WEAVE_PEERS"))
        .map(|e| &e["valueFrom"]["configMapKeyRef"])
        .expect("WEAVE_PEERS");
    assert_eq!(from_config["name"], config["metadata"]["name"]);
    assert_eq!(from_config["key"].as_str(), Some("peers"));
    let state_dir = &args[args.iter().position(|a| a == "--state-dir").unwrap() + 1];
    let (volume, _) = mounts(router)
        .into_iter()
        .find(|(_, path)| path == state_dir)
        .expect("the state dir is mounted");
    assert_eq!(host_path(&volume), "/var/lib/weave-router");
    assert_eq!(host_path("bpffs"), "/sys/fs/bpf");
    parses(&expand(
        &args,
        &[("WEAVE_PEERS", peers), ("NODE_NAME", "node-1")],
    ));
    let probe = strings(&router["readinessProbe"]["exec"]["command"]);
    assert_eq!(probe[0], "/weave-router", "the image's binary");
    parses(&probe[1..]);
}
