//! The plugin configuration on stdin: the network's settings for this plugin, what the runtime
//! added (`runtimeConfig` with the capabilities' arguments, `prevResult`, `args`,
//! `cni.dev/valid-attachments`), validated into a [`NetConf`].
//!
//! This plugin's own fields (see README.md, "Use it with podman"):
//! - `control`: the daemon's control socket (default `/run/vswitch/vswitch.sock`);
//! - `subnet`: the subnet the network is, checked against the daemon's, so that a
//!   configuration that names the wrong daemon fails instead of handing out its addresses;
//! - `dns`: the specification's well-known `nameservers`/`domain`/`search`/`options`, for the
//!   result (the nameserver defaults to the gateway, where the daemon forwards DNS).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use vswitch_switch::MacAddr;

use crate::control::{unicast_mac, Attachment, NetworkName, PublishSpec};
use crate::daemon::ipam::Ipv4Net;

use super::env::parse_ip;
use super::error::{CniError, Code};
use super::version::{negotiate, Version};

/// The daemon's default control socket, as `vswitch run` has it.
pub const DEFAULT_CONTROL: &str = "/run/vswitch/vswitch.sock";

/// A validated plugin configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: Version,
    pub name: NetworkName,
    pub control: PathBuf,
    pub subnet: Option<Ipv4Net>,
    pub dns: Dns,
    /// The static address asked for (the `ips` capability, else `args.cni.ips`), with its
    /// prefix length if given.
    pub ip: Option<(Ipv4Addr, Option<u8>)>,
    /// The MAC asked for (the `mac` capability, else `args.cni.mac`).
    pub mac: Option<MacAddr>,
    /// Published ports (the `portMappings` capability).
    pub publish: Vec<PublishSpec>,
    /// The `dns` capability: the runtime's resolver settings, which win over `dns`.
    pub runtime_dns: Option<RuntimeDns>,
    pub prev_result: Option<Value>,
    /// GC's `cni.dev/valid-attachments`.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The well-known `dns` dictionary.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// The `dns` capability's arguments.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RuntimeDns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// The configuration as it comes, before validation. Unknown fields are let through: the
/// runtime may add its own, and a conflist may carry other plugins' conventions.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    control: Option<PathBuf>,
    subnet: Option<String>,
    #[serde(default)]
    dns: Dns,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    prev_result: Option<Value>,
    #[serde(default)]
    args: Args,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    #[serde(default)]
    port_mappings: Vec<PortMapping>,
    #[serde(default)]
    ips: Vec<String>,
    mac: Option<String>,
    dns: Option<RuntimeDns>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortMapping {
    host_port: u16,
    container_port: u16,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default, rename = "hostIP")]
    host_ip: Option<String>,
}

/// `args`: this plugin reads the conventions' `args.cni.ips` and `args.cni.mac`.
#[derive(Default, Deserialize)]
struct Args {
    #[serde(default)]
    cni: ArgsCni,
}

#[derive(Default, Deserialize)]
struct ArgsCni {
    #[serde(default)]
    ips: Vec<String>,
    mac: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ValidAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// The version of a configuration, or of a VERSION request: what the error result should say
/// even when the configuration is not valid otherwise.
pub fn version_of(value: &Value) -> Result<Version, CniError> {
    let text = |v: &Value| v.as_str().map(str::to_string);
    let cni_version = value.get("cniVersion").map(|v| {
        text(v).ok_or_else(|| CniError::config(format!("cniVersion is {v}, not a string")))
    });
    let cni_versions: Vec<String> = match value.get("cniVersions") {
        None => Vec::new(),
        Some(Value::Array(list)) => list.iter().filter_map(text).collect(),
        Some(v) => return Err(CniError::config(format!("cniVersions is {v}, not a list"))),
    };
    negotiate(cni_version.transpose()?.as_deref(), &cni_versions)
}

/// Parses the configuration read from stdin.
pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    let (version, raw) = decode(stdin)?;
    let name = raw
        .name
        .ok_or_else(|| CniError::config("the network has no name"))?;
    let name = (name.parse()).map_err(|e| CniError::config(format!("name: {e}")))?;
    if raw.kind.is_none_or(|t| t.is_empty()) {
        return Err(CniError::config("the configuration has no type"));
    }
    let control = control_socket(raw.control)?;
    let subnet = (raw.subnet.as_deref())
        .map(|s| s.parse::<Ipv4Net>())
        .transpose()
        .map_err(|e| CniError::config(format!("subnet: {e}")))?;
    let rc = raw.runtime_config;
    let ip = requested_ip(rc.ips, raw.args.cni.ips)?;
    let mac = (rc.mac.or(raw.args.cni.mac))
        .map(|m| unicast_mac(&m).map_err(|e| CniError::config(format!("mac: {e}"))))
        .transpose()?;
    let publish = (rc.port_mappings.iter())
        .map(publish_spec)
        .collect::<Result<_, _>>()?;
    let valid_attachments = (raw.valid_attachments).map(valid_attachments).transpose()?;
    Ok(NetConf {
        version,
        name,
        control,
        subnet,
        dns: raw.dns,
        ip,
        mac,
        publish,
        runtime_dns: rc.dns,
        prev_result: raw.prev_result.filter(|v| !v.is_null()),
        valid_attachments,
    })
}

