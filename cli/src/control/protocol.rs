//! The control protocol's messages: one JSON request line, one JSON response line.
//!
//! ```text
//! -> {"v":2,"cmd":"plug","pid":4242,"netns":null,"ip":null,"mac":null,"ifname":null,"publish":["8080:80/tcp"],...}
//! <- {"v":2,"ok":true,"data":{"port":1,"kind":"container",...}}
//! <- {"v":2,"ok":false,"code":"not_found","error":"unplug pid 4242: not plugged"}
//! ```
//!
//! Every message carries the protocol version `v`, so that a command line and a daemon of
//! different versions say so instead of misreading each other. Requests are parsed into typed
//! values at this boundary (addresses, MAC, interface names, published ports): past
//! [`decode_request`] the daemon never sees a malformed field, and unknown fields are refused.
//!
//! A container runtime's plug (through the CNI plugin, `cni`) also names an *attachment*: the
//! runtime's container id and the interface name, the key by which the runtime later removes
//! it (`unplug`/`inspect` by `container_id` and `ifname`), whatever became of the namespace.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use vswitch_capture::{Filter, Proto};
use vswitch_switch::MacAddr;

use super::security::{SecurityOpts, SecurityView, SpoofCounts};

/// The protocol version this build speaks. Bump it whenever a message changes shape.
/// 2: attachments (`container_id`, `network`, `resolv` on `plug`; selection by attachment),
/// `inspect`, `gc`, the subnet in `stats`.
/// Added since without a bump (no existing message changed shape; an older daemon refuses a new
/// command as unknown, which the client reports as such): `capture`, `conntrack_delete` and
/// `fdb_flush`, port security on `plug` (fields left out mean the defaults), and fields with
/// defaults in `stats` and the port view.
pub const PROTOCOL: u32 = 2;

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
    Inspect(Inspect),
    Gc(Gc),
    /// A new process asks the daemon for everything it serves (`vswitch run --takeover`): the
    /// answer is followed by the daemon's state and descriptors (see `daemon::handover`).
    Handover(HandoverArgs),
    /// Answered with a header line, then a stream of frames (see `control::stream`).
    Capture(Capture),
    /// Delete the NAT flows a filter selects (all of them for an empty filter), closing their
    /// sockets and resetting their relayed connections. Answers the flows deleted.
    ConntrackDelete(FlowFilter),
    /// Forget learned MACs, all of them or one port's. Answers the entries forgotten.
    FdbFlush(FdbFlush),
}

/// `handover`: the hand-over format the new process reads (not the protocol's version: a
/// daemon and its successor may speak different protocols) and the network it was started
/// for, which must be the daemon's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoverArgs {
    pub format: u32,
    #[serde(default)]
    pub network: serde_json::Value,
}

/// The daemon's answer to `handover`: its state follows, `bytes` of JSON and `fds`
/// descriptors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandoverOffer {
    pub format: u32,
    pub pid: u32,
    pub bytes: usize,
    pub fds: usize,
}

/// Which NAT flows `conntrack_delete` selects: those matching every field given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<FlowProto>,
    /// The container's end: its address, its port (for ICMP, its echo identifier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inside: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inside_port: Option<u16>,
    /// The other end: the destination of an outgoing flow, the client of a published one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_port: Option<u16>,
}

impl FlowFilter {
    /// Whether it selects every flow.
    pub fn is_empty(&self) -> bool {
        *self == FlowFilter::default()
    }
}

impl fmt::Display for FlowFilter {
    /// `all`, or the fields given: `proto=tcp,inside=10.1.1.2,outside_port=80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        parts.extend(self.proto.map(|p| format!("proto={}", p.as_str())));
        parts.extend(self.inside.map(|ip| format!("inside={ip}")));
        parts.extend(self.inside_port.map(|p| format!("inside_port={p}")));
        parts.extend(self.outside.map(|ip| format!("outside={ip}")));
        parts.extend(self.outside_port.map(|p| format!("outside_port={p}")));
        match parts.is_empty() {
            true => f.write_str("all"),
            false => f.write_str(&parts.join(",")),
        }
    }
}

/// A NAT flow's protocol, as a filter names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FlowProto {
    Tcp,
    Udp,
    Icmp,
}

impl FlowProto {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowProto::Tcp => "tcp",
            FlowProto::Udp => "udp",
            FlowProto::Icmp => "icmp",
        }
    }
}

