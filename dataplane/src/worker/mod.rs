//! The per-core workers. Each worker owns one TUN queue, one receive socket (in the
//! SO_REUSEPORT group), one send socket, its own route-table reader and its own counter block.
//! What workers do share is read-mostly and set up by the main thread: the offload choices
//! ([`Offload`], whose per-destination GSO refusals any worker may record), the steering drain
//! board, and the arrival-interface set the table loop keeps current.
//!
//! - [`uring`]: the io_uring path (default).
//! - [`fallback`]: poll(2) + recvmmsg/sendmmsg + read/write, when io_uring is unavailable.
//!
//! This module holds what both paths share: the worker's resources ([`WorkerSetup`]), the
//! offload choices ([`Offload`]), the per-batch route refresh ([`Routes`]), the drain reports
//! for CPU-local steering ([`DrainReporter`]) and [`WorkerState`], which puts them together
//! with the I/O-free decisions of [`crate::datapath`] and makes the TUN writes both loops
//! share.

pub mod fallback;
pub mod uring;

use std::net::Ipv4Addr;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use flannel_shared::route_table::{RouteSnapshot, RouteTableReader};
use flannel_shared::stats::{Counter, WorkerStats};
use flannel_shared::Ipv4Net;

use crate::datapath::{coalesce_room, BatchCounters, PacketDecider, TunVerdict};
use crate::forward::{Lookup, SenderIndex, TableState};
use crate::gro::{self, Coalescer};
use crate::gso::VNET_HDR_LEN;
use crate::sys::socket::RecvMeta;
use crate::underlay::{Arrival, ArrivalCell};

/// Packet buffer size. Without offloads a packet is at most the TUN MTU; the TUN MTU is
/// clamped to this. Larger datagrams from peers are truncated and dropped (`drop_bad_length`).
pub const BUF_SIZE: usize = 16 * 1024;
/// Largest TUN MTU we configure.
pub const MAX_MTU: u32 = BUF_SIZE as u32;
/// TUN read buffer with offloads: a vnet header and a 64 KiB super-packet.
pub const OFFLOAD_TUN_BUF: usize = VNET_HDR_LEN + 65535 + 1;
/// Split output: a 64 KiB super-packet cut into segments, each with its own headers. With
/// `gso_size` of 500 bytes or more (any sane MSS) this fits; smaller ones are dropped.
pub const OFFLOAD_SPLIT_BUF: usize = 80 * 1024;
/// UDP receive buffer with GRO: up to 64 KiB of datagrams.
pub const OFFLOAD_UDP_BUF: usize = 65536;
/// Coalesced TUN writes of one batch of receives: their bytes plus one vnet header per datagram
/// (room for at least four full GRO receives; flushed early when full).
pub const OFFLOAD_COALESCE_BUF: usize = 4 * (OFFLOAD_UDP_BUF + 64 * VNET_HDR_LEN);
/// Buffer sizes of one worker: TUN read, split output, UDP receive payload, coalescing output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufSizes {
    pub tun: usize,
    pub split: usize,
    pub udp: usize,
    pub coalesce: usize,
}

impl BufSizes {
    /// With TUN offloads (`vnet`): 64 KiB super-packets each way; without: one packet each.
    /// With UDP GRO (`gro`) a receive can hold up to 64 KiB of datagrams whatever the TUN side
    /// does (a smaller buffer would truncate the whole batch: every datagram in it lost).
    pub fn new(vnet: bool, gro: bool) -> Self {
        let udp = if gro { OFFLOAD_UDP_BUF } else { BUF_SIZE };
        if vnet {
            Self {
                tun: OFFLOAD_TUN_BUF,
                split: OFFLOAD_SPLIT_BUF,
                udp,
                coalesce: OFFLOAD_COALESCE_BUF,
            }
        } else {
            Self {
                tun: BUF_SIZE,
                split: 0,
                udp,
                coalesce: 0,
            }
        }
    }
}

/// How long a destination that refused a UDP GSO send gets its datagrams one by one before GSO
/// is tried again.
pub const GSO_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// Offload choices, probed once at startup and shared by all workers.
#[derive(Debug)]
pub struct Offload {
    /// The TUN queues carry a virtio_net_hdr (IFF_VNET_HDR + TUNSETOFFLOAD succeeded).
    pub vnet_hdr: bool,
    /// UDP_GRO is on for the receive sockets.
    pub gro: bool,
    /// UDP_SEGMENT may be used (the startup probe passed).
    gso: bool,
    /// Destinations whose GSO send failed (EIO/EINVAL: e.g. a route through a device that
    /// cannot segment), each with when to try GSO again. Looked at only while non-empty.
    refused: std::sync::Mutex<Vec<(Ipv4Addr, std::time::Instant)>>,
    any_refused: AtomicBool,
}

