//! The bounded table, counters, what is not NAT traffic, sharing between threads.

use super::*;
use crate::{ContainerStats, Expired, NatDrop, Proto, Verdict};

const T0: u64 = 9_000_000;

#[test]
fn full_table_refuses_new_flows_and_keeps_old_ones() {
    let nat = Nat::new(NatConfig {
        max_flows: 4,
        shares: Shares::for_table(4),
        ..config()
    });
    // One established TCP flow and three UDP flows.
    let mut syn = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), SYN, 1, b"");
    let Verdict::TcpConnect { flow, .. } = nat.outbound(&mut syn, T0) else {
        panic!()
    };
    nat.tcp_connected(flow, &mut syn, T0).unwrap();
    let relay = check(&syn).dport();
    for p in 0..3 {
        let mut f = udp_out(C1_MAC, sa(C1, 6000 + p), sa(OUT, 53), b"q");
        assert!(matches!(
            nat.outbound(&mut f, T0),
            Verdict::UdpOut { new: true, .. }
        ));
    }
    assert_eq!(nat.stats().flows, 4);

    // New flows are refused the way a router refuses: the application fails at once.
    let mut f = udp_out(C1_MAC, sa(C1, 7000), sa(OUT, 53), b"q");
    let (_, icmp) = reply_of(&nat.outbound(&mut f, T0));
    assert_eq!((icmp.src, icmp.dst, icmp.proto), (GW, C1, 1));
    assert_eq!(&icmp.l4[..2], &[3, 13], "administratively prohibited");
    assert_eq!(&icmp.l4[8..36], &f[24..52], "quoting the datagram");
    let mut s2 = tcp_out(C1_MAC, sa(C1, 5001), sa(OUT, 80), SYN, 1, b"");
    let (_, rst) = reply_of(&nat.outbound(&mut s2, T0));
    assert_eq!((rst.src_sa(), rst.dst_sa()), (sa(OUT, 80), sa(C1, 5001)));
    assert_eq!((rst.tcp_flags(), rst.tcp_ack()), (RST | ACK, 2));
    let mut p = echo_out(C1_MAC, C1, OUT, 1, 1, b"");
    let (_, icmp) = reply_of(&nat.outbound(&mut p, T0));
    assert_eq!(&icmp.l4[..2], &[3, 13]);
    assert_eq!(
        nat.publish_tcp(50000, sa(C1, 80), sa(CLIENT, 1), T0),
        Err(crate::NatError::TableFull)
    );
    assert_eq!(nat.stats().table_full, 4);
    assert_eq!(
        nat.container_stats(C1).refused,
        3,
        "published flows are not the container's"
    );

    // Existing flows are untouched.
    let mut d = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), ACK, 2, b"data");
    assert_eq!(nat.outbound(&mut d, T0), Verdict::Rewritten);
    let mut h = tcp_host(sa(GW, relay), sa(C1, 5000), ACK, Csum::Full);
    assert_eq!(nat.from_host(&mut h, T0), Verdict::Rewritten);
    let mut f = udp_out(C1_MAC, sa(C1, 6000), sa(OUT, 53), b"q");
    assert!(matches!(
        nat.outbound(&mut f, T0),
        Verdict::UdpOut { new: false, .. }
    ));

    // Once the UDP flows expire there is room again.
    assert_eq!(nat.expire(T0 + 30_000).len(), 3);
    let mut f = udp_out(C1_MAC, sa(C1, 7000), sa(OUT, 53), b"q");
    assert!(matches!(
        nat.outbound(&mut f, T0 + 30_000),
        Verdict::UdpOut { new: true, .. }
    ));
}

#[test]
fn per_container_counters_survive_their_flows() {
    let nat = nat();
    let mut q = udp_out(C1_MAC, sa(C1, 1), sa(OUT, 53), b"12345678");
    let Verdict::UdpOut { flow, .. } = nat.outbound(&mut q, T0) else {
        panic!()
    };
    nat.udp_reply(flow, b"1234", &mut [0u8; 100], T0).unwrap();
    let mut p = echo_out(C1_MAC, C1, OUT, 1, 1, b"");
    nat.outbound(&mut p, T0);
    let mut other = udp_out(C2_MAC, sa(C2, 1), sa(OUT, 53), b"");
    nat.outbound(&mut other, T0);

    let want = ContainerStats {
        flows: 2,
        flows_created: 2,
        refused: 0,
        packets_out: 2,
        packets_in: 1,
        bytes_out: 36 + 28,
        bytes_in: 32,
    };
    assert_eq!(nat.container_stats(C1), want);
    nat.expire(T0 + 200_000);
    assert_eq!(nat.container_stats(C1), ContainerStats { flows: 0, ..want });
    let s = nat.stats();
    assert_eq!((s.created, s.expired, s.flows), (3, 3, 0));
    assert_eq!((s.packets_out, s.packets_in), (3, 1));
    assert_eq!(
        nat.container_stats(Ipv4Addr::new(10, 1, 1, 99)),
        ContainerStats::default()
    );
}

