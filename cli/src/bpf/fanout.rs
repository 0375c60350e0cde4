//! The eBPF fanout program behind `Spread::Auto`, with a mode the workers flip at run time.
//!
//! Bulk frames (over `BULK_LEN` bytes of network layer) go by the sending socket's flow hash, or
//! by address pair where the socket set none, as in the classic program it replaces (see
//! `packet::Spread`). Small frames go by the CPU they were sent on, so that a sparse exchange
//! reaches the worker waiting on the sender's CPU, except while traffic is dense: then they go to
//! the first `dense_queues` queues only, so that fewer workers poll and the other cores are left
//! to the containers (on 2 cores, one polling worker instead of two: ~+30 % connections per
//! second). The mode is one word in a BPF array map shared by every port's program: flipping it is
//! one system call whatever the number of ports (replacing a fanout group's program instead waits
//! for an RCU grace period, ~8 ms, per port).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use super::asm::{skb, Asm, AsmError, Classic, Helper, Insn, R0, R1, R10, R2, R6, R7, R8};
use super::map::Map;
use super::sys::{load_program, ProgType};

/// The eBPF program behind `Spread::Auto`: returns the queue (the kernel takes it modulo the
/// number of queues). `mode` holds the mode (0: by CPU, else dense); `dense_queues` >= 1.
fn program(mode: RawFd, dense_queues: u32) -> Result<Vec<Insn>, AsmError> {
    let net = |offset: i32| libc::SKF_NET_OFF + offset;
    let ipv4 = i32::from((libc::ETH_P_IP as u16).to_be());
    let ipv6 = i32::from((libc::ETH_P_IPV6 as u16).to_be());
    let mut a = Asm::new();
    let (bulk, by_cpu, dense) = (a.label(), a.label(), a.label());
    let (ipv6_frame, xor, done, not_ip) = (a.label(), a.label(), a.label(), a.label());
    // The mode's key, 0, on the stack.
    const KEY: i16 = -4;

    a.mov64_reg(R6, R1); // r6 = skb (ld_abs reads through r6)
    a.ldx_w(R0, R6, skb::LEN);
    a.jgt_imm(R0, BULK_LEN as i32, bulk);
    // A small frame: by CPU, or in dense mode (mode[0] != 0) to the first queues.
    a.st_w(R10, KEY, 0);
    a.ld_map_fd(R1, mode);
    a.mov64_reg(R2, R10).add64_imm(R2, KEY.into());
    a.call(Helper::MapLookupElem);
    a.jeq_imm(R0, 0, by_cpu); // no value
    a.ldx_w(R7, R0, 0);
    a.jeq_imm(R7, 0, by_cpu); // sparse
    a.ja(dense);
    a.bind(by_cpu).call(Helper::GetSmpProcessorId);
    a.exit(); // the sending CPU
    a.bind(dense).call(Helper::GetSmpProcessorId);
    a.mod32_imm(R0, dense_queues as i32);
    a.exit(); // the sending CPU % dense_queues

    // A bulk frame: the flow hash, or the address pair.
    a.bind(bulk).ldx_w(R0, R6, skb::HASH);
    a.jne_imm(R0, 0, done); // a hash
    a.ldx_w(R7, R6, skb::PROTOCOL);
    a.jne_imm(R7, ipv4, ipv6_frame);
    a.ld_abs_w(net(12)); // the source
    a.mov64_reg(R8, R0);
    a.ld_abs_w(net(16)); // the destination
    a.ja(xor);
    a.bind(ipv6_frame).jne_imm(R7, ipv6, not_ip);
    a.ld_abs_w(net(20)); // the source's last word
    a.mov64_reg(R8, R0);
    a.ld_abs_w(net(36)); // the destination's
    a.bind(xor).xor32_reg(R0, R8);
    a.bind(done).exit();
    // Neither IPv4 nor IPv6: by CPU.
    a.bind(not_ip).call(Helper::GetSmpProcessorId);
    a.exit();
    a.finish()
}

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
///
/// Assembled with labels like the eBPF programs, although it is short and fixed: an offset
/// counted by hand here would be checked by no verifier (a wrong jump stays a valid program
/// that spreads frames wrongly), and labels cost nothing at run time.
pub(crate) fn auto_fanout_program() -> Vec<libc::sock_filter> {
    let ancillary = |field: libc::c_int| (libc::SKF_AD_OFF + field) as u32;
    let net = |offset: libc::c_int| (libc::SKF_NET_OFF + offset) as u32;
    let mut c = Classic::new();
    let (bulk, small, no_hash, ret) = (c.label(), c.label(), c.label(), c.label());
    let (ipv4, not_ipv4, ipv6, xor) = (c.label(), c.label(), c.label(), c.label());
    c.ld_len(); // A = skb->len (from the network header on)
    c.jgt(BULK_LEN, bulk, small);
    // A = skb->hash, the flow hash the sending socket set (TCP and connected UDP do).
    c.bind(bulk).ld_w_abs(ancillary(libc::SKF_AD_RXHASH));
    c.jeq(0, no_hash, ret);
    // No hash (unconnected UDP...): by address pair.
    c.bind(no_hash).ld_w_abs(ancillary(libc::SKF_AD_PROTOCOL));
    c.jeq(libc::ETH_P_IP as u32, ipv4, not_ipv4);
    // X = source, A = destination.
    c.bind(ipv4).ld_w_abs(net(12)).tax().ld_w_abs(net(16));
    c.ja(xor);
    c.bind(not_ipv4).jeq(libc::ETH_P_IPV6 as u32, ipv6, small);
    // X = last word of the source, A = last word of the destination.
    c.bind(ipv6).ld_w_abs(net(20)).tax().ld_w_abs(net(36));
    c.bind(xor).xor_x();
    c.bind(ret).ret_a();
    // A = the CPU the frame arrived on (the sender's).
    c.bind(small).ld_w_abs(ancillary(libc::SKF_AD_CPU));
    c.ret_a();
    // A fixed program whose assembly a test checks.
    c.finish().expect("the classic fan-out program assembles")
}

