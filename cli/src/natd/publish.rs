//! Published ports: host sockets that forward to a container.
//!
//! - TCP: each accepted client is connected to the container from an ephemeral port of the
//!   gateway and the two are spliced. The NAT rewrites that connection's segments so the
//!   container sees the client's real address, where the container could answer it (not for
//!   loopback and in-subnet clients: they appear as the gateway).
//! - UDP: the NAT writes the client's datagrams to the container as frames and sends the
//!   container's answers from the published socket. Loopback clients get a socket of their
//!   own on the gateway instead (`PubUdpLocal`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use vswitch_nat::NatError;

use crate::datapath::now_ms;
use crate::datapath::relay::linger_zero;
use crate::kernel::epoll::IN;

use super::budget::{Lease, TCP_RELAY, UDP_FLOW};
use super::service::{Entry, NatService};
use super::sockets::{bound_tcp_socket, connect_blocking, local_port_range};
use super::udp::send_segments;
use super::Listener;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway ports a published connection from `client` to `container` tries first, in the
/// host's ephemeral range: the same ones for the same client address and port. The container
/// sees the connection come from the client's address and port whatever the gateway port, so
/// when the client reuses a port, the container (which keeps a TIME_WAIT for the previous
/// connection, if it closed first) sees the same connection come back: from another gateway
/// port, the host's SYN would carry timestamps and a sequence number of another connection,
/// which that TIME_WAIT answers with an ACK, and the connection would wait a second for its SYN
/// to be sent again.
fn gateway_ports(client: SocketAddrV4, container: SocketAddrV4) -> Vec<u16> {
    use std::hash::BuildHasher;
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let start = KEY
        .get_or_init(Default::default)
        .hash_one((client, container));
    let (lo, hi) = local_port_range();
    let span = u64::from(hi - lo) + 1;
    (0..4)
        .map(|i| lo + (start.wrapping_add(i) % span) as u16)
        .collect()
}

/// One published connection being connected, counted while it lives.
struct Publishing(Arc<AtomicUsize>);

impl Publishing {
    fn start(count: &Arc<AtomicUsize>) -> Publishing {
        count.fetch_add(1, Ordering::SeqCst);
        Publishing(count.clone())
    }
}

impl Drop for Publishing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl NatService {
    /// Serves the published ports of `container` (already bound by the manager).
    pub(super) fn publish(
        &mut self,
        container: Ipv4Addr,
        mac: [u8; 6],
        ports: Vec<(Listener, u16)>,
    ) {
        for (listener, cport) in ports {
            let target = SocketAddrV4::new(container, cport);
            match listener {
                Listener::Tcp(listener) => {
                    let entry = Entry::PubTcp {
                        listener,
                        container: target,
                    };
                    self.add_entry(IN, entry);
                }
                Listener::Udp(sock) => {
                    let id = self.next_publish_id;
                    self.next_publish_id += 1;
                    let entry = Entry::PubUdp {
                        sock,
                        id,
                        container: target,
                        mac,
                    };
                    if let Some(token) = self.add_entry(IN, entry) {
                        self.pub_udp_by_id.insert(id, token);
                    }
                }
            }
        }
    }

