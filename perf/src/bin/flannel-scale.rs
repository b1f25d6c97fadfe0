//! `flannel-scale`: the cluster-size simulation (see `flannel_perf::scale`). `scripts/scale` runs
//! it. Writes `perf/results/scale-<timestamp>.{json,md,svg}` (or `--out DIR`).
//!
//! Usage: `flannel-scale [--quick] [--hosts N] [--sizes A,B] [--clients K] [--members M]
//! [--no-kill] [--no-renew] [--churn C] [--out DIR] [--bin-dir DIR]` (`--help` explains each).
//! The `.svg` is the scaling chart (total acquisition time and acquire p99 against N); the
//! churn latency histogram is `-churn.svg`.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use flannel_perf::report::latency::histogram;
use flannel_perf::scale::{self, charts, ScaleOpts};

/// Cluster-size simulation: N simulated hosts lease subnets from a real etcd cluster through
/// flanneld's lease code (one etcd member killed half-way), renew them, one flanneld builds its
/// shared-memory table, then hosts churn.
#[derive(Parser, Debug)]
#[command(name = "flannel-scale", version)]
struct Args {
    /// Short run: 500 hosts, no scaling points, 100 churn events (unless given below).
    #[arg(long)]
    quick: bool,
    /// Simulated hosts in the main run, 1..=65536 (default 65536, or 500 with --quick).
    #[arg(long)]
    hosts: Option<usize>,
    /// Extra acquisition-only runs for the scaling chart, each on a fresh cluster (default
    /// 5000,20000; none with --quick).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// etcd clients the hosts are spread over, each with its own lease view and watch.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// etcd cluster members (odd).
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Do not kill the etcd leader half-way through each acquisition.
    #[arg(long)]
    no_kill: bool,
    /// Skip the renewal phase.
    #[arg(long)]
    no_renew: bool,
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
        hosts: args
            .hosts
            .unwrap_or(if quick { 500 } else { scale::MAX_HOSTS }),
        sizes: args
            .sizes
            .unwrap_or_else(|| if quick { vec![] } else { vec![5000, 20000] }),
        clients: args.clients,
        members: args.members,
        kill_member: !args.no_kill && args.members >= 3,
        renew: !args.no_renew,
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
    let chart = charts::scaling_svg(
        &format!(
            "acquisition vs cluster size ({}-member etcd, {} clients)",
            report.opts.members, report.opts.clients
        ),
        &report.points(),
        100.0,
    );
    std::fs::write(base.with_extension("svg"), chart)?;
    let svg = charts::histogram_svg(
        &format!(
            "etcd change → table entry latency ({} events)",
            report.churn.count
        ),
        &histogram(&report.churn_samples),
    );
    std::fs::write(out.join(format!("scale-{stamp}-churn.svg")), svg)?;
    println!("{md}");
    println!("written: {}.{{json,md,svg}} and -churn.svg", base.display());
    if !report.correct() {
        bail!("correctness check failed: see the table above (**NO**)");
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
