//! The Docker proxy's rewrite of a container create body: `WEAVE_CIDR` checked, the label
//! and the resolver settings filled in.
//!
//! Invariants: nothing panics on any JSON; a refusal changes nothing; an accepted body stays
//! an object that carries the label with `WEAVE_CIDR`'s specs (unless `none`), keeps every
//! key it had, and gains the weaveDNS server only where it named none; the rewrite is
//! idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use weave_router::docker::cidr::WeaveCidr;
use weave_router::docker::client::CIDR_LABEL;
use weave_router::docker::proxy::{complete_create, container_env};

const DNS: (&str, &str) = ("172.17.0.1:53", "weave.local.");

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let Ok(config) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let dns = (flags & 1 != 0).then_some(DNS);
    let mut rewritten = config.clone();
    match complete_create(&mut rewritten, dns) {
        Err(e) => {
            assert_eq!(rewritten, config, "a refused body was changed");
            assert!(!e.contains('\n'));
        }
        Ok(()) => {
            let env = container_env(&config);
            let wants = WeaveCidr::from_env(&env).expect("accepted");
            if wants == WeaveCidr::Detached {
                assert_eq!(rewritten, config, "a detached container's body was changed");
                return;
            }
            let obj = rewritten.as_object().expect("still an object");
            for key in config.as_object().expect("was an object").keys() {
                assert!(obj.contains_key(key), "key {key} lost");
            }
            let label = rewritten["Labels"][CIDR_LABEL].as_str().expect("the label");
            assert_eq!(WeaveCidr::parse(Some(label)), Ok(wants));
            if dns.is_some() {
                let had = config["HostConfig"]["Dns"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty());
                let dns_now = &rewritten["HostConfig"]["Dns"];
                if had {
                    assert_eq!(dns_now, &config["HostConfig"]["Dns"]);
                } else {
                    assert_eq!(dns_now, &serde_json::json!(["172.17.0.1"]));
                }
            }
            let mut twice = rewritten.clone();
            complete_create(&mut twice, dns).expect("accepted again");
            assert_eq!(twice, rewritten, "the rewrite is not idempotent");
        }
    }
});
