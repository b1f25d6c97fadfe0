//! The express lane at run time (`--express`): the maps created and the programs loaded at
//! startup (while the data plane still has CAP_BPF), the egress program attached to the TUN
//! device's tcx egress, the ingress program to the underlay interfaces' tcx ingress, and then,
//! from the table loop, the maps kept equal to the route table ([`plan`], [`diff`]), the
//! local endpoints learned ([`endpoints`]) and the programs' counters added to the stats file.
//!
//! Kernel and privileges: maps and programs need CAP_BPF and CAP_NET_ADMIN (taken at start,
//! before capabilities are dropped); tcx links need Linux 6.6 and CAP_NET_ADMIN (kept). If
//! any of it fails, [`ExpressLane::start`] says why in one error and the data plane forwards
//! through the io_uring path alone. The links are file descriptors (close-on-exec): they
//! detach when the process ends for any reason (also `kill -9`) or execs, so no program is
//! left encapsulating into a table nobody updates.
//!
//! Map updates are single-element writes the programs read one at a time: an entry change
//! (a lease added, moved or removed) is never half-seen. A change of the configuration (our
//! subnet, the network, the port, MTUs, the underlay interface) is written with the lane
//! disabled in between, when everything takes the TUN and socket path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use flannel_shared::route_table::RouteSnapshot;
use flannel_shared::stats::{Counter, WorkerStats};

use crate::express::egress::{egress_program, LinkKind};
use crate::express::endpoints::{self, Link};
use crate::express::ingress::ingress_program;
use crate::express::layout::{cfg, Endpoint, LaneCounter, SENDER_NARROW_PATH};
use crate::express::path_mtu::{self, RouteRecord};
use crate::express::plan::{self, diff, LanePlan, LocalFacts, MAX_ENTRIES};
use crate::sys;
use crate::sys::bpf::{BpfMap, MapKind};
use crate::sys::tcx::{TcxDir, TcxLink};
use crate::underlay::Arrival;

/// How often the host's links, neighbours and bridge tables are read again, and the counters
/// collected.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Most distinct peer addresses and local endpoints the hash maps hold.
const MAX_SENDERS: u32 = MAX_ENTRIES as u32;
const MAX_ENDPOINTS: u32 = 16 * 1024;
/// `BPF_F_NO_PREALLOC`: hash maps grow with their entries.
const NO_PREALLOC: u32 = 1;

/// The command line's part.
#[derive(Debug, Clone, Copy)]
pub struct ExpressOptions {
    /// `--express-source-port fixed`: the flannel port as outer source port (else one per
    /// inner flow, 49152–65535).
    pub fixed_source_port: bool,
    pub spoof_check: bool,
    pub port: u16,
}

/// Which stats counter each of the programs' slots adds to.
const COUNTERS: [(LaneCounter, Counter); LaneCounter::COUNT as usize] = [
    (LaneCounter::TxPackets, Counter::ExpressTxPackets),
    (LaneCounter::TxBytes, Counter::ExpressTxBytes),
    (LaneCounter::TxPassed, Counter::ExpressTxPassed),
    (LaneCounter::TxErrors, Counter::ExpressTxErrors),
    (LaneCounter::RxPackets, Counter::ExpressRxPackets),
    (LaneCounter::RxBytes, Counter::ExpressRxBytes),
    (LaneCounter::RxPassed, Counter::ExpressRxPassed),
    (LaneCounter::RxErrors, Counter::ExpressRxErrors),
    (LaneCounter::DropTooShort, Counter::DropTooShort),
    (LaneCounter::DropNotIpv4, Counter::DropNotIpv4),
    (LaneCounter::DropBadIhl, Counter::DropBadIhl),
    (LaneCounter::DropBadLength, Counter::DropBadLength),
    (LaneCounter::DropRxTtlExpired, Counter::DropRxTtlExpired),
    (LaneCounter::RxToStack, Counter::ExpressRxToStack),
];

/// The lane's maps, in the programs' slot order.
struct Maps {
    cfg: BpfMap,
    peers: BpfMap,
    stats: BpfMap,
    senders: BpfMap,
    endpoints: BpfMap,
}

