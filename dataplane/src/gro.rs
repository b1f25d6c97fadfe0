//! Pure receive coalescing: turns a sequence of inner IPv4 packets (the datagrams of one
//! UDP_GRO receive, already checked by `forward::udp_to_tun`) into the writes for a TUN device
//! opened with `IFF_VNET_HDR`: adjacent in-order TCP segments of one flow become one
//! super-packet with a `GSO_TCPV4` + `NEEDS_CSUM` vnet header (the kernel segments it again,
//! or hands it whole to a local TCP socket); everything else is written as it came, behind a
//! zero vnet header (flags 0, `GSO_NONE`).
//!
//! Coalescing rules (a subset of the kernel's `tcp_gro_receive`, enough for bulk TCP):
//! - IPv4 with IHL 5, not a fragment, protocol TCP, at least one payload byte;
//! - TCP flags only ACK, plus PSH which closes the run after that segment;
//! - same addresses, ports, TOS, TTL, DF bit, ACK number, data offset, window and option
//!   bytes;
//! - `seq` = previous `seq` + previous payload length;
//! - every segment but the last carries exactly the first segment's payload size
//!   (`gso_size`); a shorter one closes the run;
//! - the super-packet stays within 65535 bytes and [`MAX_SEGMENTS`].
//!
//! A super-packet keeps the first segment's headers (window, options, IP id), gets the total
//! length, a fresh IP header checksum, PSH if any segment had it, and in the TCP checksum field
//! the folded pseudo-header sum (the kernel's CHECKSUM_PARTIAL convention: `csum_start` = IP
//! header length, `csum_offset` = 16). A run of one packet is written untouched.
//!
//! Contract: no I/O, no allocation, no panics; output that does not fit is reported, never
//! written out of bounds.

#![forbid(unsafe_code)]

use crate::gso::{VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, VNET_HDR_LEN};
use crate::packet::{
    fold_checksum, Ipv4View, TcpView, IPV4_MIN_HEADER, PROTO_TCP, TCP_ACK, TCP_PSH,
};

/// Most segments merged into one super-packet (the kernel's GRO limit is 64).
pub const MAX_SEGMENTS: usize = 64;
const MAX_IP_LEN: usize = 65535;

/// One write for the TUN device: `out[offset..offset + len]` (vnet header included) holding
/// `segments` inner packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    pub offset: usize,
    pub len: usize,
    pub segments: usize,
}

/// The run being built (the last write, when it may still grow).
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Index into the writes.
    write: usize,
    /// Byte offset of the IPv4 header in `out`.
    ip: usize,
    hdr_len: usize,
    gso_size: usize,
    next_seq: u32,
    psh: bool,
}

/// Builds TUN writes into a caller-owned buffer. Use: [`Coalescer::new`], [`Coalescer::push`]
/// for every packet in arrival order, then [`Coalescer::finish`]; read [`Coalescer::writes`].
pub struct Coalescer<'o, 'w> {
    out: &'o mut [u8],
    used: usize,
    writes: &'w mut Vec<Write>,
    run: Option<Run>,
}

/// `out` had no room left for a packet (it was not written; the caller counts it as lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom;

/// TCP/IP facts of a packet that may be coalesced.
struct Tcp {
    hdr_len: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

fn candidate(p: &[u8]) -> Option<Tcp> {
    let ip = Ipv4View::parse(p).ok()?;
    if ip.header_len() != IPV4_MIN_HEADER || ip.protocol() != PROTO_TCP || ip.is_fragment() {
        return None;
    }
    let tcp = TcpView::parse(ip.payload())?;
    let hdr_len = IPV4_MIN_HEADER + tcp.header_len();
    if hdr_len >= p.len() {
        return None; // no payload (pure ACK)
    }
    let flags = tcp.flags();
    if flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    Some(Tcp {
        hdr_len,
        seq: tcp.seq(),
        flags,
        payload: p.len() - hdr_len,
    })
}

/// Whether the headers `a` and `b` (IPv4 with IHL 5 and TCP, both coalescing candidates) agree
/// on everything a run must share: TOS, IP flags, TTL, protocol, addresses; ports, ACK number,
/// data offset and reserved bits, window (the kernel flushes on a new window too) and options.
fn same_flow_headers(a: &[u8], b: &[u8]) -> bool {
    let (ia, ib) = (Ipv4View::new_unchecked(a), Ipv4View::new_unchecked(b));
    let (ta, tb) = (
        TcpView::new_unchecked(ia.payload()),
        TcpView::new_unchecked(ib.payload()),
    );
    ia.tos() == ib.tos()
        && ia.flags() == ib.flags()
        && ia.ttl() == ib.ttl()
        && ia.protocol() == ib.protocol()
        && ia.src() == ib.src()
        && ia.dst() == ib.dst()
        && ta.src_port() == tb.src_port()
        && ta.dst_port() == tb.dst_port()
        && ta.ack() == tb.ack()
        && ta.header_len() == tb.header_len()
        && ta.reserved_bits() == tb.reserved_bits()
        && ta.window() == tb.window()
        && ta.options() == tb.options()
}

impl<'o, 'w> Coalescer<'o, 'w> {
    /// Starts an empty batch writing into `out`; `writes` is cleared.
    pub fn new(out: &'o mut [u8], writes: &'w mut Vec<Write>) -> Self {
        writes.clear();
        Self {
            out,
            used: 0,
            writes,
            run: None,
        }
    }

