//! `flannel-perf`: the perf harness (run it through `scripts/perf`, which builds the release
//! binaries first). Must run as root: it builds a namespace testbed with a real etcd and our
//! real `flanneld` and `flannel-dataplane`, then measures ours (default, `--no-offload`,
//! `--no-io-uring`, `--steering=flow`), kernel VXLAN and the bare underlay side by side, N
//! repeats (every repeat's figure is kept and reported, with where the TCP tests' threads ran
//! and a paced UDP search in the first repeats), and writes
//! `perf/results/<UTC stamp>.{json,md,svg}` plus `latest.md` / `latest.svg`.
//! See `flannel_perf::harness` for what is measured and how.
//!
//! Ctrl-C or SIGTERM stops the run at the next check; the testbed is torn down either way.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use clap::Parser;

use flannel_perf::harness::bench::{self, Options, INTERRUPTED};

#[derive(Parser, Debug)]
#[command(
    name = "flannel-perf",
    version,
    about = "Overlay benchmark: ours vs kernel VXLAN vs bare underlay on a namespace testbed (root)"
)]
struct Args {
    /// Short run (1 repeat, 2 s per iperf3 test; under 2 minutes in total).
    #[arg(long)]
    quick: bool,
    /// Repeats of the whole variant sequence (default 3, or 1 with --quick).
    #[arg(long)]
    repeats: Option<usize>,
    /// Seconds per iperf3 test (default 5, or 2 with --quick).
    #[arg(long)]
    seconds: Option<u32>,
    /// Pings per RTT measurement (at 10 ms intervals).
    #[arg(long, default_value_t = 50)]
    pings: u32,
    /// Output directory.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
    /// Directory holding flanneld and flannel-dataplane (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Only these variants (comma-separated ids: ours, ours-express, ours-no-offload, ours-no-io-uring,
    /// ours-tun-readiness, ours-flow-steering, vxlan, bare).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// `--workers` for flannel-dataplane (default: its own, one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Also profile ours, ours --express, kernel VXLAN and bare in the first repeat: a TCP 1-stream test under
    /// `perf record -a` (CPU per GB by category) and a ping run under `perf stat -a` (context
    /// switches and syscalls per round trip). Needs `perf`.
    #[arg(long)]
    profile: bool,
    /// Run the paced UDP search (highest rate with ≤ 0.1 % loss; 5 probes of 1 s per payload
    /// size and variant) in the first N repeats; 0 disables it.
    #[arg(long, default_value_t = 3, value_name = "N")]
    udp_search_repeats: usize,
}

fn install_signal_thread() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = int.recv() => {},
                    _ = term.recv() => {},
                }
                if !INTERRUPTED.swap(true, Ordering::Relaxed) {
                    eprintln!("\ninterrupted: stopping and tearing down the testbed ...");
                }
            }
        });
    });
}

fn run(args: Args) -> Result<bool> {
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()
            .context("locating flannel-perf")?
            .parent()
            .context("flannel-perf has no directory")?
            .to_path_buf(),
    };
    if let Some(only) = &args.only {
        let known = bench::variant_ids();
        for v in only {
            if !known.contains(&v.as_str()) {
                bail!("unknown variant {v:?}; known: {}", known.join(", "));
            }
        }
    }
    let repeats = args.repeats.unwrap_or(if args.quick { 1 } else { 3 });
    if repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let opts = Options {
        quick: args.quick,
        repeats,
        test_seconds: args
            .seconds
            .unwrap_or(if args.quick { 2 } else { 5 })
            .max(1),
        ping_count: args.pings.max(1),
        out_dir: args.out,
        bin_dir,
        only: args.only,
        workers: args.workers,
        profile: args.profile,
        udp_search_repeats: args.udp_search_repeats,
        command: std::env::var("FLANNEL_PERF_COMMAND").unwrap_or_else(|_| {
            let mut a: Vec<String> = std::env::args().collect();
            a[0] = "flannel-perf".into();
            a.join(" ")
        }),
    };
    bench::preflight(&opts.bin_dir, opts.profile)?;
    install_signal_thread();
    let started = std::time::Instant::now();
    let (run, outputs) = bench::run(opts)?;
    eprintln!("==> done in {:.0} s", started.elapsed().as_secs_f64());
    print!(
        "{}",
        flannel_perf::harness::markdown::render(&run, "latest.svg")
    );
    bench::print_outputs(&outputs, std::io::stderr())?;
    let errors: usize = run.variants.iter().map(|v| v.errors().count()).sum();
    if errors > 0 {
        eprintln!("==> {errors} measurement error(s); see \"Not measured / errors\" in the report");
    }
    Ok(errors == 0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            if INTERRUPTED.load(Ordering::Relaxed) {
                eprintln!("flannel-perf: interrupted; testbed torn down, no results written");
                ExitCode::from(130)
            } else {
                eprintln!("flannel-perf: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}
