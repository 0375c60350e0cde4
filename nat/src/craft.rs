//! Frames the NAT writes itself, for traffic that reaches a container from a host socket rather
//! than as a frame from the host kernel: UDP and ICMP echo replies, datagrams to published UDP
//! ports, ICMP errors and TCP resets. They are complete frames (zeroed virtio-net header, so no
//! offload: every checksum is computed in full) ready to be switched to the container.

use crate::checksum::{finish, pseudo_header, sum};
use crate::error::NatError;
use crate::wire::{
    ETHERTYPE_IPV4, ETH_OFF, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IP_OFF, TCP_ACK, TCP_RST,
    TCP_SYN, VNET_HDR_LEN,
};

/// Bytes a UDP frame adds to its payload (virtio-net, Ethernet, IPv4 and UDP headers).
pub const UDP_FRAME_OVERHEAD: usize = IP_OFF + 20 + 8;
/// Bytes an ICMP echo reply frame adds to its payload.
pub const ECHO_FRAME_OVERHEAD: usize = IP_OFF + 20 + 8;
/// Largest ICMP error frame (quoting an IPv4 header with 40 bytes of options and 8 bytes).
pub const ICMP_ERROR_FRAME_MAX: usize = IP_OFF + 20 + 8 + 60 + 8;
/// Length of a TCP reset frame.
pub const TCP_RST_FRAME_LEN: usize = IP_OFF + 20 + 20;
/// Longest frame [`tcp_syn_frame`] writes (an IPv4 packet of 1500 bytes).
pub const TCP_SYN_FRAME_MAX: usize = IP_OFF + 1500;

/// TTL of the packets the NAT writes, as if sent by a host one hop away.
const TTL: u8 = 64;

/// Addresses of a frame to write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ends {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: u32,
    pub dst: u32,
}

impl Ends {
    /// From `src` to `dst`, MACs `macs` (destination, then source).
    fn of(
        macs: ([u8; 6], [u8; 6]),
        src: std::net::SocketAddrV4,
        dst: std::net::SocketAddrV4,
    ) -> Ends {
        Ends {
            dst_mac: macs.0,
            src_mac: macs.1,
            src: u32::from(*src.ip()),
            dst: u32::from(*dst.ip()),
        }
    }
}

