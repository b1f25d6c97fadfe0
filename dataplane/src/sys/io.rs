//! Plain syscalls for the fallback path: read/write on the TUN queue, poll, recvmmsg and
//! sendmmsg on the UDP sockets. All fds are expected non-blocking; `WouldBlock` is normal.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::cvt;

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
pub unsafe fn recvmmsg(fd: &OwnedFd, msgs: &mut [libc::mmsghdr]) -> io::Result<usize> {
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
pub unsafe fn sendmmsg(fd: &OwnedFd, msgs: &mut [libc::mmsghdr]) -> io::Result<usize> {
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
