//! Every host's subnet lease, from its etcd key to the route table, and this host's own.
//!
//! The story, in reading order:
//! - **key and value**: a lease is a key `<prefix>/subnets/10.1.15.0-24` (a dual-stack one adds
//!   `&fc00::-64`) whose value names the host's PublicIP. Parsing and the one lease check live in
//!   [`flannel_shared::lease`], shared with the data plane and flannelctl.
//! - **set** ([`set`]): every key under `subnets/` held once, each checked once; the valid ones
//!   become routes, the others are kept out with their reason.
//! - **view** ([`view`]): the set plus what acquisition needs: free candidate subnets (kept by
//!   the private `candidates` module), the keys
//!   naming our PublicIP, what an acquirer learned before the watch delivered it. Shared between
//!   the watch and acquirers behind a lock.
//! - **watch** ([`watch`]): lists `subnets/` once page by page into the view, then follows etcd's
//!   watch, publishing the routes and telling the lease keeper when our own key vanished.
//! - **acquire** ([`acquire`]): takes a subnet from the view with guarded etcd transactions
//!   (never two hosts on one subnet), then renews it.
//!
//! The set and the view are pure (no I/O, no logging; the shared view adds only a lock and a
//! "listed" signal); the watch and acquisition talk to etcd.

pub mod acquire;
mod candidates;
pub mod set;
pub mod view;
pub mod watch;
