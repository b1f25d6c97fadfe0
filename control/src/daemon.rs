//! The `flanneld` daemon: choose the public IP, connect to etcd (retrying), wait for a valid
//! config (retrying every second, picking up fixes without restart), acquire the subnet lease,
//! write subnet.env, publish the route table, then keep the lease renewed and the table current
//! until SIGTERM/SIGINT. On shutdown the lease is left in etcd so a restart reuses it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use etcd_client::Client;
use flannel_shared::config::NetworkConfig;
use flannel_shared::lease::{config_key, LeaseAttrs};
use flannel_shared::route_table::{RouteTableWriter, TableMeta};
use flannel_shared::subnet_env::{self, SubnetEnv};
use flannel_shared::Ipv4Net;
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::cli::Args;
use crate::config_watch;
use crate::etcd::connect_with_retry;
use crate::health;
use crate::lease::acquire::{self, HeldLease, LeaseError, LeaseRequest, Renewal};
use crate::lease::view::{LeaseView, SharedLeaseView};
use crate::lease::watch::{LeaseWatcher, OwnLeaseEvent};
use crate::notify::{self, Heartbeat};
use crate::public_ip;
use crate::publish::Publisher;
use crate::rules::{self, RulesOpts};
use crate::status::Event;
use crate::status::Status;

/// Runs until the future is dropped (the caller races it against the shutdown signal).
pub async fn run(args: Args, status: Arc<Status>) -> anyhow::Result<()> {
    let ext = choose_interface(&args)?;
    if args.healthz_port != 0 {
        serve_health(&args, &status).await?;
    }
    let etcd = args.etcd.options();
    let mut client = connect_with_retry(&etcd).await?;
    let config = wait_for_config(&mut client, &args.etcd.prefix).await;
    let _ = status
        .dataplane_port
        .set((config.backend.port, args.dataplane_stats.clone()));
    log_config(&config);
    refuse_public_ip_in_network(&config, ext.public_ip)?;
    let publisher = open_publisher(&args.route_table, &config, ext.overlay_mtu())?;
    let _ = status.publisher.set(publisher.clone());

    let (own_tx, own_rx) = watch::channel(None);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let view = Arc::new(SharedLeaseView::new(LeaseView::new(
        &args.etcd.prefix,
        config.clone(),
    )));
    // The lease watch feeds both the route table and the view acquisition works from: the
    // first acquisition waits for its listing (the only one), a re-acquisition uses it as is.
    tokio::spawn(
        LeaseWatcher {
            client: client.clone(),
            prefix: args.etcd.prefix.clone(),
            publisher: Some(publisher.clone()),
            view: view.clone(),
            own: own_rx,
            own_events: events_tx.clone(),
            status: status.clone(),
        }
        .run(),
    );

    let mut keeper = LeaseKeeper {
        client: client.clone(),
        config: config.clone(),
        request: lease_request(&args, ext.public_ip),
        margin: Duration::from_secs(u64::from(args.subnet_lease_renew_margin) * 60),
        subnet_file: args.subnet_file.clone(),
        ip_masq: args.ip_masq,
        mtu: ext.overlay_mtu(),
        status: status.clone(),
        publisher: publisher.clone(),
        view,
        etcd: etcd.clone(),
        follow_iface: FollowIface::from_args(&args),
    };
    // The data plane's guards do not wait for a lease (masquerading does: it needs our subnet).
    tokio::spawn(rules::keep(
        RulesOpts::new(&args, &config),
        own_tx.subscribe(),
        status.clone(),
    ));
    let lease = keeper.acquire().await?;
    claim_own_lease(
        &keeper.view,
        &lease,
        keeper.request.public_ip,
        &own_tx,
        &events_tx,
    );
    tokio::spawn(config_watch::run(
        client,
        args.etcd.prefix.clone(),
        config.clone(),
        status.clone(),
    ));
    keeper.keep(lease, own_tx, events_tx, events_rx).await
}

/// The interface and public IP flannel's flags select (logged).
fn choose_interface(args: &Args) -> anyhow::Result<public_ip::ExtIface> {
    let ext = public_ip::choose(public_ip::Selection {
        iface: &args.iface,
        iface_regex: &args.iface_regex,
        iface_can_reach: args.iface_can_reach,
        public_ip: args.public_ip,
    })?;
    tracing::info!(
        iface = %ext.name, iface_addr = %ext.iface_addr, public_ip = %ext.public_ip,
        mtu = ext.overlay_mtu(), "using interface"
    );
    Ok(ext)
}

