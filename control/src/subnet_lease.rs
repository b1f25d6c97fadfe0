//! Acquiring and renewing this host's subnet lease in etcd, in flannel's order:
//!
//! 1. an existing lease whose PublicIP is ours and that fits the config is reused (re-attached to a
//!    fresh etcd lease with a txn guarded by the key's mod revision);
//! 2. else the subnet recorded in the previous subnet.env, if free and fitting;
//! 3. else a random free subnet between SubnetMin and SubnetMax.
//!
//! "Ours" means a plain key (`10.1.15.0-24`, the only form flannel-rs writes) whose value parses
//! with our PublicIP. Such a lease that no longer fits the config (SubnetLen changed, outside
//! Network or SubnetMin..SubnetMax) is released first, as flannel does: deleted with a txn guarded
//! by its mod revision. Dual-stack keys (`10.1.15.0-24&fc00::-64`) are never ours: flannel-rs never
//! rewrites or deletes them (flannel deletes one naming its PublicIP when IPv6 is off; a
//! dual-stack flanneld on the same address would lose its lease).
//!
//! "Free" is flannel's `Overlaps`: a candidate is taken when any existing key's IPv4 subnet
//! overlaps it, whatever that subnet's length (a foreign /23 blocks both /24s in it, a /25 the
//! /24 around it), whether the key is plain or dual-stack and whether its value parses. A key
//! whose IPv4 part has host bits set (`10.1.15.7-24`, which flannel parses) blocks the subnet
//! around it.
//!
//! Creation is `Txn If(Version(key) == 0) Then(Put(key, value, lease))`, so two hosts can never hold
//! one subnet. A lost race re-lists and tries again (flannel exits there). No free subnet is
//! [`LeaseError::OutOfSubnets`]. The key's TTL is an etcd lease; renewing is one keep-alive.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use flannel_shared::config::NetworkConfig;
use flannel_shared::lease::{subnet_key, subnets_prefix, LeaseAttrs, LeaseKey, LeaseKeyError};
use flannel_shared::Ipv4Net;
use rand::Rng;

/// What to ask for.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// etcd prefix, e.g. `/coreos.com/network`.
    pub prefix: String,
    pub public_ip: Ipv4Addr,
    /// TTL of the etcd lease in seconds.
    pub ttl_secs: i64,
    /// The subnet from the previous subnet.env, if any.
    pub previous: Option<Ipv4Net>,
}

/// How a subnet was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseSource {
    /// Our own lease already existed in etcd.
    Existing,
    /// The subnet from the previous subnet.env was free.
    SubnetFile,
    /// A newly chosen free subnet.
    Random,
}

/// A lease this host holds.
#[derive(Debug, Clone)]
pub struct HeldLease {
    pub subnet: Ipv4Net,
    pub key: String,
    pub lease_id: i64,
    pub ttl: Duration,
    pub expires: Instant,
    pub source: LeaseSource,
    /// Our own leases that no longer fitted the config and were deleted on the way.
    pub released: Vec<Ipv4Net>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("out of subnets: all {count} subnets of {network} between SubnetMin {min} and SubnetMax {max} are leased")]
    OutOfSubnets {
        network: Ipv4Net,
        min: Ipv4Addr,
        max: Ipv4Addr,
        count: u64,
    },
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd granted lease {id} a TTL of {ttl}s")]
    BadGrant { id: i64, ttl: i64 },
    #[error("etcd closed the keep-alive stream of lease {0} without an answer")]
    KeepAliveClosed(i64),
    #[error("gave up after {0} lost races for a subnet")]
    TooManyRaces(u32),
}

/// Result of a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease lives on for this long.
    Renewed(Duration),
    /// etcd no longer knows the lease (expired or revoked): the key is gone with it.
    Lost,
}

/// One of our own leases found in a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OwnLease {
    subnet: Ipv4Net,
    mod_revision: i64,
    /// The etcd lease the key hangs on (0 = none).
    lease_id: i64,
}

