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
use crate::sys::socket::{decode_udp_gro, encode_udp_segment, sockaddr_in, sockaddr_ip, CMSG_BUF};

/// Packets per direction per batch.
pub const BATCH: usize = 32;
/// Datagram sends per sendmmsg (a super-packet may need several; flushed early when full).
const MAX_MSGS: usize = 128;

/// One prepared send: where its bytes are and its cmsg.
struct Out {
    ptr: *mut u8,
    len: usize,
    gso: u16,
    segments: usize,
}

/// Sends `outs` to `dst` with sendmmsg, retrying past failed datagrams; a GSO send refused
/// with EIO/EINVAL turns GSO off and goes out segment by segment.
#[allow(clippy::too_many_arguments)]
fn flush_sends(
    send: &OwnedFd,
    outs: &mut Vec<Out>,
    addrs: &mut [libc::sockaddr_in],
    iovs: &mut [libc::iovec],
    ctls: &mut [[u8; CMSG_BUF]],
    msgs: &mut [libc::mmsghdr],
    off: &Offload,
    local: &mut Local,
) {
    let n = outs.len();
    for (i, o) in outs.iter().enumerate() {
        iovs[i].iov_base = o.ptr.cast();
        iovs[i].iov_len = o.len;
        let h = &mut msgs[i].msg_hdr;
        h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        if o.gso > 0 {
            let c = encode_udp_segment(&mut ctls[i], o.gso);
            h.msg_control = ctls[i].as_mut_ptr().cast();
            h.msg_controllen = c as _;
        } else {
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
        }
        h.msg_flags = 0;
    }
    let mut at = 0;
    while at < n {
        // SAFETY: headers at..n point at `iovs`, `ctls`, `addrs` and the packet buffers behind
        // `outs`, all live and unmoved for the duration of the call.
        match unsafe { sys::io::sendmmsg(send, &mut msgs[at..n]) } {
            Ok(k) if k > 0 => {
                for (m, o) in msgs[at..at + k].iter().zip(&outs[at..at + k]) {
                    local.add(Counter::UdpTxPackets, o.segments as u64);
                    local.add(Counter::UdpTxBytes, u64::from(m.msg_len));
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
                let seg = usize::from(o.gso);
                let mut pos = 0;
                while pos < o.len {
                    let l = seg.min(o.len - pos);
                    // SAFETY: `pos + l <= o.len`, inside the buffer `o.ptr` points into.
                    let bytes = unsafe { std::slice::from_raw_parts(o.ptr.add(pos), l) };
                    match sys::io::send_to(send, bytes, &addrs[at]) {
                        Ok(w) => {
                            local.add(Counter::UdpTxPackets, 1);
                            local.add(Counter::UdpTxBytes, w as u64);
                        }
                        Err(_) => local.add(Counter::UdpTxErrors, 1),
                    }
                    pos += l;
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
    let unspec = sockaddr_in(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0));
    let mut tx_addr = vec![unspec; MAX_MSGS];
    let mut rx_addr = vec![unspec; BATCH];
    let mut iovs = vec![
        libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        MAX_MSGS
    ];
    let mut ctls = vec![[0u8; CMSG_BUF]; MAX_MSGS];
    // SAFETY: mmsghdr is plain C data; all-zero is a valid value.
    let mut msgs: Vec<libc::mmsghdr> = (0..MAX_MSGS)
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
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
                        let dst = sockaddr_in(SocketAddrV4::new(peer, port));
                        let base = if split {
                            split_bufs[i].as_mut_ptr()
                        } else {
                            tx_bufs[i].as_mut_ptr()
                        };
                        for c in send_chunks(segs, off.gso()) {
                            if outs.len() == MAX_MSGS {
                                flush_sends(
                                    &send,
                                    &mut outs,
                                    &mut tx_addr,
                                    &mut iovs,
                                    &mut ctls,
                                    &mut msgs,
                                    off,
                                    &mut local,
                                );
                            }
                            tx_addr[outs.len()] = dst;
                            outs.push(Out {
                                // SAFETY: the chunk lies inside the buffer `base` points to.
                                ptr: unsafe { base.add(pkt_offset + c.range.start) },
                                len: c.range.len(),
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
                &mut tx_addr,
                &mut iovs,
                &mut ctls,
                &mut msgs,
                off,
                &mut local,
            );
            drain.all_sent();
        }

        if ready[1] {
            for i in 0..BATCH {
                iovs[i].iov_base = rx_bufs[i].as_mut_ptr().cast();
                iovs[i].iov_len = rx_bufs[i].len();
                let h = &mut msgs[i].msg_hdr;
                h.msg_name = (&mut rx_addr[i] as *mut libc::sockaddr_in).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_iov = &mut iovs[i];
                h.msg_iovlen = 1;
                if off.gro {
                    h.msg_control = ctls[i].as_mut_ptr().cast();
                    h.msg_controllen = CMSG_BUF as _;
                } else {
                    h.msg_control = std::ptr::null_mut();
                    h.msg_controllen = 0;
                }
                h.msg_flags = 0;
            }
            // SAFETY: every header points at `iovs`, `rx_bufs`, `ctls` and `rx_addr`, live and
            // unmoved for the duration of the call.
            let got = match unsafe { sys::io::recvmmsg(&recv, &mut msgs[..BATCH]) } {
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(_) => {
                    local.add(Counter::UdpRxErrors, 1);
                    0
                }
            };
            for i in 0..got {
                let n = msgs[i].msg_len as usize;
                let h = &msgs[i].msg_hdr;
                if h.msg_flags & libc::MSG_TRUNC != 0 {
                    local.add(Counter::UdpRxPackets, 1);
                    local.add(Counter::DropBadLength, 1);
                    continue;
                }
                let gro_size = if off.gro {
                    decode_udp_gro(&ctls[i][..sys::socket::control_len(h).min(CMSG_BUF)])
                } else {
                    None
                };
                let sender = sockaddr_ip(&rx_addr[i]);
                let ctx = &routes.ctx;
                let buf = &mut rx_bufs[i];
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
