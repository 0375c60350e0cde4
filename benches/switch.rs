//! Hot-path cost of `Switch::process`: parse + learn + forwarding decision per frame.
//! Figures are recorded in BENCHMARKS.md.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vswitch_switch::{Action, Config, MacAddr, Millis, PortId, PortInfo, PortPolicy, Switch};

const PORTS: u16 = 64;
const NOW: Millis = 1_000_000;

fn ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 | n)
}

/// The station of port `p`.
fn station(p: u16) -> MacAddr {
    MacAddr::from_ipv4(ip(p.into()))
}

/// The `i`th background host (not a port's station).
fn host(i: u32) -> MacAddr {
    let [a, b, c, d] = i.to_be_bytes();
    MacAddr([0x02, 0xaa, a, b, c, d])
}

/// A 64-byte frame (60 + room for the FCS, as a NIC would count it). An IPv4 frame's source
/// address is the last four bytes of its source MAC: a station's own address.
fn frame(dst: MacAddr, src: MacAddr, ethertype: u16) -> [u8; 64] {
    let mut f = [0u8; 64];
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    f[14] = 0x45;
    f[26..30].copy_from_slice(&src.0[2..]);
    f
}

/// A switch with ports 1..=64 (each with its station) and `hosts` more MACs learned, spread
/// over the ports, plus stations 1 and 2. The ports are trusted (no port security: background
/// hosts live behind them, as behind a container that bridges).
fn switch(hosts: u32) -> Switch {
    switch_with(hosts, PortPolicy::trusted())
}

/// The same with every port on `policy`.
fn switch_with(hosts: u32, policy: PortPolicy) -> Switch {
    let sw = Switch::new(Config::default());
    for p in 1..=PORTS {
        let info = PortInfo {
            mac: station(p),
            ip: Some(ip(p.into())),
        };
        sw.add_port_with_policy(PortId(p), info, policy.clone());
    }
    let learn = |port: u16, mac: MacAddr| {
        let f = frame(MacAddr::BROADCAST, mac, 0x0800);
        sw.process(PortId(port), &f, false, NOW, &mut [0u8; 64]);
    };
    learn(1, station(1));
    learn(2, station(2));
    for i in 0..hosts {
        learn((i % u32::from(PORTS)) as u16 + 1, host(i));
    }
    assert_eq!(sw.fdb_len(), hosts as usize + 2);
    sw
}

fn process(sw: &Switch, port: PortId, frame: &[u8], reply: &mut [u8]) -> Action {
    sw.process(
        black_box(port),
        black_box(frame),
        false,
        black_box(NOW),
        reply,
    )
}

/// Station 1 -> station 2, with N other MACs in the table.
fn unicast(c: &mut Criterion) {
    let mut group = c.benchmark_group("unicast");
    group.throughput(Throughput::Elements(1));
    for hosts in [1, 64, 4096] {
        let sw = switch(hosts);
        let f = frame(station(2), station(1), 0x0800);
        let mut reply = [0u8; 64];
        assert_eq!(
            process(&sw, PortId(1), &f, &mut reply),
            Action::Forward(PortId(2))
        );
        group.bench_function(BenchmarkId::from_parameter(hosts), |b| {
            b.iter(|| process(&sw, PortId(1), &f, &mut reply))
        });
    }
    group.finish();
}

/// A switch with ports 1..=`ports` (each with its station, learned on it) and background hosts
/// learned over those ports up to 64 MACs in all: only the number of ports varies.
fn switch_ports(ports: u16) -> Switch {
    const MACS: u32 = 64;
    let sw = Switch::new(Config::default());
    let learn = |port: u16, mac: MacAddr| {
        let f = frame(MacAddr::BROADCAST, mac, 0x0800);
        sw.process(PortId(port), &f, false, NOW, &mut [0u8; 64]);
    };
    for p in 1..=ports {
        let info = PortInfo {
            mac: station(p),
            ip: Some(ip(p.into())),
        };
        sw.add_port_with_policy(PortId(p), info, PortPolicy::trusted());
        learn(p, station(p));
    }
    for i in 0..MACS - u32::from(ports) {
        learn((i % u32::from(ports)) as u16 + 1, host(i));
    }
    assert_eq!(sw.fdb_len(), MACS as usize);
    sw
}

