//! The candidate subnets of a network config (SubnetLen subnets from SubnetMin to SubnetMax, by
//! index) and which of them are free. A candidate is blocked by a count (keys naming it and
//! local reservations); the free ones are kept as ranges, so the lowest free ones are found in
//! O(log n) whatever the number of leases. Pure.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use flannel_shared::config::NetworkConfig;
use flannel_shared::Ipv4Net;

/// Candidate subnets (indices 0..count from SubnetMin) and which of them are free.
#[derive(Debug)]
pub(super) struct Candidates {
    min: u64,
    /// log2 of the subnet size.
    shift: u32,
    count: u64,
    /// How many keys (and reservations) block each blocked candidate.
    blocked: HashMap<u32, u32>,
    /// Free candidates as inclusive ranges, start → end; disjoint and not adjacent.
    pub(super) free: BTreeMap<u32, u32>,
}

impl Candidates {
    pub(super) fn new(cfg: &NetworkConfig) -> Self {
        let count = cfg.subnet_count();
        let mut free = BTreeMap::new();
        if count > 0 {
            free.insert(0, (count - 1) as u32);
        }
        Self {
            min: u64::from(u32::from(cfg.subnet_min)),
            shift: 32 - u32::from(cfg.subnet_len),
            count,
            blocked: HashMap::new(),
            free,
        }
    }

    /// The candidates `net` overlaps, as an inclusive index range.
    fn overlapped(&self, net: &Ipv4Net) -> Option<(u32, u32)> {
        let (a, b) = (u64::from(net.addr_u32()), u64::from(u32::from(net.last())));
        let end = self.min + (self.count << self.shift);
        if self.count == 0 || b < self.min || a >= end {
            return None;
        }
        let first = a.saturating_sub(self.min) >> self.shift;
        let last = ((b - self.min) >> self.shift).min(self.count - 1);
        Some((first as u32, last as u32))
    }

    pub(super) fn index_of(&self, net: &Ipv4Net) -> Option<u32> {
        let a = u64::from(net.addr_u32());
        (a >= self.min && (a - self.min) >> self.shift < self.count)
            .then(|| ((a - self.min) >> self.shift) as u32)
    }

    pub(super) fn subnet(&self, i: u32, len: u8) -> Ipv4Net {
        let addr = self.min + (u64::from(i) << self.shift);
        Ipv4Net::new(Ipv4Addr::from(addr as u32), len).expect("candidate is aligned")
    }

    pub(super) fn is_free(&self, i: u32) -> bool {
        !self.blocked.contains_key(&i)
    }

    pub(super) fn block(&mut self, i: u32) {
        let n = self.blocked.entry(i).or_insert(0);
        *n += 1;
        if *n > 1 {
            return;
        }
        let (&s, &e) = self
            .free
            .range(..=i)
            .next_back()
            .expect("an unblocked candidate lies in a free range");
        debug_assert!(e >= i);
        self.free.remove(&s);
        if s < i {
            self.free.insert(s, i - 1);
        }
        if i < e {
            self.free.insert(i + 1, e);
        }
    }

    pub(super) fn unblock(&mut self, i: u32) {
        let Some(n) = self.blocked.get_mut(&i) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        self.blocked.remove(&i);
        let (mut s, mut e) = (i, i);
        if let Some((&ps, &pe)) = self.free.range(..i).next_back() {
            if pe.checked_add(1) == Some(i) {
                s = ps;
                self.free.remove(&ps);
            }
        }
        if let Some(next) = i.checked_add(1) {
            if let Some(ne) = self.free.remove(&next) {
                e = ne;
            }
        }
        self.free.insert(s, e);
    }

    pub(super) fn for_range(&mut self, net: &Ipv4Net, f: fn(&mut Self, u32)) {
        if let Some((a, b)) = self.overlapped(net) {
            for i in a..=b {
                f(self, i);
            }
        }
    }

    /// The lowest `n` free candidates.
    pub(super) fn first_free(&self, n: usize) -> impl Iterator<Item = u32> + '_ {
        self.free.iter().flat_map(|(&s, &e)| s..=e).take(n)
    }

    #[cfg(test)]
    pub(super) fn free_count(&self) -> u64 {
        self.free.iter().map(|(&s, &e)| u64::from(e - s) + 1).sum()
    }
}
