//! A small eBPF assembler: instructions as data, jumps to symbolic labels, helpers by name,
//! map references resolved to file descriptors at load time, and a listing for review.
//!
//! [`crate::steering`] writes its programs with hand-counted jump offsets; the express lane's
//! programs are longer (one to two hundred instructions), so they are written with [`Asm`]:
//!
//! ```
//! use flannel_dataplane::bpf_asm::{Asm, Cond, R0, R1};
//! let mut a = Asm::new();
//! let out = a.label();
//! a.ldx_w(R0, R1, 0); // r0 = skb->len
//! a.jcc_imm(Cond::Gt, R0, 100, out);
//! a.mov64_imm(R0, 0);
//! a.exit();
//! a.bind(out);
//! a.mov64_imm(R0, 1);
//! a.exit();
//! let prog = a.finish().unwrap();
//! assert_eq!(prog.insns().len(), 6);
//! ```
//!
//! [`Asm::finish`] checks that every label is bound once, that every jump fits the 16-bit
//! offset and lands inside the program (never on the second slot of a 64-bit load), and that
//! the program ends in `exit` or an unconditional jump. The kernel's verifier remains the
//! judge of everything else. Pure data, no I/O.

#![forbid(unsafe_code)]

use std::fmt::Write as _;

pub use crate::steering::BpfInsn;

/// A register: r0 return value, r1–r5 helper arguments (clobbered by calls), r6–r9
/// callee-saved, r10 the read-only frame pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg(u8);

pub const R0: Reg = Reg(0);
pub const R1: Reg = Reg(1);
pub const R2: Reg = Reg(2);
pub const R3: Reg = Reg(3);
pub const R4: Reg = Reg(4);
pub const R5: Reg = Reg(5);
pub const R6: Reg = Reg(6);
pub const R7: Reg = Reg(7);
pub const R8: Reg = Reg(8);
pub const R9: Reg = Reg(9);
pub const R10: Reg = Reg(10);

/// Memory access size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    B,
    H,
    W,
    DW,
}

impl Size {
    fn bits(self) -> u8 {
        match self {
            Size::W => 0x00,
            Size::H => 0x08,
            Size::B => 0x10,
            Size::DW => 0x18,
        }
    }
    fn from_bits(b: u8) -> Self {
        match b & 0x18 {
            0x00 => Size::W,
            0x08 => Size::H,
            0x10 => Size::B,
            _ => Size::DW,
        }
    }
    fn c_type(self) -> &'static str {
        match self {
            Size::B => "u8",
            Size::H => "u16",
            Size::W => "u32",
            Size::DW => "u64",
        }
    }
}

/// Arithmetic operations (`BPF_ALU` / `BPF_ALU64` op field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alu {
    Add = 0x00,
    Sub = 0x10,
    Mul = 0x20,
    Div = 0x30,
    Or = 0x40,
    And = 0x50,
    Lsh = 0x60,
    Rsh = 0x70,
    Mod = 0x90,
    Xor = 0xa0,
    Mov = 0xb0,
    Arsh = 0xc0,
}

impl Alu {
    fn from_op(op: u8) -> Option<Self> {
        Some(match op {
            0x00 => Alu::Add,
            0x10 => Alu::Sub,
            0x20 => Alu::Mul,
            0x30 => Alu::Div,
            0x40 => Alu::Or,
            0x50 => Alu::And,
            0x60 => Alu::Lsh,
            0x70 => Alu::Rsh,
            0x90 => Alu::Mod,
            0xa0 => Alu::Xor,
            0xb0 => Alu::Mov,
            0xc0 => Alu::Arsh,
            _ => return None,
        })
    }
    fn symbol(self) -> &'static str {
        match self {
            Alu::Add => "+=",
            Alu::Sub => "-=",
            Alu::Mul => "*=",
            Alu::Div => "/=",
            Alu::Or => "|=",
            Alu::And => "&=",
            Alu::Lsh => "<<=",
            Alu::Rsh => ">>=",
            Alu::Mod => "%=",
            Alu::Xor => "^=",
            Alu::Mov => "=",
            Alu::Arsh => "s>>=",
        }
    }
}

