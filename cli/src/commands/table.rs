//! The text output of `ls`, `fdb`, `conntrack` and `stats`.

use std::net::SocketAddrV4;

use crate::control::{
    FdbView, FlowFilter, FlowRow, HistogramView, NatCounters, PortView, SecurityView, Stats,
};

/// How a port's container is named to the user: `pid 4242`, `netns /run/netns/x`, `host`, or
/// for a runtime's attachment its container id, shortened as runtimes show it
/// (`id 3f2a9b1c0d4e`): podman's namespace path says nothing about which container it is.
pub fn container(p: &PortView) -> String {
    if let Some(id) = &p.container_id {
        return format!("id {}", id.get(..12).unwrap_or(id));
    }
    match (&p.pid, &p.netns) {
        (Some(pid), _) => format!("pid {pid}"),
        (None, Some(ns)) => format!("netns {ns}"),
        _ => "host".to_string(),
    }
}

pub fn ports(ports: &[PortView]) {
    // "netns /run/netns/NAME" and "pid N" vary in length: size the column to fit.
    let w = ports
        .iter()
        .map(|p| container(p).len())
        .fold(10, usize::max);
    // Port security: "on", "trusted", "on+allow,isolated"... ("host" for the TAP).
    let sec = |p: &PortView| match p.kind.as_str() {
        "tap" => "host".to_string(),
        _ => p.security.short(),
    };
    let s = ports.iter().map(|p| sec(p).len()).fold(3, usize::max);
    println!(
        "{:<5} {:<w$} {:<15} {:<8} {:<18} {:<18} {:>10} {:>12} {:>10} {:>12} {:>6} {:>9} \
         {:>12} {:>12} {:>11} {:<s$} {:>7}",
        "PORT",
        "CONTAINER",
        "HOST-IF",
        "IF",
        "IP",
        "MAC",
        "RX-FRAMES",
        "RX-BYTES",
        "TX-FRAMES",
        "TX-BYTES",
        "DROPS",
        "NAT-FLOWS",
        "NAT-OUT-B",
        "NAT-IN-B",
        "NAT-REFUSED",
        "SEC",
        "SPOOFED"
    );
    for p in ports {
        // The NAT serves containers; the TAP's row has none of its counters.
        let nat = |n: u64| match p.kind.as_str() {
            "tap" => "-".to_string(),
            _ => n.to_string(),
        };
        println!(
            "{:<5} {:<w$} {:<15} {:<8} {:<18} {:<18} {:>10} {:>12} {:>10} {:>12} {:>6} {:>9} \
             {:>12} {:>12} {:>11} {:<s$} {:>7}",
            p.port,
            container(p),
            p.host_ifname,
            p.ifname.as_deref().unwrap_or("-"),
            format!("{}/{}", p.ip, p.prefix),
            p.mac,
            p.rx_frames,
            p.rx_bytes,
            p.tx_frames,
            p.tx_bytes,
            p.drops,
            nat(p.nat_flows),
            nat(p.nat_bytes_out),
            nat(p.nat_bytes_in),
            nat(p.nat_refused),
            sec(p),
            p.spoofed.total()
        );
    }
    // Who tried what: the ports that sent spoofed frames, by kind.
    for p in ports.iter().filter(|p| p.spoofed.total() > 0) {
        let k = &p.spoofed;
        println!(
            "spoofed from port {} ({}): mac {}, ip {}, arp {}, ethertype {}",
            p.port,
            container(p),
            k.mac,
            k.ip,
            k.arp,
            k.ethertype
        );
    }
}

/// A port's policy in words, for `plug`'s answer.
pub fn security(s: &SecurityView) -> String {
    let mut text = if s.trusted {
        "trusted (no source checks)".to_string()
    } else {
        "on (own MAC and address only, IPv4 and ARP)".to_string()
    };
    for (what, list) in [
        ("MACs", &s.allow_mac),
        ("addresses", &s.allow_ip),
        ("EtherTypes", &s.allow_ethertype),
    ] {
        if !list.is_empty() {
            text.push_str(&format!(", also {what} {}", list.join(" ")));
        }
    }
    if s.isolated {
        text.push_str("; isolated from the other containers");
    }
    text
}

pub fn fdb(entries: &[FdbView]) {
    println!(
        "{:<18} {:<5} {:<15} {:>8}",
        "MAC", "PORT", "PORT-NAME", "AGE(s)"
    );
    for e in entries {
        println!(
            "{:<18} {:<5} {:<15} {:>8.1}",
            e.mac,
            e.port,
            e.port_name,
            e.age_ms as f64 / 1000.0
        );
    }
}

/// Whether a listed flow matches a filter (the daemon applies the same one to `-D`).
pub fn flow_selected(filter: &FlowFilter, f: &FlowRow) -> bool {
    let end = |s: &str| s.parse::<SocketAddrV4>().ok();
    let (inside, outside) = (end(&f.inside), end(&f.outside));
    let ip_is = |want: Option<std::net::Ipv4Addr>, end: Option<SocketAddrV4>| {
        want.is_none_or(|ip| end.is_some_and(|e| *e.ip() == ip))
    };
    let port_is = |want: Option<u16>, end: Option<SocketAddrV4>| {
        want.is_none_or(|p| end.is_some_and(|e| e.port() == p))
    };
    filter.proto.is_none_or(|p| p.as_str() == f.proto)
        && ip_is(filter.inside, inside)
        && port_is(filter.inside_port, inside)
        && ip_is(filter.outside, outside)
        && port_is(filter.outside_port, outside)
}

