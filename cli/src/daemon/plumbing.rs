//! The kernel work behind a plug: namespaces, the veth, both ends' configuration, the packet
//! sockets, the container's resolv.conf. Behind a trait so that the plug's bookkeeping (and its
//! rollback when a step fails half-way) is unit tested without root.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use vswitch_switch::MacAddr;

use crate::bpf::fanout::{Spread, SpreadProgram};
use crate::control::Target;
use crate::kernel::netlink::{Link, Netlink, NetlinkError};
use crate::kernel::netns;
use crate::natd::resolv;
use crate::ports::packet::PacketSocket;
use crate::ports::PortIo;

use super::error::DaemonError;

/// A namespace's identity: (st_dev, st_ino) of its nsfs file.
pub type NetnsId = (u64, u64);

/// Addressing for a container's end of the veth.
#[derive(Debug, Clone, Copy)]
pub struct Addressing {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// Whether the interface keeps IPv6: only where port security lets IPv6 through (a
    /// trusted port, `--allow-ethertype 86dd`); elsewhere the switch would drop all of it, so
    /// the container does not try it at all.
    pub ipv6: bool,
    /// Whether the interface gets a queue (`pfifo_fast`) in place of a veth's `noqueue`: on a
    /// port the daemon serves itself, a veth ring that fills while the kernel holds datagrams
    /// for it (receive coalescing) then stops the container's sends, from Linux 6.16, rather
    /// than dropping them.
    pub queue: bool,
}

