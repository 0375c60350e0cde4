//! The manager's state as `ls`, `fdb`, `conntrack` and `stats` show it. `stats` is the one
//! snapshot of every counter: `vswitch stats` prints it and `/metrics` renders it, so the two
//! never disagree.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use vswitch_nat::ContainerStats;
use vswitch_switch::{MacAddr, PortId, SpoofKind};

use crate::bpf::fastpath::PortCounts;
use crate::control::{
    DnsStats, FdStats, FdbView, FlowRow, FlowStateCount, NatCounters, PortView, SecurityView,
    SpoofCounts, Stats, SubnetStats, SwitchCounters, Target, ThreadStats,
};
use crate::datapath::{now_ms, TAP_PORT};
use crate::ports::Counters;

use super::manager::{Container, Manager};

impl Manager {
    pub fn view(&self, c: &Container) -> PortView {
        self.view_with(c, self.nat.container_stats(c.ip))
    }

    /// A container's port, with its NAT counters given.
    fn view_with(&self, c: &Container, nat: ContainerStats) -> PortView {
        let mut view = self.port_view(c.port, "container", c.ip, c.mac, &c.host_ifname);
        match &c.target {
            Target::Pid(pid) => view.pid = Some(*pid),
            Target::Netns(path) => view.netns = Some(path.display().to_string()),
        }
        view.ifname = Some(c.ifname.to_string());
        view.container_id = (c.attachment.as_ref()).map(|a| a.container_id.to_string());
        view.network = c.network.as_ref().map(|n| n.to_string());
        view.publish = c.publish.iter().map(|p| p.to_string()).collect();
        view.nat_flows = nat.flows as u64;
        view.nat_packets_out = nat.packets_out;
        view.nat_packets_in = nat.packets_in;
        view.nat_bytes_out = nat.bytes_out;
        view.nat_bytes_in = nat.bytes_in;
        view.nat_refused = nat.refused;
        view
    }

    fn port_view(
        &self,
        id: PortId,
        kind: &str,
        ip: Ipv4Addr,
        mac: MacAddr,
        name: &str,
    ) -> PortView {
        let table = self.datapath.ports();
        let port = table.get(usize::from(id.0)).and_then(|p| p.as_ref());
        let read =
            |f: fn(&Counters) -> &AtomicU64| port.map_or(0, |p| f(&p.counters).load(Relaxed));
        // Frames the kernel fast path carried count as the port's too.
        let fast = (self.fast_path.as_ref()).map_or_else(PortCounts::default, |f| f.counts(id));
        let (rx_invalid, tx_failed) = (read(|c| &c.drops), read(|c| &c.tx_drops));
        let kernel_drops = port.map_or(0, |p| p.kernel_drops());
        let switch = self.datapath.switch();
        let security = (switch.port_policy(id))
            .map(|p| SecurityView::new(&p, switch.port_mac_limit(id)))
            .unwrap_or_default();
        let counts = switch.port_security(id).unwrap_or_default();
        PortView {
            port: id.0,
            kind: kind.to_string(),
            pid: None,
            netns: None,
            host_ifname: name.to_string(),
            ifname: None,
            ip,
            prefix: self.ipam.net().prefix,
            gateway: self.ipam.gateway(),
            mac: mac.to_string(),
            mtu: Some(self.mtu),
            rx_frames: read(|c| &c.rx_frames) + fast.rx_frames,
            rx_bytes: read(|c| &c.rx_bytes) + fast.rx_bytes,
            tx_frames: read(|c| &c.tx_frames) + fast.tx_frames,
            tx_bytes: read(|c| &c.tx_bytes) + fast.tx_bytes,
            drops: rx_invalid + tx_failed + kernel_drops,
            rx_invalid,
            tx_failed,
            kernel_drops,
            fast_rx_frames: fast.rx_frames,
            fast_tx_frames: fast.tx_frames,
            fast_rx_bytes: fast.rx_bytes,
            fast_tx_bytes: fast.tx_bytes,
            fast_path: (self.containers.iter())
                .find(|c| c.port == id)
                .and_then(|c| c.fast_link.as_ref())
                .map_or("off", |link| link.hook().name())
                .to_string(),
            coalescing: (port.and_then(|p| p.coalesce.as_ref()))
                .map(|c| if c.is_on() { "on" } else { "off" }.to_string()),
            coalesced: (port.and_then(|p| p.coalesce.as_ref())).map_or(0, |c| c.engaged()),
            publish: Vec::new(),
            nat_flows: 0,
            nat_packets_out: 0,
            nat_packets_in: 0,
            nat_bytes_out: 0,
            nat_bytes_in: 0,
            nat_refused: 0,
            resolv: None,
            container_id: None,
            network: None,
            security,
            spoofed: SpoofCounts {
                mac: counts.spoofed(SpoofKind::Mac),
                ip: counts.spoofed(SpoofKind::Ip),
                arp: counts.spoofed(SpoofKind::Arp),
                ethertype: counts.spoofed(SpoofKind::EtherType),
            },
            isolation_drops: counts.isolated,
            fdb_macs: switch.fdb_learned_on(id) as u64,
            fdb_refused: counts.learn_refused,
        }
    }

