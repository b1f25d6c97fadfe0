//! The network config flannel keeps at `<prefix>/config` (default `/coreos.com/network/config`).
//!
//! Parsing and validation follow flannel v0.28.9 (`pkg/subnet/config.go`):
//! - JSON keys match case-insensitively; unknown keys are ignored; `Network` is required.
//! - `SubnetLen` defaults to 24 when the network prefix is /22 or shorter, to prefix+2 for
//!   /23../28; a network longer than /28 is an error. An explicit `SubnetLen` above 30 or
//!   below prefix+2 (fewer than four subnets) is an error.
//! - `SubnetMin` defaults to the network plus one subnet (the first subnet is never leased),
//!   `SubnetMax` to the last subnet. Both must lie inside `Network` on a `SubnetLen` boundary.
//! - `Backend` defaults to `{"Type":"udp","Port":8285}` when absent; present, it needs a `Type`
//!   (flannel refuses `"unknown backend type: "`, also for `"Backend": null`); this
//!   implementation speaks only udp.
//! - Where flannel is lenient we accept and record a [`NetworkConfig::warnings`] line naming the
//!   field: `Network` with host bits set is masked (Go's `net.ParseCIDR`), and `SubnetMin` above
//!   `SubnetMax` is accepted (flannel then fails every lease with "out of subnets").
//! - `EnableIPv4` (default true), `EnableIPv6`, `IPv6Network`, `IPv6SubnetLen`,
//!   `IPv6SubnetMin`/`Max` are validated by flannel's rules, so a config flannel refuses is
//!   refused here too. flannel's udp backend carries IPv4 only and never looks at `EnableIPv6`;
//!   here the IPv6 part is ignored with a warning, and a config without IPv4 is refused (the udp
//!   backend cannot carry it).
//! - `EnableNFTables` (default false) selects nftables for the masquerade and forward rules.
//!
//! Every error names the field and the offending value. Pure: no I/O.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value};

use crate::net::Ipv4Net;
use crate::untrusted::{clip, escape};

/// flannel's default UDP port.
pub const DEFAULT_UDP_PORT: u16 = 8285;

/// A validated network config with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub backend: Backend,
    /// `EnableNFTables`: masquerade and forward rules in nftables instead of iptables.
    pub enable_nftables: bool,
    /// `EnableIPv6` was true (validated, then ignored: the udp backend carries IPv4 only).
    pub ipv6_ignored: bool,
    /// What was accepted only because flannel accepts it, one line each, naming the field.
    /// Logged by whoever starts with this config.
    pub warnings: Vec<String>,
}

/// The backend section. Only `udp` is implemented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub port: u16,
}

