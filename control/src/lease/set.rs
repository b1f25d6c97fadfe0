//! Every key under `<prefix>/subnets/` as the lease watcher last saw it, split into the routes the
//! data plane gets and the leases it does not get, each with its typed reason.
//!
//! Contract:
//! - Every key is checked by [`flannel_shared::lease::validate_parsed`] (the one lease check,
//!   fed with the key and value parsed once here); what fails is kept as rejected and never
//!   reaches the route table, so one unusable member never stops the table for the others.
//! - Keys are tracked by their full text: a dual-stack key (`10.1.15.0-24&fc00::-64`) routes its
//!   IPv4 part, and deleting one key never removes a route another key still holds. When two
//!   valid keys name one IPv4 subnet, the one created first (lower etcd create revision, then
//!   key order) is routed and the other is rejected as [`LeaseRejection::Duplicate`].
//! - [`LeaseEvent::Rejected`] is returned once per key and etcd revision: seeing the same key at
//!   the same revision again (a re-list after a broken watch or compaction) returns nothing.
//! - Each key is held once, with what both the routes and acquisition need (the subnet the
//!   key names, its PublicIP, its etcd lease): [`crate::lease::view::LeaseView`] is
//!   built on this set rather than keeping a second copy of every lease.
//! - Memory per key is bounded whatever etcd holds: a key too long to be a lease
//!   key (more than 128 bytes after `subnets/`, always rejected as `bad_key`) is held under a
//!   fixed-size name: its first 64 bytes and a 128-bit keyed hash of the whole; rejections keep values and keys only cut to 64 characters. So a
//!   rejected key costs about what a valid one does, and the count of keys is etcd's to bound
//!   (its quota), as it is for valid keys.
//! - A listing can be applied page by page ([`LeaseSet::begin_listing`], [`LeaseSet::put`],
//!   [`LeaseSet::end_listing`]): no need to hold a whole listing.
//!
//! Pure: no I/O and no logging; the watcher logs the events and publishes [`LeaseSet::routes`].
//! Changes append their [`LeaseEvent`]s to a buffer the caller passes and reuses (one for a
//! whole listing or watch response, not one per key).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;
use std::sync::Arc;

use flannel_shared::config::NetworkConfig;
use flannel_shared::lease::{
    subnets_prefix, validate_parsed, LeaseAttrs, LeaseKey, LeaseKeyError, LeaseRejection,
};
use flannel_shared::Ipv4Net;

/// What changed in a [`LeaseSet`], for logging and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEvent {
    /// `subnet` is now routed to `public_ip` (a new route or a changed PublicIP), held by `key`.
    Routed {
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        key: String,
    },
    /// `subnet` is no longer routed.
    Unrouted { subnet: Ipv4Net },
    /// `key` at etcd `revision` is not routed, for `reason`.
    Rejected {
        key: String,
        revision: i64,
        reason: LeaseRejection,
    },
}

/// One key/value under `subnets/` with its etcd revisions.
#[derive(Debug, Clone, Copy)]
pub struct KeyValue<'a> {
    pub key: &'a str,
    pub value: &'a [u8],
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The etcd lease the key hangs on (0 = none).
    pub lease: i64,
}

impl<'a> KeyValue<'a> {
    /// From what etcd returned; `key` is `kv`'s key as text.
    pub fn from_etcd(key: &'a str, kv: &'a etcd_client::KeyValue) -> Self {
        Self {
            key,
            value: kv.value(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        }
    }
}

/// What acquisition needs to know of one key, read once from its key and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LeaseInfo {
    pub mod_revision: i64,
    /// The etcd lease the key hangs on (0 = none).
    pub lease_id: i64,
    /// The IPv4 subnet the key names, valid or not (for a key with host bits set, the subnet
    /// around the address, as flannel reads it); `None` for a key that names no subnet.
    pub subnet: Option<Ipv4Net>,
    /// For a plain key (no IPv6 part) whose value parses: the PublicIP it names, checked or
    /// not (who may reuse the lease).
    pub owner: Option<Ipv4Addr>,
}

