//! Startup between the route table's appearance and the running workers, in order: the
//! worker layout (one per handed-over socket, if any), the I/O path, the port check (unless
//! the sockets were handed over), the TUN device (kept, if its queues were handed over), the
//! stats file, the sockets and the fds kept for the next hand-over,
//! the UDP offload probe, steering, dropping capabilities, and the workers' start.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use flannel_shared::route_table::RouteSnapshot;
use flannel_shared::stats::{IoPath, StatsWriter};

use flannel_shared::sd_notify::Reporter;

use crate::express_lane::{ExpressLane, ExpressOptions};
use crate::handover::{self, Inherited, Keep, UdpOrigin};
use crate::setup_error::SetupError;
use crate::steering_attach;
use crate::supervise::{self, WorkerPlan, Workers};
use crate::sys;
use crate::tun_device::{self, TunDevice};
use crate::udp_sockets;
use crate::underlay::ArrivalKeeper;
use crate::worker_cpus::{CpuList, WorkerLayout};

/// flannel's default UDP port, used when the table carries none.
pub const DEFAULT_PORT: u16 = 8285;

/// The command line's part in startup.
#[derive(Debug, Clone)]
pub struct StartOptions<'a> {
    pub route_table: &'a Path,
    pub workers: Option<usize>,
    pub tun_name: &'a str,
    pub bind: Ipv4Addr,
    /// `None`: the table's port, else [`DEFAULT_PORT`].
    pub port: Option<u16>,
    pub cpus: Option<&'a CpuList>,
    /// `--steering cpu` (else flow).
    pub cpu_local_steering: bool,
    pub no_io_uring: bool,
    /// `--tun-reads` (`None`: the best the kernel has).
    pub tun_reads: Option<crate::worker::TunReads>,
    pub no_offload: bool,
    pub stats: &'a Path,
    pub spoof_check: bool,
    pub underlay_iface: &'a [String],
    /// SO_MARK of the sockets (0: none).
    pub mark: u32,
    /// `--express`: the in-kernel lane, with `--express-source-port fixed` (`Some(true)`).
    pub express: Option<bool>,
}

/// What runs once setup is done.
pub struct Forwarding {
    pub tun: TunDevice,
    pub workers: Workers,
    pub arrival: ArrivalKeeper,
    pub nworkers: usize,
    pub io_path: IoPath,
    /// The fds to hand to the next data plane.
    pub keep: Keep,
    /// The express lane, when asked for and the kernel and privileges allow it.
    pub express: Option<ExpressLane>,
}

/// The worker count: one per handed-over receive socket when there are any (a socket no
/// worker read would swallow its share of the datagrams), which `--workers` must then agree
/// with; otherwise `--workers` (`None`: one per CPU).
pub fn worker_count(
    flag: Option<usize>,
    passed_sockets: usize,
) -> Result<Option<usize>, SetupError> {
    match (flag, passed_sockets) {
        (flag, 0) => Ok(flag),
        (Some(w), k) if w != k => Err(SetupError::Refused(format!(
            "--workers {w}, but {k} receive sockets were handed over (flannel-dataplane.socket \
             has one ListenDatagram= per worker, written by flannel-dataplane-generator from \
             FLANNEL_DATAPLANE_WORKERS): make them agree, or stop the socket unit"
        ))),
        (_, k) => Ok(Some(k)),
    }
}

