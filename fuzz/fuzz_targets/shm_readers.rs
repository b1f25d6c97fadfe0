//! The shared-memory readers on files anyone with write access to /run/flannel (or a crashed
//! writer) could leave behind: `RouteTableReader` (open, snapshot, lookups, the route list and
//! its text dump) and `StatsReader` (open, names, totals, snapshot). Never a panic or a fault;
//! a snapshot that is accepted is self-consistent: every listed route is inside the network,
//! of the table's subnet length, and looks up to its own public IP; nothing outside the
//! network has a route.
//!
//! Input: a file built from fields (valid magic, version, capacity and sizes, so the fuzzer
//! reaches the seqlock copy and the meta validation) with raw bytes poked in, or raw bytes.

#![no_main]

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use arbitrary::Arbitrary;
use flannel_shared::route_table::{
    format_table, table_file_size, RouteTableReader, LAYOUT_VERSION, MAGIC,
};
use flannel_shared::stats::StatsReader;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Meta {
    network: u32,
    prefix: u8,
    extra_bits: u8,
    our: Option<(u32, u8)>,
    mtu: u32,
    port: u16,
}

#[derive(Arbitrary, Debug)]
struct Table {
    capacity: u16,
    generation: u64,
    active: u8,
    retired: bool,
    seq: u64,
    meta: Option<Meta>,
    /// Raw buffer-meta words (offsets 16..48), used when `meta` is None.
    raw_meta: [u32; 8],
    entries: Vec<u32>,
    pokes: Vec<(u16, u8)>,
    truncate: Option<u16>,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Routes(Table),
    RoutesRaw(Vec<u8>),
    Stats {
        workers: u8,
        counters: u8,
        stride: u16,
        names_off: u16,
        blocks_off: u16,
        body: Vec<u8>,
    },
    StatsRaw(Vec<u8>),
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("flannel-fuzz-{}-{name}", std::process::id()))
}

fn write(path: &PathBuf, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_ne_bytes());
    }
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    if let Some(s) = b.get_mut(at..at + 8) {
        s.copy_from_slice(&v.to_ne_bytes());
    }
}

fn build_table(t: &Table) -> Vec<u8> {
    let capacity = u32::from(t.capacity % 1024) + 1;
    let size = table_file_size(capacity) as usize;
    let stride = (size - 4096) / 2;
    let mut b = vec![0u8; size];
    put64(&mut b, 0, MAGIC);
    put32(&mut b, 8, LAYOUT_VERSION);
    put32(&mut b, 12, capacity);
    put64(&mut b, 16, t.generation);
    let active = u32::from(t.active % 3); // 2 is corrupt
    put32(&mut b, 24, active);
    put32(&mut b, 28, u32::from(t.retired));
    let buf = 4096 + (active as usize % 2) * stride;
    put64(&mut b, buf, t.seq);
    put64(&mut b, buf + 8, t.generation);
    let words = match &t.meta {
        Some(m) => {
            let prefix = u32::from(m.prefix % 33);
            let bits = u32::from(m.extra_bits) % (capacity.ilog2() + 1);
            let subnet_len = (prefix + bits).min(32);
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            let (our, our_prefix) = match m.our {
                Some((a, p)) => {
                    let p = u32::from(p % 33);
                    let mk = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                    (a & mk, p)
                }
                None => (0, u32::MAX),
            };
            [
                m.network & mask,
                prefix,
                subnet_len,
                our,
                our_prefix,
                m.mtu,
                u32::from(m.port),
                1 << (subnet_len - prefix),
            ]
        }
        None => t.raw_meta,
    };
    for (i, w) in words.iter().enumerate() {
        put32(&mut b, buf + 16 + 4 * i, *w);
    }
    for (i, e) in t.entries.iter().take(capacity as usize).enumerate() {
        put32(&mut b, buf + 64 + 4 * i, *e);
    }
    for &(at, v) in &t.pokes {
        let at = usize::from(at) % size;
        b[at] = v;
    }
    if let Some(n) = t.truncate {
        b.truncate(usize::from(n).min(size));
    }
    b
}

