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
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use crate::packet::BULK_LEN;

// From <linux/bpf.h>.
pub(crate) const BPF_MAP_CREATE: libc::c_long = 0;
pub(crate) const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
pub(crate) const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
pub(crate) const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
pub(crate) const BPF_PROG_LOAD: libc::c_long = 5;
pub(crate) const BPF_MAP_TYPE_HASH: u32 = 1;
pub(crate) const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub(crate) const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
pub(crate) const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
pub(crate) const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub(crate) const BPF_PSEUDO_MAP_FD: u8 = 1;
pub(crate) const FN_MAP_LOOKUP_ELEM: i32 = 1;
pub(crate) const FN_GET_SMP_PROCESSOR_ID: i32 = 8;
pub(crate) const FN_SKB_LOAD_BYTES: i32 = 26;
pub(crate) const FN_REDIRECT_PEER: i32 = 155;
/// Offsets in `struct __sk_buff`.
pub(crate) const SKB_LEN: i16 = 0;
pub(crate) const SKB_PROTOCOL: i16 = 16;
pub(crate) const SKB_IFINDEX: i16 = 40;
pub(crate) const SKB_HASH: i16 = 68;

// Instruction classes and operations (<linux/bpf_common.h>, <linux/bpf.h>).
pub(crate) const LD: u32 = 0x00;
pub(crate) const LDX: u32 = 0x01;
pub(crate) const ST: u32 = 0x02;
pub(crate) const STX: u32 = 0x03;
pub(crate) const ALU: u32 = 0x04;
pub(crate) const JMP: u32 = 0x05;
pub(crate) const ALU64: u32 = 0x07;
pub(crate) const W: u32 = 0x00;
pub(crate) const H: u32 = 0x08;
pub(crate) const B: u32 = 0x10;
pub(crate) const DW: u32 = 0x18;
pub(crate) const IMM: u32 = 0x00;
pub(crate) const ABS: u32 = 0x20;
pub(crate) const MEM: u32 = 0x60;
pub(crate) const K: u32 = 0x00;
pub(crate) const X: u32 = 0x08;
pub(crate) const ADD: u32 = 0x00;
pub(crate) const OR: u32 = 0x40;
pub(crate) const AND: u32 = 0x50;
pub(crate) const LSH: u32 = 0x60;
pub(crate) const MOD: u32 = 0x90;
pub(crate) const XOR: u32 = 0xa0;
pub(crate) const MOV: u32 = 0xb0;
pub(crate) const JA: u32 = 0x00;
pub(crate) const JEQ: u32 = 0x10;
pub(crate) const JGT: u32 = 0x20;
pub(crate) const JNE: u32 = 0x50;
pub(crate) const CALL: u32 = 0x80;
pub(crate) const EXIT: u32 = 0x90;

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    /// Points a jump at the instruction at `target`, this one being at `at`.
    pub(crate) fn jump_to(&mut self, at: usize, target: usize) {
        self.off = (target as isize - at as isize - 1) as i16;
    }
}

pub(crate) fn insn(code: u32, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code: code as u8,
        regs: dst | src << 4,
        off,
        imm,
    }
}

/// `dst = map` (a 64-bit load: two instructions).
pub(crate) fn load_map(dst: u8, map: RawFd) -> [Insn; 2] {
    [
        insn(LD | DW | IMM, dst, BPF_PSEUDO_MAP_FD, 0, map),
        insn(0, 0, 0, 0, 0),
    ]
}

/// The program; `map_fd` holds the mode (0: by CPU, else dense), `dense_queues` >= 1.
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

pub(crate) fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` of the size we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            size_of::<[u64; 16]>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A map element operation (`BPF_MAP_LOOKUP_ELEM`, `_UPDATE_ELEM` with `BPF_ANY`,
/// `_DELETE_ELEM`); `key` and `value` point to buffers of the map's sizes (`value` unused by a
/// delete).
pub(crate) fn map_elem(
    cmd: libc::c_long,
    map: RawFd,
    key: *const u8,
    value: *mut u8,
) -> io::Result<()> {
    // Element operations: map_fd, key, value, flags.
    let mut attr = [0u64; 16];
    attr[0] = map as u64;
    attr[1] = key as u64;
    attr[2] = value as u64;
    bpf(cmd, &mut attr).map(drop)
}

/// Creates a BPF map (needs CAP_BPF).
pub(crate) fn create_map(kind: u32, key: u32, value: u32, entries: u32) -> io::Result<OwnedFd> {
    // union bpf_attr, map creation: map_type, key_size, value_size, max_entries.
    let mut attr = [0u64; 16];
    attr[0] = u64::from(kind) | u64::from(key) << 32;
    attr[1] = u64::from(value) | u64::from(entries) << 32;
    // SAFETY: a descriptor the kernel just created for us.
    Ok(unsafe { OwnedFd::from_raw_fd(bpf(BPF_MAP_CREATE, &mut attr)? as RawFd) })
}

/// Loads a program (needs CAP_BPF); a rejected one's error carries the verifier's log.
pub(crate) fn load_program(kind: u32, insns: &[Insn]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 1 << 16];
    // Program load: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf.
    let mut attr = [0u64; 16];
    attr[0] = u64::from(kind) | (insns.len() as u64) << 32;
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = 1 | (log.len() as u64) << 32;
    attr[4] = log.as_mut_ptr() as u64;
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a descriptor the kernel just created for us.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..end]);
            Err(io::Error::new(
                e.kind(),
                format!("{e}: {}", verifier.trim()),
            ))
        }
    }
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

/// Runs program `prog` once on `frame` (Ethernet, at least 14 bytes) in the kernel, on the
/// calling thread's CPU; returns its verdict. For tests.
#[cfg(test)]
pub(crate) fn test_run(prog: RawFd, frame: &[u8]) -> io::Result<u32> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // Test run: prog_fd, retval, data_size_in, data_size_out, data_in, ...
    let mut attr = [0u64; 16];
    attr[0] = prog as u64;
    attr[1] = frame.len() as u64;
    attr[2] = frame.as_ptr() as u64;
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok((attr[0] >> 32) as u32)
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
        // Loading a BPF program needs CAP_BPF: CI runs the tests as root.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: not root (CI runs this as root)");
            return;
        }
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
}
