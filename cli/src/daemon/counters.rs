//! What the manager counts of its own work: plugs and unplugs, how long they took, flushes;
//! and the NAT's refusals, which it watches to log them.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vswitch_nat::Refusals;

use crate::control::PlugStats;
use crate::datapath::wait::Busy;
use crate::natd::dns::DnsCounters;
use crate::observe::histogram::{self, Histogram};

/// What the manager keeps for `stats` beyond the datapath's own counters.
#[derive(Debug, Default)]
pub struct Tally {
    /// What the DNS forwarder counts (none with `--no-dns`).
    pub dns: Option<Arc<DnsCounters>>,
    /// The NAT service thread's time spent working.
    pub nat_busy: Arc<Busy>,
    pub plugs: PlugCounters,
    /// The NAT's refusals as last logged.
    pub refusals: RefusalLog,
    /// The forwarding table's bound (`--fdb-size`), and the MACs flushed from it so far.
    pub fdb_capacity: usize,
    pub fdb_flushed: u64,
    /// When the daemon started, in seconds since the Unix epoch.
    pub start_time: f64,
}

/// Plugs and unplugs since start. Only the manager thread touches them.
#[derive(Debug)]
pub struct PlugCounters {
    pub plugged: u64,
    pub failed: u64,
    pub unplugged: u64,
    pub exited: u64,
    pub plug_time: Histogram,
    pub unplug_time: Histogram,
}

impl Default for PlugCounters {
    fn default() -> PlugCounters {
        PlugCounters {
            plugged: 0,
            failed: 0,
            unplugged: 0,
            exited: 0,
            plug_time: Histogram::new(histogram::CONTROL),
            unplug_time: Histogram::new(histogram::CONTROL),
        }
    }
}

impl PlugCounters {
    /// A plug that took `took`, and whether it succeeded.
    pub fn plug(&mut self, ok: bool, took: Duration) {
        if ok {
            self.plugged += 1;
            self.plug_time.observe(took);
        } else {
            self.failed += 1;
        }
    }

    /// A port removed on request, in `took`.
    pub fn unplug(&mut self, took: Duration) {
        self.unplugged += 1;
        self.unplug_time.observe(took);
    }

    pub fn view(&self) -> PlugStats {
        PlugStats {
            plugged: self.plugged,
            failed: self.failed,
            unplugged: self.unplugged,
            exited: self.exited,
            plug_seconds: self.plug_time.view(),
            unplug_seconds: self.unplug_time.view(),
        }
    }
}

/// The NAT's refusals as last logged: refusals are logged from the manager's tick, at most
/// once per [`RefusalLog::EVERY`], with how many there were since the last line.
#[derive(Debug, Default)]
pub struct RefusalLog {
    logged: Refusals,
    at: Option<std::time::Instant>,
}

impl RefusalLog {
    pub const EVERY: Duration = Duration::from_secs(10);

    /// The refusals since the last line if a line is due now (some happened and the last line
    /// is old enough); they then count as logged.
    pub fn due(&mut self, now: Refusals) -> Option<Refusals> {
        if now.total() == self.logged.total()
            || self.at.is_some_and(|at| at.elapsed() < Self::EVERY)
        {
            return None;
        }
        let since = Refusals {
            table_full: now.table_full - self.logged.table_full,
            container_limit: now.container_limit - self.logged.container_limit,
            half_open_limit: now.half_open_limit - self.logged.half_open_limit,
        };
        self.logged = now;
        self.at = Some(std::time::Instant::now());
        Some(since)
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_per_interval_with_the_count_since() {
        let mut log = RefusalLog::default();
        let r = |t, c, h| Refusals {
            table_full: t,
            container_limit: c,
            half_open_limit: h,
        };
        assert_eq!(log.due(r(0, 0, 0)), None, "nothing refused");
        assert_eq!(log.due(r(3, 1, 0)), Some(r(3, 1, 0)));
        assert_eq!(log.due(r(5, 1, 0)), None, "within the interval");
        log.at = Some(std::time::Instant::now() - RefusalLog::EVERY);
        assert_eq!(log.due(r(6, 1, 2)), Some(r(3, 0, 2)));
        log.at = None;
        assert_eq!(log.due(r(6, 1, 2)), None, "nothing new");
    }

    #[test]
    fn plugs_and_unplugs_are_counted_and_timed() {
        let mut c = PlugCounters::default();
        c.plug(true, Duration::from_millis(30));
        c.plug(false, Duration::from_millis(1));
        c.unplug(Duration::from_millis(20));
        c.unplug(Duration::from_millis(10));
        let v = c.view();
        assert_eq!((v.plugged, v.failed, v.unplugged), (1, 1, 2));
        assert_eq!((v.plug_seconds.count, v.unplug_seconds.count), (1, 2));
        assert!((v.unplug_seconds.sum - 0.030).abs() < 1e-6);
    }
}
