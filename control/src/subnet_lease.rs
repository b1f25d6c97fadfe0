//! Acquiring and renewing this host's subnet lease in etcd, in flannel's order:
//!
//! 1. an existing lease whose PublicIP is ours and that fits the config is reused (re-attached to a
//!    fresh etcd lease with a txn guarded by the key's mod revision);
//! 2. else the subnet recorded in the previous subnet.env, if free and fitting;
//! 3. else a random free subnet between SubnetMin and SubnetMax.
//!
//! Creation is `Txn If(Version(key) == 0) Then(Put(key, value, lease))`, so two hosts can never hold
//! one subnet. A lost race re-lists and tries again (flannel exits there). No free subnet is
//! [`LeaseError::OutOfSubnets`]. The key's TTL is an etcd lease; renewing is one keep-alive.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use flannel_shared::config::NetworkConfig;
use flannel_shared::lease::{subnet_from_key, subnet_key, subnets_prefix, LeaseAttrs};
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

struct Listing {
    /// Every subnet with a key, whether its value parsed or not.
    taken: HashSet<Ipv4Net>,
    /// Our own fitting leases: (subnet, mod_revision, etcd lease id).
    own: Vec<(Ipv4Net, i64, i64)>,
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
    let mut l = Listing {
        taken: HashSet::new(),
        own: Vec::new(),
    };
    for kv in resp.kvs() {
        let Some(subnet) = std::str::from_utf8(kv.key())
            .ok()
            .and_then(|k| subnet_from_key(&req.prefix, k))
        else {
            continue;
        };
        l.taken.insert(subnet);
        if let Ok(attrs) = LeaseAttrs::parse(kv.value()) {
            if attrs.public_ip == req.public_ip && cfg.fits(&subnet) {
                l.own.push((subnet, kv.mod_revision(), kv.lease()));
            }
        }
    }
    Ok(l)
}

/// Picks a free subnet: a random start in [SubnetMin, SubnetMax], then the next free one.
fn pick_free(cfg: &NetworkConfig, taken: &HashSet<Ipv4Net>) -> Option<Ipv4Net> {
    let count = cfg.subnet_count();
    let step = 1u64 << (32 - u32::from(cfg.subnet_len));
    let min = u64::from(u32::from(cfg.subnet_min));
    let start = rand::thread_rng().gen_range(0..count);
    (0..count).map(|i| (start + i) % count).find_map(|i| {
        let net = Ipv4Net::new(Ipv4Addr::from((min + i * step) as u32), cfg.subnet_len)?;
        (!taken.contains(&net)).then_some(net)
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
    let result = acquire_with(client, cfg, req, lease_id).await;
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
    })
}

const MAX_RACES: u32 = 1000;

async fn acquire_with(
    client: &mut Client,
    cfg: &NetworkConfig,
    req: &LeaseRequest,
    lease_id: i64,
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
        let listing = list(client, req, cfg).await?;
        // 1. Our own existing lease.
        if let Some(&(subnet, mod_rev, old_lease)) = listing.own.first() {
            let key = subnet_key(&req.prefix, &subnet);
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    mod_rev,
                )])
                .and_then([put(&key)]);
            if client.txn(txn).await?.succeeded() {
                if old_lease != 0 && old_lease != lease_id {
                    // The key now hangs on our new lease; the old one holds nothing of ours.
                    let _ = client.lease_revoke(old_lease).await;
                }
                return Ok((subnet, LeaseSource::Existing));
            }
            continue;
        }
        // 2. The subnet from the previous subnet.env, 3. a random free one.
        let (subnet, source) = match req
            .previous
            .filter(|p| cfg.fits(p) && !listing.taken.contains(p))
        {
            Some(p) => (p, LeaseSource::SubnetFile),
            None => match pick_free(cfg, &listing.taken) {
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
        let mut taken: HashSet<Ipv4Net> = cfg.subnets().collect();
        assert_eq!(pick_free(&cfg, &taken), None);
        let hole: Ipv4Net = "10.1.2.32/28".parse().unwrap();
        taken.remove(&hole);
        for _ in 0..20 {
            assert_eq!(pick_free(&cfg, &taken), Some(hole));
        }
    }
}
