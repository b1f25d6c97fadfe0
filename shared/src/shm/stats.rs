//! The stats file in memory (layout specified in [`crate::stats`]): the writer that creates
//! it and hands each worker its block, and readers in any process.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};

use super::file::allocate;
use crate::stats::{Counter, IoPath, StatsError, WorkerCounters};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_fit() {
        let mut seen = std::collections::HashSet::new();
        for c in Counter::ALL {
            assert!(c.name().len() < NAME_SIZE, "{}", c.name());
            assert!(seen.insert(c.name()));
            assert_eq!(Counter::ALL[*c as usize], *c);
        }
    }

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/dp.stats");
        let w = StatsWriter::create(&p, 3).unwrap();
        w.set_io_path(IoPath::IoUring);
        let w1 = w.worker(1);
        w1.add(Counter::UdpRxPackets, 5);
        let mut local = [0u64; Counter::COUNT];
        local[Counter::DropSpoofedSrc as usize] = 2;
        local[Counter::UdpRxPackets as usize] = 1;
        w.worker(2).add_batch(&local);
        let r = StatsReader::open(&p).unwrap();
        assert_eq!(r.workers(), 3);
        assert_eq!(r.io_path(), IoPath::IoUring);
        assert_eq!(r.pid(), std::process::id());
        let s = r.snapshot();
        assert_eq!(s[1].get("udp_rx_packets"), Some(5));
        assert_eq!(s[2].get("drop_spoofed_src"), Some(2));
        assert_eq!(s[0].get("udp_rx_packets"), Some(0));
        assert_eq!(r.total("udp_rx_packets"), 6);
        // Live: later adds are visible through the same reader.
        w1.add(Counter::UdpRxPackets, 1);
        assert_eq!(r.total("udp_rx_packets"), 7);
        assert_eq!(r.names().len(), Counter::COUNT);
    }

    /// Counters near 2^64 in two workers wrap in `total` instead of overflowing (a panic in
    /// debug builds).
    #[test]
    fn total_of_huge_counters_wraps_instead_of_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dp.stats");
        let w = StatsWriter::create(&p, 2).unwrap();
        w.worker(0).add(Counter::UdpRxPackets, u64::MAX);
        w.worker(1).add(Counter::UdpRxPackets, 3);
        let r = StatsReader::open(&p).unwrap();
        assert_eq!(r.total("udp_rx_packets"), 2);
    }

    #[test]
    fn rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, [0u8; 10]).unwrap();
        assert!(matches!(StatsReader::open(&p), Err(StatsError::Corrupt(_))));
        std::fs::write(&p, [0u8; 200]).unwrap();
        assert!(matches!(
            StatsReader::open(&p),
            Err(StatsError::BadMagic(_))
        ));
        let w = StatsWriter::create(&p, 2).unwrap();
        drop(w);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 8);
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(StatsReader::open(&p), Err(StatsError::Corrupt(_))));
        assert!(StatsReader::open(&dir.path().join("absent")).is_err());
    }

    /// The temporary file is created new and never through a symlink: a link planted at its
    /// name (pointing at a file of someone else's) is removed, its target left untouched.
    #[test]
    fn a_symlink_at_the_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dp.stats");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let tmp = dir
            .path()
            .join(format!("dp.stats.tmp{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let w = StatsWriter::create(&path, 1).unwrap();
        w.worker(0).add(Counter::DropSpoofedSrc, 3);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!tmp.exists() && tmp.symlink_metadata().is_err());
        assert!(!path.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(
            StatsReader::open(&path)
                .unwrap()
                .total(Counter::DropSpoofedSrc.name()),
            3
        );
    }
}
