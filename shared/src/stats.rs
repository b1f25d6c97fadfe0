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

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};

/// `b"FDPSTAT1"` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FDPSTAT1");
pub const VERSION: u32 = 1;
const HEADER_SIZE: usize = 64;
const NAME_SIZE: usize = 32;
const CACHE_LINE: usize = 64;

macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// One per-worker counter. The discriminant is the slot index in a worker block.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Counter { $($(#[$doc])* $variant,)* }
        impl Counter {
            /// Every counter, in slot order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];
            /// Number of counters.
            pub const COUNT: usize = Self::ALL.len();
            /// The stable name (as in the file's name table and in metrics).
            pub fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }
        }
    };
}

counters! {
    /// Packets read from the TUN device.
    TunRxPackets = "tun_rx_packets",
    TunRxBytes = "tun_rx_bytes",
    /// Datagrams sent to peers.
    UdpTxPackets = "udp_tx_packets",
    UdpTxBytes = "udp_tx_bytes",
    /// Of those, datagrams that left in a gathered send: single packets read for one peer in
    /// one round, sent as one UDP_SEGMENT send.
    UdpTxGathered = "udp_tx_gathered",
    /// Datagrams received from peers (before checks).
    UdpRxPackets = "udp_rx_packets",
    UdpRxBytes = "udp_rx_bytes",
    /// Packets written into the TUN device (from peers; ICMP errors are counted separately).
    TunTxPackets = "tun_tx_packets",
    TunTxBytes = "tun_tx_bytes",
    /// Batches processed (one per ring submit / poll wake-up).
    Batches = "batches",
    /// ICMP net-unreachable packets written back into the TUN device.
    IcmpUnreachableSent = "icmp_unreachable_sent",
    /// ICMP net-unreachable suppressed by the rate limiter.
    IcmpRateLimited = "icmp_rate_limited",
    /// I/O errors per direction (the packet is lost).
    TunRxErrors = "tun_rx_errors",
    UdpTxErrors = "udp_tx_errors",
    UdpRxErrors = "udp_rx_errors",
    TunTxErrors = "tun_tx_errors",
    /// TUN → UDP drops.
    DropTunMalformed = "drop_tun_malformed",
    DropTunTtlExpired = "drop_tun_ttl_expired",
    DropNoRoute = "drop_no_route",
    DropTunDstLocal = "drop_tun_dst_local",
    /// UDP → TUN drops (receive checks).
    DropTooShort = "drop_too_short",
    DropNotIpv4 = "drop_not_ipv4",
    DropBadIhl = "drop_bad_ihl",
    DropBadLength = "drop_bad_length",
    DropUnknownSender = "drop_unknown_sender",
    /// The outer source is this host's own lease address: a local process injecting.
    DropFromSelf = "drop_from_self",
    DropDstNotLocal = "drop_dst_not_local",
    DropSpoofedSrc = "drop_spoofed_src",
    DropRxTtlExpired = "drop_rx_ttl_expired",
    /// UDP → TUN: the datagram arrived on an interface that is not the underlay (a local
    /// bridge, the TUN device, loopback): a local container or process spoofing a peer.
    DropNotUnderlay = "drop_not_underlay",
    /// TUN → UDP: the peer's public IP lies inside the overlay network (sending there would
    /// loop the packet back into the TUN device).
    DropPeerInNetwork = "drop_peer_in_network",
    /// TUN → UDP: the send was refused with EMSGSIZE (DF is set on outer packets: a datagram
    /// larger than the path MTU is dropped here, never fragmented).
    UdpTxTooBig = "udp_tx_too_big",
}

/// Which I/O path the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum IoPath {
    Unknown = 0,
    IoUring = 1,
    Fallback = 2,
}

impl IoPath {
    fn from_u32(v: u32) -> Self {
        match v {
            1 => IoPath::IoUring,
            2 => IoPath::Fallback,
            _ => IoPath::Unknown,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            IoPath::Unknown => "unknown",
            IoPath::IoUring => "io_uring",
            IoPath::Fallback => "fallback",
        }
    }
}

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
struct Mapped {
    map: MmapRaw,
    layout: Layout,
}

impl Mapped {
    fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off % 4 == 0 && off + 4 <= self.map.len());
        // SAFETY: the mapping is page aligned and lives as long as `self`; `off` is 4-aligned
        // and in bounds (asserted). Concurrent access from other processes only goes through
        // atomics, so viewing these bytes as an AtomicU32 is sound.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU32) }
    }
    fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off % 8 == 0 && off + 8 <= self.map.len());
        // SAFETY: as in `u32_at`, with 8-byte alignment asserted.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU64) }
    }
    fn counter(&self, worker: usize, idx: usize) -> &AtomicU64 {
        assert!(worker < self.layout.workers && idx < self.layout.counters);
        self.u64_at(self.layout.blocks_off + worker * self.layout.stride + idx * 8)
    }
}

