//! Sizing a shared file with every block allocated.
//!
//! `ftruncate` makes a sparse file: on a full tmpfs the first store through the mapping then
//! raises SIGBUS and kills the process (a crash loop under systemd). `posix_fallocate(3)`
//! allocates every block up front instead and fails with ENOSPC, which the callers report.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Makes `file` `len` bytes long with every block allocated (zero filled).
pub(crate) fn allocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file size too large"))?;
    // SAFETY: the descriptor is open for writing and owned by `file` for the whole call;
    // posix_fallocate reads no memory of ours.
    let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match r {
        0 => Ok(()),
        // A file system without fallocate (rare for a tmpfs-backed /run): the file is sparse.
        libc::EOPNOTSUPP => file.set_len(len as u64),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}