/// The longest key text after `subnets/` held as it is: a lease key is at most
/// `255.255.255.255-32&` plus an IPv6 subnet (under 70 bytes).
const MAX_LEASE_KEY: usize = 128;

/// What a key names, whatever its value: the IPv4 subnet (see [`LeaseInfo::subnet`]) and whether
/// it is a plain key (parsed, no IPv6 part: the only kind that can be a host's own lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyShape {
    pub subnet: Option<Ipv4Net>,
    pub plain: bool,
}

impl KeyShape {
    /// The shape of a parsed key.
    pub fn of(key: &Result<LeaseKey, LeaseKeyError>) -> Self {
        match key {
            Ok(k) => Self {
                subnet: Some(k.ipv4),
                plain: k.ipv6.is_none(),
            },
            // flannel reads `10.1.15.7-24` as a subnet: acquisition keeps clear of it.
            Err(LeaseKeyError::HostBits { network, .. }) => Self {
                subnet: Some(*network),
                plain: false,
            },
            Err(_) => Self {
                subnet: None,
                plain: false,
            },
        }
    }
}

/// Parses `key` as a lease key under `dir` (`<prefix>/subnets/`).
pub(super) fn parse_under(dir: &str, key: &str) -> Result<LeaseKey, LeaseKeyError> {
    match key.strip_prefix(dir) {
        Some(rest) => LeaseKey::parse(rest),
        None => Err(LeaseKeyError::NotUnderPrefix {
            key: flannel_shared::untrusted::clip(key),
            dir: dir.to_owned(),
        }),
    }
}

/// The fixed-size name of a key longer than `limit` bytes (see the module docs): at most
/// 64 bytes of it, `…#` and 32 hex digits of two hashes keyed at random once per process.
fn long_key_name(key: &str, limit: usize) -> Cow<'_, str> {
    if key.len() <= limit {
        return Cow::Borrowed(key);
    }
    static KEYS: std::sync::OnceLock<[std::collections::hash_map::RandomState; 2]> =
        std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(Default::default);
    let hash = |k: &std::collections::hash_map::RandomState| {
        let mut h = k.build_hasher();
        h.write(key.as_bytes());
        h.finish()
    };
    let mut end = 64;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}…#{:016x}{:016x}",
        &key[..end],
        hash(&keys[0]),
        hash(&keys[1])
    ))
}

/// The lowest key text, for range bounds over indexes keyed by shared key text (shared: no
/// allocation per lookup).
pub(super) fn empty_key() -> Arc<str> {
    static EMPTY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Arc::from("")).clone()
}

/// What is kept per key: revisions, what the key names, the PublicIP and the verdict, no copy
/// of the value (at a /8 of /24s, 65,536 of these; the rare rejection is boxed to keep the
/// common entry small).
#[derive(Debug)]
struct Entry {
    mod_revision: i64,
    create_revision: i64,
    lease_id: i64,
    /// What the key names.
    shape: KeyShape,
    /// PublicIP as parsed, before any check (the own-lease check needs it even when rejected).
    public_ip: Option<Ipv4Addr>,
    /// The listing that last put this key (see [`LeaseSet::begin_listing`]).
    listing: u32,
    state: Result<(Ipv4Net, Ipv4Addr), Box<LeaseRejection>>,
}

/// The watcher's view of all leases. See the module docs for the contract.
#[derive(Debug)]
pub struct LeaseSet {
    /// `<prefix>/subnets/`.
    dir: String,
    /// `None` (flannelctl without a readable config): keys and values are checked, subnets not.
    config: Option<NetworkConfig>,
    /// By full key; the key text is shared (not copied) with `by_subnet` and the view's index.
    entries: HashMap<Arc<str>, Entry>,
    /// Valid keys as (IPv4 subnet, create revision, key): of each subnet's keys, the first is
    /// routed. One flat set (not a set per subnet: almost every subnet has exactly one key).
    by_subnet: BTreeSet<(Ipv4Net, i64, Arc<str>)>,
    routes: BTreeMap<Ipv4Net, Ipv4Addr>,
    /// Rejected keys by reason label (duplicates are counted from `by_subnet`).
    rejected: BTreeMap<&'static str, u64>,
    valid: usize,
    /// The listing being applied (or last applied); entries carry the listing that put them.
    listing: u32,
    /// False: no routes are kept (`by_subnet` and `routes` stay empty, no route events), for
    /// a lease view that only serves acquisitions.
    routing: bool,
}

