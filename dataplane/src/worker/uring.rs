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
//!   ring ([`buf_ring`](crate::sys::buf_ring)); each completion is one receive (with UDP_GRO up to
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
//! The ring, its TUN slots and its receive buffers (the memory shared with the kernel, and
//! every `unsafe` that goes with it) are [`sys::uring::Ring`]; this module is the loop and its
//! decisions.
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
use std::time::{Duration, Instant};

use flannel_shared::stats::Counter;

use super::{
    coalesce_room, coalesce_udp_recv, flush_coalesced, handle_tun_read, icmp_limiter, now_ns, pin,
    plain_udp_recv, send_chunks, write_tun, BufSizes, Local, Offload, TunVerdict, WorkerSetup,
};
use crate::gro::{self, Coalescer};
use crate::gso::VNET_HDR_LEN;
use crate::packet::ICMP_UNREACH_MAX;
use crate::sys;
use crate::sys::buf_ring::recv_layout;
use crate::sys::socket::{decode_udp_gro, CMSG_BUF};
use crate::sys::uring::{Completion, Ring, RingConfig, NAME_AREA, RING_ENTRIES};

pub use crate::sys::uring::probe;

/// TUN read buffers per worker (without / with offloads); a buffer is busy from its read until
/// its last send completes.
pub const TUN_SLOTS: usize = 64;
pub const TUN_SLOTS_OFFLOAD: usize = 32;
/// Receive buffers in the provided-buffer ring (without / with offloads; powers of two).
pub const RECV_BUFS: u16 = 256;
pub const RECV_BUFS_OFFLOAD: u16 = 64;
/// TUN reads per loop round at most, so receives and send completions are not starved.
pub const TUN_BURST: usize = 32;
/// How long a stopping worker waits for the kernel to finish its cancelled operations.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

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

