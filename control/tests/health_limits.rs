//! Issue 27: `-healthz-port` under a flood of idle connections. flanneld used to accept and
//! keep every one (about a thousand exhausted its file descriptors: etcd reconnects and iptables
//! calls failed). Now it serves at most 64 at once, closes the excess at once and gives each a
//! read timeout: its descriptor count stays bounded and /healthz answers again.
//!
//! No root needed: loopback only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use flannel_perf::testbed::etcd::Etcd;
use flannel_perf::testbed::{free_port, wait_for};

mod common;
use common::LoopbackFlanneld;

const SEC: Duration = Duration::from_secs(1);
/// flannel_control::health::MAX_CONNECTIONS.
const CAP: usize = 64;
const IDLE: usize = 400;

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn healthz(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(SEC * 3)).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

#[test]
fn idle_connections_are_capped_and_healthz_still_answers() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    etcd.put_config("/coreos.com/network", r#"{"Network":"10.1.0.0/16"}"#)
        .unwrap();
    let port = free_port();
    let mut h = LoopbackFlanneld::start(
        &etcd.endpoint(),
        "198.18.0.1",
        &[
            "-healthz-ip=127.0.0.1".into(),
            format!("-healthz-port={port}"),
        ],
    );
    h.wait_subnet(SEC * 20);
    assert!(healthz(port).is_some(), "healthz before the flood");
    let pid = h.daemon.pid().unwrap();
    let baseline = fd_count(pid);

    // Idle connections: connected, never a byte sent.
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(SEC / 2);
    let during = fd_count(pid);
    assert!(
        during <= baseline + CAP + 4,
        "flanneld holds {during} fds with {IDLE} idle health connections (baseline {baseline}, cap {CAP})"
    );

    // /healthz answers again while the idle connections are still open (theirs time out).
    let ok = wait_for(SEC * 10, || healthz(port));
    assert!(ok.is_some(), "no /healthz answer; log:\n{}", h.daemon.log());
    // Each idle connection is closed 2 s after its accept; /healthz may answer as soon as the
    // first slot frees, the others follow within the same read timeout.
    let settled = wait_for(SEC * 5, || (fd_count(pid) <= baseline + 4).then_some(()));
    assert!(
        settled.is_some(),
        "idle connections not timed out: {} fds (baseline {baseline})",
        fd_count(pid)
    );
    assert!(h.daemon.is_running());
    drop(idle);
}
