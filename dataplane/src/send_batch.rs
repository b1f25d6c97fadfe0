//! Single packets to one peer, gathered into one UDP_SEGMENT send (pure).
//!
//! A burst of TUN reads often holds many plain packets (no TSO) for the same peer: a UDP
//! flood, a run of TCP ACKs. Sent one `sendmsg` each, every one of them walks the UDP/IP
//! stack and the underlay on its own. Packets of one length to one peer can instead be laid
//! back to back in one buffer and leave as one UDP_SEGMENT send (Linux 4.18), which the
//! kernel splits into the same datagrams a send each would have made: the wire format does
//! not change, so a flannel peer (which reads one datagram per `recvfrom`) sees no
//! difference, and a peer with UDP_GRO gets them as one receive.
//!
//! The rules of one batch, as the kernel takes a UDP_SEGMENT send: every segment but the last
//! has the first one's length, the last may be shorter (it then closes the batch); at most
//! [`GSO_MAX_SEGMENTS`] segments and 65,507 bytes (the largest UDP payload); one peer. Only
//! packets already read join: a batch is sent when the next packet cannot join it and at the
//! end of each round of TUN reads, so it adds no wait.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::ops::Range;

use crate::datapath::GSO_MAX_SEGMENTS;
use crate::transmit::{Transmit, TxBuffer};

/// The largest UDP payload one send may carry (IPv4: 65,535 − 20 − 8).
pub const MAX_UDP_PAYLOAD: usize = 65_535 - 20 - 8;

/// A batch being gathered in one TUN slot's read buffer: its packets lie back to back from
/// `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBatch {
    /// The TUN slot whose read buffer holds the batch.
    pub slot: usize,
    pub peer: Ipv4Addr,
    /// The first packet's length: every packet but a shorter last one has it.
    seg_len: usize,
    start: usize,
    len: usize,
    count: usize,
    /// A shorter packet joined: nothing more may.
    closed: bool,
}

impl OpenBatch {
    /// A batch of one: the `len`-byte packet at `start` of `slot`'s read buffer.
    pub fn new(slot: usize, peer: Ipv4Addr, start: usize, len: usize) -> Self {
        Self {
            slot,
            peer,
            seg_len: len,
            start,
            len,
            count: 1,
            closed: len == 0,
        }
    }

    /// Where a `len`-byte packet to `peer` would be copied to join this batch, in a read
    /// buffer of `buf_len` bytes; `None` when it may not join.
    pub fn place_for(&self, peer: Ipv4Addr, len: usize, buf_len: usize) -> Option<usize> {
        let end = self.start + self.len;
        let fits = !self.closed
            && peer == self.peer
            && len > 0
            && len <= self.seg_len
            && self.count < GSO_MAX_SEGMENTS
            && self.len + len <= MAX_UDP_PAYLOAD
            && end + len <= buf_len;
        fits.then_some(end)
    }

    /// Counts a packet of `len` bytes copied to [`place_for`](Self::place_for)'s offset.
    pub fn push(&mut self, len: usize) {
        self.len += len;
        self.count += 1;
        if len < self.seg_len {
            self.closed = true;
        }
    }

    /// How many packets the batch holds.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The batch's bytes in the slot's read buffer.
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }

    /// The one send that carries it, from the slot's read buffer: a plain datagram for a
    /// batch of one.
    pub fn transmit(&self) -> Transmit {
        Transmit {
            buffer: TxBuffer::Read,
            range: self.range(),
            segment_size: if self.count > 1 {
                self.seg_len as u16
            } else {
                0
            },
            segments: self.count,
            peer: self.peer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
    const BUF: usize = 65_536 + 12;

    #[test]
    fn one_packet_is_a_plain_datagram() {
        let b = OpenBatch::new(3, A, 12, 92);
        assert_eq!(
            b.transmit(),
            Transmit {
                buffer: TxBuffer::Read,
                range: 12..104,
                segment_size: 0,
                segments: 1,
                peer: A,
            }
        );
    }

    #[test]
    fn equal_packets_to_one_peer_gather_back_to_back() {
        let mut b = OpenBatch::new(0, A, 12, 92);
        assert_eq!(b.place_for(A, 92, BUF), Some(104));
        b.push(92);
        assert_eq!(b.place_for(A, 92, BUF), Some(196));
        b.push(92);
        assert_eq!(
            b.transmit(),
            Transmit {
                buffer: TxBuffer::Read,
                range: 12..288,
                segment_size: 92,
                segments: 3,
                peer: A,
            }
        );
    }

    #[test]
    fn another_peer_or_a_longer_packet_cannot_join() {
        let b = OpenBatch::new(0, A, 12, 92);
        assert_eq!(b.place_for(B, 92, BUF), None);
        assert_eq!(b.place_for(A, 93, BUF), None);
        assert_eq!(b.place_for(A, 0, BUF), None);
    }

    #[test]
    fn a_shorter_packet_is_the_last() {
        let mut b = OpenBatch::new(0, A, 12, 1428);
        let at = b.place_for(A, 60, BUF).unwrap();
        assert_eq!(at, 1440);
        b.push(60);
        assert_eq!(b.place_for(A, 60, BUF), None, "closed");
        assert_eq!(b.place_for(A, 1428, BUF), None, "closed");
        assert_eq!(
            b.transmit(),
            Transmit {
                buffer: TxBuffer::Read,
                range: 12..1500,
                segment_size: 1428,
                segments: 2,
                peer: A,
            }
        );
    }

    #[test]
    fn limits_segments_payload_and_buffer() {
        // Segment count.
        let mut b = OpenBatch::new(0, A, 0, 40);
        for _ in 1..GSO_MAX_SEGMENTS {
            let at = b.place_for(A, 40, BUF).unwrap();
            assert_eq!(at, b.range().end);
            b.push(40);
        }
        assert_eq!(b.count(), GSO_MAX_SEGMENTS);
        assert_eq!(b.place_for(A, 40, BUF), None);
        // Largest UDP payload: 45 × 1428 = 64,260 fits, a 46th (65,688) does not.
        let mut b = OpenBatch::new(0, A, 0, 1428);
        for _ in 1..45 {
            b.push(1428);
        }
        assert_eq!(b.place_for(A, 1428, BUF), None);
        assert_eq!(b.place_for(A, 1247, BUF), Some(64_260), "65,507 exactly");
        assert_eq!(b.place_for(A, 1248, BUF), None);
        // The read buffer's end.
        let b = OpenBatch::new(0, A, 12, 1000);
        assert_eq!(b.place_for(A, 1000, 2012), Some(1012));
        assert_eq!(b.place_for(A, 1000, 2011), None);
    }

    #[test]
    fn an_empty_packet_starts_a_closed_batch() {
        let b = OpenBatch::new(0, A, 12, 0);
        assert_eq!(b.place_for(A, 0, BUF), None);
        assert_eq!(b.transmit().segments, 1);
    }
}
