//! The kernel fast path: forwarding decisions the switch has already made, replayed in the
//! kernel so that those frames never cross into the daemon.
//!
//! A unicast frame from one container to another, whose source lives on the port it came in by
//! and whose destination on another container's port, needs nothing of the daemon: the switch
//! would send it on unchanged. For those frames a tc program on the host end of each veth (tcx
//! ingress) looks both MACs up in a BPF hash map of stations that the daemon keeps (`sync`: the
//! plugged containers' own MACs, and what its forwarding table learned on their ports), counts
//! the frame on both ports and hands it to the destination's veth peer inside its container
//! (`bpf_redirect_peer`), in the sender's own softirq, as a kernel bridge would. Everything else
//! (ARP, broadcast, unknown or aged destinations, the TAP and so the NAT, a MAC that moved) goes
//! to the daemon through the AF_PACKET sockets as before, and the switch's decisions reach the
//! map within one manager tick.
//!
//! The packet sockets see every frame before tc runs (the kernel delivers to taps first), so a
//! socket filter that runs the same lookup drops, for the daemon, the frames the fast path
//! takes. The program marks each source station it forwards for as used; the daemon refreshes
//! (or learns) those MACs in its forwarding table, so they age as if the switch had seen their
//! frames.
//!
//! Port security holds on the fast path too: a frame takes it only if its source MAC is a
//! station of the port it came in by (so a forged source MAC never does), and a station of a
//! checked port carries the one prefix its IPv4 sources must be in (`SrcCheck`): its frames
//! take the fast path only as untagged IPv4 from that prefix. Everything else (ARP, other
//! EtherTypes, a forged source address, a port whose sources no single prefix describes) goes
//! to the daemon, which drops and counts what is spoofed. Isolated ports have no stations in
//! the map: the daemon carries (and refuses) their frames.

use std::collections::HashMap;
use std::io;
use std::mem::offset_of;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use std::net::Ipv4Addr;

use vswitch_switch::{Ipv4Prefix, MacAddr, PortId};

use super::asm::{skb, Asm, AsmError, Helper, Insn, R0, R1, R10, R2, R3, R4, R6, R7, R8};
use super::map::{Map, PerCpuMap, Pod};
use super::pins::Pins;
use super::relay::{self, RelayMaps, BPF_F_INGRESS};
use super::sys::{
    link_update, load_program, obj_get, obj_pin, tcx_attach, tcx_supported, ProgType,
};
use crate::kernel::netlink::{Netlink, NetlinkError, TcHook};

/// Ports with an id below this can use the fast path (the counter array is this long).
pub const MAX_PORTS: u16 = 1024;

/// Where a MAC lives: the host end of its container's veth, and what frames from it may take
/// the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Station {
    pub ifindex: u32,
    pub port: PortId,
    pub check: SrcCheck,
}

/// What the program checks of a frame from a station before it takes the fast path (port
/// security, see `vswitch_switch::PortPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrcCheck {
    /// Nothing: a trusted port.
    None,
    /// Untagged IPv4 whose source address is in the prefix; anything else goes to the daemon.
    Ipv4(Ipv4Prefix),
    /// Nothing from this station takes the fast path (its port's policy is more than one
    /// prefix); frames to it still may.
    Daemon,
    /// The host's own station (the gateway's MAC on the TAP): its frames are trusted; a frame to
    /// it takes the fast path only as untagged IPv4 to this address (the host itself, not the
    /// NAT), into the TAP's ingress.
    Host(Ipv4Addr),
}

/// `Value::flags`.
const SRC_IPV4: u32 = 1;
const SRC_DAEMON: u32 = 2;
const HOST: u32 = 4;

impl SrcCheck {
    /// (flags, address, mask), the address and mask as the frame's bytes read as a u32.
    fn encode(self) -> (u32, u32, u32) {
        match self {
            SrcCheck::None => (0, 0, 0),
            SrcCheck::Ipv4(p) => (
                SRC_IPV4,
                u32::from_ne_bytes(p.addr().octets()),
                u32::from_ne_bytes(p.mask().to_be_bytes()),
            ),
            SrcCheck::Daemon => (SRC_DAEMON, 0, 0),
            SrcCheck::Host(ip) => (HOST, u32::from_ne_bytes(ip.octets()), 0),
        }
    }

    fn decode(flags: u32, ip: u32, mask: u32) -> SrcCheck {
        let len = u32::from_be_bytes(mask.to_ne_bytes()).count_ones() as u8;
        let prefix = Ipv4Prefix::new(Ipv4Addr::from(ip.to_ne_bytes()), len);
        match (flags, prefix) {
            (0, _) => SrcCheck::None,
            (SRC_IPV4, Some(prefix)) => SrcCheck::Ipv4(prefix),
            (HOST, _) => SrcCheck::Host(Ipv4Addr::from(ip.to_ne_bytes())),
            _ => SrcCheck::Daemon,
        }
    }
}

/// The stations map's key: a MAC and two bytes of zeros.
type Key = [u8; 8];

/// The stations map and the counters pinned in `pins` by a previous daemon, or new ones pinned
/// there (a previous daemon's maps of another shape are replaced).
fn open_or_pin(
    pins: &Pins,
    entries: u32,
) -> io::Result<(Map<Key, Value>, PerCpuMap<u32, PortCounts>)> {
    let ports = u32::from(MAX_PORTS);
    if pins.exists(STATIONS) && pins.exists(COUNTERS) {
        let stations = Map::open_hash(&pins.path(STATIONS), entries);
        let counters = PerCpuMap::open_array(&pins.path(COUNTERS), ports);
        if let (Ok(s), Ok(c)) = (stations, counters) {
            return Ok((s, c));
        }
    }
    pins.unpin(STATIONS);
    pins.unpin(COUNTERS);
    let (stations, counters) = (Map::hash(entries)?, PerCpuMap::array(ports)?);
    stations.pin(&pins.path(STATIONS))?;
    counters.pin(&pins.path(COUNTERS))?;
    Ok((stations, counters))
}

fn mac_of(key: Key) -> MacAddr {
    let [a, b, c, d, e, f, ..] = key;
    MacAddr([a, b, c, d, e, f])
}

fn key(mac: MacAddr) -> Key {
    let m = mac.0;
    [m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]
}

/// The stations map's value, as the programs read it.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Value {
    ifindex: u32,
    port: u32,
    /// Set by the program when it forwards a frame from this MAC, cleared by [`FastPath::used`].
    used: u32,
    /// `SRC_IPV4`, `SRC_DAEMON` or 0 (see [`SrcCheck`]).
    flags: u32,
    /// With `SRC_IPV4`: a frame's source address, masked with `mask`, must be `ip` (both as
    /// the frame's four bytes read as a u32).
    ip: u32,
    mask: u32,
}
const _: () = assert!(size_of::<Value>() == 6 * 4, "no padding");
// SAFETY: `#[repr(C)]`, six u32 and no padding (asserted above): any bits are a valid `Value`.
unsafe impl Pod for Value {}

/// Traffic the fast path carried for one port (the switch's view: rx = from the container).
/// Also the counters map's value, of which the program keeps one per CPU.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PortCounts {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
}
const _: () = assert!(size_of::<PortCounts>() == 4 * 8, "no padding");
// SAFETY: `#[repr(C)]`, four u64 and no padding (asserted above): any bits are a valid value.
unsafe impl Pod for PortCounts {}

