//! Parsing `iperf3 -J` client output (pure). Tested on output captured from iperf 3.12.
//!
//! TCP: the figure is `end.sum_received` (what the server got), in Gbit/s; retransmits come from
//! `end.sum_sent`. UDP: `end.sum_received` (iperf3 ≥ 3.10; older versions only have `end.sum`,
//! which then carries the server's figures) gives `packets` (the count the server expected by
//! sequence number) and `lost_packets`; received = packets − lost: what the receiver saw. The
//! server's `packets` is the highest sequence number that arrived, so datagrams lost after the
//! last one that arrived are missing from iperf3's own loss figure; the loss here is therefore
//! taken against what the sender sent (`end.sum_sent.packets`) when that is larger. A JSON
//! `error` field (server unreachable, test aborted) is returned as an error carrying iperf3's
//! message.

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

/// One TCP test, as the receiver saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcpResult {
    pub streams: u64,
    pub seconds: f64,
    pub bytes: u64,
    pub bits_per_second: f64,
    pub retransmits: Option<u64>,
}

impl TcpResult {
    pub fn gbit_per_s(&self) -> f64 {
        self.bits_per_second / 1e9
    }
}

/// One UDP test, as the receiver saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UdpResult {
    /// Payload bytes per datagram (`-l`).
    pub payload: u64,
    pub seconds: f64,
    /// Datagrams sent (as counted by the receiver from sequence numbers).
    pub packets: u64,
    pub lost_packets: u64,
    pub received: u64,
    /// Datagrams the sender counted (`end.sum_sent.packets`), when reported.
    pub sent_packets: Option<u64>,
    /// Received datagrams per second.
    pub pps: f64,
    /// Datagrams not received, of max(sent, `packets`) (%).
    pub loss_percent: f64,
}

fn parse_doc(json: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(json).context("iperf3 output is not JSON")?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

fn num(v: &Value, key: &str) -> Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| anyhow!("iperf3 JSON: missing number {key:?}"))
}

/// Parses a TCP client run (`iperf3 -c ... -J [-P N]`).
pub fn parse_tcp(json: &str) -> Result<TcpResult> {
    let v = parse_doc(json)?;
    if v["start"]["test_start"]["protocol"].as_str() == Some("UDP") {
        bail!("iperf3 JSON: a UDP test where TCP was expected");
    }
    let end = &v["end"];
    let rx = end
        .get("sum_received")
        .ok_or_else(|| anyhow!("iperf3 JSON: no end.sum_received (not a TCP test?)"))?;
    let streams = v["start"]["test_start"]["num_streams"]
        .as_u64()
        .unwrap_or(1);
    Ok(TcpResult {
        streams,
        seconds: num(rx, "seconds")?,
        bytes: num(rx, "bytes")? as u64,
        bits_per_second: num(rx, "bits_per_second")?,
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
    })
}

