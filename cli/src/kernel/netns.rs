//! Network namespace helpers.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so namespace work runs on a dedicated
//! short-lived thread: no long-lived thread (the manager, a worker) is ever left in a container's
//! namespace, and sockets opened there (netlink, AF_PACKET) stay bound to that namespace after
//! the thread exits.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

/// Runs `f` on a dedicated thread that first joins the network namespace `ns`, so the caller's
/// thread never changes namespace. Returns `f`'s result; a panic in `f` is propagated.
pub fn run_in_netns<T: Send>(ns: impl AsFd, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let ns = ns.as_fd();
    // A scoped thread may borrow `ns` and `f`'s captures; it is joined before returning.
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(scope, move || {
                setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(f())
            })?;
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Opens `/proc/<pid>/ns/net`. A pid that does not exist gives `ErrorKind::NotFound`.
pub fn open_pid_netns(pid: u32) -> io::Result<OwnedFd> {
    // std opens with O_CLOEXEC; a namespace file needs no more than O_RDONLY for setns.
    Ok(File::open(format!("/proc/{pid}/ns/net"))?.into())
}

/// Opens a namespace file such as `/run/netns/NAME`, which must be an nsfs file (a bind mount
/// of a namespace): anything else, e.g. the empty placeholder file `ip netns add` creates before
/// mounting, gives `ErrorKind::InvalidInput`.
pub fn open_netns_path(path: &Path) -> io::Result<OwnedFd> {
    let file = File::open(path)?;
    if fstatfs(&file)?.filesystem_type() != NSFS_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a namespace file", path.display()),
        ));
    }
    Ok(file.into())
}

/// The (st_dev, st_ino) identity of a namespace fd: two fds refer to the same namespace exactly
/// when their identities are equal.
pub fn netns_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd)?;
    #[allow(clippy::unnecessary_cast)] // the field types differ between architectures
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// Sets `net.ipv6.conf.<ifname>.disable_ipv6 = 1` in the calling thread's namespace (procfs
/// resolves /proc/sys/net per thread). A kernel without IPv6 (no /proc/sys/net/ipv6) is fine;
/// an interface that does not exist gives `ErrorKind::NotFound`.
pub fn disable_ipv6(ifname: &str) -> io::Result<()> {
    if ifname.is_empty() || ifname.contains('/') || ifname == "." || ifname == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {ifname:?}"),
        ));
    }
    match std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
        b"1",
    ) {
        Err(e)
            if e.kind() == io::ErrorKind::NotFound && !Path::new("/proc/sys/net/ipv6").exists() =>
        {
            Ok(())
        }
        result => result,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A named namespace (`ip netns add`) that is deleted on drop, so a failing test leaves
    /// nothing behind. Names are unique per process and test.
    pub(crate) struct TestNetns {
        pub name: String,
        pub fd: OwnedFd,
    }

    impl TestNetns {
        pub fn new() -> TestNetns {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("vswnl-{}-{n}", std::process::id());
            run(&["ip", "netns", "add", &name]);
            match open_netns_path(Path::new(&format!("/run/netns/{name}"))) {
                Ok(fd) => TestNetns { name, fd },
                Err(e) => {
                    delete_netns(&name);
                    panic!("open netns {name}: {e}");
                }
            }
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            delete_netns(&self.name);
        }
    }

    fn delete_netns(name: &str) {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }

    /// Runs a command, panicking on failure; returns its stdout.
    pub(crate) fn run(args: &[&str]) -> String {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect(args[0]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn runs_inside_the_namespace_and_leaves_the_caller_alone() {
        let ns = TestNetns::new();
        let own = open_pid_netns(std::process::id()).unwrap();
        let before = netns_id(File::open("/proc/thread-self/ns/net").unwrap().as_fd()).unwrap();
        let inside = run_in_netns(&ns.fd, || {
            netns_id(File::open("/proc/thread-self/ns/net").unwrap().as_fd()).unwrap()
        })
        .unwrap();
        assert_eq!(inside, netns_id(ns.fd.as_fd()).unwrap());
        assert_ne!(inside, netns_id(own.as_fd()).unwrap());
        let after = netns_id(File::open("/proc/thread-self/ns/net").unwrap().as_fd()).unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn same_namespace_same_id() {
        let ns = TestNetns::new();
        let path = format!("/run/netns/{}", ns.name);
        let again = open_netns_path(Path::new(&path)).unwrap();
        assert_eq!(
            netns_id(ns.fd.as_fd()).unwrap(),
            netns_id(again.as_fd()).unwrap()
        );
        // Our own pid: another process's namespace may need ptrace access (EACCES without it).
        let a = open_pid_netns(std::process::id()).unwrap();
        let b = open_pid_netns(std::process::id()).unwrap();
        assert_eq!(netns_id(a.as_fd()).unwrap(), netns_id(b.as_fd()).unwrap());
        assert_ne!(
            netns_id(a.as_fd()).unwrap(),
            netns_id(again.as_fd()).unwrap()
        );
    }

    #[test]
    fn open_errors() {
        // pid_max is at most 2^22, so this pid cannot exist.
        let err = open_pid_netns(u32::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = open_netns_path(Path::new("/proc/self/status")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = open_netns_path(Path::new("/run/netns/vswnl-does-not-exist")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn setns_error_is_returned() {
        // A file that is not a namespace: setns fails with EINVAL and f never runs.
        let not_ns = File::open("/proc/self/status").unwrap();
        let err = run_in_netns(&not_ns, || unreachable!()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn disable_ipv6_in_the_namespace() {
        let ns = TestNetns::new();
        // The interface exists only in the test namespace, so a write that resolved /proc/sys
        // in the wrong namespace fails instead of touching the host.
        let link = [
            "link", "add", "vswtest0", "type", "veth", "peer", "name", "vswtest1",
        ];
        run(&[&["ip", "-n", &ns.name][..], &link].concat());
        run_in_netns(&ns.fd, || disable_ipv6("vswtest0"))
            .unwrap()
            .unwrap();
        // Without IPv6 in the kernel there is nothing to check (and disable_ipv6 is a no-op):
        // say so rather than pass.
        assert!(
            Path::new("/proc/sys/net/ipv6").exists(),
            "this kernel has no IPv6 (no /proc/sys/net/ipv6): disable_ipv6 cannot be tested here"
        );
        let path = "/proc/sys/net/ipv6/conf/vswtest0/disable_ipv6";
        let out = run(&["ip", "netns", "exec", &ns.name, "cat", path]);
        assert_eq!(out.trim(), "1");
        let err = run_in_netns(&ns.fd, || disable_ipv6("nosuchif0"))
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = disable_ipv6("../all").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
