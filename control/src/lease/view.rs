//! The local view of every key under `<prefix>/subnets/` that acquisition works from, so that
//! acquiring a subnet needs no full listing per attempt (N hosts listing N leases each would
//! make a cold start O(N²) reads).
//!
//! Contract:
//! - Built on the watcher's [`LeaseSet`]: each lease is parsed once and held once, and the
//!   routes and acquisition read the same entries. Fed by full listings, page by page
//!   ([`LeaseView::begin_listing`], [`LeaseView::put_listed`], [`LeaseView::end_listing`]; the
//!   first start and each re-list) and then by the lease watch ([`LeaseView::watched_put`],
//!   [`LeaseView::watched_delete`]), which also return the route events.
//! - Acquirers add what their own etcd answers show them ([`LeaseView::learned_put`]: their own
//!   create, the key that beat them in a race; [`LeaseView::learned_delete`]: a key found gone).
//!   That knowledge is kept beside the set (never in the routes, which follow the watch alone)
//!   and shadows the key's entry until the watch has caught up with it. Per key, the highest
//!   etcd revision wins, so a late event never undoes newer knowledge.
//! - The view keeps the watch's watermark (the highest revision the watch or a listing has
//!   applied: every change up to it is in the set). What an acquirer learned at or below the
//!   watermark is old news (the set has it or something newer, maybe its delete) and is
//!   ignored, so an acquirer that takes the lock after the watch applied a put and its delete
//!   cannot bring the deleted key back.
//! - "Taken" (narrower than flannel's `Overlaps`): a key blocks the one candidate it
//!   names when its IPv4 subnet lies inside Network and is exactly SubnetLen long, plain or
//!   dual-stack, whether its value parses or not (a key with host bits set blocks the subnet
//!   around it). Keys of any other shape (`0.0.0.0-0`, `10.1.0.0-16`, a /23 in a network of
//!   /24s, a subnet outside Network) block nothing: they are rejected for routing anyway, and
//!   flannel's rule let one such key (no TTL needed) make every new host fail "out of
//!   subnets". So no key, bogus or not, blocks more than the one subnet a valid lease would.
//!   Subnets being created by a local acquirer are reserved too, so acquirers sharing a view
//!   never race each other.
//! - A stale view can only make a free subnet look taken or a taken one look free; the create
//!   itself is `Txn If(Version == 0)`, so it can never give one subnet to two hosts.
//! - Candidates are the subnets between SubnetMin and SubnetMax; the free ones are kept as
//!   ranges, so finding the first free ones is O(log n) whatever the number of leases.
//!
//! Pure (no I/O) apart from [`SharedLeaseView`]'s lock and "listed" signal.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use flannel_shared::config::NetworkConfig;
use flannel_shared::lease::{subnets_prefix, LeaseAttrs};
use flannel_shared::Ipv4Net;
use rand::Rng;

use crate::lease::candidates::Candidates;
use crate::lease::set::{
    empty_key, parse_under, KeyShape, KeyValue, LeaseEvent, LeaseInfo, LeaseSet,
};

/// flannel picks at random among at most this many of the lowest free subnets.
pub const PICK_AMONG: usize = 100;

/// One of our own leases (a plain key whose value names our PublicIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnLease {
    pub subnet: Ipv4Net,
    pub mod_revision: i64,
    /// The etcd lease the key hangs on (0 = none).
    pub lease_id: i64,
}

/// This host's leases in a view, in key order (see [`LeaseView::own_leases`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnLeases {
    /// Those that fit the network config: to reuse.
    pub fitting: Vec<OwnLease>,
    /// Those that no longer fit it: to release.
    pub misfits: Vec<OwnLease>,
}

/// A subnet set aside by [`LeaseView::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// The preferred subnet, which was free.
    Preferred(Ipv4Net),
    /// One picked at random among the lowest free subnets.
    Picked(Ipv4Net),
}

impl Reserved {
    /// The subnet reserved.
    pub fn subnet(self) -> Ipv4Net {
        match self {
            Self::Preferred(s) | Self::Picked(s) => s,
        }
    }
}

/// What an acquirer learned from its own etcd answer and the watch has not delivered yet.
#[derive(Debug, Clone, Copy)]
struct Ahead {
    /// The revision it was learned at.
    revision: i64,
    /// The key as it was then: `None` when it did not exist.
    info: Option<LeaseInfo>,
}

/// Every key under `subnets/` that matters for acquiring. See the module docs.
#[derive(Debug)]
pub struct LeaseView {
    dir: String,
    config: NetworkConfig,
    /// Every key as the watch (or a listing) delivered it, held once: routes and acquisition
    /// both read it.
    set: LeaseSet,
    /// Keys whose latest known state came from an acquirer, newer than the watermark (a handful:
    /// the creates in flight and the keys that beat them). Each shadows the key's entry in `set`
    /// until the watch catches up with it.
    ahead: HashMap<Arc<str>, Ahead>,
    /// Plain keys by the PublicIP their value names, in key order.
    owners: BTreeSet<(Ipv4Addr, Arc<str>)>,
    candidates: Candidates,
    /// The revision of the last full listing (0: never listed).
    listed_at: i64,
    /// The highest revision the watch (or a listing) applied: the view holds every change up
    /// to it.
    watch_rev: i64,
    /// The revision of the listing being applied, if one is.
    listing: Option<i64>,
}

