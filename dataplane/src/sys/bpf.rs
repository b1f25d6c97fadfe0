//! CPU-local steering: the TUN queue and the receive socket a packet goes to are the ones of
//! the worker pinned to the CPU the packet is being handled on.
//!
//! - TUN (kernel → us): an eBPF `SOCKET_FILTER` program attached with `TUNSETSTEERINGEBPF`
//!   (Linux 4.16+) returns the queue of the worker pinned to the current CPU
//!   (`bpf_get_smp_processor_id`). Loading it needs CAP_BPF or CAP_SYS_ADMIN (`bpf(2)`
//!   `BPF_PROG_LOAD`); the TUN driver takes the result modulo the number of queues.
//! - UDP receive: a classic BPF program for `SO_ATTACH_REUSEPORT_CBPF` (Linux 4.5+) loads the
//!   CPU ancillary word (`SKF_AD_CPU`) and returns the socket index of that CPU's worker.
//!   Sockets are indexed in the order they joined the reuseport group (worker order). A CPU
//!   without a worker returns an out-of-range index, and the kernel falls back to its hash.
//!
//! Why: a packet is produced on some CPU (the sending application, or the softirq that
//! delivered a datagram). Handing it to a worker on another CPU costs a cross-CPU wake-up;
//! on an idle virtual CPU that is a halt exit and an IPI, tens of microseconds per hop. This
//! is what XPS and RFS do for NIC queues; the TUN driver's own queue choice (flow hash,
//! then the queue that last wrote the flow) ignores the CPU.
//!
//! What can fail: `bpf(2)` (EPERM without the capability, EINVAL on a kernel that rejects
//! the program), `TUNSETSTEERINGEBPF` (EINVAL before 4.16), the setsockopt. The caller keeps
//! the kernel's default steering then and logs it once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::cvt;

/// One eBPF instruction (`struct bpf_insn`): opcode, dst/src register nibbles, offset, imm.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInsn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
/// `BPF_F_MMAPABLE` (Linux 5.5+): an array map userspace can mmap.
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const FN_MAP_LOOKUP_ELEM: i32 = 1;
const FN_MAP_UPDATE_ELEM: i32 = 2;
const FN_KTIME_GET_NS: i32 = 5;
const FN_GET_SMP_PROCESSOR_ID: i32 = 8;
/// `_IOR('T', 224, int)` from linux/if_tun.h.
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;

/// Largest packet that may move an idle flow (pings, requests, acks). A flow that resumes
/// with a larger packet (bulk data, TSO super-packets) keeps its evenly spread queue.
pub const MOVE_MAX_LEN: i32 = 512;
/// Flows tracked by the TUN steering program (LRU: an evicted flow is re-hashed, which puts
/// it back on its hash queue).
pub const FLOW_TABLE_ENTRIES: u32 = 8192;
/// A flow with no packet for this long may move to the queue of the CPU it now sends from
/// (if its old worker has drained since, see [`DrainBoard`]). Keeps a busy flow whose packets
/// come from two CPUs (the application, the softirq of its ACKs) from flipping queues.
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
/// `BPF_LD | BPF_IMM | BPF_DW` with the map-fd pseudo source: `dst = &map` (two slots).
fn ld_map_fd(dst: u8, fd: i32) -> [BpfInsn; 2] {
    [
        insn(0x18, dst, BPF_PSEUDO_MAP_FD, 0, fd),
        insn(0, 0, 0, 0, 0),
    ]
}

