//! Traffic for tests and benchmarks, run inside container namespaces:
//!
//! - `tcp-recv PORT`: accept one connection, read to EOF, print `bytes=N sha256=HEX`.
//! - `tcp-send ADDR:PORT BYTES SEED`: send BYTES of deterministic pseudo-random data, print the same.
//! - `udp-recv PORT COUNT TIMEOUT_MS`: receive up to COUNT datagrams, verify each one's content
//!   against its sequence number, print `received=N intact=N`.
//! - `udp-send ADDR:PORT COUNT SIZE`: send COUNT datagrams of SIZE bytes (sequence + pattern).
//! - `http-get ADDR:PORT PATH`: print the body of a plain HTTP GET (for /metrics inside a
//!   namespace); non-200 is an error that quotes the body.
//! - `udp-garbage BIND_IP DST:PORT KIND COUNT INNER_SRC INNER_DST`: send COUNT datagrams of one
//!   kind of bad input to a data plane's UDP port from BIND_IP (paced: 1 ms pause every 32),
//!   print `sent=N`. KIND: `empty` (0 bytes), `too-short` (1..19 bytes), `not-ipv4` (version 6),
//!   `bad-ihl` (IHL 0..4), `bad-length` (total length ≠ datagram length), `ipv4` (a well-formed
//!   IPv4/UDP packet INNER_SRC → INNER_DST, port 5999, which the receiver must refuse for the
//!   sender, the destination or the source). Sizes vary per datagram. With
//!   `LOADGEN_SO_MARK=M` the socket carries SO_MARK M (as the data plane's do; needs
//!   CAP_NET_ADMIN); with `LOADGEN_TRANSPARENT=1` it binds BIND_IP even when that address is not
//!   local (IP_TRANSPARENT, CAP_NET_RAW: a container spoofing another host's address); with
//!   `LOADGEN_SRC_PORT=P` it sends from port P (flannel's UDP backend sends from 8285).
//!
//! Content is a function of position, so corruption anywhere shows in the digest or check.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["tcp-recv", port] => tcp_recv(port.parse()?),
        ["tcp-send", addr, bytes, seed] => tcp_send(addr, bytes.parse()?, seed.parse()?),
        ["udp-recv", port, count, timeout] => udp_recv(port.parse()?, count.parse()?, timeout.parse()?),
        ["udp-send", addr, count, size] => udp_send(addr, count.parse()?, size.parse()?),
        ["http-get", addr, path] => http_get(addr, path),
        ["udp-bind-reuseaddr", addr] => udp_bind_reuseaddr(addr.parse()?),
        ["udp-garbage", bind, dst, kind, count, src, inner_dst] => udp_garbage(
            bind.parse()?,
            dst,
            kind,
            count.parse()?,
            src.parse()?,
            inner_dst.parse()?,
        ),
        _ => bail!("usage: tcp-recv PORT | tcp-send ADDR:PORT BYTES SEED | udp-recv PORT COUNT TIMEOUT_MS | udp-send ADDR:PORT COUNT SIZE | http-get ADDR:PORT PATH | udp-garbage BIND_IP DST:PORT KIND COUNT INNER_SRC INNER_DST | udp-bind-reuseaddr ADDR:PORT"),
    }
}

/// Tries to bind a UDP socket with SO_REUSEADDR to `addr` (a squatter's trick against a port
/// whose holder has SO_REUSEADDR on too); prints `bound` or `refused: <error>`.
fn udp_bind_reuseaddr(addr: std::net::SocketAddrV4) -> Result<()> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let s = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::empty(),
        None,
    )?;
    setsockopt(&s, sockopt::ReuseAddr, &true)?;
    match bind(std::os::fd::AsRawFd::as_raw_fd(&s), &SockaddrIn::from(addr)) {
        Ok(()) => println!("bound"),
        Err(e) => println!("refused: {e}"),
    }
    Ok(())
}

/// xorshift64*: cheap deterministic bytes.
struct Stream(u64);

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn tcp_recv(port: u16) -> Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port)).context("bind")?;
    println!("listening");
    std::io::stdout().flush()?;
    let (mut s, _) = l.accept()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    println!("bytes={total} sha256={:x}", h.finalize());
    Ok(())
}

fn tcp_send(addr: &str, bytes: u64, seed: u64) -> Result<()> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    let mut gen = Stream(seed | 1);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        gen.fill(&mut buf[..n]);
        s.write_all(&buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    println!("bytes={bytes} sha256={:x}", h.finalize());
    Ok(())
}

