//! Pure per-packet forwarding decisions, the heart of the hot path (no I/O, no unsafe).
//!
//! - [`tun_to_udp`]: a packet read from the TUN device → send it to a peer's public IP, answer
//!   with an ICMP net-unreachable (rate limited), or drop it (with a reason).
//! - [`udp_to_tun`]: a datagram from a peer → write it into the TUN device, or drop it.
//!
//! Both follow flannel's UDP backend (proxy.c): the inner TTL is decremented on send and again on
//! receive, a packet whose TTL would reach 0 is dropped. Unlike flannel, the receiver checks the
//! datagram: it must be one whole IPv4 packet, its sender must hold a lease, the inner
//! destination must be in our subnet, and (unless disabled) the inner source must lie in the
//! sender's subnet. Every drop maps to one stats counter.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use flannel_shared::stats::Counter;
use flannel_shared::Ipv4Net;

use crate::packet::{self, Ipv4View, Malformed, Ttl};

/// Why a packet was dropped. Each reason is exactly one stats counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// From TUN: not a whole IPv4 packet.
    TunMalformed,
    /// From TUN: TTL 0 or 1.
    TunTtlExpired,
    /// From TUN: no lease covers the destination.
    NoRoute,
    /// From TUN: the destination is in our own subnet (would loop back to us).
    TunDstLocal,
    /// From TUN: the peer's public IP lies inside the overlay network: the send would come back
    /// through the TUN device and be encapsulated again (a loop).
    PeerInNetwork,
    /// From UDP: the receive checks.
    TooShort,
    NotIpv4,
    BadIhl,
    BadLength,
    UnknownSender,
    /// From UDP: the sender is this host itself (its own lease's address): only a local process
    /// can send that, never a peer.
    FromSelf,
    DstNotLocal,
    SpoofedSrc,
    RxTtlExpired,
}

impl DropReason {
    pub fn counter(self) -> Counter {
        match self {
            DropReason::TunMalformed => Counter::DropTunMalformed,
            DropReason::TunTtlExpired => Counter::DropTunTtlExpired,
            DropReason::NoRoute => Counter::DropNoRoute,
            DropReason::TunDstLocal => Counter::DropTunDstLocal,
            DropReason::PeerInNetwork => Counter::DropPeerInNetwork,
            DropReason::TooShort => Counter::DropTooShort,
            DropReason::NotIpv4 => Counter::DropNotIpv4,
            DropReason::BadIhl => Counter::DropBadIhl,
            DropReason::BadLength => Counter::DropBadLength,
            DropReason::UnknownSender => Counter::DropUnknownSender,
            DropReason::FromSelf => Counter::DropFromSelf,
            DropReason::DstNotLocal => Counter::DropDstNotLocal,
            DropReason::SpoofedSrc => Counter::DropSpoofedSrc,
            DropReason::RxTtlExpired => Counter::DropRxTtlExpired,
        }
    }
}

impl From<Malformed> for DropReason {
    fn from(m: Malformed) -> Self {
        match m {
            Malformed::TooShort => DropReason::TooShort,
            Malformed::NotIpv4 => DropReason::NotIpv4,
            Malformed::BadIhl => DropReason::BadIhl,
            Malformed::BadLength => DropReason::BadLength,
        }
    }
}

/// Where a destination goes: implemented by the shared-memory route snapshot (and by tests).
pub trait Lookup {
    /// The public IP of the host whose lease covers `dst`.
    fn peer_for(&self, dst: Ipv4Addr) -> Option<Ipv4Addr>;
}

/// The state that changes with the route-table generation, not per packet.
#[derive(Debug, Clone)]
pub struct TableState {
    /// The overlay network; a peer address inside it is never sent to.
    pub network: Option<Ipv4Net>,
    /// Our lease; `None` until the control plane has one (then every datagram is dropped).
    pub our_subnet: Option<Ipv4Net>,
    /// Source of ICMP errors: the TUN address (our subnet's network address).
    pub tun_addr: Option<Ipv4Addr>,
    /// Check that the inner source lies in the sender's subnet.
    pub spoof_check: bool,
    /// Sender public IP → its subnets, for the receive checks.
    pub senders: SenderIndex,
}