impl Offload {
    pub fn new(vnet_hdr: bool, gro: bool, gso: bool) -> Self {
        Self {
            vnet_hdr,
            gro,
            gso,
            refused: std::sync::Mutex::new(Vec::new()),
            any_refused: AtomicBool::new(false),
        }
    }
    pub fn none() -> Self {
        Self::new(false, false, false)
    }
    /// Whether a send to `peer` may use UDP_SEGMENT: one relaxed load unless some destination
    /// refused it recently.
    #[inline]
    pub fn gso_for(&self, peer: Ipv4Addr) -> bool {
        self.gso && (!self.any_refused.load(Ordering::Relaxed) || self.gso_allowed_slow(peer))
    }

    #[cold]
    fn gso_allowed_slow(&self, peer: Ipv4Addr) -> bool {
        self.gso_allowed_at(peer, std::time::Instant::now())
    }

    fn gso_allowed_at(&self, peer: Ipv4Addr, now: std::time::Instant) -> bool {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.retain(|(p, until)| {
            let keep = *until > now;
            if !keep {
                tracing::info!(%p, "UDP GSO: trying it again for this destination");
            }
            keep
        });
        self.any_refused
            .store(!refused.is_empty(), Ordering::Relaxed);
        !refused.iter().any(|(p, _)| *p == peer)
    }

    /// A GSO send to `peer` failed with `errno`: that destination gets its datagrams one by one
    /// for [`GSO_RETRY`], then GSO is tried again. Logged once per refusal; other destinations
    /// keep GSO.
    pub fn gso_failed(&self, peer: Ipv4Addr, errno: i32) {
        self.gso_failed_at(peer, errno, std::time::Instant::now());
    }

    fn gso_failed_at(&self, peer: Ipv4Addr, errno: i32, now: std::time::Instant) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.iter().any(|(p, _)| *p == peer) {
            return;
        }
        refused.push((peer, now + GSO_RETRY));
        self.any_refused.store(true, Ordering::Relaxed);
        tracing::warn!(
            %peer,
            "UDP GSO: send failed ({}); UDP_SEGMENT off for this destination for {GSO_RETRY:?} \
             (segments are sent one by one)",
            std::io::Error::from_raw_os_error(errno)
        );
    }
}

/// Everything a worker owns.
pub struct WorkerSetup {
    pub id: usize,
    /// CPU to pin to (None: don't pin).
    pub cpu: Option<usize>,
    pub tun: OwnedFd,
    pub recv: OwnedFd,
    pub send: OwnedFd,
    /// Readable when the worker must stop.
    pub wake: Arc<OwnedFd>,
    pub reader: RouteTableReader,
    pub stats: WorkerStats,
    /// Destination UDP port at peers.
    pub port: u16,
    pub spoof_check: bool,
    pub offload: Arc<Offload>,
    /// Where to report "drained" times for CPU-local TUN steering (`sys::bpf::DrainBoard`).
    pub drain: Option<Arc<crate::sys::bpf::DrainBoard>>,
    /// The interfaces peers' datagrams may arrive on (kept current by the table loop).
    pub arrival: Arc<ArrivalCell>,
    /// The io_uring worker reads the TUN queue with a multishot READ (Linux 6.7) instead of
    /// read(2) after a poll ([`TunReads`]).
    pub multishot_tun_read: bool,
}

/// How the io_uring worker reads its TUN queue (`--tun-reads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunReads {
    /// One multishot READ per queue into the TUN slots, handed to the kernel as a
    /// provided-buffer ring: a completion per packet, no read(2), no io-wq thread (TUN is
    /// FMODE_NOWAIT since Linux 6.4; the opcode needs 6.7).
    Ring,
    /// A multishot POLL says "readable", then read(2) up to a burst.
    Readiness,
}

/// Reports this worker's drain times to CPU-local TUN steering (`sys::bpf::DrainBoard`):
/// a read that started at `t` and found the TUN queue empty, followed by every send before
/// it completing, means nothing steered to this worker before `t` is still inside it.
pub struct DrainReporter {
    board: Option<Arc<crate::sys::bpf::DrainBoard>>,
    worker: usize,
    empty_at: Option<u64>,
}

