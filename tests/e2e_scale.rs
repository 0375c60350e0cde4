//! End-to-end tests of the datapath at scale and with offloads (issue 4 §4 and §6), as root: a
//! namespace plays the host and runs `vswitch run`; containers are processes in fresh
//! namespaces plugged into it.
//! - 64 containers on one switch (a bounded worker pool, not a thread per port): all reach the
//!   gateway, a sample of pairs reach each other, `ls`/`fdb` hold them all, unplugging some
//!   leaves the others working;
//! - GSO/TSO super-frames cross the switch unsegmented (container -> container and
//!   host -> container through the TAP) and the payload arrives intact;
//! - a port that cannot take super-frames (offloads off) gets them segmented, payload intact.

mod common;

use common::{
    default_mac, ping_batches, ping_once_cmd, require_program, tcp_transfer, Container, Json,
    JsonExt, Sandbox, SandboxOptions,
};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const SUBNET: &str = "10.1.0.0/24";
const GATEWAY: &str = "10.1.0.1";
const CONTAINERS: usize = 64;
/// Pings run at once: 64 at a time would only queue on 2 cores.
const PING_BATCH: usize = 16;

/// The address the n-th container plugged gets (counting from 0): 10.1.0.2, 10.1.0.3, ...
fn nth_ip(n: usize) -> String {
    format!("10.1.0.{}", n + 2)
}

/// A small deterministic generator (xorshift64*): the same "random" pairs on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// A ping job: `from` pings `ip` once; the echo must be answered (nothing is retried).
fn ping_job(label: String, from: &Container, ip: &str) -> (String, std::process::Command) {
    (label, ping_once_cmd(from.cmd("ping", &[]), ip))
}

/// Every container in `cs` pings the gateway; panics naming those whose echo got no reply.
#[track_caller]
fn all_reach_the_gateway(cs: &[(&Container, String)], when: &str) {
    let started = Instant::now();
    let jobs = cs
        .iter()
        .map(|(c, ip)| ping_job(format!("{ip} -> gateway"), c, GATEWAY))
        .collect();
    let failed = ping_batches(jobs, PING_BATCH);
    assert!(
        failed.is_empty(),
        "{when}: {} of {} containers cannot ping the gateway: {failed:?}",
        failed.len(),
        cs.len()
    );
    eprintln!(
        "{when}: {} containers pinged the gateway in {:.2?}",
        cs.len(),
        started.elapsed()
    );
}

#[test]
fn sixty_four_containers() {
    let started = Instant::now();
    let sb = Sandbox::start_subnet(SUBNET);

    // 64 containers. Each one is killed when `containers` drops, also on a failed assertion
    // (and a failure while starting them drops those already started).
    let mut containers: Vec<Container> = Vec::with_capacity(CONTAINERS);
    for _ in 0..CONTAINERS {
        containers.push(Container::plain());
    }
    eprintln!(
        "started {CONTAINERS} containers in {:.2?}",
        started.elapsed()
    );
    check_sixty_four(&sb, &containers);
    let t = Instant::now();
    drop(containers);
    eprintln!("killed the containers in {:.2?}", t.elapsed());
    drop(sb);
    eprintln!("sixty_four_containers: {:.2?} in all", started.elapsed());
}

