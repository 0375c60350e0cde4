//! Rate-limited log lines: an event that can repeat thousands of times a second (an upstream
//! resolver that does not answer, a full table) is logged at most once per interval, with the
//! count of the occurrences left out since.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// At most one line per `every_ms`. Lock-free: any thread may ask.
#[derive(Debug)]
pub struct RateLimit {
    every_ms: u64,
    start: Instant,
    /// Milliseconds after `start` of the last line allowed, plus one (0: never).
    last: AtomicU64,
    /// Occurrences not logged since the last line.
    suppressed: AtomicU64,
}

impl RateLimit {
    pub fn new(every_ms: u64) -> RateLimit {
        RateLimit {
            every_ms,
            start: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether to log this occurrence: `Some(n)` with the occurrences left out since the
    /// last line, `None` to stay quiet (it is counted).
    pub fn allow(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.every_ms;
        if due
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_what_was_left_out() {
        let limit = RateLimit::new(60_000);
        assert_eq!(limit.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.allow(), None);
        }
        // Due again (as if the interval had passed): the five left out are reported.
        limit.last.store(1, Relaxed);
        let limit = RateLimit {
            every_ms: 0,
            ..limit
        };
        assert_eq!(limit.allow(), Some(5));
        assert_eq!(limit.allow(), Some(0));
    }
}
