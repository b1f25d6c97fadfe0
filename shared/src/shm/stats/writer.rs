//! The data plane's side of the stats file: creates it and hands each worker its block.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use memmap2::MmapOptions;

use super::{Layout, StatsMapping, MAGIC, NAME_SIZE, VERSION};
use crate::shm::file::allocate;
use crate::stats::{Counter, IoPath, StatsError};

/// Creates `path`'s directory (mode 0755) if needed, and `<path>.tmp<pid>` new (mode 0644),
/// never through a symlink. Returns the temporary path and the open file.
fn create_temporary(path: &Path) -> io::Result<(PathBuf, File)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    // A leftover of a crashed run with the same pid, or a symlink someone planted there:
    // removed (the link itself, never its target), then created new without following one.
    let _ = std::fs::remove_file(&tmp);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    Ok((tmp, file))
}

impl StatsMapping {
    /// Fills a new, zeroed file: header fields, then the name table, then the magic (Release)
    /// last, so a reader never sees a half-made file.
    fn write_header_and_names(&self) {
        let layout = &self.layout;
        self.u32_at(8).store(VERSION, Ordering::Relaxed);
        self.u32_at(12)
            .store(layout.workers as u32, Ordering::Relaxed);
        self.u32_at(16)
            .store(layout.counters as u32, Ordering::Relaxed);
        self.u32_at(24).store(std::process::id(), Ordering::Relaxed);
        self.u32_at(28)
            .store(layout.stride as u32, Ordering::Relaxed);
        self.u32_at(32)
            .store(layout.names_off as u32, Ordering::Relaxed);
        self.u32_at(36)
            .store(layout.blocks_off as u32, Ordering::Relaxed);
        for (i, c) in Counter::ALL.iter().enumerate() {
            let name = c.name().as_bytes();
            let off = layout.names_off + i * NAME_SIZE;
            // Names are written 4 bytes at a time through the atomic view, NUL padded.
            for w in 0..NAME_SIZE / 4 {
                let mut b = [0u8; 4];
                for (k, byte) in b.iter_mut().enumerate() {
                    *byte = name.get(w * 4 + k).copied().unwrap_or(0);
                }
                self.u32_at(off + w * 4)
                    .store(u32::from_le_bytes(b), Ordering::Relaxed);
            }
        }
        self.u64_at(0).store(MAGIC, Ordering::Release);
    }
}

/// The data plane's side: creates the file and hands one [`WorkerStats`] to each worker.
pub struct StatsWriter {
    mapping: Arc<StatsMapping>,
    path: PathBuf,
}

impl StatsWriter {
    /// Creates (replacing atomically) the stats file at `path` for `workers` workers.
    pub fn create(path: &Path, workers: usize) -> Result<Self, StatsError> {
        let io_err = |source| StatsError::Io {
            path: path.to_owned(),
            source,
        };
        let layout = Layout::new(workers, Counter::COUNT);
        let (tmp, file) = create_temporary(path).map_err(io_err)?;
        // Blocks allocated now: a full tmpfs fails here, not with SIGBUS at the first store.
        allocate(&file, layout.len as u64).map_err(io_err)?;
        let map = MmapOptions::new().map_raw(&file).map_err(io_err)?;
        let mapping = StatsMapping { map, layout };
        mapping.write_header_and_names();
        std::fs::rename(&tmp, path).map_err(io_err)?;
        Ok(Self {
            mapping: Arc::new(mapping),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn workers(&self) -> usize {
        self.mapping.layout.workers
    }

    /// The handle worker `i` bumps. Panics if `i` is out of range.
    pub fn worker(&self, i: usize) -> WorkerStats {
        assert!(i < self.mapping.layout.workers, "worker {i} out of range");
        WorkerStats {
            mapping: Arc::clone(&self.mapping),
            worker: i,
        }
    }

    pub fn set_io_path(&self, path: IoPath) {
        self.mapping
            .u32_at(20)
            .store(path as u32, Ordering::Relaxed);
    }
}

/// One worker's counter block.
#[derive(Clone)]
pub struct WorkerStats {
    mapping: Arc<StatsMapping>,
    worker: usize,
}

impl WorkerStats {
    pub fn add(&self, c: Counter, v: u64) {
        if v != 0 {
            self.mapping
                .counter(self.worker, c as usize)
                .fetch_add(v, Ordering::Relaxed);
        }
    }

    /// Adds a whole batch of locally accumulated counts (indexed by `Counter as usize`).
    pub fn add_batch(&self, local: &[u64; Counter::COUNT]) {
        for (i, &v) in local.iter().enumerate() {
            if v != 0 {
                self.mapping
                    .counter(self.worker, i)
                    .fetch_add(v, Ordering::Relaxed);
            }
        }
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.mapping
            .counter(self.worker, c as usize)
            .load(Ordering::Relaxed)
    }
}
