//! End-to-end tests of port security (issue 15) and of the forwarding table under a MAC flood
//! (issue 19), as root. A container plays the attacker and writes raw frames with an AF_PACKET
//! socket (small python3 scripts); sniffers in the other containers, on the host's TAP and in
//! the simulated outside world (`common::wan`) count what arrives. Every world is made of
//! namespaces the test creates and removes; no traffic leaves them.

mod common;

use common::wan::{nat_sandbox, HOST_WAN_IP, WAN_IP};
use common::{
    default_mac, host_ip, parse_json, poll, run, try_run, wait_timeout, Container, Json, JsonExt,
    Proc, Sandbox, SandboxOptions, GATEWAY, SUBNET, VSWITCH,
};
use std::process::{Child, Stdio};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What the attacker's frames carry, so that sniffers can tell them from everything else.
const SPOOF: &str = "VSWSPOOF";
/// What the attacker's legitimate frames carry: the sniffers must see those.
const LEGIT: &str = "VSWLEGIT";
/// Each spoofed frame is sent this many times.
const COPIES: u64 = 5;

/// Counts the frames received on argv[1] (not those sent) that contain each of argv[2:].
/// Prints `ready`, then on any line on stdin `MARKER=COUNT ...` and exits.
const SNIFFER: &str = r#"
import select, socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
markers = [m.encode() for m in sys.argv[2:]]
counts = dict.fromkeys(markers, 0)
def take(data, addr):
    if addr[2] != socket.PACKET_OUTGOING:
        for m in markers:
            if m in data:
                counts[m] += 1
print("ready", flush=True)
while True:
    r, _, _ = select.select([s, sys.stdin], [], [])
    if s in r:
        take(*s.recvfrom(65535))
    if sys.stdin in r:
        sys.stdin.readline()
        s.setblocking(False)
        try:
            while True:
                take(*s.recvfrom(65535))
        except BlockingIOError:
            pass
        print(" ".join("%s=%d" % (m.decode(), c) for m, c in counts.items()), flush=True)
        break
"#;

/// Writes raw frames out of eth0. argv[1]: a JSON object with the addresses (`me_mac`,
/// `me_ip`, `victim_mac`, `victim_ip`, `peer_mac`, `peer_ip`, `gw_mac`, `gw_ip`, `wan_ip`),
/// argv[2]: `legit` or `spoof`, argv[3]: copies of each frame. Prints `sent N`.
const ATTACK: &str = r#"
import json, socket, struct, sys
a = json.loads(sys.argv[1])
what, copies = sys.argv[2], int(sys.argv[3])
def mac(s): return bytes(int(x, 16) for x in s.split(":"))
def ip(s): return socket.inet_aton(s)
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    return ~(s + (s >> 16)) & 0xffff
def eth(dst, src, etype, payload, mark):
    f = mac(dst) + mac(src) + struct.pack("!H", etype) + payload + mark
    return f + bytes(max(0, 60 - len(f)))
def udp(dst, src, sip, dip, dport, mark):
    u = struct.pack("!HHHH", 40000, dport, 8 + len(mark), 0) + mark
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(u), 0, 0x4000, 64, 17, 0, ip(sip), ip(dip))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return eth(dst, src, 0x0800, h + u, b"")
def tagged(frame, vid):
    return frame[:12] + struct.pack("!HH", 0x8100, vid) + frame[12:]
def arp(dst, src, op, sha, spa, tha, tpa, mark):
    p = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + mac(sha) + ip(spa) + mac(tha) + ip(tpa)
    return eth(dst, src, 0x0806, p, mark)
me, victim, peer, gw = (a["me_mac"], a["me_ip"]), (a["victim_mac"], a["victim_ip"]), (a["peer_mac"], a["peer_ip"]), (a["gw_mac"], a["gw_ip"])
bcast, zero = "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"
m = ("VSWLEGIT" if what == "legit" else "VSWSPOOF").encode()
if what == "legit":
    frames = [
        udp(peer[0], me[0], me[1], peer[1], 9, m),         # to another container
        udp(gw[0], me[0], me[1], gw[1], 9, m),             # to the gateway
        udp(gw[0], me[0], me[1], a["wan_ip"], 7, m),       # to the outside, through the NAT
    ]
