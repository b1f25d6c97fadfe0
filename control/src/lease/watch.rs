//! Watching every host's lease under `<prefix>/subnets/` and keeping the route table current.
//!
//! Protocol: list the prefix at revision R, then watch from R+1. A broken stream (etcd restart,
//! network) resumes from the last revision seen, so no event is missed; if that revision was
//! compacted away, the watcher lists again and diffs. A DELETE (including lease expiry) removes
//! the route. Listings are applied page by page ([`list_into`], which is also the one listing of
//! a host without a watch). Every key goes, once, into the view's
//! [`crate::lease::set::LeaseSet`] (and so through [`flannel_shared::lease::validate_parsed`]),
//! which both the route table and acquisition read: an unusable lease (bad key or value, a PublicIP
//! that is not a host, a subnet outside the network config) is skipped, logged once per key and
//! revision and counted in /metrics by reason; the other leases are published as usual. Events
//! touching our own key are reported to the lease keeper, which re-acquires when our lease
//! vanished.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use flannel_shared::lease::{subnet_key, subnets_prefix};
use flannel_shared::Ipv4Net;
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::lease::set::{KeyValue, LeaseEvent};
use crate::lease::view::SharedLeaseView;
use crate::publish::Publisher;
use crate::status::Event;

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
    /// Where the routes go; `None` keeps only `view` current (its routes are not published).
    pub publisher: Option<Arc<Publisher>>,
    /// Every lease, held once: the routes come from its lease set, acquisitions use it too.
    /// Its network config is the one leases are checked against.
    pub view: Arc<SharedLeaseView>,
    /// Our current subnet and public IP (the lease keeper updates it).
    pub own: watch::Receiver<Option<(Ipv4Net, Ipv4Addr)>>,
    pub own_events: mpsc::UnboundedSender<OwnLeaseEvent>,
    /// Counters for /metrics.
    pub status: Arc<crate::status::Status>,
}

/// How a watch stream ended, and so what comes next.
enum WatchEnd {
    /// Stream broke; resume from this revision.
    Resume(i64),
    /// History compacted (or first start): list again.
    Relist,
}

impl LeaseWatcher {
    /// Runs forever (until the task is dropped).
    pub async fn run(mut self) {
        let mut backoff = Backoff::default();
        let mut next = WatchEnd::Relist;
        loop {
            let rev = match next {
                WatchEnd::Relist => match self.list().await {
                    Ok(rev) => {
                        backoff.reset();
                        rev
                    }
                    Err(e) => {
                        self.status.count(Event::EtcdError);
                        tracing::warn!(retry_in = ?backoff.peek(), "listing leases failed: {e}");
                        backoff.sleep().await;
                        continue;
                    }
                },
                WatchEnd::Resume(rev) => rev,
            };
            next = self.watch_from(rev, &mut backoff).await;
            if let WatchEnd::Resume(_) = next {
                self.status.count(Event::EtcdError);
                self.status.count(Event::WatchResume);
                tracing::warn!(retry_in = ?backoff.peek(), "lease watch interrupted; resuming");
                backoff.sleep().await;
            }
        }
    }

    /// Lists all leases into the view ([`list_into`]), logs the diff, publishes once the
    /// listing is complete. Returns the list revision.
    async fn list(&mut self) -> Result<i64, etcd_client::Error> {
        let status = &self.status;
        let report = self.publisher.is_some();
        let started = std::time::Instant::now();
        let listed = list_into(&mut self.client, &self.view, |events| {
            if report {
                report_events(status, events);
            }
        })
        .await?;
        self.status.count(Event::LeaseList);
        if let Some((s, ip)) = *self.own.borrow() {
            if self.view.lock().public_ip_of(&subnet_key(&self.prefix, &s)) != Some(ip) {
                let _ = self.own_events.send(OwnLeaseEvent::Lost(s));
            }
        }
        self.publish();
        tracing::debug!(
            revision = listed.revision,
            keys = listed.keys,
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            applying_ms = listed.applying.as_secs_f64() * 1e3,
            "listed leases"
        );
        Ok(listed.revision)
    }

    /// Publishes the view's routes (when there is a publisher) and the rejection gauges.
    fn publish(&self) {
        if let Some(publisher) = &self.publisher {
            // The route list is built under the view's lock; the table is written after it is
            // released, so acquirers do not wait on file I/O.
            let (routes, rejected) = {
                let v = self.view.lock();
                (
                    Publisher::routes_of(v.set().routes()),
                    v.set().rejected_by_reason(),
                )
            };
            publisher.set_routes(routes);
            self.status.set_rejected_leases(rejected);
        }
    }