/// A field's offset in one of our map values, as a load's or store's offset.
pub(super) const fn field(offset: usize) -> i16 {
    assert!(offset <= i16::MAX as usize);
    offset as i16
}

/// The programs' stack, below the frame pointer: the two stations' keys, a port's key in the
/// counters map, and the frame's first `HDR_LEN` bytes (its two MACs, its EtherType and, for
/// IPv4, the header up to the source address), placed so that every field is naturally
/// aligned: destination MAC at `HDR` (2 bytes, then 4), source MAC at `HDR + 6` (4, then 2),
/// EtherType at `HDR + 12`, the IPv4 source at `HDR + 26`.
const DST_KEY: i16 = -8;
const SRC_KEY: i16 = -16;
const PORT_KEY: i16 = -20;
const HDR: i16 = -62;
const HDR_LEN: i32 = 30;
const ETHERTYPE: i16 = HDR + 12;
const IPV4_SRC: i16 = HDR + 26;
/// A frame's IPv4 destination, loaded on its own (where the frame's destination is the host),
/// and where it is in the frame.
const IPV4_DST: i16 = -28;
const IPV4_DST_AT: i32 = 30;
const _: () = assert!(
    HDR.rem_euclid(4) == 2 && IPV4_SRC.rem_euclid(4) == 0 && HDR + HDR_LEN as i16 <= PORT_KEY
);
/// The IPv4 EtherType as a little-endian load of its two bytes reads it.
pub(super) const ETHERTYPE_IPV4: i32 = u16::from_ne_bytes(0x0800u16.to_be_bytes()) as i32;

/// The tc program's verdict for a frame it leaves alone: `TCX_NEXT` on a tcx link and
/// `TC_ACT_UNSPEC` in a direct-action cls_bpf filter, both -1 and both "go on" (to the next
/// program or filter, then the stack, where the packet sockets already have the frame).
pub(super) const TC_NEXT: i32 = -1;
/// What `bpf_redirect_peer` returns on success and the program returns in turn:
/// `TC_ACT_REDIRECT`, which both hooks carry out (`TCX_REDIRECT` is the same 7).
#[cfg(test)]
const TC_ACT_REDIRECT: u32 = 7;

#[derive(Clone, Copy)]
pub(super) enum Kind {
    /// The tc program: forwards what it can, passes the rest on.
    Redirect,
    /// The packet sockets' filter: drops what the tc program will forward.
    Filter,
}

/// A port's counters in the counters map: (frames, bytes) received and sent.
pub(super) const RX: (i16, i16) = (
    field(offset_of!(PortCounts, rx_frames)),
    field(offset_of!(PortCounts, rx_bytes)),
);
pub(super) const TX: (i16, i16) = (
    field(offset_of!(PortCounts, tx_frames)),
    field(offset_of!(PortCounts, tx_bytes)),
);
/// A station's `used` mark, for the relayed segments' part of the program (`relay`).
pub(super) const STATION_USED: i16 = field(offset_of!(Value, used));

/// Adds the frame (context in R6) to this CPU's `(frames, bytes)` counters of the port whose id
/// is in R1.
pub(super) fn emit_count(a: &mut Asm, counters: RawFd, (frames, bytes): (i16, i16)) {
    let counted = a.label();
    a.stx_w(R10, R1, PORT_KEY);
    a.ld_map_fd(R1, counters);
    a.mov64_reg(R2, R10).add64_imm(R2, PORT_KEY.into());
    a.call(Helper::MapLookupElem);
    a.jeq_imm(R0, 0, counted);
    a.ldx_dw(R1, R0, frames)
        .add64_imm(R1, 1)
        .stx_dw(R0, R1, frames);
    a.ldx_dw(R1, R0, bytes).ldx_w(R2, R6, skb::LEN);
    a.add64_reg(R1, R2).stx_dw(R0, R1, bytes);
    a.bind(counted);
}

/// Where a program runs: on a container's veth (its ingress), or on the TAP's egress.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    Veth,
    Tap,
}

/// `skb->pkt_type` of a frame the interface sends (<linux/if_packet.h>).
const PACKET_OUTGOING: i32 = 4;

/// The fast path's `skb->mark` on the host's sockets whose segments the NAT translates (the
/// relay's side of a relayed or published connection): the TAP's program leaves those to the
/// NAT (or to the relayed connections' map) and carries only what the host itself sends.
pub const NAT_MARK: u32 = 0x7673_0000;

