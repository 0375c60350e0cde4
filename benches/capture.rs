//! What capturing costs the datapath (`vswitch_capture`): a port's idle check, which is all a
//! port pays while nobody captures it, and the work per frame of a captured port (filter, copy
//! with the virtio-net header stripped and a partial checksum completed, queueing), plus the
//! command line's pcapng writer. Figures are recorded in BENCHMARKS.md ("Capture").

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vswitch_capture::{pcapng, Direction, Filter, Mirror, Proto, Record, Session, SessionConfig};
use vswitch_switch::VNET_HDR_LEN;

/// `[virtio_net_hdr][Ethernet][IPv4][TCP]` of `len` bytes in all after the virtio header,
/// its TCP checksum partial (`NEEDS_CSUM`) as the kernel hands it over.
fn tcp_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN + len];
    f[0] = 1; // NEEDS_CSUM
    f[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
    f[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    let e = &mut f[VNET_HDR_LEN..];
    e[12..14].copy_from_slice(&[0x08, 0x00]);
    e[14] = 0x45;
    e[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    e[23] = 6;
    e[26..30].copy_from_slice(&[10, 1, 1, 2]);
    e[30..34].copy_from_slice(&[10, 1, 1, 3]);
    e[34..36].copy_from_slice(&40000u16.to_be_bytes());
    e[36..38].copy_from_slice(&5201u16.to_be_bytes());
    e[46] = 0x50;
    f
}

fn session(filter: Filter) -> Arc<Session> {
    Session::new(SessionConfig {
        queue_frames: 1 << 16,
        queue_bytes: 1 << 30,
        ..SessionConfig::new(filter)
    })
}

fn bench(c: &mut Criterion) {
    // The datapath's question, once per batch, of a port nobody captures.
    let idle = Mirror::default();
    c.bench_function("capture/idle_check", |b| b.iter(|| black_box(&idle).on()));

    for len in [64usize, 1514, 65536] {
        let frame = tcp_frame(len);
        let mirror = Mirror::default();
        let s = session(Filter::default());
        mirror.attach(s.clone());
        let mut g = c.benchmark_group("capture/captured");
        g.throughput(Throughput::Bytes(len as u64));
        // Offered and drained: the worker's share and the stream's dequeue.
        g.bench_function(format!("{len}B"), |b| {
            b.iter(|| {
                mirror.offer(1, Direction::In, 0, black_box(&frame));
                black_box(s.try_next())
            })
        });
        g.finish();
    }

    // A filter that keeps nothing of this traffic: parse and reject.
    let frame = tcp_frame(1514);
    let mirror = Mirror::default();
    mirror.attach(session(Filter {
        proto: Some(Proto::Udp),
        host: Some(Ipv4Addr::new(10, 9, 9, 9)),
        port: Some(53),
    }));
    c.bench_function("capture/filtered_out/1514B", |b| {
        b.iter(|| mirror.offer(1, Direction::In, 0, black_box(&frame)))
    });

    // The command line: one enhanced packet block.
    let record = Record::of_frame(1, Direction::In, 0, &tcp_frame(1514), 262144).unwrap();
    let mut w = pcapng::Writer::new(std::io::sink(), "bench").unwrap();
    let id = w.interface("vsw-1", "", 262144).unwrap();
    c.bench_function("capture/pcapng_write/1514B", |b| {
        b.iter(|| w.packet(id, black_box(&record)).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
