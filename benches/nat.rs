//! Cost of the NAT's per-packet translation and of flow setup (`vswitch-nat`).
//!
//! - `translate_out/N`, `translate_in/N`: one established TCP flow's data segment (64-byte
//!   payload) rewritten by `outbound` (container -> relay) and `from_host` (relay -> container),
//!   with N flows in the table: `one_flow/N` the same flow's segment each time (a burst, as
//!   flows mostly come), `mix/N` each segment of another flow, cycling through all N in a
//!   shuffled order (lookups that miss the CPU caches once the table outgrows them). Each
//!   iteration includes copying the 128-byte frame from a template (`frame_copy` alone measures
//!   that), because translation changes the frame in place.
//! - `setup/udp_flow`: a container's first datagram to a new destination (flow creation).
//! - `setup/tcp_connect`: a new TCP flow's SYN -> `TcpConnect` -> `tcp_connected`.
//! - `translate_out_2threads/100000`: two threads translating different flows of one table.
//!
//! Figures are recorded in BENCHMARKS.md.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vswitch_nat::{Nat, NatConfig, Verdict};

const GW: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const C_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const NOW: u64 = 1_000_000;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

fn config(max_flows: usize) -> NatConfig {
    NatConfig {
        max_flows,
        ..NatConfig::new(
            GW,
            GW_MAC,
            Ipv4Addr::new(10, 1, 0, 0),
            16,
            (40000..40008).collect(),
        )
    }
}

fn csum(parts: &[&[u8]]) -> u16 {
    let mut s: u64 = 0;
    for p in parts {
        for c in p.chunks(2) {
            s += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// `[vnet][eth][ipv4][l4]` with valid checksums (`csum_off`: transport checksum field).
fn frame(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, mut l4: Vec<u8>, csum_off: usize) -> Vec<u8> {
    let mut f = vec![0u8; 10];
    f.extend(GW_MAC);
    f.extend(C_MAC);
    f.extend([0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = csum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend(src.octets());
    pseudo.extend(dst.octets());
    pseudo.extend([0, proto]);
    pseudo.extend((l4.len() as u16).to_be_bytes());
    let c = csum(&[&pseudo, &l4]);
    l4[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
    f.extend(ip);
    f.extend(l4);
    f
}

fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend(src.port().to_be_bytes());
    t.extend(dst.port().to_be_bytes());
    t.extend(1000u32.to_be_bytes());
    t.extend(1u32.to_be_bytes());
    t.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend(payload);
    frame(*src.ip(), *dst.ip(), 6, t, 16)
}

fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend(src.port().to_be_bytes());
    u.extend(dst.port().to_be_bytes());
    u.extend(((8 + payload.len()) as u16).to_be_bytes());
    u.extend([0, 0]);
    u.extend(payload);
    frame(*src.ip(), *dst.ip(), 17, u, 6)
}

/// The `i`th container address and port (250 containers, ports from 10000).
fn container(i: u32) -> SocketAddrV4 {
    let c = 2 + i % 250;
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + c);
    SocketAddrV4::new(ip, 10_000 + (i / 250) as u16)
}

fn outside(i: u32) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1 + (i % 200) as u8), 443)
}

/// One established flow's data segments, both directions, as templates.
struct Flow {
    out: Vec<u8>,
    from_host: Vec<u8>,
}

/// A NAT with `n` established TCP flows.
fn nat_with_flows(n: u32) -> (Nat, Vec<Flow>) {
    let nat = Nat::new(config(n as usize + 1000));
    let payload = [0x5a; 64];
    let flows = (0..n)
        .map(|i| {
            let (c, o) = (container(i), outside(i));
            let mut syn = tcp(c, o, SYN, b"");
            let Verdict::TcpConnect { flow, .. } = nat.outbound(&mut syn, NOW) else {
                panic!("no connect")
            };
            nat.tcp_connected(flow, &mut syn, NOW).unwrap();
            let relay = u16::from_be_bytes([syn[46], syn[47]]);
            let relay = SocketAddrV4::new(GW, relay);
            let mut synack = tcp(relay, c, SYN | ACK, b"");
            assert_eq!(nat.from_host(&mut synack, NOW), Verdict::Rewritten);
            let mut ack = tcp(c, o, ACK, b"");
            assert_eq!(nat.outbound(&mut ack, NOW), Verdict::Rewritten);
            Flow {
                out: tcp(c, o, ACK | PSH, &payload),
                from_host: tcp(relay, c, ACK | PSH, &payload),
            }
        })
        .collect();
    (nat, flows)
}