/// Jump conditions (`BPF_JMP` op field); unsigned unless prefixed with `S`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    Eq = 0x10,
    Gt = 0x20,
    Ge = 0x30,
    Set = 0x40,
    Ne = 0x50,
    Sgt = 0x60,
    Sge = 0x70,
    Lt = 0xa0,
    Le = 0xb0,
    Slt = 0xc0,
    Sle = 0xd0,
}

impl Cond {
    fn from_op(op: u8) -> Option<Self> {
        Some(match op {
            0x10 => Cond::Eq,
            0x20 => Cond::Gt,
            0x30 => Cond::Ge,
            0x40 => Cond::Set,
            0x50 => Cond::Ne,
            0x60 => Cond::Sgt,
            0x70 => Cond::Sge,
            0xa0 => Cond::Lt,
            0xb0 => Cond::Le,
            0xc0 => Cond::Slt,
            0xd0 => Cond::Sle,
            _ => return None,
        })
    }
    fn symbol(self) -> &'static str {
        match self {
            Cond::Eq => "==",
            Cond::Gt => ">",
            Cond::Ge => ">=",
            Cond::Set => "&",
            Cond::Ne => "!=",
            Cond::Sgt => "s>",
            Cond::Sge => "s>=",
            Cond::Lt => "<",
            Cond::Le => "<=",
            Cond::Slt => "s<",
            Cond::Sle => "s<=",
        }
    }
}

/// The kernel helpers the project's programs call (`enum bpf_func_id`; numbers read from
/// the running kernel's BTF and stable by ABI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Helper {
    MapLookupElem = 1,
    MapUpdateElem = 2,
    KtimeGetNs = 5,
    GetSmpProcessorId = 8,
    SkbStoreBytes = 9,
    L3CsumReplace = 10,
    L4CsumReplace = 11,
    Redirect = 23,
    SkbLoadBytes = 26,
    CsumDiff = 28,
    GetHashRecalc = 34,
    SkbChangeHead = 43,
    SkbAdjustRoom = 50,
    CsumLevel = 135,
    RedirectNeigh = 152,
    RedirectPeer = 155,
}

impl Helper {
    const ALL: &'static [Helper] = &[
        Helper::MapLookupElem,
        Helper::MapUpdateElem,
        Helper::KtimeGetNs,
        Helper::GetSmpProcessorId,
        Helper::SkbStoreBytes,
        Helper::L3CsumReplace,
        Helper::L4CsumReplace,
        Helper::Redirect,
        Helper::SkbLoadBytes,
        Helper::CsumDiff,
        Helper::GetHashRecalc,
        Helper::SkbChangeHead,
        Helper::SkbAdjustRoom,
        Helper::CsumLevel,
        Helper::RedirectNeigh,
        Helper::RedirectPeer,
    ];

    /// The kernel's name of the helper (`bpf_` prefix dropped).
    pub fn name(self) -> &'static str {
        match self {
            Helper::MapLookupElem => "map_lookup_elem",
            Helper::MapUpdateElem => "map_update_elem",
            Helper::KtimeGetNs => "ktime_get_ns",
            Helper::GetSmpProcessorId => "get_smp_processor_id",
            Helper::SkbStoreBytes => "skb_store_bytes",
            Helper::L3CsumReplace => "l3_csum_replace",
            Helper::L4CsumReplace => "l4_csum_replace",
            Helper::Redirect => "redirect",
            Helper::SkbLoadBytes => "skb_load_bytes",
            Helper::CsumDiff => "csum_diff",
            Helper::GetHashRecalc => "get_hash_recalc",
            Helper::SkbChangeHead => "skb_change_head",
            Helper::SkbAdjustRoom => "skb_adjust_room",
            Helper::CsumLevel => "csum_level",
            Helper::RedirectNeigh => "redirect_neigh",
            Helper::RedirectPeer => "redirect_peer",
        }
    }

    fn from_id(id: i32) -> Option<Self> {
        Helper::ALL.iter().copied().find(|h| *h as i32 == id)
    }
}

/// A jump target; create with [`Asm::label`], place with [`Asm::bind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label(usize);

/// The program's n-th map: the loader puts the map's fd into every `ld_map` of that slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSlot(pub usize);

