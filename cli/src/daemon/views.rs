//! The manager's state as `ls`, `fdb` and `conntrack` show it.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use vswitch_switch::{MacAddr, PortId, SpoofKind};

use crate::bpf::fastpath::PortCounts;
use crate::control::{
    FdStats, FdbView, FlowRow, NatCounters, PortView, SecurityView, SpoofCounts, Stats,
    SwitchCounters, Target,
};
use crate::datapath::{now_ms, TAP_PORT};
use crate::ports::Counters;

use super::manager::{Container, Manager};

impl Manager {
    pub fn view(&self, c: &Container) -> PortView {
        let mut view = self.port_view(c.port, "container", c.ip, c.mac, &c.host_ifname);
        match &c.target {
            Target::Pid(pid) => view.pid = Some(*pid),
            Target::Netns(path) => view.netns = Some(path.display().to_string()),
        }
        view.ifname = Some(c.ifname.to_string());
        view.publish = c.publish.iter().map(|p| p.to_string()).collect();
        let nat = self.nat.container_stats(c.ip);
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
            rx_frames: read(|c| &c.rx_frames) + fast.rx_frames,
            rx_bytes: read(|c| &c.rx_bytes) + fast.rx_bytes,
            tx_frames: read(|c| &c.tx_frames) + fast.tx_frames,
            tx_bytes: read(|c| &c.tx_bytes) + fast.tx_bytes,
            drops: read(|c| &c.drops) + port.map_or(0, |p| p.kernel_drops()),
            fast_rx_frames: fast.rx_frames,
            fast_tx_frames: fast.tx_frames,
            fast_path: (self.containers.iter())
                .find(|c| c.port == id)
                .and_then(|c| c.fast_link.as_ref())
                .map_or("off", |link| link.hook().name())
                .to_string(),
            publish: Vec::new(),
            nat_flows: 0,
            nat_packets_out: 0,
            nat_packets_in: 0,
            nat_bytes_out: 0,
            nat_bytes_in: 0,
            nat_refused: 0,
            resolv: None,
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

    pub fn ls(&self) -> Vec<PortView> {
        let gateway = self.ipam.gateway();
        let mut list =
            vec![self.port_view(TAP_PORT, "tap", gateway, self.gateway_mac, &self.tap_name)];
        list.extend(self.containers.iter().map(|c| self.view(c)));
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

    pub fn stats(&self) -> Stats {
        let fds = self.budget.view();
        let sw = self.datapath.switch().stats();
        let nat = self.nat.stats();
        Stats {
            containers: self.containers.len(),
            fds: FdStats {
                limit: fds.limit,
                reserved: fds.reserved,
                leased: fds.leased,
                available: self.budget.available(),
                refused: fds.refused,
                exhausted: fds.exhausted,
            },
            switch: SwitchCounters {
                frames: sw.frames,
                malformed: sw.malformed,
                flooded: sw.flooded,
                hairpin: sw.hairpin,
                arp_replies: sw.arp_replies,
                learned: sw.learned,
                moved: sw.moved,
                fdb_full: sw.fdb_full,
                fdb_entries: self.datapath.switch().fdb_len(),
                fdb_evicted: sw.evicted,
                fdb_refused: sw.learn_refused,
                spoofed: sw.spoofed,
                isolation_drops: sw.isolated,
            },
            nat: NatCounters {
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
            },
        }
    }

    pub fn conntrack(&self) -> Vec<FlowRow> {
        (self.nat.entries(now_ms()).into_iter())
            .map(|f| FlowRow {
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
            })
            .collect()
    }
}
