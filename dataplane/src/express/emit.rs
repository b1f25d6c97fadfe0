//! Instruction sequences both lane programs use: map lookups, per-CPU counters, stores into
//! the packet, the inner TTL decrement. Each clobbers r0–r5 (a helper call) and relies on the context in r6.

#![forbid(unsafe_code)]

use crate::bpf_asm::{
    Alu, Asm, Cond, Helper, Label, MapSlot, Reg, Size, R0, R1, R10, R2, R3, R4, R5, R6,
};
use crate::express::layout::{slot, LaneCounter};

/// The stack slot both programs use for map keys (u32).
pub const KEY: i16 = -8;

/// `r0 = bpf_map_lookup_elem(map, r10 + KEY)`.
pub fn lookup(a: &mut Asm, map: MapSlot) {
    a.ld_map(R1, map);
    a.mov64_reg(R2, R10);
    a.alu64_imm(Alu::Add, R2, i32::from(KEY));
    a.call(Helper::MapLookupElem);
}

/// `r0 = bpf_skb_store_bytes(skb = r6, at, r10 + from, len, 0)`.
pub fn store(a: &mut Asm, at: i32, from: i16, len: i32) {
    a.mov64_reg(R1, R6);
    a.mov64_imm(R2, at);
    a.mov64_reg(R3, R10);
    a.alu64_imm(Alu::Add, R3, i32::from(from));
    a.mov64_imm(R4, len);
    a.mov64_imm(R5, 0);
    a.call(Helper::SkbStoreBytes);
}

/// The inner TTL − 1 with its header checksum patched (RFC 1624, `bpf_l3_csum_replace`) and
/// written into the packet at `ttl_at` / `csum_at`; `saved` is the stack copy of the inner
/// header's (TTL, protocol) word. TTL ≥ 2 is checked before, so the 16-bit subtraction of the
/// little-endian load never borrows into the protocol. A failed helper jumps to `error`.
pub fn decrement_ttl(a: &mut Asm, saved: i16, ttl_at: i32, csum_at: i32, error: Label) {
    a.ldx_h(R3, R10, saved);
    a.mov64_reg(R4, R3);
    a.alu64_imm(Alu::Sub, R4, 1);
    a.stx(Size::H, R10, saved, R4);
    a.mov64_reg(R1, R6);
    a.mov64_imm(R2, csum_at);
    a.mov64_imm(R5, 2);
    a.call(Helper::L3CsumReplace);
    a.jcc_imm(Cond::Ne, R0, 0, error);
    store(a, ttl_at, saved, 2);
    a.jcc_imm(Cond::Ne, R0, 0, error);
}

/// Adds 1 (or the callee-saved register `by`) to this CPU's slot `c` of the `stats` map
/// (a per-CPU slot: no atomic needed, TC programs run with bottom halves off).
pub fn count(a: &mut Asm, c: LaneCounter, by: Option<Reg>) {
    let skip = a.label();
    a.st_imm(Size::W, R10, KEY, c as i32);
    lookup(a, slot::STATS);
    a.jcc_imm(Cond::Eq, R0, 0, skip);
    a.ldx(Size::DW, R1, R0, 0);
    match by {
        Some(r) => a.alu64_reg(Alu::Add, R1, r),
        None => a.alu64_imm(Alu::Add, R1, 1),
    };
    a.stx(Size::DW, R0, 0, R1);
    a.bind(skip);
}
