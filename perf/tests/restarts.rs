//! Restarts and upgrades of the data plane that lose nothing, without systemd (the testbed; the
//! same hand-over under systemd is tested in the nspawn test): in namespaces with real etcd and
//! the real daemons. Needs root (skips with a message otherwise; fails under CI).
//!
//! Under a `ping -i 0.01` from container A to container B and a running TCP transfer (iperf3)
//! A → B, each data plane is restarted in place 10 times (SIGUSR2: it execs its binary with its
//! TUN queues and receive sockets handed over), then upgraded 5 times in all (a new file
//! renamed over its binary, as dpkg installs one, then SIGUSR2). Asserted: every ping answered,
//! the TCP transfer completes, each restart really happened (a new "forwarding" line, the
//! same PID, flannel0 the same device: same ifindex), each upgrade runs the new file (the
//! process's /proc/PID/exe is the new inode). Printed: the longest gap between ping replies
//! around each restart (p50 and max): the README's restart figures.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flannel_perf::testbed::cluster::{Cluster, ClusterOpts};
use flannel_perf::testbed::process::kill_and_reap;
use flannel_perf::testbed::wait_for;

const SEC: Duration = Duration::from_secs(1);
const RESTARTS: usize = 20;
const UPGRADES: usize = 5;
/// Time between two restarts (either host).
const SPACING: Duration = Duration::from_millis(400);
const PING_INTERVAL_S: f64 = 0.01;

/// A child killed and reaped on drop (declared after the cluster: dropped first).
struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            kill_and_reap(c);
        }
    }
}

/// `ping -n -D -i 0.01 -W 2` from host `from`'s container to host `to`'s, until [`Ping::stop`];
/// its output is read as it comes (a full pipe would stall ping).
struct Ping {
    child: Proc,
    reader: Option<std::thread::JoinHandle<String>>,
}

impl Ping {
    fn start(c: &Cluster, from: usize, to: usize) -> Self {
        let dst = c.hosts[to].container_ip().to_string();
        let mut child = c.hosts[from]
            .container()
            .command("ping")
            .args([
                "-n",
                "-D",
                "-i",
                &PING_INTERVAL_S.to_string(),
                "-W",
                "2",
                &dst,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut s);
            s
        });
        Self {
            child: Proc(Some(child)),
            reader: Some(reader),
        }
    }

    /// SIGINT, and ping's whole output.
    fn stop(mut self) -> String {
        let mut child = self.child.0.take().unwrap();
        flannel_perf::testbed::process::sigint(&mut child).unwrap();
        let _ = child.wait();
        self.reader.take().unwrap().join().unwrap()
    }
}

/// A testbed of two hosts, A reaching B.
fn two_hosts(opts: ClusterOpts) -> Cluster {
    let mut c = Cluster::new(opts).expect("build the testbed");
    c.add_host().unwrap();
    c.add_host().unwrap();
    c.wait_reachable(0, 1, SEC * 10)
        .unwrap_or_else(|e| panic!("{e:#}\n{}{}", c.hosts[0].logs(), c.hosts[1].logs()));
    c
}

/// The daemons' binaries copied into a directory of the test's (so a test can replace the data
/// plane's file, as an upgrade does), and two hosts running them.
struct CopiedBinaries {
    dir: tempfile::TempDir,
    /// The build's data plane (the source of "upgrades").
    built: PathBuf,
    /// The copy the hosts run.
    installed: PathBuf,
}

