//! What a plug has made so far, and the guard that undoes it, in reverse order, when a plug (or
//! an adoption, or a hand-over's port) fails half-way.

use std::net::Ipv4Addr;

use vswitch_switch::PortId;

use super::{DaemonError, Manager};

/// What a plug has made so far, in order.
#[derive(Debug, Default)]
pub struct Undo(pub(super) Vec<Made>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Made {
    Address(Ipv4Addr),
    Link(u32),
    Reserved(usize),
    SwitchPort(PortId),
    DatapathPort(PortId),
}

impl Manager {
    /// Runs `steps` after what `undo` records was made: if they fail, all of it is undone, in
    /// reverse order.
    pub(in crate::daemon) fn undo_on_error<T>(
        &mut self,
        mut undo: Undo,
        steps: impl FnOnce(&mut Manager, &mut Undo) -> Result<T, DaemonError>,
    ) -> Result<T, DaemonError> {
        let result = steps(self, &mut undo);
        if result.is_err() {
            self.roll_back(undo);
        }
        result
    }

    /// Reserves the address of a port this process did not plug (adopted, or handed over):
    /// the first thing to undo if taking the port fails.
    pub(in crate::daemon) fn reserve_recorded(
        &mut self,
        ip: Ipv4Addr,
    ) -> Result<Undo, DaemonError> {
        self.ipam.reserve_where(Some(ip), |_| true)?;
        Ok(Undo(vec![Made::Address(ip)]))
    }

    fn roll_back(&mut self, undo: Undo) {
        for made in undo.0.into_iter().rev() {
            match made {
                Made::DatapathPort(id) => drop(self.datapath.remove_port(id)),
                Made::SwitchPort(id) => self.datapath.switch().remove_port(id),
                // Deleting the host end deletes both.
                Made::Link(index) => drop(self.plumbing.delete_link(index)),
                Made::Address(ip) => self.ipam.release(ip),
                Made::Reserved(fds) => self.budget.unreserve(fds),
            }
        }
    }
}
