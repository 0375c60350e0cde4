//! UDP and ICMP echo through host sockets, published UDP ports, ICMP errors.

use super::*;
use crate::{NatDrop, NatError, Verdict};

const T0: u64 = 5_000_000;

#[test]
fn udp_out_and_reply() {
    let nat = nat();
    let mut q = udp_out(C1_MAC, sa(C1, 5353), sa(OUT, 53), b"query");
    let Verdict::UdpOut {
        flow,
        from,
        dst,
        payload,
        new: true,
        gso_size: 0,
    } = nat.outbound(&mut q, T0)
    else {
        panic!("new UDP flow")
    };
    assert_eq!((from, dst), (sa(C1, 5353), sa(OUT, 53)));
    assert_eq!(&q[payload], b"query");
    let mut q2 = udp_out(C1_MAC, sa(C1, 5353), sa(OUT, 53), b"again");
    assert_eq!(
        nat.outbound(&mut q2, T0 + 1),
        Verdict::UdpOut {
            flow,
            from,
            dst,
            payload: 52..57,
            new: false,
            gso_size: 0
        }
    );

    let mut out = [0u8; 200];
    assert!(matches!(
        nat.udp_reply(flow, b"answer", &mut out[..57], T0 + 2),
        Err(NatError::BufferTooSmall { need: 58, have: 57 })
    ));
    let n = nat.udp_reply(flow, b"answer", &mut out, T0 + 2).unwrap();
    assert_eq!(n, crate::UDP_FRAME_OVERHEAD + 6);
    let r = check(&out[..n]);
    assert_eq!(r.vnet, [0; 10]);
    assert_eq!((r.dst_mac, r.src_mac), (C1_MAC, GW_MAC));
    assert_eq!((r.src_sa(), r.dst_sa()), (sa(OUT, 53), sa(C1, 5353)));
    assert_eq!((r.ttl, r.proto), (64, 17));
    assert_eq!(&r.l4[4..6], &14u16.to_be_bytes());
    assert_eq!(&r.l4[8..], b"answer");

    let e = &nat.entries(T0 + 2)[0];
    assert_eq!(
        (e.inside, e.outside, e.state),
        (sa(C1, 5353), sa(OUT, 53), "REPLIED")
    );
    assert_eq!((e.packets_out, e.packets_in), (2, 1));
    assert_eq!((e.bytes_out, e.bytes_in), (2 * 33, 34));
    assert_eq!(
        nat.udp_reply(flow + 1, b"x", &mut out, T0),
        Err(NatError::UnknownFlow(flow + 1))
    );
}

#[test]
fn udp_timeouts_unreplied_and_replied() {
    let nat = nat();
    let mut a = udp_out(C1_MAC, sa(C1, 1000), sa(OUT, 53), b"a");
    let mut b = udp_out(C1_MAC, sa(C1, 1001), sa(OUT, 53), b"b");
    let Verdict::UdpOut { flow: fa, .. } = nat.outbound(&mut a, T0) else {
        panic!()
    };
    let Verdict::UdpOut { flow: fb, .. } = nat.outbound(&mut b, T0) else {
        panic!()
    };
    nat.udp_reply(fb, b"r", &mut [0u8; 100], T0 + 10_000)
        .unwrap();
    assert_eq!(nat.entries(T0).len(), 2);
    assert!(nat.expire(T0 + 29_999).is_empty());
    assert_eq!(nat.expire(T0 + 30_000)[0].flow, fa);
    assert!(nat.expire(T0 + 10_000 + 119_999).is_empty());
    assert_eq!(nat.expire(T0 + 10_000 + 120_000)[0].flow, fb);
    assert_eq!(nat.stats().expired, 2);
    assert_eq!(nat.stats().flows, 0);
}