/// What a listing of `subnets/` means for acquiring.
#[derive(Debug, Default)]
struct Listing {
    /// The IPv4 subnet of every key, plain or dual-stack, whether its value parsed or not.
    taken: Vec<Ipv4Net>,
    /// Our own leases that fit the config, in key order.
    own: Vec<OwnLease>,
    /// Our own leases that do not fit the config (to release).
    misfits: Vec<OwnLease>,
}

/// Sorts the keys under `subnets/` into taken subnets and our own leases. Pure.
/// `kvs`: (key, value, mod revision, etcd lease id).
fn classify<'a>(
    req: &LeaseRequest,
    cfg: &NetworkConfig,
    kvs: impl IntoIterator<Item = (&'a str, &'a [u8], i64, i64)>,
) -> Listing {
    let dir = subnets_prefix(&req.prefix);
    let mut l = Listing::default();
    for (key, value, mod_revision, lease_id) in kvs {
        let Some(rest) = key.strip_prefix(&dir) else {
            continue;
        };
        let parsed = match LeaseKey::parse(rest) {
            Ok(k) => k,
            // flannel reads `10.1.15.7-24` as a subnet: keep clear of it.
            Err(LeaseKeyError::HostBits { network, .. }) => {
                l.taken.push(network);
                continue;
            }
            Err(_) => continue,
        };
        let subnet = parsed.ipv4;
        l.taken.push(subnet);
        let ours = parsed.ipv6.is_none()
            && LeaseAttrs::parse(value).is_ok_and(|a| a.public_ip == req.public_ip);
        if ours {
            let own = OwnLease {
                subnet,
                mod_revision,
                lease_id,
            };
            if cfg.fits(&subnet) {
                l.own.push(own);
            } else {
                l.misfits.push(own);
            }
        }
    }
    l
}