impl DrainReporter {
    pub fn new(board: Option<Arc<crate::sys::bpf::DrainBoard>>, worker: usize) -> Self {
        Self {
            board,
            worker,
            empty_at: None,
        }
    }

    /// The time to stamp on the TUN reads about to start (0 without steering: no clock read).
    pub fn read_start(&self) -> u64 {
        if self.board.is_some() {
            crate::sys::bpf::monotonic_ns()
        } else {
            0
        }
    }

    /// A read stamped `t` found the TUN queue empty.
    pub fn queue_empty(&mut self, t: u64) {
        self.empty_at = Some(t);
    }

    /// Every packet read so far has been handed to the kernel.
    pub fn all_sent(&mut self) {
        if let (Some(board), Some(t)) = (&self.board, self.empty_at.take()) {
            board.mark(self.worker, t);
        }
    }
}

/// The worker's view of the route table, refreshed once per batch.
pub struct Routes {
    reader: RouteTableReader,
    pub snap: RouteSnapshot,
    pub ctx: TableState,
    /// The underlay interfaces, as the table loop last computed them.
    arrival_cell: Arc<ArrivalCell>,
    arrival_version: u64,
    pub arrival: Arrival,
}

impl Lookup for RouteSnapshot {
    #[inline]
    fn peer_for(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        self.lookup(dst)
    }
}

impl Routes {
    pub fn new(
        reader: RouteTableReader,
        spoof_check: bool,
        arrival_cell: Arc<ArrivalCell>,
    ) -> Self {
        let mut r = Self {
            reader,
            snap: RouteSnapshot::empty(),
            arrival_version: arrival_cell.version(),
            arrival: arrival_cell.get(),
            arrival_cell,
            ctx: TableState {
                network: None,
                our_subnet: None,
                tun_addr: None,
                spoof_check,
                senders: SenderIndex::default(),
            },
        };
        r.refresh();
        r
    }

    /// Two atomic loads when nothing changed; rebuilds the receive context when the table did,
    /// copies the underlay interfaces when they did. On a read error the last good snapshot
    /// stays in use.
    #[inline]
    pub fn refresh(&mut self) {
        let v = self.arrival_cell.version();
        if v != self.arrival_version {
            self.arrival_version = v;
            self.arrival = self.arrival_cell.get();
        }
        if let Ok(true) = self.reader.refresh(&mut self.snap) {
            let meta = self.snap.meta();
            self.ctx.network = Some(meta.network);
            self.ctx.our_subnet = meta.our_subnet;
            self.ctx.tun_addr = meta.our_subnet.map(|s: Ipv4Net| s.addr());
            self.ctx.senders =
                SenderIndex::new(self.snap.routes().map(|r| (r.subnet, r.public_ip)));
        }
    }
}

/// Pins the calling worker thread, logging (not failing) when that is impossible.
pub fn pin(id: usize, cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        if let Err(e) = crate::sys::thread::pin_current_thread(cpu) {
            tracing::warn!(worker = id, cpu, "cannot pin worker to its CPU: {e}");
        }
    }
}

/// Monotonic nanoseconds since `start` (for the ICMP rate limiter).
fn now_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// How a loop writes packets into its TUN queue: the io_uring worker as ring WRITEs
/// ([`crate::sys::uring::TunWriter`]), the fallback with write(2) ([`WriteSyscalls`]).
pub trait TunWrite {
    /// Writes each `ranges` slice of `buf` into `tun` as one packet and fills `results` with
    /// each write's result (bytes, or -errno), in order; returns once the kernel is done with
    /// `buf`.
    fn write_packets(
        &mut self,
        tun: &OwnedFd,
        buf: &[u8],
        ranges: &mut dyn Iterator<Item = Range<usize>>,
        results: &mut Vec<i32>,
    );
}

impl TunWrite for crate::sys::uring::TunWriter<'_> {
    fn write_packets(
        &mut self,
        _tun: &OwnedFd,
        buf: &[u8],
        ranges: &mut dyn Iterator<Item = Range<usize>>,
        results: &mut Vec<i32>,
    ) {
        // The ring writes its registered file, which is `tun`.
        crate::sys::uring::TunWriter::write_packets(self, buf, ranges, results);
    }
}

