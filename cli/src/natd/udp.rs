//! A container's UDP flows to the outside: one connected host socket per flow; what comes back
//! on it (datagrams, or the ICMP errors the kernel reports on a connected socket) is written
//! back to the container as frames by the NAT.
//!
//! The NAT service opens a flow's socket (its first datagram) and closes it; in between the
//! socket is in [`UdpFlows`]: the workers send the flow's datagrams on it themselves, and it is
//! in every worker's epoll set (`EPOLLEXCLUSIVE`, `Token::Udp`), so that whichever worker is
//! awake reads the replies. A round trip crosses no thread (issue 16).
//!
//! Where the kernel can carry it (`Translator::carry`), a flow is handed to it as soon as its
//! socket is open (and again, at most once a second, while its datagrams still reach the
//! daemon): its later datagrams, both ways, are translated by the fast path's programs and
//! never reach the daemon; the socket stays, holding the host's port (and telling the ICMP
//! errors the remote end sends).

use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use vswitch_nat::{FlowId, Nat, ICMP_DEST_UNREACH};

use crate::datapath::relay::RelayPool;
use crate::datapath::{now_ms, Fabric, Token};
use crate::kernel::epoll::IN;

use super::budget::UDP_FLOW;
use super::service::{Entry, NatService};
use super::translate::Translator;

/// The UDP flows' sockets the workers use, by flow (to send) and by token (to read).
#[derive(Default)]
pub struct UdpFlows {
    maps: RwLock<FlowMaps>,
    /// Datagrams a host socket refused to send (its buffer full, a route gone, too large).
    pub send_failed: AtomicU64,
    /// What hands the flows to the kernel, once there is one (`carry_with`).
    kernel: OnceLock<(Arc<Translator>, Arc<Nat>)>,
}

#[derive(Default)]
struct FlowMaps {
    by_flow: HashMap<FlowId, FlowSocket>,
    by_token: HashMap<u64, (FlowId, Arc<UdpSocket>)>,
}

struct FlowSocket {
    sock: Arc<UdpSocket>,
    /// When a datagram that reaches the daemon next offers the flow to the kernel again (ms):
    /// the kernel may not have taken it when it was opened (its container not served yet, as
    /// just after a hand-over, or captured meanwhile).
    offer_at: AtomicU64,
}

/// How often a flow the kernel does not carry is offered to it again.
const OFFER_EVERY_MS: u64 = 1000;

impl UdpFlows {
    /// The socket of `flow`, if the service has opened it, and whether to offer the flow to the
    /// kernel again now (`carry`): at most once a second.
    pub fn get(&self, flow: FlowId, now: u64) -> Option<(Arc<UdpSocket>, bool)> {
        let maps = self.maps.read().unwrap_or_else(|e| e.into_inner());
        let f = maps.by_flow.get(&flow)?;
        let at = f.offer_at.load(Ordering::Relaxed);
        let next = now + OFFER_EVERY_MS;
        let offer = now >= at
            && (f.offer_at)
                .compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        Some((f.sock.clone(), offer))
    }

    /// From now on the flows are handed to the kernel where it can carry them, by `translator`:
    /// each as its socket opens, those open already at their next datagram.
    pub fn carry_with(&self, translator: Arc<Translator>, nat: Arc<Nat>) {
        let _ = self.kernel.set((translator, nat));
    }

