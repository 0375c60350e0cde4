//! Behaviour of `Switch::process` and friends through the public API only.

use std::net::Ipv4Addr;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
};
use vswitch_switch::{
    Action, Config, DropReason, MacAddr, PortId, PortInfo, PortPolicy, Switch, SwitchStats,
    VNET_HDR_LEN,
};

const AGE: u64 = 10_000;
const IPV4: u16 = 0x0800;
const ARP: u16 = 0x0806;

fn ip(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, d)
}

/// The station on port `n`: 02:76:0a:00:00:n, 10.0.0.n.
fn station(n: u8) -> MacAddr {
    MacAddr::from_ipv4(ip(n))
}

/// Another host behind port `n` (e.g. a nested container), not in the directory.
fn host(n: u8, k: u8) -> MacAddr {
    MacAddr([0x02, 0xaa, 0, 0, n, k])
}

/// A switch with ports 1..=n, each with its station, trusted (no port security, as the
/// daemon's TAP and `plug --trusted` ports): the forwarding tests put other hosts behind ports.
/// Port security has its own tests (`tests/security.rs`).
fn switch_with(n: u8, cfg: Config) -> Switch {
    let sw = Switch::new(cfg);
    for p in 1..=n {
        sw.add_port_with_policy(
            PortId(p.into()),
            PortInfo {
                mac: station(p),
                ip: Some(ip(p)),
            },
            PortPolicy::trusted(),
        );
    }
    sw
}

fn switch(n: u8) -> Switch {
    switch_with(
        n,
        Config {
            fdb_age_ms: AGE,
            ..Config::default()
        },
    )
}

fn eth(dst: MacAddr, src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend(dst.0);
    f.extend(src.0);
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// An IPv4 frame whose source address is the last four bytes of its source MAC (a station's
/// own address, for a station's MAC).
fn ipv4(dst: MacAddr, src: MacAddr) -> Vec<u8> {
    let mut packet = [0x45; 46];
    packet[12..16].copy_from_slice(&src.0[2..]);
    eth(dst, src, IPV4, &packet)
}

fn arp(op: u16, sha: MacAddr, spa: Ipv4Addr, tha: MacAddr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4];
    p.extend(op.to_be_bytes());
    p.extend(sha.0);
    p.extend(spa.octets());
    p.extend(tha.0);
    p.extend(tpa.octets());
    p
}

fn arp_request(src: MacAddr, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let payload = arp(1, src, spa, MacAddr::ZERO, tpa);
    eth(MacAddr::BROADCAST, src, ARP, &payload)
}

/// `process` at time `now` with a roomy reply buffer.
fn run(sw: &Switch, port: u16, frame: &[u8], now: u64) -> Action {
    sw.process(PortId(port), frame, false, now, &mut [0u8; 64])
}

fn fdb(sw: &Switch, now: u64) -> Vec<(MacAddr, u16)> {
    sw.fdb_entries(now)
        .into_iter()
        .map(|e| (e.mac, e.port.0))
        .collect()
}

#[test]
fn defaults_and_sharing() {
    fn shared<T: Send + Sync>() {}
    shared::<Switch>();
    let cfg = Config::default();
    assert_eq!((cfg.fdb_capacity, cfg.fdb_age_ms), (8192, 300_000));
    assert_eq!(VNET_HDR_LEN, 10);
    assert_eq!(PortId(7).to_string(), "7");
}

