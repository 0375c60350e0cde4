//! What `vswitch run` was asked for.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::bpf::fanout::Spread;

use super::ipam::Ipv4Net;

pub struct Config {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub tap: String,
    pub mtu: u32,
    pub control: PathBuf,
    pub fdb_age_secs: u64,
    pub fdb_size: usize,
    pub workers: usize,
    /// Upstream resolvers given with `--dns` (else the host's).
    pub dns: Vec<IpAddr>,
    /// Serve no DNS forwarder on the gateway.
    pub no_dns: bool,
    /// Most NAT flows at once (default: from the descriptor limit).
    pub max_flows: Option<usize>,
    /// Most NAT flows one container may start (default: a quarter of the table).
    pub max_flows_per_container: Option<usize>,
    /// Most TCP connections of one container still connecting (default: see `startup`).
    pub max_half_open: Option<usize>,
    pub spread: Spread,
    /// How long a datapath worker polls after its last frame before sleeping.
    pub poll: Duration,
    /// Forward frames between learned containers in the kernel, on which hook (see
    /// `bpf::fastpath`).
    pub fast_path: crate::bpf::fastpath::Mode,
    /// How outgoing TCP connections reach the outside (see `natd::translate`).
    pub tcp_nat: crate::natd::TcpNat,
    /// Take over from the daemon serving the control socket instead of starting anew (see
    /// `handover`).
    pub takeover: bool,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// Isolate every container plugged (`run --isolate`).
    pub isolate: bool,
    /// Most MACs learned on a trusted port besides its own (`run --max-macs-per-port`).
    pub max_macs_per_port: u32,
}
