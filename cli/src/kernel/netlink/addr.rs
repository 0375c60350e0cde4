//! IPv4 addresses and routes.

use std::net::Ipv4Addr;

use netlink_packet_core::{NlasIterator, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, NetlinkError};

// Attribute numbers of the replies read by hand (linux/if_addr.h, rtnetlink.h).
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
/// Sizes of the fixed headers before the attributes: ifaddrmsg, rtmsg.
const IFADDRMSG_LEN: usize = 8;
const RTMSG_LEN: usize = 12;

/// The route to an address, as `route_to` finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTo {
    /// `RTN_UNICAST`, `RTN_LOCAL`, ...
    pub kind: u8,
    /// The interface it leaves by.
    pub oif: Option<u32>,
    /// The host's address packets to there leave from.
    pub src: Option<Ipv4Addr>,
}

/// An IPv4 route of the main table as `ipv4_routes` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Route {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

impl Netlink {
    /// Adds `addr/prefix_len` to a link (with the subnet's broadcast address, as `ip addr add
    /// ... brd +` does). The kernel also adds the connected route.
    pub fn add_address(
        &mut self,
        index: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.scope = AddressScope::Universe;
        msg.header.index = index;
        msg.attributes = vec![
            AddressAttribute::Local(addr.into()),
            AddressAttribute::Address(addr.into()),
        ];
        // /31 and /32 have no broadcast address (RFC 3021); longer prefixes are the kernel's to
        // reject.
        if prefix_len < 31 {
            let broadcast = u32::from(addr) | (u32::MAX >> prefix_len);
            msg.attributes
                .push(AddressAttribute::Broadcast(broadcast.into()));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("add address {addr}/{prefix_len} to link {index}"),
        )?;
        Ok(())
    }

    /// Adds `default via gateway` to the main table. The kernel resolves the output link from the
    /// connected route of the gateway's subnet, so the address must be added first.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 0;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        // RTPROT_BOOT, like `ip route add`.
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(gateway))];
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("add default route via {gateway}"),
        )?;
        Ok(())
    }

    /// The IPv4 addresses of link `index`, with their prefix lengths.
    pub fn ipv4_addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP, || {
            "list addresses".to_string()
        })?;
        let mut out = Vec::new();
        for (kind, body) in replies {
            let Some(header) = body.get(..IFADDRMSG_LEN) else {
                continue;
            };
            let family = i32::from(header[0]);
            let at = u32::from_ne_bytes(header[4..8].try_into().unwrap());
            if kind != libc::RTM_NEWADDR || family != libc::AF_INET || at != index {
                continue;
            }
            // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point links.
            let (mut local, mut address) = (None, None);
            for nla in NlasIterator::new(&body[IFADDRMSG_LEN..]).map_while(Result::ok) {
                let ip = <[u8; 4]>::try_from(nla.value()).ok().map(Ipv4Addr::from);
                match nla.kind() {
                    IFA_LOCAL => local = ip,
                    IFA_ADDRESS => address = ip,
                    _ => {}
                }
            }
            out.extend(local.or(address).map(|ip| (ip, header[1])));
        }
        Ok(out)
    }

    /// The IPv4 routes of the main table.
    pub fn ipv4_routes(&mut self) -> Result<Vec<Ipv4Route>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP, || {
            "list routes".to_string()
        })?;
        let mut out = Vec::new();
        for (kind, body) in replies {
            let Some(header) = body.get(..RTMSG_LEN) else {
                continue;
            };
            if kind != libc::RTM_NEWROUTE || i32::from(header[0]) != libc::AF_INET {
                continue;
            }
            let mut table = u32::from(header[4]);
            let mut route = Ipv4Route {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix_len: header[1],
                gateway: None,
                oif: None,
            };
            for nla in NlasIterator::new(&body[RTMSG_LEN..]).map_while(Result::ok) {
                let ip = <[u8; 4]>::try_from(nla.value()).ok().map(Ipv4Addr::from);
                let word = <[u8; 4]>::try_from(nla.value())
                    .ok()
                    .map(u32::from_ne_bytes);
                match nla.kind() {
                    RTA_DST => route.dst = ip.unwrap_or(route.dst),
                    RTA_GATEWAY => route.gateway = ip,
                    RTA_OIF => route.oif = word,
                    RTA_TABLE => table = word.unwrap_or(table),
                    _ => {}
                }
            }
            if table == u32::from(RouteHeader::RT_TABLE_MAIN) {
                out.push(route);
            }
        }
        Ok(out)
    }

    /// The route the host takes to `dst` (`ip route get`).
    pub fn route_to(&mut self, dst: Ipv4Addr) -> Result<RouteTo, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 32;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        let replies = self.request(RouteNetlinkMessage::GetRoute(msg), 0, || {
            format!("look up the route to {dst}")
        })?;
        for (kind, body) in replies {
            let Some(header) = body.get(..RTMSG_LEN) else {
                continue;
            };
            if kind != libc::RTM_NEWROUTE {
                continue;
            }
            let word = |kind: u16| {
                NlasIterator::new(&body[RTMSG_LEN..])
                    .map_while(Result::ok)
                    .find(|nla| nla.kind() == kind)
                    .and_then(|nla| <[u8; 4]>::try_from(nla.value()).ok())
            };
            return Ok(RouteTo {
                kind: header[7],
                oif: word(RTA_OIF).map(u32::from_ne_bytes),
                src: word(RTA_PREFSRC).map(Ipv4Addr::from),
            });
        }
        Err(NetlinkError::Protocol(format!(
            "no route to {dst} in the reply"
        )))
    }
}
