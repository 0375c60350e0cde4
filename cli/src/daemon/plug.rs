//! Plugging and unplugging a container: the veth, both ends' configuration, the port in the
//! switch and the datapath, the published ports, the resolv.conf.
//!
//! A plug that fails half-way leaves nothing behind: every step that made something records
//! how to undo it, and a failed plug undoes them in reverse order.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use vswitch_switch::{ethertype, MacAddr, PortId, PortInfo, PortPolicy, VNET_HDR_LEN};

use crate::bpf::fastpath::{Attachment, MAX_PORTS};
use crate::control::{Plug, PortView, PublishSpec, Target};
use crate::natd::{self, resolv, NatJob};
use crate::ports::{Counters, Port};

use super::error::DaemonError;
use super::manager::{Container, Manager};
use super::names::{attachment_ifname, host_ifname};
use super::plumbing::{Addressing, NetnsId};

/// What a plug has made so far, in order.
#[derive(Debug, Default)]
pub struct Undo(Vec<Made>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    Address(Ipv4Addr),
    Link(u32),
    Reserved(usize),
    SwitchPort(PortId),
    DatapathPort(PortId),
}

impl Undo {
    /// An address reserved outside `try_plug` (adoption).
    pub fn address(&mut self, ip: Ipv4Addr) {
        self.0.push(Made::Address(ip));
    }
}

/// A port to add: its number, its veth's host end, its station, and whether it is new (not
/// taken over from a previous daemon).
#[derive(Clone, Copy)]
pub(super) struct NewPort<'a> {
    pub id: PortId,
    pub host_ifname: &'a str,
    pub index: u32,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub new: bool,
    /// What it may send and reach.
    pub policy: &'a PortPolicy,
}

/// A container's namespace, opened and identified.
struct Namespace {
    fd: OwnedFd,
    id: NetnsId,
}

impl Manager {
    pub fn plug(&mut self, req: Plug) -> Result<PortView, DaemonError> {
        let mut undo = Undo::default();
        let result = self.try_plug(req, &mut undo);
        if result.is_err() {
            self.roll_back(undo);
        }
        result
    }

    pub(super) fn roll_back(&mut self, undo: Undo) {
        for made in undo.0.into_iter().rev() {
            match made {
                Made::DatapathPort(id) => drop(self.datapath.remove_port(id)),
                Made::SwitchPort(id) => self.datapath.switch().remove_port(id),
                // Deleting the host end deletes both.
                Made::Link(index) => drop(self.plumbing.delete_link(index)),
                Made::Address(ip) => self.ipam.release(ip),
                Made::Reserved(fds) => self.budget.unreserve(fds),
            }
        }
    }

    fn try_plug(&mut self, req: Plug, undo: &mut Undo) -> Result<PortView, DaemonError> {
        let ns = self.open_namespace(&req.target)?;
        let attachment = req.attachment();
        if let Some(a) = &attachment {
            self.claim_attachment(a, ns.id);
        }
        let ifname = req.ifname();
        let host_ifname = match &attachment {
            Some(a) => attachment_ifname(a),
            None => host_ifname(&req.target),
        };
        let policy = req.security.policy(self.isolate);
        self.clear_leftover(&host_ifname)?;
        let (ip, mac) = self.address(req.ip, req.mac, undo)?;
        // Published ports are bound before the veth exists: a port in use fails the plug
        // early. The listeners close by themselves if a later step fails.
        let listeners = self.bind_all(&req.publish)?;

        let index = (self.plumbing).create_veth(
            &host_ifname,
            ifname.as_str(),
            ns.fd.as_fd(),
            mac,
            self.mtu,
        )?;
        undo.0.push(Made::Link(index));
        self.plumbing.prepare_host_end(&host_ifname, index)?;
        let addressing = Addressing {
            ip,
            prefix: self.ipam.net().prefix,
            gateway: self.ipam.gateway(),
            ipv6: policy.trusted || policy.allow_ethertypes.contains(&ethertype::IPV6),
        };
        (self.plumbing).configure_container(ns.fd.as_fd(), ifname.as_str(), addressing)?;
        let id = self.free_port_id().ok_or(DaemonError::TooManyPorts)?;
        let port = NewPort {
            id,
            host_ifname: &host_ifname,
            index,
            ip,
            mac,
            new: true,
            policy: &policy,
        };
        let fast_link = self.add_port(&port, undo)?;

        let container = Container {
            port: id,
            target: req.target,
            netns_id: ns.id,
            host_ifname,
            host_index: index,
            ifname,
            ip,
            mac,
            publish: req.publish,
            netns_conf: None,
            fast_link,
            attachment,
            network: req.network,
            policy,
        };
        Ok(self.commit(container, listeners, req.resolv))
    }