/// `fdb_flush`: the port whose MACs to forget, by name (its host interface, or the TAP's);
/// every port's without one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdbFlush {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
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
    /// The container runtime's id for the container (a CNI plug): the port is then an
    /// attachment, known by this id and its interface name.
    pub container_id: Option<ContainerId>,
    /// The CNI network the attachment belongs to: `gc` of one network leaves others alone.
    pub network: Option<NetworkName>,
    /// Whether to write the container's resolv.conf; a CNI runtime writes its own.
    pub resolv: bool,
    /// Port security: anti-spoofing on unless `trusted`, widened by `allow_*`; isolation.
    pub security: SecurityOpts,
}

impl Plug {
    /// A plug of `target` with every option at its default.
    pub fn new(target: Target) -> Plug {
        Plug {
            target,
            ip: None,
            mac: None,
            ifname: None,
            publish: Vec::new(),
            container_id: None,
            network: None,
            resolv: true,
            security: SecurityOpts::default(),
        }
    }

    /// The interface name inside the container.
    pub fn ifname(&self) -> IfName {
        self.ifname.clone().unwrap_or_else(IfName::eth0)
    }

    /// The attachment this plug makes, if it is a runtime's.
    pub fn attachment(&self) -> Option<Attachment> {
        (self.container_id.clone()).map(|container_id| Attachment {
            container_id,
            ifname: self.ifname(),
        })
    }
}

/// `unplug`: detach a container and delete its interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SelectorWire", into = "SelectorWire")]
pub struct Unplug {
    pub by: Selector,
}

/// `inspect`: one plugged container's port, checked to be still there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SelectorWire", into = "SelectorWire")]
pub struct Inspect {
    pub by: Selector,
}

/// `gc`: remove the attachments of `network` that are not in `valid` (CNI's GC). Ports plugged
/// by hand and other networks' attachments are left alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "GcWire", into = "GcWire")]
pub struct Gc {
    pub network: NetworkName,
    pub valid: Vec<Attachment>,
}

/// A runtime's attachment: its container id and the interface's name inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub container_id: ContainerId,
    pub ifname: IfName,
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "container {} {}", self.container_id, self.ifname)
    }
}

/// Which plugged container a request is about: by what it was plugged as, or by attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Target(Target),
    Attachment(Attachment),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Target(t) => t.fmt(f),
            Selector::Attachment(a) => a.fmt(f),
        }
    }
}

/// Which container: a process (its network namespace) or a named namespace file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Pid(u32),
    Netns(PathBuf),
}

impl Target {
    /// The process, if the container is named by one (a log line's `pid` field).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Target::Pid(pid) => Some(*pid),
            Target::Netns(_) => None,
        }
    }

    /// The namespace file, if the container is named by one (a log line's `netns` field).
    pub fn netns(&self) -> Option<String> {
        match self {
            Target::Pid(_) => None,
            Target::Netns(path) => Some(path.display().to_string()),
        }
    }
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
    #[serde(default)]
    container_id: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default = "yes")]
    resolv: bool,
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

fn yes() -> bool {
    true
}

/// A selector as it travels: exactly one of `pid`, `netns` and `container_id` (with `ifname`,
/// default `eth0`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorWire {
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    netns: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ifname: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentWire {
    container_id: String,
    ifname: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GcWire {
    network: String,
    valid: Vec<AttachmentWire>,
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
            container_id: w.container_id.map(|id| id.parse()).transpose()?,
            network: w.network.map(|n| n.parse()).transpose()?,
            resolv: w.resolv,
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
            container_id: p.container_id.map(|id| id.0),
            network: p.network.map(|n| n.0),
            resolv: p.resolv,
            trusted: p.security.trusted,
            isolated: p.security.isolated,
            allow_mac,
            allow_ip,
            allow_ethertype,
            max_macs: p.security.max_macs,
        }
    }
}

impl TryFrom<SelectorWire> for Selector {
    type Error = String;
    fn try_from(w: SelectorWire) -> Result<Selector, String> {
        match (w.container_id, w.ifname) {
            (Some(id), ifname) if w.pid.is_none() && w.netns.is_none() => {
                Ok(Selector::Attachment(Attachment {
                    container_id: id.parse()?,
                    ifname: ifname.map_or_else(|| Ok(IfName::eth0()), |n| n.parse())?,
                }))
            }
            (None, None) => Ok(Selector::Target(target(w.pid, w.netns)?)),
            (None, Some(_)) => Err("an ifname selects only together with a container_id".into()),
            (Some(_), _) => {
                Err("name the container by exactly one of pid, netns and container_id".into())
            }
        }
    }
}

