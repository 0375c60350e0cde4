//! A table handed over: restored from its snapshot, it holds the same flows under the same ids
//! and translates the same frames the same way.

use super::*;
use crate::snapshot::{FlowKind, NatSnapshot, RestoreError};
use crate::{FlowId, Verdict};

const T0: u64 = 5_000_000;

/// A NAT with one flow of every kind, and slots freed and reused (generations > 0), a flow
/// reaped but not yet reported, counters that moved. Returns it with the relayed flow's id and
/// the echo flow's translated identifier.
fn busy() -> (Nat, FlowId, u16) {
    let nat = nat();
    // Churn: flows made and removed, so that slots carry generations and free lists.
    for port in 6000..6040 {
        let mut f = udp_out(C2_MAC, sa(C2, port), sa(OUT2, 53), b"q");
        let Verdict::UdpOut { flow, .. } = nat.outbound(&mut f, T0) else {
            panic!("no UDP flow");
        };
        if port % 3 != 0 {
            assert!(nat.remove_flow(flow));
        }
    }
    // A relayed TCP connection, established, and one still connecting.
    let mut syn = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), SYN, 100, b"");
    let Verdict::TcpConnect { flow: relayed, .. } = nat.outbound(&mut syn, T0) else {
        panic!("no connect");
    };
    nat.tcp_connected(relayed, &mut syn, T0).unwrap();
    let relay = check(&syn).dport();
    let mut synack = tcp_host(sa(GW, relay), sa(C1, 5000), SYN | ACK, Csum::Full);
    assert_eq!(nat.from_host(&mut synack, T0), Verdict::Rewritten);
    let mut ack = tcp_out(C1_MAC, sa(C1, 5000), sa(OUT, 80), ACK, 101, b"");
    assert_eq!(nat.outbound(&mut ack, T0), Verdict::Rewritten);
    let mut syn2 = tcp_out(C1_MAC, sa(C1, 5001), sa(OUT2, 443), SYN, 7, b"");
    assert!(matches!(
        nat.outbound(&mut syn2, T0),
        Verdict::TcpConnect { .. }
    ));
    // A published TCP connection, a published UDP client, a UDP flow that was answered.
    nat.publish_tcp(41000, sa(C2, 80), sa(CLIENT, 33000), T0)
        .unwrap();
    let mut out = vec![0u8; 2048];
    nat.publish_udp_in(
        7,
        sa(C2, 53),
        sa(CLIENT, 33001),
        C2_MAC,
        b"hi",
        &mut out,
        T0,
    )
    .unwrap();
    let mut u = udp_out(C1_MAC, sa(C1, 7000), sa(OUT, 7), b"ping");
    let Verdict::UdpOut { flow: udp, .. } = nat.outbound(&mut u, T0) else {
        panic!("no UDP flow");
    };
    nat.udp_reply(udp, b"pong", &mut out, T0 + 5).unwrap();
    // An echo flow.
    let mut e = echo_out(C1_MAC, C1, OUT, 0x4242, 1, b"abc");
    let Verdict::EchoOut { ident, .. } = nat.outbound(&mut e, T0) else {
        panic!("no echo");
    };
    // Something dropped (a counter), and a flow reaped by a packet that found it expired.
    let mut bad = tcp_out(C1_MAC, sa(C1, 9), sa(OUT, 9), ACK, 1, b"");
    assert!(matches!(nat.outbound(&mut bad, T0), Verdict::Drop(_)));
    let mut late = udp_out(C2_MAC, sa(C2, 6000), sa(OUT2, 53), b"q");
    let later = T0 + 31_000;
    assert!(matches!(
        nat.outbound(&mut late, later),
        Verdict::UdpOut { new: true, .. }
    ));
    (nat, relayed, ident)
}

fn kinds(snap: &NatSnapshot) -> Vec<FlowKind> {
    let flows = snap.table.shards.iter().flat_map(|s| &s.slots);
    flows
        .filter_map(|s| s.flow.as_ref().map(|f| f.kind))
        .collect()
}

#[test]
fn a_restored_table_is_the_same_table() {
    let (nat, _, _) = busy();
    let snap = nat.snapshot();
    let k = kinds(&snap);
    assert!(k.iter().any(|k| matches!(
        k,
        FlowKind::TcpEgress {
            connecting: true,
            ..
        }
    )));
    assert!(k.iter().any(|k| matches!(
        k,
        FlowKind::TcpEgress {
            connecting: false,
            ..
        }
    )));
    assert!(k.iter().any(|k| matches!(k, FlowKind::TcpPublished { .. })));
    assert!(k.iter().any(|k| matches!(k, FlowKind::UdpPublished { .. })));
    assert!(k.iter().any(|k| matches!(k, FlowKind::Echo { .. })));
    assert!(snap.table.shards.iter().any(|s| !s.reaped.is_empty()));
    assert!(snap.table.shards.iter().any(|s| !s.free.is_empty()));

    let restored = Nat::restore(config(), &snap).unwrap();
    assert_eq!(restored.snapshot(), snap);
    let now = T0 + 31_000;
    assert_eq!(restored.entries(now), nat.entries(now));
    assert_eq!(restored.stats(), nat.stats());
    assert_eq!(restored.container_stats(C1), nat.container_stats(C1));
    // The reaped flow is still reported to the edge, once.
    assert_eq!(restored.expire(now), nat.expire(now));
    assert_eq!(restored.snapshot(), nat.snapshot());
}

