//! The invocation's parameters: the `CNI_*` environment variables, checked per verb.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use vswitch_switch::MacAddr;

use crate::control::{unicast_mac, ContainerId, IfName};

use super::error::CniError;

/// The operation asked for (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Verb {
    pub fn parse(text: &str) -> Option<Verb> {
        Some(match text {
            "ADD" => Verb::Add,
            "DEL" => Verb::Del,
            "CHECK" => Verb::Check,
            "STATUS" => Verb::Status,
            "GC" => Verb::Gc,
            "VERSION" => Verb::Version,
            _ => return None,
        })
    }
}

/// The parameters of an attachment operation (ADD, DEL, CHECK).
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub container_id: ContainerId,
    /// Required by ADD and CHECK; DEL may come without it (the namespace is gone).
    pub netns: Option<PathBuf>,
    pub ifname: IfName,
    pub args: CniArgs,
}

/// What this plugin takes from `CNI_ARGS` (the conventions' `IP` and `MAC`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniArgs {
    pub ip: Option<(Ipv4Addr, Option<u8>)>,
    pub mac: Option<MacAddr>,
}

/// The environment, through `get` (`std::env::var`, or a map in tests).
pub struct Env<F: Fn(&str) -> Option<String>> {
    pub get: F,
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn verb(&self) -> Result<Verb, CniError> {
        let text = (self.get)("CNI_COMMAND").unwrap_or_default();
        Verb::parse(&text).ok_or_else(|| {
            CniError::env(format!(
                "CNI_COMMAND is {text:?}, not one of ADD, DEL, CHECK, STATUS, GC and VERSION"
            ))
        })
    }

    /// The parameters of `verb`, an attachment operation.
    pub fn params(&self, verb: Verb) -> Result<Params, CniError> {
        let required = |name: &str| {
            (self.get)(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| CniError::env(format!("{name} is required for {verb:?}")))
        };
        let id = required("CNI_CONTAINERID")?;
        let container_id =
            (id.parse()).map_err(|e| CniError::env(format!("CNI_CONTAINERID: {e}")))?;
        let ifname = required("CNI_IFNAME")?;
        let ifname = (ifname.parse()).map_err(|e| CniError::env(format!("CNI_IFNAME: {e}")))?;
        let netns = match verb {
            Verb::Del => (self.get)("CNI_NETNS").filter(|v| !v.is_empty()),
            _ => Some(required("CNI_NETNS")?),
        };
        let netns = netns.map(PathBuf::from);
        if let Some(path) = netns.as_ref().filter(|p| !p.is_absolute()) {
            return Err(CniError::env(format!(
                "CNI_NETNS is {}: it must be an absolute path",
                path.display()
            )));
        }
        Ok(Params {
            container_id,
            netns,
            ifname,
            args: parse_args(&(self.get)("CNI_ARGS").unwrap_or_default())?,
        })
    }
}

/// Parses `CNI_ARGS`, `K=V;K2=V2`. Keys other than `IP` and `MAC` are refused unless
/// `IgnoreUnknown` is set, as the conventions say.
pub fn parse_args(text: &str) -> Result<CniArgs, CniError> {
    let mut pairs = Vec::new();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| CniError::env(format!("CNI_ARGS: {pair:?} is not KEY=VALUE")))?;
        pairs.push((k, v));
    }
    let ignore_unknown = (pairs.iter())
        .any(|(k, v)| *k == "IgnoreUnknown" && matches!(v.to_lowercase().as_str(), "1" | "true"));
    let mut args = CniArgs::default();
    for (k, v) in pairs {
        match k {
            "IP" => {
                args.ip = Some(parse_ip(v).map_err(|e| CniError::env(format!("CNI_ARGS: {e}")))?)
            }
            "MAC" => {
                args.mac =
                    Some(unicast_mac(v).map_err(|e| CniError::env(format!("CNI_ARGS: {e}")))?)
            }
            "IgnoreUnknown" => {}
            _ if ignore_unknown => {}
            _ => {
                return Err(CniError::unsupported(format!(
                    "CNI_ARGS: unknown key {k}={v} (and no IgnoreUnknown=1)"
                )))
            }
        }
    }
    Ok(args)
}

