//! Cluster-size simulation. N simulated hosts lease subnets from one real etcd
//! through flanneld's own lease code ([`flannel_control::subnet_lease::acquire`]), concurrently over
//! a bounded number of etcd clients; then one real `flanneld` starts cold and builds its
//! shared-memory table of all of them; then leases churn (hosts leave and join) while a reader
//! measures etcd-change → table-entry latency, as a data-plane worker would see it.
//!
//! Runs on loopback, no root. The network is 10.0.0.0/8 with /24 subnets (65,536 table entries).

pub mod stats;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flannel_control::etcd::{connect_with_retry, EtcdOptions};
use flannel_control::subnet_lease::{acquire, LeaseRequest};
use flannel_shared::config::NetworkConfig;
use flannel_shared::lease::subnets_prefix;
use flannel_shared::route_table::{RouteSnapshot, RouteTableReader};
use flannel_shared::Ipv4Net;
use rand::seq::SliceRandom;
use serde_json::{json, Value};

use crate::testbed::etcd::Etcd;
use crate::testbed::process::Daemon;
use stats::{summarize, Summary};

pub const PREFIX: &str = "/coreos.com/network";
pub const NETWORK_CONFIG: &str = r#"{"Network":"10.0.0.0/8","SubnetLen":24}"#;

#[derive(Debug, Clone)]
pub struct ScaleOpts {
    pub hosts: usize,
    /// Concurrent etcd clients doing the acquisitions.
    pub clients: usize,
    /// Churn events (alternating leave and join).
    pub churn: usize,
    /// Where `flanneld` is.
    pub bin_dir: PathBuf,
}

/// Everything measured, plus the correctness verdicts.
#[derive(Debug, Clone)]
pub struct ScaleReport {
    pub opts: ScaleOpts,
    pub acquire_total: Duration,
    pub acquire: Summary,
    pub distinct: bool,
    pub complete: bool,
    pub cold_start_table: Duration,
    pub churn: Summary,
    /// The etcd write alone (until etcd acknowledged it), part of `churn`.
    pub churn_write: Summary,
    pub churn_samples: Vec<Duration>,
    pub consistent: bool,
    pub table_routes: usize,
    pub table_file_bytes: u64,
    pub flanneld_cpu_secs: f64,
    pub flanneld_rss_kib: u64,
    pub flanneld_peak_rss_kib: u64,
    pub lookup_ns_full: f64,
    pub lookup_ns_small: f64,
}

fn public_ip(i: usize) -> Ipv4Addr {
    // 198.18.0.0/15 holds 131,072 addresses; index 0 → 198.18.0.1.
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + i as u32)
}