/// A fixed pseudo-random permutation of 0..n.
fn shuffled(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn translate(c: &mut Criterion) {
    let mut buf = [0u8; 128];
    for (name, inbound) in [("translate_out", false), ("translate_in", true)] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        for n in [1u32, 10_000, 100_000] {
            let (nat, flows) = nat_with_flows(n);
            let run = |nat: &Nat, buf: &mut [u8; 128], f: &Flow| {
                let t = if inbound { &f.from_host } else { &f.out };
                buf.copy_from_slice(t);
                let v = if inbound {
                    nat.from_host(black_box(buf), black_box(NOW))
                } else {
                    nat.outbound(black_box(buf), black_box(NOW))
                };
                debug_assert_eq!(v, Verdict::Rewritten);
                v
            };
            assert_eq!(run(&nat, &mut buf, &flows[0]), Verdict::Rewritten);
            let one = &flows[flows.len() / 2];
            group.bench_function(BenchmarkId::new("one_flow", n), |b| {
                b.iter(|| run(&nat, &mut buf, one))
            });
            // Each packet of another flow, in a shuffled order. A receive buffer is hot in the
            // cache, so the frame is not read from a different place each time: the flow's
            // addresses and ports (12 bytes) are patched into one buffer. Its checksums are
            // then stale, which translation does not look at (it updates them incrementally).
            let base = if inbound {
                &flows[0].from_host
            } else {
                &flows[0].out
            };
            let base: [u8; 128] = base.as_slice().try_into().unwrap();
            let mix: Vec<[u8; 12]> = shuffled(flows.len())
                .into_iter()
                .map(|i| {
                    let f = &flows[i];
                    let t = if inbound { &f.from_host } else { &f.out };
                    t[36..48].try_into().unwrap()
                })
                .collect();
            group.bench_function(BenchmarkId::new("mix", n), |b| {
                let mut i = 0;
                b.iter(|| {
                    i = if i + 1 == mix.len() { 0 } else { i + 1 };
                    buf.copy_from_slice(&base);
                    buf[36..48].copy_from_slice(&mix[i]);
                    if inbound {
                        nat.from_host(black_box(&mut buf), black_box(NOW))
                    } else {
                        nat.outbound(black_box(&mut buf), black_box(NOW))
                    }
                })
            });
        }
        group.finish();
    }
    let template = [0x11u8; 128];
    c.bench_function("frame_copy", |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&template));
            black_box(&mut buf);
        })
    });
}

/// Flow creation, in batches of fresh tables (so the table never fills).
fn setup(c: &mut Criterion) {
    let mut group = c.benchmark_group("setup");
    group.throughput(Throughput::Elements(1));
    let udp_frames: Vec<Vec<u8>> = (0..SETUP_BATCH)
        .map(|i| udp(container(i), outside(i), b"query"))
        .collect();
    group.bench_function("udp_flow", |b| {
        b.iter_custom(|iters| {
            time_new_flows(iters, &udp_frames, |nat, f| {
                let v = nat.outbound(black_box(f), NOW);
                debug_assert!(matches!(v, Verdict::UdpOut { new: true, .. }));
                black_box(v);
            })
        })
    });
    let syns: Vec<Vec<u8>> = (0..SETUP_BATCH)
        .map(|i| tcp(container(i), outside(i), SYN, b""))
        .collect();
    group.bench_function("tcp_connect", |b| {
        b.iter_custom(|iters| {
            time_new_flows(iters, &syns, |nat, f| {
                let Verdict::TcpConnect { flow, .. } = nat.outbound(black_box(f), NOW) else {
                    panic!("no connect")
                };
                nat.tcp_connected(flow, f, NOW).unwrap();
            })
        })
    });
    group.finish();
}

const SETUP_BATCH: u32 = 50_000;

/// Times `per_frame` over `iters` frames, each the first of a new flow: `frames` in turn, in a
/// fresh table for each batch of them (untimed: building the table and copying the frames).
fn time_new_flows(iters: u64, frames: &[Vec<u8>], per_frame: impl Fn(&Nat, &mut [u8])) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let k = left.min(frames.len() as u64) as usize;
        let nat = Nat::new(config(frames.len()));
        let mut batch = frames[..k].to_vec();
        let start = Instant::now();
        for f in &mut batch {
            per_frame(&nat, f);
        }
        total += start.elapsed();
        left -= k as u64;
    }
    total
}

/// Two threads (one per core) translating different flows of one table of 100 000: wall time
/// per packet per thread, i.e. what sharing the table costs.
fn contended(c: &mut Criterion) {
    let (nat, flows) = nat_with_flows(100_000);
    let picks = [&flows[1], &flows[50_001]];
    let mut group = c.benchmark_group("translate_out_2threads");
    group.throughput(Throughput::Elements(2));
    group.bench_function(BenchmarkId::from_parameter(100_000), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for f in picks {
                    let nat = &nat;
                    s.spawn(move || {
                        let mut buf = [0u8; 128];
                        for _ in 0..iters {
                            buf.copy_from_slice(&f.out);
                            black_box(nat.outbound(black_box(&mut buf), NOW));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    group.finish();
}

fn config_criterion() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config_criterion();
    targets = translate, setup, contended
}
criterion_main!(benches);
