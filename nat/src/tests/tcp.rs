//! TCP: relayed egress, published ports, state tracking and timeouts.

use super::*;
use crate::{FlowId, NatDrop, NatError, Offload, RelayFlow, Shares, Verdict};

const T0: u64 = 1_000_000;

/// A relayed flow C1:5000 -> OUT:80 taken through the handshake up to ESTABLISHED; returns
/// (flow, relay port).
fn established(nat: &Nat, now: u64) -> (FlowId, u16) {
    let (flow, relay) = connected(nat, sa(C1, 5000), sa(OUT, 80), now);
    let mut synack = tcp_host(sa(GW, relay), sa(C1, 5000), SYN | ACK, Csum::Full);
    assert_eq!(nat.from_host(&mut synack, now), Verdict::Rewritten);
    let mut ack = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), ACK, 101, b"");
    assert_eq!(nat.outbound(&mut ack, now), Verdict::Rewritten);
    assert_eq!(state(nat, flow, now), "ESTABLISHED");
    (flow, relay)
}

/// SYN -> TcpConnect -> tcp_connected; returns (flow, relay port).
fn connected(nat: &Nat, src: SocketAddrV4, dst: SocketAddrV4, now: u64) -> (FlowId, u16) {
    let mut syn = tcp_out(C1_MAC, src, dst, SYN, 100, b"");
    let Verdict::TcpConnect { flow, dst: d, .. } = nat.outbound(&mut syn, now) else {
        panic!("no TcpConnect");
    };
    assert_eq!(d, dst);
    nat.tcp_connected(flow, &mut syn, now).unwrap();
    let s = check(&syn);
    (flow, s.dport())
}

fn entry(nat: &Nat, flow: FlowId, now: u64) -> Option<crate::FlowView> {
    nat.entries(now).into_iter().find(|e| e.flow == flow)
}

fn state(nat: &Nat, flow: FlowId, now: u64) -> &'static str {
    entry(nat, flow, now).expect("flow").state
}

#[test]
fn syn_is_held_until_connected_then_relayed() {
    let nat = nat();
    let mut syn = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), SYN, 100, b"");
    let original = syn.clone();
    let Verdict::TcpConnect { flow, from, dst } = nat.outbound(&mut syn, T0) else {
        panic!("SYN must start a connect");
    };
    assert_eq!((from, dst), (sa(C1, 5000), sa(OUT, 80)));
    assert_eq!(syn, original, "the held SYN is not rewritten yet");

    // A retransmission while connecting: no second connect.
    let mut again = original.clone();
    assert_eq!(nat.outbound(&mut again, T0 + 1000), Verdict::Pending);
    assert_eq!(again, original);

    nat.tcp_connected(flow, &mut syn, T0 + 1500).unwrap();
    let s = check(&syn);
    assert_eq!(s.src_sa(), sa(C1, 5000));
    assert_eq!(s.dst, GW);
    assert!(RELAYS.contains(&s.dport()));
    assert_eq!((s.tcp_flags(), s.tcp_seq()), (SYN, 100));
    assert_eq!(
        nat.tcp_connected(flow, &mut original.clone(), T0),
        Err(NatError::NotConnecting(flow))
    );

    // The relay finds the original destination.
    assert_eq!(
        nat.relay_lookup(sa(C1, 5000), s.dport()),
        Some(RelayFlow {
            flow,
            dst: sa(OUT, 80)
        })
    );
    let other = RELAYS.iter().find(|&&r| r != s.dport()).unwrap();
    assert_eq!(nat.relay_lookup(sa(C1, 5000), *other), None);
    assert_eq!(nat.relay_lookup(sa(C1, 5001), s.dport()), None);

    // Later SYN retransmissions go to the relay too.
    let mut again = original.clone();
    assert_eq!(nat.outbound(&mut again, T0 + 2000), Verdict::Rewritten);
    assert_eq!(again, syn);

    // The host's SYN-ACK comes back from the original destination.
    let mut synack = tcp_host(sa(GW, s.dport()), sa(C1, 5000), SYN | ACK, Csum::Full);
    assert_eq!(nat.from_host(&mut synack, T0 + 2000), Verdict::Rewritten);
    let r = check(&synack);
    assert_eq!((r.src_sa(), r.dst_sa()), (sa(OUT, 80), sa(C1, 5000)));
    assert_eq!(&r.l4[20..], b"host data");
    assert_eq!(state(&nat, flow, T0 + 2000), "SYN_RECV");
}

