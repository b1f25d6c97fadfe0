//! `flannel-dataplane`: forwards flannel's UDP encapsulation (port 8285) between the TUN
//! device and the underlay, one pinned worker per core.
//!
//! Read top-down: this file (flags, startup, the TUN device, signals, following the route
//! table), then the library `flannel_dataplane` (`src/lib.rs`): `packet` (pure IPv4 views,
//! TTL, ICMP builder), `forward` (pure per-packet decisions: wire format, receive checks),
//! `worker` (the per-core loops: `worker::uring` is the hot path, `worker::fallback`), `sys`
//! (the thin syscall layer: TUN, netlink, sockets, threads).
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

use flannel_dataplane::{steering, sys, worker};

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;

use flannel_shared::route_table::{RouteSnapshot, RouteTableReader, TableMeta};
use flannel_shared::sd_notify::{Field, Notifier};
use flannel_shared::stats::{IoPath, StatsWriter};
use flannel_shared::Ipv4Net;

use flannel_dataplane::sys::tun::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};
use flannel_dataplane::underlay::{ArrivalCell, ArrivalKeeper};
use flannel_dataplane::worker::{Offload, WorkerSetup};
use std::os::fd::OwnedFd;

/// flannel's default UDP port, used when the table carries none.
const DEFAULT_PORT: u16 = 8285;
/// MTU when the table carries none (1500 - 28).
const DEFAULT_MTU: u32 = 1472;
/// How long a starting data plane waits for a leftover TUN device of its name to disappear.
const STALE_TUN_WAIT: Duration = Duration::from_secs(3);

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
    #[arg(long, env = "FLANNEL_DATAPLANE_CPUS", value_parser = parse_cpus)]
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

/// Attaches the steering programs (TUN device-wide, reuseport group-wide) through worker 0's
/// TUN queue and receive socket. CPU-local steering returns the board the workers report
/// their drain times to; when it is not possible (logged once) flow steering is attached,
/// and when that fails too the kernel's defaults stay.
fn set_steering(
    steering: Steering,
    cpus: &[usize],
    nworkers: usize,
    tun: &std::os::fd::OwnedFd,
    recv: &std::os::fd::OwnedFd,
) -> Option<sys::bpf::DrainBoard> {
    if nworkers < 2 {
        return None;
    }
    if steering == Steering::Cpu {
        match cpu_local_steering(cpus, nworkers, tun, recv) {
            Ok(board) => return Some(board),
            Err(CpuSteeringOff::Config(why)) => {
                tracing::info!("{why}; using flow steering")
            }
            Err(CpuSteeringOff::Failed(e)) => {
                tracing::warn!("CPU-local steering unavailable ({e}); using flow steering")
            }
        }
    }
    match sys::socket::attach_flow_steering(recv, nworkers as u32) {
        Ok(()) => tracing::info!("steering: inner-flow hash (reuseport CBPF), TUN flow hash"),
        Err(e) => tracing::warn!(
            "receive steering: kernel 4-tuple hash (SO_ATTACH_REUSEPORT_CBPF failed: {e})"
        ),
    }
    None
}

/// Why CPU-local steering is off: the configuration rules it out, or the kernel refused.
enum CpuSteeringOff {
    Config(String),
    Failed(String),
}

/// CPU-local steering for workers pinned to `cpus` (worker i → `cpus[i % len]`): the
/// reuseport program first, then the TUN program (a later flow-steering attach replaces the
/// reuseport program if the TUN one fails).
fn cpu_local_steering(
    cpus: &[usize],
    nworkers: usize,
    tun: &std::os::fd::OwnedFd,
    recv: &std::os::fd::OwnedFd,
) -> Result<sys::bpf::DrainBoard, CpuSteeringOff> {
    if cpus.is_empty() {
        return Err(CpuSteeringOff::Config(
            "--cpus none: CPU-local steering needs pinned workers".into(),
        ));
    }
    let worker_cpus: Vec<usize> = (0..nworkers).map(|i| cpus[i % cpus.len()]).collect();
    let distinct = worker_cpus
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if distinct < nworkers {
        // Two workers on one CPU: only one of them could ever be "the CPU's worker".
        return Err(CpuSteeringOff::Config(format!(
            "CPU-local steering needs one CPU per worker (cpus {worker_cpus:?})"
        )));
    }
    sys::socket::attach_reuseport_cbpf(recv, &steering::reuseport_cpu_program(&worker_cpus))
        .map_err(|e| CpuSteeringOff::Failed(format!("reuseport CBPF: {e}")))?;
    let board = sys::bpf::attach_tun_steering(tun, &worker_cpus)
        .map_err(|e| CpuSteeringOff::Failed(format!("TUN steering eBPF: {e}")))?;
    tracing::info!(cpus = ?worker_cpus, "steering: CPU-local (TUN eBPF, reuseport CBPF)");
    Ok(board)
}

