//! The arm64 build (issue 29, item 4): `flanneld` and `flannelctl` cross-built for
//! `aarch64-unknown-linux-gnu` (scripts/lib/cross-arm64.sh) run under qemu-user against a real
//! etcd. flanneld leases a subnet (key and JSON as flannel writes them, on an etcd lease), writes
//! subnet.env consistent with that lease, publishes its route table and follows a peer's lease;
//! flannelctl (arm64 too) reads the lease from etcd and the table from the file.
//!
//! The binaries come from `target/aarch64-unknown-linux-gnu/release/` (next to this test's own
//! target directory), or from `$FLANNEL_ARM64_BIN_DIR`. Each one must be an AArch64 ELF
//! (`e_machine` 183): a host binary put there makes the test fail, not pass. Missing binaries,
//! qemu-aarch64 or the arm64 sysroot: skipped outside CI, a failure under CI (scripts/test builds
//! them and installs the packages).
//!
//! The root-namespace flanneld touches nothing of the machine: `-iface=127.0.0.1`, a
//! `-public-ip` from 198.18.0.0/15, no forward rules, no data-plane guard, every file (subnet.env,
//! route table, data-plane stats) in a temp dir. Root is not needed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flannel_perf::testbed::etcd::Etcd;
use flannel_perf::testbed::process::Daemon;
use flannel_perf::testbed::{require, wait_for};
use flannel_shared::route_table::RouteTableReader;
use flannel_shared::Ipv4Net;

const TARGET: &str = "aarch64-unknown-linux-gnu";
/// `EM_AARCH64` in elf.h.
const EM_AARCH64: u16 = 183;
/// Where Debian's libc6-arm64-cross puts the arm64 loader and libc (qemu's `-L`).
const DEFAULT_SYSROOT: &str = "/usr/aarch64-linux-gnu";
const PREFIX: &str = "/coreos.com/network";
const NETWORK: &str = "10.29.0.0/16";
const PUBLIC_IP: &str = "198.18.29.1";
const PEER_IP: &str = "198.18.29.2";
const PEER_SUBNET: &str = "10.29.200.0/24";
/// Everything is slower under emulation.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The ELF header fields that say which machine a binary is for.
#[derive(Debug, PartialEq, Eq)]
struct ElfIdent {
    /// `e_ident[EI_CLASS]`: 1 = 32-bit, 2 = 64-bit.
    class: u8,
    /// `e_ident[EI_DATA]`: 1 = little-endian, 2 = big-endian.
    data: u8,
    /// `e_machine`, read in the file's own byte order.
    machine: u16,
}

/// Reads the ELF identification and `e_machine` of `path`; errors name the field and value.
fn elf_ident(path: &Path) -> Result<ElfIdent, String> {
    use std::io::Read as _;
    let mut head = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| format!("{}: cannot read an ELF header: {e}", path.display()))?;
    if head[..4] != *b"\x7fELF" {
        return Err(format!(
            "{}: e_ident magic is {:02x?}, not 7f 45 4c 46 (not an ELF file)",
            path.display(),
            &head[..4]
        ));
    }
    let (class, data) = (head[4], head[5]);
    let machine = match data {
        1 => u16::from_le_bytes([head[18], head[19]]),
        2 => u16::from_be_bytes([head[18], head[19]]),
        other => {
            return Err(format!(
                "{}: e_ident[EI_DATA] is {other}, neither 1 (little-endian) nor 2 (big-endian)",
                path.display()
            ))
        }
    };
    Ok(ElfIdent {
        class,
        data,
        machine,
    })
}

