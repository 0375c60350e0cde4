//! A BPF ring buffer (`BPF_MAP_TYPE_RINGBUF`, Linux 5.8): records the programs write
//! (`bpf_ringbuf_output`) and the daemon reads in order, from memory it maps, without a system
//! call per record. The map's descriptor polls readable when records wait.
//!
//! The layout (<linux/bpf.h>, kernel/bpf/ringbuf.c): a page with the consumer's position,
//! which the reader writes; then, read-only, a page with the producer's position and the data
//! pages, mapped twice in a row so that a record that wraps reads as one. Each record is an
//! 8-byte header (its length, with a busy and a discard bit) and its bytes, 8-byte aligned.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::atomic::{AtomicU32, AtomicU64};

use super::sys::create_map;

/// `BPF_MAP_TYPE_RINGBUF`.
const RINGBUF: u32 = 27;
const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HDR: u64 = 8;

pub struct RingBuf {
    fd: OwnedFd,
    /// The consumer's page (read-write) and the producer's with the data (read-only).
    consumer: *mut u8,
    producer: *mut u8,
    size: usize,
    page: usize,
}

// SAFETY: the mappings belong to this value alone (no other copy of the pointers exists), and
// the kernel's side of them is synchronised through the positions' atomics.
unsafe impl Send for RingBuf {}

impl RingBuf {
    /// A ring of `size` bytes (a power of two, a multiple of the page size; needs CAP_BPF).
    pub fn new(size: usize) -> io::Result<RingBuf> {
        let fd = create_map(RINGBUF, 0, 0, size as u32, 0)?;
        // SAFETY: plain system call.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let map = |len: usize, prot: libc::c_int, offset: usize| {
            // SAFETY: a new shared mapping of the map's descriptor, at the offsets and lengths
            // the kernel offers for a ring buffer; nothing else is at the address it returns.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                Err(io::Error::last_os_error())
            } else {
                Ok(p.cast::<u8>())
            }
        };
        let consumer = map(page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = match map(page + 2 * size, libc::PROT_READ, page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: the mapping made just above, unused.
                unsafe { libc::munmap(consumer.cast(), page) };
                return Err(e);
            }
        };
        Ok(RingBuf {
            fd,
            consumer,
            producer,
            size,
            page,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether a record waits (or is being written).
    pub fn pending(&self) -> bool {
        // SAFETY: as in `drain`.
        let (cons_pos, prod_pos) = unsafe {
            (
                &*(self.consumer as *const AtomicU64),
                &*(self.producer as *const AtomicU64),
            )
        };
        cons_pos.load(Acquire) < prod_pos.load(Acquire)
    }

    /// Calls `f` on each record waiting, in order, and frees their room.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) {
        // SAFETY: both positions are 8-byte aligned words at the start of their pages, which
        // stay mapped while `self` lives; the kernel writes `producer`, we write `consumer`.
        let (cons_pos, prod_pos) = unsafe {
            (
                &*(self.consumer as *const AtomicU64),
                &*(self.producer as *const AtomicU64),
            )
        };
        let mask = self.size as u64 - 1;
        let mut cons = cons_pos.load(Acquire);
        loop {
            let prod = prod_pos.load(Acquire);
            if cons >= prod {
                return;
            }
            while cons < prod {
                let at = self.page + (cons & mask) as usize;
                // SAFETY: `at` is within the data area (the mask keeps it below `size`), whose
                // header word is 8-byte aligned; the kernel publishes it with a release store.
                let len = unsafe { &*(self.producer.add(at) as *const AtomicU32) }.load(Acquire);
                if len & BUSY != 0 {
                    return;
                }
                let bytes = (len & !(BUSY | DISCARD)) as usize;
                if len & DISCARD == 0 && bytes <= self.size {
                    // SAFETY: the record's bytes follow its header; the data area is mapped
                    // twice in a row, so they are contiguous even where the ring wraps.
                    let data = unsafe {
                        std::slice::from_raw_parts(self.producer.add(at + HDR as usize), bytes)
                    };
                    f(data);
                }
                cons += (bytes as u64 + HDR).next_multiple_of(8);
                cons_pos.store(cons, Release);
            }
        }
    }
}

impl Drop for RingBuf {
    fn drop(&mut self) {
        // SAFETY: the two mappings `new` made, at their lengths; nothing refers to them now.
        unsafe {
            libc::munmap(self.consumer.cast(), self.page);
            libc::munmap(self.producer.cast(), self.page + 2 * self.size);
        }
    }
}
