//! `flanneld -ip-masq` inside a host namespace: flannel's masquerade and forward rules, exact
//! (MASQUERADE with `--random-fully`: Debian 12's iptables 1.8.9 has it), in their own chains,
//! not duplicated by resyncs, and restored when removed by hand; the same with nftables
//! (`EnableNFTables`), where a container's ping to the underlay comes back only when
//! masqueraded, and `-ip-masq=false` removes the masquerade chain.

use std::time::Duration;

use flannel_perf::testbed::cluster::{Cluster, ClusterOpts};
use flannel_perf::testbed::etcd::Etcd;
use flannel_perf::testbed::{bins, have, is_root, require, wait_for};

fn rules(c: &Cluster, table: &str) -> Vec<String> {
    let out = c.hosts[0]
        .ns
        .exec("iptables", &["-w", "-t", table, "-S"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("FLANNEL"))
        .map(String::from)
        .collect()
}

#[test]
fn masquerade_and_forward_rules_are_exact_idempotent_and_restored() {
    if !require("root (network namespaces, iptables)", is_root())
        || !require(
            "etcd and iptables installed",
            Etcd::available() && have("iptables"),
        )
    {
        return;
    }
    let mut opts = ClusterOpts::new(bins("flanneld").parent().unwrap());
    opts.flanneld_args = vec!["-ip-masq".into(), "-iptables-resync=1".into()];
    let mut c = Cluster::new(opts).unwrap();
    c.add_control_host().unwrap();
    let (gw, len) = c.hosts[0].subnet.unwrap();
    let s = format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(gw) - 1));
    let env = std::fs::read_to_string(c.hosts[0].subnet_file()).unwrap();
    assert!(env.ends_with("FLANNEL_IPMASQ=true\n"), "{env}");

    let want_nat = vec![
        "-N FLANNEL-POSTRTG".to_string(),
        "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG".into(),
        "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN".into(),
        format!("-A FLANNEL-POSTRTG -s {s} -d 10.1.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d {s} -m comment --comment \"flanneld masq\" -j RETURN"),
        format!("-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d {s} -m comment --comment \"flanneld masq\" -j RETURN"),
        "-A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully".into(),
        "-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully".into(),
    ];
    // Not in flannel: the guard chains, first in FORWARD and OUTPUT (see
    // containers_cannot_send_… and tests/security.rs).
    let want_filter = vec![
        "-N FLANNEL-DP-GUARD".to_string(),
        "-N FLANNEL-DP-OUTPUT".into(),
        "-N FLANNEL-FWD".into(),
        "-A FORWARD -m comment --comment \"flanneld guard\" -j FLANNEL-DP-GUARD".into(),
        "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD".into(),
        "-A OUTPUT -m comment --comment \"flanneld guard\" -j FLANNEL-DP-OUTPUT".into(),
        "-A FLANNEL-DP-GUARD ! -d 10.1.0.0/16 -p udp -m udp --dport 8285 -m comment --comment \"flanneld guard\" -j DROP".into(),
        "-A FLANNEL-DP-OUTPUT -p udp -m udp --dport 8285 -m mark ! --mark 0x2000/0x2000 -m comment --comment \"flanneld guard\" -j DROP".into(),
        "-A FLANNEL-FWD -s 10.1.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT".into(),
        "-A FLANNEL-FWD -d 10.1.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT".into(),
    ];
    let got = wait_for(Duration::from_secs(10), || {
        (rules(&c, "nat") == want_nat && rules(&c, "filter") == want_filter).then_some(())
    });
    assert!(
        got.is_some(),
        "nat:\n{}\nfilter:\n{}\n{}",
        rules(&c, "nat").join("\n"),
        rules(&c, "filter").join("\n"),
        c.hosts[0].logs()
    );
    // Several resyncs later: nothing duplicated.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(rules(&c, "nat"), want_nat);
    assert_eq!(rules(&c, "filter"), want_filter);
    // A rule deleted by hand and the jump removed: both restored by the next resync.
    let ns = &c.hosts[0].ns;
    ns.exec(
        "iptables",
        &["-w", "-t", "nat", "-D", "FLANNEL-POSTRTG", "1"],
    )
    .unwrap();
    ns.exec(
        "iptables",
        &[
            "-w",
            "-t",
            "filter",
            "-D",
            "FORWARD",
            "-m",
            "comment",
            "--comment",
            "flanneld forward",
            "-j",
            "FLANNEL-FWD",
        ],
    )
    .unwrap();
    let restored = wait_for(Duration::from_secs(10), || {
        (rules(&c, "nat") == want_nat && rules(&c, "filter") == want_filter).then_some(())
    });
    assert!(
        restored.is_some(),
        "rules not restored:\n{}",
        rules(&c, "nat").join("\n")
    );
}