pub struct SpreadProgram {
    prog: OwnedFd,
    /// The mode: 0 sparse, 1 dense.
    mode: Map<u32, u32>,
    /// Workers under sustained traffic; dense mode while any. A lock, not an atomic: the count
    /// and the map write must change together, or two workers crossing zero at once could leave
    /// the mode dense with no traffic (rare: only workers leaving or reaching home take it).
    sustained: Mutex<usize>,
}

impl SpreadProgram {
    /// Loads the program (needs CAP_BPF); dense traffic goes to `dense_queues` queues.
    pub fn load(dense_queues: u32) -> io::Result<SpreadProgram> {
        let mode = Map::array(1)?;
        let insns = program(mode.fd(), dense_queues.max(1)).map_err(io::Error::other)?;
        Ok(SpreadProgram {
            prog: load_program(ProgType::SocketFilter, &insns)?,
            mode,
            sustained: Mutex::new(0),
        })
    }

    /// The program's descriptor, for `PACKET_FANOUT_DATA`.
    pub fn fd(&self) -> RawFd {
        self.prog.as_raw_fd()
    }

    /// Its mode map's descriptor (a hand-over passes it with the program's).
    pub fn mode_fd(&self) -> RawFd {
        self.mode.fd()
    }

    /// The program and mode map another process loaded (a hand-over: the ports' fanout groups
    /// run that program, so the mode the workers flip must be its map).
    pub fn from_fds(prog: OwnedFd, mode: OwnedFd) -> SpreadProgram {
        SpreadProgram {
            prog,
            mode: Map::from_fd(mode),
            sustained: Mutex::new(0),
        }
    }

    /// A worker's traffic became sustained (it left its home CPU) or stopped (it went home):
    /// dense mode while any worker's is sustained.
    pub fn sustained(&self, began: bool) {
        let mut count = self.sustained.lock().unwrap_or_else(|e| e.into_inner());
        let was = *count;
        *count = if began {
            was + 1
        } else {
            was.saturating_sub(1)
        };
        if (was == 0) != (*count == 0) {
            // Best effort: a failed write leaves the previous mode, which still works.
            let _ = self.set_dense(*count > 0);
        }
    }

