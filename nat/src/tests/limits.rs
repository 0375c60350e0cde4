//! What a container may not do to the others: take more than its share of the table, hold
//! connections half-open without bound, or have malformed packets translated into valid ones.

use super::*;
use crate::{NatDrop, Shares, Verdict};

const T0: u64 = 5_000_000;

fn small_shares() -> Nat {
    Nat::new(NatConfig {
        max_flows: 100,
        shares: Shares {
            flows: 10,
            half_open: 4,
        },
        ..config()
    })
}

#[test]
fn a_container_gets_its_share_and_no_more() {
    let nat = small_shares();
    for port in 0..10 {
        let mut f = udp_out(C1_MAC, sa(C1, 1000 + port), sa(OUT, 53), b"q");
        assert!(matches!(nat.outbound(&mut f, T0), Verdict::UdpOut { .. }));
    }
    let mut more = udp_out(C1_MAC, sa(C1, 2000), sa(OUT, 53), b"q");
    let (_, icmp) = reply_of(&nat.outbound(&mut more, T0));
    assert_eq!(&icmp.l4[..2], &[3, 13], "administratively prohibited");
    // Its flows already there keep working, and the others still get theirs.
    let mut again = udp_out(C1_MAC, sa(C1, 1000), sa(OUT, 53), b"q");
    assert!(matches!(
        nat.outbound(&mut again, T0),
        Verdict::UdpOut { new: false, .. }
    ));
    let mut other = udp_out(C2_MAC, sa(C2, 1000), sa(OUT, 53), b"q");
    assert!(matches!(
        nat.outbound(&mut other, T0),
        Verdict::UdpOut { new: true, .. }
    ));
    // Published flows are the outside's doing: they do not count against the share.
    assert!(nat
        .publish_tcp(50000, sa(C1, 80), sa(CLIENT, 1), T0)
        .is_ok());
    assert_eq!(nat.container_stats(C1).refused, 1);
    assert_eq!(nat.container_stats(C2).refused, 0);
    assert_eq!(nat.stats().container_limit, 1);
    // Flows that end give their place back.
    nat.expire(T0 + 31_000);
    let mut later = udp_out(C1_MAC, sa(C1, 2000), sa(OUT, 53), b"q");
    assert!(matches!(
        nat.outbound(&mut later, T0 + 31_000),
        Verdict::UdpOut { new: true, .. }
    ));
}

#[test]
fn connections_still_connecting_are_bounded_per_container() {
    let nat = small_shares();
    let mut flows = Vec::new();
    for port in 0..4 {
        let mut syn = tcp_out(C1_MAC, sa(C1, 5000 + port), sa(OUT, 80), SYN, 7, b"");
        let Verdict::TcpConnect { flow, .. } = nat.outbound(&mut syn, T0) else {
            panic!("connect {port}")
        };
        flows.push((flow, syn));
    }
    // A fifth SYN while four connects are in flight: reset at once.
    let mut syn = tcp_out(C1_MAC, sa(C1, 6000), sa(OUT, 80), SYN, 7, b"");
    let (_, rst) = reply_of(&nat.outbound(&mut syn, T0));
    assert_eq!((rst.tcp_flags(), rst.tcp_ack()), (RST | ACK, 8));
    assert_eq!(rst.dst_sa(), sa(C1, 6000));
    assert_eq!(nat.stats().half_open_limit, 1);
    // A connect that completes frees its place; the connection itself still counts as a flow.
    let (flow, mut held) = flows.pop().unwrap();
    nat.tcp_connected(flow, &mut held, T0).unwrap();
    let mut syn = tcp_out(C1_MAC, sa(C1, 6000), sa(OUT, 80), SYN, 7, b"");
    assert!(matches!(
        nat.outbound(&mut syn, T0),
        Verdict::TcpConnect { .. }
    ));
    // So does one that fails.
    let (flow, held) = flows.pop().unwrap();
    nat.tcp_reset_reply(flow, &held, &mut [0u8; 128]).unwrap();
    let mut syn = tcp_out(C1_MAC, sa(C1, 6001), sa(OUT, 80), SYN, 7, b"");
    assert!(matches!(
        nat.outbound(&mut syn, T0),
        Verdict::TcpConnect { .. }
    ));
    // A connect the edge translates in the kernel stays half-open until the edge sees the
    // remote end answer: no place for another SYN meanwhile.
    let (flow, mut held) = flows.pop().unwrap();
    let host = sa(Ipv4Addr::new(192, 0, 2, 1), 5002);
    nat.tcp_translated(flow, &mut held, host, T0).unwrap();
    let mut syn = tcp_out(C1_MAC, sa(C1, 6002), sa(OUT, 80), SYN, 7, b"");
    assert!(matches!(nat.outbound(&mut syn, T0), Verdict::Reply(_)));
    let answered = nat.translated_seen(flow, (SYN, SYN | ACK), (1, 40), (1, 40), T0);
    assert_eq!(answered, Some(crate::TcpState::SynSent));
    let mut syn = tcp_out(C1_MAC, sa(C1, 6003), sa(OUT, 80), SYN, 7, b"");
    assert!(matches!(
        nat.outbound(&mut syn, T0),
        Verdict::TcpConnect { .. }
    ));
    // Another container is not held back by this one's connects.
    let mut syn = tcp_out(C2_MAC, sa(C2, 5000), sa(OUT, 80), SYN, 7, b"");
    assert!(matches!(
        nat.outbound(&mut syn, T0),
        Verdict::TcpConnect { .. }
    ));
}