    /// Every port, the TAP first; the NAT's counters of all containers in one pass.
    pub fn ls(&self) -> Vec<PortView> {
        let gateway = self.ipam.gateway();
        let mut list =
            vec![self.port_view(TAP_PORT, "tap", gateway, self.gateway_mac, &self.tap_name)];
        let nat: HashMap<Ipv4Addr, ContainerStats> = self.nat.all_container_stats();
        list.extend((self.containers.iter()).map(|c| {
            let stats = nat.get(&c.ip).copied().unwrap_or_default();
            self.view_with(c, stats)
        }));
        list
    }

    pub fn fdb(&self) -> Vec<FdbView> {
        let table = self.datapath.ports();
        let name = |port: PortId| {
            (table.get(usize::from(port.0)).and_then(|p| p.as_ref()))
                .map(|p| p.name.clone())
                .unwrap_or_default()
        };
        (self.datapath.switch().fdb_entries(now_ms()).into_iter())
            .map(|e| FdbView {
                mac: e.mac.to_string(),
                port: e.port.0,
                port_name: name(e.port),
                age_ms: e.age_ms,
            })
            .collect()
    }

    /// Every counter the daemon keeps, in one snapshot.
    pub fn stats(&self) -> Stats {
        let fds = self.budget.view();
        let mut threads: Vec<ThreadStats> = (self.datapath.busy_ns().into_iter().enumerate())
            .map(|(i, busy_ns)| ThreadStats {
                name: format!("dp{i}"),
                busy_ns,
            })
            .collect();
        threads.push(ThreadStats {
            name: "nat".to_string(),
            busy_ns: self.tally.nat_busy.nanos(),
        });
        Stats {
            containers: self.containers.len(),
            subnet: SubnetStats {
                cidr: self.ipam.net().to_string(),
                gateway: self.ipam.gateway().to_string(),
                mtu: self.mtu,
                free: self.ipam.free(),
            },
            fds: FdStats {
                limit: fds.limit,
                reserved: fds.reserved,
                leased: fds.leased,
                available: self.budget.available(),
                refused: fds.refused,
                exhausted: fds.exhausted,
            },
            switch: self.switch_counters(),
            nat: self.nat_counters(),
            ports: self.ls(),
            dns: (self.tally.dns.as_ref()).map_or_else(DnsStats::default, |d| DnsStats {
                enabled: true,
                udp_queries: d.udp_queries.load(Relaxed),
                udp_failed: d.udp_failed.load(Relaxed),
                tcp_connections: d.tcp_connections.load(Relaxed),
                tcp_failed: d.tcp_failed.load(Relaxed),
                dropped: d.dropped.load(Relaxed),
                latency: d.latency.view(),
            }),
            threads,
            plugs: self.tally.plugs.view(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            start_time: self.tally.start_time,
        }
    }

    /// The switch's counters and its forwarding table's.
    fn switch_counters(&self) -> SwitchCounters {
        let sw = self.datapath.switch().stats();
        SwitchCounters {
            frames: sw.frames,
            malformed: sw.malformed,
            flooded: sw.flooded,
            hairpin: sw.hairpin,
            arp_replies: sw.arp_replies,
            learned: sw.learned,
            moved: sw.moved,
            fdb_full: sw.fdb_full,
            fdb_entries: self.datapath.switch().fdb_len(),
            outgoing: sw.outgoing,
            aged: sw.aged,
            flushed: self.tally.fdb_flushed,
            fdb_capacity: self.tally.fdb_capacity,
            fdb_evicted: sw.evicted,
            fdb_refused: sw.learn_refused,
            spoofed: sw.spoofed,
            isolation_drops: sw.isolated,
        }
    }

    /// The NAT's table and counters, its flows by state, the relayed connections.
    fn nat_counters(&self) -> NatCounters {
        let nat = self.nat.stats();
        let relays = self.datapath.relays();
        NatCounters {
            flows: nat.flows,
            max_flows: self.nat.max_flows(),
            created: nat.created,
            expired: nat.expired,
            removed: nat.removed,
            table_full: nat.table_full,
            malformed: nat.malformed,
            fragments: nat.fragments,
            no_flow: nat.no_flow,
            bad_checksum: nat.bad_checksum,
            bad_length: nat.bad_length,
            ttl_exceeded: nat.ttl_exceeded,
            tagged: nat.tagged,
            container_limit: nat.container_limit,
            half_open_limit: nat.half_open_limit,
            no_relay_port: nat.no_relay_port,
            no_echo_ident: nat.no_echo_ident,
            unsupported: nat.unsupported,
            send_failed: self.nat_jobs.udp_send_failed(),
            bad_address: nat.bad_address,
            packets_out: nat.packets_out,
            packets_in: nat.packets_in,
            bytes_out: nat.bytes_out,
            bytes_in: nat.bytes_in,
            by_state: (self.nat.count_by_state(now_ms()).into_iter())
                .map(|c| FlowStateCount {
                    proto: c.proto.as_str().to_string(),
                    state: c.state.to_string(),
                    flows: c.flows,
                })
                .collect(),
            relays: relays.len(),
            relayed: relays.relayed(),
            in_kernel: self.offloads.as_ref().map_or(0, |o| o.len()),
            in_kernel_total: self.offloads.as_ref().map_or(0, |o| o.total()),
            opened_in_kernel_total: (self.offloads.as_ref()).map_or(0, |o| o.opened_total()),
            datagrams_in_kernel_total: (self.offloads.as_ref()).map_or(0, |o| o.datagrams_total()),
        }
    }

    pub fn conntrack(&self) -> Vec<FlowRow> {
        let now = now_ms();
        let Some(offloads) = &self.offloads else {
            return (self.nat.entries(now).iter()).map(row).collect();
        };
        // What the kernel carried so far counts on the flows, not only at the next report.
        offloads.report(&self.nat, now);
        (self.nat.entries(now).iter())
            .map(|f| FlowRow {
                in_kernel: offloads.carries(f.flow),
                ..row(f)
            })
            .collect()
    }
}

/// A flow as `conntrack` shows it.
pub fn row(f: &vswitch_nat::FlowView) -> FlowRow {
    FlowRow {
        proto: f.proto.as_str().to_string(),
        inside: f.inside.to_string(),
        outside: f.outside.to_string(),
        published: f.published,
        state: f.state.to_string(),
        timeout_s: f.timeout_ms / 1000,
        packets_out: f.packets_out,
        packets_in: f.packets_in,
        bytes_out: f.bytes_out,
        bytes_in: f.bytes_in,
        in_kernel: false,
    }
}