async fn list(
    client: &mut Client,
    req: &LeaseRequest,
    cfg: &NetworkConfig,
) -> Result<Listing, LeaseError> {
    let resp = client
        .get(
            subnets_prefix(&req.prefix),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    Ok(classify(
        req,
        cfg,
        resp.kvs().iter().filter_map(|kv| {
            Some((
                std::str::from_utf8(kv.key()).ok()?,
                kv.value(),
                kv.mod_revision(),
                kv.lease(),
            ))
        }),
    ))
}

/// The address ranges held by existing leases, merged: answers "does this subnet overlap any
/// lease" (flannel's `Overlaps`) in O(log n).
#[derive(Debug, Default)]
struct Taken {
    /// Inclusive, sorted, disjoint and not adjacent.
    ranges: Vec<(u32, u32)>,
}

impl Taken {
    fn new(nets: &[Ipv4Net]) -> Self {
        let mut all: Vec<(u32, u32)> = nets
            .iter()
            .map(|n| (n.addr_u32(), u32::from(n.last())))
            .collect();
        all.sort_unstable();
        let mut ranges: Vec<(u32, u32)> = Vec::with_capacity(all.len());
        for (a, b) in all {
            match ranges.last_mut() {
                Some(last) if u64::from(a) <= u64::from(last.1) + 1 => last.1 = last.1.max(b),
                _ => ranges.push((a, b)),
            }
        }
        Self { ranges }
    }

    fn overlaps(&self, n: &Ipv4Net) -> bool {
        let (a, b) = (n.addr_u32(), u32::from(n.last()));
        // The last range starting at or before b is the only one that can overlap [a, b].
        let i = self.ranges.partition_point(|r| r.0 <= b);
        i > 0 && self.ranges[i - 1].1 >= a
    }
}

/// Picks a free subnet: a random start in [SubnetMin, SubnetMax], then the next one that
/// overlaps no existing lease.
fn pick_free(cfg: &NetworkConfig, taken: &Taken) -> Option<Ipv4Net> {
    let count = cfg.subnet_count();
    let step = 1u64 << (32 - u32::from(cfg.subnet_len));
    let min = u64::from(u32::from(cfg.subnet_min));
    if count == 0 {
        return None;
    }
    let start = rand::thread_rng().gen_range(0..count);
    (0..count).map(|i| (start + i) % count).find_map(|i| {
        let net = Ipv4Net::new(Ipv4Addr::from((min + i * step) as u32), cfg.subnet_len)?;
        (!taken.overlaps(&net)).then_some(net)
    })
}

/// Acquires a subnet for `req.public_ip` under `cfg`, following flannel's order.
pub async fn acquire(
    client: &mut Client,
    cfg: &NetworkConfig,
    req: &LeaseRequest,
) -> Result<HeldLease, LeaseError> {
    let grant = client.lease_grant(req.ttl_secs, None).await?;
    let (lease_id, granted) = (grant.id(), grant.ttl());
    if granted <= 0 {
        return Err(LeaseError::BadGrant {
            id: lease_id,
            ttl: granted,
        });
    }
    let mut released = Vec::new();
    let result = acquire_with(client, cfg, req, lease_id, &mut released).await;
    if result.is_err() {
        // Never leave an unused etcd lease behind; best effort.
        let _ = client.lease_revoke(lease_id).await;
    }
    let (subnet, source) = result?;
    let ttl = Duration::from_secs(granted as u64);
    Ok(HeldLease {
        key: subnet_key(&req.prefix, &subnet),
        subnet,
        lease_id,
        ttl,
        expires: Instant::now() + ttl,
        source,
        released,
    })
}

const MAX_RACES: u32 = 1000;

async fn acquire_with(
    client: &mut Client,
    cfg: &NetworkConfig,
    req: &LeaseRequest,
    lease_id: i64,
    released: &mut Vec<Ipv4Net>,
) -> Result<(Ipv4Net, LeaseSource), LeaseError> {
    let value = LeaseAttrs::udp(req.public_ip).to_json();
    let put = |key: &str| {
        TxnOp::put(
            key,
            value.clone(),
            Some(PutOptions::new().with_lease(lease_id)),
        )
    };
    for race in 0..MAX_RACES {
        if race > 0 {
            tracing::debug!(race, "lost a race for a subnet, listing again");
        }
        let mut listing = list(client, req, cfg).await?;
        // 0. Our own leases that no longer fit the config are released, as flannel does.
        for misfit in std::mem::take(&mut listing.misfits) {
            let key = subnet_key(&req.prefix, &misfit.subnet);
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    misfit.mod_revision,
                )])
                .and_then([TxnOp::delete(key.as_str(), None)]);
            if client.txn(txn).await?.succeeded() {
                tracing::warn!(
                    subnet = %misfit.subnet, key, network = %cfg.network,
                    subnet_len = cfg.subnet_len, subnet_min = %cfg.subnet_min,
                    subnet_max = %cfg.subnet_max,
                    "released our lease: it does not fit the network config any more"
                );
                released.push(misfit.subnet);
                if let Some(i) = listing.taken.iter().position(|t| *t == misfit.subnet) {
                    listing.taken.swap_remove(i);
                }
            }
            // Else it changed meanwhile: no longer ours to judge; it stays taken.
        }
        // 1. Our own existing lease.
        if let Some(&own) = listing.own.first() {
            let key = subnet_key(&req.prefix, &own.subnet);
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    own.mod_revision,
                )])
                .and_then([put(&key)]);
            if client.txn(txn).await?.succeeded() {
                if own.lease_id != 0 && own.lease_id != lease_id {
                    // The key now hangs on our new lease; the old one holds nothing of ours.
                    let _ = client.lease_revoke(own.lease_id).await;
                }
                return Ok((own.subnet, LeaseSource::Existing));
            }
            continue;
        }
        // 2. The subnet from the previous subnet.env, 3. a random free one.
        let taken = Taken::new(&listing.taken);
        let (subnet, source) = match req.previous.filter(|p| cfg.fits(p) && !taken.overlaps(p)) {
            Some(p) => (p, LeaseSource::SubnetFile),
            None => match pick_free(cfg, &taken) {
                Some(s) => (s, LeaseSource::Random),
                None => {
                    return Err(LeaseError::OutOfSubnets {
                        network: cfg.network,
                        min: cfg.subnet_min,
                        max: cfg.subnet_max,
                        count: cfg.subnet_count(),
                    })
                }
            },
        };
        let key = subnet_key(&req.prefix, &subnet);
        let txn = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then([put(&key)]);
        if client.txn(txn).await?.succeeded() {
            return Ok((subnet, source));
        }
    }
    Err(LeaseError::TooManyRaces(MAX_RACES))
}

