//! The forwarding table as the switch's callers see it: what the kernel fast path saw,
//! expiry, listing, hand-over, flushing, counters.

use crate::fdb::{FdbEntry, Learned};
use crate::mac::MacAddr;
use crate::port::PortId;
use crate::stats::SwitchStats;
use crate::Millis;

use super::Switch;

impl Switch {
    /// Frames from `mac` came in on `port` and were forwarded without the switch (the edge's
    /// kernel fast path, which carries only frames the switch would forward the same way): the
    /// entry is refreshed as if the switch had seen them, or learned if `mac` is unknown. A
    /// `mac` learned on another port meanwhile stays there (the report may predate the move).
    pub fn seen(&self, mac: MacAddr, port: PortId, now: Millis) {
        if !self.fdb.refresh(mac, port, now) {
            let (learned, _) = self.fdb.learn_and_lookup(mac, port, None, now, &self.ports);
            match learned {
                Learned::New => self.counters.mine().learned.inc(),
                Learned::NewEvicting => {
                    self.counters.mine().learned.inc();
                    self.counters.mine().evicted.inc();
                }
                _ => {}
            }
        }
    }

    /// Removes aged entries, returns how many.
    pub fn expire(&self, now: Millis) -> usize {
        self.fdb.expire(now)
    }

    /// Live entries only, sorted by MAC.
    pub fn fdb_entries(&self, now: Millis) -> Vec<FdbEntry> {
        self.fdb.entries(now)
    }

    /// Learns the entries another switch reported (`fdb_entries` of a process handing over),
    /// each as last seen `age_ms` before `now`: they age as if this switch had seen their
    /// frames. The ports must be added first; entries of unknown ports are skipped.
    pub fn restore_fdb(&self, entries: &[FdbEntry], now: Millis) {
        for e in entries {
            let seen = now.saturating_sub(e.age_ms);
            self.fdb
                .learn_and_lookup(e.mac, e.port, None, seen, &self.ports);
        }
    }

    /// Entries in the forwarding table, including aged ones that `expire` has not removed yet.
    pub fn fdb_len(&self) -> usize {
        self.fdb.len()
    }

    pub fn stats(&self) -> SwitchStats {
        SwitchStats {
            aged: self.fdb.aged(),
            ..self.counters.snapshot()
        }
    }

    /// Forgets every learned MAC, or those learned on `port` (`vswitch fdb --flush`); returns
    /// how many. Traffic to them is flooded until they are learned again.
    pub fn flush_fdb(&self, port: Option<PortId>) -> usize {
        self.fdb.flush(port)
    }
}
