//! The harness of the end-to-end tests. Every test builds its own little world and tears it down
//! again, also when it fails:
//! - [`Sandbox`] (`sandbox.rs`): a network namespace that plays the host, with the daemon under
//!   test running in it (`ip netns exec HOST vswitch run ...`) and its control socket in a
//!   private temporary directory;
//! - [`Container`] (`container.rs`): a process in a fresh network namespace
//!   (`unshare --net sleep`), optionally with its own mount and pid namespaces as real container
//!   runtimes make;
//! - [`NetNs`] and [`TempDir`] (`netns.rs`): guards for a named namespace and a directory;
//! - `wan.rs`: a simulated outside world for the NAT, with its servers;
//! - `traffic.rs`: pings and checksummed TCP transfers; `process.rs`: running commands with
//!   timeouts, background processes, and waiting on a condition with a deadline;
//! - `json.rs`: the daemon's `--json` output, read with `serde_json`;
//! - `metrics.rs`: the daemon's `/metrics` page, scraped and checked with `promtool`.
//!
//! Traffic only ever flows between these namespaces: nothing is added to the root namespace.
//! Names are unique per test process and per object (`vswt<pid>x<n>`), so tests run in parallel.
//! Cleanup happens in `Drop`, which also runs while a failing test unwinds. Tests wait for what
//! they expect with a generous deadline ([`wait_for`], [`poll`]), never with a fixed sleep, and
//! leave speed to the benchmarks: a busy machine makes them slower, never red.

#![allow(dead_code)]

pub mod cni;
mod container;
mod json;
pub mod metrics;
mod netns;
mod process;
mod sandbox;
mod traffic;
pub mod wan;

pub use container::*;
pub use json::*;
pub use netns::*;
pub use process::*;
pub use sandbox::*;
pub use traffic::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The binary under test.
pub const VSWITCH: &str = env!("CARGO_BIN_EXE_vswitch");

/// Default subnet of a sandbox, its gateway and the container addresses handed out in order.
pub const SUBNET: &str = "10.1.1.0/24";
pub const GATEWAY: &str = "10.1.1.1";

/// Panics with a clear message unless the test runs as root. These tests create namespaces,
/// veths and TAPs: without root they cannot test anything, and they must not pass silently.
pub fn require_root() {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string();
    assert!(
        euid == "0",
        "the vswitch end-to-end tests must run as root (they create network namespaces, veths and \
         a TAP); effective uid is {euid}. Run them as root, e.g. `sudo ./scripts/test.sh`."
    );
}

/// A name unique to this test process and call: `vswt<pid>x<n>`.
pub fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "vswt{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// The MAC vswitch gives a container by default: 02:76 followed by the four address bytes.
pub fn default_mac(ip: &str) -> String {
    let bytes: Vec<u8> = ip
        .split('.')
        .map(|b| b.parse().expect("IPv4 address"))
        .collect();
    assert_eq!(bytes.len(), 4, "not an IPv4 address: {ip}");
    format!(
        "02:76:{:02x}:{:02x}:{:02x}:{:02x}",
        bytes[0], bytes[1], bytes[2], bytes[3]
    )
}

/// `10.1.1.<n>`.
pub fn host_ip(n: u8) -> String {
    format!("10.1.1.{n}")
}

/// Panics with a clear message unless `program` is on the PATH: tells which Debian package to
/// install (scripts/lib.sh installs it with the others).
#[track_caller]
pub fn require_program(program: &str, package: &str) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    });
    assert!(
        found,
        "`{program}` is not installed (not found on PATH): this test needs it. Install it, e.g. \
         `apt-get install {package}` (`sudo ./scripts/test.sh` installs it with the other packages)."
    );
}

/// Returns true if `path` exists (as anything, sockets included).
pub fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}
