//! `gro::Coalescer` (UDP_GRO datagrams → TUN writes with a virtio_net_hdr) on any sequence of
//! packets and any output room: never panics, never writes out of bounds, loses nothing it
//! accepted. Every write is either one packet exactly as pushed behind a zero vnet header, or a
//! TCP super-packet (GSO_TCPV4 + NEEDS_CSUM, csum 20/16) whose payload is the concatenation of
//! the consecutive, in-order segments it replaced, with a valid IP header checksum, and which
//! `gso::split` turns back into those segments' payloads and sequence numbers.
//!
//! Input: packets built from fields around one TCP flow (so runs form, break and resume) or
//! raw bytes.

#![no_main]

use arbitrary::Arbitrary;
use flannel_dataplane::gro::{Coalescer, MAX_SEGMENTS};
use flannel_dataplane::gso::{
    finish_checksum, split, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, VNET_HDR_LEN,
};
use flannel_dataplane::packet::{checksum_add, fold_checksum, TCP_ACK, TCP_PSH};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Seg {
    Tcp {
        payload: u16,
        psh: bool,
        other_flags: Option<u8>,
        /// Skip this many bytes of sequence space before the segment.
        gap: Option<u16>,
        /// Another flow (different source port).
        other_flow: bool,
        options: u8,
        poke: Option<(u8, u8)>,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    segs: Vec<Seg>,
    room: Option<u32>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn seq_of(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[24], p[25], p[26], p[27]])
}

fn tcp_hdr_len(p: &[u8]) -> usize {
    20 + usize::from(p[32] >> 4) * 4
}

