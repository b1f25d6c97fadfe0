//! The flannel-rs data plane as a library; the binary `flannel-dataplane` (`main.rs`) is the
//! startup around it. Read top-down to find the hot path:
//!
//! 1. [`packet`]: pure IPv4 views, TTL decrement (RFC 1624), ICMP net-unreachable builder.
//! 2. [`forward`]: pure per-packet decisions — TUN → UDP (route lookup, TTL, ICMP with a rate
//!    limit) and UDP → TUN (the receive checks). The wire format lives here.
//! 3. [`worker`]: one pinned thread per core; [`worker::uring`] (io_uring, the hot path) and
//!    [`worker::fallback`] (poll + recvmmsg/sendmmsg).
//! 4. [`sys`]: the thin syscall layer: TUN queues, rtnetlink, sockets, threads, signals.
//!
//! Pure modules (`packet`, `forward`) forbid `unsafe`; elsewhere every `unsafe` block has a
//! `// SAFETY:` comment. Counters go to the shared-memory block in
//! [`flannel_shared::stats`]; nothing logs per packet.

pub mod forward;
pub mod packet;
pub mod sys;
pub mod worker;