/// TUN writes as one write(2) per packet (the fallback path).
pub struct WriteSyscalls;

impl TunWrite for WriteSyscalls {
    fn write_packets(
        &mut self,
        tun: &OwnedFd,
        buf: &[u8],
        ranges: &mut dyn Iterator<Item = Range<usize>>,
        results: &mut Vec<i32>,
    ) {
        results.clear();
        for r in ranges {
            let res = match buf.get(r) {
                Some(pkt) => match crate::sys::io::write(tun, pkt) {
                    Ok(n) => n as i32,
                    Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
                },
                None => -libc::EINVAL,
            };
            results.push(res);
        }
    }
}

/// Counts TUN write `results` as `ok` (with their bytes when `ok` is `tun_tx_packets`) or as
/// TUN errors.
fn count_tun_writes(results: &[i32], ok: Counter, local: &mut BatchCounters) {
    for &res in results {
        if res >= 0 {
            local.add(ok, 1);
            if ok == Counter::TunTxPackets {
                local.add(Counter::TunTxBytes, res as u64);
            }
        } else {
            local.add(Counter::TunTxErrors, 1);
        }
    }
}

/// The sockets a loop keeps beside its [`WorkerState`] (which owns the TUN queue).
pub struct Sockets {
    pub recv: OwnedFd,
    pub send: OwnedFd,
    /// Readable when the worker must stop.
    pub wake: Arc<OwnedFd>,
}

/// What both loops share: the decisions' state ([`PacketDecider`]: counters, ICMP rate limiter and
/// buffer), the routes, the drain reports, the offload choices, and the TUN queue with the
/// receive side's output. A loop is its own I/O around this.
pub struct WorkerState {
    pub id: usize,
    pub decider: PacketDecider,
    pub routes: Routes,
    pub drain: DrainReporter,
    pub offload: Arc<Offload>,
    /// Destination UDP port at peers.
    pub port: u16,
    pub sizes: BufSizes,
    /// The worker's TUN queue.
    pub tun: OwnedFd,
    stats: WorkerStats,
    start: Instant,
    /// Receives of one batch coalesce here (with offloads), written out by
    /// [`WorkerState::flush_rx`]. Its buffers are allocated once per worker for the process
    /// lifetime.
    co: Coalescer<'static, 'static>,
    /// The TUN writes of one receive without offloads.
    writes: Vec<gro::Write>,
    /// The results of one batch of TUN writes ([`WorkerState::flush_rx`]).
    write_results: Vec<i32>,
}

impl WorkerState {
    /// The state of the worker `setup` describes, and the sockets beside it.
    pub fn new(setup: WorkerSetup) -> (Self, Sockets) {
        let WorkerSetup {
            id,
            cpu: _,
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
            arrival,
            multishot_tun_read: _,
        } = setup;
        let vnet = offload.vnet_hdr;
        let sizes = BufSizes::new(vnet, offload.gro);
        let coalesce: &'static mut [u8] = Box::leak(vec![0u8; sizes.coalesce].into_boxed_slice());
        let co_writes: &'static mut Vec<gro::Write> = Box::leak(Box::new(Vec::with_capacity(256)));
        let state = Self {
            id,
            decider: PacketDecider::new(vnet),
            routes: Routes::new(reader, spoof_check, arrival),
            drain: DrainReporter::new(drain, id),
            offload,
            port,
            sizes,
            tun,
            stats,
            start: Instant::now(),
            co: Coalescer::new(coalesce, co_writes),
            writes: Vec::with_capacity(128),
            write_results: Vec::with_capacity(256),
        };
        (state, Sockets { recv, send, wake })
    }

    /// Starts a batch: refreshes the routes (one atomic load when nothing changed) and returns
    /// the time for the ICMP rate limit.
    #[inline]
    pub fn begin_batch(&mut self) -> u64 {
        self.routes.refresh();
        now_ns(self.start)
    }

    /// Ends a batch: counts it and flushes the counters.
    pub fn end_batch(&mut self) {
        self.decider.counters.add(Counter::Batches, 1);
        self.decider.counters.flush(&self.stats);
    }

    /// Decides one TUN read of `n` bytes in `buf` ([`PacketDecider::tun_read`]) with this batch's
    /// routes; a super-packet is split into `split_out`.
    #[inline]
    pub fn tun_read(
        &mut self,
        buf: &mut [u8],
        n: usize,
        split_out: &mut [u8],
        now: u64,
    ) -> TunVerdict {
        let routes = &self.routes;
        self.decider
            .tun_read(buf, n, split_out, &routes.snap, &routes.ctx, now)
    }

