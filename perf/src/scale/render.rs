//! The scale run's report as JSON (through serde; keys in sorted order, as
//! `serde_json::Value` keeps them) and as Markdown tables (pure).

use serde::Serialize;
use serde_json::Value;

use super::{Acquisition, ScaleReport, NETWORK_CONFIG};
use crate::report::latency::{ms, LatencySummary};
use crate::report::markdown::{header, row};

/// One acquisition run in JSON.
#[derive(Serialize)]
struct AcquisitionJson<'a> {
    hosts: usize,
    total_s: f64,
    latency: &'a LatencySummary,
    p99_ms_by_tenth_of_the_run: Vec<f64>,
    all_distinct: bool,
    etcd_holds_exactly_one_key_per_host: bool,
    retried_after_etcd_errors: u64,
    member_killed: &'a Option<String>,
    full_network_refuses_one_more: Option<bool>,
}

impl<'a> From<&'a Acquisition> for AcquisitionJson<'a> {
    fn from(a: &'a Acquisition) -> Self {
        Self {
            hosts: a.hosts,
            total_s: a.total.as_secs_f64(),
            latency: &a.latency,
            p99_ms_by_tenth_of_the_run: a.p99_by_tenth.iter().map(|d| ms(*d)).collect(),
            all_distinct: a.distinct,
            etcd_holds_exactly_one_key_per_host: a.complete,
            retried_after_etcd_errors: a.retries,
            member_killed: &a.member_killed,
            full_network_refuses_one_more: a.full_refused,
        }
    }
}

/// The renewal phase in JSON.
#[derive(Serialize)]
struct RenewalsJson<'a> {
    count: usize,
    total_s: f64,
    per_s: f64,
    latency: &'a LatencySummary,
    missed: usize,
    keys_kept: bool,
    etcd_requests: u64,
    etcd_requests_per_s: f64,
    steady_state_renewals_per_s_at_defaults: f64,
}

/// The whole report in JSON.
#[derive(Serialize)]
struct ScaleReportJson<'a> {
    hosts: usize,
    clients: usize,
    etcd_members: usize,
    churn_events: usize,
    network: &'static str,
    acquisition: AcquisitionJson<'a>,
    scaling: Vec<AcquisitionJson<'a>>,
    renewals: Option<RenewalsJson<'a>>,
    cold_start_full_table_s: f64,
    churn_event_to_table: &'a LatencySummary,
    churn_etcd_write_ack: &'a LatencySummary,
    churn_ack_to_table: &'a LatencySummary,
    churn_samples_us: Vec<u64>,
    table_consistent_with_etcd: bool,
    table_routes: usize,
    table_file_bytes: u64,
    flanneld_cpu_s: f64,
    flanneld_rss_kib: u64,
    flanneld_peak_rss_kib: u64,
    #[serde(rename = "lookup_ns_10.0.0.0/8_65536_entries")]
    lookup_ns_full: f64,
    #[serde(rename = "lookup_ns_10.1.0.0/16_10_routes")]
    lookup_ns_small: f64,
}

impl ScaleReport {
    /// The report as JSON (keys sorted).
    pub fn to_json(&self) -> Value {
        let json = ScaleReportJson {
            hosts: self.opts.hosts,
            clients: self.opts.clients,
            etcd_members: self.opts.members,
            churn_events: self.opts.churn,
            network: NETWORK_CONFIG,
            acquisition: (&self.main).into(),
            scaling: self
                .scaling
                .iter()
                .chain([&self.main])
                .map(AcquisitionJson::from)
                .collect(),
            renewals: self.renewals.as_ref().map(|r| RenewalsJson {
                count: r.count,
                total_s: r.total.as_secs_f64(),
                per_s: r.count as f64 / r.total.as_secs_f64(),
                latency: &r.latency,
                missed: r.missed,
                keys_kept: r.keys_kept,
                etcd_requests: r.etcd_requests,
                etcd_requests_per_s: r.etcd_requests as f64 / r.total.as_secs_f64(),
                steady_state_renewals_per_s_at_defaults: r.steady_state_per_s,
            }),
            cold_start_full_table_s: self.cold_start_table.as_secs_f64(),
            churn_event_to_table: &self.churn,
            churn_etcd_write_ack: &self.churn_write,
            churn_ack_to_table: &self.churn_from_ack,
            churn_samples_us: self
                .churn_samples
                .iter()
                .map(|d| d.as_micros() as u64)
                .collect(),
            table_consistent_with_etcd: self.consistent,
            table_routes: self.table_routes,
            table_file_bytes: self.table_file_bytes,
            flanneld_cpu_s: self.flanneld_cpu_secs,
            flanneld_rss_kib: self.flanneld_rss_kib,
            flanneld_peak_rss_kib: self.flanneld_peak_rss_kib,
            lookup_ns_full: self.lookup_ns_full,
            lookup_ns_small: self.lookup_ns_small,
        };
        serde_json::to_value(json).expect("the report serialises: string keys only")
    }

