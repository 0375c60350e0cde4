//! Port security through the public API: anti-spoofing, per-port policies, isolation, and the
//! forwarding table under a flood of source MACs.

use std::net::Ipv4Addr;

use vswitch_switch::{
    Action, Config, DropReason, Ipv4Prefix, MacAddr, PortId, PortInfo, PortPolicy,
    PortSecurityStats, SpoofKind, Switch,
};

const IPV4: u16 = 0x0800;
const ARP: u16 = 0x0806;
const IPV6: u16 = 0x86dd;
const VLAN: u16 = 0x8100;
const GW: u16 = 0;

fn ip(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, d)
}

/// The station on port `n`: 02:76:0a:00:00:n, 10.0.0.n.
fn station(n: u8) -> MacAddr {
    MacAddr::from_ipv4(ip(n))
}

fn other(k: u8) -> MacAddr {
    MacAddr([0x02, 0xbb, 0, 0, 0, k])
}

fn info(n: u8) -> PortInfo {
    PortInfo {
        mac: station(n),
        ip: Some(ip(n)),
    }
}

/// Ports 1..=n with the default (checked) policy, and the gateway's port 0 as the daemon
/// registers its TAP (an uplink).
fn switch(n: u8) -> Switch {
    switch_cfg(n, Config::default())
}

fn switch_cfg(n: u8, cfg: Config) -> Switch {
    let sw = Switch::new(cfg);
    sw.add_port_with_policy(PortId(GW), info(1), PortPolicy::uplink());
    for p in 2..=n + 1 {
        sw.add_port(PortId(p.into()), info(p));
    }
    sw
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

/// IPv4 from `(mac, addr)` to `dst`.
fn ipv4(dst: MacAddr, src: (MacAddr, Ipv4Addr)) -> Vec<u8> {
    let mut packet = [0u8; 20];
    packet[0] = 0x45;
    packet[12..16].copy_from_slice(&src.1.octets());
    eth(dst, src.0, IPV4, &packet)
}

fn arp_packet(op: u16, sender: (MacAddr, Ipv4Addr), target: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4];
    p.extend(op.to_be_bytes());
    p.extend(sender.0 .0);
    p.extend(sender.1.octets());
    p.extend([0; 6]);
    p.extend(target.octets());
    p
}

/// An ARP request broadcast by `eth_src`, saying `sender`.
fn arp(eth_src: MacAddr, op: u16, sender: (MacAddr, Ipv4Addr), target: Ipv4Addr) -> Vec<u8> {
    eth(
        MacAddr::BROADCAST,
        eth_src,
        ARP,
        &arp_packet(op, sender, target),
    )
}

fn run(sw: &Switch, port: u16, frame: &[u8]) -> Action {
    sw.process(PortId(port), frame, false, 0, &mut [0u8; 64])
}

fn spoofed(kind: SpoofKind) -> Action {
    Action::Drop(DropReason::Spoofed(kind))
}

fn stats(sw: &Switch, port: u16) -> PortSecurityStats {
    sw.port_security(PortId(port)).expect("registered")
}

fn fdb(sw: &Switch) -> Vec<(MacAddr, u16)> {
    (sw.fdb_entries(0).into_iter())
        .map(|e| (e.mac, e.port.0))
        .collect()
}

fn me(n: u8) -> (MacAddr, Ipv4Addr) {
    (station(n), ip(n))
}

#[test]
fn a_checked_port_sends_what_its_station_is() {
    let sw = switch(3);
    // IPv4 from its own MAC and address, ARP for itself, an RFC 5227 probe.
    assert_eq!(run(&sw, 2, &ipv4(MacAddr::BROADCAST, me(2))), Action::Flood);
    assert_eq!(
        run(&sw, 3, &ipv4(station(2), me(3))),
        Action::Forward(PortId(2))
    );
    assert_eq!(
        run(&sw, 2, &arp(station(2), 1, me(2), ip(3))),
        Action::Reply { len: 60 }
    );
    let probe = arp(station(2), 1, (station(2), Ipv4Addr::UNSPECIFIED), ip(9));
    assert_eq!(run(&sw, 2, &probe), Action::Flood);
    assert_eq!(
        run(&sw, 2, &arp(station(2), 2, me(2), ip(3))),
        Action::Flood
    );
    assert_eq!(stats(&sw, 2), PortSecurityStats::default());
    assert_eq!(sw.stats().spoofed, 0);
}

