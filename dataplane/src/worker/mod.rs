//! The per-core workers. Each worker owns one TUN queue, one receive socket (in the
//! SO_REUSEPORT group), one send socket, its own route-table reader and its own counter block;
//! workers share nothing with each other.
//!
//! - [`uring`]: the io_uring path (default).
//! - [`fallback`]: poll(2) + recvmmsg/sendmmsg + read/write, when io_uring is unavailable.
//!
//! This module holds what both paths share: the per-batch route refresh ([`Routes`]), the
//! locally accumulated counters ([`Local`]), the worker's resources ([`WorkerSetup`]), the
//! offload choices ([`Offload`]), the per-I/O packet handling both loops call
//! ([`handle_tun_read`], [`send_chunks`], [`plain_udp_recv`], [`coalesce_udp_recv`]; no
//! syscalls in them) and the TUN writes both make ([`write_tun`], [`flush_coalesced`]).
//!
//! # Counters with offloads
//!
//! `udp_*` count datagrams on the wire (a GSO send of 40 segments is 40 packets, a GRO
//! receive of 40 datagrams is 40 packets); `tun_*` count TUN device reads and writes (a 64 KiB
//! super-packet is one packet). So `udp_tx_packets / tun_rx_packets` is the average split.

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

use crate::forward::{self, Context, DropReason, Lookup, RateLimiter, SenderIndex, TunAction};
use crate::gro::{self, Coalescer};
use crate::gso::{self, Segments, VnetHdr, F_NEEDS_CSUM, GSO_NONE, VNET_HDR_LEN};

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
    /// With offloads (`vnet`): 64 KiB super-packets each way; without: one packet each.
    pub fn new(vnet: bool) -> Self {
        if vnet {
            Self {
                tun: OFFLOAD_TUN_BUF,
                split: OFFLOAD_SPLIT_BUF,
                udp: OFFLOAD_UDP_BUF,
                coalesce: OFFLOAD_COALESCE_BUF,
            }
        } else {
            Self {
                tun: BUF_SIZE,
                split: 0,
                udp: BUF_SIZE,
                coalesce: 0,
            }
        }
    }
}

/// The kernel's UDP_MAX_SEGMENTS on older kernels (newer ones allow 128).
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Offload choices, probed once at startup and shared by all workers.
#[derive(Debug)]
pub struct Offload {
    /// The TUN queues carry a virtio_net_hdr (IFF_VNET_HDR + TUNSETOFFLOAD succeeded).
    pub vnet_hdr: bool,
    /// UDP_GRO is on for the receive sockets.
    pub gro: bool,
    /// UDP_SEGMENT may be used; cleared by the first send that fails with EIO/EINVAL.
    gso: AtomicBool,
}

impl Offload {
    pub fn new(vnet_hdr: bool, gro: bool, gso: bool) -> Self {
        Self {
            vnet_hdr,
            gro,
            gso: AtomicBool::new(gso),
        }
    }
    pub fn none() -> Self {
        Self::new(false, false, false)
    }
    #[inline]
    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }
    /// A GSO send failed with `errno`: turn GSO off for every worker, logging it once.
    pub fn gso_failed(&self, errno: i32) {
        if self.gso.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "UDP GSO: send failed ({}); UDP_SEGMENT off from now on (segments are sent one by one)",
                std::io::Error::from_raw_os_error(errno)
            );
        }
    }
}
/// ICMP net-unreachable rate limit per worker: tokens per second and burst.
pub const ICMP_PER_SEC: u64 = 100;
pub const ICMP_BURST: u64 = 20;

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
    pub ctx: Context,
}

impl Lookup for RouteSnapshot {
    #[inline]
    fn peer_for(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        self.lookup(dst)
    }
}

impl Routes {
    pub fn new(reader: RouteTableReader, spoof_check: bool) -> Self {
        let mut r = Self {
            reader,
            snap: RouteSnapshot::empty(),
            ctx: Context {
                our_subnet: None,
                tun_addr: None,
                spoof_check,
                senders: SenderIndex::default(),
            },
        };
        r.refresh();
        r
    }

