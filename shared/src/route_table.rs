//! The route table shared by the control plane (one writer, `flanneld`) and the data plane
//! (lock-free readers: one `flannel-dataplane` worker per core, and the `routes` dump tool).
//!
//! # Contract
//!
//! The table is a file that should live on tmpfs (e.g. `/run/flannel/routes`): it is memory,
//! not storage, and it outlives either process, so the data plane keeps forwarding with the
//! last table while the control plane restarts, and a restarted data plane finds the table
//! the running control plane published. Nothing is ever `fsync`ed; on a disk-backed file
//! system it still works (the page cache is shared) but costs write-back for nothing.
//!
//! All subnets of a flannel network have one length, so a lookup needs no trie:
//! `index = (dst - network) >> (32 - subnet_len)` into a flat array of
//! `2^(subnet_len - prefix)` entries, each the public (underlay) IPv4 of the host holding the
//! lease for that subnet, or 0 for "no lease". A `/16` of `/24`s is 256 entries, a `/8` of
//! `/24`s 65,536.
//!
//! ## File layout (version 1)
//!
//! Native byte order (the file never leaves the host). `C` = capacity, entries per buffer,
//! fixed when the file is created. Every field below is accessed only through atomics.
//!
//! ```text
//! header, offset 0 (one 4096-byte page, bytes 32.. are zero):
//!    0  u64  magic        b"FLNLRTB1" (the bytes, in file order)
//!    8  u32  version      1
//!   12  u32  capacity     C, 1 ..= 2^24
//!   16  u64  generation   last published generation; 0 = nothing published yet
//!   24  u32  active       which buffer (0 or 1) holds `generation`
//!   28  u32  retired      1 = this file was replaced by a new one: reopen the path
//! buffer b (b = 0, 1) at offset 4096 + b * S,  S = round_up(64 + 4*C, 4096):
//!    0  u64  seq          seqlock sequence: odd while the writer is writing this buffer
//!    8  u64  generation   the generation this buffer's contents belong to
//!   16  u32  network      network address (host order)
//!   20  u32  prefix       network prefix length
//!   24  u32  subnet_len   length of every subnet
//!   28  u32  our_subnet   address of the writer host's own subnet (host order)
//!   32  u32  our_prefix   its prefix length; 0xffff_ffff = no own subnet
//!   36  u32  mtu
//!   40  u32  port         VXLAN/UDP port (0..=65535)
//!   44  u32  count        number of entries in use = 2^(subnet_len - prefix) <= C
//!   48  16 bytes reserved (zero)
//!   64  u32 × C entries   public IPv4 (host order) of subnet i's lease holder; 0 = no lease
//! file size = 4096 + 2 * S
//! ```
//!
//! Sizes: C = 256 → 12 KiB; C = 65,536 (the default capacity, a /8 of /24s) → 524 KiB
//! (536,576 bytes); C = 2^24 (the maximum) → 128 MiB. The file is created sparse, so tmpfs only
//! allocates the pages the writer touches (≈ 2 × 4 × `count` bytes).
//!
//! ## Protocol and memory ordering
//!
//! A double-buffered seqlock. The writer (exactly one, enforced by an exclusive `flock` on
//! `<path>.lock`) publishes generation `g` by:
//! 1. picking the buffer that is *not* `active`;
//! 2. `seq += 1` (odd, Relaxed) then a Release fence;
//! 3. writing meta (including `generation = g`) and all `count` entries (Relaxed stores);
//! 4. `seq += 1` (even, Release);
//! 5. `active = b` (Release), then header `generation = g` (Release).
//!
//! A reader's fast path is one load of the header `generation` (Relaxed + Acquire fence) and a
//! compare with its snapshot's generation. When it differs, the reader loads `retired`,
//! `active`, fences (Acquire), loads the buffer's `seq` (Acquire), copies meta and entries into
//! private memory (Relaxed loads), fences (Acquire) and loads `seq` again: if it was odd or
//! changed, the copy is discarded and retried (spin, then `yield`; after
//! [`MAX_COPY_ATTEMPTS`] the reader gives up with [`RouteTableError::Contended`] and keeps its
//! previous snapshot). Because the writer always writes the buffer readers are not directed
//! to, a copy is only retried when the writer completes two publishes during it.
//!
//! Deviation from a header-only generation: each buffer records the generation it holds, and
//! a snapshot takes its generation from the buffer, read under the same seqlock as the
//! entries. So a snapshot's generation always names exactly the publish its contents came
//! from (no need to compare the header generation before and after the copy), and it is
//! never older than the header generation the reader observed first (the Acquire fences make
//! the `active` store, and the buffer write before it, visible), so the generations a reader
//! sees are monotonic.
//!
//! Readers map the file read-only and use only Relaxed loads (of at most 8 bytes) plus
//! fences: the standard library documents such "sufficiently small" Relaxed loads as valid on
//! read-only memory (8 bytes on 64-bit targets). On other targets readers map the file
//! read-write (so they need write permission), but still never store.
//!
//! ## Replacing the file
//!
//! The writer reuses an existing valid file (same magic, version, a sane header) whatever its
//! capacity, continuing its generations; it never truncates a file, since readers may have it
//! mapped and would get SIGBUS. When a publish needs more entries than the capacity (the
//! network config changed), or the file at the path is not a valid table, the writer creates
//! `<path>.tmp.<pid>.<n>` (mode 0644), writes the new table into it, renames it over the path,
//! then (for a valid old file) stores `retired = 1` and bumps the old header's `generation`
//! (Release). Readers notice the generation change on their next refresh, see `retired`, and
//! reopen the path. Generations continue across the replacement.
//!
//! ## What can fail
//!
//! Opening: I/O errors (with the path; a missing file is an `Io` error of kind `NotFound`),
//! a file too short for its header or capacity ([`RouteTableError::TooSmall`]), wrong magic or
//! version, an insane header ([`RouteTableError::Corrupt`]), a second writer
//! ([`RouteTableError::Locked`]). Reading: nothing published yet
//! ([`RouteTableError::NotPublished`]), [`RouteTableError::Contended`], a buffer whose meta is
//! inconsistent (`Corrupt`), reopen errors after a replacement. Publishing: invalid meta or
//! routes (nothing is published; [`RouteTableWriter::publish_skipping`] instead leaves refused
//! routes out and reports them), a table larger than 2^24 entries, I/O errors creating a
//! replacement file (the old table stays published). A malformed file yields an error, never a
//! panic or undefined behaviour — except that a file truncated by someone else *after* it was
//! mapped raises SIGBUS on access, as with any mapping; nothing in this module truncates.

use std::fmt::{self, Write as _};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use crate::Ipv4Net;

/// `b"FLNLRTB1"` as stored (native order, so the file starts with these bytes).
pub const MAGIC: u64 = u64::from_ne_bytes(*b"FLNLRTB1");
/// The layout version this module reads and writes.
pub const LAYOUT_VERSION: u32 = 1;
/// Most entries a buffer can hold (2^24: e.g. a /8 of /32s); the file is then 128 MiB.
pub const MAX_CAPACITY: u32 = 1 << 24;
/// Capacity of a file the writer creates before it knows the network: a /8 of /24s.
pub const DEFAULT_CAPACITY: u32 = 1 << 16;
/// Copy attempts before a reader gives up with [`RouteTableError::Contended`].
pub const MAX_COPY_ATTEMPTS: u32 = 1000;

const HEADER_SIZE: usize = 4096;
const BUF_HEADER_SIZE: usize = 64;
const PAGE: usize = 4096;
const NO_SUBNET: u32 = u32::MAX;
/// Spins before a retrying reader starts yielding the CPU.
const SPIN_ATTEMPTS: u32 = 16;
/// Times a reader follows a replaced file within one refresh before giving up.
const MAX_REOPENS: u32 = 8;

/// The file header. `repr(C)`, all atomics: see the module docs for the layout.
#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    capacity: AtomicU32,
    generation: AtomicU64,
    active: AtomicU32,
    retired: AtomicU32,
}

/// The header of one buffer; `capacity` `AtomicU32` entries follow it.
#[repr(C)]
struct BufHeader {
    seq: AtomicU64,
    generation: AtomicU64,
    network: AtomicU32,
    prefix: AtomicU32,
    subnet_len: AtomicU32,
    our_subnet: AtomicU32,
    our_prefix: AtomicU32,
    mtu: AtomicU32,
    port: AtomicU32,
    count: AtomicU32,
    _reserved: [AtomicU32; 4],
}

