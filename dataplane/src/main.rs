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
//! # Division of labour with `flanneld`
//!
//! The two processes share nothing but the route-table file (`--route-table`, written by
//! flanneld, read here). The data plane OWNS the TUN device: it creates `--tun-name`
//! (default flannel0) with IFF_TUN|IFF_NO_PI|IFF_MULTI_QUEUE, one queue per worker, sets the
//! address to our subnet's network address /32 (e.g. 10.1.15.0/32), the MTU from the table,
//! brings it up and routes `<Network> dev flannel0` (rtnetlink and ioctls in `sys`, no
//! shelling out). It also sets `accept_local=1` on the device: the ICMP net-unreachable it
//! writes back carries the TUN's own address as source, which the kernel would otherwise
//! drop as a martian. The device is not persistent: it goes
//! away with this process, and a restart recreates it. Restarting the data plane therefore
//! never touches flanneld or its lease; restarting flanneld never touches forwarding (the
//! workers keep their last snapshot of the table).
//!
//! At startup the data plane waits (polling, with one clear log line) until the table file
//! exists and has been published. Afterwards it follows the table: routes take effect per
//! batch in the workers; a changed `our_subnet` moves the TUN address, a changed MTU is
//! applied to the device.
//!
//! # systemd (`Type=notify`, [`flannel_shared::sd_notify`])
//!
//! `STATUS=` says what it waits for or does; `READY=1` goes out once the workers forward (the
//! TUN device is configured and every worker runs); with `WatchdogSec=` the main thread's
//! table-following loop sends `WATCHDOG=1` every half of `$WATCHDOG_USEC` (it polls at least
//! that often), and only while it sees every worker thread alive: a stuck loop or a dead worker
//! stops the pings and systemd restarts the data plane. `STOPPING=1` on SIGTERM/SIGINT.
//!
//! # Offloads (probed once at startup, each choice logged once; `--no-offload` forces all off)
//!
//! - TUN: `IFF_VNET_HDR` + `TUNSETOFFLOAD` CSUM|TSO4|TSO6|USO4|USO6, retried without USO
//!   (Linux < 6.2 answers EINVAL); any failure → the device is reopened without vnet header.
//!   The kernel then hands us up to 64 KiB TCP/UDP super-packets; `gso::split` cuts them into
//!   MTU-sized inner IPv4 packets.
//! - UDP GSO (`UDP_SEGMENT`, Linux 4.18): probed with getsockopt; the segments of one
//!   super-packet leave in one sendmsg. A send refused with EIO/EINVAL (a device without
//!   checksum offload) turns it off at run time, logged once; segments then go one by one.
//! - UDP GRO (`UDP_GRO`, Linux 5.0): setsockopt on the receive sockets; failing → off. Merged
//!   datagrams are checked one by one and coalesced (`gro`) into TCP super-packets written to
//!   TUN with a vnet header.
//!
//! On the wire every datagram is still exactly one inner IPv4 packet no larger than the MTU
//! (UDP GSO only batches the sendmsg), so flannel peers interoperate unchanged.
//!
//! # Which worker handles a packet (`--steering`)
//!
//! Default `cpu` (needs pinned workers): a packet goes to the worker pinned to the CPU it is
//! being handled on, so the hand-over is a local wake-up, not a cross-CPU one
//! (`steering` has the programs, `sys::bpf` the maps and attaching).
//! - TUN (packets to send): an eBPF steering program tracks flows. A new flow goes to the
//!   next queue in turn (flows spread evenly); a busy flow stays put (no reordering); a flow
//!   that was idle, whose old worker has drained since, and whose packet is small moves to
//!   the queue of the current CPU (pings, requests: read where they were sent).
//! - UDP (packets received): every worker has a socket in one SO_REUSEPORT group on the
//!   flannel port; a classic BPF program picks the socket of the CPU the datagram arrived
//!   on (the peer's sending CPU on a veth, the RSS CPU on a NIC).
//!
//! `flow`: TUN multi-queue hashes flows onto queues and later sends a flow's packets to the
//! queue that last wrote it; receiving, a classic BPF program picks the socket by a
//! symmetric hash of the INNER flow, so both directions of a flow use the same worker index
//! on both hosts even though host to host it is all one outer 4-tuple. Either way each
//! worker sends from its own ephemeral source port (harmless for flannel peers, and it lets
//! a peer that only hashes the 4-tuple spread too).

#![deny(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Parser;

use flannel_dataplane::supervise::{self, LoopEnd, TableFollower, WorkerPlan, Workers};
use flannel_dataplane::tun_device::TunDevice;
use flannel_dataplane::underlay::ArrivalKeeper;
use flannel_dataplane::worker_cpus::{self, CpuList, WorkerLayout};
use flannel_dataplane::{steering_attach, sys, udp_sockets};
use flannel_shared::route_table::RouteSnapshot;
use flannel_shared::sd_notify::Reporter;
use flannel_shared::stats::{IoPath, StatsWriter};

