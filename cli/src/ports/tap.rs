//! TAP port backend: the host kernel's port on the switch.
//!
//! Opened by hand rather than with the `tun-tap` crate, which cannot set `IFF_VNET_HDR`: with the
//! virtio-net header and `TUNSETOFFLOAD` the host kernel hands us (and accepts) GSO super-frames
//! with partial checksums, exactly like the AF_PACKET ports, so frames cross the switch
//! unsegmented in both directions.
//!
//! The TAP is persistent (`TUNSETPERSIST`): it outlives the daemon, with the gateway's address
//! and the host's routes to the containers, so that a restarted daemon takes it over instead of
//! making the host forget its way to them. The daemon deletes it when it removes the network.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vswitch_switch::VNET_HDR_LEN;

use crate::kernel::sys::cvt;

use super::port::{PortIo, RxBatch};

pub struct Tap {
    file: File,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Creates TAP `name` (which must not exist yet) with `queues` queues, virtio-net headers
    /// and offloads. The kernel spreads the host's flows over the queues by hash.
    pub fn create_queues(name: &str, queues: usize) -> io::Result<Vec<Tap>> {
        let multi = queues > 1;
        (0..queues.max(1))
            .map(|i| Tap::open(name, multi, i == 0))
            .collect()
    }

    /// Opens `queues` queues of TAP `name`, which an earlier daemon left (or creates it).
    pub fn attach_queues(name: &str, queues: usize) -> io::Result<Vec<Tap>> {
        let multi = queues > 1;
        (0..queues.max(1))
            .map(|_| Tap::open(name, multi, false))
            .collect()
    }

    /// A queue another process opened (a hand-over), as it was set up.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> Tap {
        Tap {
            file: File::from(fd),
        }
    }

    /// Makes the device outlive its descriptors (or not).
    pub fn set_persist(&self, persist: bool) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes its flag by value.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETPERSIST,
                libc::c_ulong::from(persist),
            )
        };
        cvt(ret).map(drop)
    }

    /// Lets eBPF socket-filter program `prog` choose the queue of each frame the host sends (the
    /// kernel takes its answer modulo the number of queues), or gives the choice back to the
    /// kernel's flow hash (`None`). One call serves the whole device.
    ///
    /// The daemon gives it the ports' fan-out program, so that a small frame the host sends on
    /// CPU `c` reaches the worker homed on `c` (a ping's echo, a request: no wake-up of a halted
    /// CPU), as a container's does. The kernel's choice keeps a flow on one queue whichever CPU
    /// its sender runs on, so half the time a ping wakes a worker on the other CPU.
    pub fn set_steering(&self, prog: Option<RawFd>) -> io::Result<()> {
        let fd: libc::c_int = prog.unwrap_or(-1);
        // SAFETY: TUNSETSTEERINGEBPF reads an int (a program's descriptor, or -1) through the
        // pointer, which is valid for the call.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETSTEERINGEBPF, &fd) };
        cvt(ret).map(drop)
    }

    fn open(name: &str, multi_queue: bool, exclusive: bool) -> io::Result<Tap> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface name {name:?} must be 1 to 15 bytes"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let fd = file.as_raw_fd();
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if exclusive {
            flags |= libc::IFF_TUN_EXCL; // fail rather than attach to someone else's device
        }
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `req` is a properly laid out struct ifreq for TUNSETIFF.
        if unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req) } < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EBUSY | libc::EEXIST) => io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("an interface named {name} already exists"),
                ),
                _ => err,
            });
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ takes a pointer to an int.
        if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // Ask for checksum offload and TCP segmentation offload; fall back to none, in which case
        // the kernel sends plain frames (still correct, only slower).
        let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
        for flags in [offloads, 0] {
            // SAFETY: TUNSETOFFLOAD takes the flags by value.
            if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, flags as libc::c_ulong) } == 0 {
                break;
            }
        }
        Ok(Tap { file })
    }
}

