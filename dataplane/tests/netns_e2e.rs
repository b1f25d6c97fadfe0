//! End to end in network namespaces (needs root; skips otherwise, fails under CI).
//!
//! Topology ([`HostPair`] from the `flannel-perf` testbed, with the rogue sender's address
//! added), all created by the test with per-run names and torn down on drop, also when a test
//! fails:
//!
//! ```text
//!  [c-a] 10.1.15.2 ── br0 10.1.15.1 [host A] ua 198.18.0.1 ══veth══ ub 198.18.0.2 [host B] br0 10.1.16.1 ── 10.1.16.2 [c-b]
//!                              flannel0 (flannel-dataplane)      flannel0 (flannel-dataplane)
//!                                          ua 198.18.0.3 (a sender B does not know)
//! ```
//!
//! No namespace has a route off the machine; underlay 198.18.0.0/15 only; overlay 10.x only
//! inside the namespaces; the root namespace sends nothing anywhere. Route tables are written
//! directly with `RouteTableWriter` (no etcd, no flanneld). The data planes are testbed
//! [`Daemon`]s (log file per host, stopped by PID).
//!
//! The same scenario runs with io_uring and with `--no-io-uring`. The TCP sender and receiver
//! and the connect probe are threads of the test that entered a container's namespace
//! ([`Netns::spawn_thread`]: `setns` moves only the calling thread; sockets stay in the
//! namespace they were made in).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flannel_perf::harness::cpu;
use flannel_perf::testbed::netns::Netns;
use flannel_perf::testbed::pair::{HostPair, HOST_A_IP as HOST_A, HOST_B_IP as HOST_B};
use flannel_perf::testbed::process::{Daemon, Signal};
use flannel_perf::testbed::{have, is_root, join, require, wait_for};
use flannel_shared::route_table::{Route, RouteTableWriter, TableMeta};
use flannel_shared::stats::StatsReader;
use flannel_shared::Ipv4Net;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_flannel-dataplane");
const ROGUE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const CA: Ipv4Addr = Ipv4Addr::new(10, 1, 15, 2);
const CB: Ipv4Addr = Ipv4Addr::new(10, 1, 16, 2);
const TRANSFER_BYTES: usize = 48 << 20;

