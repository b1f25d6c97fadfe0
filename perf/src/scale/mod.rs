//! Cluster-size simulation. N simulated hosts lease subnets of 10.0.0.0/8 (65,536 /24s, SubnetMin
//! 10.0.0.0 so every one can be leased) from a real etcd cluster on loopback (three members by
//! default), through flanneld's own lease code: [`flannel_control::lease::acquire::acquire`]
//! on a [`SharedLeaseView`] fed by flanneld's own lease watch ([`LeaseWatcher`] without a route
//! table). What is simulated: a real host runs one flanneld with one etcd connection and one
//! view; here the hosts are spread over K etcd clients, each with its own view and watch, and
//! the hosts of one client acquire one after the other through it (K acquisitions in flight).
//!
//! Phases: acquisition (optionally killing the etcd leader with SIGKILL half-way; every lease
//! must be distinct and in etcd, one key per host, afterwards; when the /8 is full one more host
//! must get "out of subnets"); renewals (every host renews once with the daemon's keep-alive;
//! etcd's own request counters give the load, and none may be missed); one real `flanneld`
//! starting cold builds its shared-memory table of all of them; churn (hosts leave and join)
//! while a reader measures etcd change → table entry, as a data-plane worker would see it.
//! Extra acquisition-only runs on fresh clusters ([`ScaleOpts::sizes`]) give the scaling chart.
//! Long phases print a progress line every few seconds.
//!
//! etcd members are real processes on loopback ports with temp data dirs, stopped by PID when
//! dropped (also on failure). No root needed.

pub mod charts;
pub mod progress;
mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::Client;
use flannel_control::etcd::{connect_with_retry, get_prefix, EtcdOptions};
use flannel_control::lease::acquire::{
    acquire, renew, renew_delay, HeldLease, LeaseError, LeaseRequest, Renewal,
};
use flannel_control::lease::view::{LeaseView, SharedLeaseView};
use flannel_control::lease::watch::LeaseWatcher;
use flannel_control::status::Status;
use flannel_shared::config::NetworkConfig;
use flannel_shared::lease::subnets_prefix;
use flannel_shared::route_table::{RouteSnapshot, RouteTableReader};
use flannel_shared::Ipv4Net;
use rand::seq::SliceRandom;

use crate::report::latency::{ms, summarize, LatencySummary};
use crate::testbed::etcd::EtcdCluster;
use crate::testbed::process::Daemon;
use charts::ScalePoint;
use progress::progress_line;

pub const PREFIX: &str = "/coreos.com/network";
pub const NETWORK_CONFIG: &str =
    r#"{"Network":"10.0.0.0/8","SubnetLen":24,"SubnetMin":"10.0.0.0"}"#;
/// Every /24 of the /8.
pub const MAX_HOSTS: usize = 65_536;
/// TTL of the simulated hosts' etcd leases.
const HOST_TTL_SECS: i64 = 3600;
/// How often a long phase prints its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long one host keeps retrying etcd errors before the run fails.
const HOST_RETRY_FOR: Duration = Duration::from_secs(60);
/// flanneld's defaults, for the steady-state renewal load: TTL 24 h, renew 60 min before expiry.
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_MARGIN: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct ScaleOpts {
    pub hosts: usize,
    /// Acquisition-only runs (each on a fresh cluster) for the scaling chart; `hosts` is
    /// always one of the points.
    pub sizes: Vec<usize>,
    /// etcd clients (each with its own lease view and watch) the hosts are spread over.
    pub clients: usize,
    /// etcd members.
    pub members: usize,
    /// SIGKILL the etcd leader half-way through each acquisition (and restart it after).
    pub kill_member: bool,
    /// Churn events (alternating leave and join).
    pub churn: usize,
    /// Run the renewal phase.
    pub renew: bool,
    /// Where `flanneld` is.
    pub bin_dir: PathBuf,
}

