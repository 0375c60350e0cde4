//! The side tables, shared by every shard: echo flows by translated identifier, published TCP
//! flows by the host's ephemeral port.

use std::collections::HashMap;

use super::{FlowId, Table};

/// The translated identifiers of echo flows and the ephemeral ports of published TCP flows:
/// both are found from values that carry no container address, hence no shard.
#[derive(Debug, Default)]
pub(super) struct Side {
    pub(super) idents: HashMap<u16, FlowId>,
    pub(super) next_ident: u16,
    pub(super) ephs: HashMap<u16, FlowId>,
}

impl Side {
    pub(super) fn alloc_ident(&mut self, id: FlowId) -> Option<u16> {
        if self.idents.len() > usize::from(u16::MAX) {
            return None;
        }
        loop {
            let ident = self.next_ident;
            self.next_ident = ident.wrapping_add(1);
            if let std::collections::hash_map::Entry::Vacant(v) = self.idents.entry(ident) {
                v.insert(id);
                return Some(ident);
            }
        }
    }
}

impl Table {
    /// The echo flow with translated identifier `ident`.
    pub fn echo_flow(&self, ident: u16) -> Option<FlowId> {
        self.side().idents.get(&ident).copied()
    }

    /// The published TCP flow whose host side is the ephemeral port `eph`.
    pub fn published_flow(&self, eph: u16) -> Option<FlowId> {
        self.side().ephs.get(&eph).copied()
    }
}