else:
    frames = [
        # mac: the victim's source MAC (and address), to another container
        udp(peer[0], victim[0], victim[1], peer[1], 9, m),
        # ip: the victim's address from our own MAC: to a container, the gateway (DNS), the
        # outside through the NAT, and an outside address to the outside
        udp(peer[0], me[0], victim[1], peer[1], 9, m),
        udp(gw[0], me[0], victim[1], gw[1], 53, m),
        udp(gw[0], me[0], victim[1], a["wan_ip"], 7, m),
        udp(gw[0], me[0], "198.51.100.77", a["wan_ip"], 7, m),
        # ethertype: a VLAN-tagged frame (the daemon reads the tag back from the kernel: 802.1Q
        # is not an EtherType a container may send)
        tagged(udp(peer[0], me[0], victim[1], peer[1], 9, m), 5),
        # arp: gratuitous ARP (request and reply) saying the victim's address is at our MAC;
        # an ARP reply to the gateway saying the same; one in the victim's own name
        arp(bcast, me[0], 1, me[0], victim[1], zero, victim[1], m),
        arp(bcast, me[0], 2, me[0], victim[1], bcast, victim[1], m),
        arp(gw[0], me[0], 2, me[0], victim[1], gw[0], gw[1], m),
        arp(gw[0], me[0], 2, victim[0], victim[1], gw[0], gw[1], m),
        # ethertype: IPv6
        eth(peer[0], me[0], 0x86dd, bytes([0x60]) + bytes(39), m),
    ]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for f in frames:
    for _ in range(copies):
        s.send(f)
print("sent", len(frames) * copies, flush=True)
"#;

/// Spoofed frames of each kind the `spoof` set sends, per copy: (mac, ip, arp, ethertype).
const SPOOFS: (u64, u64, u64, u64) = (1, 4, 4, 2);

/// A sniffer of `iface` in whatever namespace `cmd` runs.
fn sniffer(cmd: std::process::Command) -> Proc {
    Proc::spawn_ready(cmd)
}

/// The sniffer's counts: (spoofed frames, legitimate frames).
#[track_caller]
fn report(mut p: Proc) -> (u64, u64) {
    p.send("report");
    let line = p.line(Duration::from_secs(10));
    let count = |m: &str| -> u64 {
        (line.split(' '))
            .find_map(|kv| kv.strip_prefix(&format!("{m}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no count of {m} in {line:?}"))
    };
    (count(SPOOF), count(LEGIT))
}

fn sniff(c: &Container) -> Proc {
    let mut cmd = c.cmd("python3", &["-c", SNIFFER, "eth0", SPOOF, LEGIT]);
    cmd.env("PYTHONUNBUFFERED", "1");
    sniffer(cmd)
}

/// `ip neigh show ADDR` in a namespace's command: the MAC it has for `addr`, if any.
#[track_caller]
fn neighbour(mut cmd: std::process::Command) -> Option<String> {
    let out = run(&mut cmd).ok().stdout;
    let words: Vec<&str> = out.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "lladdr")?;
    words.get(at + 1).map(|s| s.to_string())
}

/// The `ls --json` entry of a container.
#[track_caller]
fn port(sb: &Sandbox, c: &Container) -> Json {
    sb.port_of(c.pid)
        .unwrap_or_else(|| panic!("pid {} is not plugged: {:?}", c.pid, sb.ls()))
}

/// A ping of `ip` every 20 ms for `count` pings, in the background.
fn pinger(mut cmd: std::process::Command, ip: &str, count: u32) -> Proc {
    cmd.args(["-n", "-i", "0.02", "-W", "1", "-c", &count.to_string(), ip]);
    Proc::spawn(cmd)
}

/// Waits for a `pinger` and returns (transmitted, received).
#[track_caller]
fn ping_result(mut p: Proc) -> (u64, u64) {
    let status = p.wait(Duration::from_secs(60));
    let lines = p.lines_so_far();
    let summary = (lines.iter())
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("{}: no summary ({status}): {lines:?}", p.what));
    let nums: Vec<u64> = (summary.split([' ', ',']))
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

fn fast_args(fast: bool) -> Vec<&'static str> {
    if fast {
        vec![]
    } else {
        vec!["--fast-path", "off"]
    }
}

// ---------------------------------------------------------------------------------------------
// Anti-spoofing
// ---------------------------------------------------------------------------------------------

