//! The forwarding decision: one frame in, one [`Action`] out. Validation, learning, ARP
//! answering and forwarding are composed here; the state lives in the port directory and the
//! forwarding table, both shared by `&self` so every worker thread uses the same switch.

use crate::arp;
use crate::fdb::{Fdb, Learned};
use crate::frame::{Arp, Ethernet, ARP_OP_REQUEST, ETHERTYPE_ARP, ETHERTYPE_IPV4};
use crate::policy::{Refusal, Sent, SpoofKind};
use crate::port::{may_talk, ArpTarget, PortId, PortWord, Ports};
use crate::stats::Counters;
use crate::Millis;

mod ports;
mod table;

/// Switch tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Most MACs the forwarding table holds (default 8192).
    pub fdb_capacity: usize,
    /// A MAC not seen for longer than this is forgotten (default 300 s, like Linux bridges).
    pub fdb_age_ms: u64,
    /// Most MACs the table learns on a trusted port besides its station's own, unless its
    /// policy says otherwise (default 256). A checked port learns only the MACs it may send.
    pub max_macs_per_port: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            fdb_capacity: 8192,
            fdb_age_ms: 300_000,
            max_macs_per_port: 256,
        }
    }
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the frame unchanged out of this one port.
    Forward(PortId),
    /// Send the frame unchanged out of every port except the ingress one.
    Flood,
    /// The switch answered itself: the reply frame is in `reply_buf[..len]`; send it back out
    /// of the ingress port.
    Reply {
        len: usize,
    },
    Drop(DropReason),
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than an Ethernet header, multicast or zero source MAC, or truncated ARP.
    Malformed,
    /// A frame the switch itself transmitted, delivered back by AF_PACKET.
    Outgoing,
    /// The destination was learned on the ingress port.
    Hairpin,
    /// The ingress port is not registered.
    UnknownPort,
    /// An ARP request for the ingress port's own address (e.g. duplicate address detection):
    /// no answer.
    ArpForSelf,
    /// The ingress port may not send it (port security: see [`PortPolicy`](crate::PortPolicy)).
    Spoofed(SpoofKind),
    /// It would cross between two containers, one of them isolated.
    Isolated,
}

/// The switch: port directory, forwarding table and counters. `Send + Sync`; share one.
#[derive(Debug)]
pub struct Switch {
    ports: Ports,
    fdb: Fdb,
    counters: Counters,
    max_macs_per_port: u32,
}

impl Switch {
    pub fn new(cfg: Config) -> Switch {
        Switch {
            ports: Ports::new(),
            fdb: Fdb::new(cfg.fdb_capacity, cfg.fdb_age_ms),
            counters: Counters::default(),
            max_macs_per_port: cfg.max_macs_per_port,
        }
    }

    /// Whether a frame from `ingress` that the switch floods may go out of `egress`: not back
    /// out of `ingress`, and not between two containers when either is isolated. The caller of
    /// [`Switch::process`] asks this for every port when it gets [`Action::Flood`].
    #[inline]
    pub fn floods_to(&self, ingress: PortId, egress: PortId) -> bool {
        if ingress == egress {
            return false;
        }
        if !self.ports.isolation_active() {
            return true;
        }
        let (a, b) = (self.ports.word(ingress), self.ports.word(egress));
        a.is_live() && b.is_live() && may_talk(a, b)
    }

    /// The hot path. `outgoing` = the frame was sent by this host (AF_PACKET `sll_pkttype ==
    /// PACKET_OUTGOING`): it is dropped and never learned from.
    ///
    /// Validate, check what the ingress port may send (port security: a spoofed frame is
    /// dropped before anything learns from it), learn the source (on the ingress port), answer
    /// ARP requests for a station on another port (written into `reply_buf`), then forward by
    /// destination: group address or unknown -> `Flood` (to the ports [`Switch::floods_to`]
    /// allows), learned on another port -> `Forward`, on the ingress port -> `Drop`; frames
    /// between an isolated container and another container are dropped. An ARP request for an
    /// unknown address is forwarded like any frame (flooded). If `reply_buf` is shorter than
    /// 60 bytes the request is forwarded instead of answered.
    //
    // One function of ~100 lines on purpose: it is the hot path, and the frame's fields and the
    // ingress port's word stay in registers from the parse to the decision. Its rare branches
    // are `#[cold]` helpers below; moving the common steps out through a returned struct cost
    // 99 more instructions a frame (BENCHMARKS.md, "Port security").
    pub fn process(
        &self,
        ingress: PortId,
        frame: &[u8],
        outgoing: bool,
        now: Millis,
        reply_buf: &mut [u8],
    ) -> Action {
        let c = self.counters.mine();
        c.frames.inc();
        if outgoing {
            c.outgoing.inc();
            return Action::Drop(DropReason::Outgoing);
        }
        let port = self.ports.port(ingress);
        let word = port.word;
        if !word.is_live() {
            return Action::Drop(DropReason::UnknownPort);
        }
        let Some(eth) = Ethernet::parse(frame) else {
            return self.malformed();
        };
        if eth.src.is_multicast() || eth.src.is_zero() {
            return self.malformed();
        }
        let arp = if eth.ethertype == ETHERTYPE_ARP {
            match Arp::parse(eth.payload) {
                Ok(arp) => arp,
                Err(_) => return self.malformed(),
            }
        } else {
            None
        };
        // Port security, before anything learns from the frame.
        if word.checked() {
            let sent = Sent {
                src: eth.src,
                ethertype: eth.ethertype,
                payload: eth.payload,
                arp: arp.as_ref(),
            };
            if let Err(refusal) = self.ports.check(ingress, port, sent, frame) {
                return self.refused(ingress, refusal);
            }
        }
        let arp_request = arp.filter(|a| a.op == ARP_OP_REQUEST);

        let unicast_dst = (!eth.dst.is_multicast()).then_some(eth.dst);
        let (learned, dst_port) =
            self.fdb
                .learn_and_lookup(eth.src, ingress, unicast_dst, now, &self.ports);
        match learned {
            Learned::Known | Learned::PortGone => {}
            Learned::New => c.learned.inc(),
            Learned::NewEvicting => {
                c.learned.inc();
                c.evicted.inc();
            }
            Learned::Moved => c.moved.inc(),
            Learned::Full => c.fdb_full.inc(),
            Learned::Refused => self.learn_refused(ingress),
        }

        if let Some(req) = arp_request {
            match self.ports.arp_target(ingress, req.tpa) {
                ArpTarget::IngressItself => return Action::Drop(DropReason::ArpForSelf),
                ArpTarget::Station(_, port) if !self.may_reach(word, port) => {
                    return self.isolated(ingress);
                }
                ArpTarget::Station(mac, _) => {
                    if let Some(len) = arp::write_reply(reply_buf, (mac, req.tpa), eth.src, &req) {
                        c.arp_replies.inc();
                        return Action::Reply { len };
                    }
                }
                ArpTarget::Unknown => {}
            }
        }

        // A station not learned yet (silent since it was plugged, or aged) is still known by
        // its port: its frames go there, not to every port.
        let dst_port = dst_port.or_else(|| self.ports.station_port(unicast_dst?));

        // Isolation by address too: a container that sends another container's address to the
        // gateway's MAC (or floods it) must not reach it through a host that forwards. (To a
        // container's MAC, `may_reach` below decides.)
        if eth.ethertype == ETHERTYPE_IPV4
            && self.ports.isolation_active()
            && dst_port.is_none_or(|p| self.ports.word(p).uplink())
            && self.crosses_isolation(ingress, word, eth.payload)
        {
            return self.isolated(ingress);
        }
        match dst_port {
            Some(port) if port == ingress => {
                c.hairpin.inc();
                Action::Drop(DropReason::Hairpin)
            }
            Some(port) if !self.may_reach(word, port) => self.isolated(ingress),
            Some(port) => Action::Forward(port),
            None => {
                c.flooded.inc();
                Action::Flood
            }
        }
    }