/// The TUN steering program over an LRU hash map `flow_map` of flows (key: source,
/// destination, TCP/UDP port word or 0, protocol; value: last-seen ns, queue) and the
/// [`DrainBoard`] array `drain_map`:
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
    p.extend(ld_map_fd(R1, flow_map));
    p.extend([
        mov_reg(R2, R10),
        insn(0x07, R2, 0, 0, -16),
        call(FN_MAP_LOOKUP_ELEM),
    ]);
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
    p.extend(ld_map_fd(R1, drain_map));
    p.extend([
        mov_reg(R2, R10),
        insn(0x07, R2, 0, 0, -40),
        call(FN_MAP_LOOKUP_ELEM),
    ]);
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
    p.extend(ld_map_fd(R1, drain_map));
    p.extend([
        mov_reg(R2, R10),
        insn(0x07, R2, 0, 0, -40),
        call(FN_MAP_LOOKUP_ELEM),
        jmp_imm(JEQ, R0, 0, 6), // no counter: queue 0
        ldx(DW, R1, R0, 0),
        mov_reg(R2, R1),
        insn(0x07, R2, 0, 0, 1),       // r2 += 1
        stx(DW, R0, 0, R2),            // not atomic: two CPUs may pick the same queue, harmless
        insn(0x97, R1, 0, 0, nqueues), // r1 %= queues
        mov_reg(R7, R1),
    ]);
    p.extend([stx(W, R10, -24, R7), mov_imm(R0, 0), stx(W, R10, -20, R0)]);
    p.extend(ld_map_fd(R1, flow_map));
    p.extend([
        mov_reg(R2, R10),
        insn(0x07, R2, 0, 0, -16),
        mov_reg(R3, R10),
        insn(0x07, R3, 0, 0, -32),
        mov_imm(R4, 0), // BPF_ANY
        call(FN_MAP_UPDATE_ELEM),
        mov_reg(R0, R7),
        exit(),
    ]);
    p
}

/// `union bpf_attr` for `BPF_MAP_CREATE` (leading fields; the kernel zero-fills the rest).
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// `union bpf_attr` for `BPF_PROG_LOAD` (leading fields).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a `union bpf_attr` prefix of the given size for `cmd`; the kernel
    // reads it (and the memory it points at, which the caller keeps alive) during the call.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    })?;
    // SAFETY: on success bpf(2) returned a new file descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Creates the flow map of [`tun_steering_program`] (16-byte key, 16-byte value).
pub fn create_flow_map() -> io::Result<OwnedFd> {
    bpf(
        BPF_MAP_CREATE,
        &MapCreateAttr {
            map_type: BPF_MAP_TYPE_LRU_HASH,
            key_size: 16,
            value_size: 16,
            max_entries: FLOW_TABLE_ENTRIES,
            map_flags: 0,
        },
    )
}

/// Per-worker "drained at" times (CLOCK_MONOTONIC ns), shared with the TUN steering program:
/// a BPF array map (one u64 per worker, then the program's new-flow counter) that the
/// workers write through an mmap.
///
/// A worker stores time `t` once every packet it had read from its TUN queue by a read that
/// started at `t` and found the queue empty has been handed to the kernel (its send
/// completed). A flow whose last packet was steered before `t` is then no longer inside
/// that worker, and may move without being reordered (the idea of RFS's queue-head check).
pub struct DrainBoard {
    _map: OwnedFd,
    map_fd: i32,
    base: *mut u64,
    len: usize,
    map_bytes: usize,
}

// SAFETY: the mapping is shared memory written only with atomic stores (`mark`); the pointer
// stays valid until Drop, which runs once when the last owner lets go.
unsafe impl Send for DrainBoard {}
// SAFETY: as above; `mark` takes &self and stores atomically.
unsafe impl Sync for DrainBoard {}

