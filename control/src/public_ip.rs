//! Choosing the external interface and public IP, in flannel's order (v0.28.9 `main.go` and
//! `pkg/ipmatch`), IPv4 only:
//!
//! 1. each `-iface` in turn: an IPv4 address picks the interface that has it (with that
//!    address), a name picks that interface (with its first IPv4 address);
//! 2. else each `-iface-regex` in turn: first tried against every IPv4 address of every
//!    interface, then against every interface name (that interface's first IPv4 address);
//! 3. else `-iface-can-reach`: the interface the kernel routes that address through (the
//!    source address a connected UDP socket gets, and the interface that owns it; nothing is
//!    sent);
//! 4. none of these given: the interface that owns `-public-ip`, else the interface of the
//!    default route.
//!
//! The flags' values are used as given (flannel never splits them on commas). When flags are
//! given and none matches, the error lists every flag tried and why it did not match.
//! `-public-ip` overrides the advertised address; the interface still gives the MTU. The overlay
//! MTU is the interface MTU minus 28 (IPv4 + UDP).
//!
//! One difference from flannel: `-public-ip` alone with an address no interface has (a NAT
//! address) falls back to the default route's interface, with a warning; flannel exits.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use regex::Regex;

/// The chosen interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtIface {
    pub name: String,
    /// The interface's own IPv4 address.
    pub iface_addr: Ipv4Addr,
    /// The address advertised in the lease (`-public-ip`, else `iface_addr`).
    pub public_ip: Ipv4Addr,
    pub mtu: u32,
}

impl ExtIface {
    /// MTU of the overlay: interface MTU minus the 20-byte IPv4 and 8-byte UDP headers.
    pub fn overlay_mtu(&self) -> u32 {
        self.mtu.saturating_sub(28)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    /// Every flag given was tried; one reason per flag value, in order.
    #[error("{}", .0.join("; "))]
    NoMatch(Vec<String>),
    #[error(
        "no default route (checked /proc/net/route); pass -iface, -iface-regex or -iface-can-reach"
    )]
    NoDefaultRoute,
    #[error("interface {0} has no IPv4 address")]
    NoAddress(String),
    #[error("reading the MTU of {0}: {1}")]
    Mtu(String, String),
    #[error("listing interfaces: {0}")]
    List(String),
}

/// The flags that choose the interface.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selection<'a> {
    pub iface: &'a [String],
    pub iface_regex: &'a [String],
    pub iface_can_reach: Option<Ipv4Addr>,
    pub public_ip: Option<Ipv4Addr>,
}

/// One (interface, IPv4 address) pair as the system reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Addr {
    name: String,
    ip: Ipv4Addr,
}

fn list_addrs() -> Result<Vec<Addr>, IfaceError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| IfaceError::List(e.to_string()))?;
    Ok(addrs
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            Some(Addr {
                name: a.interface_name,
                ip,
            })
        })
        .collect())
}

fn mtu_of(name: &str) -> Result<u32, IfaceError> {
    let path = format!("/sys/class/net/{name}/mtu");
    std::fs::read_to_string(&path)
        .map_err(|e| IfaceError::Mtu(name.into(), format!("{path}: {e}")))?
        .trim()
        .parse()
        .map_err(|e| IfaceError::Mtu(name.into(), format!("{path}: {e}")))
}

fn default_route_iface() -> Result<String, IfaceError> {
    let text =
        std::fs::read_to_string("/proc/net/route").map_err(|_| IfaceError::NoDefaultRoute)?;
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
        })
        .next()
        .ok_or(IfaceError::NoDefaultRoute)
}

/// `-iface <spec>`: an IPv4 address or an interface name.
fn by_iface(addrs: &[Addr], spec: &str) -> Result<Addr, String> {
    let hit = match spec.parse::<Ipv4Addr>() {
        Ok(ip) => addrs.iter().find(|a| a.ip == ip),
        Err(_) => addrs.iter().find(|a| a.name == spec),
    };
    hit.cloned().ok_or_else(|| {
        let mut why = format!("-iface {spec}: no interface has this name or IPv4 address");
        if spec.contains(',') {
            why.push_str(" (the value is not split on commas: give -iface once per interface)");
        }
        why
    })
}

/// `-iface-regex <re>`: every address first, then every name.
fn by_regex(addrs: &[Addr], re: &str) -> Result<Addr, String> {
    let compiled = Regex::new(re)
        .map_err(|e| format!("-iface-regex {re:?}: invalid regular expression: {e}"))?;
    addrs
        .iter()
        .find(|a| compiled.is_match(&a.ip.to_string()))
        .or_else(|| addrs.iter().find(|a| compiled.is_match(&a.name)))
        .cloned()
        .ok_or_else(|| format!("-iface-regex {re:?}: no interface name or IPv4 address matches"))
}

