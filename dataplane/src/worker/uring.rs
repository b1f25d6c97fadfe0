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
//! - TUN reads (`--tun-reads ring`, the default where the kernel has it): one multishot READ
//!   (Linux 6.7) per queue, whose buffers are the TUN slots' read buffers, handed to the kernel
//!   as a second provided-buffer ring: one completion per packet, no read(2). TUN has been
//!   FMODE_NOWAIT since Linux 6.4 (commit 438b406055cd), so the reads complete inline, and one
//!   read per queue (not one per slot) wakes no herd: no io-wq thread appears (tested under a
//!   flood). When every slot is busy the read ends (ENOBUFS) and is re-armed once one is free.
//! - TUN reads, `--tun-reads readiness` (kernels before 6.7): one multishot POLL_ADD says
//!   "readable"; the worker then read(2)s the queue directly, up to [`TUN_BURST`] packets per
//!   round. (Many posted READs per queue, instead of one multishot READ, were a thundering herd:
//!   every packet woke all of them, and io_uring's retry budget ran out into io-wq threads.)
//! - TUN writes (packets for the local containers, ICMP errors): one WRITE each, submitted
//!   together with whatever else is queued in one io_uring_enter; [`TunWriter::write_packets`](crate::sys::uring::TunWriter::write_packets)
//!   waits for their completions before the buffer is reused (they complete inline: TUN is
//!   FMODE_NOWAIT). With offloads a round's coalesced packets go out together at the end of
//!   the round; without, the packets of one receive (up to 64 KiB of UDP_GRO datagrams)
//!   straight from its buffer, before the buffer goes back to the kernel.
//!
//! Buffers cycle through fixed states, so the operations in flight are bounded by the buffers
//! (a TUN slot's sends, the receive buffers); should the completion queue still fill, the
//! kernel keeps the overflow (IORING_FEAT_NODROP) and the next round drains it:
//!
//! ```text
//! TUN slot:    (free) ─► READ tun (or read(2)) ─► decide/split ─► k × SENDMSG udp ─► (all k done) free
//!                                         └► single packet: copied into the round's open
//!                                            batch (slot free at once), or opens one here
//! recv buffer: (in the ring) ─► multishot RECVMSG fills it ─► check/coalesce ─► WRITE tun
//!              ─► back in the ring
//! ```
//!
//! Single packets (no TSO) for one peer, read in the same round, are gathered back to back
//! into the first one's slot and leave as one UDP_SEGMENT send
//! ([`send_batch`](crate::send_batch)); anything else read in between sends the batch first,
//! so the order on the wire is the order read.
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
//! A stopping worker first ends its multishot receive and handles every datagram that receive
//! took (it reads the TUN queue no more), so a hand-over to the next data plane (restart,
//! upgrade: `handover`) loses nothing: what is still queued stays in the socket and the TUN
//! queue the next process inherits. Then it cancels what is in flight, waits for the kernel to
//! confirm and unregisters
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
//! the multishot TUN read takes provided buffers, not fixed ones; a WRITE_FIXED would save a
//! TUN write only the import of its user address (the driver copies the bytes either way); and
//! zero-copy sends (SEND_ZC) to a peer on this machine (veth) are copied on delivery anyway.
//!
//! A 64 KiB TSO packet is ~46 segments of 1472 bytes, more than one UDP_SEGMENT send may carry
//! (65507 bytes), so it leaves as two sends (44 + 2) and arrives as two GRO receives. The
//! receives of one loop round share one [`Coalescer`](crate::gro::Coalescer), so when both
//! halves arrive in the same round they become one TUN write again.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;
use std::time::Duration;

use flannel_shared::stats::Counter;

use super::{pin, Sockets, WorkerSetup, WorkerState};
use crate::datapath::{transmits, TunVerdict};
use crate::send_batch::OpenBatch;
use crate::sys;
use crate::sys::buf_ring::{recv_layout, RecvBuf};
use crate::sys::socket::{decode_recv_cmsgs, CMSG_BUF};
use crate::sys::uring::{
    Completion, NewRing, ReadSlot, Ring, RingConfig, Sent, NAME_AREA, RING_ENTRIES,
};
use crate::transmit::{Transmit, TxBuffer};

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
/// How long a stopping worker waits for its receive and TUN read to end and its sends to
/// complete before it cancels what is left.
const STOP_WAIT: Duration = Duration::from_secs(2);

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
    let multishot_tun_read = setup.multishot_tun_read;
    let (st, socks) = WorkerState::new(setup);
    let mut w = Uring::setup(new_ring, st, &socks, multishot_tun_read)?;
    while !w.stopped() {
        w.wait()?;
        w.now = w.st.begin_batch();
        w.read_this_round = false;
        w.handle_completions();
        w.flush_tun_writes();
        if w.tun_ring {
            w.send_batch();
            w.report_drained();
        } else {
            w.tun_burst(w.now);
        }
        w.end_round();
    }
    tracing::debug!(worker = w.st.id, "io_uring worker stopping");
    // The receive and the TUN read have ended already (`stopped`).
    w.ring.shutdown(SHUTDOWN_WAIT, false, false);
    // The ring goes first, then the fds it used.
    drop(w);
    drop(socks);
    Ok(())
}