impl LeaseSet {
    /// An empty set for the leases under `prefix`, checked against `config`.
    pub fn new(prefix: &str, config: Option<NetworkConfig>) -> Self {
        Self {
            dir: subnets_prefix(prefix),
            config,
            entries: HashMap::new(),
            by_subnet: BTreeSet::new(),
            routes: BTreeMap::new(),
            rejected: BTreeMap::new(),
            valid: 0,
            listing: 0,
            routing: true,
        }
    }

    /// [`LeaseSet::new`] keeping no routes: keys are checked and held, [`LeaseSet::routes`]
    /// stays empty, no [`LeaseEvent::Routed`] or [`LeaseEvent::Unrouted`] is returned and a
    /// second valid key for a subnet is not judged a duplicate (a lease view that only serves
    /// acquisitions, as in the scale simulation's hosts).
    pub(super) fn without_routes(prefix: &str, config: Option<NetworkConfig>) -> Self {
        Self {
            routing: false,
            ..Self::new(prefix, config)
        }
    }

    /// The routes: every routed subnet and the public IP of the host holding it.
    pub fn routes(&self) -> &BTreeMap<Ipv4Net, Ipv4Addr> {
        &self.routes
    }

    /// Keys currently known (routed or not).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What acquisition needs of `key`; `None` for unknown keys.
    pub(super) fn lease_info(&self, key: &str) -> Option<LeaseInfo> {
        self.entries.get(&*self.held_name(key)).map(|e| LeaseInfo {
            mod_revision: e.mod_revision,
            lease_id: e.lease_id,
            subnet: e.shape.subnet,
            owner: e.public_ip.filter(|_| e.shape.plain),
        })
    }

    /// The set's copy of `key`'s text, to share in an index.
    pub(super) fn shared_key(&self, key: &str) -> Option<Arc<str>> {
        self.entries
            .get_key_value(&*self.held_name(key))
            .map(|(k, _)| k.clone())
    }

    /// Whether `key` is routed (its subnet and public IP) or why not; `None` for unknown keys.
    pub fn status(&self, key: &str) -> Option<Result<(Ipv4Net, Ipv4Addr), LeaseRejection>> {
        let key = self.held_name(key);
        let e = self.entries.get(&*key)?;
        Some(match &e.state {
            Err(r) => Err((**r).clone()),
            Ok((subnet, ip)) => match self.holder(subnet) {
                Some(holder) if holder != &*key => Err(LeaseRejection::Duplicate {
                    subnet: *subnet,
                    holder: holder.to_owned(),
                }),
                _ => Ok((*subnet, *ip)),
            },
        })
    }

