//! Plugging and unplugging a container: the veth, both ends' configuration, the port in the
//! switch and the datapath, the published ports, the resolv.conf.
//!
//! A plug that fails half-way leaves nothing behind: every step that made something records
//! how to undo it, and a failed plug undoes them in reverse order.
//!
//! The plug's steps are here; beside them: the port given to the switch and the workers (`port`),
//! the published ports' listeners (`publish`), the record of what a plug made (`undo`) and
//! unplugging (`unplug`).

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};

use vswitch_switch::{ethertype, MacAddr, PortId, VNET_HDR_LEN};

use crate::control::{Plug, PortView, Target};
use crate::natd::{self, resolv};

use super::error::DaemonError;
use super::manager::{Container, Manager};
use super::names::{attachment_ifname, host_ifname};
use super::plumbing::{Addressing, NetnsId};

mod port;
mod publish;
mod undo;
mod unplug;

pub(super) use port::NewPort;

use undo::{Made, Undo};

/// A container's namespace, opened and identified.
struct Namespace {
    fd: OwnedFd,
    id: NetnsId,
}

impl Manager {
    pub fn plug(&mut self, req: Plug) -> Result<PortView, DaemonError> {
        self.undo_on_error(Undo::default(), |m, undo| m.try_plug(req, undo))
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
            queue: self.fast_path.is_none(),
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

    fn free_port_id(&self) -> Option<PortId> {
        (1..=u16::MAX)
            .map(PortId)
            .find(|id| self.containers.iter().all(|c| c.port != *id))
    }
}

#[cfg(test)]
mod tests;
