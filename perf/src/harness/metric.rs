//! The metrics of a harness run (pure): [`MetricKey`] names each figure a sample can hold
//! and spells its key in `Sample::metrics`, `VariantResult::summary` and the JSON
//! (`tcp1_gbps`, `udp64_loss_pct`, ...); [`METRICS`] is the report table's rows in order.

use std::fmt;

/// The TCP tests' stream counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Streams {
    One,
    Four,
}

impl Streams {
    /// Both, in the order they run.
    pub const ALL: [Streams; 2] = [Streams::One, Streams::Four];

    /// iperf3's `-P`.
    pub fn count(self) -> u32 {
        match self {
            Streams::One => 1,
            Streams::Four => 4,
        }
    }
}

/// The UDP tests' payload sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Payload {
    B64,
    B1400,
}

impl Payload {
    /// Both, in the order they run.
    pub const ALL: [Payload; 2] = [Payload::B64, Payload::B1400];

    /// Payload bytes (iperf3's `-l`).
    pub fn bytes(self) -> u32 {
        match self {
            Payload::B64 => 64,
            Payload::B1400 => 1400,
        }
    }
}

/// One figure a sample can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKey {
    /// Throughput, Gbit/s.
    TcpGbps(Streams),
    /// The sender's retransmitted segments.
    TcpRetransmits(Streams),
    /// flanneld + data planes' CPU seconds per GB moved.
    OurCpuPerGb(Streams),
    /// The whole machine's busy CPU seconds per GB moved.
    MachineCpuPerGb(Streams),
    /// The busiest CPU's busy share during the test, %.
    BusiestCpuPct(Streams),
    /// The least busy CPU's busy share during the test, %.
    LeastBusyCpuPct(Streams),
    /// Unpaced UDP, thousands of packets per second received.
    UdpKpps(Payload),
    /// Unpaced UDP loss, %.
    UdpLossPct(Payload),
    /// The paced search's highest rate with at most 0.1 % loss, kpps received.
    UdpMaxCleanKpps(Payload),
    RttMedianMs,
    RttAvgMs,
    /// Max/min of the sender's per-worker `tun_rx_packets` (TCP 4 streams).
    TxWorkerSpread,
    /// Max/min of the receiver's per-worker `udp_rx_packets` (TCP 4 streams).
    RxWorkerSpread,
}

impl MetricKey {
    /// The key as stored in the maps and the JSON.
    pub fn as_str(self) -> &'static str {
        use MetricKey::*;
        use Payload::*;
        use Streams::*;
        match self {
            TcpGbps(One) => "tcp1_gbps",
            TcpGbps(Four) => "tcp4_gbps",
            TcpRetransmits(One) => "tcp1_retransmits",
            TcpRetransmits(Four) => "tcp4_retransmits",
            OurCpuPerGb(One) => "our_cpu_s_per_gb_tcp1",
            OurCpuPerGb(Four) => "our_cpu_s_per_gb_tcp4",
            MachineCpuPerGb(One) => "machine_cpu_s_per_gb_tcp1",
            MachineCpuPerGb(Four) => "machine_cpu_s_per_gb_tcp4",
            BusiestCpuPct(One) => "tcp1_busiest_cpu_pct",
            BusiestCpuPct(Four) => "tcp4_busiest_cpu_pct",
            LeastBusyCpuPct(One) => "tcp1_least_busy_cpu_pct",
            LeastBusyCpuPct(Four) => "tcp4_least_busy_cpu_pct",
            UdpKpps(B64) => "udp64_kpps",
            UdpKpps(B1400) => "udp1400_kpps",
            UdpLossPct(B64) => "udp64_loss_pct",
            UdpLossPct(B1400) => "udp1400_loss_pct",
            UdpMaxCleanKpps(B64) => "udp64_max_clean_kpps",
            UdpMaxCleanKpps(B1400) => "udp1400_max_clean_kpps",
            RttMedianMs => "rtt_median_ms",
            RttAvgMs => "rtt_avg_ms",
            TxWorkerSpread => "tx_worker_spread",
            RxWorkerSpread => "rx_worker_spread",
        }
    }
}

