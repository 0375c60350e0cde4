//! Containers: processes in fresh namespaces (`unshare --net sleep`, and one with its own mount
//! and pid namespaces as real runtimes make), killed on drop.

use super::{command, parse_link_names, ping_with, poll, require_root, run, Out, DEADLINE};
use std::fs;
use std::process::{Child, Command, Stdio};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    /// `unshare --net sleep 3600`: only a network namespace.
    Plain,
    /// `unshare --net --mount --pid --fork --mount-proc --kill-child sleep 3600`: also a mount
    /// and a pid namespace, as container runtimes make. The pid to plug is the unshare process.
    RuntimeLike,
}

/// A process in its own network namespace. Killed on drop.
pub struct Container {
    pub pid: u32,
    pub kind: ContainerKind,
    child: Option<Child>,
}

impl Container {
    pub fn plain() -> Container {
        Container::start(ContainerKind::Plain)
    }

    pub fn runtime_like() -> Container {
        Container::start(ContainerKind::RuntimeLike)
    }

    pub fn start(kind: ContainerKind) -> Container {
        require_root();
        let args: &[&str] = match kind {
            ContainerKind::Plain => &["--net", "sleep", "3600"],
            ContainerKind::RuntimeLike => &[
                "--net",
                "--mount",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "sleep",
                "3600",
            ],
        };
        let child = command("unshare", args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start `unshare`");
        let pid = child.id();
        let c = Container {
            pid,
            kind,
            child: Some(child),
        };
        // Ready once the process is in its own network namespace (and, for the runtime-like
        // one, has forked the process that lives in the new pid namespace).
        let own_ns = fs::read_link("/proc/self/ns/net").expect("readlink /proc/self/ns/net");
        let ready = poll(DEADLINE, || {
            let ns = fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
            if ns == own_ns {
                return None;
            }
            if kind == ContainerKind::RuntimeLike {
                let children =
                    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
                if children.trim().is_empty() {
                    return None;
                }
            }
            Some(())
        });
        assert!(
            ready.is_some(),
            "container process {pid} ({kind:?}) did not start"
        );
        c
    }

    /// `/proc/PID/ns/net`.
    pub fn netns_path(&self) -> String {
        format!("/proc/{}/ns/net", self.pid)
    }

    /// The host-side port name vswitch gives this container: `vsw-<PID>`.
    pub fn host_port(&self) -> String {
        format!("vsw-{}", self.pid)
    }

    /// A command run in the container's network namespace.
    pub fn cmd(&self, program: &str, args: &[&str]) -> Command {
        let net = format!("--net={}", self.netns_path());
        let mut c = command("nsenter", &[&net, program]);
        c.args(args);
        c
    }

    /// Runs a command in the container's network namespace.
    pub fn run(&self, program: &str, args: &[&str]) -> Out {
        run(&mut self.cmd(program, args))
    }

    /// Pings `ip` from the container; true if any reply came back.
    pub fn ping(&self, ip: &str) -> bool {
        ping_with(self.cmd("ping", &[]), ip)
    }

    /// Interface names in the container's network namespace.
    pub fn links(&self) -> Vec<String> {
        parse_link_names(&self.run("ip", &["-o", "link", "show"]).ok().stdout)
    }

    /// Kills the container (its network namespace disappears with it) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.kill();
    }
}
