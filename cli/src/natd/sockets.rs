//! The socket calls the NAT service makes that std does not offer: a non-blocking connect, and
//! a socket bound to an ephemeral port of the gateway before it connects.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::socket::{getsockname, getsockopt, setsockopt, sockopt, SockType, SockaddrIn};

use crate::bpf::fastpath::NAT_MARK;
use crate::control::PublishSpec;
use crate::kernel::sys::cvt;

use super::Listener;

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

const SOCKADDR_IN_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as _;

/// A new TCP socket of ours.
fn tcp_socket(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain system call.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | flags, 0) })?;
    // SAFETY: `fd` is fresh and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn connect(fd: &impl AsRawFd, dst: SocketAddrV4) -> io::Result<()> {
    let addr = sockaddr_in(dst);
    // SAFETY: `addr` is a valid sockaddr_in of the length we pass.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            SOCKADDR_IN_LEN,
        )
    };
    cvt(ret).map(drop)
}

/// Starts a non-blocking connect; the socket becomes writable when it is decided.
pub fn connect_nonblocking(dst: SocketAddrV4) -> io::Result<TcpStream> {
    let fd = tcp_socket(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    match connect(&fd, dst) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => Err(e),
        _ => Ok(TcpStream::from(fd)),
    }
}

/// Accepts a connection (IPv4) already non-blocking: no `ioctl` to make it so afterwards.
pub fn accept_nonblocking(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddrV4)> {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut peer: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = SOCKADDR_IN_LEN;
    let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: `peer` and `len` are live and sized for a sockaddr_in.
    let fd = cvt(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            &mut peer as *mut libc::sockaddr_in as *mut libc::sockaddr,
            &mut len,
            flags,
        )
    })?;
    // SAFETY: `fd` is fresh and nothing else owns it.
    let stream = TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if peer.sin_family != libc::AF_INET as libc::sa_family_t {
        return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
    }
    let ip = Ipv4Addr::from(u32::from_be(peer.sin_addr.s_addr));
    Ok((stream, SocketAddrV4::new(ip, u16::from_be(peer.sin_port))))
}

/// A TCP socket bound to a port of `gateway`, and that port: the first of `ports` that is free,
/// else an ephemeral port of the kernel's choice.
pub fn bound_tcp_socket(gateway: Ipv4Addr, ports: &[u16]) -> io::Result<(OwnedFd, u16)> {
    for &port in ports {
        if let Ok(bound) = bound_tcp_socket_at(gateway, port) {
            return Ok(bound);
        }
    }
    bound_tcp_socket_at(gateway, 0)
}

/// The host's ephemeral port range (`net.ipv4.ip_local_port_range`, read once).
pub fn local_port_range() -> (u16, u16) {
    static RANGE: OnceLock<(u16, u16)> = OnceLock::new();
    *RANGE.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range");
        let mut it = text.as_deref().unwrap_or("").split_whitespace();
        match (it.next().map(str::parse), it.next().map(str::parse)) {
            (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi && lo > 0 => (lo, hi),
            _ => (32768, 60999),
        }
    })
}

fn bind(fd: &impl AsRawFd, addr: SocketAddrV4) -> io::Result<()> {
    let addr = sockaddr_in(addr);
    // SAFETY: `addr` is a valid sockaddr_in of the length we pass.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            SOCKADDR_IN_LEN,
        )
    })
    .map(drop)
}

fn bound_tcp_socket_at(gateway: Ipv4Addr, port: u16) -> io::Result<(OwnedFd, u16)> {
    let fd = tcp_socket(libc::SOCK_CLOEXEC)?;
    mark_nat_socket(&fd)?;
    bind(&fd, SocketAddrV4::new(gateway, port))?;
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut local: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = SOCKADDR_IN_LEN;
    // SAFETY: `local` and `len` are live and sized for a sockaddr_in.
    cvt(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            &mut local as *mut libc::sockaddr_in as *mut libc::sockaddr,
            &mut len,
        )
    })?;
    Ok((fd, u16::from_be(local.sin_port)))
}

/// Connects a bound socket, giving up after `timeout`.
pub fn connect_blocking(
    fd: OwnedFd,
    dst: SocketAddrV4,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let stream = TcpStream::from(fd);
    // With a send timeout set, connect gives up after it.
    stream.set_write_timeout(Some(timeout))?;
    connect(&stream, dst)?;
    stream.set_write_timeout(None)?;
    Ok(stream)
}

/// Binds the TCP relay listeners on the gateway address (the host kernel terminates the
/// containers' outgoing TCP there). Several, so that one container port can reach several
/// destinations at once.
pub fn bind_relays(gateway: Ipv4Addr, count: usize) -> io::Result<Vec<(TcpListener, u16)>> {
    (0..count)
        .map(|_| {
            let l = TcpListener::bind((gateway, 0))?;
            // The connections it accepts inherit the mark.
            mark_nat_socket(&l)?;
            l.set_nonblocking(true)?;
            let port = l.local_addr()?.port();
            Ok((l, port))
        })
        .collect()
}

/// Marks a host socket whose segments to a container the NAT translates (the relay's side of a
/// relayed or published connection): the kernel fast path leaves those to the NAT, and carries
/// only what the host itself sends a container (`bpf::fastpath::NAT_MARK`). Needs
/// CAP_NET_ADMIN, as the daemon does anyway.
pub fn mark_nat_socket(fd: &impl AsFd) -> io::Result<()> {
    setsockopt(fd, sockopt::Mark, &NAT_MARK).map_err(io::Error::from)
}

