//! `flanneld -ip-masq` inside a host namespace: flannel's masquerade and forward rules, exact
//! (MASQUERADE with `--random-fully`: Debian 12's iptables 1.8.9 has it), in their own chains,
//! not duplicated by resyncs, and restored when removed by hand.

use std::time::Duration;

use flannel_perf::testbed::cluster::{Cluster, ClusterOpts};
use flannel_perf::testbed::etcd::Etcd;
use flannel_perf::testbed::{bins, have, is_root, require, wait_for};

fn rules(c: &Cluster, table: &str) -> Vec<String> {
    let out = c.hosts[0]
        .ns
        .exec("iptables", &["-w", "-t", table, "-S"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("FLANNEL"))
        .map(String::from)
        .collect()
}

#[test]
fn masquerade_and_forward_rules_are_exact_idempotent_and_restored() {
    if !require("root (network namespaces, iptables)", is_root())
        || !require(
            "etcd and iptables installed",
            Etcd::available() && have("iptables"),
        )
    {
        return;
    }
    let mut opts = ClusterOpts::new(bins("flanneld").parent().unwrap());
    opts.flanneld_args = vec!["-ip-masq".into(), "-iptables-resync=1".into()];
    let mut c = Cluster::new(opts).unwrap();
    c.add_control_host().unwrap();
    let (gw, len) = c.hosts[0].subnet.unwrap();
    let s = format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(gw) - 1));
    let env = std::fs::read_to_string(c.hosts[0].subnet_file()).unwrap();
    assert!(env.ends_with("FLANNEL_IPMASQ=true\n"), "{env}");

    let want_nat = vec![
        "-N FLANNEL-POSTRTG".to_string(),
        "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG".into(),
        "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN".into(),
        format!("-A FLANNEL-POSTRTG -s {s} -d 10.1.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d {s} -m comment --comment \"flanneld masq\" -j RETURN"),
        format!("-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d {s} -m comment --comment \"flanneld masq\" -j RETURN"),
        "-A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully".into(),
        "-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully".into(),
    ];
    let want_filter = vec![
        "-N FLANNEL-FWD".to_string(),
        "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD".into(),
        "-A FLANNEL-FWD -s 10.1.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT".into(),
        "-A FLANNEL-FWD -d 10.1.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT".into(),
    ];
    let got = wait_for(Duration::from_secs(10), || {
        (rules(&c, "nat") == want_nat && rules(&c, "filter") == want_filter).then_some(())
    });
    assert!(
        got.is_some(),
        "nat:\n{}\nfilter:\n{}\n{}",
        rules(&c, "nat").join("\n"),
        rules(&c, "filter").join("\n"),
        c.hosts[0].logs()
    );
    // Several resyncs later: nothing duplicated.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(rules(&c, "nat"), want_nat);
    assert_eq!(rules(&c, "filter"), want_filter);
    // A rule deleted by hand and the jump removed: both restored by the next resync.
    let ns = &c.hosts[0].ns;
    ns.exec(
        "iptables",
        &["-w", "-t", "nat", "-D", "FLANNEL-POSTRTG", "1"],
    )
    .unwrap();
    ns.exec(
        "iptables",
        &[
            "-w",
            "-t",
            "filter",
            "-D",
            "FORWARD",
            "-m",
            "comment",
            "--comment",
            "flanneld forward",
            "-j",
            "FLANNEL-FWD",
        ],
    )
    .unwrap();
    let restored = wait_for(Duration::from_secs(10), || {
        (rules(&c, "nat") == want_nat && rules(&c, "filter") == want_filter).then_some(())
    });
    assert!(
        restored.is_some(),
        "rules not restored:\n{}",
        rules(&c, "nat").join("\n")
    );
}
