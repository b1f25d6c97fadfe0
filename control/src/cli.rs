//! `flanneld` flags: flannel's names and defaults, plus `--route-table` and `--subnet-lease-ttl`.
//!
//! flannel parses flags with Go's `flag` package, so users type `-etcd-endpoints=...` with a single
//! dash; [`normalize_args`] turns such words into clap's `--etcd-endpoints=...`. Every flag can also
//! come from the environment as `FLANNELD_<NAME>` (upper case, `-` → `_`), as in flannel.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "flanneld",
    version,
    about = "flannel-compatible overlay control plane: etcd config, subnet lease, watches, subnet.env, route table",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Comma-separated etcd endpoints.
    #[arg(
        long,
        env = "FLANNELD_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: String,
    /// etcd prefix holding `config` and `subnets/`.
    #[arg(
        long,
        env = "FLANNELD_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    pub etcd_prefix: String,
    /// Client private key for etcd TLS.
    #[arg(long, env = "FLANNELD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// Client certificate for etcd TLS.
    #[arg(long, env = "FLANNELD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// CA certificate that signed etcd's server certificate.
    #[arg(long, env = "FLANNELD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// etcd user name (authentication).
    #[arg(long, env = "FLANNELD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// etcd password (authentication).
    #[arg(long, env = "FLANNELD_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// Interface (name or IP) for inter-host traffic; repeatable, first usable wins.
    #[arg(long, env = "FLANNELD_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,
    /// Regex matched against interface names and IPs when -iface is not given; repeatable.
    #[arg(long, env = "FLANNELD_IFACE_REGEX", value_delimiter = ',')]
    pub iface_regex: Vec<String>,
    /// IP other hosts use to reach this one (defaults to the interface's IP).
    #[arg(long, env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
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
    /// Install ACCEPT rules for the network in the filter FORWARD path (chain FLANNEL-FWD).
    #[arg(long, env = "FLANNELD_IPTABLES_FORWARD_RULES", num_args = 0..=1, default_value_t = true,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub iptables_forward_rules: bool,
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
        default_value = "/run/flannel/dataplane.stats"
    )]
    pub dataplane_stats: PathBuf,
    /// TTL of the subnet lease in etcd, in seconds (flannel: 24 h). Short values are for tests.
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_TTL", default_value_t = 86400,
          value_parser = clap::value_parser!(u64).range(5..=31_536_000))]
    pub subnet_lease_ttl: u64,
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
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Args {
    pub fn parse_from_env() -> Self {
        Self::parse_from(normalize_args(std::env::args_os()))
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.etcd_endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Args {
        let mut v = vec![OsString::from("flanneld")];
        v.extend(words.iter().map(OsString::from));
        Args::try_parse_from(normalize_args(v)).unwrap()
    }

    #[test]
    fn flannel_defaults() {
        let a = parse(&[]);
        assert_eq!(
            a.endpoints(),
            ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(a.etcd_prefix, "/coreos.com/network");
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
        assert_eq!(a.endpoints(), ["http://198.18.0.10:2379"]);
        assert_eq!(a.etcd_prefix, "/x/network");
        assert_eq!(a.iface, ["eth1", "198.18.0.1"]);
        assert_eq!(a.public_ip, Some(Ipv4Addr::new(198, 18, 0, 7)));
        assert!(a.ip_masq);
        assert_eq!(a.verbosity, 2);
        assert_eq!(a.subnet_file, PathBuf::from("/tmp/s.env"));
        assert!(!parse(&["-ip-masq=false"]).ip_masq);
        assert_eq!(parse(&["-v", "1"]).verbosity, 1);
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
