//! The stats file in memory (layout specified in [`crate::stats`]): its layout and the
//! checked atomic views into a mapping of it, for the [`writer`] and the [`reader`].

use std::sync::atomic::{AtomicU32, AtomicU64};

use memmap2::MmapRaw;

mod reader;
mod writer;

pub use self::reader::StatsReader;
pub use self::writer::{StatsWriter, WorkerStats};

#[cfg(test)]
mod tests;

/// `b"FDPSTAT1"` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FDPSTAT1");
/// The stats layout version this module reads and writes.
pub const VERSION: u32 = 1;
const HEADER_SIZE: usize = 64;
const NAME_SIZE: usize = 32;
const CACHE_LINE: usize = 64;

/// Where things are in a stats file: the sizes and offsets its header records.
struct Layout {
    workers: usize,
    counters: usize,
    stride: usize,
    names_off: usize,
    blocks_off: usize,
    len: usize,
}

impl Layout {
    fn new(workers: usize, counters: usize) -> Self {
        let stride = (counters * 8).div_ceil(CACHE_LINE) * CACHE_LINE;
        let names_off = HEADER_SIZE;
        let blocks_off = (names_off + counters * NAME_SIZE).div_ceil(CACHE_LINE) * CACHE_LINE;
        Self {
            workers,
            counters,
            stride,
            names_off,
            blocks_off,
            len: blocks_off + workers * stride,
        }
    }
}

/// A mapping plus the validated layout; all atomic accessors go through here.
struct StatsMapping {
    map: MmapRaw,
    layout: Layout,
}

impl StatsMapping {
    /// The 4-byte field at byte `off`. Panics unless `off` is 4-aligned and in bounds.
    fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off % 4 == 0 && off + 4 <= self.map.len());
        // SAFETY: the mapping is page aligned and lives as long as `self`; `off` is 4-aligned
        // and in bounds (asserted). Concurrent access from other processes only goes through
        // atomics, so viewing these bytes as an AtomicU32 is sound.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU32) }
    }

    /// The 8-byte field at byte `off`. Panics unless `off` is 8-aligned and in bounds.
    fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off % 8 == 0 && off + 8 <= self.map.len());
        // SAFETY: as in `u32_at`, with 8-byte alignment asserted.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU64) }
    }

    /// Counter `slot` of worker `worker`. Panics when either is out of range.
    fn counter(&self, worker: usize, slot: usize) -> &AtomicU64 {
        assert!(worker < self.layout.workers && slot < self.layout.counters);
        self.u64_at(self.layout.blocks_off + worker * self.layout.stride + slot * 8)
    }
}