#[test]
fn host_gso_frames_with_partial_checksums_are_rewritten() {
    let nat = nat();
    let (_, relay) = established(&nat, T0);
    let mut f = tcp_host(sa(GW, relay), sa(C1, 5000), ACK | PSH, Csum::Partial);
    f[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
    f[4..6].copy_from_slice(&1448u16.to_le_bytes());
    f[26..28].fill(0); // IPv4 total length 0 (BIG TCP style)
                       // Fix the IPv4 header checksum for the zeroed length.
    f[34..36].fill(0);
    let c = !(naive_sum(&[&f[24..44]]) as u16);
    f[34..36].copy_from_slice(&c.to_be_bytes());
    assert_eq!(nat.from_host(&mut f, T0), Verdict::Rewritten);
    assert_eq!(naive_sum(&[&f[24..44]]), 0xffff);
    // Restore the length to verify the transport checksum the offload will finish.
    let len = (f.len() - 24) as u16;
    f[26..28].copy_from_slice(&len.to_be_bytes());
    f[34..36].fill(0);
    let c = !(naive_sum(&[&f[24..44]]) as u16);
    f[34..36].copy_from_slice(&c.to_be_bytes());
    let s = check(&f);
    assert_eq!(s.src_sa(), sa(OUT, 80));
    assert_eq!(s.vnet[0], 1, "offload flags kept");
}

#[test]
fn container_partial_checksums_are_rewritten() {
    let nat = nat();
    let (_, relay) = established(&nat, T0);
    let l4 = tcp_l4(5000, 80, ACK, 500, 1, &[7u8; 3000]);
    let mut f = frame(C1_MAC, GW_MAC, C1, OUT, 6, l4, Some(16), Csum::Partial);
    f[1] = 1;
    assert_eq!(nat.outbound(&mut f, T0), Verdict::Rewritten);
    let s = check(&f);
    assert_eq!(s.dst_sa(), sa(GW, relay));
}

#[test]
fn same_container_port_to_two_destinations_gets_two_relay_ports() {
    let nat = nat();
    let (f1, r1) = connected(&nat, sa(C1, 5000), sa(OUT, 80), T0);
    let (f2, r2) = connected(&nat, sa(C1, 5000), sa(OUT2, 80), T0);
    assert_ne!(f1, f2);
    assert_ne!(r1, r2);
    assert_eq!(nat.relay_lookup(sa(C1, 5000), r1).unwrap().dst, sa(OUT, 80));
    assert_eq!(
        nat.relay_lookup(sa(C1, 5000), r2).unwrap().dst,
        sa(OUT2, 80)
    );
    // Each direction keeps to its flow.
    let mut d1 = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT2, 80), ACK, 1, b"x");
    assert_eq!(nat.outbound(&mut d1, T0), Verdict::Rewritten);
    assert_eq!(check(&d1).dport(), r2);
    let mut h = tcp_host(sa(GW, r1), sa(C1, 5000), ACK, Csum::Full);
    assert_eq!(nat.from_host(&mut h, T0), Verdict::Rewritten);
    assert_eq!(check(&h).src_sa(), sa(OUT, 80));
}

#[test]
fn relay_ports_run_out() {
    let nat = Nat::new(NatConfig {
        relay_ports: vec![40000],
        ..config()
    });
    connected(&nat, sa(C1, 5000), sa(OUT, 80), T0);
    let mut syn = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT2, 80), SYN, 1, b"");
    assert_eq!(
        nat.outbound(&mut syn, T0),
        Verdict::Drop(NatDrop::NoRelayPort)
    );
    assert_eq!(nat.stats().no_relay_port, 1);
    // Another container port is fine.
    connected(&nat, sa(C1, 5001), sa(OUT2, 80), T0);
}

