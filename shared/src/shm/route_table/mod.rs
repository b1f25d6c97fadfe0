//! The route table in memory (specified in [`crate::route_table`]): its layout and validated
//! mapping, its files, the one writer and the readers.

pub(crate) mod file;
pub(crate) mod layout;
pub(crate) mod reader;
pub(crate) mod writer;

#[cfg(test)]
mod tests;
