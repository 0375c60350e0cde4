//! Shared harness for the end-to-end tests.
//!
//! Every test builds its own little world and tears it down again, also when it fails:
//! - [`Sandbox`]: a network namespace that plays the host (`ip netns add`), with the daemon
//!   under test running inside it (`ip netns exec HOST vswitch run ...`) and its control socket
//!   in a private temporary directory;
//! - [`Container`]: a process in a fresh network namespace (`unshare --net sleep`), optionally
//!   with its own mount and pid namespaces as real container runtimes make.
//!
//! Traffic only ever flows between these namespaces: nothing is added to the root namespace.
//! Names are unique per test process and per object (`vswt<pid>x<n>`), so tests run in parallel.
//! Cleanup happens in `Drop`, which also runs while a failing test unwinds.

#![allow(dead_code)]

pub mod cni;
pub mod json;
pub mod wan;

pub use json::Json;

use std::borrow::BorrowMut;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The binary under test.
pub const VSWITCH: &str = env!("CARGO_BIN_EXE_vswitch");

/// Default subnet of a sandbox, its gateway and the container addresses handed out in order.
pub const SUBNET: &str = "10.1.1.0/24";
pub const GATEWAY: &str = "10.1.1.1";

/// Time allowed for ordinary commands (ip, ping, vswitch subcommands).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(20);

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

// ---------------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------------

/// What a finished command did.
#[derive(Debug)]
pub struct Out {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Asserts that the command succeeded.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.success(), "{} failed: {}", self.what, self.describe());
        self
    }

    /// Asserts that the command failed the way every vswitch error must: non-zero exit and
    /// exactly one line on stderr starting with `vswitch: `. Returns that line.
    #[track_caller]
    pub fn vswitch_error(&self) -> String {
        assert!(
            !self.success(),
            "{} was expected to fail but succeeded: {}",
            self.what,
            self.describe()
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("vswitch: "),
            "{}: expected exactly one error line starting with `vswitch: ` on stderr: {}",
            self.what,
            self.describe()
        );
        lines[0].to_string()
    }

    pub fn describe(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Asserts that `line` contains one of `words` (case-insensitively).
#[track_caller]
pub fn assert_mentions(line: &str, words: &[&str]) {
    let lower = line.to_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(&w.to_lowercase())),
        "expected the message to mention one of {words:?}, got: {line}"
    );
}

