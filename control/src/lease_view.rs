//! The local view of every key under `<prefix>/subnets/` that acquisition works from, so that
//! acquiring a subnet needs no full listing per attempt (issue 20: N hosts listing N leases each
//! made a cold start O(N²) reads).
//!
//! Contract:
//! - Fed by one full listing ([`LeaseView::replace_all`], the first start) and then by the lease
//!   watch ([`LeaseView::watched_put`], [`LeaseView::watched_delete`]); acquirers add what their
//!   own etcd answers show them ([`LeaseView::learned_put`]: their own create, the key that beat
//!   them in a race). Per key, the highest etcd revision wins, so a late event never undoes
//!   newer knowledge.
//! - Deletes leave no tombstone; instead the view keeps the watch's watermark (the highest
//!   revision the watch or a listing has applied: every change up to it is in the view). A put
//!   an acquirer learned at or below the watermark is old news (the view has it or something
//!   newer, maybe its delete) and is ignored, so an acquirer that takes the lock after the watch
//!   applied a put and its delete cannot bring the deleted key back.
//! - "Taken" is flannel's `Overlaps`: every key's IPv4 subnet, plain or dual-stack, whatever its
//!   length and whether its value parses, blocks each candidate subnet it overlaps (a key with
//!   host bits set blocks the subnet around it). Subnets being created by a local acquirer are
//!   reserved too, so acquirers sharing a view never race each other.
//! - A stale view can only make a free subnet look taken or a taken one look free; the create
//!   itself is `Txn If(Version == 0)`, so it can never give one subnet to two hosts.
//! - Candidates are the subnets between SubnetMin and SubnetMax; the free ones are kept as
//!   ranges, so finding the first free ones is O(log n) whatever the number of leases. A foreign
//!   key covering k candidates (say a /16 in a network of /24s) costs O(k) to add or remove.
//!
//! Pure (no I/O) apart from [`SharedLeaseView`]'s lock and "listed" signal.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

use flannel_shared::config::NetworkConfig;
use flannel_shared::lease::{subnets_prefix, LeaseAttrs, LeaseKey, LeaseKeyError};
use flannel_shared::Ipv4Net;
use rand::Rng;

use crate::lease_set::KeyValue;

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

#[derive(Debug, Clone)]
struct Entry {
    mod_revision: i64,
    lease_id: i64,
    /// The key's IPv4 subnet (with host bits: the subnet around the address).
    subnet: Ipv4Net,
    /// A plain key's PublicIP, when its value parses (who may reuse it).
    owner: Option<Ipv4Addr>,
}

/// Candidate subnets (indices 0..count from SubnetMin) and which of them are free.
#[derive(Debug)]
struct Candidates {
    min: u64,
    /// log2 of the subnet size.
    shift: u32,
    count: u64,
    /// How many keys (and reservations) block each blocked candidate.
    blocked: HashMap<u32, u32>,
    /// Free candidates as inclusive ranges, start → end; disjoint and not adjacent.
    free: BTreeMap<u32, u32>,
}

impl Candidates {
    fn new(cfg: &NetworkConfig) -> Self {
        let count = cfg.subnet_count();
        let mut free = BTreeMap::new();
        if count > 0 {
            free.insert(0, (count - 1) as u32);
        }
        Self {
            min: u64::from(u32::from(cfg.subnet_min)),
            shift: 32 - u32::from(cfg.subnet_len),
            count,
            blocked: HashMap::new(),
            free,
        }
    }

    /// The candidates `net` overlaps, as an inclusive index range.
    fn overlapped(&self, net: &Ipv4Net) -> Option<(u32, u32)> {
        let (a, b) = (u64::from(net.addr_u32()), u64::from(u32::from(net.last())));
        let end = self.min + (self.count << self.shift);
        if self.count == 0 || b < self.min || a >= end {
            return None;
        }
        let first = a.saturating_sub(self.min) >> self.shift;
        let last = ((b - self.min) >> self.shift).min(self.count - 1);
        Some((first as u32, last as u32))
    }

    fn index_of(&self, net: &Ipv4Net) -> Option<u32> {
        let a = u64::from(net.addr_u32());
        (a >= self.min && (a - self.min) >> self.shift < self.count)
            .then(|| ((a - self.min) >> self.shift) as u32)
    }

    fn subnet(&self, i: u32, len: u8) -> Ipv4Net {
        let addr = self.min + (u64::from(i) << self.shift);
        Ipv4Net::new(Ipv4Addr::from(addr as u32), len).expect("candidate is aligned")
    }

    fn is_free(&self, i: u32) -> bool {
        !self.blocked.contains_key(&i)
    }

