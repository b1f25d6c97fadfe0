//! The design's floor: what a userspace overlay that copies each byte four times across the
//! user/kernel boundary (TUN read, UDP send, UDP receive, TUN write) must spend at least, on
//! this machine: kernel VXLAN's machine CPU per GB (which copies nothing) plus four copies of
//! a GB. [`measure_copy`] times the copies (a memcpy of 64 KiB chunks, the size of the
//! super-packets every one of the four moves, between buffers larger than the caches);
//! [`floor_s_per_gb`] and [`FloorRow`] are pure.

use serde::Serialize;

use crate::report::summary::summarize;

/// The goal: ours' machine CPU per GB at most this many times the floor.
pub const FLOOR_TARGET: f64 = 1.15;
/// Copies of each byte in the design.
pub const COPIES: f64 = 4.0;
/// The chunk each copy moves: a TUN super-packet, a UDP GSO send, a GRO receive, a coalesced
/// TUN write.
pub const CHUNK: usize = 64 * 1024;
/// Source and destination buffers: larger than any cache here, as the packets' data is.
const BUFFER: usize = 64 << 20;
/// Bytes copied per sample (1 GB).
const PER_SAMPLE: usize = 1_000_000_000;

/// One copy of a GB on this machine, measured.
#[derive(Debug, Clone, Serialize)]
pub struct CopyCost {
    /// CPU seconds per GB copied once: the median of `samples`.
    pub s_per_gb: f64,
    pub samples: Vec<f64>,
    pub chunk_bytes: usize,
}

/// Times `samples` copies of 1 GB in [`CHUNK`]-byte memcpys (wall time of one thread, which
/// is busy throughout).
pub fn measure_copy(samples: usize) -> CopyCost {
    let src: Vec<u8> = (0..BUFFER).map(|i| (i * 31 % 251) as u8).collect();
    let mut dst = vec![0u8; BUFFER];
    let chunks = BUFFER / CHUNK;
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = std::time::Instant::now();
        let mut copied = 0;
        let mut i = 0;
        while copied < PER_SAMPLE {
            // Source and destination chunks walk the buffers out of step, like packets through
            // rings of different sizes.
            let s = (i % chunks) * CHUNK;
            let d = ((i * 7 + 3) % chunks) * CHUNK;
            dst[d..d + CHUNK].copy_from_slice(&src[s..s + CHUNK]);
            copied += CHUNK;
            i += 1;
        }
        std::hint::black_box(&dst);
        times.push(start.elapsed().as_secs_f64() * 1e9 / copied as f64);
    }
    CopyCost {
        s_per_gb: summarize(&times).map_or(f64::NAN, |s| s.median),
        samples: times,
        chunk_bytes: CHUNK,
    }
}

/// The floor in machine CPU seconds per GB: VXLAN's plus [`COPIES`] copies.
pub fn floor_s_per_gb(vxlan_machine_s_per_gb: f64, copy_s_per_gb: f64) -> f64 {
    vxlan_machine_s_per_gb + COPIES * copy_s_per_gb
}

/// One line of the floor table: ours' machine CPU per GB against the floor.
#[derive(Debug, Clone, PartialEq)]
pub struct FloorRow {
    pub vxlan: f64,
    pub copies: f64,
    pub floor: f64,
    pub ours: f64,
    /// ours ÷ floor.
    pub ratio: f64,
}

/// The row for one stream count (medians); `None` when a figure is missing.
pub fn floor_row(ours: Option<f64>, vxlan: Option<f64>, copy: &CopyCost) -> Option<FloorRow> {
    let (o, x) = (ours?, vxlan?);
    if !(o.is_finite() && x.is_finite() && copy.s_per_gb.is_finite()) {
        return None;
    }
    let floor = floor_s_per_gb(x, copy.s_per_gb);
    Some(FloorRow {
        vxlan: x,
        copies: COPIES * copy.s_per_gb,
        floor,
        ours: o,
        ratio: o / floor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_adds_four_copies_to_vxlan() {
        let copy = CopyCost {
            s_per_gb: 0.05,
            samples: vec![0.05],
            chunk_bytes: CHUNK,
        };
        let r = floor_row(Some(1.26), Some(1.0), &copy).unwrap();
        assert!((r.copies - 0.2).abs() < 1e-12);
        assert!((r.floor - 1.2).abs() < 1e-12);
        assert!((r.ratio - 1.05).abs() < 1e-12);
        assert!(floor_row(None, Some(1.0), &copy).is_none());
        assert!(floor_row(Some(f64::NAN), Some(1.0), &copy).is_none());
    }

    #[test]
    fn a_copy_is_measured_in_seconds_per_gb() {
        let c = measure_copy(1);
        // Any machine copies a GB in between 1 ms and 10 s.
        assert!(c.s_per_gb > 0.001 && c.s_per_gb < 10.0, "{c:?}");
        assert_eq!(c.samples.len(), 1);
    }
}
