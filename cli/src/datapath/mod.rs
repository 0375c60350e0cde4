//! The datapath: worker threads that move frames between ports.
//!
//! Each worker owns an epoll set holding some of the ports (a bounded pool, not a thread per
//! port). A worker that reads a frame asks the shared [`Switch`] what to do and transmits to the
//! egress port(s) itself: sends on AF_PACKET sockets and TAPs are safe from any thread, so frames
//! are never handed between threads. The port table is published read-copy-update style
//! (`ArcSwap`): workers read it without locks, the manager swaps in a new one on plug/unplug.
//!
//! [`Switch`]: vswitch_switch::Switch

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vswitch_switch::{Millis, PortId, Switch};

use crate::kernel::epoll::{Epoll, EventFd, IN};
use crate::ports::Port;

pub use fabric::{now_ms, Fabric, PortTable, TAP_PORT};
pub use token::Token;

mod fabric;
pub mod relay;
mod token;
pub mod wait;
mod worker;

use relay::RelayPool;
use wait::{Busy, Waiter};
use worker::WorkerCtx;

/// What the workers hand frames to besides the switch: the NAT's edge (`natd`). The datapath
/// knows it only through this trait, so that it does not depend on the NAT.
pub trait Hook: Send + Sync {
    /// Runs a received frame through the NAT. Returns whether the switch should still forward
    /// it (as is or rewritten); frames the NAT carries through host sockets, or drops, are
    /// done. Sets `posted` when it queued work that `batch_done` must announce.
    /// `worker` is the calling worker's index.
    fn frame(
        &self,
        worker: usize,
        ingress: PortId,
        frame: &mut [u8],
        now: Millis,
        posted: &mut bool,
    ) -> bool;
    /// An event of worker `worker`'s epoll set about a descriptor the hook put there
    /// (`Token::Entry`, `Token::Listener` or `Token::Udp`); `buf` and `out` are the worker's
    /// scratch, as for `readable`.
    fn event(&self, worker: usize, token: Token, buf: &mut [u8], out: &mut [u8]);
    /// Worker `worker`'s batch is over: send what the hook gathered over it, and if some frame
    /// of it `posted` work, wake whoever does it, once.
    fn batch_done(&self, worker: usize, posted: bool);
    /// A descriptor every worker polls for the hook (the NAT's echo socket), if any.
    fn fd(&self) -> Option<RawFd>;
    /// `fd` is readable; `buf` and `out` are the worker's scratch (64 KiB and a bit more).
    fn readable(&self, fabric: &Fabric, buf: &mut [u8], out: &mut [u8]);
}

struct Worker {
    epoll: Arc<Epoll>,
    wake: Arc<EventFd>,
    /// Its time spent working (see [`Busy`]).
    busy: Arc<Busy>,
    thread: Option<JoinHandle<()>>,
}

/// Holds the workers still between two batches (a process handing its ports over): they stop
/// reading, and frames wait in the ports' socket buffers.
#[derive(Default)]
pub(crate) struct Pause {
    wanted: AtomicBool,
    /// How many workers are parked.
    parked: Mutex<usize>,
    changed: Condvar,
}

impl Pause {
    /// Parks the calling worker while a pause is wanted.
    pub(crate) fn park_if_wanted(&self) {
        if !self.wanted.load(Ordering::Acquire) {
            return;
        }
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        *parked += 1;
        self.changed.notify_all();
        while self.wanted.load(Ordering::Acquire) {
            parked = self.changed.wait(parked).unwrap_or_else(|e| e.into_inner());
        }
        *parked -= 1;
        self.changed.notify_all();
    }
}

pub struct Datapath {
    fabric: Fabric,
    workers: Vec<Worker>,
    stop: Arc<AtomicBool>,
    pause: Arc<Pause>,
    relays: RelayPool,
    poll: Duration,
    /// Workers have home CPUs (small frames spread by CPU): see [`Waiter`].
    homes: bool,
}

impl Datapath {
    /// Prepares `workers` workers with no ports yet (their threads start with [`Datapath::run`]).
    /// `poll`: how long a worker keeps polling after its last frame before it sleeps; `homes`:
    /// each worker calls home the CPU whose (small) frames its queues receive.
    pub fn new(
        fabric: Fabric,
        workers: usize,
        poll: Duration,
        homes: bool,
    ) -> io::Result<Datapath> {
        let mut list = Vec::new();
        for _ in 0..workers.max(1) {
            let epoll = Arc::new(Epoll::new()?);
            let wake = Arc::new(EventFd::new()?);
            epoll.add(wake.as_raw_fd(), IN, Token::Wake.into())?;
            list.push(Worker {
                epoll,
                wake,
                busy: Arc::default(),
                thread: None,
            });
        }
        let epolls: Vec<Arc<Epoll>> = list.iter().map(|w| w.epoll.clone()).collect();
        Ok(Datapath {
            fabric,
            workers: list,
            stop: Arc::new(AtomicBool::new(false)),
            pause: Arc::default(),
            relays: RelayPool::new(&epolls),
            poll,
            homes,
        })
    }

