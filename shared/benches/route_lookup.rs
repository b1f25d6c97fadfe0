//! Route lookup cost against table size: a /16 with 10 routes vs a /8 with all 65,536 /24s leased.
//! The lookup is `(dst - network) >> (32 - SubnetLen)` into a flat array, so both should cost the
//! same few nanoseconds. Run: `cargo bench -p flannel-shared --bench route_lookup`.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flannel_shared::route_table::{
    Route, RouteSnapshot, RouteTableReader, RouteTableWriter, TableMeta,
};
use flannel_shared::Ipv4Net;

fn table(dir: &std::path::Path, name: &str, network: &str, routes: &[Route]) -> RouteSnapshot {
    let path = dir.join(name);
    let mut w = RouteTableWriter::open(&path).unwrap();
    let meta = TableMeta {
        network: network.parse().unwrap(),
        subnet_len: 24,
        our_subnet: None,
        mtu: 1472,
        port: 8285,
    };
    w.publish(&meta, routes).unwrap();
    RouteTableReader::open(&path).unwrap().snapshot().unwrap()
}

/// 1024 pseudo-random destinations inside `net`.
fn destinations(net: Ipv4Net) -> Vec<Ipv4Addr> {
    let mut x = 0x2545_f491u32;
    (0..1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            Ipv4Addr::from(net.addr_u32() | (x & !net.mask()))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let small: Vec<Route> = (1..=10u8)
        .map(|i| Route {
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 1, i, 0), 24).unwrap(),
            public_ip: Ipv4Addr::new(198, 18, 0, i),
        })
        .collect();
    let full: Vec<Route> = (0..65536u32)
        .map(|i| Route {
            subnet: Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap(),
            public_ip: Ipv4Addr::from(0xc612_0000 | (i & 0x1ffff) | 1),
        })
        .collect();
    let cases = [
        (
            "10.1.0.0/16, 10 routes",
            table(dir.path(), "small", "10.1.0.0/16", &small),
        ),
        (
            "10.0.0.0/8, 65536 routes",
            table(dir.path(), "full", "10.0.0.0/8", &full),
        ),
    ];
    let mut g = c.benchmark_group("route_lookup");
    for (name, snap) in &cases {
        let dsts = destinations(snap.meta().network);
        g.throughput(Throughput::Elements(dsts.len() as u64));
        g.bench_function(*name, |b| {
            b.iter(|| {
                let mut hits = 0u32;
                for d in &dsts {
                    hits += u32::from(black_box(snap.lookup(*d)).is_some());
                }
                hits
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
