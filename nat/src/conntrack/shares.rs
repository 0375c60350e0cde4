//! Each container's share of the table: how many flows it may have started at once, and how
//! many of its TCP connections may be connecting, so that one container cannot take the table
//! (or the descriptors behind it) from the others.

use std::sync::atomic::Ordering::Relaxed;

use super::{CreateError, Kind, Table};

/// What one container holds of the table: its share is bounded, so that one container cannot
/// take every flow (or every descriptor behind them) from the others.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Quota {
    /// Flows it started (egress), now.
    pub(super) live: usize,
    /// Of those, TCP connections whose connect is still in progress (the SYN held).
    pub(super) half_open: usize,
}

/// The per-container bounds of a container's share (its `Quota`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shares {
    /// Most flows one container may have started at once.
    pub flows: usize,
    /// Most TCP connections of one container connecting at once.
    pub half_open: usize,
}

impl Shares {
    /// A quarter of the table (at least 256 flows, at most all of it), and 1024 connections
    /// connecting: more than an application opening connections in parallel keeps in flight,
    /// far less than a SYN flood.
    pub fn for_table(max_flows: usize) -> Shares {
        Shares {
            flows: (max_flows / 4).max(256).min(max_flows),
            half_open: 1024,
        }
    }
}

impl Table {
    /// How many more flows container `cip` may start now, connecting TCP connections all: the
    /// least of what the table, its share and its share of connections connecting have left.
    pub fn room(&self, cip: u32) -> usize {
        let table = self.max_flows.saturating_sub(self.live.load(Relaxed));
        let q = self.quotas().get(&cip).copied().unwrap_or_default();
        let share = self.shares.flows.saturating_sub(q.live);
        table
            .min(share)
            .min(self.shares.half_open.saturating_sub(q.half_open))
    }

    /// Takes a flow of `kind` from container `cip`'s share; egress flows only: published ones
    /// are the outside's doing, not the container's.
    pub(super) fn take_share(&self, cip: u32, kind: Kind) -> Result<(), CreateError> {
        if !kind.egress() {
            return Ok(());
        }
        let mut quotas = self.quotas();
        let q = quotas.entry(cip).or_default();
        if q.live >= self.shares.flows {
            self.counters.container_limit.fetch_add(1, Relaxed);
            return Err(CreateError::ContainerLimit);
        }
        let half_open = kind.connecting();
        if half_open && q.half_open >= self.shares.half_open {
            self.counters.half_open_limit.fetch_add(1, Relaxed);
            return Err(CreateError::HalfOpen);
        }
        q.live += 1;
        q.half_open += usize::from(half_open);
        Ok(())
    }

    /// Gives back what [`Table::take_share`] took for a flow of `kind` (now `kind`: a connect
    /// that finished already gave its half-open place back).
    pub(super) fn give_share(&self, cip: u32, kind: Kind) {
        if !kind.egress() {
            return;
        }
        let mut quotas = self.quotas();
        if let Some(q) = quotas.get_mut(&cip) {
            q.live = q.live.saturating_sub(1);
            q.half_open = q.half_open.saturating_sub(usize::from(kind.connecting()));
            if q.live == 0 {
                quotas.remove(&cip);
            }
        }
    }

    /// Container `cip`'s connect finished: it no longer counts as half-open.
    pub fn connect_done(&self, cip: u32) {
        if let Some(q) = self.quotas().get_mut(&cip) {
            q.half_open = q.half_open.saturating_sub(1);
        }
    }

    /// Takes back a place in `cip`'s share for a flow that opened again, whatever the share's
    /// bound: the flow exists already.
    pub(super) fn force_share(&self, cip: u32, kind: Kind) {
        if kind.egress() {
            let mut quotas = self.quotas();
            let q = quotas.entry(cip).or_default();
            q.live += 1;
            q.half_open += usize::from(kind.connecting());
        }
    }
}
