//! `flanneld`, the control plane of flannel-rs. Reading order: [`daemon`] (the whole life of the
//! process), then [`lease`] (every host's lease, from its key to the route table, and this
//! host's acquisition and renewal), [`publish`] (the shared-memory table writer), [`public_ip`],
//! [`etcd`], [`backoff`], [`config_watch`], [`cli`]; what the daemon reports: [`status`]
//! (readiness and counters), read by [`health`] and [`metrics`], and [`notify`] (sd_notify);
//! the masquerade and forward rules: [`rules`] keeps them with [`ip_masq`] (iptables) or
//! [`nftables`].

#![forbid(unsafe_code)]

pub mod backoff;
pub mod cli;
pub mod config_watch;
pub mod daemon;
pub mod etcd;
pub mod health;
pub mod ip_masq;
pub mod lease;
pub mod metrics;
pub mod nftables;
pub mod notify;
pub mod public_ip;
pub mod publish;
pub mod rules;
pub mod status;
