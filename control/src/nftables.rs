//! The masquerade and forward rules in nftables, selected by `"EnableNFTables": true` in the
//! network config (flannel ≥ v0.25, `pkg/trafficmngr/nftables`).
//!
//! flannel's layout, kept exactly: table `ip flannel-ipv4` (comment "rules for flannel-ipv4");
//! with `-iptables-forward-rules`, chain `forward` (filter, hook forward, priority filter):
//! `ip saddr N accept`, `ip daddr N accept`; with `-ip-masq`, chain `postrtg` (nat, hook
//! postrouting, priority srcnat), N = Network, S = our subnet:
//! ```text
//! meta mark 0x4000 return                          (kube-proxy's marked traffic)
//! ip saddr S ip daddr N return                     (overlay to overlay)
//! ip saddr N ip daddr S return
//! ip saddr != S ip daddr N return                  (flannel's nftables rule; its iptables rule is
//!                                                   `! -s N -d S`: host → overlay is not NATed)
//! ip saddr N ip daddr != 224.0.0.0/4 masquerade fully-random
//! ip saddr != N ip daddr N masquerade fully-random
//! ```
//! `fully-random` is left out with `-ip-masq-fully-random-disable`.
//!
//! Not in flannel (with `-dataplane-guard`, default on; the twins of the iptables guards in
//! [`crate::ip_masq`]): chain `dp-guard` (filter, hook forward, priority filter - 5):
//! `ip daddr != N udp dport P drop` — no forwarded packet (a container on any bridge,
//! masqueraded or not, spoofing or not) reaches any host's data plane, while containers still
//! talk to each other on port P; chain `dp-output` (filter, hook output,
//! priority filter - 5): `meta mark & M != M udp dport P drop` — only a socket carrying the
//! data plane's mark M (SO_MARK needs CAP_NET_ADMIN, or CAP_NET_RAW since Linux 5.17) sends to the port. A drop in a base chain
//! is final whatever other tables accept, so no rule inserted elsewhere can bypass them.
//!
//! Unlike flannel (which writes once): a chain turned off is deleted (`-ip-masq=false` removes
//! `postrtg`; neither rule set removes the table), and the table is resynced every
//! `-iptables-resync` seconds: listed, compared with the listing taken right after our last
//! write, rewritten in one `nft -f` transaction when anything differs. The `ip6 flannel-ipv6`
//! table flannel also creates is not: the udp backend carries IPv4 only.
//!
//! Runs the `nft` program (Debian `nftables`); needs CAP_NET_ADMIN.

use std::io::Write;
use std::process::{Command, Stdio};

use flannel_shared::Ipv4Net;

/// flannel's IPv4 table, family `ip`.
pub const TABLE: &str = "flannel-ipv4";
/// flannel's IPv6 table, family `ip6`: never created here, deleted with ours on clean-up.
pub const TABLE6: &str = "flannel-ipv6";
pub const MASQ_CHAIN: &str = "postrtg";
pub const FORWARD_CHAIN: &str = "forward";
pub const GUARD_CHAIN: &str = "dp-guard";
pub const OUTPUT_GUARD_CHAIN: &str = "dp-output";

/// The data-plane guards: its UDP port and the mark its sockets carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    pub port: u16,
    pub mark: u32,
}

/// What the table should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desired {
    pub network: Ipv4Net,
    /// Our subnet, when `-ip-masq` is on and a lease is held.
    pub masq: Option<Ipv4Net>,
    pub random_fully: bool,
    /// `-iptables-forward-rules`.
    pub forward: bool,
    /// `-dataplane-guard`: the guard chains.
    pub guard: Option<Guard>,
}

impl Desired {
    fn is_empty(&self) -> bool {
        self.masq.is_none() && !self.forward && self.guard.is_none()
    }
}

