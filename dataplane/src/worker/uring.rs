//! The io_uring worker: the hot path.
//!
//! Each worker owns one ring, created on its own thread (so SINGLE_ISSUER holds), trying in
//! order SINGLE_ISSUER|DEFER_TASKRUN (Linux 6.1), COOP_TASKRUN (5.19), then no flags. Needed
//! opcodes: READ, WRITE (5.6), RECVMSG, SENDMSG (5.3) — [`probe`] checks them once at startup.
//!
//! Buffers are "slots" that cycle through fixed states, so there is never more than one
//! operation per slot in flight and the ring can never overflow:
//!
//! ```text
//! TUN slot:  READ tun ─► decide/split ─► k × SENDMSG udp ─► (all k done) READ tun ...
//! UDP slot:  RECVMSG udp ─► check/coalesce ─► k × WRITE tun ─► (all k done) RECVMSG udp ...
//! ICMP slot: WRITE tun (a net-unreachable) ─► free
//! ```
//!
//! Without offloads k is 1. With offloads a TUN read is a super-packet of up to 64 KiB whose
//! segments leave in one or two UDP_SEGMENT sends (each chunk's `msghdr` carries its own
//! cmsg); a receive is up to 64 KiB of GRO-merged datagrams, coalesced into one or a few TUN
//! writes. A GSO send failing with EIO/EINVAL turns GSO off (for all workers, logged once) and
//! is re-sent segment by segment.
//!
//! One loop iteration = one batch: `submit_and_wait(1)` submits every SQE queued while
//! handling the previous completions (many TUN reads, UDP sends, TUN writes per syscall),
//! then all available completions are handled, the route snapshot is refreshed once, and
//! counters are flushed once. [`TUN_SLOTS`] reads and [`UDP_SLOTS`] receives stay posted.
//!
//! Slot memory is leaked on purpose (allocated once per worker for the process lifetime): the
//! kernel may still hold pointers into it while the ring is torn down at exit, and a leak is
//! the simplest way to make that sound.
//!
//! If the submission queue fills while completions are handled, the completion queue is
//! drained into a backlog (handled next round) before submitting again, so a full CQ can
//! never stall a submit.
//!
//! Not yet: multishot RECVMSG with a provided buffer ring, registered buffers/files, and
//! coalescing across consecutive GRO receives. The last one matters most: a 64 KiB TSO packet
//! is ~46 segments of 1472 bytes, more than one UDP_SEGMENT send may carry (65507 bytes), so
//! it leaves as two sends (44 + 2), arrives as two GRO receives and is written to the peer's
//! TUN device as two packets (tun_tx_packets ≈ 2 × the sender's tun_rx_packets). Capping
//! flannel0's gso_max_size does not help: the TCP sender sits behind the container's veth and
//! the bridge, so oversize GSO packets are then segmented in software before reaching us.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use io_uring::{opcode, squeue, types, IoUring};

use flannel_shared::stats::Counter;

use super::{
    handle_tun_read, handle_udp_recv, icmp_limiter, now_ns, pin, send_chunks, Local, Offload,
    Routes, TunVerdict, WorkerSetup, WriteSource, BUF_SIZE, OFFLOAD_COALESCE_BUF,
    OFFLOAD_SPLIT_BUF, OFFLOAD_TUN_BUF, OFFLOAD_UDP_BUF,
};
use crate::gro;
use crate::gso::VNET_HDR_LEN;
use crate::packet::ICMP_UNREACH_MAX;
use crate::sys::socket::{decode_udp_gro, encode_udp_segment, sockaddr_in, sockaddr_ip, CMSG_BUF};