    /// Our subnet and public IP when `key` is our own lease's key.
    fn own_subnet_if_key(&self, key: &str) -> Option<(Ipv4Net, Ipv4Addr)> {
        let own = *self.own.borrow();
        own.filter(|(s, _)| subnet_key(&self.prefix, s) == key)
    }

    async fn watch_from(&mut self, rev: i64, backoff: &mut Backoff) -> WatchEnd {
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
                return WatchEnd::Resume(rev);
            }
        };
        let mut last = rev;
        let mut events = Vec::new();
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return WatchEnd::Resume(last),
                Err(e) => {
                    tracing::warn!(revision = last, "lease watch stream failed: {e}");
                    return WatchEnd::Resume(last);
                }
            };
            if resp.compact_revision() > 0 {
                tracing::warn!(
                    revision = last,
                    compacted = resp.compact_revision(),
                    "lease history compacted past our revision; listing again"
                );
                return WatchEnd::Relist;
            }
            if resp.canceled() {
                tracing::warn!(
                    reason = resp.cancel_reason(),
                    "lease watch canceled by etcd"
                );
                return WatchEnd::Resume(last);
            }
            backoff.reset();
            events.clear();
            let mut lost = Vec::new();
            {
                let mut v = self.view.lock();
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    last = last.max(kv.mod_revision());
                    let key = String::from_utf8_lossy(kv.key());
                    let kv = KeyValue::from_etcd(&key, kv);
                    let deleted = ev.event_type() == EventType::Delete;
                    if deleted {
                        v.watched_delete(&key, kv.mod_revision, &mut events);
                    } else {
                        v.watched_put(kv, &mut events);
                    }
                    if let Some((s, own_ip)) = self.own_subnet_if_key(&key) {
                        if deleted || v.public_ip_of(&key) != Some(own_ip) {
                            lost.push(s);
                        }
                    }
                }
            }
            for s in lost {
                let _ = self.own_events.send(OwnLeaseEvent::Lost(s));
            }
            if self.publisher.is_some() {
                if report_events(&self.status, &events) {
                    self.publish();
                } else {
                    let rejected = self.view.lock().set().rejected_by_reason();
                    self.status.set_rejected_leases(rejected);
                }
            }
        }
    }
}

/// What [`list_into`] did.
#[derive(Debug, Clone, Copy)]
pub struct Listed {
    /// The listing's etcd revision: the view holds every change up to it.
    pub revision: i64,
    /// Keys listed.
    pub keys: usize,
    /// Time spent applying pages to the view (the rest was etcd's).
    pub applying: Duration,
}

/// Lists every key under the view's `subnets/` into `view`, page by page (each page applied and
/// dropped before the next is read; the view is locked for one page at a time). `on_events`
/// gets the route events of each page, then those of the listing's end (the keys it lacked,
/// deleted). Afterwards the view counts as listed (see [`SharedLeaseView::listed`]).
pub async fn list_into(
    client: &mut Client,
    view: &SharedLeaseView,
    mut on_events: impl FnMut(&[LeaseEvent]),
) -> Result<Listed, etcd_client::Error> {
    let dir = view.lock().dir().to_owned();
    let mut events = Vec::new();
    let mut keys = 0usize;
    let mut applying = Duration::ZERO;
    let mut listing = view.listing();
    let revision =
        crate::etcd::list_prefix_pages(client, &dir, crate::etcd::ListPaging::DEFAULT, |page| {
            let t = std::time::Instant::now();
            listing.page(&page.kvs, page.revision, &mut events);
            applying += t.elapsed();
            keys += page.kvs.len();
            on_events(&events);
            events.clear();
        })
        .await?;
    listing.end(revision, &mut events);
    on_events(&events);
    Ok(Listed {
        revision,
        keys,
        applying,
    })
}

/// Logs what changed (route changes as state changes; each rejection once per key and
/// revision) and counts rejections. Returns whether the routes changed.
fn report_events(status: &crate::status::Status, events: &[LeaseEvent]) -> bool {
    let mut routes_changed = false;
    for ev in events {
        match ev {
            LeaseEvent::Routed {
                subnet,
                public_ip,
                key,
            } => {
                routes_changed = true;
                tracing::info!(%subnet, %public_ip, key, "lease added");
            }
            LeaseEvent::Unrouted { subnet } => {
                routes_changed = true;
                tracing::info!(%subnet, "lease removed");
            }
            LeaseEvent::Rejected {
                key,
                revision,
                reason,
            } => {
                status.count_rejection(reason.reason());
                // The key is another machine's text: cut and escaped (the reason is already).
                tracing::warn!(
                    key = %flannel_shared::untrusted::escape(key),
                    revision,
                    reason = reason.reason(),
                    "skipping an unusable lease (not routed; the others are): {reason}"
                );
            }
        }
    }
    routes_changed
}
