//! The route table's one writer: builds the next table in private memory, then publishes it
//! into the buffer readers are not directed to (the seqlock protocol in
//! [`crate::route_table`]), replacing the file when the table outgrows it.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};

use super::file::{
    create_table_dir, create_table_file, lock_writer, rename_into_place, reuse_existing,
};
use super::layout::{load_acquire_u64, Mapping, DEFAULT_CAPACITY, MAX_CAPACITY, NO_SUBNET};
use crate::route_table::error::Result;
use crate::route_table::route::entries_needed;
use crate::route_table::{check_route, Route, RouteTableError, TableMeta};

/// Publishes `entries` (exactly `2^(subnet_len - prefix)` of them, `<= capacity`) as
/// generation `generation` into the inactive buffer of `map`, then flips `active` and the
/// header generation. The ordering argument is in [`crate::route_table`]'s protocol section.
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

/// What publishing does with a route [`check_route`] refuses.
#[derive(Debug, Clone, Copy)]
enum OnRefusedRoute {
    /// Fail the whole publish with the refusal.
    Fail,
    /// Leave the route out and report it.
    Skip,
}

/// The writer's side, owned by the control plane. At most one per path (see [`Self::open`]).
pub struct RouteTableWriter {
    path: PathBuf,
    /// Holds the exclusive `flock` on `<path>.lock` for the writer's lifetime.
    _lock: File,
    map: Mapping,
    generation: u64,
    /// The next table's entries, built and validated here before shared memory is touched.
    next_entries: Vec<u32>,
}

impl fmt::Debug for RouteTableWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTableWriter")
            .field("path", &self.path)
            .field("capacity", &self.map.capacity())
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
            next_entries: Vec::new(),
        })
    }

    /// Publishes a complete new table; returns the new generation.
    ///
    /// Routes that [`check_route`] refuses (subnet not inside `meta.network`, prefix not
    /// `meta.subnet_len`, public IP 0.0.0.0) are rejected, as is an inconsistent `meta`; then
    /// nothing is published. If several routes name one subnet the last wins.
    /// When the table needs more entries than the file holds, the file is replaced (see
    /// [`crate::route_table`]); if that fails, the previous table stays published.
    pub fn publish(&mut self, meta: &TableMeta, routes: &[Route]) -> Result<u64> {
        self.build_entries(meta, routes, OnRefusedRoute::Fail)?;
        self.publish_entries(meta)
    }

    /// Like [`Self::publish`], but a route that [`check_route`] refuses is left out of the
    /// table and returned in [`Published::refused`] instead of failing the whole publish: one
    /// bad route never keeps the others from the data plane. An inconsistent `meta` and I/O
    /// errors still fail (nothing is published then).
    pub fn publish_skipping(&mut self, meta: &TableMeta, routes: &[Route]) -> Result<Published> {
        let refused = self.build_entries(meta, routes, OnRefusedRoute::Skip)?;
        let generation = self.publish_entries(meta)?;
        Ok(Published {
            generation,
            routes: routes.len() - refused.len(),
            refused,
        })
    }

    /// Fills `next_entries` with the table `meta` and `routes` describe. Returns the routes
    /// [`check_route`] refused (always none with [`OnRefusedRoute::Fail`], which returns the
    /// first refusal as the error instead).
    fn build_entries(
        &mut self,
        meta: &TableMeta,
        routes: &[Route],
        on_refused: OnRefusedRoute,
    ) -> Result<Vec<(Route, RouteTableError)>> {
        let count = entries_needed(meta)?;
        let network = meta.network.addr_u32();
        let shift = 32 - u32::from(meta.subnet_len);
        self.next_entries.clear();
        self.next_entries.resize(count as usize, 0);
        let mut refused = Vec::new();
        for r in routes {
            if let Err(e) = check_route(meta, r) {
                match on_refused {
                    OnRefusedRoute::Fail => return Err(e),
                    OnRefusedRoute::Skip => refused.push((*r, e)),
                }
                continue;
            }
            // In bounds: the subnet lies inside the network and has subnet_len bits.
            let index = u64::from(r.subnet.addr_u32() - network) >> shift;
            self.next_entries[index as usize] = u32::from(r.public_ip);
        }
        Ok(refused)
    }

    /// Publishes `next_entries` with `meta` as the next generation, into a new, larger file
    /// when the current one cannot hold them. Returns the new generation.
    fn publish_entries(&mut self, meta: &TableMeta) -> Result<u64> {
        let generation = self.generation + 1;
        let count = self.next_entries.len() as u32;
        if count > self.map.capacity() {
            let (tmp, map) = create_table_file(&self.path, count, self.generation)?;
            write_table(&map, generation, meta, &self.next_entries);
            rename_into_place(&tmp, &self.path)?;
            let old = std::mem::replace(&mut self.map, map);
            let h = old.header();
            h.retired.store(1, Ordering::Release);
            // Readers poll only the generation: bump it so they look at `retired`.
            h.generation.store(generation, Ordering::Release);
        } else {
            write_table(&self.map, generation, meta, &self.next_entries);
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
        self.map.capacity()
    }
}
