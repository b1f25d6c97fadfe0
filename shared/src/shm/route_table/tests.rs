//! Tests of the route table as a whole: writer, readers, snapshots and the file on disk.

use std::fs::{self, OpenOptions, Permissions};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;

use super::layout::{buffer_stride, HEADER_SIZE};
use crate::route_table::*;
use crate::Ipv4Net;
use std::os::unix::fs::MetadataExt;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn route(subnet: &str, public_ip: &str) -> Route {
    Route {
        subnet: net(subnet),
        public_ip: ip(public_ip),
    }
}

fn meta16() -> TableMeta {
    TableMeta {
        network: net("10.1.0.0/16"),
        subnet_len: 24,
        our_subnet: Some(net("10.1.15.0/24")),
        mtu: 1450,
        port: 8472,
    }
}

fn routes16() -> Vec<Route> {
    vec![
        route("10.1.255.0/24", "192.168.0.255"),
        route("10.1.15.0/24", "192.168.0.15"),
        route("10.1.0.0/24", "192.168.0.1"),
    ]
}

#[test]
fn publish_and_lookup_golden() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/flannel/routes");
    let mut w = RouteTableWriter::open(&path).unwrap();
    assert_eq!(w.generation(), 0);
    assert_eq!(w.path(), path);

    let mut r = RouteTableReader::open(&path).unwrap();
    assert_eq!(r.generation(), 0);
    assert!(matches!(
        r.snapshot(),
        Err(RouteTableError::NotPublished { .. })
    ));

    assert_eq!(w.publish(&meta16(), &routes16()).unwrap(), 1);
    assert_eq!(w.generation(), 1);
    assert_eq!(r.generation(), 1);
    let s = r.snapshot().unwrap();
    assert_eq!(s.generation(), 1);
    assert_eq!(s.meta(), &meta16());
    assert_eq!(s.len(), 3);
    assert!(!s.is_empty());
    assert_eq!(s.entry_count(), 256);

    assert_eq!(s.lookup(ip("10.1.15.7")), Some(ip("192.168.0.15")));
    assert_eq!(s.lookup(ip("10.1.15.0")), Some(ip("192.168.0.15")));
    assert_eq!(s.lookup(ip("10.1.15.255")), Some(ip("192.168.0.15")));
    assert_eq!(s.lookup(ip("10.1.0.1")), Some(ip("192.168.0.1")));
    assert_eq!(s.lookup(ip("10.1.255.255")), Some(ip("192.168.0.255")));
    // Unleased subnets.
    assert_eq!(s.lookup(ip("10.1.16.1")), None);
    assert_eq!(s.lookup(ip("10.1.14.255")), None);
    // Outside the network, on both sides and at the extremes.
    for outside in [
        "10.2.0.0",
        "10.0.255.255",
        "10.0.15.7",
        "11.1.15.7",
        "0.0.0.0",
        "255.255.255.255",
    ] {
        assert_eq!(s.lookup(ip(outside)), None, "{outside}");
        assert_eq!(s.lookup_route(ip(outside)), None, "{outside}");
    }

    assert_eq!(
        s.lookup_route(ip("10.1.15.7")),
        Some(route("10.1.15.0/24", "192.168.0.15"))
    );
    assert_eq!(s.lookup_route(ip("10.1.16.1")), None);
    let all: Vec<Route> = s.routes().collect();
    assert_eq!(
        all,
        vec![
            route("10.1.0.0/24", "192.168.0.1"),
            route("10.1.15.0/24", "192.168.0.15"),
            route("10.1.255.0/24", "192.168.0.255"),
        ]
    );
}

