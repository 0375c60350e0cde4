//! Links: veths with the peer made straight in another namespace, flags, MTU, MAC, aliases,
//! lookups and dumps.

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NlasIterator, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkHeader, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{Netlink, NetlinkError};

// Attribute numbers of the replies read by hand (linux/if_link.h).
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_IFALIAS: u16 = 20;
/// The size of struct ifinfomsg, before the attributes.
pub(super) const IFINFOMSG_LEN: usize = 16;

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

impl Netlink {
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
        self.get_link(msg, name)
    }

    /// The link of index `index`, or `None` if there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg, &format!("#{index}"))
    }

    fn get_link(&mut self, msg: LinkMessage, what: &str) -> Result<Option<Link>, NetlinkError> {
        let replies = match self.request(RouteNetlinkMessage::GetLink(msg), 0, || {
            format!("look up link {what}")
        }) {
            Err(e) if e.errno() == Some(libc::ENODEV) => return Ok(None),
            result => result?,
        };
        let reply = replies
            .iter()
            .find(|(kind, _)| *kind == libc::RTM_NEWLINK)
            .ok_or_else(|| NetlinkError::Protocol(format!("no RTM_NEWLINK reply for {what}")))?;
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