impl LeaseView {
    /// An empty view of the leases under `prefix` for `config`'s candidates; its lease set
    /// checks them against `config`.
    pub fn new(prefix: &str, config: NetworkConfig) -> Self {
        Self {
            dir: subnets_prefix(prefix),
            candidates: Candidates::new(&config),
            set: LeaseSet::new(prefix, Some(config.clone())),
            config,
            ahead: HashMap::new(),
            owners: BTreeSet::new(),
            listed_at: 0,
            watch_rev: 0,
            listing: None,
        }
    }

    /// [`LeaseView::new`] whose lease set keeps no routes, for a view that only serves
    /// acquisitions (as the scale simulation's hosts): keys are checked and held as in
    /// [`LeaseView::new`], but [`LeaseSet::routes`] stays empty, no [`LeaseEvent::Routed`] or
    /// [`LeaseEvent::Unrouted`] is returned and a second valid key for a subnet is not judged
    /// a duplicate.
    pub fn without_routes(prefix: &str, config: NetworkConfig) -> Self {
        Self {
            set: LeaseSet::without_routes(prefix, Some(config.clone())),
            ..Self::new(prefix, config)
        }
    }

    /// `<prefix>/subnets/`.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The lease set the watch feeds (the routes, the rejections).
    pub fn set(&self) -> &LeaseSet {
        &self.set
    }

    /// True once a full listing was applied.
    #[cfg(test)]
    fn is_listed(&self) -> bool {
        self.listed_at > 0
    }

    /// The highest revision the watch or a listing applied (0: none yet).
    #[cfg(test)]
    fn watch_rev(&self) -> i64 {
        self.watch_rev
    }

    /// Keys known to exist (as the latest knowledge, the watch's or an acquirer's, has them).
    #[cfg(test)]
    fn len(&self) -> usize {
        let in_set = self.set.len()
            - self
                .ahead
                .keys()
                .filter(|k| self.set.lease_info(k).is_some())
                .count();
        in_set + self.ahead.values().filter(|a| a.info.is_some()).count()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Candidate subnets neither leased nor reserved.
    #[cfg(test)]
    fn free_count(&self) -> u64 {
        self.candidates.free_count()
    }

    /// The latest known state of `key`.
    fn lease_info(&self, key: &str) -> Option<LeaseInfo> {
        match self.ahead.get(key) {
            Some(a) => a.info,
            None => self.set.lease_info(key),
        }
    }

    /// The PublicIP a plain key's value names (the own-lease checks need nothing else).
    pub fn public_ip_of(&self, key: &str) -> Option<Ipv4Addr> {
        self.lease_info(key).and_then(|i| i.owner)
    }

    /// Runs `change` on the view's state for `key`, then brings the candidates and the owner
    /// index in line with the key's latest known state.
    fn changing<R>(&mut self, key: &str, change: impl FnOnce(&mut Self) -> R) -> R {
        let before = self.lease_info(key);
        let shared = self
            .ahead
            .get_key_value(key)
            .map(|(k, _)| k.clone())
            .or_else(|| self.set.shared_key(key));
        let r = change(self);
        let after = self.lease_info(key);
        let (b_subnet, b_owner) = (before.and_then(|i| i.subnet), before.and_then(|i| i.owner));
        let (a_subnet, a_owner) = (after.and_then(|i| i.subnet), after.and_then(|i| i.owner));
        // Only keys of a candidate's shape block (see the module docs).
        let cfg = &self.config;
        let shaped = |s: Option<Ipv4Net>| {
            s.filter(|s| s.prefix() == cfg.subnet_len && cfg.network.contains_net(s))
        };
        let (b_subnet, a_subnet) = (shaped(b_subnet), shaped(a_subnet));
        if b_subnet != a_subnet {
            if let Some(s) = b_subnet {
                self.candidates.for_range(&s, Candidates::unblock);
            }
            if let Some(s) = a_subnet {
                self.candidates.for_range(&s, Candidates::block);
            }
        }
        if b_owner != a_owner {
            let shared = shared
                .or_else(|| self.ahead.get_key_value(key).map(|(k, _)| k.clone()))
                .or_else(|| self.set.shared_key(key))
                .unwrap_or_else(|| Arc::from(key));
            if let Some(ip) = b_owner {
                self.owners.remove(&(ip, shared.clone()));
            }
            if let Some(ip) = a_owner {
                self.owners.insert((ip, shared));
            }
        }
        r
    }

    /// Forgets what acquirers learned at or below the watermark: the set holds that or newer.
    fn settle_ahead(&mut self) {
        if self.ahead.is_empty() {
            return;
        }
        let old: Vec<Arc<str>> = self
            .ahead
            .iter()
            .filter(|(_, a)| a.revision <= self.watch_rev)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.changing(&k, |v| v.ahead.remove(&*k));
        }
    }

