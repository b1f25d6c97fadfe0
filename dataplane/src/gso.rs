//! Pure segmentation offload logic: the 10-byte `virtio_net_hdr` that a TUN device opened with
//! `IFF_VNET_HDR` puts before every packet, finishing a partial checksum, and splitting a TCP
//! (TSO) or UDP (USO) IPv4 super-packet into MTU-sized IPv4 packets.
//!
//! Contract: no I/O, no allocation, no panics on any input. Every header field the splitter
//! needs is recomputed from the packet itself: `hdr_len` from the kernel is never trusted (the
//! IP IHL and the TCP data offset are), `gso_size` is bounds-checked, and every segment's IP
//! header checksum and transport checksum are computed from scratch.
//!
//! Per segment i (of n), as the kernel's own TSO/USO does:
//! - IPv4: total length, `id + i` (wrapping), header checksum;
//! - TCP: `seq + i * gso_size`; FIN and PSH only on the last segment, CWR only on the first;
//!   checksum over the pseudo-header, header and payload;
//! - UDP: length and checksum (0 becomes 0xffff).
//!
//! Segments are laid out back to back in the output buffer, each `seg_len` bytes except a
//! shorter last one, which is exactly the layout `UDP_SEGMENT` (UDP GSO) sends as one
//! `sendmsg`: every resulting datagram is one whole inner IPv4 packet, so flannel peers see
//! plain flannel traffic.

#![forbid(unsafe_code)]

use crate::packet::{
    checksum_add, fold_checksum, Ipv4View, TcpView, UdpView, PROTO_TCP, PROTO_UDP, TCP_CWR,
    TCP_FIN, TCP_PSH, UDP_HEADER_LEN,
};

/// Size of `struct virtio_net_hdr` (without `num_buffers`), the TUN default.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`.
pub const F_DATA_VALID: u8 = 2;
/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

/// The `virtio_net_hdr` fields. Multi-byte fields are in native byte order (legacy virtio, the
/// TUN default without `TUNSETVNETLE`/`TUNSETVNETBE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header at the start of `buf` (`None` when shorter than [`VNET_HDR_LEN`]).
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let b = buf.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `out` (false when too short).
    pub fn write(&self, out: &mut [u8]) -> bool {
        let Some(b) = out.get_mut(..VNET_HDR_LEN) else {
            return false;
        };
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        true
    }

    /// The GSO type without the ECN bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }
}

/// Why a packet from the TUN device could not be finished or split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoError {
    /// Not a well-formed IPv4 packet of the announced kind (short, bad IHL/length, fragment,
    /// transport header out of bounds, wrong protocol).
    Malformed,
    /// A GSO type we do not split (IPv6, legacy UFO, unknown).
    Unsupported,
    /// `gso_size` is zero or the segments would not fit the output buffer.
    NoRoom,
    /// `csum_start`/`csum_offset` point outside the packet.
    BadChecksumOffsets,
}

/// Completes a `NEEDS_CSUM` checksum in place: the one's complement sum from `csum_start` to
/// the end (the field holds the pseudo-header seed) is complemented into the field.
pub fn finish_checksum(
    pkt: &mut [u8],
    csum_start: usize,
    csum_offset: usize,
) -> Result<(), GsoError> {
    let field = csum_start
        .checked_add(csum_offset)
        .filter(|&f| f + 2 <= pkt.len() && csum_start < pkt.len())
        .ok_or(GsoError::BadChecksumOffsets)?;
    let sum = fold_checksum(checksum_add(&pkt[csum_start..], 0));
    pkt[field..field + 2].copy_from_slice(&(!sum).to_be_bytes());
    Ok(())
}

/// The result of [`split`]: `count` segments in `out[..total]`, each `seg_len` bytes except
/// possibly the last (`total - (count - 1) * seg_len` bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub count: usize,
    pub seg_len: usize,
    pub total: usize,
}

impl Segments {
    /// Byte range of segment `i` in the output buffer.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        let start = i * self.seg_len;
        start..(start + self.seg_len).min(self.total)
    }
}

