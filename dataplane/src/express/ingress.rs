//! The ingress program: flannel's receive path for one datagram, with the same checks as the
//! workers (`forward::udp_to_tun`), delivering straight to a local container.
//!
//! Attached (tcx ingress) to each underlay interface the workers admit datagrams from, it
//! takes only unfragmented, option-less IPv4/UDP datagrams to our PublicIP and port whose
//! outer header is whole and valid, in untagged frames addressed to the interface's own MAC; everything else is handed on unchanged (`TCX_NEXT`) and
//! the stack treats it as before. A datagram it takes is then, in the workers' order:
//!
//! - parsed: the payload must be one whole IPv4 packet (`drop_too_short`, `drop_not_ipv4`,
//!   `drop_bad_ihl`, `drop_bad_length`) — except that a GRO/GSO batch of several datagrams
//!   (`gso_size` set, lengths not matching) is left to the socket path, which splits it, and
//!   so is any GSO skb unless the underlay is a veth (where an express sender's super-packet
//!   arrives whole; elsewhere only GRO makes them, and a batch's first length can be crafted);
//! - checked against the route table: the sender holds a lease that is not ours, the inner
//!   destination is in our subnet, the inner source lies in the sender's subnet unless the
//!   spoof check is off. A datagram failing one of these is handed to the socket path
//!   unchanged (`RxPassed`): the workers read the newest table generation and drop it with
//!   their counter (`drop_unknown_sender`, `drop_from_self`, `drop_dst_not_local`,
//!   `drop_spoofed_src`), or deliver it if a lease appeared since the maps were last written;
//!   then TTL > 1 (`drop_rx_ttl_expired`);
//! - decapsulated (`bpf_skb_adjust_room(−28, MAC, FIXED_GSO)`: a GSO super-packet keeps the
//!   sender's MSS), inner TTL − 1 (flannel's receive-side decrement), one level of
//!   `CHECKSUM_UNNECESSARY` consumed (it covered the outer UDP);
//! - delivered: to a known local endpoint (a container behind a veth, [`super::endpoints`])
//!   with the Ethernet addresses rewritten and `bpf_redirect_peer` into the container's
//!   interface (no host routing, no bridge, no segmentation); otherwise, if the datagram has
//!   no UDP checksum (an express sender's), to the host's stack (`TCX_PASS`, `RxToStack`),
//!   which routes it as it would a packet the workers wrote into the TUN device, and if it has
//!   one (a socket's: flannel, the io_uring path), to the socket path unchanged, which checks
//!   it (on Linux 6.18 a BPF decapsulation leaves the skb marked as a UDP tunnel
//!   packet, so a bridge then segments and checksums it in software: correct, slower; the
//!   learner makes that the exception).

#![forbid(unsafe_code)]

use crate::bpf_asm::{Alu, Asm, AsmError, Cond, Helper, Label, Program, Size};
use crate::bpf_asm::{R0, R1, R10, R2, R3, R4, R5, R6, R7, R8, R9};
use crate::express::emit::{count, decrement_ttl, lookup, KEY};
use crate::express::layout::{
    cfg, skb, slot, Endpoint, LaneCounter, BPF_ADJ_ROOM_MAC, BPF_CSUM_LEVEL_DEC,
    BPF_F_ADJ_ROOM_DECAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, ENCAP_LEN, ETH_LEN, ETH_P_IP_RAW,
    SENDER_HOLDS_OUR_SUBNET, TCX_DROP, TCX_NEXT, TCX_PASS,
};

// Stack slots (r10 − 8 is the map key, `emit::KEY`).
/// The outer IPv4 header, UDP header and inner IPv4 header, copied to the stack (48 bytes).
const OUTER: i16 = -56;
const UDP: i16 = -36;
const INNER: i16 = -28;
/// Bytes copied: outer IPv4 (20, no options) + UDP (8) + inner IPv4 (20).
const HEADERS: i32 = 48;

/// After decapsulation the inner header follows the 14 MAC bytes.
const INNER_TTL_AT: i32 = ETH_LEN + 8;
const INNER_CSUM_AT: i32 = ETH_LEN + 10;

