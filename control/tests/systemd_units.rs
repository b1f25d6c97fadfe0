//! `scripts/systemd/`: the unit pair, the data plane's socket unit and its generator, and the
//! drop-ins pass `systemd-analyze verify` (Debian 12's
//! systemd 252) and say what the design needs: the data plane ordered after flanneld but not
//! bound to it, both `Type=notify` with a watchdog and restarting always, the shared runtime
//! directory preserved, the seed's config published with etcd v3, Docker fed from
//! mk-docker-opts.sh once flanneld is ready (no waiting loop: ready means subnet.env exists).
//!
//! verify runs with `--root` on a temp tree: our files under `etc/systemd/system/`, a copy of the
//! host's `/usr/lib/systemd/system` (the targets every service depends on), a stub
//! `docker.service` for the drop-in, and an executable placeholder at every path an `Exec*=`
//! line runs (verify checks that they exist). No root needed, nothing is started.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use flannel_perf::testbed::{have, require};

/// Our unit files, relative to scripts/systemd/ and to /etc/systemd/system/ alike.
const FILES: [&str; 5] = [
    "flanneld.service",
    "flannel-dataplane.service",
    "flannel-dataplane.socket",
    "flanneld.service.d/50-network-config.conf",
    "docker.service.d/40-flannel.conf",
];

/// What Docker's packages install, reduced to what verify needs; the drop-in replaces ExecStart.
const DOCKER_STUB: &str = "[Unit]\nDescription=Docker Application Container Engine (test stub)\n\
    [Service]\nType=notify\nExecStart=/usr/bin/dockerd -H fd://\n\
    [Install]\nWantedBy=multi-user.target\n";

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/systemd")
}

fn text(rel: &str) -> String {
    let p = systemd_dir().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A unit file as (section, key, value) in file order; comments, blank lines dropped.
struct Unit {
    name: String,
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn load(rel: &str) -> Self {
        Self::parse(rel, &text(rel))
    }

    fn parse(name: &str, text: &str) -> Self {
        let mut section = String::new();
        let mut entries = Vec::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
                continue;
            }
            // systemd joins a line ending in a backslash with the next one.
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}: not KEY=VALUE: {line:?}"));
            assert!(!section.is_empty(), "{name}: {line:?} outside a section");
            entries.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
        Self {
            name: name.to_string(),
            entries,
        }
    }

    /// Every value of `section`/`key`, in order (empty ones are resets).
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The single value of `section`/`key`.
    #[track_caller]
    fn one(&self, section: &str, key: &str) -> &str {
        match self.all(section, key)[..] {
            [v] => v,
            ref vs => panic!(
                "{}: [{section}] {key}= should appear once, got {vs:?}",
                self.name
            ),
        }
    }

    /// The words of every value of a list setting (After=, Wants=, ...).
    fn words(&self, section: &str, key: &str) -> BTreeSet<&str> {
        self.all(section, key)
            .into_iter()
            .flat_map(str::split_whitespace)
            .collect()
    }

    /// The executables run by `Exec*=` lines (prefixes such as `-` stripped).
    fn executables(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, k, v)| k.starts_with("Exec") && !v.is_empty())
            .map(|(_, _, v)| {
                let cmd = v.trim_start_matches(['-', '@', ':', '+', '!', '|']);
                let exe = cmd.split_whitespace().next().unwrap_or("").to_string();
                assert!(
                    exe.starts_with('/'),
                    "{}: give commands with absolute paths: {v:?}",
                    self.name
                );
                exe
            })
            .collect()
    }
}

/// The generator (scripts/systemd/), installed in /lib/systemd/system-generators/.
const GENERATOR: &str = "flannel-dataplane-generator";