/// One io_uring worker: its ring (declared first: dropped before the TUN queue in `st`), the
/// shared worker state and the loop's flags.
struct Uring {
    ring: Ring,
    st: WorkerState,
    /// This round's completions (allocated once).
    cqes: Vec<Completion>,
    /// Control room of a receive (UDP_GRO and IP_PKTINFO cmsgs), as the ring was set up.
    control_area: usize,
    /// The TUN queue may hold packets: set by a poll completion, cleared by a read that finds
    /// it empty.
    tun_readable: bool,
    /// The multishot receive ended: re-arm it at the end of the round.
    rearm_recv: bool,
    /// The TUN queue is read by a multishot READ into the slots (Linux 6.7), not by read(2)
    /// after a poll.
    tun_ring: bool,
    /// The multishot TUN read ended (no free slot: ENOBUFS, or an error): re-arm it once a
    /// slot is free.
    rearm_tun_read: bool,
    /// A TUN read completed in this round.
    read_this_round: bool,
    /// This round's clock (`WorkerState::begin_batch`).
    now: u64,
    /// Single packets to one peer, gathered in this round of TUN reads into one UDP_SEGMENT
    /// send ([`send_batch`](crate::send_batch)) where UDP GSO may be used.
    batch: Option<OpenBatch>,
    /// The wake-up came: the receive is being cancelled, the TUN queue is no longer read.
    stop: bool,
    /// After `stop`: the multishot receive has ended, so every datagram it took from the
    /// socket has been handled; what is still queued stays for the next data plane.
    recv_closed: bool,
    /// After `stop`: the multishot TUN read has ended (always, with readiness reads).
    tun_read_closed: bool,
    /// A cancel answered EALREADY (the operation was running): ask again next round.
    recancel_recv: bool,
    recancel_tun_read: bool,
    /// When a stop gives up waiting for the receive, the read and the sends to end.
    stop_deadline: Option<std::time::Instant>,
}

impl Uring {
    /// Sets up the ring for `st`'s TUN queue and `socks`, and arms the wake-up poll, the TUN
    /// multishot read (`multishot_tun_read`) or poll, and the multishot receive.
    fn setup(
        new_ring: NewRing,
        st: WorkerState,
        socks: &Sockets,
        multishot_tun_read: bool,
    ) -> io::Result<Self> {
        let vnet = st.offload.vnet_hdr;
        let (tun_slots, recv_bufs) = if vnet {
            (TUN_SLOTS_OFFLOAD, RECV_BUFS_OFFLOAD)
        } else {
            (TUN_SLOTS, RECV_BUFS)
        };
        // Always: the IP_PKTINFO cmsg (arrival interface), and UDP_GRO's with GRO.
        let control_area = CMSG_BUF;
        let cfg = RingConfig {
            tun_slots,
            tun_buf: st.sizes.tun,
            split_buf: st.sizes.split,
            recv_bufs,
            recv_payload: st.sizes.udp,
            control_area,
        };
        let mut ring = Ring::setup(
            new_ring,
            &cfg,
            &st.tun,
            &socks.recv,
            &socks.send,
            multishot_tun_read,
        )?;
        ring.arm_wake(&socks.wake);
        if multishot_tun_read {
            ring.arm_tun_read();
        } else {
            ring.arm_tun_poll();
        }
        ring.arm_udp_recv();
        Ok(Self {
            ring,
            st,
            cqes: Vec::with_capacity(RING_ENTRIES as usize * 2),
            control_area,
            tun_readable: true,
            rearm_recv: false,
            tun_ring: multishot_tun_read,
            rearm_tun_read: false,
            read_this_round: false,
            now: 0,
            batch: None,
            stop: false,
            recv_closed: false,
            tun_read_closed: false,
            recancel_recv: false,
            recancel_tun_read: false,
            stop_deadline: None,
        })
    }

