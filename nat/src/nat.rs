//! The translation engine: what happens to each frame between the containers and the host, and
//! the calls the edge makes for the flows it carries through host sockets.
//!
//! Nothing leaves through IP forwarding: the host's `ip_forward` stays 0 and no firewall rule is
//! involved. Every flow is terminated or opened by the host kernel's own sockets:
//! - TCP out: the container's segments to `OUTSIDE:DPORT` are rewritten to
//!   `GATEWAY:RELAY` (a listener of the edge on the host), and the host's segments back are
//!   rewritten to come from `OUTSIDE:DPORT`: the host kernel terminates the container's TCP
//!   (with its offloads, window scaling, everything) and the edge splices the two sockets. The
//!   SYN is held until the edge has connected to the real destination, so that a refused or
//!   unreachable destination is seen by the container as such.
//! - TCP in (published ports): the edge accepts the client on the host and connects to the
//!   container from `GATEWAY:EPH`; those segments are rewritten to come from the client's real
//!   address, and the container's replies to it back to `GATEWAY:EPH`.
//! - UDP and ICMP echo: the payload goes out through a host socket per flow; replies come back
//!   as frames the NAT writes.
//!
//! Fragmented IPv4 packets to the outside are dropped (counted): the flow of a non-first
//! fragment cannot be known without reassembly. Containers fragment only UDP datagrams larger
//! than their MTU, which is rare (DNS falls back to TCP). Likewise the frames the NAT writes
//! (UDP and echo replies) are not fragmented, and ICMP errors the host kernel itself sends about
//! relayed segments are not translated (the relay listeners make them unlikely).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;

use crate::checksum::{self, Delta};
use crate::conntrack::{
    inside_key, outside_key, ContainerStats, CreateError, Expired, Extra, Flow, FlowId, FlowView,
    Kind, NatStats, Proto, Refusals, Shard, Shares, StateCount, Table, Timeouts, DEFAULT_MAX_FLOWS,
    QUOTE_LEN,
};
use crate::craft::{self, Ends, ICMP_ERROR_FRAME_MAX};
use crate::error::{NatDrop, NatError};
use crate::snapshot::{NatSnapshot, RestoreError};
use crate::tcp_state::Dir;
use crate::wire::{
    rd16, rd32, wr16, wr32, IcmpHdr, Ipv4Frame, TcpHdr, UdpHdr, WireError, ETH_OFF,
    ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IP_OFF, TCP_ACK,
    TCP_CSUM_OFF, TCP_FIN, TCP_RST, TCP_SYN,
};

/// ICMP destination unreachable.
pub const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP time exceeded.
const ICMP_TIME_EXCEEDED: u8 = 11;
/// Destination unreachable code: communication administratively prohibited (RFC 1812).
const ICMP_ADMIN_PROHIBITED: u8 = 13;

/// A frame the NAT wrote in answer to a container's (see [`Verdict::Reply`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ReplyFrame {
    buf: [u8; ICMP_ERROR_FRAME_MAX],
    len: usize,
}

impl ReplyFrame {
    /// The frame, `[virtio_net_hdr][Ethernet][IPv4]...`.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Debug for ReplyFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplyFrame({} bytes)", self.len)
    }
}

/// What the NAT needs to know about the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// The gateway address (on the host's TAP), the containers' default route.
    pub gateway: Ipv4Addr,
    /// The gateway's (the TAP's) MAC: source of the frames the NAT writes.
    pub gateway_mac: [u8; 6],
    /// The containers' subnet.
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    /// Ports of the edge's relay listeners on the gateway address. A container's TCP flow to
    /// the outside needs one for which its (address, port, relay port) is free, so several let
    /// one container port reach several destinations at once.
    pub relay_ports: Vec<u16>,
    /// Bound on the number of flows (default [`DEFAULT_MAX_FLOWS`]).
    pub max_flows: usize,
    /// Each container's share of the table (default [`Shares::for_table`]).
    pub shares: Shares,
    pub timeouts: Timeouts,
}

