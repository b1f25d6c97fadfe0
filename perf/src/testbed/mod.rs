//! Test hosts: [`etcd::Etcd`] (a real etcd server), [`process::Daemon`] (one of our binaries as a
//! child process with its log in a file), [`bins`] (where the built binaries are), and
//! [`require`] (skip outside CI, fail under `CI=true`, when a prerequisite is missing).

pub mod certs;
pub mod cluster;
pub mod etcd;
pub mod netns;
pub mod process;

use std::path::PathBuf;

/// True under CI (`CI=true`), where missing prerequisites are failures, not skips.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Checks a prerequisite. Outside CI a missing one prints a clear skip message and returns false;
/// under `CI=true` it panics, because CI installs everything (scripts/test).
pub fn require(what: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    if in_ci() {
        panic!("prerequisite missing under CI=true: {what} (scripts/test installs it)");
    }
    eprintln!("SKIPPED: {what} (run scripts/test, or as root, to run this test)");
    false
}

/// True when `program` is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// True when running as root (namespaces, TUN, iptables need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Path of one of the workspace's binaries (`flanneld`, `flannel-dataplane`), next to the test
/// executable's `deps/` directory. `cargo test --workspace` builds them all.
pub fn bins(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} not built; run `cargo build --workspace` (or `cargo test --workspace`)",
        p.display()
    );
    p
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Polls `cond` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: std::time::Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let end = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if std::time::Instant::now() > end {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