#[test]
fn every_kind_of_spoof_is_dropped_and_counted_by_kind() {
    let sw = switch(3);
    let victim = me(3);
    let cases: &[(&str, Vec<u8>, SpoofKind)] = &[
        (
            "another port's MAC",
            ipv4(station(2), (station(3), ip(4))),
            SpoofKind::Mac,
        ),
        (
            "a made-up MAC",
            ipv4(station(2), (other(1), ip(4))),
            SpoofKind::Mac,
        ),
        (
            "the gateway's MAC",
            ipv4(station(2), (station(1), ip(4))),
            SpoofKind::Mac,
        ),
        (
            "another port's address",
            ipv4(station(2), (station(4), victim.1)),
            SpoofKind::Ip,
        ),
        (
            "an outside address",
            ipv4(station(1), (station(4), Ipv4Addr::new(198, 51, 100, 7))),
            SpoofKind::Ip,
        ),
        (
            "IPv4 from 0.0.0.0",
            ipv4(MacAddr::BROADCAST, (station(4), Ipv4Addr::UNSPECIFIED)),
            SpoofKind::Ip,
        ),
        (
            "gratuitous ARP for another address",
            arp(station(4), 1, (station(4), victim.1), victim.1),
            SpoofKind::Arp,
        ),
        (
            "ARP reply claiming the gateway",
            arp(station(4), 2, (station(4), ip(1)), ip(1)),
            SpoofKind::Arp,
        ),
        (
            "ARP with another sender MAC",
            arp(station(4), 2, victim, ip(1)),
            SpoofKind::Arp,
        ),
        (
            "an ARP reply from 0.0.0.0",
            arp(station(4), 2, (station(4), Ipv4Addr::UNSPECIFIED), ip(1)),
            SpoofKind::Arp,
        ),
        (
            "ARP of another protocol type",
            {
                let mut p = arp_packet(1, me(4), ip(1));
                p[2] = 0x86;
                eth(MacAddr::BROADCAST, station(4), ARP, &p)
            },
            SpoofKind::Arp,
        ),
        (
            "IPv6",
            eth(station(2), station(4), IPV6, &[0x60; 40]),
            SpoofKind::EtherType,
        ),
        (
            "a VLAN tag",
            eth(station(2), station(4), VLAN, &[0; 46]),
            SpoofKind::EtherType,
        ),
        (
            "an 802.3 length field",
            eth(station(2), station(4), 46, &[0; 46]),
            SpoofKind::EtherType,
        ),
    ];
    let mut want = PortSecurityStats::default();
    for (what, frame, kind) in cases {
        assert_eq!(run(&sw, 4, frame), spoofed(*kind), "{what}");
        want.spoofed[SpoofKind::ALL.iter().position(|k| k == kind).unwrap()] += 1;
    }
    assert_eq!(stats(&sw, 4), want);
    assert_eq!(
        (want.spoofed(SpoofKind::Mac), want.spoofed(SpoofKind::Ip)),
        (3, 3)
    );
    assert_eq!(want.spoofed_total(), cases.len() as u64);
    assert_eq!(sw.stats().spoofed, cases.len() as u64);
    assert_eq!(
        stats(&sw, 3),
        PortSecurityStats::default(),
        "counted on the sender's port"
    );
    // Nothing was learned from them, and no ARP was answered.
    assert_eq!(fdb(&sw), vec![]);
    assert_eq!(sw.stats().arp_replies, 0);
    // An IPv4 frame too short to carry a source is malformed.
    let short = {
        let mut f = eth(station(2), station(4), IPV4, &[]);
        f.truncate(14 + 15);
        f
    };
    assert_eq!(run(&sw, 4, &short), Action::Drop(DropReason::Malformed));
}

