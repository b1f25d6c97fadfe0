//! A real etcd server (Debian's `etcd-server`, v3 API) for tests: loopback ports, a temp data dir,
//! stopped by PID on drop. It can be stopped and restarted on the same ports and data, and driven
//! with `etcdctl`. Options: client TLS with client-certificate auth ([`Etcd::use_tls`], files from
//! [`super::certs`]), etcdctl credentials for auth-enabled servers ([`Etcd::set_ctl_user`]), and a
//! multi-member cluster on loopback ([`EtcdCluster`]).
//!
//! Loopback ports come from [`free_port`], which cannot reserve them: another process may bind
//! one before etcd does. etcd then exits with "address already in use", and a first launch
//! whose ports nobody has been told yet is retried on fresh ports ([`PORT_ATTEMPTS`] in all);
//! a restart keeps its ports (clients know them), and reports such an exit as an error.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::free_port;

/// How many sets of ports a first launch tries when etcd finds one already taken.
pub const PORT_ATTEMPTS: usize = 5;

/// etcd's message when it cannot bind a listener.
const ADDR_IN_USE: &str = "address already in use";

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
    /// `http` or `https` (after [`Etcd::use_tls`]).
    scheme: &'static str,
    /// Member name and the `--initial-cluster` list (a single member by default).
    name: String,
    initial_cluster: Option<(String, String)>,
    /// Extra server flags (e.g. TLS files).
    server_args: Vec<String>,
    /// Extra etcdctl flags (e.g. `--cacert`, `--cert`, `--key`).
    ctl_args: Vec<String>,
    /// `--user=NAME:PASSWORD` for etcdctl once auth is enabled.
    ctl_user: Option<String>,
    /// Length of the log file at the latest launch (the file is appended across restarts).
    log_start: u64,
    /// Served at least once: from then on the ports are fixed.
    launched: bool,
    /// Someone was given the client URL ([`Etcd::endpoint`]): the ports are fixed.
    ports_told: AtomicBool,
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

    /// [`Etcd::start`] for a test: `None` (after [`super::require`]'s skip message, or its panic
    /// under CI) when etcd or etcdctl is not installed; panics when etcd does not start.
    #[track_caller]
    pub fn start_or_skip() -> Option<Self> {
        if !super::require("etcd and etcdctl installed", Self::available()) {
            return None;
        }
        Some(Self::start().expect("start etcd"))
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
            scheme: "http",
            name: "test".into(),
            initial_cluster: None,
            server_args: Vec::new(),
            ctl_args: Vec::new(),
            ctl_user: None,
            log_start: 0,
            launched: false,
            ports_told: AtomicBool::new(false),
        })
    }

    /// Serves clients over TLS only (`https://`) with `tls`'s server certificate and requires a
    /// client certificate signed by its CA (`--client-cert-auth`). etcdctl uses the client
    /// certificate. Call before [`Etcd::launch`].
    pub fn use_tls(&mut self, tls: &super::certs::TlsFiles) {
        self.scheme = "https";
        self.server_args = vec![
            format!("--cert-file={}", tls.server_cert.display()),
            format!("--key-file={}", tls.server_key.display()),
            format!("--trusted-ca-file={}", tls.ca.display()),
            "--client-cert-auth".into(),
        ];
        self.ctl_args = vec![
            format!("--cacert={}", tls.ca.display()),
            format!("--cert={}", tls.client_cert.display()),
            format!("--key={}", tls.client_key.display()),
        ];
    }

    /// Extra flags for the server (appended to the ones this harness passes); call before
    /// [`Etcd::launch`].
    pub fn add_server_args(&mut self, args: &[&str]) {
        self.server_args.extend(args.iter().map(|a| a.to_string()));
    }

    /// Extra flags for every etcdctl call.
    pub fn add_ctl_args(&mut self, args: &[&str]) {
        self.ctl_args.extend(args.iter().map(|a| a.to_string()));
    }

    /// Credentials (`NAME:PASSWORD`) etcdctl passes from now on, for a server with auth enabled;
    /// `None` stops passing any.
    pub fn set_ctl_user(&mut self, user: Option<&str>) {
        self.ctl_user = user.map(str::to_owned);
    }

    /// Turns on etcd's authentication (etcd 3.4 semantics: the `root` user with the `root` role
    /// must exist first): creates `root` with `root_password`, enables auth, and makes etcdctl
    /// log in as root from now on.
    pub fn enable_auth(&mut self, root_password: &str) -> Result<()> {
        self.ctl(&["user", "add", &format!("root:{root_password}")])?;
        self.ctl(&["user", "grant-role", "root", "root"])?;
        self.ctl(&["auth", "enable"])?;
        self.set_ctl_user(Some(&format!("root:{root_password}")));
        Ok(())
    }

    /// True while the server process runs (between launch and stop).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
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

    /// `http://HOST:PORT` (`https://` after [`Etcd::use_tls`]), for `-etcd-endpoints`. From
    /// now on the ports are fixed: a launch never moves them (see [`Etcd::launch`]).
    pub fn endpoint(&self) -> String {
        self.ports_told.store(true, Ordering::Relaxed);
        self.url(false)
    }

    /// The client URL (`hidden`: the side port's), without fixing the ports.
    fn url(&self, hidden: bool) -> String {
        let port = if hidden {
            self.side_port
        } else {
            self.client_port
        };
        format!("{}://{}:{port}", self.scheme, self.host)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// What the server logged since its latest launch.
    pub fn launch_log(&self) -> String {
        super::process::log_since(&self.log_path(), self.log_start)
    }

    /// Starts (or restarts) the server on the same ports and data dir and waits until it serves.
    /// On the first launch of a loopback member nobody knows the ports of yet (no
    /// [`Etcd::endpoint`] so far), a port taken by another process in the meantime makes it
    /// retry on fresh ones, up to [`PORT_ATTEMPTS`] times.
    pub fn launch(&mut self) -> Result<()> {
        self.launch_retrying(false)
    }

    /// Starts (or restarts) the server without waiting for it to serve: a cluster member needs
    /// its peers before it can answer. Follow with [`Etcd::wait_healthy`].
    pub fn spawn(&mut self) -> Result<()> {
        self.spawn_listening(false)
    }

    /// Waits until the server answers `etcdctl endpoint health` (at most `timeout`); fails at
    /// once, with its log, when it exits instead.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let url = self.url(false);
        self.wait_serving(&url, timeout)
    }

    /// Starts the server listening only on a side port that daemons do not know: to them etcd is
    /// down, while the test changes data through [`Etcd::side_ctl`].
    pub fn launch_hidden(&mut self) -> Result<()> {
        self.launch_retrying(true)
    }

    /// etcdctl through the side port (see [`Etcd::launch_hidden`]).
    pub fn side_ctl(&self, args: &[&str]) -> Result<String> {
        self.ctl_at(&self.url(true), args)
    }

    /// [`Etcd::launch_listening`], retried on fresh ports while etcd exits because another
    /// process took one of them and nobody depends on them yet.
    fn launch_retrying(&mut self, hidden: bool) -> Result<()> {
        let mut attempt = 1;
        loop {
            let result = self.launch_listening(hidden);
            match result {
                Ok(()) => {
                    self.launched = true;
                    return Ok(());
                }
                Err(e) if attempt < PORT_ATTEMPTS && self.may_move_ports() => {
                    if !self.lost_port_race() {
                        return Err(e);
                    }
                    eprintln!(
                        "etcd {}: a port was taken since it was picked; retrying on fresh ports \
                         ({attempt}/{PORT_ATTEMPTS}): {e:#}",
                        self.name
                    );
                    self.fresh_ports()?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// True while no client can know the ports: never served, not told, on loopback and not
    /// part of a cluster list.
    fn may_move_ports(&self) -> bool {
        !self.launched
            && !self.ports_told.load(Ordering::Relaxed)
            && self.netns.is_none()
            && self.initial_cluster.is_none()
    }

    /// True when the server exited because it could not bind one of its ports.
    fn lost_port_race(&mut self) -> bool {
        let exited = match self.child.as_mut() {
            None => true,
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
        };
        exited && self.launch_log().contains(ADDR_IN_USE)
    }

    /// New ports for a member that never served, and a clean data dir.
    fn fresh_ports(&mut self) -> Result<()> {
        self.kill9();
        match std::fs::remove_dir_all(self.dir.path().join("data")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("removing etcd's data dir"),
        }
        self.client_port = free_port();
        self.side_port = free_port();
        self.peer_port = free_port();
        Ok(())
    }

    fn launch_listening(&mut self, hidden: bool) -> Result<()> {
        self.spawn_listening(hidden)?;
        let url = self.url(hidden);
        self.wait_serving(&url, Duration::from_secs(20))
    }

    /// Polls `etcdctl endpoint health` at `url` until it answers, the server exits (an error
    /// with its log since the launch), or `timeout` passes.
    fn wait_serving(&mut self, url: &str, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        loop {
            if self.ctl_at(url, &["endpoint", "health"]).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "etcd {} exited ({status}) instead of serving on {url}; log {} since the launch:\n{}",
                    self.name,
                    self.log_path().display(),
                    self.launch_log()
                );
            }
            if Instant::now() > end {
                bail!(
                    "etcd {} did not become healthy on {url} in {timeout:?}; log: {}",
                    self.name,
                    self.log_path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn_listening(&mut self, hidden: bool) -> Result<()> {
        let url = self.url(hidden);
        if self.child.is_some() {
            bail!("etcd already running");
        }
        let (initial_cluster, token) = match &self.initial_cluster {
            Some((list, token)) => (list.clone(), token.clone()),
            None => (
                format!("{}=http://{}:{}", self.name, self.host, self.peer_port),
                "etcd-cluster".to_owned(),
            ),
        };
        let peer = format!("http://{}:{}", self.host, self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        self.log_start = log.metadata()?.len();
        let child = self
            .command("etcd")
            .arg(format!("--name={}", self.name))
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg(format!("--initial-cluster-token={token}"))
            .args(&self.server_args)
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (apt-get install etcd-server)")?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s); data is kept for [`Etcd::launch`].
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            super::process::terminate(child, Duration::from_secs(5));
        }
    }

    /// Kills the server with SIGKILL (a crash, no graceful leave) and reaps it; data is kept
    /// for [`Etcd::launch`].
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::process::kill_and_reap(&mut child);
        }
    }

    /// Runs `etcdctl --endpoints=<this> ARGS` and returns stdout; non-zero exit is an error.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        self.ctl_at(&self.endpoint(), args)
    }

    fn ctl_at(&self, endpoint: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.command("etcdctl");
        cmd.args(&self.ctl_args);
        if let Some(user) = &self.ctl_user {
            cmd.arg(format!("--user={user}"));
        }
        ctl_with(cmd, endpoint, args)
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
        Ok(etcdctl_json::lease_of_first_key(&out))
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
        Ok(etcdctl_json::revision(&out))
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's Prometheus metrics (`GET /metrics` on the client port; plain HTTP only).
    pub fn metrics(&self) -> Result<String> {
        use std::io::{Read, Write};
        if self.scheme != "http" {
            bail!("etcd {}: metrics are read over plain http only", self.name);
        }
        let addr = std::net::SocketAddr::from((self.host, self.client_port));
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("etcd {} metrics at {addr}", self.name))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        match out.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
                Ok(body.to_string())
            }
            _ => bail!(
                "etcd {} metrics at {addr}: unexpected answer {:?}",
                self.name,
                out.lines().next().unwrap_or("")
            ),
        }
    }

    /// gRPC messages the server received so far, every method (`grpc_server_msg_received_total`
    /// summed): the requests it served, each message of a stream counted.
    pub fn grpc_messages_received(&self) -> Result<u64> {
        Ok(sum_metric(
            &self.metrics()?,
            "grpc_server_msg_received_total",
        ))
    }
}

