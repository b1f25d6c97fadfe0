//! The thin syscall layer: everything that touches the kernel, and the only place (with the
//! memory shared with the kernel: [`buf_ring`], [`uring`]) where `unsafe` is allowed. Each
//! function does one thing and returns `io::Result`; policy lives in the callers.
//!
//! - [`tun`]: open one queue of a multi-queue TUN device (`/dev/net/tun`, `TUNSETIFF`).
//! - [`netlink`]: address and route on the TUN device (rtnetlink), MTU and link up (ioctls).
//! - [`socket`]: the per-worker UDP sockets (SO_REUSEPORT receive group, per-worker sender).
//! - [`iface`]: which interfaces hold an IPv4 address (`getifaddrs`).
//! - [`fds`]: fds that outlive the process: `$LISTEN_FDS`, systemd's fd store, exec.
//! - [`caps`]: dropping every capability but CAP_NET_ADMIN after setup.
//! - [`thread`]: CPU pinning, the online CPU list, the wake-up eventfd, signal masks.
//! - [`bpf`]: BPF maps, loading, test runs; CPU-local steering's attaching (`crate::steering` builds the programs).
//! - [`tcx`]: attaching TC programs through tcx links (the express lane).
//! - [`io`]: plain read/write/poll, and recvmmsg/sendmmsg over reusable headers ([`io::MsgBatch`]).
//! - [`uring`]: a worker's io_uring instance, its TUN slots (send memory) and receive buffers.
//! - [`buf_ring`]: the provided-buffer ring behind the multishot receive.

pub mod bpf;
pub mod buf_ring;
pub mod caps;
pub mod fds;
pub mod iface;
pub mod io;
pub mod netlink;
pub mod socket;
pub mod tcx;
pub mod thread;
pub mod tun;
pub mod uring;

/// Turns a libc return value into `io::Result` (negative → `last_os_error`).
pub(crate) fn cvt<T: Copy + PartialOrd + Default>(ret: T) -> std::io::Result<T> {
    if ret < T::default() {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
