//! Which worker gets a packet under CPU-local steering: the programs, as pure data.
//!
//! - [`tun_steering_program`]: eBPF for the TUN device (`TUNSETSTEERINGEBPF`): picks the queue
//!   (= worker) for every packet the kernel sends out of `flannel0`, from a table of flows.
//! - [`reuseport_cpu_program`]: classic BPF for the receive sockets' `SO_ATTACH_REUSEPORT_CBPF`:
//!   picks the socket (= worker) of the CPU a datagram arrived on.
//!
//! Why: a packet is produced on some CPU (the sending application, or the softirq that
//! delivered a datagram). Handing it to a worker on another CPU costs a cross-CPU wake-up; on
//! an idle virtual CPU that is a halt exit and an IPI, tens of microseconds per hand-over.
//! This is what XPS and RFS do for NIC queues; the TUN driver's own queue choice (flow hash,
//! then the queue that last wrote the flow) ignores the CPU.
//!
//! Loading, maps and attaching are in `sys::bpf`; this module builds instructions only (no
//! I/O). The kernel runs and checks the TUN program in `sys::bpf`'s tests
//! (`BPF_PROG_TEST_RUN`); the classic program is checked here with a small interpreter.

#![forbid(unsafe_code)]

/// One eBPF instruction (`struct bpf_insn`): opcode, dst/src register nibbles, offset, imm.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const BPF_PSEUDO_MAP_FD: u8 = 1;
const FN_MAP_LOOKUP_ELEM: i32 = 1;
const FN_MAP_UPDATE_ELEM: i32 = 2;
const FN_KTIME_GET_NS: i32 = 5;
const FN_GET_SMP_PROCESSOR_ID: i32 = 8;

/// Largest packet that may move an idle flow (pings, requests, acks). A flow that resumes
/// with a larger packet (bulk data, TSO super-packets) keeps its evenly spread queue.
pub const MOVE_MAX_LEN: i32 = 512;
/// Flows the TUN steering program tracks (an LRU map: an evicted flow that comes back counts
/// as new and takes the next queue in turn; only with more flows than this active at once).
pub const FLOW_TABLE_ENTRIES: u32 = 8192;
/// A flow with no packet for this long may move to the queue of the CPU it now sends from
/// (if its old worker has drained since, see [`DrainBoard`](crate::sys::bpf::DrainBoard)).
/// Keeps a busy flow whose packets come from two CPUs (the application, the softirq of its
/// ACKs) from flipping queues.
pub const FLOW_IDLE_NS: i32 = 5_000_000;

/// Registers: r0 return value, r1–r5 arguments (clobbered by calls and packet loads), r6–r9
/// callee-saved, r10 frame pointer.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R10: u8 = 10;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}
fn mov_reg(dst: u8, src: u8) -> BpfInsn {
    insn(0xbf, dst, src, 0, 0) // BPF_ALU64 | BPF_MOV | BPF_X
}
fn mov_imm(dst: u8, imm: i32) -> BpfInsn {
    insn(0xb7, dst, 0, 0, imm) // BPF_ALU64 | BPF_MOV | BPF_K
}
/// `r0 = ntohl/ntohs(packet[off])` of 4, 2 or 1 bytes (`BPF_LD | BPF_ABS`); a packet too
/// short ends the program with 0.
fn ld_abs(size: u8, off: i32) -> BpfInsn {
    insn(size | 0x20, 0, 0, 0, off)
}
/// `r0 = packet[src + off]` (`BPF_LD | BPF_IND`).
fn ld_ind(size: u8, src: u8, off: i32) -> BpfInsn {
    insn(size | 0x40, 0, src, 0, off)
}
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const DW: u8 = 0x18;
/// `*(size *)(dst + off) = src` (`BPF_STX | BPF_MEM`).
fn stx(size: u8, dst: u8, off: i16, src: u8) -> BpfInsn {
    insn(0x63 | size, dst, src, off, 0)
}
/// `dst = *(size *)(src + off)` (`BPF_LDX | BPF_MEM`).
fn ldx(size: u8, dst: u8, src: u8, off: i16) -> BpfInsn {
    insn(0x61 | size, dst, src, off, 0)
}
fn call(helper: i32) -> BpfInsn {
    insn(0x85, 0, 0, 0, helper)
}
fn exit() -> BpfInsn {
    insn(0x95, 0, 0, 0, 0)
}
/// Conditional jump against an immediate: `if dst OP imm goto pc + 1 + off`.
fn jmp_imm(op: u8, dst: u8, imm: i32, off: i16) -> BpfInsn {
    insn(0x05 | op, dst, 0, off, imm)
}
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JSET: u8 = 0x40;
const JNE: u8 = 0x50;
/// `BPF_JMP | BPF_JGE | BPF_X`: `if dst >= src goto pc + 1 + off`.
fn jge_reg(dst: u8, src: u8, off: i16) -> BpfInsn {
    insn(0x3d, dst, src, off, 0)
}
/// `dst += imm` (64-bit).
fn add_imm(dst: u8, imm: i32) -> BpfInsn {
    insn(0x07, dst, 0, 0, imm) // BPF_ALU64 | BPF_ADD | BPF_K
}
/// `r0 = bpf_map_lookup_elem(map, r10 + key_off)` (a value pointer, or 0).
fn map_lookup(map_fd: i32, key_off: i32) -> [BpfInsn; 5] {
    let [ld, ld2] = ld_map_fd(R1, map_fd);
    [
        ld,
        ld2,
        mov_reg(R2, R10),
        add_imm(R2, key_off),
        call(FN_MAP_LOOKUP_ELEM),
    ]
}
/// `BPF_LD | BPF_IMM | BPF_DW` with the map-fd pseudo source: `dst = &map` (two slots).
fn ld_map_fd(dst: u8, fd: i32) -> [BpfInsn; 2] {
    [
        insn(0x18, dst, BPF_PSEUDO_MAP_FD, 0, fd),
        insn(0, 0, 0, 0, 0),
    ]
}

