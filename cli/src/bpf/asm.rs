//! A small BPF assembler: named registers and instructions, and labels that the assembler
//! resolves, so that no jump offset is ever counted by hand.
//!
//! [`Asm`] writes eBPF (the fan-out program, the fast path); [`Classic`] writes the classic BPF
//! fan-out program that stands in where eBPF cannot be loaded. The programs are assembled when
//! the daemon starts, because the descriptors of their maps are immediates in their code (why
//! not a compiled program loaded with aya: see ARCHITECTURE.md, "Why the eBPF is assembled").
//!
//! Opcodes are from <linux/bpf_common.h> and <linux/bpf.h>; instruction names follow the
//! kernel's own macros (`BPF_MOV64_REG`, `BPF_LDX_MEM`, ...), with their operand order.

/// One eBPF instruction as the kernel reads it (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

/// The eBPF registers: R0 return value, R1-R5 arguments (clobbered by calls), R6-R9 kept across
/// calls, R10 the read-only frame pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[allow(dead_code)] // The whole register file, whether or not today's programs use each.
pub enum Reg {
    R0 = 0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
}
pub use Reg::*;

/// The kernel helpers the programs call (`enum bpf_func_id` in <linux/bpf.h>).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Helper {
    /// `void *bpf_map_lookup_elem(map, key)`.
    MapLookupElem = 1,
    /// `long bpf_map_update_elem(map, key, value, flags)`.
    MapUpdateElem = 2,
    /// `long bpf_map_delete_elem(map, key)`.
    MapDeleteElem = 3,
    /// `u64 bpf_ktime_get_ns(void)`: CLOCK_MONOTONIC.
    KtimeGetNs = 5,
    /// `u32 bpf_get_smp_processor_id(void)`.
    GetSmpProcessorId = 8,
    /// `long bpf_skb_store_bytes(skb, offset, from, len, flags)`.
    SkbStoreBytes = 9,
    /// `long bpf_l3_csum_replace(skb, offset, from, to, size)`.
    L3CsumReplace = 10,
    /// `long bpf_l4_csum_replace(skb, offset, from, to, flags)`.
    L4CsumReplace = 11,
    /// `long bpf_redirect(ifindex, flags)`.
    Redirect = 23,
    /// `long bpf_skb_load_bytes(skb, offset, to, len)`.
    SkbLoadBytes = 26,
    /// `long bpf_ringbuf_output(ringbuf, data, size, flags)`, Linux 5.8.
    RingbufOutput = 130,
    /// `long bpf_redirect_neigh(ifindex, params, plen, flags)`, Linux 5.10: out of `ifindex`
    /// to the next hop the host's routes give for the packet's destination, whose MAC the
    /// host's neighbour table resolves.
    RedirectNeigh = 152,
    /// `long bpf_redirect_peer(ifindex, flags)`, Linux 5.10.
    RedirectPeer = 155,
}

/// Offsets in `struct __sk_buff` (<linux/bpf.h>), the context of socket filters and tc programs;
/// the kernel rewrites loads of these fields into loads from the real `sk_buff`.
pub mod skb {
    /// `__u32 len`.
    pub const LEN: i16 = 0;
    /// `__u32 pkt_type`: `PACKET_HOST`, `PACKET_OUTGOING` (4: the interface sends it), ...
    pub const PKT_TYPE: i16 = 4;
    /// `__u32 mark`: the packet's mark (from its socket's `SO_MARK`, for what the host sends).
    pub const MARK: i16 = 8;
    /// `__u32 protocol`: the EtherType, in network byte order.
    pub const PROTOCOL: i16 = 16;
    /// `__u32 vlan_present`: the kernel took a VLAN tag off the frame (it is in the skb's
    /// metadata, no longer in its bytes).
    pub const VLAN_PRESENT: i16 = 20;
    /// `__u32 ifindex`: the device the frame is on.
    pub const IFINDEX: i16 = 40;
    /// `__u32 hash`: the flow hash the sending socket set, else 0.
    pub const HASH: i16 = 68;
}