impl From<Selector> for SelectorWire {
    fn from(s: Selector) -> SelectorWire {
        match s {
            Selector::Target(t) => {
                let (pid, netns) = target_parts(t);
                SelectorWire {
                    pid,
                    netns,
                    container_id: None,
                    ifname: None,
                }
            }
            Selector::Attachment(a) => SelectorWire {
                pid: None,
                netns: None,
                container_id: Some(a.container_id.0),
                ifname: Some(a.ifname.0),
            },
        }
    }
}

impl TryFrom<SelectorWire> for Unplug {
    type Error = String;
    fn try_from(w: SelectorWire) -> Result<Unplug, String> {
        Ok(Unplug { by: w.try_into()? })
    }
}

impl From<Unplug> for SelectorWire {
    fn from(u: Unplug) -> SelectorWire {
        u.by.into()
    }
}

impl TryFrom<SelectorWire> for Inspect {
    type Error = String;
    fn try_from(w: SelectorWire) -> Result<Inspect, String> {
        Ok(Inspect { by: w.try_into()? })
    }
}

impl From<Inspect> for SelectorWire {
    fn from(i: Inspect) -> SelectorWire {
        i.by.into()
    }
}

impl TryFrom<GcWire> for Gc {
    type Error = String;
    fn try_from(w: GcWire) -> Result<Gc, String> {
        Ok(Gc {
            network: w.network.parse()?,
            valid: (w.valid.into_iter())
                .map(|a| {
                    Ok(Attachment {
                        container_id: a.container_id.parse()?,
                        ifname: a.ifname.parse()?,
                    })
                })
                .collect::<Result<_, ParseError>>()?,
        })
    }
}

impl From<Gc> for GcWire {
    fn from(g: Gc) -> GcWire {
        GcWire {
            network: g.network.0,
            valid: (g.valid.into_iter())
                .map(|a| AttachmentWire {
                    container_id: a.container_id.0,
                    ifname: a.ifname.0,
                })
                .collect(),
        }
    }
}

/// `capture`: stream the frames that cross some ports until the client closes, or `count`
/// frames have been sent. The header (`Reply::Capture`) comes once the ports are captured and
/// the kernel fast path has stepped aside for them: from then on no frame of theirs is missed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "CaptureWire", into = "CaptureWire")]
pub struct Capture {
    /// The ports, or `None` for every port (the TAP included).
    pub ports: Option<Vec<PortRef>>,
    pub filter: Filter,
    /// Frames to capture in all.
    pub count: Option<u64>,
    /// Bytes kept of each frame (default 262144: whole frames).
    pub snaplen: Option<u32>,
}

/// The smallest snap length taken: an Ethernet header and an IPv4 one.
pub const MIN_SNAPLEN: u32 = 34;
/// The largest: libpcap's.
pub const MAX_SNAPLEN: u32 = 262144;

/// A port as `vswitch ls` shows it: its number, its host interface's name, its container's pid
/// or namespace path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortRef {
    Number(u16),
    Name(IfName),
    Pid(u32),
    Netns(PathBuf),
}

/// `3`, `vsw-4242`, `pid:4242` (or `pid 4242`, as `ls` writes it), `/run/netns/NAME`.
impl FromStr for PortRef {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<PortRef, ParseError> {
        let bad = || ParseError::PortRef(s.to_string());
        if let Some(pid) = s.strip_prefix("pid:").or_else(|| s.strip_prefix("pid ")) {
            return pid.trim().parse().map(PortRef::Pid).map_err(|_| bad());
        }
        if s.starts_with('/') {
            return Ok(PortRef::Netns(PathBuf::from(s)));
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().map(PortRef::Number).map_err(|_| bad());
        }
        s.parse().map(PortRef::Name).map_err(|_| bad())
    }
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(name) => write!(f, "{name}"),
            PortRef::Pid(pid) => write!(f, "pid:{pid}"),
            PortRef::Netns(path) => write!(f, "{}", path.display()),
        }
    }
}

/// `capture` as it travels: `all`, or `ports` as the command line names them; the filter's
/// fields by name.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureWire {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    filter: FilterWire,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    snaplen: Option<u32>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proto: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

