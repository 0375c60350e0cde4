//! What a plug has made so far, so that a plug that fails half-way is undone in reverse order.

use std::net::Ipv4Addr;

use vswitch_switch::PortId;

use super::Manager;

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

impl Undo {
    /// An address reserved outside `try_plug` (adoption).
    pub fn address(&mut self, ip: Ipv4Addr) {
        self.0.push(Made::Address(ip));
    }
}

impl Manager {
    pub(in crate::daemon) fn roll_back(&mut self, undo: Undo) {
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
