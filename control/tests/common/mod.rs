//! What several control-plane test files share: one `flanneld` on loopback (`-iface
//! 127.0.0.1`, its own subnet file and route table in a temp dir, no firewall changes), no root
//! needed.

#![allow(dead_code)] // each test file uses its own subset

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use flannel_perf::testbed::process::Daemon;
use flannel_perf::testbed::wait_for;
use flannel_shared::route_table::RouteTableReader;
use flannel_shared::Ipv4Net;

/// One flanneld with its own files.
pub struct LoopbackFlanneld {
    pub dir: tempfile::TempDir,
    pub public_ip: String,
    pub daemon: Daemon,
}

impl LoopbackFlanneld {
    /// Starts flanneld against `endpoints` (comma-separated) as host `public_ip`, with `extra`
    /// flags.
    pub fn start(endpoints: &str, public_ip: &str, extra: &[String]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("flanneld-test-")
            .tempdir()
            .unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_flanneld"));
        c.arg(format!("-etcd-endpoints={endpoints}"))
            .arg("-iface=127.0.0.1")
            // The root namespace's firewall is not ours to touch.
            .arg("-iptables-forward-rules=false")
            .arg("-dataplane-guard=false")
            .arg(format!("-public-ip={public_ip}"))
            .arg(format!(
                "-subnet-file={}",
                dir.path().join("subnet.env").display()
            ))
            .arg(format!(
                "--route-table={}",
                dir.path().join("routes").display()
            ))
            .args(extra)
            .env("RUST_LOG", "info");
        let daemon = Daemon::spawn("flanneld", c, &dir.path().join("flanneld.log")).unwrap();
        Self {
            dir,
            public_ip: public_ip.into(),
            daemon,
        }
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    pub fn routes(&self) -> PathBuf {
        self.dir.path().join("routes")
    }

    /// The peer the route table holds for `ip`, if the table is there.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<Ipv4Addr> {
        RouteTableReader::open(&self.routes())
            .ok()?
            .snapshot()
            .ok()?
            .lookup(ip)
    }

    /// The subnet flanneld wrote to subnet.env, waiting up to `timeout`.
    pub fn wait_subnet(&self, timeout: Duration) -> Ipv4Net {
        wait_for(timeout, || {
            flannel_shared::subnet_env::previous_subnet(&self.subnet_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: no subnet.env in {timeout:?}; log:\n{}",
                self.public_ip,
                self.daemon.log()
            )
        })
    }
}
