//! AF_PACKET port backend: the host end of a container's veth.
//!
//! - `PACKET_VNET_HDR`: every frame carries a virtio-net header, so GSO super-frames and partial
//!   checksums pass through unchanged (the container's TCP stays offloaded end to end).
//! - `PACKET_IGNORE_OUTGOING`: an `ETH_P_ALL` socket would also see every frame it transmits;
//!   the kernel filters those for us (the packet type is checked as well, belt and braces).
//! - Batched `recvmmsg`: one system call for up to a batch of frames.
//! - `PACKET_QDISC_BYPASS`: frames go straight to the device, until a device refuses a
//!   super-frame (segmentation offload turned off): that socket then takes the full transmit
//!   path, where the kernel segments super-frames in software (and completes checksums).

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::bpf::fanout::{auto_fanout_program, Spread, SpreadProgram};
use crate::kernel::sys::cvt;
use vswitch_switch::VNET_HDR_LEN;

use super::port::{PortIo, RxBatch};

/// Whether `frame` (`[virtio_net_hdr][Ethernet]`) is a GSO super-frame.
fn is_super_frame(frame: &[u8]) -> bool {
    // virtio_net_hdr: flags, then gso_type (VIRTIO_NET_HDR_GSO_NONE = 0).
    frame.get(1).is_some_and(|&gso_type| gso_type != 0)
}

/// `SK_MEMINFO_VARS` of <linux/sock_diag.h>: how many counters `SO_MEMINFO` gives.
const SK_MEMINFO_VARS: usize = 9;

// From <linux/if_packet.h>; not in every libc release.
const PACKET_FANOUT_CBPF: u32 = 6;
const PACKET_FANOUT_EBPF: u32 = 7;
const PACKET_FANOUT_DATA: libc::c_int = 22;

/// Length of a VLAN tag (TPID and TCI).
const VLAN_TAG_LEN: usize = 4;

/// Room for one `PACKET_AUXDATA` control message (CMSG_SPACE of a tpacket_auxdata), aligned as
/// a cmsghdr must be.
#[repr(C, align(8))]
struct AuxSpace([u8; 48]);

const _: () = assert!(
    size_of::<libc::cmsghdr>() + size_of::<libc::tpacket_auxdata>() <= size_of::<AuxSpace>()
);

/// The VLAN tag (TPID, TCI) the kernel took out of a received frame, from its auxiliary data.
fn vlan_tag(hdr: &libc::msghdr) -> Option<[u8; 4]> {
    // SAFETY: `hdr` is a msghdr the kernel filled in: its control buffer and length are ours
    // and valid, and CMSG_FIRSTHDR/CMSG_NXTHDR stay within them.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(hdr) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` points to a control message header within the buffer.
        let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
        if level == libc::SOL_PACKET && kind == libc::PACKET_AUXDATA {
            // SAFETY: a PACKET_AUXDATA message carries a tpacket_auxdata (maybe unaligned).
            let aux = unsafe {
                std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::tpacket_auxdata)
            };
            if aux.tp_status & libc::TP_STATUS_VLAN_VALID == 0 {
                return None;
            }
            let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                aux.tp_vlan_tpid
            } else {
                0x8100
            };
            let [t0, t1] = tpid.to_be_bytes();
            let [c0, c1] = aux.tp_vlan_tci.to_be_bytes();
            return Some([t0, t1, c0, c1]);
        }
        // SAFETY: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(hdr, cmsg) };
    }
    None
}

/// Puts a VLAN tag back into a received frame (`[virtio_net_hdr][Ethernet]`, `len` bytes, with
/// room for the tag in `buf`), after the MAC addresses, as the sender sent it; the virtio-net
/// header's offsets move with the bytes. Returns the new length.
fn insert_vlan_tag(buf: &mut [u8], len: usize, tag: [u8; 4]) -> usize {
    let at = VNET_HDR_LEN + 12;
    if len < at || len + VLAN_TAG_LEN > buf.len() {
        return len;
    }
    buf.copy_within(at..len, at + VLAN_TAG_LEN);
    buf[at..at + VLAN_TAG_LEN].copy_from_slice(&tag);
    // hdr_len and, for a partial checksum, csum_start count from the Ethernet header.
    let bump = |b: &mut [u8], off: usize| {
        let v = u16::from_le_bytes([b[off], b[off + 1]]).saturating_add(VLAN_TAG_LEN as u16);
        b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    };
    if buf[2..4] != [0, 0] {
        bump(buf, 2);
    }
    if buf[0] & vswitch_switch::vnet::F_NEEDS_CSUM != 0 {
        bump(buf, 6);
    }
    len + VLAN_TAG_LEN
}

