//! `flanneld` and `flannelctl` against an etcd that demands credentials:
//!
//! - TLS with client-certificate auth (`--client-cert-auth`; CA, server and client certificates
//!   made by the test with the `openssl` CLI): the right files give a lease and subnet.env over
//!   `https://`; no client certificate, a client certificate from another CA, or a CA file that
//!   does not sign the server's certificate each keep flanneld retrying with a log line that says
//!   what to check, and it never writes subnet.env.
//! - Username/password (`auth enable`, etcd 3.4 semantics): the right password works, given
//!   with `-etcd-password` or `-etcd-password-file` (also as `FLANNELD_ETCD_PASSWORD_FILE`); a
//!   wrong one keeps flanneld retrying with "authentication failed" in its log.
//! - A password over `http://` to a host other than loopback is refused (exit 1, one line)
//!   unless `-etcd-allow-insecure-password` is given (issue 27).
//!
//! No root needed: loopback only, `-iface 127.0.0.1`, `-public-ip 198.18.0.x`.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use flannel_perf::testbed::certs::{self, TlsFiles};
use flannel_perf::testbed::etcd::Etcd;
use flannel_perf::testbed::{require, wait_for};
use flannel_shared::Ipv4Net;

mod common;
use common::LoopbackFlanneld;

const PREFIX: &str = "/coreos.com/network";
const SEC: Duration = Duration::from_secs(1);

fn prerequisites(with_openssl: bool) -> bool {
    require("etcd and etcdctl installed", Etcd::available())
        && (!with_openssl || require("openssl installed", certs::available()))
}

type Host = LoopbackFlanneld;

/// Checks of this file.
trait Checks {
    fn wait_route(&self, subnet: Ipv4Net, peer: &str);
    fn assert_refused(&mut self, why: &str, attempts: usize);
}

impl Checks for Host {
    /// The route table maps an address of `subnet` to `peer`.
    fn wait_route(&self, subnet: Ipv4Net, peer: &str) {
        let ip = Ipv4Addr::from(subnet.addr_u32() + 5);
        let want: Ipv4Addr = peer.parse().unwrap();
        let ok = wait_for(SEC * 10, || (self.lookup(ip) == Some(want)).then_some(()));
        assert!(
            ok.is_some(),
            "{}: no route {subnet} → {peer}; log:\n{}",
            self.public_ip,
            self.daemon.log()
        );
    }

    /// Asserts flanneld is still running, has retried at least `attempts` times with a log line
    /// containing `why`, and never wrote subnet.env.
    fn assert_refused(&mut self, why: &str, attempts: usize) {
        let ok = wait_for(SEC * 15, || {
            let log = self.daemon.log();
            (log.matches("etcd unreachable").count() >= attempts && log.contains(why)).then_some(())
        });
        let log = self.daemon.log();
        assert!(
            ok.is_some(),
            "{}: expected {attempts} retries mentioning {why:?}; log:\n{log}",
            self.public_ip
        );
        assert!(
            self.daemon.is_running(),
            "{}: flanneld must keep retrying, not exit; log:\n{log}",
            self.public_ip
        );
        assert!(
            !self.subnet_file().exists(),
            "{}: subnet.env written without access to etcd",
            self.public_ip
        );
        assert!(
            !log.contains("subnet lease acquired"),
            "{}: {log}",
            self.public_ip
        );
    }
}

fn tls_flags(files: &TlsFiles, with_identity: bool) -> Vec<String> {
    let mut v = vec![format!("-etcd-cafile={}", files.ca.display())];
    if with_identity {
        v.push(format!("-etcd-certfile={}", files.client_cert.display()));
        v.push(format!("-etcd-keyfile={}", files.client_key.display()));
    }
    v
}

