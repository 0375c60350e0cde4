//! Connection tracking: the bounded table of the flows the NAT translates.
//!
//! A flow is found from both directions: by its container-side key (protocol, container
//! address and port, remote address and port), which is what a container's frames carry, and for
//! TCP by its translated key (container address and port, and the gateway port the host kernel
//! talks from: a relay port or a published connection's ephemeral port), which is what the host's
//! frames carry. UDP and ICMP replies come from host sockets the edge keeps per flow, so they are
//! found by [`FlowId`] (and echo replies by their translated identifier).
//!
//! The datapath workers share one table, so it is split into shards, each behind its own mutex,
//! chosen by the container address and port: both keys of a flow carry them, so one lock covers
//! a packet's lookup, state update and counters, and flows of different connections rarely
//! contend. The bound on the number of flows is global (one atomic counter), and a full table
//! refuses new flows without evicting anything: established connections are never disturbed.
//!
//! Time is the caller's (milliseconds): a flow lives until `expires_at`, which every packet
//! pushes forward by the timeout of the flow's current state. [`crate::Nat::expire`] reclaims
//! flows whose time has passed; a packet that finds an expired flow before that reclaims it on
//! the spot, and the edge still hears of it at the next `expire`, so that it can close the
//! flow's sockets.
//!
//! Finished TCP connections (TIME_WAIT, CLOSE) are kept for their timeout, as netfilter keeps
//! them, but they cost new connections nothing: they leave the table's bound and their
//! container's share the moment they finish, and the oldest are dropped first when too many
//! pile up (netfilter's early drop), so that a container opening thousands of short connections
//! a second is never refused because of those that are over.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::NatDrop;
use crate::hash::{fingerprint, hash64, random_seed, IdentityBuild};
use crate::tcp_state::{TcpState, TcpTracker};

mod restore;

/// Identifies a flow for the edge: stable for the flow's life, never reused soon after (a slot
/// index with a generation).
pub type FlowId = u64;

/// Default bound on the number of flows.
pub const DEFAULT_MAX_FLOWS: usize = 65536;

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;
const GEN_MASK: u32 = (1 << 24) - 1;

/// How many finished TCP flows a shard keeps at most: together as many as the table's bound
/// (at least 64 Ki), a few seconds of history even at tens of thousands of connections a second.
fn finished_per_shard(max_flows: usize) -> usize {
    max_flows.max(65536).div_ceil(SHARDS)
}

/// `[generation: 24][shard: 8][slot: 32]`
fn make_id(generation: u32, shard: usize, slot: u32) -> FlowId {
    (u64::from(generation & GEN_MASK) << 40) | ((shard as u64 & 0xff) << 32) | u64::from(slot)
}

fn split_id(id: FlowId) -> (u32, usize, u32) {
    ((id >> 40) as u32, ((id >> 32) & 0xff) as usize, id as u32)
}

/// Transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP echo.
    Icmp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }

    fn code(self) -> u128 {
        match self {
            Proto::Tcp => 0,
            Proto::Udp => 1,
            Proto::Icmp => 2,
        }
    }
}

/// How long an idle flow is kept, in milliseconds, by state. The defaults are netfilter's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_sent: u64,
    pub tcp_syn_recv: u64,
    pub tcp_established: u64,
    pub tcp_fin_wait: u64,
    pub tcp_close_wait: u64,
    pub tcp_last_ack: u64,
    pub tcp_time_wait: u64,
    pub tcp_close: u64,
    /// UDP until a reply has been seen.
    pub udp: u64,
    /// UDP once replied.
    pub udp_replied: u64,
    pub icmp: u64,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        const S: u64 = 1000;
        Timeouts {
            tcp_syn_sent: 120 * S,
            tcp_syn_recv: 60 * S,
            tcp_established: 432_000 * S,
            tcp_fin_wait: 120 * S,
            tcp_close_wait: 60 * S,
            tcp_last_ack: 30 * S,
            tcp_time_wait: 120 * S,
            tcp_close: 10 * S,
            udp: 30 * S,
            udp_replied: 120 * S,
            icmp: 30 * S,
        }
    }
}

impl Timeouts {
    pub fn tcp(&self, state: TcpState) -> u64 {
        match state {
            TcpState::None | TcpState::SynSent => self.tcp_syn_sent,
            TcpState::SynRecv => self.tcp_syn_recv,
            TcpState::Established => self.tcp_established,
            TcpState::FinWait => self.tcp_fin_wait,
            TcpState::CloseWait => self.tcp_close_wait,
            TcpState::LastAck => self.tcp_last_ack,
            TcpState::TimeWait => self.tcp_time_wait,
            TcpState::Close => self.tcp_close,
        }
    }
}

/// A flow reclaimed by the table: the edge closes its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub flow: FlowId,
    pub proto: Proto,
}

/// One flow as `conntrack -L` would show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowView {
    pub flow: FlowId,
    pub proto: Proto,
    /// The container's address and port (for ICMP, its echo identifier).
    pub inside: SocketAddrV4,
    /// The remote address and port: the destination of an outgoing flow, the client of a
    /// published one (for ICMP, the translated echo identifier).
    pub outside: SocketAddrV4,
    /// Opened from outside through a published port.
    pub published: bool,
    /// For TCP, the gateway port the host's side of the connection uses: the relay listener's
    /// port (outgoing), or the ephemeral port the host connects to the container from
    /// (published).
    pub gateway_port: Option<u16>,
    /// TCP state name, or `UNREPLIED` / `REPLIED` for UDP and ICMP.
    pub state: &'static str,
    /// Milliseconds left before the flow expires if idle.
    pub timeout_ms: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// Table-wide counters. Packets and bytes are IPv4 packets (a GSO super-frame counts once, with
