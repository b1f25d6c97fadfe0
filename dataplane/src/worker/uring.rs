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
//! TUN slot:  READ tun ─► decide ─► SENDMSG udp ─► READ tun ...      (drop / ICMP: READ again)
//! UDP slot:  RECVMSG udp ─► check ─► WRITE tun ─► RECVMSG udp ...   (drop: RECVMSG again)
//! ICMP slot: WRITE tun (a net-unreachable) ─► free
//! ```
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
//! Not yet (issue 4): multishot RECVMSG with a provided buffer ring, registered buffers/files,
//! UDP GSO/GRO and TUN offloads.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use io_uring::{opcode, squeue, types, IoUring};

use flannel_shared::stats::Counter;

use super::{icmp_limiter, now_ns, pin, Local, Routes, WorkerSetup, BUF_SIZE};
use crate::forward::{self, TunAction};
use crate::packet::ICMP_UNREACH_MAX;
use crate::sys::socket::{sockaddr_in, sockaddr_ip};

/// TUN reads kept posted per worker.
pub const TUN_SLOTS: usize = 64;
/// UDP receives kept posted per worker.
pub const UDP_SLOTS: usize = 64;
/// ICMP errors in flight per worker (more are dropped and counted as rate limited).
pub const ICMP_SLOTS: usize = 16;
const RING_ENTRIES: u32 = 256;

const K_TUN_READ: u64 = 1;
const K_UDP_SEND: u64 = 2;
const K_UDP_RECV: u64 = 3;
const K_TUN_WRITE: u64 = 4;
const K_ICMP_WRITE: u64 = 5;
const K_WAKE: u64 = 6;

fn ud(kind: u64, idx: usize) -> u64 {
    (kind << 56) | idx as u64
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

/// A buffer with its own iovec, msghdr and address, at a stable address (leaked).
struct Slot {
    buf: Box<[u8]>,
    iov: libc::iovec,
    msg: libc::msghdr,
    addr: libc::sockaddr_in,
}

fn leak_slots(n: usize, size: usize) -> &'static mut [Slot] {
    let v: Vec<Slot> = (0..n)
        .map(|_| Slot {
            buf: vec![0u8; size].into_boxed_slice(),
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            // SAFETY: msghdr is plain C data (pointers and integers); all-zero is valid.
            msg: unsafe { std::mem::zeroed() },
            addr: sockaddr_in(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)),
        })
        .collect();
    let slots = Box::leak(v.into_boxed_slice());
    for s in slots.iter_mut() {
        s.iov.iov_base = s.buf.as_mut_ptr().cast();
        s.iov.iov_len = s.buf.len();
        s.msg.msg_iov = &mut s.iov;
        s.msg.msg_iovlen = 1;
        s.msg.msg_name = (&mut s.addr as *mut libc::sockaddr_in).cast();
        s.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    }
    slots
}

struct Uring {
    ring: IoUring,
    tun: RawFd,
    recv: RawFd,
    send: RawFd,
    tun_slots: &'static mut [Slot],
    udp_slots: &'static mut [Slot],
    icmp_slots: &'static mut [Slot],
    icmp_free: Vec<usize>,
}

impl Uring {
    fn push(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: every entry we build points into leaked slot memory (or the leaked wake
            // buffer), which stays valid and untouched by us until its completion arrives.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            // Cannot happen with our slot accounting (in flight <= slots < ring size), but be
            // safe: flush the queue and retry.
            let _ = self.ring.submit();
        }
    }

    fn post_tun_read(&mut self, i: usize) {
        let s = &mut self.tun_slots[i];
        let e = opcode::Read::new(types::Fd(self.tun), s.buf.as_mut_ptr(), s.buf.len() as u32)
            .build()
            .user_data(ud(K_TUN_READ, i));
        self.push(e);
    }

    fn post_udp_recv(&mut self, i: usize) {
        let s = &mut self.udp_slots[i];
        s.iov.iov_len = s.buf.len();
        s.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        s.msg.msg_flags = 0;
        let e = opcode::RecvMsg::new(types::Fd(self.recv), &mut s.msg)
            .build()
            .user_data(ud(K_UDP_RECV, i));
        self.push(e);
    }

    fn post_udp_send(&mut self, i: usize, len: usize, dst: SocketAddrV4) {
        let s = &mut self.tun_slots[i];
        s.iov.iov_len = len;
        s.addr = sockaddr_in(dst);
        s.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let e = opcode::SendMsg::new(types::Fd(self.send), &s.msg)
            .build()
            .user_data(ud(K_UDP_SEND, i));
        self.push(e);
    }

    fn post_tun_write(&mut self, i: usize, len: usize) {
        let s = &self.udp_slots[i];
        let e = opcode::Write::new(types::Fd(self.tun), s.buf.as_ptr(), len as u32)
            .build()
            .user_data(ud(K_TUN_WRITE, i));
        self.push(e);
    }