impl Maps {
    fn create() -> std::io::Result<Self> {
        Ok(Self {
            cfg: BpfMap::create(MapKind::Array, 4, cfg::SIZE as u32, 1, 0)?,
            peers: BpfMap::create(MapKind::Array, 4, 4, MAX_ENTRIES as u32, 0)?,
            stats: BpfMap::create(MapKind::PercpuArray, 4, 8, LaneCounter::COUNT, 0)?,
            senders: BpfMap::create(MapKind::Hash, 4, 4, MAX_SENDERS, NO_PREALLOC)?,
            endpoints: BpfMap::create(
                MapKind::Hash,
                4,
                Endpoint::SIZE as u32,
                MAX_ENDPOINTS,
                NO_PREALLOC,
            )?,
        })
    }

    fn fds(&self) -> [i32; 5] {
        [
            self.cfg.raw_fd(),
            self.peers.raw_fd(),
            self.stats.raw_fd(),
            self.senders.raw_fd(),
            self.endpoints.raw_fd(),
        ]
    }
}

/// The running lane.
pub struct ExpressLane {
    opts: ExpressOptions,
    maps: Maps,
    ingress: OwnedFd,
    _egress_link: TcxLink,
    ingress_links: Vec<(u32, TcxLink)>,
    tun_ifindex: u32,
    /// What the maps hold (`None`: as created, all zero), a disabled configuration included.
    written: Option<LanePlan>,
    /// The programs take packets (`written` is enabled).
    on: bool,
    /// A map write failed: the maps may hold part of a table; the lane stays off.
    broken: Option<String>,
    /// The table generation and local facts the maps were last planned for.
    planned_for: Option<(u64, Result<LocalFacts, String>)>,
    /// The host's IPv4 routes and route exceptions, as last read.
    routes: Result<Vec<RouteRecord>, String>,
    /// Interfaces whose ingress attach failed (logged once each).
    attach_failed: Vec<u32>,
    /// Why the lane is off, as last logged (`None`: on, or not decided yet).
    off: Option<String>,
    endpoints: BTreeMap<[u8; 4], Endpoint>,
    links: Vec<Link>,
    refreshed: Option<Instant>,
    counted: [u64; LaneCounter::COUNT as usize],
    stats: WorkerStats,
}

impl ExpressLane {
    /// Creates the maps, loads both programs and attaches the egress program to the TUN
    /// device `tun_ifindex`. The lane stays disabled (everything takes the io_uring path)
    /// until [`Self::follow`] has written a table. An error names the step and the kernel's
    /// answer; the caller logs it once and forwards without the lane.
    pub fn start(
        opts: ExpressOptions,
        tun_ifindex: u32,
        stats: WorkerStats,
    ) -> Result<Self, String> {
        let maps =
            Maps::create().map_err(|e| format!("creating its BPF maps (needs CAP_BPF): {e}"))?;
        let fds = maps.fds();
        let load = |what: &str, prog: Result<crate::bpf_asm::Program, _>| {
            let insns = prog
                .and_then(|p: crate::bpf_asm::Program| p.with_map_fds(&fds[..p.map_slots()]))
                .map_err(|e| format!("assembling the {what} program: {e}"))?;
            sys::bpf::load_sched_cls(&insns).map_err(|e| {
                format!("loading the {what} program (needs CAP_BPF and CAP_NET_ADMIN): {e}")
            })
        };
        let egress = load("egress", egress_program(LinkKind::L3))?;
        let ingress = load("ingress", ingress_program())?;
        let egress_link = TcxLink::attach(&egress, tun_ifindex, TcxDir::Egress).map_err(|e| {
            format!(
                "attaching to the TUN device's tcx egress (needs Linux 6.6 and CAP_NET_ADMIN): {e}"
            )
        })?;
        Ok(Self {
            opts,
            maps,
            ingress,
            _egress_link: egress_link,
            ingress_links: Vec::new(),
            tun_ifindex,
            written: None,
            on: false,
            broken: None,
            planned_for: None,
            routes: Err("not read yet".into()),
            attach_failed: Vec::new(),
            off: None,
            endpoints: BTreeMap::new(),
            links: Vec::new(),
            refreshed: None,
            counted: [0; LaneCounter::COUNT as usize],
            stats,
        })
    }

    /// One turn of the table loop: the maps follow `snap` (a new generation at once), the
    /// ingress program sits on the underlay interfaces (ours and `arrival`'s), and every
    /// [`REFRESH`] the local facts, endpoints and counters are brought up to date.
    pub fn follow(&mut self, snap: &RouteSnapshot, arrival: Arrival) {
        let due = self.refreshed.map_or(true, |t| t.elapsed() >= REFRESH);
        let generation_changed = self
            .planned_for
            .as_ref()
            .map_or(true, |(g, _)| *g != snap.generation());
        if !due && !generation_changed {
            return;
        }
        if due {
            self.refreshed = Some(Instant::now());
            self.read_host();
        }
        let facts = self.local_facts(snap);
        let key = (snap.generation(), facts.clone());
        if self.planned_for.as_ref() != Some(&key) {
            self.apply(snap, facts);
            self.planned_for = Some(key);
        }
        if self.on {
            self.attach_ingress(arrival);
            if due {
                self.learn_endpoints(snap);
            }
        }
        if due {
            self.collect_counters();
        }
    }