impl NatConfig {
    /// A configuration with the default table size and timeouts.
    pub fn new(
        gateway: Ipv4Addr,
        gateway_mac: [u8; 6],
        subnet: Ipv4Addr,
        prefix: u8,
        relay_ports: Vec<u16>,
    ) -> NatConfig {
        NatConfig {
            gateway,
            gateway_mac,
            subnet,
            prefix,
            relay_ports,
            max_flows: DEFAULT_MAX_FLOWS,
            shares: Shares::for_table(DEFAULT_MAX_FLOWS),
            timeouts: Timeouts::default(),
        }
    }
}

/// What to do with a frame. Ranges are byte offsets into the frame given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not NAT traffic: switch it as usual.
    Pass,
    /// Translated in place: switch it as usual.
    Rewritten,
    /// A SYN retransmitted while the edge connects (or anything else from the container on a
    /// flow still connecting): drop it; `tcp_connected` will release the first SYN.
    Pending,
    /// A new TCP flow: hold this SYN, connect to `dst` from the host, then call
    /// [`Nat::tcp_connected`] (success), [`Nat::tcp_reset_reply`] (refused) or
    /// [`Nat::icmp_unreachable_reply`] (unreachable).
    TcpConnect {
        flow: FlowId,
        /// The container's address and port.
        from: SocketAddrV4,
        dst: SocketAddrV4,
    },
    /// A UDP datagram to send from the flow's host socket (`new`: open one). A GSO super-frame
    /// (`gso_size` > 0) carries several datagrams of `gso_size` bytes (the last may be shorter),
    /// to be sent one by one or with `UDP_SEGMENT`.
    UdpOut {
        flow: FlowId,
        /// The container's address and port.
        from: SocketAddrV4,
        dst: SocketAddrV4,
        payload: Range<usize>,
        new: bool,
        gso_size: u16,
    },
    /// An echo request to send to `dst` with the translated identifier `ident`.
    EchoOut {
        flow: FlowId,
        dst: Ipv4Addr,
        ident: u16,
        seq: u16,
        payload: Range<usize>,
    },
    /// The NAT answered the frame itself, as a router would: a reset for a refused connection,
    /// an ICMP error (administratively prohibited, time exceeded). Send `reply` back to the
    /// container; the frame itself is dropped (and counted).
    Reply(ReplyFrame),
    /// A container's datagram to a client of its published UDP port `publish_id`: send it from
    /// that port's host socket (`gso_size` as in `UdpOut`).
    UdpToClient {
        publish_id: u32,
        client: SocketAddrV4,
        payload: Range<usize>,
        gso_size: u16,
    },
    Drop(NatDrop),
}

/// A relayed TCP flow, as the relay finds it when it accepts the container's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayFlow {
    pub flow: FlowId,
    /// The container's original destination.
    pub dst: SocketAddrV4,
}

/// Which end of a packet a rewrite changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Src,
    Dst,
}

/// Rewrites the source or destination address and port of the TCP segment in `frame`, keeping
/// the IPv4 header checksum and the TCP checksum right (complete or partial).
pub(crate) fn rewrite_tcp(
    frame: &mut [u8],
    pkt: &Ipv4Frame,
    end: End,
    ip: u32,
    port: u16,
) -> Result<(), WireError> {
    let partial = pkt.partial_csum(TCP_CSUM_OFF)?;
    if pkt.l4 + 20 > pkt.end {
        return Err(WireError::Truncated);
    }
    let (ip_off, port_off) = match end {
        End::Src => (IP_OFF + 12, pkt.l4),
        End::Dst => (IP_OFF + 16, pkt.l4 + 2),
    };
    let (Some(old_ip), Some(old_port), Some(ip_csum), Some(tcp_csum)) = (
        rd32(frame, ip_off),
        rd16(frame, port_off),
        rd16(frame, IP_OFF + 10),
        rd16(frame, pkt.l4 + TCP_CSUM_OFF),
    ) else {
        return Err(WireError::Truncated);
    };
    let mut d = Delta::default();
    d.addr(old_ip, ip);
    wr32(frame, ip_off, ip);
    wr16(frame, port_off, port);
    wr16(frame, IP_OFF + 10, d.apply_full(ip_csum));
    let tcp_csum = if partial {
        // The port is in the data the offload will sum; only the pseudo-header changes.
        d.apply_partial(tcp_csum)
    } else {
        d.word(old_port, port);
        d.apply_full(tcp_csum)
    };
    wr16(frame, pkt.l4 + TCP_CSUM_OFF, tcp_csum);
    Ok(())
}

