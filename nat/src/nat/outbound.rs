//! A container's frames to the outside (those it sends to the gateway's MAC): checked as a
//! router checks what it forwards, then translated in place (TCP of known flows), handed to
//! the edge to carry through a host socket (UDP, ICMP echo, a new TCP connection), or dropped.

use std::net::Ipv4Addr;

use crate::conntrack::{inside_key, Extra, Flow, Kind, Proto, Shard};
use crate::error::NatDrop;
use crate::tcp_state::Dir;
use crate::wire::{
    IcmpHdr, Ipv4Frame, TcpHdr, UdpHdr, WireError, ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP,
    IPPROTO_UDP, TCP_CSUM_OFF,
};

use super::frame::{is_new_syn, is_tagged, quote, rewrite_tcp, sock, src_mac, End};
use super::{Nat, Verdict};

impl Nat {
    /// A frame a container sent to the gateway's MAC. Frames to the gateway itself, to the
    /// subnet, broadcast or multicast, and non-IPv4 frames are `Pass`: the host kernel answers
    /// them. Everything else is NAT traffic: translated, handed to the edge, or dropped.
    pub fn outbound(&self, frame: &mut [u8], now: u64) -> Verdict {
        let pkt = match Ipv4Frame::parse(frame) {
            Ok(Some(p)) => p,
            Ok(None) if is_tagged(frame) => return self.drop(NatDrop::Tagged),
            Ok(None) => return Verdict::Pass,
            Err(WireError::BadTotalLength) => return self.drop(NatDrop::BadLength),
            Err(_) => return self.drop(NatDrop::Malformed),
        };
        let dst_octet = pkt.dst >> 24;
        if pkt.dst == self.gateway || self.in_subnet(pkt.dst) || dst_octet >= 224 {
            return Verdict::Pass;
        }
        if !self.in_subnet(pkt.src) || pkt.src == self.gateway || dst_octet == 0 || dst_octet == 127
        {
            return self.drop(NatDrop::BadAddress);
        }
        // What a router checks before it forwards: a packet it would not forward is never
        // translated into a valid one.
        if !pkt.header_checksum_ok(frame) {
            return self.drop(NatDrop::BadChecksum);
        }
        if pkt.ttl <= 1 {
            return self.time_exceeded(frame, &pkt);
        }
        if pkt.fragment {
            return self.drop(NatDrop::Fragment);
        }
        match pkt.proto {
            IPPROTO_TCP => self.tcp_out(frame, &pkt, now),
            IPPROTO_UDP => self.udp_out(frame, &pkt, now),
            IPPROTO_ICMP => self.icmp_out(frame, &pkt, now),
            _ => self.drop(NatDrop::Unsupported),
        }
    }

    fn tcp_out(&self, frame: &mut [u8], pkt: &Ipv4Frame, now: u64) -> Verdict {
        let Ok(tcp) = TcpHdr::parse(pkt.l4_bytes(frame)) else {
            return self.drop(NatDrop::Malformed);
        };
        let key = inside_key(Proto::Tcp, pkt.src, tcp.sport, pkt.dst, tcp.dport);
        let mut sh = self.table.lock(self.table.shard_of(pkt.src, tcp.sport));
        let Some((slot, id)) = self.table.lookup(&mut sh, key, now) else {
            if is_new_syn(tcp.flags) {
                return self.tcp_new(&mut sh, frame, pkt, &tcp, None, now);
            }
            return self.drop(NatDrop::NoFlow);
        };
        let Some(flow) = sh.flow_mut(slot) else {
            return self.drop(NatDrop::NoFlow);
        };
        let (ip, port, dir) = match flow.kind {
            Kind::TcpEgress {
                connecting: true, ..
            } => {
                flow.tcp.update(Dir::Orig, tcp.flags);
                self.table.refresh(flow, now);
                self.table.settle(&mut sh, slot);
                return Verdict::Pending;
            }
            Kind::TcpEgress { relay, .. } | Kind::TcpTranslated { relay, .. }
                if is_new_syn(tcp.flags) && flow.tcp.state().is_closed() =>
            {
                // The container reuses the port for a new connection to the same destination:
                // a new flow, a new connect, on the same relay port, so that the host sees the
                // same connection come back (a TIME_WAIT the host may still hold for it takes a
                // newer SYN of the same connection, as any TCP endpoint does). The edge hears of
                // the old flow at the next `expire`.
                self.table.reap(&mut sh, slot);
                return self.tcp_new(&mut sh, frame, pkt, &tcp, Some(relay), now);
            }
            Kind::TcpTranslated { .. } => {
                // The kernel carries the connection; this segment came before the edge handed
                // it over or after it took it back (a finished one's straggler).
                self.table.refresh(flow, now);
                return Verdict::Pending;
            }
            Kind::TcpEgress { relay, .. } => (self.gateway, relay, Dir::Orig),
            Kind::TcpPublished { eph } => (self.gateway, eph, Dir::Reply),
            _ => return self.drop(NatDrop::NoFlow),
        };
        if rewrite_tcp(frame, pkt, End::Dst, ip, port).is_err() {
            return self.drop(NatDrop::Malformed);
        }
        flow.count_out(pkt.l3_len());
        let before = flow.tcp.state();
        let settle = self.table.tcp_segment(flow, dir, tcp.flags, now);
        let verdict = self.translated(id, flow, before);
        if settle {
            self.table.settle(&mut sh, slot);
        }
        verdict
    }

