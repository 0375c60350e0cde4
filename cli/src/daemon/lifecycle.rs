//! What the manager does on its own, every tick: notice containers that went away, age the
//! forwarding and flow tables, keep the kernel fast path's stations in step with the switch.

use std::collections::HashMap;

use vswitch_nat::Expired;
use vswitch_switch::{MacAddr, PortId};

use crate::bpf::fastpath::{SrcCheck, Station};
use crate::datapath::{now_ms, TAP_PORT};

use crate::natd::NatJob;

use super::manager::Manager;

/// How often the kernel's share of relayed connections is counted on their flows.
const REPORT_MS: u64 = 5000;

impl Manager {
    pub fn tick(&mut self) {
        if let Some(watchdog) = &mut self.watchdog {
            watchdog.tick();
        }
        for i in (0..self.containers.len()).rev() {
            if !self.is_alive(i) {
                self.remove_gone(i);
            }
        }
        self.reap_captures(false);
        self.sync_fast_path();
        for port in self.datapath.ports().iter().flatten() {
            if let Some(coalesce) = &port.coalesce {
                coalesce.tick();
            }
        }
        // Expiry scans whole tables: once a second is plenty.
        let now = now_ms();
        if now < self.last_expiry + 1000 {
            return;
        }
        self.last_expiry = now;
        if let Some(fast) = &self.fast_path {
            for (mac, port) in fast.used() {
                self.datapath.switch().seen(mac, port, now);
            }
        }
        self.datapath.switch().expire(now);
        let flows = self.nat.expire(now);
        self.forget_flows(flows);
        // What the kernel carried counts on the flows (and keeps them alive) within seconds.
        if let Some(offloads) = &self.offloads {
            if now >= self.last_report + REPORT_MS {
                self.last_report = now;
                offloads.report(&self.nat, now);
            }
        }
        self.log_refusals();
    }

    /// Flows the NAT no longer has (expired, deleted, their container gone): the kernel stops
    /// carrying them and the NAT service closes their sockets.
    pub fn forget_flows(&self, flows: Vec<Expired>) {
        if flows.is_empty() {
            return;
        }
        if let Some(offloads) = &self.offloads {
            offloads.forget(flows.iter().map(|e| e.flow));
        }
        self.nat_jobs.send(NatJob::Forget(flows));
    }

    /// Logs the NAT's refusals of new flows, at most once per ten seconds, with the containers
    /// they refused: a full table, or a container that used its share, must not go unnoticed.
    fn log_refusals(&mut self) {
        let Some(since) = self.tally.refusals.due(self.nat.refusals()) else {
            return;
        };
        let stats = self.nat.all_container_stats();
        let refused: Vec<String> = (self.containers.iter())
            .filter_map(|c| {
                let refused = stats.get(&c.ip).map_or(0, |s| s.refused);
                (refused > 0).then(|| format!("{}:{refused}", c.host_ifname))
            })
            .collect();
        tracing::warn!(
            table_full = since.table_full,
            container_share = since.container_limit,
            half_open = since.half_open_limit,
            max_flows = self.nat.max_flows(),
            flows = self.nat.stats().flows,
            refused_so_far = %refused.join(","),
            "NAT refused new flows"
        );
    }

    /// Whether container `i`'s veth still exists: the kernel deletes it with the container's
    /// namespace, when the container's last process exits. Asked over the manager's netlink
    /// socket, so the answer needs no new descriptor: a daemon out of descriptors still knows
    /// its containers are there. Only "no such link" means gone; any other error keeps it.
    pub fn is_alive(&mut self, i: usize) -> bool {
        let c = &self.containers[i];
        match self.plumbing.link(&c.host_ifname) {
            Ok(link) => link.is_some_and(|l| l.index == c.host_index),
            Err(e) => {
                tracing::warn!(
                    port = %c.host_ifname,
                    pid = c.target.pid(),
                    netns = c.target.netns(),
                    "checking that the port is still there: {e}; keeping it"
                );
                true
            }
        }
    }

    /// Removes the port of container `i`, whose namespace is gone (its veth went with it).
    pub fn remove_gone(&mut self, i: usize) {
        self.tally.plugs.exited += 1;
        let c = self.containers.remove(i);
        self.forget(&c);
        self.save_state();
        tracing::info!(
            port = %c.host_ifname,
            pid = c.target.pid(),
            netns = c.target.netns(),
            container_id = c.container_id(),
            ip = %c.ip,
            "container exited: removed its port"
        );
    }

    /// Makes the fast path's stations the plugged containers' own MACs (so that two containers
    /// talk over the fast path from their first frame, with no switch-over to reorder a flow),
    /// overridden by the forwarding table on the ports the fast path serves: a MAC learned
    /// elsewhere is the daemon's, a MAC learned on a served port (a container that changed its
    /// address, or bridges others) is added within a tick, what the switch forgot is removed.
    /// Each station carries what its port may send (port security); an isolated port is not
    /// served: its frames, to and from anyone, are the daemon's.
    /// A captured port is not served while the capture runs.
    pub fn sync_fast_path(&mut self) {
        // A captured port's frames must all cross the daemon (see `capture`).
        let captured = self.captured_ports();
        let Some(fast) = &mut self.fast_path else {
            return;
        };
        let served: HashMap<PortId, (u32, SrcCheck)> = (self.containers.iter())
            .filter(|c| c.fast_link.is_some() && !c.policy.isolated && !captured.contains(&c.port))
            .map(|c| {
                let check = match (c.policy.trusted, c.policy.source_prefix(Some(c.ip))) {
                    (true, _) => SrcCheck::None,
                    (false, Some(prefix)) => SrcCheck::Ipv4(prefix),
                    (false, None) => SrcCheck::Daemon,
                };
                (c.port, (c.host_index, check))
            })
            .collect();
        let station = |port: PortId| {
            let &(ifindex, check) = served.get(&port)?;
            Some(Station {
                ifindex,
                port,
                check,
            })
        };
        let mut want: HashMap<MacAddr, Station> = (self.containers.iter())
            .filter_map(|c| Some((c.mac, station(c.port)?)))
            .collect();
        for e in self.datapath.switch().fdb_entries(now_ms()) {
            match station(e.port) {
                Some(s) => want.insert(e.mac, s),
                None => want.remove(&e.mac),
            };
        }
        // The host's own station: what containers send to the host's address, and what the
        // host sends them (not the NAT's), crosses in the kernel too. Not while the TAP is
        // captured.
        if !captured.contains(&TAP_PORT) {
            let host = Station {
                ifindex: self.tap_index,
                port: TAP_PORT,
                check: SrcCheck::Host(self.ipam.gateway()),
            };
            want.insert(self.gateway_mac, host);
        }
        if let Err(e) = fast.sync(&want) {
            tracing::warn!("updating the kernel fast path's stations: {e}");
        }
        // Relayed connections go through the kernel for the same ports, but not while the TAP
        // (the host's side of every one) is captured.
        if let Some(offloads) = &self.offloads {
            let served = (self.containers.iter())
                .filter(|_| !captured.contains(&TAP_PORT))
                .filter_map(|c| Some((c.ip, (c.port, served.get(&c.port)?.0))))
                .collect();
            offloads.serve(served);
        }
    }
}
