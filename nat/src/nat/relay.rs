//! An outgoing TCP connection, relayed: the relay port it goes to on the gateway, then what
//! becomes of its held SYN once the edge has tried the real destination (released to the
//! relay, or answered with a reset or an ICMP error), and the relay's look-up of the flow.

use std::net::SocketAddrV4;
use std::sync::MutexGuard;

use crate::conntrack::{outside_key, FlowId, Kind, Shard};
use crate::craft;
use crate::error::NatError;
use crate::wire::{Ipv4Frame, TcpHdr, IPPROTO_TCP, IP_OFF, TCP_SYN};

use super::frame::{rewrite_tcp, End};
use super::{Nat, RelayFlow, ICMP_DEST_UNREACH};

impl Nat {
    /// The relay port for a new connection from `cip:cport` to `rip:rport`: the host will see
    /// it come from `cip:cport` to `GATEWAY:relay`, so that pair of ports must not be another
    /// live connection's. Nor, if possible, a finished one's: the host may still hold a
    /// TIME_WAIT for it (if it closed first), which takes a new SYN only from the same
    /// connection (newer timestamps and sequence numbers), and answers another connection's
    /// SYN with an ACK that the container resets, leaving it to retransmit its SYN a second
    /// later. So: the port of the finished flow this connection replaces (`reuse`), else the
    /// first port, from a start that the connection's addresses choose, that no flow uses,
    /// else one a finished flow uses (which goes).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn relay_port(
        &self,
        sh: &mut Shard,
        cip: u32,
        cport: u16,
        rip: u32,
        rport: u16,
        reuse: Option<u16>,
        now: u64,
    ) -> Option<u16> {
        if let Some(r) = reuse {
            if self
                .table
                .lookup(sh, outside_key(cip, cport, r), now)
                .is_none()
            {
                return Some(r);
            }
        }
        let n = self.relay_ports.len();
        let start = self.table.relay_start(cport, rip, rport);
        let mut finished = None;
        for i in 0..n {
            let r = self.relay_ports[start.wrapping_add(i) % n];
            match self.table.lookup(sh, outside_key(cip, cport, r), now) {
                None => return Some(r),
                Some((slot, _)) if finished.is_none() && sh.is_finished(slot) => {
                    finished = Some((slot, r))
                }
                Some(_) => {}
            }
        }
        let (slot, r) = finished?;
        self.table.reap(sh, slot);
        Some(r)
    }

    /// The edge has connected flow `flow` to its destination: rewrites the held SYN (to the
    /// relay) so that the edge can switch it to the host.
    pub fn tcp_connected(
        &self,
        flow: FlowId,
        held_syn: &mut [u8],
        now: u64,
    ) -> Result<(), NatError> {
        let (pkt, mut sh, slot, relay) = self.held_connecting(flow, held_syn, now)?;
        let f = sh.flow_mut(slot).ok_or(NatError::UnknownFlow(flow))?;
        rewrite_tcp(held_syn, &pkt, End::Dst, self.gateway, relay)
            .map_err(|_| NatError::Malformed)?;
        f.kind = Kind::TcpEgress {
            relay,
            connecting: false,
        };
        self.table.connect_done(f.cip);
        f.count_out(pkt.l3_len());
        self.table.refresh(f, now);
        Ok(())
    }

    /// The held SYN of flow `flow`, which must be connecting, not closed and the SYN's: its
    /// view, the flow's shard (locked) and slot, and its relay port.
    pub(super) fn held_connecting(
        &self,
        flow: FlowId,
        held_syn: &[u8],
        now: u64,
    ) -> Result<(Ipv4Frame, MutexGuard<'_, Shard>, u32, u16), NatError> {
        let pkt = held_segment(held_syn)?;
        let tcp = TcpHdr::parse(pkt.l4_bytes(held_syn)).map_err(|_| NatError::Malformed)?;
        let (mut sh, slot) = self
            .table
            .lock_id(flow, Some(now))
            .ok_or(NatError::UnknownFlow(flow))?;
        let f = sh.flow_mut(slot).ok_or(NatError::UnknownFlow(flow))?;
        let Kind::TcpEgress {
            relay,
            connecting: true,
        } = f.kind
        else {
            return Err(NatError::NotConnecting(flow));
        };
        if (pkt.src, tcp.sport, pkt.dst, tcp.dport) != (f.cip, f.cport, f.rip, f.rport) {
            return Err(NatError::FrameMismatch(flow));
        }
        if f.tcp.state().is_closed() {
            return Err(NatError::FlowClosed(flow));
        }
        Ok((pkt, sh, slot, relay))
    }

    /// For the relay, which accepted a connection from `container` on `relay_port`: the flow
    /// and the container's original destination.
    pub fn relay_lookup(&self, container: SocketAddrV4, relay_port: u16) -> Option<RelayFlow> {
        let (cip, cport) = (u32::from(*container.ip()), container.port());
        let sh = self.table.lock(self.table.shard_of(cip, cport));
        let (slot, flow) = sh.get(outside_key(cip, cport, relay_port))?;
        let f = sh.flow(slot)?;
        match f.kind {
            Kind::TcpEgress { .. } => Some(RelayFlow {
                flow,
                dst: f.remote(),
            }),
            _ => None,
        }
    }

    /// Removes a flow whose SYN is held (if it still exists) and writes the ICMP error to the
    /// container for it (`code`: e.g. 0 net, 1 host unreachable, 13 administratively
    /// prohibited) into `out`; returns the frame's length.
    pub fn icmp_unreachable_reply(
        &self,
        flow: FlowId,
        held_syn: &[u8],
        code: u8,
        out: &mut [u8],
    ) -> Result<usize, NatError> {
        self.remove_held(flow);
        let pkt = held_segment(held_syn)?;
        // The header as sent, options included, and 8 bytes of the segment.
        let body = held_syn
            .get(IP_OFF..pkt.l4 + 8)
            .filter(|_| pkt.l4 + 8 <= pkt.end)
            .ok_or(NatError::Malformed)?;
        let e = self.answer_ends(held_syn, &pkt);
        craft::icmp(out, &e, ICMP_DEST_UNREACH, code, [0; 4], body)
    }

    /// Removes a flow whose SYN is held (if it still exists) and writes the container's
    /// "connection refused": a RST|ACK from the destination acknowledging the SYN.
    pub fn tcp_reset_reply(
        &self,
        flow: FlowId,
        held_syn: &[u8],
        out: &mut [u8],
    ) -> Result<usize, NatError> {
        self.remove_held(flow);
        let pkt = held_segment(held_syn)?;
        let tcp = TcpHdr::parse(pkt.l4_bytes(held_syn)).map_err(|_| NatError::Malformed)?;
        if tcp.flags & TCP_SYN == 0 {
            return Err(NatError::Malformed);
        }
        self.reset(held_syn, &pkt, &tcp, out)
    }

    fn remove_held(&self, flow: FlowId) {
        if let Some((mut sh, slot)) = self.table.lock_id(flow, None) {
            if matches!(sh.flow(slot).map(|f| f.kind), Some(Kind::TcpEgress { .. })) {
                self.table.remove_requested(&mut sh, slot);
            }
        }
    }
}

/// The held SYN's IPv4 view, if it is a TCP segment.
fn held_segment(held_syn: &[u8]) -> Result<Ipv4Frame, NatError> {
    match Ipv4Frame::parse(held_syn) {
        Ok(Some(p)) if p.proto == IPPROTO_TCP => Ok(p),
        _ => Err(NatError::Malformed),
    }
}