#[test]
fn learns_sources_and_forwards_to_them() {
    let sw = switch(3);
    // Nothing learned yet: unknown unicast floods, and the source is learned.
    assert_eq!(run(&sw, 1, &ipv4(host(2, 1), host(1, 1)), 0), Action::Flood);
    assert_eq!(fdb(&sw, 0), vec![(host(1, 1), 1)]);
    assert_eq!(
        run(&sw, 2, &ipv4(host(1, 1), host(2, 1)), 1),
        Action::Forward(PortId(1))
    );
    assert_eq!(
        run(&sw, 1, &ipv4(host(2, 1), host(1, 1)), 2),
        Action::Forward(PortId(2))
    );
    // A second host behind port 3.
    assert_eq!(
        run(&sw, 3, &ipv4(host(1, 1), host(3, 1)), 3),
        Action::Forward(PortId(1))
    );
    assert_eq!(
        run(&sw, 1, &ipv4(host(3, 1), host(1, 1)), 4),
        Action::Forward(PortId(3))
    );
    assert_eq!(sw.fdb_len(), 3);
    let s = sw.stats();
    assert_eq!((s.frames, s.learned, s.flooded, s.moved), (5, 3, 1, 0));
}

#[test]
fn fdb_entries_are_sorted_with_ages() {
    let sw = switch(3);
    run(&sw, 3, &ipv4(MacAddr::BROADCAST, station(3)), 1_000);
    run(&sw, 1, &ipv4(MacAddr::BROADCAST, station(1)), 2_000);
    run(&sw, 2, &ipv4(MacAddr::BROADCAST, host(2, 0)), 3_000);
    let entries = sw.fdb_entries(4_000);
    let got: Vec<_> = entries
        .iter()
        .map(|e| (e.mac, e.port.0, e.age_ms))
        .collect();
    assert_eq!(
        got,
        vec![
            (station(1), 1, 2_000),
            (station(3), 3, 3_000),
            (host(2, 0), 2, 1_000)
        ]
    );
}

#[test]
fn a_station_is_reached_before_it_speaks_and_after_it_aged() {
    let sw = switch(3);
    // Registered at plug: frames to it go to its port, not to every port...
    assert_eq!(
        run(&sw, 1, &ipv4(station(2), station(1)), 0),
        Action::Forward(PortId(2))
    );
    // ...also once its learned entry aged...
    run(&sw, 2, &ipv4(MacAddr::BROADCAST, station(2)), 0);
    assert_eq!(
        run(&sw, 1, &ipv4(station(2), station(1)), AGE + 1),
        Action::Forward(PortId(2))
    );
    // ...and a removed port's station is unknown again.
    sw.remove_port(PortId(2));
    assert_eq!(
        run(&sw, 1, &ipv4(station(2), station(1)), AGE + 2),
        Action::Flood
    );
    assert_eq!(sw.stats().flooded, 2);
}

#[test]
fn entries_age_out_unless_refreshed() {
    let sw = switch(3);
    run(&sw, 1, &ipv4(MacAddr::BROADCAST, host(1, 1)), 0);
    run(&sw, 2, &ipv4(MacAddr::BROADCAST, host(2, 1)), 0);
    // host(2, 1) keeps talking; host(1, 1) goes quiet.
    run(&sw, 2, &ipv4(MacAddr::BROADCAST, host(2, 1)), AGE / 2);
    let to_1 = ipv4(host(1, 1), host(3, 1));
    let to_2 = ipv4(host(2, 1), host(3, 1));
    assert_eq!(run(&sw, 3, &to_1, AGE), Action::Forward(PortId(1)));
    // One millisecond later host(1, 1) is absent: flooded, not listed, then expired.
    assert_eq!(run(&sw, 3, &to_1, AGE + 1), Action::Flood);
    assert_eq!(run(&sw, 3, &to_2, AGE + 1), Action::Forward(PortId(2)));
    assert_eq!(fdb(&sw, AGE + 1), vec![(host(2, 1), 2), (host(3, 1), 3)]);
    assert_eq!(sw.fdb_len(), 3);
    assert_eq!(sw.expire(AGE + 1), 1);
    assert_eq!(sw.fdb_len(), 2);
    assert_eq!(sw.expire(AGE + 1), 0);
    // The refreshed entry lives until AGE after its refresh.
    assert_eq!(
        run(&sw, 3, &to_2, AGE / 2 + AGE),
        Action::Forward(PortId(2))
    );
    assert_eq!(sw.expire(AGE / 2 + AGE + 1), 1);
    // A quiet station that speaks again is learned again.
    run(&sw, 1, &ipv4(MacAddr::BROADCAST, host(1, 1)), 3 * AGE);
    assert_eq!(run(&sw, 3, &to_1, 3 * AGE), Action::Forward(PortId(1)));
}

