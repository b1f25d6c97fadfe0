//! The fallback worker, for kernels where io_uring is absent or disabled
//! (`kernel.io_uring_disabled`), or when `--no-io-uring` is given.
//!
//! poll(2) on the TUN queue, the receive socket and the wake eventfd (all non-blocking), then
//! per wake-up one batch each way:
//! - TUN → UDP: up to [`BATCH`] read(2)s, decisions (and with offloads: splits), one
//!   sendmmsg(2) for all sends (a super-packet's chunks carry their own UDP_SEGMENT cmsg).
//! - UDP → TUN: one recvmmsg(2) of up to [`BATCH`] receives (with UDP_GRO each may hold many
//!   datagrams), checks, coalescing across the batch, one write(2) per TUN write (TUN has no
//!   batched write).
//!
//! Same decisions and counters as the io_uring path (both go through [`WorkerState`] and
//! `crate::datapath`).

use std::io;
use std::net::SocketAddrV4;

use flannel_shared::stats::Counter;

use super::{pin, Sockets, WorkerSetup, WorkerState};
use crate::datapath::{send_chunks, TunVerdict};
use crate::sys;
use crate::sys::io::MsgBatch;
use crate::sys::socket::{decode_recv_cmsgs, sockaddr_in};

/// Packets per direction per batch.
pub const BATCH: usize = 32;
/// Datagram sends per sendmmsg (a super-packet may need several; flushed early when full).
const MAX_MSGS: usize = 128;

/// One prepared send: which TUN read it comes from, where its bytes are, its destination and
/// its UDP_SEGMENT size.
struct Out {
    /// Index of the read (and split) buffer.
    buf: usize,
    /// In the split buffer (else the read buffer).
    split: bool,
    start: usize,
    len: usize,
    dst: SocketAddrV4,
    gso: u16,
    segments: usize,
}

/// The bytes of `o`.
fn out_bytes<'a>(o: &Out, tx_bufs: &'a [Vec<u8>], split_bufs: &'a [Vec<u8>]) -> &'a [u8] {
    let b = if o.split {
        &split_bufs[o.buf]
    } else {
        &tx_bufs[o.buf]
    };
    &b[o.start..o.start + o.len]
}

/// Runs the worker until its wake fd fires.
pub fn run(setup: WorkerSetup) -> io::Result<()> {
    pin(setup.id, setup.cpu);
    let (st, socks) = WorkerState::new(setup);
    let mut w = Fallback::new(st, socks);
    let mut ready = [false; 3];
    loop {
        sys::io::poll_in(&[&w.st.tun, &w.socks.recv, &*w.socks.wake], -1, &mut ready)?;
        if ready[2] {
            break;
        }
        let now = w.st.begin_batch();
        if ready[0] {
            w.tun_batch(now);
        }
        if ready[1] {
            w.udp_batch();
        }
        w.st.end_batch();
    }
    tracing::debug!(worker = w.st.id, "fallback worker stopping");
    Ok(())
}

/// One fallback worker: the shared worker state, its sockets and its batch buffers.
struct Fallback {
    st: WorkerState,
    socks: Sockets,
    /// TUN reads and their split outputs, one per read of a batch.
    tx_bufs: Vec<Vec<u8>>,
    split_bufs: Vec<Vec<u8>>,
    /// UDP receives, one per datagram (or GRO batch) of a recvmmsg.
    rx_bufs: Vec<Vec<u8>>,
    batch: MsgBatch,
    /// Sends prepared for the next sendmmsg.
    outs: Vec<Out>,
}

impl Fallback {
    fn new(st: WorkerState, socks: Sockets) -> Self {
        let sizes = st.sizes;
        Self {
            st,
            socks,
            tx_bufs: vec![vec![0u8; sizes.tun]; BATCH],
            split_bufs: vec![vec![0u8; sizes.split]; BATCH],
            rx_bufs: vec![vec![0u8; sizes.udp]; BATCH],
            batch: MsgBatch::new(MAX_MSGS),
            outs: Vec::with_capacity(MAX_MSGS),
        }
    }

