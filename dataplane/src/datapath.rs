//! The I/O-free core of a worker: what one TUN read or one UDP receive means, decided and
//! counted without a syscall. The loops (`worker::uring`, `worker::fallback`) read, send and
//! write; this module tells them what to send or write and where the bytes are.
//!
//! - [`PacketDecider::tun_read`]: a TUN read (behind a vnet header with offloads) → send the packet
//!   (whole, or split into segments in the split buffer), answer with an ICMP error (framed
//!   for the TUN device in [`PacketDecider::icmp_packet`]), or drop it.
//! - [`transmits`]: how a read's segments leave: UDP_SEGMENT groups, or one by one.
//! - [`PacketDecider::plain_udp_recv`]: a UDP receive without offloads → the byte ranges to write to
//!   the TUN device as they are.
//! - [`PacketDecider::coalesce_udp_recv`]: a UDP receive with offloads → its datagrams pushed into a
//!   [`Coalescer`], whose writes the loop makes.
//! - [`BatchCounters`]: the counters of one batch; every decision is counted here.
//!
//! # Counters with offloads
//!
//! `udp_*` count datagrams on the wire (a GSO send of 40 segments is 40 packets, a GRO
//! receive of 40 datagrams is 40 packets); `tun_*` count TUN device reads and writes (a 64 KiB
//! super-packet is one packet). So `udp_tx_packets / tun_rx_packets` is the average split.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use flannel_shared::stats::{Counter, WorkerStats};

use crate::forward::{self, DropReason, Lookup, RateLimiter, TableState, TunAction};
use crate::gro::{self, Coalescer};
use crate::gso::{self, Segments, VnetHdr, F_NEEDS_CSUM, GSO_NONE, VNET_HDR_LEN};
use crate::packet::ICMP_UNREACH_MAX;
use crate::transmit::{Transmit, TxBuffer};
use crate::underlay::Arrival;

/// The kernel's UDP_MAX_SEGMENTS on older kernels (newer ones allow 128).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// ICMP net-unreachable rate limit per worker: tokens per second and burst.
pub const ICMP_PER_SEC: u64 = 100;
pub const ICMP_BURST: u64 = 20;

/// Counters accumulated during one batch, flushed with one atomic add per non-zero counter.
pub struct BatchCounters(pub [u64; Counter::COUNT]);

impl BatchCounters {
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

impl Default for BatchCounters {
    fn default() -> Self {
        Self::new()
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
    /// Write the ICMP error [`PacketDecider::icmp_packet`] of this length into the TUN device.
    Icmp(usize),
    /// Dropped (counted).
    Drop,
}

/// The per-worker state the decisions need: the batch's counters, the ICMP rate limiter and
/// the ICMP error being answered.
pub struct PacketDecider {
    /// Counters of the current batch.
    pub counters: BatchCounters,
    limiter: RateLimiter,
    /// TUN packets carry a virtio_net_hdr.
    vnet: bool,
    /// An ICMP error for the TUN device: a zero vnet header (with offloads), then the packet.
    icmp: [u8; VNET_HDR_LEN + ICMP_UNREACH_MAX],
}

impl PacketDecider {
    /// A core for TUN packets with (`vnet`) or without a virtio_net_hdr.
    pub fn new(vnet: bool) -> Self {
        Self {
            counters: BatchCounters::new(),
            limiter: RateLimiter::new(ICMP_PER_SEC, ICMP_BURST),
            vnet,
            icmp: [0; VNET_HDR_LEN + ICMP_UNREACH_MAX],
        }
    }

    fn vnet_len(&self) -> usize {
        if self.vnet {
            VNET_HDR_LEN
        } else {
            0
        }
    }

