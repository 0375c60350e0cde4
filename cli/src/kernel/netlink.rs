//! Synchronous rtnetlink operations on the network namespace a [`Netlink`] socket was opened in.
//!
//! Requests are built with `netlink-packet-route`; replies are decoded by hand, reading only the
//! netlink header, the error code and the ifindex, so that attributes a newer kernel adds (or
//! changes) can never make a request fail after the kernel has carried it out.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLMSG_DONE,
    NLMSG_ERROR, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkHeader, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused a request; `source` carries its errno.
    #[error("{op}: {source}")]
    Kernel { op: String, source: io::Error },
    #[error("{0}")]
    Protocol(String),
}

impl NetlinkError {
    /// The errno behind the error (e.g. `libc::EEXIST`), if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Io(e) | NetlinkError::Kernel { source: e, .. } => e.raw_os_error(),
            NetlinkError::Protocol(_) => None,
        }
    }
}

/// An IPv4 route of the main table as `ipv4_routes` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Route {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

// Attribute numbers of the replies read by hand (linux/if_link.h, if_addr.h, rtnetlink.h).
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const IFA_LOCAL: u16 = 2;
const IFA_ADDRESS: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
/// Sizes of the fixed headers before the attributes: ifinfomsg, ifaddrmsg, rtmsg.
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const RTMSG_LEN: usize = 12;

/// Receive buffer size: more than the kernel puts in one datagram (NLMSG_GOODSIZE is at most
/// 8 KiB; dumps use up to 32 KiB).
const RECV_BUF: usize = 64 * 1024;
/// `NLMSGERR_ATTR_MSG`: the extended ack's human-readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Attribute numbers from <linux/if_link.h>.
const IFLA_IFNAME: u16 = 3;
const IFLA_IFALIAS: u16 = 20;

/// A link as [`Netlink::links`] lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    /// IFF_UP.
    pub up: bool,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
}

/// A clsact qdisc's handle (`ffff:0`).
const CLSACT_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// A clsact qdisc's ingress hook, as a filter's parent (`TC_H_MAKE(TC_H_CLSACT,
/// TC_H_MIN_INGRESS)`).
const CLSACT_INGRESS: TcHandle = TcHandle {
    major: 0xffff,
    minor: TcHandle::MIN_INGRESS,
};
/// The handle of the one BPF filter the daemon puts on a hook.
const BPF_FILTER_HANDLE: TcHandle = TcHandle { major: 0, minor: 1 };

