//! eBPF: a small assembler, the `bpf(2)` system call and typed maps, and the programs the daemon
//! loads (the ports' fan-out program and the kernel fast path).

pub mod asm;
pub mod fanout;
pub mod fastpath;
pub mod map;
pub mod pins;
pub mod relay;
pub mod ringbuf;
pub mod sys;

#[cfg(test)]
pub(crate) mod tests {
    /// Loading programs and creating maps needs CAP_BPF (and attaching them CAP_NET_ADMIN).
    /// CI runs the tests as root; a test that returned early here would pass without testing
    /// anything, so it fails instead.
    #[track_caller]
    pub(crate) fn need_root() {
        // SAFETY: a plain system call with no arguments.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this BPF test needs root (CAP_BPF, CAP_NET_ADMIN) and cannot run: run the tests \
             as root, as CI does (sudo ./scripts/test.sh)"
        );
    }
}