/// The program of either kind: the same decision, then forward (or drop, for the filter).
/// On a veth, a frame to a MAC that is no station may be a relayed TCP segment (`relay`, map
/// `relay_out`); one to the host's station goes into the TAP's ingress. On the TAP, the host's
/// relayed segments (`relay_back`) go first; then a frame of the host's own to a container
/// goes out of its veth.
//
// One listing of ~130 lines on purpose: it is one eBPF program, read top to bottom as the
// verifier reads it, its jumps to labels within it; cut into functions it would only hide
// where each label is.
fn program(
    kind: Kind,
    place: Place,
    stations: RawFd,
    counters: RawFd,
    relay: &RelayMaps,
) -> Result<Vec<Insn>, AsmError> {
    const IFINDEX: i16 = field(offset_of!(Value, ifindex));
    const PORT: i16 = field(offset_of!(Value, port));
    const FLAGS: i16 = field(offset_of!(Value, flags));
    const IP: i16 = field(offset_of!(Value, ip));
    const MASK: i16 = field(offset_of!(Value, mask));
    let mut a = Asm::new();
    // The frame is the daemon's.
    let pass = a.label();
    // The destination is no station: perhaps a relayed connection's segment to the gateway.
    let relayed = a.label();

    // r6 = skb, kept across calls.
    a.mov64_reg(R6, R1);
    if let Kind::Filter = kind {
        // What the host end sends (the fast path's frames from the TAP) is no frame for the
        // daemon: a fanout group hands it to its sockets despite their PACKET_IGNORE_OUTGOING.
        let incoming = a.label();
        a.ldx_w(R1, R6, skb::PKT_TYPE)
            .jne_imm(R1, PACKET_OUTGOING, incoming);
        a.mov32_imm(R0, 0).exit();
        a.bind(incoming);
    }
    if place == Place::Tap {
        // The host's side of a relayed connection, once established; then its other segments
        // are the NAT's (marked), and what is left is the host's own.
        let own = a.label();
        relay::emit(&mut a, relay::Dir::Back, kind, relay, counters, own);
        a.bind(own);
        a.ldx_w(R1, R6, skb::MARK)
            .jeq_imm(R1, NAT_MARK as i32, pass);
    }
    // The frame's header onto the stack.
    a.mov64_reg(R1, R6).mov64_imm(R2, 0);
    a.mov64_reg(R3, R10).add64_imm(R3, HDR.into());
    a.mov64_imm(R4, HDR_LEN).call(Helper::SkbLoadBytes);
    a.jne_imm(R0, 0, pass); // shorter than that: not a frame the fast path wants

    // A group address (broadcast, multicast) is flooded by the daemon.
    a.ldx_b(R1, R10, HDR).and64_imm(R1, 1);
    a.jne_imm(R1, 0, pass);

    // Map keys (6 bytes of MAC, 2 of zeros) from aligned loads.
    a.ldx_h(R1, R10, HDR).ldx_w(R2, R10, HDR + 2);
    a.lsh64_imm(R2, 16).or64_reg(R1, R2);
    a.stx_dw(R10, R1, DST_KEY);
    a.ldx_w(R1, R10, HDR + 6).ldx_h(R2, R10, HDR + 10);
    a.lsh64_imm(R2, 32).or64_reg(R1, R2);
    a.stx_dw(R10, R1, SRC_KEY);
    // r8 = the source's station, which must be known and live on the interface the frame came
    // in by (else it moved: the daemon learns it); r7 = the destination's.
    for (key, station, missing) in [(SRC_KEY, R8, pass), (DST_KEY, R7, relayed)] {
        let missing = match place {
            Place::Tap => pass,
            Place::Veth => missing,
        };
        a.ld_map_fd(R1, stations);
        a.mov64_reg(R2, R10).add64_imm(R2, key.into());
        a.call(Helper::MapLookupElem);
        a.jeq_imm(R0, 0, missing);
        a.mov64_reg(station, R0);
        if station == R8 {
            a.ldx_w(R1, R8, IFINDEX).ldx_w(R2, R6, skb::IFINDEX);
            a.jne_reg(R1, R2, pass);
        }
    }
    // ... on another interface (else a hairpin: the daemon drops and counts it).
    a.ldx_w(R1, R7, IFINDEX).ldx_w(R2, R6, skb::IFINDEX);
    a.jeq_reg(R1, R2, pass);

    // Port security: what the source's port may send. A trusted port's frames (and the host's)
    // go as they are; a checked port's only as untagged IPv4 from its prefix (the daemon checks
    // the rest, and drops and counts what is spoofed).
    let allowed = a.label();
    a.ldx_w(R1, R8, FLAGS).jeq_imm(R1, 0, allowed);
    a.jeq_imm(R1, HOST as i32, allowed);
    a.jne_imm(R1, SRC_IPV4 as i32, pass);
    a.ldx_w(R1, R6, skb::VLAN_PRESENT).jne_imm(R1, 0, pass);
    a.ldx_h(R1, R10, ETHERTYPE)
        .jne_imm(R1, ETHERTYPE_IPV4, pass);
    a.ldx_w(R1, R10, IPV4_SRC)
        .ldx_w(R2, R8, MASK)
        .and64_reg(R1, R2);
    a.ldx_w(R2, R8, IP).jne_reg(R1, R2, pass);
    a.bind(allowed);

    // To the host: only untagged IPv4 to the host's own address. The rest to its MAC is the
    // NAT's (perhaps a relayed connection's segment) or ARP's.
    let container = a.label();
    let not_host = match place {
        Place::Veth => relayed,
        Place::Tap => pass,
    };
    a.ldx_w(R1, R7, FLAGS).jne_imm(R1, HOST as i32, container);
    a.ldx_w(R1, R6, skb::VLAN_PRESENT).jne_imm(R1, 0, pass);
    a.ldx_h(R1, R10, ETHERTYPE)
        .jne_imm(R1, ETHERTYPE_IPV4, pass);
    a.mov64_reg(R1, R6).mov64_imm(R2, IPV4_DST_AT);
    a.mov64_reg(R3, R10).add64_imm(R3, IPV4_DST.into());
    a.mov64_imm(R4, 4).call(Helper::SkbLoadBytes);
    a.jne_imm(R0, 0, pass);
    a.ldx_w(R1, R10, IPV4_DST).ldx_w(R2, R7, IP);
    a.jne_reg(R1, R2, not_host);
    a.bind(container);

    match kind {
        Kind::Filter => {
            a.mov32_imm(R0, 0).exit(); // the fast path's: not for the daemon
        }
        Kind::Redirect => {
            // The source was seen: mark its station used.
            let marked = a.label();
            a.ldx_w(R1, R8, STATION_USED).jne_imm(R1, 0, marked);
            a.st_w(R8, STATION_USED, 1);
            a.bind(marked);
            // Count: rx on the source's port, tx on the destination's (this CPU's copy).
            for (station, which) in [(R8, RX), (R7, TX)] {
                a.ldx_w(R1, station, PORT);
                emit_count(&mut a, counters, which);
            }
            // Into the host's stack through the TAP's ingress, out of the destination's veth
            // (from the TAP), or into the destination container through its veth's peer.
            let peer = a.label();
            a.ldx_w(R1, R7, IFINDEX);
            a.ldx_w(R2, R7, FLAGS).jne_imm(R2, HOST as i32, peer);
            a.mov64_imm(R2, BPF_F_INGRESS).call(Helper::Redirect).exit();
            a.bind(peer);
            a.mov64_imm(R2, 0);
            match place {
                Place::Veth => a.call(Helper::RedirectPeer).exit(),
                Place::Tap => a.call(Helper::Redirect).exit(),
            };
        }
    }
    a.bind(relayed);
    if place == Place::Veth {
        relay::emit(&mut a, relay::Dir::Out, kind, relay, counters, pass);
    }
    a.bind(pass);
    match kind {
        // The whole frame, for the daemon.
        Kind::Filter => a.mov32_imm(R0, -1),
        Kind::Redirect => a.mov64_imm(R0, TC_NEXT),
    };
    a.exit();
    a.finish()
}

/// How the fast path's program goes on the ports (`vswitch run --fast-path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// tcx where the kernel has it (Linux 6.6), else a clsact qdisc and a cls_bpf filter.
    Auto,
    /// A tcx link on each port (Linux 6.6).
    Tcx,
    /// A clsact qdisc with a direct-action cls_bpf filter on each port (Linux 5.10).
    Tc,
    /// No fast path: the daemon switches every frame.
    Off,
}

/// The hook a port's program sits on, as `vswitch ls --json` names it (`fast_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Tcx,
    Tc,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Tcx => "tcx",
            Hook::Tc => "tc",
        }
    }
}

/// The cls_bpf filter's priority on the clsact ingress hook, and its name there.
const TC_PRIO: u16 = 1;
const TC_NAME: &str = "vswitch_fast";

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("zeroing its counters: {0}")]
    Counters(#[source] io::Error),
    #[error("tcx link: {0}")]
    Tcx(#[source] io::Error),
    #[error("clsact qdisc and cls_bpf filter: {0}")]
    Tc(#[source] NetlinkError),
}

/// The fast path's program on a port's ingress, until dropped (or the port's veth goes, and the
/// program with it), or kept for the next daemon ([`Attachment::keep`]).
pub struct Attachment {
    how: Attached,
    /// Leave it attached when dropped.
    kept: bool,
}

enum Attached {
    /// The link holds the program: closing it detaches, unless it is pinned (`pin`: the pin's
    /// name, removed on detach).
    Tcx {
        _link: OwnedFd,
        pin: Option<(Pins, String)>,
    },
    Tc {
        nl: Arc<Mutex<Netlink>>,
        ifindex: u32,
        hook: TcHook,
        /// Whether the daemon made the link's clsact qdisc (then it deletes it too).
        own_qdisc: bool,
    },
}

impl Attachment {
    pub fn hook(&self) -> Hook {
        match self.how {
            Attached::Tcx { .. } => Hook::Tcx,
            Attached::Tc { .. } => Hook::Tc,
        }
    }

    /// Leaves the program on the port for the next daemon (a stop that keeps the network): a
    /// pinned link and a tc filter stay when the daemon's descriptors close.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Attached::Tcx {
            pin: Some((pins, name)),
            ..
        } = &self.how
        {
            pins.unpin(name); // the link goes with its last descriptor, just after
        }
        if let Attached::Tc {
            nl,
            ifindex,
            hook,
            own_qdisc,
        } = &self.how
        {
            // Best effort: when the veth went first, filter and qdisc went with it (and its
            // ifindex is not reused: the kernel hands out ever larger ones until they wrap).
            let mut nl = nl.lock().unwrap_or_else(|e| e.into_inner());
            let _ = nl.delete_bpf_filter(*ifindex, *hook, TC_PRIO);
            if *own_qdisc {
                let _ = nl.delete_clsact(*ifindex);
            }
        }
    }
}

