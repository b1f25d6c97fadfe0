//! flanneld's command line as flannel's users type it, run as a process: `-version`, flannel
//! flags we do not implement refused with one line (command line and `FLANNELD_*`), and the
//! interface flags' values never split on commas (flag and environment alike).
//!
//! No root, no etcd: the daemons that get past the flags point at `http://127.0.0.1:1`
//! (refused at once, on loopback) and are stopped once they logged their interface choice.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use flannel_perf::testbed::process::Daemon;

const SEC: Duration = Duration::from_secs(1);

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flanneld"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// A flanneld that will wait for etcd forever: its files in `dir`, its log checked by the caller.
fn waiting_flanneld(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flanneld"));
    c.arg("-etcd-endpoints=http://127.0.0.1:1")
        .arg(format!("-subnet-file={}", dir.join("subnet.env").display()))
        .arg(format!("--route-table={}", dir.join("routes").display()))
        .args(args)
        .env("RUST_LOG", "info");
    for (k, v) in env {
        c.env(k, v);
    }
    Daemon::spawn("flanneld", c, &dir.join("flanneld.log")).unwrap()
}

#[test]
fn version_prints_one_line_to_stderr_like_flannel() {
    for flag in ["-version", "--version"] {
        let o = run(&[flag], &[]);
        assert!(o.status.success(), "{flag}: {o:?}");
        assert!(o.stdout.is_empty(), "{flag}: {o:?}");
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            format!("v{}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn unsupported_flannel_flags_are_refused_with_one_line_and_no_usage() {
    /// (arguments, environment, the one line on stderr)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["--kube-subnet-mgr"],
            &[],
            "flanneld: --kube-subnet-mgr: Kubernetes subnet manager is not supported; use etcd (--etcd-endpoints)",
        ),
        (
            &["-kube-subnet-mgr", "-iface=lo"],
            &[],
            "flanneld: --kube-subnet-mgr: Kubernetes subnet manager is not supported; use etcd (--etcd-endpoints)",
        ),
        (
            &[],
            &[("FLANNELD_KUBE_SUBNET_MGR", "true")],
            "flanneld: FLANNELD_KUBE_SUBNET_MGR=true (--kube-subnet-mgr): Kubernetes subnet manager is not supported; use etcd (--etcd-endpoints)",
        ),
        (
            &["-kube-api-url=https://198.18.0.1:6443"],
            &[],
            "flanneld: --kube-api-url: configures the Kubernetes subnet manager, which is not supported; use etcd (--etcd-endpoints)",
        ),
        (
            &["-kubeconfig-file", "/etc/kubernetes/kubeconfig"],
            &[],
            "flanneld: --kubeconfig-file: configures the Kubernetes subnet manager, which is not supported; use etcd (--etcd-endpoints)",
        ),
        (
            &["-kube-annotation-prefix=example.com"],
            &[],
            "flanneld: --kube-annotation-prefix: configures the Kubernetes subnet manager, which is not supported; use etcd (--etcd-endpoints)",
        ),
        (
            &["-net-config-path=/etc/kube-flannel/net-conf.json"],
            &[],
            "flanneld: --net-config-path: the network config is read from etcd (<etcd-prefix>/config), not from a file; only the Kubernetes subnet manager, which is not supported, reads net-conf.json",
        ),
        (
            &["-set-node-network-unavailable=false"],
            &[],
            "flanneld: --set-node-network-unavailable: sets a Kubernetes node condition; the Kubernetes subnet manager is not supported",
        ),
        (
            &["-ip-blackhole-route"],
            &[],
            "flanneld: --ip-blackhole-route: blackhole routes for this host's subnet are not supported",
        ),
    ];
    for (args, env, want) in cases {
        let o = run(args, env);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?} {env:?}: {err}");
        assert_eq!(err, format!("{want}\n"), "{args:?} {env:?}");
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn iface_regex_with_a_comma_is_one_regex_from_the_flag_and_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    // flannel's own example of a regex that holds a comma; this used to die with "unclosed
    // counted repetition" (the value was split on commas).
    let d = waiting_flanneld(dir.path(), &["-iface-regex=^l{1,2}o$"], &[]);
    d.wait_log("-iface-regex ^l{1,2}o$: matched iface=\"lo\"", SEC * 10);
    drop(d);

    let dir = tempfile::tempdir().unwrap();
    let d = waiting_flanneld(
        dir.path(),
        &[],
        &[("FLANNELD_IFACE_REGEX", "^nomatch{1,2}$,^l{1,2}o$")],
    );
    // One entry (flannel reads one value per variable): this regex matches nothing.
    let log_has = |s: &str| d.log().contains(s);
    let waited = flannel_perf::testbed::wait_for(SEC * 10, || {
        log_has("no interface name or IPv4 address matches").then_some(())
    });
    assert!(waited.is_some(), "{}", d.log());
    assert!(
        d.log()
            .contains("-iface-regex \"^nomatch{1,2}$,^l{1,2}o$\": no interface name"),
        "{}",
        d.log()
    );
}

#[test]
fn iface_values_are_not_split_and_can_reach_picks_the_routed_interface() {
    let o = run(
        &["-etcd-endpoints=http://127.0.0.1:1"],
        &[("FLANNELD_IFACE", "nosuch0,lo")],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("-iface nosuch0,lo: no interface has this name or IPv4 address (the value is not split on commas"),
        "{err}"
    );

    // Every -iface tried in order, then the regexes, then -iface-can-reach.
    let dir = tempfile::tempdir().unwrap();
    let d = waiting_flanneld(
        dir.path(),
        &[
            "-iface=nosuch0",
            "-iface-regex=^nosuch[0-9]{1,2}$",
            "-iface-can-reach=127.0.0.9",
        ],
        &[],
    );
    d.wait_log("-iface-can-reach 127.0.0.9: matched iface=\"lo\"", SEC * 10);
    assert!(
        d.log().contains("-iface nosuch0: no interface"),
        "{}",
        d.log()
    );
}
