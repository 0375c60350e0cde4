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
//!
//! Where things are: a flow, its kind and its keys (`flow`); a shard's slots and index
//! (`shard`); creating and removing flows (`create`); the per-container shares (`shares`);
//! timeouts and expiry (`expiry`), the finished TCP flows kept for theirs (`finished`); flows
//! found without a shard, by echo identifier or ephemeral port (`side`); the counters
//! (`counters`) and the views for `conntrack -L` and the stats (`views`); the table as plain
//! data and back (`restore`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::hash::{fingerprint, hash64, random_seed};

mod counters;
mod create;
mod expiry;
mod finished;
mod flow;
mod restore;
mod shard;
mod shares;
mod side;
mod views;

pub use counters::{NatStats, Refusals};
pub(crate) use create::CreateError;
pub use expiry::{Expired, Timeouts};
pub use flow::Proto;
pub(crate) use flow::{inside_key, outside_key, Extra, Flow, Kind, QUOTE_LEN};
pub(crate) use shard::Shard;
pub use shares::Shares;
pub use views::{ContainerStats, FlowView, StateCount};

use counters::Counters;
use finished::finished_per_shard;
use shard::{Cold, Slot};
use shares::Quota;
use side::Side;

/// Identifies a flow for the edge: stable for the flow's life, never reused soon after (a slot
/// index with a generation).
pub type FlowId = u64;

/// Default bound on the number of flows.
pub const DEFAULT_MAX_FLOWS: usize = 65536;

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;
const GEN_MASK: u32 = (1 << 24) - 1;

/// `[generation: 24][shard: 8][slot: 32]`
fn make_id(generation: u32, shard: usize, slot: u32) -> FlowId {
    (u64::from(generation & GEN_MASK) << 40) | ((shard as u64 & 0xff) << 32) | u64::from(slot)
}

fn split_id(id: FlowId) -> (u32, usize, u32) {
    ((id >> 40) as u32, ((id >> 32) & 0xff) as usize, id as u32)
}

#[repr(align(128))]
#[derive(Debug)]
struct Padded<T>(T);

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
