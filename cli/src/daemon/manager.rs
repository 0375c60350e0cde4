//! The manager thread: the only owner of the control-plane state (address book, plugged
//! containers). Control connections and the lifecycle timer reach it through crossbeam
//! channels, so plugs and unplugs happen one at a time and never race each other.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick, Receiver};
use vswitch_nat::Nat;
use vswitch_switch::{MacAddr, PortId, PortPolicy};

use crate::bpf::fastpath::{Attachment, FastPath};
use crate::bpf::pins;
use crate::control::{
    self, Call, IfName, NetworkName, PublishSpec, Reply, Request, Selector, Target,
};
use crate::datapath::{Datapath, TAP_PORT};
use crate::natd::budget::FdBudget;
use crate::natd::{NatMailbox, Offloads};

use super::capture::Capturing;
use super::counters::Tally;
use super::handover::Handoff;
use super::ipam::Ipam;
use super::plumbing::{NetnsConf, NetnsId, Plumbing};
use super::state;
use super::systemd::Watchdog;

/// How often the manager looks for containers that went away.
const LIFECYCLE_TICK: Duration = Duration::from_millis(250);

/// A plugged container.
pub struct Container {
    pub port: PortId,
    pub target: Target,
    pub netns_id: NetnsId,
    pub host_ifname: String,
    pub host_index: u32,
    pub ifname: IfName,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub publish: Vec<PublishSpec>,
    /// The `/etc/netns/NAME/resolv.conf` plug wrote, removed on unplug.
    pub netns_conf: Option<NetnsConf>,
    /// The fast path's program on the host end's ingress (detached when dropped).
    pub fast_link: Option<Attachment>,
    /// A runtime's plug (CNI): the key it removes the port by, and its network.
    pub attachment: Option<control::Attachment>,
    pub network: Option<NetworkName>,
    /// What its port may send and reach (port security).
    pub policy: PortPolicy,
}

impl Container {
    /// The runtime's container id, for an attachment (a log line's `container_id` field).
    pub fn container_id(&self) -> Option<&str> {
        self.attachment.as_ref().map(|a| a.container_id.as_str())
    }
}

pub struct Manager {
    pub ipam: Ipam,
    pub mtu: u32,
    pub tap_name: String,
    pub gateway_mac: MacAddr,
    /// Namespaces a container must not be: the daemon's own, and the host's initial one.
    pub own_netns: NetnsId,
    pub initial_netns: Option<NetnsId>,
    pub plumbing: Box<dyn Plumbing>,
    pub datapath: Datapath,
    pub containers: Vec<Container>,
    pub nat: Arc<Nat>,
    pub nat_jobs: NatMailbox,
    /// The host's resolv.conf, for the containers' search domains.
    pub host_resolv: String,
    /// When the FDB and the flow table were last swept.
    pub last_expiry: u64,
    pub fast_path: Option<FastPath>,
    /// Established relayed TCP connections the kernel carries (with the fast path).
    pub offloads: Option<Arc<Offloads>>,
    /// When the kernel's traffic of those was last reported to the NAT.
    pub last_report: u64,
    /// The descriptors traffic may spend; each port's sockets are kept out of it.
    pub budget: Arc<FdBudget>,
    /// The alias of every link this daemon makes (see `plumbing::marker`).
    pub marker: String,
    /// Where the state is kept for the next daemon (see `state`).
    pub state_path: PathBuf,
    /// Where the fast path's maps and links are pinned (see `bpf::pins`).
    pub pins_dir: PathBuf,
    /// The TAP's ifindex, to delete it when the network goes.
    pub tap_index: u32,
    /// systemd's watchdog, pinged from the tick.
    pub watchdog: Option<Watchdog>,
    /// Captures running (`vswitch capture`, see `capture`).
    pub captures: Vec<Capturing>,
    /// What the manager counts beyond the datapath's counters (see `counters`).
    pub tally: Tally,
    /// Every container plugged is isolated (`run --isolate`).
    pub isolate: bool,
}

/// How the daemon stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Remove everything it made (SIGTERM, SIGINT, `vswitch stop`).
    Remove,
    /// Leave the network as it is, for the next daemon to take over (SIGUSR2,
    /// `vswitch stop --keep`): the veths, the TAP, the state file.
    Keep,
}