/// Station 1 -> station 2 with 2, 16 or 64 ports registered and 64 MACs learned: the per-frame
/// cost must not grow with the number of ports.
fn unicast_ports(c: &mut Criterion) {
    let mut group = c.benchmark_group("unicast_ports");
    group.throughput(Throughput::Elements(1));
    for ports in [2, 16, 64] {
        let sw = switch_ports(ports);
        let f = frame(station(2), station(1), 0x0800);
        let mut reply = [0u8; 64];
        assert_eq!(
            process(&sw, PortId(1), &f, &mut reply),
            Action::Forward(PortId(2))
        );
        group.bench_function(BenchmarkId::from_parameter(ports), |b| {
            b.iter(|| process(&sw, PortId(1), &f, &mut reply))
        });
    }
    group.finish();
}

/// 4096 learned hosts, each frame a different (source, destination) pair: table lookups that
/// miss the CPU cache more often than one flow repeated.
fn unicast_mix(c: &mut Criterion) {
    const HOSTS: u32 = 4096;
    let sw = switch(HOSTS);
    let ingress = |i: u32| PortId((i % u32::from(PORTS)) as u16 + 1);
    let frames: Vec<(PortId, [u8; 64])> = (0..HOSTS)
        .map(|i| {
            let j = (i * 17 + 1) % HOSTS;
            let j = if ingress(j) == ingress(i) {
                (j + 1) % HOSTS
            } else {
                j
            };
            (ingress(i), frame(host(j), host(i), 0x0800))
        })
        .collect();
    let mut reply = [0u8; 64];
    for (port, f) in &frames {
        assert!(matches!(
            process(&sw, *port, f, &mut reply),
            Action::Forward(_)
        ));
    }
    let mut group = c.benchmark_group("unicast_mix");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::from_parameter(HOSTS), |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % frames.len();
            let (port, f) = &frames[i];
            process(&sw, *port, f, &mut reply)
        })
    });
    group.finish();
}

/// Broadcast from a known station with 64 ports registered: just the decision (the caller
/// iterates the 63 egress ports).
fn flood(c: &mut Criterion) {
    let sw = switch(64);
    let f = frame(MacAddr::BROADCAST, station(1), 0x0800);
    let mut reply = [0u8; 64];
    assert_eq!(process(&sw, PortId(1), &f, &mut reply), Action::Flood);
    let mut group = c.benchmark_group("flood");
    group.throughput(Throughput::Elements(1));
    group.bench_function("64ports", |b| {
        b.iter(|| process(&sw, PortId(1), &f, &mut reply))
    });
    group.finish();
}

/// ARP request from station 1 for station 2's address, answered by the switch.
fn arp_reply(c: &mut Criterion) {
    let sw = switch(64);
    let mut f = frame(MacAddr::BROADCAST, station(1), 0x0806);
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend(station(1).0);
    arp.extend(ip(1).octets());
    arp.extend([0; 6]);
    arp.extend(ip(2).octets());
    f[14..14 + arp.len()].copy_from_slice(&arp);
    let mut reply = [0u8; 64];
    assert_eq!(
        process(&sw, PortId(1), &f, &mut reply),
        Action::Reply { len: 60 }
    );
    c.bench_function("arp_reply", |b| {
        b.iter(|| process(&sw, PortId(1), &f, &mut reply))
    });
}

