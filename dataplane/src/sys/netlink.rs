//! Configuring the TUN device: address and route through rtnetlink (hand-built messages, one
//! request and one ACK each), MTU and link state through the classic `SIOCSIF*` ioctls.
//!
//! Per-device sysctls go through rtnetlink too (RTM_SETLINK, `IFLA_AF_SPEC`), so the data plane
//! needs no writable /proc/sys (its unit has ProtectKernelTunables=): `accept_local` as
//! `AF_INET`/`IFLA_INET_CONF` (Linux 2.6.37). IPv6 has no such setter: the kernel refuses
//! `AF_INET6`/`IFLA_INET6_CONF` in RTM_SETLINK with EINVAL (tried on 6.18; it accepts only the
//! token and the address generation mode), so [`disable_ipv6`] still writes
//! `/proc/sys/net/ipv6/conf/<dev>/disable_ipv6` where it can and otherwise sets the address
//! generation mode to `none` (Linux 3.17), which keeps the kernel from sending IPv6 into the
//! device as well.
//!
//! The address is set with its /32 prefix in one RTM_NEWADDR, so no transient classful route
//! appears (which `SIOCSIFADDR` + `SIOCSIFNETMASK` would create).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use flannel_shared::Ipv4Net;

use super::cvt;
use super::tun::ifreq_for;

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
/// Neighbour and link messages (linux/rtnetlink.h), for the express lane's endpoint learner.
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWNEIGH: u16 = 28;
pub const RTM_GETNEIGH: u16 = 30;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWRULE: u16 = 32;
pub const RTM_GETRULE: u16 = 34;
pub const RTM_NEWROUTE: u16 = 24;
const NLMSG_DONE: u16 = 3;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const RTM_SETLINK: u16 = 19;
const IFLA_AF_SPEC: u16 = 26;
const NLA_F_NESTED: u16 = 1 << 15;
/// Inside `IFLA_AF_SPEC`/`AF_INET` (linux/if_link.h).
const IFLA_INET_CONF: u16 = 1;
/// `IPV4_DEVCONF_ACCEPT_LOCAL` (linux/ip.h; the enum starts at 1).
const IPV4_DEVCONF_ACCEPT_LOCAL: u16 = 23;
/// Inside `IFLA_AF_SPEC`/`AF_INET6` (linux/if_link.h).
const IFLA_INET6_ADDR_GEN_MODE: u16 = 8;
/// `IN6_ADDR_GEN_MODE_NONE` (linux/if_link.h).
const IN6_ADDR_GEN_MODE_NONE: u8 = 1;

struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16) -> Self {
        let mut v = vec![0u8; NLMSG_HDR];
        v[4..6].copy_from_slice(&kind.to_ne_bytes());
        v[6..8].copy_from_slice(
            &(flags | libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16).to_ne_bytes(),
        );
        v[8..12].copy_from_slice(&1u32.to_ne_bytes()); // seq
        Msg(v)
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn attr(mut self, kind: u16, data: &[u8]) -> Self {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
        self
    }
    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// A NETLINK_ROUTE socket.
fn route_socket() -> io::Result<OwnedFd> {
    netlink_socket(libc::NETLINK_ROUTE)
}

/// A netlink socket of `protocol`.
fn netlink_socket(protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `msg` to the kernel on `sock`.
fn send_to_kernel(sock: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: sockaddr_nl is plain data; zero is a valid "kernel" destination.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `msg` and `kernel` are valid for the stated lengths during the call.
    cvt(unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// One recv(2) from `sock` into `buf`.
fn recv_from_kernel(sock: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its full length during the call.
    cvt(unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })
        .map(|n| n as usize)
}

/// Sends one request and waits for its ACK. Returns the kernel's errno as an error.
fn request(msg: Vec<u8>) -> io::Result<()> {
    let sock = route_socket()?;
    send_to_kernel(&sock, &msg)?;
    let mut buf = [0u8; 8192];
    loop {
        let n = recv_from_kernel(&sock, &mut buf)?;
        let mut off = 0;
        while off + NLMSG_HDR <= n {
            let len =
                u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if kind == NLMSG_ERROR && off + NLMSG_HDR + 4 <= n {
                let e = i32::from_ne_bytes([
                    buf[off + 16],
                    buf[off + 17],
                    buf[off + 18],
                    buf[off + 19],
                ]);
                return if e == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-e))
                };
            }
            if len < NLMSG_HDR {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}

/// The IPv4 addresses (address, prefix length) on interface `index`: one RTM_GETADDR dump.
pub fn ipv4_addresses(index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
    Ok(dump(RTM_GETADDR, &ifaddrmsg(0, 0))?
        .iter()
        .filter(|(kind, _)| *kind == RTM_NEWADDR)
        .filter_map(|(_, body)| address_entry(body))
        .filter(|&(i, _, _)| i == index)
        .map(|(_, addr, prefix)| (addr, prefix))
        .collect())
}

/// One rtnetlink dump: the request `kind` with the family header `header`, answered by the
/// kernel's messages as (type, body after the netlink header) until NLMSG_DONE.
pub fn dump(kind: u16, header: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
    dump_on(route_socket()?, kind, header)
}

/// The number of IPsec policies (an `XFRM_MSG_GETPOLICY` dump on NETLINK_XFRM; needs
/// CAP_NET_ADMIN). A kernel without the xfrm netlink interface has none anyone could have set.
pub fn xfrm_policy_count() -> io::Result<usize> {
    const XFRM_MSG_NEWPOLICY: u16 = 0x13;
    const XFRM_MSG_GETPOLICY: u16 = 0x15;
    let sock = match netlink_socket(libc::NETLINK_XFRM) {
        Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => return Ok(0),
        r => r?,
    };
    Ok(dump_on(sock, XFRM_MSG_GETPOLICY, &[])?
        .iter()
        .filter(|(k, _)| *k == XFRM_MSG_NEWPOLICY)
        .count())
}

fn dump_on(sock: OwnedFd, kind: u16, header: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
    let mut msg = vec![0u8; NLMSG_HDR];
    msg[4..6].copy_from_slice(&kind.to_ne_bytes());
    msg[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(header);
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    send_to_kernel(&sock, &msg)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv_from_kernel(&sock, &mut buf)?;
        if n == 0 || split_dump(&buf[..n], &mut out)? {
            return Ok(out);
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at.checked_add(2)?)
        .map(|x| u16::from_ne_bytes([x[0], x[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)
        .map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]))
}

/// Splits one datagram of a dump into its messages, appended to `out` as (type, body).
/// `Ok(true)` at the dump's end (NLMSG_DONE); a kernel error is returned as its errno. Never
/// panics on short input.
pub fn split_dump(buf: &[u8], out: &mut Vec<(u16, Vec<u8>)>) -> io::Result<bool> {
    let mut off = 0;
    while let (Some(len), Some(kind)) = (u32_at(buf, off), u16_at(buf, off + 4)) {
        let len = len as usize;
        let Some(m) = off
            .checked_add(len)
            .and_then(|end| buf.get(off..end))
            .filter(|_| len >= NLMSG_HDR)
        else {
            break;
        };
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let e = u32_at(m, NLMSG_HDR).map_or(0, |e| e as i32);
                return if e == 0 {
                    Ok(true)
                } else {
                    Err(io::Error::from_raw_os_error(e.wrapping_neg()))
                };
            }
            _ => out.push((kind, m[NLMSG_HDR..].to_vec())),
        }
        off += (len + 3) & !3;
    }
    Ok(false)
}

/// The attributes (type without the nested/byte-order flags, payload) of a message body
/// whose fixed header is `start` bytes long. Stops at the first malformed one.
pub fn attributes(body: &[u8], start: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut a = start;
    std::iter::from_fn(move || {
        let (alen, akind) = (u16_at(body, a)? as usize, u16_at(body, a + 2)?);
        let payload = body
            .get(a + 4..a.checked_add(alen)?)
            .filter(|_| alen >= 4)?;
        a += (alen + 3) & !3;
        Some((akind & 0x3fff, payload))
    })
}

/// The interface index, IPv4 address (IFA_LOCAL, else IFA_ADDRESS) and prefix length of one
/// RTM_NEWADDR body; `None` for another family or a body without an address.
fn address_entry(body: &[u8]) -> Option<(u32, Ipv4Addr, u8)> {
    // struct ifaddrmsg: family, prefixlen, flags, scope, index (u32).
    if body.first() != Some(&(libc::AF_INET as u8)) {
        return None;
    }
    let index = u32_at(body, 4)?;
    let prefix = *body.get(1)?;
    let (mut local, mut address) = (None, None);
    for (kind, v) in attributes(body, 8) {
        if let &[w, x, y, z] = v {
            match kind {
                IFA_LOCAL => local = Some(Ipv4Addr::new(w, x, y, z)),
                IFA_ADDRESS => address = Some(Ipv4Addr::new(w, x, y, z)),
                _ => {}
            }
        }
    }
    Some((index, local.or(address)?, prefix))
}

/// The lowest index of an interface holding `ip`: one RTM_GETADDR dump.
pub fn interface_with_ipv4(ip: Ipv4Addr) -> io::Result<Option<u32>> {
    Ok(dump(RTM_GETADDR, &ifaddrmsg(0, 0))?
        .iter()
        .filter(|(kind, _)| *kind == RTM_NEWADDR)
        .filter_map(|(_, body)| address_entry(body))
        .filter(|&(_, addr, _)| addr == ip)
        .map(|(index, _, _)| index)
        .min())
}

fn ifaddrmsg(prefix: u8, index: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = libc::AF_INET as u8;
    b[1] = prefix;
    b[3] = RT_SCOPE_UNIVERSE;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b
}

/// Adds (or replaces) `addr/prefix` on interface `index`.
pub fn add_address(index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let flags = (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    request(
        Msg::new(RTM_NEWADDR, flags)
            .bytes(&ifaddrmsg(prefix, index))
            .attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets())
            .finish(),
    )
}

/// Removes `addr/prefix` from interface `index`.
pub fn del_address(index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    request(
        Msg::new(RTM_DELADDR, 0)
            .bytes(&ifaddrmsg(prefix, index))
            .attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets())
            .finish(),
    )
}

/// Adds (or replaces) the route `net dev <index>` in the main table (as flannel: scope universe).
pub fn add_route(index: u32, net: Ipv4Net) -> io::Result<()> {
    let flags = (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    let mut rtmsg = [0u8; 12];
    rtmsg[0] = libc::AF_INET as u8;
    rtmsg[1] = net.prefix();
    rtmsg[4] = RT_TABLE_MAIN;
    rtmsg[5] = RTPROT_BOOT;
    rtmsg[6] = RT_SCOPE_UNIVERSE;
    rtmsg[7] = RTN_UNICAST;
    request(
        Msg::new(RTM_NEWROUTE, flags)
            .bytes(&rtmsg)
            .attr(RTA_DST, &net.addr().octets())
            .attr(RTA_OIF, &index.to_ne_bytes())
            .finish(),
    )
}

fn inet_dgram() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets the MTU of interface `name`.
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let sock = inet_dgram()?;
    let mut ifr = ifreq_for(name)?;
    ifr.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    // SAFETY: SIOCSIFMTU reads one `struct ifreq`, valid for the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &mut ifr) })?;
    Ok(())
}

/// Brings interface `name` up.
pub fn set_up(name: &str) -> io::Result<()> {
    let sock = inet_dgram()?;
    let mut ifr = ifreq_for(name)?;
    // SAFETY: SIOCGIFFLAGS fills `ifr`, valid for the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) })?;
    // SAFETY: after SIOCGIFFLAGS the union holds the flags member.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `ifr`, valid for the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr) })?;
    Ok(())
}

/// `struct ifinfomsg` (linux/rtnetlink.h) for interface `index`: family AF_UNSPEC, no flag
/// changes (`ifi_change` 0).
fn ifinfomsg(index: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b
}

/// One attribute (header, payload, padding to 4 bytes) as bytes, for nesting.
fn nla(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + data.len() + 3);
    v.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(data);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// The RTM_SETLINK request setting `net.ipv4.conf.<dev>.<conf>=value` on interface `index`:
/// `IFLA_AF_SPEC { AF_INET { IFLA_INET_CONF { [conf] = u32 value } } }`. IPv4 devconf
/// attribute types are the 1-based `IPV4_DEVCONF_*` numbers (linux/ip.h).
fn set_inet_conf_msg(index: u32, conf: u16, value: u32) -> Vec<u8> {
    let conf = nla(IFLA_INET_CONF, &nla(conf, &value.to_ne_bytes()));
    let af = nla(libc::AF_INET as u16, &conf);
    Msg::new(RTM_SETLINK, 0)
        .bytes(&ifinfomsg(index))
        .attr(IFLA_AF_SPEC | NLA_F_NESTED, &af)
        .finish()
}

/// The RTM_SETLINK request setting interface `index`'s IPv6 address generation mode:
/// `IFLA_AF_SPEC { AF_INET6 { IFLA_INET6_ADDR_GEN_MODE = u8 mode } }`.
fn set_inet6_addr_gen_mode_msg(index: u32, mode: u8) -> Vec<u8> {
    let af = nla(
        libc::AF_INET6 as u16,
        &nla(IFLA_INET6_ADDR_GEN_MODE, &[mode]),
    );
    Msg::new(RTM_SETLINK, 0)
        .bytes(&ifinfomsg(index))
        .attr(IFLA_AF_SPEC | NLA_F_NESTED, &af)
        .finish()
}

/// Sets `net.ipv4.conf.<dev>.accept_local=1` on interface `index` (in our network namespace)
/// through rtnetlink, not /proc/sys (which the unit mounts read-only: ProtectKernelTunables=).
/// Needed for the ICMP net-unreachable we write into the TUN device: its source is the TUN's
/// own address, which the kernel otherwise drops as a martian source.
pub fn set_accept_local(index: u32) -> io::Result<()> {
    request(set_inet_conf_msg(index, IPV4_DEVCONF_ACCEPT_LOCAL, 1))
}

/// What [`disable_ipv6`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Off {
    /// `net.ipv6.conf.<dev>.disable_ipv6=1`: no IPv6 on the device at all.
    Disabled,
    /// /proc/sys was not writable; the device's IPv6 address generation mode is `none` instead
    /// (no link-local address, so no router solicitation, DAD or MLD report for one).
    NoAddrGen,
    /// The kernel has no IPv6.
    NoIpv6,
}