/// A NETLINK_ROUTE socket. It stays bound to the namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket in the calling thread's current network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        // Connected to the kernel, so that no other socket can inject replies.
        socket.connect(&SocketAddr::new(0, 0))?;
        // Best effort: errors carry the kernel's explanation and no copy of the request.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Netlink {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// The ifindex of the link called `name`, or `None` if there is none.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(self.link(name)?.map(|l| l.index))
    }

    /// The link called `name`, or `None` if there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        // No link can have such a name; the kernel would reject the request with ERANGE.
        if name.len() >= libc::IFNAMSIZ {
            return Ok(None);
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let replies = match self.request(RouteNetlinkMessage::GetLink(msg), 0, || {
            format!("look up link {name}")
        }) {
            Err(e) if e.errno() == Some(libc::ENODEV) => return Ok(None),
            result => result?,
        };
        let reply = replies
            .iter()
            .find(|(kind, _)| *kind == libc::RTM_NEWLINK)
            .ok_or_else(|| NetlinkError::Protocol(format!("no RTM_NEWLINK reply for {name}")))?;
        parse_link(&reply.1).map(Some)
    }

    /// One RTM_NEWLINK: veth `host_name` in this namespace, its peer `peer_name` created directly
    /// in the namespace `peer_netns` (IFLA_NET_NS_FD), with MAC `peer_mac` and MTU `mtu` on both
    /// ends. Returns the host end's ifindex.
    pub fn create_veth(
        &mut self,
        host_name: &str,
        peer_name: &str,
        peer_netns: BorrowedFd<'_>,
        peer_mac: [u8; 6],
        mtu: u32,
    ) -> Result<u32, NetlinkError> {
        let mut peer = LinkMessage::default();
        peer.attributes = vec![
            LinkAttribute::IfName(peer_name.to_string()),
            LinkAttribute::Address(peer_mac.to_vec()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::NetNsFd(peer_netns.as_raw_fd()),
        ];
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(host_name.to_string()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]),
        ];
        let op = || format!("create veth {host_name}");
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            op,
        )?;
        // The ACK carries no ifindex; look it up (the name is ours: creation was exclusive).
        self.link_index(host_name)?
            .ok_or_else(|| NetlinkError::Protocol(format!("{}: vanished after creation", op())))
    }

    /// Deletes a link; deleting either end of a veth deletes both.
    pub fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(msg), 0, || {
            format!("delete link {index}")
        })?;
        Ok(())
    }

    /// Sets a link's alias (`ip link set ... alias`), the mark by which the daemon later knows
    /// a link for its own.
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.request(RouteNetlinkMessage::SetLink(msg), 0, || {
            format!("set the alias of link {index}")
        })?;
        Ok(())
    }

    /// Every link of the namespace: index, name and alias. Read straight from the attributes
    /// (IFLA_IFNAME, IFLA_IFALIAS), so a newer kernel's other attributes never break the dump.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            || "list links".to_string(),
        )?;
        (replies.iter())
            .filter(|(kind, _)| *kind == libc::RTM_NEWLINK)
            .map(|(_, payload)| parse_link(payload))
            .collect()
    }

    /// Sets IFF_UP and IFF_NOARP to exactly `up` and `noarp` (host veth ends must be NOARP), and
    /// the MTU and MAC when given. The kernel applies MAC and MTU before the flags.
    pub fn set_link(
        &mut self,
        index: u32,
        up: bool,
        noarp: bool,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
    ) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = LinkFlags::Up | LinkFlags::Noarp;
        msg.header.flags.set(LinkFlags::Up, up);
        msg.header.flags.set(LinkFlags::Noarp, noarp);
        msg.attributes.extend(mtu.map(LinkAttribute::Mtu));
        msg.attributes
            .extend(mac.map(|mac| LinkAttribute::Address(mac.to_vec())));
        self.request(RouteNetlinkMessage::SetLink(msg), 0, || {
            format!("configure link {index}")
        })?;
        Ok(())
    }

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

    /// Adds a `clsact` qdisc to link `index`: the hooks for tc programs on its ingress and
    /// egress, with no queue. `false` if the link already had one (then it is not ours).
    pub fn add_clsact(&mut self, index: u32) -> Result<bool, NetlinkError> {
        let mut msg = tc_message(index, CLSACT_HANDLE, TcHandle::CLSACT);
        msg.attributes.push(TcAttribute::Kind("clsact".into()));
        match self.request(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("add a clsact qdisc to link {index}"),
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes link `index`'s `clsact` qdisc and every filter on it.
    pub fn delete_clsact(&mut self, index: u32) -> Result<(), NetlinkError> {
        let msg = tc_message(index, CLSACT_HANDLE, TcHandle::CLSACT);
        self.request(RouteNetlinkMessage::DelQueueDiscipline(msg), 0, || {
            format!("delete the clsact qdisc of link {index}")
        })?;
        Ok(())
    }

    /// Puts BPF program `prog` (a `SCHED_CLS` program) on link `index`'s clsact ingress hook as
    /// a `cls_bpf` filter in direct-action mode (the program's return value is the verdict),
    /// for every protocol, at priority `prio`, under `name`. A filter already there at that
    /// priority (one a killed daemon left: unlike a tcx link, a filter outlives its process) is
    /// replaced, in one step.
    pub fn add_ingress_bpf(
        &mut self,
        index: u32,
        prio: u16,
        prog: BorrowedFd<'_>,
        name: &str,
    ) -> Result<(), NetlinkError> {
        let mut msg = ingress_bpf_filter(index, prio);
        msg.attributes.push(TcAttribute::Kind("bpf".into()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        self.request(
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("add BPF filter {name} to the ingress of link {index}"),
        )?;
        Ok(())
    }

    /// Deletes the filter [`Netlink::add_ingress_bpf`] put on link `index` at priority `prio`.
    pub fn delete_ingress_bpf(&mut self, index: u32, prio: u16) -> Result<(), NetlinkError> {
        let mut msg = ingress_bpf_filter(index, prio);
        msg.attributes.push(TcAttribute::Kind("bpf".into()));
        self.request(RouteNetlinkMessage::DelTrafficFilter(msg), 0, || {
            format!("delete the BPF filter on the ingress of link {index}")
        })?;
        Ok(())
    }

    /// Sends one request with NLM_F_REQUEST | NLM_F_ACK | `flags` and reads replies up to its ACK
    /// (or NLMSG_DONE). Returns the (message type, payload) of the other replies to it.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce() -> String,
    ) -> Result<Vec<(u16, Vec<u8>)>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;

        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            // MSG_TRUNC makes recv return the datagram's real size, so truncation is detectable.
            let len = match self.socket.recv(&mut self.buf, libc::MSG_TRUNC) {
                // A signal handler installed without SA_RESTART; the reply is still queued.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => result?,
            };
            if len > self.buf.len() {
                return Err(NetlinkError::Protocol(format!(
                    "netlink reply of {len} bytes truncated"
                )));
            }
            let mut rest = &self.buf[..];
            while !rest.is_empty() {
                let nl = NetlinkBuffer::new_checked(rest)
                    .map_err(|e| NetlinkError::Protocol(format!("bad netlink reply: {e}")))?;
                // Replies to an earlier request that failed half-way are skipped.
                if nl.sequence_number() == self.seq {
                    match nl.message_type() {
                        NLMSG_ERROR => {
                            return match parse_error(nl.flags(), nl.payload())? {
                                None => Ok(replies),
                                Some((errno, ext)) => Err(NetlinkError::Kernel {
                                    op: match ext {
                                        Some(ext) => format!("{} ({ext})", op()),
                                        None => op(),
                                    },
                                    source: io::Error::from_raw_os_error(errno),
                                }),
                            }
                        }
                        NLMSG_DONE => return Ok(replies),
                        kind => replies.push((kind, nl.payload().to_vec())),
                    }
                }
                let step = (nl.length() as usize).next_multiple_of(4);
                rest = rest.get(step..).unwrap_or_default();
            }
        }
    }
}

