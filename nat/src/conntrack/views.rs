//! What the table shows of itself: its flows as `conntrack -L` lists them, counts by state,
//! and each container's counters.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::{Flow, FlowId, Kind, Proto, Table, SHARDS};

/// One flow as `conntrack -L` would show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowView {
    pub flow: FlowId,
    pub proto: Proto,
    /// The container's address and port (for ICMP, its echo identifier).
    pub inside: SocketAddrV4,
    /// The remote address and port: the destination of an outgoing flow, the client of a
    /// published one (for ICMP, the translated echo identifier).
    pub outside: SocketAddrV4,
    /// Opened from outside through a published port.
    pub published: bool,
    /// For TCP, the gateway port the host's side of the connection uses: the relay listener's
    /// port (outgoing), or the ephemeral port the host connects to the container from
    /// (published).
    pub gateway_port: Option<u16>,
    /// TCP state name, or `UNREPLIED` / `REPLIED` for UDP and ICMP.
    pub state: &'static str,
    /// Milliseconds left before the flow expires if idle.
    pub timeout_ms: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// Flows in the table of one protocol in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateCount {
    pub proto: Proto,
    /// As in [`FlowView::state`].
    pub state: &'static str,
    pub flows: usize,
}

/// One container's NAT counters, including those of its flows already gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ContainerStats {
    /// Flows in the table now.
    pub flows: usize,
    pub flows_created: u64,
    /// New flows refused: the table, or the container's share of it, was full.
    pub refused: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

impl Table {
    pub fn entries(&self, now: u64) -> Vec<FlowView> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            let sh = self.lock(i);
            for (slot, s) in sh.slots.iter().enumerate() {
                let Some(f) = &s.0 else { continue };
                if f.expires_at <= now {
                    continue;
                }
                let outside = match f.kind {
                    Kind::Echo { nat_ident } => SocketAddrV4::new(Ipv4Addr::from(f.rip), nat_ident),
                    _ => f.remote(),
                };
                out.push(FlowView {
                    flow: sh.id_of(slot as u32),
                    proto: f.kind.proto(),
                    inside: f.inside(),
                    outside,
                    published: f.kind.published(),
                    gateway_port: f.kind.gateway_port(),
                    state: f.state_str(),
                    timeout_ms: f.expires_at - now,
                    packets_out: f.packets_out,
                    packets_in: f.packets_in,
                    bytes_out: f.bytes_out,
                    bytes_in: f.bytes_in,
                });
            }
        }
        out
    }

    /// Live flows by protocol and state, in a stable order (protocol, then state name).
    pub fn count_by_state(&self, now: u64) -> Vec<StateCount> {
        let mut counts: Vec<StateCount> = Vec::new();
        for i in 0..SHARDS {
            let sh = self.lock(i);
            for f in sh.slots.iter().filter_map(|s| s.0.as_ref()) {
                if f.expires_at <= now {
                    continue;
                }
                let (proto, state) = (f.kind.proto(), f.state_str());
                match counts
                    .iter_mut()
                    .find(|c| c.proto == proto && c.state == state)
                {
                    Some(c) => c.flows += 1,
                    None => counts.push(StateCount {
                        proto,
                        state,
                        flows: 1,
                    }),
                }
            }
        }
        counts.sort_by_key(|c| (c.proto.code(), c.state));
        counts
    }

    /// The state of flow `id` (as in [`FlowView::state`]), if it is in the table.
    pub fn state_of(&self, id: FlowId) -> Option<&'static str> {
        let (sh, slot) = self.lock_id(id, None)?;
        sh.flow(slot).map(Flow::state_str)
    }

    /// Every container's counters, in one pass over the table (as [`Table::container_stats`]
    /// of each address).
    pub fn all_container_stats(&self) -> HashMap<u32, ContainerStats> {
        let mut out: HashMap<u32, ContainerStats> = HashMap::new();
        for i in 0..SHARDS {
            let sh = self.lock(i);
            for (&cip, r) in &sh.retired {
                add_retired(out.entry(cip).or_default(), r);
            }
            for f in sh.slots.iter().filter_map(|s| s.0.as_ref()) {
                let total = out.entry(f.cip).or_default();
                total.flows += 1;
                f.add_to(total);
            }
        }
        out
    }

    pub fn container_stats(&self, cip: u32) -> ContainerStats {
        let mut total = ContainerStats::default();
        for i in 0..SHARDS {
            let sh = self.lock(i);
            if let Some(r) = sh.retired.get(&cip) {
                add_retired(&mut total, r);
            }
            for f in sh.slots.iter().filter_map(|s| s.0.as_ref()) {
                if f.cip == cip {
                    total.flows += 1;
                    f.add_to(&mut total);
                }
            }
        }
        total
    }
}

/// Adds what a shard keeps of a container (its flows created and refused, the counters of its
/// flows gone) to its totals.
fn add_retired(total: &mut ContainerStats, r: &ContainerStats) {
    total.flows_created += r.flows_created;
    total.refused += r.refused;
    total.packets_out += r.packets_out;
    total.packets_in += r.packets_in;
    total.bytes_out += r.bytes_out;
    total.bytes_in += r.bytes_in;
}
