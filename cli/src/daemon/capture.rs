//! Captures as the manager sees them: which ports a capture names, attaching it to their
//! mirrors, and the kernel fast path stepping aside for the captured ports.
//!
//! The fast path carries frames between two containers without the daemon; a captured port's
//! frames must all cross the daemon instead, or the capture would miss them. So while a port is
//! captured its stations are left out of the fast path's map (`sync_fast_path`): the socket
//! filter then hands all its frames to the daemon, which switches them, and captures them, in
//! both directions (a frame to the port finds no station either). The manager does this before
//! it answers the request, so the capture's header means "from here on nothing is missed";
//! when the capture ends (the client closes or dies, its count is reached) the next tick
//! detaches it and gives the stations back to the map.

use std::collections::HashSet;
use std::sync::Arc;

use vswitch_capture::Session;
use vswitch_switch::PortId;

use crate::control::{
    Capture, CaptureView, CapturedPort, ErrorCode, Failure, PortRef, Reply, Target,
};
use crate::datapath::TAP_PORT;

use super::manager::Manager;

/// A capture that is running.
pub struct Capturing {
    pub session: Arc<Session>,
    pub ports: Vec<PortId>,
}

impl Manager {
    /// Attaches `session` to the ports `capture` names and takes them out of the fast path.
    pub fn start_capture(
        &mut self,
        capture: &Capture,
        session: Arc<Session>,
    ) -> Result<Reply, Failure> {
        let ports = match &capture.ports {
            None => {
                let mut all = vec![TAP_PORT];
                all.extend(self.containers.iter().map(|c| c.port));
                all
            }
            Some(refs) => {
                let mut ids = Vec::new();
                for r in refs {
                    let id = self.port_of(r).ok_or_else(|| {
                        Failure::new(
                            ErrorCode::NotFound,
                            format!("capture: no port {r} (see `vswitch ls`)"),
                        )
                    })?;
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                ids
            }
        };
        let table = self.datapath.ports();
        let mut views = Vec::new();
        for &id in &ports {
            let Some(Some(port)) = table.get(usize::from(id.0)) else {
                continue;
            };
            port.mirror.attach(session.clone());
            views.push(self.captured_port(id, &port.name));
        }
        self.captures.push(Capturing {
            session: session.clone(),
            ports,
        });
        // Before the answer: once the client has it, no frame of these ports is missed.
        self.sync_fast_path();
        let config = session.config();
        Ok(Reply::Capture(CaptureView {
            ports: views,
            filter: config.filter.to_string(),
            snaplen: config.snaplen as u32,
        }))
    }

    /// The port a capture names, as `ls` shows ports.
    fn port_of(&self, r: &PortRef) -> Option<PortId> {
        let tap = |name: &str| name == self.tap_name;
        let container = |i: usize| self.containers[i].port;
        match r {
            PortRef::Number(0) => Some(TAP_PORT),
            PortRef::Number(n) => (self.containers.iter())
                .find(|c| c.port.0 == *n)
                .map(|c| c.port),
            PortRef::Name(name) if tap(name.as_str()) => Some(TAP_PORT),
            PortRef::Name(name) => (self.containers.iter())
                .find(|c| c.host_ifname == name.as_str())
                .map(|c| c.port),
            PortRef::Pid(pid) => self.find(&Target::Pid(*pid)).map(container),
            PortRef::Netns(path) => self.find(&Target::Netns(path.clone())).map(container),
        }
    }

    fn captured_port(&self, id: PortId, name: &str) -> CapturedPort {
        let c = self.containers.iter().find(|c| c.port == id);
        let description = match c {
            None => format!("host {}", self.ipam.gateway()),
            Some(c) => match &c.attachment {
                Some(a) => format!("{a} {}", c.ip),
                None => format!("{} {}", c.target, c.ip),
            },
        };
        CapturedPort {
            port: id.0,
            name: name.to_string(),
            description,
            fast_path_paused: self.fast_path.is_some() && c.is_some_and(|c| c.fast_link.is_some()),
        }
    }

    /// The ports some running capture is attached to: the fast path leaves them to the daemon.
    pub fn captured_ports(&self) -> HashSet<PortId> {
        (self.captures.iter())
            .filter(|c| !c.session.is_closed())
            .flat_map(|c| c.ports.iter().copied())
            .collect()
    }

    /// Detaches the captures that ended (their stations go back to the fast path at the next
    /// sync); with `all`, ends every capture first (the daemon is stopping).
    pub fn reap_captures(&mut self, all: bool) {
        let table = self.datapath.ports();
        self.captures.retain(|c| {
            if all {
                c.session.close();
            }
            if !c.session.is_closed() {
                return true;
            }
            for id in &c.ports {
                if let Some(Some(port)) = table.get(usize::from(id.0)) {
                    port.mirror.detach(&c.session);
                }
            }
            false
        });
    }
}