    fn block(&mut self, i: u32) {
        let n = self.blocked.entry(i).or_insert(0);
        *n += 1;
        if *n > 1 {
            return;
        }
        let (&s, &e) = self
            .free
            .range(..=i)
            .next_back()
            .expect("an unblocked candidate lies in a free range");
        debug_assert!(e >= i);
        self.free.remove(&s);
        if s < i {
            self.free.insert(s, i - 1);
        }
        if i < e {
            self.free.insert(i + 1, e);
        }
    }

    fn unblock(&mut self, i: u32) {
        let Some(n) = self.blocked.get_mut(&i) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        self.blocked.remove(&i);
        let (mut s, mut e) = (i, i);
        if let Some((&ps, &pe)) = self.free.range(..i).next_back() {
            if pe.checked_add(1) == Some(i) {
                s = ps;
                self.free.remove(&ps);
            }
        }
        if let Some(next) = i.checked_add(1) {
            if let Some(ne) = self.free.remove(&next) {
                e = ne;
            }
        }
        self.free.insert(s, e);
    }

    fn for_range(&mut self, net: &Ipv4Net, f: fn(&mut Self, u32)) {
        if let Some((a, b)) = self.overlapped(net) {
            for i in a..=b {
                f(self, i);
            }
        }
    }

    /// The lowest `n` free candidates.
    fn first_free(&self, n: usize) -> impl Iterator<Item = u32> + '_ {
        self.free.iter().flat_map(|(&s, &e)| s..=e).take(n)
    }

    fn free_count(&self) -> u64 {
        self.free.iter().map(|(&s, &e)| u64::from(e - s) + 1).sum()
    }
}

/// Every key under `subnets/` that matters for acquiring. See the module docs.
#[derive(Debug)]
pub struct LeaseView {
    dir: String,
    config: NetworkConfig,
    entries: HashMap<Box<str>, Entry>,
    /// Plain keys by the PublicIP their value names, in key order.
    owners: BTreeSet<(Ipv4Addr, Box<str>)>,
    candidates: Candidates,
    /// The revision of the last full listing (0: never listed).
    listed_at: i64,
    /// The highest revision the watch (or a listing) applied: the view holds every change up
    /// to it.
    watch_rev: i64,
}

impl LeaseView {
    /// An empty view of the leases under `prefix` for `config`'s candidates.
    pub fn new(prefix: &str, config: NetworkConfig) -> Self {
        Self {
            dir: subnets_prefix(prefix),
            candidates: Candidates::new(&config),
            config,
            entries: HashMap::new(),
            owners: BTreeSet::new(),
            listed_at: 0,
            watch_rev: 0,
        }
    }

    /// `<prefix>/subnets/`.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// True once a full listing was applied.
    pub fn is_listed(&self) -> bool {
        self.listed_at > 0
    }

    /// The highest revision the watch or a listing applied (0: none yet).
    pub fn watch_rev(&self) -> i64 {
        self.watch_rev
    }

    /// Keys known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Candidate subnets neither leased nor reserved.
    pub fn free_count(&self) -> u64 {
        self.candidates.free_count()
    }

    /// The PublicIP a plain key's value names (the own-lease checks need nothing else).
    pub fn public_ip_of(&self, key: &str) -> Option<Ipv4Addr> {
        let rest = key.strip_prefix(&self.dir)?;
        self.entries.get(rest).and_then(|e| e.owner)
    }

    /// A key was created or changed at `kv.mod_revision`. Ignored when the view already knows
    /// the key at that revision or a later one, and for keys that name no IPv4 subnet.
    pub fn put(&mut self, kv: KeyValue<'_>) {
        let Some(rest) = kv.key.strip_prefix(&self.dir) else {
            return;
        };
        if self
            .entries
            .get(rest)
            .is_some_and(|e| e.mod_revision >= kv.mod_revision)
        {
            return;
        }
        let (subnet, plain) = match LeaseKey::parse(rest) {
            Ok(k) => (k.ipv4, k.ipv6.is_none()),
            // flannel reads `10.1.15.7-24` as a subnet: keep clear of it.
            Err(LeaseKeyError::HostBits { network, .. }) => (network, false),
            Err(_) => return,
        };
        let owner = plain
            .then(|| LeaseAttrs::parse(kv.value).ok().map(|a| a.public_ip))
            .flatten();
        self.remove(rest);
        self.candidates.for_range(&subnet, Candidates::block);
        if let Some(ip) = owner {
            self.owners.insert((ip, rest.into()));
        }
        self.entries.insert(
            rest.into(),
            Entry {
                mod_revision: kv.mod_revision,
                lease_id: kv.lease,
                subnet,
                owner,
            },
        );
    }

    /// [`LeaseView::put`] for a put the lease watch delivered; raises the watermark.
    pub fn watched_put(&mut self, kv: KeyValue<'_>) {
        self.watch_rev = self.watch_rev.max(kv.mod_revision);
        self.put(kv);
    }

