//! Decoding the fuzzer's bytes into the switch's inputs: addresses, ports, policies, time, and
//! frames that mostly pass port security (the ingress port's own station) so that learning and
//! forwarding are reached, and sometimes forge any of its fields.

use std::net::Ipv4Addr;

use vswitch_switch::{Ipv4Prefix, MacAddr, PortId, PortInfo, PortPolicy};

use crate::input::Input;

/// Port numbers the fuzzer uses: four are registered at the start.
pub const PORT_IDS: [u16; 8] = [0, 1, 2, 3, 4, 5, 64, u16::MAX];

pub fn station(n: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, n])
}

pub fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

pub fn mac(inp: &mut Input) -> MacAddr {
    match inp.u8() % 16 {
        n @ 0..=7 => station(n),
        n @ 8..=11 => MacAddr([2, 0xaa, 0, 0, 0, n]),
        12 => MacAddr::BROADCAST,
        13 => MacAddr([1, 0, 0x5e, 0, 0, 1]),
        14 => MacAddr::ZERO,
        _ => {
            let mut m = [0u8; 6];
            let b = inp.bytes(6);
            m[..b.len()].copy_from_slice(b);
            MacAddr(m)
        }
    }
}

pub fn addr(inp: &mut Input) -> Ipv4Addr {
    match inp.u8() % 12 {
        n @ 0..=8 => ip(n),
        9 => ip(254),
        10 => Ipv4Addr::UNSPECIFIED,
        _ => Ipv4Addr::from(inp.u32()),
    }
}

pub fn port(inp: &mut Input) -> PortId {
    PortId(inp.pick(&PORT_IDS))
}

pub fn info(inp: &mut Input) -> PortInfo {
    PortInfo {
        mac: mac(inp),
        ip: (!inp.chance(40)).then(|| addr(inp)),
    }
}

fn prefix(inp: &mut Input) -> Ipv4Prefix {
    let (a, len) = match inp.u8() % 6 {
        0 => (ip(0), 29),
        1 => (ip(8), 30),
        2 => (Ipv4Addr::UNSPECIFIED, 0),
        3 => (Ipv4Addr::new(10, 0, 0, 0), 24),
        _ => (addr(inp), 32),
    };
    Ipv4Prefix::new(a, len).unwrap_or_else(|| Ipv4Prefix::host(a))
}

/// Mostly the default (checked) policy; else trusted, the uplink, isolated, or with lists.
pub fn policy(inp: &mut Input) -> PortPolicy {
    let mut p = match inp.u8() % 10 {
        0..=4 => PortPolicy::default(),
        5 => PortPolicy::trusted(),
        6 => PortPolicy::uplink(),
        7 => PortPolicy {
            isolated: true,
            ..PortPolicy::default()
        },
        _ => {
            let mut p = PortPolicy {
                trusted: inp.chance(32),
                isolated: inp.chance(64),
                ..PortPolicy::default()
            };
            for _ in 0..inp.below(3) {
                p.allow_macs.push(mac(inp));
            }
            for _ in 0..inp.below(3) {
                p.allow_ips.push(prefix(inp));
            }
            for _ in 0..inp.below(2) {
                p.allow_ethertypes
                    .push(inp.pick(&[0x86dd, 0x8100, 0x88cc, 0x0800]));
            }
            p
        }
    };
    if inp.chance(40) {
        p.max_macs = Some(inp.pick(&[0, 1, 2, 5]));
    }
    p
}

/// Advances (or, a little, rewinds) the clock.
pub fn tick(inp: &mut Input, now: u64) -> u64 {
    let b = inp.u8();
    let k = u64::from(b & 63);
    match b >> 6 {
        0 => now,
        1 => now.saturating_add(k),
        2 => now.saturating_add(k * 250),
        _ if b & 32 == 0 => now.saturating_add((k & 31) * 5000),
        _ => now.saturating_sub(k & 31),
    }
}

/// A MAC: the ingress port's station's (`own`) mostly, else any.
fn src_mac(inp: &mut Input, own: Option<MacAddr>) -> MacAddr {
    match own {
        Some(m) if inp.chance(200) => m,
        _ => mac(inp),
    }
}

fn src_addr(inp: &mut Input, own: Option<Ipv4Addr>) -> Ipv4Addr {
    match own {
        Some(a) if inp.chance(200) => a,
        _ => addr(inp),
    }
}

/// An Ethernet frame from the station `own` (the ingress port's, if it has one): mostly ARP
/// (the switch's own protocol), else anything with chosen addresses, IPv4 headers for the flow
/// hash, or raw bytes.
pub fn frame(inp: &mut Input, own: Option<&PortInfo>) -> Vec<u8> {
    let kind = inp.u8() % 8;
    if kind == 7 {
        let n = inp.below(80);
        return inp.bytes(n).to_vec();
    }
    let (own_mac, own_ip) = (own.map(|i| i.mac), own.and_then(|i| i.ip));
    let mut f = Vec::with_capacity(64);
    f.extend(mac(inp).0);
    f.extend(src_mac(inp, own_mac).0);
    match kind {
        0..=3 => {
            f.extend(0x0806u16.to_be_bytes());
            f.extend(inp.pick(&[1u16, 1, 1, 6]).to_be_bytes());
            f.extend(inp.pick(&[0x0800u16, 0x0800, 0x0800, 0x86dd]).to_be_bytes());
            f.push(inp.pick(&[6, 6, 6, 0]));
            f.push(inp.pick(&[4, 4, 4, 16]));
            f.extend(inp.pick(&[1u16, 1, 2, 3]).to_be_bytes());
            f.extend(src_mac(inp, own_mac).0);
            // Sometimes an RFC 5227 probe (sender 0.0.0.0).
            let spa = match inp.chance(24) {
                true => Ipv4Addr::UNSPECIFIED,
                false => src_addr(inp, own_ip),
            };
            f.extend(spa.octets());
            f.extend(mac(inp).0);
            f.extend(addr(inp).octets());
            f.resize(f.len() + inp.pick(&[0, 18, 0, 1]), 0);
            if inp.chance(24) {
                let n = inp.below(f.len() + 1);
                f.truncate(n);
            }
        }
        4..=5 => {
            f.extend(
                inp.pick(&[0x0800u16, 0x86dd, 0x8100, 0x0806, 0x88cc])
                    .to_be_bytes(),
            );
            let n = inp.u8().into();
            f.extend(inp.bytes(n));
        }
        _ => {
            f.extend(0x0800u16.to_be_bytes());
            let ihl = inp.pick(&[5u8, 5, 6, 15, 4, 0]);
            let proto = inp.pick(&[6u8, 17, 1, 47]);
            let frag = inp.pick(&[0u16, 0x4000, 0x2000, 0x0001]);
            f.extend([0x40 | ihl, 0, 0, 40]);
            f.extend([0, 0]);
            f.extend(frag.to_be_bytes());
            f.extend([64, proto, 0, 0]);
            f.extend(src_addr(inp, own_ip).octets());
            f.extend(addr(inp).octets());
            f.resize(f.len() + usize::from(ihl.saturating_sub(5)) * 4, 1);
            f.extend(inp.u32().to_be_bytes());
            let n = inp.below(32);
            f.extend(inp.bytes(n));
            if inp.chance(16) {
                let n = inp.below(f.len() + 1);
                f.truncate(n);
            }
        }
    }
    f
}