    /// Re-reads the host's links and routes (dumps that fail keep the last ones; the next
    /// turn retries).
    fn read_host(&mut self) {
        match sys::netlink::dump(sys::netlink::RTM_GETLINK, &[0u8; 16]) {
            Ok(msgs) => {
                self.links = msgs
                    .iter()
                    .filter(|(k, _)| *k == sys::netlink::RTM_NEWLINK)
                    .filter_map(|(_, b)| endpoints::parse_link(b))
                    .collect()
            }
            Err(e) => tracing::debug!("express lane: link dump: {e}"),
        }
        match route_records() {
            Ok(r) => self.routes = Ok(r),
            Err(e) => self.routes = Err(e),
        }
    }

    /// What the host adds to the table: the underlay interface, MTUs, the peers the lane
    /// leaves to the workers, and whether anything forbids the lane.
    fn local_facts(&self, snap: &RouteSnapshot) -> Result<LocalFacts, String> {
        let our_ip = crate::supervise::our_public_ip(snap);
        let underlay_ifindex = match our_ip {
            Some(ip) => sys::netlink::interface_with_ipv4(ip)
                .map_err(|e| format!("listing addresses: {e}"))?,
            None => None,
        };
        let mtu_of = |i: u32| {
            self.links
                .iter()
                .find(|l| l.ifindex == i)
                .and_then(|l| l.mtu)
        };
        host_policy()?;
        let routes = self.routes.as_ref().map_err(String::clone)?;
        let tun_mtu = mtu_of(self.tun_ifindex).unwrap_or(u32::MAX - 28);
        let peers: BTreeSet<[u8; 4]> = snap.routes().map(|r| r.public_ip.octets()).collect();
        Ok(LocalFacts {
            underlay_ifindex,
            underlay_mtu: underlay_ifindex.and_then(mtu_of).unwrap_or(0),
            tun_ifindex: self.tun_ifindex,
            tun_mtu,
            narrow: path_mtu::narrow_peers(
                routes,
                peers,
                underlay_ifindex.unwrap_or(0),
                tun_mtu.saturating_add(28),
            ),
            underlay_is_veth: underlay_ifindex
                .and_then(|i| self.links.iter().find(|l| l.ifindex == i))
                .is_some_and(|l| l.kind.as_deref() == Some("veth")),
            strict_rp_filter: underlay_ifindex
                .and_then(|i| self.links.iter().find(|l| l.ifindex == i))
                .and_then(|l| l.name.as_deref())
                .is_some_and(strict_rp_filter),
            outer_ttl: default_ttl(),
            spoof_check: self.opts.spoof_check,
            fixed_source_port: self.opts.fixed_source_port,
            port: self.opts.port,
        })
    }

    /// Writes the plan for `snap` (or disables the lane, saying why once).
    fn apply(&mut self, snap: &RouteSnapshot, facts: Result<LocalFacts, String>) {
        if let Some(why) = &self.broken {
            let why = why.clone();
            self.disable(&why);
            return;
        }
        let wanted = facts.and_then(|f| {
            plan::plan(snap.meta(), snap.routes(), &f).map_err(|off| off.to_string())
        });
        let p = match wanted {
            Ok(p) => p,
            Err(why) => return self.disable(&why),
        };
        let d = diff(self.written.as_ref(), &p);
        if d.is_empty() {
            return;
        }
        if let Err(e) = self.write(&p, &d) {
            // The maps may now hold part of a table: the lane stays off until a restart.
            let why = format!("writing its maps failed, until a restart: {e}");
            self.broken = Some(why.clone());
            return self.disable(&why);
        }
        if self.off.take().is_some() || d.full {
            tracing::info!(
                generation = snap.generation(),
                underlay = p.cfg.underlay_ifindex,
                peers = p.senders.len(),
                workers_only = p
                    .senders
                    .values()
                    .filter(|f| **f & SENDER_NARROW_PATH != 0)
                    .count(),
                "express lane on: packets to other hosts' subnets are encapsulated in the kernel"
            );
        }
        self.on = true;
    }

