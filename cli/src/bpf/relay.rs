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

use std::io;
use std::mem::offset_of;
use std::net::SocketAddrV4;
use std::os::fd::RawFd;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;

use vswitch_switch::PortId;

use super::asm::{skb, Asm, Helper, Label, R0, R1, R10, R2, R3, R4, R5, R6, R8, R9};
use super::fastpath::{emit_count, field, Kind, ETHERTYPE_IPV4, RX, TX};
use super::map::{Map, Pod};

/// Which way a segment goes, and so which map and which end of it is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the container into the host (its destination is rewritten).
    Out,
    /// From the host to the container (its source is rewritten).
    Back,
}

/// One direction of a relayed connection, as the daemon hands it to the kernel: the segments
/// from `src` to `dst` get `to` written over their destination (out) or source (back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
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
        let mut k = [0u8; 12];
        k[..4].copy_from_slice(&self.src.ip().octets());
        k[4..8].copy_from_slice(&self.dst.ip().octets());
        k[8..10].copy_from_slice(&self.src.port().to_be_bytes());
        k[10..].copy_from_slice(&self.dst.port().to_be_bytes());
        k
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
    _pad: u16,
    /// Out: the interface the segment must come in by (else it is the daemon's).
    from: u32,
    /// The interface the segment is redirected to (the TAP's ingress, a veth's egress).
    to: u32,
    /// The container's port, for the counters.
    port_id: u32,
    _pad2: u32,
    /// What this entry carried (bumped atomically by the program).
    packets: u64,
    bytes: u64,
}
const _: () = assert!(size_of::<Value>() == 40, "no padding");
// SAFETY: `#[repr(C)]`, integers only and no implicit padding (asserted above): any bits are a
// valid `Value`.
unsafe impl Pod for Value {}

/// What one direction of a connection carried on the fast path so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

/// The two maps of relayed connections, which the programs read and the daemon writes.
pub struct RelayMaps {
    out: Map<Key, Value>,
    back: Map<Key, Value>,
    /// The TAP's ifindex: where outgoing segments go (set once the TAP's program is on).
    tap: AtomicU32,
}