    /// TUN → UDP: up to [`BATCH`] reads and their decisions, then the sends.
    fn tun_batch(&mut self, now: u64) {
        let read_stamp = self.st.drain.read_start();
        for i in 0..BATCH {
            let n = match sys::io::read(&self.st.tun, &mut self.tx_bufs[i]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.st.drain.queue_empty(read_stamp);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.st.core.local.add(Counter::TunRxErrors, 1);
                    break;
                }
            };
            let (buf, out) = (&mut self.tx_bufs[i], &mut self.split_bufs[i]);
            match self.st.tun_read(buf, n, out, now) {
                TunVerdict::Send {
                    peer,
                    split,
                    pkt_offset,
                    segs,
                } => {
                    let dst = SocketAddrV4::new(peer, self.st.port);
                    for c in send_chunks(segs, self.st.offload.gso_for(peer)) {
                        if self.outs.len() == MAX_MSGS {
                            self.flush_sends();
                        }
                        self.outs.push(Out {
                            buf: i,
                            split,
                            start: pkt_offset + c.range.start,
                            len: c.range.len(),
                            dst,
                            gso: c.gso_size,
                            segments: c.segments,
                        });
                    }
                }
                TunVerdict::Icmp(len) => self.st.write_icmp(len),
                TunVerdict::Drop => {}
            }
        }
        self.flush_sends();
        self.st.drain.all_sent();
    }

    /// Sends the prepared sends with sendmmsg, retrying past failed datagrams; a GSO send
    /// refused with EIO/EINVAL turns GSO off and goes out segment by segment.
    fn flush_sends(&mut self) {
        let Self {
            st,
            socks,
            tx_bufs,
            split_bufs,
            batch,
            outs,
            ..
        } = self;
        let local = &mut st.core.local;
        let mut sends = batch.load_sends(
            outs.iter()
                .map(|o| (out_bytes(o, tx_bufs, split_bufs), o.dst, o.gso)),
        );
        let n = sends.count();
        let mut at = 0;
        while at < n {
            match sends.send(&socks.send, at) {
                Ok(k) if k > 0 => {
                    for (j, o) in outs[at..at + k].iter().enumerate() {
                        local.add(Counter::UdpTxPackets, o.segments as u64);
                        local.add(Counter::UdpTxBytes, sends.sent_len(at + j) as u64);
                    }
                    at += k;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if outs[at].gso > 0
                        && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) =>
                {
                    st.offload
                        .gso_failed(*outs[at].dst.ip(), e.raw_os_error().unwrap_or(libc::EIO));
                    let o = &outs[at];
                    let dst = sockaddr_in(o.dst);
                    for seg in out_bytes(o, tx_bufs, split_bufs).chunks(usize::from(o.gso)) {
                        match sys::io::send_to(&socks.send, seg, &dst) {
                            Ok(w) => {
                                local.add(Counter::UdpTxPackets, 1);
                                local.add(Counter::UdpTxBytes, w as u64);
                            }
                            Err(_) => local.add(Counter::UdpTxErrors, 1),
                        }
                    }
                    at += 1;
                }
                Ok(_) => {
                    // Nothing sent and no error: count the first as lost, go on.
                    local.add(Counter::UdpTxErrors, outs[at].segments as u64);
                    at += 1;
                }
                Err(e) => {
                    // The first datagram failed (e.g. unreachable peer, full buffer, over the
                    // path MTU with DF set): it is lost; go on with the rest.
                    let counter = if e.raw_os_error() == Some(libc::EMSGSIZE) {
                        Counter::UdpTxTooBig
                    } else {
                        Counter::UdpTxErrors
                    };
                    local.add(counter, outs[at].segments as u64);
                    at += 1;
                }
            }
        }
        outs.clear();
    }

    /// UDP → TUN: one recvmmsg of up to [`BATCH`] receives, their checks, and the TUN writes
    /// (coalesced across the batch with offloads).
    fn udp_batch(&mut self) {
        let got = match self.batch.recv(&self.socks.recv, &mut self.rx_bufs) {
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(_) => {
                self.st.core.local.add(Counter::UdpRxErrors, 1);
                0
            }
        };
        for (i, buf) in self.rx_bufs.iter_mut().enumerate().take(got) {
            if self.batch.truncated(i) {
                self.st.core.recv_truncated();
                continue;
            }
            let meta = decode_recv_cmsgs(self.batch.control(i));
            let n = self.batch.len(i);
            self.st.udp_recv(buf, n, meta, self.batch.sender(i));
        }
        self.st.flush_rx();
    }
}
