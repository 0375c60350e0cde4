//! DNS forwarder on the gateway address: containers' queries go to the host's upstream
//! resolvers, over UDP and over TCP (for answers too large for a datagram).
//!
//! The forwarder listens on the gateway's address in the host namespace; queries arrive through
//! the TAP like any traffic to the host. Upstreams are reached with ordinary host sockets, so a
//! loopback stub such as 127.0.0.53 works too when it is all the host has.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::observe::histogram::{self, Histogram};
use crate::observe::limit::RateLimit;

use super::budget::FdBudget;

/// Queries forwarded at once; past this, new queries are dropped (the client retries).
const MAX_INFLIGHT: usize = 256;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// What the forwarder did so far (`vswitch stats`, `/metrics`). Bumped once per query or
/// connection, never per packet.
#[derive(Debug)]
pub struct DnsCounters {
    /// Queries received over UDP (well-formed enough to forward).
    pub udp_queries: AtomicU64,
    /// UDP queries no upstream answered.
    pub udp_failed: AtomicU64,
    /// DNS-over-TCP connections accepted (a connection may carry several queries).
    pub tcp_connections: AtomicU64,
    /// Connections for which no upstream accepted one.
    pub tcp_failed: AtomicU64,
    /// Queries and connections dropped unserved: too many in flight, or no descriptor.
    pub dropped: AtomicU64,
    /// From a UDP query's arrival to its answer going back.
    pub latency: Histogram,
    /// Upstream failures are logged at most every 10 s.
    log: RateLimit,
}

impl Default for DnsCounters {
    fn default() -> DnsCounters {
        DnsCounters {
            udp_queries: AtomicU64::new(0),
            udp_failed: AtomicU64::new(0),
            tcp_connections: AtomicU64::new(0),
            tcp_failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            latency: Histogram::new(histogram::ROUND_TRIP),
            log: RateLimit::new(10_000),
        }
    }
}

impl DnsCounters {
    /// No upstream served a query (or a connection): counted, and logged now and then.
    fn upstream_failed(&self, transport: &'static str, why: &str) {
        let failed = match transport {
            "tcp" => &self.tcp_failed,
            _ => &self.udp_failed,
        };
        failed.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(
                transport = %transport,
                suppressed,
                "DNS upstreams failed, a container's query goes unanswered: {why}"
            );
        }
    }
}

/// Binds UDP and TCP port 53 on `gateway` and serves them on background threads, counting
/// into `counters`. Returns the two sockets' descriptors (they live as long as the process),
/// for a hand-over.
pub fn start(
    gateway: Ipv4Addr,
    upstreams: Vec<SocketAddr>,
    budget: Arc<FdBudget>,
    counters: Arc<DnsCounters>,
) -> io::Result<[RawFd; 2]> {
    let udp = UdpSocket::bind((gateway, 53))?;
    let tcp = TcpListener::bind((gateway, 53))?;
    let fds = [udp.as_raw_fd(), tcp.as_raw_fd()];
    serve(udp, tcp, upstreams, budget, counters)?;
    Ok(fds)
}

/// Serves DNS on sockets bound already (by this process, or by one that handed them over),
/// counting into `counters`.
pub fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    upstreams: Vec<SocketAddr>,
    budget: Arc<FdBudget>,
    counters: Arc<DnsCounters>,
) -> io::Result<()> {
    // Blocking, whatever the process that bound them set.
    udp.set_nonblocking(false)?;
    tcp.set_nonblocking(false)?;
    let upstreams = Arc::new(upstreams);
    let (up, udp_budget, udp_counters) = (upstreams.clone(), budget.clone(), counters.clone());
    std::thread::Builder::new()
        .name("vswitch-dns-udp".into())
        .spawn(move || serve_udp(udp, up, udp_budget, udp_counters))?;
    std::thread::Builder::new()
        .name("vswitch-dns-tcp".into())
        .spawn(move || serve_tcp(tcp, upstreams, budget, counters))?;
    Ok(())
}