#[test]
fn slash8_of_slash24_has_65536_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes");
    let mut w = RouteTableWriter::open(&path).unwrap();
    assert_eq!(w.capacity(), 65536);
    assert_eq!(fs::metadata(&path).unwrap().len(), table_file_size(65536));
    assert_eq!(table_file_size(65536), 536_576);
    let meta = TableMeta {
        network: net("10.0.0.0/8"),
        subnet_len: 24,
        our_subnet: None,
        mtu: 8951,
        port: 4789,
    };
    let routes = [
        route("10.255.255.0/24", "1.2.3.4"),
        route("10.0.0.0/24", "1.2.3.5"),
        route("10.128.7.0/24", "1.2.3.6"),
    ];
    w.publish(&meta, &routes).unwrap();
    let s = RouteTableReader::open(&path).unwrap().snapshot().unwrap();
    assert_eq!(s.entry_count(), 65536);
    assert_eq!(s.meta(), &meta);
    assert_eq!(s.lookup(ip("10.255.255.1")), Some(ip("1.2.3.4")));
    assert_eq!(s.lookup(ip("10.0.0.200")), Some(ip("1.2.3.5")));
    assert_eq!(s.lookup(ip("10.128.7.9")), Some(ip("1.2.3.6")));
    assert_eq!(s.lookup(ip("10.128.8.9")), None);
    assert_eq!(s.lookup(ip("11.0.0.1")), None);
    assert_eq!(s.lookup(ip("9.255.255.255")), None);
    assert_eq!(
        s.lookup_route(ip("10.255.255.1")),
        Some(route("10.255.255.0/24", "1.2.3.4"))
    );
    assert_eq!(s.routes().count(), 3);
}

#[test]
fn edge_shapes_whole_space_and_host_routes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes");
    let mut w = RouteTableWriter::open_with_capacity(&path, 4).unwrap();
    let mut r = RouteTableReader::open(&path).unwrap();
    // subnet_len == prefix: one entry; shift of 32 for a /0.
    let meta = TableMeta {
        network: net("0.0.0.0/0"),
        subnet_len: 0,
        our_subnet: None,
        mtu: 1500,
        port: 1,
    };
    w.publish(&meta, &[route("0.0.0.0/0", "1.1.1.1")]).unwrap();
    let s = r.snapshot().unwrap();
    assert_eq!(s.lookup(ip("0.0.0.0")), Some(ip("1.1.1.1")));
    assert_eq!(s.lookup(ip("255.255.255.255")), Some(ip("1.1.1.1")));
    // /30 of /32s: host routes, shift 0.
    let meta = TableMeta {
        network: net("192.0.2.4/30"),
        subnet_len: 32,
        our_subnet: Some(net("192.0.2.5/32")),
        mtu: 1500,
        port: 2,
    };
    w.publish(&meta, &[route("192.0.2.7/32", "2.2.2.2")])
        .unwrap();
    let s = r.snapshot().unwrap();
    assert_eq!(s.lookup(ip("192.0.2.7")), Some(ip("2.2.2.2")));
    assert_eq!(s.lookup(ip("192.0.2.6")), None);
    assert_eq!(s.lookup(ip("192.0.2.8")), None);
    assert_eq!(s.lookup(ip("192.0.2.3")), None);
    assert_eq!(
        s.routes().collect::<Vec<_>>(),
        vec![route("192.0.2.7/32", "2.2.2.2")]
    );
}

#[test]
fn refresh_is_cheap_when_unchanged_and_copies_when_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes");
    let mut w = RouteTableWriter::open(&path).unwrap();
    let mut r = RouteTableReader::open(&path).unwrap();

    // Before the first publish an empty snapshot stays empty.
    let mut s = RouteSnapshot::default();
    assert!(!r.refresh(&mut s).unwrap());
    assert_eq!(s.lookup(ip("10.1.15.7")), None);
    assert!(s.is_empty());

    w.publish(&meta16(), &routes16()).unwrap();
    assert!(r.refresh(&mut s).unwrap());
    assert_eq!(s.generation(), 1);
    assert_eq!(s.lookup(ip("10.1.15.7")), Some(ip("192.168.0.15")));
    assert!(!r.refresh(&mut s).unwrap());

    let old = s.clone();
    let mut meta = meta16();
    meta.mtu = 1400;
    w.publish(&meta, &[route("10.1.15.0/24", "192.168.0.99")])
        .unwrap();
    assert!(r.refresh(&mut s).unwrap());
    assert_eq!(s.generation(), 2);
    assert_eq!(s.meta().mtu, 1400);
    assert_eq!(s.len(), 1);
    assert_eq!(s.lookup(ip("10.1.15.7")), Some(ip("192.168.0.99")));
    assert_eq!(s.lookup(ip("10.1.0.1")), None);
    // The clone is a private copy.
    assert_eq!(old.generation(), 1);
    assert_eq!(old.lookup(ip("10.1.0.1")), Some(ip("192.168.0.1")));
    assert!(!r.refresh(&mut s).unwrap());
}