    /// Port security alone: whether `frame` from `ingress` passes the checks of
    /// [`Switch::process`] (a spoofed frame is dropped and counted here). For an edge that
    /// hands frames to someone else before the switch (the NAT), so that no path skips the
    /// checks; `process` checks again, which costs a few nanoseconds and keeps it whole.
    pub fn admit(&self, ingress: PortId, frame: &[u8]) -> Result<(), DropReason> {
        // As `process` does it (not shared: its hot path keeps the frame in registers).
        let port = self.ports.port(ingress);
        if !port.word.is_live() {
            return Err(DropReason::UnknownPort);
        }
        let eth = match Ethernet::parse(frame) {
            Some(eth) if !(eth.src.is_multicast() || eth.src.is_zero()) => eth,
            _ => return Err(self.malformed_reason()),
        };
        let arp = match eth.ethertype {
            ETHERTYPE_ARP => Arp::parse(eth.payload).map_err(|_| self.malformed_reason())?,
            _ => None,
        };
        let sent = Sent {
            src: eth.src,
            ethertype: eth.ethertype,
            payload: eth.payload,
            arp: arp.as_ref(),
        };
        if !port.word.checked() {
            return Ok(());
        }
        match self.ports.check(ingress, port, sent, frame) {
            Ok(()) => Ok(()),
            Err(refusal) => match self.refused(ingress, refusal) {
                Action::Drop(reason) => Err(reason),
                _ => unreachable!("a refusal is a drop"),
            },
        }
    }

    #[cold]
    fn malformed_reason(&self) -> DropReason {
        self.counters.mine().malformed.inc();
        DropReason::Malformed
    }

    /// Whether the ingress port (`word`) may send to `egress`.
    #[inline]
    fn may_reach(&self, word: PortWord, egress: PortId) -> bool {
        !self.ports.isolation_active() || may_talk(word, self.ports.word(egress))
    }

    /// Whether an IPv4 packet from `ingress` (whose word is `word`) is addressed to the station
    /// of a port it may not reach, whatever the frame's destination MAC.
    #[cold]
    fn crosses_isolation(&self, ingress: PortId, word: PortWord, packet: &[u8]) -> bool {
        let Some(&[a, b, c, d]) = packet.get(16..20) else {
            return false;
        };
        match self.ports.owner_of(u32::from_be_bytes([a, b, c, d])) {
            Some(owner) if owner != ingress => !may_talk(word, self.ports.word(owner)),
            _ => false,
        }
    }

    #[cold]
    fn refused(&self, ingress: PortId, refusal: Refusal) -> Action {
        match refusal {
            Refusal::Spoofed(kind) => {
                self.counters.mine().spoofed.inc();
                self.ports.count_spoofed(ingress, kind);
                Action::Drop(DropReason::Spoofed(kind))
            }
            Refusal::Truncated => self.malformed(),
        }
    }

    #[cold]
    fn isolated(&self, ingress: PortId) -> Action {
        self.counters.mine().isolated.inc();
        self.ports.count_isolated(ingress);
        Action::Drop(DropReason::Isolated)
    }

    #[cold]
    fn learn_refused(&self, ingress: PortId) {
        self.counters.mine().learn_refused.inc();
        self.ports.count_learn_refused(ingress);
    }

    #[cold]
    fn malformed(&self) -> Action {
        self.counters.mine().malformed.inc();
        Action::Drop(DropReason::Malformed)
    }
}