    /// [`LeaseView::delete`] for a delete the lease watch delivered; raises the watermark.
    pub fn watched_delete(&mut self, key: &str, revision: i64) {
        self.watch_rev = self.watch_rev.max(revision);
        self.delete(key, revision);
    }

    /// A put an acquirer learned from its own txn answer (taken after an await). Ignored when
    /// the watch already applied its revision: the view then holds that put or something newer
    /// (which may be a delete the view keeps no trace of).
    pub fn learned_put(&mut self, kv: KeyValue<'_>) {
        if kv.mod_revision > self.watch_rev {
            self.put(kv);
        }
    }

    /// `key` was deleted (by hand or by lease expiry) at `revision`. Ignored when the view
    /// knows the key from a later revision.
    pub fn delete(&mut self, key: &str, revision: i64) {
        let Some(rest) = key.strip_prefix(&self.dir) else {
            return;
        };
        if self
            .entries
            .get(rest)
            .is_some_and(|e| e.mod_revision <= revision)
        {
            self.remove(rest);
        }
    }

    fn remove(&mut self, rest: &str) {
        if let Some(old) = self.entries.remove(rest) {
            self.candidates.for_range(&old.subnet, Candidates::unblock);
            if let Some(ip) = old.owner {
                self.owners.remove(&(ip, rest.into()));
            }
        }
    }