#[test]
fn a_forged_source_mac_does_not_move_the_victim() {
    let sw = switch(3);
    run(&sw, 3, &ipv4(MacAddr::BROADCAST, me(3)));
    assert_eq!(fdb(&sw), vec![(station(3), 3)]);
    // Port 4 sends as port 3's station (and with its address): dropped before learning, so
    // port 2's frames for 3 still go to 3.
    assert_eq!(
        run(&sw, 4, &ipv4(station(2), me(3))),
        spoofed(SpoofKind::Mac)
    );
    assert_eq!(fdb(&sw), vec![(station(3), 3)]);
    assert_eq!(
        run(&sw, 2, &ipv4(station(3), me(2))),
        Action::Forward(PortId(3))
    );
    assert_eq!(sw.stats().moved, 0);
}

#[test]
fn a_station_without_an_address_sends_no_ipv4_but_probes() {
    let sw = Switch::new(Config::default());
    let info = PortInfo {
        mac: station(5),
        ip: None,
    };
    sw.add_port(PortId(5), info);
    assert_eq!(
        run(&sw, 5, &ipv4(MacAddr::BROADCAST, me(5))),
        spoofed(SpoofKind::Ip)
    );
    let probe = arp(station(5), 1, (station(5), Ipv4Addr::UNSPECIFIED), ip(9));
    assert_eq!(run(&sw, 5, &probe), Action::Flood);
}

#[test]
fn allow_lists_widen_the_checks() {
    let sw = switch(2);
    let policy = PortPolicy {
        allow_macs: vec![other(1)],
        allow_ips: vec!["192.168.7.0/24".parse().unwrap()],
        allow_ethertypes: vec![IPV6],
        ..PortPolicy::default()
    };
    sw.add_port_with_policy(PortId(7), info(7), policy.clone());
    assert_eq!(sw.port_policy(PortId(7)), Some(policy));
    let nested = (other(1), Ipv4Addr::new(192, 168, 7, 20));
    for (what, frame, want) in [
        ("own", ipv4(MacAddr::BROADCAST, me(7)), Action::Flood),
        (
            "allowed MAC and prefix",
            ipv4(MacAddr::BROADCAST, nested),
            Action::Flood,
        ),
        (
            "allowed MAC, own address",
            ipv4(MacAddr::BROADCAST, (other(1), ip(7))),
            Action::Flood,
        ),
        (
            "allowed MAC, other address",
            ipv4(MacAddr::BROADCAST, (other(1), ip(2))),
            spoofed(SpoofKind::Ip),
        ),
        (
            "outside the prefix",
            ipv4(
                MacAddr::BROADCAST,
                (other(1), Ipv4Addr::new(192, 168, 8, 1)),
            ),
            spoofed(SpoofKind::Ip),
        ),
        (
            "a MAC not on the list",
            ipv4(MacAddr::BROADCAST, (other(2), ip(7))),
            spoofed(SpoofKind::Mac),
        ),
        (
            "ARP for the prefix",
            arp(other(1), 1, nested, ip(2)),
            Action::Reply { len: 60 },
        ),
        (
            "ARP for another port's address",
            arp(other(1), 2, (other(1), ip(2)), ip(2)),
            spoofed(SpoofKind::Arp),
        ),
        (
            "IPv6, allowed",
            eth(MacAddr::BROADCAST, other(1), IPV6, &[0x60; 40]),
            Action::Flood,
        ),
        (
            "IPv6 from another MAC",
            eth(MacAddr::BROADCAST, other(3), IPV6, &[0x60; 40]),
            spoofed(SpoofKind::Mac),
        ),
        (
            "a VLAN tag",
            eth(MacAddr::BROADCAST, other(1), VLAN, &[0; 46]),
            spoofed(SpoofKind::EtherType),
        ),
    ] {
        assert_eq!(run(&sw, 7, &frame), want, "{what}");
    }
    // Its allowed MAC is learned (its limit is the one it may send), and nothing else.
    assert_eq!(fdb(&sw), vec![(station(7), 7), (other(1), 7)]);
    assert_eq!(sw.fdb_learned_on(PortId(7)), 1);
    // Replaced by a plain policy, the lists are gone at once.
    sw.add_port(PortId(7), info(7));
    assert_eq!(
        run(&sw, 7, &ipv4(MacAddr::BROADCAST, nested)),
        spoofed(SpoofKind::Mac)
    );
}

