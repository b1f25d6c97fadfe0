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
//! (536,576 bytes); C = 2^24 (the maximum) → 128 MiB. Every block of the file is allocated
//! when it is created (`posix_fallocate`), so a full tmpfs fails the creation with ENOSPC
//! instead of raising SIGBUS at a later store through the mapping.
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

pub(crate) mod error;
mod format;
pub(crate) mod route;
mod snapshot;

pub use self::error::RouteTableError;
pub use self::format::format_table;
pub use self::route::{check_route, Route, TableMeta};
pub use self::snapshot::RouteSnapshot;
pub use crate::shm::route_table::layout::{
    table_file_size, DEFAULT_CAPACITY, LAYOUT_VERSION, MAGIC, MAX_CAPACITY,
};
pub use crate::shm::route_table::reader::{RouteTableReader, IDENTITY_CHECK, MAX_COPY_ATTEMPTS};
pub use crate::shm::route_table::writer::{Published, RouteTableWriter};
