//! How a thread that serves an epoll set (a datapath worker, the NAT service) waits for work.
//!
//! - Adaptive polling: for a short window after its last event the thread checks for more
//!   without sleeping, yielding the CPU to any other runnable thread in between. The next frame
//!   of a request/response exchange (a TCP handshake, an RPC) then finds it awake: no wake-up,
//!   which costs two context switches and, when the CPU had gone idle, an inter-processor
//!   interrupt (a VM exit on a virtual machine). With no traffic the thread sleeps: an idle
//!   daemon costs nothing.
//! - Placement (datapath workers, when small frames are spread by CPU): a worker that sleeps,
//!   or serves sparse traffic, stays on its home CPU, the one whose frames its queues receive.
//!   The sender that wakes it is about to block on that same CPU, so the wake-up needs no
//!   interrupt and the frame crosses the switch at once. Once frames have kept coming without a
//!   pause for a while it may run on any CPU, so that the scheduler can give it an idle core
//!   rather than make it share the sender's; it goes home when the traffic stops.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use crate::kernel::epoll::Epoll;

/// Events closer together than this belong to one stretch of traffic...
const GAP: Duration = Duration::from_millis(1);
/// ...and a stretch this long lets the worker leave its home CPU.
const SUSTAINED: Duration = Duration::from_millis(2);
/// Away from home and quiet this long: go home, then sleep.
const GRACE_MS: i32 = 2;

/// Time a thread spent working (from the return of a wait with events to the next wait), in
/// nanoseconds: a relaxed add per wake-up, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Busy(AtomicU64);

impl Busy {
    pub fn nanos(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

pub struct Waiter {
    poll: Duration,
    /// Where the time between a wait that returned events and the next wait adds up, and when
    /// the last wait returned events (taken by the next wait).
    busy: Option<(Arc<Busy>, Option<Instant>)>,
    last_event: Instant,
    /// When the current stretch of traffic began.
    stretch_start: Instant,
    /// The home CPU's set, and the set the thread may use when away from it.
    home: Option<(CpuSet, CpuSet)>,
    at_home: bool,
}

impl Waiter {
    /// A waiter for the calling thread; with `home_cpu`, the thread moves there now.
    pub fn new(poll: Duration, home_cpu: Option<usize>) -> Waiter {
        let home = home_cpu.and_then(|cpu| {
            let everywhere = sched_getaffinity(Pid::from_raw(0)).ok()?;
            let mut home = CpuSet::new();
            home.set(cpu).ok()?;
            Some((home, everywhere))
        });
        let mut waiter = Waiter {
            poll,
            busy: None,
            last_event: Instant::now(),
            stretch_start: Instant::now(),
            home,
            at_home: false,
        };
        waiter.place(true);
        waiter
    }

    /// Adds the time the thread works between waits to `busy`.
    pub fn count_busy(mut self, busy: Arc<Busy>) -> Waiter {
        self.busy = Some((busy, None));
        self
    }

    /// The CPU that `worker` of `workers` calls home under CPU fanout, which hands a frame
    /// received on CPU `c` to queue `c % workers`: the first CPU we may use with that remainder.
    pub fn home_cpu(worker: usize, workers: usize) -> Option<usize> {
        let allowed = sched_getaffinity(Pid::from_raw(0)).ok()?;
        (0..CpuSet::count())
            .filter(|&c| allowed.is_set(c).unwrap_or(false))
            .find(|c| c % workers == worker)
    }

    /// Waits for events on `epoll`, sleeping at most `timeout_ms` (-1: forever) once the polling
    /// window is over. Returns the filled part of `events`: empty on timeout, or when the thread
    /// has just gone home (so that the caller sees `at_home` change).
    pub fn wait<'a>(
        &mut self,
        epoll: &Epoll,
        events: &'a mut [libc::epoll_event],
        timeout_ms: i32,
    ) -> &'a [libc::epoll_event] {
        if let Some((busy, since)) = &mut self.busy {
            if let Some(since) = since.take() {
                busy.0.fetch_add(since.elapsed().as_nanos() as u64, Relaxed);
            }
        }
        loop {
            let polling = self.last_event.elapsed() < self.poll;
            let away = self.home.is_some() && !self.at_home;
            let timeout = match (polling, away) {
                (true, _) => 0,
                (false, true) => GRACE_MS,
                (false, false) => timeout_ms,
            };
            let n = epoll.wait(events, timeout).len();
            if n > 0 {
                let now = Instant::now();
                if now.duration_since(self.last_event) > GAP {
                    self.stretch_start = now;
                }
                self.last_event = now;
                if self.at_home && now.duration_since(self.stretch_start) >= SUSTAINED {
                    self.place(false);
                }
                if let Some((_, since)) = &mut self.busy {
                    *since = Some(now);
                }
                return &events[..n];
            }
            if polling {
                std::thread::yield_now();
                continue;
            }
            if away {
                // Home again before the caller sleeps; it sees `at_home` change.
                self.place(true);
            }
            return &events[..0];
        }
    }

