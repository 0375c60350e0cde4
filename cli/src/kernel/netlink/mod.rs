//! Synchronous rtnetlink operations on the network namespace a [`Netlink`] socket was opened in.
//!
//! Requests are built with `netlink-packet-route`; replies are decoded by hand, reading only the
//! netlink header, the error code and the ifindex, so that attributes a newer kernel adds (or
//! changes) can never make a request fail after the kernel has carried it out.
//!
//! By concern: links (`link`: veths, flags, aliases, lookups), addresses and routes (`addr`),
//! tc objects (`tc`: the clsact qdisc and the fast path's cls_bpf filter).

use std::io;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLMSG_DONE,
    NLMSG_ERROR, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

mod addr;
mod link;
mod tc;
#[cfg(test)]
mod tests;

pub use addr::Ipv4Route;
pub use link::Link;
pub use tc::TcHook;

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

/// Receive buffer size: more than the kernel puts in one datagram (NLMSG_GOODSIZE is at most
/// 8 KiB; dumps use up to 32 KiB).
const RECV_BUF: usize = 64 * 1024;
/// `NLMSGERR_ATTR_MSG`: the extended ack's human-readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;

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
