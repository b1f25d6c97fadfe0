//! The systemd units' confinement is enough for both daemons: each runs as its unit runs it,
//! as far as that works without systemd: its own non-root user (a test uid standing in for
//! the unit's `User=`), the unit's `AmbientCapabilities=` and `CapabilityBoundingSet=` (read
//! from `scripts/systemd/`), no_new_privs, `/proc/sys` read-only in a mount namespace
//! (`ProtectKernelTunables=`), and for the data plane a `/dev/net/tun` node as udev leaves it
//! (0666; `DevicePolicy=closed`, `DeviceAllow=/dev/net/tun rw`), though not
//! `LimitMEMLOCK=infinity` (a test runner may not raise the hard limit).
//! A two-host cluster with `-ip-masq` and CPU-local steering (CAP_BPF) comes up, installs its
//! rules and forwards; the data plane set `accept_local` on flannel0 through rtnetlink and kept
//! the kernel's IPv6 out of it, and after setup keeps only CAP_NET_ADMIN, in every thread.
//! Not covered: `SystemCallFilter=` and the other seccomp/namespace settings (no systemd here).

use std::path::PathBuf;
use std::time::Duration;

use flannel_perf::testbed::cluster::{Cluster, ClusterOpts};
use flannel_perf::testbed::{have, require};
use flannel_shared::stats::StatsReader;

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

/// Test uids standing in for the units' `User=flanneld` and `User=flannel-dataplane`.
const FLANNELD_UID: u32 = 64_101;
const DATAPLANE_UID: u32 = 64_102;

/// A unit's single `Key=` value.
fn unit_value(unit: &str, key: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/systemd")
        .join(unit);
    let text = std::fs::read_to_string(&path).unwrap();
    let prefix = format!("{key}=");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("{}: no {key}=", path.display()))
        .to_string()
}

/// The daemon as its unit runs it: in a fresh mount namespace with /proc/sys read-only
/// (ProtectKernelTunables=), for the data plane a private 0666 /dev/net/tun (the node udev
/// makes; the host's here is 0600), then `setpriv` to `uid` with
/// `caps` ambient, inheritable and bounding, and no_new_privs.
fn as_unit_runs_it(uid: u32, caps: &[String], tun: bool) -> Vec<String> {
    let set: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let mut script =
        String::from("mount --bind /proc/sys /proc/sys\nmount -o remount,ro,bind /proc/sys\n");
    if tun {
        script.push_str(
            "mount -t tmpfs -o mode=0755 tmpfs /dev/net\nmknod -m 0666 /dev/net/tun c 10 200\n",
        );
    }
    script.push_str(&format!(
        "exec setpriv --reuid={uid} --regid={uid} \
         --clear-groups --inh-caps=-all{set} --ambient-caps=-all{set} \
         --bounding-set=-all{set} --no-new-privs -- \"$@\"\n"
    ));
    [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "--",
        "sh",
        "-ec",
    ]
    .into_iter()
    .map(String::from)
    .chain([script, "sh".into()])
    .collect()
}

/// A `/proc/<pid>/status` line's value (`Uid:`, `NoNewPrivs:` ...).
fn status_line<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("{name} missing"))
        .trim()
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
fn daemons_work_as_their_units_run_them_and_the_data_plane_drops_to_net_admin() {
    let Some(mut opts) = ClusterOpts::for_test() else {
        return;
    };
    if !require(
        "setpriv, unshare and iptables installed",
        have("setpriv") && have("unshare") && have("iptables"),
    ) {
        return;
    }
    let (fl_caps, dp_caps) = (
        unit_caps("flanneld.service"),
        unit_caps("flannel-dataplane.service"),
    );
    assert_eq!(fl_caps, ["net_admin", "net_raw"]);
    assert_eq!(dp_caps, ["net_admin", "bpf"]);
    for (unit, caps) in [
        ("flanneld.service", &fl_caps),
        ("flannel-dataplane.service", &dp_caps),
    ] {
        let ambient = unit_value(unit, "AmbientCapabilities");
        assert_eq!(
            ambient,
            unit_value(unit, "CapabilityBoundingSet"),
            "{unit}: {caps:?}"
        );
        assert_ne!(unit_value(unit, "User"), "root", "{unit}");
        assert_eq!(unit_value(unit, "ProtectKernelTunables"), "yes", "{unit}");
    }
    opts.flanneld_wrapper = as_unit_runs_it(FLANNELD_UID, &fl_caps, false);
    opts.dataplane_wrapper = as_unit_runs_it(DATAPLANE_UID, &dp_caps, true);
    opts.run_as = Some((FLANNELD_UID, DATAPLANE_UID));
    opts.flanneld_args = vec!["-ip-masq".into()];
    // The express lane too: its programs load with the unit's capabilities, at start.
    opts.dataplane_args = vec!["--express".into()];
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
        assert_eq!(cap_line(&status, "CapAmb:"), mask(&fl_caps), "{status}");
        assert!(
            status_line(&status, "Uid:").starts_with(&FLANNELD_UID.to_string()),
            "{status}"
        );
        assert_eq!(status_line(&status, "NoNewPrivs:"), "1", "{status}");
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
        dp.wait_log("express lane on", SEC * 5);
        let log = dp.log();
        assert!(!log.contains("express lane off"), "{log}");
        // /proc/sys is read-only, yet accept_local is set (rtnetlink) and the kernel sends no
        // IPv6 into flannel0 (no address generated: its router solicitations and MLD reports
        // would be counted as drop_tun_malformed).
        assert!(!log.contains("cannot set accept_local"), "{log}");
        assert!(!log.contains("cannot turn IPv6 off"), "{log}");
        let accept_local =
            h.ns.exec("cat", &["/proc/sys/net/ipv4/conf/flannel0/accept_local"])
                .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&accept_local.stdout).trim(),
            "1",
            "{log}"
        );
        let link = h.ns.ip(&["-d", "link", "show", "dev", "flannel0"]).unwrap();
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(link.contains("addrgenmode none"), "{link}");
        let stats = h.stats_file();
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&stats).unwrap());
        assert_eq!(owner, DATAPLANE_UID, "{}", stats.display());
        // Every thread of the data plane: effective and permitted = CAP_NET_ADMIN only.
        let pid = dp.pid().unwrap();
        // Long enough after the link came up for the kernel's first router solicitation.
        std::thread::sleep(SEC * 3);
        let malformed = StatsReader::open(&stats)
            .unwrap()
            .total("drop_tun_malformed");
        assert_eq!(malformed, 0, "the kernel sent IPv6 into flannel0");
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
            // Ambient, so its restart in place (re-exec) can recreate the device.
            assert_eq!(cap_line(&status, "CapAmb:"), CAP_NET_ADMIN, "{status}");
            assert!(
                status_line(&status, "Uid:").starts_with(&DATAPLANE_UID.to_string()),
                "{status}"
            );
            assert_eq!(status_line(&status, "NoNewPrivs:"), "1", "{status}");
        }
    }
}
