//! The forwarding database: MAC -> port, learned from source addresses, bounded and aged.
//!
//! It is read-mostly, because nearly every frame comes from a MAC already learned on the same
//! port: that case takes only the read side of a [`BrLock`] (no cache line shared between
//! cores), and refreshes the entry's timestamp with a relaxed store at most once per
//! [`REFRESH_MS`], so cores forwarding the same flows don't bounce the entry's cache line.
//! Only a new or moved MAC takes the write lock. A full table first drops
//! aged entries, then refuses to learn (unknown unicast is flooded, so traffic still flows).
//!
//! Under a flood of source MACs: each port learns at most its limit of MACs besides its
//! station's own (see `PortPolicy::max_macs`); a station's own MAC is pinned to its port (no
//! other port's frames move it there or claim it first, and a full table never evicts it); and
//! a full table still learns a station's own MAC, by evicting the oldest entry of the port that
//! holds the most.

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
    /// Not learned: the port is at its limit of learned MACs, or the MAC is another port's
    /// station.
    Refused,
    /// A station's own MAC, learned in a full table by evicting another entry.
    NewEvicting,
}

#[derive(Debug)]
struct Entry {
    port: PortId,
    seen: AtomicU64,
    /// The MAC is `port`'s own station: not counted against the port's limit, never evicted,
    /// never moved by another port's frames.
    pinned: bool,
}

#[derive(Debug)]
struct Table {
    map: HashMap<u64, Entry, MacHashBuilder>,
    /// Lower bound of every entry's `seen` (`u64::MAX` when empty): while
    /// `now - oldest <= age`, nothing can have aged, so no sweep is needed.
    oldest: Millis,
    /// Entries per port that are not pinned.
    learned: HashMap<PortId, usize>,
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
        let Table {
            map,
            learned,
            oldest,
        } = self;
        let before = map.len();
        let mut low = u64::MAX;
        map.retain(|_, e| {
            let seen = *e.seen.get_mut();
            let keep = is_live(seen, now, age_ms);
            if keep {
                low = low.min(seen);
            } else if !e.pinned {
                uncount(learned, e.port);
            }
            keep
        });
        *oldest = low;
        before - map.len()
    }

    fn learned_on(&self, port: PortId) -> usize {
        self.learned.get(&port).copied().unwrap_or(0)
    }

    /// Removes the oldest entry of the port with the most learned (not pinned) entries.
    /// Returns whether there was one.
    fn evict(&mut self) -> bool {
        let Some((&port, _)) = (self.learned.iter())
            .filter(|(_, &n)| n > 0)
            .max_by_key(|(_, &n)| n)
        else {
            return false;
        };
        let victim = (self.map.iter())
            .filter(|(_, e)| e.port == port && !e.pinned)
            .min_by_key(|(_, e)| e.seen.load(Ordering::Relaxed))
            .map(|(&mac, _)| mac);
        match victim {
            Some(mac) => {
                self.map.remove(&mac);
                uncount(&mut self.learned, port);
                true
            }
            None => false,
        }
    }
}

