//! Everything `flanneld` (control plane) and `flannel-dataplane` share.
//!
//! - [`net`]: IPv4 network values in flannel's two spellings.
//! - [`config`]: the network config at `<prefix>/config`, parsed and validated as flannel does.
//! - [`lease`]: lease keys and values under `<prefix>/subnets/`.
//! - [`subnet_env`]: the `subnet.env` file Docker and CNI read.
//! - [`route_table`]: the shared-memory route table (one writer, lock-free readers).
//! - [`stats`]: the data plane's shared-memory counters.
//! - [`sd_notify`]: systemd's readiness and watchdog protocol, for both daemons.
//! - [`port_holder`]: who holds a UDP port (from /proc), for the data plane's refusal to start.
//! - [`ci`]: for tests: CI or not, and skip-or-fail.
//! - [`untrusted`]: other machines' text made safe for logs and messages.
//!
//! `unsafe` is denied everywhere except in the private `shm` module, the mapped files'
//! only door to raw memory.

#![deny(unsafe_code)]

pub mod ci;
pub mod config;
pub mod lease;
pub mod net;
pub mod port_holder;
pub mod route_table;
pub mod sd_notify;
#[allow(unsafe_code)]
mod shm;
pub mod stats;
pub mod subnet_env;
pub mod untrusted;

pub use net::Ipv4Net;

/// The SO_MARK bit the data plane puts on its sockets, and that flanneld's OUTPUT guard
/// requires of every datagram to the data-plane port (`-dataplane-mark` / `--mark`): setting a
/// mark needs CAP_NET_ADMIN (or CAP_NET_RAW, Linux 5.17), so no unprivileged local process can send as
/// a member. 0x2000
/// stays clear of kube-proxy's 0x4000/0x8000 and Calico's upper 16 bits.
pub const DATAPLANE_MARK: u32 = 0x2000;
