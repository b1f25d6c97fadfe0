//! `flannel-dataplane`: forwards flannel's UDP encapsulation (port 8285) between the TUN
//! device and the underlay, one pinned worker per core.
//!
//! Read top-down: this file (flags and the order of startup), then the library
//! `flannel_dataplane` (`src/lib.rs`): `tun_device`, `udp_sockets`, `steering_attach` and
//! `supervise` (the startup steps and the table loop), `packet` (pure IPv4 views, TTL, ICMP
//! builder), `forward` (pure per-packet decisions: wire format, receive checks), `worker` (the
//! per-core loops: `worker::uring` is the hot path, `worker::fallback`), `sys` (the thin
//! syscall layer: TUN, netlink, sockets, threads).
//!
//! What the process does (the TUN device it owns, systemd, offloads, steering) is described
//! in the library's documentation.

#![deny(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Parser;

use flannel_dataplane::handover::{Inherited, Keep, OwnBinary};
use flannel_dataplane::startup::{self, Forwarding, StartOptions};
use flannel_dataplane::supervise::{self, LoopEnd, TableFollower};
use flannel_dataplane::sys;
use flannel_dataplane::tun_device::TunDevice;
use flannel_dataplane::worker::TunReads;
use flannel_dataplane::worker_cpus::{self, CpuList};
use flannel_shared::route_table::RouteSnapshot;
use flannel_shared::sd_notify::Reporter;

#[derive(Parser, Debug)]
#[command(name = "flannel-dataplane", version, about)]
struct Args {
    /// Route table written by flanneld.
    #[arg(
        long,
        env = "FLANNEL_DATAPLANE_ROUTE_TABLE",
        default_value = "/run/flannel/routes"
    )]
    route_table: PathBuf,
    /// Worker threads (one TUN queue, socket pair and ring each). Default: CPUs we may run on.
    #[arg(long, env = "FLANNEL_DATAPLANE_WORKERS")]
    workers: Option<usize>,
    /// TUN device to create.
    #[arg(long, env = "FLANNEL_DATAPLANE_TUN_NAME", default_value = "flannel0")]
    tun_name: String,
    /// Local address for the UDP sockets.
    #[arg(long, env = "FLANNEL_DATAPLANE_BIND", default_value = "0.0.0.0")]
    bind: Ipv4Addr,
    /// UDP port (ours and the peers'). Default: the port in the route table (8285).
    #[arg(long, env = "FLANNEL_DATAPLANE_PORT")]
    port: Option<u16>,
    /// CPUs to pin workers to, in worker order (worker i → the i-th entry, wrapping), e.g.
    /// `0,1` or `1,0`; `none` disables pinning. Default: the CPUs we may run on, ascending.
    /// Two data planes sharing one machine (a namespace testbed) should not pin their busy
    /// workers onto the same core: both hosts put a flow on the same worker index.
    #[arg(long, env = "FLANNEL_DATAPLANE_CPUS", value_parser = worker_cpus::parse_cpus)]
    cpus: Option<CpuList>,
    /// How packets pick a worker: `cpu` (the worker pinned to the CPU the packet is handled
    /// on: TUN steering eBPF + reuseport CBPF; needs pinned workers and CAP_BPF) or `flow`
    /// (a hash of the inner flow for receives, the TUN driver's flow hash for sends).
    #[arg(long, env = "FLANNEL_DATAPLANE_STEERING", value_enum, default_value_t = Steering::Cpu)]
    steering: Steering,
    /// Use the poll + recvmmsg/sendmmsg path even where io_uring works.
    #[arg(long, env = "FLANNEL_DATAPLANE_NO_IO_URING")]
    no_io_uring: bool,
    /// How the io_uring workers read the TUN queues: `ring` (a multishot READ into a
    /// provided-buffer ring, Linux 6.7) or `readiness` (read(2) after a multishot poll).
    /// Default: `ring` where the kernel has it.
    #[arg(long, env = "FLANNEL_DATAPLANE_TUN_READS", value_enum)]
    tun_reads: Option<TunReadsFlag>,
    /// Turn off TUN offloads (IFF_VNET_HDR/TSO), UDP GSO and UDP GRO: one packet per I/O.
    #[arg(long, env = "FLANNEL_DATAPLANE_NO_OFFLOAD")]
    no_offload: bool,
    /// Shared-memory counters file.
    #[arg(
        long,
        env = "FLANNEL_DATAPLANE_STATS",
        default_value = flannel_shared::stats::DEFAULT_PATH
    )]
    stats: PathBuf,
    /// Accept inner source addresses outside the sender's subnet.
    #[arg(long, env = "FLANNEL_DATAPLANE_NO_SPOOF_CHECK")]
    no_spoof_check: bool,
    /// Interfaces peers' datagrams may arrive on, besides the one holding our lease's public IP
    /// (repeatable or comma-separated; a multi-homed host where peers' datagrams come in on
    /// another link). `any` turns the arrival check off. Datagrams from anywhere else (a
    /// container bridge, the TUN device) are dropped as `drop_not_underlay`.
    #[arg(long, env = "FLANNEL_DATAPLANE_UNDERLAY_IFACE", value_delimiter = ',')]
    underlay_iface: Vec<String>,
    /// SO_MARK of the data plane's sockets; flanneld's OUTPUT guard drops every other
    /// datagram to the data-plane port, so only this process can send as a member. Must equal
    /// flanneld's -dataplane-mark; 0: no mark.
    #[arg(long, env = "FLANNEL_DATAPLANE_MARK", default_value_t = flannel_shared::DATAPLANE_MARK,
          value_parser = parse_mark)]
    mark: u32,
    /// The express lane: flannel's encapsulation done in the kernel (TC-BPF on the TUN device's
    /// egress and the underlay's ingress, Linux 6.6, CAP_BPF at start), fed from the same
    /// route table; the io_uring path forwards whatever the lane does not take. Without the
    /// kernel or privileges for it: one log line, and the io_uring path forwards everything.
    #[arg(long, env = "FLANNEL_DATAPLANE_EXPRESS")]
    express: bool,
    /// The express lane's outer UDP source port: `flow` (one per inner flow, 49152–65535, so
    /// receiving NICs spread flows over queues) or `fixed` (the flannel port, as flannel's
    /// sockets send from, for peers or firewalls that need it).
    #[arg(long, env = "FLANNEL_DATAPLANE_EXPRESS_SOURCE_PORT", value_enum, default_value_t = SourcePort::Flow)]
    express_source_port: SourcePort,
    /// Debug logging.
    #[arg(short, long, env = "FLANNEL_DATAPLANE_VERBOSE")]
    verbose: bool,
}