#[test]
fn expired_udp_flow_found_by_a_packet_is_replaced_and_reported() {
    let nat = nat();
    let mut a = udp_out(C1_MAC, sa(C1, 1000), sa(OUT, 53), b"a");
    let Verdict::UdpOut { flow: old, .. } = nat.outbound(&mut a.clone(), T0) else {
        panic!()
    };
    let Verdict::UdpOut { flow, new, .. } = nat.outbound(&mut a, T0 + 30_000) else {
        panic!()
    };
    assert!(new);
    assert_ne!(flow, old);
    assert_eq!(
        nat.udp_reply(old, b"late", &mut [0u8; 100], T0 + 30_000),
        Err(NatError::UnknownFlow(old))
    );
    let gone = nat.expire(T0 + 30_001);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].flow, old);
}

#[test]
fn udp_gso_super_frame() {
    let nat = nat();
    let payload = vec![9u8; 3000];
    let mut f = udp_out(C1_MAC, sa(C1, 4433), sa(OUT, 443), &payload);
    f[1] = 5; // VIRTIO_NET_HDR_GSO_UDP_L4
    f[4..6].copy_from_slice(&1200u16.to_le_bytes());
    f[48..50].copy_from_slice(&1208u16.to_be_bytes()); // UDP length of one segment
    let Verdict::UdpOut {
        payload: p,
        gso_size,
        ..
    } = nat.outbound(&mut f, T0)
    else {
        panic!()
    };
    assert_eq!(gso_size, 1200);
    assert_eq!(p, 52..52 + 3000);
}

#[test]
fn udp_length_must_fit() {
    let nat = nat();
    let mut f = udp_out(C1_MAC, sa(C1, 1), sa(OUT, 2), b"abc");
    f[48..50].copy_from_slice(&100u16.to_be_bytes());
    assert_eq!(nat.outbound(&mut f, T0), Verdict::Drop(NatDrop::Malformed));
    assert_eq!(nat.stats().malformed, 1);
}

#[test]
fn published_udp_both_ways() {
    let nat = nat();
    let mut out = [0u8; 200];
    let n = nat
        .publish_udp_in(
            7,
            sa(C1, 53),
            sa(CLIENT, 7000),
            C1_MAC,
            b"ask",
            &mut out,
            T0,
        )
        .unwrap();
    let r = check(&out[..n]);
    assert_eq!((r.dst_mac, r.src_mac), (C1_MAC, GW_MAC));
    assert_eq!((r.src_sa(), r.dst_sa()), (sa(CLIENT, 7000), sa(C1, 53)));
    assert_eq!(&r.l4[8..], b"ask");
    let e = &nat.entries(T0)[0];
    assert!(e.published);
    assert_eq!(e.state, "UNREPLIED");

    let mut reply = udp_out(C1_MAC, sa(C1, 53), sa(CLIENT, 7000), b"tell");
    let before = reply.clone();
    assert_eq!(
        nat.outbound(&mut reply, T0 + 1),
        Verdict::UdpToClient {
            publish_id: 7,
            client: sa(CLIENT, 7000),
            payload: 52..56,
            gso_size: 0
        }
    );
    assert_eq!(reply, before);
    assert_eq!(nat.entries(T0 + 1)[0].state, "REPLIED");
    // A second datagram from the client reuses the flow.
    nat.publish_udp_in(
        7,
        sa(C1, 53),
        sa(CLIENT, 7000),
        C1_MAC,
        b"more",
        &mut out,
        T0 + 2,
    )
    .unwrap();
    assert_eq!(nat.entries(T0 + 2).len(), 1);
    assert_eq!(nat.stats().created, 1);
    // Expires like UDP.
    assert!(nat.expire(T0 + 2 + 119_999).is_empty());
    assert_eq!(nat.expire(T0 + 2 + 120_000).len(), 1);
}

