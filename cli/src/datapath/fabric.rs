//! What every thread that moves frames shares: the switch, the published port table, and the
//! ways to hand a frame the daemon wrote to a container or to the host.

use std::sync::Arc;

use arc_swap::ArcSwap;
use vswitch_switch::{Action, Millis, PortId, Switch, VNET_HDR_LEN};

use crate::bpf::fanout::SpreadProgram;
use crate::ports::Port;

/// Ports indexed by `PortId`.
pub type PortTable = Vec<Option<Arc<Port>>>;

/// The TAP (the host's own port on the switch) is always port 0.
pub const TAP_PORT: PortId = PortId(0);

/// What every thread that moves frames shares: the switch and the published port table.
#[derive(Clone)]
pub struct Fabric {
    pub switch: Arc<Switch>,
    pub table: Arc<ArcSwap<PortTable>>,
    /// The ports' fanout program, whose mode the workers flip (see `bpf`).
    pub spread: Option<Arc<SpreadProgram>>,
}

impl Fabric {
    pub fn new(switch: Arc<Switch>, spread: Option<Arc<SpreadProgram>>) -> Fabric {
        Fabric {
            switch,
            table: Arc::new(ArcSwap::from_pointee(Vec::new())),
            spread,
        }
    }

    /// Switches one frame (`[virtio_net_hdr][Ethernet]`) that arrived on `ingress`.
    pub fn switch_frame(
        &self,
        table: &PortTable,
        ingress: &Port,
        frame: &[u8],
        outgoing: bool,
        now: Millis,
        reply: &mut [u8],
    ) {
        let eth = &frame[VNET_HDR_LEN..];
        let action =
            self.switch
                .process(ingress.id, eth, outgoing, now, &mut reply[VNET_HDR_LEN..]);
        match action {
            Action::Forward(out) => {
                if let Some(Some(egress)) = table.get(out.0 as usize) {
                    egress.transmit(0, frame);
                }
            }
            Action::Flood => {
                for egress in table.iter().flatten() {
                    if self.switch.floods_to(ingress.id, egress.id) {
                        egress.transmit(0, frame);
                    }
                }
            }
            Action::Reply { len } => {
                reply[..VNET_HDR_LEN].fill(0);
                ingress.transmit(0, &reply[..VNET_HDR_LEN + len]);
            }
            Action::Drop(why) if super::worker::counts_as_drop(why) => ingress.counters.drop_one(),
            Action::Drop(_) => {}
        }
    }

    /// Delivers a frame the daemon wrote for a container (NAT replies) as if the host sent it.
    pub fn to_containers(&self, frame: &[u8]) {
        let table = self.table.load();
        if let Some(Some(tap)) = table.get(TAP_PORT.0 as usize) {
            let mut reply = [0u8; VNET_HDR_LEN + 128];
            self.switch_frame(&table, tap, frame, false, now_ms(), &mut reply);
        }
    }

    /// Hands a frame to the host kernel through the TAP.
    pub fn to_host(&self, frame: &[u8]) {
        if let Some(Some(tap)) = self.table.load().get(TAP_PORT.0 as usize) {
            tap.transmit(0, frame);
        }
    }
}

/// Milliseconds since boot on the monotonic clock: the time base of the FDB and the NAT's
/// timeouts. The same for every process, so that a daemon that takes over from another keeps
/// its tables' times as they were.
pub fn now_ms() -> Millis {
    // SAFETY: all-zero is a valid timespec, which clock_gettime overwrites.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a live timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as Millis * 1000 + ts.tv_nsec as Millis / 1_000_000
}
