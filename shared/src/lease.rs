//! Leases under `<prefix>/subnets/`: keys as flannel writes them, values as flannel's
//! `LeaseAttrs` JSON, and the one check that decides whether a lease may be routed.
//!
//! Keys follow flannel's regex (v0.28.9, `pkg/subnet/subnet.go`)
//! `(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$`, matched here against the whole part after
//! `subnets/`: `10.1.15.0-24`, or with `EnableIPv6` the dual-stack `10.1.15.0-24&fc00:0:0:f00::-64`.
//! flannel-rs routes the IPv4 part and keeps the IPv6 part as written; it never writes a
//! dual-stack key itself.
//!
//! flannel writes the UDP backend's value as exactly
//! `{"PublicIP":"198.18.0.1","PublicIPv6":null}`: `BackendType`, `BackendData` and
//! `BackendV6Data` are omitted when empty. Values are read leniently (keys case-insensitive,
//! unknown keys ignored, other backends' data kept opaque) so a mixed cluster parses.
//!
//! A lease is input from another machine. [`validate_lease`] is the single place that decides
//! whether one can be routed; it returns a typed [`LeaseRejection`] (with a stable
//! [`LeaseRejection::reason`] label for metrics) instead of letting one bad member stop the
//! table for the others. Pure: no I/O.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::Value;

use crate::config::NetworkConfig;
use crate::net::{Ipv4Net, NetParseError};
use crate::untrusted::{clip, escape};

/// The key of `subnet` under `prefix`: `/coreos.com/network/subnets/10.1.15.0-24`.
pub fn subnet_key(prefix: &str, subnet: &Ipv4Net) -> String {
    format!("{}{}", subnets_prefix(prefix), subnet.to_key())
}

/// The directory of all leases: `/coreos.com/network/subnets/`.
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", prefix.trim_end_matches('/'))
}

/// The config key: `/coreos.com/network/config`.
pub fn config_key(prefix: &str) -> String {
    format!("{}/config", prefix.trim_end_matches('/'))
}

/// The IPv4 subnet of a full lease key, plain or dual-stack; `None` for keys that are not leases.
pub fn subnet_from_key(prefix: &str, key: &str) -> Option<Ipv4Net> {
    parse_key(prefix, key).ok().map(|k| k.ipv4)
}

/// Parses a full lease key (`<prefix>/subnets/10.1.15.0-24[&fc00::-64]`).
pub fn parse_key(prefix: &str, key: &str) -> Result<LeaseKey, LeaseKeyError> {
    let dir = subnets_prefix(prefix);
    let rest = key
        .strip_prefix(&dir)
        .ok_or_else(|| LeaseKeyError::NotUnderPrefix {
            key: clip(key),
            dir,
        })?;
    LeaseKey::parse(rest)
}

/// An IPv6 subnet as found in a dual-stack key. Kept, never routed: no host-bit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Subnet {
    pub addr: Ipv6Addr,
    /// 0..=128.
    pub prefix: u8,
}

impl fmt::Display for Ipv6Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The subnets a lease key names: always an IPv4 subnet, and an IPv6 one in dual-stack keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey {
    pub ipv4: Ipv4Net,
    pub ipv6: Option<Ipv6Subnet>,
}

/// Why a key under `subnets/` is not a lease key. Each message names the key, [`clip`]ped (and
/// escaped by `{:?}`): keys come from other machines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseKeyError {
    #[error("key {key:?} is not under {dir:?}")]
    NotUnderPrefix { key: String, dir: String },
    #[error("key {0:?}: not a subnet key (flannel writes 10.1.15.0-24 or 10.1.15.0-24&fc00::-64)")]
    Syntax(String),
    #[error(
        "key {key:?}: host bits are set in the IPv4 subnet (the network address is {network})"
    )]
    HostBits { key: String, network: Ipv4Net },
    #[error("key {0:?}: the part after '&' is not an IPv6 subnet like fc00:0:0:f00::-64")]
    Ipv6(String),
}

impl LeaseKey {
    /// Parses the part of a key after `subnets/`. The whole string must match flannel's regex
    /// (flannel's search is unanchored at the start; here the key is exactly the subnet part).
    /// IPv4 prefixes are 0..=32 with no host bits set; the IPv6 part is lower-case hex and
    /// colons, a valid address, and a prefix 0..=128.
    pub fn parse(s: &str) -> Result<Self, LeaseKeyError> {
        let (v4, v6) = match s.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let ipv4 = Ipv4Net::from_key(v4).map_err(|e| match e {
            NetParseError::HostBits(_, network) => LeaseKeyError::HostBits {
                key: clip(s),
                network,
            },
            _ => LeaseKeyError::Syntax(clip(s)),
        })?;
        let ipv6 = match v6 {
            None => None,
            Some(v6) => Some(parse_ipv6_part(v6).ok_or_else(|| LeaseKeyError::Ipv6(clip(s)))?),
        };
        Ok(Self { ipv4, ipv6 })
    }

