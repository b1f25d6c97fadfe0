//! The fallback worker, for kernels where io_uring is absent or disabled
//! (`kernel.io_uring_disabled`), or when `--no-io-uring` is given.
//!
//! poll(2) on the TUN queue, the receive socket and the wake eventfd (all non-blocking), then
//! per wake-up one batch each way:
//! - TUN → UDP: up to [`BATCH`] read(2)s, decisions, one sendmmsg(2) for all sends.
//! - UDP → TUN: one recvmmsg(2) of up to [`BATCH`] datagrams, checks, one write(2) each
//!   (TUN has no batched write without offloads).
//!
//! Same decisions and counters as the io_uring path (both call `forward`).

use std::io;
use std::net::SocketAddrV4;
use std::time::Instant;

use flannel_shared::stats::Counter;

use super::{icmp_limiter, now_ns, pin, Local, Routes, WorkerSetup, BUF_SIZE};
use crate::forward::{self, TunAction};
use crate::packet::ICMP_UNREACH_MAX;
use crate::sys;
use crate::sys::socket::{sockaddr_in, sockaddr_ip};

/// Packets per direction per batch.
pub const BATCH: usize = 32;

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
        ..
    } = setup;
    let mut routes = Routes::new(reader, spoof_check);
    let mut limiter = icmp_limiter();
    let start = Instant::now();
    let mut local = Local::new();
    let mut icmp = [0u8; ICMP_UNREACH_MAX];

    let mut tx_bufs = vec![vec![0u8; BUF_SIZE]; BATCH];
    let mut tx_len = [0usize; BATCH];
    let mut tx_addr = [sockaddr_in(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)); BATCH];
    let mut rx_bufs = vec![vec![0u8; BUF_SIZE]; BATCH];
    let mut rx_addr = tx_addr;
    let mut iovs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    // SAFETY: mmsghdr is plain C data; all-zero is a valid value.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut ready = [false; 3];

    loop {
        sys::io::poll_in(&[&tun, &recv, &*wake], -1, &mut ready)?;
        if ready[2] {
            break;
        }
        routes.refresh();
        let now = now_ns(start);

        if ready[0] {
            let mut nsend = 0;
            for _ in 0..BATCH {
                let buf = &mut tx_bufs[nsend];
                let n = match sys::io::read(&tun, buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        local.add(Counter::TunRxErrors, 1);
                        break;
                    }
                };
                local.add(Counter::TunRxPackets, 1);
                local.add(Counter::TunRxBytes, n as u64);
                let mut limited = false;
                let action = forward::tun_to_udp(
                    &mut buf[..n],
                    &routes.snap,
                    &routes.ctx,
                    &mut limiter,
                    now,
                    &mut icmp,
                    &mut limited,
                );
                match action {
                    TunAction::Send(peer) => {
                        tx_len[nsend] = n;
                        tx_addr[nsend] = sockaddr_in(SocketAddrV4::new(peer, port));
                        nsend += 1;
                    }
                    TunAction::Unreachable(len) => {
                        local.add(Counter::DropNoRoute, 1);
                        match sys::io::write(&tun, &icmp[..len]) {
                            Ok(_) => local.add(Counter::IcmpUnreachableSent, 1),
                            Err(_) => local.add(Counter::TunTxErrors, 1),
                        }
                    }
                    TunAction::Drop(reason) => {
                        local.add(reason.counter(), 1);
                        if limited {
                            local.add(Counter::IcmpRateLimited, 1);
                        }
                    }
                }
            }
            for i in 0..nsend {
                iovs[i].iov_base = tx_bufs[i].as_mut_ptr().cast();
                iovs[i].iov_len = tx_len[i];
                let h = &mut msgs[i].msg_hdr;
                h.msg_name = (&mut tx_addr[i] as *mut libc::sockaddr_in).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_iov = &mut iovs[i];
                h.msg_iovlen = 1;
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
                h.msg_flags = 0;
            }
            let mut off = 0;
            while off < nsend {
                // SAFETY: headers off..nsend point at `iovs`, `tx_bufs` and `tx_addr`, all live
                // and unmoved for the duration of the call.
                match unsafe { sys::io::sendmmsg(&send, &mut msgs[off..nsend]) } {
                    Ok(k) if k > 0 => {
                        for m in &msgs[off..off + k] {
                            local.add(Counter::UdpTxPackets, 1);
                            local.add(Counter::UdpTxBytes, u64::from(m.msg_len));
                        }
                        off += k;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    _ => {
                        // The first datagram failed (e.g. unreachable peer, full buffer): it is
                        // lost; go on with the rest.
                        local.add(Counter::UdpTxErrors, 1);
                        off += 1;
                    }
                }
            }
        }

        if ready[1] {
            for i in 0..BATCH {
                iovs[i].iov_base = rx_bufs[i].as_mut_ptr().cast();
                iovs[i].iov_len = BUF_SIZE;
                let h = &mut msgs[i].msg_hdr;
                h.msg_name = (&mut rx_addr[i] as *mut libc::sockaddr_in).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_iov = &mut iovs[i];
                h.msg_iovlen = 1;
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
                h.msg_flags = 0;
            }
            // SAFETY: every header points at `iovs`, `rx_bufs` and `rx_addr`, live and unmoved
            // for the duration of the call.
            let got = match unsafe { sys::io::recvmmsg(&recv, &mut msgs) } {
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
                let flags = msgs[i].msg_hdr.msg_flags;
                local.add(Counter::UdpRxPackets, 1);
                local.add(Counter::UdpRxBytes, n as u64);
                let verdict = if flags & libc::MSG_TRUNC != 0 {
                    Err(forward::DropReason::BadLength)
                } else {
                    let sender = sockaddr_ip(&rx_addr[i]);
                    forward::udp_to_tun(&mut rx_bufs[i][..n], sender, &routes.ctx)
                };
                match verdict {
                    Ok(()) => match sys::io::write(&tun, &rx_bufs[i][..n]) {
                        Ok(w) => {
                            local.add(Counter::TunTxPackets, 1);
                            local.add(Counter::TunTxBytes, w as u64);
                        }
                        Err(_) => local.add(Counter::TunTxErrors, 1),
                    },
                    Err(reason) => local.add(reason.counter(), 1),
                }
            }
        }
        local.add(Counter::Batches, 1);
        local.flush(&stats);
    }
    tracing::debug!(worker = id, "fallback worker stopping");
    Ok(())
}
