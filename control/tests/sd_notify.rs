//! `flanneld` under systemd's `Type=notify` protocol, against a real etcd: the test binds the
//! unix datagram socket that `$NOTIFY_SOCKET` names (a path, and an abstract name) and reads what
//! flanneld reports: STATUS= lines while it waits for etcd's config and rejects a bad one,
//! READY=1 only once subnet.env and the route table are there, WATCHDOG=1 every half of
//! `$WATCHDOG_USEC` (only for the process `$WATCHDOG_PID` names) while the lease is still
//! renewed on time, STOPPING=1 on SIGTERM.
//!
//! No root needed: `-iface 127.0.0.1`, `-public-ip 198.18.0.x`, loopback only.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flannel_perf::testbed::etcd::Etcd;
use flannel_perf::testbed::process::{Daemon, Signal};
use flannel_shared::route_table::RouteTableReader;

const PREFIX: &str = "/coreos.com/network";
const SEC: Duration = Duration::from_secs(1);

/// The test's end of the notify socket: every datagram with the time it arrived.
struct Listener {
    sock: UnixDatagram,
    got: Vec<(Instant, String)>,
}

impl Listener {
    fn new(sock: UnixDatagram) -> Self {
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Self {
            sock,
            got: Vec::new(),
        }
    }

    /// Reads datagrams until `until` holds for one (returned) or `timeout` passes (None).
    fn wait(&mut self, timeout: Duration, until: impl Fn(&str) -> bool) -> Option<String> {
        let end = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.got.push((Instant::now(), msg.clone()));
                if until(&msg) {
                    return Some(msg);
                }
            }
        }
        None
    }

    /// Everything received so far, for failure messages.
    fn all(&self) -> String {
        self.got.iter().map(|(_, m)| format!("  {m:?}\n")).collect()
    }

    /// Arrival times of the datagrams that hold `line` as one of their lines.
    fn times_of(&self, line: &str) -> Vec<Instant> {
        self.got
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == line))
            .map(|(t, _)| *t)
            .collect()
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn flanneld(
    etcd: &Etcd,
    dir: &Path,
    public_ip: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Daemon {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flanneld"));
    c.arg(format!("-etcd-endpoints={}", etcd.endpoint()))
        .arg("-iface=127.0.0.1")
        .arg("-iptables-forward-rules=false")
        .arg("-dataplane-guard=false")
        .arg(format!("-public-ip={public_ip}"))
        .arg(format!("-subnet-file={}", dir.join("subnet.env").display()))
        .arg(format!("--route-table={}", dir.join("routes").display()))
        .args(extra)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "info");
    for (k, v) in env {
        c.env(k, v);
    }
    Daemon::spawn("flanneld", c, &dir.join("flanneld.log")).unwrap()
}

fn route_table_published(path: &Path) -> bool {
    RouteTableReader::open(path).is_ok_and(|mut r| r.snapshot().is_ok())
}