    /// A put the lease watch delivered: applied to the lease set (route `events` out); raises
    /// the watermark.
    pub fn watched_put(&mut self, kv: KeyValue<'_>, events: &mut Vec<LeaseEvent>) {
        self.watch_rev = self.watch_rev.max(kv.mod_revision);
        self.changing(kv.key, |v| v.set.put(kv, events));
        self.settle_ahead();
    }

    /// A delete (by hand or by lease expiry) the lease watch delivered at `revision`: applied
    /// to the lease set (route `events` out); raises the watermark.
    pub fn watched_delete(&mut self, key: &str, revision: i64, events: &mut Vec<LeaseEvent>) {
        self.watch_rev = self.watch_rev.max(revision);
        self.changing(key, |v| v.set.delete(key, events));
        self.settle_ahead();
    }

    /// A put an acquirer learned from its own txn answer (taken after an await). Ignored when
    /// the watch already applied its revision (the view then holds that put or something newer,
    /// which may be a delete) or when the view knows the key from a later revision.
    pub fn learned_put(&mut self, kv: KeyValue<'_>) {
        if kv.mod_revision <= self.watch_rev
            || self
                .lease_info(kv.key)
                .is_some_and(|i| i.mod_revision >= kv.mod_revision)
            || self
                .ahead
                .get(kv.key)
                .is_some_and(|a| a.revision >= kv.mod_revision)
        {
            return;
        }
        let shape = KeyShape::of(&parse_under(&self.dir, kv.key));
        let Some(subnet) = shape.subnet else {
            return;
        };
        let owner = shape
            .plain
            .then(|| LeaseAttrs::parse(kv.value).ok().map(|a| a.public_ip))
            .flatten();
        let ahead = Ahead {
            revision: kv.mod_revision,
            info: Some(LeaseInfo {
                mod_revision: kv.mod_revision,
                lease_id: kv.lease,
                subnet: Some(subnet),
                owner,
            }),
        };
        self.changing(kv.key, |v| v.ahead.insert(Arc::from(kv.key), ahead));
    }

    /// An acquirer saw `key` absent at `revision` (its txn's read). Ignored when the watch
    /// already applied that revision, when the view knows the key from a later revision, or
    /// when the view does not know the key at all.
    pub fn learned_delete(&mut self, key: &str, revision: i64) {
        let learned_at = self.ahead.get(key).map(|a| a.revision);
        let info = self.lease_info(key);
        if revision <= self.watch_rev
            || !key.starts_with(&self.dir)
            || learned_at.is_some_and(|r| r >= revision)
            || info.is_some_and(|i| i.mod_revision > revision)
            // Nothing known to shadow: an entry would only linger (a header revision can be
            // ahead of every subnet event, so no watch event would ever settle it).
            || (learned_at.is_none() && info.is_none())
        {
            return;
        }
        let ahead = Ahead {
            revision,
            info: None,
        };
        self.changing(key, |v| v.ahead.insert(Arc::from(key), ahead));
    }

    /// Starts applying a full listing taken at `revision`, page by page: each key-value goes
    /// through [`LeaseView::put_listed`], then [`LeaseView::end_listing`] deletes the keys the
    /// listing lacked. Starting another listing abandons an unfinished one.
    pub fn begin_listing(&mut self, revision: i64) {
        self.set.begin_listing();
        self.listing = Some(revision);
    }

    /// A key-value of the listing being applied (route `events` out).
    pub fn put_listed(&mut self, kv: KeyValue<'_>, events: &mut Vec<LeaseEvent>) {
        self.changing(kv.key, |v| v.set.put(kv, events));
    }

    /// Ends the listing: the keys it lacked are deleted, the watermark is raised to its
    /// revision (the listing holds every change up to it), and what acquirers learned at or
    /// below it is forgotten (a key learned later than the listing is kept). Does nothing when
    /// no listing was begun.
    pub fn end_listing(&mut self, events: &mut Vec<LeaseEvent>) {
        let Some(revision) = self.listing.take() else {
            return;
        };
        for key in self.set.unlisted() {
            self.changing(&key, |v| v.set.delete(&key, events));
        }
        self.listed_at = self.listed_at.max(revision).max(1);
        self.watch_rev = self.watch_rev.max(revision);
        self.settle_ahead();
    }

