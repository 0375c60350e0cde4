//! Published ports: a client's connection that the edge accepted on the host and carries to
//! the container with the client's address, and a client's datagrams to a published UDP port.

use std::net::SocketAddrV4;

use crate::conntrack::{inside_key, outside_key, CreateError, Extra, Flow, FlowId, Kind, Proto};
use crate::craft::{self, Ends};
use crate::error::NatError;
use crate::wire::IP_OFF;

use super::frame::check_room;
use super::Nat;

impl Nat {
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
    /// `client` come back as [`Verdict::UdpToClient`](super::Verdict::UdpToClient). As with
    /// [`Nat::publish_tcp`], a client in the subnet is refused ([`NatError::LocalClient`]): the
    /// edge sends from a host socket on the gateway address instead, and the replies reach that
    /// socket directly.
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
}