/// Ok when `path` is a 64-bit little-endian AArch64 ELF file; otherwise an error naming the
/// header field and its value.
fn check_aarch64(path: &Path) -> Result<(), String> {
    let id = elf_ident(path)?;
    let p = path.display();
    if id.class != 2 {
        return Err(format!(
            "{p}: e_ident[EI_CLASS] is {}, want 2 (64-bit)",
            id.class
        ));
    }
    if id.data != 1 {
        return Err(format!(
            "{p}: e_ident[EI_DATA] is {}, want 1 (little-endian)",
            id.data
        ));
    }
    if id.machine != EM_AARCH64 {
        return Err(format!(
            "{p}: e_machine is {}{}, want {EM_AARCH64} (AArch64): not an arm64 build",
            id.machine,
            if id.machine == 62 { " (x86-64)" } else { "" }
        ));
    }
    Ok(())
}

/// Panics unless `path` is an arm64 binary ([`check_aarch64`]).
fn assert_aarch64(path: &Path) {
    if let Err(e) = check_aarch64(path) {
        panic!("{e}");
    }
}

/// The directory holding the arm64 binaries: `$FLANNEL_ARM64_BIN_DIR`, else
/// `<target dir>/aarch64-unknown-linux-gnu/release` for the target directory this test was built
/// in (found from the test executable, so `CARGO_TARGET_DIR` is honoured).
fn arm64_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLANNEL_ARM64_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let rel = Path::new(TARGET).join("release");
    exe.ancestors()
        .map(|a| a.join(&rel))
        .find(|d| d.join("flanneld").is_file())
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target")
                .join(rel)
        })
}

/// qemu-user for arm64: `$FLANNEL_ARM64_QEMU` (set by setup_cross_arm64), else `qemu-aarch64`
/// (Debian's qemu-user) or `qemu-aarch64-static` on PATH.
fn qemu() -> Option<PathBuf> {
    if let Some(q) = std::env::var_os("FLANNEL_ARM64_QEMU") {
        return Some(PathBuf::from(q)).filter(|q| q.is_file());
    }
    let path = std::env::var_os("PATH")?;
    ["qemu-aarch64", "qemu-aarch64-static"]
        .iter()
        .find_map(|p| {
            std::env::split_paths(&path)
                .map(|d| d.join(p))
                .find(|f| f.is_file())
        })
}

/// The arm64 sysroot qemu loads `ld-linux-aarch64.so.1` and libc from (`$ARM64_SYSROOT`).
fn sysroot() -> PathBuf {
    std::env::var_os("ARM64_SYSROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SYSROOT))
}

/// Everything the test needs to run arm64 binaries, or `None` after a skip message (a panic
/// under CI).
struct Arm64 {
    qemu: PathBuf,
    sysroot: PathBuf,
    bin_dir: PathBuf,
}

impl Arm64 {
    #[track_caller]
    fn find_or_skip() -> Option<Self> {
        let bin_dir = arm64_bin_dir();
        let build = "source scripts/lib/cross-arm64.sh; setup_cross_arm64; cargo build --release \
                     --locked --target aarch64-unknown-linux-gnu -p flannel-control --bin flanneld \
                     --bin flannelctl";
        for name in ["flanneld", "flannelctl"] {
            let p = bin_dir.join(name);
            if !require(&format!("{} (build: {build})", p.display()), p.is_file()) {
                return None;
            }
        }
        let qemu = qemu();
        if !require(
            &format!(
                "qemu-aarch64 (Debian package qemu-user; $FLANNEL_ARM64_QEMU is {:?})",
                std::env::var_os("FLANNEL_ARM64_QEMU")
            ),
            qemu.is_some(),
        ) {
            return None;
        }
        let sysroot = sysroot();
        let loader = sysroot.join("lib/ld-linux-aarch64.so.1");
        if !require(
            &format!("{} (Debian package libc6-arm64-cross)", loader.display()),
            loader.exists(),
        ) {
            return None;
        }
        Some(Self {
            qemu: qemu.unwrap(),
            sysroot,
            bin_dir,
        })
    }

    /// `qemu-aarch64 -L SYSROOT <bin_dir>/NAME`, after checking that NAME is an arm64 binary.
    fn command(&self, name: &str) -> Command {
        let bin = self.bin_dir.join(name);
        assert_aarch64(&bin);
        let mut c = Command::new(&self.qemu);
        c.arg("-L").arg(&self.sysroot).arg(bin);
        c
    }
}

/// Runs `cmd` to completion; panics (with its stderr) unless it exits 0. Returns stdout.
fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}; stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{what}: stdout is not UTF-8: {e}"))
}