    /// Dense traffic (small frames to the first queues) or sparse (by CPU), for every port.
    pub fn set_dense(&self, dense: bool) -> io::Result<()> {
        self.mode.update(&0, &u32::from(dense))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::sys::test_run;

    fn run(program: &SpreadProgram, frame: &[u8]) -> u32 {
        test_run(&program.prog, frame).unwrap()
    }

    /// An IPv4 frame of `len` bytes from 10.1.1.11 to 10.1.1.12.
    fn ipv4_frame(len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 1, 1, 11]);
        f[30..34].copy_from_slice(&[10, 1, 1, 12]);
        f
    }

    #[test]
    fn small_frames_go_by_cpu_or_to_the_first_queues_and_bulk_ones_by_address_pair() {
        crate::bpf::tests::need_root();
        std::thread::spawn(|| {
            use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
            use nix::unistd::Pid;
            // On the last CPU we may use, so that "by CPU" and "the first queue" differ.
            let allowed = sched_getaffinity(Pid::from_raw(0)).unwrap();
            let cpu = (0..CpuSet::count())
                .rev()
                .find(|&c| allowed.is_set(c).unwrap_or(false))
                .unwrap();
            let mut only = CpuSet::new();
            only.set(cpu).unwrap();
            sched_setaffinity(Pid::from_raw(0), &only).unwrap();

            let program = SpreadProgram::load(1).unwrap();
            let small = ipv4_frame(100);
            assert_eq!(run(&program, &small), cpu as u32, "sparse: by CPU");
            program.set_dense(true).unwrap();
            assert_eq!(run(&program, &small), 0, "dense: the first queue");
            program.set_dense(false).unwrap();
            assert_eq!(run(&program, &small), cpu as u32, "sparse again");
            // No flow hash in a test run: by address pair, in either mode.
            let pair = u32::from_be_bytes([10, 1, 1, 11]) ^ u32::from_be_bytes([10, 1, 1, 12]);
            let bulk = ipv4_frame(1400);
            assert_eq!(run(&program, &bulk), pair);
            program.set_dense(true).unwrap();
            assert_eq!(run(&program, &bulk), pair);
            program.set_dense(false).unwrap();

            // Two workers' traffic: dense from the first that is sustained to the last that
            // stops.
            program.sustained(true);
            program.sustained(true);
            assert_eq!(run(&program, &small), 0, "dense while both are sustained");
            program.sustained(false);
            assert_eq!(run(&program, &small), 0, "dense while one still is");
            program.sustained(false);
            assert_eq!(
                run(&program, &small),
                cpu as u32,
                "sparse once both stopped"
            );
        })
        .join()
        .unwrap();
    }

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
        // SAFETY: `fprog` points at the live program for the call's duration.
        let ret = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                &fprog as *const libc::sock_fprog as *const libc::c_void,
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
    }

    /// What the kernel's fanout gets from the classic program for a frame: an interpreter of
    /// the few instructions the program uses (the kernel cannot test-run classic BPF).
    struct Skb {
        len: u32,
        hash: u32,
        protocol: u16,
        cpu: u32,
        /// The network header on.
        net: Vec<u8>,
    }

    fn run_classic(program: &[libc::sock_filter], skb: &Skb) -> u32 {
        use libc::*;
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |k: u32| {
            if k >= SKF_AD_OFF as u32 {
                match k as i32 - SKF_AD_OFF {
                    SKF_AD_RXHASH => skb.hash,
                    SKF_AD_PROTOCOL => u32::from(skb.protocol),
                    SKF_AD_CPU => skb.cpu,
                    field => panic!("ancillary field {field}"),
                }
            } else {
                let at = (k as i32 - SKF_NET_OFF) as usize;
                u32::from_be_bytes(skb.net[at..at + 4].try_into().unwrap())
            }
        };
        loop {
            let i = program[pc];
            pc += 1;
            let branch = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match u32::from(i.code) {
                c if c == BPF_LD | BPF_W | BPF_LEN => a = skb.len,
                c if c == BPF_LD | BPF_W | BPF_ABS => a = load(i.k),
                c if c == BPF_MISC | BPF_TAX => x = a,
                c if c == BPF_ALU | BPF_XOR | BPF_X => a ^= x,
                c if c == BPF_RET | BPF_A => return a,
                c if c == BPF_JMP | BPF_JA => pc += i.k as usize,
                c if c == BPF_JMP | BPF_JGT | BPF_K => pc += branch(a > i.k),
                c if c == BPF_JMP | BPF_JEQ | BPF_K => pc += branch(a == i.k),
                code => panic!("instruction {code:#x}"),
            }
        }
    }

    #[test]
    fn the_classic_program_spreads_small_frames_by_cpu_and_bulk_ones_by_flow() {
        let program = auto_fanout_program();
        let mut ipv4 = vec![0u8; 40];
        ipv4[12..16].copy_from_slice(&[10, 1, 1, 11]);
        ipv4[16..20].copy_from_slice(&[10, 1, 1, 12]);
        let mut ipv6 = vec![0u8; 40];
        ipv6[20..24].copy_from_slice(&[0, 0, 0, 11]);
        ipv6[36..40].copy_from_slice(&[0, 0, 0, 12]);
        let skb = |len, hash, protocol, net: &Vec<u8>| Skb {
            len,
            hash,
            protocol,
            cpu: 3,
            net: net.clone(),
        };
        let (ip, ip6, arp) = (
            libc::ETH_P_IP as u16,
            libc::ETH_P_IPV6 as u16,
            libc::ETH_P_ARP as u16,
        );
        let pair = u32::from_be_bytes([10, 1, 1, 11]) ^ u32::from_be_bytes([10, 1, 1, 12]);
        for (skb, queue, what) in [
            (skb(100, 0x1234, ip, &ipv4), 3, "small: by CPU, hash or not"),
            (skb(BULK_LEN, 0, ip, &ipv4), 3, "BULK_LEN itself is small"),
            (skb(1400, 0x1234, ip, &ipv4), 0x1234, "bulk: the flow hash"),
            (skb(1400, 0, ip, &ipv4), pair, "bulk, no hash: IPv4 pair"),
            (
                skb(1400, 0, ip6, &ipv6),
                11 ^ 12,
                "bulk, no hash: IPv6 pair",
            ),
            (skb(1400, 0, arp, &ipv4), 3, "bulk, no hash, not IP: by CPU"),
        ] {
            assert_eq!(run_classic(&program, &skb), queue, "{what}");
        }
    }
}
