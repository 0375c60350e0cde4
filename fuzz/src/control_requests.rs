//! `control_requests`: a request line as a local client may write it on the control socket
//! (`cli/src/control/protocol.rs`, through `vswitch-edge`), raw or built from the requests'
//! fields (see [`crate::json`]).
//!
//! `decode_request` must never panic, and answers either a request or a failure to send:
//! - a request encodes (`encode_request`) to one line of JSON carrying this protocol's version,
//!   that decodes to the same request and encodes again to the same bytes;
//! - a failure is `invalid` or `version`, the latter only for a line whose `v` is not this
//!   protocol's (and never for a hand-over, which carries a version of its own); it says what
//!   went wrong, and goes back to the client as a response that decodes to the same failure.
//!
//! The client's side, `decode_response`, must not panic on the same bytes either.

use serde_json::{Map, Value};
use vswitch_edge::control::{
    decode_request, decode_response, encode_request, encode_response, ErrorCode, PROTOCOL,
};

use crate::input::Input;
use crate::json::{add_fields, document, field, field_value, Field};

/// Every field of every request, with values each one takes (or nearly takes).
const FIELDS: &[Field] = &[
    Field {
        name: "v",
        values: &["2", "2", "2", "1", "3", "\"2\"", "2.0", "null"],
        list: false,
    },
    Field {
        name: "cmd",
        values: &[
            "\"plug\"",
            "\"unplug\"",
            "\"ls\"",
            "\"fdb\"",
            "\"conntrack\"",
            "\"stats\"",
            "\"stop\"",
            "\"inspect\"",
            "\"gc\"",
            "\"handover\"",
            "\"capture\"",
            "\"conntrack_delete\"",
            "\"fdb_flush\"",
            "\"reboot\"",
            "\"Plug\"",
        ],
        list: false,
    },
    Field {
        name: "pid",
        values: &["42", "1", "0", "4294967295", "4294967296", "-1", "\"42\""],
        list: false,
    },
    Field {
        name: "netns",
        values: &["\"/run/netns/a\"", "\"/\"", "\"relative\"", "\"\"", "null"],
        list: false,
    },
    Field {
        name: "ip",
        values: &[
            "\"10.1.1.9\"",
            "\"0.0.0.0\"",
            "\"::1\"",
            "\"10.1.1\"",
            "null",
        ],
        list: false,
    },
    Field {
        name: "mac",
        values: &[
            "\"02:00:00:00:00:01\"",
            "\"2:0:0:0:0:1\"",
            "\"01:00:5e:00:00:01\"",
            "\"00:00:00:00:00:00\"",
            "\"zz\"",
        ],
        list: false,
    },
    Field {
        name: "ifname",
        values: &[
            "\"eth0\"",
            "\"net1\"",
            "\"fifteen-chars-x\"",
            "\"a/b\"",
            "\".\"",
            "\"\"",
        ],
        list: false,
    },
    Field {
        name: "publish",
        values: &[
            "\"8080:80\"",
            "\"8080:80/tcp\"",
            "\"127.0.0.1:5353:53/udp\"",
            "\"0.0.0.0:1:1\"",
            "\"0:80\"",
            "\"80\"",
            "\"1:2:3:4\"",
        ],
        list: true,
    },
    Field {
        name: "container_id",
        values: &[
            "\"3f2a9b\"",
            "\"a\"",
            "\"k8s_pod.1-x\"",
            "\"-a\"",
            "\"\"",
            "\"a b\"",
        ],
        list: false,
    },
    Field {
        name: "network",
        values: &["\"vswitch\"", "\"a/b\"", "{}", "{\"name\":\"n\"}"],
        list: false,
    },
    Field {
        name: "resolv",
        values: &["true", "false", "\"no\""],
        list: false,
    },
    Field {
        name: "trusted",
        values: &["true", "false"],
        list: false,
    },
    Field {
        name: "isolated",
        values: &["true", "false"],
        list: false,
    },
    Field {
        name: "allow_mac",
        values: &["\"02:00:00:00:00:09\"", "\"ff:ff:ff:ff:ff:ff\""],
        list: true,
    },
    Field {
        name: "allow_ip",
        values: &[
            "\"10.1.1.0/28\"",
            "\"10.1.1.5\"",
            "\"10.1.1.5/24\"",
            "\"0.0.0.0/0\"",
        ],
        list: true,
    },
    Field {
        name: "allow_ethertype",
        values: &[
            "\"86dd\"",
            "\"0x86DD\"",
            "\"0x0800\"",
            "\"0x05ff\"",
            "\"0x10000\"",
        ],
        list: true,
    },
    Field {
        name: "max_macs",
        values: &["0", "5", "4294967295", "-1"],
        list: false,
    },
    Field {
        name: "keep",
        values: &["true", "false"],
        list: false,
    },
    Field {
        name: "valid",
        values: &[
            "{\"container_id\":\"a\",\"ifname\":\"eth0\"}",
            "{\"container_id\":\"a\"}",
            "{\"container_id\":\"b\",\"ifname\":\"net1\",\"x\":1}",
        ],
        list: true,
    },
    Field {
        name: "format",
        values: &["1", "2", "0"],
        list: false,
    },
    Field {
        name: "all",
        values: &["true", "false"],
        list: false,
    },
    Field {
        name: "ports",
        values: &[
            "\"0\"",
            "\"vsw-42\"",
            "\"pid:42\"",
            "\"pid 7\"",
            "\"/run/netns/a\"",
            "\"99999\"",
            "\"007\"",
            "\"a b\"",
        ],
        list: true,
    },
    Field {
        name: "filter",
        values: &[
            "{}",
            "{\"proto\":\"tcp\",\"host\":\"10.1.1.2\",\"port\":80}",
            "{\"proto\":\"sctp\"}",
            "{\"vlan\":1}",
        ],
        list: false,
    },
    Field {
        name: "count",
        values: &["10", "0", "18446744073709551615"],
        list: false,
    },
    Field {
        name: "snaplen",
        values: &["34", "33", "262144", "262145", "null"],
        list: false,
    },
    Field {
        name: "proto",
        values: &["\"tcp\"", "\"udp\"", "\"icmp\"", "\"sctp\""],
        list: false,
    },
    Field {
        name: "inside",
        values: &["\"10.1.1.2\"", "\"10.1.1\""],
        list: false,
    },
    Field {
        name: "inside_port",
        values: &["53", "70000"],
        list: false,
    },
    Field {
        name: "outside",
        values: &["\"198.51.100.2\""],
        list: false,
    },
    Field {
        name: "outside_port",
        values: &["80", "0"],
        list: false,
    },
    Field {
        name: "port",
        values: &["\"vsw-42\"", "1", "null"],
        list: false,
    },
];

