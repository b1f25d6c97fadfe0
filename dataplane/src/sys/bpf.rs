//! The syscalls of CPU-local steering (the programs themselves are in `crate::steering`).
//!
//! - Maps (`bpf(2)` `BPF_MAP_CREATE`): the TUN program's flow table (LRU hash, Linux 4.10) and
//!   the [`DrainBoard`] (an array map with `BPF_F_MMAPABLE`, Linux 5.5, that workers write
//!   through an mmap).
//! - Loading (`BPF_PROG_LOAD`, CAP_BPF or CAP_SYS_ADMIN) and attaching to the TUN device
//!   (`TUNSETSTEERINGEBPF`, Linux 4.16; device-wide, the kernel takes the result modulo the
//!   number of queues). The reuseport program is attached by `sys::socket`.
//!
//! What can fail: `bpf(2)` (EPERM without the capability, EINVAL when the kernel rejects the
//! program: the error carries the end of the verifier's log), `mmap` of the board, the ioctl
//! (EINVAL before 4.16). The caller keeps flow steering then and logs it once.
//!
//! For the express lane (`crate::express` builds its programs): [`BpfMap`] (hash, array and
//! per-CPU array maps whose lookups and updates are sized by the map), [`load_sched_cls`]
//! (TC programs; CAP_BPF and CAP_NET_ADMIN) and [`test_run`] (`BPF_PROG_TEST_RUN`, Linux 4.12;
//! root), which the kernel tests run the programs' golden packets through. Attaching them is
//! [`super::tcx`]'s.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::cvt;
use crate::steering::{tun_steering_program, BpfInsn, FLOW_TABLE_ENTRIES};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
/// `BPF_F_MMAPABLE` (Linux 5.5+): an array map userspace can mmap.
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// Tries of `BPF_PROG_LOAD` while it answers EAGAIN.
const PROG_LOAD_ATTEMPTS: usize = 5;
/// `_IOR('T', 224, int)` from linux/if_tun.h, in the asm-generic ioctl encoding (dir << 30 |
/// size << 16 | type << 8 | nr) that x86-64 and arm64 share (powerpc, mips, sparc differ).
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;

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

pub(super) fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
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
    load_program(BPF_PROG_TYPE_SOCKET_FILTER, prog)
}

/// Loads `prog` as a TC classifier (`BPF_PROG_TYPE_SCHED_CLS`, what tcx links attach; needs
/// CAP_BPF and CAP_NET_ADMIN); returns its fd. Errors as [`load_socket_filter`].
pub fn load_sched_cls(prog: &[BpfInsn]) -> io::Result<OwnedFd> {
    load_program(BPF_PROG_TYPE_SCHED_CLS, prog)
}

fn load_program(prog_type: u32, prog: &[BpfInsn]) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 256 * 1024];
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
    };
    // EAGAIN: the load was interrupted (a signal during verification); libbpf retries too.
    let mut result = bpf(BPF_PROG_LOAD, &attr);
    for _ in 1..PROG_LOAD_ATTEMPTS {
        match &result {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                result = bpf(BPF_PROG_LOAD, &attr);
            }
            _ => break,
        }
    }
    result.map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        io::Error::new(e.kind(), format!("{e}; verifier: {}", tail.join(" | ")))
    })
}

/// The map types the data plane creates through [`BpfMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    /// One value per possible CPU; a lookup returns them all, each padded to 8 bytes.
    PercpuArray = 6,
}

/// A BPF map with its key and value sizes, so lookups and updates cannot hand the kernel a
/// buffer of the wrong size.
pub struct BpfMap {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
    /// Bytes one lookup or update copies: `value_size`, or per-CPU `round_up(value_size, 8)`
    /// times the possible CPUs.
    value_len: usize,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `union bpf_attr` for the element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl BpfMap {
    pub fn create(
        kind: MapKind,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        flags: u32,
    ) -> io::Result<Self> {
        let fd = bpf(
            BPF_MAP_CREATE,
            &MapCreateAttr {
                map_type: kind as u32,
                key_size,
                value_size,
                max_entries,
                map_flags: flags,
            },
        )?;
        let value_len = match kind {
            MapKind::PercpuArray => (value_size as usize).div_ceil(8) * 8 * possible_cpus()?,
            _ => value_size as usize,
        };
        Ok(Self {
            fd,
            key_size: key_size as usize,
            value_size: value_size as usize,
            value_len,
        })
    }

    /// The map's fd, for a program's map slot.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Bytes of one value (all CPUs' for a per-CPU map).
    pub fn value_len(&self) -> usize {
        self.value_len
    }

    fn elem(&self, cmd: libc::c_long, key: &[u8], value: *mut u8) -> io::Result<()> {
        if key.len() != self.key_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("key of {} bytes for a map of {}", key.len(), self.key_size),
            ));
        }
        let attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            pad: 0,
            key: key.as_ptr() as u64,
            value: value as u64,
            flags: 0, // BPF_ANY
        };
        // SAFETY: `key` holds key_size bytes (checked above) and `value` points at value_len
        // bytes (checked by the callers) or is null for a delete, which reads no value; the kernel reads/writes no more and both outlive the
        // call. ElemAttr is the element-command prefix of `union bpf_attr`.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                &attr as *const ElemAttr,
                std::mem::size_of::<ElemAttr>() as libc::c_uint,
            )
        })?;
        Ok(())
    }

    /// Creates or replaces the value at `key` (`value`: [`Self::value_len`] bytes).
    pub fn update(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if value.len() != self.value_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "value of {} bytes for a map of {}",
                    value.len(),
                    self.value_len
                ),
            ));
        }
        // The kernel only reads the value for an update.
        self.elem(BPF_MAP_UPDATE_ELEM, key, value.as_ptr().cast_mut())
    }

    /// Removes `key` (a hash map's); a key that is not there is not an error.
    pub fn delete(&self, key: &[u8]) -> io::Result<()> {
        match self.elem(BPF_MAP_DELETE_ELEM, key, std::ptr::null_mut()) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// The value at `key` ([`Self::value_len`] bytes).
    pub fn lookup(&self, key: &[u8]) -> io::Result<Vec<u8>> {
        let mut value = vec![0u8; self.value_len];
        self.elem(BPF_MAP_LOOKUP_ELEM, key, value.as_mut_ptr())?;
        Ok(value)
    }

    /// For a per-CPU map of u64 values: the sum over all CPUs at `key`.
    pub fn sum_u64(&self, key: &[u8]) -> io::Result<u64> {
        let v = self.lookup(key)?;
        let stride = self.value_size.div_ceil(8) * 8;
        Ok(v.chunks(stride)
            .map(|c| u64::from_ne_bytes(c[..8].try_into().unwrap_or([0; 8])))
            .fold(0u64, u64::wrapping_add))
    }
}

