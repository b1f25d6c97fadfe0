//! Who holds a local UDP port: read from `/proc/net/udp` and `/proc/net/udp6` (address, uid,
//! socket inode; a dual-stack `[::]` socket blocks the IPv4 port too) and `/proc/<pid>/fd`
//! (which process has that socket open) of the caller's network namespace.
//!
//! Used when the data plane's port is taken by someone else (a local user squatting 8285 while
//! the data plane restarts): the refusal to start and flanneld's `/readyz` name the holder.
//! Reading another user's `/proc/<pid>/fd` needs CAP_SYS_PTRACE (or the same uid): without it
//! the pid stays unknown but the uid (from `/proc/net/udp`) is still reported.

#![forbid(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// One socket bound to the port, and the process holding it when that could be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    pub local: SocketAddr,
    pub uid: u32,
    pub inode: u64,
    /// Pid and command (`/proc/<pid>/comm`) of a process with the socket open.
    pub process: Option<(u32, String)>,
}

impl fmt::Display for PortHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.process {
            Some((pid, comm)) => write!(
                f,
                "UDP {} held by pid {pid} ({}), uid {}",
                self.local,
                comm.escape_debug(),
                self.uid
            ),
            None => write!(
                f,
                "UDP {} held by uid {} (socket inode {}; its pid is not visible to us)",
                self.local, self.uid, self.inode
            ),
        }
    }
}

/// The sockets of `/proc/net/udp` or `/proc/net/udp6` text bound to local `port`: (address,
/// uid, inode). Lines that do not parse are skipped.
pub fn parse_proc_net_udp(text: &str, port: u16) -> Vec<(SocketAddr, u32, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (ip_hex, port_hex) = f.get(1)?.split_once(':')?;
            let p = u16::from_str_radix(port_hex, 16).ok()?;
            let ip = proc_address(ip_hex)?;
            let uid = f.get(7)?.parse().ok()?;
            let inode = f.get(9)?.parse().ok()?;
            (p == port).then_some((SocketAddr::new(ip, p), uid, inode))
        })
        .collect()
}