/// The TUN steering program over an LRU hash map `flow_map` of flows (key: source,
/// destination, TCP/UDP port word or 0, protocol; value: last-seen ns, queue) and the
/// [`DrainBoard`](crate::sys::bpf::DrainBoard) array `drain_map`:
///
/// - a new flow goes to the next queue in turn, so flows spread evenly over the workers;
/// - a flow stays on its queue while it is busy (seen within [`FLOW_IDLE_NS`]) or while its
///   worker has not drained since the flow's last packet (that packet may still be on its
///   way: moving now could reorder the flow);
/// - otherwise, if the packet is small (≤ [`MOVE_MAX_LEN`]), it moves to the queue of the
///   worker pinned to the current CPU (`cpus[i]` is worker i's CPU), so a request/response
///   flow is read by a worker on the CPU that sent it, with no cross-CPU wake-up. A CPU
///   without a worker keeps the queue. Bulk data keeps its evenly spread queue (with one
///   sending thread, following the CPU would put every stream on one worker).
///
/// Fragments (offset or MF set) and protocols other than TCP/UDP have port word 0, so every
/// fragment of a datagram is one flow.
pub fn tun_steering_program(flow_map: i32, drain_map: i32, cpus: &[usize]) -> Vec<BpfInsn> {
    let nqueues = cpus.len().max(1) as i32;
    let mut p = vec![
        mov_reg(R6, R1), // ld_abs needs the context in r6
        ld_abs(W, 12),
        stx(W, R10, -16, R0), // key.saddr
        ld_abs(W, 16),
        stx(W, R10, -12, R0), // key.daddr
        ld_abs(B, 9),
        stx(W, R10, -4, R0), // key.protocol
        mov_reg(R7, R0),
        mov_imm(R0, 0),
        stx(W, R10, -8, R0), // key.ports = 0
        jmp_imm(JEQ, R7, libc::IPPROTO_TCP, 2),
        jmp_imm(JEQ, R7, libc::IPPROTO_UDP, 1),
        jmp_imm(JA, 0, 0, 7),
        ld_abs(H, 6),
        jmp_imm(JSET, R0, 0x3fff, 6), // a fragment: no ports
        ld_abs(B, 0),
        insn(0x57, R0, 0, 0, 0x0f), // r0 &= 0xf (IHL)
        insn(0x67, R0, 0, 0, 2),    // r0 <<= 2
        mov_reg(R8, R0),
        ld_ind(W, R8, 0),
        stx(W, R10, -8, R0), // key.ports
    ];
    // Look the flow up.
    p.extend(map_lookup(flow_map, -16));
    let lookup_miss = p.len();
    p.push(jmp_imm(JEQ, R0, 0, 0)); // patched below: → new flow
    p.extend([
        mov_reg(R7, R0), // r7 = &value
        call(FN_KTIME_GET_NS),
        ldx(DW, R8, R7, 0), // r8 = last seen
        stx(DW, R7, 0, R0),
        insn(0x1f, R0, R8, 0, 0), // r0 -= r8: idle time
        jmp_imm(JGT, R0, FLOW_IDLE_NS, 2),
    ]);
    let stay = p.len();
    let to_stay = |from: usize| (stay as i64 - from as i64 - 1) as i16;
    p.extend([ldx(W, R0, R7, 8), exit()]);
    // Idle. A large packet (bulk data starting again) keeps the flow's place; a small one
    // may move if the flow's worker has drained since its last packet.
    let at = p.len();
    p.extend([
        ldx(W, R1, R6, 0), // __sk_buff.len
        jmp_imm(JGT, R1, MOVE_MAX_LEN, to_stay(at + 1)),
        ldx(W, R1, R7, 8),
        stx(W, R10, -40, R1),
    ]);
    p.extend(map_lookup(drain_map, -40));
    let at = p.len();
    p.push(jmp_imm(JEQ, R0, 0, to_stay(at)));
    p.push(ldx(DW, R1, R0, 0));
    let at = p.len();
    p.push(jge_reg(R8, R1, to_stay(at))); // last seen >= drained: not yet
    p.push(call(FN_GET_SMP_PROCESSOR_ID));
    for (queue, &cpu) in cpus.iter().enumerate() {
        p.extend([
            jmp_imm(JNE, R0, cpu as i32, 3),
            mov_imm(R0, queue as i32),
            stx(W, R7, 8, R0),
            exit(),
        ]);
    }
    p.extend([ldx(W, R0, R7, 8), exit()]);
    // New flow: the next queue in turn (the counter in the drain board's last slot), so
    // flows spread evenly; remembered with the time.
    let new_flow = p.len();
    p[lookup_miss].off = (new_flow - lookup_miss - 1) as i16;
    p.extend([
        call(FN_KTIME_GET_NS),
        stx(DW, R10, -32, R0),
        mov_imm(R7, 0),
        mov_imm(R1, nqueues),
        stx(W, R10, -40, R1),
    ]);
    p.extend(map_lookup(drain_map, -40));
    p.extend([
        jmp_imm(JEQ, R0, 0, 6), // no counter: queue 0
        ldx(DW, R1, R0, 0),
        mov_reg(R2, R1),
        add_imm(R2, 1),
        stx(DW, R0, 0, R2), // not atomic: two CPUs may pick the same queue, harmless
        insn(0x97, R1, 0, 0, nqueues), // r1 %= queues
        mov_reg(R7, R1),
    ]);
    p.extend([stx(W, R10, -24, R7), mov_imm(R0, 0), stx(W, R10, -20, R0)]);
    p.extend(ld_map_fd(R1, flow_map));
    p.extend([
        mov_reg(R2, R10),
        add_imm(R2, -16),
        mov_reg(R3, R10),
        add_imm(R3, -32),
        mov_imm(R4, 0), // BPF_ANY
        call(FN_MAP_UPDATE_ELEM),
        mov_reg(R0, R7),
        exit(),
    ]);
    p
}

