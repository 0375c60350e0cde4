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

use super::sys::*;

fn program(map_fd: RawFd, dense_queues: u32) -> Vec<Insn> {
    let net = |offset: i32| libc::SKF_NET_OFF + offset;
    let ipv4 = i32::from((libc::ETH_P_IP as u16).to_be());
    let ipv6 = i32::from((libc::ETH_P_IPV6 as u16).to_be());
    // Jump offsets count from the next instruction; the comments number the instructions.
    vec![
        /* 0 */ insn(ALU64 | MOV | X, 6, 1, 0, 0), // r6 = skb (LD_ABS reads through r6)
        /* 1 */ insn(LDX | MEM | W, 0, 6, SKB_LEN, 0), // r0 = skb->len
        /* 2 */ insn(JMP | JGT | K, 0, 0, 15, BULK_LEN as i32), // bulk -> 18
        // A small frame: by CPU, or in dense mode (map[0] != 0) to the first queues.
        /* 3 */
        insn(ST | MEM | W, 10, 0, -4, 0), // key 0, on the stack
        /* 4 */ load_map(1, map_fd)[0],
        /* 5 */ load_map(1, map_fd)[1],
        /* 6 */ insn(ALU64 | MOV | X, 2, 10, 0, 0),
        /* 7 */ insn(ALU64 | ADD | K, 2, 0, 0, -4), // r2 = &key
        /* 8 */ insn(JMP | CALL, 0, 0, 0, FN_MAP_LOOKUP_ELEM),
        /* 9 */ insn(JMP | JEQ | K, 0, 0, 3, 0), // no value -> 13
        /* 10 */ insn(LDX | MEM | W, 7, 0, 0, 0), // r7 = the mode
        /* 11 */ insn(JMP | JEQ | K, 7, 0, 1, 0), // sparse -> 13
        /* 12 */ insn(JMP | JA, 0, 0, 2, 0), // dense -> 15
        /* 13 */ insn(JMP | CALL, 0, 0, 0, FN_GET_SMP_PROCESSOR_ID),
        /* 14 */ insn(JMP | EXIT, 0, 0, 0, 0), // the sending CPU
        /* 15 */ insn(JMP | CALL, 0, 0, 0, FN_GET_SMP_PROCESSOR_ID),
        /* 16 */ insn(ALU | MOD | K, 0, 0, 0, dense_queues as i32),
        /* 17 */ insn(JMP | EXIT, 0, 0, 0, 0), // the sending CPU % dense_queues
        // A bulk frame: the flow hash, or the address pair.
        /* 18 */
        insn(LDX | MEM | W, 0, 6, SKB_HASH, 0),
        /* 19 */ insn(JMP | JNE | K, 0, 0, 11, 0), // a hash -> 31
        /* 20 */ insn(LDX | MEM | W, 7, 6, SKB_PROTOCOL, 0),
        /* 21 */ insn(JMP | JNE | K, 7, 0, 4, ipv4), // not IPv4 -> 26
        /* 22 */ insn(LD | ABS | W, 0, 0, 0, net(12)), // the source
        /* 23 */ insn(ALU64 | MOV | X, 8, 0, 0, 0),
        /* 24 */ insn(LD | ABS | W, 0, 0, 0, net(16)), // the destination
        /* 25 */ insn(JMP | JA, 0, 0, 4, 0), // -> 30
        /* 26 */ insn(JMP | JNE | K, 7, 0, 5, ipv6), // not IPv6 either -> 32
        /* 27 */ insn(LD | ABS | W, 0, 0, 0, net(20)), // the source's last word
        /* 28 */ insn(ALU64 | MOV | X, 8, 0, 0, 0),
        /* 29 */ insn(LD | ABS | W, 0, 0, 0, net(36)), // the destination's
        /* 30 */ insn(ALU | XOR | X, 0, 8, 0, 0),
        /* 31 */ insn(JMP | EXIT, 0, 0, 0, 0),
        /* 32 */ insn(JMP | CALL, 0, 0, 0, FN_GET_SMP_PROCESSOR_ID),
        /* 33 */ insn(JMP | EXIT, 0, 0, 0, 0),
    ]
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
pub(crate) fn auto_fanout_program() -> [libc::sock_filter; 18] {
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

pub struct SpreadProgram {
    prog: OwnedFd,
    map: OwnedFd,
    /// Workers under sustained traffic; dense mode while any. A lock, not an atomic: the count
    /// and the map write must change together, or two workers crossing zero at once could leave
    /// the mode dense with no traffic (rare: only workers leaving or reaching home take it).
    sustained: Mutex<usize>,
}

impl SpreadProgram {
    /// Loads the program (needs CAP_BPF); dense traffic goes to `dense_queues` queues.
    pub fn load(dense_queues: u32) -> io::Result<SpreadProgram> {
        let map = create_map(BPF_MAP_TYPE_ARRAY, 4, 4, 1)?;
        let insns = program(map.as_raw_fd(), dense_queues.max(1));
        Ok(SpreadProgram {
            prog: load_program(BPF_PROG_TYPE_SOCKET_FILTER, &insns)?,
            map,
            sustained: Mutex::new(0),
        })
    }

    /// The program's descriptor, for `PACKET_FANOUT_DATA`.
    pub fn fd(&self) -> RawFd {
        self.prog.as_raw_fd()
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
        let (key, mut value) = (0u32, u32::from(dense));
        let (key, value) = (
            &key as *const u32 as *const u8,
            &mut value as *mut u32 as *mut u8,
        );
        map_elem(BPF_MAP_UPDATE_ELEM, self.map.as_raw_fd(), key, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(program: &SpreadProgram, frame: &[u8]) -> u32 {
        test_run(program.fd(), frame).unwrap()
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
}