#[test]
fn writer_reopen_reuses_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes");
    let mut w = RouteTableWriter::open(&path).unwrap();
    w.publish(&meta16(), &routes16()).unwrap();
    w.publish(&meta16(), &routes16()[..1]).unwrap();
    let ino = fs::metadata(&path).unwrap().ino();
    let mut r = RouteTableReader::open(&path).unwrap();
    let mut s = r.snapshot().unwrap();
    assert_eq!(s.generation(), 2);
    drop(w);

    // The control plane is down: readers keep their table.
    assert!(!r.refresh(&mut s).unwrap());
    assert_eq!(s.lookup(ip("10.1.255.1")), Some(ip("192.168.0.255")));

    let mut w = RouteTableWriter::open(&path).unwrap();
    assert_eq!(w.generation(), 2);
    assert_eq!(fs::metadata(&path).unwrap().ino(), ino, "file was replaced");
    assert!(!r.refresh(&mut s).unwrap(), "reopen alone must not publish");
    assert_eq!(w.publish(&meta16(), &routes16()).unwrap(), 3);
    assert!(r.refresh(&mut s).unwrap());
    assert_eq!(s.generation(), 3);
    assert_eq!(s.len(), 3);
    assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
}

#[test]
fn growing_capacity_replaces_the_file_and_readers_follow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes");
    let mut w = RouteTableWriter::open_with_capacity(&path, 256).unwrap();
    w.publish(&meta16(), &routes16()).unwrap();
    let ino = fs::metadata(&path).unwrap().ino();
    let mut r = RouteTableReader::open(&path).unwrap();
    let mut s = r.snapshot().unwrap();

    let meta = TableMeta {
        network: net("10.0.0.0/15"),
        subnet_len: 24,
        our_subnet: Some(net("10.1.15.0/24")),
        mtu: 1450,
        port: 8472,
    };
    let mut routes = routes16();
    routes.push(route("10.0.3.0/24", "192.168.0.3"));
    assert_eq!(w.publish(&meta, &routes).unwrap(), 2);
    assert_eq!(w.capacity(), 512);
    assert_ne!(fs::metadata(&path).unwrap().ino(), ino);
    assert_eq!(fs::metadata(&path).unwrap().len(), table_file_size(512));

    // The old mapping announces the change with its generation and `retired`.
    assert_eq!(r.generation(), 2);
    assert!(r.refresh(&mut s).unwrap());
    assert_eq!(s.generation(), 2);
    assert_eq!(s.meta(), &meta);
    assert_eq!(s.entry_count(), 512);
    assert_eq!(s.lookup(ip("10.0.3.1")), Some(ip("192.168.0.3")));
    assert_eq!(s.lookup(ip("10.1.15.7")), Some(ip("192.168.0.15")));
    assert!(!r.refresh(&mut s).unwrap());
    assert_eq!(r.capacity(), 512);

    // Later publishes reach the reopened reader; shrinking keeps the big file.
    assert_eq!(w.publish(&meta16(), &routes16()[..1]).unwrap(), 3);
    assert_eq!(w.capacity(), 512);
    assert!(r.refresh(&mut s).unwrap());
    assert_eq!(s.meta(), &meta16());
    assert_eq!(s.len(), 1);

    // No temporary files left behind.
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["routes", "routes.lock"]);
}

