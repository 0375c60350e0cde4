//! Passing descriptors to another process over a Unix stream socket (`SCM_RIGHTS`).
//!
//! The sender lists the descriptors it passes ([`FdOut`]: each gets an index that the message
//! names it by) and sends them in batches after the message; the receiver gets its own
//! descriptors for the same open files ([`FdIn`]), each to be taken once by its index.
//!
//! Bytes and descriptors travel on one stream: every read goes through `recvmsg` with room for
//! a batch of descriptors ([`FdStream`]), because a plain `read` over a message that carries
//! descriptors would close them.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Most descriptors in one message (the kernel's limit is 253, `SCM_MAX_FD`).
pub const BATCH: usize = 250;

/// Descriptors to pass, by index. They are borrowed: they must stay open until sent.
#[derive(Debug, Default)]
pub struct FdOut {
    fds: Vec<RawFd>,
}

impl FdOut {
    /// Lists `fd`; returns the index the message names it by.
    pub fn add(&mut self, fd: &impl AsRawFd) -> usize {
        self.add_raw(fd.as_raw_fd())
    }

    pub fn add_raw(&mut self, fd: RawFd) -> usize {
        self.fds.push(fd);
        self.fds.len() - 1
    }

    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// The descriptors listed, in index order.
    #[cfg(test)]
    pub fn raw(&self) -> &[RawFd] {
        &self.fds
    }

    /// Sends every descriptor listed, in batches of at most [`BATCH`], each batch with one
    /// byte of data.
    pub fn send(&self, sock: &UnixStream) -> io::Result<()> {
        for batch in self.fds.chunks(BATCH) {
            let data = [b'F'];
            let iov = [IoSlice::new(&data)];
            let cmsg = [ControlMessage::ScmRights(batch)];
            let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                .map_err(io::Error::from)?;
            if sent != 1 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg"));
            }
        }
        Ok(())
    }
}

/// Descriptors received, each taken once by its index.
#[derive(Debug, Default)]
pub struct FdIn {
    fds: Vec<Option<OwnedFd>>,
}

impl FdIn {
    pub fn new(fds: Vec<OwnedFd>) -> FdIn {
        FdIn {
            fds: fds.into_iter().map(Some).collect(),
        }
    }

    /// The descriptors not taken yet.
    pub fn raw(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.fds.iter().flatten().map(|fd| fd.as_raw_fd())
    }

    /// The descriptor the message names `index`; an index out of range or taken twice is an
    /// error (a malformed message).
    pub fn take(&mut self, index: usize) -> io::Result<OwnedFd> {
        (self.fds.get_mut(index).and_then(Option::take)).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("descriptor {index} is missing or named twice"),
            )
        })
    }

    /// Descriptors no part of the message named (closed when this is dropped).
    pub fn unused(&self) -> usize {
        self.fds.iter().filter(|f| f.is_some()).count()
    }
}

/// The reading end of a stream that carries descriptors: bytes are buffered, descriptors
/// collected in the order they came.
pub struct FdStream<'a> {
    sock: &'a UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
    deadline: Option<Instant>,
}

impl<'a> FdStream<'a> {
    /// Reads from `sock`, failing with `TimedOut` past `deadline`.
    pub fn new(sock: &'a UnixStream, deadline: Option<Instant>) -> FdStream<'a> {
        FdStream {
            sock,
            buf: Vec::new(),
            fds: Vec::new(),
            deadline,
        }
    }

    /// Reads more: at least one byte, or an error (`UnexpectedEof` at the end of the stream).
    fn fill(&mut self) -> io::Result<()> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
            }
            self.sock.set_read_timeout(Some(left))?;
        }
        let mut data = [0u8; 64 * 1024];
        let mut space = nix::cmsg_space!([RawFd; 253]);
        let (n, fds) = {
            let mut iov = [IoSliceMut::new(&mut data)];
            let msg = recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(|e| match e {
                nix::errno::Errno::EAGAIN => io::Error::new(io::ErrorKind::TimedOut, "timed out"),
                e => io::Error::from(e),
            })?;
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(list) = cmsg {
                    fds.extend(list);
                }
            }
            if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
                // Some were dropped by the kernel: the message cannot be whole.
                for fd in fds {
                    // SAFETY: received just now, ours alone.
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                }
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "descriptors truncated",
                ));
            }
            (msg.bytes, fds)
        };
        // SAFETY: the kernel just installed these descriptors in this process for us.
        self.fds.extend(
            fds.into_iter()
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
        );
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the other side closed the connection",
            ));
        }
        self.buf.extend_from_slice(&data[..n]);
        Ok(())
    }

    /// The next line, without its newline (at most `max` bytes).
    pub fn line(&mut self, max: usize) -> io::Result<String> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).take(end).collect();
                return String::from_utf8(line)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"));
            }
            if self.buf.len() > max {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            self.fill()?;
        }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Waits until `count` descriptors have come, and the one byte of each batch.
    pub fn fds(&mut self, count: usize) -> io::Result<FdIn> {
        let batches = count.div_ceil(BATCH);
        self.bytes(batches)?;
        while self.fds.len() < count {
            self.fill()?;
        }
        if self.fds.len() != count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} descriptors came, {count} announced", self.fds.len()),
            ));
        }
        Ok(FdIn::new(std::mem::take(&mut self.fds)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn descriptors_cross_in_batches_with_the_bytes_around_them() {
        let (a, b) = UnixStream::pair().unwrap();
        // More than one batch: pipes whose write ends we keep, to tell them apart.
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..BATCH + 7)
            .map(|_| nix::unistd::pipe().unwrap())
            .collect();
        let mut out = FdOut::default();
        for (read, _) in &pipes {
            out.add(read);
        }
        assert_eq!(out.len(), BATCH + 7);
        let sender = std::thread::spawn(move || {
            (&a).write_all(b"hello\n").unwrap();
            out.send(&a).unwrap();
            (&a).write_all(b"bye\n").unwrap();
            (a, pipes)
        });
        let mut s = FdStream::new(
            &b,
            Some(Instant::now() + std::time::Duration::from_secs(10)),
        );
        assert_eq!(s.line(100).unwrap(), "hello");
        let mut fds = s.fds(BATCH + 7).unwrap();
        assert_eq!(s.line(100).unwrap(), "bye");
        let (_a, pipes) = sender.join().unwrap();
        // Descriptor i is the read end of pipe i: what goes into its write end comes out.
        for i in [0, BATCH - 1, BATCH, BATCH + 6] {
            let read = fds.take(i).unwrap();
            nix::unistd::write(&pipes[i].1, &[i as u8]).unwrap();
            let mut byte = [0u8; 1];
            nix::unistd::read(&read, &mut byte).unwrap();
            assert_eq!(byte[0], i as u8);
        }
        assert!(fds.take(0).is_err(), "taken twice");
        assert!(fds.take(BATCH + 7).is_err(), "out of range");
        assert_eq!(fds.unused(), BATCH + 3);
    }
}