/// Why [`Asm::finish`] refused a program.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    #[error("label {0} is used but never bound")]
    Unbound(usize),
    #[error("label {0} is bound twice")]
    BoundTwice(usize),
    #[error("jump at {at} to {target} does not fit a 16-bit offset")]
    OutOfRange { at: usize, target: usize },
    #[error("jump at {at} lands on the second half of a 64-bit load at {target}")]
    IntoWideLoad { at: usize, target: usize },
    #[error("label {label} is bound at the end of the program (nothing to jump to)")]
    LabelAtEnd { label: usize },
    #[error("the program does not end in exit or an unconditional jump")]
    NoExit,
    #[error("map slot {slot} has no fd ({given} given)")]
    MissingMap { slot: usize, given: usize },
}

const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const CLASS_ALU64: u8 = 0x07;
const MODE_MEM: u8 = 0x60;
const SRC_X: u8 = 0x08;
const OP_END: u8 = 0xd0;
const OP_JA: u8 = 0x00;
const OP_CALL: u8 = 0x80;
const OP_EXIT: u8 = 0x90;
const LD_IMM64: u8 = 0x18;
const BPF_PSEUDO_MAP_FD: u8 = 1;

fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src.0 << 4) | dst.0,
        off,
        imm,
    }
}

/// The instruction list being written.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<BpfInsn>,
    /// Label → bound instruction index.
    labels: Vec<Option<usize>>,
    /// (instruction index, label) of every jump to patch.
    fixups: Vec<(usize, Label)>,
    /// (instruction index of an `ld_imm64`, map slot).
    maps: Vec<(usize, MapSlot)>,
    errors: Vec<AsmError>,
}

impl Asm {
    pub fn new() -> Self {
        Self::default()
    }

    /// Instructions written so far.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// A new, unbound label.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Places `l` at the next instruction written.
    pub fn bind(&mut self, l: Label) {
        if self.labels[l.0].is_some() {
            self.errors.push(AsmError::BoundTwice(l.0));
        }
        self.labels[l.0] = Some(self.insns.len());
    }

    fn push(&mut self, i: BpfInsn) -> &mut Self {
        self.insns.push(i);
        self
    }

    // --- ALU -------------------------------------------------------------------------------

