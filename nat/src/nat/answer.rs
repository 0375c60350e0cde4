//! The frames the NAT writes itself, as the router a container believes it talks to: a reset
//! or ICMP "administratively prohibited" for a new flow it refuses, ICMP "time exceeded" for a
//! packet whose TTL ran out at the gateway.

use crate::conntrack::{CreateError, Shard};
use crate::craft::{self, Ends};
use crate::error::{NatDrop, NatError};
use crate::wire::{Ipv4Frame, TcpHdr, IPPROTO_TCP, IP_OFF};

use super::frame::src_mac;
use super::{Nat, ReplyFrame, Verdict};

/// ICMP destination unreachable.
pub const ICMP_DEST_UNREACH: u8 = 3;

/// ICMP time exceeded.
const ICMP_TIME_EXCEEDED: u8 = 11;

/// Destination unreachable code: communication administratively prohibited (RFC 1812).
const ICMP_ADMIN_PROHIBITED: u8 = 13;

impl Nat {
    fn create_error(&self, e: CreateError) -> NatDrop {
        match e {
            CreateError::TableFull => NatDrop::TableFull,
            CreateError::NoEchoIdent => NatDrop::NoEchoIdent,
            CreateError::InUse => NatDrop::NoFlow,
            CreateError::ContainerLimit => NatDrop::ContainerLimit,
            CreateError::HalfOpen => NatDrop::HalfOpenLimit,
        }
    }

    /// A new flow could not be created: refused the way a router that may not forward it
    /// refuses, so that the container's application fails at once instead of timing out (a
    /// reset for a TCP connection, ICMP administratively prohibited otherwise). A flow that
    /// could not be created for a reason of the table itself (an address in use) is dropped.
    pub(super) fn refuse(
        &self,
        sh: &mut Shard,
        frame: &[u8],
        pkt: &Ipv4Frame,
        e: CreateError,
    ) -> Verdict {
        let why = self.create_error(e);
        if matches!(e, CreateError::InUse | CreateError::NoEchoIdent) {
            return self.drop(why);
        }
        self.table.count_refused(sh, pkt.src);
        let reply =
            ReplyFrame::write(
                |buf| match (pkt.proto, TcpHdr::parse(pkt.l4_bytes(frame))) {
                    (IPPROTO_TCP, Ok(tcp)) => self.reset(frame, pkt, &tcp, buf),
                    _ => self.icmp_error(frame, pkt, ICMP_DEST_UNREACH, ICMP_ADMIN_PROHIBITED, buf),
                },
            );
        match reply {
            Some(reply) => {
                self.table.count_drop(why);
                Verdict::Reply(reply)
            }
            None => self.drop(why),
        }
    }

    /// A RST|ACK from the destination of the TCP segment in `frame` back to its sender,
    /// acknowledging it: its SYN and any data it carries (TCP Fast Open).
    pub(super) fn reset(
        &self,
        frame: &[u8],
        pkt: &Ipv4Frame,
        tcp: &TcpHdr,
        out: &mut [u8],
    ) -> Result<usize, NatError> {
        let data = pkt.end - pkt.l4 - tcp.len;
        let ack = tcp.seq.wrapping_add(1).wrapping_add(data as u32);
        let e = self.answer_ends(frame, pkt);
        craft::tcp_rst(out, &e, tcp.dport, tcp.sport, 0, ack)
    }

    /// The ends of a frame that answers `frame`: from its destination, back to its sender.
    pub(super) fn answer_ends(&self, frame: &[u8], pkt: &Ipv4Frame) -> Ends {
        Ends {
            src_mac: self.gateway_mac,
            dst_mac: src_mac(frame),
            src: pkt.dst,
            dst: pkt.src,
        }
    }

    /// An ICMP error about `frame` from the gateway (the router that gives up on it), quoting
    /// its IPv4 header and 8 bytes of what follows (RFC 792).
    fn icmp_error(
        &self,
        frame: &[u8],
        pkt: &Ipv4Frame,
        kind: u8,
        code: u8,
        out: &mut [u8],
    ) -> Result<usize, NatError> {
        let body = &frame[IP_OFF..(pkt.l4 + 8).min(pkt.end)];
        let e = Ends {
            src: self.gateway,
            ..self.answer_ends(frame, pkt)
        };
        craft::icmp(out, &e, kind, code, [0; 4], body)
    }

    /// A packet whose TTL ran out at the gateway: ICMP time exceeded, as a router answers (so
    /// that traceroute shows the gateway as the first hop).
    pub(super) fn time_exceeded(&self, frame: &[u8], pkt: &Ipv4Frame) -> Verdict {
        self.table.count_drop(NatDrop::TtlExceeded);
        match ReplyFrame::write(|buf| self.icmp_error(frame, pkt, ICMP_TIME_EXCEEDED, 0, buf)) {
            Some(reply) => Verdict::Reply(reply),
            None => Verdict::Drop(NatDrop::TtlExceeded),
        }
    }
}