/// Two threads (one per core) forwarding different flows through one shared switch with 4096
/// MACs: wall time per frame per thread, i.e. what sharing the table costs.
fn contended(c: &mut Criterion) {
    let sw = switch(4096);
    let flows = [
        (PortId(1), frame(station(2), station(1), 0x0800)),
        (PortId(3), frame(station(4), host(2), 0x0800)),
    ];
    let mut group = c.benchmark_group("unicast_2threads");
    group.throughput(Throughput::Elements(2));
    group.bench_function(BenchmarkId::from_parameter(4096), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for (port, f) in &flows {
                    let sw = &sw;
                    s.spawn(move || {
                        let mut reply = [0u8; 64];
                        for _ in 0..iters {
                            process(sw, *port, f, &mut reply);
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    group.finish();
}

/// Port security on (every port checked, the default for a container): station 1 -> station
/// 2 with 1 or 4096 background MACs learned (on trusted ports 3..=64, the only ones that may
/// send them), a broadcast and an ARP request; and the unicast again with an isolated port
/// elsewhere on the switch (the destination's isolation is then checked too). Compare with
/// `unicast`, `flood` and `arp_reply` (no checks).
fn secure(c: &mut Criterion) {
    let secured = |hosts: u32| {
        let sw = switch(hosts);
        for p in [1, 2] {
            let info = PortInfo {
                mac: station(p),
                ip: Some(ip(p.into())),
            };
            sw.add_port_with_policy(PortId(p), info, PortPolicy::default());
        }
        sw
    };
    let mut group = c.benchmark_group("secure_unicast");
    group.throughput(Throughput::Elements(1));
    let f = frame(station(2), station(1), 0x0800);
    let mut reply = [0u8; 64];
    for hosts in [1, 4096] {
        let sw = secured(hosts);
        assert_eq!(
            process(&sw, PortId(1), &f, &mut reply),
            Action::Forward(PortId(2))
        );
        group.bench_function(BenchmarkId::from_parameter(hosts), |b| {
            b.iter(|| process(&sw, PortId(1), &f, &mut reply))
        });
    }
    group.finish();

    let sw = secured(4096);
    let isolated = PortInfo {
        mac: station(64),
        ip: Some(ip(64)),
    };
    let policy = PortPolicy {
        isolated: true,
        ..PortPolicy::default()
    };
    sw.add_port_with_policy(PortId(64), isolated, policy);
    assert_eq!(
        process(&sw, PortId(1), &f, &mut reply),
        Action::Forward(PortId(2))
    );
    c.bench_function("secure_unicast_isolation/4096", |b| {
        b.iter(|| process(&sw, PortId(1), &f, &mut reply))
    });

    let sw = secured(64);
    let bcast = frame(MacAddr::BROADCAST, station(1), 0x0800);
    assert_eq!(process(&sw, PortId(1), &bcast, &mut reply), Action::Flood);
    c.bench_function("secure_flood/64ports", |b| {
        b.iter(|| process(&sw, PortId(1), &bcast, &mut reply))
    });

    let mut req = frame(MacAddr::BROADCAST, station(1), 0x0806);
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend(station(1).0);
    arp.extend(ip(1).octets());
    arp.extend([0; 6]);
    arp.extend(ip(2).octets());
    req[14..14 + arp.len()].copy_from_slice(&arp);
    assert_eq!(
        process(&sw, PortId(1), &req, &mut reply),
        Action::Reply { len: 60 }
    );
    c.bench_function("secure_arp_reply", |b| {
        b.iter(|| process(&sw, PortId(1), &req, &mut reply))
    });

    // A spoofed frame: how cheaply a flood of them is dropped.
    let forged = frame(station(2), station(3), 0x0800);
    assert!(matches!(
        process(&sw, PortId(1), &forged, &mut reply),
        Action::Drop(_)
    ));
    c.bench_function("secure_spoofed_drop", |b| {
        b.iter(|| process(&sw, PortId(1), &forged, &mut reply))
    });
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = unicast, unicast_ports, unicast_mix, flood, arp_reply, contended, secure
}
criterion_main!(benches);