/// The `nft -f` transaction that makes the table exactly `want`, given which of our chains exist
/// now (`listing` is `nft list table ip flannel-ipv4`, empty when the table is absent).
pub fn script(want: &Desired, listing: &str) -> String {
    let mut s = Script {
        text: String::new(),
        listing,
    };
    if want.is_empty() {
        if !listing.is_empty() {
            s.line(format!("delete table ip {TABLE}"));
        }
        return s.text;
    }
    s.line(format!(
        "add table ip {TABLE} {{ comment \"rules for {TABLE}\" ; }}"
    ));
    s.forward(want.forward.then_some(want.network));
    s.guards(want.guard, want.network);
    s.masq(want.masq, want.network, want.random_fully);
    s.text
}

/// An `nft -f` script being written, one chain at a time: each chain wanted is added and
/// filled afresh, each chain not wanted that exists now is deleted.
struct Script<'l> {
    text: String,
    /// `nft list table ip flannel-ipv4` before the script (empty: no table).
    listing: &'l str,
}

impl Script<'_> {
    fn line(&mut self, l: String) {
        self.text.push_str(&l);
        self.text.push('\n');
    }

    fn has_chain(&self, chain: &str) -> bool {
        self.listing.contains(&format!("chain {chain} {{"))
    }

    fn delete_chain_if_present(&mut self, chain: &str) {
        if self.has_chain(chain) {
            self.line(format!("delete chain ip {TABLE} {chain}"));
        }
    }

    /// The forward chain accepting traffic from and to `network`, if wanted.
    fn forward(&mut self, network: Option<Ipv4Net>) {
        let Some(n) = network else {
            self.delete_chain_if_present(FORWARD_CHAIN);
            return;
        };
        self.line(format!(
            "add chain ip {TABLE} {FORWARD_CHAIN} {{ type filter hook forward priority filter ; \
             comment \"chain to accept flannel traffic\" ; }}"
        ));
        self.line(format!("flush chain ip {TABLE} {FORWARD_CHAIN}"));
        for dir in ["saddr", "daddr"] {
            self.line(format!(
                "add rule ip {TABLE} {FORWARD_CHAIN} ip {dir} {n} accept"
            ));
        }
    }

    /// The data plane's guard chains, if wanted.
    fn guards(&mut self, guard: Option<Guard>, network: Ipv4Net) {
        let Some(Guard { port, mark }) = guard else {
            for chain in [GUARD_CHAIN, OUTPUT_GUARD_CHAIN] {
                self.delete_chain_if_present(chain);
            }
            return;
        };
        self.line(format!(
            "add chain ip {TABLE} {GUARD_CHAIN} {{ type filter hook forward priority filter - 5 ; \
             comment \"no forwarded traffic to the data plane port\" ; }}"
        ));
        self.line(format!("flush chain ip {TABLE} {GUARD_CHAIN}"));
        self.line(format!(
            "add rule ip {TABLE} {GUARD_CHAIN} ip daddr != {network} udp dport {port} drop"
        ));
        self.line(format!(
            "add chain ip {TABLE} {OUTPUT_GUARD_CHAIN} {{ type filter hook output priority filter - 5 ; \
             comment \"only the data plane sends to the data plane port\" ; }}"
        ));
        self.line(format!("flush chain ip {TABLE} {OUTPUT_GUARD_CHAIN}"));
        self.line(format!(
            "add rule ip {TABLE} {OUTPUT_GUARD_CHAIN} meta mark & {mark:#x} != {mark:#x} udp dport {port} drop"
        ));
    }

    /// The masquerade chain for our subnet `masq` in `network`, if wanted.
    fn masq(&mut self, masq: Option<Ipv4Net>, network: Ipv4Net, random_fully: bool) {
        let Some(sub) = masq else {
            self.delete_chain_if_present(MASQ_CHAIN);
            return;
        };
        let n = network;
        self.line(format!(
            "add chain ip {TABLE} {MASQ_CHAIN} {{ type nat hook postrouting priority srcnat ; \
             comment \"chain to manage traffic masquerading by flannel\" ; }}"
        ));
        self.line(format!("flush chain ip {TABLE} {MASQ_CHAIN}"));
        let masquerade = if random_fully {
            "masquerade fully-random"
        } else {
            "masquerade"
        };
        for rule in [
            "meta mark 0x4000 return".to_string(),
            format!("ip saddr {sub} ip daddr {n} return"),
            format!("ip saddr {n} ip daddr {sub} return"),
            format!("ip saddr != {sub} ip daddr {n} return"),
            format!("ip saddr {n} ip daddr != 224.0.0.0/4 {masquerade}"),
            format!("ip saddr != {n} ip daddr {n} {masquerade}"),
        ] {
            self.line(format!("add rule ip {TABLE} {MASQ_CHAIN} {rule}"));
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft (install Debian's nftables, or remove EnableNFTables from the network config): {0}")]
    Spawn(std::io::Error),
    #[error("nft {args}: {message}")]
    Failed { args: String, message: String },
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<(bool, String, String), NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

/// `nft list table ip flannel-ipv4`; empty when the table does not exist.
pub fn list_table() -> Result<String, NftError> {
    let (ok, out, err) = nft(&["list", "table", "ip", TABLE], None)?;
    if ok {
        return Ok(out);
    }
    if err.contains("No such file or directory") {
        return Ok(String::new());
    }
    Err(NftError::Failed {
        args: format!("list table ip {TABLE}"),
        message: err,
    })
}

/// Keeps the table equal to what was wanted, rewriting it only when it changed under us.
#[derive(Debug, Default)]
pub struct NftKeeper {
    /// What we wanted and the listing right after we wrote it.
    last: Option<(Desired, String)>,
}

impl NftKeeper {
    /// One resync. Returns true when the table had to be written.
    pub fn sync(&mut self, want: &Desired) -> Result<bool, NftError> {
        let listing = list_table()?;
        if self
            .last
            .as_ref()
            .is_some_and(|(w, l)| w == want && *l == listing)
        {
            return Ok(false);
        }
        let text = script(want, &listing);
        if !text.is_empty() {
            let (ok, _, err) = nft(&["-f", "-"], Some(&text))?;
            if !ok {
                self.last = None;
                return Err(NftError::Failed {
                    args: format!("-f - <<<'{}'", text.trim_end()),
                    message: err,
                });
            }
        }
        self.last = Some((*want, list_table()?));
        Ok(!text.is_empty())
    }
}

/// Whether nft takes `masquerade fully-random` (checked once, as flannel does, with a dry run
/// `nft --check` of a throw-away table).
pub fn has_fully_random() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        let t = "flannel-random-fully-check";
        let text = format!(
            "add table ip {t}\n\
             add chain ip {t} c {{ type nat hook postrouting priority srcnat ; }}\n\
             add rule ip {t} c masquerade fully-random\n"
        );
        matches!(nft(&["--check", "-f", "-"], Some(&text)), Ok((true, _, _)))
    })
}