#[test]
fn floods_broadcast_multicast_and_unknown_unicast() {
    let sw = switch(3);
    run(&sw, 2, &ipv4(MacAddr::BROADCAST, station(2)), 0);
    let mcast = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
    let ipv6_mcast = MacAddr([0x33, 0x33, 0, 0, 0, 1]);
    for dst in [MacAddr::BROADCAST, mcast, ipv6_mcast, host(9, 9)] {
        assert_eq!(
            run(&sw, 1, &ipv4(dst, station(1)), 0),
            Action::Flood,
            "{dst}"
        );
    }
    assert_eq!(sw.stats().flooded, 5);
}

#[test]
fn never_hairpins() {
    let sw = switch(2);
    run(&sw, 1, &ipv4(MacAddr::BROADCAST, host(1, 1)), 0);
    // Two hosts behind port 1 talk through something else (a bridge inside the container).
    assert_eq!(
        run(&sw, 1, &ipv4(host(1, 1), host(1, 2)), 0),
        Action::Drop(DropReason::Hairpin)
    );
    assert_eq!(
        run(&sw, 1, &ipv4(host(1, 1), host(1, 1)), 0),
        Action::Drop(DropReason::Hairpin)
    );
    assert_eq!(sw.stats().hairpin, 2);
}

#[test]
fn follows_a_station_that_moves() {
    let sw = switch(3);
    run(&sw, 1, &ipv4(MacAddr::BROADCAST, host(0, 1)), 0);
    assert_eq!(
        run(&sw, 3, &ipv4(host(0, 1), station(3)), 0),
        Action::Forward(PortId(1))
    );
    run(&sw, 2, &ipv4(MacAddr::BROADCAST, host(0, 1)), 10);
    assert_eq!(
        run(&sw, 3, &ipv4(host(0, 1), station(3)), 10),
        Action::Forward(PortId(2))
    );
    assert_eq!(fdb(&sw, 10), vec![(station(3), 3), (host(0, 1), 2)]);
    let s = sw.stats();
    assert_eq!((s.learned, s.moved), (2, 1));
}

#[test]
fn table_is_bounded_and_evicts_aged_entries() {
    let cfg = Config {
        fdb_capacity: 4,
        fdb_age_ms: AGE,
        ..Config::default()
    };
    let sw = switch_with(2, cfg);
    for k in 0..4 {
        run(
            &sw,
            1,
            &ipv4(MacAddr::BROADCAST, host(1, k)),
            u64::from(k) * 1_000,
        );
    }
    // Full of live entries: a fifth MAC is not learned, and frames to it are flooded.
    assert_eq!(
        run(&sw, 2, &ipv4(host(1, 0), host(2, 0)), 3_500),
        Action::Forward(PortId(1))
    );
    assert_eq!(sw.stats().fdb_full, 1);
    assert_eq!(sw.fdb_len(), 4);
    // (host(1, 3) was seen less than a second ago: this does not refresh it.)
    assert_eq!(
        run(&sw, 1, &ipv4(host(2, 0), host(1, 3)), 3_500),
        Action::Flood
    );
    // Later, host(1, 0) and host(1, 1) have aged: learning evicts them and goes on.
    let now = AGE + 1_500;
    assert_eq!(
        run(&sw, 2, &ipv4(MacAddr::BROADCAST, host(2, 0)), now),
        Action::Flood
    );
    assert_eq!(
        fdb(&sw, now),
        vec![(host(1, 2), 1), (host(1, 3), 1), (host(2, 0), 2)]
    );
    assert_eq!(sw.fdb_len(), 3);
    assert_eq!(sw.stats().aged, 2, "the two evicted entries count as aged");
    run(&sw, 2, &ipv4(MacAddr::BROADCAST, host(2, 1)), now);
    run(&sw, 2, &ipv4(MacAddr::BROADCAST, host(2, 2)), now);
    let s = sw.stats();
    assert_eq!((s.fdb_full, s.learned, sw.fdb_len()), (2, 6, 4));
}

