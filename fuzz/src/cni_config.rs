//! `cni_config`: the network configuration a container runtime writes on the CNI plugin's
//! stdin (`cli/src/cni/config.rs`, through `vswitch-edge`), raw or built from the fields the
//! plugin reads and those the runtimes add (see [`crate::json`]).
//!
//! `parse` must never panic. What it answers must hold:
//! - an error becomes the specification's error object, in the version the plugin reports it
//!   in (the configuration's when it has a good one, else the newest): exactly `cniVersion`,
//!   `code`, `msg` and `details`, the version one this plugin speaks, the code a well-known one
//!   a configuration can earn (1 incompatible version, 2 unsupported field, 6 not JSON,
//!   7 invalid configuration; 6 exactly when stdin is not JSON), the message not empty;
//! - a configuration is in the version `version_of` tells, and valid: a network name that
//!   reads back the same, an absolute control socket, a subnet as the daemon takes it, a
//!   unicast MAC, published ports other than 0, no `null` previous result.

use serde_json::{Map, Value};
use vswitch_edge::cni::config::{parse, version_of};
use vswitch_edge::cni::error::Code;
use vswitch_edge::cni::version::{Version, SUPPORTED};
use vswitch_edge::control::NetworkName;
use vswitch_edge::daemon::ipam::Ipv4Net;

use crate::input::Input;
use crate::json::{add_fields, document, Field};

const FIELDS: &[Field] = &[
    Field {
        name: "cniVersion",
        values: &[
            "\"1.0.0\"",
            "\"1.1.0\"",
            "\"0.4.0\"",
            "\"0.3.1\"",
            "\"2.0.0\"",
            "1",
            "null",
        ],
        list: false,
    },
    Field {
        name: "cniVersions",
        values: &["[\"1.0.0\", \"0.4.0\"]", "[\"9.9.9\"]", "[]", "\"1.0.0\""],
        list: false,
    },
    Field {
        name: "name",
        values: &["\"vswitch\"", "\"podman\"", "\"a b\"", "\"-x\"", "\"\"", "7"],
        list: false,
    },
    Field {
        name: "type",
        values: &["\"vswitch\"", "\"\"", "\"bridge\"", "null"],
        list: false,
    },
    Field {
        name: "control",
        values: &["\"/run/vswitch/vswitch.sock\"", "\"relative.sock\"", "\"\"", "1"],
        list: false,
    },
    Field {
        name: "subnet",
        values: &["\"10.1.1.0/24\"", "\"10.1.1.7/24\"", "\"10.1.1.0/31\"", "\"10.1.1.0\"", "\"0.0.0.0/0\""],
        list: false,
    },
    Field {
        name: "dns",
        values: &[
            "{}",
            "{\"nameservers\":[\"10.1.1.1\"],\"domain\":\"d\",\"search\":[\"s\"],\"options\":[\"ndots:2\"]}",
            "{\"search\":\"s\"}",
        ],
        list: false,
    },
    Field {
        name: "runtimeConfig",
        values: &[
            "{}",
            "{\"portMappings\":[{\"hostPort\":8080,\"containerPort\":80,\"protocol\":\"tcp\",\"hostIP\":\"\"}]}",
            "{\"portMappings\":[{\"hostPort\":5353,\"containerPort\":53,\"protocol\":\"UDP\",\"hostIP\":\"127.0.0.1\"}]}",
            "{\"portMappings\":[{\"hostPort\":0,\"containerPort\":80}]}",
            "{\"portMappings\":[{\"hostPort\":1,\"containerPort\":2,\"protocol\":\"sctp\"}]}",
            "{\"portMappings\":[{\"hostPort\":1,\"containerPort\":2,\"hostIP\":\"::1\"}]}",
            "{\"portMappings\":[{\"hostPort\":70000,\"containerPort\":2}]}",
            "{\"ips\":[\"10.1.1.50/24\"]}",
            "{\"ips\":[\"10.1.1.50\"]}",
            "{\"ips\":[\"10.1.1.50/33\"]}",
            "{\"ips\":[\"2001:db8::5/64\"]}",
            "{\"ips\":[\"10.1.1.5\",\"10.1.1.6\"]}",
            "{\"mac\":\"02:00:00:aa:bb:cc\"}",
            "{\"mac\":\"ff:ff:ff:ff:ff:ff\"}",
            "{\"dns\":{\"servers\":[\"10.1.1.1\"],\"searches\":[\"svc\"],\"options\":[]}}",
        ],
        list: false,
    },
    Field {
        name: "prevResult",
        values: &["null", "{}", "{\"cniVersion\":\"1.0.0\",\"ips\":[]}", "[]"],
        list: false,
    },
    Field {
        name: "args",
        values: &[
            "{\"cni\":{\"ips\":[\"10.1.1.99\"]}}",
            "{\"cni\":{\"mac\":\"02:00:00:00:00:07\"}}",
            "{\"cni\":{}}",
            "{\"cni\":[]}",
        ],
        list: false,
    },
    Field {
        name: "cni.dev/valid-attachments",
        values: &[
            "[{\"containerID\":\"a1\",\"ifname\":\"eth0\"}]",
            "[{\"containerID\":\"\",\"ifname\":\"eth0\"}]",
            "[{\"containerID\":\"a1\"}]",
            "[]",
        ],
        list: false,
    },
    Field {
        name: "capabilities",
        values: &["{\"portMappings\":true,\"ips\":true}"],
        list: false,
    },
];

