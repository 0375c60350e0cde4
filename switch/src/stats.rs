//! Datapath counters: relaxed atomics bumped on the hot path, one set per thread slot (every
//! frame bumps `frames`: a single shared counter would bounce between cores), summed into
//! one snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::slot::{thread_slot, CachePadded, SLOTS};

/// A snapshot of the switch's counters since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchStats {
    /// Every frame handed to `process`.
    pub frames: u64,
    /// Dropped as `Malformed`.
    pub malformed: u64,
    /// Dropped as `Outgoing` (the switch's own transmissions).
    pub outgoing: u64,
    /// Dropped as `Hairpin`.
    pub hairpin: u64,
    /// Flooded (broadcast, multicast, unknown unicast).
    pub flooded: u64,
    /// ARP requests answered by the switch.
    pub arp_replies: u64,
    /// Source MACs not learned because the table was full of live entries.
    pub fdb_full: u64,
    /// Source MACs learned.
    pub learned: u64,
    /// Learned MACs that moved to another port.
    pub moved: u64,
    /// Learned MACs forgotten because they aged.
    pub aged: u64,
    /// Entries evicted from a full table to learn a station's own MAC.
    pub evicted: u64,
    /// Source MACs not learned: over their port's limit, or another port's station.
    pub learn_refused: u64,
    /// Dropped as `Spoofed` (port security), whatever the kind.
    pub spoofed: u64,
    /// Dropped as `Isolated`.
    pub isolated: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One set of counters per thread slot.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    slots: [CachePadded<Slot>; SLOTS],
}

#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub frames: Counter,
    pub malformed: Counter,
    pub outgoing: Counter,
    pub hairpin: Counter,
    pub flooded: Counter,
    pub arp_replies: Counter,
    pub fdb_full: Counter,
    pub learned: Counter,
    pub moved: Counter,
    pub evicted: Counter,
    pub learn_refused: Counter,
    pub spoofed: Counter,
    pub isolated: Counter,
}

impl Counters {
    /// This thread's counters.
    #[inline]
    pub fn mine(&self) -> &Slot {
        &self.slots[thread_slot() % SLOTS].0
    }

    pub fn snapshot(&self) -> SwitchStats {
        let mut s = SwitchStats::default();
        for CachePadded(c) in &self.slots {
            s.frames += c.frames.get();
            s.malformed += c.malformed.get();
            s.outgoing += c.outgoing.get();
            s.hairpin += c.hairpin.get();
            s.flooded += c.flooded.get();
            s.arp_replies += c.arp_replies.get();
            s.fdb_full += c.fdb_full.get();
            s.learned += c.learned.get();
            s.moved += c.moved.get();
            s.evicted += c.evicted.get();
            s.learn_refused += c.learn_refused.get();
            s.spoofed += c.spoofed.get();
            s.isolated += c.isolated.get();
        }
        s
    }
}
