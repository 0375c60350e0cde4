//! The relayed TCP fast path: the segments of an established connection that the NAT relays
//! through the host, translated and handed over in the kernel.
//!
//! The NAT terminates a container's outgoing TCP connection in the host's stack: the
//! container's segments to `OUTSIDE:DPORT` are rewritten to `GATEWAY:RELAY` and written into the
//! TAP, the host's segments back are read from the TAP and rewritten to come from
//! `OUTSIDE:DPORT` (a published port's connection the same way, with the client's address and
//! `GATEWAY:EPH`). Once the NAT has seen the connection established (and past its first 32
//! segments: a short exchange is not worth the hand-over), that rewrite is the same for every
//! segment, so the daemon hands it to the kernel: two hash maps, one per direction,
//! keyed by a segment's addresses and ports as they are on the wire, give the address and port
//! to write over and the interface the segment goes to. The fast path's tc program on the
//! container's veth rewrites a segment it finds in `out` and redirects it into the TAP's
//! ingress, where the host's stack takes it as if the daemon had written it; a program on the
//! TAP's egress rewrites the host's segments it finds in `back` and sends them out of the
//! container's veth. No worker, no copy, GSO super-frames intact.
//!
//! Only segments without SYN, FIN or RST take it: those still cross the NAT, which tracks the
//! connection's state by them, and the daemon removes a connection's entries when the NAT sees
//! it leave ESTABLISHED or forgets it. A segment must come in by the veth of the container that
//! owns the connection. What the kernel carried is counted per entry; the manager folds it into
//! the flow's counters, which keeps the flow alive in the NAT's table.
//!
//! Translated connections (`natd::translate`) take the same maps from their SYN on, out of an
//! uplink instead of into the TAP; UDP flows and echoes have maps of their own, translated the
//! same way after their first datagram (`emit_datagram`).

use std::collections::HashMap;
use std::io;
use std::mem::offset_of;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;

use vswitch_switch::PortId;

use super::asm::{
    skb, Asm, AsmError, Helper, Insn, Label, Reg, R0, R1, R10, R2, R3, R4, R5, R6, R7, R8, R9,
};
use super::fastpath::{emit_count, field, Kind, ETHERTYPE_IPV4, RX, STATION_USED, TC_NEXT, TX};
use super::map::{Map, Pod};
use super::pins::Pins;
use super::ringbuf::RingBuf;

/// Which way a segment goes, and so which map and which end of it is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the container, on its veth: into the host (a relayed connection: its destination
    /// is rewritten) or out of an uplink (a translated one: its source is rewritten).
    Out,
    /// From the host to the container, on the TAP's egress (its source is rewritten).
    Back,
    /// From the outside to the container, on an uplink's ingress (a translated connection:
    /// its destination and MACs are rewritten).
    In,
}

/// How an entry's segments go (`Value::mode`).
const RELAYED: i32 = 0;
const TRANSLATED: i32 = 1;

/// What the maps carry: each protocol has maps of its own (a UDP flow may have a TCP
/// connection's addresses and ports). An echo's "ports" are its identifier, the container's
/// or the host's, and 0 for the remote end: out, (container, ident) → (remote, 0); back,
/// (remote, 0) → (host, ident).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// One direction of a relayed connection, as the daemon hands it to the kernel: the segments
/// from `src` to `dst` get `to` written over their destination (out) or source (back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    pub proto: Proto,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub to: SocketAddrV4,
    /// The container's veth (host end): the one an outgoing segment must come in by, the one a
    /// segment back goes out of.
    pub veth: u32,
    /// The container's port, whose counters the segments move.
    pub port: PortId,
}

impl Rule {
    /// The map key: source and destination addresses, then ports, as on the wire.
    fn key(&self) -> Key {
        key(self.src, self.dst)
    }
}

/// The map key of the segments from `src` to `dst`: addresses, then ports, as on the wire.
fn key(src: SocketAddrV4, dst: SocketAddrV4) -> Key {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&src.ip().octets());
    k[4..8].copy_from_slice(&dst.ip().octets());
    k[8..10].copy_from_slice(&src.port().to_be_bytes());
    k[10..].copy_from_slice(&dst.port().to_be_bytes());
    k
}

/// A translated connection (or UDP flow, or echo) as the kernel carries it: the container's
/// segments from `container` to `remote` leave from `host` out of `uplink`; the remote's to
/// `host` come in by an uplink and go to the container, with `macs` (the container's, then the
/// gateway's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Translation {
    pub proto: Proto,
    pub container: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub host: SocketAddrV4,
    pub uplink: u32,
    pub veth: u32,
    pub port: PortId,
    pub macs: [u8; 12],
}

impl Translation {
    /// Its two directions as keys and rewrites: out (container → remote, source rewritten to
    /// `host`) and in (remote → host, destination rewritten to `container`).
    pub fn rules(&self) -> (Rule, Rule) {
        let out = Rule {
            proto: self.proto,
            src: self.container,
            dst: self.remote,
            to: self.host,
            veth: self.veth,
            port: self.port,
        };
        let back = Rule {
            proto: self.proto,
            src: self.remote,
            dst: self.host,
            to: self.container,
            veth: self.veth,
            port: self.port,
        };
        (out, back)
    }
}

type Key = [u8; 12];

/// A map entry, as the programs read it.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Value {
    /// The address and port written over the segment's, as their bytes read as integers.
    addr: u32,
    port: u16,
    /// `RELAYED` or `TRANSLATED`.
    mode: u8,
    /// Translated: the TCP flags its segments carried so far (set by the programs).
    seen: u8,
    /// Out: the interface the segment must come in by (else it is the daemon's).
    from: u32,
    /// The interface the segment is redirected to (the TAP's ingress, an uplink, a veth).
    to: u32,
    /// The container's port, for the counters.
    port_id: u32,
    /// In: the destination and source MACs written over the frame's.
    macs: [u8; 12],
    /// What this entry carried (bumped atomically by the program).
    packets: u64,
    bytes: u64,
    /// The NAT's flow, as the daemon wrote it (0 for a connection the kernel opened).
    flow: u64,
    /// Translated: the acknowledgment number of the last segment (as on the wire): where a
    /// reset to the other end must start (`natd::offload`).
    acked: u32,
    _pad3: u32,
}
const _: () = assert!(size_of::<Value>() == 64, "no padding");
// SAFETY: `#[repr(C)]`, integers only and no implicit padding (asserted above): any bits are a
// valid `Value`.
unsafe impl Pod for Value {}

/// A container whose new connections the veth's filter may open itself (`RelayMaps::serve`),
/// keyed by its address: the veth they must come in by, its port, the gateway's MAC, its
/// credits.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Served {
    veth: u32,
    port_id: u32,
    _pad: u16,
    gateway_mac: [u8; 6],
    /// How many more connections the filter may open before the daemon has followed them
    /// (`RelayMaps::grant`); each takes one (below zero by at most one per CPU, racing).
    credits: i64,
}
const _: () = assert!(size_of::<Served>() == 24, "no padding");
// SAFETY: `#[repr(C)]`, integers and bytes only, no implicit padding (asserted above).
unsafe impl Pod for Served {}

/// The host's route to a destination as the daemon last found it (`RelayMaps::route`): the
/// uplink, the host's address on it, when (CLOCK_MONOTONIC, ns).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Route {
    uplink: u32,
    host: u32,
    stamp: u64,
}
// SAFETY: `#[repr(C)]`, integers only, no padding (4 + 4 + 8).
unsafe impl Pod for Route {}

/// How long the filter trusts a route the daemon found (as `natd::translate` trusts its own).
const ROUTE_TTL_NS: i32 = 1_000_000_000;
/// Bounds of the two maps: every port; the destinations of the last second or so (the least
/// recently used make room for new ones).
const SERVED_ENTRIES: u32 = 4096;
const ROUTE_ENTRIES: u32 = 4096;

/// What one direction of a connection carried on the fast path so far, and (translated) the
/// TCP flags its segments had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub flags: u8,
    /// Translated: the last acknowledgment number that way.
    pub acked: u32,
}

/// What the programs tell the daemon at once: a translated connection's segment carried a new
/// handshake, FIN or RST in its direction, so that the NAT sees the connection answered or
/// finished when it is; or the veth's filter opened a connection itself (`EventKind::Opened`,
/// see `RelayMaps::serve`). The daemon matches an event to its connection by the four-tuple.
/// The ring's record (32 bytes): 8 bytes of zeros, the flags seen that way so far, the SYN's
/// IPv4 length (opened), the kind (4 bytes), the container's address and the remote end's,
/// the container's port and the remote end's, the segment's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub flags: u8,
    pub kind: EventKind,
    pub container: SocketAddrV4,
    pub remote: SocketAddrV4,
    /// The segment's sequence number (opened: the SYN's).
    pub seq: u32,
    /// Opened: the SYN's length as an IPv4 packet.
    pub len: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The container's segment.
    Out,
    /// The remote end's.
    In,
    /// The container's SYN, for which the veth's filter wrote both entries (`RelayMaps::serve`):
    /// the daemon has no flow for it yet.
    Opened,
}

const EVENT_OUT: i32 = 0;
const EVENT_IN: i32 = 1;
const EVENT_OPENED: i32 = 2;
const EVENT_LEN: i32 = 32;

impl Event {
    pub fn parse(record: &[u8]) -> Option<Event> {
        let r: &[u8; EVENT_LEN as usize] = record.get(..EVENT_LEN as usize)?.try_into().ok()?;
        let word = |at: usize| [r[at], r[at + 1], r[at + 2], r[at + 3]];
        let port = |at: usize| u16::from_be_bytes([r[at], r[at + 1]]);
        let kind = match i32::from_ne_bytes(word(12)) {
            EVENT_OUT => EventKind::Out,
            EVENT_IN => EventKind::In,
            EVENT_OPENED => EventKind::Opened,
            _ => return None,
        };
        Some(Event {
            flags: r[8],
            kind,
            container: SocketAddrV4::new(Ipv4Addr::from(word(16)), port(24)),
            remote: SocketAddrV4::new(Ipv4Addr::from(word(20)), port(26)),
            seq: u32::from_be_bytes(word(28)),
            len: port(10),
        })
    }

