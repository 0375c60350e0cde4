//! The daemon's side of the control socket.
//!
//! The socket is root-only (mode 0600): whoever can talk to it can reconfigure the network of
//! any process on the host.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vswitch_capture::Session;

use super::protocol::{
    decode_request, encode_response, ErrorCode, Failure, Reply, Request, MAX_REQUEST,
};

/// A request on its way to the manager thread, with where to send the answer.
pub struct Call {
    pub request: Request,
    pub reply: Sender<Result<Reply, Failure>>,
    /// The connection itself, for a `handover` (the manager answers on it, with descriptors).
    pub conn: Option<UnixStream>,
    /// A `capture` request's session, for the manager to attach to the ports it names.
    pub capture: Option<Arc<Session>>,
}

/// Binds the control socket at `path`, refusing to steal it from a live daemon but replacing a
/// stale one left by a daemon that was killed.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another vswitch daemon is already serving {}",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)?; // stale: nobody listens any more
            }
            Err(e) => return Err(e),
        },
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Create it root-only from the start, so there is no window in which others can connect.
    // SAFETY: umask has no memory-safety preconditions.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts connections until the listener fails; each connection is served on its own short
/// thread, so a slow or silent client never holds up the others. While `hold` is set (a hand-over
/// in progress), nothing is accepted: connections wait in the listener's backlog for whichever
/// process serves next (the listener is shared with it).
pub fn serve(listener: UnixListener, calls: Sender<Call>, hold: Arc<AtomicBool>) {
    // Non-blocking and polled, so that a hold set while waiting is seen before an accept.
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    loop {
        if hold.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        // A hold set meanwhile is seen before the next accept.
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::from(1000u16)), Ok(n) if n > 0) {
            continue;
        }
        if hold.load(Ordering::SeqCst) {
            continue;
        }
        let conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if conn.set_nonblocking(false).is_err() {
            continue;
        }
        let calls = calls.clone();
        let _ = std::thread::Builder::new()
            .name("vswitch-ctl".into())
            .spawn(move || {
                let _ = serve_one(conn, &calls);
            });
    }
}

fn serve_one(conn: UnixStream, calls: &Sender<Call>) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = Vec::new();
    BufReader::new((&conn).take(MAX_REQUEST as u64 + 1)).read_until(b'\n', &mut line)?;
    let shutting_down = || Failure::new(ErrorCode::Unavailable, "the daemon is shutting down");
    let decoded = if line.len() > MAX_REQUEST {
        tracing::warn!(
            limit = MAX_REQUEST,
            "refused a control request: longer than the limit"
        );
        Err(Failure::new(
            ErrorCode::Invalid,
            format!("request longer than {MAX_REQUEST} bytes"),
        ))
    } else {
        decode_request(&line)
            .inspect_err(|f| tracing::warn!(code = ?f.code, "refused a control request: {f}"))
    };
    // The one request answered with more than a line.
    if let Ok(Request::Capture(capture)) = decoded {
        return super::stream::serve(conn, capture, calls);
    }
    let stop = match &decoded {
        Ok(Request::Stop(stop)) => Some(stop.keep),
        _ => None,
    };
    let answer = decoded.and_then(|request| {
        // A hand-over's manager answers on the connection itself (descriptors follow the answer).
        let own = match request {
            Request::Handover(_) => Some(conn.try_clone().map_err(|_| shutting_down())?),
            _ => None,
        };
        ask(calls, request, own, None)
    });
    if let Ok(Reply::Handover(_)) = answer {
        return Ok(()); // the manager answered on the connection itself
    }
    let mut out = encode_response(&answer);
    out.push(b'\n');
    let written = (&conn).write_all(&out);
    if let (Some(keep), Ok(_)) = (stop, &answer) {
        stop_daemon(keep);
    }
    written
}

/// Stops the daemon as the signal that means the same does (the main thread takes signals), so
/// that both ways stop alike; sent only once the reply is written, or the process could exit
/// before the client reads it.
fn stop_daemon(keep: bool) {
    let signal = if keep { libc::SIGUSR2 } else { libc::SIGTERM };
    // SAFETY: sending a signal to our own process has no memory-safety concern.
    unsafe { libc::kill(libc::getpid(), signal) };
}

/// Hands a request to the manager (with the connection or the capture's session it needs) and
/// waits for its answer.
pub(super) fn ask(
    calls: &Sender<Call>,
    request: Request,
    conn: Option<UnixStream>,
    capture: Option<Arc<Session>>,
) -> Result<Reply, Failure> {
    let shutting_down = || Failure::new(ErrorCode::Unavailable, "the daemon is shutting down");
    let (tx, rx) = crossbeam_channel::bounded(1);
    let call = Call {
        request,
        reply: tx,
        conn,
        capture,
    };
    calls.send(call).map_err(|_| shutting_down())?;
    rx.recv().unwrap_or_else(|_| Err(shutting_down()))
}