/// A mark in decimal or `0x` hex.
fn parse_mark(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("--mark {s:?}: not a 32-bit number ({e})"))
}

/// `--tun-reads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TunReadsFlag {
    Ring,
    Readiness,
}

/// `--express-source-port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SourcePort {
    Flow,
    Fixed,
}

/// `--steering`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Steering {
    Cpu,
    Flow,
}

fn main() {
    let args = Args::parse();
    let level = if args.verbose { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // First, before any thread exists or any other fd is opened: what systemd or the previous
    // data plane handed over, and where this binary lives (an upgrade may replace it).
    let own_binary = OwnBinary::at_start();
    let inherited = match Inherited::from_env() {
        Ok(i) => i,
        Err(e) => {
            tracing::error!("{e}");
            std::process::exit(1);
        }
    };
    // Under systemd a restart is systemd's: it keeps the sockets and TUN queues in the socket
    // unit and the fd store, and starts the data plane with its full capabilities (an exec
    // here would run without the ones dropped after setup).
    let under_systemd = std::env::var_os("NOTIFY_SOCKET").is_some();
    match run(args, inherited) {
        Ok(Exit::Stopped) => std::process::exit(0),
        Ok(Exit::Handover { with_tun, .. }) if under_systemd => {
            tracing::info!(
                "restart under systemd: exiting; systemd starts the data plane again (Restart=always) with what its fd store and socket unit keep"
            );
            std::process::exit(if with_tun { 0 } else { 1 });
        }
        Ok(Exit::Handover { keep, with_tun }) => {
            let exe = own_binary.path();
            tracing::info!(exe = %exe.display(), with_tun, "exec");
            let err = keep.reexec(&exe, with_tun);
            tracing::error!("restarting in place ({}) failed: {err}", exe.display());
            std::process::exit(1);
        }
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::exit(1);
        }
    }
}