/// Runs the generator with `env` as its dataplane.env (None: no such file) into a new
/// directory: (the directory, exit success, stderr).
fn run_generator(env: Option<&str>) -> (tempfile::TempDir, bool, String) {
    let dir = tempfile::Builder::new()
        .prefix("generator-")
        .tempdir()
        .unwrap();
    let env_path = dir.path().join("dataplane.env");
    if let Some(body) = env {
        std::fs::write(&env_path, body).unwrap();
    }
    let out = dir.path().join("normal");
    // POSIX sh: run it with dash, Debian's /bin/sh, not bash.
    let o = Command::new("dash")
        .arg(systemd_dir().join(GENERATOR))
        .arg(&out)
        .arg(dir.path().join("early"))
        .arg(dir.path().join("late"))
        .env("FLANNEL_DATAPLANE_ENV", &env_path)
        .output()
        .expect("run dash");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (dir, o.status.success(), err)
}

/// The drop-in the generator wrote in `dir` (None: none written).
fn generated(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("normal/flannel-dataplane.socket.d/50-workers.conf")).ok()
}

/// A temp root for `systemd-analyze verify --root`, with `edit` applied to our files first and
/// the generator's drop-in (for 3 workers) in place.
fn verify_root(edit: impl Fn(&str, String) -> String) -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("systemd-verify-")
        .tempdir()
        .unwrap();
    let lib = root.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&lib).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/systemd/system")
        .arg(&lib)
        .status()
        .expect("cp");
    assert!(st.success(), "copy /usr/lib/systemd/system");
    let etc = root.path().join("etc/systemd/system");
    let mut exes = BTreeSet::new();
    let mut files: Vec<(String, String)> = FILES
        .iter()
        .map(|f| (f.to_string(), edit(f, text(f))))
        .collect();
    files.push(("docker.service".into(), DOCKER_STUB.into()));
    if have("dash") {
        let (gen, ok, err) = run_generator(Some("FLANNEL_DATAPLANE_WORKERS=3\n"));
        assert!(ok, "generator: {err}");
        let conf = "flannel-dataplane.socket.d/50-workers.conf";
        files.push((
            conf.into(),
            edit(conf, generated(gen.path()).expect("drop-in")),
        ));
    }
    for (rel, body) in &files {
        let dst = etc.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::write(&dst, body).unwrap();
        exes.extend(Unit::parse(rel, body).executables());
    }
    for exe in exes {
        place_executable(root.path(), &exe);
    }
    root
}