    /// The key text after `subnets/`, in flannel's spelling.
    pub fn to_key(&self) -> String {
        match &self.ipv6 {
            None => self.ipv4.to_key(),
            Some(v6) => format!("{}&{}-{}", self.ipv4.to_key(), v6.addr, v6.prefix),
        }
    }
}

fn parse_ipv6_part(s: &str) -> Option<Ipv6Subnet> {
    let (addr, prefix) = s.rsplit_once('-')?;
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b':';
    if addr.is_empty() || !addr.bytes().all(hex) {
        return None;
    }
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 128)?;
    Some(Ipv6Subnet {
        addr: addr.parse().ok()?,
        prefix,
    })
}

/// The value stored with a lease.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseAttrs {
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6` of dual-stack hosts; `None` when null, absent or not an IPv6 address
    /// (read leniently: flannel-rs does not route IPv6).
    pub public_ipv6: Option<Ipv6Addr>,
    /// Empty for the UDP backend.
    pub backend_type: String,
    /// Opaque backend data (e.g. a vxlan VTEP MAC); `None` for UDP.
    pub backend_data: Option<Value>,
    /// Opaque IPv6 backend data of dual-stack hosts; `None` for UDP.
    pub backend_v6_data: Option<Value>,
}

/// Why a lease value cannot be read. Each message names the field and the value, as
/// [`escape`] shows it (cut and escaped: values come from other machines).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseParseError {
    #[error("lease value is not a JSON object: {0}")]
    NotObject(String),
    #[error("lease value has no PublicIP (missing, null or empty)")]
    NoPublicIp,
    #[error("lease PublicIP {0}: not an IPv4 address")]
    BadPublicIp(String),
    #[error(
        "lease PublicIP {0}: an IPv6 address (PublicIP must be IPv4; IPv6 belongs in PublicIPv6)"
    )]
    Ipv6PublicIp(String),
}

impl LeaseAttrs {
    /// A UDP-backend lease value for `public_ip`.
    pub fn udp(public_ip: Ipv4Addr) -> Self {
        Self {
            public_ip,
            public_ipv6: None,
            backend_type: String::new(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// The JSON flannel writes, byte for byte (Go's field order, omitempty fields left out).
    pub fn to_json(&self) -> String {
        let mut s = format!("{{\"PublicIP\":\"{}\",\"PublicIPv6\":", self.public_ip);
        match self.public_ipv6 {
            Some(v6) => s.push_str(&format!("\"{v6}\"")),
            None => s.push_str("null"),
        }
        if !self.backend_type.is_empty() {
            s.push_str(",\"BackendType\":");
            s.push_str(&Value::String(self.backend_type.clone()).to_string());
        }
        for (name, data) in [
            ("BackendData", &self.backend_data),
            ("BackendV6Data", &self.backend_v6_data),
        ] {
            if let Some(d) = data.as_ref().filter(|d| !d.is_null()) {
                s.push_str(&format!(",\"{name}\":{d}"));
            }
        }
        s.push('}');
        s
    }

    /// Reads a lease value leniently. Only `PublicIP` is required (an IPv4 address).
    pub fn parse(bytes: &[u8]) -> Result<Self, LeaseParseError> {
        Self::parse_exact(bytes).unwrap_or_else(|| Self::parse_lenient(bytes))
    }

    /// [`LeaseAttrs::parse`] through a JSON tree: names in any case, any key order and extra.
    fn parse_lenient(bytes: &[u8]) -> Result<Self, LeaseParseError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|_| {
            LeaseParseError::NotObject(escape(&String::from_utf8_lossy(
                &bytes[..bytes.len().min(4 * crate::untrusted::MAX_CHARS + 4)],
            )))
        })?;
        let Value::Object(o) = v else {
            return Err(LeaseParseError::NotObject(escape(&v.to_string())));
        };
        let get = |k: &str| {
            o.get(k).or_else(|| {
                o.iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v)
            })
        };
        let public_ip = match get("PublicIP") {
            None | Some(Value::Null) => return Err(LeaseParseError::NoPublicIp),
            Some(Value::String(s)) => public_ip_from_str(s)?,
            Some(other) => return Err(LeaseParseError::BadPublicIp(escape(&other.to_string()))),
        };
        let public_ipv6 = match get("PublicIPv6") {
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        let backend_type = match get("BackendType") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let opaque = |k: &str| get(k).filter(|v| !v.is_null()).cloned();
        Ok(Self {
            public_ip,
            public_ipv6,
            backend_type,
            backend_data: opaque("BackendData"),
            backend_v6_data: opaque("BackendV6Data"),
        })
    }
}

/// A lease value whose keys are exactly flannel's field names, each at most once, and whose
/// `PublicIP` is a string without escapes or null: read without building a JSON tree (a /8 of
/// leases is 65,536 values at a cold start).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExactAttrs<'a> {
    #[serde(rename = "PublicIP", borrow, default)]
    public_ip: Option<&'a str>,
    #[serde(rename = "PublicIPv6", default)]
    public_ipv6: Option<Value>,
    #[serde(rename = "BackendType", default)]
    backend_type: Option<Value>,
    #[serde(rename = "BackendData", default)]
    backend_data: Option<Value>,
    #[serde(rename = "BackendV6Data", default)]
    backend_v6_data: Option<Value>,
}

impl LeaseAttrs {
    /// [`LeaseAttrs::parse`] for a value of [`ExactAttrs`]' form, with the same result; `None`
    /// for any other value (another case of a name, an unknown or repeated key, a JSON array,
    /// a PublicIP that is not a plain string), which the lenient path reads.
    fn parse_exact(bytes: &[u8]) -> Option<Result<Self, LeaseParseError>> {
        // serde would also read a struct from a JSON array; the lenient path refuses those.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        let e: ExactAttrs<'_> = serde_json::from_slice(bytes).ok()?;
        let public_ip = match e.public_ip {
            None => return Some(Err(LeaseParseError::NoPublicIp)),
            Some(s) => match public_ip_from_str(s) {
                Ok(ip) => ip,
                Err(err) => return Some(Err(err)),
            },
        };
        Some(Ok(Self {
            public_ip,
            public_ipv6: match e.public_ipv6 {
                Some(Value::String(s)) => s.parse().ok(),
                _ => None,
            },
            backend_type: match e.backend_type {
                Some(Value::String(s)) => s,
                _ => String::new(),
            },
            backend_data: e.backend_data,
            backend_v6_data: e.backend_v6_data,
        }))
    }
}

/// A `PublicIP` string: empty is "no PublicIP", else it must be an IPv4 address.
fn public_ip_from_str(s: &str) -> Result<Ipv4Addr, LeaseParseError> {
    if s.is_empty() {
        return Err(LeaseParseError::NoPublicIp);
    }
    match s.parse::<Ipv4Addr>() {
        Ok(ip) => Ok(ip),
        Err(_) if s.parse::<Ipv6Addr>().is_ok() => Err(LeaseParseError::Ipv6PublicIp(escape(s))),
        Err(_) => Err(LeaseParseError::BadPublicIp(escape(s))),
    }
}

/// Why a PublicIP cannot be a peer's underlay address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotHost {
    /// `0.0.0.0` (also the route table's "no lease" marker).
    Unspecified,
    /// `127.0.0.0/8`: every host would send to itself.
    Loopback,
    /// `224.0.0.0/4`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
}

impl fmt::Display for NotHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotHost::Unspecified => "the unspecified address is not a host",
            NotHost::Loopback => "a loopback address is not another host",
            NotHost::Multicast => "a multicast address is not a host",
            NotHost::Broadcast => "the broadcast address is not a host",
        })
    }
}

/// Checks that `ip` can be a peer's underlay address: not unspecified, loopback, multicast or
/// the limited broadcast address.
fn check_public_ip(ip: Ipv4Addr) -> Result<(), NotHost> {
    if ip.is_unspecified() {
        Err(NotHost::Unspecified)
    } else if ip.is_loopback() {
        Err(NotHost::Loopback)
    } else if ip.is_multicast() {
        Err(NotHost::Multicast)
    } else if ip.is_broadcast() {
        Err(NotHost::Broadcast)
    } else {
        Ok(())
    }
}

/// A lease that may be routed: its IPv4 subnet is reached through `attrs.public_ip`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidLease {
    pub key: LeaseKey,
    pub attrs: LeaseAttrs,
}

impl ValidLease {
    /// The IPv4 subnet this lease routes.
    pub fn subnet(&self) -> Ipv4Net {
        self.key.ipv4
    }

    pub fn public_ip(&self) -> Ipv4Addr {
        self.attrs.public_ip
    }
}

/// Why a lease is not routed. Each message names the field and the value; the key is not
/// repeated (callers log it next to the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseRejection {
    #[error(transparent)]
    Key(#[from] LeaseKeyError),
    #[error(transparent)]
    Value(#[from] LeaseParseError),
    #[error("lease PublicIP {public_ip}: {why}")]
    PublicIpNotHost { public_ip: Ipv4Addr, why: NotHost },
    /// A PublicIP inside the overlay's own Network: packets for the lease would be sent into the
    /// overlay again (a loop through every host's TUN device).
    #[error("lease PublicIP {public_ip}: inside Network {network} (the underlay address of a host cannot be an overlay address)")]
    PublicIpInNetwork {
        public_ip: Ipv4Addr,
        network: Ipv4Net,
    },
    #[error("subnet {subnet}: outside Network {network}")]
    OutsideNetwork { subnet: Ipv4Net, network: Ipv4Net },
    #[error("subnet {subnet}: prefix /{} but SubnetLen is {subnet_len}", subnet.prefix())]
    SubnetLen { subnet: Ipv4Net, subnet_len: u8 },
    /// Never returned by [`validate_lease`]: a lease set that holds two valid keys for one IPv4
    /// subnet (e.g. `10.1.15.0-24` and `10.1.15.0-24&fc00::-64`) routes the older one and
    /// reports the other with this.
    #[error("subnet {subnet}: already leased by {holder}")]
    Duplicate { subnet: Ipv4Net, holder: String },
}

impl LeaseRejection {
    /// Every [`LeaseRejection::reason`] label, in a fixed order (for metrics).
    pub const REASONS: &'static [&'static str] = &[
        "bad_key",
        "malformed_value",
        "no_public_ip",
        "public_ip_not_ipv4",
        "public_ip_is_ipv6",
        "public_ip_unspecified",
        "public_ip_loopback",
        "public_ip_multicast",
        "public_ip_broadcast",
        "public_ip_in_network",
        "outside_network",
        "wrong_subnet_len",
        "duplicate_subnet",
    ];

    /// A short stable label (one of [`LeaseRejection::REASONS`]): the metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            LeaseRejection::Key(_) => "bad_key",
            LeaseRejection::Value(LeaseParseError::NotObject(_)) => "malformed_value",
            LeaseRejection::Value(LeaseParseError::NoPublicIp) => "no_public_ip",
            LeaseRejection::Value(LeaseParseError::BadPublicIp(_)) => "public_ip_not_ipv4",
            LeaseRejection::Value(LeaseParseError::Ipv6PublicIp(_)) => "public_ip_is_ipv6",
            LeaseRejection::PublicIpNotHost { why, .. } => match why {
                NotHost::Unspecified => "public_ip_unspecified",
                NotHost::Loopback => "public_ip_loopback",
                NotHost::Multicast => "public_ip_multicast",
                NotHost::Broadcast => "public_ip_broadcast",
            },
            LeaseRejection::PublicIpInNetwork { .. } => "public_ip_in_network",
            LeaseRejection::OutsideNetwork { .. } => "outside_network",
            LeaseRejection::SubnetLen { .. } => "wrong_subnet_len",
            LeaseRejection::Duplicate { .. } => "duplicate_subnet",
        }
    }
}

/// The verdict of [`validate_lease`] for a key and a value the caller has parsed already, in
/// the same order of checks: the key, its fit in `cfg`, the value, its PublicIP. Without a
/// `cfg`, only the key and the value count (the key is a flannel subnet key, the value parses
/// and its PublicIP is a host). For callers that keep what they parsed (a lease set reads each
/// value once and remembers its PublicIP even when the lease is rejected).
pub fn validate_parsed(
    cfg: Option<&NetworkConfig>,
    key: Result<LeaseKey, LeaseKeyError>,
    attrs: Result<LeaseAttrs, LeaseParseError>,
) -> Result<ValidLease, LeaseRejection> {
    let key = key?;
    if let Some(cfg) = cfg {
        check_fit(cfg, &key)?;
    }
    let lease = check_attrs(key, attrs?)?;
    match cfg {
        Some(cfg) => check_public_ip_outside(cfg, lease),
        None => Ok(lease),
    }
}

/// Checks that a lease's PublicIP is not inside `cfg`'s Network (see
/// [`LeaseRejection::PublicIpInNetwork`]).
fn check_public_ip_outside(
    cfg: &NetworkConfig,
    lease: ValidLease,
) -> Result<ValidLease, LeaseRejection> {
    if cfg.network.contains(lease.attrs.public_ip) {
        return Err(LeaseRejection::PublicIpInNetwork {
            public_ip: lease.attrs.public_ip,
            network: cfg.network,
        });
    }
    Ok(lease)
}

fn check_attrs(key: LeaseKey, attrs: LeaseAttrs) -> Result<ValidLease, LeaseRejection> {
    check_public_ip(attrs.public_ip).map_err(|why| LeaseRejection::PublicIpNotHost {
        public_ip: attrs.public_ip,
        why,
    })?;
    Ok(ValidLease { key, attrs })
}

fn check_value(key: LeaseKey, value: &[u8]) -> Result<ValidLease, LeaseRejection> {
    check_attrs(key, LeaseAttrs::parse(value)?)
}

/// Checks that a lease's IPv4 subnet belongs to `cfg`: inside `Network`, `SubnetLen` long (the
/// route table's shape). `SubnetMin`/`SubnetMax` are not checked: they bound what a host may
/// acquire, not what others route.
fn check_fit(cfg: &NetworkConfig, key: &LeaseKey) -> Result<(), LeaseRejection> {
    let subnet = key.ipv4;
    if !cfg.network.contains_net(&subnet) {
        return Err(LeaseRejection::OutsideNetwork {
            subnet,
            network: cfg.network,
        });
    }
    if subnet.prefix() != cfg.subnet_len {
        return Err(LeaseRejection::SubnetLen {
            subnet,
            subnet_len: cfg.subnet_len,
        });
    }
    Ok(())
}

/// The one check between etcd and the route table: a lease is routed only if its key is a
/// flannel subnet key under `prefix`, its subnet fits `cfg` (inside `Network`, `SubnetLen`
/// long), its value parses and its PublicIP is a host (not unspecified, loopback, multicast or
/// broadcast) outside `Network`. Checked in that order; the first failure is returned.
/// Whatever passes is accepted by
/// [`RouteTableWriter::publish`](crate::route_table::RouteTableWriter::publish) for a table
/// of `cfg`'s network and subnet length.
pub fn validate_lease(
    cfg: &NetworkConfig,
    prefix: &str,
    key: &str,
    value: &[u8],
) -> Result<ValidLease, LeaseRejection> {
    let key = parse_key(prefix, key)?;
    check_fit(cfg, &key)?;
    check_public_ip_outside(cfg, check_value(key, value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree-free path gives exactly what the lenient path gives, or leaves the value to it.
    #[test]
    fn the_exact_form_reads_as_the_lenient_path_does() {
        let cases: &[(&str, bool)] = &[
            (r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#, true),
            (r#" {"PublicIP":"198.18.0.1"}"#, true),
            (
                r#"{"PublicIP":"198.18.0.3","PublicIPv6":"fc00::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},"BackendV6Data":{"VNI":1}}"#,
                true,
            ),
            (r#"{"PublicIP":"","PublicIPv6":null}"#, true),
            (r#"{"PublicIP":null}"#, true),
            (r#"{}"#, true),
            (r#"{"PublicIP":"2001:db8::1"}"#, true),
            (r#"{"PublicIP":"not-an-ip"}"#, true),
            (
                r#"{"PublicIP":"198.18.0.1","PublicIPv6":7,"BackendType":3}"#,
                true,
            ),
            (r#"{"PublicIP":"198.18.0.1","BackendData":null}"#, true),
            // Left to the lenient path:
            (r#"["198.18.0.1",null]"#, false),
            (r#"{"publicip":"198.18.0.1"}"#, false),
            (r#"{"PublicIP":"198.18.0.1","Extra":1}"#, false),
            (
                r#"{"PublicIP":"198.18.0.1","PublicIP":"198.18.0.2"}"#,
                false,
            ),
            (r#"{"PublicIP":"198.18.0.\u0031"}"#, false),
            (r#"{"PublicIP":17}"#, false),
            ("{not json", false),
            ("null", false),
        ];
        for (value, exact) in cases {
            let got = LeaseAttrs::parse_exact(value.as_bytes());
            assert_eq!(got.is_some(), *exact, "{value}");
            if let Some(got) = got {
                assert_eq!(got, LeaseAttrs::parse_lenient(value.as_bytes()), "{value}");
            }
            assert_eq!(
                LeaseAttrs::parse(value.as_bytes()),
                LeaseAttrs::parse_lenient(value.as_bytes()),
                "{value}"
            );
        }
    }

    const P: &str = "/coreos.com/network";

    fn cfg() -> NetworkConfig {
        NetworkConfig::parse(r#"{"Network":"10.1.0.0/16"}"#).unwrap()
    }

    /// BackendData numbers survive to_json → parse exactly (serde_json's `float_roundtrip`;
    /// found by the lease fuzz target: 1.999999999999e+21 came back as 1.9999999999990002e+21).
    #[test]
    fn backend_data_floats_round_trip() {
        let raw = br#"{"PublicIP":"198.18.0.9","PublicIPv6":null,"BackendData":{"VNI":1.999999999999e+21}}"#;
        let a = LeaseAttrs::parse(raw).unwrap();
        assert_eq!(LeaseAttrs::parse(a.to_json().as_bytes()).unwrap(), a);
    }

    #[test]
    fn udp_value_is_byte_exact() {
        let a = LeaseAttrs::udp(Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#
        );
        assert_eq!(LeaseAttrs::parse(a.to_json().as_bytes()).unwrap(), a);
    }

    #[test]
    fn keys() {
        let n: Ipv4Net = "10.1.15.0/24".parse().unwrap();
        assert_eq!(
            subnet_key("/coreos.com/network", &n),
            "/coreos.com/network/subnets/10.1.15.0-24"
        );
        assert_eq!(
            subnet_key("/coreos.com/network/", &n),
            "/coreos.com/network/subnets/10.1.15.0-24"
        );
        assert_eq!(
            config_key("/coreos.com/network"),
            "/coreos.com/network/config"
        );
        assert_eq!(
            subnet_from_key(
                "/coreos.com/network",
                "/coreos.com/network/subnets/10.1.15.0-24"
            ),
            Some(n)
        );
        assert_eq!(
            subnet_from_key("/coreos.com/network", "/coreos.com/network/subnets/junk"),
            None
        );
        assert_eq!(
            subnet_from_key("/coreos.com/network", "/other/subnets/10.1.15.0-24"),
            None
        );
    }

    /// flannel with `EnableIPv6` writes `10.1.252.0-24&fc00:0:0:f00::-64`: the IPv4 part is
    /// the subnet (regression: such keys were "not a subnet" and their hosts unreachable).
    #[test]
    fn dual_stack_keys_parse_to_their_ipv4_subnet() {
        let key = "/coreos.com/network/subnets/10.1.252.0-24&fc00:0:0:f00::-64";
        let k = parse_key(P, key).unwrap();
        assert_eq!(k.ipv4, "10.1.252.0/24".parse().unwrap());
        assert_eq!(
            k.ipv6,
            Some(Ipv6Subnet {
                addr: "fc00:0:0:f00::".parse().unwrap(),
                prefix: 64
            })
        );
        assert_eq!(k.to_key(), "10.1.252.0-24&fc00:0:0:f00::-64");
        assert_eq!(subnet_from_key(P, key), Some(k.ipv4));
        let plain = parse_key(P, "/coreos.com/network/subnets/10.1.15.0-24").unwrap();
        assert_eq!(
            plain,
            LeaseKey {
                ipv4: "10.1.15.0/24".parse().unwrap(),
                ipv6: None
            }
        );
        assert_eq!(plain.to_key(), "10.1.15.0-24");
    }

    #[test]
    fn bad_keys_are_named_and_typed() {
        let cases: [(&str, LeaseKeyError); 9] = [
            ("junk", LeaseKeyError::Syntax("junk".into())),
            ("10.1.15.0/24", LeaseKeyError::Syntax("10.1.15.0/24".into())),
            (
                "x10.1.15.0-24",
                LeaseKeyError::Syntax("x10.1.15.0-24".into()),
            ),
            ("10.1.15.0-33", LeaseKeyError::Syntax("10.1.15.0-33".into())),
            (
                "10.1.15.7-24",
                LeaseKeyError::HostBits {
                    key: "10.1.15.7-24".into(),
                    network: "10.1.15.0/24".parse().unwrap(),
                },
            ),
            // flannel's regex takes lower-case hex only.
            (
                "10.1.15.0-24&FC00::-64",
                LeaseKeyError::Ipv6("10.1.15.0-24&FC00::-64".into()),
            ),
            (
                "10.1.15.0-24&fc00::",
                LeaseKeyError::Ipv6("10.1.15.0-24&fc00::".into()),
            ),
            (
                "10.1.15.0-24&fc00::-129",
                LeaseKeyError::Ipv6("10.1.15.0-24&fc00::-129".into()),
            ),
            (
                "10.1.15.0-24&fc00:::1-64",
                LeaseKeyError::Ipv6("10.1.15.0-24&fc00:::1-64".into()),
            ),
        ];
        for (k, want) in cases {
            assert_eq!(LeaseKey::parse(k), Err(want), "{k}");
        }
        assert_eq!(
            parse_key(P, "/other/subnets/10.1.15.0-24")
                .unwrap_err()
                .to_string(),
            "key \"/other/subnets/10.1.15.0-24\" is not under \"/coreos.com/network/subnets/\""
        );
        assert_eq!(
            LeaseKey::parse("10.1.15.7-24").unwrap_err().to_string(),
            "key \"10.1.15.7-24\": host bits are set in the IPv4 subnet (the network address is 10.1.15.0/24)"
        );
    }

    #[test]
    fn lenient_parse() {
        let vx = br#"{"PublicIP":"198.18.0.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}"#;
        let a = LeaseAttrs::parse(vx).unwrap();
        assert_eq!(a.public_ip, Ipv4Addr::new(198, 18, 0, 9));
        assert_eq!(a.backend_type, "vxlan");
        assert_eq!(a.to_json().as_bytes(), vx);
        let lower = LeaseAttrs::parse(br#"{"publicip":"198.18.0.2","extra":1}"#).unwrap();
        assert_eq!(lower.public_ip, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(
            LeaseAttrs::parse(b"nope"),
            Err(LeaseParseError::NotObject("nope".into()))
        );
        assert_eq!(LeaseAttrs::parse(b"{}"), Err(LeaseParseError::NoPublicIp));
        assert_eq!(
            LeaseAttrs::parse(br#"{"PublicIP":""}"#),
            Err(LeaseParseError::NoPublicIp)
        );
        assert_eq!(
            LeaseAttrs::parse(br#"{"PublicIP":"::1"}"#),
            Err(LeaseParseError::Ipv6PublicIp("::1".into()))
        );
        assert_eq!(
            LeaseAttrs::parse(br#"{"PublicIP":"198.18.0.300"}"#),
            Err(LeaseParseError::BadPublicIp("198.18.0.300".into()))
        );
    }

    /// A dual-stack vxlan host's value: every field kept, written back byte for byte.
    #[test]
    fn dual_stack_value_keeps_every_field() {
        let raw = br#"{"PublicIP":"198.18.0.7","PublicIPv6":"fc00::7","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}"#;
        let a = LeaseAttrs::parse(raw).unwrap();
        assert_eq!(a.public_ip, Ipv4Addr::new(198, 18, 0, 7));
        assert_eq!(a.public_ipv6, Some("fc00::7".parse().unwrap()));
        assert!(a.backend_v6_data.is_some());
        assert_eq!(a.to_json().as_bytes(), raw);
        // An unreadable PublicIPv6 does not cost the IPv4 route.
        let odd = LeaseAttrs::parse(br#"{"PublicIP":"198.18.0.8","PublicIPv6":"nope"}"#).unwrap();
        assert_eq!(odd.public_ip, Ipv4Addr::new(198, 18, 0, 8));
        assert_eq!(odd.public_ipv6, None);
    }

    /// Every unusable lease gets its typed reason, label and a message naming field and value.
    #[test]
    fn validate_lease_rejects_each_unusable_lease_with_its_reason() {
        let cfg = cfg();
        let key = |k: &str| format!("{P}/subnets/{k}");
        let good = br#"{"PublicIP":"198.18.0.2","PublicIPv6":null}"#;
        let cases: [(&str, &[u8], &str, &str); 15] = [
            (
                "10.1.99.0-24",
                br#"{"PublicIP":"10.1.99.1"}"#,
                "public_ip_in_network",
                "lease PublicIP 10.1.99.1: inside Network 10.1.0.0/16 (the underlay address of a host cannot be an overlay address)",
            ),
            (
                "10.1.250.0-24",
                br#"{"PublicIP":"0.0.0.0","PublicIPv6":null}"#,
                "public_ip_unspecified",
                "lease PublicIP 0.0.0.0: the unspecified address is not a host",
            ),
            (
                "10.1.250.0-24",
                br#"{"PublicIP":"","PublicIPv6":null}"#,
                "no_public_ip",
                "lease value has no PublicIP (missing, null or empty)",
            ),
            (
                "10.1.250.0-24",
                br#"{"PublicIP":null}"#,
                "no_public_ip",
                "lease value has no PublicIP (missing, null or empty)",
            ),
            (
                "10.1.250.0-24",
                br#"{"PublicIP":"127.0.0.1","PublicIPv6":null}"#,
                "public_ip_loopback",
                "lease PublicIP 127.0.0.1: a loopback address is not another host",
            ),
            (
                "10.1.250.0-24",
                br#"{"PublicIP":"239.1.2.3","PublicIPv6":null}"#,
                "public_ip_multicast",
                "lease PublicIP 239.1.2.3: a multicast address is not a host",
            ),
            (
                "10.1.250.0-24",
                br#"{"PublicIP":"255.255.255.255","PublicIPv6":null}"#,
                "public_ip_broadcast",
                "lease PublicIP 255.255.255.255: the broadcast address is not a host",
            ),
            (
                "10.1.250.0-24",
                br#"{"PublicIP":"fc00::1","PublicIPv6":null}"#,
                "public_ip_is_ipv6",
                "lease PublicIP fc00::1: an IPv6 address (PublicIP must be IPv4; IPv6 belongs in PublicIPv6)",
            ),
            (
                "10.1.250.0-24",
                br#"{"PublicIP":7}"#,
                "public_ip_not_ipv4",
                "lease PublicIP 7: not an IPv4 address",
            ),
            (
                "10.1.250.0-24",
                b"{\"PublicIP\":\"198.18.0.2\"",
                "malformed_value",
                "lease value is not a JSON object: {\"PublicIP\":\"198.18.0.2\"",
            ),
            (
                "10.1.250.0-24",
                b"[1,2]",
                "malformed_value",
                "lease value is not a JSON object: [1,2]",
            ),
            (
                "10.2.250.0-24",
                good,
                "outside_network",
                "subnet 10.2.250.0/24: outside Network 10.1.0.0/16",
            ),
            (
                "10.0.0.0-8",
                good,
                "outside_network",
                "subnet 10.0.0.0/8: outside Network 10.1.0.0/16",
            ),
            (
                "10.1.250.0-25",
                good,
                "wrong_subnet_len",
                "subnet 10.1.250.0/25: prefix /25 but SubnetLen is 24",
            ),
            (
                "10.1.250.0-24&fc00::-",
                good,
                "bad_key",
                "key \"10.1.250.0-24&fc00::-\": the part after '&' is not an IPv6 subnet like fc00:0:0:f00::-64",
            ),
        ];
        for (k, v, reason, msg) in cases {
            let e = validate_lease(&cfg, P, &key(k), v).unwrap_err();
            assert_eq!(
                (e.reason(), e.to_string().as_str()),
                (reason, msg),
                "{k} {}",
                String::from_utf8_lossy(v)
            );
            assert!(LeaseRejection::REASONS.contains(&e.reason()));
        }
        // The key is checked before the value, the subnet before the PublicIP.
        let e = validate_lease(&cfg, P, &key("10.2.0.0-24"), b"junk").unwrap_err();
        assert_eq!(e.reason(), "outside_network");
    }

    /// The one-parse entry point gives exactly the verdicts of the two checks it stands for.
    #[test]
    fn validate_parsed_agrees_with_validate_lease_and_the_config_free_check() {
        let cfg = cfg();
        let keys = [
            "10.1.250.0-24",
            "10.1.250.0-25",
            "10.2.250.0-24",
            "10.1.250.7-24",
            "10.1.250.0-24&fc00::-64",
            "10.1.250.0-24&fc00::-",
            "junk",
        ];
        let values: [&[u8]; 6] = [
            br#"{"PublicIP":"198.18.0.2","PublicIPv6":null}"#,
            br#"{"publicip":"198.18.0.3"}"#,
            br#"{"PublicIP":"0.0.0.0"}"#,
            br#"{"PublicIP":7}"#,
            b"junk",
            b"",
        ];
        for k in keys {
            for v in values {
                let parsed = || (LeaseKey::parse(k), LeaseAttrs::parse(v));
                let (pk, pa) = parsed();
                let full = format!("{P}/subnets/{k}");
                assert_eq!(
                    validate_parsed(Some(&cfg), pk, pa),
                    validate_lease(&cfg, P, &full, v),
                    "{k} {v:?}"
                );
                let (pk, pa) = parsed();
                // Without a config: the key, then the value and its PublicIP.
                let key_and_value_only = parse_key(P, &full)
                    .map_err(LeaseRejection::from)
                    .and_then(|key| check_value(key, v));
                assert_eq!(
                    validate_parsed(None, pk, pa),
                    key_and_value_only,
                    "{k} {v:?}"
                );
            }
        }
    }

    #[test]
    fn validate_lease_accepts_plain_and_dual_stack_leases() {
        let cfg = cfg();
        let v = validate_lease(
            &cfg,
            P,
            "/coreos.com/network/subnets/10.1.15.0-24",
            br#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#,
        )
        .unwrap();
        assert_eq!(
            (v.subnet(), v.public_ip()),
            (
                "10.1.15.0/24".parse().unwrap(),
                Ipv4Addr::new(198, 18, 0, 1)
            )
        );
        let v = validate_lease(
            &cfg,
            P,
            "/coreos.com/network/subnets/10.1.252.0-24&fc00:0:0:f00::-64",
            br#"{"PublicIP":"198.18.0.3","PublicIPv6":"fc00::3","BackendType":"udp"}"#,
        )
        .unwrap();
        assert_eq!(
            (v.subnet(), v.public_ip()),
            (
                "10.1.252.0/24".parse().unwrap(),
                Ipv4Addr::new(198, 18, 0, 3)
            )
        );
        // SubnetMin/SubnetMax bound acquisition, not routing: the first subnet is routed.
        assert!(validate_lease(
            &cfg,
            P,
            "/coreos.com/network/subnets/10.1.0.0-24",
            br#"{"PublicIP":"198.18.0.4"}"#
        )
        .is_ok());
    }

    /// Untrusted text reaches messages cut and escaped: no newline or terminal escape from a
    /// value or a key can forge a log line, and a huge one is cut (golden strings).
    #[test]
    fn rejection_messages_escape_and_cut_untrusted_text() {
        let cfg = cfg();
        let msg = |k: &str, v: &[u8]| {
            validate_lease(&cfg, P, &format!("{P}/subnets/{k}"), v)
                .unwrap_err()
                .to_string()
        };
        let long = "9".repeat(200);
        let long_key = format!("{long}-24");
        let cases: [(&str, Vec<u8>, String); 6] = [
            (
                "10.1.5.0-24",
                br#"{"PublicIP":"1.2.3.4\nWARN forged: lease added"}"#.to_vec(),
                r"lease PublicIP 1.2.3.4\nWARN forged: lease added: not an IPv4 address".into(),
            ),
            (
                "10.1.5.0-24",
                b"{\"PublicIP\":\"\\u001b[31mred\"}".to_vec(),
                r"lease PublicIP \u{1b}[31mred: not an IPv4 address".into(),
            ),
            (
                "10.1.5.0-24",
                format!(r#"{{"PublicIP":"{long}"}}"#).into_bytes(),
                format!("lease PublicIP {}…: not an IPv4 address", "9".repeat(64)),
            ),
            (
                "10.1.5.0-24",
                b"{\"PublicIP\"\n:ERROR".to_vec(),
                r#"lease value is not a JSON object: {"PublicIP"\n:ERROR"#.into(),
            ),
            (
                "10.1.5.0-24\nERROR forged",
                b"{}".to_vec(),
                r#"key "10.1.5.0-24\nERROR forged": not a subnet key (flannel writes 10.1.15.0-24 or 10.1.15.0-24&fc00::-64)"#.into(),
            ),
            (
                &long_key,
                b"{}".to_vec(),
                format!(
                    "key \"{}…\": not a subnet key (flannel writes 10.1.15.0-24 or 10.1.15.0-24&fc00::-64)",
                    "9".repeat(64)
                ),
            ),
        ];
        for (k, v, want) in cases {
            let got = msg(k, &v);
            assert_eq!(got, want);
            assert!(!got.chars().any(char::is_control), "{got:?}");
        }
        let e = parse_key(P, &format!("/other/{long}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200 && !e.contains('\n'), "{e}");
    }

    #[test]
    fn every_reason_label_is_listed_once() {
        let mut r = LeaseRejection::REASONS.to_vec();
        r.sort_unstable();
        r.dedup();
        assert_eq!(r.len(), LeaseRejection::REASONS.len());
    }
}