    /// Opens the target's namespace, refusing the daemon's and the host's own and one that is
    /// plugged already. A record whose veth is gone (its container died, and the kernel may
    /// have reused the namespace's inode) is dropped rather than refusing the newcomer.
    fn open_namespace(&mut self, target: &Target) -> Result<Namespace, DaemonError> {
        let fd = self.plumbing.open_netns(target)?;
        let id = (self.plumbing.netns_id(fd.as_fd()))
            .map_err(|e| DaemonError::io("identifying its network namespace", e))?;
        if id == self.own_netns {
            return Err(DaemonError::DaemonNamespace);
        }
        if Some(id) == self.initial_netns {
            return Err(DaemonError::HostNamespace);
        }
        if let Some(i) = self.containers.iter().position(|c| c.netns_id == id) {
            if self.is_alive(i) {
                let c = &self.containers[i];
                return Err(DaemonError::AlreadyPlugged {
                    host_ifname: c.host_ifname.clone(),
                    ip: c.ip,
                });
            }
            self.remove_gone(i);
        }
        Ok(Namespace { fd, id })
    }

    /// Makes room for a host end called `name`: a link of that name left by an earlier daemon
    /// of this switch (it carries our mark, and no plugged container owns it) is removed; any
    /// other link of that name is not ours to touch.
    fn clear_leftover(&mut self, name: &str) -> Result<(), DaemonError> {
        let Some(link) = self.plumbing.link(name)? else {
            return Ok(());
        };
        let owned = self.containers.iter().any(|c| c.host_index == link.index);
        if owned || link.alias.as_deref() != Some(self.marker.as_str()) {
            return Err(DaemonError::HostLinkExists(name.to_string()));
        }
        self.plumbing.delete_link(link.index)?;
        tracing::info!(port = %name, "removed a port left behind by an earlier daemon");
        Ok(())
    }

    /// Reserves the container's address and settles its MAC: an automatic address skips those
    /// whose derived MAC a manual plug has taken.
    fn address(
        &mut self,
        ip: Option<Ipv4Addr>,
        mac: Option<MacAddr>,
        undo: &mut Undo,
    ) -> Result<(Ipv4Addr, MacAddr), DaemonError> {
        let taken: Vec<MacAddr> = (self.containers.iter().map(|c| c.mac))
            .chain([self.gateway_mac])
            .collect();
        let derived_free = |a: Ipv4Addr| mac.is_some() || !taken.contains(&MacAddr::from_ipv4(a));
        let ip = self.ipam.reserve_where(ip, derived_free)?;
        undo.0.push(Made::Address(ip));
        let mac = mac.unwrap_or_else(|| MacAddr::from_ipv4(ip));
        if taken.contains(&mac) {
            return Err(DaemonError::MacInUse(mac));
        }
        Ok((ip, mac))
    }

