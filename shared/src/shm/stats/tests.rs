//! The stats file written and read back, and files a reader must refuse.

use super::*;
use crate::stats::{Counter, IoPath, StatsError};

#[test]
fn names_are_unique_and_fit() {
    let mut seen = std::collections::HashSet::new();
    for c in Counter::ALL {
        assert!(c.name().len() < NAME_SIZE, "{}", c.name());
        assert!(seen.insert(c.name()));
        assert_eq!(Counter::ALL[*c as usize], *c);
    }
}

#[test]
fn write_then_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub/dp.stats");
    let w = StatsWriter::create(&p, 3).unwrap();
    w.set_io_path(IoPath::IoUring);
    let w1 = w.worker(1);
    w1.add(Counter::UdpRxPackets, 5);
    let mut local = [0u64; Counter::COUNT];
    local[Counter::DropSpoofedSrc as usize] = 2;
    local[Counter::UdpRxPackets as usize] = 1;
    w.worker(2).add_batch(&local);
    let r = StatsReader::open(&p).unwrap();
    assert_eq!(r.workers(), 3);
    assert_eq!(r.io_path(), IoPath::IoUring);
    assert_eq!(r.pid(), std::process::id());
    let s = r.snapshot();
    assert_eq!(s[1].get("udp_rx_packets"), Some(5));
    assert_eq!(s[2].get("drop_spoofed_src"), Some(2));
    assert_eq!(s[0].get("udp_rx_packets"), Some(0));
    assert_eq!(r.total("udp_rx_packets"), 6);
    // Live: later adds are visible through the same reader.
    w1.add(Counter::UdpRxPackets, 1);
    assert_eq!(r.total("udp_rx_packets"), 7);
    assert_eq!(r.names().len(), Counter::COUNT);
}

/// Counters near 2^64 in two workers wrap in `total` instead of overflowing (a panic in
/// debug builds).
#[test]
fn total_of_huge_counters_wraps_instead_of_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dp.stats");
    let w = StatsWriter::create(&p, 2).unwrap();
    w.worker(0).add(Counter::UdpRxPackets, u64::MAX);
    w.worker(1).add(Counter::UdpRxPackets, 3);
    let r = StatsReader::open(&p).unwrap();
    assert_eq!(r.total("udp_rx_packets"), 2);
}

#[test]
fn rejects_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, [0u8; 10]).unwrap();
    assert!(matches!(StatsReader::open(&p), Err(StatsError::Corrupt(_))));
    std::fs::write(&p, [0u8; 200]).unwrap();
    assert!(matches!(
        StatsReader::open(&p),
        Err(StatsError::BadMagic(_))
    ));
    let w = StatsWriter::create(&p, 2).unwrap();
    drop(w);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.truncate(bytes.len() - 8);
    std::fs::write(&p, &bytes).unwrap();
    assert!(matches!(StatsReader::open(&p), Err(StatsError::Corrupt(_))));
    assert!(StatsReader::open(&dir.path().join("absent")).is_err());
}

/// The temporary file is created new and never through a symlink: a link planted at its
/// name (pointing at a file of someone else's) is removed, its target left untouched.
#[test]
fn a_symlink_at_the_temporary_name_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dp.stats");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let tmp = dir
        .path()
        .join(format!("dp.stats.tmp{}", std::process::id()));
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    let w = StatsWriter::create(&path, 1).unwrap();
    w.worker(0).add(Counter::DropSpoofedSrc, 3);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!tmp.exists() && tmp.symlink_metadata().is_err());
    assert!(!path.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(
        StatsReader::open(&path)
            .unwrap()
            .total(Counter::DropSpoofedSrc.name()),
        3
    );
}
