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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use vswitch_switch::{MacAddr, PortId};

use super::sys::*;

/// Ports with an id below this can use the fast path (the counter array is this long).
pub const MAX_PORTS: u16 = 1024;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TCX_INGRESS: u64 = 46;
/// Per-port counters in the program's per-CPU array: rx frames, rx bytes, tx frames, tx bytes.
const COUNTERS: usize = 4;

/// Where a MAC lives: the host end of its container's veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Station {
    pub ifindex: u32,
    pub port: PortId,
}

/// The map's value, as the programs read it.
#[repr(C)]
#[derive(Default)]
struct Value {
    ifindex: u32,
    port: u32,
    /// Set by the program when it forwards a frame from this MAC, cleared by [`FastPath::used`].
    used: u32,
    _pad: u32,
}

/// Traffic the fast path carried for one port (the switch's view: rx = from the container).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PortCounts {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
}

#[derive(Clone, Copy)]
enum Kind {
    /// The tc program: forwards what it can, passes the rest on (TCX_NEXT).
    Redirect,
    /// The packet sockets' filter: drops what the tc program will forward.
    Filter,
}

fn key(mac: MacAddr) -> [u8; 8] {
    let m = mac.0;
    [m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]
}

/// The program of either kind: the same decision, then forward (or drop, for the filter).
fn program(kind: Kind, stations: RawFd, counters: RawFd) -> Vec<Insn> {
    let mut p = Vec::new();
    // Jumps to `pass` (the frame is the daemon's), patched once its place is known.
    let mut to_pass = Vec::new();
    let mut jump_to_pass = |p: &mut Vec<Insn>, code: u32, dst: u8, src: u8, imm: i32| {
        to_pass.push(p.len());
        p.push(insn(JMP | code, dst, src, 0, imm));
    };
    p.push(insn(ALU64 | MOV | X, 6, 1, 0, 0)); // r6 = skb
                                               // The two MACs onto the stack, at fp-16 (destination) and fp-10 (source).
    p.push(insn(ALU64 | MOV | X, 1, 6, 0, 0));
    p.push(insn(ALU64 | MOV | K, 2, 0, 0, 0));
    p.push(insn(ALU64 | MOV | X, 3, 10, 0, 0));
    p.push(insn(ALU64 | ADD | K, 3, 0, 0, -16));
    p.push(insn(ALU64 | MOV | K, 4, 0, 0, 12));
    p.push(insn(JMP | CALL, 0, 0, 0, FN_SKB_LOAD_BYTES));
    jump_to_pass(&mut p, JNE | K, 0, 0, 0); // shorter than two MACs
    p.push(insn(LDX | MEM | B, 1, 10, -16, 0));
    p.push(insn(ALU64 | AND | K, 1, 0, 0, 1));
    jump_to_pass(&mut p, JNE | K, 1, 0, 0); // a group address: flooded by the daemon
                                            // Map keys (6 bytes of MAC, 2 of zeros) from aligned loads: destination at fp-24, source
                                            // at fp-32.
    p.push(insn(LDX | MEM | W, 1, 10, -16, 0));
    p.push(insn(LDX | MEM | H, 2, 10, -12, 0));
    p.push(insn(ALU64 | LSH | K, 2, 0, 0, 32));
    p.push(insn(ALU64 | OR | X, 1, 2, 0, 0));
    p.push(insn(STX | MEM | DW, 10, 1, -24, 0));
    p.push(insn(LDX | MEM | H, 1, 10, -10, 0));
    p.push(insn(LDX | MEM | W, 2, 10, -8, 0));
    p.push(insn(ALU64 | LSH | K, 2, 0, 0, 16));
    p.push(insn(ALU64 | OR | X, 1, 2, 0, 0));
    p.push(insn(STX | MEM | DW, 10, 1, -32, 0));
    // r7 = the destination's station, r8 = the source's; both must be known.
    for (slot, reg) in [(-24, 7), (-32, 8)] {
        p.extend(load_map(1, stations));
        p.push(insn(ALU64 | MOV | X, 2, 10, 0, 0));
        p.push(insn(ALU64 | ADD | K, 2, 0, 0, slot));
        p.push(insn(JMP | CALL, 0, 0, 0, FN_MAP_LOOKUP_ELEM));
        jump_to_pass(&mut p, JEQ | K, 0, 0, 0);
        p.push(insn(ALU64 | MOV | X, reg, 0, 0, 0));
    }
    // The source lives on the port the frame came in by (else it moved: the daemon learns it),
    // the destination on another one (else a hairpin: the daemon drops and counts it).
    p.push(insn(LDX | MEM | W, 1, 8, 0, 0));
    p.push(insn(LDX | MEM | W, 2, 6, SKB_IFINDEX, 0));
    jump_to_pass(&mut p, JNE | X, 1, 2, 0);
    p.push(insn(LDX | MEM | W, 1, 7, 0, 0));
    jump_to_pass(&mut p, JEQ | X, 1, 2, 0);

    match kind {
        Kind::Filter => {
            p.push(insn(ALU | MOV | K, 0, 0, 0, 0)); // the fast path's: not for the daemon
            p.push(insn(JMP | EXIT, 0, 0, 0, 0));
        }
        Kind::Redirect => {
            // The source was seen: mark its station used.
            p.push(insn(LDX | MEM | W, 1, 8, 8, 0));
            p.push(insn(JMP | JNE | K, 1, 0, 1, 0));
            p.push(insn(ST | MEM | W, 8, 0, 8, 1));
            // Count: rx on the source's port, tx on the destination's (this CPU's copy).
            for (station, at) in [(8, 0), (7, 16)] {
                p.push(insn(LDX | MEM | W, 1, station, 4, 0));
                p.push(insn(STX | MEM | W, 10, 1, -36, 0));
                p.extend(load_map(1, counters));
                p.push(insn(ALU64 | MOV | X, 2, 10, 0, 0));
                p.push(insn(ALU64 | ADD | K, 2, 0, 0, -36));
                p.push(insn(JMP | CALL, 0, 0, 0, FN_MAP_LOOKUP_ELEM));
                p.push(insn(JMP | JEQ | K, 0, 0, 7, 0));
                p.push(insn(LDX | MEM | DW, 1, 0, at, 0));
                p.push(insn(ALU64 | ADD | K, 1, 0, 0, 1));
                p.push(insn(STX | MEM | DW, 0, 1, at, 0));
                p.push(insn(LDX | MEM | DW, 1, 0, at + 8, 0));
                p.push(insn(LDX | MEM | W, 2, 6, SKB_LEN, 0));
                p.push(insn(ALU64 | ADD | X, 1, 2, 0, 0));
                p.push(insn(STX | MEM | DW, 0, 1, at + 8, 0));
            }
            // Into the destination container, through its veth's peer.
            p.push(insn(LDX | MEM | W, 1, 7, 0, 0));
            p.push(insn(ALU64 | MOV | K, 2, 0, 0, 0));
            p.push(insn(JMP | CALL, 0, 0, 0, FN_REDIRECT_PEER));
            p.push(insn(JMP | EXIT, 0, 0, 0, 0));
        }
    }
    let pass = p.len();
    for at in to_pass {
        p[at].jump_to(at, pass);
    }
    match kind {
        // The whole frame, for the daemon.
        Kind::Filter => p.push(insn(ALU | MOV | K, 0, 0, 0, -1)),
        // TCX_NEXT: on to the stack (and the packet sockets already have it).
        Kind::Redirect => p.push(insn(ALU64 | MOV | K, 0, 0, 0, -1)),
    }
    p.push(insn(JMP | EXIT, 0, 0, 0, 0));
    p
}