/// Runs the whole simulation; `progress` gets one line per phase.
pub fn run(opts: &ScaleOpts, progress: &mut dyn FnMut(&str)) -> Result<ScaleReport> {
    if opts.hosts == 0 || opts.hosts > 60_000 {
        bail!(
            "--hosts {}: must be 1..=60000 (the /8 holds 65,535 /24s)",
            opts.hosts
        );
    }
    let etcd = Etcd::start().context("starting etcd")?;
    etcd.put_config(PREFIX, NETWORK_CONFIG)?;
    let cfg = NetworkConfig::parse(NETWORK_CONFIG)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let endpoint = EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        ..Default::default()
    };

    // Phase 1: N hosts acquire concurrently.
    progress(&format!(
        "acquiring {} leases with {} etcd clients",
        opts.hosts, opts.clients
    ));
    let t = Instant::now();
    let samples = rt.block_on(acquire_all(&endpoint, &cfg, opts.hosts, opts.clients))?;
    let acquire_total = t.elapsed();
    let subnets: BTreeSet<Ipv4Net> = samples.iter().map(|(s, _)| *s).collect();
    let distinct = subnets.len() == opts.hosts;
    let keys = etcd_subnets(&rt, &endpoint)?;
    let complete =
        keys.len() == opts.hosts && keys.keys().copied().collect::<BTreeSet<_>>() == subnets;
    let acquire_latency = summarize(&samples.iter().map(|(_, d)| *d).collect::<Vec<_>>());
    progress(&format!(
        "  {} leases in {:.2} s ({} distinct, etcd holds {})",
        samples.len(),
        acquire_total.as_secs_f64(),
        subnets.len(),
        keys.len()
    ));

    // Phase 2: one real flanneld from cold start builds the full table.
    progress("starting flanneld cold; waiting for the full table");
    let dir = tempfile::Builder::new()
        .prefix("flannel-scale-")
        .tempdir()?;
    let table = dir.path().join("routes");
    let mut cmd = Command::new(opts.bin_dir.join("flanneld"));
    cmd.arg(format!("-etcd-endpoints={}", etcd.endpoint()))
        .arg("-iface=127.0.0.1")
        .arg("-public-ip=198.19.255.254")
        .arg("-iptables-forward-rules=false")
        .arg(format!(
            "-subnet-file={}",
            dir.path().join("subnet.env").display()
        ))
        .arg(format!("--route-table={}", table.display()))
        .env("RUST_LOG", "warn");
    let t = Instant::now();
    let mut flanneld = Daemon::spawn("flanneld", cmd, &dir.path().join("flanneld.log"))?;
    let (mut reader, mut snap) = wait_full_table(&table, opts.hosts + 1, &mut flanneld)?;
    let cold_start_table = t.elapsed();
    progress(&format!(
        "  table with {} routes after {:.3} s",
        snap.len(),
        cold_start_table.as_secs_f64()
    ));

    // Phase 3: churn. Alternate: a random host leaves (its key is deleted), a new host joins.
    progress(&format!(
        "churn: {} events, measuring etcd change → table entry",
        opts.churn
    ));
    let mut churn_samples = Vec::with_capacity(opts.churn);
    let mut write_samples = Vec::with_capacity(opts.churn);
    let mut live: Vec<(Ipv4Net, Ipv4Addr)> = keys.into_iter().collect();
    live.shuffle(&mut rand::thread_rng());
    let mut next_ip = opts.hosts;
    let mut client = rt.block_on(connect_with_retry(&endpoint))?;
    let taken: BTreeSet<Ipv4Net> = live.iter().map(|(s, _)| *s).collect();
    let mut free: Vec<Ipv4Net> = cfg.subnets().filter(|s| !taken.contains(s)).collect();
    free.shuffle(&mut rand::thread_rng());
    for i in 0..opts.churn {
        // Each event is one etcd write, timed from just before it: a leave deletes a host's key;
        // a join is the lease code's final step (txn create on a fresh etcd lease).
        let (subnet, want, t0) = if i % 2 == 0 && !live.is_empty() {
            let (subnet, _) = live.pop().expect("non-empty");
            let key = format!("{}{}", subnets_prefix(PREFIX), subnet.to_key());
            let t0 = Instant::now();
            rt.block_on(client.delete(key, None))?;
            write_samples.push(t0.elapsed());
            free.push(subnet);
            (subnet, None, t0)
        } else {
            let ip = public_ip(next_ip);
            next_ip += 1;
            let subnet = free.pop().context("no free subnet left for churn")?;
            let lease = rt.block_on(client.lease_grant(3600, None))?.id();
            let key = format!("{}{}", subnets_prefix(PREFIX), subnet.to_key());
            let value = flannel_shared::lease::LeaseAttrs::udp(ip).to_json();
            let txn = etcd_client::Txn::new()
                .when([etcd_client::Compare::version(
                    key.as_str(),
                    etcd_client::CompareOp::Equal,
                    0,
                )])
                .and_then([etcd_client::TxnOp::put(
                    key.as_str(),
                    value,
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )]);
            let t0 = Instant::now();
            if !rt.block_on(client.txn(txn))?.succeeded() {
                bail!("churn event {i}: {subnet} was taken concurrently");
            }
            write_samples.push(t0.elapsed());
            live.push((subnet, ip));
            (subnet, Some(ip), t0)
        };
        let probe = Ipv4Addr::from(subnet.addr_u32() + 1);
        loop {
            reader.refresh(&mut snap)?;
            if snap.lookup(probe) == want {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("churn event {i}: {subnet} not reflected in the table after 10 s");
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        churn_samples.push(t0.elapsed());
    }
    let churn = summarize(&churn_samples);
    let churn_write = summarize(&write_samples);

    // Final consistency: the table equals etcd's lease set (plus flanneld's own).
    std::thread::sleep(Duration::from_millis(200));
    reader.refresh(&mut snap)?;
    let etcd_now = etcd_subnets(&rt, &endpoint)?;
    let table_now: BTreeSet<(Ipv4Net, Ipv4Addr)> =
        snap.routes().map(|r| (r.subnet, r.public_ip)).collect();
    let consistent = table_now == etcd_now.iter().map(|(s, ip)| (*s, *ip)).collect();
    let (cpu, rss, hwm) = proc_usage(flanneld.pid().unwrap_or(0));
    let table_file_bytes = std::fs::metadata(&table)?.len();
    let table_routes = snap.len();
    let lookup_ns_full = lookup_cost(&snap);
    let lookup_ns_small = lookup_cost(&small_table(dir.path())?);
    flanneld.stop(Duration::from_secs(5));
    Ok(ScaleReport {
        opts: opts.clone(),
        acquire_total,
        acquire: acquire_latency,
        distinct,
        complete,
        cold_start_table,
        churn,
        churn_write,
        churn_samples,
        consistent,
        table_routes,
        table_file_bytes,
        flanneld_cpu_secs: cpu,
        flanneld_rss_kib: rss,
        flanneld_peak_rss_kib: hwm,
        lookup_ns_full,
        lookup_ns_small,
    })
}

async fn acquire_all(
    endpoint: &EtcdOptions,
    cfg: &NetworkConfig,
    hosts: usize,
    clients: usize,
) -> Result<Vec<(Ipv4Net, Duration)>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (next, endpoint, cfg) = (next.clone(), endpoint.clone(), cfg.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = connect_with_retry(&endpoint).await?;
            let mut got = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= hosts {
                    return anyhow::Ok(got);
                }
                let req = LeaseRequest {
                    prefix: PREFIX.into(),
                    public_ip: public_ip(i),
                    ttl_secs: 3600,
                    previous: None,
                };
                let t = Instant::now();
                let lease = acquire(&mut client, &cfg, &req)
                    .await
                    .with_context(|| format!("host {i} ({})", public_ip(i)))?;
                got.push((lease.subnet, t.elapsed()));
            }
        }));
    }
    let mut all = Vec::with_capacity(hosts);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

