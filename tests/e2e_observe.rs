//! What the switch shows of itself: `/metrics` scraped while traffic flows, counters that move as
//! the traffic says, the page accepted by `promtool`; `vswitch stats` giving the same numbers;
//! the daemon's log lines for the events that matter; and the operator's verbs on its tables
//! (`conntrack -D`/`-F`, `fdb --flush`, the NAT columns of `ls`).
//!
//! The metrics endpoint listens on the loopback of the sandbox's own host namespace
//! (`common::metrics::METRICS_ADDR`), never in the root namespace.

mod common;

use std::time::{Duration, Instant};

use common::metrics::{assert_promtool_accepts, METRICS_ADDR};
use common::wan::{nat_sandbox, DNS_QUERY, DNS_SERVER, TCP_SERVER, WAN_IP};
use common::{
    json_array, parse_json, run_timeout, wait_for, Container, JsonExt, Proc, Sandbox,
    SandboxOptions, DEADLINE, GATEWAY,
};

const CMD: Duration = Duration::from_secs(30);

fn metrics_args(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--metrics".to_string(), METRICS_ADDR.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn sandbox(extra: &[&str]) -> Sandbox {
    Sandbox::start_with(SandboxOptions {
        extra_args: metrics_args(extra),
        ..SandboxOptions::default()
    })
}

/// The container's own view of its interface: (tx packets, tx bytes, rx packets, rx bytes).
fn kernel_counts(c: &Container) -> (u64, u64, u64, u64) {
    let out = c
        .run("ip", &["-j", "-s", "link", "show", "dev", "eth0"])
        .ok();
    let link = &json_array(&out.stdout, "ip -j -s link")[0]["stats64"];
    let n = |dir: &str, what: &str| link[dir][what].as_u64().expect("ip -s counters");
    (
        n("tx", "packets"),
        n("tx", "bytes"),
        n("rx", "packets"),
        n("rx", "bytes"),
    )
}

/// Sends `count` UDP datagrams of `size` bytes to `ip:port`, as fast as it can.
const UDP_BURST: &str = r#"
import socket, sys
ip, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    s.sendto(b"x" * size, (ip, port))
print("sent", count)
"#;

fn py(c: &Container, script: &str, args: &[&str]) -> common::Out {
    let mut cmd = c.cmd("python3", &["-c", script]);
    cmd.args(args);
    run_timeout(cmd, CMD)
}

fn ip_of(sb: &Sandbox, c: &Container) -> String {
    sb.port_of(c.pid).expect("plugged").str("ip").to_string()
}

