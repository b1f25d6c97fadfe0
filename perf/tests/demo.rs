//! The demo `scripts/demo` runs, end to end, as CI sees it: it must finish with packets across
//! and a summary. Root only (skips otherwise, fails under CI=true).

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
    assert!(
        text.contains("0% packet loss") || text.contains("rtt min/avg/max"),
        "{text}"
    );
    assert!(
        text.contains("Summary") && text.contains("iperf3 TCP 1 stream:"),
        "{text}"
    );
    assert!(text.contains("Tearing down"), "{text}");
}