    /// Adds one checked inner IPv4 packet.
    pub fn push(&mut self, p: &[u8]) -> Result<(), NoRoom> {
        let tcp = candidate(p);
        if let (Some(t), Some(r)) = (&tcp, self.run) {
            if self.extends(&r, p, t) {
                let start = self.used;
                let data = &p[t.hdr_len..];
                let dst = self.out.get_mut(start..start + data.len()).ok_or(NoRoom)?;
                dst.copy_from_slice(data);
                self.used += data.len();
                let w = &mut self.writes[r.write];
                w.len += data.len();
                w.segments += 1;
                let run = self.run.as_mut().expect("run checked above");
                run.next_seq = t.seq.wrapping_add(t.payload as u32);
                run.psh |= t.flags & TCP_PSH != 0;
                if run.psh || t.payload < run.gso_size {
                    self.close_run();
                }
                return Ok(());
            }
        }
        self.close_run();
        let start = self.used;
        let end = start + VNET_HDR_LEN + p.len();
        let dst = self.out.get_mut(start..end).ok_or(NoRoom)?;
        dst[..VNET_HDR_LEN].fill(0);
        dst[VNET_HDR_LEN..].copy_from_slice(p);
        self.used = end;
        self.writes.push(Write {
            offset: start,
            len: end - start,
            segments: 1,
        });
        if let Some(t) = tcp {
            if t.flags & TCP_PSH == 0 {
                self.run = Some(Run {
                    write: self.writes.len() - 1,
                    ip: start + VNET_HDR_LEN,
                    hdr_len: t.hdr_len,
                    gso_size: t.payload,
                    next_seq: t.seq.wrapping_add(t.payload as u32),
                    psh: false,
                });
            }
        }
        Ok(())
    }

    fn extends(&self, r: &Run, p: &[u8], t: &Tcp) -> bool {
        let w = &self.writes[r.write];
        let first = &self.out[r.ip..r.ip + r.hdr_len];
        t.hdr_len == r.hdr_len
            && t.seq == r.next_seq
            && t.payload <= r.gso_size
            && w.segments < MAX_SEGMENTS
            && w.len - VNET_HDR_LEN + t.payload <= MAX_IP_LEN
            && same_flow_headers(first, p)
    }

    /// Fixes up the run's headers when it holds more than one segment.
    fn close_run(&mut self) {
        let Some(r) = self.run.take() else {
            return;
        };
        let w = self.writes[r.write];
        if w.segments < 2 {
            return;
        }
        let ip_len = w.len - VNET_HDR_LEN;
        let mut ip = Ipv4View::new_unchecked(&mut self.out[r.ip..r.ip + ip_len]);
        ip.set_total_len(ip_len as u16);
        ip.fill_checksum();
        let seed = fold_checksum(ip.pseudo_header(ip_len - IPV4_MIN_HEADER));
        let mut tcp = TcpView::new_unchecked(ip.payload_mut());
        if r.psh {
            tcp.set_flags(tcp.flags() | TCP_PSH);
        }
        tcp.set_checksum(seed);
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: r.hdr_len as u16,
            gso_size: r.gso_size as u16,
            csum_start: IPV4_MIN_HEADER as u16,
            csum_offset: 16,
        };
        h.write(&mut self.out[w.offset..]);
    }

    /// Closes the last run; the writes are complete afterwards.
    pub fn finish(mut self) -> usize {
        self.close_run();
        self.used
    }

    /// Closes the last run and gives the buffers back: the writes, and the buffer they point
    /// into (to write out, then to start the next [`Coalescer`] with).
    pub fn into_parts(mut self) -> (&'o mut [u8], &'w mut Vec<Write>) {
        self.close_run();
        (self.out, self.writes)
    }