impl ScaleOpts {
    /// Checks the options; each error names the option and its value.
    pub fn validate(&self) -> Result<()> {
        for (name, n) in std::iter::once(("--hosts", self.hosts))
            .chain(self.sizes.iter().map(|n| ("--sizes", *n)))
        {
            if n == 0 || n > MAX_HOSTS {
                bail!("{name} {n}: must be 1..={MAX_HOSTS} (the /8 holds {MAX_HOSTS} /24s)");
            }
        }
        if self.clients == 0 {
            bail!("--clients 0: must be at least 1");
        }
        if self.members == 0 || self.members % 2 == 0 {
            bail!("--members {}: must be odd (1, 3, 5)", self.members);
        }
        if self.kill_member && self.members < 3 {
            bail!(
                "--kill-member with --members {}: killing one needs 3 or more",
                self.members
            );
        }
        Ok(())
    }
}

/// One acquisition run.
#[derive(Debug, Clone)]
pub struct Acquisition {
    pub hosts: usize,
    pub total: Duration,
    pub latency: LatencySummary,
    /// Acquire p99 of the hosts in each tenth of the run, by start order (the cluster's size
    /// grows from 0 to N over the run).
    pub p99_by_tenth: Vec<Duration>,
    pub distinct: bool,
    /// etcd holds exactly one key per host, naming that host.
    pub complete: bool,
    /// Acquisitions that failed on an etcd error and were retried.
    pub retries: u64,
    /// Which member was killed, when, and whether it rejoined.
    pub member_killed: Option<String>,
    /// The /8 was full: one more host got "out of subnets" (`None`: not full).
    pub full_refused: Option<bool>,
}

/// The renewal phase.
#[derive(Debug, Clone)]
pub struct Renewals {
    pub count: usize,
    pub total: Duration,
    pub latency: LatencySummary,
    /// Renewals that failed (after retries) or found the lease gone.
    pub missed: usize,
    /// Every host's key still in etcd afterwards.
    pub keys_kept: bool,
    /// Requests etcd received during the phase (all members, from their gRPC counters).
    pub etcd_requests: u64,
    /// Renewals per second at flanneld's defaults (TTL 24 h, margin 60 min) for this many hosts.
    pub steady_state_per_s: f64,
}

/// Everything measured, plus the correctness verdicts.
#[derive(Debug, Clone)]
pub struct ScaleReport {
    pub opts: ScaleOpts,
    pub scaling: Vec<Acquisition>,
    pub main: Acquisition,
    pub renewals: Option<Renewals>,
    pub cold_start_table: Duration,
    pub churn: LatencySummary,
    /// The etcd write alone (until etcd acknowledged it), part of `churn`.
    pub churn_write: LatencySummary,
    /// From etcd's acknowledgement of each write to the table entry (per event: `churn` minus
    /// `churn_write`): flanneld's part without the etcd commit.
    pub churn_from_ack: LatencySummary,
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

impl ScaleReport {
    /// Every correctness verdict holds.
    pub fn correct(&self) -> bool {
        self.scaling
            .iter()
            .chain([&self.main])
            .all(|a| a.distinct && a.complete && a.full_refused != Some(false))
            && self
                .renewals
                .as_ref()
                .map_or(true, |r| r.missed == 0 && r.keys_kept)
            && self.consistent
    }

    /// The scaling chart's points, smallest first.
    pub fn points(&self) -> Vec<ScalePoint> {
        let mut p: Vec<ScalePoint> = self
            .scaling
            .iter()
            .chain([&self.main])
            .map(|a| ScalePoint {
                hosts: a.hosts,
                total_s: a.total.as_secs_f64(),
                p99_ms: ms(a.latency.p99),
            })
            .collect();
        p.sort_by_key(|p| p.hosts);
        p
    }
}

fn public_ip(i: usize) -> Ipv4Addr {
    // 198.18.0.0/15 holds 131,072 addresses; index 0 → 198.18.0.1.
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + i as u32)
}

fn start_cluster(members: usize) -> Result<(EtcdCluster, EtcdOptions)> {
    let cluster = EtcdCluster::start(members).context("starting the etcd cluster")?;
    cluster.ctl(&["put", &format!("{PREFIX}/config"), NETWORK_CONFIG])?;
    let endpoint = EtcdOptions {
        endpoints: cluster.members.iter().map(|m| m.endpoint()).collect(),
        ..Default::default()
    };
    Ok((cluster, endpoint))
}

