//! The hot path's cost with and without port security, measured as the minimum over many short
//! trials rather than criterion's mean: on a shared 2-core machine the mean moves 2-3x with
//! the load, the minimum by a few hundredths of a nanosecond (BENCHMARKS.md, "Port security").
//!
//! `cargo bench --bench switch_min`: 400 trials of 200,000 frames, station 1 -> station 2 of a
//! 64-port switch, for a trusted port (no checks), a checked one (the default) and a checked
//! one while another port is isolated. Without `--bench` (as `cargo test` runs it): one short
//! trial each, to check that it runs.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use vswitch_switch::{Action, Config, MacAddr, PortId, PortInfo, PortPolicy, Switch};

fn ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 | n)
}

fn station(p: u16) -> MacAddr {
    MacAddr::from_ipv4(ip(p.into()))
}

/// An IPv4 frame from `src`'s own address.
fn frame(dst: MacAddr, src: MacAddr) -> [u8; 64] {
    let mut f = [0u8; 64];
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[26..30].copy_from_slice(&src.0[2..]);
    f
}

/// ns per frame: (minimum, 10th percentile, median) over `trials` trials of `n` frames.
fn measure(policy: impl Fn(u16) -> PortPolicy, trials: usize, n: u32) -> (f64, f64, f64) {
    let sw = Switch::new(Config::default());
    for p in 1..=64u16 {
        let info = PortInfo {
            mac: station(p),
            ip: Some(ip(p.into())),
        };
        sw.add_port_with_policy(PortId(p), info, policy(p));
    }
    let now = 1_000_000;
    let mut reply = [0u8; 64];
    for p in [1, 2] {
        let f = frame(MacAddr::BROADCAST, station(p));
        sw.process(PortId(p), &f, false, now, &mut reply);
    }
    let f = frame(station(2), station(1));
    let first = sw.process(PortId(1), &f, false, now, &mut reply);
    assert_eq!(first, Action::Forward(PortId(2)));
    let mut per: Vec<f64> = (0..trials)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                black_box(sw.process(
                    black_box(PortId(1)),
                    black_box(&f),
                    false,
                    black_box(now),
                    &mut reply,
                ));
            }
            t.elapsed().as_secs_f64() * 1e9 / f64::from(n)
        })
        .collect();
    per.sort_by(f64::total_cmp);
    (per[0], per[per.len() / 10], per[per.len() / 2])
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (trials, n) = if bench { (400, 200_000) } else { (1, 1_000) };
    let cases: [(&str, &dyn Fn(u16) -> PortPolicy); 3] = [
        ("trusted", &|_| PortPolicy::trusted()),
        ("checked", &|_| PortPolicy::default()),
        ("checked, port 64 isolated", &|p| PortPolicy {
            isolated: p == 64,
            ..PortPolicy::default()
        }),
    ];
    for (what, policy) in cases {
        let (min, p10, median) = measure(policy, trials, n);
        println!("{what:28} min {min:6.2}  p10 {p10:6.2}  median {median:6.2} ns/frame");
    }
}