/// Writes the virtio-net, Ethernet and IPv4 headers of a packet with `l4_len` bytes of transport
/// data; returns the frame's total length.
fn ipv4(out: &mut [u8], e: &Ends, proto: u8, l4_len: usize) -> Result<usize, NatError> {
    let ip_len = 20 + l4_len;
    let Ok(ip_len16) = u16::try_from(ip_len) else {
        return Err(NatError::PayloadTooLarge(l4_len));
    };
    let total = IP_OFF + ip_len;
    if out.len() < total {
        return Err(NatError::BufferTooSmall {
            need: total,
            have: out.len(),
        });
    }
    out[..VNET_HDR_LEN].fill(0);
    out[ETH_OFF..ETH_OFF + 6].copy_from_slice(&e.dst_mac);
    out[ETH_OFF + 6..ETH_OFF + 12].copy_from_slice(&e.src_mac);
    out[ETH_OFF + 12..IP_OFF].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip = &mut out[IP_OFF..IP_OFF + 20];
    let [l0, l1] = ip_len16.to_be_bytes();
    // Version 4, IHL 5; DF with identification 0 (RFC 6864: atomic datagrams).
    ip[..12].copy_from_slice(&[0x45, 0, l0, l1, 0, 0, 0x40, 0, TTL, proto, 0, 0]);
    ip[12..16].copy_from_slice(&e.src.to_be_bytes());
    ip[16..20].copy_from_slice(&e.dst.to_be_bytes());
    let c = finish(sum(ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    Ok(total)
}

/// A UDP datagram `sport -> dport` carrying `payload`, with its full checksum.
pub(crate) fn udp(
    out: &mut [u8],
    e: &Ends,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Result<usize, NatError> {
    let l4_len = 8 + payload.len();
    let total = ipv4(out, e, IPPROTO_UDP, l4_len)?;
    let l4 = IP_OFF + 20;
    let udp = &mut out[l4..total];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    udp[6..8].fill(0);
    udp[8..].copy_from_slice(payload);
    let c = match finish(sum(
        udp,
        pseudo_header(e.src, e.dst, IPPROTO_UDP, l4_len as u16),
    )) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    Ok(total)
}

/// An ICMP message: type, code, the 4 bytes after the checksum (`rest`) and `body`.
pub(crate) fn icmp(
    out: &mut [u8],
    e: &Ends,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Result<usize, NatError> {
    let l4_len = 8 + body.len();
    let total = ipv4(out, e, IPPROTO_ICMP, l4_len)?;
    let msg = &mut out[IP_OFF + 20..total];
    msg[..8].copy_from_slice(&[kind, code, 0, 0, rest[0], rest[1], rest[2], rest[3]]);
    msg[8..].copy_from_slice(body);
    let c = finish(sum(msg, 0));
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    Ok(total)
}

/// A RST|ACK frame from `src` to `dst` (MACs `macs`: destination, then source) with sequence
/// number `seq` acknowledging `ack`, into `out` (at least [`TCP_RST_FRAME_LEN`] bytes); returns
/// its length. For the edge, which ends connections the NAT never sees a segment of.
pub fn tcp_reset_frame(
    out: &mut [u8],
    macs: ([u8; 6], [u8; 6]),
    src: std::net::SocketAddrV4,
    dst: std::net::SocketAddrV4,
    seq: u32,
    ack: u32,
) -> Result<usize, NatError> {
    let e = Ends::of(macs, src, dst);
    tcp_rst(out, &e, src.port(), dst.port(), seq, ack)
}

/// The SYN `src -> dst` with sequence number `seq` of a connection an edge opened itself from
/// the segment's headers alone, `ip_len` bytes long as an IPv4 packet (40 to 1500; its options
/// and data written as zeros), into `out` (at least [`TCP_SYN_FRAME_MAX`] bytes; MACs `macs`:
/// destination, then source); returns its length. For the edge to hand the NAT as the segment
/// it stands for (`Nat::outbound`, then `Nat::tcp_translated`), so that the flow is made, and
/// refused, as the real one's would be.
pub fn tcp_syn_frame(
    out: &mut [u8],
    macs: ([u8; 6], [u8; 6]),
    src: std::net::SocketAddrV4,
    dst: std::net::SocketAddrV4,
    seq: u32,
    ip_len: u16,
) -> Result<usize, NatError> {
    let e = Ends::of(macs, src, dst);
    let l4_len = usize::from(ip_len).clamp(40, 1500) - 20;
    let total = ipv4(out, &e, IPPROTO_TCP, l4_len)?;
    let tcp = &mut out[IP_OFF + 20..total];
    tcp.fill(0);
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    // Data offset 5, SYN, window 65535.
    tcp[12..16].copy_from_slice(&[0x50, TCP_SYN, 0xff, 0xff]);
    let c = finish(sum(
        tcp,
        pseudo_header(e.src, e.dst, IPPROTO_TCP, l4_len as u16),
    ));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    Ok(total)
}

/// A RST|ACK segment `sport -> dport` with sequence number `seq` acknowledging `ack`.
pub(crate) fn tcp_rst(
    out: &mut [u8],
    e: &Ends,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
) -> Result<usize, NatError> {
    let total = ipv4(out, e, IPPROTO_TCP, 20)?;
    let tcp = &mut out[IP_OFF + 20..total];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    // Data offset 5, RST|ACK, window 0, checksum 0 (for now), urgent pointer 0.
    tcp[12..20].copy_from_slice(&[0x50, TCP_RST | TCP_ACK, 0, 0, 0, 0, 0, 0]);
    let c = finish(sum(tcp, pseudo_header(e.src, e.dst, IPPROTO_TCP, 20)));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    Ok(total)
}
