//! The checked UDP view.

use super::{be16, checksum_add, fold_checksum, put16, UDP_HEADER_LEN};

/// A UDP datagram (header and payload, the IPv4 payload): validated by [`UdpView::parse`] (the
/// header lies inside the buffer), or taken as it is by [`UdpView::new_unchecked`].
#[derive(Debug, Clone, Copy)]
pub struct UdpView<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> UdpView<T> {
    /// Validates `buf` as a UDP datagram: at least the 8-byte header. `None` otherwise.
    pub fn parse(buf: T) -> Option<Self> {
        (buf.as_ref().len() >= UDP_HEADER_LEN).then_some(Self { buf })
    }

    /// A view without the check (fields past the end read as 0 and are not written).
    pub fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buf.as_ref(), 0)
    }
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }
    /// The length field (header and payload).
    pub fn len(&self) -> u16 {
        be16(self.buf.as_ref(), 4)
    }
    /// Whether the length field is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), 6)
    }
    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        self.buf.as_ref().get(UDP_HEADER_LEN..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpView<T> {
    pub fn set_len(&mut self, v: u16) {
        put16(self.buf.as_mut(), 4, v);
    }
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buf.as_mut(), 6, v);
    }
    /// Computes the checksum over the whole datagram and `pseudo` (the IPv4 pseudo-header sum,
    /// [`super::Ipv4View::pseudo_header`]) from scratch and stores it; a computed 0 is sent as
    /// 0xffff (0 means "no checksum").
    pub fn fill_checksum(&mut self, pseudo: u64) {
        self.set_checksum(0);
        let mut sum = !fold_checksum(checksum_add(self.buf.as_ref(), pseudo));
        if sum == 0 {
            sum = 0xffff;
        }
        self.set_checksum(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{pseudo_header_sum, PROTO_UDP};
    use super::*;

    /// Ports 8285 → 53, length 11, checksum 0x1234, then 3 payload bytes.
    const DATAGRAM: [u8; 11] = [
        0x20, 0x5d, 0x00, 0x35, 0x00, 0x0b, 0x12, 0x34, 0x01, 0x02, 0x03,
    ];

    #[test]
    fn reads_every_field() {
        let u = UdpView::parse(&DATAGRAM[..]).unwrap();
        assert_eq!((u.src_port(), u.dst_port()), (8285, 53));
        assert_eq!((u.len(), u.checksum()), (11, 0x1234));
        assert_eq!(u.payload(), &[1, 2, 3]);
        assert!(UdpView::parse(&DATAGRAM[..7]).is_none());
        let u = UdpView::new_unchecked(&DATAGRAM[..3]);
        assert_eq!((u.len(), u.checksum()), (0, 0));
        assert!(u.payload().is_empty());
    }

    #[test]
    fn setters_write_golden_bytes() {
        let mut d = DATAGRAM;
        let mut u = UdpView::parse(&mut d[..]).unwrap();
        u.set_len(11);
        u.fill_checksum(pseudo_header_sum(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            PROTO_UDP,
            11,
        ));
        // By hand: 0x0a00+0x0001+0x0a00+0x0002+0x0011+0x000b (pseudo) + 0x205d+0x0035+0x000b
        // + 0x0102+0x0300 = 0x38be; complement 0xc741.
        assert_eq!(&d[6..8], &[0xc7, 0x41]);
        // A sum that complements to 0 is sent as 0xffff.
        let mut z = [0u8; 8];
        let mut u = UdpView::parse(&mut z[..]).unwrap();
        u.fill_checksum(0xffff);
        assert_eq!(&z[6..8], &[0xff, 0xff]);
    }
}
