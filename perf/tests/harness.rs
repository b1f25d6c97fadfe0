//! The perf harness without benchmarking: the `flannel-perf` binary's CLI (no testbed is built:
//! every case here fails or exits before the root check), and the pure pipeline through the
//! public API — captured iperf3 and ping outputs → a run → Markdown, SVG and JSON files.

use std::collections::BTreeMap;
use std::process::Command;

use flannel_perf::harness::metric::METRICS;
use flannel_perf::harness::model::{Machine, Run, Sample, Testbed, VariantResult};
use flannel_perf::harness::{bench, iperf, markdown, ping, svg};

fn perf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flannel-perf"))
}

#[test]
fn help_lists_the_flags() {
    let out = perf().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--quick",
        "--repeats",
        "--out",
        "--only",
        "--workers",
        "--seconds",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
}

#[test]
fn bad_arguments_fail_before_building_anything() {
    let out = perf().args(["--only", "ours,nonsense"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown variant \"nonsense\""), "{err}");
    assert!(err.contains("ours-no-io-uring"), "{err}");

    let out = perf().args(["--repeats", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--repeats must be at least 1"));
}

#[test]
fn captured_outputs_become_a_report() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let read =
        |f: &str| std::fs::read_to_string(format!("{dir}/src/harness/testdata/{f}")).unwrap();
    let tcp1 = iperf::parse_tcp(&read("iperf3_tcp1.json")).unwrap();
    let tcp4 = iperf::parse_tcp(&read("iperf3_tcp4.json")).unwrap();
    let udp = iperf::parse_udp(&read("iperf3_udp64.json")).unwrap();
    let p = ping::parse(&read("ping_ok.txt")).unwrap();

    let mut v = VariantResult::new("bare", "bare underlay", "host to host");
    let mut s = Sample {
        repeat: 1,
        ..Default::default()
    };
    s.metrics.insert("tcp1_gbps".into(), tcp1.gbit_per_s());
    s.metrics.insert("tcp4_gbps".into(), tcp4.gbit_per_s());
    s.metrics.insert("udp64_kpps".into(), udp.pps / 1e3);
    s.metrics.insert("udp64_loss_pct".into(), udp.loss_percent);
    s.metrics
        .insert("rtt_median_ms".into(), p.median_ms().unwrap());
    s.udp.push(udp);
    s.ping = Some(p);
    v.samples.push(s);
    v.summarize();
    let run = Run {
        started_utc: "2026-11-27T18:59:40Z".into(),
        finished_utc: "2026-11-27T19:00:00Z".into(),
        command: "scripts/perf --quick".into(),
        quick: true,
        repeats: 1,
        test_seconds: 1,
        ping_count: 10,
        machine: Machine::default(),
        copy_cost: None,
        testbed: Testbed {
            underlay_mtu: 1500,
            ours_mtu: 1472,
            vxlan_mtu: 1450,
            ..Default::default()
        },
        variants: vec![v],
    };
    assert!(METRICS.iter().any(|m| m.key == "tcp1_gbps"));

    let md = markdown::render(&run, "chart.svg");
    assert!(md.contains("| metric | bare underlay |"), "{md}");
    assert!(md.contains("| TCP 1 stream (Gbit/s) | 5.40 |"), "{md}");
    assert!(md.contains("| TCP 4 streams (Gbit/s) | 10.6 |"), "{md}");
    assert!(md.contains("| UDP 64 B received (kpps) | 25.2 |"), "{md}");
    assert!(md.contains("| UDP 64 B loss (%) | 45.4 |"), "{md}");
    assert!(md.contains("| ping RTT median (ms) | 0.0295 |"), "{md}");
    let chart = svg::render(&run);
    assert!(chart.contains("<title>bare underlay: TCP 4 streams 10.6 Gbit/s</title>"));

    let out = tempfile::tempdir().unwrap();
    let files = bench::write_outputs(&run, out.path(), "20261127T185940Z").unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.json).unwrap()).unwrap();
    let sample = &json["variants"][0]["samples"][0];
    assert_eq!(sample["udp"][0]["received"], 25_268);
    assert_eq!(sample["ping"]["rtts_ms"].as_array().unwrap().len(), 10);
    let summary: BTreeMap<String, serde_json::Value> =
        serde_json::from_value(json["variants"][0]["summary"].clone()).unwrap();
    assert_eq!(summary["tcp1_gbps"]["n"], 1);
    assert!(std::fs::read_to_string(&files.latest_markdown)
        .unwrap()
        .contains("(latest.svg)"));
}
