//! The result of an ADD (pure): the interface the router made, its addresses, the routes it
//! added and weaveDNS as the resolver, appended to the result of the plugins before this one
//! (`prevResult`), written in the configuration's `cniVersion`.

use serde_json::{json, Value};

use crate::api::cni::CniAttached;

/// Whether `cni_version` writes `"version": "4"` in each IP (before 1.0.0).
fn ips_carry_version(cni_version: &str) -> bool {
    matches!(cni_version, "0.3.0" | "0.3.1" | "0.4.0")
}

fn list(prev: Option<&Value>, key: &str) -> Vec<Value> {
    prev.and_then(|p| p[key].as_array().cloned())
        .unwrap_or_default()
}

/// The result of ADD: `prev` (when chained after other plugins) with our interface, its
/// addresses and routes added; our DNS unless an earlier plugin set one.
pub fn add_result(cni_version: &str, prev: Option<&Value>, attached: &CniAttached) -> Value {
    let mut interfaces = list(prev, "interfaces");
    let index = interfaces.len();
    interfaces.push(json!({
        "name": attached.ifname,
        "mac": attached.mac,
        "sandbox": attached.netns.display().to_string(),
    }));
    let mut ips = list(prev, "ips");
    for a in &attached.addresses {
        let mut ip = json!({ "address": a, "interface": index });
        if ips_carry_version(cni_version) {
            ip["version"] = json!("4");
        }
        ips.push(ip);
    }
    let mut routes = list(prev, "routes");
    routes.extend(attached.routes.iter().map(|r| json!({ "dst": r })));
    let mut result = json!({
        "cniVersion": cni_version,
        "interfaces": interfaces,
        "ips": ips,
    });
    if !routes.is_empty() {
        result["routes"] = json!(routes);
    }
    let prev_dns = prev
        .map(|p| p["dns"].clone())
        .filter(|d| d.as_object().is_some_and(|o| !o.is_empty()));
    match prev_dns {
        Some(d) => result["dns"] = d,
        None if !attached.nameservers.is_empty() => {
            result["dns"] = json!({
                "nameservers": attached.nameservers,
                "search": attached.search,
            });
        }
        None => {}
    }
    result
}

/// CHECK: the previous result must name our interface in the container's namespace and
/// each of its addresses (the spec's CHECK compares what was set up with `prevResult`).
pub fn matches_prev_result(prev: &Value, attached: &CniAttached) -> Result<(), String> {
    let interfaces = list(Some(prev), "interfaces");
    let netns = attached.netns.display().to_string();
    let Some(index) = interfaces.iter().position(|i| {
        i["name"].as_str() == Some(attached.ifname.as_str())
            && i["sandbox"].as_str() == Some(netns.as_str())
    }) else {
        return Err(format!(
            "prevResult lists no interface {} in {netns}",
            attached.ifname
        ));
    };
    let ips = list(Some(prev), "ips");
    for a in &attached.addresses {
        let listed = ips.iter().any(|ip| {
            ip["address"].as_str() == Some(a.as_str())
                && ip["interface"].as_u64().is_none_or(|i| i as usize == index)
        });
        if !listed {
            return Err(format!(
                "prevResult does not list {a} on {}",
                attached.ifname
            ));
        }
    }
    Ok(())
}

/// The answer to VERSION.
pub fn version_result(cni_version: &str) -> Value {
    json!({
        "cniVersion": cni_version,
        "supportedVersions": super::SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached() -> CniAttached {
        CniAttached {
            netns: "/run/netns/cni-1".into(),
            ifname: "eth0".into(),
            mac: "02:00:00:00:00:01".into(),
            addresses: vec!["10.2.1.5/24".into()],
            routes: vec!["169.254.53.53/32".into()],
            nameservers: vec!["169.254.53.53".into()],
            search: vec!["weave.local".into()],
        }
    }

    #[test]
    fn a_first_plugins_result_has_the_interface_address_route_and_dns() {
        assert_eq!(
            add_result("1.0.0", None, &attached()),
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/cni-1"}],
                "ips": [{"address": "10.2.1.5/24", "interface": 0}],
                "routes": [{"dst": "169.254.53.53/32"}],
                "dns": {"nameservers": ["169.254.53.53"], "search": ["weave.local"]},
            })
        );
    }

    #[test]
    fn older_versions_mark_the_ip_version() {
        let r = add_result("0.4.0", None, &attached());
        assert_eq!(r["ips"][0]["version"], "4");
        assert_eq!(r["cniVersion"], "0.4.0");
    }

    #[test]
    fn a_chained_result_keeps_what_came_before() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo0"}],
            "ips": [{"address": "192.168.9.2/24", "interface": 0}],
            "dns": {"nameservers": ["192.168.9.1"]},
        });
        let r = add_result("1.0.0", Some(&prev), &attached());
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 2);
        assert_eq!(
            r["ips"][1],
            json!({"address": "10.2.1.5/24", "interface": 1})
        );
        assert_eq!(r["dns"], json!({"nameservers": ["192.168.9.1"]}));
    }

    #[test]
    fn no_dns_when_the_router_runs_none() {
        let mut a = attached();
        a.nameservers.clear();
        a.routes.clear();
        let r = add_result("1.0.0", None, &a);
        assert!(r.get("dns").is_none() && r.get("routes").is_none(), "{r}");
    }

    #[test]
    fn check_compares_with_the_previous_result() {
        let a = attached();
        let prev = add_result("1.0.0", None, &a);
        assert_eq!(matches_prev_result(&prev, &a), Ok(()));
        let mut other = a.clone();
        other.addresses = vec!["10.2.1.6/24".into()];
        assert!(matches_prev_result(&prev, &other)
            .unwrap_err()
            .contains("does not list 10.2.1.6/24"));
        other = a.clone();
        other.ifname = "net1".into();
        assert!(matches_prev_result(&prev, &other)
            .unwrap_err()
            .contains("no interface net1"));
    }

    #[test]
    fn version_lists_what_is_supported() {
        assert_eq!(
            version_result("1.0.0")["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
        );
    }
}
