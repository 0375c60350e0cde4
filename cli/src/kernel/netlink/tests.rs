//! rtnetlink against real namespaces made for each test.

use super::*;
use crate::kernel::netns::run_in_netns;
use crate::kernel::netns::tests::{run, TestNetns};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

const PEER_MAC: [u8; 6] = [0x02, 0x56, 0x53, 0x00, 0x00, 0x2a];

/// `ip -j` output for `args` inside namespace `ns`.
fn ip_json(ns: &TestNetns, args: &[&str]) -> Value {
    let out = run(&[&["ip", "-n", &ns.name, "-j"][..], args].concat());
    serde_json::from_str(&out).unwrap()
}

fn link_json(ns: &TestNetns, dev: &str) -> Value {
    ip_json(ns, &["link", "show", "dev", dev])[0].clone()
}

fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"].as_array().unwrap().iter().any(|f| f == flag)
}

/// A host and a container namespace, and a socket opened in the host one: the socket keeps
/// working on the host namespace from this (test) thread, which never changes namespace.
fn setup() -> (TestNetns, TestNetns, Netlink) {
    let (host, container) = (TestNetns::new(), TestNetns::new());
    let nl = run_in_netns(&host.fd, Netlink::open).unwrap().unwrap();
    (host, container, nl)
}

#[test]
fn a_link_carries_its_alias_and_the_dump_lists_every_link() {
    let (_host, container, mut nl) = setup();
    let index = nl
        .create_veth("vsw-al0", "eth0", container.fd.as_fd(), PEER_MAC, 1500)
        .unwrap();
    let link = nl.link("vsw-al0").unwrap().unwrap();
    assert_eq!(
        (link.index, link.name.as_str(), link.alias),
        (index, "vsw-al0", None)
    );
    nl.set_alias(index, "vswitch /run/vswitch/test.sock")
        .unwrap();
    let link = nl.link("vsw-al0").unwrap().unwrap();
    assert_eq!(
        link.alias.as_deref(),
        Some("vswitch /run/vswitch/test.sock")
    );
    let links = nl.links().unwrap();
    let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    assert!(
        names.contains(&"lo") && names.contains(&"vsw-al0"),
        "{names:?}"
    );
    assert!(links.contains(&link));
    assert_eq!(nl.link("vsw-nothing").unwrap(), None);
}

#[test]
fn veth_peer_is_created_in_the_other_namespace() {
    let (host, container, mut nl) = setup();
    let index = nl
        .create_veth("vsw-h0", "eth0", container.fd.as_fd(), PEER_MAC, 1400)
        .unwrap();

    let peer = link_json(&container, "eth0");
    assert_eq!(peer["address"], "02:56:53:00:00:2a");
    assert_eq!(peer["mtu"], 1400);
    let host_end = link_json(&host, "vsw-h0");
    assert_eq!(host_end["ifindex"], index);
    assert_eq!(host_end["mtu"], 1400);
    assert_eq!(nl.link_index("vsw-h0").unwrap(), Some(index));
    assert_eq!(
        nl.link_index("eth0").unwrap(),
        None,
        "peer is not in the host namespace"
    );

    nl.set_link(index, true, true, Some(1300), Some([2, 0, 0, 0, 0, 1]))
        .unwrap();
    let host_end = link_json(&host, "vsw-h0");
    assert!(has_flag(&host_end, "UP") && has_flag(&host_end, "NOARP"));
    assert_eq!(host_end["mtu"], 1300);
    assert_eq!(host_end["address"], "02:00:00:00:00:01");
    nl.set_link(index, false, false, None, None).unwrap();
    let host_end = link_json(&host, "vsw-h0");
    assert!(!has_flag(&host_end, "UP") && !has_flag(&host_end, "NOARP"));
    assert_eq!(host_end["mtu"], 1300, "MTU unchanged when not given");

    // Exclusive creation: a clash on either end's name is EEXIST.
    let err = nl
        .create_veth("vsw-h0", "eth1", container.fd.as_fd(), PEER_MAC, 1400)
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
    assert!(err.to_string().starts_with("create veth vsw-h0"), "{err}");
    let err = nl
        .create_veth("vsw-h1", "eth0", container.fd.as_fd(), PEER_MAC, 1400)
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
    assert_eq!(nl.link_index("vsw-h1").unwrap(), None);

    // An impossible MTU: the kernel's extended ack explains the EINVAL.
    let err = nl
        .set_link(index, true, true, Some(1 << 20), None)
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
    assert!(err.to_string().to_lowercase().contains("mtu"), "{err}");

    nl.delete_link(index).unwrap();
    assert_eq!(nl.link_index("vsw-h0").unwrap(), None);
    let links = ip_json(&container, &["link", "show"]);
    assert!(!links.to_string().contains("eth0"), "{links}");
    let err = nl.delete_link(index).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
}