#[test]
fn forget_container_removes_its_flows() {
    let nat = nat();
    let mut a = udp_out(C1_MAC, sa(C1, 1), sa(OUT, 53), b"");
    let Verdict::UdpOut { flow, .. } = nat.outbound(&mut a, T0) else {
        panic!()
    };
    let mut b = udp_out(C2_MAC, sa(C2, 1), sa(OUT, 53), b"");
    nat.outbound(&mut b, T0);
    assert_eq!(
        nat.forget_container(C1),
        vec![Expired {
            flow,
            proto: Proto::Udp
        }]
    );
    assert_eq!(nat.container_stats(C1), ContainerStats::default());
    assert_eq!(nat.entries(T0).len(), 1);
    assert!(!nat.remove_flow(flow));
}

#[test]
fn remove_flow_on_request() {
    let nat = nat();
    let mut a = udp_out(C1_MAC, sa(C1, 1), sa(OUT, 53), b"");
    let Verdict::UdpOut { flow, .. } = nat.outbound(&mut a, T0) else {
        panic!()
    };
    assert!(nat.remove_flow(flow));
    assert!(!nat.remove_flow(flow));
    assert!(
        nat.expire(u64::MAX).is_empty(),
        "not reported: the edge asked"
    );
    assert_eq!(nat.stats().removed, 1);
}

#[test]
fn what_is_not_nat_traffic_passes() {
    let nat = nat();
    // ARP.
    let mut arp = vec![0u8; 10 + 42];
    arp[22..24].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(nat.outbound(&mut arp, T0), Verdict::Pass);
    assert_eq!(nat.from_host(&mut arp, T0), Verdict::Pass);
    // To the gateway itself (DNS, ping), to the subnet, broadcast and multicast.
    for dst in [
        GW,
        C2,
        Ipv4Addr::new(10, 1, 1, 255),
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(224, 0, 0, 251),
    ] {
        let mut f = udp_out(C1_MAC, sa(C1, 5353), sa(dst, 53), b"q");
        let before = f.clone();
        assert_eq!(nat.outbound(&mut f, T0), Verdict::Pass, "{dst}");
        assert_eq!(f, before);
        let mut p = echo_out(C1_MAC, C1, dst, 1, 1, b"");
        assert_eq!(nat.outbound(&mut p, T0), Verdict::Pass, "{dst}");
    }
    // Host frames that belong to no flow.
    let mut h = tcp_host(sa(GW, 40000), sa(C1, 5000), ACK, Csum::Full);
    assert_eq!(nat.from_host(&mut h, T0), Verdict::Pass);
    let mut h = tcp_host(sa(GW, 22), sa(C1, 5000), ACK, Csum::Full);
    assert_eq!(nat.from_host(&mut h, T0), Verdict::Pass);
    assert_eq!(nat.stats(), crate::NatStats::default());
}

#[test]
fn refused_traffic_is_counted() {
    let nat = nat();
    let mut frag = udp_out(C1_MAC, sa(C1, 1), sa(OUT, 53), &[0; 100]);
    frag[30] = 0x20; // MF
    fix_ip_checksum(&mut frag);
    assert_eq!(
        nat.outbound(&mut frag, T0),
        Verdict::Drop(NatDrop::Fragment)
    );
    let mut frag = udp_out(C1_MAC, sa(C1, 1), sa(OUT, 53), &[0; 100]);
    frag[30..32].copy_from_slice(&[0x00, 0x10]); // offset 128
    fix_ip_checksum(&mut frag);
    assert_eq!(
        nat.outbound(&mut frag, T0),
        Verdict::Drop(NatDrop::Fragment)
    );

    let mut spoof = udp_out(C1_MAC, sa(OUT2, 1), sa(OUT, 53), b"");
    assert_eq!(
        nat.outbound(&mut spoof, T0),
        Verdict::Drop(NatDrop::BadAddress)
    );
    let mut lo = udp_out(C1_MAC, sa(C1, 1), sa(Ipv4Addr::LOCALHOST, 53), b"");
    assert_eq!(
        nat.outbound(&mut lo, T0),
        Verdict::Drop(NatDrop::BadAddress)
    );

    let mut gre = udp_out(C1_MAC, sa(C1, 1), sa(OUT, 53), b"");
    gre[33] = 47;
    fix_ip_checksum(&mut gre);
    assert_eq!(
        nat.outbound(&mut gre, T0),
        Verdict::Drop(NatDrop::Unsupported)
    );
    let mut reply = echo_out(C1_MAC, C1, OUT, 1, 1, b"");
    reply[44] = 0; // an echo reply going out
    assert_eq!(
        nat.outbound(&mut reply, T0),
        Verdict::Drop(NatDrop::Unsupported)
    );

    let s = nat.stats();
    assert_eq!((s.fragments, s.bad_address, s.unsupported), (2, 2, 2));
    assert_eq!(s.flows, 0);
}