/// A configuration: the version, name and type mostly, and some of the other fields.
fn config(inp: &mut Input) -> Map<String, Value> {
    let mut map = Map::new();
    let (required, optional) = FIELDS.split_at(4);
    let required: Vec<&Field> = required
        .iter()
        .filter(|f| f.name != "cniVersions")
        .collect();
    add_fields(inp, &mut map, &required, 240);
    let optional: Vec<&Field> = FIELDS[1..2].iter().chain(optional).collect();
    add_fields(inp, &mut map, &optional, 64);
    map
}

/// The `cni_config` target.
pub fn cni_config(data: &[u8]) {
    let stdin = document(data, config);
    let json: Option<Value> = serde_json::from_slice(&stdin).ok();
    // As the plugin reports errors (`cni::run`).
    let version = (json.as_ref())
        .and_then(|v| version_of(v).ok())
        .unwrap_or(Version::latest());
    let what = String::from_utf8_lossy(&stdin);
    match parse(&stdin) {
        Ok(conf) => {
            let json = json.unwrap_or_else(|| panic!("{what}: accepted, not JSON"));
            assert_eq!(
                Ok(conf.version),
                version_of(&json).map_err(|_| ()),
                "{what}"
            );
            let name = conf.name.to_string();
            assert_eq!(
                name.parse::<NetworkName>().as_ref(),
                Ok(&conf.name),
                "{what}"
            );
            assert!(conf.control.is_absolute(), "{what}: control");
            if let Some(net) = conf.subnet {
                assert!(net.prefix <= 30, "{what}: subnet {net}");
                assert_eq!(net.to_string().parse::<Ipv4Net>(), Ok(net), "{what}");
                assert_eq!(u32::from(net.network) & !net.mask(), 0, "{what}: host bits");
            }
            if let Some((_, Some(prefix))) = conf.ip {
                assert!(prefix <= 32, "{what}: prefix");
            }
            if let Some(mac) = conf.mac {
                assert!(
                    !mac.is_multicast() && mac != vswitch_switch::MacAddr::ZERO,
                    "{what}: {mac}"
                );
            }
            for p in &conf.publish {
                assert!(p.host_port != 0 && p.container_port != 0, "{what}: {p}");
            }
            assert!(
                conf.prev_result.as_ref().is_none_or(|v| !v.is_null()),
                "{what}"
            );
        }
        Err(e) => {
            let object: Value = serde_json::from_str(&e.to_json(version))
                .unwrap_or_else(|err| panic!("{what}: error result not JSON: {err}"));
            let map = object.as_object().expect("an object");
            let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["cniVersion", "code", "details", "msg"], "{what}");
            let v = map["cniVersion"].as_str().expect("a string");
            assert!(SUPPORTED.iter().any(|s| s.as_str() == v), "{what}: {v}");
            let code = map["code"].as_u64().expect("a number");
            assert!([1, 2, 6, 7].contains(&code), "{what}: code {code} ({e})");
            assert_eq!(code == 6, json.is_none(), "{what}: {e}");
            assert_eq!(code, u64::from(e.code.number()), "{what}");
            assert!(e.code != Code::Decode || json.is_none());
            assert!(map["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}");
            assert!(map["details"].is_string(), "{what}");
        }
    }
}