#[test]
fn a_trusted_port_sends_anything() {
    let sw = switch(2);
    sw.add_port_with_policy(PortId(8), info(8), PortPolicy::trusted());
    for frame in [
        ipv4(
            MacAddr::BROADCAST,
            (other(1), Ipv4Addr::new(203, 0, 113, 1)),
        ),
        arp(other(2), 2, (other(2), ip(2)), ip(1)),
        eth(MacAddr::BROADCAST, station(8), IPV6, &[0x60; 40]),
    ] {
        assert_eq!(run(&sw, 8, &frame), Action::Flood);
    }
    assert_eq!(stats(&sw, 8), PortSecurityStats::default());
    // Except that no port takes another port's station MAC, trusted or not.
    run(&sw, 2, &ipv4(MacAddr::BROADCAST, me(2)));
    assert_eq!(
        run(&sw, 8, &ipv4(station(3), me(2))),
        Action::Forward(PortId(3))
    );
    assert_eq!(
        run(&sw, 3, &ipv4(station(2), me(3))),
        Action::Forward(PortId(2))
    );
    assert_eq!(stats(&sw, 8).learn_refused, 1);
}

#[test]
fn admit_makes_the_same_decision_and_counts_once() {
    let sw = switch(2);
    let frame = ipv4(station(2), (station(3), ip(2)));
    assert_eq!(
        sw.admit(PortId(3), &frame),
        Err(DropReason::Spoofed(SpoofKind::Ip))
    );
    assert_eq!(sw.admit(PortId(3), &ipv4(station(2), me(3))), Ok(()));
    assert_eq!(
        sw.admit(PortId(9), &ipv4(station(2), me(9))),
        Err(DropReason::UnknownPort)
    );
    assert_eq!(
        sw.admit(
            PortId(3),
            &eth(station(2), MacAddr::BROADCAST, IPV4, &[0; 46])
        ),
        Err(DropReason::Malformed)
    );
    // The gateway's port is not checked: the host routes anything.
    let routed = ipv4(station(2), (station(1), Ipv4Addr::new(198, 51, 100, 9)));
    assert_eq!(sw.admit(PortId(GW), &routed), Ok(()));
    assert_eq!(stats(&sw, 3).spoofed(SpoofKind::Ip), 1);
    assert_eq!((sw.stats().spoofed, sw.stats().malformed), (1, 1));
    assert_eq!(sw.fdb_len(), 0, "admitting learns nothing");
}

#[test]
fn counters_start_again_with_a_new_port() {
    let sw = switch(2);
    run(&sw, 2, &ipv4(station(3), (station(3), ip(3))));
    assert_eq!(stats(&sw, 2).spoofed(SpoofKind::Mac), 1);
    sw.remove_port(PortId(2));
    assert_eq!(sw.port_security(PortId(2)), None);
    sw.add_port(PortId(2), info(2));
    assert_eq!(stats(&sw, 2), PortSecurityStats::default());
}