impl TryFrom<CaptureWire> for Capture {
    type Error = String;
    fn try_from(w: CaptureWire) -> Result<Capture, String> {
        let ports = match (w.all, w.ports.is_empty()) {
            (true, true) => None,
            (false, false) => Some(
                (w.ports.iter().map(|p| p.parse()))
                    .collect::<Result<Vec<PortRef>, ParseError>>()?,
            ),
            (true, false) => return Err("name ports or all, not both".into()),
            (false, true) => return Err("name the ports to capture, or all".into()),
        };
        if w.count == Some(0) {
            return Err("a count of 0 frames".into());
        }
        if let Some(s) = w
            .snaplen
            .filter(|s| !(MIN_SNAPLEN..=MAX_SNAPLEN).contains(s))
        {
            return Err(format!(
                "a snap length of {s} bytes (from {MIN_SNAPLEN} to {MAX_SNAPLEN})"
            ));
        }
        let proto =
            (w.filter.proto.map(|p| p.parse::<Proto>()).transpose()).map_err(|e| e.to_string())?;
        Ok(Capture {
            ports,
            filter: Filter {
                proto,
                host: w.filter.host,
                port: w.filter.port,
            },
            count: w.count,
            snaplen: w.snaplen,
        })
    }
}

impl From<Capture> for CaptureWire {
    fn from(c: Capture) -> CaptureWire {
        CaptureWire {
            all: c.ports.is_none(),
            ports: (c.ports.iter().flatten()).map(|p| p.to_string()).collect(),
            filter: FilterWire {
                proto: c.filter.proto.map(|p| p.to_string()),
                host: c.filter.host,
                port: c.filter.port,
            },
            count: c.count,
            snaplen: c.snaplen,
        }
    }
}

/// The header of a capture's stream: what is captured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaptureView {
    pub ports: Vec<CapturedPort>,
    /// The filter, as tcpdump would write it.
    pub filter: String,
    pub snaplen: u32,
}

/// One captured port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapturedPort {
    pub port: u16,
    /// Its host interface (the TAP's name for the host's port).
    pub name: String,
    /// What it connects: `pid 4242 10.1.1.2`, `host 10.1.1.1`...
    pub description: String,
    /// Whether the kernel fast path stepped aside for it while the capture runs.
    pub fast_path_paused: bool,
}

/// The end of a capture's stream: what it saw and why it ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CaptureEnd {
    /// Frames sent to the client.
    pub frames: u64,
    /// Frames the filter kept that were lost because the client read too slowly.
    pub dropped: u64,
    /// `count` (the frames asked for were sent), `client` (it closed or asked to stop), or
    /// `daemon` (the daemon is stopping).
    pub reason: String,
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
        "invalid container id {0:?} (1 to {MAX_CNI_NAME} characters: letters, digits, '_', '.' \
         and '-', starting with a letter or digit)"
    )]
    ContainerId(String),
    #[error(
        "invalid network name {0:?} (1 to {MAX_CNI_NAME} characters: letters, digits, '_', '.' \
         and '-', starting with a letter or digit)"
    )]
    NetworkName(String),
    #[error(
        "invalid port {0:?}: expected a port number or host interface as `vswitch ls` shows \
         them, pid:PID, or a namespace path"
    )]
    PortRef(String),
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

    /// The default name of a container's interface.
    pub fn eth0() -> IfName {
        IfName("eth0".to_string())
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

/// The longest container id or network name taken (CNI sets no limit; runtimes use 64).
pub const MAX_CNI_NAME: usize = 256;

/// CNI's rule for container ids and network names: an ASCII letter or digit, then letters,
/// digits, '_', '.' and '-'.
fn is_cni_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && s.len() <= MAX_CNI_NAME
}

/// A container runtime's id for a container (CNI_CONTAINERID).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId(String);

impl ContainerId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ContainerId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<ContainerId, ParseError> {
        match is_cni_name(s) {
            true => Ok(ContainerId(s.to_string())),
            false => Err(ParseError::ContainerId(s.to_string())),
        }
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A CNI network's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetworkName(String);

impl FromStr for NetworkName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<NetworkName, ParseError> {
        match is_cni_name(s) {
            true => Ok(NetworkName(s.to_string())),
            false => Err(ParseError::NetworkName(s.to_string())),
        }
    }
}

