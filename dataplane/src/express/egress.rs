//! The egress program: flannel's encapsulation of one packet leaving for another host.
//!
//! Attached (tcx egress) to the TUN device flannel0, it sees every packet the kernel routes
//! into the overlay (`<Network> dev flannel0`), after forwarding, netfilter and flannel0's MTU
//! check. For a packet to another host's subnet it:
//!
//! 1. looks the destination up in the `peers` array (the route table's layout: index
//!    `(dst − network) >> (32 − SubnetLen)`, value the peer's PublicIP, 0 = no lease);
//! 2. refuses (returns `TCX_NEXT`, packet unchanged: it continues into the TUN device and the
//!    workers handle it exactly as before) anything the userspace path must see: not IPv4 or
//!    with IP options, to our own subnet, no lease (the worker answers ICMP net-unreachable),
//!    a peer address inside the overlay, TTL ≤ 1, a non-GSO packet longer than
//!    `max_inner_len`, more than 64 KiB once encapsulated, the lane disabled;
//! 3. picks the outer source port: the flannel port with `FLAG_FIXED_SPORT`, else 49152 +
//!    the low 14 bits of the inner flow's hash (`bpf_get_hash_recalc`), so a receiving NIC
//!    spreads flows;
//! 4. makes room: `bpf_skb_adjust_room(+28, BPF_ADJ_ROOM_MAC, FIXED_GSO | ENCAP_L3_IPV4 |
//!    ENCAP_L4_UDP)` — a GSO skb keeps its inner MSS and is segmented later as a UDP tunnel.
//!    If the kernel refuses (an exotic GSO type, an already encapsulated skb) the packet is
//!    still unchanged: counted `TxPassed`, handed on;
//! 5. on an L3 device pushes a 14-byte zero MAC header (`bpf_skb_change_head`: the kernel's
//!    redirect paths drop L3 skbs on Ethernet devices);
//! 6. decrements the inner TTL (checksum patched, `bpf_l3_csum_replace`) as flannel does on
//!    send, writes outer IPv4 (DF, id 0, TTL `outer_ttl`, protocol UDP, checksum computed with
//!    `bpf_csum_diff`) and UDP (destination port, length, checksum 0) headers;
//! 7. hands the packet to `bpf_redirect_neigh(underlay_ifindex)`: the kernel routes the outer
//!    destination and fills in the Ethernet header from its neighbour table (ARP included).
//!
//! From step 5 on, the packet has been modified: a helper failing there drops it
//! (`TCX_DROP`, counted `TxErrors`) — it is never handed on half-built.
//!
//! On the wire the datagram is exactly flannel's: the inner IPv4 packet, nothing else, in UDP
//! to the peer's port. With [`LinkKind::Ethernet`] the same program runs behind a MAC header
//! (a device with one, or `BPF_PROG_TEST_RUN`, which always builds one).

#![forbid(unsafe_code)]

use crate::bpf_asm::{Alu, Asm, AsmError, Cond, Helper, Program, Size};
use crate::bpf_asm::{R0, R1, R10, R2, R3, R4, R5, R6, R7, R8, R9};
use crate::express::emit::{count, decrement_ttl, lookup, store, KEY};
use crate::express::layout::{
    cfg, skb, slot, LaneCounter, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS, ENCAP_LEN, ETH_LEN, ETH_P_IP_RAW,
    SENDER_HOLDS_OUR_SUBNET, SENDER_NARROW_PATH, TCX_DROP, TCX_NEXT,
};

/// What kind of device the program is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// No MAC header (the TUN device): the IPv4 header is at offset 0.
    L3,
    /// An Ethernet header precedes the IPv4 header.
    Ethernet,
}

impl LinkKind {
    fn net_off(self) -> i32 {
        match self {
            LinkKind::L3 => 0,
            LinkKind::Ethernet => ETH_LEN,
        }
    }
}

// Stack slots (offsets from r10; every access naturally aligned, as the verifier demands;
// r10 − 8 is the map key, `emit::KEY`).
/// Copy of the inner IPv4 header (20 bytes).
const INNER: i16 = -32;
/// The outer IPv4 (20) and UDP (8) headers being built.
const OUTER: i16 = -64;