#[test]
fn refused_connect_gets_a_reset_and_removes_the_flow() {
    let nat = nat();
    let mut syn = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 81), SYN, 0xffff_fff0, b"");
    let Verdict::TcpConnect { flow, .. } = nat.outbound(&mut syn, T0) else {
        panic!()
    };
    let mut out = [0u8; 128];
    let n = nat.tcp_reset_reply(flow, &syn, &mut out).unwrap();
    assert_eq!(n, crate::TCP_RST_FRAME_LEN);
    let r = check(&out[..n]);
    assert_eq!(r.vnet, [0; 10]);
    assert_eq!((r.dst_mac, r.src_mac), (C1_MAC, GW_MAC));
    assert_eq!((r.src_sa(), r.dst_sa()), (sa(OUT, 81), sa(C1, 5000)));
    assert_eq!(r.tcp_flags(), RST | ACK);
    assert_eq!((r.tcp_seq(), r.tcp_ack()), (0, 0xffff_fff1));
    assert_eq!(r.ttl, 64);
    assert!(nat.entries(T0).is_empty());
    assert_eq!(nat.stats().removed, 1);
    assert_eq!(nat.stats().flows, 0);
    // The container tries again: a new connect.
    let mut syn = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 81), SYN, 5, b"");
    assert!(matches!(
        nat.outbound(&mut syn, T0 + 1000),
        Verdict::TcpConnect { .. }
    ));
}

#[test]
fn unreachable_connect_gets_an_icmp_error_quoting_the_syn() {
    let nat = nat();
    let mut syn = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), SYN, 42, b"");
    let Verdict::TcpConnect { flow, .. } = nat.outbound(&mut syn, T0) else {
        panic!()
    };
    let mut out = [0u8; 128];
    assert!(matches!(
        nat.icmp_unreachable_reply(flow, &syn, 1, &mut out[..50]),
        Err(NatError::BufferTooSmall { .. })
    ));
    let n = nat.icmp_unreachable_reply(flow, &syn, 1, &mut out).unwrap();
    let r = check(&out[..n]);
    assert_eq!((r.src, r.dst, r.proto), (OUT, C1, 1));
    assert_eq!((r.dst_mac, r.src_mac), (C1_MAC, GW_MAC));
    assert_eq!(&r.l4[..2], &[3, 1]);
    assert_eq!(&r.l4[4..8], &[0; 4]);
    assert_eq!(
        &r.l4[8..],
        &syn[24..24 + 28],
        "quotes the IP header + 8 bytes as sent"
    );
    assert!(nat.entries(T0).is_empty());
}

#[test]
fn published_connection_carries_the_client_address() {
    let nat = nat();
    let flow = nat
        .publish_tcp(50000, sa(C1, 80), sa(CLIENT, 6000), T0)
        .unwrap();
    assert_eq!(
        nat.publish_tcp(50000, sa(C1, 81), sa(CLIENT, 6001), T0),
        Err(NatError::InUse)
    );
    assert_eq!(
        nat.publish_tcp(50001, sa(C1, 80), sa(CLIENT, 6000), T0),
        Err(NatError::InUse)
    );
    assert_eq!(
        nat.publish_tcp(50002, sa(OUT, 80), sa(CLIENT, 6000), T0),
        Err(NatError::NotInSubnet)
    );
    assert_eq!(
        nat.publish_tcp(50002, sa(C1, 80), sa(C2, 6000), T0),
        Err(NatError::LocalClient)
    );
    let e = entry(&nat, flow, T0).unwrap();
    assert!(e.published);
    assert_eq!(
        (e.inside, e.outside, e.state),
        (sa(C1, 80), sa(CLIENT, 6000), "NONE")
    );

    let mut syn = tcp_host(sa(GW, 50000), sa(C1, 80), SYN, Csum::Full);
    assert_eq!(nat.from_host(&mut syn, T0), Verdict::Rewritten);
    assert_eq!(check(&syn).src_sa(), sa(CLIENT, 6000));
    let mut synack = tcp_out(C1_MAC, sa(C1, 80), sa(CLIENT, 6000), SYN | ACK, 9, b"");
    assert_eq!(nat.outbound(&mut synack, T0), Verdict::Rewritten);
    let s = check(&synack);
    assert_eq!((s.src_sa(), s.dst_sa()), (sa(C1, 80), sa(GW, 50000)));
    let mut ack = tcp_host(sa(GW, 50000), sa(C1, 80), ACK, Csum::Partial);
    assert_eq!(nat.from_host(&mut ack, T0), Verdict::Rewritten);
    check(&ack);
    assert_eq!(state(&nat, flow, T0), "ESTABLISHED");
    // Not a relayed flow.
    assert_eq!(nat.relay_lookup(sa(C1, 80), 50000), None);

    assert!(nat.publish_tcp_done(50000));
    assert!(!nat.publish_tcp_done(50000));
    let mut data = tcp_host(sa(GW, 50000), sa(C1, 80), ACK, Csum::Full);
    assert_eq!(nat.from_host(&mut data, T0), Verdict::Pass);
    let mut reply = tcp_out(C1_MAC, sa(C1, 80), sa(CLIENT, 6000), ACK, 10, b"");
    assert_eq!(nat.outbound(&mut reply, T0), Verdict::Drop(NatDrop::NoFlow));
    // The port can be published again.
    nat.publish_tcp(50000, sa(C1, 80), sa(CLIENT, 6000), T0)
        .unwrap();
}