impl fmt::Display for NetworkName {
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
    /// The interface's MTU (the daemon's `--mtu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Every frame lost on this port: `rx_invalid` + `tx_failed` + `kernel_drops`.
    pub drops: u64,
    /// Of the drops: frames received and refused (truncated, malformed)...
    #[serde(default)]
    pub rx_invalid: u64,
    /// ...frames the port's sockets would not take (queue full, link gone)...
    #[serde(default)]
    pub tx_failed: u64,
    /// ...and frames the kernel dropped before the daemon could read them (its receive queue
    /// was full).
    #[serde(default)]
    pub kernel_drops: u64,
    /// Of the frames counted above, those the kernel fast path carried (see `bpf::fastpath`).
    #[serde(default)]
    pub fast_rx_frames: u64,
    #[serde(default)]
    pub fast_tx_frames: u64,
    #[serde(default)]
    pub fast_rx_bytes: u64,
    #[serde(default)]
    pub fast_tx_bytes: u64,
    /// The hook the kernel fast path is on for this port: "tcx", "tc" or "off".
    #[serde(default)]
    pub fast_path: String,
    /// Receive coalescing on a port the daemon serves itself (see `ports::Coalescing`): "on"
    /// while the kernel merges the datagrams the port receives, "off", or absent where the fast
    /// path serves the port or the kernel cannot merge datagrams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalescing: Option<String>,
    /// How many times receive coalescing came on.
    #[serde(default)]
    pub coalesced: u64,
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
    /// A runtime's attachment: its container id and CNI network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
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
    /// The kernel translates the flow's segments now (an established relayed connection).
    #[serde(default)]
    pub in_kernel: bool,
}

/// One learned MAC as `vswitch fdb` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FdbView {
    pub mac: String,
    pub port: u16,
    pub port_name: String,
    pub age_ms: u64,
}

/// The daemon as a whole, as `vswitch stats` shows it: every counter it keeps, in one snapshot
/// (`/metrics` renders the same one).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Container ports plugged.
    pub containers: usize,
    #[serde(default)]
    pub subnet: SubnetStats,
    pub fds: FdStats,
    pub switch: SwitchCounters,
    pub nat: NatCounters,
    /// Every port (the TAP first) with its counters, as `ls` shows them.
    #[serde(default)]
    pub ports: Vec<PortView>,
    #[serde(default)]
    pub dns: DnsStats,
    /// The threads that move traffic: datapath workers (`dp0`...) and the NAT service (`nat`).
    #[serde(default)]
    pub threads: Vec<ThreadStats>,
    #[serde(default)]
    pub plugs: PlugStats,
    /// The daemon's version and when it started (seconds since the Unix epoch).
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub start_time: f64,
}

/// The DNS forwarder's counters since start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DnsStats {
    /// Whether the forwarder runs (not with `--no-dns`).
    pub enabled: bool,
    pub udp_queries: u64,
    /// UDP queries that no upstream answered.
    pub udp_failed: u64,
    /// DNS-over-TCP connections (each may carry several queries).
    pub tcp_connections: u64,
    /// Connections no upstream accepted.
    pub tcp_failed: u64,
    /// Queries and connections dropped unserved (too many in flight, no descriptor).
    pub dropped: u64,
    /// From a UDP query's arrival to its answer going back.
    pub latency: HistogramView,
}

/// A thread's time spent working (from a wake-up with work to its next wait).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ThreadStats {
    pub name: String,
    pub busy_ns: u64,
}

/// Plugs and unplugs since start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PlugStats {
    pub plugged: u64,
    /// Plugs that failed (and were rolled back).
    pub failed: u64,
    /// Ports removed on request (`unplug`, a runtime's DEL or GC, an attachment replaced).
    pub unplugged: u64,
    /// Ports removed because their container exited.
    pub exited: u64,
    /// How long successful plugs took.
    pub plug_seconds: HistogramView,
    /// How long requested unplugs took.
    pub unplug_seconds: HistogramView,
}

/// Live NAT flows of one protocol in one state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStateCount {
    pub proto: String,
    pub state: String,
    pub flows: usize,
}

/// The containers' subnet, and how many addresses are left in it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubnetStats {
    /// `10.1.1.0/24`.
    pub cidr: String,
    pub gateway: String,
    pub mtu: u32,
    /// Addresses a plug can still have.
    pub free: u64,
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
    /// Frames the daemon itself sent, seen again on a port and dropped.
    #[serde(default)]
    pub outgoing: u64,
    /// Learned MACs forgotten because they aged, or were flushed (`fdb --flush`).
    #[serde(default)]
    pub aged: u64,
    #[serde(default)]
    pub flushed: u64,
    /// Most MACs the table holds (`--fdb-size`).
    #[serde(default)]
    pub fdb_capacity: usize,
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
    /// More drops: no free relay port, no free echo identifier, a protocol the NAT does not
    /// carry, an address it must not translate.
    #[serde(default)]
    pub no_relay_port: u64,
    #[serde(default)]
    pub no_echo_ident: u64,
    #[serde(default)]
    pub unsupported: u64,
    /// Datagrams to the outside a host socket refused to send (its buffer full, a route gone).
    #[serde(default)]
    pub send_failed: u64,
    #[serde(default)]
    pub bad_address: u64,
    /// IPv4 packets and bytes through the NAT, from the containers (out) and to them (in).
    #[serde(default)]
    pub packets_out: u64,
    #[serde(default)]
    pub packets_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
    #[serde(default)]
    pub bytes_in: u64,
    /// Live flows by protocol and state.
    #[serde(default)]
    pub by_state: Vec<FlowStateCount>,
    /// TCP connections relayed (spliced) now, and so far.
    #[serde(default)]
    pub relays: usize,
    #[serde(default)]
    pub relayed: u64,
    /// Established relayed connections whose segments the kernel translates now, and so far.
    #[serde(default)]
    pub in_kernel: usize,
    #[serde(default)]
    pub in_kernel_total: u64,
    /// Of those, outgoing connections the kernel opened itself, from their SYN (the daemon
    /// followed).
    #[serde(default)]
    pub opened_in_kernel_total: u64,
    /// UDP flows and echoes the kernel carried (every datagram after the first), so far.
    #[serde(default)]
    pub datagrams_in_kernel_total: u64,
}

