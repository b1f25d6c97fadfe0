//! A reader's private copy of one published table, and the lookup the data plane does per
//! packet. Pure: it touches no shared memory.

use std::fmt;
use std::net::Ipv4Addr;

use super::{Route, TableMeta};
use crate::Ipv4Net;

/// A private, consistent copy of one published table: every entry and the meta come from the
/// publish named by [`Self::generation`]. Lookups touch no shared memory.
#[derive(Clone)]
pub struct RouteSnapshot {
    generation: u64,
    meta: TableMeta,
    /// `meta.network` as an integer.
    network: u32,
    /// `32 - subnet_len` (32 allowed: the shift is done in u64).
    shift: u32,
    /// Exactly `2^(subnet_len - prefix)` entries (empty only in [`Self::empty`]).
    entries: Vec<u32>,
    /// Number of non-zero entries.
    len: usize,
}

impl fmt::Debug for RouteSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteSnapshot")
            .field("generation", &self.generation)
            .field("meta", &self.meta)
            .field("routes", &self.len)
            .finish()
    }
}

impl Default for RouteSnapshot {
    fn default() -> Self {
        Self::empty()
    }
}

impl RouteSnapshot {
    /// Generation 0 with no routes (every lookup is `None`), for a data plane started before
    /// the first publish: [`RouteTableReader::refresh`](super::RouteTableReader::refresh) fills it once a table is published.
    /// Its meta is a placeholder (`0.0.0.0/0`, subnet length 0, MTU 0, port 0).
    pub fn empty() -> Self {
        Self {
            generation: 0,
            meta: TableMeta {
                network: Ipv4Net::containing(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid"),
                subnet_len: 0,
                our_subnet: None,
                mtu: 0,
                port: 0,
            },
            network: 0,
            shift: 32,
            entries: Vec::new(),
            len: 0,
        }
    }

    /// Makes this the copy of publish `generation`: `entries` (exactly
    /// `2^(subnet_len - prefix)` of them, `leased` non-zero) are swapped in, and the previous
    /// entries are left in `entries` for the next copy to reuse, so steady state does not
    /// allocate.
    pub(crate) fn install(
        &mut self,
        generation: u64,
        meta: TableMeta,
        entries: &mut Vec<u32>,
        leased: usize,
    ) {
        self.generation = generation;
        self.network = meta.network.addr_u32();
        self.shift = 32 - u32::from(meta.subnet_len);
        self.meta = meta;
        std::mem::swap(&mut self.entries, entries);
        self.len = leased;
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn meta(&self) -> &TableMeta {
        &self.meta
    }

    /// The public IP of the host whose subnet holds `dst`; `None` if `dst` is outside the
    /// network or its subnet has no lease. One subtraction, one shift, one bounds check.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        // Addresses outside the network wrap to offsets >= 2^(32 - prefix), whose index is
        // >= entries.len() = 2^(subnet_len - prefix): the bounds check is the network check.
        let index = u64::from(u32::from(dst).wrapping_sub(self.network)) >> self.shift;
        match self.entries.get(index as usize) {
            Some(&ip) if ip != 0 => Some(Ipv4Addr::from(ip)),
            _ => None,
        }
    }

    /// Like [`Self::lookup`], also returning the subnet (e.g. to check that an inner source
    /// address lies in the sender's subnet).
    #[inline]
    pub fn lookup_route(&self, ip: Ipv4Addr) -> Option<Route> {
        let public_ip = self.lookup(ip)?;
        Some(Route {
            subnet: Ipv4Net::containing(ip, self.meta.subnet_len)?,
            public_ip,
        })
    }

    /// All leased subnets, in index (address) order.
    pub fn routes(&self) -> impl Iterator<Item = Route> + '_ {
        let subnet_len = self.meta.subnet_len;
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, &ip)| ip != 0)
            .filter_map(move |(i, &ip)| {
                let addr = self.network.wrapping_add(((i as u64) << self.shift) as u32);
                Some(Route {
                    subnet: Ipv4Net::new(Ipv4Addr::from(addr), subnet_len)?,
                    public_ip: Ipv4Addr::from(ip),
                })
            })
    }

    /// Entries in the copy, leased or not: `2^(subnet_len - prefix)`.
    #[cfg(test)]
    pub(crate) fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Number of routes (leased subnets).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
