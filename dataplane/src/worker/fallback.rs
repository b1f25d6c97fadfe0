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
//! Same decisions and counters as the io_uring path (both call `forward`).

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::OwnedFd;
use std::time::Instant;

use flannel_shared::stats::Counter;

use super::{
    coalesce_room, coalesce_udp_recv, flush_coalesced, handle_tun_read, icmp_limiter, now_ns, pin,
    plain_udp_recv, send_chunks, write_tun, BufSizes, Local, Offload, TunVerdict, WorkerSetup,
};
use crate::gro::{self, Coalescer};
use crate::gso::VNET_HDR_LEN;
use crate::packet::ICMP_UNREACH_MAX;
use crate::sys;
use crate::sys::io::MsgBatch;
use crate::sys::socket::{decode_udp_gro, sockaddr_in};

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

/// Sends `outs` with sendmmsg, retrying past failed datagrams; a GSO send refused with
/// EIO/EINVAL turns GSO off and goes out segment by segment.
#[allow(clippy::too_many_arguments)]
fn flush_sends(
    send: &OwnedFd,
    outs: &mut Vec<Out>,
    tx_bufs: &[Vec<u8>],
    split_bufs: &[Vec<u8>],
    batch: &mut MsgBatch,
    off: &Offload,
    local: &mut Local,
) {
    let mut sends = batch.load_sends(
        outs.iter()
            .map(|o| (out_bytes(o, tx_bufs, split_bufs), o.dst, o.gso)),
    );
    let n = sends.count();
    let mut at = 0;
    while at < n {
        match sends.send(send, at) {
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
                off.gso_failed(e.raw_os_error().unwrap_or(libc::EIO));
                let o = &outs[at];
                let dst = sockaddr_in(o.dst);
                for seg in out_bytes(o, tx_bufs, split_bufs).chunks(usize::from(o.gso)) {
                    match sys::io::send_to(send, seg, &dst) {
                        Ok(w) => {
                            local.add(Counter::UdpTxPackets, 1);
                            local.add(Counter::UdpTxBytes, w as u64);
                        }
                        Err(_) => local.add(Counter::UdpTxErrors, 1),
                    }
                }
                at += 1;
            }
            _ => {
                // The first datagram failed (e.g. unreachable peer, full buffer): it is
                // lost; go on with the rest.
                local.add(Counter::UdpTxErrors, outs[at].segments as u64);
                at += 1;
            }
        }
    }
    outs.clear();
}

/// Runs the worker until its wake fd fires.
pub fn run(setup: WorkerSetup) -> io::Result<()> {
    pin(setup.id, setup.cpu);
    let WorkerSetup {
        id,
        tun,
        recv,
        send,
        wake,
        reader,
        stats,
        port,
        spoof_check,
        offload,
        drain,
        ..
    } = setup;
    let mut drain = super::DrainReporter::new(drain, id);
    let off: &Offload = &offload;
    let vnet = off.vnet_hdr;
    let sizes = BufSizes::new(vnet);
    let mut routes = super::Routes::new(reader, spoof_check);
    let mut limiter = icmp_limiter();
    let start = Instant::now();
    let mut local = Local::new();
    let mut icmp = [0u8; ICMP_UNREACH_MAX];
    let mut icmp_pkt = [0u8; ICMP_UNREACH_MAX + VNET_HDR_LEN];
    let icmp_off = if vnet { VNET_HDR_LEN } else { 0 };

    let mut tx_bufs = vec![vec![0u8; sizes.tun]; BATCH];
    let mut split_bufs = vec![vec![0u8; sizes.split]; BATCH];
    let mut rx_bufs = vec![vec![0u8; sizes.udp]; BATCH];
    let mut coalesce = vec![0u8; sizes.coalesce];
    let mut co_writes: Vec<gro::Write> = Vec::with_capacity(256);
    let mut co = Coalescer::new(&mut coalesce, &mut co_writes);
    let mut writes: Vec<gro::Write> = Vec::with_capacity(128);
    let mut batch = MsgBatch::new(MAX_MSGS);
    let mut outs: Vec<Out> = Vec::with_capacity(MAX_MSGS);
    let mut ready = [false; 3];

    loop {
        sys::io::poll_in(&[&tun, &recv, &*wake], -1, &mut ready)?;
        if ready[2] {
            break;
        }
        routes.refresh();
        let now = now_ns(start);

        if ready[0] {
            let read_stamp = drain.read_start();
            for i in 0..BATCH {
                let n = match sys::io::read(&tun, &mut tx_bufs[i]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        drain.queue_empty(read_stamp);
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        local.add(Counter::TunRxErrors, 1);
                        break;
                    }
                };
                let verdict = handle_tun_read(
                    &mut tx_bufs[i],
                    n,
                    vnet,
                    &mut split_bufs[i],
                    &routes,
                    &mut limiter,
                    now,
                    &mut icmp,
                    &mut local,
                );
                match verdict {
                    TunVerdict::Send {
                        peer,
                        split,
                        pkt_offset,
                        segs,
                    } => {
                        let dst = SocketAddrV4::new(peer, port);
                        for c in send_chunks(segs, off.gso()) {
                            if outs.len() == MAX_MSGS {
                                flush_sends(
                                    &send,
                                    &mut outs,
                                    &tx_bufs,
                                    &split_bufs,
                                    &mut batch,
                                    off,
                                    &mut local,
                                );
                            }
                            outs.push(Out {
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
                    TunVerdict::Icmp(len) => {
                        icmp_pkt[..icmp_off].fill(0);
                        icmp_pkt[icmp_off..icmp_off + len].copy_from_slice(&icmp[..len]);
                        let pkt = &icmp_pkt[..icmp_off + len];
                        write_tun(&tun, pkt, Counter::IcmpUnreachableSent, &mut local);
                    }
                    TunVerdict::Drop => {}
                }
            }
            flush_sends(
                &send,
                &mut outs,
                &tx_bufs,
                &split_bufs,
                &mut batch,
                off,
                &mut local,
            );
            drain.all_sent();
        }

        if ready[1] {
            let got = match batch.recv(&recv, &mut rx_bufs, off.gro) {
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(_) => {
                    local.add(Counter::UdpRxErrors, 1);
                    0
                }
            };
            for (i, buf) in rx_bufs.iter_mut().enumerate().take(got) {
                let n = batch.len(i);
                if batch.truncated(i) {
                    local.add(Counter::UdpRxPackets, 1);
                    local.add(Counter::DropBadLength, 1);
                    continue;
                }
                let gro_size = if off.gro {
                    decode_udp_gro(batch.control(i))
                } else {
                    None
                };
                let sender = batch.sender(i);
                let ctx = &routes.ctx;
                if vnet {
                    if co.room() < coalesce_room(n, gro_size) {
                        co = flush_coalesced(&tun, co, &mut local);
                    }
                    coalesce_udp_recv(buf, n, gro_size, sender, ctx, &mut co, &mut local);
                } else {
                    plain_udp_recv(buf, n, gro_size, sender, ctx, &mut writes, &mut local);
                    for w in &writes {
                        write_tun(
                            &tun,
                            &buf[w.offset..w.offset + w.len],
                            Counter::TunTxPackets,
                            &mut local,
                        );
                    }
                }
            }
            if !co.is_empty() {
                co = flush_coalesced(&tun, co, &mut local);
            }
        }
        local.add(Counter::Batches, 1);
        local.flush(&stats);
    }
    tracing::debug!(worker = id, "fallback worker stopping");
    Ok(())
}