/// How `run` ended.
enum Exit {
    /// Stopped by a signal: exit 0.
    Stopped,
    /// The workers have stopped: start over in this process (exec, same PID and arguments)
    /// with these fds. SIGUSR2: all of them. The TUN device vanished: the sockets only, and
    /// the device is recreated.
    Handover { keep: Keep, with_tun: bool },
}

fn run(args: Args, inherited: Inherited) -> Result<Exit> {
    // Before any thread exists: only the main thread will take SIGTERM/SIGINT/SIGHUP.
    sys::thread::block_term_signals().context("blocking SIGTERM/SIGINT/SIGHUP")?;
    let sd = Reporter::from_env();

    let Some((reader, snap)) = supervise::wait_for_table(&args.route_table, &sd) else {
        tracing::info!("stopped before the route table appeared");
        sd.stopping("stopped before the route table appeared");
        return Ok(Exit::Stopped);
    };
    sd.status("route table found: setting up the TUN device and the workers");
    let Forwarding {
        mut tun,
        workers,
        mut arrival,
        nworkers,
        io_path,
        keep,
        express,
    } = startup::start_forwarding(&start_options(&args), &snap, inherited, &sd)?;
    let forwarding = |tun: &TunDevice, snap: &RouteSnapshot| {
        format!(
            "forwarding: {nworkers} workers ({io_path:?}), {} dev {}, route table generation {}, {} routes",
            tun.network(),
            tun.name(),
            snap.generation(),
            snap.len()
        )
    };
    sd.ready(&forwarding(&tun, &snap));
    if let Some(w) = sd.watchdog_interval() {
        tracing::info!(every = ?w, "systemd watchdog: pinging from the table loop");
    }

    let mut follower = TableFollower {
        sd: &sd,
        reader,
        snap,
        tun: &mut tun,
        arrival: &mut arrival,
        express,
    };
    let end = follower.run(&workers, forwarding);
    // The lane's last counts; dropping it detaches its programs (the workers still forward).
    if let Some(lane) = follower.express.take() {
        lane.finish();
    }
    match end {
        LoopEnd::Stop => workers.stop(None)?,
        LoopEnd::WorkerEnded(i) => workers.stop(Some(i))?,
        LoopEnd::Handover => {
            // A worker that failed to stop cleanly still hands over: its fds are kept here.
            if let Err(e) = workers.stop(None) {
                tracing::warn!("stopping the workers for the hand-over: {e:#}");
            }
            return Ok(Exit::Handover {
                keep,
                with_tun: true,
            });
        }
        LoopEnd::TunGone => {
            tracing::error!(
                tun = %args.tun_name,
                "the TUN device was deleted under the data plane: restarting in place to recreate it"
            );
            sd.status("TUN device deleted: restarting in place to recreate it");
            if let Err(e) = workers.stop(None) {
                tracing::warn!("stopping the workers of the deleted device: {e:#}");
            }
            return Ok(Exit::Handover {
                keep,
                with_tun: false,
            });
        }
    }
    Ok(Exit::Stopped)
}

/// The flags' part in startup.
fn start_options(args: &Args) -> StartOptions<'_> {
    StartOptions {
        route_table: &args.route_table,
        workers: args.workers,
        tun_name: &args.tun_name,
        bind: args.bind,
        port: args.port,
        cpus: args.cpus.as_ref(),
        cpu_local_steering: args.steering == Steering::Cpu,
        no_io_uring: args.no_io_uring,
        tun_reads: args.tun_reads.map(|t| match t {
            TunReadsFlag::Ring => TunReads::Ring,
            TunReadsFlag::Readiness => TunReads::Readiness,
        }),
        no_offload: args.no_offload,
        stats: &args.stats,
        spoof_check: !args.no_spoof_check,
        underlay_iface: &args.underlay_iface,
        mark: args.mark,
        express: args
            .express
            .then_some(args.express_source_port == SourcePort::Fixed),
    }
}