// Instruction classes, sizes, modes, operations and sources.
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const DW: u8 = 0x18;
const IMM: u8 = 0x00;
const ABS: u8 = 0x20;
const MEM: u8 = 0x60;
const ATOMIC: u8 = 0xc0;
const K: u8 = 0x00;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const SUB: u8 = 0x10;
const OR: u8 = 0x40;
const AND: u8 = 0x50;
const LSH: u8 = 0x60;
const MOD: u8 = 0x90;
const XOR: u8 = 0xa0;
const MOV: u8 = 0xb0;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JNE: u8 = 0x50;
const JSLE: u8 = 0xd0;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit immediate load that the kernel replaces with a map's address.
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// A place in a program, to jump to. Made by [`Asm::label`] or [`Classic::label`] and bound
/// once, anywhere (before or after the jumps to it), with `bind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label(usize);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    #[error("label {0} is never bound")]
    Unbound(usize),
    #[error("label {0} is bound twice")]
    BoundTwice(usize),
    #[error("label {0} belongs to another program")]
    Foreign(usize),
    #[error("label {0} is past the last instruction")]
    PastEnd(usize),
    #[error("jump at {at} to label {label}: offset {offset} does not fit the instruction")]
    OutOfRange {
        at: usize,
        label: usize,
        offset: isize,
    },
}

/// Labels and the jumps to them, shared by both assemblers.
#[derive(Default)]
struct Labels {
    /// Where each label is bound, once it is.
    at: Vec<Option<usize>>,
    /// The first misuse, reported by `finish` (so that building a program needs no `?`).
    error: Option<AsmError>,
}

impl Labels {
    fn new_label(&mut self) -> Label {
        self.at.push(None);
        Label(self.at.len() - 1)
    }

    fn bind(&mut self, label: Label, at: usize) {
        match self.at.get_mut(label.0) {
            Some(slot @ None) => *slot = Some(at),
            Some(Some(_)) => {
                self.error.get_or_insert(AsmError::BoundTwice(label.0));
            }
            None => {
                self.error.get_or_insert(AsmError::Foreign(label.0));
            }
        }
    }

    /// The offset a jump at `at` needs to reach `label`: counted from the next instruction, as
    /// the kernel counts, and within a program of `len` instructions.
    fn offset(&self, at: usize, label: Label, len: usize) -> Result<isize, AsmError> {
        let target = self
            .at
            .get(label.0)
            .ok_or(AsmError::Foreign(label.0))?
            .ok_or(AsmError::Unbound(label.0))?;
        if target >= len {
            return Err(AsmError::PastEnd(label.0));
        }
        Ok(target as isize - at as isize - 1)
    }
}