impl PortIo for Tap {
    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn recv_batch(&self, batch: &mut RxBatch) -> io::Result<usize> {
        // A TAP has no recvmmsg: one read per frame, until the queue is empty or the batch full.
        let mut got = 0;
        while got < batch.bufs.len() {
            match (&self.file).read(&mut batch.bufs[got]) {
                Ok(n) => {
                    batch.lens[got] = n;
                    batch.outgoing[got] = false;
                    batch.truncated[got] = false; // buffers hold the largest frame a TAP gives
                    got += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if got > 0 => {
                    let _ = e;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        (&self.file).write(frame).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::fanout::SpreadProgram;
    use crate::kernel::netlink::Netlink;
    use crate::kernel::netns::tests::TestNetns;
    use crate::kernel::netns::{disable_ipv6, run_in_netns};
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    use std::net::{Ipv4Addr, UdpSocket};

    /// Empties every queue; returns the one whose frames carried `marker`, waiting up to a
    /// second for it (the queue is chosen in the sender's call, but a busy qdisc may hand the
    /// frame over a moment later).
    fn queue_of(taps: &[Tap], marker: &[u8]) -> Option<usize> {
        let mut buf = vec![0u8; 65536 + 64];
        for _ in 0..100 {
            for (q, tap) in taps.iter().enumerate() {
                while let Ok(n) = (&tap.file).read(&mut buf) {
                    if buf[..n].windows(marker.len()).any(|w| w == marker) {
                        return Some(q);
                    }
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn the_hosts_small_frames_leave_by_their_cpus_queue_and_a_streams_by_one_queue() {
        crate::bpf::tests::need_root();
        let ns = TestNetns::new();
        let program = SpreadProgram::load(1).unwrap();
        let program = &program;
        run_in_netns(&ns.fd, move || {
            let taps = Tap::create_queues("vsw-steer", 2).unwrap();
            taps[0].set_steering(Some(program.fd())).unwrap();
            disable_ipv6("vsw-steer").unwrap();
            let mut nl = Netlink::open().unwrap();
            let index = nl.link_index("vsw-steer").unwrap().unwrap();
            // No ARP: a datagram leaves at once (to the TAP's own MAC address).
            nl.set_link(index, true, true, None, None).unwrap();
            nl.add_address(index, Ipv4Addr::new(10, 9, 9, 1), 24)
                .unwrap();
            let flow = UdpSocket::bind("10.9.9.1:0").unwrap();
            flow.connect("10.9.9.2:9").unwrap();

            let allowed = sched_getaffinity(Pid::from_raw(0)).unwrap();
            let cpus: Vec<usize> = (0..CpuSet::count())
                .filter(|&c| allowed.is_set(c).unwrap_or(false))
                .collect();
            let mut stream_queues = Vec::new();
            for &cpu in &cpus {
                let mut only = CpuSet::new();
                only.set(cpu).unwrap();
                sched_setaffinity(Pid::from_raw(0), &only).unwrap();
                let small = format!("small, sent on CPU {cpu}");
                flow.send(small.as_bytes()).unwrap();
                assert_eq!(
                    queue_of(&taps, small.as_bytes()),
                    Some(cpu % taps.len()),
                    "a small frame goes to the queue of the CPU it was sent on"
                );
                let mut bulk = format!("bulk, sent on CPU {cpu}").into_bytes();
                bulk.resize(1400, b'.');
                flow.send(&bulk).unwrap();
                stream_queues.push(queue_of(&taps, &bulk[..24]).unwrap());
            }
            sched_setaffinity(Pid::from_raw(0), &allowed).unwrap();
            assert!(
                stream_queues.windows(2).all(|w| w[0] == w[1]),
                "a stream's bulk frames keep to one queue whatever the CPU: {stream_queues:?}"
            );

            // Without the program, the kernel's flow hash chooses.
            taps[0].set_steering(None).unwrap();
            flow.send(b"after").unwrap();
            assert!(queue_of(&taps, b"after").is_some());
        })
        .unwrap();
    }
}