#[test]
fn aging_and_flushes_are_counted_and_a_flush_can_name_a_port() {
    let sw = switch(3);
    for (port, k) in [(1, 0), (1, 1), (2, 0), (3, 0)] {
        run(&sw, port, &ipv4(MacAddr::BROADCAST, host(port as u8, k)), 0);
    }
    run(&sw, 3, &ipv4(MacAddr::BROADCAST, host(3, 0)), AGE);
    assert_eq!(sw.expire(AGE + 1), 3);
    assert_eq!(sw.stats().aged, 3);
    assert_eq!(fdb(&sw, AGE + 1), vec![(host(3, 0), 3)]);

    for (port, k) in [(1, 0), (1, 1), (2, 0)] {
        run(
            &sw,
            port,
            &ipv4(MacAddr::BROADCAST, host(port as u8, k)),
            AGE + 1,
        );
    }
    assert_eq!(sw.flush_fdb(Some(PortId(1))), 2);
    assert_eq!(
        fdb(&sw, AGE + 1),
        vec![(host(2, 0), 2), (host(3, 0), 3)],
        "only port 1's MACs go"
    );
    // Frames to a flushed MAC are flooded until it is learned again.
    assert_eq!(
        run(&sw, 2, &ipv4(host(1, 0), host(2, 0)), AGE + 1),
        Action::Flood
    );
    assert_eq!(sw.flush_fdb(None), 2);
    assert_eq!(sw.fdb_len(), 0);
    assert_eq!(sw.stats().aged, 3, "a flush is not aging");
}

#[test]
fn zero_capacity_learns_nothing_and_floods() {
    let cfg = Config {
        fdb_capacity: 0,
        fdb_age_ms: AGE,
        ..Config::default()
    };
    let sw = switch_with(2, cfg);
    run(&sw, 1, &ipv4(MacAddr::BROADCAST, host(1, 1)), 0);
    assert_eq!(run(&sw, 2, &ipv4(host(1, 1), host(2, 1)), 0), Action::Flood);
    assert_eq!((sw.fdb_len(), sw.stats().fdb_full), (0, 2));
}

#[test]
fn removed_port_is_forgotten_with_its_macs() {
    let sw = switch(3);
    run(&sw, 1, &ipv4(MacAddr::BROADCAST, station(1)), 0);
    run(&sw, 1, &ipv4(MacAddr::BROADCAST, host(1, 1)), 0);
    run(&sw, 2, &ipv4(MacAddr::BROADCAST, station(2)), 0);
    sw.remove_port(PortId(1));
    assert_eq!(fdb(&sw, 0), vec![(station(2), 2)]);
    assert_eq!(sw.port_info(PortId(1)), None);
    assert_eq!(run(&sw, 2, &ipv4(station(1), station(2)), 0), Action::Flood);
    // Its frames are refused and its station no longer answered for.
    assert_eq!(
        run(&sw, 1, &ipv4(station(2), station(1)), 0),
        Action::Drop(DropReason::UnknownPort)
    );
    assert_eq!(
        run(&sw, 2, &arp_request(station(2), ip(2), ip(1)), 0),
        Action::Flood
    );
    assert_eq!(fdb(&sw, 0), vec![(station(2), 2)]);
    // Re-adding the port starts from scratch.
    let info = PortInfo {
        mac: station(1),
        ip: Some(ip(1)),
    };
    sw.add_port(PortId(1), info.clone());
    assert_eq!(sw.port_info(PortId(1)), Some(info));
    assert_eq!(
        run(&sw, 1, &ipv4(station(2), station(1)), 0),
        Action::Forward(PortId(2))
    );
}