/// An address as `/proc/net/udp{,6}` prints it: the network-order bytes as host-order 32-bit
/// words in hex (one word for IPv4, four for IPv6).
fn proc_address(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// The IPv4 and IPv6 sockets bound to `port` (an absent `udp6`, IPv6 off, counts as none).
fn bound_sockets(procfs: &Path, port: u16) -> std::io::Result<Vec<(SocketAddr, u32, u64)>> {
    let mut all = parse_proc_net_udp(&std::fs::read_to_string(procfs.join("self/net/udp"))?, port);
    if let Ok(v6) = std::fs::read_to_string(procfs.join("self/net/udp6")) {
        all.extend(parse_proc_net_udp(&v6, port));
    }
    Ok(all)
}

/// Every IPv4 UDP socket bound to `port` in this network namespace, with its process when
/// `/proc` shows it. `procfs` is normally `/proc`.
pub fn udp_port_holders(procfs: &Path, port: u16) -> std::io::Result<Vec<PortHolder>> {
    let mut holders: Vec<PortHolder> = bound_sockets(procfs, port)?
        .into_iter()
        .map(|(local, uid, inode)| PortHolder {
            local,
            uid,
            inode,
            process: None,
        })
        .collect();
    if holders.is_empty() {
        return Ok(holders);
    }
    for entry in std::fs::read_dir(procfs)?.flatten() {
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        {
            let inodes = socket_inodes_of(procfs, pid);
            let mut comm = None;
            for h in holders
                .iter_mut()
                .filter(|h| h.process.is_none() && inodes.contains(&h.inode))
            {
                let comm = comm.get_or_insert_with(|| process_comm(procfs, pid));
                h.process = Some((pid, comm.clone()));
            }
            if holders.iter().all(|h| h.process.is_some()) {
                break;
            }
        }
    }
    Ok(holders)
}

/// The inodes of the sockets process `pid` has open; none when the process is gone or not
/// ours to inspect.
fn socket_inodes_of(procfs: &Path, pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(procfs.join(pid.to_string()).join("fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|t| socket_inode(&t.to_string_lossy()))
        })
        .collect()
}

/// Process `pid`'s command name (`/proc/<pid>/comm`), empty when unreadable.
fn process_comm(procfs: &Path, pid: u32) -> String {
    std::fs::read_to_string(procfs.join(pid.to_string()).join("comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default()
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The process allowed to hold the port (the data plane): its pid and uid. A socket whose
/// process we may not see (another user's, under `ProtectProc=invisible`) counts as its when it
/// has its uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub uid: u32,
}

/// One line naming every holder of `port` other than `owner`, or `None` when nobody else
/// holds it or `/proc` cannot be read. When `owner` holds every socket on the port, only its
/// own `/proc/<pid>/fd` is read.
pub fn describe_foreign_holders(procfs: &Path, port: u16, owner: Option<Owner>) -> Option<String> {
    describe_holders(procfs, port, owner, false)
}

/// Like [`describe_foreign_holders`], but sockets of uid 0 are not squatters: under systemd,
/// `flannel-dataplane.socket` makes PID 1 (root) bind the port from boot and hold it through
/// every restart of the data plane, on the data plane's behalf. A root process could take the
/// port anyway; the squatting this guards against is an unprivileged local user's. flanneld's
/// `/readyz` and its `READY=1` use this one.
pub fn describe_squatters(procfs: &Path, port: u16, owner: Option<Owner>) -> Option<String> {
    describe_holders(procfs, port, owner, true)
}

fn describe_holders(
    procfs: &Path,
    port: u16,
    owner: Option<Owner>,
    root_is_trusted: bool,
) -> Option<String> {
    let trusted = |uid: u32| root_is_trusted && uid == 0;
    let is_owners = |h: &PortHolder| match (&h.process, owner) {
        (_, None) => false,
        (Some((pid, _)), Some(o)) => *pid == o.pid,
        (None, Some(o)) => h.uid == o.uid,
    };
    if let Some(o) = owner {
        let owner_sockets = socket_inodes_of(procfs, o.pid);
        if bound_sockets(procfs, port)
            .ok()?
            .iter()
            .all(|(_, uid, inode)| trusted(*uid) || owner_sockets.contains(inode))
        {
            return None;
        }
    }
    let holders = udp_port_holders(procfs, port).ok()?;
    let foreign: Vec<String> = holders
        .iter()
        .filter(|h| !is_owners(h) && !trusted(h.uid))
        .map(ToString::to_string)
        .collect();
    (!foreign.is_empty()).then(|| foreign.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 00000000:205D 00000000:0000 07 00000000:00000000 00:00000000 00000000 65534        0 424242 2 0000000000000000 0
  124: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 777 2 0000000000000000 0
  125: 0112A8C6:205D 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 9 2 0000000000000000 0
garbage line
";

    #[test]
    fn parses_the_sockets_bound_to_the_port() {
        let got = parse_proc_net_udp(SAMPLE, 8285);
        let expect_ip = Ipv4Addr::from(u32::from_str_radix("0112A8C6", 16).unwrap().to_ne_bytes());
        assert_eq!(
            got,
            vec![
                (
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8285)),
                    65534,
                    424242
                ),
                (SocketAddr::from((expect_ip, 8285)), 0, 9),
            ]
        );
        #[cfg(target_endian = "little")]
        assert_eq!(expect_ip, Ipv4Addr::new(198, 168, 18, 1));
        assert_eq!(
            parse_proc_net_udp(SAMPLE, 53),
            vec![(SocketAddr::from((Ipv4Addr::LOCALHOST, 53)), 0, 777)]
        );
    }

    #[test]
    fn parses_ipv6_sockets_too() {
        // `[::]:8285` (dual stack: it blocks 0.0.0.0:8285 too) and `[::1]:8285`.
        let udp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  5: 00000000000000000000000000000000:205D 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000 65534        0 99 2 0000000000000000 0
  6: 00000000000000000000000001000000:205D 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 98 2 0000000000000000 0
";
        let got = parse_proc_net_udp(udp6, 8285);
        assert_eq!(
            got[0],
            (SocketAddr::from((Ipv6Addr::UNSPECIFIED, 8285)), 65534, 99)
        );
        #[cfg(target_endian = "little")]
        assert_eq!(
            got[1],
            (SocketAddr::from((Ipv6Addr::LOCALHOST, 8285)), 0, 98)
        );
        assert_eq!(got.len(), 2);
        let h = PortHolder {
            local: got[0].0,
            uid: 65534,
            inode: 99,
            process: None,
        };
        assert_eq!(
            h.to_string(),
            "UDP [::]:8285 held by uid 65534 (socket inode 99; its pid is not visible to us)"
        );
    }

    #[test]
    fn names_the_holder() {
        let h = PortHolder {
            local: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8285)),
            uid: 65534,
            inode: 1,
            process: Some((4321, "nc\n".into())),
        };
        assert_eq!(
            h.to_string(),
            "UDP 0.0.0.0:8285 held by pid 4321 (nc\\n), uid 65534"
        );
        assert_eq!(socket_inode("socket:[99]"), Some(99));
        assert_eq!(socket_inode("pipe:[99]"), None);
    }

    #[test]
    fn finds_this_process_as_the_holder_of_its_own_socket() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        let h = udp_port_holders(Path::new("/proc"), port).unwrap();
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0].process.as_ref().map(|p| p.0), Some(std::process::id()));
        let me = Owner {
            pid: std::process::id(),
            uid: h[0].uid,
        };
        assert_eq!(
            describe_foreign_holders(Path::new("/proc"), port, Some(me)),
            None
        );
        // Another pid of the same uid whose fds are not visible: a socket we cannot attribute
        // counts as the owner's only through its uid.
        let invisible = Owner {
            pid: u32::MAX,
            uid: h[0].uid,
        };
        assert!(describe_foreign_holders(Path::new("/proc"), port, Some(invisible)).is_some());
        assert!(describe_foreign_holders(Path::new("/proc"), port, None)
            .unwrap()
            .contains(&format!("pid {}", std::process::id())));
    }

    /// A fake /proc with only `self/net/udp` (no processes): the sockets' uids decide.
    fn fake_proc(udp: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("self/net")).unwrap();
        std::fs::write(dir.path().join("self/net/udp"), udp).unwrap();
        dir
    }

    #[test]
    fn root_sockets_are_systemds_not_squatters_for_readiness() {
        let header = SAMPLE.lines().next().unwrap();
        let root = SAMPLE.lines().nth(3).unwrap(); // uid 0 on 8285 (a socket unit's)
        let user = SAMPLE.lines().nth(1).unwrap(); // uid 65534 on 8285
        let both = fake_proc(&format!("{header}\n{root}\n{user}\n"));
        let both = both.path();
        let named = describe_squatters(both, 8285, None).expect("the user's socket is named");
        assert!(named.contains("uid 65534"), "{named}");
        assert!(
            !named.contains("uid 0 "),
            "root's socket is not a squatter: {named}"
        );
        let all = describe_foreign_holders(both, 8285, None).unwrap();
        assert!(all.contains("uid 0 ") && all.contains("uid 65534"), "{all}");

        let only_root = fake_proc(&format!("{header}\n{root}\n"));
        assert_eq!(describe_squatters(only_root.path(), 8285, None), None);
        // The data plane's own refusal still names every holder, root included.
        assert!(describe_foreign_holders(only_root.path(), 8285, None).is_some());
    }
}
