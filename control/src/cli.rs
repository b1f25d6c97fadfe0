//! `flanneld` flags: flannel's (v0.28.9) names and defaults, plus `--route-table`,
//! `--dataplane-stats` and `--subnet-lease-ttl`.
//!
//! flannel parses flags with Go's `flag` package, so users type `-etcd-endpoints=...` with a single
//! dash; [`normalize_args`] turns such words into clap's `--etcd-endpoints=...`. Every flag can also
//! come from the environment as `FLANNELD_<NAME>` (upper case, `-` → `_`), as in flannel; the
//! command line wins over the environment.
//!
//! As in flannel, `-iface` and `-iface-regex` are repeatable and their values are never split on
//! commas (`-iface-regex='eth[0-9]{1,2}'` is one regex); `FLANNELD_IFACE` and
//! `FLANNELD_IFACE_REGEX` give one entry each. `-version` prints the version line to stderr, as
//! flannel does.
//!
//! flannel's flags for its Kubernetes subnet manager and for blackhole routes are accepted by the
//! parser and refused with one line naming the flag and why ([`Args::refused`], exit status 1);
//! `-vmodule` and `-log_backtrace_at` (klog's) are accepted and ignored.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "flanneld",
    disable_version_flag = true,
    about = "flannel-compatible overlay control plane: etcd config, subnet lease, watches, subnet.env, route table",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Interface (name or IP) for inter-host traffic; repeatable, tried in order, first match wins.
    #[arg(long, env = "FLANNELD_IFACE")]
    pub iface: Vec<String>,
    /// Regex tried against every interface IP, then every name, after -iface; repeatable.
    #[arg(long, env = "FLANNELD_IFACE_REGEX")]
    pub iface_regex: Vec<String>,
    /// Use the interface the kernel routes this IPv4 address through (after -iface, -iface-regex).
    #[arg(long, env = "FLANNELD_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<Ipv4Addr>,
    /// IP other hosts use to reach this one (defaults to the interface's IP). Alone, it also
    /// selects the interface that has this address.
    #[arg(long, env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// IPv6 address other hosts use to reach this one. Accepted and checked; like flannel's udp
    /// backend, flanneld does not put it in the lease (PublicIPv6 stays null).
    #[arg(long, env = "FLANNELD_PUBLIC_IPV6")]
    pub public_ipv6: Option<Ipv6Addr>,
    /// Where to write subnet.env.
    #[arg(
        long,
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    /// Minutes before lease expiry at which to renew it (1..1439).
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=1439))]
    pub subnet_lease_renew_margin: u32,
    /// Install IP masquerade rules for traffic leaving the overlay network.
    #[arg(long, env = "FLANNELD_IP_MASQ", num_args = 0..=1, default_value_t = false,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub ip_masq: bool,
    /// Do not add --random-fully to the MASQUERADE rules (it is added when iptables has it).
    #[arg(long, env = "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE", num_args = 0..=1, default_value_t = false,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub ip_masq_fully_random_disable: bool,
    /// Install ACCEPT rules for the network in the filter FORWARD path (chain FLANNEL-FWD).
    #[arg(long, env = "FLANNELD_IPTABLES_FORWARD_RULES", num_args = 0..=1, default_value_t = true,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub iptables_forward_rules: bool,
    /// Guard the data plane's UDP port (not in flannel): drop every forwarded packet to it
    /// (FORWARD) and every local one whose socket lacks the data plane's mark (OUTPUT), with
    /// iptables or, with EnableNFTables, nftables.
    #[arg(long, env = "FLANNELD_DATAPLANE_GUARD", num_args = 0..=1, default_value_t = true,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub dataplane_guard: bool,
    /// The SO_MARK bit flannel-dataplane puts on its sockets (its --mark): the OUTPUT guard lets
    /// only datagrams carrying it reach the data-plane port. Decimal or 0x hex, not 0.
    #[arg(long, env = "FLANNELD_DATAPLANE_MARK", default_value = "0x2000",
          value_parser = parse_mark)]
    pub dataplane_mark: u32,
    /// Seconds between checks that our iptables rules are still in place.
    #[arg(long, env = "FLANNELD_IPTABLES_RESYNC", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub iptables_resync: u64,
    /// Address the /healthz and /readyz endpoint listens on.
    #[arg(long, env = "FLANNELD_HEALTHZ_IP", default_value = "0.0.0.0")]
    pub healthz_ip: IpAddr,
    /// Port of the health endpoint; 0 disables it.
    #[arg(long, env = "FLANNELD_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,
    /// Log verbosity (0 = info, 1 = debug, 2+ = trace).
    #[arg(short = 'v', long = "v", env = "FLANNELD_V", default_value_t = 0)]
    pub verbosity: u8,
    /// klog's per-module verbosity: accepted and ignored (use RUST_LOG=module=level).
    #[arg(long, env = "FLANNELD_VMODULE")]
    pub vmodule: Option<String>,
    /// klog's file:line for stack traces: accepted and ignored.
    #[arg(
        long = "log_backtrace_at",
        env = "FLANNELD_LOG_BACKTRACE_AT",
        hide = true
    )]
    pub log_backtrace_at: Option<String>,
    /// Print the version and exit.
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true",
          require_equals = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub version: bool,
    /// Shared-memory route table file published for flannel-dataplane (put it on tmpfs).
    #[arg(
        long,
        env = "FLANNELD_ROUTE_TABLE",
        default_value = "/run/flannel/routes"
    )]
    pub route_table: PathBuf,
    /// flannel-dataplane's shared-memory counters, exported on /metrics.
    #[arg(
        long,
        env = "FLANNELD_DATAPLANE_STATS",
        default_value = flannel_shared::stats::DEFAULT_PATH
    )]
    pub dataplane_stats: PathBuf,
    /// TTL of the subnet lease in etcd, in seconds (flannel: 24 h). Short values are for tests.
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_TTL", default_value_t = 86400,
          value_parser = clap::value_parser!(u64).range(5..=31_536_000))]
    pub subnet_lease_ttl: u64,

    // flannel's flags we do not implement: parsed so that they can be refused clearly.
    #[arg(long, env = "FLANNELD_KUBE_SUBNET_MGR", hide = true, num_args = 0..=1,
          default_missing_value = "true", require_equals = true)]
    kube_subnet_mgr: Option<String>,
    #[arg(long, env = "FLANNELD_KUBE_API_URL", hide = true, num_args = 0..=1, default_missing_value = "(no value)")]
    kube_api_url: Option<String>,
    #[arg(long, env = "FLANNELD_KUBECONFIG_FILE", hide = true, num_args = 0..=1, default_missing_value = "(no value)")]
    kubeconfig_file: Option<String>,
    #[arg(long, env = "FLANNELD_KUBE_ANNOTATION_PREFIX", hide = true, num_args = 0..=1, default_missing_value = "(no value)")]
    kube_annotation_prefix: Option<String>,
    #[arg(long, env = "FLANNELD_NET_CONFIG_PATH", hide = true, num_args = 0..=1, default_missing_value = "(no value)")]
    net_config_path: Option<String>,
    #[arg(long, env = "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE", hide = true, num_args = 0..=1,
          default_missing_value = "true", require_equals = true)]
    set_node_network_unavailable: Option<String>,
    #[arg(long, env = "FLANNELD_IP_BLACKHOLE_ROUTE", hide = true, num_args = 0..=1,
          default_missing_value = "true", require_equals = true)]
    ip_blackhole_route: Option<String>,
    /// Why these flags cannot run, set by [`Args::try_parse_words`]: one line naming the flag.
    #[arg(skip)]
    pub refused: Option<String>,
}