    /// Hands `flow`, whose socket is `sock`, to the kernel if it can carry it.
    pub(super) fn carry(&self, flow: FlowId, sock: &UdpSocket) {
        let Some((translator, nat)) = self.kernel.get() else {
            return;
        };
        if let Ok(std::net::SocketAddr::V4(host)) = sock.local_addr() {
            translator.carry(nat, flow, Some(host));
        }
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
            let f = FlowSocket {
                sock: sock.clone(),
                offer_at: AtomicU64::new(0),
            };
            maps.by_flow.insert(flow, f);
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
        self.carry(flow, sock);
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
                // Sent before the flow may go to the kernel (`UdpFlows::add`): the next
                // datagrams must not overtake it. A reply waits in the socket meanwhile.
                let failed = send_segments(|chunk| sock.send(chunk), payload, gso_size);
                self.udp.send_failed.fetch_add(failed, Ordering::Relaxed);
                let entry = Entry::Udp {
                    flow,
                    sock: Arc::new(sock),
                    _lease: lease,
                };
                if let Some(token) = self.add_entry(IN, entry) {
                    self.udp_by_flow.insert(flow, token);
                }
                return;
            }
        };
        if let Some(Entry::Udp { sock, .. }) = self.entries.get(&token) {
            let failed = send_segments(|chunk| sock.send(chunk), payload, gso_size);
            self.udp.send_failed.fetch_add(failed, Ordering::Relaxed);
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

/// Most datagrams in one UDP GSO send: what every kernel with UDP GSO (4.18+) takes
/// (`UDP_MAX_SEGMENTS`, raised on later kernels).
const MAX_SEGMENTS: usize = 64;
/// Most bytes of datagrams in one UDP GSO send (one IPv4 packet's worth).
const MAX_GSO_BYTES: usize = 65_000;

/// A worker's datagrams to one flow's socket, gathered over a batch of frames and sent with one
/// system call: a run of datagrams of the same size (the last may be shorter) goes as one UDP
/// GSO send (`UDP_SEGMENT`), which the kernel cuts back into the same datagrams. A container
/// that sends small datagrams fast then costs the worker one `sendmsg` and one pass through the
/// host's UDP and IP output per batch instead of per datagram. A datagram for another socket,
/// or one that does not fit the run, sends the run first: each flow's order is kept.
#[derive(Default)]
pub struct UdpBatch {
    sock: Option<Arc<UdpSocket>>,
    /// The size of each datagram in the run (the first's).
    seg: usize,
    count: usize,
    /// A shorter datagram ended the run.
    closed: bool,
    buf: Vec<u8>,
    /// Datagrams the socket refused since [`UdpBatch::take_failed`].
    failed: u64,
}

impl UdpBatch {
    /// Adds `payload`, a datagram for `sock`; cut into `gso_size` pieces when it is a UDP GSO
    /// super-datagram.
    pub fn push(&mut self, sock: &Arc<UdpSocket>, payload: &[u8], gso_size: u16) {
        if gso_size == 0 || payload.len() <= usize::from(gso_size) {
            return self.push_one(sock, payload);
        }
        for chunk in payload.chunks(usize::from(gso_size)) {
            self.push_one(sock, chunk);
        }
    }

    fn push_one(&mut self, sock: &Arc<UdpSocket>, payload: &[u8]) {
        let joins = self.sock.as_ref().is_some_and(|s| Arc::ptr_eq(s, sock))
            && !self.closed
            && !payload.is_empty()
            && payload.len() <= self.seg
            && self.count < MAX_SEGMENTS
            && self.buf.len() + payload.len() <= MAX_GSO_BYTES;
        if !joins {
            self.flush();
            if payload.is_empty() {
                // No run of empty datagrams: a segment size of 0 means none.
                self.failed += u64::from(sock.send(payload).is_err());
                return;
            }
            self.sock = Some(sock.clone());
            self.seg = payload.len();
        }
        self.closed = payload.len() < self.seg;
        self.buf.extend_from_slice(payload);
        self.count += 1;
    }

    /// How many datagrams the sockets refused since the last call.
    pub fn take_failed(&mut self) -> u64 {
        std::mem::take(&mut self.failed)
    }

    /// Sends what was gathered.
    pub fn flush(&mut self) {
        let Some(sock) = self.sock.take() else {
            return;
        };
        if self.count > 1 && send_gso(&sock, &self.buf, self.seg as u16).is_ok() {
            // Sent whole.
        } else {
            // One datagram, or a path the kernel cannot segment for (e.g. datagrams it must
            // fragment): one by one, as the container sent them.
            for d in self.buf.chunks(self.seg) {
                self.failed += u64::from(sock.send(d).is_err());
            }
        }
        self.buf.clear();
        (self.count, self.closed) = (0, false);
    }
}

/// Sends `buf` as datagrams of `seg` bytes (the last may be shorter) in one system call.
fn send_gso(sock: &UdpSocket, buf: &[u8], seg: u16) -> nix::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(buf)];
    let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
}