    /// Keys not routed now, by [`LeaseRejection::reason`] label (labels with none left out).
    pub fn rejected_by_reason(&self) -> BTreeMap<&'static str, u64> {
        let mut m: BTreeMap<&'static str, u64> = self
            .rejected
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| (*r, *n))
            .collect();
        // Each subnet with a valid key has exactly one route (its first key's).
        let duplicates = self.valid - self.routes.len();
        if duplicates > 0 {
            m.insert("duplicate_subnet", duplicates as u64);
        }
        m
    }

    /// The name `key` is held under: itself, or for a key too long to be a lease key a
    /// fixed-size name (see the module docs). Every method taking a key maps it through this.
    fn held_name<'k>(&self, key: &'k str) -> Cow<'k, str> {
        long_key_name(key, self.dir.len() + MAX_LEASE_KEY)
    }

    /// A key was created or changed. A key already seen at `mod_revision` is ignored.
    pub fn put(&mut self, kv: KeyValue<'_>, events: &mut Vec<LeaseEvent>) {
        let name = self.held_name(kv.key);
        if let Some(e) = self.entries.get_mut(&*name) {
            if e.mod_revision == kv.mod_revision {
                e.listing = self.listing;
                return;
            }
        }
        let mut touched = Vec::with_capacity(2);
        // Reuse the key's shared text when the key is known (no new allocation).
        let (shared, old_subnet) = match self.remove_entry(&name) {
            Some((k, subnet)) => (k, subnet),
            None => (Arc::from(&*name), None),
        };
        touched.extend(old_subnet);
        // The key and the value are each parsed once; the verdict is made from those.
        let key = parse_under(&self.dir, kv.key);
        let attrs = LeaseAttrs::parse(kv.value);
        let shape = KeyShape::of(&key);
        let public_ip = attrs.as_ref().ok().map(|a| a.public_ip);
        let state = validate_parsed(self.config.as_ref(), key, attrs)
            .map(|v| (v.subnet(), v.public_ip()))
            .map_err(Box::new);
        let entry = Entry {
            mod_revision: kv.mod_revision,
            create_revision: kv.create_revision,
            lease_id: kv.lease,
            shape,
            public_ip,
            listing: self.listing,
            state,
        };
        match &entry.state {
            Ok(_) if !self.routing => {}
            Ok((subnet, _)) => {
                self.valid += 1;
                self.by_subnet
                    .insert((*subnet, kv.create_revision, shared.clone()));
                touched.push(*subnet);
            }
            Err(r) => *self.rejected.entry(r.reason()).or_default() += 1,
        }
        self.entries.insert(shared, entry);
        for subnet in touched {
            self.refresh_route(subnet, events);
        }
        if let Some(Err(reason)) = self.status(&name) {
            events.push(LeaseEvent::Rejected {
                key: name.into_owned(),
                revision: kv.mod_revision,
                reason,
            });
        }
    }

    /// A key was deleted (by hand or by lease expiry).
    pub fn delete(&mut self, key: &str, events: &mut Vec<LeaseEvent>) {
        let name = self.held_name(key);
        if let Some((_, Some(subnet))) = self.remove_entry(&name) {
            self.refresh_route(subnet, events);
        }
    }

    /// Starts applying a full listing: put its key-values with [`LeaseSet::put`] (in as many
    /// pages as it comes in), then [`LeaseSet::end_listing`] deletes the keys it lacked.
    /// Starting another listing abandons an unfinished one.
    pub fn begin_listing(&mut self) {
        self.listing = self.listing.wrapping_add(1);
    }

    /// The keys the listing being applied has not put (so far), in no particular order.
    pub(super) fn unlisted(&self) -> Vec<Arc<str>> {
        self.entries
            .iter()
            .filter(|(_, e)| e.listing != self.listing)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Ends the listing begun by [`LeaseSet::begin_listing`]: the keys it lacked are deleted.
    pub fn end_listing(&mut self, events: &mut Vec<LeaseEvent>) {
        for key in self.unlisted() {
            self.delete(&key, events);
        }
    }

    /// Replaces everything with a full listing: keys missing from it are deleted, the others put.
    pub fn replace_all<'a>(
        &mut self,
        listing: impl IntoIterator<Item = KeyValue<'a>>,
        events: &mut Vec<LeaseEvent>,
    ) {
        self.begin_listing();
        for kv in listing {
            self.put(kv, events);
        }
        self.end_listing(events);
    }

    /// Removes `key`'s entry and bookkeeping; returns the key's shared text and the subnet
    /// whose route may change.
    fn remove_entry(&mut self, key: &str) -> Option<(Arc<str>, Option<Ipv4Net>)> {
        let (shared, old) = self.entries.remove_entry(key)?;
        match old.state {
            Ok(_) if !self.routing => Some((shared, None)),
            Ok((subnet, _)) => {
                self.valid -= 1;
                self.by_subnet
                    .remove(&(subnet, old.create_revision, shared.clone()));
                Some((shared, Some(subnet)))
            }
            Err(r) => {
                if let Some(n) = self.rejected.get_mut(r.reason()) {
                    *n = n.saturating_sub(1);
                }
                Some((shared, None))
            }
        }
    }

    /// The key routed for `subnet`: the first valid one by (create revision, key).
    fn holder(&self, subnet: &Ipv4Net) -> Option<&str> {
        self.by_subnet
            .range((*subnet, i64::MIN, empty_key())..)
            .next()
            .filter(|(s, _, _)| s == subnet)
            .map(|(_, _, k)| &**k)
    }

    fn refresh_route(&mut self, subnet: Ipv4Net, events: &mut Vec<LeaseEvent>) {
        let now = self.holder(&subnet).and_then(|key| {
            let ip = self.entries.get(key)?.state.as_ref().ok()?.1;
            Some((key, ip))
        });
        match now {
            Some((key, ip)) => {
                // The key is copied into an event only when the route changes.
                if self.routes.get(&subnet) != Some(&ip) {
                    let key = key.to_owned();
                    self.routes.insert(subnet, ip);
                    events.push(LeaseEvent::Routed {
                        subnet,
                        public_ip: ip,
                        key,
                    });
                }
            }
            None => {
                if self.routes.remove(&subnet).is_some() {
                    events.push(LeaseEvent::Unrouted { subnet });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/coreos.com/network";

    fn set() -> LeaseSet {
        let cfg = NetworkConfig::parse(r#"{"Network":"10.1.0.0/16"}"#).unwrap();
        LeaseSet::new(P, Some(cfg))
    }

    fn key(k: &str) -> String {
        format!("{P}/subnets/{k}")
    }

    fn kv<'a>(key: &'a str, value: &'a str, rev: i64) -> KeyValue<'a> {
        KeyValue {
            key,
            value: value.as_bytes(),
            create_revision: rev,
            mod_revision: rev,
            lease: 0,
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn reasons(events: &[LeaseEvent]) -> Vec<(String, &'static str)> {
        events
            .iter()
            .filter_map(|e| match e {
                LeaseEvent::Rejected { key, reason, .. } => Some((key.clone(), reason.reason())),
                _ => None,
            })
            .collect()
    }

    /// Regression: a member writing PublicIP 0.0.0.0 froze the table for everyone. Here the bad
    /// lease is rejected once, the good and the dual-stack leases are routed, and a lease written
    /// after the bad one still gets in.
    #[test]
    fn a_bad_lease_is_skipped_and_the_rest_is_routed() {
        let mut s = set();
        let mut ev = Vec::new();
        let (good, bad, dual, later) = (
            key("10.1.15.0-24"),
            key("10.1.250.0-24"),
            key("10.1.252.0-24&fc00:0:0:f00::-64"),
            key("10.1.16.0-24"),
        );
        s.replace_all(
            [
                kv(&good, r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#, 5),
                kv(&bad, r#"{"PublicIP":"0.0.0.0","PublicIPv6":null}"#, 6),
                kv(
                    &dual,
                    r#"{"PublicIP":"198.18.0.3","PublicIPv6":"fc00::3","BackendType":"vxlan","BackendData":{"VNI":1},"BackendV6Data":{"VNI":1}}"#,
                    7,
                ),
            ],
            &mut ev,
        );
        assert_eq!(reasons(&ev), [(bad.clone(), "public_ip_unspecified")]);
        let want: BTreeMap<Ipv4Net, Ipv4Addr> = [
            (net("10.1.15.0/24"), ip("198.18.0.1")),
            (net("10.1.252.0/24"), ip("198.18.0.3")),
        ]
        .into();
        assert_eq!(s.routes(), &want);
        assert_eq!(
            s.rejected_by_reason(),
            [("public_ip_unspecified", 1)].into()
        );
        assert_eq!(
            s.status(&bad).unwrap().unwrap_err().to_string(),
            "lease PublicIP 0.0.0.0: the unspecified address is not a host"
        );
        assert_eq!(s.lease_info(&bad).unwrap().owner, Some(ip("0.0.0.0")));

        // A later valid lease reaches the routes.
        ev.clear();
        s.put(
            kv(&later, r#"{"PublicIP":"198.18.0.4","PublicIPv6":null}"#, 8),
            &mut ev,
        );
        assert_eq!(
            ev,
            [LeaseEvent::Routed {
                subnet: net("10.1.16.0/24"),
                public_ip: ip("198.18.0.4"),
                key: later.clone()
            }]
        );
        // Re-listing the same revisions reports nothing again; a new revision of the bad key
        // is reported once more.
        ev.clear();
        s.replace_all(
            [
                kv(&good, r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#, 5),
                kv(&bad, r#"{"PublicIP":"0.0.0.0","PublicIPv6":null}"#, 6),
                kv(&later, r#"{"PublicIP":"198.18.0.4","PublicIPv6":null}"#, 8),
            ],
            &mut ev,
        );
        assert_eq!(
            ev,
            [LeaseEvent::Unrouted {
                subnet: net("10.1.252.0/24")
            }]
        );
        ev.clear();
        s.put(
            KeyValue {
                key: &bad,
                value: br#"{"PublicIP":"255.255.255.255"}"#,
                create_revision: 6,
                mod_revision: 9,
                lease: 0,
            },
            &mut ev,
        );
        assert_eq!(reasons(&ev), [(bad.clone(), "public_ip_broadcast")]);
        assert_eq!(s.rejected_by_reason(), [("public_ip_broadcast", 1)].into());
        // Fixed: routed, nothing rejected.
        ev.clear();
        s.put(
            KeyValue {
                key: &bad,
                value: br#"{"PublicIP":"198.18.0.250"}"#,
                create_revision: 6,
                mod_revision: 10,
                lease: 0,
            },
            &mut ev,
        );
        assert_eq!(
            s.routes().get(&net("10.1.250.0/24")),
            Some(&ip("198.18.0.250"))
        );
        assert!(s.rejected_by_reason().is_empty());
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn each_kind_of_unusable_lease_is_rejected_with_its_reason() {
        let mut s = set();
        let mut ev = Vec::new();
        let cases = [
            (
                "10.1.1.0-24",
                r#"{"PublicIP":"0.0.0.0"}"#,
                "public_ip_unspecified",
            ),
            ("10.1.2.0-24", r#"{"PublicIP":""}"#, "no_public_ip"),
            (
                "10.1.3.0-24",
                r#"{"PublicIP":"127.0.0.1"}"#,
                "public_ip_loopback",
            ),
            (
                "10.1.4.0-24",
                r#"{"PublicIP":"224.0.0.1"}"#,
                "public_ip_multicast",
            ),
            (
                "10.1.5.0-24",
                r#"{"PublicIP":"255.255.255.255"}"#,
                "public_ip_broadcast",
            ),
            (
                "10.1.6.0-24",
                r#"{"PublicIP":"2001:db8::1"}"#,
                "public_ip_is_ipv6",
            ),
            ("10.1.7.0-24", "{not json", "malformed_value"),
            (
                "10.9.8.0-24",
                r#"{"PublicIP":"198.18.0.8"}"#,
                "outside_network",
            ),
            (
                "10.1.12.0-23",
                r#"{"PublicIP":"198.18.0.9"}"#,
                "wrong_subnet_len",
            ),
            (
                "10.1.10.0-25",
                r#"{"PublicIP":"198.18.0.10"}"#,
                "wrong_subnet_len",
            ),
            ("junk", r#"{"PublicIP":"198.18.0.11"}"#, "bad_key"),
            // Inside Network 10.1.0.0/16: the overlay would send it into itself.
            (
                "10.1.99.0-24",
                r#"{"PublicIP":"10.1.99.1"}"#,
                "public_ip_in_network",
            ),
        ];
        let keys: Vec<String> = cases.iter().map(|(k, _, _)| key(k)).collect();
        for (i, (k, (_, v, _))) in keys.iter().zip(&cases).enumerate() {
            s.put(kv(k, v, i as i64 + 1), &mut ev);
        }
        let got = reasons(&ev);
        let want: Vec<(String, &str)> = keys
            .iter()
            .zip(&cases)
            .map(|(k, (_, _, r))| (k.clone(), *r))
            .collect();
        assert_eq!(got, want);
        assert!(s.routes().is_empty());
        assert_eq!(
            s.rejected_by_reason().values().sum::<u64>(),
            cases.len() as u64
        );
        // Deleting them clears the counts.
        for k in &keys {
            s.delete(k, &mut ev);
        }
        assert!(s.rejected_by_reason().is_empty());
        assert!(s.is_empty());
    }

    /// A plain and a dual-stack key for one IPv4 subnet: the older is routed, the other is a
    /// duplicate; deleting the older hands the route to the other, never drops it.
    #[test]
    fn two_keys_for_one_subnet_route_the_older_and_deleting_it_keeps_the_route() {
        let mut s = set();
        let mut ev = Vec::new();
        let (plain, dual) = (key("10.1.20.0-24"), key("10.1.20.0-24&fc00::-64"));
        s.put(kv(&plain, r#"{"PublicIP":"198.18.0.20"}"#, 3), &mut ev);
        s.put(kv(&dual, r#"{"PublicIP":"198.18.0.21"}"#, 4), &mut ev);
        assert_eq!(
            ev.last(),
            Some(&LeaseEvent::Rejected {
                key: dual.clone(),
                revision: 4,
                reason: LeaseRejection::Duplicate {
                    subnet: net("10.1.20.0/24"),
                    holder: plain.clone()
                }
            })
        );
        assert_eq!(
            s.routes().get(&net("10.1.20.0/24")),
            Some(&ip("198.18.0.20"))
        );
        assert_eq!(s.rejected_by_reason(), [("duplicate_subnet", 1)].into());
        ev.clear();
        s.delete(&plain, &mut ev);
        assert_eq!(
            ev,
            [LeaseEvent::Routed {
                subnet: net("10.1.20.0/24"),
                public_ip: ip("198.18.0.21"),
                key: dual.clone()
            }]
        );
        assert!(s.rejected_by_reason().is_empty());
        ev.clear();
        s.delete(&dual, &mut ev);
        assert_eq!(
            ev,
            [LeaseEvent::Unrouted {
                subnet: net("10.1.20.0/24")
            }]
        );
    }

    /// Keys far too long to be lease keys (here 100 of 64 KiB each, 6.4 MiB in all)
    /// are held and reported under fixed-size names: counted, deletable, shown by `status`,
    /// and the set keeps a few KiB of key text, not the keys. Two long keys that share a prefix
    /// stay two keys; values are kept only as cut messages.
    #[test]
    fn huge_rejected_keys_are_held_in_bounded_memory() {
        let mut s = set();
        let mut ev = Vec::new();
        let huge_value = format!(r#"{{"PublicIP":"{}"}}"#, "9".repeat(1 << 16));
        let keys: Vec<String> = (0..100)
            .map(|i| key(&format!("{}{i}", "x".repeat(1 << 16))))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            s.put(kv(k, &huge_value, i as i64 + 1), &mut ev);
        }
        let bad = key("10.1.9.0-24");
        s.put(kv(&bad, &huge_value, 200), &mut ev);
        assert_eq!(
            s.rejected_by_reason(),
            [("bad_key", 100), ("public_ip_not_ipv4", 1)].into()
        );
        let held: usize = s.entries.keys().map(|k| k.len()).sum();
        assert!(held < 101 * 200, "{held} bytes of key text held");
        let event_bytes: usize = ev
            .iter()
            .map(|e| match e {
                LeaseEvent::Rejected { key, reason, .. } => key.len() + reason.to_string().len(),
                _ => 0,
            })
            .sum();
        assert!(event_bytes < 101 * 400, "{event_bytes} bytes in events");
        assert_eq!(s.status(&keys[7]).unwrap().unwrap_err().reason(), "bad_key");
        for k in &keys {
            s.delete(k, &mut ev);
        }
        s.delete(&bad, &mut ev);
        assert!(s.is_empty());
        assert!(s.rejected_by_reason().is_empty());
    }

    /// Without a config (flannelctl when the config is unreadable) only keys and values count.
    #[test]
    fn without_a_config_subnets_are_not_checked() {
        let mut s = LeaseSet::new(P, None);
        let mut ev = Vec::new();
        let k = key("10.9.0.0-25");
        s.put(kv(&k, r#"{"PublicIP":"198.18.0.1"}"#, 1), &mut ev);
        assert_eq!(
            s.status(&k),
            Some(Ok((net("10.9.0.0/25"), ip("198.18.0.1"))))
        );
    }
}
