//! The per-core workers. Each worker owns one TUN queue, one receive socket (in the
//! SO_REUSEPORT group), one send socket, its own route-table reader and its own counter block;
//! workers share nothing with each other.
//!
//! - [`uring`]: the io_uring path (default).
//! - [`fallback`]: poll(2) + recvmmsg/sendmmsg + read/write, when io_uring is unavailable.
//!
//! This module holds what both paths share: the per-batch route refresh ([`Routes`]), the
//! locally accumulated counters ([`Local`]) and the worker's resources ([`WorkerSetup`]).

pub mod fallback;
pub mod uring;

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use flannel_shared::route_table::{RouteSnapshot, RouteTableReader};
use flannel_shared::stats::{Counter, WorkerStats};
use flannel_shared::Ipv4Net;

use crate::forward::{Context, Lookup, RateLimiter, SenderIndex};

/// Packet buffer size. Without offloads a packet is at most the TUN MTU; the TUN MTU is
/// clamped to this. Larger datagrams from peers are truncated and dropped (`drop_bad_length`).
pub const BUF_SIZE: usize = 16 * 1024;
/// Largest TUN MTU we configure.
pub const MAX_MTU: u32 = BUF_SIZE as u32;
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
