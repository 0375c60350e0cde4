//! A datapath worker: reads batches of frames from the queues in its epoll set, asks the switch
//! (and the NAT hook) what to do with each, and sends them grouped by egress port.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vswitch_switch::vnet::datagrams;
use vswitch_switch::{Action, DropReason, PortId, VNET_HDR_LEN};

use crate::kernel::epoll::{Epoll, EventFd};
use crate::ports::{Port, RxBatch};

use super::relay::RelayPool;
use super::wait::{Busy, Waiter};
use super::{now_ms, Fabric, Hook, PortTable, Token, TAP_PORT};

/// Frames read from one port per system call.
const BATCH: usize = 32;
/// Frames handed to one `send_batch` call (one `sendmmsg` on a packet socket).
const SEND_CHUNK: usize = 64;
/// Batches read from one port before the worker looks at its other ports (fairness).
const ROUNDS: usize = 8;

/// One worker thread: what it serves and how it waits.
pub(super) struct WorkerCtx {
    pub index: usize,
    pub fabric: Fabric,
    pub hook: Option<Arc<dyn Hook>>,
    pub relays: RelayPool,
    pub epoll: Arc<Epoll>,
    /// This worker's wake-up (see `Token::Wake`).
    pub wake: Arc<EventFd>,
    pub stop: Arc<AtomicBool>,
    pub pause: Arc<super::Pause>,
    pub busy: Arc<Busy>,
    pub poll: Duration,
    pub home: Option<usize>,
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
    pub fn run(self) {
        let nat_buffer = |len| vec![0; if self.hook.is_some() { len } else { 0 }];
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
        let mut waiter = Waiter::new(self.poll, self.home).count_busy(self.busy.clone());
        let mut at_home = waiter.at_home();
        while !self.stop.load(Ordering::Relaxed) {
            self.pause.park_if_wanted();
            let ready = waiter.wait(&self.epoll, &mut events, -1);
            if waiter.at_home() != at_home {
                at_home = waiter.at_home();
                if let Some(program) = &self.fabric.spread {
                    program.sustained(!at_home);
                }
            }
            for ev in ready {
                match Token::decode(ev.u64) {
                    Some(Token::Queue { port, queue }) => {
                        self.serve_queue(port, usize::from(queue), &mut scratch)
                    }
                    Some(Token::Relay { pair, .. }) => self.relays.service(self.index, pair),
                    Some(Token::Hook) => {
                        if let Some(hook) = &self.hook {
                            let (buf, out) = (&mut scratch.echo_in, &mut scratch.echo_out);
                            hook.readable(&self.fabric, buf, out);
                        }
                    }
                    Some(token @ (Token::Entry(_) | Token::Listener(_) | Token::Udp(_))) => {
                        if let Some(hook) = &self.hook {
                            let (buf, out) = (&mut scratch.echo_in, &mut scratch.echo_out);
                            hook.event(self.index, token, buf, out);
                        }
                    }
                    // Wake: the loop checks `stop` and the pause.
                    Some(Token::Wake) => self.wake.drain(),
                    _ => {}
                }
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
                    let _ = self.epoll.delete(io.fd());
                    return;
                }
            };
            if let Some(coalesce) = &port.coalesce {
                let frames = (s.rx.bufs.iter().zip(&s.rx.lens)).map(|(buf, &len)| &buf[..len]);
                let pressure = || (port.kernel_drops(), port.backed_up());
                coalesce.after_batch(frames.take(got), got == s.rx.bufs.len(), pressure);
            }
            self.switch_batch(&table, port, got, s);
            if got < s.rx.bufs.len() {
                return;
            }
        }
    }

    /// Decides every frame of a batch, then sends them grouped by egress port, one system call
    /// per port and batch. The two halves are `#[inline]` helpers: one body for the optimiser,
    /// as when it was written whole.
    fn switch_batch(&self, table: &PortTable, port: &Port, got: usize, s: &mut Scratch) {
        let now = now_ms();
        s.sends.clear();
        // Captured: the frames as they came in, before the NAT rewrites any.
        if port.mirror.on() {
            port.mirror_received(&s.rx, got);
        }
        let posted = self.decide_batch(table, port, got, now, s);
        // The NAT's datagrams of the whole batch, and the NAT service's jobs behind one wake-up.
        if let Some(hook) = &self.hook {
            hook.batch_done(self.index, posted);
        }
        self.send_batch(table, s);
    }

    /// Decides each received frame: dropped, taken by the NAT hook, or switched, its sends
    /// queued in `s.sends` (the switch's replies written in `s.replies`). True if the hook
    /// posted jobs for the NAT service.
    #[inline]
    fn decide_batch(
        &self,
        table: &PortTable,
        port: &Port,
        got: usize,
        now: u64,
        s: &mut Scratch,
    ) -> bool {
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
                rx_frames += datagrams(frame);
                rx_bytes += frame.len() - VNET_HDR_LEN;
                if let Some(hook) = &self.hook {
                    // Port security before the NAT (and so DNS and published ports) sees the
                    // frame: a container's spoofed frame goes nowhere. The switch checks again.
                    if port.id != TAP_PORT {
                        if let Err(why) = self.fabric.switch.admit(port.id, &frame[VNET_HDR_LEN..])
                        {
                            if counts_as_drop(why) {
                                port.counters.drop_one();
                            }
                            continue;
                        }
                    }
                    if !hook.frame(self.index, port.id, frame, now, &mut posted) {
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
                        if self.fabric.switch.floods_to(port.id, egress.id) {
                            s.sends.push((egress.id, i, false));
                        }
                    }
                }
                Action::Reply { len } => {
                    reply[..VNET_HDR_LEN].fill(0);
                    s.reply_lens[usize::from(i)] = VNET_HDR_LEN + len;
                    s.sends.push((port.id, i, true));
                }
                Action::Drop(why) if counts_as_drop(why) => port.counters.drop_one(),
                Action::Drop(_) => {}
            }
        }
        port.counters.rx(rx_frames, rx_bytes);
        posted
    }

    /// Sends the frames `s.sends` lists, grouped by egress port.
    #[inline]
    fn send_batch(&self, table: &PortTable, s: &mut Scratch) {
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

/// Whether a drop counts in the port's `drops`: frames that were wrong (malformed, for an
/// unknown port, spoofed, or crossing an isolation), not those the switch just has no use for
/// (its own transmissions, hairpins, ARP for the sender itself).
pub(super) fn counts_as_drop(why: DropReason) -> bool {
    matches!(
        why,
        DropReason::Malformed
            | DropReason::UnknownPort
            | DropReason::Spoofed(_)
            | DropReason::Isolated
    )
}
