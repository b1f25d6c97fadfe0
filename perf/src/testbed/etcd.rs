//! A real etcd server (Debian's `etcd-server`, v3 API) for tests: loopback ports, a temp data dir,
//! stopped by PID on drop. It can be stopped and restarted on the same ports and data, and driven
//! with `etcdctl`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{free_port, wait_for};

/// One etcd member listening on 127.0.0.1 (or a testbed address inside a namespace).
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    side_port: u16,
    peer_port: u16,
    /// Listen address: 127.0.0.1, or a testbed address inside `netns`.
    host: std::net::Ipv4Addr,
    netns: Option<String>,
}

impl Etcd {
    /// True when the `etcd` and `etcdctl` programs are installed.
    pub fn available() -> bool {
        super::have("etcd") && super::have("etcdctl")
    }

    /// Starts a fresh single-member cluster and waits until it serves.
    pub fn start() -> Result<Self> {
        let mut e = Self::new()?;
        e.launch()?;
        Ok(e)
    }

    /// Prepares a member (ports and data dir) without starting it; see [`Etcd::launch`].
    pub fn new() -> Result<Self> {
        Ok(Self {
            child: None,
            dir: tempfile::Builder::new().prefix("flannel-etcd-").tempdir()?,
            client_port: free_port(),
            side_port: free_port(),
            peer_port: free_port(),
            host: std::net::Ipv4Addr::LOCALHOST,
            netns: None,
        })
    }

    /// Starts a fresh member inside network namespace `netns`, listening on `host` (an address
    /// that namespace owns, e.g. the testbed switch), ports 2379/2380 (the namespace is ours alone).
    pub fn start_in(netns: &str, host: std::net::Ipv4Addr) -> Result<Self> {
        let mut e = Self::new()?;
        e.client_port = 2379;
        e.side_port = 2381;
        e.peer_port = 2380;
        e.host = host;
        e.netns = Some(netns.to_owned());
        e.launch()?;
        Ok(e)
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// `http://HOST:PORT`, for `-etcd-endpoints`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.client_port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Starts (or restarts) the server on the same ports and data dir and waits until it serves.
    pub fn launch(&mut self) -> Result<()> {
        self.launch_listening(self.client_port)
    }

    /// Starts the server listening only on a side port that daemons do not know: to them etcd is
    /// down, while the test changes data through [`Etcd::side_ctl`].
    pub fn launch_hidden(&mut self) -> Result<()> {
        self.launch_listening(self.side_port)
    }

    /// etcdctl through the side port (see [`Etcd::launch_hidden`]).
    pub fn side_ctl(&self, args: &[&str]) -> Result<String> {
        self.ctl_at(&format!("http://{}:{}", self.host, self.side_port), args)
    }

    fn launch_listening(&mut self, port: u16) -> Result<()> {
        let url = format!("http://{}:{port}", self.host);
        if self.child.is_some() {
            bail!("etcd already running");
        }
        let peer = format!("http://{}:{}", self.host, self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = self
            .command("etcd")
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (apt-get install etcd-server)")?;
        self.child = Some(child);
        let ready = wait_for(Duration::from_secs(20), || {
            self.ctl_at(&url, &["endpoint", "health"]).ok().map(|_| ())
        });
        if ready.is_none() {
            bail!(
                "etcd did not become healthy in 20 s; log: {}",
                self.log_path().display()
            );
        }
        Ok(())
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s); data is kept for [`Etcd::launch`].
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            super::process::terminate(child, Duration::from_secs(5));
        }
    }

    /// Runs `etcdctl --endpoints=<this> ARGS` and returns stdout; non-zero exit is an error.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        self.ctl_at(&self.endpoint(), args)
    }

    fn ctl_at(&self, endpoint: &str, args: &[&str]) -> Result<String> {
        ctl_with(self.command("etcdctl"), endpoint, args)
    }

    /// Puts the network config.
    pub fn put_config(&self, prefix: &str, json: &str) -> Result<()> {
        self.ctl(&["put", &format!("{prefix}/config"), json])
            .map(|_| ())
    }

    /// Value of `key`, or None.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let out = self.ctl(&["get", "--print-value-only", key])?;
        Ok((!out.is_empty()).then(|| out.trim_end_matches('\n').to_string()))
    }

    /// All (key, value) pairs under `prefix`.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let out = self.ctl(&["get", "--prefix", prefix])?;
        let lines: Vec<&str> = out.lines().collect();
        Ok(lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect())
    }

    /// The etcd lease id (decimal) a key is attached to, 0 for none.
    pub fn lease_of(&self, key: &str) -> Result<i64> {
        let out = self.ctl(&["get", key, "-w", "json"])?;
        let v: serde_like::Json = serde_like::parse_lease(&out);
        Ok(v.0)
    }

    /// Remaining TTL of a lease in seconds (`etcdctl lease timetolive`), None when expired/absent.
    pub fn lease_ttl(&self, lease_id: i64) -> Result<Option<i64>> {
        let out = self.ctl(&["lease", "timetolive", &format!("{lease_id:x}")])?;
        // "lease 694d... granted with TTL(10s), remaining(7s)" or "lease ... already expired"
        Ok(out
            .split("remaining(")
            .nth(1)
            .and_then(|r| r.split('s').next())
            .and_then(|n| n.parse().ok()))
    }

    /// Current store revision.
    pub fn revision(&self) -> Result<i64> {
        let out = self.ctl(&["get", "/", "-w", "json"])?;
        Ok(serde_like::field_i64(&out, "\"revision\":").unwrap_or(0))
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Runs etcdctl (on the host) against any endpoint.
pub fn ctl_at(endpoint: &str, args: &[&str]) -> Result<String> {
    ctl_with(Command::new("etcdctl"), endpoint, args)
}

fn ctl_with(mut cmd: Command, endpoint: &str, args: &[&str]) -> Result<String> {
    let out = cmd
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=5s")
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .output()
        .context("running etcdctl (apt-get install etcd-client)")?;
    if !out.status.success() {
        bail!(
            "etcdctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Tiny field extraction from etcdctl's JSON output (no JSON dependency in the harness).
mod serde_like {
    pub struct Json(pub i64);

    pub fn field_i64(text: &str, field: &str) -> Option<i64> {
        let rest = text.split(field).nth(1)?;
        let num: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        num.parse().ok()
    }

    pub fn parse_lease(text: &str) -> Json {
        Json(field_i64(text, "\"lease\":").unwrap_or(0))
    }
}