    /// `dst OP= imm`, 64-bit.
    pub fn alu64_imm(&mut self, op: Alu, dst: Reg, imm: i32) -> &mut Self {
        self.push(insn(CLASS_ALU64 | op as u8, dst, R0, 0, imm))
    }
    /// `dst OP= src`, 64-bit.
    pub fn alu64_reg(&mut self, op: Alu, dst: Reg, src: Reg) -> &mut Self {
        self.push(insn(CLASS_ALU64 | op as u8 | SRC_X, dst, src, 0, 0))
    }
    /// `wdst OP= imm`, 32-bit (the upper half of `dst` becomes zero).
    pub fn alu32_imm(&mut self, op: Alu, dst: Reg, imm: i32) -> &mut Self {
        self.push(insn(CLASS_ALU | op as u8, dst, R0, 0, imm))
    }
    /// `wdst OP= wsrc`, 32-bit (the upper half of `dst` becomes zero).
    pub fn alu32_reg(&mut self, op: Alu, dst: Reg, src: Reg) -> &mut Self {
        self.push(insn(CLASS_ALU | op as u8 | SRC_X, dst, src, 0, 0))
    }
    pub fn mov64_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.alu64_imm(Alu::Mov, dst, imm)
    }
    pub fn mov64_reg(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.alu64_reg(Alu::Mov, dst, src)
    }
    /// `dst = htobe16(dst)`: on a little-endian machine swaps the low two bytes and clears the
    /// rest (`BPF_ALU | BPF_END | BPF_TO_BE`, imm 16).
    pub fn be16(&mut self, dst: Reg) -> &mut Self {
        self.push(insn(CLASS_ALU | OP_END | SRC_X, dst, R0, 0, 16))
    }
    /// `dst = htobe32(dst)` (upper half cleared).
    pub fn be32(&mut self, dst: Reg) -> &mut Self {
        self.push(insn(CLASS_ALU | OP_END | SRC_X, dst, R0, 0, 32))
    }

    // --- memory ----------------------------------------------------------------------------

    /// `dst = *(size *)(src + off)`.
    pub fn ldx(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.push(insn(CLASS_LDX | MODE_MEM | size.bits(), dst, src, off, 0))
    }
    pub fn ldx_b(&mut self, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.ldx(Size::B, dst, src, off)
    }
    pub fn ldx_h(&mut self, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.ldx(Size::H, dst, src, off)
    }
    pub fn ldx_w(&mut self, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.ldx(Size::W, dst, src, off)
    }
    /// `*(size *)(dst + off) = src`.
    pub fn stx(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.push(insn(CLASS_STX | MODE_MEM | size.bits(), dst, src, off, 0))
    }
    /// `*(size *)(dst + off) = imm`.
    pub fn st_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) -> &mut Self {
        self.push(insn(CLASS_ST | MODE_MEM | size.bits(), dst, R0, off, imm))
    }
    /// `dst = &map` (the two-slot `BPF_LD | BPF_IMM | BPF_DW` with the map-fd pseudo source);
    /// the fd is filled in by [`Program::with_map_fds`].
    pub fn ld_map(&mut self, dst: Reg, slot: MapSlot) -> &mut Self {
        self.maps.push((self.insns.len(), slot));
        self.push(insn(LD_IMM64, dst, Reg(BPF_PSEUDO_MAP_FD), 0, 0));
        self.push(insn(0, R0, R0, 0, 0))
    }

    // --- control ---------------------------------------------------------------------------

    /// `goto l`.
    pub fn ja(&mut self, l: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), l));
        self.push(insn(CLASS_JMP | OP_JA, R0, R0, 0, 0))
    }
    /// `if dst COND imm goto l` (64-bit compare; `imm` is sign-extended).
    pub fn jcc_imm(&mut self, c: Cond, dst: Reg, imm: i32, l: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), l));
        self.push(insn(CLASS_JMP | c as u8, dst, R0, 0, imm))
    }
    /// `if dst COND src goto l` (64-bit compare).
    pub fn jcc_reg(&mut self, c: Cond, dst: Reg, src: Reg, l: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), l));
        self.push(insn(CLASS_JMP | c as u8 | SRC_X, dst, src, 0, 0))
    }
    /// `if wdst COND imm goto l` (32-bit compare).
    pub fn jcc32_imm(&mut self, c: Cond, dst: Reg, imm: i32, l: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), l));
        self.push(insn(CLASS_JMP32 | c as u8, dst, R0, 0, imm))
    }
    /// `r0 = helper(r1, …, r5)`; clobbers r1–r5.
    pub fn call(&mut self, h: Helper) -> &mut Self {
        self.push(insn(CLASS_JMP | OP_CALL, R0, R0, 0, h as i32))
    }
    pub fn exit(&mut self) -> &mut Self {
        self.push(insn(CLASS_JMP | OP_EXIT, R0, R0, 0, 0))
    }

    /// Resolves the labels and checks the program's shape (see the module docs).
    pub fn finish(mut self) -> Result<Program, AsmError> {
        if let Some(e) = self.errors.first() {
            return Err(e.clone());
        }
        let n = self.insns.len();
        let wide: Vec<usize> = (0..n)
            .filter(|&i| self.insns[i].code == LD_IMM64)
            .map(|i| i + 1)
            .collect();
        for &(at, l) in &self.fixups {
            let target = self.labels[l.0].ok_or(AsmError::Unbound(l.0))?;
            if target >= n {
                return Err(AsmError::LabelAtEnd { label: l.0 });
            }
            if wide.contains(&target) {
                return Err(AsmError::IntoWideLoad { at, target });
            }
            let off = target as i64 - at as i64 - 1;
            self.insns[at].off =
                i16::try_from(off).map_err(|_| AsmError::OutOfRange { at, target })?;
        }
        let last_ok = self
            .insns
            .last()
            .is_some_and(|i| i.code == CLASS_JMP | OP_EXIT || i.code == CLASS_JMP | OP_JA);
        if !last_ok {
            return Err(AsmError::NoExit);
        }
        let mut label_at = vec![None; n];
        for (i, pos) in self.labels.iter().enumerate() {
            if let Some(p) = pos {
                if *p < n && label_at[*p].is_none() {
                    label_at[*p] = Some(i);
                }
            }
        }
        Ok(Program {
            insns: self.insns,
            maps: self.maps,
            label_at,
        })
    }
}