/// An eBPF program being written. Every instruction method appends one instruction (two for
/// [`Asm::ld_map_fd`]) and returns the assembler, so short sequences can be chained.
#[derive(Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: Labels,
    /// Jumps whose offset `finish` fills in: (instruction, label).
    jumps: Vec<(usize, Label)>,
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    /// A new label, to be bound once with [`Asm::bind`].
    pub fn label(&mut self) -> Label {
        self.labels.new_label()
    }

    /// Binds `label` to the next instruction.
    pub fn bind(&mut self, label: Label) -> &mut Asm {
        self.labels.bind(label, self.insns.len());
        self
    }

    /// The program, every jump pointed at its label.
    pub fn finish(self) -> Result<Vec<Insn>, AsmError> {
        if let Some(e) = self.labels.error {
            return Err(e);
        }
        let mut insns = self.insns;
        for (at, label) in self.jumps {
            let offset = self.labels.offset(at, label, insns.len())?;
            insns[at].off = i16::try_from(offset).map_err(|_| AsmError::OutOfRange {
                at,
                label: label.0,
                offset,
            })?;
        }
        Ok(insns)
    }

    fn emit(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> &mut Asm {
        self.insns.push(Insn {
            code,
            regs: dst as u8 | (src as u8) << 4,
            off,
            imm,
        });
        self
    }

    fn jump(&mut self, code: u8, dst: Reg, src: Reg, imm: i32, to: Label) -> &mut Asm {
        self.jumps.push((self.insns.len(), to));
        self.emit(JMP | code, dst, src, 0, imm)
    }

    // 64-bit arithmetic.

    /// `dst = src`.
    pub fn mov64_reg(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.emit(ALU64 | MOV | X, dst, src, 0, 0)
    }
    /// `dst = imm` (sign-extended).
    pub fn mov64_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.emit(ALU64 | MOV | K, dst, R0, 0, imm)
    }
    /// `dst += src`.
    pub fn add64_reg(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.emit(ALU64 | ADD | X, dst, src, 0, 0)
    }
    /// `dst += imm`.
    pub fn add64_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.emit(ALU64 | ADD | K, dst, R0, 0, imm)
    }
    /// `dst -= src`.
    pub fn sub64_reg(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.emit(ALU64 | SUB | X, dst, src, 0, 0)
    }
    /// `dst |= src`.
    pub fn or64_reg(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.emit(ALU64 | OR | X, dst, src, 0, 0)
    }
    /// `dst &= src`.
    pub fn and64_reg(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.emit(ALU64 | AND | X, dst, src, 0, 0)
    }
    /// `dst &= imm`.
    pub fn and64_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.emit(ALU64 | AND | K, dst, R0, 0, imm)
    }
    /// `dst <<= imm`.
    pub fn lsh64_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.emit(ALU64 | LSH | K, dst, R0, 0, imm)
    }

    // 32-bit arithmetic (the upper half of `dst` is zeroed).

    /// `dst = (u32)imm`.
    pub fn mov32_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.emit(ALU | MOV | K, dst, R0, 0, imm)
    }
    /// `dst = (u32)dst % (u32)imm`.
    pub fn mod32_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.emit(ALU | MOD | K, dst, R0, 0, imm)
    }
    /// `dst = (u32)dst ^ (u32)src`.
    pub fn xor32_reg(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.emit(ALU | XOR | X, dst, src, 0, 0)
    }

    // Memory.

    /// `dst = *(u8 *)(src + off)`.
    pub fn ldx_b(&mut self, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.emit(LDX | MEM | B, dst, src, off, 0)
    }
    /// `dst = *(u16 *)(src + off)`.
    pub fn ldx_h(&mut self, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.emit(LDX | MEM | H, dst, src, off, 0)
    }
    /// `dst = *(u32 *)(src + off)`.
    pub fn ldx_w(&mut self, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.emit(LDX | MEM | W, dst, src, off, 0)
    }
    /// `dst = *(u64 *)(src + off)`.
    pub fn ldx_dw(&mut self, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.emit(LDX | MEM | DW, dst, src, off, 0)
    }
    /// `*(u8 *)(dst + off) = src`.
    pub fn stx_b(&mut self, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.emit(STX | MEM | B, dst, src, off, 0)
    }
    /// `*(u16 *)(dst + off) = src`.
    pub fn stx_h(&mut self, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.emit(STX | MEM | H, dst, src, off, 0)
    }
    /// `*(u32 *)(dst + off) = src`.
    pub fn stx_w(&mut self, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.emit(STX | MEM | W, dst, src, off, 0)
    }
    /// `*(u64 *)(dst + off) = src`.
    pub fn stx_dw(&mut self, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.emit(STX | MEM | DW, dst, src, off, 0)
    }
    /// `*(u64 *)(dst + off) += src`, atomically (`BPF_ATOMIC` with `BPF_ADD`, once `BPF_XADD`):
    /// counters that several CPUs may bump at once.
    pub fn atomic_add_dw(&mut self, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.emit(STX | ATOMIC | DW, dst, src, off, i32::from(ADD))
    }
    /// `*(u32 *)(dst + off) = imm`.
    pub fn st_w(&mut self, dst: Reg, off: i16, imm: i32) -> &mut Asm {
        self.emit(ST | MEM | W, dst, R0, off, imm)
    }
    /// `r0 = ntohl(*(u32 *)(packet + imm))`, the classic packet load; needs the context in R6
    /// (negative `imm`: the kernel's `SKF_NET_OFF` and `SKF_LL_OFF` areas).
    pub fn ld_abs_w(&mut self, imm: i32) -> &mut Asm {
        self.emit(LD | ABS | W, R0, R0, 0, imm)
    }
    /// `dst = map` (two instructions: a 64-bit immediate load the kernel resolves from the
    /// map's descriptor).
    pub fn ld_map_fd(&mut self, dst: Reg, map: std::os::fd::RawFd) -> &mut Asm {
        self.insns.push(Insn {
            code: LD | DW | IMM,
            regs: dst as u8 | BPF_PSEUDO_MAP_FD << 4,
            off: 0,
            imm: map,
        });
        self.insns.push(Insn {
            code: 0,
            regs: 0,
            off: 0,
            imm: 0,
        });
        self
    }

    // Jumps (64-bit comparisons), calls and exit.

    /// `goto to`.
    pub fn ja(&mut self, to: Label) -> &mut Asm {
        self.jump(JA, R0, R0, 0, to)
    }
    /// `if dst == imm goto to`.
    pub fn jeq_imm(&mut self, dst: Reg, imm: i32, to: Label) -> &mut Asm {
        self.jump(JEQ | K, dst, R0, imm, to)
    }
    /// `if dst != imm goto to`.
    pub fn jne_imm(&mut self, dst: Reg, imm: i32, to: Label) -> &mut Asm {
        self.jump(JNE | K, dst, R0, imm, to)
    }
    /// `if dst <= imm goto to` (signed).
    pub fn jsle_imm(&mut self, dst: Reg, imm: i32, to: Label) -> &mut Asm {
        self.jump(JSLE | K, dst, R0, imm, to)
    }
    /// `if dst > imm goto to` (unsigned).
    pub fn jgt_imm(&mut self, dst: Reg, imm: i32, to: Label) -> &mut Asm {
        self.jump(JGT | K, dst, R0, imm, to)
    }
    /// `if dst == src goto to`.
    pub fn jeq_reg(&mut self, dst: Reg, src: Reg, to: Label) -> &mut Asm {
        self.jump(JEQ | X, dst, src, 0, to)
    }
    /// `if dst != src goto to`.
    pub fn jne_reg(&mut self, dst: Reg, src: Reg, to: Label) -> &mut Asm {
        self.jump(JNE | X, dst, src, 0, to)
    }
    /// `r0 = helper(r1, ..., r5)`; R1-R5 are clobbered.
    pub fn call(&mut self, helper: Helper) -> &mut Asm {
        self.emit(JMP | CALL, R0, R0, 0, helper as i32)
    }
    /// `return r0`.
    pub fn exit(&mut self) -> &mut Asm {
        self.emit(JMP | EXIT, R0, R0, 0, 0)
    }
}

