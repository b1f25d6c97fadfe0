//! The per-worker UDP sockets.
//!
//! - Receive: bound to (bind, port) with SO_REUSEPORT, one per worker, so the kernel hashes
//!   incoming 4-tuples over the workers.
//! - Send: bound to (bind, 0), one per worker, so each worker's traffic leaves from its own
//!   source port and the peer's reuseport hash spreads it (DESIGN pitfall: 8285→8285 is one
//!   4-tuple). flannel peers ignore the source port.
//!
//! Both get large buffers: SO_RCVBUFFORCE/SO_SNDBUFFORCE (needs CAP_NET_ADMIN) and, failing
//! that, SO_RCVBUF/SO_SNDBUF (capped by net.core.rmem_max / wmem_max).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size we ask for.
pub const SOCKET_BUFFER: usize = 8 << 20;

fn set_int(sock: &Socket, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int with its exact size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    super::cvt(r).map(|_| ())
}

/// Large buffers on a socket opened elsewhere (a receive socket handed over).
pub fn enlarge_buffers(fd: &OwnedFd) {
    let s = socket2::SockRef::from(fd);
    let size = SOCKET_BUFFER as libc::c_int;
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    }
}

/// The local address of a UDP/IPv4 socket; `None` for any other kind of fd (not a socket, TCP,
/// IPv6, unix).
pub fn udp_v4_local_addr(fd: &OwnedFd) -> Option<SocketAddrV4> {
    let s = socket2::SockRef::from(fd);
    if s.r#type().ok()? != Type::DGRAM {
        return None;
    }
    let a = s.local_addr().ok()?.as_socket_ipv4()?;
    let proto = s.protocol().ok().flatten();
    (proto.is_none() || proto == Some(Protocol::UDP)).then_some(a)
}

/// Clears SO_REUSEADDR (systemd sets it on the sockets of a socket unit). With it on, any
/// local user could bind the same UDP port with SO_REUSEADDR too, to a more specific address
/// that wins every datagram; the option lives in the socket, shared with systemd's copy.
pub fn clear_reuse_addr(fd: &OwnedFd) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0)
}

/// Sets or clears O_NONBLOCK.
pub fn set_nonblocking(fd: &OwnedFd, on: bool) -> io::Result<()> {
    socket2::SockRef::from(fd).set_nonblocking(on)
}

fn big_buffers(sock: &Socket) {
    let size = SOCKET_BUFFER as libc::c_int;
    if set_int(sock, libc::SO_RCVBUFFORCE, size).is_err() {
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if set_int(sock, libc::SO_SNDBUFFORCE, size).is_err() {
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    }
}

fn udp(nonblocking: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(nonblocking)?;
    big_buffers(&s);
    Ok(s)
}

/// Whether (bind, port) is free: a bind *without* SO_REUSEPORT fails with EADDRINUSE when any
/// socket holds it (another data plane's reuseport group included, which a reuseport bind of
/// the same user would silently join). The probe socket is closed before returning.
pub fn udp_port_is_free(bind: Ipv4Addr, port: u16) -> io::Result<bool> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    match s.bind(&SocketAddrV4::new(bind, port).into()) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A receive socket in the SO_REUSEPORT group on (bind, port).
pub fn recv_socket(bind: Ipv4Addr, port: u16, nonblocking: bool) -> io::Result<OwnedFd> {
    let s = udp(nonblocking)?;
    s.set_reuse_port(true)?;
    s.bind(&SocketAddrV4::new(bind, port).into())?;
    Ok(s.into())
}

/// A send socket on (bind, ephemeral port).
pub fn send_socket(bind: Ipv4Addr, nonblocking: bool) -> io::Result<OwnedFd> {
    let s = udp(nonblocking)?;
    s.bind(&SocketAddrV4::new(bind, 0).into())?;
    Ok(s.into())
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int with its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    super::cvt(r).map(|_| ())
}

/// Turns on UDP_GRO (Linux 5.0): the kernel may merge consecutive datagrams of one 4-tuple
/// into one receive, announcing the segment size in a `SOL_UDP`/`UDP_GRO` cmsg.
pub fn set_udp_gro(fd: &OwnedFd, on: bool) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, libc::c_int::from(on))
}