/// `--cpus`: an explicit pin list, or no pinning.
#[derive(Debug, Clone)]
enum CpuList {
    None,
    List(Vec<usize>),
}

fn parse_cpus(s: &str) -> Result<CpuList, String> {
    if s == "none" {
        return Ok(CpuList::None);
    }
    let v: Result<Vec<usize>, _> = s.split(',').map(|c| c.trim().parse::<usize>()).collect();
    match v {
        Ok(v) if !v.is_empty() && v.iter().all(|&c| c < libc::CPU_SETSIZE as usize) => {
            Ok(CpuList::List(v))
        }
        _ => Err(format!(
            "--cpus {s:?}: expected a comma-separated CPU list or `none`"
        )),
    }
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
            use std::os::unix::process::CommandExt;
            let mut argv = std::env::args_os();
            let arg0 = argv.next().unwrap_or_else(|| "flannel-dataplane".into());
            // /proc/self/exe: this very binary, even if the file was replaced meanwhile.
            let err = std::process::Command::new("/proc/self/exe")
                .arg0(arg0)
                .args(argv)
                .exec();
            tracing::error!("restarting in place failed: {err}");
            std::process::exit(1);
        }
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::exit(1);
        }
    }
}

/// Reports to systemd when started as `Type=notify`; does nothing otherwise.
struct Systemd {
    notifier: Option<Notifier>,
    /// How often `WATCHDOG=1` must go out (half of `$WATCHDOG_USEC`).
    watchdog: Option<Duration>,
    last_ping: Instant,
    send_failed: bool,
}

impl Systemd {
    fn from_env() -> Self {
        let notifier = Notifier::from_env().unwrap_or_else(|e| {
            tracing::warn!("not notifying systemd: {e}");
            None
        });
        Self {
            watchdog: notifier.as_ref().and_then(Notifier::watchdog_interval),
            notifier,
            last_ping: Instant::now(),
            send_failed: false,
        }
    }

