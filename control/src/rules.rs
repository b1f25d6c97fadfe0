//! Keeps the masquerade and forward rules (and the data plane's guards) in place, following our
//! subnet, with iptables ([`crate::ip_masq`]) or, with `EnableNFTables`, nftables
//! ([`crate::nftables`]). Each check runs the tools on a blocking thread; a failure is logged
//! when it starts or changes and retried at the next check.
//!
//! On a clean exit (SIGTERM, SIGINT) flanneld removes every chain and table it installed
//! ([`remove_installed`]): `systemctl stop flanneld` leaves no rule behind. A crash leaves them
//! (the next start takes them over); so does `-iptables-forward-rules=false`
//! `-ip-masq=false` `-dataplane-guard=false`, which never touch iptables.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use flannel_shared::config::NetworkConfig;
use flannel_shared::Ipv4Net;
use tokio::sync::watch;

use std::sync::Arc;

use crate::cli::Args;
use crate::ip_masq;
use crate::nftables;
use crate::status::Status;

/// Which masquerade and forward rules to keep, and with what.
#[derive(Debug, Clone, Copy)]
pub struct RulesOpts {
    network: Ipv4Net,
    /// `EnableNFTables` in the network config.
    nftables: bool,
    masq: bool,
    forward: bool,
    /// `-dataplane-guard`: the data plane's port and mark.
    guard: Option<nftables::Guard>,
    random_fully_disable: bool,
    period: Duration,
}

impl RulesOpts {
    /// The rules the flags and the network config ask for.
    pub fn new(args: &Args, config: &NetworkConfig) -> Self {
        Self {
            network: config.network,
            nftables: config.enable_nftables,
            masq: args.ip_masq,
            forward: args.iptables_forward_rules,
            guard: args.dataplane_guard.then_some(nftables::Guard {
                port: config.backend.port,
                mark: args.dataplane_mark,
            }),
            random_fully_disable: args.ip_masq_fully_random_disable,
            period: Duration::from_secs(args.iptables_resync),
        }
    }

    /// Whether there is anything to keep (in iptables mode without rules nothing is touched).
    fn any(&self) -> bool {
        self.nftables || self.masq || self.forward || self.guard.is_some()
    }
}

