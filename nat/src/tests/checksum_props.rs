//! Incremental checksum updates against full recomputation, over many random segments.

use std::net::Ipv4Addr;

use super::*;
use crate::nat::frame::{rewrite_tcp, End};
use crate::wire::Ipv4Frame;

/// Normalizes the one's complement zero (0x0000 and 0xffff are the same sum).
fn norm(c: u16) -> u16 {
    if c == 0xffff {
        0
    } else {
        c
    }
}

fn random_segment(rng: &mut Rng, csum: Csum) -> (Ipv4Addr, Ipv4Addr, Vec<u8>) {
    let src = Ipv4Addr::from(rng.next() as u32);
    let dst = Ipv4Addr::from(rng.next() as u32);
    let len = rng.below(300) as usize;
    let payload = rng.bytes(len);
    let l4 = tcp_l4(
        rng.next() as u16,
        rng.next() as u16,
        rng.next() as u8,
        rng.next() as u32,
        rng.next() as u32,
        &payload,
    );
    let f = frame(C1_MAC, GW_MAC, src, dst, 6, l4, Some(16), csum);
    (src, dst, f)
}

/// Rewrites a random end of random segments with the crate's incremental update and compares
/// with the same segment built from scratch with the new address and port.
fn rewrite_matches_recompute(csum: Csum, seed: u64) {
    let mut rng = Rng::new(seed);
    for i in 0..5000 {
        let (src, dst, mut f) = random_segment(&mut rng, csum);
        let end = if rng.below(2) == 0 {
            End::Src
        } else {
            End::Dst
        };
        let new_ip = Ipv4Addr::from(rng.next() as u32);
        let new_port = rng.next() as u16;
        let pkt = Ipv4Frame::parse(&f).unwrap().unwrap();
        rewrite_tcp(&mut f, &pkt, end, new_ip.into(), new_port).unwrap();

        let mut l4 = f[44..].to_vec();
        let (s, d) = match end {
            End::Src => {
                l4[0..2].copy_from_slice(&new_port.to_be_bytes());
                (new_ip, dst)
            }
            End::Dst => {
                l4[2..4].copy_from_slice(&new_port.to_be_bytes());
                (src, new_ip)
            }
        };
        let want = frame(C1_MAC, GW_MAC, s, d, 6, l4, Some(16), csum);
        let field = |b: &[u8], off: usize| norm(u16::from_be_bytes([b[off], b[off + 1]]));
        assert_eq!(
            field(&f, 34),
            field(&want, 34),
            "#{i}: IPv4 header checksum"
        );
        assert_eq!(field(&f, 60), field(&want, 60), "#{i}: TCP checksum");
        let strip = |b: &[u8]| {
            let mut b = b.to_vec();
            b[34..36].fill(0);
            b[60..62].fill(0);
            b
        };
        assert_eq!(strip(&f), strip(&want), "#{i}: other bytes");
        check(&f);
    }
}

#[test]
fn full_checksum_rewrites_match_recompute() {
    rewrite_matches_recompute(Csum::Full, 0x1234_5678);
}

#[test]
fn partial_checksum_rewrites_match_recompute() {
    rewrite_matches_recompute(Csum::Partial, 0x9abc_def0);
}

/// A corrupt checksum stays exactly as wrong after translation (the receiver still drops it).
#[test]
fn corrupt_checksum_stays_corrupt() {
    let mut rng = Rng::new(77);
    for _ in 0..500 {
        let (_, _, mut f) = random_segment(&mut rng, Csum::Full);
        let good = u16::from_be_bytes([f[60], f[61]]);
        let bad = good.wrapping_add(1 + rng.below(0xfffd) as u16);
        f[60..62].copy_from_slice(&bad.to_be_bytes());
        let pkt = Ipv4Frame::parse(&f).unwrap().unwrap();
        rewrite_tcp(&mut f, &pkt, End::Dst, rng.next() as u32, rng.next() as u16).unwrap();
        let ip = &f[24..44];
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let ps = pseudo(src, dst, 6, f.len() - 44);
        assert_ne!(naive_sum(&[&ps, &f[44..]]), 0xffff);
    }
}

/// A `NEEDS_CSUM` frame whose offload does not point at the TCP checksum is not rewritten.
#[test]
fn foreign_checksum_offload_is_refused() {
    let (_, _, mut f) = random_segment(&mut Rng::new(5), Csum::Partial);
    f[8..10].copy_from_slice(&6u16.to_le_bytes());
    let before = f.clone();
    let pkt = Ipv4Frame::parse(&f).unwrap().unwrap();
    assert!(rewrite_tcp(&mut f, &pkt, End::Src, 1, 2).is_err());
    assert_eq!(f, before);
}