/// TUN reads kept posted per worker (without / with offloads).
pub const TUN_SLOTS: usize = 64;
pub const TUN_SLOTS_OFFLOAD: usize = 32;
/// UDP receives kept posted per worker (without / with offloads).
pub const UDP_SLOTS: usize = 64;
pub const UDP_SLOTS_OFFLOAD: usize = 32;
/// Sends one TUN slot may have (chunks of one super-packet, or its segments one by one when
/// GSO is off); more are counted as `udp_tx_errors`.
const MAX_SENDS: usize = 96;
/// ICMP errors in flight per worker (more are dropped and counted as rate limited).
pub const ICMP_SLOTS: usize = 16;
const RING_ENTRIES: u32 = 1024;

const K_TUN_READ: u64 = 1;
const K_UDP_SEND: u64 = 2;
const K_UDP_RECV: u64 = 3;
const K_TUN_WRITE: u64 = 4;
const K_ICMP_WRITE: u64 = 5;
const K_WAKE: u64 = 6;

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
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
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
    Ok(())
}

/// Builds the ring with the best flags this kernel takes; returns it and the flags' name.
fn build_ring() -> io::Result<(IoUring, &'static str)> {
    if let Ok(r) = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(RING_ENTRIES)
    {
        return Ok((r, "single_issuer+defer_taskrun"));
    }
    if let Ok(r) = IoUring::builder().setup_coop_taskrun().build(RING_ENTRIES) {
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

/// A UDP receive buffer with its msghdr and control buffer, plus the coalescing output.
struct UdpSlot {
    buf: Box<[u8]>,
    out: Box<[u8]>,
    iov: libc::iovec,
    msg: libc::msghdr,
    addr: libc::sockaddr_in,
    ctl: [u8; CMSG_BUF],
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

fn leak_udp_slots(n: usize, buf: usize, out: usize) -> &'static mut [UdpSlot] {
    let v: Vec<UdpSlot> = (0..n)
        .map(|_| UdpSlot {
            buf: vec![0u8; buf].into_boxed_slice(),
            out: vec![0u8; out].into_boxed_slice(),
            iov: empty_iov(),
            msg: zeroed_msghdr(),
            addr: sockaddr_in(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)),
            ctl: [0; CMSG_BUF],
            pending: 0,
        })
        .collect();
    let slots = Box::leak(v.into_boxed_slice());
    for s in slots.iter_mut() {
        s.iov.iov_base = s.buf.as_mut_ptr().cast();
        s.iov.iov_len = s.buf.len();
        s.msg.msg_iov = &mut s.iov;
        s.msg.msg_iovlen = 1;
        s.msg.msg_name = (&mut s.addr as *mut libc::sockaddr_in).cast();
    }
    slots
}

struct Uring {
    ring: IoUring,
    tun: RawFd,
    recv: RawFd,
    send: RawFd,
    gro: bool,
    tun_slots: &'static mut [TunSlot],
    udp_slots: &'static mut [UdpSlot],
    icmp_slots: &'static mut [Box<[u8]>],
    icmp_free: Vec<usize>,
    /// Completions drained while the submission queue was full; handled next round.
    backlog: Vec<(u64, i32)>,
}

impl Uring {
    fn push(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: every entry we build points into leaked slot memory (or the leaked wake
            // buffer), which stays valid and untouched by us until its completion arrives.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            // The SQ is full: hand it to the kernel. Drain the CQ first so a full CQ cannot
            // make the submit fail (EBUSY); those completions are handled next round.
            self.backlog
                .extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EINTR) {
                    self.backlog
                        .extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
                }
            }
        }
    }

    fn post_tun_read(&mut self, i: usize) {
        let s = &mut self.tun_slots[i];
        s.used = 0;
        s.pending = 0;
        let e = opcode::Read::new(types::Fd(self.tun), s.buf.as_mut_ptr(), s.buf.len() as u32)
            .build()
            .user_data(ud(K_TUN_READ, i, 0));
        self.push(e);
    }

    fn post_udp_recv(&mut self, i: usize) {
        let gro = self.gro;
        let s = &mut self.udp_slots[i];
        s.pending = 0;
        s.iov.iov_len = s.buf.len();
        s.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        s.msg.msg_flags = 0;
        if gro {
            s.msg.msg_control = s.ctl.as_mut_ptr().cast();
            s.msg.msg_controllen = CMSG_BUF as _;
        } else {
            s.msg.msg_control = std::ptr::null_mut();
            s.msg.msg_controllen = 0;
        }
        let e = opcode::RecvMsg::new(types::Fd(self.recv), &mut s.msg)
            .build()
            .user_data(ud(K_UDP_RECV, i, 0));
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
        let e = opcode::SendMsg::new(types::Fd(self.send), &m.msg)
            .build()
            .user_data(ud(K_UDP_SEND, i, k));
        self.push(e);
        true
    }

    fn post_tun_write(&mut self, i: usize, coalesced: bool, start: usize, len: usize) {
        let s = &mut self.udp_slots[i];
        s.pending += 1;
        let buf = if coalesced { &s.out } else { &s.buf };
        let e = opcode::Write::new(types::Fd(self.tun), buf[start..].as_ptr(), len as u32)
            .build()
            .user_data(ud(K_TUN_WRITE, i, 0));
        self.push(e);
    }

    fn post_icmp_write(&mut self, i: usize, len: usize) {
        let s = &self.icmp_slots[i];
        let e = opcode::Write::new(types::Fd(self.tun), s.as_ptr(), len as u32)
            .build()
            .user_data(ud(K_ICMP_WRITE, i, 0));
        self.push(e);
    }
}

