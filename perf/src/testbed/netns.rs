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

use anyhow::{bail, Context, Result};

/// Runs a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
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
        let mtu = mtu.to_string();
        self.switch.ip(&[
            "link",
            "add",
            &port,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            &mtu,
            "netns",
            ns.name(),
        ])?;
        self.switch
            .ip(&["link", "set", &port, "master", "br0", "up"])?;
        let addr = Ipv4Addr::new(198, 18, 0, n);
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        Ok((ns, addr))
    }
}

/// A "container" namespace behind a docker0-like bridge in `host`, addressed from subnet.env:
/// the bridge gets `gateway/len` (FLANNEL_SUBNET), the container `gateway + 1`, both with `mtu`
/// (FLANNEL_MTU). Returns the container namespace and its address.
pub fn add_container(
    host: &Netns,
    name: &str,
    gateway: Ipv4Addr,
    prefix: u8,
    mtu: u32,
) -> Result<(Netns, Ipv4Addr)> {
    let c = Netns::create(name)?;
    let mtu = mtu.to_string();
    host.ip(&["link", "add", "cbr0", "mtu", &mtu, "type", "bridge"])?;
    host.ip(&["addr", "add", &format!("{gateway}/{prefix}"), "dev", "cbr0"])?;
    host.ip(&["link", "set", "cbr0", "up"])?;
    host.ip(&[
        "link",
        "add",
        "c0",
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "mtu",
        &mtu,
        "netns",
        c.name(),
    ])?;
    host.ip(&["link", "set", "c0", "master", "cbr0", "up"])?;
    let addr = Ipv4Addr::from(u32::from(gateway) + 1);
    c.ip(&["addr", "add", &format!("{addr}/{prefix}"), "dev", "eth0"])?;
    c.ip(&["link", "set", "eth0", "up"])?;
    c.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
    host.sysctl("net.ipv4.ip_forward", "1")?;
    Ok((c, addr))
}