    /// Writes the ICMP error of a [`TunVerdict::Icmp`] into the TUN queue.
    pub fn write_icmp(&mut self, len: usize, w: &mut impl TunWrite) {
        let (pkt, local) = self.decider.icmp_packet(len);
        let mut one = std::iter::once(0..pkt.len());
        w.write_packets(&self.tun, pkt, &mut one, &mut self.write_results);
        count_tun_writes(&self.write_results, Counter::IcmpUnreachableSent, local);
    }

    /// Handles one UDP receive of `n` bytes in `buf` (`meta`: `gro_size` bytes per datagram,
    /// the arrival interface) from `sender`: dropped whole when it did not arrive from the
    /// underlay; otherwise the datagrams that pass are written to the TUN queue through `w` as
    /// one batch, or with offloads go into this batch's coalescer (flushed first when it may
    /// lack room).
    pub fn udp_recv(
        &mut self,
        buf: &mut [u8],
        n: usize,
        meta: RecvMeta,
        sender: Ipv4Addr,
        w: &mut impl TunWrite,
    ) {
        let gro_size = meta.gro_size;
        if self
            .decider
            .arrival_refused(n, gro_size, meta.ifindex, &self.routes.arrival)
        {
            return;
        }
        if self.offload.vnet_hdr {
            if self.co.room() < coalesce_room(n, gro_size) {
                self.flush_rx(w);
            }
            let ctx = &self.routes.ctx;
            self.decider
                .coalesce_udp_recv(buf, n, gro_size, sender, ctx, &mut self.co);
        } else {
            let ctx = &self.routes.ctx;
            self.decider
                .plain_udp_recv(buf, n, gro_size, sender, ctx, &mut self.writes);
            if self.writes.is_empty() {
                return;
            }
            let mut ranges = self.writes.iter().map(|w| w.offset..w.offset + w.len);
            w.write_packets(&self.tun, buf, &mut ranges, &mut self.write_results);
            count_tun_writes(
                &self.write_results,
                Counter::TunTxPackets,
                &mut self.decider.counters,
            );
        }
    }

    /// Writes out what this batch's receives coalesced through `w` as one batch (all of a
    /// round in one io_uring_enter for the io_uring worker), counts, and empties the
    /// coalescer.
    pub fn flush_rx(&mut self, w: &mut impl TunWrite) {
        if self.co.is_empty() {
            return;
        }
        let (out, writes) = self.co.finished();
        let mut ranges = writes.iter().map(|w| w.offset..w.offset + w.len);
        w.write_packets(&self.tun, out, &mut ranges, &mut self.write_results);
        count_tun_writes(
            &self.write_results,
            Counter::TunTxPackets,
            &mut self.decider.counters,
        );
        self.co.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gro_buffers_hold_a_whole_batch_even_without_tun_offload() {
        for vnet in [false, true] {
            assert!(BufSizes::new(vnet, true).udp >= 65536, "vnet {vnet}");
        }
        assert_eq!(BufSizes::new(false, false).udp, BUF_SIZE);
    }

    #[test]
    fn a_gso_refusal_is_per_destination_and_expires() {
        let a = Ipv4Addr::new(198, 18, 0, 1);
        let b = Ipv4Addr::new(198, 18, 0, 2);
        let o = Offload::new(true, true, true);
        assert!(o.gso_for(a) && o.gso_for(b));
        let t0 = std::time::Instant::now();
        o.gso_failed_at(a, libc::EINVAL, t0);
        o.gso_failed_at(a, libc::EINVAL, t0); // a second failure in flight: same entry
        assert!(!o.gso_for(a), "the refusing destination falls back");
        assert!(o.gso_for(b), "the others keep GSO");
        assert!(!o.gso_allowed_at(a, t0 + GSO_RETRY - std::time::Duration::from_secs(1)));
        assert!(
            o.gso_allowed_at(a, t0 + GSO_RETRY),
            "tried again after GSO_RETRY"
        );
        assert!(!o.any_refused.load(Ordering::Relaxed));
        assert!(o.gso_for(a));
        assert!(
            !Offload::new(true, true, false).gso_for(a),
            "no GSO without the probe"
        );
    }
}