fn describe_cmd(cmd: &Command) -> String {
    let mut s = format!("`{}", cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.len() > 60 || a.contains('\n') {
            s.push_str(" <script>");
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s.push('`');
    s
}

fn read_in_thread(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// Runs `cmd` to completion (stdin closed, output captured). Returns `None`, after killing it,
/// if it is still running after `timeout`.
pub fn try_run(mut cmd: impl BorrowMut<Command>, timeout: Duration) -> Option<Out> {
    let cmd = cmd.borrow_mut();
    let what = describe_cmd(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let out_rx = read_in_thread(child.stdout.take().unwrap());
    let err_rx = read_in_thread(child.stderr.take().unwrap());
    let status = match wait_timeout(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
    };
    // A grandchild might keep a pipe open; don't wait for it forever.
    let grace = Duration::from_secs(5);
    Some(Out {
        what,
        status,
        stdout: out_rx.recv_timeout(grace).unwrap_or_default(),
        stderr: err_rx.recv_timeout(grace).unwrap_or_default(),
    })
}

/// Runs `cmd` to completion; panics if it takes longer than `timeout`.
#[track_caller]
pub fn run_timeout(mut cmd: impl BorrowMut<Command>, timeout: Duration) -> Out {
    let cmd = cmd.borrow_mut();
    let what = describe_cmd(cmd);
    try_run(cmd, timeout)
        .unwrap_or_else(|| panic!("{what} did not finish within {timeout:?} (killed)"))
}

/// Runs `cmd` with the default timeout.
#[track_caller]
pub fn run(cmd: impl BorrowMut<Command>) -> Out {
    run_timeout(cmd, CMD_TIMEOUT)
}

/// Builds a command from a program and arguments.
pub fn command(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Waits for `child` to exit, at most `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => return None,
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
    }
}

/// Sends a signal (`TERM`, `KILL`, ...) to a process.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Polls `f` every 50 ms until it returns `Some`, at most `timeout`.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Interface names from the output of `ip -o link show`.
fn parse_link_names(ip_output: &str) -> Vec<String> {
    ip_output
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Temporary directory and network namespace guards
// ---------------------------------------------------------------------------------------------

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

fn ping_with(cmd: Command, ip: &str) -> bool {
    run(&mut ping_cmd(cmd, ip)).success()
}

/// Adds the ping arguments to a `ping` command: two probes, 2 s to answer. ping exits 0 if
/// any reply came back.
pub fn ping_cmd(mut cmd: Command, ip: &str) -> Command {
    cmd.args(["-c", "2", "-i", "0.2", "-W", "2", "-q", ip]);
    cmd
}

// ---------------------------------------------------------------------------------------------
// Sandbox: host namespace + daemon
// ---------------------------------------------------------------------------------------------

/// How to start a sandbox.
pub struct SandboxOptions {
    pub subnet: String,
    /// Control socket to use instead of a fresh one in the sandbox's own directory.
    pub control: Option<PathBuf>,
    /// Extra arguments for `vswitch run`.
    pub extra_args: Vec<String>,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            subnet: SUBNET.to_string(),
            control: None,
            extra_args: Vec::new(),
        }
    }
}

/// A namespace playing the host with the daemon under test running in it.
pub struct Sandbox {
    pub host: NetNs,
    pub dir: TempDir,
    pub control: PathBuf,
    pub log: PathBuf,
    daemon: Option<Child>,
    daemon_pid: u32,
}

impl Sandbox {
    /// Starts a sandbox with the default subnet (10.1.1.0/24) and waits until it is ready.
    pub fn start() -> Sandbox {
        Sandbox::start_with(SandboxOptions::default())
    }

    pub fn start_subnet(subnet: &str) -> Sandbox {
        Sandbox::start_with(SandboxOptions {
            subnet: subnet.to_string(),
            ..SandboxOptions::default()
        })
    }

    pub fn start_with(opts: SandboxOptions) -> Sandbox {
        Sandbox::start_prepared(opts, |_| {})
    }

    /// Like [`Sandbox::start_with`], but runs `prepare` on the fresh host namespace before the
    /// daemon starts in it (e.g. to give the host an uplink, or pin a sysctl).
    pub fn start_prepared(opts: SandboxOptions, prepare: impl FnOnce(&NetNs)) -> Sandbox {
        require_root();
        let name = unique_name();
        let dir = TempDir::new(&name);
        let host = NetNs::new(&name);
        prepare(&host);
        let control = opts.control.unwrap_or_else(|| dir.path.join("ctl.sock"));
        let log = dir.path.join("daemon.log");
        let log_file = fs::File::create(&log).expect("create daemon log");
        let mut cmd = host.cmd(VSWITCH, &["run", "--subnet", &opts.subnet, "--control"]);
        cmd.arg(&control)
            .args(&opts.extra_args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        let child = cmd.spawn().expect("start `ip netns exec ... vswitch run`");
        // `ip netns exec` execs the program: this pid is the daemon itself.
        let daemon_pid = child.id();
        let mut sandbox = Sandbox {
            host,
            dir,
            control,
            log,
            daemon: Some(child),
            daemon_pid,
        };
        sandbox.wait_ready(Duration::from_secs(10));
        sandbox
    }

    /// Waits until the control socket answers (`vswitch ls` exits 0).
    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "`vswitch run` exited before it was ready ({status}); its output:\n{}",
                    self.daemon_log()
                );
            }
            let ready = try_run(&mut self.vswitch_cmd("ls", &[]), Duration::from_secs(5))
                .is_some_and(|o| o.success());
            if ready {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "`vswitch run` did not become ready within {timeout:?} (`vswitch ls` never \
                     succeeded); its output:\n{}",
                    self.daemon_log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon_pid
    }

    pub fn daemon_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` to the daemon and waits up to 5 s for it to exit.
    pub fn stop_daemon(&mut self, sig: &str) -> ExitStatus {
        let mut child = self.daemon.take().expect("daemon already stopped");
        signal(self.daemon_pid, sig);
        match wait_timeout(&mut child, Duration::from_secs(5)) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon did not exit within 5 s of SIG{sig}; its output:\n{}",
                    self.daemon_log()
                );
            }
        }
    }

    /// `vswitch SUB --control PATH ARGS...` as a command (not yet run).
    pub fn vswitch_cmd(&self, sub: &str, args: &[&str]) -> Command {
        let mut c = command(VSWITCH, &[sub, "--control"]);
        c.arg(&self.control).args(args);
        c
    }

    /// Runs `vswitch ARGS...` (the first argument is the subcommand) against this daemon.
    pub fn vswitch(&self, args: &[&str]) -> Out {
        let (sub, rest) = args.split_first().expect("a subcommand");
        run(&mut self.vswitch_cmd(sub, rest))
    }

    /// `vswitch plug PID --json EXTRA...`, asserting success; returns the port object.
    #[track_caller]
    pub fn plug(&self, c: &Container, extra: &[&str]) -> Json {
        let pid = c.pid.to_string();
        let mut args = vec!["plug", pid.as_str(), "--json"];
        args.extend_from_slice(extra);
        let out = self.vswitch(&args).ok();
        Json::parse(out.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "`vswitch plug --json` printed invalid JSON ({e}): {}",
                out.stdout
            )
        })
    }

    /// A new plain container, plugged with the defaults.
    #[track_caller]
    pub fn plug_plain(&self) -> Container {
        let c = Container::plain();
        self.plug(&c, &[]);
        c
    }

    /// `vswitch ls --json`, parsed.
    #[track_caller]
    pub fn ls(&self) -> Vec<Json> {
        json_array(&self.vswitch(&["ls", "--json"]).ok().stdout, "ls --json")
    }

    /// `vswitch fdb --json`, parsed.
    #[track_caller]
    pub fn fdb(&self) -> Vec<Json> {
        json_array(&self.vswitch(&["fdb", "--json"]).ok().stdout, "fdb --json")
    }

    /// The `ls` entry of the container with this pid, if plugged.
    pub fn port_of(&self, pid: u32) -> Option<Json> {
        self.ls()
            .into_iter()
            .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
    }

    /// The `ls` entry of the TAP.
    #[track_caller]
    pub fn tap_port(&self) -> Json {
        let ports = self.ls();
        ports
            .iter()
            .find(|p| p["kind"].as_str() == Some("tap"))
            .cloned()
            .unwrap_or_else(|| panic!("no port of kind \"tap\" in `ls --json`: {ports:?}"))
    }

    /// A command run in the host namespace.
    pub fn host_cmd(&self, program: &str, args: &[&str]) -> Command {
        self.host.cmd(program, args)
    }

    /// Interface names in the host namespace.
    pub fn host_links(&self) -> Vec<String> {
        self.host.links()
    }

    /// Asserts the host namespace holds exactly lo, the TAP and the host ports of `plugged`:
    /// nothing half-made is left behind.
    #[track_caller]
    pub fn assert_host_links(&self, plugged: &[&Container]) {
        let mut expected: Vec<String> = vec!["lo".into(), "vsw0".into()];
        expected.extend(plugged.iter().map(|c| c.host_port()));
        expected.sort();
        let mut links = self.host_links();
        links.sort();
        assert_eq!(
            links, expected,
            "links in the host namespace (expected only lo, the TAP and the plugged ports)"
        );
    }

    /// Pings `ip` from the host namespace.
    pub fn host_ping(&self, ip: &str) -> bool {
        self.host.ping(ip)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            signal(self.daemon_pid, "TERM");
            if wait_timeout(&mut child, Duration::from_secs(5)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if thread::panicking() {
            eprintln!(
                "---- output of `vswitch run` in {} ----\n{}---- end of daemon output ----",
                self.host.name,
                self.daemon_log()
            );
        }
        // Then the fields drop: the namespace (taking any leftover links with it), the dir.
    }
}

