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

/// `$LISTEN_FDNAMES` for `tun` queues followed by `udp` sockets.
pub fn fd_names(tun: usize, udp: usize) -> String {
    std::iter::repeat(TUN)
        .take(tun)
        .chain(std::iter::repeat(UDP).take(udp))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fds a previous data plane or systemd handed to this process, by kind, in order.
#[derive(Debug, Default)]
pub struct Inherited {
    pub tun: Vec<OwnedFd>,
    pub udp: Vec<OwnedFd>,
}

impl Inherited {
    /// Takes the passed fds (once, before anything else opens fds or starts a thread) and
    /// clears `$LISTEN_*` so that nothing started later takes them for its own. Fds of
    /// another name are closed with a warning.
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
        let mut got = Self::default();
        for (i, fd) in fds {
            match names[i].as_str() {
                TUN => got.tun.push(fd),
                UDP => got.udp.push(fd),
                other => tracing::warn!(
                    fd = sys::fds::LISTEN_FDS_START + i as i32,
                    name = %flannel_shared::untrusted::escape(other),
                    "passed fd of unknown name: closed (expected {TUN} or {UDP})"
                ),
            }
        }
        if !got.tun.is_empty() || !got.udp.is_empty() {
            tracing::info!(
                tun_queues = got.tun.len(),
                udp_sockets = got.udp.len(),
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
    /// The receive sockets were opened by this process (none were passed), so systemd's fd
    /// store must keep them too.
    pub udp_opened_here: bool,
}

impl Keep {
    /// Duplicates of `tun` and `udp` (the same open files).
    pub fn duplicate(
        tun: &[OwnedFd],
        udp: &[&OwnedFd],
        udp_opened_here: bool,
    ) -> Result<Self, SetupError> {
        let dup = |f: &OwnedFd| {
            f.try_clone()
                .context("duplicating an fd to keep for a hand-over")
        };
        Ok(Self {
            tun: tun.iter().map(dup).collect::<Result<_, _>>()?,
            udp: udp.iter().map(|f| dup(f)).collect::<Result<_, _>>()?,
            udp_opened_here,
        })
    }

    /// Hands the TUN queues (and receive sockets opened here) to systemd's fd store, replacing
    /// what it held under those names (a deleted device's queues, a changed worker count).
    /// Nothing is sent outside systemd. A failure is logged: the restart then recreates the
    /// device (as without a store).
    pub fn store_in_systemd(&self, sd: &Reporter) {
        let Some(target) = sd.target() else { return };
        let mut sets: Vec<(&str, &[OwnedFd])> = vec![(TUN, &self.tun)];
        if self.udp_opened_here {
            sets.push((UDP, &self.udp));
        }
        for (name, fds) in sets {
            let remove = format!("FDSTOREREMOVE=1\nFDNAME={name}");
            let store = format!("FDSTORE=1\nFDNAME={name}");
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
            let r = sys::fds::notify_with_fds(target, &remove, &[])
                .and_then(|()| sys::fds::notify_with_fds(target, &store, &borrowed));
            match r {
                Ok(()) => tracing::info!(
                    name,
                    fds = fds.len(),
                    "stored in systemd's fd store (kept across restarts)"
                ),
                Err(e) => tracing::warn!(
                    name,
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
            &fd_names(tun.len(), self.udp.len()),
        )
    }
}

/// Drops what systemd's fd store holds under `name` (nothing outside systemd).
pub fn forget_in_systemd(sd: &Reporter, name: &str) {
    let Some(target) = sd.target() else { return };
    if let Err(e) =
        sys::fds::notify_with_fds(target, &format!("FDSTOREREMOVE=1\nFDNAME={name}"), &[])
    {
        tracing::warn!(name, "removing fds from systemd's fd store failed: {e}");
    }
}

/// The binary to exec for a restart in place: the path this process was started from (at
/// start, before an upgrade could replace the file), so a new build installed there runs;
/// `/proc/self/exe` (this very build) when that path is gone.
#[derive(Debug, Clone)]
pub struct OwnBinary(Option<PathBuf>);

impl OwnBinary {
    /// Reads the path now; call at start.
    pub fn at_start() -> Self {
        Self(std::env::current_exe().ok())
    }

    /// What to exec.
    pub fn path(&self) -> PathBuf {
        match &self.0 {
            Some(p) if p.is_file() => p.clone(),
            _ => PathBuf::from("/proc/self/exe"),
        }
    }
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
    fn names_list_queues_then_sockets() {
        assert_eq!(fd_names(2, 2), "tun:tun:udp:udp");
        assert_eq!(fd_names(0, 1), "udp");
        assert_eq!(fd_names(0, 0), "");
    }
}
