//! A stats-file reader, in any process: checks the header against the file before use.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;

use memmap2::MmapOptions;

use super::{Layout, StatsMapping, HEADER_SIZE, MAGIC, NAME_SIZE, VERSION};
use crate::stats::{IoPath, StatsError, WorkerCounters};

impl StatsMapping {
    /// The layout the header records, if it is sane and fits in the file's first `len` bytes
    /// (and in the mapping); `None` for a truncated or inconsistent file.
    fn recorded_layout(&self, len: usize) -> Option<Layout> {
        let workers = self.u32_at(12).load(Ordering::Relaxed) as usize;
        let counters = self.u32_at(16).load(Ordering::Relaxed) as usize;
        let stride = self.u32_at(28).load(Ordering::Relaxed) as usize;
        let names_off = self.u32_at(32).load(Ordering::Relaxed) as usize;
        let blocks_off = self.u32_at(36).load(Ordering::Relaxed) as usize;
        let end = workers
            .checked_mul(stride)
            .and_then(|b| b.checked_add(blocks_off))?;
        if workers > 4096
            || counters > 4096
            || stride < counters * 8
            || stride % 8 != 0
            || blocks_off % 8 != 0
            || names_off % 4 != 0
            || names_off + counters * NAME_SIZE > blocks_off
            || end > len
            || end > self.map.len()
        {
            return None;
        }
        Some(Layout {
            workers,
            counters,
            stride,
            names_off,
            blocks_off,
            len: end,
        })
    }

    /// The name table: one name per counter slot, up to its first NUL.
    fn read_names(&self) -> Vec<String> {
        let layout = &self.layout;
        let mut names = Vec::with_capacity(layout.counters);
        for i in 0..layout.counters {
            let mut bytes = Vec::with_capacity(NAME_SIZE);
            for w in 0..NAME_SIZE / 4 {
                let v = self
                    .u32_at(layout.names_off + i * NAME_SIZE + w * 4)
                    .load(Ordering::Relaxed);
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            names.push(String::from_utf8_lossy(&bytes[..end]).into_owned());
        }
        names
    }
}

/// A reader in any process. Names come from the file, so readers survive added counters.
pub struct StatsReader {
    mapping: StatsMapping,
    names: Vec<String>,
}

impl StatsReader {
    pub fn open(path: &Path) -> Result<Self, StatsError> {
        let io_err = |source| StatsError::Io {
            path: path.to_owned(),
            source,
        };
        let corrupt = || StatsError::Corrupt(path.to_owned());
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len() as usize;
        if len < HEADER_SIZE {
            return Err(corrupt());
        }
        let map = MmapOptions::new()
            .map_raw_read_only(&file)
            .map_err(io_err)?;
        let unchecked = StatsMapping {
            map,
            layout: Layout::new(0, 0),
        };
        if unchecked.u64_at(0).load(Ordering::Acquire) != MAGIC {
            return Err(StatsError::BadMagic(path.to_owned()));
        }
        let version = unchecked.u32_at(8).load(Ordering::Relaxed);
        if version != VERSION {
            return Err(StatsError::Version(path.to_owned(), version));
        }
        let layout = unchecked.recorded_layout(len).ok_or_else(corrupt)?;
        let mapping = StatsMapping {
            map: unchecked.map,
            layout,
        };
        let names = mapping.read_names();
        Ok(Self { mapping, names })
    }

    pub fn workers(&self) -> usize {
        self.mapping.layout.workers
    }

    pub fn pid(&self) -> u32 {
        self.mapping.u32_at(24).load(Ordering::Relaxed)
    }

    pub fn io_path(&self) -> IoPath {
        IoPath::from_u32(self.mapping.u32_at(20).load(Ordering::Relaxed))
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Every worker's counters now.
    pub fn snapshot(&self) -> Vec<WorkerCounters> {
        (0..self.mapping.layout.workers)
            .map(|w| WorkerCounters {
                worker: w,
                counters: self
                    .names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        (
                            n.clone(),
                            self.mapping.counter(w, i).load(Ordering::Relaxed),
                        )
                    })
                    .collect(),
            })
            .collect()
    }

    /// The sum over workers of the counter `name` (0 when unknown), modulo 2^64 like the
    /// counters themselves: a corrupt or hostile file must not panic a reader (`sum()` does on
    /// overflow in debug builds).
    pub fn total(&self, name: &str) -> u64 {
        self.snapshot()
            .iter()
            .filter_map(|w| w.get(name))
            .fold(0, u64::wrapping_add)
    }
}