pub struct PacketSocket {
    fd: OwnedFd,
    /// Kernel drops read so far (reading PACKET_STATISTICS resets the kernel's counters).
    drops: AtomicU64,
    /// Transmitting straight to the device (`PACKET_QDISC_BYPASS`), until it refuses a
    /// super-frame (see `send_batch`).
    bypass: AtomicBool,
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size we pass.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    };
    cvt(ret).map(drop)
}

impl PacketSocket {
    /// Opens `queues` non-blocking AF_PACKET sockets bound to interface `ifindex`. With more
    /// than one they form a fanout group, so that several workers serve the port (see
    /// [`Spread`]); `Spread::Auto` runs `program` where there is one, else the classic program,
    /// which always sends small frames by CPU.
    /// `filter` is a BPF socket filter every socket carries (the fast path's, see `fastpath`).
    pub fn open_queues(
        ifindex: u32,
        queues: usize,
        spread: Spread,
        program: Option<&SpreadProgram>,
        filter: Option<RawFd>,
    ) -> io::Result<Vec<PacketSocket>> {
        let sockets: Vec<PacketSocket> = (0..queues.max(1))
            .map(|_| PacketSocket::open(ifindex, filter))
            .collect::<Result<_, _>>()?;
        if sockets.len() > 1 {
            // Fanout group ids are shared by the whole network namespace: start from a
            // per-process pseudo-random id and move on when one is taken.
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let base = std::process::id().wrapping_mul(2654435761) >> 16;
            let mut joined = false;
            for _ in 0..64 {
                let id = (base + NEXT.fetch_add(1, Relaxed)) & 0xffff;
                let mode = match spread {
                    Spread::Auto if program.is_some() => PACKET_FANOUT_EBPF,
                    Spread::Auto => PACKET_FANOUT_CBPF,
                    Spread::Cpu => libc::PACKET_FANOUT_CPU,
                    Spread::Hash => libc::PACKET_FANOUT_HASH,
                };
                let arg: u32 = id | (mode << 16);
                if setsockopt(
                    sockets[0].fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_FANOUT,
                    &arg,
                )
                .is_ok()
                {
                    for s in &sockets[1..] {
                        setsockopt(
                            s.fd.as_raw_fd(),
                            libc::SOL_PACKET,
                            libc::PACKET_FANOUT,
                            &arg,
                        )?;
                    }
                    // The program belongs to the group: set once, through any member.
                    let first = sockets[0].fd.as_raw_fd();
                    match (spread, program) {
                        (Spread::Auto, Some(program)) => {
                            let fd = program.fd() as u32;
                            setsockopt(first, libc::SOL_PACKET, PACKET_FANOUT_DATA, &fd)?;
                        }
                        (Spread::Auto, None) => {
                            let program = auto_fanout_program();
                            let fprog = libc::sock_fprog {
                                len: program.len() as u16,
                                filter: program.as_ptr() as *mut libc::sock_filter,
                            };
                            setsockopt(first, libc::SOL_PACKET, PACKET_FANOUT_DATA, &fprog)?;
                        }
                        _ => {}
                    }
                    joined = true;
                    break;
                }
            }
            if !joined {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "no free fanout group id",
                ));
            }
        }
        Ok(sockets)
    }

    /// A socket another process opened (a hand-over), bound, in its fanout group, set up as
    /// `open` sets it up; it gets `filter` (this process's fast-path filter, on the same maps)
    /// in place of the old one, in one step.
    pub fn from_fd(fd: OwnedFd, filter: Option<RawFd>) -> io::Result<PacketSocket> {
        let raw = fd.as_raw_fd();
        if let Some(prog) = filter {
            setsockopt(raw, libc::SOL_SOCKET, libc::SO_ATTACH_BPF, &prog)?;
        }
        let mut bypass: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `bypass` and `len` are live and sized for an int option.
        let ret = unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                &mut bypass as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        Ok(PacketSocket {
            fd,
            drops: AtomicU64::new(0),
            bypass: AtomicBool::new(ret == 0 && bypass != 0),
        })
    }

    /// Opens a non-blocking AF_PACKET socket bound to interface `ifindex`, with the eBPF socket
    /// `filter` if given.
    pub fn open(ifindex: u32, filter: Option<RawFd>) -> io::Result<PacketSocket> {
        // Protocol 0 at creation: the socket receives nothing until it is bound to the one
        // interface, so no frame of another interface ever slips in.
        // SAFETY: plain system call.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if let Some(prog) = filter {
            // Before binding: no frame gets in unfiltered.
            setsockopt(raw, libc::SOL_SOCKET, libc::SO_ATTACH_BPF, &prog)?;
        }
        let one: libc::c_int = 1;
        setsockopt(raw, libc::SOL_PACKET, libc::PACKET_VNET_HDR, &one)?;
        // The kernel takes a frame's VLAN tag out of it on receive (into the socket buffer's
        // metadata): with the auxiliary data the tag comes back, and is put back in the frame.
        setsockopt(raw, libc::SOL_PACKET, libc::PACKET_AUXDATA, &one)?;
        setsockopt(raw, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one)?;
        // Transmit straight to the device: a veth has no queue worth going through.
        let bypass = setsockopt(raw, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one).is_ok();
        // Room for bursts: a few MiB, as root even past rmem_max.
        let size: libc::c_int = 8 << 20;
        if setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size).is_err() {
            setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, &size)?;
        }
        let _ = setsockopt(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &size);

        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll of the size we pass.
        cvt(unsafe {
            libc::bind(
                raw,
                &sll as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        // Promiscuous: the switch must see frames for every MAC, not only the veth's own.
        // SAFETY: all-zero is a valid packet_mreq.
        let mut mreq: libc::packet_mreq = unsafe { zeroed() };
        mreq.mr_ifindex = ifindex as i32;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        setsockopt(raw, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)?;
        Ok(PacketSocket {
            fd,
            drops: AtomicU64::new(0),
            bypass: AtomicBool::new(bypass),
        })
    }
}

impl PortIo for PacketSocket {
    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn recv_batch(&self, batch: &mut RxBatch) -> io::Result<usize> {
        const MAX: usize = 64;
        let n = batch.bufs.len().min(MAX);
        // SAFETY: all-zero is a valid control buffer (it is only ever read up to what the
        // kernel wrote).
        let mut controls: [AuxSpace; MAX] = unsafe { zeroed() };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addrs: [libc::sockaddr_ll; MAX] = unsafe { zeroed() };
        // SAFETY: all-zero is a valid iovec (null base, length 0).
        let mut iovs: [libc::iovec; MAX] = unsafe { zeroed() };
        // SAFETY: all-zero is a valid mmsghdr (no name, no buffers, no control data).
        let mut msgs: [libc::mmsghdr; MAX] = unsafe { zeroed() };
        for i in 0..n {
            iovs[i] = libc::iovec {
                iov_base: batch.bufs[i].as_mut_ptr() as *mut libc::c_void,
                // Room left for a VLAN tag put back (MAX_FRAME counts one).
                iov_len: batch.bufs[i].len() - VLAN_TAG_LEN,
            };
            let hdr = &mut msgs[i].msg_hdr;
            hdr.msg_iov = &mut iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
            hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
            hdr.msg_control = controls[i].0.as_mut_ptr() as *mut libc::c_void;
            hdr.msg_controllen = size_of::<AuxSpace>();
        }
        // SAFETY: every mmsghdr points at live iovecs/addresses/buffers for the call's duration.
        let ret = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        let got = ret as usize;
        for i in 0..got {
            batch.lens[i] = msgs[i].msg_len as usize;
            batch.truncated[i] = msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            batch.outgoing[i] = addrs[i].sll_pkttype == libc::PACKET_OUTGOING;
            if let Some(tag) = vlan_tag(&msgs[i].msg_hdr) {
                batch.lens[i] = insert_vlan_tag(&mut batch.bufs[i], batch.lens[i], tag);
            }
        }
        Ok(got)
    }

    fn backed_up(&self) -> bool {
        // SO_MEMINFO: u32 counters, the first the buffer's bytes in use, the second its size.
        let mut info = [0u32; SK_MEMINFO_VARS];
        let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
        // SAFETY: `info` and `len` are live, and `len` is `info`'s size in bytes.
        let ret = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        ret == 0 && u64::from(info[0]) * 4 >= u64::from(info[1])
    }

    fn kernel_drops(&self) -> u64 {
        // SAFETY: all-zero is a valid tpacket_stats.
        let mut stats: libc::tpacket_stats = unsafe { zeroed() };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `stats` and `len` are live and sized for PACKET_STATISTICS.
        let ret = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                &mut stats as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if ret == 0 {
            self.drops.fetch_add(u64::from(stats.tp_drops), Relaxed);
        }
        self.drops.load(Relaxed)
    }

    fn send_batch(&self, frames: &[&[u8]]) -> (usize, u64) {
        const MAX: usize = 64;
        let (mut next, mut sent, mut bytes) = (0, 0, 0u64);
        while next < frames.len() {
            let chunk = &frames[next..frames.len().min(next + MAX)];
            // SAFETY: all-zero is a valid iovec (null base, length 0).
            let mut iovs: [libc::iovec; MAX] = unsafe { zeroed() };
            // SAFETY: all-zero is a valid mmsghdr (no name, no buffers, no control data).
            let mut msgs: [libc::mmsghdr; MAX] = unsafe { zeroed() };
            for (i, frame) in chunk.iter().enumerate() {
                iovs[i] = libc::iovec {
                    iov_base: frame.as_ptr() as *mut libc::c_void,
                    iov_len: frame.len(),
                };
                msgs[i].msg_hdr.msg_iov = &mut iovs[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: every mmsghdr points at live iovecs over live frames.
            let ret = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    chunk.len() as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            let ok = ret.max(0) as usize;
            sent += ok;
            bytes += chunk[..ok].iter().map(|f| f.len() as u64).sum::<u64>();
            next += ok;
            if ok < chunk.len() {
                // The direct path drops a super-frame that the device cannot take as one (its
                // segmentation offload is off): leave it for good, the full transmit path
                // segments such frames in software. Then the failed frame is tried again.
                if is_super_frame(chunk[ok]) && self.bypass.swap(false, Relaxed) {
                    let zero: libc::c_int = 0;
                    let fd = self.fd.as_raw_fd();
                    if setsockopt(fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &zero).is_ok() {
                        continue;
                    }
                }
                // Otherwise it is skipped (counted as a drop), the rest still go.
                next += 1;
            }
        }
        (sent, bytes)
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        match self.send_batch(&[frame]) {
            (1, _) => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vlan_tag_goes_back_after_the_mac_addresses() {
        let mut buf = vec![0u8; 64];
        // A partial-checksum frame: csum_start 34, hdr_len 0.
        buf[0] = 1;
        buf[6..8].copy_from_slice(&34u16.to_le_bytes());
        for (i, b) in buf[VNET_HDR_LEN..VNET_HDR_LEN + 20].iter_mut().enumerate() {
            *b = i as u8;
        }
        let len = insert_vlan_tag(&mut buf, VNET_HDR_LEN + 20, [0x81, 0x00, 0x00, 0x05]);
        assert_eq!(len, VNET_HDR_LEN + 24);
        let eth = &buf[VNET_HDR_LEN..len];
        assert_eq!(
            &eth[..12],
            &(0..12).collect::<Vec<u8>>()[..],
            "MACs unchanged"
        );
        assert_eq!(&eth[12..16], &[0x81, 0x00, 0x00, 0x05], "the tag");
        assert_eq!(
            &eth[16..],
            &(12..20).collect::<Vec<u8>>()[..],
            "then the rest"
        );
        assert_eq!(u16::from_le_bytes([buf[6], buf[7]]), 38, "csum_start moved");
        assert_eq!(&buf[2..4], &[0, 0], "no hdr_len to move");
        // No room: left as it is.
        let mut full = vec![0u8; VNET_HDR_LEN + 20];
        assert_eq!(
            insert_vlan_tag(&mut full, VNET_HDR_LEN + 20, [0x81, 0, 0, 1]),
            VNET_HDR_LEN + 20
        );
    }

    #[test]
    fn super_frames_are_told_by_their_gso_type() {
        let mut frame = [0u8; vswitch_switch::VNET_HDR_LEN + 60];
        assert!(!is_super_frame(&frame));
        frame[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
        assert!(is_super_frame(&frame));
        assert!(!is_super_frame(&[]));
    }
}
