//! iptables rules flannel installs, in their own chains (flannel v0.28.9 `MasqRules` and
//! `ForwardRules`), kept in place by a periodic resync.
//!
//! nat, chain `FLANNEL-POSTRTG`, jumped from `POSTROUTING` (with `-ip-masq`), N = Network, S = our subnet:
//! ```text
//! -m mark --mark 0x4000/0x4000 -j RETURN   (kube-proxy's marked traffic: no double NAT)
//! -s S -d N -j RETURN                      (overlay to overlay: no NAT)
//! -s N -d S -j RETURN
//! ! -s N -d S -j RETURN                    (external traffic to our pods: keep the source)
//! -s N ! -d 224.0.0.0/4 -j MASQUERADE      (pods to the outside, not multicast)
//! ! -s N -d N -j MASQUERADE                (host to the overlay)
//! ```
//! Both MASQUERADE rules carry `--random-fully` (fully random source ports, flannel ≥ v0.25)
//! when iptables knows the option (1.6.2 and later, [`has_random_fully`]) unless
//! `-ip-masq-fully-random-disable` is given, as in flannel.
//!
//! filter, chain `FLANNEL-FWD`, jumped from `FORWARD` (with `-iptables-forward-rules`, default on):
//! `-s N -j ACCEPT`, `-d N -j ACCEPT`. Every rule carries the comment "flanneld masq" or
//! "flanneld forward".
//!
//! Not in flannel (with `-dataplane-guard`, default on), comment "flanneld guard", P = the
//! backend port, M = the data plane's mark (`-dataplane-mark`):
//! - filter, chain `FLANNEL-DP-GUARD`, jumped from the *first* rule of `FORWARD`:
//!   `! -d N -p udp -m udp --dport P -j DROP`. No forwarded packet reaches any host's data
//!   plane: a container on any bridge (flannel's, a compose network, podman, libvirt),
//!   masqueraded to this host's address or spoofing another host's with CAP_NET_RAW, would
//!   otherwise pass as a member. Traffic to the overlay network itself (container to container
//!   on port P) is not touched: a data plane that receives a datagram addressed to an overlay
//!   address got it through the TUN device, which its arrival check refuses.
//! - filter, chain `FLANNEL-DP-OUTPUT`, jumped from the first rule of `OUTPUT`:
//!   `-p udp -m udp --dport P -m mark ! --mark M/M -j DROP`. Only a socket carrying the data
//!   plane's mark (SO_MARK needs CAP_NET_ADMIN, or CAP_NET_RAW since Linux 5.17) sends to the port: an unprivileged local user
//!   cannot send as this member.
//!
//! Both jumps are first, so that no ACCEPT (Docker's, FLANNEL-FWD) comes before them, and are
//! moved back to the top when something was inserted above them.
//!
//! A sync is idempotent: the chain is rewritten only when its rules are not exactly the desired
//! ones (count and each rule by `iptables -C`), and the jump is added only when missing. It runs
//! the `iptables` program (iptables-nft on Debian 12) with `-w` and needs CAP_NET_ADMIN.

use std::process::Command;

use flannel_shared::Ipv4Net;

pub const MASQ_CHAIN: &str = "FLANNEL-POSTRTG";
pub const FORWARD_CHAIN: &str = "FLANNEL-FWD";
pub const GUARD_CHAIN: &str = "FLANNEL-DP-GUARD";
pub const OUTPUT_GUARD_CHAIN: &str = "FLANNEL-DP-OUTPUT";
const MASQ_COMMENT: &str = "flanneld masq";
const FORWARD_COMMENT: &str = "flanneld forward";
const GUARD_COMMENT: &str = "flanneld guard";

