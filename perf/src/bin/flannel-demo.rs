//! The demo `scripts/demo` runs: a local etcd and two simulated hosts in network namespaces, each
//! running the real `flanneld` and `flannel-dataplane` with one container; the seed's config
//! `{ "Network": "10.1.0.0/16" }`; leases and routes shown with `flannelctl`; a ping across and a
//! 5 s iperf3; a summary; teardown (or, with `--keep`, the cluster stays up until Ctrl-C).
//!
//! Every step prints its progress; a failure names the step and the logs to read.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flannel_perf::testbed::cluster::{Cluster, ClusterOpts};

struct Steps {
    n: usize,
    total: usize,
}

impl Steps {
    fn run<T>(&mut self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.n += 1;
        print!("[{}/{}] {what} ... ", self.n, self.total);
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let t = Instant::now();
        match f() {
            Ok(v) => {
                println!("ok ({:.1} s)", t.elapsed().as_secs_f64());
                Ok(v)
            }
            Err(e) => {
                println!("FAILED");
                Err(e.context(format!("step {} ({what}) failed", self.n)))
            }
        }
    }
}

/// The flannel-rs demo: a local etcd and two simulated hosts (network namespaces) running the
/// real flanneld and flannel-dataplane, one container each; ping and iperf3 across. Needs root.
#[derive(clap::Parser, Debug)]
#[command(name = "flannel-demo", version)]
struct Args {
    /// Keep the cluster up after the summary, until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// Directory holding flanneld, flannel-dataplane and flannelctl (default: next to this
    /// binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = <Args as clap::Parser>::parse();
    let keep = args.keep;
    let bin_dir = args
        .bin_dir
        .or_else(|| {
            std::env::current_exe()
                .ok()?
                .parent()
                .map(Path::to_path_buf)
        })
        .expect("binary directory");
    let mut cluster = None;
    let result = demo(&bin_dir, keep, &mut cluster);
    if let Err(e) = result {
        eprintln!("\ndemo failed: {e:#}");
        if let Some(c) = cluster.as_mut() {
            c.keep_dir();
            eprintln!(
                "logs kept in {} (host*/flanneld.log, host*/dataplane.log, etcd log in {})",
                c.dir().display(),
                c.etcd.log_path().display()
            );
        }
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

fn demo(bin_dir: &Path, keep: bool, slot: &mut Option<Cluster>) -> Result<()> {
    for b in [
        "flanneld",
        "flannel-dataplane",
        "flannelctl",
        "flannel-loadgen",
    ] {
        if !bin_dir.join(b).is_file() {
            bail!(
                "{} missing: build with `cargo build --release --workspace`",
                bin_dir.join(b).display()
            );
        }
    }
    let mut s = Steps { n: 0, total: 8 };
    let opts = ClusterOpts::new(bin_dir);
    let cluster = s.run(
        "underlay switch 198.18.0.254/24 + etcd, config { \"Network\": \"10.1.0.0/16\" }",
        || Cluster::new(opts),
    )?;
    let c = slot.insert(cluster);
    for h in 1..=2 {
        s.run(&format!("host {h}: flanneld leases a subnet, flannel-dataplane brings up flannel0, container on cbr0"), || {
            c.add_host().map(|_| ())
        })?;
    }
    let ctl = |c: &Cluster, args: &[&str]| -> Result<String> {
        let h = &c.hosts[0];
        let out =
            h.ns.command(bin_dir.join("flannelctl"))
                .arg(format!("--etcd-endpoints={}", c.etcd.endpoint()))
                .arg(format!("--route-table={}", h.route_table().display()))
                .arg(format!("--stats={}", h.stats_file().display()))
                .args(args)
                .output()?;
        if !out.status.success() {
            bail!(
                "flannelctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let leases = s.run("flannelctl leases (from etcd)", || ctl(c, &["leases"]))?;
    print!("{}", indent(&leases));
    let routes = s.run("flannelctl routes (host 1's shared-memory table)", || {
        ctl(c, &["routes"])
    })?;
    print!("{}", indent(&routes));
    // Host 1 learns host 2's lease through its etcd watch within milliseconds of the lease;
    // wait for that, then every one of the 5 echo requests must be answered.
    let ping = s.run("ping container 1 → container 2", || {
        c.wait_reachable(0, 1, Duration::from_secs(10))?;
        c.ping(0, 1, 5)
    })?;
    let rtt = ping
        .lines()
        .find(|l| l.contains("min/avg"))
        .unwrap_or("")
        .trim()
        .to_string();
    println!("      {rtt}");
    let gbps = s.run("iperf3 TCP, 5 s, container 1 → container 2", || iperf3(c))?;
    println!("      {gbps:.2} Gbit/s");
    let stats = s.run("flannelctl stats (host 1's data plane)", || {
        ctl(c, &["stats"])
    })?;
    let interesting: String = stats
        .lines()
        .filter(|l| {
            l.starts_with("COUNTER")
                || l.starts_with("tun_rx_packets")
                || l.starts_with("udp_tx_packets")
                || l.starts_with("udp_rx_packets")
                || l.starts_with("batches")
                || l.starts_with("pid")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    print!("{}", indent(&interesting));

    println!("\nSummary");
    for h in &c.hosts {
        let (gw, len) = h.subnet.unwrap_or((std::net::Ipv4Addr::UNSPECIFIED, 0));
        println!(
            "  host {}  underlay {}  subnet {}/{}  container {}  mtu {}",
            h.index,
            h.underlay_ip,
            std::net::Ipv4Addr::from(u32::from(gw).saturating_sub(1)),
            len,
            h.container_ip(),
            h.mtu
        );
    }
    println!("  ping: {rtt}");
    println!("  iperf3 TCP 1 stream: {gbps:.2} Gbit/s");
    if keep {
        let h1 = &c.hosts[0];
        println!("\nThe cluster stays up until you press Ctrl-C. Try:");
        println!(
            "  ip netns exec {} ping {}",
            h1.container().name(),
            c.hosts[1].container_ip()
        );
        println!(
            "  ip netns exec {} {} --etcd-endpoints={} --route-table={} --stats={} leases|routes|stats",
            h1.ns.name(),
            bin_dir.join("flannelctl").display(),
            c.etcd.endpoint(),
            h1.route_table().display(),
            h1.stats_file().display()
        );
        println!(
            "  logs: {}/host*/{{flanneld,dataplane}}.log",
            c.dir().display()
        );
        wait_for_ctrl_c();
    }
    println!("\nTearing down (daemons by PID, then namespaces).");
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("      {l}\n")).collect()
}

fn iperf3(c: &Cluster) -> Result<f64> {
    let server = c.hosts[1]
        .container()
        .command("iperf3")
        .args(["-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 (apt-get install iperf3)")?;
    let dst = c.hosts[1].container_ip().to_string();
    let mut out = None;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(200));
        let o = c.hosts[0]
            .container()
            .command("iperf3")
            .args(["-c", &dst, "-t", "5", "-J"])
            .output()?;
        if o.status.success() {
            out = Some(o);
            break;
        }
    }
    let mut server = server;
    flannel_perf::testbed::process::kill_and_reap(&mut server);
    let out = out.context("iperf3 client never connected")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tcp = flannel_perf::harness::iperf::parse_tcp(&text)
        .context("no sum_received in iperf3 output")?;
    Ok(tcp.gbit_per_s())
}

fn wait_for_ctrl_c() {
    // Block SIGINT/SIGTERM and wait for one; then return so Drop tears everything down.
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_ok() {
        let _ = set.wait();
    } else {
        let _ = Command::new("sleep").arg("infinity").status();
    }
}
