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

use super::port::{PortIo, RxBatch};

/// Whether `frame` (`[virtio_net_hdr][Ethernet]`) is a GSO super-frame.
fn is_super_frame(frame: &[u8]) -> bool {
    // virtio_net_hdr: flags, then gso_type (VIRTIO_NET_HDR_GSO_NONE = 0).
    frame.get(1).is_some_and(|&gso_type| gso_type != 0)
}

// From <linux/if_packet.h>; not in every libc release.
const PACKET_FANOUT_CBPF: u32 = 6;
const PACKET_FANOUT_EBPF: u32 = 7;
const PACKET_FANOUT_DATA: libc::c_int = 22;

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
        // SAFETY: all-zero is valid for these plain C structs.
        let mut addrs: [libc::sockaddr_ll; MAX] = unsafe { zeroed() };
        let mut iovs: [libc::iovec; MAX] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; MAX] = unsafe { zeroed() };
        for i in 0..n {
            iovs[i] = libc::iovec {
                iov_base: batch.bufs[i].as_mut_ptr() as *mut libc::c_void,
                iov_len: batch.bufs[i].len(),
            };
            let hdr = &mut msgs[i].msg_hdr;
            hdr.msg_iov = &mut iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
            hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
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
        }
        Ok(got)
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
            // SAFETY: all-zero is valid for these plain C structs.
            let mut iovs: [libc::iovec; MAX] = unsafe { zeroed() };
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
    fn super_frames_are_told_by_their_gso_type() {
        let mut frame = [0u8; vswitch_switch::VNET_HDR_LEN + 60];
        assert!(!is_super_frame(&frame));
        frame[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
        assert!(is_super_frame(&frame));
        assert!(!is_super_frame(&[]));
    }
}