fn uncount(learned: &mut HashMap<PortId, usize>, port: PortId) {
    if let Some(n) = learned.get_mut(&port) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            learned.remove(&port);
        }
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
                learned: HashMap::new(),
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
    /// Always inlined into the hot path (its arguments stay in registers).
    #[inline(always)]
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
            self.learn_locked(&mut table, src, ingress, now, ports)
        } else {
            Learned::PortGone
        };
        (learned, dst.and_then(|d| table.lookup(d, now, self.age_ms)))
    }

    fn learn_locked(
        &self,
        table: &mut Table,
        mac: MacAddr,
        port: PortId,
        now: Millis,
        ports: &Ports,
    ) -> Learned {
        let pinned = ports.is_station(port, mac);
        let room = |table: &Table| pinned || table.learned_on(port) < ports.mac_limit(port);
        if let Some(e) = table.map.get(&mac.as_u64()) {
            if e.port == port {
                let e = table.map.get_mut(&mac.as_u64()).expect("just found");
                let seen = e.seen.get_mut();
                *seen = (*seen).max(now);
                return Learned::Known;
            }
            // A station's MAC stays on its port; another port may take a learned MAC only
            // within its limit.
            if (e.pinned && ports.is_station(e.port, mac)) || !room(table) {
                return Learned::Refused;
            }
            let (from, was_pinned) = (e.port, e.pinned);
            if !was_pinned {
                uncount(&mut table.learned, from);
            }
            if !pinned {
                *table.learned.entry(port).or_default() += 1;
            }
            let e = table.map.get_mut(&mac.as_u64()).expect("just found");
            let seen = e.seen.get_mut();
            let was_live = is_live(*seen, now, self.age_ms);
            *seen = (*seen).max(now);
            e.port = port;
            e.pinned = pinned;
            return if was_live {
                Learned::Moved
            } else {
                Learned::New
            };
        }
        if !room(table) || (!pinned && ports.station_port(mac).is_some_and(|p| p != port)) {
            return Learned::Refused;
        }
        if table.map.len() >= self.capacity && table.sweep_due(now, self.age_ms) {
            let aged = table.sweep(now, self.age_ms);
            self.aged.fetch_add(aged as u64, Ordering::Relaxed);
        }
        let mut evicted = false;
        if table.map.len() >= self.capacity {
            // Only a station's own MAC makes room: whoever floods the table loses first.
            if !(pinned && self.capacity > 0 && table.evict()) {
                return Learned::Full;
            }
            evicted = true;
        }
        table.map.insert(
            mac.as_u64(),
            Entry {
                port,
                seen: AtomicU64::new(now),
                pinned,
            },
        );
        if !pinned {
            *table.learned.entry(port).or_default() += 1;
        }
        table.oldest = table.oldest.min(now);
        if evicted {
            Learned::NewEvicting
        } else {
            Learned::New
        }
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
        let Table { map, learned, .. } = &mut *table;
        let before = map.len();
        map.retain(|_, e| {
            let keep = port.is_some_and(|p| e.port != p);
            if !keep && !e.pinned {
                // Its place in the port's limit goes with it.
                uncount(learned, e.port);
            }
            keep
        });
        before - map.len()
    }

    /// Forgets every MAC learned on `port`.
    pub fn purge_port(&self, port: PortId) {
        let mut table = self.write();
        table.map.retain(|_, e| e.port != port);
        table.learned.remove(&port);
    }

    /// MACs learned on `port` that are not its station's (aged ones not yet expired included).
    pub fn learned_on(&self, port: PortId) -> usize {
        self.read().learned_on(port)
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
    use crate::policy::PortPolicy;
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
            ports.add(PortId(id), info, PortPolicy::trusted(), 8);
        }
        ports
    }

    /// Learns `mac` on `port` at time `now`.
    fn learn(fdb: &Fdb, ports: &Ports, mac: MacAddr, port: u16, now: Millis) -> Learned {
        fdb.learn_and_lookup(mac, PortId(port), None, now, ports).0
    }

    #[test]
    fn each_port_learns_up_to_its_limit_besides_its_station() {
        let (fdb, ports) = (Fdb::new(64, 5_000), Ports::new());
        let station = |p: u32| PortInfo {
            mac: mac(p),
            ip: None,
        };
        let limited = PortPolicy {
            max_macs: Some(2),
            ..PortPolicy::trusted()
        };
        ports.add(PortId(1), station(1), limited, 8);
        ports.add(PortId(2), station(2), PortPolicy::default(), 8);
        assert_eq!(learn(&fdb, &ports, mac(1), 1, 0), Learned::New);
        assert_eq!(learn(&fdb, &ports, mac(100), 1, 0), Learned::New);
        assert_eq!(learn(&fdb, &ports, mac(101), 1, 0), Learned::New);
        assert_eq!(learn(&fdb, &ports, mac(102), 1, 0), Learned::Refused);
        assert_eq!(fdb.learned_on(PortId(1)), 2, "the station is not counted");
        // A checked port without --allow-mac learns its station only (it can send no other).
        assert_eq!(learn(&fdb, &ports, mac(2), 2, 0), Learned::New);
        assert_eq!(learn(&fdb, &ports, mac(200), 2, 0), Learned::Refused);
        // Moving a learned MAC counts against the new port's limit.
        assert_eq!(learn(&fdb, &ports, mac(100), 2, 1), Learned::Refused);
        // Aged entries leave room again, and so does a purge.
        assert_eq!(fdb.expire(5_001), 4);
        assert_eq!(fdb.learned_on(PortId(1)), 0);
        assert_eq!(learn(&fdb, &ports, mac(102), 1, 5_001), Learned::New);
        fdb.purge_port(PortId(1));
        assert_eq!((fdb.learned_on(PortId(1)), fdb.len()), (0, 0));
    }

    #[test]
    fn a_flush_gives_the_ports_their_places_back() {
        // Found by the switch_frames fuzz target: a flush forgot the MACs but not how many each
        // port had learned, so that a port at its limit never learned another.
        let (fdb, ports) = (Fdb::new(64, 5_000), ports(3));
        for p in 1..3 {
            ports.add(
                PortId(p),
                PortInfo {
                    mac: mac(u32::from(p)),
                    ip: None,
                },
                PortPolicy {
                    max_macs: Some(1),
                    ..PortPolicy::trusted()
                },
                8,
            );
            assert_eq!(learn(&fdb, &ports, mac(u32::from(p)), p, 0), Learned::New);
            assert_eq!(
                learn(&fdb, &ports, mac(100 + u32::from(p)), p, 0),
                Learned::New
            );
            assert_eq!(learn(&fdb, &ports, mac(200), p, 0), Learned::Refused);
        }
        // One port's, then all: the stations' own MACs were never counted.
        assert_eq!(fdb.flush(Some(PortId(1))), 2);
        assert_eq!(
            (fdb.learned_on(PortId(1)), fdb.learned_on(PortId(2))),
            (0, 1)
        );
        assert_eq!(learn(&fdb, &ports, mac(201), 1, 1), Learned::New);
        assert_eq!(fdb.flush(None), 3);
        assert_eq!(
            (fdb.learned_on(PortId(1)), fdb.learned_on(PortId(2))),
            (0, 0)
        );
        assert_eq!(learn(&fdb, &ports, mac(202), 2, 2), Learned::New);
    }

    #[test]
    fn a_station_mac_stays_on_its_port() {
        let (fdb, ports) = (Fdb::new(8, 5_000), ports(3));
        // Port 2 (trusted) claims port 1's station before it spoke: refused.
        assert_eq!(learn(&fdb, &ports, mac(1), 2, 0), Learned::Refused);
        assert_eq!(learn(&fdb, &ports, mac(1), 1, 0), Learned::New);
        // ...and cannot move it once learned.
        assert_eq!(learn(&fdb, &ports, mac(1), 2, 1), Learned::Refused);
        assert_eq!(fdb.entries(1)[0].port, PortId(1));
        // A learned MAC that is nobody's station moves as before.
        assert_eq!(learn(&fdb, &ports, mac(50), 1, 2), Learned::New);
        assert_eq!(learn(&fdb, &ports, mac(50), 2, 3), Learned::Moved);
        assert_eq!(
            (fdb.learned_on(PortId(1)), fdb.learned_on(PortId(2))),
            (0, 1)
        );
        // A station learned on another port before it was plugged moves to its own.
        assert_eq!(learn(&fdb, &ports, mac(9), 2, 3), Learned::New);
        ports.add(
            PortId(9),
            PortInfo {
                mac: mac(9),
                ip: None,
            },
            PortPolicy::default(),
            8,
        );
        assert_eq!(learn(&fdb, &ports, mac(9), 9, 4), Learned::Moved);
        assert_eq!(learn(&fdb, &ports, mac(9), 2, 5), Learned::Refused);
        assert_eq!(fdb.learned_on(PortId(2)), 1);
    }

    #[test]
    fn a_full_table_still_learns_a_station_by_evicting_the_flooder() {
        let (fdb, ports) = (Fdb::new(6, 60_000), Ports::new());
        for (id, policy) in [
            (1, PortPolicy::trusted()),
            (2, PortPolicy::trusted()),
            (3, PortPolicy::default()),
        ] {
            let info = PortInfo {
                mac: mac(id),
                ip: None,
            };
            ports.add(PortId(id as u16), info, policy, 100);
        }
        assert_eq!(learn(&fdb, &ports, mac(1), 1, 0), Learned::New);
        assert_eq!(learn(&fdb, &ports, mac(20), 2, 0), Learned::New);
        // Port 1 floods: the table fills, then refuses.
        for (i, now) in (100..104).zip(1..) {
            assert_eq!(learn(&fdb, &ports, mac(i), 1, now), Learned::New);
        }
        assert_eq!(learn(&fdb, &ports, mac(104), 1, 9), Learned::Full);
        // A trusted port's other MAC does not get in either...
        assert_eq!(learn(&fdb, &ports, mac(21), 2, 9), Learned::Full);
        // ...but a station does: the flooder's oldest learned entry goes, not its station.
        assert_eq!(learn(&fdb, &ports, mac(3), 3, 10), Learned::NewEvicting);
        let macs: Vec<MacAddr> = fdb.entries(10).iter().map(|e| e.mac).collect();
        assert_eq!(
            macs,
            [mac(1), mac(3), mac(20), mac(101), mac(102), mac(103)]
        );
        assert_eq!(
            (fdb.learned_on(PortId(1)), fdb.learned_on(PortId(3))),
            (3, 0)
        );
        // Once only stations are left, a table that is full stays so.
        let (fdb, ports) = (Fdb::new(2, 60_000), self::ports(4));
        for p in 1..=3 {
            learn(&fdb, &ports, mac(p), p as u16, 0);
        }
        assert_eq!(fdb.len(), 2);
        assert_eq!(learn(&fdb, &ports, mac(3), 3, 0), Learned::Full);
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
