//! The daemon's snapshot ([`Stats`], the same one `vswitch stats` prints) as Prometheus
//! metrics. Every name starts with `vswitch_` and carries its unit (`_bytes`, `_seconds`,
//! `_frames`, counters `_total`); ports are labelled by `port` (the host interface) and, for a
//! container, by what names it: `pid`, `netns`, or a runtime's `container_id` and `network`.

use crate::control::{PortView, Stats};

use super::exposition::{Exposition, Family, Kind};

/// Renders every counter of `s`.
pub fn render(s: &Stats) -> String {
    let mut page = Exposition::new();
    daemon(&mut page, s);
    ports(&mut page, s);
    container_ports(&mut page, s);
    switch(&mut page, s);
    nat(&mut page, s);
    nat_traffic(&mut page, s);
    fds(&mut page, s);
    dns(&mut page, s);
    work(&mut page, s);
    page.finish()
}

fn daemon(page: &mut Exposition, s: &Stats) {
    page.family(
        "vswitch_build_info",
        Kind::Gauge,
        "The daemon's version (always 1).",
    )
    .int(&[("version", &s.version)], 1);
    page.family(
        "vswitch_start_time_seconds",
        Kind::Gauge,
        "When the daemon started, in seconds since the Unix epoch.",
    )
    .sample(&[], s.start_time);
    page.family("vswitch_containers", Kind::Gauge, "Containers plugged.")
        .int(&[], s.containers as u64);
    page.family(
        "vswitch_subnet_free_addresses",
        Kind::Gauge,
        "Addresses of the containers' subnet a plug can still have.",
    )
    .int(&[("subnet", &s.subnet.cidr)], s.subnet.free);
}

/// A port's counter split into the daemon's part and the fast path's.
type Split = fn(&PortView) -> (u64, u64);

/// The labels that name a port: its host interface, its kind, and its container.
fn port_labels(p: &PortView) -> Vec<(&'static str, String)> {
    let mut labels = vec![("port", p.host_ifname.clone()), ("kind", p.kind.clone())];
    labels.extend(p.pid.map(|pid| ("pid", pid.to_string())));
    labels.extend(p.netns.clone().map(|n| ("netns", n)));
    labels.extend(p.container_id.clone().map(|id| ("container_id", id)));
    labels.extend(p.network.clone().map(|n| ("network", n)));
    labels
}

/// One sample per port, labelled by [`port_labels`] plus `extra`.
fn per_port(
    f: &mut Family<'_>,
    ports: &[PortView],
    extra: &[(&str, &str)],
    value: impl Fn(&PortView) -> u64,
) {
    for p in ports {
        let owned = port_labels(p);
        let mut labels: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        labels.extend_from_slice(extra);
        f.int(&labels, value(p));
    }
}

