//! One line of text per captured frame, for a capture printed on a terminal instead of written
//! to a file, in the manner of tcpdump's:
//!
//! ```text
//! IP 10.1.1.2.40000 > 10.1.1.3.80: tcp [S], length 0
//! IP 10.1.1.2 > 10.1.1.3: icmp echo request, id 7, seq 1, length 16
//! ARP who-has 10.1.1.3 tell 10.1.1.2
//! ```

use std::fmt::Write;

use crate::packet::{Net, Packet, ICMP, TCP, UDP};

fn mac(m: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = m;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// TCP's flags as tcpdump writes them: `S`, `F`, `R`, `P`, `U`, and `.` for ACK.
fn tcp_flags(flags: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
    ] {
        if flags & bit != 0 {
            s.push(c);
        }
    }
    if flags & 0x10 != 0 {
        s.push('.');
    }
    s
}

/// What `eth` (an Ethernet frame without its virtio-net header) is, in one line.
pub fn summary(eth: &[u8]) -> String {
    let Some(p) = Packet::parse(eth) else {
        return format!("truncated frame, length {}", eth.len());
    };
    let mut s = String::new();
    match &p.net {
        Net::Ipv4(ip) => {
            let l4 = ip.l4;
            match (ip.proto, ip.ports()) {
                (TCP, Some((sp, dp))) if l4.len() >= 20 => {
                    let offset = usize::from(l4[12] >> 4) * 4;
                    let payload = l4.len().saturating_sub(offset);
                    let _ = write!(
                        s,
                        "IP {}.{sp} > {}.{dp}: tcp [{}], length {payload}",
                        ip.src,
                        ip.dst,
                        tcp_flags(l4[13])
                    );
                }
                (UDP, Some((sp, dp))) => {
                    let payload = l4.len().saturating_sub(8);
                    let _ = write!(
                        s,
                        "IP {}.{sp} > {}.{dp}: udp, length {payload}",
                        ip.src, ip.dst
                    );
                }
                (ICMP, _) if l4.len() >= 8 => {
                    let (kind, code) = (l4[0], l4[1]);
                    let id = u16::from_be_bytes([l4[4], l4[5]]);
                    let seq = u16::from_be_bytes([l4[6], l4[7]]);
                    let what = match kind {
                        8 => format!("echo request, id {id}, seq {seq}"),
                        0 => format!("echo reply, id {id}, seq {seq}"),
                        3 => format!("destination unreachable, code {code}"),
                        11 => format!("time exceeded, code {code}"),
                        _ => format!("type {kind}, code {code}"),
                    };
                    let _ = write!(
                        s,
                        "IP {} > {}: icmp {what}, length {}",
                        ip.src,
                        ip.dst,
                        l4.len()
                    );
                }
                (proto, _) => {
                    let _ = write!(s, "IP {} > {}: protocol {proto}", ip.src, ip.dst);
                }
            }
        }
        Net::Arp(arp) => {
            let _ = match arp.op {
                1 => write!(s, "ARP who-has {} tell {}", arp.tpa, arp.spa),
                2 => write!(s, "ARP {} is-at {}", arp.spa, mac(&arp.sha)),
                op => write!(s, "ARP op {op} {} > {}", arp.spa, arp.tpa),
            };
        }
        Net::Other => {
            let _ = write!(
                s,
                "{} > {}, ethertype 0x{:04x}, length {}",
                mac(&p.src),
                mac(&p.dst),
                p.ethertype,
                eth.len()
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tests::{arp, echo, other, tcp, udp};

    #[test]
    fn one_line_per_frame() {
        let (a, b) = ([10, 1, 1, 2], [10, 1, 1, 3]);
        for (frame, line) in [
            (
                tcp(a, 40000, b, 80, 0x12, b""),
                "IP 10.1.1.2.40000 > 10.1.1.3.80: tcp [S.], length 0",
            ),
            (
                tcp(a, 40000, b, 80, 0x18, b"hello"),
                "IP 10.1.1.2.40000 > 10.1.1.3.80: tcp [P.], length 5",
            ),
            (
                udp(a, 5353, b, 53, b"query"),
                "IP 10.1.1.2.5353 > 10.1.1.3.53: udp, length 5",
            ),
            (
                echo(a, b, 8, 7, 1),
                "IP 10.1.1.2 > 10.1.1.3: icmp echo request, id 7, seq 1, length 16",
            ),
            (
                echo(b, a, 0, 7, 1),
                "IP 10.1.1.3 > 10.1.1.2: icmp echo reply, id 7, seq 1, length 16",
            ),
            (arp(1, a, b), "ARP who-has 10.1.1.3 tell 10.1.1.2"),
            (arp(2, a, b), "ARP 10.1.1.2 is-at 02:76:0a:01:01:02"),
            (
                other(0x86dd),
                "02:76:0a:01:01:02 > 02:76:0a:01:01:03, ethertype 0x86dd, length 60",
            ),
        ] {
            assert_eq!(summary(&frame), line);
        }
        assert_eq!(summary(&[0; 5]), "truncated frame, length 5");
    }
}
