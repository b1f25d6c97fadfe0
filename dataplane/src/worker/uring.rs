//! The io_uring worker: the hot path.
//!
//! Each worker owns one ring, created on its own thread (so SINGLE_ISSUER holds), trying in
//! order SINGLE_ISSUER|DEFER_TASKRUN (Linux 6.1), COOP_TASKRUN (5.19), then no flags, each
//! with TASKRUN_FLAG so the ring says when deferred completions wait. Needed opcodes:
//! SENDMSG (5.3), POLL_ADD with IORING_POLL_ADD_MULTI (5.13), provided-buffer rings (5.19) and
//! multishot RECVMSG (6.0) — [`probe`] checks them once at startup (older kernels get the
//! fallback path).
//!
//! What goes through the ring and what does not:
//! - UDP receives: one multishot RECVMSG (Linux 6.0) taking buffers from a provided-buffer
//!   ring ([`buf_ring`](super::buf_ring)); each completion is one receive (with UDP_GRO up to
//!   64 KiB of datagrams) in one buffer, handed back to the ring as soon as it is handled.
//! - UDP sends: SENDMSG, one per datagram or per UDP_SEGMENT chunk, many per `io_uring_enter`.
//! - The TUN queue: one multishot POLL_ADD says "readable"; the worker then read(2)s it directly
//!   (non-blocking, up to [`TUN_BURST`] packets per round) and write(2)s packets for the local
//!   containers directly. The TUN driver lacks FMODE_NOWAIT, so a TUN READ or WRITE submitted
//!   to io_uring is handed to an io-wq kernel thread: one blocked thread per posted read and a
//!   thread hop per packet (measured: ~0.2 ms more ping RTT, 60 iou-wrk threads per process).
//!
//! Buffers cycle through fixed states, so the operations in flight are bounded by the buffers
//! (a TUN slot's sends, the receive buffers); should the completion queue still fill, the
//! kernel keeps the overflow (IORING_FEAT_NODROP) and the next round drains it:
//!
//! ```text
//! TUN slot:    (free) ─► read(2) tun ─► decide/split ─► k × SENDMSG udp ─► (all k done) free
//! recv buffer: (in the ring) ─► multishot RECVMSG fills it ─► check/coalesce ─► write(2) tun
//!              ─► back in the ring
//! ```
//!
//! Without offloads k is 1. With offloads a TUN read is a super-packet of up to 64 KiB whose
//! segments leave in one or two UDP_SEGMENT sends (each chunk's `msghdr` carries its own
//! cmsg); a receive is up to 64 KiB of GRO-merged datagrams, coalesced into one or a few TUN
//! writes. A GSO send failing with EIO/EINVAL turns GSO off (for all workers, logged once) and
//! is re-sent segment by segment.
//!
//! One loop iteration = one batch: `submit_and_wait` submits every SQE queued while handling
//! the previous completions (many UDP sends and receives per syscall) and waits for one
//! completion unless the TUN queue may still hold packets; then all available completions are
//! handled, the TUN queue is read, the route snapshot is refreshed once and counters are
//! flushed once.
//!
//! A stopping worker cancels what is in flight, waits for the kernel to confirm and unregisters
//! its files before closing the ring, so its TUN queue is closed when the process exits (the
//! kernel tears rings down asynchronously, which would otherwise keep `flannel0` alive for a
//! moment and let a restarted data plane attach to the dying device).
//!
//! Slot memory is leaked on purpose (allocated once per worker for the process lifetime): the
//! kernel may still hold pointers into it while the ring is torn down at exit, and a leak is
//! the simplest way to make that sound.
//!
//! If the submission queue fills while completions are handled, the completion queue is
//! drained into a backlog (handled next round) before submitting again, so a full CQ can
//! never stall a submit.
//!
//! The TUN queue and both sockets are registered files (5.1). Registered buffers are not used:
//! only READ_FIXED/WRITE_FIXED and SEND_ZC take them, TUN I/O does not go through the ring, and
//! zero-copy sends to a peer on this machine (veth) are copied on delivery anyway.
//!
//! A 64 KiB TSO packet is ~46 segments of 1472 bytes, more than one UDP_SEGMENT send may carry
//! (65507 bytes), so it leaves as two sends (44 + 2) and arrives as two GRO receives. The
//! receives of one loop round share one [`Coalescer`], so when both halves arrive in the same
//! round they become one TUN write again.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use flannel_shared::stats::Counter;

