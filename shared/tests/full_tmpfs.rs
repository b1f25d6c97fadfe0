//! The shared-memory files on a full tmpfs: creating the route table or the stats file fails
//! with a clear error (ENOSPC) instead of a SIGBUS at the first store through the mapping,
//! which would kill the daemon and, under systemd, loop it. Needs root (mounts a 64 KiB tmpfs
//! on a temporary directory, unmounted after).

use std::process::Command;

use flannel_shared::route_table::RouteTableWriter;
use flannel_shared::stats::StatsWriter;

/// A 64 KiB tmpfs mounted on a temporary directory, unmounted on drop.
struct TinyTmpfs(tempfile::TempDir);

impl TinyTmpfs {
    fn mount() -> Option<Self> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !root {
            flannel_shared::ci::skip_or_fail("needs root to mount a tmpfs");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "flannel-test-tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs failed");
        Some(Self(dir))
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_route_table_too_large_for_its_tmpfs_is_an_error_not_a_crash() {
    let Some(fs) = TinyTmpfs::mount() else {
        return;
    };
    let path = fs.0.path().join("routes");
    // 65,536 entries in two arrays: far over 64 KiB.
    let err = match RouteTableWriter::open_with_capacity(&path, 65_536) {
        Ok(_) => panic!("a table larger than its tmpfs was created"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("No space left on device"), "{err}");
    // Nothing half-made is left behind: only the writer's lock file, which persists by design
    // (removing a lock file another writer may have opened would let two writers in).
    let left: Vec<_> = std::fs::read_dir(fs.0.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["routes.lock"], "{left:?}");
}

#[test]
fn a_stats_file_too_large_for_its_tmpfs_is_an_error_not_a_crash() {
    let Some(fs) = TinyTmpfs::mount() else {
        return;
    };
    let path = fs.0.path().join("dataplane.stats");
    let err = match StatsWriter::create(&path, 256) {
        Ok(_) => panic!("a stats file larger than its tmpfs was created"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("No space left on device"), "{err}");
}