/// When a flag of flannel's that we do not implement is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refuse {
    /// A Go boolean: refused unless false (`-kube-subnet-mgr=false` asks for nothing).
    WhenTrue,
    /// Refused whenever it has a non-empty value.
    WhenSet,
}

/// flannel v0.28.9's flags that flanneld does not implement: (clap id, flag, when, why).
const UNSUPPORTED: &[(&str, &str, Refuse, &str)] = &[
    (
        "kube_subnet_mgr",
        "kube-subnet-mgr",
        Refuse::WhenTrue,
        "Kubernetes subnet manager is not supported; use etcd (--etcd-endpoints)",
    ),
    (
        "kube_api_url",
        "kube-api-url",
        Refuse::WhenSet,
        "configures the Kubernetes subnet manager, which is not supported; use etcd (--etcd-endpoints)",
    ),
    (
        "kubeconfig_file",
        "kubeconfig-file",
        Refuse::WhenSet,
        "configures the Kubernetes subnet manager, which is not supported; use etcd (--etcd-endpoints)",
    ),
    (
        "kube_annotation_prefix",
        "kube-annotation-prefix",
        Refuse::WhenSet,
        "configures the Kubernetes subnet manager, which is not supported; use etcd (--etcd-endpoints)",
    ),
    (
        "net_config_path",
        "net-config-path",
        Refuse::WhenSet,
        "the network config is read from etcd (<etcd-prefix>/config), not from a file; only the \
         Kubernetes subnet manager, which is not supported, reads net-conf.json",
    ),
    (
        "set_node_network_unavailable",
        "set-node-network-unavailable",
        Refuse::WhenSet,
        "sets a Kubernetes node condition; the Kubernetes subnet manager is not supported",
    ),
    (
        "ip_blackhole_route",
        "ip-blackhole-route",
        Refuse::WhenTrue,
        "blackhole routes for this host's subnet are not supported",
    ),
];