#[test]
fn published_flow_expires_like_a_tcp_flow() {
    let nat = nat();
    let flow = nat
        .publish_tcp(50000, sa(C1, 80), sa(CLIENT, 6000), T0)
        .unwrap();
    assert!(nat.expire(T0 + 119_999).is_empty());
    let gone = nat.expire(T0 + 120_000);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].flow, flow);
    assert!(!nat.publish_tcp_done(50000));
}

#[test]
fn fin_both_ways_then_time_wait_expiry() {
    let nat = nat();
    let (flow, relay) = established(&nat, T0);
    let t = |s: u64| T0 + s * 1000;
    assert_eq!(entry(&nat, flow, T0).unwrap().timeout_ms, 432_000_000);

    let mut fin = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), FIN | ACK, 200, b"");
    // Leaving ESTABLISHED: the edge must stop translating the flow itself.
    assert_eq!(nat.outbound(&mut fin, t(1)), Verdict::Closing(flow));
    assert_eq!(state(&nat, flow, t(1)), "FIN_WAIT");
    assert_eq!(entry(&nat, flow, t(1)).unwrap().timeout_ms, 120_000);

    let mut ack = tcp_host(sa(GW, relay), sa(C1, 5000), ACK, Csum::Full);
    assert_eq!(nat.from_host(&mut ack, t(2)), Verdict::Rewritten);
    assert_eq!(state(&nat, flow, t(2)), "CLOSE_WAIT");
    assert_eq!(entry(&nat, flow, t(2)).unwrap().timeout_ms, 60_000);

    let mut fin = tcp_host(sa(GW, relay), sa(C1, 5000), FIN | ACK, Csum::Full);
    assert_eq!(nat.from_host(&mut fin, t(3)), Verdict::Rewritten);
    assert_eq!(state(&nat, flow, t(3)), "LAST_ACK");
    assert_eq!(entry(&nat, flow, t(3)).unwrap().timeout_ms, 30_000);

    let mut ack = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), ACK, 201, b"");
    assert_eq!(nat.outbound(&mut ack, t(4)), Verdict::Rewritten);
    assert_eq!(state(&nat, flow, t(4)), "TIME_WAIT");

    assert!(nat.expire(t(4) + 119_999).is_empty());
    let gone = nat.expire(t(4) + 120_000);
    assert_eq!(
        gone,
        vec![crate::Expired {
            flow,
            proto: crate::Proto::Tcp
        }]
    );
    assert_eq!(nat.stats().expired, 1);
    assert_eq!(nat.relay_lookup(sa(C1, 5000), relay), None);
    let mut late = tcp_host(sa(GW, relay), sa(C1, 5000), ACK, Csum::Full);
    assert_eq!(nat.from_host(&mut late, t(500)), Verdict::Pass);
}

#[test]
fn reset_closes_and_expires_after_ten_seconds() {
    let nat = nat();
    let (flow, relay) = established(&nat, T0);
    let mut rst = tcp_host(sa(GW, relay), sa(C1, 5000), RST | ACK, Csum::Full);
    assert_eq!(nat.from_host(&mut rst, T0 + 5), Verdict::Closing(flow));
    assert_eq!(state(&nat, flow, T0 + 5), "CLOSE");
    assert!(nat.expire(T0 + 5 + 9_999).is_empty());
    assert_eq!(nat.expire(T0 + 5 + 10_000).len(), 1);
}

#[test]
fn established_flow_expires_after_five_days_idle() {
    let nat = nat();
    let (flow, _) = established(&nat, T0);
    let day = 86_400_000;
    let mut d = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), ACK, 300, b"data");
    assert_eq!(nat.outbound(&mut d, T0 + 4 * day), Verdict::Rewritten);
    assert!(nat.expire(T0 + 8 * day).is_empty(), "refreshed by traffic");
    assert_eq!(nat.expire(T0 + 9 * day)[0].flow, flow);
}