/// Public IP → subnets held, as a sorted vector (binary search, no hashing, no allocation).
#[derive(Debug, Clone, Default)]
pub struct SenderIndex {
    entries: Vec<(u32, Ipv4Net)>,
}

impl SenderIndex {
    pub fn new(routes: impl IntoIterator<Item = (Ipv4Net, Ipv4Addr)>) -> Self {
        let mut entries: Vec<(u32, Ipv4Net)> = routes
            .into_iter()
            .map(|(net, ip)| (u32::from(ip), net))
            .collect();
        entries.sort_unstable();
        entries.dedup();
        Self { entries }
    }

    /// The subnets leased by `sender` (empty when it holds none).
    pub fn subnets_of(&self, sender: Ipv4Addr) -> &[(u32, Ipv4Net)] {
        let key = u32::from(sender);
        let lo = self.entries.partition_point(|e| e.0 < key);
        let hi = self.entries.partition_point(|e| e.0 <= key);
        self.entries.get(lo..hi).unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A token bucket for ICMP errors, one per worker. Time comes in as nanoseconds from any
/// monotonic origin, which keeps this pure and testable.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_sec: u64,
    burst: u64,
    /// Tokens scaled by 1e9 (one token = 1e9 units) to stay in integers.
    tokens: u64,
    last_ns: u64,
}

impl RateLimiter {
    pub fn new(per_sec: u64, burst: u64) -> Self {
        Self {
            per_sec,
            burst,
            tokens: burst.saturating_mul(1_000_000_000),
            last_ns: 0,
        }
    }

    /// Takes one token if there is one.
    pub fn allow(&mut self, now_ns: u64) -> bool {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        let cap = self.burst.saturating_mul(1_000_000_000);
        self.tokens = self
            .tokens
            .saturating_add(elapsed.saturating_mul(self.per_sec))
            .min(cap);
        if self.tokens >= 1_000_000_000 {
            self.tokens -= 1_000_000_000;
            true
        } else {
            false
        }
    }
}

/// What to do with a packet read from the TUN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunAction {
    /// Send the (TTL-decremented) packet to this peer public IP.
    Send(Ipv4Addr),
    /// No route: an ICMP net-unreachable of this length was written into the ICMP buffer;
    /// write it into the TUN device. The packet itself is dropped (count `NoRoute`).
    Unreachable(usize),
    /// Drop; for `NoRoute` the ICMP answer was suppressed by policy (nothing to answer, or
    /// no TUN address to answer from).
    Drop(DropReason),
    /// No route, and the ICMP answer that was due is held back by the rate limit: dropped as
    /// `NoRoute`, and counted as rate-limited.
    NoRouteRateLimited,
}

/// Decides the fate of one packet read from the TUN device; decrements its TTL in place when it
/// is to be sent. flannel's order: the route first, then the TTL; so a packet with TTL 1 to a
/// subnet without a lease gets the ICMP net-unreachable, which quotes the header as it was read.
pub fn tun_to_udp(
    pkt: &mut [u8],
    routes: &impl Lookup,
    ctx: &TableState,
    limiter: &mut RateLimiter,
    now_ns: u64,
    icmp_out: &mut [u8],
) -> TunAction {
    let dst = match Ipv4View::parse(&*pkt) {
        Ok(v) => v.dst(),
        Err(_) => return TunAction::Drop(DropReason::TunMalformed),
    };
    if ctx.our_subnet.is_some_and(|s| s.contains(dst)) {
        return TunAction::Drop(DropReason::TunDstLocal);
    }
    // flannel's order: the route, then the TTL.
    if let Some(peer) = routes.peer_for(dst) {
        if ctx.network.is_some_and(|n| n.contains(peer)) {
            return TunAction::Drop(DropReason::PeerInNetwork);
        }
        return match packet::decrement_ttl(pkt) {
            Ttl::Decremented => TunAction::Send(peer),
            Ttl::Expired => TunAction::Drop(DropReason::TunTtlExpired),
        };
    }
    let Ok(view) = Ipv4View::parse(&*pkt) else {
        return TunAction::Drop(DropReason::NoRoute);
    };
    let Some(src) = ctx.tun_addr else {
        return TunAction::Drop(DropReason::NoRoute);
    };
    if !packet::may_send_icmp_error(&view) {
        return TunAction::Drop(DropReason::NoRoute);
    }
    if !limiter.allow(now_ns) {
        return TunAction::NoRouteRateLimited;
    }
    match packet::build_net_unreachable(&view, src, icmp_out) {
        Some(n) => TunAction::Unreachable(n),
        None => TunAction::Drop(DropReason::NoRoute),
    }
}

