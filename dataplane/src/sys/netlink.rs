//! Configuring the TUN device: address and route through rtnetlink (hand-built messages, one
//! request and one ACK each), MTU and link state through the classic `SIOCSIF*` ioctls.
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
const RTM_NEWROUTE: u16 = 24;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

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

/// Sends one request and waits for its ACK. Returns the kernel's errno as an error.
fn request(msg: Vec<u8>) -> io::Result<()> {
    // SAFETY: plain socket(2) call.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    })?;
    // SAFETY: fresh fd owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
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
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: `buf` is writable for its full length during the call.
        let n = cvt(unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })?
            as usize;
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

/// Sets `net.ipv4.conf.<name>.accept_local=1` (in our network namespace). Needed for the ICMP
/// net-unreachable we write into the TUN device: its source is the TUN's own address, which
/// the kernel otherwise drops as a martian source.
pub fn set_accept_local(name: &str) -> io::Result<()> {
    if name.contains('/') || name.starts_with('.') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{name}/accept_local"), b"1")
}

/// Sets `net.ipv6.conf.<name>.disable_ipv6=1`: the overlay carries IPv4 only (as flannel's udp
/// backend), and without this the kernel sends its own IPv6 router solicitations and MLD reports
/// into the device, which the data plane can only drop. `Ok` when the kernel has no IPv6.
pub fn disable_ipv6(name: &str) -> io::Result<()> {
    if name.contains('/') || name.starts_with('.') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    match std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), b"1") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
