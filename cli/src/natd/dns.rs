//! DNS forwarder on the gateway address: containers' queries go to the host's upstream
//! resolvers, over UDP and over TCP (for answers too large for a datagram).
//!
//! The forwarder listens on the gateway's address in the host namespace; queries arrive through
//! the TAP like any traffic to the host. Upstreams are reached with ordinary host sockets, so a
//! loopback stub such as 127.0.0.53 works too when it is all the host has.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::budget::FdBudget;

/// Queries forwarded at once; past this, new queries are dropped (the client retries).
const MAX_INFLIGHT: usize = 256;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds UDP and TCP port 53 on `gateway` and serves them on background threads. Returns the
/// two sockets' descriptors (they live as long as the process), for a hand-over.
pub fn start(
    gateway: Ipv4Addr,
    upstreams: Vec<SocketAddr>,
    budget: Arc<FdBudget>,
) -> io::Result<[RawFd; 2]> {
    let udp = UdpSocket::bind((gateway, 53))?;
    let tcp = TcpListener::bind((gateway, 53))?;
    let fds = [udp.as_raw_fd(), tcp.as_raw_fd()];
    serve(udp, tcp, upstreams, budget)?;
    Ok(fds)
}

/// Serves DNS on sockets bound already (by this process, or by one that handed them over).
pub fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    upstreams: Vec<SocketAddr>,
    budget: Arc<FdBudget>,
) -> io::Result<()> {
    // Blocking, whatever the process that bound them set.
    udp.set_nonblocking(false)?;
    tcp.set_nonblocking(false)?;
    let upstreams = Arc::new(upstreams);
    let (up, udp_budget) = (upstreams.clone(), budget.clone());
    std::thread::Builder::new()
        .name("vswitch-dns-udp".into())
        .spawn(move || serve_udp(udp, up, udp_budget))?;
    std::thread::Builder::new()
        .name("vswitch-dns-tcp".into())
        .spawn(move || serve_tcp(tcp, upstreams, budget))?;
    Ok(())
}

fn serve_udp(socket: UdpSocket, upstreams: Arc<Vec<SocketAddr>>, budget: Arc<FdBudget>) {
    let socket = Arc::new(socket);
    let inflight = Arc::new(AtomicUsize::new(0));
    let mut buf = [0u8; 65536];
    loop {
        let Ok((len, client)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if len < 12 || inflight.load(Ordering::Relaxed) >= MAX_INFLIGHT {
            continue; // not a DNS message, or overloaded: drop, the client retries
        }
        // A query's socket upstream is paid for from the budget, like a flow's.
        let Some(lease) = budget.lease(1, client_v4(client), "a DNS query") else {
            continue;
        };
        let query = buf[..len].to_vec();
        let (socket, upstreams, count) = (socket.clone(), upstreams.clone(), inflight.clone());
        inflight.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("vswitch-dns-q".into())
            .spawn(move || {
                if let Some(answer) = ask_udp(&query, &upstreams) {
                    let _ = socket.send_to(&answer, client);
                }
                drop(lease);
                count.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Asks each upstream in turn; the first answer carrying the query's ID wins.
fn ask_udp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let local: SocketAddr = if upstream.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = UdpSocket::bind(local) else {
            continue;
        };
        if sock.connect(upstream).is_err() || sock.send(query).is_err() {
            continue;
        }
        let _ = sock.set_read_timeout(Some(UPSTREAM_TIMEOUT));
        let mut buf = vec![0u8; 65536];
        while let Ok(len) = sock.recv(&mut buf) {
            if len >= 12 && buf[..2] == query[..2] {
                buf.truncate(len);
                return Some(buf);
            }
        }
    }
    None
}

/// The container a DNS client is (its queries count against its share of the descriptors).
fn client_v4(client: SocketAddr) -> Option<Ipv4Addr> {
    match client {
        SocketAddr::V4(a) => Some(*a.ip()),
        SocketAddr::V6(_) => None,
    }
}

/// Descriptors a DNS-over-TCP connection holds: both sockets and a clone of each.
const TCP_QUERY_FDS: usize = 4;

fn serve_tcp(listener: TcpListener, upstreams: Arc<Vec<SocketAddr>>, budget: Arc<FdBudget>) {
    loop {
        let lease = budget.lease(TCP_QUERY_FDS, None, "a DNS connection");
        let conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Out of descriptors, accept fails at once, again and again: pause.
                if budget.check(&e, "accepting a DNS connection") {
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
        };
        let Some(lease) = lease else {
            continue; // closed at once: the client retries or tries another server
        };
        let upstreams = upstreams.clone();
        let _ = std::thread::Builder::new()
            .name("vswitch-dns-tcp".into())
            .spawn(move || {
                relay_tcp(conn, &upstreams);
                drop(lease);
            });
    }
}

/// DNS over TCP: the stream is relayed as is to the first upstream that accepts.
fn relay_tcp(client: TcpStream, upstreams: &[SocketAddr]) {
    let Some(upstream) = upstreams
        .iter()
        .find_map(|addr| TcpStream::connect_timeout(addr, UPSTREAM_TIMEOUT).ok())
    else {
        return;
    };
    let idle = Some(Duration::from_secs(30));
    for s in [&client, &upstream] {
        let _ = s.set_read_timeout(idle);
    }
    let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let back = std::thread::spawn(move || pump(upstream2, client2));
    pump(client, upstream);
    let _ = back.join();
}

/// Copies until end of stream, then passes the half-close on.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16384];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
