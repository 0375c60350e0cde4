//! The edge's hand on the table apart from frames: removing flows, expiry, and the reads behind
//! `conntrack -L` and the stats.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::conntrack::{
    inside_key, ContainerStats, Expired, FlowId, FlowView, Kind, NatStats, Proto, Refusals,
    StateCount,
};

use super::Nat;

/// A UDP flow or an echo as an edge that carries it needs it (see [`Nat::datagram_flow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramFlow {
    pub proto: Proto,
    /// The container's address and port (an echo: its identifier).
    pub container: SocketAddrV4,
    /// The remote end's (an echo: port 0).
    pub remote: SocketAddrV4,
    /// An echo's identifier on the host's side (UDP: 0, the host's socket has the port).
    pub host_ident: u16,
    /// The container's MAC.
    pub mac: [u8; 6],
}

impl Nat {
    /// The container's address and port of flow `flow`, if it exists.
    pub fn flow_inside(&self, flow: FlowId) -> Option<SocketAddrV4> {
        let (sh, slot) = self.table.lock_id(flow, None)?;
        sh.flow(slot).map(|f| f.inside())
    }

    /// The translated TCP flow from `container` to `remote`, if the table has one (how the edge
    /// finds the flows of connections the kernel opened, whose entries do not name them).
    pub fn translated_flow(&self, container: SocketAddrV4, remote: SocketAddrV4) -> Option<FlowId> {
        let (cip, rip) = (u32::from(*container.ip()), u32::from(*remote.ip()));
        let key = inside_key(Proto::Tcp, cip, container.port(), rip, remote.port());
        let sh = self.table.lock(self.table.shard_of(cip, container.port()));
        let (slot, id) = sh.get(key)?;
        matches!(sh.flow(slot)?.kind, Kind::TcpTranslated { .. }).then_some(id)
    }

    /// UDP flow or echo `flow`, for an edge that carries its datagrams itself (reporting them
    /// with [`Nat::offloaded`]); None for any other flow, or one gone.
    pub fn datagram_flow(&self, flow: FlowId) -> Option<DatagramFlow> {
        let (sh, slot) = self.table.lock_id(flow, None)?;
        let f = sh.flow(slot)?;
        let host_ident = match f.kind {
            Kind::UdpEgress => 0,
            Kind::Echo { nat_ident } => nat_ident,
            _ => return None,
        };
        Some(DatagramFlow {
            proto: f.kind.proto(),
            container: f.inside(),
            remote: f.remote(),
            host_ident,
            mac: sh.extra(slot).mac,
        })
    }

    /// How many more flows container `ip` may start now (see `Shares`): for an edge that lets
    /// connections open before the NAT hears of them (a kernel path), as many as that.
    pub fn room(&self, ip: Ipv4Addr) -> usize {
        self.table.room(u32::from(ip))
    }

    /// Removes a flow on the edge's request (it gave up on it); false if it was already gone.
    pub fn remove_flow(&self, flow: FlowId) -> bool {
        match self.table.lock_id(flow, None) {
            Some((mut sh, slot)) => self.table.remove_requested(&mut sh, slot).is_some(),
            None => false,
        }
    }

    /// Reclaims the flows expired at `now` and returns them with those reclaimed since the last
    /// call (found expired by a packet, or replaced by a new connection): the edge closes their
    /// sockets. Scans the whole table: call it about once a second.
    pub fn expire(&self, now: u64) -> Vec<Expired> {
        self.table.expire(now)
    }

    /// Removes every flow of a container that is going away (the edge closes their sockets) and
    /// forgets its counters.
    pub fn forget_container(&self, ip: Ipv4Addr) -> Vec<Expired> {
        self.table.forget_container(ip.into())
    }

    /// The live flows, like `conntrack -L`.
    pub fn entries(&self, now: u64) -> Vec<FlowView> {
        self.table.entries(now)
    }

    pub fn stats(&self) -> NatStats {
        self.table.stats()
    }

    /// The bound on the number of flows.
    pub fn max_flows(&self) -> usize {
        self.table.max_flows()
    }

    /// A container's counters (zero for an unknown address).
    pub fn container_stats(&self, ip: Ipv4Addr) -> ContainerStats {
        self.table.container_stats(ip.into())
    }

    /// Every container's counters, by address, in one pass over the table.
    pub fn all_container_stats(&self) -> HashMap<Ipv4Addr, ContainerStats> {
        (self.table.all_container_stats().into_iter())
            .map(|(ip, s)| (Ipv4Addr::from(ip), s))
            .collect()
    }

    /// New flows refused so far, by why (cheap: no lock).
    pub fn refusals(&self) -> Refusals {
        self.table.refusals()
    }

    /// Live flows by protocol and state.
    pub fn count_by_state(&self, now: u64) -> Vec<StateCount> {
        self.table.count_by_state(now)
    }

    /// The state of a flow (as `conntrack -L` shows it), if it is still in the table.
    pub fn state_of(&self, flow: FlowId) -> Option<&'static str> {
        self.table.state_of(flow)
    }
}
