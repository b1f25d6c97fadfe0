//! What the daemon knows about itself, set where things happen and read by `/readyz`
//! ([`crate::health`]) and `/metrics` ([`crate::metrics`]): readiness flags, our lease's expiry,
//! the publisher, and the control plane's event counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::publish::Publisher;

/// Readiness flags and counters the daemon sets as it runs.
#[derive(Debug, Default)]
pub struct Status {
    pub lease_held: AtomicBool,
    pub subnet_env_written: AtomicBool,
    pub publisher: std::sync::OnceLock<Arc<Publisher>>,
    /// Unix seconds at which our lease expires unless renewed.
    pub lease_expiry_unix: std::sync::atomic::AtomicU64,
    pub counters: Counters,
    /// The data plane's UDP port and stats file (its pid): `/readyz` names any other process
    /// holding the port (a local user squatting it keeps the data plane from starting).
    pub dataplane_port: std::sync::OnceLock<(u16, std::path::PathBuf)>,
    /// What keeps flanneld from doing its job right now, by item (`subnet.env`, `config`),
    /// with the reason: shown by `/readyz` and in `STATUS=`.
    problems: Mutex<BTreeMap<&'static str, String>>,
}

impl Status {
    /// The readiness items not yet satisfied, each with its problem when one is known, then
    /// every other problem (e.g. `config: the network config in etcd changed (...)`).
    pub fn missing(&self) -> Vec<String> {
        let problems = self.lock_problems().clone();
        let with_cause = |item: &'static str| match problems.get(item) {
            Some(why) => format!("{item} ({why})"),
            None => item.to_string(),
        };
        let mut m = Vec::new();
        if !self.lease_held.load(Ordering::Acquire) {
            m.push(with_cause("lease"));
        }
        if !self.subnet_env_written.load(Ordering::Acquire) {
            m.push(with_cause("subnet.env"));
        }
        if !self.publisher.get().is_some_and(|p| p.is_published()) {
            m.push(with_cause("route table"));
        }
        if let Some(who) = self.dataplane_port_squatter() {
            m.push(format!("dataplane port: {who}"));
        }
        for (item, why) in &problems {
            if !["lease", "subnet.env", "route table"].contains(item) {
                m.push(format!("{item}: {why}"));
            }
        }
        m
    }

    /// Who else holds the data plane's port, if anyone (see [`Status::dataplane_port`]).
    fn dataplane_port_squatter(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let (port, stats) = self.dataplane_port.get()?;
        // The data plane: the stats file's writer and owner (its pid may be invisible to us).
        let owner = flannel_shared::stats::StatsReader::open(stats)
            .ok()
            .zip(std::fs::metadata(stats).ok())
            .map(|(r, m)| flannel_shared::port_holder::Owner {
                pid: r.pid(),
                uid: m.uid(),
            });
        flannel_shared::port_holder::describe_squatters(std::path::Path::new("/proc"), *port, owner)
    }

    /// Records (or replaces) the problem of `item`. True when it is new or its text changed
    /// (log it then).
    pub fn set_problem(&self, item: &'static str, why: String) -> bool {
        self.lock_problems().insert(item, why.clone()).as_ref() != Some(&why)
    }

    /// Clears the problem of `item`. True when there was one.
    pub fn clear_problem(&self, item: &'static str) -> bool {
        self.lock_problems().remove(item).is_some()
    }

    /// Counts one `event`.
    pub fn count(&self, event: Event) {
        self.counters.of(event).fetch_add(1, Ordering::Relaxed);
    }

    /// The leases not routed now, by reason label (see [`LeaseRejections::set_current`]).
    pub fn set_rejected_leases(&self, by_reason: BTreeMap<&'static str, u64>) {
        self.counters.lease_rejections.set_current(by_reason);
    }

    /// Counts one rejection of a lease key at a new revision.
    pub fn count_rejection(&self, reason: &'static str) {
        self.counters.lease_rejections.count(reason);
    }

    fn lock_problems(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        // Plain strings: a panic elsewhere cannot leave them inconsistent.
        self.problems.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Control-plane event counters, bumped where the events happen.
#[derive(Debug, Default)]
pub struct Counters {
    /// Failed etcd requests of any kind.
    pub etcd_errors: AtomicU64,
    /// Watch streams resumed after a break (etcd restart, network).
    pub watch_resumes: AtomicU64,
    /// Full re-lists of the leases (start, compaction).
    pub lease_lists: AtomicU64,
    pub lease_renewals: AtomicU64,
    /// Our own lease re-acquired after it vanished.
    pub lease_reacquisitions: AtomicU64,
    /// Leases under subnets/ that are not routed, by reason.
    pub lease_rejections: LeaseRejections,
}

/// A control-plane event counted in [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    EtcdError,
    WatchResume,
    LeaseList,
    LeaseRenewal,
    LeaseReacquisition,
}

impl Counters {
    /// The counter of `event`.
    fn of(&self, event: Event) -> &AtomicU64 {
        match event {
            Event::EtcdError => &self.etcd_errors,
            Event::WatchResume => &self.watch_resumes,
            Event::LeaseList => &self.lease_lists,
            Event::LeaseRenewal => &self.lease_renewals,
            Event::LeaseReacquisition => &self.lease_reacquisitions,
        }
    }
}

/// Rejected leases by [`LeaseRejection::reason`](flannel_shared::lease::LeaseRejection::reason)
/// label: how many are rejected now (set by the lease watcher after each change) and how many
/// rejections were seen (once per key and etcd revision). Both are exported for every label,
/// zeros included.
#[derive(Debug, Default)]
pub struct LeaseRejections {
    inner: Mutex<RejectionCounts>,
}

/// One consistent reading of [`LeaseRejections`], by reason label.
#[derive(Debug, Default, Clone)]
pub struct RejectionCounts {
    pub current: BTreeMap<&'static str, u64>,
    pub total: BTreeMap<&'static str, u64>,
}

impl LeaseRejections {
    /// Replaces the current counts (labels missing from `by_reason` become 0).
    pub fn set_current(&self, by_reason: BTreeMap<&'static str, u64>) {
        self.lock().current = by_reason;
    }

    /// Counts one rejection of a key at a new revision.
    pub fn count(&self, reason: &'static str) {
        *self.lock().total.entry(reason).or_default() += 1;
    }

    /// Leases rejected now, for `reason`.
    pub fn current(&self, reason: &str) -> u64 {
        self.lock().current.get(reason).copied().unwrap_or(0)
    }

    /// Rejections seen so far, for `reason`.
    pub fn total(&self, reason: &str) -> u64 {
        self.lock().total.get(reason).copied().unwrap_or(0)
    }

    /// Both maps at once (for `/metrics`).
    pub fn snapshot(&self) -> RejectionCounts {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RejectionCounts> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