use super::buf_ring::{recv_layout, BufRing, RECVMSG_OUT_LEN};
use super::{
    coalesce_room, coalesce_udp_recv, flush_coalesced, handle_tun_read, icmp_limiter, now_ns, pin,
    plain_udp_recv, send_chunks, write_tun, BufSizes, Local, Offload, TunVerdict, WorkerSetup,
};
use crate::gro::{self, Coalescer};
use crate::gso::VNET_HDR_LEN;
use crate::packet::ICMP_UNREACH_MAX;
use crate::sys;
use crate::sys::socket::{decode_udp_gro, encode_udp_segment, sockaddr_in, CMSG_BUF};

/// TUN read buffers per worker (without / with offloads); a buffer is busy from its read until
/// its last send completes.
pub const TUN_SLOTS: usize = 64;
pub const TUN_SLOTS_OFFLOAD: usize = 32;
/// Receive buffers in the provided-buffer ring (without / with offloads; powers of two).
pub const RECV_BUFS: u16 = 256;
pub const RECV_BUFS_OFFLOAD: u16 = 64;
/// Buffer group id of the receive ring.
const RECV_BGID: u16 = 0;
/// Receive buffer: recvmsg_out header, source address, control, then the payload.
const NAME_AREA: usize = std::mem::size_of::<libc::sockaddr_in>();
/// TUN reads per loop round at most, so receives and send completions are not starved.
pub const TUN_BURST: usize = 32;
/// Sends one TUN slot may have (chunks of one super-packet, or its segments one by one when
/// GSO is off); more are counted as `udp_tx_errors`.
const MAX_SENDS: usize = 96;
const RING_ENTRIES: u32 = 1024;

/// Registered files (IORING_REGISTER_FILES, 5.1): the ring's operations name the TUN queue and
/// the sockets by index, which saves a file-table lookup and reference per operation.
const FIXED_TUN: types::Fixed = types::Fixed(0);
const FIXED_RECV: types::Fixed = types::Fixed(1);
const FIXED_SEND: types::Fixed = types::Fixed(2);

const K_TUN_POLL: u64 = 1;
const K_UDP_SEND: u64 = 2;
const K_UDP_RECV: u64 = 3;
const K_WAKE: u64 = 6;
const K_CANCEL: u64 = 7;
/// How long a stopping worker waits for the kernel to finish its cancelled operations.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

fn ud(kind: u64, slot: usize, sub: usize) -> u64 {
    (kind << 56) | ((slot as u64 & 0xff_ffff) << 24) | (sub as u64 & 0xff_ffff)
}

/// Whether io_uring works here with the opcodes we need. `Err` explains why not (e.g. EPERM
/// under `kernel.io_uring_disabled=2`, ENOSYS on old kernels).
pub fn probe() -> io::Result<()> {
    let ring: IoUring = IoUring::new(8)?;
    let mut p = io_uring::Probe::new();
    ring.submitter().register_probe(&mut p)?;
    for (code, name) in [
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
    ] {
        if !p.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring lacks {name}"),
            ));
        }
    }
    // Multishot poll (5.13) and multishot receive with a buffer ring (5.19, 6.0) have no opcode
    // of their own: try each once and see it answer.
    multishot_poll_works()?;
    multishot_recvmsg_works()
}

