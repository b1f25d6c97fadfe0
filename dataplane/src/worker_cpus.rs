//! How many workers run and which CPUs they are pinned to (`--workers`, `--cpus`).

use crate::setup_error::SetupError;
use crate::sys;

/// A TUN device has at most this many queues, so at most this many workers.
pub const MAX_WORKERS: usize = 256;

/// `--cpus`: an explicit pin list, or no pinning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuList {
    None,
    List(Vec<usize>),
}

/// Parses `--cpus`: `none`, or a comma-separated list of CPU numbers.
pub fn parse_cpus(s: &str) -> Result<CpuList, String> {
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

/// The workers to run and where: their number, and the CPUs to pin them to (worker i →
/// `cpus[i % len]`; empty: not pinned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLayout {
    pub count: usize,
    pub cpus: Vec<usize>,
}

impl WorkerLayout {
    /// From `--workers` and `--cpus`, defaulting to the CPUs this process may run on.
    pub fn from_flags(workers: Option<usize>, cpus: Option<&CpuList>) -> Result<Self, SetupError> {
        Self::choose(workers, cpus, sys::thread::allowed_cpus())
    }

    fn choose(
        workers: Option<usize>,
        cpus: Option<&CpuList>,
        allowed: Vec<usize>,
    ) -> Result<Self, SetupError> {
        let count = workers.unwrap_or(allowed.len()).max(1);
        let cpus = match cpus {
            None => allowed,
            Some(CpuList::None) => Vec::new(),
            Some(CpuList::List(l)) => l.clone(),
        };
        tracing::info!(cpus = ?cpus, "worker pinning (worker i -> cpus[i % len]; empty: not pinned)");
        if count > MAX_WORKERS {
            return Err(SetupError::Refused(format!(
                "--workers {count}: a TUN device has at most {MAX_WORKERS} queues"
            )));
        }
        Ok(Self { count, cpus })
    }

    /// The CPU worker `i` is pinned to, if any.
    pub fn cpu_of(&self, i: usize) -> Option<usize> {
        (!self.cpus.is_empty()).then(|| self.cpus[i % self.cpus.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpus("none"), Ok(CpuList::None));
        assert_eq!(parse_cpus("1, 0"), Ok(CpuList::List(vec![1, 0])));
        for bad in ["", "a", "1,,2", "100000"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn workers_default_to_the_allowed_cpus_and_wrap_over_the_pin_list() {
        let l = WorkerLayout::choose(None, None, vec![2, 3]).unwrap();
        assert_eq!((l.count, l.cpu_of(1)), (2, Some(3)));
        let l = WorkerLayout::choose(Some(3), Some(&CpuList::List(vec![5, 6])), vec![0]).unwrap();
        assert_eq!(l.cpu_of(2), Some(5));
        let l = WorkerLayout::choose(Some(0), Some(&CpuList::None), vec![0]).unwrap();
        assert_eq!((l.count, l.cpu_of(0)), (1, None));
        assert!(WorkerLayout::choose(Some(257), None, vec![0]).is_err());
    }
}