#[test]
fn connecting_flow_expires_as_syn_sent() {
    let nat = nat();
    let mut syn = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), SYN, 1, b"");
    let Verdict::TcpConnect { flow, .. } = nat.outbound(&mut syn, T0) else {
        panic!()
    };
    assert_eq!(state(&nat, flow, T0), "SYN_SENT");
    assert!(nat.expire(T0 + 119_999).is_empty());
    assert_eq!(nat.expire(T0 + 120_000)[0].flow, flow);
    assert_eq!(
        nat.tcp_connected(flow, &mut syn, T0 + 120_001),
        Err(NatError::UnknownFlow(flow))
    );
}

#[test]
fn container_reset_while_connecting() {
    let nat = nat();
    let mut syn = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), SYN, 1, b"");
    let Verdict::TcpConnect { flow, .. } = nat.outbound(&mut syn, T0) else {
        panic!()
    };
    let mut rst = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), RST, 2, b"");
    assert_eq!(nat.outbound(&mut rst, T0), Verdict::Pending);
    assert_eq!(
        nat.tcp_connected(flow, &mut syn, T0),
        Err(NatError::FlowClosed(flow))
    );
    assert_eq!(nat.expire(T0 + 10_000)[0].flow, flow);
}

#[test]
fn port_reuse_after_time_wait_is_a_new_flow() {
    let nat = nat();
    let (flow, relay) = established(&nat, T0);
    let mut rst = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), RST, 200, b"");
    assert_eq!(nat.outbound(&mut rst, T0), Verdict::Closing(flow));
    assert_eq!(check(&rst).dport(), relay);
    let mut syn = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), SYN, 900, b"");
    let Verdict::TcpConnect { flow: new, .. } = nat.outbound(&mut syn, T0 + 1) else {
        panic!("a new connect")
    };
    assert_ne!(new, flow);
    // The edge hears of the old flow at the next expire.
    let gone = nat.expire(T0 + 2);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].flow, flow);
    nat.tcp_connected(new, &mut syn, T0 + 3).unwrap();
    // The same connection comes back to the host on the same ports: a TIME_WAIT the host may
    // still hold for it takes the newer SYN.
    assert_eq!(check(&syn).dport(), relay, "the same relay port");
}

/// Takes a connected flow through a close where the outside closes first (the host's FIN,
/// the container's FIN, the host's last ACK): TIME_WAIT.
fn close_outside_first(nat: &Nat, src: SocketAddrV4, dst: SocketAddrV4, relay: u16, now: u64) {
    let mut synack = tcp_host(sa(GW, relay), src, SYN | ACK, Csum::Full);
    assert_eq!(nat.from_host(&mut synack, now), Verdict::Rewritten);
    let mut ack = tcp_out(C1_MAC, src, dst, ACK, 101, b"");
    assert_eq!(nat.outbound(&mut ack, now), Verdict::Rewritten);
    let mut fin = tcp_host(sa(GW, relay), src, FIN | ACK, Csum::Full);
    assert!(matches!(nat.from_host(&mut fin, now), Verdict::Closing(_)));
    let mut fin = tcp_out(C1_MAC, src, dst, FIN | ACK, 101, b"");
    assert_eq!(nat.outbound(&mut fin, now), Verdict::Rewritten);
    let mut last = tcp_host(sa(GW, relay), src, ACK, Csum::Full);
    assert_eq!(nat.from_host(&mut last, now), Verdict::Rewritten);
}

#[test]
fn another_destination_from_the_same_port_gets_another_relay_port() {
    let nat = nat();
    let (flow, relay) = connected(&nat, sa(C1, 5000), sa(OUT, 80), T0);
    close_outside_first(&nat, sa(C1, 5000), sa(OUT, 80), relay, T0);
    assert_eq!(state(&nat, flow, T0), "TIME_WAIT");
    // The host may hold a TIME_WAIT for (GATEWAY:relay, C1:5000) of that connection, which
    // would not take another connection's SYN: the next destination goes elsewhere...
    let (_, other) = connected(&nat, sa(C1, 5000), sa(OUT, 81), T0 + 1);
    assert_ne!(other, relay);
    // ...and when every relay port has a finished flow of this container port, one goes.
    let mut taken = vec![relay, other];
    for (i, port) in (82..).take(RELAYS.len()).enumerate() {
        let (_, r) = connected(&nat, sa(C1, 5000), sa(OUT, port), T0 + 2);
        close_outside_first(&nat, sa(C1, 5000), sa(OUT, port), r, T0 + 2);
        if i + 2 < RELAYS.len() {
            assert!(!taken.contains(&r), "a relay port no flow of C1:5000 used");
        }
        taken.push(r);
    }
    assert_eq!(nat.stats().no_relay_port, 0);
}