    /// A container's first SYN to the outside: a flow with a free relay port, the SYN held.
    /// `reuse`: the relay port of the finished flow this connection replaces.
    fn tcp_new(
        &self,
        sh: &mut Shard,
        frame: &[u8],
        pkt: &Ipv4Frame,
        tcp: &TcpHdr,
        reuse: Option<u16>,
        now: u64,
    ) -> Verdict {
        if pkt.partial_csum(TCP_CSUM_OFF).is_err() {
            return self.drop(NatDrop::Malformed);
        }
        let Some(relay) = self.relay_port(sh, pkt.src, tcp.sport, pkt.dst, tcp.dport, reuse, now)
        else {
            return self.drop(NatDrop::NoRelayPort);
        };
        let kind = Kind::TcpEgress {
            relay,
            connecting: true,
        };
        let mut flow = Flow::new(kind, pkt.src, tcp.sport, pkt.dst, tcp.dport);
        flow.tcp.update(Dir::Orig, tcp.flags);
        match self.table.create(sh, flow, Extra::mac(src_mac(frame)), now) {
            Ok(flow) => Verdict::TcpConnect {
                flow,
                from: sock(pkt.src, tcp.sport),
                dst: sock(pkt.dst, tcp.dport),
            },
            Err(e) => self.refuse(sh, frame, pkt, e),
        }
    }

    fn udp_out(&self, frame: &mut [u8], pkt: &Ipv4Frame, now: u64) -> Verdict {
        let Ok(udp) = UdpHdr::parse(pkt.l4_bytes(frame), pkt.is_gso()) else {
            return self.drop(NatDrop::Malformed);
        };
        let payload = pkt.l4 + 8..pkt.l4 + udp.payload_end;
        let gso_size = if pkt.is_gso() { pkt.gso_size } else { 0 };
        let key = inside_key(Proto::Udp, pkt.src, udp.sport, pkt.dst, udp.dport);
        let mut sh = self.table.lock(self.table.shard_of(pkt.src, udp.sport));
        if let Some((slot, id)) = self.table.lookup(&mut sh, key, now) {
            let Some(flow) = sh.flow_mut(slot) else {
                return self.drop(NatDrop::NoFlow);
            };
            flow.count_out(pkt.l3_len());
            let verdict = match flow.kind {
                Kind::UdpEgress => Verdict::UdpOut {
                    flow: id,
                    from: sock(pkt.src, udp.sport),
                    dst: sock(pkt.dst, udp.dport),
                    payload,
                    new: false,
                    gso_size,
                },
                Kind::UdpPublished { publish_id } => {
                    flow.replied = true;
                    Verdict::UdpToClient {
                        publish_id,
                        client: sock(pkt.dst, udp.dport),
                        payload,
                        gso_size,
                    }
                }
                _ => return self.drop(NatDrop::NoFlow),
            };
            self.table.refresh(flow, now);
            return verdict;
        }
        let mut flow = Flow::new(Kind::UdpEgress, pkt.src, udp.sport, pkt.dst, udp.dport);
        flow.count_out(pkt.l3_len());
        let extra = Extra {
            mac: src_mac(frame),
            quote: Some(quote(frame, pkt)),
        };
        match self.table.create(&mut sh, flow, extra, now) {
            Ok(flow) => Verdict::UdpOut {
                flow,
                from: sock(pkt.src, udp.sport),
                dst: sock(pkt.dst, udp.dport),
                payload,
                new: true,
                gso_size,
            },
            Err(e) => self.refuse(&mut sh, frame, pkt, e),
        }
    }

    fn icmp_out(&self, frame: &mut [u8], pkt: &Ipv4Frame, now: u64) -> Verdict {
        let Ok(icmp) = IcmpHdr::parse(pkt.l4_bytes(frame)) else {
            return self.drop(NatDrop::Malformed);
        };
        if icmp.kind != ICMP_ECHO_REQUEST || icmp.code != 0 {
            return self.drop(NatDrop::Unsupported);
        }
        let payload = pkt.l4 + 8..pkt.end;
        let key = inside_key(Proto::Icmp, pkt.src, icmp.ident, pkt.dst, 0);
        let mut sh = self.table.lock(self.table.shard_of(pkt.src, icmp.ident));
        let (flow, ident) = match self.table.lookup(&mut sh, key, now) {
            Some((slot, id)) => {
                let Some(flow) = sh.flow_mut(slot) else {
                    return self.drop(NatDrop::NoFlow);
                };
                let Kind::Echo { nat_ident } = flow.kind else {
                    return self.drop(NatDrop::NoFlow);
                };
                flow.count_out(pkt.l3_len());
                self.table.refresh(flow, now);
                (id, nat_ident)
            }
            None => {
                let kind = Kind::Echo { nat_ident: 0 };
                let mut flow = Flow::new(kind, pkt.src, icmp.ident, pkt.dst, 0);
                flow.count_out(pkt.l3_len());
                let extra = Extra {
                    mac: src_mac(frame),
                    quote: Some(quote(frame, pkt)),
                };
                let id = match self.table.create(&mut sh, flow, extra, now) {
                    Ok(id) => id,
                    Err(e) => return self.refuse(&mut sh, frame, pkt, e),
                };
                let slot = id as u32;
                match sh.flow(slot).map(|f| f.kind) {
                    Some(Kind::Echo { nat_ident }) => (id, nat_ident),
                    _ => return self.drop(NatDrop::NoFlow),
                }
            }
        };
        Verdict::EchoOut {
            flow,
            dst: Ipv4Addr::from(pkt.dst),
            ident,
            seq: icmp.seq,
            payload,
        }
    }
}