/// Registers a small buffer ring and receives one datagram over an AF_UNIX socket pair with a
/// multishot RECVMSG; checks the completion picked a buffer and keeps the request armed.
fn multishot_recvmsg_works() -> io::Result<()> {
    let mut ring: IoUring = IoUring::new(4)?;
    let mut bufs = BufRing::new(2, 256)?;
    // SAFETY: the descriptor ring is leaked memory and outlives `ring`.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(bufs.ring_addr(), 2, RECV_BGID, 0)
    }
    .map_err(|e| io::Error::new(e.kind(), format!("io_uring buffer rings (Linux 5.19): {e}")))?;
    let (a, b) = sys::socket::unix_dgram_pair()?;
    sys::io::write(&b, b"probe")?;
    let msg = Box::new(zeroed_msghdr());
    let e = opcode::RecvMsgMulti::new(types::Fd(a.as_raw_fd()), &*msg, RECV_BGID)
        .build()
        .user_data(1);
    // SAFETY: `msg` outlives the ring (declared before it is dropped below); the buffers are
    // leaked.
    let c = unsafe { complete_one(&mut ring, &e, "receive") }?;
    let unsupported = || {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring lacks multishot RECVMSG (Linux 6.0)",
        )
    };
    if c.result() < 0 {
        return Err(if c.result() == -libc::EINVAL {
            unsupported()
        } else {
            io::Error::from_raw_os_error(-c.result())
        });
    }
    let bid = cqueue::buffer_select(c.flags()).ok_or_else(unsupported)?;
    if !cqueue::more(c.flags()) {
        return Err(unsupported());
    }
    let buf = bufs.buf_mut(bid).ok_or_else(unsupported)?;
    let got = recv_layout(buf, 0, 0).is_some_and(|l| &buf[l.payload] == b"probe");
    drop(ring);
    drop(msg);
    if got {
        Ok(())
    } else {
        Err(io::Error::other(
            "io_uring probe: multishot RECVMSG returned an unexpected buffer layout",
        ))
    }
}

/// Submits `e` on a fresh probe ring and returns its first completion.
///
/// # Safety
/// Whatever `e` points to must stay valid until the ring is dropped.
unsafe fn complete_one(
    ring: &mut IoUring,
    e: &squeue::Entry,
    what: &str,
) -> io::Result<cqueue::Entry> {
    // SAFETY: the caller keeps the entry's memory valid for the ring's lifetime.
    unsafe { ring.submission().push(e) }
        .map_err(|_| io::Error::other("io_uring probe: submission queue full"))?;
    ring.submit_and_wait(1)?;
    ring.completion()
        .next()
        .ok_or_else(|| io::Error::other(format!("io_uring probe: no {what} completion")))
}

/// Arms a multishot POLL_ADD on a readable eventfd and checks the completion carries
/// IORING_CQE_F_MORE (older kernels ignore the flag and complete it once, or reject it).
fn multishot_poll_works() -> io::Result<()> {
    let mut ring: IoUring = IoUring::new(4)?;
    let efd = sys::thread::eventfd()?;
    sys::thread::eventfd_signal(&efd);
    let e = opcode::PollAdd::new(types::Fd(efd.as_raw_fd()), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(1);
    // SAFETY: a poll entry holds no pointers into our memory.
    let c = unsafe { complete_one(&mut ring, &e, "poll") }?;
    if c.result() < 0 {
        return Err(io::Error::from_raw_os_error(-c.result()));
    }
    if !cqueue::more(c.flags()) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring lacks multishot POLL_ADD (Linux 5.13)",
        ));
    }
    Ok(())
}

/// Builds the ring with the best flags this kernel takes; returns it and the flags' name.
fn build_ring() -> io::Result<(IoUring, &'static str)> {
    if let Ok(r) = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(RING_ENTRIES)
    {
        return Ok((r, "single_issuer+defer_taskrun"));
    }
    if let Ok(r) = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(RING_ENTRIES)
    {
        return Ok((r, "coop_taskrun"));
    }
    Ok((IoUring::new(RING_ENTRIES)?, "plain"))
}

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain C data (pointers and integers); all-zero is valid.
    unsafe { std::mem::zeroed() }
}