#[test]
fn files_are_mode_0644() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes");
    let mut w = RouteTableWriter::open_with_capacity(&path, 1).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
    w.publish(&meta16(), &[]).unwrap(); // grows: a new file
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
}

/// A header with the given fields, padded with zeros to `len` bytes.
fn header_bytes(magic: u64, version: u32, capacity: u32, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len.max(32)];
    b[0..8].copy_from_slice(&magic.to_ne_bytes());
    b[8..12].copy_from_slice(&version.to_ne_bytes());
    b[12..16].copy_from_slice(&capacity.to_ne_bytes());
    b.truncate(len);
    b
}

#[test]
fn garbage_and_short_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes");
    let open = |bytes: &[u8]| {
        fs::write(&path, bytes).unwrap();
        RouteTableReader::open(&path).unwrap_err()
    };

    match RouteTableReader::open(&path).unwrap_err() {
        RouteTableError::Io { path: p, source } => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        e => panic!("{e}"),
    }
    assert!(matches!(
        open(b""),
        RouteTableError::TooSmall { len: 0, .. }
    ));
    assert!(matches!(
        open(b"FLNLRTB1"),
        RouteTableError::TooSmall { len: 8, .. }
    ));
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    assert!(matches!(open(&garbage), RouteTableError::BadMagic { .. }));
    assert!(matches!(
        open(&header_bytes(MAGIC, 2, 256, 4096 * 3)),
        RouteTableError::BadVersion { found: 2, .. }
    ));
    assert!(matches!(
        open(&header_bytes(MAGIC, 1, 0, 4096 * 3)),
        RouteTableError::Corrupt { .. }
    ));
    assert!(matches!(
        open(&header_bytes(MAGIC, 1, MAX_CAPACITY + 1, 4096 * 3)),
        RouteTableError::Corrupt { .. }
    ));
    let e = open(&header_bytes(MAGIC, 1, 65536, 4096));
    assert!(
        matches!(
            e,
            RouteTableError::TooSmall {
                len: 4096,
                needed: 536_576,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
    // A valid, unpublished header.
    fs::write(
        &path,
        header_bytes(MAGIC, 1, 1, table_file_size(1) as usize),
    )
    .unwrap();
    let mut r = RouteTableReader::open(&path).unwrap();
    let e = r.snapshot().unwrap_err();
    assert!(matches!(e, RouteTableError::NotPublished { .. }));
    assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");

    // The writer replaces garbage instead of reusing it.
    fs::write(&path, &garbage).unwrap();
    let mut w = RouteTableWriter::open(&path).unwrap();
    assert_eq!(w.generation(), 0);
    w.publish(&meta16(), &routes16()).unwrap();
    let s = RouteTableReader::open(&path).unwrap().snapshot().unwrap();
    assert_eq!(s.len(), 3);
}

#[test]
fn corrupted_published_table_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes");
    let mut w = RouteTableWriter::open_with_capacity(&path, 256).unwrap();
    w.publish(&meta16(), &routes16()).unwrap(); // into buffer 1
    let mut r = RouteTableReader::open(&path).unwrap();
    let good = r.snapshot().unwrap();

    let poke = |offset: usize, value: u32| {
        // In place (same inode, no truncation): the reader's mapping sees it.
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&value.to_ne_bytes(), offset as u64).unwrap();
    };
    let buf1 = HEADER_SIZE + buffer_stride(256);
    let mut s = good.clone();

    poke(28, 0); // retired stays 0; sanity
    poke(24, 7); // active = 7
    poke(16, 99); // generation, so refresh looks
    assert!(matches!(
        r.refresh(&mut s),
        Err(RouteTableError::Corrupt { .. })
    ));
    assert_eq!(s.generation(), 1, "snapshot untouched on error");
    assert_eq!(s.len(), 3);
    poke(24, 1);
    poke(buf1 + 44, 1000); // count beyond capacity
    assert!(matches!(r.snapshot(), Err(RouteTableError::Corrupt { .. })));
    poke(buf1 + 44, 128); // count inconsistent with /16 of /24
    assert!(matches!(r.snapshot(), Err(RouteTableError::Corrupt { .. })));
    poke(buf1 + 44, 256);
    poke(buf1 + 24, 8); // subnet_len < prefix
    assert!(matches!(r.snapshot(), Err(RouteTableError::Corrupt { .. })));
    poke(buf1 + 24, 24);
    poke(buf1 + 40, 70000); // port
    assert!(matches!(r.snapshot(), Err(RouteTableError::Corrupt { .. })));
    poke(buf1 + 40, 8472);
    poke(buf1 + 16, u32::from(ip("10.1.0.1"))); // host bits in the network
    assert!(matches!(r.snapshot(), Err(RouteTableError::Corrupt { .. })));
    poke(buf1 + 16, u32::from(ip("10.1.0.0")));
    let s = r.snapshot().unwrap();
    assert_eq!(s.lookup(ip("10.1.15.7")), Some(ip("192.168.0.15")));

    // A seq left odd (a writer crashed mid-copy of the active buffer — cannot happen with
    // this writer, which only writes the inactive one) makes readers give up, not spin.
    poke(buf1, 5);
    assert!(matches!(
        r.snapshot(),
        Err(RouteTableError::Contended { .. })
    ));
    drop(w);
    // A new writer recovers: it writes the other buffer and flips to it.
    let mut w = RouteTableWriter::open(&path).unwrap();
    assert_eq!(w.publish(&meta16(), &routes16()).unwrap(), 100);
    assert_eq!(r.snapshot().unwrap().generation(), 100);
}