/// Deletes our table `ip flannel-ipv4` (flanneld's clean exit). True when it existed; an
/// error when `nft` could not delete a table it lists.
pub fn remove_table() -> Result<bool, NftError> {
    let (listed, _, _) = nft(&["list", "table", "ip", TABLE], None)?;
    if !listed {
        return Ok(false);
    }
    let (deleted, _, err) = nft(&["delete", "table", "ip", TABLE], None)?;
    if !deleted {
        return Err(NftError::Failed {
            args: format!("delete table ip {TABLE}"),
            message: err,
        });
    }
    Ok(true)
}

/// Deletes flannel's nftables tables (left by an earlier run in nftables mode), as flannel does
/// when it starts in iptables mode. Returns the tables deleted; nothing when `nft` is absent.
pub fn remove_tables() -> Vec<String> {
    let mut gone = Vec::new();
    for (family, table) in [("ip", TABLE), ("ip6", TABLE6)] {
        if let Ok((true, _, _)) = nft(&["delete", "table", family, table], None) {
            gone.push(format!("{family} {table}"));
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(masq: bool, forward: bool, random_fully: bool) -> Desired {
        Desired {
            network: "10.1.0.0/16".parse().unwrap(),
            masq: masq.then(|| "10.1.15.0/24".parse().unwrap()),
            random_fully,
            forward,
            guard: forward.then_some(Guard {
                port: 8285,
                mark: 0x2000,
            }),
        }
    }

    #[test]
    fn script_is_flannels_table() {
        assert_eq!(
            script(&want(true, true, true), ""),
            "add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\" ; }\n\
             add chain ip flannel-ipv4 forward { type filter hook forward priority filter ; comment \"chain to accept flannel traffic\" ; }\n\
             flush chain ip flannel-ipv4 forward\n\
             add rule ip flannel-ipv4 forward ip saddr 10.1.0.0/16 accept\n\
             add rule ip flannel-ipv4 forward ip daddr 10.1.0.0/16 accept\n\
             add chain ip flannel-ipv4 dp-guard { type filter hook forward priority filter - 5 ; comment \"no forwarded traffic to the data plane port\" ; }\n\
             flush chain ip flannel-ipv4 dp-guard\n\
             add rule ip flannel-ipv4 dp-guard ip daddr != 10.1.0.0/16 udp dport 8285 drop\n\
             add chain ip flannel-ipv4 dp-output { type filter hook output priority filter - 5 ; comment \"only the data plane sends to the data plane port\" ; }\n\
             flush chain ip flannel-ipv4 dp-output\n\
             add rule ip flannel-ipv4 dp-output meta mark & 0x2000 != 0x2000 udp dport 8285 drop\n\
             add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority srcnat ; comment \"chain to manage traffic masquerading by flannel\" ; }\n\
             flush chain ip flannel-ipv4 postrtg\n\
             add rule ip flannel-ipv4 postrtg meta mark 0x4000 return\n\
             add rule ip flannel-ipv4 postrtg ip saddr 10.1.15.0/24 ip daddr 10.1.0.0/16 return\n\
             add rule ip flannel-ipv4 postrtg ip saddr 10.1.0.0/16 ip daddr 10.1.15.0/24 return\n\
             add rule ip flannel-ipv4 postrtg ip saddr != 10.1.15.0/24 ip daddr 10.1.0.0/16 return\n\
             add rule ip flannel-ipv4 postrtg ip saddr 10.1.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n\
             add rule ip flannel-ipv4 postrtg ip saddr != 10.1.0.0/16 ip daddr 10.1.0.0/16 masquerade fully-random\n"
        );
        let plain = script(&want(true, false, false), "");
        assert!(plain.ends_with("ip saddr != 10.1.0.0/16 ip daddr 10.1.0.0/16 masquerade\n"));
        assert!(!plain.contains("fully-random") && !plain.contains("forward"));
    }

    #[test]
    fn chains_turned_off_are_deleted_only_when_present() {
        let listing =
            "table ip flannel-ipv4 {\n\tchain forward {\n\t}\n\tchain dp-guard {\n\t}\n\tchain dp-output {\n\t}\n\tchain postrtg {\n\t}\n}\n";
        let s = script(&want(false, true, true), listing);
        assert!(s.ends_with("delete chain ip flannel-ipv4 postrtg\n"), "{s}");
        assert!(!script(&want(false, true, true), "").contains("delete"));
        let s = script(&want(true, false, true), listing);
        assert!(s.contains("delete chain ip flannel-ipv4 forward\n"), "{s}");
        assert!(s.contains("delete chain ip flannel-ipv4 dp-guard\n"), "{s}");
        assert!(
            s.contains("delete chain ip flannel-ipv4 dp-output\n"),
            "{s}"
        );
        assert_eq!(
            script(&want(false, false, true), listing),
            "delete table ip flannel-ipv4\n"
        );
        assert_eq!(script(&want(false, false, true), ""), "");
    }
}