/// Why a config was refused. Each message names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config is not valid JSON: {0}")]
    Json(String),
    #[error("config must be a JSON object, got {0}")]
    NotObject(String),
    #[error("Network is missing")]
    NetworkMissing,
    #[error("Network {value}: {reason}")]
    Network { value: String, reason: String },
    #[error("Network {0}: network is too small, the longest usable prefix is /28")]
    NetworkTooSmall(Ipv4Net),
    #[error("SubnetLen {0}: must be a number")]
    SubnetLenNotNumber(String),
    #[error("SubnetLen {0}: must be 30 or less")]
    SubnetLenTooLong(i64),
    #[error("SubnetLen {value}: Network {network} must hold at least four subnets, so SubnetLen must be at least {min}")]
    SubnetLenTooShort {
        value: i64,
        network: Ipv4Net,
        min: u8,
    },
    #[error("{field} {value}: must be an IPv4 address")]
    BoundSyntax { field: &'static str, value: String },
    #[error("{field} {value}: not inside Network {network}")]
    BoundOutsideNetwork {
        field: &'static str,
        value: Ipv4Addr,
        network: Ipv4Net,
    },
    #[error("{field} {value}: not on a /{subnet_len} (SubnetLen) boundary")]
    BoundNotAligned {
        field: &'static str,
        value: Ipv4Addr,
        subnet_len: u8,
    },
    #[error("Backend {0}: must be a JSON object with a Type")]
    BackendNotObject(String),
    #[error("Backend.Type is missing: flannel refuses a Backend without a Type (\"unknown backend type\"); use {{\"Type\":\"udp\"}}")]
    BackendTypeMissing,
    #[error("{field} {value}: must be true or false")]
    NotBool { field: &'static str, value: String },
    #[error("EnableIPv4 false: the udp backend carries IPv4 only")]
    NoIpv4,
    #[error("EnableIPv4 false and EnableIPv6 false: no IP stack is defined")]
    NoStack,
    #[error("{field} {value}: {reason}")]
    Ipv6 {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("Backend.Type {0:?}: unsupported backend, flannel-rs implements only \"udp\"")]
    BackendType(String),
    #[error("Backend.Port {0}: must be a port number 1..65535")]
    BackendPort(String),
}

impl NetworkConfig {
    /// Parses and validates the JSON text stored at `<prefix>/config`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let v: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let obj = match &v {
            Value::Object(o) => o,
            other => return Err(ConfigError::NotObject(short(other))),
        };
        let mut warnings = Vec::new();
        let enable_ipv4 = parse_bool(obj, "EnableIPv4", true)?;
        if !enable_ipv4 {
            return Err(if parse_bool(obj, "EnableIPv6", false)? {
                ConfigError::NoIpv4
            } else {
                ConfigError::NoStack
            });
        }
        let (network, network_warning) = parse_network(get_ci(obj, "Network"))?;
        warnings.extend(network_warning);
        let subnet_len = parse_subnet_len(get_ci(obj, "SubnetLen"), network)?;
        let step = 1u32 << (32 - u32::from(subnet_len));
        let default_min = Ipv4Addr::from(network.addr_u32() + step);
        let default_max = Ipv4Addr::from(u32::from(network.last()) - (step - 1));
        let subnet_min = parse_bound(
            "SubnetMin",
            get_ci(obj, "SubnetMin"),
            default_min,
            network,
            subnet_len,
        )?;
        let subnet_max = parse_bound(
            "SubnetMax",
            get_ci(obj, "SubnetMax"),
            default_max,
            network,
            subnet_len,
        )?;
        if u32::from(subnet_min) > u32::from(subnet_max) {
            warnings.push(format!(
                "SubnetMin {subnet_min} is above SubnetMax {subnet_max}: no subnet can be leased \
                 (flannel accepts this config too, and fails every lease with \"out of subnets\")"
            ));
        }
        let enable_ipv6 = parse_bool(obj, "EnableIPv6", false)?;
        if enable_ipv6 {
            check_ipv6(obj)?;
            warnings.push(
                "EnableIPv6 true: ignored, the udp backend carries IPv4 only (flannel's udp \
                 backend never reads EnableIPv6); no IPv6 subnet is leased"
                    .into(),
            );
        }
        let backend = parse_backend(obj.iter().find(|(k, _)| k.eq_ignore_ascii_case("Backend")))?;
        Ok(Self {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
            enable_nftables: parse_bool(obj, "EnableNFTables", false)?,
            ipv6_ignored: enable_ipv6,
            warnings,
        })
    }

    /// True when `subnet` is a subnet this config may lease: inside Network, of length
    /// SubnetLen, between SubnetMin and SubnetMax.
    pub fn fits(&self, subnet: &Ipv4Net) -> bool {
        subnet.prefix() == self.subnet_len
            && self.network.contains_net(subnet)
            && (u32::from(self.subnet_min)..=u32::from(self.subnet_max))
                .contains(&subnet.addr_u32())
    }

    /// Every subnet between SubnetMin and SubnetMax, in address order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let step = 1u64 << (32 - u32::from(self.subnet_len));
        let min = u64::from(u32::from(self.subnet_min));
        let max = u64::from(u32::from(self.subnet_max));
        (min..=max).step_by(step as usize).map(move |a| {
            Ipv4Net::new(Ipv4Addr::from(a as u32), self.subnet_len).expect("aligned by validation")
        })
    }

    /// Number of leasable subnets (0 when SubnetMin is above SubnetMax).
    pub fn subnet_count(&self) -> u64 {
        let step = 1u64 << (32 - u32::from(self.subnet_len));
        let (min, max) = (
            u64::from(u32::from(self.subnet_min)),
            u64::from(u32::from(self.subnet_max)),
        );
        if min > max {
            return 0;
        }
        (max - min) / step + 1
    }
}

/// Case-insensitive key lookup, as Go's encoding/json matches struct fields.
fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