fn check_sixty_four(sb: &Sandbox, containers: &[Container]) {
    // Plugged one after another, as a runtime starting containers would.
    let plug_started = Instant::now();
    let mut slowest = Duration::ZERO;
    for (n, c) in containers.iter().enumerate() {
        let t = Instant::now();
        let port = sb.plug(c, &[]);
        slowest = slowest.max(t.elapsed());
        assert_eq!(port.str("ip"), nth_ip(n), "plug #{n}: {port}");
    }
    let plug_time = plug_started.elapsed();
    eprintln!(
        "plugged {CONTAINERS} containers one after another in {plug_time:.2?} \
         ({:.1?} per plug, slowest {slowest:.1?})",
        plug_time / CONTAINERS as u32
    );
    let plugged: Vec<(&Container, String)> = containers
        .iter()
        .enumerate()
        .map(|(n, c)| (c, nth_ip(n)))
        .collect();

    // ls: the TAP and 64 containers, distinct addresses and port numbers.
    let ports = sb.ls();
    assert_eq!(
        ports.len(),
        CONTAINERS + 1,
        "ls should list the TAP and {CONTAINERS} containers: {ports:?}"
    );
    let taps: Vec<&Json> = ports
        .iter()
        .filter(|p| p["kind"].as_str() == Some("tap"))
        .collect();
    assert_eq!(taps.len(), 1, "ls should list one TAP: {ports:?}");
    assert_eq!(taps[0].str("ip"), GATEWAY, "{}", taps[0]);
    let ips: HashSet<&str> = ports.iter().map(|p| p.str("ip")).collect();
    assert_eq!(
        ips.len(),
        CONTAINERS + 1,
        "addresses in ls are not distinct: {ports:?}"
    );
    let numbers: HashSet<u64> = ports.iter().map(|p| p.num("port")).collect();
    assert_eq!(
        numbers.len(),
        CONTAINERS + 1,
        "port numbers in ls are not distinct: {ports:?}"
    );
    for (c, ip) in &plugged {
        let p = ports
            .iter()
            .find(|p| p["pid"].as_u64() == Some(u64::from(c.pid)))
            .unwrap_or_else(|| panic!("container {} not in ls: {ports:?}", c.pid));
        assert_eq!(p.str("kind"), "container", "{p}");
        assert_eq!(p.str("ip"), ip, "{p}");
        assert_eq!(p.str("host_ifname"), c.host_port(), "{p}");
    }

    // Every container reaches the gateway.
    all_reach_the_gateway(&plugged, "all 64 plugged");

    // A sample of pairs reach each other: 32 pseudo-random pairs, and first <-> last.
    let mut rng = Rng(0x5eed_0000_0064_0001);
    let mut pairs = vec![(0, CONTAINERS - 1), (CONTAINERS - 1, 0)];
    while pairs.len() < 34 {
        let (a, b) = (rng.below(CONTAINERS), rng.below(CONTAINERS));
        if a != b {
            pairs.push((a, b));
        }
    }
    let t = Instant::now();
    let jobs = pairs
        .iter()
        .map(|&(a, b)| {
            let (from, from_ip) = &plugged[a];
            let to_ip = &plugged[b].1;
            ping_job(format!("{from_ip} -> {to_ip}"), from, to_ip)
        })
        .collect();
    let failed = ping_batches(jobs, PING_BATCH);
    assert!(
        failed.is_empty(),
        "pairs of containers that cannot ping each other: {failed:?}"
    );
    eprintln!(
        "{} pairs pinged each other in {:.2?}",
        pairs.len(),
        t.elapsed()
    );

    // fdb: every container's MAC, learned on its own port.
    let fdb = sb.fdb();
    assert!(
        fdb.len() >= CONTAINERS,
        "fdb should hold at least the {CONTAINERS} container MACs, has {}: {fdb:?}",
        fdb.len()
    );
    for (c, ip) in &plugged {
        let mac = default_mac(ip);
        let e = fdb
            .iter()
            .find(|e| e.str("mac").to_lowercase() == mac)
            .unwrap_or_else(|| panic!("{mac} ({ip}) not in fdb: {fdb:?}"));
        assert_eq!(e.str("port_name"), c.host_port(), "{e}");
    }

    // Unplug 10 of them (spread over the list); their veths go, the others still work.
    let t = Instant::now();
    let gone: Vec<usize> = (0..10).map(|i| i * 6 + 3).collect();
    for &n in &gone {
        sb.vswitch(&["unplug", &containers[n].pid.to_string()]).ok();
    }
    eprintln!("unplugged 10 containers in {:.2?}", t.elapsed());
    let (unplugged, remaining): (Vec<_>, Vec<_>) = plugged
        .iter()
        .cloned()
        .enumerate()
        .partition(|(n, _)| gone.contains(n));
    let remaining: Vec<(&Container, String)> = remaining.into_iter().map(|(_, p)| p).collect();
    let ports = sb.ls();
    assert_eq!(
        ports.len(),
        CONTAINERS - 10 + 1,
        "ls after unplugging 10: {ports:?}"
    );
    for (_, (c, ip)) in &unplugged {
        assert!(
            !ports
                .iter()
                .any(|p| p["pid"].as_u64() == Some(u64::from(c.pid)) || p.str("ip") == ip),
            "unplugged container {} ({ip}) still in ls: {ports:?}",
            c.pid
        );
        assert_eq!(
            c.links(),
            vec!["lo".to_string()],
            "unplugged container {} still has its interface",
            c.pid
        );
    }
    let remaining_refs: Vec<&Container> = remaining.iter().map(|(c, _)| *c).collect();
    sb.assert_host_links(&remaining_refs);
    let fdb = sb.fdb();
    for (_, (c, _)) in &unplugged {
        assert!(
            !fdb.iter()
                .any(|e| e["port_name"].as_str() == Some(&c.host_port())),
            "fdb still has entries on unplugged port {}: {fdb:?}",
            c.host_port()
        );
    }
    all_reach_the_gateway(&remaining, "54 left after unplugging 10");
}

