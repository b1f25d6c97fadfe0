//! The threat model's tests (README "Security"): each attack tried on the testbed
//! (namespaces, real etcd, both daemons), with a real datagram that must not arrive.
//!
//! Every injection carries a well-formed inner IPv4/UDP packet to port 5999 of host 2's
//! container, where a sink waits for exactly one datagram. After the attack, one legitimate
//! datagram goes container 1 → container 2 through the overlay: the sink must report it and
//! nothing else (`received=1 intact=1`); an injected packet would arrive first and end the sink
//! with `intact=0`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use flannel_perf::testbed::cluster::{Cluster, ClusterOpts};
use flannel_perf::testbed::netns::{add_container_with, ContainerLink, Netns};
use flannel_perf::testbed::{have, require, wait_for};
use flannel_shared::stats::StatsReader;

const SEC: Duration = Duration::from_secs(1);
const INJECTED: u32 = 20;

fn loadgen() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flannel-loadgen"))
}

/// Two hosts with containers, the guards resynced every second; `nft`: EnableNFTables.
fn cluster(nft: bool) -> Option<Cluster> {
    let mut opts = ClusterOpts::for_test()?;
    if !require(
        "iptables, nft and setpriv installed",
        have("iptables") && have("nft") && have("setpriv"),
    ) {
        return None;
    }
    if nft {
        opts.network_config = r#"{"Network":"10.1.0.0/16","EnableNFTables":true}"#.into();
    }
    opts.flanneld_args = vec!["-iptables-resync=1".into()];
    let mut c = Cluster::new(opts).expect("build the testbed");
    c.add_host().unwrap();
    c.add_host().unwrap();
    c.wait_reachable(0, 1, SEC * 10)
        .unwrap_or_else(|e| panic!("{e:#}\n{}{}", c.hosts[0].logs(), c.hosts[1].logs()));
    Some(c)
}

/// A receiver of one datagram on port 5999 in host 2's container, killed on drop.
struct Sink(Option<Child>);

impl Sink {
    fn start(c: &Cluster) -> Self {
        Self(Some(
            c.spawn_listener(1, &loadgen(), &["udp-recv", "5999", "1", "5000"])
                .unwrap(),
        ))
    }

    /// Sends the one legitimate datagram through the overlay, then returns the sink's verdict.
    fn finish(mut self, c: &Cluster) -> String {
        std::thread::sleep(SEC / 2); // anything injected is delivered by now
        let to = format!("{}:5999", c.hosts[1].container_ip());
        let out = c.hosts[0]
            .container()
            .exec(loadgen().to_str().unwrap(), &["udp-send", &to, "1", "64"])
            .unwrap();
        assert!(out.status.success());
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(mut ch) = self.0.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }
}

