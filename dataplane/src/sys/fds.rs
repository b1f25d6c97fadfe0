//! File descriptors that outlive one data-plane process: taken from `$LISTEN_FDS` at start,
//! sent to systemd's fd store, and passed across `execve` to the next data plane.
//!
//! - [`take_listen_fds`]: systemd's protocol (`sd_listen_fds`): the fds start at 3, and
//!   `$LISTEN_PID` must be this process. systemd sets it for socket activation and for its fd
//!   store (`FileDescriptorStoreMax=`, systemd 219+); our own re-exec sets it too.
//! - [`notify_with_fds`]: one `sd_notify` datagram with the fds as `SCM_RIGHTS` (`FDSTORE=1`).
//!   systemd ignores an fd it already holds (same open file), so storing again is harmless.
//! - [`exec_with_fds`]: replaces this process (same PID) with a program that finds `fds` at 3,
//!   4, … and `$LISTEN_FDS`/`$LISTEN_PID`/`$LISTEN_FDNAMES` describing them.
//!
//! What can fail: a closed fd number in the range (an inconsistent environment: the fd is
//! skipped and reported), a notify socket that is gone or refuses fds (`FileDescriptorStoreMax=`
//! unset makes systemd close them, with no error here), `execve` itself.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use flannel_shared::sd_notify::Target;

use super::cvt;

/// The first passed fd (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the `n` fds from [`LISTEN_FDS_START`] that `$LISTEN_PID` (checked by the
/// caller to be this process) says were passed, marking them close-on-exec. Only the first
/// call takes anything; a later one returns an empty list. A number that is not an open fd is
/// left out and named in the second list.
pub fn take_listen_fds(n: usize) -> (Vec<(usize, OwnedFd)>, Vec<RawFd>) {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return (Vec::new(), Vec::new());
    }
    let mut fds = Vec::with_capacity(n);
    let mut missing = Vec::new();
    for i in 0..n {
        let raw = LISTEN_FDS_START + i as RawFd;
        // SAFETY: F_GETFD only reads the fd's flags; an unknown fd answers EBADF.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
        if flags < 0 {
            missing.push(raw);
            continue;
        }
        // SAFETY: F_SETFD with an int argument; `raw` is open (checked above).
        unsafe { libc::fcntl(raw, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        // SAFETY: `raw` is open and was passed to this process by whoever exec'd it
        // ($LISTEN_PID is us, checked by the caller). Nothing in this process owns it yet:
        // the data plane opens fds only through calls that return new numbers, and TAKEN
        // makes this the only place that ever wraps the passed range.
        fds.push((i, unsafe { OwnedFd::from_raw_fd(raw) }));
    }
    (fds, missing)
}

/// Sends `message` (newline-separated `KEY=VALUE` lines, e.g. `FDSTORE=1\nFDNAME=tun.0`) to
/// the notify socket `target` with `fds` attached as `SCM_RIGHTS`, without blocking (a full
/// socket queue answers EAGAIN).
pub fn notify_with_fds(target: &Target, message: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path: Vec<u8> = match target {
        Target::Path(p) => p.as_os_str().as_bytes().to_vec(),
        Target::Abstract(name) => std::iter::once(0).chain(name.iter().copied()).collect(),
    };
    if path.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET {target:?}: longer than sun_path"),
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(&path) {
        *d = *s as libc::c_char;
    }
    let addr_len = std::mem::size_of::<libc::sa_family_t>() + path.len();
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let data_len = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    let mut iov = libc::iovec {
        iov_base: message.as_ptr() as *mut libc::c_void,
        iov_len: message.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid before the fields are set.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = addr_len as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer is `space` bytes, aligned, and holds exactly one cmsg of
        // `data_len` bytes (CMSG_SPACE above), so CMSG_FIRSTHDR is non-null and CMSG_DATA
        // points at `data_len` writable bytes inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), data_len);
        }
    }
    // Never block on a full notify socket (systemd drains it; a test may not yet).
    let kind = libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: a fresh socket call without pointer arguments.
    let sock = cvt(unsafe { libc::socket(libc::AF_UNIX, kind, 0) })?;
    // SAFETY: `sock` was just returned by socket() and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: `msg` points at `addr`, `iov` (over `message`) and `control`, all alive for the
    // call; the kernel only reads them.
    cvt(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })?;
    Ok(())
}

/// Replaces this process with `exe` (argv `arg0`, `args`), which finds `fds` as 3, 4, … with
/// `$LISTEN_FDS`, `$LISTEN_PID` (this PID, kept by execve) and `$LISTEN_FDNAMES` (`names`,
/// `:`-separated) set. Returns only on failure.
pub fn exec_with_fds(
    exe: &Path,
    arg0: &OsStr,
    args: &[OsString],
    fds: &[BorrowedFd<'_>],
    names: &str,
) -> io::Error {
    let n = fds.len();
    let first_free = LISTEN_FDS_START + n as RawFd;
    // Copies above the target range first, so moving them into place never overwrites a
    // source. The copies are close-on-exec; the targets dup2 makes are not.
    let mut high = Vec::with_capacity(n);
    for fd in fds {
        // SAFETY: F_DUPFD_CLOEXEC duplicates an open fd to the lowest free number ≥ first_free.
        match cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, first_free) }) {
            // SAFETY: a fresh fd from fcntl, owned by nobody else.
            Ok(h) => high.push(unsafe { OwnedFd::from_raw_fd(h) }),
            Err(e) => return e,
        }
    }
    let sources: Vec<RawFd> = high.iter().map(|h| h.as_raw_fd()).collect();
    let mut cmd = std::process::Command::new(exe);
    cmd.arg0(arg0)
        .args(args)
        .env("LISTEN_FDS", n.to_string())
        .env("LISTEN_PID", std::process::id().to_string())
        .env("LISTEN_FDNAMES", names);
    // SAFETY: the closure runs between the environment's preparation and execve in this very
    // process (Command::exec does not fork) and calls only dup2, which is async-signal-safe;
    // `sources` lives until exec.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &src) in sources.iter().enumerate() {
                if libc::dup2(src, LISTEN_FDS_START + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let err = cmd.exec();
    drop(high);
    err
}