    /// Opens the port's sockets on the veth's host end, attaches the fast path and gives the
    /// port to the switch and the workers.
    pub(super) fn add_port(
        &mut self,
        p: &NewPort<'_>,
        undo: &mut Undo,
    ) -> Result<Option<Attachment>, DaemonError> {
        let fast = self.fast_path.as_ref().filter(|_| p.id.0 < MAX_PORTS);
        let filter = fast.map(|f| f.filter());
        let queues = (self
            .plumbing
            .open_queues(p.index, self.datapath.queues(), filter))
        .map_err(|e| DaemonError::io(format!("opening packet sockets on {}", p.host_ifname), e))?;
        self.install_port(p, queues, undo)
    }

    /// Attaches the fast path to a port whose sockets are open (by `add_port`, or by a process
    /// that handed them over) and gives the port to the switch and the workers.
    pub(super) fn install_port(
        &mut self,
        p: &NewPort<'_>,
        queues: Vec<Box<dyn crate::ports::PortIo>>,
        undo: &mut Undo,
    ) -> Result<Option<Attachment>, DaemonError> {
        let NewPort {
            id,
            host_ifname,
            index,
            ip,
            mac,
            new,
            policy,
        } = *p;
        let fast = self.fast_path.as_ref().filter(|_| id.0 < MAX_PORTS);
        self.budget.reserve(port_fds(queues.len()));
        undo.0.push(Made::Reserved(port_fds(queues.len())));
        // Without its program on the port, the port's stations stay out of the fast path's map,
        // so the sockets' filter lets all its frames through: the daemon switches them.
        let fast_link = fast.and_then(|f| {
            f.attach(id, index, new)
                .map_err(|e| {
                    tracing::warn!(port = %host_ifname, "no kernel fast path on this port: {e}")
                })
                .ok()
        });
        let port = Arc::new(Port {
            id,
            name: host_ifname.to_string(),
            queues,
            by_flow: false,
            counters: Counters::default(),
            mirror: Default::default(),
        });
        let station = PortInfo { mac, ip: Some(ip) };
        (self.datapath.switch()).add_port_with_policy(id, station, policy.clone());
        undo.0.push(Made::SwitchPort(id));
        (self.datapath.add_port(port))
            .map_err(|e| DaemonError::io("adding the port to a worker", e))?;
        undo.0.push(Made::DatapathPort(id));
        Ok(fast_link)
    }

    /// The plug can no longer fail: record the container, serve its published ports,
    /// announce it, write its resolv.conf (unless the runtime writes its own).
    fn commit(
        &mut self,
        mut container: Container,
        listeners: Vec<(natd::Listener, u16)>,
        write_resolv: bool,
    ) -> PortView {
        self.serve_published(&container, listeners);
        // Announce the newcomer so that peers (and the host) update stale neighbour entries.
        let mut garp = [0u8; VNET_HDR_LEN + 64];
        let switch = self.datapath.switch();
        if let Some(len) = switch.gratuitous_arp(container.port, &mut garp[VNET_HDR_LEN..]) {
            self.datapath
                .flood(container.port, &garp[..VNET_HDR_LEN + len]);
        }
        tracing::info!(
            port = %container.host_ifname,
            pid = container.target.pid(),
            netns = container.target.netns(),
            container_id = container.container_id(),
            ifname = %container.ifname,
            ip = %container.ip,
            mac = %container.mac,
            fast_path = %container.fast_link.as_ref().map_or("off", |l| l.hook().name()),
            "plugged"
        );
        let resolv = match write_resolv {
            true => {
                let content = resolv::container_conf(self.ipam.gateway(), &self.host_resolv);
                let (resolv, netns_conf) = self.plumbing.write_resolv(&container.target, &content);
                container.netns_conf = netns_conf;
                resolv
            }
            false => "resolv.conf not written: left to the container runtime".to_string(),
        };
        self.containers.push(container);
        self.sync_fast_path();
        self.save_state();
        let mut view = self.view(self.containers.last().expect("just pushed"));
        view.resolv = Some(resolv);
        view
    }

    /// Binds the host side of published ports.
    pub(super) fn bind_all(
        &self,
        publish: &[PublishSpec],
    ) -> Result<Vec<(natd::Listener, u16)>, DaemonError> {
        (publish.iter())
            .map(|spec| bind_published(spec).map(|l| (l, spec.container_port)))
            .collect()
    }