/// One chain of ours and the built-in chain that jumps to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub table: &'static str,
    pub chain: &'static str,
    pub from: &'static str,
    pub comment: &'static str,
    /// Rule arguments, without `-A CHAIN` and without the comment match.
    pub rules: Vec<Vec<String>>,
    /// The jump must be the first rule of `from` (else it is appended, as flannel does).
    pub jump_first: bool,
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// The masquerade chain for `network` and our `subnet`; `random_fully` adds `--random-fully`
/// to the MASQUERADE rules.
pub fn masq_chain(network: Ipv4Net, subnet: Ipv4Net, random_fully: bool) -> ChainSpec {
    let (n, s) = (network.to_string(), subnet.to_string());
    let rf = if random_fully { " --random-fully" } else { "" };
    ChainSpec {
        table: "nat",
        chain: MASQ_CHAIN,
        from: "POSTROUTING",
        comment: MASQ_COMMENT,
        rules: vec![
            words("-m mark --mark 0x4000/0x4000 -j RETURN"),
            words(&format!("-s {s} -d {n} -j RETURN")),
            words(&format!("-s {n} -d {s} -j RETURN")),
            words(&format!("! -s {n} -d {s} -j RETURN")),
            words(&format!("-s {n} ! -d 224.0.0.0/4 -j MASQUERADE{rf}")),
            words(&format!("! -s {n} -d {n} -j MASQUERADE{rf}")),
        ],
        jump_first: false,
    }
}

/// The forward chain for `network`.
pub fn forward_chain(network: Ipv4Net) -> ChainSpec {
    let n = network.to_string();
    ChainSpec {
        table: "filter",
        chain: FORWARD_CHAIN,
        from: "FORWARD",
        comment: FORWARD_COMMENT,
        rules: vec![
            words(&format!("-s {n} -j ACCEPT")),
            words(&format!("-d {n} -j ACCEPT")),
        ],
        jump_first: false,
    }
}

/// The forward guard: no forwarded packet to the data plane's UDP `port`, unless it goes to
/// the overlay `network` (containers talking to each other on that port).
pub fn guard_chain(network: Ipv4Net, port: u16) -> ChainSpec {
    ChainSpec {
        table: "filter",
        chain: GUARD_CHAIN,
        from: "FORWARD",
        comment: GUARD_COMMENT,
        rules: vec![words(&format!(
            "! -d {network} -p udp -m udp --dport {port} -j DROP"
        ))],
        jump_first: true,
    }
}

/// The output guard: no local datagram to `port` unless its socket carries `mark`.
pub fn output_guard_chain(port: u16, mark: u32) -> ChainSpec {
    ChainSpec {
        table: "filter",
        chain: OUTPUT_GUARD_CHAIN,
        from: "OUTPUT",
        comment: GUARD_COMMENT,
        rules: vec![words(&format!(
            "-p udp -m udp --dport {port} -m mark ! --mark {mark:#x}/{mark:#x} -j DROP"
        ))],
        jump_first: true,
    }
}

/// Whether the installed iptables takes `--random-fully` (version 1.6.2 or later, the test
/// flannel's go-iptables makes). Asked once (`iptables --version`); false when it cannot run.
pub fn has_random_fully() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        Command::new("iptables")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| iptables_version(&String::from_utf8_lossy(&o.stdout)))
            .is_some_and(|v| v >= (1, 6, 2))
    })
}

/// `iptables v1.8.9 (nf_tables)` → (1, 8, 9).
fn iptables_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

impl ChainSpec {
    /// Full iptables arguments for rule `i` with action `action` (`-A`, `-C`).
    fn rule_args(&self, action: &str, i: usize) -> Vec<String> {
        let mut a = vec![action.to_string(), self.chain.to_string()];
        let rule = &self.rules[i];
        // The comment match goes before the target, as flannel writes it.
        let target_at = rule.iter().position(|w| w == "-j").unwrap_or(rule.len());
        a.extend_from_slice(&rule[..target_at]);
        a.extend(
            words("-m comment --comment")
                .into_iter()
                .chain([self.comment.to_string()]),
        );
        a.extend_from_slice(&rule[target_at..]);
        a
    }