fn place_executable(root: &Path, exe: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let p = root.join(exe.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs verify on our two services, the socket unit (with the generator's drop-in) and
/// docker.service (with its drop-in): (success, output).
fn verify(root: &Path) -> (bool, String) {
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", root.display()))
        .args([
            "flanneld.service",
            "flannel-dataplane.service",
            "flannel-dataplane.socket",
            "docker.service",
        ])
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("run systemd-analyze");
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.success(), out)
}

fn have_systemd_analyze() -> bool {
    require(
        "systemd-analyze (Debian package systemd) and /usr/lib/systemd/system",
        have("systemd-analyze") && Path::new("/usr/lib/systemd/system").is_dir(),
    )
}

#[test]
fn units_and_drop_ins_pass_systemd_analyze_verify() {
    if !have_systemd_analyze() {
        return;
    }
    let root = verify_root(|_, body| body);
    let (ok, out) = verify(root.path());
    // verify only warns (exit 0) about unknown keys and bad values: any output is a failure.
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify (ok={ok}):\n{out}"
    );
}

/// The harness itself: typos in both drop-ins, a bad value and a missing executable must be
/// reported, so the clean run above means something.
#[test]
fn verify_reports_mistakes_in_units_and_drop_ins() {
    if !have_systemd_analyze() {
        return;
    }
    let root = verify_root(|name, body| match name {
        "docker.service.d/40-flannel.conf" => body + "Restrat=always\n",
        "flanneld.service.d/50-network-config.conf" => body + "ExecStartPer=/bin/true\n",
        "flannel-dataplane.service" => body.replace("RestartSec=1", "RestartSec=one"),
        "flanneld.service" => body.replace("WatchdogSec=30s", "WatchdogSec=half-a-minute"),
        "flannel-dataplane.socket" => body.replace("ReusePort=yes", "ReusePort=maybe"),
        "flannel-dataplane.socket.d/50-workers.conf" => body + "ListenDatagrm=0.0.0.0:1\n",
        _ => body,
    });
    std::fs::remove_file(root.path().join("usr/bin/flanneld")).unwrap();
    let (ok, out) = verify(root.path());
    assert!(!ok, "a missing ExecStart binary fails verify:\n{out}");
    let mut needles = vec![
        "/usr/bin/flanneld",
        "40-flannel.conf:",
        "'Restrat'",
        "50-network-config.conf:",
        "'ExecStartPer'",
        "flannel-dataplane.service:",
        "ignoring: one",
        "flanneld.service:",
        "half-a-minute",
        "flannel-dataplane.socket:",
        "maybe",
    ];
    if have("dash") {
        needles.extend(["50-workers.conf:", "'ListenDatagrm'"]);
    }
    for needle in needles {
        assert!(
            out.contains(needle),
            "verify should mention {needle}:\n{out}"
        );
    }
}

#[test]
fn dataplane_starts_after_flanneld_but_is_not_bound_to_it() {
    let dp = Unit::load("flannel-dataplane.service");
    let fl = Unit::load("flanneld.service");
    assert!(dp.words("Unit", "After").contains("flanneld.service"));
    assert!(dp.words("Unit", "Wants").contains("flanneld.service"));
    // Either process must restart alone: no stop/restart propagation in either direction.
    for key in [
        "Requires",
        "BindsTo",
        "Requisite",
        "PartOf",
        "Upholds",
        "PropagatesStopTo",
    ] {
        assert!(
            !dp.words("Unit", key).contains("flanneld.service"),
            "flannel-dataplane.service must not have {key}=flanneld.service"
        );
        assert!(
            !fl.words("Unit", key).contains("flannel-dataplane.service"),
            "flanneld.service must not have {key}=flannel-dataplane.service"
        );
    }
    assert!(
        !fl.words("Unit", "After")
            .contains("flannel-dataplane.service"),
        "no ordering cycle"
    );
    assert!(fl.words("Unit", "After").contains("network-online.target"));
    assert!(fl.words("Unit", "Wants").contains("network-online.target"));
    assert!(fl.words("Unit", "After").contains("etcd.service"));
    assert!(
        !fl.words("Unit", "Requires").contains("etcd.service"),
        "etcd may be remote: ordering only"
    );
}

#[test]
fn both_daemons_restart_always_and_share_a_preserved_runtime_directory() {
    for name in ["flanneld.service", "flannel-dataplane.service"] {
        let u = Unit::load(name);
        assert_eq!(u.one("Service", "Restart"), "always", "{name}");
        assert_eq!(
            u.one("Unit", "StartLimitIntervalSec"),
            "0",
            "{name}: never give up"
        );
        assert_eq!(u.one("Service", "Type"), "notify", "{name}: sd_notify");
        assert_eq!(u.one("Service", "NotifyAccess"), "main", "{name}");
        assert_eq!(
            u.one("Service", "WatchdogSec"),
            "30s",
            "{name}: pings every 15 s"
        );
        assert_eq!(u.one("Service", "KillSignal"), "SIGTERM", "{name}");
        assert_eq!(
            u.one("Service", "RuntimeDirectoryPreserve"),
            "yes",
            "{name}"
        );
        assert_eq!(u.one("Install", "WantedBy"), "multi-user.target", "{name}");
    }
    // flanneld owns /run/flannel (systemd chowns a RuntimeDirectory= to the unit's User=, so
    // the data plane must not declare it too); the data plane owns only its stats directory.
    let fl = Unit::load("flanneld.service");
    assert_eq!(fl.one("Service", "RuntimeDirectory"), "flannel");
    // SIGTERM to flanneld only: the iptables/nft it runs to remove its rules must not get it.
    assert_eq!(fl.one("Service", "KillMode"), "mixed");
    let dp = Unit::load("flannel-dataplane.service");
    assert_eq!(dp.one("Service", "RuntimeDirectory"), "flannel-dataplane");
    assert_eq!(dp.one("Service", "RestartSec"), "1", "back within 1 s");
    assert_eq!(dp.one("Service", "LimitMEMLOCK"), "infinity", "io_uring");
}

/// Both units confine their daemon as far as it still works (tests/hardening in flannel-perf
/// runs both daemons under the same user, capabilities and read-only /proc/sys): own non-root
/// user with ambient capabilities, no /proc/sys, /dev, kernel modules, logs, cgroups, a system
/// call allow list; `systemd-analyze security --offline=true` rates each at most 2.0 (it rated
/// both 6.6 before; docs/install.md explains each remaining point).
#[test]
fn units_confine_both_daemons() {
    let common = [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateMounts", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallErrorNumber", "EPERM"),
    ];
    let units = [
        (
            "flanneld.service",
            "flanneld",
            "CAP_NET_ADMIN CAP_NET_RAW",
            "@system-service",
            "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        ),
        (
            "flannel-dataplane.service",
            "flannel-dataplane",
            "CAP_NET_ADMIN CAP_BPF",
            "@system-service bpf io_uring_setup io_uring_enter io_uring_register",
            "AF_UNIX AF_INET AF_NETLINK",
        ),
    ];
    for (name, user, caps, syscalls, families) in units {
        let u = Unit::load(name);
        for (k, v) in common {
            assert_eq!(u.one("Service", k), v, "{name}: {k}=");
        }
        assert_eq!(u.one("Service", "User"), user, "{name}: its own user");
        assert_eq!(u.one("Service", "Group"), user, "{name}");
        assert_eq!(u.one("Service", "AmbientCapabilities"), caps, "{name}");
        assert_eq!(u.one("Service", "CapabilityBoundingSet"), caps, "{name}");
        assert_eq!(u.one("Service", "SystemCallFilter"), syscalls, "{name}");
        assert_eq!(
            u.one("Service", "RestrictAddressFamilies"),
            families,
            "{name}"
        );
        assert!(!u.one("Service", "LimitNOFILE").is_empty(), "{name}");
    }
    let fl = Unit::load("flanneld.service");
    assert_eq!(fl.one("Service", "PrivateDevices"), "yes");
    let dp = Unit::load("flannel-dataplane.service");
    assert_eq!(dp.one("Service", "DevicePolicy"), "closed");
    assert_eq!(dp.one("Service", "DeviceAllow"), "/dev/net/tun rw");
    assert_eq!(dp.one("Service", "ProcSubset"), "pid");

    if !have_systemd_analyze() {
        return;
    }
    for name in ["flanneld.service", "flannel-dataplane.service"] {
        let o = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(systemd_dir().join(name))
            .output()
            .expect("run systemd-analyze security");
        let out = String::from_utf8_lossy(&o.stdout);
        let level: f64 = out
            .lines()
            .find_map(|l| l.split_once("Overall exposure level for "))
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{name}: no exposure level in:\n{out}{}",
                    String::from_utf8_lossy(&o.stderr)
                )
            });
        eprintln!("{name}: systemd-analyze security exposure {level}");
        assert!(level <= 2.0, "{name}: exposure {level} > 2.0:\n{out}");
    }
}