#[track_caller]
fn json_array(text: &str, what: &str) -> Vec<Json> {
    match Json::parse(text.trim()) {
        Ok(Json::Arr(items)) => items,
        Ok(other) => panic!("`{what}` did not print a JSON array: {other:?}"),
        Err(e) => panic!("`{what}` printed invalid JSON ({e}): {text}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Containers
// ---------------------------------------------------------------------------------------------

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
        let ready = poll(Duration::from_secs(10), || {
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

/// Runs ping jobs (`(label, command)`, commands from `ping_cmd`) concurrently; returns the
/// labels of those that got no reply.
pub fn ping_all(jobs: Vec<(String, Command)>) -> Vec<String> {
    let handles: Vec<_> = jobs
        .into_iter()
        .map(|(label, mut cmd)| thread::spawn(move || (label, run(&mut cmd).success())))
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("ping thread"))
        .filter(|(_, ok)| !ok)
        .map(|(label, _)| label)
        .collect()
}

/// Adds the arguments of a single quick probe to a `ping` command: one echo, 2 s to answer.
/// For pinging many targets at once with [`ping_batches`], which retries a failure once.
pub fn ping_once_cmd(mut cmd: Command, ip: &str) -> Command {
    cmd.args(["-c", "1", "-W", "2", "-q", ip]);
    cmd
}

/// A ping job for [`ping_batches`]: a label and a way to build its command (it may be run twice).
pub type PingJob<'a> = (String, Box<dyn Fn() -> Command + Send + Sync + 'a>);

/// Runs ping jobs concurrently, at most `batch` at a time; every job that got no reply is run
/// once more (again in batches) after the first round. Returns the labels of the jobs that got no
/// reply either time, and prints how many needed the retry.
pub fn ping_batches(jobs: &[PingJob<'_>], batch: usize) -> Vec<String> {
    let first = ping_round(jobs.iter().collect(), batch);
    if first.is_empty() {
        return Vec::new();
    }
    eprintln!(
        "{} of {} pings got no reply the first time, retrying: {:?}",
        first.len(),
        jobs.len(),
        first.iter().map(|(label, _)| label).collect::<Vec<_>>()
    );
    ping_round(first, batch)
        .into_iter()
        .map(|(label, _)| label.clone())
        .collect()
}

/// One round of [`ping_batches`]: returns the jobs that got no reply.
fn ping_round<'j, 'a>(jobs: Vec<&'j PingJob<'a>>, batch: usize) -> Vec<&'j PingJob<'a>> {
    let mut failed = Vec::new();
    for chunk in jobs.chunks(batch.max(1)) {
        let results: Vec<bool> = thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(_, make)| s.spawn(move || run(&mut make()).success()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("ping thread"))
                .collect()
        });
        failed.extend(
            chunk
                .iter()
                .zip(results)
                .filter(|(_, ok)| !ok)
                .map(|(job, _)| *job),
        );
    }
    failed
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

// ---------------------------------------------------------------------------------------------
// Bulk TCP transfer with checksums (python3 on both ends)
// ---------------------------------------------------------------------------------------------

/// Receives one TCP connection, prints "listening" once bound, then "<bytes> <sha256>".
const TCP_SINK: &str = r#"
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
s.settimeout(120)
print("listening", flush=True)
c, _ = s.accept()
c.settimeout(120)
h = hashlib.sha256()
n = 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b)
    n += len(b)
print(n, h.hexdigest(), flush=True)
"#;

/// Sends a deterministic pattern of argv[3] bytes (64 KiB blocks, each starting with its
/// sequence number so that lost, repeated or reordered blocks change the checksum), then
/// prints "<bytes> <sha256>".
const TCP_SOURCE: &str = r#"
import hashlib, socket, struct, sys
host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
base = bytes((i * 131 + 7) % 256 for i in range(65536))
h = hashlib.sha256()
s = socket.create_connection((host, port), timeout=120)
sent = 0
i = 0
while sent < total:
    block = (struct.pack(">Q", i) + base[8:])[: total - sent]
    s.sendall(block)
    h.update(block)
    sent += len(block)
    i += 1
s.close()
print(sent, h.hexdigest(), flush=True)
"#;

/// Where a transfer endpoint runs.
pub trait Endpoint {
    fn endpoint_cmd(&self, program: &str, args: &[&str]) -> Command;
}

impl Endpoint for Container {
    fn endpoint_cmd(&self, program: &str, args: &[&str]) -> Command {
        self.cmd(program, args)
    }
}

impl Endpoint for Sandbox {
    fn endpoint_cmd(&self, program: &str, args: &[&str]) -> Command {
        self.host_cmd(program, args)
    }
}

/// Sends `bytes` bytes over TCP from `client` to `server` (listening on `server_ip`) and asserts
/// that the receiver got exactly as many bytes with the same SHA-256 as the sender sent.
#[track_caller]
pub fn tcp_transfer(client: &dyn Endpoint, server: &dyn Endpoint, server_ip: &str, bytes: u64) {
    let port = "5201";
    let mut sink = server
        .endpoint_cmd("python3", &["-c", TCP_SINK, port])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the python3 TCP sink");
    let guard = KillOnDrop(&mut sink);
    let mut lines = BufReader::new(guard.0.stdout.take().unwrap()).lines();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in lines.by_ref() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let sink_err = read_in_thread(guard.0.stderr.take().unwrap());
    let first = rx.recv_timeout(Duration::from_secs(20));
    assert_eq!(
        first.as_deref().ok(),
        Some("listening"),
        "the TCP sink did not start listening; stderr: {}",
        sink_err
            .recv_timeout(Duration::from_secs(1))
            .unwrap_or_default()
    );

    let total = bytes.to_string();
    let started = Instant::now();
    let sent = run_timeout(
        &mut client.endpoint_cmd("python3", &["-c", TCP_SOURCE, server_ip, port, &total]),
        Duration::from_secs(180),
    )
    .ok();
    let received = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "the TCP sink printed no result; stderr: {}",
                sink_err
                    .recv_timeout(Duration::from_secs(1))
                    .unwrap_or_default()
            )
        });
    let elapsed = started.elapsed();
    drop(guard);
    let sent = sent.stdout.trim();
    assert!(
        sent.starts_with(&format!("{total} ")),
        "the sender did not send {total} bytes: {sent}"
    );
    assert_eq!(
        received.trim(),
        sent,
        "received bytes/sha256 differ from what was sent"
    );
    eprintln!(
        "transfer of {bytes} bytes to {server_ip}: {:.2?} ({:.0} Mbit/s)",
        elapsed,
        bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
    );
}

struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Returns true if `path` exists (as anything, sockets included).
pub fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Background processes that talk in lines (servers, interactive clients)
// ---------------------------------------------------------------------------------------------

/// A process running in the background in a process group of its own, its stdout read line by
/// line and its stderr collected. The whole group is killed on drop.
pub struct Proc {
    pub what: String,
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Proc {
    /// Starts `cmd` with piped stdin and stdout.
    pub fn spawn(mut cmd: Command) -> Proc {
        use std::os::unix::process::CommandExt;
        let what = describe_cmd(&cmd);
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (mut err_pipe, sink) = (child.stderr.take().unwrap(), stderr.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            what,
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    /// Starts `cmd` and waits for its first line, which must be `ready`.
    #[track_caller]
    pub fn spawn_ready(cmd: Command) -> Proc {
        let p = Proc::spawn(cmd);
        let line = p.line(Duration::from_secs(20));
        assert_eq!(line, "ready", "{} did not get ready", p.what);
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next line of its stdout, if one comes within `timeout`.
    pub fn try_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The next line of its stdout; panics (with its stderr) if none comes within `timeout`.
    #[track_caller]
    pub fn line(&self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(_) => {
                // Give the stderr reader a moment to catch a traceback.
                thread::sleep(Duration::from_millis(200));
                panic!(
                    "{} printed no line within {timeout:?}; stderr:\n{}",
                    self.what,
                    self.stderr()
                )
            }
        }
    }

    /// Every line printed so far, without waiting.
    pub fn lines_so_far(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Writes one line to its stdin.
    #[track_caller]
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("writing to {}: {e}", self.what));
    }

    /// Waits for it to exit; panics if it does not within `timeout`.
    #[track_caller]
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        self.stdin.take();
        wait_timeout(&mut self.child, timeout).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {timeout:?}; stderr:\n{}",
                self.what,
                self.stderr()
            )
        })
    }

    /// Kills the whole process group and reaps the process.
    pub fn kill(&mut self) {
        self.stdin.take();
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