/// One lease with PublicIP 0.0.0.0 (or any refused route) must not keep the others from the
/// data plane: `publish_skipping` leaves it out and reports it.
#[test]
fn publish_skipping_leaves_bad_routes_out_and_publishes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes");
    let mut w = RouteTableWriter::open(&path).unwrap();
    let routes = [
        route("10.1.250.0/24", "0.0.0.0"),
        route("10.1.15.0/24", "192.168.0.15"),
        route("10.1.16.0/25", "192.168.0.16"),
        route("10.2.1.0/24", "192.168.0.17"),
        route("10.1.17.0/24", "192.168.0.17"),
    ];
    assert!(w.publish(&meta16(), &routes).is_err());
    let p = w.publish_skipping(&meta16(), &routes).unwrap();
    assert_eq!(p.generation, 1);
    assert_eq!(p.routes, 2);
    let refused: Vec<String> = p.refused.iter().map(|(_, e)| e.to_string()).collect();
    assert_eq!(
        refused,
        [
            "route 10.1.250.0/24: public IP 0.0.0.0 is not a host",
            "route 10.1.16.0/25 -> 192.168.0.16: prefix /25 but the subnet length is /24",
            "route 10.2.1.0/24 -> 192.168.0.17 is outside the network 10.1.0.0/16",
        ]
    );
    assert_eq!(p.refused[0].0, routes[0]);
    let snap = RouteTableReader::open(&path).unwrap().snapshot().unwrap();
    assert_eq!(snap.generation(), 1);
    assert_eq!(snap.routes().collect::<Vec<_>>(), [routes[1], routes[4]]);
    assert_eq!(snap.lookup(ip("10.1.250.9")), None);
    // check_route agrees with both.
    assert!(check_route(&meta16(), &routes[1]).is_ok());
    assert!(check_route(&meta16(), &routes[0]).is_err());
    // A bad meta still publishes nothing.
    let mut meta = meta16();
    meta.subnet_len = 8;
    assert!(w.publish_skipping(&meta, &routes).is_err());
    assert_eq!(w.generation(), 1);
}

