//! Test hosts: [`etcd::Etcd`] (a real etcd server), [`process::Daemon`] (one of our binaries as a
//! child process with its log in a file), [`netns`] (network namespaces, veths, containers),
//! [`cluster::Cluster`] (hosts on a switch running flanneld and the data plane),
//! [`pair::HostPair`] (two hosts on one veth, for the data plane alone), [`bins`] (where the
//! built binaries are), and [`require`] / [`skip_or_fail`] (skip outside CI, fail under CI,
//! when a test cannot run).

pub mod certs;
pub mod cluster;
pub mod etcd;
pub mod netns;
pub mod pair;
pub mod process;

use std::path::PathBuf;

pub use flannel_shared::ci::{in_ci, skip_or_fail};

/// Checks a prerequisite: true when `ok`; otherwise [`skip_or_fail`] (a skip message outside CI,
/// a panic under CI, which installs everything: scripts/test) and false.
#[track_caller]
pub fn require(what: &str, ok: bool) -> bool {
    if !ok {
        skip_or_fail(&format!(
            "prerequisite missing: {what} (run scripts/test, or as root, to run this test)"
        ));
    }
    ok
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

/// A loopback TCP port that nothing listened on a moment ago, never the same one twice in this
/// process, and outside the kernel's ephemeral range (`net.ipv4.ip_local_port_range`) when
/// there is room below or above it: the kernel then never hands it out by itself, neither to an
/// outgoing connection (a daemon reconnecting to an etcd that is down) nor to anyone's bind to
/// port 0.
///
/// Still only *probably* free when the caller binds it (another process may take it in between):
/// whoever binds it must cope with "address already in use" ([`etcd::Etcd`] retries on fresh
/// ports).
pub fn free_port() -> u16 {
    use rand::Rng;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let bindable = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let (low, high) = ephemeral_port_range();
    // Ports the kernel does not allocate by itself, away from the well-known ones.
    let range = if low >= 12_000 {
        Some(10_000..low)
    } else if high <= 63_000 {
        Some(high + 1..65_535)
    } else {
        None
    };
    if let Some(range) = range {
        let mut rng = rand::thread_rng();
        for _ in 0..1000 {
            let port = rng.gen_range(range.clone());
            if !handed_out.contains(&port) && bindable(port) {
                handed_out.insert(port);
                return port;
            }
        }
    }
    // No room outside the ephemeral range (or all taken): let the kernel pick one.
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// The kernel's ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`), Linux's
/// default 32768–60999 when unreadable.
fn ephemeral_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
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

/// Joins a thread, passing its panic on as it was.
pub fn join<T>(handle: std::thread::JoinHandle<T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
