//! End-to-end tests of the error cases, as root. Every failing command must exit non-zero with
//! one clear `vswitch: ` line on stderr and leave nothing half-made behind: no orphan veth in the
//! host namespace and no reserved address. Malformed control requests get an error reply and
//! leave the daemon serving; malformed frames are dropped and counted, never forwarded or
//! learned; a second daemon, a stale socket and SIGTERM/SIGINT are handled cleanly.

mod common;

use common::{
    assert_mentions, command, exists, host_ip, run, run_timeout, try_run, Container, JsonExt,
    NetNs, Sandbox, SandboxOptions, GATEWAY, VSWITCH,
};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A pid that no process has right now.
fn unused_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (300..max)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid")
}

/// After an error: only the plugged ports exist, and the next plug gets `next_ip`.
#[track_caller]
fn assert_nothing_left_behind(sb: &Sandbox, plugged: &[&Container], next_ip: &str) {
    sb.assert_host_links(plugged);
    let ports = sb.ls();
    assert_eq!(
        ports.len(),
        plugged.len() + 1,
        "ls should list the TAP and {} container(s): {ports:?}",
        plugged.len()
    );
    let probe = Container::plain();
    let port = sb.plug(&probe, &[]);
    assert_eq!(
        port.str("ip"),
        next_ip,
        "an address stayed reserved: {port}"
    );
    sb.vswitch(&["unplug", &probe.pid.to_string()]).ok();
}

#[test]
fn plugging_a_nonexistent_pid_fails_cleanly() {
    let sb = Sandbox::start();
    let pid = unused_pid().to_string();
    let err = sb.vswitch(&["plug", &pid]).vswitch_error();
    assert_mentions(&err, &["no such process"]);
    assert!(err.contains(&pid), "the error should name the pid: {err}");
    assert_nothing_left_behind(&sb, &[], &host_ip(2));
}

#[test]
fn commands_fail_clearly_when_the_daemon_is_not_running() {
    common::require_root();
    let dir = common::TempDir::new(&common::unique_name());
    let control = dir.path.join("ctl.sock");
    let control = control.to_str().unwrap();
    let c = Container::plain();
    let pid = c.pid.to_string();
    for args in [
        vec!["ls", "--control", control],
        vec!["fdb", "--control", control],
        vec!["plug", "--control", control, &pid],
        vec!["unplug", "--control", control, &pid],
    ] {
        let err = run(&mut command(VSWITCH, &args)).vswitch_error();
        assert_mentions(&err, &["not running", "cannot reach"]);
        assert!(
            err.contains(control),
            "the error should name the socket: {err}"
        );
    }
    // The environment variable works as well as --control.
    let err = run(command(VSWITCH, &["ls"]).env("VSWITCH_CONTROL", control)).vswitch_error();
    assert!(err.contains(control), "VSWITCH_CONTROL was not used: {err}");
    assert_eq!(c.links(), vec!["lo".to_string()]);
}

#[test]
fn plugging_twice_fails_and_keeps_the_first_port() {
    let sb = Sandbox::start();
    let a = Container::plain();
    sb.plug(&a, &[]);
    let err = sb.vswitch(&["plug", &a.pid.to_string()]).vswitch_error();
    assert_mentions(&err, &["already plugged"]);
    // Also when the same namespace is named by path.
    let err = sb
        .vswitch(&["plug", "--netns", &a.netns_path()])
        .vswitch_error();
    assert_mentions(&err, &["already plugged"]);
    assert!(a.ping(GATEWAY), "the first port stopped working");
    assert_nothing_left_behind(&sb, &[&a], &host_ip(3));
}

#[test]
fn a_taken_address_is_refused() {
    let sb = Sandbox::start();
    let a = Container::plain();
    let b = Container::plain();
    sb.plug(&a, &[]);
    let err = sb
        .vswitch(&["plug", &b.pid.to_string(), "--ip", &host_ip(2)])
        .vswitch_error();
    assert_mentions(&err, &["in use"]);
    assert!(
        err.contains(&host_ip(2)),
        "the error should name the address: {err}"
    );
    // The gateway is taken by the TAP.
    let err = sb
        .vswitch(&["plug", &b.pid.to_string(), "--ip", GATEWAY])
        .vswitch_error();
    assert_mentions(&err, &["in use", "gateway"]);
    // Outside the subnet.
    sb.vswitch(&["plug", &b.pid.to_string(), "--ip", "10.2.2.2"])
        .vswitch_error();
    assert_eq!(
        b.links(),
        vec!["lo".to_string()],
        "b got a half-made interface"
    );
    assert!(a.ping(GATEWAY), "a stopped working");
    assert_nothing_left_behind(&sb, &[&a], &host_ip(3));
}