/// Splits the IPv4 TCP or UDP super-packet `pkt` (without its vnet header) into segments of
/// `gso_size` payload bytes, written back to back into `out`. `kind` is [`GSO_TCPV4`] or
/// [`GSO_UDP_L4`] (from [`VnetHdr::gso_kind`]). A packet whose payload fits in one segment
/// yields one segment with complete checksums.
pub fn split(pkt: &[u8], kind: u8, gso_size: usize, out: &mut [u8]) -> Result<Segments, GsoError> {
    let proto = match kind {
        GSO_TCPV4 => PROTO_TCP,
        GSO_UDP_L4 => PROTO_UDP,
        _ => return Err(GsoError::Unsupported),
    };
    let ip = Ipv4View::parse(pkt).map_err(|_| GsoError::Malformed)?;
    if ip.protocol() != proto || ip.is_fragment() {
        return Err(GsoError::Malformed);
    }
    let ihl = ip.header_len();
    let (l4_hdr, seq0, flags0) = if proto == PROTO_TCP {
        let tcp = TcpView::parse(ip.payload()).ok_or(GsoError::Malformed)?;
        (tcp.header_len(), tcp.seq(), tcp.flags())
    } else {
        UdpView::parse(ip.payload()).ok_or(GsoError::Malformed)?;
        (UDP_HEADER_LEN, 0, 0)
    };
    let hdr = ihl + l4_hdr;
    if gso_size == 0 {
        return Err(GsoError::NoRoom);
    }
    let payload = &pkt[hdr..];
    let count = payload.len().div_ceil(gso_size).max(1);
    let seg_len = hdr + gso_size.min(payload.len());
    let total = count * hdr + payload.len();
    if total > out.len() || seg_len > usize::from(u16::MAX) {
        return Err(GsoError::NoRoom);
    }
    let id0 = ip.ident();

    let mut off = 0;
    for (i, chunk) in payload
        .chunks(gso_size)
        .chain(
            // An empty payload still yields one (header-only) segment.
            std::iter::once(&payload[..0]).filter(|_| payload.is_empty()),
        )
        .enumerate()
    {
        let len = hdr + chunk.len();
        let seg = &mut out[off..off + len];
        seg[..hdr].copy_from_slice(&pkt[..hdr]);
        seg[hdr..].copy_from_slice(chunk);
        // IPv4 header (a copy of the parsed one).
        let mut seg_ip = Ipv4View::new_unchecked(seg);
        seg_ip.set_total_len(len as u16);
        seg_ip.set_ident(id0.wrapping_add(i as u16));
        seg_ip.fill_checksum();
        // Transport header.
        let pseudo = seg_ip.pseudo_header(len - ihl);
        let l4 = seg_ip.payload_mut();
        if proto == PROTO_TCP {
            let mut tcp = TcpView::new_unchecked(l4);
            tcp.set_seq(seq0.wrapping_add((i * gso_size) as u32));
            let mut flags = flags0;
            if i + 1 < count {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                flags &= !TCP_CWR;
            }
            tcp.set_flags(flags);
            tcp.fill_checksum(pseudo);
        } else {
            let mut udp = UdpView::new_unchecked(l4);
            udp.set_len((len - ihl) as u16);
            udp.fill_checksum(pseudo);
        }
        off += len;
    }
    Ok(Segments {
        count,
        seg_len,
        total,
    })
}