fn log_config(config: &NetworkConfig) {
    tracing::info!(
        network = %config.network, subnet_len = config.subnet_len, subnet_min = %config.subnet_min,
        subnet_max = %config.subnet_max, port = config.backend.port, "network config"
    );
}

/// What to ask etcd for: a lease for `public_ip`, preferring the subnet of the previous
/// subnet.env.
fn lease_request(args: &Args, public_ip: Ipv4Addr) -> LeaseRequest {
    LeaseRequest {
        prefix: args.etcd.prefix.clone(),
        public_ip,
        ttl_secs: args.subnet_lease_ttl as i64,
        previous: subnet_env::previous_subnet(&args.subnet_file),
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `-healthz-ip`:`-healthz-port`.
async fn serve_health(args: &Args, status: &Arc<Status>) -> anyhow::Result<()> {
    let listener = health::bind(SocketAddr::new(args.healthz_ip, args.healthz_port)).await?;
    let registry = Arc::new(crate::metrics::registry(
        status.clone(),
        args.dataplane_stats.clone(),
    ));
    tokio::spawn(health::serve(listener, status.clone(), registry));
    Ok(())
}

/// Refuses to advertise a PublicIP inside Network: every host (this one included) would reject
/// the lease.
fn refuse_public_ip_in_network(config: &NetworkConfig, public_ip: Ipv4Addr) -> anyhow::Result<()> {
    if config.network.contains(public_ip) {
        anyhow::bail!(
            "public IP {} (-public-ip or the interface's address) is inside Network {}: every \
             host would reject its lease (public_ip_in_network); advertise an underlay address",
            public_ip,
            config.network
        );
    }
    Ok(())
}

/// Opens the route table at `path` for `config`'s network (our subnet not known yet).
fn open_publisher(path: &Path, config: &NetworkConfig, mtu: u32) -> anyhow::Result<Arc<Publisher>> {
    let writer =
        RouteTableWriter::open(path).with_context(|| format!("-route-table {}", path.display()))?;
    Ok(Arc::new(Publisher::new(
        writer,
        TableMeta {
            network: config.network,
            subnet_len: config.subnet_len,
            our_subnet: None,
            mtu,
            port: config.backend.port,
        },
    )))
}

/// Right after an acquisition: tells the lease watch which key is ours, then checks the view.
/// The watch judged our key without knowing it was ours until now, so a delete (or another
/// host's put) it applied in between shows only in the view; that is reported on `events_tx` as
/// [`OwnLeaseEvent::Lost`], as the watch would have. Returns whether it was.
fn claim_own_lease(
    view: &SharedLeaseView,
    lease: &HeldLease,
    public_ip: Ipv4Addr,
    own_tx: &watch::Sender<Option<(Ipv4Net, Ipv4Addr)>>,
    events_tx: &mpsc::UnboundedSender<OwnLeaseEvent>,
) -> bool {
    own_tx.send_replace(Some((lease.subnet, public_ip)));
    let lost = view.lock().public_ip_of(&lease.key) != Some(public_ip);
    if lost {
        let _ = events_tx.send(OwnLeaseEvent::Lost(lease.subnet));
    }
    lost
}

/// Reads `<prefix>/config` until it parses and validates. Logs each new problem (and every 30 s
/// while it persists); retries every second.
pub async fn wait_for_config(client: &mut Client, prefix: &str) -> NetworkConfig {
    let key = config_key(prefix);
    let mut last_err = String::new();
    let mut attempts = 0u64;
    loop {
        let err = match client.get(key.as_str(), None).await {
            Ok(resp) => match resp.kvs().first() {
                None => format!("network config {key} not found in etcd"),
                Some(kv) => match NetworkConfig::parse(&String::from_utf8_lossy(kv.value())) {
                    Ok(c) => {
                        if !last_err.is_empty() {
                            tracing::info!(key, "network config is valid now");
                        }
                        for w in &c.warnings {
                            tracing::warn!(key, "network config: {w}");
                        }
                        return c;
                    }
                    Err(e) => format!("network config {key} is invalid: {e}"),
                },
            },
            Err(e) => format!("reading network config {key}: {e}"),
        };
        if err != last_err || attempts % 30 == 0 {
            tracing::error!("{err}; retrying every second");
        }
        notify::status(&err);
        last_err = err;
        attempts += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How often an unwritable subnet.env is tried again.
const ENV_RETRY: Duration = Duration::from_secs(1);
/// How often the interface's address is checked (without `-public-ip`).
const ADDR_CHECK: Duration = Duration::from_secs(5);

/// The interface selection flags, kept to notice when the chosen address changes.
struct FollowIface {
    iface: Vec<String>,
    iface_regex: Vec<String>,
    iface_can_reach: Option<Ipv4Addr>,
}

impl FollowIface {
    /// The interface selection to follow; `None` with `-public-ip` (it is what we advertise,
    /// whatever the interface has).
    fn from_args(args: &Args) -> Option<Self> {
        args.public_ip.is_none().then(|| Self {
            iface: args.iface.clone(),
            iface_regex: args.iface_regex.clone(),
            iface_can_reach: args.iface_can_reach,
        })
    }
}

/// Holds this host's lease: acquires, writes subnet.env, renews, re-acquires when lost.
struct LeaseKeeper {
    client: Client,
    config: NetworkConfig,
    request: LeaseRequest,
    margin: Duration,
    subnet_file: std::path::PathBuf,
    ip_masq: bool,
    mtu: u32,
    status: Arc<Status>,
    publisher: Arc<Publisher>,
    /// Every lease, as the watch last saw it: acquisition picks from it.
    view: Arc<SharedLeaseView>,
    /// How to reach etcd (to reconnect when our address changed under the connection).
    etcd: crate::etcd::EtcdOptions,
    /// Without `-public-ip`: the selection whose address our lease advertises.
    follow_iface: Option<FollowIface>,
}

impl LeaseKeeper {
    /// Acquires (retrying etcd errors with backoff and "out of subnets" every 10 s), then writes
    /// subnet.env and hands our subnet to the publisher.
    async fn acquire(&mut self) -> anyhow::Result<HeldLease> {
        let mut backoff = Backoff::default();
        notify::status("acquiring a subnet lease");
        let lease = loop {
            match acquire::acquire(&mut self.client, &self.request, &self.view).await {
                Ok(l) => break l,
                Err(e @ LeaseError::OutOfSubnets { .. }) => {
                    notify::status(&format!("no subnet lease: {e}"));
                    tracing::error!("{e}; retrying in 10 s");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                Err(e) => {
                    self.status.count(Event::EtcdError);
                    notify::status(&format!("acquiring a subnet lease failed: {e}"));
                    tracing::warn!(retry_in = ?backoff.peek(), "acquiring a subnet lease failed: {e}");
                    backoff.sleep().await;
                }
            }
        };
        tracing::info!(
            subnet = %lease.subnet, key = lease.key, lease_id = lease.lease_id,
            ttl = ?lease.ttl, source = ?lease.source, "subnet lease acquired"
        );
        self.status.lease_held.store(true, Ordering::Release);
        self.note_expiry(lease.ttl);
        self.request.previous = Some(lease.subnet);
        self.write_env(lease.subnet);
        self.publisher.set_own_subnet(Some(lease.subnet));
        if self.status.subnet_env_written.load(Ordering::Acquire) {
            notify::status(&format!("lease held: {}", lease.subnet));
        }
        Ok(lease)
    }

    /// Writes subnet.env for `subnet`. A failure (read-only directory, disk full) never costs the
    /// lease: it is logged when it starts or changes, `/readyz` names it, and [`Self::keep`]
    /// retries every [`ENV_RETRY`] until the write succeeds.
    fn write_env(&mut self, subnet: Ipv4Net) {
        self.status
            .subnet_env_written
            .store(false, Ordering::Release);
        match write_subnet_env(
            &self.subnet_file,
            &self.config,
            subnet,
            self.mtu,
            self.ip_masq,
        ) {
            Ok(()) => {
                self.status
                    .subnet_env_written
                    .store(true, Ordering::Release);
                if self.status.clear_problem("subnet.env") {
                    tracing::info!(path = %self.subnet_file.display(), "subnet.env can be written again");
                    notify::status(&format!("lease held: {subnet}"));
                }
            }
            Err(e) => {
                let why = format!("{e:#}; the lease is kept, retrying every {ENV_RETRY:?}");
                if self.status.set_problem("subnet.env", why.clone()) {
                    tracing::error!(%subnet, "writing subnet.env failed: {why}");
                    notify::status(&format!(
                        "lease held: {subnet}; subnet.env not written: {e:#}"
                    ));
                }
            }
        }
    }

    /// Renews `lease` once. Returns when to renew next (after a failure, sooner), or `None`
    /// when etcd no longer has the lease.
    async fn renew(&mut self, lease: &mut HeldLease) -> Option<Duration> {
        match acquire::renew(&mut self.client, lease).await {
            Ok(Renewal::Renewed(ttl)) => {
                self.status.count(Event::LeaseRenewal);
                self.note_expiry(ttl);
                tracing::debug!(subnet = %lease.subnet, ?ttl, "lease renewed");
                Some(acquire::renew_delay(ttl, self.margin))
            }
            Ok(Renewal::Lost) => None,
            Err(e) => {
                self.status.count(Event::EtcdError);
                let wait = acquire::renew_retry_delay(lease.ttl);
                tracing::warn!(subnet = %lease.subnet, retry_in = ?wait, "renewing the lease failed: {e}");
                Some(wait)
            }
        }
    }

    /// Keeps `lease` until the process stops: renews it, follows our address, retries writing
    /// subnet.env, beats the watchdog, and re-acquires when the lease is lost.
    async fn keep(
        mut self,
        mut lease: HeldLease,
        own_tx: watch::Sender<Option<(Ipv4Net, Ipv4Addr)>>,
        events_tx: mpsc::UnboundedSender<OwnLeaseEvent>,
        mut events: mpsc::UnboundedReceiver<OwnLeaseEvent>,
    ) -> anyhow::Result<()> {
        // A deadline, not a fresh sleep per turn: the heartbeat turns the loop often.
        let after = |d: Duration| tokio::time::Instant::now() + d;
        let mut renew_at = after(acquire::renew_delay(lease.ttl, self.margin));
        // READY=1 once the table is published, then WATCHDOG=1 from this loop (see `notify`).
        let mut heartbeat = Heartbeat::new(self.status.clone());
        let mut addr_check = tokio::time::interval(ADDR_CHECK);
        addr_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let lost = tokio::select! {
                _ = tokio::time::sleep_until(renew_at) => {
                    match self.renew(&mut lease).await {
                        Some(wait) => {
                            renew_at = after(wait);
                            false
                        }
                        None => true,
                    }
                }
                Some(OwnLeaseEvent::Lost(subnet)) = events.recv() => {
                    subnet == lease.subnet && !self.still_ours(&lease).await
                }
                _ = heartbeat.tick() => {
                    heartbeat.beat(lease.subnet);
                    false
                }
                _ = tokio::time::sleep(ENV_RETRY),
                    if !self.status.subnet_env_written.load(Ordering::Acquire) =>
                {
                    self.write_env(lease.subnet);
                    false
                }
                _ = addr_check.tick(), if self.follow_iface.is_some() => {
                    self.follow_address(&lease, &own_tx).await;
                    false
                }
            };
            if !lost {
                continue;
            }
            tracing::error!(
                subnet = %lease.subnet, key = lease.key,
                "OUR SUBNET LEASE DISAPPEARED from etcd; re-acquiring (the same subnet if it is still free)"
            );
            self.status.lease_held.store(false, Ordering::Release);
            self.status.count(Event::LeaseReacquisition);
            let old = lease.lease_id;
            notify::status(&format!("lease {} lost: re-acquiring", lease.subnet));
            lease = heartbeat
                .while_pending(lease.subnet, self.acquire())
                .await?;
            // Before any other await, as at the first acquisition.
            claim_own_lease(
                &self.view,
                &lease,
                self.request.public_ip,
                &own_tx,
                &events_tx,
            );
            if old != lease.lease_id {
                let _ = self.client.lease_revoke(old).await;
            }
            renew_at = after(acquire::renew_delay(lease.ttl, self.margin));
        }
    }

    /// The underlay address changed (DHCP, a renumbered host): the lease's PublicIP follows,
    /// so peers send to the new one. Our own-lease view is updated first, so the watch does not
    /// take the new value for someone else's. Retried at the next check when etcd fails.
    async fn follow_address(
        &mut self,
        lease: &HeldLease,
        own_tx: &watch::Sender<Option<(Ipv4Net, Ipv4Addr)>>,
    ) {
        let Some(f) = &self.follow_iface else { return };
        let (iface, iface_regex, can_reach) =
            (f.iface.clone(), f.iface_regex.clone(), f.iface_can_reach);
        let chosen = tokio::task::spawn_blocking(move || {
            // Quietly: the choice was logged at start; a change is logged below.
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
                public_ip::choose(public_ip::Selection {
                    iface: &iface,
                    iface_regex: &iface_regex,
                    iface_can_reach: can_reach,
                    public_ip: None,
                })
            })
        })
        .await;
        let new = match chosen {
            Ok(Ok(ext)) => ext.public_ip,
            // The interface is gone or has no address for a moment: keep what we have.
            Ok(Err(e)) => {
                tracing::debug!("interface check: {e}");
                return;
            }
            Err(_) => return,
        };
        let old = self.request.public_ip;
        if new == old && own_tx.borrow().is_some_and(|(_, ip)| ip == new) {
            return;
        }
        let _ = own_tx.send(Some((lease.subnet, new)));
        // The connection to etcd may have been made from the address that just went away; it
        // would hang until its keep-alive gives up. A fresh one comes from the new address.
        match tokio::time::timeout(ADDR_CHECK, connect_with_retry(&self.etcd)).await {
            Ok(Ok(c)) => self.client = c,
            _ => tracing::debug!("reconnecting to etcd after the address change timed out"),
        }
        let value = LeaseAttrs::udp(new).to_json();
        // Bounded: the connection to etcd may have used the address that just went away.
        let put = tokio::time::timeout(
            ADDR_CHECK,
            self.client.put(
                lease.key.as_str(),
                value,
                Some(etcd_client::PutOptions::new().with_lease(lease.lease_id)),
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(etcd_client::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer from etcd",
            )))
        });
        match put {
            Ok(_) => {
                tracing::warn!(
                    subnet = %lease.subnet, %old, %new,
                    "the interface's address changed: our lease now advertises the new one"
                );
                self.request.public_ip = new;
            }
            Err(e) => {
                self.status.count(Event::EtcdError);
                tracing::warn!(%old, %new, "updating our lease's PublicIP failed: {e}; retrying");
                // Keep the view on the old value so the next check tries again.
                let _ = own_tx.send(Some((lease.subnet, old)));
            }
        }
    }

    fn note_expiry(&self, ttl: Duration) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.status
            .lease_expiry_unix
            .store((now + ttl).as_secs(), Ordering::Relaxed);
    }

    /// Double-checks a "lost" report against etcd: the key exists, names us and hangs on our lease.
    async fn still_ours(&mut self, lease: &HeldLease) -> bool {
        match self.client.get(lease.key.as_str(), None).await {
            Ok(resp) => resp.kvs().first().is_some_and(|kv| {
                kv.lease() == lease.lease_id
                    && LeaseAttrs::parse(kv.value())
                        .is_ok_and(|a| a.public_ip == self.request.public_ip)
            }),
            // Cannot tell: treat as held; the renewal will find out.
            Err(_) => true,
        }
    }
}