#[test]
fn a_full_subnet_is_refused() {
    // A /30 has two host addresses: the gateway and one container.
    let sb = Sandbox::start_subnet("10.9.9.0/30");
    let a = Container::plain();
    let b = Container::plain();
    assert_eq!(sb.plug(&a, &[]).str("ip"), "10.9.9.2");
    let err = sb.vswitch(&["plug", &b.pid.to_string()]).vswitch_error();
    assert_mentions(&err, &["full"]);
    assert_eq!(
        b.links(),
        vec!["lo".to_string()],
        "b got a half-made interface"
    );
    sb.assert_host_links(&[&a]);

    // Once a leaves, b fits.
    sb.vswitch(&["unplug", &a.pid.to_string()]).ok();
    assert_eq!(sb.plug(&b, &[]).str("ip"), "10.9.9.2");
    assert!(b.ping("10.9.9.1"), "b cannot ping the gateway");
}

#[test]
fn an_unprivileged_user_gets_permission_denied() {
    let sb = Sandbox::start();
    let a = Container::plain();
    let control = sb.control.to_str().unwrap().to_string();
    let pid = a.pid.to_string();
    // A copy of the binary that nobody can run wherever the work tree is.
    let client = sb.dir.path.join("vswitch");
    std::fs::copy(VSWITCH, &client).expect("copy the vswitch binary");
    let out = run(&mut command(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            client.to_str().unwrap(),
            "plug",
            "--control",
            &control,
            &pid,
        ],
    ));
    let err = out.vswitch_error();
    assert_mentions(&err, &["permission"]);
    assert_eq!(a.links(), vec!["lo".to_string()]);
    assert_nothing_left_behind(&sb, &[], &host_ip(2));
}

/// Sends raw bytes on a fresh control connection and returns the first reply line.
fn raw_request(control: &Path, request: Vec<u8>) -> String {
    let stream = UnixStream::connect(control).expect("connect to the control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    // Write from another thread: the daemon may answer (and close) before reading it all.
    let w = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let mut line = String::new();
    let _ = BufReader::new(&stream).read_line(&mut line);
    drop(stream);
    let _ = w.join();
    line
}

#[test]
fn malformed_control_requests_get_an_error_reply() {
    let sb = Sandbox::start();
    let a = Container::plain();
    let huge = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(100 * 1024)).into_bytes();
    let requests: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"this is not json\n".to_vec()),
        ("binary garbage", b"\x00\xff\xfe{{{\n".to_vec()),
        ("unknown command", b"{\"cmd\":\"frobnicate\"}\n".to_vec()),
        (
            "unknown command",
            b"{\"command\":\"frobnicate\"}\n".to_vec(),
        ),
        ("wrong type", b"[1,2,3]\n".to_vec()),
        ("line over 64 KiB", huge),
    ];
    for (what, request) in requests {
        let reply = raw_request(&sb.control, request);
        let parsed = common::parse_json(reply.trim())
            .unwrap_or_else(|e| panic!("{what}: the reply is not one JSON line ({e}): {reply:?}"));
        assert!(
            parsed["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: the reply has no error: {reply}"
        );
        assert_ne!(parsed["ok"].as_bool(), Some(true), "{what}: {reply}");
        // The daemon still serves.
        sb.ls();
    }
    // A client that connects and hangs up without a word does no harm either.
    drop(UnixStream::connect(&sb.control).unwrap());
    sb.plug(&a, &[]);
    assert!(a.ping(GATEWAY), "the switch stopped working");
}

#[test]
fn a_second_daemon_on_the_same_socket_fails_clearly() {
    let first = Sandbox::start();
    let second_host = NetNs::new(&common::unique_name());
    let control = first.control.to_str().unwrap();
    let out = try_run(
        &mut second_host.cmd(
            VSWITCH,
            &["run", "--subnet", "10.1.2.0/24", "--control", control],
        ),
        Duration::from_secs(10),
    )
    .expect("a second `vswitch run` on the same control socket kept running");
    let err = out.vswitch_error();
    assert_mentions(&err, &["already", "running", "in use"]);
    assert!(
        err.contains(control),
        "the error should name the socket: {err}"
    );
    assert_eq!(
        second_host.links(),
        vec!["lo".to_string()],
        "the second daemon left its TAP"
    );

    // The first daemon keeps its socket and keeps working.
    assert!(exists(&first.control), "the socket was removed");
    let a = Container::plain();
    first.plug(&a, &[]);
    assert!(a.ping(GATEWAY), "the first switch stopped working");
}