const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<Header>() == 32 && size_of::<Header>() <= HEADER_SIZE);
    assert!(offset_of!(Header, version) == 8);
    assert!(offset_of!(Header, capacity) == 12);
    assert!(offset_of!(Header, generation) == 16);
    assert!(offset_of!(Header, active) == 24);
    assert!(offset_of!(Header, retired) == 28);
    assert!(size_of::<BufHeader>() == BUF_HEADER_SIZE);
    assert!(offset_of!(BufHeader, generation) == 8);
    assert!(offset_of!(BufHeader, network) == 16);
    assert!(offset_of!(BufHeader, our_prefix) == 32);
    assert!(offset_of!(BufHeader, count) == 44);
    assert!(align_of::<Header>() <= 8 && align_of::<BufHeader>() <= 8);
    assert!(HEADER_SIZE % 64 == 0 && PAGE % 64 == 0);
};

/// Bytes of one buffer (header + `capacity` entries), rounded up to a 4096-byte page.
fn buffer_stride(capacity: u32) -> usize {
    let raw = BUF_HEADER_SIZE + 4 * capacity as usize;
    raw.div_ceil(PAGE) * PAGE
}

/// Size in bytes of a route-table file with the given capacity (entries per buffer).
pub fn table_file_size(capacity: u32) -> u64 {
    (HEADER_SIZE + 2 * buffer_stride(capacity)) as u64
}

/// What the control plane publishes besides the routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    /// The flannel network (`Network` in the config).
    pub network: Ipv4Net,
    /// Length of every subnet (`SubnetLen`).
    pub subnet_len: u8,
    /// The writer host's own lease, if it has one.
    pub our_subnet: Option<Ipv4Net>,
    pub mtu: u32,
    /// The VXLAN/UDP port.
    pub port: u16,
}

/// One lease: `subnet` is reached through the host at `public_ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
}

/// Everything that can go wrong opening, publishing or reading a route table.
#[derive(Debug, thiserror::Error)]
pub enum RouteTableError {
    #[error("route table {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("route table {}: not a route table (magic {found:#018x}, expected {MAGIC:#018x})", path.display())]
    BadMagic { path: PathBuf, found: u64 },
    #[error("route table {}: layout version {found}, this build reads version {LAYOUT_VERSION}", path.display())]
    BadVersion { path: PathBuf, found: u32 },
    #[error("route table {}: file is {len} bytes, needs at least {needed}", path.display())]
    TooSmall {
        path: PathBuf,
        len: u64,
        needed: u64,
    },
    #[error("route table {}: corrupt: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    #[error("route table {}: nothing published yet (generation 0)", path.display())]
    NotPublished { path: PathBuf },
    /// `path` is the lock file; someone else made it.
    #[error("route table lock {} is not a regular file of this user (owner uid {uid}): remove it", path.display())]
    LockNotOurs { path: PathBuf, uid: u32 },
    /// `path` is the lock file, `<table path>.lock`.
    #[error("route table lock {} is held by another writer", path.display())]
    Locked { path: PathBuf },
    #[error("route table {}: the writer kept rewriting the table; gave up after {attempts} attempts", path.display())]
    Contended { path: PathBuf, attempts: u32 },
    #[error("invalid table meta: {what}")]
    InvalidMeta { what: String },
    #[error("route {subnet} -> {public_ip} is outside the network {network}")]
    RouteOutsideNetwork {
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        network: Ipv4Net,
    },
    #[error("route {subnet} -> {public_ip}: prefix /{} but the subnet length is /{subnet_len}", subnet.prefix())]
    WrongSubnetLen {
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        subnet_len: u8,
    },
    #[error("route {subnet}: public IP 0.0.0.0 is not a host")]
    UnspecifiedPublicIp { subnet: Ipv4Net },
    #[error("network {network} with subnet length /{subnet_len} has {entries} subnets, more than the maximum {MAX_CAPACITY}")]
    TooManyEntries {
        network: Ipv4Net,
        subnet_len: u8,
        entries: u64,
    },
}

type Result<T> = std::result::Result<T, RouteTableError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RouteTableError + '_ {
    move |source| RouteTableError::Io {
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, what: String) -> RouteTableError {
    RouteTableError::Corrupt {
        path: path.to_owned(),
        what,
    }
}

/// A Relaxed load followed by an Acquire fence: an Acquire load that is also valid on
/// read-only memory (see the module docs).
#[inline]
fn load_acquire_u64(a: &AtomicU64) -> u64 {
    let v = a.load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    v
}

/// A validated mapping of a route-table file.
///
/// Invariant (checked by [`Mapping::validate`] before any cast): the mapping is at least
/// `table_file_size(capacity)` bytes long, its base is 64-byte aligned, the header says
/// `MAGIC`, `LAYOUT_VERSION` and `capacity`, and `1 <= capacity <= MAX_CAPACITY`.
struct Mapping {
    raw: MmapRaw,
    capacity: u32,
    stride: usize,
}