#[test]
fn a_wrong_header_checksum_is_never_translated() {
    let nat = nat();
    let mut f = udp_out(C1_MAC, sa(C1, 1), sa(OUT, 53), b"payload");
    f[34] ^= 0x55;
    assert_eq!(
        nat.outbound(&mut f, T0),
        Verdict::Drop(NatDrop::BadChecksum)
    );
    let mut syn = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), SYN, 1, b"");
    syn[35] ^= 1;
    assert_eq!(
        nat.outbound(&mut syn, T0),
        Verdict::Drop(NatDrop::BadChecksum)
    );
    assert_eq!(nat.stats().bad_checksum, 2);
    assert_eq!(nat.stats().flows, 0);
}

#[test]
fn a_total_length_past_the_frame_is_dropped() {
    let nat = nat();
    // 36 bytes of IPv4 claiming 1000.
    let mut f = udp_out(C1_MAC, sa(C1, 1), sa(OUT, 53), b"12345678");
    f[26..28].copy_from_slice(&1000u16.to_be_bytes());
    fix_ip_checksum(&mut f);
    assert_eq!(nat.outbound(&mut f, T0), Verdict::Drop(NatDrop::BadLength));
    assert_eq!(nat.stats().flows, 0);
}

#[test]
fn an_exhausted_ttl_is_answered_as_a_router_answers() {
    let nat = nat();
    for ttl in [0, 1] {
        let mut f = udp_out(C1_MAC, sa(C1, 33434), sa(OUT, 33434), b"traceroute");
        f[32] = ttl;
        fix_ip_checksum(&mut f);
        let (_, icmp) = reply_of(&nat.outbound(&mut f, T0));
        assert_eq!(
            (icmp.src, icmp.dst),
            (GW, C1),
            "from the gateway, the first hop"
        );
        assert_eq!(&icmp.l4[..2], &[11, 0], "time exceeded in transit");
        assert_eq!(&icmp.l4[8..36], &f[24..52], "quoting the packet");
    }
    let mut f = udp_out(C1_MAC, sa(C1, 1), sa(OUT, 53), b"q");
    f[32] = 2;
    fix_ip_checksum(&mut f);
    assert!(matches!(nat.outbound(&mut f, T0), Verdict::UdpOut { .. }));
    assert_eq!((nat.stats().ttl_exceeded, nat.stats().flows), (2, 1));
}

