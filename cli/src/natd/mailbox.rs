//! The NAT service's mailbox: how the datapath workers and the manager hand it work, and the
//! raw ICMP socket echo requests leave through straight from the workers.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crossbeam_channel::Sender;
use vswitch_nat::echo::{echo_request, EchoReply};
use vswitch_nat::Nat;

use crate::datapath::{now_ms, Fabric};
use crate::kernel::epoll::EventFd;

use super::connect::Outbound;
use super::udp::UdpFlows;
use super::NatJob;

/// Cloned into every worker and the manager.
#[derive(Clone)]
pub struct NatMailbox {
    pub(super) tx: Sender<NatJob>,
    pub(super) wake: Arc<EventFd>,
    /// The raw ICMP socket echo requests leave through (none without CAP_NET_RAW).
    pub(super) icmp: Option<Arc<OwnedFd>>,
    /// Outgoing TCP connections, connected and accepted by the workers themselves.
    pub(super) outbound: Arc<Outbound>,
    /// UDP flows' sockets, sent and read on by the workers.
    pub(super) udp: Arc<UdpFlows>,
}

impl NatMailbox {
    /// Datagrams to the outside that a host socket refused to send.
    pub fn udp_send_failed(&self) -> u64 {
        (self.udp.send_failed).load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends a container's echo request out, translated, straight from the worker: one thread
    /// hop less on a ping's way.
    pub fn send_echo(&self, dst: Ipv4Addr, ident: u16, seq: u16, payload: &[u8]) {
        let Some(icmp) = &self.icmp else { return };
        let mut packet = Vec::with_capacity(8 + payload.len());
        echo_request(ident, seq, payload, &mut packet);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `packet` and `addr` are live for the call's duration.
        unsafe {
            libc::sendto(
                icmp.as_raw_fd(),
                packet.as_ptr() as *const libc::c_void,
                packet.len(),
                libc::MSG_DONTWAIT,
                &addr as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
    }

    /// The raw ICMP socket, for the workers to poll: echo replies are read by whichever worker
    /// is awake (see [`NatMailbox::echo_replies`]).
    pub fn icmp_fd(&self) -> Option<RawFd> {
        self.icmp.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// Reads the echo replies waiting on the raw ICMP socket and hands each, translated back,
    /// to its container. `buf` and `out` are the caller's scratch (64 KiB and a bit more).
    pub fn echo_replies(&self, nat: &Nat, fabric: &Fabric, buf: &mut [u8], out: &mut [u8]) {
        let Some(icmp) = &self.icmp else { return };
        loop {
            // SAFETY: reading into the caller's live buffer of the length we pass.
            let n = unsafe {
                libc::recv(
                    icmp.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return;
            }
            // A raw socket hands us the IPv4 header too.
            let Some(reply) = EchoReply::parse(&buf[..n as usize]) else {
                continue;
            };
            if let Ok(len) = nat.echo_reply(reply.ident, reply.seq, reply.payload, out, now_ms()) {
                fabric.to_containers(&out[..len]);
            }
        }
    }

    /// Queues a job and wakes the service.
    pub fn send(&self, job: NatJob) {
        if self.post(job) {
            self.wake();
        }
    }

    /// Queues a job without waking the service: a worker posts a whole batch's jobs, then
    /// wakes the service once (one eventfd write per batch, not per datagram).
    pub fn post(&self, job: NatJob) -> bool {
        self.tx.send(job).is_ok()
    }

    pub fn wake(&self) {
        self.wake.wake();
    }
}