#[test]
fn spoofed_frames_are_dropped_and_counted_with_the_fast_path() {
    spoofed_frames_are_dropped_and_counted(true);
}

#[test]
fn spoofed_frames_are_dropped_and_counted_without_the_fast_path() {
    spoofed_frames_are_dropped_and_counted(false);
}

/// The attacker (10.1.1.2) sends every kind of spoofed frame, with the victim (10.1.1.3) and a
/// peer (10.1.1.4) pinging each other and the host pinging the victim throughout: every
/// spoofed frame is dropped (no sniffer sees one, while each sees the attacker's legitimate
/// frames), counted on the attacker's port by kind, and nothing the victim relies on changes:
/// its FDB entry, the peer's and the host's neighbour entries for it, no NAT flow in its name,
/// no ping lost.
fn spoofed_frames_are_dropped_and_counted(fast: bool) {
    let (sb, wan) = nat_sandbox(&fast_args(fast), &[]);
    let attacker = sb.plug_plain();
    let victim = sb.plug_plain();
    let peer = sb.plug_plain();
    let (victim_ip, peer_ip) = (host_ip(3), host_ip(4));
    let (victim_mac, peer_mac) = (default_mac(&victim_ip), default_mac(&peer_ip));
    assert_eq!(port(&sb, &victim).str("ip"), victim_ip);
    let hook = if fast { "tcx" } else { "off" };
    assert_eq!(port(&sb, &attacker).str("fast_path"), hook);
    let attacker_port = port(&sb, &attacker);
    let security = &attacker_port["security"];
    assert_eq!(
        (
            security["trusted"].as_bool(),
            security["isolated"].as_bool()
        ),
        (Some(false), Some(false)),
        "checked by default: {security}"
    );
    // A checked port's container has no IPv6 to send.
    let v6 = attacker.run("sysctl", &["-n", "net.ipv6.conf.eth0.disable_ipv6"]);
    assert_eq!(v6.ok().stdout.trim(), "1");

    // Everyone knows everyone: neighbour entries, FDB entries.
    assert!(peer.ping(&victim_ip) && victim.ping(&peer_ip) && sb.host_ping(&victim_ip));
    let fdb_of = |mac: &str| {
        (sb.fdb().into_iter())
            .find(|e| e.str("mac") == mac)
            .map(|e| e.num("port"))
    };
    let victim_port = port(&sb, &victim).num("port");
    assert_eq!(fdb_of(&victim_mac), Some(victim_port));
    let peer_neigh = || neighbour(peer.cmd("ip", &["neigh", "show", &victim_ip]));
    let host_neigh = || neighbour(sb.host_cmd("ip", &["neigh", "show", &victim_ip]));
    assert_eq!(peer_neigh().as_deref(), Some(victim_mac.as_str()));
    assert_eq!(host_neigh().as_deref(), Some(victim_mac.as_str()));

    let sniffers = [
        ("the victim", sniff(&victim)),
        ("the peer", sniff(&peer)),
        ("the host's TAP", {
            let cmd = sb.host_cmd("python3", &["-c", SNIFFER, "vsw0", SPOOF, LEGIT]);
            sniffer(cmd)
        }),
        ("the outside", {
            let cmd = wan.cmd("python3", &["-c", SNIFFER, "eth0", SPOOF, LEGIT]);
            sniffer(cmd)
        }),
    ];
    let pings = [
        pinger(peer.cmd("ping", &[]), &victim_ip, 150),
        pinger(victim.cmd("ping", &[]), &peer_ip, 150),
        pinger(sb.host_cmd("ping", &[]), &victim_ip, 150),
    ];

    let addresses = format!(
        r#"{{"me_mac":"{}","me_ip":"{}","victim_mac":"{victim_mac}","victim_ip":"{victim_ip}","peer_mac":"{peer_mac}","peer_ip":"{peer_ip}","gw_mac":"{}","gw_ip":"{GATEWAY}","wan_ip":"{WAN_IP}"}}"#,
        default_mac(&host_ip(2)),
        host_ip(2),
        default_mac(GATEWAY),
    );
    std::thread::sleep(Duration::from_millis(500));
    let before = port(&sb, &attacker);
    let out = attacker
        .run("python3", &["-c", ATTACK, &addresses, "legit", "1"])
        .ok();
    assert_eq!(out.stdout.trim(), "sent 3");
    let copies = COPIES.to_string();
    let out = attacker.run("python3", &["-c", ATTACK, &addresses, "spoof", &copies]);
    let out = out.ok();
    let (mac, ip, arp, ethertype) = SPOOFS;
    let total = (mac + ip + arp + ethertype) * COPIES;
    assert_eq!(out.stdout.trim(), format!("sent {total}"));

    // Every check below is made, and all that fail are reported together.
    let mut failed: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failed.push(what);
        }
    };
    // No ping lost, while the attacks went on.
    for p in pings {
        let what = p.what.clone();
        let (sent, received) = ping_result(p);
        let ok = sent >= 150 && received == sent;
        check(ok, format!("{what}: {received} of {sent} pings answered"));
    }
    // Each kind counted on the attacker's port, exactly, and in its drops.
    let after = poll(Duration::from_secs(3), || {
        let p = port(&sb, &attacker);
        (p["spoofed"].num("ip") >= ip * COPIES).then_some(p)
    })
    .unwrap_or_else(|| port(&sb, &attacker));
    let spoofed = &after["spoofed"];
    let counted = (
        spoofed.num("mac"),
        spoofed.num("ip"),
        spoofed.num("arp"),
        spoofed.num("ethertype"),
    );
    let want = (mac * COPIES, ip * COPIES, arp * COPIES, ethertype * COPIES);
    check(
        counted == want,
        format!(
            "spoofed (mac, ip, arp, ethertype) on the attacker's port: {counted:?}, not {want:?}"
        ),
    );
    let drops = after.num("drops");
    check(
        drops >= before.num("drops") + total,
        format!("the attacker's drops: {drops}"),
    );
    for c in [&victim, &peer] {
        let p = port(&sb, c);
        let kinds = ["mac", "ip", "arp", "ethertype"];
        let sum: u64 = kinds.iter().map(|k| p["spoofed"].num(k)).sum();
        check(sum == 0, format!("counted on another port: {p}"));
    }
    // No sniffer saw a spoofed frame; each saw the legitimate one meant for it.
    for (who, s) in sniffers {
        let (spoofed, legit) = report(s);
        check(
            spoofed == 0,
            format!("{who} received {spoofed} spoofed frames"),
        );
        let want = if who == "the victim" { 0 } else { 1 };
        check(
            legit == want,
            format!("{who} saw {legit} of the attacker's legitimate frames, not {want}"),
        );
    }
    // The victim's MAC stayed on its port; the neighbours still have its MAC.
    let on = fdb_of(&victim_mac);
    check(
        on == Some(victim_port),
        format!("the victim's MAC is on port {on:?}"),
    );
    for (who, mac) in [("the peer", peer_neigh()), ("the host", host_neigh())] {
        check(
            mac.as_deref() == Some(victim_mac.as_str()),
            format!("{who} has the victim at {mac:?}"),
        );
    }
    // No NAT flow in the victim's name, or from an outside address; the legitimate one exists.
    let flows = sb.vswitch(&["conntrack", "--json"]).ok().stdout;
    let flows = parse_json(flows.trim()).unwrap();
    let insides: Vec<&str> = (flows.as_array().unwrap().iter())
        .map(|f| f.str("inside"))
        .collect();
    let mine = format!("{}:", host_ip(2));
    check(
        insides.iter().all(|i| i.starts_with(&mine)) && !insides.is_empty(),
        format!("NAT flows: {insides:?}"),
    );
    // The text `ls` names the attacker.
    let text = sb.vswitch(&["ls"]).ok().stdout;
    let line = format!(
        "spoofed from port {} (pid {}): mac {}, ip {}, arp {}, ethertype {}",
        after.num("port"),
        attacker.pid,
        want.0,
        want.1,
        want.2,
        want.3
    );
    check(text.contains(&line), format!("`ls` lacks {line:?}: {text}"));
    let stats = sb.vswitch(&["stats", "--json"]).ok().stdout;
    let stats = parse_json(stats.trim()).unwrap();
    let total_counted = stats["switch"].num("spoofed");
    check(
        total_counted == total,
        format!("stats: {total_counted} spoofed frames"),
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Opting out: trusted ports, allow lists
// ---------------------------------------------------------------------------------------------

/// Adds `addr/24` on a macvlan `mv0` with `mac` in the container (a nested host behind it).
fn nested_host(c: &Container, mac: &str, addr: &str) {
    c.run(
        "ip",
        &[
            "link", "add", "mv0", "link", "eth0", "address", mac, "type", "macvlan", "mode",
            "bridge",
        ],
    )
    .ok();
    c.run("ip", &["addr", "add", &format!("{addr}/24"), "dev", "mv0"])
        .ok();
    c.run("ip", &["link", "set", "mv0", "up"]).ok();
}

#[test]
fn trusted_and_widened_ports_send_what_they_are_allowed() {
    let sb = Sandbox::start();
    let peer = sb.plug_plain(); // 10.1.1.2
    let checked = Container::plain();
    sb.plug(&checked, &[]); // 10.1.1.3
    let trusted = Container::plain();
    let view = sb.plug(&trusted, &["--trusted"]); // 10.1.1.4
    assert_eq!(view["security"]["trusted"].as_bool(), Some(true));
    let widened = Container::plain();
    let args = [
        "--allow-mac",
        "02:aa:00:00:00:05",
        "--allow-ip",
        "10.1.1.48/28",
    ];
    let view = sb.plug(&widened, &args); // 10.1.1.5
    let security = &view["security"];
    assert_eq!(
        security["allow_ip"].as_array().unwrap()[0].as_str(),
        Some("10.1.1.48/28")
    );
    assert_eq!(security["max_macs"].as_u64(), Some(1));
    let ls = sb.vswitch(&["ls"]).ok().stdout;
    assert!(
        ls.contains(" SEC ") && ls.contains("on+allow") && ls.contains("trusted"),
        "{ls}"
    );

    // Each has a nested host of its own: another MAC, another address.
    nested_host(&checked, "02:aa:00:00:00:03", "10.1.1.33");
    nested_host(&trusted, "02:aa:00:00:00:04", "10.1.1.34");
    nested_host(&widened, "02:aa:00:00:00:05", "10.1.1.50");
    assert!(
        peer.ping("10.1.1.34"),
        "the trusted port's nested host is unreachable"
    );
    assert!(
        peer.ping("10.1.1.50"),
        "the widened port's nested host is unreachable"
    );
    assert!(
        !peer.ping("10.1.1.33"),
        "the checked port's nested host answered"
    );
    let spoofed = port(&sb, &checked)["spoofed"].clone();
    assert!(
        spoofed.num("mac") > 0,
        "the checked port's nested host was not counted: {spoofed}"
    );
    for c in [&trusted, &widened] {
        let p = port(&sb, c);
        assert_eq!(p["spoofed"].num("mac") + p["spoofed"].num("arp"), 0, "{p}");
    }
    // The allowed MACs are learned; a trusted port keeps IPv6, a checked one has none.
    let fdb = sb.fdb();
    for (mac, c) in [
        ("02:aa:00:00:00:04", &trusted),
        ("02:aa:00:00:00:05", &widened),
    ] {
        let want = port(&sb, c).num("port");
        assert!(
            fdb.iter()
                .any(|e| e.str("mac") == mac && e.num("port") == want),
            "{mac} not learned on its port: {fdb:?}"
        );
        assert_eq!(port(&sb, c).num("fdb_macs"), 1);
    }
    let v6 = |c: &Container| {
        let out = c.run("sysctl", &["-n", "net.ipv6.conf.eth0.disable_ipv6"]);
        out.ok().stdout.trim().to_string()
    };
    assert_eq!((v6(&trusted), v6(&checked)), ("0".into(), "1".into()));
}

#[test]
fn contradictory_security_options_are_refused() {
    let sb = Sandbox::start();
    let c = Container::plain();
    let pid = c.pid.to_string();
    for args in [
        vec!["--trusted", "--allow-ip", "10.1.1.0/28"],
        vec!["--allow-ip", "10.1.1.5/24"],
        vec!["--allow-mac", "01:00:5e:00:00:01"],
        vec!["--allow-ethertype", "0x0800"],
        vec!["--allow-ethertype", "zz"],
    ] {
        let mut full = vec!["plug", pid.as_str()];
        full.extend_from_slice(&args);
        let err = sb.vswitch(&full).vswitch_error();
        assert!(!err.is_empty(), "{args:?}");
        assert_eq!(c.links(), vec!["lo".to_string()], "after {args:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Isolation
// ---------------------------------------------------------------------------------------------

/// Sends one UDP datagram carrying argv[1] to argv[2] (a broadcast address or not) from eth0.
const BROADCAST: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.sendto(sys.argv[1].encode(), (sys.argv[2], 9))
print("sent", flush=True)
"#;

/// Serves TCP on argv[1]: answers each connection with "hello\n".
const HELLO_SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hello\n")
    c.close()
"#;

/// Connects to argv[1]:argv[2] and prints what it reads.
const HELLO_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(s.recv(100).decode().strip(), flush=True)
"#;

#[test]
fn an_isolated_container_reaches_the_host_and_the_outside_only_with_the_fast_path() {
    an_isolated_container_reaches_the_host_and_the_outside_only(true);
}

#[test]
fn an_isolated_container_reaches_the_host_and_the_outside_only_without_the_fast_path() {
    an_isolated_container_reaches_the_host_and_the_outside_only(false);
}

fn an_isolated_container_reaches_the_host_and_the_outside_only(fast: bool) {
    let (sb, _wan) = nat_sandbox(&fast_args(fast), &[]);
    let a = sb.plug_plain(); // 10.1.1.2
    let b = sb.plug_plain(); // 10.1.1.3
    let iso = Container::plain();
    let view = sb.plug(&iso, &["--isolated", "--publish", "18080:8080"]); // 10.1.1.4
    assert_eq!(view["security"]["isolated"].as_bool(), Some(true));
    let iso_ip = host_ip(4);
    // The gateway, the host and the outside (through the NAT) answer it.
    assert!(iso.ping(GATEWAY), "isolated: no gateway");
    assert!(sb.host_ping(&iso_ip), "isolated: the host cannot reach it");
    assert!(iso.ping(WAN_IP), "isolated: no outside");
    // No other container does, either way, not even ARP.
    assert!(!iso.ping(&host_ip(2)), "isolated, but reaches a");
    assert!(!b.ping(&iso_ip), "isolated, but b reaches it");
    for (c, ip) in [(&iso, host_ip(3)), (&a, iso_ip.clone())] {
        assert_eq!(neighbour(c.cmd("ip", &["neigh", "show", &ip])), None);
    }
    // The others still talk to each other (over the fast path, when it is on).
    assert!(a.ping(&host_ip(3)), "a and b no longer talk");
    let fast_tx = port(&sb, &b).num("fast_tx_frames");
    assert_eq!(fast_tx > 0, fast, "{}", port(&sb, &b));
    assert_eq!(port(&sb, &iso).num("fast_tx_frames"), 0);
    // Its published port works from another container (through the host) and the outside.
    let mut server = iso.cmd("python3", &["-c", HELLO_SERVER, "8080"]);
    server.env("PYTHONUNBUFFERED", "1");
    let _server = Proc::spawn_ready(server);
    for (who, mut cmd) in [
        (
            "b",
            b.cmd("python3", &["-c", HELLO_CLIENT, GATEWAY, "18080"]),
        ),
        (
            "the outside",
            _wan.cmd("python3", &["-c", HELLO_CLIENT, HOST_WAN_IP, "18080"]),
        ),
    ] {
        let out = run(&mut cmd);
        assert_eq!(out.stdout.trim(), "hello", "{who}: {}", out.describe());
    }
    // Broadcasts: the isolated container's reach the host only; the others' never reach it.
    let (in_a, in_iso, in_host) = (sniff(&a), sniff(&iso), {
        let cmd = sb.host_cmd("python3", &["-c", SNIFFER, "vsw0", SPOOF, LEGIT]);
        sniffer(cmd)
    });
    for c in [&iso, &b] {
        let out = c
            .run("python3", &["-c", BROADCAST, LEGIT, "255.255.255.255"])
            .ok();
        assert_eq!(out.stdout.trim(), "sent");
    }
    // Unicast to a MAC known without ARP (a static neighbour entry: the MACs are
    // predictable) does not cross either, over the fast path or through the daemon.
    for (from, to) in [(&b, &iso_ip), (&iso, &host_ip(2))] {
        let mac = default_mac(to);
        let neigh = [
            "neigh",
            "replace",
            to,
            "lladdr",
            &mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ];
        from.run("ip", &neigh).ok();
        for _ in 0..3 {
            from.run("python3", &["-c", BROADCAST, LEGIT, to]).ok();
        }
    }
    // Nor routed through a host that forwards (as a Docker host does): to the other's address
    // by way of the gateway.
    run(sb.host_cmd("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])).ok();
    for (from, to) in [(&b, &iso_ip), (&iso, &host_ip(2))] {
        from.run("ip", &["route", "replace", to, "via", GATEWAY])
            .ok();
        for _ in 0..3 {
            from.run("python3", &["-c", BROADCAST, LEGIT, to]).ok();
        }
    }
    let seen = [report(in_a).1, report(in_iso).1, report(in_host).1];
    assert_eq!(
        seen,
        [1, 0, 2],
        "datagrams seen by a, the isolated one and the host"
    );
    // What it tried is counted, on whichever side sent it.
    let tried = port(&sb, &iso).num("isolation_drops") + port(&sb, &b).num("isolation_drops");
    assert!(tried > 0, "{:?}", sb.ls());
}

#[test]
fn run_isolate_isolates_every_container() {
    let sb = Sandbox::start_with(SandboxOptions {
        extra_args: vec!["--isolate".into()],
        ..SandboxOptions::default()
    });
    let a = sb.plug_plain();
    let b = sb.plug_plain();
    assert!(a.ping(GATEWAY) && b.ping(GATEWAY));
    assert!(!a.ping(&host_ip(3)) && !b.ping(&host_ip(2)));
    for c in [&a, &b] {
        assert_eq!(port(&sb, c)["security"]["isolated"].as_bool(), Some(true));
    }
    let ls = sb.vswitch(&["ls"]).ok().stdout;
    assert!(ls.contains("on,isolated"), "{ls}");
}

// ---------------------------------------------------------------------------------------------
// The forwarding table under a MAC flood
// ---------------------------------------------------------------------------------------------

/// Sends broadcast frames from argv[1] different source MACs (02:XX:nn:nn:nn:nn, XX =
/// argv[3]), over and over until killed when argv[2] is "loop", else once. Prints `ready`
/// after the first round.
const MAC_FLOOD: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
n, loop, tag = int(sys.argv[1]), sys.argv[2] == "loop", bytes([2, int(sys.argv[3], 16)])
frames = [b"\xff" * 6 + tag + struct.pack("!I", i) + b"\x88\xb5" + bytes(46) for i in range(n)]
first = True
while first or loop:
    for f in frames:
        s.send(f)
    if first:
        print("ready", flush=True)
        first = False
"#;

#[test]
fn a_mac_flood_neither_fills_the_table_for_good_nor_hides_new_containers() {
    const TABLE: u64 = 1024;
    let sb = Sandbox::start_with(SandboxOptions {
        extra_args: vec!["--fdb-size".into(), TABLE.to_string()],
        ..SandboxOptions::default()
    });
    let a = sb.plug_plain(); // 10.1.1.2
                             // A trusted flooder allowed more MACs than the table holds: it fills it.
    let flooder = Container::plain();
    sb.plug(&flooder, &["--trusted", "--max-macs", "200000"]);
    assert!(a.ping(GATEWAY));
    let mut cmd = flooder.cmd("python3", &["-c", MAC_FLOOD, "100000", "loop", "f1"]);
    cmd.env("PYTHONUNBUFFERED", "1");
    let flood = Proc::spawn(cmd);
    assert_eq!(flood.line(Duration::from_secs(120)), "ready");
    let stats = || {
        let out = sb.vswitch(&["stats", "--json"]).ok().stdout;
        parse_json(out.trim()).unwrap()["switch"].clone()
    };
    let during = stats();
    assert!(during.num("fdb_entries") <= TABLE, "{during}");
    assert!(
        during.num("fdb_full") > 0,
        "the flood did not fill the table: {during}"
    );

    // While it goes on: a new container is reachable, and learned on its port at once.
    let newcomer = Container::plain();
    let view = sb.plug(&newcomer, &[]);
    let (ip, mac) = (view.str("ip").to_string(), view.str("mac").to_string());
    assert!(
        sb.host_ping(&ip),
        "the host cannot reach a container plugged during the flood"
    );
    assert!(
        a.ping(&ip),
        "a cannot reach a container plugged during the flood"
    );
    let fdb = sb.fdb();
    let learned = fdb.iter().find(|e| e.str("mac") == mac);
    assert_eq!(
        learned.map(|e| e.num("port")),
        Some(view.num("port")),
        "the newcomer was not learned on its port"
    );
    assert!(fdb.len() as u64 <= TABLE);
    assert!(stats().num("fdb_evicted") > 0, "{}", stats());
    // ...and the stations plugged before the flood are still there.
    let a_mac = default_mac(&host_ip(2));
    assert!(fdb.iter().any(|e| e.str("mac") == a_mac), "a was evicted");
    drop(flood);
    // Unplugged, the flooder's MACs go with it.
    sb.vswitch(&["unplug", &flooder.pid.to_string()]).ok();
    let left = stats().num("fdb_entries");
    assert!(left < 10, "{left} entries left after the flooder went");

    // A trusted port with the default limit (256) holds no more than that.
    let flooder2 = Container::plain();
    sb.plug(&flooder2, &["--trusted"]);
    let out = flooder2.run("python3", &["-c", MAC_FLOOD, "5000", "once", "f2"]);
    let out = out.ok();
    assert_eq!(out.stdout.trim(), "ready");
    let p = poll(Duration::from_secs(3), || {
        let p = port(&sb, &flooder2);
        (p.num("fdb_refused") >= 5000 - 256).then_some(p)
    })
    .unwrap_or_else(|| panic!("refusals not counted: {}", port(&sb, &flooder2)));
    assert_eq!(p.num("fdb_macs"), 256, "{p}");
    assert_eq!(p["security"].num("max_macs"), 256);
}

// ---------------------------------------------------------------------------------------------
// Across a restart
// ---------------------------------------------------------------------------------------------

/// A second daemon started by the test in the sandbox's host namespace; stopped (SIGTERM, so
/// that it removes the network) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        common::signal(self.0.id(), "TERM");
        if wait_timeout(&mut self.0, Duration::from_secs(5)).is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn a_restarted_daemon_keeps_each_ports_security() {
    let mut sb = Sandbox::start();
    let iso = Container::plain();
    sb.plug(&iso, &["--isolated"]); // 10.1.1.2
    let widened = Container::plain();
    sb.plug(&widened, &["--allow-ip", "10.1.1.48/28"]); // 10.1.1.3
    let plain = sb.plug_plain(); // 10.1.1.4
    assert!(!plain.ping(&host_ip(2)));

    // The daemon goes, leaving the network; the next one takes it over from the state file.
    let status = sb.stop_daemon("USR2");
    assert!(status.success(), "{status}: {}", sb.daemon_log());
    let log = std::fs::File::create(sb.dir.path.join("daemon2.log")).unwrap();
    let mut cmd = sb
        .host
        .cmd(VSWITCH, &["run", "--subnet", SUBNET, "--control"]);
    cmd.arg(&sb.control)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let _daemon = Daemon(cmd.spawn().expect("start the second daemon"));
    let ready = poll(Duration::from_secs(10), || {
        let out = try_run(sb.vswitch_cmd("ls", &[]), Duration::from_secs(5))?;
        out.success().then_some(())
    });
    let log = || std::fs::read_to_string(sb.dir.path.join("daemon2.log")).unwrap_or_default();
    assert!(
        ready.is_some(),
        "the second daemon did not come up: {}",
        log()
    );

    let sec = |c: &Container| port(&sb, c)["security"].clone();
    assert_eq!(sec(&iso)["isolated"].as_bool(), Some(true), "{}", log());
    let allowed = sec(&widened)["allow_ip"].clone();
    assert_eq!(allowed.as_array().map(|a| a.len()), Some(1), "{allowed}");
    assert_eq!(sec(&plain)["trusted"].as_bool(), Some(false));
    // ...and enforces it: still isolated, still checked.
    assert!(iso.ping(GATEWAY) && plain.ping(&host_ip(3)));
    assert!(
        !plain.ping(&host_ip(2)),
        "isolation lost across the restart"
    );
    let forged = ["addr", "add", "10.1.1.99/24", "dev", "eth0"];
    plain.run("ip", &forged).ok();
    let mut from = plain.cmd("ping", &["-c", "1", "-W", "1", "-I", "10.1.1.99"]);
    from.arg(host_ip(3));
    assert!(
        !run(&mut from).success(),
        "a forged source answered after the restart"
    );
    assert!(port(&sb, &plain)["spoofed"].num("arp") + port(&sb, &plain)["spoofed"].num("ip") > 0);
}