/// A histogram of durations as it travels: at each upper bound (seconds), how many
/// observations were at or below it (cumulative, as Prometheus has them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramView {
    pub buckets: Vec<Bucket>,
    /// Every observation, including those above the last bound.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub le: f64,
    pub count: u64,
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
    Handover(HandoverOffer),
    Capture(CaptureView),
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
    // A hand-over is how one version of the daemon gives way to the next: it carries a format
    // version of its own, which is the one that must match.
    let handover = map.get("cmd").and_then(|c| c.as_str()) == Some("handover");
    match map.remove("v") {
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL)) => {}
        _ if handover => {}
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
            ip: Some(Ipv4Addr::new(10, 1, 1, 9)),
            publish: vec!["8080:80".parse().unwrap()],
            ..Plug::new(Target::Pid(42))
        });
        let text = String::from_utf8(encode_request(&plug)).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"plug","container_id":null,"ifname":null,"ip":"10.1.1.9","mac":null,"netns":null,"network":null,"pid":42,"publish":["8080:80/tcp"],"resolv":true,"v":2}"#
        );
        assert_eq!(decode(&text).unwrap(), plug);
        // The command line's plug as an older one wrote it: the new fields take their defaults.
        let old = r#"{"v":2,"cmd":"plug","pid":42,"ip":"10.1.1.9","publish":["8080:80"]}"#;
        assert_eq!(decode(old).unwrap(), plug);
        let unplug = decode(r#"{"v":2,"cmd":"unplug","netns":"/run/netns/a"}"#).unwrap();
        assert_eq!(
            unplug,
            Request::Unplug(Unplug {
                by: Selector::Target(Target::Netns("/run/netns/a".into()))
            })
        );
        assert_eq!(
            decode(r#"{"v":2,"cmd":"ls"}"#).unwrap(),
            Request::Ls(NoArgs {})
        );
    }

    #[test]
    fn operator_requests_round_trip() {
        let delete = Request::ConntrackDelete(FlowFilter {
            proto: Some(FlowProto::Udp),
            inside: Some(Ipv4Addr::new(10, 1, 1, 2)),
            outside_port: Some(53),
            ..FlowFilter::default()
        });
        let text = String::from_utf8(encode_request(&delete)).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"conntrack_delete","inside":"10.1.1.2","outside_port":53,"proto":"udp","v":2}"#
        );
        assert_eq!(decode(&text).unwrap(), delete);
        // -F: no filter at all.
        let flush = decode(r#"{"v":2,"cmd":"conntrack_delete"}"#).unwrap();
        let Request::ConntrackDelete(filter) = &flush else {
            panic!("{flush:?}")
        };
        assert!(filter.is_empty());
        for port in [None, Some("vsw-42".to_string())] {
            let request = Request::FdbFlush(FdbFlush { port });
            let text = String::from_utf8(encode_request(&request)).unwrap();
            assert_eq!(decode(&text).unwrap(), request, "{text}");
        }
    }

    #[test]
    fn stats_of_an_older_daemon_still_read() {
        // What protocol 2's first daemons answered: every field added since takes its default.
        let old = r#"{"containers":1,"fds":{"limit":1024,"reserved":80,"leased":0,
            "available":944,"refused":0,"exhausted":0},"switch":{"frames":5,"malformed":0,
            "flooded":1,"hairpin":0,"arp_replies":2,"learned":2,"moved":0,"fdb_full":0,
            "fdb_entries":2},"nat":{"flows":0,"max_flows":64,"created":0,"expired":0,
            "removed":0,"table_full":0,"malformed":0,"fragments":0,"no_flow":0,
            "bad_checksum":0,"bad_length":0,"ttl_exceeded":0,"tagged":0,"container_limit":0,
            "half_open_limit":0}}"#;
        let stats: Stats = serde_json::from_str(old).unwrap();
        assert_eq!((stats.switch.frames, stats.switch.aged), (5, 0));
        assert!(stats.ports.is_empty() && !stats.dns.enabled);
    }

    #[test]
    fn attachments_round_trip() {
        let cni = Request::Plug(Plug {
            ifname: Some("net1".parse().unwrap()),
            container_id: Some("3f2a9b".parse().unwrap()),
            network: Some("vswitch".parse().unwrap()),
            resolv: false,
            ..Plug::new(Target::Netns("/run/netns/netns-1".into()))
        });
        let text = String::from_utf8(encode_request(&cni)).unwrap();
        assert_eq!(decode(&text).unwrap(), cni);
        let Request::Plug(plug) = &cni else {
            unreachable!()
        };
        let attachment = plug.attachment().unwrap();
        assert_eq!(attachment.to_string(), "container 3f2a9b net1");

        let by = Selector::Attachment(attachment.clone());
        for request in [
            Request::Unplug(Unplug { by: by.clone() }),
            Request::Inspect(Inspect { by: by.clone() }),
            Request::Gc(Gc {
                network: "vswitch".parse().unwrap(),
                valid: vec![attachment.clone()],
            }),
        ] {
            let text = String::from_utf8(encode_request(&request)).unwrap();
            assert_eq!(decode(&text).unwrap(), request, "{text}");
        }
        // The interface defaults to eth0, as on plug.
        let eth0 = decode(r#"{"v":2,"cmd":"unplug","container_id":"abc"}"#).unwrap();
        let Request::Unplug(Unplug {
            by: Selector::Attachment(a),
        }) = eth0
        else {
            panic!("{eth0:?}")
        };
        assert_eq!(a.ifname.as_str(), "eth0");
    }

    #[test]
    fn malformed_requests_are_refused_as_invalid() {
        for bad in [
            "",
            "garbage",
            "[1]",
            r#"{"v":2,"cmd":"reboot"}"#,
            r#"{"v":2,"cmd":"ls","all":true}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"colour":"red"}"#,
            r#"{"v":2,"cmd":"unplug","pid":1,"force":true}"#,
            r#"{"v":2,"cmd":"plug","pid":-1}"#,
            r#"{"v":2,"cmd":"plug"}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"netns":"/run/netns/a"}"#,
            r#"{"v":2,"cmd":"plug","netns":"relative/path"}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"ip":"not-an-ip"}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"mac":"01:00:5e:00:00:01"}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"mac":"zz"}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"ifname":"a\u0000b"}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"ifname":"tab\tname"}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"ifname":"sixteen-chars-xx"}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"publish":["80"]}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"container_id":"-leading-dash"}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"container_id":""}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"network":"a/b"}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"resolv":"no"}"#,
            r#"{"v":2,"cmd":"unplug","pid":1,"container_id":"abc"}"#,
            r#"{"v":2,"cmd":"unplug","ifname":"eth0"}"#,
            r#"{"v":2,"cmd":"inspect"}"#,
            r#"{"v":2,"cmd":"gc","network":"n"}"#,
            r#"{"v":2,"cmd":"gc","network":"n","valid":[{"container_id":"a"}]}"#,
            r#"{"v":2,"cmd":"conntrack_delete","proto":"sctp"}"#,
            r#"{"v":2,"cmd":"conntrack_delete","inside":"10.1.1"}"#,
            r#"{"v":2,"cmd":"conntrack_delete","inside_port":70000}"#,
            r#"{"v":2,"cmd":"conntrack_delete","container":"10.1.1.2"}"#,
            r#"{"v":2,"cmd":"fdb_flush","port":1}"#,
            r#"{"v":2,"cmd":"fdb_flush","all":true}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"trusted":"yes"}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"trusted":true,"allow_ip":["10.1.1.0/28"]}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"allow_mac":["01:00:5e:00:00:01"]}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"allow_ip":["10.1.1.5/24"]}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"allow_ip":"10.1.1.0/24"}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"allow_ethertype":["0x0800"]}"#,
            r#"{"v":2,"cmd":"plug","pid":1,"max_macs":-1}"#,
        ] {
            let err = decode(bad).expect_err(bad);
            assert_eq!(err.code, ErrorCode::Invalid, "{bad}: {err}");
            assert!(err.message.starts_with("malformed request"), "{err}");
        }
    }

    #[test]
    fn a_handover_is_heard_whatever_the_protocol_version() {
        for v in ["", r#""v":1,"#, r#""v":99,"#] {
            let text = format!(r#"{{{v}"cmd":"handover","format":1,"network":{{}}}}"#);
            assert!(
                matches!(decode(&text), Ok(Request::Handover(_))),
                "{text}: {:?}",
                decode(&text)
            );
        }
    }

    #[test]
    fn a_handovers_network_round_trips_exactly() {
        // Found by the control_requests fuzz target: a number past u64 is read as the nearest
        // float only with serde_json's `float_roundtrip` (else it may be one off, and written
        // back it reads as another), so the request did not decode to itself once encoded.
        let text = r#"{"v":2,"cmd":"handover","format":1,"network":[98446744073709551615,0.1]}"#;
        let request = decode(text).unwrap();
        let again = decode(std::str::from_utf8(&encode_request(&request)).unwrap()).unwrap();
        assert_eq!(again, request);
    }

    #[test]
    fn port_security_travels_only_when_asked_for() {
        let text = r#"{"v":2,"cmd":"plug","pid":7,"isolated":true,"allow_mac":["02:00:00:00:00:09"],"allow_ip":["10.1.1.0/28"],"allow_ethertype":["86DD"],"max_macs":9}"#;
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
        let trusted = decode(r#"{"v":2,"cmd":"plug","pid":7,"trusted":true}"#).unwrap();
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
        assert_eq!(ok, br#"{"v":2,"ok":true,"data":[]}"#);
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
    fn container_ids_and_network_names_follow_cni() {
        let podman = "3f2a9b1c0d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
        for good in [podman, "a", "k8s_pod.1-x", "0abc"] {
            assert_eq!(good.parse::<ContainerId>().unwrap().as_str(), good);
            assert_eq!(good.parse::<NetworkName>().unwrap().to_string(), good);
        }
        let long = "a".repeat(MAX_CNI_NAME + 1);
        for bad in [
            "",
            "-a",
            "_a",
            ".a",
            "a b",
            "a/b",
            "a:b",
            "é",
            long.as_str(),
        ] {
            assert!(bad.parse::<ContainerId>().is_err(), "{bad:?}");
            assert!(bad.parse::<NetworkName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn captures_round_trip_and_name_ports_as_ls_shows_them() {
        let capture = Request::Capture(Capture {
            ports: Some(vec![
                PortRef::Number(0),
                PortRef::Name("vsw-42".parse().unwrap()),
                PortRef::Pid(42),
                PortRef::Netns("/run/netns/a".into()),
            ]),
            filter: Filter {
                proto: Some(Proto::Tcp),
                host: Some(Ipv4Addr::new(10, 1, 1, 2)),
                port: Some(80),
            },
            count: Some(10),
            snaplen: None,
        });
        let text = String::from_utf8(encode_request(&capture)).unwrap();
        assert_eq!(
            text,
            r#"{"all":false,"cmd":"capture","count":10,"filter":{"host":"10.1.1.2","port":80,"proto":"tcp"},"ports":["0","vsw-42","pid:42","/run/netns/a"],"snaplen":null,"v":2}"#
        );
        assert_eq!(decode(&text).unwrap(), capture);
        let all = decode(r#"{"v":2,"cmd":"capture","all":true}"#).unwrap();
        assert_eq!(
            all,
            Request::Capture(Capture {
                ports: None,
                filter: Filter::default(),
                count: None,
                snaplen: None
            })
        );
        assert_eq!("pid 7".parse::<PortRef>().unwrap(), PortRef::Pid(7));
        for bad in [
            r#"{"v":2,"cmd":"capture"}"#,
            r#"{"v":2,"cmd":"capture","all":true,"ports":["1"]}"#,
            r#"{"v":2,"cmd":"capture","ports":["a b"]}"#,
            r#"{"v":2,"cmd":"capture","ports":["pid:x"]}"#,
            r#"{"v":2,"cmd":"capture","ports":["99999"]}"#,
            r#"{"v":2,"cmd":"capture","all":true,"count":0}"#,
            r#"{"v":2,"cmd":"capture","all":true,"snaplen":10}"#,
            r#"{"v":2,"cmd":"capture","all":true,"filter":{"proto":"sctp"}}"#,
            r#"{"v":2,"cmd":"capture","all":true,"filter":{"vlan":1}}"#,
            r#"{"v":2,"cmd":"capture","all":true,"write":"/tmp/x"}"#,
        ] {
            let err = decode(bad).expect_err(bad);
            assert_eq!(err.code, ErrorCode::Invalid, "{bad}: {err}");
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
