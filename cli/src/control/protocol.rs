//! The control protocol's messages: one JSON request line, one JSON response line.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Requests longer than this are refused: no legitimate request is anywhere near it.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Plug {
        #[serde(default)]
        pid: Option<u32>,
        #[serde(default)]
        netns: Option<PathBuf>,
        #[serde(default)]
        ip: Option<Ipv4Addr>,
        #[serde(default)]
        mac: Option<String>,
        #[serde(default)]
        ifname: Option<String>,
        /// `[HOSTIP:]HOSTPORT:CPORT[/tcp|/udp]`, as on the command line.
        #[serde(default)]
        publish: Vec<String>,
    },
    Unplug {
        #[serde(default)]
        pid: Option<u32>,
        #[serde(default)]
        netns: Option<PathBuf>,
    },
    Ls,
    Fdb,
    Conntrack,
}

/// Which container: a process (its network namespace) or a named namespace file.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Pid(u32),
    Netns(PathBuf),
}

impl Target {
    /// Exactly one of `pid` and `netns` names the container.
    pub fn from_parts(pid: Option<u32>, netns: Option<PathBuf>) -> Result<Target, String> {
        match (pid, netns) {
            (Some(pid), None) => Ok(Target::Pid(pid)),
            (None, Some(path)) => Ok(Target::Netns(path)),
            _ => Err("name the container by exactly one of pid and netns".to_string()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Pid(pid) => write!(f, "pid {pid}"),
            Target::Netns(path) => write!(f, "netns {}", path.display()),
        }
    }
}

/// One port as `vswitch ls` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortView {
    pub port: u16,
    pub kind: String,
    pub pid: Option<u32>,
    pub netns: Option<String>,
    pub host_ifname: String,
    pub ifname: Option<String>,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub drops: u64,
    /// Of the frames counted above, those the kernel fast path carried (see `fastpath`).
    #[serde(default)]
    pub fast_rx_frames: u64,
    #[serde(default)]
    pub fast_tx_frames: u64,
    /// Published ports, `HOSTPORT:CPORT/PROTO`.
    #[serde(default)]
    pub publish: Vec<String>,
    /// NAT flows of this container now, and its traffic through the NAT so far.
    #[serde(default)]
    pub nat_flows: u64,
    #[serde(default)]
    pub nat_packets_out: u64,
    #[serde(default)]
    pub nat_packets_in: u64,
    #[serde(default)]
    pub nat_bytes_out: u64,
    #[serde(default)]
    pub nat_bytes_in: u64,
    /// What `plug` did about the container's resolv.conf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv: Option<String>,
}

/// One NAT flow as `vswitch conntrack` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowRow {
    pub proto: String,
    /// The container's address and port (ICMP: its echo identifier).
    pub inside: String,
    /// The destination of an outgoing flow, or the client of a published one.
    pub outside: String,
    pub published: bool,
    pub state: String,
    pub timeout_s: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// One learned MAC as `vswitch fdb` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FdbView {
    pub mac: String,
    pub port: u16,
    pub port_name: String,
    pub age_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_documented() {
        let plug = Request::Plug {
            pid: Some(42),
            netns: None,
            ip: Some(Ipv4Addr::new(10, 1, 1, 9)),
            mac: None,
            ifname: None,
            publish: vec![],
        };
        let text = serde_json::to_string(&plug).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"plug","pid":42,"netns":null,"ip":"10.1.1.9","mac":null,"ifname":null,"publish":[]}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), plug);
        let unplug: Request =
            serde_json::from_str(r#"{"cmd":"unplug","netns":"/run/netns/a"}"#).unwrap();
        assert_eq!(
            unplug,
            Request::Unplug {
                pid: None,
                netns: Some("/run/netns/a".into())
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"ls"}"#).unwrap(),
            Request::Ls
        );
    }

    #[test]
    fn malformed_requests_are_rejected() {
        for bad in [
            "",
            "garbage",
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":"plug","pid":1,"colour":"red"}"#,
            r#"{"cmd":"plug","pid":-1}"#,
            r#"{"cmd":"plug","pid":1,"ip":"not-an-ip"}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }
}
