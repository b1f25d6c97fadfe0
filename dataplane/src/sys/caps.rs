//! Capabilities: after setup the data plane keeps only CAP_NET_ADMIN (it still sets the TUN
//! device's address when our subnet changes); CAP_BPF and everything else it was started with
//! are dropped from the effective, permitted and inheritable sets (`capset(2)`, Linux 2.6.26
//! 64-bit capabilities) and the ambient set is cleared. The bounding set is left alone: a
//! restart in place (re-exec after the TUN device was deleted) gets the start-up set again,
//! unless NoNewPrivileges forbids that (then steering falls back to flow hashing).
//! Started as a non-root user with ambient capabilities (the unit's `User=` and
//! `AmbientCapabilities=`), CAP_NET_ADMIN stays inheritable and ambient (Linux 4.3) when it
//! was ambient: a non-root process keeps across `execve` only its ambient set, and the restart
//! in place needs CAP_NET_ADMIN to recreate the device.
//! Capabilities are per thread: call [`keep_only_net_admin`] before any other thread exists,
//! so every worker inherits the reduced sets.
//!
//! What can fail: `capget`/`capset` (EPERM cannot happen when only dropping), `prctl`.

use std::io;

use super::cvt;

/// CAP_NET_ADMIN (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn get() -> io::Result<[Data; 2]> {
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: `hdr` and `data` are valid for writes and have the layout capget(2) expects for
    // version 3 (a header and two data structs); pid 0 is the calling thread.
    cvt(unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut Header, data.as_mut_ptr()) })?;
    Ok(data)
}

/// Drops every capability but CAP_NET_ADMIN from the calling thread (see the module docs).
/// Returns the effective set before, as a 64-bit mask.
pub fn keep_only_net_admin() -> io::Result<u64> {
    let before = get()?;
    let before_mask = u64::from(before[0].effective) | (u64::from(before[1].effective) << 32);
    // SAFETY: prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap) takes plain integers.
    let ambient = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_IS_SET as libc::c_ulong,
            CAP_NET_ADMIN as libc::c_ulong,
            0,
            0,
        )
    } == 1;
    // SAFETY: prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL) takes plain integers.
    cvt(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    let keep = |d: &Data, word: usize| {
        let bit = if word == (CAP_NET_ADMIN / 32) as usize {
            1 << (CAP_NET_ADMIN % 32)
        } else {
            0
        };
        Data {
            effective: d.effective & bit,
            permitted: d.permitted & bit,
            inheritable: if ambient { d.inheritable & bit } else { 0 },
        }
    };
    let data = [keep(&before[0], 0), keep(&before[1], 1)];
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    // SAFETY: as in `get`; capset only reads `data`.
    cvt(unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) })?;
    if ambient {
        // SAFETY: as above; CAP_NET_ADMIN is still permitted and inheritable, so this succeeds.
        cvt(unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                CAP_NET_ADMIN as libc::c_ulong,
                0,
                0,
            )
        })?;
    }
    Ok(before_mask)
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// This process's effective gid.
pub fn effective_gid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}
