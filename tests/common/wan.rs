//! A simulated outside world for the NAT tests: a network namespace of its own on a
//! documentation network (198.51.100.0/24), linked to the sandbox's host namespace by a veth:
//!
//! ```text
//!   host namespace (daemon)            wan namespace
//!   wan0 198.51.100.1/24  <--veth-->  eth0 198.51.100.2/24 (+ more addresses on request)
//! ```
//!
//! The host namespace gets no route other than that link's, `ip_forward` stays 0 and no
//! firewall rule exists anywhere: whatever a container reaches in the wan, it reaches through
//! the daemon's own NAT. Servers for the wan (HTTP, TCP echo/reset, UDP echo, DNS) are small
//! python3 scripts, started as [`Proc`]s that print `ready` once listening.

use super::{command, run, unique_name, NetNs, Out, Proc, Sandbox, SandboxOptions};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The host's address on the wan link.
pub const HOST_WAN_IP: &str = "198.51.100.1";
/// The wan's first address, where its servers listen.
pub const WAN_IP: &str = "198.51.100.2";

/// The wan namespace. On drop, the veth is deleted from the host's side first (a deleted
/// namespace takes its devices down asynchronously), then the namespace.
pub struct Wan {
    pub ns: NetNs,
    /// The host namespace `wan0` was created in, once linked.
    host: OnceLock<String>,
}

impl Wan {
    /// An empty wan namespace (`lo` up); link it to a host with [`Wan::link`].
    pub fn new() -> Wan {
        Wan {
            ns: NetNs::new(&unique_name()),
            host: OnceLock::new(),
        }
    }

    /// Links the wan to `host`: `wan0` (198.51.100.1/24) in the host namespace, `eth0`
    /// (198.51.100.2/24 and `extra` addresses, /24 each) in the wan. Both ends are created
    /// straight inside their namespaces.
    pub fn link(&self, host: &NetNs, extra: &[&str]) {
        let (h, w) = (host.name.as_str(), self.ns.name.as_str());
        let ip = |ns: &str, args: &[&str]| {
            let mut full = vec!["-n", ns];
            full.extend_from_slice(args);
            run(command("ip", &full)).ok();
        };
        ip(
            h,
            &[
                "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", w,
            ],
        );
        ip(
            h,
            &["addr", "add", &format!("{HOST_WAN_IP}/24"), "dev", "wan0"],
        );
        let _ = self.host.set(h.to_string());
        ip(h, &["link", "set", "wan0", "up"]);
        for addr in std::iter::once(&WAN_IP).chain(extra) {
            ip(w, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        }
        ip(w, &["link", "set", "eth0", "up"]);
    }

    /// A command run in the wan namespace.
    pub fn cmd(&self, program: &str, args: &[&str]) -> Command {
        self.ns.cmd(program, args)
    }

    pub fn run(&self, program: &str, args: &[&str]) -> Out {
        run(self.cmd(program, args))
    }

    /// Starts a python3 script in the wan and waits for its `ready` line.
    #[track_caller]
    pub fn python(&self, script: &str, args: &[&str]) -> Proc {
        let mut cmd = self.cmd("python3", &["-c", script]);
        cmd.args(args);
        Proc::spawn_ready(cmd)
    }
}

impl Default for Wan {
    fn default() -> Self {
        Wan::new()
    }
}

/// A sandbox whose host namespace has an uplink to a fresh wan, set up before the daemon
/// starts (as on a real host), with `ip_forward` pinned to 0 first (a new namespace copies the
/// root namespace's value, which is not this test's to decide): any 1 seen later was set by
/// the daemon. The daemon forwards DNS to the wan (`--dns 198.51.100.2`); `extra_args` go to
/// `vswitch run` as well. `wan_addrs` are more addresses for the wan's `eth0`.
pub fn nat_sandbox(extra_args: &[&str], wan_addrs: &[&str]) -> (Sandbox, Wan) {
    let opts = SandboxOptions {
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        ..SandboxOptions::default()
    };
    nat_sandbox_with(opts, wan_addrs)
}

/// [`nat_sandbox`] with the daemon's options given in full (e.g. a wrapper).
pub fn nat_sandbox_with(mut opts: SandboxOptions, wan_addrs: &[&str]) -> (Sandbox, Wan) {
    let wan = Wan::new();
    let mut args = vec!["--dns".to_string(), WAN_IP.to_string()];
    args.append(&mut opts.extra_args);
    let sb = Sandbox::start_prepared(
        SandboxOptions {
            extra_args: args,
            ..opts
        },
        |host| {
            run(host.cmd("sysctl", &["-q", "-w", "net.ipv4.ip_forward=0"])).ok();
            wan.link(host, wan_addrs);
        },
    );
    (sb, wan)
}

// ---------------------------------------------------------------------------------------------
// Servers for the wan (python3). Each prints `ready` once listening.
// ---------------------------------------------------------------------------------------------

/// HTTP server: argv[1] port, argv[2] directory to serve.
pub const HTTP_SERVER: &str = r#"
import functools, http.server, sys
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
handler = functools.partial(Quiet, directory=sys.argv[2])
server = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), handler)
print("ready", flush=True)
server.serve_forever()
"#;

/// TCP server: argv[1] port, argv[2] mode:
/// - `echo`: echoes everything on any number of connections (one thread, selectors);
/// - `reset`: reads one chunk, then closes with a zero linger (RST); prints `reset sent`;
/// - `halfclose`: reads to end of stream, then answers `got <bytes> <sha256>` and closes;
/// - `watch`: reads until end of stream or error; prints `peer eof` or `peer reset`.
pub const TCP_SERVER: &str = r#"
import hashlib, selectors, socket, struct, sys, threading
port, mode = int(sys.argv[1]), sys.argv[2]
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", port))
ls.listen(4096)
print("ready", flush=True)

