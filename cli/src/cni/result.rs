//! The ADD result: interfaces, addresses, routes and DNS, in the terms of the invocation's
//! version; merged into a previous plugin's result when vswitch is not first in a chain.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::control::PortView;

use super::config::NetConf;
use super::error::CniError;
use super::version::Version;

/// A success result. Fields this plugin does not know (a previous plugin's, a newer version's)
/// are carried through unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Success {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Since 1.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The container's namespace; none for a host interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// 0.4.0 only: "4" or "6".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `ADDRESS/PREFIX`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// The route every attachment gets.
pub const DEFAULT_ROUTE: &str = "0.0.0.0/0";

impl Success {
    /// A previous plugin's result, as the runtime passed it.
    pub fn from_prev(prev: &Value) -> Result<Success, CniError> {
        serde_json::from_value(prev.clone())
            .map_err(|e| CniError::config(format!("prevResult: {e}")))
    }

    /// The previous plugin's result in `conf`, if vswitch is not first in its chain.
    pub fn prev(conf: &NetConf) -> Result<Option<Success>, CniError> {
        conf.prev_result
            .as_ref()
            .map(Success::from_prev)
            .transpose()
    }

    /// The result of plugging `port` (the container's interface in `netns`), appended to the
    /// previous plugin's result `prev` if there is one.
    pub fn of_plug(conf: &NetConf, prev: Option<Success>, netns: &str, port: &PortView) -> Success {
        let version = conf.version;
        let mut out = prev.unwrap_or_default();
        out.cni_version = version.as_str().to_string();
        let mtu = (version >= Version::V1_1_0).then_some(port.mtu).flatten();
        out.interfaces.push(Interface {
            name: port.host_ifname.clone(),
            mtu,
            ..Interface::default()
        });
        out.interfaces.push(Interface {
            name: port.ifname.clone().unwrap_or_default(),
            mac: Some(port.mac.clone()),
            mtu,
            sandbox: Some(netns.to_string()),
            ..Interface::default()
        });
        let gateway = port.gateway.to_string();
        out.ips.push(IpConfig {
            version: (version == Version::V0_4_0).then(|| "4".to_string()),
            address: format!("{}/{}", port.ip, port.prefix),
            gateway: Some(gateway.clone()),
            interface: Some(out.interfaces.len() - 1),
            ..IpConfig::default()
        });
        out.routes.push(Route {
            dst: DEFAULT_ROUTE.to_string(),
            gw: Some(gateway.clone()),
            ..Route::default()
        });
        out.dns.merge(dns(conf, &gateway));
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("results always serialize")
    }
}

impl Dns {
    /// Adds what `other` has and this lacks: a previous plugin's settings stay first.
    fn merge(&mut self, other: Dns) {
        let add = |to: &mut Vec<String>, from: Vec<String>| {
            for s in from {
                if !to.contains(&s) {
                    to.push(s);
                }
            }
        };
        add(&mut self.nameservers, other.nameservers);
        add(&mut self.search, other.search);
        add(&mut self.options, other.options);
        self.domain = self.domain.take().or(other.domain);
    }
}