/// Source MAC of a frame.
/// Whether an Ethernet frame carries a VLAN tag (802.1Q, or 802.1ad's outer tag).
fn is_tagged(frame: &[u8]) -> bool {
    matches!(
        frame.get(ETH_OFF + 12..ETH_OFF + 14),
        Some([0x81, 0x00] | [0x88, 0xa8])
    )
}

fn src_mac(frame: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    if let Some(s) = frame.get(ETH_OFF + 6..ETH_OFF + 12) {
        m.copy_from_slice(s);
    }
    m
}

/// The IPv4 header (options dropped) and first 8 transport bytes of a container's packet, as
/// ICMP errors quote it.
fn quote(frame: &[u8], pkt: &Ipv4Frame) -> [u8; QUOTE_LEN] {
    let mut q = [0u8; QUOTE_LEN];
    if let Some(h) = frame.get(IP_OFF..IP_OFF + 20) {
        q[..20].copy_from_slice(h);
    }
    let l4 = pkt.l4_bytes(frame);
    let n = l4.len().min(8);
    q[20..20 + n].copy_from_slice(&l4[..n]);
    if pkt.ihl > 20 {
        let total = u16::from_be_bytes([q[2], q[3]]).saturating_sub((pkt.ihl - 20) as u16);
        q[0] = 0x45;
        q[2..4].copy_from_slice(&total.to_be_bytes());
        q[10..12].fill(0);
        let c = checksum::finish(checksum::sum(&q[..20], 0));
        q[10..12].copy_from_slice(&c.to_be_bytes());
    }
    q
}

#[inline]
fn is_new_syn(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
}

