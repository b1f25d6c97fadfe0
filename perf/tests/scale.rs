//! The scale simulation's quick mode, asserting correctness only (never speed): every simulated
//! host got a distinct subnet, all are in etcd, flanneld's table is complete after a cold start
//! and equals etcd after churn. Real etcd on loopback; no root.

use flannel_perf::scale::{run, ScaleOpts};
use flannel_perf::testbed::etcd::Etcd;
use flannel_perf::testbed::{bins, require};

#[test]
fn quick_scale_run_is_distinct_complete_and_consistent() {
    if !require("etcd and etcdctl installed", Etcd::available()) {
        return;
    }
    let opts = ScaleOpts {
        hosts: 500,
        clients: 16,
        churn: 60,
        bin_dir: bins("flanneld").parent().unwrap().to_path_buf(),
    };
    let r = run(&opts, &mut |l| eprintln!("{l}")).unwrap();
    assert!(r.distinct, "all 500 subnets distinct");
    assert!(r.complete, "all 500 leases in etcd");
    assert_eq!(
        r.table_routes,
        500 - 30 + 30 + 1,
        "table = etcd after churn (plus flanneld's own)"
    );
    assert!(r.consistent, "table equals etcd after churn");
    assert_eq!(r.churn.count, 60);
    // The /8 of /24s: 65,536 entries per buffer, two buffers, a header page.
    assert_eq!(
        r.table_file_bytes,
        flannel_shared::route_table::table_file_size(65536)
    );
}
