//! One queue of a multi-queue TUN device.
//!
//! Each call to [`open_queue`] opens `/dev/net/tun` and attaches it to the device `name` with
//! `IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE` (Linux 3.8+), creating the device on the first call.
//! The device is not persistent: it disappears (with its address and routes) when the last
//! queue is closed, i.e. when the data plane exits. The kernel spreads flows over the queues
//! by flow hash, which is what spreads one host pair's traffic over several workers.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use super::cvt;

/// Opens one queue of TUN device `name`. `nonblocking` sets O_NONBLOCK (the fallback path wants
/// it; the io_uring path must not have it, or io_uring returns -EAGAIN instead of polling).
pub fn open_queue(name: &str, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut ifr = ifreq_for(name)?;
    let mut flags = libc::O_RDWR | libc::O_CLOEXEC;
    if nonblocking {
        flags |= libc::O_NONBLOCK;
    }
    // SAFETY: the path is a NUL-terminated C string literal; open has no other preconditions.
    let fd = cvt(unsafe { libc::open(c"/dev/net/tun".as_ptr(), flags) })?;
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `ifr` is and outlives the call.
    cvt(unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::TUNSETIFF,
            &mut ifr,
        )
    })?;
    Ok(fd)
}

/// A zeroed `ifreq` carrying `name` (at most IFNAMSIZ-1 bytes, no NUL inside).
pub fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: `ifreq` is a plain C struct/union of integers and arrays; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(ifr)
}

/// The interface index of `name`.
pub fn if_index(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}
