//! The route table's errors, each naming the file (or route) it is about.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::{LAYOUT_VERSION, MAGIC, MAX_CAPACITY};
use crate::Ipv4Net;

/// Everything that can go wrong opening, publishing or reading a route table.
#[derive(Debug, thiserror::Error)]
pub enum RouteTableError {
    #[error("route table {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("route table {}: not a route table (magic {found:#018x}, expected {MAGIC:#018x})", path.display())]
    BadMagic { path: PathBuf, found: u64 },
    #[error("route table {}: layout version {found}, this build reads version {LAYOUT_VERSION}", path.display())]
    BadVersion { path: PathBuf, found: u32 },
    #[error("route table {}: file is {len} bytes, needs at least {needed}", path.display())]
    TooSmall {
        path: PathBuf,
        len: u64,
        needed: u64,
    },
    #[error("route table {}: corrupt: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    #[error("route table {}: nothing published yet (generation 0)", path.display())]
    NotPublished { path: PathBuf },
    /// `path` is the lock file; someone else made it.
    #[error("route table lock {} is not a regular file of this user (owner uid {uid}): remove it", path.display())]
    LockNotOurs { path: PathBuf, uid: u32 },
    /// `path` is the lock file, `<table path>.lock`.
    #[error("route table lock {} is held by another writer", path.display())]
    Locked { path: PathBuf },
    #[error("route table {}: the writer kept rewriting the table; gave up after {attempts} attempts", path.display())]
    Contended { path: PathBuf, attempts: u32 },
    #[error("invalid table meta: {what}")]
    InvalidMeta { what: String },
    #[error("route {subnet} -> {public_ip} is outside the network {network}")]
    RouteOutsideNetwork {
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        network: Ipv4Net,
    },
    #[error("route {subnet} -> {public_ip}: prefix /{} but the subnet length is /{subnet_len}", subnet.prefix())]
    WrongSubnetLen {
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        subnet_len: u8,
    },
    #[error("route {subnet}: public IP 0.0.0.0 is not a host")]
    UnspecifiedPublicIp { subnet: Ipv4Net },
    #[error("network {network} with subnet length /{subnet_len} has {entries} subnets, more than the maximum {MAX_CAPACITY}")]
    TooManyEntries {
        network: Ipv4Net,
        subnet_len: u8,
        entries: u64,
    },
}

pub(crate) type Result<T> = std::result::Result<T, RouteTableError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RouteTableError + '_ {
    move |source| RouteTableError::Io {
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn corrupt(path: &Path, what: String) -> RouteTableError {
    RouteTableError::Corrupt {
        path: path.to_owned(),
        what,
    }
}
