//! An outgoing TCP connection the edge translates itself, from its SYN on (a kernel path): the
//! NAT hands over the held SYN rewritten to come from the host's address and port, and from
//! then on learns of the connection only from the edge's reports of the flags its segments
//! carried, which move the flow's state (and so its timeout) as the segments would have.

use std::net::SocketAddrV4;
use std::ops::Range;

use crate::checksum::{finish, sum};
use crate::conntrack::{FlowId, Kind};
use crate::error::NatError;
use crate::tcp_state::{Dir, TcpState, TcpTracker};
use crate::wire::{
    wr16, IP_OFF, TCP_ACK, TCP_CSUM_OFF, TCP_FIN, TCP_RST, TCP_SYN, VNET_F_NEEDS_CSUM,
};

use super::frame::{rewrite_tcp, End};
use super::Nat;

impl Nat {
    /// The edge carries connecting flow `flow` itself from `host` (the host's address and the
    /// port it reserved): rewrites the held SYN to come from there, its checksums complete, and
    /// returns where its IPv4 packet is in `held_syn`, for the edge to send.
    pub fn tcp_translated(
        &self,
        flow: FlowId,
        held_syn: &mut [u8],
        host: SocketAddrV4,
        now: u64,
    ) -> Result<Range<usize>, NatError> {
        let (pkt, mut sh, slot, relay) = self.held_connecting(flow, held_syn, now)?;
        let f = sh.flow_mut(slot).ok_or(NatError::UnknownFlow(flow))?;
        if pkt.is_gso() {
            return Err(NatError::FlowClosed(flow));
        }
        let partial = pkt
            .partial_csum(TCP_CSUM_OFF)
            .map_err(|_| NatError::Malformed)?;
        rewrite_tcp(held_syn, &pkt, End::Src, u32::from(*host.ip()), host.port())
            .map_err(|_| NatError::Malformed)?;
        if partial {
            // No offload finishes it on the way out: here, as an offload would, over the
            // segment whose field holds the (rewritten) pseudo-header's sum.
            let csum = finish(sum(&held_syn[pkt.l4..pkt.end], 0));
            wr16(held_syn, pkt.l4 + TCP_CSUM_OFF, csum);
            held_syn[0] &= !VNET_F_NEEDS_CSUM;
        }
        // Half-open (in the container's count) until the handshake is over.
        f.kind = Kind::TcpTranslated {
            relay,
            connecting: true,
        };
        f.count_out(pkt.l3_len());
        self.table.refresh(f, now);
        Ok(IP_OFF..pkt.end)
    }

    /// What the edge saw of translated flow `flow` since it took it: the TCP flags its segments
    /// carried out and back so far (all of them, since the last SYN each way), and what it
    /// carried since its last report (as [`Nat::offloaded`]). The flow's state follows. Returns
    /// the state, or None if the flow is gone.
    pub fn translated_seen(
        &self,
        flow: FlowId,
        (out_flags, back_flags): (u8, u8),
        out: (u64, u64),
        back: (u64, u64),
        now: u64,
    ) -> Option<TcpState> {
        let (mut sh, slot) = self.table.lock_id(flow, None)?;
        let f = sh.flow_mut(slot)?;
        let Kind::TcpTranslated { relay, connecting } = f.kind else {
            return None;
        };
        f.packets_out += out.0;
        f.bytes_out += out.1;
        f.packets_in += back.0;
        f.bytes_in += back.1;
        let before = f.tcp.state();
        let was_closed = before.is_closed();
        f.tcp = tracker(out_flags, back_flags);
        f.replied |= back_flags != 0;
        let state = f.tcp.state();
        // Answered (a SYN or a RST back), or past that: no longer half-open.
        if connecting && (back_flags & (TCP_SYN | TCP_RST) != 0 || state != TcpState::SynSent) {
            self.table.connect_done(f.cip);
            f.kind = Kind::TcpTranslated {
                relay,
                connecting: false,
            };
        }
        // Its timeout follows its state, as a segment's would move it.
        if out.0 + back.0 > 0 || state != before {
            self.table.refresh(f, now);
        }
        if state.is_closed() != was_closed {
            self.table.settle(&mut sh, slot);
        }
        Some(state)
    }
}

/// The state a connection is in whose segments carried `out` and `back` flags (each since its
/// last SYN): netfilter's, as far as flags alone tell it (a FIN is taken as acknowledged once
/// the other side sent its own).
fn tracker(out: u8, back: u8) -> TcpTracker {
    use TcpState::*;
    let (first, last) = match (out & TCP_FIN != 0, back & TCP_FIN != 0) {
        (false, true) => (Dir::Reply, Dir::Orig),
        _ => (Dir::Orig, Dir::Reply),
    };
    let state = if out & TCP_ACK == 0 {
        // Only the SYN out so far: refused, or waiting for the answer.
        if back & TCP_RST != 0 {
            Close
        } else {
            SynSent
        }
    } else if (out | back) & TCP_RST != 0 {
        Close
    } else if out & back & TCP_FIN != 0 {
        TimeWait
    } else if (out | back) & TCP_FIN != 0 {
        FinWait
    } else if back & TCP_SYN != 0 {
        Established
    } else {
        SynSent
    };
    TcpTracker::from_parts(state, first, last)
}
