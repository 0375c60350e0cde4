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
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }
    // During thread teardown the thread-local may be gone: any slot is correct.
    SLOT.try_with(|s| *s).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_get_distinct_slots() {
        let mine = thread_slot();
        assert_eq!(mine, thread_slot());
        let other = std::thread::spawn(thread_slot).join().unwrap();
        assert!(mine < SLOTS && other < SLOTS);
        assert_ne!(mine, other);
    }
}
