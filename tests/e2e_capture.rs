//! End-to-end tests of `vswitch capture`, as root: the frames a port sends and receives reach
//! a pcapng file (or a pipe into `tcpdump -r -`) whole and in order, with and without the
//! kernel fast path, which steps aside for a captured port and comes back when the capture
//! ends, also when its client dies; filters, counts, several captures at once, the TAP's NAT'd
//! traffic, and a reader that stalls losing frames (counted) without slowing the switch.

mod common;

use common::wan::{nat_sandbox, TCP_SERVER, WAN_IP};
use common::{
    host_ip, require_program, run, run_timeout, signal, tcp_transfer, wait_for, Container, JsonExt,
    Proc, Sandbox, SandboxOptions, DEADLINE, GATEWAY,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Sends three lines over one TCP connection to argv[1]:argv[2], each echoed before the next,
/// then closes; prints `done`.
const TCP_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
for i in range(3):
    m = b"hello %d\n" % i
    s.sendall(m)
    got = b""
    while len(got) < len(m):
        got += s.recv(100)
    assert got == m, got
s.close()
print("done")
"#;

/// A running `vswitch capture ARGS...`, ready: it has printed its `capturing` line, so the
/// ports are captured and the fast path has stepped aside for them.
#[track_caller]
fn start_capture(sb: &Sandbox, args: &[&str]) -> Proc {
    require_program("tcpdump", "tcpdump");
    let p = Proc::spawn(sb.vswitch_cmd("capture", args));
    wait_for(
        DEADLINE,
        || p.stderr().contains("capturing ").then_some(()),
        || format!("`vswitch capture {args:?}` did not start: {}", p.stderr()),
    );
    p
}

/// Ends a capture with Ctrl-C, as a user would; returns what it reported on stderr.
#[track_caller]
fn stop_capture(mut p: Proc) -> String {
    signal(p.pid(), "INT");
    let status = p.wait(DEADLINE);
    // The process has exited; its last lines may still be on their way from the pipe.
    let _ = common::poll(DEADLINE, || {
        p.stderr().contains(" frames captured, ").then_some(())
    });
    let stderr = p.stderr();
    assert!(status.success(), "capture ended with {status}: {stderr}");
    stderr
}

/// The `N frames captured, M dropped` a capture reported.
#[track_caller]
fn reported(stderr: &str) -> (u64, u64) {
    let line = (stderr.lines())
        .find(|l| l.contains(" frames captured, "))
        .unwrap_or_else(|| panic!("no summary: {stderr}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[0].parse().unwrap(), words[3].parse().unwrap())
}

/// `tcpdump -n -r FILE [FILTER]`: one line per frame.
#[track_caller]
fn tcpdump(file: &Path, filter: &[&str]) -> Vec<String> {
    let mut args = vec!["-n", "-r", file.to_str().unwrap()];
    args.extend_from_slice(filter);
    let out = run(Command::new("tcpdump").args(&args)).ok();
    out.stdout.lines().map(str::to_string).collect()
}

/// `tshark -r FILE -T fields -e F...`: each frame's fields, tab-separated.
#[track_caller]
fn tshark(file: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    require_program("tshark", "tshark");
    let mut args = vec!["-r", file.to_str().unwrap(), "-T", "fields"];
    for f in fields {
        args.extend_from_slice(&["-e", f]);
    }
    let out = run(Command::new("tshark").args(&args)).ok();
    (out.stdout.lines())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// pcapng's directions (`epb_flags`), as tshark's `frame.packet_flags_direction` gives them.
const INBOUND: u32 = 1;
const OUTBOUND: u32 = 2;

#[track_caller]
fn direction(field: &str) -> u32 {
    u32::from_str_radix(field.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("not a direction: {field:?}"))
}

/// The ICMP echo lines of a tcpdump listing as `(request?, seq)`.
fn echoes(lines: &[String]) -> Vec<(bool, u32)> {
    (lines.iter())
        .filter_map(|l| {
            let request = l.contains("ICMP echo request");
            if !request && !l.contains("ICMP echo reply") {
                return None;
            }
            let seq = l
                .split("seq ")
                .nth(1)?
                .split(',')
                .next()?
                .trim()
                .parse()
                .ok()?;
            Some((request, seq))
        })
        .collect()
}

/// Every echo request `1..=n` followed by its reply, in order, and nothing else.
#[track_caller]
fn assert_echoes_in_order(lines: &[String], n: u32, what: &str) {
    let want: Vec<(bool, u32)> = (1..=n).flat_map(|s| [(true, s), (false, s)]).collect();
    assert_eq!(
        echoes(lines),
        want,
        "{what}: echo requests and replies:\n{}",
        lines.join("\n")
    );
}

/// The TCP exchange of `TCP_CLIENT` on `port` as a tcpdump listing shows it: the handshake,
/// then the three lines and their echoes alternating (by source address), and a FIN each way.
#[track_caller]
fn assert_tcp_exchange(lines: &[String], client: &str, server: &str, port: u16, what: &str) {
    let segs: Vec<&String> = (lines.iter())
        .filter(|l| l.contains(&format!(".{port}: Flags")) || l.contains(&format!(".{port} > ")))
        .collect();
    let listing = || (segs.iter().map(|l| l.as_str()).collect::<Vec<_>>()).join("\n");
    let flags = |l: &str| {
        l.split("Flags [")
            .nth(1)
            .and_then(|f| f.split(']').next())
            .map(str::to_string)
    };
    let from_client = |l: &str| l.contains(&format!(" IP {client}."));
    assert!(segs.len() >= 10, "{what}: too few segments:\n{}", listing());
    assert_eq!(
        flags(segs[0]).as_deref(),
        Some("S"),
        "{what}:\n{}",
        listing()
    );
    assert!(from_client(segs[0]), "{what}:\n{}", listing());
    assert_eq!(
        flags(segs[1]).as_deref(),
        Some("S."),
        "{what}:\n{}",
        listing()
    );
    assert!(
        segs[1].contains(&format!(" IP {server}.{port} > ")),
        "{what}:\n{}",
        listing()
    );
    let data: Vec<bool> = (segs.iter())
        .filter(|l| !l.ends_with("length 0"))
        .map(|l| from_client(l))
        .collect();
    assert_eq!(
        data,
        [true, false, true, false, true, false],
        "{what}: data segments by sender:\n{}",
        listing()
    );
    let fins = |c: bool| {
        segs.iter()
            .filter(|l| from_client(l) == c && flags(l).is_some_and(|f| f.contains('F')))
            .count()
    };
    assert!(
        fins(true) >= 1 && fins(false) >= 1,
        "{what}: a FIN each way:\n{}",
        listing()
    );
}

/// Runs the TCP exchange from `a` to `b`'s echo server on `port`.
#[track_caller]
fn tcp_exchange(a: &Container, b: &Container, b_ip: &str, port: u16) {
    let server =
        Proc::spawn_ready(b.cmd("python3", &["-c", TCP_SERVER, &port.to_string(), "echo"]));
    let out = run_timeout(
        a.cmd("python3", &["-c", TCP_CLIENT, b_ip, &port.to_string()]),
        Duration::from_secs(60),
    )
    .ok();
    assert_eq!(out.stdout.trim(), "done");
    drop(server);
}

/// `ping -c N` from `c` to `ip`, every echo answered.
#[track_caller]
fn ping(c: &Container, ip: &str, n: u32) {
    let out = run_timeout(
        c.cmd("ping", &["-c", &n.to_string(), "-i", "0.2", "-W", "5", ip]),
        Duration::from_secs(60),
    )
    .ok();
    assert!(
        out.stdout.contains(&format!("{n} received")),
        "{}",
        out.stdout
    );
}

/// A port's frames carried by the kernel fast path so far (rx + tx).
fn fast_frames(sb: &Sandbox, c: &Container) -> u64 {
    let p = sb.port_of(c.pid).unwrap();
    p.num("fast_rx_frames") + p.num("fast_tx_frames")
}

/// Pings from `a` to `b` until the fast path carries them (it did before, or does again).
#[track_caller]
fn wait_fast_path(sb: &Sandbox, a: &Container, b_ip: &str) {
    let before = fast_frames(sb, a);
    wait_for(
        DEADLINE,
        || {
            ping(a, b_ip, 2);
            (fast_frames(sb, a) > before).then_some(())
        },
        || {
            format!(
                "the fast path does not carry a's frames: {:?}",
                sb.port_of(a.pid)
            )
        },
    );
}

fn sandbox(fast_path: bool) -> Sandbox {
    let extra_args = match fast_path {
        true => vec![],
        false => vec!["--fast-path".into(), "off".into()],
    };
    Sandbox::start_with(SandboxOptions {
        extra_args,
        ..SandboxOptions::default()
    })
}

fn file(sb: &Sandbox, name: &str) -> PathBuf {
    sb.dir.path.join(name)
}

/// A ping and a TCP exchange between two containers, captured on one of them: every echo
/// request and reply and every segment, in order, each once (the port's view: requests in,
/// replies out), named after the port; a second capture of the port, as classic pcap, the same. With the fast path, the capture makes it step aside
/// (none of the captured frames is the fast path's) and it carries the pair again afterwards.
fn an_exchange_is_captured_whole(fast_path: bool) {
    let sb = sandbox(fast_path);
    let (a, b) = (sb.plug_plain(), sb.plug_plain());
    let (a_ip, b_ip) = (host_ip(2), host_ip(3));
    if fast_path {
        wait_fast_path(&sb, &a, &b_ip);
    }
    let pcap = file(&sb, "a.pcapng");
    let cap = start_capture(&sb, &[&a.host_port(), "-w", pcap.to_str().unwrap()]);
    // The same port by number, at the same time, as classic pcap.
    let classic = file(&sb, "a.pcap");
    let number = sb.port_of(a.pid).unwrap().num("port").to_string();
    let args = [
        number.as_str(),
        "--format",
        "pcap",
        "-w",
        classic.to_str().unwrap(),
    ];
    let second = start_capture(&sb, &args);
    let fast_before = fast_frames(&sb, &a);
    ping(&a, &b_ip, 5);
    tcp_exchange(&a, &b, &b_ip, 7777);
    assert_eq!(
        fast_frames(&sb, &a),
        fast_before,
        "the fast path carried frames of a captured port"
    );
    let (frames, dropped) = reported(&stop_capture(cap));
    assert_eq!(reported(&stop_capture(second)).1, 0);

    let lines = tcpdump(&pcap, &[]);
    // Both captures saw each frame of the exchange at the same moment: tcpdump prints the same
    // listing. (Other frames, IPv6's neighbour discovery, may fall between their starts.)
    let exchange = ["icmp or port 7777"];
    assert_eq!(
        tcpdump(&classic, &exchange),
        tcpdump(&pcap, &exchange),
        "pcap and pcapng"
    );
    assert_eq!(lines.len() as u64, frames, "{lines:?}");
    assert_eq!(dropped, 0);
    let what = if fast_path {
        "with the fast path"
    } else {
        "without"
    };
    assert_echoes_in_order(&lines, 5, what);
    assert_tcp_exchange(&lines, &a_ip, &b_ip, 7777, what);

    // The port's name on every frame; requests came in from a, replies went out to it.
    let fields = tshark(
        &pcap,
        &[
            "frame.interface_name",
            "frame.packet_flags_direction",
            "icmp.type",
        ],
    );
    assert_eq!(fields.len(), lines.len());
    for f in &fields {
        assert_eq!(f[0], a.host_port(), "{fields:?}");
        match f[2].as_str() {
            "8" => assert_eq!(
                direction(&f[1]),
                INBOUND,
                "an echo request is inbound: {f:?}"
            ),
            "0" => assert_eq!(
                direction(&f[1]),
                OUTBOUND,
                "an echo reply is outbound: {f:?}"
            ),
            _ => {}
        }
    }

    if fast_path {
        // The capture is over: the fast path carries a's frames again.
        wait_fast_path(&sb, &a, &b_ip);
    }
}

#[test]
fn ping_and_tcp_are_captured_whole_with_the_fast_path() {
    an_exchange_is_captured_whole(true);
}

#[test]
fn ping_and_tcp_are_captured_whole_without_the_fast_path() {
    an_exchange_is_captured_whole(false);
}

/// `-w -` into `tcpdump -r -`, with a filter and a count: the capture ends by itself after
/// COUNT frames, which tcpdump shows as they come; the ARP and TCP around them are filtered out.
/// A second capture of the same port at the same time prints its frames as text.
#[test]
fn a_filtered_count_piped_into_tcpdump() {
    require_program("tcpdump", "tcpdump");
    let sb = sandbox(true);
    let (a, b) = (sb.plug_plain(), sb.plug_plain());
    let b_ip = host_ip(3);
    let vswitch = sb.vswitch_cmd("capture", &[]);
    let script = format!(
        "'{}' capture --control '{}' pid:{} --proto icmp -c 4 -w - | tcpdump -n -l -r - 2>/dev/null",
        vswitch.get_program().to_str().unwrap(),
        sb.control.display(),
        a.pid
    );
    let mut pipe = Proc::spawn({
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    });
    wait_for(
        DEADLINE,
        || pipe.stderr().contains("capturing icmp on").then_some(()),
        || format!("the capture did not start: {}", pipe.stderr()),
    );
    let mut text = start_capture(&sb, &[&a.host_port(), "--proto", "icmp", "-c", "2"]);
    // Flush the neighbour entry, so that the first echo needs ARP (filtered out), and talk TCP
    // too (filtered out).
    run(a.cmd("ip", &["neigh", "flush", "all"])).ok();
    tcp_exchange(&a, &b, &b_ip, 7777);
    ping(&a, &b_ip, 3);
    let status = pipe.wait(DEADLINE);
    assert!(status.success(), "{}", pipe.stderr());
    let lines = pipe.lines_so_far();
    assert_echoes_in_order(&lines, 2, "-c 4 | tcpdump -r -");
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(reported(&pipe.stderr()), (4, 0));

    assert!(text.wait(DEADLINE).success(), "{}", text.stderr());
    let lines = text.lines_so_far();
    let (port, a_ip) = (a.host_port(), host_ip(2));
    let request = format!(" {port} In  IP {a_ip} > {b_ip}: icmp echo request, id ");
    let reply = format!(" {port} Out IP {b_ip} > {a_ip}: icmp echo reply, id ");
    assert!(
        lines.len() == 2 && lines[0].contains(&request) && lines[1].contains(&reply),
        "{lines:?}"
    );
    assert!(
        lines[0].ends_with(", seq 1, length 64 (98 bytes)"),
        "{lines:?}"
    );
}

/// `--all` sees a frame once per port it crosses (in on one, out on the other), and a host and
/// port filter keeps one TCP conversation out of two.
#[test]
fn all_ports_with_a_host_and_port_filter() {
    let sb = sandbox(true);
    let (a, b) = (sb.plug_plain(), sb.plug_plain());
    let c = sb.plug_plain();
    let (a_ip, b_ip) = (host_ip(2), host_ip(3));
    let pcap = file(&sb, "all.pcapng");
    let args = [
        "--all",
        "--host",
        &a_ip,
        "--port",
        "7777",
        "-w",
        pcap.to_str().unwrap(),
    ];
    let cap = start_capture(&sb, &args);
    tcp_exchange(&a, &b, &b_ip, 7777);
    tcp_exchange(&a, &b, &b_ip, 7778); // another port
    tcp_exchange(&c, &b, &b_ip, 7777); // another host
    ping(&a, &b_ip, 2);
    let (frames, _) = reported(&stop_capture(cap));
    let fields = tshark(
        &pcap,
        &[
            "frame.interface_name",
            "frame.packet_flags_direction",
            "ip.src",
            "tcp.dstport",
            "tcp.srcport",
        ],
    );
    assert_eq!(fields.len() as u64, frames);
    let on = |port: &str| fields.iter().filter(|f| f[0] == port).count();
    let (on_a, on_b) = (on(&a.host_port()), on(&b.host_port()));
    assert!(
        on_a >= 10 && on_a == on_b && on_a + on_b == fields.len(),
        "{fields:?}"
    );
    for f in &fields {
        assert!(f[3] == "7777" || f[4] == "7777", "{f:?}");
        // From a: in on a's port, out on b's; from b: the other way round.
        let inbound = (f[2] == a_ip) == (f[0] == a.host_port());
        let want = if inbound { INBOUND } else { OUTBOUND };
        assert_eq!(direction(&f[1]), want, "{f:?}");
    }
    // Each segment once per port: in on the sender's, out on the receiver's. Two segments
    // crossing at once (a's ACK, b's data) are captured by two workers, so their records may
    // interleave; each direction's records alone are in the order the segments went.
    let lines = tcpdump(&pcap, &[]);
    assert_eq!(
        lines.len(),
        fields.len(),
        "tcpdump and tshark read the same frames"
    );
    let way = |want: u32| -> Vec<String> {
        (lines.iter().zip(&fields))
            .filter(|(_, f)| direction(&f[1]) == want)
            .map(|(l, _)| l.clone())
            .collect()
    };
    assert_tcp_exchange(&way(INBOUND), &a_ip, &b_ip, 7777, "on the way in");
    assert_tcp_exchange(&way(OUTBOUND), &a_ip, &b_ip, 7777, "on the way out");
}

/// The TAP, the host's port, carries what the NAT makes of a container's connection to the
/// outside (the container's segments readdressed to the gateway's relay), while a second
/// capture of the container's port sees the connection as the container made it.
#[test]
fn the_taps_capture_sees_natd_traffic() {
    let (sb, wan) = nat_sandbox(&[], &[]);
    let a = sb.plug_plain();
    let server = wan.python(TCP_SERVER, &["8080", "echo"]);
    let (tap_file, port_file) = (file(&sb, "tap.pcapng"), file(&sb, "a.pcapng"));
    let tap = start_capture(
        &sb,
        &["vsw0", "--proto", "tcp", "-w", tap_file.to_str().unwrap()],
    );
    let port = start_capture(
        &sb,
        &[
            "--pid",
            &a.pid.to_string(),
            "--proto",
            "tcp",
            "-w",
            port_file.to_str().unwrap(),
        ],
    );
    let out = run_timeout(
        a.cmd("python3", &["-c", TCP_CLIENT, WAN_IP, "8080"]),
        Duration::from_secs(60),
    )
    .ok();
    assert_eq!(out.stdout.trim(), "done");
    drop(server);
    stop_capture(tap);
    stop_capture(port);
    let a_ip = host_ip(2);
    assert_tcp_exchange(
        &tcpdump(&port_file, &[]),
        &a_ip,
        WAN_IP,
        8080,
        "the container's port",
    );
    // The same segments through the TAP, to the relay on the gateway's address.
    let tap_lines = tcpdump(&tap_file, &[]);
    let relay_port = tap_lines
        .iter()
        .find_map(|l| {
            l.split(&format!(" > {GATEWAY}."))
                .nth(1)?
                .split(':')
                .next()?
                .parse::<u16>()
                .ok()
        })
        .unwrap_or_else(|| panic!("nothing to the gateway through the TAP: {tap_lines:?}"));
    assert_tcp_exchange(&tap_lines, &a_ip, GATEWAY, relay_port, "the TAP");
    let fields = tshark(&tap_file, &["frame.interface_name"]);
    assert!(fields.iter().all(|f| f[0] == "vsw0"), "{fields:?}");
}

/// Established relayed TCP connections that carried more than a short exchange go through the
/// kernel (the fast path's programs on the container's veth and the TAP), not the daemon
/// (issue 16). While the TAP is captured the kernel steps aside: the capture sees every byte of a
/// long connection; once the capture ends, the kernel takes the next one.
#[test]
fn a_captured_tap_sees_every_byte_of_a_long_relayed_connection() {
    let (sb, wan) = nat_sandbox(&[], &[]);
    let a = sb.plug_plain();
    let in_kernel = || {
        common::cni::stats(&sb)["nat"]["in_kernel_total"]
            .as_u64()
            .unwrap()
    };
    let tap_file = file(&sb, "tap.pcapng");
    let tap = start_capture(
        &sb,
        &["vsw0", "--proto", "tcp", "-w", tap_file.to_str().unwrap()],
    );
    let bytes: u64 = 4 << 20;
    tcp_transfer(&a, &wan, WAN_IP, bytes);
    stop_capture(tap);
    let to_relay: u64 = (tshark(&tap_file, &["ip.dst", "tcp.len"]).iter())
        .filter(|f| f[0] == GATEWAY)
        .map(|f| f[1].parse::<u64>().unwrap_or(0))
        .sum();
    assert!(
        to_relay >= bytes,
        "the TAP's capture has {to_relay} bytes of the {bytes} sent"
    );
    assert_eq!(
        in_kernel(),
        0,
        "handed to the kernel while the TAP was captured"
    );
    // The capture is over: within a tick, the kernel takes long connections again.
    std::thread::sleep(Duration::from_millis(600));
    tcp_transfer(&a, &wan, WAN_IP, bytes);
    assert!(
        in_kernel() >= 1,
        "not handed to the kernel after the capture"
    );
}

/// A reader that stops reading loses frames (counted, reported at the end) but never slows the
/// switch: a transfer through the captured port completes meanwhile. A client that dies
/// (SIGKILL, no goodbye) ends its capture: the fast path carries the port's frames again.
#[test]
fn a_stalled_reader_loses_frames_not_the_switch_and_a_dead_one_gives_the_port_back() {
    let sb = sandbox(true);
    let (a, b) = (sb.plug_plain(), sb.plug_plain());
    let b_ip = host_ip(3);
    let pcap = file(&sb, "stalled.pcapng");
    let cap = start_capture(&sb, &[&a.host_port(), "-w", pcap.to_str().unwrap()]);
    signal(cap.pid(), "STOP");
    tcp_transfer(&a, &b, &b_ip, 64 << 20);
    signal(cap.pid(), "CONT");
    let (frames, dropped) = reported(&stop_capture(cap));
    assert!(
        dropped > 0,
        "{frames} frames captured, none dropped by a stalled reader"
    );
    assert_eq!(tcpdump(&pcap, &[]).len() as u64, frames);

    wait_fast_path(&sb, &a, &b_ip);
    let mut cap = start_capture(
        &sb,
        &[
            &a.host_port(),
            "-w",
            file(&sb, "killed.pcapng").to_str().unwrap(),
        ],
    );
    let before = fast_frames(&sb, &a);
    ping(&a, &b_ip, 2);
    assert_eq!(
        fast_frames(&sb, &a),
        before,
        "captured, a's frames are the daemon's"
    );
    cap.kill();
    wait_fast_path(&sb, &a, &b_ip);
    // And a port that is not there is refused, as every error is: one line.
    let out = sb.vswitch(&["capture", "vsw-nosuch"]);
    let line = out.vswitch_error();
    assert!(line.contains("no port vsw-nosuch"), "{line}");
}
