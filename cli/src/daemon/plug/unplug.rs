//! Unplugging: finding a plugged container, deleting its veth and forgetting it (its port,
//! address, published ports, NAT flows and relayed connections).

use std::os::fd::AsFd;

use crate::control::{PortView, Target};
use crate::natd::{resolv, NatJob};

use super::port::port_fds;
use super::{Container, DaemonError, Manager};

impl Manager {
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
        self.forget_flows(flows);
        // Its relayed connections end now: the far ends see a reset, not a hang.
        self.datapath.relays().reset_owner(c.ip);
        if let Some(conf) = &c.netns_conf {
            resolv::remove_netns_conf(&conf.file, conf.created_dir);
        }
    }
}