/// Runs the whole simulation; `progress` gets a line per phase and, in long phases, every
/// few seconds.
pub fn run(opts: &ScaleOpts, progress: &mut dyn FnMut(&str)) -> Result<ScaleReport> {
    opts.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut scaling = Vec::new();
    let sizes: BTreeSet<usize> = opts.sizes.iter().copied().collect();
    for &n in sizes.iter().filter(|n| **n != opts.hosts) {
        progress(&format!(
            "scaling point: {n} hosts on a fresh {}-member etcd cluster",
            opts.members
        ));
        let (mut cluster, endpoint) = start_cluster(opts.members)?;
        let (acq, _) = acquisition(&rt, &mut cluster, &endpoint, n, opts, progress)?;
        scaling.push(acq);
    }

    // Phase 1: N hosts acquire concurrently.
    progress(&format!(
        "main run: {} hosts on a fresh {}-member etcd cluster",
        opts.hosts, opts.members
    ));
    let (mut cluster, endpoint) = start_cluster(opts.members)?;
    let (main, leases) = acquisition(&rt, &mut cluster, &endpoint, opts.hosts, opts, progress)?;

    // Phase 2: every host renews once.
    let renewals = if opts.renew {
        Some(renewals(
            &rt,
            &cluster,
            &endpoint,
            &leases,
            opts.clients,
            progress,
        )?)
    } else {
        None
    };

    // Phase 3: one real flanneld from cold start builds the full table. On a full /8 one
    // simulated host leaves first to make room for it.
    let mut client = rt.block_on(connect_with_retry(&endpoint))?;
    if opts.hosts == MAX_HOSTS {
        let leaving = &leases[leases.len() - 1].lease;
        rt.block_on(client.lease_revoke(leaving.lease_id))
            .context("revoking a host's lease to make room for flanneld")?;
    }
    let keys = etcd_subnets(&rt, &endpoint)?;
    progress("starting flanneld cold; waiting for the full table");
    let dir = tempfile::Builder::new()
        .prefix("flannel-scale-")
        .tempdir()?;
    let table = dir.path().join("routes");
    let mut cmd = Command::new(opts.bin_dir.join("flanneld"));
    cmd.arg(format!("-etcd-endpoints={}", endpoint.endpoints.join(",")))
        .arg("-iface=127.0.0.1")
        .arg("-public-ip=198.19.255.254")
        // The machine's own firewall is not the simulation's to touch.
        .arg("-iptables-forward-rules=false")
        .arg("-dataplane-guard=false")
        .arg(format!(
            "-subnet-file={}",
            dir.path().join("subnet.env").display()
        ))
        .arg(format!("--route-table={}", table.display()))
        .env("RUST_LOG", "warn");
    let t = Instant::now();
    let mut flanneld = Daemon::spawn("flanneld", cmd, &dir.path().join("flanneld.log"))?;
    let (mut reader, mut snap) = wait_full_table(&table, keys.len() + 1, &mut flanneld)?;
    let cold_start_table = t.elapsed();
    progress(&format!(
        "  table with {} routes after {:.3} s",
        snap.len(),
        cold_start_table.as_secs_f64()
    ));

    // Phase 4: churn. Alternate: a random host leaves (its key is deleted), a new host joins.
    progress(&format!(
        "churn: {} events, measuring etcd change → table entry",
        opts.churn
    ));
    let cfg = NetworkConfig::parse(NETWORK_CONFIG)?;
    let mut churn_samples = Vec::with_capacity(opts.churn);
    let mut write_samples = Vec::with_capacity(opts.churn);
    let own = snap
        .meta()
        .our_subnet
        .context("flanneld published no subnet of its own")?;
    let mut live: Vec<(Ipv4Net, Ipv4Addr)> = keys.into_iter().collect();
    live.shuffle(&mut rand::thread_rng());
    let mut next_ip = MAX_HOSTS + 1;
    let taken: BTreeSet<Ipv4Net> = live.iter().map(|(s, _)| *s).chain([own]).collect();
    let mut free: Vec<Ipv4Net> = cfg.subnets().filter(|s| !taken.contains(s)).collect();
    free.shuffle(&mut rand::thread_rng());
    let mut last_line = Instant::now();
    let churn_start = Instant::now();
    for i in 0..opts.churn {
        if last_line.elapsed() >= PROGRESS_EVERY {
            progress(&progress_line(
                "churn",
                i,
                opts.churn,
                churn_start.elapsed(),
            ));
            last_line = Instant::now();
        }
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
            let lease = rt.block_on(client.lease_grant(HOST_TTL_SECS, None))?.id();
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
    let from_ack: Vec<Duration> = churn_samples
        .iter()
        .zip(&write_samples)
        .map(|(total, write)| total.saturating_sub(*write))
        .collect();
    let churn_from_ack = summarize(&from_ack);

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
    drop(cluster);
    Ok(ScaleReport {
        opts: opts.clone(),
        scaling,
        main,
        renewals,
        cold_start_table,
        churn,
        churn_write,
        churn_from_ack,
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

/// A host's lease and how long getting it took.
struct Acquired {
    host: usize,
    lease: HeldLease,
    took: Duration,
}

/// `hosts` hosts acquire over `opts.clients` clients; half-way the leader may be killed (and
/// is restarted once all are done). Checks the result against etcd.
fn acquisition(
    rt: &tokio::runtime::Runtime,
    cluster: &mut EtcdCluster,
    endpoint: &EtcdOptions,
    hosts: usize,
    opts: &ScaleOpts,
    progress: &mut dyn FnMut(&str),
) -> Result<(Acquisition, Vec<Acquired>)> {
    let cfg = NetworkConfig::parse(NETWORK_CONFIG)?;
    progress(&format!(
        "acquiring {hosts} leases over {} etcd clients{}",
        opts.clients,
        if opts.kill_member {
            ", killing the etcd leader half-way"
        } else {
            ""
        }
    ));
    let done = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let task = rt.spawn(acquire_all(
        endpoint.clone(),
        cfg.clone(),
        hosts,
        opts.clients,
        done.clone(),
        retries.clone(),
    ));
    let mut killed: Option<(usize, String)> = None;
    let mut last_line = Instant::now();
    while !task.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        let d = done.load(Ordering::Relaxed);
        if opts.kill_member && killed.is_none() && d >= hosts / 2 {
            let (i, role) = match cluster.leader() {
                Some(i) => (i, "the leader"),
                None => (0, "no leader known"),
            };
            cluster.members[i].kill9();
            let what = format!("m{i} ({role}) killed with SIGKILL at {d}/{hosts} leases");
            progress(&format!("  {what}"));
            killed = Some((i, what));
        }
        if last_line.elapsed() >= PROGRESS_EVERY {
            progress(&progress_line("acquire", d, hosts, t.elapsed()));
            last_line = Instant::now();
        }
    }
    let acquired = rt.block_on(task)??;
    let total = t.elapsed();
    progress(&format!(
        "  {} leases in {:.2} s ({:.0}/s)",
        acquired.len(),
        total.as_secs_f64(),
        acquired.len() as f64 / total.as_secs_f64()
    ));
    let member_killed = match killed {
        None => None,
        Some((i, what)) => {
            let rejoined = cluster.members[i].launch();
            Some(match rejoined {
                Ok(()) => format!("{what}; restarted after the acquisition, rejoined"),
                Err(e) => bail!("the killed member m{i} did not rejoin: {e:#}"),
            })
        }
    };
    let keys = etcd_subnets(rt, endpoint)?;
    let subnets: BTreeSet<Ipv4Net> = acquired.iter().map(|a| a.lease.subnet).collect();
    let distinct = subnets.len() == hosts;
    let complete = keys.len() == hosts
        && acquired
            .iter()
            .all(|a| keys.get(&a.lease.subnet) == Some(&public_ip(a.host)));
    let full_refused = if hosts == MAX_HOSTS {
        let req = LeaseRequest {
            prefix: PREFIX.into(),
            public_ip: public_ip(hosts),
            ttl_secs: HOST_TTL_SECS,
            previous: None,
        };
        let r = rt.block_on(async {
            let mut c = connect_with_retry(endpoint).await?;
            let view = SharedLeaseView::new(LeaseView::without_routes(PREFIX, cfg.clone()));
            let listed = flannel_control::lease::watch::list_into(&mut c, &view, |_| {}).await;
            anyhow::Ok(match listed {
                Ok(_) => acquire(&mut c, &req, &view).await,
                Err(e) => Err(LeaseError::from(e)),
            })
        })?;
        Some(matches!(r, Err(LeaseError::OutOfSubnets { .. })))
    } else {
        None
    };
    let mut by_start: Vec<&Acquired> = acquired.iter().collect();
    by_start.sort_by_key(|a| a.host);
    let tenth = hosts.div_ceil(10).max(1);
    let p99_by_tenth = by_start
        .chunks(tenth)
        .map(|c| summarize(&c.iter().map(|a| a.took).collect::<Vec<_>>()).p99)
        .collect();
    let latency = summarize(&acquired.iter().map(|a| a.took).collect::<Vec<_>>());
    progress(&format!(
        "  acquire p50/p99 {:.1}/{:.1} ms; distinct {distinct}, etcd holds exactly them {complete}{}",
        ms(latency.p50),
        ms(latency.p99),
        match full_refused {
            Some(r) => format!(", one more host refused (out of subnets) {r}"),
            None => String::new(),
        }
    ));
    Ok((
        Acquisition {
            hosts,
            total,
            latency,
            p99_by_tenth,
            distinct,
            complete,
            retries: retries.load(Ordering::Relaxed),
            member_killed,
            full_refused,
        },
        acquired,
    ))
}

/// Keeps `view` current as flanneld's lease watch does (no route table).
fn watch_into(client: Client, view: Arc<SharedLeaseView>) -> LeaseWatcher {
    LeaseWatcher {
        client,
        prefix: PREFIX.into(),
        publisher: None,
        view,
        own: tokio::sync::watch::channel(None).1,
        own_events: tokio::sync::mpsc::unbounded_channel().0,
        status: Arc::new(Status::default()),
    }
}

async fn acquire_all(
    endpoint: EtcdOptions,
    cfg: NetworkConfig,
    hosts: usize,
    clients: usize,
    done: Arc<AtomicUsize>,
    retries: Arc<AtomicU64>,
) -> Result<Vec<Acquired>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let mut watchers = Vec::new();
    for _ in 0..clients {
        let client = connect_with_retry(&endpoint).await?;
        // Like flanneld's view, without the route bookkeeping no simulated host publishes.
        let view = Arc::new(SharedLeaseView::new(LeaseView::without_routes(
            PREFIX,
            cfg.clone(),
        )));
        watchers.push(tokio::spawn(watch_into(client.clone(), view.clone()).run()));
        let (next, done, retries) = (next.clone(), done.clone(), retries.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut got = Vec::new();
            loop {
                let host = next.fetch_add(1, Ordering::Relaxed);
                if host >= hosts {
                    return anyhow::Ok(got);
                }
                let req = LeaseRequest {
                    prefix: PREFIX.into(),
                    public_ip: public_ip(host),
                    ttl_secs: HOST_TTL_SECS,
                    previous: None,
                };
                let t = Instant::now();
                let lease = loop {
                    match acquire(&mut client, &req, &view).await {
                        Ok(l) => break l,
                        // etcd lost a member under us: retry as flanneld does.
                        Err(LeaseError::Etcd(_)) if t.elapsed() < HOST_RETRY_FOR => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => {
                            return Err(e)
                                .with_context(|| format!("host {host} ({})", req.public_ip))
                        }
                    }
                };
                got.push(Acquired {
                    host,
                    lease,
                    took: t.elapsed(),
                });
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut all = Vec::with_capacity(hosts);
    let mut result = Ok(());
    for t in tasks {
        match t.await? {
            Ok(got) => all.extend(got),
            Err(e) => result = result.and(Err(e)),
        }
    }
    for w in watchers {
        w.abort();
    }
    result.map(|()| all)
}

/// Every host renews its lease once with flanneld's keep-alive, over `clients` clients.
fn renewals(
    rt: &tokio::runtime::Runtime,
    cluster: &EtcdCluster,
    endpoint: &EtcdOptions,
    leases: &[Acquired],
    clients: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<Renewals> {
    let n = leases.len();
    progress(&format!(
        "renewals: {n} hosts renew once (flanneld's keep-alive) over {clients} etcd clients"
    ));
    let before = cluster_requests(cluster)?;
    let done = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut chunks: Vec<Vec<HeldLease>> = vec![Vec::new(); clients];
    for (i, a) in leases.iter().enumerate() {
        chunks[i % clients].push(a.lease.clone());
    }
    let task = rt.spawn(renew_all(endpoint.clone(), chunks, done.clone()));
    let mut last_line = Instant::now();
    while !task.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        if last_line.elapsed() >= PROGRESS_EVERY {
            progress(&progress_line(
                "renew",
                done.load(Ordering::Relaxed),
                n,
                t.elapsed(),
            ));
            last_line = Instant::now();
        }
    }
    let (samples, missed) = rt.block_on(task)??;
    let total = t.elapsed();
    let after = cluster_requests(cluster)?;
    let keys = etcd_subnets(rt, endpoint)?;
    let keys_kept = leases
        .iter()
        .all(|a| keys.get(&a.lease.subnet) == Some(&public_ip(a.host)));
    let r = Renewals {
        count: samples.len(),
        total,
        latency: summarize(&samples),
        missed,
        keys_kept,
        etcd_requests: after.saturating_sub(before),
        steady_state_per_s: n as f64 / renew_delay(DEFAULT_TTL, DEFAULT_MARGIN).as_secs_f64(),
    };
    progress(&format!(
        "  {} renewals in {:.2} s ({:.0}/s; etcd received {:.0} requests/s), missed {}, keys kept {}",
        r.count,
        total.as_secs_f64(),
        r.count as f64 / total.as_secs_f64(),
        r.etcd_requests as f64 / total.as_secs_f64(),
        r.missed,
        r.keys_kept
    ));
    Ok(r)
}

async fn renew_all(
    endpoint: EtcdOptions,
    chunks: Vec<Vec<HeldLease>>,
    done: Arc<AtomicUsize>,
) -> Result<(Vec<Duration>, usize)> {
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut client = connect_with_retry(&endpoint).await?;
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let (mut samples, mut missed) = (Vec::with_capacity(chunk.len()), 0usize);
            for mut lease in chunk {
                let t = Instant::now();
                // As flanneld: an error is retried (here at once, up to 3 times).
                let mut ok = false;
                for _ in 0..3 {
                    match renew(&mut client, &mut lease).await {
                        Ok(Renewal::Renewed(_)) => {
                            ok = true;
                            break;
                        }
                        Ok(Renewal::Lost) => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                if ok {
                    samples.push(t.elapsed());
                } else {
                    missed += 1;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (samples, missed)
        }));
    }
    let (mut samples, mut missed) = (Vec::new(), 0);
    for t in tasks {
        let (s, m) = t.await?;
        samples.extend(s);
        missed += m;
    }
    Ok((samples, missed))
}

/// gRPC messages all running members received so far (their `grpc_server_msg_received_total`).
fn cluster_requests(cluster: &EtcdCluster) -> Result<u64> {
    let mut sum = 0;
    for m in cluster.members.iter().filter(|m| m.is_running()) {
        sum += m.grpc_messages_received()?;
    }
    Ok(sum)
}

fn etcd_subnets(
    rt: &tokio::runtime::Runtime,
    endpoint: &EtcdOptions,
) -> Result<BTreeMap<Ipv4Net, Ipv4Addr>> {
    rt.block_on(async {
        let mut c = connect_with_retry(endpoint).await?;
        let (kvs, _) = get_prefix(&mut c, &subnets_prefix(PREFIX)).await?;
        let mut m = BTreeMap::new();
        for kv in &kvs {
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