#[test]
fn commands_and_paths_match_the_daemons() {
    let fl = Unit::load("flanneld.service");
    assert_eq!(
        fl.one("Service", "ExecStart"),
        "/usr/bin/flanneld --dataplane-stats=/run/flannel-dataplane/stats"
    );
    assert_eq!(
        fl.one("Service", "EnvironmentFile"),
        "-/etc/flannel/options.env"
    );
    let dp = Unit::load("flannel-dataplane.service");
    assert_eq!(
        dp.one("Service", "ExecStart"),
        "/usr/bin/flannel-dataplane --route-table=/run/flannel/routes \
         --stats=/run/flannel-dataplane/stats"
    );
    assert_eq!(
        dp.one("Service", "EnvironmentFile"),
        "-/etc/flannel/dataplane.env"
    );

    // The paths in the units are flanneld's defaults (ExecStart passes only the stats file, in
    // the data plane's own directory): the route table the data plane reads, and the subnet.env
    // the Docker drop-in waits for and converts.
    let defaults = <flannel_control::cli::Args as clap::Parser>::try_parse_from(["flanneld"])
        .expect("flanneld defaults");
    let table = defaults.route_table.to_str().unwrap().to_string();
    let subnet = defaults.subnet_file.to_str().unwrap().to_string();
    assert_eq!(table, "/run/flannel/routes");
    assert_eq!(subnet, "/run/flannel/subnet.env");
    assert!(dp
        .one("Service", "ExecStart")
        .contains(&format!(" --route-table={table} ")));
    assert!(table.starts_with("/run/flannel/") && subnet.starts_with("/run/flannel/"));
    // The Docker drop-in runs mk-docker-opts.sh without -f: its default must be flanneld's.
    let docker = Unit::load("docker.service.d/40-flannel.conf");
    let mk_line = docker
        .all("Service", "ExecStartPre")
        .into_iter()
        .find(|c| c.contains("mk-docker-opts.sh"))
        .expect("runs mk-docker-opts.sh");
    assert!(!mk_line.contains(" -f "), "{mk_line}");
    let mk = std::fs::read_to_string(systemd_dir().join("../mk-docker-opts.sh")).unwrap();
    assert!(
        mk.contains(&format!("\nmdo_in={subnet}\n")),
        "mk-docker-opts.sh -f default"
    );
}