    /// The report as Markdown: one row per acquisition run, then one row per figure.
    pub fn to_markdown(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "**NO**" };
        let lat = |s: &LatencySummary| {
            format!("{:.2} / {:.2} / {:.2} ms", ms(s.p50), ms(s.p99), ms(s.max))
        };
        let mut s = String::from("Acquisition (each row a fresh etcd cluster):\n\n");
        s += &header([
            "hosts",
            "total",
            "per host",
            "acquire p50 / p99 / max",
            "worst p99 of a tenth",
            "distinct / one key per host in etcd",
            "retries",
            "etcd member killed",
        ]);
        let mut runs: Vec<&Acquisition> = self.scaling.iter().chain([&self.main]).collect();
        runs.sort_by_key(|a| a.hosts);
        for a in runs {
            s += &row([
                a.hosts.to_string(),
                format!("{:.2} s", a.total.as_secs_f64()),
                format!("{:.2} ms", ms(a.total) / a.hosts as f64),
                lat(&a.latency),
                format!(
                    "{:.2} ms",
                    a.p99_by_tenth.iter().map(|d| ms(*d)).fold(0.0, f64::max)
                ),
                format!("{} / {}", yes(a.distinct), yes(a.complete)),
                a.retries.to_string(),
                a.member_killed.as_deref().unwrap_or("none").to_string(),
            ]);
        }
        let mut rows: Vec<(String, String)> = vec![(
            "hosts (simulated) / etcd clients (views) / etcd members".into(),
            format!(
                "{} / {} / {}",
                self.opts.hosts, self.opts.clients, self.opts.members
            ),
        )];
        if let Some(r) = self.main.full_refused {
            rows.push((
                "full /8: one more host gets \"out of subnets\"".into(),
                yes(r).into(),
            ));
        }
        if let Some(r) = &self.renewals {
            let secs = r.total.as_secs_f64();
            rows.extend([
                (
                    format!(
                        "renewals: {} hosts renew once (keep-alive)",
                        r.count + r.missed
                    ),
                    format!(
                        "{:.2} s, {:.0} renewals/s; latency p50 / p99 / max {}",
                        secs,
                        r.count as f64 / secs,
                        lat(&r.latency)
                    ),
                ),
                (
                    "  etcd load during the renewals (requests received, all members)".into(),
                    format!(
                        "{} requests, {:.0}/s",
                        r.etcd_requests,
                        r.etcd_requests as f64 / secs
                    ),
                ),
                (
                    "  renewals missed / every key still in etcd".into(),
                    format!("{} / {}", r.missed, yes(r.keys_kept)),
                ),
                (
                    "  steady-state renewal load at flanneld's defaults (TTL 24 h, margin 60 min)"
                        .into(),
                    format!("{:.2} renewals/s", r.steady_state_per_s),
                ),
            ]);
        }
        rows.extend([
            (
                "flanneld cold start → full table".into(),
                format!(
                    "{:.3} s ({} routes)",
                    self.cold_start_table.as_secs_f64(),
                    self.table_routes
                ),
            ),
            (
                format!(
                    "etcd change → table entry, {} churn events, p50 / p99 / max",
                    self.opts.churn
                ),
                lat(&self.churn),
            ),
            (
                "  of which the etcd write itself (until acknowledged)".into(),
                lat(&self.churn_write),
            ),
            (
                "  etcd's acknowledgement of the write → table entry (per event)".into(),
                lat(&self.churn_from_ack),
            ),
            (
                "table equals etcd after churn".into(),
                yes(self.consistent).to_string(),
            ),
            (
                "route table file (10.0.0.0/8, /24: 65,536 entries × 2 buffers)".into(),
                format!("{} KiB", self.table_file_bytes / 1024),
            ),
            (
                "lookup, /8 table with all routes".into(),
                format!("{:.1} ns", self.lookup_ns_full),
            ),
            (
                "lookup, /16 table with 10 routes".into(),
                format!("{:.1} ns", self.lookup_ns_small),
            ),
            (
                "flanneld CPU (whole run) / RSS / peak RSS".into(),
                format!(
                    "{:.2} s / {} MiB / {} MiB",
                    self.flanneld_cpu_secs,
                    self.flanneld_rss_kib / 1024,
                    self.flanneld_peak_rss_kib / 1024
                ),
            ),
        ]);
        s.push('\n');
        s += &header(["metric", "value"]);
        for (k, v) in rows {
            s += &row([k, v]);
        }
        s
    }
}