fn sock(ip: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

/// The NAT engine, shared by `&self` between the datapath workers.
#[derive(Debug)]
pub struct Nat {
    gateway: u32,
    gateway_mac: [u8; 6],
    net: u32,
    mask: u32,
    relay_ports: Box<[u16]>,
    table: Table,
}

impl Nat {
    pub fn new(cfg: NatConfig) -> Nat {
        let prefix = u32::from(cfg.prefix.min(32));
        let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
        let mut relay_ports = cfg.relay_ports;
        relay_ports.sort_unstable();
        relay_ports.dedup();
        Nat {
            gateway: cfg.gateway.into(),
            gateway_mac: cfg.gateway_mac,
            net: u32::from(cfg.subnet) & mask,
            mask,
            relay_ports: relay_ports.into(),
            table: Table::with_shares(cfg.max_flows, cfg.shares, cfg.timeouts),
        }
    }

    /// The whole state as plain data, for a process that takes over (see [`crate::snapshot`]).
    /// For a consistent snapshot, no frame may be translated meanwhile.
    pub fn snapshot(&self) -> NatSnapshot {
        NatSnapshot {
            relay_ports: self.relay_ports.to_vec(),
            table: self.table.snapshot(),
        }
    }

    /// The NAT `snap` describes, with `cfg`'s addresses and bounds: every [`FlowId`] the
    /// snapshot's NAT gave out names the same flow here. `cfg` must have the same relay ports.
    pub fn restore(cfg: NatConfig, snap: &NatSnapshot) -> Result<Nat, RestoreError> {
        let mut nat = Nat::new(cfg.clone());
        let mut theirs = snap.relay_ports.clone();
        theirs.sort_unstable();
        theirs.dedup();
        if *theirs != *nat.relay_ports {
            return Err(RestoreError::RelayPorts {
                got: theirs,
                want: nat.relay_ports.to_vec(),
            });
        }
        nat.table = Table::restore(
            cfg.max_flows,
            cfg.shares,
            cfg.timeouts,
            &snap.table,
            &nat.relay_ports,
        )?;
        Ok(nat)
    }

    #[inline]
    fn in_subnet(&self, ip: u32) -> bool {
        ip & self.mask == self.net
    }

    fn drop(&self, d: NatDrop) -> Verdict {
        self.table.count_drop(d);
        Verdict::Drop(d)
    }

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
    fn refuse(&self, sh: &mut Shard, frame: &[u8], pkt: &Ipv4Frame, e: CreateError) -> Verdict {
        let why = self.create_error(e);
        if matches!(e, CreateError::InUse | CreateError::NoEchoIdent) {
            return self.drop(why);
        }
        self.table.count_refused(sh, pkt.src);
        let mut reply = ReplyFrame {
            buf: [0; ICMP_ERROR_FRAME_MAX],
            len: 0,
        };
        let written = match (pkt.proto, TcpHdr::parse(pkt.l4_bytes(frame))) {
            (IPPROTO_TCP, Ok(tcp)) => {
                let data = pkt.end - pkt.l4 - tcp.len;
                let ack = tcp.seq.wrapping_add(1).wrapping_add(data as u32);
                let e = self.answer_ends(frame, pkt);
                craft::tcp_rst(&mut reply.buf, &e, tcp.dport, tcp.sport, 0, ack)
            }
            _ => self.icmp_error(
                frame,
                pkt,
                ICMP_DEST_UNREACH,
                ICMP_ADMIN_PROHIBITED,
                &mut reply.buf,
            ),
        };
        match written {
            Ok(len) => {
                reply.len = len;
                self.table.count_drop(why);
                Verdict::Reply(reply)
            }
            Err(_) => self.drop(why),
        }
    }

    /// The ends of a frame that answers `frame`: from its destination, back to its sender.
    fn answer_ends(&self, frame: &[u8], pkt: &Ipv4Frame) -> Ends {
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

    /// A packet whose TTL ran out at the gateway: ICMP time exceeded, as a router answers (so
    /// that traceroute shows the gateway as the first hop).
    fn time_exceeded(&self, frame: &[u8], pkt: &Ipv4Frame) -> Verdict {
        let mut reply = ReplyFrame {
            buf: [0; ICMP_ERROR_FRAME_MAX],
            len: 0,
        };
        self.table.count_drop(NatDrop::TtlExceeded);
        match self.icmp_error(frame, pkt, ICMP_TIME_EXCEEDED, 0, &mut reply.buf) {
            Ok(len) => {
                reply.len = len;
                Verdict::Reply(reply)
            }
            Err(_) => Verdict::Drop(NatDrop::TtlExceeded),
        }
    }

    fn tcp_out(&self, frame: &mut [u8], pkt: &Ipv4Frame, now: u64) -> Verdict {
        let Ok(tcp) = TcpHdr::parse(pkt.l4_bytes(frame)) else {
            return self.drop(NatDrop::Malformed);
        };
        let key = inside_key(Proto::Tcp, pkt.src, tcp.sport, pkt.dst, tcp.dport);
        let mut sh = self.table.lock(self.table.shard_of(pkt.src, tcp.sport));
        let Some((slot, _)) = self.table.lookup(&mut sh, key, now) else {
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
            Kind::TcpEgress { relay, .. }
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
            Kind::TcpEgress { relay, .. } => (self.gateway, relay, Dir::Orig),
            Kind::TcpPublished { eph } => (self.gateway, eph, Dir::Reply),
            _ => return self.drop(NatDrop::NoFlow),
        };
        if rewrite_tcp(frame, pkt, End::Dst, ip, port).is_err() {
            return self.drop(NatDrop::Malformed);
        }
        let was_closed = flow.tcp.state().is_closed();
        flow.tcp.update(dir, tcp.flags);
        flow.count_out(pkt.l3_len());
        self.table.refresh(flow, now);
        if flow.tcp.state().is_closed() != was_closed {
            self.table.settle(&mut sh, slot);
        }
        Verdict::Rewritten
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
    fn relay_port(
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
        let Some((slot, _)) = self.table.lookup(&mut sh, key, now) else {
            return Verdict::Pass;
        };
        let Some(flow) = sh.flow_mut(slot) else {
            return Verdict::Pass;
        };
        let dir = match flow.kind {
            Kind::TcpEgress { .. } => Dir::Reply,
            Kind::TcpPublished { .. } => Dir::Orig,
            _ => return Verdict::Pass,
        };
        if rewrite_tcp(frame, &pkt, End::Src, flow.rip, flow.rport).is_err() {
            return self.drop(NatDrop::Malformed);
        }
        let was_closed = flow.tcp.state().is_closed();
        flow.tcp.update(dir, tcp.flags);
        flow.count_in(pkt.l3_len());
        self.table.refresh(flow, now);
        if flow.tcp.state().is_closed() != was_closed {
            self.table.settle(&mut sh, slot);
        }
        Verdict::Rewritten
    }

    /// The edge has connected flow `flow` to its destination: rewrites the held SYN (to the
    /// relay) so that the edge can switch it to the host.
    pub fn tcp_connected(
        &self,
        flow: FlowId,
        held_syn: &mut [u8],
        now: u64,
    ) -> Result<(), NatError> {
        let pkt = match Ipv4Frame::parse(held_syn) {
            Ok(Some(p)) if p.proto == IPPROTO_TCP => p,
            _ => return Err(NatError::Malformed),
        };
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
        let pkt = match Ipv4Frame::parse(held_syn) {
            Ok(Some(p)) if p.proto == IPPROTO_TCP => p,
            _ => return Err(NatError::Malformed),
        };
        // The header as sent, options included, and 8 bytes of the segment.
        let body = held_syn
            .get(IP_OFF..pkt.l4 + 8)
            .filter(|_| pkt.l4 + 8 <= pkt.end)
            .ok_or(NatError::Malformed)?;
        let e = Ends {
            src_mac: self.gateway_mac,
            dst_mac: src_mac(held_syn),
            src: pkt.dst,
            dst: pkt.src,
        };
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
        let pkt = match Ipv4Frame::parse(held_syn) {
            Ok(Some(p)) if p.proto == IPPROTO_TCP => p,
            _ => return Err(NatError::Malformed),
        };
        let tcp = TcpHdr::parse(pkt.l4_bytes(held_syn)).map_err(|_| NatError::Malformed)?;
        if tcp.flags & TCP_SYN == 0 {
            return Err(NatError::Malformed);
        }
        // The SYN and any data it carries (TCP Fast Open) are acknowledged.
        let data = pkt.end - pkt.l4 - tcp.len;
        let ack = tcp.seq.wrapping_add(1).wrapping_add(data as u32);
        let e = Ends {
            src_mac: self.gateway_mac,
            dst_mac: src_mac(held_syn),
            src: pkt.dst,
            dst: pkt.src,
        };
        craft::tcp_rst(out, &e, tcp.dport, tcp.sport, 0, ack)
    }

    fn remove_held(&self, flow: FlowId) {
        if let Some((mut sh, slot)) = self.table.lock_id(flow, None) {
            if matches!(sh.flow(slot).map(|f| f.kind), Some(Kind::TcpEgress { .. })) {
                self.table.remove_requested(&mut sh, slot);
            }
        }
    }

    /// The edge's listener accepted `client` for a published port and is about to connect to
    /// `container` from `GATEWAY:gateway_port`: that connection will carry the client's address.
    ///
    /// A client the container would not answer through the gateway (an address in the subnet:
    /// another container, hairpin) is refused with [`NatError::LocalClient`]: the edge connects
    /// from the gateway address without translation instead. So is a loopback client: the edge
    /// must not publish those either (the container would answer its own loopback).
    pub fn publish_tcp(
        &self,
        gateway_port: u16,
        container: SocketAddrV4,
        client: SocketAddrV4,
        now: u64,
    ) -> Result<FlowId, NatError> {
        let (cip, cport, rip, rport) = self.publish_ends(container, client)?;
        let mut sh = self.table.lock(self.table.shard_of(cip, cport));
        for key in [
            inside_key(Proto::Tcp, cip, cport, rip, rport),
            outside_key(cip, cport, gateway_port),
        ] {
            if let Some((slot, _)) = self.table.lookup(&mut sh, key, now) {
                match sh.flow(slot) {
                    Some(f) if f.kind.proto() == Proto::Tcp && f.tcp.state().is_closed() => {
                        self.table.reap(&mut sh, slot);
                    }
                    _ => return Err(NatError::InUse),
                }
            }
        }
        let kind = Kind::TcpPublished { eph: gateway_port };
        let flow = Flow::new(kind, cip, cport, rip, rport);
        let extra = Extra::default();
        self.table
            .create(&mut sh, flow, extra, now)
            .map_err(|e| match e {
                CreateError::TableFull | CreateError::ContainerLimit | CreateError::HalfOpen => {
                    NatError::TableFull
                }
                CreateError::NoEchoIdent => NatError::NoEchoIdent,
                CreateError::InUse => NatError::InUse,
            })
    }

    /// A published flow's ends as numbers, if the container is ours and the client is one the
    /// container can answer (not loopback, not in its subnet).
    fn publish_ends(
        &self,
        container: SocketAddrV4,
        client: SocketAddrV4,
    ) -> Result<(u32, u16, u32, u16), NatError> {
        let (cip, cport) = (u32::from(*container.ip()), container.port());
        let (rip, rport) = (u32::from(*client.ip()), client.port());
        if !self.in_subnet(cip) {
            return Err(NatError::NotInSubnet);
        }
        if self.in_subnet(rip) || rip >> 24 == 127 {
            return Err(NatError::LocalClient);
        }
        Ok((cip, cport, rip, rport))
    }

    /// The published connection from `GATEWAY:gateway_port` is over: removes its flow.
    pub fn publish_tcp_done(&self, gateway_port: u16) -> bool {
        let Some(id) = self.table.published_flow(gateway_port) else {
            return false;
        };
        let Some((mut sh, slot)) = self.table.lock_id(id, None) else {
            return false;
        };
        self.table.remove_requested(&mut sh, slot).is_some()
    }

    /// A datagram from `client` to the container's published UDP port `publish_id`: writes the
    /// frame `client -> container` into `out` and returns its length. The container's replies to
    /// `client` come back as [`Verdict::UdpToClient`]. As with [`Nat::publish_tcp`], a client
    /// in the subnet is refused ([`NatError::LocalClient`]): the edge sends from a host socket on
    /// the gateway address instead, and the replies reach that socket directly.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_udp_in(
        &self,
        publish_id: u32,
        container: SocketAddrV4,
        client: SocketAddrV4,
        container_mac: [u8; 6],
        payload: &[u8],
        out: &mut [u8],
        now: u64,
    ) -> Result<usize, NatError> {
        let (cip, cport, rip, rport) = self.publish_ends(container, client)?;
        check_room(out, craft::UDP_FRAME_OVERHEAD, payload)?;
        let mut sh = self.table.lock(self.table.shard_of(cip, cport));
        let key = inside_key(Proto::Udp, cip, cport, rip, rport);
        let l3_len = craft::UDP_FRAME_OVERHEAD - IP_OFF + payload.len();
        match self.table.lookup(&mut sh, key, now) {
            Some((slot, _)) => {
                let f = sh.flow_mut(slot).ok_or(NatError::InUse)?;
                if !matches!(f.kind, Kind::UdpPublished { .. }) {
                    return Err(NatError::InUse);
                }
                f.kind = Kind::UdpPublished { publish_id };
                f.count_in(l3_len);
                self.table.refresh(f, now);
                if let Some(x) = sh.extra_mut(slot) {
                    x.mac = container_mac;
                }
            }
            None => {
                let kind = Kind::UdpPublished { publish_id };
                let mut f = Flow::new(kind, cip, cport, rip, rport);
                f.count_in(l3_len);
                let extra = Extra::mac(container_mac);
                self.table
                    .create(&mut sh, f, extra, now)
                    .map_err(|e| match e {
                        CreateError::TableFull => NatError::TableFull,
                        _ => NatError::InUse,
                    })?;
            }
        }
        drop(sh);
        let e = Ends {
            src_mac: self.gateway_mac,
            dst_mac: container_mac,
            src: rip,
            dst: cip,
        };
        craft::udp(out, &e, rport, cport, payload)
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

    /// The container's address and port of flow `flow`, if it exists.
    pub fn flow_inside(&self, flow: FlowId) -> Option<SocketAddrV4> {
        let (sh, slot) = self.table.lock_id(flow, None)?;
        sh.flow(slot).map(|f| f.inside())
    }

    /// Removes a flow on the edge's request (it gave up on it); false if it was already gone.
    pub fn remove_flow(&self, flow: FlowId) -> bool {
        match self.table.lock_id(flow, None) {
            Some((mut sh, slot)) => self.table.remove_requested(&mut sh, slot).is_some(),
            None => false,
        }
    }

    /// Reclaims the flows expired at `now` and returns them with those reclaimed since the last
    /// call (found expired by a packet, or replaced by a new connection): the edge closes their
    /// sockets. Scans the whole table: call it about once a second.
    pub fn expire(&self, now: u64) -> Vec<Expired> {
        self.table.expire(now)
    }

    /// Removes every flow of a container that is going away (the edge closes their sockets) and
    /// forgets its counters.
    pub fn forget_container(&self, ip: Ipv4Addr) -> Vec<Expired> {
        self.table.forget_container(ip.into())
    }

    /// The live flows, like `conntrack -L`.
    pub fn entries(&self, now: u64) -> Vec<FlowView> {
        self.table.entries(now)
    }

    pub fn stats(&self) -> NatStats {
        self.table.stats()
    }

    /// The bound on the number of flows.
    pub fn max_flows(&self) -> usize {
        self.table.max_flows()
    }

    /// A container's counters (zero for an unknown address).
    pub fn container_stats(&self, ip: Ipv4Addr) -> ContainerStats {
        self.table.container_stats(ip.into())
    }

    /// Every container's counters, by address, in one pass over the table.
    pub fn all_container_stats(&self) -> HashMap<Ipv4Addr, ContainerStats> {
        (self.table.all_container_stats().into_iter())
            .map(|(ip, s)| (Ipv4Addr::from(ip), s))
            .collect()
    }

    /// New flows refused so far, by why (cheap: no lock).
    pub fn refusals(&self) -> Refusals {
        self.table.refusals()
    }

    /// Live flows by protocol and state.
    pub fn count_by_state(&self, now: u64) -> Vec<StateCount> {
        self.table.count_by_state(now)
    }

    /// The state of a flow (as `conntrack -L` shows it), if it is still in the table.
    pub fn state_of(&self, flow: FlowId) -> Option<&'static str> {
        self.table.state_of(flow)
    }
}

/// Checks that `out` can hold a frame of `overhead` + `payload` bytes.
fn check_room(out: &[u8], overhead: usize, payload: &[u8]) -> Result<(), NatError> {
    let need = overhead + payload.len();
    if need - VNET_ETH > usize::from(u16::MAX) {
        return Err(NatError::PayloadTooLarge(payload.len()));
    }
    if out.len() < need {
        return Err(NatError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    Ok(())
}

const VNET_ETH: usize = IP_OFF;