    /// Whether the loop is done: stopping, the receive and the TUN read have ended and every
    /// send has completed (what was taken is on its way), or [`STOP_WAIT`] has passed.
    fn stopped(&self) -> bool {
        if !self.stop {
            return false;
        }
        if self.recv_closed && self.tun_read_closed && self.ring.sends_in_flight() == 0 {
            return true;
        }
        let late = self
            .stop_deadline
            .is_some_and(|d| std::time::Instant::now() >= d);
        if late {
            tracing::warn!(
                worker = self.st.id,
                recv_closed = self.recv_closed,
                tun_read_closed = self.tun_read_closed,
                sends = self.ring.sends_in_flight(),
                "stop: gave up waiting after {STOP_WAIT:?}"
            );
        }
        late
    }

    /// Submits every SQE queued since the last round and waits for one completion, unless
    /// the TUN queue may still hold packets or completions wait in the backlog.
    fn wait(&mut self) -> io::Result<()> {
        let more_tun =
            !self.tun_ring && self.tun_readable && !self.stop && self.ring.has_free_slot();
        let want = usize::from(!self.ring.has_backlog() && !more_tun);
        let r = if self.stop && want == 1 {
            // Stopping: turn often enough to notice the deadline.
            self.ring.submit_and_wait_at_most(Duration::from_millis(10))
        } else {
            self.ring.submit_and_wait(want)
        };
        match r {
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Handles every completion available.
    fn handle_completions(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        self.ring.completions(&mut cqes);
        for c in cqes.drain(..) {
            match c {
                Completion::TunPoll { res, more } => self.on_tun_poll(res, more),
                Completion::Sent(sent) => self.on_sent(sent),
                Completion::Recv { res, more, buf } => self.on_recv(res, more, buf),
                Completion::Wake => self.begin_stop(),
                Completion::RecvCancelled { res } => {
                    // Nothing armed (it had ended and waited for its re-arm): done.
                    if res == -libc::EALREADY {
                        self.recancel_recv = true;
                    } else if res < 0 {
                        self.recv_closed = true;
                    }
                }
                Completion::TunRead { res, more, slot } => self.on_tun_read(res, more, slot),
                Completion::TunReadCancelled { res } => {
                    if res == -libc::EALREADY {
                        self.recancel_tun_read = true;
                    } else if res < 0 {
                        self.tun_read_closed = true;
                    }
                }
                Completion::Other => {}
            }
        }
        self.cqes = cqes;
    }

    /// The wake-up: stop reading the TUN queue and end the receive, handling what it already
    /// took (a hand-over to the next data plane loses no datagram and no packet: both stay
    /// queued in the fds it inherits).
    fn begin_stop(&mut self) {
        if self.stop {
            return;
        }
        self.stop = true;
        self.stop_deadline = Some(std::time::Instant::now() + STOP_WAIT);
        if self.rearm_recv {
            // Ended already and not re-armed: nothing in flight.
            self.rearm_recv = false;
            self.recv_closed = true;
        } else {
            self.ring.cancel_udp_recv();
        }
        if !self.tun_ring {
            // read(2) after a poll: nothing is read once `stop` is set.
            self.tun_read_closed = true;
        } else if self.rearm_tun_read {
            self.rearm_tun_read = false;
            self.tun_read_closed = true;
        } else {
            self.ring.cancel_tun_read();
        }
    }

    /// For CPU-local steering, after a round that read packets: whether the queue is empty
    /// now (one poll(2), not one per packet). With DEFER_TASKRUN the kernel reads only inside
    /// our io_uring_enter, so an empty queue now means nothing steered here before is unread.
    fn report_drained(&mut self) {
        if !self.read_this_round {
            return;
        }
        let t = self.st.drain.read_start();
        if t == 0 {
            return;
        }
        let mut ready = [false];
        if sys::io::poll_in(&[&self.st.tun], 0, &mut ready).is_ok() && !ready[0] {
            self.st.drain.queue_empty(t);
        }
    }

    /// This round's packets for the local containers, written to the TUN queue as ring
    /// operations: submitted in one io_uring_enter with the round's UDP sends.
    fn flush_tun_writes(&mut self) {
        self.st.flush_rx(&mut self.ring.tun_writer());
    }

    /// One multishot TUN read completion: a packet in a slot the kernel picked.
    fn on_tun_read(&mut self, res: i32, more: bool, slot: Option<ReadSlot>) {
        if !more {
            if self.stop {
                self.tun_read_closed = true;
            } else {
                self.rearm_tun_read = true;
            }
        }
        let Some(read) = slot else {
            if res < 0 && !is_transient(res) && res != -libc::ECANCELED {
                self.st.decider.counters.add(Counter::TunRxErrors, 1);
            }
            return;
        };
        let Some((slot, _)) = self.ring.take_read_slot(read) else {
            self.st.decider.counters.add(Counter::TunRxErrors, 1);
            return;
        };
        if res <= 0 {
            self.ring.release_slot(slot);
            return;
        }
        self.read_this_round = true;
        self.tun_packet(slot, res as usize, self.now);
    }

    fn on_tun_poll(&mut self, res: i32, more: bool) {
        if res >= 0 {
            self.tun_readable = true;
        } else if !is_transient(res) && res != -libc::ECANCELED {
            self.st.decider.counters.add(Counter::TunRxErrors, 1);
        }
        if !more {
            // The kernel ended the multishot poll (overflow, error): re-arm it, and look at
            // the queue in case a wake-up fell in between.
            self.tun_readable = true;
            self.ring.arm_tun_poll();
        }
    }

    fn on_sent(&mut self, sent: Sent) {
        let Some(m) = self.ring.send_done(sent) else {
            return;
        };
        let local = &mut self.st.decider.counters;
        let tx = &m.tx;
        if m.res >= 0 {
            local.add(Counter::UdpTxPackets, tx.segments as u64);
            local.add(Counter::UdpTxBytes, m.res as u64);
            if tx.buffer == TxBuffer::Read && tx.segments > 1 {
                // Only a gathered batch sends several datagrams from the read buffer.
                local.add(Counter::UdpTxGathered, tx.segments as u64);
            }
        } else if tx.is_gso() && matches!(-m.res, libc::EIO | libc::EINVAL) {
            // The kernel or device refuses UDP GSO to this destination: off for it for a
            // while, and this send goes out segment by segment.
            self.st.offload.gso_failed(tx.peer, -m.res);
            for one in tx.one_by_one() {
                if !self.ring.post_send(m.slot, &one) {
                    local.add(Counter::UdpTxErrors, 1);
                }
            }
        } else if -m.res == libc::EMSGSIZE {
            // DF is set: over the path MTU, dropped rather than fragmented.
            local.add(Counter::UdpTxTooBig, tx.segments as u64);
        } else {
            local.add(Counter::UdpTxErrors, tx.segments as u64);
        }
        self.ring.release_slot(m.slot);
    }

    fn on_recv(&mut self, res: i32, more: bool, buf: Option<RecvBuf>) {
        if !more {
            if self.stop {
                self.recv_closed = true;
            } else {
                // Ended by the kernel (no buffer left: ENOBUFS, or an error): re-armed once
                // this round's buffers are back in the ring.
                self.rearm_recv = true;
            }
        }
        let Some(token) = buf else {
            if res < 0 && !is_transient(res) && res != -libc::ENOBUFS {
                self.st.decider.counters.add(Counter::UdpRxErrors, 1);
            }
            return;
        };
        let st = &mut self.st;
        let Some((buf, mut writer)) = self.ring.recv_buf_and_writer(&token) else {
            st.decider.counters.add(Counter::UdpRxErrors, 1);
            return;
        };
        match recv_layout(buf, NAME_AREA, self.control_area) {
            Some(l) if l.truncated => st.decider.recv_truncated(),
            Some(l) => {
                let meta = decode_recv_cmsgs(&buf[l.control.clone()]);
                let sender = sockaddr_bytes_ip(&buf[l.name.clone()]);
                let payload = &mut buf[l.payload.clone()];
                let n = payload.len();
                st.udp_recv(payload, n, meta, sender, &mut writer);
            }
            None => st.decider.counters.add(Counter::UdpRxErrors, 1),
        }
        self.ring.provide(token);
    }

    /// TUN → UDP: reads what the queue holds, up to a burst, into free slots, and posts the
    /// sends.
    fn tun_burst(&mut self, now: u64) {
        let mut burst = 0;
        let read_stamp = if self.tun_readable {
            self.st.drain.read_start()
        } else {
            0
        };
        while self.tun_readable && !self.stop && burst < TUN_BURST {
            let Some((slot, s)) = self.ring.take_slot() else {
                break;
            };
            let n = match sys::io::read(&self.st.tun, s.buf) {
                Ok(n) => n,
                Err(e) => {
                    self.ring.release_slot(slot);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => {
                            self.tun_readable = false;
                            self.st.drain.queue_empty(read_stamp);
                        }
                        io::ErrorKind::Interrupted => continue,
                        _ => {
                            self.st.decider.counters.add(Counter::TunRxErrors, 1);
                            self.tun_readable = false;
                        }
                    }
                    break;
                }
            };
            burst += 1;
            self.tun_packet(slot, n, now);
        }
        self.send_batch();
    }

    /// One packet of `n` bytes read into taken slot `slot`: decided, then gathered into the
    /// open batch, sent, answered with an ICMP error or dropped. The slot is released unless
    /// sends of it are in flight.
    fn tun_packet(&mut self, slot: usize, n: usize, now: u64) {
        let Some(mut s) = self.ring.taken_slot(slot) else {
            return;
        };
        match self.st.tun_read(s.buf, n, s.out, now) {
            TunVerdict::Send {
                peer,
                split: false,
                pkt_offset,
                segs,
            } if segs.count == 1 && self.st.offload.gso_for(peer) => {
                s.set_peer(SocketAddrV4::new(peer, self.st.port));
                let packet = pkt_offset..pkt_offset + segs.total;
                if self.gather(slot, peer, packet) {
                    // Copied into the open batch: this slot is free again.
                    self.ring.release_slot(slot);
                }
                return;
            }
            TunVerdict::Send {
                peer,
                split,
                pkt_offset,
                segs,
            } => {
                s.set_peer(SocketAddrV4::new(peer, self.st.port));
                // Sent after the batch gathered so far, in the order read.
                self.send_batch();
                let gso = self.st.offload.gso_for(peer);
                for tx in transmits(segs, gso, peer, TxBuffer::holding(split), pkt_offset) {
                    self.post(slot, &tx);
                }
            }
            TunVerdict::Icmp(len) => self.st.write_icmp(len, &mut self.ring.tun_writer()),
            TunVerdict::Drop => {}
        }
        // Free again unless sends of it are in flight.
        self.ring.release_slot(slot);
    }

    /// Adds the single packet at `packet` of taken slot `slot` (addressed to `peer`) to the
    /// open batch when it may join (copied; true: the slot is not needed any more); otherwise
    /// sends the open batch and opens a new one in this slot (false: the slot stays taken).
    fn gather(&mut self, slot: usize, peer: Ipv4Addr, packet: Range<usize>) -> bool {
        let len = packet.len();
        if let Some(b) = self.batch.as_mut() {
            if let Some(at) = b.place_for(peer, len, self.ring.slot_buf_len()) {
                if self.ring.copy_packet(slot, packet.clone(), b.slot, at) {
                    b.push(len);
                    return true;
                }
            }
        }
        self.send_batch();
        self.batch = Some(OpenBatch::new(slot, peer, packet.start, len));
        false
    }

    /// Sends the open batch, if any, as one send from its slot.
    fn send_batch(&mut self) {
        if let Some(b) = self.batch.take() {
            self.post(b.slot, &b.transmit());
            self.ring.release_slot(b.slot);
        }
    }

    /// Posts `tx` from taken slot `slot`; a send that cannot be posted is counted as failed.
    fn post(&mut self, slot: usize, tx: &Transmit) {
        if !self.ring.post_send(slot, tx) {
            self.st
                .decider
                .counters
                .add(Counter::UdpTxErrors, tx.segments as u64);
        }
    }

    /// The end of a round: drain report, receive buffers back to the kernel, the receive
    /// re-armed if it ended, counters flushed.
    fn end_round(&mut self) {
        if self.ring.all_slots_free() {
            self.st.drain.all_sent();
        }
        self.ring.publish_bufs();
        if self.rearm_recv {
            self.rearm_recv = false;
            self.ring.arm_udp_recv();
        }
        if self.rearm_tun_read && self.ring.has_free_slot() {
            self.rearm_tun_read = false;
            self.ring.arm_tun_read();
        }
        if std::mem::take(&mut self.recancel_recv) && !self.recv_closed {
            self.ring.cancel_udp_recv();
        }
        if std::mem::take(&mut self.recancel_tun_read) && !self.tun_read_closed {
            self.ring.cancel_tun_read();
        }
        self.st.end_batch();
    }
}