/// Renews the lease with one keep-alive. `Lost` when etcd no longer has it.
pub async fn renew(client: &mut Client, lease: &mut HeldLease) -> Result<Renewal, LeaseError> {
    let (mut keeper, mut stream) = client.lease_keep_alive(lease.lease_id).await?;
    keeper.keep_alive().await?;
    let ttl = match stream.message().await? {
        Some(resp) => resp.ttl(),
        None => return Err(LeaseError::KeepAliveClosed(lease.lease_id)),
    };
    if ttl <= 0 {
        return Ok(Renewal::Lost);
    }
    let ttl = Duration::from_secs(ttl as u64);
    lease.expires = Instant::now() + ttl;
    Ok(Renewal::Renewed(ttl))
}

/// When to renew: `margin` before expiry, as flannel's `-subnet-lease-renew-margin`. When the margin
/// is as long as the TTL itself (short test TTLs), renew after a third of the TTL instead.
pub fn renew_delay(ttl: Duration, margin: Duration) -> Duration {
    if margin < ttl {
        ttl - margin
    } else {
        ttl / 3
    }
}

/// Delay before retrying a failed renewal: flannel's one minute, shortened for short TTLs so a
/// retry still happens before expiry.
pub fn renew_retry_delay(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_timing() {
        let day = Duration::from_secs(86400);
        assert_eq!(
            renew_delay(day, Duration::from_secs(3600)),
            Duration::from_secs(82800)
        );
        assert_eq!(
            renew_delay(Duration::from_secs(9), Duration::from_secs(3600)),
            Duration::from_secs(3)
        );
        assert_eq!(renew_retry_delay(day), Duration::from_secs(60));
        assert_eq!(
            renew_retry_delay(Duration::from_secs(5)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn pick_free_finds_the_only_hole() {
        let cfg = NetworkConfig::parse(r#"{"Network":"10.1.0.0/22","SubnetLen":28}"#).unwrap();
        let mut taken: Vec<Ipv4Net> = cfg.subnets().collect();
        assert_eq!(pick_free(&cfg, &Taken::new(&taken)), None);
        let hole: Ipv4Net = "10.1.2.32/28".parse().unwrap();
        taken.retain(|t| *t != hole);
        for _ in 0..20 {
            assert_eq!(pick_free(&cfg, &Taken::new(&taken)), Some(hole));
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// flannel's Overlaps: a lease of any length blocks every candidate it overlaps.
    #[test]
    fn taken_is_any_overlap_whatever_the_prefix_length() {
        let t = Taken::new(&[
            net("10.1.4.0/23"),
            net("10.1.9.128/25"),
            net("10.1.20.0/24"),
            net("10.1.21.0/24"),
            net("10.1.0.0/16"),
        ]);
        // Merged into one range by the /16 covering everything.
        assert_eq!(t.ranges.len(), 1);
        let t = Taken::new(&[
            net("10.1.4.0/23"),
            net("10.1.9.128/25"),
            net("10.1.20.0/24"),
            net("10.1.21.0/24"),
        ]);
        assert_eq!(t.ranges.len(), 3, "{:?}", t.ranges);
        for (n, want) in [
            ("10.1.3.0/24", false),
            ("10.1.4.0/24", true),
            ("10.1.5.0/24", true),
            ("10.1.6.0/24", false),
            ("10.1.9.0/24", true),
            ("10.1.9.0/25", false),
            ("10.1.8.0/24", false),
            ("10.1.10.0/24", false),
            ("10.1.20.0/24", true),
            ("10.1.21.0/24", true),
            ("10.1.22.0/24", false),
            ("10.1.0.0/16", true),
            ("0.0.0.0/0", true),
            ("10.2.0.0/16", false),
        ] {
            assert_eq!(t.overlaps(&net(n)), want, "{n}");
        }
        assert!(!Taken::new(&[]).overlaps(&net("0.0.0.0/0")));
        let edge = Taken::new(&[net("255.255.255.0/24"), net("0.0.0.0/24")]);
        assert!(edge.overlaps(&net("255.255.255.128/25")));
        assert!(edge.overlaps(&net("0.0.0.0/32")));
        assert!(!edge.overlaps(&net("0.0.1.0/24")));
    }

    /// A foreign /23 blocks both /24s in it: with only those two and one other free, the
    /// other one is picked every time.
    #[test]
    fn pick_free_skips_subnets_a_foreign_lease_of_another_length_overlaps() {
        let cfg = NetworkConfig::parse(
            r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.4.0","SubnetMax":"10.1.6.0"}"#,
        )
        .unwrap();
        let taken = Taken::new(&[net("10.1.4.0/23")]);
        for _ in 0..20 {
            assert_eq!(pick_free(&cfg, &taken), Some(net("10.1.6.0/24")));
        }
        let taken = Taken::new(&[net("10.1.4.0/23"), net("10.1.6.64/26")]);
        assert_eq!(pick_free(&cfg, &taken), None);
    }

    /// Exact keys and values as a mixed cluster writes them: which subnets are taken, which
    /// leases are ours (reuse), which are ours but no longer fit (release).
    #[test]
    fn classify_sorts_keys_into_taken_own_and_misfits() {
        let cfg = NetworkConfig::parse(
            r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.10.0","SubnetMax":"10.1.200.0"}"#,
        )
        .unwrap();
        let req = LeaseRequest {
            prefix: "/coreos.com/network".into(),
            public_ip: Ipv4Addr::new(198, 18, 0, 1),
            ttl_secs: 60,
            previous: None,
        };
        let ours = r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#;
        let theirs = r#"{"PublicIP":"198.18.0.2","PublicIPv6":null}"#;
        let kvs: Vec<(String, &str, i64, i64)> = [
            ("10.1.15.0-24", ours, 11, 101),
            // Ours, but SubnetLen changed: release.
            ("10.1.16.0-25", ours, 12, 102),
            // Ours, but below SubnetMin: release.
            ("10.1.2.0-24", ours, 13, 103),
            // Ours, outside Network: release.
            ("10.7.0.0-24", ours, 14, 104),
            // A dual-stack key naming our IP: never ours to rewrite or delete; taken.
            ("10.1.17.0-24&fc00:0:0:f00::-64", ours, 15, 105),
            ("10.1.18.0-24&fc00:0:0:f01::-64", theirs, 16, 106),
            ("10.1.20.0-23", theirs, 17, 107),
            ("10.1.30.0-24", "not json", 18, 108),
            ("10.1.31.7-24", theirs, 19, 109),
            ("junk", theirs, 20, 110),
        ]
        .iter()
        .map(|(k, v, r, l)| (format!("/coreos.com/network/subnets/{k}"), *v, *r, *l))
        .collect();
        let l = classify(
            &req,
            &cfg,
            kvs.iter()
                .map(|(k, v, r, id)| (k.as_str(), v.as_bytes(), *r, *id))
                .chain([("/other/subnets/10.1.40.0-24", theirs.as_bytes(), 21, 111)]),
        );
        assert_eq!(
            l.own,
            [OwnLease {
                subnet: net("10.1.15.0/24"),
                mod_revision: 11,
                lease_id: 101
            }]
        );
        assert_eq!(
            l.misfits.iter().map(|o| o.subnet).collect::<Vec<_>>(),
            [net("10.1.16.0/25"), net("10.1.2.0/24"), net("10.7.0.0/24")]
        );
        assert_eq!(
            l.taken,
            [
                "10.1.15.0/24",
                "10.1.16.0/25",
                "10.1.2.0/24",
                "10.7.0.0/24",
                "10.1.17.0/24",
                "10.1.18.0/24",
                "10.1.20.0/23",
                "10.1.30.0/24",
                "10.1.31.0/24",
            ]
            .map(net)
        );
        let taken = Taken::new(&l.taken);
        for (n, want) in [
            ("10.1.16.0/24", true),
            ("10.1.17.0/24", true),
            ("10.1.21.0/24", true),
            ("10.1.31.0/24", true),
            ("10.1.22.0/24", false),
            ("10.1.40.0/24", false),
        ] {
            assert_eq!(taken.overlaps(&net(n)), want, "{n}");
        }
    }
}