def reset(c):
    c.recv(65536)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    print("reset sent", flush=True)

def halfclose(c):
    h, n = hashlib.sha256(), 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        h.update(b)
        n += len(b)
    c.sendall(("got %d %s\n" % (n, h.hexdigest())).encode())
    c.close()

def watch(c):
    try:
        while c.recv(65536):
            pass
        print("peer eof", flush=True)
    except ConnectionResetError:
        print("peer reset", flush=True)
    except OSError as e:
        print("peer error", e.errno, flush=True)
    c.close()

if mode == "echo":
    sel = selectors.DefaultSelector()
    ls.setblocking(False)
    sel.register(ls, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s is ls:
                try:
                    c, _ = ls.accept()
                except OSError:
                    continue
                c.settimeout(30)
                sel.register(c, selectors.EVENT_READ)
                continue
            try:
                data = s.recv(65536)
            except (BlockingIOError, socket.timeout):
                continue
            except OSError:
                data = b""
            if data:
                try:
                    s.sendall(data)
                    continue
                except OSError:
                    pass
            sel.unregister(s)
            s.close()
else:
    handler = {"reset": reset, "halfclose": halfclose, "watch": watch}[mode]
    while True:
        c, _ = ls.accept()
        c.settimeout(60)
        threading.Thread(target=handler, args=(c,), daemon=True).start()
"#;

/// UDP server: argv[1] port, argv[2] mode: `echo` sends every datagram back; `sink` reads them
/// and never answers (and, being bound, no ICMP port unreachable goes back either).
pub const UDP_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("0.0.0.0", int(sys.argv[1])))
echo = sys.argv[2] == "echo"
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    if echo:
        s.sendto(data, peer)
"#;

/// DNS server on port 53, UDP and TCP: answers every A query with argv[1] (one record, TTL
/// 60), anything else with no answer. Prints `<udp|tcp> <client ip> <name>` per query.
pub const DNS_SERVER: &str = r#"
import socket, struct, sys, threading
addr = socket.inet_aton(sys.argv[1])
lock = threading.Lock()

def answer(q, proto, peer):
    qid, _, qdcount = struct.unpack(">HHH", q[:6])
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode())
        i += q[i] + 1
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
    question = q[12:i + 5]
    with lock:
        print(proto, peer[0], ".".join(labels), flush=True)
    an, count = b"", 0
    if qtype == 1:
        an = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + addr
        count = 1
    return struct.pack(">HHHHHH", qid, 0x8180, 1, count, 0, 0) + question + an

def serve_udp():
    while True:
        q, peer = udp.recvfrom(65535)
        udp.sendto(answer(q, "udp", peer), peer)

def read_exact(c, n):
    b = b""
    while len(b) < n:
        chunk = c.recv(n - len(b))
        if not chunk:
            raise EOFError
        b += chunk
    return b

def serve_conn(c, peer):
    try:
        while True:
            n = struct.unpack(">H", read_exact(c, 2))[0]
            r = answer(read_exact(c, n), "tcp", peer)
            c.sendall(struct.pack(">H", len(r)) + r)
    except (EOFError, OSError):
        pass
    c.close()

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 53))
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", 53))
tcp.listen(64)
threading.Thread(target=serve_udp, daemon=True).start()
print("ready", flush=True)
while True:
    c, peer = tcp.accept()
    c.settimeout(30)
    threading.Thread(target=serve_conn, args=(c, peer), daemon=True).start()
"#;

/// DNS client: argv[1] server, argv[2] name, argv[3] `udp` or `tcp`. Asks for the A records
/// of the name and prints `A <address>` for each, or `rcode <n>`; exits non-zero on a
/// malformed or mismatched answer.
pub const DNS_QUERY: &str = r#"
import random, socket, struct, sys
server, name, proto = sys.argv[1], sys.argv[2], sys.argv[3]
qid = random.randrange(65536)
qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
if proto == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect((server, 53))
    s.send(q)
    r = s.recv(65535)
else:
    s = socket.create_connection((server, 53), timeout=5)
    s.sendall(struct.pack(">H", len(q)) + q)
    def read_exact(n):
        b = b""
        while len(b) < n:
            chunk = s.recv(n - len(b))
            if not chunk:
                sys.exit("connection closed after %d of %d bytes" % (len(b), n))
            b += chunk
        return b
    r = read_exact(struct.unpack(">H", read_exact(2))[0])
rid, flags, qd, an = struct.unpack(">HHHH", r[:8])
if rid != qid:
    sys.exit("answer id %d for query id %d" % (rid, qid))
if flags & 0x000f:
    print("rcode", flags & 0x000f)
    sys.exit(0)
i = 12
for _ in range(qd):
    while r[i]:
        i += r[i] + 1
    i += 5
for _ in range(an):
    if r[i] & 0xc0 == 0xc0:
        i += 2
    else:
        while r[i]:
            i += r[i] + 1
        i += 1
    rtype, _, _, rdlen = struct.unpack(">HHIH", r[i:i + 10])
    i += 10
    if rtype == 1:
        print("A", socket.inet_ntoa(r[i:i + rdlen]))
    i += rdlen
"#;

impl Drop for Wan {
    fn drop(&mut self) {
        if let Some(host) = self.host.get() {
            let _ = command("ip", &["-n", host, "link", "del", "wan0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
