//! The datapath: worker threads that move frames between ports.
//!
//! Each worker owns an epoll set holding some of the ports (a bounded pool, not a thread per
//! port). A worker that reads a frame asks the shared [`Switch`] what to do and transmits to the
//! egress port(s) itself: sends on AF_PACKET sockets and TAPs are safe from any thread, so frames
//! are never handed between threads. The port table is published read-copy-update style
//! (`ArcSwap`): workers read it without locks, the manager swaps in a new one on plug/unplug.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use arc_swap::ArcSwap;
use vswitch_switch::{Action, DropReason, Millis, PortId, Switch, VNET_HDR_LEN};

use crate::port::{Port, RxBatch};

/// Ports indexed by `PortId`.
pub type PortTable = Vec<Option<Arc<Port>>>;

/// Frames read from one port per system call.
const BATCH: usize = 32;
/// Batches read from one port before the worker looks at its other ports (fairness).
const ROUNDS: usize = 8;
/// epoll user data that marks the worker's wake-up eventfd rather than a port.
const WAKE: u64 = u64::MAX;

/// Milliseconds on the daemon's monotonic clock, the time base of the switch's FDB.
pub fn now_ms() -> Millis {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as Millis
}

struct Worker {
    epoll: Arc<OwnedFd>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    ports: usize,
}

pub struct Datapath {
    switch: Arc<Switch>,
    table: Arc<ArcSwap<PortTable>>,
    workers: Vec<Worker>,
    placement: HashMap<PortId, usize>,
    stop: Arc<AtomicBool>,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn epoll_ctl(epoll: RawFd, op: libc::c_int, fd: RawFd, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: data,
    };
    // SAFETY: `ev` is a valid epoll_event for the call's duration.
    cvt(unsafe { libc::epoll_ctl(epoll, op, fd, &mut ev) }).map(drop)
}

impl Datapath {
    /// Starts `workers` threads with no ports yet.
    pub fn start(switch: Arc<Switch>, workers: usize) -> io::Result<Datapath> {
        let table: Arc<ArcSwap<PortTable>> = Arc::new(ArcSwap::from_pointee(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut list = Vec::new();
        for i in 0..workers.max(1) {
            // SAFETY: plain system calls returning fresh descriptors that we own.
            let epoll = Arc::new(unsafe {
                OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?)
            });
            let wake = Arc::new(unsafe {
                OwnedFd::from_raw_fd(cvt(libc::eventfd(
                    0,
                    libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
                ))?)
            });
            epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                wake.as_raw_fd(),
                WAKE,
            )?;
            let ctx = WorkerCtx {
                switch: switch.clone(),
                table: table.clone(),
                epoll: epoll.clone(),
                stop: stop.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("vswitch-dp{i}"))
                .spawn(move || ctx.run())?;
            list.push(Worker {
                epoll,
                wake,
                thread: Some(thread),
                ports: 0,
            });
        }
        Ok(Datapath {
            switch,
            table,
            workers: list,
            placement: HashMap::new(),
            stop,
        })
    }

    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// The current port table (a snapshot).
    pub fn ports(&self) -> Arc<PortTable> {
        self.table.load_full()
    }

    /// Publishes `port` and hands it to the least busy worker.
    pub fn add_port(&mut self, port: Arc<Port>) -> io::Result<()> {
        let id = port.id;
        let fd = port.io.fd();
        let mut table = (*self.table.load_full()).clone();
        let slot = id.0 as usize;
        if table.len() <= slot {
            table.resize(slot + 1, None);
        }
        table[slot] = Some(port);
        self.table.store(Arc::new(table));
        let (index, worker) = self
            .workers
            .iter_mut()
            .enumerate()
            .min_by_key(|(_, w)| w.ports)
            .expect("at least one worker");
        if let Err(e) = epoll_ctl(
            worker.epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd,
            id.0 as u64,
        ) {
            self.unpublish(id);
            return Err(e);
        }
        worker.ports += 1;
        self.placement.insert(id, index);
        Ok(())
    }

