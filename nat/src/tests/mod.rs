//! Scenario tests of the NAT with a controlled clock. Frames are built and checked here by code
//! independent of the crate's own (a naive checksum, explicit byte layouts), so a bug shared by
//! the translation and its verification cannot hide.

mod checksum_props;
mod limits;
mod robustness;
mod snapshot;
mod table;
mod tcp;
mod udp_icmp;

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::{Nat, NatConfig, Shares, Timeouts};

pub const GW: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 1);
pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const C1: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 2);
pub const C1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const C2: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);
pub const C2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
pub const OUT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const OUT2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
pub const RELAYS: [u16; 3] = [40000, 40001, 40002];

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;

pub fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

pub fn config() -> NatConfig {
    NatConfig {
        gateway: GW,
        gateway_mac: GW_MAC,
        subnet: Ipv4Addr::new(10, 1, 1, 0),
        prefix: 24,
        relay_ports: RELAYS.to_vec(),
        max_flows: 1000,
        shares: Shares::for_table(1000),
        timeouts: Timeouts::default(),
    }
}

pub fn nat() -> Nat {
    Nat::new(config())
}

/// xorshift64*: deterministic pseudo-random input for property tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Naive one's complement sum, byte pair by byte pair.
pub fn naive_sum(parts: &[&[u8]]) -> u32 {
    let data: Vec<u8> = parts.concat();
    let mut s: u32 = 0;
    let mut i = 0;
    while i < data.len() {
        let hi = u32::from(data[i]) << 8;
        let lo = data.get(i + 1).map_or(0, |&b| u32::from(b));
        s += hi | lo;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        i += 2;
    }
    s
}

pub fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend([0, proto]);
    p.extend((len as u16).to_be_bytes());
    p
}

/// How the transport checksum of a built frame is filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Csum {
    /// Complete checksum, no offload.
    Full,
    /// `NEEDS_CSUM`: the field holds the folded pseudo-header sum.
    Partial,
}

