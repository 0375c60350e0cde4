//! The [`Sandbox`]: a network namespace that plays the host, with the daemon under test
//! (`vswitch run`) running in it and its control socket in a private temporary directory, and
//! the `vswitch` subcommands run against it (`ls`, `fdb`, `plug` parsed from their `--json`).

use super::{
    command, json_array, parse_json, require_root, run, signal, try_run, unique_name, wait_timeout,
    Container, Json, NetNs, Out, TempDir, DEADLINE, SUBNET, VSWITCH,
};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub struct SandboxOptions {
    pub subnet: String,
    /// Control socket to use instead of a fresh one in the sandbox's own directory.
    pub control: Option<PathBuf>,
    /// Extra arguments for `vswitch run`.
    pub extra_args: Vec<String>,
    /// A command the daemon runs under, e.g. `prlimit --nofile=1024:1024` (it must exec the
    /// daemon, so that the process started is the daemon).
    pub wrapper: Vec<String>,
    /// Run the daemon as systemd runs a service logging to journald: `JOURNAL_STREAM` names
    /// its stderr (the log file).
    pub journal: bool,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            subnet: SUBNET.to_string(),
            control: None,
            extra_args: Vec::new(),
            wrapper: Vec::new(),
            journal: false,
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
        let program = opts.wrapper.first().map_or(VSWITCH, |w| w.as_str());
        let mut cmd = host.cmd(program, &[]);
        if !opts.wrapper.is_empty() {
            cmd.args(&opts.wrapper[1..]).arg(VSWITCH);
        }
        if opts.journal {
            use std::os::unix::fs::MetadataExt;
            let meta = log_file.metadata().expect("stat the daemon log");
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        cmd.args(["run", "--subnet", &opts.subnet, "--control"])
            .arg(&control)
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
        sandbox.wait_ready(DEADLINE);
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

    /// Sends `sig` to the daemon and waits for it to exit.
    pub fn stop_daemon(&mut self, sig: &str) -> ExitStatus {
        let mut child = self.daemon.take().expect("daemon already stopped");
        signal(self.daemon_pid, sig);
        match wait_timeout(&mut child, DEADLINE) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon did not exit within {DEADLINE:?} of SIG{sig}; its output:\n{}",
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
        parse_json(out.stdout.trim()).unwrap_or_else(|e| {
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