/// A tc request about link `index`'s object `handle` under `parent`.
fn tc_message(index: u32, handle: TcHandle, parent: TcHandle) -> TcMessage {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.handle = handle;
    msg.header.parent = parent;
    msg
}

/// The daemon's BPF filter on link `index`'s clsact ingress hook, at priority `prio`, for every
/// protocol (`tcm_info` is `TC_H_MAKE(prio << 16, htons(ETH_P_ALL))`).
fn ingress_bpf_filter(index: u32, prio: u16) -> TcMessage {
    let mut msg = tc_message(index, BPF_FILTER_HANDLE, CLSACT_INGRESS);
    msg.header.info = u32::from(prio) << 16 | u32::from((libc::ETH_P_ALL as u16).to_be());
    msg
}

/// A link from an RTM_NEWLINK payload: its index from the header, name and alias from the
/// attributes, read one by one so that a newer kernel's other attributes never break it.
fn parse_link(payload: &[u8]) -> Result<Link, NetlinkError> {
    let header =
        LinkHeader::parse(payload).map_err(|e| NetlinkError::Protocol(format!("link: {e}")))?;
    let mut link = Link {
        index: header.index,
        up: header.flags.contains(LinkFlags::Up),
        ..Link::default()
    };
    // struct ifinfomsg is 16 bytes; the attributes follow.
    let attributes = payload.get(IFINFOMSG_LEN..).unwrap_or_default();
    for nla in NlasIterator::new(attributes).map_while(Result::ok) {
        let value = nla.value().split(|&b| b == 0).next().unwrap_or_default();
        let text = || String::from_utf8_lossy(value).into_owned();
        match nla.kind() {
            IFLA_IFNAME => link.name = text(),
            IFLA_IFALIAS => link.alias = Some(text()).filter(|a| !a.is_empty()),
            IFLA_ADDRESS => link.mac = nla.value().try_into().ok(),
            IFLA_MTU => link.mtu = nla.value().try_into().ok().map(u32::from_ne_bytes),
            _ => {}
        }
    }
    Ok(link)
}