/// The source address the kernel picks to reach `dst`: a UDP socket connected to it (connect
/// only looks the route up; nothing is sent).
pub fn route_source(dst: Ipv4Addr) -> std::io::Result<Ipv4Addr> {
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
    sock.connect(SocketAddrV4::new(dst, 9))?;
    match sock.local_addr()? {
        std::net::SocketAddr::V4(a) if !a.ip().is_unspecified() => Ok(*a.ip()),
        other => Err(std::io::Error::other(format!(
            "the kernel chose no IPv4 source address ({other})"
        ))),
    }
}

/// `-iface-can-reach <ip>`: the interface owning the route's source address.
fn by_can_reach(addrs: &[Addr], dst: Ipv4Addr) -> Result<Addr, String> {
    let src = route_source(dst).map_err(|e| format!("-iface-can-reach {dst}: no route: {e}"))?;
    addrs.iter().find(|a| a.ip == src).cloned().ok_or_else(|| {
        format!("-iface-can-reach {dst}: the route's source address {src} is on no interface")
    })
}

/// Picks the external interface from the flags.
pub fn choose(sel: Selection<'_>) -> Result<ExtIface, IfaceError> {
    choose_from(&list_addrs()?, sel)
}

fn choose_from(addrs: &[Addr], sel: Selection<'_>) -> Result<ExtIface, IfaceError> {
    let found = pick(addrs, sel)?;
    let mtu = mtu_of(&found.name)?;
    Ok(ExtIface {
        public_ip: sel.public_ip.unwrap_or(found.ip),
        iface_addr: found.ip,
        name: found.name,
        mtu,
    })
}

