//! The NAT's whole state as plain data, for a new process that takes over from a running one
//! ([`crate::Nat::snapshot`], [`crate::Nat::restore`]).
//!
//! Everything the edge holds refers to flows by [`FlowId`] (its sockets, its held SYNs, its
//! waiting upstreams), so a restored table keeps every id valid: the same seeds (a flow's shard
//! and its keys' fingerprints depend on them), each flow in its slot with its generation, the
//! free slots in the same order. What follows from the flows is rebuilt rather than carried:
//! the key index, the echo identifiers and published ephemeral ports, each container's share.
//! Counters are kept. Times are the caller's clock, which must be the same in both processes
//! (the daemon's is milliseconds since boot).
//!
//! With the `serde` feature every type here (de)serializes.

use std::net::Ipv4Addr;

use crate::conntrack::{ContainerStats, FlowId, Proto};
use crate::tcp_state::TcpState;

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

/// The NAT's state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct NatSnapshot {
    /// The relay ports the flows were translated to: the restoring NAT must have the same.
    pub relay_ports: Vec<u16>,
    pub table: TableSnapshot,
}

/// The connection-tracking table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct TableSnapshot {
    /// Seed of the keys' fingerprints.
    pub key_seed: u64,
    /// Seed of the choice of a flow's shard.
    pub shard_seed: u64,
    /// Every shard, in order.
    pub shards: Vec<ShardSnapshot>,
    /// The next translated echo identifier to try.
    pub next_ident: u16,
    pub counters: CountersSnapshot,
}

/// One shard: its slots (a slot's index is the low half of its flows' ids).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct ShardSnapshot {
    pub slots: Vec<SlotSnapshot>,
    /// The free slots, in the order they are reused (the last first).
    pub free: Vec<u32>,
    /// Flows reclaimed since the edge last heard (see `Nat::expire`).
    pub reaped: Vec<(FlowId, Proto)>,
    /// Counters of flows gone, by container address.
    pub retired: Vec<(Ipv4Addr, ContainerStats)>,
    pub relay_cursor: u64,
}

/// A slot: its generation, and its flow if it holds one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct SlotSnapshot {
    pub generation: u32,
    pub flow: Option<FlowSnapshot>,
}

/// A flow.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct FlowSnapshot {
    pub kind: FlowKind,
    /// The container's address and port (ICMP: its echo identifier).
    pub inside: (Ipv4Addr, u16),
    /// The remote address and port.
    pub remote: (Ipv4Addr, u16),
    pub tcp: TcpSnapshot,
    pub replied: bool,
    /// When it expires if idle, on the caller's clock.
    pub expires_at: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// The container's MAC, for the frames written to it.
    pub mac: [u8; 6],
    /// The container's first packet (IPv4 header and 8 bytes), for ICMP errors about it.
    pub quote: Option<Vec<u8>>,
}

/// What a flow is, with its translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub enum FlowKind {
    TcpEgress { relay: u16, connecting: bool },
    TcpTranslated { relay: u16, connecting: bool },
    TcpPublished { eph: u16 },
    UdpEgress,
    UdpPublished { publish_id: u32 },
    Echo { nat_ident: u16 },
}

/// A TCP flow's tracked state, and which side sent each FIN (`true`: the side that opened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct TcpSnapshot {
    pub state: TcpState,
    pub first_fin_orig: bool,
    pub last_fin_orig: bool,
}

/// The table's counters (see [`crate::NatStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct CountersSnapshot {
    pub created: u64,
    pub expired: u64,
    pub removed: u64,
    pub table_full: u64,
    pub malformed: u64,
    pub fragments: u64,
    pub no_flow: u64,
    pub no_relay_port: u64,
    pub no_echo_ident: u64,
    pub unsupported: u64,
    pub bad_address: u64,
    pub bad_checksum: u64,
    pub bad_length: u64,
    pub ttl_exceeded: u64,
    pub tagged: u64,
    pub container_limit: u64,
    pub half_open_limit: u64,
}

/// Why a snapshot cannot be restored. The snapshot is refused whole: a table is never
/// half-restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("the snapshot has {got} shards, this NAT {want}")]
    Shards { got: usize, want: usize },
    #[error("the snapshot's relay ports {got:?} are not this NAT's {want:?}")]
    RelayPorts { got: Vec<u16>, want: Vec<u16> },
    #[error("shard {shard}: free slot {slot} is out of range, listed twice or holds a flow")]
    FreeSlot { shard: usize, slot: u32 },
    #[error("shard {shard}: slot {slot} is empty but not free")]
    LostSlot { shard: usize, slot: u32 },
    #[error("shard {shard}: too many slots")]
    TooManySlots { shard: usize },
    #[error("flow {0:#x} is in the wrong shard for its container address and port")]
    WrongShard(FlowId),
    #[error("flow {0:#x} has a key another flow has")]
    DuplicateKey(FlowId),
    #[error("flow {0:#x} has a translated echo identifier or ephemeral port another flow has")]
    DuplicateSide(FlowId),
    #[error("flow {0:#x} is relayed through port {1}, which this NAT does not have")]
    UnknownRelayPort(FlowId, u16),
    #[error("flow {0:#x} has a quote of {1} bytes")]
    BadQuote(FlowId, usize),
}
