//! The main thread's part once the device and sockets exist: starting the workers, waiting for
//! and following the route table, watching the workers and the TUN device, and stopping.
//!
//! The main thread takes the stop signals (SIGTERM/SIGINT; SIGHUP is ignored; SIGUSR2 restarts
//! in place, see [`handover`](crate::handover)), pings the
//! systemd watchdog only while every worker thread runs and its own loop turns, and ends on a
//! stop signal, a worker's end or the TUN device's deletion (see [`LoopEnd`]).

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use flannel_shared::route_table::{RouteSnapshot, RouteTableReader};
use flannel_shared::sd_notify::Reporter;
use flannel_shared::stats::{IoPath, StatsWriter};

use crate::express_lane::ExpressLane;
use crate::setup_error::{IoContext as _, SetupError};
use crate::sys;
use crate::tun_device::TunDevice;
use crate::udp_sockets::SocketPair;
use crate::underlay::{ArrivalCell, ArrivalKeeper};
use crate::worker::{self, Offload, WorkerSetup};
use crate::worker_cpus::WorkerLayout;

/// How often the table loop turns at most (without a watchdog that asks for more).
const TABLE_POLL: Duration = Duration::from_millis(200);
/// How often the table loop turns with the express lane on: the lane's maps follow a new
/// table generation within this (the workers see it at their next batch).
const EXPRESS_TABLE_POLL: Duration = Duration::from_millis(20);
/// How often the wait for the route table looks again.
const TABLE_WAIT_POLL: Duration = Duration::from_millis(250);