    /// The container's segment (or SYN), not the remote end's.
    pub fn out(&self) -> bool {
        self.kind != EventKind::In
    }
}

/// A connection found in the maps (`RelayMaps::entries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub flow: u64,
    pub out: Rule,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Relayed: the way back's rule.
    Relayed(Rule),
    Translated(Translation),
}

/// The (source, destination) a key names.
fn endpoints(k: &Key) -> (SocketAddrV4, SocketAddrV4) {
    let ip = |at: usize| Ipv4Addr::new(k[at], k[at + 1], k[at + 2], k[at + 3]);
    let port = |at: usize| u16::from_be_bytes([k[at], k[at + 1]]);
    (
        SocketAddrV4::new(ip(0), port(8)),
        SocketAddrV4::new(ip(4), port(10)),
    )
}

/// The maps' pins.
const OUT_PIN: &str = "relay-out";
const BACK_PIN: &str = "relay-back";

/// The events' ring: room for some ten thousand (a lost one is caught up by the next report).
const EVENTS_SIZE: usize = 256 * 1024;

/// The two maps of relayed and translated connections, which the programs read and the daemon
/// writes, and the translated connections' events; two more each for UDP flows and echoes.
pub struct RelayMaps {
    out: Map<Key, Value>,
    back: Map<Key, Value>,
    /// UDP flows and echoes, out and back: this daemon's own (not pinned: a next daemon hands
    /// its flows to its own maps again, `natd::Translator::carry`).
    udp: (Map<Key, Value>, Map<Key, Value>),
    icmp: (Map<Key, Value>, Map<Key, Value>),
    events_fd: RawFd,
    events: std::sync::Mutex<Option<RingBuf>>,
    /// The containers and routes the veth's filter opens connections for (this daemon's own:
    /// not pinned, the next daemon's programs have theirs).
    served: Map<[u8; 4], Served>,
    routes: Map<[u8; 4], Route>,
    /// Whether the events' reader sleeps until woken (`set_wake`); index 0.
    wake: Map<u32, u32>,
    /// The TAP's ifindex: where outgoing segments go (set once the TAP's program is on).
    tap: AtomicU32,
}

impl RelayMaps {
    /// Maps for up to `entries` connections each way, whose memory follows the connections in
    /// them (a bound of tens of thousands, preallocated, would hold megabytes of kernel memory
    /// for nothing). Pinned where there are pins, so that a next daemon carries on with the
    /// connections in them (see `natd::offload`).
    pub fn new(entries: u32, pins: Option<&Pins>) -> io::Result<RelayMaps> {
        let events = RingBuf::new(EVENTS_SIZE)?;
        let map = |name: &str| -> io::Result<Map<Key, Value>> {
            let Some(pins) = pins else {
                return Map::sparse_hash(entries);
            };
            if pins.exists(name) {
                // Another shape (an older daemon's) is no use: made anew.
                if let Ok(map) = Map::open_hash(&pins.path(name), entries) {
                    return Ok(map);
                }
                pins.unpin(name);
            }
            let map = Map::sparse_hash(entries)?;
            map.pin(&pins.path(name))?;
            Ok(map)
        };
        Ok(RelayMaps {
            out: map(OUT_PIN)?,
            back: map(BACK_PIN)?,
            udp: (Map::sparse_hash(entries)?, Map::sparse_hash(entries)?),
            icmp: (Map::sparse_hash(entries)?, Map::sparse_hash(entries)?),
            events_fd: events.fd(),
            events: std::sync::Mutex::new(Some(events)),
            served: Map::hash(SERVED_ENTRIES)?,
            routes: Map::lru_hash(ROUTE_ENTRIES)?,
            wake: Map::array(1)?,
            tap: AtomicU32::new(0),
        })
    }

    /// Outgoing segments go to TAP `tap`.
    pub(super) fn set_tap(&self, tap: u32) {
        self.tap.store(tap, Relaxed);
    }

    pub(super) fn out_fd(&self) -> RawFd {
        self.out.fd()
    }

    pub(super) fn back_fd(&self) -> RawFd {
        self.back.fd()
    }

    /// `proto`'s maps, out and back.
    fn pair(&self, proto: Proto) -> (&Map<Key, Value>, &Map<Key, Value>) {
        match proto {
            Proto::Tcp => (&self.out, &self.back),
            Proto::Udp => (&self.udp.0, &self.udp.1),
            Proto::Icmp => (&self.icmp.0, &self.icmp.1),
        }
    }

    /// The map `dir`'s programs look `proto`'s segments up in.
    fn fd(&self, proto: Proto, dir: Dir) -> RawFd {
        let (out, back) = self.pair(proto);
        match dir {
            Dir::Out => out.fd(),
            Dir::Back | Dir::In => back.fd(),
        }
    }

    pub(super) fn events_fd(&self) -> RawFd {
        self.events_fd
    }

    /// Whether the programs wake the events' reader (`take_events`) when they write one: only
    /// when it is about to sleep. A wake-up is an interrupt the program raises in the middle of
    /// a connection's segment (in a VM, an exit to the hypervisor): a reader that reads every
    /// millisecond while events come needs none. Set before the reader's last look, so that no
    /// event is left unread.
    pub fn set_wake(&self, on: bool) {
        let _ = self.wake.update(&0, &u32::from(on));
    }

    fn served_fd(&self) -> RawFd {
        self.served.fd()
    }

    fn routes_fd(&self) -> RawFd {
        self.routes.fd()
    }

    /// The containers (address → port, veth) whose new connections the veth's filter opens in
    /// the kernel itself, to the destinations of `route`: it writes both entries, tells the
    /// daemon (`EventKind::Opened`), and the tc program sends the SYN on. The daemon then makes
    /// the NAT's flow and reserves the host's four-tuple, or takes the connection back with a
    /// reset. The translated connections' answers come back through the gateway's MAC.
    ///
    /// The filter opens only as many connections as the daemon granted the container credits
    /// for (`grant`): none at first.
    pub fn serve(&self, served: &HashMap<Ipv4Addr, (PortId, u32)>, gateway_mac: [u8; 6]) {
        for key in self.served.keys().unwrap_or_default() {
            if !served.contains_key(&Ipv4Addr::from(key)) {
                let _ = self.served.delete(&key);
            }
        }
        for (ip, &(port, veth)) in served {
            self.grant(*ip, (port, veth), gateway_mac, 0);
        }
    }

    /// Container `ip` (port, veth) may have `credits` more connections opened by the filter
    /// before the daemon grants it more: what its shares of the NAT's table and of the
    /// descriptors have room for, so that the daemon seldom has to refuse one the kernel opened.
    pub fn grant(
        &self,
        ip: Ipv4Addr,
        (port, veth): (PortId, u32),
        gateway_mac: [u8; 6],
        credits: u32,
    ) {
        let value = Served {
            veth,
            port_id: u32::from(port.0),
            gateway_mac,
            credits: i64::from(credits),
            ..Served::default()
        };
        let _ = self.served.update(&ip.octets(), &value);
    }

    /// The host's route to `dst` leaves by `uplink` from `host`, as found now: for a second,
    /// the veth's filter opens connections to `dst` itself (`serve`).
    pub fn route(&self, dst: Ipv4Addr, uplink: u32, host: Ipv4Addr) {
        let route = Route {
            uplink,
            host: u32::from_ne_bytes(host.octets()),
            stamp: monotonic_ns(),
        };
        let _ = self.routes.update(&dst.octets(), &route);
    }