impl AsRef<str> for MetricKey {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<MetricKey> for String {
    fn from(k: MetricKey) -> String {
        k.as_str().to_string()
    }
}

impl PartialEq<&str> for MetricKey {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for MetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One metric of the report table.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Key in `Sample::metrics` and `VariantResult::summary`.
    pub key: MetricKey,
    /// Row label in the table.
    pub label: &'static str,
    pub unit: &'static str,
}

/// The table rows, in order.
pub const METRICS: &[Metric] = &[
    Metric {
        key: MetricKey::TcpGbps(Streams::One),
        label: "TCP 1 stream",
        unit: "Gbit/s",
    },
    Metric {
        key: MetricKey::TcpGbps(Streams::Four),
        label: "TCP 4 streams",
        unit: "Gbit/s",
    },
    Metric {
        key: MetricKey::TcpRetransmits(Streams::One),
        label: "TCP 1 stream, sender's retransmits",
        unit: "segments",
    },
    Metric {
        key: MetricKey::TcpRetransmits(Streams::Four),
        label: "TCP 4 streams, sender's retransmits",
        unit: "segments",
    },
    Metric {
        key: MetricKey::UdpKpps(Payload::B64),
        label: "UDP 64 B received",
        unit: "kpps",
    },
    Metric {
        key: MetricKey::UdpLossPct(Payload::B64),
        label: "UDP 64 B loss",
        unit: "%",
    },
    Metric {
        key: MetricKey::UdpKpps(Payload::B1400),
        label: "UDP 1400 B received",
        unit: "kpps",
    },
    Metric {
        key: MetricKey::UdpLossPct(Payload::B1400),
        label: "UDP 1400 B loss",
        unit: "%",
    },
    Metric {
        key: MetricKey::UdpMaxCleanKpps(Payload::B64),
        label: "UDP 64 B, highest paced rate with ≤ 0.1 % loss",
        unit: "kpps received",
    },
    Metric {
        key: MetricKey::UdpMaxCleanKpps(Payload::B1400),
        label: "UDP 1400 B, highest paced rate with ≤ 0.1 % loss",
        unit: "kpps received",
    },
    Metric {
        key: MetricKey::RttMedianMs,
        label: "ping RTT median",
        unit: "ms",
    },
    Metric {
        key: MetricKey::RttAvgMs,
        label: "ping RTT avg",
        unit: "ms",
    },
    Metric {
        key: MetricKey::OurCpuPerGb(Streams::One),
        label: "our CPU per GB, TCP 1 stream",
        unit: "s/GB",
    },
    Metric {
        key: MetricKey::OurCpuPerGb(Streams::Four),
        label: "our CPU per GB, TCP 4 streams",
        unit: "s/GB",
    },
    Metric {
        key: MetricKey::MachineCpuPerGb(Streams::One),
        label: "machine CPU per GB, TCP 1 stream",
        unit: "s/GB",
    },
    Metric {
        key: MetricKey::MachineCpuPerGb(Streams::Four),
        label: "machine CPU per GB, TCP 4 streams",
        unit: "s/GB",
    },
    Metric {
        key: MetricKey::BusiestCpuPct(Streams::One),
        label: "busiest CPU during TCP 1 stream",
        unit: "% busy",
    },
    Metric {
        key: MetricKey::LeastBusyCpuPct(Streams::One),
        label: "least busy CPU during TCP 1 stream",
        unit: "% busy",
    },
    Metric {
        key: MetricKey::TxWorkerSpread,
        label: "sender worker spread, TCP 4 (tun_rx max/min)",
        unit: "×",
    },
    Metric {
        key: MetricKey::RxWorkerSpread,
        label: "receiver worker spread, TCP 4 (udp_rx max/min)",
        unit: "×",
    },
];

/// The metrics shown repeat by repeat (the headline figures).
pub const HEADLINE: &[MetricKey] = &[
    MetricKey::TcpGbps(Streams::One),
    MetricKey::TcpGbps(Streams::Four),
    MetricKey::UdpKpps(Payload::B64),
    MetricKey::UdpLossPct(Payload::B64),
    MetricKey::UdpKpps(Payload::B1400),
    MetricKey::UdpLossPct(Payload::B1400),
    MetricKey::UdpMaxCleanKpps(Payload::B64),
    MetricKey::UdpMaxCleanKpps(Payload::B1400),
    MetricKey::RttMedianMs,
];

/// The table row of this metric (`None` for the ones only in the JSON).
pub fn metric(key: MetricKey) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.key == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_keys_are_unique() {
        let mut keys: Vec<_> = METRICS.iter().map(|m| m.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), METRICS.len());
        assert!(HEADLINE.iter().all(|k| metric(*k).is_some()));
    }

    #[test]
    fn keys_spell_what_they_measure() {
        assert_eq!(MetricKey::TcpGbps(Streams::Four), "tcp4_gbps");
        assert_eq!(
            MetricKey::UdpMaxCleanKpps(Payload::B1400).as_str(),
            "udp1400_max_clean_kpps"
        );
        assert_eq!(
            MetricKey::OurCpuPerGb(Streams::One).to_string(),
            "our_cpu_s_per_gb_tcp1"
        );
    }
}