/// Sets everything up for the table in `snap` and starts the workers, keeping what
/// `inherited` holds (see [`handover`]).
pub fn start_forwarding(
    opts: &StartOptions<'_>,
    snap: &RouteSnapshot,
    inherited: Inherited,
    sd: &Reporter,
) -> Result<Forwarding, SetupError> {
    let meta = snap.meta().clone();
    tracing::info!(
        generation = snap.generation(),
        network = %meta.network,
        our_subnet = ?meta.our_subnet,
        mtu = meta.mtu,
        routes = snap.len(),
        "route table found"
    );
    let port = opts
        .port
        .or((meta.port != 0).then_some(meta.port))
        .unwrap_or(DEFAULT_PORT);
    let Inherited {
        tun: passed_tun,
        udp: mut passed_udp,
        udp_origin,
        stored_tun,
        stored_udp,
    } = inherited;
    // Sockets of our own from before (the fd store, an exec) that no longer fit the flags (a
    // changed worker count, address or port) are let go and opened anew; a socket unit's are
    // the administrator's to fix (adopt_pairs says so).
    if udp_origin == UdpOrigin::Ours
        && !passed_udp.is_empty()
        && !udp_sockets::fit(&passed_udp, opts.workers, opts.bind, port)
    {
        tracing::warn!(
            sockets = passed_udp.len(),
            "the receive sockets handed over do not fit --workers/--bind/--port: opening new ones"
        );
        passed_udp.clear();
        handover::forget_in_systemd(sd, handover::UDP, stored_udp);
    }
    let opening_udp = passed_udp.is_empty();
    let layout =
        WorkerLayout::from_flags(worker_count(opts.workers, passed_udp.len())?, opts.cpus)?;
    let io_path = supervise::choose_io_path(opts.no_io_uring);
    let tun_reads = supervise::choose_tun_reads(io_path, opts.tun_reads)?;
    if opening_udp {
        udp_sockets::ensure_port_free(opts.bind, port)?;
    }

    let kept_queues = tun_device::usable_queues(opts.tun_name, passed_tun, opts.no_offload);
    if kept_queues.is_none() {
        // systemd may still hold the old device's queues: let it go, so a new one can be made.
        handover::forget_in_systemd(sd, handover::TUN, stored_tun);
    }
    let (tun, queues) = TunDevice::create(
        opts.tun_name,
        layout.count,
        opts.no_offload,
        &meta,
        kept_queues,
    )?;
    let stats = StatsWriter::create(opts.stats, layout.count)
        .map_err(|e| SetupError::with_chain("creating the stats file", &e))?;
    stats.set_io_path(io_path);
    // Sockets block only on the io_uring path (io_uring polls them itself). TUN queues are
    // always non-blocking: the fallback (and `--tun-reads readiness`) reads them by readiness,
    // and the ring's TUN reads and writes complete inline (TUN is FMODE_NOWAIT).
    let nonblocking = io_path == IoPath::Fallback;
    let (pairs, origin) = if opening_udp {
        let pairs = udp_sockets::open_pairs(opts.bind, port, layout.count, nonblocking, opts.mark)?;
        (pairs, UdpOrigin::Ours)
    } else {
        let pairs = udp_sockets::adopt_pairs(passed_udp, opts.bind, port, nonblocking, opts.mark)?;
        (pairs, udp_origin)
    };
    let receivers: Vec<&std::os::fd::OwnedFd> = pairs.iter().map(|p| &p.recv).collect();
    let keep = Keep::duplicate(&queues.queues, &receivers, origin, (stored_tun, stored_udp))?;
    keep.store_in_systemd(sd);
    let offload = udp_sockets::probe_offloads(&pairs, queues.vnet_hdr, opts.no_offload);
    let drain = steering_attach::attach(
        opts.cpu_local_steering,
        &layout.cpus,
        layout.count,
        &queues.queues[0],
        &pairs[0].recv,
    );
    let express = opts
        .express
        .and_then(|fixed_source_port| start_express(opts, port, fixed_source_port, &tun, &stats));
    keep_only_net_admin();
    let mut arrival = ArrivalKeeper::new(opts.underlay_iface.to_vec());
    arrival.update(supervise::our_public_ip(snap));
    let plan = WorkerPlan {
        layout: &layout,
        route_table: opts.route_table,
        port,
        spoof_check: opts.spoof_check,
        io_path,
        offload: Arc::new(offload),
        drain: drain.map(Arc::new),
        arrival: Arc::clone(&arrival.cell),
        stats: &stats,
        tun_reads,
    };
    tracing::info!(
        bind = %opts.bind, port, rcvbuf = sys::socket::recv_buffer_size(&pairs[0].recv),
        "UDP sockets ready (SO_REUSEPORT group, per-worker source ports)"
    );
    let workers = Workers::spawn(&plan, queues.queues, pairs)?;
    tracing::info!(workers = layout.count, stats = %opts.stats.display(), "forwarding");
    Ok(Forwarding {
        tun,
        workers,
        arrival,
        nworkers: layout.count,
        io_path,
        keep,
        express,
    })
}

/// The express lane, loaded while CAP_BPF is still held; `None` (logged once, with why) when
/// the kernel or the privileges do not allow it: the io_uring path then forwards everything.
fn start_express(
    opts: &StartOptions<'_>,
    port: u16,
    fixed_source_port: bool,
    tun: &TunDevice,
    stats: &StatsWriter,
) -> Option<ExpressLane> {
    let lane_opts = ExpressOptions {
        fixed_source_port,
        spoof_check: opts.spoof_check,
        port,
    };
    match ExpressLane::start(lane_opts, tun.ifindex(), stats.worker(0)) {
        Ok(lane) => {
            tracing::info!(
                tun = tun.name(),
                "express lane loaded: egress on the TUN device; waiting for the route table to enable it"
            );
            Some(lane)
        }
        Err(why) => {
            tracing::warn!("express lane off ({why}): forwarding through the io_uring path");
            None
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handed_over_sockets_set_the_worker_count() {
        assert_eq!(worker_count(None, 0).unwrap(), None);
        assert_eq!(worker_count(Some(3), 0).unwrap(), Some(3));
        assert_eq!(worker_count(None, 2).unwrap(), Some(2));
        assert_eq!(worker_count(Some(2), 2).unwrap(), Some(2));
        let e = worker_count(Some(4), 2).unwrap_err().to_string();
        assert!(
            e.contains("--workers 4") && e.contains("2 receive sockets"),
            "{e}"
        );
    }
}
