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

use std::collections::HashMap;
use std::io;
use std::mem::offset_of;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use vswitch_switch::{MacAddr, PortId};

use super::asm::{skb, Asm, AsmError, Helper, Insn, R0, R1, R10, R2, R3, R4, R6, R7, R8};
use super::map::{Map, PerCpuMap, Pod};
use super::sys::{load_program, tcx_attach, ProgType};

/// Ports with an id below this can use the fast path (the counter array is this long).
pub const MAX_PORTS: u16 = 1024;

/// Where a MAC lives: the host end of its container's veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Station {
    pub ifindex: u32,
    pub port: PortId,
}

/// The stations map's key: a MAC and two bytes of zeros.
type Key = [u8; 8];

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
    _pad: u32,
}
const _: () = assert!(size_of::<Value>() == 4 * 4, "no padding");
// SAFETY: `#[repr(C)]`, four u32 and no padding (asserted above): any bits are a valid `Value`.
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
const fn field(offset: usize) -> i16 {
    assert!(offset <= i16::MAX as usize);
    offset as i16
}

/// The programs' stack, below the frame pointer: the frame's two MACs (destination, then
/// source at `MACS + 6`), the two stations' keys, and a port's key in the counters map.
const MACS: i16 = -16;
const DST_KEY: i16 = -24;
const SRC_KEY: i16 = -32;
const PORT_KEY: i16 = -36;

/// The tc program's verdict for a frame it leaves alone: `TCX_NEXT`, "go on" (to the next
/// program, then the stack, where the packet sockets already have the frame).
const TC_NEXT: i32 = -1;
/// What `bpf_redirect_peer` returns on success and the program returns in turn:
/// `TC_ACT_REDIRECT` (`TCX_REDIRECT` is the same 7).
#[cfg(test)]
const TC_ACT_REDIRECT: u32 = 7;

#[derive(Clone, Copy)]
enum Kind {
    /// The tc program: forwards what it can, passes the rest on.
    Redirect,
    /// The packet sockets' filter: drops what the tc program will forward.
    Filter,
}

