//! One queue of a multi-queue TUN device.
//!
//! Each call to [`open_queue`] opens `/dev/net/tun` and attaches it to the device `name` with
//! `IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE` (Linux 3.8+), creating the device on the first call.
//! The device is not persistent: it disappears (with its address and routes) when the last
//! queue is closed, i.e. when the data plane exits. The kernel spreads flows over the queues
//! by flow hash, which is what spreads one host pair's traffic over several workers.
//!
//! Offloads: with `vnet_hdr` the queue is opened with `IFF_VNET_HDR` (every read and write
//! carries a 10-byte `virtio_net_hdr` first, see `gso::VnetHdr`), and [`set_offload`]
//! (`TUNSETOFFLOAD`, device-wide) lets the kernel hand us checksum-partial packets and TSO/USO
//! super-packets up to 64 KiB. TUN_F_CSUM/TSO4/TSO6 exist since 2.6.27; TUN_F_USO4/USO6 since
//! Linux 6.2 (older kernels answer EINVAL, and the caller retries without them). All queues of
//! one device must be opened with the same flags.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use super::cvt;

/// Whether a network device called `name` exists in this network namespace (if_nametoindex).
pub fn device_exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Opens one queue of TUN device `name`, non-blocking (O_NONBLOCK): the io_uring worker reads
/// it with a multishot READ (TUN is FMODE_NOWAIT since Linux 6.4, so nothing blocks in the
/// kernel) or, like the fallback worker, with read(2) when poll says it is readable; it writes
/// with ring WRITEs, the fallback worker with write(2).
pub fn open_queue(name: &str, vnet_hdr: bool) -> io::Result<OwnedFd> {
    let mut ifr = ifreq_for(name)?;
    let flags = libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: the path is a NUL-terminated C string literal; open has no other preconditions.
    let fd = cvt(unsafe { libc::open(c"/dev/net/tun".as_ptr(), flags) })?;
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
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

/// A queue's device name and its flags (`TUNGETIFF`: IFF_TUN, IFF_NO_PI, IFF_MULTI_QUEUE,
/// IFF_VNET_HDR, …). Fails with EBADFD when the queue's device is gone (deleted under it).
pub fn queue_info(fd: &impl std::os::fd::AsRawFd) -> io::Result<(String, i32)> {
    // SAFETY: `ifreq` is a plain C struct/union of integers and arrays; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF fills one `struct ifreq`, which `ifr` is and outlives the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut ifr) })?;
    let name: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    // SAFETY: TUNGETIFF wrote the flags member of the union.
    let flags = i32::from(unsafe { ifr.ifr_ifru.ifru_flags }) & 0xffff;
    Ok((String::from_utf8_lossy(&name).into_owned(), flags))
}

/// `TUNSETOFFLOAD` feature bits (linux/if_tun.h).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_USO4: u32 = 0x20;
pub const TUN_F_USO6: u32 = 0x40;

/// `TUNSETOFFLOAD`: the offloads the kernel may use on packets it hands to this device's
/// readers (device-wide). EINVAL means a bit is unknown to this kernel.
pub fn set_offload(fd: &OwnedFd, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its unsigned int argument by value; no memory is passed.
    cvt(unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            libc::TUNSETOFFLOAD,
            flags as libc::c_ulong,
        )
    })?;
    Ok(())
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
