//! `flanneld` against a real etcd process: leases, keys and values as flannel writes them,
//! subnet.env, restarts, renewal, re-acquisition, watches across etcd restarts and compaction,
//! late etcd, config errors and fixes, health endpoints, signals.
//!
//! No root needed: the daemons use `-iface 127.0.0.1` (for the MTU) and advertise
//! `-public-ip 198.18.0.x`; nothing is sent anywhere but loopback.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flannel_perf::testbed::etcd::Etcd;
use flannel_perf::testbed::process::{Daemon, Signal};
use flannel_perf::testbed::{free_port, require, wait_for};
use flannel_shared::route_table::RouteTableReader;
use flannel_shared::Ipv4Net;

const PREFIX: &str = "/coreos.com/network";
const SEC: Duration = Duration::from_secs(1);

/// One simulated host: its own files, one flanneld.
struct Host {
    dir: tempfile::TempDir,
    public_ip: String,
    endpoint: String,
    extra: Vec<String>,
    /// subnet.env elsewhere than in `dir`.
    subnet_file: Option<PathBuf>,
    daemon: Option<Daemon>,
}

impl Host {
    fn new(etcd: &Etcd, public_ip: &str) -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("flanneld-host-")
                .tempdir()
                .unwrap(),
            public_ip: public_ip.into(),
            endpoint: etcd.endpoint(),
            extra: Vec::new(),
            subnet_file: None,
            daemon: None,
        }
    }

    fn with(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|s| s.to_string()));
        self
    }

    fn subnet_file(&self) -> PathBuf {
        self.subnet_file
            .clone()
            .unwrap_or_else(|| self.dir.path().join("subnet.env"))
    }

    fn route_table(&self) -> PathBuf {
        self.dir.path().join("routes")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flanneld"));
        // Go-style single-dash flags, as flannel users type them.
        c.arg(format!("-etcd-endpoints={}", self.endpoint))
            .arg("-iface=127.0.0.1")
            // These hosts share the root namespace: leave its firewall alone.
            .arg("-iptables-forward-rules=false")
            .arg("-dataplane-guard=false")
            .arg(format!("-public-ip={}", self.public_ip))
            .arg(format!("-subnet-file={}", self.subnet_file().display()))
            .arg(format!("--route-table={}", self.route_table().display()))
            .args(&self.extra)
            .env("RUST_LOG", "info");
        c
    }

    fn start(&mut self) -> &Daemon {
        let d = Daemon::spawn(
            "flanneld",
            self.command(),
            &self.dir.path().join("flanneld.log"),
        )
        .unwrap();
        self.daemon = Some(d);
        self.daemon.as_ref().unwrap()
    }

    fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("started")
    }

    /// Waits for subnet.env and returns the subnet it names.
    fn wait_subnet(&self, timeout: Duration) -> Ipv4Net {
        wait_for(timeout, || {
            flannel_shared::subnet_env::previous_subnet(&self.subnet_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "no subnet.env from {} in {timeout:?}; log:\n{}",
                self.public_ip,
                self.daemon.as_ref().map(|d| d.log()).unwrap_or_default()
            )
        })
    }

    /// Waits until this host's route table maps `ip` to `want` (None = no route).
    fn wait_route(&self, ip: &str, want: Option<&str>, timeout: Duration) {
        let ip: Ipv4Addr = ip.parse().unwrap();
        let want: Option<Ipv4Addr> = want.map(|w| w.parse().unwrap());
        let got = wait_for(timeout, || {
            let mut r = RouteTableReader::open(&self.route_table()).ok()?;
            let snap = r.snapshot().ok()?;
            (snap.lookup(ip) == want).then_some(())
        });
        assert!(
            got.is_some(),
            "{}: route for {ip} never became {want:?}; log:\n{}",
            self.public_ip,
            self.daemon.as_ref().map(|d| d.log()).unwrap_or_default()
        );
    }
}

fn lease_key(subnet: &Ipv4Net) -> String {
    format!("{PREFIX}/subnets/{}", subnet.to_key())
}