    fn jump_args(&self, action: &str) -> Vec<String> {
        let mut a = vec![action.to_string(), self.from.to_string()];
        a.extend(
            words("-m comment --comment")
                .into_iter()
                .chain([self.comment.to_string()]),
        );
        a.extend([String::from("-j"), self.chain.to_string()]);
        a
    }
}

#[derive(Debug, thiserror::Error)]
#[error("iptables -t {table} {args}: {message}")]
pub struct IptablesError {
    table: String,
    args: String,
    message: String,
}

fn iptables(table: &str, args: &[String]) -> Result<bool, IptablesError> {
    let out = Command::new("iptables")
        .args(["-w", "5", "-t", table])
        .args(args)
        .output()
        .map_err(|e| IptablesError {
            table: table.into(),
            args: args.join(" "),
            message: format!("cannot run iptables: {e}"),
        })?;
    if out.status.success() {
        return Ok(true);
    }
    // Exit 1 is "rule does not exist" for -C; anything else is an error.
    if out.status.code() == Some(1) && args.first().is_some_and(|a| a == "-C") {
        return Ok(false);
    }
    Err(IptablesError {
        table: table.into(),
        args: args.join(" "),
        message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Makes the chain exactly `spec`. Returns true when something had to change.
pub fn sync(spec: &ChainSpec) -> Result<bool, IptablesError> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut changed = false;
    let listed = Command::new("iptables")
        .args(["-w", "5", "-t", spec.table, "-S", spec.chain])
        .output();
    let present: Option<usize> = match listed {
        Ok(o) if o.status.success() => Some(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("-A "))
                .count(),
        ),
        _ => None,
    };
    let in_sync = match present {
        None => {
            iptables(spec.table, &s(&["-N", spec.chain]))?;
            changed = true;
            false
        }
        Some(n) if n != spec.rules.len() => false,
        Some(_) => {
            let mut all = true;
            for i in 0..spec.rules.len() {
                all &= iptables(spec.table, &spec.rule_args("-C", i))?;
            }
            all
        }
    };
    if !in_sync {
        iptables(spec.table, &s(&["-F", spec.chain]))?;
        for i in 0..spec.rules.len() {
            iptables(spec.table, &spec.rule_args("-A", i))?;
        }
        changed = true;
    }
    if spec.jump_first {
        if !jump_is_first(spec)? {
            while iptables(spec.table, &spec.jump_args("-C"))? {
                iptables(spec.table, &spec.jump_args("-D"))?;
            }
            let mut insert = spec.jump_args("-I");
            insert.insert(2, "1".into());
            iptables(spec.table, &insert)?;
            changed = true;
        }
    } else if !iptables(spec.table, &spec.jump_args("-C"))? {
        iptables(spec.table, &spec.jump_args("-A"))?;
        changed = true;
    }
    Ok(changed)
}

/// Whether the first rule of `spec.from` is the jump to `spec.chain`.
fn jump_is_first(spec: &ChainSpec) -> Result<bool, IptablesError> {
    let out = Command::new("iptables")
        .args(["-w", "5", "-t", spec.table, "-S", spec.from])
        .output()
        .map_err(|e| IptablesError {
            table: spec.table.into(),
            args: format!("-S {}", spec.from),
            message: format!("cannot run iptables: {e}"),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().find(|l| l.starts_with("-A "));
    Ok(first.is_some_and(|l| l.ends_with(&format!("-j {}", spec.chain))))
}

/// Removes our chain `spec.chain` and every jump to it from `spec.from` (left by an earlier run
/// in iptables mode; flannel removes them when it starts in nftables mode). Returns true when
/// the chain existed.
pub fn remove(spec: &ChainSpec) -> Result<bool, IptablesError> {
    let listed = Command::new("iptables")
        .args(["-w", "5", "-t", spec.table, "-S", spec.chain])
        .output();
    match listed {
        Ok(o) if o.status.success() => {}
        // Killed (no exit code): we do not know whether the chain is there.
        Ok(o) if o.status.code().is_none() => {
            return Err(IptablesError {
                table: spec.table.into(),
                args: format!("-S {}", spec.chain),
                message: format!("iptables ended by a signal ({})", o.status),
            })
        }
        // No such chain (or no iptables at all): nothing of ours to remove.
        _ => return Ok(false),
    }
    while iptables(spec.table, &spec.jump_args("-C"))? {
        iptables(spec.table, &spec.jump_args("-D"))?;
    }
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    iptables(spec.table, &s(&["-F", spec.chain]))?;
    iptables(spec.table, &s(&["-X", spec.chain]))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_flannels() {
        let spec = masq_chain(
            "10.1.0.0/16".parse().unwrap(),
            "10.1.15.0/24".parse().unwrap(),
            false,
        );
        let got: Vec<String> = (0..spec.rules.len())
            .map(|i| spec.rule_args("-A", i).join(" "))
            .collect();
        assert_eq!(
            got,
            [
                "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment flanneld masq -j RETURN",
                "-A FLANNEL-POSTRTG -s 10.1.15.0/24 -d 10.1.0.0/16 -m comment --comment flanneld masq -j RETURN",
                "-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.1.15.0/24 -m comment --comment flanneld masq -j RETURN",
                "-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.15.0/24 -m comment --comment flanneld masq -j RETURN",
                "-A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment flanneld masq -j MASQUERADE",
                "-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment flanneld masq -j MASQUERADE",
            ]
        );
        assert_eq!(
            spec.jump_args("-A").join(" "),
            "-A POSTROUTING -m comment --comment flanneld masq -j FLANNEL-POSTRTG"
        );
        let random = masq_chain(
            "10.1.0.0/16".parse().unwrap(),
            "10.1.15.0/24".parse().unwrap(),
            true,
        );
        let got: Vec<String> = (0..random.rules.len())
            .map(|i| random.rule_args("-A", i).join(" "))
            .collect();
        assert_eq!(
            got[4..],
            [
                "-A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment flanneld masq -j MASQUERADE --random-fully",
                "-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment flanneld masq -j MASQUERADE --random-fully",
            ]
        );
        assert_eq!(
            got[..4],
            (0..4)
                .map(|i| spec.rule_args("-A", i).join(" "))
                .collect::<Vec<_>>()[..]
        );
        let guard = guard_chain("10.1.0.0/16".parse().unwrap(), 8285);
        assert_eq!(
            guard.rule_args("-A", 0).join(" "),
            "-A FLANNEL-DP-GUARD ! -d 10.1.0.0/16 -p udp -m udp --dport 8285 -m comment --comment flanneld guard -j DROP"
        );
        assert!(guard.jump_first);
        let out = output_guard_chain(8285, 0x2000);
        assert_eq!(
            out.rule_args("-A", 0).join(" "),
            "-A FLANNEL-DP-OUTPUT -p udp -m udp --dport 8285 -m mark ! --mark 0x2000/0x2000 -m comment --comment flanneld guard -j DROP"
        );
        assert_eq!((out.from, out.jump_first), ("OUTPUT", true));
        let fwd = forward_chain("10.1.0.0/16".parse().unwrap());
        assert_eq!(
            fwd.rule_args("-A", 1).join(" "),
            "-A FLANNEL-FWD -d 10.1.0.0/16 -m comment --comment flanneld forward -j ACCEPT"
        );
    }

    #[test]
    fn random_fully_needs_iptables_1_6_2() {
        assert_eq!(
            iptables_version("iptables v1.8.9 (nf_tables)\n"),
            Some((1, 8, 9))
        );
        assert_eq!(iptables_version("iptables v1.6.2"), Some((1, 6, 2)));
        assert_eq!(iptables_version("iptables v1.6"), Some((1, 6, 0)));
        assert_eq!(iptables_version("no version here"), None);
        assert!(iptables_version("iptables v1.6.1").unwrap() < (1, 6, 2));
        assert!(iptables_version("iptables v1.10.0").unwrap() >= (1, 6, 2));
    }
}
