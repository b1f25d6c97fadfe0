//! The data plane's packet views and per-packet decisions: `Ipv4View::parse`, the TTL
//! decrement with its incremental checksum, the checksum helpers, the ICMP net-unreachable
//! builder, and both directions of `forward` (`udp_to_tun`: the receive checks;
//! `tun_to_udp`: route, then TTL, ICMP). Each result is checked against an independent oracle
//! written from DESIGN.md, not just for "no panic".
//!
//! Input: a small context (our subnet, TUN address, leases, the sender) and one packet, which
//! may be fixed up (length, checksum, addresses taken from the leases) so the fuzzer reaches
//! the deep paths as well as the malformed ones.

#![no_main]

use std::net::Ipv4Addr;

use arbitrary::Arbitrary;
use flannel_dataplane::forward::{
    tun_to_udp, udp_to_tun, TableState, DropReason, Lookup, RateLimiter, SenderIndex, TunAction,
};
use flannel_dataplane::packet::{
    checksum_add, checksum_adjust, decrement_ttl, fold_checksum, internet_checksum,
    may_send_icmp_error, Ipv4View, Malformed, Ttl, ICMP_UNREACH_MAX,
};
use flannel_shared::Ipv4Net;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    our: Option<(u32, u8)>,
    tun_addr: Option<u32>,
    spoof_check: bool,
    routes: Vec<(u32, u8, u32)>,
    /// The sender: a route's public IP (by index) or any address.
    sender: Result<u8, u32>,
    /// Fix-ups applied to `pkt` before the checks.
    fix_len: bool,
    fix_csum: bool,
    /// Inner source / destination taken from a route's subnet / our subnet (+ host part).
    src_from_route: Option<(u8, u8)>,
    dst_in_ours: Option<u8>,
    limiter: (u8, u8, u64),
    icmp_room: u16,
    pkt: Vec<u8>,
}

struct Routes(Vec<(Ipv4Net, Ipv4Addr)>);

impl Lookup for Routes {
    fn peer_for(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        self.0.iter().find(|(n, _)| n.contains(dst)).map(|r| r.1)
    }
}

fn net(addr: u32, prefix: u8) -> Ipv4Net {
    Ipv4Net::containing(Ipv4Addr::from(addr), prefix % 33).expect("prefix <= 32")
}

fn host_in(n: Ipv4Net, host: u8) -> Ipv4Addr {
    Ipv4Addr::from(n.addr_u32() | (u32::from(host) & !n.mask()))
}

