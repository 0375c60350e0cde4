//! The `bpf(2)` system call: loading programs, running them in tests, tcx links. Map access is
//! in `map`.

use std::ffi::CStr;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::asm::Insn;
use crate::kernel::netlink::TcHook;

// Commands, from <linux/bpf.h>.
pub(super) const BPF_MAP_CREATE: libc::c_long = 0;
pub(super) const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
pub(super) const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
pub(super) const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
pub(super) const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
#[cfg(test)]
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`: the tcx ingress hook (Linux 6.6).
const BPF_TCX_INGRESS: u64 = 46;
const BPF_TCX_EGRESS: u64 = 47;

/// `union bpf_attr`, as 128 zero-padded bytes: every command the daemon uses fits, and the
/// kernel takes a shorter union than its own as long as it ends in zeros.
pub(super) type Attr = [u64; 16];

/// The program types the daemon loads (`enum bpf_prog_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ProgType {
    /// A socket filter, also a fan-out program (`PACKET_FANOUT_EBPF`).
    SocketFilter = 1,
    /// A tc classifier: tcx, or cls_bpf in direct-action mode.
    SchedCls = 3,
}

/// The raw system call.
///
/// # Safety
/// `attr` must be a valid `union bpf_attr` for `cmd`: every address in it must point to memory
/// that stays valid for the duration of the call for what the kernel does with it under `cmd`,
/// reading or writing (for a map element: a key of the map's key size, a value of its value
/// size, times the possible CPUs for a per-CPU map; for a program: its instructions, license
/// and log buffer at the sizes given).
pub(super) unsafe fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for the addresses in `attr`; `attr` itself is a live buffer of
    // the size passed.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of::<Attr>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of a descriptor the kernel just returned.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` is a new descriptor that nothing else owns: the kernel returned it to us.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// `BPF_F_NO_PREALLOC`: a hash map's elements are allocated as they are added, not all at once.
pub(super) const BPF_F_NO_PREALLOC: u32 = 1;

/// Creates a map (needs CAP_BPF); `map` does this for typed maps.
pub(super) fn create_map(
    kind: u32,
    key: u32,
    value: u32,
    entries: u32,
    flags: u32,
) -> io::Result<OwnedFd> {
    // Map creation: map_type, key_size, value_size, max_entries, map_flags.
    let mut attr: Attr = [0; 16];
    attr[0] = u64::from(kind) | u64::from(key) << 32;
    attr[1] = u64::from(value) | u64::from(entries) << 32;
    attr[2] = u64::from(flags);
    // SAFETY: no address in a map creation's attributes.
    Ok(owned(unsafe { bpf(BPF_MAP_CREATE, &mut attr) }?))
}

