//! The control protocol's messages: one JSON request line, one JSON response line.
//!
//! ```text
//! -> {"v":1,"cmd":"plug","pid":4242,"netns":null,"ip":null,"mac":null,"ifname":null,"publish":["8080:80/tcp"]}
//! <- {"v":1,"ok":true,"data":{"port":1,"kind":"container",...}}
//! <- {"v":1,"ok":false,"code":"not_found","error":"unplug pid 4242: not plugged"}
//! ```
//!
//! Every message carries the protocol version `v`, so that a command line and a daemon of
//! different versions say so instead of misreading each other. Requests are parsed into typed
//! values at this boundary (addresses, MAC, interface names, published ports): past
//! [`decode_request`] the daemon never sees a malformed field, and unknown fields are refused.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use vswitch_switch::MacAddr;

use super::security::{SecurityOpts, SecurityView, SpoofCounts};

/// The protocol version this build speaks. Bump it whenever a message changes shape.
pub const PROTOCOL: u32 = 1;

/// Requests longer than this are refused: no legitimate request is anywhere near it.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A request from the command line to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Plug(Plug),
    Unplug(Unplug),
    Ls(NoArgs),
    Fdb(NoArgs),
    Conntrack(NoArgs),
    Stats(NoArgs),
    Stop(StopArgs),
}

/// The body of a request that takes no arguments (any field is refused).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// `stop`: the daemon exits, removing the network, or keeping it for the next daemon.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopArgs {
    #[serde(default)]
    pub keep: bool,
}

/// `plug`: attach a container's network namespace to the switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PlugWire", into = "PlugWire")]
pub struct Plug {
    pub target: Target,
    /// The address to give it (default: the next free one).
    pub ip: Option<Ipv4Addr>,
    /// Its interface's MAC (default: derived from the address).
    pub mac: Option<MacAddr>,
    /// Its interface's name (default `eth0`).
    pub ifname: Option<IfName>,
    pub publish: Vec<PublishSpec>,
    /// Port security: anti-spoofing on unless `trusted`, widened by `allow_*`; isolation.
    pub security: SecurityOpts,
}

/// `unplug`: detach a container and delete its interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TargetWire", into = "TargetWire")]
pub struct Unplug {
    pub target: Target,
}

/// Which container: a process (its network namespace) or a named namespace file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Pid(u32),
    Netns(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Pid(pid) => write!(f, "pid {pid}"),
            Target::Netns(path) => write!(f, "netns {}", path.display()),
        }
    }
}

/// `plug` as it travels: the target is a `pid` or a `netns` path, everything else a string.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlugWire {
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
    // Port security (see `SecurityOpts`); left out when not asked for.
    #[serde(default, skip_serializing_if = "is_false")]
    trusted: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    isolated: bool,
    /// MACs, `ADDR/LEN` prefixes and hex EtherTypes, as on the command line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allow_mac: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allow_ip: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allow_ethertype: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_macs: Option<u32>,
}