impl Mapping {
    /// Checks the size, alignment and header of `raw` (from the file at `path`).
    fn validate(path: &Path, raw: MmapRaw) -> Result<Self> {
        let len = raw.len();
        if len < HEADER_SIZE {
            return Err(RouteTableError::TooSmall {
                path: path.to_owned(),
                len: len as u64,
                needed: HEADER_SIZE as u64,
            });
        }
        if (raw.as_ptr() as usize) % 64 != 0 {
            return Err(corrupt(
                path,
                format!("mapping at {:p} is not aligned", raw.as_ptr()),
            ));
        }
        // SAFETY: the mapping is at least HEADER_SIZE (>= size_of::<Header>()) bytes and
        // 64-byte aligned (checked just above); `Header` is repr(C) and made only of atomics,
        // which are valid for every bit pattern and have the size and alignment of the
        // plain integers. All processes access this memory only through atomics, so there
        // is no data race. The reference lives no longer than `raw`, which is moved into
        // the returned `Mapping` (a move does not move the mapped memory).
        let header = unsafe { &*raw.as_ptr().cast::<Header>() };
        let magic = header.magic.load(Ordering::Relaxed);
        if magic != MAGIC {
            return Err(RouteTableError::BadMagic {
                path: path.to_owned(),
                found: magic,
            });
        }
        let version = header.version.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION {
            return Err(RouteTableError::BadVersion {
                path: path.to_owned(),
                found: version,
            });
        }
        let capacity = header.capacity.load(Ordering::Relaxed);
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(corrupt(
                path,
                format!("capacity {capacity} is not 1..={MAX_CAPACITY}"),
            ));
        }
        let needed = table_file_size(capacity);
        if (len as u64) < needed {
            return Err(RouteTableError::TooSmall {
                path: path.to_owned(),
                len: len as u64,
                needed,
            });
        }
        Ok(Self {
            raw,
            capacity,
            stride: buffer_stride(capacity),
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: see the type's invariant: the mapping holds a whole, aligned header;
        // atomics are valid for any bits and all sharers use atomics only; the returned
        // reference borrows `self`, which owns the mapping.
        unsafe { &*self.raw.as_ptr().cast::<Header>() }
    }

    /// Buffer `which & 1`: its header and its `capacity` entries.
    fn buffer(&self, which: u32) -> (&BufHeader, &[AtomicU32]) {
        let offset = HEADER_SIZE + (which & 1) as usize * self.stride;
        // SAFETY: by the type's invariant the mapping is at least
        // HEADER_SIZE + 2 * stride bytes and stride >= BUF_HEADER_SIZE + 4 * capacity, so
        // the buffer header and its `capacity` u32 entries at `offset` are in bounds.
        // `offset` is a multiple of 64 (HEADER_SIZE and stride are multiples of 4096) and the
        // base is 64-byte aligned, so the u64 fields and the u32 entries are aligned.
        // `BufHeader` is repr(C) of atomics and `AtomicU32` has the layout of `u32`; atomics
        // are valid for every bit pattern and every process accesses this memory only
        // through atomics, so there is no data race. The references borrow `self`, which
        // owns the mapping.
        unsafe {
            let base = self.raw.as_ptr().add(offset);
            let header = &*base.cast::<BufHeader>();
            let entries = std::slice::from_raw_parts(
                base.add(BUF_HEADER_SIZE).cast::<AtomicU32>(),
                self.capacity as usize,
            );
            (header, entries)
        }
    }
}

/// Maps the file at `path` for reading and validates it.
/// Which file a mapping came from: a path replaced by another file has another identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

fn map_for_read(path: &Path) -> Result<(Mapping, FileId)> {
    // On 64-bit targets, Relaxed loads of <= 8 bytes work on read-only memory; elsewhere a
    // 64-bit atomic load may be a read-modify-write, so map read-write (readers never store).
    let writable = cfg!(not(target_pointer_width = "64"));
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    let len = meta.len();
    if len < HEADER_SIZE as u64 {
        return Err(RouteTableError::TooSmall {
            path: path.to_owned(),
            len,
            needed: HEADER_SIZE as u64,
        });
    }
    let raw = if writable {
        MmapOptions::new().map_raw(&file)
    } else {
        MmapOptions::new().map_raw_read_only(&file)
    }
    .map_err(io_err(path))?;
    Ok((Mapping::validate(path, raw)?, FileId::of(&meta)))
}

/// The meta fields of a buffer as loaded (possibly torn until the seqlock validates them).
struct RawMeta {
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

impl RawMeta {
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

/// Validates `meta` and returns the number of entries it needs.
fn entries_needed(meta: &TableMeta) -> Result<u32> {
    let prefix = meta.network.prefix();
    if meta.subnet_len < prefix || meta.subnet_len > 32 {
        return Err(RouteTableError::InvalidMeta {
            what: format!(
                "subnet length /{} must be between the network's prefix ({}) and 32",
                meta.subnet_len, meta.network
            ),
        });
    }
    if let Some(our) = meta.our_subnet {
        if !meta.network.contains_net(&our) {
            return Err(RouteTableError::InvalidMeta {
                what: format!(
                    "our subnet {our} is not inside the network {}",
                    meta.network
                ),
            });
        }
    }
    let bits = u32::from(meta.subnet_len - prefix);
    let entries = 1u64 << bits;
    if entries > u64::from(MAX_CAPACITY) {
        return Err(RouteTableError::TooManyEntries {
            network: meta.network,
            subnet_len: meta.subnet_len,
            entries,
        });
    }
    Ok(entries as u32)
}

/// How often a reader compares the path's file with the one it maps ([`RouteTableReader::refresh`]).
pub const IDENTITY_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// `<path>.lock`, the file the writer holds an exclusive `flock` on.
fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Creates/opens `<path>.lock` and takes an exclusive, non-blocking `flock` on it.
///
/// The lock file is ours alone: opened without following a symlink, refused when another user
/// owns it, and made mode 0600 (also when an older run left it 0644). Anyone who can open it can
/// `flock` it and so keep flanneld from starting; with 0600 in a directory only root can write,
/// nobody else can.
fn lock_writer(path: &Path) -> Result<File> {
    let lock = lock_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock)
        .map_err(io_err(&lock))?;
    let meta = file.metadata().map_err(io_err(&lock))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_file() || meta.uid() != euid {
        return Err(RouteTableError::LockNotOurs {
            path: lock,
            uid: meta.uid(),
        });
    }
    if meta.mode() & 0o7777 != 0o600 {
        file.set_permissions(Permissions::from_mode(0o600))
            .map_err(io_err(&lock))?;
    }
    // SAFETY: `file` is an open file, so its descriptor is valid for the duration of the call;
    // flock has no memory-safety preconditions.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            RouteTableError::Locked { path: lock }
        } else {
            io_err(&lock)(err)
        });
    }
    Ok(file)
}

/// Creates the table's directory (and missing parents) with mode 0755: writable by its owner
/// only, whatever the umask. An existing directory is left as it is.
fn create_table_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_err(dir))
}

/// Creates `<path>.tmp.<pid>.<n>` (mode 0644) holding an empty table of `capacity` entries
/// whose header generation is `generation`. Returns its path and mapping; the caller renames it
/// into place (or removes it).
fn create_table_file(path: &Path, capacity: u32, generation: u64) -> Result<(PathBuf, Mapping)> {
    static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);
    let Some(name) = path.file_name() else {
        return Err(io_err(path)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the route table path has no file name",
        )));
    };
    let mut tmp_name = name.to_owned();
    tmp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp); // a leftover from a crashed writer with the same pid
    let result = (|| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        file.set_permissions(Permissions::from_mode(0o644))?; // exactly 0644 despite the umask
                                                              // Zeros with their blocks allocated: a full tmpfs fails here (ENOSPC), not with
                                                              // SIGBUS at the first store through the mapping.
        crate::shm_file::allocate(&file, table_file_size(capacity))?;
        MmapOptions::new().map_raw(&file)
    })()
    .map_err(io_err(&tmp))
    .and_then(|raw| {
        init_header(&tmp, &raw, capacity, generation)?;
        Mapping::validate(&tmp, raw)
    });
    match result {
        Ok(map) => Ok((tmp, map)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes the header of a freshly created (zeroed, not yet visible) table file.
fn init_header(path: &Path, raw: &MmapRaw, capacity: u32, generation: u64) -> Result<()> {
    if raw.len() < HEADER_SIZE || (raw.as_ptr() as usize) % 64 != 0 {
        return Err(corrupt(
            path,
            "new mapping is too short or unaligned".into(),
        ));
    }
    // SAFETY: checked just above that the mapping holds a whole header (HEADER_SIZE >=
    // size_of::<Header>()) at a 64-byte aligned address; `Header` is repr(C) of atomics, valid
    // for every bit pattern, and the file is only accessed through atomics. The reference does
    // not outlive this function, during which `raw` is borrowed.
    let h = unsafe { &*raw.as_ptr().cast::<Header>() };
    h.version.store(LAYOUT_VERSION, Ordering::Relaxed);
    h.capacity.store(capacity, Ordering::Relaxed);
    h.active.store(0, Ordering::Relaxed);
    h.retired.store(0, Ordering::Relaxed);
    h.generation.store(generation, Ordering::Relaxed);
    h.magic.store(MAGIC, Ordering::Release);
    Ok(())
}

/// Renames `tmp` over `path`; removes `tmp` if that fails.
fn rename_into_place(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path).map_err(|e| {
        let _ = fs::remove_file(tmp);
        io_err(path)(e)
    })
}

/// The existing file at `path` if it is a valid, current table (else `None`: replace it).
fn reuse_existing(path: &Path) -> Result<Option<Mapping>> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() || meta.len() < HEADER_SIZE as u64 {
        return Ok(None);
    }
    let raw = MmapOptions::new().map_raw(&file).map_err(io_err(path))?;
    let Ok(map) = Mapping::validate(path, raw) else {
        return Ok(None);
    };
    let h = map.header();
    if h.active.load(Ordering::Relaxed) > 1 || h.retired.load(Ordering::Relaxed) != 0 {
        return Ok(None);
    }
    Ok(Some(map))
}

/// Publishes `entries` (exactly `2^(subnet_len - prefix)` of them, `<= capacity`) as
/// generation `generation` into the inactive buffer of `map`, then flips `active` and the
/// header generation. See the module docs for the ordering argument.
fn write_table(map: &Mapping, generation: u64, meta: &TableMeta, entries: &[u32]) {
    let header = map.header();
    let target = 1 - (header.active.load(Ordering::Relaxed) & 1);
    let (buf, slots) = map.buffer(target);
    let seq = buf.seq.load(Ordering::Relaxed);
    // Odd while writing; a crashed writer may have left it odd already.
    let odd = seq + if seq % 2 == 0 { 1 } else { 2 };
    buf.seq.store(odd, Ordering::Relaxed);
    fence(Ordering::Release);
    let r = Ordering::Relaxed;
    buf.generation.store(generation, r);
    buf.network.store(meta.network.addr_u32(), r);
    buf.prefix.store(u32::from(meta.network.prefix()), r);
    buf.subnet_len.store(u32::from(meta.subnet_len), r);
    let (our_addr, our_prefix) = match meta.our_subnet {
        Some(n) => (n.addr_u32(), u32::from(n.prefix())),
        None => (0, NO_SUBNET),
    };
    buf.our_subnet.store(our_addr, r);
    buf.our_prefix.store(our_prefix, r);
    buf.mtu.store(meta.mtu, r);
    buf.port.store(u32::from(meta.port), r);
    buf.count.store(entries.len() as u32, r);
    for (slot, &value) in slots.iter().zip(entries) {
        slot.store(value, r);
    }
    buf.seq.store(odd + 1, Ordering::Release);
    header.active.store(target, Ordering::Release);
    header.generation.store(generation, Ordering::Release);
}