/// Builds the ingress program; maps in the order of [`crate::express::layout::slot`]:
/// `cfg`, `peers`, `stats`, `senders`, `endpoints`.
pub fn ingress_program() -> Result<Program, AsmError> {
    let mut a = Asm::new();
    let next = a.label();
    let passed = a.label();
    let error = a.label();
    let to_stack = a.label();
    let drops: Vec<(Label, LaneCounter)> = [
        LaneCounter::DropTooShort,
        LaneCounter::DropNotIpv4,
        LaneCounter::DropBadIhl,
        LaneCounter::DropBadLength,
        LaneCounter::DropRxTtlExpired,
    ]
    .into_iter()
    .map(|c| (a.label(), c))
    .collect();
    let drop_as = |c: LaneCounter| {
        drops
            .iter()
            .find(|(_, d)| *d == c)
            .map(|(l, _)| *l)
            .unwrap()
    };

    a.mov64_reg(R6, R1);
    a.ldx_w(R2, R6, skb::PROTOCOL);
    a.jcc_imm(Cond::Ne, R2, ETH_P_IP_RAW, next);
    // Only frames for this interface itself: not another VLAN's (the VLAN device is the
    // arrival interface the workers would see), not another MAC's (promiscuous, macvlan).
    a.ldx_w(R2, R6, skb::PKT_TYPE);
    a.jcc_imm(Cond::Ne, R2, 0, next);
    a.ldx_w(R2, R6, skb::VLAN_PRESENT);
    a.jcc_imm(Cond::Ne, R2, 0, next);
    a.st_imm(Size::W, R10, KEY, 0);
    lookup(&mut a, slot::CFG);
    a.jcc_imm(Cond::Eq, R0, 0, next);
    a.mov64_reg(R7, R0);
    a.ldx_w(R2, R7, cfg::ENABLED);
    a.jcc_imm(Cond::Eq, R2, 0, next);

    // Outer IPv4, UDP and inner IPv4 headers onto the stack; too short → not ours.
    a.mov64_reg(R1, R6);
    a.mov64_imm(R2, ETH_LEN);
    a.mov64_reg(R3, R10);
    a.alu64_imm(Alu::Add, R3, i32::from(OUTER));
    a.mov64_imm(R4, HEADERS);
    a.call(Helper::SkbLoadBytes);
    a.jcc_imm(Cond::Ne, R0, 0, next);

    // Ours only if: IPv4 without options, UDP, not a fragment, to our PublicIP and port.
    a.ldx_b(R2, R10, OUTER);
    a.jcc_imm(Cond::Ne, R2, 0x45, next);
    a.ldx_b(R2, R10, OUTER + 9);
    a.jcc_imm(Cond::Ne, R2, i32::from(libc::IPPROTO_UDP as u8), next);
    a.ldx_h(R2, R10, OUTER + 6);
    // MF and the fragment offset, as a little-endian load of the wire bytes sees them.
    a.jcc_imm(
        Cond::Set,
        R2,
        i32::from(u16::from_ne_bytes(0x3fffu16.to_be_bytes())),
        next,
    );
    a.ldx_w(R2, R10, OUTER + 16);
    a.ldx_w(R3, R7, cfg::OUR_IP);
    a.jcc_reg(Cond::Ne, R2, R3, next);
    a.ldx_h(R2, R10, UDP + 2);
    a.ldx_w(R3, R7, cfg::PORT);
    a.jcc_reg(Cond::Ne, R2, R3, next);
    // r8 = outer total length: whole in the skb; r9 = UDP length = total − 20.
    a.ldx_h(R8, R10, OUTER + 2);
    a.be16(R8);
    a.ldx_w(R2, R6, skb::LEN);
    a.mov64_reg(R3, R8);
    a.alu64_imm(Alu::Add, R3, ETH_LEN);
    a.jcc_reg(Cond::Gt, R3, R2, next);
    a.ldx_h(R9, R10, UDP + 4);
    a.be16(R9);
    a.mov64_reg(R3, R8);
    a.alu64_imm(Alu::Sub, R3, 20);
    a.jcc_reg(Cond::Ne, R9, R3, next);
    // A valid outer header checksum (else the stack drops it and counts it).
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
    a.alu64_imm(Alu::And, R0, 0xffff);
    a.alu64_reg(Alu::Add, R0, R1);
    a.jcc_imm(Cond::Ne, R0, 0xffff, next);

    // ---- A flannel datagram for us: the lane decides from here. r9 = payload length. ----
    a.alu64_imm(Alu::Sub, R9, 8);
    count(&mut a, LaneCounter::RxPackets, None);
    count(&mut a, LaneCounter::RxBytes, Some(R9));

    // The payload must be one whole IPv4 packet (Ipv4View::parse's checks).
    a.jcc_imm(Cond::Lt, R9, 20, drop_as(LaneCounter::DropTooShort));
    a.ldx_b(R2, R10, INNER);
    a.mov64_reg(R3, R2);
    a.alu64_imm(Alu::Rsh, R3, 4);
    a.jcc_imm(Cond::Ne, R3, 4, drop_as(LaneCounter::DropNotIpv4));
    a.alu64_imm(Alu::And, R2, 0x0f);
    a.alu64_imm(Alu::Lsh, R2, 2);
    a.jcc_imm(Cond::Lt, R2, 20, drop_as(LaneCounter::DropBadIhl));
    a.jcc_reg(Cond::Gt, R2, R9, drop_as(LaneCounter::DropBadIhl));
    let length_ok = a.label();
    a.ldx_h(R2, R10, INNER + 2);
    a.be16(R2);
    a.jcc_reg(Cond::Eq, R2, R9, length_ok);
    // Several datagrams in one GRO/GSO skb: the socket path splits them.
    a.ldx_w(R3, R6, skb::GSO_SIZE);
    a.jcc_imm(Cond::Ne, R3, 0, passed);
    a.ja(drop_as(LaneCounter::DropBadLength));
    a.bind(length_ok);
    // A GSO skb is one whole tunnel super-packet only where an express sender's crosses
    // unsegmented (a veth underlay: FLAG_GSO_WHOLE); elsewhere it is a GRO batch, whose first
    // length may have been crafted to span the batch: the socket path splits and checks it.
    let whole = a.label();
    a.ldx_w(R3, R6, skb::GSO_SIZE);
    a.jcc_imm(Cond::Eq, R3, 0, whole);
    a.ldx_w(R3, R7, cfg::FLAGS);
    a.jcc_imm(Cond::Set, R3, cfg::FLAG_GSO_WHOLE, whole);
    a.ja(passed);
    a.bind(whole);

    // The checks that depend on the route table: failing one hands the datagram to the socket
    // path unchanged, whose workers hold the newest table generation (this program's maps
    // follow it within a table-loop turn): they drop and count it, or deliver it if the table
    // changed in between. The lane is never stricter or laxer than the workers for long.
    // The sender holds a lease, and not ours.
    a.ldx_w(R2, R10, OUTER + 12);
    a.stx(Size::W, R10, KEY, R2);
    lookup(&mut a, slot::SENDERS);
    a.jcc_imm(Cond::Eq, R0, 0, passed);
    a.ldx_w(R2, R0, 0);
    a.jcc_imm(Cond::Set, R2, SENDER_HOLDS_OUR_SUBNET as i32, passed);

    // The inner destination is in our subnet.
    a.ldx_w(R3, R10, INNER + 16);
    a.be32(R3);
    a.ldx_w(R4, R7, cfg::OUR_MASK);
    a.alu64_reg(Alu::And, R3, R4);
    a.ldx_w(R4, R7, cfg::OUR_SUBNET);
    a.jcc_reg(Cond::Ne, R3, R4, passed);

    // The inner source lies in the sender's subnet: the route table's entry for it names the
    // outer source.
    let spoof_ok = a.label();
    let spoofed = passed;
    a.ldx_w(R2, R7, cfg::FLAGS);
    a.alu64_imm(Alu::And, R2, cfg::FLAG_SPOOF_CHECK);
    a.jcc_imm(Cond::Eq, R2, 0, spoof_ok);
    a.ldx_w(R3, R10, INNER + 12);
    a.be32(R3);
    a.ldx_w(R4, R7, cfg::NETWORK);
    a.alu32_reg(Alu::Sub, R3, R4);
    a.ldx_w(R4, R7, cfg::SHIFT);
    a.alu64_reg(Alu::Rsh, R3, R4);
    a.ldx_w(R4, R7, cfg::ENTRIES);
    a.jcc_reg(Cond::Ge, R3, R4, spoofed);
    a.stx(Size::W, R10, KEY, R3);
    lookup(&mut a, slot::PEERS);
    a.jcc_imm(Cond::Eq, R0, 0, spoofed);
    a.ldx_w(R2, R0, 0);
    a.ldx_w(R3, R10, OUTER + 12);
    a.jcc_reg(Cond::Ne, R2, R3, spoofed);
    a.bind(spoof_ok);

    a.ldx_b(R2, R10, INNER + 8);
    a.jcc_imm(Cond::Le, R2, 1, drop_as(LaneCounter::DropRxTtlExpired));

    // r8 = the destination's local endpoint, or 0: then the stack delivers it, if the
    // datagram carries no UDP checksum (an express sender's); one with a checksum is the
    // socket path's, which verifies it (and the kernel's checksum state of a datagram a
    // local socket sent refers to the outer header this program would remove).
    a.ldx_w(R2, R10, INNER + 16);
    a.stx(Size::W, R10, KEY, R2);
    lookup(&mut a, slot::ENDPOINTS);
    a.mov64_reg(R8, R0);
    let decap = a.label();
    a.jcc_imm(Cond::Ne, R8, 0, decap);
    a.ldx_h(R2, R10, UDP + 6);
    a.jcc_imm(Cond::Ne, R2, 0, passed);
    a.ldx_w(R2, R7, cfg::FLAGS);
    a.jcc_imm(Cond::Set, R2, cfg::FLAG_STACK_DELIVERY, decap);
    a.ja(passed);
    a.bind(decap);

    // Decapsulate; refused → still unchanged, the socket path takes it.
    a.mov64_reg(R1, R6);
    a.mov64_imm(R2, -ENCAP_LEN);
    a.mov64_imm(R3, BPF_ADJ_ROOM_MAC);
    a.mov64_imm(R4, BPF_F_ADJ_ROOM_FIXED_GSO);
    a.call(Helper::SkbAdjustRoom);
    a.jcc_imm(Cond::Ne, R0, 0, passed);

    // ---- Modified from here: failures drop. ----
    // Inner TTL − 1 (flannel's receive-side decrement).
    decrement_ttl(&mut a, INNER + 8, INNER_TTL_AT, INNER_CSUM_AT, error);
    // The NIC's "checksum verified" covered the outer UDP, not the inner packet.
    a.mov64_reg(R1, R6);
    a.mov64_imm(R2, BPF_CSUM_LEVEL_DEC);
    a.call(Helper::CsumLevel);
    a.jcc_imm(Cond::Eq, R8, 0, to_stack);
    // Destination MAC = the container's, source = the gateway's.
    a.mov64_reg(R1, R6);
    a.mov64_imm(R2, 0);
    a.mov64_reg(R3, R8);
    a.alu64_imm(Alu::Add, R3, Endpoint::MACS);
    a.mov64_imm(R4, 12);
    a.mov64_imm(R5, 0);
    a.call(Helper::SkbStoreBytes);
    a.jcc_imm(Cond::Ne, R0, 0, error);
    a.ldx_w(R1, R8, 0);
    a.mov64_imm(R2, 0);
    a.call(Helper::RedirectPeer);
    a.exit();

    for (l, c) in &drops {
        a.bind(*l);
        count(&mut a, *c, None);
        a.mov64_imm(R0, TCX_DROP);
        a.exit();
    }
    a.bind(to_stack);
    count(&mut a, LaneCounter::RxToStack, None);
    a.mov64_imm(R0, TCX_PASS);
    a.exit();
    a.bind(error);
    count(&mut a, LaneCounter::RxErrors, None);
    a.mov64_imm(R0, TCX_DROP);
    a.exit();
    a.bind(passed);
    count(&mut a, LaneCounter::RxPassed, None);
    a.bind(next);
    a.mov64_imm(R0, TCX_NEXT);
    a.exit();

    a.finish()
}