#[test]
fn tagged_frames_are_dropped() {
    let nat = nat();
    let plain = udp_out(C1_MAC, sa(C1, 1), sa(OUT, 53), b"q");
    for tpid in [[0x81, 0x00], [0x88, 0xa8]] {
        // The same datagram behind a VLAN tag.
        let mut tagged = plain[..22].to_vec();
        tagged.extend(tpid);
        tagged.extend([0x00, 0x05]);
        tagged.extend(&plain[22..]);
        assert_eq!(
            nat.outbound(&mut tagged, T0),
            Verdict::Drop(NatDrop::Tagged)
        );
    }
    assert_eq!((nat.stats().tagged, nat.stats().flows), (2, 0));
}

/// What an edge that lets the kernel open connections ahead of the NAT reads (`Nat::room`):
/// the least of the table's, the container's share's and its half-open share's room, moving as
/// flows come and go.
#[test]
fn the_room_a_container_has_left_follows_its_shares() {
    let nat = small_shares();
    assert_eq!(nat.room(C1), 4, "the half-open share is the smallest");
    let mut syns = Vec::new();
    for port in 0..3 {
        let mut syn = tcp_out(
            C1_MAC,
            sa(C1, 3000 + port),
            sa(OUT, 80),
            crate::wire::TCP_SYN,
            1,
            b"",
        );
        let Verdict::TcpConnect { flow, .. } = nat.outbound(&mut syn, T0) else {
            panic!()
        };
        syns.push(flow);
    }
    assert_eq!(nat.room(C1), 1);
    assert_eq!(nat.room(C2), 4, "another container's is its own");
    for port in 0..6 {
        let mut f = udp_out(C1_MAC, sa(C1, 1000 + port), sa(OUT, 53), b"q");
        assert!(matches!(nat.outbound(&mut f, T0), Verdict::UdpOut { .. }));
    }
    assert_eq!(nat.room(C1), 1, "nine of ten flows");
    let mut f = udp_out(C1_MAC, sa(C1, 2000), sa(OUT, 53), b"q");
    assert!(matches!(nat.outbound(&mut f, T0), Verdict::UdpOut { .. }));
    assert_eq!(nat.room(C1), 0, "its whole share");
    nat.remove_flow(syns[0]);
    assert_eq!(nat.room(C1), 1);
}

/// A SYN an edge rebuilt from an event (`tcp_syn_frame`) is the container's SYN to the NAT:
/// tracked as a translated connection the edge finds by its ends, or refused with a reset that
/// acknowledges the real SYN's sequence number.
#[test]
fn a_syn_rebuilt_from_its_headers_is_tracked_and_refused_as_the_real_one() {
    let nat = Nat::new(NatConfig {
        max_flows: 1,
        ..config()
    });
    let host = sa(Ipv4Addr::new(192, 0, 2, 1), 3000);
    let mut buf = [0u8; crate::TCP_SYN_FRAME_MAX];
    let (from, to) = (sa(C1, 3000), sa(OUT, 80));
    let len = crate::tcp_syn_frame(&mut buf, (GW_MAC, C1_MAC), from, to, 77, 60).unwrap();
    let syn = &mut buf[..len];
    let seen = check(syn);
    assert_eq!(
        (seen.src_sa(), seen.dst_sa(), seen.l4.len()),
        (from, to, 40)
    );
    let Verdict::TcpConnect { flow, .. } = nat.outbound(syn, T0) else {
        panic!()
    };
    nat.tcp_translated(flow, syn, host, T0).unwrap();
    assert_eq!(nat.translated_flow(from, to), Some(flow));
    assert_eq!(nat.translated_flow(sa(C1, 3001), to), None);

    // The table is full: the next is refused, the reset answering its SYN.
    let from = sa(C1, 3001);
    let len = crate::tcp_syn_frame(&mut buf, (GW_MAC, C1_MAC), from, to, 500, 40).unwrap();
    let (_, reset) = reply_of(&nat.outbound(&mut buf[..len], T0));
    assert_eq!((reset.src_sa(), reset.dst_sa()), (to, from));
    assert_eq!(
        &reset.l4[8..12],
        &501u32.to_be_bytes(),
        "acknowledges the SYN"
    );
    assert_eq!(reset.l4[13] & 0x14, 0x14, "RST|ACK");
}