fn pick(addrs: &[Addr], sel: Selection<'_>) -> Result<Addr, IfaceError> {
    let flags_given =
        !sel.iface.is_empty() || !sel.iface_regex.is_empty() || sel.iface_can_reach.is_some();
    if !flags_given {
        if let Some(ip) = sel.public_ip {
            if let Some(a) = addrs.iter().find(|a| a.ip == ip) {
                tracing::info!(
                    iface = a.name,
                    "-public-ip {ip}: using the interface that has it"
                );
                return Ok(a.clone());
            }
            tracing::warn!(
                "-public-ip {ip}: no interface has this address (NAT?); using the default route's \
                 interface for the MTU (flannel would exit here: pass -iface to choose)"
            );
        }
        let name = default_route_iface()?;
        return addrs
            .iter()
            .find(|a| a.name == name)
            .cloned()
            .ok_or(IfaceError::NoAddress(name));
    }
    let mut misses = Vec::new();
    let tries = sel
        .iface
        .iter()
        .map(|spec| ("-iface", spec.clone(), by_iface(addrs, spec)))
        .chain(
            sel.iface_regex
                .iter()
                .map(|re| ("-iface-regex", re.clone(), by_regex(addrs, re))),
        )
        .chain(sel.iface_can_reach.into_iter().map(|dst| {
            (
                "-iface-can-reach",
                dst.to_string(),
                by_can_reach(addrs, dst),
            )
        }));
    // Lazily: flannel stops at the first match and never looks at the later flags.
    for (flag, value, result) in tries {
        match result {
            Ok(a) => {
                if !misses.is_empty() {
                    tracing::info!("{}", misses.join("; "));
                }
                tracing::info!(iface = a.name, addr = %a.ip, "{flag} {value}: matched");
                return Ok(a);
            }
            Err(why) => misses.push(why),
        }
    }
    Err(IfaceError::NoMatch(misses))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// A made-up host: eth0 198.18.0.1 and 198.18.5.1, eth10 198.18.10.1, wlan0 198.19.0.1.
    fn host() -> Vec<Addr> {
        [
            ("lo", "127.0.0.1"),
            ("eth0", "198.18.0.1"),
            ("eth0", "198.18.5.1"),
            ("eth10", "198.18.10.1"),
            ("wlan0", "198.19.0.1"),
        ]
        .iter()
        .map(|(n, ip)| Addr {
            name: n.to_string(),
            ip: ip.parse().unwrap(),
        })
        .collect()
    }

    fn pick_with(iface: &[&str], regex: &[&str]) -> Result<Addr, IfaceError> {
        let (iface, regex) = (strings(iface), strings(regex));
        pick(
            &host(),
            Selection {
                iface: &iface,
                iface_regex: &regex,
                ..Selection::default()
            },
        )
    }

    fn got(r: Result<Addr, IfaceError>) -> (String, String) {
        let a = r.unwrap();
        (a.name, a.ip.to_string())
    }

    fn pair(name: &str, ip: &str) -> (String, String) {
        (name.to_string(), ip.to_string())
    }

    #[test]
    fn loopback_by_name_ip_regex_and_can_reach() {
        let lo = strings(&["lo"]);
        let by_name = choose(Selection {
            iface: &lo,
            ..Selection::default()
        })
        .unwrap();
        assert_eq!(by_name.iface_addr, Ipv4Addr::LOCALHOST);
        assert_eq!(by_name.overlay_mtu(), by_name.mtu - 28);
        let ip = strings(&["127.0.0.1"]);
        let by_ip = choose(Selection {
            iface: &ip,
            public_ip: Some(Ipv4Addr::new(198, 18, 0, 1)),
            ..Selection::default()
        })
        .unwrap();
        assert_eq!(by_ip.name, "lo");
        assert_eq!(by_ip.public_ip, Ipv4Addr::new(198, 18, 0, 1));
        let re = strings(&["^lo$"]);
        let by_re = choose(Selection {
            iface_regex: &re,
            ..Selection::default()
        })
        .unwrap();
        assert_eq!(by_re.name, "lo");
        // The kernel routes 127.0.0.7 through lo with source 127.0.0.1: no packet is sent.
        let by_route = choose(Selection {
            iface_can_reach: Some(Ipv4Addr::new(127, 0, 0, 7)),
            ..Selection::default()
        })
        .unwrap();
        assert_eq!(
            (by_route.name.as_str(), by_route.iface_addr),
            ("lo", Ipv4Addr::LOCALHOST)
        );
        // -public-ip alone: the interface that has the address.
        let by_public = choose(Selection {
            public_ip: Some(Ipv4Addr::LOCALHOST),
            ..Selection::default()
        })
        .unwrap();
        assert_eq!(by_public.name, "lo");
    }

    #[test]
    fn iface_values_are_tried_in_order_and_never_split() {
        assert_eq!(
            got(pick_with(&["eth10"], &[])),
            pair("eth10", "198.18.10.1")
        );
        // By name: the first address; by address: that address.
        assert_eq!(got(pick_with(&["eth0"], &[])), pair("eth0", "198.18.0.1"));
        assert_eq!(
            got(pick_with(&["198.18.5.1"], &[])),
            pair("eth0", "198.18.5.1")
        );
        assert_eq!(
            got(pick_with(&["nosuch0", "wlan0", "eth0"], &[])),
            pair("wlan0", "198.19.0.1")
        );
        let e = pick_with(&["eth0,wlan0"], &[]).unwrap_err().to_string();
        assert_eq!(
            e,
            "-iface eth0,wlan0: no interface has this name or IPv4 address (the value is not \
             split on commas: give -iface once per interface)"
        );
    }

    #[test]
    fn regexes_come_after_iface_and_match_addresses_before_names() {
        // flannel's example: a counted repetition holds a comma.
        assert_eq!(
            got(pick_with(&[], &["eth[0-9]{1,2}"])),
            pair("eth0", "198.18.0.1")
        );
        // Interfaces in the system's order: lo's 127.0.0.1 is the first address with a "1".
        assert_eq!(got(pick_with(&[], &["1"])), pair("lo", "127.0.0.1"));
        // An address match on a later interface wins over a name match on an earlier one.
        assert_eq!(
            got(pick_with(&[], &["^198\\.19\\.|^eth"])),
            pair("wlan0", "198.19.0.1")
        );
        assert_eq!(
            got(pick_with(&[], &["^198\\.18\\.5\\."])),
            pair("eth0", "198.18.5.1")
        );
        // Regexes in order; an -iface that matches wins over every regex.
        assert_eq!(
            got(pick_with(&[], &["^nomatch$", "^wlan"])),
            pair("wlan0", "198.19.0.1")
        );
        assert_eq!(
            got(pick_with(&["eth10"], &["^wlan"])),
            pair("eth10", "198.18.10.1")
        );
        // An -iface that matches nothing falls through to the regexes.
        assert_eq!(
            got(pick_with(&["nosuch0"], &["^wlan"])),
            pair("wlan0", "198.19.0.1")
        );
    }

    #[test]
    fn errors_name_every_flag_tried() {
        let e = pick_with(&["nosuch0"], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "-iface nosuch0: no interface has this name or IPv4 address"
        );
        let e = pick_with(&[], &["("]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("-iface-regex \"(\": invalid regular expression"),
            "{e}"
        );
        let e = pick_with(&[], &["^zzz-none$"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "-iface-regex \"^zzz-none$\": no interface name or IPv4 address matches"
        );
        let iface = strings(&["nosuch0"]);
        let re = strings(&["^zzz$"]);
        let without_lo: Vec<Addr> = host().into_iter().filter(|a| a.name != "lo").collect();
        let e = pick(
            &without_lo,
            Selection {
                iface: &iface,
                iface_regex: &re,
                iface_can_reach: Some(Ipv4Addr::new(127, 0, 0, 1)),
                public_ip: None,
            },
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "-iface nosuch0: no interface has this name or IPv4 address; \
             -iface-regex \"^zzz$\": no interface name or IPv4 address matches; \
             -iface-can-reach 127.0.0.1: the route's source address 127.0.0.1 is on no interface"
        );
    }
}
