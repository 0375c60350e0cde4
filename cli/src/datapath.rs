//! The datapath: worker threads that move frames between ports.
//!
//! Each worker owns an epoll set holding some of the ports (a bounded pool, not a thread per
//! port). A worker that reads a frame asks the shared [`Switch`] what to do and transmits to the
//! egress port(s) itself: sends on AF_PACKET sockets and TAPs are safe from any thread, so frames
//! are never handed between threads. The port table is published read-copy-update style
//! (`ArcSwap`): workers read it without locks, the manager swaps in a new one on plug/unplug.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use vswitch_nat::{Nat, Verdict};
use vswitch_switch::{Action, DropReason, Millis, PortId, Switch, VNET_HDR_LEN};

use crate::bpf::SpreadProgram;
use crate::natd::{NatJob, NatMailbox};
use crate::port::{Port, RxBatch};
use crate::relay::{self, RelayPool};
use crate::sys;
use crate::wait::Waiter;

/// Ports indexed by `PortId`.
pub type PortTable = Vec<Option<Arc<Port>>>;

/// The TAP (the host's own port on the switch) is always port 0.
pub const TAP_PORT: PortId = PortId(0);

/// What every thread that moves frames shares: the switch and the published port table.
#[derive(Clone)]
pub struct Fabric {
    pub switch: Arc<Switch>,
    pub table: Arc<ArcSwap<PortTable>>,
    /// The ports' fanout program, whose mode the workers flip (see `bpf`).
    pub spread: Option<Arc<SpreadProgram>>,
}

impl Fabric {
    pub fn new(switch: Arc<Switch>, spread: Option<Arc<SpreadProgram>>) -> Fabric {
        Fabric {
            switch,
            table: Arc::new(ArcSwap::from_pointee(Vec::new())),
            spread,
        }
    }

    /// Switches one frame (`[virtio_net_hdr][Ethernet]`) that arrived on `ingress`.
    pub fn switch_frame(
        &self,
        table: &PortTable,
        ingress: &Port,
        frame: &[u8],
        outgoing: bool,
        now: Millis,
        reply: &mut [u8],
    ) {
        let eth = &frame[VNET_HDR_LEN..];
        let action =
            self.switch
                .process(ingress.id, eth, outgoing, now, &mut reply[VNET_HDR_LEN..]);
        match action {
            Action::Forward(out) => {
                if let Some(Some(egress)) = table.get(out.0 as usize) {
                    egress.transmit(0, frame);
                }
            }
            Action::Flood => {
                for egress in table.iter().flatten() {
                    if egress.id != ingress.id {
                        egress.transmit(0, frame);
                    }
                }
            }
            Action::Reply { len } => {
                reply[..VNET_HDR_LEN].fill(0);
                ingress.transmit(0, &reply[..VNET_HDR_LEN + len]);
            }
            Action::Drop(DropReason::Malformed | DropReason::UnknownPort) => {
                ingress.counters.drop_one()
            }
            Action::Drop(_) => {}
        }
    }

    /// Delivers a frame the daemon wrote for a container (NAT replies) as if the host sent it.
    pub fn to_containers(&self, frame: &[u8]) {
        let table = self.table.load();
        if let Some(Some(tap)) = table.get(TAP_PORT.0 as usize) {
            let mut reply = [0u8; VNET_HDR_LEN + 128];
            self.switch_frame(&table, tap, frame, false, now_ms(), &mut reply);
        }
    }

    /// Hands a frame to the host kernel through the TAP.
    pub fn to_host(&self, frame: &[u8]) {
        if let Some(Some(tap)) = self.table.load().get(TAP_PORT.0 as usize) {
            tap.transmit(0, frame);
        }
    }
}

/// Frames read from one port per system call.
const BATCH: usize = 32;
/// Frames handed to one `send_batch` call (one `sendmmsg` on a packet socket).
const SEND_CHUNK: usize = 64;
/// Batches read from one port before the worker looks at its other ports (fairness).
const ROUNDS: usize = 8;
/// epoll user data that marks the worker's wake-up eventfd rather than a port.
const WAKE: u64 = u64::MAX;
/// epoll user data of the NAT's raw ICMP socket (echo replies).
const ECHO: u64 = u64::MAX - 1;