/// all its bytes) in the container's view: `out` from the container, `in` to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Flows in the table now.
    pub flows: usize,
    pub created: u64,
    /// Reclaimed after their timeout.
    pub expired: u64,
    /// Removed on the edge's request (failed connects, finished published connections...).
    pub removed: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// New flows refused because the table was full.
    pub table_full: u64,
    pub malformed: u64,
    pub fragments: u64,
    /// Segments of no known flow (and not a SYN).
    pub no_flow: u64,
    pub bad_checksum: u64,
    pub bad_length: u64,
    /// Packets whose TTL ran out at the gateway (answered with ICMP time exceeded).
    pub ttl_exceeded: u64,
    pub tagged: u64,
    /// New flows refused because the container's share of the table was used up.
    pub container_limit: u64,
    /// New TCP connections refused because the container had too many connecting.
    pub half_open_limit: u64,
    pub no_relay_port: u64,
    pub no_echo_ident: u64,
    pub unsupported: u64,
    pub bad_address: u64,
}

/// New flows refused so far, by why: the counters an edge watches to report refusals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// The table was full.
    pub table_full: u64,
    /// The container's share of the table was used up.
    pub container_limit: u64,
    /// The container had too many TCP connections connecting.
    pub half_open_limit: u64,
}

impl Refusals {
    pub fn total(&self) -> u64 {
        self.table_full + self.container_limit + self.half_open_limit
    }
}

/// Flows in the table of one protocol in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateCount {
    pub proto: Proto,
    /// As in [`FlowView::state`].
    pub state: &'static str,
    pub flows: usize,
}

/// One container's NAT counters, including those of its flows already gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ContainerStats {
    /// Flows in the table now.
    pub flows: usize,
    pub flows_created: u64,
    /// New flows refused: the table, or the container's share of it, was full.
    pub refused: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// What a flow is, with the translation that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Container -> outside TCP, relayed through `relay` on the gateway; `connecting` while the
    /// edge connects to the real destination and the container's SYN is held.
    TcpEgress {
        relay: u16,
        connecting: bool,
    },
    /// Outside client -> container through a published port; the host talks from `eph`.
    TcpPublished {
        eph: u16,
    },
    UdpEgress,
    UdpPublished {
        publish_id: u32,
    },
    /// ICMP echo with the container's identifier translated to `nat_ident`.
    Echo {
        nat_ident: u16,
    },
}

impl Kind {
    pub fn proto(self) -> Proto {
        match self {
            Kind::TcpEgress { .. } | Kind::TcpPublished { .. } => Proto::Tcp,
            Kind::UdpEgress | Kind::UdpPublished { .. } => Proto::Udp,
            Kind::Echo { .. } => Proto::Icmp,
        }
    }

    /// The gateway port of the translated key, for flows the host's frames reach.
    fn gateway_port(self) -> Option<u16> {
        match self {
            Kind::TcpEgress { relay, .. } => Some(relay),
            Kind::TcpPublished { eph } => Some(eph),
            _ => None,
        }
    }

    fn published(self) -> bool {
        matches!(self, Kind::TcpPublished { .. } | Kind::UdpPublished { .. })
    }

    /// A flow the container started (it counts against its share of the table).
    fn egress(self) -> bool {
        matches!(
            self,
            Kind::TcpEgress { .. } | Kind::UdpEgress | Kind::Echo { .. }
        )
    }

    /// A TCP connection whose connect is still in progress.
    fn connecting(self) -> bool {
        matches!(
            self,
            Kind::TcpEgress {
                connecting: true,
                ..
            }
        )
    }
}

/// Container-side key.
#[inline]
pub(crate) fn inside_key(proto: Proto, cip: u32, cport: u16, rip: u32, rport: u16) -> u128 {
    (1 << 126)
        | (proto.code() << 112)
        | (u128::from(cip) << 80)
        | (u128::from(cport) << 64)
        | (u128::from(rip) << 16)
        | u128::from(rport)
}

/// Translated (host-side) key of a TCP flow.
#[inline]
pub(crate) fn outside_key(cip: u32, cport: u16, gateway_port: u16) -> u128 {
    (2 << 126)
        | (Proto::Tcp.code() << 112)
        | (u128::from(cip) << 80)
        | (u128::from(cport) << 64)
        | u128::from(gateway_port)
}

/// Length of the quote of a container's packet kept for ICMP errors: an IPv4 header without
/// options and the first 8 bytes of the transport header.
pub(crate) const QUOTE_LEN: usize = 28;

#[derive(Debug, Clone)]
pub(crate) struct Flow {
    pub kind: Kind,
    /// Container address and port (for ICMP: its echo identifier).
    pub cip: u32,
    pub cport: u16,
    /// Remote address and port (destination, or published client; for ICMP port 0).
    pub rip: u32,
    pub rport: u16,
    pub tcp: TcpTracker,
    pub replied: bool,
    pub expires_at: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// What the NAT keeps of a flow for the frames it writes to the container, apart from the
/// per-packet data so that a flow's hot part fits one cache line.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Extra {
    /// The container's MAC.
    pub mac: [u8; 6],
    /// The container's first packet, for ICMP errors about the flow.
    pub quote: Option<[u8; QUOTE_LEN]>,
}

