//! Plain syscalls for the fallback path: read/write on the TUN queue, poll, recvmmsg and
//! sendmmsg on the UDP sockets ([`MsgBatch`]: the headers, built and used inside one borrow of
//! the buffers they point at). All fds are expected non-blocking; `WouldBlock` is normal.

use std::io;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};

use super::cvt;
use super::socket::{control_len, encode_udp_segment, sockaddr_in, sockaddr_ip, CMSG_BUF};

/// read(2) one packet into `buf`.
pub fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length during the call.
    cvt(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
        .map(|n| n as usize)
}

/// write(2) one packet.
pub fn write(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is readable for its length during the call.
    cvt(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) }).map(|n| n as usize)
}

/// poll(2) on `fds` (POLLIN), returning which are readable. `timeout_ms` -1 waits forever.
pub fn poll_in(fds: &[&OwnedFd], timeout_ms: i32, ready: &mut [bool]) -> io::Result<()> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a live array of `p.len()` pollfds.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            ready.iter_mut().for_each(|r| *r = false);
            return Ok(());
        }
        return Err(e);
    }
    for (r, pf) in ready.iter_mut().zip(&p) {
        *r = pf.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
    }
    Ok(())
}

/// recvmmsg(2) without blocking into prepared headers; returns how many arrived.
///
/// # Safety
/// Every `msgs[i].msg_hdr` must point at live, writable iovecs/name buffers for the call.
unsafe fn recvmmsg(fd: &OwnedFd, msgs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    // SAFETY: the caller guarantees the headers' buffers; `msgs` is live for the call.
    let r = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    cvt(r).map(|n| n as usize)
}

/// sendmmsg(2) of prepared headers; returns how many were sent.
///
/// # Safety
/// Every `msgs[i].msg_hdr` must point at live iovecs/name buffers for the call.
unsafe fn sendmmsg(fd: &OwnedFd, msgs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    // SAFETY: the caller guarantees the headers' buffers; `msgs` is live for the call.
    let r = unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            0,
        )
    };
    cvt(r).map(|n| n as usize)
}

/// sendto(2) of one datagram to `addr`.
pub fn send_to(fd: &OwnedFd, buf: &[u8], addr: &libc::sockaddr_in) -> io::Result<usize> {
    // SAFETY: `buf` and `addr` are readable for their lengths during the call.
    cvt(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map(|n| n as usize)
}

/// Sets O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_GETFL has no pointer arguments.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: F_SETFL with an integer flag set.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// Reusable `mmsghdr`s (with their iovecs, control buffers and addresses) for up to `cap`
/// datagrams per sendmmsg/recvmmsg; allocated once, so a batch allocates nothing.
pub struct MsgBatch {
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    ctls: Vec<[u8; CMSG_BUF]>,
    addrs: Vec<libc::sockaddr_in>,
}

/// One datagram to send: its bytes, its destination, its UDP_SEGMENT size (0: none).
pub type Datagram<'a> = (&'a [u8], SocketAddrV4, u16);

impl MsgBatch {
    pub fn new(cap: usize) -> Self {
        let unspec = sockaddr_in(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        Self {
            // SAFETY: mmsghdr is plain C data (pointers and integers); all-zero is valid.
            msgs: (0..cap).map(|_| unsafe { std::mem::zeroed() }).collect(),
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                cap
            ],
            ctls: vec![[0u8; CMSG_BUF]; cap],
            addrs: vec![unspec; cap],
        }
    }

    /// Datagrams per batch at most.
    pub fn capacity(&self) -> usize {
        self.msgs.len()
    }

    /// Builds the headers for `datagrams` (the first [`MsgBatch::capacity`] of them); the
    /// result sends them and keeps them borrowed meanwhile.
    pub fn load_sends<'a>(
        &'a mut self,
        datagrams: impl IntoIterator<Item = Datagram<'a>>,
    ) -> LoadedSends<'a> {
        let mut n = 0;
        for (i, (bytes, dst, gso)) in datagrams.into_iter().take(self.msgs.len()).enumerate() {
            self.addrs[i] = sockaddr_in(dst);
            self.iovs[i].iov_base = bytes.as_ptr().cast_mut().cast();
            self.iovs[i].iov_len = bytes.len();
            let h = &mut self.msgs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            if gso > 0 {
                let c = encode_udp_segment(&mut self.ctls[i], gso);
                h.msg_control = self.ctls[i].as_mut_ptr().cast();
                h.msg_controllen = c as _;
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
            h.msg_flags = 0;
            n = i + 1;
        }
        LoadedSends {
            batch: self,
            n,
            _bufs: PhantomData,
        }
    }

    /// recvmmsg(2) without blocking, one receive into each of `bufs` (at most
    /// [`MsgBatch::capacity`]), with control room (UDP_GRO, IP_PKTINFO). Returns how many
    /// arrived; read receive `i` with the accessors below.
    pub fn recv(&mut self, fd: &OwnedFd, bufs: &mut [Vec<u8>]) -> io::Result<usize> {
        let n = bufs.len().min(self.msgs.len());
        for (i, buf) in bufs.iter_mut().take(n).enumerate() {
            self.iovs[i].iov_base = buf.as_mut_ptr().cast();
            self.iovs[i].iov_len = buf.len();
            let h = &mut self.msgs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctls[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_BUF as _;
            h.msg_flags = 0;
        }
        // SAFETY: headers 0..n point at our iovecs, control buffers and addresses and at
        // `bufs`, all live, writable and unmoved for the duration of the call.
        unsafe { recvmmsg(fd, &mut self.msgs[..n]) }
    }

    /// Bytes receive `i` delivered (or send `i` sent).
    pub fn len(&self, i: usize) -> usize {
        self.msgs.get(i).map_or(0, |m| m.msg_len as usize)
    }

    /// Whether receive `i` did not fit its buffer (MSG_TRUNC).
    pub fn truncated(&self, i: usize) -> bool {
        self.msgs
            .get(i)
            .is_some_and(|m| m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0)
    }

    /// The control messages of receive `i`.
    pub fn control(&self, i: usize) -> &[u8] {
        match (self.msgs.get(i), self.ctls.get(i)) {
            (Some(m), Some(c)) => &c[..control_len(&m.msg_hdr).min(CMSG_BUF)],
            _ => &[],
        }
    }

    /// The source address of receive `i`.
    pub fn sender(&self, i: usize) -> Ipv4Addr {
        self.addrs.get(i).map_or(Ipv4Addr::UNSPECIFIED, sockaddr_ip)
    }
}

/// Send headers built over borrowed datagrams ([`MsgBatch::load_sends`]).
pub struct LoadedSends<'a> {
    batch: &'a mut MsgBatch,
    n: usize,
    _bufs: PhantomData<&'a [u8]>,
}

impl LoadedSends<'_> {
    /// How many datagrams are loaded.
    pub fn count(&self) -> usize {
        self.n
    }

    /// sendmmsg(2) of the loaded datagrams from `from` on; returns how many were sent.
    pub fn send(&mut self, fd: &OwnedFd, from: usize) -> io::Result<usize> {
        let Some(msgs) = self.batch.msgs.get_mut(from..self.n) else {
            return Ok(0);
        };
        // SAFETY: headers from..n point at the batch's iovecs, control buffers and addresses
        // (borrowed with it) and at the datagrams, borrowed for as long as `self` lives.
        unsafe { sendmmsg(fd, msgs) }
    }

    /// Bytes datagram `i` went out with (after a [`LoadedSends::send`] that covered it).
    pub fn sent_len(&self, i: usize) -> usize {
        self.batch.len(i)
    }
}