fn two_hosts_on_copied_binaries() -> Option<(CopiedBinaries, Cluster)> {
    let mut opts = ClusterOpts::for_test()?;
    let dir = tempfile::tempdir().unwrap();
    for b in ["flanneld", "flannel-dataplane"] {
        std::fs::copy(opts.bin_dir.join(b), dir.path().join(b)).unwrap();
    }
    let bins = CopiedBinaries {
        built: opts.bin_dir.join("flannel-dataplane"),
        installed: dir.path().join("flannel-dataplane"),
        dir,
    };
    opts.bin_dir = bins.dir.path().to_owned();
    Some((bins, two_hosts(opts)))
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn ifindex(c: &Cluster, host: usize) -> String {
    let out = c.hosts[host]
        .ns
        .ip(&["-o", "link", "show", "dev", "flannel0"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Copies `src` to a new file beside `dst` and renames it over `dst` (a new inode, as dpkg
/// installs a file); returns the new inode.
fn install_over(src: &Path, dst: &Path) -> u64 {
    let tmp = dst.with_extension("dpkg-new");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
    std::fs::metadata(dst).unwrap().ino()
}

/// Reply times (`ping -D`: `[unix time] 64 bytes from … icmp_seq=N`), by sequence number.
fn replies(text: &str) -> Vec<Option<f64>> {
    let mut at = Vec::new();
    for line in text.lines().filter(|l| l.contains(" bytes from ")) {
        let t = line
            .strip_prefix('[')
            .and_then(|r| r.split(']').next())
            .and_then(|t| t.parse::<f64>().ok());
        let seq = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("icmp_seq="))
            .and_then(|s| s.parse::<usize>().ok());
        if let (Some(t), Some(s)) = (t, seq) {
            if s >= at.len() {
                at.resize(s + 1, None);
            }
            at[s] = Some(t);
        }
    }
    at
}

/// The longest gap between consecutive reply times within [from, to].
fn longest_gap(times: &[f64], from: f64, to: f64) -> f64 {
    let w: Vec<f64> = times
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    w.windows(2).map(|p| p[1] - p[0]).fold(0.0, f64::max)
}

#[test]
fn restarts_and_upgrades_in_place_lose_no_ping_and_break_no_tcp() {
    let Some((bins, c)) = two_hosts_on_copied_binaries() else {
        return;
    };

    let total = RESTARTS + UPGRADES;
    // Each restart is well under 100 ms; the transfer outlasts them all.
    let tcp_secs = ((total as f64) * (SPACING.as_secs_f64() + 0.2) + 4.0) as u32;
    let dst = c.hosts[1].container_ip().to_string();
    // Runs until SIGINT after the last restart.
    let ping = Ping::start(&c, 0, 1);
    let server = Proc(Some(
        c.hosts[1]
            .container()
            .command("iperf3")
            .args(["-s", "-1", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(SEC / 2);
    let client = Proc(Some(
        c.hosts[0]
            .container()
            .command("iperf3")
            .args(["-c", &dst, "-p", "5201", "-t", &tcp_secs.to_string(), "-J"])
            .args(["--connect-timeout", "3000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(SEC);

    let devices: Vec<String> = (0..2).map(|h| ifindex(&c, h)).collect();
    let mut restarted_at = Vec::with_capacity(total);
    for k in 0..total {
        let host = k % 2;
        let upgrade = k >= RESTARTS;
        let dp = c.hosts[host].dataplane.as_ref().unwrap();
        let pid = dp.pid().unwrap();
        let before = dp.log_count("forwarding workers=");
        let new_ino = upgrade.then(|| install_over(&bins.built, &bins.installed));
        restarted_at.push(now_s());
        let signalled = std::time::Instant::now();
        dp.signal(nix::sys::signal::Signal::SIGUSR2);
        let up = wait_for(SEC * 10, || {
            (dp.log_count("forwarding workers=") > before).then_some(())
        });
        eprintln!(
            "restart {k}: forwarding again after {:?} (log polled every 50 ms)",
            signalled.elapsed()
        );
        assert!(
            up.is_some(),
            "restart {k} of host {host}'s data plane: not forwarding again in 10 s\n{}",
            c.hosts[host].logs()
        );
        assert_eq!(dp.pid(), Some(pid), "a restart in place keeps the PID");
        // This host's (k / 2 + 1)-th restart: as many starts that took fds over.
        assert!(
            dp.log_count("took over fds") > k / 2,
            "restart {k}: nothing was handed over\n{}",
            c.hosts[host].logs()
        );
        assert_eq!(
            ifindex(&c, host),
            devices[host],
            "restart {k}: flannel0 was recreated instead of kept"
        );
        if let Some(ino) = new_ino {
            let running = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap().ino();
            assert_eq!(running, ino, "upgrade {k}: the new file does not run");
        }
        std::thread::sleep(SPACING);
    }

    std::thread::sleep(SEC);
    let text = ping.stop();
    let at = replies(&text);
    // Every request up to the last one answered (later ones were still in flight at SIGINT).
    let last = at.iter().rposition(Option::is_some).unwrap_or(0);
    let count = last;
    let lost: Vec<usize> = (1..=last).filter(|&s| at[s].is_none()).collect();
    let span =
        |f: fn(&Vec<f64>) -> Option<&f64>| f(&at.iter().flatten().copied().collect()).copied();
    assert!(
        span(|v| v.first()) < restarted_at.first().copied()
            && span(|v| v.last()) > restarted_at.last().map(|t| t + 0.2),
        "the ping did not span the restarts ({:?} to {:?}):\n{text}",
        restarted_at.first(),
        restarted_at.last()
    );
    let client_out = {
        let mut p = client;
        p.0.take().unwrap().wait_with_output().unwrap()
    };
    drop(server);
    let json = String::from_utf8_lossy(&client_out.stdout);
    let tcp = flannel_perf::harness::iperf::parse_tcp(&json);

    let times: Vec<f64> = at.iter().flatten().copied().collect();
    let mut gaps: Vec<f64> = restarted_at
        .iter()
        .map(|t| longest_gap(&times, t - 0.02, t + SPACING.as_secs_f64()) * 1000.0)
        .collect();
    eprintln!("restarts in place (SIGUSR2) and upgrades (new file + SIGUSR2), alternating hosts:");
    for (k, g) in gaps.iter().enumerate() {
        let what = if k >= RESTARTS { "upgrade" } else { "restart" };
        eprintln!(
            "  {what} {k:>2} (host {}): longest gap between ping replies {g:.1} ms",
            k % 2
        );
    }
    let mut spacing: Vec<f64> = times.windows(2).map(|p| (p[1] - p[0]) * 1000.0).collect();
    spacing.sort_by(f64::total_cmp);
    let usual = spacing.get(spacing.len() / 2).copied().unwrap_or(0.0);
    gaps.sort_by(f64::total_cmp);
    eprintln!(
        "{total} restarts/upgrades: interruption p50 {:.1} ms, max {:.1} ms (the longest gap \
         between ping replies; replies are {usual:.1} ms apart otherwise); {} of {count} pings \
         lost; TCP {}",
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1],
        lost.len(),
        match &tcp {
            Ok(r) => format!("{:.2} Gbit/s over {:.1} s", r.gbit_per_s(), r.seconds),
            Err(e) => format!("failed: {e:#}"),
        }
    );
    assert!(
        lost.is_empty(),
        "pings lost across the restarts: icmp_seq {lost:?}\n{}{}",
        c.hosts[0].logs(),
        c.hosts[1].logs()
    );
    let tcp = tcp.unwrap_or_else(|e| {
        panic!(
            "the TCP transfer broke: {e:#}\n{json}\n{}",
            String::from_utf8_lossy(&client_out.stderr)
        )
    });
    assert!(
        client_out.status.success() && tcp.bytes > 0 && tcp.seconds >= f64::from(tcp_secs) * 0.9,
        "the TCP transfer did not complete: {tcp:?}"
    );
}

/// systemd's side of a restart, emulated: the receive sockets of a socket unit, the fd store
/// (`FDSTORE=1` messages with SCM_RIGHTS on `$NOTIFY_SOCKET`), and `$LISTEN_FDS` at every start.
struct FakeSystemd {
    notify: std::os::unix::net::UnixDatagram,
    notify_path: PathBuf,
    /// `flannel-dataplane.socket`'s sockets, bound in host B's namespace.
    sockets: Vec<OwnedFd>,
    /// The fd store: (FDNAME, fd).
    store: Vec<(String, OwnedFd)>,
}

const SOCKET_UNIT_SOCKETS: usize = 3;

impl FakeSystemd {
    fn new(c: &Cluster, dir: &Path) -> Self {
        let notify_path = dir.join("notify.sock");
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        // ListenDatagram=0.0.0.0:8285 three times, ReusePort=yes, bound before the data plane runs.
        let sockets = c.hosts[1].ns.run_in(|| {
            use nix::sys::socket::{
                bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockProtocol, SockType,
                SockaddrIn,
            };
            (0..SOCKET_UNIT_SOCKETS)
                .map(|_| {
                    let s = socket(
                        AddressFamily::Inet,
                        SockType::Datagram,
                        SockFlag::SOCK_CLOEXEC,
                        SockProtocol::Udp,
                    )
                    .unwrap();
                    setsockopt(&s, sockopt::ReusePort, &true).unwrap();
                    // systemd's socket_address_listen() sets it on every socket it binds.
                    setsockopt(&s, sockopt::ReuseAddr, &true).unwrap();
                    bind(s.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, 8285)).unwrap();
                    s
                })
                .collect::<Vec<_>>()
        });
        Self {
            notify,
            notify_path,
            sockets,
            store: Vec::new(),
        }
    }

    /// Handles the notifications that arrived: the fd store's updates; the texts of the others.
    fn receive(&mut self) -> Vec<String> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let mut texts = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 64]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let Ok(msg) = recvmsg::<()>(
                self.notify.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT,
            ) else {
                return texts;
            };
            let mut fds = Vec::new();
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: SCM_RIGHTS just installed these fds in this process; nothing
                    // else owns them.
                    fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
                }
            }
            let n = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or("stored")
                .to_string();
            if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
                self.store.retain(|(n, _)| *n != name);
            }
            if text.lines().any(|l| l == "FDSTORE=1") {
                self.store
                    .extend(fds.into_iter().map(|f| (name.clone(), f)));
            }
            texts.push(text);
        }
    }

    /// The notifications until `READY=1` (at most 10 s).
    fn until_ready(&mut self) -> Vec<String> {
        let mut texts = Vec::new();
        let ready = wait_for(SEC * 10, || {
            texts.extend(self.receive());
            texts.iter().any(|t| t.contains("READY=1")).then_some(())
        });
        assert!(ready.is_some(), "no READY=1: {texts:?}");
        texts
    }

    /// Starts host B's data plane as systemd would: the socket unit's fds, then the store's,
    /// from fd 3, with `$LISTEN_*` and `$NOTIFY_SOCKET`.
    fn start(&mut self, c: &mut Cluster) {
        // systemd's fd store does not keep the order fds were stored in: hand them back
        // reversed, so the data plane must sort them by name.
        self.store.reverse();
        let mut names: Vec<&str> = vec!["udp"; self.sockets.len()];
        names.extend(self.store.iter().map(|(n, _)| n.as_str()));
        // Copies above the range they are moved into, so no move overwrites a source.
        let high: Vec<OwnedFd> = self
            .sockets
            .iter()
            .chain(self.store.iter().map(|(_, f)| f))
            .map(|f| {
                let r =
                    nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(200))
                        .unwrap();
                // SAFETY: a fresh fd from fcntl, owned by nobody else.
                unsafe { OwnedFd::from_raw_fd(r) }
            })
            .collect();
        let raw: Vec<i32> = high.iter().map(|f| f.as_raw_fd()).collect();
        let n = raw.len();
        let names = names.join(":");
        let notify = self.notify_path.clone();
        // sh sets LISTEN_PID to its own PID, which the data plane keeps across exec.
        c.opts.dataplane_wrapper = vec![
            "sh".into(),
            "-c".into(),
            "LISTEN_PID=$$ exec \"$0\" \"$@\"".into(),
        ];
        c.start_dataplane_with(1, move |cmd| {
            cmd.env("LISTEN_FDS", n.to_string())
                .env("LISTEN_FDNAMES", names)
                .env("NOTIFY_SOCKET", notify);
            // SAFETY: the closure runs in the forked child before exec and calls only dup2
            // (async-signal-safe); `raw` is moved in.
            unsafe {
                cmd.pre_exec(move || {
                    for (i, &fd) in raw.iter().enumerate() {
                        if libc_dup2(fd, 3 + i as i32) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        })
        .unwrap();
        drop(high);
    }
}

/// User nobody in host `host`'s namespace binds its underlay address on 8285 with
/// SO_REUSEADDR (flannel-loadgen udp-bind-reuseaddr): what loadgen printed.
fn squat_as_nobody(c: &Cluster, host: usize) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let lg = dir.path().join("flannel-loadgen");
    std::fs::copy(env!("CARGO_BIN_EXE_flannel-loadgen"), &lg).unwrap();
    let out = c.hosts[host]
        .ns
        .command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&lg)
        .arg("udp-bind-reuseaddr")
        .arg(format!("{}:8285", c.hosts[host].underlay_ip))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// This run's log of host `host`'s data plane.
fn dataplane_log(c: &Cluster, host: usize) -> String {
    c.hosts[host]
        .dataplane
        .as_ref()
        .map(|d| d.log())
        .unwrap_or_default()
}

fn libc_dup2(from: i32, to: i32) -> i32 {
    // nix's dup2 allocates nothing either; errors as -1 like the syscall.
    nix::unistd::dup2(from, to).map_or(-1, |f| f)
}

/// systemd's restart, emulated (the real one runs in the nspawn test): host B's data plane is
/// stopped with SIGTERM and started again as a new process 5 times, taking three receive
/// sockets from a "socket unit" and its TUN queues back from the "fd store" it filled. It runs
/// one worker per socket (three, on this two-CPU machine: the count comes from the sockets),
/// flannel0 stays the same device, and a ping A → B across all of it loses nothing.
#[test]
fn a_systemd_restart_keeps_the_device_and_the_port_through_the_fd_store() {
    let Some(opts) = ClusterOpts::for_test() else {
        return;
    };
    let mut c = two_hosts(opts);
    // Host B's data plane from now on runs "under systemd".
    c.hosts[1].dataplane.as_mut().unwrap().stop(SEC * 5);
    let dir = tempfile::tempdir().unwrap();
    let mut sd = FakeSystemd::new(&c, dir.path());
    sd.start(&mut c);
    let texts = sd.until_ready();
    // One TUN queue per worker in the fd store, each under its own name.
    let mut stored: Vec<&str> = sd
        .store
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.starts_with("tun"))
        .collect();
    stored.sort();
    assert_eq!(stored, ["tun.0", "tun.1", "tun.2"], "{texts:?}");
    assert!(
        dataplane_log(&c, 1).contains(&format!("forwarding workers={SOCKET_UNIT_SOCKETS}")),
        "one worker per socket:\n{}",
        c.hosts[1].logs()
    );
    c.wait_reachable(0, 1, SEC * 10).unwrap();
    let device = ifindex(&c, 1);

    // systemd binds with SO_REUSEADDR, which would let any user bind the port too, to a more
    // specific address that wins every datagram: the data plane clears it on the sockets.
    let squat = squat_as_nobody(&c, 1);
    assert!(
        squat.starts_with("refused: EADDRINUSE"),
        "user nobody could bind {}:8285 with SO_REUSEADDR: {squat}",
        c.hosts[1].underlay_ip
    );

    let ping = Ping::start(&c, 0, 1);
    std::thread::sleep(SEC / 2);
    for r in 0..5 {
        let status = c.hosts[1].dataplane.as_mut().unwrap().stop(SEC * 5);
        assert!(
            status.is_some_and(|s| s.success()),
            "restart {r}: the data plane did not stop cleanly: {status:?}"
        );
        sd.receive();
        sd.start(&mut c);
        sd.until_ready();
        assert!(
            dataplane_log(&c, 1).contains("TUN device kept"),
            "restart {r}: the stored queues were not taken back\n{}",
            c.hosts[1].logs()
        );
        assert_eq!(
            ifindex(&c, 1),
            device,
            "restart {r}: flannel0 was recreated"
        );
        std::thread::sleep(SPACING);
    }
    std::thread::sleep(SEC);
    let text = ping.stop();
    let at = replies(&text);
    let last = at.iter().rposition(Option::is_some).unwrap_or(0);
    let lost: Vec<usize> = (1..=last).filter(|&s| at[s].is_none()).collect();
    assert!(last > 100, "too few replies:\n{text}");
    assert!(
        lost.is_empty(),
        "pings lost across the restarts: icmp_seq {lost:?}\n{}",
        c.hosts[1].logs()
    );
}

/// The addresses on host `host`'s flannel0, as `ip -4 -o addr` prints them (`A.B.C.D/N`).
fn tun_addresses(c: &Cluster, host: usize) -> Vec<String> {
    let out = c.hosts[host]
        .ns
        .ip(&["-4", "-o", "addr", "show", "dev", "flannel0"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "inet").and_then(|_| w.next())
        })
        .map(str::to_string)
        .collect()
}

/// A device kept across a restart sheds another subnet's /32 (as one of a lease that changed
/// while no data plane ran), keeps ours and leaves an address outside the network (an
/// operator's) alone; traffic flows on.
#[test]
fn a_kept_device_sheds_an_address_that_is_not_our_subnets() {
    let Some(opts) = ClusterOpts::for_test() else {
        return;
    };
    let c = two_hosts(opts);
    let ours = tun_addresses(&c, 0);
    assert_eq!(ours.len(), 1, "flannel0 before: {ours:?}");
    assert!(ours[0].ends_with("/32"), "flannel0 before: {ours:?}");
    // An address of another subnet of the network (neither host's lease), and one outside
    // the network, which is left alone.
    let leased = [ours.clone(), tun_addresses(&c, 1)].concat();
    let stale = (250..=254)
        .map(|x| format!("10.1.{x}.0/32"))
        .find(|a| !leased.contains(a))
        .unwrap();
    let foreign = "192.0.2.7/32";
    c.hosts[0]
        .ns
        .ip(&["addr", "add", foreign, "dev", "flannel0"])
        .unwrap();
    c.hosts[0]
        .ns
        .ip(&["addr", "add", &stale, "dev", "flannel0"])
        .unwrap();
    assert_eq!(tun_addresses(&c, 0).len(), 3);
    let device = ifindex(&c, 0);
    let dp = c.hosts[0].dataplane.as_ref().unwrap();
    let before = dp.log_count("forwarding workers=");
    dp.signal(nix::sys::signal::Signal::SIGUSR2);
    let up = wait_for(SEC * 10, || {
        (dp.log_count("forwarding workers=") > before).then_some(())
    });
    assert!(up.is_some(), "not forwarding again\n{}", c.hosts[0].logs());
    assert_eq!(ifindex(&c, 0), device, "flannel0 was recreated, not kept");
    let mut want = ours.clone();
    want.push(foreign.to_string());
    let mut got = tun_addresses(&c, 0);
    got.sort();
    want.sort();
    assert_eq!(
        got,
        want,
        "the kept device should hold ours and the foreign address, not {stale}\n{}",
        c.hosts[0].logs()
    );
    c.wait_reachable(0, 1, SEC * 10)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.hosts[0].logs()));
}

/// A restart in place runs the file at the data plane's path only if no other user could have
/// put it there: with the binary's directory world-writable (no sticky bit), a file renamed
/// over the binary is not run; the same build restarts (its inode), says why, and forwards.
#[test]
fn a_restart_does_not_run_a_binary_from_a_directory_others_can_write() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some((bins, c)) = two_hosts_on_copied_binaries() else {
        return;
    };
    let dp = c.hosts[0].dataplane.as_ref().unwrap();
    let pid = dp.pid().unwrap();
    let running = |pid: u32| std::fs::metadata(format!("/proc/{pid}/exe")).unwrap().ino();
    let first = running(pid);
    std::fs::set_permissions(bins.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let swapped = install_over(&bins.built, &bins.installed);
    assert_ne!(swapped, first);
    let before = dp.log_count("forwarding workers=");
    dp.signal(nix::sys::signal::Signal::SIGUSR2);
    let up = wait_for(SEC * 10, || {
        (dp.log_count("forwarding workers=") > before).then_some(())
    });
    assert!(up.is_some(), "not forwarding again\n{}", c.hosts[0].logs());
    assert_eq!(dp.pid(), Some(pid));
    assert_eq!(
        running(pid),
        first,
        "the file put into a world-writable directory was run"
    );
    assert!(
        dp.log_count("writable by others") >= 1,
        "no reason logged\n{}",
        c.hosts[0].logs()
    );
    c.wait_reachable(0, 1, SEC * 10)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.hosts[0].logs()));
    // Trusted again: the next restart runs the file at the path.
    std::fs::set_permissions(bins.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = dp.log_count("forwarding workers=");
    dp.signal(nix::sys::signal::Signal::SIGUSR2);
    let up = wait_for(SEC * 10, || {
        (dp.log_count("forwarding workers=") > before).then_some(())
    });
    assert!(up.is_some(), "not forwarding again\n{}", c.hosts[0].logs());
    assert_eq!(
        running(pid),
        swapped,
        "the trusted file at the path does not run"
    );
}
