//! One shard of the table: an index from both keys of its flows to their slots, the slots,
//! and what it keeps of flows already gone.

use std::collections::{HashMap, VecDeque};

use crate::hash::{fingerprint, IdentityBuild};

use super::{make_id, ContainerStats, Expired, Extra, Flow, FlowId};

/// A flow's hot part, in a cache line of its own.
#[repr(align(64))]
#[derive(Debug)]
pub(super) struct Slot(pub(super) Option<Flow>);

/// The rest of a slot, read on the slow paths only.
#[derive(Debug)]
pub(super) struct Cold {
    pub(super) generation: u32,
    pub(super) extra: Extra,
    /// A finished TCP flow (see [`Table::settle`]): outside the table's bound and its
    /// container's share, listed in its shard's `finished` queue.
    pub(super) finished: bool,
}

/// One shard: an index from both keys to slots, and the slots.
#[derive(Debug)]
pub(crate) struct Shard {
    pub(super) index: usize,
    /// The fingerprints of both keys of each flow, to the flow's id (whose low 32 bits are
    /// its slot).
    pub(super) keys: HashMap<u64, FlowId, IdentityBuild>,
    /// Seed of the fingerprints (the same in every shard).
    pub(super) seed: u64,
    pub(super) slots: Vec<Slot>,
    pub(super) cold: Vec<Cold>,
    pub(super) free: Vec<u32>,
    /// Flows reclaimed or replaced outside `expire`, reported by the next `expire`.
    pub(super) reaped: Vec<Expired>,
    /// Counters of flows already gone (and flows created), by container address.
    pub(super) retired: HashMap<u32, ContainerStats>,
    /// Where the next relay port search starts, so consecutive flows spread over the ports.
    pub(super) relay_cursor: usize,
    /// Finished TCP flows (slot, generation), oldest first; entries of flows since removed are
    /// skipped when they reach the front.
    pub(super) finished: VecDeque<(u32, u32)>,
    /// How many of this shard's flows are finished.
    pub(super) finished_count: usize,
}

impl Shard {
    pub(super) fn new(index: usize, seed: u64) -> Shard {
        Shard {
            index,
            keys: HashMap::with_hasher(IdentityBuild),
            seed,
            slots: Vec::new(),
            cold: Vec::new(),
            free: Vec::new(),
            reaped: Vec::new(),
            retired: HashMap::new(),
            relay_cursor: index,
            finished: VecDeque::new(),
            finished_count: 0,
        }
    }

    #[inline]
    pub fn flow(&self, slot: u32) -> Option<&Flow> {
        self.slots.get(slot as usize)?.0.as_ref()
    }

    #[inline]
    pub fn flow_mut(&mut self, slot: u32) -> Option<&mut Flow> {
        self.slots.get_mut(slot as usize)?.0.as_mut()
    }

    pub fn extra(&self, slot: u32) -> Extra {
        self.cold
            .get(slot as usize)
            .map_or_else(Extra::default, |c| c.extra)
    }

    pub fn extra_mut(&mut self, slot: u32) -> Option<&mut Extra> {
        self.cold.get_mut(slot as usize).map(|c| &mut c.extra)
    }

    pub(super) fn id_of(&self, slot: u32) -> FlowId {
        let generation = self.cold.get(slot as usize).map_or(0, |c| c.generation);
        make_id(generation, self.index, slot)
    }

    /// The slot and id of the flow a key maps to, expired or not.
    #[inline]
    pub fn get(&self, key: u128) -> Option<(u32, FlowId)> {
        let &id = self.keys.get(&fingerprint(self.seed, key))?;
        let slot = id as u32;
        let f = self.flow(slot)?;
        // A fingerprint is not the key: check the flow's.
        (f.inside_key() == key || f.outside_key() == Some(key)).then_some((slot, id))
    }

    /// Whether the flow in `slot` is a finished TCP flow.
    #[inline]
    pub fn is_finished(&self, slot: u32) -> bool {
        self.cold.get(slot as usize).is_some_and(|c| c.finished)
    }

    /// Whether the `finished` queue entry names a flow still finished.
    pub(super) fn finished_entry_live(&self, (slot, generation): (u32, u32)) -> bool {
        (self.cold.get(slot as usize)).is_some_and(|c| c.finished && c.generation == generation)
    }
}
