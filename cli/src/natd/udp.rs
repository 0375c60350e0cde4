//! A container's UDP flows to the outside: one connected host socket per flow; what comes back
//! on it (datagrams, or the ICMP errors the kernel reports on a connected socket) is written
//! back to the container as frames by the NAT.
//!
//! The NAT service opens a flow's socket (its first datagram) and closes it; in between the
//! socket is in [`UdpFlows`]: the workers send the flow's datagrams on it themselves, and it is
//! in every worker's epoll set (`EPOLLEXCLUSIVE`, `Token::Udp`), so that whichever worker is
//! awake reads the replies. A round trip crosses no thread (issue 16).

use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, RwLock};

use vswitch_nat::{FlowId, Nat, ICMP_DEST_UNREACH};

use crate::datapath::relay::RelayPool;
use crate::datapath::{now_ms, Fabric, Token};
use crate::kernel::epoll::IN;

use super::budget::UDP_FLOW;
use super::service::{Entry, NatService};

/// The UDP flows' sockets the workers use, by flow (to send) and by token (to read).
#[derive(Default)]
pub struct UdpFlows {
    maps: RwLock<FlowMaps>,
}

#[derive(Default)]
struct FlowMaps {
    by_flow: HashMap<FlowId, Arc<UdpSocket>>,
    by_token: HashMap<u64, (FlowId, Arc<UdpSocket>)>,
}

impl UdpFlows {
    /// The socket of `flow`, if the service has opened it.
    pub fn get(&self, flow: FlowId) -> Option<Arc<UdpSocket>> {
        let maps = self.maps.read().unwrap_or_else(|e| e.into_inner());
        maps.by_flow.get(&flow).cloned()
    }

    /// Hands `sock` (the service's `token`) to the workers: in every worker's epoll set. False
    /// if there is no worker to read it (the service reads it then).
    pub(super) fn add(
        &self,
        pool: &RelayPool,
        token: u64,
        flow: FlowId,
        sock: &Arc<UdpSocket>,
    ) -> bool {
        if pool.workers() == 0 {
            return false;
        }
        {
            let mut maps = self.maps.write().unwrap_or_else(|e| e.into_inner());
            maps.by_flow.insert(flow, sock.clone());
            maps.by_token.insert(token, (flow, sock.clone()));
        }
        // Exclusive: a reply wakes one sleeping worker, not all of them.
        let events = (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32;
        for epoll in (0..pool.workers()).filter_map(|i| pool.epoll(i)) {
            if epoll
                .add(sock.as_raw_fd(), events, Token::Udp(token).into())
                .is_err()
            {
                self.remove(pool, token);
                return false;
            }
        }
        true
    }

    /// Takes `token`'s socket back from the workers.
    pub(super) fn remove(&self, pool: &RelayPool, token: u64) {
        let mut maps = self.maps.write().unwrap_or_else(|e| e.into_inner());
        if let Some((flow, sock)) = maps.by_token.remove(&token) {
            maps.by_flow.remove(&flow);
            for epoll in (0..pool.workers()).filter_map(|i| pool.epoll(i)) {
                let _ = epoll.delete(sock.as_raw_fd());
            }
        }
    }

    /// A worker's event: `token`'s socket is readable.
    pub fn ready(&self, token: u64, nat: &Nat, fabric: &Fabric, buf: &mut [u8], out: &mut [u8]) {
        let found = {
            let maps = self.maps.read().unwrap_or_else(|e| e.into_inner());
            maps.by_token.get(&token).cloned()
        };
        if let Some((flow, sock)) = found {
            read_replies(nat, fabric, flow, &sock, buf, out);
        }
    }
}

/// Writes what waits on `flow`'s socket back to the container: its replies, or the error the
/// destination sent.
fn read_replies(
    nat: &Nat,
    fabric: &Fabric,
    flow: FlowId,
    sock: &UdpSocket,
    buf: &mut [u8],
    out: &mut [u8],
) {
    loop {
        match sock.recv(buf) {
            Ok(n) => {
                if let Ok(len) = nat.udp_reply(flow, &buf[..n], out, now_ms()) {
                    fabric.to_containers(&out[..len]);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => {
                // The destination answered with an ICMP error: pass it on.
                let (t, code) = match e.raw_os_error() {
                    Some(libc::ECONNREFUSED) => (ICMP_DEST_UNREACH, 3),
                    Some(libc::EHOSTUNREACH) => (ICMP_DEST_UNREACH, 1),
                    Some(libc::ENETUNREACH) => (ICMP_DEST_UNREACH, 0),
                    _ => break,
                };
                if let Ok(len) = nat.udp_error_reply(flow, t, code, out) {
                    fabric.to_containers(&out[..len]);
                }
                break;
            }
        }
    }
}

impl NatService {
    pub(super) fn udp_out(
        &mut self,
        flow: FlowId,
        from: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &[u8],
        gso_size: u16,
    ) {
        let token = match self.udp_by_flow.get(&flow) {
            Some(t) => *t,
            None => {
                let Some(lease) = self.budget.lease(UDP_FLOW, Some(*from.ip()), "a UDP flow")
                else {
                    return self.refuse_udp(flow);
                };
                let sock = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
                    Ok(sock) => sock,
                    Err(e) => {
                        self.budget.check(&e, "opening a UDP flow's socket");
                        return self.refuse_udp(flow);
                    }
                };
                if sock.connect(dst).is_err() || sock.set_nonblocking(true).is_err() {
                    return;
                }
                let entry = Entry::Udp {
                    flow,
                    sock: Arc::new(sock),
                    _lease: lease,
                };
                let Some(token) = self.add_entry(IN, entry) else {
                    return;
                };
                self.udp_by_flow.insert(flow, token);
                token
            }
        };
        if let Some(Entry::Udp { sock, .. }) = self.entries.get(&token) {
            send_segments(|chunk| sock.send(chunk), payload, gso_size);
        }
    }

    /// A UDP flow the daemon cannot carry (out of descriptors): the container is told so, as a
    /// router that may not forward tells it (ICMP communication administratively prohibited),
    /// and the flow is forgotten.
    fn refuse_udp(&mut self, flow: FlowId) {
        if let Ok(len) = (self.nat).udp_error_reply(flow, ICMP_DEST_UNREACH, 13, &mut self.out) {
            self.fabric.to_containers(&self.out[..len]);
        }
        self.nat.remove_flow(flow);
    }

    /// The socket of UDP flow `flow` is readable (a service without workers reads it itself).
    pub(super) fn udp_ready(&mut self, flow: FlowId, token: u64) {
        let Some(Entry::Udp { sock, .. }) = self.entries.get(&token) else {
            return;
        };
        read_replies(
            &self.nat,
            &self.fabric,
            flow,
            sock,
            &mut self.buf,
            &mut self.out,
        );
    }
}

/// Sends `payload`, cut into `gso_size` pieces when it is a UDP GSO super-datagram.
pub(super) fn send_segments(
    mut send: impl FnMut(&[u8]) -> io::Result<usize>,
    payload: &[u8],
    gso_size: u16,
) {
    if gso_size == 0 || payload.len() <= usize::from(gso_size) {
        let _ = send(payload);
        return;
    }
    for chunk in payload.chunks(usize::from(gso_size)) {
        let _ = send(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_gso_datagrams() {
        let mut sent = Vec::new();
        let mut record = |c: &[u8]| {
            sent.push(c.len());
            Ok(c.len())
        };
        send_segments(&mut record, &[0u8; 2500], 1000);
        send_segments(&mut record, &[0u8; 500], 0);
        assert_eq!(sent, vec![1000, 1000, 500, 500]);
    }
}
