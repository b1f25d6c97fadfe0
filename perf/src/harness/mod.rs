//! The perf harness behind `scripts/perf` and the `flannel-perf` binary:
//! ours vs ours with offloads off vs ours on the fallback I/O path vs kernel VXLAN vs the bare
//! underlay, side by side on one namespace testbed, N repeats: every repeat's figure, medians
//! with min/max, where the TCP tests' threads ran, a paced UDP search, issue 30's targets.
//!
//! Pure parts (unit-tested on captured outputs): [`iperf`] (iperf3 `-J` JSON), [`ping`]
//! (iputils output), [`profile`] (`perf report` / `perf stat` into cost categories), [`cpu`]
//! (`/proc` stat parsing), [`floor`] (the design's floor: VXLAN + four copies), [`placement`] (per-thread CPU snapshots into CPU time per CPU; its
//! sampler is a thin `/proc` reader), [`udpsearch`] (the paced UDP search), [`udploss`] (where unpaced UDP datagrams were lost), [`targets`] (issue
//! 19's targets, ours vs kernel VXLAN), [`metric`] (the figures a sample holds, as [`metric::MetricKey`]),
//! [`model`] (what a run produces, serialised to JSON), [`markdown`] (the tables) and [`svg`]
//! (the chart); statistics and formatting shared with the scale run are in [`crate::report`].
//! The I/O lives in [`mod@bench`]: the testbed, the variants, running iperf3 and ping in the
//! namespaces, reading CPU time and per-worker counters, writing the files; child processes go
//! through [`crate::testbed::process`].

pub mod bench;
pub mod cpu;
pub mod floor;
pub mod iperf;
pub mod markdown;
pub mod metric;
pub mod model;
pub mod ping;
pub mod placement;
pub mod profile;
pub mod svg;
pub mod targets;
pub mod udploss;
pub mod udpsearch;