/// Each command (as `cmd` has it) and the fields it reads.
const COMMANDS: &[(&str, &[&str])] = &[
    (
        "plug",
        &[
            "pid",
            "netns",
            "ip",
            "mac",
            "ifname",
            "publish",
            "container_id",
            "network",
            "resolv",
            "trusted",
            "isolated",
            "allow_mac",
            "allow_ip",
            "allow_ethertype",
            "max_macs",
        ],
    ),
    ("unplug", &["pid", "netns", "container_id", "ifname"]),
    ("inspect", &["pid", "netns", "container_id", "ifname"]),
    ("ls", &[]),
    ("fdb", &[]),
    ("conntrack", &[]),
    ("stats", &[]),
    ("stop", &["keep"]),
    ("gc", &["network", "valid"]),
    ("handover", &["format", "network"]),
    ("capture", &["all", "ports", "filter", "count", "snaplen"]),
    (
        "conntrack_delete",
        &["proto", "inside", "inside_port", "outside", "outside_port"],
    ),
    ("fdb_flush", &["port"]),
];

/// A request: this protocol's version mostly, a command, some of its fields (rarely
/// another's).
fn request(inp: &mut Input) -> Map<String, Value> {
    let mut map = Map::new();
    if !inp.chance(16) {
        let v = match inp.chance(224) {
            true => Value::from(PROTOCOL),
            false => field_value(inp, field(FIELDS, "v"), 1),
        };
        map.insert("v".into(), v);
    }
    let (cmd, names) = COMMANDS[inp.below(COMMANDS.len())];
    let cmd = match inp.chance(240) {
        true => Value::from(cmd),
        false => field_value(inp, field(FIELDS, "cmd"), 1),
    };
    map.insert("cmd".into(), cmd);
    let mine: Vec<&Field> = names.iter().map(|n| field(FIELDS, n)).collect();
    add_fields(inp, &mut map, &mine, 96);
    if inp.chance(8) {
        let f = &FIELDS[inp.below(FIELDS.len())];
        add_fields(inp, &mut map, &[f], 255);
    }
    map
}

/// The `control_requests` target.
pub fn control_requests(data: &[u8]) {
    let line = document(data, request);
    if let Ok(text) = std::str::from_utf8(&line) {
        let _ = decode_response(text);
    }
    match decode_request(&line) {
        Ok(request) => {
            let encoded = encode_request(&request);
            let what = format!("{request:?} from {}", String::from_utf8_lossy(&line));
            assert!(!encoded.contains(&b'\n'), "{what}: encoded on two lines");
            let value: Value = serde_json::from_slice(&encoded).expect("encoded is JSON");
            assert_eq!(value["v"], Value::from(PROTOCOL), "{what}: version");
            let again = decode_request(&encoded)
                .unwrap_or_else(|e| panic!("{what}: its encoding does not decode: {e}"));
            assert_eq!(again, request, "{what}: round trip");
            assert_eq!(
                encode_request(&again),
                encoded,
                "{what}: encoding not stable"
            );
        }
        Err(failure) => {
            let what = format!("{failure:?} for {}", String::from_utf8_lossy(&line));
            assert!(!failure.message.is_empty(), "{what}: no message");
            let value: Option<Value> = serde_json::from_slice(&line).ok();
            let obj = value.as_ref().and_then(Value::as_object);
            match failure.code {
                ErrorCode::Invalid => {}
                ErrorCode::Version => {
                    let obj = obj.unwrap_or_else(|| panic!("{what}: not an object"));
                    assert!(
                        obj.get("cmd") != Some(&Value::from("handover")),
                        "{what}: a hand-over refused for its version"
                    );
                    let v = obj.get("v").and_then(Value::as_u64);
                    assert_ne!(v, Some(u64::from(PROTOCOL)), "{what}: our version refused");
                }
                code => panic!("{what}: {code:?}"),
            }
            let response = encode_response(&Err(failure.clone()));
            let text = String::from_utf8(response).expect("responses are UTF-8");
            assert!(!text.contains('\n'), "{what}: response on two lines");
            let back = decode_response(&text).expect("a response");
            assert_eq!(back, Err(failure), "{what}: response round trip");
        }
    }
}