fn empty_iov() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

/// One outgoing datagram (or GSO chunk) of a TUN slot.
struct SendMsg {
    iov: libc::iovec,
    msg: libc::msghdr,
    ctl: [u8; CMSG_BUF],
    /// Byte range in the slot's buffer (read buffer or split buffer).
    start: usize,
    len: usize,
    gso_size: u16,
    segments: usize,
    split: bool,
}

/// A TUN read buffer, its split output and its sends, at a stable address (leaked).
struct TunSlot {
    buf: Box<[u8]>,
    out: Box<[u8]>,
    addr: libc::sockaddr_in,
    sends: Box<[SendMsg]>,
    /// Sends posted for the current packet, and how many are still in flight.
    used: usize,
    pending: usize,
}

fn leak_tun_slots(n: usize, buf: usize, out: usize) -> &'static mut [TunSlot] {
    let v: Vec<TunSlot> = (0..n)
        .map(|_| TunSlot {
            buf: vec![0u8; buf].into_boxed_slice(),
            out: vec![0u8; out].into_boxed_slice(),
            addr: sockaddr_in(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)),
            sends: (0..MAX_SENDS)
                .map(|_| SendMsg {
                    iov: empty_iov(),
                    msg: zeroed_msghdr(),
                    ctl: [0; CMSG_BUF],
                    start: 0,
                    len: 0,
                    gso_size: 0,
                    segments: 0,
                    split: false,
                })
                .collect(),
            used: 0,
            pending: 0,
        })
        .collect();
    Box::leak(v.into_boxed_slice())
}

/// A completion as handled: user data, result, flags.
type Cqe = (u64, i32, u32);

struct Uring {
    ring: IoUring,
    gro: bool,
    tun_slots: &'static mut [TunSlot],
    /// TUN slots not waiting for sends.
    tun_free: Vec<usize>,
    recv_bufs: BufRing,
    /// The multishot receive's msghdr (name and control area sizes), at a stable address.
    recv_msg: &'static mut libc::msghdr,
    /// Completions drained while the submission queue was full; handled next round.
    backlog: Vec<Cqe>,
}

fn cqe_tuple(c: cqueue::Entry) -> Cqe {
    (c.user_data(), c.result(), c.flags())
}

