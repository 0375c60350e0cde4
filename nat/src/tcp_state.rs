//! TCP connection state as netfilter tracks it, from the flags seen in both directions.
//!
//! The state only chooses how long an idle flow is kept (see `conntrack::Timeouts`): the hosts at
//! both ends run the real TCP state machines, so this one is deliberately forgiving. It never
//! rejects a segment; it just does not move on flags that make no sense in the current state.

use crate::wire::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Tracked TCP state, with netfilter's names (`conntrack -L`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum TcpState {
    /// No segment seen yet (a published flow before the host's SYN).
    None,
    SynSent,
    SynRecv,
    Established,
    /// A FIN seen in one direction.
    FinWait,
    /// The FIN acknowledged by the other side, which may still send.
    CloseWait,
    /// FINs seen in both directions; waiting for the last ACK.
    LastAck,
    TimeWait,
    /// Reset.
    Close,
}

impl TcpState {
    pub fn as_str(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
        }
    }

    /// The connection is over: a new SYN from the originator starts a new one.
    pub fn is_closed(self) -> bool {
        matches!(self, TcpState::TimeWait | TcpState::Close)
    }
}

/// Direction of a segment relative to the connection: `Orig` is the side that sent the SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Orig,
    Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpTracker {
    state: TcpState,
    /// Sender of the first FIN.
    first_fin: Dir,
    /// Sender of the second FIN.
    last_fin: Dir,
}

impl TcpTracker {
    pub fn new() -> TcpTracker {
        TcpTracker {
            state: TcpState::None,
            first_fin: Dir::Orig,
            last_fin: Dir::Reply,
        }
    }

    #[inline]
    pub fn state(&self) -> TcpState {
        self.state
    }

    /// The state, and the senders of the first and the last FIN (for a snapshot).
    pub fn parts(&self) -> (TcpState, Dir, Dir) {
        (self.state, self.first_fin, self.last_fin)
    }

    /// A tracker as [`TcpTracker::parts`] described it.
    pub fn from_parts(state: TcpState, first_fin: Dir, last_fin: Dir) -> TcpTracker {
        TcpTracker {
            state,
            first_fin,
            last_fin,
        }
    }

    /// Moves on a segment with `flags` seen going in direction `dir`.
    #[inline]
    pub fn update(&mut self, dir: Dir, flags: u8) {
        use TcpState::*;
        let (syn, ack, fin) = (
            flags & TCP_SYN != 0,
            flags & TCP_ACK != 0,
            flags & TCP_FIN != 0,
        );
        if flags & TCP_RST != 0 {
            self.state = Close;
        } else if syn && fin {
            // Invalid (netfilter's tcp_valid_flags): it neither opens a connection nor closes
            // one. Taken for a SYN, it would open a finished one again in place, where the NAT
            // sees no new SYN (see `Nat::outbound`).
        } else if syn {
            match (dir, ack, self.state) {
                (Dir::Orig, false, None | SynSent | TimeWait | Close) => {
                    *self = TcpTracker {
                        state: SynSent,
                        ..TcpTracker::new()
                    }
                }
                (Dir::Reply, true, SynSent | SynRecv) => self.state = SynRecv,
                _ => {}
            }
        } else if fin {
            match self.state {
                SynRecv | Established => {
                    self.state = FinWait;
                    self.first_fin = dir;
                }
                FinWait | CloseWait if dir != self.first_fin => {
                    self.state = LastAck;
                    self.last_fin = dir;
                }
                _ => {}
            }
        } else if ack {
            match self.state {
                SynRecv if dir == Dir::Orig => self.state = Established,
                FinWait if dir != self.first_fin => self.state = CloseWait,
                LastAck if dir != self.last_fin => self.state = TimeWait,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Dir::{Orig, Reply};
    use super::*;

    const SYN: u8 = TCP_SYN;
    const SYNACK: u8 = TCP_SYN | TCP_ACK;
    const ACK: u8 = TCP_ACK;
    const FINACK: u8 = TCP_FIN | TCP_ACK;
    const RST: u8 = TCP_RST;

    fn run(steps: &[(Dir, u8, TcpState)]) -> TcpTracker {
        let mut t = TcpTracker::new();
        for (i, &(dir, flags, want)) in steps.iter().enumerate() {
            t.update(dir, flags);
            assert_eq!(t.state(), want, "step {i}");
        }
        t
    }

    #[test]
    fn handshake_and_close_initiated_by_originator() {
        use TcpState::*;
        run(&[
            (Orig, SYN, SynSent),
            (Orig, SYN, SynSent),
            (Reply, SYNACK, SynRecv),
            (Orig, ACK, Established),
            (Reply, ACK, Established),
            (Orig, FINACK, FinWait),
            (Orig, ACK, FinWait),
            (Reply, ACK, CloseWait),
            (Reply, ACK, CloseWait),
            (Reply, FINACK, LastAck),
            (Reply, ACK, LastAck),
            (Orig, ACK, TimeWait),
            (Orig, SYN, SynSent),
        ]);
    }

    #[test]
    fn close_initiated_by_responder_and_combined_fin() {
        use TcpState::*;
        run(&[
            (Orig, SYN, SynSent),
            (Reply, SYNACK, SynRecv),
            (Orig, ACK, Established),
            (Reply, FINACK, FinWait),
            (Orig, FINACK, LastAck),
            (Orig, ACK, LastAck),
            (Reply, ACK, TimeWait),
        ]);
    }

    #[test]
    fn reset_closes_from_any_state() {
        use TcpState::*;
        run(&[(Orig, SYN, SynSent), (Reply, RST | ACK, Close)]);
        run(&[
            (Orig, SYN, SynSent),
            (Reply, SYNACK, SynRecv),
            (Orig, ACK, Established),
            (Orig, RST, Close),
            (Reply, ACK, Close),
        ]);
    }

    #[test]
    fn nonsense_does_not_move() {
        use TcpState::*;
        run(&[
            (Reply, SYNACK, None),
            (Orig, ACK, None),
            (Orig, SYN, SynSent),
            (Orig, ACK, SynSent),
            (Orig, FINACK, SynSent),
            (Reply, SYN, SynSent),
        ]);
    }

    #[test]
    fn a_syn_with_fin_moves_nothing() {
        use TcpState::*;
        const SYNFIN: u8 = TCP_SYN | TCP_FIN;
        run(&[
            (Orig, SYNFIN, None),
            (Orig, SYN, SynSent),
            (Orig, RST, Close),
        ]);
        run(&[
            (Orig, SYN, SynSent),
            (Orig, RST, Close),
            (Orig, SYNFIN, Close),
        ]);
    }
}