fn write_subnet_env(
    path: &Path,
    config: &NetworkConfig,
    subnet: Ipv4Net,
    mtu: u32,
    ip_masq: bool,
) -> anyhow::Result<()> {
    SubnetEnv {
        network: config.network,
        subnet,
        mtu,
        ip_masq,
    }
    .write_atomic(path)
    .with_context(|| format!("-subnet-file {}", path.display()))?;
    tracing::info!(path = %path.display(), %subnet, mtu, "subnet.env written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::acquire::LeaseSource;
    use crate::lease::set::KeyValue;

    /// The check after an acquisition (the first and every re-acquisition): our key gone from
    /// the view means lost; present and ours means kept. Both tell the watch which key is ours.
    #[test]
    fn claiming_an_acquired_lease_reports_it_lost_when_the_view_no_longer_has_it() {
        let prefix = "/coreos.com/network";
        let cfg = NetworkConfig::parse(r#"{"Network":"10.1.0.0/16"}"#).unwrap();
        let view = SharedLeaseView::new(LeaseView::new(prefix, cfg));
        let ip = Ipv4Addr::new(198, 18, 0, 1);
        let subnet: Ipv4Net = "10.1.5.0/24".parse().unwrap();
        let lease = HeldLease {
            key: flannel_shared::lease::subnet_key(prefix, &subnet),
            subnet,
            lease_id: 7,
            ttl: Duration::from_secs(60),
            expires: std::time::Instant::now(),
            source: LeaseSource::Random,
            released: Vec::new(),
        };
        let value = LeaseAttrs::udp(ip).to_json();
        let (own_tx, own_rx) = watch::channel(None);
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let put = KeyValue {
            key: &lease.key,
            value: value.as_bytes(),
            create_revision: 10,
            mod_revision: 10,
            lease: 7,
        };
        view.lock().watched_put(put, &mut Vec::new());
        assert!(!claim_own_lease(&view, &lease, ip, &own_tx, &events_tx));
        assert_eq!(*own_rx.borrow(), Some((subnet, ip)));
        assert!(events_rx.try_recv().is_err());
        // The watch applied a delete of our key before it knew the key was ours.
        own_tx.send_replace(None);
        view.lock().watched_delete(&lease.key, 11, &mut Vec::new());
        assert!(claim_own_lease(&view, &lease, ip, &own_tx, &events_tx));
        assert_eq!(*own_rx.borrow(), Some((subnet, ip)));
        assert_eq!(events_rx.try_recv().ok(), Some(OwnLeaseEvent::Lost(subnet)));
    }
}