impl Uring {
    fn push(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: every entry we build points into leaked slot memory (or nothing), which
            // stays valid and untouched by us until its completion arrives.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            // The SQ is full: hand it to the kernel. Drain the CQ first so a full CQ cannot
            // make the submit fail (EBUSY); those completions are handled next round.
            self.backlog.extend(self.ring.completion().map(cqe_tuple));
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EINTR) {
                    self.backlog.extend(self.ring.completion().map(cqe_tuple));
                }
            }
        }
    }

    fn arm_tun_poll(&mut self) {
        let e = opcode::PollAdd::new(FIXED_TUN, libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(ud(K_TUN_POLL, 0, 0));
        self.push(e);
    }

    /// Arms the multishot receive (again, after the kernel ended it).
    fn arm_udp_recv(&mut self) {
        let e = opcode::RecvMsgMulti::new(FIXED_RECV, &*self.recv_msg, RECV_BGID)
            .build()
            .user_data(ud(K_UDP_RECV, 0, 0));
        self.push(e);
    }

    /// Posts one send of `len` bytes at `start` of the slot's read (`split` false) or split
    /// buffer, as a UDP_SEGMENT send of `gso_size` when non-zero. False: no send slot left.
    #[allow(clippy::too_many_arguments)]
    fn post_udp_send(
        &mut self,
        i: usize,
        split: bool,
        start: usize,
        len: usize,
        gso_size: u16,
        segments: usize,
    ) -> bool {
        let s = &mut self.tun_slots[i];
        let k = s.used;
        if k >= s.sends.len() {
            return false;
        }
        s.used += 1;
        s.pending += 1;
        let base = if split {
            s.out.as_mut_ptr()
        } else {
            s.buf.as_mut_ptr()
        };
        let m = &mut s.sends[k];
        m.start = start;
        m.len = len;
        m.gso_size = gso_size;
        m.segments = segments;
        m.split = split;
        // SAFETY: `start + len` lies within the chosen buffer (callers pass ranges computed
        // from that buffer's contents), so the pointer stays in bounds.
        m.iov.iov_base = unsafe { base.add(start) }.cast();
        m.iov.iov_len = len;
        m.msg.msg_iov = &mut m.iov;
        m.msg.msg_iovlen = 1;
        m.msg.msg_name = (&mut s.addr as *mut libc::sockaddr_in).cast();
        m.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if gso_size > 0 {
            let n = encode_udp_segment(&mut m.ctl, gso_size);
            m.msg.msg_control = m.ctl.as_mut_ptr().cast();
            m.msg.msg_controllen = n as _;
        } else {
            m.msg.msg_control = std::ptr::null_mut();
            m.msg.msg_controllen = 0;
        }
        let e = opcode::SendMsg::new(FIXED_SEND, &m.msg)
            .build()
            .user_data(ud(K_UDP_SEND, i, k));
        self.push(e);
        true
    }

    /// Slot `i` has no send in flight: reuse it for the next TUN read.
    fn release_tun_slot(&mut self, i: usize) {
        let s = &mut self.tun_slots[i];
        s.used = 0;
        s.pending = 0;
        self.tun_free.push(i);
    }
}

fn is_transient(res: i32) -> bool {
    matches!(-res, libc::EINTR | libc::EAGAIN | libc::ENOBUFS)
}

/// The IPv4 address of a `sockaddr_in` as the kernel wrote it (`UNSPECIFIED` if too short).
fn sockaddr_bytes_ip(name: &[u8]) -> std::net::Ipv4Addr {
    match name.get(4..8) {
        Some(&[a, b, c, d]) => std::net::Ipv4Addr::new(a, b, c, d),
        _ => std::net::Ipv4Addr::UNSPECIFIED,
    }
}

/// Cancels every operation still in flight, waits (at most [`SHUTDOWN_WAIT`]) until the kernel
/// has completed them, and unregisters the files. Without this the ring's teardown, which the
/// kernel runs asynchronously after the ring fd is closed, would keep the TUN queue open for a
/// while after the process exits: a data plane restarted at once would then attach its queues
/// to the old, dying `flannel0` (with the old vnet-header setting) instead of a fresh device.
fn shutdown(u: &mut Uring) {
    let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any().all())
        .build()
        .user_data(ud(K_CANCEL, 0, 0));
    u.push(cancel);
    let deadline = Instant::now() + SHUTDOWN_WAIT;
    let mut cancelled = false;
    let mut sends = u.tun_slots.iter().map(|s| s.pending).sum::<usize>();
    let (mut tun_poll, mut recv) = (true, true);
    while Instant::now() < deadline && (!cancelled || sends > 0 || tun_poll || recv) {
        let ts = types::Timespec::new().nsec(10_000_000);
        let args = types::SubmitArgs::new().timespec(&ts);
        match u.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => {}
            Err(_) => break,
        }
        let done: Vec<Cqe> = u
            .backlog
            .drain(..)
            .chain(u.ring.completion().map(cqe_tuple))
            .collect();
        for (data, _, flags) in done {
            match data >> 56 {
                K_CANCEL => cancelled = true,
                K_UDP_SEND => sends = sends.saturating_sub(1),
                K_TUN_POLL if !cqueue::more(flags) => tun_poll = false,
                K_UDP_RECV if !cqueue::more(flags) => recv = false,
                _ => {}
            }
        }
    }
    if let Err(e) = u.ring.submitter().unregister_files() {
        tracing::debug!("io_uring: unregistering files at shutdown: {e}");
    }
}

