//! tcx links (Linux 6.6): a TC program attached to a device's ingress or egress through
//! `BPF_LINK_CREATE`, owned by a file descriptor.
//!
//! The link is the attachment: when its last reference goes (the fd is closed, which process
//! exit does for every fd, `kill -9` included), the kernel's `tcx_link_release` detaches the
//! program. So a crashed data plane leaves no program behind, as long as the fd is never
//! pinned, stored in systemd's fd store, or passed across exec (BPF fds are close-on-exec).
//! A deleted device makes the link defunct; closing it is then harmless.
//!
//! What can fail: EINVAL before 6.6 (no tcx attach types) or for a program of another type,
//! EPERM without CAP_NET_ADMIN, ENODEV for an unknown ifindex.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::bpf::bpf;
use super::cvt;

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;

/// Which hook of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcxDir {
    /// `BPF_TCX_INGRESS`.
    Ingress = 46,
    /// `BPF_TCX_EGRESS`.
    Egress = 47,
}

/// `union bpf_attr` for `BPF_LINK_CREATE` with the tcx part (32 bytes).
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    pad: u32,
    expected_revision: u64,
}

/// `union bpf_attr` for `BPF_PROG_QUERY` (64 bytes).
#[repr(C)]
struct QueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    count: u32,
    pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// An attached program; dropping it detaches the program.
#[derive(Debug)]
pub struct TcxLink {
    fd: OwnedFd,
}

impl TcxLink {
    /// Attaches `prog` (a `BPF_PROG_TYPE_SCHED_CLS` program) after any programs already on
    /// the hook of `ifindex`.
    pub fn attach(prog: &OwnedFd, ifindex: u32, dir: TcxDir) -> io::Result<Self> {
        let fd = bpf(
            BPF_LINK_CREATE,
            &LinkCreateAttr {
                prog_fd: prog.as_raw_fd() as u32,
                target_ifindex: ifindex,
                attach_type: dir as u32,
                flags: 0,
                relative_fd: 0,
                pad: 0,
                expected_revision: 0,
            },
        )?;
        Ok(Self { fd })
    }

    /// The link's fd (for `/proc/self/fdinfo`).
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// The ids of the programs attached to the hook of `ifindex` through tcx (links or not), in
/// run order.
pub fn query(ifindex: u32, dir: TcxDir) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_ifindex: ifindex,
        attach_type: dir as u32,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        count: ids.len() as u32,
        pad: 0,
        prog_attach_flags: 0,
        link_ids: 0,
        link_attach_flags: 0,
        revision: 0,
    };
    // SAFETY: `attr` is the query part of `union bpf_attr`; the kernel writes at most `count`
    // ids into `ids` (which holds that many) and the real count into `attr.count`; both
    // outlive the call.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut QueryAttr,
            std::mem::size_of::<QueryAttr>() as libc::c_uint,
        )
    })?;
    ids.truncate((attr.count as usize).min(64));
    Ok(ids)
}