#[test]
fn an_isolated_port_reaches_the_host_only() {
    let sw = switch(3);
    let isolated = PortPolicy {
        isolated: true,
        ..PortPolicy::default()
    };
    sw.add_port_with_policy(PortId(5), info(5), isolated);
    for p in [1, 2, 3, 4, 5] {
        let from = if p == 1 { GW } else { p };
        run(&sw, from, &ipv4(MacAddr::BROADCAST, me(p as u8)));
    }
    let iso = 5;
    // To and from the gateway: forwarded, ARP answered both ways.
    assert_eq!(
        run(&sw, iso, &ipv4(station(1), me(5))),
        Action::Forward(PortId(GW))
    );
    assert_eq!(
        run(&sw, GW, &ipv4(station(5), me(1))),
        Action::Forward(PortId(5))
    );
    assert_eq!(
        run(&sw, iso, &arp(station(5), 1, me(5), ip(1))),
        Action::Reply { len: 60 }
    );
    assert_eq!(
        run(&sw, GW, &arp(station(1), 1, me(1), ip(5))),
        Action::Reply { len: 60 }
    );
    // To and from another container: dropped, and no ARP answer either way.
    let isolated = Action::Drop(DropReason::Isolated);
    assert_eq!(run(&sw, iso, &ipv4(station(2), me(5))), isolated);
    assert_eq!(run(&sw, 2, &ipv4(station(5), me(2))), isolated);
    assert_eq!(run(&sw, iso, &arp(station(5), 1, me(5), ip(3))), isolated);
    assert_eq!(run(&sw, 3, &arp(station(3), 1, me(3), ip(5))), isolated);
    assert_eq!(stats(&sw, 5).isolated, 2);
    assert_eq!((stats(&sw, 2).isolated, stats(&sw, 3).isolated), (1, 1));
    assert_eq!(sw.stats().isolated, 4);
    // Nor through the gateway's MAC (a host that forwards would route it back in).
    let via_gateway = |from: u8, to: u8| {
        let mut f = ipv4(station(1), me(from));
        f[14 + 16..14 + 20].copy_from_slice(&ip(to).octets());
        f
    };
    assert_eq!(run(&sw, 2, &via_gateway(2, 5)), isolated);
    assert_eq!(run(&sw, iso, &via_gateway(5, 3)), isolated);
    assert_eq!(run(&sw, 2, &via_gateway(2, 3)), Action::Forward(PortId(GW)));
    assert_eq!(
        run(&sw, iso, &via_gateway(5, 1)),
        Action::Forward(PortId(GW))
    );
    assert_eq!(stats(&sw, 5).isolated, 3);
    assert_eq!((stats(&sw, 2).isolated, stats(&sw, 3).isolated), (2, 1));
    assert_eq!(sw.stats().isolated, 6);
    // The others still talk to each other.
    assert_eq!(
        run(&sw, 2, &ipv4(station(3), me(2))),
        Action::Forward(PortId(3))
    );
    assert_eq!(
        run(&sw, 2, &arp(station(2), 1, me(2), ip(3))),
        Action::Reply { len: 60 }
    );
    // Floods: the isolated port's reach the gateway only; the others' skip it; the
    // gateway's reach everyone.
    assert_eq!(
        run(&sw, iso, &ipv4(MacAddr::BROADCAST, me(5))),
        Action::Flood
    );
    let reach = |from: u16| -> Vec<u16> {
        [GW, 2, 3, 4, 5]
            .into_iter()
            .filter(|&to| sw.floods_to(PortId(from), PortId(to)))
            .collect()
    };
    assert_eq!(reach(iso), [GW]);
    assert_eq!(reach(2), [GW, 3, 4]);
    assert_eq!(reach(GW), [2, 3, 4, 5]);
    // Two isolated ports do not reach each other either.
    sw.add_port_with_policy(
        PortId(6),
        info(6),
        PortPolicy {
            isolated: true,
            trusted: true,
            ..PortPolicy::default()
        },
    );
    run(&sw, 6, &ipv4(MacAddr::BROADCAST, me(6)));
    assert_eq!(run(&sw, 6, &ipv4(station(5), me(6))), isolated);
    assert!(!sw.floods_to(PortId(6), PortId(5)));
    // Without isolated ports, everything reaches everything again.
    sw.remove_port(PortId(5));
    sw.remove_port(PortId(6));
    assert_eq!(
        reach(3),
        [GW, 2, 4, 5],
        "no check while no port is isolated"
    );
}