pub fn conntrack(flows: &[FlowRow]) {
    println!(
        "{:<5} {:<22} {:<22} {:<12} {:>8} {:>9} {:>12} {:>9} {:>12} {:<6}",
        "PROTO",
        "INSIDE",
        "OUTSIDE",
        "STATE",
        "TIMEOUT",
        "PKTS-OUT",
        "BYTES-OUT",
        "PKTS-IN",
        "BYTES-IN",
        "PATH"
    );
    for f in flows {
        let outside = match f.published {
            true => format!("{} (in)", f.outside),
            false => f.outside.clone(),
        };
        println!(
            "{:<5} {:<22} {:<22} {:<12} {:>8} {:>9} {:>12} {:>9} {:>12} {:<6}",
            f.proto,
            f.inside,
            outside,
            f.state,
            f.timeout_s,
            f.packets_out,
            f.bytes_out,
            f.packets_in,
            f.bytes_in,
            if f.in_kernel { "kernel" } else { "daemon" }
        );
    }
}

/// `vswitch stats`: the daemon, the switch, the NAT, its services, a line each.
pub fn stats(s: &Stats) {
    let f = &s.fds;
    println!("containers      {}", s.containers);
    let n = &s.subnet;
    println!(
        "subnet          {} gateway {} mtu {}, {} addresses free",
        n.cidr, n.gateway, n.mtu, n.free
    );
    println!(
        "descriptors     limit {}, kept for the daemon {}, leased {}, available {}; \
         refused {}, exhausted {}",
        f.limit, f.reserved, f.leased, f.available, f.refused, f.exhausted
    );
    let w = &s.switch;
    println!(
        "switch          frames {}, flooded {}, malformed {}, hairpin {}, arp replies {}",
        w.frames, w.flooded, w.malformed, w.hairpin, w.arp_replies
    );
    println!(
        "fdb             entries {}, learned {}, moved {}, not learned (full) {}, refused {}, \
         evicted {}",
        w.fdb_entries, w.learned, w.moved, w.fdb_full, w.fdb_refused, w.fdb_evicted
    );
    println!(
        "port security   spoofed frames dropped {}, isolation drops {}",
        w.spoofed, w.isolation_drops
    );
    nat_stats(&s.nat);
    println!(
        "fdb aging       capacity {}, aged {}, flushed {}; own frames seen again {}",
        w.fdb_capacity, w.aged, w.flushed, w.outgoing
    );
    services_stats(s);
}

/// The NAT's lines of `vswitch stats`.
fn nat_stats(n: &NatCounters) {
    println!(
        "nat             flows {}/{}, created {}, expired {}, removed {}, refused (full) {}",
        n.flows, n.max_flows, n.created, n.expired, n.removed, n.table_full
    );
    println!(
        "nat refused     container's share {}, connecting {}",
        n.container_limit, n.half_open_limit
    );
    println!(
        "nat drops       malformed {}, bad checksum {}, bad length {}, ttl exceeded {}, \
         tagged {}, fragments {}, no flow {}, no relay port {}, no echo id {}, unsupported {}, \
         bad address {}, send failed {}",
        n.malformed,
        n.bad_checksum,
        n.bad_length,
        n.ttl_exceeded,
        n.tagged,
        n.fragments,
        n.no_flow,
        n.no_relay_port,
        n.no_echo_ident,
        n.unsupported,
        n.bad_address,
        n.send_failed
    );
    println!(
        "nat traffic     out {} packets {} bytes, in {} packets {} bytes; relayed TCP {} now \
         ({} in the kernel), {} so far ({} through the kernel, {} opened there); UDP flows and \
         echoes through the kernel {}",
        n.packets_out,
        n.bytes_out,
        n.packets_in,
        n.bytes_in,
        n.relays,
        n.in_kernel,
        n.relayed,
        n.in_kernel_total,
        n.opened_in_kernel_total,
        n.datagrams_in_kernel_total
    );
    let states: Vec<String> = (n.by_state.iter())
        .map(|c| format!("{} {} {}", c.proto, c.state, c.flows))
        .collect();
    println!(
        "nat flows       {}",
        match states.is_empty() {
            true => "none".to_string(),
            false => states.join(", "),
        }
    );
}

/// The last lines of `vswitch stats`: the DNS forwarder, plugs, the threads, the ports' drops.
fn services_stats(s: &Stats) {
    let d = &s.dns;
    match d.enabled {
        true => println!(
            "dns             udp queries {} (unanswered {}), tcp connections {} (failed {}), \
             dropped {}; {}",
            d.udp_queries,
            d.udp_failed,
            d.tcp_connections,
            d.tcp_failed,
            d.dropped,
            latency(&d.latency)
        ),
        false => println!("dns             off (--no-dns)"),
    }
    let p = &s.plugs;
    println!(
        "plugs           plugged {} (failed {}), unplugged {}, exited {}; plug {}, unplug {}",
        p.plugged,
        p.failed,
        p.unplugged,
        p.exited,
        latency(&p.plug_seconds),
        latency(&p.unplug_seconds)
    );
    let busy: Vec<String> = (s.threads.iter())
        .map(|t| format!("{} {:.3}s", t.name, t.busy_ns as f64 / 1e9))
        .collect();
    println!("busy            {}", busy.join(", "));
    let drops: Vec<String> = (s.ports.iter())
        .filter(|p| p.drops > 0)
        .map(|p| {
            format!(
                "{} invalid {} tx {} kernel {}",
                p.host_ifname, p.rx_invalid, p.tx_failed, p.kernel_drops
            )
        })
        .collect();
    if !drops.is_empty() {
        println!("port drops      {}", drops.join("; "));
    }
}

/// `mean 1.2ms over 40` for a histogram of durations.
fn latency(h: &HistogramView) -> String {
    match h.count {
        0 => "no timings".to_string(),
        n => format!("mean {:.1}ms over {n}", h.sum / n as f64 * 1e3),
    }
}