/// flannel's default UDP port, used when the table carries none.
const DEFAULT_PORT: u16 = 8285;

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
    /// Turn off TUN offloads (IFF_VNET_HDR/TSO), UDP GSO and UDP GRO: one packet per I/O.
    #[arg(long, env = "FLANNEL_DATAPLANE_NO_OFFLOAD")]
    no_offload: bool,
    /// Shared-memory counters file.
    #[arg(
        long,
        env = "FLANNEL_DATAPLANE_STATS",
        default_value = "/run/flannel/dataplane.stats"
    )]
    stats: PathBuf,
    /// Accept inner source addresses outside the sender's subnet.
    #[arg(long, env = "FLANNEL_DATAPLANE_NO_SPOOF_CHECK")]
    no_spoof_check: bool,
    /// Interfaces peers' datagrams may arrive on, besides the one holding our lease's public IP
    /// (repeatable or comma-separated; a multi-homed host where peers' datagrams come in on
    /// another link). `any` turns the arrival check off. Datagrams from anywhere else (a
    /// container bridge, loopback) are dropped as `drop_not_underlay`.
    #[arg(long, env = "FLANNEL_DATAPLANE_UNDERLAY_IFACE", value_delimiter = ',')]
    underlay_iface: Vec<String>,
    /// SO_MARK of the data plane's sockets; flanneld's OUTPUT guard drops every other
    /// datagram to the data-plane port, so only this process can send as a member. Must equal
    /// flanneld's -dataplane-mark; 0: no mark.
    #[arg(long, env = "FLANNEL_DATAPLANE_MARK", default_value_t = flannel_shared::DATAPLANE_MARK,
          value_parser = parse_mark)]
    mark: u32,
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
    match run(args) {
        Ok(Exit::Stopped) => std::process::exit(0),
        Ok(Exit::Reexec) => {
            let err = supervise::reexec();
            tracing::error!("restarting in place failed: {err}");
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
    /// The TUN device vanished: everything is closed; start over in this process with the same
    /// arguments.
    Reexec,
}

fn run(args: Args) -> Result<Exit> {
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
    } = start_forwarding(&args, &snap)?;
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
    };
    match follower.run(&workers, forwarding) {
        LoopEnd::Stop => workers.stop(None)?,
        LoopEnd::WorkerEnded(i) => workers.stop(Some(i))?,
        LoopEnd::TunGone => {
            tracing::error!(
                tun = %args.tun_name,
                "the TUN device was deleted under the data plane: restarting in place to recreate it"
            );
            sd.status("TUN device deleted: restarting in place to recreate it");
            if let Err(e) = workers.stop(None) {
                tracing::warn!("stopping the workers of the deleted device: {e:#}");
            }
            return Ok(Exit::Reexec);
        }
    }
    Ok(Exit::Stopped)
}

/// What runs once setup is done.
struct Forwarding {
    tun: TunDevice,
    workers: Workers,
    arrival: ArrivalKeeper,
    nworkers: usize,
    io_path: IoPath,
}

/// Everything between the table's appearance and the running workers: the port check, the
/// TUN device, the stats file, the sockets, the offload probe, steering, dropping
/// capabilities and the workers' start.
fn start_forwarding(args: &Args, snap: &RouteSnapshot) -> Result<Forwarding> {
    let meta = snap.meta().clone();
    tracing::info!(
        generation = snap.generation(),
        network = %meta.network,
        our_subnet = ?meta.our_subnet,
        mtu = meta.mtu,
        routes = snap.len(),
        "route table found"
    );
    let port = args
        .port
        .or((meta.port != 0).then_some(meta.port))
        .unwrap_or(DEFAULT_PORT);
    let layout = WorkerLayout::from_flags(args.workers, args.cpus.as_ref())?;
    let io_path = supervise::choose_io_path(args.no_io_uring);
    udp_sockets::ensure_port_free(args.bind, port)?;

    let (tun, queues) = TunDevice::create(&args.tun_name, layout.count, args.no_offload, &meta)?;
    let stats =
        StatsWriter::create(&args.stats, layout.count).context("creating the stats file")?;
    stats.set_io_path(io_path);
    // Sockets block only on the io_uring path (io_uring polls them itself). TUN queues are
    // always non-blocking: both paths read and write them directly, by readiness.
    let nonblocking = io_path == IoPath::Fallback;
    let pairs = udp_sockets::open_pairs(args.bind, port, layout.count, nonblocking, args.mark)?;
    let offload = udp_sockets::probe_offloads(&pairs, queues.vnet_hdr, args.no_offload);
    let cpu_local = args.steering == Steering::Cpu;
    let drain = steering_attach::attach(
        cpu_local,
        &layout.cpus,
        layout.count,
        &queues.queues[0],
        &pairs[0].recv,
    );
    keep_only_net_admin();
    let mut arrival = ArrivalKeeper::new(args.underlay_iface.clone());
    arrival.update(supervise::our_public_ip(snap));
    let plan = WorkerPlan {
        layout: &layout,
        route_table: &args.route_table,
        port,
        spoof_check: !args.no_spoof_check,
        io_path,
        offload: Arc::new(offload),
        drain: drain.map(Arc::new),
        arrival: Arc::clone(&arrival.cell),
        stats: &stats,
    };
    tracing::info!(
        bind = %args.bind, port, rcvbuf = sys::socket::recv_buffer_size(&pairs[0].recv),
        "UDP sockets ready (SO_REUSEPORT group, per-worker source ports)"
    );
    let workers = Workers::spawn(&plan, queues.queues, pairs)?;
    tracing::info!(workers = layout.count, stats = %args.stats.display(), "forwarding");
    Ok(Forwarding {
        tun,
        workers,
        arrival,
        nworkers: layout.count,
        io_path,
    })
}

/// Setup is done: before the workers exist (capabilities are per thread), keep only what the
/// table loop still needs (CAP_NET_ADMIN for the TUN address).
fn keep_only_net_admin() {
    match sys::caps::keep_only_net_admin() {
        Ok(before) => tracing::info!(
            before = format!("{before:#x}"),
            "capabilities: kept CAP_NET_ADMIN only"
        ),
        Err(e) => tracing::warn!("dropping capabilities failed (continuing with them): {e}"),
    }
}