#[test]
fn port_counters_are_what_the_containers_sent_on_both_paths_and_promtool_reads_the_page() {
    let sb = sandbox(&[]);
    let (a, b) = (sb.plug_plain(), sb.plug_plain());
    let (ip_a, ip_b) = (ip_of(&sb, &a), ip_of(&sb, &b));
    let before = sb.scrape();
    assert_promtool_accepts(&before.text);

    // Both learned: the burst goes over the kernel fast path, pings through either.
    assert!(a.ping(&ip_b) && b.ping(&ip_a) && a.ping(GATEWAY));
    py(&a, UDP_BURST, &[&ip_b, "9", "1000", "200"]).ok();

    // Every frame a container sent is counted on its port, by the daemon or by the fast path:
    // once nothing moves any more, the port's received frames and bytes are exactly the
    // container's transmitted ones (its own kernel's counters).
    let port = |c: &Container| c.host_port();
    for c in [&a, &b] {
        wait_for(
            DEADLINE,
            || {
                let k = kernel_counts(c);
                let m = sb.scrape();
                let p = [("port", port(c))];
                let labels: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let counted = (
                    m.int("vswitch_port_rx_frames_total", &labels)
                        + m.int(
                            "vswitch_port_dropped_frames_total",
                            &[labels[0], ("reason", "kernel")],
                        ),
                    m.int("vswitch_port_rx_bytes_total", &labels),
                );
                (kernel_counts(c) == k && counted == (k.0, k.1)).then_some(())
            },
            || {
                format!(
                    "port {} counted other frames than its container sent: kernel {:?}\n{}",
                    port(c),
                    kernel_counts(c),
                    sb.metrics_text()
                )
            },
        );
    }

    let m = sb.scrape();
    assert_promtool_accepts(&m.text);
    let pa = port(&a);
    let pb = port(&b);
    let fast = |p: &str, what: &str| m.int(what, &[("port", p), ("path", "fast")]);
    // The burst went over the fast path, and the fast path counts a frame on both its ports
    // (a's pings to the gateway too: on a's port and the TAP's).
    assert!(
        fast(&pa, "vswitch_port_rx_frames_total") >= 1000,
        "{}",
        m.text
    );
    let tap = sb.tap_port().str("host_ifname").to_string();
    let total = |what: &str| fast(&pa, what) + fast(&pb, what) + fast(&tap, what);
    assert_eq!(
        total("vswitch_port_rx_frames_total"),
        total("vswitch_port_tx_frames_total"),
        "{}",
        m.text
    );
    assert!(fast(&tap, "vswitch_port_tx_frames_total") > 0, "{}", m.text);
    // Labels name the container; the info metric carries its address.
    let pid = a.pid.to_string();
    assert_eq!(
        m.int(
            "vswitch_port_info",
            &[
                ("port", &pa),
                ("pid", &pid),
                ("ip", &ip_a),
                ("kind", "container")
            ]
        ),
        1
    );
    assert_eq!(m.int("vswitch_containers", &[]), 2);
    // The switch flooded (the first ARP), learned both containers, and its workers worked.
    assert!(m.int("vswitch_switch_flooded_frames_total", &[]) > 0);
    assert!(m.int("vswitch_fdb_learned_total", &[]) >= 2);
    assert!(m.sum("vswitch_worker_busy_seconds_total", &[]) > 0.0);
    assert!(
        m.sum("vswitch_worker_busy_seconds_total", &[])
            > before.sum("vswitch_worker_busy_seconds_total", &[])
    );
    assert_eq!(m.int("vswitch_plugs_total", &[]), 2);
    assert_eq!(m.int("vswitch_plug_duration_seconds_count", &[]), 2);

    // `vswitch stats --json` gives the same numbers from the same snapshot.
    let stats = parse_json(sb.vswitch(&["stats", "--json"]).ok().stdout.trim()).unwrap();
    assert_eq!(stats["plugs"].num("plugged"), 2);
    let port_a = (stats["ports"].as_array().unwrap().iter())
        .find(|p| p["host_ifname"] == pa.as_str())
        .cloned()
        .expect("port a in stats");
    // A neighbour probe may pass between two reads: the stats, read between two scrapes,
    // lie between them.
    let after = sb.scrape();
    let between = |what: &str, stat: &str, labels: &[(&str, &str)]| {
        let (lo, hi, got) = (
            m.int(what, labels),
            after.int(what, labels),
            port_a.num(stat),
        );
        assert!(
            lo <= got && got <= hi,
            "{stat}: {got} not within {lo}..={hi} of {what}"
        );
    };
    between(
        "vswitch_port_rx_frames_total",
        "fast_rx_frames",
        &[("port", &pa), ("path", "fast")],
    );
    between(
        "vswitch_port_rx_frames_total",
        "rx_frames",
        &[("port", &pa)],
    );
}

#[test]
fn every_frame_through_the_daemon_is_counted_both_ways() {
    // Without the fast path the daemon switches everything: what one container sends, the
    // other receives, and both ports count it, in frames and bytes, exactly.
    let sb = sandbox(&["--no-fast-path"]);
    let (a, b) = (sb.plug_plain(), sb.plug_plain());
    let ip_b = ip_of(&sb, &b);
    assert!(a.ping(&ip_b));
    py(&a, UDP_BURST, &[&ip_b, "9", "300", "100"]).ok();
    for c in [&a, &b] {
        let p = c.host_port();
        wait_for(
            DEADLINE,
            || {
                let k = kernel_counts(c);
                let m = sb.scrape();
                let counted = (
                    m.int("vswitch_port_rx_frames_total", &[("port", &p)]),
                    m.int("vswitch_port_rx_bytes_total", &[("port", &p)]),
                    m.int("vswitch_port_tx_frames_total", &[("port", &p)]),
                    m.int("vswitch_port_tx_bytes_total", &[("port", &p)]),
                );
                let drops = m.int("vswitch_port_dropped_frames_total", &[("port", &p)]);
                (kernel_counts(c) == k && counted == k && drops == 0).then_some(())
            },
            || {
                format!(
                    "port {p}: the daemon's counters are not the container's {:?}\n{}",
                    kernel_counts(c),
                    sb.metrics_text()
                )
            },
        );
    }
    let m = sb.scrape();
    assert_eq!(
        m.int("vswitch_port_rx_frames_total", &[("path", "fast")]),
        0,
        "no fast path, no fast frames"
    );
    assert!(m.int("vswitch_switch_frames_total", &[]) >= 300);
}