/// `ethtool -k IFACE` (run by `cmd`) reports `feature: on`.
#[track_caller]
fn assert_offload_on(ethtool_k: &str, feature: &str, iface: &str) {
    let value = ethtool_k
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{feature}:")))
        .unwrap_or_else(|| panic!("`ethtool -k {iface}` does not list {feature}: {ethtool_k}"));
    assert!(
        value.trim().starts_with("on"),
        "{feature} is not on for {iface} ({}): the switch needs it for super-frames",
        value.trim()
    );
}

/// Counters of one port: (rx_frames, rx_bytes, tx_frames, tx_bytes).
fn counters(p: &Json) -> [u64; 4] {
    [
        p.num("rx_frames"),
        p.num("rx_bytes"),
        p.num("tx_frames"),
        p.num("tx_bytes"),
    ]
}

/// Mean frame size (bytes per frame) of the traffic between two counter readings:
/// (received by the switch on that port, sent by the switch on that port).
fn mean_frame_sizes(before: [u64; 4], after: [u64; 4]) -> (u64, u64) {
    let d: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    (d[1] / d[0].max(1), d[3] / d[2].max(1))
}

/// Above the 1500-byte MTU by a margin: only GSO super-frames make a mean this large.
const SUPER_FRAME_MEAN: u64 = 3000;
const MB64: u64 = 64 * 1024 * 1024;

#[test]
fn super_frames_cross_the_switch_intact() {
    require_program("ethtool", "ethtool");
    // Over the kernel fast path (after the first frames) and through the daemon.
    super_frames_cross_intact(&[]);
    super_frames_cross_intact(&["--no-fast-path"]);
}

fn super_frames_cross_intact(args: &[&str]) {
    eprintln!("vswitch run {args:?}");
    let sb = Sandbox::start_with(SandboxOptions {
        subnet: SUBNET.into(),
        extra_args: args.iter().map(|a| a.to_string()).collect(),
        ..SandboxOptions::default()
    });
    let c1 = sb.plug_plain();
    let c2 = sb.plug_plain();
    let c2_ip = nth_ip(1);

    // The containers' eth0 (and the host's TAP) hand the switch unsegmented TCP super-frames
    // with partial checksums.
    for c in [&c1, &c2] {
        let k = c.run("ethtool", &["-k", "eth0"]).ok().stdout;
        assert_offload_on(&k, "tcp-segmentation-offload", "eth0");
        assert_offload_on(&k, "tx-checksumming", "eth0");
    }
    let k = common::run(&mut sb.host_cmd("ethtool", &["-k", "vsw0"]))
        .ok()
        .stdout;
    assert_offload_on(&k, "tcp-segmentation-offload", "vsw0");

    // Container -> container: 64 MB with matching SHA-256 on both ends. The switch received
    // super-frames from c1 and sent super-frames to c2; c2's kernel completed their partial
    // checksums (a wrong one would drop segments or corrupt the data, and the hash would differ
    // or the transfer stall).
    let port = |c: &Container| {
        sb.port_of(c.pid)
            .unwrap_or_else(|| panic!("{} not in ls", c.pid))
    };
    let (c1_before, c2_before) = (counters(&port(&c1)), counters(&port(&c2)));
    tcp_transfer(&c1, &c2, &c2_ip, MB64);
    let (c1_after, c2_after) = (port(&c1), port(&c2));
    let (c1_rx_mean, _) = mean_frame_sizes(c1_before, counters(&c1_after));
    let (_, c2_tx_mean) = mean_frame_sizes(c2_before, counters(&c2_after));
    eprintln!(
        "container -> container: mean frame from c1 {c1_rx_mean} bytes, to c2 {c2_tx_mean} bytes"
    );
    assert!(
        c1_rx_mean > SUPER_FRAME_MEAN,
        "mean frame size the switch received from c1 during the transfer is {c1_rx_mean} bytes \
         (<= {SUPER_FRAME_MEAN}): super-frames were segmented before the switch: {c1_after}"
    );
    assert!(
        c2_tx_mean > SUPER_FRAME_MEAN,
        "mean frame size the switch sent to c2 during the transfer is {c2_tx_mean} bytes \
         (<= {SUPER_FRAME_MEAN}): the switch segmented the super-frames: {c2_after}"
    );

    // Host -> container through the TAP, the same.
    let (tap_before, c2_before) = (counters(&sb.tap_port()), counters(&port(&c2)));
    tcp_transfer(&sb, &c2, &c2_ip, MB64);
    let (tap_after, c2_after) = (sb.tap_port(), port(&c2));
    let (tap_rx_mean, _) = mean_frame_sizes(tap_before, counters(&tap_after));
    let (_, c2_tx_mean) = mean_frame_sizes(c2_before, counters(&c2_after));
    eprintln!(
        "host -> container: mean frame from the TAP {tap_rx_mean} bytes, to c2 {c2_tx_mean} bytes"
    );
    assert!(
        tap_rx_mean > SUPER_FRAME_MEAN,
        "mean frame size the switch received from the TAP during the transfer is {tap_rx_mean} \
         bytes (<= {SUPER_FRAME_MEAN}): the host's super-frames were segmented: {tap_after}"
    );
    assert!(
        c2_tx_mean > SUPER_FRAME_MEAN,
        "mean frame size the switch sent to c2 during the host's transfer is {c2_tx_mean} bytes \
         (<= {SUPER_FRAME_MEAN}): the switch segmented the super-frames: {c2_after}"
    );
}

