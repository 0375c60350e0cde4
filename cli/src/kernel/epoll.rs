//! epoll and eventfd, the two descriptors every serving thread (datapath worker, NAT service)
//! waits on. One wrapper, so that registration is written once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::sys::cvt;

/// Readable (the usual interest).
pub const IN: u32 = libc::EPOLLIN as u32;

/// An epoll set. Each registration carries a `u64` token (the caller's encoding, see
/// `datapath::Token`) that comes back with its events.
pub struct Epoll(OwnedFd);

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain system call returning a fresh descriptor that we own.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` is fresh and nothing else owns it.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the call's duration; a bad `fd` is an error.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) }).map(drop)
    }

    /// Watches `fd` for `events` (e.g. [`IN`]), reported with `token`.
    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Stops watching `fd` (ENOENT if it was not watched).
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits for events (`timeout_ms` -1: forever); returns the filled part of `events`.
    pub fn wait<'a>(
        &self,
        events: &'a mut [libc::epoll_event],
        timeout_ms: i32,
    ) -> &'a [libc::epoll_event] {
        // SAFETY: `events` is a live array of the length we pass.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        &events[..n.max(0) as usize]
    }
}

/// A non-blocking eventfd, for waking a thread out of `epoll_wait`.
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain system call returning a fresh descriptor that we own.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` is fresh and nothing else owns it.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds one to the counter, waking whoever polls it.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to an eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), &one as *const u64 as *const _, 8) };
    }

    /// Resets the counter after a wake-up.
    pub fn drain(&self) {
        let mut value = 0u64;
        // SAFETY: reading 8 bytes into a live u64 from an eventfd.
        unsafe { libc::read(self.0.as_raw_fd(), &mut value as *mut u64 as *mut _, 8) };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eventfd_wakes_the_set_with_its_token_until_drained() {
        let epoll = Epoll::new().unwrap();
        let wake = EventFd::new().unwrap();
        epoll.add(wake.as_raw_fd(), IN, 42).unwrap();
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        assert!(epoll.wait(&mut events, 0).is_empty());
        wake.wake();
        let got: Vec<u64> = epoll.wait(&mut events, 0).iter().map(|e| e.u64).collect();
        assert_eq!(got, [42]);
        wake.drain();
        assert!(epoll.wait(&mut events, 0).is_empty());
        epoll.delete(wake.as_raw_fd()).unwrap();
        wake.wake();
        assert!(epoll.wait(&mut events, 0).is_empty());
        assert!(epoll.delete(wake.as_raw_fd()).is_err(), "no longer watched");
    }
}