#[cfg(feature = "serde")]
#[test]
fn a_snapshot_survives_json() {
    let (nat, _, _) = busy();
    let snap = nat.snapshot();
    let text = serde_json::to_string(&snap).unwrap();
    let back: NatSnapshot = serde_json::from_str(&text).unwrap();
    assert_eq!(back, snap);
}

/// Runs the same frames and calls through both NATs and asserts the same outcome each time.
#[test]
fn a_restored_table_translates_the_same_frames_the_same_way() {
    let (old, relayed, ident) = busy();
    let new = Nat::restore(config(), &old.snapshot()).unwrap();
    let now = T0 + 1000;
    let both = |f: &dyn Fn(&Nat) -> (String, Vec<u8>)| {
        let (a, b) = (f(&old), f(&new));
        assert_eq!(a, b);
        a
    };
    let outbound = |frame: Vec<u8>| {
        move |n: &Nat| {
            let mut f = frame.clone();
            (format!("{:?}", n.outbound(&mut f, now)), f)
        }
    };
    let from_host = |frame: Vec<u8>| {
        move |n: &Nat| {
            let mut f = frame.clone();
            (format!("{:?}", n.from_host(&mut f, now)), f)
        }
    };
    // Data on the established relayed connection, both ways.
    let (v, f) = both(&outbound(tcp_out(
        C1_MAC,
        sa(C1, 5000),
        sa(OUT, 80),
        ACK | PSH,
        101,
        b"GET /",
    )));
    assert_eq!(v, "Rewritten");
    let relay = check(&f).dport();
    let (v, f) = both(&from_host(tcp_host(
        sa(GW, relay),
        sa(C1, 5000),
        ACK,
        Csum::Partial,
    )));
    assert_eq!(v, "Rewritten");
    assert_eq!(check(&f).src_sa(), sa(OUT, 80));
    assert_eq!(
        old.relay_lookup(sa(C1, 5000), relay).map(|r| r.flow),
        Some(relayed)
    );
    assert_eq!(
        new.relay_lookup(sa(C1, 5000), relay),
        old.relay_lookup(sa(C1, 5000), relay)
    );
    // The connect in progress is still held, and completes the same way.
    let (v, _) = both(&outbound(tcp_out(
        C1_MAC,
        sa(C1, 5001),
        sa(OUT2, 443),
        SYN,
        7,
        b"",
    )));
    assert_eq!(v, "Pending");
    // The published TCP connection: the container's answer goes back to the ephemeral port.
    let (v, f) = both(&outbound(tcp_out(
        C2_MAC,
        sa(C2, 80),
        sa(CLIENT, 33000),
        SYN | ACK,
        1,
        b"",
    )));
    assert_eq!(v, "Rewritten");
    assert_eq!(check(&f).dst_sa(), sa(GW, 41000));
    // UDP: the known flow keeps its id, the published client its publish id, echo its ident.
    let (v, _) = both(&outbound(udp_out(
        C1_MAC,
        sa(C1, 7000),
        sa(OUT, 7),
        b"again",
    )));
    assert!(v.contains("new: false"), "{v}");
    let (v, _) = both(&outbound(udp_out(
        C2_MAC,
        sa(C2, 53),
        sa(CLIENT, 33001),
        b"answer",
    )));
    assert!(v.starts_with("UdpToClient { publish_id: 7"), "{v}");
    let (v, _) = both(&outbound(echo_out(C1_MAC, C1, OUT, 0x4242, 2, b"abc")));
    assert!(v.contains(&format!("ident: {ident}")), "{v}");
    both(&|n: &Nat| {
        let mut out = vec![0u8; 2048];
        let len = n.echo_reply(ident, 2, b"abc", &mut out, now).unwrap();
        (String::new(), out[..len].to_vec())
    });
    // New flows get the same ids in both: same seeds, same free slots, same generations.
    for port in 8000..8010 {
        let (v, _) = both(&outbound(udp_out(
            C2_MAC,
            sa(C2, port),
            sa(OUT2, 9),
            b"new",
        )));
        assert!(v.contains("new: true"), "{v}");
    }
    assert_eq!(new.snapshot(), old.snapshot());
}

#[test]
fn a_snapshot_that_does_not_fit_is_refused_whole() {
    let (nat, _, _) = busy();
    let snap = nat.snapshot();
    let mut other = config();
    other.relay_ports = vec![1, 2, 3];
    assert!(matches!(
        Nat::restore(other, &snap),
        Err(RestoreError::RelayPorts { .. })
    ));
    // A flow moved to another shard than its addresses choose.
    let mut moved = snap.clone();
    let from = (moved.table.shards.iter())
        .position(|s| s.slots.iter().any(|s| s.flow.is_some()))
        .unwrap();
    let slot = moved.table.shards[from]
        .slots
        .iter()
        .position(|s| s.flow.is_some())
        .unwrap();
    let flow = moved.table.shards[from].slots[slot].flow.take();
    moved.table.shards[from].free.push(slot as u32);
    let to = (from + 1) % moved.table.shards.len();
    moved.table.shards[to]
        .slots
        .push(crate::snapshot::SlotSnapshot {
            generation: 0,
            flow,
        });
    assert!(matches!(
        Nat::restore(config(), &moved),
        Err(RestoreError::WrongShard(_))
    ));
    // Another seed: the flows are no longer where their addresses say.
    let mut reseeded = snap.clone();
    reseeded.table.shard_seed ^= 1;
    assert!(Nat::restore(config(), &reseeded).is_err());
    // A free slot that holds a flow.
    let mut bad = snap;
    bad.table.shards[from].free.push(slot as u32);
    assert!(matches!(
        Nat::restore(config(), &bad),
        Err(RestoreError::FreeSlot { .. })
    ));
}
