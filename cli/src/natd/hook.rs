//! The NAT's hook into the datapath: which frames the workers hand to the NAT, and what
//! becomes of each verdict.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use vswitch_nat::{Nat, Verdict};
use vswitch_switch::{Millis, PortId, VNET_HDR_LEN};

use crate::datapath::{Fabric, Hook, Token, TAP_PORT};

use super::offload::Offloads;
use super::translate::Translator;
use super::udp::UdpBatch;
use super::{NatJob, NatMailbox};

/// What the workers need to hand NAT traffic over: the translation engine, the gateway's MAC
/// (frames to it are the ones that may leave the subnet) and the NAT service's mailbox.
pub struct NatHook {
    pub nat: Arc<Nat>,
    pub gateway_mac: [u8; 6],
    pub service: NatMailbox,
    /// Where the NAT's own answers (resets, ICMP errors) go.
    pub fabric: Fabric,
    /// Each worker's datagrams to UDP flows' sockets, sent at the end of its batch.
    pub udp_batches: Box<[WorkerSlot]>,
    /// Established relayed connections handed to the kernel, where it can carry them.
    pub offloads: Option<Arc<Offloads>>,
    /// New outgoing connections translated in the kernel (`run --tcp-nat kernel`), and UDP flows
    /// and echoes carried there.
    pub translator: Option<Arc<Translator>>,
}

/// A worker's batch of datagrams, on cache lines of its own: the workers write theirs for
/// every datagram, and must not share a line.
#[derive(Default)]
#[repr(align(128))]
pub struct WorkerSlot(Mutex<UdpBatch>);

impl NatHook {
    pub fn new(
        nat: Arc<Nat>,
        gateway_mac: [u8; 6],
        service: NatMailbox,
        fabric: Fabric,
        workers: usize,
        offloads: Option<Arc<Offloads>>,
        translator: Option<Arc<Translator>>,
    ) -> NatHook {
        if let Some(t) = &translator {
            // UDP flows go to the kernel as soon as their socket is open.
            service.udp.carry_with(t.clone(), nat.clone());
        }
        NatHook {
            nat,
            gateway_mac,
            service,
            fabric,
            udp_batches: (0..workers.max(1)).map(|_| WorkerSlot::default()).collect(),
            offloads,
            translator,
        }
    }

    /// Worker `worker`'s batch of datagrams (one per worker, so never contended).
    fn udp_batch(&self, worker: usize) -> std::sync::MutexGuard<'_, UdpBatch> {
        let WorkerSlot(m) = &self.udp_batches[worker % self.udp_batches.len()];
        m.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Hook for NatHook {
    fn fd(&self) -> Option<RawFd> {
        self.service.icmp_fd()
    }

    fn readable(&self, fabric: &Fabric, buf: &mut [u8], out: &mut [u8]) {
        self.service.echo_replies(&self.nat, fabric, buf, out);
    }

    fn batch_done(&self, worker: usize, posted: bool) {
        let mut batch = self.udp_batch(worker);
        batch.flush();
        let failed = batch.take_failed();
        if failed > 0 {
            (self.service.udp.send_failed).fetch_add(failed, Relaxed);
        }
        if posted {
            self.service.wake();
        }
    }

    /// Frames to the gateway's MAC (they may leave the subnet) and frames from the host.
    /// Outgoing TCP's sockets in the worker's epoll set: a connect decided, a connection at a
    /// relay listener; a UDP flow's replies.
    fn event(&self, worker: usize, token: Token, buf: &mut [u8], out: &mut [u8]) {
        match token {
            Token::Entry(t) => self.service.outbound.ready(worker, t),
            Token::Listener(i) => self.service.outbound.accept(worker, usize::from(i)),
            Token::Udp(t) => (self.service.udp).ready(t, &self.nat, &self.fabric, buf, out),
            _ => {}
        }
    }

    fn frame(
        &self,
        worker: usize,
        ingress: PortId,
        frame: &mut [u8],
        now: Millis,
        posted: &mut bool,
    ) -> bool {
        let Some(eth) = frame.get(VNET_HDR_LEN..VNET_HDR_LEN + 14) else {
            return true;
        };
        let verdict = if ingress == TAP_PORT {
            if eth[12..14] != [0x08, 0x00] {
                return true;
            }
            self.nat.from_host(frame, now)
        } else if eth[..6] == self.gateway_mac {
            // Everything a container sends the gateway: the NAT passes what is not its own
            // (ARP, the gateway's own address) and refuses what a router would not forward.
            self.nat.outbound(frame, now)
        } else {
            return true;
        };
        match verdict {
            Verdict::Pass | Verdict::Rewritten => true,
            Verdict::Offload(o) => {
                if let Some(offloads) = &self.offloads {
                    offloads.offer(&o);
                }
                true
            }
            Verdict::Closing(flow) => {
                // Before the segment goes on: what follows it crosses the daemon again.
                if let Some(offloads) = &self.offloads {
                    offloads.closing(flow, &self.nat, now);
                }
                true
            }
            Verdict::Pending | Verdict::Drop(_) => false,
            Verdict::Reply(reply) => {
                self.fabric.to_containers(reply.bytes());
                false
            }
            Verdict::TcpConnect { flow, from, dst } => {
                if let Some(t) = &self.translator {
                    if t.translate(&self.nat, flow, from, dst, frame, now) {
                        return false;
                    }
                }
                (self.service.outbound).connect(worker, flow, from, dst, frame.to_vec());
                false
            }
            Verdict::UdpOut {
                flow,
                from,
                dst,
                payload,
                gso_size,
                ..
            } => {
                // The flow's socket is open: send on it from here. Its first datagram (or one
                // that raced it) goes through the service, which opens the socket.
                if let Some((sock, offer)) = self.service.udp.get(flow, now) {
                    self.udp_batch(worker)
                        .push(&sock, &frame[payload], gso_size);
                    if offer {
                        self.service.udp.carry(flow, &sock);
                    }
                    return false;
                }
                *posted |= self.service.post(NatJob::UdpOut {
                    flow,
                    from,
                    dst,
                    payload: frame[payload].to_vec(),
                    gso_size,
                });
                false
            }
            Verdict::EchoOut {
                flow,
                dst,
                ident,
                seq,
                payload,
            } => {
                self.service.send_echo(dst, ident, seq, &frame[payload]);
                // The next echoes (and this one's reply) the kernel carries, where it can.
                if let Some(t) = &self.translator {
                    t.carry(&self.nat, flow, None);
                }
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