/// The program of either kind: the same decision, then forward (or drop, for the filter).
fn program(kind: Kind, stations: RawFd, counters: RawFd) -> Result<Vec<Insn>, AsmError> {
    const IFINDEX: i16 = field(offset_of!(Value, ifindex));
    const PORT: i16 = field(offset_of!(Value, port));
    const USED: i16 = field(offset_of!(Value, used));
    let mut a = Asm::new();
    // The frame is the daemon's.
    let pass = a.label();

    // r6 = skb, kept across calls; the two MACs onto the stack.
    a.mov64_reg(R6, R1);
    a.mov64_reg(R1, R6).mov64_imm(R2, 0);
    a.mov64_reg(R3, R10).add64_imm(R3, MACS.into());
    a.mov64_imm(R4, 12).call(Helper::SkbLoadBytes);
    a.jne_imm(R0, 0, pass); // shorter than two MACs

    // A group address (broadcast, multicast) is flooded by the daemon.
    a.ldx_b(R1, R10, MACS).and64_imm(R1, 1);
    a.jne_imm(R1, 0, pass);

    // Map keys (6 bytes of MAC, 2 of zeros) from aligned loads.
    a.ldx_w(R1, R10, MACS).ldx_h(R2, R10, MACS + 4);
    a.lsh64_imm(R2, 32).or64_reg(R1, R2);
    a.stx_dw(R10, R1, DST_KEY);
    a.ldx_h(R1, R10, MACS + 6).ldx_w(R2, R10, MACS + 8);
    a.lsh64_imm(R2, 16).or64_reg(R1, R2);
    a.stx_dw(R10, R1, SRC_KEY);
    // r7 = the destination's station, r8 = the source's; both must be known.
    for (key, station) in [(DST_KEY, R7), (SRC_KEY, R8)] {
        a.ld_map_fd(R1, stations);
        a.mov64_reg(R2, R10).add64_imm(R2, key.into());
        a.call(Helper::MapLookupElem);
        a.jeq_imm(R0, 0, pass);
        a.mov64_reg(station, R0);
    }
    // The source lives on the port the frame came in by (else it moved: the daemon learns it),
    // the destination on another one (else a hairpin: the daemon drops and counts it).
    a.ldx_w(R1, R8, IFINDEX).ldx_w(R2, R6, skb::IFINDEX);
    a.jne_reg(R1, R2, pass);
    a.ldx_w(R1, R7, IFINDEX);
    a.jeq_reg(R1, R2, pass);

    match kind {
        Kind::Filter => {
            a.mov32_imm(R0, 0).exit(); // the fast path's: not for the daemon
        }
        Kind::Redirect => {
            // The source was seen: mark its station used.
            let marked = a.label();
            a.ldx_w(R1, R8, USED).jne_imm(R1, 0, marked);
            a.st_w(R8, USED, 1);
            a.bind(marked);
            // Count: rx on the source's port, tx on the destination's (this CPU's copy).
            let rx = (
                field(offset_of!(PortCounts, rx_frames)),
                field(offset_of!(PortCounts, rx_bytes)),
            );
            let tx = (
                field(offset_of!(PortCounts, tx_frames)),
                field(offset_of!(PortCounts, tx_bytes)),
            );
            for (station, (frames, bytes)) in [(R8, rx), (R7, tx)] {
                let counted = a.label();
                a.ldx_w(R1, station, PORT).stx_w(R10, R1, PORT_KEY);
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
            // Into the destination container, through its veth's peer.
            a.ldx_w(R1, R7, IFINDEX).mov64_imm(R2, 0);
            a.call(Helper::RedirectPeer).exit();
        }
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

pub struct FastPath {
    stations: Map<Key, Value>,
    counters: PerCpuMap<u32, PortCounts>,
    redirect: OwnedFd,
    filter: OwnedFd,
    /// What the stations map holds, as last written.
    installed: HashMap<MacAddr, Station>,
}

impl FastPath {
    /// Creates the maps and loads both programs (needs CAP_BPF and CAP_NET_ADMIN). The map
    /// holds up to `fdb_size` learned MACs and the plugged containers' own.
    pub fn load(fdb_size: usize) -> io::Result<FastPath> {
        let entries = fdb_size.clamp(1, 1 << 20) as u32 + u32::from(MAX_PORTS);
        let stations = Map::hash(entries)?;
        let counters = PerCpuMap::array(u32::from(MAX_PORTS))?;
        let (s, c) = (stations.fd(), counters.fd());
        let assemble = |kind| program(kind, s, c).map_err(io::Error::other);
        let redirect = load_program(ProgType::SchedCls, &assemble(Kind::Redirect)?)?;
        let filter = load_program(ProgType::SocketFilter, &assemble(Kind::Filter)?)?;
        Ok(FastPath {
            stations,
            counters,
            redirect,
            filter,
            installed: HashMap::new(),
        })
    }

    /// The socket filter every packet socket of a fast-path port must carry (`SO_ATTACH_BPF`).
    pub fn filter(&self) -> RawFd {
        self.filter.as_raw_fd()
    }

    /// Attaches the forwarding program to `ifindex`'s ingress; it stays until the returned link
    /// is closed or the interface goes away.
    pub fn attach(&self, ifindex: u32) -> io::Result<OwnedFd> {
        tcx_attach(&self.redirect, ifindex)
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

    /// Zeroes a port's counters (a new port reusing a freed id starts from nothing).
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
            let value = Value {
                ifindex: station.ifindex,
                port: u32::from(station.port.0),
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
    use crate::bpf::sys::test_run;
    use crate::bpf::tests::need_root;

    fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&src.0);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f
    }

    #[test]
    fn frames_between_known_stations_take_the_fast_path_and_are_counted() {
        need_root();
        let mut fast = FastPath::load(16).expect("the kernel accepts both programs");
        let (a, b, c) = (
            MacAddr([2, 0, 0, 0, 0, 0xa]),
            MacAddr([2, 0, 0, 0, 0, 0xb]),
            MacAddr([2, 0, 0, 0, 0, 0xc]),
        );
        let (pa, pb) = (PortId(1), PortId(2));
        fast.clear_counts(pa).unwrap();
        fast.clear_counts(pb).unwrap();
        // A test run's frame comes in on loopback (ifindex 1): put `a` there.
        let want = HashMap::from([
            (
                a,
                Station {
                    ifindex: 1,
                    port: pa,
                },
            ),
            (
                b,
                Station {
                    ifindex: 77,
                    port: pb,
                },
            ),
        ]);
        fast.sync(&want).unwrap();
        // The socket filter makes the same decision; a test run cannot show it the Ethernet
        // header (it starts a socket filter's frame at the network header), the e2e tests do.
        let (redirected, daemon) = (TC_ACT_REDIRECT, TC_NEXT as u32);
        assert!(fast.used().is_empty());
        let broadcast = MacAddr([0xff; 6]);
        for (dst, src, verdict, what) in [
            (b, a, redirected, "a -> b"),
            (c, a, daemon, "unknown destination"),
            (a, c, daemon, "unknown source"),
            (a, b, daemon, "b came in by a's port"),
            (broadcast, a, daemon, "broadcast"),
            (a, a, daemon, "hairpin"),
        ] {
            let got = test_run(&fast.redirect, &frame(dst, src)).unwrap();
            assert_eq!(got, verdict, "{what}");
        }

        // One frame forwarded: counted on both ports, its source marked seen once.
        let one = PortCounts {
            rx_frames: 1,
            rx_bytes: 60,
            ..PortCounts::default()
        };
        assert_eq!(fast.counts(pa), one);
        let sent = PortCounts {
            tx_frames: 1,
            tx_bytes: 60,
            ..PortCounts::default()
        };
        assert_eq!(fast.counts(pb), sent);
        assert_eq!(fast.used(), vec![(a, pa)]);
        assert!(fast.used().is_empty());

        // Unlearned: back to the daemon; the map holds exactly what is wanted.
        fast.sync(&HashMap::from([(a, want[&a])])).unwrap();
        assert_eq!(test_run(&fast.redirect, &frame(b, a)).unwrap(), daemon);
        assert_eq!(fast.installed.len(), 1);
        fast.clear_counts(pa).unwrap();
        assert_eq!(fast.counts(pa), PortCounts::default());
    }
}
