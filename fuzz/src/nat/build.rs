//! Frames for the NAT, `[virtio_net_hdr][Ethernet][IPv4][TCP|UDP|ICMP]`, built field by field
//! from the fuzzer's decisions: mostly well-formed (right lengths and checksums, complete or
//! partial as with the `NEEDS_CSUM` offload, GSO super-frames), sometimes with IP or TCP
//! options, fragments, odd total lengths, a broken checksum, a TTL that runs out, a VLAN tag or
//! a few bytes overwritten.

use std::net::Ipv4Addr;

use crate::check::{ones_sum, pseudo, ICMP, IP, TCP, UDP, VNET};
use crate::input::Input;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;

/// The virtio-net header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vnet {
    /// Nothing offloaded: complete checksums.
    Plain,
    /// `NEEDS_CSUM` pointing at the transport checksum, which holds the pseudo-header sum.
    Partial,
    /// `NEEDS_CSUM` pointing somewhere else.
    PartialElsewhere,
    /// A GSO super-frame (TCPv4 or UDP_L4 per the protocol), partial checksum, IPv4 total
    /// length 0 as some drivers leave it.
    GsoZeroLen,
    /// A GSO super-frame with its total length filled in.
    Gso,
    /// `DATA_VALID`.
    DataValid,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// Ports (TCP, UDP) or type/code and identifier (ICMP: `sport` = type << 8 | code,
    /// `dport` = identifier).
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub seq: u32,
    pub payload_len: usize,
    pub ip_opt_words: usize,
    pub tcp_opt_words: usize,
    pub frag: u16,
    pub ttl: u8,
    /// An 802.1Q tag (its TCI) before the EtherType.
    pub vlan: Option<u16>,
    pub vnet: Vnet,
    /// Added to the right IPv4 total length (wrapping), 0 for the right one.
    pub total_delta: i32,
    pub bad_ip_csum: bool,
    pub bad_l4_csum: bool,
    /// Ethernet padding after the packet.
    pub padding: usize,
}