    /// Our own leases (plain keys naming `public_ip`), in key order: those that fit the config
    /// (to reuse) and those that do not (to release).
    pub fn own_leases(&self, public_ip: Ipv4Addr) -> OwnLeases {
        let mut own = OwnLeases::default();
        for (_, key) in self
            .owners
            .range((public_ip, empty_key())..)
            .take_while(|(ip, _)| *ip == public_ip)
        {
            let Some(LeaseInfo {
                mod_revision,
                lease_id,
                subnet: Some(subnet),
                ..
            }) = self.lease_info(key)
            else {
                continue;
            };
            let lease = OwnLease {
                subnet,
                mod_revision,
                lease_id,
            };
            if self.config.fits(&subnet) {
                own.fitting.push(lease);
            } else {
                own.misfits.push(lease);
            }
        }
        own
    }

    /// True when `subnet` is a candidate that no key overlaps and nobody here reserved.
    pub fn is_free(&self, subnet: &Ipv4Net) -> bool {
        self.config.fits(subnet)
            && self
                .candidates
                .index_of(subnet)
                .is_some_and(|i| self.candidates.is_free(i))
    }

    /// Picks `preferred` when it is free, else one at random among the lowest [`PICK_AMONG`]
    /// free subnets (flannel's policy), and reserves it until [`LeaseView::unreserve`].
    /// `None` when no subnet is free.
    pub fn reserve(&mut self, preferred: Option<Ipv4Net>) -> Option<Reserved> {
        let (i, is_preferred) = match preferred
            .filter(|p| self.is_free(p))
            .and_then(|p| self.candidates.index_of(&p))
        {
            Some(i) => (i, true),
            None => {
                let first: Vec<u32> = self.candidates.first_free(PICK_AMONG).collect();
                if first.is_empty() {
                    return None;
                }
                (first[rand::thread_rng().gen_range(0..first.len())], false)
            }
        };
        self.candidates.block(i);
        let subnet = self.candidates.subnet(i, self.config.subnet_len);
        Some(if is_preferred {
            Reserved::Preferred(subnet)
        } else {
            Reserved::Picked(subnet)
        })
    }

    /// Ends a reservation made by [`LeaseView::reserve`].
    pub fn unreserve(&mut self, subnet: &Ipv4Net) {
        if let Some(i) = self.candidates.index_of(subnet) {
            self.candidates.unblock(i);
        }
    }
}

/// A [`LeaseView`] shared by the lease watch (which feeds it) and acquirers, with a signal
/// for "a full listing is in".
#[derive(Debug)]
pub struct SharedLeaseView {
    view: Mutex<LeaseView>,
    listed: tokio::sync::watch::Sender<bool>,
}

impl SharedLeaseView {
    /// Shares `view` (not yet listed, as a fresh [`LeaseView`] is).
    pub fn new(view: LeaseView) -> Self {
        Self {
            view: Mutex::new(view),
            listed: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The view, locked (hold it briefly: never across an await).
    pub fn lock(&self) -> MutexGuard<'_, LeaseView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`LeaseView::end_listing`], then wakes whoever waits in [`SharedLeaseView::listed`].
    fn end_listing(&self, events: &mut Vec<LeaseEvent>) {
        self.lock().end_listing(events);
        self.listed.send_replace(true);
    }

    /// Starts applying a listing that arrives page by page: [`Listing::page`] for each
    /// page, then [`Listing::end`].
    pub(super) fn listing(&self) -> Listing<'_> {
        Listing {
            view: self,
            begun: false,
        }
    }

    /// Returns once a full listing was applied.
    pub async fn listed(&self) {
        let mut rx = self.listed.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = rx.wait_for(|l| *l).await;
    }
}

/// A listing being applied to a [`SharedLeaseView`] page by page (the view is locked for one
/// page at a time, never across the reads between pages).
#[derive(Debug)]
pub(super) struct Listing<'v> {
    view: &'v SharedLeaseView,
    begun: bool,
}

