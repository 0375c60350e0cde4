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

use crate::bpf::SpreadProgram;
use crate::port::{PortIo, RxBatch};
use crate::sys::cvt;

/// How a port's frames are spread over its queues (one per worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Spread {
    /// Bulk frames by flow, the rest by the sending CPU.
    ///
    /// Bulk frames (over `BULK_LEN` bytes) go by the sending socket's flow hash, or by address
    /// pair where the socket set none (unconnected UDP): a stream is never reordered even when
    /// its sender migrates between CPUs (reordering costs TCP spurious retransmits and a
    /// smaller window), while the small frames of request/response traffic (handshakes, ACKs,
    /// pings, RPCs) reach the worker waiting on their sender's CPU. While traffic is sustained,
    /// small frames go to half the workers only (see `bpf`; the classic program below stands in
    /// where eBPF is unavailable, without that mode).
    Auto,
    /// All frames by the sending CPU (a stream whose sender migrates is reordered).
    ///
    /// Queue `cpu % queues`, whose worker waits on that CPU (see `wait`). All traffic a sender
    /// emits from one CPU, every connection included, lands on one worker, which stays warm.
    Cpu,
    /// All frames by flow hash (never reordered, but often wakes a worker on another CPU).
    ///
    /// A flow always stays on one queue, at the price of waking a worker on another CPU half of
    /// the time.
    Hash,
}

/// Network-layer length above which `Spread::Auto` treats a frame as bulk data: more than any
/// handshake, ACK or small request, less than a full-size segment.
pub const BULK_LEN: u32 = 1024;

/// The classic BPF program behind `Spread::Auto`, run by the kernel's fanout for every frame; it
/// returns the queue (the kernel takes it modulo the number of queues).
fn auto_fanout_program() -> [libc::sock_filter; 18] {
    const LD_W: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
    const TAX: u16 = (libc::BPF_MISC | libc::BPF_TAX) as u16;
    const XOR_X: u16 = (libc::BPF_ALU | libc::BPF_XOR | libc::BPF_X) as u16;
    const RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;
    let ancillary = |field: libc::c_int| (libc::SKF_AD_OFF + field) as u32;
    let net = |offset: libc::c_int| (libc::SKF_NET_OFF + offset) as u32;
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    // Jump offsets count from the next instruction.
    [
        // 0: A = skb->len (from the network header on)
        op((libc::BPF_LD | libc::BPF_W | libc::BPF_LEN) as u16, 0, 0, 0),
        // 1: bulk (A > BULK_LEN)? 2 : 16
        op(JGT, 0, 14, BULK_LEN),
        // 2: A = skb->hash, the flow hash the sending socket set (TCP and connected UDP do)
        op(LD_W, 0, 0, ancillary(libc::SKF_AD_RXHASH)),
        // 3: no hash (A == 0)? 4 : 15
        op(JEQ, 0, 11, 0),
        // 4: no hash (unconnected UDP...): by address pair. A = the EtherType
        op(LD_W, 0, 0, ancillary(libc::SKF_AD_PROTOCOL)),
        // 5: IPv4? 6 : 10
        op(JEQ, 0, 4, libc::ETH_P_IP as u32),
        // 6-8: X = source, A = destination
        op(LD_W, 0, 0, net(12)),
        op(TAX, 0, 0, 0),
        op(LD_W, 0, 0, net(16)),
        // 9: to 14
        op(JA, 0, 0, 4),
        // 10: IPv6? 11 : 16
        op(JEQ, 0, 5, libc::ETH_P_IPV6 as u32),
        // 11-13: X = last word of the source, A = last word of the destination
        op(LD_W, 0, 0, net(20)),
        op(TAX, 0, 0, 0),
        op(LD_W, 0, 0, net(36)),
        // 14: A ^= X
        op(XOR_X, 0, 0, 0),
        // 15: return A
        op(RET_A, 0, 0, 0),
        // 16: A = the CPU the frame arrived on (the sender's); 17: return A
        op(LD_W, 0, 0, ancillary(libc::SKF_AD_CPU)),
        op(RET_A, 0, 0, 0),
    ]
}

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
    fn the_kernel_accepts_the_fanout_program() {
        // The checker the kernel runs on a fanout program is the socket filter's: attach it to
        // a plain UDP socket (no privilege needed) to catch a bad jump or instruction.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let program = auto_fanout_program();
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        let fd = udp.as_raw_fd();
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog).unwrap();
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
