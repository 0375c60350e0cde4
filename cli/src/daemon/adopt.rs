//! Taking over the network a previous daemon left: its ports from the state file, each checked
//! against the kernel before it is trusted, and the links it left that no state explains.

use std::os::fd::AsFd;

use vswitch_switch::{MacAddr, PortId};

use crate::control::{IfName, PublishSpec, SecurityOpts, Target};

use super::error::DaemonError;
use super::manager::{Container, Manager};
use super::plug::{NewPort, Undo};
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
            eprintln!(
                "vswitch: writing the state file {}: {e}; a restarted daemon would not find \
                 this network",
                self.state_path.display()
            );
        }
    }

    /// Takes over the ports of `state`: each one whose container is still there (same
    /// namespace, same host link) gets its address, MAC and published ports back and needs no
    /// replug; the others, whose container exited meanwhile, are cleaned up.
    pub fn adopt(&mut self, state: State) {
        for r in state.ports {
            let what = match (&r.pid, &r.netns) {
                (Some(pid), _) => format!("pid {pid}"),
                (None, Some(path)) => format!("netns {}", path.display()),
                _ => format!("port {}", r.port),
            };
            match self.adopt_port(&r) {
                Ok(true) => eprintln!(
                    "vswitch: took over {what}: {} {} (host port {})",
                    r.ifname, r.ip, r.host_ifname
                ),
                Ok(false) => {
                    self.remove_left(&r);
                    eprintln!(
                        "vswitch: {what} exited while no daemon ran: removed port {} and \
                         released {}",
                        r.host_ifname, r.ip
                    );
                }
                Err(e) => {
                    self.remove_left(&r);
                    eprintln!("vswitch: could not take over {what}: {e}; removed its port");
                }
            }
        }
        self.sync_fast_path();
    }

    /// Adopts one port; `Ok(false)` if its container is gone.
    fn adopt_port(&mut self, r: &PortRecord) -> Result<bool, DaemonError> {
        let target = match (&r.pid, &r.netns) {
            (Some(pid), None) => Target::Pid(*pid),
            (None, Some(path)) => Target::Netns(path.clone()),
            _ => return Ok(false),
        };
        let Ok(ns) = self.plumbing.open_netns(&target) else {
            return Ok(false);
        };
        let same_netns = (self.plumbing.netns_id(ns.as_fd())).is_ok_and(|id| id == r.netns_id);
        let link = self.plumbing.link(&r.host_ifname)?;
        if !same_netns || link.is_none_or(|l| l.index != r.host_index) {
            return Ok(false);
        }
        let bad = |what: &str| DaemonError::io(what, std::io::Error::other("unreadable"));
        let mac: MacAddr = r.mac.parse().map_err(|_| bad("its MAC"))?;
        let ifname: IfName = r.ifname.parse().map_err(|_| bad("its interface name"))?;
        let publish: Vec<PublishSpec> = (r.publish.iter())
            .map(|p| p.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("its published ports"))?;
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
        // As it was plugged: a port isolated by `run --isolate` stays isolated.
        let policy = security.policy(false);
        let id = PortId(r.port);
        if id.0 == 0 || self.containers.iter().any(|c| c.port == id) {
            return Err(bad("its port number"));
        }
        self.ipam.reserve_where(Some(r.ip), |_| true)?;
        let mut undo = Undo::default();
        undo.address(r.ip);
        let listeners = match self.bind_all(&publish) {
            Ok(listeners) => listeners,
            Err(e) => {
                self.roll_back(undo);
                return Err(e);
            }
        };
        let port = NewPort {
            id,
            host_ifname: &r.host_ifname,
            index: r.host_index,
            ip: r.ip,
            mac,
            new: false,
            policy: &policy,
        };
        let fast_link = match self.add_port(&port, &mut undo) {
            Ok(link) => link,
            Err(e) => {
                self.roll_back(undo);
                return Err(e);
            }
        };
        let container = Container {
            port: id,
            target,
            netns_id: r.netns_id,
            host_ifname: r.host_ifname.clone(),
            host_index: r.host_index,
            ifname,
            ip: r.ip,
            mac,
            publish,
            netns_conf: (r.netns_conf.clone())
                .map(|(file, created_dir)| NetnsConf { file, created_dir }),
            fast_link,
            policy,
        };
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
            Err(e) => return eprintln!("vswitch: listing links: {e}"),
        };
        for link in links {
            let explained = self.containers.iter().any(|c| c.host_index == link.index)
                || link.name == self.tap_name;
            if explained {
                continue;
            }
            if link.alias.as_deref() == Some(self.marker.as_str()) {
                let _ = self.plumbing.delete_link(link.index);
                eprintln!(
                    "vswitch: removed {}, a link of this switch that no port explains",
                    link.name
                );
            } else if link.name.starts_with("vsw-") {
                eprintln!(
                    "vswitch: {} looks like a vswitch port but is not this switch's (no mark \
                     \"{}\"): left alone",
                    link.name, self.marker
                );
            }
        }
    }
}

fn record(c: &Container) -> PortRecord {
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
