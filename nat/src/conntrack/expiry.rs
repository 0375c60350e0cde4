//! How long an idle flow is kept, by state, and reclaiming the flows whose time has passed.

use std::sync::atomic::Ordering::Relaxed;

use crate::tcp_state::{Dir, TcpState};

use super::{Flow, FlowId, Proto, Table, SHARDS};

/// How long an idle flow is kept, in milliseconds, by state. The defaults are netfilter's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_sent: u64,
    pub tcp_syn_recv: u64,
    pub tcp_established: u64,
    pub tcp_fin_wait: u64,
    pub tcp_close_wait: u64,
    pub tcp_last_ack: u64,
    pub tcp_time_wait: u64,
    pub tcp_close: u64,
    /// UDP until a reply has been seen.
    pub udp: u64,
    /// UDP once replied.
    pub udp_replied: u64,
    pub icmp: u64,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        const S: u64 = 1000;
        Timeouts {
            tcp_syn_sent: 120 * S,
            tcp_syn_recv: 60 * S,
            tcp_established: 432_000 * S,
            tcp_fin_wait: 120 * S,
            tcp_close_wait: 60 * S,
            tcp_last_ack: 30 * S,
            tcp_time_wait: 120 * S,
            tcp_close: 10 * S,
            udp: 30 * S,
            udp_replied: 120 * S,
            icmp: 30 * S,
        }
    }
}

impl Timeouts {
    pub fn tcp(&self, state: TcpState) -> u64 {
        match state {
            TcpState::None | TcpState::SynSent => self.tcp_syn_sent,
            TcpState::SynRecv => self.tcp_syn_recv,
            TcpState::Established => self.tcp_established,
            TcpState::FinWait => self.tcp_fin_wait,
            TcpState::CloseWait => self.tcp_close_wait,
            TcpState::LastAck => self.tcp_last_ack,
            TcpState::TimeWait => self.tcp_time_wait,
            TcpState::Close => self.tcp_close,
        }
    }
}

/// A flow reclaimed by the table: the edge closes its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub flow: FlowId,
    pub proto: Proto,
}

impl Table {
    /// Timeout of a flow in its current state.
    #[inline]
    pub fn timeout(&self, flow: &Flow) -> u64 {
        match flow.kind.proto() {
            Proto::Tcp => self.timeouts.tcp(flow.tcp.state()),
            Proto::Udp if flow.replied => self.timeouts.udp_replied,
            Proto::Udp => self.timeouts.udp,
            Proto::Icmp => self.timeouts.icmp,
        }
    }

    /// Pushes a flow's expiry forward after a packet.
    #[inline]
    pub fn refresh(&self, flow: &mut Flow, now: u64) {
        flow.expires_at = now.saturating_add(self.timeout(flow));
    }

    /// A segment of a TCP flow, sent from `dir` with `flags`: the flow's state moves on and its
    /// expiry with it. True if it moved between open and finished: [`Table::settle`] it then.
    #[inline]
    pub fn tcp_segment(&self, flow: &mut Flow, dir: Dir, flags: u8, now: u64) -> bool {
        let was_closed = flow.tcp.state().is_closed();
        flow.tcp.update(dir, flags);
        self.refresh(flow, now);
        flow.tcp.state().is_closed() != was_closed
    }

    /// Reclaims every flow expired at `now`, and reports those reclaimed since the last call.
    pub fn expire(&self, now: u64) -> Vec<Expired> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            let mut sh = self.lock(i);
            out.append(&mut sh.reaped);
            for slot in 0..sh.slots.len() as u32 {
                if sh.flow(slot).is_some_and(|f| f.expires_at <= now) {
                    if let Some(e) = self.remove(&mut sh, slot) {
                        self.counters.expired.fetch_add(1, Relaxed);
                        out.push(e);
                    }
                }
            }
        }
        out
    }

    /// Removes every flow of container `cip` (which is going away) and forgets its counters.
    pub fn forget_container(&self, cip: u32) -> Vec<Expired> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            let mut sh = self.lock(i);
            for slot in 0..sh.slots.len() as u32 {
                if sh.flow(slot).is_some_and(|f| f.cip == cip) {
                    out.extend(self.remove_requested(&mut sh, slot));
                }
            }
            sh.retired.remove(&cip);
        }
        out
    }
}
