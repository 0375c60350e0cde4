//! Creating and removing flows: a slot and its generation, both keys in the shard's index, the
//! flow's place in the table's bound and its container's share, the side tables.

use std::sync::atomic::Ordering::Relaxed;

use crate::hash::fingerprint;

use super::shard::{Cold, Slot};
use super::{make_id, Expired, Extra, Flow, FlowId, Kind, Shard, Table, GEN_MASK};

/// Why a flow could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CreateError {
    TableFull,
    NoEchoIdent,
    InUse,
    /// The container has its whole share of the table.
    ContainerLimit,
    /// The container has its whole share of connections still connecting.
    HalfOpen,
}

impl Table {
    /// Inserts a new flow under its keys, which the caller has checked are free. For an echo
    /// flow the translated identifier is allocated here (the `nat_ident` given is ignored).
    pub fn create(
        &self,
        sh: &mut Shard,
        flow: Flow,
        extra: Extra,
        now: u64,
    ) -> Result<FlowId, CreateError> {
        // A full table is the table's limit, whoever holds the flows.
        if self.live.load(Relaxed) >= self.max_flows {
            self.counters.table_full.fetch_add(1, Relaxed);
            return Err(CreateError::TableFull);
        }
        self.take_share(flow.cip, flow.kind)?;
        let result = self.insert(sh, flow.clone(), extra, now);
        if result.is_err() {
            self.give_share(flow.cip, flow.kind);
        }
        result
    }

    fn insert(
        &self,
        sh: &mut Shard,
        mut flow: Flow,
        extra: Extra,
        now: u64,
    ) -> Result<FlowId, CreateError> {
        if self.live.fetch_add(1, Relaxed) >= self.max_flows {
            self.live.fetch_sub(1, Relaxed);
            self.counters.table_full.fetch_add(1, Relaxed);
            return Err(CreateError::TableFull);
        }
        let (slot, generation) = match sh.free.last() {
            Some(&s) => (s, sh.cold.get(s as usize).map_or(0, |c| c.generation)),
            None => (sh.slots.len() as u32, 0),
        };
        let id = make_id(generation, sh.index, slot);
        let fp_in = fingerprint(sh.seed, flow.inside_key());
        let fp_out = flow.outside_key().map(|k| fingerprint(sh.seed, k));
        if sh.keys.contains_key(&fp_in) || fp_out.is_some_and(|k| sh.keys.contains_key(&k)) {
            // Taken (the caller did not check), or a 64-bit fingerprint collision.
            self.live.fetch_sub(1, Relaxed);
            return Err(CreateError::InUse);
        }
        match flow.kind {
            Kind::Echo { .. } => match self.side().alloc_ident(id) {
                Some(nat_ident) => flow.kind = Kind::Echo { nat_ident },
                None => {
                    self.live.fetch_sub(1, Relaxed);
                    self.counters.no_echo_ident.fetch_add(1, Relaxed);
                    return Err(CreateError::NoEchoIdent);
                }
            },
            Kind::TcpPublished { eph } => {
                let mut side = self.side();
                if side.ephs.contains_key(&eph) {
                    self.live.fetch_sub(1, Relaxed);
                    return Err(CreateError::InUse);
                }
                side.ephs.insert(eph, id);
            }
            _ => {}
        }
        self.refresh(&mut flow, now);
        sh.keys.insert(fp_in, id);
        if let Some(k) = fp_out {
            sh.keys.insert(k, id);
        }
        sh.retired.entry(flow.cip).or_default().flows_created += 1;
        if sh.free.pop().is_none() {
            sh.slots.push(Slot(Some(flow)));
            sh.cold.push(Cold {
                generation,
                extra,
                finished: false,
            });
        } else if let (Some(s), Some(c)) = (
            sh.slots.get_mut(slot as usize),
            sh.cold.get_mut(slot as usize),
        ) {
            s.0 = Some(flow);
            c.extra = extra;
            c.finished = false;
        }
        self.counters.created.fetch_add(1, Relaxed);
        Ok(id)
    }

    /// Removes a flow and its keys; its counters go to its container's retired totals.
    pub fn remove(&self, sh: &mut Shard, slot: u32) -> Option<Expired> {
        let id = sh.id_of(slot);
        let flow = sh.slots.get_mut(slot as usize)?.0.take()?;
        let mut finished = false;
        if let Some(c) = sh.cold.get_mut(slot as usize) {
            c.generation = (c.generation + 1) & GEN_MASK;
            finished = std::mem::take(&mut c.finished);
        }
        sh.free.push(slot);
        let k = fingerprint(sh.seed, flow.inside_key());
        if sh.keys.get(&k) == Some(&id) {
            sh.keys.remove(&k);
        }
        if let Some(k) = flow.outside_key() {
            let k = fingerprint(sh.seed, k);
            if sh.keys.get(&k) == Some(&id) {
                sh.keys.remove(&k);
            }
        }
        match flow.kind {
            Kind::Echo { nat_ident } => {
                let mut side = self.side();
                if side.idents.get(&nat_ident) == Some(&id) {
                    side.idents.remove(&nat_ident);
                }
            }
            Kind::TcpPublished { eph } => {
                let mut side = self.side();
                if side.ephs.get(&eph) == Some(&id) {
                    side.ephs.remove(&eph);
                }
            }
            _ => {}
        }
        flow.add_to(sh.retired.entry(flow.cip).or_default());
        if finished {
            // It left the bound and its share when it finished.
            sh.finished_count -= 1;
            self.finished.fetch_sub(1, Relaxed);
        } else {
            self.give_share(flow.cip, flow.kind);
            self.live.fetch_sub(1, Relaxed);
        }
        Some(Expired {
            flow: id,
            proto: flow.kind.proto(),
        })
    }

    /// Removes a flow on the edge's request.
    pub fn remove_requested(&self, sh: &mut Shard, slot: u32) -> Option<Expired> {
        let e = self.remove(sh, slot)?;
        self.counters.removed.fetch_add(1, Relaxed);
        Some(e)
    }

    /// Removes a flow outside `expire` (expired, or replaced by a new connection on its
    /// addresses) and queues it for the edge.
    pub fn reap(&self, sh: &mut Shard, slot: u32) {
        if let Some(e) = self.remove(sh, slot) {
            sh.reaped.push(e);
            self.counters.expired.fetch_add(1, Relaxed);
        }
    }
}
