//! A route-table reader: the seqlock copy of the active buffer into a private
//! [`RouteSnapshot`], and following the path when the writer replaces the file.

use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};

use super::file::{map_for_read, FileId};
use super::layout::{load_acquire_u64, BufHeader, Mapping, MAX_CAPACITY, NO_SUBNET};
use crate::route_table::error::{corrupt, Result};
use crate::route_table::{RouteSnapshot, RouteTableError, TableMeta};
use crate::Ipv4Net;

/// Copy attempts before a reader gives up with [`RouteTableError::Contended`].
pub const MAX_COPY_ATTEMPTS: u32 = 1000;
/// Spins before a retrying reader starts yielding the CPU.
const SPIN_ATTEMPTS: u32 = 16;
/// Times a reader follows a replaced file within one refresh before giving up.
const MAX_REOPENS: u32 = 8;
/// How often a reader compares the path's file with the one it maps ([`RouteTableReader::refresh`]).
pub const IDENTITY_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The meta fields of a buffer as loaded (possibly torn until the seqlock validates them).
struct StoredMeta {
    generation: u64,
    network: u32,
    prefix: u32,
    subnet_len: u32,
    our_subnet: u32,
    our_prefix: u32,
    mtu: u32,
    port: u32,
    count: u32,
}

impl StoredMeta {
    fn load(b: &BufHeader) -> Self {
        let r = Ordering::Relaxed;
        Self {
            generation: b.generation.load(r),
            network: b.network.load(r),
            prefix: b.prefix.load(r),
            subnet_len: b.subnet_len.load(r),
            our_subnet: b.our_subnet.load(r),
            our_prefix: b.our_prefix.load(r),
            mtu: b.mtu.load(r),
            port: b.port.load(r),
            count: b.count.load(r),
        }
    }

    /// Checks a consistent (seqlock-validated) copy and turns it into a [`TableMeta`].
    fn validate(&self, path: &Path, capacity: u32) -> Result<TableMeta> {
        let bad = |what: String| corrupt(path, what);
        if self.generation == 0 {
            return Err(bad("active buffer has generation 0".into()));
        }
        let prefix = u8::try_from(self.prefix).unwrap_or(u8::MAX);
        let network = Ipv4Net::new(Ipv4Addr::from(self.network), prefix).ok_or_else(|| {
            bad(format!(
                "network {}/{} is not a network",
                Ipv4Addr::from(self.network),
                self.prefix
            ))
        })?;
        if self.subnet_len < self.prefix || self.subnet_len > 32 {
            return Err(bad(format!(
                "subnet length {} with network {network}",
                self.subnet_len
            )));
        }
        let subnet_len = self.subnet_len as u8;
        let bits = u32::from(subnet_len - prefix);
        if bits > MAX_CAPACITY.trailing_zeros() || self.count != 1 << bits {
            return Err(bad(format!(
                "{} entries for network {network} with subnet length {subnet_len}",
                self.count
            )));
        }
        if self.count > capacity {
            return Err(bad(format!("{} entries > capacity {capacity}", self.count)));
        }
        let our_subnet = if self.our_prefix == NO_SUBNET {
            None
        } else {
            let p = u8::try_from(self.our_prefix).unwrap_or(u8::MAX);
            Some(
                Ipv4Net::new(Ipv4Addr::from(self.our_subnet), p).ok_or_else(|| {
                    bad(format!(
                        "our subnet {}/{} is not a network",
                        Ipv4Addr::from(self.our_subnet),
                        self.our_prefix
                    ))
                })?,
            )
        };
        let port = u16::try_from(self.port).map_err(|_| bad(format!("port {}", self.port)))?;
        Ok(TableMeta {
            network,
            subnet_len,
            our_subnet,
            mtu: self.mtu,
            port,
        })
    }
}

/// A reader: maps the table read-only and copies it into [`RouteSnapshot`]s. One per thread
/// (refreshing needs `&mut self`); `Send`.
pub struct RouteTableReader {
    path: PathBuf,
    map: Mapping,
    /// The mapped file's identity, and when the path was last checked against it.
    file: FileId,
    checked: std::time::Instant,
    /// Receives each copy of the entries; swapped with the snapshot's once the copy is
    /// validated, so a failed refresh leaves the snapshot untouched and steady state does not
    /// allocate.
    copied_entries: Vec<u32>,
}

impl fmt::Debug for RouteTableReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTableReader")
            .field("path", &self.path)
            .field("capacity", &self.map.capacity())
            .field("generation", &self.generation())
            .finish()
    }
}

/// What one attempt to copy the mapped file's active buffer found.
enum CopyOutcome {
    /// A consistent copy of one publish: its entries are in `copied_entries`, `leased` of them
    /// non-zero.
    Copied {
        generation: u64,
        meta: TableMeta,
        leased: usize,
    },
    /// The writer replaced this file: reopen the path.
    Retired,
}

/// One seqlock read of a buffer that was not being written during it.
struct BufferCopy {
    meta: StoredMeta,
    leased: usize,
}

impl RouteTableReader {
    /// Maps the table at `path`. Fails if the file is absent (an `Io` error of kind
    /// `NotFound`) or not a valid table; succeeds on a table not yet published.
    pub fn open(path: &Path) -> Result<Self> {
        let (map, file) = map_for_read(path)?;
        Ok(Self {
            path: path.to_owned(),
            map,
            file,
            checked: std::time::Instant::now(),
            copied_entries: Vec::new(),
        })
    }