/// Classic BPF for `SO_ATTACH_REUSEPORT_CBPF`: `A = cpu; if A == cpus[i] return i; return
/// len` (out of range: the kernel's own hash picks).
pub fn reuseport_cpu_program(cpus: &[usize]) -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let mut p = vec![op(
        LD_W_ABS,
        0,
        0,
        (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
    )];
    for (i, &cpu) in cpus.iter().enumerate() {
        p.push(op(JEQ_K, 0, 1, cpu as u32));
        p.push(op(RET_K, 0, 0, i as u32));
    }
    p.push(op(RET_K, 0, 0, cpus.len() as u32));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the three classic BPF opcodes the reuseport program uses, with `cpu` as the
    /// SKF_AD_CPU ancillary word.
    fn run_cbpf(prog: &[libc::sock_filter], cpu: u32) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            match i.code {
                0x20 => {
                    assert_eq!(i.k, (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32);
                    a = cpu;
                }
                0x15 => {
                    pc += usize::from(if a == i.k { i.jt } else { i.jf });
                }
                0x06 => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn reuseport_program_returns_the_worker_of_the_cpu() {
        let prog = reuseport_cpu_program(&[2, 5, 3]);
        assert_eq!(run_cbpf(&prog, 2), 0);
        assert_eq!(run_cbpf(&prog, 5), 1);
        assert_eq!(run_cbpf(&prog, 3), 2);
        // A CPU without a worker: out of range, the kernel's hash decides.
        assert_eq!(run_cbpf(&prog, 0), 3);
        assert_eq!(run_cbpf(&prog, 7), 3);
    }

    /// Every jump of `prog` lands inside it, the second slot of a 64-bit load is never a
    /// target, and the last instruction is an exit.
    fn check_shape(prog: &[BpfInsn]) {
        let wide: Vec<usize> = (0..prog.len())
            .filter(|&i| prog[i].code == 0x18)
            .map(|i| i + 1)
            .collect();
        for (pc, i) in prog.iter().enumerate() {
            let class = i.code & 0x07;
            let op = i.code & 0xf0;
            if class == 0x05 && op != 0x80 && op != 0x90 {
                let target = pc as i64 + 1 + i64::from(i.off);
                assert!(
                    (0..prog.len() as i64).contains(&target),
                    "jump at {pc} to {target}"
                );
                assert!(
                    !wide.contains(&(target as usize)),
                    "jump into ld_imm64 at {pc}"
                );
            }
        }
        assert_eq!(prog.last().map(|i| i.code), Some(0x95));
    }

    #[test]
    fn tun_program_shape_for_several_cpu_lists() {
        for cpus in [vec![0], vec![0, 1], vec![1, 0], (0..64).collect::<Vec<_>>()] {
            let p = tun_steering_program(3, 4, &cpus);
            check_shape(&p);
            // One compare-and-return block per worker.
            let blocks = p.iter().filter(|i| i.code == 0x55).count();
            assert_eq!(blocks, cpus.len());
            // Both maps are referenced through the map-fd pseudo source.
            let fds: Vec<i32> = p
                .iter()
                .filter(|i| i.code == 0x18)
                .map(|i| {
                    assert_eq!(i.regs >> 4, BPF_PSEUDO_MAP_FD);
                    i.imm
                })
                .collect();
            assert_eq!(fds, vec![3, 4, 4, 3]);
        }
    }
}