/// Opens `argv[3]` UDP flows to `argv[1]:argv[2]` one after the other (one socket each),
/// printing `ok` or `refused` for each.
const UDP_FLOWS: &str = r#"
import socket, sys
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
keep = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect((ip, port))
    keep.append(s)
    try:
        s.send(b"hello")
        s.recv(100)
        print("ok", flush=True)
    except OSError:
        print("refused", flush=True)
"#;

#[test]
fn a_full_table_refuses_one_flow_and_the_metrics_and_the_log_say_so() {
    let (sb, wan) = nat_sandbox(
        &metrics_args(&["--max-flows", "1"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[],
    );
    let c = Container::plain();
    sb.plug(&c, &[]);
    let _echo = wan.python(common::wan::UDP_SERVER, &["7007", "echo"]);
    let out = py(&c, UDP_FLOWS, &[WAN_IP, "7007", "2"]).ok();
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), ["ok", "refused"]);

    let m = sb.scrape();
    assert_promtool_accepts(&m.text);
    assert_eq!(
        m.int(
            "vswitch_nat_flows_refused_total",
            &[("reason", "table_full")]
        ),
        1
    );
    assert_eq!(
        m.int("vswitch_nat_flows_refused_total", &[]),
        1,
        "one refusal, for one reason"
    );
    let p = c.host_port();
    assert_eq!(
        m.int("vswitch_port_nat_refused_flows_total", &[("port", &p)]),
        1
    );
    assert_eq!(m.int("vswitch_port_nat_flows", &[("port", &p)]), 1);
    assert_eq!(
        m.int(
            "vswitch_nat_flows",
            &[("proto", "udp"), ("state", "REPLIED")]
        ),
        1
    );
    assert_eq!(m.int("vswitch_nat_flows_max", &[]), 1);
    assert!(m.int("vswitch_nat_packets_total", &[("direction", "out")]) >= 1);
    let stats = parse_json(sb.vswitch(&["stats", "--json"]).ok().stdout.trim()).unwrap();
    assert_eq!(stats["nat"].num("table_full"), 1);

    // The refusal is in the log (from the manager's tick: within a couple of seconds), with
    // the container it refused.
    let line = wait_for(
        DEADLINE,
        || {
            (sb.daemon_log().lines())
                .find(|l| l.contains("NAT refused new flows"))
                .map(str::to_string)
        },
        || format!("no refusal in the log:\n{}", sb.daemon_log()),
    );
    assert!(line.trim_start().starts_with("WARN "), "{line}");
    assert!(line.contains("table_full=1"), "{line}");
    assert!(
        line.contains(&format!("{p}:1")),
        "names the container's port: {line}"
    );
}

