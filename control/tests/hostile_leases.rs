//! Issue 27: leases written by a hostile (or broken) member, against a real etcd, `flanneld`
//! and `flannelctl`:
//!
//! - a lease whose PublicIP lies inside Network (the overlay would send into itself) is not
//!   routed, is counted in /metrics and shown by `flannelctl leases` as `public_ip_in_network`;
//! - newlines and terminal escapes in keys and values never reach a log line or flannelctl's
//!   table raw (no forged lines);
//! - keys that are not a SubnetLen subnet inside Network (`0.0.0.0-0`, no TTL) do not block
//!   allocation: a new host still gets a lease.
//!
//! No root needed: loopback only, `-iface 127.0.0.1`, `-public-ip 198.18.0.x`.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use flannel_perf::testbed::etcd::Etcd;
use flannel_perf::testbed::{free_port, wait_for};
use flannel_shared::Ipv4Net;

mod common;
use common::LoopbackFlanneld;

const PREFIX: &str = "/coreos.com/network";
const SEC: Duration = Duration::from_secs(1);

fn key(k: &str) -> String {
    format!("{PREFIX}/subnets/{k}")
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(SEC * 3)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

fn flannelctl(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_flannelctl"))
        .args(args)
        .arg(format!("--etcd-endpoints={endpoint}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until `h` routes `ip` to `want` (None: no route), or panics with the log.
fn wait_route(h: &LoopbackFlanneld, ip: &str, want: Option<&str>) {
    let ip: Ipv4Addr = ip.parse().unwrap();
    let want: Option<Ipv4Addr> = want.map(|w| w.parse().unwrap());
    let ok = wait_for(SEC * 10, || (h.lookup(ip) == want).then_some(()));
    assert!(
        ok.is_some(),
        "route for {ip}: {:?}, want {want:?}; log:\n{}",
        h.lookup(ip),
        h.daemon.log()
    );
}

/// A: PublicIP 10.1.99.1 inside Network 10.1.0.0/16 is rejected (not routed), counted and shown.
/// B: a PublicIP and a key carrying "\nERROR forged" show up escaped, never as a line of their own.
#[test]
fn public_ip_inside_network_is_rejected_and_untrusted_text_cannot_forge_lines() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    etcd.put_config(
        PREFIX,
        r#"{"Network":"10.1.0.0/16","SubnetMax":"10.1.90.0"}"#,
    )
    .unwrap();
    let (looped, forged_value, forged_key, good) = (
        key("10.1.99.0-24"),
        key("10.1.98.0-24"),
        key("10.1.97.0-24\nERROR forged by a key"),
        key("10.1.96.0-24"),
    );
    for (k, v) in [
        (&looped, r#"{"PublicIP":"10.1.99.1"}"#),
        (
            &forged_value,
            r#"{"PublicIP":"198.18.0.9\nERROR forged by a value"}"#,
        ),
        (&forged_key, r#"{"PublicIP":"198.18.0.8"}"#),
        (&good, r#"{"PublicIP":"198.18.0.6"}"#),
    ] {
        etcd.ctl(&["put", k, v]).unwrap();
    }
    let port = free_port();
    let a = LoopbackFlanneld::start(
        &etcd.endpoint(),
        "198.18.0.1",
        &[
            "-healthz-ip=127.0.0.1".into(),
            format!("-healthz-port={port}"),
        ],
    );
    a.wait_subnet(SEC * 20);
    wait_route(&a, "10.1.96.9", Some("198.18.0.6"));
    wait_route(&a, "10.1.99.9", None);

    let (code, metrics) = http_get(port, "/metrics").expect("metrics answered");
    assert_eq!(code, 200);
    for line in [
        r#"flannel_leases_rejected{reason="public_ip_in_network"} 1"#,
        r#"flannel_lease_rejections_total{reason="public_ip_in_network"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }

    // The log: the value and the key are escaped on their line; no line of their own.
    let log = a.daemon.log();
    assert!(log.contains("public_ip_in_network"), "{log}");
    assert!(
        log.contains(r"198.18.0.9\nERROR forged by a value"),
        "value not shown escaped:\n{log}"
    );
    for l in log.lines() {
        assert!(
            !l.starts_with("ERROR forged"),
            "forged log line {l:?} in:\n{log}"
        );
    }

    // flannelctl: JSON names the reason; the table escapes keys and values.
    let rows: serde_json::Value =
        serde_json::from_str(&flannelctl(&etcd.endpoint(), &["leases", "--json"])).unwrap();
    let row = |k: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == k)
            .unwrap_or_else(|| panic!("{k:?} not in {rows}"))
            .clone()
    };
    assert_eq!(row(&looped)["routed"], false);
    assert_eq!(row(&looped)["reason"], "public_ip_in_network");
    assert_eq!(row(&forged_key)["reason"], "bad_key");
    let table = flannelctl(&etcd.endpoint(), &["leases"]);
    assert!(table.contains("rejected: public_ip_in_network"), "{table}");
    assert!(table.contains(r"198.18.0.9\nERROR"), "{table}");
    for l in table.lines() {
        assert!(
            !l.starts_with("ERROR forged"),
            "forged line {l:?} in:\n{table}"
        );
    }
}

/// A, our side: a flanneld told to advertise an address inside Network stops at once with one
/// line saying so, and writes no lease.
#[test]
fn own_public_ip_inside_network_is_refused_at_start() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    etcd.put_config(PREFIX, r#"{"Network":"10.1.0.0/16"}"#)
        .unwrap();
    let mut a = LoopbackFlanneld::start(&etcd.endpoint(), "10.1.0.5", &[]);
    let status = a
        .daemon
        .wait_timeout(SEC * 10)
        .unwrap_or_else(|| panic!("still running; log:\n{}", a.daemon.log()));
    let log = a.daemon.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("public IP 10.1.0.5 (-public-ip or the interface's address) is inside Network 10.1.0.0/16"),
        "{log}"
    );
    assert!(etcd
        .get_prefix(&format!("{PREFIX}/subnets/"))
        .unwrap()
        .is_empty());
}

/// C: `subnets/0.0.0.0-0` (and a /16 over the whole Network, and a /23), without a TTL, used to
/// block every candidate: each new host failed "out of subnets". Now they block nothing.
#[test]
fn bogus_wide_keys_do_not_block_allocation() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    etcd.put_config(PREFIX, r#"{"Network":"10.1.0.0/16"}"#)
        .unwrap();
    let bogus = [key("0.0.0.0-0"), key("10.1.0.0-16"), key("10.1.4.0-23")];
    for k in &bogus {
        etcd.ctl(&["put", k, r#"{"PublicIP":"198.18.0.66"}"#])
            .unwrap();
    }
    let a = LoopbackFlanneld::start(&etcd.endpoint(), "198.18.0.1", &[]);
    let b = LoopbackFlanneld::start(&etcd.endpoint(), "198.18.0.2", &[]);
    let (sa, sb) = (a.wait_subnet(SEC * 20), b.wait_subnet(SEC * 20));
    assert_ne!(sa, sb);
    for (h, s) in [(&a, sa), (&b, sb)] {
        assert_eq!(s.prefix(), 24);
        let value = etcd.get(&key(&s.to_key())).unwrap();
        assert_eq!(
            value.as_deref(),
            Some(format!(r#"{{"PublicIP":"{}","PublicIPv6":null}}"#, h.public_ip).as_str()),
            "{s} in etcd"
        );
        assert!(!h.daemon.log().contains("out of subnets"));
    }
    // The bogus keys are left alone, and nothing routes through them.
    for k in &bogus {
        assert!(etcd.get(k).unwrap().is_some(), "{k} deleted");
    }
    let in_b: Ipv4Net = sb;
    wait_route(
        &a,
        &Ipv4Addr::from(in_b.addr_u32() + 9).to_string(),
        Some("198.18.0.2"),
    );
}