#[test]
fn network_config_drop_in_publishes_the_seed_config_with_etcd_v3() {
    let u = Unit::load("flanneld.service.d/50-network-config.conf");
    assert_eq!(
        u.one("Service", "ExecStartPre"),
        r#"/usr/bin/etcdctl put /coreos.com/network/config '{ "Network": "10.1.0.0/16" }'"#
    );
    assert_eq!(u.one("Service", "Environment"), "ETCDCTL_API=3");
    // The JSON must reach etcdctl as written: no $ or % for systemd to expand.
    assert!(!u.one("Service", "ExecStartPre").contains(['$', '%']));
    let json = r#"{ "Network": "10.1.0.0/16" }"#;
    let cfg = flannel_shared::config::NetworkConfig::parse(json).expect("flanneld accepts it");
    assert_eq!(cfg.network.to_string(), "10.1.0.0/16");
}

#[test]
fn docker_drop_in_feeds_dockerd_from_mk_docker_opts() {
    let u = Unit::load("docker.service.d/40-flannel.conf");
    assert!(u.words("Unit", "Requires").contains("flanneld.service"));
    assert!(u.words("Unit", "After").contains("flanneld.service"));
    assert_eq!(u.one("Service", "Restart"), "always");
    let opts_file = "/run/flannel/docker_opts.env";
    assert_eq!(u.one("Service", "EnvironmentFile"), format!("-{opts_file}"));

    let pre = u.all("Service", "ExecStartPre");
    assert_eq!(pre.len(), 2, "remove the old file, generate: {pre:?}");
    assert_eq!(pre[0], format!("/bin/rm -f {opts_file}"));
    assert_eq!(
        pre[1],
        format!("/usr/bin/mk-docker-opts.sh -k DOCKER_OPTS -d {opts_file}")
    );

    // ExecStart= is reset first, then dockerd gets the combined options, split into words.
    let start = u.all("Service", "ExecStart");
    assert_eq!(start.len(), 2, "{start:?}");
    assert_eq!(start[0], "", "an empty ExecStart= clears the packaged one");
    assert!(start[1].starts_with("/usr/bin/dockerd "), "{}", start[1]);
    assert!(start[1].ends_with(" $DOCKER_OPTS"), "{}", start[1]);
}

