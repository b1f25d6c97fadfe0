//! The systemd units' `CapabilityBoundingSet=` are exactly enough: both daemons run under
//! `setpriv --no-new-privs --bounding-set` with the set their unit names (read from
//! `scripts/systemd/`), and a two-host cluster with `-ip-masq` and CPU-local steering (CAP_BPF)
//! comes up, installs its rules and forwards. After setup the data plane keeps only
//! CAP_NET_ADMIN, in every thread.

use std::path::PathBuf;
use std::time::Duration;

use flannel_perf::testbed::cluster::{Cluster, ClusterOpts};
use flannel_perf::testbed::{have, require};

const SEC: Duration = Duration::from_secs(1);
const CAP_NET_ADMIN: u64 = 1 << 12;

/// The capabilities a unit's `CapabilityBoundingSet=` names, lower case without `CAP_`.
fn unit_caps(unit: &str) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/systemd")
        .join(unit);
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap_or_else(|| panic!("{}: no CapabilityBoundingSet=", path.display()));
    line.split_whitespace()
        .map(|c| c.strip_prefix("CAP_").unwrap_or(c).to_ascii_lowercase())
        .collect()
}

/// `setpriv` limiting the bounding set to `caps` (root keeps only those across exec).
fn setpriv(caps: &[String]) -> Vec<String> {
    let set: String = caps.iter().map(|c| format!(",+{c}")).collect();
    vec![
        "setpriv".into(),
        "--no-new-privs".into(),
        "--bounding-set".into(),
        format!("-all{set}"),
        "--".into(),
    ]
}

/// A capability mask line (`CapEff:`, `CapBnd:` ...) of `/proc/<pid>/task/<tid>/status`.
fn cap_line(status: &str, name: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("{name} missing"))
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// The mask of the named capabilities (only those this test meets).
fn mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| match c.as_str() {
            "net_admin" => CAP_NET_ADMIN,
            "net_raw" => 1 << 13,
            "bpf" => 1 << 39,
            other => panic!("capability {other} not known to this test"),
        })
        .fold(0, |a, b| a | b)
}

#[test]
fn units_capability_sets_are_enough_and_the_data_plane_drops_to_net_admin() {
    let Some(mut opts) = ClusterOpts::for_test() else {
        return;
    };
    if !require(
        "setpriv and iptables installed",
        have("setpriv") && have("iptables"),
    ) {
        return;
    }
    let (fl_caps, dp_caps) = (
        unit_caps("flanneld.service"),
        unit_caps("flannel-dataplane.service"),
    );
    assert_eq!(fl_caps, ["net_admin", "net_raw"]);
    assert_eq!(dp_caps, ["net_admin", "bpf"]);
    opts.flanneld_wrapper = setpriv(&fl_caps);
    opts.dataplane_wrapper = setpriv(&dp_caps);
    opts.flanneld_args = vec!["-ip-masq".into()];
    let mut c = Cluster::new(opts).unwrap();
    c.add_host().unwrap();
    c.add_host().unwrap();
    c.wait_reachable(0, 1, SEC * 10)
        .unwrap_or_else(|e| panic!("{e:#}\n{}{}", c.hosts[0].logs(), c.hosts[1].logs()));
    c.ping(0, 1, 3).unwrap();
    c.ping(1, 0, 3).unwrap();

    for h in &c.hosts {
        // The wrapper took effect: each daemon's bounding set is its unit's.
        let fl = h.flanneld.as_ref().unwrap();
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", fl.pid().unwrap())).unwrap();
        assert_eq!(cap_line(&status, "CapBnd:"), mask(&fl_caps), "{status}");
        // flanneld installed its rules with that set.
        fl.wait_log("masquerade/forward rules installed", SEC * 10);
        let nat = h.ns.exec("iptables", &["-w", "-t", "nat", "-S"]).unwrap();
        assert!(
            String::from_utf8_lossy(&nat.stdout).contains(
                "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG"
            ),
            "{}",
            h.logs()
        );

        let dp = h.dataplane.as_ref().unwrap();
        let log = dp.log();
        assert!(
            log.contains("steering: CPU-local") || log.contains("using flow steering"),
            "{log}"
        );
        assert!(
            !log.contains("CPU-local steering unavailable"),
            "CAP_BPF should be enough for CPU-local steering:\n{log}"
        );
        assert!(
            log.contains("capabilities: kept CAP_NET_ADMIN only"),
            "{log}"
        );
        // Every thread of the data plane: effective and permitted = CAP_NET_ADMIN only.
        let pid = dp.pid().unwrap();
        let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(tasks.len() >= 2, "main thread and workers: {tasks:?}");
        for t in tasks {
            let status = std::fs::read_to_string(t.join("status")).unwrap();
            assert_eq!(cap_line(&status, "CapBnd:"), mask(&dp_caps), "{status}");
            assert_eq!(
                cap_line(&status, "CapEff:"),
                CAP_NET_ADMIN,
                "{}: {status}",
                t.display()
            );
            assert_eq!(
                cap_line(&status, "CapPrm:"),
                CAP_NET_ADMIN,
                "{}: {status}",
                t.display()
            );
        }
    }
}