#[test]
fn status_then_ready_once_subnet_env_and_table_exist_then_watchdog_pings() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("flanneld-notify-")
        .tempdir()
        .unwrap();
    let sock_path = dir.path().join("notify");
    let mut rx = Listener::new(UnixDatagram::bind(&sock_path).unwrap());
    let subnet_env: PathBuf = dir.path().join("subnet.env");
    let routes = dir.path().join("routes");
    let mut d = flanneld(
        &etcd,
        dir.path(),
        "198.18.0.31",
        // Renewal every 2 s: the heartbeat's turns must not keep postponing it.
        &["-subnet-lease-ttl=6"],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
            ("RUST_LOG", "info,flannel_control::daemon=debug"),
        ],
    );
    let fail = |rx: &Listener, d: &Daemon, what: &str| -> ! {
        panic!("{what}; datagrams:\n{}flanneld log:\n{}", rx.all(), d.log())
    };

    // No config in etcd yet: flanneld says so, and is not ready.
    let not_found = format!("STATUS=network config {PREFIX}/config not found in etcd");
    if rx.wait(SEC * 15, |m| m.starts_with(&not_found)).is_none() {
        fail(&rx, &d, "no STATUS= about the missing config");
    }
    etcd.put_config(PREFIX, r#"{"Network":"10.1.0.0/16","SubnetLen":31}"#)
        .unwrap();
    if rx
        .wait(SEC * 10, |m| {
            m.starts_with("STATUS=") && m.contains("is invalid: SubnetLen 31: must be 30 or less")
        })
        .is_none()
    {
        fail(&rx, &d, "no STATUS= naming the invalid config");
    }
    assert!(
        rx.times_of("READY=1").is_empty() && rx.times_of("WATCHDOG=1").is_empty(),
        "ready before it has a lease:\n{}",
        rx.all()
    );
    assert!(!subnet_env.exists());

    etcd.put_config(PREFIX, r#"{"Network":"10.1.0.0/16"}"#)
        .unwrap();
    let Some(ready) = rx.wait(SEC * 15, |m| has_line(m, "READY=1")) else {
        fail(&rx, &d, "no READY=1")
    };
    // What READY=1 promises the units ordered after flanneld, checked the moment it arrives.
    let subnet = flannel_shared::subnet_env::previous_subnet(&subnet_env)
        .unwrap_or_else(|| fail(&rx, &d, "READY=1 before subnet.env"));
    assert!(
        route_table_published(&routes),
        "READY=1 before the route table"
    );
    assert!(
        has_line(
            &ready,
            &format!("STATUS=lease held: {subnet}; subnet.env written, route table published")
        ),
        "{ready:?}"
    );
    assert!(
        rx.got
            .iter()
            .any(|(_, m)| has_line(m, &format!("STATUS=lease held: {subnet}"))),
        "{}",
        rx.all()
    );
    assert!(
        rx.got
            .iter()
            .any(|(_, m)| m.starts_with("STATUS=connecting to etcd")),
        "{}",
        rx.all()
    );

    // WATCHDOG_USEC=200000: a ping every 100 ms from the lease loop, for as long as it runs.
    let watch_from = Instant::now();
    rx.wait(SEC * 2, |_| false);
    let pings: Vec<Instant> = rx
        .times_of("WATCHDOG=1")
        .into_iter()
        .filter(|t| *t >= watch_from)
        .collect();
    assert!(
        pings.len() >= 8,
        "{} WATCHDOG=1 in 2 s (want about 20):\n{}",
        pings.len(),
        rx.all()
    );
    let widest = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    // 100 ms apart; the margin is for a busy test machine (CI runs tests two at a time).
    assert!(
        widest < Duration::from_millis(600),
        "a gap of {widest:?} between pings"
    );
    assert_eq!(rx.times_of("READY=1").len(), 1, "READY=1 once");
    d.wait_log("lease renewed", SEC * 5);

    d.signal(Signal::SIGTERM);
    if rx.wait(SEC * 5, |m| has_line(m, "STOPPING=1")).is_none() {
        fail(&rx, &d, "no STOPPING=1 on SIGTERM");
    }
    assert!(d.stop(SEC * 5).is_some_and(|s| s.success()));
}

/// An abstract-namespace socket (`@name`, as systemd in containers and tests use), and a
/// watchdog meant for another process (`$WATCHDOG_PID`): READY=1 comes, WATCHDOG=1 does not.
#[test]
fn abstract_socket_and_a_watchdog_for_another_pid() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    etcd.put_config(PREFIX, r#"{"Network":"10.1.0.0/16"}"#)
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("flanneld-notify-")
        .tempdir()
        .unwrap();
    let name = format!("flannel-rs-test-notify-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let mut rx = Listener::new(UnixDatagram::bind_addr(&addr).unwrap());
    let d = flanneld(
        &etcd,
        dir.path(),
        "198.18.0.32",
        &[],
        &[
            ("NOTIFY_SOCKET", &format!("@{name}")),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    if rx.wait(SEC * 15, |m| has_line(m, "READY=1")).is_none() {
        panic!("no READY=1:\n{}log:\n{}", rx.all(), d.log());
    }
    assert!(flannel_shared::subnet_env::previous_subnet(&dir.path().join("subnet.env")).is_some());
    rx.wait(Duration::from_millis(600), |_| false);
    assert!(
        rx.times_of("WATCHDOG=1").is_empty(),
        "pinged a watchdog meant for PID 1:\n{}",
        rx.all()
    );
}