impl DrainBoard {
    /// An mmapable array map with one slot per worker (`BPF_F_MMAPABLE`, Linux 5.5+).
    pub fn create(workers: usize) -> io::Result<Self> {
        let len = workers.max(1);
        let map = bpf(
            BPF_MAP_CREATE,
            &MapCreateAttr {
                map_type: BPF_MAP_TYPE_ARRAY,
                key_size: 4,
                value_size: 8,
                // One slot per worker, and the steering program's new-flow counter.
                max_entries: len as u32 + 1,
                map_flags: BPF_F_MMAPABLE,
            },
        )?;
        // SAFETY: sysconf has no memory preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let map_bytes = ((len + 1) * 8).div_ceil(page) * page;
        // SAFETY: maps the array's values (len * 8 bytes, page-rounded) shared and writable;
        // the kernel checks the size against the map. The result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            map_fd: map.as_raw_fd(),
            _map: map,
            base: ptr.cast(),
            len,
            map_bytes,
        })
    }

    /// Records that worker `worker` has drained everything steered to it before `t_ns`.
    pub fn mark(&self, worker: usize, t_ns: u64) {
        if worker < self.len {
            // SAFETY: `worker < len`, so the slot lies inside the live mapping, 8-aligned
            // (page-aligned base); AtomicU64 has u64's layout and every access is atomic.
            let slot = unsafe { &*(self.base.add(worker) as *const std::sync::atomic::AtomicU64) };
            slot.store(t_ns, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for DrainBoard {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_bytes` are exactly the mapping made in `create`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.map_bytes) };
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which outlives the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Loads `prog` as a socket-filter program; returns its fd. A rejected program's error
/// carries the end of the verifier's log.
pub fn load_socket_filter(prog: &[BpfInsn]) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
    };
    bpf(BPF_PROG_LOAD, &attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        io::Error::new(e.kind(), format!("{e}; verifier: {}", tail.join(" | ")))
    })
}

/// Sets (`Some`) or removes (`None`) the steering program of the TUN device of queue `tun`
/// (device-wide; the device keeps its own reference, `prog` may be closed afterwards).
pub fn set_tun_steering(tun: &OwnedFd, prog: Option<&OwnedFd>) -> io::Result<()> {
    let fd: libc::c_int = prog.map_or(-1, |p| p.as_raw_fd());
    // SAFETY: TUNSETSTEERINGEBPF reads one int (the program fd, -1 to detach) from the
    // pointer, which points at `fd` for the duration of the call.
    cvt(unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            TUNSETSTEERINGEBPF,
            &fd as *const libc::c_int,
        )
    })?;
    Ok(())
}

/// Builds, loads and attaches the TUN steering program for workers pinned to `cpus`; the
/// workers report their drain times into the returned board.
pub fn attach_tun_steering(tun: &OwnedFd, cpus: &[usize]) -> io::Result<DrainBoard> {
    let board = DrainBoard::create(cpus.len())?;
    let flows = create_flow_map()?;
    let prog = load_socket_filter(&tun_steering_program(flows.as_raw_fd(), board.map_fd, cpus))?;
    set_tun_steering(tun, Some(&prog))?;
    Ok(board)
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

    fn can_load_bpf(what: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "{what} needs root under CI"
        );
        eprintln!("SKIPPED {what}: not root");
        false
    }

    /// The kernel's verifier accepts the program (root only).
    #[test]
    fn kernel_accepts_the_tun_program() {
        if !can_load_bpf("BPF verifier test") {
            return;
        }
        for cpus in [vec![0], vec![0, 1], (0..64).collect::<Vec<_>>()] {
            let board = DrainBoard::create(cpus.len()).expect("drain board");
            board.mark(cpus.len() - 1, 42);
            board.mark(cpus.len(), 7); // the counter slot is not a worker's: ignored
            let flows = create_flow_map().expect("flow map");
            let prog = tun_steering_program(flows.as_raw_fd(), board.map_fd, &cpus);
            load_socket_filter(&prog).unwrap_or_else(|e| panic!("{cpus:?}: {e}"));
        }
    }

    /// `BPF_PROG_TEST_RUN`: runs `prog` once over `ip` (behind an Ethernet header, as the
    /// kernel's skb test run wants) on the calling CPU; returns the program's result.
    fn test_run(prog: &OwnedFd, ip: &[u8]) -> u32 {
        #[repr(C)]
        struct TestRunAttr {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
        }
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(ip);
        let mut attr = TestRunAttr {
            prog_fd: prog.as_raw_fd() as u32,
            retval: 0,
            data_size_in: frame.len() as u32,
            data_size_out: 0,
            data_in: frame.as_ptr() as u64,
            data_out: 0,
            repeat: 1,
            duration: 0,
        };
        // SAFETY: BPF_PROG_TEST_RUN (10) reads `attr` and `frame`, writes `attr.retval` and
        // `duration`; both outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                10 as libc::c_long,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>() as libc::c_uint,
            )
        };
        assert_eq!(r, 0, "BPF_PROG_TEST_RUN: {}", io::Error::last_os_error());
        attr.retval
    }

    /// Sets the last-seen time of a flow in the flow map (`BPF_MAP_UPDATE_ELEM`, keeping its
    /// queue, which is looked up first).
    fn age_flow(flows: &OwnedFd, ip: &[u8], last_seen: u64) {
        #[repr(C)]
        struct ElemAttr {
            map_fd: u32,
            pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let word = |o: usize| u32::from_be_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
        let ports = if ip[9] == 6 || ip[9] == 17 {
            word(20)
        } else {
            0
        };
        let mut key = [0u8; 16];
        for (i, v) in [word(12), word(16), ports, u32::from(ip[9])]
            .iter()
            .enumerate()
        {
            key[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        let mut value = [0u8; 16];
        let elem = |cmd: libc::c_long, value: &mut [u8; 16]| {
            let attr = ElemAttr {
                map_fd: flows.as_raw_fd() as u32,
                pad: 0,
                key: key.as_ptr() as u64,
                value: value.as_mut_ptr() as u64,
                flags: 0,
            };
            // SAFETY: BPF_MAP_LOOKUP_ELEM (1) writes 16 bytes to `value`, BPF_MAP_UPDATE_ELEM
            // (2) reads 16 from it and 16 from `key`; all outlive the call.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    cmd,
                    &attr as *const ElemAttr,
                    std::mem::size_of::<ElemAttr>() as libc::c_uint,
                )
            };
            assert_eq!(r, 0, "bpf map cmd {cmd}: {}", io::Error::last_os_error());
        };
        elem(1, &mut value);
        value[..8].copy_from_slice(&last_seen.to_ne_bytes());
        elem(2, &mut value);
    }

    /// An IPv4 packet of `len` bytes: protocol `proto`, 10.0.0.1 → 10.0.0.2, port word
    /// `sport:80`, fragment field `frag`.
    fn packet(proto: u8, sport: u16, len: usize, frag: u16) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p
    }

    /// The program's decisions, executed by the kernel: new flows in turn, busy flows stay,
    /// an idle flow moves to the current CPU's queue only with a small packet and only once
    /// its worker has drained since its last packet.
    #[test]
    fn tun_program_steers_new_busy_and_idle_flows() {
        if !can_load_bpf("BPF test run") {
            return;
        }
        // Run on one CPU; worker 0 is "pinned" there, worker 1 to a CPU that does not exist.
        let here = crate::sys::thread::allowed_cpus()[0];
        crate::sys::thread::pin_current_thread(here).unwrap();
        let cpus = [here, 4095];
        let board = DrainBoard::create(2).unwrap();
        let flows = create_flow_map().unwrap();
        let prog = tun_steering_program(flows.as_raw_fd(), board.map_fd, &cpus);
        let prog = load_socket_filter(&prog).unwrap();
        let old = || monotonic_ns() - 20_000_000;

        let a = packet(6, 1000, 60, 0x4000);
        let b = packet(6, 1001, 60, 0x4000);
        let c = packet(17, 1002, 60, 0);
        assert_eq!(test_run(&prog, &a), 0, "new flows take the queues in turn");
        assert_eq!(test_run(&prog, &b), 1);
        assert_eq!(test_run(&prog, &c), 0);
        assert_eq!(test_run(&prog, &b), 1, "a busy flow stays");

        age_flow(&flows, &b, old());
        assert_eq!(test_run(&prog, &b), 1, "idle, but worker 1 has not drained");
        board.mark(1, monotonic_ns());
        age_flow(&flows, &b, old());
        let big_b = packet(6, 1001, MOVE_MAX_LEN as usize + 1, 0x4000);
        assert_eq!(test_run(&prog, &big_b), 1, "bulk data keeps its queue");
        age_flow(&flows, &b, old());
        assert_eq!(
            test_run(&prog, &b),
            0,
            "idle + drained + small: this CPU's queue"
        );
        assert_eq!(test_run(&prog, &b), 0, "and stays there");

        // Worker 0's CPU is this one; a flow idle on queue 0 has nowhere better to go.
        board.mark(0, monotonic_ns());
        age_flow(&flows, &a, old());
        assert_eq!(test_run(&prog, &a), 0);

        // Fragments of one datagram are one flow (no ports), as are ICMP packets.
        let first = packet(17, 2000, 100, 0x2000); // MF
        let later = packet(17, 9999, 100, 0x0010); // offset 128, other bytes where ports were
        let q = test_run(&prog, &first);
        assert_eq!(test_run(&prog, &later), q);
        let echo = packet(1, 0x0800, 84, 0);
        let echo2 = packet(1, 0x0801, 84, 0);
        let q = test_run(&prog, &echo);
        assert_eq!(
            test_run(&prog, &echo2),
            q,
            "ICMP: addresses and protocol only"
        );

        // Too short to hold the TCP ports: the program stops with queue 0 (whatever the
        // flow's turn would have been: the next new flow takes queue 1 below).
        assert_eq!(test_run(&prog, &packet(6, 1003, 60, 0)[..22]), 0);
        assert_eq!(test_run(&prog, &packet(6, 1004, 60, 0)), 1);
    }
}