/// Checks one datagram received from `sender` (outer source IP) and decrements its inner TTL
/// in place. `Ok(())` means: write `pkt` into the TUN device.
pub fn udp_to_tun(pkt: &mut [u8], sender: Ipv4Addr, ctx: &TableState) -> Result<(), DropReason> {
    let view = Ipv4View::parse(&*pkt)?;
    let subnets = ctx.senders.subnets_of(sender);
    if subnets.is_empty() {
        return Err(DropReason::UnknownSender);
    }
    if ctx
        .our_subnet
        .is_some_and(|own| subnets.iter().any(|(_, n)| *n == own))
    {
        return Err(DropReason::FromSelf);
    }
    if !ctx.our_subnet.is_some_and(|s| s.contains(view.dst())) {
        return Err(DropReason::DstNotLocal);
    }
    if ctx.spoof_check && !subnets.iter().any(|(_, n)| n.contains(view.src())) {
        return Err(DropReason::SpoofedSrc);
    }
    match packet::decrement_ttl(pkt) {
        Ttl::Decremented => Ok(()),
        Ttl::Expired => Err(DropReason::RxTtlExpired),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::testpkt::ipv4;
    use crate::packet::{internet_checksum, ICMP_UNREACH_MAX};

    const HOST_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const HOST_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const CA: Ipv4Addr = Ipv4Addr::new(10, 1, 15, 2);
    const CB: Ipv4Addr = Ipv4Addr::new(10, 1, 16, 2);

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    struct Table(Vec<(Ipv4Net, Ipv4Addr)>);
    impl Lookup for Table {
        fn peer_for(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
            self.0.iter().find(|(n, _)| n.contains(dst)).map(|x| x.1)
        }
    }

    fn table() -> Table {
        Table(vec![
            (net("10.1.15.0/24"), HOST_A),
            (net("10.1.16.0/24"), HOST_B),
        ])
    }

    /// Host A's view.
    fn ctx_a(spoof_check: bool) -> TableState {
        TableState {
            network: Some(net("10.1.0.0/16")),
            our_subnet: Some(net("10.1.15.0/24")),
            tun_addr: Some(Ipv4Addr::new(10, 1, 15, 0)),
            spoof_check,
            senders: SenderIndex::new(table().0),
        }
    }

    fn send(pkt: &mut [u8], lim: &mut RateLimiter) -> (TunAction, Vec<u8>) {
        let mut icmp = [0u8; ICMP_UNREACH_MAX];
        let a = tun_to_udp(pkt, &table(), &ctx_a(true), lim, 0, &mut icmp);
        let n = if let TunAction::Unreachable(n) = a {
            n
        } else {
            0
        };
        (a, icmp[..n].to_vec())
    }

    #[test]
    fn encap_to_peer_decrements_ttl() {
        let mut p = ipv4(CA, CB, 6, 63, 100);
        let orig = p.clone();
        let (a, _) = send(&mut p, &mut RateLimiter::new(10, 10));
        assert_eq!(a, TunAction::Send(HOST_B));
        assert_eq!(p[8], 62);
        assert_eq!(internet_checksum(&p[..20]), 0);
        // Wire format: nothing but the TTL and checksum changed; no header added.
        assert_eq!(p.len(), orig.len());
        assert_eq!(&p[12..], &orig[12..]);
    }

    #[test]
    fn a_peer_inside_the_network_is_never_sent_to() {
        // A lease 10.1.99.0/24 -> PublicIP 10.1.99.1: sending there would re-enter the TUN
        // device (the overlay loop); dropped, and the packet is left untouched.
        let looped = Table(vec![(net("10.1.99.0/24"), Ipv4Addr::new(10, 1, 99, 1))]);
        let mut p = ipv4(CA, Ipv4Addr::new(10, 1, 99, 5), 1, 64, 56);
        let orig = p.clone();
        let mut icmp = [0u8; ICMP_UNREACH_MAX];
        let mut lim = RateLimiter::new(10, 10);
        let a = tun_to_udp(&mut p, &looped, &ctx_a(true), &mut lim, 0, &mut icmp);
        assert_eq!(a, TunAction::Drop(DropReason::PeerInNetwork));
        assert_eq!(p, orig);
        assert_eq!(
            DropReason::PeerInNetwork.counter().name(),
            "drop_peer_in_network"
        );
    }

    #[test]
    fn tun_drops() {
        let mut lim = RateLimiter::new(10, 10);
        let mut junk = vec![0x60u8; 40];
        assert_eq!(
            send(&mut junk, &mut lim).0,
            TunAction::Drop(DropReason::TunMalformed)
        );
        let mut ttl1 = ipv4(CA, CB, 6, 1, 10);
        assert_eq!(
            send(&mut ttl1, &mut lim).0,
            TunAction::Drop(DropReason::TunTtlExpired)
        );
        let mut local = ipv4(CA, Ipv4Addr::new(10, 1, 15, 9), 6, 64, 10);
        assert_eq!(
            send(&mut local, &mut lim).0,
            TunAction::Drop(DropReason::TunDstLocal)
        );
    }

    #[test]
    fn no_route_answers_icmp_unreachable() {
        let mut lim = RateLimiter::new(10, 10);
        let mut p = ipv4(CA, Ipv4Addr::new(10, 1, 99, 2), 17, 64, 30);
        let (a, icmp) = send(&mut p, &mut lim);
        assert!(matches!(a, TunAction::Unreachable(56)), "{a:?}");
        let v = Ipv4View::parse(&icmp).unwrap();
        assert_eq!((v.src(), v.dst()), (Ipv4Addr::new(10, 1, 15, 0), CA));
        assert_eq!(&v.payload()[..2], &[3, 0]);
        assert_eq!(internet_checksum(v.payload()), 0);
        assert_eq!(internet_checksum(v.header()), 0);

        // Never for ICMP, never for non-first fragments.
        let mut ping = ipv4(CA, Ipv4Addr::new(10, 1, 99, 2), 1, 64, 30);
        assert_eq!(
            send(&mut ping, &mut lim).0,
            TunAction::Drop(DropReason::NoRoute)
        );
        let mut frag = ipv4(CA, Ipv4Addr::new(10, 1, 99, 2), 17, 64, 30);
        frag[6] = 0;
        frag[7] = 3;
        frag[10] = 0;
        frag[11] = 0;
        let c = internet_checksum(&frag[..20]);
        frag[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(
            send(&mut frag, &mut lim).0,
            TunAction::Drop(DropReason::NoRoute)
        );
    }

    /// As flannel: the route before the TTL, so TTL 1 to a subnet without a lease is answered
    /// with ICMP, and the ICMP quotes the offending header and 8 payload bytes exactly as read
    /// (TTL and checksum untouched).
    #[test]
    fn no_route_is_decided_before_the_ttl_and_quotes_the_original_header() {
        let mut lim = RateLimiter::new(10, 10);
        let mut p = ipv4(CA, Ipv4Addr::new(10, 1, 99, 2), 17, 1, 30);
        let orig = p.clone();
        let (a, icmp) = send(&mut p, &mut lim);
        assert!(matches!(a, TunAction::Unreachable(56)), "{a:?}");
        assert_eq!(p, orig, "the offending packet is not modified");
        let v = Ipv4View::parse(&icmp).unwrap();
        assert_eq!(
            &v.payload()[8..],
            &orig[..28],
            "quote: original header + 8 bytes"
        );
        assert_eq!(internet_checksum(v.payload()), 0);
        // With a route, TTL 1 still expires here.
        let mut routed = ipv4(CA, CB, 17, 1, 30);
        assert_eq!(
            send(&mut routed, &mut lim).0,
            TunAction::Drop(DropReason::TunTtlExpired)
        );
    }

    #[test]
    fn icmp_is_rate_limited() {
        let mut lim = RateLimiter::new(1, 2);
        let mut sent = 0;
        let mut limited = 0;
        for _ in 0..5 {
            let mut p = ipv4(CA, Ipv4Addr::new(10, 1, 99, 2), 6, 64, 8);
            match send(&mut p, &mut lim) {
                (TunAction::Unreachable(_), _) => sent += 1,
                (TunAction::NoRouteRateLimited, _) => limited += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((sent, limited), (2, 3));
        // One second later one more token.
        assert!(lim.allow(1_000_000_000));
        assert!(!lim.allow(1_000_000_000));
    }

    #[test]
    fn receive_accepts_and_decrements() {
        let mut p = ipv4(CB, CA, 6, 62, 50);
        assert_eq!(udp_to_tun(&mut p, HOST_B, &ctx_a(true)), Ok(()));
        assert_eq!(p[8], 61);
        assert_eq!(internet_checksum(&p[..20]), 0);
    }

    #[test]
    fn every_receive_drop_reason() {
        let c = ctx_a(true);
        let good = ipv4(CB, CA, 6, 62, 50);
        let cases: Vec<(Vec<u8>, Ipv4Addr, DropReason)> = vec![
            (good[..10].to_vec(), HOST_B, DropReason::TooShort),
            (
                {
                    let mut x = good.clone();
                    x[0] = 0x65;
                    x
                },
                HOST_B,
                DropReason::NotIpv4,
            ),
            (
                {
                    let mut x = good.clone();
                    x[0] = 0x43;
                    x
                },
                HOST_B,
                DropReason::BadIhl,
            ),
            (
                {
                    let mut x = good.clone();
                    x.push(0);
                    x
                },
                HOST_B,
                DropReason::BadLength,
            ),
            (
                good.clone(),
                Ipv4Addr::new(198, 18, 0, 9),
                DropReason::UnknownSender,
            ),
            // From our own address (a local process): whatever it carries.
            (ipv4(CA, CA, 6, 62, 50), HOST_A, DropReason::FromSelf),
            (good.clone(), HOST_A, DropReason::FromSelf),
            (ipv4(CB, CB, 6, 62, 50), HOST_B, DropReason::DstNotLocal),
            (
                ipv4(Ipv4Addr::new(10, 1, 17, 2), CA, 6, 62, 50),
                HOST_B,
                DropReason::SpoofedSrc,
            ),
            (ipv4(CB, CA, 6, 1, 50), HOST_B, DropReason::RxTtlExpired),
        ];
        for (mut pkt, sender, want) in cases {
            assert_eq!(udp_to_tun(&mut pkt, sender, &c), Err(want), "{want:?}");
        }
        // Spoof check off: the spoofed packet passes.
        let mut spoof = ipv4(Ipv4Addr::new(10, 1, 17, 2), CA, 6, 62, 50);
        assert_eq!(udp_to_tun(&mut spoof, HOST_B, &ctx_a(false)), Ok(()));
        // No lease of our own yet: nothing is local.
        let mut none = ctx_a(true);
        none.our_subnet = None;
        assert_eq!(
            udp_to_tun(&mut good.clone(), HOST_B, &none),
            Err(DropReason::DstNotLocal)
        );
    }

    #[test]
    fn never_panics_on_prefixes() {
        let good = ipv4(CB, CA, 6, 62, 50);
        let mut lim = RateLimiter::new(1000, 1000);
        for n in 0..=good.len() {
            let mut a = good[..n].to_vec();
            let _ = udp_to_tun(&mut a, HOST_B, &ctx_a(true));
            let mut b = good[..n].to_vec();
            let _ = send(&mut b, &mut lim);
        }
    }

    #[test]
    fn sender_index() {
        let idx = SenderIndex::new(vec![
            (net("10.1.16.0/24"), HOST_B),
            (net("10.1.15.0/24"), HOST_A),
            (net("10.1.17.0/24"), HOST_B),
        ]);
        assert_eq!(idx.subnets_of(HOST_B).len(), 2);
        assert_eq!(idx.subnets_of(HOST_A).len(), 1);
        assert!(idx.subnets_of(Ipv4Addr::new(1, 2, 3, 4)).is_empty());
        assert_eq!(idx.len(), 3);
    }

    #[test]
    fn drop_reasons_map_to_distinct_counters() {
        use DropReason::*;
        let all = [
            TunMalformed,
            TunTtlExpired,
            NoRoute,
            TunDstLocal,
            TooShort,
            NotIpv4,
            BadIhl,
            BadLength,
            UnknownSender,
            FromSelf,
            DstNotLocal,
            SpoofedSrc,
            RxTtlExpired,
        ];
        let set: std::collections::HashSet<_> = all.iter().map(|r| r.counter()).collect();
        assert_eq!(set.len(), all.len());
    }
}