#[test]
fn dns_queries_are_counted_and_timed_and_an_upstream_failure_is_logged() {
    let (sb, wan) = nat_sandbox(
        &metrics_args(&[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[],
    );
    let c = Container::plain();
    sb.plug(&c, &[]);
    let mut dns = wan.python(DNS_SERVER, &["203.0.113.7"]);
    for name in ["a.example", "b.example", "c.example"] {
        let out = py(&c, DNS_QUERY, &[GATEWAY, name, "udp"]).ok();
        assert_eq!(out.stdout.trim(), "A 203.0.113.7");
    }
    py(&c, DNS_QUERY, &[GATEWAY, "d.example", "tcp"]).ok();
    let m = sb.scrape();
    assert_promtool_accepts(&m.text);
    assert_eq!(
        m.int("vswitch_dns_queries_total", &[("transport", "udp")]),
        3
    );
    assert_eq!(
        m.int(
            "vswitch_dns_query_duration_seconds_count",
            &[("transport", "udp")]
        ),
        3
    );
    assert_eq!(
        m.int(
            "vswitch_dns_query_duration_seconds_bucket",
            &[("transport", "udp"), ("le", "+Inf")]
        ),
        3
    );
    assert!(m.sum("vswitch_dns_query_duration_seconds_sum", &[]) > 0.0);
    assert_eq!(m.int("vswitch_dns_tcp_connections_total", &[]), 1);
    assert_eq!(m.int("vswitch_dns_failures_total", &[]), 0);

    // The upstream goes away: the next query goes unanswered, counted and logged.
    dns.kill();
    let out = py(&c, DNS_QUERY, &[GATEWAY, "e.example", "udp"]);
    assert!(
        !out.success(),
        "answered without an upstream: {}",
        out.describe()
    );
    wait_for(
        DEADLINE,
        || {
            let m = sb.scrape();
            (m.int("vswitch_dns_failures_total", &[("transport", "udp")]) == 1).then_some(())
        },
        || format!("no failure counted:\n{}", sb.metrics_text()),
    );
    let m = sb.scrape();
    assert_eq!(m.int("vswitch_dns_queries_total", &[]), 4);
    assert_eq!(m.int("vswitch_dns_query_duration_seconds_count", &[]), 3);
    let log = sb.daemon_log();
    let line = (log.lines())
        .find(|l| l.contains("DNS upstreams failed"))
        .unwrap_or_else(|| panic!("no upstream failure in the log:\n{log}"));
    assert!(line.trim_start().starts_with("WARN "), "{line}");
    assert!(
        line.contains(WAN_IP) && line.contains("transport=udp"),
        "{line}"
    );
}

/// The daemon's lines of one event: those whose message (after the level) starts with `what`.
fn events<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    (log.lines())
        .filter(|l| {
            let l = l.trim_start();
            let rest = l.split_once(' ').map_or("", |(_, r)| r);
            rest.starts_with(what)
        })
        .collect()
}

#[test]
fn the_log_has_one_line_per_event_with_the_port_and_container_named() {
    let sb = sandbox(&["--log-level", "info"]);
    let mut a = sb.plug_plain();
    let b = sb.plug_plain();
    sb.vswitch(&["unplug", &b.pid.to_string()]).ok();
    a.kill();
    let pa = a.host_port();
    wait_for(
        DEADLINE,
        || sb.port_of(a.pid).is_none().then_some(()),
        || "the exited container's port is still there".into(),
    );
    // A malformed control request, sent straight to the socket.
    let mut nc = sb.host_cmd(
        "python3",
        &[
            "-c",
            r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b'{"v":2,"cmd":"reboot"}\n')
print(s.recv(4096).decode().strip())
"#,
        ],
    );
    nc.arg(&sb.control);
    let out = run_timeout(nc, CMD).ok();
    assert!(out.stdout.contains("malformed request"), "{}", out.stdout);

    let log = sb.daemon_log();
    let one = |what: &str, needles: &[&str]| {
        let lines = events(&log, what);
        assert_eq!(lines.len(), 1, "one {what:?} line expected:\n{log}");
        for n in needles {
            assert!(
                lines[0].contains(n),
                "{what:?} line without {n:?}: {}",
                lines[0]
            );
        }
        lines[0]
    };
    let (pida, pidb) = (format!("pid={}", a.pid), format!("pid={}", b.pid));
    let plugged = events(&log, "plugged");
    assert_eq!(plugged.len(), 2, "{log}");
    assert!(plugged[0].contains(&format!("port={pa}")) && plugged[0].contains(&pida));
    assert!(plugged[0].contains("ip=10.1.1.2") && plugged[0].contains("fast_path="));
    one(
        "unplugged",
        &[&format!("port={}", b.host_port()), &pidb, "ip=10.1.1.3"],
    );
    one("container exited", &[&format!("port={pa}"), &pida]);
    one("kernel fast path:", &["hook="]);
    one("serving metrics", &[METRICS_ADDR]);
    one("refused a control request", &["reboot", "code=Invalid"]);
    // Plain output (a file): a level word, no colour, no timestamp.
    for l in log.lines().filter(|l| !l.is_empty()) {
        let level = l.trim_start().split(' ').next().unwrap();
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
            "{l:?}"
        );
        assert!(!l.contains('\x1b'), "{l:?}");
    }
}