/// The configuration as JSON, and its version.
fn decode(stdin: &[u8]) -> Result<(Version, Raw), CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            Code::Decode,
            "cannot decode the network configuration",
            format!("stdin is not JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(CniError::config("the configuration is not a JSON object"));
    }
    let version = version_of(&value)?;
    let raw: Raw = serde_json::from_value(value).map_err(|e| CniError::config(e.to_string()))?;
    Ok((version, raw))
}

/// The daemon's control socket: `control`, an absolute path, by default `vswitch run`'s.
fn control_socket(control: Option<PathBuf>) -> Result<PathBuf, CniError> {
    let control = control.unwrap_or_else(|| DEFAULT_CONTROL.into());
    if !control.is_absolute() {
        return Err(CniError::config(format!(
            "control is {}: it must be an absolute path",
            control.display()
        )));
    }
    Ok(control)
}

/// The static address asked for, with its prefix length if given: one IPv4 address at most,
/// from the `ips` capability, else from the older `args.cni.ips` convention.
fn requested_ip(
    capability: Vec<String>,
    args: Vec<String>,
) -> Result<Option<(Ipv4Addr, Option<u8>)>, CniError> {
    // The capability wins over the older `args` convention.
    let (field, ips) = match capability.is_empty() {
        false => ("runtimeConfig.ips", capability),
        true => ("args.cni.ips", args),
    };
    match ips.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(parse_ip(one).map_err(
            |e| match e.contains("IPv4 only") {
                true => CniError::unsupported(format!("{field}: {e}")),
                false => CniError::config(format!("{field}: {e}")),
            },
        )?)),
        more => Err(CniError::unsupported(format!(
            "{field}: {more:?}: vswitch gives a container one IPv4 address"
        ))),
    }
}

/// GC's `cni.dev/valid-attachments`, each checked as a plug's attachment is.
fn valid_attachments(list: Vec<ValidAttachment>) -> Result<Vec<Attachment>, CniError> {
    (list.into_iter())
        .map(|a| {
            let bad = |e| CniError::config(format!("cni.dev/valid-attachments: {e}"));
            Ok(Attachment {
                container_id: a.container_id.parse().map_err(bad)?,
                ifname: a.ifname.parse().map_err(bad)?,
            })
        })
        .collect()
}