#[test]
fn unregistered_port_is_refused() {
    let sw = switch(1);
    assert_eq!(
        run(&sw, 9, &ipv4(station(1), station(9)), 0),
        Action::Drop(DropReason::UnknownPort)
    );
    assert_eq!(sw.fdb_len(), 0);
}

#[test]
fn answers_arp_for_a_station_on_another_port() {
    let sw = switch(3);
    let req = arp_request(station(1), ip(1), ip(2));
    let mut buf = [0xeeu8; 64];
    let action = sw.process(PortId(1), &req, false, 0, &mut buf);
    assert_eq!(action, Action::Reply { len: 60 });
    let reply = &buf[..60];

    // Byte for byte.
    let mut expected = vec![];
    expected.extend(station(1).0); // to the requester
    expected.extend(station(2).0); // from the answered station
    expected.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    expected.extend(station(2).0);
    expected.extend(ip(2).octets());
    expected.extend(station(1).0);
    expected.extend(ip(1).octets());
    expected.resize(60, 0);
    assert_eq!(reply, &expected[..]);
    assert_eq!(buf[60..], [0xee; 4], "nothing written past the reply");

    // And as an independent parser reads it.
    let frame = EthernetFrame::new_checked(reply).unwrap();
    assert_eq!(frame.dst_addr(), EthernetAddress(station(1).0));
    assert_eq!(frame.src_addr(), EthernetAddress(station(2).0));
    assert_eq!(frame.ethertype(), EthernetProtocol::Arp);
    let packet = ArpPacket::new_checked(frame.payload()).unwrap();
    assert_eq!(
        ArpRepr::parse(&packet).unwrap(),
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(station(2).0),
            source_protocol_addr: ip(2),
            target_hardware_addr: EthernetAddress(station(1).0),
            target_protocol_addr: ip(1),
        }
    );

    // The requester was learned; the answer is counted, nothing flooded.
    assert_eq!(fdb(&sw, 0), vec![(station(1), 1)]);
    let s = sw.stats();
    assert_eq!((s.arp_replies, s.flooded, s.learned), (1, 0, 1));
}

#[test]
fn answers_arp_to_the_requesting_host_not_the_port_station() {
    let sw = switch(3);
    // A host behind port 3 that is not port 3's station, probing for a conflict (spa 0).
    let req = arp_request(host(3, 7), Ipv4Addr::UNSPECIFIED, ip(1));
    let mut buf = [0u8; 60];
    assert_eq!(
        sw.process(PortId(3), &req, false, 0, &mut buf),
        Action::Reply { len: 60 }
    );
    let packet = ArpPacket::new_checked(&buf[14..]).unwrap();
    assert_eq!(&buf[..6], &host(3, 7).0);
    assert_eq!(packet.target_hardware_addr(), &host(3, 7).0);
    assert_eq!(packet.target_protocol_addr(), &[0, 0, 0, 0]);
    assert_eq!(packet.source_hardware_addr(), &station(1).0);
}

#[test]
fn unicast_arp_request_is_answered_too() {
    // Linux re-validates a neighbour with a unicast request.
    let sw = switch(2);
    let payload = arp(1, station(1), ip(1), station(2), ip(2));
    let req = eth(station(2), station(1), ARP, &payload);
    assert_eq!(run(&sw, 1, &req, 0), Action::Reply { len: 60 });
}

#[test]
fn arp_for_an_unknown_address_is_flooded() {
    let sw = switch(2);
    let req = arp_request(station(1), ip(1), ip(99));
    assert_eq!(run(&sw, 1, &req, 0), Action::Flood);
    // A port without an address answers for nothing.
    sw.add_port(
        PortId(5),
        PortInfo {
            mac: station(5),
            ip: None,
        },
    );
    let req = arp_request(station(1), ip(1), ip(5));
    assert_eq!(run(&sw, 1, &req, 0), Action::Flood);
    assert_eq!(sw.stats().arp_replies, 0);
}

