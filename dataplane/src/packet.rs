//! Pure packet logic: the protocol constants, one checked view per protocol ([`Ipv4View`],
//! [`TcpView`], [`UdpView`], each over any `T: AsRef<[u8]>`, with setters when
//! `T: AsMut<[u8]>` too), the Internet checksum, TTL decrement with an incremental checksum
//! update (RFC 1624), and the ICMP "destination net unreachable" builder. `forward`, `gso` and
//! `gro` read and write headers only through these views.
//!
//! Contract: nothing here does I/O, allocates on the hot path, or can panic on any input.
//! [`Ipv4View::parse`] validates once (length, version, IHL, total length); after that every
//! accessor reads inside the validated header. `new_unchecked` views (over headers copied from
//! a parsed packet) skip the checks; their accessors still cannot go out of bounds (a field
//! past the end reads as 0, a setter past the end writes nothing).

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

mod tcp;
mod udp;

pub use tcp::TcpView;
pub use udp::UdpView;

/// Smallest IPv4 header (IHL 5).
pub const IPV4_MIN_HEADER: usize = 20;
/// Smallest TCP header (data offset 5).
pub const TCP_MIN_HEADER: usize = 20;
/// The UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// IP protocol numbers.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// TCP flag bits ([`TcpView::flags`]).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;
/// TTL of the ICMP errors we originate.
pub const ICMP_ERROR_TTL: u8 = 64;
/// Bytes of the offending datagram's payload quoted in an ICMP error (RFC 792: 64 bits).
const ICMP_QUOTE_PAYLOAD: usize = 8;
/// Upper bound of an ICMP net-unreachable we build: 20 (IP) + 8 (ICMP) + 60 (max quoted header) + 8.
pub const ICMP_UNREACH_MAX: usize = IPV4_MIN_HEADER + 8 + 60 + ICMP_QUOTE_PAYLOAD;

/// Why a byte buffer is not an acceptable IPv4 packet. The names are the stats counter names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Fewer than 20 bytes.
    TooShort,
    /// Version nibble is not 4.
    NotIpv4,
    /// IHL below 5 or header longer than the buffer.
    BadIhl,
    /// Total-length field differs from the buffer length (or is shorter than the header).
    BadLength,
}

/// An IPv4 packet: validated by [`Ipv4View::parse`] (`buf` holds exactly one packet whose
/// header is inside the buffer and whose total-length field equals its length), or a header
/// taken as it is by [`Ipv4View::new_unchecked`].
#[derive(Debug, Clone, Copy)]
pub struct Ipv4View<T> {
    buf: T,
    header_len: usize,
}

impl<T: AsRef<[u8]>> Ipv4View<T> {
    /// Validates `buf` as one whole IPv4 packet.
    pub fn parse(buf: T) -> Result<Self, Malformed> {
        let b = buf.as_ref();
        let (Some(&vihl), true) = (b.first(), b.len() >= IPV4_MIN_HEADER) else {
            return Err(Malformed::TooShort);
        };
        if vihl >> 4 != 4 {
            return Err(Malformed::NotIpv4);
        }
        let header_len = usize::from(vihl & 0x0f) * 4;
        if header_len < IPV4_MIN_HEADER || header_len > b.len() {
            return Err(Malformed::BadIhl);
        }
        let total = usize::from(be16(b, 2));
        if total != b.len() {
            return Err(Malformed::BadLength);
        }
        Ok(Self { buf, header_len })
    }

    /// A view over a header known to be well formed (copied from a parsed packet), without the
    /// checks: the header length is the IHL's, at most the buffer.
    pub fn new_unchecked(buf: T) -> Self {
        let b = buf.as_ref();
        let header_len = (usize::from(byte(b, 0) & 0x0f) * 4).min(b.len());
        Self { buf, header_len }
    }