impl Spec {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, sport: u16, dport: u16) -> Spec {
        Spec {
            src_mac: [2, 0, 0, 0, 0, 0],
            dst_mac: [2, 0, 0, 0, 0, 1],
            src,
            dst,
            proto,
            sport,
            dport,
            flags: ACK,
            seq: 1000,
            payload_len: 0,
            ip_opt_words: 0,
            tcp_opt_words: 0,
            frag: 0x4000,
            ttl: 64,
            vlan: None,
            vnet: Vnet::Plain,
            total_delta: 0,
            bad_ip_csum: false,
            bad_l4_csum: false,
            padding: 0,
        }
    }

    /// Decides the details: mostly an ordinary frame.
    pub fn vary(&mut self, inp: &mut Input) {
        let d = inp.u8();
        self.payload_len = usize::from(d & 15);
        if d & 0x80 == 0 {
            return;
        }
        self.payload_len = inp.pick(&[0, 1, 7, 100, 1460, 3000, 65000, 0]);
        self.vnet = inp.pick(&[
            Vnet::Plain,
            Vnet::Partial,
            Vnet::Partial,
            Vnet::PartialElsewhere,
            Vnet::GsoZeroLen,
            Vnet::Gso,
            Vnet::DataValid,
            Vnet::Plain,
        ]);
        if d & 1 != 0 {
            self.ip_opt_words = inp.pick(&[1, 2, 10]);
        }
        if d & 2 != 0 {
            self.tcp_opt_words = inp.pick(&[1, 3, 10]);
        }
        if d & 4 != 0 {
            self.frag = inp.pick(&[0, 0x2000, 0x0001, 0x3fff, 0x8000]);
        }
        if d & 8 != 0 {
            self.total_delta = inp.pick(&[-1, 1, 100, -20, -100_000, 65536]);
        }
        self.bad_ip_csum = d & 0x10 != 0 && inp.chance(64);
        self.bad_l4_csum = d & 0x20 != 0 && inp.chance(64);
        if d & 0x40 != 0 {
            self.padding = inp.pick(&[1, 6, 18]);
        }
        if inp.chance(24) {
            self.ttl = inp.pick(&[0, 1, 2, 255]);
        }
        if inp.chance(8) {
            self.vlan = Some(inp.u16());
        }
    }

    pub fn build(&self, inp: &mut Input) -> Vec<u8> {
        let payload = inp.filled(self.payload_len);
        let mut l4 = match self.proto {
            TCP => {
                let mut t = Vec::with_capacity(20 + payload.len());
                t.extend(self.sport.to_be_bytes());
                t.extend(self.dport.to_be_bytes());
                t.extend(self.seq.to_be_bytes());
                t.extend(7u32.to_be_bytes());
                let hlen = 5 + self.tcp_opt_words.min(10) as u8;
                t.extend([hlen << 4, self.flags, 0xff, 0xff, 0, 0, 0, 0]);
                t.resize(t.len() + 4 * self.tcp_opt_words.min(10), 1);
                t
            }
            UDP => {
                let mut u = Vec::with_capacity(8 + payload.len());
                u.extend(self.sport.to_be_bytes());
                u.extend(self.dport.to_be_bytes());
                u.extend(((8 + payload.len()) as u16).to_be_bytes());
                u.extend([0, 0]);
                u
            }
            ICMP => {
                let mut i = vec![(self.sport >> 8) as u8, self.sport as u8, 0, 0];
                i.extend(self.dport.to_be_bytes());
                i.extend((self.seq as u16).to_be_bytes());
                i
            }
            _ => Vec::new(),
        };
        l4.extend(&payload);
        let ihl = 20 + 4 * self.ip_opt_words.min(10);
        let gso = matches!(self.vnet, Vnet::Gso | Vnet::GsoZeroLen);
        let mut vnet = [0u8; VNET];
        let csum_field = match self.proto {
            TCP => Some(16),
            UDP => Some(6),
            _ => None,
        };
        let partial = !matches!(self.vnet, Vnet::Plain | Vnet::DataValid) && csum_field.is_some();
        if partial {
            vnet[0] = 1;
            let field = csum_field.unwrap_or(0) as u16;
            let (start, off) = match self.vnet {
                Vnet::PartialElsewhere => (14 + ihl as u16 + 2, field),
                _ => (14 + ihl as u16, field),
            };
            vnet[6..8].copy_from_slice(&start.to_le_bytes());
            vnet[8..10].copy_from_slice(&off.to_le_bytes());
        }
        if self.vnet == Vnet::DataValid {
            vnet[0] = 2;
        }
        if gso {
            vnet[1] = if self.proto == UDP { 5 } else { 1 };
            vnet[4..6].copy_from_slice(&1448u16.to_le_bytes());
            vnet[2..4].copy_from_slice(&((14 + ihl + 20) as u16).to_le_bytes());
        }
        // Transport checksum.
        let ps = pseudo(self.src, self.dst, self.proto, l4.len());
        match csum_field {
            Some(at) if l4.len() >= at + 2 => {
                let c = if partial {
                    ones_sum(&[&ps])
                } else {
                    match !ones_sum(&[&ps, &l4]) {
                        0 if self.proto == UDP => 0xffff,
                        c => c,
                    }
                };
                let c = if self.bad_l4_csum { c ^ 0x5a5a } else { c };
                l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
            }
            None if self.proto == ICMP && l4.len() >= 4 => {
                let c = !ones_sum(&[&l4]);
                let c = if self.bad_l4_csum { c ^ 0x5a5a } else { c };
                l4[2..4].copy_from_slice(&c.to_be_bytes());
            }
            _ => {}
        }
        let right = (ihl + l4.len()) as i64;
        let total = if self.vnet == Vnet::GsoZeroLen {
            0
        } else {
            (right + i64::from(self.total_delta)).rem_euclid(65536) as u16
        };
        let mut ip = Vec::with_capacity(ihl);
        ip.extend([0x40 | (ihl / 4) as u8, 0]);
        ip.extend(total.to_be_bytes());
        ip.extend([0x12, 0x34]);
        ip.extend(self.frag.to_be_bytes());
        ip.extend([self.ttl, self.proto, 0, 0]);
        ip.extend(self.src.octets());
        ip.extend(self.dst.octets());
        ip.resize(ihl, 1);
        let c = !ones_sum(&[&ip]);
        let c = if self.bad_ip_csum { c ^ 0xa5a5 } else { c };
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = Vec::with_capacity(IP + ihl + l4.len() + self.padding);
        f.extend(vnet);
        f.extend(self.dst_mac);
        f.extend(self.src_mac);
        if let Some(tci) = self.vlan {
            f.extend([0x81, 0x00]);
            f.extend(tci.to_be_bytes());
        }
        f.extend([0x08, 0x00]);
        f.extend(ip);
        f.extend(l4);
        f.resize(f.len() + self.padding, 0);
        f
    }
}

/// Overwrites a few bytes of a frame, or cuts it short: what the checked views are for.
pub fn mangle(f: &mut Vec<u8>, inp: &mut Input) {
    let d = inp.u8();
    if d < 0xe0 || f.is_empty() {
        return;
    }
    for _ in 0..=(d & 3) {
        let at = usize::from(inp.u16()) % f.len();
        f[at] = inp.u8();
    }
    if d & 4 != 0 {
        let cut = usize::from(inp.u16()) % (f.len() + 1);
        f.truncate(cut);
    }
}