/// A classic BPF program being written (`struct sock_filter`s), for the fan-out that stands in
/// where eBPF cannot be loaded. Conditional jumps name a label for each outcome; classic BPF
/// only jumps forward, at most 255 instructions for a conditional jump.
#[derive(Default)]
pub struct Classic {
    insns: Vec<libc::sock_filter>,
    labels: Labels,
    /// Jumps whose offsets `finish` fills in: (instruction, if true or always, if false).
    jumps: Vec<(usize, Label, Option<Label>)>,
}

impl Classic {
    pub fn new() -> Classic {
        Classic::default()
    }

    /// A new label, to be bound once with [`Classic::bind`].
    pub fn label(&mut self) -> Label {
        self.labels.new_label()
    }

    /// Binds `label` to the next instruction.
    pub fn bind(&mut self, label: Label) -> &mut Classic {
        self.labels.bind(label, self.insns.len());
        self
    }

    /// The program, every jump pointed at its labels.
    pub fn finish(self) -> Result<Vec<libc::sock_filter>, AsmError> {
        if let Some(e) = self.labels.error {
            return Err(e);
        }
        let mut insns = self.insns;
        let len = insns.len();
        let forward = |at: usize, label: Label, max: isize| {
            let offset = self.labels.offset(at, label, len)?;
            if !(0..=max).contains(&offset) {
                return Err(AsmError::OutOfRange {
                    at,
                    label: label.0,
                    offset,
                });
            }
            Ok(offset)
        };
        for &(at, yes, no) in &self.jumps {
            match no {
                None => insns[at].k = forward(at, yes, i32::MAX as isize)? as u32,
                Some(no) => {
                    insns[at].jt = forward(at, yes, 255)? as u8;
                    insns[at].jf = forward(at, no, 255)? as u8;
                }
            }
        }
        Ok(insns)
    }