/// How many segments of `seg_len` bytes one `UDP_SEGMENT` send may carry: at most
/// `max_segments` (the kernel's UDP_MAX_SEGMENTS, 64 on older kernels) and at most 65507
/// bytes of UDP payload in total (IPv4 datagram limit).
pub fn segments_per_send(seg_len: usize, max_segments: usize) -> usize {
    const MAX_UDP_PAYLOAD: usize = 65535 - 20 - 8;
    (MAX_UDP_PAYLOAD / seg_len.max(1)).clamp(1, max_segments.max(1))
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Independent checksum and packet builders for the golden tests (deliberately naive:
    //! 16-bit steps, nothing shared with the code under test).

    pub fn csum16(parts: &[&[u8]]) -> u16 {
        let mut bytes = Vec::new();
        for p in parts {
            bytes.extend_from_slice(p);
        }
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut s: u32 = 0;
        for c in bytes.chunks(2) {
            s += u32::from(c[0]) << 8 | u32::from(c[1]);
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    pub fn pseudo(p: &[u8], l4_len: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&p[12..20]);
        v.push(0);
        v.push(p[9]);
        v.extend_from_slice(&(l4_len as u16).to_be_bytes());
        v
    }

    /// Verifies IP and transport checksums of one IPv4 packet from scratch.
    pub fn verify(p: &[u8]) {
        let ihl = usize::from(p[0] & 15) * 4;
        assert_eq!(csum16(&[&p[..ihl]]), 0, "IP header checksum");
        assert_eq!(
            usize::from(u16::from_be_bytes([p[2], p[3]])),
            p.len(),
            "total length"
        );
        let l4 = &p[ihl..];
        assert_eq!(csum16(&[&pseudo(p, l4.len()), l4]), 0, "transport checksum");
    }

    /// IPv4 (IHL 5, DF, id 0x1000) + TCP (doff 8 with a 12-byte timestamp option) with the
    /// given payload; complete checksums.
    pub fn tcp(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 32];
        p[0] = 0x45;
        p[4..6].copy_from_slice(&0x1000u16.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 1, 15, 2]);
        p[16..20].copy_from_slice(&[10, 1, 16, 2]);
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&0xabcd_0001u32.to_be_bytes());
        t[12] = 8 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]);
        p.extend_from_slice(payload);
        fix(&mut p);
        p
    }

    /// IPv4 + UDP with the given payload; complete checksums.
    pub fn udp(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[4..6].copy_from_slice(&0x2000u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 1, 15, 2]);
        p[16..20].copy_from_slice(&[10, 1, 16, 2]);
        p[20..22].copy_from_slice(&5000u16.to_be_bytes());
        p[22..24].copy_from_slice(&6000u16.to_be_bytes());
        p.extend_from_slice(payload);
        fix(&mut p);
        p
    }

    /// Recomputes lengths and checksums of an IHL-5 TCP or UDP packet.
    pub fn fix(p: &mut [u8]) {
        let len = p.len();
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let c = csum16(&[&p[..20]]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let l4_len = len - 20;
        let ps = pseudo(p, l4_len);
        if p[9] == 6 {
            p[36..38].copy_from_slice(&[0, 0]);
            let c = csum16(&[&ps, &p[20..]]);
            p[36..38].copy_from_slice(&c.to_be_bytes());
        } else {
            p[24..26].copy_from_slice(&(l4_len as u16).to_be_bytes());
            p[26..28].copy_from_slice(&[0, 0]);
            let c = csum16(&[&ps, &p[20..]]);
            p[26..28].copy_from_slice(&c.to_be_bytes());
        }
    }

    pub fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::packet::{pseudo_header_sum, TCP_ACK};

    #[test]
    fn vnet_header_roundtrip() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1420,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; 10];
        assert!(h.write(&mut b));
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(VnetHdr::parse(&b[..9]), None);
        assert!(!h.write(&mut [0u8; 9]));
        // Native byte order, as the kernel lays it out.
        assert_eq!(&b[4..6], &1420u16.to_ne_bytes());
    }

    #[test]
    fn tcp_split_golden() {
        let payload = pattern(3000);
        let mut sup = tcp(1_000_000, TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR, &payload);
        // As TUN hands it over: checksum field holds only the pseudo-header seed.
        sup[36..38].copy_from_slice(&[0x12, 0x34]);
        let mut out = vec![0u8; 8192];
        let s = split(&sup, GSO_TCPV4, 1400, &mut out).unwrap();
        assert_eq!(s.count, 3);
        assert_eq!(s.seg_len, 52 + 1400);
        assert_eq!(s.total, 3 * 52 + 3000);
        let mut rebuilt = Vec::new();
        for i in 0..3 {
            let seg = &out[s.range(i)];
            verify(seg);
            let plen = [1400, 1400, 200][i];
            assert_eq!(seg.len(), 52 + plen);
            // Header bytes other than length/id/checksum/seq/flags/tcp-checksum are copied.
            assert_eq!(&seg[6..10], &sup[6..10]);
            assert_eq!(&seg[12..20], &sup[12..20]);
            assert_eq!(
                u16::from_be_bytes([seg[4], seg[5]]),
                0x1000 + i as u16,
                "IP id"
            );
            let seq = u32::from_be_bytes([seg[24], seg[25], seg[26], seg[27]]);
            assert_eq!(seq, 1_000_000 + 1400 * i as u32);
            assert_eq!(&seg[28..33], &sup[28..33], "ack, data offset");
            assert_eq!(&seg[34..36], &sup[34..36], "window");
            assert_eq!(&seg[40..52], &sup[40..52], "options");
            let want_flags = match i {
                0 => TCP_ACK | TCP_CWR,
                1 => TCP_ACK,
                _ => TCP_ACK | TCP_PSH | TCP_FIN,
            };
            assert_eq!(seg[33], want_flags, "flags of segment {i}");
            rebuilt.extend_from_slice(&seg[52..]);
        }
        assert_eq!(rebuilt, payload);
        // Golden bytes of the first segment's IP header (checksum computed independently).
        let seg0 = &out[s.range(0)];
        let mut want = vec![
            0x45, 0, 0x05, 0xac, 0x10, 0x00, 0x40, 0, 64, 6, 0, 0, 10, 1, 15, 2, 10, 1, 16, 2,
        ];
        let c = csum16(&[&want]);
        want[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(&seg0[..20], &want[..]);
    }

    #[test]
    fn tcp_split_exact_multiple_and_single() {
        let sup = tcp(7, TCP_ACK, &pattern(2800));
        let mut out = vec![0u8; 8192];
        let s = split(&sup, GSO_TCPV4, 1400, &mut out).unwrap();
        assert_eq!((s.count, s.total), (2, 2 * 52 + 2800));
        assert_eq!(out[s.range(1)].len(), 1452);
        // Fits in one segment: one packet, checksums complete.
        let small = tcp(7, TCP_ACK | TCP_PSH, &pattern(100));
        let s = split(&small, GSO_TCPV4, 1400, &mut out).unwrap();
        assert_eq!(s.count, 1);
        assert_eq!(&out[s.range(0)], &small[..]);
    }

    #[test]
    fn udp_split_golden() {
        let payload = pattern(2500);
        let sup = udp(&payload);
        let mut out = vec![0u8; 8192];
        let s = split(&sup, GSO_UDP_L4, 1000, &mut out).unwrap();
        assert_eq!((s.count, s.seg_len), (3, 1028));
        for i in 0..3 {
            let seg = &out[s.range(i)];
            verify(seg);
            assert_eq!(
                usize::from(u16::from_be_bytes([seg[24], seg[25]])),
                seg.len() - 20,
                "UDP length"
            );
            assert_eq!(&seg[28..], &payload[i * 1000..(i * 1000 + 1000).min(2500)]);
            assert_eq!(u16::from_be_bytes([seg[4], seg[5]]), 0x2000 + i as u16);
        }
    }

    #[test]
    fn split_rejects_bad_input() {
        let good = tcp(1, TCP_ACK, &pattern(3000));
        let mut out = vec![0u8; 8192];
        assert_eq!(
            split(&good, GSO_TCPV6, 1400, &mut out),
            Err(GsoError::Unsupported)
        );
        assert_eq!(
            split(&good, GSO_UDP_L4, 1400, &mut out),
            Err(GsoError::Malformed)
        );
        assert_eq!(split(&good, GSO_TCPV4, 0, &mut out), Err(GsoError::NoRoom));
        assert_eq!(split(&good, GSO_TCPV4, 1, &mut out), Err(GsoError::NoRoom));
        assert_eq!(
            split(&good, GSO_TCPV4, 1400, &mut out[..100]),
            Err(GsoError::NoRoom)
        );
        let mut frag = good.clone();
        frag[7] = 1;
        assert_eq!(
            split(&frag, GSO_TCPV4, 1400, &mut out),
            Err(GsoError::Malformed)
        );
        let mut doff = good.clone();
        doff[32] = 0xf0; // 60-byte TCP header is fine ...
        assert!(split(&doff[..20 + 50], GSO_TCPV4, 1400, &mut out).is_err()); // ... if present
                                                                              // Never panics on any prefix or any first bytes.
        for n in 0..good.len().min(200) {
            for kind in [GSO_TCPV4, GSO_UDP_L4] {
                let _ = split(&good[..n], kind, 8, &mut out);
            }
        }
    }

    #[test]
    fn finish_checksum_completes_partial() {
        let mut p = udp(&pattern(333));
        let want = p.clone();
        // Kernel-style partial: the field holds the folded pseudo-header sum.
        let seed = fold_checksum(pseudo_header_sum(
            [10, 1, 15, 2],
            [10, 1, 16, 2],
            17,
            p.len() - 20,
        ));
        p[26..28].copy_from_slice(&seed.to_be_bytes());
        finish_checksum(&mut p, 20, 6).unwrap();
        assert_eq!(p, want);
        assert_eq!(
            finish_checksum(&mut p, 20, 5000),
            Err(GsoError::BadChecksumOffsets)
        );
        assert_eq!(
            finish_checksum(&mut p, usize::MAX, 6),
            Err(GsoError::BadChecksumOffsets)
        );
    }

    #[test]
    fn segments_per_send_limits() {
        assert_eq!(segments_per_send(1472, 64), 44);
        assert_eq!(segments_per_send(100, 64), 64);
        assert_eq!(segments_per_send(70000, 64), 1);
    }

    #[test]
    fn fast_checksum_matches_naive() {
        for n in [0usize, 1, 2, 3, 7, 8, 9, 15, 16, 17, 1499, 1500, 65535] {
            let d = pattern(n);
            assert_eq!(
                !fold_checksum(checksum_add(&d, 0)),
                csum16(&[&d]),
                "len {n}"
            );
        }
    }
}
