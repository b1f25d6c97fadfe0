//! Concurrency stress for the route table: one writer thread publishes many generations as
//! fast as it can while reader threads (each with its own mapping, as separate processes
//! would have) refresh continuously. Every generation `g` has meta and entries derived from
//! `g`, so a torn or mixed snapshot is detected by recomputing them from
//! `snapshot.generation()`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use flannel_shared::route_table::{
    Route, RouteSnapshot, RouteTableError, RouteTableReader, RouteTableWriter, TableMeta,
};
use flannel_shared::Ipv4Net;

const READERS: usize = 4;
/// Safety net so a bug cannot hang CI; normal runs take well under a second or two.
const DEADLINE: Duration = Duration::from_secs(30);

/// The public IP of subnet `i` in generation `g` (None = unleased), a hash of both.
fn public_ip_for(g: u64, i: u32) -> Option<Ipv4Addr> {
    if (g + u64::from(i)) % 7 == 0 {
        return None;
    }
    let x =
        g.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(i).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    Some(Ipv4Addr::from((x >> 32) as u32 | 1))
}

/// Generation `g`'s meta; the network prefix comes from `prefix_for(g)`.
fn meta_for(g: u64, prefix_for: fn(u64) -> u8) -> TableMeta {
    let network = Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), prefix_for(g)).unwrap();
    let count = 1u64 << (24 - network.prefix());
    let our = network.addr_u32() + (((g * 31) % count) as u32) * 256;
    TableMeta {
        network,
        subnet_len: 24,
        our_subnet: Some(Ipv4Net::new(Ipv4Addr::from(our), 24).unwrap()),
        mtu: g as u32,
        port: (g % 65_521) as u16,
    }
}

fn routes_for(g: u64, meta: &TableMeta) -> Vec<Route> {
    let count = 1u32 << (meta.subnet_len - meta.network.prefix());
    (0..count)
        .filter_map(|i| {
            Some(Route {
                subnet: Ipv4Net::new(Ipv4Addr::from(meta.network.addr_u32() + i * 256), 24)
                    .unwrap(),
                public_ip: public_ip_for(g, i)?,
            })
        })
        .collect()
}

/// Checks that everything in `snap` belongs to `snap.generation()`.
fn check(snap: &RouteSnapshot, prefix_for: fn(u64) -> u8) -> Result<(), String> {
    let g = snap.generation();
    let meta = meta_for(g, prefix_for);
    if snap.meta() != &meta {
        return Err(format!(
            "generation {g}: meta {:?}, expected {meta:?}",
            snap.meta()
        ));
    }
    let count = 1u32 << (meta.subnet_len - meta.network.prefix());
    let mut leased = 0;
    for i in 0..count {
        let expected = public_ip_for(g, i);
        leased += usize::from(expected.is_some());
        let host = Ipv4Addr::from(meta.network.addr_u32() + i * 256 + 1);
        let got = snap.lookup(host);
        if got != expected {
            return Err(format!(
                "generation {g}: entry {i} is {got:?}, expected {expected:?}"
            ));
        }
    }
    if snap.len() != leased || snap.routes().count() != leased {
        return Err(format!(
            "generation {g}: {} routes, expected {leased}",
            snap.len()
        ));
    }
    Ok(())
}

struct ReaderStats {
    snapshots: u64,
    distinct: u64,
    contended: u64,
    last: u64,
}

fn run(publishes: u64, initial_capacity: u32, prefix_for: fn(u64) -> u8) -> Vec<ReaderStats> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes");
    let mut writer = RouteTableWriter::open_with_capacity(&path, initial_capacity).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(READERS + 1));

    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let path = path.clone();
            let done = Arc::clone(&done);
            let start = Arc::clone(&start);
            thread::spawn(move || reader_loop(&path, &done, &start, prefix_for))
        })
        .collect();

    start.wait();
    let began = Instant::now();
    let mut last = 0;
    for g in 1..=publishes {
        let meta = meta_for(g, prefix_for);
        let routes = routes_for(g, &meta);
        last = writer.publish(&meta, &routes).unwrap();
        assert_eq!(last, g);
        if began.elapsed() > DEADLINE {
            break;
        }
    }
    done.store(true, Ordering::Release);
    let stats: Vec<ReaderStats> = readers.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!(
        "{last} publishes in {:?}; per reader (snapshots, distinct generations, contended): {:?}",
        began.elapsed(),
        stats
            .iter()
            .map(|s| (s.snapshots, s.distinct, s.contended))
            .collect::<Vec<_>>()
    );
    assert_eq!(last, publishes, "writer hit the deadline");
    for s in &stats {
        assert_eq!(s.last, last, "a reader did not see the final generation");
        assert!(s.distinct >= 2, "a reader saw too few generations");
    }
    stats
}

fn reader_loop(
    path: &Path,
    done: &AtomicBool,
    start: &Barrier,
    prefix_for: fn(u64) -> u8,
) -> ReaderStats {
    let mut reader = RouteTableReader::open(path).unwrap();
    let mut snap = RouteSnapshot::empty();
    let mut stats = ReaderStats {
        snapshots: 0,
        distinct: 0,
        contended: 0,
        last: 0,
    };
    start.wait();
    loop {
        // Read the flag first: the refresh after it sees the final publish.
        let finished = done.load(Ordering::Acquire);
        match reader.refresh(&mut snap) {
            Ok(true) => {
                let g = snap.generation();
                assert!(
                    g >= stats.last,
                    "generation went back from {} to {g}",
                    stats.last
                );
                if let Err(e) = check(&snap, prefix_for) {
                    panic!("inconsistent snapshot: {e}");
                }
                stats.snapshots += 1;
                stats.distinct += u64::from(g > stats.last);
                stats.last = g;
            }
            Ok(false) => thread::yield_now(),
            Err(RouteTableError::Contended { .. }) => stats.contended += 1,
            Err(e) => panic!("refresh failed: {e}"),
        }
        if finished && reader.generation() == snap.generation() {
            return stats;
        }
    }
}

#[test]
fn readers_see_consistent_monotonic_snapshots() {
    // 10.0.0.0/16 of /24s: 256 entries per publish.
    run(20_000, 256, |_| 16);
}

#[test]
fn readers_follow_file_replacements() {
    // The network grows from a /22 (4 entries) to a /14 (1024) every 500 generations, so the
    // writer replaces the file 8 times while readers refresh.
    let stats = run(4_500, 4, |g| 22 - ((g - 1) / 500) as u8);
    assert!(stats.iter().all(|s| s.snapshots > 0));
}