/// Runs the worker until its wake fd fires. If this thread cannot build a ring, the worker
/// runs the fallback loop instead (logged).
pub fn run(setup: WorkerSetup) -> io::Result<()> {
    pin(setup.id, setup.cpu);
    let (ring, flags) = match build_ring() {
        Ok(r) => r,
        Err(e) => {
            // The startup probe passed, so this is rare (e.g. RLIMIT_MEMLOCK on pre-5.12
            // kernels with many workers): keep this worker alive on the fallback path.
            tracing::warn!(
                worker = setup.id,
                "io_uring ring setup failed ({e}); this worker uses the fallback path"
            );
            for fd in [&setup.tun, &setup.recv, &setup.send] {
                sys::io::set_nonblocking(fd)?;
            }
            return super::fallback::run(setup);
        }
    };
    tracing::debug!(worker = setup.id, flags, "io_uring ring ready");
    let WorkerSetup {
        id,
        tun,
        recv,
        send,
        wake,
        reader,
        stats,
        port,
        spoof_check,
        offload,
        drain,
        ..
    } = setup;
    let mut drain = super::DrainReporter::new(drain, id);
    let off: &Offload = &offload;
    let vnet = off.vnet_hdr;
    let sizes = BufSizes::new(vnet);
    let (tun_n, recv_n) = if vnet {
        (TUN_SLOTS_OFFLOAD, RECV_BUFS_OFFLOAD)
    } else {
        (TUN_SLOTS, RECV_BUFS)
    };
    let icmp_off = if vnet { VNET_HDR_LEN } else { 0 };
    let control_area = if off.gro { CMSG_BUF } else { 0 };
    let recv_bufs = BufRing::new(
        recv_n,
        RECVMSG_OUT_LEN + NAME_AREA + control_area + sizes.udp,
    )?;
    // SAFETY: the descriptor ring is leaked memory of `entries` descriptors, page aligned, and
    // outlives the io_uring instance.
    unsafe {
        ring.submitter().register_buf_ring_with_flags(
            recv_bufs.ring_addr(),
            recv_bufs.entries(),
            RECV_BGID,
            0,
        )
    }?;
    let fixed: [RawFd; 3] = [tun.as_raw_fd(), recv.as_raw_fd(), send.as_raw_fd()];
    ring.submitter().register_files(&fixed)?;
    let mut recv_msg = Box::new(zeroed_msghdr());
    recv_msg.msg_namelen = NAME_AREA as libc::socklen_t;
    recv_msg.msg_controllen = control_area as _;
    let coalesce: &'static mut [u8] = Box::leak(vec![0u8; sizes.coalesce].into_boxed_slice());
    let recv_writes: &'static mut Vec<gro::Write> = Box::leak(Box::new(Vec::with_capacity(256)));
    // Receives of one round coalesce together; written out at the end of the round.
    let mut co = Coalescer::new(coalesce, recv_writes);
    let mut u = Uring {
        ring,
        gro: off.gro,
        tun_slots: leak_tun_slots(tun_n, sizes.tun, sizes.split),
        tun_free: (0..tun_n).rev().collect(),
        recv_bufs,
        recv_msg: Box::leak(recv_msg),
        backlog: Vec::new(),
    };
    let e = opcode::PollAdd::new(types::Fd(wake.as_raw_fd()), libc::POLLIN as u32)
        .build()
        .user_data(ud(K_WAKE, 0, 0));
    u.push(e);
    u.arm_tun_poll();
    u.arm_udp_recv();

    let mut routes = super::Routes::new(reader, spoof_check);
    let mut limiter = icmp_limiter();
    let start = Instant::now();
    let mut local = Local::new();
    let mut cqes: Vec<Cqe> = Vec::with_capacity(RING_ENTRIES as usize * 2);
    let mut icmp_tmp = [0u8; ICMP_UNREACH_MAX];
    let mut icmp_pkt = [0u8; ICMP_UNREACH_MAX + VNET_HDR_LEN];
    let mut writes: Vec<gro::Write> = Vec::with_capacity(128);
    // The TUN queue may hold packets: set by a poll completion, cleared by a read that finds
    // it empty.
    let mut tun_readable = true;
    let mut rearm_recv = false;
    let mut stop = false;

    while !stop {
        let more_tun = tun_readable && !u.tun_free.is_empty();
        let want = usize::from(u.backlog.is_empty() && !more_tun);
        match u.ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        routes.refresh();
        let now = now_ns(start);
        cqes.clear();
        cqes.append(&mut u.backlog);
        cqes.extend(u.ring.completion().map(cqe_tuple));
        for &(data, res, flags) in &cqes {
            let slot = ((data >> 24) & 0xff_ffff) as usize;
            let sub = (data & 0xff_ffff) as usize;
            match data >> 56 {
                K_TUN_POLL => {
                    if res >= 0 {
                        tun_readable = true;
                    } else if !is_transient(res) && res != -libc::ECANCELED {
                        local.add(Counter::TunRxErrors, 1);
                    }
                    if !cqueue::more(flags) {
                        // The kernel ended the multishot poll (overflow, error): re-arm it,
                        // and look at the queue in case a wake-up fell in between.
                        tun_readable = true;
                        u.arm_tun_poll();
                    }
                }
                K_UDP_SEND => {
                    let s = &mut u.tun_slots[slot];
                    s.pending -= 1;
                    let m = &s.sends[sub];
                    let (start, len, gso, segments, split) =
                        (m.start, m.len, m.gso_size, m.segments, m.split);
                    if res >= 0 {
                        local.add(Counter::UdpTxPackets, segments as u64);
                        local.add(Counter::UdpTxBytes, res as u64);
                    } else if gso > 0 && matches!(-res, libc::EIO | libc::EINVAL) {
                        // The kernel or device refuses UDP GSO: off for good, and this chunk
                        // goes out segment by segment.
                        off.gso_failed(-res);
                        let seg = usize::from(gso);
                        let mut at = start;
                        while at < start + len {
                            let l = seg.min(start + len - at);
                            if !u.post_udp_send(slot, split, at, l, 0, 1) {
                                local.add(Counter::UdpTxErrors, 1);
                            }
                            at += l;
                        }
                    } else {
                        local.add(Counter::UdpTxErrors, segments as u64);
                    }
                    if u.tun_slots[slot].pending == 0 {
                        u.release_tun_slot(slot);
                    }
                }
                K_UDP_RECV => {
                    if !cqueue::more(flags) {
                        // Ended by the kernel (no buffer left: ENOBUFS, or an error): re-armed
                        // once this round's buffers are back in the ring.
                        rearm_recv = true;
                    }
                    let Some(bid) = cqueue::buffer_select(flags) else {
                        if res < 0 && !is_transient(res) && res != -libc::ENOBUFS {
                            local.add(Counter::UdpRxErrors, 1);
                        }
                        continue;
                    };
                    let Some(buf) = u.recv_bufs.buf_mut(bid) else {
                        local.add(Counter::UdpRxErrors, 1);
                        continue;
                    };
                    match recv_layout(buf, NAME_AREA, control_area) {
                        Some(l) if l.truncated => {
                            local.add(Counter::UdpRxPackets, 1);
                            local.add(Counter::DropBadLength, 1);
                        }
                        Some(l) => {
                            let gro_size = if u.gro {
                                decode_udp_gro(&buf[l.control.clone()])
                            } else {
                                None
                            };
                            let sender = sockaddr_bytes_ip(&buf[l.name.clone()]);
                            let payload = &mut buf[l.payload.clone()];
                            let n = payload.len();
                            if vnet {
                                if co.room() < coalesce_room(n, gro_size) {
                                    co = flush_coalesced(&tun, co, &mut local);
                                }
                                let ctx = &routes.ctx;
                                coalesce_udp_recv(
                                    payload, n, gro_size, sender, ctx, &mut co, &mut local,
                                );
                            } else {
                                let ctx = &routes.ctx;
                                plain_udp_recv(
                                    payload,
                                    n,
                                    gro_size,
                                    sender,
                                    ctx,
                                    &mut writes,
                                    &mut local,
                                );
                                for w in &writes {
                                    let pkt = &payload[w.offset..w.offset + w.len];
                                    write_tun(&tun, pkt, Counter::TunTxPackets, &mut local);
                                }
                            }
                        }
                        None => local.add(Counter::UdpRxErrors, 1),
                    }
                    u.recv_bufs.provide(bid);
                }
                K_WAKE => stop = true,
                _ => {}
            }
        }

        if !co.is_empty() {
            co = flush_coalesced(&tun, co, &mut local);
        }

        // TUN → UDP: read what the queue holds, up to a burst, into free slots.
        let mut burst = 0;
        let read_stamp = if tun_readable { drain.read_start() } else { 0 };
        while tun_readable && burst < TUN_BURST {
            let Some(slot) = u.tun_free.pop() else { break };
            let s = &mut u.tun_slots[slot];
            let n = match sys::io::read(&tun, &mut s.buf) {
                Ok(n) => n,
                Err(e) => {
                    u.tun_free.push(slot);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => {
                            tun_readable = false;
                            drain.queue_empty(read_stamp);
                        }
                        io::ErrorKind::Interrupted => continue,
                        _ => {
                            local.add(Counter::TunRxErrors, 1);
                            tun_readable = false;
                        }
                    }
                    break;
                }
            };
            burst += 1;
            let verdict = handle_tun_read(
                &mut s.buf,
                n,
                vnet,
                &mut s.out,
                &routes,
                &mut limiter,
                now,
                &mut icmp_tmp,
                &mut local,
            );
            match verdict {
                TunVerdict::Send {
                    peer,
                    split,
                    pkt_offset,
                    segs,
                } => {
                    s.addr = sockaddr_in(SocketAddrV4::new(peer, port));
                    for c in send_chunks(segs, off.gso()) {
                        let ok = u.post_udp_send(
                            slot,
                            split,
                            pkt_offset + c.range.start,
                            c.range.len(),
                            c.gso_size,
                            c.segments,
                        );
                        if !ok {
                            local.add(Counter::UdpTxErrors, c.segments as u64);
                        }
                    }
                    if u.tun_slots[slot].pending == 0 {
                        u.release_tun_slot(slot);
                    }
                }
                TunVerdict::Icmp(len) => {
                    icmp_pkt[..icmp_off].fill(0);
                    icmp_pkt[icmp_off..icmp_off + len].copy_from_slice(&icmp_tmp[..len]);
                    let pkt = &icmp_pkt[..icmp_off + len];
                    write_tun(&tun, pkt, Counter::IcmpUnreachableSent, &mut local);
                    u.release_tun_slot(slot);
                }
                TunVerdict::Drop => u.release_tun_slot(slot),
            }
        }
        if u.tun_free.len() == u.tun_slots.len() {
            drain.all_sent();
        }
        u.recv_bufs.publish();
        if rearm_recv {
            rearm_recv = false;
            u.arm_udp_recv();
        }
        local.add(Counter::Batches, 1);
        local.flush(&stats);
    }
    tracing::debug!(worker = id, "io_uring worker stopping");
    shutdown(&mut u);
    // The ring goes first, then the fds it used.
    drop(u);
    drop((tun, recv, send));
    Ok(())
}