/// Checks one route against the table `meta` describes, as [`RouteTableWriter::publish`] does:
/// the subnet must be `meta.subnet_len` long and inside `meta.network`, and the public IP not
/// 0.0.0.0 (the table's "no lease" marker). Anything
/// [`lease::validate_lease`](crate::lease::validate_lease) accepts for the same network and
/// subnet length passes.
pub fn check_route(meta: &TableMeta, r: &Route) -> Result<()> {
    if r.subnet.prefix() != meta.subnet_len {
        return Err(RouteTableError::WrongSubnetLen {
            subnet: r.subnet,
            public_ip: r.public_ip,
            subnet_len: meta.subnet_len,
        });
    }
    if !meta.network.contains_net(&r.subnet) {
        return Err(RouteTableError::RouteOutsideNetwork {
            subnet: r.subnet,
            public_ip: r.public_ip,
            network: meta.network,
        });
    }
    if r.public_ip.is_unspecified() {
        return Err(RouteTableError::UnspecifiedPublicIp { subnet: r.subnet });
    }
    Ok(())
}

/// What [`RouteTableWriter::publish_skipping`] did.
#[derive(Debug)]
pub struct Published {
    /// The generation now published.
    pub generation: u64,
    /// Routes handed in minus those refused (duplicates of one subnet count each time).
    pub routes: usize,
    /// Each refused route with the reason, in input order.
    pub refused: Vec<(Route, RouteTableError)>,
}

/// The writer's side, owned by the control plane. At most one per path (see [`Self::open`]).
pub struct RouteTableWriter {
    path: PathBuf,
    /// Holds the exclusive `flock` on `<path>.lock` for the writer's lifetime.
    _lock: File,
    map: Mapping,
    generation: u64,
    /// The next table, built and validated here before shared memory is touched.
    scratch: Vec<u32>,
}

impl fmt::Debug for RouteTableWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTableWriter")
            .field("path", &self.path)
            .field("capacity", &self.map.capacity)
            .field("generation", &self.generation)
            .finish()
    }
}

impl RouteTableWriter {
    /// Opens the table at `path` for publishing, creating the directory if needed.
    ///
    /// An existing valid table is reused whatever its capacity (its generations continue and
    /// readers keep their mappings; it is never truncated); otherwise a new, unpublished table
    /// of [`DEFAULT_CAPACITY`] entries is renamed over the path. Nothing is published until
    /// [`Self::publish`]. Takes an exclusive lock on `<path>.lock`: fails with
    /// [`RouteTableError::Locked`] while another writer holds it.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_capacity(path, DEFAULT_CAPACITY)
    }

    /// Like [`Self::open`], but a table created here gets room for `capacity` entries
    /// (clamped to 1..=[`MAX_CAPACITY`]). Publishing a larger table replaces the file.
    pub fn open_with_capacity(path: &Path, capacity: u32) -> Result<Self> {
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_table_dir(dir)?;
        }
        let lock = lock_writer(path)?;
        let map = match reuse_existing(path)? {
            Some(map) => map,
            None => {
                let (tmp, map) = create_table_file(path, capacity, 0)?;
                rename_into_place(&tmp, path)?;
                map
            }
        };
        let generation = load_acquire_u64(&map.header().generation);
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
            map,
            generation,
            scratch: Vec::new(),
        })
    }

    /// Publishes a complete new table; returns the new generation.
    ///
    /// Routes that [`check_route`] refuses (subnet not inside `meta.network`, prefix not
    /// `meta.subnet_len`, public IP 0.0.0.0) are rejected, as is an inconsistent `meta`; then
    /// nothing is published. If several routes name one subnet the last wins.
    /// When the table needs more entries than the file holds, the file is replaced (see the
    /// module docs); if that fails, the previous table stays published.
    pub fn publish(&mut self, meta: &TableMeta, routes: &[Route]) -> Result<u64> {
        let mut refused = Vec::new();
        self.publish_inner(meta, routes, &mut refused, false)
    }

    /// Like [`Self::publish`], but a route that [`check_route`] refuses is left out of the
    /// table and returned in [`Published::refused`] instead of failing the whole publish: one
    /// bad route never keeps the others from the data plane. An inconsistent `meta` and I/O
    /// errors still fail (nothing is published then).
    pub fn publish_skipping(&mut self, meta: &TableMeta, routes: &[Route]) -> Result<Published> {
        let mut refused = Vec::new();
        let generation = self.publish_inner(meta, routes, &mut refused, true)?;
        Ok(Published {
            generation,
            routes: routes.len() - refused.len(),
            refused,
        })
    }

    fn publish_inner(
        &mut self,
        meta: &TableMeta,
        routes: &[Route],
        refused: &mut Vec<(Route, RouteTableError)>,
        skip: bool,
    ) -> Result<u64> {
        let count = entries_needed(meta)?;
        let network = meta.network.addr_u32();
        let shift = 32 - u32::from(meta.subnet_len);
        self.scratch.clear();
        self.scratch.resize(count as usize, 0);
        for r in routes {
            if let Err(e) = check_route(meta, r) {
                if !skip {
                    return Err(e);
                }
                refused.push((*r, e));
                continue;
            }
            // In bounds: the subnet lies inside the network and has subnet_len bits.
            let index = u64::from(r.subnet.addr_u32() - network) >> shift;
            self.scratch[index as usize] = u32::from(r.public_ip);
        }
        let generation = self.generation + 1;
        if count > self.map.capacity {
            let (tmp, map) = create_table_file(&self.path, count, self.generation)?;
            write_table(&map, generation, meta, &self.scratch);
            rename_into_place(&tmp, &self.path)?;
            let old = std::mem::replace(&mut self.map, map);
            let h = old.header();
            h.retired.store(1, Ordering::Release);
            // Readers poll only the generation: bump it so they look at `retired`.
            h.generation.store(generation, Ordering::Release);
        } else {
            write_table(&self.map, generation, meta, &self.scratch);
        }
        self.generation = generation;
        Ok(generation)
    }

    /// The last published generation (that of the reused file right after `open`; 0 = none).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries the current file holds per buffer.
    pub fn capacity(&self) -> u32 {
        self.map.capacity
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
    /// Receives each copy; swapped with the snapshot's entries once the copy is validated, so
    /// a failed refresh leaves the snapshot untouched and steady state does not allocate.
    scratch: Vec<u32>,
}

impl fmt::Debug for RouteTableReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTableReader")
            .field("path", &self.path)
            .field("capacity", &self.map.capacity)
            .field("generation", &self.generation())
            .finish()
    }
}