#[test]
fn arp_for_own_address_gets_no_answer() {
    let sw = switch(2);
    // Duplicate address detection: sender IP 0.0.0.0, target = own address.
    let probe = arp_request(station(1), Ipv4Addr::UNSPECIFIED, ip(1));
    assert_eq!(run(&sw, 1, &probe, 0), Action::Drop(DropReason::ArpForSelf));
    let announce = arp_request(station(1), ip(1), ip(1));
    assert_eq!(
        run(&sw, 1, &announce, 0),
        Action::Drop(DropReason::ArpForSelf)
    );
    assert_eq!(sw.stats().arp_replies, 0);
}

#[test]
fn other_arp_is_forwarded_like_any_frame() {
    let sw = switch(2);
    run(&sw, 2, &ipv4(MacAddr::BROADCAST, station(2)), 0);
    // A reply.
    let payload = arp(2, station(1), ip(1), station(2), ip(2));
    let reply = eth(station(2), station(1), ARP, &payload);
    assert_eq!(run(&sw, 1, &reply, 0), Action::Forward(PortId(2)));
    // A request for another protocol type.
    let mut payload = arp(1, station(1), ip(1), MacAddr::ZERO, ip(2));
    payload[2] = 0x86;
    payload[3] = 0xdd;
    let odd = eth(MacAddr::BROADCAST, station(1), ARP, &payload);
    assert_eq!(run(&sw, 1, &odd, 0), Action::Flood);
}

#[test]
fn small_reply_buffer_falls_back_to_flooding() {
    let sw = switch(2);
    let req = arp_request(station(1), ip(1), ip(2));
    for size in [0, 1, 59] {
        let mut buf = vec![0u8; size];
        assert_eq!(
            sw.process(PortId(1), &req, false, 0, &mut buf),
            Action::Flood
        );
    }
    assert_eq!(sw.stats().arp_replies, 0);
}

#[test]
fn gratuitous_arp_announces_a_station() {
    let sw = switch(2);
    let mut buf = [0xeeu8; 64];
    assert_eq!(sw.gratuitous_arp(PortId(2), &mut buf), Some(60));
    let mut expected = vec![0xff; 6];
    expected.extend(station(2).0);
    expected.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    expected.extend(station(2).0);
    expected.extend(ip(2).octets());
    expected.extend([0; 6]);
    expected.extend(ip(2).octets());
    expected.resize(60, 0);
    assert_eq!(&buf[..60], &expected[..]);

    let frame = EthernetFrame::new_checked(&buf[..60]).unwrap();
    assert_eq!(frame.dst_addr(), EthernetAddress::BROADCAST);
    let packet = ArpPacket::new_checked(frame.payload()).unwrap();
    assert_eq!(
        ArpRepr::parse(&packet).unwrap(),
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(station(2).0),
            source_protocol_addr: ip(2),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: ip(2),
        }
    );

    assert_eq!(sw.gratuitous_arp(PortId(2), &mut [0u8; 59]), None);
    assert_eq!(sw.gratuitous_arp(PortId(9), &mut buf), None);
    sw.add_port(
        PortId(3),
        PortInfo {
            mac: station(3),
            ip: None,
        },
    );
    assert_eq!(sw.gratuitous_arp(PortId(3), &mut buf), None);
}