    fn send(&mut self, fields: &[Field<'_>]) {
        let Some(n) = &self.notifier else { return };
        if let Err(e) = n.send(fields) {
            if !self.send_failed {
                tracing::warn!("sd_notify to {:?} failed (logged once): {e}", n.target());
                self.send_failed = true;
            }
        }
    }

    fn status(&mut self, text: &str) {
        self.send(&[Field::Status(text)]);
    }

    fn ready(&mut self, text: &str) {
        self.send(&[Field::Ready, Field::Status(text)]);
        self.last_ping = Instant::now();
    }

    fn stopping(&mut self, text: &str) {
        self.send(&[Field::Stopping, Field::Status(text)]);
    }

    /// How long the loop may block between turns: at most half the watchdog interval, so
    /// that pings (due after half of it) leave within the interval.
    fn poll(&self, normal: Duration) -> Duration {
        self.watchdog.map_or(normal, |w| (w / 2).min(normal))
    }

    /// `WATCHDOG=1` when due; the caller's loop turning is what it vouches for.
    fn ping_if_due(&mut self) {
        if let Some(w) = self.watchdog {
            if self.last_ping.elapsed() >= w / 2 {
                self.send(&[Field::Watchdog]);
                self.last_ping = Instant::now();
            }
        }
    }
}

/// Polls until the table exists and is published. `None` when a stop signal came first.
fn wait_for_table(
    path: &std::path::Path,
    sd: &mut Systemd,
) -> Option<(RouteTableReader, RouteSnapshot)> {
    let mut logged = false;
    loop {
        let attempt = RouteTableReader::open(path).and_then(|mut r| {
            let s = r.snapshot()?;
            Ok((r, s))
        });
        match attempt {
            Ok(x) => return Some(x),
            Err(e) if !logged => {
                tracing::info!(
                    "waiting for the route table at {} (is flanneld running?): {e}",
                    path.display()
                );
                sd.status(&format!(
                    "waiting for the route table at {} (is flanneld running?): {e}",
                    path.display()
                ));
                logged = true;
            }
            Err(_) => {}
        }
        match sys::thread::wait_term_signal(Duration::from_millis(250)) {
            Some(libc::SIGHUP) => hup_ignored(),
            Some(_) => return None,
            None => {}
        }
    }
}

/// SIGHUP changes nothing: the data plane has no file to reload (it follows the route table).
fn hup_ignored() {
    tracing::info!("SIGHUP: ignored (no config file to reload; the route table is followed)");
}

fn effective_mtu(table_mtu: u32) -> u32 {
    let mtu = if table_mtu == 0 {
        DEFAULT_MTU
    } else {
        table_mtu
    };
    if mtu > worker::MAX_MTU {
        tracing::warn!(
            "table MTU {mtu} exceeds this build's buffer; using {}",
            worker::MAX_MTU
        );
    }
    mtu.min(worker::MAX_MTU)
}

/// Sets the TUN address to our subnet's network address /32 (removing `old` if it differs).
fn set_tun_address(ifindex: u32, new: Option<Ipv4Net>, old: Option<Ipv4Net>) -> Result<()> {
    if let Some(o) = old.filter(|o| Some(*o) != new) {
        if let Err(e) = sys::netlink::del_address(ifindex, o.addr(), 32) {
            tracing::warn!("removing old TUN address {}/32: {e}", o.addr());
        }
    }
    if let Some(n) = new {
        sys::netlink::add_address(ifindex, n.addr(), 32)
            .with_context(|| format!("setting TUN address {}/32", n.addr()))?;
    }
    Ok(())
}

/// Waits up to [`STALE_TUN_WAIT`] for an existing device `name` to disappear; if it stays (a
/// persistent device someone created, or one in use), the queues attach to it, as flannel does.
fn wait_for_stale_tun(name: &str) {
    if !sys::tun::device_exists(name) {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < STALE_TUN_WAIT {
        std::thread::sleep(Duration::from_millis(20));
        if !sys::tun::device_exists(name) {
            tracing::info!(
                tun = name,
                waited_ms = start.elapsed().as_millis() as u64,
                "the previous TUN device went away"
            );
            return;
        }
    }
    tracing::warn!(
        tun = name,
        "a device of this name already exists and stayed for {STALE_TUN_WAIT:?}: attaching to it (it must be a multi-queue TUN device; another running flannel-dataplane would share it)"
    );
}

/// Opens the first TUN queue with IFF_VNET_HDR and enables the offloads this kernel has.
/// On error the queue is closed again (the non-persistent device disappears with it).
fn open_offload_queue(name: &str) -> Result<(OwnedFd, &'static str)> {
    let q = sys::tun::open_queue(name, true).context("IFF_VNET_HDR refused")?;
    let base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    match sys::tun::set_offload(&q, base | TUN_F_USO4 | TUN_F_USO6) {
        Ok(()) => Ok((q, "CSUM|TSO4|TSO6|USO4|USO6")),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            sys::tun::set_offload(&q, base).context("TUNSETOFFLOAD CSUM|TSO4|TSO6")?;
            Ok((q, "CSUM|TSO4|TSO6 (no USO: kernel < 6.2)"))
        }
        Err(e) => Err(e).context("TUNSETOFFLOAD"),
    }
}

/// Probes UDP_SEGMENT and enables UDP_GRO on every receive socket; logs the result once.
fn probe_udp_offloads(socks: &[(OwnedFd, OwnedFd)], vnet_hdr: bool, forced_off: bool) -> Offload {
    if forced_off {
        tracing::info!("offloads: off (--no-offload): no TUN vnet header, UDP GSO or UDP GRO");
        return Offload::none();
    }
    let gso = match socks.first().map(|s| sys::socket::probe_udp_segment(&s.1)) {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            tracing::warn!("UDP GSO: off (UDP_SEGMENT unknown to this kernel: {e})");
            false
        }
        None => false,
    };
    let mut gro = true;
    for (recv, _) in socks {
        if let Err(e) = sys::socket::set_udp_gro(recv, true) {
            tracing::warn!("UDP GRO: off (setsockopt UDP_GRO: {e})");
            gro = false;
            break;
        }
    }
    if !gro {
        // All or none: a socket merging datagrams must be read with a control buffer.
        for (recv, _) in socks {
            let _ = sys::socket::set_udp_gro(recv, false);
        }
    }
    tracing::info!(
        tun_vnet_hdr = vnet_hdr,
        udp_gso = gso,
        udp_gro = gro,
        "offloads probed"
    );
    Offload::new(vnet_hdr, gro, gso)
}