enum CopyOutcome {
    Done,
    Retired,
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
            scratch: Vec::new(),
        })
    }

    /// The header generation of the mapped file: one atomic load (Acquire). 0 = nothing
    /// published yet.
    #[inline]
    pub fn generation(&self) -> u64 {
        load_acquire_u64(&self.map.header().generation)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A consistent private copy of the current table; `Err(NotPublished)` before the first
    /// publish.
    pub fn snapshot(&mut self) -> Result<RouteSnapshot> {
        let mut snap = RouteSnapshot::empty();
        self.load_into(&mut snap)?;
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
        if self.generation() == snap.generation {
            if self.checked.elapsed() < IDENTITY_CHECK {
                return Ok(false);
            }
            return self.follow_replaced(snap);
        }
        self.load_into(snap)?;
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
        self.load_into(snap)?;
        Ok(true)
    }

    #[inline(never)]
    fn load_into(&mut self, snap: &mut RouteSnapshot) -> Result<()> {
        let mut reopens = 0;
        while let CopyOutcome::Retired = self.try_copy(snap)? {
            reopens += 1;
            if reopens > MAX_REOPENS {
                return Err(RouteTableError::Contended {
                    path: self.path.clone(),
                    attempts: reopens,
                });
            }
            (self.map, self.file) = map_for_read(&self.path)?;
        }
        Ok(())
    }

    /// The seqlock read; see the module docs.
    fn try_copy(&mut self, snap: &mut RouteSnapshot) -> Result<CopyOutcome> {
        let capacity = self.map.capacity;
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
            let (buf, slots) = self.map.buffer(active);
            let seq1 = load_acquire_u64(&buf.seq);
            if seq1 % 2 == 1 {
                continue;
            }
            let raw = RawMeta::load(buf);
            let count = raw.count as usize;
            let mut leased = 0;
            if raw.count <= capacity {
                self.scratch.clear();
                self.scratch.extend(slots[..count].iter().map(|slot| {
                    let v = slot.load(Ordering::Relaxed);
                    leased += usize::from(v != 0);
                    v
                }));
            }
            fence(Ordering::Acquire);
            if buf.seq.load(Ordering::Relaxed) != seq1 {
                continue;
            }
            // A consistent copy of one publish.
            let meta = raw.validate(&self.path, capacity)?;
            snap.generation = raw.generation;
            snap.network = meta.network.addr_u32();
            snap.shift = 32 - u32::from(meta.subnet_len);
            snap.meta = meta;
            std::mem::swap(&mut snap.entries, &mut self.scratch);
            snap.len = leased;
            return Ok(CopyOutcome::Done);
        }
        Err(RouteTableError::Contended {
            path: self.path.clone(),
            attempts: MAX_COPY_ATTEMPTS,
        })
    }
}

/// A private, consistent copy of one published table: every entry and the meta come from the
/// publish named by [`Self::generation`]. Lookups touch no shared memory.
#[derive(Clone)]
pub struct RouteSnapshot {
    generation: u64,
    meta: TableMeta,
    /// `meta.network` as an integer.
    network: u32,
    /// `32 - subnet_len` (32 allowed: the shift is done in u64).
    shift: u32,
    /// Exactly `2^(subnet_len - prefix)` entries (empty only in [`Self::empty`]).
    entries: Vec<u32>,
    /// Number of non-zero entries.
    len: usize,
}

impl fmt::Debug for RouteSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteSnapshot")
            .field("generation", &self.generation)
            .field("meta", &self.meta)
            .field("routes", &self.len)
            .finish()
    }
}

impl Default for RouteSnapshot {
    fn default() -> Self {
        Self::empty()
    }
}

impl RouteSnapshot {
    /// Generation 0 with no routes (every lookup is `None`), for a data plane started before
    /// the first publish: [`RouteTableReader::refresh`] fills it once a table is published.
    /// Its meta is a placeholder (`0.0.0.0/0`, subnet length 0, MTU 0, port 0).
    pub fn empty() -> Self {
        Self {
            generation: 0,
            meta: TableMeta {
                network: Ipv4Net::containing(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid"),
                subnet_len: 0,
                our_subnet: None,
                mtu: 0,
                port: 0,
            },
            network: 0,
            shift: 32,
            entries: Vec::new(),
            len: 0,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn meta(&self) -> &TableMeta {
        &self.meta
    }

    /// The public IP of the host whose subnet holds `dst`; `None` if `dst` is outside the
    /// network or its subnet has no lease. One subtraction, one shift, one bounds check.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        // Addresses outside the network wrap to offsets >= 2^(32 - prefix), whose index is
        // >= entries.len() = 2^(subnet_len - prefix): the bounds check is the network check.
        let index = u64::from(u32::from(dst).wrapping_sub(self.network)) >> self.shift;
        match self.entries.get(index as usize) {
            Some(&ip) if ip != 0 => Some(Ipv4Addr::from(ip)),
            _ => None,
        }
    }

    /// Like [`Self::lookup`], also returning the subnet (e.g. to check that an inner source
    /// address lies in the sender's subnet).
    #[inline]
    pub fn lookup_route(&self, ip: Ipv4Addr) -> Option<Route> {
        let public_ip = self.lookup(ip)?;
        Some(Route {
            subnet: Ipv4Net::containing(ip, self.meta.subnet_len)?,
            public_ip,
        })
    }

    /// All leased subnets, in index (address) order.
    pub fn routes(&self) -> impl Iterator<Item = Route> + '_ {
        let subnet_len = self.meta.subnet_len;
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, &ip)| ip != 0)
            .filter_map(move |(i, &ip)| {
                let addr = self.network.wrapping_add(((i as u64) << self.shift) as u32);
                Some(Route {
                    subnet: Ipv4Net::new(Ipv4Addr::from(addr), subnet_len)?,
                    public_ip: Ipv4Addr::from(ip),
                })
            })
    }

    /// Number of routes (leased subnets).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The route table for people (`flanneld routes` and `flannelctl routes`): header lines, then one