/// Sum of every sample of `name` in Prometheus text (`name{labels} value` lines).
pub fn sum_metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Runs etcdctl (on the host) against any endpoint.
pub fn ctl_at(endpoint: &str, args: &[&str]) -> Result<String> {
    ctl_with(Command::new("etcdctl"), endpoint, args)
}

fn ctl_with(mut cmd: Command, endpoint: &str, args: &[&str]) -> Result<String> {
    let out = super::process::output_ok(
        cmd.arg(format!("--endpoints={endpoint}"))
            .arg("--command-timeout=5s")
            .args(args)
            .env("ETCDCTL_API", "3"),
        "running etcdctl (apt-get install etcd-client)",
        &format!("etcdctl {}", args.join(" ")),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Several etcd members on loopback forming one cluster (`--initial-cluster` lists them all).
/// Members can be stopped ([`Etcd::stop`]) and relaunched ([`Etcd::launch`]) one by one.
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Starts `n` members (names `m0`, `m1`, ...) and waits until every one serves. When a
    /// member exits because another process took one of its ports, the whole cluster is built
    /// again on fresh ports (every member's peer URL is in every member's `--initial-cluster`),
    /// up to [`PORT_ATTEMPTS`] times.
    pub fn start(n: usize) -> Result<Self> {
        let mut attempt = 1;
        loop {
            let mut members = (0..n).map(|_| Etcd::new()).collect::<Result<Vec<_>>>()?;
            match Self::form(&mut members) {
                Ok(()) => return Ok(Self { members }),
                Err(e)
                    if attempt < PORT_ATTEMPTS
                        && members.iter_mut().any(|m| m.lost_port_race()) =>
                {
                    eprintln!(
                        "etcd cluster: a port was taken since it was picked; starting over on \
                         fresh ports ({attempt}/{PORT_ATTEMPTS}): {e:#}"
                    );
                    attempt += 1;
                    // Dropping `members` stops them and removes their data dirs.
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Spawns fresh `members` as one cluster and waits until every one serves.
    fn form(members: &mut [Etcd]) -> Result<()> {
        let list = members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("m{i}=http://{}:{}", m.host, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("flannel-test-{}", super::netns::unique_id());
        for (i, m) in members.iter_mut().enumerate() {
            m.name = format!("m{i}");
            m.initial_cluster = Some((list.clone(), token.clone()));
            m.spawn()?;
        }
        for m in members.iter_mut() {
            m.wait_healthy(Duration::from_secs(30))?;
            m.launched = true;
        }
        Ok(())
    }

    /// Every member's client URL, comma separated (for `-etcd-endpoints`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Etcd::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// etcdctl through the running members only.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let live: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.is_running())
            .map(Etcd::endpoint)
            .collect();
        if live.is_empty() {
            bail!("no etcd member is running");
        }
        ctl_at(&live.join(","), args)
    }

    /// Index of the current leader (asked through a running member), if one is elected.
    pub fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| {
            m.is_running()
                && m.ctl(&["endpoint", "status", "-w", "json"])
                    .ok()
                    .and_then(|out| etcdctl_json::is_leader(&out))
                    .unwrap_or(false)
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sum_metric_adds_every_sample_of_one_name() {
        let text = "# HELP grpc_server_msg_received_total x\n\
            grpc_server_msg_received_total{grpc_method=\"Range\"} 12\n\
            grpc_server_msg_received_total{grpc_method=\"Txn\"} 3e+01\n\
            grpc_server_msg_received_totalx 5\n\
            grpc_server_msg_sent_total{grpc_method=\"Range\"} 7\n";
        assert_eq!(
            super::sum_metric(text, "grpc_server_msg_received_total"),
            42
        );
        assert_eq!(super::sum_metric(text, "nothing"), 0);
    }
}

/// Fields of etcdctl's `-w json` output (pure); output that is not JSON or lacks the field
/// reads as 0 / `None`.
mod etcdctl_json {
    use serde_json::Value;

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or(Value::Null)
    }

    /// `get KEY -w json`: the lease id the (first) key is attached to, 0 for none.
    pub fn lease_of_first_key(text: &str) -> i64 {
        parse(text)["kvs"][0]["lease"].as_i64().unwrap_or(0)
    }

    /// `get KEY -w json`: the store revision in the response header.
    pub fn revision(text: &str) -> i64 {
        parse(text)["header"]["revision"].as_i64().unwrap_or(0)
    }

    /// `endpoint status -w json` of one endpoint: whether that member is the leader.
    pub fn is_leader(text: &str) -> Option<bool> {
        let v = parse(text);
        let status = &v[0]["Status"];
        let id = status["header"]["member_id"].as_u64()?;
        let leader = status["leader"].as_u64()?;
        Some(id == leader)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn fields_of_captured_outputs() {
            let get = r#"{"header":{"cluster_id":14841639068965178418,"member_id":10276657743932975437,"revision":2,"raft_term":2},"kvs":[{"key":"L2s=","create_revision":2,"mod_revision":2,"version":1,"value":"dg==","lease":7587899388515727365}],"count":1}"#;
            assert_eq!(lease_of_first_key(get), 7587899388515727365);
            assert_eq!(revision(get), 2);
            let empty = r#"{"header":{"cluster_id":1,"member_id":2,"revision":7,"raft_term":2}}"#;
            assert_eq!(lease_of_first_key(empty), 0);
            assert_eq!(revision(empty), 7);
            let status = r#"[{"Endpoint":"127.0.0.1:23790","Status":{"header":{"cluster_id":14841639068965178418,"member_id":10276657743932975437,"revision":2,"raft_term":2},"version":"3.4.23","dbSize":20480,"leader":10276657743932975437,"raftIndex":6,"raftTerm":2,"raftAppliedIndex":6,"dbSizeInUse":16384}}]"#;
            assert_eq!(is_leader(status), Some(true));
            assert_eq!(
                is_leader(&status.replace("\"leader\":10276657743932975437", "\"leader\":1")),
                Some(false)
            );
            assert_eq!(is_leader("not json"), None);
            assert_eq!(revision("not json"), 0);
        }
    }
}
