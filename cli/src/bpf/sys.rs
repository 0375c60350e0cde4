//! The `bpf(2)` system call and the raw eBPF instruction encoding the programs are built from.

use std::io;
use std::mem::size_of;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

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
