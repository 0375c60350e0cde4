//! What comes back to the containers: the host's segments of relayed and published TCP flows,
//! translated in place, and the frames written for what the flows' host sockets received
//! (datagrams, echo replies, ICMP errors).

use crate::conntrack::{outside_key, FlowId, Kind, QUOTE_LEN};
use crate::craft::{self, Ends};
use crate::error::{NatDrop, NatError};
use crate::tcp_state::Dir;
use crate::wire::{Ipv4Frame, TcpHdr, ICMP_ECHO_REPLY, IPPROTO_TCP, IP_OFF};

use super::frame::{check_room, rewrite_tcp, End};
use super::{Nat, Verdict};

impl Nat {
    /// A frame the host kernel sent out of the TAP: segments of relayed and published TCP flows
    /// are translated (`Rewritten`), anything else is `Pass`.
    pub fn from_host(&self, frame: &mut [u8], now: u64) -> Verdict {
        let Ok(Some(pkt)) = Ipv4Frame::parse(frame) else {
            return Verdict::Pass;
        };
        if pkt.proto != IPPROTO_TCP || pkt.src != self.gateway || pkt.fragment {
            return Verdict::Pass;
        }
        let Ok(tcp) = TcpHdr::parse(pkt.l4_bytes(frame)) else {
            return Verdict::Pass;
        };
        let key = outside_key(pkt.dst, tcp.dport, tcp.sport);
        let mut sh = self.table.lock(self.table.shard_of(pkt.dst, tcp.dport));
        let Some((slot, id)) = self.table.lookup(&mut sh, key, now) else {
            return Verdict::Pass;
        };
        let Some(flow) = sh.flow_mut(slot) else {
            return Verdict::Pass;
        };
        let dir = match flow.kind {
            Kind::TcpEgress { .. } => Dir::Reply,
            Kind::TcpPublished { .. } => Dir::Orig,
            // The kernel carries it: the host has no side of it.
            Kind::TcpTranslated { .. } => return self.drop(NatDrop::NoFlow),
            _ => return Verdict::Pass,
        };
        if rewrite_tcp(frame, &pkt, End::Src, flow.rip, flow.rport).is_err() {
            return self.drop(NatDrop::Malformed);
        }
        flow.count_in(pkt.l3_len());
        let before = flow.tcp.state();
        let settle = self.table.tcp_segment(flow, dir, tcp.flags, now);
        let verdict = self.translated(id, flow, before);
        if settle {
            self.table.settle(&mut sh, slot);
        }
        verdict
    }

    /// A datagram the flow's host socket received: writes the frame from the flow's
    /// destination to the container into `out` and returns its length. The frame is not
    /// fragmented: a datagram larger than the container's MTU (less 28 bytes of headers) is the
    /// edge's to drop or answer with an ICMP error.
    pub fn udp_reply(
        &self,
        flow: FlowId,
        payload: &[u8],
        out: &mut [u8],
        now: u64,
    ) -> Result<usize, NatError> {
        check_room(out, craft::UDP_FRAME_OVERHEAD, payload)?;
        let bytes = craft::UDP_FRAME_OVERHEAD - IP_OFF + payload.len();
        let (e, rport, cport) = self.reply_from_remote(flow, Kind::UdpEgress, bytes, now)?;
        craft::udp(out, &e, rport, cport, payload)
    }

    /// An echo reply received for translated identifier `ident`: writes the reply frame to the
    /// container (with its own identifier) into `out` and returns its length.
    pub fn echo_reply(
        &self,
        ident: u16,
        seq: u16,
        payload: &[u8],
        out: &mut [u8],
        now: u64,
    ) -> Result<usize, NatError> {
        check_room(out, craft::ECHO_FRAME_OVERHEAD, payload)?;
        let id = self
            .table
            .echo_flow(ident)
            .ok_or(NatError::UnknownEchoIdent(ident))?;
        let kind = Kind::Echo { nat_ident: ident };
        let bytes = craft::ECHO_FRAME_OVERHEAD - IP_OFF + payload.len();
        let (e, _, cident) = self.reply_from_remote(id, kind, bytes, now)?;
        let rest = (u32::from(cident) << 16 | u32::from(seq)).to_be_bytes();
        craft::icmp(out, &e, ICMP_ECHO_REPLY, 0, rest, payload)
    }

    /// A reply of `bytes` from flow `id`'s destination, which must be a flow of `kind`: marks
    /// the flow replied, counts and refreshes it. Returns the ends of the frame to the container
    /// and the flow's remote and container ports (identifiers for echo).
    fn reply_from_remote(
        &self,
        id: FlowId,
        kind: Kind,
        bytes: usize,
        now: u64,
    ) -> Result<(Ends, u16, u16), NatError> {
        let (mut sh, slot) = self
            .table
            .lock_id(id, Some(now))
            .ok_or(NatError::UnknownFlow(id))?;
        let f = sh.flow_mut(slot).ok_or(NatError::UnknownFlow(id))?;
        if f.kind != kind {
            return Err(NatError::WrongFlowKind(id));
        }
        f.replied = true;
        f.count_in(bytes);
        self.table.refresh(f, now);
        let (src, dst, rport, cport) = (f.rip, f.cip, f.rport, f.cport);
        let e = Ends {
            src_mac: self.gateway_mac,
            dst_mac: sh.extra(slot).mac,
            src,
            dst,
        };
        Ok((e, rport, cport))
    }

    /// An ICMP error for a UDP or echo flow (the edge learnt it from its socket's error queue):
    /// writes the error from the flow's destination to the container, quoting the container's
    /// first packet of the flow, into `out` and returns its length.
    pub fn udp_error_reply(
        &self,
        flow: FlowId,
        icmp_type: u8,
        icmp_code: u8,
        out: &mut [u8],
    ) -> Result<usize, NatError> {
        let (mut sh, slot) = self
            .table
            .lock_id(flow, None)
            .ok_or(NatError::UnknownFlow(flow))?;
        let extra = sh.extra(slot);
        let quote = extra.quote.ok_or(NatError::WrongFlowKind(flow))?;
        let f = sh.flow_mut(slot).ok_or(NatError::UnknownFlow(flow))?;
        f.count_in(craft::ECHO_FRAME_OVERHEAD - IP_OFF + QUOTE_LEN);
        let e = Ends {
            src_mac: self.gateway_mac,
            dst_mac: extra.mac,
            src: f.rip,
            dst: f.cip,
        };
        drop(sh);
        craft::icmp(out, &e, icmp_type, icmp_code, [0; 4], &quote)
    }
}
