//! `flannelctl`: look at a flannel-rs host and its cluster.
//!
//! - `config`: the network config in etcd, with every default filled in;
//! - `leases`: every key under `<prefix>/subnets/` with its remaining TTL, and whether flanneld
//!   routes it or rejects it (with the reason, by the same check flanneld applies);
//! - `routes`: the shared-memory route table this host's data plane reads;
//! - `stats`: the data plane's per-worker counters.
//!
//! Aligned tables for people, `--json` for scripts. etcd flags are flanneld's (same names, same
//! `FLANNELD_*` environment variables).

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use etcd_client::Client;
use flannel_control::cli::normalize_args;
use flannel_control::cli::EtcdArgs;
use flannel_control::etcd::{connect_with_retry, get_prefix};
use flannel_control::lease::set::{KeyValue, LeaseSet};
use flannel_shared::config::NetworkConfig;
use flannel_shared::lease::{config_key, parse_key, subnets_prefix, LeaseAttrs, LeaseRejection};
use flannel_shared::route_table::{format_table, RouteTableReader};
use flannel_shared::stats::StatsReader;
use flannel_shared::untrusted;
use flannel_shared::Ipv4Net;
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(
    name = "flannelctl",
    version,
    about = "Inspect flannel-rs: config, leases, routes, data-plane stats"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Route table file (as flanneld's --route-table).
    #[arg(
        long,
        global = true,
        env = "FLANNELD_ROUTE_TABLE",
        default_value = "/run/flannel/routes"
    )]
    route_table: PathBuf,
    /// Data-plane stats file (as flannel-dataplane's --stats).
    #[arg(
        long,
        global = true,
        env = "FLANNELD_DATAPLANE_STATS",
        default_value = flannel_shared::stats::DEFAULT_PATH
    )]
    stats: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The network config stored in etcd, validated, defaults filled in.
    Config,
    /// Every host's lease.
    Leases,
    /// The shared-memory route table (--route-table).
    Routes,
    /// The data plane's per-worker counters (--stats).
    Stats,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse_from(normalize_args(std::env::args_os()));
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flannelctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let out = match &args.command {
        Cmd::Config | Cmd::Leases => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(from_etcd(&args))?
        }
        Cmd::Routes => routes(&args.route_table)?,
        Cmd::Stats => stats_of(&args.stats)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out.json)?);
    } else {
        print!("{}", out.text());
    }
    Ok(())
}

/// A command's result: JSON for scripts, a table (+ notes) for people, or text already laid out.
struct Output {
    json: Value,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
    /// Text printed instead of the table (the route table's one printer,
    /// [`flannel_shared::route_table::format_table`], shared with `flanneld routes`).
    text: Option<String>,
}

impl Output {
    fn text(&self) -> String {
        if let Some(t) = &self.text {
            return t.clone();
        }
        let mut s = render_table(&self.header, &self.rows);
        for note in &self.notes {
            s.push_str(note);
            s.push('\n');
        }
        s
    }
}

fn render_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    let mut s = line(header);
    for r in rows {
        s += &line(r);
    }
    s
}

/// At most this many "rejected KEY: why" notes under the `leases` table; the rest are counted.
const MAX_REJECTED_NOTES: usize = 20;

async fn from_etcd(args: &Args) -> Result<Output> {
    let opts = args.etcd.options();
    let mut client = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        connect_with_retry(&opts),
    )
    .await
    .context("etcd unreachable for 10 s")??;
    let prefix = &args.etcd.prefix;
    match args.command {
        Cmd::Config => config(&mut client, prefix).await,
        Cmd::Leases => leases(&mut client, prefix).await,
        _ => unreachable!("only etcd commands here"),
    }
}

/// `flannelctl config`: the network config in etcd, parsed.
async fn config(client: &mut Client, prefix: &str) -> Result<Output> {
    let key = config_key(prefix);
    let resp = client.get(key.as_str(), None).await?;
    let kv = resp
        .kvs()
        .first()
        .with_context(|| format!("{key} not found in etcd"))?;
    let text = String::from_utf8_lossy(kv.value()).into_owned();
    let c = NetworkConfig::parse(&text).with_context(|| format!("{key} is invalid"))?;
    let fields = [
        ("Network", c.network.to_string()),
        ("SubnetLen", c.subnet_len.to_string()),
        ("SubnetMin", c.subnet_min.to_string()),
        ("SubnetMax", c.subnet_max.to_string()),
        ("Backend.Type", "udp".into()),
        ("Backend.Port", c.backend.port.to_string()),
        ("EnableNFTables", c.enable_nftables.to_string()),
        ("Subnets", c.subnet_count().to_string()),
    ];
    let mut notes = vec![format!("(from {key})")];
    notes.extend(c.warnings.iter().map(|w| format!("warning: {w}")));
    Ok(Output {
        json: json!({
            "key": key, "raw": text,
            "Network": c.network.to_string(), "SubnetLen": c.subnet_len,
            "SubnetMin": c.subnet_min.to_string(), "SubnetMax": c.subnet_max.to_string(),
            "Backend": {"Type": "udp", "Port": c.backend.port},
            "EnableNFTables": c.enable_nftables,
            "subnets": c.subnet_count(),
            "warnings": c.warnings,
        }),
        header: vec!["FIELD".into(), "VALUE".into()],
        rows: fields
            .iter()
            .map(|(k, v)| vec![k.to_string(), v.clone()])
            .collect(),
        notes,
        text: None,
    })
}