#[test]
fn under_journald_lines_carry_priorities_and_no_timestamp() {
    let sb = Sandbox::start_with(SandboxOptions {
        journal: true,
        extra_args: vec!["--log-level".into(), "debug".into()],
        ..SandboxOptions::default()
    });
    sb.plug_plain();
    let log = sb.daemon_log();
    assert!(
        log.lines().any(|l| l.starts_with("<6>plugged port=")),
        "{log}"
    );
    for l in log.lines().filter(|l| !l.is_empty()) {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| l.starts_with(p)),
            "a line without a priority: {l:?}"
        );
    }
}

#[test]
fn a_taken_over_network_is_logged_port_by_port() {
    let mut sb = sandbox(&[]);
    let c = sb.plug_plain();
    // SIGUSR2: the daemon leaves the network for the next one.
    assert!(sb.stop_daemon("USR2").success());
    let mut cmd = sb.host_cmd(common::VSWITCH, &["run", "--subnet", common::SUBNET]);
    cmd.arg("--control").arg(&sb.control);
    let mut next = Proc::spawn(cmd);
    let took = wait_for(
        DEADLINE,
        || {
            events(&next.stderr(), "took over")
                .first()
                .map(|l| l.to_string())
        },
        || format!("no take-over line:\n{}", next.stderr()),
    );
    assert!(took.contains(&format!("port={}", c.host_port())), "{took}");
    assert!(took.contains(&format!("pid={}", c.pid)), "{took}");
    // The next daemon removes the network when told to, like the first would have.
    wait_for(
        DEADLINE,
        || {
            (sb.vswitch_cmd("ls", &[]).output().ok()?.status)
                .success()
                .then_some(())
        },
        || "the next daemon does not answer".into(),
    );
    common::signal(next.pid(), "TERM");
    assert!(next.wait(DEADLINE).success());
}

/// Connects to `argv[1]:argv[2]`, says `ready`, then waits for the connection to end and says
/// how: `reset` or `eof`.
const HOLD_TCP: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
s.sendall(b"hello")
print("ready", flush=True)
try:
    while s.recv(100):
        pass
    print("eof", flush=True)
except ConnectionResetError:
    print("reset", flush=True)
"#;

/// A UDP server that answers every datagram with the port it came from.
const UDP_WHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(100)
    s.sendto(str(peer[1]).encode(), peer)
"#;

