//! flannel-rs test and benchmark harness.
//!
//! [`testbed`] builds what tests and benchmarks run against: a real `etcd` process on loopback with
//! a temp data dir, our real binaries as child processes, and (for multi-host runs) network
//! namespaces. Everything started here is stopped by PID on drop, also when a test fails.
//! [`harness`] is the perf harness (`scripts/perf`, the `flannel-perf` binary), [`scale`] the
//! cluster-size simulation (`flannel-scale`); [`report`] is what both write their reports with.

#![forbid(unsafe_code)]

pub mod harness;
pub mod report;
pub mod scale;
pub mod testbed;