/// `udp-garbage BIND DST ipv4 INJECTED INNER_SRC INNER_DST` run in `ns` through `wrapper`
/// (e.g. `setpriv …`) with `env`; it must have sent them all.
fn inject(
    ns: &Netns,
    wrapper: &[&str],
    env: &[(&str, &str)],
    bind: Ipv4Addr,
    dst: Ipv4Addr,
    inner: (Ipv4Addr, Ipv4Addr),
) {
    let lg = loadgen();
    let mut argv: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
    argv.push(lg.to_string_lossy().into_owned());
    let mut cmd = ns.command(&argv[0]);
    cmd.args(&argv[1..])
        .args([
            "udp-garbage",
            &bind.to_string(),
            &format!("{dst}:8285"),
            "ipv4",
        ])
        .args([
            INJECTED.to_string(),
            inner.0.to_string(),
            inner.1.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Spawns `cmd` (a flannel-loadgen receiver) with stdout piped and waits for its `listening`.
fn spawn_listening(cmd: &mut std::process::Command) -> Child {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "listening");
    child
}

/// Packets counted by the first rule of iptables chain `chain` in `ns` (0 without the chain).
fn rule_packets(ns: &Netns, chain: &str) -> u64 {
    let Ok(out) = ns
        .command("iptables")
        .args(["-w", "-t", "filter", "-L", chain, "-v", "-n", "-x"])
        .output()
    else {
        return 0;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(2)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Item 1: a container on another masqueraded bridge of host 1 (a compose network,
/// 172.18.0.0/16) sends a datagram to host 2's data plane, inner source in host 1's subnet.
fn masqueraded_container_injects(nft: bool) {
    let Some(c) = cluster(nft) else {
        return;
    };
    let h1 = &c.hosts[0];
    let link = ContainerLink {
        bridge: "br-compose",
        host_end: "cmp0",
        container_end: "eth0",
        mtu: None,
    };
    let name = format!("{}-compose", h1.ns.name());
    let (compose, compose_ip) =
        add_container_with(&h1.ns, &name, &link, Ipv4Addr::new(172, 18, 0, 1), 16).unwrap();
    let masq = [
        "-w",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "172.18.0.0/16",
        "!",
        "-o",
        "br-compose",
        "-j",
        "MASQUERADE",
    ];
    assert!(h1.ns.exec("iptables", &masq).unwrap().status.success());
    // The compose container does reach the underlay (masqueraded): the attack path is real.
    compose
        .wait_reachable(c.hosts[1].underlay_ip, SEC * 5)
        .unwrap();
    // nft rules carry no counter (and a rule added by hand is resynced away): there, host 2's
    // receive count shows where the datagrams stopped.
    let guard_before = (!nft).then(|| rule_packets(&h1.ns, "FLANNEL-DP-GUARD"));
    let stats = StatsReader::open(&c.hosts[1].stats_file()).unwrap();
    let rx_before = stats.total("udp_rx_packets");

    let sink = Sink::start(&c);
    let spoofed = Ipv4Addr::from(u32::from(h1.container_ip()) + 76); // .77: in host 1's subnet
    inject(
        &compose,
        &[],
        &[],
        compose_ip,
        c.hosts[1].underlay_ip,
        (spoofed, c.hosts[1].container_ip()),
    );
    let verdict = sink.finish(&c);
    assert_eq!(
        verdict,
        "received=1 intact=1",
        "an injected datagram reached host 2's container\n{}",
        c.hosts[1].logs()
    );
    if let Some(before) = guard_before {
        let after = rule_packets(&h1.ns, "FLANNEL-DP-GUARD");
        assert!(
            after >= before + u64::from(INJECTED),
            "host 1's forward guard dropped {} of {INJECTED}",
            after - before
        );
    }
    // Host 2's data plane saw only the legitimate datagram (and whatever the overlay carried).
    assert!(stats.total("udp_rx_packets") - rx_before < u64::from(INJECTED));
}

#[test]
fn a_container_on_another_masqueraded_network_cannot_inject_iptables() {
    masqueraded_container_injects(false);
}

#[test]
fn a_container_on_another_masqueraded_network_cannot_inject_nftables() {
    masqueraded_container_injects(true);
}

/// Item 1, the receiving side: a container of host 2 with CAP_NET_RAW (IP_TRANSPARENT) sends to
/// its own host's data plane with host 1's underlay address as source, where rp_filter is loose
/// (2, systemd's default). The datagram arrives on host 2's container bridge, not the underlay:
/// the data plane drops it (`drop_not_underlay`).
#[test]
fn a_container_spoofing_a_peers_address_is_refused_by_the_arrival_check() {
    let Some(c) = cluster(false) else {
        return;
    };
    let (h1, h2) = (&c.hosts[0], &c.hosts[1]);
    for key in [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.cbr0.rp_filter",
    ] {
        h2.ns.sysctl(key, "2").unwrap();
    }
    let stats = StatsReader::open(&h2.stats_file()).unwrap();
    let refused_before = stats.total("drop_not_underlay");
    let sink = Sink::start(&c);
    inject(
        h2.container(),
        &[],
        &[("LOADGEN_TRANSPARENT", "1")],
        h1.underlay_ip,
        h2.underlay_ip,
        (h1.container_ip(), h2.container_ip()),
    );
    let verdict = sink.finish(&c);
    assert_eq!(
        verdict,
        "received=1 intact=1",
        "a spoofed datagram from a local container was delivered\n{}",
        h2.logs()
    );
    let refused = wait_for(SEC * 2, || {
        let n = stats.total("drop_not_underlay") - refused_before;
        (n >= u64::from(INJECTED)).then_some(n)
    });
    assert!(
        refused.is_some(),
        "drop_not_underlay moved by {}",
        stats.total("drop_not_underlay") - refused_before
    );
}

/// A copy of flannel-loadgen that user `nobody` may execute (the build directory may not be
/// reachable for it).
fn loadgen_for_nobody(dir: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let to = dir.join("flannel-loadgen");
    std::fs::copy(loadgen(), &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    to
}

/// Item 2: user `nobody` on host 1 sends with a plain UDP socket to host 2's data plane; host 1's
/// OUTPUT guard drops it (no SO_MARK: setting one needs CAP_NET_ADMIN).
#[test]
fn an_unprivileged_local_user_cannot_send_as_a_member() {
    let Some(c) = cluster(false) else {
        return;
    };
    let (h1, h2) = (&c.hosts[0], &c.hosts[1]);
    let dir = tempfile::tempdir().unwrap();
    let lg = loadgen_for_nobody(dir.path());
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let before = rule_packets(&h1.ns, "FLANNEL-DP-OUTPUT");
    let sink = Sink::start(&c);
    let mut argv: Vec<String> = nobody.iter().map(|s| s.to_string()).collect();
    argv.push(lg.to_string_lossy().into_owned());
    let out = h1
        .ns
        .command(&argv[0])
        .args(&argv[1..])
        .args(["udp-garbage", &h1.underlay_ip.to_string()])
        .args([format!("{}:8285", h2.underlay_ip), "ipv4".into()])
        .args([INJECTED.to_string(), h1.container_ip().to_string()])
        .arg(h2.container_ip().to_string())
        .output()
        .unwrap();
    // The guard drops in OUTPUT: sendto() itself fails (EPERM) for the first datagram.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Operation not permitted"),
        "nobody's send was not refused: {err}"
    );
    let verdict = sink.finish(&c);
    assert_eq!(
        verdict,
        "received=1 intact=1",
        "nobody's datagram reached host 2's container\n{}",
        h2.logs()
    );
    assert!(rule_packets(&h1.ns, "FLANNEL-DP-OUTPUT") > before);

    // What a member's data plane does (root, marked) still passes: the guard is not a wall.
    let sink = Sink::start(&c);
    inject(
        &h1.ns,
        &[],
        &[("LOADGEN_SO_MARK", "0x2000")],
        h1.underlay_ip,
        h2.underlay_ip,
        (h1.container_ip(), h2.container_ip()),
    );
    let verdict = sink.finish(&c);
    assert!(
        verdict.starts_with("received=1 intact=0"),
        "a marked datagram from host 1 was not delivered: {verdict}"
    );
}

/// Item 3: `nobody` holds 0.0.0.0:8285 before the data plane starts: it refuses to start
/// naming the holder (pid, command, uid), and flanneld's /readyz says the same.
#[test]
fn a_squatter_on_the_data_plane_port_is_named() {
    let Some(mut opts) = ClusterOpts::for_test() else {
        return;
    };
    if !require("setpriv installed", have("setpriv")) {
        return;
    }
    let health = flannel_perf::testbed::free_port();
    opts.flanneld_args = vec![format!("-healthz-port={health}")];
    let mut c = Cluster::new(opts).expect("build the testbed");
    let i = c.add_control_host().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lg = loadgen_for_nobody(dir.path());
    let ns = &c.hosts[i].ns;
    let mut squatter = spawn_listening(
        ns.command("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&lg)
            .args(["udp-recv", "8285", "1", "60000"]),
    );
    let pid = squatter.id();
    // setpriv execs the loadgen: the pid is the squatter's.
    let named = format!("UDP 0.0.0.0:8285 held by pid {pid} (flannel-loadgen), uid 65534");

    let mut last = String::new();
    let ready = wait_for(SEC * 10, || {
        let at = format!("{}:{health}", c.hosts[i].underlay_ip);
        let out = ns
            .command(loadgen())
            .args(["http-get", &at, "/readyz"])
            .output()
            .ok()?;
        last = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        last.contains(&named).then_some(())
    });
    let started = c.start_dataplane(i);
    let _ = squatter.kill();
    let _ = squatter.wait();
    assert!(
        ready.is_some(),
        "/readyz does not name the squatter ({named}): {last}\n{}",
        c.hosts[i].logs()
    );
    let err = format!(
        "{:#}",
        started.expect_err("the data plane started beside a squatter")
    );
    assert!(err.contains(&named), "{err}");
}

/// Item 2's constraint: a real flannel host in the cluster (no guards, unmarked datagrams sent
/// from its bound port 8285, a lease written as flannel writes it) still reaches our hosts and
/// is reached by them. The flannel host is a namespace on the underlay with its lease in etcd.
#[test]
fn a_flannel_peer_without_guards_is_accepted_and_reached() {
    let Some(mut c) = cluster(false) else {
        return;
    };
    let (peer, peer_ip) = c.underlay.add_host(1500).unwrap();
    let key = "/coreos.com/network/subnets/10.1.250.0-24";
    let value = format!(r#"{{"PublicIP":"{peer_ip}","PublicIPv6":null}}"#);
    c.etcd.ctl(&["put", key, &value]).unwrap();
    let h2 = &c.hosts[1];
    let table = h2.route_table();
    let routed = wait_for(SEC * 10, || {
        let mut r = flannel_shared::route_table::RouteTableReader::open(&table).ok()?;
        let snap = r.snapshot().ok()?;
        (snap.lookup(Ipv4Addr::new(10, 1, 250, 5)) == Some(peer_ip)).then_some(())
    });
    assert!(
        routed.is_some(),
        "host 2 never routed the flannel peer's lease"
    );

    // flannel → ours: root, no mark, from port 8285, inner source in the peer's subnet.
    let sink = Sink::start(&c);
    inject(
        &peer,
        &[],
        &[("LOADGEN_SRC_PORT", "8285")],
        peer_ip,
        h2.underlay_ip,
        (Ipv4Addr::new(10, 1, 250, 5), h2.container_ip()),
    );
    let verdict = sink.finish(&c);
    assert!(
        verdict.starts_with("received=1 intact=0"),
        "the flannel peer's datagram was not delivered: {verdict}\n{}",
        h2.logs()
    );

    // ours → flannel: a ping from host 2's container arrives at the peer's port 8285 as a raw
    // IPv4 packet in a UDP datagram (flannel's wire format).
    let rx = spawn_listening(
        peer.command(loadgen())
            .args(["udp-recv", "8285", "1", "5000"]),
    );
    let _ = h2.container().ping(Ipv4Addr::new(10, 1, 250, 5), 2);
    let out = rx.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "received=1 intact=0",
        "host 2 did not send to the flannel peer"
    );
}

/// IP reassembly requests seen in `ns` (`Ip: ReasmReqds` of /proc/net/snmp): fragments received.
fn reassembly_requests(ns: &Netns) -> u64 {
    let out = ns.exec("cat", &["/proc/net/snmp"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "ReasmReqds")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// Item 4: outer datagrams carry DF and are never fragmented. With the path to host 2 narrower
/// (route MTU 1000) than what flannel0's MTU lets through, a 1300-byte ping is refused at the
/// send (counted `udp_tx_too_big`) instead of reaching host 2 as IP fragments.
#[test]
fn outer_datagrams_are_never_fragmented() {
    let Some(c) = cluster(false) else {
        return;
    };
    let (h1, h2) = (&c.hosts[0], &c.hosts[1]);
    let peer = format!("{}/32", h2.underlay_ip);
    h1.ns
        .ip(&["route", "add", &peer, "dev", "eth0", "mtu", "1000"])
        .unwrap();
    // The express lane (`--express`) reads route MTUs once a second; the workers' sockets see
    // the route at once.
    std::thread::sleep(SEC * 2);
    let stats = StatsReader::open(&h1.stats_file()).unwrap();
    let (before, reasm_before) = (stats.total("udp_tx_too_big"), reassembly_requests(&h2.ns));
    let out = h1
        .container()
        .command("ping")
        .args(["-n", "-c", "3", "-i", "0.2", "-W", "1", "-s", "1300"])
        .arg(h2.container_ip().to_string())
        .output()
        .unwrap();
    let ping = String::from_utf8_lossy(&out.stdout);
    let fragments = reassembly_requests(&h2.ns) - reasm_before;
    assert_eq!(fragments, 0, "host 2 reassembled fragments; ping: {ping}");
    let refused = stats.total("udp_tx_too_big") - before;
    assert!(
        refused >= 3,
        "udp_tx_too_big moved by {refused} (udp_tx_errors {}); ping: {ping}",
        stats.total("udp_tx_errors")
    );
    // Ordinary packets still pass the narrower path.
    c.ping(0, 1, 2).unwrap();
}

/// The forward guard leaves the overlay alone: a container still reaches another host's
/// container on the data-plane port (UDP 8285 to an overlay address is application traffic).
#[test]
fn containers_still_reach_each_other_on_the_data_plane_port() {
    let Some(c) = cluster(false) else {
        return;
    };
    let sink = spawn_listening(
        c.hosts[1]
            .container()
            .command(loadgen())
            .args(["udp-recv", "8285", "3", "5000"]),
    );
    let to = format!("{}:8285", c.hosts[1].container_ip());
    c.hosts[0]
        .container()
        .exec(loadgen().to_str().unwrap(), &["udp-send", &to, "3", "64"])
        .unwrap();
    let out = sink.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "received=3 intact=3",
        "container to container on UDP 8285 was dropped"
    );
}