/// Go's `strconv.ParseBool` false values.
fn go_false(v: &str) -> bool {
    matches!(v, "0" | "f" | "F" | "false" | "FALSE" | "False")
}

/// `-dataplane-mark`: decimal or `0x` hex, non-zero.
fn parse_mark(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    match r {
        Ok(0) => Err(format!("-dataplane-mark {s:?}: must not be 0")),
        Ok(m) => Ok(m),
        Err(e) => Err(format!("-dataplane-mark {s:?}: not a 32-bit number ({e})")),
    }
}

/// The line refusing the first unsupported flag given, if any.
fn refusal(m: &ArgMatches) -> Option<String> {
    UNSUPPORTED.iter().find_map(|&(id, flag, when, why)| {
        let value = m.get_one::<String>(id)?;
        let refused = match when {
            Refuse::WhenTrue => !go_false(value),
            Refuse::WhenSet => !value.is_empty(),
        };
        if !refused {
            return None;
        }
        Some(match m.value_source(id) {
            Some(ValueSource::EnvVariable) => {
                let env = format!("FLANNELD_{}", flag.to_uppercase().replace('-', "_"));
                format!("{env}={value} (--{flag}): {why}")
            }
            _ => format!("--{flag}: {why}"),
        })
    })
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print the shared-memory route table (read-only).
    Routes {
        /// Route table file to read.
        #[arg(
            long,
            env = "FLANNELD_ROUTE_TABLE",
            default_value = "/run/flannel/routes"
        )]
        route_table: PathBuf,
    },
}

/// Rewrites Go-style single-dash long flags (`-etcd-prefix=x`, `-ip-masq`) into clap's
/// double-dash form. Single-letter flags (`-v`), `--x` and non-flag words pass unchanged; words
/// after a bare `--` are left alone.
pub fn normalize_args<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut passthrough = false;
    for (i, a) in args.into_iter().enumerate() {
        if i == 0 || passthrough {
            out.push(a);
            continue;
        }
        match a.to_str() {
            Some("--") => {
                passthrough = true;
                out.push(a);
            }
            Some(s) if is_go_long_flag(s) => out.push(format!("-{s}").into()),
            _ => out.push(a),
        }
    }
    out
}