/// Whether this kernel knows UDP_SEGMENT (Linux 4.18): `getsockopt` answers ENOPROTOOPT
/// otherwise. The device may still refuse GSO on the first send (EIO), which the workers
/// handle by turning GSO off.
pub fn probe_udp_segment(fd: &OwnedFd) -> io::Result<()> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live and sized for the int option.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    super::cvt(r).map(|_| ())
}

/// Turns on IP_PKTINFO: every receive carries an `IPPROTO_IP`/`IP_PKTINFO` cmsg naming the
/// interface the datagram arrived on (one per receive, so one per GRO batch).
pub fn set_pktinfo(fd: &OwnedFd) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
}

/// Sets SO_MARK (needs CAP_NET_ADMIN): every packet this socket sends carries the mark, which
/// flanneld's OUTPUT guard requires of any datagram to the data-plane port.
pub fn set_mark(fd: &OwnedFd, mark: u32) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)
}

/// IP_MTU_DISCOVER = IP_PMTUDISC_DO: outer packets carry DF and are never fragmented; a
/// datagram over the path MTU fails with EMSGSIZE (counted `udp_tx_too_big`).
pub fn set_dont_fragment(fd: &OwnedFd) -> io::Result<()> {
    setsockopt_int(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DO,
    )
}

/// Size of `struct cmsghdr` and the alignment of its data (CMSG_ALIGN).
const CMSG_HDR: usize = std::mem::size_of::<libc::cmsghdr>();
const CMSG_ALIGN: usize = std::mem::size_of::<usize>();

const fn cmsg_align(n: usize) -> usize {
    (n + CMSG_ALIGN - 1) & !(CMSG_ALIGN - 1)
}

/// Room for one control message with `data` bytes (CMSG_SPACE).
pub const fn cmsg_space(data: usize) -> usize {
    cmsg_align(CMSG_HDR) + cmsg_align(data)
}

/// Control-buffer size for our sends (one UDP_SEGMENT) and receives (one UDP_GRO of 24 bytes
/// and one IP_PKTINFO of 32, with room to spare).
pub const CMSG_BUF: usize = 96;

/// What the control messages of one receive say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecvMeta {
    /// `UDP_GRO`: the size of each merged datagram (`None`: one datagram).
    pub gro_size: Option<usize>,
    /// `IP_PKTINFO`: the interface the datagram arrived on.
    pub ifindex: Option<u32>,
}

/// Reads the `UDP_GRO` and `IP_PKTINFO` control messages of a receive (`ctl` = the control
/// buffer as filled by the kernel, `msg_controllen` bytes). Malformed lengths end the walk.
pub fn decode_recv_cmsgs(ctl: &[u8]) -> RecvMeta {
    let mut meta = RecvMeta::default();
    let word = std::mem::size_of::<libc::size_t>();
    let mut off = 0;
    while off + CMSG_HDR <= ctl.len() {
        let mut lb = [0u8; 8];
        lb[..word].copy_from_slice(&ctl[off..off + word]);
        let len = u64::from_ne_bytes(lb) as usize;
        if len < CMSG_HDR || off + len > ctl.len() {
            break;
        }
        let int_at = |at: usize| -> Option<i32> {
            Some(i32::from_ne_bytes(ctl.get(at..at + 4)?.try_into().ok()?))
        };
        let (Some(level), Some(kind)) = (int_at(off + word), int_at(off + word + 4)) else {
            break;
        };
        let d = off + cmsg_align(CMSG_HDR);
        let end = off + len;
        if level == libc::SOL_UDP && kind == libc::UDP_GRO && d + 4 <= end {
            meta.gro_size = int_at(d)
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0);
        } else if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO && d + 4 <= end {
            // struct in_pktinfo { int ipi_ifindex; struct in_addr ipi_spec_dst, ipi_addr; }
            meta.ifindex = int_at(d).and_then(|v| u32::try_from(v).ok());
        }
        off += cmsg_align(len);
    }
    meta
}

