//! Restarts and upgrades that lose nothing: the TUN queues and the receive sockets outlive the
//! process, so `flannel0` (with its address, routes and queued packets) stays, the port is
//! never free for anyone else to bind, and what arrives meanwhile waits in the socket buffers.
//!
//! Two ways the fds travel, one format (`$LISTEN_FDS`, named `tun` and `udp`):
//! - Under systemd: `flannel-dataplane.socket` holds the receive sockets from boot
//!   (`FileDescriptorName=udp`, one `ListenDatagram=` per worker), and the data plane stores its
//!   TUN queues in the service's fd store (`FDSTORE=1`, `FDNAME=tun`; the unit sets
//!   `FileDescriptorStoreMax=`). Receive sockets it had to open itself (no socket unit) go into
//!   the store too. systemd passes all of them to the next start: a `systemctl restart`, a
//!   restart by `Restart=` or the watchdog, an upgrade's restart.
//! - Without systemd (the testbed, a container): SIGUSR2 makes the data plane stop its workers
//!   and exec the binary at its path (a new build, if one was installed there) with the same
//!   arguments, the fds and `$LISTEN_*` set as systemd would.
//!
//! With `udp` sockets passed the data plane runs one worker per socket (the reuseport group's
//! order is the workers' order, which the steering programs rely on): no datagram can land on
//! a socket no worker reads. `tun` queues of another device name, or a device that is gone,
//! are closed; missing queues are opened on the device.
//!
//! [`parse_listen_env`] and [`fd_names`] are pure; the fds themselves go through
//! [`crate::sys::fds`].

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use flannel_shared::sd_notify::Reporter;

use crate::setup_error::{IoContext as _, SetupError};
use crate::sys;

/// The name of a TUN queue fd.
pub const TUN: &str = "tun";
/// The name of a receive socket fd.
pub const UDP: &str = "udp";

/// Why `$LISTEN_*` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenEnvError {
    #[error("LISTEN_FDS={0:?}: not a number of fds")]
    BadCount(String),
    #[error("LISTEN_FDS={0}: more fds than a data plane can have been given")]
    TooMany(usize),
    #[error("LISTEN_FDNAMES={names:?}: {got} names for LISTEN_FDS={want}")]
    NameCount {
        names: String,
        got: usize,
        want: usize,
    },
}

/// Most fds a hand-over carries (queues and sockets of 256 workers).
pub const MAX_FDS: usize = 512;

/// The names of the fds systemd (or the previous data plane) passed to process `our_pid`, in
/// fd order from 3; empty when the variables are absent or meant for another process
/// (`$LISTEN_PID`, as `sd_listen_fds` checks). Without `$LISTEN_FDNAMES` every fd is
/// `unknown`, as systemd names them.
pub fn parse_listen_env(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<Vec<String>, ListenEnvError> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(our_pid) {
        return Ok(Vec::new());
    }
    let n: usize = fds
        .trim()
        .parse()
        .map_err(|_| ListenEnvError::BadCount(fds.to_string()))?;
    if n > MAX_FDS {
        return Err(ListenEnvError::TooMany(n));
    }
    match names {
        None => Ok(vec!["unknown".to_string(); n]),
        Some(list) => {
            let v: Vec<String> = if n == 0 && list.is_empty() {
                Vec::new()
            } else {
                list.split(':').map(str::to_string).collect()
            };
            if v.len() != n {
                return Err(ListenEnvError::NameCount {
                    names: list.to_string(),
                    got: v.len(),
                    want: n,
                });
            }
            Ok(v)
        }
    }
}

/// What a passed fd's name says: its kind and, for the fds a data plane stored or passed
/// itself (`tun.3`, `udp.0`), its index. systemd's fd store does not keep the order fds were
/// stored in, and worker i must get queue i and socket i back (the steering programs return
/// indices); a socket unit's sockets (`udp`, no index) come in `ListenDatagram=` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdName {
    Tun(Option<usize>),
    Udp(Option<usize>),
    Unknown,
}