#[test]
fn finished_connections_never_keep_new_ones_out() {
    // A small table and share: far more finished connections than either holds.
    let nat = Nat::new(NatConfig {
        max_flows: 100,
        shares: Shares {
            flows: 10,
            half_open: 4,
        },
        ..config()
    });
    let mut now = T0;
    for i in 0..70_000u32 {
        let port = 1024 + (i % 60_000) as u16;
        let dst = sa(OUT, 80 + (i / 60_000) as u16);
        let (flow, relay) = connected(&nat, sa(C1, port), dst, now);
        close_outside_first(&nat, sa(C1, port), dst, relay, now);
        if i % 20_000 == 0 {
            assert_eq!(state(&nat, flow, now), "TIME_WAIT");
        }
        now += 1;
    }
    let stats = nat.stats();
    assert_eq!(
        stats.container_limit + stats.table_full + stats.no_relay_port,
        0
    );
    // Kept for their timeout, but not without bound: the oldest went first.
    assert!(stats.flows <= 65_536 + 1024, "{} flows kept", stats.flows);
    assert!(stats.flows >= 50_000, "{} flows kept", stats.flows);
    assert!(nat.entries(now).iter().all(|e| e.state == "TIME_WAIT"));
    // A connection still open counts: the share is 10.
    for port in 0..10 {
        connected(&nat, sa(C1, 100 + port), sa(OUT, 90), now);
    }
    let mut more = tcp_out(C1_MAC, sa(C1, 200), sa(OUT, 90), SYN, 1, b"");
    assert!(matches!(nat.outbound(&mut more, now), Verdict::Reply(_)));
    assert_eq!(nat.stats().container_limit, 1);
}

#[test]
fn a_finished_connection_opened_again_counts_as_a_new_one() {
    let nat = Nat::new(NatConfig {
        max_flows: 100,
        shares: Shares {
            flows: 2,
            half_open: 4,
        },
        ..config()
    });
    let (flow, relay) = connected(&nat, sa(C1, 5000), sa(OUT, 80), T0);
    close_outside_first(&nat, sa(C1, 5000), sa(OUT, 80), relay, T0);
    connected(&nat, sa(C1, 5001), sa(OUT, 80), T0);
    connected(&nat, sa(C1, 5002), sa(OUT, 80), T0);
    // The share is used up by the two open ones: the finished one, opened again, is a new
    // flow, refused since the share is full.
    let mut syn = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), SYN, 900, b"");
    assert!(matches!(nat.outbound(&mut syn, T0 + 1), Verdict::Reply(_)));
    assert!(entry(&nat, flow, T0 + 1).is_none());
    assert_eq!(nat.container_stats(C1).flows, 2);
}

#[test]
fn a_syn_with_fin_does_not_open_a_finished_connection_again() {
    // Found by the nat_frames fuzz target's check that a connected flow, once finished, never
    // opens again in place: a SYN that also carries FIN is not a new SYN (a new flow, a new
    // connect), and the tracker took it for one, so the finished flow opened again where it
    // was, taking back its places past the container's share (and the table's bound).
    let nat = Nat::new(NatConfig {
        max_flows: 100,
        shares: Shares {
            flows: 2,
            half_open: 4,
        },
        ..config()
    });
    let (flow, relay) = connected(&nat, sa(C1, 5000), sa(OUT, 80), T0);
    close_outside_first(&nat, sa(C1, 5000), sa(OUT, 80), relay, T0);
    connected(&nat, sa(C1, 5001), sa(OUT, 80), T0);
    connected(&nat, sa(C1, 5002), sa(OUT, 80), T0);
    let mut synfin = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), SYN | FIN, 900, b"");
    nat.outbound(&mut synfin, T0 + 1);
    assert_eq!(state(&nat, flow, T0 + 1), "TIME_WAIT");
    assert_eq!(nat.container_stats(C1).flows, 3);
    // The share is still used up by the two open ones.
    let mut syn = tcp_out(C1_MAC, sa(C1, 5003), sa(OUT, 80), SYN, 900, b"");
    assert!(matches!(nat.outbound(&mut syn, T0 + 2), Verdict::Reply(_)));
}