    /// The translated connection from `container` to `remote` as the maps hold it.
    pub fn translation(
        &self,
        container: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Option<Translation> {
        let v = self.out.lookup(&key(container, remote)).ok()??;
        if i32::from(v.mode) != TRANSLATED {
            return None;
        }
        self.translated(container, remote, &v)
    }

    /// A translated entry's connection, its way back read for the MACs.
    fn translated(&self, src: SocketAddrV4, dst: SocketAddrV4, v: &Value) -> Option<Translation> {
        let t = Translation {
            proto: Proto::Tcp,
            container: src,
            remote: dst,
            host: SocketAddrV4::new(
                Ipv4Addr::from(v.addr.to_ne_bytes()),
                u16::from_be_bytes(v.port.to_ne_bytes()),
            ),
            uplink: v.to,
            veth: v.from,
            port: PortId(v.port_id as u16),
            macs: [0; 12],
        };
        let back = self.back.lookup(&t.rules().1.key()).ok()??;
        Some(Translation {
            macs: back.macs,
            ..t
        })
    }

    /// The events' ring, for the one reader (None once taken).
    pub fn take_events(&self) -> Option<RingBuf> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Hands relayed connection `flow`'s two directions to the kernel.
    pub fn install(&self, out: &Rule, back: &Rule, flow: u64) -> io::Result<()> {
        let tap = self.tap.load(Relaxed);
        let ifs = ((out.veth, tap), (0, back.veth));
        self.put(out, back, RELAYED, ifs.0, ifs.1, ([0; 12], flow))
    }

    /// Every connection in the maps (a previous daemon's, pinned), as `install` and
    /// `translate` wrote it.
    pub fn entries(&self) -> Vec<Entry> {
        let mut all = Vec::new();
        for key in self.out.keys().unwrap_or_default() {
            let Ok(Some(v)) = self.out.lookup(&key) else {
                continue;
            };
            let (src, dst) = endpoints(&key);
            let to = SocketAddrV4::new(
                Ipv4Addr::from(v.addr.to_ne_bytes()),
                u16::from_be_bytes(v.port.to_ne_bytes()),
            );
            let port = PortId(v.port_id as u16);
            let out = Rule {
                proto: Proto::Tcp,
                src,
                dst,
                to,
                veth: v.from,
                port,
            };
            let kind = if i32::from(v.mode) == TRANSLATED {
                match self.translated(src, dst, &v) {
                    Some(t) => EntryKind::Translated(t),
                    None => continue,
                }
            } else {
                EntryKind::Relayed(Rule {
                    proto: Proto::Tcp,
                    src: to,
                    dst: src,
                    to: dst,
                    veth: v.from,
                    port,
                })
            };
            all.push(Entry {
                flow: v.flow,
                out,
                kind,
            });
        }
        all
    }

    /// Empties both TCP maps (what a daemon that died left: no one follows those connections).
    pub fn clear(&self) {
        for map in [&self.out, &self.back] {
            for key in map.keys().unwrap_or_default() {
                let _ = map.delete(&key);
            }
        }
    }

    /// Hands translated connection `flow` to the kernel, before its first segment goes out (a
    /// UDP flow or an echo: before the next datagram).
    pub fn translate(&self, t: &Translation, flow: u64) -> io::Result<()> {
        let (out, back) = t.rules();
        let ifs = ((t.veth, t.uplink), (0, t.veth));
        self.put(&out, &back, TRANSLATED, ifs.0, ifs.1, (t.macs, flow))
    }

    /// Writes both entries (the way back first, so that no reply to a segment the kernel
    /// carried out has to wait for the daemon); `(from, to)` interfaces each way.
    fn put(
        &self,
        out: &Rule,
        back: &Rule,
        mode: i32,
        out_ifs: (u32, u32),
        back_ifs: (u32, u32),
        (macs, flow): ([u8; 12], u64),
    ) -> io::Result<()> {
        let value = |r: &Rule, (from, to): (u32, u32)| Value {
            addr: u32::from_ne_bytes(r.to.ip().octets()),
            port: u16::from_ne_bytes(r.to.port().to_be_bytes()),
            mode: mode as u8,
            from,
            to,
            port_id: u32::from(r.port.0),
            macs,
            flow,
            ..Value::default()
        };
        let (out_map, back_map) = self.pair(out.proto);
        back_map.update(&back.key(), &value(back, back_ifs))?;
        if let Err(e) = out_map.update(&out.key(), &value(out, out_ifs)) {
            let _ = back_map.delete(&back.key());
            return Err(e);
        }
        Ok(())
    }

    /// What each direction of a connection carried so far (zero for one not installed), in
    /// IPv4 packets as the NAT counts them (the program counts Ethernet frames).
    pub fn traffic(&self, out: &Rule, back: &Rule) -> (Traffic, Traffic) {
        let read = |map: &Map<Key, Value>, r: &Rule| match map.lookup(&r.key()) {
            Ok(Some(v)) => Traffic {
                packets: v.packets,
                bytes: v.bytes.saturating_sub(14 * v.packets),
                flags: v.seen,
                acked: u32::from_be_bytes(v.acked.to_ne_bytes()),
            },
            _ => Traffic::default(),
        };
        let (out_map, back_map) = self.pair(out.proto);
        (read(out_map, out), read(back_map, back))
    }

    /// Takes a connection back from the kernel: its next segments cross the daemon.
    pub fn remove(&self, out: &Rule, back: &Rule) {
        let (out_map, back_map) = self.pair(out.proto);
        let _ = out_map.delete(&out.key());
        let _ = back_map.delete(&back.key());
    }
}

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// The programs' stack for a relayed segment, below the fast path's own (`fastpath`): the
/// frame's first `LEN` bytes (Ethernet, IPv4 without options, TCP's first 14 bytes), placed so
/// that the IPv4 header is 4-byte aligned: the key (addresses, then ports) at `IP + 12`.
const HDR: i16 = -114;
const LEN: i32 = 48;
const IP: i16 = HDR + 14;
const TCP: i16 = IP + 20;
const _: () = assert!(IP.rem_euclid(4) == 0 && HDR + LEN as i16 <= -62);
/// Offsets in the frame: the IPv4 header checksum, source and destination; TCP's ports and
/// checksum (no IPv4 options).
const IP_CSUM: i32 = 14 + 10;
const IP_SRC: i32 = 14 + 12;
const IP_DST: i32 = 14 + 16;
const TCP_SPORT: i32 = 34;
const TCP_DPORT: i32 = 36;
const TCP_CSUM: i32 = 34 + 16;
/// The fragment bits of the IPv4 header's flags/offset word (MF and the offset), as a
/// little-endian load of its two bytes reads them.
const FRAGMENT: i32 = u16::from_ne_bytes(0x3fffu16.to_be_bytes()) as i32;
/// TCP flags that only the NAT may see: SYN, FIN, RST.
const STATE_FLAGS: i32 = 0x01 | 0x02 | 0x04;
/// `bpf_l4_csum_replace`'s flags: a change in the pseudo-header (an address); a checksum of 0
/// is none and stays so (UDP's), a result of 0 is written as 0xffff.
const BPF_F_PSEUDO_HDR: i32 = 1 << 4;
const BPF_F_MARK_MANGLED_0: i32 = 1 << 5;
const IPPROTO_ICMP: i32 = 1;
const IPPROTO_UDP: i32 = 17;
/// An echo request's and an echo reply's type and code, as a little-endian load of their two
/// bytes reads them.
const ICMP_ECHO_REQUEST: i32 = 8;
const ICMP_ECHO_REPLY: i32 = 0;
/// `bpf_redirect`'s flag for the interface's ingress (the host receives the frame).
pub(super) const BPF_F_INGRESS: i32 = 1;
const TC_ACT_SHOT: i32 = 2;
/// The TAP's port (`datapath::TAP_PORT`, a layer above).
const TAP_PORT_ID: i32 = 0;

const ADDR: i16 = field(offset_of!(Value, addr));
const PORT: i16 = field(offset_of!(Value, port));
const MODE: i16 = field(offset_of!(Value, mode));
const SEEN: i16 = field(offset_of!(Value, seen));
const FROM: i16 = field(offset_of!(Value, from));
const TO: i16 = field(offset_of!(Value, to));
const PORT_ID: i16 = field(offset_of!(Value, port_id));
const MACS: i16 = field(offset_of!(Value, macs));
const PACKETS: i16 = field(offset_of!(Value, packets));
const BYTES: i16 = field(offset_of!(Value, bytes));
const ACKED: i16 = field(offset_of!(Value, acked));
const TCP_FIN_RST: i32 = 0x01 | 0x04;
const TCP_SYN: i32 = 0x02;
const TCP_ACK: i32 = 0x10;
/// The stack's room below the header's: the way back's key (`emit_forget_back`, `emit_open`),
/// an event record, an entry being written (`emit_open`).
const BACK_KEY: i16 = -128;
const EVENT: i16 = BACK_KEY - EVENT_LEN as i16;
const VALUE: i16 = EVENT - size_of::<Value>() as i16;
const _: () = assert!(BACK_KEY % 4 == 0 && BACK_KEY + 12 <= HDR);
const _: () = assert!(EVENT % 8 == 0 && VALUE % 8 == 0 && VALUE >= -512);
/// `bpf_ringbuf_output`'s flags: no wake-up of the reader, a wake-up whatever the ring holds.
const BPF_RB_NO_WAKEUP: i32 = 1;
const BPF_RB_FORCE_WAKEUP: i32 = 2;
/// `bpf_map_update_elem`'s flag: only if the key has no element yet.
const BPF_NOEXIST: i32 = 1;
const S_VETH: i16 = field(offset_of!(Served, veth));
const S_PORT_ID: i16 = field(offset_of!(Served, port_id));
const S_GATEWAY: i16 = field(offset_of!(Served, gateway_mac));
const S_CREDITS: i16 = field(offset_of!(Served, credits));
const R_UPLINK: i16 = field(offset_of!(Route, uplink));
const R_HOST: i16 = field(offset_of!(Route, host));
const R_STAMP: i16 = field(offset_of!(Route, stamp));
const _: () = assert!(S_GATEWAY % 2 == 0 && (S_GATEWAY + 2) % 4 == 0 && MACS % 4 == 0);

/// Emits the relayed and translated segments' part of a program whose context is in R6: a TCP
/// segment of a connection in `dir`'s map is rewritten and redirected (`Kind::Redirect`) or,
/// for the packet sockets' filter, dropped (`Kind::Filter`: the tc program takes it). Anything
/// else jumps to `pass`. For `Dir::Out`, R8 holds the source MAC's station (marked used, like
/// the fast path's own frames). Uses R9.
///
/// A relayed connection's segments with SYN, FIN or RST are the NAT's, which tracks its state
/// by them; a translated connection's are all the kernel's (the flags they carry are noted in
/// the entry, for the daemon).
pub(super) fn emit(
    a: &mut Asm,
    dir: Dir,
    kind: Kind,
    maps: &RelayMaps,
    counters: RawFd,
    pass: Label,
) {
    let map = maps.fd(Proto::Tcp, dir);
    // Untagged IPv4 without options or fragments, TCP (UDP, ICMP: `emit_datagram`).
    a.mov64_reg(R1, R6).mov64_imm(R2, 0);
    a.mov64_reg(R3, R10).add64_imm(R3, HDR.into());
    a.mov64_imm(R4, LEN).call(Helper::SkbLoadBytes);
    a.jne_imm(R0, 0, pass);
    a.ldx_w(R1, R6, skb::VLAN_PRESENT).jne_imm(R1, 0, pass);
    a.ldx_h(R1, R10, HDR + 12).jne_imm(R1, ETHERTYPE_IPV4, pass);
    a.ldx_b(R1, R10, IP).jne_imm(R1, 0x45, pass);
    a.ldx_h(R1, R10, IP + 6).and64_imm(R1, FRAGMENT);
    a.jne_imm(R1, 0, pass);
    let tcp = a.label();
    a.ldx_b(R1, R10, IP + 9).jeq_imm(R1, 6, tcp);
    if dir == Dir::Back {
        a.ja(pass); // no UDP flow or echo crosses the TAP
    } else {
        emit_datagram(a, dir, kind, maps, counters, pass);
    }
    a.bind(tcp);
    // r9 = the connection's entry.
    a.ld_map_fd(R1, map);
    a.mov64_reg(R2, R10).add64_imm(R2, (IP + 12).into());
    let open = a.label();
    let opens = dir == Dir::Out && matches!(kind, Kind::Filter);
    a.call(Helper::MapLookupElem);
    a.jeq_imm(R0, 0, if opens { open } else { pass });
    a.mov64_reg(R9, R0);
    if dir == Dir::Out {
        // Only from the container whose connection it is.
        a.ldx_w(R1, R9, FROM).ldx_w(R2, R6, skb::IFINDEX);
        a.jne_reg(R1, R2, pass);
    }
    let translated = a.label();
    a.ldx_b(R1, R9, MODE);
    match dir {
        Dir::Out => a.jne_imm(R1, RELAYED, translated),
        Dir::Back => a.jne_imm(R1, RELAYED, pass),
        Dir::In => a.jne_imm(R1, TRANSLATED, pass),
    };
    if dir != Dir::In {
        emit_relayed(a, dir, kind, counters, pass);
    }
    a.bind(translated);
    if dir != Dir::Back {
        emit_translated(a, dir, kind, counters, maps);
    }
    a.bind(open);
    if opens {
        emit_open(a, maps, pass);
    }
}

/// A relayed connection's segment, entry in R9.
fn emit_relayed(a: &mut Asm, dir: Dir, kind: Kind, counters: RawFd, pass: Label) {
    a.ldx_b(R1, R10, TCP + 13).and64_imm(R1, STATE_FLAGS);
    a.jne_imm(R1, 0, pass);
    if let Kind::Filter = kind {
        a.mov32_imm(R0, 0).exit(); // the tc program's: not for the daemon
        return;
    }
    let shot = a.label();
    match dir {
        Dir::Out => emit_rewrite(a, (IP_DST, IP + 16), TCP_L4.dst_port, &TCP_L4, shot),
        _ => emit_rewrite(a, (IP_SRC, IP + 12), TCP_L4.src_port, &TCP_L4, shot),
    }
    // Count: the entry, and the two ports as the switch would (rx where it came in).
    let (container, tap) = match dir {
        Dir::Out => (RX, TX),
        _ => (TX, RX),
    };
    emit_counts(a, counters, container);
    a.mov64_imm(R1, TAP_PORT_ID);
    emit_count(a, counters, tap);
    let flags = match dir {
        Dir::Out => {
            emit_mark_used(a);
            BPF_F_INGRESS
        }
        _ => 0,
    };
    a.ldx_w(R1, R9, TO).mov64_imm(R2, flags);
    a.call(Helper::Redirect).exit();
    emit_shot(a, shot);
}

/// A translated connection's segment, entry in R9: out of the uplink towards the remote end
/// (`Dir::Out`), or out of the container's veth (`Dir::In`).
fn emit_translated(a: &mut Asm, dir: Dir, kind: Kind, counters: RawFd, maps: &RelayMaps) {
    if let Kind::Filter = kind {
        a.mov32_imm(R0, 0).exit(); // the tc program's: not for the daemon
        return;
    }
    a.ldx_w(R1, R10, TCP + 8).stx_w(R9, R1, ACKED);
    // Note the segment's flags (a store only when one is new). A new handshake (the
    // container's SYN, the remote end's SYN|ACK: the ports used again for a new connection)
    // starts the note again, the container's SYN both ways.
    let (known, noted, more) = (a.label(), a.label(), a.label());
    let opens = match dir {
        Dir::Out => TCP_SYN,
        _ => TCP_SYN | TCP_ACK,
    };
    a.ldx_b(R1, R10, TCP + 13).ldx_b(R2, R9, SEEN);
    a.mov64_reg(R4, R1).and64_imm(R4, TCP_SYN | TCP_ACK);
    a.jne_imm(R4, opens, more);
    a.jeq_reg(R1, R2, known);
    a.stx_b(R9, R1, SEEN).mov64_reg(R3, R1);
    if dir == Dir::Out {
        emit_forget_back(a, maps.back_fd());
        a.ldx_b(R3, R10, TCP + 13);
    }
    a.mov64_imm(R2, 0); // every flag is new
    a.ja(noted);
    a.bind(more);
    a.mov64_reg(R3, R2).or64_reg(R3, R1);
    a.jeq_reg(R3, R2, known);
    a.stx_b(R9, R3, SEEN);
    a.bind(noted);
    // A handshake, a FIN or a RST new this way: an event, so that the NAT sees the
    // connection answered, or over, now.
    a.mov64_reg(R1, R3).xor32_reg(R1, R2);
    a.and64_imm(R1, TCP_FIN_RST | TCP_SYN);
    a.jeq_imm(R1, 0, known);
    a.mov64_imm(R1, 0).stx_dw(R10, R1, EVENT);
    a.stx_dw(R10, R3, EVENT + 8);
    match dir {
        Dir::Out => {
            a.st_w(R10, EVENT + 12, EVENT_OUT);
            emit_tuple(
                a,
                (R10, IP + 12),
                (R10, IP + 16),
                (R10, TCP),
                (R10, TCP + 2),
            );
        }
        _ => {
            a.st_w(R10, EVENT + 12, EVENT_IN);
            emit_tuple(a, (R9, ADDR), (R10, IP + 12), (R9, PORT), (R10, TCP));
        }
    }
    emit_event(a, maps);
    a.bind(known);
    emit_translated_send(a, dir, &TCP_L4, counters);
}

/// A translated segment's (or datagram's, or echo's) rewrite, entry in R9, and where it goes:
/// from the host's address out of the uplink (`Dir::Out`), or to the container out of its veth
/// (`Dir::In`), MACs written.
fn emit_translated_send(a: &mut Asm, dir: Dir, l4: &L4, counters: RawFd) {
    let shot = a.label();
    match dir {
        Dir::Out => emit_rewrite(a, (IP_SRC, IP + 12), l4.src_port, l4, shot),
        _ => {
            emit_rewrite(a, (IP_DST, IP + 16), l4.dst_port, l4, shot);
            a.mov64_reg(R1, R6).mov64_imm(R2, 0);
            a.mov64_reg(R3, R9).add64_imm(R3, MACS.into());
            a.mov64_imm(R4, 12).mov64_imm(R5, 0);
            a.call(Helper::SkbStoreBytes).jne_imm(R0, 0, shot);
        }
    }
    match dir {
        Dir::Out => {
            emit_counts(a, counters, RX);
            emit_mark_used(a);
            // The host's routes and neighbours choose the next hop and its MAC.
            a.ldx_w(R1, R9, TO).mov64_imm(R2, 0);
            a.mov64_imm(R3, 0).mov64_imm(R4, 0);
            a.call(Helper::RedirectNeigh).exit();
        }
        _ => {
            emit_counts(a, counters, TX);
            a.ldx_w(R1, R9, TO).mov64_imm(R2, 0);
            a.call(Helper::Redirect).exit();
        }
    }
    emit_shot(a, shot);
}

/// An event's connection (`Event`): the container's address and the remote end's, the
/// container's port and the remote end's, each from (register, offset); then the segment's
/// sequence number.
fn emit_tuple(
    a: &mut Asm,
    container: (Reg, i16),
    remote: (Reg, i16),
    cport: (Reg, i16),
    rport: (Reg, i16),
) {
    a.ldx_w(R1, container.0, container.1)
        .stx_w(R10, R1, EVENT + 16);
    a.ldx_w(R1, remote.0, remote.1).stx_w(R10, R1, EVENT + 20);
    a.ldx_h(R1, cport.0, cport.1).stx_h(R10, R1, EVENT + 24);
    a.ldx_h(R1, rport.0, rport.1).stx_h(R10, R1, EVENT + 26);
    a.ldx_w(R1, R10, TCP + 4).stx_w(R10, R1, EVENT + 28);
}

/// The packet sockets' filter (which runs before the tc program) on a container's segment no
/// entry has: a SYN alone, from a container the daemon serves (`RelayMaps::serve`) on its own
/// veth with credits left, to a destination whose route the daemon found in the last second,
/// opens the connection in the kernel. Both entries are written (neither may be there: another
/// connection's four-tuple stays its own), the out one as having seen the SYN, and the daemon
/// is told; then the tc program sends the SYN as it sends the connection's every segment. If
/// anything fails, nothing stays and the SYN goes to the daemon (`pass`). Uses R7 and R9.
fn emit_open(a: &mut Asm, maps: &RelayMaps, pass: Label) {
    let (undo_out, undo_back) = (a.label(), a.label());
    a.ldx_b(R1, R10, TCP + 13)
        .and64_imm(R1, TCP_SYN | TCP_ACK | TCP_FIN_RST);
    a.jne_imm(R1, TCP_SYN, pass);
    // r9 = the container's `Served`, which must be of this veth.
    a.ld_map_fd(R1, maps.served_fd());
    a.mov64_reg(R2, R10).add64_imm(R2, (IP + 12).into());
    a.call(Helper::MapLookupElem).jeq_imm(R0, 0, pass);
    a.mov64_reg(R9, R0);
    a.ldx_w(R1, R9, S_VETH).ldx_w(R2, R6, skb::IFINDEX);
    a.jne_reg(R1, R2, pass);
    a.ldx_dw(R1, R9, S_CREDITS).jsle_imm(R1, 0, pass);
    // r7 = the route to the destination, found less than a second ago.
    a.ld_map_fd(R1, maps.routes_fd());
    a.mov64_reg(R2, R10).add64_imm(R2, (IP + 16).into());
    a.call(Helper::MapLookupElem).jeq_imm(R0, 0, pass);
    a.mov64_reg(R7, R0);
    a.call(Helper::KtimeGetNs);
    a.ldx_dw(R1, R7, R_STAMP).sub64_reg(R0, R1);
    a.jgt_imm(R0, ROUTE_TTL_NS, pass);
    // The way back's entry: to the container's address and port, out of its veth, with its
    // MAC and the gateway's.
    a.mov64_imm(R1, 0);
    for at in (0..size_of::<Value>() as i16).step_by(8) {
        a.stx_dw(R10, R1, VALUE + at);
    }
    a.ldx_w(R1, R10, IP + 12).stx_w(R10, R1, VALUE + ADDR);
    a.ldx_h(R1, R10, TCP).stx_h(R10, R1, VALUE + PORT);
    a.mov64_imm(R1, TRANSLATED).stx_b(R10, R1, VALUE + MODE);
    a.ldx_w(R1, R9, S_VETH).stx_w(R10, R1, VALUE + TO);
    a.ldx_w(R1, R9, S_PORT_ID).stx_w(R10, R1, VALUE + PORT_ID);
    a.ldx_w(R1, R10, HDR + 6).stx_w(R10, R1, VALUE + MACS);
    a.ldx_h(R1, R10, HDR + 10).stx_h(R10, R1, VALUE + MACS + 4);
    a.ldx_h(R1, R9, S_GATEWAY).stx_h(R10, R1, VALUE + MACS + 6);
    a.ldx_w(R1, R9, S_GATEWAY + 2)
        .stx_w(R10, R1, VALUE + MACS + 8);
    // Its key: from the destination to the host's address and the container's port.
    a.ldx_w(R1, R10, IP + 16).stx_w(R10, R1, BACK_KEY);
    a.ldx_w(R1, R7, R_HOST).stx_w(R10, R1, BACK_KEY + 4);
    a.ldx_h(R1, R10, TCP + 2).stx_h(R10, R1, BACK_KEY + 8);
    a.ldx_h(R1, R10, TCP).stx_h(R10, R1, BACK_KEY + 10);
    emit_insert(a, maps.back_fd(), BACK_KEY);
    a.jne_imm(R0, 0, pass);
    // The way out's: from the host's address, into the uplink, only from this veth.
    a.ldx_w(R1, R7, R_HOST).stx_w(R10, R1, VALUE + ADDR);
    a.mov64_imm(R1, TCP_SYN).stx_b(R10, R1, VALUE + SEEN);
    a.ldx_w(R1, R9, S_VETH).stx_w(R10, R1, VALUE + FROM);
    a.ldx_w(R1, R7, R_UPLINK).stx_w(R10, R1, VALUE + TO);
    emit_insert(a, maps.out_fd(), IP + 12);
    a.jne_imm(R0, 0, undo_back);
    // The daemon's event; without it, nothing of the connection stays.
    a.mov64_imm(R1, 0).stx_dw(R10, R1, EVENT);
    a.mov64_imm(R1, TCP_SYN).stx_dw(R10, R1, EVENT + 8);
    a.ldx_h(R1, R10, IP + 2).stx_h(R10, R1, EVENT + 10);
    a.st_w(R10, EVENT + 12, EVENT_OPENED);
    emit_tuple(
        a,
        (R10, IP + 12),
        (R10, IP + 16),
        (R10, TCP),
        (R10, TCP + 2),
    );
    emit_event(a, maps);
    a.jne_imm(R0, 0, undo_out);
    a.mov64_imm(R1, -1).atomic_add_dw(R9, R1, S_CREDITS);
    a.mov32_imm(R0, 0).exit(); // the tc program's now: not for the daemon
    for (label, map, key) in [
        (undo_out, maps.out_fd(), IP + 12),
        (undo_back, maps.back_fd(), BACK_KEY),
    ] {
        a.bind(label);
        a.ld_map_fd(R1, map);
        a.mov64_reg(R2, R10).add64_imm(R2, key.into());
        a.call(Helper::MapDeleteElem);
    }
    a.ja(pass);
}

/// Writes the event on the stack (`EVENT`) into the ring, waking the reader only if it sleeps
/// (`RelayMaps::set_wake`); its result in R0. Uses the stack's `VALUE`.
fn emit_event(a: &mut Asm, maps: &RelayMaps) {
    let flagged = a.label();
    a.st_w(R10, VALUE, 0);
    a.ld_map_fd(R1, maps.wake.fd());
    a.mov64_reg(R2, R10).add64_imm(R2, VALUE.into());
    a.call(Helper::MapLookupElem);
    a.mov64_imm(R4, BPF_RB_NO_WAKEUP).jeq_imm(R0, 0, flagged);
    a.ldx_w(R1, R0, 0).jeq_imm(R1, 0, flagged);
    a.mov64_imm(R4, BPF_RB_FORCE_WAKEUP);
    a.bind(flagged);
    a.ld_map_fd(R1, maps.events_fd());
    a.mov64_reg(R2, R10).add64_imm(R2, EVENT.into());
    a.mov64_imm(R3, EVENT_LEN);
    a.call(Helper::RingbufOutput);
}

/// `bpf_map_update_elem(map, stack + key, stack + VALUE, BPF_NOEXIST)`, its result in R0.
fn emit_insert(a: &mut Asm, map: RawFd, key: i16) {
    a.ld_map_fd(R1, map);
    a.mov64_reg(R2, R10).add64_imm(R2, key.into());
    a.mov64_reg(R3, R10).add64_imm(R3, VALUE.into());
    a.mov64_imm(R4, BPF_NOEXIST).call(Helper::MapUpdateElem);
}

/// The container's SYN opens a new connection on the entry (R9): the way back's note of flags
/// (an earlier connection's) goes. Its key is the segment's destination, then the entry's
/// address and port (the host's).
fn emit_forget_back(a: &mut Asm, back: RawFd) {
    let absent = a.label();
    a.ldx_w(R1, R10, IP + 16).stx_w(R10, R1, BACK_KEY);
    a.ldx_w(R1, R9, ADDR).stx_w(R10, R1, BACK_KEY + 4);
    a.ldx_h(R1, R10, TCP + 2).stx_h(R10, R1, BACK_KEY + 8);
    a.ldx_h(R1, R9, PORT).stx_h(R10, R1, BACK_KEY + 10);
    a.ld_map_fd(R1, back);
    a.mov64_reg(R2, R10).add64_imm(R2, BACK_KEY.into());
    a.call(Helper::MapLookupElem);
    a.jeq_imm(R0, 0, absent);
    a.mov64_imm(R1, 0).stx_b(R0, R1, SEEN);
    a.bind(absent);
}

/// A UDP flow's datagram or an echo's (its protocol in R1) that the kernel carries, entry in R9
/// once found: like a translated connection's segment (`emit_translated`), with no flags to
/// note (the daemon's reports keep the flow alive). Anything else jumps to `pass`.
fn emit_datagram(
    a: &mut Asm,
    dir: Dir,
    kind: Kind,
    maps: &RelayMaps,
    counters: RawFd,
    pass: Label,
) {
    // A datagram about to die (a traceroute's probe) is the NAT's, which answers as a router.
    a.ldx_b(R2, R10, IP + 8).jsle_imm(R2, 1, pass);
    let icmp = a.label();
    a.jne_imm(R1, IPPROTO_UDP, icmp);
    // UDP's ports are where TCP's are: its key is on the stack already.
    emit_entry(a, maps.fd(Proto::Udp, dir), IP + 12, pass);
    emit_datagram_send(a, dir, kind, &UDP_L4, counters, pass);
    a.bind(icmp);
    a.jne_imm(R1, IPPROTO_ICMP, pass);
    // An echo request out, its reply in; the key: the addresses, then the identifier as the
    // container's port (out) or the host's (in), 0 as the remote end's (see `Proto`).
    let kind_code = match dir {
        Dir::Out => ICMP_ECHO_REQUEST,
        _ => ICMP_ECHO_REPLY,
    };
    a.ldx_h(R1, R10, IP + 20).jne_imm(R1, kind_code, pass);
    a.ldx_w(R1, R10, IP + 12).stx_w(R10, R1, BACK_KEY);
    a.ldx_w(R1, R10, IP + 16).stx_w(R10, R1, BACK_KEY + 4);
    a.ldx_h(R2, R10, ICMP_L4.src_port.1).mov64_imm(R1, 0);
    let (ident, zero) = match dir {
        Dir::Out => (BACK_KEY + 8, BACK_KEY + 10),
        _ => (BACK_KEY + 10, BACK_KEY + 8),
    };
    a.stx_h(R10, R2, ident).stx_h(R10, R1, zero);
    emit_entry(a, maps.fd(Proto::Icmp, dir), BACK_KEY, pass);
    emit_datagram_send(a, dir, kind, &ICMP_L4, counters, pass);
}

/// R9 = the entry of `map` under the key on the stack at `key`; none: `pass`.
fn emit_entry(a: &mut Asm, map: RawFd, key: i16, pass: Label) {
    a.ld_map_fd(R1, map);
    a.mov64_reg(R2, R10).add64_imm(R2, key.into());
    a.call(Helper::MapLookupElem).jeq_imm(R0, 0, pass);
    a.mov64_reg(R9, R0);
}

/// The found datagram's (entry in R9) way on: out only from its container's veth.
fn emit_datagram_send(a: &mut Asm, dir: Dir, kind: Kind, l4: &L4, counters: RawFd, pass: Label) {
    if dir == Dir::Out {
        a.ldx_w(R1, R9, FROM).ldx_w(R2, R6, skb::IFINDEX);
        a.jne_reg(R1, R2, pass);
    }
    match kind {
        Kind::Filter => {
            a.mov32_imm(R0, 0).exit(); // the tc program's: not for the daemon
        }
        Kind::Redirect => emit_translated_send(a, dir, l4, counters),
    }
}

/// Where a protocol's header has what a rewrite changes: its checksum (in the frame), whether
/// that sums the addresses too (a pseudo-header) and whether 0 there means none (UDP); the
/// source's port and the destination's, each in the frame and on the stack (`IP`).
struct L4 {
    csum: i32,
    pseudo: bool,
    optional: bool,
    src_port: (i32, i16),
    dst_port: (i32, i16),
}

const TCP_L4: L4 = L4 {
    csum: TCP_CSUM,
    pseudo: true,
    optional: false,
    src_port: (TCP_SPORT, TCP),
    dst_port: (TCP_DPORT, TCP + 2),
};
/// UDP's ports are where TCP's are.
const UDP_L4: L4 = L4 {
    csum: 34 + 6,
    optional: true,
    ..TCP_L4
};
/// An echo's identifier stands for both ports.
const ICMP_L4: L4 = L4 {
    csum: 34 + 2,
    pseudo: false,
    optional: false,
    src_port: (34 + 4, TCP + 4),
    dst_port: (34 + 4, TCP + 4),
};

/// Writes the entry's (R9) address and port over the segment's at `ip.0` and `port.0`, whose
/// old values are on the stack at `ip.1` and `port.1`, checksums first: the IPv4 header's, then
/// the protocol's for the address (if in its pseudo-header) and the port. The helpers update a
/// partial checksum (an offloaded one, only the pseudo-header summed) as such, and leave UDP's
/// "no checksum" alone.
fn emit_rewrite(a: &mut Asm, ip: (i32, i16), port: (i32, i16), l4: &L4, shot: Label) {
    let ((ip_at, old_ip), (port_at, old_port)) = (ip, port);
    let optional = if l4.optional { BPF_F_MARK_MANGLED_0 } else { 0 };
    let mut csum = vec![(Helper::L3CsumReplace, IP_CSUM, 4)];
    if l4.pseudo {
        csum.push((
            Helper::L4CsumReplace,
            l4.csum,
            BPF_F_PSEUDO_HDR | optional | 4,
        ));
    }
    for (helper, at, flags) in csum {
        a.mov64_reg(R1, R6).mov64_imm(R2, at);
        a.ldx_w(R3, R10, old_ip)
            .ldx_w(R4, R9, ADDR)
            .mov64_imm(R5, flags);
        a.call(helper).jne_imm(R0, 0, shot);
    }
    a.mov64_reg(R1, R6).mov64_imm(R2, l4.csum);
    a.ldx_h(R3, R10, old_port)
        .ldx_h(R4, R9, PORT)
        .mov64_imm(R5, optional | 2);
    a.call(Helper::L4CsumReplace).jne_imm(R0, 0, shot);
    for (at, new, len) in [(ip_at, ADDR, 4), (port_at, PORT, 2)] {
        a.mov64_reg(R1, R6).mov64_imm(R2, at);
        a.mov64_reg(R3, R9).add64_imm(R3, new.into());
        a.mov64_imm(R4, len).mov64_imm(R5, 0);
        a.call(Helper::SkbStoreBytes).jne_imm(R0, 0, shot);
    }
}

/// Counts the frame on the entry (R9) and on the container's port as `which`.
fn emit_counts(a: &mut Asm, counters: RawFd, which: (i16, i16)) {
    a.mov64_imm(R1, 1).atomic_add_dw(R9, R1, PACKETS);
    a.ldx_w(R1, R6, skb::LEN).atomic_add_dw(R9, R1, BYTES);
    a.ldx_w(R1, R9, PORT_ID);
    emit_count(a, counters, which);
}

/// Marks the source's station (R8) used, as the fast path's own frames do.
fn emit_mark_used(a: &mut Asm) {
    let marked = a.label();
    a.ldx_w(R1, R8, STATION_USED).jne_imm(R1, 0, marked);
    a.st_w(R8, STATION_USED, 1);
    a.bind(marked);
}

/// A helper failed half-way: the frame may be half rewritten, and is no one's.
fn emit_shot(a: &mut Asm, shot: Label) {
    a.bind(shot);
    a.mov64_imm(R0, TC_ACT_SHOT).exit();
}

/// The program on an uplink's ingress: the remote ends' segments of translated connections go
/// to their containers; everything else goes on to the host.
pub(super) fn uplink_program(maps: &RelayMaps, counters: RawFd) -> Result<Vec<Insn>, AsmError> {
    let mut a = Asm::new();
    let pass = a.label();
    a.mov64_reg(R6, R1);
    emit(&mut a, Dir::In, Kind::Redirect, maps, counters, pass);
    a.bind(pass);
    a.mov64_imm(R0, TC_NEXT).exit();
    a.finish()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use vswitch_switch::MacAddr;

    use super::*;
    use crate::bpf::fastpath::{FastPath, PortCounts, SrcCheck, Station, NAT_MARK, TC_NEXT};
    use crate::bpf::sys::test_run_out;
    use crate::bpf::tests::need_root;

    const TC_ACT_REDIRECT: u32 = 7;
    const GATEWAY_MAC: [u8; 6] = [2, 0, 10, 1, 1, 1];
    const CONTAINER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa];

