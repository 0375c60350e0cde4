//! A port given to the switch and the workers: its packet sockets on the veth's host end, the
//! kernel fast path attached to it, its station and policy in the switch.

use std::net::Ipv4Addr;
use std::sync::Arc;

use vswitch_switch::{MacAddr, PortId, PortInfo, PortPolicy};

use crate::bpf::fastpath::{Attachment, MAX_PORTS};
use crate::ports::{Coalescing, Counters, Port};

use super::undo::Made;
use super::{DaemonError, Manager, Undo};

/// A port to add: its number, its veth's host end, its station, and whether it is new (not
/// taken over from a previous daemon).
#[derive(Clone, Copy)]
pub(in crate::daemon) struct NewPort<'a> {
    pub id: PortId,
    pub host_ifname: &'a str,
    pub index: u32,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub new: bool,
    /// What it may send and reach.
    pub policy: &'a PortPolicy,
}

impl Manager {
    /// Opens the port's sockets on the veth's host end, attaches the fast path and gives the
    /// port to the switch and the workers.
    pub(in crate::daemon) fn add_port(
        &mut self,
        p: &NewPort<'_>,
        undo: &mut Undo,
    ) -> Result<Option<Attachment>, DaemonError> {
        let fast = self.fast_path.as_ref().filter(|_| p.id.0 < MAX_PORTS);
        let filter = fast.map(|f| f.filter());
        let queues = (self
            .plumbing
            .open_queues(p.index, self.datapath.queues(), filter))
        .map_err(|e| DaemonError::io(format!("opening packet sockets on {}", p.host_ifname), e))?;
        self.install_port(p, queues, undo)
    }

    /// Attaches the fast path to a port whose sockets are open (by `add_port`, or by a process
    /// that handed them over) and gives the port to the switch and the workers.
    pub(in crate::daemon) fn install_port(
        &mut self,
        p: &NewPort<'_>,
        queues: Vec<Box<dyn crate::ports::PortIo>>,
        undo: &mut Undo,
    ) -> Result<Option<Attachment>, DaemonError> {
        let NewPort {
            id,
            host_ifname,
            index,
            ip,
            mac,
            new,
            policy,
        } = *p;
        let fast = self.fast_path.as_ref().filter(|_| id.0 < MAX_PORTS);
        self.budget.reserve(port_fds(queues.len()));
        undo.0.push(Made::Reserved(port_fds(queues.len())));
        // Without its program on the port, the port's stations stay out of the fast path's map,
        // so the sockets' filter lets all its frames through: the daemon switches them.
        let fast_link = fast.and_then(|f| {
            f.attach(id, index, new)
                .map_err(|e| {
                    tracing::warn!(port = %host_ifname, "no kernel fast path on this port: {e}")
                })
                .ok()
        });
        // The daemon reads every frame of a port without the fast path: let the kernel merge
        // a flood of datagrams for it (see `ports::Coalescing`).
        let coalesce = match fast_link {
            None => (Coalescing::prepare(host_ifname, index))
                .map_err(|e| tracing::info!(port = %host_ifname, "no receive coalescing: {e}"))
                .ok(),
            Some(_) => {
                if let Err(e) = Coalescing::reset(host_ifname, index) {
                    tracing::debug!(port = %host_ifname, "receive coalescing left as it was: {e}");
                }
                None
            }
        };
        let port = Arc::new(Port {
            id,
            name: host_ifname.to_string(),
            queues,
            by_flow: false,
            counters: Counters::default(),
            mirror: Default::default(),
            coalesce,
        });
        let station = PortInfo { mac, ip: Some(ip) };
        (self.datapath.switch()).add_port_with_policy(id, station, policy.clone());
        undo.0.push(Made::SwitchPort(id));
        (self.datapath.add_port(port))
            .map_err(|e| DaemonError::io("adding the port to a worker", e))?;
        undo.0.push(Made::DatapathPort(id));
        Ok(fast_link)
    }
}

/// Descriptors a port holds: its queues' sockets and the fast path's link.
pub(super) fn port_fds(queues: usize) -> usize {
    queues + 1
}