    /// Takes `id` out of its worker and the table. The port's descriptor closes when the last
    /// worker still holding it lets go.
    pub fn remove_port(&mut self, id: PortId) -> Option<Arc<Port>> {
        let port = self.unpublish(id)?;
        if let Some(index) = self.placement.remove(&id) {
            let worker = &mut self.workers[index];
            // ENOENT is fine: a worker drops a port whose socket failed from its set itself.
            let _ = epoll_ctl(
                worker.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                port.io.fd(),
                0,
            );
            worker.ports -= 1;
        }
        Some(port)
    }

    fn unpublish(&self, id: PortId) -> Option<Arc<Port>> {
        let mut table = (*self.table.load_full()).clone();
        let port = table.get_mut(id.0 as usize)?.take()?;
        self.table.store(Arc::new(table));
        Some(port)
    }

    /// Sends a frame the switch made itself (e.g. a gratuitous ARP) out of every port but `except`.
    pub fn flood(&self, except: PortId, frame: &[u8]) {
        for port in self.table.load().iter().flatten() {
            if port.id != except {
                port.transmit(frame);
            }
        }
    }

    /// Stops and joins the workers.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for worker in &mut self.workers {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a live u64 to an eventfd.
            unsafe { libc::write(worker.wake.as_raw_fd(), &one as *const u64 as *const _, 8) };
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

struct WorkerCtx {
    switch: Arc<Switch>,
    table: Arc<ArcSwap<PortTable>>,
    epoll: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
}

impl WorkerCtx {
    fn run(self) {
        let mut batch = RxBatch::new(BATCH);
        let mut reply = [0u8; VNET_HDR_LEN + 128];
        // SAFETY: all-zero epoll_events are valid.
        let mut events: [libc::epoll_event; 64] = unsafe { std::mem::zeroed() };
        while !self.stop.load(Ordering::Relaxed) {
            // SAFETY: `events` is a live array of the length we pass.
            let n =
                unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 64, -1) };
            if n < 0 {
                continue; // EINTR
            }
            for ev in &events[..n as usize] {
                let data = ev.u64;
                if data == WAKE {
                    continue; // the loop condition checks `stop`
                }
                self.serve_port(PortId(data as u16), &mut batch, &mut reply);
            }
        }
    }

    /// Drains (a fair share of) one port's receive queue.
    fn serve_port(&self, id: PortId, batch: &mut RxBatch, reply: &mut [u8]) {
        let table = self.table.load();
        let Some(Some(port)) = table.get(id.0 as usize) else {
            return;
        };
        for _ in 0..ROUNDS {
            let got = match port.io.recv_batch(batch) {
                Ok(got) => got,
                Err(_) => {
                    // The interface went away (container exited): stop polling it; the manager
                    // notices the missing link and removes the port.
                    let _ = epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, port.io.fd(), 0);
                    return;
                }
            };
            let now = now_ms();
            for i in 0..got {
                let frame = &batch.bufs[i][..batch.lens[i]];
                if batch.truncated[i] || frame.len() < VNET_HDR_LEN {
                    port.counters.drop_one();
                    continue;
                }
                let eth_len = frame.len() - VNET_HDR_LEN;
                if !batch.outgoing[i] {
                    port.counters.rx(eth_len);
                }
                let action = self.switch.process(
                    id,
                    &frame[VNET_HDR_LEN..],
                    batch.outgoing[i],
                    now,
                    &mut reply[VNET_HDR_LEN..],
                );
                match action {
                    Action::Forward(out) => {
                        if let Some(Some(egress)) = table.get(out.0 as usize) {
                            egress.transmit(frame);
                        }
                    }
                    Action::Flood => {
                        for egress in table.iter().flatten() {
                            if egress.id != id {
                                egress.transmit(frame);
                            }
                        }
                    }
                    Action::Reply { len } => {
                        reply[..VNET_HDR_LEN].fill(0);
                        port.transmit(&reply[..VNET_HDR_LEN + len]);
                    }
                    Action::Drop(DropReason::Malformed | DropReason::UnknownPort) => {
                        port.counters.drop_one()
                    }
                    Action::Drop(_) => {}
                }
            }
            if got < batch.bufs.len() {
                return;
            }
        }
    }
}