fn run(args: Args) -> Result<Exit> {
    // Before any thread exists: only the main thread will take SIGTERM/SIGINT/SIGHUP.
    sys::thread::block_term_signals().context("blocking SIGTERM/SIGINT/SIGHUP")?;
    let mut sd = Systemd::from_env();

    let Some((mut reader, mut snap)) = wait_for_table(&args.route_table, &mut sd) else {
        tracing::info!("stopped before the route table appeared");
        sd.stopping("stopped before the route table appeared");
        return Ok(Exit::Stopped);
    };
    sd.status("route table found: setting up the TUN device and the workers");
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
    let (nworkers, cpus) = worker_cpus(&args)?;
    let io_path = choose_io_path(&args);
    ensure_port_free(&args, port)?;

    let (queues, vnet_hdr, mut dev) = open_tun(&args, nworkers, &meta)?;
    let stats = StatsWriter::create(&args.stats, nworkers).context("creating the stats file")?;
    stats.set_io_path(io_path);
    // Sockets block only on the io_uring path (io_uring polls them itself). TUN queues are
    // always non-blocking: both paths read and write them directly, by readiness.
    let socks = open_sockets(&args, port, nworkers, io_path == IoPath::Fallback)?;
    let offload = Arc::new(probe_udp_offloads(&socks, vnet_hdr, args.no_offload));
    let drain = set_steering(args.steering, &cpus, nworkers, &queues[0], &socks[0].0).map(Arc::new);
    // Setup is done: before the workers exist (capabilities are per thread), keep only what the
    // table loop still needs (CAP_NET_ADMIN for the TUN address).
    match sys::caps::keep_only_net_admin() {
        Ok(before) => tracing::info!(
            before = format!("{before:#x}"),
            "capabilities: kept CAP_NET_ADMIN only"
        ),
        Err(e) => tracing::warn!("dropping capabilities failed (continuing with them): {e}"),
    }
    let mut arrival = ArrivalKeeper::new(args.underlay_iface.clone());
    arrival.update(our_public_ip(&snap));
    let plan = WorkerPlan {
        arrival: Arc::clone(&arrival.cell),
        cpus: &cpus,
        port,
        io_path,
        offload,
        drain,
        stats: &stats,
    };
    let workers = spawn_workers(&args, &plan, queues, socks)?;
    tracing::info!(workers = nworkers, stats = %args.stats.display(), "forwarding");
    let forwarding = |network: Ipv4Net, snap: &RouteSnapshot| {
        format!(
            "forwarding: {nworkers} workers ({io_path:?}), {} dev {}, route table generation {}, {} routes",
            network,
            args.tun_name,
            snap.generation(),
            snap.len()
        )
    };
    sd.ready(&forwarding(dev.network, &snap));
    if let Some(w) = sd.watchdog {
        tracing::info!(every = ?w, "systemd watchdog: pinging from the table loop");
    }

    let tun = (args.tun_name.clone(), dev.ifindex);
    let end = follow_table(
        &mut sd,
        &mut reader,
        &mut snap,
        &workers,
        &tun,
        &mut arrival,
        |snap| {
            apply_table_change(&args.tun_name, &mut dev, snap);
            forwarding(dev.network, snap)
        },
    );
    match end {
        LoopEnd::Stop => stop_workers(workers, None).map(|()| Exit::Stopped),
        LoopEnd::WorkerEnded(i) => stop_workers(workers, Some(i)).map(|()| Exit::Stopped),
        LoopEnd::TunGone => {
            tracing::error!(
                tun = %args.tun_name,
                "the TUN device was deleted under the data plane: restarting in place to recreate it"
            );
            sd.status("TUN device deleted: restarting in place to recreate it");
            if let Err(e) = stop_workers(workers, None) {
                tracing::warn!("stopping the workers of the deleted device: {e:#}");
            }
            Ok(Exit::Reexec)
        }
    }
}