/// A program that only asks the kernel to decapsulate 28 bytes with
/// [`BPF_F_ADJ_ROOM_DECAP_L4_UDP`] and returns the helper's answer: run once over a flannel
/// datagram (`BPF_PROG_TEST_RUN`), 0 means the kernel has the flag, `-EINVAL` that it does
/// not (unknown flags are refused before the packet is touched).
pub fn decap_l4_udp_probe() -> Result<Program, AsmError> {
    let mut a = Asm::new();
    a.mov64_imm(R2, -ENCAP_LEN);
    a.mov64_imm(R3, BPF_ADJ_ROOM_MAC);
    a.mov64_imm(R4, BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L4_UDP);
    a.call(Helper::SkbAdjustRoom);
    a.exit();
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_with_only_non_gpl_helpers() {
        let p = ingress_program().unwrap();
        assert_eq!(p.map_slots(), 5);
        let mut helpers = p.helpers();
        helpers.sort_unstable();
        assert_eq!(helpers, vec![1, 9, 10, 26, 28, 50, 135, 155]);
    }

    #[test]
    fn listing_matches_the_golden_file() {
        crate::express::check_golden("ingress.lst", &ingress_program().unwrap().listing());
    }

    /// The redirect comes after the decapsulation and the MAC rewrite.
    #[test]
    fn the_redirect_follows_the_decapsulation() {
        let p = ingress_program().unwrap();
        let pos = |id: i32| p.insns().iter().position(|i| i.code == 0x85 && i.imm == id);
        assert!(pos(50).unwrap() < pos(155).unwrap());
        let last_store = p
            .insns()
            .iter()
            .rposition(|i| i.code == 0x85 && i.imm == 9)
            .unwrap();
        assert!(last_store < pos(155).unwrap());
    }
}