/// The config leases are checked against, or the note saying why there is none (subnets then
/// go unchecked, keys and values are still checked).
async fn config_to_check_against(
    client: &mut Client,
    prefix: &str,
) -> std::result::Result<NetworkConfig, String> {
    let key = config_key(prefix);
    let resp = client
        .get(key.as_str(), None)
        .await
        .map_err(|e| format!("reading {key} failed ({e}): subnets not checked against a config"))?;
    let kv = resp
        .kvs()
        .first()
        .ok_or_else(|| format!("{key} not found: subnets not checked against a config"))?;
    NetworkConfig::parse(&String::from_utf8_lossy(kv.value()))
        .map_err(|e| format!("{key} is invalid ({e}): subnets not checked against it"))
}

/// `flannelctl leases`: every key under `subnets/`, with the verdict flanneld's check gives it.
async fn leases(client: &mut Client, prefix: &str) -> Result<Output> {
    // The same check flanneld applies; without a readable config, subnets go unchecked.
    let mut notes = Vec::new();
    let config = match config_to_check_against(client, prefix).await {
        Ok(config) => Some(config),
        Err(note) => {
            notes.push(note);
            None
        }
    };
    let (kvs, _) = get_prefix(client, &subnets_prefix(prefix)).await?;
    let keys: Vec<String> = kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    let mut set = LeaseSet::new(prefix, config);
    set.replace_all(
        kvs.iter()
            .zip(&keys)
            .map(|(kv, key)| KeyValue::from_etcd(key, kv)),
        &mut Vec::new(),
    );
    let mut json_rows = Vec::new();
    let mut rows = Vec::new();
    let mut rejected = 0usize;
    for (kv, key) in kvs.iter().zip(&keys) {
        let status = set.status(key).expect("every listed key is in the set");
        if let Err(r) = &status {
            rejected += 1;
            if rejected <= MAX_REJECTED_NOTES {
                notes.push(format!("rejected {}: {r}", untrusted::escape(key)));
            }
        }
        let ttl = remaining_ttl(client, kv.lease()).await;
        let row = LeaseRow::new(prefix, key, kv.value(), ttl, status);
        rows.push(row.columns());
        json_rows.push(row.json);
    }
    if rejected > MAX_REJECTED_NOTES {
        notes.push(format!(
            "... and {} more rejected keys (every one is in --json)",
            rejected - MAX_REJECTED_NOTES
        ));
    }
    Ok(Output {
        json: Value::Array(json_rows),
        header: ["SUBNET", "PUBLIC_IP", "BACKEND", "TTL", "STATUS"]
            .map(String::from)
            .to_vec(),
        rows,
        notes,
        text: None,
    })
}

/// The seconds etcd lease `id` has left; `None` for no lease (0) or one etcd no longer knows.
async fn remaining_ttl(client: &mut Client, id: i64) -> Option<i64> {
    if id == 0 {
        return None;
    }
    client
        .lease_time_to_live(id, None)
        .await
        .ok()
        .map(|r| r.ttl())
        .filter(|t| *t >= 0)
}

/// One key of `flannelctl leases`: its table cells and its JSON object.
struct LeaseRow {
    subnet: String,
    public_ip: Option<String>,
    backend: Option<String>,
    ttl: Option<i64>,
    state: String,
    json: Value,
}

