//! A container's UDP flows to the outside: one connected host socket per flow; what comes back
//! on it (datagrams, or the ICMP errors the kernel reports on a connected socket) is written
//! back to the container as frames by the NAT.

use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use vswitch_nat::{FlowId, ICMP_DEST_UNREACH};

use crate::datapath::now_ms;
use crate::kernel::epoll::IN;

use super::budget::UDP_FLOW;
use super::service::{Entry, NatService};

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
                    sock,
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

    /// The socket of UDP flow `flow` is readable: replies, or an error the destination sent.
    pub(super) fn udp_ready(&mut self, flow: FlowId, token: u64) {
        let Some(Entry::Udp { sock, .. }) = self.entries.get(&token) else {
            return;
        };
        loop {
            match sock.recv(&mut self.buf) {
                Ok(n) => {
                    let reply = self
                        .nat
                        .udp_reply(flow, &self.buf[..n], &mut self.out, now_ms());
                    if let Ok(len) = reply {
                        self.fabric.to_containers(&self.out[..len]);
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
                    if let Ok(len) = self.nat.udp_error_reply(flow, t, code, &mut self.out) {
                        self.fabric.to_containers(&self.out[..len]);
                    }
                    break;
                }
            }
        }
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