/// What one check changed (the rules' name, whether they were installed) or why it failed.
type Checked = Result<Vec<(&'static str, bool)>, String>;

/// What the checks of this process installed (or tried to), for [`remove_installed`]. Its lock
/// is held through each check, so a removal never races a check, and none runs after it.
struct Installed {
    /// Set by [`remove_installed`]: no check installs anything from then on.
    stopped: bool,
    /// Our iptables chains by name, as last synced (the masquerade chain follows the subnet).
    iptables: BTreeMap<&'static str, ip_masq::ChainSpec>,
    /// Our nftables table `ip flannel-ipv4`.
    nftables: bool,
}

static INSTALLED: Mutex<Installed> = Mutex::new(Installed {
    stopped: false,
    iptables: BTreeMap::new(),
    nftables: false,
});

fn installed() -> std::sync::MutexGuard<'static, Installed> {
    INSTALLED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes every iptables chain (with its jump) and the nftables table that this process's
/// checks installed, and stops further checks. Called on SIGTERM/SIGINT, after the daemon's
/// work stopped. Returns what was removed (`"iptables nat FLANNEL-POSTRTG"`,
/// `"nftables ip flannel-ipv4"`) and the failures. Blocking.
pub fn remove_installed() -> (Vec<String>, Vec<String>) {
    let mut inst = installed();
    inst.stopped = true;
    let (mut removed, mut failed) = (Vec::new(), Vec::new());
    for spec in std::mem::take(&mut inst.iptables).values() {
        match ip_masq::remove(spec) {
            Ok(true) => removed.push(format!("iptables {} {}", spec.table, spec.chain)),
            Ok(false) => {}
            Err(e) => failed.push(e.to_string()),
        }
    }
    if std::mem::take(&mut inst.nftables) {
        match nftables::remove_table() {
            Ok(true) => removed.push(format!("nftables ip {}", nftables::TABLE)),
            Ok(false) => {}
            Err(e) => failed.push(e.to_string()),
        }
    }
    (removed, failed)
}

/// Installs and re-checks the rules every `o.period`, following our subnet in `own`. First
/// removes what the other mode left, as flannel does: our iptables chains in nftables mode;
/// flannel's nftables tables in iptables mode when it installs rules. Without rules in iptables
/// mode it touches nothing.
/// A failing check is a problem `/readyz` names (item `rules`) until a check succeeds.
pub async fn keep(
    o: RulesOpts,
    own: watch::Receiver<Option<(Ipv4Net, Ipv4Addr)>>,
    status: Arc<Status>,
) {
    if !o.any() {
        return;
    }
    let cleaned = tokio::task::spawn_blocking(move || remove_other_mode(&o))
        .await
        .unwrap_or_default();
    if !cleaned.is_empty() {
        tracing::info!(removed = ?cleaned, nftables = o.nftables, "removed the other mode's rules");
    }
    let mut nft = nftables::NftKeeper::default();
    let mut log = CheckLog {
        last_err: String::new(),
        period: o.period,
        status,
    };
    loop {
        let subnet = own.borrow().map(|(s, _)| s);
        let result = tokio::task::spawn_blocking(move || {
            let mut inst = installed();
            if inst.stopped {
                return (nft, None);
            }
            let checked = check(&o, subnet, &mut nft, &mut inst);
            (nft, Some(checked))
        })
        .await;
        match result {
            Ok((_, None)) => return,
            Ok((keeper, Some(checked))) => {
                nft = keeper;
                log.report(checked);
            }
            Err(e) => {
                tracing::error!("rules task failed: {e}");
                nft = nftables::NftKeeper::default();
            }
        }
        tokio::time::sleep(o.period).await;
    }
}

/// Removes the rules the other mode would keep; returns what was removed. Blocking.
fn remove_other_mode(o: &RulesOpts) -> Vec<String> {
    if o.nftables {
        return [
            ip_masq::masq_chain(o.network, o.network, false),
            ip_masq::forward_chain(o.network),
            ip_masq::guard_chain(o.network, 0),
            ip_masq::output_guard_chain(0, 0),
        ]
        .iter()
        .filter_map(|spec| match ip_masq::remove(spec) {
            Ok(true) => Some(format!("iptables {} {}", spec.table, spec.chain)),
            _ => None,
        })
        .collect();
    }
    let mut gone = nftables::remove_tables();
    if o.guard.is_none() {
        // -dataplane-guard=false: an earlier run's guards go.
        for spec in [
            ip_masq::guard_chain(o.network, 0),
            ip_masq::output_guard_chain(0, 0),
        ] {
            if let Ok(true) = ip_masq::remove(&spec) {
                gone.push(format!("iptables {} {}", spec.table, spec.chain));
            }
        }
    }
    gone
}

/// One check: brings the rules in line for our `subnet` (masquerade only once we have one),
/// recording in `inst` what it installs. Blocking.
fn check(
    o: &RulesOpts,
    subnet: Option<Ipv4Net>,
    nft: &mut nftables::NftKeeper,
    inst: &mut Installed,
) -> Checked {
    if o.nftables {
        inst.nftables = true;
        let want = nftables::Desired {
            network: o.network,
            masq: subnet.filter(|_| o.masq),
            random_fully: !o.random_fully_disable && nftables::has_fully_random(),
            forward: o.forward,
            guard: o.guard,
        };
        return nft
            .sync(&want)
            .map(|changed| vec![("nftables ip flannel-ipv4", changed)])
            .map_err(|e| e.to_string());
    }
    // The guards first, and each chain on its own: one failing chain keeps no other out.
    let mut specs = Vec::new();
    if let Some(g) = o.guard {
        specs.push(ip_masq::guard_chain(o.network, g.port));
        specs.push(ip_masq::output_guard_chain(g.port, g.mark));
    }
    if let (true, Some(s)) = (o.masq, subnet) {
        let random_fully = !o.random_fully_disable && ip_masq::has_random_fully();
        specs.push(ip_masq::masq_chain(o.network, s, random_fully));
    }
    if o.forward {
        specs.push(ip_masq::forward_chain(o.network));
    }
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    for spec in &specs {
        inst.iptables.insert(spec.chain, spec.clone());
        match ip_masq::sync(spec) {
            Ok(changed) => done.push((spec.chain, changed)),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if failed.is_empty() {
        Ok(done)
    } else {
        Err(failed.join("; "))
    }
}

/// Logs what checks installed, and each failure once while it lasts.
struct CheckLog {
    /// The failure logged last, until a check succeeds.
    last_err: String,
    /// How often checks run (named in the log).
    period: Duration,
    /// Where `/readyz` reads the failure.
    status: Arc<Status>,
}

impl CheckLog {
    fn report(&mut self, checked: Checked) {
        match checked {
            Ok(done) => {
                for (rules, changed) in done {
                    if changed {
                        tracing::info!(rules, "masquerade/forward rules installed");
                    }
                }
                self.last_err.clear();
                self.status.clear_problem("rules");
            }
            Err(e) => {
                self.status.set_problem("rules", e.clone());
                if e != self.last_err {
                    tracing::error!("{e}; retrying every {:?}", self.period);
                    self.last_err = e;
                }
            }
        }
    }
}
