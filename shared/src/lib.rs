//! Everything `flanneld` (control plane) and `flannel-dataplane` share.
//!
//! - [`net`]: IPv4 network values in flannel's two spellings.
//! - [`config`]: the network config at `<prefix>/config`, parsed and validated as flannel does.
//! - [`lease`]: lease keys and values under `<prefix>/subnets/`.
//! - [`subnet_env`]: the `subnet.env` file Docker and CNI read.
//! - [`route_table`]: the shared-memory route table (one writer, lock-free readers).
//! - [`stats`]: the data plane's shared-memory counters.
//! - [`sd_notify`]: systemd's readiness and watchdog protocol, for both daemons.
//! - [`ci`]: for tests: CI or not, and skip-or-fail.
//! - [`untrusted`]: other machines' text made safe for logs and messages.

pub mod ci;
pub mod config;
pub mod lease;
pub mod net;
pub mod route_table;
pub mod sd_notify;
pub mod stats;
pub mod subnet_env;
pub mod untrusted;

pub use net::Ipv4Net;