    fn post_icmp_write(&mut self, i: usize, len: usize) {
        let s = &self.icmp_slots[i];
        let e = opcode::Write::new(types::Fd(self.tun), s.buf.as_ptr(), len as u32)
            .build()
            .user_data(ud(K_ICMP_WRITE, i));
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
        ..
    } = setup;
    let mut u = Uring {
        ring,
        tun: tun.as_raw_fd(),
        recv: recv.as_raw_fd(),
        send: send.as_raw_fd(),
        tun_slots: leak_slots(TUN_SLOTS, BUF_SIZE),
        udp_slots: leak_slots(UDP_SLOTS, BUF_SIZE),
        icmp_slots: leak_slots(ICMP_SLOTS, ICMP_UNREACH_MAX),
        icmp_free: (0..ICMP_SLOTS).collect(),
    };
    let wake_buf: &'static mut [u8; 8] = Box::leak(Box::new([0u8; 8]));
    let e = opcode::Read::new(types::Fd(wake.as_raw_fd()), wake_buf.as_mut_ptr(), 8)
        .build()
        .user_data(ud(K_WAKE, 0));
    u.push(e);
    for i in 0..TUN_SLOTS {
        u.post_tun_read(i);
    }
    for i in 0..UDP_SLOTS {
        u.post_udp_recv(i);
    }

    let mut routes = Routes::new(reader, spoof_check);
    let mut limiter = icmp_limiter();
    let start = Instant::now();
    let mut local = Local::new();
    let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(RING_ENTRIES as usize * 2);
    let mut icmp_tmp = [0u8; ICMP_UNREACH_MAX];
    let mut stop = false;

    while !stop {
        match u.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        routes.refresh();
        let now = now_ns(start);
        cqes.clear();
        cqes.extend(u.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(data, res) in &cqes {
            let idx = (data & 0x00ff_ffff_ffff_ffff) as usize;
            match data >> 56 {
                K_TUN_READ => {
                    if res <= 0 {
                        if !is_transient(res) {
                            local.add(Counter::TunRxErrors, 1);
                        }
                        u.post_tun_read(idx);
                        continue;
                    }
                    let n = res as usize;
                    local.add(Counter::TunRxPackets, 1);
                    local.add(Counter::TunRxBytes, n as u64);
                    let mut limited = false;
                    let action = forward::tun_to_udp(
                        &mut u.tun_slots[idx].buf[..n],
                        &routes.snap,
                        &routes.ctx,
                        &mut limiter,
                        now,
                        &mut icmp_tmp,
                        &mut limited,
                    );
                    match action {
                        TunAction::Send(peer) => {
                            u.post_udp_send(idx, n, SocketAddrV4::new(peer, port));
                        }
                        TunAction::Unreachable(len) => {
                            local.add(Counter::DropNoRoute, 1);
                            if let Some(k) = u.icmp_free.pop() {
                                u.icmp_slots[k].buf[..len].copy_from_slice(&icmp_tmp[..len]);
                                u.post_icmp_write(k, len);
                            } else {
                                local.add(Counter::IcmpRateLimited, 1);
                            }
                            u.post_tun_read(idx);
                        }
                        TunAction::Drop(reason) => {
                            local.add(reason.counter(), 1);
                            if limited {
                                local.add(Counter::IcmpRateLimited, 1);
                            }
                            u.post_tun_read(idx);
                        }
                    }
                }
                K_UDP_SEND => {
                    if res < 0 {
                        local.add(Counter::UdpTxErrors, 1);
                    } else {
                        local.add(Counter::UdpTxPackets, 1);
                        local.add(Counter::UdpTxBytes, res as u64);
                    }
                    u.post_tun_read(idx);
                }
                K_UDP_RECV => {
                    if res < 0 {
                        if !is_transient(res) {
                            local.add(Counter::UdpRxErrors, 1);
                        }
                        u.post_udp_recv(idx);
                        continue;
                    }
                    let n = res as usize;
                    local.add(Counter::UdpRxPackets, 1);
                    local.add(Counter::UdpRxBytes, n as u64);
                    let s = &mut u.udp_slots[idx];
                    let verdict = if s.msg.msg_flags & libc::MSG_TRUNC != 0 {
                        Err(forward::DropReason::BadLength)
                    } else {
                        let sender = sockaddr_ip(&s.addr);
                        forward::udp_to_tun(&mut s.buf[..n], sender, &routes.ctx)
                    };
                    match verdict {
                        Ok(()) => u.post_tun_write(idx, n),
                        Err(reason) => {
                            local.add(reason.counter(), 1);
                            u.post_udp_recv(idx);
                        }
                    }
                }
                K_TUN_WRITE => {
                    if res < 0 {
                        local.add(Counter::TunTxErrors, 1);
                    } else {
                        local.add(Counter::TunTxPackets, 1);
                        local.add(Counter::TunTxBytes, res as u64);
                    }
                    u.post_udp_recv(idx);
                }
                K_ICMP_WRITE => {
                    if res < 0 {
                        local.add(Counter::TunTxErrors, 1);
                    } else {
                        local.add(Counter::IcmpUnreachableSent, 1);
                    }
                    u.icmp_free.push(idx);
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