/// Sends `payload`, cut into `gso_size` pieces when it is a UDP GSO super-datagram; returns how
/// many datagrams `send` refused.
pub(super) fn send_segments(
    mut send: impl FnMut(&[u8]) -> io::Result<usize>,
    payload: &[u8],
    gso_size: u16,
) -> u64 {
    if gso_size == 0 || payload.len() <= usize::from(gso_size) {
        return u64::from(send(payload).is_err());
    }
    (payload.chunks(usize::from(gso_size)))
        .map(|chunk| u64::from(send(chunk).is_err()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket connected to a receiver on loopback, and the receiver.
    fn pair() -> (Arc<UdpSocket>, UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        (Arc::new(tx), rx)
    }

    fn received(rx: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 70_000];
        (0..n)
            .map(|_| {
                let len = rx.recv(&mut buf).unwrap();
                buf[..len].to_vec()
            })
            .collect()
    }

    fn datagram(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 31 + j) as u8).collect()
    }

    #[test]
    fn a_batch_delivers_each_datagram_whole_and_in_order() {
        let (a, rx_a) = pair();
        let (b, rx_b) = pair();
        let mut batch = UdpBatch::default();
        // A run of 100 same-size datagrams (two GSO sends: 64 at most in one), a shorter one
        // that ends the run, a longer one, an empty one; another flow's in between.
        let mut want_a: Vec<Vec<u8>> = (0..100).map(|i| datagram(i, 64)).collect();
        want_a.extend([datagram(100, 10), datagram(101, 1400), vec![]]);
        let want_b = vec![datagram(7, 64), datagram(8, 64)];
        for (i, d) in want_a.iter().enumerate() {
            batch.push(&a, d, 0);
            if i == 50 {
                for d in &want_b {
                    batch.push(&b, d, 0);
                }
            }
        }
        // A container's own GSO super-datagram, cut as it says.
        let sup: Vec<u8> = (0..2500).map(|j| j as u8).collect();
        batch.push(&a, &sup, 1000);
        batch.flush();
        want_a.extend(sup.chunks(1000).map(<[u8]>::to_vec));
        assert_eq!(received(&rx_a, want_a.len()), want_a);
        assert_eq!(received(&rx_b, want_b.len()), want_b);
        // The kernel takes the GSO send here (else the batch fell back to one by one).
        assert_eq!(send_gso(&a, &[5u8; 150], 64), Ok(150));
        assert_eq!(
            received(&rx_a, 3),
            vec![vec![5; 64], vec![5; 64], vec![5; 22]]
        );
        // Nothing left over, nothing sent twice.
        rx_a.set_nonblocking(true).unwrap();
        assert!(rx_a.recv(&mut [0u8; 100]).is_err());
    }

    #[test]
    fn datagrams_a_socket_refuses_are_counted() {
        let (a, rx) = pair();
        // Past the largest UDP datagram: refused (EMSGSIZE), in a batch or alone.
        let mut batch = UdpBatch::default();
        batch.push(&a, &[1; 100], 0);
        batch.push(&a, &vec![0; 70_000], 0);
        batch.push(&a, &[2; 100], 0);
        batch.flush();
        assert_eq!(batch.take_failed(), 1);
        assert_eq!(batch.take_failed(), 0);
        assert_eq!(received(&rx, 2), vec![vec![1; 100], vec![2; 100]]);
        batch.push(&a, &vec![0; 70_000], 0);
        batch.flush();
        assert_eq!(batch.take_failed(), 1);
        let too_big = |_: &[u8]| Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        assert_eq!(send_segments(too_big, &[0; 2500], 1000), 3);
    }

    #[test]
    fn splits_gso_datagrams() {
        let mut sent = Vec::new();
        let mut record = |c: &[u8]| {
            sent.push(c.len());
            Ok(c.len())
        };
        assert_eq!(send_segments(&mut record, &[0u8; 2500], 1000), 0);
        assert_eq!(send_segments(&mut record, &[0u8; 500], 0), 0);
        assert_eq!(sent, vec![1000, 1000, 500, 500]);
    }
}