    /// Closes the last run and shows the finished batch: the buffer and the writes into it
    /// (to write out, then [`Coalescer::clear`] for the next batch).
    pub fn finished(&mut self) -> (&[u8], &[Write]) {
        self.close_run();
        (&self.out[..self.used], self.writes)
    }

    /// Starts the next batch on the same buffers (as [`Coalescer::new`] would).
    pub fn clear(&mut self) {
        self.run = None;
        self.used = 0;
        self.writes.clear();
    }

    /// Bytes of `out` still free.
    pub fn room(&self) -> usize {
        self.out.len() - self.used
    }

    /// Whether nothing was pushed since [`Coalescer::new`].
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// The writes so far.
    pub fn writes(&self) -> &[Write] {
        self.writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gso::testutil::*;
    use crate::gso::{finish_checksum, split};
    use crate::packet::{TCP_FIN, TCP_SYN};

    fn run(pkts: &[Vec<u8>]) -> (Vec<u8>, Vec<Write>) {
        let mut out = vec![0u8; 1 << 17];
        let mut writes = Vec::new();
        let mut c = Coalescer::new(&mut out, &mut writes);
        for p in pkts {
            c.push(p).unwrap();
        }
        let used = c.finish();
        out.truncate(used);
        (out, writes)
    }

    /// Finishes a coalesced write as the kernel would and checks it from scratch.
    fn finished(out: &[u8], w: &Write) -> (VnetHdr, Vec<u8>) {
        let h = VnetHdr::parse(&out[w.offset..]).unwrap();
        let mut p = out[w.offset + VNET_HDR_LEN..w.offset + w.len].to_vec();
        if h.flags & F_NEEDS_CSUM != 0 {
            finish_checksum(&mut p, h.csum_start.into(), h.csum_offset.into()).unwrap();
        }
        verify(&p);
        (h, p)
    }

    #[test]
    fn coalesces_in_order_segments_golden() {
        let data = pattern(1000 * 3 + 300);
        let segs: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                let end = ((i + 1) * 1000).min(data.len());
                let fl = if i == 3 { TCP_ACK | TCP_PSH } else { TCP_ACK };
                tcp(500 + 1000 * i as u32, fl, &data[i * 1000..end])
            })
            .collect();
        let (out, writes) = run(&segs);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].segments, 4);
        let (h, p) = finished(&out, &writes[0]);
        assert_eq!(
            h,
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: 52,
                gso_size: 1000,
                csum_start: 20,
                csum_offset: 16
            }
        );
        // Expected: the same stream as one packet built independently.
        let want = tcp(500, TCP_ACK | TCP_PSH, &data);
        assert_eq!(p, want);
        // And the raw (partial) checksum field holds the folded pseudo-header sum.
        let raw = &out[VNET_HDR_LEN..];
        let ps = pseudo(&want, want.len() - 20);
        let seed = !csum16(&[&ps]);
        assert_eq!(u16::from_be_bytes([raw[36], raw[37]]), seed);
    }

    #[test]
    fn split_then_coalesce_roundtrip() {
        let data = pattern(60000);
        let sup = tcp(42, TCP_ACK, &data);
        let mut segs = vec![0u8; 1 << 17];
        let s = split(&sup, GSO_TCPV4, 1420, &mut segs).unwrap();
        let pkts: Vec<Vec<u8>> = (0..s.count).map(|i| segs[s.range(i)].to_vec()).collect();
        let (out, writes) = run(&pkts);
        assert_eq!(writes.len(), 1);
        let (h, p) = finished(&out, &writes[0]);
        assert_eq!(usize::from(h.gso_size), 1420);
        assert_eq!(p, sup);
    }

    #[test]
    fn what_is_not_coalesced() {
        let a = tcp(0, TCP_ACK, &pattern(1000));
        let gap = tcp(2000, TCP_ACK, &pattern(1000)); // out of order
        let (out, w) = run(&[a.clone(), gap.clone()]);
        assert_eq!(w.len(), 2);
        for x in &w {
            let h = VnetHdr::parse(&out[x.offset..]).unwrap();
            assert_eq!(
                h,
                VnetHdr::default(),
                "single packets get a zero vnet header"
            );
        }
        assert_eq!(&out[w[0].offset + 10..w[0].offset + w[0].len], &a[..]);
        assert_eq!(&out[w[1].offset + 10..w[1].offset + w[1].len], &gap[..]);

        // Bigger than the first: new run. Smaller: joins and closes the run.
        let b_big = tcp(1000, TCP_ACK, &pattern(1200));
        assert_eq!(run(&[a.clone(), b_big]).1.len(), 2);
        let b_small = tcp(1000, TCP_ACK, &pattern(10));
        let c = tcp(1010, TCP_ACK, &pattern(1000));
        let (_, w) = run(&[a.clone(), b_small, c]);
        assert_eq!(w.iter().map(|x| x.segments).collect::<Vec<_>>(), vec![2, 1]);

        // PSH closes the run after its segment; FIN/SYN never coalesce; pure ACKs neither.
        let psh = tcp(1000, TCP_ACK | TCP_PSH, &pattern(1000));
        let next = tcp(2000, TCP_ACK, &pattern(1000));
        let (_, w) = run(&[a.clone(), psh, next]);
        assert_eq!(w.iter().map(|x| x.segments).collect::<Vec<_>>(), vec![2, 1]);
        let fin = tcp(1000, TCP_ACK | TCP_FIN, &pattern(1000));
        assert_eq!(run(&[a.clone(), fin]).1.len(), 2);
        let syn = tcp(1000, TCP_SYN, &pattern(1000));
        assert_eq!(run(&[a.clone(), syn]).1.len(), 2);
        let ack = tcp(1000, TCP_ACK, &[]);
        assert_eq!(run(&[a.clone(), ack]).1.len(), 2);

        // Different flow (port), ACK number, window, options; UDP.
        let mut other = tcp(1000, TCP_ACK, &pattern(1000));
        other[21] ^= 1;
        fix(&mut other);
        assert_eq!(run(&[a.clone(), other]).1.len(), 2);
        let mut ackn = tcp(1000, TCP_ACK, &pattern(1000));
        ackn[31] ^= 1;
        fix(&mut ackn);
        assert_eq!(run(&[a.clone(), ackn]).1.len(), 2);
        let mut win = tcp(1000, TCP_ACK, &pattern(1000));
        win[35] ^= 1;
        fix(&mut win);
        assert_eq!(run(&[a.clone(), win]).1.len(), 2);
        let mut opt = tcp(1000, TCP_ACK, &pattern(1000));
        opt[47] ^= 1;
        fix(&mut opt);
        assert_eq!(run(&[a.clone(), opt]).1.len(), 2);
        let u = udp(&pattern(1000));
        let (out, w) = run(&[a.clone(), u.clone(), u.clone()]);
        assert_eq!(w.len(), 3);
        assert_eq!(&out[w[2].offset + 10..w[2].offset + w[2].len], &u[..]);
    }

    #[test]
    fn two_flows_interleaved_and_limits() {
        let f1: Vec<Vec<u8>> = (0..3)
            .map(|i| tcp(1000 * i, TCP_ACK, &pattern(1000)))
            .collect();
        let mut f2 = f1.clone();
        for p in &mut f2 {
            p[20] ^= 1; // source port
            fix(p);
        }
        // f1 f1 f2 f2 f1: three writes (adjacent runs only).
        let (out, w) = run(&[
            f1[0].clone(),
            f1[1].clone(),
            f2[0].clone(),
            f2[1].clone(),
            f1[2].clone(),
        ]);
        assert_eq!(
            w.iter().map(|x| x.segments).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        for x in &w {
            finished(&out, x);
        }
        // 65535-byte cap: 100 segments of 1000 → at most 65 per write by size, 64 by count.
        let many: Vec<Vec<u8>> = (0..100)
            .map(|i| tcp(1000 * i, TCP_ACK, &pattern(1000)))
            .collect();
        let (out, w) = run(&many);
        assert_eq!(
            w.iter().map(|x| x.segments).collect::<Vec<_>>(),
            vec![64, 36]
        );
        for x in &w {
            let (_, p) = finished(&out, x);
            assert!(p.len() <= 65535);
        }
    }

    #[test]
    fn no_room_is_reported() {
        let a = tcp(0, TCP_ACK, &pattern(1000));
        let mut out = vec![0u8; 1500];
        let mut writes = Vec::new();
        let mut c = Coalescer::new(&mut out, &mut writes);
        assert!(c.push(&a).is_ok());
        assert_eq!(c.push(&tcp(1000, TCP_ACK, &pattern(1000))), Err(NoRoom));
        assert_eq!(c.push(&udp(&pattern(1000))), Err(NoRoom));
        assert_eq!(c.writes().len(), 1);
        c.finish();
        // Garbage never panics.
        let mut out = vec![0u8; 1 << 16];
        let mut c = Coalescer::new(&mut out, &mut writes);
        for n in 0..a.len().min(120) {
            let _ = c.push(&a[..n]);
        }
    }
}