/// Loads a program (needs CAP_BPF); a rejected one's error carries the verifier's log.
pub fn load_program(kind: ProgType, insns: &[Insn]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 1 << 16];
    // Program load: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf.
    let mut attr: Attr = [0; 16];
    attr[0] = kind as u64 | (insns.len() as u64) << 32;
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = 1 | (log.len() as u64) << 32;
    attr[4] = log.as_mut_ptr() as u64;
    // SAFETY: the instructions, the license and the log buffer are live for the call, at the
    // sizes given (`Insn` is `struct bpf_insn`).
    match unsafe { bpf(BPF_PROG_LOAD, &mut attr) } {
        Ok(fd) => Ok(owned(fd)),
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

/// Attaches tc program `prog` to `ifindex`'s `hook` as a tcx link (Linux 6.6); the program
/// stays until the returned link is closed or the interface goes away.
pub fn tcx_attach(prog: impl AsFd, ifindex: u32, hook: TcHook) -> io::Result<OwnedFd> {
    // Link creation: prog_fd, target_ifindex, attach_type, flags.
    let mut attr: Attr = [0; 16];
    attr[0] = prog.as_fd().as_raw_fd() as u64 | u64::from(ifindex) << 32;
    attr[1] = match hook {
        TcHook::Ingress => BPF_TCX_INGRESS,
        TcHook::Egress => BPF_TCX_EGRESS,
    };
    // SAFETY: no address in a link creation's attributes for tcx.
    Ok(owned(unsafe { bpf(BPF_LINK_CREATE, &mut attr) }?))
}

/// Pins a program, map or link at `path` in a bpffs: it then outlives every descriptor of
/// it, this process's included, until the file is removed.
pub fn obj_pin(obj: impl AsFd, path: &CStr) -> io::Result<()> {
    // Object pinning: pathname, bpf_fd, file_flags.
    let mut attr: Attr = [0; 16];
    attr[0] = path.as_ptr() as u64;
    attr[1] = obj.as_fd().as_raw_fd() as u64;
    // SAFETY: the kernel only reads `path`, a live NUL-terminated string.
    unsafe { bpf(BPF_OBJ_PIN, &mut attr) }.map(drop)
}

/// Opens the object pinned at `path`.
pub fn obj_get(path: &CStr) -> io::Result<OwnedFd> {
    let mut attr: Attr = [0; 16];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: as in `obj_pin`.
    Ok(owned(unsafe { bpf(BPF_OBJ_GET, &mut attr) }?))
}

/// Swaps the program of link `link` for `prog`, atomically: no frame sees neither.
pub fn link_update(link: impl AsFd, prog: impl AsFd) -> io::Result<()> {
    // Link update: link_fd, new_prog_fd, flags, old_prog_fd.
    let mut attr: Attr = [0; 16];
    attr[0] = link.as_fd().as_raw_fd() as u64 | (prog.as_fd().as_raw_fd() as u64) << 32;
    // SAFETY: no address in a link update's attributes.
    unsafe { bpf(BPF_LINK_UPDATE, &mut attr) }.map(drop)
}

/// What a map is (the head of `struct bpf_map_info`): type, key and value sizes, entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapInfo {
    pub kind: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

pub fn map_info(map: impl AsFd) -> io::Result<MapInfo> {
    // struct bpf_map_info starts type, id, key_size, value_size, max_entries; the kernel
    // writes at most the length given (the rest of the struct is zeros here).
    let mut info = [0u32; 20];
    let mut attr: Attr = [0; 16];
    attr[0] = map.as_fd().as_raw_fd() as u64 | (size_of::<[u32; 20]>() as u64) << 32;
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: `info` is live and writable for the length given.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok(MapInfo {
        kind: info[0],
        key_size: info[2],
        value_size: info[3],
        max_entries: info[4],
    })
}

/// Whether this kernel has tcx links: asks for one on no interface at all. A kernel with tcx
/// looks the interface up (ENODEV); one without refuses the attach type (EINVAL).
pub fn tcx_supported(prog: impl AsFd) -> io::Result<()> {
    match tcx_attach(prog, 0, TcHook::Ingress) {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(e),
        // Interface 0 does not exist; should a kernel ever take it, the link goes at once.
        Ok(_link) => Ok(()),
    }
}

/// Runs program `prog` once on `frame` (Ethernet, at least 14 bytes) in the kernel, on the
/// calling thread's CPU; returns its verdict. For tests.
#[cfg(test)]
pub fn test_run(prog: impl AsFd, frame: &[u8]) -> io::Result<u32> {
    // Test run: prog_fd, retval, data_size_in, data_size_out, data_in, data_out (none).
    let mut attr: Attr = [0; 16];
    attr[0] = prog.as_fd().as_raw_fd() as u64;
    attr[1] = frame.len() as u64;
    attr[2] = frame.as_ptr() as u64;
    // SAFETY: the kernel only reads `frame`, which is live for the call at the size given.
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    Ok((attr[0] >> 32) as u32)
}

/// Runs program `prog` once on `frame` as [`test_run`] does, the packet marked `mark` (as its
/// socket's `SO_MARK` would); returns its verdict and the frame as the program left it
/// (rewritten, for a program that rewrites). For tests.
#[cfg(test)]
pub fn test_run_out(prog: impl AsFd, frame: &[u8], mark: u32) -> io::Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    // The head of a `struct __sk_buff`: len and pkt_type (zeros: the kernel sets them), mark.
    let ctx: [u32; 3] = [0, 0, mark];
    let mut attr: Attr = [0; 16];
    attr[0] = prog.as_fd().as_raw_fd() as u64;
    attr[1] = frame.len() as u64 | (out.len() as u64) << 32;
    attr[2] = frame.as_ptr() as u64;
    attr[3] = out.as_mut_ptr() as u64;
    // ctx_size_in, ctx_in.
    attr[5] = size_of::<[u32; 3]>() as u64;
    attr[6] = ctx.as_ptr() as u64;
    // SAFETY: the kernel reads `frame` and `ctx` and writes at most `out.len()` bytes to `out`,
    // all live for the call at the sizes given.
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    out.truncate((attr[1] >> 32) as usize);
    Ok(((attr[0] >> 32) as u32, out))
}
