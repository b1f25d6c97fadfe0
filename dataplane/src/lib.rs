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
//!    steering, `--steering cpu`). [`bpf_asm`]: the small eBPF assembler (labels, helpers,
//!    map slots, listings) the longer programs are written with. [`express`]: the express
//!    lane's programs (`--express`: flannel's encapsulation done in the kernel), the map
//!    contents for a route table, the local endpoints it delivers to; [`express_lane`] loads,
//!    attaches and feeds them at run time.
//! 7. [`sys`]: the thin syscall layer: TUN queues, rtnetlink, sockets, BPF maps and programs,
//!    threads, signals, and each worker's io_uring with the memory it shares with the kernel.
//!
//! Startup and supervision, in the order the binary runs them: [`worker_cpus`] (how many
//! workers, pinned where), [`udp_sockets`] (the port check, the socket pairs, the UDP offload
//! probe), [`tun_device`] (the device, its queues and its configuration from the table),
//! [`steering_attach`], [`express_lane`] (with `--express`), and [`supervise`] (the workers'
//! threads and the table loop, which also keeps the express lane's maps current);
//! [`handover`] passes the TUN queues and receive sockets to the next data plane (restarts,
//! upgrades);
//! [`startup`] runs them in that order. Their errors are [`setup_error::SetupError`].
//!
//! `unsafe` is denied crate-wide and allowed only in [`sys`], which holds the syscalls and the
//! memory shared with the kernel (the io_uring TUN slots and receive buffer ring); there every
//! `unsafe` block has a `// SAFETY:` comment. Pure modules (`packet`, `forward`, `gso`, `gro`,
//! `send_batch`, `transmit`, `datapath`, `steering`, `bpf_asm`, `express`) forbid it outright.
//! Counters go to the shared-memory block in [`flannel_shared::stats`]; nothing logs per packet.
//!
//! # What the `flannel-dataplane` process does
//!
//! ## Division of labour with `flanneld`
//!
//! The two processes share nothing but the route-table file (`--route-table`, written by
//! flanneld, read here). The data plane OWNS the TUN device: it creates `--tun-name`
//! (default flannel0) with IFF_TUN|IFF_NO_PI|IFF_MULTI_QUEUE, one queue per worker, sets the
//! address to our subnet's network address /32 (e.g. 10.1.15.0/32), the MTU from the table,
//! brings it up and routes `<Network> dev flannel0` (rtnetlink and ioctls in `sys`, no
//! shelling out). It also sets `accept_local=1` on the device: the ICMP net-unreachable it
//! writes back carries the TUN's own address as source, which the kernel would otherwise
//! drop as a martian. The device is not persistent: it goes
//! away with this process, and a restart recreates it. Restarting the data plane therefore
//! never touches flanneld or its lease; restarting flanneld never touches forwarding (the
//! workers keep their last snapshot of the table).
//!
//! At startup the data plane waits (polling, with one clear log line) until the table file
//! exists and has been published. Afterwards it follows the table: routes take effect per
//! batch in the workers; a changed `our_subnet` moves the TUN address, a changed MTU is
//! applied to the device.
//!
//! ## systemd (`Type=notify`, [`flannel_shared::sd_notify`])
//!
//! `STATUS=` says what it waits for or does; `READY=1` goes out once the workers forward (the
//! TUN device is configured and every worker runs); with `WatchdogSec=` the main thread's
//! table-following loop sends `WATCHDOG=1` every half of `$WATCHDOG_USEC` (it polls at least
//! that often), and only while it sees every worker thread alive: a stuck loop or a dead worker
//! stops the pings and systemd restarts the data plane. `STOPPING=1` on SIGTERM/SIGINT.
//!
//! ## Offloads (probed once at startup, each choice logged once; `--no-offload` forces all off)
//!
//! - TUN: `IFF_VNET_HDR` + `TUNSETOFFLOAD` CSUM|TSO4|TSO6|USO4|USO6, retried without USO
//!   (Linux < 6.2 answers EINVAL); any failure → the device is reopened without vnet header.
//!   The kernel then hands us up to 64 KiB TCP/UDP super-packets; `gso::split` cuts them into
//!   MTU-sized inner IPv4 packets.
//! - UDP GSO (`UDP_SEGMENT`, Linux 4.18): probed with getsockopt; the segments of one
//!   super-packet leave in one sendmsg. A send refused with EIO/EINVAL (a device without
//!   checksum offload) turns it off at run time, logged once; segments then go one by one.
//! - UDP GRO (`UDP_GRO`, Linux 5.0): setsockopt on the receive sockets; failing → off. Merged
//!   datagrams are checked one by one and coalesced (`gro`) into TCP super-packets written to
//!   TUN with a vnet header.
//!
//! On the wire every datagram is still exactly one inner IPv4 packet no larger than the MTU
//! (UDP GSO only batches the sendmsg), so flannel peers interoperate unchanged.
//!
//! ## Which worker handles a packet (`--steering`)
//!
//! Default `cpu` (needs pinned workers): a packet goes to the worker pinned to the CPU it is
//! being handled on, so the hand-over is a local wake-up, not a cross-CPU one
//! (`steering` has the programs, `sys::bpf` the maps and attaching).
//! - TUN (packets to send): an eBPF steering program tracks flows. A new flow goes to the
//!   next queue in turn (flows spread evenly); a busy flow stays put (no reordering); a flow
//!   that was idle, whose old worker has drained since, and whose packet is small moves to
//!   the queue of the current CPU (pings, requests: read where they were sent).
//! - UDP (packets received): every worker has a socket in one SO_REUSEPORT group on the
//!   flannel port; a classic BPF program picks the socket of the CPU the datagram arrived
//!   on (the peer's sending CPU on a veth, the RSS CPU on a NIC).
//!
//! `flow`: TUN multi-queue hashes flows onto queues and later sends a flow's packets to the
//! queue that last wrote it; receiving, a classic BPF program picks the socket by a
//! symmetric hash of the INNER flow, so both directions of a flow use the same worker index
//! on both hosts even though host to host it is all one outer 4-tuple. Either way each
//! worker sends from its own ephemeral source port (harmless for flannel peers, and it lets
//! a peer that only hashes the 4-tuple spread too).

#![deny(unsafe_code)]

pub mod bpf_asm;
pub mod datapath;
pub mod express;
pub mod express_lane;
pub mod forward;
pub mod gro;
pub mod gso;
pub mod handover;
pub mod packet;
pub mod send_batch;
pub mod setup_error;
pub mod startup;
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