    /// The relay for NAT'd TCP connections, served by these workers.
    pub fn relays(&self) -> RelayPool {
        self.relays.clone()
    }

    /// Starts the worker threads.
    pub fn run(&mut self, hook: Option<Arc<dyn Hook>>) -> io::Result<()> {
        let count = self.workers.len();
        for (i, worker) in self.workers.iter_mut().enumerate() {
            if let Some(fd) = hook.as_ref().and_then(|hook| hook.fd()) {
                // Exclusive: a reply wakes one sleeping worker, not all of them (a polling
                // worker finds it anyway).
                let events = (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32;
                worker.epoll.add(fd, events, Token::Hook.into())?;
            }
            let ctx = WorkerCtx {
                index: i,
                fabric: self.fabric.clone(),
                hook: hook.clone(),
                relays: self.relays.clone(),
                epoll: worker.epoll.clone(),
                wake: worker.wake.clone(),
                stop: self.stop.clone(),
                pause: self.pause.clone(),
                busy: worker.busy.clone(),
                poll: self.poll,
                home: if self.homes {
                    Waiter::home_cpu(i, count)
                } else {
                    None
                },
            };
            let thread = std::thread::Builder::new()
                .name(format!("vswitch-dp{i}"))
                .spawn(move || ctx.run())?;
            worker.thread = Some(thread);
        }
        Ok(())
    }

    /// Each worker's time spent working so far, in nanoseconds.
    pub fn busy_ns(&self) -> Vec<u64> {
        self.workers.iter().map(|w| w.busy.nanos()).collect()
    }

    /// How many receive queues each port should have: one per worker.
    pub fn queues(&self) -> usize {
        self.workers.len()
    }

    pub fn switch(&self) -> &Switch {
        &self.fabric.switch
    }

    /// The current port table (a snapshot).
    pub fn ports(&self) -> Arc<PortTable> {
        self.fabric.table.load_full()
    }

    /// Publishes `port` and gives its receive queues to the workers: queue `i` to worker
    /// `i % workers`, so every worker serves every port (a port with one queue, one worker).
    pub fn add_port(&mut self, port: Arc<Port>) -> io::Result<()> {
        let id = port.id;
        let mut table = (*self.fabric.table.load_full()).clone();
        let slot = usize::from(id.0);
        if table.len() <= slot {
            table.resize(slot + 1, None);
        }
        table[slot] = Some(port.clone());
        self.fabric.table.store(Arc::new(table));
        for (q, io) in port.queues.iter().enumerate() {
            let worker = &self.workers[q % self.workers.len()];
            let token = Token::Queue {
                port: id,
                queue: q as u16,
            };
            if let Err(e) = worker.epoll.add(io.fd(), IN, token.into()) {
                self.remove_port(id);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Takes `id` out of the workers and the table. The port's descriptors close when the last
    /// worker still holding it lets go.
    pub fn remove_port(&mut self, id: PortId) -> Option<Arc<Port>> {
        let mut table = (*self.fabric.table.load_full()).clone();
        let port = table.get_mut(usize::from(id.0))?.take()?;
        self.fabric.table.store(Arc::new(table));
        for (q, io) in port.queues.iter().enumerate() {
            let worker = &self.workers[q % self.workers.len()];
            // ENOENT is fine: a worker drops a queue whose socket failed from its set itself.
            let _ = worker.epoll.delete(io.fd());
        }
        Some(port)
    }

    /// Sends a frame the switch made itself on behalf of port `from` (e.g. a gratuitous ARP
    /// announcing it) out of every port the switch would flood `from`'s frames to.
    pub fn flood(&self, from: PortId, frame: &[u8]) {
        for port in self.fabric.table.load().iter().flatten() {
            if self.fabric.switch.floods_to(from, port.id) {
                port.transmit(0, frame);
            }
        }
    }

    /// Parks every running worker between two batches, within `timeout`; until
    /// [`Datapath::resume`], no frame is read and no relayed byte moves. On a timeout the
    /// workers are resumed and the pause fails.
    pub fn pause(&self, timeout: Duration) -> io::Result<()> {
        let running = self.workers.iter().filter(|w| w.thread.is_some()).count();
        self.pause.wanted.store(true, Ordering::Release);
        for worker in &self.workers {
            worker.wake.wake();
        }
        let deadline = Instant::now() + timeout;
        let mut parked = (self.pause.parked.lock()).unwrap_or_else(|e| e.into_inner());
        while *parked < running {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(parked);
                self.resume();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the datapath workers did not pause",
                ));
            }
            parked = (self.pause.changed.wait_timeout(parked, left))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Lets paused workers go on.
    pub fn resume(&self) {
        let _guard = self.pause.parked.lock().unwrap_or_else(|e| e.into_inner());
        self.pause.wanted.store(false, Ordering::Release);
        self.pause.changed.notify_all();
    }

    /// Stops and joins the workers.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for worker in &mut self.workers {
            worker.wake.wake();
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}