#[test]
fn segments_without_flow_are_dropped_and_counted() {
    let nat = nat();
    for flags in [ACK, SYN | ACK, FIN | ACK, RST] {
        let mut f = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), flags, 1, b"");
        assert_eq!(nat.outbound(&mut f, T0), Verdict::Drop(NatDrop::NoFlow));
    }
    assert_eq!(nat.stats().no_flow, 4);
    assert_eq!(nat.stats().flows, 0);
}

#[test]
fn held_syn_of_another_flow_is_refused() {
    let nat = nat();
    let mut syn = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), SYN, 1, b"");
    let Verdict::TcpConnect { flow, .. } = nat.outbound(&mut syn, T0) else {
        panic!()
    };
    let mut other = tcp_out(C1_MAC, sa(C1, 5001), sa(OUT, 80), SYN, 1, b"");
    let before = other.clone();
    assert_eq!(
        nat.tcp_connected(flow, &mut other, T0),
        Err(NatError::FrameMismatch(flow))
    );
    assert_eq!(other, before);
    assert_eq!(
        nat.tcp_connected(flow, &mut [0u8; 30], T0),
        Err(NatError::Malformed)
    );
}

#[test]
fn what_the_edge_carried_is_counted_and_keeps_the_flow_alive() {
    let nat = nat();
    let (flow, _) = established(&nat, T0);
    let before = entry(&nat, flow, T0).unwrap();
    let day = 86_400_000;
    // Four days later, segments the edge translated itself: the flow counts them and lives on
    // for five days from now, not from the handshake.
    assert!(nat.offloaded(flow, (10, 15_000), (7, 700), T0 + 4 * day));
    let after = entry(&nat, flow, T0 + 4 * day).unwrap();
    assert_eq!(after.packets_out, before.packets_out + 10);
    assert_eq!(after.bytes_out, before.bytes_out + 15_000);
    assert_eq!(after.packets_in, before.packets_in + 7);
    assert_eq!(after.bytes_in, before.bytes_in + 700);
    assert!(nat.expire(T0 + 8 * day).is_empty(), "kept alive");
    // Nothing carried: no refresh, and the flow expires five days after its last traffic.
    assert!(nat.offloaded(flow, (0, 0), (0, 0), T0 + 8 * day));
    assert_eq!(nat.expire(T0 + 9 * day + 1).len(), 1);
    assert!(
        !nat.offloaded(flow, (1, 1), (0, 0), T0 + 9 * day + 2),
        "gone"
    );
}

#[test]
fn a_connection_is_offered_to_the_edge_once_at_its_32nd_segment() {
    let nat = nat();
    let (flow, relay) = established(&nat, T0);
    let offload = Offload {
        flow,
        container: sa(C1, 5000),
        remote: sa(OUT, 80),
        relay: sa(GW, relay),
    };
    // The handshake was three segments; a short exchange stays with the NAT.
    let offered = segments_offered(&nat, sa(GW, relay), sa(C1, 5000), sa(OUT, 80), 3);
    assert_eq!(offered, [(crate::OFFLOAD_AFTER, offload)]);
}

#[test]
fn a_published_connection_is_offered_too_from_its_gateway_port() {
    let nat = nat();
    let flow = nat
        .publish_tcp(50000, sa(C1, 80), sa(CLIENT, 6000), T0)
        .unwrap();
    let mut syn = tcp_host(sa(GW, 50000), sa(C1, 80), SYN, Csum::Full);
    assert_eq!(nat.from_host(&mut syn, T0), Verdict::Rewritten);
    let mut synack = tcp_out(C1_MAC, sa(C1, 80), sa(CLIENT, 6000), SYN | ACK, 9, b"");
    assert_eq!(nat.outbound(&mut synack, T0), Verdict::Rewritten);
    let offered = segments_offered(&nat, sa(GW, 50000), sa(C1, 80), sa(CLIENT, 6000), 2);
    let offload = Offload {
        flow,
        container: sa(C1, 80),
        remote: sa(CLIENT, 6000),
        relay: sa(GW, 50000),
    };
    assert_eq!(offered, [(crate::OFFLOAD_AFTER, offload)]);
}

