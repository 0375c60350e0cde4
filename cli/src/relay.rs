//! Byte relay between two connected TCP sockets, one thread per direction.
//!
//! Data moves with `splice` through a pipe, so it never enters user space. End of stream on one
//! side becomes a half-close (`shutdown(SHUT_WR)`) on the other; a reset on one side becomes a
//! reset on the other (close with a zero linger), so the container sees what the far end did.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// Bytes a pipe may hold; larger pipes mean fewer `splice` calls per byte.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// Relays `a` <-> `b` until both directions are finished, then calls `done`.
pub fn spawn(a: TcpStream, b: TcpStream, done: impl FnOnce() + Send + 'static) -> io::Result<()> {
    let a = Arc::new(a);
    let b = Arc::new(b);
    let (a2, b2) = (a.clone(), b.clone());
    let back = std::thread::Builder::new()
        .name("vswitch-relay".into())
        .stack_size(64 * 1024)
        .spawn(move || pump(&b2, &a2))?;
    std::thread::Builder::new()
        .name("vswitch-relay".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            pump(&a, &b);
            let _ = back.join();
            done();
        })?;
    Ok(())
}

/// How one direction ended.
enum End {
    /// The source closed cleanly: pass a FIN on.
    Eof,
    /// The source was reset (or failed): reset the destination too.
    Reset,
    /// The destination failed: stop reading the source.
    SinkGone,
}

fn pump(from: &TcpStream, to: &TcpStream) {
    let end = match Pipe::new() {
        Ok(pipe) => splice_loop(from, to, &pipe),
        Err(_) => End::Reset,
    };
    match end {
        End::Eof => {
            let _ = to.shutdown(Shutdown::Write);
        }
        End::Reset => {
            // A zero linger turns the close into a RST. Shutting down both ways wakes the
            // other direction's thread, which then finds its socket reset or closed.
            linger_zero(to);
            reset(to);
            let _ = from.shutdown(Shutdown::Both);
        }
        End::SinkGone => {
            linger_zero(from);
            reset(from);
        }
    }
}

/// Makes the next close (or disconnect) of `s` send a RST instead of a FIN.
pub fn linger_zero(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid struct linger for the call's duration.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Sends a RST now (close with zero linger), while keeping the descriptor open for the other
/// thread: `shutdown` alone would send a FIN, so the socket is disconnected with AF_UNSPEC.
fn reset(s: &TcpStream) {
    // SAFETY: connect() with an AF_UNSPEC address on a TCP socket aborts the connection (RST when
    // SO_LINGER is zero) and leaves the descriptor valid.
    unsafe {
        let addr: libc::sockaddr = std::mem::zeroed();
        libc::connect(
            s.as_raw_fd(),
            &addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        );
    }
}

fn splice_loop(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> End {
    loop {
        let n = match splice(from.as_raw_fd(), pipe.write.as_raw_fd(), PIPE_SIZE as usize) {
            Ok(0) => return End::Eof,
            Ok(n) => n,
            Err(_) => return End::Reset,
        };
        let mut left = n;
        while left > 0 {
            match splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left) {
                Ok(0) | Err(_) => return End::SinkGone,
                Ok(m) => left -= m,
            }
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: plain system call on descriptors we hold.
        let ret = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE,
            )
        };
        if ret >= 0 {
            return Ok(ret as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and ours.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Best effort: a bigger pipe moves more per call; the default 64 KiB still works.
        // SAFETY: plain fcntl on our descriptor.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(Pipe { read, write })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    /// A connected pair of loopback sockets.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    #[test]
    fn relays_both_ways_and_passes_half_close_on() {
        let (mut client, relay_a) = pair();
        let (relay_b, mut server) = pair();
        let (tx, rx) = std::sync::mpsc::channel();
        spawn(relay_a, relay_b, move || tx.send(()).unwrap()).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        client.write_all(&data).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap(); // ends: the half-close came through
        assert!(got == data);
        server.write_all(b"reply").unwrap();
        drop(server);
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, b"reply");
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn passes_a_reset_on() {
        let (mut client, relay_a) = pair();
        let (relay_b, server) = pair();
        spawn(relay_a, relay_b, || {}).unwrap();
        linger_zero(&server);
        drop(server); // RST
        let mut buf = [0u8; 16];
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let err = client.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
