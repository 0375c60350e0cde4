//! Ending a TIME_WAIT the host kernel keeps for a finished TCP connection, through the
//! `sock_diag` netlink interface (`SOCK_DESTROY`, as `ss -K` does).
//!
//! The relay terminates both legs of a relayed connection in the host's stack, so whichever leg
//! it closes first (passing on the FIN of the side that closed first) leaves a TIME_WAIT in the
//! host for 60 s, besides the one the real endpoint that closed first keeps. Through a kernel
//! NAT only that endpoint keeps one; the relay's own is ended once the connection is over (see
//! `datapath::relay`). This needs `CONFIG_INET_DIAG_DESTROY` and CAP_NET_ADMIN: without them
//! the first attempt fails, is logged once, and the relay stops trying (the NAT's choice of
//! relay ports keeps those TIME_WAITs out of new connections' way).
//!
//! The request names the connection by its addresses and by the socket's cookie
//! (`SO_COOKIE`, which the TIME_WAIT inherits), so that it can only ever end that socket: a
//! lookup by addresses alone would find the relay's listener once the TIME_WAIT is gone.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::sys::cvt;

/// `SOCK_DESTROY` from `linux/sock_diag.h`.
const SOCK_DESTROY: u16 = 21;
/// `TCP_TIME_WAIT` in the kernel's TCP state numbering.
const TCP_TIME_WAIT: u32 = 6;
const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;

/// A netlink socket for `sock_diag` requests.
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

/// What ending a TIME_WAIT needs to know of the socket, taken while it is still connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEnds {
    pub local: SocketAddrV4,
    pub peer: SocketAddrV4,
    pub cookie: u64,
}

impl TcpEnds {
    /// The addresses and cookie of connected IPv4 TCP socket `fd`.
    pub fn of(fd: RawFd) -> io::Result<TcpEnds> {
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: `cookie` and `len` are live and sized for a u64.
        cvt(unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                &mut cookie as *mut u64 as *mut libc::c_void,
                &mut len,
            )
        })?;
        Ok(TcpEnds {
            local: sock_name(fd, false)?,
            peer: sock_name(fd, true)?,
            cookie,
        })
    }
}

fn sock_name(fd: RawFd, peer: bool) -> io::Result<SocketAddrV4> {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let p = &mut sa as *mut libc::sockaddr_in as *mut libc::sockaddr;
    // SAFETY: `sa` and `len` are live and sized for a sockaddr_in.
    cvt(unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    })?;
    if i32::from(sa.sin_family) != libc::AF_INET {
        return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
    }
    Ok(SocketAddrV4::new(
        u32::from_be(sa.sin_addr.s_addr).into(),
        u16::from_be(sa.sin_port),
    ))
}

impl SockDiag {
    pub fn new() -> io::Result<SockDiag> {
        let flags = libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
        // SAFETY: plain system call.
        let fd = cvt(unsafe { libc::socket(libc::AF_NETLINK, flags, libc::NETLINK_SOCK_DIAG) })?;
        // SAFETY: `fd` is fresh and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SockDiag { fd, seq: 0 })
    }

    /// Ends the TIME_WAIT of the TCP connection `ends` describes. `Ok` once it is gone;
    /// `ENOENT` or `ESTALE` when there was none (the socket was not the one that closed first),
    /// `EOPNOTSUPP` or `EPERM` when this kernel or process cannot.
    pub fn end_time_wait(&mut self, ends: &TcpEnds) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = [0u8; NLMSG_HDR_LEN + REQ_LEN];
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        msg[0..4].copy_from_slice(&((NLMSG_HDR_LEN + REQ_LEN) as u32).to_ne_bytes());
        msg[4..6].copy_from_slice(&SOCK_DESTROY.to_ne_bytes());
        msg[6..8].copy_from_slice(&flags.to_ne_bytes());
        msg[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        let req = &mut msg[NLMSG_HDR_LEN..];
        req[0] = libc::AF_INET as u8;
        req[1] = libc::IPPROTO_TCP as u8;
        req[4..8].copy_from_slice(&(1u32 << TCP_TIME_WAIT).to_ne_bytes());
        // struct inet_diag_sockid: ports and addresses in network order, the socket's own first.
        req[8..10].copy_from_slice(&ends.local.port().to_be_bytes());
        req[10..12].copy_from_slice(&ends.peer.port().to_be_bytes());
        req[12..16].copy_from_slice(&ends.local.ip().octets());
        req[28..32].copy_from_slice(&ends.peer.ip().octets());
        // idiag_if (44..48) stays 0; the cookie in two host-order halves, low first.
        req[48..52].copy_from_slice(&(ends.cookie as u32).to_ne_bytes());
        req[52..56].copy_from_slice(&((ends.cookie >> 32) as u32).to_ne_bytes());
        // SAFETY: `msg` is live for the call and we pass its length.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
            )
        };
        cvt(sent as i32)?;
        // The kernel answers within the send: the acknowledgement is already queued.
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: reading into our live buffer of the length we pass.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let n = cvt(n as i32)? as usize;
            if n < NLMSG_HDR_LEN + 4 {
                return Err(io::Error::from_raw_os_error(libc::EBADMSG));
            }
            let kind = u16::from_ne_bytes([buf[4], buf[5]]);
            let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
            if kind != libc::NLMSG_ERROR as u16 || seq != self.seq {
                continue; // an answer to an earlier request we gave up on
            }
            let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            return match err {
                0 => Ok(()),
                e => Err(io::Error::from_raw_os_error(-e)),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};

    /// Counts the TIME_WAIT sockets of `port` in /proc/net/tcp (state 06).
    fn time_waits(port: u16) -> usize {
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let port = format!(":{port:04X} ");
        (tcp.lines().skip(1))
            .filter(|l| l.contains(&port) && l.split_whitespace().nth(3) == Some("06"))
            .count()
    }

    /// Ends the TIME_WAIT that the side closing first keeps, and only that socket: not the
    /// listener on the same address, whose cookie differs.
    #[test]
    fn ends_the_time_wait_of_the_side_that_closed_first() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let ends = TcpEnds::of(server.as_raw_fd()).unwrap();
        assert_eq!(ends.local.port(), port);
        // The server closes first: it keeps the TIME_WAIT.
        server.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        drop(client);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while time_waits(port) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(server);
        let Ok(mut diag) = SockDiag::new() else {
            panic!("no sock_diag socket");
        };
        let wrong = TcpEnds {
            cookie: ends.cookie ^ 1,
            ..ends
        };
        assert!(diag.end_time_wait(&wrong).is_err(), "another cookie");
        match diag.end_time_wait(&ends) {
            Ok(()) => assert_eq!(time_waits(port), 0),
            // Kernels without CONFIG_INET_DIAG_DESTROY, and unprivileged runs.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EPERM)) => {}
            Err(e) => panic!("{e}"),
        }
        // The listener is untouched: a new connection is served.
        let mut again = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"ok").unwrap();
        let mut b = [0u8; 2];
        again.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ok");
    }
}