fn serve_udp(
    socket: UdpSocket,
    upstreams: Arc<Vec<SocketAddr>>,
    budget: Arc<FdBudget>,
    counters: Arc<DnsCounters>,
) {
    let socket = Arc::new(socket);
    let inflight = Arc::new(AtomicUsize::new(0));
    let mut buf = [0u8; 65536];
    loop {
        let Ok((len, client)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if len < 12 {
            continue; // not a DNS message
        }
        let received = Instant::now();
        counters.udp_queries.fetch_add(1, Ordering::Relaxed);
        if inflight.load(Ordering::Relaxed) >= MAX_INFLIGHT {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue; // overloaded: drop, the client retries
        }
        // A query's socket upstream is paid for from the budget, like a flow's.
        let Some(lease) = budget.lease(1, client_v4(client), "a DNS query") else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let query = buf[..len].to_vec();
        let (socket, upstreams, count) = (socket.clone(), upstreams.clone(), inflight.clone());
        let counters = counters.clone();
        inflight.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("vswitch-dns-q".into())
            .spawn(move || {
                match ask_udp(&query, &upstreams) {
                    Ok(answer) => {
                        let _ = socket.send_to(&answer, client);
                        counters.latency.observe(received.elapsed());
                    }
                    Err(why) => counters.upstream_failed("udp", &why),
                }
                drop(lease);
                count.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Asks each upstream in turn; the first answer carrying the query's ID wins. Without one,
/// says what each upstream did.
fn ask_udp(query: &[u8], upstreams: &[SocketAddr]) -> Result<Vec<u8>, String> {
    let mut why = Vec::new();
    for upstream in upstreams {
        let local: SocketAddr = if upstream.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = match UdpSocket::bind(local) {
            Ok(sock) => sock,
            Err(e) => {
                why.push(format!("{upstream}: {e}"));
                continue;
            }
        };
        if let Err(e) = sock.connect(upstream).and_then(|_| sock.send(query)) {
            why.push(format!("{upstream}: {e}"));
            continue;
        }
        let _ = sock.set_read_timeout(Some(UPSTREAM_TIMEOUT));
        let mut buf = vec![0u8; 65536];
        loop {
            match sock.recv(&mut buf) {
                Ok(len) if len >= 12 && buf[..2] == query[..2] => {
                    buf.truncate(len);
                    return Ok(buf);
                }
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    why.push(format!("{upstream}: no answer within {UPSTREAM_TIMEOUT:?}"));
                    break;
                }
                Err(e) => {
                    why.push(format!("{upstream}: {e}"));
                    break;
                }
            }
        }
    }
    if why.is_empty() {
        why.push("no upstream resolver configured".into());
    }
    Err(why.join("; "))
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

fn serve_tcp(
    listener: TcpListener,
    upstreams: Arc<Vec<SocketAddr>>,
    budget: Arc<FdBudget>,
    counters: Arc<DnsCounters>,
) {
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
        counters.tcp_connections.fetch_add(1, Ordering::Relaxed);
        let Some(lease) = lease else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue; // closed at once: the client retries or tries another server
        };
        let (upstreams, counters) = (upstreams.clone(), counters.clone());
        let _ = std::thread::Builder::new()
            .name("vswitch-dns-tcp".into())
            .spawn(move || {
                if let Err(why) = relay_tcp(conn, &upstreams) {
                    counters.upstream_failed("tcp", &why);
                }
                drop(lease);
            });
    }
}

/// DNS over TCP: the stream is relayed as is to the first upstream that accepts; an error
/// says why none did.
fn relay_tcp(client: TcpStream, upstreams: &[SocketAddr]) -> Result<(), String> {
    let mut why = Vec::new();
    let upstream = upstreams.iter().find_map(|addr| {
        TcpStream::connect_timeout(addr, UPSTREAM_TIMEOUT)
            .map_err(|e| why.push(format!("{addr}: {e}")))
            .ok()
    });
    let Some(upstream) = upstream else {
        if why.is_empty() {
            why.push("no upstream resolver configured".into());
        }
        return Err(why.join("; "));
    };
    let idle = Some(Duration::from_secs(30));
    for s in [&client, &upstream] {
        let _ = s.set_read_timeout(idle);
    }
    let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream.try_clone()) else {
        return Ok(());
    };
    let back = std::thread::spawn(move || pump(upstream2, client2));
    pump(client, upstream);
    let _ = back.join();
    Ok(())
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