/// io_uring unless `forced_off` (`--no-io-uring`) or the probe finds it unusable (logged
/// either way).
pub fn choose_io_path(forced_off: bool) -> IoPath {
    if forced_off {
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

/// How the io_uring workers read the TUN queues: `wanted` (`--tun-reads`: `None` = the best
/// this kernel has), logged once with why. Forcing `ring` where the kernel lacks it is an error.
pub fn choose_tun_reads(
    io_path: IoPath,
    wanted: Option<worker::TunReads>,
) -> Result<worker::TunReads, SetupError> {
    use worker::TunReads;
    if io_path != IoPath::IoUring {
        return Ok(TunReads::Readiness);
    }
    match (wanted, sys::uring::probe_multishot_read()) {
        (Some(TunReads::Readiness), _) => {
            tracing::info!("TUN reads: read(2) after a multishot poll (--tun-reads readiness)");
            Ok(TunReads::Readiness)
        }
        (_, Ok(())) => {
            tracing::info!(
                "TUN reads: one multishot READ per queue into a provided-buffer ring (no read(2) per packet)"
            );
            Ok(TunReads::Ring)
        }
        (Some(TunReads::Ring), Err(e)) => {
            Err(SetupError::Refused(format!("--tun-reads ring: {e}")))
        }
        (None, Err(e)) => {
            tracing::info!("TUN reads: read(2) after a multishot poll ({e})");
            Ok(TunReads::Readiness)
        }
    }
}

/// Polls until the table at `path` exists and is published. `None` when a stop signal came
/// first.
pub fn wait_for_table(path: &Path, sd: &Reporter) -> Option<(RouteTableReader, RouteSnapshot)> {
    let mut logged = false;
    loop {
        let attempt = RouteTableReader::open(path).and_then(|mut r| {
            let s = r.snapshot()?;
            Ok((r, s))
        });
        match attempt {
            Ok(x) => return Some(x),
            Err(e) if !logged => {
                let waiting = format!(
                    "waiting for the route table at {} (is flanneld running?): {e}",
                    path.display()
                );
                tracing::info!("{waiting}");
                sd.status(&waiting);
                logged = true;
            }
            Err(_) => {}
        }
        match sys::thread::wait_term_signal(TABLE_WAIT_POLL) {
            Some(libc::SIGHUP) => hup_ignored(),
            Some(libc::SIGUSR2) => {
                tracing::info!("SIGUSR2: nothing to hand over before the route table exists")
            }
            Some(_) => return None,
            None => {}
        }
    }
}

/// SIGHUP changes nothing: the data plane has no file to reload (it follows the route table).
fn hup_ignored() {
    tracing::info!("SIGHUP: ignored (no config file to reload; the route table is followed)");
}

/// The public IP of our own lease in the table (`None` before flanneld holds one).
pub fn our_public_ip(snap: &RouteSnapshot) -> Option<Ipv4Addr> {
    snap.meta().our_subnet.and_then(|s| snap.lookup(s.addr()))
}

/// What every worker gets besides its own queue and sockets.
pub struct WorkerPlan<'a> {
    pub layout: &'a WorkerLayout,
    pub route_table: &'a Path,
    pub port: u16,
    pub spoof_check: bool,
    pub io_path: IoPath,
    pub offload: Arc<Offload>,
    pub drain: Option<Arc<sys::bpf::DrainBoard>>,
    pub arrival: Arc<ArrivalCell>,
    pub stats: &'a StatsWriter,
    pub tun_reads: worker::TunReads,
}

/// The running workers: their threads and the eventfds that stop them.
pub struct Workers {
    wakes: Vec<Arc<OwnedFd>>,
    handles: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Workers {
    /// Starts one worker thread per (TUN queue, socket pair).
    pub fn spawn(
        plan: &WorkerPlan<'_>,
        queues: Vec<OwnedFd>,
        pairs: Vec<SocketPair>,
    ) -> Result<Self, SetupError> {
        let n = queues.len();
        let mut workers = Self {
            wakes: Vec::with_capacity(n),
            handles: Vec::with_capacity(n),
        };
        for (i, (tun, pair)) in queues.into_iter().zip(pairs).enumerate() {
            let wake = Arc::new(sys::thread::eventfd().context("eventfd")?);
            workers.wakes.push(Arc::clone(&wake));
            let setup = WorkerSetup {
                id: i,
                cpu: plan.layout.cpu_of(i),
                tun,
                recv: pair.recv,
                send: pair.send,
                wake,
                reader: RouteTableReader::open(plan.route_table)
                    .map_err(|e| SetupError::with_chain("route table", &e))?,
                stats: plan.stats.worker(i),
                port: plan.port,
                spoof_check: plan.spoof_check,
                offload: Arc::clone(&plan.offload),
                drain: plan.drain.clone(),
                arrival: Arc::clone(&plan.arrival),
                multishot_tun_read: plan.tun_reads == worker::TunReads::Ring,
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

    /// The first worker whose thread has ended, if any.
    fn first_ended(&self) -> Option<usize> {
        self.handles.iter().position(|h| h.is_finished())
    }

    /// Wakes every worker, joins them, and turns a worker's error, panic or early exit
    /// (`failed`) into an error.
    pub fn stop(self, failed: Option<usize>) -> Result<(), SetupError> {
        for w in &self.wakes {
            sys::thread::eventfd_signal(w);
        }
        let mut worker_error = None;
        for (i, h) in self.handles.into_iter().enumerate() {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => worker_error = Some(format!("worker {i}: {e}")),
                Err(_) => worker_error = Some(format!("worker {i} panicked")),
            }
        }
        if let Some(e) = worker_error {
            return Err(SetupError::Refused(e));
        }
        if let Some(i) = failed {
            return Err(SetupError::Refused(format!(
                "worker {i} stopped unexpectedly"
            )));
        }
        Ok(())
    }
}

/// Why the table loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopEnd {
    /// A stop signal.
    Stop,
    /// This worker's thread ended on its own.
    WorkerEnded(usize),
    /// The TUN device was deleted or replaced.
    TunGone,
    /// SIGUSR2: restart in place, handing everything over.
    Handover,
}

/// What the table loop follows and keeps current.
pub struct TableFollower<'a> {
    pub sd: &'a Reporter,
    pub reader: RouteTableReader,
    pub snap: RouteSnapshot,
    pub tun: &'a mut TunDevice,
    pub arrival: &'a mut ArrivalKeeper,
    /// The express lane, kept equal to the table on the same turn as the TUN device.
    pub express: Option<ExpressLane>,
}

impl TableFollower<'_> {
    /// Follows the table until a stop signal, a worker's end or the TUN device's deletion
    /// (checked every turn, ≤ 200 ms), pinging the watchdog while every worker runs and
    /// keeping the underlay interfaces current. A new generation is applied to the device,
    /// and `status` gives the text reported to systemd for it.
    pub fn run(
        &mut self,
        workers: &Workers,
        status: impl Fn(&TunDevice, &RouteSnapshot) -> String,
    ) -> LoopEnd {
        let poll = if self.express.is_some() {
            EXPRESS_TABLE_POLL
        } else {
            TABLE_POLL
        };
        loop {
            match sys::thread::wait_term_signal(self.sd.loop_timeout(poll)) {
                Some(libc::SIGHUP) => hup_ignored(),
                Some(libc::SIGUSR2) => {
                    tracing::info!(
                        "SIGUSR2: restarting in place, handing the TUN queues and sockets over"
                    );
                    self.sd.status("restarting in place (SIGUSR2)");
                    return LoopEnd::Handover;
                }
                Some(sig) => {
                    tracing::info!(signal = sig, "stopping");
                    self.sd.stopping(&format!("stopping (signal {sig})"));
                    return LoopEnd::Stop;
                }
                None => {}
            }
            if self.tun.is_gone() {
                return LoopEnd::TunGone;
            }
            if let Some(i) = workers.first_ended() {
                if self.tun.is_gone() {
                    return LoopEnd::TunGone;
                }
                self.sd.status(&format!("worker {i} stopped: exiting"));
                return LoopEnd::WorkerEnded(i);
            }
            // Every worker is alive and this loop turns: tell the watchdog.
            self.sd.ping_if_due();
            match self.reader.refresh(&mut self.snap) {
                Ok(true) => {
                    self.tun.apply_table(&self.snap);
                    self.sd.status(&status(self.tun, &self.snap));
                }
                Ok(false) => {}
                Err(e) => tracing::debug!("route table refresh: {e}"),
            }
            self.arrival.update(our_public_ip(&self.snap));
            if let Some(lane) = &mut self.express {
                lane.follow(&self.snap, self.arrival.cell.get());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(results: Vec<std::io::Result<()>>) -> Workers {
        Workers {
            wakes: Vec::new(),
            handles: results
                .into_iter()
                .map(|r| std::thread::spawn(move || r))
                .collect(),
        }
    }

    #[test]
    fn stopping_reports_a_worker_error_or_an_early_end() {
        assert!(workers(vec![Ok(()), Ok(())]).stop(None).is_ok());
        let e = workers(vec![Ok(()), Err(std::io::Error::other("ring gone"))])
            .stop(None)
            .unwrap_err();
        assert_eq!(e.to_string(), "worker 1: ring gone");
        let e = workers(vec![Ok(())]).stop(Some(0)).unwrap_err();
        assert_eq!(e.to_string(), "worker 0 stopped unexpectedly");
    }

    #[test]
    fn an_ended_worker_is_found() {
        let w = workers(vec![Ok(())]);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while w.first_ended().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(w.first_ended(), Some(0));
    }
}