#[test]
fn own_transmissions_are_dropped_unlearned() {
    let sw = switch(2);
    // The switch's own ARP reply from station(2), seen again on port 1's AF_PACKET socket.
    let mine = ipv4(station(1), station(2));
    assert_eq!(
        sw.process(PortId(1), &mine, true, 0, &mut [0u8; 64]),
        Action::Drop(DropReason::Outgoing)
    );
    // Even when malformed or on an unknown port.
    assert_eq!(
        sw.process(PortId(9), &[], true, 0, &mut []),
        Action::Drop(DropReason::Outgoing)
    );
    assert_eq!(sw.fdb_len(), 0);
    let s = sw.stats();
    assert_eq!((s.frames, s.outgoing, s.learned, s.malformed), (2, 2, 0, 0));
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    let sw = switch(2);
    let ok = ipv4(station(2), station(1));
    for len in 0..14 {
        assert_eq!(
            run(&sw, 1, &ok[..len], 0),
            Action::Drop(DropReason::Malformed)
        );
    }
    // Multicast, broadcast or zero source.
    for src in [
        MacAddr([1, 0, 0x5e, 0, 0, 1]),
        MacAddr::BROADCAST,
        MacAddr::ZERO,
    ] {
        let frame = ipv4(station(2), src);
        assert_eq!(run(&sw, 1, &frame, 0), Action::Drop(DropReason::Malformed));
    }
    // ARP cut short (no Ethernet padding).
    let req = arp_request(station(1), ip(1), ip(2));
    for len in 14..42 {
        assert_eq!(
            run(&sw, 1, &req[..len], 0),
            Action::Drop(DropReason::Malformed)
        );
    }
    assert_eq!(run(&sw, 1, &req[..42], 0), Action::Reply { len: 60 });
    // A bare 14-byte IPv4 frame is not the switch's business: forwarded to its station.
    assert_eq!(run(&sw, 1, &ok[..14], 0), Action::Forward(PortId(2)));
    assert_eq!(sw.fdb_len(), 1);
    assert_eq!(sw.stats().malformed, 14 + 3 + 28);
}

/// xorshift64*: a fixed-seed source of random-ish frames.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_bytes_never_panic() {
    let sw = switch_with(
        8,
        Config {
            fdb_capacity: 64,
            fdb_age_ms: 1_000,
            ..Config::default()
        },
    );
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    // Every short length, many times.
    for round in 0..200 {
        for len in 0..60 {
            let frame = rng.bytes(len);
            let action = run(&sw, 1, &frame, round);
            if len < 14 {
                assert_eq!(action, Action::Drop(DropReason::Malformed));
            }
        }
    }
    assert!(sw.stats().malformed >= 200 * 14);
    // Longer frames biased towards ARP and known addresses, random ports, buffers and times.
    let mut now = 0;
    for _ in 0..20_000 {
        let len = (rng.next() % 1600) as usize;
        let mut frame = rng.bytes(len);
        let r = rng.next();
        if r & 1 == 0 && len >= 14 {
            frame[12..14].copy_from_slice(&ARP.to_be_bytes());
            if len >= 42 && r & 2 == 0 {
                frame[14..20].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
                frame[20..22].copy_from_slice(&[0, (r >> 8) as u8 & 3]);
                frame[38..42].copy_from_slice(&ip((r >> 16) as u8 & 15).octets());
            }
        }
        if r & 4 == 0 && len >= 12 {
            frame[6..12].copy_from_slice(&station((r >> 24) as u8 & 15).0);
        }
        let port = PortId((r >> 32) as u16 & 15);
        let mut buf = vec![0u8; (r >> 40) as usize % 80];
        now += (r >> 48) % 50;
        let _ = sw.process(port, &frame, r & 8 == 0, now, &mut buf);
        if r % 97 == 0 {
            sw.expire(now);
        }
    }
    assert!(sw.fdb_len() <= 64);
    let s: SwitchStats = sw.stats();
    assert_eq!(s.frames, 200 * 60 + 20_000);
}

