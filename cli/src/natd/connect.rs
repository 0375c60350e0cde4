//! A container's outgoing TCP: its SYN is held while the service connects to the destination
//! from the host; once connected the SYN goes on to the relay listener (rewritten by the NAT),
//! and the relay's accepted socket is spliced to the upstream one. A refused or unreachable
//! destination is answered the way it answered: a reset, or an ICMP error.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use vswitch_nat::FlowId;

use crate::datapath::now_ms;
use crate::datapath::relay::linger_zero;

use super::budget::{Lease, TCP_RELAY};
use super::service::{Entry, NatService};
use super::sockets::connect_nonblocking;

/// How long a connected upstream waits for the container's side to reach the relay.
const ACCEPT_WAIT: Duration = Duration::from_secs(30);

/// A connected upstream whose container side has not reached the relay yet.
pub(super) struct Waiting {
    pub upstream: TcpStream,
    /// The container's address and port.
    pub from: SocketAddrV4,
    pub since: Instant,
    pub lease: Lease,
}

impl Waiting {
    pub fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.since) >= ACCEPT_WAIT
    }
}

impl NatService {
    pub(super) fn tcp_connect(
        &mut self,
        flow: FlowId,
        from: SocketAddrV4,
        dst: SocketAddrV4,
        syn: Vec<u8>,
    ) {
        // A new connection from the same container address and port replaces one that never
        // reached the relay (e.g. the host still held the previous connection's TIME_WAIT and
        // the container reset and retried): reset its upstream now, so the destination does not
        // keep serving a connection nobody will use.
        let stale: Vec<FlowId> = (self.waiting.iter())
            .filter(|(_, w)| w.from == from)
            .map(|(f, _)| *f)
            .collect();
        for f in stale {
            if let Some(w) = self.waiting.remove(&f) {
                linger_zero(&w.upstream);
            }
        }
        // No descriptors for the connection: refused now, with a reset, rather than failing
        // later half-way.
        let Some(lease) = self
            .budget
            .lease(TCP_RELAY, Some(*from.ip()), "a TCP connection")
        else {
            let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
            return self.refuse_syn(flow, &syn, &refused);
        };
        match connect_nonblocking(dst) {
            Ok(stream) => {
                let entry = Entry::Connecting {
                    flow,
                    from,
                    stream,
                    syn,
                    lease,
                };
                let events = (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32;
                self.add_entry(events, entry);
            }
            Err(e) => {
                self.budget.check(&e, "connecting upstream");
                self.refuse_syn(flow, &syn, &e)
            }
        }
    }

    /// The upstream connect of entry `token` is decided: release the held SYN, or refuse it.
    pub(super) fn connected(&mut self, token: u64) {
        let Some(Entry::Connecting {
            flow,
            from,
            stream,
            mut syn,
            lease,
        }) = self.remove_entry(token)
        else {
            return;
        };
        match stream.take_error() {
            Ok(None) => {
                if self.nat.tcp_connected(flow, &mut syn, now_ms()).is_ok() {
                    let waiting = Waiting {
                        upstream: stream,
                        from,
                        since: Instant::now(),
                        lease,
                    };
                    self.waiting.insert(flow, waiting);
                    self.fabric.to_host(&syn);
                }
            }
            Ok(Some(err)) | Err(err) => self.refuse_syn(flow, &syn, &err),
        }
    }

    /// Answers a held SYN whose destination could not be reached the way the destination did.
    fn refuse_syn(&mut self, flow: FlowId, syn: &[u8], err: &io::Error) {
        let out = &mut self.out;
        let len = match err.raw_os_error() {
            Some(libc::ECONNREFUSED) => self.nat.tcp_reset_reply(flow, syn, out),
            Some(libc::ENETUNREACH) => self.nat.icmp_unreachable_reply(flow, syn, 0, out),
            Some(libc::EACCES | libc::EPERM) => self.nat.icmp_unreachable_reply(flow, syn, 13, out),
            _ => self.nat.icmp_unreachable_reply(flow, syn, 1, out),
        };
        if let Ok(len) = len {
            self.fabric.to_containers(&self.out[..len]);
        }
    }

    /// The container's side of connections reached relay listener `index`: splice each to its
    /// upstream.
    pub(super) fn relay_accept(&mut self, index: usize) {
        let Some((listener, relay_port)) = self.relays.get(index) else {
            return;
        };
        let relay_port = *relay_port;
        loop {
            let (conn, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) => {
                    self.budget.check(&e, "accepting on a relay listener");
                    return;
                }
            };
            let SocketAddr::V4(peer) = peer else { continue };
            let waiting = (self.nat.relay_lookup(peer, relay_port))
                .and_then(|rf| self.waiting.remove(&rf.flow));
            match waiting {
                Some(w) => {
                    let lease = w.lease;
                    self.pool
                        .relay(conn, w.upstream, *peer.ip(), move || drop(lease))
                }
                None => linger_zero(&conn), // no such flow: reset
            }
        }
    }
}