/// Marks, among the descriptors a previous daemon handed over, every TCP socket bound to the
/// gateway's address (`mark_nat_socket`): a daemon that did not mark them may have made them.
/// Marking one that needs no mark (the DNS forwarder's) only leaves its segments to the NAT,
/// which passes them on.
pub fn mark_gateway_sockets(fds: impl Iterator<Item = RawFd>, gateway: Ipv4Addr) {
    for fd in fds {
        // SAFETY: `fd` is a live descriptor the caller owns for this call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let tcp = getsockopt(&fd, sockopt::SockType).is_ok_and(|t| t == SockType::Stream);
        let on_gateway = matches!(
            getsockname::<SockaddrIn>(fd.as_raw_fd()),
            Ok(addr) if addr.ip() == gateway
        );
        if tcp && on_gateway {
            let _ = mark_nat_socket(&fd);
        }
    }
}

/// Binds the host side of a published port (non-blocking).
pub fn bind_published(spec: &PublishSpec) -> io::Result<Listener> {
    if spec.udp {
        let sock = UdpSocket::bind(spec.host())?;
        sock.set_nonblocking(true)?;
        Ok(Listener::Udp(sock))
    } else {
        let listener = TcpListener::bind(spec.host())?;
        listener.set_nonblocking(true)?;
        Ok(Listener::Tcp(listener))
    }
}

/// Reserves the host's side of a translated connection to `dst`: a TCP socket in repair mode
/// (`TCP_REPAIR`, CAP_NET_ADMIN), connected without a segment sent, so that it holds the
/// host's address and a port for that four-tuple. No other connection of the host gets the
/// same four-tuple while it stays; closed in repair mode it sends nothing either. The port is
/// `from`'s if the host has it free (as a kernel NAT keeps a connection's port: a container that
/// reuses its port for a new connection to the same destination reuses the four-tuple the
/// remote end may still hold a TIME_WAIT of, which takes a newer SYN of the same four-tuple;
/// another one's SYN it would answer with an ACK). With an unspecified address in `from`, the
/// route's, and another port if that one is taken; with an address (a connection whose
/// four-tuple is fixed already), that address and port or nothing: bound to the one address,
/// it shares the port with the host's sockets on others. Returns it and its address.
pub fn reserve_tcp(dst: SocketAddrV4, from: SocketAddrV4) -> io::Result<(OwnedFd, SocketAddrV4)> {
    let reserve = |from: SocketAddrV4| -> io::Result<OwnedFd> {
        let fd = tcp_socket(libc::SOCK_CLOEXEC)?;
        setsockopt(&fd, sockopt::TcpRepair, &1).map_err(io::Error::from)?;
        setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(io::Error::from)?;
        if from.port() != 0 {
            bind(&fd, from)?;
        }
        connect(&fd, dst)?;
        Ok(fd)
    };
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    let fd = match reserve(from) {
        Err(_) if from.ip().is_unspecified() => reserve(any)?,
        fd => fd?,
    };
    let host: SockaddrIn = getsockname(fd.as_raw_fd()).map_err(io::Error::from)?;
    Ok((fd, SocketAddrV4::new(host.ip(), host.port())))
}

/// A raw IPv4 socket that sends packets as they are given (`IPPROTO_RAW`: the header too),
/// for the first SYN of a translated connection.
pub fn raw_ipv4_socket() -> io::Result<OwnedFd> {
    let flags = libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain system call.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, flags, libc::IPPROTO_RAW) })?;
    // SAFETY: `fd` is fresh and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends IPv4 packet `packet` (header included) to `dst` through raw socket `raw`.
pub fn send_raw(raw: &impl AsRawFd, packet: &[u8], dst: Ipv4Addr) -> io::Result<()> {
    let addr = sockaddr_in(SocketAddrV4::new(dst, 0));
    // SAFETY: `packet` and `addr` are live for the call at the lengths passed.
    cvt(unsafe {
        libc::sendto(
            raw.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            SOCKADDR_IN_LEN,
        )
    } as libc::c_int)
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::tests::need_root;

    fn mark_of(fd: &impl AsFd) -> u32 {
        getsockopt(fd, sockopt::Mark).unwrap()
    }

    /// A daemon that takes over marks what an older one may have left unmarked: the TCP sockets
    /// on the gateway's address, and nothing else.
    #[test]
    fn a_hand_over_marks_the_tcp_sockets_on_the_gateways_address_only() {
        need_root(); // SO_MARK needs CAP_NET_ADMIN
        let gateway = Ipv4Addr::new(127, 0, 0, 1);
        let on_gateway = TcpListener::bind((gateway, 0)).unwrap();
        let elsewhere = TcpListener::bind("127.0.0.2:0").unwrap();
        let udp = UdpSocket::bind((gateway, 0)).unwrap();
        let fds = [
            on_gateway.as_raw_fd(),
            elsewhere.as_raw_fd(),
            udp.as_raw_fd(),
        ];
        mark_gateway_sockets(fds.into_iter(), gateway);
        assert_eq!(mark_of(&on_gateway), NAT_MARK);
        assert_eq!((mark_of(&elsewhere), mark_of(&udp)), (0, 0));
        // New relay listeners and published connections' sockets are marked from the start.
        let (relay, _) = bind_relays(gateway, 1).unwrap().pop().unwrap();
        let (published, _) = bound_tcp_socket(gateway, &[]).unwrap();
        assert_eq!((mark_of(&relay), mark_of(&published)), (NAT_MARK, NAT_MARK));
        // What a relay listener accepts inherits its mark.
        let _client = TcpStream::connect(relay.local_addr().unwrap()).unwrap();
        relay.set_nonblocking(false).unwrap();
        let (accepted, _) = relay.accept().unwrap();
        assert_eq!(mark_of(&accepted), NAT_MARK);
    }
}