fn lo_mtu() -> u32 {
    let text = std::fs::read_to_string("/sys/class/net/lo/mtu").expect("read lo's MTU");
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("/sys/class/net/lo/mtu is {text:?}: {e}"))
}

/// The `KEY=value` lines of subnet.env, in order.
fn env_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("subnet.env line {l:?} is not KEY=value"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The ELF check itself must be able to fail: the host's own binaries are not AArch64 (on an
/// x86-64 host this is the test executable, e_machine 62).
#[test]
fn elf_check_tells_a_host_binary_from_an_arm64_one() {
    let exe = std::env::current_exe().unwrap();
    let id = elf_ident(&exe).unwrap();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(id.machine, 62, "x86-64 host: {id:?}");
        let err = check_aarch64(&exe).expect_err("a host binary passed as arm64");
        assert!(err.contains("e_machine is 62 (x86-64)"), "{err}");
    }
    let not_elf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_elf.path(), b"#!/bin/sh\necho I am not ELF at all\n").unwrap();
    let err = elf_ident(not_elf.path()).unwrap_err();
    assert!(err.contains("e_ident magic"), "{err}");
}

#[test]
fn arm64_flanneld_under_qemu_leases_a_subnet_and_writes_subnet_env() {
    let Some(arm) = Arm64::find_or_skip() else {
        return;
    };
    // Both binaries, checked before anything runs: arm64, not the host's.
    assert_aarch64(&arm.bin_dir.join("flanneld"));
    assert_aarch64(&arm.bin_dir.join("flannelctl"));
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };

    etcd.put_config(
        PREFIX,
        &format!(r#"{{"Network":"{NETWORK}","Backend":{{"Type":"udp","Port":8285}}}}"#),
    )
    .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("flanneld-arm64-")
        .tempdir()
        .unwrap();
    let subnet_file = dir.path().join("subnet.env");
    let routes = dir.path().join("routes");
    let stats = dir.path().join("dataplane.stats");
    let endpoint = etcd.endpoint();

    let mut cmd = arm.command("flanneld");
    cmd.arg(format!("-etcd-endpoints={endpoint}"))
        .arg("-iface=127.0.0.1")
        // The machine's own namespace: its firewall is not ours to touch.
        .arg("-iptables-forward-rules=false")
        .arg("-dataplane-guard=false")
        .arg("-ip-masq=false")
        .arg(format!("-public-ip={PUBLIC_IP}"))
        .arg(format!("-subnet-file={}", subnet_file.display()))
        .arg(format!("--route-table={}", routes.display()))
        .arg(format!("--dataplane-stats={}", stats.display()))
        .env("RUST_LOG", "info");
    let mut flanneld = Daemon::spawn("flanneld (arm64)", cmd, &dir.path().join("flanneld.log"))
        .expect("start qemu-aarch64 flanneld");

    // The process really is the emulator running the arm64 binary.
    let pid = flanneld.pid().expect("pid");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/PID/exe");
    let qemu_real = std::fs::canonicalize(&arm.qemu).unwrap();
    assert_eq!(
        exe,
        qemu_real,
        "flanneld's process runs {}, not qemu",
        exe.display()
    );

    // subnet.env appears...
    let text = wait_for(TIMEOUT, || {
        if !flanneld.is_running() {
            panic!(
                "arm64 flanneld exited ({:?}); log:\n{}",
                flanneld.try_wait(),
                flanneld.whole_log()
            );
        }
        std::fs::read_to_string(&subnet_file)
            .ok()
            .filter(|t| t.contains("FLANNEL_IPMASQ="))
    })
    .unwrap_or_else(|| {
        panic!(
            "no subnet.env at {} in {TIMEOUT:?}; log:\n{}",
            subnet_file.display(),
            flanneld.log()
        )
    });

    // ... and names exactly one lease in etcd, ours.
    let leases = etcd.get_prefix(&format!("{PREFIX}/subnets/")).unwrap();
    assert_eq!(leases.len(), 1, "want one lease, etcd has: {leases:?}");
    let (key, value) = &leases[0];
    let subnet_key = key
        .strip_prefix(&format!("{PREFIX}/subnets/"))
        .unwrap_or_else(|| panic!("lease key {key:?} outside {PREFIX}/subnets/"));
    let (addr, len) = subnet_key
        .split_once('-')
        .unwrap_or_else(|| panic!("lease key {key:?}: no ADDR-LEN"));
    let subnet: Ipv4Net = format!("{addr}/{len}")
        .parse()
        .unwrap_or_else(|e| panic!("lease key {key:?}: subnet {addr}/{len}: {e:?}"));
    let network: Ipv4Net = NETWORK.parse().unwrap();
    assert_eq!(subnet.prefix(), 24, "lease key {key:?}: SubnetLen");
    assert!(
        network.contains_net(&subnet),
        "lease key {key:?}: {subnet} outside Network {NETWORK}"
    );
    assert_ne!(
        subnet.addr(),
        network.addr(),
        "lease key {key:?}: the first subnet is never leased (SubnetMin)"
    );
    assert_eq!(subnet.addr_u32() & 0xff, 0, "lease key {key:?}: not on /24");

    let json: serde_json::Value = serde_json::from_str(value)
        .unwrap_or_else(|e| panic!("lease {key}: value {value:?} is not JSON: {e}"));
    assert_eq!(
        json["PublicIP"], PUBLIC_IP,
        "lease {key}: PublicIP in {value}"
    );
    assert!(
        json["PublicIPv6"].is_null(),
        "lease {key}: PublicIPv6 in {value}"
    );
    assert!(
        json.get("BackendType").is_none() && json.get("BackendData").is_none(),
        "lease {key}: udp leases carry no BackendType/BackendData: {value}"
    );
    // Byte for byte what flannel's udp backend writes.
    assert_eq!(
        value,
        &format!(r#"{{"PublicIP":"{PUBLIC_IP}","PublicIPv6":null}}"#),
        "lease {key}: value"
    );
    let lease_id = etcd.lease_of(key).unwrap();
    assert_ne!(lease_id, 0, "lease {key}: not attached to an etcd lease");
    let ttl = etcd.lease_ttl(lease_id).unwrap();
    assert!(
        ttl.is_some_and(|t| t > 86_400 - 600),
        "lease {key}: etcd lease {lease_id:x} TTL {ttl:?}, want about 24 h"
    );

    // subnet.env agrees with the lease, field by field, in flannel's order.
    let gw = Ipv4Addr::from(subnet.addr_u32() + 1);
    let want_env = [
        ("FLANNEL_NETWORK", NETWORK.to_string()),
        ("FLANNEL_SUBNET", format!("{gw}/24")),
        ("FLANNEL_MTU", (lo_mtu() - 28).to_string()),
        ("FLANNEL_IPMASQ", "false".to_string()),
    ];
    let got_env = env_lines(&text);
    assert_eq!(
        got_env.len(),
        want_env.len(),
        "subnet.env fields: {got_env:?}"
    );
    for ((k, v), (wk, wv)) in got_env.iter().zip(&want_env) {
        assert_eq!(k, wk, "subnet.env field order: {got_env:?}");
        assert_eq!(v, wv, "subnet.env {k} (lease {key})");
    }
    assert_eq!(
        flannel_shared::subnet_env::parse_subnet(&text),
        Some(subnet),
        "subnet.env FLANNEL_SUBNET vs lease {key}"
    );

    // A peer's lease (another host) reaches the arm64 flanneld's route table through its watch.
    let grant = etcd.ctl(&["lease", "grant", "600"]).unwrap();
    let peer_lease = grant
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("etcdctl lease grant said {grant:?}"))
        .to_string();
    let peer: Ipv4Net = PEER_SUBNET.parse().unwrap();
    let peer_key = format!("{PREFIX}/subnets/{}", peer.to_key());
    etcd.ctl(&[
        "put",
        &format!("--lease={peer_lease}"),
        &peer_key,
        &format!(r#"{{"PublicIP":"{PEER_IP}","PublicIPv6":null}}"#),
    ])
    .unwrap();
    let own_ip = Ipv4Addr::from(subnet.addr_u32() + 9);
    let peer_ip = Ipv4Addr::from(peer.addr_u32() + 9);
    let want_own = Some(PUBLIC_IP.parse::<Ipv4Addr>().unwrap());
    let want_peer = Some(PEER_IP.parse::<Ipv4Addr>().unwrap());
    // Read by the host (x86-64) reader: the arm64 writer's layout is the same file format.
    let seen = wait_for(TIMEOUT, || {
        let mut r = RouteTableReader::open(&routes).ok()?;
        let snap = r.snapshot().ok()?;
        (snap.lookup(own_ip) == want_own && snap.lookup(peer_ip) == want_peer).then_some(())
    });
    assert!(
        seen.is_some(),
        "route table {}: want {own_ip} -> {PUBLIC_IP} and {peer_ip} -> {PEER_IP}; log:\n{}",
        routes.display(),
        flanneld.log()
    );

    // flannelctl (arm64): the leases from etcd...
    let mut c = arm.command("flannelctl");
    c.args(["--json", &format!("--etcd-endpoints={endpoint}"), "leases"]);
    let out = run_ok(c, "flannelctl (arm64) leases");
    let rows: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("flannelctl leases --json: {e}: {out}"));
    let row = rows
        .as_array()
        .and_then(|a| a.iter().find(|r| r["key"] == key.as_str()))
        .unwrap_or_else(|| panic!("flannelctl leases: no row with key {key}: {out}"));
    assert_eq!(row["subnet"], subnet.to_string(), "flannelctl row subnet");
    assert_eq!(row["PublicIP"], PUBLIC_IP, "flannelctl row PublicIP");
    assert_eq!(row["routed"], true, "flannelctl row routed: {row}");
    assert!(
        row["ttl_seconds"].as_i64().is_some_and(|t| t > 0),
        "flannelctl row ttl_seconds: {row}"
    );

    // ... and the route table the arm64 flanneld published.
    let mut c = arm.command("flannelctl");
    c.arg("--json")
        .arg(format!("--route-table={}", routes.display()))
        .arg("routes");
    let out = run_ok(c, "flannelctl (arm64) routes");
    let table: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("flannelctl routes --json: {e}: {out}"));
    assert_eq!(table["network"], NETWORK, "route table network: {out}");
    assert_eq!(
        table["our_subnet"],
        subnet.to_string(),
        "route table our_subnet: {out}"
    );
    assert_eq!(table["port"], 8285, "route table port: {out}");
    let mut pairs: Vec<(String, String)> = table["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("route table routes: {out}"))
        .iter()
        .map(|r| {
            (
                r["subnet"].as_str().unwrap_or_default().to_string(),
                r["public_ip"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    pairs.sort();
    let mut want = vec![
        (subnet.to_string(), PUBLIC_IP.to_string()),
        (PEER_SUBNET.to_string(), PEER_IP.to_string()),
    ];
    want.sort();
    assert_eq!(pairs, want, "route table routes");

    // SIGTERM: a clean exit, and the lease stays (flannel keeps it for the next start).
    let status = flanneld.stop(Duration::from_secs(20)).expect("was running");
    assert!(
        status.success(),
        "arm64 flanneld on SIGTERM: {status}; log:\n{}",
        flanneld.whole_log()
    );
    assert_eq!(
        etcd.get(key).unwrap().as_deref(),
        Some(value.as_str()),
        "lease {key} after flanneld stopped"
    );
}