#[test]
fn shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Nat>();

    let nat = Nat::new(NatConfig {
        max_flows: 100_000,
        shares: Shares::for_table(100_000),
        ..config()
    });
    std::thread::scope(|s| {
        for t in 0..4u16 {
            let nat = &nat;
            s.spawn(move || {
                for i in 0..2000u16 {
                    let port = 1024 + t * 2000 + i;
                    let mut f = udp_out(C1_MAC, sa(C1, port), sa(OUT, 53), b"q");
                    let Verdict::UdpOut { flow, .. } = nat.outbound(&mut f, T0) else {
                        panic!()
                    };
                    nat.udp_reply(flow, b"r", &mut [0u8; 64], T0).unwrap();
                    let mut syn = tcp_out(C1_MAC, sa(C1, port), sa(OUT, 80), SYN, 1, b"");
                    let Verdict::TcpConnect { flow, .. } = nat.outbound(&mut syn, T0) else {
                        panic!()
                    };
                    nat.tcp_connected(flow, &mut syn, T0).unwrap();
                }
            });
        }
    });
    assert_eq!(nat.stats().flows, 16_000);
    assert_eq!(nat.entries(T0).len(), 16_000);
    assert_eq!(nat.expire(T0 + 120_000).len(), 16_000);
    assert_eq!(nat.stats().flows, 0);
}

#[test]
fn what_an_edge_reports_agrees_with_the_table() {
    let nat = Nat::new(NatConfig {
        max_flows: 3,
        shares: Shares::for_table(3),
        ..config()
    });
    // C1: a TCP connection whose connect went through (SYN_SENT), a UDP flow that was answered;
    // C2: a UDP flow never answered.
    let mut syn = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), SYN, 1, b"");
    let Verdict::TcpConnect { flow: tcp, .. } = nat.outbound(&mut syn, T0) else {
        panic!()
    };
    nat.tcp_connected(tcp, &mut syn, T0).unwrap();
    let relay = check(&syn).dport();
    let mut q = udp_out(C1_MAC, sa(C1, 6000), sa(OUT, 53), b"q");
    let Verdict::UdpOut { flow: udp, .. } = nat.outbound(&mut q, T0) else {
        panic!()
    };
    let mut out = vec![0u8; 2048];
    nat.udp_reply(udp, b"answer", &mut out, T0).unwrap();
    let mut q2 = udp_out(C2_MAC, sa(C2, 6000), sa(OUT, 53), b"q");
    assert!(matches!(nat.outbound(&mut q2, T0), Verdict::UdpOut { .. }));

    let by_state: Vec<(Proto, &str, usize)> = (nat.count_by_state(T0).into_iter())
        .map(|c| (c.proto, c.state, c.flows))
        .collect();
    assert_eq!(
        by_state,
        [
            (Proto::Tcp, "SYN_SENT", 1),
            (Proto::Udp, "REPLIED", 1),
            (Proto::Udp, "UNREPLIED", 1)
        ]
    );
    assert_eq!(nat.state_of(tcp), Some("SYN_SENT"));
    // Expired flows are not counted, though not reclaimed yet: an unanswered UDP flow lasts
    // 30 s.
    let later: Vec<&str> = (nat.count_by_state(T0 + 31_000).into_iter())
        .map(|c| c.state)
        .collect();
    assert_eq!(later, ["SYN_SENT", "REPLIED"]);

    // A full table: one refusal, seen in the cheap counters as in the full ones.
    let mut q3 = udp_out(C2_MAC, sa(C2, 6001), sa(OUT, 53), b"q");
    nat.outbound(&mut q3, T0);
    let refusals = nat.refusals();
    assert_eq!(
        (refusals.table_full, refusals.total()),
        (1, 1),
        "{refusals:?}"
    );
    assert_eq!(refusals.table_full, nat.stats().table_full);

    // One pass over the table gives each container what its own query gives.
    let all = nat.all_container_stats();
    for ip in [C1, C2] {
        assert_eq!(all[&ip], nat.container_stats(ip), "{ip}");
    }
    assert_eq!(
        (all[&C1].flows, all[&C2].flows, all[&C2].refused),
        (2, 1, 1)
    );

    // The edge finds a relayed connection by its gateway port.
    let views = nat.entries(T0);
    let tcp_view = views.iter().find(|f| f.flow == tcp).unwrap();
    assert_eq!(tcp_view.gateway_port, Some(relay));
    assert!(views
        .iter()
        .filter(|f| f.proto == Proto::Udp)
        .all(|f| f.gateway_port.is_none()));
}
