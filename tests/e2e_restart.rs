//! End-to-end tests of restarts and upgrades (issue 13), as root: the network outlives the
//! daemon.
//!
//! - An upgrade to a second copy of the binary (`vswitch run ... --takeover`) in the middle of
//!   a 100 MB download through the NAT, with a client exchanging data through a published
//!   port and pings every 10 ms between containers and to the outside: nothing is lost.
//! - A crash (`kill -9`) and a restart: containers keep talking to each other meanwhile, the
//!   gateway and the outside answer again within a second, the ports are the same.
//! - What a restart must refuse or survive: a corrupt state file, one of another subnet, a
//!   leftover link no state explains.
//!
//! The daemon runs in a namespace playing the host, entered with `nsenter --net` (not `ip netns
//! exec`, which gives it a private mount namespace that dies with it, taking the fast path's
//! bpffs pins along: here they must outlive it, as on a real host). Its bpffs
//! (`<control>.bpf`) is unmounted when the test ends, also when it fails. The harness is kept
//! in this file (`World`) on purpose: the shared one is being reorganised.

mod common;

use common::wan::{Wan, HOST_WAN_IP, HTTP_SERVER, TCP_SERVER, UDP_SERVER, WAN_IP};
use common::{
    command, json_array, parse_json, poll, run, run_timeout, signal, wait_timeout, Container, Json,
    JsonExt, NetNs, Out, Proc, TempDir, GATEWAY, VSWITCH,
};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const MB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The world: a host namespace with an uplink to a wan, and the daemon(s) serving it
// ---------------------------------------------------------------------------------------------

/// A host namespace linked to a fresh wan, the daemon under test running in it. Every daemon
/// started here is remembered and stopped on drop; the bpffs is unmounted.
struct World {
    wan: Wan,
    host: NetNs,
    dir: TempDir,
    control: PathBuf,
    /// Every daemon started, oldest first.
    daemons: Vec<(Child, PathBuf)>,
    /// Arguments every daemon of this world gets.
    extra: Vec<String>,
}

impl World {
    /// The host namespace, its wan (ip_forward 0, as on a real host where no one set it) and
    /// a daemon for 10.1.1.0/24 forwarding DNS to the wan.
    fn start() -> World {
        World::start_with(&[])
    }

