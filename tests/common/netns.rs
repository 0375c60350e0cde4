//! Guards for what a test creates outside its own process: a [`TempDir`] under /tmp and a
//! named network namespace ([`NetNs`], `ip netns add`), each removed on drop, also while a
//! failing test unwinds.

use super::{command, exists, ping_cmd, require_root, run, Command};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Interface names from the output of `ip -o link show`.
pub(crate) fn parse_link_names(ip_output: &str) -> Vec<String> {
    ip_output
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect()
}

/// A directory under /tmp removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        // Traversable by others whatever the umask: the permission test runs a client as nobody.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A named network namespace (`ip netns add`) with `lo` up, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: &str) -> NetNs {
        require_root();
        etc_netns_existed(); // snapshot before any plug can create it
        run(command("ip", &["netns", "add", name])).ok();
        let ns = NetNs {
            name: name.to_string(),
        };
        run(command("ip", &["-n", name, "link", "set", "lo", "up"])).ok();
        ns
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A command run inside the namespace (`ip netns exec NAME ...`).
    pub fn cmd(&self, program: &str, args: &[&str]) -> Command {
        let mut c = command("ip", &["netns", "exec", &self.name, program]);
        c.args(args);
        c
    }

    /// Names of the interfaces in the namespace.
    pub fn links(&self) -> Vec<String> {
        parse_link_names(
            &run(command("ip", &["-n", &self.name, "-o", "link", "show"]))
                .ok()
                .stdout,
        )
    }

    /// Pings `ip` from inside the namespace; true if any reply came back.
    pub fn ping(&self, ip: &str) -> bool {
        ping_with(self.cmd("ping", &[]), ip)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = command("ip", &["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // `plug --netns /run/netns/NAME` writes /etc/netns/NAME/resolv.conf: remove it, and
        // /etc/netns itself if it is empty and did not exist before these tests ran.
        let etc = Path::new("/etc/netns").join(&self.name);
        if exists(&etc) {
            let _ = fs::remove_dir_all(&etc);
            if !etc_netns_existed() {
                let _ = fs::remove_dir("/etc/netns");
            }
        }
    }
}

/// Whether /etc/netns existed when this test process first made a namespace.
fn etc_netns_existed() -> bool {
    static EXISTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *EXISTED.get_or_init(|| exists(Path::new("/etc/netns")))
}

pub(crate) fn ping_with(cmd: Command, ip: &str) -> bool {
    run(&mut ping_cmd(cmd, ip)).success()
}
