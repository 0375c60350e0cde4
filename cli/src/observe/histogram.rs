//! A histogram of durations, recorded with relaxed atomics from any thread and read as a
//! [`HistogramView`] (cumulative counts per upper bound, as Prometheus has them).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::control::{Bucket, HistogramView};

/// Upper bounds, in seconds, for things that take a network round trip (a DNS query).
pub const ROUND_TRIP: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Upper bounds, in seconds, for control-plane work (a plug: netlink, namespaces, sockets).
pub const CONTROL: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is above every bound.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (seconds, increasing).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = self.bounds.partition_point(|&le| le < secs);
        self.counts[i].fetch_add(1, Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// The counts so far. `count` is the sum of the buckets read, so that the last bucket
    /// (+Inf) and the count agree even while other threads observe.
    pub fn view(&self) -> HistogramView {
        let mut running = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (le, n) in self.bounds.iter().zip(self.counts.iter()) {
            running += n.load(Relaxed);
            buckets.push(Bucket {
                le: *le,
                count: running,
            });
        }
        let over = self.counts.last().map_or(0, |n| n.load(Relaxed));
        HistogramView {
            buckets,
            count: running + over,
            sum: self.sum_ns.load(Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::new(&[0.001, 0.01, 0.1]);
        for ms in [0.5, 1.0, 5.0, 10.0, 50.0, 2000.0] {
            h.observe(Duration::from_secs_f64(ms / 1000.0));
        }
        let v = h.view();
        let counts: Vec<(f64, u64)> = v.buckets.iter().map(|b| (b.le, b.count)).collect();
        // 1 ms falls in the 1 ms bucket (le is "less than or equal").
        assert_eq!(counts, [(0.001, 2), (0.01, 4), (0.1, 5)]);
        assert_eq!(v.count, 6, "the one above every bound counts in +Inf only");
        assert!((v.sum - 2.0665).abs() < 1e-9, "{}", v.sum);
    }

    #[test]
    fn an_empty_histogram_has_its_buckets() {
        let v = Histogram::new(ROUND_TRIP).view();
        assert_eq!(v.buckets.len(), ROUND_TRIP.len());
        assert!(v.buckets.iter().all(|b| b.count == 0));
        assert_eq!((v.count, v.sum), (0, 0.0));
    }
}