    /// The header generation of the mapped file: one atomic load (Acquire). 0 = nothing
    /// published yet.
    #[inline]
    pub fn generation(&self) -> u64 {
        load_acquire_u64(&self.map.header().generation)
    }

    /// Entries per buffer of the mapped file.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> u32 {
        self.map.capacity()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A consistent private copy of the current table; `Err(NotPublished)` before the first
    /// publish.
    pub fn snapshot(&mut self) -> Result<RouteSnapshot> {
        let mut snap = RouteSnapshot::empty();
        self.update(&mut snap)?;
        Ok(snap)
    }

    /// Brings `snap` up to date. Cheap when unchanged: one atomic load and a clock read,
    /// `Ok(false)`. Otherwise copies the current table into `snap` and returns `Ok(true)`,
    /// reopening the path first if the writer replaced the file. Every
    /// [`IDENTITY_CHECK`] it also compares the path's file with the mapped one (one `stat`), so
    /// a file replaced without the old one being marked retired (a writer that died in
    /// between; a reader that opened the old file at that moment) is followed too. On error
    /// `snap` is left as it was, so the caller can keep forwarding with it.
    #[inline]
    pub fn refresh(&mut self, snap: &mut RouteSnapshot) -> Result<bool> {
        if self.generation() == snap.generation() {
            if self.checked.elapsed() < IDENTITY_CHECK {
                return Ok(false);
            }
            return self.follow_replaced(snap);
        }
        self.update(snap)?;
        Ok(true)
    }

    /// Reopens and reloads when the path now names another file than the mapped one; `Ok(true)`
    /// when it did. [`Self::refresh`] calls it every [`IDENTITY_CHECK`].
    #[cold]
    pub fn follow_replaced(&mut self, snap: &mut RouteSnapshot) -> Result<bool> {
        self.checked = std::time::Instant::now();
        let now = match fs::metadata(&self.path) {
            Ok(m) => FileId::of(&m),
            // Gone for a moment (or unreadable): keep the mapping we have.
            Err(_) => return Ok(false),
        };
        if now == self.file {
            return Ok(false);
        }
        let (map, file) = map_for_read(&self.path)?;
        self.map = map;
        self.file = file;
        self.update(snap)?;
        Ok(true)
    }

    /// Copies the current table into `snap`, following retired files; on error `snap` is
    /// left as it was.
    #[inline(never)]
    fn update(&mut self, snap: &mut RouteSnapshot) -> Result<()> {
        let mut reopens = 0;
        loop {
            match self.copy_active()? {
                CopyOutcome::Copied {
                    generation,
                    meta,
                    leased,
                } => {
                    snap.install(generation, meta, &mut self.copied_entries, leased);
                    return Ok(());
                }
                CopyOutcome::Retired => {
                    reopens += 1;
                    if reopens > MAX_REOPENS {
                        return Err(RouteTableError::Contended {
                            path: self.path.clone(),
                            attempts: reopens,
                        });
                    }
                    (self.map, self.file) = map_for_read(&self.path)?;
                }
            }
        }
    }

    /// The seqlock read of the active buffer (the protocol in [`crate::route_table`]),
    /// retried while the writer rewrites it, at most [`MAX_COPY_ATTEMPTS`] times.
    fn copy_active(&mut self) -> Result<CopyOutcome> {
        for attempt in 0..MAX_COPY_ATTEMPTS {
            if attempt > 0 {
                if attempt < SPIN_ATTEMPTS {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            let header = self.map.header();
            let generation = load_acquire_u64(&header.generation);
            if header.retired.load(Ordering::Relaxed) != 0 {
                return Ok(CopyOutcome::Retired);
            }
            if generation == 0 {
                return Err(RouteTableError::NotPublished {
                    path: self.path.clone(),
                });
            }
            let active = header.active.load(Ordering::Relaxed);
            if active > 1 {
                return Err(corrupt(&self.path, format!("active buffer index {active}")));
            }
            // Makes the buffer write that preceded the `active` store visible, so the copy is
            // not older than `generation`.
            fence(Ordering::Acquire);
            let Some(copy) = self.copy_buffer(active) else {
                continue;
            };
            let meta = copy.meta.validate(&self.path, self.map.capacity())?;
            return Ok(CopyOutcome::Copied {
                generation: copy.meta.generation,
                meta,
                leased: copy.leased,
            });
        }
        Err(RouteTableError::Contended {
            path: self.path.clone(),
            attempts: MAX_COPY_ATTEMPTS,
        })
    }

    /// Copies buffer `which`'s meta and entries (into `copied_entries`) under its seqlock;
    /// `None` when the writer was writing it meanwhile.
    fn copy_buffer(&mut self, which: u32) -> Option<BufferCopy> {
        let (buf, slots) = self.map.buffer(which);
        let seq = load_acquire_u64(&buf.seq);
        if seq % 2 == 1 {
            return None;
        }
        let meta = StoredMeta::load(buf);
        let mut leased = 0;
        if meta.count <= self.map.capacity() {
            self.copied_entries.clear();
            self.copied_entries
                .extend(slots[..meta.count as usize].iter().map(|slot| {
                    let v = slot.load(Ordering::Relaxed);
                    leased += usize::from(v != 0);
                    v
                }));
        }
        fence(Ordering::Acquire);
        (buf.seq.load(Ordering::Relaxed) == seq).then_some(BufferCopy { meta, leased })
    }
}