fn etcd_subnets(
    rt: &tokio::runtime::Runtime,
    endpoint: &EtcdOptions,
) -> Result<std::collections::BTreeMap<Ipv4Net, Ipv4Addr>> {
    rt.block_on(async {
        let mut c = connect_with_retry(endpoint).await?;
        let resp = c
            .get(
                subnets_prefix(PREFIX),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await?;
        let mut m = std::collections::BTreeMap::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let subnet =
                flannel_shared::lease::subnet_from_key(PREFIX, &key).context("lease key")?;
            let attrs = flannel_shared::lease::LeaseAttrs::parse(kv.value())?;
            m.insert(subnet, attrs.public_ip);
        }
        Ok(m)
    })
}

fn wait_full_table(
    path: &Path,
    want: usize,
    flanneld: &mut Daemon,
) -> Result<(RouteTableReader, RouteSnapshot)> {
    let end = Instant::now() + Duration::from_secs(120);
    let mut reader = loop {
        if let Ok(r) = RouteTableReader::open(path) {
            break r;
        }
        if Instant::now() > end || !flanneld.is_running() {
            bail!("flanneld wrote no route table; log:\n{}", flanneld.log());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut snap = RouteSnapshot::empty();
    loop {
        reader.refresh(&mut snap)?;
        if snap.len() >= want {
            return Ok((reader, snap));
        }
        if Instant::now() > end || !flanneld.is_running() {
            bail!(
                "table has {} of {want} routes; log:\n{}",
                snap.len(),
                flanneld.log()
            );
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// (CPU seconds, RSS KiB, peak RSS KiB) of a process.
fn proc_usage(pid: u32) -> (f64, u64, u64) {
    let ticks = crate::harness::cpu::process_ticks(pid).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        crate::harness::cpu::ticks_to_seconds(ticks),
        kib("VmRSS:"),
        kib("VmHWM:"),
    )
}

/// ns per lookup over a pseudo-random stream of addresses in the table's network.
fn lookup_cost(snap: &RouteSnapshot) -> f64 {
    let net = snap.meta().network;
    let span = (net.size() - 1) as u32;
    let mut x = 0x9e37_79b9u32;
    let n = 5_000_000u32;
    let mut hits = 0u32;
    let t = Instant::now();
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let dst = Ipv4Addr::from(net.addr_u32().wrapping_add(x % span));
        hits = hits.wrapping_add(u32::from(std::hint::black_box(snap.lookup(dst)).is_some()));
    }
    std::hint::black_box(hits);
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

/// A 10-route table in a /16, to compare lookup cost with the full /8.
fn small_table(dir: &Path) -> Result<RouteSnapshot> {
    use flannel_shared::route_table::{Route, RouteTableWriter, TableMeta};
    let path = dir.join("small-routes");
    let mut w = RouteTableWriter::open(&path)?;
    let meta = TableMeta {
        network: "10.1.0.0/16".parse()?,
        subnet_len: 24,
        our_subnet: None,
        mtu: 1472,
        port: 8285,
    };
    let routes: Vec<Route> = (1..=10u8)
        .map(|i| Route {
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 1, i, 0), 24).expect("aligned"),
            public_ip: Ipv4Addr::new(198, 18, 0, i),
        })
        .collect();
    w.publish(&meta, &routes)?;
    Ok(RouteTableReader::open(&path)?.snapshot()?)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary_json(s: &Summary) -> Value {
    json!({
        "count": s.count, "min_ms": ms(s.min), "p50_ms": ms(s.p50), "p90_ms": ms(s.p90),
        "p99_ms": ms(s.p99), "max_ms": ms(s.max), "mean_ms": ms(s.mean),
    })
}

impl ScaleReport {
    pub fn to_json(&self) -> Value {
        json!({
            "hosts": self.opts.hosts,
            "clients": self.opts.clients,
            "churn_events": self.opts.churn,
            "network": NETWORK_CONFIG,
            "acquire_total_s": self.acquire_total.as_secs_f64(),
            "acquire_latency": summary_json(&self.acquire),
            "all_distinct": self.distinct,
            "all_in_etcd": self.complete,
            "cold_start_full_table_s": self.cold_start_table.as_secs_f64(),
            "churn_event_to_table": summary_json(&self.churn),
            "churn_etcd_write_ack": summary_json(&self.churn_write),
            "churn_samples_us": self.churn_samples.iter().map(|d| d.as_micros() as u64).collect::<Vec<_>>(),
            "table_consistent_with_etcd": self.consistent,
            "table_routes": self.table_routes,
            "table_file_bytes": self.table_file_bytes,
            "flanneld_cpu_s": self.flanneld_cpu_secs,
            "flanneld_rss_kib": self.flanneld_rss_kib,
            "flanneld_peak_rss_kib": self.flanneld_peak_rss_kib,
            "lookup_ns_10.0.0.0/8_65536_entries": self.lookup_ns_full,
            "lookup_ns_10.1.0.0/16_10_routes": self.lookup_ns_small,
        })
    }

    pub fn to_markdown(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "**NO**" };
        let lat =
            |s: &Summary| format!("{:.2} / {:.2} / {:.2} ms", ms(s.p50), ms(s.p99), ms(s.max));
        let rows = [
            (
                "hosts (simulated) / etcd clients",
                format!("{} / {}", self.opts.hosts, self.opts.clients),
            ),
            (
                "time to acquire all leases",
                format!("{:.2} s", self.acquire_total.as_secs_f64()),
            ),
            ("acquire latency p50 / p99 / max", lat(&self.acquire)),
            (
                "all leases distinct / all in etcd",
                format!("{} / {}", yes(self.distinct), yes(self.complete)),
            ),
            (
                "flanneld cold start → full table",
                format!(
                    "{:.3} s ({} routes)",
                    self.cold_start_table.as_secs_f64(),
                    self.table_routes
                ),
            ),
            (
                &*format!(
                    "etcd change → table entry, {} churn events, p50 / p99 / max",
                    self.opts.churn
                ),
                lat(&self.churn),
            ),
            (
                "  of which the etcd write itself (until acknowledged)",
                lat(&self.churn_write),
            ),
            (
                "table equals etcd after churn",
                yes(self.consistent).to_string(),
            ),
            (
                "route table file (10.0.0.0/8, /24: 65,536 entries × 2 buffers)",
                format!("{} KiB", self.table_file_bytes / 1024),
            ),
            (
                "lookup, /8 table with all routes",
                format!("{:.1} ns", self.lookup_ns_full),
            ),
            (
                "lookup, /16 table with 10 routes",
                format!("{:.1} ns", self.lookup_ns_small),
            ),
            (
                "flanneld CPU (whole run) / RSS / peak RSS",
                format!(
                    "{:.2} s / {} MiB / {} MiB",
                    self.flanneld_cpu_secs,
                    self.flanneld_rss_kib / 1024,
                    self.flanneld_peak_rss_kib / 1024
                ),
            ),
        ];
        let mut s = String::from("| metric | value |\n|---|---|\n");
        for (k, v) in rows {
            s += &format!("| {k} | {v} |\n");
        }
        s
    }
}