/// `Network`: required, an IPv4 network of at most /28. Host bits are cleared as flannel does,
/// with a warning (the second value).
fn parse_network(v: Option<&Value>) -> Result<(Ipv4Net, Option<String>), ConfigError> {
    let s = match v {
        None | Some(Value::Null) => return Err(ConfigError::NetworkMissing),
        Some(Value::String(s)) if s.is_empty() => return Err(ConfigError::NetworkMissing),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(ConfigError::Network {
                value: short(other),
                reason: "must be a string like \"10.1.0.0/16\"".into(),
            })
        }
    };
    let (net, warning) = match s.parse::<Ipv4Net>() {
        Ok(n) => (n, None),
        Err(crate::net::NetParseError::HostBits(_, n)) => (
            n,
            Some(format!(
                "Network {s}: host bits are set; using {n}, as flannel does"
            )),
        ),
        Err(_) => {
            return Err(ConfigError::Network {
                value: escape(s),
                reason: "not an IPv4 network of the form A.B.C.D/N".into(),
            })
        }
    };
    if net.prefix() > 28 {
        return Err(ConfigError::NetworkTooSmall(net));
    }
    Ok((net, warning))
}

fn parse_subnet_len(v: Option<&Value>, network: Ipv4Net) -> Result<u8, ConfigError> {
    let p = network.prefix();
    let len = match v {
        None | Some(Value::Null) => return Ok(if p <= 22 { 24 } else { p + 2 }),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(0) => return Ok(if p <= 22 { 24 } else { p + 2 }),
            Some(i) => i,
            None => return Err(ConfigError::SubnetLenNotNumber(n.to_string())),
        },
        Some(other) => return Err(ConfigError::SubnetLenNotNumber(short(other))),
    };
    if len > 30 {
        return Err(ConfigError::SubnetLenTooLong(len));
    }
    if len < i64::from(p) + 2 {
        return Err(ConfigError::SubnetLenTooShort {
            value: len,
            network,
            min: p + 2,
        });
    }
    Ok(len as u8)
}

fn parse_bound(
    field: &'static str,
    v: Option<&Value>,
    default: Ipv4Addr,
    network: Ipv4Net,
    subnet_len: u8,
) -> Result<Ipv4Addr, ConfigError> {
    let ip = match v {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::String(s)) if s.is_empty() => return Ok(default),
        Some(Value::String(s)) => s
            .parse::<Ipv4Addr>()
            .map_err(|_| ConfigError::BoundSyntax {
                field,
                value: escape(s),
            })?,
        Some(other) => {
            return Err(ConfigError::BoundSyntax {
                field,
                value: short(other),
            })
        }
    };
    if !network.contains(ip) {
        return Err(ConfigError::BoundOutsideNetwork {
            field,
            value: ip,
            network,
        });
    }
    if Ipv4Net::new(ip, subnet_len).is_none() {
        return Err(ConfigError::BoundNotAligned {
            field,
            value: ip,
            subnet_len,
        });
    }
    Ok(ip)
}

fn parse_backend(entry: Option<(&String, &Value)>) -> Result<Backend, ConfigError> {
    let obj = match entry {
        None => {
            return Ok(Backend {
                port: DEFAULT_UDP_PORT,
            })
        }
        Some((_, Value::Object(o))) => o,
        // flannel hands `null` to its backend manager as an empty type: refused.
        Some((_, Value::Null)) => return Err(ConfigError::BackendTypeMissing),
        Some((_, other)) => return Err(ConfigError::BackendNotObject(short(other))),
    };
    match get_ci(obj, "Type") {
        None | Some(Value::Null) => return Err(ConfigError::BackendTypeMissing),
        Some(Value::String(t)) if t.is_empty() => return Err(ConfigError::BackendTypeMissing),
        Some(Value::String(t)) if t.eq_ignore_ascii_case("udp") => {}
        Some(Value::String(t)) => return Err(ConfigError::BackendType(clip(t))),
        Some(other) => return Err(ConfigError::BackendType(short(other))),
    }
    let port = match get_ci(obj, "Port") {
        None | Some(Value::Null) => DEFAULT_UDP_PORT,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => DEFAULT_UDP_PORT,
            Some(p) if p <= 65535 => p as u16,
            _ => return Err(ConfigError::BackendPort(n.to_string())),
        },
        Some(other) => return Err(ConfigError::BackendPort(short(other))),
    };
    Ok(Backend { port })
}

/// A boolean field (Go's `bool`: `null` leaves the default).
fn parse_bool(
    obj: &Map<String, Value>,
    field: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get_ci(obj, field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ConfigError::NotBool {
            field,
            value: short(other),
        }),
    }
}