fuzz_target!(|input: Input| {
    let mut seq = 1_000_000u32;
    let mut pkts: Vec<Vec<u8>> = Vec::new();
    for (k, s) in input.segs.iter().take(200).enumerate() {
        match s {
            Seg::Raw(raw) => pkts.push(raw.iter().take(2000).copied().collect()),
            Seg::Tcp {
                payload,
                psh,
                other_flags,
                gap,
                other_flow,
                options,
                poke,
            } => {
                let doff = 20 + usize::from(options % 3) * 4;
                let len = 20 + doff + usize::from(payload % 1500);
                let mut p = vec![0u8; len];
                p[0] = 0x45;
                p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                p[4..6].copy_from_slice(&(k as u16).to_be_bytes());
                p[6] = 0x40;
                p[8] = 62;
                p[9] = 6;
                p[12..16].copy_from_slice(&[10, 1, 15, 2]);
                p[16..20].copy_from_slice(&[10, 1, 16, 2]);
                p[20..22]
                    .copy_from_slice(&(if *other_flow { 40001u16 } else { 40000 }).to_be_bytes());
                p[22..24].copy_from_slice(&5001u16.to_be_bytes());
                seq = seq.wrapping_add(u32::from(gap.unwrap_or(0)));
                p[24..28].copy_from_slice(&seq.to_be_bytes());
                seq = seq.wrapping_add((len - 20 - doff) as u32);
                p[28..32].copy_from_slice(&7u32.to_be_bytes());
                p[32] = ((doff / 4) as u8) << 4;
                p[33] = other_flags.unwrap_or(TCP_ACK | if *psh { TCP_PSH } else { 0 });
                p[34..36].copy_from_slice(&1000u16.to_be_bytes());
                p[40..20 + doff].fill(1);
                for (i, x) in p[20 + doff..].iter_mut().enumerate() {
                    *x = (k * 31 + i) as u8;
                }
                let ipsum = !fold_checksum(checksum_add(&p[..20], 0));
                p[10..12].copy_from_slice(&ipsum.to_be_bytes());
                if let Some((at, v)) = poke {
                    let at = usize::from(*at) % 60;
                    if at < p.len() {
                        p[at] = *v;
                    }
                }
                pkts.push(p);
            }
        }
    }

    let room = input
        .room
        .map(|r| r as usize % 300_000)
        .unwrap_or_else(|| pkts.iter().map(|p| p.len() + VNET_HDR_LEN).sum());
    let mut out = vec![0u8; room];
    let mut writes = Vec::new();
    let mut accepted: Vec<&[u8]> = Vec::new();
    let mut c = Coalescer::new(&mut out, &mut writes);
    for p in &pkts {
        if c.push(p).is_ok() {
            accepted.push(p);
        }
    }
    let used = c.finish();
    assert!(used <= out.len());

    let mut at = 0;
    let mut next = 0;
    for w in &writes {
        assert_eq!(w.offset, at, "writes are back to back");
        at += w.len;
        assert!(w.segments >= 1 && w.segments <= MAX_SEGMENTS);
        assert!(
            next + w.segments <= accepted.len(),
            "more segments than accepted packets"
        );
        let group = &accepted[next..next + w.segments];
        next += w.segments;
        let region = &out[w.offset..w.offset + w.len];
        let h = VnetHdr::parse(region).expect("vnet header");
        let sp = &region[VNET_HDR_LEN..];
        if w.segments == 1 {
            assert_eq!(h, VnetHdr::default(), "single packet behind a zero header");
            assert_eq!(sp, group[0], "single packet written as pushed");
            continue;
        }
        // A super-packet.
        assert_eq!(h.flags, F_NEEDS_CSUM);
        assert_eq!(h.gso_type, GSO_TCPV4);
        assert_eq!((h.csum_start, h.csum_offset), (20, 16));
        let first = group[0];
        let hdr = tcp_hdr_len(first);
        assert_eq!(usize::from(h.hdr_len), hdr);
        let gso = first.len() - hdr;
        assert_eq!(usize::from(h.gso_size), gso);
        assert!(sp.len() <= 65535);
        assert_eq!(
            usize::from(be16(sp, 2)),
            sp.len(),
            "super-packet total length"
        );
        assert_eq!(
            fold_checksum(checksum_add(&sp[..20], 0)),
            0xffff,
            "IP checksum"
        );
        let mut expect_seq = seq_of(first);
        let mut payload = Vec::new();
        for (i, p) in group.iter().enumerate() {
            assert_eq!(p[0], 0x45);
            assert_eq!(p[9], 6);
            assert_eq!(be16(p, 6) & 0x3fff, 0, "fragment coalesced");
            assert_eq!(tcp_hdr_len(p), hdr);
            assert_eq!(seq_of(p), expect_seq, "segment {i} out of order");
            let flags = p[33];
            assert!(
                flags & TCP_ACK != 0 && flags & !(TCP_ACK | TCP_PSH) == 0,
                "flags {flags:#x}"
            );
            if i + 1 < group.len() {
                assert_eq!(flags & TCP_PSH, 0, "PSH must close a run");
                assert_eq!(p.len() - hdr, gso, "inner segment of another size");
            } else {
                assert!(p.len() - hdr <= gso && p.len() > hdr);
            }
            // The fields GRO requires equal.
            assert_eq!(p[1], first[1]);
            assert_eq!(p[6], first[6]);
            assert_eq!(p[8..10], first[8..10]);
            assert_eq!(p[12..24], first[12..24]);
            assert_eq!(p[28..33], first[28..33]);
            assert_eq!(p[40..hdr], first[40..hdr]);
            expect_seq = expect_seq.wrapping_add((p.len() - hdr) as u32);
            payload.extend_from_slice(&p[hdr..]);
        }
        assert_eq!(&sp[hdr..], &payload[..], "super-packet payload");
        let psh = group.iter().any(|p| p[33] & TCP_PSH != 0);
        assert_eq!(sp[33] & TCP_PSH != 0, psh || first[33] & TCP_PSH != 0);

        // GSO undoes it.
        let mut whole = sp.to_vec();
        finish_checksum(&mut whole, 20, 16).expect("csum offsets inside");
        let mut segs_out = vec![0u8; whole.len() + group.len() * hdr];
        let segs = split(&whole, GSO_TCPV4, gso, &mut segs_out).expect("split the super-packet");
        assert_eq!(segs.count, group.len());
        for (i, p) in group.iter().enumerate() {
            let s = &segs_out[segs.range(i)];
            assert_eq!(seq_of(s), seq_of(p));
            assert_eq!(&s[hdr..], &p[hdr..]);
        }
    }
    assert_eq!(at, used, "writes cover exactly the used bytes");
    assert_eq!(next, accepted.len(), "every accepted packet is in a write");
});
