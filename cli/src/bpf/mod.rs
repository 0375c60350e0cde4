//! eBPF: the `bpf(2)` system call, the programs the daemon loads (the ports' fan-out program and
//! the kernel fast path) and their maps.

pub mod fanout;
pub mod fastpath;
pub mod sys;