/// `IP[/PREFIX]`, IPv4 only.
pub fn parse_ip(text: &str) -> Result<(Ipv4Addr, Option<u8>), String> {
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (text, None),
    };
    if ip.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(format!("{text}: vswitch serves IPv4 only"));
    }
    let ip = ip
        .parse()
        .map_err(|_| format!("{text:?} is not an IPv4 address"))?;
    let prefix = prefix
        .map(|p| p.parse::<u8>().ok().filter(|p| *p <= 32))
        .map(|p| p.ok_or_else(|| format!("{text:?}: bad prefix length")))
        .transpose()?;
    Ok((ip, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::error::Code;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let map: HashMap<String, String> = (vars.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env {
            get: move |k: &str| map.get(k).cloned(),
        }
    }

    const ADD: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.1.1.9/24",
        ),
    ];

    #[test]
    fn an_add_as_podman_sends_it() {
        let e = env(&ADD);
        assert_eq!(e.verb().unwrap(), Verb::Add);
        let p = e.params(Verb::Add).unwrap();
        assert_eq!(p.container_id.as_str(), "abc123");
        assert_eq!(p.netns, Some(PathBuf::from("/run/netns/x")));
        assert_eq!(p.ifname.as_str(), "eth0");
        assert_eq!(p.args.ip, Some((Ipv4Addr::new(10, 1, 1, 9), Some(24))));
    }

    #[test]
    fn missing_or_bad_variables_are_named() {
        for (drop, replace, name) in [
            ("CNI_CONTAINERID", None, "CNI_CONTAINERID"),
            ("CNI_IFNAME", None, "CNI_IFNAME"),
            ("CNI_NETNS", None, "CNI_NETNS"),
            ("CNI_CONTAINERID", Some("-x"), "CNI_CONTAINERID"),
            ("CNI_IFNAME", Some("a/b"), "CNI_IFNAME"),
            ("CNI_NETNS", Some("run/netns/x"), "CNI_NETNS"),
            ("CNI_ARGS", Some("IP"), "CNI_ARGS"),
            ("CNI_ARGS", Some("MAC=01:00:5e:00:00:01"), "CNI_ARGS"),
        ] {
            let mut vars: Vec<(&str, &str)> = ADD.into_iter().filter(|(k, _)| *k != drop).collect();
            vars.extend(replace.map(|v| (drop, v)));
            let err = env(&vars).params(Verb::Add).unwrap_err();
            assert_eq!(
                err.code,
                Code::InvalidEnvironment,
                "{drop} {replace:?}: {err}"
            );
            assert!(err.details.contains(name), "{err}");
        }
        // DEL needs no namespace.
        let vars: Vec<_> = ADD.into_iter().filter(|(k, _)| *k != "CNI_NETNS").collect();
        assert_eq!(env(&vars).params(Verb::Del).unwrap().netns, None);
        let err = env(&[("CNI_COMMAND", "FROB")]).verb().unwrap_err();
        assert_eq!(err.code, Code::InvalidEnvironment);
        assert!(err.details.contains("CNI_COMMAND"), "{err}");
    }

    #[test]
    fn cni_args_follow_the_conventions() {
        assert_eq!(parse_args("").unwrap(), CniArgs::default());
        let a = parse_args("MAC=02:00:00:00:00:09;IP=10.1.1.9").unwrap();
        assert_eq!(a.mac, Some(MacAddr([2, 0, 0, 0, 0, 9])));
        assert_eq!(a.ip, Some((Ipv4Addr::new(10, 1, 1, 9), None)));
        let err = parse_args("K8S_POD_NAME=web").unwrap_err();
        assert_eq!(err.code, Code::UnsupportedField);
        assert!(parse_args("IgnoreUnknown=true;K8S_POD_NAME=web").is_ok());
        assert!(parse_args("IP=2001:db8::1")
            .unwrap_err()
            .details
            .contains("IPv4 only"));
        assert!(parse_args("IP=10.1.1.9/33").is_err());
    }
}