/// A finished program: instructions with map placeholders, ready to be given fds and loaded.
#[derive(Debug, Clone)]
pub struct Program {
    insns: Vec<BpfInsn>,
    maps: Vec<(usize, MapSlot)>,
    /// For the listing: the first label bound at each instruction.
    label_at: Vec<Option<usize>>,
}

impl Program {
    /// The instructions, map loads still holding fd 0.
    pub fn insns(&self) -> &[BpfInsn] {
        &self.insns
    }

    /// Number of distinct map slots the program refers to (highest slot + 1).
    pub fn map_slots(&self) -> usize {
        self.maps.iter().map(|(_, s)| s.0 + 1).max().unwrap_or(0)
    }

    /// The helpers the program calls, in order of first use.
    pub fn helpers(&self) -> Vec<i32> {
        let mut v = Vec::new();
        for i in &self.insns {
            if i.code == CLASS_JMP | OP_CALL && !v.contains(&i.imm) {
                v.push(i.imm);
            }
        }
        v
    }

    /// The instructions with `fds[slot]` in every map load of that slot.
    pub fn with_map_fds(&self, fds: &[i32]) -> Result<Vec<BpfInsn>, AsmError> {
        let mut out = self.insns.clone();
        for &(at, slot) in &self.maps {
            let fd = *fds.get(slot.0).ok_or(AsmError::MissingMap {
                slot: slot.0,
                given: fds.len(),
            })?;
            out[at].imm = fd;
        }
        Ok(out)
    }

    /// A listing in the style of the kernel verifier's log, one instruction per line, with
    /// label markers (`L3:`) and jump targets; for review and golden files.
    pub fn listing(&self) -> String {
        let mut s = String::new();
        let mut i = 0;
        while i < self.insns.len() {
            if let Some(l) = self.label_at[i] {
                let _ = writeln!(s, "L{l}:");
            }
            let ins = self.insns[i];
            let text = self.describe(i, ins);
            let _ = writeln!(s, "{i:4}: {text}");
            i += if ins.code == LD_IMM64 { 2 } else { 1 };
        }
        s
    }

    fn describe(&self, at: usize, i: BpfInsn) -> String {
        let dst = i.regs & 0x0f;
        let src = i.regs >> 4;
        let class = i.code & 0x07;
        let op = i.code & 0xf0;
        let target = |off: i16| {
            let t = at as i64 + 1 + i64::from(off);
            match usize::try_from(t)
                .ok()
                .and_then(|t| self.label_at.get(t).copied().flatten())
            {
                Some(l) => format!("L{l}"),
                None => format!("{t}"),
            }
        };
        match class {
            CLASS_ALU | CLASS_ALU64 => {
                let r = if class == CLASS_ALU64 { "r" } else { "w" };
                if op == OP_END {
                    return format!("r{dst} = be{}(r{dst})", i.imm);
                }
                let Some(alu) = Alu::from_op(op) else {
                    return format!("alu code {:#04x}", i.code);
                };
                let rhs = if i.code & SRC_X != 0 {
                    format!("{r}{src}")
                } else {
                    imm_text(i.imm)
                };
                format!("{r}{dst} {} {rhs}", alu.symbol())
            }
            CLASS_LDX => format!(
                "r{dst} = *({} *)(r{src} {:+})",
                Size::from_bits(i.code).c_type(),
                i.off
            ),
            CLASS_STX => format!(
                "*({} *)(r{dst} {:+}) = r{src}",
                Size::from_bits(i.code).c_type(),
                i.off
            ),
            CLASS_ST => format!(
                "*({} *)(r{dst} {:+}) = {}",
                Size::from_bits(i.code).c_type(),
                i.off,
                imm_text(i.imm)
            ),
            CLASS_JMP | CLASS_JMP32 => {
                if i.code == CLASS_JMP | OP_CALL {
                    return match Helper::from_id(i.imm) {
                        Some(h) => format!("call {}#{}", h.name(), i.imm),
                        None => format!("call #{}", i.imm),
                    };
                }
                if i.code == CLASS_JMP | OP_EXIT {
                    return "exit".into();
                }
                if op == OP_JA {
                    return format!("goto {}", target(i.off));
                }
                let Some(c) = Cond::from_op(op) else {
                    return format!("jmp code {:#04x}", i.code);
                };
                let r = if class == CLASS_JMP { "r" } else { "w" };
                let rhs = if i.code & SRC_X != 0 {
                    format!("{r}{src}")
                } else {
                    imm_text(i.imm)
                };
                format!("if {r}{dst} {} {rhs} goto {}", c.symbol(), target(i.off))
            }
            _ if i.code == LD_IMM64 => {
                let slot = self.maps.iter().find(|(a, _)| *a == at).map(|(_, s)| s.0);
                match slot {
                    Some(s) => format!("r{dst} = map[{s}]"),
                    None => format!("r{dst} = {:#x} ll", i.imm),
                }
            }
            _ => format!("code {:#04x}", i.code),
        }
    }
}

