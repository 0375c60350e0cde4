//! The systemd service protocol (sd_notify): readiness, the watchdog and stopping, sent as
//! datagrams to `$NOTIFY_SOCKET` when systemd started the daemon (`Type=notify`). Without
//! systemd every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// Sends one notification (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=...`).
pub fn notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy();
    // A leading '@' names a socket in the abstract namespace.
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(path.as_ref()),
    };
    let (Ok(addr), Ok(sock)) = (addr, UnixDatagram::unbound()) else {
        return;
    };
    let _ = sock.send_to_addr(message.as_bytes(), &addr);
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
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.parse() != Ok(std::process::id()) {
                return None;
            }
        }
        Some(Watchdog {
            every: Duration::from_micros(usec) / 2,
            last: Instant::now(),
        })
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
}