/// Runs the worker until its wake fd fires. If this thread cannot build a ring, the worker
/// runs the fallback loop instead (logged).
pub fn run(setup: WorkerSetup) -> io::Result<()> {
    pin(setup.id, setup.cpu);
    let new_ring = match sys::uring::build_ring() {
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
    tracing::debug!(
        worker = setup.id,
        flags = new_ring.flags,
        "io_uring ring ready"
    );
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
    let cfg = RingConfig {
        tun_slots: tun_n,
        tun_buf: sizes.tun,
        split_buf: sizes.split,
        recv_bufs: recv_n,
        recv_payload: sizes.udp,
        control_area,
    };
    let mut u = Ring::setup(new_ring, &cfg, &tun, &recv, &send)?;
    let coalesce: &'static mut [u8] = Box::leak(vec![0u8; sizes.coalesce].into_boxed_slice());
    let recv_writes: &'static mut Vec<gro::Write> = Box::leak(Box::new(Vec::with_capacity(256)));
    // Receives of one round coalesce together; written out at the end of the round.
    let mut co = Coalescer::new(coalesce, recv_writes);
    u.arm_wake(&wake);
    u.arm_tun_poll();
    u.arm_udp_recv();

    let mut routes = super::Routes::new(reader, spoof_check);
    let mut limiter = icmp_limiter();
    let start = Instant::now();
    let mut local = Local::new();
    let mut cqes: Vec<Completion> = Vec::with_capacity(RING_ENTRIES as usize * 2);
    let mut icmp_tmp = [0u8; ICMP_UNREACH_MAX];
    let mut icmp_pkt = [0u8; ICMP_UNREACH_MAX + VNET_HDR_LEN];
    let mut writes: Vec<gro::Write> = Vec::with_capacity(128);
    // The TUN queue may hold packets: set by a poll completion, cleared by a read that finds
    // it empty.
    let mut tun_readable = true;
    let mut rearm_recv = false;
    let mut stop = false;

    while !stop {
        let more_tun = tun_readable && u.has_free_slot();
        let want = usize::from(!u.has_backlog() && !more_tun);
        match u.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        routes.refresh();
        let now = now_ns(start);
        cqes.clear();
        u.completions(&mut cqes);
        for c in cqes.drain(..) {
            match c {
                Completion::TunPoll { res, more } => {
                    if res >= 0 {
                        tun_readable = true;
                    } else if !is_transient(res) && res != -libc::ECANCELED {
                        local.add(Counter::TunRxErrors, 1);
                    }
                    if !more {
                        // The kernel ended the multishot poll (overflow, error): re-arm it,
                        // and look at the queue in case a wake-up fell in between.
                        tun_readable = true;
                        u.arm_tun_poll();
                    }
                }
                Completion::Sent(sent) => {
                    let Some(m) = u.send_done(sent) else { continue };
                    let res = m.res;
                    if res >= 0 {
                        local.add(Counter::UdpTxPackets, m.segments as u64);
                        local.add(Counter::UdpTxBytes, res as u64);
                    } else if m.gso_size > 0 && matches!(-res, libc::EIO | libc::EINVAL) {
                        // The kernel or device refuses UDP GSO: off for good, and this chunk
                        // goes out segment by segment.
                        off.gso_failed(-res);
                        let seg = usize::from(m.gso_size);
                        let mut at = m.start;
                        while at < m.start + m.len {
                            let l = seg.min(m.start + m.len - at);
                            if !u.post_send(m.slot, m.split, at, l, 0, 1) {
                                local.add(Counter::UdpTxErrors, 1);
                            }
                            at += l;
                        }
                    } else {
                        local.add(Counter::UdpTxErrors, m.segments as u64);
                    }
                    u.release_slot(m.slot);
                }
                Completion::Recv { res, more, buf } => {
                    if !more {
                        // Ended by the kernel (no buffer left: ENOBUFS, or an error): re-armed
                        // once this round's buffers are back in the ring.
                        rearm_recv = true;
                    }
                    let Some(token) = buf else {
                        if res < 0 && !is_transient(res) && res != -libc::ENOBUFS {
                            local.add(Counter::UdpRxErrors, 1);
                        }
                        continue;
                    };
                    let Some(buf) = u.recv_buf(&token) else {
                        local.add(Counter::UdpRxErrors, 1);
                        continue;
                    };
                    match recv_layout(buf, NAME_AREA, control_area) {
                        Some(l) if l.truncated => {
                            local.add(Counter::UdpRxPackets, 1);
                            local.add(Counter::DropBadLength, 1);
                        }
                        Some(l) => {
                            let gro_size = if off.gro {
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
                    u.provide(token);
                }
                Completion::Wake => stop = true,
                Completion::Other => {}
            }
        }

        if !co.is_empty() {
            co = flush_coalesced(&tun, co, &mut local);
        }

        // TUN → UDP: read what the queue holds, up to a burst, into free slots.
        let mut burst = 0;
        let read_stamp = if tun_readable { drain.read_start() } else { 0 };
        while tun_readable && burst < TUN_BURST {
            let Some((slot, mut s)) = u.take_slot() else {
                break;
            };
            let n = match sys::io::read(&tun, s.buf) {
                Ok(n) => n,
                Err(e) => {
                    u.release_slot(slot);
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
                s.buf,
                n,
                vnet,
                s.out,
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
                    s.set_peer(SocketAddrV4::new(peer, port));
                    for c in send_chunks(segs, off.gso()) {
                        let ok = u.post_send(
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
                    u.release_slot(slot);
                }
                TunVerdict::Icmp(len) => {
                    icmp_pkt[..icmp_off].fill(0);
                    icmp_pkt[icmp_off..icmp_off + len].copy_from_slice(&icmp_tmp[..len]);
                    let pkt = &icmp_pkt[..icmp_off + len];
                    write_tun(&tun, pkt, Counter::IcmpUnreachableSent, &mut local);
                    u.release_slot(slot);
                }
                TunVerdict::Drop => {
                    u.release_slot(slot);
                }
            }
        }
        if u.all_slots_free() {
            drain.all_sent();
        }
        u.publish_recv_bufs();
        if rearm_recv {
            rearm_recv = false;
            u.arm_udp_recv();
        }
        local.add(Counter::Batches, 1);
        local.flush(&stats);
    }
    tracing::debug!(worker = id, "io_uring worker stopping");
    u.shutdown(SHUTDOWN_WAIT);
    // The ring goes first, then the fds it used.
    drop(u);
    drop((tun, recv, send));
    Ok(())
}