/// Empty while the table does not exist (a stopped flanneld removed it, the next one has not
/// written it yet).
fn nft_table(c: &Cluster) -> String {
    c.hosts[0]
        .ns
        .exec("nft", &["list", "table", "ip", "flannel-ipv4"])
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// `ping -c COUNT -W 1` from host 0's container to the underlay switch (198.18.0.254): the switch
/// has no route to 10.1.0.0/16, so replies come back only when the host masqueraded the
/// requests to its own underlay address.
fn ping_switch(c: &Cluster, count: &str) -> bool {
    c.hosts[0]
        .container()
        .command("ping")
        .args(["-n", "-q", "-c", count, "-W", "1", "198.18.0.254"])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn nftables_rules_are_flannels_masquerade_and_follow_ip_masq() {
    if !require("root (network namespaces, nftables)", is_root())
        || !require(
            "etcd, nft, iptables and ping installed",
            Etcd::available() && have("nft") && have("iptables") && have("ping"),
        )
    {
        return;
    }
    let mut opts = ClusterOpts::new(bins("flanneld").parent().unwrap());
    opts.network_config = r#"{"Network":"10.1.0.0/16","EnableNFTables":true}"#.into();
    opts.flanneld_args = vec!["-ip-masq".into(), "-iptables-resync=1".into()];
    let mut c = Cluster::new(opts).unwrap();
    c.add_host().unwrap();
    let (gw, len) = c.hosts[0].subnet.unwrap();
    let s = format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(gw) - 1));
    let forward = "\tchain forward {\n\
        \t\tcomment \"chain to accept flannel traffic\"\n\
        \t\ttype filter hook forward priority filter; policy accept;\n\
        \t\tip saddr 10.1.0.0/16 accept\n\
        \t\tip daddr 10.1.0.0/16 accept\n\
        \t}\n";
    let guard = "\tchain dp-guard {\n\
        \t\tcomment \"no forwarded traffic to the data plane port\"\n\
        \t\ttype filter hook forward priority filter - 5; policy accept;\n\
        \t\tip daddr != 10.1.0.0/16 udp dport 8285 drop\n\
        \t}\n\
        \n\
        \tchain dp-output {\n\
        \t\tcomment \"only the data plane sends to the data plane port\"\n\
        \t\ttype filter hook output priority filter - 5; policy accept;\n\
        \t\tmeta mark & 0x00002000 != 0x00002000 udp dport 8285 drop\n\
        \t}\n";
    let want = format!(
        "table ip flannel-ipv4 {{\n\
         \tcomment \"rules for flannel-ipv4\"\n\
         {forward}\n\
         {guard}\n\
         \tchain postrtg {{\n\
         \t\tcomment \"chain to manage traffic masquerading by flannel\"\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark 0x00004000 return\n\
         \t\tip saddr {s} ip daddr 10.1.0.0/16 return\n\
         \t\tip saddr 10.1.0.0/16 ip daddr {s} return\n\
         \t\tip saddr != {s} ip daddr 10.1.0.0/16 return\n\
         \t\tip saddr 10.1.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n\
         \t\tip saddr != 10.1.0.0/16 ip daddr 10.1.0.0/16 masquerade fully-random\n\
         \t}}\n\
         }}\n"
    );
    let got = wait_for(Duration::from_secs(10), || {
        (nft_table(&c) == want).then_some(())
    });
    assert!(
        got.is_some(),
        "got:\n{}\nwant:\n{want}\n{}",
        nft_table(&c),
        c.hosts[0].logs()
    );
    // nftables mode installs no iptables rules.
    assert!(rules(&c, "nat").is_empty() && rules(&c, "filter").is_empty());
    assert!(
        ping_switch(&c, "3"),
        "masqueraded ping to the underlay failed\n{}",
        nft_table(&c)
    );

    // Flushed by hand: restored by the next resync.
    c.hosts[0]
        .ns
        .exec("nft", &["flush", "chain", "ip", "flannel-ipv4", "postrtg"])
        .unwrap();
    let restored = wait_for(Duration::from_secs(10), || {
        (nft_table(&c) == want).then_some(())
    });
    assert!(restored.is_some(), "not restored:\n{}", nft_table(&c));

    // Restarted with -ip-masq=false, over iptables chains an earlier iptables-mode run left: the
    // masquerade chain goes, the forward chain stays, the iptables chains are removed, and the
    // container's ping to the underlay no longer comes back.
    let ns = &c.hosts[0].ns;
    for args in [
        &["-w", "-t", "nat", "-N", "FLANNEL-POSTRTG"][..],
        &[
            "-w",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "FLANNEL-POSTRTG",
        ],
        &[
            "-w",
            "-t",
            "nat",
            "-A",
            "FLANNEL-POSTRTG",
            "-s",
            "10.1.0.0/16",
            "-j",
            "MASQUERADE",
        ],
        &["-w", "-t", "filter", "-N", "FLANNEL-FWD"],
        &[
            "-w",
            "-t",
            "filter",
            "-A",
            "FORWARD",
            "-m",
            "comment",
            "--comment",
            "flanneld forward",
            "-j",
            "FLANNEL-FWD",
        ],
    ] {
        assert!(
            ns.exec("iptables", args).unwrap().status.success(),
            "{args:?}"
        );
    }
    assert_eq!(rules(&c, "nat").len(), 3);
    c.hosts[0]
        .flanneld
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(15));
    c.opts.flanneld_args = vec!["-ip-masq=false".into(), "-iptables-resync=1".into()];
    c.start_flanneld(0).unwrap();
    let want_off = format!(
        "table ip flannel-ipv4 {{\n\
         \tcomment \"rules for flannel-ipv4\"\n\
         {forward}\n\
         {guard}\
         }}\n"
    );
    let off = wait_for(Duration::from_secs(10), || {
        (nft_table(&c) == want_off && rules(&c, "nat").is_empty() && rules(&c, "filter").is_empty())
            .then_some(())
    });
    assert!(
        off.is_some(),
        "nft:\n{}\niptables nat: {:?}\nfilter: {:?}\n{}",
        nft_table(&c),
        rules(&c, "nat"),
        rules(&c, "filter"),
        c.hosts[0].logs()
    );
    assert!(
        !ping_switch(&c, "2"),
        "ping to the underlay came back without masquerade"
    );
}