/// Parses one `$LISTEN_FDNAMES` entry.
pub fn parse_fd_name(name: &str) -> FdName {
    let (kind, index) = match name.split_once('.') {
        Some((k, i)) => match i.parse::<usize>() {
            Ok(i) => (k, Some(i)),
            Err(_) => return FdName::Unknown,
        },
        None => (name, None),
    };
    match kind {
        TUN => FdName::Tun(index),
        UDP => FdName::Udp(index),
        _ => FdName::Unknown,
    }
}

/// The name of the `i`-th fd of `kind` as a data plane stores or passes it.
pub fn indexed(kind: &str, i: usize) -> String {
    format!("{kind}.{i}")
}

/// `$LISTEN_FDNAMES` for `tun` queues followed by `udp` sockets; the sockets keep a socket
/// unit's plain name (`udp_from_socket_unit`), so that they are never stored as our own.
pub fn fd_names(tun: usize, udp: usize, udp_from_socket_unit: bool) -> String {
    let mut names: Vec<String> = (0..tun).map(|i| indexed(TUN, i)).collect();
    names.extend((0..udp).map(|i| {
        if udp_from_socket_unit {
            UDP.to_string()
        } else {
            indexed(UDP, i)
        }
    }));
    names.join(":")
}

/// Where the receive sockets came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpOrigin {
    /// systemd's `flannel-dataplane.socket`: held by systemd, never stored by us.
    SocketUnit,
    /// A data plane (this one, or one before it through the fd store or an exec): stored in
    /// systemd's fd store, and replaced when they no longer fit the flags.
    Ours,
}

/// Sorts `(index, position, fd)` by index (a missing index: the position), dropping the keys.
fn in_index_order(mut v: Vec<(Option<usize>, usize, OwnedFd)>) -> Vec<OwnedFd> {
    v.sort_by_key(|(index, position, _)| index.unwrap_or(*position));
    v.into_iter().map(|(_, _, fd)| fd).collect()
}

/// The fds a previous data plane or systemd handed to this process, by kind, in worker order.
#[derive(Debug)]
pub struct Inherited {
    pub tun: Vec<OwnedFd>,
    pub udp: Vec<OwnedFd>,
    pub udp_origin: UdpOrigin,
    /// How many indexed names of each kind came in (`tun.N`, `udp.N`): what systemd's store
    /// may still hold under them.
    pub stored_tun: usize,
    pub stored_udp: usize,
}

impl Default for Inherited {
    fn default() -> Self {
        Self {
            tun: Vec::new(),
            udp: Vec::new(),
            udp_origin: UdpOrigin::Ours,
            stored_tun: 0,
            stored_udp: 0,
        }
    }
}

impl Inherited {
    /// Takes the passed fds (once, before anything else opens fds or starts a thread) and
    /// clears `$LISTEN_*` so that nothing started later takes them for its own. Fds of
    /// another name are closed with a warning. A socket unit's sockets win over stored ones.
    pub fn from_env() -> Result<Self, SetupError> {
        let var = |k: &str| std::env::var(k).ok();
        let names = parse_listen_env(
            var("LISTEN_PID").as_deref(),
            var("LISTEN_FDS").as_deref(),
            var("LISTEN_FDNAMES").as_deref(),
            std::process::id(),
        )
        .map_err(|e| SetupError::Refused(e.to_string()))?;
        for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(k);
        }
        let (fds, missing) = sys::fds::take_listen_fds(names.len());
        if !missing.is_empty() {
            tracing::warn!(?missing, "passed fds that are not open: ignored");
        }
        let (mut tun, mut unit_udp, mut own_udp) = (Vec::new(), Vec::new(), Vec::new());
        let mut got = Self::default();
        for (i, fd) in fds {
            match parse_fd_name(&names[i]) {
                FdName::Tun(index) => {
                    got.stored_tun += usize::from(index.is_some());
                    tun.push((index, i, fd));
                }
                FdName::Udp(None) => unit_udp.push((None, i, fd)),
                FdName::Udp(Some(index)) => {
                    got.stored_udp += 1;
                    own_udp.push((Some(index), i, fd));
                }
                FdName::Unknown => tracing::warn!(
                    fd = sys::fds::LISTEN_FDS_START + i as i32,
                    name = %flannel_shared::untrusted::escape(&names[i]),
                    "passed fd of unknown name: closed (expected {TUN}[.N] or {UDP}[.N])"
                ),
            }
        }
        got.tun = in_index_order(tun);
        if !unit_udp.is_empty() {
            if !own_udp.is_empty() {
                tracing::warn!(
                    stored = own_udp.len(),
                    "receive sockets both from the socket unit and from the fd store: using the socket unit's"
                );
            }
            got.udp = in_index_order(unit_udp);
            got.udp_origin = UdpOrigin::SocketUnit;
        } else {
            got.udp = in_index_order(own_udp);
        }
        if !got.tun.is_empty() || !got.udp.is_empty() {
            tracing::info!(
                tun_queues = got.tun.len(),
                udp_sockets = got.udp.len(),
                origin = ?got.udp_origin,
                "took over fds from systemd or the previous data plane"
            );
        }
        Ok(got)
    }
}

