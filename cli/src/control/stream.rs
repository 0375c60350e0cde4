//! The daemon's side of a capture: the one request answered with more than one line.
//!
//! ```text
//! -> {"v":2,"cmd":"capture","ports":["vsw-4242"],"filter":{"proto":"icmp"},"count":null,...}
//! <- {"v":2,"ok":true,"data":{"ports":[{"port":1,"name":"vsw-4242",...}],...}}   (a line)
//! <- [frame record][frame record]...[end record]                                 (binary)
//! ```
//!
//! The records are `vswitch_capture::record`'s. The stream ends when the client closes its side
//! (or its whole connection, or dies), when `count` frames have been sent, or when the daemon
//! stops; the end record then says how many frames were sent and how many a slow client lost.
//! The datapath never waits for this thread: it fills the capture's bounded queue and drops
//! what does not fit (see `vswitch_capture::Session`).

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use vswitch_capture::record::encode_end;
use vswitch_capture::{Session, SessionConfig};

use super::protocol::{encode_response, Capture, CaptureEnd, Request};
use super::server::{ask, Call};

/// How long a write to a client that reads nothing may block before the capture is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the client's side is looked at while frames flow (an idle stream looks after
/// every `IDLE` without a frame).
const CHECK_EVERY: Duration = Duration::from_millis(100);
const IDLE: Duration = Duration::from_millis(100);
/// Records are written in chunks of about this many bytes.
const CHUNK: usize = 64 << 10;

/// Closes the session when the stream ends, however it ends.
struct Closing<'a>(&'a Session);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

pub(super) fn serve(conn: UnixStream, capture: Capture, calls: &Sender<Call>) -> io::Result<()> {
    let mut config = SessionConfig::new(capture.filter);
    config.count = capture.count;
    if let Some(snaplen) = capture.snaplen {
        config.snaplen = snaplen as usize;
    }
    let count = capture.count;
    let session = Session::new(config);
    let _closing = Closing(&session);
    let answer = ask(
        calls,
        Request::Capture(capture),
        None,
        Some(session.clone()),
    );
    let mut header = encode_response(&answer);
    header.push(b'\n');
    (&conn).write_all(&header)?;
    if answer.is_err() {
        return Ok(());
    }
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let (frames, reason) = stream(&conn, &session, count)?;
    session.close();
    let end = CaptureEnd {
        frames,
        dropped: session.dropped(),
        reason: reason.to_string(),
    };
    let mut out = Vec::new();
    encode_end(&serde_json::to_vec(&end)?, &mut out);
    (&conn).write_all(&out)
}

/// Sends the session's frames until one side is done; returns how many went and why it ended.
fn stream(
    conn: &UnixStream,
    session: &Session,
    count: Option<u64>,
) -> io::Result<(u64, &'static str)> {
    let mut buf = Vec::with_capacity(2 * CHUNK);
    let mut frames = 0u64;
    let mut checked = Instant::now();
    let reason = loop {
        if count.is_some_and(|n| frames >= n) {
            break "count";
        }
        if session.is_closed() {
            break "daemon";
        }
        match session.next(IDLE) {
            Some(record) => {
                record.encode(&mut buf);
                frames += 1;
                // Out as soon as the queue is drained: a capture piped into `tcpdump -r -`
                // shows each frame when it comes, not a chunk later.
                if buf.len() >= CHUNK || session.is_empty() {
                    (&*conn).write_all(&buf)?;
                    buf.clear();
                }
                if checked.elapsed() < CHECK_EVERY {
                    continue;
                }
            }
            None => {
                (&*conn).write_all(&buf)?;
                buf.clear();
            }
        }
        checked = Instant::now();
        if client_done(conn) {
            break "client";
        }
    };
    (&*conn).write_all(&buf)?;
    Ok((frames, reason))
}

/// Whether the client closed its side (it sends nothing after its request: a shutdown of its
/// writing side asks to stop) or went away.
fn client_done(conn: &UnixStream) -> bool {
    let mut fd = libc::pollfd {
        fd: conn.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one live pollfd, no wait.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready > 0 && fd.revents != 0
}
