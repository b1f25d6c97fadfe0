//! `flanneld`, the control plane of flannel-rs. Reading order: [`daemon`] (the whole life of the
//! process), then [`subnet_lease`] (acquire/renew, from a [`lease_view`]), [`lease_watch`] (every host's lease → route
//! table, through [`lease_set`], which checks each lease and keeps the unusable ones out),
//! [`publish`] (the shared-memory table writer), [`public_ip`], [`etcd`], [`config_watch`], [`cli`]; what the
//! daemon reports: [`status`] (readiness and counters), read by [`health`] and [`metrics`], and
//! [`notify`] (sd_notify);
//! the masquerade and forward rules: [`ip_masq`] (iptables) or [`nftables`].

#![forbid(unsafe_code)]

pub mod cli;
pub mod config_watch;
pub mod daemon;
pub mod etcd;
pub mod health;
pub mod ip_masq;
pub mod lease_set;
pub mod lease_view;
pub mod lease_watch;
pub mod metrics;
pub mod nftables;
pub mod notify;
pub mod public_ip;
pub mod publish;
pub mod status;
pub mod subnet_lease;