#[test]
fn echo_identifiers_are_translated_per_flow() {
    let nat = nat();
    let mut p1 = echo_out(C1_MAC, C1, OUT, 0x1234, 1, b"ping-one");
    let Verdict::EchoOut {
        flow: f1,
        dst,
        ident: i1,
        seq: 1,
        payload,
    } = nat.outbound(&mut p1, T0)
    else {
        panic!()
    };
    assert_eq!(dst, OUT);
    assert_eq!(&p1[payload], b"ping-one");
    // Same identifier from another container, and to another destination: other identifiers.
    let mut p2 = echo_out(C2_MAC, C2, OUT, 0x1234, 1, b"ping-two");
    let Verdict::EchoOut {
        flow: f2,
        ident: i2,
        ..
    } = nat.outbound(&mut p2, T0)
    else {
        panic!()
    };
    let mut p3 = echo_out(C1_MAC, C1, OUT2, 0x1234, 1, b"x");
    let Verdict::EchoOut { ident: i3, .. } = nat.outbound(&mut p3, T0) else {
        panic!()
    };
    assert!(f1 != f2 && i1 != i2 && i1 != i3 && i2 != i3);
    // The next request of the first flow keeps its identifier.
    let mut p1b = echo_out(C1_MAC, C1, OUT, 0x1234, 2, b"ping-one");
    let Verdict::EchoOut {
        flow, ident, seq, ..
    } = nat.outbound(&mut p1b, T0 + 1000)
    else {
        panic!()
    };
    assert_eq!((flow, ident, seq), (f1, i1, 2));

    let mut out = [0u8; 200];
    let n = nat
        .echo_reply(i2, 1, b"ping-two", &mut out, T0 + 5)
        .unwrap();
    let r = check(&out[..n]);
    assert_eq!((r.src, r.dst, r.dst_mac), (OUT, C2, C2_MAC));
    assert_eq!(&r.l4[..2], &[0, 0], "echo reply");
    assert_eq!(&r.l4[4..8], &[0x12, 0x34, 0, 1]);
    assert_eq!(&r.l4[8..], b"ping-two");
    let unknown = (0..=u16::MAX).find(|i| ![i1, i2, i3].contains(i)).unwrap();
    assert_eq!(
        nat.echo_reply(unknown, 1, b"", &mut out, T0),
        Err(NatError::UnknownEchoIdent(unknown))
    );

    let e = nat.entries(T0 + 5);
    let e2 = e.iter().find(|e| e.flow == f2).unwrap();
    assert_eq!((e2.inside, e2.outside), (sa(C2, 0x1234), sa(OUT, i2)));
    assert_eq!(e2.state, "REPLIED");
    // ICMP flows live 30 s after their last packet.
    assert_eq!(nat.expire(T0 + 30_000).len(), 1);
    assert_eq!(nat.expire(T0 + 30_004).len(), 0);
    assert_eq!(nat.expire(T0 + 31_000).len(), 2);
    assert!(nat.echo_reply(i1, 1, b"", &mut out, T0 + 31_000).is_err());
}

#[test]
fn icmp_errors_quote_the_containers_datagram() {
    let nat = nat();
    let mut q = udp_out(C1_MAC, sa(C1, 5353), sa(OUT, 9999), b"hello?");
    let Verdict::UdpOut { flow, .. } = nat.outbound(&mut q.clone(), T0) else {
        panic!()
    };
    let mut out = [0u8; crate::ICMP_ERROR_FRAME_MAX];
    let n = nat.udp_error_reply(flow, 3, 3, &mut out).unwrap();
    let r = check(&out[..n]);
    assert_eq!((r.src, r.dst, r.proto, r.dst_mac), (OUT, C1, 1, C1_MAC));
    assert_eq!(&r.l4[..2], &[3, 3]);
    assert_eq!(&r.l4[8..], &q[24..24 + 28]);

    // Options in the container's header are left out of the quote, which stays consistent.
    let nat = super::nat();
    let l4 = q.split_off(44);
    let mut ip = q[24..44].to_vec();
    ip[0] = 0x46;
    let total = (24 + l4.len()) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend([1, 1, 1, 0]); // NOP NOP NOP EOL
    ip[10..12].fill(0);
    let c = !(naive_sum(&[&ip]) as u16);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = q[..24].to_vec();
    f.extend(&ip);
    f.extend(&l4);
    let Verdict::UdpOut { flow, .. } = nat.outbound(&mut f, T0) else {
        panic!()
    };
    let n = nat.udp_error_reply(flow, 3, 3, &mut out).unwrap();
    let r = check(&out[..n]);
    let quoted = &r.l4[8..];
    assert_eq!(quoted[0], 0x45);
    assert_eq!(naive_sum(&[&quoted[..20]]), 0xffff);
    assert_eq!(&quoted[12..20], &ip[12..20]);
    assert_eq!(&quoted[20..], &l4[..8]);

    // Echo flows too; TCP flows have no stored quote.
    let mut p = echo_out(C1_MAC, C1, OUT, 1, 1, b"x");
    let Verdict::EchoOut { flow, .. } = nat.outbound(&mut p, T0) else {
        panic!()
    };
    let n = nat.udp_error_reply(flow, 11, 0, &mut out).unwrap();
    assert_eq!(&check(&out[..n]).l4[8..], &p[24..52]);
    let fid = nat
        .publish_tcp(50000, sa(C1, 80), sa(CLIENT, 1), T0)
        .unwrap();
    assert_eq!(
        nat.udp_error_reply(fid, 3, 3, &mut out),
        Err(NatError::WrongFlowKind(fid))
    );
}