#[test]
fn a_mac_flood_stays_within_its_port_limit() {
    let cfg = Config {
        fdb_capacity: 1000,
        max_macs_per_port: 50,
        ..Config::default()
    };
    let sw = switch_cfg(2, cfg);
    sw.add_port_with_policy(PortId(9), info(9), PortPolicy::trusted());
    let flooder = |i: u32| {
        let [_, a, b, c] = i.to_be_bytes();
        MacAddr([0x02, 0xcc, 0, a, b, c])
    };
    for i in 0..10_000 {
        let f = ipv4(MacAddr::BROADCAST, (flooder(i), ip(9)));
        assert_eq!(run(&sw, 9, &f), Action::Flood);
    }
    assert_eq!(sw.fdb_learned_on(PortId(9)), 50);
    assert_eq!(stats(&sw, 9).learn_refused, 10_000 - 50);
    assert_eq!(sw.stats().learn_refused, 10_000 - 50);
    // A newcomer is learned at once.
    sw.add_port(PortId(10), info(10));
    run(&sw, 10, &ipv4(MacAddr::BROADCAST, me(10)));
    assert_eq!(
        run(&sw, 2, &ipv4(station(10), me(2))),
        Action::Forward(PortId(10))
    );
}

#[test]
fn a_full_table_still_learns_a_new_station() {
    let cfg = Config {
        fdb_capacity: 100,
        max_macs_per_port: 1_000,
        ..Config::default()
    };
    let sw = switch_cfg(2, cfg);
    sw.add_port_with_policy(PortId(9), info(9), PortPolicy::trusted());
    run(&sw, 2, &ipv4(MacAddr::BROADCAST, me(2)));
    for i in 0..1_000u32 {
        let mac = MacAddr([0x02, 0xcc, 0, 0, (i >> 8) as u8, i as u8]);
        sw.process(
            PortId(9),
            &ipv4(MacAddr::BROADCAST, (mac, ip(9))),
            false,
            u64::from(i),
            &mut [0; 64],
        );
    }
    assert_eq!(sw.fdb_len(), 100);
    assert_eq!(sw.stats().fdb_full, 1_000 - 99);
    // A container plugged now is learned, from the flooder's share; port 2 keeps its entry.
    sw.add_port(PortId(10), info(10));
    run(&sw, 10, &ipv4(MacAddr::BROADCAST, me(10)));
    assert_eq!(sw.fdb_len(), 100);
    assert_eq!(sw.stats().evicted, 1);
    assert_eq!(
        run(&sw, 2, &ipv4(station(10), me(2))),
        Action::Forward(PortId(10))
    );
    assert_eq!(
        run(&sw, 10, &ipv4(station(2), me(10))),
        Action::Forward(PortId(2))
    );
    assert_eq!(sw.fdb_learned_on(PortId(9)), 98);
    // Reported by the kernel fast path, the same.
    sw.add_port(PortId(11), info(11));
    sw.seen(station(11), PortId(11), 2_000);
    assert_eq!(sw.stats().evicted, 2);
    assert_eq!(
        run(&sw, 2, &ipv4(station(11), me(2))),
        Action::Forward(PortId(11))
    );
}

#[test]
fn prefixes_are_public() {
    let p = Ipv4Prefix::new(Ipv4Addr::new(10, 0, 0, 0), 8).unwrap();
    assert!(p.contains(ip(200)));
    assert_eq!(Ipv4Prefix::new(ip(1), 8), None);
}