/// flannel's IPv6 rules (`CheckNetworkConfig` with `EnableIPv6`): `IPv6Network` required and
/// masked, at most /124; `IPv6SubnetLen` at most 126 and at least prefix+2 (default 64, or
/// prefix+2 past /62); `IPv6SubnetMin`/`Max` inside the network on a subnet boundary.
fn check_ipv6(obj: &Map<String, Value>) -> Result<(), ConfigError> {
    let (net, prefix) = ipv6_network(obj)?;
    let subnet_len = ipv6_subnet_len(obj, prefix)?;
    check_ipv6_subnet_bounds(obj, net, prefix, subnet_len)
}

/// An [`ConfigError::Ipv6`] about `field`.
fn ipv6_error(field: &'static str, value: String, reason: &str) -> ConfigError {
    ConfigError::Ipv6 {
        field,
        value,
        reason: reason.into(),
    }
}

/// The mask of an IPv6 prefix of `len` bits (`len <= 128`).
fn ipv6_mask(len: u32) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

/// `IPv6Network`: required, `X::/N` with N at most 124. Returns the masked network and N.
fn ipv6_network(obj: &Map<String, Value>) -> Result<(u128, u32), ConfigError> {
    let err = ipv6_error;
    let text = match get_ci(obj, "IPv6Network") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(err(
                "IPv6Network",
                short(other),
                "must be a string like \"fc00::/48\"",
            ))
        }
    };
    if text.is_empty() {
        return Err(err(
            "IPv6Network",
            "\"\"".into(),
            "EnableIPv6 is true, so IPv6Network must be an IPv6 network",
        ));
    }
    let bad_net = || {
        err(
            "IPv6Network",
            escape(&text),
            "not an IPv6 network of the form X::/N",
        )
    };
    let (a, p) = text.split_once('/').ok_or_else(bad_net)?;
    let addr: Ipv6Addr = a.parse().map_err(|_| bad_net())?;
    let prefix: u32 = match p.parse() {
        Ok(n) if n <= 128 && p.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => return Err(bad_net()),
    };
    if prefix > 124 {
        return Err(err(
            "IPv6Network",
            text.clone(),
            "network is too small, the longest usable prefix is /124",
        ));
    }
    Ok((u128::from(addr) & ipv6_mask(prefix), prefix))
}

/// `IPv6SubnetLen` for a network of `prefix` bits: at most 126 and at least `prefix + 2`;
/// absent or 0 means 64, or `prefix + 2` past /62.
fn ipv6_subnet_len(obj: &Map<String, Value>, prefix: u32) -> Result<u32, ConfigError> {
    let err = ipv6_error;
    let len = match get_ci(obj, "IPv6SubnetLen") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => i,
            None => return Err(err("IPv6SubnetLen", n.to_string(), "must be a number")),
        },
        Some(other) => return Err(err("IPv6SubnetLen", short(other), "must be a number")),
    };
    Ok(match len {
        0 if prefix <= 62 => 64,
        0 => prefix + 2,
        l if l > 126 => return Err(err("IPv6SubnetLen", l.to_string(), "must be 126 or less")),
        l if l < i64::from(prefix) + 2 => {
            return Err(err(
                "IPv6SubnetLen",
                l.to_string(),
                "IPv6Network must hold at least four subnets",
            ))
        }
        l => l as u32,
    })
}

