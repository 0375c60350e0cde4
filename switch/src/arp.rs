//! ARP frames the switch writes itself. The switch knows every station's (MAC, IPv4) from the
//! port directory, so it answers ARP requests on the stations' behalf (no broadcast reaches
//! every container) and announces stations with gratuitous ARP when they are plugged.

use std::net::Ipv4Addr;

use crate::frame::{
    Arp, ARP_HTYPE_ETHERNET, ARP_OP_REPLY, ARP_OP_REQUEST, ETHERTYPE_ARP, ETHERTYPE_IPV4,
};
use crate::mac::MacAddr;

/// Ethernet header + ARP, zero-padded to the 60-byte Ethernet minimum (without FCS).
pub(crate) const ARP_FRAME_LEN: usize = 60;

/// The reply `station` (mac, ip) gives to `req`, which arrived from Ethernet source
/// `req_src`. `None` if `buf` is shorter than [`ARP_FRAME_LEN`].
pub(crate) fn write_reply(
    buf: &mut [u8],
    station: (MacAddr, Ipv4Addr),
    req_src: MacAddr,
    req: &Arp,
) -> Option<usize> {
    let (mac, ip) = station;
    write(
        buf,
        req_src,
        mac,
        ARP_OP_REPLY,
        (mac, ip),
        (req.sha, req.spa),
    )
}

/// A gratuitous ARP request: broadcast, sender and target IP both `ip`, target MAC zero
/// (as Linux `arping -U` sends it). `None` if `buf` is shorter than [`ARP_FRAME_LEN`].
pub(crate) fn write_gratuitous(buf: &mut [u8], mac: MacAddr, ip: Ipv4Addr) -> Option<usize> {
    write(
        buf,
        MacAddr::BROADCAST,
        mac,
        ARP_OP_REQUEST,
        (mac, ip),
        (MacAddr::ZERO, ip),
    )
}

fn write(
    buf: &mut [u8],
    eth_dst: MacAddr,
    eth_src: MacAddr,
    op: u16,
    sender: (MacAddr, Ipv4Addr),
    target: (MacAddr, Ipv4Addr),
) -> Option<usize> {
    let out: &mut [u8; ARP_FRAME_LEN] = buf.get_mut(..ARP_FRAME_LEN)?.try_into().ok()?;
    out.fill(0);
    out[0..6].copy_from_slice(&eth_dst.0);
    out[6..12].copy_from_slice(&eth_src.0);
    out[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    out[14..16].copy_from_slice(&ARP_HTYPE_ETHERNET.to_be_bytes());
    out[16..18].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    out[18] = 6;
    out[19] = 4;
    out[20..22].copy_from_slice(&op.to_be_bytes());
    out[22..28].copy_from_slice(&sender.0 .0);
    out[28..32].copy_from_slice(&sender.1.octets());
    out[32..38].copy_from_slice(&target.0 .0);
    out[38..42].copy_from_slice(&target.1.octets());
    Some(ARP_FRAME_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_small_buffer_is_refused() {
        let mut buf = [0u8; ARP_FRAME_LEN - 1];
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        assert_eq!(
            write_gratuitous(&mut buf, mac, Ipv4Addr::new(10, 0, 0, 1)),
            None
        );
    }

    #[test]
    fn stale_bytes_are_cleared() {
        let mut buf = [0xaau8; 64];
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let len = write_gratuitous(&mut buf, mac, Ipv4Addr::new(10, 0, 0, 1)).unwrap();
        assert_eq!(len, 60);
        assert!(buf[42..60].iter().all(|&b| b == 0));
        assert_eq!(buf[60..], [0xaa; 4]);
    }
}