/// What an edge that carries a UDP flow or an echo itself needs of it, and what it carried
/// counting as the flow's own datagrams would: the flow replied, alive for longer.
#[test]
fn a_datagram_flow_carried_by_the_edge_is_described_and_kept_alive_by_its_reports() {
    let nat = nat();
    let mut q = udp_out(C1_MAC, sa(C1, 5353), sa(OUT, 53), b"query");
    let Verdict::UdpOut { flow, .. } = nat.outbound(&mut q, T0) else {
        panic!("new UDP flow")
    };
    let d = nat.datagram_flow(flow).expect("a UDP flow");
    assert_eq!(
        (d.proto, d.container, d.remote, d.host_ident, d.mac),
        (crate::Proto::Udp, sa(C1, 5353), sa(OUT, 53), 0, C1_MAC)
    );
    let mut p = echo_out(C2_MAC, C2, OUT, 0x1234, 1, b"ping");
    let Verdict::EchoOut {
        flow: echo, ident, ..
    } = nat.outbound(&mut p, T0)
    else {
        panic!("new echo")
    };
    let d = nat.datagram_flow(echo).expect("an echo");
    assert_eq!(
        (d.proto, d.container, d.remote, d.host_ident, d.mac),
        (
            crate::Proto::Icmp,
            sa(C2, 0x1234),
            sa(OUT, 0),
            ident,
            C2_MAC
        )
    );
    let mut syn = tcp_out(C1_MAC, sa(C1, 4000), sa(OUT, 80), 0x02, 1, b"");
    let Verdict::TcpConnect { flow: tcp, .. } = nat.outbound(&mut syn, T0) else {
        panic!("new TCP flow")
    };
    assert_eq!(nat.datagram_flow(tcp), None, "not a datagram flow");
    assert_eq!(nat.datagram_flow(flow + 1000), None, "no flow");

    // Unreplied: 30 s. What the edge carried both ways, reported 20 s later: replied, two
    // minutes from then, the datagrams counted.
    let view = |f: crate::FlowId, now: u64| {
        let all = nat.entries(now);
        let e = all.iter().find(|e| e.flow == f).cloned();
        e.map(|e| (e.state, e.timeout_ms, e.packets_out, e.packets_in))
    };
    assert_eq!(view(flow, T0), Some(("UNREPLIED", 30_000, 1, 0)));
    assert!(nat.offloaded(flow, (3, 99), (2, 66), T0 + 20_000));
    assert_eq!(view(flow, T0 + 20_000), Some(("REPLIED", 120_000, 4, 2)));
    let expired = |now: u64| nat.expire(now).iter().any(|e| e.flow == flow);
    assert!(!expired(T0 + 139_999));
    assert!(expired(T0 + 140_001));
    assert!(!nat.offloaded(flow, (1, 33), (0, 0), T0 + 140_002), "gone");
}
