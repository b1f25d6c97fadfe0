//! One UDP send, as the worker loops prepare it and the io_uring ring posts it: where its
//! bytes lie, how the kernel is to segment them, and the peer (pure).
//!
//! A transmit with a segment size is one UDP_SEGMENT send that leaves as `segments`
//! datagrams of `segment_size` bytes (the last may be shorter); without one it is a plain
//! datagram. Either way every datagram on the wire is one inner IPv4 packet.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::ops::Range;

/// Which of a TUN read's two buffers a transmit's bytes lie in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxBuffer {
    /// The read buffer: a packet as read (or a gathered batch of them).
    Read,
    /// The split buffer: the MTU-sized packets cut from a TUN super-packet.
    Split,
}

impl TxBuffer {
    /// Where a TUN read's packets are: the split buffer when it was a super-packet cut into
    /// MTU-sized ones (`split`), else the read buffer.
    pub fn holding(split: bool) -> Self {
        if split {
            Self::Split
        } else {
            Self::Read
        }
    }
}

/// One send: `range` of `buffer`, to `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub buffer: TxBuffer,
    pub range: Range<usize>,
    /// UDP_SEGMENT size; 0: a plain datagram.
    pub segment_size: u16,
    /// How many datagrams it stands for.
    pub segments: usize,
    pub peer: Ipv4Addr,
}

impl Transmit {
    /// A transmit that carries nothing (a placeholder before the first send).
    pub const EMPTY: Self = Self {
        buffer: TxBuffer::Read,
        range: 0..0,
        segment_size: 0,
        segments: 0,
        peer: Ipv4Addr::UNSPECIFIED,
    };

    /// Whether it is a UDP_SEGMENT send.
    #[inline]
    pub fn is_gso(&self) -> bool {
        self.segment_size > 0
    }

    /// The same bytes as plain datagrams, one per segment: how a GSO send the kernel refused
    /// goes out instead.
    pub fn one_by_one(&self) -> impl Iterator<Item = Transmit> + '_ {
        let seg = usize::from(self.segment_size).max(1);
        self.range.clone().step_by(seg).map(move |at| Transmit {
            buffer: self.buffer,
            range: at..(at + seg).min(self.range.end),
            segment_size: 0,
            segments: 1,
            peer: self.peer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_gso_send_splits_into_its_segments() {
        let tx = Transmit {
            buffer: TxBuffer::Split,
            range: 100..100 + 2 * 1400 + 60,
            segment_size: 1400,
            segments: 3,
            peer: Ipv4Addr::new(198, 18, 0, 2),
        };
        assert!(tx.is_gso());
        let one: Vec<Transmit> = tx.one_by_one().collect();
        let ranges: Vec<_> = one.iter().map(|t| t.range.clone()).collect();
        assert_eq!(ranges, vec![100..1500, 1500..2900, 2900..2960]);
        assert!(one
            .iter()
            .all(|t| !t.is_gso() && t.segments == 1 && t.buffer == TxBuffer::Split));
    }
}
