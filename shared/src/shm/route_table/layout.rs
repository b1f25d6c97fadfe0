//! The route-table file's layout in memory (specified in [`crate::route_table`]) and the
//! validated mapping every other part of the table goes through.

use std::path::Path;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use memmap2::MmapRaw;

use crate::route_table::error::{corrupt, Result};
use crate::route_table::RouteTableError;

/// `b"FLNLRTB1"` as stored (native order, so the file starts with these bytes).
pub const MAGIC: u64 = u64::from_ne_bytes(*b"FLNLRTB1");
/// The layout version this module reads and writes.
pub const LAYOUT_VERSION: u32 = 1;
/// Most entries a buffer can hold (2^24: e.g. a /8 of /32s); the file is then 128 MiB.
pub const MAX_CAPACITY: u32 = 1 << 24;
/// Capacity of a file the writer creates before it knows the network: a /8 of /24s.
pub const DEFAULT_CAPACITY: u32 = 1 << 16;

/// Bytes of the file header: one page, so the buffers start page aligned.
pub(crate) const HEADER_SIZE: usize = 4096;
/// Bytes of a buffer's header; its entries follow.
pub(crate) const BUF_HEADER_SIZE: usize = 64;
/// Buffers are padded to a multiple of this.
pub(crate) const PAGE: usize = 4096;
/// `our_prefix` when the writer host has no subnet.
pub(crate) const NO_SUBNET: u32 = u32::MAX;

/// The file header. `repr(C)`, all atomics: the layout is in [`crate::route_table`].
#[repr(C)]
pub(crate) struct Header {
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU32,
    pub(crate) capacity: AtomicU32,
    pub(crate) generation: AtomicU64,
    pub(crate) active: AtomicU32,
    pub(crate) retired: AtomicU32,
}

/// The header of one buffer; `capacity` `AtomicU32` entries follow it.
#[repr(C)]
pub(crate) struct BufHeader {
    pub(crate) seq: AtomicU64,
    pub(crate) generation: AtomicU64,
    pub(crate) network: AtomicU32,
    pub(crate) prefix: AtomicU32,
    pub(crate) subnet_len: AtomicU32,
    pub(crate) our_subnet: AtomicU32,
    pub(crate) our_prefix: AtomicU32,
    pub(crate) mtu: AtomicU32,
    pub(crate) port: AtomicU32,
    pub(crate) count: AtomicU32,
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
pub(crate) fn buffer_stride(capacity: u32) -> usize {
    let unpadded = BUF_HEADER_SIZE + 4 * capacity as usize;
    unpadded.div_ceil(PAGE) * PAGE
}

/// Size in bytes of a route-table file with the given capacity (entries per buffer).
pub fn table_file_size(capacity: u32) -> u64 {
    (HEADER_SIZE + 2 * buffer_stride(capacity)) as u64
}

/// A Relaxed load followed by an Acquire fence: an Acquire load that is also valid on
/// read-only memory (see the protocol in [`crate::route_table`]).
#[inline]
pub(crate) fn load_acquire_u64(a: &AtomicU64) -> u64 {
    let v = a.load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    v
}

/// A validated mapping of a route-table file.
///
/// Invariant (checked by [`Mapping::validate`] before any cast): the mapping is at least
/// `table_file_size(capacity)` bytes long, its base is 64-byte aligned, the header says
/// `MAGIC`, `LAYOUT_VERSION` and `capacity`, and `1 <= capacity <= MAX_CAPACITY`.
pub(crate) struct Mapping {
    mmap: MmapRaw,
    capacity: u32,
    stride: usize,
}

impl Mapping {
    /// Checks the size, alignment and header of `mmap` (from the file at `path`).
    pub(crate) fn validate(path: &Path, mmap: MmapRaw) -> Result<Self> {
        let len = mmap.len();
        if len < HEADER_SIZE {
            return Err(RouteTableError::TooSmall {
                path: path.to_owned(),
                len: len as u64,
                needed: HEADER_SIZE as u64,
            });
        }
        if (mmap.as_ptr() as usize) % 64 != 0 {
            return Err(corrupt(
                path,
                format!("mapping at {:p} is not aligned", mmap.as_ptr()),
            ));
        }
        // SAFETY: the mapping is at least HEADER_SIZE (>= size_of::<Header>()) bytes and
        // 64-byte aligned (checked just above); `Header` is repr(C) and made only of atomics,
        // which are valid for every bit pattern and have the size and alignment of the
        // plain integers. All processes access this memory only through atomics, so there
        // is no data race. The reference lives no longer than `mmap`, which is moved into
        // the returned `Mapping` (a move does not move the mapped memory).
        let header = unsafe { &*mmap.as_ptr().cast::<Header>() };
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
            mmap,
            capacity,
            stride: buffer_stride(capacity),
        })
    }

    /// Entries per buffer, as the validated header says.
    pub(crate) fn capacity(&self) -> u32 {
        self.capacity
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: see the type's invariant: the mapping holds a whole, aligned header;
        // atomics are valid for any bits and all sharers use atomics only; the returned
        // reference borrows `self`, which owns the mapping.
        unsafe { &*self.mmap.as_ptr().cast::<Header>() }
    }

    /// Buffer `which & 1`: its header and its `capacity` entries.
    pub(crate) fn buffer(&self, which: u32) -> (&BufHeader, &[AtomicU32]) {
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
            let base = self.mmap.as_ptr().add(offset);
            let header = &*base.cast::<BufHeader>();
            let entries = std::slice::from_raw_parts(
                base.add(BUF_HEADER_SIZE).cast::<AtomicU32>(),
                self.capacity as usize,
            );
            (header, entries)
        }
    }
}

/// Writes the header of a freshly created (zeroed, not yet visible) table file.
pub(crate) fn init_header(
    path: &Path,
    mmap: &MmapRaw,
    capacity: u32,
    generation: u64,
) -> Result<()> {
    if mmap.len() < HEADER_SIZE || (mmap.as_ptr() as usize) % 64 != 0 {
        return Err(corrupt(
            path,
            "new mapping is too short or unaligned".into(),
        ));
    }
    // SAFETY: checked just above that the mapping holds a whole header (HEADER_SIZE >=
    // size_of::<Header>()) at a 64-byte aligned address; `Header` is repr(C) of atomics, valid
    // for every bit pattern, and the file is only accessed through atomics. The reference does
    // not outlive this function, during which `mmap` is borrowed.
    let h = unsafe { &*mmap.as_ptr().cast::<Header>() };
    h.version.store(LAYOUT_VERSION, Ordering::Relaxed);
    h.capacity.store(capacity, Ordering::Relaxed);
    h.active.store(0, Ordering::Relaxed);
    h.retired.store(0, Ordering::Relaxed);
    h.generation.store(generation, Ordering::Relaxed);
    h.magic.store(MAGIC, Ordering::Release);
    Ok(())
}