/// After encapsulation (both link kinds): 14 MAC bytes, outer IPv4, UDP, then the inner packet.
const INNER_AT: i32 = ETH_LEN + ENCAP_LEN;
/// Inner TTL (and protocol) and header checksum offsets in the encapsulated packet.
const INNER_TTL_AT: i32 = INNER_AT + 8;
const INNER_CSUM_AT: i32 = INNER_AT + 10;

/// The largest packet (L3, before encapsulation) that still fits IPv4's 16-bit total length
/// once encapsulated.
const MAX_L3_LEN: i32 = 65535 - ENCAP_LEN;
/// The flow source ports: 49152 + 14 bits of the flow hash.
const SPORT_BASE: i32 = 0xc000;
const SPORT_MASK: i32 = 0x3fff;

/// Builds the egress program for a device of kind `link`; maps in the order of
/// [`crate::express::layout::slot`]: `cfg`, `peers`, `stats`, `senders`.
pub fn egress_program(link: LinkKind) -> Result<Program, AsmError> {
    let n = link.net_off();
    let mut a = Asm::new();
    let next = a.label();
    let passed = a.label();
    let error = a.label();

    a.mov64_reg(R6, R1);
    a.ldx_w(R2, R6, skb::PROTOCOL);
    a.jcc_imm(Cond::Ne, R2, ETH_P_IP_RAW, next);

    // r7 = &cfg; disabled → next.
    a.st_imm(Size::W, R10, KEY, 0);
    lookup(&mut a, slot::CFG);
    a.jcc_imm(Cond::Eq, R0, 0, next);
    a.mov64_reg(R7, R0);
    a.ldx_w(R2, R7, cfg::ENABLED);
    a.jcc_imm(Cond::Eq, R2, 0, next);

    // The inner IPv4 header, copied to the stack; IPv4 without options only.
    a.mov64_reg(R1, R6);
    a.mov64_imm(R2, n);
    a.mov64_reg(R3, R10);
    a.alu64_imm(Alu::Add, R3, i32::from(INNER));
    a.mov64_imm(R4, 20);
    a.call(Helper::SkbLoadBytes);
    a.jcc_imm(Cond::Ne, R0, 0, next);
    a.ldx_b(R2, R10, INNER);
    a.jcc_imm(Cond::Ne, R2, 0x45, next);

    // r3 = destination (host order). Our own subnet → next.
    a.ldx_w(R3, R10, INNER + 16);
    a.be32(R3);
    a.mov64_reg(R5, R3);
    a.ldx_w(R4, R7, cfg::OUR_MASK);
    a.alu64_reg(Alu::And, R5, R4);
    a.ldx_w(R4, R7, cfg::OUR_SUBNET);
    a.jcc_reg(Cond::Eq, R5, R4, next);

    // index = (dst − network) >> shift (32-bit wrap like the route table's, 64-bit shift:
    // the shift may be 32); outside the table → next.
    a.ldx_w(R4, R7, cfg::NETWORK);
    a.alu32_reg(Alu::Sub, R3, R4);
    a.ldx_w(R4, R7, cfg::SHIFT);
    a.alu64_reg(Alu::Rsh, R3, R4);
    a.ldx_w(R4, R7, cfg::ENTRIES);
    a.jcc_reg(Cond::Ge, R3, R4, next);
    a.stx(Size::W, R10, KEY, R3);
    lookup(&mut a, slot::PEERS);
    a.jcc_imm(Cond::Eq, R0, 0, next);
    // r8 = the peer's PublicIP (wire order); no lease → next (the worker answers ICMP).
    a.ldx_w(R8, R0, 0);
    a.jcc_imm(Cond::Eq, R8, 0, next);

    // A peer address inside the overlay would loop: next (the worker drops and counts it).
    a.mov64_reg(R1, R8);
    a.be32(R1);
    a.ldx_w(R2, R7, cfg::NET_MASK);
    a.alu64_reg(Alu::And, R1, R2);
    a.ldx_w(R2, R7, cfg::NETWORK);
    a.jcc_reg(Cond::Eq, R1, R2, next);

    // A peer the lane may not send to (a narrower path, a route through another interface),
    // one whose address holds our own lease (stale), or one not (yet) among the senders: the
    // workers' (their sockets follow the kernel's routing and path MTU).
    a.stx(Size::W, R10, KEY, R8);
    lookup(&mut a, slot::SENDERS);
    a.jcc_imm(Cond::Eq, R0, 0, next);
    a.ldx_w(R2, R0, 0);
    a.jcc_imm(
        Cond::Set,
        R2,
        (SENDER_NARROW_PATH | SENDER_HOLDS_OUR_SUBNET) as i32,
        next,
    );

    // TTL ≤ 1: next (the worker drops and counts it).
    a.ldx_b(R2, R10, INNER + 8);
    a.jcc_imm(Cond::Le, R2, 1, next);

    // Length: r2 = L3 length. A non-GSO packet over max_inner_len, or anything that would
    // not fit IPv4's total length once encapsulated: next.
    a.ldx_w(R2, R6, skb::LEN);
    if n != 0 {
        a.alu64_imm(Alu::Sub, R2, n);
    }
    a.jcc_imm(Cond::Gt, R2, MAX_L3_LEN, next);
    let gso = a.label();
    a.ldx_w(R3, R6, skb::GSO_SIZE);
    a.jcc_imm(Cond::Ne, R3, 0, gso);
    a.ldx_w(R4, R7, cfg::MAX_INNER_LEN);
    a.jcc_reg(Cond::Gt, R2, R4, next);
    a.bind(gso);

    // r9 = the outer source port (wire order, low 16 bits).
    let have_sport = a.label();
    a.ldx_w(R9, R7, cfg::PORT);
    a.ldx_w(R2, R7, cfg::FLAGS);
    a.jcc_imm(Cond::Set, R2, cfg::FLAG_FIXED_SPORT, have_sport);
    a.mov64_reg(R1, R6);
    a.call(Helper::GetHashRecalc);
    a.alu64_imm(Alu::And, R0, SPORT_MASK);
    a.alu64_imm(Alu::Or, R0, SPORT_BASE);
    a.be16(R0);
    a.mov64_reg(R9, R0);
    a.bind(have_sport);

    // Room for the outer headers. Refused: the packet is unchanged, hand it on.
    a.mov64_reg(R1, R6);
    a.mov64_imm(R2, ENCAP_LEN);
    a.mov64_imm(R3, BPF_ADJ_ROOM_MAC);
    a.mov64_imm(R4, ENCAP_FLAGS);
    a.call(Helper::SkbAdjustRoom);
    a.jcc_imm(Cond::Ne, R0, 0, passed);

    // ---- From here on the packet is modified: any failure drops it. ----
    if link == LinkKind::L3 {
        a.mov64_reg(R1, R6);
        a.mov64_imm(R2, ETH_LEN);
        a.mov64_imm(R3, 0);
        a.call(Helper::SkbChangeHead);
        a.jcc_imm(Cond::Ne, R0, 0, error);
    }

    // Inner TTL − 1 (flannel's send-side decrement).
    decrement_ttl(&mut a, INNER + 8, INNER_TTL_AT, INNER_CSUM_AT, error);

    // The outer IPv4 header; r2 = its total length (the skb now starts with 14 MAC bytes).
    a.ldx_w(R2, R6, skb::LEN);
    a.alu64_imm(Alu::Sub, R2, ETH_LEN);
    a.st_imm(Size::B, R10, OUTER, 0x45);
    a.st_imm(Size::B, R10, OUTER + 1, 0);
    a.mov64_reg(R3, R2);
    a.be16(R3);
    a.stx(Size::H, R10, OUTER + 2, R3);
    // Identification 0, flags DF, fragment offset 0: bytes 00 00 40 00.
    a.st_imm(Size::W, R10, OUTER + 4, i32::from_ne_bytes([0, 0, 0x40, 0]));
    a.ldx_w(R3, R7, cfg::OUTER_TTL);
    a.stx(Size::B, R10, OUTER + 8, R3);
    a.st_imm(Size::B, R10, OUTER + 9, i32::from(libc::IPPROTO_UDP as u8));
    a.st_imm(Size::H, R10, OUTER + 10, 0);
    a.ldx_w(R3, R7, cfg::OUR_IP);
    a.stx(Size::W, R10, OUTER + 12, R3);
    a.stx(Size::W, R10, OUTER + 16, R8);
    // UDP: source port, destination port, length, checksum 0 (none, allowed over IPv4).
    a.stx(Size::H, R10, OUTER + 20, R9);
    a.ldx_w(R3, R7, cfg::PORT);
    a.stx(Size::H, R10, OUTER + 22, R3);
    a.mov64_reg(R3, R2);
    a.alu64_imm(Alu::Sub, R3, 20);
    a.be16(R3);
    a.stx(Size::H, R10, OUTER + 24, R3);
    a.st_imm(Size::H, R10, OUTER + 26, 0);
    // r9 = total length, for the byte counter (the source port is written).
    a.mov64_reg(R9, R2);

    // Header checksum: the one's-complement sum of the 20 bytes, folded and inverted.
    a.mov64_imm(R1, 0);
    a.mov64_imm(R2, 0);
    a.mov64_reg(R3, R10);
    a.alu64_imm(Alu::Add, R3, i32::from(OUTER));
    a.mov64_imm(R4, 20);
    a.mov64_imm(R5, 0);
    a.call(Helper::CsumDiff);
    a.mov64_reg(R1, R0);
    a.alu64_imm(Alu::Rsh, R1, 16);
    a.alu64_imm(Alu::And, R0, 0xffff);
    a.alu64_reg(Alu::Add, R0, R1);
    a.mov64_reg(R1, R0);
    a.alu64_imm(Alu::Rsh, R1, 16);
    a.alu64_reg(Alu::Add, R0, R1);
    a.alu64_imm(Alu::Xor, R0, 0xffff);
    a.alu64_imm(Alu::And, R0, 0xffff);
    a.stx(Size::H, R10, OUTER + 10, R0);

    store(&mut a, ETH_LEN, OUTER, ENCAP_LEN);
    a.jcc_imm(Cond::Ne, R0, 0, error);

    count(&mut a, LaneCounter::TxPackets, None);
    count(&mut a, LaneCounter::TxBytes, Some(R9));
    a.ldx_w(R1, R7, cfg::UNDERLAY_IFINDEX);
    a.mov64_imm(R2, 0);
    a.mov64_imm(R3, 0);
    a.mov64_imm(R4, 0);
    a.call(Helper::RedirectNeigh);
    a.exit();

    a.bind(passed);
    count(&mut a, LaneCounter::TxPassed, None);
    a.bind(next);
    a.mov64_imm(R0, TCX_NEXT);
    a.exit();

    a.bind(error);
    count(&mut a, LaneCounter::TxErrors, None);
    a.mov64_imm(R0, TCX_DROP);
    a.exit();

    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_link_kinds_assemble() {
        for link in [LinkKind::L3, LinkKind::Ethernet] {
            let p = egress_program(link).unwrap();
            assert_eq!(p.map_slots(), 4);
            // Only these helpers: nothing GPL-only (fib_lookup, check_mtu) is called.
            let mut helpers = p.helpers();
            helpers.sort_unstable();
            let mut want = vec![1, 9, 10, 26, 28, 34, 50, 152];
            if link == LinkKind::L3 {
                want.push(43);
            }
            want.sort_unstable();
            assert_eq!(helpers, want, "{link:?}");
            assert!(p.insns().len() < 400);
        }
    }

    /// Every path to the underlay passes the encapsulation: the only redirect call comes
    /// after the adjust_room call and the header store.
    #[test]
    fn the_redirect_follows_the_encapsulation() {
        let p = egress_program(LinkKind::L3).unwrap();
        let pos = |id: i32| p.insns().iter().position(|i| i.code == 0x85 && i.imm == id);
        let adjust = pos(50).unwrap();
        let head = pos(43).unwrap();
        let redirect = pos(152).unwrap();
        let last_store = p
            .insns()
            .iter()
            .rposition(|i| i.code == 0x85 && i.imm == 9)
            .unwrap();
        assert!(adjust < head && head < last_store && last_store < redirect);
    }

    #[test]
    fn listings_match_the_golden_files() {
        let l3 = egress_program(LinkKind::L3).unwrap().listing();
        crate::express::check_golden("egress_l3.lst", &l3);
        let eth = egress_program(LinkKind::Ethernet).unwrap().listing();
        crate::express::check_golden("egress_ethernet.lst", &eth);
    }

    #[test]
    fn listing_names_every_helper() {
        let text = egress_program(LinkKind::L3).unwrap().listing();
        for name in [
            "skb_load_bytes#26",
            "get_hash_recalc#34",
            "skb_adjust_room#50",
            "skb_change_head#43",
            "l3_csum_replace#10",
            "csum_diff#28",
            "skb_store_bytes#9",
            "redirect_neigh#152",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