    /// Hands a container's bound published ports to the NAT service.
    pub(super) fn serve_published(
        &self,
        container: &Container,
        listeners: Vec<(natd::Listener, u16)>,
    ) {
        if !listeners.is_empty() {
            self.nat_jobs.send(NatJob::Publish {
                container: container.ip,
                mac: container.mac.0,
                ports: listeners,
            });
        }
    }

    fn free_port_id(&self) -> Option<PortId> {
        (1..=u16::MAX)
            .map(PortId)
            .find(|id| self.containers.iter().all(|c| c.port != *id))
    }

    pub fn unplug(&mut self, target: &Target) -> Result<PortView, DaemonError> {
        let pos = self.find(target).ok_or(DaemonError::NotPlugged)?;
        Ok(self.remove_plugged(pos))
    }

    /// The container plugged as `target`. By the name it was plugged with, else by namespace:
    /// another process of the same container, or another path to the same namespace file,
    /// names the same port.
    pub fn find(&self, target: &Target) -> Option<usize> {
        (self.containers.iter().position(|c| &c.target == target)).or_else(|| {
            let ns = self.plumbing.open_netns(target).ok()?;
            let id = self.plumbing.netns_id(ns.as_fd()).ok()?;
            self.containers.iter().position(|c| c.netns_id == id)
        })
    }

    /// Deletes container `pos`'s veth (gone already if its namespace went) and forgets it.
    pub fn remove_plugged(&mut self, pos: usize) -> PortView {
        let start = std::time::Instant::now();
        let view = self.view(&self.containers[pos]);
        let c = self.containers.remove(pos);
        if let Err(e) = self.plumbing.delete_link(c.host_index) {
            if e.errno() != Some(libc::ENODEV) {
                tracing::warn!(port = %c.host_ifname, "deleting the port's link: {e}");
            }
        }
        self.forget(&c);
        self.save_state();
        tracing::info!(
            port = %c.host_ifname,
            pid = c.target.pid(),
            netns = c.target.netns(),
            container_id = c.container_id(),
            ip = %c.ip,
            "unplugged"
        );
        self.tally.plugs.unplug(start.elapsed());
        view
    }

    /// Takes a container's port out of the datapath and frees its address, its published
    /// ports and its NAT flows.
    pub fn forget(&mut self, c: &Container) {
        if let Some(port) = self.datapath.remove_port(c.port) {
            self.budget.unreserve(port_fds(port.queues.len()));
        }
        self.datapath.switch().remove_port(c.port);
        self.sync_fast_path();
        self.ipam.release(c.ip);
        if !c.publish.is_empty() {
            self.nat_jobs.send(NatJob::Unpublish { container: c.ip });
        }
        let flows = self.nat.forget_container(c.ip);
        if !flows.is_empty() {
            self.nat_jobs.send(NatJob::Forget(flows));
        }
        // Its relayed connections end now: the far ends see a reset, not a hang.
        self.datapath.relays().reset_owner(c.ip);
        if let Some(conf) = &c.netns_conf {
            resolv::remove_netns_conf(&conf.file, conf.created_dir);
        }
    }
}

/// Descriptors a port holds: its queues' sockets and the fast path's link.
fn port_fds(queues: usize) -> usize {
    queues + 1
}

/// Binds a published port's host side; a port in use is a clear error.
fn bind_published(spec: &PublishSpec) -> Result<natd::Listener, DaemonError> {
    natd::bind_published(spec).map_err(|err| match err.kind() {
        io::ErrorKind::AddrInUse => DaemonError::HostPortInUse {
            port: spec.host_port,
            proto: spec.proto(),
        },
        _ => DaemonError::Publish {
            port: spec.host_port,
            proto: spec.proto(),
            err,
        },
    })
}

#[cfg(test)]
mod tests;