impl Extra {
    pub fn mac(mac: [u8; 6]) -> Extra {
        Extra { mac, quote: None }
    }
}

impl Flow {
    pub fn new(kind: Kind, cip: u32, cport: u16, rip: u32, rport: u16) -> Flow {
        Flow {
            kind,
            cip,
            cport,
            rip,
            rport,
            tcp: TcpTracker::new(),
            replied: false,
            expires_at: 0,
            packets_out: 0,
            packets_in: 0,
            bytes_out: 0,
            bytes_in: 0,
        }
    }

    fn inside_key(&self) -> u128 {
        let rport = match self.kind {
            Kind::Echo { .. } => 0,
            _ => self.rport,
        };
        inside_key(self.kind.proto(), self.cip, self.cport, self.rip, rport)
    }

    fn outside_key(&self) -> Option<u128> {
        self.kind
            .gateway_port()
            .map(|p| outside_key(self.cip, self.cport, p))
    }

    #[inline]
    pub fn count_out(&mut self, bytes: usize) {
        self.packets_out += 1;
        self.bytes_out += bytes as u64;
    }

    #[inline]
    pub fn count_in(&mut self, bytes: usize) {
        self.packets_in += 1;
        self.bytes_in += bytes as u64;
    }

    pub fn inside(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.cip), self.cport)
    }

    pub fn remote(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.rip), self.rport)
    }

    fn state_str(&self) -> &'static str {
        match (self.kind.proto(), self.replied) {
            (Proto::Tcp, _) => self.tcp.state().as_str(),
            (_, false) => "UNREPLIED",
            (_, true) => "REPLIED",
        }
    }

    fn add_to(&self, s: &mut ContainerStats) {
        s.packets_out += self.packets_out;
        s.packets_in += self.packets_in;
        s.bytes_out += self.bytes_out;
        s.bytes_in += self.bytes_in;
    }
}

/// A flow's hot part, in a cache line of its own.
#[repr(align(64))]
#[derive(Debug)]
struct Slot(Option<Flow>);

/// The rest of a slot, read on the slow paths only.
#[derive(Debug)]
struct Cold {
    generation: u32,
    extra: Extra,
    /// A finished TCP flow (see [`Table::settle`]): outside the table's bound and its
    /// container's share, listed in its shard's `finished` queue.
    finished: bool,
}

/// One shard: an index from both keys to slots, and the slots.
#[derive(Debug)]
pub(crate) struct Shard {
    index: usize,
    /// The fingerprints of both keys of each flow, to the flow's id (whose low 32 bits are
    /// its slot).
    keys: HashMap<u64, FlowId, IdentityBuild>,
    /// Seed of the fingerprints (the same in every shard).
    seed: u64,
    slots: Vec<Slot>,
    cold: Vec<Cold>,
    free: Vec<u32>,
    /// Flows reclaimed or replaced outside `expire`, reported by the next `expire`.
    reaped: Vec<Expired>,
    /// Counters of flows already gone (and flows created), by container address.
    retired: HashMap<u32, ContainerStats>,
    /// Where the next relay port search starts, so consecutive flows spread over the ports.
    relay_cursor: usize,
    /// Finished TCP flows (slot, generation), oldest first; entries of flows since removed are
    /// skipped when they reach the front.
    finished: VecDeque<(u32, u32)>,
    /// How many of this shard's flows are finished.
    finished_count: usize,
}

impl Shard {
    fn new(index: usize, seed: u64) -> Shard {
        Shard {
            index,
            keys: HashMap::with_hasher(IdentityBuild),
            seed,
            slots: Vec::new(),
            cold: Vec::new(),
            free: Vec::new(),
            reaped: Vec::new(),
            retired: HashMap::new(),
            relay_cursor: index,
            finished: VecDeque::new(),
            finished_count: 0,
        }
    }

    #[inline]
    pub fn flow(&self, slot: u32) -> Option<&Flow> {
        self.slots.get(slot as usize)?.0.as_ref()
    }

    #[inline]
    pub fn flow_mut(&mut self, slot: u32) -> Option<&mut Flow> {
        self.slots.get_mut(slot as usize)?.0.as_mut()
    }

    pub fn extra(&self, slot: u32) -> Extra {
        self.cold
            .get(slot as usize)
            .map_or_else(Extra::default, |c| c.extra)
    }

    pub fn extra_mut(&mut self, slot: u32) -> Option<&mut Extra> {
        self.cold.get_mut(slot as usize).map(|c| &mut c.extra)
    }

    fn id_of(&self, slot: u32) -> FlowId {
        let generation = self.cold.get(slot as usize).map_or(0, |c| c.generation);
        make_id(generation, self.index, slot)
    }

    /// The slot and id of the flow a key maps to, expired or not.
    #[inline]
    pub fn get(&self, key: u128) -> Option<(u32, FlowId)> {
        let &id = self.keys.get(&fingerprint(self.seed, key))?;
        let slot = id as u32;
        let f = self.flow(slot)?;
        // A fingerprint is not the key: check the flow's.
        (f.inside_key() == key || f.outside_key() == Some(key)).then_some((slot, id))
    }

    /// Whether the flow in `slot` is a finished TCP flow.
    #[inline]
    pub fn is_finished(&self, slot: u32) -> bool {
        self.cold.get(slot as usize).is_some_and(|c| c.finished)
    }