fn is_go_long_flag(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('-') else {
        return false;
    };
    if rest.starts_with('-') {
        return false;
    }
    let name = rest.split('=').next().unwrap_or("");
    // `-v=2` is Go's verbosity; `-v 2` is clap's short form already.
    let long_enough = name.len() > 1 || (name.len() == 1 && rest.contains('='));
    long_enough
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        // `_`: klog's -log_backtrace_at.
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Args {
    /// Parses the process's arguments and `FLANNELD_*` variables; clap's own errors (an unknown
    /// flag, a bad value) exit here. Check [`Args::version`] and [`Args::refused`] next.
    pub fn parse_from_env() -> Self {
        Self::try_parse_words(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `words` (the program name first) after [`normalize_args`]; fills
    /// [`Args::refused`] when an unsupported flannel flag is given.
    pub fn try_parse_words<I: IntoIterator<Item = OsString>>(
        words: I,
    ) -> Result<Self, clap::Error> {
        let matches = Self::command().try_get_matches_from(normalize_args(words))?;
        let mut args = Self::from_arg_matches(&matches)?;
        args.refused = refusal(&matches);
        Ok(args)
    }

    /// What `-version` prints (to stderr, as flannel does): the version, one line.
    pub fn version_line() -> String {
        format!("v{}", env!("CARGO_PKG_VERSION"))
    }

    /// Flags accepted without effect, one debug line each.
    pub fn ignored(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(m) = &self.vmodule {
            v.push(format!(
                "-vmodule {m}: accepted and ignored (per-module levels: RUST_LOG=module=level)"
            ));
        }
        if let Some(b) = &self.log_backtrace_at {
            v.push(format!("-log_backtrace_at {b}: accepted and ignored"));
        }
        v
    }
}

/// flannel's etcd flags, shared by `flanneld` and `flannelctl` (same names, same `FLANNELD_*`
/// environment variables). Global: `flannelctl leases -etcd-prefix=/x` works too.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// Comma-separated etcd endpoints.
    #[arg(
        long = "etcd-endpoints",
        global = true,
        env = "FLANNELD_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379"
    )]
    pub endpoints: String,
    /// etcd prefix holding `config` and `subnets/`.
    #[arg(
        long = "etcd-prefix",
        global = true,
        env = "FLANNELD_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    pub prefix: String,
    /// Client private key for etcd TLS.
    #[arg(long = "etcd-keyfile", global = true, env = "FLANNELD_ETCD_KEYFILE")]
    pub keyfile: Option<PathBuf>,
    /// Client certificate for etcd TLS.
    #[arg(long = "etcd-certfile", global = true, env = "FLANNELD_ETCD_CERTFILE")]
    pub certfile: Option<PathBuf>,
    /// CA certificate that signed etcd's server certificate.
    #[arg(long = "etcd-cafile", global = true, env = "FLANNELD_ETCD_CAFILE")]
    pub cafile: Option<PathBuf>,
    /// etcd user name (authentication).
    #[arg(long = "etcd-username", global = true, env = "FLANNELD_ETCD_USERNAME")]
    pub username: Option<String>,
    /// etcd password (authentication). Over http:// to a host other than loopback it is
    /// refused unless -etcd-allow-insecure-password is given.
    #[arg(
        long = "etcd-password",
        global = true,
        env = "FLANNELD_ETCD_PASSWORD",
        hide_env_values = true,
        conflicts_with = "password_file"
    )]
    pub password: Option<crate::etcd::Secret>,
    /// File holding the etcd password (its first line; a trailing newline is dropped). Keeps the
    /// password out of the command line and the environment. Not with -etcd-password.
    #[arg(
        long = "etcd-password-file",
        global = true,
        env = "FLANNELD_ETCD_PASSWORD_FILE"
    )]
    pub password_file: Option<PathBuf>,
    /// Send the etcd password over http:// to hosts other than loopback (clear text).
    #[arg(long = "etcd-allow-insecure-password", global = true,
          env = "FLANNELD_ETCD_ALLOW_INSECURE_PASSWORD", num_args = 0..=1,
          default_value_t = false, default_missing_value = "true", require_equals = true,
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_insecure_password: bool,
}

