//! Where the datagrams of an unpaced UDP test were lost (pure): counters read on both hosts
//! before and after the test, their deltas set against what the sender sent and the receiver
//! got. Per stage, in the datagrams' order:
//!
//! - `sender_tunnel_tx_dropped`: the sending host's tunnel device (flannel0's TUN queue full:
//!   the data plane did not read fast enough; or vxlan0) dropped them on transmit;
//! - `receiver_host_rcvbuf_errors`: the receiving host's UDP sockets were full (ours: the data
//!   plane's port 8285 sockets; VXLAN has no socket queue);
//! - `receiver_dataplane_drops`: the receiving data plane dropped them (its `drop_*` counters);
//! - `receiver_tunnel_rx_dropped`: the receiving tunnel device dropped them on receive (the
//!   TUN write's backlog);
//! - `receiver_app_rcvbuf_errors`: the receiving container's UDP socket (iperf3's) was full;
//! - `unexplained`: lost, but counted by none of these (e.g. a veth or qdisc drop).

use serde::Serialize;

/// The counters of one host pair at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossCounters {
    pub sender_tunnel_tx_dropped: u64,
    pub receiver_host_rcvbuf_errors: u64,
    pub receiver_dataplane_drops: u64,
    pub receiver_tunnel_rx_dropped: u64,
    pub receiver_app_rcvbuf_errors: u64,
}

/// Where one test's lost datagrams went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UdpLoss {
    pub payload: u64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub sender_tunnel_tx_dropped: u64,
    pub receiver_host_rcvbuf_errors: u64,
    pub receiver_dataplane_drops: u64,
    pub receiver_tunnel_rx_dropped: u64,
    pub receiver_app_rcvbuf_errors: u64,
    pub unexplained: u64,
}

impl UdpLoss {
    /// The stages and their counts, in the datagrams' order (the last is `unexplained`).
    pub fn stages(&self) -> [(&'static str, u64); 6] {
        [
            (
                "sender's tunnel device, tx dropped",
                self.sender_tunnel_tx_dropped,
            ),
            (
                "receiving host's UDP sockets full",
                self.receiver_host_rcvbuf_errors,
            ),
            (
                "receiving data plane dropped",
                self.receiver_dataplane_drops,
            ),
            (
                "receiver's tunnel device, rx dropped",
                self.receiver_tunnel_rx_dropped,
            ),
            (
                "receiving container's socket full",
                self.receiver_app_rcvbuf_errors,
            ),
            ("unexplained", self.unexplained),
        ]
    }
}

/// The loss of a test that sent `sent` and delivered `received` datagrams of `payload` bytes,
/// with the counters `before` and `after` it. A counter that went backwards counts 0.
pub fn attribute(
    payload: u64,
    sent: u64,
    received: u64,
    before: &LossCounters,
    after: &LossCounters,
) -> UdpLoss {
    let d = |a: u64, b: u64| a.saturating_sub(b);
    let mut l = UdpLoss {
        payload,
        sent,
        received,
        lost: sent.saturating_sub(received),
        sender_tunnel_tx_dropped: d(
            after.sender_tunnel_tx_dropped,
            before.sender_tunnel_tx_dropped,
        ),
        receiver_host_rcvbuf_errors: d(
            after.receiver_host_rcvbuf_errors,
            before.receiver_host_rcvbuf_errors,
        ),
        receiver_dataplane_drops: d(
            after.receiver_dataplane_drops,
            before.receiver_dataplane_drops,
        ),
        receiver_tunnel_rx_dropped: d(
            after.receiver_tunnel_rx_dropped,
            before.receiver_tunnel_rx_dropped,
        ),
        receiver_app_rcvbuf_errors: d(
            after.receiver_app_rcvbuf_errors,
            before.receiver_app_rcvbuf_errors,
        ),
        unexplained: 0,
    };
    let counted = l.sender_tunnel_tx_dropped
        + l.receiver_host_rcvbuf_errors
        + l.receiver_dataplane_drops
        + l.receiver_tunnel_rx_dropped
        + l.receiver_app_rcvbuf_errors;
    l.unexplained = l.lost.saturating_sub(counted);
    l
}

/// `RcvbufErrors` of the `Udp:` lines of a `/proc/net/snmp`.
pub fn snmp_udp_rcvbuf_errors(snmp: &str) -> Option<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let i = names.iter().position(|n| *n == "RcvbufErrors")?;
    values.get(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
        Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
        Udp: 1000 2 30 900 28 0 0 0 0\n\
        UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
        UdpLite: 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn rcvbuf_errors_come_from_the_udp_line() {
        assert_eq!(snmp_udp_rcvbuf_errors(SNMP), Some(28));
        assert_eq!(snmp_udp_rcvbuf_errors("Ip: a\nIp: 1\n"), None);
    }

    #[test]
    fn loss_is_attributed_stage_by_stage() {
        let before = LossCounters {
            sender_tunnel_tx_dropped: 10,
            receiver_app_rcvbuf_errors: 5,
            ..Default::default()
        };
        let after = LossCounters {
            sender_tunnel_tx_dropped: 610,
            receiver_host_rcvbuf_errors: 100,
            receiver_app_rcvbuf_errors: 205,
            ..Default::default()
        };
        let l = attribute(64, 10_000, 9_000, &before, &after);
        assert_eq!(l.lost, 1_000);
        assert_eq!(l.sender_tunnel_tx_dropped, 600);
        assert_eq!(l.receiver_host_rcvbuf_errors, 100);
        assert_eq!(l.receiver_app_rcvbuf_errors, 200);
        assert_eq!(l.unexplained, 100);
        // Counters that went backwards (a restarted data plane) count nothing.
        let l = attribute(64, 10, 10, &after, &before);
        assert_eq!(
            (l.lost, l.sender_tunnel_tx_dropped, l.unexplained),
            (0, 0, 0)
        );
    }
}
