//! A whole simulated cluster: an underlay switch with etcd on it, and hosts that each run the real
//! `flanneld` and `flannel-dataplane` binaries with a docker0-like bridge and one container.
//! Used by the end-to-end tests, the perf harness and `scripts/demo`. Everything is torn down on
//! drop: daemons first (by PID), then namespaces.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::etcd::Etcd;
use super::netns::{add_container, Netns, Underlay, SWITCH_IP};
use super::process::Daemon;
use super::wait_for;

/// How to build the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// JSON stored at `/coreos.com/network/config`.
    pub network_config: String,
    /// Extra `flannel-dataplane` arguments (e.g. `--no-io-uring`, `--workers=2`).
    pub dataplane_args: Vec<String>,
    /// Extra `flanneld` arguments.
    pub flanneld_args: Vec<String>,
    /// Underlay link MTU.
    pub underlay_mtu: u32,
    /// Where `flanneld` and `flannel-dataplane` are.
    pub bin_dir: PathBuf,
    /// A program (and its arguments) `flanneld` is started under inside its namespace, e.g.
    /// `setpriv --bounding-set …`; empty: started directly.
    pub flanneld_wrapper: Vec<String>,
    /// The same for `flannel-dataplane`.
    pub dataplane_wrapper: Vec<String>,
    /// `Some((flanneld_uid, dataplane_uid))`: the daemons run as these users (the wrappers
    /// switch to them), laid out as the systemd units are: each host's directory (subnet.env,
    /// route table) owned by flanneld's uid, its `dataplane/` (stats) by the data plane's, the
    /// cluster directory traversable by both.
    pub run_as: Option<(u32, u32)>,
    /// The data plane never runs the express lane, even when the suite is run with
    /// `FLANNEL_DATAPLANE_EXPRESS=true` in the environment (`scripts/test` runs the e2e suite
    /// once without the lane and once with it): for tests of the io_uring workers themselves.
    pub workers_only: bool,
}

impl ClusterOpts {
    pub fn new(bin_dir: &Path) -> Self {
        Self {
            network_config: r#"{"Network":"10.1.0.0/16"}"#.into(),
            dataplane_args: Vec::new(),
            flanneld_args: Vec::new(),
            underlay_mtu: 1500,
            bin_dir: bin_dir.to_owned(),
            flanneld_wrapper: Vec::new(),
            dataplane_wrapper: Vec::new(),
            run_as: None,
            workers_only: false,
        }
    }

    /// Options for a multi-host test, with the binaries next to the test executable; `None`
    /// (after a SKIPPED message, or a panic under CI: [`super::skip_or_fail`]) when not root or
    /// when etcd, ip or ping is missing.
    pub fn for_test() -> Option<Self> {
        if !super::require("root (network namespaces, TUN)", super::is_root())
            || !super::require(
                "etcd, ip, ping installed",
                super::etcd::Etcd::available() && super::have("ip") && super::have("ping"),
            )
        {
            return None;
        }
        Some(Self::new(
            super::bins("flanneld").parent().expect("bin dir"),
        ))
    }
}

/// One simulated host. Field order is drop order: daemons, container, host namespace.
pub struct SimHost {
    pub dataplane: Option<Daemon>,
    pub flanneld: Option<Daemon>,
    pub container: Option<Netns>,
    pub ns: Netns,
    pub index: usize,
    pub underlay_ip: Ipv4Addr,
    pub dir: PathBuf,
    /// From subnet.env once flanneld wrote it.
    pub subnet: Option<(Ipv4Addr, u8)>,
    pub mtu: u32,
}

impl SimHost {
    pub fn subnet_file(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }
    pub fn route_table(&self) -> PathBuf {
        self.dir.join("routes")
    }
    /// In a directory of its own, as `/run/flannel-dataplane/` under systemd: the data plane
    /// may run as another user than flanneld.
    pub fn stats_file(&self) -> PathBuf {
        self.dir.join("dataplane/dataplane.stats")
    }
    /// The container's overlay address (FLANNEL_SUBNET + 1).
    pub fn container_ip(&self) -> Ipv4Addr {
        let (gw, _) = self.subnet.expect("subnet known");
        Ipv4Addr::from(u32::from(gw) + 1)
    }
    pub fn container(&self) -> &Netns {
        self.container.as_ref().expect("container created")
    }
    /// Logs of both daemons (whole files: earlier runs of a restarted daemon included), for
    /// failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (name, d) in [
            ("flanneld", &self.flanneld),
            ("flannel-dataplane", &self.dataplane),
        ] {
            if let Some(d) = d {
                s.push_str(&format!(
                    "--- host {} {name} ({}):\n{}\n",
                    self.index,
                    d.log_path().display(),
                    d.whole_log()
                ));
            }
        }
        s
    }
}

