//! The forwarding decision: one frame in, one [`Action`] out. Validation, learning, ARP
//! answering and forwarding are composed here; the state lives in the port directory and the
//! forwarding table, both shared by `&self` so every worker thread uses the same switch.

use crate::arp;
use crate::fdb::{Fdb, FdbEntry, Learned};
use crate::frame::{Arp, Ethernet, ARP_OP_REQUEST, ETHERTYPE_ARP};
use crate::mac::MacAddr;
use crate::port::{ArpTarget, PortId, PortInfo, Ports};
use crate::stats::{Counters, SwitchStats};
use crate::Millis;

/// Switch tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Most MACs the forwarding table holds (default 8192).
    pub fdb_capacity: usize,
    /// A MAC not seen for longer than this is forgotten (default 300 s, like Linux bridges).
    pub fdb_age_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            fdb_capacity: 8192,
            fdb_age_ms: 300_000,
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
}

/// The switch: port directory, forwarding table and counters. `Send + Sync`; share one.
#[derive(Debug)]
pub struct Switch {
    ports: Ports,
    fdb: Fdb,
    counters: Counters,
}

impl Switch {
    pub fn new(cfg: Config) -> Switch {
        Switch {
            ports: Ports::new(),
            fdb: Fdb::new(cfg.fdb_capacity, cfg.fdb_age_ms),
            counters: Counters::default(),
        }
    }

    /// Registers (or replaces) a port and its station, which the switch answers ARP for.
    pub fn add_port(&self, id: PortId, info: PortInfo) {
        self.ports.add(id, info);
    }

    /// Forgets the port and every MAC learned on it.
    pub fn remove_port(&self, id: PortId) {
        // Unregister first: learning re-checks registration under the table's write lock,
        // so after the purge no frame still in flight can bring an entry back.
        self.ports.remove(id);
        self.fdb.purge_port(id);
    }

    pub fn port_info(&self, id: PortId) -> Option<PortInfo> {
        self.ports.info(id)
    }

    /// The hot path. `outgoing` = the frame was sent by this host (AF_PACKET `sll_pkttype ==
    /// PACKET_OUTGOING`): it is dropped and never learned from.
    ///
    /// Validate, learn the source (on the ingress port), answer ARP requests for a station on
    /// another port (written into `reply_buf`), then forward by destination: group address or
    /// unknown -> `Flood`, learned on another port -> `Forward`, on the ingress port -> `Drop`.
    /// An ARP request for an unknown address is forwarded like any frame (flooded). If
    /// `reply_buf` is shorter than 60 bytes the request is forwarded instead of answered.
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
        if !self.ports.is_live(ingress) {
            return Action::Drop(DropReason::UnknownPort);
        }
        let Some(eth) = Ethernet::parse(frame) else {
            return self.malformed();
        };
        if eth.src.is_multicast() || eth.src.is_zero() {
            return self.malformed();
        }
        let arp_request = if eth.ethertype == ETHERTYPE_ARP {
            match Arp::parse(eth.payload) {
                Ok(arp) => arp.filter(|a| a.op == ARP_OP_REQUEST),
                Err(_) => return self.malformed(),
            }
        } else {
            None
        };

        let unicast_dst = (!eth.dst.is_multicast()).then_some(eth.dst);
        let (learned, dst_port) =
            self.fdb
                .learn_and_lookup(eth.src, ingress, unicast_dst, now, &self.ports);
        match learned {
            Learned::Known | Learned::PortGone => {}
            Learned::New => c.learned.inc(),
            Learned::Moved => c.moved.inc(),
            Learned::Full => c.fdb_full.inc(),
        }

        if let Some(req) = arp_request {
            match self.ports.arp_target(ingress, req.tpa) {
                ArpTarget::IngressItself => return Action::Drop(DropReason::ArpForSelf),
                ArpTarget::Station(mac) => {
                    if let Some(len) = arp::write_reply(reply_buf, (mac, req.tpa), eth.src, &req) {
                        c.arp_replies.inc();
                        return Action::Reply { len };
                    }
                }
                ArpTarget::Unknown => {}
            }
        }

        match dst_port {
            Some(port) if port == ingress => {
                c.hairpin.inc();
                Action::Drop(DropReason::Hairpin)
            }
            Some(port) => Action::Forward(port),
            None => {
                c.flooded.inc();
                Action::Flood
            }
        }
    }

    #[cold]
    fn malformed(&self) -> Action {
        self.counters.mine().malformed.inc();
        Action::Drop(DropReason::Malformed)
    }

    /// A gratuitous ARP announcing port `id`'s station (broadcast request, sender IP = target
    /// IP), written into `buf`. `None` if the port is unknown, has no IPv4 address, or `buf` is
    /// shorter than 60 bytes.
    pub fn gratuitous_arp(&self, id: PortId, buf: &mut [u8]) -> Option<usize> {
        let info = self.ports.info(id)?;
        arp::write_gratuitous(buf, info.mac, info.ip?)
    }

    /// Frames from `mac` came in on `port` and were forwarded without the switch (the edge's
    /// kernel fast path, which carries only frames the switch would forward the same way): the
    /// entry is refreshed as if the switch had seen them, or learned if `mac` is unknown. A
    /// `mac` learned on another port meanwhile stays there (the report may predate the move).
    pub fn seen(&self, mac: MacAddr, port: PortId, now: Millis) {
        if !self.fdb.refresh(mac, port, now) {
            let (learned, _) = self.fdb.learn_and_lookup(mac, port, None, now, &self.ports);
            if learned == Learned::New {
                self.counters.mine().learned.inc();
            }
        }
    }

    /// Removes aged entries, returns how many.
    pub fn expire(&self, now: Millis) -> usize {
        self.fdb.expire(now)
    }

    /// Live entries only, sorted by MAC.
    pub fn fdb_entries(&self, now: Millis) -> Vec<FdbEntry> {
        self.fdb.entries(now)
    }

    /// Learns the entries another switch reported (`fdb_entries` of a process handing over),
    /// each as last seen `age_ms` before `now`: they age as if this switch had seen their
    /// frames. The ports must be added first; entries of unknown ports are skipped.
    pub fn restore_fdb(&self, entries: &[FdbEntry], now: Millis) {
        for e in entries {
            let seen = now.saturating_sub(e.age_ms);
            self.fdb
                .learn_and_lookup(e.mac, e.port, None, seen, &self.ports);
        }
    }

    /// Entries in the forwarding table, including aged ones that `expire` has not removed yet.
    pub fn fdb_len(&self) -> usize {
        self.fdb.len()
    }

    pub fn stats(&self) -> SwitchStats {
        SwitchStats {
            aged: self.fdb.aged(),
            ..self.counters.snapshot()
        }
    }

    /// Forgets every learned MAC, or those learned on `port` (`vswitch fdb --flush`); returns
    /// how many. Traffic to them is flooded until they are learned again.
    pub fn flush_fdb(&self, port: Option<PortId>) -> usize {
        self.fdb.flush(port)
    }
}