/// Deletes the fast path's cls_bpf filter on `ifindex`'s `hook`, if a killed daemon left one (a
/// daemon with no fast path must not run a previous one's program). Best effort.
pub fn remove_left_filter(nl: &mut Netlink, ifindex: u32, hook: TcHook) {
    let _ = nl.delete_bpf_filter(ifindex, hook, TC_PRIO);
}

/// The end of every log line that says there is no fast path.
const OFF: &str = "every frame goes through the daemon";

/// Loads the fast path for `mode` and chooses its hook, or says why there is none. Either way
/// returns a line for the daemon's log that says which hook and why. The tc hook is set through
/// a netlink socket opened here: call this in the network namespace of the ports.
///
/// With `pins`, the maps and the tcx links are pinned there, so that forwarding between
/// containers outlives the daemon; a previous daemon's pinned maps are taken over.
pub fn start(mode: Mode, fdb_size: usize, pins: Option<Pins>) -> (Option<FastPath>, String) {
    if mode == Mode::Off {
        return (None, format!("off (--fast-path off): {OFF}"));
    }
    let mut fast = match FastPath::load(fdb_size, pins) {
        Ok(fast) => fast,
        Err(e) => return (None, format!("off ({e}): {OFF}")),
    };
    let (hooks, why) = match plan(mode, tcx_supported(&fast.redirect)) {
        Ok(plan) => plan,
        Err(why) => return (None, why),
    };
    if hooks.contains(&Hook::Tc) {
        match Netlink::open() {
            Ok(nl) => fast.tc = Some(Arc::new(Mutex::new(nl))),
            Err(e) if hooks == [Hook::Tc] => return (None, format!("off (netlink: {e}): {OFF}")),
            Err(_) => {}
        }
    }
    let uplinks = Arc::get_mut(&mut fast.uplinks).expect("not shared before it starts");
    uplinks.hooks = hooks.clone();
    uplinks.tc = fast.tc.clone();
    fast.hooks = hooks;
    (Some(fast), why)
}

/// The hooks to try for `mode`, given whether the kernel has tcx links, and why; or why there
/// is no fast path.
fn plan(mode: Mode, tcx: io::Result<()>) -> Result<(Vec<Hook>, String), String> {
    Ok(match (mode, tcx) {
        (Mode::Off, _) => return Err(format!("off (--fast-path off): {OFF}")),
        (Mode::Auto, Ok(())) => (
            vec![Hook::Tcx, Hook::Tc],
            "tcx (this kernel has tcx links)".to_string(),
        ),
        (Mode::Auto, Err(e)) => (
            vec![Hook::Tc],
            format!(
                "tc (no tcx links, which need Linux 6.6: {e}): a clsact qdisc and a cls_bpf \
                 filter on each port"
            ),
        ),
        (Mode::Tcx, Ok(())) => (vec![Hook::Tcx], "tcx (--fast-path tcx)".to_string()),
        (Mode::Tcx, Err(e)) => {
            return Err(format!(
                "off (--fast-path tcx, but no tcx links: {e}; Linux 6.6): {OFF}"
            ))
        }
        (Mode::Tc, _) => (
            vec![Hook::Tc],
            "tc (--fast-path tc): a clsact qdisc and a cls_bpf filter on each port".to_string(),
        ),
    })
}

pub struct FastPath {
    stations: Map<Key, Value>,
    counters: PerCpuMap<u32, PortCounts>,
    redirect: OwnedFd,
    filter: OwnedFd,
    /// Relayed TCP connections (`relay`): their maps, the TAP's program and its attachment.
    relay: Arc<RelayMaps>,
    tap_program: OwnedFd,
    tap_link: Option<Attachment>,
    /// Translated TCP connections (`relay`): the uplinks' program and its attachments.
    uplinks: Arc<Uplinks>,
    /// What the stations map holds, as last written.
    installed: HashMap<MacAddr, Station>,
    /// The hooks `attach` tries, in order.
    hooks: Vec<Hook>,
    /// rtnetlink in the ports' namespace, for the tc hook.
    tc: Option<Arc<Mutex<Netlink>>>,
    /// Where the maps and the tcx links are pinned, if anywhere.
    pins: Option<Pins>,
}

/// The program on the uplinks' ingress (`relay::uplink_program`): where the remote ends'
/// segments of translated connections come in, to go to their containers. Put on an uplink the
/// first time a connection leaves by it; off when the fast path goes.
pub struct Uplinks {
    program: OwnedFd,
    hooks: Vec<Hook>,
    tc: Option<Arc<Mutex<Netlink>>>,
    attached: Mutex<HashMap<u32, Attachment>>,
}

impl Uplinks {
    /// Puts the program on uplink `ifindex`'s ingress, unless it is there already.
    pub fn attach(&self, ifindex: u32) -> Result<(), AttachError> {
        let mut attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Vacant(e) = attached.entry(ifindex) {
            let (hooks, tc) = (&self.hooks, self.tc.as_ref());
            e.insert(attach_unpinned(
                hooks,
                tc,
                &self.program,
                ifindex,
                TcHook::Ingress,
            )?);
        }
        Ok(())
    }
}

