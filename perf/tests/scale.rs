//! The scale simulation's quick mode, asserting correctness only (never speed): on a 3-member
//! etcd cluster whose leader is killed half-way, every simulated host got a distinct subnet and
//! etcd holds exactly one key per host; every renewal succeeded; flanneld's table is complete
//! after a cold start and equals etcd after churn. Real etcd on loopback; no root.

use flannel_perf::scale::{run, ScaleOpts};
use flannel_perf::testbed::etcd::Etcd;
use flannel_perf::testbed::{bins, require};

#[test]
fn quick_scale_run_is_distinct_complete_and_consistent() {
    if !require("etcd and etcdctl installed", Etcd::available()) {
        return;
    }
    let opts = ScaleOpts {
        hosts: 400,
        sizes: vec![150],
        clients: 8,
        members: 3,
        kill_member: true,
        churn: 60,
        renew: true,
        bin_dir: bins("flanneld").parent().unwrap().to_path_buf(),
    };
    let r = run(&opts, &mut |l| eprintln!("{l}")).unwrap();
    for a in r.scaling.iter().chain([&r.main]) {
        assert!(a.distinct, "{} hosts: all subnets distinct", a.hosts);
        assert!(
            a.complete,
            "{} hosts: etcd holds exactly one key per host",
            a.hosts
        );
        let killed = a.member_killed.as_deref().expect("a member was killed");
        assert!(killed.contains("rejoined"), "{killed}");
        assert_eq!(a.latency.count, a.hosts);
    }
    assert_eq!(r.scaling.len(), 1);
    let renewals = r.renewals.as_ref().expect("renewal phase ran");
    assert_eq!((renewals.count, renewals.missed), (400, 0));
    assert!(renewals.keys_kept);
    assert!(
        renewals.etcd_requests >= 400,
        "etcd counted {} requests for 400 renewals",
        renewals.etcd_requests
    );
    assert_eq!(
        r.table_routes,
        400 - 30 + 30 + 1,
        "table = etcd after churn (plus flanneld's own)"
    );
    assert!(r.consistent, "table equals etcd after churn");
    assert_eq!(r.churn.count, 60);
    assert!(r.correct());
    // The /8 of /24s: 65,536 entries per buffer, two buffers, a header page.
    assert_eq!(
        r.table_file_bytes,
        flannel_shared::route_table::table_file_size(65536)
    );
}
