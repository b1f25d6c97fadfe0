//! Files shared between processes through `mmap`: the route table and the data plane's
//! counters. The only module of this crate allowed `unsafe`.
//!
//! # Contract
//!
//! - A shared file is reached only through a validated mapping: its size, alignment and header
//!   are checked before any pointer into it becomes a reference, and every reference borrows
//!   the owner of the mapping.
//! - Every byte of a shared file is read and written through atomics, by every process, so
//!   concurrent access is never a data race and any bit pattern is a valid value. A malformed
//!   file yields an error, never undefined behaviour.
//! - Nothing here truncates a mapped file (a reader's access would raise SIGBUS). Files are
//!   made at their full size with every block allocated, under a temporary name, and renamed
//!   into place.
//! - Each `unsafe` block states why it is sound in a `// SAFETY:` comment.
//!
//! The route table's layout and protocol are specified in [`crate::route_table`], the counters'
//! layout in [`crate::stats`]; those public modules re-export the handles made here.
//!
//! - [`file`](mod@file): sizing a shared file with every block allocated.
//! - [`route_table`]: the route table's layout, files, writer and readers.
//! - [`stats`]: the counters file's layout, writer and readers.

pub(crate) mod file;
pub(crate) mod route_table;
pub(crate) mod stats;
