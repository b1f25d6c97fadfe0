//! `flannel-scale`: the cluster-size simulation (see `flannel_perf::scale`). `scripts/scale` runs
//! it. Writes `perf/results/scale-<timestamp>.{json,md,svg}` (or `--out DIR`).
//!
//! Usage: `flannel-scale [--quick] [--hosts N] [--clients K] [--churn M] [--out DIR] [--bin-dir DIR]`

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use flannel_perf::scale::{self, stats, ScaleOpts};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let num = |name: &str, default: usize| -> Result<usize> {
        value(name).map_or(Ok(default), |v| {
            v.parse().with_context(|| format!("{name} {v}"))
        })
    };
    for a in &args {
        if a.starts_with("--")
            && ![
                "--quick",
                "--hosts",
                "--clients",
                "--churn",
                "--out",
                "--bin-dir",
            ]
            .contains(&a.as_str())
        {
            bail!("unknown flag {a}; usage: flannel-scale [--quick] [--hosts N] [--clients K] [--churn M] [--out DIR] [--bin-dir DIR]");
        }
    }
    let bin_dir = value("--bin-dir").map(PathBuf::from).unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.to_path_buf()))
            .unwrap_or_default()
    });
    let opts = ScaleOpts {
        hosts: num("--hosts", if quick { 500 } else { 5000 })?,
        clients: num("--clients", 32)?,
        churn: num("--churn", if quick { 100 } else { 1000 })?,
        bin_dir,
    };
    let out = PathBuf::from(value("--out").unwrap_or_else(|| "perf/results".into()));
    let report = scale::run(&opts, &mut |line| eprintln!("{line}"))?;
    std::fs::create_dir_all(&out)?;
    let stamp = timestamp();
    let base = out.join(format!("scale-{stamp}"));
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&report.to_json())?,
    )?;
    let md = format!(
        "# flannel-rs scale run {stamp}\n\nCommand: `scripts/scale{}`\n\n{}",
        if quick { " --quick" } else { "" },
        report.to_markdown()
    );
    std::fs::write(base.with_extension("md"), &md)?;
    let svg = stats::histogram_svg(
        &format!(
            "etcd change → table entry latency ({} events)",
            report.churn.count
        ),
        &stats::histogram(&report.churn_samples),
    );
    std::fs::write(base.with_extension("svg"), svg)?;
    println!("{md}");
    println!("written: {}.{{json,md,svg}}", base.display());
    if !(report.distinct && report.complete && report.consistent) {
        bail!(
            "correctness check failed: distinct={} complete={} consistent={}",
            report.distinct,
            report.complete,
            report.consistent
        );
    }
    Ok(())
}

fn timestamp() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y%m%dT%H%M%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if out.is_empty() {
        "unknown".into()
    } else {
        out
    }
}
