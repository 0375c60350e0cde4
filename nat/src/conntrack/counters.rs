//! The table's counters: flows created and reclaimed, packets and bytes, drops and refusals
//! by why.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::error::NatDrop;

use super::{ContainerStats, Shard, Table, SHARDS};

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

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) created: AtomicU64,
    pub(super) expired: AtomicU64,
    pub(super) removed: AtomicU64,
    pub(super) table_full: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) fragments: AtomicU64,
    pub(super) no_flow: AtomicU64,
    pub(super) no_relay_port: AtomicU64,
    pub(super) no_echo_ident: AtomicU64,
    pub(super) unsupported: AtomicU64,
    pub(super) bad_address: AtomicU64,
    pub(super) bad_checksum: AtomicU64,
    pub(super) bad_length: AtomicU64,
    pub(super) ttl_exceeded: AtomicU64,
    pub(super) tagged: AtomicU64,
    pub(super) container_limit: AtomicU64,
    pub(super) half_open_limit: AtomicU64,
}

impl Table {
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

    /// A new flow of container `cip` was refused (the table or its share was full).
    pub fn count_refused(&self, sh: &mut Shard, cip: u32) {
        sh.retired.entry(cip).or_default().refused += 1;
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
}
