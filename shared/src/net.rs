//! IPv4 networks as flannel writes them: `10.1.0.0/16` in config, `10.1.15.0-24` in lease keys.
//!
//! Pure value types, no I/O. Every constructor validates, so an [`Ipv4Net`] is always a
//! network address (host bits zero) with a prefix of 0..=32.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: a network address with all host bits zero and a prefix length 0..=32.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: u32,
    prefix: u8,
}

/// Why a string is not an IPv4 network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetParseError {
    #[error("{0:?} is not of the form A.B.C.D/N")]
    Syntax(String),
    #[error("{0:?}: prefix length must be 0..=32")]
    Prefix(String),
    #[error("{0:?}: host bits are set (the network address is {1})")]
    HostBits(String, Ipv4Net),
}

impl Ipv4Net {
    /// A network from an address and prefix; `None` when the prefix exceeds 32 or host bits are set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        if prefix > 32 {
            return None;
        }
        let a = u32::from(addr);
        (a & mask(prefix) == a).then_some(Self { addr: a, prefix })
    }

    /// The network holding `addr` with `prefix` (host bits cleared). `None` when prefix > 32.
    pub fn containing(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then(|| Self {
            addr: u32::from(addr) & mask(prefix),
            prefix,
        })
    }

    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    pub fn addr_u32(&self) -> u32 {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask as a host-order integer (`/24` → `0xffff_ff00`).
    pub fn mask(&self) -> u32 {
        mask(self.prefix)
    }

    /// Number of addresses, as u64 so that `/0` fits.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The last address of the network.
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.addr
    }

    /// True when `other` lies entirely inside `self`.
    pub fn contains_net(&self, other: &Ipv4Net) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr())
    }

    /// `10.1.15.0-24`: the form flannel uses in lease keys.
    pub fn to_key(&self) -> String {
        format!("{}-{}", self.addr(), self.prefix)
    }

    /// Parses the lease-key form `10.1.15.0-24`.
    pub fn from_key(s: &str) -> Result<Self, NetParseError> {
        let (a, p) = s
            .split_once('-')
            .ok_or_else(|| NetParseError::Syntax(s.to_owned()))?;
        parse_parts(s, a, p)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn parse_parts(whole: &str, a: &str, p: &str) -> Result<Ipv4Net, NetParseError> {
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| NetParseError::Syntax(whole.to_owned()))?;
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NetParseError::Syntax(whole.to_owned()));
    }
    let prefix: u8 = p
        .parse()
        .map_err(|_| NetParseError::Prefix(whole.to_owned()))?;
    if prefix > 32 {
        return Err(NetParseError::Prefix(whole.to_owned()));
    }
    Ipv4Net::new(addr, prefix).ok_or_else(|| {
        NetParseError::HostBits(
            whole.to_owned(),
            Ipv4Net::containing(addr, prefix).expect("prefix checked"),
        )
    })
}

impl FromStr for Ipv4Net {
    type Err = NetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| NetParseError::Syntax(s.to_owned()))?;
        parse_parts(s, a, p)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix)
    }
}

impl fmt::Debug for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let n: Ipv4Net = "10.1.0.0/16".parse().unwrap();
        assert_eq!(n.to_string(), "10.1.0.0/16");
        assert_eq!(n.size(), 65536);
        assert_eq!(n.last(), Ipv4Addr::new(10, 1, 255, 255));
        assert!(n.contains(Ipv4Addr::new(10, 1, 200, 3)));
        assert!(!n.contains(Ipv4Addr::new(10, 2, 0, 0)));
        assert_eq!("0.0.0.0/0".parse::<Ipv4Net>().unwrap().size(), 1u64 << 32);
    }

    #[test]
    fn key_form_round_trips() {
        let n = Ipv4Net::from_key("10.1.15.0-24").unwrap();
        assert_eq!(n.to_key(), "10.1.15.0-24");
        assert_eq!(n.to_string(), "10.1.15.0/24");
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "10.1.0.0",
            "10.1.0.0/",
            "10.1.0.0/33",
            "10.1.0/16",
            "x/8",
            "10.1.0.0/+8",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
        let e = "10.1.2.0/16".parse::<Ipv4Net>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"10.1.2.0/16\": host bits are set (the network address is 10.1.0.0/16)"
        );
        assert!(Ipv4Net::from_key("10.1.15.0/24").is_err());
    }
}
