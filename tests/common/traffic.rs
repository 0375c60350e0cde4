//! Traffic between the namespaces of a test: pings (one at a time or many at once) and bulk TCP
//! transfers whose receiver checks byte count and SHA-256 against the sender's.

use super::{poll, read_in_thread, run, run_timeout, Container, Proc, Sandbox, DEADLINE};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A python3 script: writes argv[1] bytes of random data to file argv[2] and prints its
/// sha256 (the file a transfer's receiver checks against).
pub const MAKE_FILE: &str = r#"
import hashlib, os, sys
left, h = int(sys.argv[1]), hashlib.sha256()
with open(sys.argv[2], "wb") as f:
    while left:
        b = os.urandom(min(left, 1 << 20))
        f.write(b)
        h.update(b)
        left -= len(b)
print(h.hexdigest())
"#;

/// `iperf3 -s -1 -p 5201` run by `cmd` (a namespace's `iperf3` command), once it listens.
#[track_caller]
pub fn iperf3_server(mut cmd: Command) -> Proc {
    cmd.args(["-s", "-1", "-p", "5201", "--forceflush"]);
    let server = Proc::spawn(cmd);
    let listening = poll(DEADLINE, || {
        let line = server.try_line(Duration::from_millis(200))?;
        line.contains("listening").then_some(line)
    });
    assert!(
        listening.is_some(),
        "iperf3 -s: {:?}",
        server.lines_so_far()
    );
    server
}

/// Adds the ping arguments to a `ping` command: two probes, 2 s to answer. ping exits 0 if
/// any reply came back.
pub fn ping_cmd(mut cmd: Command, ip: &str) -> Command {
    cmd.args(["-c", "2", "-i", "0.2", "-W", "2", "-q", ip]);
    cmd
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

/// Adds the arguments of a single probe to a `ping` command: one echo request, up to 10 s for
/// its reply (ARP is resolved within that time too: the kernel queues the echo meanwhile). ping
/// exits 0 only if that one echo was answered: a lost request or reply is a failure.
pub fn ping_once_cmd(mut cmd: Command, ip: &str) -> Command {
    cmd.args(["-c", "1", "-W", "10", "-q", ip]);
    cmd
}

/// Runs ping jobs (`(label, command)`, commands from [`ping_once_cmd`]) concurrently, at most
/// `batch` at a time; returns the labels of those that got no reply. Nothing is retried.
pub fn ping_batches(jobs: Vec<(String, Command)>, batch: usize) -> Vec<String> {
    let mut failed = Vec::new();
    let mut jobs = jobs.into_iter().peekable();
    while jobs.peek().is_some() {
        let chunk: Vec<(String, Command)> = jobs.by_ref().take(batch.max(1)).collect();
        failed.extend(ping_all(chunk));
    }
    failed
}

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

impl Endpoint for super::wan::Wan {
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