    /// Handles one TUN read of `n` bytes in `buf` (behind a vnet header with offloads): finishes
    /// a partial checksum, applies the forwarding decision to the (super-)packet and splits
    /// super-packets into `split_out`. Counts everything except the sends themselves. `now`:
    /// monotonic nanoseconds, for the ICMP rate limit.
    pub fn tun_read(
        &mut self,
        buf: &mut [u8],
        n: usize,
        split_out: &mut [u8],
        routes: &impl Lookup,
        ctx: &TableState,
        now: u64,
    ) -> TunVerdict {
        let local = &mut self.counters;
        local.add(Counter::TunRxPackets, 1);
        local.add(Counter::TunRxBytes, n as u64);
        let drop = |local: &mut BatchCounters, r: DropReason| {
            local.add(r.counter(), 1);
            TunVerdict::Drop
        };
        let (hdr, off) = if self.vnet {
            match VnetHdr::parse(buf.get(..n).unwrap_or(&[])) {
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
        let icmp = &mut self.icmp[off..];
        let action = forward::tun_to_udp(pkt, routes, ctx, &mut self.limiter, now, icmp);
        match action {
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
            TunAction::NoRouteRateLimited => {
                local.add(Counter::IcmpRateLimited, 1);
                drop(local, DropReason::NoRoute)
            }
            TunAction::Drop(reason) => drop(local, reason),
        }
    }

    /// The ICMP error of a [`TunVerdict::Icmp`] of `len` bytes as the TUN device takes it
    /// (behind a zero vnet header with offloads), and the counters to count its write in.
    pub fn icmp_packet(&mut self, len: usize) -> (&[u8], &mut BatchCounters) {
        let end = (self.vnet_len() + len).min(self.icmp.len());
        (&self.icmp[..end], &mut self.counters)
    }

    /// Whether a receive of `n` bytes (`gro_size` each) that arrived on `ifindex` must be
    /// dropped because `arrival` does not admit that interface; its datagrams are then counted
    /// as received and as `drop_not_underlay`.
    #[inline]
    pub fn arrival_refused(
        &mut self,
        n: usize,
        gro_size: Option<usize>,
        ifindex: Option<u32>,
        arrival: &Arrival,
    ) -> bool {
        if arrival.admits(ifindex) {
            return false;
        }
        let datagrams = n.div_ceil(gro_size.unwrap_or(n).max(1)).max(1) as u64;
        self.counters.add(Counter::UdpRxBytes, n as u64);
        self.counters.add(Counter::UdpRxPackets, datagrams);
        self.counters.add(Counter::DropNotUnderlay, datagrams);
        true
    }

    /// A receive that did not fit its buffer: one datagram, dropped for its length.
    pub fn recv_truncated(&mut self) {
        self.counters.add(Counter::UdpRxPackets, 1);
        self.counters.add(Counter::DropBadLength, 1);
    }

    /// Handles one UDP receive of `n` bytes in `buf` without offloads: checks each datagram
    /// from `sender` (`gro_size` bytes each; `None`: one) and fills `writes` with the ranges of
    /// `buf` to write to the TUN device as they are.
    pub fn plain_udp_recv(
        &mut self,
        buf: &mut [u8],
        n: usize,
        gro_size: Option<usize>,
        sender: Ipv4Addr,
        ctx: &TableState,
        writes: &mut Vec<gro::Write>,
    ) {
        writes.clear();
        for_each_datagram(buf, n, gro_size, &mut self.counters, |at, d, local| {
            match forward::udp_to_tun(d, sender, ctx) {
                Ok(()) => writes.push(gro::Write {
                    offset: at,
                    len: d.len(),
                    segments: 1,
                }),
                Err(r) => local.add(r.counter(), 1),
            }
        });
    }

    /// Handles one UDP receive with offloads: checks each datagram from `sender` and pushes it
    /// into `co`, which may already hold earlier receives of this batch (so the two GRO
    /// receives of one 64 KiB super-packet can become one TUN write again). The caller makes
    /// sure `co` has [`coalesce_room`] left; a datagram that still does not fit is counted as a
    /// TUN error.
    pub fn coalesce_udp_recv(
        &mut self,
        buf: &mut [u8],
        n: usize,
        gro_size: Option<usize>,
        sender: Ipv4Addr,
        ctx: &TableState,
        co: &mut Coalescer<'_, '_>,
    ) {
        for_each_datagram(buf, n, gro_size, &mut self.counters, |_, d, local| {
            match forward::udp_to_tun(d, sender, ctx) {
                Ok(()) => {
                    if co.push(d).is_err() {
                        local.add(Counter::TunTxErrors, 1);
                    }
                }
                Err(r) => local.add(r.counter(), 1),
            }
        });
    }
}

/// The sends for `segs`, laid out from `offset` of `buffer`, to `peer`: with `gso`, groups of
/// up to [`gso::segments_per_send`] segments in one UDP_SEGMENT send each; without, one send
/// per segment.
pub fn transmits(
    segs: Segments,
    gso: bool,
    peer: Ipv4Addr,
    buffer: TxBuffer,
    offset: usize,
) -> impl Iterator<Item = Transmit> {
    let per = if gso && segs.count > 1 {
        gso::segments_per_send(segs.seg_len, GSO_MAX_SEGMENTS)
    } else {
        1
    };
    let nchunks = segs.count.div_ceil(per);
    (0..nchunks).map(move |k| {
        let first = k * per;
        let last = ((k + 1) * per).min(segs.count);
        let range = offset + segs.range(first).start..offset + segs.range(last - 1).end;
        let segments = last - first;
        Transmit {
            buffer,
            range,
            segment_size: if segments > 1 { segs.seg_len as u16 } else { 0 },
            segments,
            peer,
        }
    })
}

/// Splits one UDP receive of `n` bytes into its datagrams: `gro_size` bytes each (the last
/// may be shorter; `None`: one datagram). Counts every datagram, a zero-length one included
/// (dropped as too short), and hands the others to `each` with their offset.
fn for_each_datagram(
    buf: &mut [u8],
    n: usize,
    gro_size: Option<usize>,
    local: &mut BatchCounters,
    mut each: impl FnMut(usize, &mut [u8], &mut BatchCounters),
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

/// Room a receive of `n` bytes may need in a coalescer: its bytes plus a vnet header for
/// every datagram of at least `gro_size` bytes (as if nothing merged).
pub fn coalesce_room(n: usize, gro_size: Option<usize>) -> usize {
    let datagrams = n.div_ceil(gro_size.unwrap_or(n).max(1)).max(1);
    n + datagrams * VNET_HDR_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::SenderIndex;
    use crate::gso::{testutil, GSO_TCPV4};
    use crate::packet::testpkt::ipv4;
    use crate::packet::{PROTO_UDP, TCP_ACK};
    use flannel_shared::Ipv4Net;

    const HOST_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const HOST_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const CA: Ipv4Addr = Ipv4Addr::new(10, 1, 15, 2);
    const CB: Ipv4Addr = Ipv4Addr::new(10, 1, 16, 2);

    /// 10.1.15.2 → 10.1.16.2, UDP, TTL 64, id 0x1234, DF, payload 00 01 02 03.
    const TO_B: [u8; 24] = [
        0x45, 0x00, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0xf5, 0x9b, 0x0a, 0x01, 0x0f,
        0x02, 0x0a, 0x01, 0x10, 0x02, 0x00, 0x01, 0x02, 0x03,
    ];
    /// The same, TTL 63.
    const TO_B_SENT: [u8; 24] = [
        0x45, 0x00, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x3f, 0x11, 0xf6, 0x9b, 0x0a, 0x01, 0x0f,
        0x02, 0x0a, 0x01, 0x10, 0x02, 0x00, 0x01, 0x02, 0x03,
    ];
    /// 10.1.16.2 → 10.1.15.2, UDP, TTL 64, payload 00 01 02 03; and as written to TUN (TTL 63).
    const FROM_B: [u8; 24] = [
        0x45, 0x00, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0xf5, 0x9b, 0x0a, 0x01, 0x10,
        0x02, 0x0a, 0x01, 0x0f, 0x02, 0x00, 0x01, 0x02, 0x03,
    ];
    const FROM_B_DELIVERED: [u8; 24] = [
        0x45, 0x00, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x3f, 0x11, 0xf6, 0x9b, 0x0a, 0x01, 0x10,
        0x02, 0x0a, 0x01, 0x0f, 0x02, 0x00, 0x01, 0x02, 0x03,
    ];
    /// 10.1.15.2 → 10.1.99.2 (no lease), UDP, TTL 64, payload 00..07.
    const NO_ROUTE: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0xa2, 0x97, 0x0a, 0x01, 0x0f,
        0x02, 0x0a, 0x01, 0x63, 0x02, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
    ];
    /// Its ICMP net-unreachable from the TUN address 10.1.15.0, quoting it as read.
    const NET_UNREACHABLE: [u8; 56] = [
        0x45, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x00, 0x40, 0x01, 0x48, 0xc2, 0x0a, 0x01, 0x0f,
        0x00, 0x0a, 0x01, 0x0f, 0x02, 0x03, 0x00, 0xf0, 0xef, 0x00, 0x00, 0x00, 0x00, 0x45, 0x00,
        0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0xa2, 0x97, 0x0a, 0x01, 0x0f, 0x02, 0x0a,
        0x01, 0x63, 0x02, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
    ];

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    struct Table(Vec<(Ipv4Net, Ipv4Addr)>);
    impl Lookup for Table {
        fn peer_for(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
            self.0.iter().find(|(n, _)| n.contains(dst)).map(|r| r.1)
        }
    }

    /// Host A (10.1.15.0/24) with B's lease (10.1.16.0/24 at HOST_B); or host B the other way.
    fn host(b: bool) -> (Table, TableState) {
        let (ours, theirs, peer) = if b {
            ("10.1.16.0/24", "10.1.15.0/24", HOST_A)
        } else {
            ("10.1.15.0/24", "10.1.16.0/24", HOST_B)
        };
        let routes = [
            (net(ours), if b { HOST_B } else { HOST_A }),
            (net(theirs), peer),
        ];
        let ctx = TableState {
            network: None,
            our_subnet: Some(net(ours)),
            tun_addr: Some(net(ours).addr()),
            spoof_check: true,
            senders: SenderIndex::new(routes.iter().copied()),
        };
        (Table(vec![(net(theirs), peer)]), ctx)
    }

    fn count(core: &PacketDecider, c: Counter) -> u64 {
        core.counters.0[c as usize]
    }

    #[test]
    fn a_receive_from_outside_the_underlay_is_dropped_whole_and_counted() {
        let mut core = PacketDecider::new(false);
        let underlay = Arrival::only(&[2]);
        // 3 GRO-merged datagrams from a bridge (ifindex 5): all three counted, none checked.
        assert!(core.arrival_refused(3000, Some(1200), Some(5), &underlay));
        assert_eq!(count(&core, Counter::DropNotUnderlay), 3);
        assert_eq!(count(&core, Counter::UdpRxPackets), 3);
        assert!(core.arrival_refused(0, None, None, &underlay), "no PKTINFO");
        assert_eq!(count(&core, Counter::DropNotUnderlay), 4);
        assert!(!core.arrival_refused(3000, Some(1200), Some(2), &underlay));
        assert!(!core.arrival_refused(10, None, None, &Arrival::Any));
        assert_eq!(count(&core, Counter::DropNotUnderlay), 4);
    }

    #[test]
    fn golden_packets_are_what_the_test_builder_makes() {
        assert_eq!(ipv4(CA, CB, PROTO_UDP, 64, 4), TO_B);
        assert_eq!(ipv4(CB, CA, PROTO_UDP, 64, 4), FROM_B);
        assert_eq!(
            ipv4(CA, Ipv4Addr::new(10, 1, 99, 2), PROTO_UDP, 64, 8),
            NO_ROUTE
        );
    }

    #[test]
    fn tun_read_sends_the_packet_with_its_ttl_decremented() {
        let (table, ctx) = host(false);
        let mut core = PacketDecider::new(false);
        let mut buf = [0u8; 64];
        buf[..24].copy_from_slice(&TO_B);
        let v = core.tun_read(&mut buf, 24, &mut [], &table, &ctx, 0);
        let segs = Segments {
            count: 1,
            seg_len: 24,
            total: 24,
        };
        assert_eq!(
            v,
            TunVerdict::Send {
                peer: HOST_B,
                split: false,
                pkt_offset: 0,
                segs
            }
        );
        assert_eq!(buf[..24], TO_B_SENT);
        assert_eq!(count(&core, Counter::TunRxPackets), 1);
        assert_eq!(count(&core, Counter::TunRxBytes), 24);

        // Behind a plain vnet header: the packet starts after it.
        let mut core = PacketDecider::new(true);
        let mut buf = [0u8; 64];
        buf[VNET_HDR_LEN..VNET_HDR_LEN + 24].copy_from_slice(&TO_B);
        let v = core.tun_read(&mut buf, VNET_HDR_LEN + 24, &mut [], &table, &ctx, 0);
        assert_eq!(
            v,
            TunVerdict::Send {
                peer: HOST_B,
                split: false,
                pkt_offset: VNET_HDR_LEN,
                segs
            }
        );
        assert_eq!(buf[VNET_HDR_LEN..VNET_HDR_LEN + 24], TO_B_SENT);
    }

    #[test]
    fn tun_read_answers_no_route_with_a_framed_icmp() {
        let (table, ctx) = host(false);
        for vnet in [false, true] {
            let mut core = PacketDecider::new(vnet);
            let off = if vnet { VNET_HDR_LEN } else { 0 };
            let mut buf = [0xeeu8; 64];
            buf[..off].fill(0);
            buf[off..off + 28].copy_from_slice(&NO_ROUTE);
            let v = core.tun_read(&mut buf, off + 28, &mut [], &table, &ctx, 0);
            assert_eq!(v, TunVerdict::Icmp(56));
            let (pkt, _) = core.icmp_packet(56);
            assert_eq!(pkt.len(), off + 56);
            assert!(pkt[..off].iter().all(|&b| b == 0), "zero vnet header");
            assert_eq!(pkt[off..], NET_UNREACHABLE);
            assert_eq!(count(&core, Counter::DropNoRoute), 1);
        }
    }

    #[test]
    fn tun_read_drops_what_it_cannot_parse() {
        let (table, ctx) = host(false);
        let mut core = PacketDecider::new(true);
        let mut buf = [0u8; 64];
        // Shorter than a vnet header.
        assert_eq!(
            core.tun_read(&mut buf, 5, &mut [], &table, &ctx, 0),
            TunVerdict::Drop
        );
        // A vnet header and half a packet.
        buf[VNET_HDR_LEN..VNET_HDR_LEN + 24].copy_from_slice(&TO_B);
        assert_eq!(
            core.tun_read(&mut buf, VNET_HDR_LEN + 12, &mut [], &table, &ctx, 0),
            TunVerdict::Drop
        );
        assert_eq!(count(&core, Counter::DropTunMalformed), 2);
        assert_eq!(count(&core, Counter::TunRxPackets), 2);
    }

    #[test]
    fn tun_read_splits_a_tso_super_packet() {
        let (table, ctx) = host(false);
        let mut core = PacketDecider::new(true);
        let payload: Vec<u8> = (0..2500u32).map(|i| (i * 7) as u8).collect();
        let sup = testutil::tcp(1000, TCP_ACK, &payload);
        let hdr = VnetHdr {
            flags: 0,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1000,
            csum_start: 0,
            csum_offset: 0,
        };
        let mut buf = vec![0u8; VNET_HDR_LEN + sup.len()];
        hdr.write(&mut buf);
        buf[VNET_HDR_LEN..].copy_from_slice(&sup);
        let mut out = vec![0u8; 8192];
        let n = buf.len();
        let v = core.tun_read(&mut buf, n, &mut out, &table, &ctx, 0);
        let segs = Segments {
            count: 3,
            seg_len: 1052,
            total: 3 * 52 + 2500,
        };
        assert_eq!(
            v,
            TunVerdict::Send {
                peer: HOST_B,
                split: true,
                pkt_offset: 0,
                segs
            }
        );
        for i in 0..3 {
            let s = &out[segs.range(i)];
            testutil::verify(s);
            assert_eq!(s[8], 63, "TTL decremented before the split");
        }
    }

    #[test]
    fn plain_receive_writes_each_good_datagram() {
        let (_, ctx) = host(false);
        let mut core = PacketDecider::new(false);
        // Two GRO datagrams from B: the first is good, the second's source is not B's.
        let mut buf = [0u8; 48];
        buf[..24].copy_from_slice(&FROM_B);
        buf[24..].copy_from_slice(&ipv4(Ipv4Addr::new(10, 1, 77, 2), CA, PROTO_UDP, 64, 4));
        let mut writes = Vec::new();
        core.plain_udp_recv(&mut buf, 48, Some(24), HOST_B, &ctx, &mut writes);
        assert_eq!(
            writes,
            vec![gro::Write {
                offset: 0,
                len: 24,
                segments: 1
            }]
        );
        assert_eq!(buf[..24], FROM_B_DELIVERED);
        assert_eq!(count(&core, Counter::UdpRxPackets), 2);
        assert_eq!(count(&core, Counter::UdpRxBytes), 48);
        assert_eq!(count(&core, Counter::DropSpoofedSrc), 1);

        // A zero-length datagram is one packet, too short.
        core.plain_udp_recv(&mut buf, 0, None, HOST_B, &ctx, &mut writes);
        assert!(writes.is_empty());
        assert_eq!(count(&core, Counter::UdpRxPackets), 3);
        assert_eq!(count(&core, Counter::DropTooShort), 1);
    }

    #[test]
    fn offload_receive_coalesces_in_order_segments() {
        // Host B receives A's TCP segments (10.1.15.2 → 10.1.16.2).
        let (_, ctx) = host(true);
        let mut core = PacketDecider::new(true);
        let data: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
        let a = testutil::tcp(0, TCP_ACK, &data[..1000]);
        let b = testutil::tcp(1000, TCP_ACK, &data[1000..]);
        let mut buf = [a.clone(), b].concat();
        let n = buf.len();
        let mut out = vec![0u8; coalesce_room(n, Some(a.len()))];
        let mut writes = Vec::new();
        let mut co = Coalescer::new(&mut out, &mut writes);
        core.coalesce_udp_recv(&mut buf, n, Some(a.len()), HOST_A, &ctx, &mut co);
        assert_eq!(co.writes().len(), 1);
        assert_eq!(co.writes()[0].segments, 2);
        let (out, w) = co.finished();
        let w = w[0];
        let hdr = VnetHdr::parse(&out[w.offset..]).unwrap();
        assert_eq!((hdr.gso_type, hdr.gso_size), (GSO_TCPV4, 1000));
        // One packet of both payloads, TTL 63.
        let merged = &out[w.offset + VNET_HDR_LEN..w.offset + w.len];
        assert_eq!(merged.len(), 52 + 2000);
        assert_eq!(merged[8], 63);
        assert_eq!(&merged[52..], &data[..]);
        assert_eq!(count(&core, Counter::UdpRxPackets), 2);
        assert_eq!(count(&core, Counter::TunTxErrors), 0);
        // A coalescer without room counts the datagram as a TUN error.
        let mut tiny = [0u8; 8];
        let mut writes = Vec::new();
        let mut co = Coalescer::new(&mut tiny, &mut writes);
        let mut one = a.clone();
        core.coalesce_udp_recv(&mut one, a.len(), None, HOST_A, &ctx, &mut co);
        assert_eq!(count(&core, Counter::TunTxErrors), 1);
    }

    #[test]
    fn transmits_cover_segments() {
        const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
        let segs = Segments {
            count: 47,
            seg_len: 1472,
            total: 46 * 1472 + 900,
        };
        let c: Vec<Transmit> = transmits(segs, true, PEER, TxBuffer::Split, 0).collect();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].range, 0..44 * 1472);
        assert_eq!((c[0].segment_size, c[0].segments), (1472, 44));
        assert_eq!(c[1].range, 44 * 1472..segs.total);
        assert_eq!((c[1].segment_size, c[1].segments), (1472, 3));
        let c: Vec<Transmit> = transmits(segs, false, PEER, TxBuffer::Split, 0).collect();
        assert_eq!(c.len(), 47);
        assert!(c.iter().all(|x| x.segment_size == 0 && x.segments == 1));
        assert_eq!(c[46].range, 46 * 1472..segs.total);
        let one = Segments {
            count: 1,
            seg_len: 60,
            total: 60,
        };
        let c: Vec<Transmit> = transmits(one, true, PEER, TxBuffer::Read, 12).collect();
        assert_eq!(
            c,
            vec![Transmit {
                buffer: TxBuffer::Read,
                range: 12..72,
                segment_size: 0,
                segments: 1,
                peer: PEER,
            }]
        );
        // A chunk whose last segment is alone still gets no GSO size.
        let segs = Segments {
            count: 45,
            seg_len: 1472,
            total: 45 * 1472,
        };
        let c: Vec<Transmit> = transmits(segs, true, PEER, TxBuffer::Split, 0).collect();
        assert_eq!((c[1].segments, c[1].segment_size), (1, 0));
    }
}