    /// The map writes of `d` towards `p`, with the lane disabled in between for a full write.
    /// `written` always says what the maps hold (a disabled configuration included), so a
    /// later diff also removes what a lease that went away while the lane was off left.
    fn write(&mut self, p: &LanePlan, d: &plan::PlanDiff) -> std::io::Result<()> {
        if d.full {
            self.write_disabled_cfg()?;
        }
        for (i, v) in &d.peer_writes {
            self.maps.peers.update(&i.to_ne_bytes(), v)?;
        }
        for (k, v) in &d.sender_upserts {
            self.maps.senders.update(k, &v.to_ne_bytes())?;
        }
        for k in &d.sender_deletes {
            self.maps.senders.delete(k)?;
        }
        if d.full {
            self.maps
                .cfg
                .update(&0u32.to_ne_bytes(), &p.cfg.to_bytes())?;
        }
        self.written = Some(p.clone());
        Ok(())
    }

    /// `enabled = 0` in the maps (and in `written`, so the next plan rewrites everything).
    fn write_disabled_cfg(&mut self) -> std::io::Result<()> {
        self.on = false;
        match &mut self.written {
            Some(w) if w.cfg.enabled => {
                w.cfg.enabled = false;
                self.maps.cfg.update(&0u32.to_ne_bytes(), &w.cfg.to_bytes())
            }
            Some(_) => Ok(()),
            None => self.maps.cfg.update(&0u32.to_ne_bytes(), &[0u8; cfg::SIZE]),
        }
    }

    /// Turns the programs off (they hand everything on) and logs `why` once.
    fn disable(&mut self, why: &str) {
        if let Err(e) = self.write_disabled_cfg() {
            tracing::error!("express lane: disabling it failed: {e}");
        }
        if self.off.as_deref() != Some(why) {
            tracing::warn!("express lane off ({why}): forwarding through the io_uring path");
            self.off = Some(why.to_string());
        }
    }

    /// The ingress program on our underlay interface and the arrival set's: links attached
    /// for new interfaces, dropped (detached) for those no longer in the set.
    fn attach_ingress(&mut self, arrival: Arrival) {
        let Some(p) = &self.written else { return };
        let mut wanted = vec![p.cfg.underlay_ifindex];
        if let Arrival::Only { ifindexes, len } = arrival {
            wanted.extend_from_slice(&ifindexes[..len]);
        }
        wanted.retain(|&i| i != self.tun_ifindex);
        wanted.sort_unstable();
        wanted.dedup();
        self.ingress_links.retain(|(i, _)| wanted.contains(i));
        self.attach_failed.retain(|i| wanted.contains(i));
        for i in wanted {
            if self.ingress_links.iter().any(|(have, _)| *have == i) {
                continue;
            }
            match TcxLink::attach(&self.ingress, i, TcxDir::Ingress) {
                Ok(link) => {
                    tracing::info!(
                        ifindex = i,
                        "express lane: receiving on the underlay interface"
                    );
                    self.attach_failed.retain(|&f| f != i);
                    self.ingress_links.push((i, link));
                }
                Err(e) if !self.attach_failed.contains(&i) => {
                    tracing::warn!(
                        ifindex = i,
                        "express lane: attaching to the interface's tcx ingress failed (its datagrams take the socket path; retried every turn): {e}"
                    );
                    self.attach_failed.push(i);
                }
                Err(_) => {}
            }
        }
    }