    fn sa(ip: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(ip), port)
    }

    /// The Internet checksum of `data`, folded, not complemented.
    fn sum(data: &[u8]) -> u16 {
        let mut s: u32 = data
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// The TCP checksum field `frame` should carry (0 where it does).
    fn tcp_sum(frame: &[u8]) -> u16 {
        let ip = &frame[14..34];
        let tcp = &frame[34..];
        let mut pseudo = Vec::from(&ip[12..20]);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(tcp);
        !sum(&pseudo)
    }

    /// An Ethernet frame with a TCP segment from `src` to `dst`, checksums right.
    fn segment(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: SocketAddrV4,
        dst: SocketAddrV4,
        flags: u8,
    ) -> Vec<u8> {
        let payload = b"hello, relay";
        let mut f = Vec::new();
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 20 + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&src.ip().octets());
        f.extend_from_slice(&dst.ip().octets());
        let ip_sum = !sum(&f[14..34]);
        f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        f.extend_from_slice(&src.port().to_be_bytes());
        f.extend_from_slice(&dst.port().to_be_bytes());
        f.extend_from_slice(&[
            0, 0, 0, 100, 0, 0, 0, 200, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        f.extend_from_slice(payload);
        let t = tcp_sum(&f);
        f[50..52].copy_from_slice(&t.to_be_bytes());
        f
    }

    /// (source, destination) of a frame's segment, and whether both checksums are right.
    fn ends(frame: &[u8]) -> (SocketAddrV4, SocketAddrV4, bool) {
        let ip = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
        let port = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
        let ok = sum(&frame[14..34]) == 0xffff && tcp_sum(frame) == 0;
        (
            SocketAddrV4::new(ip(26), port(34)),
            SocketAddrV4::new(ip(30), port(36)),
            ok,
        )
    }

    #[test]
    fn established_segments_are_rewritten_both_ways_and_only_those() {
        need_root();
        let mut fast = FastPath::load(16, None).expect("the kernel accepts the programs");
        let (container, tap) = (PortId(1), PortId(0));
        for p in [container, tap] {
            fast.clear_counts(p).unwrap();
        }
        // A test run's frame comes in on loopback (ifindex 1): the container's veth here.
        let station = Station {
            ifindex: 1,
            port: container,
            check: SrcCheck::None,
        };
        // The host's station too, as the daemon has it: a segment to the gateway's MAC but not
        // to the gateway's address is still the relay's.
        let host = Station {
            ifindex: 99,
            port: tap,
            check: SrcCheck::Host(Ipv4Addr::new(10, 1, 1, 1)),
        };
        let stations = [
            (MacAddr(CONTAINER_MAC), station),
            (MacAddr(GATEWAY_MAC), host),
        ];
        fast.sync(&HashMap::from(stations)).unwrap();
        let maps: Arc<RelayMaps> = fast.relay_maps_for_tests();
        let (c, remote, relay) = (
            sa([10, 1, 1, 10], 5000),
            sa([198, 51, 100, 7], 80),
            sa([10, 1, 1, 1], 41000),
        );
        let out = Rule {
            proto: Proto::Tcp,
            src: c,
            dst: remote,
            to: relay,
            veth: 1,
            port: container,
        };
        let back = Rule {
            proto: Proto::Tcp,
            src: relay,
            dst: c,
            to: remote,
            veth: 1,
            port: container,
        };
        maps.install(&out, &back, 7).unwrap();
        let (veth_prog, tap_prog) = fast.programs();
        const ACK: u8 = 0x10;

        // Out: to the relay, checksums still right.
        let frame = segment(GATEWAY_MAC, CONTAINER_MAC, c, remote, ACK);
        let (verdict, rewritten) = test_run_out(veth_prog, &frame, 0).unwrap();
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(ends(&rewritten), (c, relay, true));
        assert_eq!(
            rewritten[..14],
            frame[..14],
            "the MACs are the TAP's already"
        );
        assert_eq!(rewritten[54..], frame[54..], "the payload");
        // Back: from the remote end.
        let frame = segment(CONTAINER_MAC, GATEWAY_MAC, relay, c, ACK | 0x08);
        let (verdict, rewritten) = test_run_out(tap_prog, &frame, NAT_MARK).unwrap();
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(ends(&rewritten), (remote, c, true));

        // What the NAT must see, and what is not this connection's, goes on.
        let next = TC_NEXT as u32;
        for (flags, what) in [(0x02, "SYN"), (0x11, "FIN"), (0x14, "RST")] {
            let frame = segment(GATEWAY_MAC, CONTAINER_MAC, c, remote, flags);
            assert_eq!(
                test_run_out(veth_prog, &frame, 0).unwrap().0,
                next,
                "{what}"
            );
            let frame = segment(CONTAINER_MAC, GATEWAY_MAC, relay, c, flags);
            assert_eq!(
                test_run_out(tap_prog, &frame, NAT_MARK).unwrap().0,
                next,
                "{what} back"
            );
        }
        let other = segment(
            GATEWAY_MAC,
            CONTAINER_MAC,
            c,
            sa([198, 51, 100, 7], 81),
            ACK,
        );
        assert_eq!(
            test_run_out(veth_prog, &other, 0).unwrap().0,
            next,
            "another connection"
        );
        let mut fragment = segment(GATEWAY_MAC, CONTAINER_MAC, c, remote, ACK);
        fragment[20] |= 0x20; // more fragments
        assert_eq!(
            test_run_out(veth_prog, &fragment, 0).unwrap().0,
            next,
            "a fragment"
        );
        let stranger = segment(GATEWAY_MAC, [2, 0, 0, 0, 0, 0xb], c, remote, ACK);
        assert_eq!(
            test_run_out(veth_prog, &stranger, 0).unwrap().0,
            next,
            "an unknown MAC"
        );
        // Only from the container's own veth.
        let elsewhere = Rule { veth: 77, ..out };
        maps.install(&elsewhere, &back, 7).unwrap();
        let frame = segment(GATEWAY_MAC, CONTAINER_MAC, c, remote, ACK);
        assert_eq!(
            test_run_out(veth_prog, &frame, 0).unwrap().0,
            next,
            "another veth"
        );

        // Counted per connection (IPv4 bytes) and on both ports; gone once removed.
        let len = frame.len() as u64 - 14;
        let (o, b) = maps.traffic(&out, &back);
        assert_eq!((o.packets, o.bytes), (0, 0), "the entry was replaced");
        assert_eq!((b.packets, b.bytes), (0, 0));
        maps.install(&out, &back, 7).unwrap();
        test_run_out(veth_prog, &frame, 0).unwrap();
        let (o, _) = maps.traffic(&out, &back);
        assert_eq!((o.packets, o.bytes), (1, len));
        let counts = fast.counts(container);
        assert_eq!((counts.rx_frames, counts.tx_frames), (2, 1));
        let PortCounts {
            rx_frames,
            tx_frames,
            ..
        } = fast.counts(tap);
        assert_eq!((rx_frames, tx_frames), (1, 2));
        maps.remove(&out, &back);
        assert_eq!(
            test_run_out(veth_prog, &frame, 0).unwrap().0,
            next,
            "removed"
        );
        assert_eq!(maps.traffic(&out, &back), Default::default());
    }

    /// The programs, with one container's station (port 1) on loopback (a test run's frames
    /// come in there), and their relay maps.
    fn one_container() -> (FastPath, Arc<RelayMaps>, PortId) {
        need_root();
        let mut fast = FastPath::load(16, None).expect("the kernel accepts the programs");
        let container = PortId(1);
        fast.clear_counts(container).unwrap();
        let station = Station {
            ifindex: 1,
            port: container,
            check: SrcCheck::None,
        };
        fast.sync(&HashMap::from([(MacAddr(CONTAINER_MAC), station)]))
            .unwrap();
        let maps = fast.relay_maps_for_tests();
        (fast, maps, container)
    }

    #[test]
    fn translated_segments_leave_from_the_host_and_come_back_to_the_container() {
        let (fast, maps, container) = one_container();
        let (c, remote, host) = (
            sa([10, 1, 1, 10], 5000),
            sa([198, 51, 100, 7], 80),
            sa([192, 0, 2, 1], 5000),
        );
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&CONTAINER_MAC);
        macs[6..].copy_from_slice(&GATEWAY_MAC);
        let t = Translation {
            proto: Proto::Tcp,
            container: c,
            remote,
            host,
            uplink: 1,
            veth: 1,
            port: container,
            macs,
        };
        maps.translate(&t, 42).unwrap();
        let mut events = maps.take_events().expect("the ring");
        let (veth_prog, tap_prog) = fast.programs();
        let uplink_prog = fast.uplink_program();
        const SYN: u8 = 0x02;
        const ACK: u8 = 0x10;
        const FIN: u8 = 0x01;

        // Out, the SYN included: from the host's address and port, checksums right.
        for flags in [SYN, ACK, FIN | ACK] {
            let frame = segment(GATEWAY_MAC, CONTAINER_MAC, c, remote, flags);
            let (verdict, rewritten) = test_run_out(veth_prog, &frame, 0).unwrap();
            assert_eq!(verdict, TC_ACT_REDIRECT, "flags {flags:#x}");
            assert_eq!(ends(&rewritten), (host, remote, true));
            assert_eq!(rewritten[54..], frame[54..], "the payload");
        }
        // In: to the container, from the gateway's MAC to the container's.
        let uplink_mac = [2, 0, 0xc0, 0, 2, 1];
        let frame = segment(uplink_mac, [2, 0, 0, 0, 0, 0x77], remote, host, SYN | ACK);
        let (verdict, rewritten) = test_run_out(uplink_prog, &frame, 0).unwrap();
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(ends(&rewritten), (remote, c, true));
        assert_eq!(rewritten[..12], macs);

        // The flags seen each way, and what went.
        let (out, back) = t.rules();
        let (o, b) = maps.traffic(&out, &back);
        assert_eq!((o.packets, o.flags), (3, SYN | ACK | FIN));
        assert_eq!((b.packets, b.flags), (1, SYN | ACK));
        let counts = fast.counts(container);
        assert_eq!((counts.rx_frames, counts.tx_frames), (3, 1));
        // The SYN, the FIN and the answer were told at once; nothing else was.
        let mut told = Vec::new();
        let parse = |r: &[u8]| Event::parse(r).map(|e| (e.flags, e.out(), e.container, e.remote));
        events.drain(|r| told.push(parse(r)));
        let ev = |flags, out| Some((flags, out, c, remote));
        let (syn, fin, answer) = (
            ev(SYN, true),
            ev(SYN | ACK | FIN, true),
            ev(SYN | ACK, false),
        );
        assert_eq!(told, [syn, fin, answer]);
        let frame = segment(uplink_mac, [2, 0, 0, 0, 0, 0x77], remote, host, 0x04);
        test_run_out(uplink_prog, &frame, 0).unwrap();
        events.drain(|r| told.push(parse(r)));
        let rst = ev(SYN | ACK | 0x04, false);
        assert_eq!(told, [syn, fin, answer, rst], "a RST back");
        // The container opens a new connection on the same ports: both notes start again.
        let frame = segment(GATEWAY_MAC, CONTAINER_MAC, c, remote, SYN);
        test_run_out(veth_prog, &frame, 0).unwrap();
        let (o, b) = maps.traffic(&out, &back);
        assert_eq!((o.flags, b.flags), (SYN, 0));
        events.drain(|r| told.push(parse(r)));
        assert_eq!(told.last(), Some(&syn));

        // The host's own traffic on the uplink, and the TAP's program, leave it alone.
        let next = TC_NEXT as u32;
        let other = segment(
            uplink_mac,
            [2, 0, 0, 0, 0, 0x77],
            remote,
            sa([192, 0, 2, 1], 5001),
            ACK,
        );
        assert_eq!(test_run_out(uplink_prog, &other, 0).unwrap().0, next);
        let relayish = segment(CONTAINER_MAC, GATEWAY_MAC, remote, host, ACK);
        assert_eq!(test_run_out(tap_prog, &relayish, NAT_MARK).unwrap().0, next);
        maps.remove(&out, &back);
        let frame = segment(uplink_mac, [2, 0, 0, 0, 0, 0x77], remote, host, ACK);
        assert_eq!(
            test_run_out(uplink_prog, &frame, 0).unwrap().0,
            next,
            "removed"
        );
    }

    /// An Ethernet frame with a UDP datagram (`checksum`: with one, else 0) or an echo (`udp`
    /// false: ICMP type `icmp_type`, identifier `src`'s port) from `src` to `dst`.
    fn datagram(
        macs: ([u8; 6], [u8; 6]),
        src: SocketAddrV4,
        dst: SocketAddrV4,
        l4: Datagram,
    ) -> Vec<u8> {
        let payload = b"datagram payload";
        let mut f = Vec::new();
        f.extend_from_slice(&macs.0);
        f.extend_from_slice(&macs.1);
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + payload.len()) as u16;
        let proto = if let Datagram::Echo(_) = l4 { 1 } else { 17 };
        f.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&src.ip().octets());
        f.extend_from_slice(&dst.ip().octets());
        let ip_sum = !sum(&f[14..34]);
        f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        match l4 {
            Datagram::Udp(_) => {
                f.extend_from_slice(&src.port().to_be_bytes());
                f.extend_from_slice(&dst.port().to_be_bytes());
                f.extend_from_slice(&(total - 20).to_be_bytes());
                f.extend_from_slice(&[0, 0]);
            }
            Datagram::Echo(kind) => {
                f.extend_from_slice(&[kind, 0, 0, 0]);
                f.extend_from_slice(&src.port().to_be_bytes());
                f.extend_from_slice(&[0, 7]);
            }
        }
        f.extend_from_slice(payload);
        let l4_sum = match l4 {
            Datagram::Udp(true) => udp_sum(&f),
            Datagram::Udp(false) => 0,
            Datagram::Echo(_) => !sum(&f[34..]),
        };
        let at = if proto == 17 { 40 } else { 36 };
        f[at..at + 2].copy_from_slice(&l4_sum.to_be_bytes());
        f
    }

    #[derive(Clone, Copy)]
    enum Datagram {
        /// With a checksum or without.
        Udp(bool),
        /// Its ICMP type.
        Echo(u8),
    }

    /// The sum of a UDP datagram's pseudo-header and datagram (0xffff if its checksum is right).
    fn udp_sum(frame: &[u8]) -> u16 {
        let mut pseudo = Vec::from(&frame[26..34]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&((frame.len() - 34) as u16).to_be_bytes());
        pseudo.extend_from_slice(&frame[34..]);
        !sum(&pseudo)
    }

    /// (source, destination) of a frame's datagram (an echo: its identifier as the source's
    /// port, 0 as the destination's), and whether its checksums are right (UDP's when it has
    /// one).
    fn datagram_ends(frame: &[u8]) -> (SocketAddrV4, SocketAddrV4, bool) {
        let ip = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
        let port = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
        let (sport, dport, l4_ok) = match frame[23] {
            17 => (port(34), port(36), port(40) == 0 || udp_sum(frame) == 0),
            _ => (port(38), 0, sum(&frame[34..]) == 0xffff),
        };
        let ok = sum(&frame[14..34]) == 0xffff && l4_ok;
        (
            SocketAddrV4::new(ip(26), sport),
            SocketAddrV4::new(ip(30), dport),
            ok,
        )
    }

    #[test]
    fn udp_flows_and_echoes_leave_from_the_host_and_come_back_to_the_container() {
        let (fast, maps, container) = one_container();
        let (veth_prog, _) = fast.programs();
        let uplink_prog = fast.uplink_program();
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&CONTAINER_MAC);
        macs[6..].copy_from_slice(&GATEWAY_MAC);
        let remote_macs = ([2, 0, 0xc0, 0, 2, 1], [2, 0, 0, 0, 0, 0x77]);
        let out_macs = (GATEWAY_MAC, CONTAINER_MAC);
        let (next, kernel, daemon) = (TC_NEXT as u32, 0, u32::MAX);
        // A UDP flow, and an echo (identifier 0x1234 in the container, 0x0042 on the host).
        let udp = Translation {
            proto: Proto::Udp,
            container: sa([10, 1, 1, 10], 5000),
            remote: sa([198, 51, 100, 7], 53),
            host: sa([192, 0, 2, 1], 41000),
            uplink: 1,
            veth: 1,
            port: container,
            macs,
        };
        let echo = Translation {
            proto: Proto::Icmp,
            container: sa([10, 1, 1, 10], 0x1234),
            remote: sa([198, 51, 100, 7], 0),
            host: sa([192, 0, 2, 1], 0x42),
            ..udp
        };
        let echo_reply = sa([198, 51, 100, 7], 0x42);
        let cases = [
            (udp, Datagram::Udp(true), Datagram::Udp(true), udp.remote),
            (udp, Datagram::Udp(false), Datagram::Udp(false), udp.remote),
            (echo, Datagram::Echo(8), Datagram::Echo(0), echo_reply),
        ];
        for (t, out_l4, in_l4, replier) in cases {
            let what = format!("{:?} {}", t.proto, matches!(out_l4, Datagram::Udp(true)));
            let request = datagram(out_macs, t.container, t.remote, out_l4);
            assert_eq!(
                run_filter(&fast, &request),
                daemon,
                "{what}: not carried yet"
            );
            let (verdict, _) = test_run_out(veth_prog, &request, 0).unwrap();
            assert_eq!(verdict, next, "{what}: not carried yet");
            maps.translate(&t, 0).unwrap();

            // Out: the kernel's, from the host's address and port (identifier).
            assert_eq!(run_filter(&fast, &request), kernel, "{what}");
            let (verdict, rewritten) = test_run_out(veth_prog, &request, 0).unwrap();
            assert_eq!(verdict, TC_ACT_REDIRECT, "{what}");
            assert_eq!(
                datagram_ends(&rewritten),
                (t.host, t.remote, true),
                "{what}"
            );
            assert_eq!(rewritten[42..], request[42..], "{what}: the payload");
            if let Datagram::Udp(false) = out_l4 {
                assert_eq!(rewritten[40..42], [0, 0], "no checksum stays none");
            }
            // In: to the container, with its MACs.
            let reply = datagram(remote_macs, replier, t.host, in_l4);
            let (verdict, rewritten) = test_run_out(uplink_prog, &reply, 0).unwrap();
            assert_eq!(verdict, TC_ACT_REDIRECT, "{what} back");
            // An echo reply's identifier is the container's again (its source's port here).
            let back_port = match t.proto {
                Proto::Icmp => t.container.port(),
                _ => t.remote.port(),
            };
            let back_to = (
                SocketAddrV4::new(*t.remote.ip(), back_port),
                *t.container.ip(),
            );
            let (src, dst, ok) = datagram_ends(&rewritten);
            assert!(ok, "{what} back: checksums");
            assert_eq!((src, *dst.ip()), back_to, "{what} back");
            if t.proto == Proto::Udp {
                assert_eq!(dst, t.container, "{what} back");
            }
            assert_eq!(rewritten[..12], macs, "{what} back");
            let (o, b) = maps.traffic(&t.rules().0, &t.rules().1);
            assert_eq!((o.packets, b.packets), (1, 1), "{what}: counted");

            // Not the flow's: another veth, another port, an echo's reply going out.
            let elsewhere = Translation { veth: 77, ..t };
            maps.translate(&elsewhere, 0).unwrap();
            assert_eq!(run_filter(&fast, &request), daemon, "{what}: another veth");
            maps.translate(&t, 0).unwrap();
            let other = SocketAddrV4::new(*t.container.ip(), t.container.port() + 1);
            let stranger = datagram(out_macs, other, t.remote, out_l4);
            assert_eq!(run_filter(&fast, &stranger), daemon, "{what}: another flow");
            if let Datagram::Echo(_) = out_l4 {
                let wrong = datagram(out_macs, t.container, t.remote, Datagram::Echo(0));
                assert_eq!(run_filter(&fast, &wrong), daemon, "an echo reply out");
            }
            let mut dying = request.clone();
            dying[22] = 1; // TTL (the checksum no matter: the filter reads no further)
            assert_eq!(run_filter(&fast, &dying), daemon, "{what}: TTL 1");
            maps.remove(&t.rules().0, &t.rules().1);
            assert_eq!(run_filter(&fast, &request), daemon, "{what}: removed");
            let (verdict, _) = test_run_out(uplink_prog, &reply, 0).unwrap();
            assert_eq!(verdict, next, "{what}: removed");
        }
        // A TCP connection on the UDP flow's addresses and ports is not the flow.
        maps.translate(&udp, 0).unwrap();
        let segment = segment(GATEWAY_MAC, CONTAINER_MAC, udp.container, udp.remote, 0x10);
        assert_eq!(run_filter(&fast, &segment), daemon, "TCP");
        let counts = fast.counts(container);
        assert_eq!((counts.rx_frames, counts.tx_frames), (3, 3));
    }

    /// Runs the packet sockets' filter on `frame` as a packet socket does, the Ethernet header
    /// included (a test run of a socket filter starts at the network header: a header ahead of
    /// the frame's is taken off first).
    fn run_filter(fast: &FastPath, frame: &[u8]) -> u32 {
        let mut f = frame[..14].to_vec();
        f.extend_from_slice(frame);
        crate::bpf::sys::test_run(fast.filter_for_tests(), &f).unwrap()
    }

    #[test]
    fn a_served_containers_syn_opens_its_connection_in_the_kernel() {
        need_root();
        let mut fast = FastPath::load(16, None).expect("the kernel accepts the programs");
        let (container, other) = (PortId(1), PortId(2));
        let other_mac = [2, 0, 0, 0, 0, 0xb];
        let station = |port| Station {
            ifindex: 1,
            port,
            check: SrcCheck::None,
        };
        let stations = [
            (MacAddr(CONTAINER_MAC), station(container)),
            (MacAddr(other_mac), station(other)),
        ];
        fast.sync(&HashMap::from(stations)).unwrap();
        let maps: Arc<RelayMaps> = fast.relay_maps_for_tests();
        let mut events = maps.take_events().expect("the ring");
        let (c, c2, remote) = (
            sa([10, 1, 1, 10], 5000),
            sa([10, 1, 1, 11], 5000),
            sa([198, 51, 100, 7], 80),
        );
        let host = Ipv4Addr::new(192, 0, 2, 1);
        let served = HashMap::from([(*c.ip(), (container, 1)), (*c2.ip(), (other, 1))]);
        maps.serve(&served, GATEWAY_MAC);
        maps.route(*remote.ip(), 5, host);
        let (veth_prog, _) = fast.programs();
        const SYN: u8 = 0x02;
        const ACK: u8 = 0x10;
        let (daemon, kernel) = (u32::MAX, 0);
        // Served, but granted nothing yet: the daemon's.
        let syn = segment(GATEWAY_MAC, CONTAINER_MAC, c, remote, SYN);
        assert_eq!(run_filter(&fast, &syn), daemon, "no credits");
        maps.grant(*c.ip(), (container, 1), GATEWAY_MAC, 1);
        maps.grant(*c2.ip(), (other, 1), GATEWAY_MAC, 5);

        // The SYN is the kernel's: both entries, and the daemon told.
        assert_eq!(run_filter(&fast, &syn), kernel);
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&CONTAINER_MAC);
        macs[6..].copy_from_slice(&GATEWAY_MAC);
        let t = Translation {
            proto: Proto::Tcp,
            container: c,
            remote,
            host: SocketAddrV4::new(host, c.port()),
            uplink: 5,
            veth: 1,
            port: container,
            macs,
        };
        assert_eq!(maps.translation(c, remote), Some(t));
        let mut told = Vec::new();
        events.drain(|r| told.push(Event::parse(r)));
        let opened = Event {
            flags: SYN,
            kind: EventKind::Opened,
            container: c,
            remote,
            seq: 100,
            len: (syn.len() - 14) as u16,
        };
        assert_eq!(told, [Some(opened)]);
        // The tc program sends it from the host, as any of the connection's segments, and
        // tells nothing more; the filter leaves the SYN sent again to it too.
        let (verdict, rewritten) = test_run_out(veth_prog, &syn, 0).unwrap();
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(ends(&rewritten), (t.host, remote, true));
        assert_eq!(run_filter(&fast, &syn), kernel, "the SYN again");
        told.clear();
        events.drain(|r| told.push(Event::parse(r)));
        assert_eq!(told, [], "no event for the SYN sent on, or sent again");

        // The daemon's: no credits left, no route found lately, not a SYN alone, another
        // container's veth, and another connection's four-tuple on the host (c2 on the same
        // port to the same remote).
        let elsewhere = sa([198, 51, 100, 8], 80);
        let c_next = sa([10, 1, 1, 10], 5003);
        let cases = [
            (
                segment(GATEWAY_MAC, CONTAINER_MAC, c_next, remote, SYN),
                "the one credit used",
            ),
            (
                segment(GATEWAY_MAC, other_mac, c2, elsewhere, SYN),
                "no route",
            ),
            (
                segment(
                    GATEWAY_MAC,
                    CONTAINER_MAC,
                    sa([10, 1, 1, 10], 5001),
                    remote,
                    ACK,
                ),
                "an ACK",
            ),
            (
                segment(GATEWAY_MAC, other_mac, c2, remote, SYN),
                "the host's four-tuple taken",
            ),
        ];
        for (frame, what) in &cases {
            assert_eq!(run_filter(&fast, frame), daemon, "{what}");
        }
        assert_eq!(
            maps.translation(c2, remote),
            None,
            "nothing stays of a refusal"
        );
        let c3 = sa([10, 1, 1, 10], 5002);
        maps.grant(*c.ip(), (container, 77), GATEWAY_MAC, 5);
        let syn = segment(GATEWAY_MAC, CONTAINER_MAC, c3, remote, SYN);
        assert_eq!(run_filter(&fast, &syn), daemon, "another veth");
        maps.serve(&HashMap::new(), GATEWAY_MAC);
        assert_eq!(run_filter(&fast, &syn), daemon, "not served");
        assert_eq!(maps.translation(c3, remote), None);
        told.clear();
        events.drain(|r| told.push(Event::parse(r)));
        assert_eq!(told, [], "no event for what the daemon gets");
    }
}