#[test]
fn a_stale_socket_of_a_killed_daemon_is_replaced() {
    let mut killed = Sandbox::start();
    let a = Container::plain();
    killed.plug(&a, &[]);
    let status = killed.stop_daemon("KILL");
    assert!(!status.success());
    assert!(
        exists(&killed.control),
        "test premise: a SIGKILLed daemon leaves its socket file"
    );

    // A new daemon (in a fresh host namespace) with the same socket path starts fine.
    let fresh = Sandbox::start_with(SandboxOptions {
        control: Some(killed.control.clone()),
        ..SandboxOptions::default()
    });
    let ports = fresh.ls();
    assert_eq!(
        ports.len(),
        1,
        "the new daemon should only have its TAP: {ports:?}"
    );
    let b = Container::plain();
    assert_eq!(fresh.plug(&b, &[]).str("ip"), host_ip(2));
    assert!(b.ping(GATEWAY), "the new switch does not work");
    assert!(fresh.host_ping(&host_ip(2)), "the new host cannot ping b");
}

#[test]
fn sigterm_removes_the_tap_the_veths_and_the_socket() {
    let mut sb = Sandbox::start();
    let a = Container::plain();
    let b = Container::runtime_like();
    sb.plug(&a, &[]);
    sb.plug(&b, &[]);
    sb.assert_host_links(&[&a, &b]);

    let status = sb.stop_daemon("TERM");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    assert_eq!(
        sb.host_links(),
        vec!["lo".to_string()],
        "the TAP or a veth survived SIGTERM"
    );
    assert!(!exists(&sb.control), "the control socket survived SIGTERM");
    assert_eq!(a.links(), vec!["lo".to_string()]);
    assert_eq!(b.links(), vec!["lo".to_string()]);

    // And the daemon is really gone: commands say so.
    let err = sb.vswitch(&["ls"]).vswitch_error();
    assert_mentions(&err, &["not running", "cannot reach"]);
}

#[test]
fn sigint_also_cleans_up() {
    let mut sb = Sandbox::start();
    let a = Container::plain();
    sb.plug(&a, &[]);
    let status = sb.stop_daemon("INT");
    assert_eq!(status.code(), Some(0), "exit status after SIGINT: {status}");
    assert_eq!(sb.host_links(), vec!["lo".to_string()]);
    assert!(!exists(&sb.control), "the control socket survived SIGINT");
}

#[test]
fn bad_arguments_to_run_fail_clearly() {
    let ns = NetNs::new(&common::unique_name());
    let dir = common::TempDir::new(&common::unique_name());
    let control = dir.path.join("ctl.sock");
    let control = control.to_str().unwrap();
    for subnet in ["10.1.1.0/33", "not-a-subnet"] {
        let out = run_timeout(
            &mut ns.cmd(VSWITCH, &["run", "--subnet", subnet, "--control", control]),
            Duration::from_secs(10),
        );
        assert!(!out.success(), "`vswitch run --subnet {subnet}` succeeded");
        assert!(
            out.stderr.contains("subnet") || out.stderr.contains(subnet),
            "{}",
            out.describe()
        );
    }
    assert_eq!(ns.links(), vec!["lo".to_string()]);
}

/// Sends malformed frames out of eth0 with a packet socket, all to the broadcast address: a
/// switch that took them for frames would flood them to every other port.
const BAD_FRAMES: &str = r#"
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
own = s.getsockname()[4]  # eth0's MAC (/sys would show the root namespace's eth0)
bcast = b"\xff" * 6
for f in [
    bcast + b"\x01\x00\x5e\x00\x00\x01" + b"\x08\x00" + bytes(46),  # multicast source MAC
    bcast + bytes(6) + b"\x08\x00" + bytes(46),                     # zero source MAC
    bcast + own + b"\x08\x06" + b"\x00\x01\x08\x00\x06",            # truncated ARP
]:
    s.send(f)
print("sent", flush=True)
"#;

/// Sends one broadcast frame of the local experimental EtherType 0x88b5 from eth0's own MAC:
/// a well-formed frame that the switch floods, marking the end of a test's frames.
const MARKER_FRAME: &str = r#"
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
s.send(b"\xff" * 6 + s.getsockname()[4] + b"\x88\xb5" + bytes(46))
print("sent", flush=True)
"#;