/// One more than the highest CPU the kernel may run: at least the number of possible CPUs, of
/// which a per-CPU map value has one slot each (a sparse CPU list leaves unused zeros).
fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let last = text
        .trim()
        .rsplit([',', '-'])
        .next()
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| io::Error::other(format!("unreadable CPU list {text:?}")))?;
    Ok(last + 1)
}

pub struct FastPath {
    stations: OwnedFd,
    counters: OwnedFd,
    redirect: OwnedFd,
    filter: OwnedFd,
    cpus: usize,
    /// What the stations map holds, as last written.
    installed: HashMap<MacAddr, Station>,
}

impl FastPath {
    /// Creates the maps and loads both programs (needs CAP_BPF and CAP_NET_ADMIN). The map
    /// holds up to `fdb_size` learned MACs and the plugged containers' own.
    pub fn load(fdb_size: usize) -> io::Result<FastPath> {
        let entries = fdb_size.clamp(1, 1 << 20) as u32 + u32::from(MAX_PORTS);
        let value = size_of::<Value>() as u32;
        let stations = create_map(BPF_MAP_TYPE_HASH, 8, value, entries)?;
        let counters = create_map(
            BPF_MAP_TYPE_PERCPU_ARRAY,
            4,
            (COUNTERS * 8) as u32,
            u32::from(MAX_PORTS),
        )?;
        let (s, c) = (stations.as_raw_fd(), counters.as_raw_fd());
        let redirect = load_program(BPF_PROG_TYPE_SCHED_CLS, &program(Kind::Redirect, s, c))?;
        let filter = load_program(BPF_PROG_TYPE_SOCKET_FILTER, &program(Kind::Filter, s, c))?;
        Ok(FastPath {
            stations,
            counters,
            redirect,
            filter,
            cpus: possible_cpus()?,
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
        // Link creation: prog_fd, target_ifindex, attach_type, flags.
        let mut attr = [0u64; 16];
        attr[0] = self.redirect.as_raw_fd() as u64 | u64::from(ifindex) << 32;
        attr[1] = BPF_TCX_INGRESS;
        // SAFETY: a descriptor the kernel just created for us.
        Ok(unsafe { OwnedFd::from_raw_fd(bpf(BPF_LINK_CREATE, &mut attr)? as RawFd) })
    }

    /// A station's element: `cmd` on `mac`'s key with `value` (null for a delete).
    fn station_elem(&self, cmd: libc::c_long, mac: MacAddr, value: *mut Value) -> io::Result<()> {
        let k = key(mac);
        map_elem(cmd, self.stations.as_raw_fd(), k.as_ptr(), value as *mut u8)
    }

    /// A port's counters: `cmd` on its per-CPU slots.
    fn counter_elem(&self, cmd: libc::c_long, port: PortId, slots: &mut [u64]) -> io::Result<()> {
        let key = u32::from(port.0);
        let key = &key as *const u32 as *const u8;
        map_elem(
            cmd,
            self.counters.as_raw_fd(),
            key,
            slots.as_mut_ptr() as *mut u8,
        )
    }

    /// A port's fast-path counters, summed over CPUs.
    pub fn counts(&self, port: PortId) -> PortCounts {
        let mut slots = vec![0u64; COUNTERS * self.cpus];
        if port.0 >= MAX_PORTS
            || (self.counter_elem(BPF_MAP_LOOKUP_ELEM, port, &mut slots)).is_err()
        {
            return PortCounts::default();
        }
        let sum = |i: usize| slots.chunks(COUNTERS).map(|c| c[i]).sum();
        PortCounts {
            rx_frames: sum(0),
            rx_bytes: sum(1),
            tx_frames: sum(2),
            tx_bytes: sum(3),
        }
    }

    /// Zeroes a port's counters (a new port reusing a freed id starts from nothing).
    pub fn clear_counts(&self, port: PortId) -> io::Result<()> {
        let mut slots = vec![0u64; COUNTERS * self.cpus];
        self.counter_elem(BPF_MAP_UPDATE_ELEM, port, &mut slots)
    }

    /// Makes the stations map hold exactly `want` (MACs of ports below [`MAX_PORTS`]).
    pub fn sync(&mut self, want: &HashMap<MacAddr, Station>) -> io::Result<()> {
        let gone: Vec<MacAddr> = (self.installed.keys())
            .filter(|mac| !want.contains_key(mac))
            .copied()
            .collect();
        for mac in gone {
            match self.station_elem(BPF_MAP_DELETE_ELEM, mac, std::ptr::null_mut()) {
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
                _ => self.installed.remove(&mac),
            };
        }
        for (&mac, &station) in want {
            if station.port.0 >= MAX_PORTS || self.installed.get(&mac) == Some(&station) {
                continue;
            }
            let mut v = Value {
                ifindex: station.ifindex,
                port: u32::from(station.port.0),
                ..Value::default()
            };
            self.station_elem(BPF_MAP_UPDATE_ELEM, mac, &mut v)?;
            self.installed.insert(mac, station);
        }
        Ok(())
    }

    /// The stations the program forwarded frames from since the last call (their MACs were
    /// seen on their ports), with their marks cleared.
    pub fn used(&self) -> Vec<(MacAddr, PortId)> {
        let mut seen = Vec::new();
        for (&mac, station) in &self.installed {
            let mut v = Value::default();
            if self.station_elem(BPF_MAP_LOOKUP_ELEM, mac, &mut v).is_ok() && v.used != 0 {
                v.used = 0;
                // A mark set between the two calls is lost: the station's next frame sets it
                // again, and a last frame only makes the entry age that much sooner.
                let _ = self.station_elem(BPF_MAP_UPDATE_ELEM, mac, &mut v);
                seen.push((mac, station.port));
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&src.0);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f
    }

    #[test]
    fn frames_between_known_stations_take_the_fast_path_and_are_counted() {
        crate::bpf::tests::need_root();
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
        let (redirected, daemon) = (7, u32::MAX);
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
            let got = test_run(fast.redirect.as_raw_fd(), &frame(dst, src)).unwrap();
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
        assert_eq!(
            test_run(fast.redirect.as_raw_fd(), &frame(b, a)).unwrap(),
            daemon
        );
        assert_eq!(fast.installed.len(), 1);
        fast.clear_counts(pa).unwrap();
        assert_eq!(fast.counts(pa), PortCounts::default());
    }
}
