//! Taking over the network a previous daemon left: its ports from the state file, each checked
//! against the kernel before it is trusted, and the links it left that no state explains.

use std::os::fd::AsFd;

use vswitch_switch::{MacAddr, PortId, PortPolicy};

use crate::bpf::fastpath::Attachment as FastLink;
use crate::control::{Attachment, IfName, NetworkName, PublishSpec, SecurityOpts, Target};

use super::error::DaemonError;
use super::manager::{Container, Manager};
use super::plug::NewPort;
use super::plumbing::NetnsConf;
use super::state::{self, PortRecord, SecurityRecord, State, FORMAT};

impl Manager {
    /// The state to write: the switch's configuration and every port.
    pub fn state(&self) -> State {
        State {
            format: FORMAT,
            subnet: self.ipam.net().to_string(),
            gateway: self.ipam.gateway(),
            tap: self.tap_name.clone(),
            mtu: self.mtu,
            ports: self.containers.iter().map(record).collect(),
        }
    }

    /// Writes the state file; a failure is logged (the network itself is fine, only a restart
    /// would not find it).
    pub fn save_state(&self) {
        if let Err(e) = state::save(&self.state_path, &self.state()) {
            tracing::error!(
                file = %self.state_path.display(),
                "writing the state file: {e}; a restarted daemon would not find this network"
            );
        }
    }

    /// Takes over the ports of `state`: each one whose container is still there (same
    /// namespace, same host link) gets its address, MAC and published ports back and needs no
    /// replug; the others, whose container exited meanwhile, are cleaned up.
    pub fn adopt(&mut self, state: State) {
        for r in state.ports {
            let netns = r.netns.as_ref().map(|p| p.display().to_string());
            let id = r.container_id.as_deref();
            match self.adopt_port(&r) {
                Ok(true) => tracing::info!(
                    port = %r.host_ifname,
                    pid = r.pid,
                    netns,
                    container_id = id,
                    ifname = %r.ifname,
                    ip = %r.ip,
                    "took over"
                ),
                Ok(false) => {
                    self.remove_left(&r);
                    tracing::info!(
                        port = %r.host_ifname,
                        pid = r.pid,
                        netns,
                        container_id = id,
                        ip = %r.ip,
                        "container exited while no daemon ran: removed its port"
                    );
                }
                Err(e) => {
                    self.remove_left(&r);
                    tracing::warn!(
                        port = %r.host_ifname,
                        pid = r.pid,
                        netns,
                        container_id = id,
                        "could not take over: {e}; removed its port"
                    );
                }
            }
        }
        self.sync_fast_path();
    }

    /// Adopts one port; `Ok(false)` if its container is gone.
    fn adopt_port(&mut self, r: &PortRecord) -> Result<bool, DaemonError> {
        let Some(rec) = Recorded::read(r)? else {
            return Ok(false);
        };
        let Ok(ns) = self.plumbing.open_netns(&rec.target) else {
            return Ok(false);
        };
        let same_netns = (self.plumbing.netns_id(ns.as_fd())).is_ok_and(|id| id == r.netns_id);
        let link = self.plumbing.link(&r.host_ifname)?;
        if !same_netns || link.is_none_or(|l| l.index != r.host_index) {
            return Ok(false);
        }
        if self.containers.iter().any(|c| c.port == rec.id) {
            return Err(DaemonError::io(
                "its port number",
                std::io::Error::other("taken twice"),
            ));
        }
        let undo = self.reserve_recorded(r.ip)?;
        let (listeners, fast_link) = self.undo_on_error(undo, |m, undo| {
            let listeners = m.bind_all(&rec.publish)?;
            Ok((listeners, m.add_port(&rec.port(r), undo)?))
        })?;
        let container = rec.container(r, fast_link);
        self.serve_published(&container, listeners);
        self.containers.push(container);
        Ok(true)
    }

    /// What a port whose container is gone left: its host link (if it is still the same one)
    /// and the resolv.conf its plug wrote.
    fn remove_left(&mut self, r: &PortRecord) {
        if let Ok(Some(link)) = self.plumbing.link(&r.host_ifname) {
            if link.index == r.host_index {
                let _ = self.plumbing.delete_link(link.index);
            }
        }
        if let Some((file, created_dir)) = &r.netns_conf {
            crate::natd::resolv::remove_netns_conf(file, *created_dir);
        }
    }

    /// Links of this switch (they carry its mark) that no port explains: a plug that crashed
    /// half-way, or a state file that was lost. They are removed; a `vsw-` link without the
    /// mark is someone else's and only reported.
    pub fn clear_unexplained_links(&mut self) {
        let links = match self.plumbing.links() {
            Ok(links) => links,
            Err(e) => return tracing::warn!("listing links: {e}"),
        };
        for link in links {
            let explained = self.containers.iter().any(|c| c.host_index == link.index)
                || link.name == self.tap_name;
            if explained {
                continue;
            }
            if link.alias.as_deref() == Some(self.marker.as_str()) {
                let _ = self.plumbing.delete_link(link.index);
                tracing::info!(
                    link = %link.name,
                    "removed a link of this switch that no port explains"
                );
            } else if link.name.starts_with("vsw-") {
                tracing::warn!(
                    link = %link.name,
                    mark = %self.marker,
                    "a link that looks like a vswitch port but is not this switch's: left alone"
                );
            }
        }
    }
}