/// Encodes one `SOL_UDP`/`UDP_SEGMENT` control message with `gso_size` into `buf`; returns
/// the control length to put in `msg_controllen` (0 if `buf` is too small).
pub fn encode_udp_segment(buf: &mut [u8], gso_size: u16) -> usize {
    let space = cmsg_space(2);
    let Some(b) = buf.get_mut(..space) else {
        return 0;
    };
    b.fill(0);
    let len = cmsg_align(CMSG_HDR) + 2; // CMSG_LEN(2)
    let mut at = 0;
    let len_bytes = len.to_ne_bytes();
    b[at..at + len_bytes.len()].copy_from_slice(&len_bytes);
    at += std::mem::size_of::<libc::size_t>();
    b[at..at + 4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    b[at + 4..at + 8].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
    let d = cmsg_align(CMSG_HDR);
    b[d..d + 2].copy_from_slice(&gso_size.to_ne_bytes());
    space
}

/// `msg_controllen` as usize (it is `size_t` on glibc, `socklen_t` on musl).
#[allow(clippy::unnecessary_cast)]
pub fn control_len(h: &libc::msghdr) -> usize {
    h.msg_controllen as usize
}

/// Bytes actually granted for the receive buffer (for the startup log).
pub fn recv_buffer_size(fd: &OwnedFd) -> usize {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live and sized for SO_RCVBUF's int.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        v as usize
    } else {
        0
    }
}

/// A connected AF_UNIX datagram socket pair (for the io_uring receive probe; no network).
pub fn unix_dgram_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = Socket::pair(Domain::UNIX, Type::DGRAM, None)?;
    Ok((a.into(), b.into()))
}

/// A `sockaddr_in` for `addr`.
pub fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The IPv4 address in a `sockaddr_in` filled by the kernel.
pub fn sockaddr_ip(sa: &libc::sockaddr_in) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))
}

/// Classic BPF for SO_ATTACH_REUSEPORT_CBPF: picks the receive socket (= worker) from a hash
/// of the INNER packet's addresses and port word, symmetric in source/destination:
/// `((src ^ dst ^ (sport ^ dport)) * 0x9e3779b1 >> 16) % n`. The program sees the UDP
/// payload (the inner IPv4 packet) at offset 0. Assumes IHL 5 for the port word (any other
/// header still hashes consistently per flow). A datagram too short to load from makes the
/// program return 0 (worker 0).
///
/// Why: with plain reuseport hashing on the outer 4-tuple, both hosts' flows collapse onto
/// one worker whenever two senders' ports collide in the hash (TUN multi-queue sends replies
/// out of the queue that wrote the request, so the collapse feeds on itself). Hashing the
/// inner flow makes both directions of one flow land on the same worker index on both hosts,
/// and different flows spread.
fn steering_program(n: u32) -> [libc::sock_filter; 15] {
    let op = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    const LD_W_ABS: u16 = 0x20;
    const TAX: u16 = 0x07;
    const RSH_K: u16 = 0x74;
    const AND_K: u16 = 0x54;
    const XOR_X: u16 = 0xac;
    const MUL_K: u16 = 0x24;
    const MOD_K: u16 = 0x94;
    const RET_A: u16 = 0x16;
    [
        op(LD_W_ABS, 20), // A = sport << 16 | dport
        op(TAX, 0),
        op(RSH_K, 16),
        op(XOR_X, 0),
        op(AND_K, 0xffff), // A = sport ^ dport
        op(TAX, 0),
        op(LD_W_ABS, 12), // src
        op(XOR_X, 0),
        op(TAX, 0),
        op(LD_W_ABS, 16), // dst
        op(XOR_X, 0),
        op(MUL_K, 0x9e37_79b1),
        op(RSH_K, 16),
        op(MOD_K, n.max(1)),
        op(RET_A, 0),
    ]
}

