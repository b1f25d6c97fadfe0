//! Choosing the external interface and public IP, as flannel does:
//! `-iface` (name or IP, first usable wins), else `-iface-regex` (matched against names and IPs),
//! else the interface of the default route. `-public-ip` overrides the advertised address; the
//! interface still gives the MTU. The overlay MTU is the interface MTU minus 28 (IPv4 + UDP).

use std::net::Ipv4Addr;

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
    #[error("-iface {0}: no interface has this name or IPv4 address")]
    NoSuchIface(String),
    #[error("-iface-regex {0:?}: invalid regular expression: {1}")]
    BadRegex(String, String),
    #[error("-iface-regex {0:?}: no interface name or IPv4 address matches")]
    RegexNoMatch(Vec<String>),
    #[error("no default route (checked /proc/net/route); pass -iface or -iface-regex")]
    NoDefaultRoute,
    #[error("interface {0} has no IPv4 address")]
    NoAddress(String),
    #[error("reading the MTU of {0}: {1}")]
    Mtu(String, String),
    #[error("listing interfaces: {0}")]
    List(String),
}

/// One (interface, IPv4 address) pair as the system reports it.
#[derive(Debug, Clone)]
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

/// Picks the external interface from the flags.
pub fn choose(
    ifaces: &[String],
    regexes: &[String],
    public_ip: Option<Ipv4Addr>,
) -> Result<ExtIface, IfaceError> {
    let addrs = list_addrs()?;
    let found = if !ifaces.is_empty() {
        let mut found = None;
        for spec in ifaces {
            let hit = match spec.parse::<Ipv4Addr>() {
                Ok(ip) => addrs.iter().find(|a| a.ip == ip),
                Err(_) => addrs.iter().find(|a| &a.name == spec),
            };
            match hit {
                Some(a) => {
                    found = Some(a.clone());
                    break;
                }
                None => tracing::warn!("-iface {spec}: no interface has this name or IPv4 address"),
            }
        }
        found.ok_or_else(|| IfaceError::NoSuchIface(ifaces.join(",")))?
    } else if !regexes.is_empty() {
        let compiled = regexes
            .iter()
            .map(|r| Regex::new(r).map_err(|e| IfaceError::BadRegex(r.clone(), e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        compiled
            .iter()
            .find_map(|re| {
                addrs
                    .iter()
                    .find(|a| re.is_match(&a.ip.to_string()) || re.is_match(&a.name))
            })
            .cloned()
            .ok_or_else(|| IfaceError::RegexNoMatch(regexes.to_vec()))?
    } else {
        let name = default_route_iface()?;
        addrs
            .iter()
            .find(|a| a.name == name)
            .cloned()
            .ok_or(IfaceError::NoAddress(name))?
    };
    let mtu = mtu_of(&found.name)?;
    Ok(ExtIface {
        public_ip: public_ip.unwrap_or(found.ip),
        iface_addr: found.ip,
        name: found.name,
        mtu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_by_name_and_ip() {
        let by_name = choose(&["lo".into()], &[], None).unwrap();
        assert_eq!(by_name.iface_addr, Ipv4Addr::LOCALHOST);
        assert_eq!(by_name.overlay_mtu(), by_name.mtu - 28);
        let by_ip = choose(
            &["127.0.0.1".into()],
            &[],
            Some(Ipv4Addr::new(198, 18, 0, 1)),
        )
        .unwrap();
        assert_eq!(by_ip.name, "lo");
        assert_eq!(by_ip.public_ip, Ipv4Addr::new(198, 18, 0, 1));
        let by_re = choose(&[], &["^lo$".into()], None).unwrap();
        assert_eq!(by_re.name, "lo");
    }

    #[test]
    fn errors_name_the_flag() {
        let e = choose(&["nosuch0".into()], &[], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "-iface nosuch0: no interface has this name or IPv4 address"
        );
        let e = choose(&[], &["(".into()], None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("-iface-regex \"(\": invalid regular expression"),
            "{e}"
        );
        let e = choose(&[], &["^zzz-none$".into()], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "-iface-regex [\"^zzz-none$\"]: no interface name or IPv4 address matches"
        );
    }
}
