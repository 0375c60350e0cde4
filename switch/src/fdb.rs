//! The forwarding database: MAC -> port, learned from source addresses, bounded and aged.
//!
//! It is read-mostly, because nearly every frame comes from a MAC already learned on the same
//! port: that case takes only the read side of a [`BrLock`] (no cache line shared between
//! cores), and refreshes the entry's timestamp with a relaxed store at most once per
//! [`REFRESH_MS`], so cores forwarding the same flows don't bounce the entry's cache line.
//! Only a new or moved MAC takes the write lock. A full table first drops
//! aged entries, then refuses to learn (unknown unicast is flooded, so traffic still flows).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::brlock::{BrLock, ReadGuard, WriteGuard};
use crate::hash::MacHashBuilder;
use crate::mac::MacAddr;
use crate::port::{PortId, Ports};
use crate::Millis;

/// Granularity of an entry's last-seen time.
pub(crate) const REFRESH_MS: u64 = 1000;

/// A live forwarding-table entry, as reported to the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: MacAddr,
    pub port: PortId,
    /// Time since a frame from `mac` was last seen (to within [`REFRESH_MS`]).
    pub age_ms: u64,
}

/// What learning a source address did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Learned {
    /// Already known on this port.
    Known,
    /// New entry (or an aged one reused).
    New,
    /// Was live on another port, now on this one.
    Moved,
    /// Table full of live entries: not learned.
    Full,
    /// The port was removed meanwhile: not learned.
    PortGone,
}

#[derive(Debug)]
struct Entry {
    port: PortId,
    seen: AtomicU64,
}

#[derive(Debug)]
struct Table {
    map: HashMap<u64, Entry, MacHashBuilder>,
    /// Lower bound of every entry's `seen` (`u64::MAX` when empty): while
    /// `now - oldest <= age`, nothing can have aged, so no sweep is needed.
    oldest: Millis,
}

#[derive(Debug)]
pub(crate) struct Fdb {
    table: BrLock<Table>,
    capacity: usize,
    age_ms: u64,
    /// Entries removed because they aged (by `expire`, or to make room), so far.
    aged: AtomicU64,
}

#[inline]
fn is_live(seen: Millis, now: Millis, age_ms: u64) -> bool {
    now.saturating_sub(seen) <= age_ms
}

impl Table {
    #[inline]
    fn lookup(&self, mac: MacAddr, now: Millis, age_ms: u64) -> Option<PortId> {
        let e = self.map.get(&mac.as_u64())?;
        is_live(e.seen.load(Ordering::Relaxed), now, age_ms).then_some(e.port)
    }

    fn sweep_due(&self, now: Millis, age_ms: u64) -> bool {
        !is_live(self.oldest, now, age_ms)
    }

    /// Removes aged entries, returns how many.
    fn sweep(&mut self, now: Millis, age_ms: u64) -> usize {
        let before = self.map.len();
        let mut oldest = u64::MAX;
        self.map.retain(|_, e| {
            let seen = *e.seen.get_mut();
            let keep = is_live(seen, now, age_ms);
            if keep {
                oldest = oldest.min(seen);
            }
            keep
        });
        self.oldest = oldest;
        before - self.map.len()
    }
}

impl Fdb {
    pub fn new(capacity: usize, age_ms: u64) -> Fdb {
        // Allocate up front so learning never rehashes, within reason for huge capacities.
        let map =
            HashMap::with_capacity_and_hasher(capacity.min(1 << 16), MacHashBuilder::random());
        Fdb {
            table: BrLock::new(Table {
                map,
                oldest: u64::MAX,
            }),
            capacity,
            age_ms,
            aged: AtomicU64::new(0),
        }
    }

