//! The translation engine: what happens to each frame between the containers and the host, and
//! the calls the edge makes for the flows it carries through host sockets.
//!
//! Nothing leaves through IP forwarding: the host's `ip_forward` stays 0 and no firewall rule is
//! involved. Every flow is terminated or opened by the host kernel's own sockets, or translated
//! by the edge itself:
//! - TCP out, translated (`translated`): the edge takes the connection at its SYN
//!   ([`Nat::tcp_translated`] rewrites the held SYN to come from the host's address and port)
//!   and translates every later segment itself (a kernel fast path); it reports the flags they
//!   carried ([`Nat::translated_seen`]), which move the flow's state.
//! - TCP out, relayed: the container's segments to `OUTSIDE:DPORT` are rewritten to
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
//!
//! The engine is one [`Nat`] whose methods are grouped by what they serve:
//! - `outbound`: a container's frames to the outside, and the flows they open;
//! - `inbound`: what comes back: the host's TCP segments, the replies its sockets received;
//! - `relay`: an outgoing TCP connection's relay port and its held SYN's outcome;
//! - `translated`: an outgoing TCP connection the edge translates itself;
//! - `publish`: connections and datagrams from clients of published ports;
//! - `answer`: the frames the NAT writes itself, as a router: refusals, ICMP errors;
//! - `flows`: removal, expiry and the table's views, for the edge;
//! - `frame`: the small reads and in-place rewrites of a frame these share.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;

use crate::conntrack::{Flow, FlowId, Kind, Shares, Table, Timeouts, DEFAULT_MAX_FLOWS};
use crate::craft::ICMP_ERROR_FRAME_MAX;
use crate::error::{NatDrop, NatError};
use crate::snapshot::{NatSnapshot, RestoreError};
use crate::tcp_state::TcpState;

mod answer;
mod flows;
pub(crate) mod frame;
mod inbound;
mod outbound;
mod publish;
mod relay;
mod translated;

pub use answer::ICMP_DEST_UNREACH;
pub use flows::DatagramFlow;

/// A frame the NAT wrote in answer to a container's (see [`Verdict::Reply`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ReplyFrame {
    buf: [u8; ICMP_ERROR_FRAME_MAX],
    len: usize,
}

impl ReplyFrame {
    /// The frame `write` writes into an empty buffer, if it could.
    fn write(write: impl FnOnce(&mut [u8]) -> Result<usize, NatError>) -> Option<ReplyFrame> {
        let mut reply = ReplyFrame {
            buf: [0; ICMP_ERROR_FRAME_MAX],
            len: 0,
        };
        reply.len = write(&mut reply.buf).ok()?;
        Some(reply)
    }

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
    /// Translated in place (switch it as usual), and the relayed connection is established and
    /// has carried [`OFFLOAD_AFTER`] segments (it is more than a short exchange): every later
    /// segment of it without SYN, FIN or RST translates the same way, so the edge may translate
    /// those itself (a kernel fast path) until it sees [`Verdict::Closing`] or the flow
    /// expires. Those segments never reach the NAT: the edge reports what it carried with
    /// [`Nat::offloaded`].
    Offload(Offload),
    /// Translated in place (switch it as usual), and the flow left ESTABLISHED: whatever the edge
    /// translates of it itself must come back through the NAT.
    Closing(FlowId),
    /// A SYN retransmitted while the edge connects (or anything else from the container on a
    /// flow still connecting): drop it; `tcp_connected` will release the first SYN.
    Pending,
    /// A new TCP flow: hold this SYN, connect to `dst` from the host, then call
    /// [`Nat::tcp_connected`] (success), [`Nat::tcp_reset_reply`] (refused) or
    /// [`Nat::icmp_unreachable_reply`] (unreachable); or translate the connection itself from
    /// here on ([`Nat::tcp_translated`]).
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

/// Segments (both ways, handshake included) a relayed connection carries through the NAT before
/// it is offered to the edge ([`Verdict::Offload`]): handing a connection over and taking it
/// back costs the edge a few system calls, more than a short exchange's segments would.
pub const OFFLOAD_AFTER: u64 = 32;

/// An established relayed TCP connection's translation (see [`Verdict::Offload`]): the
/// container's segments from `container` to `remote` go to `relay` (the host's side of the
/// connection, on the gateway), and the host's from `relay` to `container` come from `remote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    pub flow: FlowId,
    pub container: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub relay: SocketAddrV4,
}

impl Verdict {
    /// The frame was translated in place (and goes on).
    pub fn rewrote(&self) -> bool {
        matches!(
            self,
            Verdict::Rewritten | Verdict::Offload(_) | Verdict::Closing(_)
        )
    }
}

/// A relayed TCP flow, as the relay finds it when it accepts the container's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayFlow {
    pub flow: FlowId,
    /// The container's original destination.
    pub dst: SocketAddrV4,
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

    /// The verdict for a translated segment of flow `id`, whose TCP state was `before`:
    /// `Offload` for an established relayed connection at its [`OFFLOAD_AFTER`]th segment,
    /// `Closing` for a flow that just left ESTABLISHED, else `Rewritten`.
    fn translated(&self, id: FlowId, flow: &Flow, before: TcpState) -> Verdict {
        use TcpState::Established as E;
        let segments = flow.packets_out + flow.packets_in;
        match (before, flow.tcp.state(), flow.kind) {
            // A published connection is relayed the same way, from `GATEWAY:EPH`.
            (_, E, Kind::TcpEgress { relay, .. } | Kind::TcpPublished { eph: relay })
                if segments == OFFLOAD_AFTER =>
            {
                Verdict::Offload(Offload {
                    flow: id,
                    container: flow.inside(),
                    remote: flow.remote(),
                    relay: SocketAddrV4::new(Ipv4Addr::from(self.gateway), relay),
                })
            }
            (E, after, _) if after != E => Verdict::Closing(id),
            _ => Verdict::Rewritten,
        }
    }

    /// What the edge translated itself of flow `flow` since its last report (an established
    /// connection, see [`Verdict::Offload`]; a UDP flow or an echo, see
    /// [`Nat::datagram_flow`]): segments and bytes (IPv4 packets, as the NAT counts them)
    /// from the container and to it. Counted on the flow, and keeps it alive as those segments
    /// would have. False if the flow is gone.
    pub fn offloaded(&self, flow: FlowId, out: (u64, u64), back: (u64, u64), now: u64) -> bool {
        let Some((mut sh, slot)) = self.table.lock_id(flow, None) else {
            return false;
        };
        let Some(f) = sh.flow_mut(slot) else {
            return false;
        };
        f.packets_out += out.0;
        f.bytes_out += out.1;
        f.packets_in += back.0;
        f.bytes_in += back.1;
        // A UDP flow or an echo is answered once anything came back.
        f.replied |= back.0 > 0;
        if out.0 + back.0 > 0 {
            self.table.refresh(f, now);
        }
        true
    }

    fn drop(&self, d: NatDrop) -> Verdict {
        self.table.count_drop(d);
        Verdict::Drop(d)
    }
}