/// Packets matched by the first rule of chain `chain` in host `i`'s filter table.
fn first_rule_packets(c: &Cluster, i: usize, chain: &str) -> u64 {
    let out = c.hosts[i]
        .ns
        .exec(
            "iptables",
            &["-w", "-t", "filter", "-L", chain, "-v", "-x", "-n"],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "Chain X (1 references)", the column header, then one line per rule: pkts bytes target ...
    text.lines()
        .nth(2)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rule in {chain}:\n{text}"))
}

/// A container must not reach another host's data plane: masqueraded, its datagrams would
/// arrive with its host's address and pass as that host's. The guard chain, first in FORWARD,
/// drops them (counted there); the peer's data plane never sees them; overlay traffic flows.
#[test]
fn containers_cannot_send_to_another_hosts_data_plane() {
    let Some(mut opts) = ClusterOpts::for_test() else {
        return;
    };
    if !require(
        "iptables and bash installed",
        have("iptables") && have("bash"),
    ) {
        return;
    }
    opts.flanneld_args = vec!["-ip-masq".into(), "-iptables-resync=1".into()];
    let mut c = Cluster::new(opts).unwrap();
    c.add_host().unwrap();
    c.add_host().unwrap();
    c.wait_reachable(0, 1, Duration::from_secs(10)).unwrap();
    let guard_jump = "-A FORWARD -m comment --comment \"flanneld guard\" -j FLANNEL-DP-GUARD";
    let first_forward_rule = |c: &Cluster| {
        let out = c.hosts[0]
            .ns
            .exec("iptables", &["-w", "-t", "filter", "-S", "FORWARD"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("-A "))
            .map(String::from)
    };
    let up = wait_for(Duration::from_secs(10), || {
        (first_forward_rule(&c).as_deref() == Some(guard_jump)).then_some(())
    });
    assert!(
        up.is_some(),
        "{:?}\n{}",
        first_forward_rule(&c),
        c.hosts[0].logs()
    );

    let before = first_rule_packets(&c, 0, "FLANNEL-DP-GUARD");
    let stats = flannel_shared::stats::StatsReader::open(&c.hosts[1].stats_file()).unwrap();
    let rx_before = stats.total("udp_rx_packets");
    let dst = format!("/dev/udp/{}/8285", c.hosts[1].underlay_ip);
    let out = c.hosts[0]
        .container()
        .exec(
            "bash",
            &[
                "-c",
                &format!("for i in $(seq 20); do echo injected > {dst}; done"),
            ],
        )
        .unwrap();
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(first_rule_packets(&c, 0, "FLANNEL-DP-GUARD"), before + 20);
    assert_eq!(
        stats.total("udp_rx_packets"),
        rx_before,
        "host 2's data plane received a container's datagrams"
    );

    // Something inserted above the guard (as Docker does with its chains): moved back on top.
    c.hosts[0]
        .ns
        .exec(
            "iptables",
            &["-w", "-t", "filter", "-I", "FORWARD", "1", "-j", "ACCEPT"],
        )
        .unwrap();
    let back = wait_for(Duration::from_secs(10), || {
        (first_forward_rule(&c).as_deref() == Some(guard_jump)).then_some(())
    });
    assert!(back.is_some(), "{:?}", first_forward_rule(&c));
    // Overlay traffic between the containers is not affected.
    c.ping(0, 1, 3).unwrap();
    c.ping(1, 0, 3).unwrap();
}

/// A clean stop (SIGTERM, as `systemctl stop flanneld`) removes every chain and jump (iptables
/// mode) or the table (nftables mode) flanneld installed, and keeps the lease; the next start
/// puts them back.
#[test]
fn sigterm_removes_every_rule_flanneld_installed_and_keeps_the_lease() {
    if !require("root (network namespaces, iptables, nftables)", is_root())
        || !require(
            "etcd, iptables and nft installed",
            Etcd::available() && have("iptables") && have("nft"),
        )
    {
        return;
    }
    for nftables in [false, true] {
        let mut opts = ClusterOpts::new(bins("flanneld").parent().unwrap());
        if nftables {
            opts.network_config = r#"{"Network":"10.1.0.0/16","EnableNFTables":true}"#.into();
        }
        opts.flanneld_args = vec!["-ip-masq".into(), "-iptables-resync=1".into()];
        let mut c = Cluster::new(opts).unwrap();
        c.add_control_host().unwrap();
        let listing = |c: &Cluster| -> String {
            let mut all = rules(c, "nat");
            all.extend(rules(c, "filter"));
            let nft = c.hosts[0]
                .ns
                .exec("nft", &["list", "ruleset"])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            all.extend(
                nft.lines()
                    .filter(|l| l.contains("flannel"))
                    .map(String::from),
            );
            all.join("\n")
        };
        // Installed: the masquerade, forward and both guard chains (or the table's chains).
        let want = if nftables {
            vec!["table ip flannel-ipv4"]
        } else {
            vec![
                "-N FLANNEL-POSTRTG",
                "-N FLANNEL-FWD",
                "-N FLANNEL-DP-GUARD",
                "-N FLANNEL-DP-OUTPUT",
            ]
        };
        let up = wait_for(Duration::from_secs(10), || {
            let l = listing(&c);
            want.iter().all(|w| l.contains(w)).then_some(())
        });
        assert!(
            up.is_some(),
            "nftables={nftables}: rules not installed:\n{}\n{}",
            listing(&c),
            c.hosts[0].logs()
        );
        let key = c.etcd.get_prefix("/coreos.com/network/subnets/").unwrap();
        assert_eq!(key.len(), 1, "{key:?}");

        let st = c.hosts[0]
            .flanneld
            .as_mut()
            .unwrap()
            .stop(Duration::from_secs(15))
            .expect("flanneld exited");
        assert!(st.success(), "nftables={nftables}: SIGTERM exit {st}");
        let left = listing(&c);
        assert!(
            left.is_empty(),
            "nftables={nftables}: left behind after SIGTERM:\n{left}\n{}",
            c.hosts[0].logs()
        );
        assert!(
            c.hosts[0]
                .logs()
                .contains("SIGTERM: removed the rules flanneld installed"),
            "{}",
            c.hosts[0].logs()
        );
        assert_eq!(
            c.etcd.get_prefix("/coreos.com/network/subnets/").unwrap(),
            key,
            "nftables={nftables}: the lease stays"
        );

        // The next start installs them again.
        c.start_flanneld(0).unwrap();
        let back = wait_for(Duration::from_secs(15), || {
            let l = listing(&c);
            want.iter().all(|w| l.contains(w)).then_some(())
        });
        assert!(
            back.is_some(),
            "nftables={nftables}: not reinstalled:\n{}",
            listing(&c)
        );
    }
}

/// flanneld stopping alone while the data plane forwards (a restart or upgrade of flanneld):
/// the rules stay, since forwarding goes on with the last table and needs them. Once the data
/// plane has stopped too (its device and our subnet's address are gone), flanneld's stop
/// removes them: `systemctl stop` of both leaves nothing behind, in either order of the stops
/// systemd uses (the data plane is ordered after flanneld, so it stops first).
#[test]
fn a_stop_of_flanneld_alone_keeps_the_rules_the_data_plane_forwards_with() {
    let Some(mut opts) = ClusterOpts::for_test() else {
        return;
    };
    if !require("iptables installed", have("iptables")) {
        return;
    }
    opts.flanneld_args = vec!["-ip-masq".into(), "-iptables-resync=1".into()];
    let mut c = Cluster::new(opts).unwrap();
    c.add_host().unwrap();
    let chains = |c: &Cluster| -> Vec<String> {
        let mut all = rules(c, "nat");
        all.extend(rules(c, "filter"));
        all.into_iter()
            .filter(|r| r.starts_with("-N FLANNEL"))
            .collect()
    };
    let up = wait_for(Duration::from_secs(10), || {
        (chains(&c).len() == 4).then_some(())
    });
    assert!(up.is_some(), "rules not installed: {:?}", chains(&c));
    let installed = chains(&c);

    // flanneld alone: the rules stay for the running data plane.
    let st = c.hosts[0]
        .flanneld
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(15));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    assert_eq!(chains(&c), installed, "{}", c.hosts[0].logs());
    assert!(
        c.hosts[0]
            .logs()
            .contains("keeping the firewall rules: the data plane still forwards (flannel0"),
        "{}",
        c.hosts[0].logs()
    );

    // The data plane stops, then a restarted flanneld's stop removes them (once its checks
    // ran: every second with -iptables-resync=1).
    c.start_flanneld(0).unwrap();
    c.hosts[0]
        .flanneld
        .as_ref()
        .unwrap()
        .wait_log("route table published", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500));
    let st = c.hosts[0]
        .dataplane
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(15));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    let gone = wait_for(Duration::from_secs(10), || {
        c.hosts[0]
            .ns
            .ip(&["link", "show", "flannel0"])
            .is_err()
            .then_some(())
    });
    assert!(gone.is_some(), "flannel0 outlived its data plane");
    let st = c.hosts[0]
        .flanneld
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(15));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    assert!(
        chains(&c).is_empty(),
        "left behind: {:?}\n{}",
        chains(&c),
        c.hosts[0].logs()
    );
}