/// Docker needs subnet.env when it starts. flanneld is `Type=notify` and sends READY=1 only
/// after writing it (control/tests/sd_notify.rs checks that), and waits for etcd as long as
/// it takes (no start timeout that would fail Docker's start job as a dependency). So ordering
/// Docker after flanneld is the whole wait: no polling loop is left in the drop-in.
#[test]
fn docker_waits_for_flanneld_readiness_not_for_a_file() {
    let fl = Unit::load("flanneld.service");
    assert_eq!(fl.one("Service", "Type"), "notify");
    assert_eq!(fl.one("Service", "TimeoutStartSec"), "infinity");
    let u = Unit::load("docker.service.d/40-flannel.conf");
    assert!(u.words("Unit", "After").contains("flanneld.service"));
    assert!(u.words("Unit", "Requires").contains("flanneld.service"));
    for cmd in u.all("Service", "ExecStartPre") {
        assert!(
            !cmd.contains("sleep") && !cmd.contains("until") && !cmd.contains("timeout"),
            "no waiting loop: {cmd}"
        );
    }
    // The data plane also starts after flanneld is ready, when the route table exists.
    let dp = Unit::load("flannel-dataplane.service");
    assert!(dp.words("Unit", "After").contains("flanneld.service"));
}

/// docs/install.md names every file there is, and the package installs each one (the
/// `[package.metadata.deb]` assets of control/Cargo.toml).
#[test]
fn install_doc_and_package_name_every_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/install.md")).unwrap();
    let cargo = std::fs::read_to_string(root.join("control/Cargo.toml")).unwrap();
    for f in FILES.iter().chain([&GENERATOR]) {
        assert!(doc.contains(f), "docs/install.md does not mention {f}");
        assert!(
            cargo.contains(&format!("\"../scripts/systemd/{f}\"")),
            "control/Cargo.toml [package.metadata.deb] assets do not install scripts/systemd/{f}"
        );
    }
    assert!(doc.contains("systemctl enable --now flanneld flannel-dataplane"));
    let mut on_disk = Vec::new();
    for e in walk(&systemd_dir()) {
        let rel = e
            .strip_prefix(systemd_dir())
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        on_disk.push(rel);
    }
    on_disk.sort();
    let mut listed: Vec<String> = FILES
        .iter()
        .chain([&GENERATOR])
        .map(|s| s.to_string())
        .collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "FILES and GENERATOR in this test list every file in scripts/systemd"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// systemd holds the data plane's port (issue 29): the socket unit binds UDP 8285 in a
/// reuseport group and hands the sockets, named "udp", to flannel-dataplane.service, which wants
/// it, starts after it and lets systemd keep its TUN queues across restarts.
#[test]
fn the_socket_unit_holds_the_port_for_the_data_plane() {
    let s = Unit::load("flannel-dataplane.socket");
    assert_eq!(s.one("Socket", "ListenDatagram"), "0.0.0.0:8285");
    assert_eq!(s.one("Socket", "ReusePort"), "yes");
    assert_eq!(s.one("Socket", "FileDescriptorName"), "udp");
    assert_eq!(s.one("Socket", "Service"), "flannel-dataplane.service");
    assert_eq!(
        s.one("Socket", "Accept"),
        "no",
        "one service for every socket"
    );
    assert_eq!(s.one("Install", "WantedBy"), "sockets.target");
    let dp = Unit::load("flannel-dataplane.service");
    assert!(dp
        .words("Unit", "Wants")
        .contains("flannel-dataplane.socket"));
    assert!(dp
        .words("Unit", "After")
        .contains("flannel-dataplane.socket"));
    assert_eq!(dp.one("Service", "FileDescriptorStoreMax"), "512");
    // Restarting the socket unit alone must restart the service: new sockets in the group
    // would otherwise go unread.
    assert!(dp
        .words("Unit", "PartOf")
        .contains("flannel-dataplane.socket"));
    // Enabling the service enables the socket: the port is held from boot.
    assert!(dp
        .words("Install", "Also")
        .contains("flannel-dataplane.socket"));
    // The generator caps the worker count at the store's size (one TUN queue per worker).
    let gen = text(GENERATOR);
    assert!(gen.contains("-le 256 ]"), "generator caps workers at 256");
}