    fn read(&self) -> ReadGuard<'_, Table> {
        self.table.read()
    }

    fn write(&self) -> WriteGuard<'_, Table> {
        self.table.write()
    }

    /// Learns `src` on `ingress`, then looks up `dst` (if given): the port it lives on, if live.
    /// Learning a new MAC re-checks under the write lock that `ingress` is still registered,
    /// which pairs with [`Fdb::purge_port`] so a removed port never gets entries back.
    #[inline]
    pub fn learn_and_lookup(
        &self,
        src: MacAddr,
        ingress: PortId,
        dst: Option<MacAddr>,
        now: Millis,
        ports: &Ports,
    ) -> (Learned, Option<PortId>) {
        {
            let table = self.read();
            if let Some(e) = table.map.get(&src.as_u64()) {
                if e.port == ingress {
                    let seen = e.seen.load(Ordering::Relaxed);
                    if now.saturating_sub(seen) >= REFRESH_MS {
                        e.seen.store(now, Ordering::Relaxed);
                    }
                    let out = dst.and_then(|d| table.lookup(d, now, self.age_ms));
                    return (Learned::Known, out);
                }
            }
        }
        let mut table = self.write();
        let learned = if ports.is_live(ingress) {
            self.learn_locked(&mut table, src, ingress, now)
        } else {
            Learned::PortGone
        };
        (learned, dst.and_then(|d| table.lookup(d, now, self.age_ms)))
    }

    fn learn_locked(&self, table: &mut Table, mac: MacAddr, port: PortId, now: Millis) -> Learned {
        if let Some(e) = table.map.get_mut(&mac.as_u64()) {
            let seen = e.seen.get_mut();
            let was_live = is_live(*seen, now, self.age_ms);
            *seen = (*seen).max(now);
            return if e.port == port {
                Learned::Known
            } else {
                e.port = port;
                if was_live {
                    Learned::Moved
                } else {
                    Learned::New
                }
            };
        }
        if table.map.len() >= self.capacity && table.sweep_due(now, self.age_ms) {
            let aged = table.sweep(now, self.age_ms);
            self.aged.fetch_add(aged as u64, Ordering::Relaxed);
        }
        if table.map.len() >= self.capacity {
            return Learned::Full;
        }
        table.map.insert(
            mac.as_u64(),
            Entry {
                port,
                seen: AtomicU64::new(now),
            },
        );
        table.oldest = table.oldest.min(now);
        Learned::New
    }

    /// `mac` was seen on `port` by someone else (the kernel fast path): refreshed if it is
    /// learned there. Returns whether `mac` is in the table at all (on any port).
    pub fn refresh(&self, mac: MacAddr, port: PortId, now: Millis) -> bool {
        let table = self.read();
        let Some(e) = table.map.get(&mac.as_u64()) else {
            return false;
        };
        if e.port == port {
            e.seen.fetch_max(now, Ordering::Relaxed);
        }
        true
    }

    /// Removes aged entries, returns how many. Takes the write lock only if some may have aged.
    pub fn expire(&self, now: Millis) -> usize {
        if !self.read().sweep_due(now, self.age_ms) {
            return 0;
        }
        let aged = self.write().sweep(now, self.age_ms);
        self.aged.fetch_add(aged as u64, Ordering::Relaxed);
        aged
    }

    /// Entries removed because they aged, so far.
    pub fn aged(&self) -> u64 {
        self.aged.load(Ordering::Relaxed)
    }

    /// Forgets every MAC, or those learned on `port`; returns how many.
    pub fn flush(&self, port: Option<PortId>) -> usize {
        let mut table = self.write();
        let before = table.map.len();
        table.map.retain(|_, e| port.is_some_and(|p| e.port != p));
        before - table.map.len()
    }

    /// Forgets every MAC learned on `port`.
    pub fn purge_port(&self, port: PortId) {
        self.write().map.retain(|_, e| e.port != port);
    }

    /// Live entries, sorted by MAC.
    pub fn entries(&self, now: Millis) -> Vec<FdbEntry> {
        let table = self.read();
        let mut out: Vec<FdbEntry> = table
            .map
            .iter()
            .filter_map(|(&mac, e)| {
                let seen = e.seen.load(Ordering::Relaxed);
                is_live(seen, now, self.age_ms).then(|| FdbEntry {
                    mac: MacAddr::from_u64(mac),
                    port: e.port,
                    age_ms: now.saturating_sub(seen),
                })
            })
            .collect();
        out.sort_unstable_by_key(|e| e.mac);
        out
    }

    /// Entries in the table, including aged ones not yet expired.
    pub fn len(&self) -> usize {
        self.read().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::PortInfo;

    fn mac(n: u32) -> MacAddr {
        let [a, b, c, d] = n.to_be_bytes();
        MacAddr([2, 0, a, b, c, d])
    }

    fn ports(n: u16) -> Ports {
        let ports = Ports::new();
        for id in 0..n {
            let info = PortInfo {
                mac: mac(u32::from(id)),
                ip: None,
            };
            ports.add(PortId(id), info);
        }
        ports
    }

    #[test]
    fn refresh_is_rate_limited() {
        let (fdb, ports) = (Fdb::new(8, 10_000), ports(2));
        let p = PortId(1);
        assert_eq!(
            fdb.learn_and_lookup(mac(1), p, None, 0, &ports).0,
            Learned::New
        );
        fdb.learn_and_lookup(mac(1), p, None, REFRESH_MS - 1, &ports);
        assert_eq!(fdb.entries(REFRESH_MS - 1)[0].age_ms, REFRESH_MS - 1);
        fdb.learn_and_lookup(mac(1), p, None, REFRESH_MS, &ports);
        assert_eq!(fdb.entries(REFRESH_MS)[0].age_ms, 0);
    }

    #[test]
    fn refresh_keeps_an_entry_alive_only_on_its_own_port() {
        let (fdb, ports) = (Fdb::new(8, 5_000), ports(3));
        fdb.learn_and_lookup(mac(1), PortId(1), None, 0, &ports);
        fdb.refresh(mac(1), PortId(2), 4_000);
        assert_eq!(
            fdb.entries(4_000)[0].age_ms,
            4_000,
            "seen on another port: no refresh"
        );
        fdb.refresh(mac(1), PortId(1), 4_000);
        fdb.refresh(mac(1), PortId(1), 3_000);
        assert_eq!(
            fdb.entries(6_000)[0].age_ms,
            2_000,
            "refreshed, never backwards"
        );
        assert!(!fdb.refresh(mac(2), PortId(1), 6_000));
        assert_eq!(fdb.len(), 1, "refresh learns nothing");
    }

    #[test]
    fn expire_skips_when_nothing_can_have_aged() {
        let (fdb, ports) = (Fdb::new(8, 5_000), ports(2));
        fdb.learn_and_lookup(mac(1), PortId(1), None, 1_000, &ports);
        fdb.learn_and_lookup(mac(2), PortId(1), None, 3_000, &ports);
        assert!(!fdb.read().sweep_due(6_000, 5_000));
        assert_eq!(fdb.expire(6_000), 0);
        assert_eq!(fdb.expire(6_001), 1);
        assert_eq!(fdb.read().oldest, 3_000);
        assert_eq!(fdb.expire(8_001), 1);
        assert_eq!(fdb.read().oldest, u64::MAX);
    }

    #[test]
    fn no_learning_on_a_removed_port() {
        let (fdb, ports) = (Fdb::new(8, 5_000), ports(2));
        ports.remove(PortId(1));
        let (learned, _) = fdb.learn_and_lookup(mac(1), PortId(1), None, 0, &ports);
        assert_eq!(learned, Learned::PortGone);
        assert_eq!(fdb.len(), 0);
    }

    #[test]
    fn huge_capacity_does_not_preallocate_it() {
        let fdb = Fdb::new(usize::MAX, 1);
        assert_eq!(fdb.len(), 0);
    }
}