impl EtcdArgs {
    /// The endpoints, split on commas (flannel's `-etcd-endpoints` is one comma-separated value).
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    /// What [`crate::etcd::connect_with_retry`] takes.
    pub fn options(&self) -> crate::etcd::EtcdOptions {
        crate::etcd::EtcdOptions {
            endpoints: self.endpoints(),
            cafile: self.cafile.clone(),
            certfile: self.certfile.clone(),
            keyfile: self.keyfile.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            password_file: self.password_file.clone(),
            allow_insecure_password: self.allow_insecure_password,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_parse(words: &[&str]) -> Result<Args, clap::Error> {
        let mut v = vec![OsString::from("flanneld")];
        v.extend(words.iter().map(OsString::from));
        Args::try_parse_words(v)
    }

    fn parse(words: &[&str]) -> Args {
        try_parse(words).unwrap()
    }

    #[test]
    fn flannel_defaults() {
        let a = parse(&[]);
        assert_eq!(
            a.etcd.endpoints(),
            ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(a.etcd.prefix, "/coreos.com/network");
        assert_eq!(a.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(a.subnet_lease_renew_margin, 60);
        assert!(!a.ip_masq);
        assert_eq!(a.healthz_port, 0);
        assert_eq!(a.healthz_ip, "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(a.subnet_lease_ttl, 86400);
        assert_eq!(a.route_table, PathBuf::from("/run/flannel/routes"));
    }

    #[test]
    fn go_style_flags() {
        let a = parse(&[
            "-etcd-endpoints=http://198.18.0.10:2379",
            "-etcd-prefix",
            "/x/network",
            "-iface=eth1",
            "-iface",
            "198.18.0.1",
            "-public-ip=198.18.0.7",
            "-ip-masq",
            "-v=2",
            "--subnet-file=/tmp/s.env",
        ]);
        assert_eq!(a.etcd.endpoints(), ["http://198.18.0.10:2379"]);
        assert_eq!(a.etcd.prefix, "/x/network");
        assert_eq!(a.iface, ["eth1", "198.18.0.1"]);
        assert_eq!(a.public_ip, Some(Ipv4Addr::new(198, 18, 0, 7)));
        assert!(a.ip_masq);
        assert_eq!(a.verbosity, 2);
        assert_eq!(a.subnet_file, PathBuf::from("/tmp/s.env"));
        assert!(!parse(&["-ip-masq=false"]).ip_masq);
        assert_eq!(parse(&["-v", "1"]).verbosity, 1);
    }

    #[test]
    fn iface_flags_repeat_and_are_never_split_on_commas() {
        let a = parse(&[
            "-iface=eth0,eth1",
            "--iface",
            "198.18.0.1",
            "-iface-regex=eth[0-9]{1,2}",
            "-iface-regex",
            "^(en|eth)[0-9]+$",
            "-iface-can-reach=198.18.0.10",
        ]);
        assert_eq!(a.iface, ["eth0,eth1", "198.18.0.1"]);
        assert_eq!(a.iface_regex, ["eth[0-9]{1,2}", "^(en|eth)[0-9]+$"]);
        assert_eq!(a.iface_can_reach, Some(Ipv4Addr::new(198, 18, 0, 10)));
        let e = try_parse(&["-iface-can-reach=fc00::1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("iface-can-reach"), "{e}");
    }

    #[test]
    fn cheap_flannel_flags_are_honoured_or_ignored() {
        let a = parse(&[
            "-public-ipv6=fc00::7",
            "-ip-masq-fully-random-disable",
            "-vmodule=subnet=2,main=3",
            "-log_backtrace_at=main.go:10",
        ]);
        assert_eq!(a.public_ipv6, Some("fc00::7".parse().unwrap()));
        assert!(a.ip_masq_fully_random_disable);
        assert_eq!(a.vmodule.as_deref(), Some("subnet=2,main=3"));
        assert_eq!(a.ignored().len(), 2);
        assert!(a.refused.is_none());
        let d = parse(&[]);
        assert!(!d.ip_masq_fully_random_disable && d.public_ipv6.is_none());
        assert!(d.ignored().is_empty());
        assert!(!parse(&["-ip-masq-fully-random-disable=false"]).ip_masq_fully_random_disable);
        assert!(try_parse(&["-public-ipv6=198.18.0.1"]).is_err());
    }

    #[test]
    fn version_flag_as_flannel() {
        assert!(parse(&["-version"]).version);
        assert!(parse(&["--version"]).version);
        assert!(!parse(&[]).version);
        assert_eq!(
            Args::version_line(),
            format!("v{}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn unsupported_flannel_flags_are_refused_with_one_line() {
        let refused = |words: &[&str]| parse(words).refused;
        assert_eq!(
            refused(&["--kube-subnet-mgr"]).as_deref(),
            Some("--kube-subnet-mgr: Kubernetes subnet manager is not supported; use etcd (--etcd-endpoints)")
        );
        for words in [
            &["-kube-subnet-mgr"][..],
            &["-kube-subnet-mgr=true"],
            &["-kube-subnet-mgr=1"],
            &["-kube-api-url=https://198.18.0.1:6443"],
            &["-kube-api-url", "https://198.18.0.1:6443"],
            &["-kube-api-url"],
            &["-kubeconfig-file=/etc/kubeconfig"],
            &["-kube-annotation-prefix=example.com"],
            &["-net-config-path=/etc/kube-flannel/net-conf.json"],
            &["-set-node-network-unavailable=false"],
            &["-ip-blackhole-route"],
        ] {
            let flag = words[0].trim_start_matches('-').split('=').next().unwrap();
            let line = refused(words).unwrap_or_else(|| panic!("{words:?} accepted"));
            assert!(line.starts_with(&format!("--{flag}: ")), "{line}");
            assert!(!line.contains('\n'), "{line}");
            if flag.starts_with("kube") {
                assert!(line.contains("Kubernetes subnet manager"), "{line}");
            }
        }
        // Asking for nothing we lack is fine.
        for words in [
            &["-kube-subnet-mgr=false"][..],
            &["-ip-blackhole-route=false"],
            &["-kube-api-url="],
            &[],
        ] {
            assert_eq!(refused(words), None, "{words:?}");
        }
        // The first refused flag in flannel's order is named.
        assert!(
            refused(&["-ip-blackhole-route", "-kube-api-url=x", "-kube-subnet-mgr"])
                .unwrap()
                .starts_with("--kube-subnet-mgr: ")
        );
        // They are not in --help.
        let help = Args::command().render_long_help().to_string();
        assert!(!help.contains("kube"), "{help}");
        assert!(help.contains("--iface-can-reach"));
    }

    /// No Debug print of the flags or of the etcd options shows the password, from
    /// the command line or the environment; -etcd-password-file and -etcd-password exclude each
    /// other.
    #[test]
    fn the_password_is_never_in_a_debug_print() {
        let a = parse(&[
            "-etcd-username=flannel",
            "-etcd-password=pw-on-the-command-line",
            "-etcd-allow-insecure-password",
        ]);
        assert_eq!(
            a.etcd.password.as_ref().map(|p| p.expose()),
            Some("pw-on-the-command-line")
        );
        assert!(a.etcd.allow_insecure_password);
        let debug = format!("{a:?} {:?} {:#?}", a.etcd.options(), a.etcd.options());
        assert!(!debug.contains("pw-on-the-command-line"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        let f = parse(&["-etcd-password-file=/etc/flannel/etcd-pw"]);
        assert_eq!(
            f.etcd.options().password_file.as_deref(),
            Some(std::path::Path::new("/etc/flannel/etcd-pw"))
        );
        assert!(!f.etcd.allow_insecure_password);
        let e = try_parse(&["-etcd-password=x", "-etcd-password-file=/p"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--etcd-password-file") && e.contains("--etcd-password"),
            "{e}"
        );
    }

    #[test]
    fn rejects_out_of_range_margin() {
        let v: Vec<OsString> = ["flanneld", "-subnet-lease-renew-margin=1440"]
            .iter()
            .map(OsString::from)
            .collect();
        let e = Args::try_parse_from(normalize_args(v))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1440") && e.contains("subnet-lease-renew-margin"),
            "{e}"
        );
    }

    #[test]
    fn routes_subcommand() {
        let a = parse(&["routes", "--route-table", "/tmp/r"]);
        assert!(
            matches!(a.command, Some(Command::Routes { route_table }) if route_table == std::path::Path::new("/tmp/r"))
        );
    }
}