    /// The same, every daemon with `extra` arguments too.
    fn start_with(extra: &[&str]) -> World {
        let wan = Wan::new();
        let name = format!("{}r", wan.ns.name);
        let host = NetNs::new(&name);
        run(host.cmd("sysctl", &["-q", "-w", "net.ipv4.ip_forward=0"])).ok();
        wan.link(&host, &[]);
        let dir = TempDir::new(&name);
        let control = dir.path.join("ctl.sock");
        let mut world = World {
            wan,
            host,
            dir,
            control,
            daemons: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        world.run_daemon(VSWITCH, &[]);
        world
    }

    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "run",
            "--subnet",
            "10.1.1.0/24",
            "--dns",
            WAN_IP,
            "--control",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(self.control.display().to_string());
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Starts `binary run <the world's arguments> <extra>` in the host namespace (entered
    /// with nsenter: the root mount namespace, where the bpffs outlives the daemon).
    fn spawn_daemon(&mut self, binary: &str, extra: &[&str]) -> u32 {
        let n = self.daemons.len();
        let log = self.dir.path.join(format!("daemon{n}.log"));
        let file = fs::File::create(&log).expect("create daemon log");
        let net = format!("--net={}", self.host.path());
        let mut cmd = command("nsenter", &[&net, binary]);
        cmd.args(self.args())
            .args(extra)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = cmd.spawn().expect("start nsenter ... vswitch run");
        let pid = child.id();
        self.daemons.push((child, log));
        pid
    }

    /// Starts a daemon and waits until it answers.
    fn run_daemon(&mut self, binary: &str, extra: &[&str]) -> u32 {
        let pid = self.spawn_daemon(binary, extra);
        self.wait_serving(Duration::from_secs(10));
        pid
    }

    /// Waits until the newest daemon answers `ls`; panics with its log if it exits first.
    fn wait_serving(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (child, log) = self.daemons.last_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "`vswitch run` exited before it served ({status}):\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            let log = fs::read_to_string(log).unwrap_or_default();
            if log.contains("INFO serving ") && self.vswitch(&["ls"]).success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`vswitch run` did not serve within {timeout:?}:\n{log}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon `i`'s output so far.
    fn log(&self, i: usize) -> String {
        fs::read_to_string(&self.daemons[i].1).unwrap_or_default()
    }

    fn logs(&self) -> String {
        (0..self.daemons.len())
            .map(|i| format!("---- daemon {i} ----\n{}", self.log(i)))
            .collect()
    }

    /// Waits for daemon `i` to exit.
    fn wait_exit(&mut self, i: usize, timeout: Duration) -> std::process::ExitStatus {
        let status = wait_timeout(&mut self.daemons[i].0, timeout);
        status.unwrap_or_else(|| panic!("daemon {i} did not exit:\n{}", self.logs()))
    }

    fn vswitch_cmd(&self, args: &[&str]) -> Command {
        let (sub, rest) = args.split_first().expect("a subcommand");
        let mut c = command(VSWITCH, &[sub, "--control"]);
        c.arg(&self.control).args(rest);
        c
    }

    fn vswitch(&self, args: &[&str]) -> Out {
        run(self.vswitch_cmd(args))
    }

    #[track_caller]
    fn plug(&self, c: &Container, extra: &[&str]) -> Json {
        let pid = c.pid.to_string();
        let mut args = vec!["plug", pid.as_str(), "--json"];
        args.extend_from_slice(extra);
        let out = self.vswitch(&args).ok();
        parse_json(out.stdout.trim()).expect("plug --json")
    }

    /// `ls --json`: (pid, host port, address, MAC) of every container port, sorted.
    fn ports(&self) -> Vec<(u64, String, String, String)> {
        let out = self.vswitch(&["ls", "--json"]).ok();
        let ports = json_array(&out.stdout, "ls --json");
        let mut v: Vec<_> = (ports.iter())
            .filter(|p| p["kind"].as_str() == Some("container"))
            .map(|p| {
                (
                    p.num("pid"),
                    p.str("host_ifname").to_string(),
                    p.str("ip").to_string(),
                    p.str("mac").to_string(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// A copy of the binary under test in the world's directory: an "upgrade" to another file.
    fn copy_binary(&self) -> String {
        let copy = self.dir.path.join("vswitch-upgraded");
        fs::copy(VSWITCH, &copy).expect("copy the binary");
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        copy.display().to_string()
    }

    fn bpffs(&self) -> PathBuf {
        self.control.with_extension("bpf")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // The newest daemon removes the network (and unmounts the bpffs); any other left is
        // killed.
        for (child, _) in self.daemons.iter_mut().rev() {
            if matches!(child.try_wait(), Ok(None)) {
                signal(child.id(), "TERM");
                if wait_timeout(child, Duration::from_secs(5)).is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        // Whatever happened, no bpffs of ours stays mounted (TempDir could not go otherwise).
        umount(&self.bpffs());
    }
}

/// Unmounts `dir` if something is mounted there (lazily: a daemon may still hold it).
fn umount(dir: &Path) {
    let mounted = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&dir.display().to_string()));
    if mounted {
        let _ = command("umount", &["-l", &dir.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic that runs across a restart
// ---------------------------------------------------------------------------------------------

/// GETs http://argv[1]:argv[2]argv[3] at no more than argv[4] bytes/s; prints `progress` once
/// 8 MB came, then `<bytes> <sha256>` of the body (or `error ...`).
const SLOW_GET: &str = r#"
import hashlib, socket, sys, time
host, port, path, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
try:
    s = socket.create_connection((host, port), timeout=60)
    s.sendall(b"GET %s HTTP/1.0\r\nHost: wan\r\n\r\n" % path.encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = s.recv(65536)
        if not b:
            raise EOFError("closed before the headers")
        buf += b
    head, body = buf.split(b"\r\n\r\n", 1)
    h, n, said = hashlib.sha256(body), len(body), False
    start = time.monotonic()
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        h.update(b)
        n += len(b)
        if not said and n >= 8 << 20:
            print("progress", flush=True)
            said = True
        ahead = n / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    print(n, h.hexdigest(), flush=True)
except Exception as e:
    print("error", type(e).__name__, e, flush=True)
"#;

/// Connects to argv[1]:argv[2], prints `ready`, then sends 1 KiB numbered messages and checks
/// each echo until a line comes on stdin; prints `ok <messages> <bytes>`, or what went wrong.
const ECHO_CLIENT: &str = r#"
import select, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
print("ready", flush=True)
i = total = 0
try:
    while not select.select([sys.stdin], [], [], 0.01)[0]:
        msg = (b"%08d" % i) * 128
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = s.recv(len(msg) - len(got))
            if not chunk:
                raise EOFError("the connection was closed")
            got += chunk
        if got != msg:
            print("mismatch at message", i, flush=True)
            sys.exit(1)
        i += 1
        total += len(msg)
    print("ok", i, total, flush=True)
except Exception as e:
    print("error", type(e).__name__, e, "after", i, "messages", flush=True)
"#;

/// Short connections one after the other to the echo server at argv[1]:argv[2] until a line
/// comes on stdin, each sending 1000 bytes and reading them back: `conns N failed M`.
const CONN_LOOP: &str = r#"
import select, socket, sys
print("ready", flush=True)
ok = failed = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
            msg = b"%08d" % ok * 125
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            ok += got == msg
            failed += got != msg
    except OSError as e:
        print("failed", e, flush=True)
        failed += 1
print("conns", ok, "failed", failed, flush=True)
"#;

/// A UDP flow's request and answer every 10 ms until stdin speaks (argv: host, port); prints
/// `udp sent N answered M`.
const UDP_LOOP: &str = r#"
import select, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
s.settimeout(0.5)
print("ready", flush=True)
sent = answered = 0
while not select.select([sys.stdin], [], [], 0.01)[0]:
    msg = b"%08d" % sent
    s.send(msg)
    sent += 1
    try:
        while s.recv(100) != msg:
            pass
        answered += 1
    except socket.timeout:
        pass
print("udp sent", sent, "answered", answered, flush=True)
"#;

/// `ping -i 0.01 -c COUNT` in the background; `lost()` once it is done.
struct Pinger {
    what: String,
    proc: Proc,
}

impl Pinger {
    fn start(what: &str, cmd: Command, ip: &str, count: u32) -> Pinger {
        let mut cmd = cmd;
        cmd.args(["-i", "0.01", "-c", &count.to_string(), "-W", "1", "-q", ip]);
        Pinger {
            what: what.to_string(),
            proc: Proc::spawn(cmd),
        }
    }

    /// (sent, received) once ping is done.
    fn finish(mut self) -> (u64, u64) {
        self.proc.wait(Duration::from_secs(60));
        let lines = self.proc.lines_so_far();
        let summary = (lines.iter())
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("{}: no summary from ping: {lines:?}", self.what))
            .clone();
        let num = |word: &str| -> u64 {
            let words: Vec<&str> = summary.split_whitespace().collect();
            let i = words.iter().position(|w| w.starts_with(word)).unwrap();
            words[i - 1].parse().unwrap()
        };
        let (sent, received) = (num("packets"), num("received"));
        eprintln!(
            "{}: {sent} pings every 10 ms, {received} answered, {} lost",
            self.what,
            sent - received
        );
        (sent, received)
    }
}

// ---------------------------------------------------------------------------------------------
// Upgrade
// ---------------------------------------------------------------------------------------------

#[test]
fn an_upgrade_mid_download_loses_no_byte_no_connection_and_at_most_one_ping() {
    upgrade_mid_download(&[]);
}

/// The same with the download translated in the kernel (`--tcp-nat kernel`): the next daemon
/// carries on with the connection from the pinned maps, with the host's side it was handed;
/// and short connections all along, which the kernel opens itself, none failing across it.
#[test]
fn an_upgrade_mid_download_translated_in_the_kernel_loses_no_byte() {
    upgrade_mid_download(&["--tcp-nat", "kernel"]);
}

/// The conntrack line of the flow to `remote`, as the newest daemon shows it.
fn conntrack_line(w: &World, remote: &str) -> String {
    let table = w.vswitch(&["conntrack"]).ok().stdout;
    (table.lines())
        .find(|l| l.contains(remote))
        .unwrap_or_else(|| panic!("no flow to {remote}: {table}"))
        .to_string()
}

fn upgrade_mid_download(extra: &[&str]) {
    let kernel = !extra.is_empty();
    let mut w = World::start_with(extra);
    let (c1, c2, c3) = (Container::plain(), Container::plain(), Container::plain());
    w.plug(&c1, &[]);
    w.plug(&c2, &[]);
    w.plug(&c3, &["--publish", "8080:80"]);
    let before = w.ports();

    // The outside world serves 100 MB; c3 echoes what comes to its published port.
    let www = TempDir::new(&format!("{}-www", w.wan.ns.name));
    let file = www.path.join("big.bin");
    let size = 100 * MB;
    let make = command(
        "python3",
        &[
            "-c",
            common::MAKE_FILE,
            &size.to_string(),
            file.to_str().unwrap(),
        ],
    );
    let sha = run_timeout(make, Duration::from_secs(120)).ok().stdout;
    let _http = w
        .wan
        .python(HTTP_SERVER, &["8000", www.path.to_str().unwrap()]);
    let mut echo = c3.cmd("python3", &["-c", TCP_SERVER]);
    echo.args(["80", "echo"]);
    let _echo = Proc::spawn_ready(echo);

    // Pings every 10 ms for 8 s, between containers and to the outside.
    let to_c2 = Pinger::start("c1 -> c2", c1.cmd("ping", &[]), "10.1.1.3", 800);
    let to_wan = Pinger::start("c1 -> outside", c1.cmd("ping", &[]), WAN_IP, 800);
    let to_c3 = Pinger::start("host -> c3", w.host.cmd("ping", &[]), "10.1.1.4", 800);
    // A UDP flow from c3, which the kernel carries after its first datagram: the next daemon
    // hands it to its own maps.
    let _udp_echo = w.wan.python(UDP_SERVER, &["7009", "echo"]);
    let mut udp = c3.cmd("python3", &["-c", UDP_LOOP]);
    udp.args([WAN_IP, "7009"]);
    let mut udp = Proc::spawn_ready(udp);
    // The download, paced at 10 MB/s so that it is still in flight when the checks after the
    // upgrade come (at 20 MB/s a loaded CI machine saw it end first); a client of the
    // published port from the outside, exchanging data all along.
    let mut get = c1.cmd("python3", &["-c", SLOW_GET]);
    get.args([WAN_IP, "8000", "/big.bin", &(10 * MB).to_string()]);
    let download = Proc::spawn(get);
    assert_eq!(download.line(Duration::from_secs(30)), "progress");
    let mut client = w.wan.cmd("python3", &["-c", ECHO_CLIENT]);
    client.args([HOST_WAN_IP, "8080"]);
    let mut client = Proc::spawn_ready(client);
    // With the kernel translating, c2 opens short connections all along: the kernel opens
    // most of them itself, the daemons follow.
    let _wan_echo = w.wan.python(TCP_SERVER, &["7007", "echo"]);
    let conns = kernel.then(|| {
        let mut conns = c2.cmd("python3", &["-c", CONN_LOOP]);
        conns.args([WAN_IP, "7007"]);
        Proc::spawn_ready(conns)
    });
    thread::sleep(Duration::from_millis(1500));
    let remote = format!("{WAN_IP}:8000");
    let udp_remote = format!("{WAN_IP}:7009");
    if kernel {
        for r in [&remote, &udp_remote] {
            let line = conntrack_line(&w, r);
            assert!(line.trim_end().ends_with("kernel"), "translated: {line}");
        }
    }

    // The upgrade: a second copy of the binary takes over.
    let upgraded = w.copy_binary();
    let old = w.daemons.len() - 1;
    let started = Instant::now();
    w.run_daemon(&upgraded, &["--takeover"]);
    let status = w.wait_exit(old, Duration::from_secs(15));
    let took = started.elapsed();
    assert!(status.success(), "the old daemon exited with {status}");
    let new_log = w.log(w.daemons.len() - 1);
    assert!(new_log.contains("took over from pid"), "{new_log}");
    let old_log = w.log(old);
    assert!(old_log.contains("handed over ("), "{old_log}");
    eprintln!(
        "upgrade done in {took:?}:\n{}\n{}",
        old_log.lines().last().unwrap_or(""),
        new_log
            .lines()
            .find(|l| l.contains("took over"))
            .unwrap_or("")
    );
    // The same ports, and new plugs work.
    assert_eq!(w.ports(), before, "ls after the upgrade");
    let c4 = Container::plain();
    w.plug(&c4, &[]);
    assert!(c4.ping(GATEWAY) && c4.ping("10.1.1.2"), "a new plug works");
    if kernel {
        // The connection still, the UDP flow again: offered to the new daemon's maps at most a
        // second after its container is served.
        for r in [&remote, &udp_remote] {
            let in_kernel = || {
                let line = conntrack_line(&w, r);
                line.trim_end().ends_with("kernel").then_some(line)
            };
            assert!(
                poll(Duration::from_secs(5), in_kernel).is_some(),
                "still (again) in the kernel: {}",
                conntrack_line(&w, r)
            );
        }
    }

    // Everything that was in flight completes, intact.
    let got = download.line(Duration::from_secs(120));
    assert_eq!(
        got.trim(),
        format!("{size} {}", sha.trim()),
        "the download through the NAT, across the upgrade"
    );
    thread::sleep(Duration::from_millis(500));
    client.send("stop");
    let answer = client.line(Duration::from_secs(30));
    assert!(
        answer.starts_with("ok "),
        "the published-port client across the upgrade: {answer}"
    );
    eprintln!("published-port client: {answer}");
    if let Some(mut conns) = conns {
        conns.send("stop");
        let answer = conns.line(Duration::from_secs(30));
        let words: Vec<&str> = answer.split_whitespace().collect();
        assert_eq!(
            (words.first(), words.get(3)),
            (Some(&"conns"), Some(&"0")),
            "short connections across the upgrade: {answer}"
        );
        let stats = w.vswitch(&["stats", "--json"]).ok().stdout;
        let opened = serde_json::from_str::<serde_json::Value>(&stats).unwrap()["nat"]
            ["opened_in_kernel_total"]
            .as_u64();
        assert!(
            opened > Some(10),
            "opened by the kernel after the upgrade: {stats}"
        );
        eprintln!("short connections: {answer}, {opened:?} opened in the kernel since");
    }
    udp.send("stop");
    let answer = udp.line(Duration::from_secs(30));
    let words: Vec<u64> = (answer.split_whitespace())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        matches!(words[..], [sent, answered] if sent > 100 && sent - answered <= 2),
        "a UDP flow across the upgrade: {answer}"
    );
    eprintln!("UDP flow across the upgrade: {answer}");
    for p in [to_c2, to_wan, to_c3] {
        let what = p.what.clone();
        let (sent, received) = p.finish();
        assert!(
            sent - received <= 1,
            "{what}: {} of {sent} pings lost across the upgrade",
            sent - received
        );
    }
}

#[test]
fn a_takeover_is_refused_clearly_and_the_running_daemon_goes_on() {
    let mut w = World::start();
    let c1 = Container::plain();
    w.plug(&c1, &[]);
    let first = w.daemons[0].0.id();

    // Another network: refused by the running daemon, which is not disturbed.
    let net = format!("--net={}", w.host.path());
    let control = w.control.display().to_string();
    let mut other = command("nsenter", &[&net, VSWITCH]);
    other.args([
        "run",
        "--subnet",
        "10.1.2.0/24",
        "--control",
        &control,
        "--takeover",
    ]);
    let line = run(other).vswitch_error();
    assert!(
        line.contains("another network") && line.contains("10.1.2.0/24"),
        "{line}"
    );
    // No daemon on a control socket: said so.
    let mut none = command("nsenter", &[&net, VSWITCH]);
    let nowhere = w.dir.path.join("none.sock").display().to_string();
    none.args([
        "run",
        "--subnet",
        "10.1.1.0/24",
        "--control",
        &nowhere,
        "--takeover",
    ]);
    let line = run(none).vswitch_error();
    assert!(line.contains("no daemon is running"), "{line}");
    // A hand-over format this daemon does not write: refused, with both formats named.
    let hello = format!(
        r#"{{"v":1,"cmd":"handover","format":99,"network":{{}}}}{}"#,
        "\n"
    );
    let answer = talk(&w.control, &hello);
    assert!(
        answer.contains("\"ok\":false") && answer.contains("format mismatch"),
        "{answer}"
    );
    assert!(answer.contains("format 99"), "{answer}");

    assert!(matches!(w.daemons[0].0.try_wait(), Ok(None)));
    assert_eq!(w.daemons[0].0.id(), first);
    assert!(c1.ping(GATEWAY), "the daemon still serves");
    assert_eq!(w.ports().len(), 1);
}

/// Sends `text` on the control socket and returns the answer line.
fn talk(control: &Path, text: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(control).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(text.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    line
}

#[test]
fn a_takeover_that_never_says_ready_leaves_the_daemon_serving() {
    let mut w = World::start();
    let c1 = Container::plain();
    let c2 = Container::plain();
    w.plug(&c1, &[]);
    w.plug(&c2, &[]);
    let before = w.ports();
    let mut pings = Pinger::start("c1 -> gateway", c1.cmd("ping", &[]), GATEWAY, 300);
    thread::sleep(Duration::from_millis(300));
    // A "new process" that asks, takes the state and hangs up without a word.
    let hello = format!(
        r#"{{"v":1,"cmd":"handover","format":1,"network":{{"subnet":"10.1.1.0/24","gateway":"10.1.1.1","tap":"vsw0","mtu":1500,"workers":{}}}}}{}"#,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        "\n"
    );
    let answer = talk(&w.control, &hello);
    assert!(answer.contains("\"ok\":true"), "{answer}");
    // The daemon resumes at once: the pings go on, ls answers with the same ports.
    let resumed = poll(Duration::from_secs(5), || {
        w.log(0).contains("hand-over failed").then_some(())
    });
    assert!(resumed.is_some(), "{}", w.log(0));
    assert_eq!(w.ports(), before);
    pings = {
        let (sent, received) = pings.finish();
        assert!(sent - received <= 1, "{} pings lost", sent - received);
        Pinger::start("c1 -> c2", c1.cmd("ping", &[]), "10.1.1.3", 50)
    };
    let (sent, received) = pings.finish();
    assert_eq!(sent, received);
    assert!(matches!(w.daemons[0].0.try_wait(), Ok(None)));
}

// ---------------------------------------------------------------------------------------------
// Crash and restart
// ---------------------------------------------------------------------------------------------

/// How long after `since` the container first gets an answer from `ip` (one probe at a time).
fn answered_after(c: &Container, ip: &str, since: Instant, limit: Duration) -> Option<Duration> {
    poll(limit, || {
        let mut ping = c.cmd("ping", &["-c", "1", "-W", "0.1", "-q", ip]);
        run(&mut ping).success().then(|| since.elapsed())
    })
}

#[test]
fn a_killed_daemon_restarts_with_the_same_network() {
    let mut w = World::start();
    let (c1, c2) = (Container::plain(), Container::plain());
    let mut gone = Container::plain();
    w.plug(&c1, &[]);
    w.plug(&c2, &[]);
    w.plug(&gone, &[]);
    let before = w.ports();
    assert!(c1.ping(WAN_IP), "the outside answers before the crash");
    let pings = Pinger::start("c1 -> c2", c1.cmd("ping", &[]), "10.1.1.3", 400);
    thread::sleep(Duration::from_millis(500));

    // kill -9, and a container exits while no daemon runs.
    signal(w.daemons[0].0.id(), "KILL");
    w.wait_exit(0, Duration::from_secs(5));
    gone.kill();
    thread::sleep(Duration::from_millis(1500));
    w.run_daemon(VSWITCH, &[]);
    let serving = Instant::now();

    // The gateway and the outside answer again within a second of the restart.
    let limit = Duration::from_secs(5);
    let gw = answered_after(&c1, GATEWAY, serving, limit).expect("the gateway never answered");
    let out = answered_after(&c1, WAN_IP, serving, limit).expect("the outside never answered");
    eprintln!("after the restart: the gateway answered after {gw:?}, the outside after {out:?}");
    assert!(
        gw < Duration::from_secs(1),
        "the gateway answered after {gw:?}"
    );
    assert!(
        out < Duration::from_secs(1),
        "the outside answered after {out:?}"
    );
    // Containers talked to each other throughout (the kernel fast path).
    let (sent, received) = pings.finish();
    assert_eq!(sent, received, "pings between containers across the crash");

    // The same ports, less the container that exited, whose veth is gone too.
    let expected: Vec<_> = (before.iter())
        .filter(|p| p.0 != u64::from(gone.pid))
        .cloned()
        .collect();
    assert_eq!(w.ports(), expected);
    assert!(
        !w.host.links().contains(&gone.host_port()),
        "{:?}",
        w.host.links()
    );
    assert!(
        w.log(1).contains("exited while no daemon ran"),
        "{}",
        w.log(1)
    );
    // New plugs work, and get the address that was freed.
    let c4 = Container::plain();
    let port = w.plug(&c4, &[]);
    assert_eq!(port.str("ip"), "10.1.1.4");
    assert!(c4.ping("10.1.1.2") && c4.ping(GATEWAY));
}

#[test]
fn a_restart_refuses_or_sets_aside_what_it_cannot_trust_and_leaves_the_host_alone() {
    let mut w = World::start();
    let c1 = Container::plain();
    w.plug(&c1, &[]);
    w.vswitch(&["stop", "--keep"]).ok();
    assert!(w.wait_exit(0, Duration::from_secs(5)).success());
    let state = w.control.with_extension("state");
    let links = {
        let mut l = w.host.links();
        l.sort();
        l
    };
    assert!(links.contains(&c1.host_port()), "{links:?}");

    // A state file of another subnet: refused before anything is touched.
    let net = format!("--net={}", w.host.path());
    let control = w.control.display().to_string();
    let mut other = command("nsenter", &[&net, VSWITCH]);
    other.args(["run", "--subnet", "10.1.2.0/24", "--control", &control]);
    let line = run(other).vswitch_error();
    assert!(
        line.contains("another network") && line.contains("10.1.2.0/24"),
        "{line}"
    );
    let mut now = w.host.links();
    now.sort();
    assert_eq!(now, links, "a refused start touched the host's links");
    assert!(state.exists(), "the state file is kept");

    // A link named like a port but not this switch's (no mark), and no state at all for it:
    // reported, left alone.
    run(w.host.cmd(
        "ip",
        &[
            "link",
            "add",
            "vsw-999999",
            "type",
            "veth",
            "peer",
            "name",
            "vswpeer0",
        ],
    ))
    .ok();
    // A corrupt state file: set aside, the daemon starts without it; the links it described
    // carry the switch's mark, so they are provably its own and removed.
    fs::write(&state, b"{\"format\":1, this is not JSON").unwrap();
    w.run_daemon(VSWITCH, &[]);
    let log = w.log(1);
    assert!(log.contains("is unreadable"), "{log}");
    assert!(state.with_extension("state.bad").exists());
    assert!(
        (log.lines()).any(
            |l| l.contains("looks like a vswitch port but is not this switch's")
                && l.contains("link=vsw-999999")
        ),
        "{log}"
    );
    let links = w.host.links();
    assert!(links.contains(&"vsw-999999".to_string()), "{links:?}");
    assert!(!links.contains(&c1.host_port()), "{links:?}");
    // The container can be plugged again.
    w.plug(&c1, &[]);
    assert!(c1.ping(GATEWAY));
}