    /// Applies a full listing taken at `revision`: known keys it lacks are deleted (unless the
    /// view knows them from a later revision), the others put. Raises the watermark to
    /// `revision` (the listing holds every change up to it).
    pub fn replace_all<'a>(
        &mut self,
        listing: impl IntoIterator<Item = KeyValue<'a>>,
        revision: i64,
    ) {
        let listing: Vec<KeyValue<'a>> = listing.into_iter().collect();
        let present: std::collections::HashSet<&str> = listing
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(&self.dir))
            .collect();
        let gone: Vec<Box<str>> = self
            .entries
            .iter()
            .filter(|(k, e)| e.mod_revision <= revision && !present.contains(&***k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.remove(&k);
        }
        for kv in listing {
            self.put(kv);
        }
        self.listed_at = self.listed_at.max(revision).max(1);
        self.watch_rev = self.watch_rev.max(revision);
    }

    /// Our own leases (plain keys naming `public_ip`), in key order: those that fit the config
    /// (to reuse) and those that do not (to release).
    pub fn own_leases(&self, public_ip: Ipv4Addr) -> (Vec<OwnLease>, Vec<OwnLease>) {
        let from = (public_ip, Box::<str>::from(""));
        let mut fits = Vec::new();
        let mut misfits = Vec::new();
        for (_, key) in self
            .owners
            .range(from..)
            .take_while(|(ip, _)| *ip == public_ip)
        {
            let e = &self.entries[key];
            let own = OwnLease {
                subnet: e.subnet,
                mod_revision: e.mod_revision,
                lease_id: e.lease_id,
            };
            if self.config.fits(&e.subnet) {
                fits.push(own);
            } else {
                misfits.push(own);
            }
        }
        (fits, misfits)
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
    /// Returns the subnet and whether it is `preferred`; `None` when no subnet is free.
    pub fn reserve(&mut self, preferred: Option<Ipv4Net>) -> Option<(Ipv4Net, bool)> {
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
        Some((
            self.candidates.subnet(i, self.config.subnet_len),
            is_preferred,
        ))
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
    pub fn new(prefix: &str, config: NetworkConfig) -> Self {
        Self {
            view: Mutex::new(LeaseView::new(prefix, config)),
            listed: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The view, locked (hold it briefly: never across an await).
    pub fn lock(&self) -> MutexGuard<'_, LeaseView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`LeaseView::replace_all`], then wakes whoever waits in [`SharedLeaseView::listed`].
    pub fn replace_all<'a>(&self, listing: impl IntoIterator<Item = KeyValue<'a>>, revision: i64) {
        self.lock().replace_all(listing, revision);
        self.listed.send_replace(true);
    }

    /// Returns once a full listing was applied.
    pub async fn listed(&self) {
        let mut rx = self.listed.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = rx.wait_for(|l| *l).await;
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

    /// flannel's Overlaps, whatever the key's form: exact keys and values as a mixed cluster
    /// writes them; which candidates stay free, which leases are ours to reuse or release.
    #[test]
    fn keys_of_every_form_block_what_they_overlap_and_own_leases_are_found() {
        let mut v =
            view(r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.10.0","SubnetMax":"10.1.40.0"}"#);
        let keys: Vec<(String, &str, i64)> = [
            ("10.1.15.0-24", OURS, 101),
            // Ours, but SubnetLen changed: release; blocks 10.1.16.0/24.
            ("10.1.16.0-25", OURS, 102),
            // Ours, below SubnetMin: release; blocks nothing.
            ("10.1.2.0-24", OURS, 103),
            // A dual-stack key naming our IP: never ours; taken.
            ("10.1.17.0-24&fc00:0:0:f00::-64", OURS, 105),
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
        v.replace_all(
            listing.chain([kv("/other/subnets/10.1.40.0-24", THEIRS, 20, 9)]),
            20,
        );
        assert!(v.is_listed());
        assert_eq!(v.len(), 7, "junk and other prefixes are not kept");
        let (fits, misfits) = v.own_leases(Ipv4Addr::new(198, 18, 0, 1));
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
        let taken = [15, 16, 17, 20, 21, 30, 31];
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
        let k = key("10.1.5.0-24");
        v.put(kv(&k, OURS, 10, 1));
        // A late event from before what we know changes nothing.
        v.put(kv(&k, THEIRS, 9, 2));
        v.delete(&k, 8);
        assert_eq!(v.public_ip_of(&k), Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert!(!v.is_free(&net("10.1.5.0/24")));
        v.put(kv(&k, THEIRS, 11, 2));
        assert_eq!(v.public_ip_of(&k), Some(Ipv4Addr::new(198, 18, 0, 2)));
        assert!(v.own_leases(Ipv4Addr::new(198, 18, 0, 1)).0.is_empty());
        v.delete(&k, 12);
        assert!(v.is_free(&net("10.1.5.0/24")));
        assert!(v.is_empty());
        // A listing at revision 20 without the key we learned at 25 keeps it; one we knew at
        // 15 that the listing lacks is gone.
        let (newer, older) = (key("10.1.6.0-24"), key("10.1.7.0-24"));
        v.put(kv(&newer, THEIRS, 25, 3));
        v.put(kv(&older, THEIRS, 15, 4));
        v.replace_all([], 20);
        assert!(!v.is_free(&net("10.1.6.0/24")));
        assert!(v.is_free(&net("10.1.7.0/24")));
        assert_eq!(v.free_count(), 254);
    }

    /// The watch applied put@R and delete@R+1 before the acquirer that made (or read) put@R
    /// took the lock: the key stays deleted. A learned put newer than the watermark is added.
    #[test]
    fn a_learned_put_the_watch_already_applied_cannot_bring_back_a_deleted_key() {
        let mut v = view(r#"{"Network":"10.1.0.0/16"}"#);
        let k = key("10.1.5.0-24");
        v.watched_put(kv(&k, OURS, 30, 1));
        v.watched_delete(&k, 31);
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
        v.replace_all([kv(&newer, OURS, 32, 3)], 40);
        assert_eq!(v.watch_rev(), 40);
        v.learned_put(kv(&k, OURS, 35, 1));
        assert!(v.is_free(&net("10.1.5.0/24")));
    }

    #[test]
    fn overlapping_keys_block_until_the_last_one_goes() {
        let mut v =
            view(r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.4.0","SubnetMax":"10.1.7.0"}"#);
        let (wide, narrow, huge) = (key("10.1.4.0-23"), key("10.1.5.0-24"), key("10.0.0.0-8"));
        v.put(kv(&wide, THEIRS, 1, 0));
        v.put(kv(&narrow, THEIRS, 2, 0));
        assert_eq!(free_list(&v), [net("10.1.6.0/24"), net("10.1.7.0/24")]);
        v.delete(&wide, 3);
        assert_eq!(
            free_list(&v),
            [net("10.1.4.0/24"), net("10.1.6.0/24"), net("10.1.7.0/24")]
        );
        // A key covering every candidate and beyond.
        v.put(kv(&huge, THEIRS, 4, 0));
        assert_eq!(v.free_count(), 0);
        assert_eq!(v.reserve(None), None);
        v.delete(&huge, 5);
        v.delete(&narrow, 6);
        assert_eq!(v.free_count(), 4);
        assert_eq!(
            v.candidates.free.len(),
            1,
            "ranges merge back: {:?}",
            v.candidates.free
        );
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
            let (s, preferred) = v.reserve(None).unwrap();
            assert!(!preferred);
            assert!(got.insert(s), "{s} reserved twice");
        }
        // Each pick came from the lowest 100 free at the time, so nothing above index 249.
        assert!(got
            .iter()
            .all(|s| s.addr_u32() < u32::from(Ipv4Addr::new(10, 0, 250, 0))));
        let want = net("10.200.0.0/24");
        assert_eq!(v.reserve(Some(want)), Some((want, true)));
        assert_ne!(
            v.reserve(Some(want)).unwrap().0,
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
        v.replace_all(keys.iter().map(|k| kv(k, THEIRS, 1, 0)), 1);
        assert_eq!(v.reserve(None), Some((net("10.1.2.32/28"), false)));
        assert_eq!(v.reserve(None), None);
    }
}