#[test]
fn bad_routes_and_meta_are_rejected_and_nothing_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes");
    let mut w = RouteTableWriter::open(&path).unwrap();
    w.publish(&meta16(), &routes16()).unwrap();
    let mut r = RouteTableReader::open(&path).unwrap();

    let e = w
        .publish(&meta16(), &[route("10.1.15.0/25", "192.168.0.15")])
        .unwrap_err();
    assert!(
        matches!(e, RouteTableError::WrongSubnetLen { subnet_len: 24, .. }),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "route 10.1.15.0/25 -> 192.168.0.15: prefix /25 but the subnet length is /24"
    );
    let e = w
        .publish(&meta16(), &[route("10.2.15.0/24", "192.168.0.15")])
        .unwrap_err();
    assert!(
        matches!(e, RouteTableError::RouteOutsideNetwork { .. }),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "route 10.2.15.0/24 -> 192.168.0.15 is outside the network 10.1.0.0/16"
    );
    let e = w
        .publish(&meta16(), &[route("10.1.2.0/24", "0.0.0.0")])
        .unwrap_err();
    assert!(
        matches!(e, RouteTableError::UnspecifiedPublicIp { .. }),
        "{e}"
    );

    let mut meta = meta16();
    meta.subnet_len = 8;
    let e = w.publish(&meta, &[]).unwrap_err();
    assert!(matches!(e, RouteTableError::InvalidMeta { .. }), "{e}");
    meta.subnet_len = 33;
    assert!(matches!(
        w.publish(&meta, &[]),
        Err(RouteTableError::InvalidMeta { .. })
    ));
    let mut meta = meta16();
    meta.our_subnet = Some(net("10.2.0.0/24"));
    assert!(matches!(
        w.publish(&meta, &[]),
        Err(RouteTableError::InvalidMeta { .. })
    ));
    let meta = TableMeta {
        network: net("10.0.0.0/7"),
        subnet_len: 32,
        our_subnet: None,
        mtu: 1500,
        port: 1,
    };
    let e = w.publish(&meta, &[]).unwrap_err();
    assert!(
        matches!(
            e,
            RouteTableError::TooManyEntries {
                entries: 33_554_432,
                subnet_len: 32,
                ..
            }
        ),
        "{e}"
    );

    assert_eq!(w.generation(), 1);
    assert_eq!(r.generation(), 1);
    let s = r.snapshot().unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(s.meta(), &meta16());
}

#[test]
fn a_second_writer_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes");
    let w = RouteTableWriter::open(&path).unwrap();
    let e = RouteTableWriter::open(&path).unwrap_err();
    assert!(matches!(e, RouteTableError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("routes.lock"), "{e}");
    drop(w);
    RouteTableWriter::open(&path).unwrap();
}

#[test]
fn handles_are_send() {
    fn send<T: Send>() {}
    send::<RouteTableWriter>();
    send::<RouteTableReader>();
    send::<RouteSnapshot>();
}

/// A table file replaced without the old one being marked retired (the writer died between
/// the rename and the old header's update; a reader that mapped the old file then): the
/// reader follows the path within IDENTITY_CHECK, not never.
#[test]
fn a_reader_follows_a_replaced_file_that_was_never_retired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes");
    let mut w = RouteTableWriter::open(&path).unwrap();
    w.publish(&meta16(), &routes16()).unwrap();
    let mut r = RouteTableReader::open(&path).unwrap();
    let mut snap = r.snapshot().unwrap();
    // Another table, written elsewhere and renamed over the path; the old file stays as it
    // was (not retired), as if its writer had died.
    let other = dir.path().join("other/routes");
    let mut w2 = RouteTableWriter::open(&other).unwrap();
    let only = [Route {
        subnet: "10.1.99.0/24".parse().unwrap(),
        public_ip: Ipv4Addr::new(198, 18, 0, 99),
    }];
    w2.publish(&meta16(), &only).unwrap();
    fs::rename(&other, &path).unwrap();
    assert!(
        !r.refresh(&mut snap).unwrap(),
        "the old mapping alone says nothing changed"
    );
    assert!(r.follow_replaced(&mut snap).unwrap());
    assert_eq!(snap.len(), 1);
    assert_eq!(
        snap.lookup(Ipv4Addr::new(10, 1, 99, 7)),
        Some(Ipv4Addr::new(198, 18, 0, 99))
    );
    // And through refresh alone, once IDENTITY_CHECK has passed.
    let mut r2 = RouteTableReader::open(&path).unwrap();
    let mut snap2 = r2.snapshot().unwrap();
    let mut w3 = RouteTableWriter::open(&dir.path().join("third/routes")).unwrap();
    w3.publish(&meta16(), &routes16()).unwrap();
    fs::rename(dir.path().join("third/routes"), &path).unwrap();
    std::thread::sleep(IDENTITY_CHECK + std::time::Duration::from_millis(50));
    assert!(r2.refresh(&mut snap2).unwrap());
    assert_eq!(snap2.len(), routes16().len());
    drop((w, w2, w3));
}