/// The data plane's side: creates the file and hands one [`WorkerStats`] to each worker.
pub struct StatsWriter {
    inner: Arc<Mapped>,
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
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io_err)?;
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
            .open(&tmp)
            .map_err(io_err)?;
        // Blocks allocated now: a full tmpfs fails here, not with SIGBUS at the first store.
        crate::shm_file::allocate(&file, layout.len as u64).map_err(io_err)?;
        let map = MmapOptions::new().map_raw(&file).map_err(io_err)?;
        let m = Mapped { map, layout };
        m.u32_at(8).store(VERSION, Ordering::Relaxed);
        m.u32_at(12).store(workers as u32, Ordering::Relaxed);
        m.u32_at(16).store(Counter::COUNT as u32, Ordering::Relaxed);
        m.u32_at(24).store(std::process::id(), Ordering::Relaxed);
        m.u32_at(28)
            .store(m.layout.stride as u32, Ordering::Relaxed);
        m.u32_at(32)
            .store(m.layout.names_off as u32, Ordering::Relaxed);
        m.u32_at(36)
            .store(m.layout.blocks_off as u32, Ordering::Relaxed);
        for (i, c) in Counter::ALL.iter().enumerate() {
            let name = c.name().as_bytes();
            let off = m.layout.names_off + i * NAME_SIZE;
            // Names are written 4 bytes at a time through the atomic view, NUL padded.
            for w in 0..NAME_SIZE / 4 {
                let mut b = [0u8; 4];
                for (k, slot) in b.iter_mut().enumerate() {
                    *slot = name.get(w * 4 + k).copied().unwrap_or(0);
                }
                m.u32_at(off + w * 4)
                    .store(u32::from_le_bytes(b), Ordering::Relaxed);
            }
        }
        m.u64_at(0).store(MAGIC, Ordering::Release);
        std::fs::rename(&tmp, path).map_err(io_err)?;
        Ok(Self {
            inner: Arc::new(m),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn workers(&self) -> usize {
        self.inner.layout.workers
    }

    /// The handle worker `i` bumps. Panics if `i` is out of range.
    pub fn worker(&self, i: usize) -> WorkerStats {
        assert!(i < self.inner.layout.workers, "worker {i} out of range");
        WorkerStats {
            inner: Arc::clone(&self.inner),
            worker: i,
        }
    }

    pub fn set_io_path(&self, path: IoPath) {
        self.inner.u32_at(20).store(path as u32, Ordering::Relaxed);
    }
}

/// One worker's counter block.
#[derive(Clone)]
pub struct WorkerStats {
    inner: Arc<Mapped>,
    worker: usize,
}

impl WorkerStats {
    pub fn add(&self, c: Counter, v: u64) {
        if v != 0 {
            self.inner
                .counter(self.worker, c as usize)
                .fetch_add(v, Ordering::Relaxed);
        }
    }

    /// Adds a whole batch of locally accumulated counts (indexed by `Counter as usize`).
    pub fn add_batch(&self, local: &[u64; Counter::COUNT]) {
        for (i, &v) in local.iter().enumerate() {
            if v != 0 {
                self.inner
                    .counter(self.worker, i)
                    .fetch_add(v, Ordering::Relaxed);
            }
        }
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.inner
            .counter(self.worker, c as usize)
            .load(Ordering::Relaxed)
    }
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

/// A reader in any process. Names come from the file, so readers survive added counters.
pub struct StatsReader {
    inner: Mapped,
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
        let probe = Mapped {
            map,
            layout: Layout::new(0, 0),
        };
        if probe.u64_at(0).load(Ordering::Acquire) != MAGIC {
            return Err(StatsError::BadMagic(path.to_owned()));
        }
        let version = probe.u32_at(8).load(Ordering::Relaxed);
        if version != VERSION {
            return Err(StatsError::Version(path.to_owned(), version));
        }
        let workers = probe.u32_at(12).load(Ordering::Relaxed) as usize;
        let counters = probe.u32_at(16).load(Ordering::Relaxed) as usize;
        let stride = probe.u32_at(28).load(Ordering::Relaxed) as usize;
        let names_off = probe.u32_at(32).load(Ordering::Relaxed) as usize;
        let blocks_off = probe.u32_at(36).load(Ordering::Relaxed) as usize;
        let end = workers
            .checked_mul(stride)
            .and_then(|b| b.checked_add(blocks_off))
            .ok_or_else(corrupt)?;
        if workers > 4096
            || counters > 4096
            || stride < counters * 8
            || stride % 8 != 0
            || blocks_off % 8 != 0
            || names_off % 4 != 0
            || names_off + counters * NAME_SIZE > blocks_off
            || end > len
            || end > probe.map.len()
        {
            return Err(corrupt());
        }
        let inner = Mapped {
            map: probe.map,
            layout: Layout {
                workers,
                counters,
                stride,
                names_off,
                blocks_off,
                len: end,
            },
        };
        let mut names = Vec::with_capacity(counters);
        for i in 0..counters {
            let mut raw = Vec::with_capacity(NAME_SIZE);
            for w in 0..NAME_SIZE / 4 {
                let v = inner
                    .u32_at(names_off + i * NAME_SIZE + w * 4)
                    .load(Ordering::Relaxed);
                raw.extend_from_slice(&v.to_le_bytes());
            }
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            names.push(String::from_utf8_lossy(&raw[..end]).into_owned());
        }
        Ok(Self { inner, names })
    }

    pub fn workers(&self) -> usize {
        self.inner.layout.workers
    }

    pub fn pid(&self) -> u32 {
        self.inner.u32_at(24).load(Ordering::Relaxed)
    }

    pub fn io_path(&self) -> IoPath {
        IoPath::from_u32(self.inner.u32_at(20).load(Ordering::Relaxed))
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Every worker's counters now.
    pub fn snapshot(&self) -> Vec<WorkerCounters> {
        (0..self.inner.layout.workers)
            .map(|w| WorkerCounters {
                worker: w,
                counters: self
                    .names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.clone(), self.inner.counter(w, i).load(Ordering::Relaxed)))
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

    /// Regression (found while writing the `shm_readers` fuzz target): counters near 2^64 in
    /// two workers made `total` panic with "attempt to add with overflow" in debug builds.
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