/// What a running data plane holds to hand over: a duplicate of every TUN queue and receive
/// socket its workers use (the workers close theirs when they stop).
#[derive(Debug)]
pub struct Keep {
    pub tun: Vec<OwnedFd>,
    pub udp: Vec<OwnedFd>,
    pub udp_origin: UdpOrigin,
    /// Indexed names systemd's store may hold from before, per kind (removed when storing).
    pub stored_tun: usize,
    pub stored_udp: usize,
}

impl Keep {
    /// Duplicates of `tun` and `udp` (the same open files).
    pub fn duplicate(
        tun: &[OwnedFd],
        udp: &[&OwnedFd],
        udp_origin: UdpOrigin,
        (stored_tun, stored_udp): (usize, usize),
    ) -> Result<Self, SetupError> {
        let dup = |f: &OwnedFd| {
            f.try_clone()
                .context("duplicating an fd to keep for a hand-over")
        };
        Ok(Self {
            tun: tun.iter().map(dup).collect::<Result<_, _>>()?,
            udp: udp.iter().map(|f| dup(f)).collect::<Result<_, _>>()?,
            udp_origin,
            stored_tun,
            stored_udp,
        })
    }

    /// Hands the TUN queues (and receive sockets of our own) to systemd's fd store, one fd per
    /// message under its own name (`tun.0`, …: the store does not keep order), after removing
    /// what it held under those names before (a deleted device's queues, a changed worker
    /// count). Nothing is sent outside systemd. A failure is logged: the restart then
    /// recreates the device (as without a store).
    pub fn store_in_systemd(&self, sd: &Reporter) {
        let Some(target) = sd.target() else { return };
        let mut sets: Vec<(&str, &[OwnedFd], usize)> = vec![(TUN, &self.tun, self.stored_tun)];
        if self.udp_origin == UdpOrigin::Ours {
            sets.push((UDP, &self.udp, self.stored_udp));
        } else {
            forget_in_systemd(sd, UDP, self.stored_udp);
        }
        for (kind, fds, before) in sets {
            // The store adds an fd under a name it already has (it drops only the same file
            // twice): what it held under these names goes first.
            forget_in_systemd(sd, kind, before);
            let r = fds.iter().enumerate().try_for_each(|(i, fd)| {
                let store = format!("FDSTORE=1\nFDNAME={}", indexed(kind, i));
                sys::fds::notify_with_fds(target, &store, &[fd.as_fd()])
            });
            match r {
                Ok(()) => tracing::info!(
                    kind,
                    fds = fds.len(),
                    "stored in systemd's fd store (kept across restarts)"
                ),
                Err(e) => tracing::warn!(
                    kind,
                    "storing fds in systemd's fd store failed (a restart recreates them): {e}"
                ),
            }
        }
    }

