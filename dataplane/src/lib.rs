//! The flannel-rs data plane as a library; the binary `flannel-dataplane` (`main.rs`) is the
//! startup around it. Read top-down to find the hot path:
//!
//! 1. [`packet`]: the protocol constants and one checked view per protocol (IPv4, TCP, UDP),
//!    checksums, TTL decrement (RFC 1624), ICMP net-unreachable builder.
//! 2. [`forward`]: pure per-packet decisions — TUN → UDP (route lookup, TTL, ICMP with a rate
//!    limit) and UDP → TUN (the receive checks). The wire format lives here.
//! 3. [`gso`] and [`gro`]: pure offload logic — the virtio_net_hdr, splitting a TUN
//!    super-packet into MTU-sized inner packets (sent with one UDP_SEGMENT sendmsg), and
//!    coalescing UDP_GRO-received TCP segments back into one super-packet for the TUN device.
//!    [`send_batch`]: single packets for one peer gathered into one UDP_SEGMENT send.
//!    [`transmit`]: one UDP send as both worker loops and the io_uring ring describe it.
//! 4. [`datapath`]: the I/O-free core of a worker: what one TUN read or one UDP receive means
//!    (what to send, which bytes to write to the TUN device, or why it was dropped), decided
//!    and counted without a syscall.
//!    [`underlay`]: which arrival interfaces a peer's datagram may come from.
//! 5. [`worker`]: one pinned thread per core; [`worker::uring`] (io_uring, the hot path) and
//!    [`worker::fallback`] (poll + recvmmsg/sendmmsg), both I/O loops around one
//!    [`worker::WorkerState`].
//! 6. [`steering`]: pure BPF programs that hand a packet to the worker of its CPU (CPU-local
//!    steering, `--steering cpu`).
//! 7. [`sys`]: the thin syscall layer: TUN queues, rtnetlink, sockets, BPF maps and programs,
//!    threads, signals, and each worker's io_uring with the memory it shares with the kernel.
//!
//! Startup and supervision, in the order the binary runs them: [`worker_cpus`] (how many
//! workers, pinned where), [`udp_sockets`] (the port check, the socket pairs, the UDP offload
//! probe), [`tun_device`] (the device, its queues and its configuration from the table),
//! [`steering_attach`], and [`supervise`] (the workers' threads and the table loop). Their
//! errors are [`setup_error::SetupError`].
//!
//! `unsafe` is denied crate-wide and allowed only in [`sys`], which holds the syscalls and the
//! memory shared with the kernel (the io_uring TUN slots and receive buffer ring); there every
//! `unsafe` block has a `// SAFETY:` comment. Pure modules (`packet`, `forward`, `gso`, `gro`,
//! `send_batch`, `transmit`, `datapath`, `steering`) forbid it outright. Counters go to the shared-memory
//! block in [`flannel_shared::stats`]; nothing logs per packet.

#![deny(unsafe_code)]

pub mod datapath;
pub mod forward;
pub mod gro;
pub mod gso;
pub mod packet;
pub mod send_batch;
pub mod setup_error;
pub mod steering;
pub mod steering_attach;
pub mod supervise;
#[allow(unsafe_code)]
pub mod sys;
pub mod transmit;
pub mod tun_device;
pub mod udp_sockets;
pub mod underlay;
pub mod worker;
pub mod worker_cpus;