#[test]
fn address_and_default_route_inside_the_container() {
    let (host, container, mut nl) = setup();
    let host_index = nl
        .create_veth("vsw-h0", "eth0", container.fd.as_fd(), PEER_MAC, 1500)
        .unwrap();
    nl.set_link(host_index, true, true, None, None).unwrap();

    let gateway = Ipv4Addr::new(10, 88, 0, 1);
    let (dup_addr, dup_route) = run_in_netns(&container.fd, move || {
        let mut nl = Netlink::open().unwrap();
        let index = nl.link_index("eth0").unwrap().unwrap();
        nl.set_link(index, true, false, None, None).unwrap();
        nl.add_address(index, Ipv4Addr::new(10, 88, 0, 2), 24)
            .unwrap();
        nl.add_default_route(gateway).unwrap();
        let dup_addr = nl.add_address(index, Ipv4Addr::new(10, 88, 0, 2), 24);
        (
            dup_addr.unwrap_err(),
            nl.add_default_route(gateway).unwrap_err(),
        )
    })
    .unwrap();
    assert_eq!(dup_addr.errno(), Some(libc::EEXIST), "{dup_addr}");
    assert_eq!(dup_route.errno(), Some(libc::EEXIST), "{dup_route}");

    let addrs = ip_json(&container, &["-4", "addr", "show", "dev", "eth0"]);
    let addr = &addrs[0]["addr_info"][0];
    assert_eq!(addr["local"], "10.88.0.2");
    assert_eq!(addr["prefixlen"], 24);
    assert_eq!(addr["broadcast"], "10.88.0.255");
    let routes = ip_json(&container, &["-4", "route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], "10.88.0.1");
    assert_eq!(routes[0]["dev"], "eth0");
    // Nothing leaked into the host namespace.
    assert_eq!(
        ip_json(&host, &["-4", "addr", "show"]),
        Value::Array(vec![])
    );
    assert_eq!(
        ip_json(&host, &["-4", "route", "show"]),
        Value::Array(vec![])
    );
}

#[test]
fn reads_links_addresses_and_routes_back() {
    let (_host, container, mut nl) = setup();
    nl.create_veth("vsw-h0", "eth0", container.fd.as_fd(), PEER_MAC, 1400)
        .unwrap();
    let gateway = Ipv4Addr::new(10, 88, 0, 1);
    let (before, after, addrs, routes, missing, to) = run_in_netns(&container.fd, move || {
        let mut nl = Netlink::open().unwrap();
        let before = nl.link("eth0").unwrap().unwrap();
        nl.set_link(before.index, true, false, None, None).unwrap();
        nl.add_address(before.index, Ipv4Addr::new(10, 88, 0, 2), 24)
            .unwrap();
        nl.add_default_route(gateway).unwrap();
        let after = nl.link("eth0").unwrap().unwrap();
        let addrs = nl.ipv4_addresses(after.index).unwrap();
        (
            before,
            after,
            addrs,
            nl.ipv4_routes().unwrap(),
            nl.link("eth9"),
            [
                nl.route_to(Ipv4Addr::new(198, 51, 100, 7)).unwrap(),
                nl.route_to(Ipv4Addr::new(10, 88, 0, 2)).unwrap(),
            ],
        )
    })
    .unwrap();
    assert_eq!(before.mac, Some(PEER_MAC));
    assert_eq!(before.mtu, Some(1400));
    assert!(!before.up && after.up);
    assert_eq!(addrs, vec![(Ipv4Addr::new(10, 88, 0, 2), 24)]);
    let default = Ipv4Route {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
        gateway: Some(gateway),
        oif: Some(after.index),
    };
    assert!(routes.contains(&default), "{routes:?}");
    let connected = routes.iter().find(|r| r.prefix_len == 24).unwrap();
    assert_eq!(connected.dst, Ipv4Addr::new(10, 88, 0, 0));
    assert_eq!(missing.unwrap(), None);
    // `ip route get`: out of eth0 by the default route (RTN_UNICAST); its own address is local
    // (RTN_LOCAL), through loopback.
    let to = to.map(|r| (r.kind, r.oif, r.src));
    let (own, lo) = (Ipv4Addr::new(10, 88, 0, 2), Some(1));
    assert_eq!(to, [(1, Some(after.index), Some(own)), (2, lo, Some(own))]);
}

#[test]
fn errors_on_missing_objects() {
    let (_host, _container, mut nl) = setup();
    assert_eq!(nl.link_index("nosuchif0").unwrap(), None);
    assert_eq!(nl.link_index("a-name-longer-than-ifnamsiz").unwrap(), None);
    let err = nl.delete_link(0x7fff_fff0).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
    assert!(matches!(err, NetlinkError::Kernel { .. }));
    let err = nl
        .add_address(0x7fff_fff0, Ipv4Addr::new(10, 0, 0, 1), 24)
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
    // No address in the namespace, so the gateway is unreachable.
    let err = nl
        .add_default_route(Ipv4Addr::new(10, 0, 0, 1))
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
    // The socket is still in sync after errors.
    assert_eq!(nl.link_index("lo").unwrap(), Some(1));
}

#[test]
fn a_clsact_qdisc_is_added_once_and_deleted() {
    let (host, container, mut nl) = setup();
    let index = nl
        .create_veth("vsw-h0", "eth0", container.fd.as_fd(), PEER_MAC, 1500)
        .unwrap();
    let qdiscs = |ns: &TestNetns| {
        let out = run(&["tc", "-n", &ns.name, "-j", "qdisc", "show", "dev", "vsw-h0"]);
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let has_clsact = |q: &Value| q.as_array().unwrap().iter().any(|q| q["kind"] == "clsact");
    assert!(!has_clsact(&qdiscs(&host)));
    assert!(nl.add_clsact(index).unwrap(), "made by us");
    assert!(has_clsact(&qdiscs(&host)), "{}", qdiscs(&host));
    assert!(!nl.add_clsact(index).unwrap(), "already there: not ours");
    nl.delete_clsact(index).unwrap();
    assert!(!has_clsact(&qdiscs(&host)), "{}", qdiscs(&host));
    assert!(nl.delete_clsact(index).is_err(), "nothing left to delete");
    // A filter needs the qdisc's hook.
    let err = nl.delete_bpf_filter(index, TcHook::Ingress, 1).unwrap_err();
    assert!(matches!(err, NetlinkError::Kernel { .. }), "{err}");
}
