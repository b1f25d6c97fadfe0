//! Attaching the steering programs ([`crate::steering`] builds them) to the TUN device and the
//! reuseport group, with the fallbacks: CPU-local steering when asked for and possible, else
//! flow steering, else the kernel's defaults. Each choice is logged once.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;

use crate::steering;
use crate::sys;

/// Why CPU-local steering is off: the configuration rules it out, or the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CpuSteeringOff {
    Config(String),
    Failed(String),
}

/// Attaches the steering programs (TUN device-wide, reuseport group-wide) through worker 0's
/// TUN queue and receive socket. CPU-local steering (`cpu_local`) returns the board the
/// workers report their drain times to; when it is not possible (logged once) flow steering
/// is attached, and when that fails too the kernel's defaults stay. Nothing for one worker.
pub fn attach(
    cpu_local: bool,
    cpus: &[usize],
    nworkers: usize,
    tun: &OwnedFd,
    recv: &OwnedFd,
) -> Option<sys::bpf::DrainBoard> {
    if nworkers < 2 {
        clear_tun_program(tun);
        return None;
    }
    if cpu_local {
        match attach_cpu_local(cpus, nworkers, tun, recv) {
            Ok(board) => return Some(board),
            Err(CpuSteeringOff::Config(why)) => {
                tracing::info!("{why}; using flow steering")
            }
            Err(CpuSteeringOff::Failed(e)) => {
                tracing::warn!("CPU-local steering unavailable ({e}); using flow steering")
            }
        }
    }
    clear_tun_program(tun);
    match sys::socket::attach_flow_steering(recv, nworkers as u32) {
        Ok(()) => tracing::info!("steering: inner-flow hash (reuseport CBPF), TUN flow hash"),
        Err(e) => tracing::warn!(
            "receive steering: kernel 4-tuple hash (SO_ATTACH_REUSEPORT_CBPF failed: {e})"
        ),
    }
    None
}

/// Without CPU-local steering the TUN device must not keep a program a previous data plane
/// attached to a kept device (its drain board is no longer updated).
fn clear_tun_program(tun: &OwnedFd) {
    if let Err(e) = sys::bpf::clear_tun_steering(tun) {
        tracing::debug!("clearing the TUN steering program: {e}");
    }
}

/// The CPU of each worker (worker i → `cpus[i % len]`) when CPU-local steering can use them:
/// pinned workers, one CPU each.
fn cpu_per_worker(cpus: &[usize], nworkers: usize) -> Result<Vec<usize>, CpuSteeringOff> {
    if cpus.is_empty() {
        return Err(CpuSteeringOff::Config(
            "--cpus none: CPU-local steering needs pinned workers".into(),
        ));
    }
    let worker_cpus: Vec<usize> = (0..nworkers).map(|i| cpus[i % cpus.len()]).collect();
    let distinct = worker_cpus.iter().collect::<BTreeSet<_>>().len();
    if distinct < nworkers {
        // Two workers on one CPU: only one of them could ever be "the CPU's worker".
        return Err(CpuSteeringOff::Config(format!(
            "CPU-local steering needs one CPU per worker (cpus {worker_cpus:?})"
        )));
    }
    Ok(worker_cpus)
}

/// CPU-local steering: the reuseport program first, then the TUN program (a later
/// flow-steering attach replaces the reuseport program if the TUN one fails).
fn attach_cpu_local(
    cpus: &[usize],
    nworkers: usize,
    tun: &OwnedFd,
    recv: &OwnedFd,
) -> Result<sys::bpf::DrainBoard, CpuSteeringOff> {
    let worker_cpus = cpu_per_worker(cpus, nworkers)?;
    sys::socket::attach_reuseport_cbpf(recv, &steering::reuseport_cpu_program(&worker_cpus))
        .map_err(|e| CpuSteeringOff::Failed(format!("reuseport CBPF: {e}")))?;
    let board = sys::bpf::attach_tun_steering(tun, &worker_cpus)
        .map_err(|e| CpuSteeringOff::Failed(format!("TUN steering eBPF: {e}")))?;
    tracing::info!(cpus = ?worker_cpus, "steering: CPU-local (TUN eBPF, reuseport CBPF)");
    Ok(board)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_local_steering_needs_one_pinned_cpu_per_worker() {
        assert_eq!(cpu_per_worker(&[3, 1], 2), Ok(vec![3, 1]));
        assert!(matches!(
            cpu_per_worker(&[], 2),
            Err(CpuSteeringOff::Config(w)) if w.contains("--cpus none")
        ));
        assert!(matches!(
            cpu_per_worker(&[0, 1], 3),
            Err(CpuSteeringOff::Config(w)) if w.contains("cpus [0, 1, 0]")
        ));
    }
}