/// An immediate as the listing shows it: hex when non-negative, decimal when negative.
fn imm_text(imm: i32) -> String {
    if imm < 0 {
        imm.to_string()
    } else {
        format!("{imm:#x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodings of one instruction of each kind, as the kernel's `include/uapi/linux/bpf.h`
    /// and `filter.h` macros produce them (code, dst | src << 4, off, imm).
    #[test]
    fn encodings_match_the_kernel_macros() {
        let l = |f: &dyn Fn(&mut Asm)| {
            let mut a = Asm::new();
            f(&mut a);
            a.insns[0]
        };
        let e = |code, regs, off, imm| BpfInsn {
            code,
            regs,
            off,
            imm,
        };
        // BPF_MOV64_REG(r6, r1)
        assert_eq!(
            l(&|a| {
                a.mov64_reg(R6, R1);
            }),
            e(0xbf, 0x16, 0, 0)
        );
        // BPF_MOV64_IMM(r0, -1)
        assert_eq!(
            l(&|a| {
                a.mov64_imm(R0, -1);
            }),
            e(0xb7, 0x00, 0, -1)
        );
        // BPF_ALU32_REG(BPF_SUB, r3, r4)
        assert_eq!(
            l(&|a| {
                a.alu32_reg(Alu::Sub, R3, R4);
            }),
            e(0x1c, 0x43, 0, 0)
        );
        // BPF_ALU64_REG(BPF_RSH, r3, r4)
        assert_eq!(
            l(&|a| {
                a.alu64_reg(Alu::Rsh, R3, R4);
            }),
            e(0x7f, 0x43, 0, 0)
        );
        // BPF_ALU64_IMM(BPF_AND, r0, 0xffff)
        assert_eq!(
            l(&|a| {
                a.alu64_imm(Alu::And, R0, 0xffff);
            }),
            e(0x57, 0x00, 0, 0xffff)
        );
        // BPF_ENDIAN(BPF_TO_BE, r3, 32)
        assert_eq!(
            l(&|a| {
                a.be32(R3);
            }),
            e(0xdc, 0x03, 0, 32)
        );
        // BPF_LDX_MEM(BPF_W, r2, r6, 16)
        assert_eq!(
            l(&|a| {
                a.ldx_w(R2, R6, 16);
            }),
            e(0x61, 0x62, 16, 0)
        );
        // BPF_LDX_MEM(BPF_B, r2, r10, -32)
        assert_eq!(
            l(&|a| {
                a.ldx_b(R2, R10, -32);
            }),
            e(0x71, 0xa2, -32, 0)
        );
        // BPF_STX_MEM(BPF_H, r10, r3, -62)
        assert_eq!(
            l(&|a| {
                a.stx(Size::H, R10, -62, R3);
            }),
            e(0x6b, 0x3a, -62, 0)
        );
        // BPF_ST_MEM(BPF_W, r10, -8, 5)
        assert_eq!(
            l(&|a| {
                a.st_imm(Size::W, R10, -8, 5);
            }),
            e(0x62, 0x0a, -8, 5)
        );
        // BPF_STX_MEM(BPF_DW, r0, r1, 0)
        assert_eq!(
            l(&|a| {
                a.stx(Size::DW, R0, 0, R1);
            }),
            e(0x7b, 0x10, 0, 0)
        );
        // BPF_EMIT_CALL(BPF_FUNC_skb_adjust_room)
        assert_eq!(
            l(&|a| {
                a.call(Helper::SkbAdjustRoom);
            }),
            e(0x85, 0x00, 0, 50)
        );
        // BPF_EXIT_INSN()
        assert_eq!(
            l(&|a| {
                a.exit();
            }),
            e(0x95, 0x00, 0, 0)
        );
        // BPF_LD_MAP_FD(r1, fd): two slots, pseudo source 1
        let mut a = Asm::new();
        a.ld_map(R1, MapSlot(0));
        assert_eq!(a.insns, vec![e(0x18, 0x11, 0, 0), e(0, 0, 0, 0)]);
    }

    #[test]
    fn jumps_resolve_forward_and_backward() {
        let mut a = Asm::new();
        let top = a.label();
        let out = a.label();
        a.bind(top);
        a.mov64_imm(R0, 0); // 0
        a.jcc_imm(Cond::Eq, R1, 7, out); // 1 → 4
        a.jcc_reg(Cond::Gt, R1, R2, top); // 2 → 0
        a.ja(out); // 3 → 4
        a.bind(out);
        a.exit(); // 4
        let p = a.finish().unwrap();
        let offs: Vec<i16> = p.insns().iter().map(|i| i.off).collect();
        assert_eq!(offs, vec![0, 2, -3, 0, 0]);
        assert_eq!(p.insns()[1].code, 0x15);
        assert_eq!(p.insns()[2].code, 0x2d);
        assert_eq!(p.insns()[3].code, 0x05);
    }

    #[test]
    fn finish_refuses_bad_programs() {
        let mut a = Asm::new();
        let l = a.label();
        a.ja(l);
        assert_eq!(a.finish().unwrap_err(), AsmError::Unbound(0));

        let mut a = Asm::new();
        let l = a.label();
        a.ja(l);
        a.bind(l);
        assert_eq!(a.finish().unwrap_err(), AsmError::LabelAtEnd { label: 0 });

        let mut a = Asm::new();
        let l = a.label();
        a.bind(l);
        a.bind(l);
        a.exit();
        assert_eq!(a.finish().unwrap_err(), AsmError::BoundTwice(0));

        let mut a = Asm::new();
        a.mov64_imm(R0, 0);
        assert_eq!(a.finish().unwrap_err(), AsmError::NoExit);

        let mut a = Asm::new();
        let far = a.label();
        a.ja(far);
        for _ in 0..40_000 {
            a.mov64_imm(R0, 0);
        }
        a.bind(far);
        a.exit();
        assert!(matches!(
            a.finish(),
            Err(AsmError::OutOfRange { at: 0, .. })
        ));
    }

    #[test]
    fn map_fds_are_patched_per_slot() {
        let mut a = Asm::new();
        a.ld_map(R1, MapSlot(1));
        a.ld_map(R2, MapSlot(0));
        a.mov64_imm(R0, 0);
        a.exit();
        let p = a.finish().unwrap();
        assert_eq!(p.map_slots(), 2);
        let insns = p.with_map_fds(&[30, 31]).unwrap();
        assert_eq!((insns[0].imm, insns[2].imm), (31, 30));
        assert_eq!(
            p.with_map_fds(&[30]).unwrap_err(),
            AsmError::MissingMap { slot: 1, given: 1 }
        );
    }

    #[test]
    fn listing_reads_like_the_verifier_log() {
        let mut a = Asm::new();
        let next = a.label();
        a.mov64_reg(R6, R1);
        a.ldx_w(R2, R6, 16);
        a.jcc_imm(Cond::Ne, R2, 8, next);
        a.ld_map(R1, MapSlot(0));
        a.call(Helper::MapLookupElem);
        a.st_imm(Size::W, R10, -8, 3);
        a.be16(R3);
        a.alu32_reg(Alu::Sub, R3, R4);
        a.exit();
        a.bind(next);
        a.mov64_imm(R0, -1);
        a.exit();
        let text = a.finish().unwrap().listing();
        let want = "   0: r6 = r1
   1: r2 = *(u32 *)(r6 +16)
   2: if r2 != 0x8 goto L0
   3: r1 = map[0]
   5: call map_lookup_elem#1
   6: *(u32 *)(r10 -8) = 0x3
   7: r3 = be16(r3)
   8: w3 -= w4
   9: exit
L0:
  10: r0 = -1
  11: exit
";
        assert_eq!(text, want);
    }
}
