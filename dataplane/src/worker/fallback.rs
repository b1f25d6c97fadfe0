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

use super::{pin, Sockets, WorkerSetup, WorkerState, WriteSyscalls};
use crate::datapath::{transmits, TunVerdict};
use crate::sys;
use crate::sys::io::MsgBatch;
use crate::sys::socket::{decode_recv_cmsgs, sockaddr_in};
use crate::transmit::{Transmit, TxBuffer};

/// Packets per direction per batch.
pub const BATCH: usize = 32;
/// Datagram sends per sendmmsg (a super-packet may need several; flushed early when full).
const MAX_MSGS: usize = 128;

/// One prepared send and the TUN read (index of its read and split buffers) it comes from.
struct QueuedSend {
    read: usize,
    tx: Transmit,
}

/// The bytes of `q`.
fn queued_bytes<'a>(q: &QueuedSend, tx_bufs: &'a [Vec<u8>], split_bufs: &'a [Vec<u8>]) -> &'a [u8] {
    let b = match q.tx.buffer {
        TxBuffer::Split => &split_bufs[q.read],
        TxBuffer::Read => &tx_bufs[q.read],
    };
    &b[q.tx.range.clone()]
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
    queued: Vec<QueuedSend>,
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
            queued: Vec::with_capacity(MAX_MSGS),
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
                    self.st.decider.counters.add(Counter::TunRxErrors, 1);
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
                    let gso = self.st.offload.gso_for(peer);
                    for tx in transmits(segs, gso, peer, TxBuffer::holding(split), pkt_offset) {
                        if self.queued.len() == MAX_MSGS {
                            self.flush_sends();
                        }
                        self.queued.push(QueuedSend { read: i, tx });
                    }
                }
                TunVerdict::Icmp(len) => self.st.write_icmp(len, &mut WriteSyscalls),
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
            queued,
            ..
        } = self;
        let port = st.port;
        let local = &mut st.decider.counters;
        let mut sends = batch.load_sends(queued.iter().map(|q| {
            let dst = SocketAddrV4::new(q.tx.peer, port);
            (queued_bytes(q, tx_bufs, split_bufs), dst, q.tx.segment_size)
        }));
        let n = sends.count();
        let mut at = 0;
        while at < n {
            match sends.send(&socks.send, at) {
                Ok(k) if k > 0 => {
                    for (j, q) in queued[at..at + k].iter().enumerate() {
                        local.add(Counter::UdpTxPackets, q.tx.segments as u64);
                        local.add(Counter::UdpTxBytes, sends.sent_len(at + j) as u64);
                    }
                    at += k;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if queued[at].tx.is_gso()
                        && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) =>
                {
                    let q = &queued[at];
                    st.offload
                        .gso_failed(q.tx.peer, e.raw_os_error().unwrap_or(libc::EIO));
                    let dst = sockaddr_in(SocketAddrV4::new(q.tx.peer, port));
                    let bytes = queued_bytes(q, tx_bufs, split_bufs);
                    for seg in bytes.chunks(usize::from(q.tx.segment_size)) {
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
                    local.add(Counter::UdpTxErrors, queued[at].tx.segments as u64);
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
                    local.add(counter, queued[at].tx.segments as u64);
                    at += 1;
                }
            }
        }
        queued.clear();
    }

    /// UDP → TUN: one recvmmsg of up to [`BATCH`] receives, their checks, and the TUN writes
    /// (coalesced across the batch with offloads).
    fn udp_batch(&mut self) {
        let got = match self.batch.recv(&self.socks.recv, &mut self.rx_bufs) {
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(_) => {
                self.st.decider.counters.add(Counter::UdpRxErrors, 1);
                0
            }
        };
        for (i, buf) in self.rx_bufs.iter_mut().enumerate().take(got) {
            if self.batch.truncated(i) {
                self.st.decider.recv_truncated();
                continue;
            }
            let meta = decode_recv_cmsgs(self.batch.control(i));
            let n = self.batch.len(i);
            self.st
                .udp_recv(buf, n, meta, self.batch.sender(i), &mut WriteSyscalls);
        }
        self.st.flush_rx(&mut WriteSyscalls);
    }
}
