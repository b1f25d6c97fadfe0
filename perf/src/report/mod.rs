//! What the perf harness ([`crate::harness`]) and the scale run ([`crate::scale`]) both use to
//! write their reports (pure): [`summary`] (median, min and max of repeated samples),
//! [`latency`] (percentiles and a log-bucket histogram of durations), [`markdown`] (number
//! formatting and table rows) and [`svg`] (XML escaping and the pieces every chart shares).

pub mod latency;
pub mod markdown;
pub mod summary;
pub mod svg;
