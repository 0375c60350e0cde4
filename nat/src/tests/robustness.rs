//! No input bytes make the NAT panic: random frames of every length, and valid frames with
//! random bytes changed, through every entry point that takes a frame.

use super::*;

fn feed(nat: &Nat, f: &[u8], now: u64) {
    let mut out = [0u8; 256];
    let _ = nat.outbound(&mut f.to_vec(), now);
    let _ = nat.from_host(&mut f.to_vec(), now);
    let _ = nat.tcp_connected(1, &mut f.to_vec(), now);
    let _ = nat.tcp_reset_reply(1, f, &mut out);
    let _ = nat.icmp_unreachable_reply(1, f, 1, &mut out);
    let _ = nat.udp_reply(0, f, &mut out, now);
    let _ = nat.echo_reply(0, 0, f, &mut out, now);
}

#[test]
fn random_bytes_of_every_length() {
    let nat = nat();
    let mut rng = Rng::new(0xdead_beef);
    for len in 0..200 {
        for _ in 0..200 {
            let mut f = rng.bytes(len);
            feed(&nat, &f, rng.below(1 << 40));
            // Make the IPv4 path likelier: IPv4 ethertype and version.
            if len > 24 {
                f[22..24].copy_from_slice(&[0x08, 0x00]);
                f[24] = 0x45 + (rng.below(11) as u8);
                feed(&nat, &f, rng.below(1 << 40));
            }
        }
    }
}

#[test]
fn mutated_valid_frames() {
    let nat = Nat::new(NatConfig {
        relay_ports: vec![40000],
        max_flows: 50,
        shares: Shares::for_table(50),
        ..config()
    });
    let mut rng = Rng::new(42);
    let templates = [
        tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), SYN, 1, b"abc"),
        tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), ACK, 1, b"abc"),
        tcp_host(sa(GW, 40000), sa(C1, 5000), ACK, Csum::Partial),
        udp_out(C1_MAC, sa(C1, 53), sa(OUT, 53), b"query"),
        echo_out(C1_MAC, C1, OUT, 7, 7, b"ping"),
    ];
    for i in 0..100_000u64 {
        let mut f = templates[(i % 5) as usize].clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(f.len() as u64) as usize;
            f[at] = rng.next() as u8;
        }
        let cut = f.len() - rng.below(f.len() as u64 / 4) as usize;
        f.truncate(cut);
        let now = i * 100;
        match nat.outbound(&mut f.clone(), now) {
            crate::Verdict::TcpConnect { flow, .. } => {
                let _ = nat.tcp_connected(flow, &mut f.clone(), now);
            }
            crate::Verdict::UdpOut { flow, payload, .. } => {
                assert!(payload.end <= f.len());
                let _ = nat.udp_error_reply(flow, 3, 3, &mut [0u8; 200]);
            }
            crate::Verdict::EchoOut { payload, .. } => assert!(payload.end <= f.len()),
            _ => {}
        }
        let _ = nat.from_host(&mut f.clone(), now);
        if i % 1000 == 0 {
            nat.expire(now);
        }
    }
    nat.entries(u64::MAX);
    nat.expire(u64::MAX);
    assert_eq!(nat.stats().flows, 0);
}