/// How `run` ended.
enum Exit {
    /// Stopped by a signal: exit 0.
    Stopped,
    /// The TUN device vanished: everything is closed; start over in this process (same PID,
    /// so systemd's supervision and the test harness see one process) with the same arguments.
    Reexec,
}

/// Why the table loop ended.
enum LoopEnd {
    Stop,
    WorkerEnded(usize),
    TunGone,
}

/// Whether the TUN device `name` (created with `ifindex`) is gone: deleted, or replaced by
/// another device of that name.
fn tun_gone((name, ifindex): &(String, u32)) -> bool {
    sys::tun::if_index(name).map_or(true, |i| i != *ifindex)
}

/// Follows the table until a stop signal, a worker's end or the TUN device's deletion (checked
/// every turn, ≤ 200 ms), pinging the watchdog while every worker runs and keeping the
/// underlay interfaces current; `changed` applies a new
/// generation and returns the status to report.
fn follow_table(
    sd: &mut Systemd,
    reader: &mut RouteTableReader,
    snap: &mut RouteSnapshot,
    workers: &Workers,
    tun: &(String, u32),
    arrival: &mut ArrivalKeeper,
    mut changed: impl FnMut(&RouteSnapshot) -> String,
) -> LoopEnd {
    loop {
        match sys::thread::wait_term_signal(sd.poll(Duration::from_millis(200))) {
            Some(libc::SIGHUP) => hup_ignored(),
            Some(sig) => {
                tracing::info!(signal = sig, "stopping");
                sd.stopping(&format!("stopping (signal {sig})"));
                return LoopEnd::Stop;
            }
            None => {}
        }
        if tun_gone(tun) {
            return LoopEnd::TunGone;
        }
        if let Some(i) = workers.handles.iter().position(|h| h.is_finished()) {
            if tun_gone(tun) {
                return LoopEnd::TunGone;
            }
            sd.status(&format!("worker {i} stopped: exiting"));
            return LoopEnd::WorkerEnded(i);
        }
        // Every worker is alive and this loop turns: tell the watchdog.
        sd.ping_if_due();
        match reader.refresh(snap) {
            Ok(true) => {
                let status = changed(snap);
                sd.status(&status);
            }
            Ok(false) => {}
            Err(e) => tracing::debug!("route table refresh: {e}"),
        }
        arrival.update(our_public_ip(snap));
    }
}

/// The public IP of our own lease in the table (`None` before flanneld holds one).
fn our_public_ip(snap: &RouteSnapshot) -> Option<Ipv4Addr> {
    snap.meta().our_subnet.and_then(|s| snap.lookup(s.addr()))
}

/// How many workers, and the CPUs to pin them to (worker i → `cpus[i % len]`; empty: none).
fn worker_cpus(args: &Args) -> Result<(usize, Vec<usize>)> {
    let allowed = sys::thread::allowed_cpus();
    let nworkers = args.workers.unwrap_or(allowed.len()).max(1);
    let cpus = match &args.cpus {
        None => allowed,
        Some(CpuList::None) => Vec::new(),
        Some(CpuList::List(l)) => l.clone(),
    };
    tracing::info!(cpus = ?cpus, "worker pinning (worker i -> cpus[i % len]; empty: not pinned)");
    if nworkers > 256 {
        bail!("--workers {nworkers}: a TUN device has at most 256 queues");
    }
    Ok((nworkers, cpus))
}

/// io_uring unless `--no-io-uring` or the probe finds it unusable (logged either way).
fn choose_io_path(args: &Args) -> IoPath {
    if args.no_io_uring {
        tracing::info!("I/O path: fallback (poll + recvmmsg/sendmmsg), forced by --no-io-uring");
        return IoPath::Fallback;
    }
    match worker::uring::probe() {
        Ok(()) => {
            tracing::info!("I/O path: io_uring");
            IoPath::IoUring
        }
        Err(e) => {
            tracing::warn!(
                "I/O path: fallback (poll + recvmmsg/sendmmsg): io_uring unavailable: {e}"
            );
            IoPath::Fallback
        }
    }
}