fn flannelctl(endpoint: &str, flags: &[String], args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flannelctl"))
        .arg(format!("--etcd-endpoints={endpoint}"))
        .args(flags)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn tls_with_client_certificates_and_what_happens_without_them() {
    if !prerequisites(true) {
        return;
    }
    let pki = tempfile::Builder::new()
        .prefix("flannel-pki-")
        .tempdir()
        .unwrap();
    let good = certs::generate(pki.path(), Ipv4Addr::LOCALHOST).unwrap();
    // A second, unrelated CA: its client certificate and its CA file are both wrong for etcd.
    let other_dir = pki.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = certs::generate(&other_dir, Ipv4Addr::LOCALHOST).unwrap();

    let mut etcd = Etcd::new().unwrap();
    etcd.use_tls(&good);
    etcd.launch().expect("etcd with TLS and --client-cert-auth");
    let endpoint = etcd.endpoint();
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    etcd.put_config(PREFIX, r#"{"Network":"10.7.0.0/16"}"#)
        .unwrap();

    // The right CA, certificate and key: a lease over TLS, subnet.env, the route table.
    let a = Host::start(&endpoint, "198.18.0.1", &tls_flags(&good, true));
    let b = Host::start(&endpoint, "198.18.0.2", &tls_flags(&good, true));
    // Without a client certificate etcd refuses the handshake.
    let mut no_cert = Host::start(&endpoint, "198.18.0.3", &tls_flags(&good, false));
    // A client certificate signed by a CA etcd does not trust.
    let mut foreign_cert = Host::start(
        &endpoint,
        "198.18.0.4",
        &[
            format!("-etcd-cafile={}", good.ca.display()),
            format!("-etcd-certfile={}", other.client_cert.display()),
            format!("-etcd-keyfile={}", other.client_key.display()),
        ],
    );
    // A CA file that did not sign etcd's certificate: flanneld must not trust the server.
    let mut wrong_ca = Host::start(&endpoint, "198.18.0.5", &tls_flags(&other, true));

    let (sa, sb) = (a.wait_subnet(SEC * 20), b.wait_subnet(SEC * 20));
    assert_ne!(sa, sb);
    assert_eq!(
        etcd.get(&format!("{PREFIX}/subnets/{}", sa.to_key()))
            .unwrap()
            .as_deref(),
        Some(r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#)
    );
    a.wait_route(sb, "198.18.0.2");
    b.wait_route(sa, "198.18.0.1");

    no_cert.assert_refused("pass -etcd-certfile and -etcd-keyfile", 2);
    // Either etcd's alert arrives ("etcd rejected our TLS client certificate") or, with TLS 1.3,
    // only the closed connection does; both hints end the same way.
    foreign_cert.assert_refused(
        "check -etcd-certfile/-etcd-keyfile and that etcd's --trusted-ca-file signed it",
        2,
    );
    wrong_ca.assert_refused("is not trusted: check -etcd-cafile", 2);
    // Only the two good hosts hold leases.
    assert_eq!(
        etcd.get_prefix(&format!("{PREFIX}/subnets/"))
            .unwrap()
            .len(),
        2
    );

    // flannelctl takes the same flags.
    let out = flannelctl(&endpoint, &tls_flags(&good, true), &["leases", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("198.18.0.1") && text.contains("198.18.0.2"),
        "flannelctl over TLS: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn username_and_password() {
    if !prerequisites(false) {
        return;
    }
    let mut etcd = Etcd::start().unwrap();
    etcd.put_config(PREFIX, r#"{"Network":"10.8.0.0/16"}"#)
        .unwrap();
    // etcd 3.4: root with the root role must exist before auth can be enabled.
    etcd.enable_auth("s3cret-root").unwrap();
    // A flannel user allowed only under the prefix, as an operator would set it up.
    etcd.ctl(&["user", "add", "flannel:fl4nnel-pw"]).unwrap();
    etcd.ctl(&["role", "add", "flannel"]).unwrap();
    etcd.ctl(&[
        "role",
        "grant-permission",
        "flannel",
        "--prefix=true",
        "readwrite",
        &format!("{PREFIX}/"),
    ])
    .unwrap();
    etcd.ctl(&["user", "grant-role", "flannel", "flannel"])
        .unwrap();
    // Without credentials etcd refuses even a read.
    etcd.set_ctl_user(None);
    assert!(etcd.get(&format!("{PREFIX}/config")).is_err());
    etcd.set_ctl_user(Some("root:s3cret-root"));

    let endpoint = etcd.endpoint();
    let creds = |user: &str, pw: &str| {
        vec![
            format!("-etcd-username={user}"),
            format!("-etcd-password={pw}"),
        ]
    };
    let a = Host::start(&endpoint, "198.18.0.1", &creds("flannel", "fl4nnel-pw"));
    let b = Host::start(&endpoint, "198.18.0.2", &creds("root", "s3cret-root"));
    let mut wrong = Host::start(
        &endpoint,
        "198.18.0.3",
        &creds("flannel", "not-the-password"),
    );

    let (sa, sb) = (a.wait_subnet(SEC * 20), b.wait_subnet(SEC * 20));
    assert_ne!(sa, sb);
    a.wait_route(sb, "198.18.0.2");
    b.wait_route(sa, "198.18.0.1");
    let key = format!("{PREFIX}/subnets/{}", sa.to_key());
    assert!(etcd.lease_of(&key).unwrap() != 0);

    wrong.assert_refused("authentication failed", 2);
    let log = wrong.daemon.log();
    assert!(
        log.contains("check -etcd-username and -etcd-password"),
        "{log}"
    );
    // The password never appears in the logs.
    for h in [&a, &b, &wrong] {
        let log = h.daemon.log();
        for pw in ["fl4nnel-pw", "s3cret-root", "not-the-password"] {
            assert!(!log.contains(pw), "password {pw} logged:\n{log}");
        }
    }

    // flannelctl takes the same flags.
    let flags = creds("flannel", "fl4nnel-pw");
    let out = flannelctl(&endpoint, &flags, &["config", "--json"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("10.8.0.0/16"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    password_file_works(&etcd, sa);
}

/// Issue 27: `-etcd-password-file` (first line, newline dropped) gives a lease, and
/// `FLANNELD_ETCD_PASSWORD_FILE` works for flannelctl; the password is never logged.
fn password_file_works(etcd: &Etcd, taken: Ipv4Net) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd-password");
    std::fs::write(&file, "fl4nnel-pw\n").unwrap();
    let c = Host::start(
        &etcd.endpoint(),
        "198.18.0.4",
        &[
            "-etcd-username=flannel".into(),
            format!("-etcd-password-file={}", file.display()),
        ],
    );
    let sc = c.wait_subnet(SEC * 20);
    assert_ne!(sc, taken);
    let key = format!("{PREFIX}/subnets/{}", sc.to_key());
    assert_eq!(
        etcd.get(&key).unwrap().as_deref(),
        Some(r#"{"PublicIP":"198.18.0.4","PublicIPv6":null}"#)
    );
    assert!(!c.daemon.log().contains("fl4nnel-pw"), "{}", c.daemon.log());
    let out = Command::new(env!("CARGO_BIN_EXE_flannelctl"))
        .arg(format!("--etcd-endpoints={}", etcd.endpoint()))
        .args(["-etcd-username=flannel", "leases", "--json"])
        .env("FLANNELD_ETCD_PASSWORD_FILE", &file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("198.18.0.4"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 27: a password over http:// to another host is refused before anything is sent:
/// flanneld exits 1 with one line naming the endpoint and the way out; with
/// -etcd-allow-insecure-password it goes on (and keeps retrying the unreachable endpoint).
#[test]
fn password_over_http_to_another_host_is_refused_unless_allowed() {
    let remote = "http://198.18.0.10:2379";
    let creds = [
        "-etcd-username=flannel".to_string(),
        "-etcd-password=pw-9f8e".into(),
    ];
    let mut refused = Host::start(remote, "198.18.0.1", &creds);
    let status = refused
        .daemon
        .wait_timeout(SEC * 10)
        .unwrap_or_else(|| panic!("still running; log:\n{}", refused.daemon.log()));
    let log = refused.daemon.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("-etcd-endpoints http://198.18.0.10:2379: a password would cross the network in clear text over http://")
            && log.contains("-etcd-allow-insecure-password"),
        "{log}"
    );
    assert!(!log.contains("pw-9f8e"), "{log}");
    let mut flags = creds.to_vec();
    flags.push("-etcd-allow-insecure-password".into());
    let mut allowed = Host::start(remote, "198.18.0.2", &flags);
    allowed.daemon.wait_log("etcd unreachable", SEC * 15);
    assert!(allowed.daemon.is_running());
    assert!(
        allowed.daemon.log().contains("clear text"),
        "{}",
        allowed.daemon.log()
    );
}