/// Keeps the kernel from sending IPv6 into the device (`index`, named `name`): the overlay
/// carries IPv4 only (as flannel's udp backend), and without this the kernel sends its own IPv6
/// router solicitations and MLD reports into the device, which the data plane can only drop.
///
/// The kernel offers no netlink way to set `disable_ipv6` (RTM_SETLINK's AF_INET6 part takes
/// only the address generation mode and the token; `IFLA_INET6_CONF` is read-only, Linux 6.18
/// included), so this first writes `/proc/sys/net/ipv6/conf/<name>/disable_ipv6` and, when
/// that file is read-only (ProtectKernelTunables=, a read-only /proc/sys) or not writable by us,
/// sets the address generation mode to `none` through rtnetlink (Linux 3.17), which must
/// happen before the link goes up. `Ok(NoIpv6)` when the kernel has no IPv6 (rtnetlink
/// answers EAFNOSUPPORT).
pub fn disable_ipv6(index: u32, name: &str) -> io::Result<Ipv6Off> {
    if name.contains('/') || name.starts_with('.') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // NotFound: no IPv6, or /proc/sys hidden (ProcSubset=pid); the netlink request tells.
    match std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), b"1") {
        Ok(()) => return Ok(Ipv6Off::Disabled),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) || e.raw_os_error() == Some(libc::EROFS) => {}
        Err(e) => return Err(e),
    }
    match request(set_inet6_addr_gen_mode_msg(index, IN6_ADDR_GEN_MODE_NONE)) {
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => return Ok(Ipv6Off::NoIpv6),
        r => r?,
    }
    Ok(Ipv6Off::NoAddrGen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ifinfomsg` for interface 7: family, pad, type, then the index.
    const IFINFO_7: [u8; 16] = [0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    #[cfg(target_endian = "little")]
    fn accept_local_is_one_rtm_setlink_with_a_nested_inet_conf() {
        let mut want = vec![
            52, 0, 0, 0, // nlmsg_len
            19, 0, // RTM_SETLINK
            5, 0, // NLM_F_REQUEST | NLM_F_ACK
            1, 0, 0, 0, // seq
            0, 0, 0, 0, // pid
        ];
        want.extend_from_slice(&IFINFO_7);
        want.extend_from_slice(&[
            20, 0, 26, 0x80, // IFLA_AF_SPEC | NLA_F_NESTED
            16, 0, 2, 0, // AF_INET
            12, 0, 1, 0, // IFLA_INET_CONF
            8, 0, 23, 0, // IPV4_DEVCONF_ACCEPT_LOCAL
            1, 0, 0, 0, // = 1
        ]);
        assert_eq!(set_inet_conf_msg(7, IPV4_DEVCONF_ACCEPT_LOCAL, 1), want);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn addr_gen_mode_none_is_one_rtm_setlink_with_a_padded_u8() {
        let mut want = vec![48, 0, 0, 0, 19, 0, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(&IFINFO_7);
        want.extend_from_slice(&[
            16, 0, 26, 0x80, // IFLA_AF_SPEC | NLA_F_NESTED
            12, 0, 10, 0, // AF_INET6
            5, 0, 8, 0, // IFLA_INET6_ADDR_GEN_MODE, one byte
            1, 0, 0, 0, // IN6_ADDR_GEN_MODE_NONE, padded to 4
        ]);
        assert_eq!(set_inet6_addr_gen_mode_msg(7, IN6_ADDR_GEN_MODE_NONE), want);
    }

    /// Golden bytes of a dump datagram (as the kernel sends them on little-endian machines):
    /// an address of another interface, ours with IFA_ADDRESS and IFA_LOCAL, an IPv6 one,
    /// then NLMSG_DONE.
    #[test]
    fn an_address_dump_yields_the_interfaces_ipv4_addresses_and_its_end() {
        fn newaddr(family: u8, prefix: u8, index: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
            let mut m = Msg::new(RTM_NEWADDR, 0).bytes(&[family, prefix, 0, 0]);
            m = m.bytes(&index.to_ne_bytes());
            for (k, v) in attrs {
                m = m.attr(*k, v);
            }
            m.finish()
        }
        let mut buf = newaddr(2, 24, 7, &[(IFA_LOCAL, &[10, 9, 9, 9])]);
        buf.extend(newaddr(
            2,
            32,
            5,
            &[(IFA_ADDRESS, &[10, 1, 15, 0]), (IFA_LOCAL, &[10, 1, 15, 0])],
        ));
        buf.extend(newaddr(10, 64, 5, &[(IFA_ADDRESS, &[0xfe; 16])]));
        fn parse_addr_dump(
            buf: &[u8],
            index: u32,
            out: &mut Vec<(Ipv4Addr, u8)>,
        ) -> io::Result<bool> {
            let mut msgs = Vec::new();
            let end = split_dump(buf, &mut msgs)?;
            for (kind, body) in msgs {
                assert_eq!(kind, RTM_NEWADDR);
                out.extend(
                    address_entry(&body)
                        .filter(|&(i, _, _)| i == index)
                        .map(|(_, a, p)| (a, p)),
                );
            }
            Ok(end)
        }
        let mut out = Vec::new();
        assert!(!parse_addr_dump(&buf, 5, &mut out).unwrap(), "no end yet");
        assert_eq!(out, vec![(Ipv4Addr::new(10, 1, 15, 0), 32)]);
        let done = Msg::new(NLMSG_DONE, 0).bytes(&0u32.to_ne_bytes()).finish();
        assert!(parse_addr_dump(&done, 5, &mut out).unwrap());
        // Truncated input at every length: no panic, nothing invented.
        for cut in 0..buf.len() {
            let mut o = Vec::new();
            let _ = parse_addr_dump(&buf[..cut], 5, &mut o);
            assert!(o.len() <= 1);
        }
        let mut err = Msg::new(NLMSG_ERROR, 0)
            .bytes(&(-1i32).to_ne_bytes())
            .finish();
        err.extend_from_slice(&[0; 16]);
        assert!(parse_addr_dump(&err, 5, &mut out).is_err());
    }
}
