//! ICMP echo as the edge's raw socket carries it: the request it sends for a container (an ICMP
//! message; the kernel adds the IPv4 header) and the reply it reads (an IPv4 packet, header
//! included). Replies go back to the container with [`Nat::echo_reply`](crate::Nat::echo_reply).

use crate::checksum::{finish, sum};
use crate::wire::{rd16, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IPPROTO_ICMP};

/// Writes an echo request with identifier `ident` into `out` (replacing its contents).
pub fn echo_request(ident: u16, seq: u16, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[ICMP_ECHO_REQUEST, 0, 0, 0]);
    out.extend_from_slice(&ident.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
    let csum = finish(sum(out, 0));
    out[2..4].copy_from_slice(&csum.to_be_bytes());
}

/// An echo reply read from the raw socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoReply<'a> {
    pub ident: u16,
    pub seq: u16,
    pub payload: &'a [u8],
}

impl EchoReply<'_> {
    /// The echo reply in an IPv4 `packet`; `None` for anything else (ICMP errors about UDP
    /// flows arrive on those flows' own sockets).
    pub fn parse(packet: &[u8]) -> Option<EchoReply<'_>> {
        let (&vihl, _) = packet.split_first()?;
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ihl < 20 || packet.get(9) != Some(&IPPROTO_ICMP) {
            return None;
        }
        let icmp = packet.get(ihl..)?;
        if icmp.len() < 8 || icmp[0] != ICMP_ECHO_REPLY || icmp[1] != 0 {
            return None;
        }
        Some(EchoReply {
            ident: rd16(icmp, 4)?,
            seq: rd16(icmp, 6)?,
            payload: &icmp[8..],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_a_valid_checksum() {
        let mut out = Vec::new();
        echo_request(0x1234, 7, b"abc", &mut out);
        assert_eq!(&out[..2], &[8, 0]);
        assert_eq!(&out[4..8], &[0x12, 0x34, 0, 7]);
        assert_eq!(&out[8..], b"abc");
        assert_eq!(finish(sum(&out, 0)), 0, "the checksum covers the message");
    }

    #[test]
    fn replies_are_told_from_everything_else() {
        let mut packet = vec![
            0x45, 0, 0, 31, 0, 0, 0, 0, 64, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        packet.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 7, b'x', b'y', b'z']);
        let reply = EchoReply::parse(&packet).unwrap();
        assert_eq!(
            (reply.ident, reply.seq, reply.payload),
            (0x1234, 7, &b"xyz"[..])
        );
        let mut error = packet.clone();
        error[20] = 3; // destination unreachable
        assert_eq!(EchoReply::parse(&error), None);
        let mut udp = packet.clone();
        udp[9] = 17;
        assert_eq!(EchoReply::parse(&udp), None);
        assert_eq!(EchoReply::parse(&packet[..27]), None);
        let mut bad_ihl = packet.clone();
        bad_ihl[0] = 0x4f; // 60-byte header: no room for the message
        assert_eq!(EchoReply::parse(&bad_ihl), None);
        assert_eq!(EchoReply::parse(&[]), None);
    }
}
