//! Simulated hosts in network namespaces, built and torn down by the test itself.
//!
//! Shape (names unique per run, `<id>` = pid + counter):
//!
//! ```text
//!   netns fl<id>sw : bridge br0 198.18.0.254/24  + etcd on 198.18.0.254
//!        │ veth (one per host)
//!   netns fl<id>h1 : eth0 198.18.0.1/24, flanneld, flannel-dataplane, flannel0,
//!        │            bridge cbr0 = FLANNEL_SUBNET (like docker0), ip_forward on
//!        │ veth
//!   netns fl<id>c1 : eth0 = FLANNEL_SUBNET + 1 (a "container"), default route via cbr0
//! ```
//!
//! Underlay addresses are in 198.18.0.0/15, overlay addresses exist only inside the host and
//! container namespaces, and no namespace has a route off this machine (the switch namespace
//! has no uplink; hosts have no default route). The root namespace sends nothing to the overlay.
//! Dropping a [`Netns`] deletes it, which also removes every interface inside it.

use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nix::sched::CloneFlags;

use crate::harness::ping::PingResult;

/// Runs a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    super::process::output_ok(cmd, &format!("running {shown}"), &shown)
}

/// `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// A per-run unique short id (fits interface and namespace name limits).
pub fn unique_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace we created; deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// A command that runs inside this namespace (`ip netns exec NAME PROGRAM`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs a program inside and returns its output, failing on non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        run(self.command(program).args(args))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// A veth pair: `name` here, `peer_name` in `peer`, both with `mtu` (`None`: the kernel's
    /// default, 1500). Both ends are down and unaddressed.
    pub fn add_veth(
        &self,
        name: &str,
        peer: &Netns,
        peer_name: &str,
        mtu: Option<u32>,
    ) -> Result<()> {
        let mtu = mtu.map(|m| m.to_string());
        let mtu_args: Vec<&str> = mtu.iter().flat_map(|m| ["mtu", m.as_str()]).collect();
        let mut args = vec!["link", "add", name];
        args.extend(&mtu_args);
        args.extend(["type", "veth", "peer", "name", peer_name]);
        args.extend(&mtu_args);
        args.extend(["netns", peer.name()]);
        self.ip(&args).map(|_| ())
    }

    /// Starts `f` on a new thread that has entered this namespace (`setns` moves only the
    /// calling thread; sockets it creates stay in this namespace for good). Join the handle for
    /// `f`'s result (see [`super::join`]).
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
    }

    /// Runs `f` on a thread that has entered this namespace (see [`Netns::spawn_thread`]) and
    /// returns its result; a panic in `f` is passed on as it was.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        super::join(self.spawn_thread(f))
    }

    /// `ping -n -c COUNT -W 2 -i 0.2 DST` from this namespace: ping's summary and its stdout.
    /// Lost replies are in the summary; an error only when ping printed none (it could not run).
    pub fn ping(&self, dst: Ipv4Addr, count: u32) -> Result<(PingResult, String)> {
        let out = self
            .command("ping")
            .args(["-n", "-c", &count.to_string(), "-W", "2", "-i", "0.2"])
            .arg(dst.to_string())
            .stdin(Stdio::null())
            .output()
            .context("running ping")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let summary = crate::harness::ping::parse(&text).with_context(|| {
            format!(
                "ping -c {count} {dst} in {} ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((summary, text))
    }

    /// Waits (at most `timeout`) until one `ping -c 1 -W 1` from this namespace to `dst` is
    /// answered, retrying: for convergence (a route still being learned, a data plane coming
    /// up), never as proof that forwarding works from the first packet. The error has the last
    /// try's output.
    pub fn wait_reachable(&self, dst: Ipv4Addr, timeout: Duration) -> Result<()> {
        let mut last = String::new();
        let reached = super::wait_for(timeout, || {
            let out = self
                .command("ping")
                .args(["-n", "-c", "1", "-W", "1"])
                .arg(dst.to_string())
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => Some(()),
                Ok(o) => {
                    last = format!(
                        "{}: {}{}",
                        o.status,
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    None
                }
                Err(e) => {
                    last = format!("running ping: {e}");
                    None
                }
            }
        });
        reached.ok_or_else(|| {
            anyhow!(
                "{dst} not reachable from {} in {timeout:?}; last try: {last}",
                self.name
            )
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// The underlay: a switch namespace with a bridge at 198.18.0.254/24.
pub struct Underlay {
    pub id: String,
    pub switch: Netns,
    hosts: u8,
}

/// The switch's own address (etcd listens here).
pub const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

impl Underlay {
    pub fn create() -> Result<Self> {
        let id = unique_id();
        let switch = Netns::create(&format!("fl{id}sw"))?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["addr", "add", "198.18.0.254/24", "dev", "br0"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        Ok(Self {
            id,
            switch,
            hosts: 0,
        })
    }

    /// A new host namespace plugged into the switch: eth0 = 198.18.0.N/24 (N = 1, 2, ...).
    /// `mtu` sets the underlay link MTU (1500 like a typical NIC).
    pub fn add_host(&mut self, mtu: u32) -> Result<(Netns, Ipv4Addr)> {
        self.hosts += 1;
        let n = self.hosts;
        let ns = Netns::create(&format!("fl{}h{n}", self.id))?;
        let port = format!("h{n}");
        self.switch.add_veth(&port, &ns, "eth0", Some(mtu))?;
        self.switch
            .ip(&["link", "set", &port, "master", "br0", "up"])?;
        let addr = Ipv4Addr::new(198, 18, 0, n);
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        Ok((ns, addr))
    }
}

/// How a container is plugged into its host: a bridge (`bridge`, like docker0) in the host, and a
/// veth pair from it (`host_end`) to the container (`container_end`); `mtu` on the bridge and
/// both veth ends (`None`: the kernel's default, 1500).
#[derive(Debug, Clone, Copy)]
pub struct ContainerLink<'a> {
    pub bridge: &'a str,
    pub host_end: &'a str,
    pub container_end: &'a str,
    pub mtu: Option<u32>,
}

/// A "container" namespace behind a docker0-like bridge in `host`, addressed from subnet.env:
/// the bridge gets `gateway/len` (FLANNEL_SUBNET), the container `gateway + 1`, both with `mtu`
/// (FLANNEL_MTU); bridge `cbr0`, veth `c0` ↔ the container's `eth0`. Returns the container
/// namespace and its address.
pub fn add_container(
    host: &Netns,
    name: &str,
    gateway: Ipv4Addr,
    prefix: u8,
    mtu: u32,
) -> Result<(Netns, Ipv4Addr)> {
    let link = ContainerLink {
        bridge: "cbr0",
        host_end: "c0",
        container_end: "eth0",
        mtu: Some(mtu),
    };
    add_container_with(host, name, &link, gateway, prefix)
}

/// A container namespace `name` plugged into `host` as `link` says: the bridge gets
/// `gateway/prefix`, the container `gateway + 1/prefix` and a default route via `gateway`;
/// IPv4 forwarding on in `host`. Returns the container namespace and its address.
pub fn add_container_with(
    host: &Netns,
    name: &str,
    link: &ContainerLink<'_>,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Result<(Netns, Ipv4Addr)> {
    let c = Netns::create(name)?;
    let mtu = link.mtu.map(|m| m.to_string());
    let mut add_bridge = vec!["link", "add", link.bridge];
    add_bridge.extend(mtu.iter().flat_map(|m| ["mtu", m.as_str()]));
    add_bridge.extend(["type", "bridge"]);
    host.ip(&add_bridge)?;
    host.ip(&[
        "addr",
        "add",
        &format!("{gateway}/{prefix}"),
        "dev",
        link.bridge,
    ])?;
    host.ip(&["link", "set", link.bridge, "up"])?;
    host.add_veth(link.host_end, &c, link.container_end, link.mtu)?;
    host.ip(&["link", "set", link.host_end, "master", link.bridge, "up"])?;
    let addr = Ipv4Addr::from(u32::from(gateway) + 1);
    c.ip(&[
        "addr",
        "add",
        &format!("{addr}/{prefix}"),
        "dev",
        link.container_end,
    ])?;
    c.ip(&["link", "set", link.container_end, "up"])?;
    c.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
    host.sysctl("net.ipv4.ip_forward", "1")?;
    Ok((c, addr))
}