fn check_routes(bytes: &[u8], probes: &[u32]) {
    let path = scratch("routes");
    write(&path, bytes);
    let opened = RouteTableReader::open(&path);
    // The mapping outlives the name: leave nothing behind in the temp dir.
    let _ = std::fs::remove_file(&path);
    let Ok(mut r) = opened else {
        return;
    };
    let _ = r.generation();
    let Ok(snap) = r.snapshot() else {
        return;
    };
    let meta = snap.meta().clone();
    let net = meta.network;
    assert!(meta.subnet_len >= net.prefix() && meta.subnet_len <= 32);
    let mut n = 0;
    for route in snap.routes() {
        n += 1;
        assert_eq!(route.subnet.prefix(), meta.subnet_len);
        assert!(net.contains_net(&route.subnet), "{route:?} outside {net}");
        assert_eq!(snap.lookup(route.subnet.addr()), Some(route.public_ip));
        assert_eq!(snap.lookup(route.subnet.last()), Some(route.public_ip));
        assert_ne!(route.public_ip, Ipv4Addr::UNSPECIFIED);
    }
    assert_eq!(n, snap.len());
    for &p in probes {
        let ip = Ipv4Addr::from(p);
        match snap.lookup(ip) {
            Some(peer) => {
                assert!(net.contains(ip), "route for {ip} outside {net}");
                let route = snap.lookup_route(ip).expect("lookup_route agrees");
                assert_eq!(route.public_ip, peer);
                assert!(route.subnet.contains(ip));
            }
            None => assert!(snap.lookup_route(ip).is_none()),
        }
    }
    let _ = format_table(&snap);
}

fn check_stats(bytes: &[u8]) {
    let path = scratch("stats");
    write(&path, bytes);
    let opened = StatsReader::open(&path);
    let _ = std::fs::remove_file(&path);
    let Ok(r) = opened else {
        return;
    };
    let _ = (r.workers(), r.pid(), r.io_path());
    let names: Vec<String> = r.names().to_vec();
    let snap = r.snapshot();
    assert_eq!(snap.len(), r.workers());
    for n in names.iter().take(64) {
        let total = r.total(n);
        let sum: u64 = snap
            .iter()
            .map(|w| w.get(n).unwrap_or(0))
            .fold(0, u64::wrapping_add);
        // Counters may move between the two reads only in a live file; this one is static.
        assert_eq!(total, sum, "total({n}) is the sum over workers");
    }
    let _ = r.total("no such counter");
}

fuzz_target!(|input: Input| {
    match input {
        Input::Routes(t) => {
            let probes: Vec<u32> = t
                .entries
                .iter()
                .copied()
                .chain(t.meta.as_ref().map(|m| m.network))
                .take(32)
                .collect();
            check_routes(&build_table(&t), &probes);
        }
        Input::RoutesRaw(raw) => check_routes(&raw, &[0, u32::MAX, 0x0a01_0f02]),
        Input::Stats {
            workers,
            counters,
            stride,
            names_off,
            blocks_off,
            body,
        } => {
            let mut b = vec![0u8; 64];
            b[..8].copy_from_slice(b"FDPSTAT1");
            b[8..12].copy_from_slice(&1u32.to_le_bytes());
            b[12..16].copy_from_slice(&u32::from(workers % 8).to_le_bytes());
            b[16..20].copy_from_slice(&u32::from(counters % 40).to_le_bytes());
            b[28..32].copy_from_slice(&u32::from(stride).to_le_bytes());
            b[32..36].copy_from_slice(&u32::from(names_off).to_le_bytes());
            b[36..40].copy_from_slice(&u32::from(blocks_off).to_le_bytes());
            b.extend(body.iter().take(1 << 16));
            check_stats(&b);
        }
        Input::StatsRaw(raw) => check_stats(&raw),
    }
});