    /// Whether the `finished` queue entry names a flow still finished.
    fn finished_entry_live(&self, (slot, generation): (u32, u32)) -> bool {
        (self.cold.get(slot as usize)).is_some_and(|c| c.finished && c.generation == generation)
    }
}

#[repr(align(128))]
#[derive(Debug)]
struct Padded<T>(T);

/// The translated identifiers of echo flows and the ephemeral ports of published TCP flows:
/// both are found from values that carry no container address, hence no shard.
#[derive(Debug, Default)]
struct Side {
    idents: HashMap<u16, FlowId>,
    next_ident: u16,
    ephs: HashMap<u16, FlowId>,
}

impl Side {
    fn alloc_ident(&mut self, id: FlowId) -> Option<u16> {
        if self.idents.len() > usize::from(u16::MAX) {
            return None;
        }
        loop {
            let ident = self.next_ident;
            self.next_ident = ident.wrapping_add(1);
            if let std::collections::hash_map::Entry::Vacant(v) = self.idents.entry(ident) {
                v.insert(id);
                return Some(ident);
            }
        }
    }
}

/// Why a flow could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CreateError {
    TableFull,
    NoEchoIdent,
    InUse,
    /// The container has its whole share of the table.
    ContainerLimit,
    /// The container has its whole share of connections still connecting.
    HalfOpen,
}

/// What one container holds of the table: its share is bounded, so that one container cannot
/// take every flow (or every descriptor behind them) from the others.
#[derive(Debug, Default, Clone, Copy)]
struct Quota {
    /// Flows it started (egress), now.
    live: usize,
    /// Of those, TCP connections whose connect is still in progress (the SYN held).
    half_open: usize,
}

/// The per-container bounds of [`Quota`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shares {
    /// Most flows one container may have started at once.
    pub flows: usize,
    /// Most TCP connections of one container connecting at once.
    pub half_open: usize,
}

