//! Per-thread slots. Worker threads share one switch; state they all write on every frame (a
//! lock's reader count, counters) is split into one slot per thread, each on its own cache
//! line, so cores don't steal the line from each other on every frame.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Number of slots. Threads beyond this share slots (still correct, just contended).
pub(crate) const SLOTS: usize = 16;

/// Aligned to two cache lines: x86 prefetches lines in adjacent pairs.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub T);

/// This thread's slot, `< SLOTS`: threads take slots round-robin on first use.
#[inline]
pub(crate) fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = take_slot(&NEXT);
    }
    // During thread teardown the thread-local may be gone: any slot is correct.
    SLOT.try_with(|s| *s).unwrap_or(0)
}

/// The next slot of the round-robin that `next` counts.
fn take_slot(next: &AtomicUsize) -> usize {
    next.fetch_add(1, Ordering::Relaxed) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_slot() {
        let mine = thread_slot();
        assert!(mine < SLOTS);
        assert_eq!(mine, thread_slot());
        let other = std::thread::spawn(|| (thread_slot(), thread_slot()))
            .join()
            .unwrap();
        assert!(other.0 < SLOTS);
        assert_eq!(other.0, other.1);
    }

    #[test]
    fn threads_take_slots_round_robin() {
        // A counter of its own: the process-wide one is shared with every other test's threads,
        // which may take any number of slots in between.
        let next = AtomicUsize::new(0);
        let first: Vec<usize> = (0..SLOTS).map(|_| take_slot(&next)).collect();
        assert_eq!(
            first,
            (0..SLOTS).collect::<Vec<_>>(),
            "16 threads, 16 slots"
        );
        assert_eq!(take_slot(&next), 0, "the 17th shares the first slot");
        // Wrapping the counter itself does not leave the range.
        let next = AtomicUsize::new(usize::MAX);
        assert!(take_slot(&next) < SLOTS && take_slot(&next) < SLOTS);
    }
}