/// Attaches `prog` to `ifindex`'s `hook`, on the first of `hooks` that takes it; not pinned.
fn attach_unpinned(
    hooks: &[Hook],
    tc: Option<&Arc<Mutex<Netlink>>>,
    prog: &OwnedFd,
    ifindex: u32,
    hook: TcHook,
) -> Result<Attachment, AttachError> {
    let mut last = AttachError::Tc(NetlinkError::Protocol("no hook chosen".into()));
    for &how in hooks {
        let attached = match how {
            Hook::Tcx => (tcx_attach(prog, ifindex, hook))
                .map(|link| Attached::Tcx {
                    _link: link,
                    pin: None,
                })
                .map_err(AttachError::Tcx),
            Hook::Tc => attach_tc(tc, prog, ifindex, hook).map_err(AttachError::Tc),
        };
        match attached {
            Ok(how) => {
                if let (Attached::Tcx { .. }, Some(tc)) = (&how, tc) {
                    // A filter a killed daemon on the tc hook left would run after this
                    // program, on its own maps.
                    let mut nl = tc.lock().unwrap_or_else(|e| e.into_inner());
                    remove_left_filter(&mut nl, ifindex, hook);
                }
                return Ok(Attachment { how, kept: false });
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A clsact qdisc (unless there is one) and the fast path's cls_bpf filter with `prog` on
/// `ifindex`'s `hook`.
fn attach_tc(
    tc: Option<&Arc<Mutex<Netlink>>>,
    prog: &OwnedFd,
    ifindex: u32,
    hook: TcHook,
) -> Result<Attached, NetlinkError> {
    let Some(tc) = tc else {
        return Err(NetlinkError::Protocol("no netlink socket".into()));
    };
    let mut nl = tc.lock().unwrap_or_else(|e| e.into_inner());
    let own_qdisc = nl.add_clsact(ifindex)?;
    if let Err(e) = nl.add_bpf_filter(ifindex, hook, TC_PRIO, prog.as_fd(), TC_NAME) {
        if own_qdisc {
            let _ = nl.delete_clsact(ifindex);
        }
        return Err(e);
    }
    Ok(Attached::Tc {
        nl: tc.clone(),
        ifindex,
        hook,
        own_qdisc,
    })
}

/// Relayed TCP connections the kernel may carry at once (each way); beyond, the daemon does.
const RELAY_ENTRIES: u32 = 262_144;

/// The pins' names.
const STATIONS: &str = "stations";
const COUNTERS: &str = "counters";

impl FastPath {
    /// Creates the maps and loads both programs (needs CAP_BPF and CAP_NET_ADMIN), with no hook
    /// to attach to yet (see [`start`]). The map holds up to `fdb_size` learned MACs and the
    /// plugged containers' own.
    pub(super) fn load(fdb_size: usize, pins: Option<Pins>) -> io::Result<FastPath> {
        let entries = fdb_size.clamp(1, 1 << 20) as u32 + u32::from(MAX_PORTS);
        let (stations, counters) = match &pins {
            Some(p) => open_or_pin(p, entries)?,
            None => (Map::hash(entries)?, PerCpuMap::array(u32::from(MAX_PORTS))?),
        };
        // A previous daemon's stations are what the map holds: `sync` starts from them.
        let mut installed = HashMap::new();
        for k in stations.keys()? {
            if let Some(v) = stations.lookup(&k)? {
                let station = Station {
                    ifindex: v.ifindex,
                    port: PortId(v.port as u16),
                    check: SrcCheck::decode(v.flags, v.ip, v.mask),
                };
                installed.insert(mac_of(k), station);
            }
        }
        let relay = Arc::new(RelayMaps::new(RELAY_ENTRIES, pins.as_ref())?);
        let (s, c) = (stations.fd(), counters.fd());
        let assemble =
            |kind, place, relay| program(kind, place, s, c, relay).map_err(io::Error::other);
        let redirect = assemble(Kind::Redirect, Place::Veth, &relay)?;
        let redirect = load_program(ProgType::SchedCls, &redirect)?;
        let filter = assemble(Kind::Filter, Place::Veth, &relay)?;
        let filter = load_program(ProgType::SocketFilter, &filter)?;
        let tap_program = assemble(Kind::Redirect, Place::Tap, &relay)?;
        let tap_program = load_program(ProgType::SchedCls, &tap_program)?;
        let uplink_program = relay::uplink_program(&relay, c).map_err(io::Error::other)?;
        let uplink_program = load_program(ProgType::SchedCls, &uplink_program)?;
        Ok(FastPath {
            stations,
            counters,
            redirect,
            filter,
            relay,
            tap_program,
            tap_link: None,
            uplinks: Arc::new(Uplinks {
                program: uplink_program,
                hooks: Vec::new(),
                tc: None,
                attached: Mutex::default(),
            }),
            installed,
            hooks: Vec::new(),
            tc: None,
            pins,
        })
    }

    /// The relayed connections' maps, without a TAP to attach to.
    #[cfg(test)]
    pub(super) fn relay_maps_for_tests(&self) -> Arc<RelayMaps> {
        self.relay.clone()
    }

    /// The ports' tc program and the TAP's, for tests that run them.
    #[cfg(test)]
    pub(super) fn programs(&self) -> (&OwnedFd, &OwnedFd) {
        (&self.redirect, &self.tap_program)
    }

    /// The packet sockets' filter, for tests that run it.
    #[cfg(test)]
    pub(super) fn filter_for_tests(&self) -> &OwnedFd {
        &self.filter
    }

    /// The uplinks' program, for tests that run it.
    #[cfg(test)]
    pub(super) fn uplink_program(&self) -> &OwnedFd {
        &self.uplinks.program
    }

    /// The socket filter every packet socket of a fast-path port must carry (`SO_ATTACH_BPF`).
    pub fn filter(&self) -> RawFd {
        self.filter.as_raw_fd()
    }

    /// Attaches the forwarding program for `port` to `ifindex`'s ingress, on the first hook that
    /// takes it; it stays until the attachment is dropped or the interface goes away. A `new`
    /// port's counters are zeroed (a port reusing a freed id starts from nothing); a port taken
    /// over from a previous daemon keeps them, and its program is replaced in place.
    pub fn attach(&self, port: PortId, ifindex: u32, new: bool) -> Result<Attachment, AttachError> {
        if new {
            self.clear_counts(port).map_err(AttachError::Counters)?;
        }
        let mut last = AttachError::Tc(NetlinkError::Protocol("no hook chosen".into()));
        for &hook in &self.hooks {
            let attached = match hook {
                Hook::Tcx => self.attach_tcx(ifindex).map_err(AttachError::Tcx),
                Hook::Tc => (self.attach_tc(&self.redirect, ifindex, TcHook::Ingress))
                    .map_err(AttachError::Tc),
            };
            match attached {
                Ok(how) => return Ok(Attachment { how, kept: false }),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A tcx link, pinned where there are pins. A link a previous daemon pinned for this
    /// interface gets this daemon's program, atomically: no frame misses the fast path.
    fn attach_tcx(&self, ifindex: u32) -> io::Result<Attached> {
        let Some(pins) = &self.pins else {
            let link = tcx_attach(&self.redirect, ifindex, TcHook::Ingress)?;
            return Ok(Attached::Tcx {
                _link: link,
                pin: None,
            });
        };
        let name = format!("link-{ifindex}");
        if pins.exists(&name) {
            let updated = obj_get(&pins.path(&name)).and_then(|link| {
                link_update(&link, &self.redirect)?;
                Ok(link)
            });
            match updated {
                Ok(link) => {
                    let pin = Some((pins.clone(), name));
                    return Ok(Attached::Tcx { _link: link, pin });
                }
                // A link of an interface that is gone (its ifindex now another's).
                Err(_) => pins.unpin(&name),
            }
        }
        let link = tcx_attach(&self.redirect, ifindex, TcHook::Ingress)?;
        obj_pin(&link, &pins.path(&name))?;
        Ok(Attached::Tcx {
            _link: link,
            pin: Some((pins.clone(), name)),
        })
    }

    fn attach_tc(
        &self,
        prog: &OwnedFd,
        ifindex: u32,
        hook: TcHook,
    ) -> Result<Attached, NetlinkError> {
        attach_tc(self.tc.as_ref(), prog, ifindex, hook)
    }

    /// Puts the relayed connections' program on TAP `tap`'s egress (on the first hook that
    /// takes it; a tcx link is not pinned: a next daemon puts its own) and returns the maps the
    /// NAT's edge hands connections to; or says why there is no relayed fast path.
    pub fn relay(&mut self, tap: u32) -> Result<Arc<RelayMaps>, AttachError> {
        self.relay.set_tap(tap);
        let link = self.attach_unpinned(&self.tap_program, tap, TcHook::Egress)?;
        self.tap_link = Some(link);
        Ok(self.relay.clone())
    }

    /// Where translated connections' replies come in (see [`Uplinks`]).
    pub fn uplinks(&self) -> Arc<Uplinks> {
        self.uplinks.clone()
    }

    fn attach_unpinned(
        &self,
        prog: &OwnedFd,
        ifindex: u32,
        hook: TcHook,
    ) -> Result<Attachment, AttachError> {
        attach_unpinned(&self.hooks, self.tc.as_ref(), prog, ifindex, hook)
    }

    /// Leaves the TAP's program on for the next daemon, which replaces it (a hand-over): taking
    /// it off would take the next daemon's tc filter, which has the same name.
    pub fn keep_tap(&mut self) {
        if let Some(link) = self.tap_link.take() {
            link.keep();
        }
    }

    /// Removes the pinned links of every interface but `ports`: links a previous daemon left on
    /// ports that are gone.
    pub fn prune_links(&self, ports: &[u32]) {
        let Some(pins) = &self.pins else { return };
        for name in pins.names("link-") {
            let index = name["link-".len()..].parse::<u32>().ok();
            if !index.is_some_and(|i| ports.contains(&i)) {
                pins.unpin(&name);
            }
        }
    }

    /// A port's fast-path counters, summed over CPUs.
    pub fn counts(&self, port: PortId) -> PortCounts {
        let per_cpu = match self.counters.lookup(&u32::from(port.0)) {
            Ok(Some(per_cpu)) => per_cpu,
            _ => return PortCounts::default(),
        };
        per_cpu
            .iter()
            .fold(PortCounts::default(), |sum, c| PortCounts {
                rx_frames: sum.rx_frames + c.rx_frames,
                rx_bytes: sum.rx_bytes + c.rx_bytes,
                tx_frames: sum.tx_frames + c.tx_frames,
                tx_bytes: sum.tx_bytes + c.tx_bytes,
            })
    }

    /// Zeroes a port's counters.
    pub fn clear_counts(&self, port: PortId) -> io::Result<()> {
        let zeros = vec![PortCounts::default(); self.counters.cpus()];
        self.counters.update(&u32::from(port.0), &zeros)
    }

    /// Makes the stations map hold exactly `want` (MACs of ports below [`MAX_PORTS`]).
    pub fn sync(&mut self, want: &HashMap<MacAddr, Station>) -> io::Result<()> {
        let gone: Vec<MacAddr> = (self.installed.keys())
            .filter(|mac| !want.contains_key(mac))
            .copied()
            .collect();
        for mac in gone {
            self.stations.delete(&key(mac))?;
            self.installed.remove(&mac);
        }
        for (&mac, &station) in want {
            if station.port.0 >= MAX_PORTS || self.installed.get(&mac) == Some(&station) {
                continue;
            }
            let (flags, ip, mask) = station.check.encode();
            let value = Value {
                ifindex: station.ifindex,
                port: u32::from(station.port.0),
                flags,
                ip,
                mask,
                ..Value::default()
            };
            self.stations.update(&key(mac), &value)?;
            self.installed.insert(mac, station);
        }
        Ok(())
    }

    /// The stations the program forwarded frames from since the last call (their MACs were
    /// seen on their ports), with their marks cleared.
    pub fn used(&self) -> Vec<(MacAddr, PortId)> {
        let mut seen = Vec::new();
        for (&mac, station) in &self.installed {
            let k = key(mac);
            if let Ok(Some(mut v)) = self.stations.lookup(&k) {
                if v.used != 0 {
                    v.used = 0;
                    // A mark set between the two calls is lost: the station's next frame sets
                    // it again, and a last frame only makes the entry age that much sooner.
                    let _ = self.stations.update(&k, &v);
                    seen.push((mac, station.port));
                }
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::sys::{test_run, test_run_out};
    use crate::bpf::tests::need_root;

    /// A 60-byte frame: `ethertype`, and for IPv4 the source address `src_ip`.
    fn frame(dst: MacAddr, src: MacAddr, ethertype: u16, src_ip: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&src.0);
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        f[14] = 0x45;
        f[26..30].copy_from_slice(&src_ip);
        f
    }

    /// What the host itself sends a container, and what a container sends the host's address,
    /// cross in the kernel: through the TAP's ingress one way, out of the container's veth the
    /// other; what is the NAT's (to the gateway's MAC but another address, or from the NAT's
    /// marked sockets) and ARP go to the daemon.
    #[test]
    fn the_hosts_own_frames_cross_between_the_tap_and_a_container() {
        need_root();
        let fast = FastPath::load(16, None).expect("the kernel accepts the programs");
        let mut fast = fast;
        let (gateway, container) = (MacAddr([2, 0, 10, 1, 1, 1]), MacAddr([2, 0, 0, 0, 0, 0xa]));
        let (tap, port) = (PortId(0), PortId(1));
        for p in [tap, port] {
            fast.clear_counts(p).unwrap();
        }
        let host_ip = Ipv4Addr::new(10, 1, 1, 1);
        // A test run's frame comes in on loopback (ifindex 1): the container's veth for the
        // veth's program, then the TAP for the TAP's.
        let want = |tap_index, veth_index| {
            HashMap::from([
                (
                    gateway,
                    Station {
                        ifindex: tap_index,
                        port: tap,
                        check: SrcCheck::Host(host_ip),
                    },
                ),
                (
                    container,
                    Station {
                        ifindex: veth_index,
                        port,
                        check: SrcCheck::Ipv4("10.1.1.10/32".parse().unwrap()),
                    },
                ),
            ])
        };
        let (veth_prog, tap_prog) = fast.programs();
        let (veth_prog, tap_prog) = (
            veth_prog.try_clone().unwrap(),
            tap_prog.try_clone().unwrap(),
        );
        let ip_frame = |dst: MacAddr, src: MacAddr, from: [u8; 4], to: [u8; 4]| {
            let mut f = frame(dst, src, 0x0800, from);
            f[30..34].copy_from_slice(&to);
            f
        };
        let (c_ip, outside) = ([10, 1, 1, 10], [198, 51, 100, 7]);
        let (redirected, daemon) = (TC_ACT_REDIRECT, TC_NEXT as u32);

        fast.sync(&want(2, 1)).unwrap();
        for (f, verdict, what) in [
            (
                ip_frame(gateway, container, c_ip, host_ip.octets()),
                redirected,
                "to the host",
            ),
            (
                ip_frame(gateway, container, c_ip, outside),
                daemon,
                "to the NAT",
            ),
            (frame(gateway, container, 0x0806, c_ip), daemon, "ARP"),
            (
                ip_frame(gateway, container, [10, 1, 1, 11], host_ip.octets()),
                daemon,
                "a forged source address",
            ),
        ] {
            assert_eq!(
                test_run_out(&veth_prog, &f, 0).unwrap().0,
                verdict,
                "{what}"
            );
        }
        fast.sync(&want(1, 2)).unwrap();
        let to_c = ip_frame(container, gateway, host_ip.octets(), c_ip);
        assert_eq!(
            test_run_out(&tap_prog, &to_c, 0).unwrap().0,
            redirected,
            "the host's own"
        );
        assert_eq!(
            test_run_out(&tap_prog, &to_c, NAT_MARK).unwrap().0,
            daemon,
            "the NAT's (a marked socket's)"
        );
        let arp = frame(MacAddr([0xff; 6]), gateway, 0x0806, host_ip.octets());
        assert_eq!(test_run_out(&tap_prog, &arp, 0).unwrap().0, daemon, "ARP");
        // Counted as the switch would: into the host on the TAP's port, and back.
        let (c, t) = (fast.counts(port), fast.counts(tap));
        assert_eq!(
            (c.rx_frames, c.tx_frames, t.rx_frames, t.tx_frames),
            (1, 1, 1, 1)
        );
        // The TAP captured: no host station, everything through the daemon.
        let mut captured = want(1, 2);
        captured.remove(&gateway);
        fast.sync(&captured).unwrap();
        assert_eq!(test_run_out(&tap_prog, &to_c, 0).unwrap().0, daemon);
    }

    #[test]
    fn frames_between_known_stations_take_the_fast_path_and_are_counted() {
        need_root();
        let mut fast = FastPath::load(16, None).expect("the kernel accepts both programs");
        let mac = |n: u8| MacAddr([2, 0, 0, 0, 0, n]);
        // a: a checked port's station (10.1.1.10); t: a trusted one's; w: a checked port with
        // more than one prefix (and e, a MAC of the same port elsewhere); b and d: destinations
        // elsewhere; c: unknown.
        let (a, t, w, b, c, d) = (mac(0xa), mac(0x7), mac(0x3), mac(0xb), mac(0xc), mac(0xd));
        let e = mac(0xe);
        let (pa, pb, pt, pw, pd) = (PortId(1), PortId(2), PortId(3), PortId(4), PortId(5));
        for p in [pa, pb, pt, pw, pd] {
            fast.clear_counts(p).unwrap();
        }
        let own: Ipv4Prefix = "10.1.1.10/32".parse().unwrap();
        let nested: Ipv4Prefix = "192.168.0.0/16".parse().unwrap();
        // A test run's frame comes in on loopback (ifindex 1): put a, t and w there.
        let station = |ifindex, port, check| Station {
            ifindex,
            port,
            check,
        };
        let want = HashMap::from([
            (a, station(1, pa, SrcCheck::Ipv4(own))),
            (t, station(1, pt, SrcCheck::None)),
            (w, station(1, pw, SrcCheck::Daemon)),
            (e, station(79, pw, SrcCheck::Daemon)),
            (b, station(77, pb, SrcCheck::Ipv4(own))),
            (d, station(78, pd, SrcCheck::Ipv4(nested))),
        ]);
        fast.sync(&want).unwrap();
        // The socket filter makes the same decision; a test run cannot show it the Ethernet
        // header (it starts a socket filter's frame at the network header), the e2e tests do.
        let (redirected, daemon) = (TC_ACT_REDIRECT, TC_NEXT as u32);
        assert!(fast.used().is_empty());
        let broadcast = MacAddr([0xff; 6]);
        let (ipv4, arp, ipv6, vlan) = (0x0800, 0x0806, 0x86dd, 0x8100);
        let (mine, other) = ([10, 1, 1, 10], [10, 1, 1, 11]);
        for (dst, src, ethertype, ip, verdict, what) in [
            (b, a, ipv4, mine, redirected, "a -> b"),
            (c, a, ipv4, mine, daemon, "unknown destination"),
            (a, c, ipv4, mine, daemon, "unknown source"),
            (
                a,
                b,
                ipv4,
                mine,
                daemon,
                "b came in by a's port (a forged source MAC)",
            ),
            (broadcast, a, ipv4, mine, daemon, "broadcast"),
            (a, a, ipv4, mine, daemon, "hairpin"),
            // Port security: a checked port's frames only as IPv4 from its own prefix.
            (b, a, ipv4, other, daemon, "a forged source address"),
            (b, a, ipv4, [0, 0, 0, 0], daemon, "source 0.0.0.0"),
            (
                b,
                a,
                arp,
                mine,
                daemon,
                "ARP (the daemon checks its sender)",
            ),
            (b, a, ipv6, mine, daemon, "IPv6"),
            (b, a, vlan, mine, daemon, "a VLAN tag"),
            (
                b,
                w,
                ipv4,
                mine,
                daemon,
                "a port whose sources are no one prefix",
            ),
            (e, a, ipv4, mine, redirected, "...but frames to it go"),
            (
                b,
                t,
                ipv4,
                [203, 0, 113, 1],
                redirected,
                "a trusted port sends anything",
            ),
            (b, t, arp, mine, redirected, "ARP from a trusted port"),
            (b, t, ipv6, mine, redirected, "IPv6 from a trusted port"),
        ] {
            let got = test_run(&fast.redirect, &frame(dst, src, ethertype, ip)).unwrap();
            assert_eq!(got, verdict, "{what}");
        }
        // The program reads the first HDR_LEN bytes; a shorter frame is the daemon's.
        let f = frame(b, t, 0x88b5, mine);
        let len = HDR_LEN as usize;
        assert_eq!(test_run(&fast.redirect, &f[..len - 1]).unwrap(), daemon);
        assert_eq!(test_run(&fast.redirect, &f[..len]).unwrap(), redirected);

        // Frames forwarded: counted on both ports, each source marked seen once.
        let sent = |frames: u64| PortCounts {
            rx_frames: frames,
            rx_bytes: 60 * frames,
            ..PortCounts::default()
        };
        let extra = HDR_LEN as u64; // the 30-byte frame
        assert_eq!(fast.counts(pa), sent(2));
        let mut trusted = sent(4);
        trusted.rx_bytes -= 60 - extra;
        assert_eq!(fast.counts(pt), trusted);
        let received = |frames: u64| PortCounts {
            tx_frames: frames,
            tx_bytes: 60 * frames,
            ..PortCounts::default()
        };
        let mut to_b = received(5);
        to_b.tx_bytes -= 60 - extra;
        assert_eq!(fast.counts(pb), to_b);
        assert_eq!(fast.counts(pw), received(1));
        let mut used = fast.used();
        used.sort_by_key(|(_, port)| *port);
        assert_eq!(used, vec![(a, pa), (t, pt)]);
        assert!(fast.used().is_empty());

        // Unlearned: back to the daemon; the map holds exactly what is wanted, checks and all.
        fast.sync(&HashMap::from([(a, want[&a])])).unwrap();
        assert_eq!(
            test_run(&fast.redirect, &frame(b, a, ipv4, mine)).unwrap(),
            daemon
        );
        assert_eq!(fast.installed.len(), 1);
        let (_, value) = (fast.stations.keys().unwrap().into_iter())
            .map(|k| (k, fast.stations.lookup(&k).unwrap().unwrap()))
            .next()
            .unwrap();
        assert_eq!(
            SrcCheck::decode(value.flags, value.ip, value.mask),
            SrcCheck::Ipv4(own)
        );
        fast.clear_counts(pa).unwrap();
        assert_eq!(fast.counts(pa), PortCounts::default());
    }

    #[test]
    fn source_checks_round_trip_through_the_map_value() {
        for check in [
            SrcCheck::None,
            SrcCheck::Daemon,
            SrcCheck::Ipv4("10.1.1.10/32".parse().unwrap()),
            SrcCheck::Ipv4("10.0.0.0/8".parse().unwrap()),
            SrcCheck::Ipv4("0.0.0.0/0".parse().unwrap()),
            SrcCheck::Host(Ipv4Addr::new(10, 1, 1, 1)),
        ] {
            let (flags, ip, mask) = check.encode();
            assert_eq!(SrcCheck::decode(flags, ip, mask), check);
        }
        // The program reads the frame's bytes as a little-endian u32, like the value's.
        let (_, ip, mask) = SrcCheck::Ipv4("10.1.0.0/16".parse().unwrap()).encode();
        assert_eq!(ip.to_ne_bytes(), [10, 1, 0, 0]);
        assert_eq!(mask.to_ne_bytes(), [255, 255, 0, 0]);
    }

    /// The `tc -j` view of `dev`'s ingress in namespace `ns`: (qdisc kinds, filters).
    fn tc_view(ns: &str, dev: &str) -> (Vec<String>, Vec<serde_json::Value>) {
        use crate::kernel::netns::tests::run;
        let json = |args: &[&str]| -> serde_json::Value {
            let out = run(&[&["tc", "-n", ns, "-j"], args].concat());
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
        };
        let qdiscs = json(&["qdisc", "show", "dev", dev]);
        let kinds = (qdiscs.as_array().unwrap().iter())
            .map(|q| q["kind"].as_str().unwrap().to_string())
            .collect();
        let filters = json(&["filter", "show", "dev", dev, "ingress"]);
        (kinds, filters.as_array().cloned().unwrap_or_default())
    }

    #[test]
    fn the_program_goes_on_the_hook_asked_for_and_off_with_its_attachment() {
        use crate::kernel::netns::{run_in_netns, tests::TestNetns};
        use std::os::fd::AsFd;
        need_root();
        let (host, container) = (TestNetns::new(), TestNetns::new());
        // Everything that names an interface runs in the host namespace: the fast path's
        // netlink socket is opened there, and tcx finds the ifindex there.
        let in_host = |f: &(dyn Fn() -> Result<Attachment, AttachError> + Sync)| {
            run_in_netns(&host.fd, f).unwrap()
        };
        let index = run_in_netns(&host.fd, || {
            let mut nl = Netlink::open().unwrap();
            let mac = [2, 0, 0, 0, 0, 1];
            (nl.create_veth("vsw-f0", "eth0", container.fd.as_fd(), mac, 1500)).unwrap()
        })
        .unwrap();
        let tc_view = || tc_view(&host.name, "vsw-f0");
        let clsact = |qdiscs: &[String]| qdiscs.iter().any(|q| q == "clsact");
        let bare = || {
            let (qdiscs, filters) = tc_view();
            !clsact(&qdiscs) && filters.is_empty()
        };
        assert!(bare(), "{:?}", tc_view());

        // tc: a clsact qdisc and a direct-action BPF filter, both gone with the attachment.
        let (fast, why) = run_in_netns(&host.fd, || start(Mode::Tc, 16, None)).unwrap();
        let fast = fast.unwrap_or_else(|| panic!("{why}"));
        assert!(why.starts_with("tc "), "{why}");
        let link = in_host(&|| fast.attach(PortId(1), index, true)).unwrap();
        assert_eq!(link.hook(), Hook::Tc);
        let (qdiscs, filters) = tc_view();
        assert!(clsact(&qdiscs), "{qdiscs:?}");
        let filter = (filters.iter())
            .find(|f| f["options"].is_object())
            .unwrap_or_else(|| panic!("no BPF filter: {filters:?}"));
        assert_eq!(filter["kind"], "bpf", "{filter}");
        assert_eq!(filter["options"]["bpf_name"], TC_NAME, "{filter}");
        assert_eq!(filter["options"]["direct-action"], true, "{filter}");
        drop(link);
        assert!(bare(), "{:?}", tc_view());

        // A clsact qdisc that was there before stays: only the filter goes.
        let (fast, _) = run_in_netns(&host.fd, || start(Mode::Tc, 16, None)).unwrap();
        let fast = fast.unwrap();
        run_in_netns(&host.fd, || Netlink::open().unwrap().add_clsact(index))
            .unwrap()
            .unwrap();
        drop(in_host(&|| fast.attach(PortId(1), index, true)).unwrap());
        let (qdiscs, filters) = tc_view();
        assert!(
            qdiscs.contains(&"clsact".to_string()) && filters.is_empty(),
            "{qdiscs:?} {filters:?}"
        );

        // A daemon killed on the tc hook leaves its filter (and qdisc) behind; the next one's
        // program replaces it, so exactly one runs.
        let programs = || -> Vec<u64> {
            (tc_view().1.iter())
                .filter_map(|f| f["options"]["prog"]["id"].as_u64())
                .collect()
        };
        let (killed, _) = run_in_netns(&host.fd, || start(Mode::Tc, 16, None)).unwrap();
        let killed = killed.unwrap();
        std::mem::forget(in_host(&|| killed.attach(PortId(1), index, true)).unwrap());
        let old = programs();
        let (next, _) = run_in_netns(&host.fd, || start(Mode::Tc, 16, None)).unwrap();
        let next = next.unwrap();
        let link = in_host(&|| next.attach(PortId(1), index, true)).unwrap();
        let new = programs();
        assert!(
            old.len() == 1 && new.len() == 1 && old != new,
            "{old:?} {new:?}"
        );
        drop(link);
        assert!(tc_view().1.is_empty(), "{:?}", tc_view());

        // tcx: this kernel has it (6.6 and later), so `auto` takes it; no qdisc is needed.
        let (fast, why) = run_in_netns(&host.fd, || start(Mode::Auto, 16, None)).unwrap();
        let fast = fast.unwrap_or_else(|| panic!("{why}"));
        assert!(why.starts_with("tcx "), "{why}");
        let link = in_host(&|| fast.attach(PortId(1), index, true)).unwrap();
        assert_eq!(link.hook(), Hook::Tcx);
        assert!(tc_view().1.is_empty(), "{:?}", tc_view());
        drop(link);
        let (fast, why) = run_in_netns(&host.fd, || start(Mode::Tcx, 16, None)).unwrap();
        assert!(fast.is_some() && why.starts_with("tcx "), "{why}");

        let (fast, why) = start(Mode::Off, 16, None);
        assert!(fast.is_none() && why.starts_with("off "), "{why}");
    }

    #[test]
    fn auto_takes_tc_where_the_kernel_has_no_tcx() {
        // What a kernel before 6.6 answers the tcx probe.
        let einval = || Err(io::Error::from_raw_os_error(libc::EINVAL));
        let (hooks, why) = plan(Mode::Auto, einval()).unwrap();
        assert_eq!(hooks, [Hook::Tc]);
        assert!(
            why.starts_with("tc (no tcx links") && why.contains("6.6"),
            "{why}"
        );
        let why = plan(Mode::Tcx, einval()).unwrap_err();
        assert!(why.starts_with("off (--fast-path tcx"), "{why}");
        assert_eq!(plan(Mode::Tc, einval()).unwrap().0, [Hook::Tc]);
        // With tcx: tcx first, tc for a port that refuses a link.
        assert_eq!(plan(Mode::Auto, Ok(())).unwrap().0, [Hook::Tcx, Hook::Tc]);
        assert_eq!(plan(Mode::Tc, Ok(())).unwrap().0, [Hook::Tc]);
        assert!(plan(Mode::Off, Ok(())).is_err());
    }
}
