//! Criterion micro-benchmarks of the per-packet work (no I/O):
//!
//! - `route_lookup`: `RouteSnapshot::lookup` in a table of 1000 /24 leases (flannel_shared).
//! - `encap_decision`: `forward::tun_to_udp` on a 1420-byte packet (parse, TTL, lookup).
//! - `gso_split`: a 64 KiB TCP super-packet cut into 1420-byte-payload segments (copy, IP and
//!   TCP checksums per segment).
//! - `gro_coalesce`: 46 in-order TCP segments merged into one super-packet.
//! - `arrival_check`: what the underlay check adds to one UDP receive (one GRO batch): reading
//!   the UDP_GRO and IP_PKTINFO cmsgs as the kernel writes them, and the interface-set test.
//!
//! `cargo bench -p flannel-dataplane --bench dataplane`

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use flannel_dataplane::forward::{self, RateLimiter, SenderIndex, TableState};
use flannel_dataplane::gro::Coalescer;
use flannel_dataplane::gso::{self, GSO_TCPV4};
use flannel_dataplane::packet::{checksum_add, fold_checksum, pseudo_header_sum, TCP_ACK};
use flannel_dataplane::sys::socket::decode_recv_cmsgs;
use flannel_dataplane::underlay::Arrival;
use flannel_shared::route_table::{Route, RouteTableReader, RouteTableWriter, TableMeta};
use flannel_shared::Ipv4Net;

/// An IPv4 + TCP (20-byte header) packet with `payload` bytes and complete checksums.
fn tcp(seq: u32, payload: usize) -> Vec<u8> {
    let mut p = vec![0u8; 40 + payload];
    let len = p.len();
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 1, 15, 2]);
    p[16..20].copy_from_slice(&[10, 1, 16, 2]);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = TCP_ACK;
    for (i, b) in p[40..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let ip = !fold_checksum(checksum_add(&p[..20], 0));
    p[10..12].copy_from_slice(&ip.to_be_bytes());
    let ps = pseudo_header_sum([10, 1, 15, 2], [10, 1, 16, 2], 6, len - 20);
    let t = !fold_checksum(checksum_add(&p[20..], ps));
    p[36..38].copy_from_slice(&t.to_be_bytes());
    p
}

fn table() -> (
    tempfile::TempDir,
    flannel_shared::route_table::RouteSnapshot,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes");
    let routes: Vec<Route> = (0..1000u32)
        .map(|i| Route {
            subnet: Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i + 1) << 8), 24).unwrap(),
            public_ip: Ipv4Addr::from(0xc612_0000 + i + 1),
        })
        .collect();
    let meta = TableMeta {
        network: "10.0.0.0/8".parse().unwrap(),
        subnet_len: 24,
        our_subnet: Some("10.0.1.0/24".parse().unwrap()),
        mtu: 1472,
        port: 8285,
    };
    RouteTableWriter::open(&path)
        .unwrap()
        .publish(&meta, &routes)
        .unwrap();
    let snap = RouteTableReader::open(&path).unwrap().snapshot().unwrap();
    (dir, snap)
}

fn benches(c: &mut Criterion) {
    let (_dir, snap) = table();

    let mut g = c.benchmark_group("route_lookup");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u32;
    g.bench_function("snapshot_1000_leases", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            black_box(snap.lookup(black_box(Ipv4Addr::from(0x0a00_0002 | (i + 1) << 8))))
        })
    });
    g.finish();

    let ctx = TableState {
        network: Some("10.0.0.0/16".parse().unwrap()),
        our_subnet: Some("10.0.1.0/24".parse().unwrap()),
        tun_addr: Some(Ipv4Addr::new(10, 0, 1, 0)),
        spoof_check: true,
        senders: SenderIndex::new(snap.routes().map(|r| (r.subnet, r.public_ip))),
    };
    let mut g = c.benchmark_group("encap_decision");
    g.throughput(Throughput::Elements(1));
    let mut pkt = tcp(1, 1420);
    pkt[16..20].copy_from_slice(&[10, 0, 77, 2]);
    pkt[10..12].copy_from_slice(&[0, 0]);
    let ip = !fold_checksum(checksum_add(&pkt[..20], 0));
    pkt[10..12].copy_from_slice(&ip.to_be_bytes());
    let orig = pkt.clone();
    let mut limiter = RateLimiter::new(100, 20);
    let mut icmp = [0u8; 128];
    g.bench_function("tun_to_udp_1460B", |b| {
        b.iter(|| {
            pkt[8..12].copy_from_slice(&orig[8..12]);
            black_box(forward::tun_to_udp(
                black_box(&mut pkt),
                &snap,
                &ctx,
                &mut limiter,
                0,
                &mut icmp,
            ))
        })
    });
    g.finish();

    let sup = tcp(7, 65535 - 40);
    let mut out = vec![0u8; 80 * 1024];
    let mut g = c.benchmark_group("gso_split");
    g.throughput(Throughput::Bytes(sup.len() as u64));
    g.bench_function("tcp_64KiB_mss1420", |b| {
        b.iter(|| black_box(gso::split(black_box(&sup), GSO_TCPV4, 1420, &mut out).unwrap()))
    });
    g.finish();

    let s = gso::split(&sup, GSO_TCPV4, 1420, &mut out).unwrap();
    let segs: Vec<Vec<u8>> = (0..s.count).map(|i| out[s.range(i)].to_vec()).collect();
    let mut co = vec![0u8; 80 * 1024];
    let mut writes = Vec::with_capacity(64);
    let mut g = c.benchmark_group("gro_coalesce");
    g.throughput(Throughput::Bytes(sup.len() as u64));
    g.bench_function("tcp_47_segments", |b| {
        b.iter(|| {
            let mut c = Coalescer::new(&mut co, &mut writes);
            for p in &segs {
                c.push(black_box(p)).unwrap();
            }
            black_box(c.finish())
        })
    });
    g.finish();

    // The control area of a GRO receive: UDP_GRO (1420) then IP_PKTINFO (ifindex 2), laid out
    // as the kernel writes them on 64-bit Linux.
    let mut ctl = [0u8; 56];
    ctl[..8].copy_from_slice(&20u64.to_ne_bytes());
    ctl[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    ctl[12..16].copy_from_slice(&libc::UDP_GRO.to_ne_bytes());
    ctl[16..20].copy_from_slice(&1420i32.to_ne_bytes());
    ctl[24..32].copy_from_slice(&28u64.to_ne_bytes());
    ctl[32..36].copy_from_slice(&libc::IPPROTO_IP.to_ne_bytes());
    ctl[36..40].copy_from_slice(&libc::IP_PKTINFO.to_ne_bytes());
    ctl[40..44].copy_from_slice(&2i32.to_ne_bytes());
    let underlay = Arrival::only(&[2, 7]);
    let mut g = c.benchmark_group("arrival_check");
    g.bench_function("gro_only_cmsg_before", |b| {
        // What a receive read before: the same walk finding only the GRO size.
        b.iter(|| black_box(decode_recv_cmsgs(black_box(&ctl[..24]))).gro_size)
    });
    g.bench_function("gro_and_pktinfo_and_check", |b| {
        b.iter(|| {
            let m = decode_recv_cmsgs(black_box(&ctl));
            black_box(underlay.admits(m.ifindex)) && m.gro_size.is_some()
        })
    });
    g.finish();
}

criterion_group!(dataplane, benches);
criterion_main!(dataplane);