/// Watches every frame that reaches eth0 (not those sent) until the marker frame from argv[1]
/// (a MAC) arrives, then prints `marker` and one line per frame before it that is one of the
/// malformed ones: `bad <source mac> <ethertype> <length>`.
const FRAME_WATCH: &str = r#"
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind(("eth0", 0x0003))
marker_from = bytes(int(x, 16) for x in sys.argv[1].split(":"))
print("ready", flush=True)
bad = []
while True:
    data, addr = s.recvfrom(65535)
    if addr[2] == socket.PACKET_OUTGOING or len(data) < 14:
        continue
    src, etype = data[6:12], data[12:14]
    if etype == b"\x88\xb5" and src == marker_from:
        break
    if src[0] & 1 or src == bytes(6) or (etype == b"\x08\x06" and len(data) < 42 and src == marker_from):
        bad.append("bad %s %s %d" % (src.hex(":"), etype.hex(), len(data)))
print("marker", flush=True)
for line in bad:
    print(line, flush=True)
print("end", flush=True)
"#;

#[test]
fn malformed_frames_are_dropped_counted_and_never_forwarded_or_learned() {
    let sb = Sandbox::start();
    // a's marker frame has a local EtherType, which port security lets through only if asked.
    let a = Container::plain();
    sb.plug(&a, &["--allow-ethertype", "0x88b5"]);
    let b = sb.plug_plain();
    let a_mac = common::default_mac(&host_ip(2));
    let before = sb.port_of(a.pid).unwrap().num("drops");
    let watch = common::Proc::spawn_ready(b.cmd("python3", &["-c", FRAME_WATCH, &a_mac]));

    let out = a.run("python3", &["-c", BAD_FRAMES]).ok();
    assert_eq!(out.stdout.trim(), "sent");
    common::wait_for(
        common::DEADLINE,
        || (sb.port_of(a.pid)?.num("drops") >= before + 3).then_some(()),
        || {
            format!(
                "3 malformed frames from a were not counted as drops on its port: {:?}",
                sb.port_of(a.pid)
            )
        },
    );

    // They were dropped, not flooded: b saw none of them before a's well-formed marker, which
    // a sent after the switch had counted them.
    a.run("python3", &["-c", MARKER_FRAME]).ok();
    assert_eq!(
        watch.line(common::DEADLINE),
        "marker",
        "the marker frame from a never reached b"
    );
    let mut reached_b = Vec::new();
    loop {
        match watch.line(common::DEADLINE).as_str() {
            "end" => break,
            line => reached_b.push(line.to_string()),
        }
    }
    assert!(
        reached_b.is_empty(),
        "malformed frames from a reached b: {reached_b:?}"
    );
    // Nor learned: no forwarding entry for their invalid source addresses.
    let fdb = sb.fdb();
    for mac in ["01:00:5e:00:00:01", "00:00:00:00:00:00"] {
        assert!(
            !fdb.iter().any(|e| e.str("mac").eq_ignore_ascii_case(mac)),
            "the switch learned the invalid source {mac}: {fdb:?}"
        );
    }
    assert!(
        a.ping(&host_ip(3)),
        "the switch stopped working after malformed frames"
    );
}

#[test]
fn an_interface_name_taken_in_the_container_is_refused_cleanly() {
    let sb = Sandbox::start();
    let a = Container::plain();
    // The container already has an eth0 of its own (one end of a veth pair inside it).
    a.run(
        "ip",
        &["link", "add", "eth0", "type", "veth", "peer", "name", "x0"],
    )
    .ok();
    let err = sb.vswitch(&["plug", &a.pid.to_string()]).vswitch_error();
    assert!(
        err.contains("eth0"),
        "the error should name the interface: {err}"
    );
    let mut links = a.links();
    links.sort();
    assert_eq!(
        links,
        vec!["eth0", "lo", "x0"],
        "the container's own links changed"
    );
    assert_nothing_left_behind(&sb, &[], &host_ip(2));
    // Under another name it plugs fine.
    let port = sb.plug(&a, &["--ifname", "eth1"]);
    assert_eq!(port.str("ip"), host_ip(2));
    assert!(a.ping(GATEWAY), "a cannot ping the gateway over eth1");
}

#[test]
fn invalid_plug_arguments_are_refused_cleanly() {
    let sb = Sandbox::start();
    let a = Container::plain();
    let pid = a.pid.to_string();
    for args in [
        vec!["--ifname", "averyveryverylongname"],
        vec!["--mac", "01:00:5e:00:00:01"],
        vec!["--mac", "00:00:00:00:00:00"],
        vec!["--ip", "10.1.1.0"],
        vec!["--ip", "10.1.1.255"],
    ] {
        let mut full = vec!["plug", pid.as_str()];
        full.extend_from_slice(&args);
        sb.vswitch(&full).vswitch_error();
        assert_eq!(a.links(), vec!["lo".to_string()], "after {args:?}");
    }
    assert_nothing_left_behind(&sb, &[], &host_ip(2));
}
