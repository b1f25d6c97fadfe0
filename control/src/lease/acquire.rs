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
//! "Free" is judged on the host's [`LeaseView`] (see there): a candidate is taken when a key
//! names it, plain or dual-stack, whether its value parses or not. Unlike flannel's `Overlaps`,
//! keys that are not a SubnetLen subnet inside Network (`0.0.0.0-0`, a /16, a /23 among /24s)
//! block nothing (one such key must not make every new host fail "out of subnets"). The random
//! pick is flannel's: one at random among the lowest [`crate::lease::view::PICK_AMONG`] free
//! subnets.
//!
//! [`acquire`] is the one entry point. Its view holds a full listing
//! ([`crate::lease::watch::list_into`]) and is kept current by the lease watch (flanneld's view;
//! a host without a watch lists once). No attempt lists: creation
//! is `Txn If(Version(key) == 0) Then(Put(key, value, lease)) Else(Get(key))`, so two hosts can
//! never hold one subnet, and a lost race (flannel exits there) puts the winner's key into the
//! view and tries another subnet. No free subnet is [`LeaseError::OutOfSubnets`]. The key's TTL
//! is an etcd lease; renewing is one keep-alive.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use flannel_shared::lease::{subnet_key, LeaseAttrs};
use flannel_shared::Ipv4Net;

use crate::lease::set::KeyValue;
use crate::lease::view::{LeaseView, OwnLease, Reserved, SharedLeaseView};

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

/// Acquires a subnet for `req.public_ip` from `view` (waiting until it holds a full listing),
/// following flannel's order; the network config is the view's. No listing: a lost race
/// teaches the view the key that won (read in the same txn) and another subnet is tried.
pub async fn acquire(
    client: &mut Client,
    req: &LeaseRequest,
    view: &SharedLeaseView,
) -> Result<HeldLease, LeaseError> {
    view.listed().await;
    let grant = client.lease_grant(req.ttl_secs, None).await?;
    let (lease_id, granted) = (grant.id(), grant.ttl());
    if granted <= 0 {
        return Err(LeaseError::BadGrant {
            id: lease_id,
            ttl: granted,
        });
    }
    let mut acquirer = Acquirer {
        client,
        req,
        view,
        lease_id,
        value: LeaseAttrs::udp(req.public_ip).to_json(),
        released: Vec::new(),
    };
    let result = acquirer.take_subnet().await;
    let released = acquirer.released;
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

/// A subnet reserved in a view while this acquirer tries to create it; released on drop (also
/// when the acquisition is cancelled).
struct Reservation<'a> {
    view: &'a SharedLeaseView,
    subnet: Ipv4Net,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.view.lock().unreserve(&self.subnet);
    }
}

/// One acquisition under a granted etcd lease.
struct Acquirer<'a> {
    client: &'a mut Client,
    req: &'a LeaseRequest,
    view: &'a SharedLeaseView,
    /// The etcd lease the key will hang on.
    lease_id: i64,
    /// The lease value we write (flannel's UDP backend value naming our PublicIP).
    value: String,
    /// Our own leases that no longer fitted the config and were deleted on the way.
    released: Vec<Ipv4Net>,
}

