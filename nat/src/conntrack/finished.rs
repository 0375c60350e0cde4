//! Finished TCP flows (TIME_WAIT, CLOSE): kept for their timeout, as netfilter keeps them, but
//! outside the table's bound and their container's share, and the oldest dropped first when a
//! shard holds too many.

use std::sync::atomic::Ordering::Relaxed;

use super::{Proto, Shard, Table, SHARDS};

/// How many finished TCP flows a shard keeps at most: together as many as the table's bound
/// (at least 64 Ki), a few seconds of history even at tens of thousands of connections a second.
pub(super) fn finished_per_shard(max_flows: usize) -> usize {
    max_flows.max(65536).div_ceil(SHARDS)
}

impl Table {
    /// Call after a TCP flow's tracked state may have moved between open and finished
    /// (TIME_WAIT or CLOSE): a flow that finishes gives its place in the table's bound and in
    /// its container's share back at once and joins its shard's queue of finished flows, whose
    /// oldest are dropped (and reported to the edge) beyond the shard's bound; a finished flow
    /// that opens again (a new SYN on its addresses) takes its places back.
    pub fn settle(&self, sh: &mut Shard, slot: u32) {
        let Some(flow) = sh.flow(slot) else { return };
        let (closed, cip, kind) = (flow.tcp.state().is_closed(), flow.cip, flow.kind);
        if kind.proto() != Proto::Tcp || closed == sh.is_finished(slot) {
            return;
        }
        let Some(c) = sh.cold.get_mut(slot as usize) else {
            return;
        };
        c.finished = closed;
        let generation = c.generation;
        if closed {
            self.give_share(cip, kind);
            self.live.fetch_sub(1, Relaxed);
            self.finished.fetch_add(1, Relaxed);
            sh.finished_count += 1;
            sh.finished.push_back((slot, generation));
            self.drop_finished(sh);
        } else {
            self.force_share(cip, kind);
            self.live.fetch_add(1, Relaxed);
            self.finished.fetch_sub(1, Relaxed);
            sh.finished_count -= 1;
        }
    }

    /// Drops the oldest finished flows of a shard beyond its bound, and forgets queue entries
    /// of flows already gone.
    fn drop_finished(&self, sh: &mut Shard) {
        while let Some(&front) = sh.finished.front() {
            if sh.finished_entry_live(front) {
                if sh.finished_count <= self.finished_per_shard {
                    break;
                }
                self.reap(sh, front.0);
            }
            sh.finished.pop_front();
        }
        // Entries of flows removed meanwhile (expired, replaced) may sit behind live ones, and a
        // flow that finished, opened and finished again has an entry of each finish: its last
        // one stays (the queue's order is the order they finished in).
        if sh.finished.len() > 2 * sh.finished_count + 64 {
            let queue = std::mem::take(&mut sh.finished);
            let mut kept = std::collections::HashSet::with_capacity(sh.finished_count);
            let mut last: Vec<_> = (queue.into_iter().rev())
                .filter(|&e| sh.finished_entry_live(e) && kept.insert(e.0))
                .collect();
            last.reverse();
            sh.finished = last.into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Extra, Flow, Kind, Timeouts};
    use super::*;
    use crate::tcp_state::{Dir, TcpState, TcpTracker};

    #[test]
    fn a_flow_that_finishes_again_and_again_is_queued_once() {
        // Found in a profile: a translated flow whose reported state went back and forth between
        // FIN_WAIT and TIME_WAIT queued an entry at each finish, which no compaction removed,
        // and every later finish of the shard rescanned them all.
        let t = Table::new(1000, Timeouts::default());
        let mut sh = t.lock(0);
        let kind = Kind::TcpTranslated {
            relay: 1,
            connecting: false,
        };
        let f = Flow::new(kind, 1, 2, 3, 4);
        t.create(&mut sh, f.clone(), Extra::default(), 0).unwrap();
        let (slot, _) = sh.get(f.inside_key()).unwrap();
        for i in 0..=10_000 {
            let state = [TcpState::TimeWait, TcpState::FinWait][i % 2];
            if let Some(f) = sh.flow_mut(slot) {
                f.tcp = TcpTracker::from_parts(state, Dir::Orig, Dir::Reply);
            }
            t.settle(&mut sh, slot);
        }
        assert!(sh.finished.len() <= 2 + 64, "{} queued", sh.finished.len());
        assert_eq!(sh.finished_count, 1);
    }
}