fn datagram(seq: u32, size: usize) -> Vec<u8> {
    let mut d = vec![0u8; size.max(4)];
    d[..4].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in d.iter_mut().enumerate().skip(4) {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    d
}

fn udp_recv(port: u16, count: u32, timeout_ms: u64) -> Result<()> {
    let s = UdpSocket::bind(("0.0.0.0", port))?;
    s.set_read_timeout(Some(Duration::from_millis(timeout_ms)))?;
    println!("listening");
    std::io::stdout().flush()?;
    let (mut received, mut intact) = (0u32, 0u32);
    let mut buf = vec![0u8; 65536];
    while received < count {
        let Ok(n) = s.recv(&mut buf) else { break };
        received += 1;
        if n >= 4 {
            let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            if buf[..n] == datagram(seq, n)[..] {
                intact += 1;
            }
        }
    }
    println!("received={received} intact={intact}");
    Ok(())
}

fn udp_send(addr: &str, count: u32, size: usize) -> Result<()> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    for seq in 0..count {
        s.send_to(&datagram(seq, size), addr)?;
        if seq % 16 == 15 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    println!("sent={count}");
    Ok(())
}

fn http_get(addr: &str, path: &str) -> Result<()> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no HTTP header end")?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        bail!("GET {path}: {status}: {}", body.trim_end());
    }
    print!("{body}");
    Ok(())
}

/// One's-complement sum for the IPv4 header checksum.
fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A well-formed IPv4/UDP packet (UDP checksum 0 = none) with `payload` bytes after the headers.
fn ipv4_udp(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, payload: usize, seq: u32) -> Vec<u8> {
    let total = 20 + 8 + payload;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = ip_checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&5999u16.to_be_bytes());
    p[22..24].copy_from_slice(&5999u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_add(i) as u8;
    }
    p
}

/// Datagram `seq` of a garbage `kind` (see the module docs).
fn garbage(
    kind: &str,
    seq: u32,
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
) -> Result<Vec<u8>> {
    let payload = (seq as usize * 7) % 200;
    Ok(match kind {
        "empty" => Vec::new(),
        "too-short" => {
            let mut d = ipv4_udp(src, dst, 0, seq);
            d.truncate(1 + seq as usize % 19);
            d
        }
        "not-ipv4" => {
            let mut d = ipv4_udp(src, dst, payload, seq);
            d[0] = 0x60 | (d[0] & 0x0f);
            d
        }
        "bad-ihl" => {
            let mut d = ipv4_udp(src, dst, payload, seq);
            d[0] = 0x40 | (seq % 5) as u8;
            d
        }
        "bad-length" => {
            let mut d = ipv4_udp(src, dst, payload, seq);
            // Claims 1..=9 bytes more or fewer than the datagram carries.
            let claimed =
                d.len() as i64 + if seq % 2 == 0 { 1 } else { -1 } * (1 + (seq % 9) as i64);
            d[2..4].copy_from_slice(&(claimed as u16).to_be_bytes());
            d[10] = 0;
            d[11] = 0;
            let c = ip_checksum(&d[..20]);
            d[10..12].copy_from_slice(&c.to_be_bytes());
            d
        }
        "ipv4" => ipv4_udp(src, dst, payload, seq),
        other => bail!("unknown garbage kind {other:?}"),
    })
}

/// The sending socket of `udp-garbage`, bound to (`bind`, any port), with the options the
/// environment asks for.
fn garbage_socket(bind: std::net::Ipv4Addr) -> Result<UdpSocket> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket")?;
    if let Ok(mark) = std::env::var("LOADGEN_SO_MARK") {
        let m = match mark.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16)?,
            None => mark.parse()?,
        };
        socket::setsockopt(&fd, sockopt::Mark, &m).context("SO_MARK")?;
    }
    if std::env::var_os("LOADGEN_TRANSPARENT").is_some() {
        socket::setsockopt(&fd, sockopt::IpTransparent, &true).context("IP_TRANSPARENT")?;
    }
    let port = match std::env::var("LOADGEN_SRC_PORT") {
        Ok(p) => p.parse().context("LOADGEN_SRC_PORT")?,
        Err(_) => 0,
    };
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(std::net::SocketAddrV4::new(bind, port)),
    )
    .with_context(|| format!("bind {bind}"))?;
    Ok(UdpSocket::from(fd))
}

fn udp_garbage(
    bind: std::net::Ipv4Addr,
    dst: &str,
    kind: &str,
    count: u32,
    src: std::net::Ipv4Addr,
    inner_dst: std::net::Ipv4Addr,
) -> Result<()> {
    let s = garbage_socket(bind)?;
    for seq in 0..count {
        s.send_to(&garbage(kind, seq, src, inner_dst)?, dst)
            .with_context(|| format!("send to {dst}"))?;
        if seq % 32 == 31 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    println!("sent={count}");
    Ok(())
}
