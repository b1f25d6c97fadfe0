//! Many hosts acquiring at once through the same lease code flanneld uses: all distinct, and one
//! more than fits gets "out of subnets". Real etcd, no root.

use std::net::Ipv4Addr;

use etcd_client::Client;
use flannel_control::etcd::{connect_with_retry, EtcdOptions};
use flannel_control::lease::acquire::{acquire, HeldLease, LeaseError, LeaseRequest};
use flannel_control::lease::view::{LeaseView, SharedLeaseView};
use flannel_control::lease::watch::list_into;
use flannel_perf::testbed::etcd::Etcd;
use flannel_shared::config::NetworkConfig;

const PREFIX: &str = "/coreos.com/network";

/// An acquisition by a host without a lease watch: one listing into a fresh view, then
/// [`acquire`].
async fn acquire_listing_once(
    client: &mut Client,
    cfg: &NetworkConfig,
    req: &LeaseRequest,
) -> Result<HeldLease, LeaseError> {
    let view = SharedLeaseView::new(LeaseView::without_routes(&req.prefix, cfg.clone()));
    list_into(client, &view, |_| {}).await?;
    acquire(client, req, &view).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_acquisitions_are_distinct_and_the_51st_is_out_of_subnets() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    // 10.1.0.0/22 in /28s from 10.1.0.16 to 10.1.3.32: exactly 50 subnets.
    let cfg =
        NetworkConfig::parse(r#"{"Network":"10.1.0.0/22","SubnetLen":28,"SubnetMax":"10.1.3.32"}"#)
            .unwrap();
    assert_eq!(cfg.subnet_count(), 50);
    let opts = EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        ..Default::default()
    };
    let mut tasks = Vec::new();
    for i in 0..50u8 {
        let opts = opts.clone();
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = connect_with_retry(&opts).await.unwrap();
            let req = LeaseRequest {
                prefix: PREFIX.into(),
                public_ip: Ipv4Addr::new(198, 18, 1, i + 1),
                ttl_secs: 600,
                previous: None,
            };
            acquire_listing_once(&mut client, &cfg, &req).await
        }));
    }
    let mut subnets = Vec::new();
    for t in tasks {
        let lease = t.await.unwrap().expect("every acquisition succeeds");
        assert!(cfg.fits(&lease.subnet));
        subnets.push(lease.subnet);
    }
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 50, "all distinct");
    let keys = etcd.get_prefix(&format!("{PREFIX}/subnets/")).unwrap();
    assert_eq!(keys.len(), 50);
    // Every value names a distinct public IP, as flannel writes it.
    let mut ips: Vec<&str> = keys.iter().map(|(_, v)| v.as_str()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 50);

    let mut client = connect_with_retry(&opts).await.unwrap();
    let req = LeaseRequest {
        prefix: PREFIX.into(),
        public_ip: Ipv4Addr::new(198, 18, 2, 1),
        ttl_secs: 600,
        previous: None,
    };
    let err = acquire_listing_once(&mut client, &cfg, &req)
        .await
        .unwrap_err();
    assert!(matches!(err, LeaseError::OutOfSubnets { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "out of subnets: all 50 subnets of 10.1.0.0/22 between SubnetMin 10.1.0.16 and SubnetMax 10.1.3.32 are leased"
    );
    // The same host asking again gets its own lease back, not a new one.
    let again = LeaseRequest {
        public_ip: Ipv4Addr::new(198, 18, 1, 7),
        ..req
    };
    let lease = acquire_listing_once(&mut client, &cfg, &again)
        .await
        .unwrap();
    assert_eq!(
        lease.source,
        flannel_control::lease::acquire::LeaseSource::Existing
    );
    assert_eq!(
        etcd.get_prefix(&format!("{PREFIX}/subnets/"))
            .unwrap()
            .len(),
        50
    );
}