/// From one socket, asks `argv[1]:argv[2]` which port it sees, on each line of stdin.
const UDP_ASK: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.connect((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
for line in sys.stdin:
    s.send(b"?")
    print(s.recv(100).decode(), flush=True)
"#;

fn conntrack(sb: &Sandbox) -> Vec<common::Json> {
    json_array(
        &sb.vswitch(&["conntrack", "--json"]).ok().stdout,
        "conntrack --json",
    )
}

#[test]
fn conntrack_delete_closes_sockets_and_resets_relayed_connections_and_flush_empties_it() {
    conntrack_delete_and_flush("relay");
}

/// The same with the TCP connection translated in the kernel: the daemon resets both ends
/// itself (no host socket of the connection would), from where each acknowledged last.
#[test]
fn conntrack_delete_resets_a_connection_translated_in_the_kernel_on_both_sides() {
    conntrack_delete_and_flush("kernel");
}

fn conntrack_delete_and_flush(tcp_nat: &str) {
    let (sb, wan) = nat_sandbox(
        &metrics_args(&["--tcp-nat", tcp_nat])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[],
    );
    let c = Container::plain();
    sb.plug(&c, &[]);
    let watch = wan.python(TCP_SERVER, &["9100", "watch"]);
    let _who = wan.python(UDP_WHO, &["7100"]);
    let mut held = {
        let mut cmd = c.cmd("python3", &["-c", HOLD_TCP]);
        cmd.args([WAN_IP, "9100"]);
        Proc::spawn_ready(cmd)
    };
    let mut ask = {
        let mut cmd = c.cmd("python3", &["-c", UDP_ASK]);
        cmd.args([WAN_IP, "7100"]);
        Proc::spawn_ready(cmd)
    };
    ask.send("?");
    let first_port = ask.line(DEADLINE);
    let flows = conntrack(&sb);
    assert_eq!(flows.len(), 2, "{flows:?}");

    // `ls` shows the container's NAT flows.
    let ls = sb.vswitch(&["ls"]).ok().stdout;
    let header = ls.lines().next().unwrap();
    assert!(
        header.contains("NAT-FLOWS") && header.contains("NAT-REFUSED"),
        "{ls}"
    );
    let row = (ls.lines())
        .find(|l| l.contains(&c.host_port()))
        .unwrap_or_else(|| panic!("{ls}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    let nat_flows = header
        .split_whitespace()
        .position(|h| h == "NAT-FLOWS")
        .unwrap();
    assert_eq!(
        cols[nat_flows + 1],
        "2",
        "the CONTAINER column has two words: {row}"
    );

    // A filter is required; one that matches nothing deletes nothing.
    let out = sb.vswitch(&["conntrack", "-D"]);
    common::assert_mentions(&out.vswitch_error(), &["filter"]);
    let none = sb
        .vswitch(&["conntrack", "-D", "-p", "icmp", "--json"])
        .ok();
    assert_eq!(json_array(&none.stdout, "conntrack -D").len(), 0);

    // Deleting the TCP flow resets the relayed connection on both sides.
    let out = sb
        .vswitch(&[
            "conntrack",
            "-D",
            "-p",
            "tcp",
            "-d",
            WAN_IP,
            "--dport",
            "9100",
            "--json",
        ])
        .ok();
    let deleted = json_array(&out.stdout, "conntrack -D --json");
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0].str("proto"), "tcp");
    assert_eq!(
        held.line(DEADLINE),
        "reset",
        "the container's side was not reset"
    );
    assert_eq!(
        watch.line(DEADLINE),
        "peer reset",
        "the outside's side was not reset"
    );
    assert!(held.wait(DEADLINE).success());
    let left = conntrack(&sb);
    assert_eq!(left.len(), 1, "only the UDP flow is left: {left:?}");
    assert_eq!(left[0].str("proto"), "udp");

    // Deleting the UDP flow closes its host socket; the container's next datagram makes a
    // new flow, which leaves through a new socket (the outside sees another port).
    let udp_socket = |port: &str| {
        let filter = format!("sport = :{port}");
        let out = run_timeout(sb.host_cmd("ss", &["-H", "-uan", &filter]), CMD).ok();
        !out.stdout.trim().is_empty()
    };
    assert!(
        udp_socket(&first_port),
        "the flow's host socket is not on port {first_port}"
    );
    sb.vswitch(&["conntrack", "-D", "-s", "10.1.1.2", "-p", "udp"])
        .ok();
    assert!(conntrack(&sb).is_empty());
    wait_for(
        DEADLINE,
        || (!udp_socket(&first_port)).then_some(()),
        || format!("the deleted flow's socket (port {first_port}) is still open"),
    );
    ask.send("?");
    let second_port = ask.line(DEADLINE);
    assert_ne!(first_port, second_port, "the old flow's socket was kept");
    assert_eq!(conntrack(&sb).len(), 1);

    // -F deletes every flow.
    let out = sb.vswitch(&["conntrack", "-F"]).ok();
    assert!(out.stdout.contains("1 flows deleted"), "{}", out.stdout);
    assert!(conntrack(&sb).is_empty());
    let m = sb.scrape();
    assert_eq!(m.int("vswitch_nat_flows_removed_total", &[]), 3);
    assert_eq!(m.int("vswitch_nat_relays", &[]), 0);
    let (relayed, translated) = match tcp_nat {
        "relay" => (1, 0),
        _ => (0, 1),
    };
    assert_eq!(m.int("vswitch_nat_relays_opened_total", &[]), relayed);
    assert_eq!(m.int("vswitch_nat_relays_in_kernel_total", &[]), translated);
    let log = sb.daemon_log();
    assert_eq!(events(&log, "deleted NAT flows").len(), 4, "{log}");
}

#[test]
fn fdb_flush_forgets_one_ports_macs_or_all_and_traffic_relearns_them() {
    let sb = sandbox(&[]);
    let (a, b) = (sb.plug_plain(), sb.plug_plain());
    let (ip_a, ip_b) = (ip_of(&sb, &a), ip_of(&sb, &b));
    assert!(a.ping(&ip_b) && b.ping(GATEWAY));
    let on = |port: &str| {
        (sb.fdb().into_iter())
            .filter(|e| e["port_name"] == port)
            .count()
    };
    let (pa, pb) = (a.host_port(), b.host_port());
    wait_for(
        DEADLINE,
        || (on(&pa) == 1 && on(&pb) == 1).then_some(()),
        || format!("{:?}", sb.fdb()),
    );

    let out = sb.vswitch(&["fdb", "--flush", &pa, "--json"]).ok();
    let flushed = json_array(&out.stdout, "fdb --flush --json");
    assert_eq!(flushed.len(), 1, "{flushed:?}");
    assert_eq!(flushed[0].str("port_name"), pa);
    assert_eq!(on(&pa), 0);
    assert_eq!(on(&pb), 1, "the other port's MAC stays");

    let err = sb
        .vswitch(&["fdb", "--flush", "no-such-port"])
        .vswitch_error();
    common::assert_mentions(&err, &["no port named no-such-port"]);

    let flushed_at = Instant::now();
    let out = sb.vswitch(&["fdb", "--flush"]).ok();
    assert!(out.stdout.starts_with("flushed "), "{}", out.stdout);
    // The containers' kernels may probe a neighbour at any moment, and a probe is learned
    // again at once: whatever is in the table now was learned after the flush.
    let since_flush = flushed_at.elapsed().as_millis() as f64;
    for e in sb.fdb() {
        assert!(
            e.num("age_ms") as f64 <= since_flush,
            "survived the flush: {e:?}"
        );
    }
    let m = sb.scrape();
    let flushed_total = m.int("vswitch_fdb_flushed_total", &[]);
    assert!(flushed_total >= 2, "{flushed_total}");

    // Traffic goes on: flooded, then learned again.
    assert!(b.ping(&ip_a) && a.ping(&ip_b));
    wait_for(
        DEADLINE,
        || (on(&pa) == 1 && on(&pb) == 1).then_some(()),
        || format!("not learned again: {:?}", sb.fdb()),
    );
}

#[test]
fn the_metrics_endpoint_goes_on_across_a_takeover() {
    // The successor binds the same address while the old daemon still serves it
    // (SO_REUSEPORT), then serves the network it took over. (No fast path: these daemons run
    // under `ip netns exec`, whose mount namespace would take the fast path's pins along.)
    let mut sb = sandbox(&["--no-fast-path"]);
    let c = sb.plug_plain();
    assert_eq!(sb.scrape().int("vswitch_containers", &[]), 1);
    let mut cmd = sb.host_cmd(common::VSWITCH, &["run", "--subnet", common::SUBNET]);
    cmd.arg("--control").arg(&sb.control);
    cmd.args(["--no-fast-path", "--takeover", "--metrics", METRICS_ADDR]);
    let mut next = Proc::spawn(cmd);
    // The old daemon exits once it has handed over (SIGCONT changes nothing: this waits).
    assert!(sb.stop_daemon("CONT").success(), "{}", next.stderr());
    let m = sb.scrape();
    assert_promtool_accepts(&m.text);
    assert_eq!(m.int("vswitch_containers", &[]), 1, "{}", next.stderr());
    let pid = c.pid.to_string();
    assert_eq!(m.int("vswitch_port_info", &[("pid", &pid)]), 1);
    assert!(
        next.stderr().contains("took over from pid"),
        "{}",
        next.stderr()
    );
    common::signal(next.pid(), "TERM");
    assert!(next.wait(DEADLINE).success());
}
