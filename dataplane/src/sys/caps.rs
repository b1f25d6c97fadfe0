//! Capabilities: after setup the data plane keeps only CAP_NET_ADMIN (it still sets the TUN
//! device's address when our subnet changes); CAP_BPF and everything else it was started with
//! are dropped from the effective, permitted and inheritable sets (`capset(2)`, Linux 2.6.26
//! 64-bit capabilities), the ambient set is cleared, and — when CAP_SETPCAP allows it — the
//! bounding set is reduced too. Capabilities are per thread: call [`keep_only_net_admin`]
//! before any other thread exists, so every worker inherits the reduced sets.
//!
//! What can fail: `capget`/`capset` (EPERM cannot happen when only dropping), `prctl`.

use std::io;

use super::cvt;

/// CAP_NET_ADMIN (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
/// CAP_SETPCAP: needed to drop from the bounding set.
const CAP_SETPCAP: u32 = 8;
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

fn has(words: [u32; 2], cap: u32) -> bool {
    words[(cap / 32) as usize] & (1 << (cap % 32)) != 0
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

/// The calling thread's effective set as a 64-bit mask (for tests and logs).
pub fn effective() -> io::Result<u64> {
    let d = get()?;
    Ok(u64::from(d[0].effective) | (u64::from(d[1].effective) << 32))
}

/// Drops every capability but CAP_NET_ADMIN from the calling thread (see the module docs).
/// Returns the effective set before, as a 64-bit mask.
pub fn keep_only_net_admin() -> io::Result<u64> {
    let before = get()?;
    let eff = [before[0].effective, before[1].effective];
    let before_mask = u64::from(eff[0]) | (u64::from(eff[1]) << 32);
    if has(eff, CAP_SETPCAP) {
        // The highest capability the kernel knows, from /proc (CAP_LAST_CAP); 63 is the most
        // the 64-bit sets can hold, and PR_CAPBSET_DROP of an unknown one fails harmlessly.
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(40)
            .min(63);
        for cap in (0..=last).filter(|&c| c != CAP_NET_ADMIN) {
            // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes plain integers.
            cvt(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) })?;
        }
    }
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
            inheritable: 0,
        }
    };
    let data = [keep(&before[0], 0), keep(&before[1], 1)];
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    // SAFETY: as in `get`; capset only reads `data`.
    cvt(unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) })?;
    Ok(before_mask)
}