/// Sends ACKs of an established connection through the NAT, the host's and the container's in
/// turn, from segment `first + 1` to the 40th: the offers it made, with the segment's number.
fn segments_offered(
    nat: &Nat,
    host: SocketAddrV4,
    container: SocketAddrV4,
    remote: SocketAddrV4,
    first: u64,
) -> Vec<(u64, Offload)> {
    let mut offered = Vec::new();
    for i in first..40u64 {
        let v = if i % 2 == 0 {
            nat.from_host(&mut tcp_host(host, container, ACK, Csum::Full), T0)
        } else {
            let mut ack = tcp_out(C1_MAC, container, remote, ACK, 101, b"x");
            nat.outbound(&mut ack, T0)
        };
        match v {
            Verdict::Rewritten => {}
            Verdict::Offload(o) => offered.push((i + 1, o)),
            v => panic!("segment {}: {v:?}", i + 1),
        }
    }
    offered
}

/// A connection the edge translates itself from its SYN on: the held SYN leaves from the
/// host's address and port with a complete checksum (an offloaded one finished), the flow's
/// state follows the flags the edge reports, and none of its segments crosses the NAT again:
/// a straggler is dropped, a new SYN once it is over opens a new flow.
#[test]
fn a_translated_connection_follows_the_flags_the_edge_reports() {
    use crate::TcpState;
    let nat = nat();
    let host = sa(Ipv4Addr::new(192, 0, 2, 1), 40000);
    let l4 = tcp_l4(5000, 80, SYN, 1, 0, b"");
    let mut syn = frame(C1_MAC, GW_MAC, C1, OUT, 6, l4, Some(16), Csum::Partial);
    let Verdict::TcpConnect { flow, .. } = nat.outbound(&mut syn, T0) else {
        panic!()
    };
    let packet = nat.tcp_translated(flow, &mut syn, host, T0).unwrap();
    assert_eq!(packet, 24..syn.len());
    let sent = check(&syn);
    assert_eq!(sent.vnet[0] & 1, 0, "the checksum is complete");
    assert_eq!((sent.src_sa(), sent.dst_sa()), (host, sa(OUT, 80)));
    assert_eq!(
        nat.tcp_translated(flow, &mut syn, host, T0),
        Err(crate::NatError::NotConnecting(flow)),
        "once"
    );
    let state = |out, back, now| nat.translated_seen(flow, (out, back), (1, 60), (1, 60), now);
    assert_eq!(state(SYN, 0, T0), Some(TcpState::SynSent));
    assert_eq!(state(SYN, SYN | ACK, T0), Some(TcpState::SynSent));
    assert_eq!(state(SYN | ACK, SYN | ACK, T0), Some(TcpState::Established));
    let view = nat.entries(T0).pop().unwrap();
    assert_eq!(
        (view.state, view.packets_out, view.bytes_in),
        ("ESTABLISHED", 4, 180)
    );

    // Its segments are the kernel's: one that reaches the NAT goes no further.
    let mut late = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), ACK, 2, b"late");
    assert_eq!(nat.outbound(&mut late, T0), Verdict::Pending);
    assert_eq!(
        state(SYN | ACK | FIN, SYN | ACK, T0),
        Some(TcpState::FinWait)
    );
    assert_eq!(
        state(SYN | ACK | FIN, SYN | ACK | FIN, T0),
        Some(TcpState::TimeWait)
    );
    // Over and its entries gone: the container's next SYN on the same ports is a new flow.
    let mut again = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), SYN, 9, b"");
    let Verdict::TcpConnect { flow: next, .. } = nat.outbound(&mut again, T0) else {
        panic!()
    };
    assert_ne!(next, flow);
    assert_eq!(nat.translated_seen(flow, (0, 0), (0, 0), (0, 0), T0), None);
    // A refusal: the SYN out, a RST back.
    nat.tcp_translated(next, &mut again, host, T0).unwrap();
    let seen = nat.translated_seen(next, (SYN, RST | ACK), (1, 40), (1, 40), T0);
    assert_eq!(seen, Some(TcpState::Close));
}