/// The cluster. Field order is drop order.
pub struct Cluster {
    pub hosts: Vec<SimHost>,
    pub etcd: Etcd,
    pub underlay: Underlay,
    pub opts: ClusterOpts,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Builds the underlay, starts etcd on the switch and publishes the network config.
    pub fn new(opts: ClusterOpts) -> Result<Self> {
        let underlay = Underlay::create()?;
        let etcd = Etcd::start_in(underlay.switch.name(), SWITCH_IP)?;
        etcd.put_config("/coreos.com/network", &opts.network_config)?;
        Ok(Self {
            hosts: Vec::new(),
            etcd,
            underlay,
            opts,
            dir: tempfile::Builder::new()
                .prefix("flannel-cluster-")
                .tempdir()?,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keep the cluster's directory (logs, subnet.env, tables) after drop, e.g. to read logs after
    /// a failure.
    pub fn keep_dir(&mut self) {
        self.dir.disable_cleanup(true);
    }

    /// Adds a host and brings it fully up: flanneld (waits for subnet.env), flannel-dataplane
    /// (waits for flannel0), the bridge and the container.
    pub fn add_host(&mut self) -> Result<usize> {
        let i = self.add_control_host()?;
        self.start_dataplane(i)?;
        let h = &mut self.hosts[i];
        let (gw, prefix) = h.subnet.expect("subnet.env read");
        let name = format!("{}-c", h.ns.name());
        let (c, _) = add_container(&h.ns, &name, gw, prefix, h.mtu)?;
        h.container = Some(c);
        Ok(i)
    }

    /// Adds a host running only flanneld; returns once it wrote subnet.env.
    pub fn add_control_host(&mut self) -> Result<usize> {
        let (ns, underlay_ip) = self.underlay.add_host(self.opts.underlay_mtu)?;
        let index = self.hosts.len() + 1;
        let dir = self.dir.path().join(format!("host{index}"));
        std::fs::create_dir_all(dir.join("dataplane"))?;
        if let Some((fl_uid, dp_uid)) = self.opts.run_as {
            use std::os::unix::fs::PermissionsExt;
            let perm = std::fs::Permissions::from_mode(0o711);
            std::fs::set_permissions(self.dir.path(), perm)?;
            std::os::unix::fs::chown(&dir, Some(fl_uid), Some(fl_uid))?;
            std::os::unix::fs::chown(dir.join("dataplane"), Some(dp_uid), Some(dp_uid))?;
        }
        self.hosts.push(SimHost {
            dataplane: None,
            flanneld: None,
            container: None,
            ns,
            index,
            underlay_ip,
            dir,
            subnet: None,
            mtu: 0,
        });
        let i = self.hosts.len() - 1;
        self.start_flanneld(i)?;
        self.wait_subnet_env(i)?;
        Ok(i)
    }

    /// Starts flanneld on host `i` (in its namespace, `-iface eth0`, every path under its dir).
    pub fn start_flanneld(&mut self, i: usize) -> Result<()> {
        let endpoint = self.etcd.endpoint();
        let bin = self.opts.bin_dir.join("flanneld");
        let extra = self.opts.flanneld_args.clone();
        let h = &mut self.hosts[i];
        let mut cmd = wrapped(&h.ns, &self.opts.flanneld_wrapper, &bin);
        cmd.arg(format!("-etcd-endpoints={endpoint}"))
            .arg("-iface=eth0")
            .arg(format!("-subnet-file={}", h.subnet_file().display()))
            .arg(format!("--route-table={}", h.route_table().display()))
            .arg(format!("--dataplane-stats={}", h.stats_file().display()))
            .args(extra)
            .env("RUST_LOG", "info");
        h.flanneld = Some(Daemon::spawn("flanneld", cmd, &h.dir.join("flanneld.log"))?);
        Ok(())
    }

    fn wait_subnet_env(&mut self, i: usize) -> Result<()> {
        let h = &mut self.hosts[i];
        let text = wait_for(Duration::from_secs(30), || {
            std::fs::read_to_string(h.subnet_file()).ok()
        })
        .ok_or_else(|| anyhow!("host {} wrote no subnet.env in 30 s\n{}", h.index, h.logs()))?;
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("{k} missing in subnet.env: {text}"))
        };
        let subnet = field("FLANNEL_SUBNET=")?;
        let (gw, prefix) = subnet.split_once('/').context("FLANNEL_SUBNET")?;
        h.subnet = Some((gw.parse()?, prefix.parse()?));
        h.mtu = field("FLANNEL_MTU=")?.parse()?;
        Ok(())
    }

    /// Starts flannel-dataplane on host `i` and waits until this process says it is forwarding
    /// and flannel0 carries its address. (After a restart, flannel0 with that address may still
    /// be the previous process's device going away, and the previous run's log lines are in
    /// the same file: only this run's "forwarding" line counts.)
    pub fn start_dataplane(&mut self, i: usize) -> Result<()> {
        self.start_dataplane_with(i, |_| {})
    }

    /// [`Cluster::start_dataplane`] with `prepare` applied to the command last (environment,
    /// fds passed as a service manager would).
    pub fn start_dataplane_with(
        &mut self,
        i: usize,
        prepare: impl FnOnce(&mut std::process::Command),
    ) -> Result<()> {
        let bin = self.opts.bin_dir.join("flannel-dataplane");
        let extra = self.opts.dataplane_args.clone();
        let h = &mut self.hosts[i];
        let mut cmd = wrapped(&h.ns, &self.opts.dataplane_wrapper, &bin);
        cmd.arg(format!("--route-table={}", h.route_table().display()))
            .arg(format!("--stats={}", h.stats_file().display()))
            .args(extra)
            .env("RUST_LOG", "info");
        if self.opts.workers_only {
            cmd.env_remove("FLANNEL_DATAPLANE_EXPRESS");
        }
        prepare(&mut cmd);
        h.dataplane = Some(Daemon::spawn(
            "flannel-dataplane",
            cmd,
            &h.dir.join("dataplane.log"),
        )?);
        let (gw, _) = h.subnet.context("subnet unknown")?;
        let tun_addr = Ipv4Addr::from(u32::from(gw) - 1).to_string();
        let dataplane = h.dataplane.as_ref().context("just started")?;
        let up = wait_for(Duration::from_secs(20), || {
            // tracing's line: `... flannel_dataplane: forwarding workers=N stats=...`.
            if !dataplane.log().contains("forwarding workers=") {
                return None;
            }
            let out = h.ns.ip(&["-o", "addr", "show", "dev", "flannel0"]).ok()?;
            String::from_utf8_lossy(&out.stdout)
                .contains(&format!("inet {tun_addr}/32"))
                .then_some(())
        });
        if up.is_none() {
            bail!(
                "host {}: flannel-dataplane not forwarding with flannel0 {tun_addr}/32 in 20 s\n{}",
                h.index,
                h.logs()
            );
        }
        Ok(())
    }

    /// Starts `program ARGS` in host `host`'s container with stdout piped, and waits until its first
    /// line says `listening` (the `flannel-loadgen` receivers do).
    pub fn spawn_listener(
        &self,
        host: usize,
        program: &Path,
        args: &[&str],
    ) -> Result<std::process::Child> {
        use std::io::BufRead;
        let mut child = self.hosts[host]
            .container()
            .command(program)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        let stdout = child.stdout.as_mut().context("piped stdout")?;
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "listening" {
            super::process::kill_and_reap(&mut child);
            bail!(
                "{} {args:?} did not start listening: {line:?}",
                program.display()
            );
        }
        Ok(child)
    }

    /// `ping -c COUNT` from host `from`'s container to host `to`'s container; Ok(stdout) only
    /// when every one of the `count` echo requests was answered (ping itself exits 0 with a
    /// single reply). For "forwarding works now" claims; to wait for a route that is still
    /// being learned, use [`Cluster::wait_reachable`] first.
    pub fn ping(&self, from: usize, to: usize, count: u32) -> Result<String> {
        let dst = self.hosts[to].container_ip();
        let what = || {
            format!(
                "ping -c {count} {dst} from host {}'s container",
                self.hosts[from].index
            )
        };
        let (summary, text) = self.hosts[from]
            .container()
            .ping(dst, count)
            .with_context(what)?;
        if summary.transmitted != u64::from(count) || summary.received != summary.transmitted {
            bail!(
                "{}: {} of {count} echo requests sent, {} answered; every one must be:\n{text}",
                what(),
                summary.transmitted,
                summary.received
            );
        }
        Ok(text)
    }

    /// Waits (at most `timeout`) until one `ping -c 1` from host `from`'s container to host
    /// `to`'s container is answered, retrying: for convergence (a lease or route still being
    /// learned, a data plane coming up), never as proof that forwarding works from the first
    /// packet. Follow it with [`Cluster::ping`] to claim that every packet gets through.
    pub fn wait_reachable(&self, from: usize, to: usize, timeout: Duration) -> Result<()> {
        self.hosts[from]
            .container()
            .wait_reachable(self.hosts[to].container_ip(), timeout)
            .with_context(|| {
                format!(
                    "host {}'s container never reached host {}'s container",
                    self.hosts[from].index, self.hosts[to].index
                )
            })
    }
}

/// `bin` in `ns`, started under `wrapper` (program and arguments) when there is one.
fn wrapped(ns: &super::netns::Netns, wrapper: &[String], bin: &Path) -> std::process::Command {
    match wrapper.split_first() {
        None => ns.command(bin),
        Some((program, args)) => {
            let mut cmd = ns.command(program);
            cmd.args(args).arg(bin);
            cmd
        }
    }
}
