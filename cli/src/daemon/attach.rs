//! A container runtime's attachments (the CNI plugin's plugs): known by (container id,
//! interface name), whatever became of the namespace they were plugged by; removed by that key,
//! and collected per network when the runtime says which ones are still valid.

use crate::control::{Attachment, NetworkName, PortView, Selector};

use super::error::DaemonError;
use super::manager::{Container, Manager};
use super::plumbing::NetnsId;

impl Manager {
    fn attachment_pos(&self, a: &Attachment) -> Option<usize> {
        (self.containers.iter()).position(|c| c.attachment.as_ref() == Some(a))
    }

    /// Makes way for a plug of attachment `a` into namespace `netns`. The same attachment in the
    /// same namespace was refused already (the namespace is plugged); the same attachment in
    /// another namespace is the runtime's word that the old namespace is abandoned (a runtime
    /// adds a key again only after the container's namespace was replaced), so its port goes,
    /// even while the kernel is still destroying the old namespace (which it does
    /// asynchronously, veths last).
    pub fn claim_attachment(&mut self, a: &Attachment, netns: NetnsId) {
        let Some(i) = self.attachment_pos(a) else {
            return;
        };
        debug_assert_ne!(self.containers[i].netns_id, netns);
        let old = self.remove_plugged(i);
        tracing::info!(
            port = %old.host_ifname,
            container_id = %a.container_id,
            ifname = %a.ifname,
            ip = %old.ip,
            "attachment moved to another namespace: removed its old port"
        );
    }

    /// Removes an attachment's port. It never opens the namespace: a runtime's DEL often comes
    /// after the namespace is gone.
    pub fn unplug_attachment(&mut self, a: &Attachment) -> Result<PortView, DaemonError> {
        let pos = self.attachment_pos(a).ok_or(DaemonError::NotPlugged)?;
        Ok(self.remove_plugged(pos))
    }

    /// A plugged container's port, if its veth is still there; one whose veth went is removed
    /// now, as the next lifecycle tick would.
    pub fn inspect(&mut self, by: &Selector) -> Result<PortView, DaemonError> {
        let pos = match by {
            Selector::Target(target) => self.find(target),
            Selector::Attachment(a) => self.attachment_pos(a),
        };
        let pos = pos.ok_or(DaemonError::NotPlugged)?;
        if !self.is_alive(pos) {
            self.remove_gone(pos);
            return Err(DaemonError::NotPlugged);
        }
        Ok(self.view(&self.containers[pos]))
    }

    /// Removes the attachments of `network` that are not `valid`; returns their ports.
    pub fn gc(&mut self, network: &NetworkName, valid: &[Attachment]) -> Vec<PortView> {
        let stale = |c: &Container| {
            c.network.as_ref() == Some(network)
                && (c.attachment.as_ref()).is_some_and(|a| !valid.contains(a))
        };
        let mut removed = Vec::new();
        let mut i = 0;
        while i < self.containers.len() {
            match stale(&self.containers[i]) {
                true => removed.push(self.remove_plugged(i)),
                false => i += 1,
            }
        }
        removed
    }
}
