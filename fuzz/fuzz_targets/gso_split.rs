//! `gso::split` (TSO/USO super-packet → MTU-sized IPv4 packets) and `gso::finish_checksum`
//! on any input: never panic, never write past the output buffer; on success every segment is
//! a valid IPv4 packet with correct IP and transport checksums, the payloads concatenate to the
//! original payload, TCP sequence numbers and IP ids advance as the kernel's TSO does. For a
//! bulk-TCP super-packet, GRO (`gro::Coalescer`) of the segments rebuilds one super-packet with
//! the same payload (the GSO → GRO round trip).
//!
//! Input: a super-packet built from fields (so the deep paths are reached) or raw bytes.

#![no_main]

use arbitrary::Arbitrary;
use flannel_dataplane::gro::Coalescer;
use flannel_dataplane::gso::{
    finish_checksum, split, VnetHdr, GSO_TCPV4, GSO_UDP_L4, VNET_HDR_LEN,
};
use flannel_dataplane::packet::{
    checksum_add, fold_checksum, pseudo_header_sum, Ipv4View, PROTO_TCP, PROTO_UDP, TCP_ACK,
    TCP_CWR, TCP_FIN, TCP_PSH,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Built {
    tcp: bool,
    ip_options: u8,
    tcp_options: u8,
    id: u16,
    seq: u32,
    flags: u8,
    payload_len: u16,
    addrs: [u8; 8],
    /// Poke one byte after building (index, value).
    poke: Option<(u16, u8)>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    pkt: Result<Built, Vec<u8>>,
    kind: Option<u8>,
    gso_size: u16,
    out_room: Option<u32>,
    csum: Option<(u16, u16)>,
    vnet: Vec<u8>,
}

fn build(b: &Built) -> Vec<u8> {
    let ihl = 20 + usize::from(b.ip_options % 11) * 4;
    let l4 = if b.tcp {
        20 + usize::from(b.tcp_options % 11) * 4
    } else {
        8
    };
    let payload = usize::from(b.payload_len) % (65535 - ihl - l4 + 1);
    let total = ihl + l4 + payload;
    let mut p = vec![0u8; total];
    p[0] = 0x40 | (ihl / 4) as u8;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&b.id.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = if b.tcp { PROTO_TCP } else { PROTO_UDP };
    p[12..20].copy_from_slice(&b.addrs);
    // NOP options.
    p[20..ihl].fill(1);
    if b.tcp {
        p[ihl + 4..ihl + 8].copy_from_slice(&b.seq.to_be_bytes());
        p[ihl + 12] = ((l4 / 4) as u8) << 4;
        p[ihl + 13] = b.flags;
        p[ihl + 14..ihl + 16].copy_from_slice(&65535u16.to_be_bytes());
        p[ihl + 20..ihl + l4].fill(1);
    } else {
        p[ihl + 4..ihl + 6].copy_from_slice(&((l4 + payload) as u16).to_be_bytes());
    }
    for (i, x) in p[ihl + l4..].iter_mut().enumerate() {
        *x = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0];
    }
    if let Some((at, v)) = b.poke {
        let at = usize::from(at);
        if at < p.len() {
            p[at] = v;
        }
    }
    p
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fuzz_target!(|input: Input| {
    let pkt = match &input.pkt {
        Ok(b) => build(b),
        Err(raw) => raw.clone(),
    };
    // The vnet header parser and writer agree.
    if let Some(h) = VnetHdr::parse(&input.vnet) {
        let mut out = [0u8; VNET_HDR_LEN];
        assert!(h.write(&mut out));
        assert_eq!(&out[..], &input.vnet[..VNET_HDR_LEN]);
        assert_eq!(VnetHdr::parse(&out), Some(h));
    }
    // finish_checksum: never out of bounds.
    if let Some((start, off)) = input.csum {
        let mut p = pkt.clone();
        let (start, off) = (usize::from(start), usize::from(off));
        let r = finish_checksum(&mut p, start, off);
        if r.is_ok() {
            // The field held the seed (a pseudo-header sum): the data plus that seed now
            // verifies. Only meaningful for a field on a 16-bit boundary of the sum.
            let seed = be16(&pkt, start + off);
            if off % 2 == 0 {
                assert_eq!(
                    fold_checksum(checksum_add(&p[start..], u64::from(seed))),
                    0xffff,
                    "finished checksum does not verify"
                );
            }
            for (i, (a, b)) in pkt.iter().zip(&p).enumerate() {
                if i != start + off && i != start + off + 1 {
                    assert_eq!(a, b, "finish_checksum changed byte {i}");
                }
            }
        } else {
            assert_eq!(p, pkt);
        }
    }

    let kind = input.kind.unwrap_or(if pkt.get(9) == Some(&PROTO_UDP) {
        GSO_UDP_L4
    } else {
        GSO_TCPV4
    });
    let gso_size = usize::from(input.gso_size);
    let room = input
        .out_room
        .map(|r| r as usize % (2 * 65536 + 4096))
        .unwrap_or(pkt.len() * 2 + 64 * 120 + 4096);
    let mut out = vec![0u8; room];
    let Ok(segs) = split(&pkt, kind, gso_size, &mut out) else {
        return;
    };

    // What split accepted.
    let proto = if kind == GSO_TCPV4 {
        PROTO_TCP
    } else {
        PROTO_UDP
    };
    assert!(kind == GSO_TCPV4 || kind == GSO_UDP_L4);
    let orig = Ipv4View::parse(&pkt).expect("split accepted an invalid IPv4 packet");
    assert_eq!(orig.protocol(), proto);
    assert_eq!(be16(&pkt, 6) & 0x3fff, 0, "fragment accepted");
    let ihl = orig.header_len();
    let l4_hdr = if proto == PROTO_TCP {
        usize::from(pkt[ihl + 12] >> 4) * 4
    } else {
        8
    };
    let hdr = ihl + l4_hdr;
    let payload = &pkt[hdr..];
    assert!(gso_size > 0);
    assert_eq!(segs.count, payload.len().div_ceil(gso_size).max(1));
    assert_eq!(segs.total, segs.count * hdr + payload.len());
    assert!(segs.total <= out.len());

    let mut joined = Vec::with_capacity(payload.len());
    for i in 0..segs.count {
        let s = &out[segs.range(i)];
        let v = Ipv4View::parse(s).expect("segment is a valid IPv4 packet");
        assert_eq!(v.header_len(), ihl);
        assert_eq!(
            fold_checksum(checksum_add(v.header(), 0)),
            0xffff,
            "segment {i}: IP header checksum"
        );
        let l4 = v.payload();
        let sum = checksum_add(
            l4,
            pseudo_header_sum(
                pkt[12..16].try_into().unwrap(),
                pkt[16..20].try_into().unwrap(),
                proto,
                l4.len(),
            ),
        );
        assert_eq!(
            fold_checksum(sum),
            0xffff,
            "segment {i}: transport checksum"
        );
        assert_eq!(be16(s, 4), be16(&pkt, 4).wrapping_add(i as u16), "IP id");
        // Everything else in the IP header is copied.
        assert_eq!(s[0..2], pkt[0..2]);
        assert_eq!(s[6..10], pkt[6..10]);
        assert_eq!(s[12..ihl], pkt[12..ihl]);
        if proto == PROTO_TCP {
            let seq0 = u32::from_be_bytes(pkt[ihl + 4..ihl + 8].try_into().unwrap());
            let seq = u32::from_be_bytes(s[ihl + 4..ihl + 8].try_into().unwrap());
            assert_eq!(seq, seq0.wrapping_add((i * gso_size) as u32), "TCP seq");
            let (f0, f) = (pkt[ihl + 13], s[ihl + 13]);
            let last = i + 1 == segs.count;
            let mut want = f0;
            if !last {
                want &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                want &= !TCP_CWR;
            }
            assert_eq!(f, want, "TCP flags of segment {i}");
        } else {
            assert_eq!(usize::from(be16(s, ihl + 4)), l4.len(), "UDP length");
            assert_ne!(be16(s, ihl + 6), 0, "UDP checksum 0 means none");
        }
        let p = &s[hdr..];
        if i + 1 < segs.count {
            assert_eq!(p.len(), gso_size);
        }
        joined.extend_from_slice(p);
    }
    assert_eq!(joined, payload, "payload bytes");

    // GSO → GRO: bulk TCP (IHL 5, ACK only, some payload, at most 64 segments) coalesces back
    // into one super-packet carrying the same payload.
    let bulk = proto == PROTO_TCP
        && ihl == 20
        && pkt[ihl + 13] == TCP_ACK
        && !payload.is_empty()
        && segs.count <= 64;
    if bulk {
        let mut gro_out = vec![0u8; segs.total + segs.count * VNET_HDR_LEN];
        let mut writes = Vec::new();
        let mut c = Coalescer::new(&mut gro_out, &mut writes);
        for i in 0..segs.count {
            c.push(&out[segs.range(i)]).expect("room for every segment");
        }
        c.finish();
        assert_eq!(
            writes.len(),
            1,
            "bulk TCP did not coalesce into one write: {writes:?}"
        );
        let w = writes[0];
        assert_eq!(w.segments, segs.count);
        let mut sp = gro_out[w.offset + VNET_HDR_LEN..w.offset + w.len].to_vec();
        assert_eq!(&sp[hdr..], payload, "GRO payload");
        if segs.count > 1 {
            let h = VnetHdr::parse(&gro_out[w.offset..]).unwrap();
            assert_eq!(usize::from(h.gso_size), gso_size.min(payload.len()));
            assert_eq!(usize::from(h.hdr_len), hdr);
            finish_checksum(
                &mut sp,
                usize::from(h.csum_start),
                usize::from(h.csum_offset),
            )
            .unwrap();
            let l4 = &sp[ihl..];
            let sum = checksum_add(
                l4,
                pseudo_header_sum(
                    pkt[12..16].try_into().unwrap(),
                    pkt[16..20].try_into().unwrap(),
                    proto,
                    l4.len(),
                ),
            );
            assert_eq!(fold_checksum(sum), 0xffff, "GRO super-packet TCP checksum");
            assert_eq!(
                fold_checksum(checksum_add(&sp[..ihl], 0)),
                0xffff,
                "GRO super-packet IP checksum"
            );
        }
    }
});