fn is_transient(res: i32) -> bool {
    matches!(-res, libc::EINTR | libc::EAGAIN | libc::ENOBUFS)
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
                crate::sys::io::set_nonblocking(fd)?;
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
        ..
    } = setup;
    let off: &Offload = &offload;
    let vnet = off.vnet_hdr;
    let (tun_n, tun_buf, split_buf, udp_n, udp_buf, co_buf) = if vnet {
        (
            TUN_SLOTS_OFFLOAD,
            OFFLOAD_TUN_BUF,
            OFFLOAD_SPLIT_BUF,
            UDP_SLOTS_OFFLOAD,
            OFFLOAD_UDP_BUF,
            OFFLOAD_COALESCE_BUF,
        )
    } else {
        (TUN_SLOTS, BUF_SIZE, 0, UDP_SLOTS, BUF_SIZE, 0)
    };
    let icmp_off = if vnet { VNET_HDR_LEN } else { 0 };
    let mut u = Uring {
        ring,
        tun: tun.as_raw_fd(),
        recv: recv.as_raw_fd(),
        send: send.as_raw_fd(),
        gro: off.gro,
        tun_slots: leak_tun_slots(tun_n, tun_buf, split_buf),
        udp_slots: leak_udp_slots(udp_n, udp_buf, co_buf),
        icmp_slots: Box::leak(
            (0..ICMP_SLOTS)
                .map(|_| vec![0u8; ICMP_UNREACH_MAX + VNET_HDR_LEN].into_boxed_slice())
                .collect(),
        ),
        icmp_free: (0..ICMP_SLOTS).collect(),
        backlog: Vec::new(),
    };
    let wake_buf: &'static mut [u8; 8] = Box::leak(Box::new([0u8; 8]));
    let e = opcode::Read::new(types::Fd(wake.as_raw_fd()), wake_buf.as_mut_ptr(), 8)
        .build()
        .user_data(ud(K_WAKE, 0, 0));
    u.push(e);
    for i in 0..tun_n {
        u.post_tun_read(i);
    }
    for i in 0..udp_n {
        u.post_udp_recv(i);
    }

    let mut routes = Routes::new(reader, spoof_check);
    let mut limiter = icmp_limiter();
    let start = Instant::now();
    let mut local = Local::new();
    let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(RING_ENTRIES as usize * 2);
    let mut icmp_tmp = [0u8; ICMP_UNREACH_MAX];
    let mut writes: Vec<gro::Write> = Vec::with_capacity(128);
    let mut stop = false;

    while !stop {
        let want = usize::from(u.backlog.is_empty());
        match u.ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        routes.refresh();
        let now = now_ns(start);
        cqes.clear();
        cqes.append(&mut u.backlog);
        cqes.extend(u.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(data, res) in &cqes {
            let slot = ((data >> 24) & 0xff_ffff) as usize;
            let sub = (data & 0xff_ffff) as usize;
            match data >> 56 {
                K_TUN_READ => {
                    if res <= 0 {
                        if !is_transient(res) {
                            local.add(Counter::TunRxErrors, 1);
                        }
                        u.post_tun_read(slot);
                        continue;
                    }
                    let s = &mut u.tun_slots[slot];
                    let verdict = handle_tun_read(
                        &mut s.buf,
                        res as usize,
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
                            u.tun_slots[slot].addr = sockaddr_in(SocketAddrV4::new(peer, port));
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
                                u.post_tun_read(slot);
                            }
                        }
                        TunVerdict::Icmp(len) => {
                            if let Some(k) = u.icmp_free.pop() {
                                let b = &mut u.icmp_slots[k];
                                b[..icmp_off].fill(0);
                                b[icmp_off..icmp_off + len].copy_from_slice(&icmp_tmp[..len]);
                                u.post_icmp_write(k, icmp_off + len);
                            } else {
                                local.add(Counter::IcmpRateLimited, 1);
                            }
                            u.post_tun_read(slot);
                        }
                        TunVerdict::Drop => u.post_tun_read(slot),
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
                        u.post_tun_read(slot);
                    }
                }
                K_UDP_RECV => {
                    if res < 0 {
                        if !is_transient(res) {
                            local.add(Counter::UdpRxErrors, 1);
                        }
                        u.post_udp_recv(slot);
                        continue;
                    }
                    let s = &mut u.udp_slots[slot];
                    if s.msg.msg_flags & libc::MSG_TRUNC != 0 {
                        local.add(Counter::UdpRxPackets, 1);
                        local.add(Counter::DropBadLength, 1);
                        u.post_udp_recv(slot);
                        continue;
                    }
                    let gro_size = if u.gro {
                        let n = crate::sys::socket::control_len(&s.msg).min(CMSG_BUF);
                        decode_udp_gro(&s.ctl[..n])
                    } else {
                        None
                    };
                    let sender = sockaddr_ip(&s.addr);
                    let source = handle_udp_recv(
                        &mut s.buf,
                        res as usize,
                        gro_size,
                        sender,
                        &routes.ctx,
                        vnet,
                        &mut s.out,
                        &mut writes,
                        &mut local,
                    );
                    for w in &writes {
                        u.post_tun_write(slot, source == WriteSource::Coalesced, w.offset, w.len);
                    }
                    if u.udp_slots[slot].pending == 0 {
                        u.post_udp_recv(slot);
                    }
                }
                K_TUN_WRITE => {
                    if res < 0 {
                        local.add(Counter::TunTxErrors, 1);
                    } else {
                        local.add(Counter::TunTxPackets, 1);
                        local.add(Counter::TunTxBytes, res as u64);
                    }
                    let s = &mut u.udp_slots[slot];
                    s.pending -= 1;
                    if s.pending == 0 {
                        u.post_udp_recv(slot);
                    }
                }
                K_ICMP_WRITE => {
                    if res < 0 {
                        local.add(Counter::TunTxErrors, 1);
                    } else {
                        local.add(Counter::IcmpUnreachableSent, 1);
                    }
                    u.icmp_free.push(slot);
                }
                K_WAKE => stop = true,
                _ => {}
            }
        }
        local.add(Counter::Batches, 1);
        local.flush(&stats);
    }
    tracing::debug!(worker = id, "io_uring worker stopping");
    // The ring goes first, then the fds it used.
    drop(u);
    drop((tun, recv, send));
    Ok(())
}