fn ports(page: &mut Exposition, s: &Stats) {
    let info = &mut page.family(
        "vswitch_port_info",
        Kind::Gauge,
        "A port of the switch (always 1): its address, MAC and kernel fast path hook.",
    );
    for p in &s.ports {
        let ip = p.ip.to_string();
        let extra = [
            ("ip", ip.as_str()),
            ("mac", p.mac.as_str()),
            ("fast_path", p.fast_path.as_str()),
        ];
        per_port(info, std::slice::from_ref(p), &extra, |_| 1);
    }
    // What the daemon switched and what the kernel fast path carried, apart.
    let traffic: [(&'static str, &str, Split); 4] = [
        (
            "vswitch_port_rx_frames_total",
            "Frames received on the port, by who switched them: the daemon, or the kernel fast \
             path.",
            |p| (p.rx_frames - p.fast_rx_frames, p.fast_rx_frames),
        ),
        (
            "vswitch_port_rx_bytes_total",
            "Bytes of the frames received on the port (Ethernet headers included), by path.",
            |p| (p.rx_bytes - p.fast_rx_bytes, p.fast_rx_bytes),
        ),
        (
            "vswitch_port_tx_frames_total",
            "Frames sent out of the port, by who switched them.",
            |p| (p.tx_frames - p.fast_tx_frames, p.fast_tx_frames),
        ),
        (
            "vswitch_port_tx_bytes_total",
            "Bytes of the frames sent out of the port, by path.",
            |p| (p.tx_bytes - p.fast_tx_bytes, p.fast_tx_bytes),
        ),
    ];
    for (name, help, split) in traffic {
        let f = &mut page.family(name, Kind::Counter, help);
        per_port(f, &s.ports, &[("path", "daemon")], |p| split(p).0);
        per_port(f, &s.ports, &[("path", "fast")], |p| split(p).1);
    }
    let f = &mut page.family(
        "vswitch_port_dropped_frames_total",
        Kind::Counter,
        "Frames lost on the port: received and refused as malformed (invalid), as spoofed \
         (port security) or as crossing an isolation (isolated), refused by the port's sockets \
         on the way out (tx_failed), dropped by the kernel before the daemon read them (kernel: \
         its receive queue was full).",
    );
    // `rx_invalid` counts every frame refused on the way in; port security's share apart.
    let invalid = |p: &PortView| {
        (p.rx_invalid)
            .saturating_sub(p.spoofed.total())
            .saturating_sub(p.isolation_drops)
    };
    per_port(f, &s.ports, &[("reason", "invalid")], invalid);
    per_port(f, &s.ports, &[("reason", "spoofed")], |p| p.spoofed.total());
    per_port(f, &s.ports, &[("reason", "isolated")], |p| {
        p.isolation_drops
    });
    per_port(f, &s.ports, &[("reason", "tx_failed")], |p| p.tx_failed);
    per_port(f, &s.ports, &[("reason", "kernel")], |p| p.kernel_drops);
    // Only the ports the daemon serves itself have receive coalescing.
    let coalescing: Vec<PortView> = (s.ports.iter())
        .filter(|p| p.coalescing.is_some())
        .cloned()
        .collect();
    let f = &mut page.family(
        "vswitch_port_rx_coalescing",
        Kind::Gauge,
        "1 while the kernel merges the datagrams a port receives before the daemon reads \
         them (a flood is coming in), 0 otherwise.",
    );
    per_port(f, &coalescing, &[], |p| {
        u64::from(p.coalescing.as_deref() == Some("on"))
    });
    let f = &mut page.family(
        "vswitch_port_rx_coalesced_total",
        Kind::Counter,
        "Times receive coalescing came on for the port.",
    );
    per_port(f, &coalescing, &[], |p| p.coalesced);
}

/// What only a container's port has: spoofed frames, its NAT.
fn container_ports(page: &mut Exposition, s: &Stats) {
    let containers: Vec<PortView> = (s.ports.iter())
        .filter(|p| p.kind != "tap")
        .cloned()
        .collect();
    let f = &mut page.family(
        "vswitch_port_spoofed_frames_total",
        Kind::Counter,
        "Spoofed frames the port's container sent, dropped, by the field that was not its own: \
         the source MAC (mac), the IPv4 source (ip), the ARP sender (arp), an EtherType it may \
         not send (ethertype).",
    );
    for (field, count) in [
        ("mac", (|p| p.spoofed.mac) as fn(&PortView) -> u64),
        ("ip", |p| p.spoofed.ip),
        ("arp", |p| p.spoofed.arp),
        ("ethertype", |p| p.spoofed.ethertype),
    ] {
        per_port(f, &containers, &[("field", field)], count);
    }
    let f = &mut page.family(
        "vswitch_port_nat_flows",
        Kind::Gauge,
        "NAT flows of the port's container now.",
    );
    per_port(f, &containers, &[], |p| p.nat_flows);
    let f = &mut page.family(
        "vswitch_port_nat_packets_total",
        Kind::Counter,
        "IPv4 packets of the port's container through the NAT, out of it and into it.",
    );
    per_port(f, &containers, &[("direction", "out")], |p| {
        p.nat_packets_out
    });
    per_port(f, &containers, &[("direction", "in")], |p| p.nat_packets_in);
    let f = &mut page.family(
        "vswitch_port_nat_bytes_total",
        Kind::Counter,
        "Bytes of those packets (IPv4 headers included).",
    );
    per_port(f, &containers, &[("direction", "out")], |p| p.nat_bytes_out);
    per_port(f, &containers, &[("direction", "in")], |p| p.nat_bytes_in);
    let f = &mut page.family(
        "vswitch_port_nat_refused_flows_total",
        Kind::Counter,
        "New NAT flows of the port's container refused (the table, or its share of it, was \
         full).",
    );
    per_port(f, &containers, &[], |p| p.nat_refused);
}

fn switch(page: &mut Exposition, s: &Stats) {
    let w = &s.switch;
    page.family(
        "vswitch_switch_frames_total",
        Kind::Counter,
        "Frames the daemon's switch decided on (not those of the kernel fast path).",
    )
    .int(&[], w.frames);
    page.family(
        "vswitch_switch_flooded_frames_total",
        Kind::Counter,
        "Frames flooded to every other port: broadcast, multicast, unknown destination.",
    )
    .int(&[], w.flooded);
    page.family(
        "vswitch_switch_dropped_frames_total",
        Kind::Counter,
        "Frames the switch dropped: malformed, back out of the port they came in by \
         (hairpin), or the daemon's own seen again (own).",
    )
    .int(&[("reason", "malformed")], w.malformed)
    .int(&[("reason", "hairpin")], w.hairpin)
    .int(&[("reason", "own")], w.outgoing);
    page.family(
        "vswitch_switch_arp_replies_total",
        Kind::Counter,
        "ARP requests the switch answered itself.",
    )
    .int(&[], w.arp_replies);
    page.family(
        "vswitch_fdb_entries",
        Kind::Gauge,
        "MAC addresses in the forwarding table.",
    )
    .int(&[], w.fdb_entries as u64);
    page.family(
        "vswitch_fdb_capacity_entries",
        Kind::Gauge,
        "Most MAC addresses the forwarding table holds (--fdb-size).",
    )
    .int(&[], w.fdb_capacity as u64);
    for (name, help, v) in [
        (
            "vswitch_fdb_learned_total",
            "MAC addresses learned.",
            w.learned,
        ),
        (
            "vswitch_fdb_moved_total",
            "Learned MAC addresses that moved to another port.",
            w.moved,
        ),
        (
            "vswitch_fdb_aged_total",
            "Learned MAC addresses forgotten because they aged.",
            w.aged,
        ),
        (
            "vswitch_fdb_flushed_total",
            "Learned MAC addresses forgotten by a flush (vswitch fdb --flush).",
            w.flushed,
        ),
        (
            "vswitch_fdb_full_total",
            "Source MAC addresses not learned because the table was full.",
            w.fdb_full,
        ),
        (
            "vswitch_fdb_evicted_total",
            "Entries evicted from a full table to learn a newly plugged container's MAC.",
            w.fdb_evicted,
        ),
        (
            "vswitch_fdb_refused_total",
            "Source MAC addresses not learned: over their port's limit, or another port's \
             station.",
            w.fdb_refused,
        ),
    ] {
        page.family(name, Kind::Counter, help).int(&[], v);
    }
}

fn nat(page: &mut Exposition, s: &Stats) {
    let n = &s.nat;
    let f = &mut page.family(
        "vswitch_nat_flows",
        Kind::Gauge,
        "NAT flows now, by protocol and state (TCP states as netfilter names them; UDP and \
         ICMP: UNREPLIED or REPLIED).",
    );
    for c in &n.by_state {
        f.int(&[("proto", &c.proto), ("state", &c.state)], c.flows as u64);
    }
    page.family(
        "vswitch_nat_flows_max",
        Kind::Gauge,
        "Most NAT flows the table holds (--max-flows).",
    )
    .int(&[], n.max_flows as u64);
    for (name, help, v) in [
        (
            "vswitch_nat_flows_created_total",
            "NAT flows created.",
            n.created,
        ),
        (
            "vswitch_nat_flows_expired_total",
            "NAT flows reclaimed after their timeout.",
            n.expired,
        ),
        (
            "vswitch_nat_flows_removed_total",
            "NAT flows removed before their timeout: a failed connect, a finished published \
             connection, a container gone, conntrack -D.",
            n.removed,
        ),
    ] {
        page.family(name, Kind::Counter, help).int(&[], v);
    }
    page.family(
        "vswitch_nat_flows_refused_total",
        Kind::Counter,
        "New NAT flows refused: the table was full, the container's share of it was used up, \
         or the container had too many TCP connections connecting (half_open).",
    )
    .int(&[("reason", "table_full")], n.table_full)
    .int(&[("reason", "container_share")], n.container_limit)
    .int(&[("reason", "half_open")], n.half_open_limit);
}

/// What crossed the NAT and what it dropped.
fn nat_traffic(page: &mut Exposition, s: &Stats) {
    let n = &s.nat;
    let f = &mut page.family(
        "vswitch_nat_dropped_packets_total",
        Kind::Counter,
        "Packets the NAT dropped, by reason.",
    );
    for (reason, v) in [
        ("malformed", n.malformed),
        ("fragment", n.fragments),
        ("no_flow", n.no_flow),
        ("bad_checksum", n.bad_checksum),
        ("bad_length", n.bad_length),
        ("ttl_exceeded", n.ttl_exceeded),
        ("tagged", n.tagged),
        ("no_relay_port", n.no_relay_port),
        ("no_echo_ident", n.no_echo_ident),
        ("unsupported", n.unsupported),
        ("bad_address", n.bad_address),
        ("send_failed", n.send_failed),
    ] {
        f.int(&[("reason", reason)], v);
    }
    page.family(
        "vswitch_nat_packets_total",
        Kind::Counter,
        "IPv4 packets through the NAT, from the containers (out) and to them (in).",
    )
    .int(&[("direction", "out")], n.packets_out)
    .int(&[("direction", "in")], n.packets_in);
    page.family(
        "vswitch_nat_bytes_total",
        Kind::Counter,
        "Bytes of those packets (IPv4 headers included).",
    )
    .int(&[("direction", "out")], n.bytes_out)
    .int(&[("direction", "in")], n.bytes_in);
    page.family(
        "vswitch_nat_relays",
        Kind::Gauge,
        "TCP connections relayed (spliced between the container's side and the outside's) now.",
    )
    .int(&[], n.relays as u64);
    page.family(
        "vswitch_nat_relays_opened_total",
        Kind::Counter,
        "TCP connections relayed so far.",
    )
    .int(&[], n.relayed);
    page.family(
        "vswitch_nat_relays_in_kernel",
        Kind::Gauge,
        "Established relayed TCP connections whose segments the kernel translates now.",
    )
    .int(&[], n.in_kernel as u64);
    page.family(
        "vswitch_nat_relays_in_kernel_total",
        Kind::Counter,
        "Relayed TCP connections handed to the kernel once established, so far.",
    )
    .int(&[], n.in_kernel_total);
    page.family(
        "vswitch_nat_tcp_opened_in_kernel_total",
        Kind::Counter,
        "Outgoing TCP connections the kernel opened itself from their SYN, so far.",
    )
    .int(&[], n.opened_in_kernel_total);
    page.family(
        "vswitch_nat_datagram_flows_in_kernel_total",
        Kind::Counter,
        "UDP flows and echoes handed to the kernel after their first datagram, so far.",
    )
    .int(&[], n.datagrams_in_kernel_total);
}

fn fds(page: &mut Exposition, s: &Stats) {
    let f = &s.fds;
    for (name, help, v) in [
        (
            "vswitch_fds_limit",
            "The process's file descriptor limit.",
            f.limit,
        ),
        (
            "vswitch_fds_reserved",
            "Descriptors kept for the daemon itself and its ports.",
            f.reserved,
        ),
        (
            "vswitch_fds_leased",
            "Descriptors held by NAT flows, relayed connections and DNS queries now.",
            f.leased,
        ),
        (
            "vswitch_fds_available",
            "Descriptors left for new flows.",
            f.available,
        ),
    ] {
        page.family(name, Kind::Gauge, help).int(&[], v as u64);
    }
    page.family(
        "vswitch_fds_refused_total",
        Kind::Counter,
        "Flows and DNS queries refused for want of descriptors.",
    )
    .int(&[], f.refused);
    page.family(
        "vswitch_fds_exhausted_total",
        Kind::Counter,
        "System calls that failed with EMFILE or ENFILE anyway.",
    )
    .int(&[], f.exhausted);
}

fn dns(page: &mut Exposition, s: &Stats) {
    let d = &s.dns;
    if !d.enabled {
        return;
    }
    page.family(
        "vswitch_dns_queries_total",
        Kind::Counter,
        "DNS queries the gateway's forwarder received over UDP.",
    )
    .int(&[("transport", "udp")], d.udp_queries);
    page.family(
        "vswitch_dns_tcp_connections_total",
        Kind::Counter,
        "DNS-over-TCP connections the forwarder accepted (each may carry several queries).",
    )
    .int(&[], d.tcp_connections);
    page.family(
        "vswitch_dns_failures_total",
        Kind::Counter,
        "UDP queries no upstream resolver answered, and TCP connections none accepted.",
    )
    .int(&[("transport", "udp")], d.udp_failed)
    .int(&[("transport", "tcp")], d.tcp_failed);
    page.family(
        "vswitch_dns_dropped_total",
        Kind::Counter,
        "DNS queries and connections dropped unserved: too many in flight, or no descriptor.",
    )
    .int(&[], d.dropped);
    page.family(
        "vswitch_dns_query_duration_seconds",
        Kind::Histogram,
        "From a UDP query's arrival at the gateway to its answer going back.",
    )
    .histogram(&[("transport", "udp")], &d.latency);
}

fn work(page: &mut Exposition, s: &Stats) {
    let f = &mut page.family(
        "vswitch_worker_busy_seconds_total",
        Kind::Counter,
        "Time each traffic thread spent working, from a wake-up with work to its next wait: \
         the datapath workers (dp0...) and the NAT service (nat).",
    );
    for t in &s.threads {
        f.sample(&[("worker", &t.name)], t.busy_ns as f64 / 1e9);
    }
    let p = &s.plugs;
    page.family("vswitch_plugs_total", Kind::Counter, "Containers plugged.")
        .int(&[], p.plugged);
    page.family(
        "vswitch_plug_failures_total",
        Kind::Counter,
        "Plugs that failed (and were undone).",
    )
    .int(&[], p.failed);
    page.family(
        "vswitch_unplugs_total",
        Kind::Counter,
        "Ports removed: on request (unplug, a runtime's DEL or GC), or because the container \
         exited.",
    )
    .int(&[("reason", "request")], p.unplugged)
    .int(&[("reason", "exited")], p.exited);
    page.family(
        "vswitch_plug_duration_seconds",
        Kind::Histogram,
        "How long successful plugs took.",
    )
    .histogram(&[], &p.plug_seconds);
    page.family(
        "vswitch_unplug_duration_seconds",
        Kind::Histogram,
        "How long requested unplugs took.",
    )
    .histogram(&[], &p.unplug_seconds);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Bucket, FlowStateCount, HistogramView, ThreadStats};
    use std::collections::HashSet;

    fn port(kind: &str, name: &str) -> PortView {
        serde_json::from_value(serde_json::json!({
            "port": 1, "kind": kind, "pid": null, "netns": null, "host_ifname": name,
            "ifname": null, "ip": "10.1.1.2", "prefix": 24, "gateway": "10.1.1.1",
            "mac": "02:76:0a:01:01:02", "rx_frames": 10, "rx_bytes": 1000, "tx_frames": 8,
            "tx_bytes": 800, "drops": 3, "rx_invalid": 1, "tx_failed": 0, "kernel_drops": 2,
            "fast_rx_frames": 4, "fast_rx_bytes": 400, "fast_tx_frames": 2,
            "fast_tx_bytes": 200, "fast_path": "tcx", "nat_flows": 2, "nat_refused": 1,
            "coalescing": "on", "coalesced": 3
        }))
        .unwrap()
    }

    fn stats() -> Stats {
        let mut tap = port("tap", "vsw0");
        tap.coalescing = None;
        let mut c = port("container", "vsw-42");
        c.pid = Some(42);
        let mut cni = port("container", "vsw3f2a9b1c0d4e");
        cni.netns = Some("/run/netns/netns-\"x\"".into());
        cni.container_id = Some("3f2a9b".into());
        cni.network = Some("vswitch".into());
        let mut s = Stats {
            ports: vec![tap, c, cni],
            threads: vec![
                ThreadStats {
                    name: "dp0".into(),
                    busy_ns: 1_500_000_000,
                },
                ThreadStats {
                    name: "nat".into(),
                    busy_ns: 0,
                },
            ],
            version: "0.1.0".into(),
            ..Stats::default()
        };
        s.nat.by_state = vec![FlowStateCount {
            proto: "tcp".into(),
            state: "ESTABLISHED".into(),
            flows: 3,
        }];
        s.dns.enabled = true;
        s.dns.latency = HistogramView {
            buckets: vec![Bucket { le: 0.01, count: 2 }],
            count: 3,
            sum: 0.5,
        };
        s
    }

    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn every_family_once_prefixed_with_help_and_type_and_its_samples_together() {
        let text = render(&stats());
        let mut seen = HashSet::new();
        let mut current = "";
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(seen.insert(name.to_string()), "{name} twice");
                assert!(name.starts_with("vswitch_"), "{name}");
                current = name;
            } else if let Some(rest) = l.strip_prefix("# TYPE ") {
                assert!(rest.starts_with(current), "TYPE after its HELP: {l}");
                let kind = rest.rsplit(' ').next().unwrap();
                if kind == "counter" {
                    assert!(current.ends_with("_total"), "{current}");
                }
            } else {
                assert!(l.starts_with(current), "a sample outside its family: {l}");
            }
        }
        assert!(seen.len() > 40, "{} families", seen.len());
    }

    #[test]
    fn port_security_drops_are_reasons_of_their_own() {
        let mut st = stats();
        let p = &mut st.ports[1];
        p.rx_invalid = 10; // every frame refused on the way in: 4 spoofed, 2 isolated, 4 malformed
        p.spoofed.mac = 1;
        p.spoofed.ip = 3;
        p.isolation_drops = 2;
        let name = p.host_ifname.clone();
        let text = render(&st);
        let s = samples(&text);
        let value = |metric: &str, label: &str| {
            (s.iter())
                .find(|l| l.starts_with(metric) && l.contains(&name) && l.contains(label))
                .unwrap_or_else(|| panic!("no {metric} {label} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        let drops = "vswitch_port_dropped_frames_total{";
        assert_eq!(value(drops, r#"reason="invalid""#), "4");
        assert_eq!(value(drops, r#"reason="spoofed""#), "4");
        assert_eq!(value(drops, r#"reason="isolated""#), "2");
        let spoofed = "vswitch_port_spoofed_frames_total{";
        assert_eq!(value(spoofed, r#"field="ip""#), "3");
        assert_eq!(value(spoofed, r#"field="arp""#), "0");
    }

    #[test]
    fn ports_are_labelled_by_name_and_container_and_split_by_path() {
        let text = render(&stats());
        let s = samples(&text);
        let has = |want: &str| assert!(s.contains(&want), "no {want:?} in\n{text}");
        has(
            r#"vswitch_port_rx_frames_total{port="vsw-42",kind="container",pid="42",path="daemon"} 6"#,
        );
        has(
            r#"vswitch_port_rx_frames_total{port="vsw-42",kind="container",pid="42",path="fast"} 4"#,
        );
        has(r#"vswitch_port_tx_bytes_total{port="vsw0",kind="tap",path="daemon"} 600"#);
        has(
            r#"vswitch_port_dropped_frames_total{port="vsw-42",kind="container",pid="42",reason="kernel"} 2"#,
        );
        has(
            r#"vswitch_port_nat_flows{port="vsw3f2a9b1c0d4e",kind="container",netns="/run/netns/netns-\"x\"",container_id="3f2a9b",network="vswitch"} 2"#,
        );
        has(
            r#"vswitch_port_info{port="vsw-42",kind="container",pid="42",ip="10.1.1.2",mac="02:76:0a:01:01:02",fast_path="tcx"} 1"#,
        );
        has(r#"vswitch_port_rx_coalescing{port="vsw-42",kind="container",pid="42"} 1"#);
        has(r#"vswitch_port_rx_coalesced_total{port="vsw-42",kind="container",pid="42"} 3"#);
        // The TAP has no NAT of its own, nor receive coalescing.
        assert!(!s
            .iter()
            .any(|l| l.starts_with("vswitch_port_rx_coalesc") && l.contains("vsw0")));
        assert!(!s
            .iter()
            .any(|l| l.starts_with("vswitch_port_nat") && l.contains("vsw0")));
        has(r#"vswitch_nat_flows{proto="tcp",state="ESTABLISHED"} 3"#);
        has(r#"vswitch_worker_busy_seconds_total{worker="dp0"} 1.5"#);
        has(r#"vswitch_dns_query_duration_seconds_bucket{transport="udp",le="+Inf"} 3"#);
        has(r#"vswitch_build_info{version="0.1.0"} 1"#);
    }

    #[test]
    fn no_dns_no_dns_metrics() {
        let mut s = stats();
        s.dns.enabled = false;
        assert!(!render(&s).contains("vswitch_dns_"));
    }
}