/// Parses a UDP client run (`iperf3 -c ... -u -b 0 -l SIZE -J`).
pub fn parse_udp(json: &str) -> Result<UdpResult> {
    let v = parse_doc(json)?;
    let end = &v["end"];
    let rx = end
        .get("sum_received")
        .or_else(|| end.get("sum"))
        .ok_or_else(|| anyhow!("iperf3 JSON: no end.sum_received or end.sum"))?;
    if rx.get("packets").is_none() {
        bail!("iperf3 JSON: no packet counts (not a UDP test?)");
    }
    let seconds = num(rx, "seconds")?;
    let packets = num(rx, "packets")?.max(0.0) as u64;
    // lost_packets can be negative in iperf3 when datagrams arrive duplicated.
    let lost_packets = (num(rx, "lost_packets")?.max(0.0) as u64).min(packets);
    let received = packets - lost_packets;
    let sent_packets = end["sum_sent"]["packets"].as_u64();
    let sent = sent_packets.unwrap_or(0).max(packets);
    Ok(UdpResult {
        payload: v["start"]["test_start"]["blksize"].as_u64().unwrap_or(0),
        seconds,
        packets,
        lost_packets,
        received,
        sent_packets,
        pps: if seconds > 0.0 {
            received as f64 / seconds
        } else {
            0.0
        },
        loss_percent: if sent > 0 {
            (sent - received) as f64 * 100.0 / sent as f64
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP1: &str = include_str!("testdata/iperf3_tcp1.json");
    const TCP4: &str = include_str!("testdata/iperf3_tcp4.json");
    const UDP64: &str = include_str!("testdata/iperf3_udp64.json");
    const ERROR: &str = include_str!("testdata/iperf3_error.json");

    #[test]
    fn tcp_one_stream() {
        let r = parse_tcp(TCP1).unwrap();
        assert_eq!(r.streams, 1);
        assert_eq!(r.bytes, 692_715_520);
        assert!((r.seconds - 1.026728).abs() < 1e-9);
        assert!((r.gbit_per_s() - 5.397460827).abs() < 1e-6);
        assert_eq!(r.retransmits, Some(617));
    }

    #[test]
    fn tcp_four_streams_uses_the_received_sum() {
        let r = parse_tcp(TCP4).unwrap();
        assert_eq!(r.streams, 4);
        assert_eq!(r.bytes, 1_322_123_264);
        assert!((r.gbit_per_s() - 10.563907993).abs() < 1e-6);
        assert_eq!(r.retransmits, Some(3532));
    }

    #[test]
    fn udp_small_packets() {
        let r = parse_udp(UDP64).unwrap();
        assert_eq!(r.payload, 64);
        assert_eq!(r.packets, 46_290);
        assert_eq!(r.lost_packets, 21_022);
        assert_eq!(r.received, 25_268);
        // Received bytes agree: 25268 × 64.
        assert_eq!(r.received * 64, 1_617_152);
        assert!((r.pps - 25_268.0 / 1.00428).abs() < 1e-6);
        assert!((r.loss_percent - 45.41369626).abs() < 1e-6);
    }

    #[test]
    fn udp_loss_counts_the_senders_tail() {
        // The sender sent 100; the last 10 never arrived, so the receiver's highest sequence
        // number is 90 and iperf3's own figure says 5 of 90 lost.
        let json = r#"{"start":{"test_start":{"protocol":"UDP","blksize":64}},
            "end":{"sum_sent":{"seconds":1.0,"packets":100,"lost_packets":0,"sender":true},
                   "sum_received":{"seconds":1.0,"packets":90,"lost_packets":5,"sender":false}}}"#;
        let r = parse_udp(json).unwrap();
        assert_eq!(
            (r.packets, r.lost_packets, r.received, r.sent_packets),
            (90, 5, 85, Some(100))
        );
        assert_eq!(r.pps, 85.0);
        assert!((r.loss_percent - 15.0).abs() < 1e-9);
    }

    #[test]
    fn udp_from_old_iperf_without_sum_received() {
        let json = r#"{"start":{"test_start":{"protocol":"UDP","blksize":1400}},
            "end":{"sum":{"seconds":2.0,"bytes":2800,"packets":10,"lost_packets":-1,"lost_percent":0}}}"#;
        let r = parse_udp(json).unwrap();
        assert_eq!(
            (r.payload, r.packets, r.lost_packets, r.received),
            (1400, 10, 0, 10)
        );
        assert_eq!(r.pps, 5.0);
        assert_eq!(r.loss_percent, 0.0);
    }

    #[test]
    fn iperf_error_is_reported_with_its_message() {
        let e = parse_tcp(ERROR).unwrap_err().to_string();
        assert!(
            e.contains("unable to connect to server: Connection refused"),
            "{e}"
        );
        assert!(parse_udp(ERROR).is_err());
    }

    #[test]
    fn wrong_kind_and_garbage_are_errors() {
        assert!(parse_udp(TCP1).is_err());
        assert!(parse_tcp(UDP64).is_err());
        assert!(parse_tcp("").is_err());
        assert!(parse_tcp("{\"end\":{}}").is_err());
    }
}