/// The attachment's DNS settings: the `dns` capability's, else the configuration's `dns`; the
/// nameserver is the gateway, where the daemon forwards queries, unless one of those names
/// another.
fn dns(conf: &NetConf, gateway: &str) -> Dns {
    let rt = conf.runtime_dns.clone().unwrap_or_default();
    let pick = |runtime: Vec<String>, configured: &Vec<String>| match runtime.is_empty() {
        true => configured.clone(),
        false => runtime,
    };
    let mut nameservers = pick(rt.servers, &conf.dns.nameservers);
    if nameservers.is_empty() {
        nameservers.push(gateway.to_string());
    }
    Dns {
        nameservers,
        domain: conf.dns.domain.clone(),
        search: pick(rt.searches, &conf.dns.search),
        options: pick(rt.options, &conf.dns.options),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::config;
    use serde_json::json;

    fn port() -> PortView {
        serde_json::from_value(json!({
            "port": 1, "kind": "container", "pid": null, "netns": "/run/netns/x",
            "host_ifname": "vsw0123456789ab", "ifname": "eth0", "ip": "10.1.1.2", "prefix": 24,
            "gateway": "10.1.1.1", "mac": "02:76:0a:01:01:02", "mtu": 1500,
            "rx_frames": 0, "rx_bytes": 0, "tx_frames": 0, "tx_bytes": 0, "drops": 0
        }))
        .unwrap()
    }

    fn conf(extra: Value) -> NetConf {
        let mut v = json!({"name": "vswitch", "type": "vswitch"});
        (v.as_object_mut().unwrap()).extend(extra.as_object().unwrap().clone());
        config::parse(v.to_string().as_bytes()).unwrap()
    }

    fn result(extra: Value) -> Value {
        let conf = conf(extra);
        let prev = Success::prev(&conf).unwrap();
        let r = Success::of_plug(&conf, prev, "/run/netns/x", &port());
        serde_json::from_str(&r.to_json()).unwrap()
    }

    #[test]
    fn the_result_follows_each_version() {
        assert_eq!(
            result(json!({"cniVersion": "1.0.0"})),
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "vsw0123456789ab"},
                    {"name": "eth0", "mac": "02:76:0a:01:01:02", "sandbox": "/run/netns/x"}
                ],
                "ips": [{"address": "10.1.1.2/24", "gateway": "10.1.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.1.1"}],
                "dns": {"nameservers": ["10.1.1.1"]}
            })
        );
        let old = result(json!({"cniVersion": "0.4.0"}));
        assert_eq!(old["cniVersion"], "0.4.0");
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][1].get("mtu").is_none());
        let new = result(json!({"cniVersion": "1.1.0"}));
        assert_eq!(new["interfaces"][1]["mtu"], 1500);
        assert!(new["ips"][0].get("version").is_none());
    }

    #[test]
    fn dns_comes_from_the_capability_then_the_configuration() {
        let r = result(json!({
            "cniVersion": "1.0.0",
            "dns": {"search": ["conf.test"], "options": ["ndots:1"], "domain": "conf.test"}
        }));
        assert_eq!(
            r["dns"],
            json!({"nameservers": ["10.1.1.1"], "domain": "conf.test",
                   "search": ["conf.test"], "options": ["ndots:1"]})
        );
        let r = result(json!({
            "cniVersion": "1.0.0",
            "dns": {"search": ["conf.test"]},
            "runtimeConfig": {"dns": {"servers": ["192.0.2.53"], "searches": ["rt.test"]}}
        }));
        assert_eq!(
            r["dns"],
            json!({"nameservers": ["192.0.2.53"], "search": ["rt.test"]})
        );
    }

    #[test]
    fn a_previous_result_is_kept_and_extended() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "dummy0", "sandbox": "/run/netns/x", "x-vendor": 7}],
            "ips": [{"address": "192.0.2.7/32", "interface": 0}],
            "dns": {"nameservers": ["192.0.2.53"]},
            "x-extra": {"kept": true}
        });
        let r = result(json!({"cniVersion": "1.0.0", "prevResult": prev}));
        assert_eq!(r["interfaces"][0], prev["interfaces"][0]);
        assert_eq!(r["interfaces"][2]["name"], "eth0");
        assert_eq!(r["ips"][0], prev["ips"][0]);
        assert_eq!(r["ips"][1]["interface"], 2);
        assert_eq!(r["dns"]["nameservers"], json!(["192.0.2.53", "10.1.1.1"]));
        assert_eq!(r["x-extra"], json!({"kept": true}));
        let bad = conf(json!({"cniVersion": "1.0.0", "prevResult": {"ips": "no"}}));
        let err = Success::prev(&bad).unwrap_err();
        assert!(err.details.contains("prevResult"), "{err}");
    }
}