fn is_false(b: &bool) -> bool {
    !b
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetWire {
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    netns: Option<PathBuf>,
}

fn target(pid: Option<u32>, netns: Option<PathBuf>) -> Result<Target, String> {
    match (pid, netns) {
        (Some(pid), None) => Ok(Target::Pid(pid)),
        (None, Some(path)) if path.is_absolute() => Ok(Target::Netns(path)),
        (None, Some(path)) => Err(format!(
            "the namespace path {} must be absolute",
            path.display()
        )),
        _ => Err("name the container by exactly one of pid and netns".to_string()),
    }
}

fn target_parts(target: Target) -> (Option<u32>, Option<PathBuf>) {
    match target {
        Target::Pid(pid) => (Some(pid), None),
        Target::Netns(path) => (None, Some(path)),
    }
}

impl TryFrom<PlugWire> for Plug {
    type Error = String;
    fn try_from(w: PlugWire) -> Result<Plug, String> {
        let mac = match w.mac {
            None => None,
            Some(text) => Some(unicast_mac(&text)?),
        };
        Ok(Plug {
            target: target(w.pid, w.netns)?,
            ip: w.ip,
            mac,
            ifname: w.ifname.map(|n| n.parse()).transpose()?,
            publish: (w.publish.iter().map(|p| p.parse()))
                .collect::<Result<_, _>>()
                .map_err(|e: ParseError| e.to_string())?,
            security: SecurityOpts::from_wire(
                w.trusted,
                w.isolated,
                &w.allow_mac,
                &w.allow_ip,
                &w.allow_ethertype,
                w.max_macs,
            )?,
        })
    }
}

impl From<Plug> for PlugWire {
    fn from(p: Plug) -> PlugWire {
        let (pid, netns) = target_parts(p.target);
        let (allow_mac, allow_ip, allow_ethertype) = p.security.to_wire();
        PlugWire {
            pid,
            netns,
            ip: p.ip,
            mac: p.mac.map(|m| m.to_string()),
            ifname: p.ifname.map(|n| n.0),
            publish: p.publish.iter().map(|p| p.to_string()).collect(),
            trusted: p.security.trusted,
            isolated: p.security.isolated,
            allow_mac,
            allow_ip,
            allow_ethertype,
            max_macs: p.security.max_macs,
        }
    }
}

impl TryFrom<TargetWire> for Unplug {
    type Error = String;
    fn try_from(w: TargetWire) -> Result<Unplug, String> {
        Ok(Unplug {
            target: target(w.pid, w.netns)?,
        })
    }
}

impl From<Unplug> for TargetWire {
    fn from(u: Unplug) -> TargetWire {
        let (pid, netns) = target_parts(u.target);
        TargetWire { pid, netns }
    }
}

/// A malformed field of a request (or of the command line, which parses the same way).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid MAC address {0:?}")]
    Mac(String),
    #[error("MAC address {0} is not a unicast address")]
    NotUnicast(MacAddr),
    #[error("invalid interface name {0:?} (1 to 15 printable characters, no '/', ':' or spaces)")]
    IfName(String),
    #[error("invalid --publish {0:?}: expected [HOSTIP:]HOSTPORT:CPORT[/tcp|/udp]")]
    Publish(String),
    #[error(
        "invalid --allow-ethertype {0:?}: expected a hex EtherType of 0x0600 or more (IPv4 and \
         ARP are always allowed)"
    )]
    EtherType(String),
    #[error("{0}")]
    Security(String),
}

impl From<ParseError> for String {
    fn from(e: ParseError) -> String {
        e.to_string()
    }
}

/// A MAC a container may have: unicast and not all zeros.
pub fn unicast_mac(text: &str) -> Result<MacAddr, ParseError> {
    let mac: MacAddr = text.parse().map_err(|_| ParseError::Mac(text.into()))?;
    if mac.is_multicast() || mac.is_zero() {
        return Err(ParseError::NotUnicast(mac));
    }
    Ok(mac)
}