impl Shares {
    /// A quarter of the table (at least 256 flows, at most all of it), and 1024 connections
    /// connecting: more than an application opening connections in parallel keeps in flight,
    /// far less than a SYN flood.
    pub fn for_table(max_flows: usize) -> Shares {
        Shares {
            flows: (max_flows / 4).max(256).min(max_flows),
            half_open: 1024,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    created: AtomicU64,
    expired: AtomicU64,
    removed: AtomicU64,
    table_full: AtomicU64,
    malformed: AtomicU64,
    fragments: AtomicU64,
    no_flow: AtomicU64,
    no_relay_port: AtomicU64,
    no_echo_ident: AtomicU64,
    unsupported: AtomicU64,
    bad_address: AtomicU64,
    bad_checksum: AtomicU64,
    bad_length: AtomicU64,
    ttl_exceeded: AtomicU64,
    tagged: AtomicU64,
    container_limit: AtomicU64,
    half_open_limit: AtomicU64,
}

pub(crate) struct Table {
    shards: Box<[Padded<Mutex<Shard>>]>,
    side: Mutex<Side>,
    /// Each container's share in use, by address (only slow paths take it: flow creation,
    /// removal, the end of a connect).
    quotas: Mutex<HashMap<u32, Quota>>,
    shares: Shares,
    /// Flows that count against `max_flows`: every flow but the finished ones.
    live: AtomicUsize,
    /// Finished TCP flows, kept until their timeout or until a shard holds more than
    /// `finished_per_shard` of them.
    finished: AtomicUsize,
    finished_per_shard: usize,
    max_flows: usize,
    pub timeouts: Timeouts,
    shard_seed: u64,
    counters: Counters,
}

impl std::fmt::Debug for Table {
    /// A summary: the flows themselves are listed by `entries`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("flows", &self.live.load(Relaxed))
            .field("max_flows", &self.max_flows)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Table {
    pub fn max_flows(&self) -> usize {
        self.max_flows
    }

    #[cfg(test)]
    pub fn new(max_flows: usize, timeouts: Timeouts) -> Table {
        Table::with_shares(max_flows, Shares::for_table(max_flows), timeouts)
    }

    pub fn with_shares(max_flows: usize, shares: Shares, timeouts: Timeouts) -> Table {
        let seed = random_seed(0x6e61_7420_6b65_7973);
        Table {
            shards: (0..SHARDS)
                .map(|i| Padded(Mutex::new(Shard::new(i, seed))))
                .collect(),
            side: Mutex::new(Side::default()),
            quotas: Mutex::new(HashMap::new()),
            shares,
            live: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            finished_per_shard: finished_per_shard(max_flows),
            max_flows: max_flows.min(u32::MAX as usize),
            timeouts,
            shard_seed: random_seed(0x7368_6172_6473),
            counters: Counters::default(),
        }
    }

    /// Where a TCP flow's search for a relay port starts: a keyed hash of its container port
    /// and destination, so that the same connection (the same four addresses and ports, as the
    /// container sees them) comes back to the same relay port, and another one from the same
    /// container port most likely to another.
    #[inline]
    pub fn relay_start(&self, cport: u16, rip: u32, rport: u16) -> usize {
        let x = (u64::from(rip) << 32) | (u64::from(rport) << 16) | u64::from(cport);
        hash64(self.shard_seed ^ 0x7265_6c61_7973, x) as usize
    }

    /// The shard of the flows of a container address and port.
    #[inline]
    pub fn shard_of(&self, cip: u32, cport: u16) -> usize {
        let x = (u64::from(cip) << 16) | u64::from(cport);
        (hash64(self.shard_seed, x) >> (64 - SHARD_BITS)) as usize
    }

    #[inline]
    pub fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        self.shards[shard % SHARDS]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn side(&self) -> MutexGuard<'_, Side> {
        self.side.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn quotas(&self) -> MutexGuard<'_, HashMap<u32, Quota>> {
        self.quotas.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a flow of `kind` from container `cip`'s share; egress flows only: published ones
    /// are the outside's doing, not the container's.
    fn take_share(&self, cip: u32, kind: Kind) -> Result<(), CreateError> {
        if !kind.egress() {
            return Ok(());
        }
        let mut quotas = self.quotas();
        let q = quotas.entry(cip).or_default();
        if q.live >= self.shares.flows {
            self.counters.container_limit.fetch_add(1, Relaxed);
            return Err(CreateError::ContainerLimit);
        }
        let half_open = kind.connecting();
        if half_open && q.half_open >= self.shares.half_open {
            self.counters.half_open_limit.fetch_add(1, Relaxed);
            return Err(CreateError::HalfOpen);
        }
        q.live += 1;
        q.half_open += usize::from(half_open);
        Ok(())
    }

    /// Gives back what [`Table::take_share`] took for a flow of `kind` (now `kind`: a connect
    /// that finished already gave its half-open place back).
    fn give_share(&self, cip: u32, kind: Kind) {
        if !kind.egress() {
            return;
        }
        let mut quotas = self.quotas();
        if let Some(q) = quotas.get_mut(&cip) {
            q.live = q.live.saturating_sub(1);
            q.half_open = q.half_open.saturating_sub(usize::from(kind.connecting()));
            if q.live == 0 {
                quotas.remove(&cip);
            }
        }
    }

    /// Container `cip`'s connect finished: it no longer counts as half-open.
    pub fn connect_done(&self, cip: u32) {
        if let Some(q) = self.quotas().get_mut(&cip) {
            q.half_open = q.half_open.saturating_sub(1);
        }
    }

    /// A new flow of container `cip` was refused (the table or its share was full).
    pub fn count_refused(&self, sh: &mut Shard, cip: u32) {
        sh.retired.entry(cip).or_default().refused += 1;
    }

    /// Locks the shard of flow `id` and finds its slot; with `now`, a flow found expired is
    /// reclaimed and not returned.
    pub fn lock_id(&self, id: FlowId, now: Option<u64>) -> Option<(MutexGuard<'_, Shard>, u32)> {
        let (generation, shard, slot) = split_id(id);
        if shard >= SHARDS {
            return None;
        }
        let mut sh = self.lock(shard);
        if sh.cold.get(slot as usize)?.generation != generation {
            return None;
        }
        let flow = sh.flow(slot)?;
        if now.is_some_and(|now| flow.expires_at <= now) {
            self.reap(&mut sh, slot);
            return None;
        }
        Some((sh, slot))
    }

    /// The slot and id of the live flow a key maps to. A flow found expired is reclaimed.
    #[inline]
    pub fn lookup(&self, sh: &mut Shard, key: u128, now: u64) -> Option<(u32, FlowId)> {
        let (slot, id) = sh.get(key)?;
        match sh.flow(slot) {
            Some(f) if f.expires_at > now => Some((slot, id)),
            _ => {
                self.reap(sh, slot);
                None
            }
        }
    }

    /// Timeout of a flow in its current state.
    #[inline]
    pub fn timeout(&self, flow: &Flow) -> u64 {
        match flow.kind.proto() {
            Proto::Tcp => self.timeouts.tcp(flow.tcp.state()),
            Proto::Udp if flow.replied => self.timeouts.udp_replied,
            Proto::Udp => self.timeouts.udp,
            Proto::Icmp => self.timeouts.icmp,
        }
    }

    /// Pushes a flow's expiry forward after a packet.
    #[inline]
    pub fn refresh(&self, flow: &mut Flow, now: u64) {
        flow.expires_at = now.saturating_add(self.timeout(flow));
    }

    /// Inserts a new flow under its keys, which the caller has checked are free. For an echo
    /// flow the translated identifier is allocated here (the `nat_ident` given is ignored).
    pub fn create(
        &self,
        sh: &mut Shard,
        flow: Flow,
        extra: Extra,
        now: u64,
    ) -> Result<FlowId, CreateError> {
        // A full table is the table's limit, whoever holds the flows.
        if self.live.load(Relaxed) >= self.max_flows {
            self.counters.table_full.fetch_add(1, Relaxed);
            return Err(CreateError::TableFull);
        }
        self.take_share(flow.cip, flow.kind)?;
        let result = self.insert(sh, flow.clone(), extra, now);
        if result.is_err() {
            self.give_share(flow.cip, flow.kind);
        }
        result
    }

    fn insert(
        &self,
        sh: &mut Shard,
        mut flow: Flow,
        extra: Extra,
        now: u64,
    ) -> Result<FlowId, CreateError> {
        if self.live.fetch_add(1, Relaxed) >= self.max_flows {
            self.live.fetch_sub(1, Relaxed);
            self.counters.table_full.fetch_add(1, Relaxed);
            return Err(CreateError::TableFull);
        }
        let (slot, generation) = match sh.free.last() {
            Some(&s) => (s, sh.cold.get(s as usize).map_or(0, |c| c.generation)),
            None => (sh.slots.len() as u32, 0),
        };
        let id = make_id(generation, sh.index, slot);
        let fp_in = fingerprint(sh.seed, flow.inside_key());
        let fp_out = flow.outside_key().map(|k| fingerprint(sh.seed, k));
        if sh.keys.contains_key(&fp_in) || fp_out.is_some_and(|k| sh.keys.contains_key(&k)) {
            // Taken (the caller did not check), or a 64-bit fingerprint collision.
            self.live.fetch_sub(1, Relaxed);
            return Err(CreateError::InUse);
        }
        match flow.kind {
            Kind::Echo { .. } => match self.side().alloc_ident(id) {
                Some(nat_ident) => flow.kind = Kind::Echo { nat_ident },
                None => {
                    self.live.fetch_sub(1, Relaxed);
                    self.counters.no_echo_ident.fetch_add(1, Relaxed);
                    return Err(CreateError::NoEchoIdent);
                }
            },
            Kind::TcpPublished { eph } => {
                let mut side = self.side();
                if side.ephs.contains_key(&eph) {
                    self.live.fetch_sub(1, Relaxed);
                    return Err(CreateError::InUse);
                }
                side.ephs.insert(eph, id);
            }
            _ => {}
        }
        self.refresh(&mut flow, now);
        sh.keys.insert(fp_in, id);
        if let Some(k) = fp_out {
            sh.keys.insert(k, id);
        }
        sh.retired.entry(flow.cip).or_default().flows_created += 1;
        if sh.free.pop().is_none() {
            sh.slots.push(Slot(Some(flow)));
            sh.cold.push(Cold {
                generation,
                extra,
                finished: false,
            });
        } else if let (Some(s), Some(c)) = (
            sh.slots.get_mut(slot as usize),
            sh.cold.get_mut(slot as usize),
        ) {
            s.0 = Some(flow);
            c.extra = extra;
            c.finished = false;
        }
        self.counters.created.fetch_add(1, Relaxed);
        Ok(id)
    }

    /// Removes a flow and its keys; its counters go to its container's retired totals.
    pub fn remove(&self, sh: &mut Shard, slot: u32) -> Option<Expired> {
        let id = sh.id_of(slot);
        let flow = sh.slots.get_mut(slot as usize)?.0.take()?;
        let mut finished = false;
        if let Some(c) = sh.cold.get_mut(slot as usize) {
            c.generation = (c.generation + 1) & GEN_MASK;
            finished = std::mem::take(&mut c.finished);
        }
        sh.free.push(slot);
        let k = fingerprint(sh.seed, flow.inside_key());
        if sh.keys.get(&k) == Some(&id) {
            sh.keys.remove(&k);
        }
        if let Some(k) = flow.outside_key() {
            let k = fingerprint(sh.seed, k);
            if sh.keys.get(&k) == Some(&id) {
                sh.keys.remove(&k);
            }
        }
        match flow.kind {
            Kind::Echo { nat_ident } => {
                let mut side = self.side();
                if side.idents.get(&nat_ident) == Some(&id) {
                    side.idents.remove(&nat_ident);
                }
            }
            Kind::TcpPublished { eph } => {
                let mut side = self.side();
                if side.ephs.get(&eph) == Some(&id) {
                    side.ephs.remove(&eph);
                }
            }
            _ => {}
        }
        flow.add_to(sh.retired.entry(flow.cip).or_default());
        if finished {
            // It left the bound and its share when it finished.
            sh.finished_count -= 1;
            self.finished.fetch_sub(1, Relaxed);
        } else {
            self.give_share(flow.cip, flow.kind);
            self.live.fetch_sub(1, Relaxed);
        }
        Some(Expired {
            flow: id,
            proto: flow.kind.proto(),
        })
    }

    /// Removes a flow on the edge's request.
    pub fn remove_requested(&self, sh: &mut Shard, slot: u32) -> Option<Expired> {
        let e = self.remove(sh, slot)?;
        self.counters.removed.fetch_add(1, Relaxed);
        Some(e)
    }

    /// Removes a flow outside `expire` (expired, or replaced by a new connection on its
    /// addresses) and queues it for the edge.
    pub fn reap(&self, sh: &mut Shard, slot: u32) {
        if let Some(e) = self.remove(sh, slot) {
            sh.reaped.push(e);
            self.counters.expired.fetch_add(1, Relaxed);
        }
    }

    /// Call after a TCP flow's tracked state may have moved between open and finished
    /// (TIME_WAIT or CLOSE): a flow that finishes gives its place in the table's bound and in
    /// its container's share back at once and joins its shard's queue of finished flows, whose
    /// oldest are dropped (and reported to the edge) beyond the shard's bound; a finished flow
    /// that opens again (a new SYN on its addresses) takes its places back.
    pub fn settle(&self, sh: &mut Shard, slot: u32) {
        let Some(flow) = sh.flow(slot) else { return };
        let (closed, cip, kind) = (flow.tcp.state().is_closed(), flow.cip, flow.kind);
        if kind.proto() != Proto::Tcp || closed == sh.is_finished(slot) {
            return;
        }
        let Some(c) = sh.cold.get_mut(slot as usize) else {
            return;
        };
        c.finished = closed;
        let generation = c.generation;
        if closed {
            self.give_share(cip, kind);
            self.live.fetch_sub(1, Relaxed);
            self.finished.fetch_add(1, Relaxed);
            sh.finished_count += 1;
            sh.finished.push_back((slot, generation));
            self.drop_finished(sh);
        } else {
            self.force_share(cip, kind);
            self.live.fetch_add(1, Relaxed);
            self.finished.fetch_sub(1, Relaxed);
            sh.finished_count -= 1;
        }
    }

    /// Drops the oldest finished flows of a shard beyond its bound, and forgets queue entries
    /// of flows already gone.
    fn drop_finished(&self, sh: &mut Shard) {
        while let Some(&front) = sh.finished.front() {
            if sh.finished_entry_live(front) {
                if sh.finished_count <= self.finished_per_shard {
                    break;
                }
                self.reap(sh, front.0);
            }
            sh.finished.pop_front();
        }
        // Entries of flows removed meanwhile (expired, replaced) may sit behind live ones.
        if sh.finished.len() > 2 * sh.finished_count + 64 {
            let queue = std::mem::take(&mut sh.finished);
            sh.finished = queue
                .into_iter()
                .filter(|&e| sh.finished_entry_live(e))
                .collect();
        }
    }

    /// Takes back a place in `cip`'s share for a flow that opened again, whatever the share's
    /// bound: the flow exists already.
    fn force_share(&self, cip: u32, kind: Kind) {
        if kind.egress() {
            let mut quotas = self.quotas();
            let q = quotas.entry(cip).or_default();
            q.live += 1;
            q.half_open += usize::from(kind.connecting());
        }
    }

    /// The echo flow with translated identifier `ident`.
    pub fn echo_flow(&self, ident: u16) -> Option<FlowId> {
        self.side().idents.get(&ident).copied()
    }

    /// The published TCP flow whose host side is the ephemeral port `eph`.
    pub fn published_flow(&self, eph: u16) -> Option<FlowId> {
        self.side().ephs.get(&eph).copied()
    }

    pub fn count_drop(&self, d: NatDrop) {
        let c = &self.counters;
        let counter = match d {
            NatDrop::Malformed => &c.malformed,
            NatDrop::Fragment => &c.fragments,
            // Counted where the flow is refused.
            NatDrop::TableFull | NatDrop::NoEchoIdent => return,
            NatDrop::NoFlow => &c.no_flow,
            NatDrop::NoRelayPort => &c.no_relay_port,
            NatDrop::Unsupported => &c.unsupported,
            NatDrop::BadAddress => &c.bad_address,
            NatDrop::BadChecksum => &c.bad_checksum,
            NatDrop::BadLength => &c.bad_length,
            NatDrop::TtlExceeded => &c.ttl_exceeded,
            NatDrop::Tagged => &c.tagged,
            // Counted where the flow is refused.
            NatDrop::ContainerLimit | NatDrop::HalfOpenLimit => return,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Reclaims every flow expired at `now`, and reports those reclaimed since the last call.
    pub fn expire(&self, now: u64) -> Vec<Expired> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            let mut sh = self.lock(i);
            out.append(&mut sh.reaped);
            for slot in 0..sh.slots.len() as u32 {
                if sh.flow(slot).is_some_and(|f| f.expires_at <= now) {
                    if let Some(e) = self.remove(&mut sh, slot) {
                        self.counters.expired.fetch_add(1, Relaxed);
                        out.push(e);
                    }
                }
            }
        }
        out
    }

    /// Removes every flow of container `cip` (which is going away) and forgets its counters.
    pub fn forget_container(&self, cip: u32) -> Vec<Expired> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            let mut sh = self.lock(i);
            for slot in 0..sh.slots.len() as u32 {
                if sh.flow(slot).is_some_and(|f| f.cip == cip) {
                    out.extend(self.remove_requested(&mut sh, slot));
                }
            }
            sh.retired.remove(&cip);
        }
        out
    }

    pub fn entries(&self, now: u64) -> Vec<FlowView> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            let sh = self.lock(i);
            for (slot, s) in sh.slots.iter().enumerate() {
                let Some(f) = &s.0 else { continue };
                if f.expires_at <= now {
                    continue;
                }
                let outside = match f.kind {
                    Kind::Echo { nat_ident } => SocketAddrV4::new(Ipv4Addr::from(f.rip), nat_ident),
                    _ => f.remote(),
                };
                out.push(FlowView {
                    flow: sh.id_of(slot as u32),
                    proto: f.kind.proto(),
                    inside: f.inside(),
                    outside,
                    published: f.kind.published(),
                    gateway_port: f.kind.gateway_port(),
                    state: f.state_str(),
                    timeout_ms: f.expires_at - now,
                    packets_out: f.packets_out,
                    packets_in: f.packets_in,
                    bytes_out: f.bytes_out,
                    bytes_in: f.bytes_in,
                });
            }
        }
        out
    }

    pub fn stats(&self) -> NatStats {
        let c = &self.counters;
        let mut totals = ContainerStats::default();
        for i in 0..SHARDS {
            let sh = self.lock(i);
            for s in sh.retired.values() {
                totals.packets_out += s.packets_out;
                totals.packets_in += s.packets_in;
                totals.bytes_out += s.bytes_out;
                totals.bytes_in += s.bytes_in;
            }
            for f in sh.slots.iter().filter_map(|s| s.0.as_ref()) {
                f.add_to(&mut totals);
            }
        }
        NatStats {
            flows: self.live.load(Relaxed) + self.finished.load(Relaxed),
            created: c.created.load(Relaxed),
            expired: c.expired.load(Relaxed),
            removed: c.removed.load(Relaxed),
            packets_out: totals.packets_out,
            packets_in: totals.packets_in,
            bytes_out: totals.bytes_out,
            bytes_in: totals.bytes_in,
            table_full: c.table_full.load(Relaxed),
            malformed: c.malformed.load(Relaxed),
            fragments: c.fragments.load(Relaxed),
            no_flow: c.no_flow.load(Relaxed),
            no_relay_port: c.no_relay_port.load(Relaxed),
            no_echo_ident: c.no_echo_ident.load(Relaxed),
            unsupported: c.unsupported.load(Relaxed),
            bad_address: c.bad_address.load(Relaxed),
            bad_checksum: c.bad_checksum.load(Relaxed),
            bad_length: c.bad_length.load(Relaxed),
            ttl_exceeded: c.ttl_exceeded.load(Relaxed),
            tagged: c.tagged.load(Relaxed),
            container_limit: c.container_limit.load(Relaxed),
            half_open_limit: c.half_open_limit.load(Relaxed),
        }
    }

    /// The refusal counters alone: cheap (no lock), for an edge that watches them.
    pub fn refusals(&self) -> Refusals {
        let c = &self.counters;
        Refusals {
            table_full: c.table_full.load(Relaxed),
            container_limit: c.container_limit.load(Relaxed),
            half_open_limit: c.half_open_limit.load(Relaxed),
        }
    }

    /// Live flows by protocol and state, in a stable order (protocol, then state name).
    pub fn count_by_state(&self, now: u64) -> Vec<StateCount> {
        let mut counts: Vec<StateCount> = Vec::new();
        for i in 0..SHARDS {
            let sh = self.lock(i);
            for f in sh.slots.iter().filter_map(|s| s.0.as_ref()) {
                if f.expires_at <= now {
                    continue;
                }
                let (proto, state) = (f.kind.proto(), f.state_str());
                match counts
                    .iter_mut()
                    .find(|c| c.proto == proto && c.state == state)
                {
                    Some(c) => c.flows += 1,
                    None => counts.push(StateCount {
                        proto,
                        state,
                        flows: 1,
                    }),
                }
            }
        }
        counts.sort_by_key(|c| (c.proto.code(), c.state));
        counts
    }

    /// The state of flow `id` (as in [`FlowView::state`]), if it is in the table.
    pub fn state_of(&self, id: FlowId) -> Option<&'static str> {
        let (sh, slot) = self.lock_id(id, None)?;
        sh.flow(slot).map(Flow::state_str)
    }

    /// Every container's counters, in one pass over the table (as [`Table::container_stats`]
    /// of each address).
    pub fn all_container_stats(&self) -> HashMap<u32, ContainerStats> {
        let mut out: HashMap<u32, ContainerStats> = HashMap::new();
        for i in 0..SHARDS {
            let sh = self.lock(i);
            for (&cip, r) in &sh.retired {
                let total = out.entry(cip).or_default();
                total.flows_created += r.flows_created;
                total.refused += r.refused;
                total.packets_out += r.packets_out;
                total.packets_in += r.packets_in;
                total.bytes_out += r.bytes_out;
                total.bytes_in += r.bytes_in;
            }
            for f in sh.slots.iter().filter_map(|s| s.0.as_ref()) {
                let total = out.entry(f.cip).or_default();
                total.flows += 1;
                f.add_to(total);
            }
        }
        out
    }

    pub fn container_stats(&self, cip: u32) -> ContainerStats {
        let mut total = ContainerStats::default();
        for i in 0..SHARDS {
            let sh = self.lock(i);
            if let Some(r) = sh.retired.get(&cip) {
                total.flows_created += r.flows_created;
                total.refused += r.refused;
                total.packets_out += r.packets_out;
                total.packets_in += r.packets_in;
                total.bytes_out += r.bytes_out;
                total.bytes_in += r.bytes_in;
            }
            for f in sh.slots.iter().filter_map(|s| s.0.as_ref()) {
                if f.cip == cip {
                    total.flows += 1;
                    f.add_to(&mut total);
                }
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_fits_a_cache_line() {
        assert_eq!(std::mem::size_of::<Slot>(), 64);
    }

    #[test]
    fn flow_ids_round_trip() {
        let id = make_id(0xab_cdef, 63, 0xdead_beef);
        assert_eq!(split_id(id), (0xab_cdef, 63, 0xdead_beef));
        assert_eq!(split_id(make_id(GEN_MASK + 5, 1, 2)).0, 4);
    }

    #[test]
    fn keys_of_both_directions_never_collide() {
        let a = inside_key(Proto::Tcp, 1, 2, 0, 3);
        let b = outside_key(1, 2, 3);
        assert_ne!(a, b);
        assert_ne!(
            inside_key(Proto::Tcp, 1, 2, 3, 4),
            inside_key(Proto::Udp, 1, 2, 3, 4)
        );
    }

    #[test]
    fn slots_are_reused_with_a_new_generation() {
        let t = Table::new(10, Timeouts::default());
        let mut sh = t.lock(3);
        let f = Flow::new(Kind::UdpEgress, 1, 2, 3, 4);
        let id1 = t.create(&mut sh, f.clone(), Extra::default(), 0).unwrap();
        let (slot, id) = sh.get(f.inside_key()).unwrap();
        assert_eq!(id, id1);
        t.remove(&mut sh, slot).unwrap();
        assert_eq!(sh.get(f.inside_key()), None);
        let id2 = t.create(&mut sh, f, Extra::default(), 0).unwrap();
        assert_ne!(id1, id2);
        assert_eq!(id1 & 0xffff_ffff, id2 & 0xffff_ffff);
        drop(sh);
        assert!(t.lock_id(id1, None).is_none());
        assert!(t.lock_id(id2, None).is_some());
        assert!(t.lock_id(u64::MAX, None).is_none());
    }
}
