//! Watching every host's lease under `<prefix>/subnets/` and keeping the route table current.
//!
//! Protocol: list the prefix at revision R, then watch from R+1. A broken stream (etcd restart,
//! network) resumes from the last revision seen, so no event is missed; if that revision was
//! compacted away, the watcher lists again and diffs. A DELETE (including lease expiry) removes
//! the route. Malformed values are skipped with a warning; leases that do not fit the network
//! config are ignored with a warning. Events touching our own key are reported to the lease
//! keeper, which re-acquires when our lease vanished.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use flannel_shared::config::NetworkConfig;
use flannel_shared::lease::{subnet_from_key, subnets_prefix, LeaseAttrs};
use flannel_shared::Ipv4Net;
use tokio::sync::{mpsc, watch};

use crate::metrics::Counters;
use crate::publish::Publisher;

/// What the watcher tells the lease keeper about our own key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnLeaseEvent {
    /// Our key was deleted (by hand or by expiry) or now names another host.
    Lost(Ipv4Net),
}

/// Watches leases and publishes them.
pub struct LeaseWatcher {
    pub client: Client,
    pub prefix: String,
    pub config: NetworkConfig,
    pub publisher: Arc<Publisher>,
    /// Our current subnet and public IP (the lease keeper updates it).
    pub own: watch::Receiver<Option<(Ipv4Net, Ipv4Addr)>>,
    pub own_events: mpsc::UnboundedSender<OwnLeaseEvent>,
    /// Counters for /metrics.
    pub status: Arc<crate::health::Status>,
}

enum Outcome {
    /// Stream broke; resume from this revision.
    Resume(i64),
    /// History compacted (or first start): list again.
    Relist,
}

impl LeaseWatcher {
    /// Runs forever (until the task is dropped).
    pub async fn run(mut self) {
        let mut backoff = Backoff::default();
        let mut leases: BTreeMap<Ipv4Net, Ipv4Addr> = BTreeMap::new();
        let mut next = Outcome::Relist;
        loop {
            let rev = match next {
                Outcome::Relist => match self.list(&mut leases).await {
                    Ok(rev) => {
                        backoff.reset();
                        rev
                    }
                    Err(e) => {
                        Counters::inc(&self.status.counters.etcd_errors);
                        tracing::warn!(retry_in = ?backoff.peek(), "listing leases failed: {e}");
                        backoff.sleep().await;
                        continue;
                    }
                },
                Outcome::Resume(rev) => rev,
            };
            next = self.watch_from(rev, &mut leases, &mut backoff).await;
            if let Outcome::Resume(_) = next {
                Counters::inc(&self.status.counters.etcd_errors);
                Counters::inc(&self.status.counters.watch_resumes);
                tracing::warn!(retry_in = ?backoff.peek(), "lease watch interrupted; resuming");
                backoff.sleep().await;
            }
        }
    }

    /// Lists all leases; replaces `leases`, logs the diff, publishes. Returns the list revision.
    async fn list(
        &mut self,
        leases: &mut BTreeMap<Ipv4Net, Ipv4Addr>,
    ) -> Result<i64, etcd_client::Error> {
        let resp = self
            .client
            .get(
                subnets_prefix(&self.prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        Counters::inc(&self.status.counters.lease_lists);
        let mut fresh = BTreeMap::new();
        for kv in resp.kvs() {
            if let Some((subnet, ip)) = self.parse(kv.key(), kv.value()) {
                fresh.insert(subnet, ip);
            }
        }
        for (s, ip) in &fresh {
            if leases.get(s) != Some(ip) {
                tracing::info!(subnet = %s, public_ip = %ip, "lease added");
            }
        }
        for s in leases.keys().filter(|s| !fresh.contains_key(s)) {
            tracing::info!(subnet = %s, "lease removed");
            self.check_own_deleted(*s);
        }
        *leases = fresh;
        if let Some((s, ip)) = *self.own.borrow() {
            if leases.get(&s) != Some(&ip) {
                let _ = self.own_events.send(OwnLeaseEvent::Lost(s));
            }
        }
        self.publisher.set_leases(leases);
        tracing::debug!(revision = rev, count = leases.len(), "listed leases");
        Ok(rev)
    }

    fn parse(&self, key: &[u8], value: &[u8]) -> Option<(Ipv4Net, Ipv4Addr)> {
        let key = std::str::from_utf8(key).ok()?;
        let Some(subnet) = subnet_from_key(&self.prefix, key) else {
            tracing::warn!(key, "skipping a key under subnets/ that is not a subnet");
            return None;
        };
        if subnet.prefix() != self.config.subnet_len || !self.config.network.contains_net(&subnet) {
            tracing::warn!(%subnet, network = %self.config.network, "skipping a lease outside the network config");
            return None;
        }
        match LeaseAttrs::parse(value) {
            Ok(a) => Some((subnet, a.public_ip)),
            Err(e) => {
                tracing::warn!(%subnet, "skipping a malformed lease value: {e}");
                None
            }
        }
    }

    fn check_own_deleted(&self, subnet: Ipv4Net) {
        if matches!(*self.own.borrow(), Some((s, _)) if s == subnet) {
            let _ = self.own_events.send(OwnLeaseEvent::Lost(subnet));
        }
    }

    async fn watch_from(
        &mut self,
        rev: i64,
        leases: &mut BTreeMap<Ipv4Net, Ipv4Addr>,
        backoff: &mut Backoff,
    ) -> Outcome {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        let mut stream = match self
            .client
            .watch(subnets_prefix(&self.prefix), Some(opts))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(revision = rev, "starting the lease watch failed: {e}");
                return Outcome::Resume(rev);
            }
        };
        let mut last = rev;
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Outcome::Resume(last),
                Err(e) => {
                    tracing::warn!(revision = last, "lease watch stream failed: {e}");
                    return Outcome::Resume(last);
                }
            };
            if resp.compact_revision() > 0 {
                tracing::warn!(
                    revision = last,
                    compacted = resp.compact_revision(),
                    "lease history compacted past our revision; listing again"
                );
                return Outcome::Relist;
            }
            if resp.canceled() {
                tracing::warn!(
                    reason = resp.cancel_reason(),
                    "lease watch canceled by etcd"
                );
                return Outcome::Resume(last);
            }
            backoff.reset();
            let mut changed = false;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                last = last.max(kv.mod_revision());
                match ev.event_type() {
                    EventType::Put => {
                        if let Some((subnet, ip)) = self.parse(kv.key(), kv.value()) {
                            if leases.insert(subnet, ip) != Some(ip) {
                                tracing::info!(%subnet, public_ip = %ip, "lease added");
                                changed = true;
                            }
                            if matches!(*self.own.borrow(), Some((s, own_ip)) if s == subnet && own_ip != ip)
                            {
                                let _ = self.own_events.send(OwnLeaseEvent::Lost(subnet));
                            }
                        }
                    }
                    EventType::Delete => {
                        let Some(subnet) = std::str::from_utf8(kv.key())
                            .ok()
                            .and_then(|k| subnet_from_key(&self.prefix, k))
                        else {
                            continue;
                        };
                        if leases.remove(&subnet).is_some() {
                            tracing::info!(%subnet, "lease removed");
                            changed = true;
                        }
                        self.check_own_deleted(subnet);
                    }
                }
            }
            if changed {
                self.publisher.set_leases(leases);
            }
        }
    }
}

/// Capped exponential backoff: 200 ms doubling to 5 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(200),
        }
    }
}

impl Backoff {
    pub fn reset(&mut self) {
        *self = Self::default();
    }
    pub fn peek(&self) -> Duration {
        self.next
    }
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
    }
}