/// Decodes an NLMSG_ERROR payload: `None` for an ACK, else the errno and the extended ack
/// message if the kernel sent one.
fn parse_error(flags: u16, payload: &[u8]) -> Result<Option<(i32, Option<String>)>, NetlinkError> {
    let short = || NetlinkError::Protocol("short NLMSG_ERROR".into());
    let code = i32::from_ne_bytes(payload.get(..4).ok_or_else(short)?.try_into().unwrap());
    if code == 0 {
        return Ok(None);
    }
    let mut ext = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // The TLVs follow the echoed request: only its header when capped, else all of it.
        let echoed = &payload[4..];
        let echoed_len = if flags & NLM_F_CAPPED != 0 {
            16
        } else {
            NetlinkBuffer::new_checked(echoed).map_or(echoed.len(), |b| b.length() as usize)
        };
        let tlvs = echoed
            .get(echoed_len.next_multiple_of(4)..)
            .unwrap_or_default();
        ext = NlasIterator::new(tlvs)
            .map_while(Result::ok)
            .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
            .map(|nla| {
                let msg = nla.value().split(|&b| b == 0).next().unwrap_or_default();
                String::from_utf8_lossy(msg).into_owned()
            })
            .filter(|msg| !msg.is_empty());
    }
    Ok(Some((-code, ext)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netns::run_in_netns;
    use crate::kernel::netns::tests::{run, TestNetns};
    use serde_json::Value;
    use std::os::fd::AsFd;

    const PEER_MAC: [u8; 6] = [0x02, 0x56, 0x53, 0x00, 0x00, 0x2a];

    /// `ip -j` output for `args` inside namespace `ns`.
    fn ip_json(ns: &TestNetns, args: &[&str]) -> Value {
        let out = run(&[&["ip", "-n", &ns.name, "-j"][..], args].concat());
        serde_json::from_str(&out).unwrap()
    }

    fn link_json(ns: &TestNetns, dev: &str) -> Value {
        ip_json(ns, &["link", "show", "dev", dev])[0].clone()
    }

    fn has_flag(link: &Value, flag: &str) -> bool {
        link["flags"].as_array().unwrap().iter().any(|f| f == flag)
    }

    /// A host and a container namespace, and a socket opened in the host one: the socket keeps
    /// working on the host namespace from this (test) thread, which never changes namespace.
    fn setup() -> (TestNetns, TestNetns, Netlink) {
        let (host, container) = (TestNetns::new(), TestNetns::new());
        let nl = run_in_netns(&host.fd, Netlink::open).unwrap().unwrap();
        (host, container, nl)
    }

    #[test]
    fn a_link_carries_its_alias_and_the_dump_lists_every_link() {
        let (_host, container, mut nl) = setup();
        let index = nl
            .create_veth("vsw-al0", "eth0", container.fd.as_fd(), PEER_MAC, 1500)
            .unwrap();
        let link = nl.link("vsw-al0").unwrap().unwrap();
        assert_eq!(
            (link.index, link.name.as_str(), link.alias),
            (index, "vsw-al0", None)
        );
        nl.set_alias(index, "vswitch /run/vswitch/test.sock")
            .unwrap();
        let link = nl.link("vsw-al0").unwrap().unwrap();
        assert_eq!(
            link.alias.as_deref(),
            Some("vswitch /run/vswitch/test.sock")
        );
        let links = nl.links().unwrap();
        let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        assert!(
            names.contains(&"lo") && names.contains(&"vsw-al0"),
            "{names:?}"
        );
        assert!(links.contains(&link));
        assert_eq!(nl.link("vsw-nothing").unwrap(), None);
    }

    #[test]
    fn veth_peer_is_created_in_the_other_namespace() {
        let (host, container, mut nl) = setup();
        let index = nl
            .create_veth("vsw-h0", "eth0", container.fd.as_fd(), PEER_MAC, 1400)
            .unwrap();

        let peer = link_json(&container, "eth0");
        assert_eq!(peer["address"], "02:56:53:00:00:2a");
        assert_eq!(peer["mtu"], 1400);
        let host_end = link_json(&host, "vsw-h0");
        assert_eq!(host_end["ifindex"], index);
        assert_eq!(host_end["mtu"], 1400);
        assert_eq!(nl.link_index("vsw-h0").unwrap(), Some(index));
        assert_eq!(
            nl.link_index("eth0").unwrap(),
            None,
            "peer is not in the host namespace"
        );

        nl.set_link(index, true, true, Some(1300), Some([2, 0, 0, 0, 0, 1]))
            .unwrap();
        let host_end = link_json(&host, "vsw-h0");
        assert!(has_flag(&host_end, "UP") && has_flag(&host_end, "NOARP"));
        assert_eq!(host_end["mtu"], 1300);
        assert_eq!(host_end["address"], "02:00:00:00:00:01");
        nl.set_link(index, false, false, None, None).unwrap();
        let host_end = link_json(&host, "vsw-h0");
        assert!(!has_flag(&host_end, "UP") && !has_flag(&host_end, "NOARP"));
        assert_eq!(host_end["mtu"], 1300, "MTU unchanged when not given");

        // Exclusive creation: a clash on either end's name is EEXIST.
        let err = nl
            .create_veth("vsw-h0", "eth1", container.fd.as_fd(), PEER_MAC, 1400)
            .unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
        assert!(err.to_string().starts_with("create veth vsw-h0"), "{err}");
        let err = nl
            .create_veth("vsw-h1", "eth0", container.fd.as_fd(), PEER_MAC, 1400)
            .unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
        assert_eq!(nl.link_index("vsw-h1").unwrap(), None);

        // An impossible MTU: the kernel's extended ack explains the EINVAL.
        let err = nl
            .set_link(index, true, true, Some(1 << 20), None)
            .unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
        assert!(err.to_string().to_lowercase().contains("mtu"), "{err}");

        nl.delete_link(index).unwrap();
        assert_eq!(nl.link_index("vsw-h0").unwrap(), None);
        let links = ip_json(&container, &["link", "show"]);
        assert!(!links.to_string().contains("eth0"), "{links}");
        let err = nl.delete_link(index).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
    }

    #[test]
    fn address_and_default_route_inside_the_container() {
        let (host, container, mut nl) = setup();
        let host_index = nl
            .create_veth("vsw-h0", "eth0", container.fd.as_fd(), PEER_MAC, 1500)
            .unwrap();
        nl.set_link(host_index, true, true, None, None).unwrap();

        let gateway = Ipv4Addr::new(10, 88, 0, 1);
        let (dup_addr, dup_route) = run_in_netns(&container.fd, move || {
            let mut nl = Netlink::open().unwrap();
            let index = nl.link_index("eth0").unwrap().unwrap();
            nl.set_link(index, true, false, None, None).unwrap();
            nl.add_address(index, Ipv4Addr::new(10, 88, 0, 2), 24)
                .unwrap();
            nl.add_default_route(gateway).unwrap();
            let dup_addr = nl.add_address(index, Ipv4Addr::new(10, 88, 0, 2), 24);
            (
                dup_addr.unwrap_err(),
                nl.add_default_route(gateway).unwrap_err(),
            )
        })
        .unwrap();
        assert_eq!(dup_addr.errno(), Some(libc::EEXIST), "{dup_addr}");
        assert_eq!(dup_route.errno(), Some(libc::EEXIST), "{dup_route}");

        let addrs = ip_json(&container, &["-4", "addr", "show", "dev", "eth0"]);
        let addr = &addrs[0]["addr_info"][0];
        assert_eq!(addr["local"], "10.88.0.2");
        assert_eq!(addr["prefixlen"], 24);
        assert_eq!(addr["broadcast"], "10.88.0.255");
        let routes = ip_json(&container, &["-4", "route", "show", "default"]);
        assert_eq!(routes[0]["gateway"], "10.88.0.1");
        assert_eq!(routes[0]["dev"], "eth0");
        // Nothing leaked into the host namespace.
        assert_eq!(
            ip_json(&host, &["-4", "addr", "show"]),
            Value::Array(vec![])
        );
        assert_eq!(
            ip_json(&host, &["-4", "route", "show"]),
            Value::Array(vec![])
        );
    }

    #[test]
    fn reads_links_addresses_and_routes_back() {
        let (_host, container, mut nl) = setup();
        nl.create_veth("vsw-h0", "eth0", container.fd.as_fd(), PEER_MAC, 1400)
            .unwrap();
        let gateway = Ipv4Addr::new(10, 88, 0, 1);
        let (before, after, addrs, routes, missing) = run_in_netns(&container.fd, move || {
            let mut nl = Netlink::open().unwrap();
            let before = nl.link("eth0").unwrap().unwrap();
            nl.set_link(before.index, true, false, None, None).unwrap();
            nl.add_address(before.index, Ipv4Addr::new(10, 88, 0, 2), 24)
                .unwrap();
            nl.add_default_route(gateway).unwrap();
            let after = nl.link("eth0").unwrap().unwrap();
            let addrs = nl.ipv4_addresses(after.index).unwrap();
            (
                before,
                after,
                addrs,
                nl.ipv4_routes().unwrap(),
                nl.link("eth9"),
            )
        })
        .unwrap();
        assert_eq!(before.mac, Some(PEER_MAC));
        assert_eq!(before.mtu, Some(1400));
        assert!(!before.up && after.up);
        assert_eq!(addrs, vec![(Ipv4Addr::new(10, 88, 0, 2), 24)]);
        let default = Ipv4Route {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: Some(gateway),
            oif: Some(after.index),
        };
        assert!(routes.contains(&default), "{routes:?}");
        let connected = routes.iter().find(|r| r.prefix_len == 24).unwrap();
        assert_eq!(connected.dst, Ipv4Addr::new(10, 88, 0, 0));
        assert_eq!(missing.unwrap(), None);
    }

    #[test]
    fn errors_on_missing_objects() {
        let (_host, _container, mut nl) = setup();
        assert_eq!(nl.link_index("nosuchif0").unwrap(), None);
        assert_eq!(nl.link_index("a-name-longer-than-ifnamsiz").unwrap(), None);
        let err = nl.delete_link(0x7fff_fff0).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
        assert!(matches!(err, NetlinkError::Kernel { .. }));
        let err = nl
            .add_address(0x7fff_fff0, Ipv4Addr::new(10, 0, 0, 1), 24)
            .unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
        // No address in the namespace, so the gateway is unreachable.
        let err = nl
            .add_default_route(Ipv4Addr::new(10, 0, 0, 1))
            .unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
        // The socket is still in sync after errors.
        assert_eq!(nl.link_index("lo").unwrap(), Some(1));
    }

    #[test]
    fn a_clsact_qdisc_is_added_once_and_deleted() {
        let (host, container, mut nl) = setup();
        let index = nl
            .create_veth("vsw-h0", "eth0", container.fd.as_fd(), PEER_MAC, 1500)
            .unwrap();
        let qdiscs = |ns: &TestNetns| {
            let out = run(&["tc", "-n", &ns.name, "-j", "qdisc", "show", "dev", "vsw-h0"]);
            serde_json::from_str::<Value>(&out).unwrap()
        };
        let has_clsact = |q: &Value| q.as_array().unwrap().iter().any(|q| q["kind"] == "clsact");
        assert!(!has_clsact(&qdiscs(&host)));
        assert!(nl.add_clsact(index).unwrap(), "made by us");
        assert!(has_clsact(&qdiscs(&host)), "{}", qdiscs(&host));
        assert!(!nl.add_clsact(index).unwrap(), "already there: not ours");
        nl.delete_clsact(index).unwrap();
        assert!(!has_clsact(&qdiscs(&host)), "{}", qdiscs(&host));
        assert!(nl.delete_clsact(index).is_err(), "nothing left to delete");
        // A filter needs the qdisc's hook.
        let err = nl.delete_ingress_bpf(index, 1).unwrap_err();
        assert!(matches!(err, NetlinkError::Kernel { .. }), "{err}");
    }
}