    /// Whether the thread is on its home CPU (never, without one).
    pub fn at_home(&self) -> bool {
        self.at_home
    }

    /// Moves the thread home (`true`) or lets it run on any CPU it may use.
    fn place(&mut self, home: bool) {
        if let Some((cpu, everywhere)) = &self.home {
            let set = if home { cpu } else { everywhere };
            // Best effort: a thread that cannot move still works, only slower.
            let _ = sched_setaffinity(Pid::from_raw(0), set);
            self.at_home = home;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::epoll::{EventFd, IN};
    use std::os::fd::AsRawFd;

    fn allowed() -> usize {
        sched_getaffinity(Pid::from_raw(0))
            .map(|set| {
                (0..CpuSet::count())
                    .filter(|&c| set.is_set(c).unwrap_or(false))
                    .count()
            })
            .unwrap()
    }

    /// Runs in a thread of its own: the test moves its thread between CPUs.
    #[test]
    fn a_worker_leaves_home_under_sustained_traffic_and_returns_when_it_stops() {
        std::thread::spawn(|| {
            let everywhere = allowed();
            let epoll = Epoll::new().unwrap();
            let fd = EventFd::new().unwrap();
            epoll.add(fd.as_raw_fd(), IN, 7).unwrap();
            let home = Waiter::home_cpu(0, 1).unwrap();
            let mut waiter = Waiter::new(Duration::from_micros(200), Some(home));
            assert_eq!(allowed(), 1, "a new waiter moves its thread home");
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];

            // Sparse events (further apart than GAP) never add up to a stretch.
            for _ in 0..3 {
                std::thread::sleep(GAP * 2);
                fd.wake();
                let token = { waiter.wait(&epoll, &mut events, -1)[0].u64 };
                assert_eq!(token, 7);
                fd.drain();
                assert_eq!(allowed(), 1, "sparse traffic keeps the worker home");
            }

            // Back-to-back events for longer than SUSTAINED: free to run anywhere. (Up to 30 s:
            // a preempted test thread restarts the stretch.) With a single CPU, "anywhere" is
            // home too: the waiter's own state says whether it left.
            let start = Instant::now();
            while waiter.at_home() && start.elapsed() < Duration::from_secs(30) {
                fd.wake();
                assert_eq!(waiter.wait(&epoll, &mut events, -1).len(), 1);
                fd.drain();
            }
            assert!(!waiter.at_home(), "sustained traffic lets the worker leave");
            assert_eq!(allowed(), everywhere, "away, it may run on every CPU");

            // Quiet: the waiter goes home and returns at once, without sleeping out its timeout
            // (here: 60 s; anything under 30 s is "at once" on however busy a machine), so that
            // the caller sees it home before it sleeps.
            let start = Instant::now();
            assert!(waiter.wait(&epoll, &mut events, 60_000).is_empty());
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "going home returned after {:?}: the waiter slept out its timeout",
                start.elapsed()
            );
            assert!(waiter.at_home());
            assert_eq!(allowed(), 1, "the worker is home again once traffic stops");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn polling_ends_and_the_timeout_is_kept() {
        let epoll = Epoll::new().unwrap();
        let mut waiter = Waiter::new(Duration::from_millis(5), None);
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        let start = Instant::now();
        assert!(waiter.wait(&epoll, &mut events, 20).is_empty());
        let took = start.elapsed();
        // At least the timeout; the upper bound only catches a wait that never ended.
        assert!(took >= Duration::from_millis(20), "returned after {took:?}");
        assert!(took < Duration::from_secs(30), "returned after {took:?}");
    }

    #[test]
    fn busy_time_is_the_time_between_events_and_the_next_wait() {
        let epoll = Epoll::new().unwrap();
        let fd = EventFd::new().unwrap();
        epoll.add(fd.as_raw_fd(), IN, 7).unwrap();
        let busy = Arc::new(Busy::default());
        let mut waiter = Waiter::new(Duration::ZERO, None).count_busy(busy.clone());
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // Idle waits count nothing, however long.
        assert!(waiter.wait(&epoll, &mut events, 30).is_empty());
        assert!(waiter.wait(&epoll, &mut events, 30).is_empty());
        assert_eq!(busy.nanos(), 0);
        // Events, then 20 ms of work before the next wait.
        fd.wake();
        assert_eq!(waiter.wait(&epoll, &mut events, -1).len(), 1);
        fd.drain();
        std::thread::sleep(Duration::from_millis(20));
        assert!(waiter.wait(&epoll, &mut events, 30).is_empty());
        let worked = busy.nanos();
        assert!(worked >= 20_000_000, "{worked} ns");
        // The wait that followed (30 ms, empty) added nothing.
        assert!(waiter.wait(&epoll, &mut events, 30).is_empty());
        assert_eq!(busy.nanos(), worked);
    }
}
