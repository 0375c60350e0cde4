//! The text output of `ls`, `fdb` and `conntrack`.

use crate::control::{FdbView, FlowRow, PortView, SecurityView, Stats};

/// How a port's container is named to the user: `pid 4242`, `netns /run/netns/x`, or `host`.
pub fn container(p: &PortView) -> String {
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
        "{:<5} {:<w$} {:<15} {:<8} {:<18} {:<18} {:>10} {:>12} {:>10} {:>12} {:>6} {:<s$} {:>7}",
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
        "SEC",
        "SPOOFED"
    );
    for p in ports {
        println!(
            "{:<5} {:<w$} {:<15} {:<8} {:<18} {:<18} {:>10} {:>12} {:>10} {:>12} {:>6} {:<s$} {:>7}",
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

pub fn conntrack(flows: &[FlowRow]) {
    println!(
        "{:<5} {:<22} {:<22} {:<12} {:>8} {:>9} {:>12} {:>9} {:>12}",
        "PROTO",
        "INSIDE",
        "OUTSIDE",
        "STATE",
        "TIMEOUT",
        "PKTS-OUT",
        "BYTES-OUT",
        "PKTS-IN",
        "BYTES-IN"
    );
    for f in flows {
        let outside = match f.published {
            true => format!("{} (in)", f.outside),
            false => f.outside.clone(),
        };
        println!(
            "{:<5} {:<22} {:<22} {:<12} {:>8} {:>9} {:>12} {:>9} {:>12}",
            f.proto,
            f.inside,
            outside,
            f.state,
            f.timeout_s,
            f.packets_out,
            f.bytes_out,
            f.packets_in,
            f.bytes_in
        );
    }
}

pub fn stats(s: &Stats) {
    let f = &s.fds;
    println!("containers      {}", s.containers);
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
    let n = &s.nat;
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
         tagged {}, fragments {}, no flow {}",
        n.malformed, n.bad_checksum, n.bad_length, n.ttl_exceeded, n.tagged, n.fragments, n.no_flow
    );
}