/// A frame `[vnet][eth][ipv4][l4]` with the IPv4 header checksum and (per `csum`) the transport
/// checksum at `csum_off` filled in (`None`: ICMP, summed without pseudo-header).
#[allow(clippy::too_many_arguments)]
pub fn frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    mut l4: Vec<u8>,
    csum_off: Option<usize>,
    csum: Csum,
) -> Vec<u8> {
    let mut f = vec![0u8; 10];
    if csum == Csum::Partial {
        f[0] = 1;
        f[6..8].copy_from_slice(&34u16.to_le_bytes());
        f[8..10].copy_from_slice(&(csum_off.unwrap_or(0) as u16).to_le_bytes());
    }
    f.extend(dst_mac);
    f.extend(src_mac);
    f.extend([0x08, 0x00]);
    let total = (20 + l4.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = !(naive_sum(&[&ip]) as u16);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    match csum_off {
        Some(off) => {
            l4[off..off + 2].fill(0);
            let ps = pseudo(src, dst, proto, l4.len());
            let c = match csum {
                Csum::Full => !(naive_sum(&[&ps, &l4]) as u16),
                Csum::Partial => naive_sum(&[&ps]) as u16,
            };
            l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }
        None => {
            l4[2..4].fill(0);
            let c = !(naive_sum(&[&l4]) as u16);
            l4[2..4].copy_from_slice(&c.to_be_bytes());
        }
    }
    f.extend(ip);
    f.extend(l4);
    f
}

/// Recomputes the IPv4 header checksum of a frame after a test changed its header.
pub fn fix_ip_checksum(f: &mut [u8]) {
    f[34..36].fill(0);
    let c = !(naive_sum(&[&f[24..44]]) as u16);
    f[34..36].copy_from_slice(&c.to_be_bytes());
}

/// The frame of a `Verdict::Reply`, checked like any frame the NAT writes.
pub fn reply_of(v: &crate::Verdict) -> (Vec<u8>, Seen) {
    match v {
        crate::Verdict::Reply(r) => (r.bytes().to_vec(), check(r.bytes())),
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// TCP header (no options) and payload.
pub fn tcp_l4(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend(sport.to_be_bytes());
    t.extend(dport.to_be_bytes());
    t.extend(seq.to_be_bytes());
    t.extend(ack.to_be_bytes());
    t.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend(payload);
    t
}

/// A TCP segment from a container (to the gateway MAC).
pub fn tcp_out(
    mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
    seq: u32,
    payload: &[u8],
) -> Vec<u8> {
    let l4 = tcp_l4(src.port(), dst.port(), flags, seq, 1, payload);
    frame(
        mac,
        GW_MAC,
        *src.ip(),
        *dst.ip(),
        6,
        l4,
        Some(16),
        Csum::Full,
    )
}

/// A TCP segment from the host (gateway) to a container.
pub fn tcp_host(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, csum: Csum) -> Vec<u8> {
    let l4 = tcp_l4(src.port(), dst.port(), flags, 7, 100, b"host data");
    frame(GW_MAC, C1_MAC, *src.ip(), *dst.ip(), 6, l4, Some(16), csum)
}

/// A UDP datagram from a container.
pub fn udp_out(mac: [u8; 6], src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend(src.port().to_be_bytes());
    l4.extend(dst.port().to_be_bytes());
    l4.extend(((8 + payload.len()) as u16).to_be_bytes());
    l4.extend([0, 0]);
    l4.extend(payload);
    frame(
        mac,
        GW_MAC,
        *src.ip(),
        *dst.ip(),
        17,
        l4,
        Some(6),
        Csum::Full,
    )
}

/// An ICMP echo request from a container.
pub fn echo_out(
    mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut l4 = vec![8, 0, 0, 0];
    l4.extend(ident.to_be_bytes());
    l4.extend(seq.to_be_bytes());
    l4.extend(payload);
    frame(mac, GW_MAC, src, dst, 1, l4, None, Csum::Full)
}

/// A frame parsed and checked by the tests' own code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub vnet: [u8; 10],
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub proto: u8,
    /// The whole transport part.
    pub l4: Vec<u8>,
}

impl Seen {
    pub fn sport(&self) -> u16 {
        u16::from_be_bytes([self.l4[0], self.l4[1]])
    }
    pub fn dport(&self) -> u16 {
        u16::from_be_bytes([self.l4[2], self.l4[3]])
    }
    pub fn src_sa(&self) -> SocketAddrV4 {
        sa(self.src, self.sport())
    }
    pub fn dst_sa(&self) -> SocketAddrV4 {
        sa(self.dst, self.dport())
    }
    pub fn tcp_flags(&self) -> u8 {
        self.l4[13]
    }
    pub fn tcp_seq(&self) -> u32 {
        u32::from_be_bytes(self.l4[4..8].try_into().unwrap())
    }
    pub fn tcp_ack(&self) -> u32 {
        u32::from_be_bytes(self.l4[8..12].try_into().unwrap())
    }
}

/// Parses a frame and checks its checksums: the IPv4 header's, and the transport's (finishing a
/// partial one first, as the offload would).
pub fn check(f: &[u8]) -> Seen {
    assert_eq!(&f[22..24], &[0x08, 0x00], "ethertype");
    let ip = &f[24..44];
    assert_eq!(ip[0], 0x45);
    assert_eq!(naive_sum(&[ip]), 0xffff, "IPv4 header checksum");
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(24 + total, f.len(), "IPv4 total length");
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let mut l4 = f[44..].to_vec();
    let proto = ip[9];
    match proto {
        6 | 17 => {
            let off = if proto == 6 { 16 } else { 6 };
            if f[0] & 1 != 0 {
                assert_eq!(u16::from_le_bytes([f[6], f[7]]), 34, "csum_start");
                assert_eq!(usize::from(u16::from_le_bytes([f[8], f[9]])), off);
                // The field holds the pseudo-header sum: finish over the segment.
                let c = !(naive_sum(&[&l4]) as u16);
                l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
            }
            let ps = pseudo(src, dst, proto, l4.len());
            assert_eq!(naive_sum(&[&ps, &l4]), 0xffff, "transport checksum");
        }
        1 => assert_eq!(naive_sum(&[&l4]), 0xffff, "ICMP checksum"),
        _ => {}
    }
    Seen {
        vnet: f[..10].try_into().unwrap(),
        dst_mac: f[10..16].try_into().unwrap(),
        src_mac: f[16..22].try_into().unwrap(),
        src,
        dst,
        ttl: ip[8],
        proto,
        l4,
    }
}