fn set_header_checksum(p: &mut [u8]) {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl >= 20 && ihl <= p.len() {
        p[10] = 0;
        p[11] = 0;
        let c = internet_checksum(&p[..ihl]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

/// Checks the bytes that changed between `before` and `after` are only TTL and checksum, the
/// TTL went down by one and a valid header checksum stayed valid.
fn check_ttl_decrement(before: &[u8], after: &[u8]) {
    assert_eq!(before.len(), after.len());
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        if !matches!(i, 8 | 10 | 11) {
            assert_eq!(a, b, "byte {i} changed by a TTL decrement");
        }
    }
    assert_eq!(after[8], before[8] - 1);
    let ihl = usize::from(before[0] & 0x0f) * 4;
    if internet_checksum(&before[..ihl]) == 0 {
        assert_eq!(
            internet_checksum(&after[..ihl]),
            0,
            "incremental checksum broke a valid header"
        );
    }
}

/// The ICMP net-unreachable `icmp` about `offender` (already TTL-decremented) from `src`.
fn check_icmp(icmp: &[u8], offender: &[u8], src: Ipv4Addr) {
    assert!(icmp.len() <= ICMP_UNREACH_MAX);
    let v = Ipv4View::parse(icmp).expect("our ICMP error is a valid IPv4 packet");
    let o = Ipv4View::parse(offender).expect("offender was valid");
    assert_eq!(v.header_len(), 20);
    assert_eq!(v.protocol(), 1);
    assert_eq!(v.ttl(), 64);
    assert_eq!(v.src(), src);
    assert_eq!(v.dst(), o.src());
    assert_eq!(internet_checksum(v.header()), 0, "ICMP error IP checksum");
    let body = v.payload();
    assert_eq!(&body[..2], &[3, 0], "type 3 code 0");
    assert_eq!(internet_checksum(body), 0, "ICMP checksum");
    let quoted = o.header().len() + o.payload().len().min(8);
    assert_eq!(body.len(), 8 + quoted);
    assert_eq!(&body[8..], &offender[..quoted]);
}

fuzz_target!(|input: Input| {
    let our = input.our.map(|(a, p)| net(a, p));
    let routes: Vec<(Ipv4Net, Ipv4Addr)> = input
        .routes
        .iter()
        .take(16)
        .map(|&(a, p, ip)| (net(a, p), Ipv4Addr::from(ip)))
        .collect();
    let sender = match input.sender {
        Ok(i) if !routes.is_empty() => routes[usize::from(i) % routes.len()].1,
        Ok(i) => Ipv4Addr::from(u32::from(i)),
        Err(ip) => Ipv4Addr::from(ip),
    };
    let ctx = TableState {
        network: None,
        our_subnet: our,
        tun_addr: input.tun_addr.map(Ipv4Addr::from),
        spoof_check: input.spoof_check,
        senders: SenderIndex::new(routes.clone()),
    };

    // The sender index answers exactly the leases of an address.
    let mut want: Vec<Ipv4Net> = routes
        .iter()
        .filter(|r| r.1 == sender)
        .map(|r| r.0)
        .collect();
    want.sort();
    want.dedup();
    let mut got: Vec<Ipv4Net> = ctx.senders.subnets_of(sender).iter().map(|e| e.1).collect();
    got.sort();
    assert_eq!(got, want, "SenderIndex::subnets_of");

    // The packet, with the requested fix-ups.
    let mut pkt = input.pkt;
    pkt.truncate(4096);
    if pkt.len() >= 20 {
        if let Some((i, h)) = input.src_from_route {
            if !routes.is_empty() {
                let r = routes[usize::from(i) % routes.len()].0;
                pkt[12..16].copy_from_slice(&host_in(r, h).octets());
            }
        }
        if let (Some(h), Some(n)) = (input.dst_in_ours, our) {
            pkt[16..20].copy_from_slice(&host_in(n, h).octets());
        }
        if input.fix_len {
            pkt[0] = 0x40 | (pkt[0] & 0x0f).max(5);
            let len = pkt.len() as u16;
            pkt[2..4].copy_from_slice(&len.to_be_bytes());
        }
        if input.fix_csum {
            set_header_checksum(&mut pkt);
        }
    }

    // Checksum helpers agree with each other.
    assert_eq!(
        !fold_checksum(checksum_add(&pkt, 0)),
        internet_checksum(&pkt),
        "checksum_add/fold vs internet_checksum"
    );

    // The view: validated exactly as documented.
    let parsed = Ipv4View::parse(&pkt);
    let oracle = if pkt.len() < 20 {
        Err(Malformed::TooShort)
    } else if pkt[0] >> 4 != 4 {
        Err(Malformed::NotIpv4)
    } else if usize::from(pkt[0] & 0x0f) * 4 < 20 || usize::from(pkt[0] & 0x0f) * 4 > pkt.len() {
        Err(Malformed::BadIhl)
    } else if usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) != pkt.len() {
        Err(Malformed::BadLength)
    } else {
        Ok(())
    };
    assert_eq!(parsed.map(|_| ()), oracle, "Ipv4View::parse");
    if let Ok(v) = parsed {
        assert_eq!(v.total_len(), pkt.len());
        assert_eq!(v.header().len(), v.header_len());
        assert_eq!(v.header().len() + v.payload().len(), pkt.len());
        assert_eq!(v.as_bytes(), &pkt[..]);
        assert_eq!(v.src(), Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]));
        assert_eq!(v.dst(), Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]));
        assert_eq!(v.ttl(), pkt[8]);
        assert_eq!(v.protocol(), pkt[9]);
        assert_eq!(
            v.fragment_offset(),
            u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff
        );
        assert_eq!(v.is_first_fragment(), v.fragment_offset() == 0);
        let _ = v.checksum();
        let _ = may_send_icmp_error(&v);

        // RFC 1624 against a full recomputation, for any header word change.
        let hc = u16::from_be_bytes([pkt[10], pkt[11]]);
        if internet_checksum(v.header()) == 0 {
            let old = u16::from_be_bytes([pkt[8], pkt[9]]);
            let new = old.wrapping_add(u16::from(pkt[0]));
            let mut h = v.header().to_vec();
            h[8..10].copy_from_slice(&new.to_be_bytes());
            h[10..12].copy_from_slice(&checksum_adjust(hc, old, new).to_be_bytes());
            assert_eq!(internet_checksum(&h), 0, "checksum_adjust");
        }
    }

    // TTL decrement on any buffer: never panics; on a valid packet exact.
    let mut d = pkt.clone();
    match decrement_ttl(&mut d) {
        Ttl::Expired => {
            assert_eq!(d, pkt, "an expired TTL leaves the packet alone");
            assert!(pkt.len() < 12 || pkt[8] <= 1);
        }
        Ttl::Decremented => {
            if parsed.is_ok() {
                check_ttl_decrement(&pkt, &d);
            }
        }
    }

    // Receive checks (UDP → TUN), against the documented order.
    let mut rx = pkt.clone();
    let result = udp_to_tun(&mut rx, sender, &ctx);
    let expect = match Ipv4View::parse(&pkt) {
        Err(m) => Err(DropReason::from(m)),
        Ok(v) => {
            let subnets = ctx.senders.subnets_of(sender);
            if subnets.is_empty() {
                Err(DropReason::UnknownSender)
            } else if our.is_some_and(|o| subnets.iter().any(|(_, n)| *n == o)) {
                Err(DropReason::FromSelf)
            } else if !our.is_some_and(|s| s.contains(v.dst())) {
                Err(DropReason::DstNotLocal)
            } else if input.spoof_check && !subnets.iter().any(|(_, n)| n.contains(v.src())) {
                Err(DropReason::SpoofedSrc)
            } else if v.ttl() <= 1 {
                Err(DropReason::RxTtlExpired)
            } else {
                Ok(())
            }
        }
    };
    assert_eq!(result, expect, "udp_to_tun");
    match result {
        Ok(()) => check_ttl_decrement(&pkt, &rx),
        Err(_) => assert_eq!(rx, pkt, "a dropped datagram is not modified"),
    }

    // Send decisions (TUN → UDP).
    let table = Routes(routes.clone());
    let (per_sec, burst, now) = input.limiter;
    let mut limiter = RateLimiter::new(u64::from(per_sec), u64::from(burst));
    let mut icmp = vec![0u8; usize::from(input.icmp_room) % (2 * ICMP_UNREACH_MAX)];
    let mut tx = pkt.clone();
    let action = tun_to_udp(&mut tx, &table, &ctx, &mut limiter, now, &mut icmp);
    match Ipv4View::parse(&pkt) {
        Err(_) => {
            assert_eq!(action, TunAction::Drop(DropReason::TunMalformed));
            assert_eq!(tx, pkt);
        }
        // flannel's order: local destination, route, then TTL; only a packet that is sent is
        // modified (its TTL decremented).
        Ok(v) => {
            let dst = v.dst();
            if our.is_some_and(|s| s.contains(dst)) {
                assert_eq!(action, TunAction::Drop(DropReason::TunDstLocal));
                assert_eq!(tx, pkt);
            } else if let Some(peer) = table.peer_for(dst) {
                if v.ttl() <= 1 {
                    assert_eq!(action, TunAction::Drop(DropReason::TunTtlExpired));
                    assert_eq!(tx, pkt);
                } else {
                    assert_eq!(action, TunAction::Send(peer));
                    check_ttl_decrement(&pkt, &tx);
                }
            } else {
                assert_eq!(tx, pkt, "a packet without a route is not modified");
                match action {
                    TunAction::Unreachable(n) => {
                        let src = ctx.tun_addr.expect("ICMP needs a TUN address");
                        assert!(may_send_icmp_error(&v));
                        // The quote is of the packet as read (TTL untouched).
                        check_icmp(&icmp[..n], &pkt, src);
                    }
                    TunAction::Drop(DropReason::NoRoute) | TunAction::NoRouteRateLimited => {}
                    other => panic!("no route, got {other:?}"),
                }
            }
        }
    }
});