/// aligned `SUBNET  PUBLIC_IP` line per route.
pub fn format_table(snap: &RouteSnapshot) -> String {
    let meta = snap.meta();
    let mut out = String::new();
    let our = meta
        .our_subnet
        .map_or_else(|| "none".to_owned(), |n| n.to_string());
    // Writing to a String cannot fail.
    let _ = writeln!(out, "generation: {}", snap.generation());
    let _ = writeln!(out, "network:    {}", meta.network);
    let _ = writeln!(out, "subnet len: {}", meta.subnet_len);
    let _ = writeln!(out, "our subnet: {our}");
    let _ = writeln!(out, "mtu:        {}", meta.mtu);
    let _ = writeln!(out, "port:       {}", meta.port);
    let _ = writeln!(out, "routes:     {}", snap.len());
    let width = snap
        .routes()
        .map(|r| r.subnet.to_string().len())
        .max()
        .unwrap_or(0)
        .max("SUBNET".len());
    let _ = writeln!(out, "{:<width$}  PUBLIC_IP", "SUBNET");
    for r in snap.routes() {
        let _ = writeln!(out, "{:<width$}  {}", r.subnet.to_string(), r.public_ip);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn route(subnet: &str, public_ip: &str) -> Route {
        Route {
            subnet: net(subnet),
            public_ip: ip(public_ip),
        }
    }

    fn meta16() -> TableMeta {
        TableMeta {
            network: net("10.1.0.0/16"),
            subnet_len: 24,
            our_subnet: Some(net("10.1.15.0/24")),
            mtu: 1450,
            port: 8472,
        }
    }

    fn routes16() -> Vec<Route> {
        vec![
            route("10.1.255.0/24", "192.168.0.255"),
            route("10.1.15.0/24", "192.168.0.15"),
            route("10.1.0.0/24", "192.168.0.1"),
        ]
    }

    #[test]
    fn publish_and_lookup_golden() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/routes");
        let mut w = RouteTableWriter::open(&path).unwrap();
        assert_eq!(w.generation(), 0);
        assert_eq!(w.path(), path);

        let mut r = RouteTableReader::open(&path).unwrap();
        assert_eq!(r.generation(), 0);
        assert!(matches!(
            r.snapshot(),
            Err(RouteTableError::NotPublished { .. })
        ));

        assert_eq!(w.publish(&meta16(), &routes16()).unwrap(), 1);
        assert_eq!(w.generation(), 1);
        assert_eq!(r.generation(), 1);
        let s = r.snapshot().unwrap();
        assert_eq!(s.generation(), 1);
        assert_eq!(s.meta(), &meta16());
        assert_eq!(s.len(), 3);
        assert!(!s.is_empty());
        assert_eq!(s.entries.len(), 256);

        assert_eq!(s.lookup(ip("10.1.15.7")), Some(ip("192.168.0.15")));
        assert_eq!(s.lookup(ip("10.1.15.0")), Some(ip("192.168.0.15")));
        assert_eq!(s.lookup(ip("10.1.15.255")), Some(ip("192.168.0.15")));
        assert_eq!(s.lookup(ip("10.1.0.1")), Some(ip("192.168.0.1")));
        assert_eq!(s.lookup(ip("10.1.255.255")), Some(ip("192.168.0.255")));
        // Unleased subnets.
        assert_eq!(s.lookup(ip("10.1.16.1")), None);
        assert_eq!(s.lookup(ip("10.1.14.255")), None);
        // Outside the network, on both sides and at the extremes.
        for outside in [
            "10.2.0.0",
            "10.0.255.255",
            "10.0.15.7",
            "11.1.15.7",
            "0.0.0.0",
            "255.255.255.255",
        ] {
            assert_eq!(s.lookup(ip(outside)), None, "{outside}");
            assert_eq!(s.lookup_route(ip(outside)), None, "{outside}");
        }

        assert_eq!(
            s.lookup_route(ip("10.1.15.7")),
            Some(route("10.1.15.0/24", "192.168.0.15"))
        );
        assert_eq!(s.lookup_route(ip("10.1.16.1")), None);
        let all: Vec<Route> = s.routes().collect();
        assert_eq!(
            all,
            vec![
                route("10.1.0.0/24", "192.168.0.1"),
                route("10.1.15.0/24", "192.168.0.15"),
                route("10.1.255.0/24", "192.168.0.255"),
            ]
        );
    }

    #[test]
    fn slash8_of_slash24_has_65536_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes");
        let mut w = RouteTableWriter::open(&path).unwrap();
        assert_eq!(w.capacity(), 65536);
        assert_eq!(fs::metadata(&path).unwrap().len(), table_file_size(65536));
        assert_eq!(table_file_size(65536), 536_576);
        let meta = TableMeta {
            network: net("10.0.0.0/8"),
            subnet_len: 24,
            our_subnet: None,
            mtu: 8951,
            port: 4789,
        };
        let routes = [
            route("10.255.255.0/24", "1.2.3.4"),
            route("10.0.0.0/24", "1.2.3.5"),
            route("10.128.7.0/24", "1.2.3.6"),
        ];
        w.publish(&meta, &routes).unwrap();
        let s = RouteTableReader::open(&path).unwrap().snapshot().unwrap();
        assert_eq!(s.entries.len(), 65536);
        assert_eq!(s.meta(), &meta);
        assert_eq!(s.lookup(ip("10.255.255.1")), Some(ip("1.2.3.4")));
        assert_eq!(s.lookup(ip("10.0.0.200")), Some(ip("1.2.3.5")));
        assert_eq!(s.lookup(ip("10.128.7.9")), Some(ip("1.2.3.6")));
        assert_eq!(s.lookup(ip("10.128.8.9")), None);
        assert_eq!(s.lookup(ip("11.0.0.1")), None);
        assert_eq!(s.lookup(ip("9.255.255.255")), None);
        assert_eq!(
            s.lookup_route(ip("10.255.255.1")),
            Some(route("10.255.255.0/24", "1.2.3.4"))
        );
        assert_eq!(s.routes().count(), 3);
    }

    #[test]
    fn edge_shapes_whole_space_and_host_routes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes");
        let mut w = RouteTableWriter::open_with_capacity(&path, 4).unwrap();
        let mut r = RouteTableReader::open(&path).unwrap();
        // subnet_len == prefix: one entry; shift of 32 for a /0.
        let meta = TableMeta {
            network: net("0.0.0.0/0"),
            subnet_len: 0,
            our_subnet: None,
            mtu: 1500,
            port: 1,
        };
        w.publish(&meta, &[route("0.0.0.0/0", "1.1.1.1")]).unwrap();
        let s = r.snapshot().unwrap();
        assert_eq!(s.lookup(ip("0.0.0.0")), Some(ip("1.1.1.1")));
        assert_eq!(s.lookup(ip("255.255.255.255")), Some(ip("1.1.1.1")));
        // /30 of /32s: host routes, shift 0.
        let meta = TableMeta {
            network: net("192.0.2.4/30"),
            subnet_len: 32,
            our_subnet: Some(net("192.0.2.5/32")),
            mtu: 1500,
            port: 2,
        };
        w.publish(&meta, &[route("192.0.2.7/32", "2.2.2.2")])
            .unwrap();
        let s = r.snapshot().unwrap();
        assert_eq!(s.lookup(ip("192.0.2.7")), Some(ip("2.2.2.2")));
        assert_eq!(s.lookup(ip("192.0.2.6")), None);
        assert_eq!(s.lookup(ip("192.0.2.8")), None);
        assert_eq!(s.lookup(ip("192.0.2.3")), None);
        assert_eq!(
            s.routes().collect::<Vec<_>>(),
            vec![route("192.0.2.7/32", "2.2.2.2")]
        );
    }

    #[test]
    fn refresh_is_cheap_when_unchanged_and_copies_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes");
        let mut w = RouteTableWriter::open(&path).unwrap();
        let mut r = RouteTableReader::open(&path).unwrap();

        // Before the first publish an empty snapshot stays empty.
        let mut s = RouteSnapshot::default();
        assert!(!r.refresh(&mut s).unwrap());
        assert_eq!(s.lookup(ip("10.1.15.7")), None);
        assert!(s.is_empty());

        w.publish(&meta16(), &routes16()).unwrap();
        assert!(r.refresh(&mut s).unwrap());
        assert_eq!(s.generation(), 1);
        assert_eq!(s.lookup(ip("10.1.15.7")), Some(ip("192.168.0.15")));
        assert!(!r.refresh(&mut s).unwrap());

        let old = s.clone();
        let mut meta = meta16();
        meta.mtu = 1400;
        w.publish(&meta, &[route("10.1.15.0/24", "192.168.0.99")])
            .unwrap();
        assert!(r.refresh(&mut s).unwrap());
        assert_eq!(s.generation(), 2);
        assert_eq!(s.meta().mtu, 1400);
        assert_eq!(s.len(), 1);
        assert_eq!(s.lookup(ip("10.1.15.7")), Some(ip("192.168.0.99")));
        assert_eq!(s.lookup(ip("10.1.0.1")), None);
        // The clone is a private copy.
        assert_eq!(old.generation(), 1);
        assert_eq!(old.lookup(ip("10.1.0.1")), Some(ip("192.168.0.1")));
        assert!(!r.refresh(&mut s).unwrap());
    }

    #[test]
    fn writer_reopen_reuses_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes");
        let mut w = RouteTableWriter::open(&path).unwrap();
        w.publish(&meta16(), &routes16()).unwrap();
        w.publish(&meta16(), &routes16()[..1]).unwrap();
        let ino = fs::metadata(&path).unwrap().ino();
        let mut r = RouteTableReader::open(&path).unwrap();
        let mut s = r.snapshot().unwrap();
        assert_eq!(s.generation(), 2);
        drop(w);

        // The control plane is down: readers keep their table.
        assert!(!r.refresh(&mut s).unwrap());
        assert_eq!(s.lookup(ip("10.1.255.1")), Some(ip("192.168.0.255")));

        let mut w = RouteTableWriter::open(&path).unwrap();
        assert_eq!(w.generation(), 2);
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino, "file was replaced");
        assert!(!r.refresh(&mut s).unwrap(), "reopen alone must not publish");
        assert_eq!(w.publish(&meta16(), &routes16()).unwrap(), 3);
        assert!(r.refresh(&mut s).unwrap());
        assert_eq!(s.generation(), 3);
        assert_eq!(s.len(), 3);
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
    }

    #[test]
    fn growing_capacity_replaces_the_file_and_readers_follow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes");
        let mut w = RouteTableWriter::open_with_capacity(&path, 256).unwrap();
        w.publish(&meta16(), &routes16()).unwrap();
        let ino = fs::metadata(&path).unwrap().ino();
        let mut r = RouteTableReader::open(&path).unwrap();
        let mut s = r.snapshot().unwrap();

        let meta = TableMeta {
            network: net("10.0.0.0/15"),
            subnet_len: 24,
            our_subnet: Some(net("10.1.15.0/24")),
            mtu: 1450,
            port: 8472,
        };
        let mut routes = routes16();
        routes.push(route("10.0.3.0/24", "192.168.0.3"));
        assert_eq!(w.publish(&meta, &routes).unwrap(), 2);
        assert_eq!(w.capacity(), 512);
        assert_ne!(fs::metadata(&path).unwrap().ino(), ino);
        assert_eq!(fs::metadata(&path).unwrap().len(), table_file_size(512));

        // The old mapping announces the change with its generation and `retired`.
        assert_eq!(r.generation(), 2);
        assert!(r.refresh(&mut s).unwrap());
        assert_eq!(s.generation(), 2);
        assert_eq!(s.meta(), &meta);
        assert_eq!(s.entries.len(), 512);
        assert_eq!(s.lookup(ip("10.0.3.1")), Some(ip("192.168.0.3")));
        assert_eq!(s.lookup(ip("10.1.15.7")), Some(ip("192.168.0.15")));
        assert!(!r.refresh(&mut s).unwrap());
        assert_eq!(r.map.capacity, 512);

        // Later publishes reach the reopened reader; shrinking keeps the big file.
        assert_eq!(w.publish(&meta16(), &routes16()[..1]).unwrap(), 3);
        assert_eq!(w.capacity(), 512);
        assert!(r.refresh(&mut s).unwrap());
        assert_eq!(s.meta(), &meta16());
        assert_eq!(s.len(), 1);

        // No temporary files left behind.
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["routes", "routes.lock"]);
    }

    #[test]
    fn files_are_mode_0644() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes");
        let mut w = RouteTableWriter::open_with_capacity(&path, 1).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
        w.publish(&meta16(), &[]).unwrap(); // grows: a new file
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
    }

    /// A header with the given fields, padded with zeros to `len` bytes.
    fn header_bytes(magic: u64, version: u32, capacity: u32, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len.max(32)];
        b[0..8].copy_from_slice(&magic.to_ne_bytes());
        b[8..12].copy_from_slice(&version.to_ne_bytes());
        b[12..16].copy_from_slice(&capacity.to_ne_bytes());
        b.truncate(len);
        b
    }

    #[test]
    fn garbage_and_short_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes");
        let open = |bytes: &[u8]| {
            fs::write(&path, bytes).unwrap();
            RouteTableReader::open(&path).unwrap_err()
        };

        match RouteTableReader::open(&path).unwrap_err() {
            RouteTableError::Io { path: p, source } => {
                assert_eq!(p, path);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            e => panic!("{e}"),
        }
        assert!(matches!(
            open(b""),
            RouteTableError::TooSmall { len: 0, .. }
        ));
        assert!(matches!(
            open(b"FLNLRTB1"),
            RouteTableError::TooSmall { len: 8, .. }
        ));
        let garbage: Vec<u8> = (0..8192u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        assert!(matches!(open(&garbage), RouteTableError::BadMagic { .. }));
        assert!(matches!(
            open(&header_bytes(MAGIC, 2, 256, 4096 * 3)),
            RouteTableError::BadVersion { found: 2, .. }
        ));
        assert!(matches!(
            open(&header_bytes(MAGIC, 1, 0, 4096 * 3)),
            RouteTableError::Corrupt { .. }
        ));
        assert!(matches!(
            open(&header_bytes(MAGIC, 1, MAX_CAPACITY + 1, 4096 * 3)),
            RouteTableError::Corrupt { .. }
        ));
        let e = open(&header_bytes(MAGIC, 1, 65536, 4096));
        assert!(
            matches!(
                e,
                RouteTableError::TooSmall {
                    len: 4096,
                    needed: 536_576,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
        // A valid, unpublished header.
        fs::write(
            &path,
            header_bytes(MAGIC, 1, 1, table_file_size(1) as usize),
        )
        .unwrap();
        let mut r = RouteTableReader::open(&path).unwrap();
        let e = r.snapshot().unwrap_err();
        assert!(matches!(e, RouteTableError::NotPublished { .. }));
        assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");

        // The writer replaces garbage instead of reusing it.
        fs::write(&path, &garbage).unwrap();
        let mut w = RouteTableWriter::open(&path).unwrap();
        assert_eq!(w.generation(), 0);
        w.publish(&meta16(), &routes16()).unwrap();
        let s = RouteTableReader::open(&path).unwrap().snapshot().unwrap();
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn corrupted_published_table_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes");
        let mut w = RouteTableWriter::open_with_capacity(&path, 256).unwrap();
        w.publish(&meta16(), &routes16()).unwrap(); // into buffer 1
        let mut r = RouteTableReader::open(&path).unwrap();
        let good = r.snapshot().unwrap();

        let poke = |offset: usize, value: u32| {
            // In place (same inode, no truncation): the reader's mapping sees it.
            use std::os::unix::fs::FileExt;
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&value.to_ne_bytes(), offset as u64).unwrap();
        };
        let buf1 = HEADER_SIZE + buffer_stride(256);
        let mut s = good.clone();

        poke(28, 0); // retired stays 0; sanity
        poke(24, 7); // active = 7
        poke(16, 99); // generation, so refresh looks
        assert!(matches!(
            r.refresh(&mut s),
            Err(RouteTableError::Corrupt { .. })
        ));
        assert_eq!(s.generation(), 1, "snapshot untouched on error");
        assert_eq!(s.len(), 3);
        poke(24, 1);
        poke(buf1 + 44, 1000); // count beyond capacity
        assert!(matches!(r.snapshot(), Err(RouteTableError::Corrupt { .. })));
        poke(buf1 + 44, 128); // count inconsistent with /16 of /24
        assert!(matches!(r.snapshot(), Err(RouteTableError::Corrupt { .. })));
        poke(buf1 + 44, 256);
        poke(buf1 + 24, 8); // subnet_len < prefix
        assert!(matches!(r.snapshot(), Err(RouteTableError::Corrupt { .. })));
        poke(buf1 + 24, 24);
        poke(buf1 + 40, 70000); // port
        assert!(matches!(r.snapshot(), Err(RouteTableError::Corrupt { .. })));
        poke(buf1 + 40, 8472);
        poke(buf1 + 16, u32::from(ip("10.1.0.1"))); // host bits in the network
        assert!(matches!(r.snapshot(), Err(RouteTableError::Corrupt { .. })));
        poke(buf1 + 16, u32::from(ip("10.1.0.0")));
        let s = r.snapshot().unwrap();
        assert_eq!(s.lookup(ip("10.1.15.7")), Some(ip("192.168.0.15")));

        // A seq left odd (a writer crashed mid-copy of the active buffer — cannot happen with
        // this writer, which only writes the inactive one) makes readers give up, not spin.
        poke(buf1, 5);
        assert!(matches!(
            r.snapshot(),
            Err(RouteTableError::Contended { .. })
        ));
        drop(w);
        // A new writer recovers: it writes the other buffer and flips to it.
        let mut w = RouteTableWriter::open(&path).unwrap();
        assert_eq!(w.publish(&meta16(), &routes16()).unwrap(), 100);
        assert_eq!(r.snapshot().unwrap().generation(), 100);
    }

    /// Regression: one lease with PublicIP 0.0.0.0 made every publish fail, so no
    /// later lease reached the data plane. `publish_skipping` leaves it out and reports it.
    #[test]
    fn publish_skipping_leaves_bad_routes_out_and_publishes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes");
        let mut w = RouteTableWriter::open(&path).unwrap();
        let routes = [
            route("10.1.250.0/24", "0.0.0.0"),
            route("10.1.15.0/24", "192.168.0.15"),
            route("10.1.16.0/25", "192.168.0.16"),
            route("10.2.1.0/24", "192.168.0.17"),
            route("10.1.17.0/24", "192.168.0.17"),
        ];
        assert!(w.publish(&meta16(), &routes).is_err());
        let p = w.publish_skipping(&meta16(), &routes).unwrap();
        assert_eq!(p.generation, 1);
        assert_eq!(p.routes, 2);
        let refused: Vec<String> = p.refused.iter().map(|(_, e)| e.to_string()).collect();
        assert_eq!(
            refused,
            [
                "route 10.1.250.0/24: public IP 0.0.0.0 is not a host",
                "route 10.1.16.0/25 -> 192.168.0.16: prefix /25 but the subnet length is /24",
                "route 10.2.1.0/24 -> 192.168.0.17 is outside the network 10.1.0.0/16",
            ]
        );
        assert_eq!(p.refused[0].0, routes[0]);
        let snap = RouteTableReader::open(&path).unwrap().snapshot().unwrap();
        assert_eq!(snap.generation(), 1);
        assert_eq!(snap.routes().collect::<Vec<_>>(), [routes[1], routes[4]]);
        assert_eq!(snap.lookup(ip("10.1.250.9")), None);
        // check_route agrees with both.
        assert!(check_route(&meta16(), &routes[1]).is_ok());
        assert!(check_route(&meta16(), &routes[0]).is_err());
        // A bad meta still publishes nothing.
        let mut meta = meta16();
        meta.subnet_len = 8;
        assert!(w.publish_skipping(&meta, &routes).is_err());
        assert_eq!(w.generation(), 1);
    }

    #[test]
    fn bad_routes_and_meta_are_rejected_and_nothing_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes");
        let mut w = RouteTableWriter::open(&path).unwrap();
        w.publish(&meta16(), &routes16()).unwrap();
        let mut r = RouteTableReader::open(&path).unwrap();

        let e = w
            .publish(&meta16(), &[route("10.1.15.0/25", "192.168.0.15")])
            .unwrap_err();
        assert!(
            matches!(e, RouteTableError::WrongSubnetLen { subnet_len: 24, .. }),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "route 10.1.15.0/25 -> 192.168.0.15: prefix /25 but the subnet length is /24"
        );
        let e = w
            .publish(&meta16(), &[route("10.2.15.0/24", "192.168.0.15")])
            .unwrap_err();
        assert!(
            matches!(e, RouteTableError::RouteOutsideNetwork { .. }),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "route 10.2.15.0/24 -> 192.168.0.15 is outside the network 10.1.0.0/16"
        );
        let e = w
            .publish(&meta16(), &[route("10.1.2.0/24", "0.0.0.0")])
            .unwrap_err();
        assert!(
            matches!(e, RouteTableError::UnspecifiedPublicIp { .. }),
            "{e}"
        );

        let mut meta = meta16();
        meta.subnet_len = 8;
        let e = w.publish(&meta, &[]).unwrap_err();
        assert!(matches!(e, RouteTableError::InvalidMeta { .. }), "{e}");
        meta.subnet_len = 33;
        assert!(matches!(
            w.publish(&meta, &[]),
            Err(RouteTableError::InvalidMeta { .. })
        ));
        let mut meta = meta16();
        meta.our_subnet = Some(net("10.2.0.0/24"));
        assert!(matches!(
            w.publish(&meta, &[]),
            Err(RouteTableError::InvalidMeta { .. })
        ));
        let meta = TableMeta {
            network: net("10.0.0.0/7"),
            subnet_len: 32,
            our_subnet: None,
            mtu: 1500,
            port: 1,
        };
        let e = w.publish(&meta, &[]).unwrap_err();
        assert!(
            matches!(
                e,
                RouteTableError::TooManyEntries {
                    entries: 33_554_432,
                    subnet_len: 32,
                    ..
                }
            ),
            "{e}"
        );

        assert_eq!(w.generation(), 1);
        assert_eq!(r.generation(), 1);
        let s = r.snapshot().unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.meta(), &meta16());
    }

    #[test]
    fn a_second_writer_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes");
        let w = RouteTableWriter::open(&path).unwrap();
        let e = RouteTableWriter::open(&path).unwrap_err();
        assert!(matches!(e, RouteTableError::Locked { .. }), "{e}");
        assert!(e.to_string().contains("routes.lock"), "{e}");
        drop(w);
        RouteTableWriter::open(&path).unwrap();
    }

    #[test]
    fn handles_are_send() {
        fn send<T: Send>() {}
        send::<RouteTableWriter>();
        send::<RouteTableReader>();
        send::<RouteSnapshot>();
    }

    /// A table file replaced without the old one being marked retired (the writer died between
    /// the rename and the old header's update; a reader that mapped the old file then): the
    /// reader follows the path within IDENTITY_CHECK, not never.
    #[test]
    fn a_reader_follows_a_replaced_file_that_was_never_retired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes");
        let mut w = RouteTableWriter::open(&path).unwrap();
        w.publish(&meta16(), &routes16()).unwrap();
        let mut r = RouteTableReader::open(&path).unwrap();
        let mut snap = r.snapshot().unwrap();
        // Another table, written elsewhere and renamed over the path; the old file stays as it
        // was (not retired), as if its writer had died.
        let other = dir.path().join("other/routes");
        let mut w2 = RouteTableWriter::open(&other).unwrap();
        let only = [Route {
            subnet: "10.1.99.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(198, 18, 0, 99),
        }];
        w2.publish(&meta16(), &only).unwrap();
        fs::rename(&other, &path).unwrap();
        assert!(
            !r.refresh(&mut snap).unwrap(),
            "the old mapping alone says nothing changed"
        );
        assert!(r.follow_replaced(&mut snap).unwrap());
        assert_eq!(snap.len(), 1);
        assert_eq!(
            snap.lookup(Ipv4Addr::new(10, 1, 99, 7)),
            Some(Ipv4Addr::new(198, 18, 0, 99))
        );
        // And through refresh alone, once IDENTITY_CHECK has passed.
        let mut r2 = RouteTableReader::open(&path).unwrap();
        let mut snap2 = r2.snapshot().unwrap();
        let mut w3 = RouteTableWriter::open(&dir.path().join("third/routes")).unwrap();
        w3.publish(&meta16(), &routes16()).unwrap();
        fs::rename(dir.path().join("third/routes"), &path).unwrap();
        std::thread::sleep(IDENTITY_CHECK + std::time::Duration::from_millis(50));
        assert!(r2.refresh(&mut snap2).unwrap());
        assert_eq!(snap2.len(), routes16().len());
        drop((w, w2, w3));
    }

    /// The lock file is the writer's alone: mode 0600 (an older 0644 one is tightened), never
    /// opened through a symlink, refused when another user owns it (as root: chowned here).
    #[test]
    fn lock_file_is_private_to_the_writer() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/routes");
        let lock = dir.path().join("run/routes.lock");
        fs::create_dir_all(dir.path().join("run")).unwrap();
        fs::write(&lock, b"").unwrap();
        fs::set_permissions(&lock, Permissions::from_mode(0o644)).unwrap();
        let w = RouteTableWriter::open(&path).unwrap();
        assert_eq!(fs::metadata(&lock).unwrap().mode() & 0o7777, 0o600);
        drop(w);

        // A directory the writer creates is writable by its owner only, whatever the umask.
        // SAFETY: umask has no preconditions; restored right after.
        let old = unsafe { libc::umask(0o000) };
        let fresh = dir.path().join("fresh/deeper/routes");
        let made = RouteTableWriter::open(&fresh);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        drop(made.unwrap());
        for d in ["fresh", "fresh/deeper"] {
            let mode = fs::metadata(dir.path().join(d)).unwrap().mode() & 0o7777;
            assert_eq!(mode, 0o755, "{d}");
        }

        // A symlink at the lock's name is not followed.
        fs::remove_file(&lock).unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, b"x").unwrap();
        std::os::unix::fs::symlink(&target, &lock).unwrap();
        let err = match RouteTableWriter::open(&path) {
            Ok(_) => panic!("symlinked lock accepted"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("routes.lock"), "{err}");
        assert_eq!(fs::read(&target).unwrap(), b"x");

        // Someone else's lock file (needs root to make one).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            fs::remove_file(&lock).unwrap();
            fs::write(&lock, b"").unwrap();
            std::os::unix::fs::chown(&lock, Some(65534), Some(65534)).unwrap();
            let err = match RouteTableWriter::open(&path) {
                Ok(_) => panic!("foreign lock accepted"),
                Err(e) => e,
            };
            assert_eq!(
                err.to_string(),
                format!(
                    "route table lock {} is not a regular file of this user (owner uid 65534): remove it",
                    lock.display()
                )
            );
        }
    }

    #[test]
    fn format_table_golden() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes");
        let mut w = RouteTableWriter::open(&path).unwrap();
        w.publish(&meta16(), &routes16()).unwrap();
        let s = RouteTableReader::open(&path).unwrap().snapshot().unwrap();
        assert_eq!(
            format_table(&s),
            "generation: 1\n\
             network:    10.1.0.0/16\n\
             subnet len: 24\n\
             our subnet: 10.1.15.0/24\n\
             mtu:        1450\n\
             port:       8472\n\
             routes:     3\n\
             SUBNET         PUBLIC_IP\n\
             10.1.0.0/24    192.168.0.1\n\
             10.1.15.0/24   192.168.0.15\n\
             10.1.255.0/24  192.168.0.255\n"
        );
        let mut meta = meta16();
        meta.our_subnet = None;
        w.publish(&meta, &[]).unwrap();
        let s = RouteTableReader::open(&path).unwrap().snapshot().unwrap();
        let text = format_table(&s);
        assert!(text.contains("our subnet: none\n"), "{text}");
        assert!(
            text.ends_with("routes:     0\nSUBNET  PUBLIC_IP\n"),
            "{text}"
        );
    }
}
