//! What the translation reads of a frame and rewrites in it: a TCP segment's address and port
//! rewritten in place with its checksums, a frame's source MAC and VLAN tag, the quote an ICMP
//! error carries, and the room a frame written to a buffer needs.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::checksum::{self, Delta};
use crate::conntrack::QUOTE_LEN;
use crate::error::NatError;
use crate::wire::{
    rd16, rd32, wr16, wr32, Ipv4Frame, WireError, ETH_OFF, IP_OFF, TCP_ACK, TCP_CSUM_OFF, TCP_FIN,
    TCP_RST, TCP_SYN,
};

/// Which end of a packet a rewrite changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Src,
    Dst,
}

/// Rewrites the source or destination address and port of the TCP segment in `frame`, keeping
/// the IPv4 header checksum and the TCP checksum right (complete or partial).
pub(crate) fn rewrite_tcp(
    frame: &mut [u8],
    pkt: &Ipv4Frame,
    end: End,
    ip: u32,
    port: u16,
) -> Result<(), WireError> {
    let partial = pkt.partial_csum(TCP_CSUM_OFF)?;
    if pkt.l4 + 20 > pkt.end {
        return Err(WireError::Truncated);
    }
    let (ip_off, port_off) = match end {
        End::Src => (IP_OFF + 12, pkt.l4),
        End::Dst => (IP_OFF + 16, pkt.l4 + 2),
    };
    let (Some(old_ip), Some(old_port), Some(ip_csum), Some(tcp_csum)) = (
        rd32(frame, ip_off),
        rd16(frame, port_off),
        rd16(frame, IP_OFF + 10),
        rd16(frame, pkt.l4 + TCP_CSUM_OFF),
    ) else {
        return Err(WireError::Truncated);
    };
    let mut d = Delta::default();
    d.addr(old_ip, ip);
    wr32(frame, ip_off, ip);
    wr16(frame, port_off, port);
    wr16(frame, IP_OFF + 10, d.apply_full(ip_csum));
    let tcp_csum = if partial {
        // The port is in the data the offload will sum; only the pseudo-header changes.
        d.apply_partial(tcp_csum)
    } else {
        d.word(old_port, port);
        d.apply_full(tcp_csum)
    };
    wr16(frame, pkt.l4 + TCP_CSUM_OFF, tcp_csum);
    Ok(())
}

/// Whether an Ethernet frame carries a VLAN tag (802.1Q, or 802.1ad's outer tag).
pub(super) fn is_tagged(frame: &[u8]) -> bool {
    matches!(
        frame.get(ETH_OFF + 12..ETH_OFF + 14),
        Some([0x81, 0x00] | [0x88, 0xa8])
    )
}

/// Source MAC of a frame.
pub(super) fn src_mac(frame: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    if let Some(s) = frame.get(ETH_OFF + 6..ETH_OFF + 12) {
        m.copy_from_slice(s);
    }
    m
}

/// The IPv4 header (options dropped) and first 8 transport bytes of a container's packet, as
/// ICMP errors quote it.
pub(super) fn quote(frame: &[u8], pkt: &Ipv4Frame) -> [u8; QUOTE_LEN] {
    let mut q = [0u8; QUOTE_LEN];
    if let Some(h) = frame.get(IP_OFF..IP_OFF + 20) {
        q[..20].copy_from_slice(h);
    }
    let l4 = pkt.l4_bytes(frame);
    let n = l4.len().min(8);
    q[20..20 + n].copy_from_slice(&l4[..n]);
    if pkt.ihl > 20 {
        let total = u16::from_be_bytes([q[2], q[3]]).saturating_sub((pkt.ihl - 20) as u16);
        q[0] = 0x45;
        q[2..4].copy_from_slice(&total.to_be_bytes());
        q[10..12].fill(0);
        let c = checksum::finish(checksum::sum(&q[..20], 0));
        q[10..12].copy_from_slice(&c.to_be_bytes());
    }
    q
}

#[inline]
pub(super) fn is_new_syn(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
}

pub(super) fn sock(ip: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

/// Checks that `out` can hold a frame of `overhead` + `payload` bytes.
pub(super) fn check_room(out: &[u8], overhead: usize, payload: &[u8]) -> Result<(), NatError> {
    let need = overhead + payload.len();
    if need - VNET_ETH > usize::from(u16::MAX) {
        return Err(NatError::PayloadTooLarge(payload.len()));
    }
    if out.len() < need {
        return Err(NatError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    Ok(())
}

const VNET_ETH: usize = IP_OFF;
