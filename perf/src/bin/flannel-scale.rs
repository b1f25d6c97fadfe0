//! `flannel-scale`: the cluster-size simulation (see `flannel_perf::scale`). `scripts/scale` runs
//! it. Writes `perf/results/scale-<timestamp>.{json,md,svg}` (or `--out DIR`).
//!
//! Usage: `flannel-scale [--quick] [--hosts N] [--clients K] [--churn M] [--out DIR] [--bin-dir DIR]`
//! (`--help` explains each).

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use flannel_perf::scale::{self, stats, ScaleOpts};

/// Cluster-size simulation: N simulated hosts lease subnets from one real etcd through
/// flanneld's lease code, one flanneld builds its shared-memory table, then hosts churn.
#[derive(Parser, Debug)]
#[command(name = "flannel-scale", version)]
struct Args {
    /// Short run: 500 hosts and 100 churn events (unless given below).
    #[arg(long)]
    quick: bool,
    /// Simulated hosts (default 5000, or 500 with --quick).
    #[arg(long)]
    hosts: Option<usize>,
    /// Concurrent etcd clients the hosts share.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Churn events (a host leaves or joins) for the change → table latency (default 1000,
    /// or 100 with --quick).
    #[arg(long)]
    churn: Option<usize>,
    /// Output directory.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
    /// Directory holding flanneld (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let quick = args.quick;
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.to_path_buf()))
            .unwrap_or_default()
    });
    let opts = ScaleOpts {
        hosts: args.hosts.unwrap_or(if quick { 500 } else { 5000 }),
        clients: args.clients,
        churn: args.churn.unwrap_or(if quick { 100 } else { 1000 }),
        bin_dir,
    };
    // The command as the user typed it (scripts/scale passes its own line).
    let command = std::env::var("FLANNEL_SCALE_COMMAND").unwrap_or_else(|_| {
        std::iter::once("flannel-scale".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ")
    });
    let out = args.out;
    let report = scale::run(&opts, &mut |line| eprintln!("{line}"))?;
    std::fs::create_dir_all(&out)?;
    let stamp = timestamp();
    let base = out.join(format!("scale-{stamp}"));
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&report.to_json())?,
    )?;
    let md = format!(
        "# flannel-rs scale run {stamp}\n\nCommand: `{command}`\n\n{}",
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