/// The number of possible CPUs (`/sys/devices/system/cpu/possible`, e.g. "0-3"): per-CPU
/// map values come in this many copies.
pub fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_ranges(text.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/sys/devices/system/cpu/possible: {text:?}"),
        )
    })
}

/// Highest CPU + 1 of a list like "0-3,5".
fn parse_cpu_ranges(s: &str) -> Option<usize> {
    let mut max = None;
    for part in s.split(',') {
        let hi = part.rsplit('-').next()?.trim().parse::<usize>().ok()?;
        max = Some(max.map_or(hi, |m: usize| m.max(hi)));
    }
    max.map(|m| m + 1)
}

/// One `BPF_PROG_TEST_RUN`: the program's return value and the packet as it left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    pub retval: u32,
    pub data: Vec<u8>,
}

/// Runs `prog` once over the frame `data` (for TC programs an Ethernet frame: the kernel
/// builds an skb with a MAC header), with an optional `struct __sk_buff` context `ctx` (its
/// settable fields, e.g. `gso_size`; the rest zero). Root only.
pub fn test_run(prog: &OwnedFd, data: &[u8], ctx: Option<&[u8]>) -> io::Result<TestRun> {
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
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        pad: u32,
    }
    let mut out = vec![0u8; data.len() + 4096];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        retval: 0,
        data_size_in: data.len() as u32,
        data_size_out: out.len() as u32,
        data_in: data.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        duration: 0,
        ctx_size_in: ctx.map_or(0, |c| c.len() as u32),
        ctx_size_out: 0,
        ctx_in: ctx.map_or(0, |c| c.as_ptr() as u64),
        ctx_out: 0,
        flags: 0,
        cpu: 0,
        batch_size: 0,
        pad: 0,
    };
    // SAFETY: the attr describes `data` (read), `out` (written, at most data_size_out bytes)
    // and `ctx` (read, ctx_size_in bytes); all outlive the call. The kernel writes retval,
    // data_size_out and duration into `attr`.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as libc::c_uint,
        )
    })?;
    out.truncate(attr.data_size_out as usize);
    Ok(TestRun {
        retval: attr.retval,
        data: out,
    })
}

/// Sets the steering program of the TUN device of queue `tun` (device-wide; the device keeps
/// its own reference, `prog` may be closed afterwards).
pub fn set_tun_steering(tun: &OwnedFd, prog: &OwnedFd) -> io::Result<()> {
    tun_steering_fd(tun, prog.as_raw_fd())
}

/// Detaches whatever steering program the TUN device of queue `tun` has (a kept device may
/// carry the previous data plane's): the driver's flow hash decides again.
pub fn clear_tun_steering(tun: &OwnedFd) -> io::Result<()> {
    tun_steering_fd(tun, -1)
}

/// TUNSETSTEERINGEBPF with program fd `fd` (-1: none).
fn tun_steering_fd(tun: &OwnedFd, fd: libc::c_int) -> io::Result<()> {
    // SAFETY: TUNSETSTEERINGEBPF reads one int (the program fd, or -1) from the pointer, which
    // points at `fd` for the duration of the call.
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
    set_tun_steering(tun, &prog)?;
    Ok(board)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steering::MOVE_MAX_LEN;

    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

    fn can_load_bpf(what: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        flannel_shared::ci::skip_or_fail(&format!("{what}: needs root"));
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
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(ip);
        super::test_run(prog, &frame, None)
            .expect("BPF_PROG_TEST_RUN")
            .retval
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
            // SAFETY: BPF_MAP_LOOKUP_ELEM writes 16 bytes to `value`, BPF_MAP_UPDATE_ELEM
            // reads 16 from it and 16 from `key`; all outlive the call.
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
        elem(BPF_MAP_LOOKUP_ELEM, &mut value);
        value[..8].copy_from_slice(&last_seen.to_ne_bytes());
        elem(BPF_MAP_UPDATE_ELEM, &mut value);
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
