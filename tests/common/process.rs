//! Running commands and background processes: [`run`] a command to completion with a
//! timeout and get its [`Out`]; [`Proc`] for a server or an interactive client that talks in
//! lines; [`poll`] for waiting on a condition with a deadline instead of sleeping.

use std::borrow::BorrowMut;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Time allowed for ordinary commands (ip, ping, vswitch subcommands).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a test waits for something that should happen at once (a port removed, a flow
/// gone, a line from a server): generous, so that only a feature that does not work, never a
/// busy machine, runs it out. How fast it happens is for the benchmarks.
pub const DEADLINE: Duration = Duration::from_secs(30);

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

pub(crate) fn describe_cmd(cmd: &Command) -> String {
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

pub(crate) fn read_in_thread(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
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

/// Waits until `f` returns `Some`, at most `timeout`; panics with `what` (evaluated then) if it
/// never does. For conditions a test waits for: give a generous `timeout` (tens of seconds),
/// it costs nothing when the condition comes quickly.
#[track_caller]
pub fn wait_for<T>(
    timeout: Duration,
    f: impl FnMut() -> Option<T>,
    what: impl FnOnce() -> String,
) -> T {
    poll(timeout, f).unwrap_or_else(|| panic!("within {timeout:?}: {}", what()))
}

/// A process running in the background in a process group of its own, its stdout read line by
/// line and its stderr collected. The whole group is killed on drop.
pub struct Proc {
    pub what: String,
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Disconnected once its stdout reached EOF (nothing is ever sent on it).
    stdout_eof: mpsc::Receiver<()>,
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
        let (eof_tx, stdout_eof) = mpsc::channel::<()>();
        thread::spawn(move || {
            let _eof = eof_tx;
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
            stdout_eof,
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

    /// Waits for it to exit; panics if it does not within `timeout`. Then everything it
    /// printed is in `lines_so_far` (its last lines may still have been on their way to the
    /// reader thread when it exited), unless a child of it still holds its stdout.
    #[track_caller]
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        self.stdin.take();
        let status = wait_timeout(&mut self.child, timeout).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {timeout:?}; stderr:\n{}",
                self.what,
                self.stderr()
            )
        });
        let _ = self.stdout_eof.recv_timeout(Duration::from_secs(5));
        status
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