impl LeaseRow {
    fn new(
        prefix: &str,
        key: &str,
        value: &[u8],
        ttl: Option<i64>,
        status: std::result::Result<(Ipv4Net, Ipv4Addr), LeaseRejection>,
    ) -> Self {
        let parsed = parse_key(prefix, key).ok();
        let attrs = LeaseAttrs::parse(value).ok();
        let backend = attrs.as_ref().map(|a| {
            if a.backend_type.is_empty() {
                "udp".to_string()
            } else {
                // Another machine's text, as everything below.
                untrusted::escape(&a.backend_type)
            }
        });
        // Another machine's text: cut and escaped for the terminal (JSON escapes itself).
        let dir = subnets_prefix(prefix);
        let subnet = parsed.map_or_else(
            || untrusted::escape(key.strip_prefix(&dir).unwrap_or(key)),
            |k| k.ipv4.to_string(),
        );
        let public_ip = attrs.as_ref().map(|a| a.public_ip.to_string());
        let (state, reason, error) = match &status {
            Ok(_) => ("routed".to_string(), None, None),
            Err(r) => (
                format!("rejected: {}", r.reason()),
                Some(r.reason()),
                Some(r.to_string()),
            ),
        };
        let json = json!({
            "key": key, "subnet": subnet,
            "ipv6_subnet": parsed.and_then(|k| k.ipv6).map(|s| s.to_string()),
            "PublicIP": public_ip,
            "PublicIPv6": attrs.as_ref().and_then(|a| a.public_ipv6).map(|ip| ip.to_string()),
            "backend": backend, "ttl_seconds": ttl, "value": String::from_utf8_lossy(value),
            "routed": status.is_ok(), "reason": reason, "error": error,
        });
        Self {
            subnet,
            public_ip,
            backend,
            ttl,
            state,
            json,
        }
    }

    /// The table cells: SUBNET, PUBLIC_IP, BACKEND, TTL, STATUS.
    fn columns(&self) -> Vec<String> {
        vec![
            self.subnet.clone(),
            self.public_ip.clone().unwrap_or_else(|| "-".into()),
            self.backend.clone().unwrap_or_else(|| "-".into()),
            self.ttl.map_or("-".into(), |t| format!("{t}s")),
            self.state.clone(),
        ]
    }
}

fn routes(path: &std::path::Path) -> Result<Output> {
    let mut reader = RouteTableReader::open(path)?;
    let snap = reader.snapshot()?;
    let meta = snap.meta();
    let json = json!({
        "path": path.display().to_string(),
        "generation": snap.generation(),
        "network": meta.network.to_string(),
        "subnet_len": meta.subnet_len,
        "our_subnet": meta.our_subnet.map(|s| s.to_string()),
        "mtu": meta.mtu,
        "port": meta.port,
        "routes": snap.routes().map(|r| json!({"subnet": r.subnet.to_string(), "public_ip": r.public_ip.to_string()})).collect::<Vec<_>>(),
    });
    Ok(Output {
        json,
        header: Vec::new(),
        rows: Vec::new(),
        notes: Vec::new(),
        text: Some(format_table(&snap)),
    })
}

fn stats_of(path: &std::path::Path) -> Result<Output> {
    let reader = StatsReader::open(path)?;
    let snap = reader.snapshot();
    let names = reader.names().to_vec();
    let mut header = vec!["COUNTER".to_string()];
    header.extend(snap.iter().map(|w| format!("WORKER{}", w.worker)));
    header.push("TOTAL".into());
    let rows = names
        .iter()
        .map(|n| {
            let mut row = vec![n.clone()];
            let vals: Vec<u64> = snap.iter().map(|w| w.get(n).unwrap_or(0)).collect();
            row.extend(vals.iter().map(u64::to_string));
            // Modulo 2^64 like the counters: a corrupt file must not panic (debug builds).
            row.push(
                vals.iter()
                    .fold(0u64, |a, v| a.wrapping_add(*v))
                    .to_string(),
            );
            row
        })
        .collect();
    let json = json!({
        "path": path.display().to_string(),
        "pid": reader.pid(),
        "io_path": reader.io_path().name(),
        "workers": snap.iter().map(|w| {
            let mut m = serde_json::Map::new();
            m.insert("worker".into(), json!(w.worker));
            for (n, v) in &w.counters {
                m.insert(n.clone(), json!(v));
            }
            Value::Object(m)
        }).collect::<Vec<_>>(),
    });
    Ok(Output {
        json,
        header,
        rows,
        notes: vec![format!(
            "pid {} · io path {}",
            reader.pid(),
            reader.io_path().name()
        )],
        text: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_shared::stats::{Counter, StatsWriter};

    /// Regression: `flannelctl stats` summed the workers with `sum()`, which panics on overflow
    /// in debug builds; counters near 2^64 (a corrupt or hostile stats file) crashed it.
    #[test]
    fn stats_total_of_huge_counters_wraps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dp.stats");
        let w = StatsWriter::create(&p, 2).unwrap();
        w.worker(0).add(Counter::DropSpoofedSrc, u64::MAX);
        w.worker(1).add(Counter::DropSpoofedSrc, 2);
        let out = stats_of(&p).unwrap();
        let row = out
            .rows
            .iter()
            .find(|r| r[0] == "drop_spoofed_src")
            .unwrap();
        assert_eq!(row.last().unwrap(), "1");
    }
}