    /// Replaces this process with `exe` (same arguments), handing over the TUN queues (unless
    /// `with_tun` is false: the device is gone) and the receive sockets. Returns only on
    /// failure.
    pub fn reexec(&self, exe: &Path, with_tun: bool) -> std::io::Error {
        let tun: &[OwnedFd] = if with_tun { &self.tun } else { &[] };
        let fds: Vec<BorrowedFd<'_>> = tun.iter().chain(&self.udp).map(AsFd::as_fd).collect();
        let mut argv = std::env::args_os();
        let arg0 = argv.next().unwrap_or_else(|| "flannel-dataplane".into());
        let args: Vec<OsString> = argv.collect();
        sys::fds::exec_with_fds(
            exe,
            &arg0,
            &args,
            &fds,
            &fd_names(
                tun.len(),
                self.udp.len(),
                self.udp_origin == UdpOrigin::SocketUnit,
            ),
        )
    }
}

/// Drops what systemd's fd store holds of `kind` under the indexed names `kind.0` …
/// `kind.(upto - 1)` (nothing outside systemd, nothing when `upto` is 0).
pub fn forget_in_systemd(sd: &Reporter, kind: &str, upto: usize) {
    let Some(target) = sd.target() else { return };
    for name in (0..upto).map(|i| indexed(kind, i)) {
        let msg = format!("FDSTOREREMOVE=1\nFDNAME={name}");
        if let Err(e) = sys::fds::notify_with_fds(target, &msg, &[]) {
            tracing::warn!(name, "removing fds from systemd's fd store failed: {e}");
            return;
        }
    }
}

/// The binary to exec for a restart in place: the path this process was started from (at
/// start, before an upgrade could replace the file; symlinks resolved), so a new build
/// installed there runs. `/proc/self/exe` (this very build) instead when that path is gone, or
/// could lead to a file someone other than root or our own user put there: the path now
/// resolves elsewhere (a symlink was planted), a directory on it is another one than at start
/// (replaced, or something mounted over it), or the file or a directory above it is owned by
/// another user, or writable by others (or by a group other than root's and ours) without the
/// sticky bit. A root process must not run what an unprivileged user swapped in.
#[derive(Debug, Clone)]
pub struct OwnBinary(Option<StartPath>);

/// The binary's path as found at start, and the identity (device, inode) of each directory
/// on it.
#[derive(Debug, Clone)]
struct StartPath {
    path: PathBuf,
    dirs: Vec<(PathBuf, u64, u64)>,
}

impl OwnBinary {
    /// Reads the path now; call at start. A process that restarted the same build (its file
    /// had been replaced or was not to be trusted) sees its path with the kernel's
    /// " (deleted)" suffix: the path is the same without it, where a newer build may be.
    pub fn at_start() -> Self {
        Self(
            std::env::current_exe()
                .ok()
                .and_then(|p| StartPath::new(&without_deleted_suffix(&p))),
        )
    }

    /// What to exec.
    pub fn path(&self) -> PathBuf {
        let own = PathBuf::from("/proc/self/exe");
        let Some(start) = &self.0 else {
            return own;
        };
        if !start.path.is_file() {
            return own;
        }
        match start.changed_or_untrusted() {
            None => start.path.clone(),
            Some(why) => {
                tracing::warn!(
                    path = %start.path.display(),
                    "not running the file at this path ({why}): restarting the same build"
                );
                own
            }
        }
    }
}