/// Milliseconds on the daemon's monotonic clock, the time base of the switch's FDB.
pub fn now_ms() -> Millis {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as Millis
}

struct Worker {
    epoll: Arc<OwnedFd>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

pub struct Datapath {
    fabric: Fabric,
    workers: Vec<Worker>,
    stop: Arc<AtomicBool>,
    relays: RelayPool,
    poll: Duration,
    /// Workers have home CPUs (small frames spread by CPU): see [`Waiter`].
    homes: bool,
}

/// Registers (or removes) `fd` for readability in a worker's epoll set.
fn epoll_ctl(epoll: &OwnedFd, op: libc::c_int, fd: RawFd, token: u64) -> io::Result<()> {
    sys::epoll_ctl(epoll, op, fd, libc::EPOLLIN as u32, token)
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
            let epoll = Arc::new(sys::epoll_create()?);
            let wake = Arc::new(sys::eventfd()?);
            epoll_ctl(&epoll, libc::EPOLL_CTL_ADD, wake.as_raw_fd(), WAKE)?;
            list.push(Worker {
                epoll,
                wake,
                thread: None,
            });
        }
        let epolls: Vec<Arc<OwnedFd>> = list.iter().map(|w| w.epoll.clone()).collect();
        Ok(Datapath {
            fabric,
            workers: list,
            stop: Arc::new(AtomicBool::new(false)),
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
    pub fn run(&mut self, nat: Option<NatHook>) -> io::Result<()> {
        let count = self.workers.len();
        for (i, worker) in self.workers.iter_mut().enumerate() {
            if let Some(fd) = nat.as_ref().and_then(|hook| hook.service.icmp_fd()) {
                // Exclusive: a reply wakes one sleeping worker, not all of them (a polling
                // worker finds it anyway).
                let events = (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32;
                sys::epoll_ctl(&worker.epoll, libc::EPOLL_CTL_ADD, fd, events, ECHO)?;
            }
            let ctx = WorkerCtx {
                index: i,
                fabric: self.fabric.clone(),
                nat: nat.clone(),
                relays: self.relays.clone(),
                epoll: worker.epoll.clone(),
                stop: self.stop.clone(),
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
        let slot = id.0 as usize;
        if table.len() <= slot {
            table.resize(slot + 1, None);
        }
        table[slot] = Some(port.clone());
        self.fabric.table.store(Arc::new(table));
        for (q, io) in port.queues.iter().enumerate() {
            let worker = &self.workers[q % self.workers.len()];
            if let Err(e) = epoll_ctl(&worker.epoll, libc::EPOLL_CTL_ADD, io.fd(), token(id, q)) {
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
        let port = table.get_mut(id.0 as usize)?.take()?;
        self.fabric.table.store(Arc::new(table));
        for (q, io) in port.queues.iter().enumerate() {
            let worker = &self.workers[q % self.workers.len()];
            // ENOENT is fine: a worker drops a queue whose socket failed from its set itself.
            let _ = epoll_ctl(&worker.epoll, libc::EPOLL_CTL_DEL, io.fd(), 0);
        }
        Some(port)
    }

    /// Sends a frame the switch made itself (e.g. a gratuitous ARP) out of every port but `except`.
    pub fn flood(&self, except: PortId, frame: &[u8]) {
        for port in self.fabric.table.load().iter().flatten() {
            if port.id != except {
                port.transmit(0, frame);
            }
        }
    }

    /// Stops and joins the workers.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for worker in &mut self.workers {
            sys::wake(&worker.wake);
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// epoll user data of a port's receive queue.
fn token(id: PortId, queue: usize) -> u64 {
    (queue as u64) << 16 | u64::from(id.0)
}

/// What the workers need to hand NAT traffic over: the translation engine, the gateway's MAC
/// (frames to it are the ones that may leave the subnet) and the NAT service's mailbox.
#[derive(Clone)]
pub struct NatHook {
    pub nat: Arc<Nat>,
    pub gateway_mac: [u8; 6],
    pub service: NatMailbox,
}

struct WorkerCtx {
    index: usize,
    fabric: Fabric,
    nat: Option<NatHook>,
    relays: RelayPool,
    epoll: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    poll: Duration,
    home: Option<usize>,
}

/// A worker's reusable buffers.
struct Scratch {
    rx: RxBatch,
    /// The switch's own replies (ARP), one slot per received frame.
    replies: Vec<[u8; VNET_HDR_LEN + 64]>,
    /// Length of each reply written.
    reply_lens: Vec<usize>,
    /// What to send where after a batch: (egress port, frame index, reply?) in arrival order.
    sends: Vec<(PortId, u16, bool)>,
    /// An echo reply read from the NAT's raw socket, and the frame made of it.
    echo_in: Vec<u8>,
    echo_out: Vec<u8>,
}

impl WorkerCtx {
    fn run(self) {
        let nat_buffer = |len| vec![0; if self.nat.is_some() { len } else { 0 }];
        let mut scratch = Scratch {
            rx: RxBatch::new(BATCH),
            replies: vec![[0u8; VNET_HDR_LEN + 64]; BATCH],
            reply_lens: vec![0; BATCH],
            sends: Vec::with_capacity(BATCH * 4),
            echo_in: nat_buffer(65536),
            echo_out: nat_buffer(65536 + 128),
        };
        // SAFETY: all-zero epoll_events are valid.
        let mut events: [libc::epoll_event; 64] = unsafe { std::mem::zeroed() };
        let mut waiter = Waiter::new(self.poll, self.home);
        let mut at_home = waiter.at_home();
        while !self.stop.load(Ordering::Relaxed) {
            let ready = waiter.wait(&self.epoll, &mut events, -1);
            if waiter.at_home() != at_home {
                at_home = waiter.at_home();
                if let Some(program) = &self.fabric.spread {
                    program.sustained(!at_home);
                }
            }
            for ev in ready {
                let data = ev.u64;
                if data == WAKE {
                    continue; // the loop condition checks `stop`
                }
                if data == ECHO {
                    if let Some(hook) = &self.nat {
                        let (buf, out) = (&mut scratch.echo_in, &mut scratch.echo_out);
                        hook.service.echo_replies(&hook.nat, &self.fabric, buf, out);
                    }
                    continue;
                }
                if data & relay::TOKEN_FLAG != 0 {
                    self.relays.service(self.index, data);
                    continue;
                }
                let (id, queue) = (PortId(data as u16), (data >> 16) as usize);
                self.serve_queue(id, queue, &mut scratch);
            }
        }
    }

    /// Drains (a fair share of) one receive queue of a port.
    fn serve_queue(&self, id: PortId, queue: usize, s: &mut Scratch) {
        let table = self.fabric.table.load();
        let Some(Some(port)) = table.get(id.0 as usize) else {
            return;
        };
        let Some(io) = port.queues.get(queue) else {
            return;
        };
        for _ in 0..ROUNDS {
            let got = match io.recv_batch(&mut s.rx) {
                Ok(got) => got,
                Err(_) => {
                    // The interface went away (container exited): stop polling it; the manager
                    // notices the missing link and removes the port.
                    let _ = epoll_ctl(&self.epoll, libc::EPOLL_CTL_DEL, io.fd(), 0);
                    return;
                }
            };
            self.switch_batch(&table, port, got, s);
            if got < s.rx.bufs.len() {
                return;
            }
        }
    }

    /// Decides every frame of a batch, then sends them grouped by egress port, one system call
    /// per port and batch.
    fn switch_batch(&self, table: &PortTable, port: &Port, got: usize, s: &mut Scratch) {
        let now = now_ms();
        s.sends.clear();
        let mut posted = false;
        // Received frames and bytes, added to the port's shared counters once per batch.
        let (mut rx_frames, mut rx_bytes) = (0, 0);
        for i in 0..got {
            let frame = &mut s.rx.bufs[i][..s.rx.lens[i]];
            if s.rx.truncated[i] || frame.len() < VNET_HDR_LEN {
                port.counters.drop_one();
                continue;
            }
            let outgoing = s.rx.outgoing[i];
            if !outgoing {
                rx_frames += 1;
                rx_bytes += frame.len() - VNET_HDR_LEN;
                if let Some(hook) = &self.nat {
                    if !hook.translate(port.id, frame, now, &mut posted) {
                        continue;
                    }
                }
            }
            let reply = &mut s.replies[i];
            let action = self.fabric.switch.process(
                port.id,
                &frame[VNET_HDR_LEN..],
                outgoing,
                now,
                &mut reply[VNET_HDR_LEN..],
            );
            let i = i as u16;
            match action {
                Action::Forward(out) => s.sends.push((out, i, false)),
                Action::Flood => {
                    for egress in table.iter().flatten() {
                        if egress.id != port.id {
                            s.sends.push((egress.id, i, false));
                        }
                    }
                }
                Action::Reply { len } => {
                    reply[..VNET_HDR_LEN].fill(0);
                    s.reply_lens[usize::from(i)] = VNET_HDR_LEN + len;
                    s.sends.push((port.id, i, true));
                }
                Action::Drop(DropReason::Malformed | DropReason::UnknownPort) => {
                    port.counters.drop_one()
                }
                Action::Drop(_) => {}
            }
        }
        port.counters.rx(rx_frames, rx_bytes);
        // The NAT service's jobs of the whole batch, behind one wake-up.
        if posted {
            if let Some(hook) = &self.nat {
                hook.service.wake();
            }
        }
        // Stable by egress: each port's frames keep their arrival order.
        s.sends.sort_by_key(|(out, _, _)| *out);
        // Up to one sendmmsg's worth of frames at a time, on the stack: no allocation per batch.
        let mut frames: [&[u8]; SEND_CHUNK] = [&[]; SEND_CHUNK];
        let mut start = 0;
        while start < s.sends.len() {
            let out = s.sends[start].0;
            let end = start + s.sends[start..].iter().take_while(|e| e.0 == out).count();
            if let Some(Some(egress)) = table.get(out.0 as usize) {
                for chunk in s.sends[start..end].chunks(SEND_CHUNK) {
                    for (slot, &(_, i, is_reply)) in frames.iter_mut().zip(chunk) {
                        let i = usize::from(i);
                        *slot = if is_reply {
                            &s.replies[i][..s.reply_lens[i]]
                        } else {
                            &s.rx.bufs[i][..s.rx.lens[i]]
                        };
                    }
                    egress.transmit_batch(self.index, &frames[..chunk.len()]);
                }
            }
            start = end;
        }
    }
}

impl NatHook {
    /// Runs a frame through the NAT. Returns whether the switch should still forward it (as is
    /// or rewritten); frames the NAT service carries through host sockets, or drops, are done.
    /// Sets `posted` when it queued a job for the NAT service (the caller wakes it once).
    fn translate(&self, ingress: PortId, frame: &mut [u8], now: Millis, posted: &mut bool) -> bool {
        let eth = &frame[VNET_HDR_LEN..];
        let ipv4 = eth.len() >= 34 && eth[12..14] == [0x08, 0x00];
        if !ipv4 {
            return true;
        }
        let verdict = if ingress == TAP_PORT {
            self.nat.from_host(frame, now)
        } else if eth[..6] == self.gateway_mac {
            self.nat.outbound(frame, now)
        } else {
            return true;
        };
        match verdict {
            Verdict::Pass | Verdict::Rewritten => true,
            Verdict::Pending | Verdict::Drop(_) => false,
            Verdict::TcpConnect { flow, dst } => {
                *posted |= self.service.post(NatJob::TcpConnect {
                    flow,
                    dst,
                    syn: frame.to_vec(),
                });
                false
            }
            Verdict::UdpOut {
                flow,
                dst,
                payload,
                gso_size,
                ..
            } => {
                *posted |= self.service.post(NatJob::UdpOut {
                    flow,
                    dst,
                    payload: frame[payload].to_vec(),
                    gso_size,
                });
                false
            }
            Verdict::EchoOut {
                dst,
                ident,
                seq,
                payload,
                ..
            } => {
                self.service.send_echo(dst, ident, seq, &frame[payload]);
                false
            }
            Verdict::UdpToClient {
                publish_id,
                client,
                payload,
                gso_size,
            } => {
                *posted |= self.service.post(NatJob::UdpToClient {
                    publish_id,
                    client,
                    payload: frame[payload].to_vec(),
                    gso_size,
                });
                false
            }
        }
    }
}