/// Attaches the inner-flow steering program to the reuseport group of `fd` (Linux 4.5+).
pub fn attach_flow_steering(fd: &OwnedFd, workers: u32) -> io::Result<()> {
    attach_reuseport_cbpf(fd, &steering_program(workers))
}

/// Attaches a classic BPF program choosing the socket of the reuseport group of `fd`
/// (`SO_ATTACH_REUSEPORT_CBPF`, Linux 4.5+). The kernel copies the program.
pub fn attach_reuseport_cbpf(fd: &OwnedFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(prog.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `prog`, both live for the call; the kernel only reads the
    // program (and copies it).
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    super::cvt(r).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmsg_roundtrip_and_layout() {
        let mut b = [0u8; CMSG_BUF];
        let n = encode_udp_segment(&mut b, 1472);
        assert_eq!(n, cmsg_space(2));
        #[cfg(target_pointer_width = "64")]
        {
            assert_eq!(n, 24);
            assert_eq!(&b[..8], &18u64.to_ne_bytes());
        }
        // A GRO cmsg has the same layout with an int.
        let mut g = [0u8; CMSG_BUF];
        let len = cmsg_align(CMSG_HDR) + 4;
        g[..std::mem::size_of::<usize>()].copy_from_slice(&len.to_ne_bytes());
        let w = std::mem::size_of::<usize>();
        g[w..w + 4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        g[w + 4..w + 8].copy_from_slice(&libc::UDP_GRO.to_ne_bytes());
        let d = cmsg_align(CMSG_HDR);
        g[d..d + 4].copy_from_slice(&1420i32.to_ne_bytes());
        let gro = |ctl: &[u8]| decode_recv_cmsgs(ctl).gro_size;
        assert_eq!(gro(&g[..cmsg_space(4)]), Some(1420));
        assert_eq!(gro(&b[..n]), None, "UDP_SEGMENT is not UDP_GRO");
        assert_eq!(gro(&[]), None);
        assert_eq!(gro(&g[..10]), None);
        // GRO then IP_PKTINFO (ifindex 7, spec_dst 198.18.0.2, addr 198.18.0.2), as the kernel
        // writes them: both read.
        let mut both = [0u8; CMSG_BUF];
        both[..cmsg_space(4)].copy_from_slice(&g[..cmsg_space(4)]);
        let p = cmsg_space(4);
        let plen = cmsg_align(CMSG_HDR) + 12;
        both[p..p + w].copy_from_slice(&plen.to_ne_bytes());
        both[p + w..p + w + 4].copy_from_slice(&libc::IPPROTO_IP.to_ne_bytes());
        both[p + w + 4..p + w + 8].copy_from_slice(&libc::IP_PKTINFO.to_ne_bytes());
        let pd = p + cmsg_align(CMSG_HDR);
        both[pd..pd + 4].copy_from_slice(&7i32.to_ne_bytes());
        both[pd + 4..pd + 8].copy_from_slice(&[198, 18, 0, 2]);
        both[pd + 8..pd + 12].copy_from_slice(&[198, 18, 0, 2]);
        let total = p + cmsg_space(12);
        assert!(total <= CMSG_BUF);
        assert_eq!(
            decode_recv_cmsgs(&both[..total]),
            RecvMeta {
                gro_size: Some(1420),
                ifindex: Some(7)
            }
        );
        // PKTINFO alone (no GRO merge), and a length running past the buffer: nothing read.
        assert_eq!(decode_recv_cmsgs(&both[p..total]).ifindex, Some(7));
        assert_eq!(
            decode_recv_cmsgs(&both[p..p + plen - 1]),
            RecvMeta::default()
        );
        assert_eq!(encode_udp_segment(&mut [0u8; 4], 1), 0);
    }
}
