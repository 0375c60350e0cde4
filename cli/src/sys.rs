//! The few raw system-call helpers the I/O edge shares: error conversion, epoll and eventfd.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Turns a -1 return into the `errno` error.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: plain system call returning a fresh descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) })
}

/// A non-blocking eventfd, for waking a thread out of `epoll_wait`.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain system call returning a fresh descriptor that we own.
    Ok(unsafe {
        OwnedFd::from_raw_fd(cvt(libc::eventfd(
            0,
            libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
        ))?)
    })
}

/// Adds one to an eventfd's counter, waking whoever polls it.
pub fn wake(eventfd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes from a live u64 to an eventfd.
    unsafe { libc::write(eventfd.as_raw_fd(), &one as *const u64 as *const _, 8) };
}

/// Resets an eventfd's counter after a wake-up.
pub fn drain(eventfd: &OwnedFd) {
    let mut value = 0u64;
    // SAFETY: reading 8 bytes into a live u64 from an eventfd.
    unsafe { libc::read(eventfd.as_raw_fd(), &mut value as *mut u64 as *mut _, 8) };
}

/// `epoll_ctl` with `events` and user data `token` (ignored for `EPOLL_CTL_DEL`).
pub fn epoll_ctl(
    epoll: &OwnedFd,
    op: libc::c_int,
    fd: RawFd,
    events: u32,
    token: u64,
) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid epoll_event for the call's duration.
    cvt(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut ev) }).map(drop)
}

/// Waits for events (`timeout_ms` -1: forever); returns the filled part of `events`.
pub fn epoll_wait<'a>(
    epoll: &OwnedFd,
    events: &'a mut [libc::epoll_event],
    timeout_ms: i32,
) -> &'a [libc::epoll_event] {
    // SAFETY: `events` is a live array of the length we pass.
    let n = unsafe {
        libc::epoll_wait(
            epoll.as_raw_fd(),
            events.as_mut_ptr(),
            events.len() as i32,
            timeout_ms,
        )
    };
    &events[..n.max(0) as usize]
}
