//! Upgrading without loss: a new process (`vswitch run ... --takeover`) takes over everything a
//! running daemon serves, over its control socket.
//!
//! ```text
//!   new                                         old (serving)
//!   {"cmd":"handover","format":F,"network":..} ->
//!                                               checks the format and the network; stops
//!                                               accepting control connections, parks its
//!                                               workers and its NAT service (frames wait in
//!                                               the sockets' buffers), takes a snapshot
//!                                            <- {"ok":true,"data":{"bytes":N,"fds":M,...}}
//!                                            <- N bytes of JSON (`Snapshot`), after its length
//!                                            <- M descriptors, SCM_RIGHTS, <= 250 a message
//!   builds everything from them (nothing moves)
//!   ready                                    ->
//!                                            <- go          (the old one is committed)
//!   starts its workers, NAT service, DNS, control socket; tells systemd MAINPID= and READY=1
//!   done                                     ->
//!                                               exits (no destructor runs: the new process
//!                                               holds a duplicate of every descriptor)
//! ```
//!
//! Until `go`, nothing the new process holds has moved a byte, so an old process that hears no
//! `ready` (the new one failed, disconnected, or took more than [`TIMEOUT`]) resumes as if
//! nothing had happened; the new one then exits without touching anything. After `go` the old
//! process exits whatever happens next.
//!
//! What is handed over: the control listener; the TAP queues; every port's packet sockets
//! (with their fanout group, whose program and mode map come along, and their socket filter,
//! replaced by the new process's on the same pinned maps); the NAT's relay listeners, raw ICMP
//! socket and every socket of its service; every relayed TCP pair with its pipes; the DNS
//! sockets; the conntrack table (`vswitch_nat::snapshot`), the FDB with its ages, the ports'
//! records and counters. The kernel fast path needs no descriptor: it is pinned, and the new
//! process swaps its program in on the same links.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vswitch_nat::NatSnapshot;

use crate::bpf::fanout::SpreadProgram;
use crate::datapath::relay::PairSnap;
use crate::natd::ServiceSnap;
use crate::ports::Counters;

use super::config::Config;
use super::state::PortRecord;

mod give;
mod take;

pub use take::take_over;

/// The hand-over format: bump it whenever `Snapshot` or the exchange changes shape. A daemon
/// and a new process of different formats refuse to hand over (and say so).
pub const FORMAT: u32 = 1;

/// How long a hand-over may take, from the request to `ready`; the old process resumes after
/// it.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The longest JSON snapshot accepted (a full table of 65536 flows is some 24 MB).
pub const MAX_SNAPSHOT: usize = 1 << 30;

/// What makes two daemons the same network: a process for another one must not take over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub tap: String,
    pub mtu: u32,
    /// One queue per worker on every port: the queues handed over must be as many.
    pub workers: usize,
}

impl Network {
    pub fn of(cfg: &Config) -> Network {
        Network {
            subnet: cfg.subnet.to_string(),
            gateway: cfg.gateway,
            tap: cfg.tap.clone(),
            mtu: cfg.mtu,
            workers: cfg.workers,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "subnet {}, gateway {}, TAP {}, MTU {}, {} workers",
            self.subnet, self.gateway, self.tap, self.mtu, self.workers
        )
    }
}

/// Everything the old process hands over, its descriptors named by index.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub format: u32,
    /// The old process.
    pub pid: u32,
    pub network: Network,
    /// The control socket's listener.
    pub control: usize,
    /// The TAP's queues, one per worker, its ifindex and counters.
    pub tap: Vec<usize>,
    pub tap_index: u32,
    pub tap_counters: CounterSnap,
    pub ports: Vec<PortSnap>,
    /// The ports' fanout program and its mode map.
    pub spread: Option<[usize; 2]>,
    /// The NAT's raw ICMP socket.
    pub icmp: Option<usize>,
    /// The DNS forwarder's UDP socket and TCP listener.
    pub dns: Option<[usize; 2]>,
    pub nat: NatSnapshot,
    pub service: ServiceSnap,
    pub pairs: Vec<PairSnap>,
    pub fdb: Vec<FdbSnap>,
    /// When the manager last swept the tables (milliseconds since boot).
    pub last_expiry: u64,
    /// Descriptors leased to traffic in the old process (for the log: the new one leases
    /// again for each flow and pair it takes).
    pub leased: usize,
    /// systemd's notification socket and watchdog, if systemd supervises the old process: the
    /// new one reports to it (a process started by `ExecReload=` may not be told them).
    pub notify_socket: Option<String>,
    pub watchdog_usec: Option<u64>,
    /// The connections the kernel carries (relayed and translated); absent from an older
    /// daemon, whose kernel connections went back to its workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<crate::natd::KernelSnap>,
}

/// A container's port: its record (as in the state file), its sockets, its counters.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSnap {
    pub record: PortRecord,
    pub queues: Vec<usize>,
    pub counters: CounterSnap,
}

/// A port's counters.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterSnap {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub drops: u64,
}

impl CounterSnap {
    pub fn of(c: &Counters) -> CounterSnap {
        use std::sync::atomic::Ordering::Relaxed;
        CounterSnap {
            rx_frames: c.rx_frames.load(Relaxed),
            rx_bytes: c.rx_bytes.load(Relaxed),
            tx_frames: c.tx_frames.load(Relaxed),
            tx_bytes: c.tx_bytes.load(Relaxed),
            drops: c.drops.load(Relaxed),
        }
    }

    pub fn store(&self, c: &Counters) {
        use std::sync::atomic::Ordering::Relaxed;
        c.rx_frames.store(self.rx_frames, Relaxed);
        c.rx_bytes.store(self.rx_bytes, Relaxed);
        c.tx_frames.store(self.tx_frames, Relaxed);
        c.tx_bytes.store(self.tx_bytes, Relaxed);
        c.drops.store(self.drops, Relaxed);
    }
}

/// A learned MAC.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdbSnap {
    pub mac: String,
    pub port: u16,
    pub age_ms: u64,
}

/// What the manager needs to hand the daemon over, besides itself: held by `Manager::run`.
pub struct Handoff {
    /// Set while a hand-over is in progress: the control server accepts nothing.
    pub hold: Arc<AtomicBool>,
    pub network: Network,
    /// The control socket's listener (served by the control thread).
    pub control: RawFd,
    /// The DNS forwarder's sockets (served by its threads).
    pub dns: Option<[RawFd; 2]>,
    pub spread: Option<Arc<SpreadProgram>>,
}

impl Handoff {
    /// What a daemon serving `cfg`'s network needs to hand it over: its control socket's
    /// listener, its DNS forwarder's sockets and its fan-out program.
    pub fn new(
        cfg: &Config,
        control: RawFd,
        dns: Option<[RawFd; 2]>,
        spread: Option<Arc<SpreadProgram>>,
    ) -> Handoff {
        Handoff {
            hold: Arc::default(),
            network: Network::of(cfg),
            control,
            dns,
            spread,
        }
    }
}