impl Listing<'_> {
    /// Applies one page read at `revision` (the first page begins the listing): every key
    /// goes through [`LeaseView::put_listed`], route events into `events`.
    pub fn page(
        &mut self,
        kvs: &[etcd_client::KeyValue],
        revision: i64,
        events: &mut Vec<LeaseEvent>,
    ) {
        let mut v = self.view.lock();
        if !self.begun {
            v.begin_listing(revision);
            self.begun = true;
        }
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key());
            v.put_listed(KeyValue::from_etcd(&key, kv), events);
        }
    }

    /// Ends the listing taken at `revision` ([`SharedLeaseView::end_listing`]): the keys it
    /// lacked are deleted. A listing that got no page at all (etcd always sends one, empty or
    /// not) is begun here first, so it still counts as a full, empty listing.
    pub fn end(self, revision: i64, events: &mut Vec<LeaseEvent>) {
        if !self.begun {
            self.view.lock().begin_listing(revision);
        }
        self.view.end_listing(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    const PREFIX: &str = "/coreos.com/network";

    fn kv<'a>(key: &'a str, value: &'a str, rev: i64, lease: i64) -> KeyValue<'a> {
        KeyValue {
            key,
            value: value.as_bytes(),
            create_revision: rev,
            mod_revision: rev,
            lease,
        }
    }

    fn key(k: &str) -> String {
        format!("{PREFIX}/subnets/{k}")
    }

    /// A whole listing taken at `revision` at once.
    fn replace_all<'a>(
        view: &mut LeaseView,
        listing: impl IntoIterator<Item = KeyValue<'a>>,
        revision: i64,
        events: &mut Vec<LeaseEvent>,
    ) {
        view.begin_listing(revision);
        for kv in listing {
            view.put_listed(kv, events);
        }
        view.end_listing(events);
    }

    fn free_list(v: &LeaseView) -> Vec<Ipv4Net> {
        let len = v.config.subnet_len;
        v.candidates
            .first_free(usize::MAX)
            .map(|i| v.candidates.subnet(i, len))
            .collect()
    }

    fn view(config: &str) -> LeaseView {
        LeaseView::new(PREFIX, NetworkConfig::parse(config).unwrap())
    }

    const OURS: &str = r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#;
    const THEIRS: &str = r#"{"PublicIP":"198.18.0.2","PublicIPv6":null}"#;

    /// Keys and values as a mixed cluster writes them: which candidates stay free (only keys of a
    /// candidate's shape block), which leases are ours to reuse or release.
    #[test]
    fn keys_of_a_candidates_shape_block_and_own_leases_are_found() {
        let mut v =
            view(r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.10.0","SubnetMax":"10.1.40.0"}"#);
        let keys: Vec<(String, &str, i64)> = [
            ("10.1.15.0-24", OURS, 101),
            // Ours, but SubnetLen changed: release; blocks nothing (not a /24).
            ("10.1.16.0-25", OURS, 102),
            // Ours, below SubnetMin: release; blocks nothing.
            ("10.1.2.0-24", OURS, 103),
            // A dual-stack key naming our IP: never ours; taken.
            ("10.1.17.0-24&fc00:0:0:f00::-64", OURS, 105),
            // Not a /24: rejected for routing, blocks nothing (flannel: 10.1.20-21).
            ("10.1.20.0-23", THEIRS, 107),
            ("10.1.30.0-24", "not json", 108),
            ("10.1.31.7-24", THEIRS, 109),
            ("junk", THEIRS, 110),
        ]
        .iter()
        .map(|(k, v, l)| (key(k), *v, *l))
        .collect();
        let listing = keys
            .iter()
            .enumerate()
            .map(|(i, (k, val, l))| kv(k, val, i as i64 + 1, *l));
        replace_all(&mut v, listing, 20, &mut Vec::new());
        assert!(v.is_listed());
        assert_eq!(
            v.len(),
            8,
            "the junk key is held (rejected) but blocks nothing"
        );
        let OwnLeases {
            fitting: fits,
            misfits,
        } = v.own_leases(Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(
            fits,
            [OwnLease {
                subnet: net("10.1.15.0/24"),
                mod_revision: 1,
                lease_id: 101
            }]
        );
        assert_eq!(
            misfits.iter().map(|o| o.subnet).collect::<Vec<_>>(),
            [net("10.1.16.0/25"), net("10.1.2.0/24")],
            "key order"
        );
        let taken = [15, 17, 30, 31];
        let want: Vec<Ipv4Net> = (10..=40u8)
            .filter(|o| !taken.contains(o))
            .map(|o| Ipv4Net::new(Ipv4Addr::new(10, 1, o, 0), 24).unwrap())
            .collect();
        assert_eq!(free_list(&v), want);
        assert_eq!(v.free_count(), want.len() as u64);
        assert!(v.is_free(&net("10.1.40.0/24")));
        assert!(!v.is_free(&net("10.1.31.0/24")));
        assert!(!v.is_free(&net("10.1.41.0/24")), "above SubnetMax");
    }

    #[test]
    fn revisions_order_puts_and_deletes_and_a_listing_keeps_newer_knowledge() {
        let mut v = view(r#"{"Network":"10.1.0.0/16"}"#);
        let mut ev = Vec::new();
        let k = key("10.1.5.0-24");
        v.watched_put(kv(&k, OURS, 10, 1), &mut ev);
        // A late answer from before what we know changes nothing.
        v.learned_put(kv(&k, THEIRS, 9, 2));
        v.learned_delete(&k, 8);
        assert_eq!(v.public_ip_of(&k), Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert!(!v.is_free(&net("10.1.5.0/24")));
        // Learned ahead of the watch: the newer state wins.
        v.learned_put(kv(&k, THEIRS, 11, 2));
        assert_eq!(v.public_ip_of(&k), Some(Ipv4Addr::new(198, 18, 0, 2)));
        assert!(v
            .own_leases(Ipv4Addr::new(198, 18, 0, 1))
            .fitting
            .is_empty());
        assert_eq!(v.own_leases(Ipv4Addr::new(198, 18, 0, 2)).fitting.len(), 1);
        v.learned_delete(&k, 12);
        assert!(v.is_free(&net("10.1.5.0/24")));
        assert!(v.is_empty());
        assert!(v
            .own_leases(Ipv4Addr::new(198, 18, 0, 2))
            .fitting
            .is_empty());
        // The watch catches up (put@11, delete@12): same state, nothing learned is left.
        v.watched_put(kv(&k, THEIRS, 11, 2), &mut ev);
        assert!(v.is_empty(), "a put older than the learned delete showed");
        v.watched_delete(&k, 12, &mut ev);
        assert!(v.ahead.is_empty());
        assert!(v.is_free(&net("10.1.5.0/24")));
        assert_eq!(v.free_count(), 255);
        // A listing at revision 20 without the key we learned at 25 keeps it; one we knew at
        // 15 that the listing lacks is gone.
        let (newer, older) = (key("10.1.6.0-24"), key("10.1.7.0-24"));
        v.learned_put(kv(&newer, THEIRS, 25, 3));
        v.watched_put(kv(&older, THEIRS, 15, 4), &mut ev);
        replace_all(&mut v, [], 20, &mut ev);
        assert!(!v.is_free(&net("10.1.6.0/24")));
        assert!(v.is_free(&net("10.1.7.0/24")));
        assert_eq!(v.free_count(), 254);
        assert!(
            v.set().routes().is_empty(),
            "learned keys never reach the routes"
        );
    }

    /// The watch applied put@R and delete@R+1 before the acquirer that made (or read) put@R
    /// took the lock: the key stays deleted. A learned put newer than the watermark is added.
    #[test]
    fn a_learned_put_the_watch_already_applied_cannot_bring_back_a_deleted_key() {
        let mut v = view(r#"{"Network":"10.1.0.0/16"}"#);
        let k = key("10.1.5.0-24");
        let mut ev = Vec::new();
        v.watched_put(kv(&k, OURS, 30, 1), &mut ev);
        v.watched_delete(&k, 31, &mut ev);
        assert_eq!(v.watch_rev(), 31);
        v.learned_put(kv(&k, OURS, 30, 1));
        assert!(v.is_empty(), "the deleted key came back");
        assert!(v.is_free(&net("10.1.5.0/24")));
        // Exactly at the watermark: delivered already, ignored too.
        let at = key("10.1.6.0-24");
        v.learned_put(kv(&at, THEIRS, 31, 2));
        assert!(v.is_free(&net("10.1.6.0/24")));
        // Newer than anything the watch applied: added (the watch will deliver it later).
        let newer = key("10.1.7.0-24");
        v.learned_put(kv(&newer, OURS, 32, 3));
        assert_eq!(v.public_ip_of(&newer), Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert!(!v.is_free(&net("10.1.7.0/24")));
        assert_eq!(v.watch_rev(), 31, "learned puts do not raise the watermark");
        // A listing raises the watermark too.
        replace_all(&mut v, [kv(&newer, OURS, 32, 3)], 40, &mut ev);
        assert_eq!(v.watch_rev(), 40);
        v.learned_put(kv(&k, OURS, 35, 1));
        assert!(v.is_free(&net("10.1.5.0/24")));
    }

    /// Only keys of a candidate's shape block. A /23, a /8, `0.0.0.0-0` and a /24
    /// outside Network (flannel's Overlaps: each blocked all it covers, so one key without a TTL
    /// could make every new host fail "out of subnets") block nothing; two keys naming one
    /// subnet block it until the last one goes.
    #[test]
    fn only_keys_of_a_candidates_shape_block_and_until_the_last_one_goes() {
        let mut v =
            view(r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.4.0","SubnetMax":"10.1.7.0"}"#);
        let bogus = [
            key("10.1.4.0-23"),
            key("10.0.0.0-8"),
            key("0.0.0.0-0"),
            key("10.2.5.0-24"),
        ];
        let (narrow, dual) = (key("10.1.5.0-24"), key("10.1.5.0-24&fc00::-64"));
        let mut ev = Vec::new();
        for (i, k) in bogus.iter().enumerate() {
            v.watched_put(kv(k, THEIRS, i as i64 + 1, 0), &mut ev);
        }
        assert_eq!(v.len(), 4, "held (and rejected)");
        assert_eq!(v.free_count(), 4, "{:?}", v.candidates.free);
        v.watched_put(kv(&narrow, THEIRS, 10, 0), &mut ev);
        v.watched_put(kv(&dual, THEIRS, 11, 0), &mut ev);
        assert_eq!(
            free_list(&v),
            [net("10.1.4.0/24"), net("10.1.6.0/24"), net("10.1.7.0/24")]
        );
        v.watched_delete(&narrow, 12, &mut ev);
        assert!(
            !v.is_free(&net("10.1.5.0/24")),
            "the dual-stack key still holds it"
        );
        v.watched_delete(&dual, 13, &mut ev);
        assert_eq!(v.free_count(), 4);
        assert_eq!(
            v.candidates.free.len(),
            1,
            "ranges merge back: {:?}",
            v.candidates.free
        );
        assert!(v.reserve(None).is_some());
        for (i, k) in bogus.iter().enumerate() {
            v.watched_delete(k, 20 + i as i64, &mut ev);
        }
        assert_eq!(v.free_count(), 3, "one reserved");
    }

    /// A key too long to be a lease key is held under a short name; a listing
    /// without it still finds and deletes it, and it blocks nothing.
    #[test]
    fn a_huge_key_is_held_short_and_a_listing_without_it_deletes_it() {
        let mut v = view(r#"{"Network":"10.1.0.0/16"}"#);
        let huge = key(&"9".repeat(1 << 20));
        let mut ev = Vec::new();
        replace_all(&mut v, [kv(&huge, THEIRS, 1, 0)], 1, &mut ev);
        assert_eq!(v.len(), 1);
        assert_eq!(v.free_count(), 255);
        assert!(v.set().shared_key(&huge).unwrap().len() < 300);
        replace_all(&mut v, [], 2, &mut ev);
        assert!(v.is_empty());
        assert!(v.set().rejected_by_reason().is_empty());
    }

    /// flannel's policy: a random one among the lowest 100 free; reservations keep local
    /// acquirers apart; the preferred subnet wins when free.
    #[test]
    fn reserve_picks_among_the_lowest_free_and_never_twice() {
        let cfg =
            NetworkConfig::parse(r#"{"Network":"10.0.0.0/8","SubnetMin":"10.0.0.0"}"#).unwrap();
        let mut v = LeaseView::new(PREFIX, cfg);
        let mut got = BTreeSet::new();
        for _ in 0..150 {
            let Some(Reserved::Picked(s)) = v.reserve(None) else {
                panic!("not picked among the free");
            };
            assert!(got.insert(s), "{s} reserved twice");
        }
        // Each pick came from the lowest 100 free at the time, so nothing above index 249.
        assert!(got
            .iter()
            .all(|s| s.addr_u32() < u32::from(Ipv4Addr::new(10, 0, 250, 0))));
        let want = net("10.200.0.0/24");
        assert_eq!(v.reserve(Some(want)), Some(Reserved::Preferred(want)));
        assert_ne!(
            v.reserve(Some(want)).unwrap().subnet(),
            want,
            "reserved: not free any more"
        );
        v.unreserve(&want);
        assert!(v.is_free(&want));
        // Full: the last free one is found, then none.
        let cfg = NetworkConfig::parse(r#"{"Network":"10.1.0.0/22","SubnetLen":28}"#).unwrap();
        let mut v = LeaseView::new(PREFIX, cfg.clone());
        let keys: Vec<String> = cfg
            .subnets()
            .filter(|s| *s != net("10.1.2.32/28"))
            .map(|s| key(&s.to_key()))
            .collect();
        replace_all(
            &mut v,
            keys.iter().map(|k| kv(k, THEIRS, 1, 0)),
            1,
            &mut Vec::new(),
        );
        assert_eq!(v.reserve(None), Some(Reserved::Picked(net("10.1.2.32/28"))));
        assert_eq!(v.reserve(None), None);
    }

    /// One lease set serves both: a listing applied in pages gives the routes, the rejections
    /// and the free candidates a whole listing gives, and the watch's events keep both current.
    #[test]
    fn routes_and_acquisition_read_one_set_fed_page_by_page() {
        let cfg = r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.1.0","SubnetMax":"10.1.20.0"}"#;
        let keys: Vec<String> = (1..=12u8)
            .map(|o| key(&format!("10.1.{o}.0-24")))
            .chain([key("10.1.13.0-24&fc00::-64"), key("junk")])
            .collect();
        let value = |i: usize| format!(r#"{{"PublicIP":"198.18.1.{}","PublicIPv6":null}}"#, i + 1);
        let values: Vec<String> = (0..keys.len()).map(value).collect();
        let listing = || {
            keys.iter()
                .zip(&values)
                .enumerate()
                .map(|(i, (k, val))| kv(k, val, i as i64 + 1, 0))
        };
        let mut whole = view(cfg);
        let mut ev_whole = Vec::new();
        replace_all(&mut whole, listing(), 50, &mut ev_whole);

        let mut paged = view(cfg);
        // Known before the listing and absent from it: deleted at its end.
        let stale = key("10.1.20.0-24");
        let mut ev = Vec::new();
        paged.watched_put(kv(&stale, THEIRS, 3, 0), &mut ev);
        assert_eq!(ev.len(), 1, "{ev:?}");
        ev.clear();
        // An abandoned listing (say, etcd failed after one page) leaves no mark that the next
        // listing could mistake for its own.
        paged.begin_listing(40);
        let all: Vec<KeyValue<'_>> = listing().collect();
        for kv in &all[..3] {
            paged.put_listed(*kv, &mut ev);
        }
        ev.clear();
        paged.begin_listing(50);
        let mut ev_paged = Vec::new();
        for page in all.chunks(5) {
            for kv in page {
                paged.put_listed(*kv, &mut ev_paged);
            }
            assert!(!paged.is_listed(), "listed before the last page");
        }
        assert!(
            !paged.is_free(&net("10.1.20.0/24")),
            "deleted before the end"
        );
        paged.end_listing(&mut ev_paged);
        assert!(paged.is_listed());
        assert_eq!(paged.watch_rev(), 50);
        assert!(paged.is_free(&net("10.1.20.0/24")));
        assert_eq!(paged.set().routes(), whole.set().routes());
        assert_eq!(paged.set().routes().len(), 13);
        assert_eq!(
            paged.set().rejected_by_reason(),
            whole.set().rejected_by_reason()
        );
        assert_eq!(free_list(&paged), free_list(&whole));
        assert_eq!(paged.len(), whole.len());
        assert!(ev_paged.contains(&LeaseEvent::Unrouted {
            subnet: net("10.1.20.0/24")
        }));
        // The three keys put by the abandoned listing were routed then; the rest now.
        assert_eq!(
            ev_paged
                .iter()
                .filter(|e| matches!(e, LeaseEvent::Routed { .. }))
                .count(),
            10
        );

        // A watched put changes the route and what acquisition sees, in one step.
        let k = key("10.1.14.0-24");
        ev.clear();
        paged.watched_put(kv(&k, OURS, 51, 7), &mut ev);
        assert_eq!(
            ev,
            [LeaseEvent::Routed {
                subnet: net("10.1.14.0/24"),
                public_ip: Ipv4Addr::new(198, 18, 0, 1),
                key: k.clone()
            }]
        );
        assert!(!paged.is_free(&net("10.1.14.0/24")));
        assert_eq!(
            paged.own_leases(Ipv4Addr::new(198, 18, 0, 1)).fitting,
            [OwnLease {
                subnet: net("10.1.14.0/24"),
                mod_revision: 51,
                lease_id: 7
            }]
        );
        ev.clear();
        paged.watched_delete(&k, 52, &mut ev);
        assert_eq!(
            ev,
            [LeaseEvent::Unrouted {
                subnet: net("10.1.14.0/24")
            }]
        );
        assert!(paged.is_free(&net("10.1.14.0/24")));
        assert!(paged
            .own_leases(Ipv4Addr::new(198, 18, 0, 1))
            .fitting
            .is_empty());
    }

    /// A view that only serves acquisitions keeps no routes but blocks, finds owners and
    /// reports rejections as the full one does.
    #[test]
    fn a_view_without_routes_serves_acquisition_alike() {
        let cfg = NetworkConfig::parse(r#"{"Network":"10.1.0.0/16"}"#).unwrap();
        let mut full = LeaseView::new(PREFIX, cfg.clone());
        let mut bare = LeaseView::without_routes(PREFIX, cfg);
        let (a, dup, bad) = (
            key("10.1.5.0-24"),
            key("10.1.5.0-24&fc00::-64"),
            key("10.1.6.0-24"),
        );
        let listing = [
            kv(&a, OURS, 1, 1),
            kv(&dup, THEIRS, 2, 2),
            kv(&bad, r#"{"PublicIP":"0.0.0.0"}"#, 3, 3),
        ];
        let (mut ev_full, mut ev_bare) = (Vec::new(), Vec::new());
        replace_all(&mut full, listing, 3, &mut ev_full);
        replace_all(&mut bare, listing, 3, &mut ev_bare);
        assert!(bare.set().routes().is_empty());
        assert_eq!(full.set().routes().len(), 1);
        let rejected = |ev: &[LeaseEvent]| {
            ev.iter()
                .filter_map(|e| match e {
                    LeaseEvent::Rejected { key, .. } => Some(key.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(rejected(&ev_bare), std::slice::from_ref(&bad));
        assert_eq!(rejected(&ev_full), [dup.clone(), bad.clone()]);
        assert_eq!(
            bare.set().rejected_by_reason(),
            [("public_ip_unspecified", 1)].into()
        );
        assert_eq!(free_list(&bare), free_list(&full));
        let ours = Ipv4Addr::new(198, 18, 0, 1);
        assert_eq!(bare.own_leases(ours), full.own_leases(ours));
        bare.watched_delete(&a, 4, &mut ev_bare);
        assert!(
            !bare.is_free(&net("10.1.5.0/24")),
            "the dual-stack key still holds it"
        );
        bare.watched_delete(&dup, 5, &mut ev_bare);
        assert!(bare.is_free(&net("10.1.5.0/24")));
    }
}