/// The e2e scenarios share the two CPUs; run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[track_caller]
fn can_run() -> bool {
    require("root (network namespaces, TUN)", is_root())
        && require("`ip` (iproute2) installed", have("ip"))
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// Waits up to 5 s for `cond`; panics when it does not hold by then.
#[track_caller]
fn wait_5s(mut cond: impl FnMut() -> bool) {
    assert!(
        wait_for(Duration::from_secs(5), || cond().then_some(())).is_some(),
        "condition not reached in 5 s"
    );
}

/// The counters that moved between two [`Topo::counters`] readings, as `name+delta`.
fn counter_deltas(before: &[(String, u64)], after: &[(String, u64)]) -> String {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| a.1 != b.1)
        .map(|(b, a)| format!("{}+{}", b.0, a.1.wrapping_sub(b.1)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A TCP connect to `dst` with a deadline: `Ok` when it connected, else the error the kernel
/// reported. Unlike `TcpStream::connect_timeout` it does not take the first POLLERR as the
/// verdict: when the ICMP error reaches the socket while `connect()` still holds the socket
/// lock (the data plane answers that fast; `nstat` counts it as `TcpExtLockDroppedIcmps`), the
/// kernel reports POLLERR with `SO_ERROR` still 0 for a moment, then POLLHUP with the error a
/// few milliseconds later (seen on 6.18, 1 connect in ~3,000). std returns "no error set after
/// POLLHUP" there; this keeps polling until the error shows.
fn connect_outcome(dst: SocketAddrV4, timeout: Duration) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let deadline = Instant::now() + timeout;
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    match s.connect(&dst.into()) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        let mut pfd = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            continue;
        }
        if let Some(e) = s.take_error()? {
            return Err(e);
        }
        if pfd.revents & (libc::POLLERR | libc::POLLHUP) == 0 {
            return Ok(());
        }
        // POLLERR/POLLHUP with no error yet: the error is on its way (see above).
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The [`HostPair`] with a data plane on each host. Field order is drop order: the data planes
/// (stopped by PID), the namespaces, the directory (route tables, stats files, logs).
struct Topo {
    dp_a: Option<Daemon>,
    dp_b: Option<Daemon>,
    net: HostPair,
    dir: tempfile::TempDir,
}

impl Topo {
    /// The namespace of `role`: host `a` or `b`, container `ca` or `cb`.
    fn ns(&self, role: &str) -> &Netns {
        match role {
            "a" => &self.net.a,
            "b" => &self.net.b,
            "ca" => &self.net.ca,
            "cb" => &self.net.cb,
            _ => panic!("no namespace {role:?}"),
        }
    }

    /// `cmd` run in `role`'s namespace; its stdout (panics when it fails).
    fn exec(&self, role: &str, cmd: &[&str]) -> String {
        let out = self
            .ns(role)
            .exec(cmd[0], &cmd[1..])
            .unwrap_or_else(|e| panic!("{e:#}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn build() -> Topo {
        let gateway = |third| (Ipv4Addr::new(10, 1, third, 1), 24);
        Topo {
            dp_a: None,
            dp_b: None,
            net: HostPair::create([gateway(15), gateway(16)], &[ROGUE]).unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Both route tables: A holds 10.1.15.0/24, B 10.1.16.0/24, each table has both routes.
    /// The writers are returned so a test can change a table later.
    fn publish_tables(&self) -> (RouteTableWriter, RouteTableWriter) {
        let mut wa = RouteTableWriter::open(&self.table_path("a")).unwrap();
        wa.publish(&meta("10.1.15.0/24"), &both_routes()).unwrap();
        let mut wb = RouteTableWriter::open(&self.table_path("b")).unwrap();
        wb.publish(&meta("10.1.16.0/24"), &both_routes()).unwrap();
        (wa, wb)
    }

    /// The topology with both tables published and a data plane on each host (`a_env`: extra
    /// environment for A's), once a ping A → B gets through.
    fn forwarding(a_env: &[(&str, String)]) -> (Topo, (RouteTableWriter, RouteTableWriter)) {
        let mut t = Topo::build();
        let tables = t.publish_tables();
        t.start_dataplane_with_env("a", &[], a_env);
        t.start_dataplane("b", &[]);
        assert!(t.ping("ca", CB), "ping A→B failed\nA:\n{}", t.log("a"));
        (t, tables)
    }

    fn table_path(&self, host: &str) -> PathBuf {
        self.dir.path().join(format!("routes-{host}"))
    }

    fn stats_path(&self, host: &str) -> PathBuf {
        self.dir.path().join(format!("stats-{host}"))
    }

    fn dp_slot(&mut self, host: &str) -> &mut Option<Daemon> {
        match host {
            "a" => &mut self.dp_a,
            "b" => &mut self.dp_b,
            _ => panic!("no host {host:?}"),
        }
    }

    /// `host`'s data plane (the latest started).
    fn dp(&self, host: &str) -> &Daemon {
        match host {
            "a" => self.dp_a.as_ref(),
            "b" => self.dp_b.as_ref(),
            _ => panic!("no host {host:?}"),
        }
        .unwrap_or_else(|| panic!("no data plane started on {host}"))
    }

    fn dp_mut(&mut self, host: &str) -> &mut Daemon {
        self.dp_slot(host)
            .as_mut()
            .unwrap_or_else(|| panic!("no data plane started on {host}"))
    }

    fn start_dataplane(&mut self, host: &str, extra: &[&str]) {
        self.start_dataplane_with_env(host, extra, &[]);
    }

    /// [`Topo::start_dataplane`] with extra environment variables for the data plane.
    fn start_dataplane_with_env(&mut self, host: &str, extra: &[&str], env: &[(&str, String)]) {
        let table = self.table_path(host);
        let stats = self.stats_path(host);
        let _ = std::fs::remove_file(&stats);
        let mut cmd = self.ns(host).command(BIN);
        cmd.args(["--workers", "2", "-v", "--route-table"])
            .arg(&table)
            .arg("--stats")
            .arg(&stats)
            .args(extra)
            // These tests are of the workers' I/O paths (their counters, their datagrams):
            // never the express lane, even when the suite runs with it (scripts/test).
            .env_remove("FLANNEL_DATAPLANE_EXPRESS")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let log = self.dir.path().join(format!("dp-{host}.log"));
        let dp = Daemon::spawn(&format!("flannel-dataplane on {host}"), cmd, &log).unwrap();
        let dp = self.dp_slot(host).insert(dp);
        // Up: the stats file exists and this process (only its own lines of the log count)
        // said it is forwarding; its UDP sockets are bound only after the stats file is created.
        let deadline = Instant::now() + Duration::from_secs(15);
        while StatsReader::open(&stats).is_err() || !dp.log().contains("forwarding workers=") {
            if let Some(st) = dp.try_wait() {
                panic!("dataplane on {host} exited early ({st}):\n{}", dp.log());
            }
            assert!(
                Instant::now() < deadline,
                "dataplane on {host} not up:\n{}",
                dp.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What `host`'s latest data plane logged (earlier runs' lines not included).
    fn log(&self, host: &str) -> String {
        self.dp(host).log()
    }

    fn stats(&self, host: &str) -> StatsReader {
        StatsReader::open(&self.stats_path(host)).unwrap()
    }

    /// Every counter of `host`'s data plane, summed over its workers (for failure reports).
    fn counters(&self, host: &str) -> Vec<(String, u64)> {
        let r = self.stats(host);
        r.names().iter().map(|n| (n.clone(), r.total(n))).collect()
    }

    /// Starts checking every datagram on B's underlay device against the wire format, in a
    /// thread, until [`WireWatch::finish`].
    fn watch_wire_at_b(&self) -> WireWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handle = std::thread::spawn({
            let cap = capture_socket_opts(self.ns("b"), "ub", true);
            let stop = std::sync::Arc::clone(&stop);
            move || wire_watch(cap, stop)
        });
        WireWatch { stop, handle }
    }

    /// A TCP transfer from container A to container B ([`tcp_client`] → [`tcp_server`], each a
    /// thread in its container's namespace); asserts both ends saw the same length and SHA-256,
    /// and returns the server's `"<bytes> <sha256>"`.
    fn tcp_transfer_a_to_b(&self) -> String {
        // Listening before the client starts: the socket is made (and stays) in B's container.
        let listener = self
            .ns("cb")
            .run_in(|| TcpListener::bind("0.0.0.0:5001").unwrap());
        let server = std::thread::spawn(move || tcp_server(listener));
        let sent = self
            .ns("ca")
            .spawn_thread(|| tcp_client(SocketAddrV4::new(CB, 5001)))
            .join()
            .unwrap_or_else(|_| panic!("tcp client failed (panic above)\nA:\n{}", self.log("a")));
        let got = join(server);
        assert_eq!(sent, got, "SHA-256 of the transfer differs");
        got
    }

    /// True when both echo requests of `ping -c 2` from `from`'s namespace to `to` were
    /// answered (ping itself exits 0 on a single reply).
    fn ping(&self, from: &str, to: Ipv4Addr) -> bool {
        self.ping_replies(from, to) == 2
    }

    /// Whether one echo request from `from`'s namespace to `to` is answered within `timeout`
    /// (retrying): for convergence after a restart, not as proof that every packet gets through.
    fn wait_reachable(&self, from: &str, to: Ipv4Addr, timeout: Duration) -> bool {
        self.ns(from).wait_reachable(to, timeout).is_ok()
    }

    /// How many of the two echo requests of `ping -c 2` from `from`'s namespace to `to` were
    /// answered (from ping's summary line).
    fn ping_replies(&self, from: &str, to: Ipv4Addr) -> u32 {
        let ns = self.ns(from);
        let (summary, _) = ns
            .ping(to, 2)
            .unwrap_or_else(|e| panic!("no ping summary from {} to {to}: {e:#}", ns.name()));
        u32::try_from(summary.received).expect("at most 2 replies")
    }
}

fn meta(ours: &str) -> TableMeta {
    TableMeta {
        network: net("10.1.0.0/16"),
        subnet_len: 24,
        our_subnet: Some(net(ours)),
        mtu: 1472,
        port: 8285,
    }
}

fn both_routes() -> Vec<Route> {
    vec![
        Route {
            subnet: net("10.1.15.0/24"),
            public_ip: HOST_A,
        },
        Route {
            subnet: net("10.1.16.0/24"),
            public_ip: HOST_B,
        },
    ]
}

/// A valid inner IPv4/UDP packet (IHL 5) with a correct header checksum.
fn inner_packet(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 8 + 4];
    p[0] = 0x45;
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = ttl;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

fn checksum(d: &[u8]) -> u16 {
    let mut s: u32 = d
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An AF_PACKET socket on `ifname` in namespace `ns`, receiving IPv4 packets (no link header).
fn capture_socket(ns: &Netns, ifname: &'static str) -> OwnedFd {
    capture_socket_opts(ns, ifname, false)
}

/// As [`capture_socket`]; with `vnet` every frame starts with a virtio_net_hdr
/// (PACKET_VNET_HDR, SOCK_RAW only: then the Ethernet header follows it), so a GSO skb on
/// the veth shows its segment size.
fn capture_socket_opts(ns: &Netns, ifname: &'static str, vnet: bool) -> OwnedFd {
    ns.run_in(move || {
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                if vnet {
                    libc::SOCK_RAW
                } else {
                    libc::SOCK_DGRAM
                },
                i32::from(proto),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if vnet {
            let one: libc::c_int = 1;
            // SAFETY: valid int option of the given size.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_VNET_HDR,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            assert_eq!(r, 0, "PACKET_VNET_HDR: {}", std::io::Error::last_os_error());
        }
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: valid C string.
        let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(idx > 0);
        // SAFETY: sockaddr_ll is plain data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = idx as i32;
        // SAFETY: `sll` is a valid sockaddr_ll of the given size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0);
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: valid timeval of the given size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        fd
    })
}

/// Checks one inner packet as it travels on the wire: one whole IPv4 packet no larger than
/// the MTU, header checksum valid and, for TCP and UDP, the transport checksum too
/// (recomputed from scratch: nothing may be left checksum-partial on the wire).
fn check_inner_on_wire(inner: &[u8]) -> Result<(), String> {
    if inner.len() < 20 || inner[0] != 0x45 {
        return Err(format!(
            "not an IPv4 header: {:02x?}",
            &inner[..inner.len().min(20)]
        ));
    }
    let total = usize::from(u16::from_be_bytes([inner[2], inner[3]]));
    if total != inner.len() {
        return Err(format!(
            "total length {total} != datagram payload {}",
            inner.len()
        ));
    }
    if inner.len() > 1472 {
        return Err(format!(
            "inner packet of {} bytes exceeds the MTU 1472",
            inner.len()
        ));
    }
    if checksum(&inner[..20]) != 0 {
        return Err("inner IP header checksum".into());
    }
    let proto = inner[9];
    if (proto == 6 || proto == 17) && u16::from_be_bytes([inner[6], inner[7]]) & 0x3fff == 0 {
        let l4 = &inner[20..];
        let mut ph = Vec::with_capacity(12 + l4.len());
        ph.extend_from_slice(&inner[12..20]);
        ph.extend_from_slice(&[0, proto]);
        ph.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        ph.extend_from_slice(l4);
        let udp_no_sum = proto == 17 && l4.len() >= 8 && l4[6..8] == [0, 0];
        if !udp_no_sum && checksum(&ph) != 0 {
            return Err(format!(
                "inner transport checksum (proto {proto}, {} bytes)",
                l4.len()
            ));
        }
    }
    Ok(())
}

/// Reads frames (with vnet headers) from `cap` until `stop`; checks every UDP datagram to
/// 8285, splitting UDP GSO skbs by their segment size as a NIC would. Returns (datagrams
/// checked, GSO skbs seen, first violation).
/// A running [`wire_watch`] thread.
struct WireWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(usize, usize, Option<String>)>,
}

impl WireWatch {
    /// Stops the watch: (datagrams checked, UDP GSO skbs seen, first violation).
    fn finish(self) -> (usize, usize, Option<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

fn wire_watch(
    cap: OwnedFd,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, usize, Option<String>) {
    let mut buf = vec![0u8; 1 << 17];
    let (mut checked, mut gso_skbs) = (0usize, 0usize);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Some(n) = recv_packet(&cap, &mut buf) else {
            continue;
        };
        // virtio_net_hdr (10) + Ethernet (14) + IPv4.
        if n < 10 + 14 + 28 || buf[10 + 12..10 + 14] != [0x08, 0x00] {
            continue;
        }
        let gso_type = buf[1];
        let gso_size = usize::from(u16::from_ne_bytes([buf[4], buf[5]]));
        let p = &buf[10 + 14..n];
        let ihl = usize::from(p[0] & 15) * 4;
        if p[9] != 17 || p.len() < ihl + 8 {
            continue;
        }
        let udp = &p[ihl..];
        if u16::from_be_bytes([udp[2], udp[3]]) != 8285 {
            continue;
        }
        let payload = &udp[8..];
        let seg = if gso_type & 0x7f == 5 {
            gso_skbs += 1;
            gso_size.max(1)
        } else {
            let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
            if udp_len != udp.len() {
                return (
                    checked,
                    gso_skbs,
                    Some(format!("UDP length {udp_len} != {}", udp.len())),
                );
            }
            payload.len().max(1)
        };
        for inner in payload.chunks(seg) {
            if let Err(e) = check_inner_on_wire(inner) {
                return (checked, gso_skbs, Some(e));
            }
            checked += 1;
        }
    }
    (checked, gso_skbs, None)
}

fn recv_packet(fd: &OwnedFd, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    (n > 0).then_some(n as usize)
}

fn active_workers(r: &StatsReader, names: &[&str], min: u64) -> usize {
    r.snapshot()
        .iter()
        .filter(|w| names.iter().map(|n| w.get(n).unwrap_or(0)).sum::<u64>() >= min)
        .count()
}

fn scenario(tag: &str, extra: &[&str]) {
    if !can_run() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topo::build();

    // Route tables, written as flanneld would.
    let (mut wa, _wb) = t.publish_tables();
    t.start_dataplane("a", extra);
    t.start_dataplane("b", extra);

    let want_path = if extra.contains(&"--no-io-uring") {
        "fallback"
    } else {
        "io_uring"
    };
    assert_eq!(t.stats("a").io_path().name(), want_path);
    let links = t.exec("a", &["ip", "-o", "addr", "show", "dev", "flannel0"]);
    assert!(links.contains("10.1.15.0/32"), "{links}");
    let routes = t.exec("a", &["ip", "route", "show", "10.1.0.0/16"]);
    assert!(routes.contains("dev flannel0"), "{routes}");
    let mtu = t.exec("a", &["cat", "/sys/class/net/flannel0/mtu"]);
    assert_eq!(mtu.trim(), "1472");

    // 1. Ping both ways.
    assert!(
        t.ping("ca", CB),
        "ping A→B failed\nA:\n{}\nB:\n{}",
        t.log("a"),
        t.log("b")
    );
    assert!(t.ping("cb", CA), "ping B→A failed");

    // 2. Wire check: on B's underlay, UDP to 8285 carries exactly the inner IPv4 packet.
    let cap = capture_socket(t.ns("b"), "ub");
    let pinger = std::thread::spawn({
        let mut ping = t.ns("ca").command("ping");
        ping.args([
            "-c",
            "3",
            "-i",
            "0.2",
            "-s",
            "100",
            "-p",
            "f1a2",
            "10.1.16.2",
        ])
        .stdout(Stdio::null());
        move || ping.status().unwrap()
    });
    let mut seen = 0;
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen == 0 && Instant::now() < deadline {
        let Some(n) = recv_packet(&cap, &mut buf) else {
            continue;
        };
        let p = &buf[..n];
        let ihl = usize::from(p[0] & 15) * 4;
        if p[9] != 17 || n < ihl + 8 {
            continue;
        }
        let udp = &p[ihl..];
        let dport = u16::from_be_bytes([udp[2], udp[3]]);
        if dport != 8285 {
            continue;
        }
        let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        let payload = &udp[8..udp_len];
        // Outer: A → B.
        assert_eq!(&p[12..16], &HOST_A.octets());
        assert_eq!(&p[16..20], &HOST_B.octets());
        // Payload: one whole IPv4 packet, nothing before or after it.
        assert_eq!(payload[0], 0x45, "payload starts with an IPv4 header");
        let total = usize::from(u16::from_be_bytes([payload[2], payload[3]]));
        assert_eq!(
            total,
            payload.len(),
            "inner total length = UDP payload length"
        );
        assert_eq!(checksum(&payload[..20]), 0, "inner header checksum valid");
        if payload[9] == 1 && payload[20] == 8 && payload[12..16] == CA.octets() {
            assert_eq!(&payload[16..20], &CB.octets());
            // 64 from ping, -1 forwarding in A's kernel, -1 by the data plane on send.
            assert_eq!(payload[8], 62, "inner TTL");
            assert_eq!(payload.len(), 20 + 8 + 100);
            assert!(
                payload[28..].windows(2).any(|w| w == [0xf1, 0xa2]),
                "ping pattern"
            );
            seen += 1;
        }
    }
    assert!(pinger.join().unwrap().success());
    assert!(
        seen > 0,
        "no encapsulated echo request seen on the underlay"
    );
    drop(cap);

    // 3. TCP transfer with SHA-256 check, watching the wire on B's underlay meanwhile.
    let watcher = t.watch_wire_at_b();
    let tx_before = (
        t.stats("a").total("tun_rx_packets"),
        t.stats("a").total("udp_tx_packets"),
    );
    let got = t.tcp_transfer_a_to_b();
    assert!(got.starts_with(&format!("{TRANSFER_BYTES} ")), "{got}");
    let (checked, gso_skbs, violation) = watcher.finish();
    eprintln!("[{tag}] wire check during the transfer: {checked} datagrams checked, {gso_skbs} UDP GSO skbs");
    assert_eq!(violation, None, "wire format violated");
    assert!(
        checked > 100,
        "too few datagrams seen on the wire: {checked}"
    );
    // Offloads: on unless switched off, and then the TUN reads are super-packets.
    let log_a = t.log("a");
    let reads = t.stats("a").total("tun_rx_packets") - tx_before.0;
    let datagrams = t.stats("a").total("udp_tx_packets") - tx_before.1;
    eprintln!("[{tag}] host a during the transfer: {reads} TUN reads, {datagrams} datagrams sent");
    if extra.contains(&"--no-offload") {
        assert!(log_a.contains("offloads: off (--no-offload)"), "{log_a}");
        assert!(datagrams <= reads, "no super-packets without offloads");
    } else {
        assert!(log_a.contains("offloads probed"), "{log_a}");
        if log_a.contains("tun_vnet_hdr=true") {
            assert!(
                datagrams > 4 * reads,
                "TSO on but TUN reads are not super-packets: {reads} reads, {datagrams} datagrams"
            );
        }
    }

    // 3b. Bursts of small UDP datagrams: every one arrives intact and in order; with UDP GSO
    // the single packets a round of TUN reads finds for one peer leave gathered in one send.
    let gathered_before = t.stats("a").total("udp_tx_gathered");
    let got = udp_bursts_a_to_b(&t, UDP_BURSTS, UDP_BURST_LEN);
    let expected: Vec<u32> = (0..UDP_BURSTS * UDP_BURST_LEN).collect();
    assert_eq!(got, expected, "small datagrams lost, reordered or damaged");
    let gathered = t.stats("a").total("udp_tx_gathered") - gathered_before;
    eprintln!(
        "[{tag}] host a: {gathered} of {} small datagrams left in gathered sends",
        expected.len()
    );
    if extra.contains(&"--no-io-uring") || extra.contains(&"--no-offload") {
        assert_eq!(gathered, 0, "gathering is an io_uring path with UDP GSO");
    } else {
        assert!(
            gathered > 0,
            "bursts of single packets to one peer were never gathered"
        );
    }

    // 4. Several flows use more than one worker on each host.
    let mut iperf_srv = t
        .ns("cb")
        .command("iperf3")
        .args(["-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before_a = t.stats("a").snapshot();
    let before_b = t.stats("b").snapshot();
    let st = t
        .ns("ca")
        .command("iperf3")
        .args(["-c", "10.1.16.2", "-p", "5201", "-P", "8", "-t", "2"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let _ = iperf_srv.kill();
    let _ = iperf_srv.wait();
    assert!(st.success(), "iperf3 failed");
    for (host, before) in [("a", before_a), ("b", before_b)] {
        let after = t.stats(host).snapshot();
        let per: Vec<u64> = after
            .iter()
            .zip(&before)
            .map(|(x, y)| {
                let f = |w: &flannel_shared::stats::WorkerCounters| {
                    w.get("tun_rx_packets").unwrap() + w.get("udp_rx_packets").unwrap()
                };
                f(x) - f(y)
            })
            .collect();
        let total: u64 = per.iter().sum();
        let busy = per.iter().filter(|&&p| p * 50 >= total).count();
        eprintln!("[{tag}] host {host}: packets per worker during iperf3 -P 8: {per:?}");
        assert!(
            busy >= 2,
            "host {host}: only one worker carried the flows: {per:?}"
        );
    }
    let b = t.stats("b");
    eprintln!(
        "[{tag}] host b: udp_rx per worker: {:?}",
        b.snapshot()
            .iter()
            .map(|w| w.get("udp_rx_packets").unwrap())
            .collect::<Vec<_>>()
    );
    assert!(active_workers(&b, &["udp_rx_packets", "tun_rx_packets"], 100) >= 2);

    // 5. Garbage to B:8285 is dropped and counted per reason; forwarding continues.
    let good = inner_packet(CA, CB, 30);
    let mut not_v4 = good.clone();
    not_v4[0] = 0x65;
    let mut bad_ihl = good.clone();
    bad_ihl[0] = 0x43;
    let mut bad_len = good.clone();
    bad_len[3] += 4;
    let cases: Vec<(Ipv4Addr, Vec<u8>, &str)> = vec![
        (HOST_A, vec![0x45, 0, 0], "drop_too_short"),
        (HOST_A, not_v4, "drop_not_ipv4"),
        (HOST_A, bad_ihl, "drop_bad_ihl"),
        (HOST_A, bad_len, "drop_bad_length"),
        (
            HOST_A,
            inner_packet(CA, Ipv4Addr::new(10, 1, 15, 7), 30),
            "drop_dst_not_local",
        ),
        (
            HOST_A,
            inner_packet(Ipv4Addr::new(10, 1, 77, 2), CB, 30),
            "drop_spoofed_src",
        ),
        (ROGUE, good.clone(), "drop_unknown_sender"),
        (HOST_A, inner_packet(CA, CB, 1), "drop_rx_ttl_expired"),
    ];
    let before: Vec<u64> = cases.iter().map(|c| t.stats("b").total(c.2)).collect();
    let sends: Vec<(Ipv4Addr, Vec<u8>)> = cases.iter().map(|c| (c.0, c.1.clone())).collect();
    t.ns("a").run_in(move || {
        for (src, bytes) in sends {
            let s = UdpSocket::bind(SocketAddrV4::new(src, 0)).unwrap();
            for _ in 0..3 {
                s.send_to(&bytes, SocketAddrV4::new(HOST_B, 8285)).unwrap();
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now: Vec<u64> = cases.iter().map(|c| t.stats("b").total(c.2)).collect();
        let missing: Vec<&str> = cases
            .iter()
            .zip(now.iter().zip(&before))
            .filter(|(_, (n, b))| **n < **b + 3)
            .map(|(c, _)| c.2)
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "drops not counted: {missing:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // 5b. Injection from B itself: a local process on B sending from B's own (leased) address
    //     a packet that would otherwise pass every check (sender holds a lease, inner source in
    //     its subnet, destination local). Dropped and counted as from_self.
    let from_self = t.stats("b").total("drop_from_self");
    let forged = inner_packet(Ipv4Addr::new(10, 1, 16, 9), CB, 30);
    t.ns("b").run_in(move || {
        let s = UdpSocket::bind(SocketAddrV4::new(HOST_B, 0)).unwrap();
        for _ in 0..3 {
            s.send_to(&forged, SocketAddrV4::new(HOST_B, 8285)).unwrap();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.stats("b").total("drop_from_self") < from_self + 3 {
        assert!(
            Instant::now() < deadline,
            "self-injection not dropped: drop_from_self {} → {}\n{}",
            from_self,
            t.stats("b").total("drop_from_self"),
            counter_deltas(&[], &t.counters("b"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(t.ping("ca", CB), "ping after garbage failed");

    // 6. B's lease leaves A's table: B becomes unreachable and the sender gets ICMP
    //    net-unreachable (flannel sends none about ICMP, so probe with TCP: connect fails
    //    at once with ENETUNREACH instead of timing out).
    wa.publish(
        &meta("10.1.15.0/24"),
        &[Route {
            subnet: net("10.1.15.0/24"),
            public_ip: HOST_A,
        }],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let icmp_before = t.stats("a").total("icmp_unreachable_sent");
    let (probe, took) = t.ns("ca").run_in(|| {
        let start = Instant::now();
        let r = connect_outcome(SocketAddrV4::new(CB, 5001), Duration::from_secs(3));
        (r, start.elapsed())
    });
    match probe {
        Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) => {
            eprintln!("[{tag}] connect failed with ENETUNREACH after {took:?}");
        }
        other => panic!(
            "connect did not fail with ENETUNREACH: {other:?} after {took:?}\nA:\n{}",
            t.log("a")
        ),
    }
    // A worker publishes its counters at the end of its batch, which can be after the ICMP it
    // wrote has already reached the prober: wait for the count, do not read it once.
    wait_5s(|| t.stats("a").total("icmp_unreachable_sent") > icmp_before);
    assert_eq!(
        t.ping_replies("ca", CB),
        0,
        "B still reachable after its route was removed"
    );
    wait_5s(|| t.stats("a").total("drop_no_route") > 0);

    // Route back: reachable again without restarting anything.
    wa.publish(&meta("10.1.15.0/24"), &both_routes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        t.ping("ca", CB),
        "B not reachable after its route came back"
    );

    // Our subnet changes in the table: the TUN address follows.
    let mut moved = meta("10.1.15.0/24");
    moved.our_subnet = Some(net("10.1.17.0/24"));
    wa.publish(&moved, &both_routes()).unwrap();
    wait_5s(|| {
        let a = t.exec("a", &["ip", "-o", "addr", "show", "dev", "flannel0"]);
        a.contains("10.1.17.0/32") && !a.contains("10.1.15.0/32")
    });
    wa.publish(&meta("10.1.15.0/24"), &both_routes()).unwrap();
    wait_5s(|| {
        t.exec("a", &["ip", "-o", "addr", "show", "dev", "flannel0"])
            .contains("10.1.15.0/32")
    });

    // A's data plane crashes (SIGKILL) and is restarted: forwarding resumes.
    t.dp_mut("a").kill9();
    t.start_dataplane("a", extra);
    // Known issue (README, fault table): now and then (1 restart in ~75 under load) one
    // datagram from B to A right after A's restart never reaches A's UDP layer (B counted the
    // send; A's UdpInDatagrams did not move; no UdpNoPorts, no socket drops), so one echo
    // request goes unanswered. The interruption is measured and bounded (≤ 250 ms) by
    // perf/tests/faults.rs. Asserted here: forwarding is back within a second, and at least one
    // of the next two echo requests is answered; a loss is reported with the counters.
    let reachable = t.wait_reachable("ca", CB, Duration::from_secs(1));
    let (a0, b0) = (t.counters("a"), t.counters("b"));
    let replies = t.ping_replies("ca", CB);
    let report = || {
        format!(
            "reachable within 1 s: {reachable}, then {replies}/2 replies; counters during those \
             2 pings: A: {}; B: {}\nA's UDP sockets:\n{}\nA's UDP counters:\n{}",
            counter_deltas(&a0, &t.counters("a")),
            counter_deltas(&b0, &t.counters("b")),
            t.exec("a", &["ss", "-uanm"]),
            t.exec("a", &["nstat", "-asz", "Udp*"]),
        )
    };
    assert!(
        reachable && replies >= 1,
        "no forwarding after a data-plane restart: {}\nA:\n{}\nB:\n{}",
        report(),
        t.log("a"),
        t.log("b")
    );
    if replies < 2 {
        eprintln!(
            "[{tag}] one echo request lost after the restart: {}",
            report()
        );
    }

    // SIGTERM → clean exit 0.
    let hosts = ["b", "a"]; // B, then the restarted A
    for h in hosts {
        t.dp(h).signal(Signal::SIGTERM);
    }
    // Once (fallback path, three heavy jobs on two cores) a data plane was still running 5 s
    // after SIGTERM; the exit includes the kernel unregistering flannel0. The unit's stop
    // timeout is systemd's default 90 s; 15 s here, and a failure shows where it waits.
    for (i, h) in hosts.into_iter().enumerate() {
        let pid = t.dp(h).pid().expect("still our child");
        match t.dp_mut(h).wait_timeout(Duration::from_secs(15)) {
            Some(st) => assert!(st.success(), "dataplane {i} exit status {st}"),
            None => {
                let proc = |f: &str| {
                    std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default()
                };
                panic!(
                    "dataplane {i} (host {h}) still running 15 s after SIGTERM; wchan {:?}, \
                     kernel stack:\n{}\nlog:\n{}",
                    proc("wchan"),
                    proc("stack"),
                    t.log(h)
                );
            }
        }
    }
    eprintln!("[{tag}] A log:\n{}", t.log("a"));
}

/// sd_notify as systemd sees it: a unit `Type=notify` with `WatchdogSec=`. READY=1 only once
/// flannel0 is configured and forwarding works; WATCHDOG=1 at half of `WATCHDOG_USEC`;
/// STOPPING=1 on SIGTERM. The socket is a path (abstract names are per network namespace).
#[test]
fn e2e_sd_notify() {
    use std::os::unix::net::UnixDatagram;
    if !can_run() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topo::build();
    let _tables = t.publish_tables();
    let sock_path = t.dir.path().join("notify-a.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    t.start_dataplane_with_env(
        "a",
        &[],
        &[
            ("NOTIFY_SOCKET", sock_path.display().to_string()),
            ("WATCHDOG_USEC", "200000".to_string()),
        ],
    );
    let mut buf = [0u8; 4096];
    let mut recv = || -> String {
        let n = sock.recv(&mut buf).expect("sd_notify datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // Up to READY=1 only STATUS lines and the TUN queues offered to the fd store (the
    // hand-over across restarts: `handover`); at READY, flannel0 is configured.
    let mut stored = false;
    let ready = loop {
        let m = recv();
        if m.lines().any(|l| l == "READY=1") {
            break m;
        }
        stored |= m == "FDSTORE=1\nFDNAME=tun.0";
        assert!(
            m.lines().all(|l| l.starts_with("STATUS=")
                || l.starts_with("FDNAME=tun.")
                || l.starts_with("FDNAME=udp.")
                || ["FDSTORE=1", "FDSTOREREMOVE=1"].contains(&l)),
            "before READY=1: {m:?}"
        );
    };
    assert!(
        stored,
        "the TUN queues were not offered to the fd store before READY=1"
    );
    eprintln!("[n] ready message: {ready:?}");
    let links = t.exec("a", &["ip", "-o", "addr", "show", "dev", "flannel0"]);
    assert!(
        links.contains("10.1.15.0/32"),
        "READY=1 before flannel0: {links}"
    );
    // WATCHDOG=1 every ~100 ms (half of 200 ms): at least 5 in one second.
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_secs(1) {
        if recv().lines().any(|l| l == "WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!(
        pings >= 5,
        "{pings} WATCHDOG=1 in 1 s with WATCHDOG_USEC=200000"
    );
    // Forwarding works (B without notify).
    t.start_dataplane("b", &[]);
    assert!(t.ping("ca", CB), "no forwarding after READY=1");
    // SIGTERM: STOPPING=1, then a clean exit.
    t.dp("a").signal(Signal::SIGTERM);
    let stopping = (0..100).any(|_| recv().lines().any(|l| l == "STOPPING=1"));
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    assert!(t.dp_mut("a").wait().unwrap().success());
}

#[test]
fn e2e_io_uring() {
    scenario("u", &[]);
}

#[test]
fn e2e_fallback() {
    scenario("f", &["--no-io-uring"]);
}

#[test]
fn e2e_io_uring_no_offload() {
    scenario("n", &["--no-offload"]);
}

#[test]
fn e2e_fallback_no_offload() {
    scenario("g", &["--no-io-uring", "--no-offload"]);
}

/// UDP GSO refused at run time: the test makes A's UDP sockets SO_NO_CHECK from outside
/// ([`refuse_udp_gso`]), on which the kernel answers every UDP_SEGMENT send with EINVAL (as
/// kernels or devices without GSO support answer EIO/EINVAL). A's data plane must log that once, turn
/// GSO off and keep forwarding (segments one by one); the transfer still arrives intact and
/// the wire format holds.
#[test]
fn e2e_gso_refused_falls_back() {
    if !can_run() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (t, _tables) = Topo::forwarding(&[]);
    let pid = t.dp("a").pid().expect("A's data plane runs");
    assert!(refuse_udp_gso(pid) >= 4, "A's UDP sockets not found");

    let watcher = t.watch_wire_at_b();
    t.tcp_transfer_a_to_b();
    let (checked, _, violation) = watcher.finish();
    assert_eq!(violation, None, "wire format violated");
    assert!(checked > 100, "too few datagrams seen: {checked}");
    let log = t.log("a");
    assert_eq!(
        log.matches("UDP_SEGMENT off for this destination").count(),
        1,
        "GSO refusal not logged exactly once:\n{log}"
    );
    assert_eq!(t.stats("a").total("udp_tx_errors"), 0, "{log}");
    eprintln!("[e] A log:\n{log}");
}

/// Sets SO_NO_CHECK on every IPv4 UDP socket of process `pid` (the data plane, or the child of
/// the `ip netns exec` that started it), taking each through `pidfd_getfd` (a socket option
/// belongs to the socket, not to the descriptor). Returns how many sockets it changed. The
/// kernel then refuses UDP_SEGMENT sends from them with EINVAL; plain datagrams still leave.
fn refuse_udp_gso(pid: u32) -> usize {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if !comm.starts_with("flannel-datapl") {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        return children
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .map(refuse_udp_gso)
            .sum();
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `pidfd` was just returned by pidfd_open and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let mut changed = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Ok(remote_fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: pidfd_getfd takes a pidfd, the target's descriptor number and flags, and
        // returns a new descriptor of ours (or -1).
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), remote_fd, 0) };
        if fd < 0 {
            continue;
        }
        // SAFETY: `fd` was just returned by pidfd_getfd and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let sock = socket2::SockRef::from(&fd);
        let is_udp4 = sock.domain().is_ok_and(|d| d == socket2::Domain::IPV4)
            && sock.r#type().is_ok_and(|t| t == socket2::Type::DGRAM);
        if !is_udp4 {
            continue;
        }
        let one: libc::c_int = 1;
        // SAFETY: `one` is a live int and the length is its size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_NO_CHECK: {}", std::io::Error::last_os_error());
        changed += 1;
    }
    changed
}

/// A second data plane on a host whose port is taken (its own TUN name, table and stats, so only
/// the port conflicts) refuses to start, naming the port; the first keeps forwarding.
#[test]
fn e2e_second_dataplane_on_the_same_port_refuses_to_start() {
    if !can_run() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (t, _tables) = Topo::forwarding(&[]);

    let stats2 = t.dir.path().join("stats-b2");
    let mut cmd = t.ns("b").command(BIN);
    cmd.args(["--workers", "2", "--tun-name", "flannel1", "--route-table"])
        .arg(t.table_path("b"))
        .arg("--stats")
        .arg(&stats2);
    let mut second = Daemon::spawn(
        "second flannel-dataplane on b",
        cmd,
        &t.dir.path().join("dp-b2.log"),
    )
    .unwrap();
    let status = second
        .wait_timeout(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the second data plane kept running:\n{}", second.log()));
    assert!(!status.success(), "{status}");
    let log = second.log();
    assert!(
        log.contains("UDP 0.0.0.0:8285 is in use by another process")
            && log.contains("refusing to start"),
        "{log}"
    );
    // The first one never lost its traffic.
    assert!(t.ping("ca", CB), "ping A→B after the refused start failed");
    assert!(t.ping("cb", CA), "ping B→A after the refused start failed");
}

/// The TUN device deleted under a running data plane (`ip link del flannel0`): the same process
/// notices within its table loop's turn, stops its workers, restarts in place (re-exec, same
/// PID) and recreates the device with its address and route; forwarding resumes both ways.
#[test]
fn e2e_tun_deleted_under_the_dataplane_is_recreated() {
    if !can_run() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut t, _tables) = Topo::forwarding(&[]);
    let pid = t.dp("b").pid();
    let ifindex_before = t.exec("b", &["cat", "/sys/class/net/flannel0/ifindex"]);
    t.exec("b", &["ip", "link", "del", "flannel0"]);
    let started = Instant::now();
    let back = wait_for(Duration::from_secs(15), || {
        (t.dp("b").log_count("forwarding workers=") >= 2).then_some(())
    });
    assert!(back.is_some(), "not recreated:\n{}", t.log("b"));
    let took = started.elapsed();
    assert_eq!(t.dp("b").pid(), pid, "restarted in place, same process");
    assert!(t.dp_mut("b").try_wait().is_none(), "still running");
    assert!(
        t.log("b")
            .contains("the TUN device was deleted under the data plane"),
        "{}",
        t.log("b")
    );
    let ifindex_after = t.exec("b", &["cat", "/sys/class/net/flannel0/ifindex"]);
    assert_ne!(ifindex_before, ifindex_after, "a new device");
    let addr = t.exec("b", &["ip", "-o", "addr", "show", "dev", "flannel0"]);
    assert!(addr.contains("inet 10.1.16.0/32"), "{addr}");
    assert!(
        t.wait_reachable("ca", CB, Duration::from_secs(10)),
        "A→B not reachable after the recreation\nB:\n{}",
        t.log("b")
    );
    assert!(t.ping("ca", CB), "ping A→B after the recreation failed");
    assert!(t.ping("cb", CA), "ping B→A after the recreation failed");
    eprintln!("[tun] recreated and forwarding after {took:?}");
}

/// Deterministic pseudo-random bytes (xorshift).
/// UDP bursts of step 3b: how many, and datagrams per burst (back to back: more than a round
/// of TUN reads, fewer than the TUN queue holds).
const UDP_BURSTS: u32 = 20;
const UDP_BURST_LEN: u32 = 200;
/// Payload of each: its sequence number, then a pattern derived from it.
const UDP_SMALL: usize = 36;

fn small_datagram(seq: u32) -> [u8; UDP_SMALL] {
    let mut d = [0u8; UDP_SMALL];
    d[..4].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in d[4..].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    d
}

/// Sends `bursts` × `per_burst` small datagrams from A's container to B's (each burst back to
/// back, 20 ms between bursts) and returns the sequence numbers B received intact, in arrival
/// order (a damaged datagram panics).
fn udp_bursts_a_to_b(t: &Topo, bursts: u32, per_burst: u32) -> Vec<u32> {
    let total = (bursts * per_burst) as usize;
    let rx = t
        .ns("cb")
        .run_in(|| UdpSocket::bind("0.0.0.0:5002").unwrap());
    // Room for every datagram should the receiving thread be descheduled for a while.
    let want: libc::c_int = 8 << 20;
    // SAFETY: a valid socket and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            rx.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&want as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let receiver = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(total);
        let mut buf = [0u8; 2048];
        while got.len() < total {
            let Ok(n) = rx.recv(&mut buf) else { break };
            assert_eq!(n, UDP_SMALL, "datagram length");
            let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            assert_eq!(buf[..n], small_datagram(seq), "datagram {seq} damaged");
            got.push(seq);
        }
        got
    });
    t.ns("ca")
        .spawn_thread(move || {
            let tx = UdpSocket::bind("0.0.0.0:0").unwrap();
            for b in 0..bursts {
                for i in 0..per_burst {
                    tx.send_to(
                        &small_datagram(b * per_burst + i),
                        SocketAddrV4::new(CB, 5002),
                    )
                    .unwrap();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .join()
        .unwrap();
    join(receiver)
}

fn fill(buf: &mut [u8], state: &mut u64) {
    for c in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let b = state.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
}

/// The receiving end of [`Topo::tcp_transfer_a_to_b`]: accepts one connection on `listener`
/// (within 30 s), reads to EOF and returns `"<bytes> <sha256>"`.
fn tcp_server(listener: TcpListener) -> String {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "tcp server: no connection in 30 s"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut h = Sha256::new();
    let mut n = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let k = s.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k;
    }
    result(n, &h.finalize())
}

/// The sending end of [`Topo::tcp_transfer_a_to_b`]: connects to `dst` (retrying for 10 s),
/// sends [`TRANSFER_BYTES`] of pseudo-random data, waits for the server to close and returns
/// `"<bytes> <sha256>"`.
fn tcp_client(dst: SocketAddrV4) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect_timeout(&dst.into(), Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect: {e}; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("connect: {e}"),
        }
    };
    let mut h = Sha256::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = TRANSFER_BYTES;
    while left > 0 {
        let k = left.min(buf.len());
        fill(&mut buf[..k], &mut state);
        s.write_all(&buf[..k]).unwrap();
        h.update(&buf[..k]);
        left -= k;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    result(TRANSFER_BYTES, &h.finalize())
}

/// `"<bytes> <sha256 hex>"`.
fn result(n: usize, digest: &[u8]) -> String {
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{n} {hex}")
}

/// Not run by default: `cargo test --release -p flannel-dataplane --test netns_e2e -- --ignored
/// bench_iperf3 --nocapture` prints iperf3 TCP throughput container→container for each data-plane
/// mode over the same two-namespace testbed (the real benchmark lives in perf/), with the
/// per-host packets per batch and the data plane's CPU seconds.
///
/// Knobs: `FDP_BENCH_MODES` (comma list of `default`, `no-offload`, `fallback`,
/// `fallback-no-offload`; default all), `FDP_BENCH_SECS` (default 5), `FDP_BENCH_STREAMS`
/// (default `1,4`), `FDP_BENCH_HOLD` (seconds to keep the testbed up after each mode, for
/// attaching `perf`).
#[test]
#[ignore]
fn bench_iperf3() {
    if !can_run() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let all: [(&str, &[&str]); 4] = [
        ("default", &[]),
        ("no-offload", &["--no-offload"]),
        ("fallback", &["--no-io-uring"]),
        ("fallback-no-offload", &["--no-io-uring", "--no-offload"]),
    ];
    let modes = std::env::var("FDP_BENCH_MODES").unwrap_or_default();
    let secs = std::env::var("FDP_BENCH_SECS").unwrap_or_else(|_| "5".into());
    let streams = std::env::var("FDP_BENCH_STREAMS").unwrap_or_else(|_| "1,4".into());
    let hold: u64 = std::env::var("FDP_BENCH_HOLD")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(0);
    for (name, extra) in all {
        if !modes.is_empty() && !modes.split(',').any(|m| m == name) {
            continue;
        }
        let mut t = Topo::build();
        let _tables = t.publish_tables();
        // Both hosts share this machine's CPUs and put a flow on the same worker index:
        // pin them crosswise (FDP_BENCH_CPUS="0,1;1,0" is the default; "none;none" for none).
        let cpus = std::env::var("FDP_BENCH_CPUS").unwrap_or_else(|_| "0,1;1,0".into());
        let (ca, cb) = cpus.split_once(';').unwrap_or(("0,1", "1,0"));
        let ea: Vec<&str> = extra.iter().copied().chain(["--cpus", ca]).collect();
        let eb: Vec<&str> = extra.iter().copied().chain(["--cpus", cb]).collect();
        t.start_dataplane("a", &ea);
        t.start_dataplane("b", &eb);
        for streams in streams.split(',') {
            let mut srv = t
                .ns("cb")
                .command("iperf3")
                .args(["-s", "-1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(500));
            let before: Vec<_> = ["a", "b"].iter().map(|h| t.stats(h).snapshot()).collect();
            let pids: Vec<u32> = ["a", "b"]
                .iter()
                .map(|h| t.dp(h).pid().expect("running"))
                .collect();
            let cpu0: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
            let out = t.exec(
                "ca",
                &[
                    "iperf3",
                    "-c",
                    "10.1.16.2",
                    "-t",
                    &secs,
                    "-P",
                    streams,
                    "-f",
                    "m",
                ],
            );
            let _ = srv.wait();
            let cpu: Vec<String> = pids
                .iter()
                .zip(&cpu0)
                .map(|(&p, c0)| format!("{:.2}", cpu_seconds(p) - c0))
                .collect();
            let line = out
                .lines()
                .rfind(|l| l.contains("receiver"))
                .unwrap_or("?")
                .to_owned();
            eprintln!("[{name}] -P {streams}: {line}");
            for (h, b) in ["a", "b"].iter().zip(&before) {
                let after = t.stats(h).snapshot();
                let d = |n: &str| -> Vec<u64> {
                    after
                        .iter()
                        .zip(b)
                        .map(|(x, y)| x.get(n).unwrap_or(0) - y.get(n).unwrap_or(0))
                        .collect()
                };
                eprintln!(
                    "    host {h}: tun_rx {:?} udp_tx {:?} udp_rx {:?} tun_tx {:?} batches {:?} udp_tx_err {:?} tun_tx_err {:?}",
                    d("tun_rx_packets"),
                    d("udp_tx_packets"),
                    d("udp_rx_packets"),
                    d("tun_tx_packets"),
                    d("batches"),
                    d("udp_tx_errors"),
                    d("tun_tx_errors"),
                );
            }
            eprintln!("    data-plane CPU seconds (a, b): {cpu:?}");
        }
        if hold > 0 {
            eprintln!(
                "[{name}] holding the testbed {hold} s (namespaces {} {} {} {})",
                t.net.a.name(),
                t.net.b.name(),
                t.net.ca.name(),
                t.net.cb.name()
            );
            std::thread::sleep(Duration::from_secs(hold));
        }
        eprintln!("[{name}] A log:\n{}", t.log("a"));
    }
}

/// utime + stime of process `pid` and (for `ip netns exec` wrappers) its children, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    cpu::ticks_to_seconds(cpu::process_tree_ticks(pid))
}