    /// Re-learns the local endpoints and writes the difference.
    fn learn_endpoints(&mut self, snap: &RouteSnapshot) {
        let Some(our_subnet) = snap.meta().our_subnet else {
            return;
        };
        let (neigh, fdb) = match (
            sys::netlink::dump(sys::netlink::RTM_GETNEIGH, &ndmsg(libc::AF_INET as u8)),
            sys::netlink::dump(sys::netlink::RTM_GETNEIGH, &ndmsg(libc::AF_BRIDGE as u8)),
        ) {
            (Ok(n), Ok(f)) => (n, f),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!("express lane: neighbour dump: {e}");
                return;
            }
        };
        let of_kind = |msgs: &[(u16, Vec<u8>)]| -> Vec<Vec<u8>> {
            msgs.iter()
                .filter(|(k, _)| *k == sys::netlink::RTM_NEWNEIGH)
                .map(|(_, b)| b.clone())
                .collect()
        };
        let neighbours: Vec<_> = of_kind(&neigh)
            .iter()
            .filter_map(|b| endpoints::parse_neighbour(b))
            .collect();
        let fdb: Vec<_> = of_kind(&fdb)
            .iter()
            .filter_map(|b| endpoints::parse_fdb(b))
            .collect();
        let Ok(routes) = &self.routes else { return };
        let learned = endpoints::join(our_subnet, &neighbours, &fdb, &self.links, routes);
        for (ip, e) in &learned {
            if self.endpoints.get(ip) != Some(e) {
                if let Err(err) = self.maps.endpoints.update(ip, &e.to_bytes()) {
                    tracing::debug!("express lane: endpoint {}: {err}", Ipv4Addr::from(*ip));
                    continue;
                }
                self.endpoints.insert(*ip, *e);
            }
        }
        let gone: Vec<[u8; 4]> = self
            .endpoints
            .keys()
            .filter(|ip| !learned.contains_key(*ip))
            .copied()
            .collect();
        for ip in gone {
            if self.maps.endpoints.delete(&ip).is_ok() {
                self.endpoints.remove(&ip);
            }
        }
    }

    /// Adds what the programs counted since the last time to the stats file (worker 0's block).
    fn collect_counters(&mut self) {
        for (slot, counter) in COUNTERS {
            let Ok(now) = self.maps.stats.sum_u64(&(slot as u32).to_ne_bytes()) else {
                continue;
            };
            let last = &mut self.counted[slot as usize];
            self.stats.add(counter, now.wrapping_sub(*last));
            *last = now;
        }
    }

    /// Adds the last counts (at stop).
    pub fn finish(mut self) {
        self.collect_counters();
    }
}

/// The host's IPv4 routes and cached route exceptions: two route dumps (exceptions with
/// `RTM_F_CLONED`, Linux 5.3).
fn route_records() -> Result<Vec<RouteRecord>, String> {
    let mut records = Vec::new();
    for flags in [0, path_mtu::RTM_F_CLONED] {
        let mut rtmsg = [0u8; 12];
        rtmsg[0] = libc::AF_INET as u8;
        rtmsg[8..12].copy_from_slice(&flags.to_ne_bytes());
        let msgs = sys::netlink::dump(sys::netlink::RTM_GETROUTE, &rtmsg)
            .map_err(|e| format!("listing routes: {e}"))?;
        records.extend(
            msgs.iter()
                .filter(|(k, _)| *k == sys::netlink::RTM_NEWROUTE)
                .filter_map(|(_, b)| path_mtu::parse_route(b)),
        );
    }
    Ok(records)
}

/// What the lane would bypass, and so forbids it: IPsec policies (`bpf_redirect_neigh` sends
/// without an xfrm lookup: the datagrams would leave in clear) and policy-routing rules beyond
/// the kernel's three (it sends on the underlay interface, whatever a rule says).
fn host_policy() -> Result<(), String> {
    match sys::netlink::xfrm_policy_count() {
        Ok(0) => {}
        Ok(n) => {
            return Err(format!(
                "{n} IPsec (xfrm) policies: the lane would bypass them"
            ))
        }
        Err(e) => return Err(format!("cannot list IPsec (xfrm) policies: {e}")),
    }
    let rules = sys::netlink::dump(
        sys::netlink::RTM_GETRULE,
        &[libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    )
    .map_err(|e| format!("listing ip rules: {e}"))?
    .iter()
    .filter(|(k, _)| *k == sys::netlink::RTM_NEWRULE)
    .count();
    if rules > 3 {
        return Err(format!(
            "{rules} IPv4 policy-routing rules (ip rule; the kernel's are 3): the lane would bypass them"
        ));
    }
    Ok(())
}

/// A `struct ndmsg` asking for one family's neighbours.
fn ndmsg(family: u8) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = family;
    b
}

/// Whether reverse-path filtering on interface `name` is strict: the larger of `all` and the
/// interface's `rp_filter` is 1 (the kernel takes the maximum).
fn strict_rp_filter(name: &str) -> bool {
    let read = |n: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{n}/rp_filter"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    read("all").max(read(name)) == 1
}

/// `net.ipv4.ip_default_ttl` of our network namespace (what the kernel's own UDP sockets send
/// with, as flannel's do), else 64.
fn default_ttl() -> u8 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lane_counter_has_its_stats_counter_once() {
        for (i, (slot, _)) in COUNTERS.iter().enumerate() {
            assert_eq!(*slot as usize, i, "in slot order");
        }
        let mut names: Vec<&str> = COUNTERS.iter().map(|(_, c)| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COUNTERS.len());
    }
}
