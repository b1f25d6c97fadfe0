//! Which interfaces hold an IPv4 address: `getifaddrs(3)` (netlink underneath, any kernel).
//! Used to find the underlay interface(s) from our lease's public IP.

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;

/// The names of the interfaces that have `ip` as one of their IPv4 addresses.
pub fn interfaces_with_ipv4(ip: Ipv4Addr) -> io::Result<Vec<String>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; on success the list is freed below.
    super::cvt(unsafe { libc::getifaddrs(&mut head) })?;
    let mut names = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr of at least its family's size.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        if Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) != ip {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        names.push(name.to_string_lossy().into_owned());
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once; no reference into the
    // list outlives this point.
    unsafe { libc::freeifaddrs(head) };
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_holds_127_0_0_1() {
        assert_eq!(
            interfaces_with_ipv4(Ipv4Addr::LOCALHOST).unwrap(),
            vec!["lo".to_string()]
        );
        assert!(interfaces_with_ipv4(Ipv4Addr::new(198, 19, 255, 254))
            .unwrap()
            .is_empty());
    }
}