/// The lock file is the writer's alone: mode 0600 (an existing 0644 one is tightened), never
/// opened through a symlink, refused when another user owns it (as root: chowned here).
#[test]
fn lock_file_is_private_to_the_writer() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/routes");
    let lock = dir.path().join("run/routes.lock");
    fs::create_dir_all(dir.path().join("run")).unwrap();
    fs::write(&lock, b"").unwrap();
    fs::set_permissions(&lock, Permissions::from_mode(0o644)).unwrap();
    let w = RouteTableWriter::open(&path).unwrap();
    assert_eq!(fs::metadata(&lock).unwrap().mode() & 0o7777, 0o600);
    drop(w);

    // A directory the writer creates is writable by its owner only, whatever the umask.
    // SAFETY: umask has no preconditions; restored right after.
    let old = unsafe { libc::umask(0o000) };
    let fresh = dir.path().join("fresh/deeper/routes");
    let made = RouteTableWriter::open(&fresh);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    drop(made.unwrap());
    for d in ["fresh", "fresh/deeper"] {
        let mode = fs::metadata(dir.path().join(d)).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755, "{d}");
    }

    // A symlink at the lock's name is not followed.
    fs::remove_file(&lock).unwrap();
    let target = dir.path().join("elsewhere");
    fs::write(&target, b"x").unwrap();
    std::os::unix::fs::symlink(&target, &lock).unwrap();
    let err = match RouteTableWriter::open(&path) {
        Ok(_) => panic!("symlinked lock accepted"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("routes.lock"), "{err}");
    assert_eq!(fs::read(&target).unwrap(), b"x");

    // Someone else's lock file (needs root to make one).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        fs::remove_file(&lock).unwrap();
        fs::write(&lock, b"").unwrap();
        std::os::unix::fs::chown(&lock, Some(65534), Some(65534)).unwrap();
        let err = match RouteTableWriter::open(&path) {
            Ok(_) => panic!("foreign lock accepted"),
            Err(e) => e,
        };
        assert_eq!(
            err.to_string(),
            format!(
                "route table lock {} is not a regular file of this user (owner uid 65534): remove it",
                lock.display()
            )
        );
    }
}

#[test]
fn format_table_golden() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes");
    let mut w = RouteTableWriter::open(&path).unwrap();
    w.publish(&meta16(), &routes16()).unwrap();
    let s = RouteTableReader::open(&path).unwrap().snapshot().unwrap();
    assert_eq!(
        format_table(&s),
        "generation: 1\n\
         network:    10.1.0.0/16\n\
         subnet len: 24\n\
         our subnet: 10.1.15.0/24\n\
         mtu:        1450\n\
         port:       8472\n\
         routes:     3\n\
         SUBNET         PUBLIC_IP\n\
         10.1.0.0/24    192.168.0.1\n\
         10.1.15.0/24   192.168.0.15\n\
         10.1.255.0/24  192.168.0.255\n"
    );
    let mut meta = meta16();
    meta.our_subnet = None;
    w.publish(&meta, &[]).unwrap();
    let s = RouteTableReader::open(&path).unwrap().snapshot().unwrap();
    let text = format_table(&s);
    assert!(text.contains("our subnet: none\n"), "{text}");
    assert!(
        text.ends_with("routes:     0\nSUBNET  PUBLIC_IP\n"),
        "{text}"
    );
}