/// A port's record read back: everything of the container but its sockets and program.
pub(super) struct Recorded {
    pub id: PortId,
    pub target: Target,
    pub mac: MacAddr,
    pub ifname: IfName,
    pub publish: Vec<PublishSpec>,
    attachment: Option<Attachment>,
    network: Option<NetworkName>,
    netns_conf: Option<NetnsConf>,
    /// Its port security, as it was plugged: a port isolated by `run --isolate` stays isolated.
    pub policy: PortPolicy,
}

impl Recorded {
    /// Reads a record; `None` if it names no container (neither a pid nor a path).
    pub fn read(r: &PortRecord) -> Result<Option<Recorded>, DaemonError> {
        let target = match (&r.pid, &r.netns) {
            (Some(pid), None) => Target::Pid(*pid),
            (None, Some(path)) => Target::Netns(path.clone()),
            _ => return Ok(None),
        };
        let bad = |what: &str| DaemonError::io(what, std::io::Error::other("unreadable"));
        let ifname: IfName = r.ifname.parse().map_err(|_| bad("its interface name"))?;
        let attachment = (r.container_id.as_deref())
            .map(|id| id.parse().map_err(|_| bad("its container id")))
            .transpose()?
            .map(|container_id| Attachment {
                container_id,
                ifname: ifname.clone(),
            });
        if r.port == 0 {
            return Err(bad("its port number"));
        }
        let s = &r.security;
        let security = SecurityOpts::from_wire(
            s.trusted,
            s.isolated,
            &s.allow_mac,
            &s.allow_ip,
            &s.allow_ethertype,
            s.max_macs,
        )
        .map_err(|_| bad("its port security"))?;
        Ok(Some(Recorded {
            id: PortId(r.port),
            target,
            mac: r.mac.parse().map_err(|_| bad("its MAC"))?,
            ifname,
            publish: (r.publish.iter())
                .map(|p| p.parse())
                .collect::<Result<_, _>>()
                .map_err(|_| bad("its published ports"))?,
            attachment,
            network: (r.network.as_deref())
                .map(|n| n.parse().map_err(|_| bad("its network")))
                .transpose()?,
            netns_conf: (r.netns_conf.clone())
                .map(|(file, created_dir)| NetnsConf { file, created_dir }),
            policy: security.policy(false),
        }))
    }

    /// The port to install for the record: the same number, link, address and MAC, not new.
    pub fn port<'a>(&'a self, r: &'a PortRecord) -> NewPort<'a> {
        NewPort {
            id: self.id,
            host_ifname: &r.host_ifname,
            index: r.host_index,
            ip: r.ip,
            mac: self.mac,
            new: false,
            policy: &self.policy,
        }
    }

    /// The container of the record, with its port's fast-path program.
    pub fn container(self, r: &PortRecord, fast_link: Option<FastLink>) -> Container {
        Container {
            port: self.id,
            target: self.target,
            netns_id: r.netns_id,
            host_ifname: r.host_ifname.clone(),
            host_index: r.host_index,
            ifname: self.ifname,
            ip: r.ip,
            mac: self.mac,
            publish: self.publish,
            netns_conf: self.netns_conf,
            fast_link,
            attachment: self.attachment,
            network: self.network,
            policy: self.policy,
        }
    }
}

pub(super) fn record(c: &Container) -> PortRecord {
    let (pid, netns) = match &c.target {
        Target::Pid(pid) => (Some(*pid), None),
        Target::Netns(path) => (None, Some(path.clone())),
    };
    PortRecord {
        port: c.port.0,
        pid,
        netns,
        netns_id: c.netns_id,
        host_ifname: c.host_ifname.clone(),
        host_index: c.host_index,
        ifname: c.ifname.to_string(),
        ip: c.ip,
        mac: c.mac.to_string(),
        publish: c.publish.iter().map(|p| p.to_string()).collect(),
        netns_conf: (c.netns_conf.as_ref()).map(|n| (n.file.clone(), n.created_dir)),
        container_id: (c.attachment.as_ref()).map(|a| a.container_id.to_string()),
        network: c.network.as_ref().map(|n| n.to_string()),
        security: {
            let opts = SecurityOpts::of(&c.policy);
            let (allow_mac, allow_ip, allow_ethertype) = opts.to_wire();
            SecurityRecord {
                trusted: opts.trusted,
                isolated: opts.isolated,
                allow_mac,
                allow_ip,
                allow_ethertype,
                max_macs: opts.max_macs,
            }
        },
    }
}
