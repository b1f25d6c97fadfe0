//! Leases under `<prefix>/subnets/`: keys `10.1.15.0-24`, values as flannel's `LeaseAttrs` JSON.
//!
//! flannel (v0.28.9) writes the UDP backend's value as exactly
//! `{"PublicIP":"198.18.0.1","PublicIPv6":null}`: `BackendType`, `BackendData` and
//! `BackendV6Data` are omitted when empty. Values are read leniently (keys case-insensitive,
//! unknown keys ignored, other backends' data kept opaque) so a mixed cluster parses.
//! Pure: no I/O.

use std::net::Ipv4Addr;

use serde_json::Value;

use crate::net::Ipv4Net;

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

/// Parses the subnet out of a full lease key; `None` for keys that are not leases.
pub fn subnet_from_key(prefix: &str, key: &str) -> Option<Ipv4Net> {
    key.strip_prefix(&subnets_prefix(prefix))
        .and_then(|k| Ipv4Net::from_key(k).ok())
}

/// The value stored with a lease.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseAttrs {
    pub public_ip: Ipv4Addr,
    /// Empty for the UDP backend.
    pub backend_type: String,
    /// Opaque backend data (e.g. a vxlan VTEP MAC); `None` for UDP.
    pub backend_data: Option<Value>,
}

/// Why a lease value was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseParseError {
    #[error("lease value is not a JSON object: {0}")]
    NotObject(String),
    #[error("lease value has no PublicIP")]
    NoPublicIp,
    #[error("lease PublicIP {0}: not an IPv4 address")]
    BadPublicIp(String),
}

impl LeaseAttrs {
    /// A UDP-backend lease value for `public_ip`.
    pub fn udp(public_ip: Ipv4Addr) -> Self {
        Self {
            public_ip,
            backend_type: String::new(),
            backend_data: None,
        }
    }

    /// The JSON flannel writes, byte for byte (Go's field order, omitempty fields left out).
    pub fn to_json(&self) -> String {
        let mut s = format!("{{\"PublicIP\":\"{}\",\"PublicIPv6\":null", self.public_ip);
        if !self.backend_type.is_empty() {
            s.push_str(",\"BackendType\":");
            s.push_str(&Value::String(self.backend_type.clone()).to_string());
        }
        if let Some(d) = &self.backend_data {
            if !d.is_null() {
                s.push_str(",\"BackendData\":");
                s.push_str(&d.to_string());
            }
        }
        s.push('}');
        s
    }

    /// Reads a lease value leniently.
    pub fn parse(bytes: &[u8]) -> Result<Self, LeaseParseError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|_| {
            LeaseParseError::NotObject(
                String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into(),
            )
        })?;
        let Value::Object(o) = v else {
            return Err(LeaseParseError::NotObject(v.to_string()));
        };
        let get = |k: &str| {
            o.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v)
        };
        let public_ip = match get("PublicIP") {
            None | Some(Value::Null) => return Err(LeaseParseError::NoPublicIp),
            Some(Value::String(s)) => s
                .parse()
                .map_err(|_| LeaseParseError::BadPublicIp(s.clone()))?,
            Some(other) => return Err(LeaseParseError::BadPublicIp(other.to_string())),
        };
        let backend_type = match get("BackendType") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        Ok(Self {
            public_ip,
            backend_type,
            backend_data: get("BackendData").filter(|v| !v.is_null()).cloned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            LeaseAttrs::parse(br#"{"PublicIP":"::1"}"#),
            Err(LeaseParseError::BadPublicIp("::1".into()))
        );
    }
}
