//! The route table's files: the writer's lock, the directory, a new table under a temporary
//! name renamed into place, an existing table reused, and mappings for the writer and readers.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapOptions;

use super::layout::{init_header, table_file_size, Mapping, HEADER_SIZE};
use crate::route_table::error::{io_err, Result};
use crate::route_table::RouteTableError;
use crate::shm::file::allocate;

/// Which file a mapping came from: a path replaced by another file has another identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub(crate) fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

pub(crate) fn map_for_read(path: &Path) -> Result<(Mapping, FileId)> {
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
    let mmap = if writable {
        MmapOptions::new().map_raw(&file)
    } else {
        MmapOptions::new().map_raw_read_only(&file)
    }
    .map_err(io_err(path))?;
    Ok((Mapping::validate(path, mmap)?, FileId::of(&meta)))
}

/// `<path>.lock`, the file the writer holds an exclusive `flock` on.
fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Creates/opens `<path>.lock` and takes an exclusive, non-blocking `flock` on it.
///
/// The lock file is ours alone: opened without following a symlink, refused when another user
/// owns it, and made mode 0600 (also when it exists with another mode). Anyone who can open it can
/// `flock` it and so keep flanneld from starting; with 0600 in a directory only root can write,
/// nobody else can.
pub(crate) fn lock_writer(path: &Path) -> Result<File> {
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
pub(crate) fn create_table_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_err(dir))
}

/// Creates `<path>.tmp.<pid>.<n>` (mode 0644) holding an empty table of `capacity` entries
/// whose header generation is `generation`. Returns its path and mapping; the caller renames it
/// into place (or removes it).
pub(crate) fn create_table_file(
    path: &Path,
    capacity: u32,
    generation: u64,
) -> Result<(PathBuf, Mapping)> {
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
        allocate(&file, table_file_size(capacity))?;
        MmapOptions::new().map_raw(&file)
    })()
    .map_err(io_err(&tmp))
    .and_then(|mmap| {
        init_header(&tmp, &mmap, capacity, generation)?;
        Mapping::validate(&tmp, mmap)
    });
    match result {
        Ok(map) => Ok((tmp, map)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Renames `tmp` over `path`; removes `tmp` if that fails.
pub(crate) fn rename_into_place(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path).map_err(|e| {
        let _ = fs::remove_file(tmp);
        io_err(path)(e)
    })
}

/// The existing file at `path` if it is a valid, current table (else `None`: replace it).
pub(crate) fn reuse_existing(path: &Path) -> Result<Option<Mapping>> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() || meta.len() < HEADER_SIZE as u64 {
        return Ok(None);
    }
    let mmap = MmapOptions::new().map_raw(&file).map_err(io_err(path))?;
    let Ok(map) = Mapping::validate(path, mmap) else {
        return Ok(None);
    };
    let h = map.header();
    if h.active.load(Ordering::Relaxed) > 1 || h.retired.load(Ordering::Relaxed) != 0 {
        return Ok(None);
    }
    Ok(Some(map))
}
