//! A reader-writer lock for data read on every frame and written rarely (the forwarding
//! table). A plain `RwLock` makes every reader write the same cache line (its reader count),
//! which then bounces between cores on every frame: with two workers that made forwarding
//! several times slower per frame. Here each thread slot has its own `RwLock<()>` on its own
//! cache line: a reader locks only its slot; a writer locks every slot, always in the same
//! order, so writers cannot deadlock each other.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::slot::{thread_slot, CachePadded, SLOTS};

#[derive(Debug)]
pub(crate) struct BrLock<T> {
    slots: [CachePadded<RwLock<()>>; SLOTS],
    data: UnsafeCell<T>,
}

// SAFETY: the lock owns its `T` (and `RwLock<()>`s, which are Send): moving the lock to another
// thread moves the `T`, hence `T: Send`, exactly like `RwLock<T>`.
unsafe impl<T: Send> Send for BrLock<T> {}
// SAFETY: `data` is only reached through the guards below, which give `&T` to any number of
// threads (hence `T: Sync`) only while no `&mut T` exists, and `&mut T` to one thread at a
// time (hence `T: Send`), exactly like `RwLock<T>`.
unsafe impl<T: Send + Sync> Sync for BrLock<T> {}

pub(crate) struct ReadGuard<'a, T> {
    data: &'a T,
    _slot: RwLockReadGuard<'a, ()>,
}

pub(crate) struct WriteGuard<'a, T> {
    data: &'a mut T,
    _slots: [RwLockWriteGuard<'a, ()>; SLOTS],
}

impl<T> BrLock<T> {
    pub fn new(data: T) -> BrLock<T> {
        BrLock {
            slots: Default::default(),
            data: UnsafeCell::new(data),
        }
    }

    /// Shared access. Must not be held by a thread that then calls [`BrLock::write`].
    #[inline]
    pub fn read(&self) -> ReadGuard<'_, T> {
        let slot = &self.slots[thread_slot() % SLOTS].0;
        let guard = slot.read().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: we hold a read lock on one slot, and a writer holds the write lock on every
        // slot, so no `&mut T` exists until `guard` is dropped with the returned guard.
        let data = unsafe { &*self.data.get() };
        ReadGuard { data, _slot: guard }
    }

    /// Exclusive access: waits for the readers of every slot.
    pub fn write(&self) -> WriteGuard<'_, T> {
        let guards = std::array::from_fn(|i| {
            self.slots[i]
                .0
                .write()
                .unwrap_or_else(PoisonError::into_inner)
        });
        // SAFETY: we hold the write lock of every slot: no reader or other writer exists
        // until the returned guard (which owns `guards`) is dropped.
        let data = unsafe { &mut *self.data.get() };
        WriteGuard {
            data,
            _slots: guards,
        }
    }
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.data
    }
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.data
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_exclude_readers_on_every_slot() {
        let lock = BrLock::new(0u64);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2_000 {
                        *lock.write() += 1;
                        let r = lock.read();
                        let seen = *r;
                        std::hint::spin_loop();
                        assert_eq!(seen, *r, "changed under a read guard");
                    }
                });
            }
        });
        assert_eq!(*lock.read(), 8_000);
    }
}
