//! Datapath counters: relaxed atomics bumped on the hot path, read as one snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

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

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub frames: Counter,
    pub malformed: Counter,
    pub outgoing: Counter,
    pub hairpin: Counter,
    pub flooded: Counter,
    pub arp_replies: Counter,
    pub fdb_full: Counter,
    pub learned: Counter,
    pub moved: Counter,
}

impl Counters {
    pub fn snapshot(&self) -> SwitchStats {
        SwitchStats {
            frames: self.frames.get(),
            malformed: self.malformed.get(),
            outgoing: self.outgoing.get(),
            hairpin: self.hairpin.get(),
            flooded: self.flooded.get(),
            arp_replies: self.arp_replies.get(),
            fdb_full: self.fdb_full.get(),
            learned: self.learned.get(),
            moved: self.moved.get(),
        }
    }
}