/// (rx_packets, rx_bytes) of the container's eth0, from its own /proc/net/dev (/sys would
/// show the namespace that mounted it).
fn eth0_rx(c: &Container) -> (u64, u64) {
    let dev = c.run("cat", &["/proc/net/dev"]).ok().stdout;
    let line = dev
        .lines()
        .find_map(|l| l.trim().strip_prefix("eth0:"))
        .unwrap_or_else(|| panic!("no eth0 in the container's /proc/net/dev:\n{dev}"));
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    (fields[1], fields[0])
}

#[test]
fn super_frames_reach_a_port_that_cannot_take_them_segmented() {
    // With segmentation and checksum offload off on c2's host-side veth, the super-frames the
    // switch forwards from c1 must be cut into MTU-size frames (and their checksums completed)
    // on the way out, not dropped: the transfer completes intact. Through the daemon: the kernel
    // fast path hands frames to the container's stack, which takes super-frames whatever the
    // host end's offloads.
    require_program("ethtool", "ethtool");
    let sb = Sandbox::start_with(SandboxOptions {
        subnet: SUBNET.into(),
        extra_args: vec!["--no-fast-path".into()],
        ..SandboxOptions::default()
    });
    let c1 = sb.plug_plain();
    let c2 = sb.plug_plain();
    let off = [
        "-K",
        &c2.host_port(),
        "tso",
        "off",
        "gso",
        "off",
        "tx",
        "off",
    ];
    common::run(&mut sb.host_cmd("ethtool", &off)).ok();

    let port = |c: &Container| sb.port_of(c.pid).unwrap();
    let (c1_before, c2_before) = (counters(&port(&c1)), eth0_rx(&c2));
    tcp_transfer(&c1, &c2, &nth_ip(1), MB64 / 4);
    let (c1_after, c2_after) = (port(&c1), eth0_rx(&c2));
    let (c1_rx_mean, _) = mean_frame_sizes(c1_before, counters(&c1_after));
    let c2_rx_mean = (c2_after.1 - c2_before.1) / (c2_after.0 - c2_before.0).max(1);
    eprintln!("mean frame from c1 {c1_rx_mean} bytes, into c2's eth0 {c2_rx_mean} bytes");
    assert!(
        c1_rx_mean > SUPER_FRAME_MEAN,
        "the switch received no super-frames from c1 (mean {c1_rx_mean} bytes): {c1_after}"
    );
    assert!(
        c2_rx_mean > 0 && c2_rx_mean <= 1514,
        "c2's eth0 received frames of {c2_rx_mean} bytes on average: not segmented"
    );
    let c2_port = port(&c2);
    assert_eq!(c2_port.num("drops"), 0, "frames to c2 dropped: {c2_port}");
}