impl StartPath {
    /// `path` with its directories resolved (the file itself may be gone), and their identities.
    fn new(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let dir = std::fs::canonicalize(path.parent()?).ok()?;
        let path = dir.join(path.file_name()?);
        let dirs = dir
            .ancestors()
            .map(|d| {
                let m = std::fs::metadata(d).ok()?;
                Some((d.to_owned(), m.dev(), m.ino()))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { path, dirs })
    }

    /// Why the file at the path may not be run now, if it may not.
    fn changed_or_untrusted(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt as _;
        match std::fs::canonicalize(&self.path) {
            Ok(p) if p == self.path => {}
            Ok(p) => return Some(format!("it now leads to {}", p.display())),
            Err(e) => return Some(format!("cannot resolve it: {e}")),
        }
        for (dir, dev, ino) in &self.dirs {
            match std::fs::metadata(dir) {
                Ok(m) if (m.dev(), m.ino()) == (*dev, *ino) => {}
                Ok(_) => {
                    return Some(format!(
                        "{} is another directory than at start",
                        dir.display()
                    ))
                }
                Err(e) => return Some(format!("{}: {e}", dir.display())),
            }
        }
        untrusted_part(
            &self.path,
            sys::caps::effective_uid(),
            sys::caps::effective_gid(),
        )
    }
}

/// `path` without the " (deleted)" that `/proc/self/exe` appends once the file is gone.
fn without_deleted_suffix(path: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = path.as_os_str().as_bytes();
    match bytes.strip_suffix(b" (deleted)") {
        Some(b) => PathBuf::from(std::ffi::OsStr::from_bytes(b)),
        None => path.to_owned(),
    }
}

/// The first part of `path` (the file, then each directory up to `/`) that a user other than
/// root or `uid` could have changed, with why; `None` when there is none.
fn untrusted_part(path: &Path, uid: u32, gid: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    for part in path.ancestors().filter(|p| !p.as_os_str().is_empty()) {
        let why = match std::fs::metadata(part) {
            Ok(m) => changeable_by_others(m.uid(), m.gid(), m.mode(), m.is_dir(), uid, gid),
            Err(e) => Some(format!("cannot inspect it: {e}")),
        };
        if let Some(why) = why {
            return Some(format!("{}: {why}", part.display()));
        }
    }
    None
}

/// Whether a file or directory (`owner`, `group`, `mode`) may be changed by a user other than
/// root or `uid`: owned by another user, writable by others, or by a group other than root's
/// and `gid` (a directory with the sticky bit only lets owners rename or remove their own
/// entries).
fn changeable_by_others(
    owner: u32,
    group: u32,
    mode: u32,
    is_dir: bool,
    uid: u32,
    gid: u32,
) -> Option<String> {
    const STICKY: u32 = 0o1000;
    if owner != 0 && owner != uid {
        return Some(format!("owned by uid {owner}"));
    }
    if is_dir && mode & STICKY != 0 {
        return None;
    }
    if mode & 0o002 != 0 {
        return Some(format!("writable by others (mode {:o})", mode & 0o7777));
    }
    if mode & 0o020 != 0 && group != 0 && group != gid {
        return Some(format!(
            "writable by group {group} (mode {:o})",
            mode & 0o7777
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_env_is_ours_only_with_our_pid() {
        assert!(parse_listen_env(None, Some("2"), None, 7)
            .unwrap()
            .is_empty());
        assert!(parse_listen_env(Some("8"), Some("2"), None, 7)
            .unwrap()
            .is_empty());
        assert_eq!(
            parse_listen_env(Some("7"), Some("2"), None, 7).unwrap(),
            vec!["unknown", "unknown"]
        );
        assert_eq!(
            parse_listen_env(Some("7"), Some("3"), Some("tun:tun:udp"), 7).unwrap(),
            vec!["tun", "tun", "udp"]
        );
        assert!(parse_listen_env(Some("7"), Some("0"), Some(""), 7)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn bad_listen_env_names_the_variable_and_value() {
        let e = parse_listen_env(Some("7"), Some("x"), None, 7).unwrap_err();
        assert_eq!(e.to_string(), "LISTEN_FDS=\"x\": not a number of fds");
        let e = parse_listen_env(Some("7"), Some("2"), Some("tun"), 7).unwrap_err();
        assert_eq!(
            e.to_string(),
            "LISTEN_FDNAMES=\"tun\": 1 names for LISTEN_FDS=2"
        );
        let e = parse_listen_env(Some("7"), Some("100000"), None, 7).unwrap_err();
        assert!(e.to_string().contains("100000"), "{e}");
    }

    #[test]
    fn names_list_queues_then_sockets_with_their_indices() {
        assert_eq!(fd_names(2, 2, false), "tun.0:tun.1:udp.0:udp.1");
        assert_eq!(fd_names(1, 2, true), "tun.0:udp:udp");
        assert_eq!(fd_names(0, 0, false), "");
    }

    #[test]
    fn fd_names_parse_into_kind_and_index() {
        assert_eq!(parse_fd_name("tun"), FdName::Tun(None));
        assert_eq!(parse_fd_name("tun.12"), FdName::Tun(Some(12)));
        assert_eq!(parse_fd_name("udp"), FdName::Udp(None));
        assert_eq!(parse_fd_name("udp.0"), FdName::Udp(Some(0)));
        for bad in ["tun.x", "udp.", "flannel-dataplane.socket", "unknown", ""] {
            assert_eq!(parse_fd_name(bad), FdName::Unknown, "{bad}");
        }
    }

    #[test]
    fn stored_fds_come_back_in_index_order() {
        let fd = || std::fs::File::open("/dev/null").unwrap().into();
        let v = vec![(Some(2), 0, fd()), (Some(0), 1, fd()), (Some(1), 2, fd())];
        let raw: Vec<i32> = v
            .iter()
            .map(|(_, _, f): &(_, _, OwnedFd)| std::os::fd::AsRawFd::as_raw_fd(f))
            .collect();
        let sorted: Vec<i32> = in_index_order(v)
            .iter()
            .map(std::os::fd::AsRawFd::as_raw_fd)
            .collect();
        assert_eq!(sorted, vec![raw[1], raw[2], raw[0]]);
    }

    #[test]
    fn a_replaced_binary_is_looked_for_at_its_path() {
        assert_eq!(
            without_deleted_suffix(Path::new("/usr/bin/flannel-dataplane (deleted)")),
            PathBuf::from("/usr/bin/flannel-dataplane")
        );
        assert_eq!(
            without_deleted_suffix(Path::new("/usr/bin/flannel-dataplane")),
            PathBuf::from("/usr/bin/flannel-dataplane")
        );
    }

    #[test]
    fn only_root_or_our_own_unshared_files_are_run_after_a_restart() {
        let f = |owner, group, mode, is_dir| {
            changeable_by_others(owner, group, mode, is_dir, 1000, 1000)
        };
        assert_eq!(f(0, 0, 0o100755, false), None);
        assert_eq!(f(1000, 1000, 0o100755, false), None);
        assert_eq!(f(0, 0, 0o40775, true), None, "root's group may write");
        assert_eq!(f(0, 1000, 0o100775, false), None, "our group may write");
        assert!(
            f(0, 50, 0o100775, false).is_some(),
            "another group may write"
        );
        assert!(f(1001, 0, 0o100755, false).is_some(), "another owner");
        assert!(f(0, 0, 0o40777, true).is_some(), "world-writable dir");
        assert_eq!(
            f(0, 0, 0o41777, true),
            None,
            "sticky /tmp: only owners move entries"
        );
        assert!(
            f(0, 0, 0o101777, false).is_some(),
            "a sticky file is still writable"
        );
        assert!(untrusted_part(Path::new("/nonexistent/flannel"), 0, 0).is_some());
    }

    /// A binary of ours in a directory of ours is run; made world-writable, or replaced by a
    /// symlink (to a file that would pass every other check), it is not.
    #[test]
    fn a_restart_runs_the_file_at_the_start_path_only_while_it_is_trusted() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("flannel-dataplane");
        let other = dir.path().join("other");
        for f in [&exe, &other] {
            std::fs::write(f, b"#!/bin/true\n").unwrap();
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let own = OwnBinary(StartPath::new(&exe));
        let canonical = std::fs::canonicalize(&exe).unwrap();
        let proc_self = PathBuf::from("/proc/self/exe");
        // The temporary directory's own ancestors are the machine's: trusted unless TMPDIR
        // lives somewhere odd, in which case only the refusals below are checked.
        let trusted = own.path() == canonical;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(own.path(), proc_self, "world-writable file");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(own.path() == canonical, trusted);
        std::fs::remove_file(&exe).unwrap();
        std::os::unix::fs::symlink(&other, &exe).unwrap();
        assert_eq!(own.path(), proc_self, "a symlink planted at the path");
        std::fs::remove_file(&exe).unwrap();
        assert_eq!(own.path(), proc_self, "the file is gone");
    }
}