    /// Closes the published ports of `container`.
    pub(super) fn unpublish(&mut self, container: Ipv4Addr) {
        let tokens: Vec<u64> = (self.entries.iter())
            .filter(|(_, e)| match e {
                Entry::PubTcp { container: c, .. }
                | Entry::PubUdp { container: c, .. }
                | Entry::PubUdpLocal { container: c, .. } => *c.ip() == container,
                _ => false,
            })
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            match self.remove_entry(token) {
                Some(Entry::PubUdp { id, .. }) => {
                    self.pub_udp_by_id.remove(&id);
                }
                Some(Entry::PubUdpLocal { id, client, .. }) => {
                    self.pub_udp_local.remove(&(id, client));
                }
                _ => {}
            }
        }
    }

    /// A container's datagram to a client of its published UDP port `id`.
    pub(super) fn udp_to_client(
        &mut self,
        id: u32,
        client: SocketAddrV4,
        payload: &[u8],
        gso_size: u16,
    ) {
        let published = self
            .pub_udp_by_id
            .get(&id)
            .and_then(|t| self.entries.get(t));
        if let Some(Entry::PubUdp { sock, .. }) = published {
            let failed = send_segments(|chunk| sock.send_to(chunk, client), payload, gso_size);
            (self.udp.send_failed).fetch_add(failed, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub(super) fn published_tcp_ready(&mut self, token: u64) {
        let Some(Entry::PubTcp { container, .. }) = self.entries.get(&token) else {
            return;
        };
        let container = *container;
        loop {
            // Leased before the accept: a client the daemon cannot serve is reset at once.
            let lease = self.budget.lease(
                TCP_RELAY,
                Some(*container.ip()),
                "a published TCP connection",
            );
            let Some(Entry::PubTcp { listener, .. }) = self.entries.get(&token) else {
                return;
            };
            let (client, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) => {
                    self.budget.check(&e, "accepting on a published port");
                    return;
                }
            };
            match lease {
                Some(lease) => self.publish_accept(client, peer, container, lease),
                None => linger_zero(&client),
            }
        }
    }

    /// A client reached a published TCP port: connect to the container from the gateway and
    /// relay, on a short thread of its own (the connect blocks).
    fn publish_accept(
        &self,
        client: TcpStream,
        peer: SocketAddr,
        container: SocketAddrV4,
        lease: Lease,
    ) {
        let client_v4 = match peer {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(_) => None,
        };
        let (nat, gateway, pool) = (self.nat.clone(), self.gateway, self.pool.clone());
        // Counted until the connection is relayed (or refused): a hand-over waits for these.
        let publishing = Publishing::start(&self.publishing);
        let _ = std::thread::Builder::new()
            .name("vswitch-publish".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let _publishing = publishing;
                let _ = client.set_nonblocking(false);
                let ports = client_v4
                    .map(|c| gateway_ports(c, container))
                    .unwrap_or_default();
                let Ok((socket, eph)) = bound_tcp_socket(gateway, &ports) else {
                    return;
                };
                // The mapping lives until the connection's own close has been translated (the
                // NAT expires it after TIME_WAIT); a leftover mapping of an ephemeral port the
                // host has since reused is replaced.
                let mapped = client_v4.is_some_and(|c| {
                    let now = now_ms();
                    match nat.publish_tcp(eph, container, c, now) {
                        Ok(_) => true,
                        Err(NatError::InUse) => {
                            nat.publish_tcp_done(eph)
                                && nat.publish_tcp(eph, container, c, now).is_ok()
                        }
                        Err(_) => false,
                    }
                });
                match connect_blocking(socket, container, CONNECT_TIMEOUT) {
                    Ok(upstream) => {
                        pool.relay(client, upstream, *container.ip(), move || drop(lease))
                    }
                    Err(_) => {
                        linger_zero(&client); // refused: the client sees a reset
                        if mapped {
                            nat.publish_tcp_done(eph);
                        }
                    }
                }
            });
    }

    pub(super) fn published_udp_ready(&mut self, token: u64) {
        let Some(&Entry::PubUdp {
            ref sock,
            id,
            container,
            mac,
        }) = self.entries.get(&token)
        else {
            return;
        };
        let mut local = Vec::new();
        while let Ok((n, peer)) = sock.recv_from(&mut self.buf) {
            let SocketAddr::V4(client) = peer else {
                continue;
            };
            // The NAT refuses clients the container could not answer (loopback, its subnet):
            // those go through a relay socket on the gateway instead.
            let datagram = &self.buf[..n];
            let now = now_ms();
            match (self.nat).publish_udp_in(
                id,
                container,
                client,
                mac,
                datagram,
                &mut self.out,
                now,
            ) {
                Ok(len) => self.fabric.to_containers(&self.out[..len]),
                Err(NatError::LocalClient) => local.push((peer, datagram.to_vec())),
                Err(_) => {}
            }
        }
        for (client, datagram) in local {
            self.local_udp_in(id, container, client, &datagram);
        }
    }

    /// A datagram from a loopback client of a published UDP port: relayed from a socket of its
    /// own on the gateway (the container sees the gateway as the source).
    fn local_udp_in(
        &mut self,
        id: u32,
        container: SocketAddrV4,
        client: SocketAddr,
        datagram: &[u8],
    ) {
        let token = match self.pub_udp_local.get(&(id, client)) {
            Some(t) => *t,
            None => {
                let Some(lease) =
                    self.budget
                        .lease(UDP_FLOW, Some(*container.ip()), "a published UDP client")
                else {
                    return;
                };
                let sock = match UdpSocket::bind((self.gateway, 0)) {
                    Ok(sock) => sock,
                    Err(e) => {
                        self.budget
                            .check(&e, "opening a published UDP client's socket");
                        return;
                    }
                };
                if sock.connect(container).is_err() || sock.set_nonblocking(true).is_err() {
                    return;
                }
                let entry = Entry::PubUdpLocal {
                    sock,
                    id,
                    container,
                    client,
                    last: Instant::now(),
                    _lease: lease,
                };
                let Some(token) = self.add_entry(IN, entry) else {
                    return;
                };
                self.pub_udp_local.insert((id, client), token);
                token
            }
        };
        if let Some(Entry::PubUdpLocal { sock, last, .. }) = self.entries.get_mut(&token) {
            let _ = sock.send(datagram);
            *last = Instant::now();
        }
    }

    /// The container answered a loopback client: send it from the published socket.
    pub(super) fn local_udp_ready(&mut self, token: u64) {
        let Some(&Entry::PubUdpLocal {
            ref sock,
            id,
            client,
            ..
        }) = self.entries.get(&token)
        else {
            return;
        };
        let published = self
            .pub_udp_by_id
            .get(&id)
            .and_then(|t| self.entries.get(t));
        while let Ok(n) = sock.recv(&mut self.buf) {
            if let Some(Entry::PubUdp { sock: out, .. }) = published {
                let _ = out.send_to(&self.buf[..n], client);
            }
        }
        if let Some(Entry::PubUdpLocal { last, .. }) = self.entries.get_mut(&token) {
            *last = Instant::now();
        }
    }

    pub(super) fn remove_local_udp(&mut self, token: u64) {
        if let Some(Entry::PubUdpLocal { id, client, .. }) = self.remove_entry(token) {
            self.pub_udp_local.remove(&(id, client));
        }
    }
}