    /// One atomic load when nothing changed; rebuilds the receive context when it did. On a
    /// read error the last good snapshot stays in use.
    #[inline]
    pub fn refresh(&mut self) {
        if let Ok(true) = self.reader.refresh(&mut self.snap) {
            let meta = self.snap.meta();
            self.ctx.our_subnet = meta.our_subnet;
            self.ctx.tun_addr = meta.our_subnet.map(|s: Ipv4Net| s.addr());
            self.ctx.senders =
                SenderIndex::new(self.snap.routes().map(|r| (r.subnet, r.public_ip)));
        }
    }
}

/// Counters accumulated during one batch, flushed with one atomic add per non-zero counter.
pub struct Local(pub [u64; Counter::COUNT]);

impl Local {
    pub fn new() -> Self {
        Self([0; Counter::COUNT])
    }
    #[inline]
    pub fn add(&mut self, c: Counter, v: u64) {
        self.0[c as usize] += v;
    }
    pub fn flush(&mut self, stats: &WorkerStats) {
        stats.add_batch(&self.0);
        self.0 = [0; Counter::COUNT];
    }
}

impl Default for Local {
    fn default() -> Self {
        Self::new()
    }
}

/// Monotonic nanoseconds since `start` (for the ICMP rate limiter).
pub fn now_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

pub fn icmp_limiter() -> RateLimiter {
    RateLimiter::new(ICMP_PER_SEC, ICMP_BURST)
}

/// Pins the calling worker thread, logging (not failing) when that is impossible.
pub fn pin(id: usize, cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        if let Err(e) = crate::sys::thread::pin_current_thread(cpu) {
            tracing::warn!(worker = id, cpu, "cannot pin worker to its CPU: {e}");
        }
    }
}

/// What to do after one TUN read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunVerdict {
    /// Send to `peer`: with `split`, the segments are in the split buffer; otherwise the packet
    /// itself, `segs.total` bytes at `pkt_offset` of the read buffer.
    Send {
        peer: Ipv4Addr,
        split: bool,
        pkt_offset: usize,
        segs: Segments,
    },
    /// Write the ICMP error of this length (from the ICMP scratch buffer) into the TUN device.
    Icmp(usize),
    /// Dropped (counted).
    Drop,
}

/// Handles one TUN read of `n` bytes in `buf` (behind a vnet header when `vnet`): finishes a
/// partial checksum, applies the forwarding decision to the (super-)packet and splits
/// super-packets into `split_out`. Counts everything except the sends themselves.
#[allow(clippy::too_many_arguments)]
pub fn handle_tun_read(
    buf: &mut [u8],
    n: usize,
    vnet: bool,
    split_out: &mut [u8],
    routes: &Routes,
    limiter: &mut RateLimiter,
    now: u64,
    icmp: &mut [u8],
    local: &mut Local,
) -> TunVerdict {
    local.add(Counter::TunRxPackets, 1);
    local.add(Counter::TunRxBytes, n as u64);
    let drop = |local: &mut Local, r: DropReason| {
        local.add(r.counter(), 1);
        TunVerdict::Drop
    };
    let (hdr, off) = if vnet {
        match VnetHdr::parse(&buf[..n]) {
            Some(h) => (h, VNET_HDR_LEN),
            None => return drop(local, DropReason::TunMalformed),
        }
    } else {
        (VnetHdr::default(), 0)
    };
    let Some(pkt) = buf.get_mut(off..n) else {
        return drop(local, DropReason::TunMalformed);
    };
    let kind = hdr.gso_kind();
    if kind == GSO_NONE
        && hdr.flags & F_NEEDS_CSUM != 0
        && gso::finish_checksum(pkt, hdr.csum_start.into(), hdr.csum_offset.into()).is_err()
    {
        return drop(local, DropReason::TunMalformed);
    }
    let mut limited = false;
    match forward::tun_to_udp(
        pkt,
        &routes.snap,
        &routes.ctx,
        limiter,
        now,
        icmp,
        &mut limited,
    ) {
        TunAction::Send(peer) => {
            let len = pkt.len();
            if kind == GSO_NONE {
                return TunVerdict::Send {
                    peer,
                    split: false,
                    pkt_offset: off,
                    segs: Segments {
                        count: 1,
                        seg_len: len,
                        total: len,
                    },
                };
            }
            // Checksums are recomputed per segment: the partial seed is not needed.
            match gso::split(pkt, kind, hdr.gso_size.into(), split_out) {
                Ok(segs) => TunVerdict::Send {
                    peer,
                    split: true,
                    pkt_offset: 0,
                    segs,
                },
                Err(_) => drop(local, DropReason::TunMalformed),
            }
        }
        TunAction::Unreachable(len) => {
            local.add(Counter::DropNoRoute, 1);
            TunVerdict::Icmp(len)
        }
        TunAction::Drop(reason) => {
            if limited {
                local.add(Counter::IcmpRateLimited, 1);
            }
            drop(local, reason)
        }
    }
}

