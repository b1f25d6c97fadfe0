//! What operators look at: `/metrics` (parsed with a Prometheus text parser, counters moving with
//! traffic) and `flannelctl --json` (matching etcd and the route table). Namespaces + real etcd
//! + real daemons; root only (skips otherwise, fails under CI).

use std::collections::BTreeSet;

use flannel_perf::testbed::cluster::{Cluster, ClusterOpts};
use flannel_perf::testbed::{bins, wait_for};
use serde_json::Value;

fn scrape(c: &Cluster, host: usize) -> prometheus_parse::Scrape {
    let out = c.hosts[host]
        .ns
        .exec(
            env!("CARGO_BIN_EXE_flannel-loadgen"),
            &["http-get", "127.0.0.1:9180", "/metrics"],
        )
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF:\n{text}"
    );
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

fn value(s: &prometheus_parse::Scrape, metric: &str) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

fn ctl(c: &Cluster, host: usize, args: &[&str]) -> Value {
    let h = &c.hosts[host];
    let out =
        h.ns.command(bins("flannelctl"))
            .arg("--json")
            .arg(format!("--etcd-endpoints={}", c.etcd.endpoint()))
            .arg(format!("--route-table={}", h.route_table().display()))
            .arg(format!("--stats={}", h.stats_file().display()))
            .args(args)
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "flannelctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn metrics_parse_and_move_and_flannelctl_json_matches_etcd_and_the_table() {
    let Some(mut opts) = ClusterOpts::for_test() else {
        return;
    };
    opts.flanneld_args = vec!["-healthz-ip=127.0.0.1".into(), "-healthz-port=9180".into()];
    let mut c = Cluster::new(opts).unwrap();
    c.add_host().unwrap();
    c.add_host().unwrap();
    c.wait_reachable(0, 1, std::time::Duration::from_secs(10))
        .unwrap();

    let before = scrape(&c, 1);
    assert_eq!(value(&before, "flannel_route_table_routes"), 2.0);
    assert_eq!(value(&before, "flannel_peers"), 1.0);
    assert_eq!(value(&before, "flannel_lease_held"), 1.0);
    assert_eq!(value(&before, "flannel_dataplane_up"), 1.0);
    assert!(value(&before, "flannel_route_table_generation") >= 1.0);
    assert!(value(&before, "flannel_lease_expiry_timestamp_seconds") > 1.7e9);
    let workers = before
        .samples
        .iter()
        .filter(|s| s.metric == "flannel_dataplane_udp_rx_packets_total")
        .count();
    assert!(workers >= 1, "per-worker samples");
    // 20 echo requests, every one answered: B's data plane carried at least 20 each way,
    // through its workers (udp_rx, tun_tx) or, with --express, its kernel lane (express_rx;
    // collected once a second).
    c.ping(0, 1, 20).unwrap();
    let rx = |s: &prometheus_parse::Scrape| {
        value(s, "flannel_dataplane_udp_rx_packets_total")
            + value(s, "flannel_dataplane_express_rx_packets_total")
    };
    let tx = |s: &prometheus_parse::Scrape| {
        value(s, "flannel_dataplane_tun_tx_packets_total")
            + value(s, "flannel_dataplane_express_rx_packets_total")
    };
    let after = wait_for(std::time::Duration::from_secs(3), || {
        let a = scrape(&c, 1);
        (rx(&a) >= rx(&before) + 20.0 && tx(&a) >= tx(&before) + 20.0).then_some(a)
    })
    .unwrap_or_else(|| scrape(&c, 1));
    assert!(
        rx(&after) >= rx(&before) + 20.0,
        "udp_rx + express_rx moved {} → {}",
        rx(&before),
        rx(&after)
    );
    assert!(tx(&after) >= tx(&before) + 20.0);

    // flannelctl leases = etcd's keys and values.
    let leases = ctl(&c, 0, &["leases"]);
    let from_ctl: BTreeSet<(String, String)> = leases
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["key"].as_str().unwrap().to_string(),
                l["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let from_etcd: BTreeSet<(String, String)> = c
        .etcd
        .get_prefix("/coreos.com/network/subnets/")
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(from_ctl, from_etcd);
    assert!(leases[0]["ttl_seconds"].as_i64().unwrap() > 80_000);
    // flannelctl routes = the table: both subnets, pointing at both hosts.
    let routes = ctl(&c, 0, &["routes"]);
    let got: BTreeSet<(String, String)> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["subnet"].as_str().unwrap().to_string(),
                r["public_ip"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = c
        .hosts
        .iter()
        .map(|h| {
            let (gw, len) = h.subnet.unwrap();
            (
                format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(gw) - 1)),
                h.underlay_ip.to_string(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(routes["network"], "10.1.0.0/16");
    let config = ctl(&c, 0, &["config"]);
    assert_eq!(config["Network"], "10.1.0.0/16");
    assert_eq!(config["SubnetLen"], 24);
    assert_eq!(config["Backend"]["Port"], 8285);
    let stats = ctl(&c, 1, &["stats"]);
    let total: u64 = stats["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["udp_rx_packets"].as_u64().unwrap() + w["express_rx_packets"].as_u64().unwrap())
        .sum();
    assert!(total >= 21, "{stats}");
}