/// What the table loop keeps of the TUN device's configuration, to apply table changes.
struct TunDevice {
    ifindex: u32,
    mtu: u32,
    our_subnet: Option<Ipv4Net>,
    network: Ipv4Net,
}

/// Opens one TUN queue per worker (the first probes the offloads), then sets the device's
/// MTU, state, address and route from the table. Returns the queues, whether they carry a
/// vnet header, and the device's configuration.
fn open_tun(
    args: &Args,
    nworkers: usize,
    meta: &TableMeta,
) -> Result<(Vec<OwnedFd>, bool, TunDevice)> {
    // A device of that name left by a data plane that just exited may still be going away
    // (its queues close when the kernel finishes tearing down that process's io_uring rings, or
    // after a crash). Attaching to it would inherit its state; give it a moment to disappear.
    wait_for_stale_tun(&args.tun_name);

    let mut queues = Vec::with_capacity(nworkers);
    let vnet_hdr = if args.no_offload {
        false
    } else {
        match open_offload_queue(&args.tun_name) {
            Ok((q, what)) => {
                tracing::info!("TUN offloads: IFF_VNET_HDR with {what}");
                queues.push(q);
                true
            }
            Err(e) => {
                tracing::warn!("TUN offloads: off ({e:#}); one packet per read");
                false
            }
        }
    };
    for i in queues.len()..nworkers {
        queues.push(sys::tun::open_queue(&args.tun_name, vnet_hdr).with_context(|| {
            format!(
                "opening TUN queue {i} of {} (IFF_MULTI_QUEUE; an existing single-queue device of that name must be removed first)",
                args.tun_name
            )
        })?);
    }
    let ifindex = sys::tun::if_index(&args.tun_name).context("TUN interface index")?;
    let mtu = effective_mtu(meta.mtu);
    sys::netlink::set_mtu(&args.tun_name, mtu).context("setting TUN MTU")?;
    // Before the link is up, so not even the first router solicitation goes out.
    match sys::netlink::disable_ipv6(ifindex, &args.tun_name) {
        Ok(sys::netlink::Ipv6Off::NoAddrGen) => tracing::info!(
            "/proc/sys is read-only: IPv6 on {} stays on, without addresses (addrgenmode none)",
            args.tun_name
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(
            "cannot turn IPv6 off on {} (the kernel's own IPv6 packets will be counted as drop_tun_malformed): {e}",
            args.tun_name
        ),
    }
    sys::netlink::set_up(&args.tun_name).context("bringing the TUN device up")?;
    if let Err(e) = sys::netlink::set_accept_local(ifindex) {
        tracing::warn!(
            "cannot set accept_local on {} (ICMP errors we send may be dropped as martians): {e}",
            args.tun_name
        );
    }
    let our_subnet = meta.our_subnet;
    set_tun_address(ifindex, our_subnet, None)?;
    let network = meta.network;
    sys::netlink::add_route(ifindex, network)
        .with_context(|| format!("adding route {network} dev {}", args.tun_name))?;
    tracing::info!(
        tun = %args.tun_name, queues = nworkers, mtu, address = ?our_subnet.map(|s| s.addr()),
        route = %network, "TUN device configured"
    );
    let dev = TunDevice {
        ifindex,
        mtu,
        our_subnet,
        network,
    };
    Ok((queues, vnet_hdr, dev))
}

/// One (receive, send) UDP socket pair per worker.
/// How long a start waits for the UDP port held by an exiting previous instance.
const PORT_WAIT: Duration = Duration::from_secs(3);

/// Refuses to start when (bind, port) is taken: SO_REUSEPORT would let a second data plane on
/// this port silently share the traffic. A previous instance that is still exiting gets
/// [`PORT_WAIT`]. Checked before anything is set up (the TUN device above all).
fn ensure_port_free(args: &Args, port: u16) -> Result<()> {
    let deadline = std::time::Instant::now() + PORT_WAIT;
    let mut logged = false;
    while !sys::socket::udp_port_is_free(args.bind, port)
        .with_context(|| format!("probing UDP {}:{port}", args.bind))?
    {
        if std::time::Instant::now() >= deadline {
            let holder = flannel_shared::port_holder::describe_foreign_holders(
                std::path::Path::new("/proc"),
                port,
                None,
            )
            .unwrap_or_else(|| "holder not found in /proc".into());
            anyhow::bail!(
                "UDP {}:{port} is in use by another process ({holder}): refusing to start, since \
                 SO_REUSEPORT would let both take a share of the traffic (and a squatter reads \
                 the overlay's datagrams)",
                args.bind
            );
        }
        if !logged {
            tracing::info!(bind = %args.bind, port, "UDP port in use; waiting up to {PORT_WAIT:?} for it");
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn open_sockets(
    args: &Args,
    port: u16,
    nworkers: usize,
    nonblocking: bool,
) -> Result<Vec<(OwnedFd, OwnedFd)>> {
    let mut socks = Vec::with_capacity(nworkers);
    for _ in 0..nworkers {
        let recv = sys::socket::recv_socket(args.bind, port, nonblocking)
            .with_context(|| format!("binding UDP {}:{port}", args.bind))?;
        sys::socket::set_pktinfo(&recv).context("IP_PKTINFO")?;
        let send = sys::socket::send_socket(args.bind, nonblocking).context("UDP send socket")?;
        sys::socket::set_dont_fragment(&send).context("IP_MTU_DISCOVER (DF)")?;
        if args.mark != 0 {
            for s in [&recv, &send] {
                sys::socket::set_mark(s, args.mark)
                    .with_context(|| format!("SO_MARK {:#x} (needs CAP_NET_ADMIN)", args.mark))?;
            }
        }
        if std::env::var_os("FLANNEL_DATAPLANE_TEST_REFUSE_GSO").is_some() {
            // Test hook: make the kernel refuse UDP GSO sends (EINVAL) to exercise the
            // run-time fallback; plain datagrams still go out.
            sys::socket::set_no_check(&send).context("SO_NO_CHECK")?;
        }
        socks.push((recv, send));
    }
    Ok(socks)
}

/// What every worker gets besides its own queue and sockets.
struct WorkerPlan<'a> {
    arrival: Arc<ArrivalCell>,
    cpus: &'a [usize],
    port: u16,
    io_path: IoPath,
    offload: Arc<Offload>,
    drain: Option<Arc<sys::bpf::DrainBoard>>,
    stats: &'a StatsWriter,
}

/// The running workers: their threads and the eventfds that stop them.
struct Workers {
    wakes: Vec<Arc<OwnedFd>>,
    handles: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

/// Starts one worker thread per (TUN queue, socket pair).
fn spawn_workers(
    args: &Args,
    plan: &WorkerPlan<'_>,
    queues: Vec<OwnedFd>,
    socks: Vec<(OwnedFd, OwnedFd)>,
) -> Result<Workers> {
    let n = queues.len();
    let mut workers = Workers {
        wakes: Vec::with_capacity(n),
        handles: Vec::with_capacity(n),
    };
    let cpus = plan.cpus;
    for (i, (tun, (recv, send))) in queues.into_iter().zip(socks).enumerate() {
        if i == 0 {
            tracing::info!(
                bind = %args.bind, port = plan.port, rcvbuf = sys::socket::recv_buffer_size(&recv),
                "UDP sockets ready (SO_REUSEPORT group, per-worker source ports)"
            );
        }
        let wake = Arc::new(sys::thread::eventfd().context("eventfd")?);
        workers.wakes.push(Arc::clone(&wake));
        let setup = WorkerSetup {
            id: i,
            cpu: (!cpus.is_empty()).then(|| cpus[i % cpus.len()]),
            tun,
            recv,
            send,
            wake,
            reader: RouteTableReader::open(&args.route_table).context("route table")?,
            stats: plan.stats.worker(i),
            port: plan.port,
            spoof_check: !args.no_spoof_check,
            offload: Arc::clone(&plan.offload),
            drain: plan.drain.clone(),
            arrival: Arc::clone(&plan.arrival),
        };
        let io_path = plan.io_path;
        let h = std::thread::Builder::new()
            .name(format!("fdp-worker-{i}"))
            .spawn(move || match io_path {
                IoPath::IoUring => worker::uring::run(setup),
                _ => worker::fallback::run(setup),
            })
            .context("spawning a worker")?;
        workers.handles.push(h);
    }
    Ok(workers)
}

/// Applies a new table generation to the TUN device: its address (our subnet), MTU and the
/// network's route. Errors are logged; forwarding goes on.
fn apply_table_change(tun_name: &str, dev: &mut TunDevice, snap: &RouteSnapshot) {
    let m = snap.meta().clone();
    tracing::info!(
        generation = snap.generation(),
        routes = snap.len(),
        "route table changed"
    );
    if m.our_subnet != dev.our_subnet {
        tracing::info!(old = ?dev.our_subnet, new = ?m.our_subnet, "our subnet changed: moving the TUN address");
        if let Err(e) = set_tun_address(dev.ifindex, m.our_subnet, dev.our_subnet) {
            tracing::error!("{e:#}");
        }
        dev.our_subnet = m.our_subnet;
    }
    let new_mtu = effective_mtu(m.mtu);
    if new_mtu != dev.mtu {
        tracing::info!(old = dev.mtu, new = new_mtu, "MTU changed");
        if let Err(e) = sys::netlink::set_mtu(tun_name, new_mtu) {
            tracing::error!("setting TUN MTU {new_mtu}: {e}");
        }
        dev.mtu = new_mtu;
    }
    if m.network != dev.network {
        tracing::warn!(old = %dev.network, new = %m.network, "network changed: adding its route");
        if let Err(e) = sys::netlink::add_route(dev.ifindex, m.network) {
            tracing::error!("adding route {}: {e}", m.network);
        }
        dev.network = m.network;
    }
}

/// Wakes every worker, joins them, and turns a worker's error, panic or early exit (`failed`)
/// into the process's error.
fn stop_workers(workers: Workers, failed: Option<usize>) -> Result<()> {
    for w in &workers.wakes {
        sys::thread::eventfd_signal(w);
    }
    let mut worker_error = None;
    for (i, h) in workers.handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => worker_error = Some(format!("worker {i}: {e}")),
            Err(_) => worker_error = Some(format!("worker {i} panicked")),
        }
    }
    if let Some(e) = worker_error {
        bail!("{e}");
    }
    if let Some(i) = failed {
        bail!("worker {i} stopped unexpectedly");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_shared::sd_notify::Target;
    use std::os::unix::net::UnixDatagram;

    /// The table loop's cadence: it blocks at most half the ping interval and pings once that
    /// much has passed, so pings are never further apart than the interval (half of
    /// `$WATCHDOG_USEC`).
    #[test]
    fn the_table_loop_pings_within_the_watchdog_interval_and_only_while_it_turns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let every = Duration::from_millis(100);
        let mut sd = Systemd {
            notifier: Some(Notifier::new(Target::Path(path), Some(every)).unwrap()),
            watchdog: Some(every),
            last_ping: Instant::now(),
            send_failed: false,
        };
        assert_eq!(
            sd.poll(Duration::from_millis(200)),
            Duration::from_millis(50)
        );
        sd.ready("forwarding");
        let mut times = Vec::new();
        let mut buf = [0u8; 256];
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(600) {
            std::thread::sleep(sd.poll(Duration::from_millis(200)));
            sd.ping_if_due();
            while let Ok(n) = rx.recv(&mut buf) {
                times.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
        assert_eq!(times[0].1, "READY=1\nSTATUS=forwarding");
        let pings: Vec<Instant> = times
            .iter()
            .filter(|(_, m)| m == "WATCHDOG=1")
            .map(|(t, _)| *t)
            .collect();
        assert!(pings.len() >= 5, "{times:?}");
        let widest = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        // About 50 ms apart; the margin is for a busy test machine's late wake-ups.
        assert!(widest < every * 2, "{widest:?}");
        // Without a watchdog: the loop keeps its own pace and never pings.
        let quiet = Systemd {
            watchdog: None,
            ..sd
        };
        assert_eq!(
            quiet.poll(Duration::from_millis(200)),
            Duration::from_millis(200)
        );
    }
}