/// A network interface name the kernel takes and a terminal shows as it is: 1 to 15 bytes of
/// printable ASCII, no '/', ':' or whitespace, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IfName(String);

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<IfName, ParseError> {
        let printable = |c: char| c.is_ascii_graphic() && c != '/' && c != ':';
        if s.is_empty() || s.len() > 15 || s == "." || s == ".." || !s.chars().all(printable) {
            return Err(ParseError::IfName(s.to_string()));
        }
        Ok(IfName(s.to_string()))
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A published port: `[HOSTIP:]HOSTPORT:CPORT[/tcp|/udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishSpec {
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
    pub udp: bool,
}

impl PublishSpec {
    /// The host address and port it listens on.
    pub fn host(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.host_ip), self.host_port)
    }

    pub fn proto(&self) -> &'static str {
        if self.udp {
            "udp"
        } else {
            "tcp"
        }
    }
}

impl FromStr for PublishSpec {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::Publish(s.to_string());
        let (ports, udp) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, false),
            Some((p, "udp")) => (p, true),
            Some(_) => return Err(bad()),
            None => (s, false),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (ip, host, cont) = match parts.as_slice() {
            [h, c] => (Ipv4Addr::UNSPECIFIED, *h, *c),
            [ip, h, c] => (ip.parse().map_err(|_| bad())?, *h, *c),
            _ => return Err(bad()),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
        Ok(PublishSpec {
            host_ip: ip,
            host_port: port(host)?,
            container_port: port(cont)?,
            udp,
        })
    }
}

impl fmt::Display for PublishSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.host_ip.is_unspecified() {
            write!(f, "{}:", self.host_ip)?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.container_port,
            self.proto()
        )
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
    /// Of the frames counted above, those the kernel fast path carried (see `bpf::fastpath`).
    #[serde(default)]
    pub fast_rx_frames: u64,
    #[serde(default)]
    pub fast_tx_frames: u64,
    /// The hook the kernel fast path is on for this port: "tcx", "tc" or "off".
    #[serde(default)]
    pub fast_path: String,
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
    /// New NAT flows of this container refused (the table, or its share of it, was full).
    #[serde(default)]
    pub nat_refused: u64,
    /// What `plug` did about the container's resolv.conf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv: Option<String>,
    /// Port security: what the port may send and reach...
    #[serde(default)]
    pub security: SecurityView,
    /// ...the spoofed frames it sent (dropped), by kind...
    #[serde(default)]
    pub spoofed: SpoofCounts,
    /// ...the frames it sent to or towards an isolated container, dropped...
    #[serde(default)]
    pub isolation_drops: u64,
    /// ...and the MACs the switch learned on it besides its own, and refused to learn.
    #[serde(default)]
    pub fdb_macs: u64,
    #[serde(default)]
    pub fdb_refused: u64,
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

/// The daemon as a whole, as `vswitch stats` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Container ports plugged.
    pub containers: usize,
    pub fds: FdStats,
    pub switch: SwitchCounters,
    pub nat: NatCounters,
}

/// The descriptor budget (see `natd::budget`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FdStats {
    /// The process's limit.
    pub limit: usize,
    /// Kept for the daemon itself and its ports.
    pub reserved: usize,
    /// Held by flows, relayed connections and DNS queries now.
    pub leased: usize,
    /// Left for new flows.
    pub available: usize,
    /// Flows and queries refused for want of descriptors.
    pub refused: u64,
    /// System calls that failed with EMFILE/ENFILE anyway.
    pub exhausted: u64,
}

/// The switch's counters since start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwitchCounters {
    pub frames: u64,
    pub malformed: u64,
    pub flooded: u64,
    pub hairpin: u64,
    pub arp_replies: u64,
    pub learned: u64,
    pub moved: u64,
    /// Source MACs not learned because the table was full.
    pub fdb_full: u64,
    pub fdb_entries: usize,
    /// Entries evicted from a full table to learn a newly plugged container.
    #[serde(default)]
    pub fdb_evicted: u64,
    /// Source MACs not learned: over their port's limit, or another port's station.
    #[serde(default)]
    pub fdb_refused: u64,
    /// Spoofed frames dropped (port security), and frames dropped by isolation.
    #[serde(default)]
    pub spoofed: u64,
    #[serde(default)]
    pub isolation_drops: u64,
}

/// The NAT's table and counters since start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NatCounters {
    pub flows: usize,
    pub max_flows: usize,
    pub created: u64,
    pub expired: u64,
    pub removed: u64,
    /// New flows refused because the table was full.
    pub table_full: u64,
    pub malformed: u64,
    pub fragments: u64,
    pub no_flow: u64,
    pub bad_checksum: u64,
    pub bad_length: u64,
    pub ttl_exceeded: u64,
    pub tagged: u64,
    /// New flows refused because the container's share of the table was used up.
    pub container_limit: u64,
    /// New TCP connections refused because the container had too many connecting.
    pub half_open_limit: u64,
}

/// What the daemon answers: the `data` of a successful response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Port(Box<PortView>),
    Ports(Vec<PortView>),
    Fdb(Vec<FdbView>),
    Flows(Vec<FlowRow>),
    Stats(Box<Stats>),
}

/// What kind of failure an error response reports, for clients that act on it (the CNI plugin
/// treats `not_found` on delete as done).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or names something impossible.
    Invalid,
    /// The protocol versions differ.
    Version,
    /// The container, port or namespace does not exist.
    NotFound,
    /// Something the request would create exists already (a plug, an address, a host port).
    Exists,
    /// No room: the subnet is full, or too many ports.
    Full,
    /// The daemon is shutting down.
    Unavailable,
    /// The kernel or the system refused.
    Failed,
}

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// A response as it travels.
#[derive(Serialize, Deserialize)]
struct ResponseWire {
    v: u32,
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<ErrorCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn version_mismatch(theirs: Option<u64>, ours_is: &str) -> Failure {
    let theirs = theirs.map_or(
        "an unversioned protocol (an older vswitch)".to_string(),
        |v| format!("protocol version {v}"),
    );
    let (daemon, client) = match ours_is {
        "daemon" => (format!("protocol version {PROTOCOL}"), theirs),
        _ => (theirs, format!("protocol version {PROTOCOL}")),
    };
    Failure::new(
        ErrorCode::Version,
        format!(
            "version mismatch: the daemon speaks {daemon}, this command {client}: \
             restart one of them so that both are the same vswitch"
        ),
    )
}

/// One request line (without the newline).
pub fn encode_request(request: &Request) -> Vec<u8> {
    let mut value = serde_json::to_value(request).expect("requests always serialize");
    if let Some(map) = value.as_object_mut() {
        map.insert("v".into(), PROTOCOL.into());
    }
    serde_json::to_vec(&value).expect("JSON values always serialize")
}

/// Parses one request line; the error is the response to send.
pub fn decode_request(line: &[u8]) -> Result<Request, Failure> {
    let invalid =
        |e: &dyn fmt::Display| Failure::new(ErrorCode::Invalid, format!("malformed request: {e}"));
    let mut value: serde_json::Value = serde_json::from_slice(line).map_err(|e| invalid(&e))?;
    let map = value
        .as_object_mut()
        .ok_or_else(|| invalid(&"not a JSON object"))?;
    match map.remove("v") {
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL)) => {}
        Some(v) => return Err(version_mismatch(v.as_u64().or(Some(0)), "daemon")),
        None => return Err(version_mismatch(None, "daemon")),
    }
    serde_json::from_value(value).map_err(|e| invalid(&e))
}

/// One response line (without the newline).
pub fn encode_response(result: &Result<Reply, Failure>) -> Vec<u8> {
    let wire = match result {
        Ok(reply) => ResponseWire {
            v: PROTOCOL,
            ok: true,
            data: Some(serde_json::to_value(reply).expect("replies always serialize")),
            code: None,
            error: None,
        },
        Err(f) => ResponseWire {
            v: PROTOCOL,
            ok: false,
            data: None,
            code: Some(f.code),
            error: Some(f.message.clone()),
        },
    };
    serde_json::to_vec(&wire).expect("responses always serialize")
}

/// Parses a response line into its `data`, or the daemon's failure. `Err(None)` for a line that
/// is not a response at all.
pub fn decode_response(line: &str) -> Result<Result<serde_json::Value, Failure>, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if value.get("v").is_none() {
        // A daemon from before versioning refuses our `v` field as unknown.
        return Ok(Err(version_mismatch(None, "client")));
    }
    let wire: ResponseWire = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if wire.v != PROTOCOL {
        return Ok(Err(version_mismatch(Some(u64::from(wire.v)), "client")));
    }
    Ok(match wire.ok {
        true => Ok(wire.data.unwrap_or_default()),
        false => Err(Failure::new(
            wire.code.unwrap_or(ErrorCode::Failed),
            wire.error.unwrap_or_else(|| "unknown error".into()),
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> Result<Request, Failure> {
        decode_request(text.as_bytes())
    }

    #[test]
    fn requests_round_trip_as_documented() {
        let plug = Request::Plug(Plug {
            target: Target::Pid(42),
            ip: Some(Ipv4Addr::new(10, 1, 1, 9)),
            mac: None,
            ifname: None,
            publish: vec!["8080:80".parse().unwrap()],
            security: SecurityOpts::default(),
        });
        let text = String::from_utf8(encode_request(&plug)).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"plug","ifname":null,"ip":"10.1.1.9","mac":null,"netns":null,"pid":42,"publish":["8080:80/tcp"],"v":1}"#
        );
        assert_eq!(decode(&text).unwrap(), plug);
        let unplug = decode(r#"{"v":1,"cmd":"unplug","netns":"/run/netns/a"}"#).unwrap();
        assert_eq!(
            unplug,
            Request::Unplug(Unplug {
                target: Target::Netns("/run/netns/a".into())
            })
        );
        assert_eq!(
            decode(r#"{"v":1,"cmd":"ls"}"#).unwrap(),
            Request::Ls(NoArgs {})
        );
    }

    #[test]
    fn malformed_requests_are_refused_as_invalid() {
        for bad in [
            "",
            "garbage",
            "[1]",
            r#"{"v":1,"cmd":"reboot"}"#,
            r#"{"v":1,"cmd":"ls","all":true}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"colour":"red"}"#,
            r#"{"v":1,"cmd":"unplug","pid":1,"force":true}"#,
            r#"{"v":1,"cmd":"plug","pid":-1}"#,
            r#"{"v":1,"cmd":"plug"}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"netns":"/run/netns/a"}"#,
            r#"{"v":1,"cmd":"plug","netns":"relative/path"}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"ip":"not-an-ip"}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"mac":"01:00:5e:00:00:01"}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"mac":"zz"}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"ifname":"a\u0000b"}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"ifname":"tab\tname"}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"ifname":"sixteen-chars-xx"}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"publish":["80"]}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"trusted":"yes"}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"trusted":true,"allow_ip":["10.1.1.0/28"]}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"allow_mac":["01:00:5e:00:00:01"]}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"allow_ip":["10.1.1.5/24"]}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"allow_ip":"10.1.1.0/24"}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"allow_ethertype":["0x0800"]}"#,
            r#"{"v":1,"cmd":"plug","pid":1,"max_macs":-1}"#,
        ] {
            let err = decode(bad).expect_err(bad);
            assert_eq!(err.code, ErrorCode::Invalid, "{bad}: {err}");
            assert!(err.message.starts_with("malformed request"), "{err}");
        }
    }

    #[test]
    fn port_security_travels_only_when_asked_for() {
        let text = r#"{"v":1,"cmd":"plug","pid":7,"isolated":true,"allow_mac":["02:00:00:00:00:09"],"allow_ip":["10.1.1.0/28"],"allow_ethertype":["86DD"],"max_macs":9}"#;
        let Request::Plug(plug) = decode(text).unwrap() else {
            panic!("not a plug")
        };
        let security = SecurityOpts {
            trusted: false,
            isolated: true,
            allow_macs: vec!["02:00:00:00:00:09".parse().unwrap()],
            allow_ips: vec!["10.1.1.0/28".parse().unwrap()],
            allow_ethertypes: vec![0x86dd],
            max_macs: Some(9),
        };
        assert_eq!(plug.security, security);
        let again = String::from_utf8(encode_request(&Request::Plug(plug.clone()))).unwrap();
        assert!(again.contains(r#""allow_ethertype":["0x86dd"]"#), "{again}");
        assert_eq!(decode(&again).unwrap(), Request::Plug(plug));
        let trusted = decode(r#"{"v":1,"cmd":"plug","pid":7,"trusted":true}"#).unwrap();
        assert!(matches!(trusted, Request::Plug(p) if p.security.trusted));
    }

    #[test]
    fn a_version_mismatch_says_which_side_speaks_what() {
        let err = decode(r#"{"cmd":"ls"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::Version);
        assert!(err.message.contains("restart one of them"), "{err}");
        assert!(err.message.contains("unversioned"), "{err}");
        let err = decode(r#"{"v":99,"cmd":"ls"}"#).unwrap_err();
        assert!(err.message.contains("version 99"), "{err}");
        // A daemon from before versioning answers without `v`.
        let old = r#"{"ok":false,"error":"malformed request: unknown field `v`"}"#;
        let err = decode_response(old).unwrap().unwrap_err();
        assert_eq!(err.code, ErrorCode::Version);
    }

    #[test]
    fn responses_round_trip() {
        let ok = encode_response(&Ok(Reply::Fdb(vec![])));
        assert_eq!(ok, br#"{"v":1,"ok":true,"data":[]}"#);
        let data = decode_response(std::str::from_utf8(&ok).unwrap()).unwrap();
        assert_eq!(data.unwrap(), serde_json::json!([]));
        let fail = Failure::new(ErrorCode::NotFound, "unplug pid 7: not plugged");
        let text = String::from_utf8(encode_response(&Err(fail.clone()))).unwrap();
        assert_eq!(decode_response(&text).unwrap().unwrap_err(), fail);
        assert!(decode_response("nonsense").is_err());
    }

    #[test]
    fn interface_names() {
        for good in ["eth0", "a", "net-1_x.y", "fifteen-chars-x"] {
            assert_eq!(good.parse::<IfName>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "é",
            "\u{7f}",
            "sixteen-chars-xx",
        ] {
            assert!(bad.parse::<IfName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn publish_specs() {
        let p: PublishSpec = "8080:80".parse().unwrap();
        assert_eq!(p.to_string(), "8080:80/tcp");
        let p: PublishSpec = "127.0.0.1:5353:53/udp".parse().unwrap();
        assert_eq!(p.host_ip, Ipv4Addr::LOCALHOST);
        assert!(p.udp);
        assert_eq!(p.to_string(), "127.0.0.1:5353:53/udp");
        for bad in ["80", "0:80", "8080:80/sctp", "x:1:2", "1:2:3:4", "70000:80"] {
            assert!(bad.parse::<PublishSpec>().is_err(), "{bad}");
        }
    }
}
