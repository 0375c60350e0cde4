//! The systemd service protocol (sd_notify): readiness, the watchdog and stopping, sent as
//! datagrams to `$NOTIFY_SOCKET` when systemd started the daemon (`Type=notify`). Without
//! systemd every call does nothing.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The notification socket a process that takes over was handed (see [`set_socket`]).
static HANDED: OnceLock<OsString> = OnceLock::new();

/// systemd's notification socket: `$NOTIFY_SOCKET`, else the one a hand-over passed on.
pub fn socket() -> Option<OsString> {
    std::env::var_os("NOTIFY_SOCKET").or_else(|| HANDED.get().cloned())
}

/// Reports to `path` when `$NOTIFY_SOCKET` is not set: a process started next to the service's
/// (by `ExecReload=`, or by hand) to take it over may not have been given it.
pub fn set_socket(path: OsString) {
    let _ = HANDED.set(path);
}

fn address(path: &OsStr) -> Option<SocketAddr> {
    let path = path.to_string_lossy();
    // A leading '@' names a socket in the abstract namespace.
    match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok(),
        None => SocketAddr::from_pathname(path.as_ref()).ok(),
    }
}

/// Sends one notification (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=...`).
pub fn notify(message: &str) {
    if let Some(path) = socket() {
        send(&path, message);
    }
}

fn send(path: &OsStr, message: &str) {
    let Some(addr) = address(path) else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let _ = sock.send_to_addr(message.as_bytes(), &addr);
}

/// A process that took the service over from its main process: tells systemd that it is the
/// main process now, and ready (`MAINPID=`, which needs `NotifyAccess=all`), then waits until
/// systemd has read that (`BARRIER=1`, as `sd_notify_barrier` does, at most `timeout`), so that
/// the old main process's exit, which follows, is not taken for the service's end.
pub fn notify_main(timeout: Duration) {
    if let Some(path) = socket() {
        notify_main_at(&path, timeout);
    }
}

fn notify_main_at(path: &OsStr, timeout: Duration) {
    send(path, &format!("MAINPID={}\nREADY=1", std::process::id()));
    let _ = barrier(path, timeout);
}

/// `BARRIER=1` with the write end of a pipe; systemd closes it once it has processed every
/// notification sent before, which the read end sees as a hang-up.
fn barrier(path: &OsStr, timeout: Duration) -> std::io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let Some(addr) = address(path) else {
        return Ok(());
    };
    let sock = UnixDatagram::unbound()?;
    let (read, write) = nix::unistd::pipe()?;
    let unix = match addr.as_pathname() {
        Some(p) => UnixAddr::new(p)?,
        None => UnixAddr::new_abstract(addr.as_abstract_name().unwrap_or_default())?,
    };
    let fds = [write.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"BARRIER=1")];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg(
        sock.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::empty(),
        Some(&unix),
    )?;
    drop(write);
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut poll_fds = [PollFd::new(read.as_fd(), PollFlags::POLLHUP)];
    poll(&mut poll_fds, PollTimeout::from(ms))?;
    Ok(())
}

/// The watchdog interval systemd asked of this process (`$WATCHDOG_USEC`), if any.
pub fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse() != Ok(std::process::id()) {
            return None;
        }
    }
    Some(usec)
}

/// The watchdog systemd asked for (`WatchdogSec=`): pinged from the manager's tick, at half
/// the interval, so that a stuck manager gets the daemon restarted.
pub struct Watchdog {
    every: Duration,
    last: Instant,
}

impl Watchdog {
    /// `None` unless systemd set `$WATCHDOG_USEC` for this process.
    pub fn from_env() -> Option<Watchdog> {
        watchdog_usec().map(Watchdog::every)
    }

    /// A watchdog of `usec` microseconds (one the process handing over had).
    pub fn every(usec: u64) -> Watchdog {
        Watchdog {
            every: Duration::from_micros(usec) / 2,
            last: Instant::now(),
        }
    }

    pub fn tick(&mut self) {
        if self.last.elapsed() >= self.every {
            self.last = Instant::now();
            notify("WATCHDOG=1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("vsw-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        // SAFETY: the only test that touches these variables; none reads them concurrently.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        notify("READY=1");
        // SAFETY: as above.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 64];
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A process that takes over: MAINPID and READY in one message, then a barrier that holds
    /// it until systemd (here: the test) has read everything and closed the pipe it was sent.
    #[test]
    fn a_process_taking_over_names_itself_main_and_waits_for_the_barrier() {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::{FromRawFd, OwnedFd, RawFd};
        let dir = std::env::temp_dir().join(format!("vsw-notify-main-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // (The environment is left alone: another test sets it.)
        let systemd = std::thread::spawn(move || {
            let mut buf = [0u8; 128];
            let n = listener.recv(&mut buf).unwrap();
            let first = String::from_utf8_lossy(&buf[..n]).into_owned();
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let mut data = [0u8; 64];
            let mut iov = [std::io::IoSliceMut::new(&mut data)];
            let msg = recvmsg::<()>(
                listener.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            )
            .unwrap();
            let mut fds = Vec::new();
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(list) = c {
                    fds.extend(list);
                }
            }
            let n = msg.bytes;
            let second = String::from_utf8_lossy(&data[..n]).into_owned();
            assert_eq!(fds.len(), 1, "the barrier carries a pipe");
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: received just now, ours alone: closing it releases the barrier.
            drop(unsafe { OwnedFd::from_raw_fd(fds[0]) });
            (first, second)
        });
        let started = Instant::now();
        notify_main_at(path.as_os_str(), Duration::from_secs(5));
        let waited = started.elapsed();
        let (first, second) = systemd.join().unwrap();
        assert_eq!(first, format!("MAINPID={}\nREADY=1", std::process::id()));
        assert_eq!(second, "BARRIER=1");
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(4),
            "the barrier held {waited:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
