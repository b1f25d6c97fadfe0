//! The demo `scripts/demo` runs, end to end, as CI sees it: it must finish with packets across
//! and a summary. Root only (skips otherwise, fails under CI).

use flannel_perf::testbed::etcd::Etcd;
use flannel_perf::testbed::{bins, have, is_root, require};

#[test]
fn demo_runs_to_a_summary() {
    if !require("root (network namespaces, TUN)", is_root())
        || !require(
            "etcd, iperf3, ping installed",
            Etcd::available() && have("iperf3") && have("ping"),
        )
    {
        return;
    }
    let bin_dir = bins("flanneld").parent().unwrap().to_path_buf();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flannel-demo"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("[8/8] flannelctl stats"), "{text}");
    // The ping step passes only when every echo request was answered (`Cluster::ping`); the
    // demo prints ping's rtt line, not its loss line, so check the step's verdict and the RTTs.
    assert!(
        text.lines()
            .any(|l| l.starts_with("[6/8] ping container 1 → container 2 ... ok (")),
        "ping step did not pass:\n{text}"
    );
    let [min, avg, max, _] =
        rtts(&text).unwrap_or_else(|| panic!("no rtt min/avg/max/mdev line:\n{text}"));
    assert!((min..=max).contains(&avg) && max > 0.0, "{text}");
    assert!(
        text.contains("Summary") && text.contains("iperf3 TCP 1 stream:"),
        "{text}"
    );
    assert!(text.contains("Tearing down"), "{text}");
}

/// The four numbers of ping's `rtt min/avg/max/mdev = A/B/C/D ms` line, if `text` has one.
fn rtts(text: &str) -> Option<[f64; 4]> {
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("rtt min/avg/max/mdev = "))?;
    let nums: Vec<f64> = line
        .strip_suffix(" ms")?
        .split('/')
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    nums.try_into().ok()
}