fn lo_mtu() -> u32 {
    std::fs::read_to_string("/sys/class/net/lo/mtu")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(SEC * 3)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

#[test]
fn two_hosts_get_distinct_subnets_with_flannels_keys_values_and_subnet_env() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    etcd.put_config(PREFIX, r#"{ "Network": "10.1.0.0/16" }"#)
        .unwrap();
    let port = free_port();
    let mut a = Host::new(&etcd, "198.18.0.1")
        .with(&["-healthz-ip=127.0.0.1", &format!("-healthz-port={port}")]);
    let mut b = Host::new(&etcd, "198.18.0.2");
    a.start();
    b.start();
    let (sa, sb) = (a.wait_subnet(SEC * 20), b.wait_subnet(SEC * 20));
    assert_ne!(sa, sb);

    let leases = etcd.get_prefix(&format!("{PREFIX}/subnets/")).unwrap();
    assert_eq!(leases.len(), 2, "{leases:?}");
    for (host, subnet) in [(&a, sa), (&b, sb)] {
        assert_eq!(subnet.prefix(), 24);
        assert!("10.1.0.0/16"
            .parse::<Ipv4Net>()
            .unwrap()
            .contains_net(&subnet));
        assert_ne!(
            subnet.addr(),
            Ipv4Addr::new(10, 1, 0, 0),
            "first subnet is never leased"
        );
        let key = lease_key(&subnet);
        assert!(key.starts_with("/coreos.com/network/subnets/10.1.") && key.ends_with(".0-24"));
        let value = etcd.get(&key).unwrap().expect("lease key present");
        assert_eq!(
            value,
            format!(r#"{{"PublicIP":"{}","PublicIPv6":null}}"#, host.public_ip)
        );
        let env = std::fs::read_to_string(host.subnet_file()).unwrap();
        let gw = Ipv4Addr::from(subnet.addr_u32() + 1);
        assert_eq!(
            env,
            format!(
                "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET={gw}/24\nFLANNEL_MTU={}\nFLANNEL_IPMASQ=false\n",
                lo_mtu() - 28
            )
        );
        assert!(
            etcd.lease_of(&key).unwrap() != 0,
            "key hangs on an etcd lease"
        );
    }
    // Each host's table holds both subnets.
    let peer_b = Ipv4Addr::from(sb.addr_u32() + 7).to_string();
    let peer_a = Ipv4Addr::from(sa.addr_u32() + 7).to_string();
    a.wait_route(&peer_b, Some("198.18.0.2"), SEC * 10);
    a.wait_route(&peer_a, Some("198.18.0.1"), SEC * 10);
    b.wait_route(&peer_a, Some("198.18.0.1"), SEC * 10);
    // The read-only dump shows them too.
    let dump = Command::new(env!("CARGO_BIN_EXE_flanneld"))
        .args(["routes", "--route-table"])
        .arg(a.route_table())
        .output()
        .unwrap();
    assert!(dump.status.success());
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(
        text.contains(&sa.to_string()) && text.contains("198.18.0.2"),
        "{text}"
    );
    // Health endpoints.
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
    let ready = wait_for(SEC * 5, || {
        http_get(port, "/readyz").filter(|(c, _)| *c == 200)
    });
    assert!(
        ready.is_some(),
        "readyz never 200: {:?}",
        http_get(port, "/readyz")
    );
    assert_eq!(http_get(port, "/nope").unwrap().0, 404);
}

#[test]
fn restart_reuses_the_subnet_through_the_lease_and_through_subnet_env() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    etcd.put_config(PREFIX, r#"{"Network":"10.1.0.0/16"}"#)
        .unwrap();
    let mut a = Host::new(&etcd, "198.18.0.1");
    a.start();
    let first = a.wait_subnet(SEC * 20);
    a.daemon().wait_log("route table published", SEC * 10);
    let st = a.daemon().stop(SEC * 5).unwrap();
    assert!(st.success(), "SIGTERM must exit 0, got {st:?}");
    assert!(
        etcd.get(&lease_key(&first)).unwrap().is_some(),
        "lease left in etcd on shutdown"
    );

    // Each run appends to the same log file; the daemon's waits only see its own run's lines.
    // 1. Through the existing lease (subnet.env removed, so only etcd can say).
    std::fs::remove_file(a.subnet_file()).unwrap();
    a.start();
    assert_eq!(a.wait_subnet(SEC * 20), first);
    a.daemon().wait_log("source=Existing", SEC * 5);
    assert!(a.daemon().stop(SEC * 5).unwrap().success());

    // 2. Through subnet.env after the lease was deleted. The file of run 1 is still there:
    //    read it only once this run has rewritten it.
    etcd.ctl(&["del", &lease_key(&first)]).unwrap();
    a.start();
    a.daemon().wait_log("source=SubnetFile", SEC * 20);
    a.daemon().wait_log("subnet.env written", SEC * 5);
    assert_eq!(a.wait_subnet(SEC * 5), first);
    assert_eq!(
        etcd.get(&lease_key(&first)).unwrap().as_deref(),
        Some(r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#)
    );
    assert_eq!(
        etcd.get_prefix(&format!("{PREFIX}/subnets/"))
            .unwrap()
            .len(),
        1
    );
    // SIGHUP changes nothing (flannel would die of it): logged, still running, same lease.
    a.daemon().signal(Signal::SIGHUP);
    a.daemon().wait_log("SIGHUP: ignored", SEC * 5);
    std::thread::sleep(SEC / 2);
    assert!(a.daemon().is_running(), "SIGHUP stopped flanneld");
    assert!(etcd.get(&lease_key(&first)).unwrap().is_some());
    // SIGINT also exits 0.
    a.daemon().signal(Signal::SIGINT);
    let exited = wait_for(SEC * 5, || (!a.daemon().is_running()).then_some(()));
    assert!(exited.is_some(), "SIGINT did not stop flanneld");
}

#[test]
fn short_ttl_lease_is_renewed_and_a_deleted_own_lease_is_reacquired() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    etcd.put_config(PREFIX, r#"{"Network":"10.1.0.0/16"}"#)
        .unwrap();
    let mut a = Host::new(&etcd, "198.18.0.1").with(&["-subnet-lease-ttl=9"]);
    a.start();
    let subnet = a.wait_subnet(SEC * 20);
    let key = lease_key(&subnet);
    let lease = etcd.lease_of(&key).unwrap();
    assert_ne!(lease, 0);
    // TTL 9 s with a 60 min margin: renewed every 3 s. See it drop, then grow back.
    let low = wait_for(SEC * 10, || {
        etcd.lease_ttl(lease).ok().flatten().filter(|t| *t <= 7)
    });
    assert!(low.is_some(), "TTL never went down");
    let back = wait_for(SEC * 10, || {
        etcd.lease_ttl(lease).ok().flatten().filter(|t| *t >= 8)
    });
    assert!(back.is_some(), "TTL never grew back (no renewal)");
    // Outlive the original TTL twice over: the key must still be there.
    std::thread::sleep(SEC * 12);
    assert!(
        etcd.get(&key).unwrap().is_some(),
        "lease expired despite renewal"
    );

    // Our key deleted by hand: re-acquired, same subnet (it is free), loudly logged.
    etcd.ctl(&["del", &key]).unwrap();
    a.daemon()
        .wait_log("OUR SUBNET LEASE DISAPPEARED", SEC * 10);
    let back = wait_for(SEC * 10, || etcd.get(&key).ok().flatten());
    assert_eq!(
        back.as_deref(),
        Some(r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#)
    );
    // subnet.env rewritten after the re-acquisition (the first write's file would also match).
    a.daemon().wait_log_count("subnet.env written", 2, SEC * 10);
    assert_eq!(a.wait_subnet(SEC), subnet);
    let new_lease = etcd.lease_of(&key).unwrap();
    assert_ne!(new_lease, 0);
    assert!(a.daemon().is_running());
}

#[test]
fn watch_follows_leases_across_etcd_restart_and_compaction() {
    let Some(mut etcd) = Etcd::start_or_skip() else {
        return;
    };
    // flanneld draws its subnet below 10.1.200.0: the other hosts' leases put below are at
    // 200 and up, and one put over flanneld's own key would take its lease away.
    etcd.put_config(
        PREFIX,
        r#"{"Network":"10.1.0.0/16","SubnetMax":"10.1.199.0"}"#,
    )
    .unwrap();
    let mut a = Host::new(&etcd, "198.18.0.1");
    a.start();
    a.wait_subnet(SEC * 20);
    let third = |n: u8| format!("{PREFIX}/subnets/10.1.{n}.0-24");
    let value = |ip: &str| format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null}}"#);

    // A third host's lease appears in the shared-memory table; deleted, it disappears.
    etcd.ctl(&["put", &third(200), &value("198.18.0.3")])
        .unwrap();
    a.wait_route("10.1.200.9", Some("198.18.0.3"), SEC * 5);
    etcd.ctl(&["del", &third(200)]).unwrap();
    a.wait_route("10.1.200.9", None, SEC * 5);
    // Malformed values are skipped with a warning; others are unaffected.
    etcd.ctl(&["put", &third(210), "not json"]).unwrap();
    etcd.ctl(&["put", &third(211), &value("198.18.0.11")])
        .unwrap();
    a.wait_route("10.1.211.1", Some("198.18.0.11"), SEC * 5);
    a.wait_route("10.1.210.1", None, SEC);
    a.daemon().wait_log("skipping an unusable lease", SEC);
    assert!(a.daemon().log().contains("malformed_value"));

    // etcd restarted in the middle; changes made while flanneld could not see etcd are not missed.
    etcd.stop();
    std::thread::sleep(SEC);
    etcd.launch_hidden().unwrap();
    etcd.side_ctl(&["put", &third(201), &value("198.18.0.4")])
        .unwrap();
    etcd.side_ctl(&["del", &third(211)]).unwrap();
    etcd.stop();
    etcd.launch().unwrap();
    a.wait_route("10.1.201.9", Some("198.18.0.4"), SEC * 15);
    a.wait_route("10.1.211.1", None, SEC * 5);
    etcd.ctl(&["del", &third(201)]).unwrap();
    a.wait_route("10.1.201.9", None, SEC * 5);

    // Compaction past the watcher's revision while it is cut off: it lists again and diffs.
    etcd.stop();
    etcd.launch_hidden().unwrap();
    etcd.side_ctl(&["put", &third(202), &value("198.18.0.5")])
        .unwrap();
    etcd.side_ctl(&["put", &third(203), &value("198.18.0.6")])
        .unwrap();
    etcd.side_ctl(&["del", &third(203)]).unwrap();
    let rev = etcd.side_ctl(&["get", "/", "-w", "json"]).unwrap();
    let rev: String = rev
        .split("\"revision\":")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    etcd.side_ctl(&["compact", &rev]).unwrap();
    etcd.stop();
    etcd.launch().unwrap();
    a.daemon().wait_log("compacted", SEC * 20);
    a.wait_route("10.1.202.9", Some("198.18.0.5"), SEC * 15);
    a.wait_route("10.1.203.9", None, SEC);
    // The watch works after the re-list.
    etcd.ctl(&["put", &third(204), &value("198.18.0.7")])
        .unwrap();
    a.wait_route("10.1.204.9", Some("198.18.0.7"), SEC * 5);
    // Our own lease survived it all.
    assert!(a.daemon().is_running());
    let own = a.wait_subnet(SEC);
    assert!(etcd.get(&lease_key(&own)).unwrap().is_some());
}

/// The `value` of `key` in `flannelctl leases --json` rows.
fn ctl_lease<'a>(rows: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("{key} not in flannelctl leases: {rows}"))
}

/// Regression: one member's unusable lease (PublicIP 0.0.0.0) used to fail every publish,
/// freezing the table for the whole cluster, and dual-stack keys were not routed at all. Now the
/// bad lease is skipped (logged once, counted in /metrics, shown by flannelctl), the good and the
/// dual-stack leases are routed, and leases written after the bad one still arrive.
#[test]
fn unusable_leases_are_skipped_and_counted_and_dual_stack_keys_are_routed() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    // flanneld draws its own subnet below 10.1.200.0; the other hosts' leases are above.
    etcd.put_config(
        PREFIX,
        r#"{"Network":"10.1.0.0/16","SubnetMax":"10.1.199.0"}"#,
    )
    .unwrap();
    let key = |k: &str| format!("{PREFIX}/subnets/{k}");
    let (good, bad, dual) = (
        key("10.1.200.0-24"),
        key("10.1.250.0-24"),
        key("10.1.252.0-24&fc00:0:0:f00::-64"),
    );
    let dual_value = r#"{"PublicIP":"198.18.0.3","PublicIPv6":"fc00::3","BackendType":"udp","BackendData":null,"BackendV6Data":{"x":1}}"#;
    // Present before flanneld starts: its first listing sees them.
    etcd.ctl(&[
        "put",
        &good,
        r#"{"PublicIP":"198.18.0.2","PublicIPv6":null}"#,
    ])
    .unwrap();
    etcd.ctl(&["put", &bad, r#"{"PublicIP":"0.0.0.0","PublicIPv6":null}"#])
        .unwrap();
    etcd.ctl(&["put", &dual, dual_value]).unwrap();
    let port = free_port();
    let mut a = Host::new(&etcd, "198.18.0.1")
        .with(&["-healthz-ip=127.0.0.1", &format!("-healthz-port={port}")]);
    a.start();
    let own = a.wait_subnet(SEC * 20);
    a.wait_route("10.1.200.9", Some("198.18.0.2"), SEC * 10);
    a.wait_route("10.1.252.9", Some("198.18.0.3"), SEC * 5);
    a.wait_route(
        &Ipv4Addr::from(own.addr_u32() + 9).to_string(),
        Some("198.18.0.1"),
        SEC * 5,
    );
    a.wait_route("10.1.250.9", None, SEC);

    // Written while flanneld watches: another unusable lease, then valid ones after it.
    let (bad2, later, dual2) = (
        key("10.1.251.0-24"),
        key("10.1.201.0-24"),
        key("10.1.253.0-24&fc00:0:0:f01::-64"),
    );
    etcd.ctl(&[
        "put",
        &bad2,
        r#"{"PublicIP":"127.0.0.1","PublicIPv6":null}"#,
    ])
    .unwrap();
    etcd.ctl(&[
        "put",
        &later,
        r#"{"PublicIP":"198.18.0.4","PublicIPv6":null}"#,
    ])
    .unwrap();
    etcd.ctl(&[
        "put",
        &dual2,
        r#"{"PublicIP":"198.18.0.5","PublicIPv6":"fc00::5"}"#,
    ])
    .unwrap();
    a.wait_route("10.1.201.9", Some("198.18.0.4"), SEC * 5);
    a.wait_route("10.1.253.9", Some("198.18.0.5"), SEC * 5);
    a.wait_route("10.1.251.9", None, SEC);
    a.wait_route("10.1.200.9", Some("198.18.0.2"), SEC);
    // Deleting a good lease still works with the bad ones around.
    etcd.ctl(&["del", &later]).unwrap();
    a.wait_route("10.1.201.9", None, SEC * 5);

    // Logged once per key and revision, not on every change; no publish failed.
    let log = a.daemon().log();
    assert_eq!(
        log.matches("skipping an unusable lease").count(),
        2,
        "{log}"
    );
    assert!(log.contains("public_ip_unspecified") && log.contains("public_ip_loopback"));
    assert!(!log.contains("publishing the route table failed"), "{log}");

    // /metrics counts them by reason.
    let (code, metrics) = http_get(port, "/metrics").expect("metrics answered");
    assert_eq!(code, 200);
    for line in [
        r#"flannel_leases_rejected{reason="public_ip_unspecified"} 1"#,
        r#"flannel_leases_rejected{reason="public_ip_loopback"} 1"#,
        r#"flannel_leases_rejected{reason="malformed_value"} 0"#,
        r#"flannel_lease_rejections_total{reason="public_ip_unspecified"} 1"#,
        r#"flannel_lease_rejections_total{reason="public_ip_loopback"} 1"#,
        "flannel_route_table_refused_routes 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }

    // Other hosts' keys are never rewritten or deleted.
    assert_eq!(etcd.get(&dual).unwrap().as_deref(), Some(dual_value));
    assert!(etcd.get(&bad).unwrap().is_some());

    // flannelctl shows the bad leases as rejected, with the reason.
    let out = Command::new(env!("CARGO_BIN_EXE_flannelctl"))
        .args(["leases", "--json"])
        .arg(format!("--etcd-endpoints={}", etcd.endpoint()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = ctl_lease(&rows, &bad);
    assert_eq!(b["routed"], false);
    assert_eq!(b["reason"], "public_ip_unspecified");
    assert_eq!(
        b["error"],
        "lease PublicIP 0.0.0.0: the unspecified address is not a host"
    );
    assert_eq!(ctl_lease(&rows, &bad2)["reason"], "public_ip_loopback");
    let d = ctl_lease(&rows, &dual);
    assert_eq!(d["routed"], true);
    assert_eq!(d["subnet"], "10.1.252.0/24");
    assert_eq!(d["ipv6_subnet"], "fc00:0:0:f00::/64");
    assert_eq!(d["PublicIPv6"], "fc00::3");
    assert_eq!(ctl_lease(&rows, &good)["routed"], true);
    let table = Command::new(env!("CARGO_BIN_EXE_flannelctl"))
        .arg("leases")
        .arg(format!("--etcd-endpoints={}", etcd.endpoint()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("rejected: public_ip_unspecified")
            && text.contains(&format!(
                "rejected {bad}: lease PublicIP 0.0.0.0: the unspecified address is not a host"
            )),
        "{text}"
    );
    assert!(a.daemon().is_running());
}

/// The allocator treats a key naming a candidate as taken whatever its form (plain or
/// dual-stack), releases our own lease that no longer fits the config, and never touches a
/// dual-stack key, even one naming our PublicIP. A key of another length (a /23 among /24s)
/// blocks nothing (issue 27) and is left alone.
#[test]
fn own_misfit_lease_is_released_and_dual_stack_leases_are_never_taken() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    // Five candidates: 10.1.4.0 .. 10.1.8.0.
    etcd.put_config(
        PREFIX,
        r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.4.0","SubnetMax":"10.1.8.0"}"#,
    )
    .unwrap();
    let key = |k: &str| format!("{PREFIX}/subnets/{k}");
    let ours = r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#;
    let (foreign23, dual_theirs, dual_ours, misfit) = (
        // Not a /24: blocks nothing (flannel: 10.1.4.0/24 and 10.1.5.0/24).
        (
            key("10.1.4.0-23"),
            r#"{"PublicIP":"198.18.0.2","PublicIPv6":null}"#,
        ),
        (
            key("10.1.6.0-24&fc00:0:0:f06::-64"),
            r#"{"PublicIP":"198.18.0.6","PublicIPv6":"fc00::6"}"#,
        ),
        (
            key("10.1.8.0-24&fc00:0:0:f08::-64"),
            r#"{"PublicIP":"198.18.0.1","PublicIPv6":"fc00::1"}"#,
        ),
        // Ours, from a run with SubnetLen 25: released, which frees 10.1.7.0/24.
        (key("10.1.7.0-25"), ours),
    );
    for (k, v) in [&foreign23, &dual_theirs, &dual_ours, &misfit] {
        etcd.ctl(&["put", k, v]).unwrap();
    }
    let mut a = Host::new(&etcd, "198.18.0.1");
    a.start();
    let subnet = a.wait_subnet(SEC * 20);
    // 10.1.6.0 and 10.1.8.0 are taken by the dual-stack keys; the others are free.
    let free: Vec<Ipv4Net> = ["10.1.4.0/24", "10.1.5.0/24", "10.1.7.0/24"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(free.contains(&subnet), "{subnet}");
    a.daemon().wait_log(
        "released our lease: it does not fit the network config",
        SEC * 5,
    );
    assert_eq!(etcd.get(&misfit.0).unwrap(), None, "misfit lease deleted");
    for (k, v) in [&foreign23, &dual_theirs, &dual_ours] {
        assert_eq!(etcd.get(k).unwrap().as_deref(), Some(*v), "{k} untouched");
    }
    assert_eq!(
        etcd.get(&lease_key(&subnet)).unwrap().as_deref(),
        Some(ours)
    );
    // The dual-stack host is routed through its IPv4 part; the /23 is not a /24 route.
    a.wait_route("10.1.6.9", Some("198.18.0.6"), SEC * 10);
    let mine = Ipv4Addr::from(subnet.addr_u32() + 9).to_string();
    a.wait_route(&mine, Some("198.18.0.1"), SEC * 5);
    let in_23 = if subnet.addr() == Ipv4Addr::new(10, 1, 4, 0) {
        "10.1.5.9"
    } else {
        "10.1.4.9"
    };
    a.wait_route(in_23, None, SEC);
    assert_eq!(
        etcd.get_prefix(&format!("{PREFIX}/subnets/"))
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn etcd_started_five_seconds_after_flanneld() {
    if !require("etcd and etcdctl installed", Etcd::available()) {
        return;
    }
    let mut etcd = Etcd::new().unwrap();
    let mut a = Host::new(&etcd, "198.18.0.1");
    a.start();
    a.daemon().wait_log("etcd unreachable", SEC * 5);
    std::thread::sleep(SEC * 5);
    etcd.launch().unwrap();
    etcd.put_config(PREFIX, r#"{"Network":"10.1.0.0/16"}"#)
        .unwrap();
    a.wait_subnet(SEC * 30);
    assert!(a.daemon().is_running(), "same process, no restart");
}

#[test]
fn bad_config_is_reported_by_field_and_a_fix_is_picked_up_from_the_environment_flags() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Everything from FLANNELD_* environment variables, with a custom prefix.
    let prefix = "/example.com/net";
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flanneld"));
    cmd.env("FLANNELD_ETCD_ENDPOINTS", etcd.endpoint())
        .env("FLANNELD_ETCD_PREFIX", prefix)
        .env("FLANNELD_IFACE", "127.0.0.1")
        .env("FLANNELD_IPTABLES_FORWARD_RULES", "false")
        .env("FLANNELD_DATAPLANE_GUARD", "false")
        .env("FLANNELD_PUBLIC_IP", "198.18.0.9")
        .env("FLANNELD_SUBNET_FILE", dir.path().join("subnet.env"))
        .env("FLANNELD_ROUTE_TABLE", dir.path().join("routes"));
    let mut d = Daemon::spawn("flanneld", cmd, &dir.path().join("log")).unwrap();
    d.wait_log(
        "network config /example.com/net/config not found in etcd",
        SEC * 10,
    );
    etcd.put_config(prefix, r#"{"Network":"10.1.0.0/16","SubnetLen":31}"#)
        .unwrap();
    d.wait_log("SubnetLen 31: must be 30 or less", SEC * 5);
    etcd.put_config(
        prefix,
        r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    d.wait_log("Backend.Type \"vxlan\": unsupported backend", SEC * 5);
    // flannel refuses a Backend without a Type ("unknown backend type: ").
    etcd.put_config(
        prefix,
        r#"{"Network":"10.1.0.0/16","Backend":{"Port":8285}}"#,
    )
    .unwrap();
    d.wait_log("Backend.Type is missing", SEC * 5);
    // flannel masks host bits in Network: accepted, with a warning naming the field.
    etcd.put_config(prefix, r#"{"Network":"10.5.3.0/16","SubnetLen":20}"#)
        .unwrap();
    let subnet = wait_for(SEC * 10, || {
        flannel_shared::subnet_env::previous_subnet(&dir.path().join("subnet.env"))
    })
    .unwrap_or_else(|| panic!("config fix not picked up; log:\n{}", d.log()));
    assert_eq!(subnet.prefix(), 20);
    assert!(
        "10.5.0.0/16"
            .parse::<flannel_shared::Ipv4Net>()
            .unwrap()
            .contains_net(&subnet),
        "{subnet}"
    );
    d.wait_log(
        "network config: Network 10.5.3.0/16: host bits are set; using 10.5.0.0/16, as flannel does",
        SEC * 5,
    );
    let key = format!("{prefix}/subnets/{}", subnet.to_key());
    assert_eq!(
        etcd.get(&key).unwrap().as_deref(),
        Some(r#"{"PublicIP":"198.18.0.9","PublicIPv6":null}"#)
    );
    assert!(d.is_running());
    assert!(d.stop(SEC * 5).unwrap().success());
}

#[test]
fn bad_flags_fail_with_a_message_naming_them() {
    let out = Command::new(env!("CARGO_BIN_EXE_flanneld"))
        .args(["-iface=nosuch0", "-etcd-endpoints=http://127.0.0.1:1"])
        .arg(format!(
            "--route-table={}",
            Path::new("/nonexistent/x").display()
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("-iface nosuch0: no interface has this name or IPv4 address"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_flanneld"))
        .arg("-subnet-lease-renew-margin=0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("subnet-lease-renew-margin"));
}

/// A small tmpfs mounted (as root) at `path`, lazily unmounted on drop, so a failing test leaves
/// no mount behind.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, opts: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                opts,
                "flannel-test",
                path.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {out:?}");
        Self(path.to_owned())
    }

    fn remount(&self, opts: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{opts}"), self.0.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "remount {opts}: {out:?}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `/readyz` with its body, waiting until `pred` holds (panics with the last answer and the log).
fn wait_readyz(port: u16, d: &Daemon, what: &str, pred: impl Fn(u16, &str) -> bool) -> String {
    let got = wait_for(SEC * 10, || {
        http_get(port, "/readyz").filter(|(c, b)| pred(*c, b))
    });
    match got {
        Some((_, body)) => body,
        None => panic!(
            "/readyz never {what}: last {:?}\nlog:\n{}",
            http_get(port, "/readyz"),
            d.log()
        ),
    }
}

/// subnet.env that cannot be written (a read-only file system, then a full one) never costs the
/// lease: flanneld keeps it, `/readyz` answers 503 naming the cause, and the file is written as
/// soon as it can be (retried every second), without a restart.
#[test]
fn subnet_env_that_cannot_be_written_keeps_the_lease_and_readyz_names_the_cause() {
    if !require(
        "root (mounts a small tmpfs for subnet.env)",
        flannel_perf::testbed::is_root(),
    ) {
        return;
    }
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    etcd.put_config(PREFIX, r#"{"Network":"10.1.0.0/16"}"#)
        .unwrap();
    let port = free_port();
    let mut a = Host::new(&etcd, "198.18.0.21");
    let run = a.dir.path().join("run");
    let fs = Tmpfs::mount(&run, "size=256k,ro");
    a.subnet_file = Some(run.join("subnet.env"));
    a.extra = vec![
        "-healthz-ip=127.0.0.1".into(),
        format!("-healthz-port={port}"),
    ];
    a.start();
    // Read-only: the lease is taken and kept; /readyz says why it is not ready.
    let body = wait_readyz(port, a.daemon(), "503 naming subnet.env", |c, b| {
        c == 503 && b.contains("subnet.env (") && b.contains("Read-only file system")
    });
    assert!(body.contains("the lease is kept"), "{body}");
    let ours = || {
        etcd.get_prefix(&format!("{PREFIX}/subnets/"))
            .unwrap()
            .into_iter()
            .filter(|(_, v)| v.contains("\"198.18.0.21\""))
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    let keys = ours();
    assert_eq!(keys.len(), 1, "{keys:?}");
    std::thread::sleep(SEC * 2);
    assert!(a.daemon().is_running(), "{}", a.daemon().log());
    assert_eq!(
        ours(),
        keys,
        "same lease while subnet.env cannot be written"
    );
    // Writable again: written at the next retry, ready.
    fs.remount("rw");
    wait_readyz(port, a.daemon(), "200", |c, _| c == 200);
    let subnet = flannel_shared::subnet_env::previous_subnet(&run.join("subnet.env")).unwrap();
    assert_eq!(keys[0], lease_key(&subnet));

    // Full: the file system has no room when the lease is re-acquired (deleted by hand).
    std::fs::remove_file(run.join("subnet.env")).unwrap();
    let filler = run.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    etcd.ctl(&["del", &keys[0]]).unwrap();
    let body = wait_readyz(port, a.daemon(), "503 naming a full disk", |c, b| {
        c == 503 && b.contains("No space left on device")
    });
    assert!(body.contains("subnet.env ("), "{body}");
    let back = wait_for(SEC * 10, || {
        let k = ours();
        (!k.is_empty()).then_some(k)
    });
    assert_eq!(back, Some(keys.clone()), "the same subnet re-acquired");
    assert!(a.daemon().is_running());
    std::fs::remove_file(&filler).unwrap();
    wait_readyz(port, a.daemon(), "200", |c, _| c == 200);
    assert_eq!(
        flannel_shared::subnet_env::previous_subnet(&run.join("subnet.env")),
        Some(subnet)
    );
    assert!(a.daemon().stop(SEC * 5).unwrap().success());
}

/// The network config changed in etcd after start: flanneld keeps running with the config it
/// started with (its lease and routes stay), logs it loudly, and `/readyz` answers 503 with the
/// reason until etcd holds the running config again.
#[test]
fn network_config_changed_at_runtime_is_reported_not_silently_kept() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    etcd.put_config(PREFIX, r#"{"Network":"10.1.0.0/16"}"#)
        .unwrap();
    let port = free_port();
    let mut a = Host::new(&etcd, "198.18.0.22")
        .with(&["-healthz-ip=127.0.0.1", &format!("-healthz-port={port}")]);
    a.start();
    let subnet = a.wait_subnet(SEC * 20);
    wait_readyz(port, a.daemon(), "200", |c, _| c == 200);

    etcd.put_config(PREFIX, r#"{"Network":"10.2.0.0/16"}"#)
        .unwrap();
    let body = wait_readyz(port, a.daemon(), "503 naming the change", |c, b| {
        c == 503
            && b.contains(
                "config: the network config in etcd changed (Network 10.1.0.0/16 → 10.2.0.0/16",
            )
    });
    assert!(body.contains("restart it to apply"), "{body}");
    a.daemon().wait_log(
        "NETWORK CONFIG CHANGED: the network config in etcd changed",
        SEC * 5,
    );
    // Still running with the old config: same lease, same subnet.env.
    assert!(a.daemon().is_running());
    assert_eq!(
        flannel_shared::subnet_env::previous_subnet(&a.subnet_file()),
        Some(subnet)
    );
    assert!(etcd.get(&lease_key(&subnet)).unwrap().is_some());

    // Broken, then deleted: still reported, with what is wrong.
    etcd.put_config(PREFIX, r#"{"Network":"10.1.0.0/16","SubnetLen":31}"#)
        .unwrap();
    wait_readyz(port, a.daemon(), "503 naming the invalid config", |c, b| {
        c == 503 && b.contains("is invalid now (SubnetLen 31: must be 30 or less)")
    });
    etcd.ctl(&["del", &format!("{PREFIX}/config")]).unwrap();
    wait_readyz(port, a.daemon(), "503 naming the deletion", |c, b| {
        c == 503 && b.contains("was deleted from etcd")
    });
    // The running config back in etcd (written differently): ready again.
    etcd.put_config(
        PREFIX,
        r#"{ "network": "10.1.0.0/16", "Backend": {"Type": "udp"} }"#,
    )
    .unwrap();
    wait_readyz(port, a.daemon(), "200 again", |c, _| c == 200);
    a.daemon().wait_log(
        "the network config in etcd is the running one again",
        SEC * 5,
    );
    assert!(a.daemon().stop(SEC * 5).unwrap().success());
}
