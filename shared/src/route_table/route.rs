//! What the control plane publishes: the table's meta and its routes, and the check every
//! route passes before it is published.

use std::net::Ipv4Addr;

use super::error::{Result, RouteTableError};
use super::MAX_CAPACITY;
use crate::Ipv4Net;

/// What the control plane publishes besides the routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    /// The flannel network (`Network` in the config).
    pub network: Ipv4Net,
    /// Length of every subnet (`SubnetLen`).
    pub subnet_len: u8,
    /// The writer host's own lease, if it has one.
    pub our_subnet: Option<Ipv4Net>,
    pub mtu: u32,
    /// The VXLAN/UDP port.
    pub port: u16,
}

/// One lease: `subnet` is reached through the host at `public_ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
}

/// Checks one route against the table `meta` describes, as [`RouteTableWriter::publish`](super::RouteTableWriter::publish) does:
/// the subnet must be `meta.subnet_len` long and inside `meta.network`, and the public IP not
/// 0.0.0.0 (the table's "no lease" marker). Anything
/// [`lease::validate_lease`](crate::lease::validate_lease) accepts for the same network and
/// subnet length passes.
pub fn check_route(meta: &TableMeta, r: &Route) -> Result<()> {
    if r.subnet.prefix() != meta.subnet_len {
        return Err(RouteTableError::WrongSubnetLen {
            subnet: r.subnet,
            public_ip: r.public_ip,
            subnet_len: meta.subnet_len,
        });
    }
    if !meta.network.contains_net(&r.subnet) {
        return Err(RouteTableError::RouteOutsideNetwork {
            subnet: r.subnet,
            public_ip: r.public_ip,
            network: meta.network,
        });
    }
    if r.public_ip.is_unspecified() {
        return Err(RouteTableError::UnspecifiedPublicIp { subnet: r.subnet });
    }
    Ok(())
}

/// Validates `meta` and returns the number of entries its table has:
/// `2^(subnet_len - prefix)`, at most [`MAX_CAPACITY`].
pub(crate) fn entries_needed(meta: &TableMeta) -> Result<u32> {
    let prefix = meta.network.prefix();
    if meta.subnet_len < prefix || meta.subnet_len > 32 {
        return Err(RouteTableError::InvalidMeta {
            what: format!(
                "subnet length /{} must be between the network's prefix ({}) and 32",
                meta.subnet_len, meta.network
            ),
        });
    }
    if let Some(our) = meta.our_subnet {
        if !meta.network.contains_net(&our) {
            return Err(RouteTableError::InvalidMeta {
                what: format!(
                    "our subnet {our} is not inside the network {}",
                    meta.network
                ),
            });
        }
    }
    let bits = u32::from(meta.subnet_len - prefix);
    let entries = 1u64 << bits;
    if entries > u64::from(MAX_CAPACITY) {
        return Err(RouteTableError::TooManyEntries {
            network: meta.network,
            subnet_len: meta.subnet_len,
            entries,
        });
    }
    Ok(entries as u32)
}
