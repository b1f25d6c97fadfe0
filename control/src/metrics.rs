//! `/metrics` in the Prometheus text format (encoded by the `prometheus-client` crate), served on
//! the health endpoint's address. Everything is read at scrape time: the control plane's own
//! state (lease expiry, route table generation and size, peers, etcd errors and reconnects) and the
//! data plane's per-worker counters from its shared-memory stats file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flannel_shared::lease::LeaseRejection;
use flannel_shared::stats::StatsReader;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::status::Status;

#[derive(Debug)]
struct Collector {
    status: Arc<Status>,
    dataplane_stats: PathBuf,
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_control(&mut e)?;
        self.encode_lease_rejections(&mut e)?;
        self.encode_dataplane(&mut e)
    }
}

impl Collector {
    /// Our lease, the route table, etcd: the control plane's own gauges and counters.
    fn encode_control(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.status;
        let c = &s.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            e,
            "flannel_lease_expiry_timestamp_seconds",
            "Unix time at which our subnet lease expires unless renewed",
            load(&s.lease_expiry_unix) as i64,
        )?;
        gauge(
            e,
            "flannel_lease_held",
            "1 while this host holds its subnet lease",
            i64::from(s.lease_held.load(Ordering::Relaxed)),
        )?;
        let (generation, routes) = s.publisher.get().map(|p| p.table_stats()).unwrap_or((0, 0));
        gauge(
            e,
            "flannel_route_table_generation",
            "Generation of the shared-memory route table last published",
            generation as i64,
        )?;
        gauge(
            e,
            "flannel_route_table_routes",
            "Subnets in the published route table (ours included)",
            routes as i64,
        )?;
        gauge(
            e,
            "flannel_peers",
            "Other hosts with a lease in the published route table",
            routes.saturating_sub(1) as i64,
        )?;
        counter(
            e,
            "flannel_etcd_errors",
            "Failed etcd requests",
            load(&c.etcd_errors),
        )?;
        counter(
            e,
            "flannel_etcd_watch_resumes",
            "Lease watch streams resumed after a break",
            load(&c.watch_resumes),
        )?;
        counter(
            e,
            "flannel_etcd_lease_lists",
            "Full listings of all leases (start, compaction)",
            load(&c.lease_lists),
        )?;
        counter(
            e,
            "flannel_lease_renewals",
            "Successful renewals of our subnet lease",
            load(&c.lease_renewals),
        )?;
        counter(
            e,
            "flannel_lease_reacquisitions",
            "Times our lease vanished and was acquired again",
            load(&c.lease_reacquisitions),
        )
    }

    /// The leases not routed, by reason, and the routes the table writer refused.
    fn encode_lease_rejections(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.status;
        let c = &s.counters;
        let rejections = c.lease_rejections.snapshot();
        let mut m = e.encode_descriptor(
            "flannel_leases_rejected",
            "Leases under subnets/ not routed now (unusable key or value, or a duplicate), by reason",
            None,
            MetricType::Gauge,
        )?;
        for reason in LeaseRejection::REASONS {
            let v = rejections.current.get(reason).copied().unwrap_or(0);
            let labels = [("reason", *reason)];
            ConstGauge::new(v as i64).encode(m.encode_family(&labels)?)?;
        }
        let mut m = e.encode_descriptor(
            "flannel_lease_rejections",
            "Leases found unusable, counted once per key and etcd revision, by reason",
            None,
            MetricType::Counter,
        )?;
        for reason in LeaseRejection::REASONS {
            let v = rejections.total.get(reason).copied().unwrap_or(0);
            let labels = [("reason", *reason)];
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
        gauge(
            e,
            "flannel_route_table_refused_routes",
            "Routes the route-table writer refused in the last publish (left out of the table)",
            s.publisher.get().map_or(0, |p| p.refused_routes()) as i64,
        )
    }

    /// Whether the data plane's stats file is readable, and its per-worker counters.
    fn encode_dataplane(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(reader) = StatsReader::open(&self.dataplane_stats) else {
            return gauge(
                e,
                "flannel_dataplane_up",
                "1 when the data plane's stats file is readable",
                0,
            );
        };
        gauge(
            e,
            "flannel_dataplane_up",
            "1 when the data plane's stats file is readable",
            1,
        )?;
        gauge(
            e,
            "flannel_dataplane_workers",
            "Data-plane worker threads",
            reader.workers() as i64,
        )?;
        let snapshot = reader.snapshot();
        for name in reader.names() {
            let metric = format!("flannel_dataplane_{name}");
            let help = format!("Data-plane counter {name}, per worker");
            let mut m = e.encode_descriptor(&metric, &help, None, MetricType::Counter)?;
            for w in &snapshot {
                let labels = vec![("worker".to_string(), w.worker.to_string())];
                let v = ConstCounter::new(w.get(name).unwrap_or(0));
                v.encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The registry behind `/metrics`.
pub fn registry(status: Arc<Status>, dataplane_stats: PathBuf) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(Collector {
        status,
        dataplane_stats,
    }));
    r
}

/// Renders the registry in the text exposition format.
pub fn render(r: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, r);
    out
}