    pub fn header_len(&self) -> usize {
        self.header_len
    }
    pub fn total_len(&self) -> usize {
        self.buf.as_ref().len()
    }
    /// The type-of-service byte (DSCP and ECN).
    pub fn tos(&self) -> u8 {
        byte(self.buf.as_ref(), 1)
    }
    pub fn ident(&self) -> u16 {
        be16(self.buf.as_ref(), 4)
    }
    /// The three flag bits (reserved, DF, MF).
    pub fn flags(&self) -> u8 {
        byte(self.buf.as_ref(), 6) >> 5
    }
    pub fn ttl(&self) -> u8 {
        byte(self.buf.as_ref(), 8)
    }
    pub fn protocol(&self) -> u8 {
        byte(self.buf.as_ref(), 9)
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), 10)
    }
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::from(be32(self.buf.as_ref(), 12))
    }
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(be32(self.buf.as_ref(), 16))
    }
    /// Fragment offset in 8-byte units (0 for unfragmented packets and first fragments).
    pub fn fragment_offset(&self) -> u16 {
        be16(self.buf.as_ref(), 6) & 0x1fff
    }
    pub fn is_first_fragment(&self) -> bool {
        self.fragment_offset() == 0
    }
    /// Whether this is any fragment (MF set or a non-zero offset).
    pub fn is_fragment(&self) -> bool {
        be16(self.buf.as_ref(), 6) & 0x3fff != 0
    }
    /// The pseudo-header sum of this packet's addresses and protocol for a transport segment
    /// of `l4_len` bytes, as a [`checksum_add`] accumulator.
    pub fn pseudo_header(&self, l4_len: usize) -> u64 {
        let b = self.buf.as_ref();
        pseudo_header_sum(
            be32(b, 12).to_be_bytes(),
            be32(b, 16).to_be_bytes(),
            self.protocol(),
            l4_len,
        )
    }
    /// The header bytes (including options).
    pub fn header(&self) -> &[u8] {
        self.buf.as_ref().get(..self.header_len).unwrap_or(&[])
    }
    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        self.buf.as_ref().get(self.header_len..).unwrap_or(&[])
    }
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4View<T> {
    pub fn set_total_len(&mut self, v: u16) {
        put16(self.buf.as_mut(), 2, v);
    }
    pub fn set_ident(&mut self, v: u16) {
        put16(self.buf.as_mut(), 4, v);
    }
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buf.as_mut(), 10, v);
    }
    /// Computes the header checksum from scratch and stores it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = !fold_checksum(checksum_add(self.header(), 0));
        self.set_checksum(sum);
    }
    /// Everything after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let at = self.header_len;
        self.buf.as_mut().get_mut(at..).unwrap_or(&mut [])
    }
}

/// Outcome of [`decrement_ttl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// TTL decremented, checksum patched.
    Decremented,
    /// TTL was 0 or 1: the packet must be dropped.
    Expired,
}

/// Decrements the TTL of the IPv4 packet at the start of `buf` and patches the header checksum
/// incrementally (RFC 1624 eqn. 3), as flannel does on send and on receive. A buffer shorter
/// than 12 bytes is reported as expired (the caller validated it already; this never panics).
pub fn decrement_ttl(buf: &mut [u8]) -> Ttl {
    let (Some(&ttl), Some(&proto)) = (buf.get(8), buf.get(9)) else {
        return Ttl::Expired;
    };
    if ttl <= 1 {
        return Ttl::Expired;
    }
    let old_word = u16::from_be_bytes([ttl, proto]);
    let new_word = u16::from_be_bytes([ttl - 1, proto]);
    let hc = be16(buf, 10);
    let new_hc = checksum_adjust(hc, old_word, new_word);
    if let Some(b) = buf.get_mut(8) {
        *b = ttl - 1;
    }
    if let Some(c) = buf.get_mut(10..12) {
        c.copy_from_slice(&new_hc.to_be_bytes());
    }
    Ttl::Decremented
}

/// RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')` in one's complement arithmetic.
pub fn checksum_adjust(hc: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The Internet checksum (RFC 1071) of `data`: the one's complement of the one's complement sum.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Adds `data` to a running one's complement sum (big-endian 16-bit words; an odd final byte
/// is padded with zero). Finish with [`fold_checksum`]. Only the last chunk of a sum may have
/// odd length.
///
/// Inputs under 64 bytes (headers) are summed as big-endian 32-bit words. Longer ones: the one's
/// complement sum does not depend on byte order (RFC 1071 §2(B)), so `data` is summed
/// as native-endian 32-bit halves of 64-bit words in four independent accumulators (no byte
/// swaps, no carries lost: each accumulator gains < 2^33 per 8 bytes), folded to 16 bits and
/// swapped to network order once at the end.
pub fn checksum_add(data: &[u8], acc: u64) -> u64 {
    if data.len() < 64 {
        return checksum_add_short(data, acc);
    }
    #[inline(always)]
    fn word(c: &[u8]) -> u64 {
        let w = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        (w >> 32) + (w & 0xffff_ffff)
    }
    let mut a = [0u64; 4];
    let mut blocks = data.chunks_exact(32);
    for b in &mut blocks {
        a[0] += word(&b[0..8]);
        a[1] += word(&b[8..16]);
        a[2] += word(&b[16..24]);
        a[3] += word(&b[24..32]);
    }
    let mut sum = a[0] + a[1] + a[2] + a[3];
    let mut words = blocks.remainder().chunks_exact(8);
    for w in &mut words {
        sum += word(w);
    }
    let mut rest = words.remainder().chunks_exact(2);
    for c in &mut rest {
        sum += u64::from(u16::from_ne_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        // The pad byte follows it in memory, as in a big-endian word.
        sum += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    acc + u64::from(u16::from_be(fold_checksum(sum)))
}

/// [`checksum_add`] for headers: big-endian words straight into the accumulator (no final
/// fold and swap, which cost more than they save on a few words).
fn checksum_add_short(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut rest = words.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

/// Folds a [`checksum_add`] accumulator to 16 bits (not complemented).
pub fn fold_checksum(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The IPv4 pseudo-header sum (src, dst, protocol, L4 length) as a [`checksum_add`] accumulator.
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: usize) -> u64 {
    let s = u64::from(u32::from_be_bytes(src));
    let d = u64::from(u32::from_be_bytes(dst));
    s + d + u64::from(proto) + l4_len as u64
}

/// Whether an ICMP error may be sent about `pkt`: never about ICMP (any type, as flannel) and
/// never about a non-first fragment.
pub fn may_send_icmp_error<T: AsRef<[u8]>>(pkt: &Ipv4View<T>) -> bool {
    pkt.protocol() != PROTO_ICMP && pkt.is_first_fragment()
}

/// Writes an ICMP type 3 code 0 (destination net unreachable) about `offender` into `out`, from
/// `src` to the offender's source, quoting its header and the first 8 payload bytes. Returns
/// the packet length, or `None` when `out` is smaller than [`ICMP_UNREACH_MAX`] would need.
pub fn build_net_unreachable<T: AsRef<[u8]>>(
    offender: &Ipv4View<T>,
    src: Ipv4Addr,
    out: &mut [u8],
) -> Option<usize> {
    let hdr = offender.header();
    let payload = offender.payload();
    let quote_payload = payload.get(..ICMP_QUOTE_PAYLOAD.min(payload.len()))?;
    let icmp_len = 8 + hdr.len() + quote_payload.len();
    let total = IPV4_MIN_HEADER + icmp_len;
    let total16 = u16::try_from(total).ok()?;
    let pkt = out.get_mut(..total)?;
    pkt.fill(0);
    let (ip, icmp) = pkt.split_at_mut(IPV4_MIN_HEADER);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total16.to_be_bytes());
    ip[8] = ICMP_ERROR_TTL;
    ip[9] = PROTO_ICMP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&offender.src().octets());
    let ipsum = internet_checksum(ip);
    ip[10..12].copy_from_slice(&ipsum.to_be_bytes());
    icmp[0] = 3; // destination unreachable
    icmp[1] = 0; // net unreachable
    icmp[8..8 + hdr.len()].copy_from_slice(hdr);
    icmp[8 + hdr.len()..].copy_from_slice(quote_payload);
    let isum = internet_checksum(icmp);
    icmp[2..4].copy_from_slice(&isum.to_be_bytes());
    Some(total)
}

fn byte(buf: &[u8], at: usize) -> u8 {
    buf.get(at).copied().unwrap_or(0)
}
fn be16(buf: &[u8], at: usize) -> u16 {
    match buf.get(at..at + 2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}
fn be32(buf: &[u8], at: usize) -> u32 {
    match buf.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}
fn put16(buf: &mut [u8], at: usize, v: u16) {
    if let Some(b) = buf.get_mut(at..at + 2) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}
fn put32(buf: &mut [u8], at: usize, v: u32) {
    if let Some(b) = buf.get_mut(at..at + 4) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

/// Test helpers shared with `forward.rs` tests.
#[cfg(test)]
pub(crate) mod testpkt {
    use super::internet_checksum;
    use std::net::Ipv4Addr;

    /// A valid IPv4 packet (IHL 5, correct checksum) with `payload_len` bytes of payload.
    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, payload_len: usize) -> Vec<u8> {
        let total = 20 + payload_len;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = ttl;
        p[9] = proto;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        let c = internet_checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::testpkt::ipv4;
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 1, 15, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 1, 16, 2);

    #[test]
    fn parses_valid_packet() {
        let p = ipv4(A, B, 6, 64, 12);
        let v = Ipv4View::parse(&p).unwrap();
        assert_eq!((v.src(), v.dst(), v.ttl(), v.protocol()), (A, B, 64, 6));
        assert_eq!(
            (v.header_len(), v.total_len(), v.payload().len()),
            (20, 32, 12)
        );
        assert!(v.is_first_fragment());
        assert_eq!(internet_checksum(v.header()), 0, "header checksum verifies");
    }

    #[test]
    fn golden_header_bytes() {
        // The well-known example header: its checksum is 0xb861.
        let hdr: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&hdr), 0xb861);
    }

    /// RFC 1071 word by word, big-endian: the reference for [`checksum_add`].
    fn reference_sum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for c in data.chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn checksum_add_matches_the_reference_for_every_length_and_offset() {
        // Pseudo-random bytes, plus runs of 0xff (carries) and zeros.
        let mut x: u32 = 0x1234_5678;
        let mut data: Vec<u8> = (0..300)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect();
        data.extend([0xff; 100]);
        data.extend([0; 40]);
        for start in 0..9 {
            for end in start..data.len() {
                let d = &data[start..end];
                assert_eq!(
                    fold_checksum(checksum_add(d, 0)),
                    reference_sum(d),
                    "bytes {start}..{end}"
                );
            }
        }
        // Chunks add up (even-length chunks first), with a seed.
        let seed = pseudo_header_sum([10, 1, 2, 3], [10, 1, 4, 5], 6, 440);
        let whole = fold_checksum(checksum_add(&data, seed));
        let parts = checksum_add(&data[200..], checksum_add(&data[..200], seed));
        assert_eq!(fold_checksum(parts), whole);
        assert_eq!(fold_checksum(checksum_add(&[0; 64], 0)), 0);
        assert_eq!(fold_checksum(checksum_add(&[0xff; 64], 0)), 0xffff);
    }

    #[test]
    fn ttl_decrement_patches_checksum() {
        for ttl in 2..=255u8 {
            for proto in [1u8, 6, 17, 0xff] {
                let mut p = ipv4(A, B, proto, ttl, 4);
                assert_eq!(decrement_ttl(&mut p), Ttl::Decremented);
                assert_eq!(p[8], ttl - 1);
                // Recompute from scratch independently and compare.
                let mut copy = p[..20].to_vec();
                copy[10] = 0;
                copy[11] = 0;
                let fresh = internet_checksum(&copy);
                assert_eq!(
                    u16::from_be_bytes([p[10], p[11]]),
                    fresh,
                    "ttl {ttl} proto {proto}"
                );
                assert_eq!(internet_checksum(&p[..20]), 0);
            }
        }
    }

    #[test]
    fn ttl_decrement_golden_bytes() {
        let mut h: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(decrement_ttl(&mut h), Ttl::Decremented);
        // TTL word 0x4011 -> 0x3f11: the checksum grows by exactly 0x0100.
        assert_eq!(&h[8..12], &[0x3f, 0x11, 0xb9, 0x61]);
    }

    #[test]
    fn ttl_expiry() {
        for ttl in [0u8, 1] {
            let mut p = ipv4(A, B, 6, ttl, 0);
            let before = p.clone();
            assert_eq!(decrement_ttl(&mut p), Ttl::Expired);
            assert_eq!(p, before, "an expired packet is left untouched");
        }
        assert_eq!(decrement_ttl(&mut [0u8; 5]), Ttl::Expired);
    }

    #[test]
    fn malformed_reasons() {
        let good = ipv4(A, B, 17, 64, 8);
        assert_eq!(
            Ipv4View::parse(&good[..19]).unwrap_err(),
            Malformed::TooShort
        );
        assert_eq!(Ipv4View::parse(&[]).unwrap_err(), Malformed::TooShort);
        let mut v6 = good.clone();
        v6[0] = 0x65;
        assert_eq!(Ipv4View::parse(&v6).unwrap_err(), Malformed::NotIpv4);
        let mut ihl4 = good.clone();
        ihl4[0] = 0x44;
        assert_eq!(Ipv4View::parse(&ihl4).unwrap_err(), Malformed::BadIhl);
        let mut ihl15 = good.clone();
        ihl15[0] = 0x4f; // 60-byte header in a 28-byte buffer
        assert_eq!(Ipv4View::parse(&ihl15).unwrap_err(), Malformed::BadIhl);
        let mut long = good.clone();
        long[3] += 1;
        assert_eq!(Ipv4View::parse(&long).unwrap_err(), Malformed::BadLength);
        let mut short = good.clone();
        short[3] -= 1;
        assert_eq!(Ipv4View::parse(&short).unwrap_err(), Malformed::BadLength);
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            Ipv4View::parse(&trailing).unwrap_err(),
            Malformed::BadLength
        );
    }

    #[test]
    fn never_panics_on_any_prefix() {
        let good = ipv4(A, B, 6, 64, 40);
        let mut out = [0u8; ICMP_UNREACH_MAX];
        for n in 0..=good.len() {
            let mut p = good[..n].to_vec();
            if let Ok(v) = Ipv4View::parse(&p) {
                let _ = (
                    v.src(),
                    v.dst(),
                    v.payload(),
                    v.header(),
                    v.fragment_offset(),
                );
                let _ = build_net_unreachable(&v, A, &mut out);
            }
            let _ = decrement_ttl(&mut p);
            // Also every header byte value in position 0 (version/IHL).
            for b0 in 0..=255u8 {
                if let Some(x) = p.first_mut() {
                    *x = b0;
                }
                if let Ok(v) = Ipv4View::parse(&p) {
                    let _ = build_net_unreachable(&v, A, &mut out);
                }
            }
        }
    }

    #[test]
    fn icmp_unreachable_bytes() {
        let off = ipv4(A, B, 6, 63, 30);
        let v = Ipv4View::parse(&off).unwrap();
        let tun = Ipv4Addr::new(10, 1, 15, 0);
        let mut out = [0u8; ICMP_UNREACH_MAX];
        let n = build_net_unreachable(&v, tun, &mut out).unwrap();
        assert_eq!(n, 20 + 8 + 20 + 8);
        let r = Ipv4View::parse(&out[..n]).unwrap();
        assert_eq!((r.src(), r.dst(), r.protocol(), r.ttl()), (tun, A, 1, 64));
        assert_eq!(internet_checksum(r.header()), 0, "IP checksum verifies");
        let icmp = r.payload();
        assert_eq!(&icmp[..2], &[3, 0]);
        assert_eq!(&icmp[4..8], &[0, 0, 0, 0]);
        assert_eq!(internet_checksum(icmp), 0, "ICMP checksum verifies");
        assert_eq!(&icmp[8..28], &off[..20]);
        assert_eq!(&icmp[28..36], &off[20..28]);
        // Golden: fixed header bytes.
        assert_eq!(
            &out[..20],
            &[0x45, 0, 0, 56, 0, 0, 0, 0, 64, 1, out[10], out[11], 10, 1, 15, 0, 10, 1, 15, 2]
        );
        // Offender with a short payload quotes what there is.
        let off2 = ipv4(A, B, 17, 63, 3);
        let n2 = build_net_unreachable(&Ipv4View::parse(&off2).unwrap(), tun, &mut out).unwrap();
        assert_eq!(n2, 20 + 8 + 23);
        assert!(build_net_unreachable(&v, tun, &mut [0u8; 30]).is_none());
    }

    #[test]
    fn icmp_policy() {
        let icmp = ipv4(A, B, PROTO_ICMP, 64, 8);
        assert!(!may_send_icmp_error(&Ipv4View::parse(&icmp).unwrap()));
        let tcp = ipv4(A, B, 6, 64, 8);
        assert!(may_send_icmp_error(&Ipv4View::parse(&tcp).unwrap()));
        let mut frag = tcp.clone();
        frag[6] = 0x00;
        frag[7] = 0x10; // offset 16 * 8
        assert!(!may_send_icmp_error(&Ipv4View::parse(&frag).unwrap()));
        let mut first = tcp.clone();
        first[6] = 0x20; // MF set, offset 0: first fragment
        assert!(may_send_icmp_error(&Ipv4View::parse(&first).unwrap()));
    }
}