    fn emit(&mut self, code: u32, k: u32) -> &mut Classic {
        self.insns.push(libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        });
        self
    }

    /// `A = skb->len`.
    pub fn ld_len(&mut self) -> &mut Classic {
        self.emit(libc::BPF_LD | libc::BPF_W | libc::BPF_LEN, 0)
    }
    /// `A = ntohl(*(u32 *)(packet + k))` (or an ancillary field, `SKF_AD_OFF + field`).
    pub fn ld_w_abs(&mut self, k: u32) -> &mut Classic {
        self.emit(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, k)
    }
    /// `X = A`.
    pub fn tax(&mut self) -> &mut Classic {
        self.emit(libc::BPF_MISC | libc::BPF_TAX, 0)
    }
    /// `A ^= X`.
    pub fn xor_x(&mut self) -> &mut Classic {
        self.emit(libc::BPF_ALU | libc::BPF_XOR | libc::BPF_X, 0)
    }
    /// `return A`.
    pub fn ret_a(&mut self) -> &mut Classic {
        self.emit(libc::BPF_RET | libc::BPF_A, 0)
    }
    /// `goto to`.
    pub fn ja(&mut self, to: Label) -> &mut Classic {
        self.jumps.push((self.insns.len(), to, None));
        self.emit(libc::BPF_JMP | libc::BPF_JA, 0)
    }
    /// `if A > k goto yes else goto no`.
    pub fn jgt(&mut self, k: u32, yes: Label, no: Label) -> &mut Classic {
        self.jumps.push((self.insns.len(), yes, Some(no)));
        self.emit(libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K, k)
    }
    /// `if A == k goto yes else goto no`.
    pub fn jeq(&mut self, k: u32, yes: Label, no: Label) -> &mut Classic {
        self.jumps.push((self.insns.len(), yes, Some(no)));
        self.emit(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(insns: &[Insn]) -> Vec<i16> {
        insns.iter().map(|i| i.off).collect()
    }

    #[test]
    fn labels_resolve_forward_and_backward_counting_from_the_next_instruction() {
        let mut a = Asm::new();
        let (top, end) = (a.label(), a.label());
        a.bind(top).mov64_imm(R0, 0); // 0
        a.jeq_imm(R0, 1, end); // 1: to 4
        a.ld_map_fd(R1, 3); // 2, 3: two slots
        a.bind(end).ja(top); // 4: back to 0
        a.exit(); // 5
        let insns = a.finish().unwrap();
        assert_eq!(insns.len(), 6);
        assert_eq!(offsets(&insns), [0, 2, 0, 0, -5, 0]);
        // Encoding: opcode, registers (dst low, src high), immediate.
        assert_eq!(insns[1].code, 0x15);
        let mut b = Asm::new();
        b.and64_reg(R1, R2).exit();
        let and = b.finish().unwrap()[0];
        assert_eq!(
            (and.code, and.regs),
            (0x5f, 0x21),
            "BPF_ALU64 | BPF_AND | BPF_X, r1 &= r2"
        );
        assert_eq!(insns[2].code, 0x18);
        assert_eq!(insns[2].regs, 0x11, "dst r1, src BPF_PSEUDO_MAP_FD");
        assert_eq!(insns[2].imm, 3);
    }

    #[test]
    fn misused_labels_are_errors() {
        let mut a = Asm::new();
        let nowhere = a.label();
        a.ja(nowhere).exit();
        assert_eq!(a.finish(), Err(AsmError::Unbound(0)));

        let mut a = Asm::new();
        let twice = a.label();
        a.bind(twice).exit().bind(twice).exit();
        assert_eq!(a.finish(), Err(AsmError::BoundTwice(0)));

        let mut other = Asm::new();
        other.label();
        let foreign = other.label();
        let mut a = Asm::new();
        a.ja(foreign).exit();
        assert_eq!(a.finish(), Err(AsmError::Foreign(1)));

        let mut a = Asm::new();
        let end = a.label();
        a.ja(end).exit().bind(end);
        assert_eq!(a.finish(), Err(AsmError::PastEnd(0)));

        // Farther than a 16-bit offset reaches, either way.
        let mut a = Asm::new();
        let (back, far) = (a.label(), a.label());
        a.bind(back).ja(far);
        for _ in 0..40_000 {
            a.mov64_imm(R0, 0);
        }
        a.bind(far).exit();
        assert!(matches!(
            a.finish(),
            Err(AsmError::OutOfRange {
                at: 0,
                offset: 40_000,
                ..
            })
        ));
        let mut a = Asm::new();
        let back = a.label();
        a.bind(back);
        for _ in 0..40_000 {
            a.mov64_imm(R0, 0);
        }
        a.ja(back).exit();
        assert!(matches!(
            a.finish(),
            Err(AsmError::OutOfRange {
                at: 40_000,
                offset: -40_001,
                ..
            })
        ));
    }

    #[test]
    fn classic_jumps_are_forward_and_short() {
        let mut c = Classic::new();
        let (yes, no, end) = (c.label(), c.label(), c.label());
        c.ld_len().jgt(10, yes, no); // 0, 1
        c.bind(yes).ja(end); // 2: to 4
        c.bind(no).tax(); // 3
        c.bind(end).ret_a(); // 4
        let p = c.finish().unwrap();
        assert_eq!((p[1].jt, p[1].jf), (0, 1));
        assert_eq!(p[2].k, 1);

        let mut c = Classic::new();
        let back = c.label();
        c.bind(back).ld_len().ja(back).ret_a();
        assert!(matches!(
            c.finish(),
            Err(AsmError::OutOfRange { offset: -2, .. })
        ));

        let mut c = Classic::new();
        let (near, far) = (c.label(), c.label());
        c.jeq(0, near, far).bind(near);
        for _ in 0..300 {
            c.tax();
        }
        c.bind(far).ret_a();
        assert!(matches!(
            c.finish(),
            Err(AsmError::OutOfRange { offset: 300, .. })
        ));
    }

    #[test]
    fn the_kernel_runs_a_backward_jump_as_assembled() {
        use crate::bpf::sys::{load_program, test_run, ProgType};
        crate::bpf::tests::need_root();
        // A bounded loop (r0 counts to 3): the kernel's verifier and interpreter or JIT agree
        // with the assembler on what a negative offset means.
        let mut a = Asm::new();
        let again = a.label();
        a.mov64_imm(R0, 0);
        a.bind(again).add64_imm(R0, 1).jne_imm(R0, 3, again);
        a.exit();
        let insns = a.finish().unwrap();
        let prog = load_program(ProgType::SocketFilter, &insns).unwrap();
        assert_eq!(test_run(&prog, &[0u8; 64]).unwrap(), 3);
    }
}
