//! The port directory as the switch's callers see it: registering a port with its station
//! and policy, reading them back, removing it, announcing its station.

use crate::arp;
use crate::policy::{PortPolicy, PortSecurityStats};
use crate::port::{PortId, PortInfo};

use super::Switch;

impl Switch {
    /// Registers (or replaces) a port and its station, which the switch answers ARP for, with
    /// the default policy: its frames are checked (anti-spoofing, see [`PortPolicy`]).
    pub fn add_port(&self, id: PortId, info: PortInfo) {
        self.add_port_with_policy(id, info, PortPolicy::default());
    }

    /// Registers (or replaces) a port, its station and what it may send and reach. A port
    /// that was not registered starts with zeroed port-security counters.
    pub fn add_port_with_policy(&self, id: PortId, info: PortInfo, policy: PortPolicy) {
        self.ports.add(id, info, policy, self.max_macs_per_port);
    }

    /// The policy port `id` was registered with.
    pub fn port_policy(&self, id: PortId) -> Option<PortPolicy> {
        self.ports.policy(id)
    }

    /// Port `id`'s port-security counters, `None` if it is not registered.
    pub fn port_security(&self, id: PortId) -> Option<PortSecurityStats> {
        self.ports.security_stats(id)
    }

    /// Most MACs the forwarding table learns on port `id` besides its station's own.
    pub fn port_mac_limit(&self, id: PortId) -> u32 {
        self.ports.mac_limit(id).try_into().unwrap_or(u32::MAX)
    }

    /// MACs learned on port `id` besides its station's own (aged ones not yet expired
    /// included).
    pub fn fdb_learned_on(&self, id: PortId) -> usize {
        self.fdb.learned_on(id)
    }

    /// Forgets the port and every MAC learned on it.
    pub fn remove_port(&self, id: PortId) {
        // Unregister first: learning re-checks registration under the table's write lock,
        // so after the purge no frame still in flight can bring an entry back.
        self.ports.remove(id);
        self.fdb.purge_port(id);
    }

    pub fn port_info(&self, id: PortId) -> Option<PortInfo> {
        self.ports.info(id)
    }

    /// A gratuitous ARP announcing port `id`'s station (broadcast request, sender IP = target
    /// IP), written into `buf`. `None` if the port is unknown, has no IPv4 address, or `buf` is
    /// shorter than 60 bytes.
    pub fn gratuitous_arp(&self, id: PortId, buf: &mut [u8]) -> Option<usize> {
        let info = self.ports.info(id)?;
        arp::write_gratuitous(buf, info.mac, info.ip?)
    }
}