/// One `portMappings` entry as a published port.
fn publish_spec(m: &PortMapping) -> Result<PublishSpec, CniError> {
    let what = || {
        format!(
            "portMappings: {}:{}/{}",
            m.host_port,
            m.container_port,
            m.protocol.as_deref().unwrap_or("tcp")
        )
    };
    let udp = match m.protocol.as_deref().map(str::to_lowercase).as_deref() {
        None | Some("" | "tcp") => false,
        Some("udp") => true,
        Some(other) => {
            return Err(CniError::unsupported(format!(
                "{}: protocol {other:?} (tcp and udp only)",
                what()
            )))
        }
    };
    if m.host_port == 0 || m.container_port == 0 {
        return Err(CniError::config(format!("{}: port 0", what())));
    }
    let host_ip = match m.host_ip.as_deref() {
        None | Some("") => Ipv4Addr::UNSPECIFIED,
        Some(text) => match text.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => ip,
            Ok(std::net::IpAddr::V6(_)) => {
                return Err(CniError::unsupported(format!(
                    "{}: hostIP {text}: vswitch publishes on IPv4 only",
                    what()
                )))
            }
            Err(_) => return Err(CniError::config(format!("{}: hostIP {text:?}", what()))),
        },
    };
    Ok(PublishSpec {
        host_ip,
        host_port: m.host_port,
        container_port: m.container_port,
        udp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> Result<NetConf, CniError> {
        parse(v.to_string().as_bytes())
    }

    fn base() -> Value {
        json!({"cniVersion": "1.0.0", "name": "vswitch", "type": "vswitch"})
    }

    fn with(extra: Value) -> Value {
        let mut v = base();
        (v.as_object_mut().unwrap()).extend(extra.as_object().unwrap().clone());
        v
    }

    #[test]
    fn a_minimal_configuration_takes_the_defaults() {
        let c = conf(base()).unwrap();
        assert_eq!(c.version, Version::V1_0_0);
        assert_eq!(c.name.to_string(), "vswitch");
        assert_eq!(c.control, PathBuf::from(DEFAULT_CONTROL));
        assert!(c.subnet.is_none() && c.ip.is_none() && c.mac.is_none());
        assert!(c.publish.is_empty() && c.prev_result.is_none());
    }

    #[test]
    fn capabilities_become_plug_options() {
        let c = conf(with(json!({
            "control": "/tmp/x/ctl.sock",
            "subnet": "10.1.1.0/24",
            "unknownField": {"kept": "out of the way"},
            "dns": {"search": ["example.test"], "options": ["ndots:2"]},
            "runtimeConfig": {
                "portMappings": [
                    {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
                    {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}
                ],
                "ips": ["10.1.1.50/24"],
                "mac": "02:00:00:aa:bb:cc",
                "dns": {"servers": ["10.1.1.1"], "searches": ["svc.test"]}
            },
            "args": {"cni": {"ips": ["10.1.1.99"]}}
        })))
        .unwrap();
        assert_eq!(c.subnet.unwrap().to_string(), "10.1.1.0/24");
        assert_eq!(c.ip, Some((Ipv4Addr::new(10, 1, 1, 50), Some(24))));
        assert_eq!(c.mac, Some(MacAddr([2, 0, 0, 0xaa, 0xbb, 0xcc])));
        let publish: Vec<String> = c.publish.iter().map(|p| p.to_string()).collect();
        assert_eq!(publish, ["8080:80/tcp", "127.0.0.1:5353:53/udp"]);
        assert_eq!(c.runtime_dns.unwrap().searches, ["svc.test"]);
        assert_eq!(c.dns.options, ["ndots:2"]);
        // Without the capability, args.cni.ips.
        let c = conf(with(json!({"args": {"cni": {"ips": ["10.1.1.99"]}}}))).unwrap();
        assert_eq!(c.ip, Some((Ipv4Addr::new(10, 1, 1, 99), None)));
    }

    #[test]
    fn bad_configurations_get_the_specs_codes() {
        let code = |v: Value| conf(v).unwrap_err().code;
        assert_eq!(parse(b"not json").unwrap_err().code, Code::Decode);
        assert_eq!(code(json!([1])), Code::InvalidConfig);
        assert_eq!(
            code(json!({"name": "n", "type": "vswitch"})),
            Code::IncompatibleVersion
        );
        assert_eq!(
            code(with(json!({"cniVersion": "0.3.1"}))),
            Code::IncompatibleVersion
        );
        assert_eq!(code(with(json!({"cniVersion": 1}))), Code::InvalidConfig);
        for missing in ["name", "type"] {
            let mut v = base();
            v.as_object_mut().unwrap().remove(missing);
            let err = conf(v).unwrap_err();
            assert_eq!(err.code, Code::InvalidConfig, "{missing}");
            assert!(err.details.contains(missing), "{err}");
        }
        for (bad, want) in [
            (json!({"name": "a b"}), Code::InvalidConfig),
            (json!({"control": "relative.sock"}), Code::InvalidConfig),
            (json!({"subnet": "10.1.1.0"}), Code::InvalidConfig),
            (
                json!({"runtimeConfig": {"ips": ["10.1.1.5", "10.1.1.6"]}}),
                Code::UnsupportedField,
            ),
            (
                json!({"runtimeConfig": {"ips": ["2001:db8::5/64"]}}),
                Code::UnsupportedField,
            ),
            (
                json!({"runtimeConfig": {"ips": ["ten"]}}),
                Code::InvalidConfig,
            ),
            (
                json!({"runtimeConfig": {"mac": "ff:ff:ff:ff:ff:ff"}}),
                Code::InvalidConfig,
            ),
            (
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "sctp"}]}}),
                Code::UnsupportedField,
            ),
            (
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 2, "hostIP": "::"}]}}),
                Code::UnsupportedField,
            ),
            (
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 2}]}}),
                Code::InvalidConfig,
            ),
            (
                json!({"runtimeConfig": {"portMappings": "8080:80"}}),
                Code::InvalidConfig,
            ),
            (
                json!({"cni.dev/valid-attachments": [{"containerID": "", "ifname": "eth0"}]}),
                Code::InvalidConfig,
            ),
        ] {
            let err = conf(with(bad.clone())).unwrap_err();
            assert_eq!(err.code, want, "{bad}: {err}");
        }
    }

    #[test]
    fn valid_attachments_are_read() {
        let c = conf(with(json!({"cni.dev/valid-attachments": [
            {"containerID": "a1", "ifname": "eth0"},
            {"containerID": "b2", "ifname": "net1"}
        ]})))
        .unwrap();
        let valid = c.valid_attachments.unwrap();
        assert_eq!(valid.len(), 2);
        assert_eq!(valid[1].to_string(), "container b2 net1");
        assert!(conf(base()).unwrap().valid_attachments.is_none());
    }
}
