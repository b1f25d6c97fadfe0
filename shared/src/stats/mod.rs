//! The data plane's per-worker counters in a shared-memory file, readable by other processes
//! (flannelctl, the metrics endpoint, tests) without any IPC.
//!
//! # File layout (little endian, version 1)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `b"FDPSTAT1"` (written last, so a reader never sees a half-made file) |
//! | 8 | 4 | layout version (1) |
//! | 12 | 4 | worker count W |
//! | 16 | 4 | counter count C |
//! | 20 | 4 | I/O path in use ([`IoPath`]; updated atomically) |
//! | 24 | 4 | pid of the writer |
//! | 28 | 4 | bytes per worker block (C × 8 rounded up to 64) |
//! | 32 | 4 | offset of the name table |
//! | 36 | 4 | offset of the first worker block (64-aligned) |
//! | 64 | C × 32 | counter names, NUL padded (the names are a stable interface) |
//! | blocks | W × stride | per worker: C × `AtomicU64`, cache-line padded |
//!
//! The writer creates the file under a temporary name and renames it into place. Workers add
//! to their own block with `Relaxed` atomics once per batch; readers load with `Relaxed` too
//! (counters are monotonic, no cross-counter consistency is promised). A reader checks magic,
//! version and sizes against the file length before touching anything.

use std::io;
use std::path::PathBuf;

mod counter;

pub use self::counter::{Counter, IoPath};
pub use crate::shm::stats::{StatsReader, StatsWriter, WorkerStats, MAGIC, VERSION};

/// Where the data plane keeps its counters by default, and where flanneld and flannelctl look:
/// the data plane's own runtime directory (the unit's `RuntimeDirectory=flannel-dataplane`; the
/// data plane creates it, mode 0755, when it runs without systemd), which its non-root user can write,
/// unlike flanneld's `/run/flannel`.
pub const DEFAULT_PATH: &str = "/run/flannel-dataplane/stats";

/// Errors opening or creating a stats file.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: not a flannel-dataplane stats file (bad magic)")]
    BadMagic(PathBuf),
    #[error("{0}: unsupported stats layout version {1}")]
    Version(PathBuf, u32),
    #[error("{0}: stats file is truncated or inconsistent")]
    Corrupt(PathBuf),
}
/// One worker's counters at one moment, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCounters {
    pub worker: usize,
    pub counters: Vec<(String, u64)>,
}

impl WorkerCounters {
    pub fn get(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find_map(|(n, v)| (n == name).then_some(*v))
    }
}