impl Acquirer<'_> {
    /// Flannel's order (see the module docs), trying again after each lost race.
    async fn take_subnet(&mut self) -> Result<(Ipv4Net, LeaseSource), LeaseError> {
        for race in 0..MAX_RACES {
            if race > 0 {
                tracing::debug!(race, "lost a race for a subnet, trying another");
            }
            let own = self.view.lock().own_leases(self.req.public_ip);
            // 0. Our own leases that no longer fit the config are released, as flannel does.
            for misfit in own.misfits {
                self.release(misfit).await?;
            }
            // 1. Our own existing lease.
            if let Some(own) = own.fitting.first() {
                if self.reuse(own).await? {
                    return Ok((own.subnet, LeaseSource::Existing));
                }
                continue;
            }
            // 2. The subnet from the previous subnet.env, 3. a random one among the first free.
            let Some(reserved) = self.view.lock().reserve(self.req.previous) else {
                return Err(self.out_of_subnets());
            };
            let subnet = reserved.subnet();
            let _reserved = Reservation {
                view: self.view,
                subnet,
            };
            if self.create(subnet).await? {
                let source = match reserved {
                    Reserved::Preferred(_) => LeaseSource::SubnetFile,
                    Reserved::Picked(_) => LeaseSource::Random,
                };
                return Ok((subnet, source));
            }
        }
        Err(LeaseError::TooManyRaces(MAX_RACES))
    }

    /// Deletes our lease `misfit` unless it changed meanwhile (then it is no longer ours to
    /// judge; the view has it as it is).
    async fn release(&mut self, misfit: OwnLease) -> Result<(), LeaseError> {
        let key = subnet_key(&self.req.prefix, &misfit.subnet);
        let cond = Compare::mod_revision(key.as_str(), CompareOp::Equal, misfit.mod_revision);
        let delete = TxnOp::delete(key.as_str(), None);
        let deleted = self
            .guarded(&key, cond, delete, |v, rev| v.learned_delete(&key, rev))
            .await?;
        if deleted {
            let cfg = self.view.lock().config().clone();
            tracing::warn!(
                subnet = %misfit.subnet, key, network = %cfg.network,
                subnet_len = cfg.subnet_len, subnet_min = %cfg.subnet_min,
                subnet_max = %cfg.subnet_max,
                "released our lease: it does not fit the network config any more"
            );
            self.released.push(misfit.subnet);
        }
        Ok(())
    }

    /// Re-attaches our existing lease `own` to our etcd lease, unless it changed meanwhile.
    /// Returns whether it is ours now.
    async fn reuse(&mut self, own: &OwnLease) -> Result<bool, LeaseError> {
        let key = subnet_key(&self.req.prefix, &own.subnet);
        let cond = Compare::mod_revision(key.as_str(), CompareOp::Equal, own.mod_revision);
        if !self.put_if(&key, cond).await? {
            return Ok(false);
        }
        if own.lease_id != 0 && own.lease_id != self.lease_id {
            // The key now hangs on our new lease; the old one holds nothing of ours.
            let _ = self.client.lease_revoke(own.lease_id).await;
        }
        Ok(true)
    }

    /// Creates the key of `subnet` unless it exists. Returns whether it is ours now.
    async fn create(&mut self, subnet: Ipv4Net) -> Result<bool, LeaseError> {
        let key = subnet_key(&self.req.prefix, &subnet);
        let cond = Compare::version(key.as_str(), CompareOp::Equal, 0);
        self.put_if(&key, cond).await
    }

    /// Puts our value under `key` on our etcd lease if `cond` holds; the view learns the put.
    async fn put_if(&mut self, key: &str, cond: Compare) -> Result<bool, LeaseError> {
        let put = TxnOp::put(
            key,
            self.value.clone(),
            Some(PutOptions::new().with_lease(self.lease_id)),
        );
        let (value, lease_id) = (self.value.clone(), self.lease_id);
        // What our own successful put looks like in the view.
        let learn = |v: &mut LeaseView, rev: i64| {
            v.learned_put(KeyValue {
                key,
                value: value.as_bytes(),
                create_revision: rev,
                mod_revision: rev,
                lease: lease_id,
            })
        };
        self.guarded(key, cond, put, learn).await
    }

    /// Runs `Txn If(cond) Then(then) Else(Get(key))` and tells the view what it learned: on
    /// success `learned(revision)` (what `then` did), on failure the key as it is now.
    async fn guarded(
        &mut self,
        key: &str,
        cond: Compare,
        then: TxnOp,
        learned: impl FnOnce(&mut LeaseView, i64),
    ) -> Result<bool, LeaseError> {
        let txn = Txn::new()
            .when([cond])
            .and_then([then])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client.txn(txn).await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut v = self.view.lock();
        if resp.succeeded() {
            learned(&mut v, rev);
            return Ok(true);
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        match current.as_ref().and_then(|g| g.kvs().first()) {
            // Learned after an await: ignored if the watch already applied it (or newer).
            Some(kv) => v.learned_put(KeyValue::from_etcd(key, kv)),
            None => v.learned_delete(key, rev),
        }
        Ok(false)
    }

    fn out_of_subnets(&self) -> LeaseError {
        let cfg = self.view.lock().config().clone();
        LeaseError::OutOfSubnets {
            network: cfg.network,
            min: cfg.subnet_min,
            max: cfg.subnet_max,
            count: cfg.subnet_count(),
        }
    }
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
}