impl Manager {
    pub fn run(mut self, calls: Receiver<Call>, stop: Receiver<Stop>, handoff: Handoff) {
        let ticker = tick(LIFECYCLE_TICK);
        let how = loop {
            select! {
                recv(calls) -> call => {
                    let Ok(call) = call else { break Stop::Remove };
                    let answer = match (call.request, call.conn, call.capture) {
                        // Returns only if this daemon goes on serving.
                        (Request::Handover(args), Some(conn), _) => {
                            self.hand_over(&handoff, args, conn)
                        }
                        (Request::Capture(c), _, Some(session)) => self.start_capture(&c, session),
                        (request, _, _) => self.handle(request),
                    };
                    let _ = call.reply.send(answer);
                }
                recv(ticker) -> _ => self.tick(),
                recv(stop) -> how => break how.unwrap_or(Stop::Remove),
            }
        };
        self.shutdown(how);
    }

    fn handle(&mut self, request: Request) -> Result<Reply, crate::control::Failure> {
        Ok(match request {
            Request::Plug(plug) => {
                let what = format!("plug {}", plug.target);
                let start = Instant::now();
                let view = self.plug(plug);
                self.tally.plugs.plug(view.is_ok(), start.elapsed());
                Reply::Port(Box::new(view.map_err(|e| e.failure(&what))?))
            }
            Request::Unplug(unplug) => {
                let what = format!("unplug {}", unplug.by);
                let view = match &unplug.by {
                    Selector::Target(target) => self.unplug(target),
                    Selector::Attachment(a) => self.unplug_attachment(a),
                };
                Reply::Port(Box::new(view.map_err(|e| e.failure(&what))?))
            }
            Request::Inspect(inspect) => {
                let what = format!("inspect {}", inspect.by);
                let view = self.inspect(&inspect.by).map_err(|e| e.failure(&what))?;
                Reply::Port(Box::new(view))
            }
            Request::Gc(gc) => Reply::Ports(self.gc(&gc.network, &gc.valid)),
            Request::Ls(_) => Reply::Ports(self.ls()),
            Request::Fdb(_) => Reply::Fdb(self.fdb()),
            Request::Conntrack(_) => Reply::Flows(self.conntrack()),
            Request::ConntrackDelete(filter) => Reply::Flows(self.conntrack_delete(&filter)),
            Request::FdbFlush(flush) => {
                let what = format!("fdb --flush {}", flush.port.as_deref().unwrap_or(""));
                let flushed = self.fdb_flush(flush.port.as_deref());
                Reply::Fdb(flushed.map_err(|e| e.failure(what.trim_end()))?)
            }
            Request::Stats(_) => Reply::Stats(Box::new(self.stats())),
            Request::Handover(_) => {
                return Err(crate::control::Failure::new(
                    crate::control::ErrorCode::Invalid,
                    "handover: not over the control socket",
                ))
            }
            Request::Capture(_) => {
                return Err(control::Failure::new(
                    control::ErrorCode::Invalid,
                    "a capture is served on a connection of its own",
                ))
            }
            // The control thread stops the daemon once this reply is written (`control::server`).
            Request::Stop(_) => Reply::Stats(Box::new(self.stats())),
        })
    }

    /// Deletes every veth the daemon made, the TAP and the state file; or, to keep the
    /// network, only stops serving it.
    fn shutdown(mut self, how: Stop) {
        // Captures end with the daemon; their ports' stations go back to the fast path first.
        self.reap_captures(true);
        self.sync_fast_path();
        if how == Stop::Remove {
            for c in std::mem::take(&mut self.containers) {
                let _ = self.plumbing.delete_link(c.host_index);
                self.forget(&c);
            }
            // The TAP is persistent (it outlives a crash): it goes only when asked to; so do the
            // fast path's pins.
            let _ = self.plumbing.delete_link(self.tap_index);
            state::remove(&self.state_path);
            pins::remove(&self.pins_dir);
        } else {
            // The fast path's programs stay on the ports, forwarding between containers until
            // the next daemon takes over.
            for c in &mut self.containers {
                if let Some(link) = c.fast_link.take() {
                    link.keep();
                }
            }
            if let Some(fast) = &mut self.fast_path {
                fast.keep_tap();
            }
            self.save_state();
        }
        // Whatever is still relayed ends with a reset on both sides, rather than as orphaned
        // sockets that keep trying to deliver queued bytes after the process is gone.
        self.datapath.relays().reset_all();
        self.datapath.remove_port(TAP_PORT);
        self.datapath.stop();
    }
}