/// One datagram send: a byte range of the segment buffer and, when it holds several
/// segments, the UDP_SEGMENT size (0: a plain datagram).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub range: Range<usize>,
    pub gso_size: u16,
    pub segments: usize,
}

/// The sends for `segs`: with `gso`, groups of up to [`gso::segments_per_send`] segments in
/// one UDP_SEGMENT send each; without, one send per segment.
pub fn send_chunks(segs: Segments, gso: bool) -> impl Iterator<Item = Chunk> {
    let per = if gso && segs.count > 1 {
        gso::segments_per_send(segs.seg_len, GSO_MAX_SEGMENTS)
    } else {
        1
    };
    let nchunks = segs.count.div_ceil(per);
    (0..nchunks).map(move |k| {
        let first = k * per;
        let last = ((k + 1) * per).min(segs.count);
        let range = segs.range(first).start..segs.range(last - 1).end;
        let segments = last - first;
        Chunk {
            range,
            gso_size: if segments > 1 { segs.seg_len as u16 } else { 0 },
            segments,
        }
    })
}

/// write(2) of one packet into the TUN queue, counted as `ok` (with its bytes when `ok` is
/// `tun_tx_packets`) or as a TUN error. Both paths write TUN queues directly (see
/// `sys::tun::open_queue`).
pub fn write_tun(tun: &OwnedFd, pkt: &[u8], ok: Counter, local: &mut Local) {
    match crate::sys::io::write(tun, pkt) {
        Ok(n) => {
            local.add(ok, 1);
            if ok == Counter::TunTxPackets {
                local.add(Counter::TunTxBytes, n as u64);
            }
        }
        Err(_) => local.add(Counter::TunTxErrors, 1),
    }
}

/// Writes what `co` coalesced to the TUN queue; returns an empty coalescer on the same
/// buffers.
pub fn flush_coalesced<'o, 'w>(
    tun: &OwnedFd,
    co: Coalescer<'o, 'w>,
    local: &mut Local,
) -> Coalescer<'o, 'w> {
    let (out, writes) = co.into_parts();
    for w in writes.iter() {
        write_tun(
            tun,
            &out[w.offset..w.offset + w.len],
            Counter::TunTxPackets,
            local,
        );
    }
    Coalescer::new(out, writes)
}

/// Splits one UDP receive of `n` bytes into its datagrams: `gro_size` bytes each (the last
/// may be shorter; `None`: one datagram). Counts every datagram, a zero-length one included
/// (dropped as too short), and hands the others to `each` with their offset.
fn for_each_datagram(
    buf: &mut [u8],
    n: usize,
    gro_size: Option<usize>,
    local: &mut Local,
    mut each: impl FnMut(usize, &mut [u8], &mut Local),
) {
    local.add(Counter::UdpRxBytes, n as u64);
    if n == 0 {
        local.add(Counter::UdpRxPackets, 1);
        local.add(DropReason::TooShort.counter(), 1);
        return;
    }
    let seg = gro_size.unwrap_or(n).max(1);
    for (i, d) in buf[..n].chunks_mut(seg).enumerate() {
        local.add(Counter::UdpRxPackets, 1);
        each(i * seg, d, local);
    }
}