pub trait Plumbing: Send {
    /// Opens the container's network namespace.
    fn open_netns(&self, target: &Target) -> Result<OwnedFd, DaemonError>;
    fn netns_id(&self, ns: BorrowedFd<'_>) -> io::Result<NetnsId>;
    /// A link in the daemon's namespace, `None` if there is none.
    fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError>;
    /// Every link in the daemon's namespace.
    fn links(&mut self) -> Result<Vec<Link>, NetlinkError>;
    /// Creates the veth, its peer straight in `ns`; returns the host end's ifindex.
    fn create_veth(
        &mut self,
        host: &str,
        peer: &str,
        ns: BorrowedFd<'_>,
        mac: MacAddr,
        mtu: u32,
    ) -> Result<u32, DaemonError>;
    /// Marks the host end as the daemon's, makes it inert (no IPv6, NOARP) and up.
    fn prepare_host_end(&mut self, name: &str, index: u32) -> Result<(), DaemonError>;
    /// Inside `ns`: `lo` up, IPv6 off on `ifname` unless `addressing.ipv6`, the address on
    /// `ifname`, its queue if `addressing.queue`, `ifname` up, the default route.
    fn configure_container(
        &mut self,
        ns: BorrowedFd<'_>,
        ifname: &str,
        addressing: Addressing,
    ) -> Result<(), DaemonError>;
    fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError>;
    /// The port's receive queues on the host end (one per worker), each carrying `filter`.
    fn open_queues(
        &mut self,
        index: u32,
        queues: usize,
        filter: Option<RawFd>,
    ) -> io::Result<Vec<Box<dyn PortIo>>>;
    /// Writes the container's resolv.conf where it has one of its own. Returns what happened,
    /// and the file to remove on unplug (with whether its directory was made for it).
    fn write_resolv(&mut self, target: &Target, content: &str) -> (String, Option<NetnsConf>);
}

/// `/etc/netns/NAME/resolv.conf` written by a plug, and whether the plug made its directory.
#[derive(Debug, Clone)]
pub struct NetnsConf {
    pub file: PathBuf,
    pub created_dir: bool,
}

/// The real thing: rtnetlink in the daemon's namespace, `setns` threads for the container's.
pub struct Kernel {
    pub nl: Netlink,
    /// The alias of the links this daemon makes (see [`marker`]).
    pub marker: String,
    pub spread: Spread,
    pub spread_program: Option<Arc<SpreadProgram>>,
}

impl Plumbing for Kernel {
    fn open_netns(&self, target: &Target) -> Result<OwnedFd, DaemonError> {
        match target {
            Target::Pid(pid) => netns::open_pid_netns(*pid).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => DaemonError::NoSuchProcess,
                io::ErrorKind::PermissionDenied => {
                    DaemonError::Permission(format!("/proc/{pid}/ns/net"))
                }
                _ => DaemonError::OpenNamespace(e),
            }),
            Target::Netns(path) => netns::open_netns_path(path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => DaemonError::NoSuchNamespace,
                _ => DaemonError::OpenNamespace(e),
            }),
        }
    }

    fn netns_id(&self, ns: BorrowedFd<'_>) -> io::Result<NetnsId> {
        netns::netns_id(ns)
    }

    fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        self.nl.link(name)
    }

    fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        self.nl.links()
    }

    fn create_veth(
        &mut self,
        host: &str,
        peer: &str,
        ns: BorrowedFd<'_>,
        mac: MacAddr,
        mtu: u32,
    ) -> Result<u32, DaemonError> {
        (self.nl)
            .create_veth(host, peer, ns, mac.0, mtu)
            .map_err(|e| match e.errno() {
                Some(libc::EEXIST) => DaemonError::IfnameTaken(peer.to_string()),
                _ => e.into(),
            })
    }

    fn prepare_host_end(&mut self, name: &str, index: u32) -> Result<(), DaemonError> {
        // The mark by which a later daemon knows the link for its own, state file or not.
        self.nl.set_alias(index, &self.marker)?;
        // Inert: no IPv6 and no ARP, or the host kernel answers for the gateway on it (see
        // ARCHITECTURE.md).
        netns::disable_ipv6(name)
            .map_err(|e| DaemonError::io(format!("disabling IPv6 on {name}"), e))?;
        Ok(self.nl.set_link(index, true, true, None, None)?)
    }

    fn configure_container(
        &mut self,
        ns: BorrowedFd<'_>,
        ifname: &str,
        a: Addressing,
    ) -> Result<(), DaemonError> {
        netns::run_in_netns(ns, || -> Result<(), DaemonError> {
            let mut nl = Netlink::open()?;
            if let Some(lo) = nl.link_index("lo")? {
                nl.set_link(lo, true, false, None, None)?;
            }
            let index = (nl.link_index(ifname)?)
                .ok_or_else(|| DaemonError::IfnameVanished(ifname.to_string()))?;
            if !a.ipv6 {
                // Before the link is up: not one router solicitation leaves.
                netns::disable_ipv6(ifname)
                    .map_err(|e| DaemonError::io(format!("disabling IPv6 on {ifname}"), e))?;
            }
            nl.add_address(index, a.ip, a.prefix)?;
            if a.queue {
                nl.set_root_pfifo_fast(index)?;
            }
            nl.set_link(index, true, false, None, None)?;
            nl.add_default_route(a.gateway)
                .map_err(|e| match e.errno() {
                    Some(libc::EEXIST) => DaemonError::DefaultRoute,
                    _ => e.into(),
                })
        })
        .map_err(|e| DaemonError::io("entering the container's namespace", e))?
    }

    fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.nl.delete_link(index)
    }

    fn open_queues(
        &mut self,
        index: u32,
        queues: usize,
        filter: Option<RawFd>,
    ) -> io::Result<Vec<Box<dyn PortIo>>> {
        let program = self.spread_program.as_deref();
        let sockets = PacketSocket::open_queues(index, queues, self.spread, program, filter)?;
        Ok(sockets
            .into_iter()
            .map(|s| Box::new(s) as Box<dyn PortIo>)
            .collect())
    }

    fn write_resolv(&mut self, target: &Target, content: &str) -> (String, Option<NetnsConf>) {
        let written = match target {
            Target::Pid(pid) => resolv::write_for_pid(*pid, content),
            Target::Netns(path) => resolv::write_for_netns(path, content),
        };
        match written {
            Ok(w) => {
                let undo = match &w {
                    resolv::Written::NetnsEtc { file, created_dir } => Some(NetnsConf {
                        file: file.clone(),
                        created_dir: *created_dir,
                    }),
                    _ => None,
                };
                (w.to_string(), undo)
            }
            Err(e) => (format!("resolv.conf not written: {e}"), None),
        }
    }
}

/// The identity of the namespace the calling process lives in (the daemon's own).
pub fn own_netns() -> io::Result<NetnsId> {
    netns::netns_id(std::fs::File::open("/proc/self/ns/net")?.as_fd())
}

/// The identity of the host's initial network namespace (pid 1's), if it can be read.
pub fn initial_netns() -> Option<NetnsId> {
    let init = std::fs::File::open("/proc/1/ns/net").ok()?;
    netns::netns_id(init.as_fd()).ok()
}

/// The alias a daemon gives the links it makes: `vswitch <control socket>`. A link with it is
/// provably this daemon's (the same control socket names the same switch), so a leftover one
/// may be removed; any other link is never touched.
pub fn marker(control: &std::path::Path) -> String {
    format!("vswitch {}", control.display())
}