impl RelayMaps {
    /// Maps for up to `entries` connections each way, whose memory follows the connections in
    /// them (a bound of tens of thousands, preallocated, would hold megabytes of kernel memory
    /// for nothing).
    pub fn new(entries: u32) -> io::Result<RelayMaps> {
        Ok(RelayMaps {
            out: Map::sparse_hash(entries)?,
            back: Map::sparse_hash(entries)?,
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

    /// Hands a connection's two directions to the kernel (the way back first, so that no reply
    /// to a segment the kernel carried out has to wait for the daemon).
    pub fn install(&self, out: &Rule, back: &Rule) -> io::Result<()> {
        let value = |r: &Rule, from: u32, to: u32| Value {
            addr: u32::from_ne_bytes(r.to.ip().octets()),
            port: u16::from_ne_bytes(r.to.port().to_be_bytes()),
            from,
            to,
            port_id: u32::from(r.port.0),
            ..Value::default()
        };
        self.back.update(&back.key(), &value(back, 0, back.veth))?;
        if let Err(e) = self
            .out
            .update(&out.key(), &value(out, out.veth, self.tap.load(Relaxed)))
        {
            let _ = self.back.delete(&back.key());
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
            },
            _ => Traffic::default(),
        };
        (read(&self.out, out), read(&self.back, back))
    }

    /// Takes a connection back from the kernel: its next segments cross the daemon.
    pub fn remove(&self, out: &Rule, back: &Rule) {
        let _ = self.out.delete(&out.key());
        let _ = self.back.delete(&back.key());
    }
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
/// `bpf_l4_csum_replace`'s flag for a change in the pseudo-header (an address).
const BPF_F_PSEUDO_HDR: i32 = 1 << 4;
/// `bpf_redirect`'s flag for the interface's ingress (the host receives the frame).
pub(super) const BPF_F_INGRESS: i32 = 1;
const TC_ACT_SHOT: i32 = 2;
/// The TAP's port (`datapath::TAP_PORT`, a layer above).
const TAP_PORT_ID: i32 = 0;

/// Emits the relayed-segment part of a program whose context is in R6: a TCP segment of a
/// connection in `dir`'s map is rewritten and redirected (`Kind::Redirect`) or, for the packet
/// sockets' filter, dropped (`Kind::Filter`: the tc program takes it). Anything else jumps to
/// `pass`. For `Dir::Out`, R8 holds the source MAC's station (marked used, like the fast path's
/// own frames). Uses R9.
pub(super) fn emit(a: &mut Asm, dir: Dir, kind: Kind, map: RawFd, counters: RawFd, pass: Label) {
    const ADDR: i16 = field(offset_of!(Value, addr));
    const PORT: i16 = field(offset_of!(Value, port));
    const FROM: i16 = field(offset_of!(Value, from));
    const TO: i16 = field(offset_of!(Value, to));
    const PORT_ID: i16 = field(offset_of!(Value, port_id));
    const PACKETS: i16 = field(offset_of!(Value, packets));
    const BYTES: i16 = field(offset_of!(Value, bytes));
    const USED: i16 = super::fastpath::STATION_USED;

    // Untagged IPv4 without options or fragments, TCP without SYN, FIN or RST.
    a.mov64_reg(R1, R6).mov64_imm(R2, 0);
    a.mov64_reg(R3, R10).add64_imm(R3, HDR.into());
    a.mov64_imm(R4, LEN).call(Helper::SkbLoadBytes);
    a.jne_imm(R0, 0, pass);
    a.ldx_w(R1, R6, skb::VLAN_PRESENT).jne_imm(R1, 0, pass);
    a.ldx_h(R1, R10, HDR + 12).jne_imm(R1, ETHERTYPE_IPV4, pass);
    a.ldx_b(R1, R10, IP).jne_imm(R1, 0x45, pass);
    a.ldx_h(R1, R10, IP + 6).and64_imm(R1, FRAGMENT);
    a.jne_imm(R1, 0, pass);
    a.ldx_b(R1, R10, IP + 9).jne_imm(R1, 6, pass);
    a.ldx_b(R1, R10, TCP + 13).and64_imm(R1, STATE_FLAGS);
    a.jne_imm(R1, 0, pass);
    // r9 = the connection's entry.
    a.ld_map_fd(R1, map);
    a.mov64_reg(R2, R10).add64_imm(R2, (IP + 12).into());
    a.call(Helper::MapLookupElem);
    a.jeq_imm(R0, 0, pass);
    a.mov64_reg(R9, R0);
    if dir == Dir::Out {
        // Only from the container whose connection it is.
        a.ldx_w(R1, R9, FROM).ldx_w(R2, R6, skb::IFINDEX);
        a.jne_reg(R1, R2, pass);
    }
    if let Kind::Filter = kind {
        a.mov32_imm(R0, 0).exit(); // the tc program's: not for the daemon
        return;
    }

    let shot = a.label();
    let (ip_at, port_at, old_ip, old_port) = match dir {
        Dir::Out => (IP_DST, TCP_DPORT, IP + 16, TCP + 2),
        Dir::Back => (IP_SRC, TCP_SPORT, IP + 12, TCP),
    };
    // The checksums first, from the old values still on the stack: the IPv4 header's, then
    // TCP's for the address (in its pseudo-header) and the port. The helpers update a partial
    // checksum (an offloaded one, only the pseudo-header summed) as such.
    let csum = [
        (Helper::L3CsumReplace, IP_CSUM, old_ip, ADDR, 4),
        (
            Helper::L4CsumReplace,
            TCP_CSUM,
            old_ip,
            ADDR,
            BPF_F_PSEUDO_HDR | 4,
        ),
    ];
    for (helper, at, old, new, flags) in csum {
        a.mov64_reg(R1, R6).mov64_imm(R2, at);
        a.ldx_w(R3, R10, old)
            .ldx_w(R4, R9, new)
            .mov64_imm(R5, flags);
        a.call(helper).jne_imm(R0, 0, shot);
    }
    a.mov64_reg(R1, R6).mov64_imm(R2, TCP_CSUM);
    a.ldx_h(R3, R10, old_port)
        .ldx_h(R4, R9, PORT)
        .mov64_imm(R5, 2);
    a.call(Helper::L4CsumReplace).jne_imm(R0, 0, shot);
    for (at, new, len) in [(ip_at, ADDR, 4), (port_at, PORT, 2)] {
        a.mov64_reg(R1, R6).mov64_imm(R2, at);
        a.mov64_reg(R3, R9).add64_imm(R3, new.into());
        a.mov64_imm(R4, len).mov64_imm(R5, 0);
        a.call(Helper::SkbStoreBytes).jne_imm(R0, 0, shot);
    }

    // Count: the entry, and the two ports as the switch would (rx where it came in).
    a.mov64_imm(R1, 1).atomic_add_dw(R9, R1, PACKETS);
    a.ldx_w(R1, R6, skb::LEN).atomic_add_dw(R9, R1, BYTES);
    let (container, tap) = match dir {
        Dir::Out => (RX, TX),
        Dir::Back => (TX, RX),
    };
    a.ldx_w(R1, R9, PORT_ID);
    emit_count(a, counters, container);
    a.mov64_imm(R1, TAP_PORT_ID);
    emit_count(a, counters, tap);
    if dir == Dir::Out {
        let marked = a.label();
        a.ldx_w(R1, R8, USED).jne_imm(R1, 0, marked);
        a.st_w(R8, USED, 1);
        a.bind(marked);
    }
    let flags = match dir {
        Dir::Out => BPF_F_INGRESS,
        Dir::Back => 0,
    };
    a.ldx_w(R1, R9, TO).mov64_imm(R2, flags);
    a.call(Helper::Redirect).exit();
    // A helper failed half-way: the frame may be half rewritten, and is no one's.
    a.bind(shot);
    a.mov64_imm(R0, TC_ACT_SHOT).exit();
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
            src: c,
            dst: remote,
            to: relay,
            veth: 1,
            port: container,
        };
        let back = Rule {
            src: relay,
            dst: c,
            to: remote,
            veth: 1,
            port: container,
        };
        maps.install(&out, &back).unwrap();
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
        maps.install(&elsewhere, &back).unwrap();
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
        maps.install(&out, &back).unwrap();
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
}