/// Handles one UDP receive without offloads: checks each datagram from `sender` and fills
/// `writes` with the ranges of `buf` to write to the TUN device as they are.
#[allow(clippy::too_many_arguments)]
pub fn plain_udp_recv(
    buf: &mut [u8],
    n: usize,
    gro_size: Option<usize>,
    sender: Ipv4Addr,
    ctx: &Context,
    writes: &mut Vec<gro::Write>,
    local: &mut Local,
) {
    writes.clear();
    for_each_datagram(
        buf,
        n,
        gro_size,
        local,
        |at, d, local| match forward::udp_to_tun(d, sender, ctx) {
            Ok(()) => writes.push(gro::Write {
                offset: at,
                len: d.len(),
                segments: 1,
            }),
            Err(r) => local.add(r.counter(), 1),
        },
    );
}

/// Room a receive of `n` bytes may need in a coalescer: its bytes plus a vnet header for
/// every datagram of at least `gro_size` bytes (as if nothing merged).
pub fn coalesce_room(n: usize, gro_size: Option<usize>) -> usize {
    let datagrams = n.div_ceil(gro_size.unwrap_or(n).max(1)).max(1);
    n + datagrams * VNET_HDR_LEN
}

/// Handles one UDP receive with offloads: checks each datagram from `sender` and pushes it
/// into `co`, which may already hold earlier receives of this batch (so the two GRO receives
/// of one 64 KiB super-packet can become one TUN write again). The caller makes sure `co` has
/// [`coalesce_room`] left; a datagram that still does not fit is counted as a TUN error.
#[allow(clippy::too_many_arguments)]
pub fn coalesce_udp_recv(
    buf: &mut [u8],
    n: usize,
    gro_size: Option<usize>,
    sender: Ipv4Addr,
    ctx: &Context,
    co: &mut Coalescer<'_, '_>,
    local: &mut Local,
) {
    for_each_datagram(
        buf,
        n,
        gro_size,
        local,
        |_, d, local| match forward::udp_to_tun(d, sender, ctx) {
            Ok(()) => {
                if co.push(d).is_err() {
                    local.add(Counter::TunTxErrors, 1);
                }
            }
            Err(r) => local.add(r.counter(), 1),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_segments() {
        let segs = Segments {
            count: 47,
            seg_len: 1472,
            total: 46 * 1472 + 900,
        };
        let c: Vec<Chunk> = send_chunks(segs, true).collect();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].range, 0..44 * 1472);
        assert_eq!((c[0].gso_size, c[0].segments), (1472, 44));
        assert_eq!(c[1].range, 44 * 1472..segs.total);
        assert_eq!((c[1].gso_size, c[1].segments), (1472, 3));
        let c: Vec<Chunk> = send_chunks(segs, false).collect();
        assert_eq!(c.len(), 47);
        assert!(c.iter().all(|x| x.gso_size == 0 && x.segments == 1));
        assert_eq!(c[46].range, 46 * 1472..segs.total);
        let one = Segments {
            count: 1,
            seg_len: 60,
            total: 60,
        };
        let c: Vec<Chunk> = send_chunks(one, true).collect();
        assert_eq!(
            c,
            vec![Chunk {
                range: 0..60,
                gso_size: 0,
                segments: 1
            }]
        );
        // A chunk whose last segment is alone still gets no GSO size.
        let segs = Segments {
            count: 45,
            seg_len: 1472,
            total: 45 * 1472,
        };
        let c: Vec<Chunk> = send_chunks(segs, true).collect();
        assert_eq!((c[1].segments, c[1].gso_size), (1, 0));
    }
}