#[test]
fn concurrent_learning_never_resurrects_a_removed_port() {
    // Two workers learn new MACs on port 2 (every frame takes the table's write path) while
    // port 2 is removed. The removal is forced into the middle of their work: it starts only
    // once both have learned for a while, and they go on sending frames on port 2 after it, so
    // frames in flight meet the removal on every round. No entry on port 2 may survive it.
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    const ROUNDS: u32 = 50;
    const AFTER: u32 = 2_000;
    for round in 0..ROUNDS {
        // Room for everything the workers learn, however long the removal takes to come.
        let cfg = Config {
            fdb_capacity: 1 << 22,
            fdb_age_ms: AGE,
            // Every MAC learned: the race is between learning and the removal.
            max_macs_per_port: u32::MAX,
        };
        let sw = switch_with(2, cfg);
        let removed = AtomicBool::new(false);
        let learned = [AtomicU32::new(0), AtomicU32::new(0)];
        std::thread::scope(|scope| {
            for worker in 0..2u8 {
                let (sw, removed, learned) = (&sw, &removed, &learned);
                scope.spawn(move || {
                    let mut after = 0;
                    for k in 0u32.. {
                        let [_, a, b, c] = k.to_be_bytes();
                        let src = MacAddr([2, 0xbb, worker, a, b, c]);
                        let _ = run(sw, 2, &ipv4(station(1), src), 0);
                        learned[usize::from(worker)].fetch_add(1, Ordering::Relaxed);
                        if removed.load(Ordering::Acquire) {
                            after += 1;
                            if after == AFTER {
                                break;
                            }
                        }
                    }
                });
            }
            while learned.iter().any(|n| n.load(Ordering::Relaxed) < 200) {
                std::thread::yield_now();
            }
            assert!(sw.fdb_len() > 0, "round {round}: nothing learned on port 2");
            sw.remove_port(PortId(2));
            removed.store(true, Ordering::Release);
        });
        let left: Vec<_> = sw
            .fdb_entries(0)
            .into_iter()
            .filter(|e| e.port == PortId(2))
            .collect();
        assert!(
            left.is_empty(),
            "round {round}: {} entries on removed port 2, e.g. {:?}",
            left.len(),
            left.first()
        );
    }
}

#[test]
fn frames_seen_elsewhere_refresh_or_learn_but_never_move() {
    // The edge's kernel fast path reports the sources it forwarded for.
    let sw = switch(3);
    run(&sw, 1, &ipv4(MacAddr::BROADCAST, station(1)), 0);
    sw.seen(station(1), PortId(1), AGE);
    let to_1 = ipv4(station(1), station(3));
    assert_eq!(
        run(&sw, 3, &to_1, AGE + AGE / 2),
        Action::Forward(PortId(1))
    );
    // Unknown: learned, as from a frame.
    sw.seen(station(2), PortId(2), AGE);
    let all = vec![(station(1), 1), (station(2), 2), (station(3), 3)];
    assert_eq!(fdb(&sw, AGE), all);
    // Learned on another port since: the report is stale, the entry stays where it is.
    sw.seen(station(2), PortId(1), AGE + 1);
    assert_eq!(fdb(&sw, AGE + 1), all);
    assert_eq!(sw.stats().learned, 3);
}

#[test]
fn a_restored_fdb_forwards_and_ages_as_the_one_it_came_from() {
    let old = switch(3);
    run(&old, 1, &ipv4(MacAddr::BROADCAST, host(1, 1)), 1_000);
    run(&old, 2, &ipv4(MacAddr::BROADCAST, host(2, 7)), 3_000);
    let entries = old.fdb_entries(4_000);
    // A new switch (another process) with the same ports takes the table over.
    let new = switch(3);
    let mut unknown = entries.clone();
    unknown.push(vswitch_switch::FdbEntry {
        mac: host(9, 9),
        port: PortId(9),
        age_ms: 0,
    });
    new.restore_fdb(&unknown, 4_000);
    assert_eq!(new.fdb_entries(4_000), entries, "same entries, same ages");
    let to_host = ipv4(host(2, 7), host(3, 1));
    assert_eq!(run(&new, 3, &to_host, 4_000), Action::Forward(PortId(2)));
    // host(1, 1), last seen at 1 000, ages out at the same time in both.
    let to_1 = ipv4(host(1, 1), host(3, 1));
    assert_eq!(run(&new, 3, &to_1, 1_000 + AGE), Action::Forward(PortId(1)));
    assert_eq!(run(&new, 3, &to_1, 1_001 + AGE), Action::Flood);
    assert_eq!(run(&old, 3, &to_1, 1_001 + AGE), Action::Flood);
}