fn listen_lines(conf: &str) -> Vec<&str> {
    conf.lines()
        .filter_map(|l| l.strip_prefix("ListenDatagram="))
        .collect()
}

/// The generator writes one socket per worker: the worker count, address and port from
/// dataplane.env (quotes and blanks allowed), else the number of CPUs, 0.0.0.0 and 8285; the
/// first line resets the unit's own ListenDatagram=. A bad value writes no drop-in and says so.
#[test]
fn the_generator_writes_one_socket_per_worker() {
    if !require("dash (Debian package dash)", have("dash")) {
        return;
    }
    let (dir, ok, err) = run_generator(Some(
        "# comment\nFLANNEL_DATAPLANE_WORKERS=2\nFLANNEL_DATAPLANE_TUN_NAME=flannel0\n\
         FLANNEL_DATAPLANE_BIND = \"198.18.0.1\"\nFLANNEL_DATAPLANE_PORT='9000'\n\
         FLANNEL_DATAPLANE_WORKERS=5\n",
    ));
    assert!(ok, "{err}");
    let conf = generated(dir.path()).expect("a drop-in");
    let unit = Unit::parse("50-workers.conf", &conf);
    let listen = unit.all("Socket", "ListenDatagram");
    assert_eq!(
        listen,
        [
            "",
            "198.18.0.1:9000",
            "198.18.0.1:9000",
            "198.18.0.1:9000",
            "198.18.0.1:9000",
            "198.18.0.1:9000"
        ],
        "the last WORKERS= wins (as EnvironmentFile=): {conf}"
    );

    // No dataplane.env: one socket per CPU, as the data plane's default worker count.
    let (dir, ok, err) = run_generator(None);
    assert!(ok, "{err}");
    let conf = generated(dir.path()).expect("a drop-in");
    let cpus = std::thread::available_parallelism().unwrap().get();
    let nproc = Command::new("nproc").output().unwrap();
    let nproc: usize = String::from_utf8_lossy(&nproc.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(cpus, nproc);
    let mut want = vec![""];
    want.extend(std::iter::repeat("0.0.0.0:8285").take(nproc));
    assert_eq!(listen_lines(&conf), want, "{conf}");

    for (bad, field) in [
        (
            "FLANNEL_DATAPLANE_WORKERS=0\n",
            "FLANNEL_DATAPLANE_WORKERS=0",
        ),
        (
            "FLANNEL_DATAPLANE_WORKERS=four\n",
            "FLANNEL_DATAPLANE_WORKERS=four",
        ),
        (
            "FLANNEL_DATAPLANE_WORKERS=257\n",
            "FLANNEL_DATAPLANE_WORKERS=257",
        ),
        (
            "FLANNEL_DATAPLANE_PORT=70000\n",
            "FLANNEL_DATAPLANE_PORT=70000",
        ),
        (
            "FLANNEL_DATAPLANE_BIND=eth0\n",
            "FLANNEL_DATAPLANE_BIND=eth0",
        ),
    ] {
        let (dir, ok, err) = run_generator(Some(bad));
        assert!(ok, "a generator must not fail the boot: {bad}");
        assert!(generated(dir.path()).is_none(), "{bad}: no drop-in");
        assert!(
            err.contains(field),
            "{bad}: the message names {field}: {err}"
        );
    }
}