/// `IPv6SubnetMin` and `IPv6SubnetMax`, when set: inside the network (`net`/`prefix`) and on a
/// `subnet_len` boundary.
fn check_ipv6_subnet_bounds(
    obj: &Map<String, Value>,
    net: u128,
    prefix: u32,
    subnet_len: u32,
) -> Result<(), ConfigError> {
    let err = ipv6_error;
    for field in ["IPv6SubnetMin", "IPv6SubnetMax"] {
        let s = match get_ci(obj, field) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if s.is_empty() => continue,
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(err(field, short(other), "must be an IPv6 address")),
        };
        let ip = u128::from(
            s.parse::<Ipv6Addr>()
                .map_err(|_| err(field, s.clone(), "must be an IPv6 address"))?,
        );
        if ip & ipv6_mask(prefix) != net {
            return Err(err(field, s, "not inside IPv6Network"));
        }
        if ip & !ipv6_mask(subnet_len) != 0 {
            return Err(err(field, s, "not on an IPv6SubnetLen boundary"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// (config JSON, network, subnet_len, min, max, port)
    const DEFAULTS: &[(&str, &str, u8, &str, &str, u16)] = &[
        (
            r#"{"Network":"10.1.0.0/16"}"#,
            "10.1.0.0/16",
            24,
            "10.1.1.0",
            "10.1.255.0",
            8285,
        ),
        (
            r#"{ "Network": "10.1.0.0/16" }"#,
            "10.1.0.0/16",
            24,
            "10.1.1.0",
            "10.1.255.0",
            8285,
        ),
        (
            r#"{"network":"10.0.0.0/8"}"#,
            "10.0.0.0/8",
            24,
            "10.0.1.0",
            "10.255.255.0",
            8285,
        ),
        (
            r#"{"Network":"10.1.0.0/22"}"#,
            "10.1.0.0/22",
            24,
            "10.1.1.0",
            "10.1.3.0",
            8285,
        ),
        (
            r#"{"Network":"10.1.0.0/23"}"#,
            "10.1.0.0/23",
            25,
            "10.1.0.128",
            "10.1.1.128",
            8285,
        ),
        (
            r#"{"Network":"10.1.0.0/24"}"#,
            "10.1.0.0/24",
            26,
            "10.1.0.64",
            "10.1.0.192",
            8285,
        ),
        (
            r#"{"Network":"10.1.0.0/28"}"#,
            "10.1.0.0/28",
            30,
            "10.1.0.4",
            "10.1.0.12",
            8285,
        ),
        (
            r#"{"Network":"10.1.0.0/22","SubnetLen":28}"#,
            "10.1.0.0/22",
            28,
            "10.1.0.16",
            "10.1.3.240",
            8285,
        ),
        (
            r#"{"Network":"10.1.0.0/16","SubnetLen":0}"#,
            "10.1.0.0/16",
            24,
            "10.1.1.0",
            "10.1.255.0",
            8285,
        ),
        (
            r#"{"Network":"10.1.0.0/16","SubnetLen":18}"#,
            "10.1.0.0/16",
            18,
            "10.1.64.0",
            "10.1.192.0",
            8285,
        ),
        (
            r#"{"Network":"10.1.0.0/16","SubnetLen":30}"#,
            "10.1.0.0/16",
            30,
            "10.1.0.4",
            "10.1.255.252",
            8285,
        ),
        (
            r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.10.0","SubnetMax":"10.1.20.0"}"#,
            "10.1.0.0/16",
            24,
            "10.1.10.0",
            "10.1.20.0",
            8285,
        ),
        (
            r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp"}}"#,
            "10.1.0.0/16",
            24,
            "10.1.1.0",
            "10.1.255.0",
            8285,
        ),
        (
            r#"{"Network":"10.1.0.0/16","backend":{"type":"UDP","port":9000}}"#,
            "10.1.0.0/16",
            24,
            "10.1.1.0",
            "10.1.255.0",
            9000,
        ),
        (
            r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp","Port":0}}"#,
            "10.1.0.0/16",
            24,
            "10.1.1.0",
            "10.1.255.0",
            8285,
        ),
        (
            r#"{"Network":"10.1.0.0/16","Unknown":[1,2],"EnableIPv6":false}"#,
            "10.1.0.0/16",
            24,
            "10.1.1.0",
            "10.1.255.0",
            8285,
        ),
    ];

    #[test]
    fn defaults_table() {
        for (json, net, len, min, max, port) in DEFAULTS {
            let c = NetworkConfig::parse(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(c.network.to_string(), *net, "{json}");
            assert_eq!(c.subnet_len, *len, "{json}");
            assert_eq!(c.subnet_min, ip(min), "{json}");
            assert_eq!(c.subnet_max, ip(max), "{json}");
            assert_eq!(c.backend.port, *port, "{json}");
        }
    }

    /// (config JSON, exact error message)
    const ERRORS: &[(&str, &str)] = &[
        ("", "config is not valid JSON: EOF while parsing a value at line 1 column 0"),
        ("[1]", "config must be a JSON object, got [1]"),
        ("{}", "Network is missing"),
        (r#"{"Network":""}"#, "Network is missing"),
        (r#"{"Network":16}"#, "Network 16: must be a string like \"10.1.0.0/16\""),
        (r#"{"Network":"10.1.0.0"}"#, "Network 10.1.0.0: not an IPv4 network of the form A.B.C.D/N"),
        (r#"{"Network":"10.1.0.0/33"}"#, "Network 10.1.0.0/33: not an IPv4 network of the form A.B.C.D/N"),
        (r#"{"Network":"10.1.0.0/29"}"#, "Network 10.1.0.0/29: network is too small, the longest usable prefix is /28"),
        (r#"{"Network":"10.1.0.0/16","SubnetLen":31}"#, "SubnetLen 31: must be 30 or less"),
        (r#"{"Network":"10.1.0.0/16","SubnetLen":17}"#, "SubnetLen 17: Network 10.1.0.0/16 must hold at least four subnets, so SubnetLen must be at least 18"),
        (r#"{"Network":"10.1.0.0/16","SubnetLen":"24"}"#, "SubnetLen \"24\": must be a number"),
        (r#"{"Network":"10.1.0.0/16","SubnetLen":24.5}"#, "SubnetLen 24.5: must be a number"),
        (r#"{"Network":"10.1.0.0/16","SubnetMin":"10.2.0.0"}"#, "SubnetMin 10.2.0.0: not inside Network 10.1.0.0/16"),
        (r#"{"Network":"10.1.0.0/16","SubnetMax":"10.2.0.0"}"#, "SubnetMax 10.2.0.0: not inside Network 10.1.0.0/16"),
        (r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.1.5"}"#, "SubnetMin 10.1.1.5: not on a /24 (SubnetLen) boundary"),
        (r#"{"Network":"10.1.0.0/16","SubnetMax":"10.1.9.128"}"#, "SubnetMax 10.1.9.128: not on a /24 (SubnetLen) boundary"),
        (r#"{"Network":"10.1.0.0/16","SubnetMin":"ten"}"#, "SubnetMin ten: must be an IPv4 address"),
        (r#"{"Network":"10.1.0.0/16","Backend":"udp"}"#, "Backend \"udp\": must be a JSON object with a Type"),
        (r#"{"Network":"10.1.0.0/16","Backend":{}}"#, "Backend.Type is missing: flannel refuses a Backend without a Type (\"unknown backend type\"); use {\"Type\":\"udp\"}"),
        (r#"{"Network":"10.1.0.0/16","Backend":{"Port":8285}}"#, "Backend.Type is missing: flannel refuses a Backend without a Type (\"unknown backend type\"); use {\"Type\":\"udp\"}"),
        (r#"{"Network":"10.1.0.0/16","Backend":{"Type":""}}"#, "Backend.Type is missing: flannel refuses a Backend without a Type (\"unknown backend type\"); use {\"Type\":\"udp\"}"),
        (r#"{"Network":"10.1.0.0/16","Backend":null}"#, "Backend.Type is missing: flannel refuses a Backend without a Type (\"unknown backend type\"); use {\"Type\":\"udp\"}"),
        (r#"{"Network":"10.1.0.0/16","EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}"#, "EnableIPv4 false: the udp backend carries IPv4 only"),
        (r#"{"Network":"10.1.0.0/16","EnableIPv4":false}"#, "EnableIPv4 false and EnableIPv6 false: no IP stack is defined"),
        (r#"{"Network":"10.1.0.0/16","EnableNFTables":"yes"}"#, "EnableNFTables \"yes\": must be true or false"),
        (r#"{"Network":"10.1.0.0/16","EnableIPv6":true}"#, "IPv6Network \"\": EnableIPv6 is true, so IPv6Network must be an IPv6 network"),
        (r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"10.2.0.0/16"}"#, "IPv6Network 10.2.0.0/16: not an IPv6 network of the form X::/N"),
        (r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/125"}"#, "IPv6Network fc00::/125: network is too small, the longest usable prefix is /124"),
        (r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}"#, "IPv6SubnetLen 127: must be 126 or less"),
        (r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":49}"#, "IPv6SubnetLen 49: IPv6Network must hold at least four subnets"),
        (r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc01::"}"#, "IPv6SubnetMin fc01::: not inside IPv6Network"),
        (r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMax":"fc00:0:0:1::1"}"#, "IPv6SubnetMax fc00:0:0:1::1: not on an IPv6SubnetLen boundary"),
        (r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#, "Backend.Type \"vxlan\": unsupported backend, flannel-rs implements only \"udp\""),
        (r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp","Port":70000}}"#, "Backend.Port 70000: must be a port number 1..65535"),
        (r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp","Port":"x"}}"#, "Backend.Port \"x\": must be a port number 1..65535"),
    ];

    #[test]
    fn errors_table() {
        for (json, msg) in ERRORS {
            match NetworkConfig::parse(json) {
                Ok(c) => panic!("{json}: accepted as {c:?}"),
                Err(e) => assert_eq!(e.to_string(), *msg, "{json}"),
            }
        }
    }

    /// Configs flannel accepts although they look wrong: accepted, with a warning naming the field.
    #[test]
    fn lenient_like_flannel_with_a_warning() {
        let c = NetworkConfig::parse(r#"{"Network":"10.1.2.0/16"}"#).unwrap();
        assert_eq!(c.network.to_string(), "10.1.0.0/16");
        assert_eq!(c.subnet_min, ip("10.1.1.0"));
        assert_eq!(
            c.warnings,
            ["Network 10.1.2.0/16: host bits are set; using 10.1.0.0/16, as flannel does"]
        );

        let c = NetworkConfig::parse(
            r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.9.0","SubnetMax":"10.1.8.0"}"#,
        )
        .unwrap();
        assert_eq!(c.subnet_count(), 0);
        assert_eq!(c.subnets().count(), 0);
        assert!(!c.fits(&"10.1.9.0/24".parse().unwrap()));
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].starts_with(
                "SubnetMin 10.1.9.0 is above SubnetMax 10.1.8.0: no subnet can be leased"
            ),
            "{:?}",
            c.warnings
        );

        let c = NetworkConfig::parse(
            r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::5/48","IPv6SubnetLen":64,"IPv6SubnetMin":"fc00:0:0:1::","IPv6SubnetMax":"fc00:0:0:ff::"}"#,
        )
        .unwrap();
        assert!(c.ipv6_ignored);
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0]
            .starts_with("EnableIPv6 true: ignored, the udp backend carries IPv4 only"));

        let c = NetworkConfig::parse(r#"{"Network":"10.1.0.0/16","enableNFTables":true,"EnableIPv4":true,"IPv6Network":"bogus"}"#).unwrap();
        assert!(c.enable_nftables && !c.ipv6_ignored && c.warnings.is_empty());
        assert!(
            !NetworkConfig::parse(r#"{"Network":"10.1.0.0/16"}"#)
                .unwrap()
                .enable_nftables
        );
    }

    /// Config values are another machine's text too: cut and escaped in errors.
    #[test]
    fn errors_escape_and_cut_untrusted_text() {
        let long = "1".repeat(100);
        let cases = [
            (
                "{\"Network\":\"10.1.0.0/16\\nERROR forged\"}".to_string(),
                r"Network 10.1.0.0/16\nERROR forged: not an IPv4 network of the form A.B.C.D/N"
                    .to_string(),
            ),
            (
                r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.1.0\u001b[2J"}"#.to_string(),
                r"SubnetMin 10.1.1.0\u{1b}[2J: must be an IPv4 address".to_string(),
            ),
            (
                format!(r#"{{"Network":"{long}"}}"#),
                format!(
                    "Network {}…: not an IPv4 network of the form A.B.C.D/N",
                    "1".repeat(64)
                ),
            ),
            (
                r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vx\nlan"}}"#.to_string(),
                r#"Backend.Type "vx\nlan": unsupported backend, flannel-rs implements only "udp""#
                    .to_string(),
            ),
        ];
        for (json, want) in cases {
            let got = NetworkConfig::parse(&json).unwrap_err().to_string();
            assert_eq!(got, want, "{json}");
            assert!(!got.chars().any(char::is_control), "{got:?}");
        }
    }

    #[test]
    fn fits_and_enumerates() {
        let c = NetworkConfig::parse(r#"{"Network":"10.1.0.0/22","SubnetLen":28}"#).unwrap();
        assert_eq!(c.subnet_count(), 63);
        assert_eq!(c.subnets().count(), 63);
        assert!(c.fits(&"10.1.0.16/28".parse().unwrap()));
        assert!(
            !c.fits(&"10.1.0.0/28".parse().unwrap()),
            "first subnet is skipped"
        );
        assert!(!c.fits(&"10.1.4.0/28".parse().unwrap()));
        assert!(!c.fits(&"10.1.1.0/24".parse().unwrap()));
    }
}
