//! The checked TCP view.

use super::{be16, be32, byte, checksum_add, fold_checksum, put16, put32, TCP_MIN_HEADER};

/// A TCP segment (header and payload, the IPv4 payload): validated by [`TcpView::parse`] (the
/// header its data offset announces lies inside the buffer), or a header taken as it is by
/// [`TcpView::new_unchecked`].
#[derive(Debug, Clone, Copy)]
pub struct TcpView<T> {
    buf: T,
    header_len: usize,
}

impl<T: AsRef<[u8]>> TcpView<T> {
    /// Validates `buf` as a TCP segment: at least [`TCP_MIN_HEADER`] bytes, a data offset of at
    /// least 5 words and no longer than the buffer. `None` otherwise.
    pub fn parse(buf: T) -> Option<Self> {
        let b = buf.as_ref();
        if b.len() < TCP_MIN_HEADER {
            return None;
        }
        let header_len = usize::from(byte(b, 12) >> 4) * 4;
        if header_len < TCP_MIN_HEADER || header_len > b.len() {
            return None;
        }
        Some(Self { buf, header_len })
    }

    /// A view over a header known to be well formed (copied from a parsed segment), without
    /// the checks: the header length is the data offset's, at most the buffer.
    pub fn new_unchecked(buf: T) -> Self {
        let b = buf.as_ref();
        let header_len = (usize::from(byte(b, 12) >> 4) * 4).min(b.len());
        Self { buf, header_len }
    }

    /// Header length from the data offset (options included).
    pub fn header_len(&self) -> usize {
        self.header_len
    }
    pub fn src_port(&self) -> u16 {
        be16(self.buf.as_ref(), 0)
    }
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }
    pub fn seq(&self) -> u32 {
        be32(self.buf.as_ref(), 4)
    }
    pub fn ack(&self) -> u32 {
        be32(self.buf.as_ref(), 8)
    }
    /// The low nibble of the data-offset byte: the reserved bits and AE (formerly NS).
    pub fn reserved_bits(&self) -> u8 {
        byte(self.buf.as_ref(), 12) & 0x0f
    }
    /// The flag byte (`TCP_FIN` … `TCP_CWR`).
    pub fn flags(&self) -> u8 {
        byte(self.buf.as_ref(), 13)
    }
    pub fn window(&self) -> u16 {
        be16(self.buf.as_ref(), 14)
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), 16)
    }
    /// The option bytes (between the fixed header and the payload).
    pub fn options(&self) -> &[u8] {
        self.buf
            .as_ref()
            .get(TCP_MIN_HEADER..self.header_len)
            .unwrap_or(&[])
    }
    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        self.buf.as_ref().get(self.header_len..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpView<T> {
    pub fn set_seq(&mut self, v: u32) {
        put32(self.buf.as_mut(), 4, v);
    }
    pub fn set_flags(&mut self, v: u8) {
        if let Some(b) = self.buf.as_mut().get_mut(13) {
            *b = v;
        }
    }
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buf.as_mut(), 16, v);
    }
    /// Computes the checksum over the whole segment and `pseudo` (the IPv4 pseudo-header
    /// sum, [`super::Ipv4View::pseudo_header`]) from scratch and stores it.
    pub fn fill_checksum(&mut self, pseudo: u64) {
        self.set_checksum(0);
        let sum = !fold_checksum(checksum_add(self.buf.as_ref(), pseudo));
        self.set_checksum(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PROTO_TCP, TCP_ACK, TCP_PSH};
    use super::*;

    /// Ports 40000 → 5201, seq 0x01020304, ack 0x0a0b0c0d, data offset 6 (one 4-byte option),
    /// reserved bits 0x1, ACK|PSH, window 512, checksum 0xbeef, then 3 payload bytes.
    const SEGMENT: [u8; 27] = [
        0x9c, 0x40, 0x14, 0x51, 0x01, 0x02, 0x03, 0x04, 0x0a, 0x0b, 0x0c, 0x0d, 0x61, 0x18, 0x02,
        0x00, 0xbe, 0xef, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0xaa, 0xbb, 0xcc,
    ];

    #[test]
    fn reads_every_field() {
        let t = TcpView::parse(&SEGMENT[..]).unwrap();
        assert_eq!((t.src_port(), t.dst_port()), (40000, 5201));
        assert_eq!((t.seq(), t.ack()), (0x0102_0304, 0x0a0b_0c0d));
        assert_eq!((t.header_len(), t.reserved_bits()), (24, 1));
        assert_eq!(t.flags(), TCP_ACK | TCP_PSH);
        assert_eq!((t.window(), t.checksum()), (512, 0xbeef));
        assert_eq!(t.options(), &[0x01, 0x01, 0x08, 0x0a]);
        assert_eq!(t.payload(), &[0xaa, 0xbb, 0xcc]);
    }

    #[test]
    fn rejects_short_buffers_and_bad_offsets() {
        assert!(TcpView::parse(&SEGMENT[..19]).is_none());
        // Data offset 6 words, but only 23 bytes.
        assert!(TcpView::parse(&SEGMENT[..23]).is_none());
        let mut low = SEGMENT;
        low[12] = 0x41; // data offset 4 words
        assert!(TcpView::parse(&low[..]).is_none());
        // Unchecked views never read or write out of bounds.
        let mut short = [0xffu8; 5];
        let mut t = TcpView::new_unchecked(&mut short[..]);
        assert_eq!((t.seq(), t.flags(), t.window()), (0, 0, 0));
        // Data offset 0: no header, no options; the payload is what follows it.
        assert!(t.options().is_empty());
        assert_eq!((t.header_len(), t.payload().len()), (0, 5));
        t.set_seq(1);
        t.set_flags(1);
        t.fill_checksum(0);
        assert_eq!(short, [0xff; 5]);
    }

    #[test]
    fn setters_write_golden_bytes() {
        let mut seg = SEGMENT;
        let mut t = TcpView::parse(&mut seg[..]).unwrap();
        t.set_seq(0xdead_beef);
        t.set_flags(TCP_ACK);
        // Pseudo-header 10.0.0.1 → 10.0.0.2, TCP, 27 bytes.
        let pseudo = super::super::pseudo_header_sum([10, 0, 0, 1], [10, 0, 0, 2], PROTO_TCP, 27);
        t.fill_checksum(pseudo);
        assert_eq!(&seg[4..8], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(seg[13], TCP_ACK);
        // Independently: the one's complement sum over pseudo-header and segment is 0xffff.
        let mut sum: u32 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + u32::from(PROTO_TCP) + 27;
        for c in seg.chunks(2) {
            sum += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }
}
